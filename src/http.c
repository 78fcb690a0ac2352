#include "hsmjwt/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <systemd/sd-daemon.h>

#include "hsmjwt/api.h"
#include "hsmjwt/form.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

#define HTTP_BACKLOG 1024
#define HTTP_REALM "hsmjwt"
/* The pause after an accept() that failed for want of descriptors or
 * memory: doubled while it keeps failing, reset by a connection accepted. */
#define HTTP_ACCEPT_BACKOFF_MIN_MS 100
#define HTTP_ACCEPT_BACKOFF_MAX_MS 2000
/* How long a stop waits for replies held back until the registry has made
 * their change durable, and how often it looks. */
#define HTTP_DRAIN_MS 10000
#define HTTP_DRAIN_POLL_MS 10
/* A worker's unwritten replies are swept for vanished connections after
 * a connection closes, and when their number doubles, at least at this
 * many. */
#define HTTP_INFLIGHT_SWEEP_MIN 64

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
	struct evconnlistener *lev;   /* owned by the worker's evhttp; NULL once closed (http_drain) */
	struct event *retry;          /* re-enables lev after backoff_ms */
	unsigned backoff_ms;          /* 0: accepting */
};

/* One connection limit and the workers it holds back: max_connections
 * for the public workers together, HTTP_ADMIN_MAX_CONNECTIONS for the
 * admin_listen thread.  open is the one count every worker of the group
 * adds to and takes from (see http_conn_accept for when), so that it is
 * the group's connections, whichever worker holds them; a worker that
 * takes it to max pauses its own listeners at once and wakes the others
 * to pause theirs, and the close that takes it back under max wakes them
 * all to resume. */
struct http_conn_limit {
	atomic_uint open;             /* accepted and not yet closed */
	unsigned max;
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
	unsigned drain_waited_ms;
	int joined;                   /* its loop has ended (http_quiesce) */
	/* Requests handed to the API whose reply has not been written yet
	 * (http_inflight_track), touched on the worker's loop only. */
	struct http_inflight *inflight;
	size_t inflight_count, inflight_sweep_at;
	struct event *inflight_sweep;  /* after a connection's end (http_conn_closed) */
};

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

/* The worker whose loop runs on this thread: a listener's error callback
 * gets only the evhttp as its argument. */
static _Thread_local struct http_worker *http_worker_self;

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
};

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

/* ---- responses ------------------------------------------------------------- */

static const char *http_method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "OTHER";
}

void http_send(struct evhttp_request *req, int code, struct evbuffer *body)
{
	char length[24];

	if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
		evhttp_send_reply(req, code, NULL, body);
		return;
	}
	/* RFC 9110 §9.3.2: no content in a HEAD response; §8.6: its length may
	 * be announced. */
	snprintf(length, sizeof(length), "%zu", body ? evbuffer_get_length(body) : (size_t)0);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", length);
	evhttp_send_reply(req, code, NULL, NULL);
}

void http_reply_json(struct evhttp_request *req, int code, json_t *body)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *out = evbuffer_new();
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	/* The text may hold the tokens just issued: wiped before it is
	 * freed.  libevent's copies (the evbuffer, the connection's output
	 * buffer) are freed unwiped once sent. */
	size_t text_len = text ? strlen(text) : 0;

	json_decref(body);
	evhttp_add_header(headers, "Content-Type", "application/json");
	evhttp_add_header(headers, "Cache-Control", "no-store");
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	if (out == NULL || text == NULL) {
		/* Out of memory: the status still tells the client what happened. */
		evhttp_send_reply(req, code == 200 ? 500 : code, NULL, NULL);
		evbuffer_free(out);
		if (text != NULL)
			OPENSSL_cleanse(text, text_len);
		free(text);
		return;
	}
	evbuffer_add(out, text, text_len);
	evbuffer_add(out, "\n", 1);
	http_send(req, code, out);
	evbuffer_free(out);
	OPENSSL_cleanse(text, text_len);
	free(text);
}

/* RFC 6750 §3: the Bearer challenge of a 401.  error is NULL for a request
 * that carried no credentials, which §3.1 says gets no error code. */
