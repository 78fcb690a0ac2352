/* Parent/child pairs (SPEC §4.2, §5.5): POST /token-pairs, POST /renew,
 * GET /tokens/latest and the Server-Sent Events stream GET /tokens/stream.
 *
 * A parent is the credential of its own children: /renew takes it in the
 * body, /tokens/latest and /tokens/stream as the bearer token.  It must be
 * this service's (signature, iss, typ parent+jwt, token_type parent),
 * unexpired and active in the registry; anything else is 401
 * invalid_token.  Every token is handed out only once its registration is
 * durable.
 *
 * Streams.  An open stream is subscribed to its parent's renewals
 * (renew.h).  The renewal thread formats each event and hops to the
 * stream's worker loop (event_base_once), where alone the stream's request
 * and connection are touched; an event holds a reference on the stream, so
 * a connection closing meanwhile frees nothing the event still needs.  The
 * connection itself holds one reference, given back when libevent is done
 * with the request: after its last byte was written (on_complete) or when
 * the connection goes down (closecb).  A stream and each event on its way
 * count in the worker's pending, so a stop waits for their end. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>

#include <openssl/crypto.h>

#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/log.h"

#include "api_internal.h"

/* A comment line every so often keeps proxies from closing an idle stream. */
#define API_STREAM_KEEPALIVE_SECONDS 15
/* A client that does not read: its stream is ended once this much waits
 * to be written, and its connection dropped when a write makes no progress
 * for the timeout. */
#define API_STREAM_MAX_BACKLOG 65536
#define API_STREAM_WRITE_TIMEOUT_SECONDS 30
/* What a stream's client may send without it being read (nothing is). */
#define API_STREAM_INPUT_MAX 4096

/* ---- shared ----------------------------------------------------------------- */

/* Replies, logging the request line first when the request was deferred
 * (the handler's caller logs the others; a reply may free the request). */
static void api_answer_error(struct api_outcome *out, struct evhttp_request *req, int deferred, int code,
			     const char *error, const char *description)
{
	out->status = code;
	if (deferred)
		http_log_request(req, out);
	http_reply_error(req, code, error, description);
}

static void api_answer_json(struct api_outcome *out, struct evhttp_request *req, int deferred, json_t *body)
{
	out->status = 200;
	if (deferred)
		http_log_request(req, out);
	http_reply_json(req, 200, body);
}

/* POST /renew's response, also an event's data: {child_token, child_jti,
 * expires_in}. */
static json_t *api_child_json(const char *token, const char *jti, int64_t exp, int64_t now)
{
	return json_pack("{s:s, s:s, s:I}", "child_token", token, "child_jti", jti,
			 "expires_in", (json_int_t)(exp > now ? exp - now : 0));
}

/* The claims of a parent token of this service that may have children now:
 * 0 and *ret_claims, or a reply sent (401, 503) and -EACCES. */
static int api_parent_claims(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			     const char *token, size_t len, json_t **ret_claims)
{
	struct jwt_expect expect = { .now = api_now(), .leeway = ctx->cfg->leeway, .issuer = ctx->cfg->issuer,
				     .typ = "parent+jwt", .token_type = "parent" };
	json_t *header = NULL, *claims = NULL;
	const char *status = NULL;
	char description[128];
	int r;

	r = jwt_verify(token, len, keys_lookup, &ctx->view, &expect, &header, &claims);
	json_decref(header);
	if (r == JWS_E_UNAVAILABLE) {
		api_error(out, req, 503, "hsm_unavailable", "this token's key verifies in the token, which cannot be reached");
		return -EACCES;
	}
	if (r == 0)
		r = api_registry_verdict(ctx, claims, &status);
	/* A parent is always registered: one the registry does not know is
	 * not one of its parents (or no longer). */
	if (r == 0 && strcmp(status, "active") != 0)
		r = JWS_E_REVOKED;
	/* Within the leeway jwt_verify grants, but nothing is left to give. */
	if (r == 0 && json_integer_value(json_object_get(claims, "exp")) <= expect.now)
		r = JWS_E_EXPIRED;
	if (r == 0 && json_plain_string(json_object_get(claims, "jti")) == NULL)
		r = JWS_E_MALFORMED;
	if (r < 0) {
		json_decref(claims);
		snprintf(description, sizeof(description), "the parent token is not usable: %s", jws_error_reason(r));
		out->status = 401;
		http_reply_unauthorized(req, 1, description);
		return -EACCES;
	}
	snprintf(out->sub, sizeof(out->sub), "%s", json_plain_string(json_object_get(claims, "sub")) ?
		 json_plain_string(json_object_get(claims, "sub")) : "");
	*ret_claims = claims;
	return 0;
}

