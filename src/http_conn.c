/* The http module's connections: max_connections (one count per group of
 * workers, kept exact at the two moments libevent 2.1's evhttp lets us see
 * a connection) and the replies not yet written, which a stop waits for. */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

#include "http_internal.h"

/* A worker's unwritten replies are swept for vanished connections after
 * a connection closes, and when their number doubles, at least at this
 * many. */
#define HTTP_INFLIGHT_SWEEP_MIN 64

/* ---- replies not yet written ------------------------------------------- */

/* One request between http_handle and the last byte of its reply leaving
 * the connection's output buffer — what a stop must wait for (SPEC §8:
 * finish in-flight requests), and what api_ctx.pending alone cannot tell:
 * it drops to 0 when the reply is handed to evhttp, whose bytes are
 * written on a later turn of the loop. */
struct http_inflight {
	struct http_worker *worker;
	/* The connection's bufferevent, with a reference of ours so that it
	 * stays readable after evhttp has freed the connection: its callback
	 * argument, the connection while there is one, is NULL from then on. */
	struct bufferevent *bev;
	struct http_inflight *next, **prevp;
};

static void http_inflight_drop(struct http_inflight *f)
{
	*f->prevp = f->next;
	if (f->next != NULL)
		f->next->prevp = f->prevp;
	f->worker->inflight_count--;
	bufferevent_decref(f->bev);
	free(f);
}

/* on_complete: evhttp_send_done calls it once the output buffer holding
 * the reply has been written out whole, before it frees the request. */
static void http_inflight_written(struct evhttp_request *req, void *arg)
{
	http_inflight_drop(arg);
}

/* Drops the requests whose connection evhttp has freed: it failed before
 * the reply was written (the client left; a deferred reply to it is then
 * dropped by evhttp and counts in api_ctx.pending until then), or a stream
 * took the request over (api_pairs.c sets its own on_complete) and ended
 * with its connection. */
void http_inflight_sweep(struct http_worker *worker)
{
	for (struct http_inflight *f = worker->inflight, *next; f != NULL; f = next) {
		void *conn = NULL;
		next = f->next;
		bufferevent_getcb(f->bev, NULL, NULL, NULL, &conn);
		if (conn == NULL)
			http_inflight_drop(f);
	}
	worker->inflight_sweep_at = worker->inflight_count * 2 > HTTP_INFLIGHT_SWEEP_MIN ?
		worker->inflight_count * 2 : HTTP_INFLIGHT_SWEEP_MIN;
}

static void http_inflight_swept(evutil_socket_t fd, short what, void *arg)
{
	http_inflight_sweep(arg);
}

int http_inflight_init(struct http_worker *worker)
{
	worker->inflight_sweep = event_new(worker->base, -1, 0, http_inflight_swept, worker);
	return worker->inflight_sweep == NULL ? -ENOMEM : 0;
}

void http_inflight_track(struct http_worker *worker, struct evhttp_request *req)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	struct http_inflight *f;

	if (worker->inflight_count >= worker->inflight_sweep_at)
		http_inflight_sweep(worker);
	f = conn != NULL ? calloc(1, sizeof(*f)) : NULL;
	if (f == NULL) {
		/* Served all the same; a stop just cannot wait for its bytes. */
		if (conn != NULL)
			log_limited(LOG_LEVEL_WARN, "\"request not tracked for the stop: out of memory\" worker=%u",
				    worker->index);
		return;
	}
	f->worker = worker;
	f->bev = evhttp_connection_get_bufferevent(conn);
	bufferevent_incref(f->bev);
	f->next = worker->inflight;
	if (f->next != NULL)
		f->next->prevp = &f->next;
	f->prevp = &worker->inflight;
	worker->inflight = f;
	worker->inflight_count++;
	evhttp_request_set_on_complete_cb(req, http_inflight_written, f);
}

void http_inflight_clear(struct http_worker *worker)
{
	while (worker->inflight != NULL)
		http_inflight_drop(worker->inflight);
	/* With none left, no connection's end activates it (http_conn_closed). */
	if (worker->inflight_sweep != NULL)
		event_free(worker->inflight_sweep);
	worker->inflight_sweep = NULL;
}

