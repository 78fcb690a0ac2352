/* Key sets as the daemon makes them at start, for the tests of the modules
 * that use one. */
#include <string.h>
#include <time.h>

#include "fixture.h"
#include "hsmjwt/config.h"
#include "hsmjwt/keys.h"

int fixture_config(struct config *cfg, const enum jws_alg *algs, size_t n)
{
	if (config_init_defaults(cfg) < 0 || n > CONFIG_MAX_ALGS)
		return -1;
	memcpy(cfg->algorithms, algs, n * sizeof(*algs));
	cfg->algorithm_count = n;
	cfg->rsa_bits = 2048;
	cfg->publish_ahead = 60;
	cfg->rotation_period = 0;
	cfg->max_ttl = 600;
	cfg->leeway = 30;
	return 0;
}

int fixture_keys(struct hsm *hsm, const struct config *cfg, int generate, struct keys **ret_keys)
{
	int64_t now = (int64_t)time(NULL);
	int r = keys_sync(hsm, cfg, now, generate ? KEYS_SYNC_GENERATE : 0, NULL);

	return r < 0 ? r : keys_load(hsm, cfg, now, ret_keys);
}
