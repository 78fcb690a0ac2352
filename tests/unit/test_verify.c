/* verify (libhsmjwt-verify): the shared table of SPEC §5.2 rule cases
 * (fixture_rules.c, also run through the daemon's path by test_jwt.c) with
 * its JWKS read from a file; then what is the library's own: options,
 * sources, the JWKS parser (refused documents, skipped entries, the key
 * bound), the Cache-Control rules, the key set's lifetime and the refetch
 * rate limit under an injected clock, a stale set, the cache file, and
 * threads sharing one context.  http(s) is tested against the real daemon
 * and a TLS server by tests/integration/test_verify_lib.py. */
#include <errno.h>
#include <pthread.h>
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

#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "fixture.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/verify.h"
#include "../../src/verify_internal.h"

#define T0 1700000000LL

/* ---- helpers ----------------------------------------------------------- */

static int64_t fake_now;

static int64_t fake_clock(void *ctx)
{
	return *(int64_t *)ctx;
}

/* An in-memory signer and its public JWK. */
struct key {
	EVP_PKEY *pkey;
	enum jws_alg alg;
	char kid[JWK_KID_MAX + 1];
};

static void key_make(struct key *k, enum jws_alg alg)
{
	k->pkey = fixture_keypair(alg);
	k->alg = alg;
	assert_non_null(k->pkey);
	assert_int_equal(jwk_thumbprint(k->pkey, k->kid), 0);
}

static void key_free(struct key *k)
{
	EVP_PKEY_free(k->pkey);
}

/* A token by k (kid: k's, or kid_override; "" for none) with exp, typ
 * at+jwt and the given extra claims members. */
static char *token_by(const struct key *k, const char *kid_override, int64_t exp, const char *extra)
{
	struct fixture_signer s = { .pkey = k->pkey, .alg = k->alg };
	const char *kid = kid_override ? kid_override : k->kid;
	json_t *header = json_pack("{s:s, s:s}", "alg", jws_alg_name(k->alg), "typ", "at+jwt");
	json_t *payload = json_pack("{s:s, s:I}", "sub", "alice", "exp", (json_int_t)exp);
	char *token = NULL;

	assert_non_null(header);
	assert_non_null(payload);
	if (kid[0] != '\0')
		assert_int_equal(json_object_set_new(header, "kid", json_string(kid)), 0);
	if (extra != NULL) {
		json_t *more = json_loads(extra, 0, NULL);
		assert_non_null(more);
		assert_int_equal(json_object_update(payload, more), 0);
		json_decref(more);
	}
	assert_int_equal(jws_sign_compact(header, payload, fixture_sign, &s, &token), 0);
	json_decref(header);
	json_decref(payload);
	return token;
}

/* {"keys":[k0, k1, ...]} as the service publishes them. */
static char *jwks_of(struct key *const *keys, size_t n)
{
	json_t *doc = json_object(), *list = json_array();
	char *text;

	assert_int_equal(json_object_set_new(doc, "keys", list), 0);
	for (size_t i = 0; i < n; i++) {
		json_t *jwk = NULL;
		assert_int_equal(jwk_public_to_json(keys[i]->pkey, keys[i]->kid, keys[i]->alg, &jwk), 0);
		assert_int_equal(json_array_append_new(list, jwk), 0);
	}
	text = json_dumps(doc, JSON_COMPACT);
	assert_non_null(text);
	json_decref(doc);
	return text;
}

static const char *write_jwks(const char *name, struct key *const *keys, size_t n)
{
	char *text = jwks_of(keys, n);
	const char *path = fixture_write_file(name, text, strlen(text), 0644);

	free(text);
	return path;
}

static struct verify *verify_at(const struct verify_options *base_opts)
{
	struct verify *v = NULL;

	assert_int_equal(verify_new(base_opts, &v), 0);
	assert_non_null(v);
	return v;
}

/* verify_token's verdict: "valid", a reason, or "-errno" when none. */
static const char *verdict(struct verify *v, const char *token, const struct verify_expect *expect, int *ret_stale)
{
	static char buf[32];
	struct verify_result res;
	int r;

	memset(&res, 0x5a, sizeof(res));
	r = verify_token(v, token, strlen(token), expect, &res);
	if (r < 0) {
		/* Untouched on failure. */
		assert_int_equal(((unsigned char *)&res)[0], 0x5a);
		snprintf(buf, sizeof(buf), "%d", r);
		return buf;
	}
	if (ret_stale != NULL)
		*ret_stale = res.stale;
	snprintf(buf, sizeof(buf), "%s", res.valid ? "valid" : res.error);
	if (res.valid) {
		assert_null(res.error);
		assert_non_null(res.header_json);
		assert_non_null(res.claims_json);
	} else {
		assert_null(res.header_json);
		assert_null(res.claims_json);
	}
	verify_result_clear(&res);
	return buf;
}

static struct verify_stats stats_of(struct verify *v)
{
	struct verify_stats st;

	assert_int_equal(verify_get_stats(v, &st), 0);
	return st;
}

/* ---- the shared rule cases ------------------------------------------------ */

