/* The http module's connections: max_connections (one count per group of
 * workers, kept exact at the two moments libevent 2.1's evhttp lets us see
 * a connection), the replies not yet written, and the connections' end at
 * a stop, which waits for every one of them. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <event2/buffer.h>
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

struct http_conn;
static struct http_conn *http_conn_find(struct http_worker *worker, const struct evhttp_connection *evcon);
static void http_conn_handed(struct http_conn *c, struct http_inflight *f, struct evhttp_request *req);
static void http_conn_unlink(struct http_inflight *f);

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
	/* The request, and its connection's record while both are there
	 * (cleared by whichever goes first): what a stop looks at. */
	struct evhttp_request *req;
	struct http_conn *conn;
	struct http_inflight *next, **prevp;
};

static void http_inflight_drop(struct http_inflight *f)
{
	http_conn_unlink(f);
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
	struct http_inflight *f = arg;

	/* evhttp keeps a CONNECT's connection open whatever the reply says,
	 * and sends its error without a Content-Length: its end is the close
	 * (http.c refuses every CONNECT), which evhttp sees as the client's. */
	if (evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT && bufferevent_getfd(f->bev) >= 0)
		(void)shutdown(bufferevent_getfd(f->bev), SHUT_RDWR);
	http_inflight_drop(f);
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
	struct http_conn *c = conn != NULL ? http_conn_find(worker, conn) : NULL;
	struct http_inflight *f;

	if (worker->inflight_count >= worker->inflight_sweep_at)
		http_inflight_sweep(worker);
	f = conn != NULL ? calloc(1, sizeof(*f)) : NULL;
	if (f == NULL) {
		/* Served all the same; a stop just cannot wait for its bytes
		 * (its connection never looks idle: it stays until it closes). */
		if (conn != NULL)
			log_limited(LOG_LEVEL_WARN, "\"request not tracked for the stop: out of memory\" worker=%u",
				    worker->index);
		http_conn_handed(c, NULL, req);
		return;
	}
	f->worker = worker;
	f->bev = evhttp_connection_get_bufferevent(conn);
	bufferevent_incref(f->bev);
	f->req = req;
	f->next = worker->inflight;
	if (f->next != NULL)
		f->next->prevp = &f->next;
	f->prevp = &worker->inflight;
	worker->inflight = f;
	worker->inflight_count++;
	evhttp_request_set_on_complete_cb(req, http_inflight_written, f);
	http_conn_handed(c, f, req);
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
	/* What a stop needs to tell a connection between requests (closed
	 * at once) from one with a request under way (see the end of the
	 * file).  evhttp reads one request at a time: it reads the next one
	 * once the reply to this one has been written. */
	struct http_inflight *inflight;      /* the request being answered */
	struct evbuffer_cb_entry *input_cb;  /* http_conn_input; NULL: never idle */
	int received;                        /* bytes came since a request was last handed over */
	int closing;                         /* its reply says Connection: close */
	/* HTTP_REQUEST_SECONDS: armed while no request of the connection is
	 * being answered (see http_conn_deadline).  NULL when memory ran out:
	 * evhttp's idle timeout alone then bounds it. */
	struct event *deadline;
	unsigned char key[HTTP_PEER_KEY];    /* its address (http_conn_peer_key) */
	struct http_peer *peer;              /* its address's count; NULL: not counted */
	int refused;                         /* its address held its share: closed at once */
	int untracked;                       /* a request handed over without its http_inflight */
};

static struct http_conn **http_conn_slot(struct http_worker *worker, const struct evhttp_connection *evcon)
{
	/* Fibonacci hashing of the address; its low bits are alignment. */
	uint64_t h = ((uint64_t)(uintptr_t)evcon >> 4) * 0x9e3779b97f4a7c15ull;

	return &worker->conns.by_evcon[(h >> 32) & worker->conns.by_evcon_mask];
}

/* Whether request bytes not yet handed over are there: in the input
 * buffer, or in the socket not yet read.  Said yes when the socket cannot
 * tell. */
