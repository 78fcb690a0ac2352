#include "hsmjwt/issue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"
#include "hsmjwt/statuslist.h"

#define ISSUE_MAX_AUDIENCES 16
#define ISSUE_MAX_STRING 1024

/* Registered claims a request may not set through "claims" (SPEC §5.1), the
 * ones this service derives from request fields or the caller, and the ones
 * its later flows interpret (ID tokens, refresh families, parent/child), so
 * that no caller can preset them today. */
static const char *const reserved_claims[] = {
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "token_type", "status",
	"org", "scope", "client_id", "nonce", "auth_time", "azp", "family", "parent_jti", "auto_renew",
};

/* The members POST /token takes per token_type, and POST /tokens (a named
 * access token): anything else is a typo ("expires_In") that would
 * silently get a default, so it is refused. */
static const char *const access_members[] = {
	"subject", "audience", "scope", "token_type", "client_id", "org", "claims", "expires_in", "alg",
};
static const char *const refresh_members[] = {
	"subject", "audience", "scope", "token_type", "client_id", "org", "claims", "expires_in", "alg",
};
/* An ID token's audience is its client (OIDC Core §2): no "audience". */
static const char *const id_members[] = {
	"subject", "token_type", "client_id", "org", "claims", "expires_in", "nonce", "auth_time", "alg",
};
static const char *const named_members[] = {
	"subject", "audience", "scope", "client_id", "org", "claims", "expires_in", "alg", "name", "description",
};

static const struct {
	const char *name;        /* token_type claim */
	const char *typ;         /* header typ */
	const char *member;      /* response member */
	enum registry_type record;
} issue_types[] = {
	[ISSUE_ACCESS] = { "access", "at+jwt", "access_token", REGISTRY_TYPE_ACCESS },
	[ISSUE_REFRESH] = { "refresh", "rt+jwt", "refresh_token", REGISTRY_TYPE_REFRESH },
	[ISSUE_ID] = { "id", "JWT", "id_token", REGISTRY_TYPE_ID },
	[ISSUE_PARENT] = { "parent", "parent+jwt", "parent_token", REGISTRY_TYPE_PARENT },
	[ISSUE_CHILD] = { "child", "at+jwt", "child_token", REGISTRY_TYPE_CHILD },
};

const char *issue_typ_for(const char *name)
{
	for (size_t i = 0; i < sizeof(issue_types) / sizeof(issue_types[0]); i++)
		if (strcmp(name, issue_types[i].name) == 0)
			return issue_types[i].typ;
	return NULL;
}

const char *issue_response_member(enum issue_type type)
{
	return issue_types[type].member;
}

int issue_new_jti(char *ret_jti)
{
	uint8_t raw[16];

	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		log_error("\"RAND_bytes failed\"");
		return -EIO;
	}
	b64url_encode(raw, sizeof(raw), ret_jti);
	return 0;
}

struct sign_ctx {
	struct hsm_session *session;
	const struct hsm_key *key;
};

static int issue_sign_cb(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	const struct sign_ctx *s = ctx;
	return hsm_sign(s->session, s->key, data, data_len, sig, sig_len);
}

int issue_sign(const struct issue_ctx *ctx, enum jws_alg alg, const char *typ, const json_t *claims,
	       char **ret_token)
{
	const struct keys_entry *signer = keys_signer_at(ctx->keys, alg, ctx->now);
	struct sign_ctx sctx;
	json_t *header;
	int r;

	if (signer == NULL) {
		log_error("\"no signing key\" alg=%s", jws_alg_name(alg));
		return -ENOENT;
	}
	header = json_pack("{s:s, s:s, s:s}", "alg", jws_alg_name(alg), "kid", signer->hsm.kid, "typ", typ);
	if (header == NULL)
		return -ENOMEM;
	sctx.session = ctx->session;
	sctx.key = &signer->hsm;
	r = jws_sign_compact(header, claims, issue_sign_cb, &sctx, ret_token);
	json_decref(header);
	return r;
}

