#include "hsmjwt/keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/log.h"

void keys_free(struct keys *keys)
{
	if (keys == NULL)
		return;
	for (size_t i = 0; i < keys->count; i++) {
		EVP_PKEY_free(keys->entries[i].hsm.public_key);
		jwk_key_free(keys->entries[i].verify);
	}
	free(keys->entries);
	free(keys->jwks);
	free(keys);
}

static int keys_build_jwks(struct keys *keys)
{
	json_t *doc = json_object(), *list = json_array();
	uint8_t digest[32];
	char b64[32];  /* 16 bytes → 22 characters */
	int r = -ENOMEM;

	if (doc == NULL || list == NULL || json_object_set(doc, "keys", list) < 0)
		goto out;
	for (size_t i = 0; i < keys->count; i++) {
		json_t *jwk = NULL;
		r = jwk_public_to_json(keys->entries[i].hsm.public_key, keys->entries[i].hsm.kid,
				       keys->entries[i].hsm.alg, &jwk);
		if (r < 0)
			goto out;
		if (json_array_append_new(list, jwk) < 0) {
			r = -ENOMEM;
			goto out;
		}
	}
	keys->jwks = json_dumps(doc, JSON_COMPACT);
	if (keys->jwks == NULL) {
		r = -ENOMEM;
		goto out;
	}
	keys->jwks_len = strlen(keys->jwks);
	/* A content hash: every replica serving the same key set serves the
	 * same ETag, so a client's If-None-Match works across a load balancer. */
	if (!EVP_Digest(keys->jwks, keys->jwks_len, digest, NULL, EVP_sha256(), NULL)) {
		r = -EIO;
		goto out;
	}
	b64url_encode(digest, 16, b64);
	snprintf(keys->etag, sizeof(keys->etag), "\"%s\"", b64);
	r = 0;
out:
	json_decref(list);
	json_decref(doc);
	return r;
}

/* Adds key to keys, taking its public key, or returns jwk_key_from_pkey's
 * refusal.  entries has room: keys_load sizes it once, so that signer
 * pointers into it stay valid. */
static int keys_add(struct keys *keys, struct hsm_key *key)
{
	struct keys_entry *e = &keys->entries[keys->count];
	const struct keys_entry **slot;
	int r;

	r = jwk_key_from_pkey(key->public_key, key->alg, &e->verify);
	if (r < 0)
		return r;
	e->hsm = *key;
	key->public_key = NULL; /* ownership moved */
	keys->count++;
	slot = &keys->signer[e->hsm.alg];
	if (*slot == NULL || strcmp(e->hsm.kid, (*slot)->hsm.kid) < 0)
		*slot = e;
	return 0;
}

int keys_load(struct hsm *hsm, const enum jws_alg *algs, size_t n_algs, unsigned rsa_bits,
	      int generate_missing, struct keys **ret_keys)
{
	struct hsm_session *session = NULL;
	struct hsm_key *found = NULL, generated;
	struct keys *keys = NULL;
	size_t n = 0;
	int r;

	r = hsm_session_open(hsm, &session);
	if (r < 0)
		return r;
	r = hsm_find_keys(session, &found, &n);
	if (r < 0)
		goto out;
	r = -ENOMEM;
	keys = calloc(1, sizeof(*keys));
	if (keys == NULL)
		goto out;
	keys->entries = calloc(n + n_algs > 0 ? n + n_algs : 1, sizeof(*keys->entries));
	if (keys->entries == NULL)
		goto out;
	/* One key the verifier refuses (an RSA key under 2048 bits, say) must
	 * not keep the service from starting with the others. */
	for (size_t i = 0; i < n; i++) {
		r = keys_add(keys, &found[i]);
		if (r == -ENOMEM)
			goto out;
		if (r < 0)
			log_warn("\"the verifier refuses this key; skipped\" kid=%s alg=%s bits=%d",
				 found[i].kid, jws_alg_name(found[i].alg), EVP_PKEY_get_bits(found[i].public_key));
	}
	/* Only usable keys count as present, so a refused key is replaced. */
	for (size_t a = 0; generate_missing && a < n_algs; a++) {
		if (keys_signer(keys, algs[a]) != NULL)
			continue;
		r = hsm_generate_key(hsm, algs[a], rsa_bits, NULL, 0, &generated);
		if (r < 0)
			goto out;
		r = keys_add(keys, &generated);
		if (r < 0) {
			/* Kept, it would be skipped and generated anew on every start. */
			log_error("\"the verifier refuses the generated key; destroyed\" kid=%s alg=%s bits=%d",
				  generated.kid, jws_alg_name(generated.alg), EVP_PKEY_get_bits(generated.public_key));
			hsm_destroy_key(hsm, &generated);
			EVP_PKEY_free(generated.public_key);
			goto out;
		}
	}
	r = keys_build_jwks(keys);
	if (r < 0)
		goto out;
	*ret_keys = keys;
	keys = NULL;
out:
	keys_free(keys);
	hsm_keys_free(found, n);
	hsm_session_close(session);
	return r;
}

const struct jwk_key *keys_lookup(void *ctx, const char *kid)
{
	const struct keys *keys = ctx;

	if (kid == NULL)
		return NULL;
	for (size_t i = 0; i < keys->count; i++)
		if (strcmp(keys->entries[i].hsm.kid, kid) == 0)
			return keys->entries[i].verify;
	return NULL;
}

const struct keys_entry *keys_signer(const struct keys *keys, enum jws_alg alg)
{
	if ((int)alg <= 0 || alg >= JWS_ALG_COUNT)
		return NULL;
	return keys->signer[alg];
}