static void test_shared_rule_cases(void **state)
{
	struct fixture_rules *rules = fixture_rules_build();
	const char *path = fixture_write_file("rules-jwks.json", rules->jwks, strlen(rules->jwks), 0644);
	struct verify_options opts;
	struct verify *by_leeway[2];
	struct verify_stats st;
	size_t wrong = 0, kid_misses[2] = { 0, 0 };
	int64_t now = FIXTURE_RULES_NOW;

	verify_options_init(&opts);
	opts.jwks_file = path;
	opts.clock = fake_clock;
	opts.clock_ctx = &now;
	opts.leeway = FIXTURE_RULES_LEEWAY;
	by_leeway[0] = verify_at(&opts);
	opts.leeway = 0;
	by_leeway[1] = verify_at(&opts);
	assert_true(rules->count >= 200);
	for (size_t i = 0; i < rules->count; i++) {
		const struct fixture_rule *c = &rules->cases[i];
		struct verify_expect e = { c->issuer, c->audience, c->typ, c->token_type };
		struct verify *v = by_leeway[c->leeway == 0];
		struct verify_result res;
		const char *want = c->want == 0 ? "valid" : jws_error_reason(c->want), *got;
		int r = verify_token(v, c->token, c->len, &e, &res);

		assert_int_equal(r, 0);
		got = res.valid ? "valid" : res.error;
		if (strcmp(got, want) != 0) {
			print_error("case %zu \"%s\": got %s, want %s\n", i, c->name, got, want);
			wrong++;
		}
		if (res.valid) {
			json_t *claims = json_loads(res.claims_json, JSON_REJECT_DUPLICATES, NULL);
			assert_true(json_is_object(claims));
			assert_non_null(strstr(res.header_json, "\"alg\""));
			assert_false(res.stale);
			json_decref(claims);
		}
		/* Every unknown kid named in a header asks for a refetch, which
		 * the rate limit refuses: the clock stands still. */
		if (c->want == JWS_E_UNKNOWN_KID && res.kid[0] != '\0')
			kid_misses[c->leeway == 0]++;
		verify_result_clear(&res);
	}
	assert_int_equal(wrong, 0);
	for (int i = 0; i < 2; i++) {
		st = stats_of(by_leeway[i]);
		assert_int_equal(st.fetches, 1);
		assert_int_equal(st.fetch_failures, 0);
		assert_int_equal(st.kid_refetches, 0);
		assert_int_equal(st.kid_refetches_refused, kid_misses[i]);
		assert_int_equal(st.keys, 8);
		assert_int_equal(st.keys_skipped, 0);
		verify_free(by_leeway[i]);
	}
	assert_true(kid_misses[0] >= 3);
	fixture_rules_free(rules);
}

/* ---- options and sources ------------------------------------------------------ */

static void test_options(void **state)
{
	struct verify_options opts;
	struct verify *v = (struct verify *)0x1;
	struct verify_result res;

	verify_options_init(&opts);
	assert_int_equal(opts.refetch_interval, 30);
	assert_int_equal(opts.max_lifetime, 3600);
	assert_int_equal(opts.leeway, 30);
	assert_int_equal(opts.max_jwks_bytes, 1024 * 1024);
	assert_true(opts.timeout_ms > 0);
	/* No source, or two. */
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	opts.jwks_url = "https://issuer.example/.well-known/jwks.json";
	opts.jwks_file = "/tmp/jwks.json";
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	opts.jwks_file = NULL;
	{
		struct { int64_t *field; int64_t bad; } numbers[] = {
			{ &opts.refetch_interval, -1 }, { &opts.max_lifetime, -1 }, { &opts.max_stale, -1 },
			{ &opts.timeout_ms, 0 }, { &opts.leeway, -1 }, { &opts.leeway, 86401 },
		};
		for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
			int64_t saved = *numbers[i].field;
			*numbers[i].field = numbers[i].bad;
			assert_int_equal(verify_new(&opts, &v), -EINVAL);
			*numbers[i].field = saved;
		}
	}
	opts.max_jwks_bytes = 0;
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	opts.max_jwks_bytes = 1024 * 1024 + 1;
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	opts.max_jwks_bytes = 1024 * 1024;
	opts.cache_file = "";
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	opts.cache_file = NULL;
	opts.jwks_url = "ftp://issuer.example/jwks.json";
	assert_int_equal(verify_new(&opts, &v), -EINVAL);
	assert_ptr_equal(v, (struct verify *)0x1);
	assert_int_equal(verify_new(NULL, &v), -EINVAL);
	opts.jwks_url = "http://issuer.example/jwks.json";
	assert_int_equal(verify_new(&opts, NULL), -EINVAL);
	/* Valid: nothing fetched yet. */
	assert_int_equal(verify_new(&opts, &v), 0);
	assert_int_equal(stats_of(v).fetches, 0);
	assert_int_equal(stats_of(v).keys, 0);
	assert_int_equal(verify_token(v, NULL, 0, NULL, &res), -EINVAL);
	assert_int_equal(verify_token(v, "a.b.c", 5, NULL, NULL), -EINVAL);
	assert_int_equal(verify_token(NULL, "a.b.c", 5, NULL, &res), -EINVAL);
	assert_int_equal(verify_get_stats(v, NULL), -EINVAL);
	assert_int_equal(verify_get_stats(NULL, &(struct verify_stats){ 0 }), -EINVAL);
	verify_free(v);
	verify_free(NULL);
	verify_result_clear(NULL);
}

