/* hsm: against a fresh SoftHSM token — login, token lookup, key generation
 * for every algorithm, discovery, signing checked by the verifier, and
 * destruction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <p11-kit/p11-kit.h>

#include "fixture.h"
#include "../../src/hsm_internal.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/log.h"

static struct fixture_token tok;

/* hsm_meta_fn writing ctx, a string, as the new key's record. */
static int fixed_meta(void *ctx, enum jws_alg alg, uint8_t *buf, size_t size, size_t *ret_len)
{
	size_t len = strlen(ctx);

	if (len > size)
		return -ENOSPC;
	memcpy(buf, ctx, len);
	*ret_len = len;
	return 0;
}

/* A second Cryptoki client in this process, for what the hsm API does not
 * offer on purpose: foreign keys and keys hsmjwt must refuse.  It shares
 * the module (and its state) with struct hsm. */
struct raw {
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	int initialized;   /* this client's C_Initialize succeeded */
};

/* login 0: a session of someone without the PIN. */
static void raw_open_as(struct raw *raw, int login)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_RV rv;

	memset(raw, 0, sizeof(*raw));
	raw->f = p11_kit_module_load(fixture_module(), P11_KIT_MODULE_UNMANAGED | P11_KIT_MODULE_CRITICAL);
	assert_non_null(raw->f);
	rv = raw->f->C_Initialize(NULL);
	assert_true(rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED);
	raw->initialized = rv == CKR_OK;
	assert_int_equal(raw->f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO info;
		assert_int_equal(raw->f->C_GetTokenInfo(slots[i], &info), CKR_OK);
		if (memcmp(info.label, FIXTURE_TOKEN_LABEL, strlen(FIXTURE_TOKEN_LABEL)) == 0 &&
		    info.label[strlen(FIXTURE_TOKEN_LABEL)] == ' ') {
			raw->slot = slots[i];
			break;
		}
		assert_true(i + 1 < n);
	}
	assert_int_equal(raw->f->C_OpenSession(raw->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &raw->s),
			 CKR_OK);
	if (!login)
		return;
	rv = raw->f->C_Login(raw->s, CKU_USER, (CK_UTF8CHAR *)tok.pin, tok.pin_len);
	assert_true(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
}

static void raw_open(struct raw *raw)
{
	raw_open_as(raw, 1);
}

/* Teardown passes check = 0: after a failed test the module may be in any
 * state, and the cleanup must still run. */
static void raw_release(struct raw *raw, int check)
{
	CK_RV rv;

	raw->f->C_CloseSession(raw->s);
	rv = raw->initialized ? raw->f->C_Finalize(NULL) : CKR_OK;
	p11_kit_module_release(raw->f);
	raw->f = NULL;
	if (check)
		assert_int_equal(rv, CKR_OK);
}

static void raw_close(struct raw *raw)
{
	raw_release(raw, 1);
}

/* A P-256 private key that is not hsmjwt's: its own label, imported (the
 * cheapest private key object there is). */
static void raw_create_foreign(struct raw *raw, int i)
{
	static const uint8_t p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE type = CKK_EC;
	CK_BBOOL yes = CK_TRUE;
	uint8_t d[32] = { 0x42 };
	char label[32];
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SIGN, &yes, sizeof(yes) }, { CKA_EC_PARAMS, (void *)p256, sizeof(p256) },
		{ CKA_VALUE, d, sizeof(d) }, { CKA_LABEL, label, 0 },
	};
	CK_OBJECT_HANDLE h;

	memcpy(d + 28, &i, sizeof(i));
	tmpl[7].ulValueLen = (CK_ULONG)snprintf(label, sizeof(label), "foreign-%d", i);
	assert_int_equal(raw->f->C_CreateObject(raw->s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);
}

static const uint8_t p256_oid[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t p384_oid[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };

/* An EC key pair generated in the token with the given custody and use. */
static void raw_generate_ec(struct raw *raw, const uint8_t *curve, size_t curve_len, CK_BBOOL extractable,
			    CK_BBOOL sign, CK_OBJECT_HANDLE *ret_pub, CK_OBJECT_HANDLE *ret_priv)
{
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_EC_PARAMS, (void *)curve, curve_len } };
	CK_ATTRIBUTE priv[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) }, { CKA_EXTRACTABLE, &extractable, sizeof(extractable) },
		{ CKA_SIGN, &sign, sizeof(sign) },
	};

	assert_int_equal(raw->f->C_GenerateKeyPair(raw->s, &mech, pub, 2, priv, 5, ret_pub, ret_priv), CKR_OK);
}

static void raw_generate_rsa(struct raw *raw, CK_OBJECT_HANDLE *ret_pub, CK_OBJECT_HANDLE *ret_priv)
{
	CK_MECHANISM mech = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG bits = 1024;  /* the type is what matters, and 1024 is quick */
	CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_MODULUS_BITS, &bits, sizeof(bits) } };
	CK_ATTRIBUTE priv[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) }, { CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
	};

	assert_int_equal(raw->f->C_GenerateKeyPair(raw->s, &mech, pub, 2, priv, 5, ret_pub, ret_priv), CKR_OK);
}

/* A P-256 key pair made outside and imported: sensitive and unextractable
 * from now on, but never CKA_ALWAYS_SENSITIVE nor CKA_NEVER_EXTRACTABLE. */
static void raw_import_p256(struct raw *raw, CK_OBJECT_HANDLE *ret_pub, CK_OBJECT_HANDLE *ret_priv)
{
	EVP_PKEY *pkey = fixture_keypair(JWS_ALG_ES256);
	CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
	CK_KEY_TYPE type = CKK_EC;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	BIGNUM *d = NULL;
	uint8_t value[32], point[2 + 65];
	size_t point_len = 0;

	assert_non_null(pkey);
	assert_int_equal(EVP_PKEY_get_bn_param(pkey, "priv", &d), 1);
	assert_int_equal(BN_bn2binpad(d, value, sizeof(value)), sizeof(value));
	/* CKA_EC_POINT is the DER OCTET STRING around the uncompressed point. */
	assert_int_equal(EVP_PKEY_get_octet_string_param(pkey, "pub", point + 2, 65, &point_len), 1);
	assert_int_equal(point_len, 65);
	point[0] = 0x04;
	point[1] = 65;
	CK_ATTRIBUTE pub[] = {
		{ CKA_CLASS, &pub_class, sizeof(pub_class) }, { CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid) }, { CKA_EC_POINT, point, sizeof(point) },
	};
	CK_ATTRIBUTE priv[] = {
		{ CKA_CLASS, &priv_class, sizeof(priv_class) }, { CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) }, { CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid) }, { CKA_VALUE, value, sizeof(value) },
	};
	assert_int_equal(raw->f->C_CreateObject(raw->s, pub, 6, ret_pub), CKR_OK);
	assert_int_equal(raw->f->C_CreateObject(raw->s, priv, 9, ret_priv), CKR_OK);
	OPENSSL_cleanse(value, sizeof(value));
	BN_clear_free(d);
	EVP_PKEY_free(pkey);
}

/* Names the objects as hsmjwt would the key pair whose public half is pub
 * (a P-256 key): label hsmjwt:ES256:<thumbprint>, CKA_ID its bytes.  The
 * label is returned in ret_label (HSM_LABEL_MAX bytes). */
static void raw_name_as_hsmjwt(struct raw *raw, CK_OBJECT_HANDLE pub, const CK_OBJECT_HANDLE *objs, size_t n,
			       char *ret_label)
{
	uint8_t der[80], id[33];
	CK_ATTRIBUTE point = { CKA_EC_POINT, der, sizeof(der) };
	char kid[JWK_THUMBPRINT_LEN + 1];
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	EVP_PKEY *pkey = NULL;
	size_t id_len = 0;

	assert_int_equal(raw->f->C_GetAttributeValue(raw->s, pub, &point, 1), CKR_OK);
	assert_int_equal(point.ulValueLen, 67);
	params[0] = OSSL_PARAM_construct_utf8_string("group", "prime256v1", 0);
	params[1] = OSSL_PARAM_construct_octet_string("pub", der + 2, 65);
	params[2] = OSSL_PARAM_construct_end();
	assert_non_null(ctx);
	assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
	assert_int_equal(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params), 1);
	assert_int_equal(jwk_thumbprint(pkey, kid), 0);
	assert_int_equal(b64url_decode(kid, JWK_THUMBPRINT_LEN, id, &id_len), 0);
	snprintf(ret_label, 128, HSM_LABEL_PREFIX "ES256:%s", kid);
	CK_ATTRIBUTE name[] = { { CKA_LABEL, ret_label, strlen(ret_label) }, { CKA_ID, id, id_len } };
	for (size_t i = 0; i < n; i++)
		assert_int_equal(raw->f->C_SetAttributeValue(raw->s, objs[i], name, 2), CKR_OK);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(ctx);
}

/* What a test on its own token has open, so that its teardown closes it
 * even when an assertion ends the test early. */
static struct {
	struct hsm *hsm;
	struct hsm_session *session;
	struct raw raw;
} own;

/* A fresh token of its own for a test that fills it, in memory when the
 * machine has /dev/shm (SoftHSM writes a file per object and rereads the
 * token on every call: on a disk, a thousand objects take tens of seconds).
 * The shared token is restored afterwards; the module must be finalised
 * around both. */
static struct fixture_token own_tok, shared_tok;

static int own_token_setup(void **state)
{
	const char *src = getenv("TEST_SOURCE_DIR");
	char cmd[1024], path[512];
	FILE *f;

	shared_tok = tok;
	memset(&own_tok, 0, sizeof(own_tok));
	snprintf(own_tok.dir, sizeof(own_tok.dir), "%s/hsmjwt-unit-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	if (mkdtemp(own_tok.dir) == NULL)
		return -1;
	snprintf(cmd, sizeof(cmd), "%s/hsm/softhsm-setup.sh '%s' %s >/dev/null 2>&1", src ? src : "..",
		 own_tok.dir, FIXTURE_TOKEN_LABEL);
	if (system(cmd) != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/softhsm2.conf", own_tok.dir);
	setenv("SOFTHSM2_CONF", path, 1);
	snprintf(path, sizeof(path), "%s/pin", own_tok.dir);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	if (fgets(own_tok.pin, sizeof(own_tok.pin), f) == NULL) {
		fclose(f);
		return -1;
	}
	fclose(f);
	own_tok.pin_len = strcspn(own_tok.pin, "\n");
	own_tok.pin[own_tok.pin_len] = '\0';
	tok = own_tok;
	return 0;
}

static void wrap_remove(struct hsm *hsm);

static int own_token_teardown(void **state)
{
	char conf[512];

	wrap_remove(own.hsm);
	hsm_session_close(own.session);
	hsm_close(own.hsm);
	if (own.raw.f != NULL)
		raw_release(&own.raw, 0);
	memset(&own, 0, sizeof(own));
	fixture_token_destroy(&own_tok);
	tok = shared_tok;
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tok.dir);
	setenv("SOFTHSM2_CONF", conf, 1);
	return 0;
}

static const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_ES384, JWS_ALG_RS256, JWS_ALG_PS256, JWS_ALG_EDDSA };
static const size_t sig_sizes[] = { 64, 96, 256, 256, 64 };

static int count_lines_with(const char *text, const char *needle);

#define WRONG_PIN "Wrong-Pin-7391"

static int open_with_wrong_pin(void *arg)
{
	return hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, WRONG_PIN, strlen(WRONG_PIN), arg);
}

/* A PIN the token refuses is HSM_E_PIN (hsmjwtd exits EX_CONFIG on it, and
 * its unit does not restart it): one error line naming the CKR and what to
 * do, never the PIN. */
static void test_wrong_pin_is_refused(void **state)
{
	struct hsm *hsm = NULL;
	const char *log;
	int r;

	log = fixture_capture_stderr(open_with_wrong_pin, &hsm, &r);
	assert_int_equal(r, HSM_E_PIN);
	assert_null(hsm);
	assert_int_equal(count_lines_with(log, "level=error"), 1);
	assert_int_equal(count_lines_with(log, "the token refused the PIN; it is not tried again"), 1);
	assert_non_null(strstr(log, "rv=CKR_PIN_INCORRECT"));
	assert_non_null(strstr(log, "fix the PIN source"));
	assert_null(strstr(log, WRONG_PIN));
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
		assert_int_equal(hsm_generate_key(hsm, algs[i], 2048, NULL, NULL, &generated[i]), 0);
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
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES256, 2048, NULL, NULL, &key), 0);
	assert_true(hsm_sign(session, &key, (const uint8_t *)"x", 1, sig, &sig_len) < 0);
	assert_int_equal(sig_len, sizeof(sig));
	/* The session is not left with a signing operation in progress. */
	uint8_t big[64];
	sig_len = sizeof(big);
	assert_int_equal(hsm_sign(session, &key, (const uint8_t *)"x", 1, big, &sig_len), 0);
	assert_int_equal(sig_len, 64);
	assert_int_equal(hsm_destroy_key(hsm, &key), 0);
	EVP_PKEY_free(key.public_key);
	hsm_session_close(session);
	hsm_close(hsm);
}

