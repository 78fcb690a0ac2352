/* config: SPEC §3 — defaults, file syntax, environment, validation, error
 * messages that name the key (and never the PIN).  Reading the PIN: test_pin.c. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/crypto.h>

#include "fixture.h"
#include "hsmjwt/config.h"

#define ERRLEN 512
#define ORIGIN "test.conf"
/* Appears in no message unless a PIN leaked into it. */
#define PIN_MARKER "PinMarker7Qx"

static int parse(struct config *cfg, const char *text, char *err)
{
	err[0] = '\0';
	return config_parse_buffer(cfg, text, strlen(text), ORIGIN, err, ERRLEN);
}

static void init(struct config *cfg)
{
	assert_int_equal(config_init_defaults(cfg), 0);
}

static int str_eq(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Every field, so that a failed parse can be shown to have changed nothing. */
static void assert_config_equal(const struct config *a, const struct config *b)
{
	assert_int_equal(a->listen_count, b->listen_count);
	assert_memory_equal(a->listen, b->listen, sizeof(a->listen));
	assert_int_equal(a->listen_systemd, b->listen_systemd);
	assert_int_equal(a->admin_listen_set, b->admin_listen_set);
	assert_memory_equal(&a->admin_listen, &b->admin_listen, sizeof(a->admin_listen));
	assert_true(str_eq(a->issuer, b->issuer));
	assert_true(str_eq(a->authorization_endpoint, b->authorization_endpoint));
	assert_true(str_eq(a->default_audience, b->default_audience));
	assert_true(str_eq(a->pkcs11_module, b->pkcs11_module));
	assert_true(str_eq(a->token, b->token));
	assert_true(str_eq(a->pin_file, b->pin_file));
	assert_true(str_eq(a->pin, b->pin));
	assert_true(str_eq(a->state_dir, b->state_dir));
	assert_int_equal(a->algorithm_count, b->algorithm_count);
	assert_memory_equal(a->algorithms, b->algorithms, a->algorithm_count * sizeof(a->algorithms[0]));
	assert_int_equal(a->rsa_bits, b->rsa_bits);
	assert_int_equal(a->access_ttl, b->access_ttl);
	assert_int_equal(a->refresh_ttl, b->refresh_ttl);
	assert_int_equal(a->id_ttl, b->id_ttl);
	assert_int_equal(a->parent_ttl, b->parent_ttl);
	assert_int_equal(a->child_ttl, b->child_ttl);
	assert_int_equal(a->max_ttl, b->max_ttl);
	assert_int_equal(a->renew_before, b->renew_before);
	assert_int_equal(a->leeway, b->leeway);
	assert_int_equal(a->rotation_period, b->rotation_period);
	assert_int_equal(a->publish_ahead, b->publish_ahead);
	assert_int_equal(a->workers, b->workers);
	assert_int_equal(a->max_body, b->max_body);
	assert_int_equal(a->rate_limit, b->rate_limit);
	assert_int_equal(a->fsync_always, b->fsync_always);
	assert_int_equal(a->log_level, b->log_level);
}

static void test_defaults(void **state)
{
	struct config cfg;
	char err[ERRLEN] = "";
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	init(&cfg);
	assert_int_equal(cfg.listen_count, 1);
	assert_string_equal(cfg.listen[0].host, "127.0.0.1");
	assert_int_equal(cfg.listen[0].port, 8080);
	assert_int_equal(cfg.listen_systemd, 0);
	assert_int_equal(cfg.admin_listen_set, 0);
	assert_string_equal(cfg.issuer, "http://127.0.0.1:8080");
	assert_null(cfg.authorization_endpoint);
	assert_string_equal(cfg.default_audience, "api");
	assert_string_equal(cfg.pkcs11_module, HSMJWT_DEFAULT_MODULE);
	assert_string_equal(cfg.token, "hsmjwt-dev");
	assert_null(cfg.pin_file);
	assert_null(cfg.pin);
	assert_string_equal(cfg.state_dir, "./var");
	assert_int_equal(cfg.algorithm_count, 1);
	assert_int_equal(cfg.algorithms[0], JWS_ALG_ES256);
	assert_int_equal(cfg.rsa_bits, 3072);
	assert_int_equal(cfg.access_ttl, 3600);
	assert_int_equal(cfg.refresh_ttl, 2592000);
	assert_int_equal(cfg.id_ttl, 3600);
	assert_int_equal(cfg.parent_ttl, 2592000);
	assert_int_equal(cfg.child_ttl, 900);
	assert_int_equal(cfg.max_ttl, 2592000);
	assert_int_equal(cfg.renew_before, 120);
	assert_int_equal(cfg.leeway, 30);
	assert_int_equal(cfg.rotation_period, 7776000);
	assert_int_equal(cfg.publish_ahead, 3600);
	assert_int_equal(cfg.workers, cpus < 1 ? 1 : cpus > 64 ? 64 : cpus);
	assert_int_equal(cfg.max_body, 65536);
	assert_int_equal(cfg.rate_limit, 0);
	assert_int_equal(cfg.max_connections, 10000);
	assert_int_equal(cfg.max_connections_per_address, CONFIG_PER_ADDRESS_UNSET);
	assert_int_equal(config_per_address(&cfg), 10000 - 625);
	assert_int_equal(cfg.fsync_always, 1);
	assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
	/* The defaults are a valid configuration. */
	assert_int_equal(config_validate(&cfg, err, sizeof(err)), 0);
	config_free(&cfg);
	assert_null(cfg.issuer);
	/* A second free is harmless. */
	config_free(&cfg);
}

static void test_every_key(void **state)
{
	static const char text[] =
		"listen = 0.0.0.0:9000, [::1]:9001\n"
		"admin_listen = 127.0.0.1:9100\n"
		"issuer = https://auth.example.com\n"
		"authorization_endpoint = https://login.example.com/authorize?realm=a\n"
		"default_audience = billing\n"
		"pkcs11_module = /opt/hsm/lib/libvendor.so\n"
		"token = pkcs11:token=prod;serial=42\n"
		"pin_file = /run/hsmjwt/pin\n"
		"pin = 1234\n"
		"state_dir = /var/lib/hsmjwt\n"
		"algorithms = RS256, ES384 PS256,EdDSA ES256\n"
		"rsa_bits = 4096\n"
		"access_ttl = 600\n"
		"refresh_ttl = 86400\n"
		"id_ttl = 300\n"
		"parent_ttl = 7200\n"
		"child_ttl = 60\n"
		"max_ttl = 86400\n"
		"renew_before = 10\n"
		"leeway = 5\n"
		"rotation_period = 0\n"
		"publish_ahead = 0\n"
		"workers = 3\n"
		"max_body = 1024\n"
		"rate_limit = 50\n"
		"max_connections = 300\n"
		"max_connections_per_address = 20\n"
		"fsync = interval\n"
		"log_level = debug\n";
	struct config cfg;
	char err[ERRLEN];

	init(&cfg);
	assert_int_equal(parse(&cfg, text, err), 0);
	assert_int_equal(cfg.listen_count, 2);
	assert_string_equal(cfg.listen[0].host, "0.0.0.0");
	assert_int_equal(cfg.listen[0].port, 9000);
	assert_string_equal(cfg.listen[1].host, "::1");
	assert_int_equal(cfg.listen[1].port, 9001);
	assert_int_equal(cfg.admin_listen_set, 1);
	assert_string_equal(cfg.admin_listen.host, "127.0.0.1");
	assert_int_equal(cfg.admin_listen.port, 9100);
	assert_string_equal(cfg.issuer, "https://auth.example.com");
	assert_string_equal(cfg.authorization_endpoint, "https://login.example.com/authorize?realm=a");
	assert_string_equal(cfg.default_audience, "billing");
	assert_string_equal(cfg.pkcs11_module, "/opt/hsm/lib/libvendor.so");
	assert_string_equal(cfg.token, "pkcs11:token=prod;serial=42");
	assert_string_equal(cfg.pin_file, "/run/hsmjwt/pin");
	assert_string_equal(cfg.pin, "1234");
	assert_string_equal(cfg.state_dir, "/var/lib/hsmjwt");
	assert_int_equal(cfg.algorithm_count, 5);
	assert_int_equal(cfg.algorithms[0], JWS_ALG_RS256);
	assert_int_equal(cfg.algorithms[1], JWS_ALG_ES384);
	assert_int_equal(cfg.algorithms[2], JWS_ALG_PS256);
	assert_int_equal(cfg.algorithms[3], JWS_ALG_EDDSA);
	assert_int_equal(cfg.algorithms[4], JWS_ALG_ES256);
	assert_int_equal(cfg.rsa_bits, 4096);
	assert_int_equal(cfg.access_ttl, 600);
	assert_int_equal(cfg.refresh_ttl, 86400);
	assert_int_equal(cfg.id_ttl, 300);
	assert_int_equal(cfg.parent_ttl, 7200);
	assert_int_equal(cfg.child_ttl, 60);
	assert_int_equal(cfg.max_ttl, 86400);
	assert_int_equal(cfg.renew_before, 10);
	assert_int_equal(cfg.leeway, 5);
	assert_int_equal(cfg.rotation_period, 0);
	assert_int_equal(cfg.publish_ahead, 0);
	assert_int_equal(cfg.workers, 3);
	assert_int_equal(cfg.max_body, 1024);
	assert_int_equal(cfg.rate_limit, 50);
	assert_int_equal(cfg.max_connections, 300);
	assert_int_equal(cfg.max_connections_per_address, 20);
	assert_int_equal(config_per_address(&cfg), 20);
	assert_int_equal(cfg.fsync_always, 0);
	assert_int_equal(cfg.log_level, LOG_LEVEL_DEBUG);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	/* And back, through config_set. */
	assert_int_equal(config_set(&cfg, "fsync", "always", err, ERRLEN), 0);
	assert_int_equal(cfg.fsync_always, 1);
	assert_int_equal(config_set(&cfg, "log_level", "error", err, ERRLEN), 0);
	assert_int_equal(cfg.log_level, LOG_LEVEL_ERROR);
	assert_int_equal(config_set(&cfg, "log_level", "warn", err, ERRLEN), 0);
	assert_int_equal(cfg.log_level, LOG_LEVEL_WARN);
	/* Empty unsets the optional keys. */
	assert_int_equal(config_set(&cfg, "pin_file", "", err, ERRLEN), 0);
	assert_null(cfg.pin_file);
	assert_int_equal(config_set(&cfg, "pin", "", err, ERRLEN), 0);
	assert_null(cfg.pin);
	assert_int_equal(config_set(&cfg, "admin_listen", "", err, ERRLEN), 0);
	assert_int_equal(cfg.admin_listen_set, 0);
	assert_int_equal(config_set(&cfg, "authorization_endpoint", "", err, ERRLEN), 0);
	assert_null(cfg.authorization_endpoint);
	/* max_connections_per_address: empty is the default again, from max_connections. */
	assert_int_equal(config_set(&cfg, "max_connections_per_address", "", err, ERRLEN), 0);
	assert_int_equal(cfg.max_connections_per_address, CONFIG_PER_ADDRESS_UNSET);
	assert_int_equal(config_per_address(&cfg), 300 - 18);
	config_free(&cfg);
}

static void test_per_address(void **state)
{
	static const struct { unsigned max; unsigned want; } computed[] = {
		{ 1, 1 }, { 15, 15 }, { 16, 15 }, { 64, 60 }, { 100, 94 }, { 10000, 9375 }, { 1000000, 937500 },
	};
	static const char *const bad[] = { "-1", "1000001", "x", "1.5", "0x10" };
	struct config cfg;
	char err[ERRLEN];

	(void)state;
	/* Unset: all but a sixteenth of max_connections, whichever order the
	 * keys came in. */
	for (size_t i = 0; i < sizeof(computed) / sizeof(computed[0]); i++) {
		init(&cfg);
		cfg.max_connections = computed[i].max;
		assert_int_equal(config_per_address(&cfg), computed[i].want);
		config_free(&cfg);
	}
	init(&cfg);
	assert_int_equal(parse(&cfg, "max_connections_per_address = 7\nmax_connections = 64\n", err), 0);
	assert_int_equal(config_per_address(&cfg), 7);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	/* 0: no per-address limit; equal to max_connections: valid. */
	assert_int_equal(config_set(&cfg, "max_connections_per_address", "0", err, ERRLEN), 0);
	assert_int_equal(config_per_address(&cfg), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "max_connections_per_address", "64", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	/* Above max_connections: an error naming the key and both values. */
	assert_int_equal(config_set(&cfg, "max_connections_per_address", "65", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "max_connections_per_address: 65"));
	assert_non_null(strstr(err, "max_connections (64)"));
	/* A lowered max_connections under a set share is the same error. */
	assert_int_equal(config_set(&cfg, "max_connections_per_address", "64", err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "max_connections", "63", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "max_connections_per_address: 64"));
	/* Values that are no count: refused by the setter, naming the key,
	 * the field untouched. */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(config_set(&cfg, "max_connections_per_address", bad[i], err, ERRLEN), -EINVAL);
		assert_non_null(strstr(err, "max_connections_per_address"));
		assert_int_equal(cfg.max_connections_per_address, 64);
	}
	config_free(&cfg);
}

static void test_bounds_accepted(void **state)
{
	static const struct { const char *key, *value; int64_t want; } ok[] = {
		{ "rsa_bits", "2048", 2048 },   { "rsa_bits", "8192", 8192 },  { "rsa_bits", "2056", 2056 },
		{ "rsa_bits", "3584", 3584 },   { "access_ttl", "1", 1 },       { "max_ttl", "60", 60 },
		{ "leeway", "0", 0 },           { "leeway", "300", 300 },       { "workers", "1", 1 },
		{ "workers", "64", 64 },        { "max_body", "1024", 1024 },   { "max_body", "16777216", 16777216 },
		{ "rate_limit", "0", 0 },       { "rate_limit", "1000000", 1000000 },
		{ "publish_ahead", "0", 0 },    { "renew_before", "0", 0 },     { "rotation_period", "0", 0 },
		/* Decimal even with a leading zero: never octal. */
		{ "leeway", "010", 10 },
	};
	char err[ERRLEN];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct config cfg;
		int64_t got = -1;

		init(&cfg);
		assert_int_equal(config_set(&cfg, ok[i].key, ok[i].value, err, ERRLEN), 0);
		if (strcmp(ok[i].key, "rsa_bits") == 0) got = cfg.rsa_bits;
		else if (strcmp(ok[i].key, "access_ttl") == 0) got = cfg.access_ttl;
		else if (strcmp(ok[i].key, "max_ttl") == 0) got = cfg.max_ttl;
		else if (strcmp(ok[i].key, "leeway") == 0) got = cfg.leeway;
		else if (strcmp(ok[i].key, "workers") == 0) got = cfg.workers;
		else if (strcmp(ok[i].key, "max_body") == 0) got = (int64_t)cfg.max_body;
		else if (strcmp(ok[i].key, "rate_limit") == 0) got = cfg.rate_limit;
		else if (strcmp(ok[i].key, "publish_ahead") == 0) got = cfg.publish_ahead;
		else if (strcmp(ok[i].key, "renew_before") == 0) got = cfg.renew_before;
		else if (strcmp(ok[i].key, "rotation_period") == 0) got = cfg.rotation_period;
		assert_int_equal(got, ok[i].want);
		config_free(&cfg);
	}
}

