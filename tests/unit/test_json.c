/* json: strict parsing of untrusted JSON — duplicates, depth, NUL, UTF-8,
 * trailing bytes — with the depth checked before jansson recurses. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/json.h"

#define SENTINEL ((json_t *)(uintptr_t)0x1)

/* Parses buf[0..len) and expects error r with *ret_value untouched. */
static void assert_refused_len(const char *buf, size_t len, size_t max_depth, int r)
{
	json_t *value = SENTINEL;

	assert_int_equal(json_strict_parse(buf, len, max_depth, &value), r);
	assert_ptr_equal(value, SENTINEL);
}

static void assert_refused(const char *s, int r)
{
	assert_refused_len(s, strlen(s), JSON_STRICT_MAX_DEPTH, r);
}

static json_t *parse_ok(const char *s, size_t max_depth)
{
	json_t *value = NULL;

	assert_int_equal(json_strict_parse(s, strlen(s), max_depth, &value), 0);
	assert_non_null(value);
	return value;
}

static void test_valid_values(void **state)
{
	json_t *v;

	v = parse_ok("{\"a\": [1, 2.5, \"x\", true, false, null], \"b\": {}}", JSON_STRICT_MAX_DEPTH);
	assert_true(json_is_object(v));
	assert_int_equal(json_array_size(json_object_get(v, "a")), 6);
	assert_true(json_real_value(json_array_get(json_object_get(v, "a"), 1)) == 2.5);
	json_decref(v);
	/* A single scalar is a value too (JSON_DECODE_ANY). */
	v = parse_ok("\"hello\"", JSON_STRICT_MAX_DEPTH);
	assert_string_equal(json_string_value(v), "hello");
	json_decref(v);
	v = parse_ok("42", 0);
	assert_int_equal(json_integer_value(v), 42);
	json_decref(v);
	/* Surrounding whitespace is not garbage. */
	v = parse_ok(" \n\t{\"k\":\"v\"}\r\n ", JSON_STRICT_MAX_DEPTH);
	assert_string_equal(json_string_value(json_object_get(v, "k")), "v");
	json_decref(v);
	/* Escapes and valid multibyte UTF-8 survive. */
	v = parse_ok("[\"\\u00e9\\\"\\\\\\/\", \"\xc3\xa9\xf0\x9f\x94\x91\"]", 1);
	assert_string_equal(json_string_value(json_array_get(v, 0)), "\xc3\xa9\"\\/");
	assert_string_equal(json_string_value(json_array_get(v, 1)), "\xc3\xa9\xf0\x9f\x94\x91");
	json_decref(v);
}

static void test_duplicates_rejected(void **state)
{
	assert_refused("{\"a\":1,\"a\":2}", -EINVAL);
	assert_refused("{\"a\":1,\"a\":1}", -EINVAL);
	assert_refused("{\"x\":{\"a\":1,\"b\":2,\"a\":3}}", -EINVAL);
	assert_refused("[1,{\"a\":null,\"a\":null}]", -EINVAL);
	/* Same name spelled with an escape is the same name. */
	assert_refused("{\"alg\":\"ES256\",\"al\\u0067\":\"none\"}", -EINVAL);
	/* Same name in different objects is fine. */
	json_decref(parse_ok("{\"a\":{\"a\":1},\"b\":{\"a\":2}}", JSON_STRICT_MAX_DEPTH));
}

static char *nested(const char *open, const char *inner, const char *close, size_t depth)
{
	size_t lo = strlen(open), li = strlen(inner), lc = strlen(close);
	char *s = malloc(depth * (lo + lc) + li + 1), *p = s;

	assert_non_null(s);
	for (size_t i = 0; i < depth; i++, p += lo)
		memcpy(p, open, lo);
	memcpy(p, inner, li);
	p += li;
	for (size_t i = 0; i < depth; i++, p += lc)
		memcpy(p, close, lc);
	*p = '\0';
	return s;
}