static void own_open(void)
{
	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &own.hsm), 0);
	assert_int_equal(hsm_session_open(own.hsm, &own.session), 0);
}

static void own_close(void)
{
	hsm_session_close(own.session);
	own.session = NULL;
	hsm_close(own.hsm);
	own.hsm = NULL;
}

static int own_find_keys(void *arg)
{
	struct hsm_key *found = NULL;
	size_t n = 0;
	int r = hsm_find_keys(own.session, &found, &n);
	if (r == 0)
		hsm_keys_free(found, n);
	return r;
}

static int count_lines_with(const char *text, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* A public record, as anyone with a session and without the PIN can
 * make one: "retired" since long ago, under label. */
static int forge_public_record(const char *label)
{
	static const char forged[] = "hsmjwt-keystate 1 state=retired alg=ES256 created=1 activate_at=1 retired_at=1";
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &no, sizeof(no) },
		{ CKA_APPLICATION, "hsmjwt", 6 }, { CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_VALUE, (void *)forged, sizeof(forged) - 1 },
	};
	CK_SESSION_INFO info;
	CK_OBJECT_HANDLE h;
	struct raw raw;
	int r = 0;

	raw_open_as(&raw, 0);
	if (raw.f->C_GetSessionInfo(raw.s, &info) != CKR_OK || info.state != CKS_RW_PUBLIC_SESSION)
		r = 6;
	else if (raw.f->C_CreateObject(raw.s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h) != CKR_OK)
		r = 7;
	raw_close(&raw);
	return r;
}

/* A public half under the label (and so the CKA_ID) of an hsmjwt key, as
 * anyone without the PIN can make one: another P-256 public key, placed
 * there to stand in for the genuine half. */
static int forge_public_half(const char *label)
{
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid) } };
	CK_ATTRIBUTE priv[] = { { CKA_TOKEN, &no, sizeof(no) }, { CKA_PRIVATE, &no, sizeof(no) } };
	const char *kid = strrchr(label, ':');
	CK_OBJECT_HANDLE pub_h, priv_h;
	uint8_t id[33];
	size_t id_len = 0;
	struct raw raw;
	int r = 0;

	if (kid == NULL || b64url_decode(kid + 1, strlen(kid + 1), id, &id_len) < 0)
		return 9;
	CK_ATTRIBUTE name[] = { { CKA_LABEL, (void *)label, strlen(label) }, { CKA_ID, id, id_len } };
	raw_open_as(&raw, 0);
	if (raw.f->C_GenerateKeyPair(raw.s, &mech, pub, 2, priv, 2, &pub_h, &priv_h) != CKR_OK)
		r = 7;
	else if (raw.f->C_SetAttributeValue(raw.s, pub_h, name, 2) != CKR_OK)
		r = 8;
	raw_close(&raw);
	return r;
}

/* A public key pair under an hsmjwt label, generated in the token by
 * someone without the PIN: custody attributes as hsmjwt's own, but the
 * private key is public (CKA_PRIVATE false), so its maker signs with it
 * without logging in — shown by signing once. */
static int forge_public_key(void)
{
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 }, ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid) } };
	CK_ATTRIBUTE priv[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &no, sizeof(no) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) }, { CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
	};
	CK_OBJECT_HANDLE pub_h, priv_h;
	uint8_t digest[32] = { 1 }, sig[64];
	CK_ULONG sig_len = sizeof(sig);
	char label[128];
	struct raw raw;
	int r = 0;

	raw_open_as(&raw, 0);
	if (raw.f->C_GenerateKeyPair(raw.s, &mech, pub, 2, priv, 5, &pub_h, &priv_h) != CKR_OK)
		r = 7;
	else if (raw.f->C_SignInit(raw.s, &ecdsa, priv_h) != CKR_OK ||
		 raw.f->C_Sign(raw.s, digest, sizeof(digest), sig, &sig_len) != CKR_OK)
		r = 8;
	if (r == 0)
		raw_name_as_hsmjwt(&raw, pub_h, (CK_OBJECT_HANDLE[]){ pub_h, priv_h }, 2, label);
	raw_close(&raw);
	return r;
}

/* A public HS256 secret under an hsmjwt label, by someone without the PIN. */
static int forge_public_secret(void)
{
	CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE type = CKK_GENERIC_SECRET;
	CK_ULONG len = 32;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	char label[] = HSM_LABEL_PREFIX "HS256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_VALUE_LEN, &len, sizeof(len) }, { CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &no, sizeof(no) }, { CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) }, { CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_VERIFY, &yes, sizeof(yes) }, { CKA_LABEL, label, sizeof(label) - 1 },
	};
	CK_OBJECT_HANDLE h;
	struct raw raw;
	int r = 0;

	raw_open_as(&raw, 0);
	if (raw.f->C_GenerateKey(raw.s, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h) != CKR_OK)
		r = 7;
	raw_close(&raw);
	return r;
}

/* The child's side of make_in_child: this program run again with
 * `--create-foreign N PINFILE', `--generate-hsmjwt N PINFILE',
 * `--forge-record LABEL PINFILE' or `--forge-keys - PINFILE'. */
static int child_main(const char *what, const char *arg, const char *pin_file)
{
	FILE *f = fopen(pin_file, "r");
	struct hsm *hsm = NULL;
	struct hsm_key key;
	struct raw raw;
	int count = atoi(arg);

	if (f == NULL || fgets(tok.pin, sizeof(tok.pin), f) == NULL)
		return 3;
	fclose(f);
	tok.pin_len = strcspn(tok.pin, "\n");
	tok.pin[tok.pin_len] = '\0';
	log_set_level(LOG_LEVEL_WARN);
	if (strcmp(what, "--forge-record") == 0)
		return forge_public_record(arg);
	if (strcmp(what, "--forge-public-half") == 0)
		return forge_public_half(arg);
	if (strcmp(what, "--forge-keys") == 0) {
		int r = forge_public_key();
		return r != 0 ? r : forge_public_secret();
	}
	if (strcmp(what, "--create-foreign") == 0) {
		raw_open(&raw);
		for (int i = 0; i < count; i++)
			raw_create_foreign(&raw, i);
		raw_close(&raw);
		return 0;
	}
	if (strcmp(what, "--generate-hsmjwt") == 0) {
		if (hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm) < 0)
			return 4;
		for (int i = 0; i < count; i++) {
			if (hsm_generate_key(hsm, JWS_ALG_ES256, 2048, NULL, NULL, &key) < 0)
				return 5;
			EVP_PKEY_free(key.public_key);
		}
		hsm_close(hsm);
		return 0;
	}
	return 2;
}

/* Prepares the token from a child process, this program again: what
 * needs another process (a session without the login, which is per
 * process), and filling the token with many objects — SoftHSM rescans the
 * whole token for every object it creates, and under the suite's ASan
 * options (fast_unwind_on_malloc=0) that costs seconds per hundred objects
 * in this process; the child unwinds fast and skips leak checking, as it
 * only prepares the token. */
static void run_child(const char *what, const char *arg)
{
	const char *asan = getenv("ASAN_OPTIONS");
	char pin_file[512], options[1024];
	int status;
	pid_t pid;

	snprintf(pin_file, sizeof(pin_file), "%s/pin", tok.dir);
	snprintf(options, sizeof(options), "%s%sfast_unwind_on_malloc=1:detect_leaks=0", asan ? asan : "",
		 asan && *asan ? ":" : "");
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setenv("ASAN_OPTIONS", options, 1);
		execl("/proc/self/exe", "test_hsm", what, arg, pin_file, (char *)NULL);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void make_in_child(const char *what, int count)
{
	char n[16];

	snprintf(n, sizeof(n), "%d", count);
	run_child(what, n);
}

/* More private keys than one C_FindObjects call of 256 handles returns,
 * the hsmjwt ones after all the others: every hsmjwt key is found. */
static void test_finds_keys_among_many_foreign_keys(void **state)
{
	enum { FOREIGN = 300, OURS = 3 };
	struct hsm_key generated[OURS], *found = NULL;
	size_t n = 0;

	make_in_child("--create-foreign", FOREIGN);
	own_open();
	/* SoftHSM lists objects in the order of their handles, which it hands
	 * out as it first meets objects: a first search numbers the foreign
	 * keys, so the keys generated after it come last. */
	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, 0);
	hsm_keys_free(found, n);
	for (int i = 0; i < OURS; i++)
		assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, NULL, NULL, &generated[i]), 0);
	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, OURS);
	for (int i = 0; i < OURS; i++) {
		assert_true(find_kid(found, n, generated[i].kid) >= 0);
		EVP_PKEY_free(generated[i].public_key);
	}
	hsm_keys_free(found, n);
	own_close();
}

/* Past HSM_MAX_KEYS hsmjwt keys the set is refused loudly, not cut short. */
static void test_too_many_hsmjwt_keys_is_an_error(void **state)
{
	const char *log;
	int r;

	make_in_child("--generate-hsmjwt", HSM_MAX_KEYS + 2);
	own_open();
	log = fixture_capture_stderr(own_find_keys, NULL, &r);
	assert_int_equal(r, -E2BIG);
	assert_int_equal(count_lines_with(log, "too many hsmjwt keys in the token"), 1);
	assert_non_null(strstr(log, "keys=258 limit=256"));
	own_close();
}

/* Past HSM_MAX_KEY_OBJECTS private keys (foreign or not) likewise. */
static void test_too_many_private_keys_is_an_error(void **state)
{
	const char *log;
	int r;

	make_in_child("--create-foreign", HSM_MAX_KEY_OBJECTS + 1);
	own_open();
	log = fixture_capture_stderr(own_find_keys, NULL, &r);
	assert_int_equal(r, -E2BIG);
	assert_int_equal(count_lines_with(log, "more private keys in the token than hsmjwt examines"), 1);
	assert_non_null(strstr(log, "limit=1024"));
	own_close();
}

static struct hsm_key *checked_keys;
static size_t checked_count;

static int own_find_keys_kept(void *arg)
{
	return hsm_find_keys(own.session, &checked_keys, &checked_count);
}

static void assert_logged(const char *log, const char *label, const char *rest)
{
	char want[256];

	snprintf(want, sizeof(want), "label=\"%s\" %s", label, rest);
	if (strstr(log, want) == NULL)
		fail_msg("no `%s' in the log:\n%s", want, log);
}

/* Only keys made in the token, never extractable, able to sign, of the
 * type and curve their label names, are loaded: a correct label and
 * thumbprint are not enough. */
static void test_refuses_keys_without_token_custody(void **state)
{
	char imported[128], extractable[128], cannot_sign[128], wrong_curve[128], wrong_type[128];
	CK_OBJECT_HANDLE pub, priv, other_pub, other_priv;
	struct hsm_key proper;
	const char *log;
	int r;

	raw_open(&own.raw);
	raw_import_p256(&own.raw, &pub, &priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, priv }, 2, imported);
	raw_generate_ec(&own.raw, p256_oid, sizeof(p256_oid), CK_TRUE, CK_TRUE, &pub, &priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, priv }, 2, extractable);
	raw_generate_ec(&own.raw, p256_oid, sizeof(p256_oid), CK_FALSE, CK_FALSE, &pub, &priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, priv }, 2, cannot_sign);
	/* A P-384 private key, then an RSA one, behind a P-256 public half
	 * whose own private half is gone. */
	raw_generate_ec(&own.raw, p256_oid, sizeof(p256_oid), CK_FALSE, CK_TRUE, &pub, &priv);
	raw_generate_ec(&own.raw, p384_oid, sizeof(p384_oid), CK_FALSE, CK_TRUE, &other_pub, &other_priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, other_priv }, 2, wrong_curve);
	assert_int_equal(own.raw.f->C_DestroyObject(own.raw.s, priv), CKR_OK);
	assert_int_equal(own.raw.f->C_DestroyObject(own.raw.s, other_pub), CKR_OK);
	raw_generate_ec(&own.raw, p256_oid, sizeof(p256_oid), CK_FALSE, CK_TRUE, &pub, &priv);
	raw_generate_rsa(&own.raw, &other_pub, &other_priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, other_priv }, 2, wrong_type);
	assert_int_equal(own.raw.f->C_DestroyObject(own.raw.s, priv), CKR_OK);
	assert_int_equal(own.raw.f->C_DestroyObject(own.raw.s, other_pub), CKR_OK);
	raw_close(&own.raw);

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, NULL, NULL, &proper), 0);
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(checked_count, 1);
	assert_string_equal(checked_keys[0].kid, proper.kid);
	hsm_keys_free(checked_keys, checked_count);
	EVP_PKEY_free(proper.public_key);
	/* Each refusal names the key and the reason. */
	assert_logged(log, imported, "attribute=CKA_ALWAYS_SENSITIVE value=false");
	assert_logged(log, extractable, "attribute=CKA_EXTRACTABLE value=true");
	assert_logged(log, cannot_sign, "attribute=CKA_SIGN value=false");
	assert_logged(log, wrong_curve, "attribute=CKA_EC_PARAMS");
	assert_logged(log, wrong_type, "attribute=CKA_KEY_TYPE");
	own_close();
}

