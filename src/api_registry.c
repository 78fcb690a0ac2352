/* The endpoints over the registry (SPEC §4.2, §7): issuing with
 * registration, the token records and lists, and the Token Status List
 * (RFC 7009/7662 are in api_oauth.c).  A caller confined to an org is
 * confined here by passing its org as the registry's scope: a record of
 * another org is then indistinguishable from a missing one. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

#include "api_internal.h"

#define API_LIST_DEFAULT 100
#define API_MAX_QUERY_PARAMS 8

/* ---- records as the API shows them ------------------------------------- */

static int api_set_string(json_t *obj, const char *name, const char *value)
{
	if (value[0] == '\0')
		return 0;
	return json_object_set_new(obj, name, json_string(value));
}

/* The status a client sees: an active or suspended token past its exp is
 * "expired" (SPEC §7: derived, never stored). */
static const char *api_shown_status(const struct registry_record *rec, int64_t now)
{
	if ((rec->status == REGISTRY_ACTIVE || rec->status == REGISTRY_SUSPENDED) && rec->exp <= now)
		return "expired";
	return registry_status_name(rec->status);
}

static json_t *api_record_json(const struct api_ctx *ctx, const struct registry_record *rec, int64_t now)
{
	json_t *obj = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "jti", rec->jti, "type",
				registry_type_name(rec->type), "status", api_shown_status(rec, now), "subject",
				rec->subject, "iat", (json_int_t)rec->iat, "exp", (json_int_t)rec->exp,
				"status_changed_at", (json_int_t)rec->status_at);
	json_t *status = NULL;

	if (obj == NULL)
		return NULL;
	if (api_set_string(obj, "org", rec->org) < 0 || api_set_string(obj, "name", rec->name) < 0 ||
	    api_set_string(obj, "description", rec->description) < 0 ||
	    api_set_string(obj, "client_id", rec->client_id) < 0 || api_set_string(obj, "kid", rec->kid) < 0 ||
	    api_set_string(obj, "reason", rec->reason) < 0 || api_set_string(obj, "parent_jti", rec->parent) < 0 ||
	    api_set_string(obj, "family", rec->family) < 0 ||
	    (rec->status_idx != REGISTRY_NO_INDEX &&
	     (statuslist_claim(ctx->cfg->issuer, rec->status_idx, &status) < 0 ||
	      json_object_set_new(obj, "status_list", json_incref(json_object_get(status, "status_list"))) < 0))) {
		json_decref(status);
		json_decref(obj);
		return NULL;
	}
	json_decref(status);
	return obj;
}

/* The record as it is now within scope, or NULL when there is none (or no
 * memory): the caller answers 404, or after a change an empty object — a
 * record just changed is gone only if compaction dropped it meanwhile. */
static json_t *api_current_record(struct api_ctx *ctx, const char *jti, const char *scope)
{
	struct registry_record rec;

	if (registry_get(ctx->registry, jti, scope, &rec) < 0)
		return NULL;
	return api_record_json(ctx, &rec, api_now());
}

/* ---- issuing ------------------------------------------------------------ */

void api_issue_failed(struct api_outcome *out, struct evhttp_request *req, int r, const char *err)
{
	if (r == -EINVAL)
		api_error(out, req, 400, "invalid_request", err);
	else if (r == -EACCES)
		api_error(out, req, 403, "insufficient_scope", err);
	else if (r == HSM_E_DEVICE || r == HSM_E_STALE)
		api_error(out, req, 503, "hsm_unavailable", "the token cannot sign right now");
	else if (r == -ENOSPC)
		api_error(out, req, 503, "registry_unavailable", "the registry has no status-list index left");
	else
		api_error(out, req, 500, "server_error", "the token could not be issued");
}

/* Issues an access token, registers it and answers once the registration
 * is durable: a token is never handed out that the registry could forget
 * (and so never revoke).  body: the request's, already read, or NULL to
 * read it (JSON) once the caller is authorized; borrowed.  auth: the
 * caller as api_authenticate found it (and charged it), or NULL to
 * authenticate it here. */