static void test_sources(void **state)
{
	static const struct {
		const char *url;
		enum verify_scheme scheme;
		const char *host, *path;
		int port;
	} good[] = {
		{ "http://issuer.example/.well-known/jwks.json", VERIFY_HTTP, "issuer.example", "/.well-known/jwks.json", 80 },
		{ "https://issuer.example/jwks", VERIFY_HTTPS, "issuer.example", "/jwks", 443 },
		{ "HTTPS://issuer.example:8443", VERIFY_HTTPS, "issuer.example", "/", 8443 },
		{ "http://127.0.0.1:8080/jwks?tenant=a", VERIFY_HTTP, "127.0.0.1", "/jwks?tenant=a", 8080 },
		{ "http://[::1]:8080/jwks", VERIFY_HTTP, "::1", "/jwks", 8080 },
		{ "file:/etc/hsmjwt/jwks.json", VERIFY_FILE, NULL, "/etc/hsmjwt/jwks.json", 0 },
		{ "file:///etc/hsmjwt/jwks.json", VERIFY_FILE, NULL, "/etc/hsmjwt/jwks.json", 0 },
		{ "file://localhost/etc/jwks.json", VERIFY_FILE, NULL, "/etc/jwks.json", 0 },
	};
	static const char *const bad[] = {
		"ftp://issuer.example/jwks", "issuer.example/jwks", "http://", "http:///jwks",
		"http://user:pw@issuer.example/jwks", "http://issuer.example/jwks#frag", "http://issuer.example:0/",
		"http://issuer.example:70000/", "file:relative/jwks.json", "file://otherhost/jwks.json",
		"file:/etc/jwks%20x.json", "file:/etc/jwks.json?x", "",
	};
	struct verify_source src;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		memset(&src, 0, sizeof(src));
		assert_int_equal(verify_source_parse(good[i].url, NULL, &src), 0);
		assert_int_equal(src.scheme, good[i].scheme);
		assert_string_equal(src.path, good[i].path);
		assert_string_equal(src.text, good[i].url);
		if (good[i].host != NULL) {
			assert_string_equal(src.host, good[i].host);
			assert_int_equal(src.port, good[i].port);
		}
		verify_source_clear(&src);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&src, 0x5a, sizeof(src));
		if (verify_source_parse(bad[i], NULL, &src) != -EINVAL)
			fail_msg("`%s' was accepted", bad[i]);
		assert_int_equal(((unsigned char *)&src)[0], 0x5a);
	}
	/* A plain path is a file, taken as given. */
	assert_int_equal(verify_source_parse(NULL, "relative/jwks.json", &src), 0);
	assert_int_equal(src.scheme, VERIFY_FILE);
	assert_string_equal(src.path, "relative/jwks.json");
	verify_source_clear(&src);
	assert_int_equal(verify_source_parse(NULL, "", &src), -EINVAL);
	assert_int_equal(verify_source_parse("http://a/", "/b", &src), -EINVAL);
	assert_int_equal(verify_source_parse(NULL, NULL, &src), -EINVAL);
}

/* ---- Cache-Control ------------------------------------------------------------- */

