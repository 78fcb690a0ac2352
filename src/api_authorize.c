/* POST /authorize (SPEC §4.2): the decision a proxy asks for before it lets
 * a request through — Envoy's and Istio's ext_authz HTTP service, nginx's
 * auth_request.
 *
 * Proxies call it in their own shapes: nginx sends a subrequest to a fixed
 * URI with whatever method proxy_method says (GET by default); Envoy sends
 * the original method with the original path appended to its path_prefix
 * (DELETE /authorize/api/orders/7?x=1).  So the route takes /authorize and
 * everything under it with any method, and the path, query and body are
 * never looked at: the Authorization header alone is the credential.
 *
 * 200 hands the verified claims on as x-auth-subject, x-auth-org,
 * x-auth-scope and x-auth-jti (org and scope only when the token has them);
 * 401 for a missing or unusable token, 403 for a usable token whose aud
 * lacks the audience (the proxy's x-auth-audience, else default_audience),
 * 503 when an HS256 token's key cannot be asked. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/metrics.h"

#include "api_internal.h"

/* Longest x-auth-audience a proxy may name: an audience, not a document. */
#define API_AUTHORIZE_AUDIENCE_MAX 1024

/* How many times headers holds name (compared as evhttp does, without case). */
static size_t api_authorize_header_count(struct evkeyvalq *headers, const char *name)
{
	struct evkeyval *kv;
	size_t n = 0;

	TAILQ_FOREACH(kv, headers, next)
		n += strcasecmp(kv->key, name) == 0;
	return n;
}

/* Whether value goes out as a header value byte for byte: no control
 * character (CR and LF would start a header of the token's choosing; this
 * evhttp refuses those itself, but not the other controls, and a refusal
 * there could only be a 500), and no space or tab at either end, which a
 * reader strips (RFC 9110 §5.5): " admin" would arrive as "admin". */
