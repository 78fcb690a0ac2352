/* auth: who is calling (SPEC §4.1).  A management call carries an access
 * token of this service: signed by one of its published keys, unexpired,
 * typ at+jwt, iss = issuer, aud containing issuer, and a "roles" array. */
#ifndef HSMJWT_AUTH_H
#define HSMJWT_AUTH_H

#include <jansson.h>
#include <stdint.h>

#include "hsmjwt/config.h"
#include "hsmjwt/keys.h"

enum auth_role {
	AUTH_ROLE_TOKENS_ISSUE      = 1u << 0,
	AUTH_ROLE_TOKENS_READ       = 1u << 1,
	AUTH_ROLE_TOKENS_REVOKE     = 1u << 2,
	AUTH_ROLE_TOKENS_INTROSPECT = 1u << 3,
	AUTH_ROLE_KEYS_ADMIN        = 1u << 4,
	AUTH_ROLE_ADMIN             = 1u << 5,  /* every role */
};

#define AUTH_SUB_MAX 256
#define AUTH_ORG_MAX 128
#define AUTH_JTI_MAX 64

struct auth_caller {
	char sub[AUTH_SUB_MAX + 1];
	char org[AUTH_ORG_MAX + 1];   /* "" when the caller has no org */
	unsigned roles;
	int64_t exp;                  /* when the caller's own token expires */
	char jti[AUTH_JTI_MAX + 1];   /* "" when the token has none: the registry
				       * check (api) needs it to refuse a revoked caller */
};

/* "tokens:issue" → AUTH_ROLE_TOKENS_ISSUE; 0 or -EINVAL. */
int auth_role_from_name(const char *name, unsigned *ret_role);
/* A JSON array of role names → bit set; -EINVAL for a non-array, a
 * non-string or an unknown name (naming it in err). */
int auth_roles_from_json(const json_t *roles, unsigned *ret_roles, char *err, size_t errlen);

/* The token of an Authorization header value "Bearer <token>": 0 and
 * *ret_token (pointing into authorization), or -ENOENT when no bearer token
 * was sent at all — no value, another scheme, nothing after the scheme —
 * which RFC 6750 §3.1 answers with a challenge but no error code. */
int auth_bearer_token(const char *authorization, const char **ret_token);

/* Checks an "Authorization" header value against the keys of view.  0 and
 * *ret_caller, -EACCES (no usable credential: 401) with the reason in err —
 * never the token — or -EAGAIN when its key verifies in a token that cannot
 * be asked now (HS256 while the token is down: 503). */
int auth_bearer(const char *authorization, const struct keys_view *view, const struct config *cfg,
		int64_t now, struct auth_caller *ret_caller, char *err, size_t errlen);

/* True when the caller holds role (admin holds them all). */
int auth_allows(const struct auth_caller *caller, unsigned role);

#endif