static void test_cache_control(void **state)
{
	static const struct {
		const char *cc, *age;
		int64_t max, want;
	} cases[] = {
		{ NULL, NULL, 3600, 3600 },                        /* absent: the default lifetime */
		{ "", NULL, 3600, 3600 },
		{ "public", NULL, 3600, 3600 },
		{ "max-age=60", NULL, 3600, 60 },
		{ "public, max-age=60", NULL, 3600, 60 },
		{ "MAX-AGE=60", NULL, 3600, 60 },
		{ "max-age=\"60\"", NULL, 3600, 60 },
		{ "max-age = 60", NULL, 3600, 60 },
		{ "max-age=0", NULL, 3600, 0 },
		{ "max-age=7200", NULL, 3600, 3600 },              /* capped */
		{ "max-age=99999999999999999999999999", NULL, 3600, 3600 },
		{ "max-age=3600", NULL, 3600, 3600 },
		{ "max-age=3601", NULL, 3600, 3600 },
		{ "max-age=60", NULL, 0, 0 },
		{ "no-cache", NULL, 3600, 0 },
		{ "no-store", NULL, 3600, 0 },
		{ "No-Store", NULL, 3600, 0 },
		{ "public, max-age=60, no-cache", NULL, 3600, 0 }, /* the most restrictive wins */
		{ "no-cache=\"set-cookie\", max-age=60", NULL, 3600, 0 },
		{ "max-age=abc", NULL, 3600, 0 },                  /* invalid freshness: stale */
		{ "max-age=", NULL, 3600, 0 },
		{ "max-age", NULL, 3600, 0 },
		{ "max-age=-5", NULL, 3600, 0 },
		{ "max-age=6 0", NULL, 3600, 0 },
		{ "max-age=60, max-age=120", NULL, 3600, 0 },      /* repeated: stale */
		{ "max-age=\"6\\0\"", NULL, 3600, 0 },
		{ "max-age=\"60", NULL, 3600, 0 },
		{ "max-age=1.5", NULL, 3600, 0 },
		{ "garbage;;;, max-age=30", NULL, 3600, 30 },      /* a garbage directive is skipped */
		{ "must-revalidate, max-age=30, s-maxage=5", NULL, 3600, 30 },
		{ "max-age=60,,,", NULL, 3600, 60 },
		{ ", ,max-age=60", NULL, 3600, 60 },
		{ "\tmax-age=60\t", NULL, 3600, 60 },
		{ "x=\"a,max-age=1\", max-age=60", NULL, 3600, 60 }, /* a comma inside quotes */
		{ "max-age=60", "10", 3600, 50 },                  /* less Age */
		{ "max-age=60", "60", 3600, 0 },
		{ "max-age=60", "100", 3600, 0 },
		{ "max-age=60", "99999999999999999999999", 3600, 0 },
		{ "max-age=60", "abc", 3600, 60 },                 /* an invalid Age is ignored */
		{ "max-age=60", "-3", 3600, 60 },
		{ NULL, "10", 3600, 3600 },                        /* Age only shortens a max-age */
		{ "max-age=60", NULL, -5, 0 },
		/* A cap near INT64_MAX: the digits saturate, never overflow
		 * (UBSan watches). */
		{ "max-age=99999999999999999999", NULL, INT64_MAX, INT64_MAX },
		{ "max-age=9223372036854775807", NULL, INT64_MAX, INT64_MAX },
		{ "max-age=9223372036854775806", NULL, INT64_MAX, INT64_MAX - 1 },
		{ "max-age=9223372036854775807", "99999999999999999999", INT64_MAX, 0 },
		{ "max-age=99999999999999999999", "7", INT64_MAX, INT64_MAX - 7 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t got = verify_cache_lifetime(cases[i].cc, cases[i].age, cases[i].max);
		if (got != cases[i].want)
			fail_msg("Cache-Control `%s' Age `%s' max %lld: got %lld, want %lld", cases[i].cc ? cases[i].cc : "(none)",
				 cases[i].age ? cases[i].age : "(none)", (long long)cases[i].max, (long long)got,
				 (long long)cases[i].want);
	}
}

/* ---- the JWKS parser ------------------------------------------------------------ */

static int parse(const char *doc, struct verify_keyset **ret)
{
	return verify_keyset_parse(doc, strlen(doc), VERIFY_MAX_JWKS_BYTES, ret);
}

static void test_jwks_refused(void **state)
{
	static const char *const not_jwks[] = {
		"", "not json", "[]", "\"keys\"", "{}", "{\"keys\":{}}", "{\"keys\":null}", "{\"keys\":[]} {}",
		"{\"keys\":[],\"keys\":[]}", "{\"keys\":[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}",
	};
	struct verify_keyset *set = (struct verify_keyset *)0x1;
	struct key k;
	char *text, *big;
	size_t len;

	for (size_t i = 0; i < sizeof(not_jwks) / sizeof(not_jwks[0]); i++) {
		if (parse(not_jwks[i], &set) != -EINVAL)
			fail_msg("`%s' was taken for a JWKS", not_jwks[i]);
	}
	assert_ptr_equal(set, (struct verify_keyset *)0x1);
	/* Over the size limit, checked before parsing. */
	key_make(&k, JWS_ALG_ES256);
	text = jwks_of((struct key *[]){ &k }, 1);
	len = strlen(text);
	assert_int_equal(verify_keyset_parse(text, len, len - 1, &set), -E2BIG);
	assert_int_equal(verify_keyset_parse(text, len, len, &set), 0);
	assert_int_equal(set->count, 1);
	verify_keyset_unref(set);
	/* 65 entries is over the bound whatever they are; 64 is fine. */
	big = malloc(65 * (len + 1) + 32);
	assert_non_null(big);
	for (int n = 64; n <= 65; n++) {
		char *p = big + sprintf(big, "{\"keys\":[");
		json_t *doc = json_loads(text, 0, NULL);
		char *one = json_dumps(json_array_get(json_object_get(doc, "keys"), 0), JSON_COMPACT);
		for (int i = 0; i < n; i++)
			p += sprintf(p, "%s%s", i ? "," : "", one);
		strcpy(p, "]}");
		set = (struct verify_keyset *)0x1;
		if (n == 65) {
			assert_int_equal(parse(big, &set), -E2BIG);
			assert_ptr_equal(set, (struct verify_keyset *)0x1);
		} else {
			/* 64 copies of one kid: every one is skipped. */
			assert_int_equal(parse(big, &set), 0);
			assert_int_equal(set->count, 0);
			assert_int_equal(set->skipped, 64);
			verify_keyset_unref(set);
		}
		free(one);
		json_decref(doc);
	}
	free(big);
	free(text);
	/* An empty set is a set. */
	assert_int_equal(parse("{\"keys\":[]}", &set), 0);
	assert_int_equal(set->count, 0);
	assert_null(verify_keyset_find(set, "x"));
	verify_keyset_unref(set);
	key_free(&k);
}

/* Entries the library cannot use are skipped, and the rest of the set
 * stays usable. */
static void test_jwks_skipped_entries(void **state)
{
	struct key ec, rsa, ed, twin;
	EVP_PKEY *small = EVP_RSA_gen(1024);
	json_t *doc = json_pack("{s:[]}", "keys"), *list = json_object_get(doc, "keys"), *jwk = NULL;
	struct verify_keyset *set = NULL;
	char *text, long_kid[200];

	key_make(&ec, JWS_ALG_ES256);
	key_make(&rsa, JWS_ALG_RS256);
	key_make(&ed, JWS_ALG_EDDSA);
	key_make(&twin, JWS_ALG_ES384);
	assert_non_null(small);
	/* Usable: the three service keys, and one without alg. */
	assert_int_equal(jwk_public_to_json(ec.pkey, ec.kid, ec.alg, &jwk), 0);
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(rsa.pkey, rsa.kid, rsa.alg, &jwk), 0);
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(ed.pkey, "ed-no-alg", JWS_ALG_INVALID, &jwk), 0);
	json_array_append_new(list, jwk);
	/* Skipped, each for one reason. */
	json_array_append_new(list, json_string("not an object"));
	assert_int_equal(jwk_public_to_json(ec.pkey, NULL, JWS_ALG_INVALID, &jwk), 0);
	json_array_append_new(list, jwk);   /* no kid */
	assert_int_equal(jwk_public_to_json(ec.pkey, "", JWS_ALG_ES256, &jwk), 0);
	json_array_append_new(list, jwk);   /* empty kid */
	memset(long_kid, 'k', sizeof(long_kid) - 1);
	long_kid[sizeof(long_kid) - 1] = '\0';
	assert_int_equal(jwk_public_to_json(ec.pkey, long_kid, JWS_ALG_ES256, &jwk), 0);
	json_array_append_new(list, jwk);   /* kid over 128 bytes */
	json_array_append_new(list, json_pack("{s:s, s:s, s:s}", "kty", "oct", "kid", "hmac",
					      "k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	json_array_append_new(list, json_pack("{s:s, s:s}", "kty", "XYZ", "kid", "unknown-kty"));
	assert_int_equal(jwk_public_to_json(ec.pkey, "unknown-alg", JWS_ALG_INVALID, &jwk), 0);
	json_object_set_new(jwk, "alg", json_string("ES999"));
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(ec.pkey, "wrong-alg", JWS_ALG_ES384, &jwk), 0);
	json_array_append_new(list, jwk);   /* ES384 on a P-256 key */
	assert_int_equal(jwk_public_to_json(ec.pkey, "for-encryption", JWS_ALG_ES256, &jwk), 0);
	json_object_set_new(jwk, "use", json_string("enc"));
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(ec.pkey, "ops-sign-only", JWS_ALG_ES256, &jwk), 0);
	json_object_set_new(jwk, "key_ops", json_pack("[s]", "sign"));
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(small, "rsa-1024", JWS_ALG_INVALID, &jwk), 0);
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(ec.pkey, "off-curve", JWS_ALG_ES256, &jwk), 0);
	json_object_set_new(jwk, "y", json_string(json_string_value(json_object_get(jwk, "x"))));
	json_array_append_new(list, jwk);
	/* One kid for two different keys: neither may stand for it. */
	assert_int_equal(jwk_public_to_json(twin.pkey, "twin", JWS_ALG_ES384, &jwk), 0);
	json_array_append_new(list, jwk);
	assert_int_equal(jwk_public_to_json(ec.pkey, "twin", JWS_ALG_ES256, &jwk), 0);
	json_array_append_new(list, jwk);

	text = json_dumps(doc, JSON_COMPACT);
	assert_int_equal(parse(text, &set), 0);
	assert_int_equal(set->count, 3);
	assert_int_equal(set->skipped, 14);
	assert_non_null(verify_keyset_find(set, ec.kid));
	assert_non_null(verify_keyset_find(set, rsa.kid));
	assert_non_null(verify_keyset_find(set, "ed-no-alg"));
	assert_null(verify_keyset_find(set, "twin"));
	assert_null(verify_keyset_find(set, "hmac"));
	assert_null(verify_keyset_find(set, "rsa-1024"));
	assert_null(verify_keyset_find(set, NULL));
	assert_int_equal(set->doc_len, strlen(text));
	assert_string_equal(set->doc, text);
	/* A reference outlives the first. */
	verify_keyset_ref(set);
	verify_keyset_unref(set);
	assert_non_null(verify_keyset_find(set, ec.kid));
	verify_keyset_unref(set);
	free(text);
	json_decref(doc);
	EVP_PKEY_free(small);
	key_free(&ec);
	key_free(&rsa);
	key_free(&ed);
	key_free(&twin);
}

