/* The http module's listening sockets: listen addresses probed, claimed
 * and bound once per worker (SO_REUSEPORT, http.h), the sockets systemd
 * passes (listen = systemd), accepting under resource exhaustion (the
 * back-off), and the sockets' end at the stop. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <systemd/sd-daemon.h>

#include "hsmjwt/log.h"

#include "http_internal.h"

#define HTTP_BACKLOG 1024
/* The pause after an accept() that failed for want of descriptors or
 * memory: doubled while it keeps failing, reset by a connection accepted. */
#define HTTP_ACCEPT_BACKOFF_MIN_MS 100
#define HTTP_ACCEPT_BACKOFF_MAX_MS 2000

/* Resolves addr and binds it once WITHOUT SO_REUSEPORT, then lets go.  The
 * workers' sockets share the port through SO_REUSEPORT, which would as
 * happily share it with a second daemon (or anything else setting the
 * option) and hand it part of the connections: only a socket without the
 * option learns that someone else holds the address.  SO_REUSEADDR keeps a
 * predecessor's TIME_WAIT connections from counting. */
int http_listen_probe(const struct config_listen *addr, struct http_address *ret_address)
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
int http_claim(const struct config_listen *addr, struct http_address *address)
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

size_t http_listen_count(const struct http_server *server)
{
	return server->cfg->listen_systemd ? server->passed_count : server->cfg->listen_count;
}

/* The address a listener accepts on, for log lines. */
const struct config_listen *http_listen_addr(const struct http_server *server, size_t index)
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
int http_take_passed(struct http_server *server)
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
	atomic_fetch_add_explicit(&listener->starved_accepts, 1, memory_order_relaxed);
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

unsigned long http_internal_starved_accepts(struct http_server *server)
{
	unsigned long total = 0;

	for (unsigned w = 0; w < server->worker_count; w++)
		for (size_t i = 0; i < server->workers[w].listener_count; i++)
			total += atomic_load_explicit(&server->workers[w].listeners[i].starved_accepts,
						      memory_order_relaxed);
	return total;
}

/* ---- a worker's listeners ------------------------------------------------ */

int http_listeners_open(struct http_worker *worker)
{
	const struct config *cfg = worker->server->cfg;
	int r;

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
	evhttp_set_bevcb(worker->http, http_accepted, worker);
	return 0;
}

void http_listeners_close(struct http_worker *worker)
{
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

/* The public listening sockets stop listening now, from this thread: a
 * worker may be held in the token for seconds before its drain runs, and
 * the kernel would meanwhile complete handshakes into its backlog.
 * shutdown() ends the listen (queued connections reset, new ones refused)
 * and leaves the descriptor to its evhttp, which closes it in the drain;
 * accept() on it fails with EINVAL, which http_accept_error takes as the
 * end.  A socket systemd passed is systemd's to keep listening: the next
 * start serves what queues there.  Then /health says "stopping". */
void http_listeners_shut(struct http_server *server)
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
