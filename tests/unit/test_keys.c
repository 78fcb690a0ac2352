/* keys: loading from a token, generating what is missing exactly once,
 * the JWKS document and its ETag, lookup and the signer choice. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/json.h"
#include "hsmjwt/keys.h"

static struct fixture_token tok;
static struct hsm *hsm;

static void test_generates_missing_once(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256 };
	struct keys *first = NULL, *second = NULL, *none = NULL;

	/* Without generation a fresh token has no keys and no signer. */
	assert_int_equal(keys_load(hsm, algs, 2, 2048, 0, &none), 0);
	assert_int_equal(none->count, 0);
	assert_null(keys_signer(none, JWS_ALG_ES256));
	keys_free(none);

	assert_int_equal(keys_load(hsm, algs, 2, 2048, 1, &first), 0);
	assert_int_equal(first->count, 2);
	assert_non_null(keys_signer(first, JWS_ALG_ES256));
	assert_non_null(keys_signer(first, JWS_ALG_RS256));
	assert_null(keys_signer(first, JWS_ALG_PS256));

	/* A second start finds the same keys and generates nothing. */
	assert_int_equal(keys_load(hsm, algs, 2, 2048, 1, &second), 0);
	assert_int_equal(second->count, 2);
	assert_string_equal(keys_signer(first, JWS_ALG_ES256)->hsm.kid, keys_signer(second, JWS_ALG_ES256)->hsm.kid);
	assert_string_equal(keys_signer(first, JWS_ALG_RS256)->hsm.kid, keys_signer(second, JWS_ALG_RS256)->hsm.kid);
	/* Same key set, same document, same ETag. */
	assert_string_equal(first->jwks, second->jwks);
	assert_string_equal(first->etag, second->etag);
	keys_free(first);
	keys_free(second);
}

static void test_jwks_document(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256 };
	struct keys *keys = NULL;
	json_t *doc = NULL, *list, *jwk;
	size_t i;

	assert_int_equal(keys_load(hsm, algs, 2, 2048, 1, &keys), 0);
	assert_int_equal(json_strict_parse(keys->jwks, keys->jwks_len, 16, &doc), 0);
	list = json_object_get(doc, "keys");
	assert_int_equal(json_array_size(list), keys->count);
	json_array_foreach(list, i, jwk) {
		const char *kid = json_string_value(json_object_get(jwk, "kid"));
		assert_non_null(kid);
		assert_non_null(keys_lookup(keys, kid));
		assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
		/* Public members only. */
		assert_null(json_object_get(jwk, "d"));
		assert_null(json_object_get(jwk, "p"));
	}
	assert_true(keys->etag[0] == '"' && keys->etag[strlen(keys->etag) - 1] == '"');
	json_decref(doc);
	keys_free(keys);
}

static void test_lookup(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256 };
	struct keys *keys = NULL;
	const struct keys_entry *signer;

	assert_int_equal(keys_load(hsm, algs, 1, 2048, 1, &keys), 0);
	signer = keys_signer(keys, JWS_ALG_ES256);
	assert_ptr_equal(keys_lookup(keys, signer->hsm.kid), signer->verify);
	assert_int_equal(signer->verify->alg, JWS_ALG_ES256);
	assert_null(keys_lookup(keys, NULL));
	assert_null(keys_lookup(keys, "no-such-kid"));
	assert_null(keys_signer(keys, JWS_ALG_INVALID));
	assert_null(keys_signer(keys, JWS_ALG_COUNT));
	keys_free(keys);
}

static void test_signer_is_smallest_kid(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES384 };
	struct hsm_key extra[2];
	struct keys *keys = NULL;
	const char *smallest;

	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES384, 2048, NULL, 0, &extra[0]), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES384, 2048, NULL, 0, &extra[1]), 0);
	smallest = strcmp(extra[0].kid, extra[1].kid) < 0 ? extra[0].kid : extra[1].kid;
	assert_int_equal(keys_load(hsm, algs, 1, 2048, 1, &keys), 0);
	assert_string_equal(keys_signer(keys, JWS_ALG_ES384)->hsm.kid, smallest);
	/* Both verify. */
	assert_non_null(keys_lookup(keys, extra[0].kid));
	assert_non_null(keys_lookup(keys, extra[1].kid));
	keys_free(keys);
	EVP_PKEY_free(extra[0].public_key);
	EVP_PKEY_free(extra[1].public_key);
}

struct load_args {
	const enum jws_alg *algs;
	size_t n_algs;
	struct keys *keys;
};

static int load_generating(void *arg)
{
	struct load_args *a = arg;
	return keys_load(hsm, a->algs, a->n_algs, 2048, 1, &a->keys);
}

/* A correctly labelled key the verifier refuses (RSA under 2048 bits) is
 * skipped with a warning, not fatal, and does not count as the key of its
 * algorithm: a usable one is generated next to it. */
static void test_skips_a_key_the_verifier_refuses(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_PS256 };
	struct load_args args = { algs, 1, NULL };
	struct hsm_key weak;
	const struct keys_entry *signer;
	const char *log;
	char want[128];
	int r;

	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_PS256, 1024, NULL, 0, &weak), 0);
	log = fixture_capture_stderr(load_generating, &args, &r);
	assert_int_equal(r, 0);
	snprintf(want, sizeof(want), "kid=%s alg=PS256 bits=1024", weak.kid);
	assert_non_null(strstr(log, want));
	assert_null(keys_lookup(args.keys, weak.kid));
	assert_null(strstr(args.keys->jwks, weak.kid));
	signer = keys_signer(args.keys, JWS_ALG_PS256);
	assert_non_null(signer);
	assert_string_not_equal(signer->hsm.kid, weak.kid);
	assert_int_equal(EVP_PKEY_get_bits(signer->hsm.public_key), 2048);
	keys_free(args.keys);
	assert_int_equal(hsm_destroy_key(hsm, &weak), 0);
	EVP_PKEY_free(weak.public_key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generates_missing_once),
		cmocka_unit_test(test_jwks_document),
		cmocka_unit_test(test_lookup),
		cmocka_unit_test(test_signer_is_smallest_kid),
		cmocka_unit_test(test_skips_a_key_the_verifier_refuses),
	};
	int r = fixture_token_create(&tok);
	if (r != 0)
		return r == 77 ? 77 : 1;
	if (hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm) != 0)
		return 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	hsm_close(hsm);
	fixture_token_destroy(&tok);
	return r;
}