/* A string member of at most max bytes, or absent (*ret NULL). */
static int issue_optional_string(const json_t *body, const char *name, size_t max, const char **ret,
				 char *err, size_t errlen)
{
	if (json_optional_string(body, name, max, ret) < 0) {
		snprintf(err, errlen, "%s must be a non-empty string of at most %zu bytes", name, max);
		return -EINVAL;
	}
	return 0;
}

static int issue_known_members(const json_t *body, const char *const *known, size_t n, char *err, size_t errlen)
{
	const char *name;
	json_t *value;

	json_object_foreach((json_t *)body, name, value) {
		size_t i;
		for (i = 0; i < n && strcmp(name, known[i]) != 0; i++)
			;
		if (i == n) {
			char shown[64];
			snprintf(err, errlen, "unknown member %s in the request", log_quote(shown, sizeof(shown), name));
			return -EINVAL;
		}
	}
	return 0;
}

/* An audience as a request gives it: a string or 1..16 strings. */
static int issue_audience_valid(const json_t *v)
{
	size_t i;
	json_t *item;

	if (json_is_string(v))
		return json_string_length(v) > 0 && json_string_length(v) <= ISSUE_MAX_STRING;
	if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > ISSUE_MAX_AUDIENCES)
		return 0;
	json_array_foreach(v, i, item)
		if (!json_is_string(item) || json_string_length(item) == 0 || json_string_length(item) > ISSUE_MAX_STRING)
			return 0;
	return 1;
}

/* The lifetime member name (expires_in, ...), or fallback when absent;
 * *ret_explicit says which. */
static int issue_lifetime(const json_t *body, const char *name, int64_t fallback, int64_t max, int64_t *ret,
			  int *ret_explicit, char *err, size_t errlen)
{
	const json_t *v = json_object_get(body, name);

	if (v == NULL || json_is_null(v)) {
		*ret = fallback;
		*ret_explicit = 0;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max) {
		snprintf(err, errlen, "%s must be an integer from 1 to max_ttl (%lld)", name, (long long)max);
		return -EINVAL;
	}
	*ret = json_integer_value(v);
	*ret_explicit = 1;
	return 0;
}

/* True when aud names this service (a string or an array member). */
static int issue_aud_names(const json_t *aud, const char *issuer)
{
	size_t i;
	json_t *item;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), issuer) == 0;
	json_array_foreach(aud, i, item)
		if (json_is_string(item) && strcmp(json_string_value(item), issuer) == 0)
			return 1;
	return 0;
}

/* A token that grants roles or is addressed to this service is a credential
 * for it, and may not outlive the caller's own: otherwise one leaked
 * short-lived issuer token could renew itself for ever.  An explicit
 * expires_in past the caller's exp is refused; the default is shortened. */
static int issue_bound_by_caller(const struct issue_ctx *ctx, const struct auth_caller *caller, int explicit,
				 int64_t *ttl, char *err, size_t errlen)
{
	int64_t left;

	if (__builtin_sub_overflow(caller->exp, ctx->now, &left))
		left = caller->exp > ctx->now ? INT64_MAX : INT64_MIN;

	if (*ttl <= left)
		return 0;
	if (explicit || left < 1) {
		snprintf(err, errlen, "a token that grants roles or addresses this service cannot outlive "
			 "the caller's own (%lld s left)", (long long)(left > 0 ? left : 0));
		return -EACCES;
	}
	*ttl = left;
	return 0;
}

static int issue_alg_configured(const struct config *cfg, enum jws_alg alg)
{
	for (size_t i = 0; i < cfg->algorithm_count; i++)
		if (cfg->algorithms[i] == alg)
			return 1;
	return 0;
}

int issue_id_alg_allowed(const struct config *cfg, enum jws_alg alg)
{
	/* An ID token is verified by its relying party with the published
	 * keys; HS256's key is never published, so no client could. */
	return alg != JWS_ALG_HS256 && issue_alg_configured(cfg, alg);
}

/* The algorithm a request signs with: its own choice or the type's default
 * (OIDC Core §3.1.3.7: an ID token is RS256 unless agreed otherwise).  Only
 * configured algorithms sign: a key left in the token from an earlier
 * configuration is for verification only. */
