/* api: the endpoints of SPEC §4.2 — routing, caller checks, responses.
 *
 * A request that changes the registry is answered only once the change is
 * durable (SPEC §7): its handler queues the change and returns with the
 * outcome marked deferred; the registry's flusher thread reports back, and
 * the reply goes out from the worker's own event loop (api_deferred). */
#ifndef HSMJWT_API_H
#define HSMJWT_API_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdatomic.h>
#include <time.h>

#include "hsmjwt/auth.h"
#include "hsmjwt/codes.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/keyring.h"
#include "hsmjwt/keys.h"
#include "hsmjwt/ratelimit.h"
#include "hsmjwt/registry.h"
#include "hsmjwt/renew.h"
#include "hsmjwt/statuslist.h"

/* What one worker thread serves with. */
struct api_ctx {
	/* The config version this worker serves with: api_dispatch adopts the
	 * newest from live (config.h) before each request.  live NULL: cfg is
	 * fixed (unit tests). */
	const struct config *cfg;
	struct config_live *live;
	struct ratelimit *ratelimit;            /* shared by the workers; NULL: no limit */
	struct hsm *hsm;
	struct keyring *keyring;
	/* The key set of the request being served: api_dispatch holds a
	 * reference for as long as the handler runs. */
	const struct keys *keys;
	struct keys_view view;                  /* keys and session, for verification */
	struct hsm_session *session;
	struct registry *registry;
	struct statuslist_cache *statuslists;   /* shared by the workers */
	struct codes *codes;                    /* authorization codes, shared by the workers */
	struct event_base *base;                /* the worker's loop */
	/* Set by the server when it stops (http_quiesce): from then on GET
	 * /health answers 503 {"status": "stopping", ...}, so that a load
	 * balancer sends no more.  NULL: never (unit tests). */
	atomic_int *stopping;
	unsigned worker;
	/* The admin_listen thread's context: only GET/HEAD /metrics and
	 * /health, no token session (it never signs).  The workers' contexts
	 * (0) answer those two 404 while admin_listen is set. */
	int admin;
	atomic_uint pending;                    /* deferred replies not yet sent */
	/* Auto-renewal (renew.h), shared by the workers; and this worker's
	 * open Server-Sent Events streams (api_pairs.c), touched on its loop
	 * only.  Each stream, and each event on its way to one, counts in
	 * pending: a stop waits for them to end. */
	struct renew *renew;
	struct api_stream *streams;
	int quiescing;                          /* api_quiesce ran: no new streams */
};

/* What a request did, for its log line. */
struct api_outcome {
	int status;
	int deferred;                 /* the reply goes out later (see above) */
	unsigned worker;
	const char *route;            /* the route matched (its pattern, static), or NULL */
	struct timespec start;        /* CLOCK_MONOTONIC, when it was read */
	char sub[AUTH_SUB_MAX + 1];   /* the caller, when authenticated */
	char jti[AUTH_JTI_MAX + 1];   /* the token issued or acted on */
};

/* Answers req exactly once: now, or (outcome->deferred) when the registry
 * has made the change durable. */
void api_dispatch(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *outcome);

/* On the worker's loop, when the server stops (http_quiesce, after
 * renew_stop): ends every open stream of this worker with an `event: end`
 * (reason "shutdown") and refuses new ones.  Idempotent. */
void api_quiesce(struct api_ctx *ctx);

#endif
