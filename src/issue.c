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
#include "hsmjwt/statuslist.h"

#define ISSUE_MAX_AUDIENCES 16
#define ISSUE_MAX_STRING 1024

/* Registered claims a request may not set through "claims" (SPEC §5.1), the
 * ones this service derives from request fields or the caller, and the ones
 * its later flows interpret (ID tokens, refresh families, parent/child), so
 * that no caller can preset them today. */
static const char *const reserved_claims[] = {
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "token_type", "status",
	"org", "scope", "client_id", "nonce", "auth_time", "azp", "family", "parent_jti",
};

/* The members POST /token takes for an access token: anything else is a typo
 * ("expires_In") that would silently get a default, so it is refused. */
static const char *const access_members[] = {
	"subject", "audience", "scope", "token_type", "client_id", "org", "claims", "expires_in", "alg",
};
/* POST /tokens: a named token takes the same, less token_type (always
 * access), plus its name and description. */
static const char *const named_members[] = {
	"subject", "audience", "scope", "client_id", "org", "claims", "expires_in", "alg", "name", "description",
};

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

static int issue_audience(const json_t *body, const struct config *cfg, json_t **ret_aud, char *err, size_t errlen)
{
	const json_t *v = json_object_get(body, "audience");
	size_t i;
	json_t *item;

	if (v == NULL || json_is_null(v)) {
		*ret_aud = json_string(cfg->default_audience);
		return *ret_aud ? 0 : -ENOMEM;
	}
	if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= ISSUE_MAX_STRING) {
		*ret_aud = json_copy((json_t *)v);
		return *ret_aud ? 0 : -ENOMEM;
	}
	if (json_is_array(v) && json_array_size(v) > 0 && json_array_size(v) <= ISSUE_MAX_AUDIENCES) {
		json_array_foreach(v, i, item) {
			if (!json_is_string(item) || json_string_length(item) == 0 ||
			    json_string_length(item) > ISSUE_MAX_STRING)
				goto bad;
		}
		*ret_aud = json_copy((json_t *)v);
		return *ret_aud ? 0 : -ENOMEM;
	}
bad:
	snprintf(err, errlen, "audience must be a string or an array of 1 to %d strings", ISSUE_MAX_AUDIENCES);
	return -EINVAL;
}