static int issue_algorithm(const struct issue_ctx *ctx, const struct issue_request *request, enum jws_alg *ret_alg,
			   char *err, size_t errlen)
{
	enum jws_alg alg = request->alg;

	if (alg == JWS_ALG_INVALID)
		alg = request->type == ISSUE_ID ? JWS_ALG_RS256 : ctx->cfg->algorithms[0];
	if (!issue_alg_configured(ctx->cfg, alg) || keys_signer_at(ctx->keys, alg, ctx->now) == NULL) {
		snprintf(err, errlen, "alg is not one of this service's signing algorithms");
		return -EINVAL;
	}
	/* Strict relying parties refuse an ID token whose alg the discovery
	 * document does not list (SPEC §5.1): both come from one rule. */
	if (request->type == ISSUE_ID && !issue_id_alg_allowed(ctx->cfg, alg)) {
		snprintf(err, errlen, "alg is not one an ID token may carry "
			 "(id_token_signing_alg_values_supported of the discovery document)");
		return -EINVAL;
	}
	*ret_alg = alg;
	return 0;
}

/* Custom claims: an object whose members may not shadow registered claims
 * (nor the ones the flows interpret).  Roles, which make a token a
 * credential for this service, only in an access token and only those the
 * caller holds (caller NULL: a flow, whose claims come from a token this
 * service issued and checked when it did). */
static int issue_check_custom_claims(const json_t *custom, enum issue_type type, const struct auth_caller *caller,
				     char *err, size_t errlen)
{
	const char *name;
	json_t *value;
	unsigned roles;

	if (custom == NULL)
		return 0;
	if (!json_is_object(custom)) {
		snprintf(err, errlen, "claims must be an object");
		return -EINVAL;
	}
	json_object_foreach((json_t *)custom, name, value) {
		for (size_t i = 0; i < sizeof(reserved_claims) / sizeof(reserved_claims[0]); i++) {
			if (strcmp(name, reserved_claims[i]) == 0) {
				snprintf(err, errlen, "claims may not set the registered claim '%s'", reserved_claims[i]);
				return -EINVAL;
			}
		}
		if (strcmp(name, "roles") != 0)
			continue;
		if (type != ISSUE_ACCESS) {
			snprintf(err, errlen, "only access tokens carry roles");
			return -EINVAL;
		}
		if (auth_roles_from_json(value, &roles, err, errlen) < 0)
			return -EINVAL;
		if (caller != NULL && !auth_allows(caller, roles)) {
			snprintf(err, errlen, "claims.roles grants a role the caller does not hold");
			return -EACCES;
		}
	}
	return 0;
}

int issue_custom_claims_of(const json_t *claims, json_t **ret_custom)
{
	json_t *custom = json_object(), *value;
	const char *name;

	if (custom == NULL)
		return -ENOMEM;
	json_object_foreach((json_t *)claims, name, value) {
		size_t i;
		for (i = 0; i < sizeof(reserved_claims) / sizeof(reserved_claims[0]) && strcmp(name, reserved_claims[i]) != 0;
		     i++)
			;
		if (i < sizeof(reserved_claims) / sizeof(reserved_claims[0]) || strcmp(name, "roles") == 0)
			continue;
		if (json_object_set(custom, name, value) < 0) {
			json_decref(custom);
			return -ENOMEM;
		}
	}
	*ret_custom = custom;
	return 0;
}

static int issue_type_from_body(const json_t *body, unsigned flags, enum issue_type *ret_type, char *err,
				size_t errlen)
{
	const char *name = NULL;
	int r = issue_optional_string(body, "token_type", 16, &name, err, errlen);

	if (r < 0)
		return r;
	if (name == NULL || strcmp(name, "access") == 0)
		*ret_type = ISSUE_ACCESS;
	else if (strcmp(name, "refresh") == 0 && !(flags & ISSUE_NAMED))
		*ret_type = ISSUE_REFRESH;
	else if (strcmp(name, "id") == 0 && !(flags & ISSUE_NAMED))
		*ret_type = ISSUE_ID;
	else {
		snprintf(err, errlen, "token_type must be access, refresh or id");
		return -EINVAL;
	}
	return 0;
}