static int http_conn_unread(struct bufferevent *bev)
{
	evutil_socket_t fd = bufferevent_getfd(bev);
	int queued = 0;

	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		return 1;
	if (fd < 0 || ioctl(fd, FIONREAD, &queued) < 0)
		return 1;
	return queued > 0;
}

/* The input buffer's callback: bytes of a request have come. */
static void http_conn_input(struct evbuffer *input, const struct evbuffer_cb_info *info, void *arg)
{
	struct http_conn *c = arg;

	if (info->n_added > 0)
		c->received = 1;
}

/* A connection between requests, nothing of a next one received or in its
 * socket, is shut at once (see http_conn_shut): the shorter the moment
 * between the look and the shutdown, the fewer requests cross it. */
static int http_conn_shut_idle(struct bufferevent *bev)
{
	evutil_socket_t fd = bufferevent_getfd(bev);
	int queued = 0;

	if (fd < 0 || evbuffer_get_length(bufferevent_get_input(bev)) > 0 || ioctl(fd, FIONREAD, &queued) < 0 ||
	    queued > 0)
		return 0;
	(void)shutdown(fd, SHUT_RDWR);
	return 1;
}

/* A connection's end during a stop.  Shut for reading as well before
 * evhttp's FIN: Linux answers a request that arrives afterwards with a
 * reset and never acknowledges its bytes, where after the FIN alone it
 * would acknowledge them and lose them, so that a client can tell a
 * request the server never received (to send again elsewhere) from one
 * it dropped.  (A socket its client reset already fails it: nothing to
 * shut.)  Request bytes unread when the stop itself closes it came in the
 * moment it closed (see the end of the file). */
static void http_conn_shut(struct http_conn *c, struct bufferevent *bev)
{
	evutil_socket_t fd = bufferevent_getfd(bev);

	if (fd >= 0)
		(void)shutdown(fd, SHUT_RDWR);
	if (c->closing && http_conn_unread(bev))
		c->worker->conns.crossed++;
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

	worker->conns.open++;
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

	worker->conns.open--;
	metrics_http_connections_add(-1);
	if (was == limit->max)
		http_conns_wake_all(limit);
}

/* ---- the share of one address ------------------------------------------ *
 *
 * With max_connections alone, one client opening connections and sending
 * nothing, or a byte now and then, holds every slot until evhttp's idle
 * timeout or HTTP_REQUEST_SECONDS frees one, and takes it again at once:
 * the others wait in the backlog for ever.  So one address may hold only
 * its share; a connection past it is closed as soon as it is adopted
 * (the first moment evhttp lets us see whose it is), before any of its
 * bytes are read. */

int http_conn_peer_key(const struct sockaddr *sa, socklen_t len, unsigned char ret_key[HTTP_PEER_KEY])
{
	unsigned char key[HTTP_PEER_KEY] = { 0 };

	if (sa == NULL)
		return -EINVAL;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		key[0] = 4;
		memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(a)) {
			/* A dual-stack socket's IPv4 client is that IPv4
			 * address, whichever socket it came in on. */
			key[0] = 4;
			memcpy(key + 1, a->s6_addr + 12, 4);
		} else {
			/* One subscriber, or one host with privacy addresses,
			 * holds a whole /64 (RFC 7421): keyed by its /128 it
			 * would have 2^64 shares. */
			key[0] = 6;
			memcpy(key + 1, a->s6_addr, 8);
		}
	} else {
		return -EAFNOSUPPORT;
	}
	memcpy(ret_key, key, sizeof(key));
	return 0;
}

/* The key of the connection's peer (http_conn_peer_key). */
static int http_peer_key(struct bufferevent *bev, unsigned char ret_key[HTTP_PEER_KEY])
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);
	evutil_socket_t fd = bufferevent_getfd(bev);

	if (fd < 0)
		return -EBADF;
	/* ENOTCONN: the client is gone already, and evhttp will see it. */
	if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0)
		return -errno;
	return http_conn_peer_key((const struct sockaddr *)&sa, len, ret_key);
}

