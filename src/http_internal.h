/* What the http*.c files share: the server, its workers and listeners.
 * Private to the http module (include/hsmjwt/http.h is its contract).
 *   http.c         workers, the admin_listen thread, the stop, start/stop
 *   http_listen.c  listen addresses (probe, claim, sockets), socket
 *                  activation, accepting and its back-off, closing at the stop
 *   http_conn.c    max_connections (the connection count), the replies
 *                  not yet written, the connections' end at the stop
 *   http_reply.c   replies, request bodies, the request's log line */
#ifndef HSMJWT_HTTP_INTERNAL_H
#define HSMJWT_HTTP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "hsmjwt/api.h"
#include "hsmjwt/config.h"
#include "hsmjwt/http.h"

/* http_listener.index of the admin thread's one listener (admin_listen). */
#define HTTP_ADMIN_LISTENER ((size_t)CONFIG_MAX_LISTEN)
/* The admin_listen thread's connections, apart from max_connections: a
 * scraper and a health check or two, never a crowd of clients. */
#define HTTP_ADMIN_MAX_CONNECTIONS 64

/* One worker's listening socket for one listen address. */
struct http_listener {
	size_t index;                 /* into cfg->listen, or the passed sockets (http_listen_addr) */
	evutil_socket_t fd;
	struct evhttp_bound_socket *bound;
	struct evconnlistener *lev;   /* owned by the worker's evhttp; NULL once closed (http_listeners_close) */
	struct event *retry;          /* re-enables lev after backoff_ms */
	unsigned backoff_ms;          /* 0: accepting */
	/* accept()s that failed for want of descriptors or memory, each
	 * followed by a pause: counted so that a test can tell a paused
	 * listener from a spinning one by a count, not by CPU time. */
	atomic_ulong starved_accepts;
};

/* One connection limit and the workers it holds back: max_connections
 * for the public workers together, HTTP_ADMIN_MAX_CONNECTIONS for the
 * admin_listen thread.  open is the one count every worker of the group
 * adds to and takes from (see http_conn_accept for when), so that it is
 * the group's connections, whichever worker holds them; a worker that
 * takes it to max pauses its own listeners at once and wakes the others
 * to pause theirs, and the close that takes it back under max wakes them
 * all to resume. */
/* How many connections one client address holds, while it holds any. */
#define HTTP_PEER_KEY 17             /* http_conn_peer_key's size */

struct http_peer {
	unsigned char key[HTTP_PEER_KEY]; /* http_conn_peer_key */
	unsigned open;
	struct http_peer *next;
};

#define HTTP_PEER_BUCKETS 1024

struct http_conn_limit {
	atomic_uint open;             /* accepted and not yet closed */
	unsigned max;
	/* The most one client address may hold (0: no such limit): a client
	 * holding connections idle or sending them a byte at a time must not
	 * take every slot from the others (http_conn.c).  peers counts them,
	 * under peer_lock: an address's connections land on any worker. */
	unsigned per_address;
	pthread_mutex_t peer_lock;
	uint64_t peer_seed;           /* of the peers' hash */
	struct http_peer *peers[HTTP_PEER_BUCKETS];
	struct http_worker *workers;  /* the group, woken on each crossing of max */
	unsigned worker_count;
	/* Set when the server stops: from then on no worker wakes another,
	 * whose loop may be gone. */
	atomic_int stopping;
};

/* A worker's side of its limit, touched on its loop only. */
struct http_conns {
	struct http_conn_limit *limit;
	struct event *wake;           /* http_conns_wake: the count crossed max */
	int paused;                   /* the listeners are off for the limit */
	int final;                    /* stopping: never turned on again */
	struct http_conn *adopting;   /* accepted; their evhttp connection not yet looked up */
	struct event *adopt;          /* runs http_conn_adopt on the loop */
	struct http_conn **by_evcon;  /* adopted ones, for http_connection_set_closecb */
	size_t by_evcon_mask;
	unsigned open;                /* this worker's, accepted and not yet closed: what a stop waits for */
	int draining;                 /* the stop: http_conns_drain has run */
	/* Connections the stop closed with request bytes unread: arrived as
	 * the connection closed (http_conns_drain). */
	unsigned crossed;
};

struct http_worker {
	struct http_server *server;
	unsigned index;
	pthread_t thread;
	int started;
	struct event_base *base;
	struct evhttp *http;
	struct api_ctx api;
	struct http_conns conns;
	struct http_listener listeners[CONFIG_MAX_LISTEN];
	size_t listener_count;
	int joined;                   /* its loop has ended (http_quiesce) */
	/* Requests handed to the API whose reply has not been written yet
	 * (http_inflight_track), touched on the worker's loop only. */
	struct http_inflight *inflight;
	size_t inflight_count, inflight_sweep_at;
	struct event *inflight_sweep;  /* after a connection's end (http_conn_closed) */
};

/* The worker whose loop runs on this thread (http.c sets it): a
 * listener's error callback gets only the evhttp as its argument. */
extern _Thread_local struct http_worker *http_worker_self;

/* Where one listen address binds, as resolved once for all workers. */
struct http_address {
	struct sockaddr_storage sa;
	socklen_t sa_len;
	int claim_fd;                 /* the abstract socket naming it, see http_claim */
	int claimed;
};