static void test_quoting_and_comments(void **state)
{
	static const char text[] =
		"# a full-line comment\n"
		"   # an indented one\n"
		"\n"
		"\t \n"
		"issuer=https://a.example\n"
		"default_audience   =\t\"aud # not a comment\"   # but this is\n"
		"token = \"label with \\\"quotes\\\" and \\\\ backslash\"\n"
		"state_dir = /srv/state#1   # comment after an unquoted value\n"
		"pkcs11_module = \"/opt/my module.so\"#comment right after the quote\r\n"
		"pin = \" spaced pin \"\r\n"
		"log_level = warn";   /* no final newline */
	struct config cfg;
	char err[ERRLEN];

	init(&cfg);
	assert_int_equal(parse(&cfg, text, err), 0);
	assert_string_equal(cfg.issuer, "https://a.example");
	assert_string_equal(cfg.default_audience, "aud # not a comment");
	assert_string_equal(cfg.token, "label with \"quotes\" and \\ backslash");
	assert_string_equal(cfg.state_dir, "/srv/state#1");
	assert_string_equal(cfg.pkcs11_module, "/opt/my module.so");
	assert_string_equal(cfg.pin, " spaced pin ");
	assert_int_equal(cfg.log_level, LOG_LEVEL_WARN);
	/* A later line wins. */
	assert_int_equal(parse(&cfg, "leeway = 1\nleeway = 2\n", err), 0);
	assert_int_equal(cfg.leeway, 2);
	/* An empty buffer and a comment-only buffer change nothing. */
	assert_int_equal(config_parse_buffer(&cfg, "", 0, ORIGIN, err, ERRLEN), 0);
	assert_int_equal(parse(&cfg, "# nothing\n\n", err), 0);
	assert_int_equal(cfg.leeway, 2);
	config_free(&cfg);
}