static const char *http_peer_name(const unsigned char key[HTTP_PEER_KEY], char *buf, size_t size)
{
	size_t n;

	if (inet_ntop(key[0] == 4 ? AF_INET : AF_INET6, key + 1, buf, (socklen_t)size) == NULL) {
		snprintf(buf, size, "-");
		return buf;
	}
	n = strlen(buf);
	if (key[0] == 6 && n + 4 <= size)
		memcpy(buf + n, "/64", 4);
	return buf;
}

static struct http_peer **http_peer_slot(struct http_conn_limit *limit, const unsigned char key[HTTP_PEER_KEY])
{
	/* FNV-1a, from a seed of the process's own: chains an attacker
	 * choosing its addresses cannot line up.  A multiplication carries
	 * bits only upwards, so the FNV state's low bits depend on the seed's
	 * low bits alone: a final mix (MurmurHash3's fmix64) spreads every bit
	 * of it before the bucket is taken. */
	uint64_t h = 1469598103934665603ull ^ limit->peer_seed;

	for (size_t i = 0; i < HTTP_PEER_KEY; i++)
		h = (h ^ key[i]) * 1099511628211ull;
	h ^= limit->peer_seed;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return &limit->peers[h % HTTP_PEER_BUCKETS];
}

/* One connection more for key's address: 0 and *ret_peer, -EUSERS when
 * the address holds its share already, -ENOMEM. */
static int http_peer_take(struct http_conn_limit *limit, const unsigned char key[HTTP_PEER_KEY], struct http_peer **ret_peer)
{
	struct http_peer **slot, *p;
	int r = 0;

	pthread_mutex_lock(&limit->peer_lock);
	slot = http_peer_slot(limit, key);
	for (p = *slot; p != NULL && memcmp(p->key, key, sizeof(p->key)) != 0; p = p->next)
		;
	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL) {
			r = -ENOMEM;
			goto out;
		}
		memcpy(p->key, key, sizeof(p->key));
		p->next = *slot;
		*slot = p;
	}
	if (p->open >= limit->per_address) {
		r = -EUSERS;
		goto out;
	}
	p->open++;
	*ret_peer = p;
out:
	/* An address refused its first connection (per_address 0 is never
	 * taken here) leaves no record behind. */
	if (p != NULL && p->open == 0 && r < 0) {
		for (slot = http_peer_slot(limit, key); *slot != p; slot = &(*slot)->next)
			;
		*slot = p->next;
		free(p);
	}
	pthread_mutex_unlock(&limit->peer_lock);
	return r;
}

static void http_peer_release(struct http_conn_limit *limit, struct http_peer *p)
{
	struct http_peer **slot;

	pthread_mutex_lock(&limit->peer_lock);
	if (--p->open == 0) {
		for (slot = http_peer_slot(limit, p->key); *slot != p; slot = &(*slot)->next)
			;
		*slot = p->next;
		free(p);
	}
	pthread_mutex_unlock(&limit->peer_lock);
}

/* ---- a request's deadline ------------------------------------------------ */

static void http_conn_close_after(struct http_conn *c, struct evhttp_request *req);

static void http_conn_arm(struct http_conn *c)
{
	const struct timeval tv = { HTTP_REQUEST_SECONDS, 0 };

	if (c->deadline != NULL && !c->refused)
		evtimer_add(c->deadline, &tv);
}

/* HTTP_REQUEST_SECONDS have passed since the connection began or its last
 * reply was written, and no request of it has been handed over since:
 * its client is sending one too slowly, or nothing.  Also run at once for
 * a connection its address has no room for (refused). */
static void http_conn_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	char name[INET6_ADDRSTRLEN];

	/* A request being answered (its reply's end arms the deadline
	 * again), or one whose end we cannot see: never cut under it. */
	if (c->untracked)
		return;
	if (c->inflight != NULL) {
		if (c->refused)
			http_conn_close_after(c, c->inflight->req);
		return;
	}
	if (c->refused)
		log_limited(LOG_LEVEL_WARN,
			    "\"connection closed: its address holds its share of max_connections\" address=%s "
			    "per_address=%u worker=%u",
			    http_peer_name(c->key, name, sizeof(name)), c->worker->conns.limit->per_address,
			    c->worker->index);
	else
		log_limited(LOG_LEVEL_INFO,
			    "\"connection closed: no whole request within the deadline\" address=%s seconds=%d worker=%u",
			    c->peer != NULL ? http_peer_name(c->peer->key, name, sizeof(name)) : "-",
			    HTTP_REQUEST_SECONDS, c->worker->index);
	evhttp_connection_free(c->evcon);
}

