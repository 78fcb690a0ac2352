/* The http module's server: the workers (each its own loop, evhttp and
 * token session), the admin_listen thread, the stop (drain, quiesce) and
 * start/stop.  Listening sockets: http_listen.c; connections counted and
 * replies not yet written: http_conn.c; replies and bodies: http_reply.c. */
#include "hsmjwt/http.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/thread.h>

#include "hsmjwt/api.h"
#include "hsmjwt/log.h"

#include "http_internal.h"

/* How long a stop waits for the workers' connections to close and the
 * replies held back until the registry has made their change durable, and
 * how often it looks. */
#define HTTP_DRAIN_MS 10000
#define HTTP_DRAIN_POLL_MS 10

/* The worker whose loop runs on this thread. */
_Thread_local struct http_worker *http_worker_self;

/* libevent's own messages, which it would print to stderr unstructured and
 * unbounded. */
static void http_libevent_log(int severity, const char *msg)
{
	enum log_level level = severity == EVENT_LOG_DEBUG ? LOG_LEVEL_DEBUG :
			       severity == EVENT_LOG_MSG ? LOG_LEVEL_INFO :
			       severity == EVENT_LOG_WARN ? LOG_LEVEL_WARN : LOG_LEVEL_ERROR;
	char detail[768];

	if (!log_enabled(level))
		return;
	/* An error is libevent's last word before it exits or aborts: never
	 * let a burst of warnings before it swallow the reason. */
	if (severity == EVENT_LOG_ERR)
		log_write(level, "\"libevent\" detail=%s", log_quote(detail, sizeof(detail), msg));
	else
		log_limited(level, "\"libevent\" detail=%s", log_quote(detail, sizeof(detail), msg));
}

static void http_handle(struct evhttp_request *req, void *arg)
{
	struct http_worker *worker = arg;
	struct api_outcome outcome;

	const char *description;
	int status;

	http_inflight_track(worker, req);
	memset(&outcome, 0, sizeof(outcome));
	clock_gettime(CLOCK_MONOTONIC, &outcome.start);
	outcome.worker = worker->index;
	if (http_request_check(req->major, req->minor, evhttp_request_get_uri(req),
			       evhttp_request_get_input_headers(req), &status, &description) < 0) {
		/* Where this request's body ended is in doubt: nothing more is
		 * read from the connection.  evhttp 2.1 gives a server no hook
		 * between a request's headers and its body (header_cb is set
		 * only on requests the application creates; evhttp_set_newreqcb
		 * is 2.2), so a Transfer-Encoding is refused (411) only here,
		 * once evhttp has decoded or refused the chunks itself: the
		 * close is what keeps this connection in step with a proxy. */
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
		outcome.status = status;
		http_reply_error(req, status, "invalid_request", description);
		http_log_request(req, &outcome);
		return;
	}
	if (evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT) {
		/* RFC 9110 §9.3.6: a tunnel, which no resource here offers (an
		 * empty Allow says so, §10.2.1).  evhttp keeps a CONNECT's
		 * connection open whatever the reply says. */
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "");
		outcome.status = 405;
		http_reply_error(req, 405, "method_not_allowed", "this server is no proxy: CONNECT is not served");
		http_log_request(req, &outcome);
		return;
	}
	api_dispatch(&worker->api, req, &outcome);
	/* A deferred reply is logged when it is sent. */
	if (!outcome.deferred)
		http_log_request(req, &outcome);
}

