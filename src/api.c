#include "hsmjwt/api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

#include "api_internal.h"

/* Longest audience, issuer or token_type a verify request may compare. */
#define API_MAX_CLAIM_STRING 1024

int64_t api_now(void)
{
	return (int64_t)time(NULL);
}

void api_json(struct api_outcome *out, struct evhttp_request *req, int code, json_t *body)
{
	out->status = code;
	http_reply_json(req, code, body);
}

void api_error(struct api_outcome *out, struct evhttp_request *req, int code, const char *error,
	       const char *description)
{
	out->status = code;
	http_reply_error(req, code, error, description);
}

int api_read_body(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, int oauth,
		  json_t **ret_body)
{
	int r = oauth ? http_read_oauth(req, ctx->cfg->max_body, ret_body)
		      : http_read_json(req, ctx->cfg->max_body, ret_body);

	if (r < 0)
		out->status = http_reply_body_error(req, r);
	return r;
}

/* Whether an Authorization value carries a bearer token at all: RFC 6750
 * §3.1 answers a request without one (no header, another scheme, an empty
 * token) with a challenge but no error code. */
static int api_bearer_sent(const char *authorization)
{
	const char *token;

	return auth_bearer_token(authorization, &token) == 0;
}

int api_authenticate(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		     struct api_auth *ret_auth)
{
	const char *authorization = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	struct api_auth auth;
	int found = 0;

	memset(&auth, 0, sizeof(auth));
	auth.token_sent = api_bearer_sent(authorization);
	/* An address over its limit buys no verification (an HS256 token's
	 * is a C_Verify in the token). */
	if (auth.token_sent && api_rate_peek_address(ctx, req, out) < 0)
		return -EBUSY;
	auth.result = auth_bearer(authorization, &ctx->view, ctx->cfg, api_now(), &auth.caller, auth.err,
				  sizeof(auth.err));
	/* SPEC §4.1: a management token must not be revoked or suspended. */
	if (auth.result == 0 && auth.caller.jti[0] != '\0' &&
	    registry_check(ctx->registry, auth.caller.jti, auth.caller.org, &found, &auth.status) == 0 && found &&
	    auth.status != REGISTRY_ACTIVE)
		auth.result = -EKEYREVOKED;
	/* rate_limit: a caller is charged by name only once the registry has
	 * not refused its token — a leaked token that was revoked must not
	 * drain its owner's bucket; anything else is its address's. */
	if ((auth.result == 0 ? api_rate_caller(ctx, req, out, auth.caller.org, auth.caller.sub)
			      : api_rate_unverified(ctx, req, out)) < 0)
		return -EBUSY;
	*ret_auth = auth;
	return 0;
}

int api_authorize_as(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		     const struct api_auth *auth, unsigned role, struct auth_caller *ret_caller)
{
	if (auth->result == -EAGAIN) {
		api_error(out, req, 503, "hsm_unavailable", "the caller's token verifies in the token, which cannot be reached");
		return -EAGAIN;
	}
	if (auth->result == -EKEYREVOKED) {
		out->status = 401;
		http_reply_unauthorized(req, 1, auth->status == REGISTRY_SUSPENDED ? "bearer token rejected: suspended"
										   : "bearer token rejected: revoked");
		return -EACCES;
	}
	if (auth->result < 0) {
		out->status = 401;
		http_reply_unauthorized(req, auth->token_sent, auth->err);
		return -EACCES;
	}
	snprintf(out->sub, sizeof(out->sub), "%s", auth->caller.sub);
	if (!auth_allows(&auth->caller, role)) {
		api_error(out, req, 403, "insufficient_scope", "the caller's roles do not grant this call");
		return -EACCES;
	}
	*ret_caller = auth->caller;
	return 0;
}

int api_authorize(struct api_ctx *ctx, struct evhttp_request *req, unsigned role, struct auth_caller *ret_caller,
		  struct api_outcome *out)
{
	struct api_auth auth;

	if (api_authenticate(ctx, req, out, &auth) < 0)
		return -EBUSY;
	return api_authorize_as(ctx, req, out, &auth, role, ret_caller);
}

const char *api_scope(const struct auth_caller *caller)
{
	return caller->org[0] != '\0' ? caller->org : NULL;
}

void api_registry_failed(struct api_outcome *out, struct evhttp_request *req, int r)
{
	if (r == -EIO || r == -ENOSPC || r == -EAGAIN)
		api_error(out, req, 503, "registry_unavailable",
			  r == -EIO ? "the registry cannot record changes" :
			  r == -EAGAIN ? "the registry's disk is behind; retry" : "the registry is full");
	else
		api_error(out, req, 500, "server_error", "the registry could not record the change");
}