/* At adoption: the connection's deadline armed, its address counted, or
 * refused for want of room. */
static void http_conn_bound(struct http_conn *c, struct bufferevent *bev)
{
	struct http_conn_limit *limit = c->worker->conns.limit;

	c->deadline = evtimer_new(c->worker->base, http_conn_deadline, c);
	if (limit->per_address != 0 && http_peer_key(bev, c->key) == 0 &&
	    http_peer_take(limit, c->key, &c->peer) == -EUSERS) {
		c->refused = 1;
		/* Freed from its own event, not from here: this may run inside
		 * another connection's handler (http_conn_find). */
		if (c->deadline != NULL)
			event_active(c->deadline, EV_TIMEOUT, 0);
		return;
	}
	http_conn_arm(c);
}

/* The connection's closecb (see above): its end, counted. */
static void http_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct http_conn *c = arg, **p;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

	if (c->closecb != NULL)
		c->closecb(evcon, c->closecb_arg);
	if (c->inflight != NULL)
		c->inflight->conn = NULL;
	if (c->input_cb != NULL)
		evbuffer_remove_cb_entry(bufferevent_get_input(bev), c->input_cb);
	if (c->worker->conns.draining)
		http_conn_shut(c, bev);
	if (c->deadline != NULL)
		event_free(c->deadline);
	if (c->peer != NULL)
		http_peer_release(c->worker->conns.limit, c->peer);
	/* evhttp_connection_free does not turn the bufferevent off, and a
	 * reference held elsewhere (http_inflight) keeps it, and with
	 * BEV_OPT_CLOSE_ON_FREE its socket, past this: nothing is to be read
	 * or written on it any more. */
	bufferevent_disable(bev, EV_READ | EV_WRITE);
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
			/* Before its first read (see above); NULL when memory runs
			 * out, and the stop then waits for its client to close it. */
			c->input_cb = evbuffer_add_cb(bufferevent_get_input(bev), http_conn_input, c);
			c->received = evbuffer_get_length(bufferevent_get_input(bev)) > 0;
			http_conn_bound(c, bev);
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

/* The record of an adopted connection, adopting first: a handler runs
 * after its connection's adoption (event_active comes before the socket's
 * first read), and this makes sure of it.  NULL: not one of ours (not
 * counted, or no server around it). */
static struct http_conn *http_conn_find(struct http_worker *worker, const struct evhttp_connection *evcon)
{
	struct http_conn *c;

	if (worker->conns.by_evcon == NULL)
		return NULL;
	http_conn_adopt_all(worker, 0);
	for (c = *http_conn_slot(worker, evcon); c != NULL && c->evcon != evcon; c = c->next)
		;
	return c;
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

	if (worker != NULL)
		c = http_conn_find(worker, evcon);
	if (c == NULL) {
		/* Not one of ours (not counted, or no server around it). */
		evhttp_connection_set_closecb(evcon, cb, arg);
		return;
	}
	c->closecb = cb;
	c->closecb_arg = arg;
}