/* ---- max_connections ----------------------------------------------------- *
 *
 * libevent 2.1 (Debian 12 ships 2.1.12) has neither evhttp_set_newreqcb
 * nor evhttp_set_max_connections (2.2), so a connection is counted at the
 * two moments 2.1's evhttp lets us see, each of which happens exactly once
 * per connection.  Read in libevent 2.1's http.c and bufferevent.c (those
 * of 2.1.8: 2.1.12's own source was not at hand, so what follows is also
 * measured on Debian's 2.1.12, by integration.limits):
 *
 * +1  the bevcb (http_accepted).  evhttp_get_request_connection calls it
 *     once per accepted socket, after name_from_addr (whose failure skips
 *     it) and before the connection is made.  We make the bufferevent
 *     ourselves, take a reference on it, set its callback argument to our
 *     record and queue the record for http_conn_adopt, which the loop runs
 *     after this callback (event_active: before any read event of the new
 *     socket).
 * adopt  the bufferevent's callback argument tells what evhttp did with it:
 *     - still our record: evhttp failed before bufferevent_setcb (out of
 *       memory in evhttp_connection_base_bufferevent_new) and closed the
 *       socket itself; the bufferevent is ours alone — freed, -1;
 *     - NULL: evhttp made the connection and already freed it
 *       (evhttp_connection_free calls bufferevent_free, which clears the
 *       callbacks; our reference kept the bufferevent readable) — -1;
 *     - else it is the evhttp_connection (evhttp sets itself as the
 *       argument and never anything else on a server connection): we
 *       set its closecb, which counts -1.
 *     Then our reference goes.
 * -1  the closecb.  evhttp_connection_free calls it first thing when the
 *     connection's fd is set and evhttp_connected() holds: a server
 *     connection has its fd from the start and is in a reading or writing
 *     state until freed (only evhttp_connection_reset_, which client
 *     connections alone reach, sets EVCON_DISCONNECTED), and every server
 *     connection ends in evhttp_connection_free — a reply with
 *     "Connection: close", a client gone or timed out, a bad request after
 *     its 400, evhttp_free at the stop.  There is one closecb per
 *     connection: a handler that wants one too (api_pairs.c's streams)
 *     goes through http_connection_set_closecb, which we chain.
 *
 * BEV_OPT_CLOSE_ON_FREE: evhttp's own bufferevent is made without it and
 * evhttp closes the socket when it frees the connection; with a reference
 * of ours still held the bufferevent's events would stay on a closed
 * descriptor whose number the next accept may reuse.  With the option the
 * socket is closed by the bufferevent's finalisation, after its events
 * are deleted, whoever lets go last.
 *
 * The count is one for all the workers (struct http_conn_limit): with
 * SO_REUSEPORT the kernel hands a new connection to any worker's socket,
 * however many the worker holds, so a worker pausing at a share of its own
 * would hold connections back while the others have room.  The accept that
 * takes the count to max_connections turns its worker's listeners off at
 * once (libevent 2.1.12's listener loop stops accepting at once when its
 * callback disables it) and wakes the other workers to turn theirs off;
 * the kernel's backlogs hold the next connections; the close that takes
 * the count back under the limit wakes every worker to turn them on
 * again. */

struct http_conn {
	struct http_worker *worker;
	struct bufferevent *bev;             /* until adopted */
	struct evhttp_connection *evcon;     /* once adopted */
	/* A handler's callback for the connection's end (http.h). */
	void (*closecb)(struct evhttp_connection *, void *);
	void *closecb_arg;
	struct http_conn *next;              /* adopting queue, then by_evcon chain */
};

static struct http_conn **http_conn_slot(struct http_worker *worker, const struct evhttp_connection *evcon)
{
	/* Fibonacci hashing of the address; its low bits are alignment. */
	uint64_t h = ((uint64_t)(uintptr_t)evcon >> 4) * 0x9e3779b97f4a7c15ull;

	return &worker->conns.by_evcon[(h >> 32) & worker->conns.by_evcon_mask];
}

static void http_conns_pause(struct http_worker *worker)
{
	for (size_t i = 0; i < worker->listener_count; i++)
		if (worker->listeners[i].lev != NULL)
			evconnlistener_disable(worker->listeners[i].lev);
	worker->conns.paused = 1;
}

static void http_conns_resume(struct http_worker *worker)
{
	worker->conns.paused = 0;
	for (size_t i = 0; i < worker->listener_count; i++)
		/* One waiting out an accept failure comes back on its timer. */
		if (worker->listeners[i].lev != NULL && !evtimer_pending(worker->listeners[i].retry, NULL))
			evconnlistener_enable(worker->listeners[i].lev);
}