/* expires_in, or fallback when absent; *ret_explicit says which. */
static int issue_lifetime(const json_t *body, int64_t fallback, int64_t max, int64_t *ret, int *ret_explicit,
			  char *err, size_t errlen)
{
	const json_t *v = json_object_get(body, "expires_in");

	if (v == NULL || json_is_null(v)) {
		*ret = fallback;
		*ret_explicit = 0;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max) {
		snprintf(err, errlen, "expires_in must be an integer from 1 to max_ttl (%lld)", (long long)max);
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

static int issue_algorithm(const json_t *body, const struct issue_ctx *ctx, enum jws_alg *ret_alg,
			   char *err, size_t errlen)
{
	const char *name = NULL;
	enum jws_alg alg = ctx->cfg->algorithms[0];
	int r;

	r = issue_optional_string(body, "alg", 16, &name, err, errlen);
	if (r < 0)
		return r;
	if (name != NULL && jws_alg_from_name(name, &alg) < 0)
		alg = JWS_ALG_INVALID;
	/* Only configured algorithms sign: a key left in the token from an
	 * earlier configuration is for verification only. */
	if (alg == JWS_ALG_INVALID || !issue_alg_configured(ctx->cfg, alg) ||
	    keys_signer_at(ctx->keys, alg, ctx->now) == NULL) {
		snprintf(err, errlen, "alg is not one of this service's signing algorithms");
		return -EINVAL;
	}
	*ret_alg = alg;
	return 0;
}

/* Custom claims: an object whose members may not shadow registered claims;
 * "roles" only with roles the caller holds itself. */
static int issue_custom_claims(const json_t *body, const struct auth_caller *caller, json_t *claims,
			       char *err, size_t errlen)
{
	const json_t *custom = json_object_get(body, "claims");
	const char *name;
	json_t *value;
	unsigned roles;

	if (custom == NULL || json_is_null(custom))
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
		if (strcmp(name, "roles") == 0) {
			if (auth_roles_from_json(value, &roles, err, errlen) < 0)
				return -EINVAL;
			if (!auth_allows(caller, roles)) {
				snprintf(err, errlen, "claims.roles grants a role the caller does not hold");
				return -EACCES;
			}
		}
		if (json_object_set(claims, name, value) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* The members a body may carry: anything else is a typo ("expires_In")
 * that would silently get a default, so it is refused. */
static int issue_check_members(const json_t *body, unsigned flags, char *err, size_t errlen)
{
	if (flags & ISSUE_NAMED)
		return issue_known_members(body, named_members, sizeof(named_members) / sizeof(named_members[0]),
					   err, errlen);
	return issue_known_members(body, access_members, sizeof(access_members) / sizeof(access_members[0]), err,
				   errlen);
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

int issue_build_access_claims(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
			      unsigned flags, struct issue_claims *ret_built, char *err, size_t errlen)
{
	uint32_t status_idx;
	const struct config *cfg = ctx->cfg;
	const char *subject, *scope, *client_id, *org, *type;
	json_t *claims = NULL, *aud = NULL;
	const json_t *custom;
	char jti[ISSUE_JTI_LEN + 1];
	enum jws_alg alg;
	int64_t ttl;
	int explicit_ttl;
	size_t payload_len;
	int r;

	if (!json_is_object(body)) {
		snprintf(err, errlen, "request body must be a JSON object");
		return -EINVAL;
	}
	r = issue_check_members(body, flags, err, errlen);
	if (r < 0)
		return r;
	if ((r = issue_optional_string(body, "subject", AUTH_SUB_MAX, &subject, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "scope", ISSUE_MAX_STRING, &scope, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "client_id", REGISTRY_CLIENT_ID_MAX, &client_id, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "org", AUTH_ORG_MAX, &org, err, errlen)) < 0 ||
	    (r = issue_optional_string(body, "token_type", 16, &type, err, errlen)) < 0)
		return r;
	if (subject == NULL) {
		snprintf(err, errlen, "subject is required");
		return -EINVAL;
	}
	if (type != NULL && strcmp(type, "access") != 0) {
		/* Refresh and ID tokens need the registry and the OAuth flows. */
		snprintf(err, errlen, "token_type '%s' is not supported yet; only access", type);
		return -EINVAL;
	}
	/* A caller confined to an org issues only for that org. */
	if (caller->org[0] != '\0') {
		if (org != NULL && strcmp(org, caller->org) != 0) {
			snprintf(err, errlen, "a caller of one org cannot issue for another");
			return -EACCES;
		}
		org = caller->org;
	}
	/* RFC 9068 §2.2 requires client_id: the caller that asked is the client
	 * unless the request names another. */
	if (client_id == NULL)
		client_id = caller->sub;
	if ((r = issue_lifetime(body, cfg->access_ttl, cfg->max_ttl, &ttl, &explicit_ttl, err, errlen)) < 0 ||
	    (r = issue_algorithm(body, ctx, &alg, err, errlen)) < 0 ||
	    (r = issue_audience(body, cfg, &aud, err, errlen)) < 0)
		goto out;
	custom = json_object_get(body, "claims");
	if ((json_object_get(custom, "roles") != NULL || issue_aud_names(aud, cfg->issuer)) &&
	    (r = issue_bound_by_caller(ctx, caller, explicit_ttl, &ttl, err, errlen)) < 0)
		goto out;
	r = issue_new_jti(jti);
	if (r < 0)
		goto out;
	claims = json_pack("{s:s, s:s, s:O, s:I, s:I, s:I, s:s, s:s}",
			   "iss", cfg->issuer, "sub", subject, "aud", aud,
			   "iat", (json_int_t)ctx->now, "nbf", (json_int_t)ctx->now,
			   "exp", (json_int_t)(ctx->now + ttl), "jti", jti, "token_type", "access");
	if (claims == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (json_object_set_new(claims, "client_id", json_string(client_id)) < 0 ||
	    (scope && json_object_set_new(claims, "scope", json_string(scope)) < 0) ||
	    (org && json_object_set_new(claims, "org", json_string(org)) < 0)) {
		r = -ENOMEM;
		goto out;
	}
	r = issue_custom_claims(body, caller, claims, err, errlen);
	if (r < 0)
		goto out;
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
	json_decref(aud);
	json_decref(claims);
	return r;
}

/* A claim's string value copied into dst ("" when absent). */
static void issue_copy_claim(const json_t *claims, const char *name, char *dst, size_t size)
{
	const char *v = json_string_value(json_object_get(claims, name));

	snprintf(dst, size, "%s", v ? v : "");
}

/* The registry record of a token about to be handed out.  The claims were
 * bounded by issue_build_access_claims to what a record holds. */
static int issue_record(const json_t *body, const struct issue_claims *built, const char *kid, unsigned flags,
			struct registry_record *ret_record, char *err, size_t errlen)
{
	const json_t *claims = built->claims;
	const char *name = NULL, *description = NULL;
	struct registry_record rec;
	int r;

	if ((flags & ISSUE_NAMED) &&
	    ((r = issue_optional_string(body, "name", ISSUE_NAME_MAX, &name, err, errlen)) < 0 ||
	     (r = issue_optional_string(body, "description", ISSUE_DESCRIPTION_MAX, &description, err, errlen)) < 0))
		return r;
	if ((flags & ISSUE_NAMED) && name == NULL) {
		snprintf(err, errlen, "name is required");
		return -EINVAL;
	}
	memset(&rec, 0, sizeof(rec));
	rec.type = REGISTRY_TYPE_ACCESS;
	rec.status = REGISTRY_ACTIVE;
	issue_copy_claim(claims, "jti", rec.jti, sizeof(rec.jti));
	issue_copy_claim(claims, "org", rec.org, sizeof(rec.org));
	issue_copy_claim(claims, "sub", rec.subject, sizeof(rec.subject));
	issue_copy_claim(claims, "client_id", rec.client_id, sizeof(rec.client_id));
	snprintf(rec.kid, sizeof(rec.kid), "%s", kid);
	snprintf(rec.name, sizeof(rec.name), "%s", name ? name : "");
	snprintf(rec.description, sizeof(rec.description), "%s", description ? description : "");
	rec.iat = json_integer_value(json_object_get(claims, "iat"));
	rec.exp = json_integer_value(json_object_get(claims, "exp"));
	rec.status_idx = built->status_idx;
	*ret_record = rec;
	return 0;
}

int issue_access_token(const struct issue_ctx *ctx, const json_t *body, const struct auth_caller *caller,
		       unsigned flags, json_t **ret_response, struct registry_record *ret_record, char *err,
		       size_t errlen)
{
	struct issue_claims built;
	json_t *claims, *response = NULL;
	const struct keys_entry *signer;
	struct registry_record rec;
	char *token = NULL;
	int r;

	r = issue_build_access_claims(ctx, body, caller, flags, &built, err, errlen);
	if (r < 0)
		return r;
	claims = built.claims;
	signer = keys_signer_at(ctx->keys, built.alg, ctx->now);
	if (ret_record != NULL &&
	    (r = issue_record(body, &built, signer ? signer->hsm.kid : "", flags, &rec, err, errlen)) < 0)
		goto out;
	r = issue_sign(ctx, built.alg, "at+jwt", claims, &token);
	if (r < 0) {
		snprintf(err, errlen, "the token could not be signed");
		goto out;
	}
	response = json_pack("{s:s, s:s, s:I, s:O}", "access_token", token, "token_type", "Bearer",
			     "expires_in", json_integer_value(json_object_get(claims, "exp")) - ctx->now,
			     "jti", json_object_get(claims, "jti"));
	if (response == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret_response = response;
	if (ret_record != NULL)
		*ret_record = rec;
out:
	if (token) {
		OPENSSL_cleanse(token, strlen(token));
		free(token);
	}
	json_decref(claims);
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