struct bad_case {
	const char *key;
	const char *value;   /* as written after "key = " in the file */
	const char *shown;   /* what the message must quote, NULL: only the key */
};

static const struct bad_case bad_values[] = {
	{ "listen", "127.0.0.1", "`127.0.0.1'" },
	{ "listen", "::1:8080", "`::1:8080'" },
	{ "listen", "[::1]8080", "`[::1]8080'" },
	{ "listen", "[::1]:", "`[::1]:'" },
	{ "listen", "[zz::1]:80", "`[zz::1]:80'" },
	{ "listen", "[::1", "`[::1'" },
	{ "listen", "host:0", "`host:0'" },
	{ "listen", "host:65536", "`host:65536'" },
	{ "listen", "host:80x", "`host:80x'" },
	{ "listen", "host:-1", "`host:-1'" },
	{ "listen", ":8080", "`:8080'" },
	{ "listen", "bad/host:80", "`bad/host:80'" },
	{ "listen", "a:1,,b:2", "`a:1,,b:2'" },
	{ "listen", "a:1,", "`a:1,'" },
	{ "listen", "a:1, a:1", "`a:1'" },
	{ "listen", "systemd, 127.0.0.1:80", "`systemd'" },
	{ "listen", "a:1,a:2,a:3,a:4,a:5,a:6,a:7,a:8,a:9", "more than 8" },
	{ "listen", "\"\"", "empty" },
	{ "admin_listen", "127.0.0.1:1,127.0.0.1:2", "`127.0.0.1:1,127.0.0.1:2'" },
	{ "admin_listen", "systemd", "`systemd'" },
	{ "admin_listen", "localhost", "`localhost'" },
	{ "issuer", "ftp://example.com", "`ftp://example.com'" },
	{ "issuer", "auth.example.com", "`auth.example.com'" },
	{ "issuer", "https://", "`https://'" },
	{ "issuer", "https:///path", "`https:///path'" },
	{ "issuer", "https://a.example/?x=1", "`https://a.example/?x=1'" },
	{ "issuer", "\"\"", "empty" },
	{ "authorization_endpoint", "/authorize", "`/authorize' does not start with http:// or https://" },
	{ "authorization_endpoint", "login.example.com/authorize", "`login.example.com/authorize'" },
	{ "authorization_endpoint", "ftp://login.example.com", "`ftp://login.example.com'" },
	{ "authorization_endpoint", "https://", "`https://' has no host" },
	{ "authorization_endpoint", "https://?x=1", "`https://?x=1' has no host" },
	{ "authorization_endpoint", "https://login.example.com/a#frag", "contains a fragment" },
	{ "authorization_endpoint", "\"https://login.example.com/a b\"", "contains a fragment or a space" },
	{ "default_audience", "\"\"", "empty" },
	{ "pkcs11_module", "\"\"", "empty" },
	{ "token", "\"\"", "empty" },
	{ "state_dir", "\"\"", "empty" },
	{ "algorithms", "ES512", "is not one of ES256 ES384 RS256 PS256 EdDSA HS256" },
	{ "algorithms", "ES256 none", "is not one of ES256 ES384 RS256 PS256 EdDSA HS256" },
	{ "algorithms", "ES256 ES256", "`ES256' is listed twice" },
	{ "algorithms", "RS256,ES384,RS256", "`RS256' is listed twice" },
	{ "algorithms", "RS384", "`RS384'" },
	{ "algorithms", "none", "`none'" },
	{ "algorithms", "es256", "`es256'" },
	{ "algorithms", "ES512", "`ES512'" },
	{ "algorithms", "\"\"", "no algorithm" },
	{ "algorithms", "\" , \"", "no algorithm" },
	{ "rsa_bits", "1024", "`1024'" },
	{ "rsa_bits", "2047", "`2047'" },
	{ "rsa_bits", "8200", "`8200'" },
	{ "rsa_bits", "2049", "`2049' is not a multiple of 8" },
	{ "rsa_bits", "0x800", "`0x800'" },
	{ "rsa_bits", "3072.0", "`3072.0'" },
	{ "rsa_bits", "\"\"", "`'" },
	{ "access_ttl", "0", "`0'" },
	{ "access_ttl", "-5", "`-5'" },
	{ "access_ttl", "1e3", "`1e3'" },
	{ "access_ttl", "+60", "`+60'" },
	{ "access_ttl", "99999999999999999999", "`99999999999999999999'" },
	{ "access_ttl", "-99999999999999999999", "`-99999999999999999999'" },
	{ "refresh_ttl", "0", "`0'" },
	{ "id_ttl", "abc", "`abc'" },
	{ "parent_ttl", "0", "`0'" },
	{ "child_ttl", "0", "`0'" },
	{ "max_ttl", "59", "`59'" },
	{ "max_ttl", "9223372036854775807", "`9223372036854775807'" },
	{ "renew_before", "-1", "`-1'" },
	{ "leeway", "301", "`301'" },
	{ "leeway", "-1", "`-1'" },
	{ "rotation_period", "-1", "`-1'" },
	{ "publish_ahead", "-1", "`-1'" },
	{ "workers", "0", "`0'" },
	{ "workers", "65", "`65'" },
	{ "max_body", "1023", "`1023'" },
	{ "max_body", "16777217", "`16777217'" },
	{ "rate_limit", "-1", "`-1'" },
	{ "rate_limit", "1000001", "`1000001'" },
	{ "fsync", "sometimes", "`sometimes'" },
	{ "fsync", "ALWAYS", "`ALWAYS'" },
	{ "log_level", "verbose", "`verbose'" },
	{ "log_level", "INFO", "`INFO'" },
};

