/* jws: compact JWS mechanics — signing, parsing, the lookup callback, the
 * ECDSA range check at its edges, HMAC keys — on their own.
 *
 * The header and signature rules of SPEC §5.2 (alg none, keys refusing
 * other families, forbidden members, base64url spelling, size and depth
 * limits, ECDSA, RSA and PSS signature forms) are cases of the shared table
 * in fixture_rules.c, which the daemon's verifier (test_jwt.c) and
 * libhsmjwt-verify (test_verify.c) both run; what stays here needs the
 * functions themselves or a secret key no JWKS carries. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "fixture.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jws.h"

static EVP_PKEY *pk_rsa, *pk_p256, *pk_p384, *pk_p521, *pk_ed;
static uint8_t hmac_secret[64];

/* The verification key set the lookup serves, by kid. */
static struct { const char *kid; struct jwk_key *key; } keyset[8];
static size_t keyset_len;

struct lookup_ctx {
	int calls;
	int saw_null_kid;
	char last_kid[64];
};

static const struct jwk_key *lookup(void *ctx, const char *kid)
{
	struct lookup_ctx *l = ctx;

	if (l != NULL) {
		l->calls++;
		l->saw_null_kid = kid == NULL;
		snprintf(l->last_kid, sizeof(l->last_kid), "%s", kid ? kid : "");
	}
	for (size_t i = 0; kid != NULL && i < keyset_len; i++)
		if (strcmp(keyset[i].kid, kid) == 0)
			return keyset[i].key;
	return NULL;
}

static EVP_PKEY *pkey_for(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_RS256: case JWS_ALG_RS384: case JWS_ALG_RS512:
	case JWS_ALG_PS256: case JWS_ALG_PS384: case JWS_ALG_PS512: return pk_rsa;
	case JWS_ALG_ES256: return pk_p256;
	case JWS_ALG_ES384: return pk_p384;
	case JWS_ALG_ES512: return pk_p521;
	case JWS_ALG_EDDSA: return pk_ed;
	default: return NULL;
	}
}

static const char *kid_for(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_HS256: case JWS_ALG_HS384: case JWS_ALG_HS512: return "oct";
	case JWS_ALG_ES256: return "p256";
	case JWS_ALG_ES384: return "p384";
	case JWS_ALG_ES512: return "p521";
	case JWS_ALG_EDDSA: return "ed";
	default: return "rsa";
	}
}

static const EVP_MD *md_for(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_HS256: return EVP_sha256();
	case JWS_ALG_HS384: return EVP_sha384();
	case JWS_ALG_HS512: return EVP_sha512();
	default: return NULL;
	}
}

static int hmac_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	const enum jws_alg *alg = ctx;
	unsigned int len = 0;

	if (HMAC(md_for(*alg), hmac_secret, sizeof(hmac_secret), data, data_len, sig, &len) == NULL)
		return -1;
	*sig_len = len;
	return 0;
}

/* Signs data the way the alg's real signer does. */
static void sign_raw(enum jws_alg alg, const char *data, size_t len, uint8_t *sig, size_t *sig_len)
{
	if (md_for(alg) != NULL) {
		assert_int_equal(hmac_sign(&alg, (const uint8_t *)data, len, sig, sig_len), 0);
	} else {
		struct fixture_signer s = { .pkey = pkey_for(alg), .alg = alg };
		assert_int_equal(fixture_sign(&s, (const uint8_t *)data, len, sig, sig_len), 0);
	}
}

/* Signs the encoded parts as they stand, however they are spelled. */
static char *token_from_b64(enum jws_alg alg, const char *h, const char *p)
{
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);
	char *input = NULL, *token;

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(alg, input, strlen(input), sig, &sig_len);
	token = fixture_assemble(h, p, sig, sig_len);
	free(input);
	return token;
}

static char *token_from_json(enum jws_alg alg, const char *header, const char *payload)
{
	char *h = fixture_b64(header), *p = fixture_b64(payload), *token;

	token = token_from_b64(alg, h, p);
	free(h);
	free(p);
	return token;
}

/* {"alg":..,"kid":..<extra>} for alg's key. */
static char *header_with(enum jws_alg alg, const char *extra)
{
	char *h = NULL;

	assert_true(asprintf(&h, "{\"alg\":\"%s\",\"kid\":\"%s\"%s}", jws_alg_name(alg), kid_for(alg), extra) > 0);
	return h;
}

