/* http: the HTTP front of the daemon on libevent's evhttp.
 *
 * `workers` threads, each with its own event base, its own listening socket
 * per address (SO_REUSEPORT, so the kernel balances connections: one shared
 * socket left whole backlogs to one thread) and its own token session.
 * Because SO_REUSEPORT would as quietly share the port with a second daemon,
 * each address is first bound once without it: an address someone else
 * holds fails the start.
 * listen = systemd (socket activation): no address of its own; the
 * listening TCP sockets systemd passed (LISTEN_FDS) are taken instead, each
 * worker accepting on its own dup of every one, and none probed: systemd
 * owns them.  Without them http_start fails (-ENOENT), saying so.
 * Every connection is bounded: header size, body size, idle time, the
 * time a whole request may take to arrive (HTTP_REQUEST_SECONDS), the
 * share of max_connections one client address may hold (all but a
 * sixteenth: the connections past it are closed at once); and
 * their number: the workers together hold at most max_connections (one
 * count for all; a worker that accepts while the others are being told to
 * stop may take it one over, so at most workers - 1 over) — at that count
 * every worker turns its listeners off, the kernel's backlog keeping the
 * next ones, until a connection closes (one log line per episode).  The
 * admin_listen thread has a limit of its own, 64, outside max_connections.
 * Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), accept()
 * would fail again at once for as long as a connection waits: the failing
 * listener pauses instead, 100 ms doubling to 2 s until a connection is
 * accepted again, with one log line per episode.
 * libevent's own messages go to the log (msg="libevent" detail="..."),
 * like the server's other noisy lines at most 10 a second, the rest counted
 * in one "suppressed=K" line. */
#ifndef HSMJWT_HTTP_H
#define HSMJWT_HTTP_H

#include <event2/http.h>
#include <jansson.h>
#include <stddef.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/keyring.h"
#include "hsmjwt/keys.h"
#include "hsmjwt/registry.h"

struct api_outcome;

#define HTTP_MAX_HEADERS_SIZE 32768   /* an Authorization header carries up to 16 KiB */
#define HTTP_TIMEOUT_SECONDS  10
/* A request's headers and body must arrive whole within this many seconds
 * of its connection's start or of the previous reply on it: evhttp's
 * timeout restarts at every byte, so a client sending one byte every few
 * seconds (slowloris) would hold its connection for ever.  Three idle
 * timeouts, and room for a max_body at a few KB/s. */
#define HTTP_REQUEST_SECONDS  30
/* Longest request target served (414 past it): a path, a jti, a query of
 * a few parameters; the rest of the header room is for the Authorization. */
#define HTTP_MAX_URI          8192

struct http_server;

/* Binds every listen address once per worker and starts the workers, which
 * take the key set from keyring and the newest config version from live
 * (config.h) for each request; what is built once (sockets, workers, body
 * limit) follows live's boot version.  live, hsm, keyring and registry must
 * outlive the server. */
int http_start(struct config_live *live, struct hsm *hsm, struct keyring *keyring, struct registry *registry,
	       struct http_server **ret_server);
/* Shuts the public listening sockets at once, from the calling thread (new
 * connections are refused, however long a worker stays in the token; with
 * listen = systemd the passed sockets stay systemd's and keep listening),
 * then GET /health answers 503 "stopping" (api.h) there and on
 * admin_listen.  Stops the auto-renewal thread (renew.h: the server starts
 * it), ends the open event streams, and waits (at most 10 s from the call,
 * CLOCK_MONOTONIC) until every connection of the workers has closed and no
 * reply is held back for the registry: each reply made from then on says
 * "Connection: close" (unless the next request is there already,
 * pipelined), a connection between requests is closed, and a request
 * partly received is read and answered.  Then it lets each worker finish
 * its loop and joins them; the loops and their contexts
 * stay allocated, so a registry callback still in flight
 * (a disk stuck past the 10 s) lands on a live event base and is dropped
 * with it.  Shut down in this order: http_quiesce, registry_close,
 * http_stop. */