static int issue_check_members(const json_t *body, enum issue_type type, unsigned flags, char *err, size_t errlen)
{
#define ISSUE_MEMBERS(list) issue_known_members(body, list, sizeof(list) / sizeof(list[0]), err, errlen)
	if (flags & ISSUE_NAMED)
		return ISSUE_MEMBERS(named_members);
	if (type == ISSUE_REFRESH)
		return ISSUE_MEMBERS(refresh_members);
	if (type == ISSUE_ID)
		return ISSUE_MEMBERS(id_members);
	return ISSUE_MEMBERS(access_members);
#undef ISSUE_MEMBERS
}

static int64_t issue_default_ttl(const struct config *cfg, enum issue_type type)
{
	switch (type) {
	case ISSUE_REFRESH: return cfg->refresh_ttl;
	case ISSUE_ID: return cfg->id_ttl;
	case ISSUE_PARENT: return cfg->parent_ttl;
	case ISSUE_CHILD: return cfg->child_ttl;
	default: return cfg->access_ttl;
	}
}

/* nonce and auth_time of an ID token (OIDC Core §2). */
static int issue_id_members(const struct issue_ctx *ctx, const json_t *body, struct issue_request *req, char *err,
			    size_t errlen)
{
	const json_t *auth_time = json_object_get(body, "auth_time");
	int r = issue_optional_string(body, "nonce", ISSUE_MAX_STRING, &req->nonce, err, errlen);

	if (r < 0)
		return r;
	if (req->client_id == NULL) {
		snprintf(err, errlen, "an ID token needs client_id (its audience)");
		return -EINVAL;
	}
	if (auth_time != NULL && !json_is_null(auth_time)) {
		/* A login in the future is a clock or caller bug, not a time. */
		if (!json_is_integer(auth_time) || json_integer_value(auth_time) < 1 ||
		    json_integer_value(auth_time) > ctx->now + ctx->cfg->leeway) {
			snprintf(err, errlen, "auth_time must be a positive integer, not in the future");
			return -EINVAL;
		}
		req->auth_time = json_integer_value(auth_time);
	}
	return 0;
}

/* What every issuing body shares (POST /token, POST /tokens, POST
 * /token-pairs): subject, audience, scope, client_id, org and custom
 * claims, org confinement and the default client, into req (type set). */
static int issue_parse_common(const json_t *body, const struct auth_caller *caller, struct issue_request *req,
			      char *err, size_t errlen)
{
	int r;

	if ((r = issue_optional_string(body, "subject", AUTH_SUB_MAX, &req->subject, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "scope", ISSUE_MAX_STRING, &req->scope, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "client_id", REGISTRY_CLIENT_ID_MAX, &req->client_id, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "org", AUTH_ORG_MAX, &req->org, err, errlen)) < 0)
		return r;
	if (req->subject == NULL) {
		snprintf(err, errlen, "subject is required");
		return -EINVAL;
	}
	req->audience = json_object_get(body, "audience");
	if (json_is_null(req->audience))
		req->audience = NULL;
	if (req->audience != NULL && !issue_audience_valid(req->audience)) {
		snprintf(err, errlen, "audience must be a string or an array of 1 to %d strings", ISSUE_MAX_AUDIENCES);
		return -EINVAL;
	}
	req->claims = json_object_get(body, "claims");
	if (json_is_null(req->claims))
		req->claims = NULL;
	if ((r = issue_check_custom_claims(req->claims, req->type, caller, err, errlen)) < 0)
		return r;
	/* A caller confined to an org issues only for that org. */
	if (caller->org[0] != '\0') {
		if (req->org != NULL && strcmp(req->org, caller->org) != 0) {
			snprintf(err, errlen, "a caller of one org cannot issue for another");
			return -EACCES;
		}
		req->org = caller->org;
	}
	/* RFC 9068 §2.2 requires client_id: the caller that asked is the client
	 * unless the request names another.  An ID token's client is its
	 * audience and must be named. */
	if (req->client_id == NULL && req->type != ISSUE_ID)
		req->client_id = caller->sub;
	return 0;
}