/* Every '\n' in a captured log ends a line: the next starts "ts=". */
static void assert_no_raw_newline_in_a_line(const char *log)
{
	for (const char *p = strchr(log, '\n'); p; p = strchr(p + 1, '\n'))
		if (p[1] != '\0' && strncmp(p + 1, "ts=", 3) != 0)
			fail_msg("a log line holds a raw newline:\n%s", log);
}

/* A kid is base64url: "hsmjwt:ES256:" and 43 bytes of anything else is not
 * an hsmjwt label. */
static void test_parse_label_takes_base64url_kids_only(void **state)
{
	const char kid[] = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
	char label[128], got[JWK_THUMBPRINT_LEN + 1] = "untouched";
	enum jws_alg alg = JWS_ALG_INVALID;

	assert_int_equal(strlen(kid), JWK_THUMBPRINT_LEN);
	snprintf(label, sizeof(label), HSM_LABEL_PREFIX "ES256:%s", kid);
	assert_int_equal(hsm_parse_label(label, &alg, got), 0);
	assert_int_equal(alg, JWS_ALG_ES256);
	assert_string_equal(got, kid);

	alg = JWS_ALG_INVALID;
	strcpy(got, "untouched");
	for (const char *bad = "\n\r \"=+/.\x7f\xc3"; *bad; bad++) {
		snprintf(label, sizeof(label), HSM_LABEL_PREFIX "ES256:%s", kid);
		label[strlen(HSM_LABEL_PREFIX "ES256:") + 20] = *bad;
		assert_int_equal(strlen(label), strlen(HSM_LABEL_PREFIX "ES256:") + JWK_THUMBPRINT_LEN);
		assert_int_equal(hsm_parse_label(label, &alg, got), -EINVAL);
	}
	/* Length and algorithm still count. */
	snprintf(label, sizeof(label), HSM_LABEL_PREFIX "ES256:%sA", kid);
	assert_int_equal(hsm_parse_label(label, &alg, got), -EINVAL);
	snprintf(label, sizeof(label), HSM_LABEL_PREFIX "HS256:%s", kid);
	assert_int_equal(hsm_parse_label(label, &alg, got), 0);
	assert_int_equal(alg, JWS_ALG_HS256);
	snprintf(label, sizeof(label), HSM_LABEL_PREFIX "XX256:%s", kid);
	alg = JWS_ALG_INVALID;
	strcpy(got, "untouched");
	assert_int_equal(hsm_parse_label(label, &alg, got), -EINVAL);
	assert_int_equal(alg, JWS_ALG_INVALID);
	assert_string_equal(got, "untouched");
}

/* A key whose label would be logged (it fails the custody check) but whose
 * kid part holds a newline is not taken for hsmjwt's, and the log gets no
 * forged line. */
static void test_label_with_newline_is_not_logged_raw(void **state)
{
	char label[128];
	CK_OBJECT_HANDLE pub, priv;
	const char *log;
	int r;

	raw_open(&own.raw);
	raw_generate_ec(&own.raw, p256_oid, sizeof(p256_oid), CK_TRUE, CK_TRUE, &pub, &priv);
	raw_name_as_hsmjwt(&own.raw, pub, (CK_OBJECT_HANDLE[]){ pub, priv }, 2, label);
	memcpy(label + strlen(HSM_LABEL_PREFIX "ES256:") + 10, "\nts=x", 5);
	assert_int_equal(strlen(label), strlen(HSM_LABEL_PREFIX "ES256:") + JWK_THUMBPRINT_LEN);
	CK_ATTRIBUTE name = { CKA_LABEL, label, strlen(label) };
	assert_int_equal(own.raw.f->C_SetAttributeValue(own.raw.s, priv, &name, 1), CKR_OK);
	raw_close(&own.raw);

	own_open();
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(checked_count, 0);
	hsm_keys_free(checked_keys, checked_count);
	assert_no_raw_newline_in_a_line(log);
	assert_null(strstr(log, "CKA_EXTRACTABLE"));
	own_close();
}

/* The curves hsm_find_keys accepts: P-256, P-384, and Ed25519 as a
 * PrintableString (PKCS#11 3.0), the RFC 8410 OID or the OpenSC/GnuPG OID;
 * each only for its own algorithm. */
static void test_ec_params_match(void **state)
{
	static const uint8_t printable[] = { 0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9' };
	static const uint8_t rfc8410[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
	static const uint8_t gnu[] = { 0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01 };
	/* Ed448 (RFC 8410) and curve25519 for ECDH (GnuPG): neighbours, not ours. */
	static const uint8_t ed448[] = { 0x06, 0x03, 0x2b, 0x65, 0x71 };
	static const uint8_t cv25519[] = { 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x97, 0x55, 0x01, 0x05, 0x01 };

	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, printable, sizeof(printable)), 1);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, rfc8410, sizeof(rfc8410)), 1);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, gnu, sizeof(gnu)), 1);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, ed448, sizeof(ed448)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, cv25519, sizeof(cv25519)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, gnu, sizeof(gnu) - 1), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_EDDSA, p256_oid, sizeof(p256_oid)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_ES256, p256_oid, sizeof(p256_oid)), 1);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_ES256, p384_oid, sizeof(p384_oid)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_ES384, p384_oid, sizeof(p384_oid)), 1);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_ES384, p256_oid, sizeof(p256_oid)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_ES256, gnu, sizeof(gnu)), 0);
	assert_int_equal(hsm_ec_params_match(JWS_ALG_RS256, p256_oid, sizeof(p256_oid)), 0);
}

static int generate_kept(void *arg)
{
	struct hsm_key *key = arg;
	return hsm_generate_key(own.hsm, key->alg, 2048, NULL, NULL, key);
}

/* hsm_generate_key runs the custody check hsm_find_keys runs, so what it
 * makes is what the next start loads: for every algorithm, generation
 * passes the check (nothing refused or destroyed) and the search then finds
 * the key without skipping anything. */
static void test_generated_keys_pass_the_custody_check(void **state)
{
	struct hsm_key generated[5];
	const char *log;
	int r;

	own_open();
	for (size_t i = 0; i < 5; i++) {
		memset(&generated[i], 0, sizeof(generated[i]));
		generated[i].alg = algs[i];
		log = fixture_capture_stderr(generate_kept, &generated[i], &r);
		assert_int_equal(r, 0);
		assert_non_null(strstr(log, "key generated in token"));
		assert_null(strstr(log, "destroyed"));
		assert_null(strstr(log, "level=error"));
	}
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(checked_count, 5);
	assert_null(strstr(log, "skipped"));
	for (size_t i = 0; i < 5; i++) {
		int at = find_kid(checked_keys, checked_count, generated[i].kid);
		assert_true(at >= 0);
		assert_int_equal(checked_keys[at].alg, algs[i]);
		EVP_PKEY_free(generated[i].public_key);
	}
	hsm_keys_free(checked_keys, checked_count);
	own_close();
}

/* Only the two answers that mean "this object has no such attribute, or
 * will not show it" are a verdict on a key; every other failure (the token
 * busy, out of memory, gone) must not make hsm_find_keys skip a good key and
 * keys_load generate another. */
static void test_rv_verdict_skips_only_on_definite_answers(void **state)
{
	static const CK_RV transient[] = {
		CKR_FUNCTION_FAILED, CKR_OPERATION_ACTIVE, CKR_BUFFER_TOO_SMALL, CKR_ARGUMENTS_BAD,
		CKR_CANT_LOCK, CKR_FUNCTION_CANCELED, CKR_SESSION_COUNT,
	};
	static const CK_RV device[] = {
		CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,
		CKR_GENERAL_ERROR, CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN,
	};

	assert_int_equal(hsm_key_rv_verdict(CKR_OK), 0);
	assert_int_equal(hsm_key_rv_verdict(CKR_ATTRIBUTE_TYPE_INVALID), -ENOENT);
	assert_int_equal(hsm_key_rv_verdict(CKR_ATTRIBUTE_SENSITIVE), -ENOENT);
	assert_int_equal(hsm_key_rv_verdict(CKR_HOST_MEMORY), -ENOMEM);
	/* An object another process destroyed while discovery read it. */
	assert_int_equal(hsm_key_rv_verdict(CKR_OBJECT_HANDLE_INVALID), -EAGAIN);
	for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
		assert_int_equal(hsm_key_rv_verdict(transient[i]), HSM_E_FAILED);
	for (size_t i = 0; i < sizeof(device) / sizeof(device[0]); i++)
		assert_int_equal(hsm_key_rv_verdict(device[i]), HSM_E_DEVICE);
}

/* The module initialised and logged in by another user in the process
 * stays initialised and logged in after hsm_close. */
static void test_close_leaves_a_module_initialised_by_another(void **state)
{
	CK_SESSION_INFO info;

	raw_open(&own.raw);
	assert_true(own.raw.initialized);
	own_open();
	own_close();
	assert_int_equal(own.raw.f->C_GetSessionInfo(own.raw.s, &info), CKR_OK);
	assert_int_equal(info.state, CKS_RW_USER_FUNCTIONS);
	raw_close(&own.raw);
}

static void *fail_malloc(size_t size)
{
	return NULL;
}

/* Out of memory while checking a key's thumbprint (jwk_thumbprint builds
 * the JWK with jansson) fails the search: it must not pass for "label does
 * not match" and drop a good key. */
static void test_out_of_memory_is_not_a_bad_label(void **state)
{
	struct hsm_key key, *found = NULL;
	json_malloc_t saved_malloc;
	json_free_t saved_free;
	const char *log;
	size_t n = 0;
	int r;

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, NULL, NULL, &key), 0);
	EVP_PKEY_free(key.public_key);
	json_get_alloc_funcs(&saved_malloc, &saved_free);
	json_set_alloc_funcs(fail_malloc, saved_free);
	log = fixture_capture_stderr(own_find_keys, NULL, &r);
	json_set_alloc_funcs(saved_malloc, saved_free);
	assert_int_equal(r, -ENOMEM);
	assert_null(strstr(log, "does not match"));
	/* With memory the same key is found. */
	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, 1);
	hsm_keys_free(found, n);
	own_close();
}

static int check_session_5_times(void *arg)
{
	int worked = 0;

	for (int i = 0; i < 5; i++)
		worked += hsm_session_check(own.session) == 0;
	return worked;
}

/* The PIN source hsm_recover logs in with: ctx is the token's fixture. */
static int pin_reads, pin_releases;

static int test_pin_read(void *ctx, char **ret_pin, size_t *ret_len)
{
	const struct fixture_token *t = ctx;
	char *pin = strdup(t->pin);

	if (pin == NULL)
		return -ENOMEM;
	pin_reads++;
	*ret_pin = pin;
	*ret_len = t->pin_len;
	return 0;
}

static void test_pin_release(void *ctx, char *pin, size_t len)
{
	OPENSSL_cleanse(pin, len);
	free(pin);
	pin_releases++;
}

static int recover_then_check_5_times(void *arg)
{
	int r = hsm_recover(own.hsm, 1000);
	return r < 0 ? r : check_session_5_times(NULL);
}

/* /health checks the session on every request: a token that goes down
 * gives one warning (the token marked failed) and one line from the check,
 * however often it is asked, and no call reaches the module until it is
 * recovered; its return one line. */
