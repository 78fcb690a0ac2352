/* hsmjwtd: the token service daemon. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/http.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/keyring.h"
#include "hsmjwt/keys.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"
#include "hsmjwt/registry.h"
#include "hsmjwt/service.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: hsmjwtd [--config FILE] [--check-config]\n"
		"  -c, --config FILE     key = value configuration (see hsmjwt.conf(5))\n"
		"  -n, --check-config    validate the configuration and exit 0 (valid) or 1\n"
		"  -V, --version         print the version\n"
		"Every key can also be set as HSMJWT_<KEY> in the environment.\n");
}

/* SIGHUP (SPEC §8): the config read again as the start read it (the same
 * --config path and environment) and published for the workers' next
 * requests.  A file that does not load, a bad value or a restart-only key
 * changed keeps the running config; systemd hears why in STATUS=.
 * *current is the main thread's own version (config_live_adopt). */
static void reload(struct config_live *live, const char *path, const struct config **current)
{
	const struct config *boot = config_live_boot(live);
	struct config next;
	struct timespec now;
	char err[512] = "", quoted[600], changed[256];
	const char *blocker = NULL;
	size_t n_changed = 0;
	int r;

	memset(&next, 0, sizeof(next));
	clock_gettime(CLOCK_MONOTONIC, &now);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
		   (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000);
	r = service_reload_config(boot, &next, path, err, sizeof(err));
	if (r < 0)
		goto out;
	blocker = config_reload_blocker(boot, &next);
	if (blocker != NULL) {
		snprintf(err, sizeof(err), "%s: cannot change without a restart", blocker);
		r = -EPERM;
		goto out;
	}
	/* Before anything is published: a log_file that cannot be opened is
	 * a bad value like any other (log_open_file has logged why). */
	if (next.log_file != NULL)
		r = log_open_file(next.log_file);
	else if ((*current)->log_file != NULL)
		r = log_open_file(NULL);
	if (r < 0) {
		snprintf(err, sizeof(err), "log_file: `%s' cannot be opened: %s", next.log_file ? next.log_file : "",
			 strerror(-r));
		goto out;
	}
	n_changed = config_reload_changes(*current, &next, changed, sizeof(changed));
	r = config_live_publish(live, &next, &blocker);
	if (r < 0) {
		snprintf(err, sizeof(err), "%s", blocker ? blocker : "out of memory");
		/* Lines go where the running config says, not where the refused
		 * one would have sent them. */
		log_open_file((*current)->log_file);
	}
out:
	/* Published, next is empty; refused, it is still ours (its pin wiped
	 * with it). */
	config_free(&next);
	metrics_config_reload(r == 0);
	if (r < 0) {
		log_error("\"configuration reload failed, the running configuration stays\" error=%s",
			  log_quote(quoted, sizeof(quoted), err));
		sd_notifyf(0, "READY=1\nSTATUS=serving with the previous configuration: reload failed: %s", err);
		return;
	}
	config_live_adopt(live, current);
	log_set_level((*current)->log_level);
	log_info("\"configuration reloaded\" changed=%s", n_changed ? changed : "none");
	sd_notify(0, "READY=1\nSTATUS=serving; configuration reloaded");
}

/* SIGUSR1: logrotate has moved log_file away; lines go to a new file at
 * the path from now on. */
static void reopen_log(const struct config *current)
{
	char quoted[600];

	if (current->log_file == NULL) {
		log_info("\"SIGUSR1: no log_file to reopen, logging to standard error\"");
		return;
	}
	if (log_open_file(current->log_file) == 0)
		log_info("\"log file reopened\" log_file=%s", log_quote(quoted, sizeof(quoted), current->log_file));
}

/* Serves signals in the main thread until SIGTERM/SIGINT; the workers never
 * see signals because the mask is set before they start. */
