/* fuzz_config: config_parse_buffer over the built-in defaults, then
 * config_validate and config_copy.
 *
 * Invariants: whatever the file says, and whether or not it parses, every
 * value the parser leaves is within its key's documented range (SPEC §3: a
 * bad line is refused, never half applied); an error message names the
 * origin; parsing is deterministic; a config that validates has its
 * cross-key rules (lifetimes within max_ttl, renew_before at most half of
 * child_ttl, max_connections >= workers, the per-address share within
 * max_connections); a copy is equal and its own. */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"

#define MAX_SECONDS INT64_C(315360000)   /* config.c's ten years */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet_logs();
	return 0;
}

static void check_string(const char *s, int optional)
{
	if (s == NULL) {
		FUZZ_CHECK(optional);
		return;
	}
	FUZZ_CHECK(strlen(s) <= 4096);
}

static void check_ranges(const struct config *c)
{
	FUZZ_CHECK(c->listen_count <= CONFIG_MAX_LISTEN);
	for (size_t i = 0; i < c->listen_count; i++)
		FUZZ_CHECK(memchr(c->listen[i].host, '\0', sizeof(c->listen[i].host)) != NULL);
	FUZZ_CHECK(memchr(c->admin_listen.host, '\0', sizeof(c->admin_listen.host)) != NULL);
	FUZZ_CHECK(c->listen_systemd == 0 || c->listen_systemd == 1);
	check_string(c->issuer, 0);
	check_string(c->authorization_endpoint, 1);
	check_string(c->default_audience, 0);
	check_string(c->pkcs11_module, 0);
	check_string(c->token, 0);
	check_string(c->pin_file, 1);
	check_string(c->pin, 1);
	check_string(c->state_dir, 0);
	check_string(c->log_file, 1);
	FUZZ_CHECK(c->algorithm_count >= 1 && c->algorithm_count <= CONFIG_MAX_ALGS);
	for (size_t i = 0; i < c->algorithm_count; i++) {
		FUZZ_CHECK(hsm_alg_supported(c->algorithms[i]));
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(c->algorithms[i] != c->algorithms[j]);
	}
	FUZZ_CHECK(c->rsa_bits >= 2048 && c->rsa_bits <= 8192 && c->rsa_bits % 8 == 0);
	FUZZ_CHECK(c->access_ttl >= 1 && c->access_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->refresh_ttl >= 1 && c->refresh_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->id_ttl >= 1 && c->id_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->parent_ttl >= 1 && c->parent_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->child_ttl >= 1 && c->child_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->max_ttl >= 60 && c->max_ttl <= MAX_SECONDS);
	FUZZ_CHECK(c->renew_before >= 0 && c->renew_before <= MAX_SECONDS);
	FUZZ_CHECK(c->leeway >= 0 && c->leeway <= 300);
	FUZZ_CHECK(c->rotation_period >= 0 && c->rotation_period <= MAX_SECONDS);
	FUZZ_CHECK(c->publish_ahead >= 0 && c->publish_ahead <= MAX_SECONDS);
	FUZZ_CHECK(c->workers >= 1 && c->workers <= 64);
	FUZZ_CHECK(c->max_body >= 1024 && c->max_body <= 16 * 1024 * 1024);
	FUZZ_CHECK(c->rate_limit <= 1000000);
	FUZZ_CHECK(c->max_connections >= 1 && c->max_connections <= 1000000);
	FUZZ_CHECK(c->fsync_always == 0 || c->fsync_always == 1);
	FUZZ_CHECK(c->log_level >= LOG_LEVEL_ERROR && c->log_level <= LOG_LEVEL_DEBUG);
}