static void test_session_check_logs_changes_only(void **state)
{
	const char *log;
	int worked;

	own_open();
	raw_open(&own.raw);
	assert_false(own.raw.initialized);
	log = fixture_capture_stderr(check_session_5_times, NULL, &worked);
	assert_int_equal(worked, 5);
	assert_null(strstr(log, "token session check"));

	/* The module goes away under hsm (and the raw client's session with it). */
	assert_int_equal(own.raw.f->C_Finalize(NULL), CKR_OK);
	own.raw.s = CK_INVALID_HANDLE;
	log = fixture_capture_stderr(check_session_5_times, NULL, &worked);
	assert_int_equal(worked, 0);
	assert_int_equal(count_lines_with(log, "token session check failed"), 1);
	assert_int_equal(count_lines_with(log, "token failed"), 1);
	assert_int_equal(count_lines_with(log, "level=warn"), 1);
	assert_non_null(strstr(log, "reason=CKR_CRYPTOKI_NOT_INITIALIZED"));
	assert_false(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "CKR_CRYPTOKI_NOT_INITIALIZED");
	log = fixture_capture_stderr(check_session_5_times, NULL, &worked);
	assert_int_equal(worked, 0);
	assert_string_equal(log, "");

	/* hsm initialised the module, so recovery initialises it again. */
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	log = fixture_capture_stderr(recover_then_check_5_times, NULL, &worked);
	assert_int_equal(worked, 5);
	assert_int_equal(count_lines_with(log, "token recovered"), 1);
	assert_int_equal(count_lines_with(log, "token session check works again"), 1);
	assert_null(strstr(log, "token session check failed"));
	assert_true(hsm_available(own.hsm));
	raw_close(&own.raw);
	own_close();
}

/* One list of what keys hsm holds, and key generation follows it. */
static void test_alg_supported(void **state)
{
	struct hsm *hsm = NULL;
	struct hsm_key key;

	for (int a = JWS_ALG_INVALID; a <= JWS_ALG_COUNT; a++) {
		int want = a == JWS_ALG_ES256 || a == JWS_ALG_ES384 || a == JWS_ALG_RS256 ||
			   a == JWS_ALG_PS256 || a == JWS_ALG_EDDSA || a == JWS_ALG_HS256;
		assert_int_equal(hsm_alg_supported((enum jws_alg)a), want);
	}
	assert_int_equal(hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_HS256, 2048, NULL, NULL, &key), 0);
	assert_int_equal(hsm_destroy_key(hsm, &key), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_HS384, 2048, NULL, NULL, &key), -EINVAL);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES512, 2048, NULL, NULL, &key), -EINVAL);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_INVALID, 2048, NULL, NULL, &key), -EINVAL);
	hsm_close(hsm);
}

/* ---- lifecycle records -------------------------------------------------- */

/* The data objects under label (NULL: any) whose CKA_APPLICATION is app,
 * counted through the raw client. */
static int raw_count_data(struct raw *raw, const char *app, const char *label)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_APPLICATION, (void *)app, strlen(app) },
		{ CKA_LABEL, (void *)label, label ? strlen(label) : 0 },
	};
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0;

	assert_int_equal(raw->f->C_FindObjectsInit(raw->s, tmpl, label ? 3 : 2), CKR_OK);
	assert_int_equal(raw->f->C_FindObjects(raw->s, h, 64, &n), CKR_OK);
	assert_int_equal(raw->f->C_FindObjectsFinal(raw->s), CKR_OK);
	return (int)n;
}

/* The objects labelled label, of any class. */
static int raw_count_labelled(struct raw *raw, const char *label)
{
	CK_ATTRIBUTE tmpl[] = { { CKA_LABEL, (void *)label, strlen(label) } };
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0;

	assert_int_equal(raw->f->C_FindObjectsInit(raw->s, tmpl, 1), CKR_OK);
	assert_int_equal(raw->f->C_FindObjects(raw->s, h, 64, &n), CKR_OK);
	assert_int_equal(raw->f->C_FindObjectsFinal(raw->s), CKR_OK);
	return (int)n;
}

/* The token objects of class cls. */
static int raw_count_class(struct raw *raw, CK_OBJECT_CLASS cls)
{
	CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof(cls) } };
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0;

	assert_int_equal(raw->f->C_FindObjectsInit(raw->s, tmpl, 1), CKR_OK);
	assert_int_equal(raw->f->C_FindObjects(raw->s, h, 64, &n), CKR_OK);
	assert_int_equal(raw->f->C_FindObjectsFinal(raw->s), CKR_OK);
	return (int)n;
}

static void raw_create_data(struct raw *raw, const char *app, const char *label, const void *value, size_t len)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &yes, sizeof(yes) }, { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_APPLICATION, (void *)app, strlen(app) }, { CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_VALUE, (void *)value, len },
	};
	CK_OBJECT_HANDLE h;

	assert_int_equal(raw->f->C_CreateObject(raw->s, tmpl, 6, &h), CKR_OK);
}

static void key_label(const struct hsm_key *key, char *label)
{
	snprintf(label, 128, HSM_LABEL_PREFIX "%s:%s", jws_alg_name(key->alg), key->kid);
}

static void assert_meta(const struct hsm_meta *m, const char *value)
{
	assert_int_equal(m->len, strlen(value));
	assert_memory_equal(m->value, value, m->len);
	assert_int_not_equal(m->handle, CK_INVALID_HANDLE);
}

/* The only key in the token, found afresh into *ret (freed by the caller). */
static void find_one(struct hsm_key **ret)
{
	size_t n = 0;

	*ret = NULL;
	assert_int_equal(hsm_find_keys(own.session, ret, &n), 0);
	assert_int_equal(n, 1);
}

/* A record made with the key comes back with it; records added and removed
 * follow; one too long to be hsmjwt's is counted but not kept; another
 * application's data object under the same label is neither counted nor
 * destroyed; destroying the key destroys every record of it. */
static void test_records_follow_their_key(void **state)
{
	char big[HSM_META_MAX + 1], label[128];
	struct hsm_key key, *found = NULL;
	const char *log;
	int r;

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, fixed_meta, "rec-1", &key), 0);
	assert_int_equal(key.meta_count, 1);
	assert_int_equal(key.meta_found, 1);
	assert_meta(&key.meta[0], "rec-1");
	EVP_PKEY_free(key.public_key);
	key_label(&key, label);

	find_one(&found);
	assert_string_equal(found[0].kid, key.kid);
	assert_int_equal(found[0].meta_count, 1);
	assert_int_equal(found[0].meta_found, 1);
	assert_meta(&found[0].meta[0], "rec-1");
	assert_int_equal(found[0].meta[0].handle, key.meta[0].handle);

	assert_int_equal(hsm_meta_add(own.hsm, &found[0], (const uint8_t *)"rec-two", 7), 0);
	hsm_keys_free(found, 1);
	find_one(&found);
	assert_int_equal(found[0].meta_count, 2);
	assert_int_equal(found[0].meta_found, 2);
	/* In the order of their handles, whatever order the token lists them. */
	assert_true(found[0].meta[0].handle < found[0].meta[1].handle);
	assert_meta(&found[0].meta[0], "rec-1");
	assert_meta(&found[0].meta[1], "rec-two");

	assert_int_equal(hsm_meta_remove(own.hsm, &found[0], 0), 0);
	assert_int_equal(hsm_meta_remove(own.hsm, &found[0], 2), -EINVAL);
	hsm_keys_free(found, 1);
	find_one(&found);
	assert_int_equal(found[0].meta_count, 1);
	assert_int_equal(found[0].meta_found, 1);
	assert_meta(&found[0].meta[0], "rec-two");
	hsm_keys_free(found, 1);

	/* Written past the API: too long to be a record of hsmjwt's. */
	raw_open(&own.raw);
	memset(big, 'x', sizeof(big));
	raw_create_data(&own.raw, "hsmjwt", label, big, sizeof(big));
	raw_create_data(&own.raw, "other-app", label, "theirs", 6);
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(checked_count, 1);
	assert_int_equal(checked_keys[0].meta_count, 1);
	assert_int_equal(checked_keys[0].meta_found, 2);
	assert_meta(&checked_keys[0].meta[0], "rec-two");
	assert_int_equal(count_lines_with(log, "lifecycle record over the size limit; skipped"), 1);
	assert_non_null(strstr(log, "len=257 limit=256"));

	/* An oversized value is refused on the way in too. */
	assert_int_equal(hsm_meta_add(own.hsm, &checked_keys[0], (const uint8_t *)big, sizeof(big)), -EINVAL);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 2);

	assert_int_equal(hsm_destroy_key(own.hsm, &checked_keys[0]), 0);
	hsm_keys_free(checked_keys, checked_count);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 0);
	assert_int_equal(raw_count_data(&own.raw, "other-app", label), 1);
	assert_int_equal(raw_count_labelled(&own.raw, label), 1);
	assert_int_equal(hsm_find_keys(own.session, &found, &checked_count), 0);
	assert_int_equal(checked_count, 0);
	hsm_keys_free(found, 0);
	raw_close(&own.raw);
	own_close();
}

/* The public data objects of application app under label. */
static int raw_count_public_data(struct raw *raw, const char *app, const char *label)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_PRIVATE, &no, sizeof(no) },
		{ CKA_APPLICATION, (void *)app, strlen(app) }, { CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0;

	assert_int_equal(raw->f->C_FindObjectsInit(raw->s, tmpl, 4), CKR_OK);
	assert_int_equal(raw->f->C_FindObjects(raw->s, h, 64, &n), CKR_OK);
	assert_int_equal(raw->f->C_FindObjectsFinal(raw->s), CKR_OK);
	return (int)n;
}

/* A public data object under a key's label, made by someone without the
 * PIN (another process whose session is not logged in), holding a forged
 * "retired" record: not a record of the key's.  hsm_find_keys neither reads
 * nor counts it, and hsm_destroy_key leaves it where it is. */
static void test_public_records_are_not_records(void **state)
{
	struct hsm_key key, *found = NULL;
	char label[128];

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "real", &key), 0);
	EVP_PKEY_free(key.public_key);
	key_label(&key, label);
	run_child("--forge-record", label);
	raw_open(&own.raw);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 2);
	assert_int_equal(raw_count_public_data(&own.raw, "hsmjwt", label), 1);

	find_one(&found);
	assert_string_equal(found[0].kid, key.kid);
	assert_int_equal(found[0].meta_found, 1);
	assert_int_equal(found[0].meta_count, 1);
	assert_meta(&found[0].meta[0], "real");
	assert_int_equal(hsm_destroy_key(own.hsm, &found[0]), 0);
	hsm_keys_free(found, 1);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 1);
	assert_int_equal(raw_count_public_data(&own.raw, "hsmjwt", label), 1);
	raw_close(&own.raw);
	own_close();
}

/* Keys made by someone without the PIN — a key pair and an HS256 secret
 * under hsmjwt labels, generated in the token with every custody attribute
 * hsmjwt checks, but public, so that their maker signs with them without
 * logging in — are not hsmjwt's keys: published or trusted, they would let
 * anyone with a session mint tokens that verify. */
static void test_public_keys_are_not_keys(void **state)
{
	struct hsm_key key, *found = NULL;

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	EVP_PKEY_free(key.public_key);
	run_child("--forge-keys", "-");
	raw_open(&own.raw);
	assert_int_equal(raw_count_class(&own.raw, CKO_PRIVATE_KEY), 2);
	assert_int_equal(raw_count_class(&own.raw, CKO_SECRET_KEY), 1);
	raw_close(&own.raw);
	find_one(&found);
	assert_string_equal(found[0].kid, key.kid);
	hsm_keys_free(found, 1);
	own_close();
}

/* A stand-in public half with the genuine key's label and CKA_ID, made by
 * someone without the PIN: whichever the token lists first, discovery keeps
 * the half whose thumbprint is the kid — the genuine one — and the key stays
 * found, with its own public key. */
static void test_forged_public_half_is_passed_over(void **state)
{
	struct hsm_key key, *found = NULL;
	char label[128], kid[JWK_THUMBPRINT_LEN + 1];

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	key_label(&key, label);
	run_child("--forge-public-half", label);
	raw_open(&own.raw);
	assert_int_equal(raw_count_class(&own.raw, CKO_PUBLIC_KEY), 2);
	raw_close(&own.raw);
	find_one(&found);
	assert_string_equal(found[0].kid, key.kid);
	assert_int_equal(found[0].public_handle, key.public_handle);
	assert_int_equal(jwk_thumbprint(found[0].public_key, kid), 0);
	assert_string_equal(kid, key.kid);
	assert_int_equal(EVP_PKEY_eq(found[0].public_key, key.public_key), 1);
	hsm_keys_free(found, 1);
	EVP_PKEY_free(key.public_key);
	own_close();
}

/* A second function list in front of the module's, for what the module
 * will not do on request: fail a call, count calls, look at the token at
 * the moment of a call. */
static CK_FUNCTION_LIST wrapped;
static CK_FUNCTION_LIST *real_f;
static struct {
	int fail_set_label;      /* C_SetAttributeValue answers CKR_FUNCTION_FAILED */
	int records_at_naming;   /* hsmjwt records under the label being set, at that moment */
	int namings;
	int sign_calls;          /* C_SignInit + C_Sign */
	int calls;               /* every wrapped function */
	/* The next C_GenerateKeyPair or C_FindObjectsInit, 20 ms in, asks
	 * hsm_watchdog with a call limit of 0 and an admin limit of 60 s
	 * (said[0]), then the other way round (said[1]). */
	int watchdog_inside;
	int watchdog_said[2];
	int keygens;             /* C_GenerateKeyPair + C_GenerateKey that returned */
	CK_RV keygen_rv;         /* not CKR_OK: what they answer, without generating */
	CK_RV create_rv;         /* not CKR_OK: what C_CreateObject answers, without creating */
	CK_OBJECT_HANDLE undestroyable; /* C_DestroyObject refuses it (CKR_ACTION_PROHIBITED) */
	int logins;              /* C_Login calls */
	CK_RV login_rv;          /* not CKR_OK: what C_Login answers, without logging in */
} wrap;

