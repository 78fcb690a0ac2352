/* The http module's check of a request's framing, before any handler runs:
 * what evhttp 2.1 lets through although RFC 9112 says to refuse it, each
 * a way for a client and a proxy in front of us to disagree on where a
 * request ends (request smuggling) or what it is about.  A pure function
 * over what evhttp parsed, so that a unit test drives it. */
#include "hsmjwt/http.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>

/* RFC 9110 §5.6.2: tchar. */
static int http_request_tchar(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* RFC 3986 §3.2.2 and §3.2.3: reg-name or IP literal, and a port. */
static int http_request_host_char(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch != '\0' && strchr("-._~!$&'()*+,;=:[]%", ch) != NULL);
}

static int http_request_all(const char *s, int (*ok)(unsigned char))
{
	for (; *s != '\0'; s++)
		if (!ok((unsigned char)*s))
			return 0;
	return 1;
}

/* RFC 9110 §5.5: field-value is VCHAR, obs-text, SP and HTAB; a control
 * character would reach the handlers (evhttp has cut the value at a NUL
 * already: that much cannot be seen here). */
static int http_request_value_ok(const char *s)
{
	for (; *s != '\0'; s++)
		if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
			return 0;
	return 1;
}

/* RFC 9112 §3.2: the request-target, one token of visible ASCII. */
static int http_request_target_ok(const char *uri)
{
	for (; *uri != '\0'; uri++)
		if ((unsigned char)*uri <= 0x20 || (unsigned char)*uri >= 0x7f)
			return 0;
	return 1;
}

static int http_request_refuse(int status, const char *description, int *ret_status, const char **ret_description)
{
	*ret_status = status;
	*ret_description = description;
	return -EINVAL;
}

int http_request_check(int major, int minor, const char *uri, const struct evkeyvalq *headers, int *ret_status,
		       const char **ret_description)
{
	const struct evkeyval *h;
	const char *length = NULL;
	unsigned hosts = 0;

	if (uri == NULL || !http_request_target_ok(uri))
		return http_request_refuse(400, "the request target holds a space, a control or a non-ASCII byte",
					   ret_status, ret_description);
	/* RFC 9112 §3: 414 for a target longer than we parse; evhttp answers
	 * a request line past HTTP_MAX_HEADERS_SIZE itself, with a 400. */
	if (strlen(uri) > HTTP_MAX_URI)
		return http_request_refuse(414, "the request target is too long", ret_status, ret_description);
	TAILQ_FOREACH(h, headers, next) {
		/* RFC 9112 §5.1: whitespace before the colon ("Content-Length :")
		 * is a name another parser may read differently. */
		if (h->key[0] == '\0' || !http_request_all(h->key, http_request_tchar))
			return http_request_refuse(400, "a header field name is not a token", ret_status,
						   ret_description);
		if (!http_request_value_ok(h->value))
			return http_request_refuse(400, "a header field value holds a control character", ret_status,
						   ret_description);
		if (strcasecmp(h->key, "Host") == 0) {
			hosts++;
			if (!http_request_all(h->value, http_request_host_char))
				return http_request_refuse(400, "the Host header is not a host and port", ret_status,
							   ret_description);
		} else if (strcasecmp(h->key, "Content-Length") == 0) {
			/* RFC 9112 §6.3: 1*DIGIT; copies that disagree leave
			 * the body's end to whoever reads which. */
			if (h->value[0] == '\0' || strspn(h->value, "0123456789") != strlen(h->value) ||
			    (length != NULL && strcmp(length, h->value) != 0))
				return http_request_refuse(400, "Content-Length is not one decimal number", ret_status,
							   ret_description);
			length = h->value;
		} else if (strcasecmp(h->key, "Transfer-Encoding") == 0) {
			/* Any transfer coding, chunked too: evhttp 2.1 reads
			 * chunk sizes RFC 9112 §7.1 refuses ("0x3", " 3 ")
			 * and refuses a legal extension ("3;x=y"), so a proxy
			 * in front may split the body elsewhere (chunk-size
			 * smuggling), and decodes chunked from HTTP/1.0, which
			 * §6.1 calls faulty.  The API's bodies are small
			 * JSON: a Content-Length is all it needs (RFC 9110
			 * §15.5.12). */
			return http_request_refuse(411, "a Content-Length is required: Transfer-Encoding is not accepted",
						   ret_status, ret_description);
		}
	}
	/* RFC 9112 §3.2: an HTTP/1.1 request without Host, or any with two. */
	if (hosts > 1 || (hosts == 0 && (major > 1 || (major == 1 && minor >= 1))))
		return http_request_refuse(400, "the request needs exactly one Host header", ret_status,
					   ret_description);
	return 0;
}

const char *http_request_path(const char *uri)
{
	size_t scheme;
	const char *p;

	if (uri == NULL || uri[0] == '/')
		return uri;
	/* RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
	scheme = strspn(uri, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
	if (scheme == 0 || strncmp(uri + scheme, "://", 3) != 0)
		return uri;
	p = uri + scheme + 3;
	p += strcspn(p, "/?#");
	return *p == '/' ? p : uri;
}
