/* The hsm module's lifecycle records: the private CKO_DATA objects that
 * carry a key's state (hsm.h: hsm_meta) under the key's label, found with
 * the keys, created with a generated key or added later, and destroyed with
 * the key.  Key discovery and destruction: hsm_key.c; generation:
 * hsm_keygen.c; module, token, login, sessions and signing: hsm.c. */
#include "hsmjwt/hsm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hsm_internal.h"
#include "hsmjwt/log.h"

/* CKA_APPLICATION of every lifecycle record: with the key's label, what
 * tells hsmjwt's data objects from other applications' on a shared token. */
#define HSM_RECORD_APPLICATION "hsmjwt"

/* A lifecycle record is one data object; a list of them is one search. */
struct hsm_record_ref {
	CK_OBJECT_HANDLE handle;
	char label[HSM_LABEL_MAX];
};

static int hsm_record_cmp(const void *a, const void *b)
{
	const struct hsm_record_ref *x = a, *y = b;
	int c = strcmp(x->label, y->label);

	if (c != 0)
		return c;
	return x->handle < y->handle ? -1 : x->handle > y->handle;
}

/* Every lifecycle record in the token with its label, sorted by label and
 * then handle (the order keys list their records in), read once per
 * hsm_find_keys for the reason hsm_index_public_keys is.  Records whose
 * label hsmjwt could not have written are left out. */
int hsm_index_records(struct hsm *hsm, CK_SESSION_HANDLE s, struct hsm_record_ref **ret_refs,
		      size_t *ret_count)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	/* CKA_PRIVATE in every search for records: anyone with a session on
	 * the token, without the PIN, can create a public data object under a
	 * key's label with a forged record ("retired", to have the signer
	 * destroyed); only a logged-in user can make a private one. */
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_APPLICATION, (void *)HSM_RECORD_APPLICATION, sizeof(HSM_RECORD_APPLICATION) - 1 },
	};
	CK_OBJECT_HANDLE *handles = NULL;
	struct hsm_record_ref *refs = NULL;
	CK_ULONG n = 0;
	size_t kept = 0;
	int r;

	r = hsm_find_all(hsm, s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), "lifecycle records", &handles, &n);
	if (r < 0)
		return r;
	refs = calloc(n ? n : 1, sizeof(*refs));
	if (refs == NULL) {
		r = -ENOMEM;
		goto out;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		CK_ATTRIBUTE label = { CKA_LABEL, refs[kept].label, HSM_LABEL_MAX - 1 };
		CK_RV rv = hsm->f->C_GetAttributeValue(s, handles[i], &label, 1);

		/* Longer than any label of hsmjwt's, or none at all. */
		if (rv == CKR_BUFFER_TOO_SMALL)
			continue;
		r = hsm_key_verdict(hsm, rv);
		if (r == -ENOENT)
			continue;
		if (r < 0) {
			log_write(r == -EAGAIN ? LOG_LEVEL_INFO : LOG_LEVEL_ERROR,
				  "\"cannot read a lifecycle record's label\" rv=%s", hsm_ckr_name(rv));
			goto out;
		}
		if (label.ulValueLen >= HSM_LABEL_MAX)
			continue;
		refs[kept].label[label.ulValueLen] = '\0';
		refs[kept].handle = handles[i];
		kept++;
	}
	qsort(refs, kept, sizeof(*refs), hsm_record_cmp);
	*ret_refs = refs;
	*ret_count = kept;
	refs = NULL;
	r = 0;
out:
	free(refs);
	free(handles);
	return r;
}

/* Gives key the records of refs under its label: the first HSM_MAX_META
 * in key->meta, all of them counted in key->meta_found. */
int hsm_attach_records(struct hsm *hsm, CK_SESSION_HANDLE s, const struct hsm_record_ref *refs,
		       size_t n, struct hsm_key *key)
{
	char label[HSM_LABEL_MAX], quoted[HSM_LABEL_QUOTED];
	size_t lo = 0, hi = n;

	hsm_key_label(key->alg, key->kid, label);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(refs[mid].label, label) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < n && strcmp(refs[i].label, label) == 0; i++) {
		struct hsm_meta *m;
		CK_ATTRIBUTE value;
		CK_RV rv;
		int r;

		key->meta_found++;
		if (key->meta_count == HSM_MAX_META)
			continue;
		m = &key->meta[key->meta_count];
		value = (CK_ATTRIBUTE){ CKA_VALUE, m->value, sizeof(m->value) };
		rv = hsm->f->C_GetAttributeValue(s, refs[i].handle, &value, 1);
		if (rv == CKR_BUFFER_TOO_SMALL) {
			/* Not a record hsmjwt wrote: the keys module decides what
			 * a key whose records it cannot see is. */
			value.pValue = NULL;
			if (hsm->f->C_GetAttributeValue(s, refs[i].handle, &value, 1) != CKR_OK)
				value.ulValueLen = CK_UNAVAILABLE_INFORMATION;
			log_warn("\"lifecycle record over the size limit; skipped\" label=%s len=%ld limit=%d",
				 log_quote(quoted, sizeof(quoted), label), (long)value.ulValueLen, HSM_META_MAX);
			memset(m, 0, sizeof(*m));
			continue;
		}
		r = hsm_key_verdict(hsm, rv);
		if (r == 0 && value.ulValueLen > HSM_META_MAX)
			r = -ENOENT; /* a module that wrote past the buffer it was given */
		if (r == -ENOENT) {
			log_warn("\"lifecycle record without a readable value; skipped\" label=%s",
				 log_quote(quoted, sizeof(quoted), label));
			memset(m, 0, sizeof(*m));
			continue;
		}
		if (r < 0) {
			log_write(r == -EAGAIN ? LOG_LEVEL_INFO : LOG_LEVEL_ERROR,
				  "\"cannot read a lifecycle record\" label=%s rv=%s",
				  log_quote(quoted, sizeof(quoted), label), hsm_ckr_name(rv));
			return r;
		}
		m->handle = refs[i].handle;
		m->len = value.ulValueLen;
		key->meta_count++;
	}
	return 0;
}

