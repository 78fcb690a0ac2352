/* The hsm module's key objects: finding hsmjwt keys in the token (discovery),
 * checking their custody attributes, reading their public halves, and
 * destroying them.  Generation: hsm_keygen.c; lifecycle records (the data
 * objects next to keys): hsm_record.c; module, token, login, sessions and
 * signing: hsm.c; fault state and recovery: hsm_recover.c. */
#include "hsmjwt/hsm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "hsm_internal.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

/* DER of the curve parameters that CKA_EC_PARAMS takes. */
const uint8_t hsm_oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
const uint8_t hsm_oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
/* Ed25519: PKCS#11 3.0 names the curve by a PrintableString; SoftHSM 2.6
 * and some HSMs accept only the RFC 8410 OID, so both are tried. */
const uint8_t hsm_ed25519_printable[] = { 0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9' };
const uint8_t hsm_oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
/* Ed25519 as OpenSC and GnuPG name it (1.3.6.1.4.1.11591.15.1): what keys
 * made with their tools, and some HSMs, carry. */
static const uint8_t oid_ed25519_gnu[] = { 0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01 };

int hsm_key_rv_verdict(CK_RV rv)
{
	switch (rv) {
	case CKR_OK:
		return 0;
	case CKR_ATTRIBUTE_TYPE_INVALID:
	case CKR_ATTRIBUTE_SENSITIVE:
		return -ENOENT;
	case CKR_HOST_MEMORY:
		return -ENOMEM;
	case CKR_OBJECT_HANDLE_INVALID:
		/* Found a moment ago, gone now: another process (a replica,
		 * hsmjwtctl) destroyed it, or replaced a record, while this one
		 * read.  What was read is no consistent view: read again. */
		return -EAGAIN;
	default:
		return hsm_error_from_rv(rv);
	}
}

/* A failed Cryptoki call other than an attribute read: out of memory in
 * the library is -ENOMEM, as it is for hsmjwt's own allocations; a failed
 * device marks the token failed. */
static int hsm_key_error(struct hsm *hsm, CK_RV rv)
{
	return rv == CKR_HOST_MEMORY ? -ENOMEM : hsm_fail_rv(hsm, rv);
}

/* hsm_key_error for a call that makes or grows an object (generation,
 * naming, a record).  A token out of room (CKR_DEVICE_MEMORY) works, and
 * signs with what it holds: marked failed, it would stop signing until a
 * recovery that frees nothing — every few seconds, as each poll tries the
 * rotation again.  The caller's log line names the code. */
int hsm_create_error(struct hsm *hsm, CK_RV rv)
{
	return rv == CKR_DEVICE_MEMORY ? HSM_E_FAILED : hsm_key_error(hsm, rv);
}

/* hsm_key_rv_verdict for an attribute read during an operation: a failed
 * device marks the token failed. */
int hsm_key_verdict(struct hsm *hsm, CK_RV rv)
{
	int r = hsm_key_rv_verdict(rv);

	if (r == HSM_E_DEVICE)
		hsm_fail_rv(hsm, rv);
	return r;
}

/* Reads one variable-length attribute into a malloc'd buffer.  -ENOENT when
 * the object has no such attribute or will not reveal it, -EMSGSIZE when
 * it is over 64 KiB (verdicts on the object), or what hsm_key_rv_verdict
 * says of the failure. */
static int hsm_get_attribute(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
			     CK_ATTRIBUTE_TYPE type, uint8_t **ret_value, size_t *ret_len)
{
	CK_ATTRIBUTE attr = { type, NULL, 0 };
	uint8_t *value;
	CK_RV rv;
	int r;

	rv = hsm->f->C_GetAttributeValue(s, obj, &attr, 1);
	r = hsm_key_verdict(hsm, rv);
	if (r == 0 && attr.ulValueLen == (CK_ULONG)-1)
		r = -ENOENT;
	else if (r == 0 && attr.ulValueLen > 65536)
		r = -EMSGSIZE;
	if (r < 0) {
		log_debug("\"cannot read attribute\" type=0x%lx rv=%s", (unsigned long)type, hsm_ckr_name(rv));
		return r;
	}
	value = malloc(attr.ulValueLen + 1);
	if (value == NULL)
		return -ENOMEM;
	attr.pValue = value;
	rv = hsm->f->C_GetAttributeValue(s, obj, &attr, 1);
	if (rv != CKR_OK) {
		log_debug("\"cannot read attribute\" type=0x%lx rv=%s", (unsigned long)type, hsm_ckr_name(rv));
		free(value);
		/* It was there a moment ago: whatever failed now is the token's. */
		r = hsm_key_verdict(hsm, rv);
		return r == -ENOENT ? HSM_E_FAILED : r;
	}
	value[attr.ulValueLen] = '\0';
	*ret_value = value;
	*ret_len = attr.ulValueLen;
	return 0;
}

/* CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); some
 * modules return the bare point.  Accept both, nothing else. */
static int hsm_unwrap_ec_point(const uint8_t *der, size_t len, const uint8_t **ret_point, size_t *ret_len)
{
	if (len >= 2 && der[0] == 0x04 && der[1] < 0x80 && (size_t)der[1] + 2 == len) {
		*ret_point = der + 2;
		*ret_len = der[1];
		return 0;
	}
	if (len >= 3 && der[0] == 0x04 && der[1] == 0x81 && (size_t)der[2] + 3 == len) {
		*ret_point = der + 3;
		*ret_len = der[2];
		return 0;
	}
	/* A bare uncompressed point (0x04 || X || Y) or a bare Ed25519 key. */
	if (len == 32 || len == 65 || len == 97) {
		*ret_point = der;
		*ret_len = len;
		return 0;
	}
	return -EBADMSG;
}

static int hsm_ec_public_key(const char *group, const uint8_t *point, size_t len, EVP_PKEY **ret_pkey)
{
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx;
	EVP_PKEY *pkey = NULL;
	int r = -EBADMSG;

	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL)
		return -ENOMEM;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, len);
	params[2] = OSSL_PARAM_construct_end();
	if (EVP_PKEY_fromdata_init(ctx) == 1 &&
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1) {
		*ret_pkey = pkey;
		r = 0;
	}
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static int hsm_rsa_public_key(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
			      EVP_PKEY **ret_pkey)
{
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL);
	BIGNUM *bn_e = BN_bin2bn(e, (int)e_len, NULL);
	int r = -EBADMSG;

	if (bld == NULL || bn_n == NULL || bn_e == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL)
		goto out;
	if (EVP_PKEY_fromdata_init(ctx) == 1 &&
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1) {
		*ret_pkey = pkey;
		r = 0;
	}
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn_n);
	BN_free(bn_e);
	return r;
}