static void wait_for_stop(const sigset_t *set, struct config_live *live, const char *path,
			  const struct config **current)
{
	for (;;) {
		int sig = 0;
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			reload(live, path, current);
			continue;
		}
		if (sig == SIGUSR1) {
			reopen_log(*current);
			continue;
		}
		log_info("\"stopping\" signal=%s", strsignal(sig));
		return;
	}
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'n' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config cfg;
	struct config_live *live = NULL;
	const struct config *boot = NULL, *current = NULL;
	struct hsm *hsm = NULL;
	struct keys *keys = NULL;
	struct keyring *keyring = NULL;
	struct http_server *server = NULL;
	struct registry *registry = NULL;
	const char *config_path = NULL;
	int check_only = 0, opt, r, status = 1, lock_fd = -1;
	sigset_t set;

	while ((opt = getopt_long(argc, argv, "c:nVh", options, NULL)) != -1) {
		switch (opt) {
		case 'c': config_path = optarg; break;
		case 'n': check_only = 1; break;
		case 'V': printf("hsmjwtd %s\n", HSMJWT_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	/* Before the configuration: HSMJWT_PIN is read from the environment
	 * there. */
	if (service_harden_process() < 0)
		return 1;
	if (service_load_config(&cfg, config_path) < 0)
		return 1;
	if (check_only) {
		printf("configuration OK\n");
		config_free(&cfg);
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	/* Before anything worth keeping is logged (log_open_file has logged
	 * why it cannot). */
	if (cfg.log_file != NULL && log_open_file(cfg.log_file) < 0)
		goto out;

	r = service_lock_state_dir(cfg.state_dir, &lock_fd);
	if (r < 0)
		goto out;
	/* Before the token: a registry that cannot be trusted stops the start
	 * whatever the token says (registry_open has logged why). */
	r = registry_open(cfg.state_dir, cfg.fsync_always ? REGISTRY_FSYNC_ALWAYS : REGISTRY_FSYNC_INTERVAL, cfg.leeway,
			  &registry);
	if (r < 0)
		goto out;
	r = service_open_token(&cfg, 1, &hsm);
	if (r == HSM_E_PIN) {
		/* hsm_login has named the CKR.  A restart would try the same PIN
		 * (and lock it): the unit does not restart on EX_CONFIG. */
		sd_notify(0, "STATUS=not started: the token refused the PIN; fix the PIN source, then start again");
		status = EX_CONFIG;
	}
	if (r < 0)
		goto out;
	/* From here on the config is versions a reload replaces; what is built
	 * once follows the boot version, the PIN source of a recovery too. */
	r = config_live_new(&cfg, &live);
	if (r < 0)
		goto out;
	boot = config_live_boot(live);
	service_set_pin_source(hsm, boot);
	config_live_adopt(live, &current);
	/* The lifecycle first: a configured algorithm without a key gets one,
	 * so a fresh token serves at once; due activations, retirements and
	 * destructions are written before the first request. */
	r = keys_sync(hsm, boot, (int64_t)time(NULL), KEYS_SYNC_GENERATE | KEYS_SYNC_ROTATE | KEYS_SYNC_DESTROY, NULL);
	if (r == 0)
		r = keys_load(hsm, boot, (int64_t)time(NULL), &keys);
	if (r < 0) {
		/* The hsm module logged the Cryptoki failure; this is the decision. */
		log_error("\"not starting: the token's keys cannot be loaded\" error=%d", r);
		goto out;
	}
	log_info("\"keys loaded\" count=%zu", keys->count);
	r = keyring_start(boot, hsm, keys, &keyring);
	keys = NULL; /* the keyring's now, even on failure */
	if (r < 0)
		goto out;
	/* 4096 tokens a thread, 160 KiB: callers reuse one bearer token for
	 * hours and resource servers ask about the same token again and again;
	 * the memo makes each repeat a SHA-256 instead of a signature check. */
	r = jws_verify_memo_enable(4096);
	if (r < 0) {
		log_error("\"cannot set up the verification memo\" error=%d", r);
		goto out;
	}
	r = http_start(live, hsm, keyring, registry, &server);
	if (r < 0)
		goto out;
	sd_notify(0, "READY=1\nSTATUS=serving");
	wait_for_stop(&set, live, config_path, &current);
	sd_notify(0, "STOPPING=1");
	status = 0;
out:
	/* In-flight replies wait for the registry, which flushes before the
	 * workers' loops, where its callbacks land, are freed. */
	http_quiesce(server);
	/* After the workers, before their loops are freed: a rotation still
	 * running answers onto a loop that exists. */
	keyring_stop(keyring);
	registry_close(registry);
	http_stop(server);
	keys_release(keys);
	hsm_close(hsm);
	config_live_leave(live, &current);
	config_live_free(live);
	config_free(&cfg);
	if (lock_fd >= 0)
		close(lock_fd);
	if (status == 0)
		log_info("\"stopped\"");
	return status;
}
