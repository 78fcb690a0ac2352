/* The OAuth 2.0 / OIDC flows (SPEC §5.3, §5.4): the token endpoint's
 * refresh_token grant (rotation with reuse detection) and authorization_code
 * grant (PKCE S256), POST /codes, where a trusted login front end registers
 * the codes, and the discovery documents.
 *
 * Every token a grant issues is registered before it is handed out, with
 * the family it belongs to (the first refresh token's jti) in its record:
 * revoking that jti revokes them all (registry_set_status cascades along
 * family), which is what reuse detection does.  Errors never quote a token,
 * code or verifier. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>

#include "hsmjwt/discovery.h"
#include "hsmjwt/grant.h"
#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/log.h"

#include "api_internal.h"

#define API_REASON_ROTATED "rotated"
#define API_REASON_REFRESH_REUSE "refresh token reuse"
#define API_REASON_CODE_REUSE "authorization code reuse"
/* The discovery documents change only with the configuration. */
#define API_DISCOVERY_MAX_AGE 3600

int api_body_is_form(struct evhttp_request *req)
{
	static const char form[] = "application/x-www-form-urlencoded";
	const char *type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	size_t n = sizeof(form) - 1;

	return type != NULL && strncasecmp(type, form, n) == 0 &&
	       (type[n] == '\0' || type[n] == ';' || type[n] == ' ' || type[n] == '\t');
}

static void api_invalid_grant(struct api_outcome *out, struct evhttp_request *req, const char *description)
{
	api_error(out, req, 400, "invalid_grant", description);
}

static json_t *api_error_body(const char *error, const char *description)
{
	return json_pack("{s:s, s:s}", "error", error, "error_description", description);
}

static json_t *api_invalid_grant_body(const char *description)
{
	return api_error_body("invalid_grant", description);
}

/* The answer to a grant whose tokens are being registered: a registration
 * that succeeds with no memory left for the answer hands out nothing. */
static void api_grant_reply(struct api_pending *pending, struct api_outcome *out, json_t *response)
{
	if (response != NULL)
		api_pending_reply(pending, out, 200, response);
	else
		api_pending_reply(pending, out, 500, api_error_body("server_error", "out of memory"));
}

/* An issue_token failure in a grant: the request was checked, so what is
 * left is the token (503) or the server. */
static void api_grant_issue_failed(struct api_outcome *out, struct evhttp_request *req, int r)
{
	if (r == HSM_E_DEVICE || r == HSM_E_STALE)
		api_error(out, req, 503, "hsm_unavailable", "the token cannot sign right now");
	else if (r == -ENOSPC)
		api_error(out, req, 503, "registry_unavailable", "the registry has no status-list index left");
	else
		api_error(out, req, 500, "server_error", "the tokens could not be issued");
}

/* A grant presented again: revokes family (every token issued from the
 * grant, through the registry's cascade) and answers invalid_grant once the
 * revocation is durable, so that the client's refusal is its proof. */
static void api_grant_revoke_family(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
				    const char *family, const char *reason, const char *description)
{
	struct api_pending *pending = NULL;
	size_t changed = 0;
	int r;

	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	r = registry_set_status(ctx->registry, family, NULL, REGISTRY_REVOKED, api_now(), reason, api_pending_done,
				pending, &changed);
	if (r == 0) {
		log_warn("\"grant reused: family revoked\" reason=\"%s\" family=%s revoked=%zu", reason, family, changed);
		api_pending_reply(pending, out, 400, api_invalid_grant_body(description));
		return;
	}
	api_pending_free(pending);
	/* -ENOENT: the family's first token is gone (compacted once every
	 * member had expired); -EPERM: it was deleted, which revoked the
	 * family then.  Nothing is left to revoke either way. */
	if (r == -ENOENT || r == -EPERM || r == -EINVAL)
		api_invalid_grant(out, req, description);
	else
		api_registry_failed(out, req, r);
}

/* {"access_token", "token_type", "expires_in", "refresh_token", "id_token"?,
 * "scope"?} (RFC 6749 §5.1, OIDC Core §3.1.3.3). */