/* jws_verify against the key set; ret_parsed must stay untouched on failure. */
static int verify(const char *token)
{
	struct jws_parsed *parsed = (struct jws_parsed *)0x1;
	struct lookup_ctx l = { 0 };
	int r = jws_verify(token, strlen(token), lookup, &l, &parsed);

	if (r == 0) {
		assert_non_null(parsed);
		assert_ptr_not_equal(parsed, (struct jws_parsed *)0x1);
		jws_parsed_free(parsed);
	} else {
		assert_ptr_equal(parsed, (struct jws_parsed *)0x1);
	}
	return r;
}

/* Asserts that good verifies and bad fails with want; frees both. */
static void expect_pair(char *good, char *bad, int want)
{
	assert_int_equal(verify(good), 0);
	assert_int_equal(verify(bad), want);
	free(good);
	free(bad);
}

static void add_key(const char *kid, struct jwk_key *key)
{
	assert_non_null(key);
	keyset[keyset_len].kid = kid;
	keyset[keyset_len].key = key;
	keyset_len++;
}

/* Verification keys come from public JWKs without "alg", so that the key
 * type alone decides the family (RS* and PS* on the one RSA key). */
static struct jwk_key *public_jwk_key(EVP_PKEY *pkey)
{
	struct jwk_key *key = NULL;
	json_t *jwk = NULL;

	assert_int_equal(jwk_public_to_json(pkey, NULL, JWS_ALG_INVALID, &jwk), 0);
	assert_int_equal(jwk_key_from_json(jwk, &key), 0);
	json_decref(jwk);
	return key;
}

static int setup(void **state)
{
	struct jwk_key *oct = NULL, *rs256_only = NULL;
	json_t *jwk;
	char *k;

	pk_rsa = fixture_keypair(JWS_ALG_RS256);
	pk_p256 = fixture_keypair(JWS_ALG_ES256);
	pk_p384 = fixture_keypair(JWS_ALG_ES384);
	pk_p521 = fixture_keypair(JWS_ALG_ES512);
	pk_ed = fixture_keypair(JWS_ALG_EDDSA);
	if (!pk_rsa || !pk_p256 || !pk_p384 || !pk_p521 || !pk_ed)
		return -1;
	for (size_t i = 0; i < sizeof(hmac_secret); i++)
		hmac_secret[i] = (uint8_t)(0xa5 ^ i * 31);
	add_key("rsa", public_jwk_key(pk_rsa));
	add_key("p256", public_jwk_key(pk_p256));
	add_key("p384", public_jwk_key(pk_p384));
	add_key("p521", public_jwk_key(pk_p521));
	add_key("ed", public_jwk_key(pk_ed));
	k = fixture_b64_bytes(hmac_secret, sizeof(hmac_secret));
	jwk = json_pack("{s:s, s:s}", "kty", "oct", "k", k);
	free(k);
	if (jwk_key_from_json(jwk, &oct) != 0)
		return -1;
	json_decref(jwk);
	add_key("oct", oct);
	if (jwk_key_from_pkey(pk_rsa, JWS_ALG_RS256, &rs256_only) != 0)
		return -1;
	add_key("rs256-only", rs256_only);
	return 0;
}

static int teardown(void **state)
{
	for (size_t i = 0; i < keyset_len; i++)
		jwk_key_free(keyset[i].key);
	EVP_PKEY_free(pk_rsa);
	EVP_PKEY_free(pk_p256);
	EVP_PKEY_free(pk_p384);
	EVP_PKEY_free(pk_p521);
	EVP_PKEY_free(pk_ed);
	return 0;
}

/* ---- round trips ---- */

struct sign_ctx {
	enum jws_alg alg;
	int calls;
};

static int any_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	struct sign_ctx *s = ctx;

	s->calls++;
	if (md_for(s->alg) != NULL)
		return hmac_sign(&s->alg, data, data_len, sig, sig_len);
	struct fixture_signer f = { .pkey = pkey_for(s->alg), .alg = s->alg };
	return fixture_sign(&f, data, data_len, sig, sig_len);
}

