/* pin: where the PIN comes from (pin_file, systemd credential, RFC 7512
 * pin-source, the development key), how a PIN file is read (one newline
 * dropped, limits, modes), and that no log line ever holds the PIN. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/config.h"
#include "hsmjwt/pin.h"

#define ERRLEN 512
/* Appears in no message unless a PIN leaked into it. */
#define PIN_MARKER "PinMarker7Qx"

static void init(struct config *cfg)
{
	assert_int_equal(config_init_defaults(cfg), 0);
}

/* The credential directory is process state: start and end each test without it. */
static int setup(void **state)
{
	unsetenv("CREDENTIALS_DIRECTORY");
	return fixture_tmpdir_setup(state);
}

static int teardown(void **state)
{
	unsetenv("CREDENTIALS_DIRECTORY");
	return fixture_tmpdir_teardown(state);
}

struct pin_read {
	struct config *cfg;
	char *pin;
	size_t len;
};

static int do_read_pin(void *arg)
{
	struct pin_read *p = arg;

	p->pin = NULL;
	p->len = 0;
	return pin_read(p->cfg, &p->pin, &p->len);
}

static void free_pin(struct pin_read *p)
{
	pin_free(p->pin, p->len);
	p->pin = NULL;
}

/* Reads a PIN file with content data and expects want (NULL: an error r). */
static const char *read_pin_file(const void *data, size_t len, mode_t mode, const char *want, int r)
{
	struct config cfg;
	struct pin_read p = { .cfg = &cfg };
	const char *log;
	char err[ERRLEN];
	int got;

	init(&cfg);
	assert_int_equal(config_set(&cfg, "pin_file", fixture_write_file("pin", data, len, mode), err, ERRLEN), 0);
	log = fixture_capture_stderr(do_read_pin, &p, &got);
	assert_int_equal(got, r);
	if (want) {
		assert_non_null(p.pin);
		assert_int_equal(p.len, strlen(want));
		assert_string_equal(p.pin, want);
	} else {
		assert_null(p.pin);
	}
	free_pin(&p);
	config_free(&cfg);
	return log;
}

static void test_read_pin_file(void **state)
{
	char big[300], want[257];
	const char *log;

	log = read_pin_file("1234\n", 5, 0600, "1234", 0);
	assert_null(strstr(log, "1234"));
	assert_null(strstr(log, "accessible"));
	read_pin_file("1234", 4, 0600, "1234", 0);
	read_pin_file("1234\r\n", 6, 0600, "1234", 0);
	/* Exactly one newline is dropped. */
	read_pin_file("1234\n\n", 6, 0600, "1234\n", 0);
	read_pin_file("1234\r\n\r\n", 8, 0600, "1234\r\n", 0);
	read_pin_file("12 34 \n", 7, 0600, "12 34 ", 0);
	/* A lone \r is part of the PIN, not a line end. */
	read_pin_file("1234\r", 5, 0600, "1234\r", 0);
	/* Empty PINs are refused. */
	read_pin_file("", 0, 0600, NULL, -EINVAL);
	read_pin_file("\n", 1, 0600, NULL, -EINVAL);
	read_pin_file("\r\n", 2, 0600, NULL, -EINVAL);
	read_pin_file("12\0" "34", 5, 0600, NULL, -EINVAL);
	/* The file may hold 256 bytes, newline included. */
	memset(big, '7', sizeof(big));
	memcpy(big, PIN_MARKER, strlen(PIN_MARKER));
	memcpy(want, big, 256);
	want[256] = '\0';
	read_pin_file(big, 256, 0600, want, 0);
	big[255] = '\n';
	want[255] = '\0';
	read_pin_file(big, 256, 0600, want, 0);
	big[255] = '7';
	big[256] = '\n';
	log = read_pin_file(big, 257, 0600, NULL, -EFBIG);
	assert_non_null(strstr(log, "longer than 256"));
	assert_null(strstr(log, PIN_MARKER));
	read_pin_file(big, sizeof(big), 0600, NULL, -EFBIG);
	/* Group/other access is warned about with the mode, never the content. */
	log = read_pin_file(PIN_MARKER "\n", strlen(PIN_MARKER) + 1, 0644, PIN_MARKER, 0);
	assert_non_null(strstr(log, "level=warn"));
	assert_non_null(strstr(log, "mode=0644"));
	assert_null(strstr(log, PIN_MARKER));
	log = read_pin_file(PIN_MARKER, strlen(PIN_MARKER), 0640, PIN_MARKER, 0);
	assert_non_null(strstr(log, "mode=0640"));
	assert_null(strstr(log, PIN_MARKER));
}

