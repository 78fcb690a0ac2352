/* issue: turning a request into a signed token (SPEC §5.1).
 *
 * Request validation is separate from signing so that it can be tested
 * without a token; signing goes through the worker's hsm_session. */
#ifndef HSMJWT_ISSUE_H
#define HSMJWT_ISSUE_H

#include <jansson.h>
#include <stdint.h>

#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/keys.h"

#define ISSUE_JTI_LEN 22   /* 128 random bits, base64url */

struct issue_ctx {
	const struct config *cfg;
	const struct keys *keys;
	struct hsm_session *session;
	int64_t now;
};

/* Outcome codes besides 0: -EINVAL (400 invalid_request), -EACCES (403),
 * HSM_E_DEVICE (503), other negatives (500).  err gets a client-safe text. */

/* POST /token for an access token: validates body against cfg and caller
 * (org confinement, roles a caller may grant), builds the claims and signs.
 * *ret_response is the JSON answer (new reference). */
int issue_access_token(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		       json_t **ret_response, char *err, size_t errlen);

/* Validates a request body into the claims of an access token, without
 * signing: *ret_claims (new reference) and *ret_alg. */
int issue_build_access_claims(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
			      json_t **ret_claims, enum jws_alg *ret_alg, char *err, size_t errlen);

/* The management token of `hsmjwtctl mint`: aud = [issuer], the given roles
 * and org, signed by the first configured algorithm's key. */
int issue_mint(const struct issue_ctx *ctx, const char *sub, const char *org, const json_t *roles,
	       int64_t ttl, char **ret_token);

/* Signs claims with the signer of alg under header {alg, kid, typ}. */
int issue_sign(const struct issue_ctx *ctx, enum jws_alg alg, const char *typ, const json_t *claims,
	       char **ret_token);

/* A fresh jti: ISSUE_JTI_LEN characters and a NUL. */
int issue_new_jti(char *ret_jti);

#endif
