/* jwt: the verification rules of SPEC §5.2 through the daemon's path —
 * jwt_verify with keys_lookup — over the shared table of rule cases
 * (fixture_rules.c: header, signature and claims rules, both sides of every
 * leeway boundary), which libhsmjwt-verify must pass too (test_verify.c);
 * then what only the functions show: their outputs, jwt_check_claims at the
 * ends of int64 and without a header, and the unverified decoder. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/keys.h"

#define NOW 1700000000LL
#define LEEWAY 30LL

static EVP_PKEY *pk_p256;
static struct jwk_key *key_p256;

static const struct jwk_key *lookup(void *ctx, const char *kid)
{
	return kid != NULL && strcmp(kid, "p256") == 0 ? key_p256 : NULL;
}

static int setup(void **state)
{
	pk_p256 = fixture_keypair(JWS_ALG_ES256);
	if (pk_p256 == NULL || jwk_key_from_pkey(pk_p256, JWS_ALG_ES256, &key_p256) != 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	jwk_key_free(key_p256);
	EVP_PKEY_free(pk_p256);
	return 0;
}

static char *b64(const char *text)
{
	char *s = NULL;

	assert_int_equal(b64url_encode_alloc((const uint8_t *)text, strlen(text), &s), 0);
	return s;
}

/* Header and payload text as given, signed with the P-256 key. */
static char *token_raw(const char *header, const char *payload)
{
	struct fixture_signer signer = { .pkey = pk_p256, .alg = JWS_ALG_ES256 };
	char *h = b64(header), *p = b64(payload), *input = NULL, *sig_b64 = NULL, *token = NULL;
	uint8_t sig[64];
	size_t sig_len = sizeof(sig);

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_int_equal(fixture_sign(&signer, (const uint8_t *)input, strlen(input), sig, &sig_len), 0);
	assert_int_equal(b64url_encode_alloc(sig, sig_len, &sig_b64), 0);
	assert_true(asprintf(&token, "%s.%s", input, sig_b64) > 0);
	free(input);
	free(sig_b64);
	free(h);
	free(p);
	return token;
}

/* A token with typ and the given claims (a JSON object's members). */
static char *token_typ(const char *typ, const char *members)
{
	char *header = NULL, *payload = NULL, *token;

	if (typ != NULL)
		assert_true(asprintf(&header, "{\"alg\":\"ES256\",\"kid\":\"p256\",\"typ\":\"%s\"}", typ) > 0);
	else
		assert_true(asprintf(&header, "{\"alg\":\"ES256\",\"kid\":\"p256\"}") > 0);
	assert_true(asprintf(&payload, "{%s}", members) > 0);
	token = token_raw(header, payload);
	free(header);
	free(payload);
	return token;
}

static char *token_claims(const char *members)
{
	return token_typ("at+jwt", members);
}

static void test_valid_token_and_outputs(void **state)
{
	struct jwt_expect e = { .now = NOW, .leeway = LEEWAY };
	char *token = token_claims("\"iss\":\"https://issuer.example\",\"sub\":\"alice\",\"aud\":\"api\","
				   "\"iat\":1700000000,\"nbf\":1700000000,\"exp\":1700003600,\"token_type\":\"access\"");
	json_t *header = NULL, *claims = NULL;

	e.issuer = "https://issuer.example";
	e.audience = "api";
	e.typ = "at+jwt";
	e.token_type = "access";
	assert_int_equal(jwt_verify(token, strlen(token), lookup, NULL, &e, &header, &claims), 0);
	assert_string_equal(json_string_value(json_object_get(header, "kid")), "p256");
	assert_string_equal(json_string_value(json_object_get(claims, "sub")), "alice");
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), 1700003600);
	/* Each output is its own reference. */
	assert_int_equal(header->refcount, 1);
	assert_int_equal(claims->refcount, 1);
	json_decref(header);
	json_decref(claims);
	/* NULL outputs are allowed. */
	assert_int_equal(jwt_verify(token, strlen(token), lookup, NULL, &e, NULL, NULL), 0);
	free(token);
}

/* Values at the ends of int64 neither overflow (UBSan watches) nor wrap
 * into acceptance. */