static void test_round_trip_every_alg(void **state)
{
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		enum jws_alg alg = (enum jws_alg)a;
		struct sign_ctx sctx = { .alg = alg };
		json_t *header = json_pack("{s:s, s:s, s:s}", "alg", jws_alg_name(alg), "kid", kid_for(alg), "typ", "JWT");
		json_t *payload = json_pack("{s:s, s:i}", "sub", "alice", "exp", 2000000000);
		struct jws_parsed *parsed = NULL;
		struct lookup_ctx l = { 0 };
		char *token = NULL, *expected_h, *dot;

		assert_int_equal(jws_sign_compact(header, payload, any_sign, &sctx, &token), 0);
		assert_int_equal(sctx.calls, 1);
		/* Compact JSON, members in insertion order. */
		expected_h = NULL;
		assert_true(asprintf(&expected_h, "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}", jws_alg_name(alg),
				     kid_for(alg)) > 0);
		{
			char *h = fixture_b64(expected_h);
			assert_memory_equal(token, h, strlen(h));
			assert_int_equal(token[strlen(h)], '.');
			free(h);
		}
		assert_int_equal(jws_verify(token, strlen(token), lookup, &l, &parsed), 0);
		assert_int_equal(l.calls, 1);
		assert_string_equal(l.last_kid, kid_for(alg));
		assert_int_equal(parsed->alg, alg);
		assert_string_equal(parsed->kid, kid_for(alg));
		assert_string_equal((const char *)parsed->payload, "{\"sub\":\"alice\",\"exp\":2000000000}");
		assert_int_equal(parsed->payload_len, strlen("{\"sub\":\"alice\",\"exp\":2000000000}"));
		dot = strrchr(token, '.');
		assert_int_equal(parsed->signing_input_len, (size_t)(dot - token));
		assert_string_equal(json_string_value(json_object_get(parsed->header, "typ")), "JWT");
		jws_parsed_free(parsed);

		/* Another payload under the same signature does not verify. */
		{
			char *p = fixture_b64("{\"sub\":\"mallory\",\"exp\":2000000000}"), *forged = NULL;
			char *first_dot = strchr(token, '.');
			assert_true(asprintf(&forged, "%.*s.%s%s", (int)(first_dot - token), token, p, dot) > 0);
			assert_int_equal(verify(forged), JWS_E_BAD_SIGNATURE);
			free(forged);
			free(p);
		}
		/* Nor does a signature with one bit flipped. */
		{
			struct jws_parsed *tmp = NULL;
			uint8_t sig[JWS_MAX_SIG];
			char *h_p = strndup(token, (size_t)(dot - token)), *flipped;
			char *second = strchr(h_p, '.');
			assert_int_equal(jws_parse(token, strlen(token), &tmp), 0);
			memcpy(sig, tmp->signature, tmp->signature_len);
			sig[tmp->signature_len / 2] ^= 0x01;
			*second = '\0';
			flipped = fixture_assemble(h_p, second + 1, sig, tmp->signature_len);
			assert_int_equal(verify(flipped), JWS_E_BAD_SIGNATURE);
			free(flipped);
			free(h_p);
			jws_parsed_free(tmp);
		}
		free(expected_h);
		free(token);
		json_decref(header);
		json_decref(payload);
	}
}

static void test_payload_is_opaque(void **state)
{
	char *h = header_with(JWS_ALG_ES256, ""), *token = token_from_json(JWS_ALG_ES256, h, "not json at all");
	struct jws_parsed *parsed = NULL;

	assert_int_equal(jws_verify(token, strlen(token), lookup, NULL, &parsed), 0);
	assert_string_equal((const char *)parsed->payload, "not json at all");
	jws_parsed_free(parsed);
	free(token);
	/* An empty payload is a JWS too. */
	{
		char *hb = fixture_b64(h);
		token = token_from_b64(JWS_ALG_ES256, hb, "");
		free(hb);
	}
	assert_int_equal(jws_verify(token, strlen(token), lookup, NULL, &parsed), 0);
	assert_int_equal(parsed->payload_len, 0);
	assert_string_equal((const char *)parsed->payload, "");
	jws_parsed_free(parsed);
	free(token);
	free(h);
}

