/* issue: turning a request into a signed token of any family (SPEC §5.1).
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

/* The token families of SPEC §5.1.  The header typ tells them apart, so
 * that no token of one kind passes where another is expected (RFC 8725
 * §3.11): access and child tokens are the bearer tokens of APIs (at+jwt,
 * RFC 9068), refresh tokens rt+jwt, ID tokens JWT (OIDC), parents
 * parent+jwt. */
enum issue_type {
	ISSUE_ACCESS,
	ISSUE_REFRESH,
	ISSUE_ID,
	ISSUE_PARENT,
	ISSUE_CHILD,
};

/* Everything a token is made from.  Strings and JSON are borrowed (from a
 * request body, a code, a parent token) for the duration of the call.
 * issue_parse_body fills one from POST /token; the flows (refresh and code
 * grants, pairs, renewal) fill their own. */
struct issue_request {
	enum issue_type type;
	const char *subject;            /* required */
	const json_t *audience;         /* string or array; NULL: default_audience (ID: client_id) */
	const char *scope;              /* NULL: none (ID tokens never carry one) */
	const char *client_id;          /* NULL: none; required for ID tokens (aud, azp) */
	const char *org;                /* NULL: none */
	const char *nonce;              /* ID only; NULL: none */
	int64_t auth_time;              /* ID only; 0: none */
	const json_t *claims;           /* custom claims object or NULL; registered names refused */
	int64_t ttl;                    /* seconds, 1..max_ttl */
	enum jws_alg alg;               /* JWS_ALG_INVALID: the type's default (ID: RS256, else algorithms[0]) */
	const char *family;             /* REFRESH: NULL starts a family (its own jti); ACCESS, ID issued
					 * by a grant: the family recorded in the registry (not a claim) */
	const char *parent_jti;         /* CHILD: required */
	int auto_renew;                 /* PARENT: the daemon renews its child (claim auto_renew: true) */
	const char *name;               /* ISSUE_NAMED */
	const char *description;
};

/* Outcome codes besides 0: -EINVAL (400 invalid_request), -EACCES (403),
 * HSM_E_DEVICE (503), other negatives (500).  err gets a client-safe text. */

/* POST /token's body → request: token_type access (default), refresh or id,
 * members per type (an unknown member is refused: a typo must not silently
 * get a default), org confinement, roles a caller may grant (only access
 * tokens carry roles), lifetimes bounded by max_ttl and, for a credential
 * to this service, by the caller's own exp.  The request borrows from
 * body. */
int issue_parse_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		     unsigned flags, struct issue_request *ret_request, char *err, size_t errlen);

/* POST /token-pairs' body (SPEC §4.2): the parent's request and what the
 * pair adds. */
struct issue_pair {
	struct issue_request parent;    /* ISSUE_PARENT; auto_renew from the body (default false) */
	int64_t child_ttl;              /* child_expires_in or child_ttl, at most the parent's */
	int include_child;              /* default true */
};

/* Members subject, audience?, scope?, client_id?, org?, claims?,
 * parent_expires_in?, child_expires_in?, include_child?, auto_renew? (any
 * other is refused), checked as issue_parse_body checks its own: org
 * confinement, custom claims (no roles: parents and children never carry
 * them), lifetimes up to max_ttl and, for a parent addressed to this
 * service, the caller's exp.  An explicit child_expires_in past the
 * parent's lifetime is refused; the default is shortened to it.  With
 * auto_renew, a child shorter than its parent and than twice renew_before
 * is refused (-EINVAL).  The pair borrows from body. */
int issue_parse_pair_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
			  struct issue_pair *ret_pair, char *err, size_t errlen);

/* A token's claims before signing. */
struct issue_claims {
	json_t *claims;          /* owned: json_decref */
	enum jws_alg alg;
	uint32_t status_idx;     /* global status-list index, REGISTRY_NO_INDEX without registry */
};

/* The claims of SPEC §5.1 for request, without signing.  With ctx->registry
 * a status-list index is reserved and the status claim set. */
int issue_build_claims(const struct issue_ctx *ctx, const struct issue_request *request,
		       struct issue_claims *ret_built, char *err, size_t errlen);

/* A signed token and what registering it needs. */
struct issue_result {
	char *token;                     /* malloc'd; issue_result_clear wipes and frees it */
	char jti[ISSUE_JTI_LEN + 1];
	int64_t exp;
	int64_t expires_in;
	enum jws_alg alg;
	struct registry_record record;   /* register before handing the token out */
};

/* Builds, signs and describes one token. */
int issue_token(const struct issue_ctx *ctx, const struct issue_request *request, struct issue_result *ret_result,
		char *err, size_t errlen);
void issue_result_clear(struct issue_result *result);

/* 1 when an ID token may be signed with alg: a configured algorithm whose
 * key is published, i.e. any but HS256.  The discovery document's
 * id_token_signing_alg_values_supported lists exactly these, so that what
 * is issued and what is advertised cannot drift apart. */
int issue_id_alg_allowed(const struct config *cfg, enum jws_alg alg);

/* The custom claims of a token this service issued — every member but the
 * registered ones, those the flows interpret, and roles — for a token
 * derived from it (the access token of a refresh grant, a parent's child).
 * *ret_custom: a new object (maybe empty). */
int issue_custom_claims_of(const json_t *claims, json_t **ret_custom);

/* The header typ of the family whose token_type claim is name ("access",
 * "refresh", "id", "parent", "child"), or NULL for any other name: what a
 * verifier demands when it is told which family to expect. */
const char *issue_typ_for(const char *name);

/* The response member a token is handed out under ("access_token",
 * "refresh_token", "id_token", "parent_token", "child_token"). */
const char *issue_response_member(enum issue_type type);

/* POST /token and POST /tokens: issue_parse_body + issue_token, answered as
 * {"<type>_token": ..., "token_type": "Bearer", "expires_in", "jti"}.
 * *ret_record (may be NULL) is the record to register before the answer is
 * handed out. */
int issue_from_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		    unsigned flags, json_t **ret_response, struct registry_record *ret_record, char *err,
		    size_t errlen);

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