/* ---- lifetime, refetch, stale -------------------------------------------------- */

struct rotation {
	struct key a, b, c;
	struct verify_options opts;
	const char *path;
};

static int rotation_setup(void **state)
{
	static struct rotation rot;

	if (fixture_tmpdir_setup(state) < 0)
		return -1;
	memset(&rot, 0, sizeof(rot));
	key_make(&rot.a, JWS_ALG_ES256);
	key_make(&rot.b, JWS_ALG_ES256);
	key_make(&rot.c, JWS_ALG_EDDSA);
	rot.path = strdup(write_jwks("jwks.json", (struct key *[]){ &rot.a }, 1));
	verify_options_init(&rot.opts);
	rot.opts.jwks_file = rot.path;
	rot.opts.refetch_interval = 30;
	rot.opts.max_lifetime = 300;
	rot.opts.max_stale = 1000;
	rot.opts.clock = fake_clock;
	rot.opts.clock_ctx = &fake_now;
	fake_now = T0;
	*state = &rot;
	return 0;
}

static int rotation_teardown(void **state)
{
	struct rotation *rot = *state;

	key_free(&rot->a);
	key_free(&rot->b);
	key_free(&rot->c);
	free((char *)rot->path);
	return fixture_tmpdir_teardown(state);
}

/* A rotation: an unknown kid causes one refetch once refetch_interval has
 * passed since the last attempt, and not before. */
static void test_unknown_kid_refetch_rate_limit(void **state)
{
	struct rotation *rot = *state;
	struct verify *v = verify_at(&rot->opts);
	char *ta = token_by(&rot->a, NULL, T0 + 3600, NULL), *tb = token_by(&rot->b, NULL, T0 + 3600, NULL);
	char *tb2 = token_by(&rot->b, NULL, T0 + 3600, "{\"n\":2}"), *tc = token_by(&rot->c, NULL, T0 + 3600, NULL);
	struct verify_stats st;

	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	st = stats_of(v);
	assert_int_equal(st.fetches, 1);
	assert_int_equal(st.fetched_at, T0);
	assert_int_equal(st.expires_at, T0 + 300);
	assert_int_equal(st.keys, 1);
	/* B is not published yet; the set was read 10 s ago. */
	fake_now = T0 + 10;
	assert_string_equal(verdict(v, tb, NULL, NULL), "unknown_kid");
	st = stats_of(v);
	assert_int_equal(st.fetches, 1);
	assert_int_equal(st.kid_refetches_refused, 1);
	/* B is published now, but the last attempt is 20 s old. */
	write_jwks("jwks.json", (struct key *[]){ &rot->a, &rot->b }, 2);
	fake_now = T0 + 29;
	assert_string_equal(verdict(v, tb, NULL, NULL), "unknown_kid");
	assert_int_equal(stats_of(v).kid_refetches_refused, 2);
	assert_int_equal(stats_of(v).fetches, 1);
	/* 30 s on: exactly one refetch, and B verifies. */
	fake_now = T0 + 30;
	assert_string_equal(verdict(v, tb, NULL, NULL), "valid");
	st = stats_of(v);
	assert_int_equal(st.fetches, 2);
	assert_int_equal(st.kid_refetches, 1);
	assert_int_equal(st.keys, 2);
	assert_int_equal(st.fetched_at, T0 + 30);
	assert_int_equal(st.expires_at, T0 + 330);
	/* The next B token costs nothing; A still verifies. */
	assert_string_equal(verdict(v, tb2, NULL, NULL), "valid");
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).fetches, 2);
	/* A kid nobody has, inside the interval: no fetch. */
	fake_now = T0 + 45;
	assert_string_equal(verdict(v, tc, NULL, NULL), "unknown_kid");
	assert_int_equal(stats_of(v).fetches, 2);
	assert_int_equal(stats_of(v).kid_refetches_refused, 3);
	/* Past the interval it is asked for once more, and still unknown. */
	fake_now = T0 + 60;
	assert_string_equal(verdict(v, tc, NULL, NULL), "unknown_kid");
	assert_int_equal(stats_of(v).fetches, 3);
	assert_int_equal(stats_of(v).kid_refetches, 2);
	assert_string_equal(verdict(v, tc, NULL, NULL), "unknown_kid");
	assert_int_equal(stats_of(v).fetches, 3);
	free(ta);
	free(tb);
	free(tb2);
	free(tc);
	verify_free(v);
}