/* Whether a token of req is a credential for this service (roles, or an
 * audience naming it), which may not outlive the caller's own. */
static int issue_is_credential(const struct config *cfg, const struct issue_request *req)
{
	return (req->claims != NULL && json_object_get(req->claims, "roles") != NULL) ||
	       (req->audience != NULL && issue_aud_names(req->audience, cfg->issuer)) ||
	       (req->audience == NULL && req->type != ISSUE_ID && strcmp(cfg->default_audience, cfg->issuer) == 0) ||
	       (req->type == ISSUE_ID && strcmp(req->client_id, cfg->issuer) == 0);
}

int issue_parse_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		     unsigned flags, struct issue_request *ret_request, char *err, size_t errlen)
{
	const struct config *cfg = ctx->cfg;
	struct issue_request req = { .alg = JWS_ALG_INVALID };
	const char *alg_name = NULL;
	int explicit_ttl, r;

	if (!json_is_object(body)) {
		snprintf(err, errlen, "request body must be a JSON object");
		return -EINVAL;
	}
	if ((r = issue_type_from_body(body, flags, &req.type, err, errlen)) < 0 ||
	    (r = issue_check_members(body, req.type, flags, err, errlen)) < 0)
		return r;
	if ((r = issue_optional_string(body, "alg", 16, &alg_name, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "name", ISSUE_NAME_MAX, &req.name, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "description", ISSUE_DESCRIPTION_MAX, &req.description, err,
				       errlen)) < 0 ||
	    (r = issue_parse_common(body, caller, &req, err, errlen)) < 0)
		return r;
	if ((flags & ISSUE_NAMED) && req.name == NULL) {
		snprintf(err, errlen, "name is required");
		return -EINVAL;
	}
	if (alg_name != NULL && (jws_alg_from_name(alg_name, &req.alg) < 0 || req.alg == JWS_ALG_INVALID)) {
		snprintf(err, errlen, "alg is not one of this service's signing algorithms");
		return -EINVAL;
	}
	if (req.type == ISSUE_ID && (r = issue_id_members(ctx, body, &req, err, errlen)) < 0)
		return r;
	if ((r = issue_lifetime(body, "expires_in", issue_default_ttl(cfg, req.type), cfg->max_ttl, &req.ttl,
				&explicit_ttl, err, errlen)) < 0)
		return r;
	if (issue_is_credential(cfg, &req) &&
	    (r = issue_bound_by_caller(ctx, caller, explicit_ttl, &req.ttl, err, errlen)) < 0)
		return r;
	*ret_request = req;
	return 0;
}

/* An optional boolean member: absent or null gives fallback. */
static int issue_optional_bool(const json_t *body, const char *name, int fallback, int *ret, char *err,
			       size_t errlen)
{
	const json_t *v = json_object_get(body, name);

	if (v == NULL || json_is_null(v)) {
		*ret = fallback;
		return 0;
	}
	if (!json_is_boolean(v)) {
		snprintf(err, errlen, "%s must be true or false", name);
		return -EINVAL;
	}
	*ret = json_is_true(v);
	return 0;
}

int issue_parse_pair_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
			  struct issue_pair *ret_pair, char *err, size_t errlen)
{
	static const char *const pair_members[] = {
		"subject", "audience", "scope", "client_id", "org", "claims",
		"parent_expires_in", "child_expires_in", "include_child", "auto_renew",
	};
	const struct config *cfg = ctx->cfg;
	struct issue_pair pair = { .parent = { .type = ISSUE_PARENT, .alg = JWS_ALG_INVALID } };
	int explicit_parent, explicit_child, r;