static void test_sign_compact_limits(void **state)
{
	struct sign_ctx sctx = { .alg = JWS_ALG_ES256 };
	json_t *header = json_pack("{s:s, s:s}", "alg", "ES256", "kid", "p256");
	json_t *payload = json_object();
	char *big = malloc(JWS_MAX_PAYLOAD + 1), *token = (char *)0x1;

	assert_non_null(big);
	memset(big, 'x', JWS_MAX_PAYLOAD);
	big[JWS_MAX_PAYLOAD] = '\0';
	json_object_set_new(payload, "pad", json_string(big));
	/* Never signs what verification would refuse. */
	assert_int_equal(jws_sign_compact(header, payload, any_sign, &sctx, &token), -E2BIG);
	assert_int_equal(sctx.calls, 0);
	assert_ptr_equal(token, (char *)0x1);
	/* Not objects. */
	assert_int_equal(jws_sign_compact(header, json_object_get(payload, "pad"), any_sign, &sctx, &token), -EINVAL);
	free(big);
	json_decref(header);
	json_decref(payload);
}

static int failing_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	return -EIO;
}

static void test_sign_compact_signer_failure(void **state)
{
	json_t *header = json_pack("{s:s}", "alg", "ES256"), *payload = json_object();
	char *token = (char *)0x1;

	assert_int_equal(jws_sign_compact(header, payload, failing_sign, NULL, &token), -EIO);
	assert_ptr_equal(token, (char *)0x1);
	json_decref(header);
	json_decref(payload);
}

/* ---- algorithm rules ---- */

/* The classic confusion: HS256 keyed with the RSA public key's bytes. */
static void test_alg_confusion_hs256_with_rsa_public_key(void **state)
{
	const char *input_h = "{\"alg\":\"HS256\",\"kid\":\"rsa\"}";
	uint8_t *der = NULL, mac[32];
	unsigned int mac_len = 0;
	char *h = fixture_b64(input_h), *p = fixture_b64("{\"sub\":\"admin\"}"), *input = NULL, *token;
	int der_len = i2d_PUBKEY(pk_rsa, &der);
	const struct jwk_key *rsa_key = lookup(NULL, "rsa");

	assert_true(der_len > 0);
	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_non_null(HMAC(EVP_sha256(), der, der_len, (const uint8_t *)input, strlen(input), mac, &mac_len));
	token = fixture_assemble(h, p, mac, mac_len);
	/* The token's verdict is a shared rule case; here, jws_verify_signature
	 * called directly with the RSA key. */
	assert_int_equal(jws_verify_signature(JWS_ALG_HS256, rsa_key, (const uint8_t *)input, strlen(input), mac,
					      mac_len),
			 JWS_E_UNSUPPORTED_ALG);
	/* And an HMAC key never verifies an RSA signature. */
	{
		char *t = token_from_json(JWS_ALG_RS256, "{\"alg\":\"RS256\",\"kid\":\"oct\"}", "{}");
		assert_int_equal(verify(t), JWS_E_UNSUPPORTED_ALG);
		free(t);
	}
	OPENSSL_free(der);
	free(token);
	free(input);
	free(h);
	free(p);
}

/* ---- kid ---- */

static void test_unknown_kid(void **state)
{
	/* No kid at all: the lookup is asked for NULL and finds nothing here. */
	{
		char *t = token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\"}", "{}");
		struct jws_parsed *parsed = NULL;
		struct lookup_ctx l = { 0 };
		assert_int_equal(jws_verify(t, strlen(t), lookup, &l, &parsed), JWS_E_UNKNOWN_KID);
		assert_int_equal(l.calls, 1);
		assert_true(l.saw_null_kid);
		assert_null(parsed);
		free(t);
	}
}

static const struct jwk_key *default_key_lookup(void *ctx, const char *kid)
{
	/* A relying party with one key answers every kid, including none. */
	return kid == NULL ? ctx : NULL;
}

