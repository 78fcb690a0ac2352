/* hsm: against a fresh SoftHSM token — login, token lookup, key generation
 * for every algorithm, discovery, signing checked by the verifier, and
 * destruction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/jws.h"

static struct fixture_token tok;

static const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_ES384, JWS_ALG_RS256, JWS_ALG_PS256, JWS_ALG_EDDSA };
static const size_t sig_sizes[] = { 64, 96, 256, 256, 64 };

static void test_wrong_pin_is_refused(void **state)
{
	struct hsm *hsm = NULL;
	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, "0000", 4, &hsm), HSM_E_LOGIN);
	assert_null(hsm);
}

static void test_missing_pin_is_refused(void **state)
{
	struct hsm *hsm = NULL;
	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, NULL, 0, &hsm), HSM_E_LOGIN);
	assert_null(hsm);
}

static void test_unknown_token(void **state)
{
	struct hsm *hsm = NULL;
	assert_int_equal(hsm_open(fixture_module(), "no-such-token", tok.pin, tok.pin_len, &hsm), HSM_E_NO_TOKEN);
	assert_int_equal(hsm_open(fixture_module(), "pkcs11:token=no-such-token", tok.pin, tok.pin_len, &hsm),
			 HSM_E_NO_TOKEN);
	assert_null(hsm);
}

static void test_bad_module(void **state)
{
	struct hsm *hsm = NULL;
	assert_int_equal(hsm_open("/nonexistent/module.so", FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm),
			 HSM_E_MODULE);
	assert_null(hsm);
}

static void test_open_by_uri(void **state)
{
	struct hsm *hsm = NULL;
	char *text = NULL;

	assert_int_equal(hsm_open(fixture_module(), "pkcs11:token=" FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm), 0);
	assert_int_equal(hsm_describe(hsm, &text), 0);
	assert_non_null(strstr(text, "token:        " FIXTURE_TOKEN_LABEL));
	assert_non_null(strstr(text, "CKM_ECDSA"));
	free(text);
	hsm_close(hsm);
}

static int find_kid(const struct hsm_key *keys, size_t n, const char *kid)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(keys[i].kid, kid) == 0)
			return (int)i;
	return -1;
}

static void test_generate_find_sign_destroy(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_session *session = NULL;
	struct hsm_key generated[5], *found = NULL;
	size_t n = 0;
	const uint8_t data[] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";

	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm), 0);
	assert_int_equal(hsm_session_open(hsm, &session), 0);
	assert_int_equal(hsm_session_check(session), 0);
	assert_int_equal(hsm_find_keys(session, &found, &n), 0);
	assert_int_equal(n, 0);
	hsm_keys_free(found, n);

	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(hsm_generate_key(hsm, algs[i], 2048, &generated[i]), 0);
		assert_int_equal(generated[i].alg, algs[i]);
		assert_int_equal(strlen(generated[i].kid), JWK_THUMBPRINT_LEN);
	}

	/* Discovery finds exactly what was generated, with the same kids. */
	assert_int_equal(hsm_find_keys(session, &found, &n), 0);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < 5; i++) {
		int at = find_kid(found, n, generated[i].kid);
		struct jwk_key *verify = NULL;
		uint8_t sig[512];
		size_t sig_len = sizeof(sig);

		assert_true(at >= 0);
		assert_int_equal(found[at].alg, algs[i]);
		/* Sign in the token, verify with the public key read back. */
		assert_int_equal(hsm_sign(session, &found[at], data, sizeof(data) - 1, sig, &sig_len), 0);
		assert_int_equal(sig_len, sig_sizes[i]);
		assert_int_equal(jwk_key_from_pkey(found[at].public_key, algs[i], &verify), 0);
		assert_int_equal(jws_verify_signature(algs[i], verify, data, sizeof(data) - 1, sig, sig_len), 0);
		sig[0] ^= 1;
		assert_int_not_equal(jws_verify_signature(algs[i], verify, data, sizeof(data) - 1, sig, sig_len), 0);
		jwk_key_free(verify);
	}

	/* Destroying removes both halves. */
	assert_int_equal(hsm_destroy_key(hsm, &found[0]), 0);
	hsm_keys_free(found, n);
	assert_int_equal(hsm_find_keys(session, &found, &n), 0);
	assert_int_equal(n, 4);
	hsm_keys_free(found, n);
	for (size_t i = 0; i < 5; i++)
		EVP_PKEY_free(generated[i].public_key);
	hsm_session_close(session);
	hsm_close(hsm);
}

static void test_sign_with_too_small_buffer_fails(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_session *session = NULL;
	struct hsm_key key;
	uint8_t sig[16];
	size_t sig_len = sizeof(sig);

	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm), 0);
	assert_int_equal(hsm_session_open(hsm, &session), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES256, 2048, &key), 0);
	assert_true(hsm_sign(session, &key, (const uint8_t *)"x", 1, sig, &sig_len) < 0);
	assert_int_equal(hsm_destroy_key(hsm, &key), 0);
	EVP_PKEY_free(key.public_key);
	hsm_session_close(session);
	hsm_close(hsm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wrong_pin_is_refused),
		cmocka_unit_test(test_missing_pin_is_refused),
		cmocka_unit_test(test_unknown_token),
		cmocka_unit_test(test_bad_module),
		cmocka_unit_test(test_open_by_uri),
		cmocka_unit_test(test_generate_find_sign_destroy),
		cmocka_unit_test(test_sign_with_too_small_buffer_fails),
	};
	int r = fixture_token_create(&tok);
	if (r != 0)
		return r == 77 ? 77 : 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_token_destroy(&tok);
	return r;
}
