/* config_live: versions replaced by reload while readers hold them — the
 * references (nothing freed early: ASan; nothing kept: the version count),
 * which keys a reload may change and which block it, naming the key, and
 * readers on four threads adopting while 1000 versions are published. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/config.h"

#define ERRLEN 256
#define THREADS 4
#define PUBLISHES 1000
#define BOOT_PIN "boot-pin-1234"

static void set(struct config *cfg, const char *key, const char *value)
{
	char err[ERRLEN] = "";

	if (config_set(cfg, key, value, err, sizeof(err)) != 0)
		fail_msg("config_set %s: %s", key, err);
}

/* The defaults with a development pin, as a daemon started with HSMJWT_PIN
 * holds them. */
static void boot_config(struct config *cfg)
{
	assert_int_equal(config_init_defaults(cfg), 0);
	set(cfg, "pin", BOOT_PIN);
}

static struct config_live *new_live(void)
{
	struct config boot;
	struct config_live *live = NULL;

	boot_config(&boot);
	assert_int_equal(config_live_new(&boot, &live), 0);
	/* Moved: nothing left to free, and config_free on it is harmless. */
	assert_null(boot.issuer);
	assert_null(boot.pin);
	config_free(&boot);
	return live;
}

/* Publishes the defaults with access_ttl = ttl; the version as adopted. */
static void publish_ttl(struct config_live *live, int64_t ttl)
{
	struct config next;
	const char *blocker = "unset";

	boot_config(&next);
	next.access_ttl = ttl;
	assert_int_equal(config_live_publish(live, &next, &blocker), 0);
	assert_null(blocker);
	assert_null(next.issuer);
	config_free(&next);
}

static void test_references(void **state)
{
	struct config_live *live = new_live();
	const struct config *boot = config_live_boot(live), *a = NULL, *b = NULL, *kept, *main_slot = NULL;

	assert_non_null(boot);
	assert_string_equal(boot->pin, BOOT_PIN);
	assert_int_equal(config_live_versions(live), 1);

	/* Nothing published yet: the boot version is current. */
	config_live_adopt(live, &a);
	assert_ptr_equal(a, boot);
	config_live_adopt(live, &a);
	assert_ptr_equal(a, boot);

	publish_ttl(live, 111);
	assert_int_equal(config_live_versions(live), 2);
	/* A reader keeps its version until it adopts again. */
	assert_ptr_equal(a, boot);
	config_live_adopt(live, &b);
	assert_int_equal(b->access_ttl, 111);
	/* The published version's pin went once compared; the boot's stays. */
	assert_null(b->pin);
	assert_string_equal(boot->pin, BOOT_PIN);

	publish_ttl(live, 222);
	/* boot (pinned, and a holds it), 111 (b), 222 (current). */
	assert_int_equal(config_live_versions(live), 3);
	assert_int_equal(b->access_ttl, 111);
	kept = config_live_retain(live, b);
	assert_ptr_equal(kept, b);
	config_live_adopt(live, &b);
	assert_int_equal(b->access_ttl, 222);
	/* 111 lives on for its retained reference, and is read. */
	assert_int_equal(config_live_versions(live), 3);
	assert_int_equal(kept->access_ttl, 111);
	assert_string_equal(kept->issuer, "http://127.0.0.1:8080");
	config_live_release(live, kept);
	assert_int_equal(config_live_versions(live), 2);

	publish_ttl(live, 333);
	config_live_adopt(live, &a);
	assert_int_equal(a->access_ttl, 333);
	/* boot (pinned), 222 (b), 333 (current, a). */
	assert_int_equal(config_live_versions(live), 3);
	config_live_leave(live, &b);
	assert_null(b);
	assert_int_equal(config_live_versions(live), 2);
	config_live_leave(live, &b);   /* twice is harmless */

	/* A version no reader ever adopted goes when the next replaces it. */
	publish_ttl(live, 444);
	publish_ttl(live, 555);
	assert_int_equal(config_live_versions(live), 3);   /* boot, 333 (a), 555 */
	config_live_adopt(live, &main_slot);
	assert_int_equal(main_slot->access_ttl, 555);
	config_live_leave(live, &a);
	config_live_leave(live, &main_slot);
	assert_int_equal(config_live_versions(live), 2);    /* boot, 555 current */
	/* The boot version stays pinned even when nobody reads it. */
	assert_string_equal(config_live_boot(live)->pin, BOOT_PIN);
	config_live_free(live);
}

/* live NULL (unit tests with a plain config): the reader side does nothing. */
static void test_without_live(void **state)
{
	struct config cfg;
	const struct config *slot = &cfg;

	assert_int_equal(config_init_defaults(&cfg), 0);
	config_live_adopt(NULL, &slot);
	assert_ptr_equal(slot, &cfg);
	assert_ptr_equal(config_live_retain(NULL, &cfg), &cfg);
	config_live_release(NULL, &cfg);
	config_live_leave(NULL, &slot);
	assert_ptr_equal(slot, &cfg);
	config_live_free(NULL);
	config_free(&cfg);
}