static int same_string(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static void check_equal(const struct config *a, const struct config *b)
{
	FUZZ_CHECK(a->listen_count == b->listen_count);
	FUZZ_CHECK(memcmp(a->listen, b->listen, sizeof(a->listen[0]) * a->listen_count) == 0);
	FUZZ_CHECK(a->listen_systemd == b->listen_systemd && a->admin_listen_set == b->admin_listen_set);
	FUZZ_CHECK(same_string(a->issuer, b->issuer));
	FUZZ_CHECK(same_string(a->authorization_endpoint, b->authorization_endpoint));
	FUZZ_CHECK(same_string(a->default_audience, b->default_audience));
	FUZZ_CHECK(same_string(a->pkcs11_module, b->pkcs11_module));
	FUZZ_CHECK(same_string(a->token, b->token));
	FUZZ_CHECK(same_string(a->pin_file, b->pin_file));
	FUZZ_CHECK(same_string(a->pin, b->pin));
	FUZZ_CHECK(same_string(a->state_dir, b->state_dir));
	FUZZ_CHECK(same_string(a->log_file, b->log_file));
	FUZZ_CHECK(a->algorithm_count == b->algorithm_count);
	FUZZ_CHECK(memcmp(a->algorithms, b->algorithms, sizeof(a->algorithms[0]) * a->algorithm_count) == 0);
	FUZZ_CHECK(a->rsa_bits == b->rsa_bits && a->max_ttl == b->max_ttl && a->leeway == b->leeway);
	FUZZ_CHECK(a->access_ttl == b->access_ttl && a->refresh_ttl == b->refresh_ttl && a->id_ttl == b->id_ttl);
	FUZZ_CHECK(a->parent_ttl == b->parent_ttl && a->child_ttl == b->child_ttl);
	FUZZ_CHECK(a->renew_before == b->renew_before && a->rotation_period == b->rotation_period);
	FUZZ_CHECK(a->publish_ahead == b->publish_ahead && a->workers == b->workers);
	FUZZ_CHECK(a->max_body == b->max_body && a->rate_limit == b->rate_limit);
	FUZZ_CHECK(a->max_connections == b->max_connections && a->fsync_always == b->fsync_always);
	FUZZ_CHECK(a->log_level == b->log_level);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config cfg, again, copy;
	char err[256], err2[256];
	int r, r2;

	FUZZ_CHECK(config_init_defaults(&cfg) == 0);
	FUZZ_CHECK(config_init_defaults(&again) == 0);
	memset(err, 0x55, sizeof(err));
	r = config_parse_buffer(&cfg, (const char *)data, size, "fuzz", err, sizeof(err));
	check_ranges(&cfg);

	/* The same file gives the same config and the same verdict. */
	memset(err2, 0x55, sizeof(err2));
	r2 = config_parse_buffer(&again, (const char *)data, size, "fuzz", err2, sizeof(err2));
	FUZZ_CHECK(r == r2);
	check_equal(&cfg, &again);
	config_free(&again);

	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL);
		FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		FUZZ_CHECK(strcmp(err, err2) == 0);
		FUZZ_CHECK(strncmp(err, "fuzz", 4) == 0);
	} else {
		FUZZ_CHECK(r == 0);
		err[0] = '\0';
		r = config_validate(&cfg, err, sizeof(err));
		FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		FUZZ_CHECK(r == 0 || (r < 0 && err[0] != '\0'));
		if (r == 0) {
			const int64_t ttls[] = { cfg.access_ttl, cfg.refresh_ttl, cfg.id_ttl, cfg.parent_ttl,
						 cfg.child_ttl };
			for (size_t i = 0; i < sizeof(ttls) / sizeof(ttls[0]); i++)
				FUZZ_CHECK(ttls[i] <= cfg.max_ttl);
			FUZZ_CHECK(cfg.renew_before <= cfg.child_ttl / 2);
			FUZZ_CHECK(cfg.max_connections >= cfg.workers);
			FUZZ_CHECK(config_per_address(&cfg) <= cfg.max_connections);
			FUZZ_CHECK(cfg.listen_count >= 1 || cfg.listen_systemd);
		}
		FUZZ_CHECK(config_copy(&copy, &cfg) == 0);
		check_equal(&cfg, &copy);
		FUZZ_CHECK(copy.issuer != cfg.issuer && copy.token != cfg.token);
		config_free(&copy);
	}
	config_free(&cfg);
	return 0;
}
