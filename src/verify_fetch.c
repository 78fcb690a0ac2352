/* verify: reading the JWKS from a file or over http(s), one blocking call
 * on a private event_base, bounded in time and size. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "verify_internal.h"

#ifndef HSMJWT_VERSION
#define HSMJWT_VERSION "0"
#endif

#define VERIFY_AGE_MAX 32
/* What the connection may hold unparsed beyond the body and the headers:
 * a chunk's framing and what one read adds. */
#define VERIFY_INPUT_SLACK (64 * 1024)

void verify_fetched_clear(struct verify_fetched *fetched)
{
	free(fetched->body);
	free(fetched->cache_control);
	free(fetched->age);
	memset(fetched, 0, sizeof(*fetched));
}

int verify_read_file(const char *path, int private_copy, size_t max, char **ret_buf, size_t *ret_len)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	ssize_t n;
	int fd, r;

	/* O_NONBLOCK: a FIFO or a device must not hang the open; it is
	 * refused below, and a regular file reads the same either way. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (private_copy ? O_NOFOLLOW : 0));
	if (fd < 0)
		return -errno;
	r = -EINVAL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		goto out;
	/* A copy someone else could plant would be a key set they chose. */
	r = -EPERM;
	if (private_copy && (st.st_uid != geteuid() || (st.st_mode & 022) != 0))
		goto out;
	r = -E2BIG;
	if ((uint64_t)st.st_size > max)
		goto out;
	r = -ENOMEM;
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		goto out;
	/* The size may change under us: read at most what was promised. */
	while (len < (size_t)st.st_size && (n = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	*ret_buf = buf;
	*ret_len = len;
	buf = NULL;
	r = 0;
out:
	free(buf);
	close(fd);
	return r;
}

static int verify_fetch_file(const char *path, size_t max, struct verify_fetched *ret, char *err, size_t err_len)
{
	/* A symbolic link is followed: the path is the caller's choice. */
	int r = verify_read_file(path, 0, max, &ret->body, &ret->body_len);

	if (r == -EINVAL)
		snprintf(err, err_len, "not a regular file");
	else if (r == -E2BIG)
		snprintf(err, err_len, "the file is over %zu bytes", max);
	else if (r < 0)
		snprintf(err, err_len, "cannot open the file: %s", strerror(-r));
	else
		ret->status = VERIFY_FETCH_OK;
	return r;
}

/* ---- http(s) ------------------------------------------------------------ */

struct verify_http {
	struct event_base *base;
	size_t max;
	size_t max_input;                 /* bytes the connection may buffer */
	int done;
	int overflow;                     /* it buffered more: given up */
	int failed;                       /* no response, see error */
	int has_error;
	enum evhttp_request_error error;
	int status;                       /* the HTTP status */
	struct verify_fetched out;
};

static void verify_http_error(enum evhttp_request_error error, void *arg)
{
	struct verify_http *h = arg;

	h->has_error = 1;
	h->error = error;
}

/* Copies the headers the cache rules need; values over their bounds are
 * left out, as if absent (an over-long ETag is only a missed 304). */
static int verify_http_headers(struct evhttp_request *req, struct verify_fetched *out)
{
	struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
	struct evkeyval *h;
	char cache[VERIFY_CACHE_CONTROL_MAX + 1] = "";
	int have_cache = 0;

	/* Several Cache-Control lines are one list (RFC 9110 §5.3). */
	TAILQ_FOREACH(h, headers, next) {
		if (strcasecmp(h->key, "Cache-Control") == 0) {
			size_t used = strlen(cache);
			if (used + 2 + strlen(h->value) <= VERIFY_CACHE_CONTROL_MAX)
				snprintf(cache + used, sizeof(cache) - used, "%s%s", have_cache ? ", " : "", h->value);
			else
				/* Part of the list lost: assume the worst of it. */
				snprintf(cache, sizeof(cache), "no-cache");
			have_cache = 1;
		} else if (strcasecmp(h->key, "Age") == 0 && out->age == NULL && strlen(h->value) <= VERIFY_AGE_MAX) {
			if ((out->age = strdup(h->value)) == NULL)
				return -ENOMEM;
		} else if (strcasecmp(h->key, "ETag") == 0 && out->etag[0] == '\0' &&
			   strlen(h->value) <= VERIFY_ETAG_MAX) {
			snprintf(out->etag, sizeof(out->etag), "%s", h->value);
		}
	}
	if (have_cache && (out->cache_control = strdup(cache)) == NULL)
		return -ENOMEM;
	return 0;
}

/* evbuffer_cb_func on the connection's input.  evhttp bounds the headers
 * and the body, but buffers a chunk-size line until its CRLF: endless hex
 * digits would grow it (and the rescans of it) until the timeout. */
static void verify_http_input(struct evbuffer *input, const struct evbuffer_cb_info *info, void *arg)
{
	struct verify_http *h = arg;

	if (info->n_added > 0 && !h->overflow && evbuffer_get_length(input) > h->max_input) {
		h->overflow = 1;
		event_base_loopbreak(h->base);
	}
}

static void verify_http_done(struct evhttp_request *req, void *arg)
{
	struct verify_http *h = arg;
	struct evbuffer *body;
	size_t len;

	h->done = 1;
	event_base_loopbreak(h->base);
	if (req == NULL || (h->status = evhttp_request_get_response_code(req)) == 0) {
		h->failed = 1;
		return;
	}
	if (h->status == 304) {
		h->out.status = VERIFY_FETCH_NOT_MODIFIED;
	} else if (h->status == 200) {
		body = evhttp_request_get_input_buffer(req);
		len = evbuffer_get_length(body);
		if (len > h->max) {
			h->has_error = 1;
			h->error = EVREQ_HTTP_DATA_TOO_LONG;
			h->failed = 1;
			return;
		}
		h->out.status = VERIFY_FETCH_OK;
		h->out.body = malloc(len + 1);
		if (h->out.body == NULL) {
			h->failed = 1;
			return;
		}
		evbuffer_remove(body, h->out.body, len);
		h->out.body[len] = '\0';
		h->out.body_len = len;
	} else {
		return;   /* the status says it */
	}
	if (verify_http_headers(req, &h->out) < 0)
		h->failed = 1;
}

static int verify_is_ip_literal(const char *host)
{
	unsigned char addr[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

/* A client context that always verifies the peer: the system trust store
 * or ca_file, TLS 1.2 at least. */
static SSL_CTX *verify_tls_ctx(const char *ca_file, char *err, size_t err_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		snprintf(err, err_len, "TLS: cannot create a context");
		return NULL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    (ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
		snprintf(err, err_len, "TLS: cannot load the trust anchors%s%s", ca_file ? " of " : "",
			 ca_file ? ca_file : "");
		SSL_CTX_free(ctx);
		ERR_clear_error();
		return NULL;
	}
	return ctx;
}

/* The TLS half of a connection to host: SNI and the name (or address)
 * the certificate must carry. */
static struct bufferevent *verify_tls_bev(struct event_base *base, SSL_CTX *ctx, const char *host, char *err,
					  size_t err_len)
{
	struct bufferevent *bev;
	SSL *ssl = SSL_new(ctx);
	int ok;

	if (ssl == NULL) {
		snprintf(err, err_len, "TLS: cannot create a connection");
		return NULL;
	}
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (verify_is_ip_literal(host))
		ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
	else
		ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
	if (!ok) {
		snprintf(err, err_len, "TLS: cannot set the expected host name");
		SSL_free(ssl);
		ERR_clear_error();
		return NULL;
	}
	/* BEV_OPT_CLOSE_ON_FREE hands ssl to the bufferevent; on failure it
	 * is still ours. */
	bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
					     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		snprintf(err, err_len, "TLS: cannot create a connection");
		SSL_free(ssl);
		return NULL;
	}
	/* Many servers close without close_notify; a cut body is caught by
	 * Content-Length or chunking, and a JWKS cut short is no JSON. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* Why a request got no usable answer, in err; the errno value. */
static int verify_http_failure(const struct verify_http *h, SSL *ssl, const struct verify_source *src,
			       int64_t timeout_ms, char *err, size_t err_len)
{
	long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

	if (ssl != NULL && verify != X509_V_OK) {
		snprintf(err, err_len, "TLS: certificate of %s refused: %s", src->host,
			 X509_verify_cert_error_string(verify));
		return -EACCES;
	}
	if (h->overflow) {
		snprintf(err, err_len, "over %zu bytes received unparsed (a chunk-size line without end)", h->max_input);
		return -E2BIG;
	}
	if (!h->done || (h->has_error && h->error == EVREQ_HTTP_TIMEOUT)) {
		snprintf(err, err_len, "no answer from %s:%d within %lld ms", src->host, src->port, (long long)timeout_ms);
		return -ETIMEDOUT;
	}
	if (h->has_error && h->error == EVREQ_HTTP_DATA_TOO_LONG) {
		snprintf(err, err_len, "the body is over %zu bytes", h->max);
		return -E2BIG;
	}
	if (h->failed && h->status == 0) {
		snprintf(err, err_len, "%s %s:%d failed%s", h->has_error && h->error == EVREQ_HTTP_EOF ?
			 "the connection to" : "connecting to", src->host, src->port,
			 src->scheme == VERIFY_HTTPS ? " (or its TLS handshake)" : "");
		return -ECONNREFUSED;
	}
	if (h->failed)
		return -ENOMEM;
	snprintf(err, err_len, "HTTP status %d (want 200)", h->status);
	return -EPROTO;
}

/* One GET on a private event_base: the caller's own loops (if any) are
 * never touched, and nothing outlives the call. */
static int verify_fetch_http(const struct verify_source *src, const char *ca_file, const char *etag,
			     int64_t timeout_ms, size_t max, struct verify_fetched *ret, char *err, size_t err_len)
{
	struct verify_http h = { .max = max, .max_input = max + VERIFY_MAX_HEADERS_BYTES + VERIFY_INPUT_SLACK };
	struct evbuffer *input = NULL;
	struct evbuffer_cb_entry *input_cb = NULL;
	struct evdns_base *dns = NULL;
	struct evhttp_connection *conn = NULL;
	struct evhttp_request *req;
	struct evkeyvalq *out;
	struct bufferevent *bev = NULL;
	SSL_CTX *tls = NULL;
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	char host_header[VERIFY_URL_MAX + 16];
	int r = -ENOMEM, default_port;

	h.base = event_base_new();
	if (h.base == NULL)
		goto out;
	/* A name is resolved on the loop, so that the timeout covers it; an
	 * address needs no resolver (and a machine may have none). */
	if (!verify_is_ip_literal(src->host))
		dns = evdns_base_new(h.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (src->scheme == VERIFY_HTTPS) {
		r = -EACCES;
		tls = verify_tls_ctx(ca_file, err, err_len);
		if (tls == NULL || (bev = verify_tls_bev(h.base, tls, src->host, err, err_len)) == NULL)
			goto out;
		r = -ENOMEM;
	}
	conn = evhttp_connection_base_bufferevent_new(h.base, dns, bev, src->host, (unsigned short)src->port);
	if (conn == NULL) {
		/* Whether libevent freed bev is not documented: leaking it on
		 * this out-of-memory path beats freeing it twice. */
		goto out;
	}
	evhttp_connection_set_timeout_tv(conn, &tv);
	evhttp_connection_set_max_body_size(conn, (ev_ssize_t)max);
	evhttp_connection_set_max_headers_size(conn, VERIFY_MAX_HEADERS_BYTES);
	input = bufferevent_get_input(evhttp_connection_get_bufferevent(conn));
	input_cb = evbuffer_add_cb(input, verify_http_input, &h);
	if (input_cb == NULL)
		goto out;
	req = evhttp_request_new(verify_http_done, &h);
	if (req == NULL)
		goto out;
	evhttp_request_set_error_cb(req, verify_http_error);
	default_port = src->port == (src->scheme == VERIFY_HTTPS ? 443 : 80);
	snprintf(host_header, sizeof(host_header), "%s%s%s", strchr(src->host, ':') ? "[" : "", src->host,
		 strchr(src->host, ':') ? "]" : "");
	if (!default_port)
		snprintf(host_header + strlen(host_header), sizeof(host_header) - strlen(host_header), ":%d",
			 src->port);
	out = evhttp_request_get_output_headers(req);
	if (evhttp_add_header(out, "Host", host_header) < 0 ||
	    evhttp_add_header(out, "Accept", "application/jwk-set+json, application/json") < 0 ||
	    evhttp_add_header(out, "User-Agent", "hsmjwt-verify/" HSMJWT_VERSION) < 0 ||
	    evhttp_add_header(out, "Connection", "close") < 0) {
		evhttp_request_free(req);
		goto out;
	}
	/* A server's ETag that libevent would refuse to send (a CR or LF in it)
	 * only costs the 304. */
	if (etag[0] != '\0')
		(void)evhttp_add_header(out, "If-None-Match", etag);
	/* evhttp_make_request frees req when it fails. */
	if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, src->path) < 0) {
		snprintf(err, err_len, "cannot send the request to %s:%d", src->host, src->port);
		r = -EIO;
		goto out;
	}
	event_base_loopexit(h.base, &tv);
	event_base_dispatch(h.base);
	if (!h.done || h.overflow || h.failed || (h.status != 200 && h.status != 304)) {
		r = verify_http_failure(&h, bev ? bufferevent_openssl_get_ssl(bev) : NULL, src, timeout_ms, err,
					err_len);
		goto out;
	}
	*ret = h.out;
	memset(&h.out, 0, sizeof(h.out));
	r = 0;
out:
	if (r == -ENOMEM && err[0] == '\0')
		snprintf(err, err_len, "out of memory");
	if (input_cb != NULL)
		evbuffer_remove_cb_entry(input, input_cb);
	/* Freeing the connection cancels a request still pending (timeout). */
	if (conn != NULL)
		evhttp_connection_free(conn);
	if (dns != NULL)
		evdns_base_free(dns, 0);
	if (h.base != NULL)
		event_base_free(h.base);
	SSL_CTX_free(tls);
	verify_fetched_clear(&h.out);
	ERR_clear_error();
	return r;
}

int verify_fetch(const struct verify_source *source, const char *ca_file, const char *etag, int64_t timeout_ms,
		 size_t max_bytes, struct verify_fetched *ret, char *err, size_t err_len)
{
	sigset_t pipe_set, old, pending;
	struct timespec zero = { 0, 0 };
	int pipe_was_pending, r;

	err[0] = '\0';
	if (source->scheme == VERIFY_FILE)
		return verify_fetch_file(source->path, max_bytes, ret, err, err_len);
	/* A peer that closes while we write would raise SIGPIPE, whose default
	 * ends the process: blocked for this thread during the call, and a
	 * SIGPIPE it raised is taken back, so that the process's own handling
	 * stays as it was. */
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	sigpending(&pending);
	pipe_was_pending = sigismember(&pending, SIGPIPE);
	r = verify_fetch_http(source, ca_file, etag ? etag : "", timeout_ms, max_bytes, ret, err, err_len);
	if (!pipe_was_pending)
		while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE)
			;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}
