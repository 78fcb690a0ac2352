/* log: structured key=value lines on stderr (the journal under systemd).
 *
 * One line per event: `ts=... level=... msg="..." key=value ...`.  Callers pass
 * already formatted key=value pairs; values that may contain spaces are quoted
 * by log_quote().  Never pass a token, PIN or key material to these functions. */
#ifndef HSMJWT_LOG_H
#define HSMJWT_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* Returns 0 and sets *ret_level, or -EINVAL for an unknown name. */
int log_level_from_name(const char *name, enum log_level *ret_level);
void log_set_level(enum log_level level);
int log_enabled(enum log_level level);

/* fmt continues the line after `msg=`; it should start with a quoted message,
 * e.g. log_info("\"token loaded\" label=%s", label). */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)

/* For sources a client can make noisy (libevent's warnings, failing
 * accepts): at most LOG_LIMITED_BURST such lines a second, process-wide; the
 * rest are counted and reported in one "log lines suppressed" line when the
 * next window opens or at log_limited_flush() (shutdown). */
#define LOG_LIMITED_BURST 10
void log_limited(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_limited_flush(void);

/* log_file (config.h): makes path, opened for appending (created 0600),
 * the process's standard error, so that these lines and anything else
 * written there (libevent's, a library's) land in it.  Each call opens the
 * path afresh: after logrotate has moved the file away, SIGUSR1 calls it
 * again and lines go to the new file.  The old descriptor is replaced in
 * one dup2, so no line is lost or split.  path NULL (a reload that drops
 * log_file): back to the standard error the process started with.  Returns
 * 0 or -errno (logged).  Main thread only. */
int log_open_file(const char *path);

/* Copies src into buf (size n) as a double-quoted value with ", \ and control
 * characters escaped, truncated to fit; returns buf. */
const char *log_quote(char *buf, size_t n, const char *src);

#endif