/* Builds the EVP_PKEY of a public key object for the given algorithm.
 * -EBADMSG when a value is not a key of that kind, an hsm_get_attribute
 * error otherwise. */
int hsm_read_public_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
			enum jws_alg alg, EVP_PKEY **ret_pkey)
{
	uint8_t *a = NULL, *b = NULL;
	size_t a_len = 0, b_len = 0;
	const uint8_t *point = NULL;
	size_t point_len = 0;
	int r;

	switch (alg) {
	case JWS_ALG_RS256:
	case JWS_ALG_PS256:
		r = hsm_get_attribute(hsm, s, pub, CKA_MODULUS, &a, &a_len);
		if (r == 0)
			r = hsm_get_attribute(hsm, s, pub, CKA_PUBLIC_EXPONENT, &b, &b_len);
		if (r == 0)
			r = hsm_rsa_public_key(a, a_len, b, b_len, ret_pkey);
		break;
	case JWS_ALG_ES256:
	case JWS_ALG_ES384:
	case JWS_ALG_EDDSA:
		r = hsm_get_attribute(hsm, s, pub, CKA_EC_POINT, &a, &a_len);
		if (r == 0)
			r = hsm_unwrap_ec_point(a, a_len, &point, &point_len);
		if (r < 0)
			break;
		if (alg == JWS_ALG_EDDSA) {
			EVP_PKEY *pkey = point_len == 32 ?
				EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, point, point_len) : NULL;
			r = pkey ? 0 : -EBADMSG;
			if (pkey)
				*ret_pkey = pkey;
		} else {
			r = hsm_ec_public_key(alg == JWS_ALG_ES256 ? "prime256v1" : "secp384r1",
					      point, point_len, ret_pkey);
		}
		break;
	default:
		r = -EBADMSG;
	}
	free(a);
	free(b);
	return r;
}