static void test_time_extremes(void **state)
{
	struct jwt_expect e = { .now = INT64_MAX - 5, .leeway = 100 };
	json_t *claims;

	claims = json_pack("{s:I}", "exp", (json_int_t)INT64_MAX);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), 0);
	json_decref(claims);
	claims = json_pack("{s:I, s:I}", "exp", (json_int_t)INT64_MAX, "nbf", (json_int_t)INT64_MAX);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), 0);
	json_decref(claims);

	/* now - leeway saturates at INT64_MIN; an exp just above it is valid. */
	e.now = INT64_MIN + 5;
	claims = json_pack("{s:I}", "exp", (json_int_t)(INT64_MIN + 1));
	assert_int_equal(jwt_check_claims(NULL, claims, &e), 0);
	json_decref(claims);

	e.now = NOW;
	e.leeway = LEEWAY;
	claims = json_pack("{s:I}", "exp", (json_int_t)INT64_MIN);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), JWS_E_EXPIRED);
	json_decref(claims);
	claims = json_pack("{s:f}", "exp", 1e300);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), 0);
	json_decref(claims);
	claims = json_pack("{s:f}", "exp", -1e300);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), JWS_E_EXPIRED);
	json_decref(claims);
	claims = json_pack("{s:I, s:f}", "exp", (json_int_t)(NOW + 10), "nbf", 1e300);
	assert_int_equal(jwt_check_claims(NULL, claims, &e), JWS_E_NOT_YET_VALID);
	json_decref(claims);
}

/* jwt_check_claims directly: no header, a non-string typ, and media types
 * of another top-level type (the token-level typ cases are in the table). */
static void test_typ_without_token(void **state)
{
	struct jwt_expect e = { .now = NOW, .leeway = LEEWAY, .typ = "at+jwt" };
	json_t *claims = json_pack("{s:I}", "exp", (json_int_t)1700003600);
	json_t *header = json_pack("{s:i}", "typ", 1);

	assert_int_equal(jwt_check_claims(NULL, claims, &e), JWS_E_WRONG_TYPE);
	assert_int_equal(jwt_check_claims(header, claims, &e), JWS_E_MALFORMED);
	json_decref(header);
	/* A full media type of another top-level type is taken as is:
	 * "application/" is only implied when there is no '/'. */
	e.typ = "example/x";
	header = json_pack("{s:s}", "typ", "EXAMPLE/X");
	assert_int_equal(jwt_check_claims(header, claims, &e), 0);
	json_decref(header);
	header = json_pack("{s:s}", "typ", "application/example/x");
	assert_int_equal(jwt_check_claims(header, claims, &e), JWS_E_WRONG_TYPE);
	json_decref(header);
	header = json_pack("{s:s}", "typ", "x");
	assert_int_equal(jwt_check_claims(header, claims, &e), JWS_E_WRONG_TYPE);
	json_decref(header);
	json_decref(claims);
}

/* jwt_check_claims on a non-object (the token-level payload cases are in
 * the table). */
static void test_claims_not_an_object(void **state)
{
	struct jwt_expect e = { .now = NOW, .leeway = LEEWAY };
	json_t *arr = json_array();

	assert_int_equal(jwt_check_claims(NULL, arr, &e), JWS_E_MALFORMED);
	assert_int_equal(jwt_check_claims(NULL, NULL, &e), JWS_E_MALFORMED);
	json_decref(arr);
}

/* The daemon's key set for the table's JWKS: each JWK parsed as a
 * verification key and looked up by keys_lookup, as POST /token/verify
 * does. */
struct rule_keys {
	struct keys keys;
	struct keys_entry entries[16];
};

static void rule_keys_load(const char *jwks, struct rule_keys *rk)
{
	json_t *doc = json_loads(jwks, JSON_REJECT_DUPLICATES, NULL), *jwk;
	size_t i;

	assert_non_null(doc);
	memset(rk, 0, sizeof(*rk));
	rk->keys.entries = rk->entries;
	json_array_foreach(json_object_get(doc, "keys"), i, jwk) {
		struct keys_entry *entry = &rk->entries[rk->keys.count++];
		const char *kid = json_string_value(json_object_get(jwk, "kid"));
		char thumbprint[JWK_THUMBPRINT_LEN + 1];

		assert_true(rk->keys.count <= sizeof(rk->entries) / sizeof(rk->entries[0]));
		assert_non_null(kid);
		assert_true(strlen(kid) < sizeof(entry->hsm.kid));
		assert_int_equal(jwk_key_from_json(jwk, &entry->verify), 0);
		snprintf(entry->hsm.kid, sizeof(entry->hsm.kid), "%s", kid);
		entry->hsm.alg = entry->verify->alg;
		entry->published = 1;
		/* The service's own keys: kid = RFC 7638 thumbprint, alg fixed. */
		if (json_object_get(jwk, "alg") != NULL) {
			assert_int_equal(jwk_thumbprint(entry->verify->pkey, thumbprint), 0);
			assert_string_equal(thumbprint, kid);
			assert_int_not_equal(entry->verify->alg, JWS_ALG_INVALID);
		}
	}
	assert_true(rk->keys.count >= 6);
	json_decref(doc);
}

static void rule_keys_free(struct rule_keys *rk)
{
	for (size_t i = 0; i < rk->keys.count; i++)
		jwk_key_free(rk->entries[i].verify);
}

