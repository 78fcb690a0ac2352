/* form: application/x-www-form-urlencoded bodies — decoding ('+', %XX),
 * empty pairs, and every refusal of the header (bad escape, NUL, invalid
 * UTF-8, empty name, repeated name, too many fields) with the output left
 * untouched, a refusal's log line that never quotes the body, and the
 * decoding buffer wiped (OPENSSL_cleanse, interposed below) before it is
 * freed, whether the parse succeeds or not. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "fixture.h"
#include "hsmjwt/form.h"
#include "hsmjwt/log.h"

#define SENTINEL ((json_t *)(uintptr_t)0x1)

/* ---- OPENSSL_cleanse, interposed: the executable's definition is the one
 * form.c links to.  It wipes as the real one does, and counts the wiped
 * buffers that held cleanse_watch. ------------------------------------- */

static const char *cleanse_watch;
static int cleanse_hits;

void OPENSSL_cleanse(void *ptr, size_t len)
{
	volatile unsigned char *p = ptr;

	if (cleanse_watch != NULL && ptr != NULL && memmem(ptr, len, cleanse_watch, strlen(cleanse_watch)) != NULL)
		cleanse_hits++;
	for (size_t i = 0; i < len; i++)
		p[i] = 0;
}

/* Parses buf[0..len) and expects the object that the JSON text want
 * spells, exactly (json_equal: same members, same values). */
static void assert_parses_len(const char *buf, size_t len, const char *want)
{
	json_t *got = NULL, *expected;
	json_error_t error;

	expected = json_loads(want, 0, &error);
	assert_non_null(expected);
	assert_int_equal(form_parse(buf, len, &got), 0);
	assert_non_null(got);
	if (!json_equal(got, expected)) {
		char *dump = json_dumps(got, JSON_SORT_KEYS);

		print_error("form %.*s gave %s, expected %s\n", (int)len, buf, dump, want);
		free(dump);
		fail();
	}
	json_decref(got);
	json_decref(expected);
}

static void assert_parses(const char *buf, const char *want)
{
	assert_parses_len(buf, strlen(buf), want);
}

static void assert_refused_len(const char *buf, size_t len)
{
	json_t *got = SENTINEL;

	assert_int_equal(form_parse(buf, len, &got), -EINVAL);
	assert_ptr_equal(got, SENTINEL);
}

static void assert_refused(const char *buf)
{
	assert_refused_len(buf, strlen(buf));
}

static void test_decoding(void **state)
{
	/* The header's own example. */
	assert_parses("a=1&b=x+y%21", "{\"a\": \"1\", \"b\": \"x y!\"}");
	/* '+' is a space; an encoded '+' is a plus, in either hex case. */
	assert_parses("q=a+b", "{\"q\": \"a b\"}");
	assert_parses("q=a%2Bb", "{\"q\": \"a+b\"}");
	assert_parses("q=a%2bb", "{\"q\": \"a+b\"}");
	assert_parses("q=+++", "{\"q\": \"   \"}");
	assert_parses("q=%20", "{\"q\": \" \"}");
	/* Names are decoded like values. */
	assert_parses("grant+type=x&client%5Fid=c", "{\"grant type\": \"x\", \"client_id\": \"c\"}");
	/* Only the first '=' splits; encoded '&' and '=' are data. */
	assert_parses("a=b=c", "{\"a\": \"b=c\"}");
	assert_parses("a=%26%3D&%3D=x", "{\"a\": \"&=\", \"=\": \"x\"}");
	/* Every byte value but NUL round-trips through %XX; here the ASCII
	 * ones a token or a secret may hold. */
	assert_parses("t=eyJ.a-b_c~d%2F%3F%23%25", "{\"t\": \"eyJ.a-b_c~d/?#%\"}");
	/* UTF-8, encoded or raw. */
	assert_parses("n=%C3%A9t%C3%A9", "{\"n\": \"\\u00e9t\\u00e9\"}");
	assert_parses("n=\xc3\xa9t\xc3\xa9", "{\"n\": \"\\u00e9t\\u00e9\"}");
	assert_parses("%E2%82%AC=%F0%9F%98%80", "{\"\\u20ac\": \"\\ud83d\\ude00\"}");
	assert_parses("scope=openid%20profile", "{\"scope\": \"openid profile\"}");
}