static void http_add_challenge(struct evhttp_request *req, const char *error)
{
	char value[128];

	if (error)
		snprintf(value, sizeof(value), "Bearer realm=\"" HTTP_REALM "\", error=\"%s\"", error);
	else
		snprintf(value, sizeof(value), "Bearer realm=\"" HTTP_REALM "\"");
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", value);
}

void http_reply_retry_after(struct evhttp_request *req, int code, const char *error, const char *description,
			    unsigned seconds)
{
	char value[16];

	/* RFC 9110 §10.2.3: 0 would invite the retry at once. */
	snprintf(value, sizeof(value), "%u", seconds > 0 ? seconds : 1);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", value);
	http_reply_json(req, code, json_pack("{s:s, s:s}", "error", error, "error_description",
					     description ? description : ""));
}

static void http_reply_error_body(struct evhttp_request *req, int code, const char *error, const char *description)
{
	if (code == 429 || code == 503) {
		http_reply_retry_after(req, code, error, description, 1);
		return;
	}
	http_reply_json(req, code, json_pack("{s:s, s:s}", "error", error, "error_description",
					     description ? description : ""));
}

void http_reply_error(struct evhttp_request *req, int code, const char *error, const char *description)
{
	if (code == 401)
		http_add_challenge(req, error);
	http_reply_error_body(req, code, error, description);
}

void http_reply_unauthorized(struct evhttp_request *req, int token_sent, const char *description)
{
	http_add_challenge(req, token_sent ? "invalid_token" : NULL);
	http_reply_error_body(req, 401, "invalid_token", description);
}

/* RFC 9110 §8.3.1: media-type = type "/" subtype parameters, parameters =
 * *( OWS ";" OWS [ parameter ] ): after the type only whitespace, then the
 * end or a ';' may follow. */
static int http_content_type_is(const char *value, const char *want)
{
	size_t n = strlen(want);

	if (value == NULL || strncasecmp(value, want, n) != 0)
		return 0;
	value += n;
	value += strspn(value, " \t");
	return *value == '\0' || *value == ';';
}

/* The body as one contiguous buffer of at most max bytes. */
static int http_body(struct evhttp_request *req, size_t max, const char **ret_data, size_t *ret_len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *data;

	if (len > max)
		return -EFBIG;
	/* pullup copies a body spread over several chains into one. */
	data = len ? (const char *)evbuffer_pullup(in, (ev_ssize_t)len) : "";
	if (data == NULL)
		return -ENOMEM;
	*ret_data = data;
	*ret_len = len;
	return 0;
}

static int http_parse_json(const char *data, size_t len, json_t **ret_body)
{
	int r = json_strict_parse(data, len, JSON_STRICT_MAX_DEPTH, ret_body);
	return r == -E2BIG ? -ELOOP : r < 0 ? -EINVAL : 0;
}

int http_read_json(struct evhttp_request *req, size_t max, json_t **ret_body)
{
	const char *type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	const char *data;
	size_t len;
	int r;

	if (!http_content_type_is(type, "application/json"))
		return -EMEDIUMTYPE;
	r = http_body(req, max, &data, &len);
	return r < 0 ? r : http_parse_json(data, len, ret_body);
}

int http_read_oauth(struct evhttp_request *req, size_t max, json_t **ret_body)
{
	const char *type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	int form = http_content_type_is(type, "application/x-www-form-urlencoded");
	const char *data;
	size_t len;
	int r;

	if (!form && !http_content_type_is(type, "application/json"))
		return -EMEDIUMTYPE;
	r = http_body(req, max, &data, &len);
	if (r < 0)
		return r;
	if (!form)
		return http_parse_json(data, len, ret_body);
	r = form_parse(data, len, ret_body);
	return r == -ENOMEM ? r : r < 0 ? -EINVAL : 0;
}

int http_reply_body_error(struct evhttp_request *req, int err)
{
	switch (err) {
	case -EMEDIUMTYPE:
		http_reply_error(req, 415, "unsupported_media_type",
				 "the body must be application/json (OAuth endpoints: or application/x-www-form-urlencoded)");
		return 415;
	case -EFBIG:
		http_reply_error(req, 413, "request_too_large", "the body exceeds max_body");
		return 413;
	case -ELOOP:
		http_reply_error(req, 400, "invalid_request", "the body nests deeper than 16 levels");
		return 400;
	case -ENOMEM:
		http_reply_error(req, 500, "server_error", "out of memory reading the body");
		return 500;
	default:
		http_reply_error(req, 400, "invalid_request",
				 "the body is not strict JSON or form data (syntax, encoding or a repeated member)");
		return 400;
	}
}

