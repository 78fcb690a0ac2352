/* service: what the daemon and hsmjwtctl share to get going — the config
 * from --config and the environment, and the token opened with the PIN, the
 * PIN wiped as soon as the login is done. */
#ifndef HSMJWT_SERVICE_H
#define HSMJWT_SERVICE_H

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"

/* config_load with the process environment; prints the error to stderr. */
int service_load_config(struct config *cfg, const char *path);

/* The same for a reload (SIGHUP): the same path and environment, nothing
 * printed, the log level left alone.  0 and *cfg, or an error with err
 * (size errlen) naming the key.  HSMJWT_PIN, wiped from the environment by
 * the start, still stands as the start read it: then *cfg's pin is a copy
 * of boot's (config_live_publish compares and drops it). */
int service_reload_config(const struct config *boot, struct config *cfg, const char *path, char *err,
			  size_t errlen);

/* Reads the PIN per cfg (none is fine when the token needs no login),
 * opens the token, wipes the PIN, the development pin key in cfg included.
 * recoverable (the daemon): the token may need a new login after a fault
 * (SPEC §8), so the PIN source is kept — a file or credential is read again
 * then, and only the development pin key stays in cfg until config_free.
 * 0 and *ret_hsm, or a negative error. */
int service_open_token(struct config *cfg, int recoverable, struct hsm **ret_hsm);
/* Where a recovery reads the PIN from: cfg, which must outlive hsm (the
 * daemon moves its config into a config_live after the token is open, and
 * points the source at the boot version). */
void service_set_pin_source(struct hsm *hsm, const struct config *cfg);

/* No core dumps and no ptrace or /proc/PID/mem by other processes of the
 * same user (PR_SET_DUMPABLE 0): first thing in main, before the PIN is
 * read.  0, or a negative errno (logged). */
int service_harden_process(void);

/* Creates state_dir (0700) if needed and takes its exclusive lock (SPEC §7:
 * one daemon per state_dir); the lock lives as long as *ret_fd is open.
 * Once locked, a state_dir or a regular file in it that group or others
 * may read is made 0700 or 0600 (logged); one another user owns is only
 * logged, for its owner to fix.
 * -EBUSY when another process holds the lock. */
int service_lock_state_dir(const char *state_dir, int *ret_fd);

#endif