static void test_depth_limit(void **state)
{
	static const struct { const char *open, *inner, *close; } shapes[] = {
		{ "[", "", "]" },
		{ "[", "1", "]" },
		{ "{\"a\":", "{}", "}" },
		{ "{\"k\":[", "0", "]}" },
	};

	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		/* Shapes 2 and 3 add depth per repetition differently; count it. */
		size_t per = strchr(shapes[i].open, '[') && strchr(shapes[i].open, '{') ? 2 : 1;
		size_t extra = strcmp(shapes[i].inner, "{}") == 0 ? 1 : 0;
		size_t reps = (JSON_STRICT_MAX_DEPTH - extra) / per;
		char *ok = nested(shapes[i].open, shapes[i].inner, shapes[i].close, reps);
		char *deep;
		json_t *v;

		assert_int_equal(reps * per + extra, JSON_STRICT_MAX_DEPTH);
		v = parse_ok(ok, JSON_STRICT_MAX_DEPTH);
		assert_int_equal(json_depth(v), JSON_STRICT_MAX_DEPTH);
		json_decref(v);
		/* One more level: 17. */
		deep = malloc(strlen(ok) + 3);
		assert_non_null(deep);
		sprintf(deep, "[%s]", ok);
		assert_refused(deep, -E2BIG);
		free(deep);
		free(ok);
	}
	/* 17 objects exactly. */
	{
		char *s = nested("{\"a\":", "{}", "}", JSON_STRICT_MAX_DEPTH);
		assert_refused(s, -E2BIG);
		free(s);
		s = nested("{\"a\":", "{}", "}", JSON_STRICT_MAX_DEPTH - 1);
		json_decref(parse_ok(s, JSON_STRICT_MAX_DEPTH));
		free(s);
	}
	/* Depth is the deepest path, not the number of brackets. */
	json_decref(parse_ok("[[1],[2],[3],{\"a\":1}]", 2));
	assert_refused_len("[[1],[2],[[3]]]", 15, 2, -E2BIG);
	/* max_depth 0 allows scalars only. */
	json_decref(parse_ok("true", 0));
	assert_refused_len("[]", 2, 0, -E2BIG);
	assert_refused_len("{}", 2, 0, -E2BIG);
}

static void test_brackets_in_strings(void **state)
{
	char *brackets = nested("[", "", "{", 100), *s;
	json_t *v;

	/* 100 '[' and 100 '{' inside a string at depth 1. */
	s = malloc(strlen(brackets) + 16);
	assert_non_null(s);
	sprintf(s, "[\"%s\"]", brackets);
	v = parse_ok(s, 1);
	assert_int_equal(json_depth(v), 1);
	json_decref(v);
	/* And in a member name. */
	sprintf(s, "{\"%s\":1}", brackets);
	json_decref(parse_ok(s, 1));
	free(s);
	free(brackets);
	/* Closing brackets in a string do not pop a level either. */
	assert_refused_len("[\"]]]]\",[[1]]]", 14, 2, -E2BIG);
}

static void test_escaped_quotes(void **state)
{
	json_t *v;
	char *deep, *s;

	/* \" does not end the string: the brackets after it are still text. */
	v = parse_ok("[\"\\\"[[[[{{{{\", \"x\"]", 1);
	assert_string_equal(json_string_value(json_array_get(v, 0)), "\"[[[[{{{{");
	json_decref(v);
	/* \\ ends in an escaped backslash, so the next quote closes the string
	 * and the brackets after it count. */
	deep = nested("[", "", "]", JSON_STRICT_MAX_DEPTH);
	s = malloc(strlen(deep) + 16);
	assert_non_null(s);
	sprintf(s, "[\"\\\\\",%s]", deep);
	assert_refused(s, -E2BIG);
	free(deep);
	deep = nested("[", "", "]", JSON_STRICT_MAX_DEPTH - 1);
	sprintf(s, "[\"\\\\\",%s]", deep);
	v = parse_ok(s, JSON_STRICT_MAX_DEPTH);
	assert_string_equal(json_string_value(json_array_get(v, 0)), "\\");
	json_decref(v);
	free(deep);
	free(s);
	/* \\\" : backslash, then an escaped quote — still inside the string. */
	v = parse_ok("[\"\\\\\\\"[[[\"]", 1);
	assert_string_equal(json_string_value(json_array_get(v, 0)), "\\\"[[[");
	json_decref(v);
}