/* What never costs a fetch: a malformed token, a refused alg, a token
 * without kid once a set is held. */
static void test_no_fetch_without_need(void **state)
{
	struct rotation *rot = *state;
	struct verify *v = verify_at(&rot->opts);
	char *no_kid = token_by(&rot->a, "", T0 + 3600, NULL), *ta = token_by(&rot->a, NULL, T0 + 3600, NULL);

	assert_string_equal(verdict(v, "garbage", NULL, NULL), "malformed");
	assert_string_equal(verdict(v, "eyJhbGciOiJub25lIn0.e30.AAAA", NULL, NULL), "unsupported_alg");
	assert_int_equal(stats_of(v).fetches, 0);
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	fake_now = T0 + 100;
	assert_string_equal(verdict(v, no_kid, NULL, NULL), "unknown_kid");
	assert_int_equal(stats_of(v).fetches, 1);
	assert_int_equal(stats_of(v).kid_refetches, 0);
	assert_int_equal(stats_of(v).kid_refetches_refused, 0);
	free(no_kid);
	free(ta);
	verify_free(v);
}

/* The set's lifetime; a failed refetch keeps the stale set for max_stale,
 * retried no more than once per refetch_interval; then no verdict. */
static void test_expiry_and_stale_set(void **state)
{
	struct rotation *rot = *state;
	struct verify *v = verify_at(&rot->opts);
	char *ta = token_by(&rot->a, NULL, T0 + 100000, NULL);
	struct verify_stats st;
	int stale = -1;

	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	/* One second before the end of its lifetime: no fetch. */
	fake_now = T0 + 299;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_int_equal(stats_of(v).fetches, 1);
	/* At its end: refetched. */
	fake_now = T0 + 300;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	st = stats_of(v);
	assert_int_equal(st.fetches, 2);
	assert_int_equal(st.expires_at, T0 + 600);
	/* The source goes away: the expired set goes on, stale. */
	assert_int_equal(unlink(rot->path), 0);
	fake_now = T0 + 600;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_true(stale);
	st = stats_of(v);
	assert_int_equal(st.fetches, 3);
	assert_int_equal(st.fetch_failures, 1);
	assert_non_null(strstr(st.last_error, "cannot open"));
	assert_int_equal(st.expires_at, T0 + 600);
	/* Within the interval: no new attempt. */
	fake_now = T0 + 629;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_true(stale);
	assert_int_equal(stats_of(v).fetches, 3);
	fake_now = T0 + 630;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_int_equal(stats_of(v).fetches, 4);
	assert_int_equal(stats_of(v).fetch_failures, 2);
	/* max_stale (1000 s) past the expiry: no verdict. */
	fake_now = T0 + 600 + 999;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	fake_now = T0 + 600 + 1000;
	assert_string_equal(verdict(v, ta, NULL, NULL), "-5");  /* -EIO */
	/* A malformed token still gets its verdict. */
	assert_string_equal(verdict(v, "garbage", NULL, NULL), "malformed");
	/* The source is back: fresh again at the next attempt. */
	write_jwks("jwks.json", (struct key *[]){ &rot->a }, 1);
	fake_now = T0 + 600 + 1030;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	st = stats_of(v);
	assert_int_equal(st.fetched_at, T0 + 1630);
	assert_int_equal(st.expires_at, T0 + 1930);
	free(ta);
	verify_free(v);
}

/* A lifetime of 0 (no-cache, max-age=0, an Age past max-age, or
 * max_lifetime 0 as here) is stretched to refetch_interval: 200 tokens with
 * made-up kids cost one fetch within the interval, not 200. */
static void test_zero_lifetime_is_stretched(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 100000, NULL);
	struct verify_stats st;
	int stale = -1;

	rot->opts.max_lifetime = 0;
	v = verify_at(&rot->opts);
	for (int i = 0; i < 200; i++) {
		unsigned char raw[16];
		char kid[2 * sizeof(raw) + 1], *t;

		assert_int_equal(RAND_bytes(raw, (int)sizeof(raw)), 1);
		for (size_t j = 0; j < sizeof(raw); j++)
			snprintf(kid + 2 * j, 3, "%02x", raw[j]);
		t = token_by(&rot->a, kid, T0 + 100000, NULL);
		fake_now = T0 + i % 30;
		assert_string_equal(verdict(v, t, NULL, NULL), "unknown_kid");
		free(t);
	}
	st = stats_of(v);
	assert_int_equal(st.fetches, 1);
	assert_int_equal(st.kid_refetches, 0);
	assert_int_equal(st.kid_refetches_refused, 199);
	assert_int_equal(st.fetched_at, T0);
	assert_int_equal(st.expires_at, T0 + 30);
	/* Within the interval a known kid is valid and fresh, no fetch. */
	fake_now = T0 + 29;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	assert_int_equal(stats_of(v).fetches, 1);
	/* At its end: one refetch, stretched again. */
	fake_now = T0 + 30;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	st = stats_of(v);
	assert_int_equal(st.fetches, 2);
	assert_int_equal(st.expires_at, T0 + 60);
	verify_free(v);
	/* refetch_interval 0 asks for no stretching: every expiry fetches. */
	rot->opts.refetch_interval = 0;
	v = verify_at(&rot->opts);
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).fetches, 2);
	verify_free(v);
	free(ta);
}

/* No set at all and the source unreachable: no verdict, and the next
 * attempt waits for refetch_interval. */
static void test_no_set_at_all(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 3600, NULL);

	assert_int_equal(unlink(rot->path), 0);
	v = verify_at(&rot->opts);
	assert_string_equal(verdict(v, ta, NULL, NULL), "-5");
	assert_int_equal(stats_of(v).fetches, 1);
	fake_now = T0 + 29;
	assert_string_equal(verdict(v, ta, NULL, NULL), "-5");
	assert_int_equal(stats_of(v).fetches, 1);
	write_jwks("jwks.json", (struct key *[]){ &rot->a }, 1);
	fake_now = T0 + 30;
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).fetches, 2);
	assert_int_equal(stats_of(v).fetch_failures, 1);
	free(ta);
	verify_free(v);
}