/* The count crossed max (either way) after it was last looked at here:
 * the listeners follow what it says now.  Every crossing activates every
 * worker of the group after the count changed, and each run reads the
 * count anew, so the last run of each worker follows the last crossing. */
static void http_conns_wake(evutil_socket_t fd, short what, void *arg)
{
	struct http_worker *worker = arg;
	struct http_conn_limit *limit = worker->conns.limit;

	if (atomic_load(&limit->open) >= limit->max) {
		if (!worker->conns.paused)
			http_conns_pause(worker);
	} else if (worker->conns.paused && !worker->conns.final) {
		http_conns_resume(worker);
	}
}

/* Activates every worker's http_conns_wake (libevent threading is on:
 * event_active locks the other loop's base and wakes it). */
static void http_conns_wake_all(struct http_conn_limit *limit)
{
	if (atomic_load(&limit->stopping))
		return;
	for (unsigned i = 0; i < limit->worker_count; i++)
		if (limit->workers[i].conns.wake != NULL)
			event_active(limit->workers[i].conns.wake, EV_READ, 0);
}

/* A connection more: +1, and at max every listener of the group off. */
static void http_conn_counted(struct http_worker *worker)
{
	struct http_conn_limit *limit = worker->conns.limit;
	unsigned open = atomic_fetch_add(&limit->open, 1) + 1;

	metrics_http_connections_add(1);
	if (open < limit->max)
		return;
	/* Its own at once: libevent's accept loop stops as soon as the
	 * listener is off.  Another worker may still accept one connection
	 * before its wake runs, and pauses then (at most workers - 1 over). */
	if (!worker->conns.paused)
		http_conns_pause(worker);
	if (open == limit->max) {
		log_limited(LOG_LEVEL_WARN,
			    "\"max_connections reached: not accepting until a connection closes\" worker=%u "
			    "connections=%u max_connections=%u",
			    worker->index, open, limit->max);
		http_conns_wake_all(limit);
	}
}

/* A connection less: -1, and the close that takes the count back under
 * max wakes every worker of the group to accept again. */
static void http_conn_gone(struct http_worker *worker)
{
	struct http_conn_limit *limit = worker->conns.limit;
	unsigned was = atomic_fetch_sub(&limit->open, 1);

	metrics_http_connections_add(-1);
	if (was == limit->max)
		http_conns_wake_all(limit);
}

/* The connection's closecb (see above): its end, counted. */
static void http_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct http_conn *c = arg, **p;

	if (c->closecb != NULL)
		c->closecb(evcon, c->closecb_arg);
	/* evhttp_connection_free does not turn the bufferevent off, and a
	 * reference held elsewhere (http_inflight) keeps it, and with
	 * BEV_OPT_CLOSE_ON_FREE its socket, past this: nothing is to be read
	 * or written on it any more. */
	bufferevent_disable(evhttp_connection_get_bufferevent(evcon), EV_READ | EV_WRITE);
	/* A reply that was never written whole (the client reset) holds that
	 * reference, and with it the socket, until a sweep finds the
	 * connection gone: on a quiet worker that sweep would not come before
	 * 64 of them piled up.  Once evhttp_connection_free has run (the loop's
	 * next turn), this connection's records are found gone. */
	if (c->worker->inflight != NULL && c->worker->inflight_sweep != NULL)
		event_active(c->worker->inflight_sweep, EV_TIMEOUT, 0);
	for (p = http_conn_slot(c->worker, evcon); *p != c; p = &(*p)->next)
		;
	*p = c->next;
	http_conn_gone(c->worker);
	free(c);
}

/* Looks up what evhttp made of each bufferevent handed out since the last
 * time (see above).  final: evhttp_free has run, no closecb is set. */
