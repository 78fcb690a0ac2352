#include <fcntl.h>
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

char fixture_tmpdir[PATH_MAX];

int fixture_tmpdir_setup(void **state)
{
	snprintf(fixture_tmpdir, sizeof(fixture_tmpdir), "/tmp/hsmjwt-test-XXXXXX");
	return mkdtemp(fixture_tmpdir) ? 0 : -1;
}

int fixture_tmpdir_teardown(void **state)
{
	char cmd[PATH_MAX + 16];

	if (fixture_tmpdir[0] == '\0')
		return 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fixture_tmpdir);
	fixture_tmpdir[0] = '\0';
	return system(cmd) == 0 ? 0 : -1;
}

const char *fixture_write_file(const char *name, const void *data, size_t len, mode_t mode)
{
	static char path[PATH_MAX + 256];
	int fd;

	assert_true((size_t)snprintf(path, sizeof(path), "%s/%s", fixture_tmpdir, name) < sizeof(path));
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	/* The umask must not soften what a test asks for. */
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

const char *fixture_capture_stderr(int (*fn)(void *), void *arg, int *ret)
{
	static char text[16384];
	char path[] = "/tmp/hsmjwt-stderr-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	ssize_t n;

	assert_true(fd >= 0 && saved >= 0);
	unlink(path);
	fflush(stderr);
	dup2(fd, 2);
	*ret = fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	lseek(fd, 0, SEEK_SET);
	n = read(fd, text, sizeof(text) - 1);
	text[n > 0 ? n : 0] = '\0';
	close(fd);
	return text;
}
