#include "hsmjwt/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level current_level = LOG_LEVEL_INFO;
static const char *const level_names[] = { "error", "warn", "info", "debug" };

int log_level_from_name(const char *name, enum log_level *ret_level)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*ret_level = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void log_set_level(enum log_level level)
{
	__atomic_store_n(&current_level, level, __ATOMIC_RELAXED);
}

int log_enabled(enum log_level level)
{
	return level <= __atomic_load_n(&current_level, __ATOMIC_RELAXED);
}

void log_write(enum log_level level, const char *fmt, ...)
{
	char line[2048];
	struct timespec now;
	struct tm tm;
	va_list ap;
	int n;

	if (!log_enabled(level))
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		     tm.tm_sec, now.tv_nsec / 1000000, level_names[level]);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	/* One write per line so that lines from worker threads never interleave. */
	n = (int)strlen(line);
	line[n++] = '\n';
	fwrite(line, 1, (size_t)n, stderr);
	fflush(stderr);
}

const char *log_quote(char *buf, size_t n, const char *src)
{
	size_t o = 0;

	if (n < 3) {
		if (n)
			buf[0] = '\0';
		return buf;
	}
	buf[o++] = '"';
	for (; src && *src && o + 3 < n; src++) {
		unsigned char c = (unsigned char)*src;
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			buf[o++] = '?';
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* One window per second, process-wide: a flood (libevent warns once per
 * failed accept, millions of times a second) must not fill the journal nor
 * eat the CPU the clients need. */
static pthread_mutex_t log_limit_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	int64_t second;
	unsigned lines;
	unsigned long suppressed;
} log_limit;

static void log_report_suppressed(unsigned long suppressed)
{
	if (suppressed > 0)
		log_warn("\"log lines suppressed\" window_s=1 burst=%d suppressed=%lu", LOG_LIMITED_BURST, suppressed);
}

/* Whether a line may go out now; *ret_suppressed gets the count held back in
 * the window just closed, to report once. */
static int log_limit_admit(unsigned long *ret_suppressed)
{
	struct timespec now;
	int admit;

	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&log_limit_lock);
	*ret_suppressed = 0;
	if ((int64_t)now.tv_sec != log_limit.second) {
		*ret_suppressed = log_limit.suppressed;
		log_limit.second = (int64_t)now.tv_sec;
		log_limit.lines = 0;
		log_limit.suppressed = 0;
	}
	admit = log_limit.lines < LOG_LIMITED_BURST;
	if (admit)
		log_limit.lines++;
	else
		log_limit.suppressed++;
	pthread_mutex_unlock(&log_limit_lock);
	return admit;
}

void log_limited(enum log_level level, const char *fmt, ...)
{
	char text[1024];
	unsigned long suppressed;
	va_list ap;
	int admit;

	if (!log_enabled(level))
		return;
	admit = log_limit_admit(&suppressed);
	log_report_suppressed(suppressed);
	if (!admit)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_write(level, "%s", text);
}

void log_limited_flush(void)
{
	unsigned long suppressed;

	pthread_mutex_lock(&log_limit_lock);
	suppressed = log_limit.suppressed;
	log_limit.suppressed = 0;
	pthread_mutex_unlock(&log_limit_lock);
	log_report_suppressed(suppressed);
}

/* The standard error the process started with (the journal, a terminal),
 * kept at the first redirection so that a reload dropping log_file can go
 * back to it.  Touched by the main thread only. */
static int log_original_stderr = -1;
static int log_original_kept;

int log_open_file(const char *path)
{
	char quoted[512];
	int fd, e;

	if (path == NULL) {
		if (log_original_stderr < 0)
			return 0;
		fd = log_original_stderr;
	} else {
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
		if (fd < 0) {
			e = errno;
			log_error("\"cannot open log_file\" log_file=%s error=\"%s\"",
				  log_quote(quoted, sizeof(quoted), path), strerror(e));
			return -e;
		}
		/* Only before the first redirection is descriptor 2 the original
		 * (a process started without one has none to go back to). */
		if (!log_original_kept) {
			if (fd != STDERR_FILENO)
				log_original_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
			if (fd != STDERR_FILENO && log_original_stderr < 0 && errno != EBADF) {
				e = errno;
				close(fd);
				log_error("\"cannot keep standard error\" error=\"%s\"", strerror(e));
				return -e;
			}
			log_original_kept = 1;
		}
	}
	/* dup2 swaps the descriptor in one step: a write already under way
	 * finishes on the old file, the next one goes to the new file, and
	 * log_write's one write per line never straddles the two. */
	if (fd != STDERR_FILENO && dup2(fd, STDERR_FILENO) < 0) {
		e = errno;
		if (path != NULL)
			close(fd);
		log_error("\"cannot redirect standard error\" error=\"%s\"", strerror(e));
		return -e;
	}
	if (path != NULL && fd != STDERR_FILENO)
		close(fd);
	return 0;
}
