/* hsmjwtctl: what its files share — the command context, opening the
 * token, option parsing, output helpers — and the commands of
 * hsmjwtctl_keys.c (the key set and its lifecycle, SPEC §6) and of
 * hsmjwtctl_verify.c (offline verification) that the dispatch table in
 * hsmjwtctl.c names. */
#ifndef HSMJWTCTL_H
#define HSMJWTCTL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/keys.h"

struct ctl {
	struct config cfg;
	int cfg_loaded;
	const char *config_path;          /* --config, NULL when none */
	struct hsm *hsm;
	int open_failed;                  /* ctl_open tried and failed: not again */
};

/* ---- hsmjwtctl.c ------------------------------------------------------ */

/* Opens the token (once) with the configuration: 0, or -1 after a message
 * (the first time; a failed open is not tried again, its login either). */
int ctl_open(struct ctl *ctl);
/* Opens the token and loads the key set planned at now: 0 and *ret_keys
 * (one reference, keys_release it), or -1 after a message. */
int ctl_load_keys(struct ctl *ctl, int64_t now, struct keys **ret_keys);

/* Arguments are "--option value" pairs (names in known, may be NULL) and
 * valueless flags (names in flags, may be NULL), each given at most once:
 * 0, or -1 after a message naming the bad argument. */
int ctl_check_options(int argc, char **argv, const char *const *known, const char *const *flags);
/* The value of option name, NULL when absent; argv passed ctl_check_options. */
const char *ctl_option(int argc, char **argv, const char *const *flags, const char *name);
/* 1 when flag name was given; argv passed ctl_check_options. */
int ctl_flag(int argc, char **argv, const char *const *flags, const char *name);

/* Prints value as indented JSON and a newline: 0, or 1 on failure. */
int ctl_print_json(json_t *value);

/* "2026-11-23T10:00:00Z" (UTC) into buf, "-" for 0 (no such time) and
 * "never" for INT64_MAX; returns buf. */
#define CTL_TIME_MAX 32
const char *ctl_time(int64_t t, char buf[CTL_TIME_MAX]);

/* ---- hsmjwtctl_keys.c ------------------------------------------------- */

/* "ES256|ES384|..." as hsm_alg_supported answers, for usage and errors. */
const char *ctl_key_algs(void);

int cmd_keys_list(struct ctl *ctl, int argc, char **argv);
int cmd_keys_generate(struct ctl *ctl, int argc, char **argv);
int cmd_keys_rotate(struct ctl *ctl, int argc, char **argv);
int cmd_keys_retire(struct ctl *ctl, int argc, char **argv);
int cmd_keys_destroy(struct ctl *ctl, int argc, char **argv);
int cmd_jwks(struct ctl *ctl, int argc, char **argv);
/* status's lines about the key set: per configured algorithm its signer
 * and the next key waiting, then the count of keys per state. */
void ctl_keys_status(const struct ctl *ctl, const struct keys *keys);

/* ---- hsmjwtctl_verify.c ----------------------------------------------- */

/* verify TOKEN [--jwks URL|FILE] ...: offline, through libhsmjwt-verify;
 * never opens the token. */
int cmd_verify(struct ctl *ctl, int argc, char **argv);

#endif