static void http_conn_adopt_all(struct http_worker *worker, int final)
{
	struct http_conn *c;

	while ((c = worker->conns.adopting) != NULL) {
		void *arg = NULL;
		worker->conns.adopting = c->next;
		bufferevent_getcb(c->bev, NULL, NULL, NULL, &arg);
		if (arg == c) {
			/* Never evhttp's: both references are ours. */
			bufferevent_free(c->bev);
			bufferevent_decref(c->bev);
		} else if (arg == NULL || final) {
			bufferevent_decref(c->bev);
		} else {
			struct bufferevent *bev = c->bev;
			struct http_conn **slot;
			c->evcon = arg;
			c->bev = NULL;
			slot = http_conn_slot(worker, c->evcon);
			c->next = *slot;
			*slot = c;
			evhttp_connection_set_closecb(c->evcon, http_conn_closed, c);
			/* evhttp's reference alone keeps it now. */
			bufferevent_decref(bev);
			continue;
		}
		http_conn_gone(worker);
		free(c);
	}
}

static void http_conn_adopt(evutil_socket_t fd, short what, void *arg)
{
	http_conn_adopt_all(arg, 0);
}

/* The bevcb's part: +1 (see above).  NULL (evhttp then makes its own, the
 * connection served uncounted) only when memory runs out here. */
struct bufferevent *http_conn_accept(struct http_worker *worker)
{
	struct http_conn *c = calloc(1, sizeof(*c));
	struct bufferevent *bev = c != NULL ? bufferevent_socket_new(worker->base, -1, BEV_OPT_CLOSE_ON_FREE) : NULL;

	if (bev == NULL) {
		free(c);
		log_limited(LOG_LEVEL_WARN, "\"connection not counted for max_connections: out of memory\" worker=%u",
			    worker->index);
		return NULL;
	}
	c->worker = worker;
	c->bev = bev;
	bufferevent_setcb(bev, NULL, NULL, NULL, c);
	bufferevent_incref(bev);
	c->next = worker->conns.adopting;
	worker->conns.adopting = c;
	event_active(worker->conns.adopt, EV_TIMEOUT, 0);
	http_conn_counted(worker);
	return bev;
}

void http_connection_set_closecb(struct evhttp_connection *evcon, void (*cb)(struct evhttp_connection *, void *),
				 void *arg)
{
	struct http_worker *worker = http_worker_self;
	struct http_conn *c = NULL;

	if (worker != NULL && worker->conns.by_evcon != NULL) {
		/* A handler runs after its connection's adoption (event_active
		 * comes before the socket's first read); adopting here makes
		 * sure of it. */
		http_conn_adopt_all(worker, 0);
		for (c = *http_conn_slot(worker, evcon); c != NULL && c->evcon != evcon; c = c->next)
			;
	}
	if (c == NULL) {
		/* Not one of ours (not counted, or no server around it). */
		evhttp_connection_set_closecb(evcon, cb, arg);
		return;
	}
	c->closecb = cb;
	c->closecb_arg = arg;
}

void http_conn_limit_init(struct http_conn_limit *limit, unsigned max, struct http_worker *workers,
				 unsigned worker_count)
{
	atomic_init(&limit->open, 0);
	limit->max = max;
	limit->workers = workers;
	limit->worker_count = worker_count;
	atomic_init(&limit->stopping, 0);
}

/* The worker's side of its limit, before its listeners open. */
int http_conns_init(struct http_worker *worker, struct http_conn_limit *limit)
{
	/* About a chain per connection while they spread evenly. */
	unsigned share = (limit->max + limit->worker_count - 1) / limit->worker_count;
	size_t heads = 16;

	worker->conns.limit = limit;
	while (heads < share)
		heads *= 2;
	worker->conns.by_evcon = calloc(heads, sizeof(*worker->conns.by_evcon));
	worker->conns.by_evcon_mask = heads - 1;
	worker->conns.adopt = event_new(worker->base, -1, 0, http_conn_adopt, worker);
	worker->conns.wake = event_new(worker->base, -1, 0, http_conns_wake, worker);
	if (worker->conns.by_evcon == NULL || worker->conns.adopt == NULL || worker->conns.wake == NULL)
		return -ENOMEM;
	return 0;
}

/* After evhttp_free, whose closecbs counted the adopted connections: the
 * ones handed out since the loop last ran. */
void http_conns_free(struct http_worker *worker)
{
	worker->conns.final = 1;
	if (worker->conns.adopt != NULL)
		http_conn_adopt_all(worker, 1);
	if (worker->conns.adopt != NULL)
		event_free(worker->conns.adopt);
	if (worker->conns.wake != NULL)
		event_free(worker->conns.wake);
	worker->conns.wake = NULL;
	free(worker->conns.by_evcon);
}