	if (!json_is_object(body)) {
		snprintf(err, errlen, "request body must be a JSON object");
		return -EINVAL;
	}
	if ((r = issue_known_members(body, pair_members, sizeof(pair_members) / sizeof(pair_members[0]), err,
				     errlen)) < 0 ||
	    (r = issue_parse_common(body, caller, &pair.parent, err, errlen)) < 0 ||
	    (r = issue_optional_bool(body, "include_child", 1, &pair.include_child, err, errlen)) < 0 ||
	    (r = issue_optional_bool(body, "auto_renew", 0, &pair.parent.auto_renew, err, errlen)) < 0 ||
	    (r = issue_lifetime(body, "parent_expires_in", cfg->parent_ttl, cfg->max_ttl, &pair.parent.ttl,
				&explicit_parent, err, errlen)) < 0 ||
	    (r = issue_lifetime(body, "child_expires_in", cfg->child_ttl, cfg->max_ttl, &pair.child_ttl,
				&explicit_child, err, errlen)) < 0)
		return r;
	/* Children inherit the parent's audience: the parent bounds them all. */
	if (issue_is_credential(cfg, &pair.parent) &&
	    (r = issue_bound_by_caller(ctx, caller, explicit_parent, &pair.parent.ttl, err, errlen)) < 0)
		return r;
	/* SPEC §5.5: a child never outlives its parent. */
	if (pair.child_ttl > pair.parent.ttl) {
		if (explicit_child) {
			snprintf(err, errlen, "child_expires_in exceeds the parent's lifetime (%lld s)",
				 (long long)pair.parent.ttl);
			return -EINVAL;
		}
		pair.child_ttl = pair.parent.ttl;
	}
	/* Renewed renew_before before its exp (or at half its life when that
	 * comes first), a shorter child would have its parent renewed — a
	 * record and a status-list index each time — every second or so for
	 * the parent's whole life.  A child as long as its parent has no
	 * successor. */
	if (pair.parent.auto_renew && pair.child_ttl < pair.parent.ttl && pair.child_ttl < 2 * cfg->renew_before) {
		snprintf(err, errlen, "child_expires_in: with auto_renew at least %lld s (twice renew_before)",
			 (long long)(2 * cfg->renew_before));
		return -EINVAL;
	}
	*ret_pair = pair;
	return 0;
}

/* SPEC §5.1: every registered token names its entry of the status list. */
static int issue_status_claim(const struct issue_ctx *ctx, json_t *claims, uint32_t *ret_idx)
{
	uint32_t idx;
	json_t *status;
	int r;

	if (ctx->registry == NULL) {
		*ret_idx = REGISTRY_NO_INDEX;
		return 0;
	}
	r = registry_reserve_index(ctx->registry, &idx);
	if (r < 0)
		return r;
	r = statuslist_claim(ctx->cfg->issuer, idx, &status);
	if (r < 0)
		return r;
	if (json_object_set_new(claims, "status", status) < 0)
		return -ENOMEM;
	*ret_idx = idx;
	return 0;
}

static int issue_set_string(json_t *claims, const char *name, const char *value)
{
	if (value == NULL)
		return 0;
	return json_object_set_new(claims, name, json_string(value));
}

/* The members only some families carry. */
static int issue_type_claims(const struct issue_request *req, const char *jti, json_t *claims)
{
	switch (req->type) {
	case ISSUE_ID:
		if (issue_set_string(claims, "azp", req->client_id) < 0 || issue_set_string(claims, "nonce", req->nonce) < 0 ||
		    (req->auth_time > 0 &&
		     json_object_set_new(claims, "auth_time", json_integer(req->auth_time)) < 0))
			return -ENOMEM;
		return 0;
	case ISSUE_REFRESH:
		if (issue_set_string(claims, "family", req->family ? req->family : jti) < 0)
			return -ENOMEM;
		break;
	case ISSUE_CHILD:
		if (issue_set_string(claims, "parent_jti", req->parent_jti) < 0)
			return -ENOMEM;
		break;
	case ISSUE_PARENT:
		if (req->auto_renew && json_object_set_new(claims, "auto_renew", json_true()) < 0)
			return -ENOMEM;
		break;
	default:
		break;
	}
	if (issue_set_string(claims, "client_id", req->client_id) < 0 || issue_set_string(claims, "scope", req->scope) < 0)
		return -ENOMEM;
	return 0;
}

