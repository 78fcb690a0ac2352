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
#include "hsmjwt/registry.h"

#define ISSUE_JTI_LEN 22   /* 128 random bits, base64url */
#define ISSUE_NAME_MAX REGISTRY_NAME_MAX
#define ISSUE_DESCRIPTION_MAX REGISTRY_DESCRIPTION_MAX

struct issue_ctx {
	const struct config *cfg;
	const struct keys *keys;
	struct hsm_session *session;
	int64_t now;
	/* Where a token's status-list index comes from (SPEC §5.1): NULL for
	 * tokens minted offline by hsmjwtctl, which the daemon's registry does
	 * not know and which therefore carry no status claim. */
	struct registry *registry;
};

/* What an issued token's registry record needs beyond its claims. */
enum issue_flags {
	ISSUE_NAMED = 1u << 0,   /* POST /tokens: the body may carry name, description */
};

/* Outcome codes besides 0: -EINVAL (400 invalid_request), -EACCES (403),
 * HSM_E_DEVICE (503), other negatives (500).  err gets a client-safe text. */

/* POST /token for an access token: validates body against cfg and caller
 * (org confinement, roles a caller may grant), builds the claims and signs.
 * *ret_response is the JSON answer (new reference); *ret_record (may be
 * NULL) the registry record of the token, for the caller to register
 * before it hands the answer out. */
int issue_access_token(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		       unsigned flags, json_t **ret_response, struct registry_record *ret_record, char *err,
		       size_t errlen);

/* An access token's claims before signing. */
struct issue_claims {
	json_t *claims;          /* owned: json_decref */
	enum jws_alg alg;
	uint32_t status_idx;     /* global status-list index, REGISTRY_NO_INDEX without registry */
};

/* Validates a request body into the claims of an access token, without
 * signing.  With ctx->registry a status-list index is reserved and the
 * status claim set. */
int issue_build_access_claims(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
			      unsigned flags, struct issue_claims *ret_built, char *err, size_t errlen);

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
