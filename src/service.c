#include "hsmjwt/service.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "hsmjwt/log.h"
#include "hsmjwt/pin.h"

extern char **environ;

/* HSMJWT_PIN was in the environment when the config was first loaded: a
 * reload, which no longer finds it there, keeps the value it gave. */
static int service_pin_from_env;

/* Wipes the value of every "name=" entry in place (the environment may hold
 * one name twice, and the config applies the last), then drops them.
 * Whether there was one. */
static int service_wipe_env(const char *name)
{
	size_t n = strlen(name);
	int found = 0;

	for (char **e = environ; e && *e; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
			OPENSSL_cleanse(*e + n + 1, strlen(*e + n + 1));
			found = 1;
		}
	unsetenv(name);
	return found;
}

int service_load_config(struct config *cfg, const char *path)
{
	char err[512];
	int r;

	r = config_load(cfg, path, environ, err, sizeof(err));
	/* The development PIN variable is in cfg now (or refused): wipe it from
	 * the environment, which /proc/PID/environ and child processes show. */
	if (service_wipe_env("HSMJWT_PIN"))
		service_pin_from_env = 1;
	if (r < 0) {
		fprintf(stderr, "hsmjwt: configuration error: %s\n", err);
		return r;
	}
	log_set_level(cfg->log_level);
	return 0;
}

int service_reload_config(const struct config *boot, struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct config work;
	int r;

	r = config_load(&work, path, environ, err, errlen);
	if (r < 0)
		return r;
	if (service_pin_from_env) {
		/* The environment is the start's, which set the pin last. */
		pin_forget(&work);
		if (boot->pin != NULL && (work.pin = strdup(boot->pin)) == NULL) {
			config_free(&work);
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	*cfg = work;
	return 0;
}

static int service_pin_read(void *ctx, char **ret_pin, size_t *ret_len)
{
	return pin_read(ctx, ret_pin, ret_len);
}

static void service_pin_release(void *ctx, char *pin, size_t len)
{
	pin_free(pin, len);
}

int service_open_token(struct config *cfg, int recoverable, struct hsm **ret_hsm)
{
	char *pin = NULL;
	size_t pin_len = 0;
	int r;

	/* pin_read has logged why, with the source it tried. */
	r = pin_read(cfg, &pin, &pin_len);
	if (r == 0 || r == -ENOENT)
		r = hsm_open(cfg->pkcs11_module, cfg->token, pin, pin_len, ret_hsm);
	pin_free(pin, pin_len);
	if (r == 0 && recoverable)
		service_set_pin_source(*ret_hsm, cfg);
	else
		pin_forget(cfg);
	return r;
}

void service_set_pin_source(struct hsm *hsm, const struct config *cfg)
{
	/* pin_read only reads cfg. */
	hsm_set_pin_source(hsm, service_pin_read, service_pin_release, (void *)(uintptr_t)cfg);
}

int service_harden_process(void)
{
	const struct rlimit none = { 0, 0 };
	int e;

	/* A core file or a debugger attached by another process of the same
	 * user would show the PIN while it is read and the token's session
	 * state; neither is needed in production (LimitCORE=0 in the unit too,
	 * for when the binary is started some other way). */
	if (setrlimit(RLIMIT_CORE, &none) < 0) {
		e = errno;
		log_error("\"cannot disable core dumps\" error=\"%s\"", strerror(e));
		return -e;
	}
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
		e = errno;
		log_error("\"cannot make the process non-dumpable\" error=\"%s\"", strerror(e));
		return -e;
	}
	return 0;
}

/* What the registry and lock hold is readable by no one else: a file or
 * directory of ours found open to group or others (copied in, made under a
 * loose umask by an older version) is closed to them, and said so.  One
 * that belongs to another user (root:hsmjwt 0770, say) cannot be changed
 * here: that is said too, and left to its owner. */
static int service_private_mode(int fd, const char *path, mode_t want)
{
	struct stat st;
	int e;

	if (fstat(fd, &st) < 0) {
		e = errno;
		log_error("\"cannot stat a state file\" path=%s error=\"%s\"", path, strerror(e));
		return -e;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) == 0)
		return 0;
	if (st.st_uid != geteuid()) {
		log_warn("\"a state file is open to group or others and belongs to another user: its owner should "
			 "restrict it\" path=%s mode=%04o uid=%u", path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
		return 0;
	}
	if (fchmod(fd, want) < 0) {
		e = errno;
		log_error("\"cannot restrict a state file\" path=%s error=\"%s\"", path, strerror(e));
		return -e;
	}
	log_warn("\"a state file was open to group or others: restricted\" path=%s was=%04o now=%04o", path,
		 (unsigned)(st.st_mode & 07777), (unsigned)want);
	return 0;
}

/* service_private_mode for state_dir and every regular file in it. */
static int service_private_state(const char *state_dir)
{
	char path[4096];
	struct dirent *d;
	DIR *dir = NULL;
	int dfd, fd, r, e;

	/* state_dir itself may be a symlink (to a bigger disk, say). */
	dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		e = errno;
		log_error("\"cannot open state_dir\" state_dir=%s error=\"%s\"", state_dir, strerror(e));
		return -e;
	}
	r = service_private_mode(dfd, state_dir, 0700);
	if (r < 0)
		goto out;
	fd = dup(dfd);
	dir = fd < 0 ? NULL : fdopendir(fd);
	if (dir == NULL) {
		e = errno;
		if (fd >= 0)
			close(fd);
		log_error("\"cannot list state_dir\" state_dir=%s error=\"%s\"", state_dir, strerror(e));
		r = -e;
		goto out;
	}
	while ((d = readdir(dir)) != NULL) {
		struct stat st;

		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		/* Only regular files are opened: opening a device or a FIFO
		 * may do something. */
		if (fstatat(dfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		fd = openat(dfd, d->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
		if (fd < 0)
			continue;   /* replaced or gone meanwhile: nothing of ours */
		snprintf(path, sizeof(path), "%s/%s", state_dir, d->d_name);
		r = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? service_private_mode(fd, path, 0600) : 0;
		close(fd);
		if (r < 0)
			goto out;
	}
	r = 0;
out:
	if (dir != NULL)
		closedir(dir);
	close(dfd);
	return r;
}

int service_lock_state_dir(const char *state_dir, int *ret_fd)
{
	char path[4096];
	int fd, r;

	if (mkdir(state_dir, 0700) < 0 && errno != EEXIST) {
		int e = errno;   /* logging may change errno */
		log_error("\"cannot create state_dir\" state_dir=%s error=\"%s\"", state_dir, strerror(e));
		return -e;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/hsmjwtd.lock", state_dir) >= sizeof(path)) {
		log_error("\"state_dir path too long\" state_dir=%s", state_dir);
		return -ENAMETOOLONG;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		int e = errno;
		log_error("\"cannot open the state lock\" path=%s error=\"%s\"", path, strerror(e));
		return -e;
	}
	/* The kernel drops the lock with the process, however it ends. */
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		if (e == EWOULDBLOCK)
			log_error("\"another hsmjwtd already runs on this state_dir\" state_dir=%s", state_dir);
		else
			log_error("\"cannot lock state_dir\" path=%s error=\"%s\"", path, strerror(e));
		close(fd);
		return e == EWOULDBLOCK ? -EBUSY : -e;
	}
	/* Once the lock is ours: a second process about to be refused changes
	 * nothing. */
	r = service_private_state(state_dir);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}