static int issue_check_request(const struct issue_ctx *ctx, const struct issue_request *req, char *err, size_t errlen)
{
	if (req->subject == NULL || req->ttl < 1 || req->ttl > ctx->cfg->max_ttl ||
	    (req->type == ISSUE_ID && req->client_id == NULL) || (req->type == ISSUE_CHILD && req->parent_jti == NULL) ||
	    (req->audience != NULL && !issue_audience_valid(req->audience))) {
		snprintf(err, errlen, "the token request is incomplete or out of range");
		return -EINVAL;
	}
	return issue_check_custom_claims(req->claims, req->type, NULL, err, errlen);
}

int issue_build_claims(const struct issue_ctx *ctx, const struct issue_request *req, struct issue_claims *ret_built,
		       char *err, size_t errlen)
{
	const struct config *cfg = ctx->cfg;
	char jti[ISSUE_JTI_LEN + 1];
	json_t *claims = NULL, *aud;
	const char *name;
	json_t *value;
	uint32_t status_idx;
	enum jws_alg alg;
	size_t payload_len;
	int r;

	if ((r = issue_check_request(ctx, req, err, errlen)) < 0 || (r = issue_algorithm(ctx, req, &alg, err, errlen)) < 0 ||
	    (r = issue_new_jti(jti)) < 0)
		return r;
	if (req->type == ISSUE_ID)
		aud = json_string(req->client_id);
	else
		aud = req->audience ? json_deep_copy(req->audience) : json_string(cfg->default_audience);
	claims = json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:s, s:s}",
			   "iss", cfg->issuer, "sub", req->subject, "aud", aud,
			   "iat", (json_int_t)ctx->now, "nbf", (json_int_t)ctx->now,
			   "exp", (json_int_t)(ctx->now + req->ttl), "jti", jti, "token_type", issue_types[req->type].name);
	if (claims == NULL || issue_type_claims(req, jti, claims) < 0 || issue_set_string(claims, "org", req->org) < 0) {
		r = -ENOMEM;
		goto out;
	}
	if (req->claims != NULL)
		json_object_foreach((json_t *)req->claims, name, value)
			if (json_object_set(claims, name, value) < 0) {
				r = -ENOMEM;
				goto out;
			}
	r = issue_status_claim(ctx, claims, &status_idx);
	if (r < 0)
		goto out;
	/* Refused here, as the client's mistake, rather than by the signer. */
	payload_len = json_dumpb(claims, NULL, 0, JSON_COMPACT);
	if (payload_len == 0) {
		r = -ENOMEM;
		goto out;
	}
	if (payload_len > JWS_MAX_PAYLOAD) {
		snprintf(err, errlen, "the claims would exceed %d bytes; use fewer or shorter claims", JWS_MAX_PAYLOAD);
		r = -EINVAL;
		goto out;
	}
	ret_built->claims = claims;
	ret_built->alg = alg;
	ret_built->status_idx = status_idx;
	claims = NULL;
out:
	json_decref(claims);
	return r;
}

/* A claim's string value copied into dst ("" when absent). */
static void issue_copy_claim(const json_t *claims, const char *name, char *dst, size_t size)
{
	const char *v = json_string_value(json_object_get(claims, name));

	snprintf(dst, size, "%s", v ? v : "");
}

/* The registry record of a token about to be handed out.  The request's
 * strings were bounded to what a record holds. */
static void issue_record(const struct issue_request *req, const struct issue_claims *built, const char *kid,
			 struct registry_record *ret_record)
{
	const json_t *claims = built->claims;

	memset(ret_record, 0, sizeof(*ret_record));
	ret_record->type = issue_types[req->type].record;
	ret_record->status = REGISTRY_ACTIVE;
	issue_copy_claim(claims, "jti", ret_record->jti, sizeof(ret_record->jti));
	issue_copy_claim(claims, "org", ret_record->org, sizeof(ret_record->org));
	issue_copy_claim(claims, "sub", ret_record->subject, sizeof(ret_record->subject));
	issue_copy_claim(claims, "client_id", ret_record->client_id, sizeof(ret_record->client_id));
	issue_copy_claim(claims, "parent_jti", ret_record->parent, sizeof(ret_record->parent));
	if (req->type == ISSUE_REFRESH)
		issue_copy_claim(claims, "family", ret_record->family, sizeof(ret_record->family));
	else
		snprintf(ret_record->family, sizeof(ret_record->family), "%s", req->family ? req->family : "");
	snprintf(ret_record->kid, sizeof(ret_record->kid), "%s", kid);
	snprintf(ret_record->name, sizeof(ret_record->name), "%s", req->name ? req->name : "");
	snprintf(ret_record->description, sizeof(ret_record->description), "%s",
		 req->description ? req->description : "");
	ret_record->iat = json_integer_value(json_object_get(claims, "iat"));
	ret_record->exp = json_integer_value(json_object_get(claims, "exp"));
	ret_record->status_at = ret_record->iat;
	ret_record->status_idx = built->status_idx;
}

