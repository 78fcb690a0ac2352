/* What the api_*.c files share: replies, caller checks, deferred replies.
 * Private to the api module (include/hsmjwt/api.h is its contract). */
#ifndef HSMJWT_API_INTERNAL_H
#define HSMJWT_API_INTERNAL_H

#include <jansson.h>

#include "hsmjwt/api.h"

/* Longest path segment a route captures ({jti}, {subject}, {n}), encoded. */
#define API_MAX_SEGMENT 1024

int64_t api_now(void);
void api_json(struct api_outcome *out, struct evhttp_request *req, int code, json_t *body);
void api_error(struct api_outcome *out, struct evhttp_request *req, int code, const char *error,
	       const char *description);
/* Reads the JSON body (oauth: or a form); replies itself on failure. */
int api_read_body(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, int oauth,
		  json_t **ret_body);
/* Authenticates the caller (a revoked or suspended caller token fails) and
 * checks one role; replies 401/403 itself, and 429 when rate_limit refuses
 * the caller (or, for a credential that fails, the client's address).
 * api_authenticate then api_authorize_as. */
int api_authorize(struct api_ctx *ctx, struct evhttp_request *req, unsigned role, struct auth_caller *ret_caller,
		  struct api_outcome *out);
/* What api_authenticate learned of the request's credential. */
struct api_auth {
	/* 0: the bearer token verified and the registry holds it active or
	 * does not know it; -EKEYREVOKED: it verified, but its record is
	 * revoked or suspended (status); else auth_bearer's -EACCES (err) or
	 * -EAGAIN. */
	int result;
	int token_sent;               /* a bearer token came at all (RFC 6750 §3.1) */
	enum registry_status status;
	struct auth_caller caller;    /* result 0 or -EKEYREVOKED */
	char err[128];
};
/* The first half: verifies the Authorization header and the caller's
 * record, and charges rate_limit — the caller when result is 0, else the
 * client's address (api_rate_unverified).  Replies only a 429 (-EBUSY);
 * 0 and *ret_auth otherwise, whatever the verdict. */
int api_authenticate(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		     struct api_auth *ret_auth);
/* The second half: replies 503/401/403 for a credential auth refuses or
 * whose roles lack role (negative), else 0 and *ret_caller. */
int api_authorize_as(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		     const struct api_auth *auth, unsigned role, struct auth_caller *ret_caller);
/* rate_limit (SPEC §3), charged once per request: api_route charges the
 * client's address before the handler runs, except for a request with an
 * Authorization header to a handler that verifies bearer tokens, which
 * charges it itself — to the caller once its token verified and the
 * registry did not refuse it (api_rate_caller), else to the address
 * (api_rate_unverified, which
 * charges only a request api_route left to the handler).  0, or -EBUSY
 * with the 429 sent. */
int api_rate_caller(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *org,
		    const char *sub);
int api_rate_unverified(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out);
/* Charges the client's address (api_route, for requests that carry no
 * bearer token): 0, or -EBUSY with the 429 sent. */
int api_rate_address(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out);
/* Before a bearer token is verified (for an HS256 token a C_Verify in the
 * token): an address already over its limit is refused there, whoever the
 * token would name, without a token taken (ratelimit_peek).  0, or -EBUSY
 * with the 429 sent. */
int api_rate_peek_address(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out);
/* The keys: "a:" and the client's address — an IPv6 client by its /64,
 * a v4-mapped one by its IPv4 address, anything else as it is — or "s:",
 * the caller's org, a NUL and its sub (neither holds a NUL: no two callers
 * share a key, and no caller an address's).  0 and the key's length, or
 * -ENOBUFS when buf (n bytes) is too small. */
int api_rate_key_address(const char *peer, char *buf, size_t n, size_t *ret_len);
int api_rate_key_caller(const char *org, const char *sub, char *buf, size_t n, size_t *ret_len);
/* The org a caller's registry calls are confined to: NULL for a caller
 * without org (an unconfined admin sees every org). */