/* ---- replies held back until the registry is durable ------------------ */

struct api_pending {
	struct api_ctx *ctx;
	struct evhttp_request *req;
	struct api_outcome outcome;
	int code;
	json_t *body;
	int result;
	const char *error;            /* static: answer with this error instead of body */
	const char *description;
	const char *no_retry;         /* static: the 503's description, without Retry-After */
};

int api_pending_new(struct api_ctx *ctx, struct evhttp_request *req, struct api_pending **ret_pending)
{
	struct api_pending *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	p->ctx = ctx;
	p->req = req;
	atomic_fetch_add(&ctx->pending, 1);
	*ret_pending = p;
	return 0;
}

void api_pending_free(struct api_pending *p)
{
	if (p == NULL)
		return;
	atomic_fetch_sub(&p->ctx->pending, 1);
	json_decref(p->body);
	free(p);
}

/* On the worker's loop: the change is durable (or will never be). */
static void api_pending_send(evutil_socket_t fd, short what, void *arg)
{
	struct api_pending *p = arg;

	if (p->error != NULL) {
		p->outcome.status = p->code;
		http_log_request(p->req, &p->outcome);
		http_reply_error(p->req, p->code, p->error, p->description);
	} else if (p->result < 0) {
		/* Not durable: the change must not be acknowledged, nor an
		 * issued token handed out. */
		p->outcome.status = 503;
		http_log_request(p->req, &p->outcome);
		if (p->no_retry != NULL)
			http_reply_json(p->req, 503, json_pack("{s:s, s:s}", "error", "registry_unavailable",
							       "error_description", p->no_retry));
		else
			http_reply_error(p->req, 503, "registry_unavailable", "the change could not be made durable");
	} else {
		p->outcome.status = p->code;
		http_log_request(p->req, &p->outcome);
		http_reply_json(p->req, p->code, p->body);
		p->body = NULL;
	}
	api_pending_free(p);
}

void api_pending_done(void *arg, int result)
{
	static const struct timeval now = { 0, 0 };
	struct api_pending *p = arg;

	p->result = result;
	/* The request belongs to its worker's loop: reply from there. */
	if (event_base_once(p->ctx->base, -1, EV_TIMEOUT, api_pending_send, p, &now) < 0)
		log_error("\"cannot schedule a deferred reply: the client will time out\" worker=%u", p->ctx->worker);
}

void api_pending_reply(struct api_pending *p, struct api_outcome *out, int code, json_t *body)
{
	p->code = code;
	p->body = body;
	out->deferred = 1;
	p->outcome = *out;
}

void api_pending_no_retry(struct api_pending *p, const char *description)
{
	p->no_retry = description;
}

void api_pending_defer(struct api_pending *p, struct api_outcome *out)
{
	out->deferred = 1;
	p->outcome = *out;
}

void api_pending_answer(struct api_pending *p, int code, json_t *body, const char *error, const char *description)
{
	p->code = code;
	p->body = body;
	p->error = error;
	p->description = description;
	api_pending_done(p, 0);
}