static double http_elapsed_ms(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) * 1e3 + (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

void http_log_request(struct evhttp_request *req, const struct api_outcome *outcome)
{
	const char *uri = evhttp_request_get_uri(req);
	/* Worst case every character of sub or jti escaped, plus quotes. */
	char path[160], sub[2 * sizeof(outcome->sub) + 2], jti[2 * sizeof(outcome->jti) + 2];
	size_t n;

	/* The path only: a query string may carry a token.  Under /authorize/
	 * a proxy appends the path of the API it guards, which may carry a
	 * capability (a magic link, a reset token): only "/authorize/" is logged. */
	n = strcspn(uri ? uri : "", "?");
	if (uri && strncmp(uri, "/authorize/", 11) == 0 && n > 11)
		n = 11;
	log_quote(path, sizeof(path), "");
	if (uri) {
		char raw[128];
		if (n >= sizeof(raw))
			n = sizeof(raw) - 1;
		memcpy(raw, uri, n);
		raw[n] = '\0';
		log_quote(path, sizeof(path), raw);
	}
	/* sub comes from the caller's token, whose issuer chooses it: quoted, a
	 * newline or a '"' in it cannot start a forged line or field. */
	log_info("\"request\" method=%s path=%s status=%d latency_ms=%.3f sub=%s jti=%s worker=%u",
		 http_method_name(evhttp_request_get_command(req)), path, outcome->status,
		 http_elapsed_ms(&outcome->start), outcome->sub[0] ? log_quote(sub, sizeof(sub), outcome->sub) : "-",
		 outcome->jti[0] ? log_quote(jti, sizeof(jti), outcome->jti) : "-", outcome->worker);
	metrics_http_request(outcome->route, outcome->status);
}

/* ---- replies not yet written ------------------------------------------- */

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
static void http_inflight_sweep(struct http_worker *worker)
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

static void http_inflight_track(struct http_worker *worker, struct evhttp_request *req)
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

static void http_inflight_clear(struct http_worker *worker)
{
	while (worker->inflight != NULL)
		http_inflight_drop(worker->inflight);
}

static void http_handle(struct evhttp_request *req, void *arg)
{
	struct http_worker *worker = arg;
	struct api_outcome outcome;

	http_inflight_track(worker, req);
	memset(&outcome, 0, sizeof(outcome));
	clock_gettime(CLOCK_MONOTONIC, &outcome.start);
	outcome.worker = worker->index;
	api_dispatch(&worker->api, req, &outcome);
	/* A deferred reply is logged when it is sent. */
	if (!outcome.deferred)
		http_log_request(req, &outcome);
}

/* Resolves addr and binds it once WITHOUT SO_REUSEPORT, then lets go.  The
 * workers' sockets share the port through SO_REUSEPORT, which would as
 * happily share it with a second daemon (or anything else setting the
 * option) and hand it part of the connections: only a socket without the
 * option learns that someone else holds the address.  SO_REUSEADDR keeps a
 * predecessor's TIME_WAIT connections from counting. */
static int http_listen_probe(const struct config_listen *addr, struct http_address *ret_address)
{
	struct addrinfo hints, *res = NULL, *ai;
	char port[8], host[2 * sizeof(addr->host) + 2];
	int fd, r, err = EADDRNOTAVAIL, one = 1;

	log_quote(host, sizeof(host), addr->host);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", addr->port);
	r = getaddrinfo(addr->host[0] ? addr->host : NULL, port, &hints, &res);
	if (r != 0) {
		log_error("\"cannot resolve listen address\" host=%s error=\"%s\"", host, gai_strerror(r));
		return -EINVAL;
	}
	/* The first address that binds is the workers'; one in use is an error,
	 * not a reason to fall back to the next. */
	for (ai = res; ai && err != EADDRINUSE; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		r = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
		    bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
		close(fd);
		if (r == 0 && ai->ai_addrlen <= sizeof(ret_address->sa)) {
			memcpy(&ret_address->sa, ai->ai_addr, ai->ai_addrlen);
			ret_address->sa_len = ai->ai_addrlen;
			freeaddrinfo(res);
			return 0;
		}
		err = r ? r : EAFNOSUPPORT;
	}
	freeaddrinfo(res);
	if (err == EADDRINUSE)
		log_error("\"cannot listen: the address is held by another socket\" host=%s port=%u error=\"%s\"",
			  host, addr->port, strerror(err));
	else
		log_error("\"cannot listen\" host=%s port=%u error=\"%s\"", host, addr->port, strerror(err));
	return -err;
}

/* Claims a resolved listen address for this process with an abstract
 * AF_UNIX name ("\0hsmjwtd:ADDR:PORT"), held until http_stop.  The probe
 * bind alone cannot tell two daemons starting at the same instant apart:
 * both probe sockets bind (SO_REUSEADDR, not listening), then both listen
 * with SO_REUSEPORT and share the port.  An abstract name has exactly one
 * owner per network namespace, and the kernel frees it with the process. */
static int http_claim(const struct config_listen *addr, struct http_address *address)
{
	struct sockaddr_un un;
	char numeric[INET6_ADDRSTRLEN + 1] = "", host[2 * sizeof(addr->host) + 2];
	const void *ip = address->sa.ss_family == AF_INET6 ?
		(const void *)&((const struct sockaddr_in6 *)&address->sa)->sin6_addr :
		(const void *)&((const struct sockaddr_in *)&address->sa)->sin_addr;
	socklen_t len;
	int fd, n;

	if (inet_ntop(address->sa.ss_family, ip, numeric, sizeof(numeric)) == NULL)
		return -errno;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	n = snprintf(un.sun_path + 1, sizeof(un.sun_path) - 1, "hsmjwtd:%s:%u", numeric, addr->port);
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (const struct sockaddr *)&un, len) < 0) {
		int err = errno;
		close(fd);
		if (err == EADDRINUSE)
			log_error("\"cannot listen: another hsmjwtd is listening there\" host=%s port=%u",
				  log_quote(host, sizeof(host), addr->host), addr->port);
		else
			log_error("\"cannot claim the listen address\" host=%s port=%u error=\"%s\"",
				  log_quote(host, sizeof(host), addr->host), addr->port, strerror(err));
		return -err;
	}
	address->claim_fd = fd;
	address->claimed = 1;
	return 0;
}