void http_quiesce(struct http_server *server);
/* http_quiesce if not done yet, then frees everything. */
void http_stop(struct http_server *server);

/* evhttp_connection_set_closecb for a handler on a server connection:
 * the server keeps the connection's own closecb (it counts connections
 * for max_connections) and calls cb from it.  One per connection, as
 * evhttp's; cb NULL removes it.  On the worker's loop. */
void http_connection_set_closecb(struct evhttp_connection *evcon, void (*cb)(struct evhttp_connection *, void *),
				 void *arg);

/* The framing of a request as evhttp parsed it (HTTP/major.minor, the
 * request target, the headers), checked against RFC 9112 where evhttp 2.1
 * is lenient: a request target that is not one token of visible ASCII or
 * longer than HTTP_MAX_URI (414), a header name that is not a token, a
 * control character in a value, no Host in HTTP/1.1 or two Hosts, a
 * Content-Length that is not digits or whose copies disagree (400); any
 * Transfer-Encoding (411: a Content-Length is required).  0, or -EINVAL
 * with the status (400, 411 or 414) and a static description.  A refused
 * request's reply closes the connection: where its body ends is in doubt. */
int http_request_check(int major, int minor, const char *uri, const struct evkeyvalq *headers, int *ret_status,
		       const char **ret_description);

/* RFC 9112 §3.2.2: a server takes a request target in absolute-form
 * ("http://host/path?query") as it takes its path: the part of uri from
 * that path on.  uri itself when it is in origin-form already, or has no
 * path (then no route matches it). */
const char *http_request_path(const char *uri);

/* Sends code with body (may be NULL; not freed).  For HEAD only the headers
 * go out, with the Content-Length a GET would get: evhttp 2.1 itself would
 * write the body, which a HEAD client then reads as the next response. */
void http_send(struct evhttp_request *req, int code, struct evbuffer *body);
/* Replies: body is stolen (json_decref'd). */
void http_reply_json(struct evhttp_request *req, int code, json_t *body);
/* SPEC §4 error form {"error","error_description"}; adds Retry-After for
 * 429/503, and for 401 the challenge of a rejected credential:
 * WWW-Authenticate: Bearer realm="hsmjwt", error="<error>". */
void http_reply_error(struct evhttp_request *req, int code, const char *error, const char *description);
/* The same error form with Retry-After: seconds (0 is sent as 1), for a
 * 429 or 503 that knows when to come back (rate_limit's bucket). */
void http_reply_retry_after(struct evhttp_request *req, int code, const char *error, const char *description,
			    unsigned seconds);
/* 401 with the body {"error":"invalid_token",...} of SPEC §4.  RFC 6750
 * §3.1: the challenge carries error="invalid_token" only when token_sent (a
 * bearer token came and was rejected); a request without one gets the bare
 * WWW-Authenticate: Bearer realm="hsmjwt". */
void http_reply_unauthorized(struct evhttp_request *req, int token_sent, const char *description);

/* The request's log line (method, path without query, status, latency,
 * caller, jti).  Call it before the reply of a deferred request is sent: a
 * reply to a vanished client frees req at once. */
void http_log_request(struct evhttp_request *req, const struct api_outcome *outcome);

/* Reads a JSON request body: Content-Type application/json, at most max
 * bytes, strict JSON.  0 and *ret_body (new reference), or -EMEDIUMTYPE,
 * -EFBIG, -EINVAL (not strict JSON), -ELOOP (nested too deep) or -ENOMEM. */
int http_read_json(struct evhttp_request *req, size_t max, json_t **ret_body);
/* Like http_read_json, but application/x-www-form-urlencoded is also taken
 * (RFC 6749 §3.2, RFC 7009, RFC 7662) and read as an object of strings. */
int http_read_oauth(struct evhttp_request *req, size_t max, json_t **ret_body);
/* The answer to a failed http_read_json: sends it and returns its status. */
int http_reply_body_error(struct evhttp_request *req, int err);

#endif