static void test_empty_pairs_and_values(void **state)
{
	assert_parses("", "{}");
	assert_parses_len(NULL, 0, "{}");
	assert_parses("&", "{}");
	assert_parses("&&&", "{}");
	assert_parses("a=1&&b=2", "{\"a\": \"1\", \"b\": \"2\"}");
	assert_parses("a=1&", "{\"a\": \"1\"}");
	assert_parses("&a=1", "{\"a\": \"1\"}");
	/* "a" alone is a = "", and so is "a=". */
	assert_parses("a", "{\"a\": \"\"}");
	assert_parses("a=", "{\"a\": \"\"}");
	assert_parses("a&b=&c", "{\"a\": \"\", \"b\": \"\", \"c\": \"\"}");
	/* The buffer is len bytes, not a C string: what follows is not read. */
	assert_parses_len("a=1&b=2", 3, "{\"a\": \"1\"}");
	assert_parses_len("a=1%", 3, "{\"a\": \"1\"}");
}

static void test_bad_escapes(void **state)
{
	static const char *const bad[] = {
		"%zz", "a=%zz", "a=%4", "a=%", "a=1%", "a=%%", "a=%g0", "a=%0g", "a=% 1", "a=%+1",
		"%=1", "%4=1", "a=%4&b=1", "a=%-1", "a=%0x",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_refused(bad[i]);
	/* A '%' cut off by len is as incomplete as at the end of the text. */
	assert_refused_len("a=%41", 4);
}

static void test_nul_refused(void **state)
{
	assert_refused("a=%00");
	assert_refused("a=x%00y");
	assert_refused("%00=1");
	assert_refused("a%00b=1");
	/* Raw NUL bytes inside len too. */
	assert_refused_len("a=x\0y", 5);
	assert_refused_len("a\0=1", 4);
	assert_refused_len("\0", 1);
}

static void test_invalid_utf8_refused(void **state)
{
	static const char *const bad[] = {
		"a=%ff",             /* never in UTF-8 */
		"a=%FF",
		"a=%80",             /* lone continuation byte */
		"a=%C3",             /* truncated sequence */
		"a=%C3%28",          /* bad continuation */
		"a=%C0%80",          /* overlong NUL */
		"a=%C1%BF",          /* overlong */
		"a=%E0%80%AF",       /* overlong '/' */
		"a=%ED%A0%80",       /* UTF-16 surrogate */
		"a=%F4%90%80%80",    /* beyond U+10FFFF */
		"a=\xff",            /* raw */
		"a=\xc3",
		"%ff=1",             /* in the name */
		"\xff=1",
		"%C3%28",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_refused(bad[i]);
	/* The largest code point and the last before the surrogates pass. */
	assert_parses("a=%F4%8F%BF%BF&b=%ED%9F%BF", "{\"a\": \"\\udbff\\udfff\", \"b\": \"\\ud7ff\"}");
}

static void test_empty_name_refused(void **state)
{
	assert_refused("=1");
	assert_refused("=");
	assert_refused("a=1&=2");
	assert_refused("&=&");
}

static void test_repeated_name_refused(void **state)
{
	assert_refused("a=1&a=2");
	assert_refused("a=1&a=1");
	assert_refused("a&a");
	assert_refused("a=&a=");
	/* Repeats are judged after decoding. */
	assert_refused("a=1&%61=2");
	assert_refused("a+b=1&a%20b=2");
	assert_refused("client_id=x&scope=y&client_id=x");
	/* Case matters: two names. */
	assert_parses("a=1&A=2", "{\"a\": \"1\", \"A\": \"2\"}");
}

/* "f0=0&f1=1&...": n fields, each with a distinct name. */
static char *fields_body(size_t n, const char *sep)
{
	size_t cap = n * (16 + strlen(sep)) + 1, len = 0;
	char *body = malloc(cap);

	assert_non_null(body);
	body[0] = '\0';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(body + len, cap - len, "%sf%zu=%zu", i ? sep : "", i, i);
	return body;
}

static void test_field_limit(void **state)
{
	json_t *got = NULL;
	char *body;

	assert_int_equal(FORM_MAX_FIELDS, 32);
	body = fields_body(FORM_MAX_FIELDS, "&");
	assert_int_equal(form_parse(body, strlen(body), &got), 0);
	assert_int_equal(json_object_size(got), FORM_MAX_FIELDS);
	assert_string_equal(json_string_value(json_object_get(got, "f31")), "31");
	json_decref(got);
	free(body);

	body = fields_body(FORM_MAX_FIELDS + 1, "&");
	assert_refused(body);
	free(body);

	/* Empty pairs are not fields: 32 fields among many '&' pass. */
	body = fields_body(FORM_MAX_FIELDS, "&&&&");
	assert_int_equal(form_parse(body, strlen(body), &got), 0);
	assert_int_equal(json_object_size(got), FORM_MAX_FIELDS);
	json_decref(got);
	free(body);

	/* Valueless names count too. */
	body = fields_body(FORM_MAX_FIELDS, "&");
	{
		size_t len = strlen(body);
		char *more = malloc(len + 3);

		assert_non_null(more);
		memcpy(more, body, len);
		memcpy(more + len, "&x", 3);
		assert_refused(more);
		free(more);
	}
	free(body);
}

/* Every jansson allocation of a parse fails in turn: each failure is
 * -ENOMEM (a 500), never -EINVAL (a 400 blaming the client, which is what
 * a bare NULL from json_stringn would suggest), and leaks nothing (ASan). */
static void test_out_of_memory_is_not_a_bad_request(void **state)
{
	static const char body[] = "grant_type=client_credentials&scope=a+b&n=%C3%A9";
	json_t *got = SENTINEL;
	int r = -ENOMEM, failures = 0;

	for (int budget = 0; r == -ENOMEM && budget < 1000; budget++) {
		fixture_json_fail_after(budget);
		r = form_parse(body, sizeof(body) - 1, &got);
		if (r == -ENOMEM) {
			assert_ptr_equal(got, SENTINEL);
			failures++;
		}
	}
	fixture_json_alloc_restore();
	/* One object, three names, three values at least. */
	assert_true(failures >= 7);
	assert_int_equal(r, 0);
	assert_int_equal(json_object_size(got), 3);
	assert_string_equal(json_string_value(json_object_get(got, "n")), "\xc3\xa9");
	json_decref(got);
}

static const char secret_body[] = "client_secret=hunter2-very-secret&token=eyJsecret&client_secret=again";

static int parse_secret_body(void *arg)
{
	json_t *got = SENTINEL;
	int r;

	(void)arg;
	log_set_level(LOG_LEVEL_DEBUG);
	r = form_parse(secret_body, sizeof(secret_body) - 1, &got);
	log_set_level(LOG_LEVEL_INFO);
	return got == SENTINEL ? r : 1;
}

static void test_refusal_log_never_quotes_the_body(void **state)
{
	const char *text;
	int r = 0;

	text = fixture_capture_stderr(parse_secret_body, NULL, &r);
	assert_int_equal(r, -EINVAL);
	assert_non_null(strstr(text, "form body refused"));
	assert_non_null(strstr(text, "reason=repeated_name"));
	assert_null(strstr(text, "hunter2"));
	assert_null(strstr(text, "eyJsecret"));
	assert_null(strstr(text, "again"));
	assert_null(strstr(text, "client_secret"));
}

/* The decoding buffer holds the last pair decoded — here a refresh token,
 * and a code repeated, which is refused once it is decoded — and is wiped
 * before it is freed. */
static void test_scratch_wiped(void **state)
{
	static const char ok[] = "grant_type=refresh_token&refresh_token=eyJ.rt%2Dsecret.sig";
	static const char bad[] = "grant_type=authorization_code&code=Qm9vc2VjcmV0Y29kZQ&code=Qm9vc2VjcmV0Y29kZQ";
	json_t *got = NULL;

	cleanse_watch = "eyJ.rt-secret.sig";
	cleanse_hits = 0;
	assert_int_equal(form_parse(ok, sizeof(ok) - 1, &got), 0);
	assert_string_equal(json_string_value(json_object_get(got, "refresh_token")), "eyJ.rt-secret.sig");
	assert_int_equal(cleanse_hits, 1);
	json_decref(got);
	got = SENTINEL;
	cleanse_watch = "Qm9vc2VjcmV0Y29kZQ";
	cleanse_hits = 0;
	assert_int_equal(form_parse(bad, sizeof(bad) - 1, &got), -EINVAL);
	assert_ptr_equal(got, SENTINEL);
	assert_int_equal(cleanse_hits, 1);
	cleanse_watch = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decoding),
		cmocka_unit_test(test_empty_pairs_and_values),
		cmocka_unit_test(test_bad_escapes),
		cmocka_unit_test(test_nul_refused),
		cmocka_unit_test(test_invalid_utf8_refused),
		cmocka_unit_test(test_empty_name_refused),
		cmocka_unit_test(test_repeated_name_refused),
		cmocka_unit_test(test_field_limit),
		cmocka_unit_test(test_out_of_memory_is_not_a_bad_request),
		cmocka_unit_test(test_refusal_log_never_quotes_the_body),
		cmocka_unit_test(test_scratch_wiped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