/* One worker's socket on a probed address (SO_REUSEPORT: see http.h). */
static int http_listen_socket(const struct config_listen *addr, const struct http_address *address,
			      evutil_socket_t *ret_fd)
{
	char host[2 * sizeof(addr->host) + 2];
	int fd, err, one = 1;

	fd = socket(address->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)&address->sa, address->sa_len) < 0 || listen(fd, HTTP_BACKLOG) < 0)
		goto fail;
	*ret_fd = fd;
	return 0;
fail:
	err = errno;
	if (fd >= 0)
		close(fd);
	log_error("\"cannot listen\" host=%s port=%u error=\"%s\"", log_quote(host, sizeof(host), addr->host),
		  addr->port, strerror(err));
	return -err;
}

/* ---- socket activation (listen = systemd) ------------------------------ */

static size_t http_listen_count(const struct http_server *server)
{
	return server->cfg->listen_systemd ? server->passed_count : server->cfg->listen_count;
}

/* The address a listener accepts on, for log lines. */
static const struct config_listen *http_listen_addr(const struct http_server *server, size_t index)
{
	if (index == HTTP_ADMIN_LISTENER)
		return &server->cfg->admin_listen;
	return server->cfg->listen_systemd ? &server->passed[index] : &server->cfg->listen[index];
}

/* Takes the sockets systemd passed (sd_listen_fds unsets LISTEN_FDS, so no
 * child inherits them).  Each must be a listening TCP socket: evhttp serves
 * nothing else, and the rate limit keys anonymous callers by their IP
 * address; a datagram or unix socket in the .socket unit is refused at the
 * start, not found by the first client.  No probe and no claim here:
 * systemd owns these addresses and hands them to one service only. */
