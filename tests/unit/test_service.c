/* service: the config a reload reads is the one the start read — the same
 * path and environment — although the start wiped HSMJWT_PIN from the
 * environment: the pin it gave still stands (else every reload of a daemon
 * started with HSMJWT_PIN would be refused for a changed pin). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

static mode_t mode_of(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_mode & 07777;
}

/* A state_dir and files in it that group or others could read (made under
 * a loose umask, copied in) are closed to them before anything is read or
 * written there; the lock file is made 0600 whatever the umask. */
static void test_state_dir_made_private(void **state)
{
	char dir[4200], file[4300], lock[4300];
	mode_t old_umask;
	int fd = -1;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/state", fixture_tmpdir);
	snprintf(file, sizeof(file), "%s/registry.log", dir);
	snprintf(lock, sizeof(lock), "%s/hsmjwtd.lock", dir);
	old_umask = umask(0);
	assert_int_equal(mkdir(dir, 0755), 0);
	fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	close(fd);
	fd = -1;
	assert_int_equal(service_lock_state_dir(dir, &fd), 0);
	umask(old_umask);
	assert_true(fd >= 0);
	assert_int_equal(mode_of(dir), 0700);
	assert_int_equal(mode_of(file), 0600);
	assert_int_equal(mode_of(lock), 0600);
	close(fd);

	/* A file another user owns cannot be fixed here: logged, left alone,
	 * and no reason to refuse the start (root:hsmjwt 0770 packaging). */
	if (geteuid() == 0) {
		char theirs[4300];

		snprintf(theirs, sizeof(theirs), "%s/theirs", dir);
		old_umask = umask(0);
		fd = open(theirs, O_WRONLY | O_CREAT | O_EXCL, 0644);
		umask(old_umask);
		assert_true(fd >= 0);
		assert_int_equal(fchown(fd, 65534, 65534), 0);
		close(fd);
		assert_int_equal(service_lock_state_dir(dir, &fd), 0);
		assert_int_equal(mode_of(theirs), 0644);
		close(fd);
	}

	/* A new state_dir is made 0700 under any umask. */
	snprintf(dir, sizeof(dir), "%s/fresh", fixture_tmpdir);
	old_umask = umask(0);
	assert_int_equal(service_lock_state_dir(dir, &fd), 0);
	umask(old_umask);
	assert_int_equal(mode_of(dir), 0700);
	close(fd);
}

/* No core file, and not dumpable (no ptrace, no /proc/PID/mem for other
 * processes of the user).  In a child: the test process stays as it was. */
static void test_harden_process(void **state)
{
	int status = 0;
	pid_t pid;

	(void)state;
	assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit rl;
		int ok = service_harden_process() == 0 && getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 &&
			 rl.rlim_max == 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0;
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reload_keeps_the_env_pin, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_state_dir_made_private, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test(test_harden_process),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
