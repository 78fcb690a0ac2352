/* jws_verify's memo of verified signatures (issue 7): a repeat of the same
 * bytes under the same key skips the signature check, and nothing else does.
 * A hit is made visible with a key that could not verify the token but
 * carries the serial of the key that did: only the memo can accept it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"

static EVP_PKEY *pkey_a, *pkey_b;

static int fixture_sign_a(void *ctx, const uint8_t *data, size_t len, uint8_t *sig, size_t *sig_len)
{
	struct fixture_signer s = { .pkey = pkey_a, .alg = JWS_ALG_ES256 };

	(void)ctx;
	return fixture_sign(&s, data, len, sig, sig_len);
}

static char *token_signed_by_a(const char *sub)
{
	json_t *header = json_pack("{s:s, s:s}", "alg", "ES256", "kid", "k");
	json_t *payload = json_pack("{s:s, s:i}", "sub", sub, "exp", 2000000000);
	char *token = NULL;

	assert_non_null(header);
	assert_non_null(payload);
	assert_int_equal(jws_sign_compact(header, payload, fixture_sign_a, NULL, &token), 0);
	json_decref(header);
	json_decref(payload);
	return token;
}

static const struct jwk_key *lookup_ctx_key(void *ctx, const char *kid)
{
	(void)kid;
	return ctx;
}

static int verify_with(const char *token, const struct jwk_key *key)
{
	struct jws_parsed *parsed = NULL;
	int r = jws_verify(token, strlen(token), lookup_ctx_key, (void *)key, &parsed);

	if (r == 0) {
		assert_non_null(parsed);
		jws_parsed_free(parsed);
	}
	return r;
}

/* Key b made to carry a's serial: it accepts a's token only from the memo. */
static struct jwk_key *impostor_of(const struct jwk_key *a)
{
	struct jwk_key *b = NULL;

	assert_int_equal(jwk_key_from_pkey(pkey_b, JWS_ALG_ES256, &b), 0);
	b->serial = a->serial;
	return b;
}

struct thread_arg {
	const char *token;
	const struct jwk_key *key;
	int result;
};

static void *verify_in_thread(void *p)
{
	struct thread_arg *arg = p;

	arg->result = verify_with(arg->token, arg->key);
	return NULL;
}

static void test_memo(void **state)
{
	struct jwk_key *a = NULL, *a_again = NULL, *b = NULL, *impostor;
	char *token = token_signed_by_a("alice"), *other = token_signed_by_a("bob"), *forged;
	struct thread_arg arg;
	pthread_t thread;

	(void)state;
	assert_int_equal(jwk_key_from_pkey(pkey_a, JWS_ALG_ES256, &a), 0);
	assert_int_equal(jwk_key_from_pkey(pkey_a, JWS_ALG_ES256, &a_again), 0);
	assert_int_equal(jwk_key_from_pkey(pkey_b, JWS_ALG_ES256, &b), 0);
	assert_true(a->serial != 0 && a_again->serial != 0 && b->serial != 0);
	assert_true(a->serial != a_again->serial && a->serial != b->serial && a_again->serial != b->serial);
	impostor = impostor_of(a);

	/* Off: every token is checked. */
	assert_int_equal(verify_with(token, a), 0);
	assert_int_equal(verify_with(token, impostor), JWS_E_BAD_SIGNATURE);

	assert_int_equal(jws_verify_memo_enable(3), -EINVAL);
	assert_int_equal(jws_verify_memo_enable(JWS_MEMO_MAX_SLOTS * 2), -EINVAL);
	assert_int_equal(jws_verify_memo_enable(64), 0);
	assert_int_equal(jws_verify_memo_enable(64), 0);
	assert_int_equal(jws_verify_memo_enable(128), -EALREADY);

	/* On: the first verification is a real one and is remembered... */
	assert_int_equal(verify_with(token, a), 0);
	assert_int_equal(verify_with(token, impostor), 0);
	/* ...for that key only: the same material under a new serial (a key
	 * set read again), or another key, checks the signature again. */
	assert_int_equal(verify_with(token, b), JWS_E_BAD_SIGNATURE);
	assert_int_equal(verify_with(token, a_again), 0);
	/* ...for those bytes only. */
	assert_int_equal(verify_with(other, impostor), JWS_E_BAD_SIGNATURE);
	forged = strdup(token);
	assert_non_null(forged);
	forged[strlen(forged) - 2] = forged[strlen(forged) - 2] == 'A' ? 'B' : 'A';
	assert_int_equal(verify_with(forged, a), JWS_E_BAD_SIGNATURE);
	assert_int_equal(verify_with(forged, a), JWS_E_BAD_SIGNATURE);
	assert_int_equal(verify_with(forged, impostor), JWS_E_BAD_SIGNATURE);
	/* Failures are never remembered: bob's token failed under the impostor,
	 * it still verifies under a and only then does the impostor pass. */
	assert_int_equal(verify_with(other, a), 0);
	assert_int_equal(verify_with(other, impostor), 0);

	/* Per thread: another thread has not seen the token. */
	arg = (struct thread_arg){ .token = token, .key = impostor, .result = 1 };
	assert_int_equal(pthread_create(&thread, NULL, verify_in_thread, &arg), 0);
	assert_int_equal(pthread_join(thread, NULL), 0);
	assert_int_equal(arg.result, JWS_E_BAD_SIGNATURE);

	free(forged);
	free(token);
	free(other);
	jwk_key_free(a);
	jwk_key_free(a_again);
	jwk_key_free(b);
	jwk_key_free(impostor);
}

/* A full table evicts: with 64 slots, 1000 other tokens later the first is
 * checked again (impostor refused), and the newest is still remembered. */
static void test_memo_evicts(void **state)
{
	struct jwk_key *a = NULL, *impostor;
	char *first = token_signed_by_a("first"), *last = NULL, sub[32];

	(void)state;
	assert_int_equal(jws_verify_memo_enable(64), 0);
	assert_int_equal(jwk_key_from_pkey(pkey_a, JWS_ALG_ES256, &a), 0);
	impostor = impostor_of(a);
	assert_int_equal(verify_with(first, a), 0);
	assert_int_equal(verify_with(first, impostor), 0);
	for (int i = 0; i < 1000; i++) {
		free(last);
		snprintf(sub, sizeof(sub), "user-%d", i);
		last = token_signed_by_a(sub);
		assert_int_equal(verify_with(last, a), 0);
	}
	assert_int_equal(verify_with(last, impostor), 0);
	assert_int_equal(verify_with(first, impostor), JWS_E_BAD_SIGNATURE);
	free(first);
	free(last);
	jwk_key_free(a);
	jwk_key_free(impostor);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_memo),
		cmocka_unit_test(test_memo_evicts),
	};
	int r;

	pkey_a = fixture_keypair(JWS_ALG_ES256);
	pkey_b = fixture_keypair(JWS_ALG_ES256);
	if (pkey_a == NULL || pkey_b == NULL)
		return 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	EVP_PKEY_free(pkey_a);
	EVP_PKEY_free(pkey_b);
	return r;
}