static json_t *api_grant_response(const struct issue_result *access, const struct issue_result *refresh,
				  const struct issue_result *id, const char *scope)
{
	json_t *response = json_pack("{s:s, s:s, s:I, s:s}", "access_token", access->token, "token_type", "Bearer",
				     "expires_in", (json_int_t)access->expires_in, "refresh_token", refresh->token);

	if (response == NULL)
		return NULL;
	if ((id != NULL && json_object_set_new(response, "id_token", json_string(id->token)) < 0) ||
	    (scope != NULL && json_object_set_new(response, "scope", json_string(scope)) < 0)) {
		json_decref(response);
		return NULL;
	}
	return response;
}

/* ---- refresh_token (SPEC §5.3, RFC 6749 §6, RFC 9700 §4.14.2) ---------- */

/* What a refresh token says, borrowed from its claims. */
struct api_refresh_claims {
	const char *jti, *family, *sub, *client_id, *scope, *org;
	const json_t *aud;
	int64_t exp;
};

static int api_refresh_claims(const json_t *claims, struct api_refresh_claims *ret)
{
	struct api_refresh_claims c = {
		.jti = json_plain_string(json_object_get(claims, "jti")),
		.family = json_plain_string(json_object_get(claims, "family")),
		.sub = json_plain_string(json_object_get(claims, "sub")),
		.client_id = json_plain_string(json_object_get(claims, "client_id")),
		.scope = json_plain_string(json_object_get(claims, "scope")),
		.org = json_plain_string(json_object_get(claims, "org")),
		.aud = json_object_get(claims, "aud"),
		.exp = json_integer_value(json_object_get(claims, "exp")),
	};

	/* Tokens of ours carry all of it: one without is not a refresh token
	 * this service issued. */
	if (c.jti == NULL || c.family == NULL || c.sub == NULL || c.aud == NULL ||
	    strlen(c.jti) > REGISTRY_JTI_MAX || strlen(c.family) > REGISTRY_JTI_MAX ||
	    !json_is_integer(json_object_get(claims, "exp")))
		return -EINVAL;
	*ret = c;
	return 0;
}

/* A refresh token that registry_consume or registry_check found unusable:
 * r -EALREADY with its status, or -ENOENT (unknown), or a registry
 * failure. */
static void api_refresh_refused(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
				const char *family, int r, enum registry_status status)
{
	if (r == -EALREADY && status == REGISTRY_SUSPENDED)
		/* Suspension is an administrator's pause, meant to be lifted:
		 * refused, but not taken for a theft. */
		api_invalid_grant(out, req, "the refresh token is suspended");
	else if (r == -EALREADY)
		api_grant_revoke_family(ctx, req, out, family, API_REASON_REFRESH_REUSE,
					"the refresh token was used before: every token of its family is now revoked");
	else if (r == -ENOENT)
		api_invalid_grant(out, req, "the refresh token is not registered");
	else
		api_registry_failed(out, req, r);
}