static void *http_worker_main(void *arg)
{
	struct http_worker *worker = arg;

	http_worker_self = worker;
	/* A worker paused for connections other workers hold has no event
	 * added, only its wake to be activated: its loop must not end for
	 * want of events.  The stop ends it (http_drain). */
	event_base_loop(worker->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static int http_worker_init(struct http_worker *worker, struct hsm *hsm, struct keyring *keyring,
			    struct registry *registry)
{
	const struct config *cfg = worker->server->cfg;
	struct event_config *event_cfg = event_config_new();
	int r;

	if (event_cfg == NULL)
		return -ENOMEM;
	/* evhttp turns a connection's read and write events off and on around
	 * every request; without the changelist each toggle is an epoll_ctl
	 * (17% of a JWKS request's time, perf, issue 7), with it libevent
	 * applies only the net change once per loop turn.  Its caveat is a
	 * dup()ed descriptor: the sockets systemd passes are dup()ed per worker,
	 * and closing a worker's copy at the stop would leave the epoll
	 * registration of the still-open socket behind (the DEL comes a turn
	 * later, after the close: EBADF), so the draining loop would spin on
	 * every queued connection.  Without socket activation nothing is
	 * dup()ed: each worker binds its own socket. */
	if (!cfg->listen_systemd)
		event_config_set_flag(event_cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	worker->base = event_base_new_with_config(event_cfg);
	event_config_free(event_cfg);
	if (worker->base == NULL)
		return -ENOMEM;
	worker->http = evhttp_new(worker->base);
	if (worker->http == NULL)
		return -ENOMEM;
	/* evhttp refuses bodies beyond this itself, with its own HTML answer;
	 * keep that for abuse only and give JSON 413s up to twice max_body. */
	evhttp_set_max_body_size(worker->http, (ev_ssize_t)cfg->max_body * 2);
	evhttp_set_max_headers_size(worker->http, HTTP_MAX_HEADERS_SIZE);
	evhttp_set_timeout(worker->http, HTTP_TIMEOUT_SECONDS);
	/* PUT and OPTIONS only for /authorize, which a proxy asks with the
	 * method it is about; other paths answer them 405 with their Allow,
	 * TRACE and CONNECT too (methods we know and do not serve: evhttp's
	 * own answer would be a 501, a server error).  Only a method nobody
	 * defined gets evhttp's 501 (RFC 9110 §9.1). */
	evhttp_set_allowed_methods(worker->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
					     EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT |
					     EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	evhttp_set_gencb(worker->http, http_handle, worker);
	r = http_conns_init(worker, worker->api.admin ? &worker->server->admin_conn_limit
						      : &worker->server->conn_limit);
	if (r == 0)
		r = http_inflight_init(worker);
	if (r == 0)
		r = http_listeners_open(worker);
	if (r < 0)
		return r;
	/* The worker's own reference, moved on by api_dispatch. */
	worker->api.live = worker->server->live;
	config_live_adopt(worker->api.live, &worker->api.cfg);
	worker->api.hsm = hsm;
	worker->api.keyring = keyring;
	worker->api.registry = registry;
	worker->api.statuslists = worker->server->statuslists;
	worker->api.codes = worker->server->codes;
	/* The admin port is the operator's: a scrape is never refused for
	 * what clients of the same address did on the public one. */
	worker->api.ratelimit = worker->api.admin ? NULL : worker->server->ratelimit;
	worker->api.renew = worker->server->renew;
	worker->api.base = worker->base;
	worker->api.worker = worker->index;
	worker->api.stopping = &worker->server->stopping;
	atomic_init(&worker->api.pending, 0);
	/* The admin thread never signs nor verifies in the token. */
	if (worker->api.admin)
		return 0;
	return hsm_session_open(hsm, &worker->api.session);
}

/* Runs on the worker's own loop (listeners are not thread-safe): closes
 * its listeners, then ends the loop once every connection of the worker
 * has closed — the requests its clients had sent answered, the others
 * closed between requests (http_conns_drain) — and no deferred reply is
 * outstanding, or at the server's drain_deadline whatever happens, so a
 * stuck disk or a client that does not read cannot hold the stop
 * forever. */
static void http_drain(evutil_socket_t fd, short what, void *arg)
{
	struct http_worker *worker = arg;
	const struct timespec *deadline = &worker->server->drain_deadline;
	struct timeval tv = { 0, HTTP_DRAIN_POLL_MS * 1000 };
	struct timespec now;
	unsigned pending;

	if (!worker->conns.final) {
		/* No close turns a listener on again (max_connections). */
		worker->conns.final = 1;
		http_listeners_close(worker);
		log_info("\"draining\" worker=%u connections=%u", worker->index, worker->conns.open);
	}
	/* Open event streams end now; each counts as pending until its end
	 * is written. */
	api_quiesce(&worker->api);
	http_inflight_sweep(worker);
	http_conns_drain(worker);
	pending = atomic_load(&worker->api.pending);
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((pending == 0 && worker->conns.open == 0) || now.tv_sec > deadline->tv_sec ||
	    (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec)) {
		if (pending != 0 || worker->conns.open != 0)
			log_warn("\"stopping with requests not yet answered or replies not yet written\" "
				 "worker=%u pending=%u connections=%u unwritten=%zu",
				 worker->index, pending, worker->conns.open, worker->inflight_count);
		if (worker->conns.crossed != 0)
			log_warn("\"closed at the stop as requests arrived: not answered\" worker=%u connections=%u",
				 worker->index, worker->conns.crossed);
		event_base_loopexit(worker->base, NULL);
		return;
	}
	if (event_base_once(worker->base, -1, EV_TIMEOUT, http_drain, worker, &tv) < 0)
		event_base_loopexit(worker->base, NULL);
}

void http_quiesce(struct http_server *server)
{
	static const struct timeval now = { 0, 0 };

	if (server == NULL)
		return;
	/* The drains end by then, however long their loops' turns take. */
	clock_gettime(CLOCK_MONOTONIC, &server->drain_deadline);
	server->drain_deadline.tv_sec += HTTP_DRAIN_MS / 1000;
	server->drain_deadline.tv_nsec += (HTTP_DRAIN_MS % 1000) * 1000000L;
	if (server->drain_deadline.tv_nsec >= 1000000000L) {
		server->drain_deadline.tv_sec++;
		server->drain_deadline.tv_nsec -= 1000000000L;
	}
	/* No worker turns its listeners on again: the drains turn them off. */
	atomic_store(&server->conn_limit.stopping, 1);
	http_listeners_shut(server);
	/* No renewal, and no event for a stream, after this: the drains
	 * below then end the streams for good. */
	renew_stop(server->renew);
	for (unsigned i = 0; i < server->worker_count; i++) {
		struct http_worker *w = &server->workers[i];
		if (w->base == NULL || w->joined)
			continue;
		/* A worker that never ran has no loop to drain on. */
		if (!w->started || event_base_once(w->base, -1, EV_TIMEOUT, http_drain, w, &now) < 0)
			event_base_loopexit(w->base, NULL);
	}
	for (unsigned i = 0; i < server->worker_count; i++) {
		struct http_worker *w = &server->workers[i];
		if (w->started && !w->joined)
			pthread_join(w->thread, NULL);
		w->joined = 1;
	}
	/* The admin thread's drain last, within what is left of the
	 * deadline: a scrape being answered, nothing deferred. */
	if (server->admin != NULL && server->admin->base != NULL && !server->admin->joined) {
		struct http_worker *w = server->admin;
		if (!w->started || event_base_once(w->base, -1, EV_TIMEOUT, http_drain, w, &now) < 0)
			event_base_loopexit(w->base, NULL);
		if (w->started)
			pthread_join(w->thread, NULL);
		w->joined = 1;
	}
}

/* A worker's loop, listeners and session, once its thread has ended. */
static void http_worker_free(struct http_worker *w)
{
	/* Before evhttp_free: the loop still exists for the bufferevents'
	 * finalisation. */
	http_inflight_clear(w);
	config_live_leave(w->api.live, &w->api.cfg);
	w->conns.final = 1;
	for (size_t j = 0; j < w->listener_count; j++)
		event_free(w->listeners[j].retry);
	if (w->http)
		evhttp_free(w->http);
	http_conns_free(w);
	if (w->base)
		event_base_free(w->base);
	hsm_session_close(w->api.session);
}

void http_stop(struct http_server *server)
{
	if (server == NULL)
		return;
	http_quiesce(server);
	/* The closes evhttp_free counts wake nobody, whose loop may be gone. */
	atomic_store(&server->admin_conn_limit.stopping, 1);
	for (unsigned i = 0; i < server->worker_count; i++)
		http_worker_free(&server->workers[i]);
	if (server->admin != NULL)
		http_worker_free(server->admin);
	free(server->admin);
	if (server->admin_address.claimed)
		close(server->admin_address.claim_fd);
	renew_free(server->renew);
	free(server->workers);
	statuslist_cache_free(server->statuslists);
	codes_free(server->codes);
	ratelimit_free(server->ratelimit);
	for (size_t i = 0; server->addresses && i < server->cfg->listen_count; i++)
		if (server->addresses[i].claimed)
			close(server->addresses[i].claim_fd);
	for (size_t i = 0; i < server->passed_count; i++)
		close(server->passed_fds[i]);
	free(server->addresses);
	free(server);
	log_limited_flush();
}

/* admin_listen (SPEC §3): its address probed and claimed as a listen
 * address is, and its thread started. */
static int http_admin_start(struct http_server *server, struct hsm *hsm, struct keyring *keyring,
			    struct registry *registry)
{
	const struct config *cfg = server->cfg;
	struct http_worker *admin;
	int r;

	r = http_listen_probe(&cfg->admin_listen, &server->admin_address);
	if (r == 0)
		r = http_claim(&cfg->admin_listen, &server->admin_address);
	if (r < 0)
		return r;
	admin = calloc(1, sizeof(*admin));
	if (admin == NULL)
		return -ENOMEM;
	server->admin = admin;
	/* The operator's port: no share per address (its clients are the
	 * operator's scrapers, often all from one address). */
	http_conn_limit_init(&server->admin_conn_limit, HTTP_ADMIN_MAX_CONNECTIONS, 0, admin, 1);
	admin->server = server;
	admin->index = cfg->workers;
	admin->api.admin = 1;
	r = http_worker_init(admin, hsm, keyring, registry);
	if (r < 0)
		return r;
	r = -pthread_create(&admin->thread, NULL, http_worker_main, admin);
	if (r < 0) {
		log_error("\"cannot start the admin_listen thread\" error=\"%s\"", strerror(-r));
		return r;
	}
	admin->started = 1;
	log_info("\"listening for /metrics and /health\" address=%s port=%u", cfg->admin_listen.host,
		 cfg->admin_listen.port);
	return 0;
}

static pthread_once_t http_once = PTHREAD_ONCE_INIT;
static int http_once_result;

/* pthread_once takes void (*)(void); calling the int-returning
 * evthread_use_pthreads through such a cast is undefined behaviour. */
static void http_init_once(void)
{
	event_set_log_callback(http_libevent_log);
	http_once_result = evthread_use_pthreads();
}

int http_start(struct config_live *live, struct hsm *hsm, struct keyring *keyring, struct registry *registry,
	       struct http_server **ret_server)
{
	const struct config *cfg = config_live_boot(live);
	struct http_server *server;
	int r;

	/* Workers are stopped from the main thread. */
	pthread_once(&http_once, http_init_once);
	if (http_once_result != 0) {
		log_error("\"cannot enable libevent threading\"");
		return -ENOMEM;
	}
	server = calloc(1, sizeof(*server));
	if (server == NULL)
		return -ENOMEM;
	server->cfg = cfg;
	server->live = live;
	server->workers = calloc(cfg->workers, sizeof(*server->workers));
	/* Never calloc(0): listen = systemd has no address of its own. */
	server->addresses = calloc(CONFIG_MAX_LISTEN, sizeof(*server->addresses));
	if (server->workers == NULL || server->addresses == NULL) {
		http_stop(server);
		return -ENOMEM;
	}
	server->worker_count = cfg->workers;
	/* config.c keeps it at least workers. */
	http_conn_limit_init(&server->conn_limit, cfg->max_connections, config_per_address(cfg),
			     server->workers, cfg->workers);
	/* Before any thread starts: without its sockets the daemon stops here. */
	if (cfg->listen_systemd) {
		r = http_take_passed(server);
		if (r < 0) {
			http_stop(server);
			return r;
		}
	}
	r = statuslist_cache_new(&server->statuslists);
	if (r == 0)
		r = codes_new(&server->codes);
	/* Made whatever rate_limit says: a reload may turn it on. */
	if (r == 0)
		r = ratelimit_new(RATELIMIT_MAX_KEYS, &server->ratelimit);
	if (r == 0)
		r = renew_start(live, hsm, keyring, registry, &server->renew);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < cfg->listen_count; i++) {
		r = http_listen_probe(&cfg->listen[i], &server->addresses[i]);
		if (r == 0)
			r = http_claim(&cfg->listen[i], &server->addresses[i]);
		if (r < 0)
			goto fail;
	}
	for (unsigned i = 0; i < cfg->workers; i++) {
		struct http_worker *w = &server->workers[i];
		w->server = server;
		w->index = i;
		r = http_worker_init(w, hsm, keyring, registry);
		if (r < 0)
			goto fail;
	}
	if (cfg->admin_listen_set) {
		r = http_admin_start(server, hsm, keyring, registry);
		if (r < 0)
			goto fail;
	}
	for (unsigned i = 0; i < cfg->workers; i++) {
		struct http_worker *w = &server->workers[i];
		r = -pthread_create(&w->thread, NULL, http_worker_main, w);
		if (r < 0) {
			log_error("\"cannot start worker\" error=\"%s\"", strerror(-r));
			goto fail;
		}
		w->started = 1;
	}
	for (size_t i = 0; i < http_listen_count(server); i++)
		log_info("\"listening\" address=%s port=%u workers=%u%s", http_listen_addr(server, i)->host,
			 http_listen_addr(server, i)->port, cfg->workers, cfg->listen_systemd ? " from=systemd" : "");
	*ret_server = server;
	return 0;
fail:
	http_stop(server);
	return r;
}