static int http_take_passed(struct http_server *server)
{
	int n = sd_listen_fds(1), r;

	if (n < 0) {
		log_error("\"listen = systemd: cannot read the passed sockets\" error=\"%s\"", strerror(-n));
		return n;
	}
	if (n == 0) {
		log_error("\"listen = systemd, but no socket was passed (no LISTEN_FDS for this process): start hsmjwtd through "
			  "hsmjwtd.socket or set listen to host:port\"");
		return -ENOENT;
	}
	if (n > CONFIG_MAX_LISTEN) {
		log_error("\"listen = systemd: too many passed sockets\" count=%d max=%d", n, CONFIG_MAX_LISTEN);
		return -E2BIG;
	}
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		struct config_listen *a = &server->passed[i];
		struct sockaddr_storage sa;
		socklen_t len = sizeof(sa);
		char numeric[INET6_ADDRSTRLEN] = "?";

		r = sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0);
		if (r <= 0) {
			log_error("\"listen = systemd: a passed socket is not a listening TCP socket\" fd=%d", fd);
			return r < 0 ? r : -ENOTSOCK;
		}
		if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
			r = -errno;
			log_error("\"listen = systemd: cannot read a passed socket's address\" fd=%d error=\"%s\"", fd,
				  strerror(-r));
			return r;
		}
		if (sa.ss_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&sa;
			inet_ntop(AF_INET6, &in6->sin6_addr, numeric, sizeof(numeric));
			a->port = ntohs(in6->sin6_port);
		} else {
			const struct sockaddr_in *in4 = (const struct sockaddr_in *)&sa;
			inet_ntop(AF_INET, &in4->sin_addr, numeric, sizeof(numeric));
			a->port = ntohs(in4->sin_port);
		}
		snprintf(a->host, sizeof(a->host), "%s", numeric);
		server->passed_fds[i] = fd;
		server->passed_count++;
	}
	return 0;
}

/* One worker's descriptor for a passed socket: its own dup, which its
 * evhttp closes on free, while the original stays until http_stop. */