static CK_RV wrap_set_attribute_value(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
	wrap.calls++;
	for (CK_ULONG i = 0; i < n; i++) {
		CK_OBJECT_CLASS cls = CKO_DATA;
		CK_OBJECT_HANDLE h[8];
		CK_ULONG got = 0;
		if (tmpl[i].type != CKA_LABEL)
			continue;
		CK_ATTRIBUTE find[] = {
			{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_APPLICATION, "hsmjwt", 6 },
			{ CKA_LABEL, tmpl[i].pValue, tmpl[i].ulValueLen },
		};
		if (real_f->C_FindObjectsInit(s, find, 3) != CKR_OK || real_f->C_FindObjects(s, h, 8, &got) != CKR_OK)
			return CKR_GENERAL_ERROR;
		real_f->C_FindObjectsFinal(s);
		wrap.records_at_naming = (int)got;
		wrap.namings++;
		if (wrap.fail_set_label)
			return CKR_FUNCTION_FAILED;
	}
	return real_f->C_SetAttributeValue(s, obj, tmpl, n);
}

static void wrap_watchdog_inside(void)
{
	if (!wrap.watchdog_inside)
		return;
	wrap.watchdog_inside = 0;
	usleep(20 * 1000);
	wrap.watchdog_said[0] = hsm_watchdog(own.hsm, 0, 60000);
	wrap.watchdog_said[1] = hsm_watchdog(own.hsm, 60000, 0);
}

static CK_RV wrap_sign_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
	wrap.calls++;
	wrap.sign_calls++;
	return real_f->C_SignInit(s, mech, key);
}

static CK_RV wrap_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	wrap.calls++;
	wrap.sign_calls++;
	return real_f->C_Sign(s, data, len, sig, sig_len);
}

static CK_RV wrap_find_objects_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
	wrap.calls++;
	wrap_watchdog_inside();
	return real_f->C_FindObjectsInit(s, tmpl, n);
}

static CK_RV wrap_open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
			       CK_SESSION_HANDLE_PTR ret)
{
	wrap.calls++;
	return real_f->C_OpenSession(slot, flags, app, notify, ret);
}

static CK_RV wrap_get_session_info(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info)
{
	wrap.calls++;
	return real_f->C_GetSessionInfo(s, info);
}

static CK_RV wrap_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	wrap.calls++;
	return real_f->C_GetTokenInfo(slot, info);
}

static CK_RV wrap_create_object(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_OBJECT_HANDLE_PTR ret)
{
	wrap.calls++;
	if (wrap.create_rv != CKR_OK)
		return wrap.create_rv;
	return real_f->C_CreateObject(s, tmpl, n, ret);
}

static CK_RV wrap_generate_key_pair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub, CK_ULONG n_pub,
				    CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv, CK_OBJECT_HANDLE_PTR ret_pub,
				    CK_OBJECT_HANDLE_PTR ret_priv)
{
	CK_RV rv;

	wrap.calls++;
	wrap_watchdog_inside();
	if (wrap.keygen_rv != CKR_OK)
		return wrap.keygen_rv;
	rv = real_f->C_GenerateKeyPair(s, mech, pub, n_pub, priv, n_priv, ret_pub, ret_priv);
	wrap.keygens++;
	return rv;
}

static CK_RV wrap_generate_key(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n,
			       CK_OBJECT_HANDLE_PTR ret)
{
	CK_RV rv;

	wrap.calls++;
	if (wrap.keygen_rv != CKR_OK)
		return wrap.keygen_rv;
	rv = real_f->C_GenerateKey(s, mech, tmpl, n, ret);
	wrap.keygens++;
	return rv;
}

static CK_RV wrap_destroy_object(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj)
{
	wrap.calls++;
	if (obj == wrap.undestroyable)
		return CKR_ACTION_PROHIBITED;
	return real_f->C_DestroyObject(s, obj);
}

static CK_RV wrap_login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
	wrap.calls++;
	wrap.logins++;
	if (wrap.login_rv != CKR_OK)
		return wrap.login_rv;
	return real_f->C_Login(s, user, pin, len);
}

static void wrap_install(struct hsm *hsm)
{
	memset(&wrap, 0, sizeof(wrap));
	wrap.records_at_naming = -1;
	real_f = hsm->f;
	wrapped = *real_f;
	wrapped.C_SetAttributeValue = wrap_set_attribute_value;
	wrapped.C_SignInit = wrap_sign_init;
	wrapped.C_Sign = wrap_sign;
	wrapped.C_FindObjectsInit = wrap_find_objects_init;
	wrapped.C_OpenSession = wrap_open_session;
	wrapped.C_GetSessionInfo = wrap_get_session_info;
	wrapped.C_GetTokenInfo = wrap_get_token_info;
	wrapped.C_CreateObject = wrap_create_object;
	wrapped.C_GenerateKeyPair = wrap_generate_key_pair;
	wrapped.C_GenerateKey = wrap_generate_key;
	wrapped.C_DestroyObject = wrap_destroy_object;
	wrapped.C_Login = wrap_login;
	hsm->f = &wrapped;
}

/* hsm_close releases the module by its own function list. */
static void wrap_remove(struct hsm *hsm)
{
	if (hsm != NULL && hsm->f == &wrapped)
		hsm->f = real_f;
}

/* The record exists before the key gets its name; a generation that fails
 * after the record was made (naming refused) or before (a key size the
 * token refuses) leaves no record, no key and no pending object behind. */
static void test_generation_makes_the_record_first_and_cleans_up(void **state)
{
	struct hsm_key key;
	char label[128];

	own_open();
	raw_open(&own.raw);
	wrap_install(own.hsm);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, fixed_meta, "r", &key), 0);
	/* Both halves were named, each with the record already there. */
	assert_int_equal(wrap.namings, 2);
	assert_int_equal(wrap.records_at_naming, 1);
	key_label(&key, label);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 1);
	EVP_PKEY_free(key.public_key);

	/* Without a record, none is made. */
	wrap.namings = 0;
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, NULL, NULL, &key), 0);
	assert_int_equal(wrap.namings, 2);
	assert_int_equal(wrap.records_at_naming, 0);
	EVP_PKEY_free(key.public_key);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 1);

	wrap.fail_set_label = 1;
	wrap.namings = 0;
	memset(&key, 0x5a, sizeof(key));
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 2048, fixed_meta, "r", &key), HSM_E_FAILED);
	assert_int_equal(wrap.namings, 1);
	assert_int_equal(wrap.records_at_naming, 1);
	assert_int_equal(key.alg, 0x5a5a5a5a); /* untouched */
	wrap_remove(own.hsm);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 1);
	assert_int_equal(raw_count_labelled(&own.raw, HSM_LABEL_PREFIX "pending"), 0);

	/* SoftHSM answers an RSA size outside its range with CKR_GENERAL_ERROR,
	 * a device failure: the range is checked before. */
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_RS256, 128, fixed_meta, "r", &key), -EINVAL);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_PS256, 100000, fixed_meta, "r", &key), -EINVAL);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES512, 2048, fixed_meta, "r", &key), -EINVAL);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 1);
	assert_int_equal(raw_count_labelled(&own.raw, HSM_LABEL_PREFIX "pending"), 0);
	raw_close(&own.raw);
	own_close();
}

/* What observing_meta saw when hsm_generate_key called it. */
static struct {
	int calls;
	enum jws_alg alg;
	size_t size;
	int keygens, namings;    /* the wrapped module's counts at that moment */
	int fail;                /* answer this error instead */
	size_t len;              /* claim this length (0: the value's) */
} seen;

static int observing_meta(void *ctx, enum jws_alg alg, uint8_t *buf, size_t size, size_t *ret_len)
{
	seen.calls++;
	seen.alg = alg;
	seen.size = size;
	seen.keygens = wrap.keygens;
	seen.namings = wrap.namings;
	if (seen.fail < 0)
		return seen.fail;
	fixed_meta(ctx, alg, buf, size, ret_len);
	if (seen.len > 0)
		*ret_len = seen.len;
	return 0;
}

/* The record is written once the key exists: the callback runs after the
 * token's generation call returned (the module's count of finished
 * generations is 1 when it is called: an order of events, not a time) and
 * before the key is named, once, with room for HSM_META_MAX
 * bytes; what it wrote is the record, in the token and in the key.  Its
 * error, or a length past its buffer, fails the generation and leaves
 * nothing behind. */
static void test_record_is_written_after_generation(void **state)
{
	struct hsm_key key;
	char label[128];

	own_open();
	raw_open(&own.raw);
	wrap_install(own.hsm);
	for (int hs = 0; hs <= 1; hs++) {
		enum jws_alg alg = hs ? JWS_ALG_HS256 : JWS_ALG_ES256;

		memset(&seen, 0, sizeof(seen));
		wrap.keygens = wrap.namings = 0;
		assert_int_equal(hsm_generate_key(own.hsm, alg, 0, observing_meta, "stamped-after", &key), 0);
		assert_int_equal(seen.calls, 1);
		assert_int_equal(seen.alg, alg);
		assert_int_equal(seen.size, HSM_META_MAX);
		assert_int_equal(seen.keygens, 1);
		assert_int_equal(seen.namings, 0);
		assert_int_equal(wrap.namings, hs ? 1 : 2);
		assert_int_equal(wrap.records_at_naming, 1);
		assert_int_equal(key.meta_count, 1);
		assert_meta(&key.meta[0], "stamped-after");
		key_label(&key, label);
		assert_int_equal(raw_count_data(&own.raw, "hsmjwt", label), 1);
		EVP_PKEY_free(key.public_key);
	}

	/* The callback's error is the generation's; the key goes. */
	memset(&seen, 0, sizeof(seen));
	seen.fail = -EIO;
	wrap.keygens = wrap.namings = 0;
	memset(&key, 0x5a, sizeof(key));
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, observing_meta, "x", &key), -EIO);
	assert_int_equal(seen.calls, 1);
	assert_int_equal(wrap.keygens, 1);
	assert_int_equal(wrap.namings, 0);
	assert_int_equal(key.alg, 0x5a5a5a5a); /* untouched */
	/* A length past the buffer is refused. */
	memset(&seen, 0, sizeof(seen));
	seen.len = HSM_META_MAX + 1;
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_HS256, 0, observing_meta, "x", &key), -EINVAL);
	assert_int_equal(seen.calls, 1);
	assert_int_equal(key.alg, 0x5a5a5a5a);
	wrap_remove(own.hsm);
	/* The two keys above and their records; nothing of the failed ones. */
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 2);
	assert_int_equal(raw_count_labelled(&own.raw, HSM_LABEL_PREFIX "pending"), 0);
	assert_int_equal(raw_count_class(&own.raw, CKO_PRIVATE_KEY), 1);
	assert_int_equal(raw_count_class(&own.raw, CKO_PUBLIC_KEY), 1);
	assert_int_equal(raw_count_class(&own.raw, CKO_SECRET_KEY), 1);
	raw_close(&own.raw);
	own_close();
}

/* Generation of a key pair and an HS256 key, one with a record, and a
 * record added to arg: how many answered HSM_E_FAILED. */
static int make_things(void *arg)
{
	static const enum jws_alg make[] = { JWS_ALG_ES256, JWS_ALG_HS256, JWS_ALG_ES256 };
	struct hsm_key key;
	int failed = 0, r;

	for (size_t i = 0; i < 3; i++) {
		r = hsm_generate_key(own.hsm, make[i], 0, i == 2 ? fixed_meta : NULL, "n", &key);
		failed += r == HSM_E_FAILED;
		if (r == 0)
			EVP_PKEY_free(key.public_key);
	}
	failed += hsm_meta_add(own.hsm, arg, (const uint8_t *)"x", 1) == HSM_E_FAILED;
	return failed;
}

/* A token out of room (CKR_DEVICE_MEMORY) is not a failed token: a
 * generation or record it cannot make answers HSM_E_FAILED, logged with the
 * code, nothing is left half made, the token stays available and signs —
 * a rotation retried on every poll must not take signing down each time. */