/* A registration that failed: registry_add's -EPERM is a parent revoked
 * (or suspended) since api_parent_claims looked, answered as if it had been
 * then. */
static void api_child_registry_failed(struct api_outcome *out, struct evhttp_request *req, int r)
{
	if (r != -EPERM) {
		api_registry_failed(out, req, r);
		return;
	}
	out->status = 401;
	http_reply_unauthorized(req, 1, "the parent token is not usable: revoked");
}

/* An auto-renewal entry's parent, borrowing from claims. */
static void api_renew_parent(const struct config *cfg, const json_t *claims, int64_t child_ttl,
			     struct renew_parent *ret_parent)
{
	const char *org = json_plain_string(json_object_get(claims, "org"));

	ret_parent->jti = json_plain_string(json_object_get(claims, "jti"));
	ret_parent->org = org ? org : "";
	ret_parent->claims = claims;
	ret_parent->exp = json_integer_value(json_object_get(claims, "exp"));
	ret_parent->child_ttl = child_ttl > 0 ? child_ttl : cfg->child_ttl;
}

/* ---- POST /token-pairs ---------------------------------------------------- */

/* Both registrations of a pair: the reply goes when both are durable. */
struct api_pair_join {
	atomic_int left;              /* registrations outstanding + the handler's own */
	atomic_int result;            /* the first failure */
	struct api_pending *pending;
	struct renew *renew;
	/* With auto_renew: the entry to add once the pair is durable.  cfg is
	 * the request's version, retained: the worker may adopt a newer one
	 * before the registry calls back (on its flusher thread). */
	int auto_renew;
	struct config_live *live;
	const struct config *cfg;
	json_t *parent_claims;
	int64_t child_ttl;
	char *child_token;
	char child_jti[ISSUE_JTI_LEN + 1];
	int64_t child_iat, child_exp;
};

static void api_pair_join_free(struct api_pair_join *join)
{
	config_live_release(join->live, join->cfg);
	if (join->child_token != NULL) {
		OPENSSL_cleanse(join->child_token, strlen(join->child_token));
		free(join->child_token);
	}
	json_decref(join->parent_claims);
	free(join);
}

/* A registry done callback (flusher thread), and the handler's last word. */
static void api_pair_done(void *arg, int result)
{
	struct api_pair_join *join = arg;
	int expected = 0;

	if (result < 0)
		atomic_compare_exchange_strong(&join->result, &expected, result);
	if (atomic_fetch_sub(&join->left, 1) != 1)
		return;
	result = atomic_load(&join->result);
	if (result == 0 && join->auto_renew) {
		struct renew_parent parent;
		struct renew_child child = { join->child_token, join->child_jti, join->child_iat, join->child_exp };
		int r;

		api_renew_parent(join->cfg, join->parent_claims, join->child_ttl, &parent);
		r = renew_add(join->renew, &parent, &child, api_now());
		/* The pair is durable and goes out all the same: the parent
		 * makes its entry when it presents itself (/tokens/latest). */
		if (r < 0)
			log_warn("\"auto-renewal not started for a new pair\" parent_jti=%s error=%d", parent.jti, r);
	}
	api_pending_done(join->pending, result);
	api_pair_join_free(join);
}

/* The join's copy of what auto-renewal needs (the parent's claims as
 * signed). */
static int api_pair_join_renewal(struct api_pair_join *join, const struct issue_result *parent,
				 const struct issue_result *child, int64_t child_ttl)
{
	json_t *header = NULL;
	int r;

	r = jwt_decode_unverified(parent->token, strlen(parent->token), &header, &join->parent_claims);
	json_decref(header);
	if (r < 0 || (join->child_token = strdup(child->token)) == NULL)
		return -ENOMEM;
	join->auto_renew = 1;
	join->child_ttl = child_ttl;
	snprintf(join->child_jti, sizeof(join->child_jti), "%s", child->jti);
	join->child_iat = child->record.iat;
	join->child_exp = child->exp;
	return 0;
}