static void test_bad_values(void **state)
{
	struct config cfg, before;
	char err[ERRLEN], text[256], key_colon[64];

	init(&cfg);
	init(&before);
	for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
		const struct bad_case *c = &bad_values[i];

		snprintf(text, sizeof(text), "# line 1\n%s = %s\n", c->key, c->value);
		snprintf(key_colon, sizeof(key_colon), "%s: ", c->key);
		if (parse(&cfg, text, err) != -EINVAL)
			fail_msg("accepted %s = %s", c->key, c->value);
		/* origin:line, then the key, then what is wrong. */
		if (strncmp(err, ORIGIN ":2: ", strlen(ORIGIN ":2: ")) != 0 || strstr(err, key_colon) == NULL ||
		    strstr(err, c->shown) == NULL)
			fail_msg("%s = %s: message `%s' lacks `%s'", c->key, c->value, err, c->shown);
		assert_null(strchr(err, '\n'));
		/* Nothing applied. */
		assert_config_equal(&cfg, &before);
	}
	config_free(&cfg);
	config_free(&before);
}

static void test_config_set_is_exact(void **state)
{
	/* config_set takes the value as is: no trimming, no quotes. */
	static const char *const bad_ints[] = { " 5", "5 ", "5\n", "\"5\"", "", "-", "5x" };
	struct config cfg;
	char err[ERRLEN];

	init(&cfg);
	for (size_t i = 0; i < sizeof(bad_ints) / sizeof(bad_ints[0]); i++) {
		err[0] = '\0';
		assert_int_equal(config_set(&cfg, "leeway", bad_ints[i], err, ERRLEN), -EINVAL);
		assert_non_null(strstr(err, "leeway: "));
		/* The message stays one line even for a value with a newline. */
		assert_null(strchr(err, '\n'));
	}
	assert_int_equal(cfg.leeway, 30);
	assert_int_equal(config_set(&cfg, "issuer", "https://x.example\n", err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "issuer: "));
	assert_int_equal(config_set(&cfg, "nosuchkey", "1", err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "unknown key `nosuchkey'"));
	assert_int_equal(config_set(&cfg, "LEEWAY", "1", err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "unknown key `LEEWAY'"));
	/* A NULL err is allowed. */
	assert_int_equal(config_set(&cfg, "leeway", "x", NULL, 0), -EINVAL);
	/* Replacing strings frees the old ones (the sanitizer build checks). */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(config_set(&cfg, "token", "t1", err, ERRLEN), 0);
		assert_int_equal(config_set(&cfg, "pin", "secret", err, ERRLEN), 0);
		assert_int_equal(config_set(&cfg, "pin_file", "/p", err, ERRLEN), 0);
	}
	assert_string_equal(cfg.pin, "secret");
	config_free(&cfg);
}