static void test_token_full_is_not_a_failure(void **state)
{
	struct hsm_key key;
	uint8_t sig[64];
	size_t sig_len = sizeof(sig);
	const char *log;
	int failed;

	own_open();
	raw_open(&own.raw);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "m", &key), 0);
	EVP_PKEY_free(key.public_key);
	wrap_install(own.hsm);

	/* No room for a key: C_GenerateKeyPair and C_GenerateKey refuse. */
	wrap.keygen_rv = CKR_DEVICE_MEMORY;
	log = fixture_capture_stderr(make_things, &key, &failed);
	assert_int_equal(wrap.keygens, 0);
	/* The third generation fails before its record; hsm_meta_add works. */
	assert_int_equal(failed, 3);
	assert_int_equal(count_lines_with(log, "key generation failed"), 3);
	assert_int_equal(count_lines_with(log, "rv=CKR_DEVICE_MEMORY"), 3);
	assert_null(strstr(log, "token failed"));
	assert_true(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "");
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 2);

	/* Room for keys, none for records. */
	wrap.keygen_rv = CKR_OK;
	wrap.create_rv = CKR_DEVICE_MEMORY;
	log = fixture_capture_stderr(make_things, &key, &failed);
	assert_int_equal(wrap.keygens, 3);
	assert_int_equal(failed, 2);
	assert_int_equal(count_lines_with(log, "cannot create lifecycle record"), 2);
	assert_int_equal(count_lines_with(log, "rv=CKR_DEVICE_MEMORY"), 2);
	assert_null(strstr(log, "token failed"));
	assert_true(hsm_available(own.hsm));
	assert_int_equal(hsm_sign(own.session, &key, (const uint8_t *)"x", 1, sig, &sig_len), 0);
	wrap_remove(own.hsm);

	/* The first key with its two records, and the two keys made without a
	 * record in the second round; the one whose record failed is gone. */
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", NULL), 2);
	assert_int_equal(raw_count_class(&own.raw, CKO_PRIVATE_KEY), 2);
	assert_int_equal(raw_count_class(&own.raw, CKO_PUBLIC_KEY), 2);
	assert_int_equal(raw_count_class(&own.raw, CKO_SECRET_KEY), 1);
	assert_int_equal(raw_count_labelled(&own.raw, HSM_LABEL_PREFIX "pending"), 0);
	raw_close(&own.raw);
	own_close();
}

/* hsm_destroy_key goes on past an object that will not go (CKA_DESTROYABLE
 * false: CKR_ACTION_PROHIBITED) and answers the first refusal, the token
 * still available.  The private key refused: the public half and the
 * records go, as the key can no longer be loaded.  The public half refused:
 * the private key and the records go.  An HS256 key refused keeps its
 * records: it could still be loaded, and without them would be taken for a
 * key from before records.  Once allowed, the rest goes. */
static void test_destroy_goes_on_past_a_refusal(void **state)
{
	struct hsm_key a, b, hs;
	char la[128], lb[128], lh[128];

	own_open();
	raw_open(&own.raw);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "a", &a), 0);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "b", &b), 0);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_HS256, 0, fixed_meta, "h", &hs), 0);
	EVP_PKEY_free(a.public_key);
	EVP_PKEY_free(b.public_key);
	key_label(&a, la);
	key_label(&b, lb);
	key_label(&hs, lh);
	wrap_install(own.hsm);

	wrap.undestroyable = a.private_handle;
	assert_int_equal(hsm_destroy_key(own.hsm, &a), HSM_E_FAILED);
	assert_int_equal(raw_count_labelled(&own.raw, la), 1);
	assert_int_equal(raw_count_class(&own.raw, CKO_PUBLIC_KEY), 1);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", la), 0);

	wrap.undestroyable = b.public_handle;
	assert_int_equal(hsm_destroy_key(own.hsm, &b), HSM_E_FAILED);
	assert_int_equal(raw_count_labelled(&own.raw, lb), 1);
	assert_int_equal(raw_count_class(&own.raw, CKO_PRIVATE_KEY), 1); /* a's */
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", lb), 0);

	wrap.undestroyable = hs.private_handle;
	assert_int_equal(hsm_destroy_key(own.hsm, &hs), HSM_E_FAILED);
	assert_int_equal(raw_count_labelled(&own.raw, lh), 2);
	assert_int_equal(raw_count_data(&own.raw, "hsmjwt", lh), 1);
	assert_true(hsm_available(own.hsm));

	wrap.undestroyable = CK_INVALID_HANDLE;
	assert_int_equal(hsm_destroy_key(own.hsm, &a), 0);
	assert_int_equal(hsm_destroy_key(own.hsm, &b), 0);
	assert_int_equal(hsm_destroy_key(own.hsm, &hs), 0);
	wrap_remove(own.hsm);
	assert_int_equal(raw_count_labelled(&own.raw, la), 0);
	assert_int_equal(raw_count_labelled(&own.raw, lb), 0);
	assert_int_equal(raw_count_labelled(&own.raw, lh), 0);
	raw_close(&own.raw);
	own_close();
}

/* ---- faults and recovery ------------------------------------------------ */

struct sign_args {
	const struct hsm_key *key;
	int times;
};

/* Signs args->times times; the last result. */
static int sign_times(void *arg)
{
	const struct sign_args *a = arg;
	uint8_t sig[512];
	int r = 0;

	for (int i = 0; i < a->times; i++) {
		size_t sig_len = sizeof(sig);
		r = hsm_sign(own.session, a->key, (const uint8_t *)"payload", 7, sig, &sig_len);
	}
	return r;
}

/* Every operation that would call into the module, on a failed token;
 * the number that answered HSM_E_DEVICE. */
static int every_operation(void *arg)
{
	const struct hsm_key *key = arg;
	struct hsm_key generated, *found = NULL;
	struct hsm_session *session = NULL;
	uint8_t sig[32] = { 0 };
	char *text = NULL;
	size_t n = 0;
	int device = 0;

	device += hsm_find_keys(own.session, &found, &n) == HSM_E_DEVICE;
	device += hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &generated) == HSM_E_DEVICE;
	device += hsm_destroy_key(own.hsm, key) == HSM_E_DEVICE;
	device += hsm_meta_add(own.hsm, key, (const uint8_t *)"x", 1) == HSM_E_DEVICE;
	device += hsm_meta_remove(own.hsm, key, 0) == HSM_E_DEVICE;
	device += hsm_session_check(own.session) == HSM_E_DEVICE;
	device += hsm_describe(own.hsm, &text) == HSM_E_DEVICE;
	device += hsm_session_open(own.hsm, &session) == HSM_E_DEVICE;
	device += hsm_verify(own.session, &(struct hsm_key){ .alg = JWS_ALG_HS256, .generation = 1 },
			     (const uint8_t *)"x", 1, sig, sizeof(sig)) == HSM_E_DEVICE;
	return device;
}

static int recover_now(void *arg)
{
	return hsm_recover(own.hsm, 1000);
}

/* The token drops every session of this process under hsm (what a reset
 * device or a restarted network HSM does): the next signature fails and
 * marks the token failed, with one warning naming what the module said;
 * every operation after it fails at once without a call into the module;
 * recovery without a PIN source cannot log in; with one it brings the token
 * back in a new generation, where old key handles are refused until the
 * keys are reloaded, and the same hsm_session signs again. */
static void test_device_failure_and_recovery(void **state)
{
	struct hsm_key key, *found = NULL;
	struct sign_args args = { NULL, 1 };
	struct jwk_key *verify = NULL;
	uint8_t sig[64];
	size_t sig_len = sizeof(sig);
	const char *log;
	int r;

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "m", &key), 0);
	EVP_PKEY_free(key.public_key);
	assert_int_equal(key.generation, 1);
	find_one(&found);
	assert_int_equal(found[0].generation, 1);
	assert_int_equal(hsm_generation(own.hsm), 1);
	assert_true(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "");
	wrap_install(own.hsm);
	args.key = &found[0];
	assert_int_equal(sign_times(&args), 0);
	assert_int_equal(wrap.sign_calls, 2);

	assert_int_equal(real_f->C_CloseAllSessions(own.hsm->slot), CKR_OK);
	wrap.sign_calls = 0;
	log = fixture_capture_stderr(sign_times, &args, &r);
	assert_int_equal(r, HSM_E_DEVICE);
	assert_int_equal(wrap.sign_calls, 1); /* C_SignInit, refused */
	assert_false(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "CKR_SESSION_HANDLE_INVALID");
	assert_int_equal(count_lines_with(log, "token failed; operations refused until it is recovered"), 1);
	assert_non_null(strstr(log, "reason=CKR_SESSION_HANDLE_INVALID generation=1"));

	/* From now on nothing reaches the module, and nothing is logged. */
	wrap.calls = 0;
	args.times = 5;
	log = fixture_capture_stderr(sign_times, &args, &r);
	assert_int_equal(r, HSM_E_DEVICE);
	assert_string_equal(log, "");
	log = fixture_capture_stderr(every_operation, &found[0], &r);
	assert_int_equal(r, 9);
	assert_int_equal(wrap.calls, 0);
	assert_null(strstr(log, "token failed"));
	assert_string_equal(hsm_failure(own.hsm), "CKR_SESSION_HANDLE_INVALID");

	/* No PIN source: the token needs a login, so it stays failed. */
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, HSM_E_LOGIN);
	assert_non_null(strstr(log, "no PIN source is set"));
	assert_false(hsm_available(own.hsm));
	assert_int_equal(hsm_generation(own.hsm), 1);

	pin_reads = pin_releases = 0;
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(pin_reads, 1);
	assert_int_equal(pin_releases, 1);
	assert_non_null(strstr(log, "msg=\"token recovered\" token=hsmjwt-unit generation=2"));
	assert_true(hsm_available(own.hsm));
	assert_int_equal(hsm_generation(own.hsm), 2);
	assert_string_equal(hsm_failure(own.hsm), "");
	/* Recovering a working token does nothing. */
	assert_int_equal(hsm_recover(own.hsm, 0), 0);
	assert_int_equal(hsm_generation(own.hsm), 2);
	assert_int_equal(pin_reads, 1);

	/* Handles from generation 1 are refused without a call. */
	wrap.calls = 0;
	assert_int_equal(hsm_sign(own.session, &found[0], (const uint8_t *)"x", 1, sig, &sig_len), HSM_E_STALE);
	assert_int_equal(hsm_destroy_key(own.hsm, &found[0]), HSM_E_STALE);
	assert_int_equal(hsm_meta_add(own.hsm, &found[0], (const uint8_t *)"x", 1), HSM_E_STALE);
	assert_int_equal(hsm_meta_remove(own.hsm, &found[0], 0), HSM_E_STALE);
	assert_int_equal(wrap.calls, 0);
	assert_true(hsm_available(own.hsm)); /* a stale handle is not a failure */

	/* Reloaded, the key signs again through the same session, reopened. */
	hsm_keys_free(found, 1);
	find_one(&found);
	assert_int_equal(found[0].generation, 2);
	assert_string_equal(found[0].kid, key.kid);
	assert_int_equal(found[0].meta_count, 1);
	assert_meta(&found[0].meta[0], "m");
	assert_int_equal(own.session->generation, 2);
	wrap.sign_calls = 0;
	sig_len = sizeof(sig);
	assert_int_equal(hsm_sign(own.session, &found[0], (const uint8_t *)"x", 1, sig, &sig_len), 0);
	assert_int_equal(wrap.sign_calls, 2);
	assert_int_equal(jwk_key_from_pkey(found[0].public_key, JWS_ALG_ES256, &verify), 0);
	assert_int_equal(jws_verify_signature(JWS_ALG_ES256, verify, (const uint8_t *)"x", 1, sig, sig_len), 0);
	jwk_key_free(verify);
	assert_int_equal(hsm_session_check(own.session), 0);
	hsm_keys_free(found, 1);
	wrap_remove(own.hsm);
	own_close();
}

/* A recovery whose login the token refuses for the PIN — each of the five
 * CKR_PIN_* answers — tries once: one C_Login, one PIN read, one error line
 * naming the CKR and the remedy, failure "pin_rejected"; every later
 * hsm_recover answers HSM_E_PIN at once, with no call into the module and
 * no PIN read, even once the token would take the PIN again (a real token
 * counts each wrong try towards locking it).  Any other refusal of the
 * login keeps recovery going: the next try logs in. */