void api_token_pairs(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct issue_ctx ictx = { ctx->cfg, ctx->keys, ctx->session, api_now(), ctx->registry };
	struct issue_result parent = { 0 }, child = { 0 };
	struct issue_request child_req;
	struct auth_caller caller;
	struct issue_pair pair;
	struct api_pair_join *join = NULL;
	struct api_pending *pending = NULL;
	json_t *body = NULL, *answer = NULL;
	char err[160] = "";
	int r;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_ISSUE, &caller, out) < 0 ||
	    api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	r = issue_parse_pair_body(&ictx, body, &caller, &pair, err, sizeof(err));
	if (r < 0) {
		api_issue_failed(out, req, r, err);
		goto out;
	}
	/* Refused before anything is issued, rather than a pair handed out
	 * that is not renewed. */
	if (pair.parent.auto_renew && pair.include_child && (r = renew_room(ctx->renew)) < 0) {
		api_error(out, req, 503, "renewal_unavailable", r == -ENOSPC ? "auto-renewal holds as many parents as it may"
										: "the service is stopping");
		goto out;
	}
	r = issue_token(&ictx, &pair.parent, &parent, err, sizeof(err));
	if (r == 0 && pair.include_child) {
		/* The child of renew_child_request: what it would read from the
		 * parent's claims is what the parent was made from. */
		child_req = pair.parent;
		child_req.type = ISSUE_CHILD;
		child_req.auto_renew = 0;
		child_req.ttl = pair.child_ttl;
		child_req.parent_jti = parent.jti;
		r = issue_token(&ictx, &child_req, &child, err, sizeof(err));
	}
	if (r < 0) {
		api_issue_failed(out, req, r, err);
		goto out;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", parent.jti);
	answer = json_pack("{s:s, s:s, s:I, s:I}", "parent_token", parent.token, "parent_jti", parent.jti,
			   "expires_in", (json_int_t)(pair.include_child ? child.expires_in : parent.expires_in),
			   "parent_expires_in", (json_int_t)parent.expires_in);
	if (answer != NULL && pair.include_child &&
	    (json_object_set_new(answer, "child_token", json_string(child.token)) < 0 ||
	     json_object_set_new(answer, "child_jti", json_string(child.jti)) < 0)) {
		json_decref(answer);
		answer = NULL;
	}
	join = calloc(1, sizeof(*join));
	if (answer == NULL || join == NULL || api_pending_new(ctx, req, &pending) < 0 ||
	    (pair.parent.auto_renew && pair.include_child &&
	     api_pair_join_renewal(join, &parent, &child, pair.child_ttl) < 0)) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	join->pending = pending;
	join->renew = ctx->renew;
	join->live = ctx->live;
	join->cfg = config_live_retain(ctx->live, ctx->cfg);
	atomic_init(&join->left, 2);
	atomic_init(&join->result, 0);
	r = registry_add(ctx->registry, &parent.record, api_pair_done, join);
	if (r < 0) {
		api_registry_failed(out, req, r);
		goto out;
	}
	if (pair.include_child) {
		atomic_fetch_add(&join->left, 1);
		r = registry_add(ctx->registry, &child.record, api_pair_done, join);
		if (r < 0) {
			/* The parent's registration answers for both. */
			atomic_fetch_sub(&join->left, 1);
			atomic_store(&join->result, r);
		}
	}
	api_pending_reply(pending, out, 200, answer);
	answer = NULL;
	pending = NULL;
	/* The handler's own reference: the reply cannot go before the
	 * answer is in place. */
	api_pair_done(join, 0);
	join = NULL;
out:
	if (join != NULL)
		api_pair_join_free(join);
	api_pending_free(pending);
	json_decref(answer);
	issue_result_clear(&parent);
	issue_result_clear(&child);
	json_decref(body);
}

/* ---- POST /renew ---------------------------------------------------------- */

/* Issues a child of the parent with these claims: 0 and *ret_child, or a
 * reply sent and a negative error. */
static int api_issue_child(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			   const json_t *parent_claims, int64_t ttl, struct issue_result *ret_child)
{
	struct issue_ctx ictx = { ctx->cfg, ctx->keys, ctx->session, api_now(), ctx->registry };
	struct issue_request child_req;
	json_t *custom = NULL;
	char err[160] = "";
	int r;

	r = renew_child_request(parent_claims, ttl, ictx.now, &child_req, &custom);
	if (r == -ETIME) {
		out->status = 401;
		http_reply_unauthorized(req, 1, "the parent token is not usable: expired");
		return r;
	}
	if (r == 0)
		r = issue_token(&ictx, &child_req, ret_child, err, sizeof(err));
	json_decref(custom);
	if (r < 0)
		api_issue_failed(out, req, r, err[0] ? err : "the child could not be issued");
	return r;
}