static void api_issue_registered(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
				 unsigned flags, const json_t *read_body, const struct api_auth *auth)
{
	struct issue_ctx ictx = { ctx->cfg, ctx->keys, ctx->session, api_now(), ctx->registry };
	struct auth_caller caller;
	struct registry_record rec;
	struct api_pending *pending = NULL;
	json_t *body = NULL, *response = NULL, *answer;
	char err[160] = "";
	int r;

	if (auth != NULL ? api_authorize_as(ctx, req, out, auth, AUTH_ROLE_TOKENS_ISSUE, &caller) < 0
			 : api_authorize(ctx, req, AUTH_ROLE_TOKENS_ISSUE, &caller, out) < 0)
		return;
	if (read_body != NULL)
		body = json_incref((json_t *)read_body);
	else if (api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	r = issue_from_body(&ictx, body, &caller, flags, &response, &rec, err, sizeof(err));
	json_decref(body);
	if (r < 0) {
		api_issue_failed(out, req, r, err);
		return;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", rec.jti);
	answer = response;
	if (flags & ISSUE_NAMED) {
		answer = json_pack("{s:O, s:o}", "token", json_object_get(response, "access_token"), "record",
				   api_record_json(ctx, &rec, ictx.now));
		json_decref(response);
	}
	if (answer == NULL || api_pending_new(ctx, req, &pending) < 0) {
		json_decref(answer);
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	r = registry_add(ctx->registry, &rec, api_pending_done, pending);
	if (r < 0) {
		json_decref(answer);
		api_pending_free(pending);
		api_registry_failed(out, req, r);
		return;
	}
	api_pending_reply(pending, out, 200, answer);
}

void api_token(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct api_auth auth, *authenticated = NULL;
	json_t *body = NULL;

	/* rate_limit before the body is read, or a bad body would be a way
	 * around it: api_route charged a request without an Authorization
	 * header, one with it is charged here — to the caller its bearer
	 * token names, else (another scheme, a token that fails) to the
	 * address.  A grant with such a header counts once, like that. */
	if (evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization") != NULL) {
		if (api_authenticate(ctx, req, out, &auth) < 0)
			return;
		authenticated = &auth;
	}
	/* An OAuth grant (RFC 6749 §4.1.3, §6) may come as a form and needs no
	 * role: the grant is its credential.  Without grant_type the body is
	 * an issuance request, JSON only, for a caller with tokens:issue. */
	if (api_read_body(ctx, req, out, 1, &body) < 0)
		return;
	if (json_is_object(body) && json_object_get(body, "grant_type") != NULL)
		api_grant(ctx, req, out, body);
	else if (api_body_is_form(req))
		api_error(out, req, 400, "invalid_request", "grant_type is required (a form body is an OAuth grant)");
	else
		api_issue_registered(ctx, req, out, 0, body, authenticated);
	json_decref(body);
}

void api_tokens_create(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	api_issue_registered(ctx, req, out, ISSUE_NAMED, NULL, NULL);
}

/* ---- lists -------------------------------------------------------------- */

/* A query string parameter set: each name at most once, only known names. */
struct api_query {
	struct evkeyvalq params;
	int parsed;
};

static int api_query_parse(struct evhttp_request *req, const char *const *known, size_t n_known,
			   struct api_query *q, char *err, size_t errlen)
{
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	struct evkeyval *kv;
	size_t count = 0;

	TAILQ_INIT(&q->params);
	q->parsed = 1;
	if (query == NULL)
		return 0;
	if (evhttp_parse_query_str(query, &q->params) < 0) {
		snprintf(err, errlen, "the query string is not valid");
		return -EINVAL;
	}
	TAILQ_FOREACH(kv, &q->params, next) {
		size_t i;
		for (i = 0; i < n_known && strcmp(kv->key, known[i]) != 0; i++)
			;
		if (i == n_known || ++count > API_MAX_QUERY_PARAMS) {
			snprintf(err, errlen, "unknown query parameter (known: status, subject, type, limit, cursor)");
			return -EINVAL;
		}
		for (struct evkeyval *other = TAILQ_NEXT(kv, next); other; other = TAILQ_NEXT(other, next))
			if (strcmp(other->key, kv->key) == 0) {
				snprintf(err, errlen, "a query parameter is repeated");
				return -EINVAL;
			}
	}
	return 0;
}

static void api_query_free(struct api_query *q)
{
	if (q->parsed)
		evhttp_clear_headers(&q->params);
}

static int api_parse_u64(const char *text, uint64_t *ret)
{
	char *end;
	unsigned long long v;

	if (text[0] < '0' || text[0] > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno != 0 || *end != '\0')
		return -EINVAL;
	*ret = v;
	return 0;
}

/* limit and cursor, shared by every list. */
static int api_query_page(struct api_query *q, struct registry_query *rq, char *err, size_t errlen)
{
	const char *limit = evhttp_find_header(&q->params, "limit");
	const char *cursor = evhttp_find_header(&q->params, "cursor");
	uint64_t v;

	rq->limit = API_LIST_DEFAULT;
	if (limit != NULL) {
		if (api_parse_u64(limit, &v) < 0 || v < 1) {
			snprintf(err, errlen, "limit must be a positive integer (at most %d are returned)",
				 REGISTRY_LIST_MAX);
			return -EINVAL;
		}
		rq->limit = v > REGISTRY_LIST_MAX ? REGISTRY_LIST_MAX : (size_t)v;
	}
	if (cursor != NULL && (api_parse_u64(cursor, &rq->cursor) < 0 || rq->cursor == 0)) {
		snprintf(err, errlen, "cursor must be a next_cursor value of an earlier page");
		return -EINVAL;
	}
	return 0;
}

static int api_query_filters(struct api_query *q, struct registry_query *rq, char *err, size_t errlen)
{
	const char *status = evhttp_find_header(&q->params, "status");
	const char *type = evhttp_find_header(&q->params, "type");
	enum registry_status st;
	enum registry_type ty;

	rq->status = -1;
	rq->type = -1;
	rq->subject = evhttp_find_header(&q->params, "subject");
	if (status != NULL) {
		if (strcmp(status, "expired") == 0)
			rq->status = REGISTRY_EXPIRED_FILTER;
		else if (registry_status_from_name(status, &st) == 0)
			rq->status = (int)st;
		else {
			snprintf(err, errlen, "status must be active, suspended, revoked, deleted or expired");
			return -EINVAL;
		}
	}
	if (type != NULL) {
		if (registry_type_from_name(type, &ty) < 0) {
			snprintf(err, errlen, "type must be access, refresh, id, parent, child or unregistered");
			return -EINVAL;
		}
		rq->type = (int)ty;
	}
	return 0;
}

/* Runs the query and answers {"<member>": [...], "next_cursor": ...}, each
 * record shown by show(). */
static void api_list_reply(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			   const struct registry_query *rq, const char *member,
			   json_t *(*show)(const struct api_ctx *, const struct registry_record *, int64_t))
{
	struct registry_record *records = NULL;
	size_t count = 0;
	uint64_t next = 0;
	char cursor[24];
	json_t *items = json_array(), *answer = NULL;
	int r;

	r = registry_list(ctx->registry, rq, &records, &count, &next);
	if (r < 0 || items == NULL) {
		json_decref(items);
		api_error(out, req, 500, "server_error", "the records could not be listed");
		return;
	}
	for (size_t i = 0; i < count; i++)
		if (json_array_append_new(items, show(ctx, &records[i], rq->now)) < 0)
			break;
	free(records);
	snprintf(cursor, sizeof(cursor), "%" PRIu64, next);
	answer = json_pack("{s:o, s:o}", member, items, "next_cursor", next ? json_string(cursor) : json_null());
	if (answer == NULL) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	api_json(out, req, 200, answer);
}

void api_tokens_list(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	static const char *const known[] = { "status", "subject", "type", "limit", "cursor" };
	struct auth_caller caller;
	struct registry_query rq = { .now = api_now() };
	struct api_query q = { .parsed = 0 };
	char err[128];

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_READ, &caller, out) < 0)
		return;
	rq.org_scope = api_scope(&caller);
	if (api_query_parse(req, known, sizeof(known) / sizeof(known[0]), &q, err, sizeof(err)) < 0 || api_query_page(&q, &rq, err, sizeof(err)) < 0 ||
	    api_query_filters(&q, &rq, err, sizeof(err)) < 0)
		api_error(out, req, 400, "invalid_request", err);
	else
		api_list_reply(ctx, req, out, &rq, "records", api_record_json);
	api_query_free(&q);
}

static json_t *api_revocation_json(const struct api_ctx *ctx, const struct registry_record *rec, int64_t now)
{
	return json_pack("{s:s, s:s, s:I}", "jti", rec->jti, "status",
			 rec->status == REGISTRY_SUSPENDED ? "suspended" : "revoked", "exp", (json_int_t)rec->exp);
}

void api_revocations(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	static const char *const known[] = { "limit", "cursor" };
	struct auth_caller caller;
	struct registry_query rq = { .now = api_now(), .status = -1, .type = -1, .revocations = 1 };
	struct api_query q = { .parsed = 0 };
	char err[128];

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_READ, &caller, out) < 0)
		return;
	rq.org_scope = api_scope(&caller);
	if (api_query_parse(req, known, sizeof(known) / sizeof(known[0]), &q, err, sizeof(err)) < 0 || api_query_page(&q, &rq, err, sizeof(err)) < 0)
		api_error(out, req, 400, "invalid_request", err);
	else
		api_list_reply(ctx, req, out, &rq, "revocations", api_revocation_json);
	api_query_free(&q);
}