const char *api_scope(const struct auth_caller *caller);
/* Maps an issue_*() failure to its reply: 400/403 with err, 503 when the
 * token cannot sign or no status-list index is left, else 500. */
void api_issue_failed(struct api_outcome *out, struct evhttp_request *req, int r, const char *err);
/* Maps a registry write failure to its reply (503 when it has failed). */
void api_registry_failed(struct api_outcome *out, struct evhttp_request *req, int r);

/* A reply held back until the registry has made a change durable.
 * api_pending_new before the registry call (whose done is api_pending_done
 * with the pending as arg); on the call's success, api_pending_reply hands
 * over the answer and marks the request deferred; on its failure,
 * api_pending_free.  The answer goes out on the worker's loop, after the
 * handler has returned. */
struct api_pending;
int api_pending_new(struct api_ctx *ctx, struct evhttp_request *req, struct api_pending **ret_pending);
void api_pending_done(void *arg, int result);
void api_pending_reply(struct api_pending *pending, struct api_outcome *out, int code, json_t *body);
void api_pending_free(struct api_pending *pending);
/* A change that must not be repeated (a grant: the presented token or code
 * is consumed in the index before the write): if it cannot be made durable,
 * its 503 carries this description (static) and no Retry-After, because
 * the change may still be written once the disk takes writes again. */
void api_pending_no_retry(struct api_pending *pending, const char *description);
/* For an answer another thread composes (the keyring's rotations): mark
 * the request deferred, then that thread calls api_pending_answer exactly
 * once — with body (stolen), or with error and description (static strings)
 * for an error reply. */
void api_pending_defer(struct api_pending *pending, struct api_outcome *out);
void api_pending_answer(struct api_pending *pending, int code, json_t *body, const char *error,
			const char *description);

/* Registry endpoints (api_registry.c; api_revoke, api_introspect and
 * api_registry_verdict in api_oauth.c).  segment: the route's captured,
 * percent-decoded path segment, or NULL. */
void api_token(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_tokens_create(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment);
void api_tokens_list(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_tokens_get(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_tokens_patch(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		      const char *segment);
void api_tokens_delete(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment);
void api_user_tokens_delete(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			    const char *segment);
void api_revocations(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_revoke(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_introspect(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_statuslist(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
/* OAuth flows (api_grants.c): the token endpoint's grants, to which
 * api_token hands a body with grant_type (form or JSON; api_body_is_form
 * tells which), POST /codes, and the discovery documents (both paths). */
void api_grant(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const json_t *body);
int api_body_is_form(struct evhttp_request *req);
void api_codes(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_discovery(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
/* Parent/child pairs (api_pairs.c, SPEC §4.2, §5.5): POST /token-pairs,
 * POST /renew, GET /tokens/latest and the event stream GET /tokens/stream. */
void api_token_pairs(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_renew(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_tokens_latest(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment);
void api_tokens_stream(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		       const char *segment);
/* GET /metrics (api_metrics.c): Prometheus text, gauges read at the scrape. */
void api_metrics(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
/* Key administration (api_keys.c). */
void api_admin_keys(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment);
void api_admin_rotate(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		      const char *segment);
/* POST /authorize, for proxies (api_authorize.c): every method, on
 * /authorize and every path under it.  api_authorize_claims is its pure
 * part, on claims jwt_verify has accepted: 0 when they may pass as x-auth-*
 * headers (token_type access or child; sub, and org, scope, jti when
 * present, strings a header carries unchanged), else -EACCES and the
 * reason (static text). */
void api_authorize_proxy(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
			 const char *segment);
int api_authorize_claims(const json_t *claims, const char **ret_reason);
/* What verification adds from the registry: 0 (status "active" or
 * "unregistered" in *ret_status) or a jws_error code (JWS_E_REVOKED...). */
int api_registry_verdict(struct api_ctx *ctx, const json_t *claims, const char **ret_status);

#endif