int issue_token(const struct issue_ctx *ctx, const struct issue_request *request, struct issue_result *ret_result,
		char *err, size_t errlen)
{
	struct issue_claims built;
	const struct keys_entry *signer;
	struct issue_result result;
	int r;

	r = issue_build_claims(ctx, request, &built, err, errlen);
	if (r < 0)
		return r;
	memset(&result, 0, sizeof(result));
	/* The signer issue_sign will pick: same set, same instant. */
	signer = keys_signer_at(ctx->keys, built.alg, ctx->now);
	issue_record(request, &built, signer ? signer->hsm.kid : "", &result.record);
	r = issue_sign(ctx, built.alg, issue_types[request->type].typ, built.claims, &result.token);
	if (r < 0) {
		snprintf(err, errlen, "the token could not be signed");
		goto out;
	}
	memcpy(result.jti, result.record.jti, ISSUE_JTI_LEN);
	result.jti[ISSUE_JTI_LEN] = '\0';
	result.exp = result.record.exp;
	result.expires_in = result.record.exp - ctx->now;
	result.alg = built.alg;
	metrics_token_issued(issue_types[request->type].name, built.alg);
	*ret_result = result;
out:
	json_decref(built.claims);
	return r;
}

void issue_result_clear(struct issue_result *result)
{
	if (result->token != NULL) {
		OPENSSL_cleanse(result->token, strlen(result->token));
		free(result->token);
		result->token = NULL;
	}
}

int issue_from_body(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		    unsigned flags, json_t **ret_response, struct registry_record *ret_record, char *err,
		    size_t errlen)
{
	struct issue_request request;
	struct issue_result result = { 0 };
	json_t *response;
	int r;

	if ((r = issue_parse_body(ctx, body, caller, flags, &request, err, errlen)) < 0 ||
	    (r = issue_token(ctx, &request, &result, err, errlen)) < 0)
		return r;
	response = json_pack("{s:s, s:s, s:I, s:s}", issue_response_member(request.type), result.token, "token_type",
			     "Bearer", "expires_in", (json_int_t)result.expires_in, "jti", result.jti);
	if (response == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret_response = response;
	if (ret_record != NULL)
		*ret_record = result.record;
out:
	issue_result_clear(&result);
	return r;
}

int issue_mint(const struct issue_ctx *ctx, const char *sub, const char *org, const json_t *roles,
	       int64_t ttl, char **ret_token)
{
	const struct config *cfg = ctx->cfg;
	char jti[ISSUE_JTI_LEN + 1];
	json_t *claims;
	int r;

	r = issue_new_jti(jti);
	if (r < 0)
		return r;
	claims = json_pack("{s:s, s:s, s:[s], s:I, s:I, s:I, s:s, s:s, s:O}",
			   "iss", cfg->issuer, "sub", sub, "aud", cfg->issuer,
			   "iat", (json_int_t)ctx->now, "nbf", (json_int_t)ctx->now,
			   "exp", (json_int_t)(ctx->now + ttl), "jti", jti, "token_type", "access",
			   "roles", roles);
	if (claims == NULL)
		return -ENOMEM;
	if (org && json_object_set_new(claims, "org", json_string(org)) < 0) {
		json_decref(claims);
		return -ENOMEM;
	}
	r = issue_sign(ctx, cfg->algorithms[0], "at+jwt", claims, ret_token);
	json_decref(claims);
	return r;
}