int hsm_parse_label(const char *label, enum jws_alg *ret_alg, char *ret_kid)
{
	char alg_name[16];
	const char *p, *colon;
	enum jws_alg alg;
	size_t kid_len;

	if (strncmp(label, HSM_LABEL_PREFIX, strlen(HSM_LABEL_PREFIX)) != 0)
		return -EINVAL;
	p = label + strlen(HSM_LABEL_PREFIX);
	colon = strchr(p, ':');
	if (colon == NULL || (size_t)(colon - p) >= sizeof(alg_name))
		return -EINVAL;
	memcpy(alg_name, p, (size_t)(colon - p));
	alg_name[colon - p] = '\0';
	kid_len = strlen(colon + 1);
	/* Anyone with a session may write a label; only the base64url alphabet
	 * makes a kid, and nothing else may reach a log line or a JWK. */
	if (jws_alg_from_name(alg_name, &alg) < 0 || kid_len != JWK_THUMBPRINT_LEN ||
	    strspn(colon + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != kid_len)
		return -EINVAL;
	*ret_alg = alg;
	memcpy(ret_kid, colon + 1, JWK_THUMBPRINT_LEN + 1);
	return 0;
}

/* Collects up to max handles of the objects matching tmpl.  A token hands
 * them out in batches of its own choosing, so C_FindObjects is called until
 * it has nothing more; *ret_more tells whether objects beyond max exist. */
int hsm_find_objects(struct hsm *hsm, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
		     CK_OBJECT_HANDLE *found, CK_ULONG max, CK_ULONG *ret_count, int *ret_more)
{
	CK_OBJECT_HANDLE extra;
	CK_ULONG count = 0, got = 0;
	CK_RV rv;

	rv = hsm->f->C_FindObjectsInit(s, tmpl, n);
	if (rv != CKR_OK) {
		log_error("\"C_FindObjectsInit failed\" rv=%s", hsm_ckr_name(rv));
		return hsm_key_error(hsm, rv);
	}
	do {
		CK_ULONG want = max - count < HSM_FIND_BATCH ? max - count : HSM_FIND_BATCH;

		got = 0;
		rv = hsm->f->C_FindObjects(s, found + count, want, &got);
		/* A token must not return more than asked; do not trust it to. */
		count += got <= want ? got : want;
	} while (rv == CKR_OK && got > 0 && count < max);
	got = 0;
	if (rv == CKR_OK && ret_more != NULL && count == max)
		rv = hsm->f->C_FindObjects(s, &extra, 1, &got);
	hsm->f->C_FindObjectsFinal(s);
	if (rv != CKR_OK) {
		log_error("\"C_FindObjects failed\" rv=%s", hsm_ckr_name(rv));
		return hsm_key_error(hsm, rv);
	}
	*ret_count = count;
	if (ret_more != NULL)
		*ret_more = got > 0;
	return 0;
}

/* Every object matching tmpl, in a new array of handles the caller frees.
 * what names the objects for the refusal: dropping some silently would
 * leave tokens signed by a dropped key unverifiable and make keys_load
 * generate "missing" signers on every start. */
int hsm_find_all(struct hsm *hsm, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
		 const char *what, CK_OBJECT_HANDLE **ret_handles, CK_ULONG *ret_count)
{
	CK_OBJECT_HANDLE *handles;
	CK_ULONG count = 0;
	int more = 0, r;

	handles = calloc(HSM_MAX_KEY_OBJECTS, sizeof(*handles));
	if (handles == NULL)
		return -ENOMEM;
	r = hsm_find_objects(hsm, s, tmpl, n, handles, HSM_MAX_KEY_OBJECTS, &count, &more);
	if (r < 0)
		goto out;
	if (more) {
		log_error("\"more %s in the token than hsmjwt examines\" token=%s limit=%d", what,
			  hsm->token_label, HSM_MAX_KEY_OBJECTS);
		r = -E2BIG;
		goto out;
	}
	*ret_handles = handles;
	*ret_count = count;
	handles = NULL;
out:
	free(handles);
	return r;
}

int hsm_ec_params_match(enum jws_alg alg, const uint8_t *params, size_t len)
{
	static const struct { enum jws_alg alg; const uint8_t *der; size_t len; } curves[] = {
		{ JWS_ALG_ES256, hsm_oid_p256, sizeof(hsm_oid_p256) },
		{ JWS_ALG_ES384, hsm_oid_p384, sizeof(hsm_oid_p384) },
		{ JWS_ALG_EDDSA, hsm_ed25519_printable, sizeof(hsm_ed25519_printable) },
		{ JWS_ALG_EDDSA, hsm_oid_ed25519, sizeof(hsm_oid_ed25519) },
		{ JWS_ALG_EDDSA, oid_ed25519_gnu, sizeof(oid_ed25519_gnu) },
	};

	for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++)
		if (curves[i].alg == alg && curves[i].len == len && memcmp(curves[i].der, params, len) == 0)
			return 1;
	return 0;
}

