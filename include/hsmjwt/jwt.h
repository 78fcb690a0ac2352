/* jwt: JWT claims rules (RFC 7519, RFC 8725, SPEC §5.2) on top of jws.h. */
#ifndef HSMJWT_JWT_H
#define HSMJWT_JWT_H

#include <jansson.h>
#include <stdint.h>

#include "hsmjwt/jws.h"

struct jwt_expect {
	int64_t now;            /* seconds since the epoch */
	int64_t leeway;         /* seconds of clock skew accepted */
	const char *issuer;     /* NULL: not checked */
	const char *audience;   /* NULL: not checked; else must be aud or one of aud[] */
	const char *typ;        /* NULL: not checked; else header "typ" must equal it */
	const char *token_type; /* NULL: not checked; else claim "token_type" must equal it */
};

/* Checks a claims object: "exp" present and a number, "nbf"/"iat" numbers if
 * present; now >= exp + leeway → JWS_E_EXPIRED (RFC 7519: valid only before exp); now + leeway < nbf or
 * now + leeway < iat → JWS_E_NOT_YET_VALID; issuer/audience/typ/token_type per
 * expect.  header may be NULL when typ is not checked. */
int jwt_check_claims(const json_t *header, const json_t *claims, const struct jwt_expect *expect);

/* jws_verify + payload parsed as a strict JSON object + jwt_check_claims.
 * On success *ret_header and *ret_claims are new references. */
int jwt_verify(const char *token, size_t len, jws_key_lookup_fn lookup, void *lookup_ctx,
	       const struct jwt_expect *expect, json_t **ret_header, json_t **ret_claims);

/* Decodes header and payload without verifying anything (for `hsmjwtctl
 * decode`); both new references. */
int jwt_decode_unverified(const char *token, size_t len, json_t **ret_header, json_t **ret_claims);

#endif