struct key_change {
	const char *key;
	const char *value;
};

/* Every key a reload must refuse, each with a value unlike the default. */
static const struct key_change restart_only[] = {
	{ "listen", "127.0.0.1:9999" },
	{ "listen", "127.0.0.1:8080,127.0.0.1:8081" },
	{ "listen", "systemd" },
	{ "admin_listen", "127.0.0.1:9998" },
	{ "issuer", "https://other.example" },
	{ "pkcs11_module", "/usr/lib/other-pkcs11.so" },
	{ "token", "other-token" },
	{ "pin_file", "/run/credentials/pin" },
	{ "pin", "boot-pin-1235" },   /* same length, last byte differs */
	{ "pin", "" },                /* unset */
	{ "state_dir", "/var/lib/other" },
	{ "algorithms", "ES384" },
	{ "algorithms", "ES256 RS256" },
	{ "rsa_bits", "4096" },
	{ "max_ttl", "86400" },
	{ "leeway", "10" },
	{ "rotation_period", "0" },
	{ "publish_ahead", "60" },
	{ "workers", NULL },          /* the default + 1, computed */
	{ "max_body", "2048" },
	{ "max_connections", "5" },
	{ "max_connections_per_address", "0" },
	{ "fsync", "interval" },
};

static const struct key_change reloadable[] = {
	{ "log_level", "debug" },
	{ "log_file", "/var/log/hsmjwt.log" },
	{ "rate_limit", "5" },
	{ "access_ttl", "1234" },
	{ "refresh_ttl", "4321" },
	{ "id_ttl", "600" },
	{ "parent_ttl", "7200" },
	{ "child_ttl", "300" },
	{ "renew_before", "60" },
	{ "default_audience", "other-api" },
	{ "authorization_endpoint", "https://login.example/authorize" },
};

static void test_restart_only_keys_block(void **state)
{
	struct config_live *live = new_live();
	const struct config *boot = config_live_boot(live);

	for (size_t i = 0; i < sizeof(restart_only) / sizeof(restart_only[0]); i++) {
		struct config next;
		const char *blocker = NULL;
		char workers[16], names[256];

		boot_config(&next);
		if (restart_only[i].value == NULL) {
			snprintf(workers, sizeof(workers), "%u", boot->workers + 1);
			set(&next, restart_only[i].key, workers);
		} else {
			set(&next, restart_only[i].key, restart_only[i].value);
		}
		/* A reloadable change alongside does not carry it through. */
		next.access_ttl = 77;
		print_message("%s = %s\n", restart_only[i].key,
			      strcmp(restart_only[i].key, "pin") == 0 ? "(a PIN)" :
			      restart_only[i].value ? restart_only[i].value : workers);
		assert_string_equal(config_reload_blocker(boot, &next), restart_only[i].key);
		assert_int_equal(config_live_publish(live, &next, &blocker), -EPERM);
		assert_non_null(blocker);
		assert_string_equal(blocker, restart_only[i].key);
		/* Refused: next is the caller's still, pin and all. */
		assert_non_null(next.issuer);
		assert_int_equal(next.access_ttl, 77);
		if (strcmp(restart_only[i].key, "pin") == 0 && restart_only[i].value[0] != '\0')
			assert_string_equal(next.pin, restart_only[i].value);
		assert_int_equal(config_reload_changes(boot, &next, names, sizeof(names)), 1);
		assert_string_equal(names, "access_ttl");
		config_free(&next);
		assert_int_equal(config_live_versions(live), 1);
	}
	config_live_free(live);
}

