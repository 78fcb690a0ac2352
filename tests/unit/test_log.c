/* log: levels, one line per event, and quoting that keeps a line one line. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/log.h"

static void test_level_names(void **state)
{
	enum log_level level = LOG_LEVEL_ERROR;

	assert_int_equal(log_level_from_name("debug", &level), 0);
	assert_int_equal(level, LOG_LEVEL_DEBUG);
	assert_int_equal(log_level_from_name("warn", &level), 0);
	assert_int_equal(level, LOG_LEVEL_WARN);
	assert_int_equal(log_level_from_name("verbose", &level), -EINVAL);
	assert_int_equal(level, LOG_LEVEL_WARN);
}

static void test_quote_escapes(void **state)
{
	char buf[64];

	assert_string_equal(log_quote(buf, sizeof(buf), "a b"), "\"a b\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
	/* A newline in a value must not start a forged log line. */
	assert_string_equal(log_quote(buf, sizeof(buf), "x\nlevel=error"), "\"x?level=error\"");
	assert_string_equal(log_quote(buf, 8, "abcdefghijkl"), "\"abcd\"");
	assert_string_equal(log_quote(buf, sizeof(buf), NULL), "\"\"");
}

struct emitter {
	void (*emit)(void);
};

static int run_emit(void *arg)
{
	((struct emitter *)arg)->emit();
	return 0;
}

static const char *capture(void (*emit)(void))
{
	struct emitter e = { emit };
	int ignored;

	return fixture_capture_stderr(run_emit, &e, &ignored);
}

static void emit_info_and_debug(void)
{
	log_set_level(LOG_LEVEL_INFO);
	log_info("\"hello\" key=%d", 42);
	log_debug("\"hidden\"");
	log_error("\"bad\" value=%s", "x");
}

static void test_levels_filter_and_format(void **state)
{
	const char *text = capture(emit_info_and_debug);

	assert_non_null(strstr(text, "level=info msg=\"hello\" key=42\n"));
	assert_non_null(strstr(text, "level=error msg=\"bad\" value=x\n"));
	assert_null(strstr(text, "hidden"));
	assert_true(strncmp(text, "ts=", 3) == 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_level_names),
		cmocka_unit_test(test_quote_escapes),
		cmocka_unit_test(test_levels_filter_and_format),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