void api_renew(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct issue_result child = { 0 };
	struct api_pending *pending = NULL;
	json_t *body = NULL, *claims = NULL, *answer = NULL;
	const char *token = NULL;
	size_t live = 0;
	int r;

	if (api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	if (!json_is_object(body) || json_object_size(body) != 1 ||
	    json_optional_string(body, "parent_token", JWS_MAX_TOKEN, &token) < 0 || token == NULL) {
		api_error(out, req, 400, "invalid_request", "expected {\"parent_token\": string}");
		goto out;
	}
	if (api_parent_claims(ctx, req, out, token, strlen(token), &claims) < 0)
		goto out;
	/* Checked, then issued: concurrent requests may pass it together,
	 * one per worker at most. */
	r = registry_count_children(ctx->registry, json_plain_string(json_object_get(claims, "jti")), api_now(),
				    &live);
	if (r < 0) {
		api_error(out, req, 500, "server_error", "the parent's children could not be counted");
		goto out;
	}
	if (live >= RENEW_MAX_LIVE_CHILDREN) {
		api_error(out, req, 429, "rate_limited", "this parent has as many live children as it may; retry "
			  "when one expires");
		goto out;
	}
	if (api_issue_child(ctx, req, out, claims, ctx->cfg->child_ttl, &child) < 0)
		goto out;
	snprintf(out->jti, sizeof(out->jti), "%s", child.jti);
	answer = api_child_json(child.token, child.jti, child.exp, api_now());
	if (answer == NULL || api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	r = registry_add(ctx->registry, &child.record, api_pending_done, pending);
	if (r < 0) {
		api_child_registry_failed(out, req, r);
		goto out;
	}
	api_pending_reply(pending, out, 200, answer);
	answer = NULL;
	pending = NULL;
out:
	api_pending_free(pending);
	json_decref(answer);
	json_decref(claims);
	issue_result_clear(&child);
	json_decref(body);
}

/* ---- the parent as a bearer ------------------------------------------------- */

/* /tokens/latest and /tokens/stream: the bearer must be the parent that
 * ?parent_jti= names, and auto-renewed.  0 and *ret_claims, or a reply
 * sent: 401 for a missing or unusable parent, 400 for the query, 403 when
 * the bearer is another parent (the same answer whatever parent_jti names,
 * so nothing is learnt about it), 404 for a parent without auto_renew. */
static int api_parent_bearer(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			     json_t **ret_claims)
{
	const char *authorization = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	const char *token, *wanted;
	struct evkeyvalq params;
	struct evkeyval *kv;
	json_t *claims = NULL;
	int r = -EACCES, n = 0;

	TAILQ_INIT(&params);
	if (auth_bearer_token(authorization, &token) < 0) {
		out->status = 401;
		http_reply_unauthorized(req, 0, "the parent token is required as the bearer token");
		return -EACCES;
	}
	if (api_parent_claims(ctx, req, out, token, strlen(token), &claims) < 0)
		return -EACCES;
	if (query == NULL || evhttp_parse_query_str(query, &params) < 0) {
		api_error(out, req, 400, "invalid_request", "expected ?parent_jti=<the bearer's jti>");
		goto out;
	}
	TAILQ_FOREACH(kv, &params, next)
		n++;
	wanted = evhttp_find_header(&params, "parent_jti");
	if (n != 1 || wanted == NULL) {
		api_error(out, req, 400, "invalid_request", "expected ?parent_jti=<the bearer's jti> and nothing else");
		goto out;
	}
	if (strcmp(wanted, json_plain_string(json_object_get(claims, "jti"))) != 0) {
		api_error(out, req, 403, "insufficient_scope", "the bearer token is not the parent parent_jti names");
		goto out;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", wanted);
	if (!json_is_true(json_object_get(claims, "auto_renew"))) {
		api_error(out, req, 404, "not_found", "this parent is not auto-renewed; POST /renew gives it children");
		goto out;
	}
	*ret_claims = claims;
	claims = NULL;
	r = 0;
out:
	evhttp_clear_headers(&params);
	json_decref(claims);
	return r;
}

/* ---- GET /tokens/latest ------------------------------------------------------ */

/* Answers parent_jti's newest child: 0 (the reply is sent) or -ENOENT
 * (nothing sent) when the parent has no entry. */
static int api_latest_reply(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, int deferred,
			    const char *parent_jti)
{
	struct renew_latest latest = { 0 };
	int64_t now = api_now();
	int r = renew_latest(ctx->renew, parent_jti, &latest);

	if (r == -ENOENT)
		return r;
	if (r < 0)
		api_answer_error(out, req, deferred, 500, "server_error", "out of memory");
	else if (latest.exp <= now)
		/* Renewals are failing (the token is down): the last child has
		 * run out, and the next is being retried. */
		api_answer_error(out, req, deferred, 503, "hsm_unavailable", "the parent's next child could not be issued yet");
	else
		api_answer_json(out, req, deferred, api_child_json(latest.token, latest.jti, latest.exp, now));
	renew_latest_clear(&latest);
	return 0;
}

/* ---- SSE streams --------------------------------------------------------------- */

enum api_stream_state {
	API_STREAM_OPEN,          /* subscribed, writing events */
	API_STREAM_ENDING,        /* evhttp_send_reply_end called */
	API_STREAM_DONE,          /* libevent is done with the request */
};

struct api_stream {
	struct api_ctx *ctx;
	struct evhttp_request *req;
	struct event *keepalive;
	struct renew_sub *sub;
	enum api_stream_state state;
	atomic_uint refs;                   /* the connection's + one per event in flight */
	struct api_stream *next, **prevp;   /* ctx->streams while open */
	char parent_jti[ISSUE_JTI_LEN + 1];
};

/* An event on its way from the renewal thread to the stream's loop. */
struct api_stream_event {
	struct api_stream *stream;
	int end;
	char *text;                         /* the SSE frame; wiped: it may hold a token */
};

static void api_stream_unref(struct api_stream *stream)
{
	if (atomic_fetch_sub(&stream->refs, 1) == 1)
		free(stream);
}

/* A stream is one reply and each event one more: the drain waits for them. */
static void api_stream_pending_done(struct api_ctx *ctx)
{
	atomic_fetch_sub(&ctx->pending, 1);
}

static void api_stream_write(struct api_stream *stream, const char *text, size_t len)
{
	struct evbuffer *buf = evbuffer_new();

	if (buf == NULL || evbuffer_add(buf, text, len) < 0)
		log_limited(LOG_LEVEL_WARN, "\"event dropped from a stream: out of memory\" parent_jti=%s",
			    stream->parent_jti);
	else
		evhttp_send_reply_chunk(stream->req, buf);
	evbuffer_free(buf);
}

/* Out of the renewal's reach and off the worker's list. */
static void api_stream_detach(struct api_stream *stream)
{
	renew_unsubscribe(stream->ctx->renew, stream->sub);
	stream->sub = NULL;
	event_free(stream->keepalive);
	stream->keepalive = NULL;
	*stream->prevp = stream->next;
	if (stream->next != NULL)
		stream->next->prevp = stream->prevp;
}

/* Ends an open stream with its last frame (may be NULL). */
static void api_stream_finish(struct api_stream *stream, const char *last)
{
	if (stream->state != API_STREAM_OPEN)
		return;
	if (last != NULL)
		api_stream_write(stream, last, strlen(last));
	api_stream_detach(stream);
	stream->state = API_STREAM_ENDING;
	/* The terminating chunk; on_complete or closecb follows. */
	evhttp_send_reply_end(stream->req);
}

static void api_stream_deliver(evutil_socket_t fd, short what, void *arg)
{
	struct api_stream_event *ev = arg;
	struct api_stream *stream = ev->stream;
	struct bufferevent *bev;

	if (stream->state == API_STREAM_OPEN) {
		bev = evhttp_connection_get_bufferevent(evhttp_request_get_connection(stream->req));
		if (ev->end)
			api_stream_finish(stream, ev->text);
		else if (evbuffer_get_length(bufferevent_get_output(bev)) > API_STREAM_MAX_BACKLOG)
			/* Not reading: no point queueing more tokens for it. */
			api_stream_finish(stream, NULL);
		else
			api_stream_write(stream, ev->text, strlen(ev->text));
	}
	OPENSSL_cleanse(ev->text, strlen(ev->text));
	free(ev->text);
	api_stream_pending_done(stream->ctx);
	api_stream_unref(stream);
	free(ev);
}

/* renew_notify_fn: under renew's lock, on any thread — formats the frame
 * and hops to the stream's loop. */
static void api_stream_notify(void *arg, const struct renew_event *event)
{
	static const struct timeval now_tv = { 0, 0 };
	struct api_stream *stream = arg;
	struct api_stream_event *ev = calloc(1, sizeof(*ev));
	json_t *data = NULL;
	char *json = NULL;
	int n = -1;

	if (ev == NULL)
		goto fail;
	ev->stream = stream;
	ev->end = event->kind == RENEW_EVENT_END;
	if (ev->end)
		data = json_pack("{s:s}", "reason", event->reason);
	else
		data = api_child_json(event->token, event->jti, event->exp, api_now());
	json = data ? json_dumps(data, JSON_COMPACT) : NULL;
	if (json != NULL)
		n = ev->end ? asprintf(&ev->text, "event: end\ndata: %s\n\n", json)
			    : asprintf(&ev->text, "event: token\nid: %s\ndata: %s\n\n", event->jti, json);
	if (json != NULL)
		OPENSSL_cleanse(json, strlen(json));
	free(json);
	json_decref(data);
	if (n < 0) {
		ev->text = NULL;
		goto fail;
	}
	atomic_fetch_add(&stream->refs, 1);
	atomic_fetch_add(&stream->ctx->pending, 1);
	/* Zero delay: libevent makes it active at once, in order. */
	if (event_base_once(stream->ctx->base, -1, EV_TIMEOUT, api_stream_deliver, ev, &now_tv) == 0)
		return;
	api_stream_pending_done(stream->ctx);
	atomic_fetch_sub(&stream->refs, 1);   /* the connection's reference remains */
fail:
	log_limited(LOG_LEVEL_WARN, "\"event lost for a stream\" parent_jti=%s", stream->parent_jti);
	if (ev != NULL && ev->text != NULL) {
		OPENSSL_cleanse(ev->text, strlen(ev->text));
		free(ev->text);
	}
	free(ev);
}

static void api_stream_keepalive(evutil_socket_t fd, short what, void *arg)
{
	static const char comment[] = ": keepalive\n\n";
	struct api_stream *stream = arg;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evhttp_request_get_connection(stream->req));

	if (evbuffer_get_length(bufferevent_get_output(bev)) > API_STREAM_MAX_BACKLOG)
		api_stream_finish(stream, NULL);
	else
		api_stream_write(stream, comment, sizeof(comment) - 1);
}

/* libevent is done with the request: its reference goes. */
static void api_stream_done(struct api_stream *stream)
{
	stream->req = NULL;
	stream->state = API_STREAM_DONE;
	api_stream_pending_done(stream->ctx);
	api_stream_unref(stream);
}

/* The end was written (evhttp_send_done, before it frees the request). */
static void api_stream_complete(struct evhttp_request *req, void *arg)
{
	/* The connection may live on (keep-alive): it no longer concerns us. */
	http_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
	api_stream_done(arg);
}

/* The connection goes down (the client left, a write timed out, the server
 * is freed), with the stream open or its end not yet written. */
static void api_stream_closed(struct evhttp_connection *evcon, void *arg)
{
	struct api_stream *stream = arg;

	if (stream->state == API_STREAM_OPEN) {
		api_stream_detach(stream);
		/* A network failure detaches an unfinished request from its
		 * connection and leaves it to its owner to free; a request
		 * still attached goes with the connection. */
		if (evhttp_request_get_connection(stream->req) == NULL)
			evhttp_send_reply_end(stream->req);
	}
	api_stream_done(stream);
}

/* Starts parent_jti's stream on req; the reply (200 and the stream, or an
 * error) is sent.  -ENOENT (nothing sent) when the parent has no entry. */
static int api_stream_open(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, int deferred,
			   const char *parent_jti)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	const struct timeval keepalive = { API_STREAM_KEEPALIVE_SECONDS, 0 };
	const struct timeval write_timeout = { API_STREAM_WRITE_TIMEOUT_SECONDS, 0 };
	struct api_stream *stream;
	struct bufferevent *bev;
	int r;

	if (ctx->quiescing) {
		api_answer_error(out, req, deferred, 503, "renewal_unavailable", "the service is stopping");
		return -ECANCELED;
	}
	evhttp_add_header(headers, "Content-Type", "text/event-stream");
	evhttp_add_header(headers, "Cache-Control", "no-store");
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		/* The headers a GET gets, and no stream. */
		out->status = 200;
		if (deferred)
			http_log_request(req, out);
		http_send(req, 200, NULL);
		return 0;
	}
	stream = calloc(1, sizeof(*stream));
	if (stream == NULL || (stream->keepalive = event_new(ctx->base, -1, EV_PERSIST, api_stream_keepalive,
							      stream)) == NULL) {
		free(stream);
		api_answer_error(out, req, deferred, 500, "server_error", "out of memory");
		return -ENOMEM;
	}
	stream->ctx = ctx;
	stream->req = req;
	stream->state = API_STREAM_OPEN;
	atomic_init(&stream->refs, 1);
	snprintf(stream->parent_jti, sizeof(stream->parent_jti), "%s", parent_jti);
	/* Subscribed before the reply starts, so that a limit can still be
	 * answered; the current child it sends at once is delivered on this
	 * loop, after this handler (SPEC §4.2: the stream opens with it). */
	r = renew_subscribe(ctx->renew, parent_jti, api_stream_notify, stream, &stream->sub);
	if (r < 0) {
		event_free(stream->keepalive);
		free(stream);
		if (r == -EMLINK)
			api_answer_error(out, req, deferred, 429, "rate_limited",
					 "this parent has as many streams open as it may");
		else if (r == -ENOSPC || r == -ECANCELED)
			api_answer_error(out, req, deferred, 503, "renewal_unavailable",
					 "the service has as many streams open as it may");
		else if (r != -ENOENT)
			api_answer_error(out, req, deferred, 500, "server_error", "the stream could not be opened");
		return r;
	}
	/* nginx would buffer the stream otherwise. */
	evhttp_add_header(headers, "X-Accel-Buffering", "no");
	/* The end of a stream is the end of its connection. */
	evhttp_add_header(headers, "Connection", "close");
	atomic_fetch_add(&ctx->pending, 1);
	stream->next = ctx->streams;
	if (stream->next != NULL)
		stream->next->prevp = &stream->next;
	stream->prevp = &ctx->streams;
	ctx->streams = stream;
	out->status = 200;
	if (deferred)
		http_log_request(req, out);
	evhttp_send_reply_start(req, 200, "OK");
	evhttp_request_set_on_complete_cb(req, api_stream_complete, stream);
	http_connection_set_closecb(evhttp_request_get_connection(req), api_stream_closed, stream);
	/* evhttp's timeouts are a request's: a stream is idle by nature (no
	 * read timeout; the read side only notices the client leaving, with
	 * what it may send capped), and only a write making no progress ends
	 * it. */
	bev = evhttp_connection_get_bufferevent(evhttp_request_get_connection(req));
	bufferevent_set_timeouts(bev, NULL, &write_timeout);
	bufferevent_setwatermark(bev, EV_READ, 0, API_STREAM_INPUT_MAX);
	evtimer_add(stream->keepalive, &keepalive);
	return 0;
}