void http_conn_limit_init(struct http_conn_limit *limit, unsigned max, unsigned per_address,
			  struct http_worker *workers, unsigned worker_count)
{
	atomic_init(&limit->open, 0);
	limit->max = max;
	limit->per_address = per_address;
	pthread_mutex_init(&limit->peer_lock, NULL);
	/* Not a secret, just not known to clients: no entropy, no seed. */
	if (getrandom(&limit->peer_seed, sizeof(limit->peer_seed), GRND_NONBLOCK) != sizeof(limit->peer_seed))
		limit->peer_seed = (uint64_t)(uintptr_t)limit;
	memset(limit->peers, 0, sizeof(limit->peers));
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

/* ---- the stop ------------------------------------------------------------ *
 *
 * SPEC §8: a stop finishes the requests clients already sent.  evhttp
 * tracks nothing of a request until it is parsed whole, and on a
 * keep-alive connection a client sends the next one whenever it likes, so
 * the stop looks at each connection (http_conns_drain, from each pass of
 * the worker's drain):
 * - a request being answered: its reply says Connection: close, after
 *   which evhttp closes the connection (a reply made before the stop and
 *   still being written cannot: see http_conn_close_after);
 * - unless the bytes of a further request are there already (pipelined):
 *   each is read and answered in turn, and the last one closes;
 * - a connection between requests (nothing received since the last one
 *   was handed over, nothing in its input buffer or its socket) is closed
 *   at once: its client learns it from the FIN before it sends, or from
 *   a reset to a request sent as it closed (http_conn_shut).  One whose
 *   bytes slip in between the look and the shutdown is acknowledged and
 *   lost, as with any server closing an idle keep-alive connection: such
 *   closes are counted (conns.crossed) and logged at the drain's end;
 * - a request partly received is left to finish (evhttp's timeout and the
 *   drain's deadline bound it), then answered like the others.
 * The drain ends when the worker has no connection left. */

/* req's reply ends the connection, unless a further request is there, or
 * the reply is on its way already (in the output buffer: it was made
 * before the stop).  Closing after a reply that does not say so would let
 * its client send the next request as the connection closes; instead, once
 * written, the connection is between requests, or its next request is
 * answered with the header. */
static void http_conn_close_after(struct http_conn *c, struct evhttp_request *req)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
	const char *value;

	if (c->closing || evbuffer_get_length(bufferevent_get_output(bev)) > 0 || http_conn_unread(bev))
		return;
	value = evhttp_find_header(headers, "Connection");
	if (value == NULL || evutil_ascii_strcasecmp(value, "close") != 0) {
		evhttp_remove_header(headers, "Connection");
		evhttp_add_header(headers, "Connection", "close");
	}
	c->closing = 1;
}

/* req was handed to the API on c (either may be NULL: not ours); f tracks
 * it until its reply is written (NULL: out of memory, then c never looks
 * idle). */
static void http_conn_handed(struct http_conn *c, struct http_inflight *f, struct evhttp_request *req)
{
	if (c == NULL)
		return;
	if (c->deadline != NULL)
		evtimer_del(c->deadline);
	if (f == NULL)
		c->untracked = 1;
	if (f != NULL) {
		if (c->inflight != NULL)
			c->inflight->conn = NULL;
		c->inflight = f;
		f->conn = c;
		/* Whatever follows it in the input buffer is the next request. */
		c->received = evbuffer_get_length(bufferevent_get_input(f->bev)) > 0;
	}
	if (c->worker->conns.draining)
		http_conn_close_after(c, req);
}

/* f's reply is written or its connection gone. */
static void http_conn_unlink(struct http_inflight *f)
{
	if (f->conn != NULL && f->conn->inflight == f) {
		f->conn->inflight = NULL;
		/* The next request's time starts now. */
		http_conn_arm(f->conn);
	}
	f->conn = NULL;
}

void http_conns_drain(struct http_worker *worker)
{
	worker->conns.draining = 1;
	if (worker->conns.by_evcon == NULL)
		return;
	http_conn_adopt_all(worker, 0);
	for (size_t i = 0; i <= worker->conns.by_evcon_mask; i++) {
		/* Closing c frees it, and nothing else (no handler's closecb
		 * on a connection between requests). */
		for (struct http_conn *c = worker->conns.by_evcon[i], *next; c != NULL; c = next) {
			next = c->next;
			if (c->inflight != NULL)
				http_conn_close_after(c, c->inflight->req);
			else if (c->input_cb != NULL && !c->received &&
				 http_conn_shut_idle(evhttp_connection_get_bufferevent(c->evcon))) {
				c->closing = 1;
				evhttp_connection_free(c->evcon);
			}
		}
	}
}