static void test_kid_lookup_callback(void **state)
{
	char *t = token_from_json(JWS_ALG_EDDSA, "{\"alg\":\"EdDSA\"}", "{}");
	struct jws_parsed *parsed = NULL;

	assert_int_equal(jws_verify(t, strlen(t), default_key_lookup, (void *)lookup(NULL, "ed"), &parsed), 0);
	assert_null(parsed->kid);
	jws_parsed_free(parsed);
	/* The wrong key behind the lookup: a bad signature, not a crash. */
	parsed = NULL;
	{
		char *t2 = token_from_json(JWS_ALG_EDDSA, "{\"alg\":\"EdDSA\"}", "{\"x\":1}");
		EVP_PKEY *other = fixture_keypair(JWS_ALG_EDDSA);
		struct jwk_key *k = NULL;
		assert_int_equal(jwk_key_from_pkey(other, JWS_ALG_EDDSA, &k), 0);
		assert_int_equal(jws_verify(t2, strlen(t2), default_key_lookup, k, &parsed), JWS_E_BAD_SIGNATURE);
		assert_null(parsed);
		jwk_key_free(k);
		EVP_PKEY_free(other);
		free(t2);
	}
	/* No lookup at all. */
	assert_int_equal(jws_verify(t, strlen(t), NULL, NULL, &parsed), JWS_E_UNKNOWN_KID);
	free(t);
}

/* jws_ecdsa_sig_check on its own: the range 0 < r, s < n, at its edges,
 * for every curve, with n taken from OpenSSL. */
static void test_ecdsa_range_check(void **state)
{
	struct { EVP_PKEY *pkey; int nid; size_t half; } curves[] = {
		{ pk_p256, NID_X9_62_prime256v1, 32 }, { pk_p384, NID_secp384r1, 48 }, { pk_p521, NID_secp521r1, 66 },
	};

	for (size_t c = 0; c < 3; c++) {
		EC_GROUP *group = EC_GROUP_new_by_curve_name(curves[c].nid);
		const BIGNUM *n = EC_GROUP_get0_order(group);
		BIGNUM *n_minus_1 = BN_dup(n), *n_plus_1 = BN_dup(n);
		size_t half = curves[c].half;
		uint8_t sig[133], bn_n[66], bn_nm1[66], bn_np1[66], one[66], ff[66], zero[66];

		assert_non_null(group);
		assert_int_equal((size_t)BN_num_bytes(n), half);
		assert_true(BN_sub_word(n_minus_1, 1));
		assert_true(BN_add_word(n_plus_1, 1));
		assert_int_equal(BN_bn2binpad(n, bn_n, (int)half), (int)half);
		assert_int_equal(BN_bn2binpad(n_minus_1, bn_nm1, (int)half), (int)half);
		assert_int_equal(BN_bn2binpad(n_plus_1, bn_np1, (int)half), (int)half);
		memset(one, 0, half);
		one[half - 1] = 1;
		memset(ff, 0xff, half);

#define SIG(r_, s_) (memcpy(sig, (r_), half), memcpy(sig + half, (s_), half), sig)
		/* The edges that pass: 1 and n - 1. */
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, one), 2 * half), 0);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(bn_nm1, bn_nm1), 2 * half), 0);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, bn_nm1), 2 * half), 0);
		/* r or s = n, n + 1, all ones. */
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(bn_n, one), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, bn_n), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(bn_np1, one), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, bn_np1), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(ff, one), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, ff), 2 * half), JWS_E_BAD_SIGNATURE);
		/* r or s = 0. */
		memset(zero, 0, half);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(zero, one), 2 * half), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, SIG(one, zero), 2 * half), JWS_E_BAD_SIGNATURE);
		/* Lengths: one byte short or long. */
		SIG(one, one);
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, sig, 2 * half - 1), JWS_E_BAD_SIGNATURE);
		sig[2 * half] = 0;
		assert_int_equal(jws_ecdsa_sig_check(curves[c].pkey, sig, 2 * half + 1), JWS_E_BAD_SIGNATURE);
#undef SIG
		BN_free(n_minus_1);
		BN_free(n_plus_1);
		EC_GROUP_free(group);
	}
	/* Not an EC key. */
	{
		uint8_t sig[64] = { 1 };
		sig[63] = 1;
		assert_int_equal(jws_ecdsa_sig_check(pk_ed, sig, sizeof(sig)), JWS_E_BAD_SIGNATURE);
		assert_int_equal(jws_ecdsa_sig_check(NULL, sig, sizeof(sig)), JWS_E_BAD_SIGNATURE);
	}
}

/* ---- HMAC ---- */