static void api_grant_refresh(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			      const struct grant_request *g)
{
	const struct config *cfg = ctx->cfg;
	struct issue_ctx ictx = { cfg, ctx->keys, ctx->session, api_now(), ctx->registry };
	struct jwt_expect expect = { .now = ictx.now, .leeway = cfg->leeway, .issuer = cfg->issuer,
				     .typ = "rt+jwt", .token_type = "refresh" };
	struct issue_result access = { 0 }, refresh = { 0 };
	struct issue_request areq, rreq;
	struct registry_record records[2];
	struct api_refresh_claims rc;
	struct api_pending *pending = NULL;
	enum registry_status status = REGISTRY_ACTIVE;
	json_t *header = NULL, *claims = NULL, *custom = NULL;
	int64_t ttl;
	char err[160];
	int found = 0, r;

	r = jwt_verify(g->refresh_token, strlen(g->refresh_token), keys_lookup, &ctx->view, &expect, &header, &claims);
	if (r == JWS_E_UNAVAILABLE) {
		api_error(out, req, 503, "hsm_unavailable", "this token's key verifies in the token, which cannot be reached");
		goto out;
	}
	if (r < 0 || api_refresh_claims(claims, &rc) < 0) {
		api_invalid_grant(out, req, "the refresh token is not valid here (malformed, expired, not a refresh token "
				  "or not issued by this service)");
		goto out;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", rc.jti);
	if (g->client_id != NULL && (rc.client_id == NULL || strcmp(g->client_id, rc.client_id) != 0)) {
		api_invalid_grant(out, req, "the refresh token was issued to another client");
		goto out;
	}
	/* RFC 6749 §6: a refresh may narrow the scope, never widen it. */
	if (g->scope != NULL && grant_scope_narrows(rc.scope, g->scope) < 0) {
		api_error(out, req, 400, "invalid_scope", "scope may only name scopes the refresh token holds");
		goto out;
	}
	/* The family keeps the lifetime of its first token (RFC 9700 §4.14.2):
	 * a rotation never expires later than the token it replaces, so
	 * stolen refresh tokens cannot be kept alive for ever by rotating. */
	ttl = rc.exp - ictx.now;
	if (ttl > cfg->refresh_ttl)
		ttl = cfg->refresh_ttl;
	if (ttl < 1) {
		api_invalid_grant(out, req, "the refresh token has expired");
		goto out;
	}
	/* Looked up before anything is signed: a retired, revoked, suspended
	 * or unknown token would otherwise cost two HSM signatures and two
	 * status-list indices per presentation, for anyone holding a leaked
	 * old token.  registry_consume below stays the deciding step for two
	 * uses racing past this check. */
	r = registry_check(ctx->registry, rc.jti, rc.org ? rc.org : "", &found, &status);
	if (r == 0 && !found)
		r = -ENOENT;
	else if (r == 0 && status != REGISTRY_ACTIVE)
		r = -EALREADY;
	if (r < 0) {
		api_refresh_refused(ctx, req, out, rc.family, r, status);
		goto out;
	}
	if (issue_custom_claims_of(claims, &custom) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	areq = (struct issue_request){
		.type = ISSUE_ACCESS, .subject = rc.sub, .audience = rc.aud, .scope = g->scope ? g->scope : rc.scope,
		.client_id = rc.client_id, .org = rc.org, .claims = json_object_size(custom) ? custom : NULL,
		.ttl = cfg->access_ttl, .alg = JWS_ALG_INVALID, .family = rc.family,
	};
	rreq = areq;
	rreq.type = ISSUE_REFRESH;
	rreq.scope = rc.scope;
	rreq.ttl = ttl;
	if ((r = issue_token(&ictx, &areq, &access, err, sizeof(err))) < 0 ||
	    (r = issue_token(&ictx, &rreq, &refresh, err, sizeof(err))) < 0) {
		api_grant_issue_failed(out, req, r);
		goto out;
	}
	records[0] = access.record;
	records[1] = refresh.record;
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	/* One step: the presented token retired and its successors
	 * registered, so that of two concurrent uses one wins and the other,
	 * finding it retired, revokes a family that already holds the
	 * winner's tokens. */
	/* Past this call the token is retired in the index: presented again
	 * after a 503 it would be reuse, revoking the family. */
	api_pending_no_retry(pending, "the rotation could not be made durable and may still take effect: do not "
				      "present this refresh token again; start a new authorization");
	r = registry_consume(ctx->registry, rc.jti, ictx.now, API_REASON_ROTATED, records, 2, api_pending_done, pending,
			     &status);
	if (r == 0) {
		snprintf(out->jti, sizeof(out->jti), "%s", access.jti);
		api_grant_reply(pending, out, api_grant_response(&access, &refresh, NULL, areq.scope));
		goto out;
	}
	api_pending_free(pending);
	api_refresh_refused(ctx, req, out, rc.family, r, status);
out:
	issue_result_clear(&access);
	issue_result_clear(&refresh);
	json_decref(custom);
	json_decref(header);
	json_decref(claims);
}

/* ---- authorization_code (SPEC §5.4, RFC 6749 §4.1.3, RFC 7636 §4.6) ---- */

/* The three tokens of a redeemed code, each family = the refresh token's
 * jti.  An ID token's auth_time is the login's, or when the code was
 * registered. */
static int api_code_tokens(const struct issue_ctx *ictx, const struct codes_grant *cg, struct issue_result *refresh,
			   struct issue_result *access, struct issue_result *id)
{
	const struct config *cfg = ictx->cfg;
	struct issue_request rreq = {
		.type = ISSUE_REFRESH, .subject = cg->subject, .scope = cg->scope[0] ? cg->scope : NULL,
		.client_id = cg->client_id, .org = cg->org[0] ? cg->org : NULL, .ttl = cfg->refresh_ttl,
		.alg = JWS_ALG_INVALID,
	};
	struct issue_request areq = rreq, ireq = {
		.type = ISSUE_ID, .subject = cg->subject, .client_id = cg->client_id, .org = rreq.org,
		.nonce = cg->nonce[0] ? cg->nonce : NULL, .auth_time = cg->auth_time ? cg->auth_time : cg->issued_at,
		.ttl = cfg->id_ttl, .alg = JWS_ALG_INVALID,
	};
	char err[160];
	int r;

	r = issue_token(ictx, &rreq, refresh, err, sizeof(err));
	if (r < 0)
		return r;
	areq.type = ISSUE_ACCESS;
	areq.ttl = cfg->access_ttl;
	areq.family = refresh->jti;
	ireq.family = refresh->jti;
	if ((r = issue_token(ictx, &areq, access, err, sizeof(err))) < 0 ||
	    (r = issue_token(ictx, &ireq, id, err, sizeof(err))) < 0)
		return r;
	return 0;
}

static void api_grant_code(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			   const struct grant_request *g)
{
	struct issue_ctx ictx = { ctx->cfg, ctx->keys, ctx->session, api_now(), ctx->registry };
	struct issue_result refresh = { 0 }, access = { 0 }, id = { 0 };
	struct registry_record records[3];
	struct api_pending *pending = NULL;
	struct codes_grant cg;
	char family[CODES_FAMILY_MAX + 1] = "";
	int redeemed = 0, r;

	/* RFC 6749 §10.5: the first presentation consumes the code, whether
	 * the rest of the request is right or not — a stolen code tried with
	 * a guessed verifier is burnt for its owner too, which the owner
	 * notices, rather than left for more guesses. */
	r = codes_redeem(ctx->codes, g->code, strlen(g->code), ictx.now, &cg, family);
	if (r == -EALREADY) {
		if (family[0] == '\0')
			/* Its first redemption failed (nothing was issued) or is
			 * still under way (codes_bind tells it to revoke). */
			api_invalid_grant(out, req, "the code was used before");
		else
			api_grant_revoke_family(ctx, req, out, family, API_REASON_CODE_REUSE,
						"the code was used before: the tokens issued for it are now revoked");
		goto out;
	}
	if (r < 0) {
		api_invalid_grant(out, req, "the code is unknown, malformed or expired");
		goto out;
	}
	redeemed = 1;
	if (strcmp(g->client_id, cg.client_id) != 0) {
		api_invalid_grant(out, req, "the code was issued to another client");
		goto out;
	}
	if (strcmp(g->redirect_uri, cg.redirect_uri) != 0) {
		api_invalid_grant(out, req, "redirect_uri is not the one the code was issued for");
		goto out;
	}
	if (!codes_pkce_matches(cg.challenge, g->code_verifier, strlen(g->code_verifier))) {
		api_invalid_grant(out, req, "code_verifier does not match the code_challenge");
		goto out;
	}
	r = api_code_tokens(&ictx, &cg, &refresh, &access, &id);
	if (r < 0) {
		api_grant_issue_failed(out, req, r);
		goto out;
	}
	records[0] = refresh.record;
	records[1] = access.record;
	records[2] = id.record;
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	/* The code is bound once this call succeeds: presented again after a
	 * 503 it would be a second use, revoking the tokens. */
	api_pending_no_retry(pending, "the tokens could not be made durable and may still take effect: do not "
				      "present this code again; start a new authorization");
	r = registry_consume(ctx->registry, NULL, ictx.now, NULL, records, 3, api_pending_done, pending, NULL);
	if (r < 0) {
		api_pending_free(pending);
		api_registry_failed(out, req, r);
		goto out;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", access.jti);
	/* Registered first, bound second: a second presentation that finds
	 * the family finds its tokens in the registry; one that came before
	 * the family was bound is reported here.  Anything but 0 means the
	 * code's record cannot vouch for a single use: the tokens are revoked
	 * rather than handed out. */
	redeemed = 0;
	if (codes_bind(ctx->codes, g->code, strlen(g->code), refresh.jti, ictx.now) != 0) {
		log_warn("\"grant reused: family revoked\" reason=\"%s\" family=%s", API_REASON_CODE_REUSE, refresh.jti);
		if (registry_set_status(ctx->registry, refresh.jti, NULL, REGISTRY_REVOKED, ictx.now, API_REASON_CODE_REUSE,
					NULL, NULL, NULL) < 0)
			log_error("\"cannot revoke the tokens of a reused code\" family=%s", refresh.jti);
		api_pending_reply(pending, out, 400,
				  api_invalid_grant_body("the code was presented twice: its tokens are revoked"));
		goto out;
	}
	api_grant_reply(pending, out, api_grant_response(&access, &refresh, &id, cg.scope[0] ? cg.scope : NULL));
out:
	/* A redemption that issued nothing settles its tombstone empty: a
	 * later presentation is refused, with nothing to revoke. */
	if (redeemed)
		codes_bind(ctx->codes, g->code, strlen(g->code), "", ictx.now);
	issue_result_clear(&refresh);
	issue_result_clear(&access);
	issue_result_clear(&id);
}

void api_grant(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const json_t *body)
{
	struct grant_request g;
	char err[160];
	int r;

	/* RFC 6749 §5.1 (http_reply_json sends Cache-Control: no-store). */
	evhttp_add_header(evhttp_request_get_output_headers(req), "Pragma", "no-cache");
	r = grant_parse(body, &g, err, sizeof(err));
	if (r == GRANT_E_UNSUPPORTED)
		api_error(out, req, 400, "unsupported_grant_type", err);
	else if (r < 0)
		api_error(out, req, 400, "invalid_request", err);
	else if (g.type == GRANT_REFRESH_TOKEN)
		api_grant_refresh(ctx, req, out, &g);
	else
		api_grant_code(ctx, req, out, &g);
}

/* ---- POST /codes ---------------------------------------------------------- */

void api_codes(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct auth_caller caller;
	struct codes_grant cg;
	char code[CODES_CODE_LEN + 1], err[160];
	json_t *body = NULL;
	int r;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_ISSUE, &caller, out) < 0 ||
	    api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	r = grant_parse_codes_body(body, caller.org, api_now(), ctx->cfg->leeway, &cg, err, sizeof(err));
	json_decref(body);
	if (r == -EACCES) {
		api_error(out, req, 403, "insufficient_scope", err);
		return;
	}
	if (r < 0) {
		api_error(out, req, 400, "invalid_request", err);
		return;
	}
	r = codes_issue(ctx->codes, &cg, api_now(), code);
	if (r == -EDQUOT) {
		/* This org's own volume (SPEC §4's 429, Retry-After from
		 * http.c): a place frees as soon as one of its codes is
		 * redeemed or expires, and other orgs are not affected. */
		api_error(out, req, 429, "rate_limited", "this org has too many authorization codes live; retry shortly");
		return;
	}
	if (r == -ENOSPC) {
		/* RFC 6749 §4.1.2.1's word for an overloaded server. */
		api_error(out, req, 503, "temporarily_unavailable", "too many authorization codes are live; retry shortly");
		return;
	}
	if (r < 0) {
		api_error(out, req, 500, "server_error", "the code could not be registered");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Pragma", "no-cache");
	api_json(out, req, 200, json_pack("{s:s, s:i}", "code", code, "expires_in", CODES_TTL));
	OPENSSL_cleanse(code, sizeof(code));
}

/* ---- discovery ------------------------------------------------------------ */

void api_discovery(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = NULL;
	json_t *doc = NULL;
	char *text = NULL, cache[48];

	if (discovery_document(ctx->cfg, &doc) < 0 || (text = json_dumps(doc, JSON_COMPACT)) == NULL ||
	    (buf = evbuffer_new()) == NULL || evbuffer_add(buf, text, strlen(text)) < 0 ||
	    evbuffer_add(buf, "\n", 1) < 0) {
		api_error(out, req, 500, "server_error", "the discovery document could not be built");
		goto out;
	}
	snprintf(cache, sizeof(cache), "public, max-age=%d", API_DISCOVERY_MAX_AGE);
	evhttp_add_header(headers, "Content-Type", "application/json");
	evhttp_add_header(headers, "Cache-Control", cache);
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	out->status = 200;
	http_send(req, 200, buf);
out:
	evbuffer_free(buf);
	free(text);
	json_decref(doc);
}