void api_quiesce(struct api_ctx *ctx)
{
	static const char last[] = "event: end\ndata: {\"reason\":\"shutdown\"}\n\n";

	ctx->quiescing = 1;
	while (ctx->streams != NULL)
		api_stream_finish(ctx->streams, last);
}

/* ---- a parent the daemon does not renew yet --------------------------------- */

/* An auto_renew parent that presents itself without an entry (after a
 * restart, or a suspension that ended): its first child is issued at once,
 * and the entry made once that child is durable — so that nothing but a
 * durable child is ever handed out — then the request goes on (latest or
 * stream) on its worker's loop. */
struct api_adopt {
	struct api_ctx *ctx;
	/* The request's config version, retained for api_adopt_done on the
	 * registry's flusher thread (ctx->cfg moves with the worker). */
	const struct config *cfg;
	struct evhttp_request *req;
	struct api_outcome outcome;
	int stream;
	int result;
	json_t *parent_claims;
	struct issue_result child;
};

static void api_adopt_free(struct api_adopt *adopt)
{
	if (adopt->cfg != NULL)
		config_live_release(adopt->ctx->live, adopt->cfg);
	issue_result_clear(&adopt->child);
	json_decref(adopt->parent_claims);
	free(adopt);
}

/* On the worker's loop. */
static void api_adopt_continue(evutil_socket_t fd, short what, void *arg)
{
	struct api_adopt *adopt = arg;
	struct api_outcome *out = &adopt->outcome;
	struct evhttp_request *req = adopt->req;
	const char *parent_jti = json_plain_string(json_object_get(adopt->parent_claims, "jti"));
	int r = adopt->result;

	atomic_fetch_sub(&adopt->ctx->pending, 1);
	if (r == 0)
		r = adopt->stream ? api_stream_open(adopt->ctx, req, out, 1, parent_jti)
				  : api_latest_reply(adopt->ctx, req, out, 1, parent_jti);
	if (r == -ENOENT)
		/* Dropped meanwhile (revoked, suspended, expired). */
		api_answer_error(out, req, 1, 503, "renewal_unavailable", "the parent's renewal ended meanwhile; retry");
	else if (adopt->result < 0)
		api_answer_error(out, req, 1, 503, adopt->result == -EIO ? "registry_unavailable" : "renewal_unavailable",
				 adopt->result == -EIO ? "the child could not be made durable" :
							 "auto-renewal cannot take this parent now");
	api_adopt_free(adopt);
}