/* A JWKS that is refused whole (not JSON, too large) is a failed fetch:
 * the set held stays. */
static void test_refused_document_keeps_the_set(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 100000, NULL);
	int stale = 0;

	rot->opts.max_jwks_bytes = 4096;
	v = verify_at(&rot->opts);
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	fixture_write_file("jwks.json", "{\"keys\":", 8, 0644);
	fake_now = T0 + 300;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_true(stale);
	assert_string_equal(stats_of(v).last_error, "not a JWKS document");
	{
		char big[5000];
		memset(big, ' ', sizeof(big));
		fixture_write_file("jwks.json", big, sizeof(big), 0644);
	}
	fake_now = T0 + 330;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_true(stale);
	assert_non_null(strstr(stats_of(v).last_error, "over 4096 bytes"));
	assert_int_equal(stats_of(v).fetch_failures, 2);
	assert_int_equal(stats_of(v).keys, 1);
	free(ta);
	verify_free(v);
}

/* Expectations and outputs. */
static void test_expectations_and_result(void **state)
{
	struct rotation *rot = *state;
	struct verify *v = verify_at(&rot->opts);
	char *t = token_by(&rot->a, NULL, T0 + 3600,
			   "{\"iss\":\"https://issuer.example\",\"aud\":[\"api\",\"web\"],\"token_type\":\"access\"}");
	struct verify_expect e = { "https://issuer.example", "web", "at+jwt", "access" };
	struct verify_result res;
	json_t *header, *claims;

	assert_int_equal(verify_token(v, t, strlen(t), &e, &res), 0);
	assert_true(res.valid);
	assert_null(res.error);
	assert_string_equal(res.kid, rot->a.kid);
	header = json_loads(res.header_json, JSON_REJECT_DUPLICATES, NULL);
	claims = json_loads(res.claims_json, JSON_REJECT_DUPLICATES, NULL);
	assert_string_equal(json_string_value(json_object_get(header, "kid")), rot->a.kid);
	assert_string_equal(json_string_value(json_object_get(claims, "sub")), "alice");
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), T0 + 3600);
	json_decref(header);
	json_decref(claims);
	verify_result_clear(&res);
	assert_null(res.header_json);
	assert_int_equal(res.valid, 0);
	e.audience = "mobile";
	assert_string_equal(verdict(v, t, &e, NULL), "wrong_audience");
	e.audience = NULL;
	e.issuer = "https://other.example";
	assert_string_equal(verdict(v, t, &e, NULL), "wrong_issuer");
	e.issuer = NULL;
	e.typ = "rt+jwt";
	assert_string_equal(verdict(v, t, &e, NULL), "wrong_type");
	e.typ = NULL;
	e.token_type = "refresh";
	assert_string_equal(verdict(v, t, &e, NULL), "wrong_type");
	/* The leeway comes from the options. */
	fake_now = T0 + 3600 + 29;
	assert_string_equal(verdict(v, t, NULL, NULL), "valid");
	fake_now = T0 + 3600 + 30;
	assert_string_equal(verdict(v, t, NULL, NULL), "expired");
	/* A token given with its length only. */
	{
		char *longer = NULL;
		fake_now = T0;
		assert_true(asprintf(&longer, "%sXYZ", t) > 0);
		assert_int_equal(verify_token(v, longer, strlen(t), NULL, &res), 0);
		assert_true(res.valid);
		verify_result_clear(&res);
		free(longer);
	}
	free(t);
	verify_free(v);
}

/* ---- the cache file ------------------------------------------------------------- */