/* ---- one record ---------------------------------------------------------- */

static void api_not_found(struct api_outcome *out, struct evhttp_request *req)
{
	/* One answer for "no such jti" and "another org's jti". */
	api_error(out, req, 404, "not_found", "no such token record");
}

void api_tokens_get(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct auth_caller caller;
	json_t *record;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_READ, &caller, out) < 0)
		return;
	snprintf(out->jti, sizeof(out->jti), "%s", segment);
	record = api_current_record(ctx, segment, api_scope(&caller));
	if (record == NULL)
		api_not_found(out, req);
	else
		api_json(out, req, 200, record);
}

/* Sets a record's status and answers with the record once durable. */
static void api_change_status(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			      const struct auth_caller *caller, const char *jti, enum registry_status status,
			      const char *reason)
{
	struct api_pending *pending = NULL;
	json_t *record;
	int r;

	snprintf(out->jti, sizeof(out->jti), "%s", jti);
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	r = registry_set_status(ctx->registry, jti, api_scope(caller), status, api_now(), reason, api_pending_done,
				pending, NULL);
	if (r < 0) {
		api_pending_free(pending);
		if (r == -ENOENT || r == -EINVAL)
			api_not_found(out, req);
		else if (r == -EPERM)
			api_error(out, req, 409, "conflict", "a revoked or deleted token cannot change status");
		else
			api_registry_failed(out, req, r);
		return;
	}
	record = api_current_record(ctx, jti, api_scope(caller));
	api_pending_reply(pending, out, 200, record ? record : json_object());
}