/* The child's registry done callback (flusher thread). */
static void api_adopt_done(void *arg, int result)
{
	static const struct timeval now_tv = { 0, 0 };
	struct api_adopt *adopt = arg;

	if (result == 0) {
		struct renew_parent parent;
		struct renew_child child = { adopt->child.token, adopt->child.jti, adopt->child.record.iat,
					     adopt->child.exp };
		api_renew_parent(adopt->cfg, adopt->parent_claims, 0, &parent);
		result = renew_add(adopt->ctx->renew, &parent, &child, api_now());
		/* Another request made it first: its child is as good. */
		if (result == -EEXIST)
			result = 0;
	} else {
		result = -EIO;
	}
	adopt->result = result;
	if (event_base_once(adopt->ctx->base, -1, EV_TIMEOUT, api_adopt_continue, adopt, &now_tv) < 0)
		log_error("\"cannot schedule a deferred reply: the client will time out\" worker=%u", adopt->ctx->worker);
}

/* Takes over claims. */
static void api_adopt(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, json_t *claims,
		      int stream)
{
	struct api_adopt *adopt = NULL;
	int r = renew_room(ctx->renew);

	if (r < 0) {
		api_error(out, req, 503, "renewal_unavailable", r == -ENOSPC ? "auto-renewal holds as many parents as it may"
										: "the service is stopping");
		goto fail;
	}
	adopt = calloc(1, sizeof(*adopt));
	if (adopt == NULL) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto fail;
	}
	if (api_issue_child(ctx, req, out, claims, ctx->cfg->child_ttl, &adopt->child) < 0)
		goto fail;
	adopt->ctx = ctx;
	adopt->cfg = config_live_retain(ctx->live, ctx->cfg);
	adopt->req = req;
	adopt->stream = stream;
	adopt->parent_claims = claims;
	claims = NULL;
	atomic_fetch_add(&ctx->pending, 1);
	r = registry_add(ctx->registry, &adopt->child.record, api_adopt_done, adopt);
	if (r < 0) {
		atomic_fetch_sub(&ctx->pending, 1);
		api_child_registry_failed(out, req, r);
		goto fail;
	}
	out->deferred = 1;
	adopt->outcome = *out;
	return;
fail:
	if (adopt != NULL)
		api_adopt_free(adopt);
	json_decref(claims);
}

void api_tokens_latest(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	json_t *claims = NULL;

	if (api_parent_bearer(ctx, req, out, &claims) < 0)
		return;
	if (api_latest_reply(ctx, req, out, 0, json_plain_string(json_object_get(claims, "jti"))) == -ENOENT) {
		api_adopt(ctx, req, out, claims, 0);
		return;
	}
	json_decref(claims);
}

void api_tokens_stream(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	json_t *claims = NULL;

	if (api_parent_bearer(ctx, req, out, &claims) < 0)
		return;
	if (api_stream_open(ctx, req, out, 0, json_plain_string(json_object_get(claims, "jti"))) == -ENOENT) {
		api_adopt(ctx, req, out, claims, 1);
		return;
	}
	json_decref(claims);
}