static void test_pin_refused_at_recovery_is_not_retried(void **state)
{
	static const CK_RV refused[] = { CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED,
					 CKR_PIN_LOCKED };
	char rv_field[64];
	const char *log;
	int r;

	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		own_open();
		wrap_install(own.hsm);
		pin_reads = pin_releases = 0;
		hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
		assert_int_equal(real_f->C_CloseAllSessions(own.hsm->slot), CKR_OK);
		assert_int_equal(hsm_session_check(own.session), HSM_E_DEVICE);
		assert_false(hsm_available(own.hsm));

		wrap.login_rv = refused[i];
		log = fixture_capture_stderr(recover_now, NULL, &r);
		assert_int_equal(r, HSM_E_PIN);
		assert_int_equal(wrap.logins, 1);
		assert_int_equal(pin_reads, 1);
		assert_int_equal(pin_releases, 1);
		assert_int_equal(count_lines_with(log, "level=error"), 1);
		assert_int_equal(count_lines_with(log, "the token refused the PIN; no further login until hsmjwtd "
						       "restarts"), 1);
		snprintf(rv_field, sizeof(rv_field), "rv=%s ", hsm_ckr_name(refused[i]));
		assert_non_null(strstr(log, rv_field));
		assert_non_null(strstr(log, "then restart hsmjwtd"));
		assert_null(strstr(log, tok.pin));
		assert_false(hsm_available(own.hsm));
		assert_string_equal(hsm_failure(own.hsm), "pin_rejected");
		assert_int_equal(hsm_generation(own.hsm), 1);

		/* The token would take the PIN now: it is never asked. */
		wrap.login_rv = CKR_OK;
		wrap.calls = 0;
		for (int k = 0; k < 3; k++) {
			log = fixture_capture_stderr(recover_now, NULL, &r);
			assert_int_equal(r, HSM_E_PIN);
			assert_string_equal(log, "");
		}
		assert_int_equal(wrap.calls, 0);
		assert_int_equal(wrap.logins, 1);
		assert_int_equal(pin_reads, 1);
		assert_false(hsm_available(own.hsm));
		assert_string_equal(hsm_failure(own.hsm), "pin_rejected");
		wrap_remove(own.hsm);
		own_close();
	}

	/* Not the PIN's fault: recovery fails, and the next one logs in. */
	own_open();
	wrap_install(own.hsm);
	pin_reads = pin_releases = 0;
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	assert_int_equal(real_f->C_CloseAllSessions(own.hsm->slot), CKR_OK);
	assert_int_equal(hsm_session_check(own.session), HSM_E_DEVICE);
	wrap.login_rv = CKR_FUNCTION_FAILED;
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, HSM_E_LOGIN);
	assert_non_null(strstr(log, "\"login failed\""));
	assert_null(strstr(log, "refused the PIN"));
	assert_string_equal(hsm_failure(own.hsm), "CKR_SESSION_HANDLE_INVALID");
	wrap.login_rv = CKR_OK;
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	assert_int_equal(wrap.logins, 2);
	assert_int_equal(pin_reads, 2);
	assert_true(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "");
	assert_int_equal(hsm_session_check(own.session), 0);
	wrap_remove(own.hsm);
	own_close();
}

/* A token found by URI (here by serial) that comes back under another
 * label is named as it is now, from recovery on. */
static void test_recovery_keeps_the_label_read_back(void **state)
{
	CK_TOKEN_INFO info;
	char spec[64], serial[17];
	const char *log;
	size_t n;
	int r;

	own_open();
	assert_int_equal(own.hsm->f->C_GetTokenInfo(own.hsm->slot, &info), CKR_OK);
	own_close();
	for (n = sizeof(info.serialNumber); n > 0 && info.serialNumber[n - 1] == ' '; n--)
		;
	assert_true(n > 0);
	memcpy(serial, info.serialNumber, n);
	serial[n] = '\0';
	snprintf(spec, sizeof(spec), "pkcs11:serial=%s", serial);
	assert_int_equal(hsm_open(fixture_module(), spec, tok.pin, tok.pin_len, &own.hsm), 0);
	assert_string_equal(own.hsm->token_label, FIXTURE_TOKEN_LABEL);
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	/* As if the token had been relabelled while it was away. */
	strcpy(own.hsm->token_label, "old-label");
	assert_int_equal(hsm_mark_failed(own.hsm, "CKR_DEVICE_REMOVED"), 1);
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, 0);
	assert_non_null(strstr(log, "the token's label changed\" token=old-label label=" FIXTURE_TOKEN_LABEL));
	assert_non_null(strstr(log, "\"token recovered\" token=" FIXTURE_TOKEN_LABEL " generation=2"));
	assert_string_equal(own.hsm->token_label, FIXTURE_TOKEN_LABEL);
	/* Unchanged, nothing is said of it. */
	assert_int_equal(hsm_mark_failed(own.hsm, "CKR_DEVICE_REMOVED"), 1);
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, 0);
	assert_null(strstr(log, "label changed"));
	assert_string_equal(own.hsm->token_label, FIXTURE_TOKEN_LABEL);
	own_close();
}

/* A failed token still closes (no recovery first), and the module can be
 * opened again afterwards. */
static void test_close_a_failed_token(void **state)
{
	struct hsm_key key;
	uint8_t sig[64];
	size_t sig_len = sizeof(sig);

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	EVP_PKEY_free(key.public_key);
	assert_int_equal(own.hsm->f->C_CloseAllSessions(own.hsm->slot), CKR_OK);
	assert_int_equal(hsm_sign(own.session, &key, (const uint8_t *)"x", 1, sig, &sig_len), HSM_E_DEVICE);
	assert_false(hsm_available(own.hsm));
	own_close();
	own_open();
	assert_int_equal(hsm_session_check(own.session), 0);
	own_close();
}

struct use_args {
	const struct hsm_key *key;
	int verify;
	size_t sig_len;     /* what hsm_sign left in its length */
};

/* hsm_sign, or hsm_verify of an HS256 tag, with args->key. */
static int use_key(void *arg)
{
	struct use_args *a = arg;
	uint8_t sig[64] = { 0 };

	a->sig_len = sizeof(sig);
	if (a->verify)
		return hsm_verify(own.session, a->key, (const uint8_t *)"x", 1, sig, 32);
	return hsm_sign(own.session, a->key, (const uint8_t *)"x", 1, sig, &a->sig_len);
}

/* The module said the key object is gone: the path that probes the token. */
static void assert_gone_logged(const char *log)
{
	if (strstr(log, "rv=CKR_KEY_HANDLE_INVALID") == NULL && strstr(log, "rv=CKR_OBJECT_HANDLE_INVALID") == NULL)
		fail_msg("no handle-invalid answer in the log:\n%s", log);
}

/* A key destroyed by another process (a replica, hsmjwtctl) while the token
 * works: signing or verifying with the key set's handle answers HSM_E_STALE
 * (the keyring's next poll reloads the set) and the token stays available —
 * or anyone could force recoveries, over and over, by verifying a token
 * under that kid.  The same answer from a token that lost its login
 * (C_Logout) is a failed token. */
static void test_key_gone_is_stale_login_gone_is_failed(void **state)
{
	struct hsm_key ec, hs, copy, *found = NULL;
	struct use_args args = { NULL, 0, 0 };
	const char *log;
	int r;

	own_open();
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &ec), 0);
	EVP_PKEY_free(ec.public_key);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_HS256, 0, NULL, NULL, &hs), 0);
	copy = ec;
	assert_int_equal(hsm_destroy_key(own.hsm, &copy), 0);
	copy = hs;
	assert_int_equal(hsm_destroy_key(own.hsm, &copy), 0);

	args.key = &ec;
	log = fixture_capture_stderr(use_key, &args, &r);
	assert_int_equal(r, HSM_E_STALE);
	assert_int_equal(args.sig_len, 64); /* untouched */
	assert_gone_logged(log);
	args.key = &hs;
	args.verify = 1;
	log = fixture_capture_stderr(use_key, &args, &r);
	assert_int_equal(r, HSM_E_STALE);
	assert_gone_logged(log);
	args.verify = 0;
	assert_int_equal(use_key(&args), HSM_E_STALE);
	assert_null(strstr(log, "token failed"));
	assert_true(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "");
	assert_int_equal(hsm_generation(own.hsm), 1);
	assert_int_equal(hsm_session_check(own.session), 0);

	/* The token logged out under hsm: the key is as invisible as a
	 * destroyed one, but the token is the one to blame. */
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &ec), 0);
	EVP_PKEY_free(ec.public_key);
	assert_int_equal(own.hsm->f->C_Logout(own.hsm->login_session), CKR_OK);
	args.key = &ec;
	log = fixture_capture_stderr(use_key, &args, &r);
	assert_int_equal(r, HSM_E_DEVICE);
	assert_gone_logged(log);
	assert_int_equal(count_lines_with(log, "token failed; operations refused until it is recovered"), 1);
	assert_false(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "CKR_USER_NOT_LOGGED_IN");
	/* Recovery logs in again, and the key signs. */
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	find_one(&found);
	assert_string_equal(found[0].kid, ec.kid);
	args.key = &found[0];
	assert_int_equal(use_key(&args), 0);
	hsm_keys_free(found, 1);
	own_close();
}

/* A token that lost its login hides every private key and record and
 * otherwise answers: discovery then fails the token (HSM_E_DEVICE) instead
 * of reporting no keys, which would empty the JWKS and make every
 * algorithm "need" a new key. */
static void test_discovery_without_login_fails_the_token(void **state)
{
	struct hsm_key key, *found = NULL;
	size_t n = 0;
	const char *log;
	int r;

	own_open();
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, fixed_meta, "m", &key), 0);
	EVP_PKEY_free(key.public_key);
	assert_int_equal(own.hsm->f->C_Logout(own.hsm->login_session), CKR_OK);
	checked_keys = NULL;
	checked_count = 77;
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, HSM_E_DEVICE);
	assert_null(checked_keys);
	assert_int_equal(checked_count, 77);
	assert_non_null(strstr(log, "lost its login during key discovery"));
	assert_false(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "CKR_USER_NOT_LOGGED_IN");
	/* Recovered, the key and its record are there. */
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(found[0].kid, key.kid);
	assert_meta(&found[0].meta[0], "m");
	hsm_keys_free(found, n);
	own_close();
}

struct reader {
	pthread_t thread;
	pthread_mutex_t mutex;
	pthread_cond_t cond;
	int holding, release;
};

/* A thread inside the module, as far as hsm_recover can tell: it holds the
 * read lock every operation holds for its calls, until told to let go. */
static void *reader_main(void *arg)
{
	struct reader *rd = arg;

	pthread_rwlock_rdlock(&own.hsm->lock);
	pthread_mutex_lock(&rd->mutex);
	rd->holding = 1;
	pthread_cond_broadcast(&rd->cond);
	while (!rd->release)
		pthread_cond_wait(&rd->cond, &rd->mutex);
	pthread_mutex_unlock(&rd->mutex);
	pthread_rwlock_unlock(&own.hsm->lock);
	return NULL;
}

static int watchdog_1000(void *arg)
{
	return hsm_watchdog(own.hsm, 1000, 60000);
}

/* A signature inside the module longer than the call limit marks the
 * token failed ("hung", one warning); recovery waits for calls still
 * inside and gives up with -EBUSY while one stays, and succeeds once it has
 * returned.  A key generation (on a session of its own) and a discovery
 * (on the worker's session) in progress are watched too, against the
 * admin limit: over the call limit, they are not hung. */
