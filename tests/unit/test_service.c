/* service: the config a reload reads is the one the start read — the same
 * path and environment — although the start wiped HSMJWT_PIN from the
 * environment: the pin it gave still stands (else every reload of a daemon
 * started with HSMJWT_PIN would be refused for a changed pin). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/config.h"
#include "hsmjwt/service.h"

#define DEV_PIN "dev-pin-4711"

static const char *config_file(const char *text)
{
	return fixture_write_file("hsmjwt.conf", text, strlen(text), 0600);
}

static void test_reload_keeps_the_env_pin(void **state)
{
	struct config boot, next;
	char err[512] = "";
	const char *path = config_file("access_ttl = 700\n");

	assert_int_equal(setenv("HSMJWT_PIN", DEV_PIN, 1), 0);
	assert_int_equal(setenv("HSMJWT_REFRESH_TTL", "7000", 1), 0);
	assert_int_equal(service_load_config(&boot, path), 0);
	assert_string_equal(boot.pin, DEV_PIN);
	assert_int_equal(boot.access_ttl, 700);
	/* Wiped from the environment once read. */
	assert_null(getenv("HSMJWT_PIN"));

	/* The file changed a reloadable key; the environment is the start's. */
	path = config_file("access_ttl = 1234\n");
	assert_int_equal(service_reload_config(&boot, &next, path, err, sizeof(err)), 0);
	assert_int_equal(next.access_ttl, 1234);
	assert_int_equal(next.refresh_ttl, 7000);
	assert_non_null(next.pin);
	assert_string_equal(next.pin, DEV_PIN);
	assert_ptr_not_equal(next.pin, boot.pin);
	assert_null(config_reload_blocker(&boot, &next));
	config_free(&next);

	/* A pin in the file loses to the environment's, as at the start. */
	path = config_file("access_ttl = 1234\npin = file-pin\n");
	assert_int_equal(service_reload_config(&boot, &next, path, err, sizeof(err)), 0);
	assert_string_equal(next.pin, DEV_PIN);
	assert_null(config_reload_blocker(&boot, &next));
	config_free(&next);

	/* A bad file: the message names the key, next is not touched. */
	memset(&next, 0x5a, sizeof(next));
	path = config_file("access_ttl = soon\n");
	assert_int_equal(service_reload_config(&boot, &next, path, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "access_ttl"));
	assert_null(strstr(err, DEV_PIN));
	assert_int_equal(((unsigned char *)&next)[0], 0x5a);

	path = config_file("acces_ttl = 1\n");
	assert_int_equal(service_reload_config(&boot, &next, path, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "acces_ttl"));

	unsetenv("HSMJWT_REFRESH_TTL");
	config_free(&boot);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reload_keeps_the_env_pin, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