static void test_nul_rejected(void **state)
{
	static const char embedded[] = "{\"a\":\"x\0y\"}";
	static const char trailing[] = "{\"a\":1}\0";
	static const char outside[] = "{\"a\":\0 1}";

	assert_refused("{\"a\":\"x\\u0000y\"}", -EINVAL);
	assert_refused("{\"\\u0000\":1}", -EINVAL);
	assert_refused("[\"\\u0000\"]", -EINVAL);
	/* Raw NUL bytes: len is authoritative, the parser must see them. */
	assert_refused_len(embedded, sizeof(embedded) - 1, JSON_STRICT_MAX_DEPTH, -EINVAL);
	assert_refused_len(trailing, sizeof(trailing) - 1, JSON_STRICT_MAX_DEPTH, -EINVAL);
	assert_refused_len(outside, sizeof(outside) - 1, JSON_STRICT_MAX_DEPTH, -EINVAL);
	assert_refused_len("\0", 1, JSON_STRICT_MAX_DEPTH, -EINVAL);
	/* The same buffers without the NUL parse: the NUL is the reason. */
	json_decref(parse_ok("{\"a\":1}", JSON_STRICT_MAX_DEPTH));
}

static void test_invalid_utf8_rejected(void **state)
{
	static const char *const bad[] = {
		"[\"\xff\"]",                 /* never valid */
		"[\"\xc3\x28\"]",             /* bad continuation */
		"[\"\xc0\xaf\"]",             /* overlong '/' */
		"[\"\xe0\x80\xaf\"]",         /* overlong, 3 bytes */
		"[\"\xed\xa0\x80\"]",         /* UTF-16 surrogate */
		"[\"\xf4\x90\x80\x80\"]",     /* above U+10FFFF */
		"[\"\xc3\"]",                 /* truncated */
		"{\"\xfe\":1}",               /* in a member name */
		"[\"\\ud800\"]",              /* lone surrogate escape */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_refused(bad[i], -EINVAL);
}

static void test_trailing_garbage_rejected(void **state)
{
	assert_refused("{} x", -EINVAL);
	assert_refused("{}{}", -EINVAL);
	assert_refused("[1] [2]", -EINVAL);
	assert_refused("1 2", -EINVAL);
	assert_refused("\"a\"\"b\"", -EINVAL);
	assert_refused("{}]", -EINVAL);
	assert_refused("{},", -EINVAL);
	assert_refused("null x", -EINVAL);
}

static void test_malformed_rejected(void **state)
{
	assert_refused_len("", 0, JSON_STRICT_MAX_DEPTH, -EINVAL);
	assert_refused_len(NULL, 0, JSON_STRICT_MAX_DEPTH, -EINVAL);
	assert_refused(" \n\t ", -EINVAL);
	assert_refused("{", -EINVAL);
	assert_refused("[1,]", -EINVAL);
	assert_refused("{'a':1}", -EINVAL);
	assert_refused("{\"a\" 1}", -EINVAL);
	assert_refused("[\"unterminated]", -EINVAL);
	assert_refused("[\"tab\there\"]", -EINVAL);
	assert_refused("NaN", -EINVAL);
	assert_refused("[01]", -EINVAL);
	assert_refused("]", -EINVAL);
	assert_refused("}{", -EINVAL);
}

static void test_huge_numbers_rejected(void **state)
{
	json_t *v;

	assert_refused("99999999999999999999", -EINVAL);
	assert_refused("{\"exp\":9223372036854775808}", -EINVAL);
	assert_refused("{\"exp\":-9223372036854775809}", -EINVAL);
	assert_refused("[1e400]", -EINVAL);
	assert_refused("[-1e400]", -EINVAL);
	/* The edges of int64 still fit. */
	v = parse_ok("[9223372036854775807,-9223372036854775808]", 1);
	assert_true(json_integer_value(json_array_get(v, 0)) == INT64_MAX);
	assert_true(json_integer_value(json_array_get(v, 1)) == INT64_MIN);
	json_decref(v);
}

/* jansson's allocations while counting_alloc is installed. */
static size_t jansson_allocs;

static void *counting_malloc(size_t n)
{
	jansson_allocs++;
	return malloc(n);
}

/* s copied to the start of a mapping of its own length whose pages after
 * the first are PROT_NONE: a scan reading past the first page faults.
 * munmap(ret, *ret_size) it. */
static char *guarded_copy(const char *s, size_t *ret_size)
{
	size_t len = strlen(s), page = (size_t)sysconf(_SC_PAGESIZE);
	size_t size = (len + page - 1) / page * page;
	char *m;

	assert_true(len > page);
	m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(m != MAP_FAILED);
	memcpy(m, s, len);
	assert_int_equal(mprotect(m + page, size - page, PROT_NONE), 0);
	*ret_size = size;
	return m;
}

/* 100000 levels of arrays and of objects are refused by the scan as soon
 * as it goes one level too deep: it reads nothing past the first page (the
 * rest of the document is unreadable here, so walking it would fault), and
 * jansson, which would recurse, is never called (it allocates nothing; a
 * parse it does run allocates, which shows the count works).  What is
 * shown is where the scan stopped, not how fast it was. */
static void test_hostile_nesting(void **state)
{
	const size_t levels = 100000;
	char *open = malloc(levels + 1), *balanced = nested("[", "", "]", levels);
	char *objects = nested("{\"a\":", "1", "}", levels);
	char *docs[3];
	size_t sizes[3];
	json_t *v;

	assert_non_null(open);
	memset(open, '[', levels);
	open[levels] = '\0';
	docs[0] = guarded_copy(open, &sizes[0]);
	docs[1] = guarded_copy(balanced, &sizes[1]);
	docs[2] = guarded_copy(objects, &sizes[2]);

	json_set_alloc_funcs(counting_malloc, free);
	jansson_allocs = 0;
	/* -E2BIG, not jansson's own depth error (-EINVAL): the scan stopped it
	 * before jansson recursed. */
	assert_refused_len(docs[0], strlen(open), JSON_STRICT_MAX_DEPTH, -E2BIG);
	assert_refused_len(docs[1], strlen(balanced), JSON_STRICT_MAX_DEPTH, -E2BIG);
	assert_refused_len(docs[2], strlen(objects), JSON_STRICT_MAX_DEPTH, -E2BIG);
	assert_int_equal(jansson_allocs, 0);
	v = parse_ok("[[1]]", JSON_STRICT_MAX_DEPTH);
	assert_true(jansson_allocs > 0);
	json_decref(v);
	fixture_json_alloc_restore();

	for (int i = 0; i < 3; i++)
		assert_int_equal(munmap(docs[i], sizes[i]), 0);
	free(open);
	free(balanced);
	free(objects);
}

static void test_json_depth(void **state)
{
	json_t *v;

	v = json_integer(1);
	assert_int_equal(json_depth(v), 0);
	json_decref(v);
	v = json_string("[[[");
	assert_int_equal(json_depth(v), 0);
	json_decref(v);
	v = json_array();
	assert_int_equal(json_depth(v), 1);
	json_decref(v);
	v = json_object();
	assert_int_equal(json_depth(v), 1);
	json_decref(v);
	v = parse_ok("[[1]]", 2);
	assert_int_equal(json_depth(v), 2);
	json_decref(v);
	v = parse_ok("[1,[2,[3]],{}]", 3);
	assert_int_equal(json_depth(v), 3);
	json_decref(v);
	v = parse_ok("{\"a\":[{}],\"b\":1}", 3);
	assert_int_equal(json_depth(v), 3);
	json_decref(v);
}

/* Request members: absent and null are "not given"; only a NUL-free string
 * of 1..max bytes is a value; a failure leaves *ret alone. */
static void test_optional_string(void **state)
{
	json_t *obj = NULL;
	const char *v = "untouched";
	static const char text[] = "{\"s\":\"abc\",\"n\":null,\"e\":\"\",\"i\":1,\"l\":\"abcdef\"}";

	assert_int_equal(json_strict_parse(text, sizeof(text) - 1, 16, &obj), 0);
	assert_int_equal(json_optional_string(obj, "s", 3, &v), 0);
	assert_string_equal(v, "abc");
	assert_int_equal(json_optional_string(obj, "missing", 3, &v), 0);
	assert_null(v);
	v = "untouched";
	assert_int_equal(json_optional_string(obj, "n", 3, &v), 0);
	assert_null(v);
	v = "untouched";
	assert_int_equal(json_optional_string(obj, "e", 3, &v), -EINVAL);
	assert_int_equal(json_optional_string(obj, "i", 3, &v), -EINVAL);
	assert_int_equal(json_optional_string(obj, "l", 3, &v), -EINVAL);
	assert_string_equal(v, "untouched");
	json_object_set_new(obj, "nul", json_stringn("a\0b", 3));
	assert_int_equal(json_optional_string(obj, "nul", 16, &v), -EINVAL);
	assert_null(json_plain_string(json_object_get(obj, "nul")));
	assert_string_equal(json_plain_string(json_object_get(obj, "s")), "abc");
	json_decref(obj);
}

static void test_utf8_string(void **state)
{
	json_t *string = NULL;

	assert_int_equal(json_utf8_string("\xc3\xa9t\xc3\xa9", 5, &string), 0);
	assert_true(json_is_string(string));
	assert_int_equal(json_string_length(string), 5);
	assert_memory_equal(json_string_value(string), "\xc3\xa9t\xc3\xa9", 5);
	json_decref(string);
	/* Only n bytes are taken: the bad byte after them is not read. */
	assert_int_equal(json_utf8_string("ab\xff", 2, &string), 0);
	assert_string_equal(json_string_value(string), "ab");
	json_decref(string);
	/* A NUL inside is kept with the length, not cut off. */
	assert_int_equal(json_utf8_string("a\0b", 3, &string), 0);
	assert_int_equal(json_string_length(string), 3);
	assert_null(json_plain_string(string));
	json_decref(string);
	assert_int_equal(json_utf8_string("", 0, &string), 0);
	assert_string_equal(json_string_value(string), "");
	json_decref(string);

	/* Not UTF-8: a stray continuation byte, a truncated sequence, an
	 * overlong encoding, a surrogate. */
	string = SENTINEL;
	assert_int_equal(json_utf8_string("\xff", 1, &string), -EINVAL);
	assert_int_equal(json_utf8_string("ab\x80", 3, &string), -EINVAL);
	assert_int_equal(json_utf8_string("\xc3\xa9", 1, &string), -EINVAL);
	assert_int_equal(json_utf8_string("\xc0\xaf", 2, &string), -EINVAL);
	assert_int_equal(json_utf8_string("\xed\xa0\x80", 3, &string), -EINVAL);
	assert_ptr_equal(string, SENTINEL);

	/* Out of memory is -ENOMEM, for valid and invalid input alike: a bad
	 * input is not blamed for an exhausted process. */
	fixture_json_fail_after(0);
	assert_int_equal(json_utf8_string("ok", 2, &string), -ENOMEM);
	assert_int_equal(json_utf8_string("\xff", 1, &string), -ENOMEM);
	fixture_json_alloc_restore();
	assert_ptr_equal(string, SENTINEL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_values),
		cmocka_unit_test(test_duplicates_rejected),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_brackets_in_strings),
		cmocka_unit_test(test_escaped_quotes),
		cmocka_unit_test(test_nul_rejected),
		cmocka_unit_test(test_invalid_utf8_rejected),
		cmocka_unit_test(test_trailing_garbage_rejected),
		cmocka_unit_test(test_malformed_rejected),
		cmocka_unit_test(test_huge_numbers_rejected),
		cmocka_unit_test(test_hostile_nesting),
		cmocka_unit_test(test_json_depth),
		cmocka_unit_test(test_optional_string),
		cmocka_unit_test(test_utf8_string),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