static void api_verify(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	struct jwt_expect expect = { .now = api_now(), .leeway = ctx->cfg->leeway };
	json_t *body = NULL, *header = NULL, *claims = NULL;
	const char *token, *token_type = NULL, *status;
	int r;

	if (api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	if (!json_is_object(body) || !json_is_string(json_object_get(body, "token")) ||
	    json_optional_string(body, "audience", API_MAX_CLAIM_STRING, &expect.audience) < 0 ||
	    json_optional_string(body, "issuer", API_MAX_CLAIM_STRING, &expect.issuer) < 0 ||
	    json_optional_string(body, "token_type", API_MAX_CLAIM_STRING, &token_type) < 0) {
		api_error(out, req, 400, "invalid_request",
			  "expected {\"token\": string, \"audience\"?, \"issuer\"?, \"token_type\"?: strings}");
		goto out;
	}
	if (token_type != NULL) {
		expect.typ = issue_typ_for(token_type);
		expect.token_type = token_type;
		if (expect.typ == NULL) {
			api_error(out, req, 400, "invalid_request", "token_type must be access, refresh, id, parent or child");
			goto out;
		}
	}
	token = json_string_value(json_object_get(body, "token"));
	r = jwt_verify(token, json_string_length(json_object_get(body, "token")), keys_lookup, &ctx->view, &expect,
		       &header, &claims);
	if (r == JWS_E_UNAVAILABLE) {
		metrics_verification(r);
		/* An HS256 token while the token is down: no verdict either way. */
		api_error(out, req, 503, "hsm_unavailable", "this token's key verifies in the token, which cannot be reached");
		goto out;
	}
	if (r == 0) {
		snprintf(out->jti, sizeof(out->jti), "%s", json_plain_string(json_object_get(claims, "jti")) ?
			 json_plain_string(json_object_get(claims, "jti")) : "");
		r = api_registry_verdict(ctx, claims, &status);
	}
	metrics_verification(r);
	if (r < 0) {
		api_json(out, req, 200, json_pack("{s:b, s:s}", "valid", 0, "error", jws_error_reason(r)));
		goto out;
	}
	api_json(out, req, 200, json_pack("{s:b, s:O, s:O, s:s}", "valid", 1, "header", header, "claims", claims,
					  "status", status));
out:
	json_decref(header);
	json_decref(claims);
	json_decref(body);
}

/* RFC 9110 §13.1.2: If-None-Match is "*", which any current representation
 * matches, or a list of entity tags compared weakly (a W/ prefix does not
 * count).  A quoted tag may hold a comma, so the list is walked tag by tag. */
static int api_none_match(const char *field, const char *etag)
{
	size_t etag_len = strlen(etag);
	const char *p = field;

	for (;;) {
		const char *end;
		p += strspn(p, " \t,");
		if (*p == '\0')
			return 0;
		if (*p == '*')
			return 1;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		end = *p == '"' ? strchr(p + 1, '"') : NULL;
		if (end == NULL) {
			/* Not an entity tag: skip it. */
			p += strcspn(p, ",");
			continue;
		}
		end++;
		if ((size_t)(end - p) == etag_len && memcmp(p, etag, etag_len) == 0)
			return 1;
		p = end;
	}
}

static void api_jwks(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		     const char *segment)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	const char *match = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
	char cache[64];
	struct evbuffer *body;
	int64_t max_age = keys_jwks_max_age(ctx->keys, api_now());

	/* Never cached past publish_ahead (less the time a replica may take to
	 * see a new key) nor past the next activation: a key published after
	 * this copy was fetched must reach the client before it signs (SPEC
	 * §4.2, keystate.h). */
	if (max_age > 0)
		snprintf(cache, sizeof(cache), "public, max-age=%lld", (long long)max_age);
	else
		snprintf(cache, sizeof(cache), "no-cache");
	evhttp_add_header(headers, "Cache-Control", cache);
	evhttp_add_header(headers, "ETag", ctx->keys->etag);
	if (match != NULL && api_none_match(match, ctx->keys->etag)) {
		out->status = 304;
		evhttp_send_reply(req, 304, "Not Modified", NULL);
		return;
	}
	evhttp_add_header(headers, "Content-Type", "application/json");
	body = evbuffer_new();
	if (body == NULL || evbuffer_add(body, ctx->keys->jwks, ctx->keys->jwks_len) < 0) {
		evbuffer_free(body);
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	out->status = 200;
	http_send(req, 200, body);
	evbuffer_free(body);
}

static void api_health(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	struct registry_stats stats;
	const char *failure;
	json_t *doc;
	/* The token's state as the last operation and the watchdog left it: a
	 * call into the module here could hang with it. */
	int hsm_ok = hsm_available(ctx->hsm), can_issue;
	int stopping = ctx->stopping != NULL && atomic_load(ctx->stopping);

	registry_get_stats(ctx->registry, &stats);
	/* Every issued token is registered: without the registry nothing can
	 * be issued either.  A set whose handles predate the last recovery
	 * cannot sign until the keyring has reloaded it. */
	can_issue = hsm_ok && !stats.failed && ctx->keys->generation == hsm_generation(ctx->hsm) &&
		    keys_signer_at(ctx->keys, ctx->cfg->algorithms[0], api_now()) != NULL;
	/* A load balancer may retry: say when (RFC 9110 §10.2.3).  Stopping,
	 * it had better send nothing more here: 503 too. */
	if (!can_issue || stopping)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
	doc = json_pack("{s:s, s:s, s:I, s:s}", "status", stopping ? "stopping" : can_issue ? "ok" : "degraded",
			"hsm", hsm_ok ? "ok" : "unavailable", "keys", (json_int_t)ctx->keys->count,
			"registry", stats.failed ? "unavailable" : "ok");
	/* Why, for the operator: "pin_rejected" needs a fixed PIN source and a
	 * restart, anything else recovers by itself.  A CKR name or "hung" says
	 * nothing about the PIN or the keys. */
	failure = hsm_ok ? "" : hsm_failure(ctx->hsm);
	if (doc != NULL && failure[0] != '\0')
		json_object_set_new(doc, "hsm_failure", json_string(failure));
	api_json(out, req, can_issue && !stopping ? 200 : 503, doc);
}

/* A route's method as an Allow header lists it: GET brings HEAD. */
static const char *api_method_names(enum evhttp_cmd_type method)
{
	switch (method) {
	case EVHTTP_REQ_GET: return "GET, HEAD";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_PATCH: return "PATCH";
	case EVHTTP_REQ_DELETE: return "DELETE";
	default: return "";
	}
}

typedef void (*api_handler)(struct api_ctx *, struct evhttp_request *, struct api_outcome *, const char *);

/* A route for every method: a proxy's authorization call comes with the
 * method of the request it asks about (Envoy's ext_authz). */
#define API_ANY_METHOD ((enum evhttp_cmd_type)0)

/* A '*' in a path matches one non-empty segment, handed to the handler
 * percent-decoded; a final "**" matches whatever rest there is, captured as
 * nothing.  Literal routes come first, so they win. */
static const struct {
	const char *path;
	enum evhttp_cmd_type method;
	api_handler handler;
} api_routes[] = {
	{ "/token", EVHTTP_REQ_POST, api_token },
	{ "/token/verify", EVHTTP_REQ_POST, api_verify },
	{ "/token/revoke", EVHTTP_REQ_POST, api_revoke },
	{ "/token/introspect", EVHTTP_REQ_POST, api_introspect },
	{ "/tokens", EVHTTP_REQ_POST, api_tokens_create },
	{ "/tokens", EVHTTP_REQ_GET, api_tokens_list },
	/* Before the /tokens/{jti} routes, which would take them for jtis. */
	{ "/tokens/latest", EVHTTP_REQ_GET, api_tokens_latest },
	{ "/tokens/stream", EVHTTP_REQ_GET, api_tokens_stream },
	{ "/token-pairs", EVHTTP_REQ_POST, api_token_pairs },
	{ "/renew", EVHTTP_REQ_POST, api_renew },
	{ "/revocations", EVHTTP_REQ_GET, api_revocations },
	{ "/.well-known/jwks.json", EVHTTP_REQ_GET, api_jwks },
	{ "/.well-known/openid-configuration", EVHTTP_REQ_GET, api_discovery },
	{ "/.well-known/oauth-authorization-server", EVHTTP_REQ_GET, api_discovery },
	{ "/codes", EVHTTP_REQ_POST, api_codes },
	{ "/health", EVHTTP_REQ_GET, api_health },
	{ "/metrics", EVHTTP_REQ_GET, api_metrics },
	{ "/authorize", API_ANY_METHOD, api_authorize_proxy },
	{ "/authorize/**", API_ANY_METHOD, api_authorize_proxy },
	{ "/tokens/*", EVHTTP_REQ_GET, api_tokens_get },
	{ "/tokens/*", EVHTTP_REQ_PATCH, api_tokens_patch },
	{ "/tokens/*", EVHTTP_REQ_DELETE, api_tokens_delete },
	{ "/users/*/tokens", EVHTTP_REQ_DELETE, api_user_tokens_delete },
	{ "/statuslists/*", EVHTTP_REQ_GET, api_statuslist },
	{ "/admin/keys", EVHTTP_REQ_GET, api_admin_keys },
	{ "/admin/rotate-keys", EVHTTP_REQ_POST, api_admin_rotate },
};

/* The handlers that verify the request's bearer token themselves (through
 * api_authorize, or /authorize's own check) and charge rate_limit to its
 * caller (api_rate_caller), or to the address when it does not verify
 * (api_rate_unverified).  A handler missing here is charged to the address
 * before it runs and again to the caller; one listed here that never
 * verifies would not be charged at all. */
static int api_route_bearer(api_handler handler)
{
	static const api_handler bearer[] = {
		api_token, api_tokens_create, api_tokens_list, api_tokens_get, api_tokens_patch, api_tokens_delete,
		api_user_tokens_delete, api_revocations, api_revoke, api_introspect, api_token_pairs, api_codes,
		api_admin_keys, api_admin_rotate, api_authorize_proxy,
	};

	for (size_t i = 0; i < sizeof(bearer) / sizeof(bearer[0]); i++)
		if (handler == bearer[i])
			return 1;
	return 0;
}

/* The routes that, with admin_listen set, are served there and only there
 * (SPEC §3). */
static int api_route_admin(api_handler handler)
{
	return handler == api_health || handler == api_metrics;
}

/* Whether path (path_len bytes, no query) matches pattern; *ret_segment
 * points at the raw segment a '*' matched. */
static int api_route_match(const char *pattern, const char *path, size_t path_len, const char **ret_segment,
			   size_t *ret_segment_len)
{
	const char *end = path + path_len;

	while (*pattern != '\0') {
		if (strcmp(pattern, "**") == 0)
			return 1;
		if (*pattern == '*') {
			size_t n = 0;
			while (path + n < end && path[n] != '/')
				n++;
			if (n == 0)
				return 0;
			*ret_segment = path;
			*ret_segment_len = n;
			path += n;
			pattern++;
			continue;
		}
		if (path == end || *path != *pattern)
			return 0;
		path++;
		pattern++;
	}
	return path == end;
}

/* The captured segment percent-decoded ('+' stays '+': it is a path), or
 * NULL for one too long or decoding to a NUL. */
static char *api_decode_segment(const char *segment, size_t len)
{
	char raw[API_MAX_SEGMENT + 1];
	size_t decoded_len = 0;
	char *decoded;

	if (len > API_MAX_SEGMENT)
		return NULL;
	memcpy(raw, segment, len);
	raw[len] = '\0';
	decoded = evhttp_uridecode(raw, 0, &decoded_len);
	if (decoded != NULL && strlen(decoded) != decoded_len) {
		free(decoded);
		return NULL;
	}
	return decoded;
}

static void api_route(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out)
{
	const char *uri = http_request_path(evhttp_request_get_uri(req));
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	size_t path_len = strcspn(uri ? uri : "", "?");
	char allow[64] = "";
	int path_known = 0;

	for (size_t i = 0; uri && i < sizeof(api_routes) / sizeof(api_routes[0]); i++) {
		const char *segment = NULL;
		size_t segment_len = 0;
		char *decoded = NULL;

		if (!api_route_match(api_routes[i].path, uri, path_len, &segment, &segment_len))
			continue;
		/* The admin listener serves its routes alone; with one set, the
		 * public listeners know them no more. */
		if (api_route_admin(api_routes[i].handler) != ctx->admin && (ctx->admin || ctx->cfg->admin_listen_set))
			continue;
		path_known = 1;
		out->route = api_routes[i].path;
		/* HEAD is GET without the body (http_send drops it). */
		if (api_routes[i].method != method && api_routes[i].method != API_ANY_METHOD &&
		    !(api_routes[i].method == EVHTTP_REQ_GET && method == EVHTTP_REQ_HEAD)) {
			if (strstr(allow, api_method_names(api_routes[i].method)) == NULL)
				snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s",
					 allow[0] ? ", " : "", api_method_names(api_routes[i].method));
			continue;
		}
		if (segment != NULL && (decoded = api_decode_segment(segment, segment_len)) == NULL) {
			if (api_rate_address(ctx, req, out) == 0)
				api_error(out, req, 404, "not_found", "no such resource");
			return;
		}
		/* rate_limit, once the route is known (its 429 is counted
		 * under it): a handler that verifies bearer tokens charges a
		 * request carrying an Authorization header itself; any other
		 * request is its address's, with the header or without. */
		if ((!api_route_bearer(api_routes[i].handler) ||
		     evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization") == NULL) &&
		    api_rate_address(ctx, req, out) < 0) {
			free(decoded);
			return;
		}
		api_routes[i].handler(ctx, req, out, decoded);
		free(decoded);
		return;
	}
	if (api_rate_address(ctx, req, out) < 0)
		return;
	if (path_known) {
		/* RFC 9110 §15.5.6: a 405 must list the methods the path takes. */
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
		api_error(out, req, 405, "method_not_allowed", "this path does not take that method");
		return;
	}
	api_error(out, req, 404, "not_found", "no such endpoint");
}

void api_dispatch(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out)
{
	/* One set for the whole request, however the keyring changes it
	 * meanwhile: a token is verified and signed against one view. */
	struct keys *keys = keyring_acquire(ctx->keyring);

	/* Likewise one config version (a reload publishes the next one). */
	config_live_adopt(ctx->live, &ctx->cfg);
	ctx->keys = keys;
	ctx->view = (struct keys_view){ keys, ctx->session };
	api_route(ctx, req, out);
	ctx->keys = NULL;
	ctx->view.keys = NULL;
	keys_release(keys);
}
