#include "hsmjwt/auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "hsmjwt/jwt.h"

static const struct {
	const char *name;
	unsigned role;
} auth_roles[] = {
	{ "tokens:issue", AUTH_ROLE_TOKENS_ISSUE },
	{ "tokens:read", AUTH_ROLE_TOKENS_READ },
	{ "tokens:revoke", AUTH_ROLE_TOKENS_REVOKE },
	{ "tokens:introspect", AUTH_ROLE_TOKENS_INTROSPECT },
	{ "keys:admin", AUTH_ROLE_KEYS_ADMIN },
	{ "admin", AUTH_ROLE_ADMIN },
};

int auth_role_from_name(const char *name, unsigned *ret_role)
{
	for (size_t i = 0; i < sizeof(auth_roles) / sizeof(auth_roles[0]); i++) {
		if (strcmp(name, auth_roles[i].name) == 0) {
			*ret_role = auth_roles[i].role;
			return 0;
		}
	}
	return -EINVAL;
}

int auth_roles_from_json(const json_t *roles, unsigned *ret_roles, char *err, size_t errlen)
{
	unsigned set = 0, one;
	size_t i;
	json_t *v;

	if (!json_is_array(roles)) {
		snprintf(err, errlen, "roles must be an array of role names");
		return -EINVAL;
	}
	json_array_foreach(roles, i, v) {
		if (!json_is_string(v) || auth_role_from_name(json_string_value(v), &one) < 0) {
			snprintf(err, errlen, "unknown role at roles[%zu]", i);
			return -EINVAL;
		}
		set |= one;
	}
	*ret_roles = set;
	return 0;
}

int auth_allows(const struct auth_caller *caller, unsigned role)
{
	return (caller->roles & AUTH_ROLE_ADMIN) || (caller->roles & role) == role;
}

static int auth_copy_string(const json_t *claims, const char *name, char *dst, size_t size, int required)
{
	const json_t *v = json_object_get(claims, name);

	if (v == NULL && !required) {
		dst[0] = '\0';
		return 0;
	}
	if (!json_is_string(v) || json_string_length(v) >= size || json_string_length(v) == 0)
		return -EINVAL;
	memcpy(dst, json_string_value(v), json_string_length(v) + 1);
	return 0;
}

/* exp as whole seconds.  jwt_verify has checked it is a number; a real is
 * cut down, which only ever shortens what the caller may hand on, and one
 * beyond int64 is clamped, since converting it would be undefined. */
static int64_t auth_exp_seconds(const json_t *exp)
{
	double d;

	if (json_is_integer(exp))
		return (int64_t)json_integer_value(exp);
	d = json_real_value(exp);
	if (!(d < 9223372036854775807.0))
		return INT64_MAX;
	if (!(d > -9223372036854775807.0))
		return INT64_MIN;
	return (int64_t)d;
}

int auth_bearer_token(const char *authorization, const char **ret_token)
{
	const char *token;

	/* RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme is case-insensitive
	 * (RFC 9110 §11.1).  The token's own syntax is jws_parse's to judge. */
	if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
		return -ENOENT;
	token = authorization + 7 + strspn(authorization + 7, " ");
	if (*token == '\0')
		return -ENOENT;
	*ret_token = token;
	return 0;
}

int auth_bearer(const char *authorization, const struct keys_view *view, const struct config *cfg,
		int64_t now, struct auth_caller *ret_caller, char *err, size_t errlen)
{
	struct jwt_expect expect = {
		.now = now, .leeway = cfg->leeway, .issuer = cfg->issuer, .audience = cfg->issuer,
		.typ = "at+jwt", .token_type = "access",
	};
	struct auth_caller caller;
	json_t *header = NULL, *claims = NULL;
	const char *token;
	char role_err[96];
	int r;

	if (auth_bearer_token(authorization, &token) < 0) {
		snprintf(err, errlen, authorization == NULL ? "missing bearer token"
							    : "authorization must be the Bearer scheme and a token");
		return -EACCES;
	}
	/* A token without "roles" authenticates but may call nothing (403). */
	r = jwt_verify(token, strlen(token), keys_lookup, (void *)view, &expect, &header, &claims);
	if (r < 0) {
		snprintf(err, errlen, "bearer token rejected: %s", jws_error_reason(r));
		r = r == JWS_E_UNAVAILABLE ? -EAGAIN : -EACCES;
		goto out;
	}
	memset(&caller, 0, sizeof(caller));
	if (auth_copy_string(claims, "sub", caller.sub, sizeof(caller.sub), 1) < 0 ||
	    auth_copy_string(claims, "org", caller.org, sizeof(caller.org), 0) < 0 ||
	    auth_copy_string(claims, "jti", caller.jti, sizeof(caller.jti), 0) < 0 ||
	    (json_object_get(claims, "roles") != NULL &&
	     auth_roles_from_json(json_object_get(claims, "roles"), &caller.roles, role_err, sizeof(role_err)) < 0)) {
		snprintf(err, errlen, "bearer token lacks a valid sub, org, jti or roles claim");
		r = -EACCES;
		goto out;
	}
	caller.exp = auth_exp_seconds(json_object_get(claims, "exp"));
	*ret_caller = caller;
	r = 0;
out:
	json_decref(header);
	json_decref(claims);
	return r;
}
