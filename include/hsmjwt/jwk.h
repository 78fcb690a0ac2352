/* jwk: JSON Web Keys (RFC 7517/7518/8037) and the JWS algorithm names.
 *
 * A struct jwk_key is a verification key: a public key (RSA, EC P-256/384/521,
 * Ed25519) held as an EVP_PKEY, or an HMAC secret (kty "oct", only ever from
 * an external JWK — the service's own HMAC keys never leave the token). */
#ifndef HSMJWT_JWK_H
#define HSMJWT_JWK_H

#include <jansson.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

enum jws_alg {
	JWS_ALG_INVALID = 0,
	JWS_ALG_HS256, JWS_ALG_HS384, JWS_ALG_HS512,
	JWS_ALG_RS256, JWS_ALG_RS384, JWS_ALG_RS512,
	JWS_ALG_PS256, JWS_ALG_PS384, JWS_ALG_PS512,
	JWS_ALG_ES256, JWS_ALG_ES384, JWS_ALG_ES512,
	JWS_ALG_EDDSA,
	JWS_ALG_COUNT
};

/* Exact, case-sensitive names ("none" and unknown names give -EINVAL). */
int jws_alg_from_name(const char *name, enum jws_alg *ret_alg);
const char *jws_alg_name(enum jws_alg alg);

/* RFC 7638 thumbprint: base64url(SHA-256) = 43 characters. */
#define JWK_KID_MAX 128
#define JWK_THUMBPRINT_LEN 43

struct jwk_key;

/* Verifies sig over data for a key whose secret never leaves a token (this
 * service's HS256 keys): ctx is the lookup context jws_verify was given.
 * 0, JWS_E_BAD_SIGNATURE, or JWS_E_UNAVAILABLE when the token cannot be
 * asked now. */
typedef int (*jwk_external_verify_fn)(void *ctx, const struct jwk_key *key, const uint8_t *data, size_t data_len,
				      const uint8_t *sig, size_t sig_len);

struct jwk_key {
	char kid[JWK_KID_MAX + 1];   /* "" when the JWK has none */
	enum jws_alg alg;            /* JWS_ALG_INVALID when the JWK names none */
	EVP_PKEY *pkey;              /* public key; NULL for kty "oct" */
	uint8_t *secret;             /* kty "oct" only; wiped on free */
	size_t secret_len;
	unsigned verify_allowed : 1; /* false when "use" is not "sig" or "key_ops" lacks "verify" */
	jwk_external_verify_fn verify_external;  /* NULL but for keys made by jwk_key_external */
	uint64_t serial;             /* unique in the process, never reused (jws_verify's memo) */
};

/* Parses one JWK object.  Private members (d, p, q, ...) are ignored; the key
 * must be usable: RSA >= 2048 bits, points on their curve.  0 and *ret_key
 * (caller jwk_key_free()s), -EINVAL, or -ENOMEM. */
int jwk_key_from_json(const json_t *jwk, struct jwk_key **ret_key);
/* Wraps a public EVP_PKEY (one reference is taken, the caller keeps its own)
 * with a fixed alg; the kid is the RFC 7638 thumbprint. */
int jwk_key_from_pkey(EVP_PKEY *pkey, enum jws_alg alg, struct jwk_key **ret_key);
/* A key with no material in this process: kid, an HMAC alg, and the
 * function that verifies inside the token. */
int jwk_key_external(const char *kid, enum jws_alg alg, jwk_external_verify_fn verify, struct jwk_key **ret_key);
void jwk_key_free(struct jwk_key *key);

/* RFC 8725 §3.1: a key verifies exactly one family.  True when the key may
 * verify a signature made with alg: an alg named by the JWK must match exactly;
 * otherwise alg must fit the key type (RSA: RS*, PS*; EC: the ES* of its
 * curve; Ed25519: EdDSA; oct: HS*), and verify_allowed must be set. */
int jwk_key_allows_alg(const struct jwk_key *key, enum jws_alg alg);

/* The public JWK of pkey: {kty, crv?, x?, y?, n?, e?} plus "kid", "alg", "use":"sig"
 * when kid/alg are given.  New reference. */
int jwk_public_to_json(EVP_PKEY *pkey, const char *kid, enum jws_alg alg, json_t **ret_jwk);
/* The NID of pkey's curve when it is one JWS uses (P-256, P-384, P-521),
 * else NID_undef. */
int jwk_ec_curve_nid(const EVP_PKEY *pkey);

/* RFC 7638 thumbprint of pkey's public part into ret_kid[JWK_THUMBPRINT_LEN + 1]. */
int jwk_thumbprint(EVP_PKEY *pkey, char *ret_kid);

#endif