/* The private key (HS256: the secret key) must have been made in the token
 * and never have left it (a key once extractable or imported may exist
 * elsewhere, so a signature would prove nothing), must sign, and must be of
 * the type and curve (HS256: at least 32 bytes, where the token says) its
 * label names (the public half is checked by reading it for that alg).
 * pub is the key's public half: some modules give the curve only there.
 * label is already log_quote()d; generated says the key was just made, so
 * a refusal is an error (the key is destroyed) rather than a skip.
 * 0, -EPERM (logged: label and attribute), or -ENOMEM or an hsm_error
 * when the token could not be asked. */
int hsm_check_private_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
			  CK_OBJECT_HANDLE pub, enum jws_alg alg, const char *label, int generated)
{
	CK_KEY_TYPE type = CK_UNAVAILABLE_INFORMATION, want_type;
	/* A module may answer CKR_ATTRIBUTE_TYPE_INVALID without filling the
	 * other attributes: never read what it did not write. */
	CK_BBOOL flags[5] = { CK_FALSE };
	static const struct { CK_ATTRIBUTE_TYPE type; const char *name; CK_BBOOL want; } wanted[5] = {
		{ CKA_SENSITIVE, "CKA_SENSITIVE", CK_TRUE },
		{ CKA_EXTRACTABLE, "CKA_EXTRACTABLE", CK_FALSE },
		{ CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", CK_TRUE },
		{ CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", CK_TRUE },
		{ CKA_SIGN, "CKA_SIGN", CK_TRUE },
	};
	CK_ATTRIBUTE attrs[6] = { { CKA_KEY_TYPE, &type, sizeof(type) } };
	enum log_level level = generated ? LOG_LEVEL_ERROR : LOG_LEVEL_WARN;
	const char *outcome = generated ? "generated key destroyed" : "skipped";
	size_t params_len = 0;
	uint8_t *params = NULL;
	CK_RV rv;
	int r;

	for (size_t i = 0; i < 5; i++)
		attrs[i + 1] = (CK_ATTRIBUTE){ wanted[i].type, &flags[i], sizeof(flags[i]) };
	/* Attributes the token lacks come back as CK_UNAVAILABLE_INFORMATION
	 * with one of these codes; the loop below names them. */
	rv = hsm->f->C_GetAttributeValue(s, priv, attrs, 6);
	if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
		/* Says nothing about the key: skipping a good one would make
		 * keys_load generate another signer. */
		log_error("\"cannot read key attributes\" label=%s rv=%s", label, hsm_ckr_name(rv));
		return hsm_key_error(hsm, rv);
	}
	switch (alg) {
	case JWS_ALG_RS256:
	case JWS_ALG_PS256:
		want_type = CKK_RSA;
		break;
	case JWS_ALG_ES256:
	case JWS_ALG_ES384:
		want_type = CKK_EC;
		break;
	case JWS_ALG_EDDSA:
		want_type = CKK_EC_EDWARDS;
		break;
	case JWS_ALG_HS256:
		want_type = CKK_GENERIC_SECRET;
		/* Tokens that type HMAC keys by their hash. */
		if (type == CKK_SHA256_HMAC)
			type = CKK_GENERIC_SECRET;
		break;
	default: /* hsm_alg_supported said no already */
		return -EPERM;
	}
	if (attrs[0].ulValueLen != sizeof(type) || type != want_type) {
		log_write(level, "\"key type does not match the label's algorithm; %s\" label=%s attribute=CKA_KEY_TYPE",
			  outcome, label);
		return -EPERM;
	}
	for (size_t i = 0; i < 5; i++) {
		if (attrs[i + 1].ulValueLen != sizeof(CK_BBOOL)) {
			log_write(level, "\"key attribute unavailable; %s\" label=%s attribute=%s", outcome, label,
				  wanted[i].name);
			return -EPERM;
		}
		if ((flags[i] != CK_FALSE) != (wanted[i].want != CK_FALSE)) {
			log_write(level, "\"key attribute refused; %s\" label=%s attribute=%s value=%s", outcome, label,
				  wanted[i].name, flags[i] != CK_FALSE ? "true" : "false");
			return -EPERM;
		}
	}
	if (want_type == CKK_RSA)
		return 0;
	if (want_type == CKK_GENERIC_SECRET) {
		CK_ULONG value_len = 0;
		CK_ATTRIBUTE len_attr = { CKA_VALUE_LEN, &value_len, sizeof(value_len) };

		rv = hsm->f->C_GetAttributeValue(s, priv, &len_attr, 1);
		r = hsm_key_verdict(hsm, rv);
		if (r < 0 && r != -ENOENT) {
			log_error("\"cannot read key attributes\" label=%s rv=%s", label, hsm_ckr_name(rv));
			return r;
		}
		if (r == 0 && len_attr.ulValueLen == sizeof(value_len) && value_len < HSM_HS256_KEY_LEN) {
			log_write(level, "\"key too short for HS256; %s\" label=%s attribute=CKA_VALUE_LEN value=%lu", outcome,
				  label, (unsigned long)value_len);
			return -EPERM;
		}
		return 0;
	}
	r = hsm_get_attribute(hsm, s, priv, CKA_EC_PARAMS, &params, &params_len);
	/* PKCS#11 requires CKA_EC_PARAMS on the public object only. */
	if ((r == -ENOENT || r == -EMSGSIZE) && pub != CK_INVALID_HANDLE)
		r = hsm_get_attribute(hsm, s, pub, CKA_EC_PARAMS, &params, &params_len);
	if (r < 0 && r != -ENOENT && r != -EMSGSIZE)
		return r;
	if (r < 0) {
		log_write(level, "\"key attribute unavailable; %s\" label=%s attribute=CKA_EC_PARAMS", outcome, label);
		return -EPERM;
	}
	if (!hsm_ec_params_match(alg, params, params_len)) {
		log_write(level, "\"key curve does not match the label's algorithm; %s\" label=%s attribute=CKA_EC_PARAMS",
			  outcome, label);
		r = -EPERM;
	}
	free(params);
	return r;
}

/* A public key object and its CKA_ID (NULL when it has none). */
struct hsm_public {
	CK_OBJECT_HANDLE handle;
	uint8_t *id;
	size_t id_len;
};

static void hsm_public_free(struct hsm_public *pubs, size_t count)
{
	for (size_t i = 0; pubs && i < count; i++)
		free(pubs[i].id);
	free(pubs);
}

/* Every public key object with its CKA_ID, read once per hsm_find_keys: a
 * search per private key scans the whole token each time on SoftHSM
 * (seconds for a few hundred keys) and costs a round trip per key on a
 * network HSM. */
static int hsm_index_public_keys(struct hsm *hsm, CK_SESSION_HANDLE s, struct hsm_public **ret_pubs,
				 size_t *ret_count)
{
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &yes, sizeof(yes) } };
	CK_OBJECT_HANDLE *handles = NULL;
	struct hsm_public *pubs = NULL;
	CK_ULONG n = 0;
	int r;

	r = hsm_find_all(hsm, s, tmpl, 2, "public keys", &handles, &n);
	if (r < 0)
		return r;
	pubs = calloc(n ? n : 1, sizeof(*pubs));
	if (pubs == NULL) {
		r = -ENOMEM;
		goto out;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		pubs[i].handle = handles[i];
		r = hsm_get_attribute(hsm, s, handles[i], CKA_ID, &pubs[i].id, &pubs[i].id_len);
		/* Without a CKA_ID it is no hsmjwt key's half; a failed read
		 * would make a good key's half look absent. */
		if (r < 0 && r != -ENOENT && r != -EMSGSIZE)
			goto out;
	}
	*ret_pubs = pubs;
	*ret_count = n;
	pubs = NULL;
	r = 0;
