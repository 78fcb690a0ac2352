#include "fixture_vectors.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

json_t *fixture_vectors_load(const char *relpath)
{
	const char *dir = getenv("TEST_DATA_DIR");
	char path[1024];
	json_error_t err;
	json_t *root;

	if (dir == NULL)
		dir = "data"; /* tests run with cwd tests/ */
	snprintf(path, sizeof(path), "%s/%s", dir, relpath);
	root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
	if (root == NULL)
		fail_msg("cannot load %s: %s (line %d)", path, err.text, err.line);
	return root;
}

const char *fixture_vectors_str(const json_t *obj, const char *name)
{
	const char *s = json_string_value(json_object_get(obj, name));

	if (s == NULL)
		fail_msg("member \"%s\" missing or not a string", name);
	return s;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

uint8_t *fixture_vectors_hex(const char *hex, size_t *ret_len)
{
	size_t n = strlen(hex), i;
	uint8_t *out;

	if (n % 2 != 0)
		fail_msg("odd-length hex string (%zu digits)", n);
	out = malloc(n / 2 + 1); /* +1: a valid pointer for "" */
	assert_non_null(out);
	for (i = 0; i < n / 2; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			free(out);
			fail_msg("bad hex digit near offset %zu", 2 * i);
		}
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	*ret_len = n / 2;
	return out;
}
