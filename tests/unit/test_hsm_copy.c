/* The sessions' copies of signing keys (hsm_copy.c, issue 7): one copy per
 * key and session, as sensitive as the original, at most
 * HSM_SESSION_COPIES per session, and none left once a key is destroyed or
 * hsm_copy_invalidate has run — a destroyed key must not sign from a copy.
 * Session objects are visible to every session of this process, so a
 * session of the test's own counts them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "../../src/hsm_internal.h"
#include "fixture.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"

static struct fixture_token tok;
static const uint8_t data[] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

/* Session objects, with this label when label is not NULL. */
static int count_copies(struct hsm *hsm, const char *label)
{
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = { { CKA_TOKEN, &no, sizeof(no) }, { CKA_LABEL, (void *)label, label ? strlen(label) : 0 } };
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0;
	CK_SESSION_HANDLE s;

	assert_int_equal(hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(hsm->f->C_FindObjectsInit(s, tmpl, label ? 2 : 1), CKR_OK);
	assert_int_equal(hsm->f->C_FindObjects(s, h, 64, &n), CKR_OK);
	assert_int_equal(hsm->f->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(hsm->f->C_CloseSession(s), CKR_OK);
	return (int)n;
}

static void sign_and_verify(struct hsm_session *session, const struct hsm_key *key)
{
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);
	struct jwk_key *verify = NULL;

	assert_int_equal(hsm_sign(session, key, data, sizeof(data) - 1, sig, &sig_len), 0);
	assert_int_equal(jwk_key_from_pkey(key->public_key, key->alg, &verify), 0);
	assert_int_equal(jws_verify_signature(key->alg, verify, data, sizeof(data) - 1, sig, sig_len), 0);
	jwk_key_free(verify);
}

static void open_token(struct hsm **ret_hsm, struct hsm_session **ret_session)
{
	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, ret_hsm), 0);
	assert_int_equal(hsm_session_open(*ret_hsm, ret_session), 0);
}

static void test_one_copy_per_session_and_key(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_session *one = NULL, *two = NULL;
	struct hsm_key key;
	char label[HSM_LABEL_MAX];
	CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE;
	CK_ATTRIBUTE flags[] = { { CKA_SENSITIVE, &sensitive, sizeof(sensitive) },
				 { CKA_EXTRACTABLE, &extractable, sizeof(extractable) } };
	uint8_t value[256];
	CK_ATTRIBUTE secret = { CKA_VALUE, value, sizeof(value) };
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = { { CKA_TOKEN, &no, sizeof(no) } };
	CK_OBJECT_HANDLE copy;
	CK_ULONG n = 0;

	(void)state;
	open_token(&hsm, &one);
	assert_int_equal(hsm_session_open(hsm, &two), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	hsm_key_label(key.alg, key.kid, label);
	assert_int_equal(count_copies(hsm, label), 0);

	sign_and_verify(one, &key);
	assert_int_equal(count_copies(hsm, label), 1);
	sign_and_verify(one, &key);
	sign_and_verify(one, &key);
	assert_int_equal(count_copies(hsm, label), 1);
	sign_and_verify(two, &key);
	assert_int_equal(count_copies(hsm, label), 2);

	/* The copy keeps the custody of the original. */
	assert_int_equal(hsm->f->C_FindObjectsInit(hsm->login_session, tmpl, 1), CKR_OK);
	assert_int_equal(hsm->f->C_FindObjects(hsm->login_session, &copy, 1, &n), CKR_OK);
	assert_int_equal(hsm->f->C_FindObjectsFinal(hsm->login_session), CKR_OK);
	assert_int_equal(n, 1);
	assert_int_equal(hsm->f->C_GetAttributeValue(hsm->login_session, copy, flags, 2), CKR_OK);
	assert_true(sensitive);
	assert_false(extractable);
	assert_int_equal(hsm->f->C_GetAttributeValue(hsm->login_session, copy, &secret, 1), CKR_ATTRIBUTE_SENSITIVE);

	/* Closing a session ends its copies. */
	hsm_session_close(two);
	assert_int_equal(count_copies(hsm, label), 1);
	assert_int_equal(hsm_destroy_key(hsm, &key), 0);
	EVP_PKEY_free(key.public_key);
	hsm_session_close(one);
	hsm_close(hsm);
}

static void test_destroyed_key_has_no_copy_and_cannot_sign(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_session *worker = NULL, *other = NULL;
	struct hsm_key key;
	char label[HSM_LABEL_MAX];
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);

	(void)state;
	open_token(&hsm, &worker);
	assert_int_equal(hsm_session_open(hsm, &other), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	hsm_key_label(key.alg, key.kid, label);
	sign_and_verify(worker, &key);
	sign_and_verify(other, &key);
	assert_int_equal(count_copies(hsm, label), 2);

	/* Destroyed here: the copies of both sessions go at once, not at the
	 * sessions' next operation. */
	assert_int_equal(hsm_destroy_key(hsm, &key), 0);
	assert_int_equal(count_copies(hsm, label), 0);
	/* The stale description of the key signs nothing. */
	assert_true(hsm_sign(worker, &key, data, sizeof(data) - 1, sig, &sig_len) < 0);
	assert_int_equal(count_copies(hsm, label), 0);
	EVP_PKEY_free(key.public_key);
	hsm_session_close(other);
	hsm_session_close(worker);
	hsm_close(hsm);
}

static void test_invalidate_and_evict(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_session *session = NULL;
	struct hsm_key keys[HSM_SESSION_COPIES + 2];
	const size_t count = sizeof(keys) / sizeof(keys[0]);

	(void)state;
	open_token(&hsm, &session);
	for (size_t i = 0; i < count; i++)
		assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES256, 0, NULL, NULL, &keys[i]), 0);
	assert_int_equal(count_copies(hsm, NULL), 0);
	for (size_t i = 0; i < count; i++) {
		sign_and_verify(session, &keys[i]);
		assert_int_equal(count_copies(hsm, NULL), i < HSM_SESSION_COPIES ? (int)i + 1 : HSM_SESSION_COPIES);
	}
	/* The least recently used went: keys[0] and keys[1]; keys[2] is kept
	 * after a use, keys[3] goes for keys[0]. */
	sign_and_verify(session, &keys[2]);
	sign_and_verify(session, &keys[0]);
	assert_int_equal(count_copies(hsm, NULL), HSM_SESSION_COPIES);
	{
		char label[HSM_LABEL_MAX];

		hsm_key_label(keys[2].alg, keys[2].kid, label);
		assert_int_equal(count_copies(hsm, label), 1);
		hsm_key_label(keys[3].alg, keys[3].kid, label);
		assert_int_equal(count_copies(hsm, label), 0);
	}

	hsm_copy_invalidate(hsm);
	assert_int_equal(count_copies(hsm, NULL), 0);
	/* Copied again on the next signature, and still right. */
	sign_and_verify(session, &keys[5]);
	assert_int_equal(count_copies(hsm, NULL), 1);

	for (size_t i = 0; i < count; i++) {
		assert_int_equal(hsm_destroy_key(hsm, &keys[i]), 0);
		EVP_PKEY_free(keys[i].public_key);
	}
	assert_int_equal(count_copies(hsm, NULL), 0);
	hsm_session_close(session);
	hsm_close(hsm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_copy_per_session_and_key),
		cmocka_unit_test(test_destroyed_key_has_no_copy_and_cannot_sign),
		cmocka_unit_test(test_invalidate_and_evict),
	};
	int r = fixture_token_create(&tok);

	if (r != 0)
		return r == 77 ? 77 : 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_token_destroy(&tok);
	return r;
}