out:
	hsm_public_free(pubs, n);
	free(handles);
	return r;
}

/* "hsmjwt:<ALG>:<kid>" of key into label (HSM_LABEL_MAX bytes): the name
 * its objects and its lifecycle records share. */
void hsm_key_label(enum jws_alg alg, const char *kid, char *label)
{
	snprintf(label, HSM_LABEL_MAX, HSM_LABEL_PREFIX "%s:%s", jws_alg_name(alg), kid);
}


/* Fills key from its private object: label, public half (among pubs),
 * public key.  0; a verdict that skips the key: -EINVAL (not hsmjwt's, or
 * its public half or label does not hold), -EPERM (custody), -ENOENT (no
 * public half); or any other error, which says nothing about the key and
 * fails the search. */
static int hsm_load_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
			const struct hsm_public *pubs, size_t n_pubs, struct hsm_key *key)
{
	CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
	uint8_t *label = NULL, *id = NULL;
	size_t label_len, id_len, candidates = 0, unreadable = 0;
	int failed = 0;
	char computed[JWK_THUMBPRINT_LEN + 1], quoted[HSM_LABEL_QUOTED];
	int r;

	r = hsm_get_attribute(hsm, s, priv, CKA_LABEL, &label, &label_len);
	if (r == -ENOENT || r == -EMSGSIZE)
		r = -EINVAL; /* no label hsmjwt could have written */
	if (r < 0)
		goto out;
	if (hsm_parse_label((const char *)label, &key->alg, key->kid) < 0) {
		r = -EINVAL; /* not ours */
		goto out;
	}
	log_quote(quoted, sizeof(quoted), (const char *)label);
	if (!hsm_alg_supported(key->alg)) {
		log_warn("\"key for an algorithm hsmjwt does not hold keys for; skipped\" label=%s", quoted);
		r = -EINVAL;
		goto out;
	}
	if (key->alg == JWS_ALG_HS256) {
		log_warn("\"key type does not match the label's algorithm; skipped\" label=%s attribute=CKA_CLASS", quoted);
		r = -EPERM;
		goto out;
	}
	r = hsm_get_attribute(hsm, s, priv, CKA_ID, &id, &id_len);
	if (r < 0 && r != -ENOENT && r != -EMSGSIZE)
		goto out;
	/* Every public object with the key's CKA_ID is a candidate: public
	 * objects need no login, so anyone with a session can add one with the
	 * same CKA_ID in front of the genuine half.  The label is only a name
	 * too: the half kept is the one whose RFC 7638 thumbprint is the kid,
	 * the key that really signs (a copy of the genuine half is harmless). */
	for (size_t i = 0; r == 0 && i < n_pubs && pub == CK_INVALID_HANDLE && failed == 0; i++) {
		int c;

		if (pubs[i].id == NULL || pubs[i].id_len != id_len || memcmp(pubs[i].id, id, id_len) != 0)
			continue;
		candidates++;
		/* Only a value that is not a key rules a candidate out: a failed
		 * read or running out of memory says nothing about the key, and
		 * the caller fails the whole search rather than skip a good key. */
		c = hsm_read_public_key(hsm, s, pubs[i].handle, key->alg, &key->public_key);
		if (c == -ENOENT || c == -EMSGSIZE || c == -EBADMSG) {
			unreadable++;
			continue;
		}
		if (c == 0)
			c = jwk_thumbprint(key->public_key, computed);
		if (c == -ENOMEM || (c < 0 && key->public_key == NULL)) {
			EVP_PKEY_free(key->public_key);
			key->public_key = NULL;
			failed = c;
			break;
		}
		if (c == 0 && strcmp(computed, key->kid) == 0) {
			pub = pubs[i].handle;
			break;
		}
		EVP_PKEY_free(key->public_key);
		key->public_key = NULL;
	}
	if (failed < 0) {
		r = failed;
		goto out;
	}
	if (pub == CK_INVALID_HANDLE) {
		if (candidates == 0)
			log_warn("\"key has no public half; skipped\" label=%s", quoted);
		else if (unreadable == candidates)
			log_warn("\"cannot read public key; skipped\" label=%s", quoted);
		else
			log_warn("\"label does not match the key's thumbprint; skipped\" label=%s", quoted);
		r = candidates == 0 ? -ENOENT : -EINVAL;
		goto out;
	}
	r = hsm_check_private_key(hsm, s, priv, pub, key->alg, quoted, 0);
	if (r < 0) {
		EVP_PKEY_free(key->public_key);
		key->public_key = NULL;
		goto out;
	}
	key->private_handle = priv;
	key->public_handle = pub;
out:
	free(label);
	free(id);
	return r;
}

