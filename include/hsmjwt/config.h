/* config: SPEC §3 — built-in defaults, then the config file, then HSMJWT_<KEY>
 * environment variables (later wins).  Unknown keys are errors; every error
 * message names the key (and file:line for the file). */
#ifndef HSMJWT_CONFIG_H
#define HSMJWT_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"
#include "hsmjwt/log.h"

#define CONFIG_MAX_LISTEN 8
#define CONFIG_MAX_ALGS   6

struct config_listen {
	char host[256];   /* numeric address or name; IPv6 without brackets */
	uint16_t port;
};

struct config {
	struct config_listen listen[CONFIG_MAX_LISTEN];
	size_t listen_count;
	int listen_systemd;               /* listen = systemd */
	struct config_listen admin_listen;
	int admin_listen_set;
	char *issuer;
	/* The login front end's URL for discovery's authorization_endpoint
	 * (RFC 8414 §2, OIDC Discovery §3); NULL: not advertised. */
	char *authorization_endpoint;
	char *default_audience;
	char *pkcs11_module;
	char *token;                      /* label or pkcs11: URI */
	char *pin_file;
	char *pin;                        /* development only; wiped by config_free (pin.h reads it) */
	char *state_dir;
	enum jws_alg algorithms[CONFIG_MAX_ALGS];
	size_t algorithm_count;
	unsigned rsa_bits;
	int64_t access_ttl, refresh_ttl, id_ttl, parent_ttl, child_ttl;
	int64_t max_ttl;
	int64_t renew_before;
	int64_t leeway;
	int64_t rotation_period;
	int64_t publish_ahead;
	unsigned workers;
	size_t max_body;
	unsigned rate_limit;
	/* Open connections the daemon keeps at once, all workers together
	 * (each worker takes its share); at the limit a worker stops accepting
	 * until one of its connections closes — the rest wait in the kernel's
	 * backlog. */
	unsigned max_connections;
	/* The most of them one client address (an IPv6 /64) holds, so that
	 * one client holding connections idle cannot keep the others out; 0:
	 * no such limit (behind a proxy every connection is one address).
	 * CONFIG_PER_ADDRESS_UNSET until set: config_per_address gives the
	 * default, computed from max_connections. */
	unsigned max_connections_per_address;
	int fsync_always;                 /* fsync = always (1) or interval (0) */
	enum log_level log_level;
	/* Where log lines go instead of stderr (appended, 0600); SIGUSR1 and a
	 * reload reopen it, for logrotate.  NULL: stderr (the journal). */
	char *log_file;
};

#define CONFIG_PER_ADDRESS_UNSET UINT_MAX

/* max_connections_per_address as it applies: the value set, or when unset
 * all but a sixteenth of max_connections (none kept back under 16). */
unsigned config_per_address(const struct config *cfg);

/* Fills cfg with the built-in defaults (workers = number of CPUs). */
int config_init_defaults(struct config *cfg);

/* Applies `key = value` lines from buf ('#' comments, blank lines; values
 * may be double-quoted).  origin names the source in errors ("FILE").  On
 * error returns -EINVAL and writes a one-line message naming origin:line and
 * the key into err (size errlen).  A pure function over the buffer. */
int config_parse_buffer(struct config *cfg, const char *buf, size_t len, const char *origin,
			char *err, size_t errlen);

/* Sets one key from a string (what a file line or an env variable says). */
int config_set(struct config *cfg, const char *key, const char *value, char *err, size_t errlen);

/* Reads path and applies it with config_parse_buffer. */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);

/* Applies HSMJWT_<KEY> variables from envp (NULL-terminated "K=V" strings);
 * an HSMJWT_ variable naming no key is an error. */
int config_apply_env(struct config *cfg, char *const *envp, char *err, size_t errlen);

/* Cross-key checks after everything is applied (TTLs <= max_ttl, rsa_bits >=
 * 2048, at least one algorithm, ...). */
int config_validate(const struct config *cfg, char *err, size_t errlen);

/* Defaults + file (if path) + environment + validate, as the daemon and
 * hsmjwtctl do it; then RS256 is appended to algorithms when missing (ID
 * tokens, SPEC §5.1: an RS256 key is always kept, never the default). */
int config_load(struct config *cfg, const char *path, char *const *envp, char *err, size_t errlen);

void config_free(struct config *cfg);
/* Deep copy: 0 and *dst with strings of its own, or -ENOMEM (*dst empty). */
int config_copy(struct config *dst, const struct config *src);

/* ---- reload (SIGHUP, config_live.c) -----------------------------------
 *
 * The daemon's config is replaced whole by a reload while other threads
 * read it.  Each reader (a worker, the renewal thread) holds a reference to
 * the version it uses and adopts the newest between units of work — one
 * request, one renewal round — so a unit of work never sees two versions,
 * and a version is freed once the last reader has moved on.
 *
 * Only some keys may change by reload: log_level, log_file, rate_limit,
 * access_ttl, refresh_ttl, id_ttl, parent_ttl, child_ttl, renew_before,
 * default_audience, authorization_endpoint.  The others shaped what was
 * built at start (sockets, the token session, the registry, the key
 * lifecycle the keyring enforces — max_ttl and leeway decide when a retired
 * key may be destroyed — and the issuer every token and discovery carry):
 * a reload that changes one of them is refused whole, naming the key, and
 * the running config stays (restart to apply it). */
struct config_live;

/* Takes over *cfg (moved: *cfg is left zeroed, config_free on it is a
 * no-op).  That first version is the boot config: pinned until
 * config_live_free, for what is built once at start. */
int config_live_new(struct config *cfg, struct config_live **ret_live);
const struct config *config_live_boot(const struct config_live *live);
/* NULL when next may replace current by reload, else the name of the
 * first key that differs and cannot change without a restart. */
const char *config_reload_blocker(const struct config *current, const struct config *next);
/* For the reload's log line: how many reloadable keys differ, their names
 * written comma-separated into buf (size n, truncated to fit). */
size_t config_reload_changes(const struct config *current, const struct config *next, char *buf, size_t n);
/* Publishes *next (moved, as above) as the current version: readers adopt
 * it at their next config_live_adopt.  -EPERM (and *next untouched) when
 * config_reload_blocker objects — compared with the boot version, whose
 * restart-only keys every version keeps; *ret_blocker (may be NULL) names
 * the key.  The published version's development pin is wiped and dropped
 * once compared: only the boot version keeps one (a recovery logs in with
 * it). */
int config_live_publish(struct config_live *live, struct config *next, const char **ret_blocker);
/* Reader side: *slot is the version the reader uses (NULL before its
 * first adopt).  When another version is current, takes a reference to it,
 * drops the one *slot held and points *slot at it.  One atomic load when
 * nothing changed.  live NULL (unit tests with a plain config): no-op. */
void config_live_adopt(struct config_live *live, const struct config **slot);
/* A reader that stops: drops *slot's reference and sets it NULL. */
void config_live_leave(struct config_live *live, const struct config **slot);
/* One more reference, for work that outlives the reader's next adopt (a
 * step finished on a later callback); each is released once.  live NULL:
 * cfg itself, no counting. */
const struct config *config_live_retain(struct config_live *live, const struct config *cfg);
void config_live_release(struct config_live *live, const struct config *cfg);
/* Versions still allocated: the boot one, the current one and those
 * readers still hold (tests count them). */
size_t config_live_versions(struct config_live *live);
/* Frees live and every version; no reader may hold one any more. */
void config_live_free(struct config_live *live);

#endif