void api_tokens_patch(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		      const char *segment)
{
	struct auth_caller caller;
	enum registry_status status;
	const char *name = NULL, *reason = NULL;
	json_t *body = NULL;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_REVOKE, &caller, out) < 0 ||
	    api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	if (!json_is_object(body) || json_object_size(body) > 2 ||
	    json_optional_string(body, "status", 16, &name) < 0 || name == NULL ||
	    json_optional_string(body, "reason", REGISTRY_REASON_MAX, &reason) < 0 ||
	    json_object_size(body) != 1u + (reason != NULL) || registry_status_from_name(name, &status) < 0 ||
	    status == REGISTRY_DELETED)
		api_error(out, req, 400, "invalid_request",
			  "expected {\"status\": \"active\"|\"suspended\"|\"revoked\", \"reason\"?: string}");
	else
		api_change_status(ctx, req, out, &caller, segment, status, reason);
	json_decref(body);
}

void api_tokens_delete(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment)
{
	struct auth_caller caller;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_REVOKE, &caller, out) < 0)
		return;
	api_change_status(ctx, req, out, &caller, segment, REGISTRY_DELETED, NULL);
}

void api_user_tokens_delete(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			    const char *segment)
{
	struct auth_caller caller;
	struct api_pending *pending = NULL;
	size_t count = 0;
	int r;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_REVOKE, &caller, out) < 0)
		return;
	if (strlen(segment) > REGISTRY_SUBJECT_MAX) {
		api_json(out, req, 200, json_pack("{s:i}", "revoked", 0));
		return;
	}
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	r = registry_revoke_subject(ctx->registry, segment, api_scope(&caller), api_now(), api_pending_done, pending,
				    &count);
	if (r < 0) {
		api_pending_free(pending);
		api_registry_failed(out, req, r);
		return;
	}
	api_pending_reply(pending, out, 200, json_pack("{s:I}", "revoked", (json_int_t)count));
}