static void test_reloadable_keys_pass(void **state)
{
	struct config_live *live = new_live();
	const struct config *reader = NULL;
	char names[512] = "", want[512] = "";
	struct config all;

	boot_config(&all);
	for (size_t i = 0; i < sizeof(reloadable) / sizeof(reloadable[0]); i++) {
		struct config next;
		const char *blocker = "unset";
		char one[64];

		boot_config(&next);
		set(&next, reloadable[i].key, reloadable[i].value);
		set(&all, reloadable[i].key, reloadable[i].value);
		assert_null(config_reload_blocker(config_live_boot(live), &next));
		assert_int_equal(config_reload_changes(config_live_boot(live), &next, one, sizeof(one)), 1);
		assert_string_equal(one, reloadable[i].key);
		snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s", i ? "," : "", reloadable[i].key);
		assert_int_equal(config_live_publish(live, &next, &blocker), 0);
		assert_null(blocker);
		config_free(&next);
	}
	/* Everything at once, and the version readers then see. */
	assert_int_equal(config_reload_changes(config_live_boot(live), &all, names, sizeof(names)),
			 sizeof(reloadable) / sizeof(reloadable[0]));
	assert_string_equal(names, want);
	/* A short buffer is cut, never overrun, and the count stays whole. */
	assert_int_equal(config_reload_changes(config_live_boot(live), &all, names, 12),
			 sizeof(reloadable) / sizeof(reloadable[0]));
	assert_true(strlen(names) < 12);
	assert_int_equal(config_live_publish(live, &all, NULL), 0);
	config_live_adopt(live, &reader);
	assert_int_equal(reader->log_level, LOG_LEVEL_DEBUG);
	assert_string_equal(reader->log_file, "/var/log/hsmjwt.log");
	assert_int_equal(reader->rate_limit, 5);
	assert_int_equal(reader->access_ttl, 1234);
	assert_int_equal(reader->refresh_ttl, 4321);
	assert_int_equal(reader->id_ttl, 600);
	assert_int_equal(reader->parent_ttl, 7200);
	assert_int_equal(reader->child_ttl, 300);
	assert_int_equal(reader->renew_before, 60);
	assert_string_equal(reader->default_audience, "other-api");
	assert_string_equal(reader->authorization_endpoint, "https://login.example/authorize");
	/* The same config again changes nothing. */
	assert_int_equal(config_reload_changes(reader, reader, names, sizeof(names)), 0);
	assert_string_equal(names, "");
	config_live_leave(live, &reader);
	assert_int_equal(config_live_versions(live), 2);
	config_free(&all);
	config_live_free(live);
}

/* ---- readers on threads ---------------------------------------------- */

struct reader {
	pthread_t thread;
	struct config_live *live;
	unsigned adopted;      /* versions this reader moved to */
	unsigned torn;         /* a version whose fields disagree */
	unsigned backwards;    /* an older version after a newer one */
};

/* Version i: access_ttl i, refresh_ttl i + 1000000, default_audience
 * "aud-i" (a string, so that a freed version is a read ASan reports). */
static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	const struct config *slot = NULL;
	int64_t last = -1;
	char want[32];

	while (last < PUBLISHES) {
		const struct config *before = slot;
		config_live_adopt(rd->live, &slot);
		if (slot != before)
			rd->adopted++;
		snprintf(want, sizeof(want), "aud-%lld", (long long)slot->access_ttl);
		if (slot->refresh_ttl != slot->access_ttl + 1000000 || strcmp(slot->default_audience, want) != 0)
			rd->torn++;
		if (slot->access_ttl < last)
			rd->backwards++;
		last = slot->access_ttl;
	}
	config_live_leave(rd->live, &slot);
	return NULL;
}

static void version_fields(struct config *cfg, int64_t i)
{
	char aud[32];

	cfg->access_ttl = i;
	cfg->refresh_ttl = i + 1000000;
	snprintf(aud, sizeof(aud), "aud-%lld", (long long)i);
	set(cfg, "default_audience", aud);
}

static void test_threads(void **state)
{
	struct config boot;
	struct config_live *live = NULL;
	struct reader readers[THREADS];

	boot_config(&boot);
	version_fields(&boot, 0);
	assert_int_equal(config_live_new(&boot, &live), 0);
	memset(readers, 0, sizeof(readers));
	for (int t = 0; t < THREADS; t++) {
		readers[t].live = live;
		assert_int_equal(pthread_create(&readers[t].thread, NULL, reader_main, &readers[t]), 0);
	}
	for (int64_t i = 1; i <= PUBLISHES; i++) {
		struct config next;
		boot_config(&next);
		version_fields(&next, i);
		assert_int_equal(config_live_publish(live, &next, NULL), 0);
		/* Besides boot and current, at most two versions per reader: the
		 * one it holds, and the one it is leaving — config_live_adopt
		 * takes the new reference before it drops the old one, and a
		 * version whose last reference went is counted until its
		 * unlinking, so a reader in the middle of a move accounts for
		 * two.  A leak would grow with PUBLISHES (1000), far past it. */
		assert_true(config_live_versions(live) <= 2 + 2 * THREADS);
	}
	for (int t = 0; t < THREADS; t++) {
		assert_int_equal(pthread_join(readers[t].thread, NULL), 0);
		print_message("reader %d: %u versions adopted\n", t, readers[t].adopted);
		assert_int_equal(readers[t].torn, 0);
		assert_int_equal(readers[t].backwards, 0);
		assert_true(readers[t].adopted >= 1);
	}
	/* Every reader left: the boot version and the current one remain. */
	assert_int_equal(config_live_versions(live), 2);
	config_live_free(live);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_references),
		cmocka_unit_test(test_without_live),
		cmocka_unit_test(test_restart_only_keys_block),
		cmocka_unit_test(test_reloadable_keys_pass),
		cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