/* Every case of the shared table through jwt_verify + keys_lookup: each
 * gets its verdict; a failure leaves the outputs untouched. */
static void test_shared_rule_cases(void **state)
{
	struct fixture_rules *rules = fixture_rules_build();
	struct rule_keys rk;
	struct keys_view view;
	size_t wrong = 0, valid = 0;

	rule_keys_load(rules->jwks, &rk);
	view = (struct keys_view){ .keys = &rk.keys, .session = NULL };
	/* Enough cases that an empty or truncated table cannot pass. */
	assert_true(rules->count >= 200);
	for (size_t i = 0; i < rules->count; i++) {
		const struct fixture_rule *c = &rules->cases[i];
		struct jwt_expect e = { .now = NOW, .leeway = c->leeway, .issuer = c->issuer,
					.audience = c->audience, .typ = c->typ, .token_type = c->token_type };
		json_t *header = (json_t *)0x1, *claims = (json_t *)0x1;
		int r = jwt_verify(c->token, c->len, keys_lookup, &view, &e, &header, &claims);

		if (r != c->want) {
			print_error("case %zu \"%s\": got %s, want %s\n", i, c->name,
				    r == 0 ? "valid" : jws_error_reason(r), c->want == 0 ? "valid" : jws_error_reason(c->want));
			wrong++;
		}
		if (r == 0) {
			valid++;
			assert_true(json_is_object(header));
			assert_true(json_is_object(claims));
			json_decref(header);
			json_decref(claims);
		} else {
			assert_ptr_equal(header, (json_t *)0x1);
			assert_ptr_equal(claims, (json_t *)0x1);
		}
	}
	print_message("%zu shared rule cases, %zu valid\n", rules->count, valid);
	assert_int_equal(wrong, 0);
	rule_keys_free(&rk);
	fixture_rules_free(rules);
}

static void test_decode_unverified(void **state)
{
	EVP_PKEY *stranger = fixture_keypair(JWS_ALG_ES256);
	struct fixture_signer signer = { .pkey = stranger, .alg = JWS_ALG_ES256 };
	char *h = b64("{\"alg\":\"ES256\",\"kid\":\"unknown\"}"), *p = b64("{\"sub\":\"bob\",\"exp\":1}");
	char *input = NULL, *sig_b64 = NULL, *token = NULL;
	json_t *header = NULL, *claims = NULL;
	uint8_t sig[64];
	size_t sig_len = sizeof(sig);

	/* Signed by a key nobody knows, long expired: decoded all the same. */
	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_int_equal(fixture_sign(&signer, (const uint8_t *)input, strlen(input), sig, &sig_len), 0);
	assert_int_equal(b64url_encode_alloc(sig, sig_len, &sig_b64), 0);
	assert_true(asprintf(&token, "%s.%s", input, sig_b64) > 0);
	assert_int_equal(jwt_decode_unverified(token, strlen(token), &header, &claims), 0);
	assert_string_equal(json_string_value(json_object_get(header, "kid")), "unknown");
	assert_string_equal(json_string_value(json_object_get(claims, "sub")), "bob");
	json_decref(header);
	json_decref(claims);
	/* The structural rules still hold. */
	header = claims = (json_t *)0x1;
	{
		char *bad = token_raw("{\"alg\":\"ES256\",\"kid\":\"p256\"}", "[1]");
		assert_int_equal(jwt_decode_unverified(bad, strlen(bad), &header, &claims), JWS_E_MALFORMED);
		free(bad);
		bad = token_raw("{\"alg\":\"ES256\",\"kid\":\"p256\",\"x5u\":\"https://x\"}", "{}");
		assert_int_equal(jwt_decode_unverified(bad, strlen(bad), &header, &claims), JWS_E_MALFORMED);
		free(bad);
		bad = token_raw("{\"alg\":\"ES256\",\"kid\":\"p256\"}", "{\"a\":1,\"a\":2}");
		assert_int_equal(jwt_decode_unverified(bad, strlen(bad), &header, &claims), JWS_E_MALFORMED);
		free(bad);
	}
	assert_int_equal(jwt_decode_unverified("a.b", 3, &header, &claims), JWS_E_MALFORMED);
	assert_ptr_equal(header, (json_t *)0x1);
	assert_ptr_equal(claims, (json_t *)0x1);
	EVP_PKEY_free(stranger);
	free(token);
	free(sig_b64);
	free(input);
	free(h);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shared_rule_cases),
		cmocka_unit_test(test_valid_token_and_outputs),
		cmocka_unit_test(test_time_extremes),
		cmocka_unit_test(test_typ_without_token),
		cmocka_unit_test(test_claims_not_an_object),
		cmocka_unit_test(test_decode_unverified),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