/* Fills key from a secret key object: an HS256 key has no public half and
 * its kid is only a name (no thumbprint to check it against).  The same
 * verdicts as hsm_load_key. */
static int hsm_load_secret_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, struct hsm_key *key)
{
	char quoted[HSM_LABEL_QUOTED];
	uint8_t *label = NULL;
	size_t label_len;
	int r;

	r = hsm_get_attribute(hsm, s, obj, CKA_LABEL, &label, &label_len);
	if (r == -ENOENT || r == -EMSGSIZE)
		r = -EINVAL;
	if (r < 0)
		goto out;
	if (hsm_parse_label((const char *)label, &key->alg, key->kid) < 0) {
		r = -EINVAL;
		goto out;
	}
	log_quote(quoted, sizeof(quoted), (const char *)label);
	if (key->alg != JWS_ALG_HS256) {
		log_warn("\"key type does not match the label's algorithm; skipped\" label=%s attribute=CKA_CLASS", quoted);
		r = -EPERM;
		goto out;
	}
	r = hsm_check_private_key(hsm, s, obj, CK_INVALID_HANDLE, key->alg, quoted, 0);
	if (r < 0)
		goto out;
	key->private_handle = obj;
	key->public_handle = CK_INVALID_HANDLE;
	key->public_key = NULL;
out:
	free(label);
	return r;
}

