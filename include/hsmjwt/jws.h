/* jws: JWS compact serialization (RFC 7515) — parse, verify, sign.
 *
 * Verification enforces the header rules of RFC 8725 as SPEC §5.2 lists them;
 * the payload is opaque here (jwt.h adds the claims rules).  Signing takes a
 * callback so that private-key operations stay in the hsm module. */
#ifndef HSMJWT_JWS_H
#define HSMJWT_JWS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"

/* Limits of SPEC §5.2. */
#define JWS_MAX_TOKEN   16384   /* whole compact token, characters */
#define JWS_MAX_HEADER  8192    /* decoded header JSON, bytes */
#define JWS_MAX_PAYLOAD 8192    /* decoded payload, bytes */
#define JWS_MAX_SIG     1024    /* decoded signature, bytes (RSA 8192) */

/* Verification outcomes.  Every function in jws.h and jwt.h returns 0 or one
 * of these (or -ENOMEM); jws_error_reason() names them as /token/verify does. */
enum jws_error {
	JWS_E_MALFORMED      = -1001, /* structure, base64url, JSON, limits, forbidden header members */
	JWS_E_UNSUPPORTED_ALG = -1002, /* alg unknown, "none", or not allowed for the key */
	JWS_E_UNKNOWN_KID    = -1003,
	JWS_E_BAD_SIGNATURE  = -1004,
	JWS_E_EXPIRED        = -1005,
	JWS_E_NOT_YET_VALID  = -1006,
	JWS_E_WRONG_AUDIENCE = -1007,
	JWS_E_WRONG_ISSUER   = -1008,
	JWS_E_WRONG_TYPE     = -1009,
	JWS_E_REVOKED        = -1010,
	JWS_E_SUSPENDED      = -1011,
	JWS_E_UNAVAILABLE    = -1012, /* the key verifies in a token that cannot be asked now */
};

/* "malformed", "unsupported_alg", ... ; "internal_error" for anything else. */
const char *jws_error_reason(int err);

/* A parsed, not yet verified, compact JWS.  All buffers are owned. */
struct jws_parsed {
	json_t *header;            /* the protected header object */
	enum jws_alg alg;
	const char *kid;           /* points into header, or NULL */
	uint8_t *payload;          /* decoded payload, NUL-terminated for convenience */
	size_t payload_len;
	uint8_t *signature;
	size_t signature_len;
	size_t signing_input_len;  /* length of "header.payload" at the token's start */
};

/* Parses token[0..len): exactly three parts, canonical base64url, header a
 * strict JSON object (no duplicates, depth <= 16) within the limits, "alg" a
 * known algorithm other than none, no "jwk", "jku", "x5u", "x5c", "crit" or
 * "b64", "kid" (if present) a string.  0 and *ret_parsed (jws_parsed_free()),
 * JWS_E_MALFORMED or JWS_E_UNSUPPORTED_ALG. */
int jws_parse(const char *token, size_t len, struct jws_parsed **ret_parsed);
void jws_parsed_free(struct jws_parsed *parsed);

/* Checks sig over data with key for alg: the key must allow alg
 * (jwk_key_allows_alg), ECDSA signatures must be exactly 2 * the curve's
 * byte size in r||s form with 0 < r, s < n, RSA signatures exactly the modulus
 * length, PS* use MGF1 with the same hash and a salt of the hash length.
 * 0, JWS_E_UNSUPPORTED_ALG or JWS_E_BAD_SIGNATURE. */
int jws_verify_signature(enum jws_alg alg, const struct jwk_key *key,
			 const uint8_t *data, size_t data_len,
			 const uint8_t *sig, size_t sig_len);

/* The P1363 range check on its own (exposed for tests): 0 when sig is
 * 2 * order_bytes long and 0 < r, s < n of the key's curve, else JWS_E_BAD_SIGNATURE. */
int jws_ecdsa_sig_check(const EVP_PKEY *pkey, const uint8_t *sig, size_t sig_len);

/* Finds a verification key by kid; returns NULL when there is none.  kid is
 * NULL when the header has none. */
typedef const struct jwk_key *(*jws_key_lookup_fn)(void *ctx, const char *kid);

/* jws_parse + key lookup + jws_verify_signature.  On success *ret_parsed
 * holds the verified token.  JWS_E_UNKNOWN_KID when lookup finds nothing.
 * With the memo on, a token whose exact bytes verified before in this
 * thread under the same key (jwk_key.serial) is not checked again. */
int jws_verify(const char *token, size_t len, jws_key_lookup_fn lookup, void *lookup_ctx,
	       struct jws_parsed **ret_parsed);

/* Turns on jws_verify's memo of verified signatures for the process: each
 * thread keeps the SHA-256 of up to slots (a power of two, at most
 * JWS_MEMO_MAX_SLOTS; 40 bytes each) tokens that verified, direct-mapped, and
 * which key verified each.  Off by default (libhsmjwt-verify keeps it off);
 * once on, it stays on with that size: -EALREADY for another.  Claims
 * (exp, nbf, iss, aud, typ) are not part of it: jwt_verify checks them on
 * every call. */
#define JWS_MEMO_MAX_SLOTS 65536
int jws_verify_memo_enable(size_t slots);

/* Signs data; writes the JOSE-form signature (r||s for ECDSA) into sig
 * (capacity *sig_len, updated).  Returns 0 or a negative error. */
typedef int (*jws_sign_fn)(void *ctx, const uint8_t *data, size_t data_len,
			   uint8_t *sig, size_t *sig_len);

/* Serializes header and payload compactly (JSON_COMPACT, keys in insertion
 * order), signs "b64(header).b64(payload)" with sign, and returns the compact
 * token in *ret_token (malloc'd, caller frees). */
int jws_sign_compact(const json_t *header, const json_t *payload,
		     jws_sign_fn sign, void *sign_ctx, char **ret_token);

#endif
