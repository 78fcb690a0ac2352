/* http_request_check and http_request_path: the framing RFC 9112 refuses
 * and evhttp 2.1 lets through, each refused with its status and nothing
 * else; the requests RFC 9112 lets through, accepted with the outputs
 * untouched; absolute-form targets reduced to their path. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <cmocka.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"

/* Headers from "Name", "value" pairs, NULL-terminated. */
static void headers_make(struct evkeyvalq *h, const char *const *kv)
{
	TAILQ_INIT(h);
	for (; kv[0] != NULL; kv += 2)
		assert_int_equal(evhttp_add_header(h, kv[0], kv[1]), 0);
}

static void assert_refused(int major, int minor, const char *uri, const char *const *kv, int want_status)
{
	struct evkeyvalq h;
	int status = -1;
	const char *description = NULL;

	headers_make(&h, kv);
	assert_int_equal(http_request_check(major, minor, uri, &h, &status, &description), -EINVAL);
	assert_int_equal(status, want_status);
	assert_non_null(description);
	assert_true(strlen(description) > 0);
	evhttp_clear_headers(&h);
}

static void assert_accepted(int major, int minor, const char *uri, const char *const *kv)
{
	struct evkeyvalq h;
	int status = 12345;
	const char *description = "untouched";

	headers_make(&h, kv);
	assert_int_equal(http_request_check(major, minor, uri, &h, &status, &description), 0);
	assert_int_equal(status, 12345);
	assert_string_equal(description, "untouched");
	evhttp_clear_headers(&h);
}

static void test_accepted(void **state)
{
	static const char *const host[] = { "Host", "127.0.0.1:8080", NULL };
	static const char *const post[] = { "Host", "hsmjwt.example", "Content-Type", "application/json",
					    "Content-Length", "13", NULL };
	static const char *const same_twice[] = { "Host", "a", "Content-Length", "13", "Content-Length", "13", NULL };
	static const char *const empty_host[] = { "Host", "", NULL };
	static const char *const none[] = { NULL };
	static const char *const obs_text[] = { "Host", "a", "Authorization", "Bearer \xff\xfe", "X-Tab", "a\tb", NULL };

	(void)state;
	assert_accepted(1, 1, "/health", host);
	assert_accepted(1, 1, "/token", post);
	assert_accepted(1, 1, "/token", same_twice);
	/* RFC 9112 §3.2: an empty Host when the target has no authority. */
	assert_accepted(1, 1, "/health", empty_host);
	/* HTTP/1.0 has no Host requirement. */
	assert_accepted(1, 0, "/health", none);
	/* obs-text and HTAB are field-value bytes (RFC 9110 §5.5). */
	assert_accepted(1, 1, "/tokens", obs_text);
	assert_accepted(1, 1, "http://127.0.0.1/health?x=%20y", host);
}

static void test_host(void **state)
{
	static const char *const none[] = { "Accept", "*/*", NULL };
	static const char *const two[] = { "Host", "a", "host", "b", NULL };
	static const char *const slash[] = { "Host", "evil/x", NULL };
	static const char *const space[] = { "Host", "a b", NULL };
	static const char *const at[] = { "Host", "user@a", NULL };

	(void)state;
	assert_refused(1, 1, "/health", none, 400);
	assert_refused(2, 0, "/health", none, 400);
	assert_refused(1, 0, "/health", two, 400);
	assert_refused(1, 1, "/health", two, 400);
	assert_refused(1, 1, "/health", slash, 400);
	assert_refused(1, 1, "/health", space, 400);
	assert_refused(1, 1, "/health", at, 400);
}

static void test_length_and_encoding(void **state)
{
	static const char *const plus[] = { "Host", "a", "Content-Length", "+13", NULL };
	static const char *const minus[] = { "Host", "a", "Content-Length", "-1", NULL };
	static const char *const empty[] = { "Host", "a", "Content-Length", "", NULL };
	static const char *const spaced[] = { "Host", "a", "Content-Length", "1 3", NULL };
	static const char *const differ[] = { "Host", "a", "Content-Length", "5", "content-length", "6", NULL };

	(void)state;
	assert_refused(1, 1, "/token", plus, 400);
	assert_refused(1, 1, "/token", minus, 400);
	assert_refused(1, 1, "/token", empty, 400);
	assert_refused(1, 1, "/token", spaced, 400);
	assert_refused(1, 1, "/token", differ, 400);
}

/* Any Transfer-Encoding, chunked too, HTTP/1.0 too: 411, whose description
 * asks for a Content-Length. */