struct http_server {
	const struct config *cfg;         /* the boot version of live: what is built once */
	struct config_live *live;
	struct statuslist_cache *statuslists;
	struct codes *codes;              /* authorization codes, for every worker */
	struct ratelimit *ratelimit;      /* rate_limit's buckets, for every worker */
	/* Auto-renewal of pairs: its thread stops first in http_quiesce (it
	 * registers children and notifies streams on the workers' loops);
	 * freed last, after the connections whose streams subscribe to it. */
	struct renew *renew;
	struct http_address *addresses;   /* one per cfg->listen */
	/* listen = systemd: the sockets systemd passed, and the address each
	 * is bound to (for log lines).  Each worker accepts on its own dup. */
	int passed_fds[CONFIG_MAX_LISTEN];
	struct config_listen passed[CONFIG_MAX_LISTEN];
	size_t passed_count;
	struct http_worker *workers;
	unsigned worker_count;
	struct http_conn_limit conn_limit;        /* max_connections, the workers' */
	/* admin_listen: a thread of its own (a worker without a token
	 * session) serving /metrics and /health there; NULL when unset. */
	struct http_worker *admin;
	struct http_address admin_address;
	struct http_conn_limit admin_conn_limit;  /* the admin thread's own */
	/* The stop has begun and the public listening sockets are shut
	 * (http_quiesce): /health answers 503 "stopping" (api.h). */
	atomic_int stopping;
	int listeners_shut;
	/* CLOCK_MONOTONIC: the drains end by then whatever is left (set by
	 * http_quiesce before the drains run). */
	struct timespec drain_deadline;
};

/* ---- http_listen.c ---- */

/* Resolves addr and binds it once without SO_REUSEPORT (an address someone
 * else holds fails), into *ret_address. */
int http_listen_probe(const struct config_listen *addr, struct http_address *ret_address);
/* Claims a probed address for this process until http_stop closes
 * address->claim_fd (see there why the probe is not enough). */
int http_claim(const struct config_listen *addr, struct http_address *address);
/* The listen addresses: cfg->listen, or with listen = systemd the sockets
 * systemd passed; and the address of a listener's index, for log lines. */
size_t http_listen_count(const struct http_server *server);
const struct config_listen *http_listen_addr(const struct http_server *server, size_t index);
/* listen = systemd: takes the passed sockets (LISTEN_FDS), each a
 * listening TCP socket, or fails saying why. */
int http_take_passed(struct http_server *server);
/* The worker's listening sockets, one per listen address (the admin
 * thread: admin_listen), handed to its evhttp with the back-off and
 * max_connections' accounting around accept.  Before its loop runs. */
int http_listeners_open(struct http_worker *worker);
/* On the worker's loop, at the stop: its listeners closed. */
void http_listeners_close(struct http_worker *worker);
/* From the stopping thread: every public listening socket stops listening
 * at once, then the server is marked stopping.  Once. */
void http_listeners_shut(struct http_server *server);

/* ---- http_conn.c ---- */

/* A connection limit for workers[0..worker_count), before they start;
 * per_address as in struct http_conn_limit (config_per_address). */
void http_conn_limit_init(struct http_conn_limit *limit, unsigned max, unsigned per_address,
			  struct http_worker *workers, unsigned worker_count);
/* The client address a connection counts against for the per-address
 * share, as a key: the family (4 or 6), then an IPv4 address's 4 bytes or
 * an IPv6 address's /64 (8 bytes), zeros after.  An IPv4-mapped IPv6
 * address (::ffff:a.b.c.d) is its IPv4 address.  The port is no part of
 * it.  0 and *ret_key, -EINVAL (no address) or -EAFNOSUPPORT (not IP, or
 * len too short for its family); ret_key untouched on failure. */
int http_conn_peer_key(const struct sockaddr *sa, socklen_t len, unsigned char ret_key[HTTP_PEER_KEY]);
/* The worker's side of limit, before its listeners open; http_conns_free
 * after its evhttp_free. */
int http_conns_init(struct http_worker *worker, struct http_conn_limit *limit);
void http_conns_free(struct http_worker *worker);
/* evhttp's bevcb's part (http_listen.c's http_accepted): the accepted
 * connection's bufferevent, counted; NULL when memory runs out. */
struct bufferevent *http_conn_accept(struct http_worker *worker);
/* The replies not yet written: http_inflight_init before the loop runs,
 * http_inflight_track for each request handed to the API, a sweep drops
 * those whose connection is gone, http_inflight_clear drops them all
 * (before evhttp_free) and frees what init made. */
int http_inflight_init(struct http_worker *worker);
void http_inflight_track(struct http_worker *worker, struct evhttp_request *req);
void http_inflight_sweep(struct http_worker *worker);
void http_inflight_clear(struct http_worker *worker);
/* The stop, on the worker's loop, each time its drain looks: from then on
 * a reply carries "Connection: close" (evhttp closes the connection once it
 * is written) unless the bytes of a further request on that connection
 * are there already (or it was made before the stop), and a connection
 * between requests (no request being read or answered, nothing received)
 * is closed.  conns.open tells how many remain. */
void http_conns_drain(struct http_worker *worker);

/* For tests: starved_accepts summed over every public worker's listeners
 * (relaxed reads; the workers keep counting). */
unsigned long http_internal_starved_accepts(struct http_server *server);

#endif