static void test_syntax_errors(void **state)
{
	static const struct { const char *text, *want; } bad[] = {
		{ "leeway 5\n", ORIGIN ":1: leeway: expected `key = value'" },
		{ "just words\n", ORIGIN ":1: expected `key = value'" },
		{ "= 5\n", ORIGIN ":1: expected `key = value'" },
		{ "# ok\n\nfoo = 1\n", ORIGIN ":3: unknown key `foo'" },
		{ "Leeway = 1\n", ORIGIN ":1: unknown key `Leeway'" },
		{ "token = \"unterminated\n", ORIGIN ":1: token: missing closing quote" },
		{ "token = \"a\" b\n", ORIGIN ":1: token: text after the closing quote" },
		{ "token = \"a\\nb\"\n", ORIGIN ":1: token: only" },
		{ "issuer = https://a.example\nleeway = x\n", ORIGIN ":2: leeway: `x'" },
		{ "leeway = 1\r\nleeway = 400\r\n", ORIGIN ":2: leeway: `400'" },
	};
	struct config cfg;
	char err[ERRLEN];

	init(&cfg);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(parse(&cfg, bad[i].text, err), -EINVAL);
		if (strncmp(err, bad[i].want, strlen(bad[i].want)) != 0)
			fail_msg("`%s' gave `%s', want `%s'", bad[i].text, err, bad[i].want);
	}
	/* A NUL byte anywhere, even in a comment. */
	assert_int_equal(config_parse_buffer(&cfg, "leeway = 1\n# a\0b\n", 17, ORIGIN, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, ORIGIN ":2: "));
	assert_non_null(strstr(err, "NUL"));
	assert_int_equal(config_parse_buffer(&cfg, "leeway = 1\0 2\n", 14, ORIGIN, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, ORIGIN ":1: "));
	assert_int_equal(cfg.leeway, 30);
	config_free(&cfg);
}