/* ---- Token Status List ------------------------------------------------- */

static void api_send_statuslist(struct api_outcome *out, struct evhttp_request *req, const char *jwt)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	char cache[48];

	if (body == NULL || evbuffer_add(body, jwt, strlen(jwt)) < 0) {
		evbuffer_free(body);
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	snprintf(cache, sizeof(cache), "public, max-age=%d", STATUSLIST_TTL);
	evhttp_add_header(headers, "Content-Type", "application/statuslist+jwt");
	evhttp_add_header(headers, "Cache-Control", cache);
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	out->status = 200;
	http_send(req, 200, body);
	evbuffer_free(body);
}

/* Signs list at generation (the cache missed). */
static int api_sign_statuslist(struct api_ctx *ctx, uint32_t list, const uint8_t *bits, uint64_t generation,
			       char **ret_jwt)
{
	struct issue_ctx ictx = { ctx->cfg, ctx->keys, ctx->session, api_now(), NULL };
	char uri[STATUSLIST_URI_MAX], *lst = NULL, *jwt = NULL;
	json_t *claims = NULL;
	int r;

	r = statuslist_uri(ctx->cfg->issuer, list, uri, sizeof(uri));
	if (r == 0)
		r = statuslist_encode(bits, REGISTRY_STATUSLIST_SIZE / 4, &lst);
	if (r == 0)
		r = statuslist_claims(uri, lst, ictx.now, &claims);
	if (r == 0)
		r = issue_sign(&ictx, ctx->cfg->algorithms[0], "statuslist+jwt", claims, &jwt);
	if (r == 0 && statuslist_cache_put(ctx->statuslists, list, generation, ictx.now, jwt) < 0)
		log_warn("\"status list not cached\" list=%" PRIu32, list);
	if (r == 0)
		*ret_jwt = jwt;
	free(lst);
	json_decref(claims);
	return r;
}

void api_statuslist(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	uint8_t *bits = NULL;
	uint64_t generation = 0;
	uint32_t list;
	char *jwt = NULL;
	int r;

	if (statuslist_parse_number(segment, strlen(segment), &list) < 0) {
		api_error(out, req, 404, "not_found", "no such status list");
		return;
	}
	bits = malloc(REGISTRY_STATUSLIST_SIZE / 4);
	if (bits == NULL) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	r = registry_statuslist(ctx->registry, list, bits, &generation);
	if (r == -ENOENT)
		api_error(out, req, 404, "not_found", "no such status list");
	else if (r < 0)
		api_error(out, req, 500, "server_error", "the status list could not be read");
	else if (statuslist_cache_get(ctx->statuslists, list, generation, api_now(), &jwt) == 0 ||
		 (r = api_sign_statuslist(ctx, list, bits, generation, &jwt)) == 0)
		api_send_statuslist(out, req, jwt);
	else if (r == HSM_E_DEVICE || r == HSM_E_STALE)
		api_error(out, req, 503, "hsm_unavailable", "the token cannot sign right now");
	else
		api_error(out, req, 500, "server_error", "the status list could not be signed");
	free(jwt);
	free(bits);
}
