/* keys: the service's key set — every hsmjwt key pair found in the token,
 * its public JWK, the signing key of each algorithm, and the JWKS document.
 *
 * A struct keys is immutable once loaded, so worker threads read it without
 * locks; a change (generation, later rotation) builds a new one. */
#ifndef HSMJWT_KEYS_H
#define HSMJWT_KEYS_H

#include <jansson.h>
#include <stddef.h>

#include "hsmjwt/hsm.h"
#include "hsmjwt/jwk.h"

struct keys_entry {
	struct hsm_key hsm;          /* alg, kid, object handles, public key */
	struct jwk_key *verify;      /* verification key, alg fixed to hsm.alg */
};

struct keys {
	struct keys_entry *entries;
	size_t count;
	/* Signing key per algorithm, NULL when the token has none.  With several
	 * keys for one algorithm the smallest kid signs, so that every process
	 * sharing the token makes the same choice (the key lifecycle of issue 4
	 * replaces this with explicit states). */
	const struct keys_entry *signer[JWS_ALG_COUNT];
	char *jwks;                  /* the JWKS document, compact JSON */
	size_t jwks_len;
	char etag[40];               /* quoted strong ETag of jwks */
};

/* Reads every key from the token.  A key the verifier refuses (an RSA key
 * under 2048 bits) is skipped with a warning and counts as absent.  When
 * generate_missing is set, each of algs[0..n_algs) that has no usable key
 * gets one generated in the token (rsa_bits for RSA).  0 and *ret_keys
 * (keys_free), or a negative error. */
int keys_load(struct hsm *hsm, const enum jws_alg *algs, size_t n_algs, unsigned rsa_bits,
	      int generate_missing, struct keys **ret_keys);
void keys_free(struct keys *keys);

/* jws_key_lookup_fn over a struct keys (ctx). */
const struct jwk_key *keys_lookup(void *ctx, const char *kid);

/* The key that signs alg, or NULL. */
const struct keys_entry *keys_signer(const struct keys *keys, enum jws_alg alg);

#endif