static void test_watchdog_and_busy_recovery(void **state)
{
	struct reader rd = { .holding = 0, .release = 0 };
	struct hsm_key key, *found = NULL;
	const char *log;
	int r;

	own_open();
	hsm_set_pin_source(own.hsm, test_pin_read, test_pin_release, &tok);
	assert_int_equal(hsm_watchdog(own.hsm, 0, 0), 0); /* nothing in flight */

	/* The session's call began 10 s ago: a signature, under the call
	 * limit alone. */
	atomic_store(&own.session->call.started, hsm_now_ms() - 10000);
	assert_int_equal(hsm_watchdog(own.hsm, 60000, 0), 0);
	assert_true(hsm_available(own.hsm));
	log = fixture_capture_stderr(watchdog_1000, NULL, &r);
	assert_int_equal(r, 1);
	assert_false(hsm_available(own.hsm));
	assert_string_equal(hsm_failure(own.hsm), "hung");
	assert_int_equal(count_lines_with(log, "token failed; operations refused until it is recovered"), 1);
	assert_non_null(strstr(log, "reason=hung"));
	assert_non_null(strstr(log, "operation=call"));
	assert_non_null(strstr(log, "limit_ms=1000"));
	log = fixture_capture_stderr(watchdog_1000, NULL, &r);
	assert_int_equal(r, 1);
	assert_string_equal(log, "");
	atomic_store(&own.session->call.started, 0);

	pthread_mutex_init(&rd.mutex, NULL);
	pthread_cond_init(&rd.cond, NULL);
	assert_int_equal(pthread_create(&rd.thread, NULL, reader_main, &rd), 0);
	pthread_mutex_lock(&rd.mutex);
	while (!rd.holding)
		pthread_cond_wait(&rd.cond, &rd.mutex);
	pthread_mutex_unlock(&rd.mutex);
	log = fixture_capture_stderr(recover_now, NULL, &r);
	assert_int_equal(r, -EBUSY);
	assert_non_null(strstr(log, "a call is still inside the module"));
	assert_false(hsm_available(own.hsm));
	assert_int_equal(hsm_generation(own.hsm), 1);
	pthread_mutex_lock(&rd.mutex);
	rd.release = 1;
	pthread_cond_broadcast(&rd.cond);
	pthread_mutex_unlock(&rd.mutex);
	assert_int_equal(pthread_join(rd.thread, NULL), 0);
	pthread_cond_destroy(&rd.cond);
	pthread_mutex_destroy(&rd.mutex);
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	assert_true(hsm_available(own.hsm));
	assert_int_equal(hsm_generation(own.hsm), 2);
	assert_int_equal(hsm_session_check(own.session), 0);

	/* A key generation inside the module is in the watchdog's view. */
	wrap_install(own.hsm);
	wrap.watchdog_inside = 1;
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &key), 0);
	EVP_PKEY_free(key.public_key);
	assert_int_equal(wrap.watchdog_said[0], 0);
	assert_int_equal(wrap.watchdog_said[1], 1);
	assert_string_equal(hsm_failure(own.hsm), "hung");
	wrap_remove(own.hsm);
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	assert_int_equal(hsm_generation(own.hsm), 3);

	/* So is a discovery, on the worker's session. */
	wrap_install(own.hsm);
	wrap.watchdog_inside = 1;
	find_one(&found);
	assert_int_equal(wrap.watchdog_said[0], 0);
	assert_int_equal(wrap.watchdog_said[1], 1);
	assert_string_equal(hsm_failure(own.hsm), "hung");
	hsm_keys_free(found, 1);
	wrap_remove(own.hsm);
	assert_int_equal(hsm_recover(own.hsm, 1000), 0);
	assert_int_equal(hsm_generation(own.hsm), 4);
	own_close();
}

/* ---- HS256 ----------------------------------------------------------- */

/* The attributes of obj, read through the raw client: each of types[] into
 * bools[] (CK_BBOOL attributes only). */
static void raw_read_bools(struct raw *raw, CK_OBJECT_HANDLE obj, const CK_ATTRIBUTE_TYPE *types, CK_BBOOL *bools,
			   size_t n)
{
	for (size_t i = 0; i < n; i++) {
		CK_ATTRIBUTE a = { types[i], &bools[i], sizeof(bools[i]) };
		assert_int_equal(raw->f->C_GetAttributeValue(raw->s, obj, &a, 1), CKR_OK);
		assert_int_equal(a.ulValueLen, sizeof(CK_BBOOL));
	}
}

/* An HS256 key lives in the token as a secret that signs and verifies and
 * nothing else, never leaves it, and verification runs in the token. */
static void test_hs256_key_in_the_token(void **state)
{
	static const CK_ATTRIBUTE_TYPE types[] = {
		CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_TOKEN, CKA_PRIVATE,
		CKA_SIGN, CKA_VERIFY, CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE,
	};
	static const CK_BBOOL want[] = { 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 };
	const uint8_t data[] = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0";
	struct hsm_key key, ec, *found = NULL;
	uint8_t sig[64], again[64], secret[64], id[64], raw_id[64];
	size_t sig_len = sizeof(sig), again_len = sizeof(again), id_len = 0;
	CK_BBOOL bools[sizeof(types) / sizeof(types[0])];
	CK_KEY_TYPE type = 0;
	CK_ULONG value_len = 0;
	char label[128], kid[JWK_THUMBPRINT_LEN + 1];
	enum jws_alg alg;
	size_t n = 0;
	int at;

	own_open();
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_HS256, 0, fixed_meta, "hs", &key), 0);
	assert_int_equal(key.alg, JWS_ALG_HS256);
	assert_null(key.public_key);
	assert_int_equal(key.public_handle, CK_INVALID_HANDLE);
	assert_int_equal(key.meta_count, 1);
	key_label(&key, label);
	assert_int_equal(hsm_parse_label(label, &alg, kid), 0);
	assert_int_equal(alg, JWS_ALG_HS256);
	assert_int_equal(b64url_decode(key.kid, strlen(key.kid), id, &id_len), 0);
	assert_int_equal(id_len, 32);
	assert_int_equal(hsm_generate_key(own.hsm, JWS_ALG_ES256, 0, NULL, NULL, &ec), 0);

	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, 2);
	at = find_kid(found, n, key.kid);
	assert_true(at >= 0);
	assert_int_equal(found[at].alg, JWS_ALG_HS256);
	assert_null(found[at].public_key);
	assert_int_equal(found[at].public_handle, CK_INVALID_HANDLE);
	assert_int_equal(found[at].private_handle, key.private_handle);
	assert_int_equal(found[at].meta_count, 1);
	assert_meta(&found[at].meta[0], "hs");

	/* Sign in the token, verify in the token. */
	assert_int_equal(hsm_sign(own.session, &found[at], data, sizeof(data) - 1, sig, &sig_len), 0);
	assert_int_equal(sig_len, 32);
	assert_int_equal(hsm_sign(own.session, &found[at], data, sizeof(data) - 1, again, &again_len), 0);
	assert_memory_equal(sig, again, 32); /* a MAC: the same input, the same tag */
	assert_int_equal(hsm_verify(own.session, &found[at], data, sizeof(data) - 1, sig, sig_len), 0);
	sig[7] ^= 0x10;
	assert_int_equal(hsm_verify(own.session, &found[at], data, sizeof(data) - 1, sig, sig_len), -EBADMSG);
	sig[7] ^= 0x10;
	assert_int_equal(hsm_verify(own.session, &found[at], data, sizeof(data) - 2, sig, sig_len), -EBADMSG);
	assert_int_equal(hsm_verify(own.session, &found[at], data, sizeof(data) - 1, sig, 31), -EBADMSG);
	assert_int_equal(hsm_verify(own.session, &found[at], data, sizeof(data) - 1, sig, sig_len), 0);
	/* hsm_verify is HS256's alone. */
	assert_int_equal(hsm_verify(own.session, &found[1 - at], data, sizeof(data) - 1, sig, sig_len), -EINVAL);

	/* What the token says of the key, asked by another client. */
	raw_open(&own.raw);
	raw_read_bools(&own.raw, key.private_handle, types, bools, sizeof(types) / sizeof(types[0]));
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (bools[i] != want[i])
			fail_msg("attribute 0x%lx is %d", (unsigned long)types[i], bools[i]);
	CK_ATTRIBUTE attrs[] = {
		{ CKA_KEY_TYPE, &type, sizeof(type) }, { CKA_VALUE_LEN, &value_len, sizeof(value_len) },
		{ CKA_ID, raw_id, sizeof(raw_id) },
	};
	assert_int_equal(own.raw.f->C_GetAttributeValue(own.raw.s, key.private_handle, attrs, 3), CKR_OK);
	assert_int_equal(type, CKK_GENERIC_SECRET);
	assert_int_equal(value_len, 32);
	assert_int_equal(attrs[2].ulValueLen, 32);
	assert_memory_equal(raw_id, id, 32);
	/* The secret itself never comes out. */
	CK_ATTRIBUTE value = { CKA_VALUE, secret, sizeof(secret) };
	assert_int_equal(own.raw.f->C_GetAttributeValue(own.raw.s, key.private_handle, &value, 1),
			 CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(value.ulValueLen, CK_UNAVAILABLE_INFORMATION);

	assert_int_equal(hsm_destroy_key(own.hsm, &found[at]), 0);
	assert_int_equal(raw_count_labelled(&own.raw, label), 0);
	raw_close(&own.raw);
	hsm_keys_free(found, n);
	EVP_PKEY_free(ec.public_key);
	assert_int_equal(hsm_find_keys(own.session, &found, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(found[0].kid, ec.kid);
	hsm_keys_free(found, n);
	own_close();
}

/* A secret key made by someone else under an HS256 label. */
static CK_OBJECT_HANDLE raw_create_secret(struct raw *raw, CK_KEY_TYPE type, CK_ULONG len, CK_BBOOL extractable,
					  const char *alg_name, char *ret_label)
{
	CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_BBOOL yes = CK_TRUE;
	uint8_t id[32];
	char kid[JWK_THUMBPRINT_LEN + 1];
	CK_OBJECT_HANDLE h;

	assert_int_equal(RAND_bytes(id, sizeof(id)), 1);
	b64url_encode(id, sizeof(id), kid);
	snprintf(ret_label, 128, HSM_LABEL_PREFIX "%s:%s", alg_name, kid);
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_VALUE_LEN, &len, sizeof(len) }, { CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) }, { CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &extractable, sizeof(extractable) }, { CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_VERIFY, &yes, sizeof(yes) }, { CKA_LABEL, ret_label, strlen(ret_label) },
	};
	assert_int_equal(raw->f->C_GenerateKey(raw->s, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h), CKR_OK);
	return h;
}

/* Secret keys under hsmjwt labels are loaded only when they are HS256
 * keys kept in the token: sensitive from birth, never extractable, 32
 * bytes at least; a secret under a key pair's label is not one. */
static void test_refuses_secret_keys_without_custody(void **state)
{
	char proper[128], extractable[128], short_key[128], wrong_alg[128];
	const char *log;
	int r;

	raw_open(&own.raw);
	raw_create_secret(&own.raw, CKK_GENERIC_SECRET, 32, CK_FALSE, "HS256", proper);
	raw_create_secret(&own.raw, CKK_GENERIC_SECRET, 32, CK_TRUE, "HS256", extractable);
	raw_create_secret(&own.raw, CKK_GENERIC_SECRET, 16, CK_FALSE, "HS256", short_key);
	raw_create_secret(&own.raw, CKK_GENERIC_SECRET, 32, CK_FALSE, "ES256", wrong_alg);
	raw_close(&own.raw);

	own_open();
	log = fixture_capture_stderr(own_find_keys_kept, NULL, &r);
	assert_int_equal(r, 0);
	assert_int_equal(checked_count, 1);
	assert_int_equal(checked_keys[0].alg, JWS_ALG_HS256);
	assert_string_equal(checked_keys[0].kid, proper + strlen(HSM_LABEL_PREFIX "HS256:"));
	hsm_keys_free(checked_keys, checked_count);
	assert_logged(log, extractable, "attribute=CKA_EXTRACTABLE value=true");
	assert_logged(log, short_key, "attribute=CKA_VALUE_LEN value=16");
	assert_logged(log, wrong_alg, "attribute=CKA_CLASS");
	own_close();
}

int main(int argc, char **argv)
{
	if (argc == 4)
		return child_main(argv[1], argv[2], argv[3]);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wrong_pin_is_refused),
		cmocka_unit_test(test_missing_pin_is_refused),
		cmocka_unit_test(test_unknown_token),
		cmocka_unit_test(test_bad_module),
		cmocka_unit_test(test_open_by_uri),
		cmocka_unit_test(test_generate_find_sign_destroy),
		cmocka_unit_test(test_sign_with_too_small_buffer_fails),
		cmocka_unit_test(test_alg_supported),
		cmocka_unit_test(test_parse_label_takes_base64url_kids_only),
		cmocka_unit_test(test_ec_params_match),
		cmocka_unit_test(test_rv_verdict_skips_only_on_definite_answers),
		cmocka_unit_test_setup_teardown(test_generated_keys_pass_the_custody_check, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_label_with_newline_is_not_logged_raw, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_finds_keys_among_many_foreign_keys, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_too_many_hsmjwt_keys_is_an_error, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_too_many_private_keys_is_an_error, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_refuses_keys_without_token_custody, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_close_leaves_a_module_initialised_by_another, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_out_of_memory_is_not_a_bad_label, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_session_check_logs_changes_only, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_records_follow_their_key, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_public_records_are_not_records, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_public_keys_are_not_keys, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_forged_public_half_is_passed_over, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_hs256_key_in_the_token, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_refuses_secret_keys_without_custody, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_generation_makes_the_record_first_and_cleans_up, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_record_is_written_after_generation, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_token_full_is_not_a_failure, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_destroy_goes_on_past_a_refusal, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_device_failure_and_recovery, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_pin_refused_at_recovery_is_not_retried, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_close_a_failed_token, own_token_setup, own_token_teardown),
		cmocka_unit_test_setup_teardown(test_recovery_keeps_the_label_read_back, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_key_gone_is_stale_login_gone_is_failed, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_discovery_without_login_fails_the_token, own_token_setup,
						own_token_teardown),
		cmocka_unit_test_setup_teardown(test_watchdog_and_busy_recovery, own_token_setup, own_token_teardown),
	};
	int r = fixture_token_create(&tok);
	if (r != 0)
		return r == 77 ? 77 : 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_token_destroy(&tok);
	return r;
}