static int api_authorize_header_safe(const char *value)
{
	size_t len = strlen(value);

	if (len == 0)
		return 1;
	if (value[0] == ' ' || value[0] == '\t' || value[len - 1] == ' ' || value[len - 1] == '\t')
		return 0;
	for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/* An optional claim that becomes a header: absent, or a plain string that
 * a header carries unchanged. */
static int api_authorize_optional(const json_t *claims, const char *name)
{
	const json_t *v = json_object_get(claims, name);
	const char *s = json_plain_string(v);

	return v == NULL || (s != NULL && api_authorize_header_safe(s));
}

int api_authorize_claims(const json_t *claims, const char **ret_reason)
{
	const char *token_type = json_plain_string(json_object_get(claims, "token_type"));
	const char *sub = json_plain_string(json_object_get(claims, "sub"));

	/* What an API takes as a bearer token: refresh tokens are for the
	 * token endpoint, ID tokens for the client, a parent only renews its
	 * children (SPEC §5.5). */
	if (token_type == NULL || (strcmp(token_type, "access") != 0 && strcmp(token_type, "child") != 0)) {
		*ret_reason = "bearer token rejected: not an access token";
		return -EACCES;
	}
	if (sub == NULL || sub[0] == '\0' || !api_authorize_header_safe(sub) ||
	    !api_authorize_optional(claims, "org") || !api_authorize_optional(claims, "scope") ||
	    !api_authorize_optional(claims, "jti")) {
		*ret_reason = "bearer token rejected: sub, org, scope or jti cannot be passed on as a header";
		return -EACCES;
	}
	return 0;
}

/* The audience the token must name: the proxy's x-auth-audience, else
 * default_audience.  0, or -EINVAL for a repeated, empty, overlong or
 * control-character value (a misconfigured proxy: 400). */
static int api_authorize_audience(const struct api_ctx *ctx, struct evkeyvalq *headers, const char **ret_audience)
{
	const char *value = evhttp_find_header(headers, "X-Auth-Audience");
	size_t count = api_authorize_header_count(headers, "X-Auth-Audience");

	if (count == 0) {
		*ret_audience = ctx->cfg->default_audience;
		return 0;
	}
	if (count > 1 || value[0] == '\0' || strlen(value) > API_AUTHORIZE_AUDIENCE_MAX ||
	    !api_authorize_header_safe(value))
		return -EINVAL;
	*ret_audience = value;
	return 0;
}

/* The x-auth-* headers of a 200; a claim absent from the token, or empty,
 * gives no header, as nginx forwards an empty variable as none. */
static int api_authorize_grant_headers(struct evkeyvalq *out, const json_t *claims)
{
	static const struct {
		const char *header, *claim;
	} map[] = {
		{ "X-Auth-Subject", "sub" },
		{ "X-Auth-Org", "org" },
		{ "X-Auth-Scope", "scope" },
		{ "X-Auth-Jti", "jti" },
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		const char *value = json_plain_string(json_object_get(claims, map[i].claim));
		if (value != NULL && value[0] != '\0' && evhttp_add_header(out, map[i].header, value) < 0)
			return -ENOMEM;
	}
	return 0;
}

void api_authorize_proxy(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			 const char *segment)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *authorization = evhttp_find_header(in, "Authorization");
	/* The audience is checked last, apart: a token that is unusable
	 * anyway is 401 whatever its aud says. */
	struct jwt_expect expect = { .now = api_now(), .leeway = ctx->cfg->leeway, .issuer = ctx->cfg->issuer,
				     .typ = "at+jwt" };
	json_t *header = NULL, *claims = NULL;
	const char *audience, *token, *status, *reason, *jti, *org, *sub;
	char description[96];
	int r, verdict = 1;   /* 1: no token was judged (for the metrics) */

	/* rate_limit: a request refused before its token is verified is its
	 * address's (api_rate_unverified), a verified token's its caller's
	 * once the registry has not refused it. */
	if (api_authorize_audience(ctx, in, &audience) < 0) {
		if (api_rate_unverified(ctx, req, out) < 0)
			return;
		api_error(out, req, 400, "invalid_request",
			  "x-auth-audience must be one non-empty header without control characters, at most 1024 bytes");
		return;
	}
	/* Which of two credentials would count is anyone's guess: neither. */
	if (api_authorize_header_count(in, "Authorization") > 1) {
		if (api_rate_unverified(ctx, req, out) < 0)
			return;
		out->status = 401;
		http_reply_unauthorized(req, 1, "more than one Authorization header");
		return;
	}
	if (auth_bearer_token(authorization, &token) < 0) {
		if (api_rate_unverified(ctx, req, out) < 0)
			return;
		out->status = 401;
		http_reply_unauthorized(req, 0, authorization == NULL ? "missing bearer token"
								      : "authorization must be the Bearer scheme and a token");
		return;
	}
	/* An address over its limit buys no verification (an HS256 token's
	 * is a C_Verify in the token). */
	if (api_rate_peek_address(ctx, req, out) < 0)
		return;
	r = jwt_verify(token, strlen(token), keys_lookup, &ctx->view, &expect, &header, &claims);
	if (r == 0) {
		jti = json_plain_string(json_object_get(claims, "jti"));
		snprintf(out->jti, sizeof(out->jti), "%s", jti ? jti : "");
		/* Revoked, suspended, or a child whose parent is no longer active. */
		r = api_registry_verdict(ctx, claims, &status);
	}
	/* Charged by sub only once the registry has not refused the token: a
	 * leaked token that was revoked must not drain its owner's bucket. */
	org = json_plain_string(json_object_get(claims, "org"));
	sub = json_plain_string(json_object_get(claims, "sub"));
	if ((r == 0 && sub != NULL ? api_rate_caller(ctx, req, out, org ? org : "", sub)
				   : api_rate_unverified(ctx, req, out)) < 0)
		goto out;
	if (r == JWS_E_UNAVAILABLE) {
		verdict = r;
		/* An HS256 token while the token is down: no verdict either way. */
		api_error(out, req, 503, "hsm_unavailable", "this token's key verifies in the token, which cannot be reached");
		goto out;
	}
	if (r < 0 && (r > JWS_E_MALFORMED || r < JWS_E_UNAVAILABLE)) {
		api_error(out, req, 500, "server_error", "the token could not be checked");
		goto out;
	}
	verdict = r;
	if (r < 0) {
		snprintf(description, sizeof(description), "bearer token rejected: %s", jws_error_reason(r));
		out->status = 401;
		http_reply_unauthorized(req, 1, description);
		goto out;
	}
	if (api_authorize_claims(claims, &reason) < 0) {
		const char *type = json_plain_string(json_object_get(claims, "token_type"));

		/* Not a token for APIs, or claims no header can carry. */
		verdict = type && (strcmp(type, "access") == 0 || strcmp(type, "child") == 0) ? JWS_E_MALFORMED
											      : JWS_E_WRONG_TYPE;
		out->status = 401;
		http_reply_unauthorized(req, 1, reason);
		goto out;
	}
	snprintf(out->sub, sizeof(out->sub), "%s", json_string_value(json_object_get(claims, "sub")));
	expect.audience = audience;
	r = jwt_check_claims(header, claims, &expect);
	verdict = r;
	if (r == JWS_E_WRONG_AUDIENCE) {
		/* RFC 6750 §3.1: a sound token that does not cover this use. */
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  "Bearer realm=\"hsmjwt\", error=\"insufficient_scope\"");
		api_error(out, req, 403, "insufficient_scope", "the token's audience does not include this API");
		goto out;
	}
	if (r < 0) {
		snprintf(description, sizeof(description), "bearer token rejected: %s", jws_error_reason(r));
		out->status = 401;
		http_reply_unauthorized(req, 1, description);
		goto out;
	}
	if (api_authorize_grant_headers(evhttp_request_get_output_headers(req), claims) < 0) {
		/* Never a 200 with half the identity on it. */
		evhttp_clear_headers(evhttp_request_get_output_headers(req));
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	api_json(out, req, 200, json_object());
out:
	if (verdict <= 0)
		metrics_verification(verdict);
	json_decref(header);
	json_decref(claims);
}
