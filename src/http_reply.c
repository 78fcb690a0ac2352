/* The http module's replies (SPEC §4's error form, Retry-After, the
 * Bearer challenge, HEAD), request bodies (JSON and forms, bounded) and
 * each request's log line: what handlers call, whatever server runs them. */
#include "hsmjwt/http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>

#include "hsmjwt/api.h"
#include "hsmjwt/form.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

#define HTTP_REALM "hsmjwt"

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
	/* Absolute-form or not, the path's rules below apply. */
	const char *uri = http_request_path(evhttp_request_get_uri(req));
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