static void test_listen_forms(void **state)
{
	struct config cfg;
	char err[ERRLEN];

	init(&cfg);
	assert_int_equal(config_set(&cfg, "listen", "[::]:443", err, ERRLEN), 0);
	assert_int_equal(cfg.listen_count, 1);
	assert_string_equal(cfg.listen[0].host, "::");
	assert_int_equal(cfg.listen[0].port, 443);
	assert_int_equal(config_set(&cfg, "listen", "[fe80::1%eth0]:8080", err, ERRLEN), 0);
	assert_string_equal(cfg.listen[0].host, "fe80::1%eth0");
	assert_int_equal(config_set(&cfg, "listen", "[::ffff:192.0.2.1]:1", err, ERRLEN), 0);
	assert_string_equal(cfg.listen[0].host, "::ffff:192.0.2.1");
	assert_int_equal(cfg.listen[0].port, 1);
	assert_int_equal(config_set(&cfg, "listen", "localhost:65535", err, ERRLEN), 0);
	assert_string_equal(cfg.listen[0].host, "localhost");
	assert_int_equal(cfg.listen[0].port, 65535);
	/* Eight addresses, spaces around the commas. */
	assert_int_equal(config_set(&cfg, "listen",
				    "a:1 , b:2,c:3,\t[::1]:4,e.example:5,f:6,127.0.0.1:7,[2001:db8::1]:8", err, ERRLEN),
			 0);
	assert_int_equal(cfg.listen_count, 8);
	assert_string_equal(cfg.listen[0].host, "a");
	assert_string_equal(cfg.listen[1].host, "b");
	assert_string_equal(cfg.listen[3].host, "::1");
	assert_int_equal(cfg.listen[3].port, 4);
	assert_string_equal(cfg.listen[7].host, "2001:db8::1");
	assert_int_equal(cfg.listen[7].port, 8);
	/* Same host on two ports, or two hosts on one port, are different. */
	assert_int_equal(config_set(&cfg, "listen", "a:1,a:2,b:1", err, ERRLEN), 0);
	assert_int_equal(cfg.listen_count, 3);
	/* systemd, then addresses again. */
	assert_int_equal(config_set(&cfg, "listen", "systemd", err, ERRLEN), 0);
	assert_int_equal(cfg.listen_systemd, 1);
	assert_int_equal(cfg.listen_count, 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "listen", "127.0.0.1:80", err, ERRLEN), 0);
	assert_int_equal(cfg.listen_systemd, 0);
	assert_int_equal(cfg.listen_count, 1);
	/* admin_listen may not be one of the listen addresses. */
	assert_int_equal(config_set(&cfg, "admin_listen", "127.0.0.1:80", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "admin_listen: `127.0.0.1:80'"));
	assert_int_equal(config_set(&cfg, "admin_listen", "[::1]:81", err, ERRLEN), 0);
	assert_string_equal(cfg.admin_listen.host, "::1");
	assert_int_equal(cfg.admin_listen.port, 81);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	config_free(&cfg);
}

static void test_algorithms(void **state)
{
	struct config cfg, before;
	char err[ERRLEN];

	init(&cfg);
	assert_int_equal(config_set(&cfg, "algorithms", "  EdDSA\t,,RS256  ", err, ERRLEN), 0);
	assert_int_equal(cfg.algorithm_count, 2);
	assert_int_equal(cfg.algorithms[0], JWS_ALG_EDDSA);
	assert_int_equal(cfg.algorithms[1], JWS_ALG_RS256);
	init(&before);
	assert_int_equal(config_set(&before, "algorithms", "EdDSA RS256", err, ERRLEN), 0);
	/* A JWS algorithm hsmjwt keeps no keys for: refused, never ignored. */
	assert_int_equal(config_set(&cfg, "algorithms", "ES256 ES512", err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "algorithms: `ES512' is not one of ES256 ES384 RS256 PS256 EdDSA HS256"));
	assert_config_equal(&cfg, &before);
	/* HS256: the HMAC key lives in the token (issue 4). */
	assert_int_equal(config_set(&cfg, "algorithms", "HS256 ES256", err, ERRLEN), 0);
	assert_int_equal(cfg.algorithms[0], JWS_ALG_HS256);
	assert_int_equal(config_set(&cfg, "algorithms", "EdDSA RS256", err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "algorithms", "PS256 ES384 PS256", err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "algorithms: `PS256' is listed twice"));
	assert_config_equal(&cfg, &before);
	config_free(&cfg);
	config_free(&before);
}