static void test_hmac_rules(void **state)
{
	char *h = fixture_b64("{\"alg\":\"HS256\",\"kid\":\"oct\"}"), *p = fixture_b64("{\"sub\":\"alice\"}"), *input = NULL, *t;
	uint8_t mac[64], other_key[64];
	unsigned int mac_len = 0;
	size_t len = sizeof(mac);

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(JWS_ALG_HS256, input, strlen(input), mac, &len);
	assert_int_equal(len, 32);
	/* Truncated MAC. */
	expect_pair(fixture_assemble(h, p, mac, 32), fixture_assemble(h, p, mac, 16), JWS_E_BAD_SIGNATURE);
	/* MAC under another secret. */
	memset(other_key, 0x42, sizeof(other_key));
	assert_non_null(HMAC(EVP_sha256(), other_key, sizeof(other_key), (const uint8_t *)input, strlen(input), mac,
			     &mac_len));
	t = fixture_assemble(h, p, mac, mac_len);
	assert_int_equal(verify(t), JWS_E_BAD_SIGNATURE);
	free(t);
	/* The same secret behind a 32-byte key refuses HS512. */
	{
		struct jwk_key *short_key = NULL;
		char *k = fixture_b64_bytes(hmac_secret, 32);
		json_t *jwk = json_pack("{s:s, s:s}", "kty", "oct", "k", k);
		uint8_t mac512[64];
		unsigned int mac512_len = 0;
		assert_int_equal(jwk_key_from_json(jwk, &short_key), 0);
		assert_non_null(HMAC(EVP_sha512(), hmac_secret, 32, (const uint8_t *)input, strlen(input), mac512,
				     &mac512_len));
		assert_int_equal(jws_verify_signature(JWS_ALG_HS512, short_key, (const uint8_t *)input, strlen(input),
						      mac512, mac512_len),
				 JWS_E_UNSUPPORTED_ALG);
		assert_non_null(HMAC(EVP_sha256(), hmac_secret, 32, (const uint8_t *)input, strlen(input), mac,
				     &mac_len));
		assert_int_equal(jws_verify_signature(JWS_ALG_HS256, short_key, (const uint8_t *)input, strlen(input),
						      mac, mac_len),
				 0);
		jwk_key_free(short_key);
		json_decref(jwk);
		free(k);
	}
	free(input);
	free(h);
	free(p);
}

static void test_error_reasons(void **state)
{
	assert_string_equal(jws_error_reason(JWS_E_MALFORMED), "malformed");
	assert_string_equal(jws_error_reason(JWS_E_UNSUPPORTED_ALG), "unsupported_alg");
	assert_string_equal(jws_error_reason(JWS_E_UNKNOWN_KID), "unknown_kid");
	assert_string_equal(jws_error_reason(JWS_E_BAD_SIGNATURE), "bad_signature");
	assert_string_equal(jws_error_reason(JWS_E_EXPIRED), "expired");
	assert_string_equal(jws_error_reason(JWS_E_NOT_YET_VALID), "not_yet_valid");
	assert_string_equal(jws_error_reason(JWS_E_WRONG_AUDIENCE), "wrong_audience");
	assert_string_equal(jws_error_reason(JWS_E_WRONG_ISSUER), "wrong_issuer");
	assert_string_equal(jws_error_reason(JWS_E_WRONG_TYPE), "wrong_type");
	assert_string_equal(jws_error_reason(JWS_E_REVOKED), "revoked");
	assert_string_equal(jws_error_reason(JWS_E_SUSPENDED), "suspended");
	assert_string_equal(jws_error_reason(-ENOMEM), "internal_error");
	assert_string_equal(jws_error_reason(0), "internal_error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_every_alg),
		cmocka_unit_test(test_payload_is_opaque),
		cmocka_unit_test(test_sign_compact_limits),
		cmocka_unit_test(test_sign_compact_signer_failure),
		cmocka_unit_test(test_alg_confusion_hs256_with_rsa_public_key),
		cmocka_unit_test(test_unknown_kid),
		cmocka_unit_test(test_kid_lookup_callback),
		cmocka_unit_test(test_ecdsa_range_check),
		cmocka_unit_test(test_hmac_rules),
		cmocka_unit_test(test_error_reasons),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
