/* fuzz_http: http_request_check and http_request_path, the framing checks
 * every request meets before a handler runs (src/http_request.c).
 *
 * The input is what evhttp would have parsed: byte 0 the major version
 * (mod 4), byte 1 the minor (mod 10), then lines — the request target,
 * then "name:value" headers (a line without a colon is a name with an
 * empty value) — built into an evkeyvalq by hand, with no check of
 * evhttp's, so that the function meets values evhttp would never hand it
 * as well as those it would.
 *
 * Invariants: the verdict is deterministic; on success the status and
 * description are untouched; on failure the status is 400, 411 or 414
 * with a description; the refusals RFC 9112 requires are never missed (two
 * Hosts, none in HTTP/1.1, Content-Length copies that disagree or are not
 * digits, any Transfer-Encoding (chunk sizes evhttp reads leniently), a
 * control byte in a value, a target over HTTP_MAX_URI); the path of a target is the target itself
 * or a suffix of it that starts with '/'. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>

#include "fuzz.h"
#include "hsmjwt/http.h"

#define MAX_HEADERS 64

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_quiet_logs();
	return 0;
}

static char *dup_span(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);

	FUZZ_CHECK(s != NULL);
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static int has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
			return 1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evkeyvalq headers;
	struct evkeyval *h;
	const char *description = "untouched", *again_description = "untouched", *path;
	const char *length = NULL;
	char *uri;
	int major, minor, status = -1, again_status = -1, r, again;
	unsigned hosts = 0, count = 0;
	int must_refuse = 0;
	const uint8_t *p, *end, *nl;

	if (size < 2)
		return 0;
	major = data[0] % 4;
	minor = data[1] % 10;
	p = data + 2;
	end = data + size;
	nl = memchr(p, '\n', (size_t)(end - p));
	uri = dup_span(p, (size_t)((nl ? nl : end) - p));
	p = nl ? nl + 1 : end;
	TAILQ_INIT(&headers);
	while (p < end && count < MAX_HEADERS) {
		const uint8_t *line_end, *colon;

		nl = memchr(p, '\n', (size_t)(end - p));
		line_end = nl ? nl : end;
		colon = memchr(p, ':', (size_t)(line_end - p));
		h = calloc(1, sizeof(*h));
		FUZZ_CHECK(h != NULL);
		h->key = dup_span(p, (size_t)((colon ? colon : line_end) - p));
		h->value = colon ? dup_span(colon + 1, (size_t)(line_end - colon - 1)) : dup_span(p, 0);
		TAILQ_INSERT_TAIL(&headers, h, next);
		count++;
		p = nl ? nl + 1 : end;
	}

	r = http_request_check(major, minor, uri, &headers, &status, &description);
	again = http_request_check(major, minor, uri, &headers, &again_status, &again_description);
	FUZZ_CHECK(r == again && status == again_status);
	if (r == 0) {
		FUZZ_CHECK(status == -1 && strcmp(description, "untouched") == 0);
	} else {
		FUZZ_CHECK(r < 0);
		FUZZ_CHECK(status == 400 || status == 411 || status == 414);
		FUZZ_CHECK(description != NULL && description[0] != '\0');
	}

	/* What RFC 9112 requires refused, restated plainly. */
	if (strlen(uri) > HTTP_MAX_URI)
		must_refuse = 1;
	TAILQ_FOREACH(h, &headers, next) {
		if (has_control(h->value))
			must_refuse = 1;
		if (strcasecmp(h->key, "Host") == 0)
			hosts++;
		if (strcasecmp(h->key, "Transfer-Encoding") == 0)
			must_refuse = 1;
		if (strcasecmp(h->key, "Content-Length") == 0) {
			if (h->value[0] == '\0' || strspn(h->value, "0123456789") != strlen(h->value) ||
			    (length != NULL && strcmp(length, h->value) != 0))
				must_refuse = 1;
			length = h->value;
		}
	}
	if (hosts > 1 || (hosts == 0 && (major > 1 || (major == 1 && minor >= 1))))
		must_refuse = 1;
	if (must_refuse)
		FUZZ_CHECK(r < 0);

	path = http_request_path(uri);
	FUZZ_CHECK(path != NULL && path >= uri && path <= uri + strlen(uri));
	FUZZ_CHECK(path == uri || path[0] == '/');

	while ((h = TAILQ_FIRST(&headers)) != NULL) {
		TAILQ_REMOVE(&headers, h, next);
		free(h->key);
		free(h->value);
		free(h);
	}
	free(uri);
	return 0;
}