static void test_read_pin_missing_file(void **state)
{
	struct config cfg;
	struct pin_read p = { .cfg = &cfg };
	char err[ERRLEN], path[PATH_MAX];
	const char *log;
	int r;

	init(&cfg);
	snprintf(path, sizeof(path), "%s/no-such-pin", fixture_tmpdir);
	assert_int_equal(config_set(&cfg, "pin_file", path, err, ERRLEN), 0);
	/* A configured but missing file is an error, not "no PIN source". */
	log = fixture_capture_stderr(do_read_pin, &p, &r);
	assert_true(r < 0);
	assert_int_not_equal(r, -ENOENT);
	assert_null(p.pin);
	assert_non_null(strstr(log, "no-such-pin"));
	/* A directory is not a PIN file. */
	assert_int_equal(config_set(&cfg, "pin_file", fixture_tmpdir, err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, -EINVAL);
	assert_null(p.pin);
	config_free(&cfg);
}

static void test_read_pin_sources(void **state)
{
	struct config cfg;
	struct pin_read p = { .cfg = &cfg };
	char err[ERRLEN], creds[PATH_MAX];
	const char *log;
	int r;

	init(&cfg);
	/* No source at all. */
	log = fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, -ENOENT);
	assert_null(p.pin);
	/* cfg->pin, with the development warning. */
	assert_int_equal(config_set(&cfg, "pin", PIN_MARKER, err, ERRLEN), 0);
	log = fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, PIN_MARKER);
	assert_int_equal(p.len, strlen(PIN_MARKER));
	assert_non_null(strstr(log, "level=warn"));
	assert_non_null(strstr(log, "development"));
	assert_null(strstr(log, PIN_MARKER));
	free_pin(&p);
	/* $CREDENTIALS_DIRECTORY without a pin credential falls through to cfg->pin. */
	snprintf(creds, sizeof(creds), "%s/creds", fixture_tmpdir);
	assert_int_equal(mkdir(creds, 0700), 0);
	setenv("CREDENTIALS_DIRECTORY", creds, 1);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, PIN_MARKER);
	free_pin(&p);
	/* $CREDENTIALS_DIRECTORY/pin beats cfg->pin. */
	fixture_write_file("creds/pin", "credpin\n", 8, 0400);
	log = fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, "credpin");
	assert_null(strstr(log, "development"));
	free_pin(&p);
	/* pin_file beats both. */
	assert_int_equal(config_set(&cfg, "pin_file", fixture_write_file("pin", "filepin\r\n", 9, 0600), err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, "filepin");
	assert_int_equal(p.len, 7);
	free_pin(&p);
	/* Only the credential. */
	assert_int_equal(config_set(&cfg, "pin_file", "", err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "pin", "", err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, "credpin");
	free_pin(&p);
	unsetenv("CREDENTIALS_DIRECTORY");
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, -ENOENT);
	config_free(&cfg);
}

/* RFC 7512 pin-source in the token URI: used after the credential, before
 * the development pin key; a relative source is refused. */
static void test_read_pin_uri_source(void **state)
{
	struct config cfg;
	struct pin_read p = { .cfg = &cfg };
	char err[ERRLEN], uri[PATH_MAX + 64];
	const char *path = fixture_write_file("uripin", "uripin\n", 7, 0600);
	int r;

	init(&cfg);
	assert_int_equal(config_set(&cfg, "pin", PIN_MARKER, err, ERRLEN), 0);
	snprintf(uri, sizeof(uri), "pkcs11:token=t?pin-source=file:%s", path);
	assert_int_equal(config_set(&cfg, "token", uri, err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, "uripin");
	free_pin(&p);
	/* A bare absolute path is a source too. */
	snprintf(uri, sizeof(uri), "pkcs11:token=t?pin-source=%s", path);
	assert_int_equal(config_set(&cfg, "token", uri, err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, "uripin");
	free_pin(&p);
	assert_int_equal(config_set(&cfg, "token", "pkcs11:token=t?pin-source=relative/pin", err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, -EINVAL);
	assert_null(p.pin);
	/* A URI without pin-source falls through to the pin key. */
	assert_int_equal(config_set(&cfg, "token", "pkcs11:token=t", err, ERRLEN), 0);
	fixture_capture_stderr(do_read_pin, &p, &r);
	assert_int_equal(r, 0);
	assert_string_equal(p.pin, PIN_MARKER);
	free_pin(&p);
	config_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_pin_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_pin_missing_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_pin_sources, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_pin_uri_source, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