static void assert_length_required(int major, int minor, const char *const *kv)
{
	struct evkeyvalq h;
	int status = -1;
	const char *description = NULL;

	headers_make(&h, kv);
	assert_int_equal(http_request_check(major, minor, "/token/verify", &h, &status, &description), -EINVAL);
	assert_int_equal(status, 411);
	assert_non_null(description);
	assert_non_null(strstr(description, "Content-Length"));
	evhttp_clear_headers(&h);
}

static void test_transfer_encoding(void **state)
{
	static const char *const chunked[] = { "Host", "[::1]:80", "Transfer-Encoding", "chunked", NULL };
	static const char *const upper[] = { "Host", "a", "TRANSFER-ENCODING", "Chunked", NULL };
	static const char *const with_length[] = { "Host", "a", "Content-Length", "13", "Transfer-Encoding", "chunked",
						   NULL };
	static const char *const gzip[] = { "Host", "a", "Transfer-Encoding", "gzip", NULL };
	static const char *const gzip_chunked[] = { "Host", "a", "Transfer-Encoding", "gzip, chunked", NULL };
	static const char *const twice[] = { "Host", "a", "Transfer-Encoding", "chunked", "Transfer-Encoding",
					     "chunked", NULL };
	static const char *const empty[] = { "Host", "a", "Transfer-Encoding", "", NULL };
	static const char *const v10[] = { "Transfer-Encoding", "chunked", NULL };

	(void)state;
	assert_length_required(1, 1, chunked);
	assert_length_required(1, 1, upper);
	assert_length_required(1, 1, with_length);
	assert_length_required(1, 1, gzip);
	assert_length_required(1, 1, gzip_chunked);
	assert_length_required(1, 1, twice);
	assert_length_required(1, 1, empty);
	/* RFC 9112 §6.1: chunked in HTTP/1.0 is faulty framing. */
	assert_length_required(1, 0, v10);
}

static void test_names_and_values(void **state)
{
	static const char *const space_name[] = { "Host", "a", "Content-Length ", "5", NULL };
	static const char *const empty_name[] = { "Host", "a", "", "5", NULL };
	static const char *const slash_name[] = { "Host", "a", "X/Y", "5", NULL };
	static const char *const ctl_value[] = { "Host", "a", "X-A", "a\x01" "b", NULL };
	static const char *const del_value[] = { "Host", "a", "X-A", "a\x7f", NULL };
	static const char *const host[] = { "Host", "a", NULL };

	(void)state;
	assert_refused(1, 1, "/token", space_name, 400);
	assert_refused(1, 1, "/token", empty_name, 400);
	assert_refused(1, 1, "/token", slash_name, 400);
	assert_refused(1, 1, "/token", ctl_value, 400);
	assert_refused(1, 1, "/token", del_value, 400);
	assert_refused(1, 1, "/hea lth", host, 400);
	assert_refused(1, 1, "/hea\x01lth", host, 400);
	assert_refused(1, 1, "/h\xc3\xa9", host, 400);
}

static void test_target_length(void **state)
{
	static const char *const host[] = { "Host", "a", NULL };
	char *uri = malloc(HTTP_MAX_URI + 2);

	(void)state;
	assert_non_null(uri);
	memset(uri, 'a', HTTP_MAX_URI + 1);
	uri[0] = '/';
	uri[HTTP_MAX_URI] = '\0';
	assert_accepted(1, 1, uri, host);
	uri[HTTP_MAX_URI] = 'a';
	uri[HTTP_MAX_URI + 1] = '\0';
	assert_refused(1, 1, uri, host, 414);
	free(uri);
}

static void test_path(void **state)
{
	static const char origin[] = "/tokens/abc?x=1";

	(void)state;
	/* Origin-form is itself. */
	assert_ptr_equal(http_request_path(origin), origin);
	assert_null(http_request_path(NULL));
	assert_string_equal(http_request_path("http://127.0.0.1:8080/health"), "/health");
	assert_string_equal(http_request_path("https://h/tokens/x?limit=1"), "/tokens/x?limit=1");
	assert_string_equal(http_request_path("HTTP://h/authorize/secret"), "/authorize/secret");
	/* No path, or not absolute-form: left as it is (no route matches). */
	assert_string_equal(http_request_path("http://h"), "http://h");
	assert_string_equal(http_request_path("http://h?x=/y"), "http://h?x=/y");
	assert_string_equal(http_request_path("*"), "*");
	assert_string_equal(http_request_path("127.0.0.1:22"), "127.0.0.1:22");
	assert_string_equal(http_request_path("://h/x"), "://h/x");
	assert_string_equal(http_request_path("ht tp://h/x"), "ht tp://h/x");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accepted),
		cmocka_unit_test(test_host),
		cmocka_unit_test(test_length_and_encoding),
		cmocka_unit_test(test_transfer_encoding),
		cmocka_unit_test(test_names_and_values),
		cmocka_unit_test(test_target_length),
		cmocka_unit_test(test_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
