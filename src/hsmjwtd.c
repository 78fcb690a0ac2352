/* hsmjwtd: the token service daemon. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/http.h"
#include "hsmjwt/keyring.h"
#include "hsmjwt/keys.h"
#include "hsmjwt/log.h"
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

/* Waits for SIGTERM/SIGINT in the main thread; the workers never see signals
 * because the mask is set before they start. */
static void wait_for_stop(const sigset_t *set)
{
	for (;;) {
		int sig = 0;
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_warn("\"SIGHUP ignored: configuration reload is not supported yet\"");
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
	pthread_sigmask(SIG_BLOCK, &set, NULL);

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
	if (r < 0)
		goto out;
	/* The lifecycle first: a configured algorithm without a key gets one,
	 * so a fresh token serves at once; due activations, retirements and
	 * destructions are written before the first request. */
	r = keys_sync(hsm, &cfg, (int64_t)time(NULL), KEYS_SYNC_GENERATE | KEYS_SYNC_ROTATE | KEYS_SYNC_DESTROY, NULL);
	if (r == 0)
		r = keys_load(hsm, &cfg, (int64_t)time(NULL), &keys);
	if (r < 0) {
		/* The hsm module logged the Cryptoki failure; this is the decision. */
		log_error("\"not starting: the token's keys cannot be loaded\" error=%d", r);
		goto out;
	}
	log_info("\"keys loaded\" count=%zu", keys->count);
	r = keyring_start(&cfg, hsm, keys, &keyring);
	keys = NULL; /* the keyring's now, even on failure */
	if (r < 0)
		goto out;
	r = http_start(&cfg, hsm, keyring, registry, &server);
	if (r < 0)
		goto out;
	sd_notify(0, "READY=1\nSTATUS=serving");
	wait_for_stop(&set);
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
	config_free(&cfg);
	if (lock_fd >= 0)
		close(lock_fd);
	if (status == 0)
		log_info("\"stopped\"");
	return status;
}