static void test_cache_file_round_trip(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 100000, NULL), cache[512], *text;
	struct stat st;
	struct verify_stats vs;
	json_t *doc;
	int stale = 0;

	snprintf(cache, sizeof(cache), "%s/cache.json", fixture_tmpdir);
	rot->opts.cache_file = cache;
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	verify_free(v);
	/* Written 0600, for this source, with the document as read. */
	assert_int_equal(stat(cache, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	doc = json_load_file(cache, JSON_REJECT_DUPLICATES, NULL);
	assert_non_null(doc);
	assert_string_equal(json_string_value(json_object_get(doc, "source")), rot->path);
	assert_int_equal(json_integer_value(json_object_get(doc, "fetched_at")), T0);
	assert_int_equal(json_integer_value(json_object_get(doc, "expires_at")), T0 + 300);
	text = jwks_of((struct key *[]){ &rot->a }, 1);
	assert_string_equal(json_string_value(json_object_get(doc, "jwks")), text);
	free(text);
	json_decref(doc);
	/* The source gone, a new context verifies from the copy, no fetch. */
	assert_int_equal(unlink(rot->path), 0);
	fake_now = T0 + 100;
	v = verify_at(&rot->opts);
	vs = stats_of(v);
	assert_int_equal(vs.cache_file_loads, 1);
	assert_int_equal(vs.keys, 1);
	assert_int_equal(vs.expires_at, T0 + 300);
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_false(stale);
	assert_int_equal(stats_of(v).fetches, 0);
	/* Past its lifetime the copy is refetched; failing that it is stale. */
	fake_now = T0 + 300;
	assert_string_equal(verdict(v, ta, NULL, &stale), "valid");
	assert_true(stale);
	assert_int_equal(stats_of(v).fetches, 1);
	verify_free(v);
	/* Another source's copy is not used. */
	rot->opts.jwks_file = "/nonexistent/other-jwks.json";
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	assert_string_equal(verdict(v, ta, NULL, NULL), "-5");
	verify_free(v);
	rot->opts.jwks_file = rot->path;
	/* A copy others may write is not trusted. */
	assert_int_equal(chmod(cache, 0620), 0);
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	verify_free(v);
	/* Nor a broken one. */
	fixture_write_file("cache.json", "{\"source\":", 10, 0600);
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	verify_free(v);
	{
		static const char odd[] = "{\"source\":\"x\",\"fetched_at\":1,\"expires_at\":0,\"etag\":\"\",\"jwks\":\"{}\"}";
		fixture_write_file("cache.json", odd, strlen(odd), 0600);
	}
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	verify_free(v);
	/* A symbolic link is not followed. */
	{
		char target[600];
		snprintf(target, sizeof(target), "%s/elsewhere.json", fixture_tmpdir);
		unlink(cache);
		assert_int_equal(symlink(target, cache), 0);
		v = verify_at(&rot->opts);
		assert_int_equal(stats_of(v).cache_file_loads, 0);
		verify_free(v);
	}
	rot->opts.cache_file = NULL;
	free(ta);
}

/* A copy's lifetime is capped by the max_lifetime of the context that
 * reads it: lowering the option takes effect on the copy already kept. */
static void test_cache_file_lifetime_capped(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 100000, NULL), cache[512];
	struct verify_stats vs;

	snprintf(cache, sizeof(cache), "%s/cache.json", fixture_tmpdir);
	rot->opts.cache_file = cache;
	v = verify_at(&rot->opts);
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).expires_at, T0 + 300);
	verify_free(v);
	rot->opts.max_lifetime = 60;
	fake_now = T0 + 10;
	v = verify_at(&rot->opts);
	vs = stats_of(v);
	assert_int_equal(vs.cache_file_loads, 1);
	assert_int_equal(vs.fetched_at, T0);
	assert_int_equal(vs.expires_at, T0 + 60);
	fake_now = T0 + 59;
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).fetches, 0);
	fake_now = T0 + 60;
	assert_string_equal(verdict(v, ta, NULL, NULL), "valid");
	assert_int_equal(stats_of(v).fetches, 1);
	verify_free(v);
	/* A larger max_lifetime does not lengthen a copy (the one just
	 * refetched: 60 s from T0 + 60). */
	rot->opts.max_lifetime = 100000;
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 1);
	assert_int_equal(stats_of(v).expires_at, T0 + 120);
	verify_free(v);
	rot->opts.cache_file = NULL;
	free(ta);
}

/* A FIFO at the cache path or the JWKS file path is refused at once: an
 * open that waited for a writer would hang verify_new (and hsmjwtctl)
 * forever.  SIGALRM ends the test if it hangs. */
static void test_fifo_is_refused(void **state)
{
	struct rotation *rot = *state;
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, T0 + 3600, NULL), cache[512], fifo[512];

	snprintf(cache, sizeof(cache), "%s/cache-fifo", fixture_tmpdir);
	snprintf(fifo, sizeof(fifo), "%s/jwks-fifo", fixture_tmpdir);
	assert_int_equal(mkfifo(cache, 0600), 0);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	alarm(20);
	rot->opts.cache_file = cache;
	v = verify_at(&rot->opts);
	assert_int_equal(stats_of(v).cache_file_loads, 0);
	assert_int_equal(stats_of(v).keys, 0);
	verify_free(v);
	rot->opts.cache_file = NULL;
	rot->opts.jwks_file = fifo;
	v = verify_at(&rot->opts);
	assert_string_equal(verdict(v, ta, NULL, NULL), "-5");   /* -EIO */
	assert_int_equal(stats_of(v).fetch_failures, 1);
	assert_string_equal(stats_of(v).last_error, "not a regular file");
	verify_free(v);
	alarm(0);
	rot->opts.jwks_file = rot->path;
	free(ta);
}

/* ---- threads ------------------------------------------------------------------------ */

struct worker {
	struct verify *v;
	const char *token;
	int valid;
	int other;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < 300; i++) {
		struct verify_result res;
		if (verify_token(w->v, w->token, strlen(w->token), NULL, &res) == 0 && res.valid)
			w->valid++;
		else
			w->other++;
		verify_result_clear(&res);
	}
	return NULL;
}

/* Four threads on one context whose set expires at once (max_lifetime 0,
 * and refetch_interval 0 so that it is not stretched):
 * every verification refetches or goes on with the set held while another
 * fetches; every verdict is valid (ASan/TSan watch the rest). */
static void test_threads_share_a_context(void **state)
{
	struct rotation *rot = *state;
	struct worker w[4];
	pthread_t th[4];
	struct verify *v;
	char *ta = token_by(&rot->a, NULL, 2000000000LL, NULL);
	struct verify_stats st;

	rot->opts.clock = NULL;
	rot->opts.max_lifetime = 0;
	rot->opts.refetch_interval = 0;
	v = verify_at(&rot->opts);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .v = v, .token = ta };
		assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].valid, 300);
		assert_int_equal(w[i].other, 0);
	}
	st = stats_of(v);
	assert_true(st.fetches >= 1);
	assert_true(st.fetches <= 1200);
	assert_int_equal(st.fetch_failures, 0);
	print_message("1200 verifications, %llu fetches\n", (unsigned long long)st.fetches);
	verify_free(v);
	free(ta);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_shared_rule_cases, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test(test_options),
		cmocka_unit_test(test_sources),
		cmocka_unit_test(test_cache_control),
		cmocka_unit_test(test_jwks_refused),
		cmocka_unit_test(test_jwks_skipped_entries),
		cmocka_unit_test_setup_teardown(test_unknown_kid_refetch_rate_limit, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_no_fetch_without_need, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_expiry_and_stale_set, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_zero_lifetime_is_stretched, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_no_set_at_all, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_refused_document_keeps_the_set, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_expectations_and_result, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_cache_file_round_trip, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_cache_file_lifetime_capped, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_fifo_is_refused, rotation_setup, rotation_teardown),
		cmocka_unit_test_setup_teardown(test_threads_share_a_context, rotation_setup, rotation_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