void hsm_keys_free(struct hsm_key *keys, size_t count)
{
	for (size_t i = 0; keys && i < count; i++)
		EVP_PKEY_free(keys[i].public_key);
	free(keys);
}

static int hsm_find_keys_locked(struct hsm_session *session, struct hsm_key **ret_keys, size_t *ret_count)
{
	struct hsm *hsm = session->hsm;
	unsigned generation = hsm_generation(hsm);
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_BBOOL yes = CK_TRUE;
	/* Private objects only: anyone with a session, without the PIN, can
	 * generate a key pair or secret with every custody attribute checked
	 * below under an hsmjwt label — but a public one, which its maker can
	 * sign with without logging in. */
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
	};
	CK_OBJECT_HANDLE *found = NULL, *secrets = NULL;
	CK_ULONG n = 0, n_secrets = 0;
	struct hsm_public *pubs = NULL;
	size_t n_pubs = 0;
	struct hsm_record_ref *records = NULL;
	size_t n_records = 0;
	struct hsm_key *keys = NULL;
	size_t count = 0, over = 0;
	CK_RV rv;
	int r;

	/* Handles first, keys after: a session runs one search at a time. */
	r = hsm_find_all(hsm, session->handle, tmpl, 3, "private keys", &found, &n);
	if (r < 0)
		return r;
	cls = CKO_SECRET_KEY;
	r = hsm_find_all(hsm, session->handle, tmpl, 3, "secret keys", &secrets, &n_secrets);
	if (r < 0)
		goto out;
	r = hsm_index_public_keys(hsm, session->handle, &pubs, &n_pubs);
	if (r < 0)
		goto out;
	r = hsm_index_records(hsm, session->handle, &records, &n_records);
	if (r < 0)
		goto out;
	keys = calloc(HSM_MAX_KEYS, sizeof(*keys));
	if (keys == NULL) {
		r = -ENOMEM;
		goto out;
	}
	/* Key pairs, then secret keys. */
	for (CK_ULONG i = 0; i < n + n_secrets; i++) {
		struct hsm_key key;

		memset(&key, 0, sizeof(key));
		if (i < n)
			r = hsm_load_key(hsm, session->handle, found[i], pubs, n_pubs, &key);
		else
			r = hsm_load_secret_key(hsm, session->handle, secrets[i - n], &key);
		if (r == -EINVAL || r == -EPERM || r == -ENOENT)
			continue;
		if (r < 0)
			goto out;
		if (count < HSM_MAX_KEYS) {
			keys[count++] = key;
		} else {
			/* Counted only, so that the error names how many there are. */
			EVP_PKEY_free(key.public_key);
			over++;
		}
	}
	if (over > 0) {
		log_error("\"too many hsmjwt keys in the token\" token=%s keys=%zu limit=%d",
			  hsm->token_label, count + over, HSM_MAX_KEYS);
		r = -E2BIG;
		goto out;
	}
	for (size_t k = 0; k < count; k++) {
		keys[k].generation = generation;
		r = hsm_attach_records(hsm, session->handle, records, n_records, &keys[k]);
		if (r < 0)
			goto out;
	}
	/* An empty answer is not proof that the keys are gone: SoftHSM, its
	 * token directory moved away, answers C_FindObjects with no objects
	 * and C_GetSessionInfo with CKR_OK; only C_GetTokenInfo fails.  A token
	 * that lost its login answers every call, and hides every private key
	 * and record.  Taken at its word, that answer would empty the JWKS and
	 * make every algorithm "need" a new key. */
	rv = hsm_token_probe(hsm);
	if (rv != CKR_OK) {
		log_error("\"the token stopped answering or lost its login during key discovery\" token=%s rv=%s",
			  hsm->token_label, hsm_ckr_name(rv));
		/* Whatever code it gives, the answers above cannot be trusted. */
		hsm_mark_failed(hsm, hsm_ckr_name(rv));
		r = HSM_E_DEVICE;
		goto out;
	}
	*ret_keys = keys;
	*ret_count = count;
	keys = NULL;
	count = 0;
	r = 0;
