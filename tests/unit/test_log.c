/* log: levels, one line per event, and quoting that keeps a line one line. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
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

static void emit_a_flood(void)
{
	log_set_level(LOG_LEVEL_INFO);
	for (int i = 0; i < 3 * LOG_LIMITED_BURST; i++)
		log_limited(LOG_LEVEL_WARN, "\"flood\" i=%d", i);
	log_limited_flush();
}

static size_t count(const char *text, const char *needle)
{
	size_t n = 0;

	for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* A flood yields at most a burst of lines and one count of the rest.  The
 * burst is per second, so a second boundary inside the loop may admit a
 * second burst: the lines and the counts always add up to what was sent. */
static void test_limited_lines(void **state)
{
	const char *text = capture(emit_a_flood);
	const char *p;
	size_t lines = count(text, "msg=\"flood\""), suppressed = 0;

	assert_true(lines >= LOG_LIMITED_BURST && lines <= 2 * LOG_LIMITED_BURST);
	for (p = strstr(text, "suppressed="); p; p = strstr(p + 1, "suppressed="))
		suppressed += strtoul(p + strlen("suppressed="), NULL, 10);
	assert_int_equal(lines + suppressed, 3 * LOG_LIMITED_BURST);
	assert_true(count(text, "msg=\"log lines suppressed\"") >= 1);
}


static char *slurp(const char *path)
{
	static char text[8192];
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static int same_file(int fd, const char *path)
{
	struct stat a, b;

	return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static size_t open_descriptors(void)
{
	DIR *d = opendir("/proc/self/fd");
	size_t n = 0;

	assert_non_null(d);
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

/* log_file: lines land in the file (created 0600, appended); after the
 * file is moved away, lines go on to the moved file until the reopen, then
 * to a new file at the path; NULL goes back to the original stderr; a
 * path that cannot be opened changes nothing; no descriptor is leaked. */
static void test_open_file(void **state)
{
	char path[512], moved[512], bad[512];
	struct stat st, orig;
	size_t fds;

	snprintf(path, sizeof(path), "%s/hsmjwt.log", fixture_tmpdir);
	snprintf(moved, sizeof(moved), "%s/hsmjwt.log.1", fixture_tmpdir);
	snprintf(bad, sizeof(bad), "%s/missing/hsmjwt.log", fixture_tmpdir);
	assert_int_equal(fstat(STDERR_FILENO, &orig), 0);
	log_set_level(LOG_LEVEL_INFO);
	assert_int_equal(log_open_file(path), 0);
	assert_true(same_file(STDERR_FILENO, path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	log_info("\"line\" n=1");
	assert_int_equal(rename(path, moved), 0);
	log_info("\"line\" n=2");
	fds = open_descriptors();
	assert_int_equal(log_open_file(path), 0);
	log_info("\"line\" n=3");
	/* Reopening the same path appends. */
	assert_int_equal(log_open_file(path), 0);
	log_info("\"line\" n=4");
	for (int i = 0; i < 50; i++)
		assert_int_equal(log_open_file(path), 0);
	assert_int_equal(open_descriptors(), fds);
	assert_int_equal(log_open_file(bad), -ENOENT);
	assert_true(same_file(STDERR_FILENO, path));
	log_info("\"line\" n=5");
	assert_int_equal(log_open_file(NULL), 0);
	log_info("\"line\" n=6");
	assert_int_equal(fstat(STDERR_FILENO, &st), 0);
	assert_true(st.st_dev == orig.st_dev && st.st_ino == orig.st_ino);
	assert_int_equal(open_descriptors(), fds);

	{
		const char *old = slurp(moved);
		assert_non_null(strstr(old, "msg=\"line\" n=1\n"));
		assert_non_null(strstr(old, "msg=\"line\" n=2\n"));
		assert_null(strstr(old, "n=3"));
		assert_int_equal(count(old, "\n"), 2);
	}
	{
		const char *now = slurp(path);
		assert_null(strstr(now, "n=1"));
		assert_null(strstr(now, "n=2"));
		assert_non_null(strstr(now, "msg=\"line\" n=3\n"));
		assert_non_null(strstr(now, "msg=\"line\" n=4\n"));
		/* The failed open is logged where lines went then, naming it. */
		assert_non_null(strstr(now, "level=error msg=\"cannot open log_file\""));
		assert_non_null(strstr(now, "missing/hsmjwt.log"));
		assert_non_null(strstr(now, "msg=\"line\" n=5\n"));
		assert_null(strstr(now, "n=6"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_level_names),
		cmocka_unit_test(test_quote_escapes),
		cmocka_unit_test(test_levels_filter_and_format),
		cmocka_unit_test(test_limited_lines),
		cmocka_unit_test_setup_teardown(test_open_file, fixture_tmpdir_setup, fixture_tmpdir_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