static int http_passed_socket(const struct http_server *server, size_t index, evutil_socket_t *ret_fd)
{
	const struct config_listen *a = &server->passed[index];
	int fd, err;

	fd = fcntl(server->passed_fds[index], F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		goto fail;
	/* libevent accepts until EAGAIN; a blocking socket would stall the
	 * loop.  The flag belongs to the shared file description. */
	if (evutil_make_socket_nonblocking(fd) < 0)
		goto fail;
	*ret_fd = fd;
	return 0;
fail:
	err = errno;
	if (fd >= 0)
		close(fd);
	log_error("\"cannot use a passed socket\" host=%s port=%u error=\"%s\"", a->host, a->port, strerror(err));
	return -err;
}

/* ---- accepting under resource exhaustion ------------------------------- */

/* The pause after the one before (0: none yet). */
static unsigned http_backoff_next(unsigned backoff_ms)
{
	if (backoff_ms == 0)
		return HTTP_ACCEPT_BACKOFF_MIN_MS;
	return backoff_ms >= HTTP_ACCEPT_BACKOFF_MAX_MS / 2 ? HTTP_ACCEPT_BACKOFF_MAX_MS : backoff_ms * 2;
}

static int http_accept_starved(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void http_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct http_listener *listener = arg;
	struct http_worker *worker = http_worker_self;

	/* At max_connections the close that makes room turns it on. */
	if (listener->lev == NULL || (worker != NULL && (worker->conns.paused || worker->conns.final)))
		return;
	/* Still starved, the next accept() fails at once and pauses again. */
	evconnlistener_enable(listener->lev);
}

/* libevent calls this when accept() fails for a reason other than EAGAIN,
 * EINTR or ECONNABORTED.  Out of descriptors or memory, the connection
 * stays queued and the socket stays readable: left enabled the loop would
 * spin on it at full CPU.  Paused, the connections already accepted can
 * finish and give their descriptors back. */
static void http_accept_error(struct evconnlistener *lev, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	struct http_worker *worker = http_worker_self;
	struct http_listener *listener = NULL;
	char host[2 * sizeof(worker->server->cfg->listen[0].host) + 2];
	const struct config_listen *addr;
	const char *name = strerrorname_np(err);
	struct timeval tv;

	/* Not listening any more: the stop shut it (http_listeners_shut), and
	 * every accept() would fail alike until the drain closes it. */
	if (err == EINVAL) {
		evconnlistener_disable(lev);
		return;
	}
	for (size_t i = 0; worker && i < worker->listener_count; i++)
		if (worker->listeners[i].lev == lev)
			listener = &worker->listeners[i];
	if (listener == NULL || !http_accept_starved(err)) {
		/* A failure of the one queued connection (Linux passes on its
		 * network errors): it is gone, the next one may do. */
		log_limited(LOG_LEVEL_WARN, "\"accept failed\" errno=%s error=\"%s\"", name ? name : "?",
				 strerror(err));
		return;
	}
	addr = http_listen_addr(worker->server, listener->index);
	if (listener->backoff_ms == 0)
		log_limited(LOG_LEVEL_WARN,
				 "\"cannot accept connections, pausing the listener\" errno=%s error=\"%s\" "
				 "host=%s port=%u worker=%u backoff_ms=%d..%d",
				 name ? name : "?", strerror(err), log_quote(host, sizeof(host), addr->host),
				 addr->port, worker->index, HTTP_ACCEPT_BACKOFF_MIN_MS, HTTP_ACCEPT_BACKOFF_MAX_MS);
	listener->backoff_ms = http_backoff_next(listener->backoff_ms);
	evconnlistener_disable(lev);
	tv.tv_sec = listener->backoff_ms / 1000;
	tv.tv_usec = (suseconds_t)(listener->backoff_ms % 1000) * 1000;
	evtimer_add(listener->retry, &tv);
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
static struct bufferevent *http_conn_accept(struct http_worker *worker)
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

static void http_conn_limit_init(struct http_conn_limit *limit, unsigned max, struct http_worker *workers,
				 unsigned worker_count)
{
	atomic_init(&limit->open, 0);
	limit->max = max;
	limit->workers = workers;
	limit->worker_count = worker_count;
	atomic_init(&limit->stopping, 0);
}

/* The worker's side of its limit, before its listeners open. */
static int http_conns_init(struct http_worker *worker, struct http_conn_limit *limit)
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
static void http_conns_free(struct http_worker *worker)
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

/* evhttp asks for each accepted connection's bufferevent: the sign that
 * accept() works again, and where a connection is counted. */
static struct bufferevent *http_accepted(struct event_base *base, void *arg)
{
	struct http_worker *worker = arg;

	for (size_t i = 0; i < worker->listener_count; i++) {
		struct http_listener *listener = &worker->listeners[i];
		/* A listener still waiting out its pause keeps its back-off: an
		 * accept on another address says nothing about this one. */
		if (listener->backoff_ms != 0 && !evtimer_pending(listener->retry, NULL)) {
			listener->backoff_ms = 0;
			log_limited(LOG_LEVEL_INFO, "\"accepting connections again\" port=%u worker=%u",
					 http_listen_addr(worker->server, listener->index)->port, worker->index);
		}
	}
	return http_conn_accept(worker);
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
	int r;

	worker->base = event_base_new();
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
	 * method it is about; other paths answer them 405 with their Allow. */
	evhttp_set_allowed_methods(worker->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
					     EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT |
					     EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(worker->http, http_handle, worker);
	evhttp_set_bevcb(worker->http, http_accepted, worker);
	r = http_conns_init(worker, worker->api.admin ? &worker->server->admin_conn_limit
						      : &worker->server->conn_limit);
	if (r < 0)
		return r;
	worker->inflight_sweep = event_new(worker->base, -1, 0, http_inflight_swept, worker);
	if (worker->inflight_sweep == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < (worker->api.admin ? 1 : http_listen_count(worker->server)); i++) {
		struct http_listener *listener = &worker->listeners[i];
		struct evhttp_bound_socket *bound;
		evutil_socket_t fd = -1;
		if (worker->api.admin)
			r = http_listen_socket(&cfg->admin_listen, &worker->server->admin_address, &fd);
		else
			r = cfg->listen_systemd ? http_passed_socket(worker->server, i, &fd) :
				http_listen_socket(&cfg->listen[i], &worker->server->addresses[i], &fd);
		if (r < 0)
			return r;
		bound = evhttp_accept_socket_with_handle(worker->http, fd);
		if (bound == NULL) {
			close(fd);
			return -ENOMEM;
		}
		listener->index = worker->api.admin ? HTTP_ADMIN_LISTENER : i;
		listener->fd = fd;
		listener->bound = bound;
		listener->lev = evhttp_bound_socket_get_listener(bound);
		listener->retry = evtimer_new(worker->base, http_accept_retry, listener);
		if (listener->retry == NULL)
			return -ENOMEM;
		worker->listener_count++;
		evconnlistener_set_error_cb(listener->lev, http_accept_error);
	}
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
 * its listeners, then ends the loop once no deferred reply is outstanding and
 * every reply has been written out (or lost its connection), or after
 * HTTP_DRAIN_MS whatever happens, so a stuck disk or a client that does
 * not read cannot hold the stop forever. */
static void http_drain(evutil_socket_t fd, short what, void *arg)
{
	struct http_worker *worker = arg;
	struct timeval tv = { 0, HTTP_DRAIN_POLL_MS * 1000 };

	if (!worker->conns.final) {
		/* No close turns a listener on again (max_connections). */
		worker->conns.final = 1;
		/* Closed, not just no longer read: a connection queued in the
		 * backlog would wait there for nothing until the exit (the
		 * public ones were shut by http_quiesce already; a passed one
		 * is systemd's, which keeps it: only our dup goes). */
		for (size_t i = 0; i < worker->listener_count; i++) {
			struct http_listener *listener = &worker->listeners[i];
			event_del(listener->retry);
			if (listener->lev != NULL)
				evhttp_del_accept_socket(worker->http, listener->bound);
			listener->lev = NULL;
			listener->bound = NULL;
		}
	}
	/* Open event streams end now; each counts as pending until its end
	 * is written. */
	api_quiesce(&worker->api);
	http_inflight_sweep(worker);
	if ((atomic_load(&worker->api.pending) == 0 && worker->inflight == NULL) ||
	    worker->drain_waited_ms >= HTTP_DRAIN_MS) {
		if (atomic_load(&worker->api.pending) != 0 || worker->inflight != NULL)
			log_warn("\"stopping with replies still waiting for the registry or not yet written\" "
				 "worker=%u pending=%u unwritten=%zu",
				 worker->index, atomic_load(&worker->api.pending), worker->inflight_count);
		event_base_loopexit(worker->base, NULL);
		return;
	}
	worker->drain_waited_ms += HTTP_DRAIN_POLL_MS;
	if (event_base_once(worker->base, -1, EV_TIMEOUT, http_drain, worker, &tv) < 0)
		event_base_loopexit(worker->base, NULL);
}

/* The public listening sockets stop listening now, from this thread: a
 * worker may be held in the token for seconds before its drain runs, and
 * the kernel would meanwhile complete handshakes into its backlog.
 * shutdown() ends the listen (queued connections reset, new ones refused)
 * and leaves the descriptor to its evhttp, which closes it in the drain;
 * accept() on it fails with EINVAL, which http_accept_error takes as the
 * end.  A socket systemd passed is systemd's to keep listening: the next
 * start serves what queues there.  Then /health says "stopping". */
static void http_listeners_shut(struct http_server *server)
{
	if (server->listeners_shut)
		return;
	server->listeners_shut = 1;
	for (unsigned i = 0; !server->cfg->listen_systemd && i < server->worker_count; i++) {
		struct http_worker *w = &server->workers[i];
		/* A joined worker's drain closed them already. */
		for (size_t j = 0; !w->joined && j < w->listener_count; j++)
			if (shutdown(w->listeners[j].fd, SHUT_RDWR) < 0)
				log_warn("\"cannot shut a listening socket at the stop\" worker=%u error=\"%s\"", w->index,
					 strerror(errno));
	}
	atomic_store(&server->stopping, 1);
}

void http_quiesce(struct http_server *server)
{
	static const struct timeval now = { 0, 0 };

	if (server == NULL)
		return;
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
	/* The admin thread holds nothing back: its drain stops accepting
	 * and ends the loop. */
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
	if (w->inflight_sweep != NULL)
		event_free(w->inflight_sweep);
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
	http_conn_limit_init(&server->admin_conn_limit, HTTP_ADMIN_MAX_CONNECTIONS, admin, 1);
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
	http_conn_limit_init(&server->conn_limit, cfg->max_connections, server->workers, cfg->workers);
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
