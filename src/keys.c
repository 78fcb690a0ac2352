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

static int keys_from_found(struct hsm_key *found, size_t n, struct keys **ret_keys)
{
	struct keys *keys;
	int r = -ENOMEM;

	keys = calloc(1, sizeof(*keys));
	if (keys == NULL)
		return -ENOMEM;
	keys->entries = calloc(n ? n : 1, sizeof(*keys->entries));
	if (keys->entries == NULL)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		struct keys_entry *e = &keys->entries[keys->count];
		r = jwk_key_from_pkey(found[i].public_key, found[i].alg, &e->verify);
		if (r < 0)
			goto fail;
		e->hsm = found[i];
		found[i].public_key = NULL; /* ownership moved */
		keys->count++;
		const struct keys_entry **slot = &keys->signer[e->hsm.alg];
		if (*slot == NULL || strcmp(e->hsm.kid, (*slot)->hsm.kid) < 0)
			*slot = e;
	}
	r = keys_build_jwks(keys);
	if (r < 0)
		goto fail;
	*ret_keys = keys;
	return 0;
fail:
	keys_free(keys);
	return r;
}

int keys_load(struct hsm *hsm, const enum jws_alg *algs, size_t n_algs, unsigned rsa_bits,
	      int generate_missing, struct keys **ret_keys)
{
	struct hsm_session *session = NULL;
	struct hsm_key *found = NULL, *grown;
	size_t n = 0;
	int r;

	r = hsm_session_open(hsm, &session);
	if (r < 0)
		return r;
	r = hsm_find_keys(session, &found, &n);
	if (r < 0)
		goto out;
	for (size_t a = 0; generate_missing && a < n_algs; a++) {
		int have = 0;
		for (size_t i = 0; i < n; i++)
			have |= found[i].alg == algs[a];
		if (have)
			continue;
		grown = realloc(found, (n + 1) * sizeof(*found));
		if (grown == NULL) {
			r = -ENOMEM;
			goto out;
		}
		found = grown;
		r = hsm_generate_key(hsm, algs[a], rsa_bits, &found[n]);
		if (r < 0)
			goto out;
		n++;
	}
	r = keys_from_found(found, n, ret_keys);
out:
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