static void test_validate(void **state)
{
	static const char *const lifetimes[] = { "access_ttl", "refresh_ttl", "id_ttl", "parent_ttl", "child_ttl" };
	struct config cfg;
	char err[ERRLEN], want[64];

	/* Every lifetime above max_ttl names its key. */
	for (size_t i = 0; i < sizeof(lifetimes) / sizeof(lifetimes[0]); i++) {
		init(&cfg);
		assert_int_equal(config_set(&cfg, lifetimes[i], "2592001", err, ERRLEN), 0);
		assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
		snprintf(want, sizeof(want), "%s: 2592001", lifetimes[i]);
		assert_non_null(strstr(err, want));
		assert_non_null(strstr(err, "max_ttl"));
		config_free(&cfg);
	}
	/* A default above a lowered max_ttl is a config error, naming the default's key. */
	init(&cfg);
	assert_int_equal(config_set(&cfg, "max_ttl", "3599", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "access_ttl: 3600"));
	assert_int_equal(config_set(&cfg, "max_ttl", "3600", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "refresh_ttl: 2592000"));
	config_free(&cfg);
	/* renew_before must be at most half of child_ttl. */
	init(&cfg);
	assert_int_equal(config_set(&cfg, "renew_before", "900", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "renew_before: 900"));
	assert_non_null(strstr(err, "child_ttl"));
	assert_int_equal(config_set(&cfg, "renew_before", "451", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "renew_before: 451"));
	assert_int_equal(config_set(&cfg, "renew_before", "450", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	config_free(&cfg);
	/* rotation_period: 0, or at least publish_ahead. */
	init(&cfg);
	assert_int_equal(config_set(&cfg, "rotation_period", "3599", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "rotation_period: 3599"));
	assert_non_null(strstr(err, "publish_ahead"));
	assert_int_equal(config_set(&cfg, "rotation_period", "3600", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "rotation_period", "0", err, ERRLEN), 0);
	assert_int_equal(config_set(&cfg, "publish_ahead", "86400", err, ERRLEN), 0);
	assert_int_equal(config_validate(&cfg, err, ERRLEN), 0);
	config_free(&cfg);
}

static void test_env(void **state)
{
	char *const env[] = {
		"PATH=/usr/bin",
		"HSMJWT_LEEWAY=7",
		"HSMJWT_PIN_FILE=/run/pin",
		"HSMJWT_ISSUER=https://env.example",
		"HSMJWT_AUTHORIZATION_ENDPOINT=https://login.env.example/authorize",
		"HSMJWT_ALGORITHMS=ES384 RS256",
		"NOT_HSMJWT_FOO=1",
		"HSMJWT_LISTEN=[::1]:1, 127.0.0.1:2",
		NULL,
	};
	char *const unknown[] = { "HSMJWT_LEEWAY=1", "HSMJWT_NO_SUCH_KEY=secretvalue", NULL };
	char *const lower[] = { "HSMJWT_leeway=1", NULL };
	char *const empty_name[] = { "HSMJWT_=1", NULL };
	char *const bad[] = { "HSMJWT_LEEWAY=5", "HSMJWT_WORKERS=0", NULL };
	struct config cfg, before;
	char err[ERRLEN];

	init(&cfg);
	assert_int_equal(config_apply_env(&cfg, env, err, ERRLEN), 0);
	assert_int_equal(cfg.leeway, 7);
	assert_string_equal(cfg.pin_file, "/run/pin");
	assert_string_equal(cfg.issuer, "https://env.example");
	assert_string_equal(cfg.authorization_endpoint, "https://login.env.example/authorize");
	assert_int_equal(cfg.algorithm_count, 2);
	assert_int_equal(cfg.algorithms[0], JWS_ALG_ES384);
	assert_int_equal(cfg.listen_count, 2);
	assert_string_equal(cfg.listen[0].host, "::1");
	assert_int_equal(cfg.listen[1].port, 2);
	config_free(&cfg);

	init(&cfg);
	init(&before);
	assert_int_equal(config_apply_env(&cfg, unknown, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_NO_SUCH_KEY"));
	assert_null(strstr(err, "secretvalue"));
	/* All or nothing: HSMJWT_LEEWAY came first but was not applied. */
	assert_config_equal(&cfg, &before);
	assert_int_equal(config_apply_env(&cfg, lower, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_leeway"));
	assert_int_equal(config_apply_env(&cfg, empty_name, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_"));
	assert_int_equal(config_apply_env(&cfg, bad, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_WORKERS"));
	assert_non_null(strstr(err, "workers: `0'"));
	assert_config_equal(&cfg, &before);
	/* No environment at all is fine. */
	assert_int_equal(config_apply_env(&cfg, NULL, err, ERRLEN), 0);
	config_free(&cfg);
	config_free(&before);
}

/* Every way a PIN can be mistyped: none of the messages may contain it. */
static void test_pin_never_in_messages(void **state)
{
	char text[1024], env_var[512], long_pin[300];
	char *env[] = { env_var, NULL };
	const char *file_cases[] = {
		"pin = \"" PIN_MARKER "\n",
		"pin = \"" PIN_MARKER "\" trailing\n",
		"pin = \"" PIN_MARKER "\\x\"\n",
		"pin " PIN_MARKER "\n",
		"pin\t" PIN_MARKER "\n",
		"token = \"pkcs11:token=t;pin-value=" PIN_MARKER "\"\n",
		"token = pkcs11:token=t;PIN-VALUE=" PIN_MARKER "\n",
		text,   /* filled below: a PIN over 256 bytes */
	};
	struct config cfg;
	char err[ERRLEN];

	memset(long_pin, 'x', sizeof(long_pin) - 1);
	long_pin[sizeof(long_pin) - 1] = '\0';
	memcpy(long_pin, PIN_MARKER, strlen(PIN_MARKER));
	snprintf(text, sizeof(text), "pin = %s\n", long_pin);
	init(&cfg);
	for (size_t i = 0; i < sizeof(file_cases) / sizeof(file_cases[0]); i++) {
		assert_int_equal(parse(&cfg, file_cases[i], err), -EINVAL);
		if (strstr(err, PIN_MARKER))
			fail_msg("message leaks the PIN: %s", err);
		assert_true(strstr(err, "pin") != NULL || strstr(err, "token") != NULL);
		assert_non_null(strstr(err, ORIGIN ":1: "));
	}
	/* Through the environment and config_set too. */
	snprintf(env_var, sizeof(env_var), "HSMJWT_PIN=%s", long_pin);
	assert_int_equal(config_apply_env(&cfg, env, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_PIN"));
	assert_null(strstr(err, PIN_MARKER));
	assert_int_equal(config_set(&cfg, "pin", long_pin, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "pin: "));
	assert_null(strstr(err, PIN_MARKER));
	assert_null(cfg.pin);
	/* 256 bytes is the longest PIN, as for a PIN file. */
	long_pin[257] = '\0';
	assert_int_equal(config_set(&cfg, "pin", long_pin, err, ERRLEN), -EINVAL);
	assert_null(strstr(err, PIN_MARKER));
	long_pin[256] = '\0';
	assert_int_equal(config_set(&cfg, "pin", long_pin, err, ERRLEN), 0);
	assert_string_equal(cfg.pin, long_pin);
	config_free(&cfg);
}

/* ---- files ----------------------------------------------------------- */

static const char *write_file(const char *name, const void *data, size_t len, mode_t mode)
{
	return fixture_write_file(name, data, len, mode);
}

static void test_load(void **state)
{
	static const char text[] =
		"# hsmjwt.conf\n"
		"leeway = 10\n"
		"issuer = https://file.example\n"
		"workers = 2\n"
		"token = file-token\n";
	char *const env[] = { "HSMJWT_LEEWAY=20", "HSMJWT_TOKEN=env-token", NULL };
	char *const bad_env[] = { "HSMJWT_BOGUS=1", NULL };
	char *const long_ttl[] = { "HSMJWT_ACCESS_TTL=2592001", NULL };
	struct config cfg, untouched;
	char err[ERRLEN], path[PATH_MAX], want[PATH_MAX + 64];
	const char *conf = write_file("hsmjwt.conf", text, strlen(text), 0600);

	snprintf(path, sizeof(path), "%s", conf);
	assert_int_equal(config_load(&cfg, path, env, err, ERRLEN), 0);
	/* The environment beats the file, the file beats the defaults. */
	assert_int_equal(cfg.leeway, 20);
	assert_string_equal(cfg.token, "env-token");
	assert_string_equal(cfg.issuer, "https://file.example");
	assert_int_equal(cfg.workers, 2);
	assert_int_equal(cfg.rsa_bits, 3072);
	config_free(&cfg);
	/* Without a file. */
	assert_int_equal(config_load(&cfg, NULL, env, err, ERRLEN), 0);
	assert_int_equal(cfg.leeway, 20);
	assert_string_equal(cfg.issuer, "http://127.0.0.1:8080");
	config_free(&cfg);

	/* Failures leave cfg untouched and say why. */
	memset(&untouched, 0x5a, sizeof(untouched));
	memcpy(&cfg, &untouched, sizeof(cfg));
	assert_int_equal(config_load(&cfg, path, bad_env, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "HSMJWT_BOGUS"));
	assert_memory_equal(&cfg, &untouched, sizeof(cfg));
	assert_int_equal(config_load(&cfg, path, long_ttl, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, "access_ttl"));
	assert_memory_equal(&cfg, &untouched, sizeof(cfg));
	/* A bad line names the file and the line. */
	conf = write_file("bad.conf", "leeway = 1\n\nrsa_bits = 1000\n", 28, 0600);
	snprintf(path, sizeof(path), "%s", conf);
	assert_int_equal(config_load(&cfg, path, NULL, err, ERRLEN), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: rsa_bits: `1000'", path);
	assert_non_null(strstr(err, want));
	assert_memory_equal(&cfg, &untouched, sizeof(cfg));
	/* A missing file names the file. */
	snprintf(path, sizeof(path), "%s/missing.conf", fixture_tmpdir);
	assert_int_equal(config_load(&cfg, path, NULL, err, ERRLEN), -ENOENT);
	assert_non_null(strstr(err, path));
	/* So does a directory. */
	assert_int_equal(config_load_file(&cfg, fixture_tmpdir, err, ERRLEN), -EINVAL);
	assert_non_null(strstr(err, fixture_tmpdir));
	assert_memory_equal(&cfg, &untouched, sizeof(cfg));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_bounds_accepted),
		cmocka_unit_test(test_quoting_and_comments),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_config_set_is_exact),
		cmocka_unit_test(test_syntax_errors),
		cmocka_unit_test(test_listen_forms),
		cmocka_unit_test(test_algorithms),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_per_address),
		cmocka_unit_test(test_env),
		cmocka_unit_test(test_pin_never_in_messages),
		cmocka_unit_test_setup_teardown(test_load, fixture_tmpdir_setup, fixture_tmpdir_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