out:
	hsm_keys_free(keys, count);
	free(records);
	hsm_public_free(pubs, n_pubs);
	free(secrets);
	free(found);
	return r;
}

int hsm_find_keys(struct hsm_session *session, struct hsm_key **ret_keys, size_t *ret_count)
{
	struct hsm_call call;
	/* Many calls, and on a network HSM with many keys they add up to
	 * seconds: timed as a whole under the longer limit. */
	int r = hsm_session_begin_admin(session, &call);

	if (r < 0)
		return r;
	r = hsm_find_keys_locked(session, ret_keys, ret_count);
	hsm_session_end_admin(session, &call);
	metrics_hsm_operation(METRICS_HSM_FIND, r == 0);
	return r;
}


/* Destroys obj; one that is gone already (another process destroyed it:
 * replicas sharing a token carry out the same plan) counts as destroyed. */
int hsm_destroy_object(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, const char *what,
		       const char *kid)
{
	CK_RV rv = hsm->f->C_DestroyObject(s, obj);

	if (rv == CKR_OK)
		return 0;
	if (rv == CKR_OBJECT_HANDLE_INVALID) {
		log_debug("\"object already gone\" object=%s kid=%s", what, kid);
		return 0;
	}
	log_error("\"cannot destroy object\" object=%s kid=%s rv=%s", what, kid, hsm_ckr_name(rv));
	return hsm_key_error(hsm, rv);
}





static int hsm_destroy_key_locked(struct hsm *hsm, const struct hsm_key *key)
{
	CK_SESSION_HANDLE s;
	char label[HSM_LABEL_MAX];
	size_t records = 0;
	int r, loadable;

	hsm_key_label(key->alg, key->kid, label);
	r = hsm_open_raw_session(hsm, CKF_RW_SESSION, &s);
	if (r < 0)
		return r;
	/* The signing half first: whatever fails after it, the key no longer
	 * signs.  Then whatever can go, even past a refusal (the first error is
	 * the answer) — but not on a token marked failed, and the records only
	 * once the key can no longer be loaded (its private or its public half
	 * gone): a key that still signs, without its records, would be taken
	 * for one from before records, and perhaps put back in service. */
	r = hsm_destroy_object(hsm, s, key->private_handle, "private key", key->kid);
	loadable = r < 0;
	if (key->public_handle != CK_INVALID_HANDLE && hsm_available(hsm)) {
		int d = hsm_destroy_object(hsm, s, key->public_handle, "public key", key->kid);

		if (d == 0)
			loadable = 0;
		if (d < 0 && r == 0)
			r = d;
	}
	if (!loadable && hsm_available(hsm)) {
		int d = hsm_destroy_records(hsm, s, label, key->kid, &records);

		if (d < 0 && r == 0)
			r = d;
	}
	hsm->f->C_CloseSession(s);
	metrics_hsm_operation(METRICS_HSM_DESTROY, r == 0);
	if (r < 0)
		return r;
	log_info("\"key destroyed\" kid=%s records=%zu", key->kid, records);
	return 0;
}

int hsm_destroy_key(struct hsm *hsm, const struct hsm_key *key)
{
	struct hsm_call call;
	int r = hsm_raw_begin(hsm, &call, key);

	if (r < 0)
		return r;
	r = hsm_destroy_key_locked(hsm, key);
	hsm_raw_end(hsm, &call);
	return r;
}