/* Creates the lifecycle record value[0..len) under label. */
int hsm_record_create(struct hsm *hsm, CK_SESSION_HANDLE s, const char *label, const uint8_t *value,
		      size_t len, CK_OBJECT_HANDLE *ret_handle)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	uint8_t none = 0;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		/* Only a logged-in user may read, write or forge a key's state. */
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_APPLICATION, (void *)HSM_RECORD_APPLICATION, sizeof(HSM_RECORD_APPLICATION) - 1 },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_VALUE, len > 0 ? (void *)value : &none, len },
	};
	char quoted[HSM_LABEL_QUOTED];
	CK_RV rv;

	rv = hsm->f->C_CreateObject(s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), ret_handle);
	if (rv != CKR_OK) {
		log_error("\"cannot create lifecycle record\" label=%s rv=%s", log_quote(quoted, sizeof(quoted), label),
			  hsm_ckr_name(rv));
		return hsm_create_error(hsm, rv);
	}
	return 0;
}

/* Destroys every lifecycle record under label, found afresh: records other
 * processes added since this one last looked go too.  *ret_count: how many. */
int hsm_destroy_records(struct hsm *hsm, CK_SESSION_HANDLE s, const char *label, const char *kid,
			size_t *ret_count)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	/* Private only, as in hsm_index_records: a forged public object is
	 * not a record, and not ours to destroy. */
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_APPLICATION, (void *)HSM_RECORD_APPLICATION, sizeof(HSM_RECORD_APPLICATION) - 1 },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_OBJECT_HANDLE found[HSM_FIND_BATCH];
	CK_ULONG n = HSM_FIND_BATCH;
	size_t destroyed = 0;
	int r;

	/* Objects cannot be destroyed in the middle of a search: a batch at a
	 * time, until a batch comes back short.  Bounded like every search. */
	for (int round = 0; n == HSM_FIND_BATCH; round++) {
		if (round > HSM_MAX_KEY_OBJECTS / HSM_FIND_BATCH) {
			log_error("\"more lifecycle records for one key than hsmjwt examines\" kid=%s limit=%d", kid,
				  HSM_MAX_KEY_OBJECTS);
			return -E2BIG;
		}
		r = hsm_find_objects(hsm, s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), found, HSM_FIND_BATCH, &n, NULL);
		if (r < 0)
			return r;
		/* The rest of the batch even when one refuses (the first error is
		 * the answer), but no further search: it would find that one
		 * again; nothing more on a token marked failed. */
		for (CK_ULONG i = 0; i < n && hsm_available(hsm); i++) {
			int d = hsm_destroy_object(hsm, s, found[i], "lifecycle record", kid);

			if (d < 0 && r == 0)
				r = d;
			destroyed += d == 0;
		}
		if (r == 0 && !hsm_available(hsm))
			r = HSM_E_DEVICE;
		if (r < 0)
			return r;
	}
	*ret_count = destroyed;
	return 0;
}

static int hsm_meta_valid(const uint8_t *meta, size_t len)
{
	if ((meta == NULL && len > 0) || len > HSM_META_MAX) {
		log_error("\"lifecycle record refused\" len=%zu limit=%d", len, HSM_META_MAX);
		return -EINVAL;
	}
	return 0;
}

static int hsm_meta_add_locked(struct hsm *hsm, const struct hsm_key *key, const uint8_t *value, size_t len)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE record;
	char label[HSM_LABEL_MAX];
	int r;

	hsm_key_label(key->alg, key->kid, label);
	r = hsm_open_raw_session(hsm, CKF_RW_SESSION, &s);
	if (r < 0)
		return r;
	r = hsm_record_create(hsm, s, label, value, len, &record);
	hsm->f->C_CloseSession(s);
	return r;
}

int hsm_meta_add(struct hsm *hsm, const struct hsm_key *key, const uint8_t *value, size_t len)
{
	struct hsm_call call;
	int r = hsm_meta_valid(value, len);

	if (r == 0)
		r = hsm_raw_begin(hsm, &call, key);
	if (r < 0)
		return r;
	r = hsm_meta_add_locked(hsm, key, value, len);
	hsm_raw_end(hsm, &call);
	return r;
}

static int hsm_meta_remove_locked(struct hsm *hsm, const struct hsm_key *key, size_t index)
{
	CK_SESSION_HANDLE s;
	int r;

	r = hsm_open_raw_session(hsm, CKF_RW_SESSION, &s);
	if (r < 0)
		return r;
	r = hsm_destroy_object(hsm, s, key->meta[index].handle, "lifecycle record", key->kid);
	hsm->f->C_CloseSession(s);
	return r;
}

int hsm_meta_remove(struct hsm *hsm, const struct hsm_key *key, size_t index)
{
	struct hsm_call call;
	int r;

	if (index >= key->meta_count) {
		log_error("\"no such lifecycle record\" kid=%s index=%zu count=%zu", key->kid, index, key->meta_count);
		return -EINVAL;
	}
	r = hsm_raw_begin(hsm, &call, key);
	if (r < 0)
		return r;
	r = hsm_meta_remove_locked(hsm, key, index);
	hsm_raw_end(hsm, &call);
	return r;
}
