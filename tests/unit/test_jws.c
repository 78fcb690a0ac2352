/* jws: compact JWS parse/verify/sign and every header rule of SPEC §5.2.
 *
 * Each rule has a token that is valid except for that one defect — signed
 * with the real key over exactly the bytes it carries — so that removing the
 * rule makes the test fail; the same token without the defect is checked to
 * pass. */
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

static char *b64_bytes(const uint8_t *buf, size_t len)
{
	char *s = NULL;

	assert_int_equal(b64url_encode_alloc(buf, len, &s), 0);
	return s;
}

static char *b64(const char *text)
{
	return b64_bytes((const uint8_t *)text, strlen(text));
}

/* "h.p.sig" with sig given. */
static char *assemble(const char *h, const char *p, const uint8_t *sig, size_t sig_len)
{
	char *s = b64_bytes(sig, sig_len), *token = NULL;

	assert_true(asprintf(&token, "%s.%s.%s", h, p, s) > 0);
	free(s);
	return token;
}

/* Signs the encoded parts as they stand, however they are spelled. */
static char *token_from_b64(enum jws_alg alg, const char *h, const char *p)
{
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);
	char *input = NULL, *token;

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(alg, input, strlen(input), sig, &sig_len);
	token = assemble(h, p, sig, sig_len);
	free(input);
	return token;
}

static char *token_from_json(enum jws_alg alg, const char *header, const char *payload)
{
	char *h = b64(header), *p = b64(payload), *token;

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

static char *good_token(enum jws_alg alg, const char *extra_header)
{
	char *h = header_with(alg, extra_header), *token;

	token = token_from_json(alg, h, "{\"sub\":\"alice\"}");
	free(h);
	return token;
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
	k = b64_bytes(hmac_secret, sizeof(hmac_secret));
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
			char *h = b64(expected_h);
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
			char *p = b64("{\"sub\":\"mallory\",\"exp\":2000000000}"), *forged = NULL;
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
			flipped = assemble(h_p, second + 1, sig, tmp->signature_len);
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
		char *hb = b64(h);
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

static void test_alg_none_refused(void **state)
{
	const uint8_t junk[4] = { 1, 2, 3, 4 };
	char *h = b64("{\"alg\":\"none\",\"kid\":\"p256\"}"), *p = b64("{\"sub\":\"alice\"}"), *token;

	token = assemble(h, p, junk, sizeof(junk));
	assert_int_equal(verify(token), JWS_E_UNSUPPORTED_ALG);
	free(token);
	free(h);
	/* Any spelling of none. */
	h = b64("{\"alg\":\"None\",\"kid\":\"p256\"}");
	token = assemble(h, p, junk, sizeof(junk));
	assert_int_equal(verify(token), JWS_E_UNSUPPORTED_ALG);
	free(token);
	free(h);
	/* The unsecured form, with an empty signature part. */
	h = b64("{\"alg\":\"none\"}");
	token = NULL;
	assert_true(asprintf(&token, "%s.%s.", h, p) > 0);
	assert_int_equal(verify(token), JWS_E_MALFORMED);
	free(token);
	free(h);
	free(p);
}

static void test_alg_unknown_or_missing(void **state)
{
	/* Signed by the P-256 key over its own bytes: only the alg is wrong. */
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES521\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"es256\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
	expect_pair(good_token(JWS_ALG_ES256, ""), token_from_json(JWS_ALG_ES256, "{\"kid\":\"p256\"}", "{}"),
		    JWS_E_MALFORMED);
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":[\"ES256\"],\"kid\":\"p256\"}", "{}"), JWS_E_MALFORMED);
}

static void test_alg_not_allowed_for_key(void **state)
{
	/* ES384 named, the P-256 key's kid: refused before any signature check. */
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES384, "{\"alg\":\"ES384\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
	/* An RSA signature presented for the EC key. */
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_RS256, "{\"alg\":\"RS256\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
	/* EdDSA against an RSA key. */
	expect_pair(good_token(JWS_ALG_EDDSA, ""),
		    token_from_json(JWS_ALG_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"rsa\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
}

/* A key whose JWK fixes RS256 refuses a genuine PS256 signature by the
 * same RSA key (RFC 8725 §3.1). */
static void test_key_alg_fixed_rs256_refuses_ps256(void **state)
{
	expect_pair(token_from_json(JWS_ALG_RS256, "{\"alg\":\"RS256\",\"kid\":\"rs256-only\"}", "{}"),
		    token_from_json(JWS_ALG_PS256, "{\"alg\":\"PS256\",\"kid\":\"rs256-only\"}", "{}"),
		    JWS_E_UNSUPPORTED_ALG);
	/* The same PS256 token verifies against the unbound key. */
	{
		char *t = token_from_json(JWS_ALG_PS256, "{\"alg\":\"PS256\",\"kid\":\"rsa\"}", "{}");
		assert_int_equal(verify(t), 0);
		free(t);
	}
}

/* The classic confusion: HS256 keyed with the RSA public key's bytes. */
static void test_alg_confusion_hs256_with_rsa_public_key(void **state)
{
	const char *input_h = "{\"alg\":\"HS256\",\"kid\":\"rsa\"}";
	uint8_t *der = NULL, mac[32];
	unsigned int mac_len = 0;
	char *h = b64(input_h), *p = b64("{\"sub\":\"admin\"}"), *input = NULL, *token;
	int der_len = i2d_PUBKEY(pk_rsa, &der);
	const struct jwk_key *rsa_key = lookup(NULL, "rsa");

	assert_true(der_len > 0);
	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_non_null(HMAC(EVP_sha256(), der, der_len, (const uint8_t *)input, strlen(input), mac, &mac_len));
	token = assemble(h, p, mac, mac_len);
	assert_int_equal(verify(token), JWS_E_UNSUPPORTED_ALG);
	/* Also when called directly with the RSA key. */
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
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":\"p257\"}", "{}"),
		    JWS_E_UNKNOWN_KID);
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

/* ---- forbidden header members ---- */

static void test_forbidden_members(void **state)
{
	json_t *jwk = NULL;
	char *jwk_text, *extra = NULL;
	static const char *const members[] = {
		",\"jku\":\"https://attacker.example/jwks.json\"",
		",\"x5u\":\"https://attacker.example/cert.pem\"",
		",\"x5c\":[\"MIIB\"]",
		",\"crit\":[\"exp\"],\"exp\":1",
		",\"b64\":true",
		",\"b64\":false",
	};

	for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++)
		expect_pair(good_token(JWS_ALG_ES256, ""), good_token(JWS_ALG_ES256, members[i]), JWS_E_MALFORMED);
	/* An embedded jwk — even the right key — is never trusted. */
	assert_int_equal(jwk_public_to_json(pk_p256, NULL, JWS_ALG_INVALID, &jwk), 0);
	jwk_text = json_dumps(jwk, JSON_COMPACT);
	assert_true(asprintf(&extra, ",\"jwk\":%s", jwk_text) > 0);
	expect_pair(good_token(JWS_ALG_ES256, ""), good_token(JWS_ALG_ES256, extra), JWS_E_MALFORMED);
	/* crit is refused even when empty. */
	expect_pair(good_token(JWS_ALG_ES256, ""), good_token(JWS_ALG_ES256, ",\"crit\":[]"), JWS_E_MALFORMED);
	free(extra);
	free(jwk_text);
	json_decref(jwk);
}

static void test_header_member_types(void **state)
{
	expect_pair(good_token(JWS_ALG_ES256, ",\"typ\":\"JWT\""), good_token(JWS_ALG_ES256, ",\"typ\":1"),
		    JWS_E_MALFORMED);
	expect_pair(good_token(JWS_ALG_ES256, ",\"typ\":\"JWT\""), good_token(JWS_ALG_ES256, ",\"typ\":null"),
		    JWS_E_MALFORMED);
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":[\"p256\"]}", "{}"), JWS_E_MALFORMED);
}

static void test_header_must_be_object(void **state)
{
	static const char *const headers[] = { "[\"ES256\"]", "\"ES256\"", "1", "null", "{\"alg\":\"ES256\"", "ES256" };

	for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
		expect_pair(good_token(JWS_ALG_ES256, ""), token_from_json(JWS_ALG_ES256, headers[i], "{}"),
			    JWS_E_MALFORMED);
	/* An empty header part. */
	expect_pair(good_token(JWS_ALG_ES256, ""), token_from_b64(JWS_ALG_ES256, "", "e30"), JWS_E_MALFORMED);
}

static void test_duplicate_header_members(void **state)
{
	expect_pair(token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":\"p256\",\"kid2\":\"p384\"}", "{}"),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":\"p384\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_MALFORMED);
	expect_pair(good_token(JWS_ALG_ES256, ""),
		    token_from_json(JWS_ALG_ES256, "{\"alg\":\"ES256\",\"alg\":\"ES256\",\"kid\":\"p256\"}", "{}"),
		    JWS_E_MALFORMED);
}

/* ---- structure ---- */

static void test_three_parts(void **state)
{
	char *good = good_token(JWS_ALG_ES256, ""), *bad = NULL;
	char *last_dot = strrchr(good, '.');

	assert_int_equal(verify(good), 0);
	/* Two parts: the signature dropped. */
	bad = strndup(good, (size_t)(last_dot - good));
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	/* Empty signature. */
	bad = strndup(good, (size_t)(last_dot - good) + 1);
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	/* Four and five parts. */
	assert_true(asprintf(&bad, "%s.", good) > 0);
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	assert_true(asprintf(&bad, "%s.e30.e30", good) > 0);
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	assert_int_equal(verify(""), JWS_E_MALFORMED);
	assert_int_equal(verify(".."), JWS_E_MALFORMED);
	assert_int_equal(verify("e30"), JWS_E_MALFORMED);
	/* A NUL inside the given length. */
	{
		size_t len = strlen(good);
		char *copy = malloc(len + 1);
		struct jws_parsed *parsed = NULL;
		memcpy(copy, good, len + 1);
		copy[3] = '\0';
		assert_int_equal(jws_verify(copy, len, lookup, NULL, &parsed), JWS_E_MALFORMED);
		free(copy);
		/* Only len characters are read: trailing bytes do not matter. */
		copy = NULL;
		assert_true(asprintf(&copy, "%s.garbage", good) > 0);
		assert_int_equal(jws_verify(copy, len, lookup, NULL, &parsed), 0);
		jws_parsed_free(parsed);
		free(copy);
	}
	free(good);
}

/* Re-spells one part and re-signs, so that only the spelling is wrong. */
enum part { PART_HEADER, PART_PAYLOAD };

static char *respelled(enum part which, char *(*respell)(const char *))
{
	char *h = header_with(JWS_ALG_ES256, ",\"typ\":\"JWT\",\"x\":\"~~~~~~~~~\"");
	char *hb = b64(h), *pb = b64("{\"sub\":\"alice\",\"x\":\"~~~~~~~~~~\"}"), *token, *changed;

	changed = respell(which == PART_HEADER ? hb : pb);
	token = which == PART_HEADER ? token_from_b64(JWS_ALG_ES256, changed, pb) :
				       token_from_b64(JWS_ALG_ES256, hb, changed);
	free(changed);
	free(h);
	free(hb);
	free(pb);
	return token;
}

static char *same(const char *s) { return strdup(s); }

static char *padded(const char *s)
{
	char *out = NULL;
	size_t rest = strlen(s) % 4;

	/* The test strings are chosen so that there is padding to add. */
	assert_true(rest == 2 || rest == 3);
	assert_true(asprintf(&out, "%s%s", s, rest == 2 ? "==" : "=") > 0);
	return out;
}

static char *plus_slash(const char *s)
{
	char *out = strdup(s);
	int changed = 0;

	for (char *c = out; *c; c++) {
		if (*c == '-') { *c = '+'; changed = 1; }
		else if (*c == '_') { *c = '/'; changed = 1; }
	}
	assert_true(changed);
	return out;
}

static char *with_whitespace(const char *s)
{
	char *out = NULL;

	assert_true(asprintf(&out, "%.8s\n%s", s, s + 8) > 0);
	return out;
}

static char *with_space(const char *s)
{
	char *out = NULL;

	assert_true(asprintf(&out, "%.4s %s", s, s + 4) > 0);
	return out;
}

/* The last character with one spare bit set: same bytes, another spelling. */
static char *spare_bits(const char *s)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = strdup(s);
	size_t len = strlen(out), rest = len % 4;
	int v = (int)(strchr(alphabet, out[len - 1]) - alphabet);

	assert_true(rest == 2 || rest == 3);
	out[len - 1] = alphabet[v | 1];
	assert_int_not_equal(out[len - 1], s[len - 1]);
	return out;
}

static void test_non_canonical_base64url(void **state)
{
	char *(*const respellers[])(const char *) = { padded, plus_slash, with_whitespace, with_space, spare_bits };

	for (int part = PART_HEADER; part <= PART_PAYLOAD; part++) {
		char *control = respelled((enum part)part, same);
		assert_int_equal(verify(control), 0);
		free(control);
		for (size_t i = 0; i < sizeof(respellers) / sizeof(respellers[0]); i++) {
			char *token = respelled((enum part)part, respellers[i]);
			assert_int_equal(verify(token), JWS_E_MALFORMED);
			free(token);
		}
	}
}

static void test_non_canonical_signature(void **state)
{
	char *good = good_token(JWS_ALG_ES256, ""), *dot = strrchr(good, '.'), *bad = NULL, *sig;

	assert_int_equal(verify(good), 0);
	/* 64 bytes → 86 characters: two padding characters would follow. */
	assert_int_equal(strlen(dot + 1), 86);
	assert_true(asprintf(&bad, "%s==", good) > 0);
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	sig = spare_bits(dot + 1);
	assert_true(asprintf(&bad, "%.*s.%s", (int)(dot - good), good, sig) > 0);
	assert_int_equal(verify(bad), JWS_E_MALFORMED);
	free(bad);
	free(sig);
	free(good);
}

/* ---- size and depth limits ---- */

/* {members,"pad":"xxx"} of exactly total bytes. */
static char *sized_json(const char *members, size_t total)
{
	size_t fixed = strlen("{,\"pad\":\"\"}") + strlen(members), n;
	char *out;

	if (members[0] == '\0')
		fixed -= 1;
	assert_true(total >= fixed);
	n = total - fixed;
	out = malloc(total + 1);
	assert_non_null(out);
	sprintf(out, "{%s%s\"pad\":\"", members, members[0] ? "," : "");
	memset(out + strlen(out), 'x', n);
	sprintf(out + total - 2, "\"}");
	assert_int_equal(strlen(out), total);
	return out;
}

static char *sized_token(size_t header_bytes, size_t payload_bytes)
{
	char *h = sized_json("\"alg\":\"ES256\",\"kid\":\"p256\"", header_bytes);
	char *p = sized_json("\"sub\":\"alice\"", payload_bytes), *token;

	token = token_from_json(JWS_ALG_ES256, h, p);
	free(h);
	free(p);
	return token;
}

static void test_header_limit(void **state)
{
	expect_pair(sized_token(JWS_MAX_HEADER, 100), sized_token(JWS_MAX_HEADER + 1, 100), JWS_E_MALFORMED);
}

static void test_payload_limit(void **state)
{
	expect_pair(sized_token(100, JWS_MAX_PAYLOAD), sized_token(100, JWS_MAX_PAYLOAD + 1), JWS_E_MALFORMED);
}

static void test_token_limit(void **state)
{
	/* 6000 header bytes → 8000 characters, 6222 payload bytes → 8296,
	 * two dots and 86 signature characters: exactly 16384.  One payload
	 * byte more is 16386 characters, while both parts stay under 8 KiB. */
	char *good = sized_token(6000, 6222), *bad = sized_token(6000, 6223);

	assert_int_equal(strlen(good), JWS_MAX_TOKEN);
	assert_true(strlen(bad) > JWS_MAX_TOKEN);
	expect_pair(good, bad, JWS_E_MALFORMED);
}

static char *nested_header(int depth)
{
	/* The header object is depth 1; each array adds one. */
	char *h = malloc(64 + 2 * (size_t)depth), *p;

	assert_non_null(h);
	p = h + sprintf(h, "{\"alg\":\"ES256\",\"kid\":\"p256\",\"x\":");
	for (int i = 1; i < depth; i++)
		*p++ = '[';
	*p++ = '1';
	for (int i = 1; i < depth; i++)
		*p++ = ']';
	strcpy(p, "}");
	return h;
}

static void test_header_nesting_limit(void **state)
{
	char *ok = nested_header(16), *deep = nested_header(17);

	expect_pair(token_from_json(JWS_ALG_ES256, ok, "{}"), token_from_json(JWS_ALG_ES256, deep, "{}"),
		    JWS_E_MALFORMED);
	free(ok);
	free(deep);
}

/* ---- ECDSA signature form ---- */

static int der_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk_p256) == 1 &&
		 EVP_DigestSign(md, sig, sig_len, data, data_len) == 1;

	EVP_MD_CTX_free(md);
	return ok ? 0 : -1;
}

/* A token whose signature part is sig as given (P-256 key, ES256). */
static char *es256_with_sig(void (*mangle)(uint8_t *sig, size_t *sig_len))
{
	char *h = b64("{\"alg\":\"ES256\",\"kid\":\"p256\"}"), *p = b64("{\"sub\":\"alice\"}"), *input = NULL, *token;
	uint8_t sig[200];
	size_t sig_len = 64;

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(JWS_ALG_ES256, input, strlen(input), sig, &sig_len);
	assert_int_equal(sig_len, 64);
	mangle(sig, &sig_len);
	token = assemble(h, p, sig, sig_len);
	free(input);
	free(h);
	free(p);
	return token;
}

static void mangle_none(uint8_t *sig, size_t *sig_len) {}
static void mangle_append_zero(uint8_t *sig, size_t *sig_len) { sig[(*sig_len)++] = 0; }
static void mangle_truncate(uint8_t *sig, size_t *sig_len) { (*sig_len)--; }
static void mangle_r_zero(uint8_t *sig, size_t *sig_len) { memset(sig, 0, 32); }
static void mangle_s_zero(uint8_t *sig, size_t *sig_len) { memset(sig + 32, 0, 32); }
static void mangle_both_zero(uint8_t *sig, size_t *sig_len) { memset(sig, 0, 64); }
/* r||s as two 33-byte integers with a leading zero each: same values,
 * another width. */
static void mangle_widen(uint8_t *sig, size_t *sig_len)
{
	memmove(sig + 34, sig + 32, 32);
	sig[33] = 0;
	memmove(sig + 1, sig, 32);
	sig[0] = 0;
	*sig_len = 66;
}

static void test_ecdsa_signature_form(void **state)
{
	char *h = b64("{\"alg\":\"ES256\",\"kid\":\"p256\"}"), *p = b64("{\"sub\":\"alice\"}"), *input = NULL, *token;
	uint8_t der[80];
	size_t der_len = sizeof(der);

	/* DER (what OpenSSL produces natively) is not the JOSE form. */
	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_int_equal(der_sign(NULL, (const uint8_t *)input, strlen(input), der, &der_len), 0);
	assert_int_equal(der[0], 0x30);
	token = assemble(h, p, der, der_len);
	expect_pair(es256_with_sig(mangle_none), token, JWS_E_BAD_SIGNATURE);
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_append_zero), JWS_E_BAD_SIGNATURE);
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_truncate), JWS_E_BAD_SIGNATURE);
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_widen), JWS_E_BAD_SIGNATURE);
	/* r = 0, s = 0, and both (CVE-2022-21449). */
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_r_zero), JWS_E_BAD_SIGNATURE);
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_s_zero), JWS_E_BAD_SIGNATURE);
	expect_pair(es256_with_sig(mangle_none), es256_with_sig(mangle_both_zero), JWS_E_BAD_SIGNATURE);
	free(input);
	free(h);
	free(p);
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

/* ---- RSA ---- */

/* A signature whose first byte is zero (1 in 256) is a number OpenSSL
 * would also take without that byte; JWS demands exactly the modulus
 * length (256 bytes), for PKCS#1 v1.5 and PSS alike. */
static void rsa_signature_length(enum jws_alg alg)
{
	char header[64], *h;
	int found = 0;

	snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"kid\":\"rsa\"}", jws_alg_name(alg));
	h = b64(header);
	for (int i = 0; i < 20000 && !found; i++) {
		char claims[64], *p, *input = NULL, *good, *shorter, *longer;
		uint8_t sig[JWS_MAX_SIG + 1];
		size_t sig_len = JWS_MAX_SIG;

		snprintf(claims, sizeof(claims), "{\"n\":%d}", i);
		p = b64(claims);
		assert_true(asprintf(&input, "%s.%s", h, p) > 0);
		sign_raw(alg, input, strlen(input), sig, &sig_len);
		assert_int_equal(sig_len, 256);
		if (sig[0] == 0) {
			found = 1;
			good = assemble(h, p, sig, sig_len);
			shorter = assemble(h, p, sig + 1, sig_len - 1);
			memmove(sig + 1, sig, sig_len);
			sig[0] = 0;
			longer = assemble(h, p, sig, sig_len + 1);
			assert_int_equal(verify(good), 0);
			assert_int_equal(verify(shorter), JWS_E_BAD_SIGNATURE);
			assert_int_equal(verify(longer), JWS_E_BAD_SIGNATURE);
			free(good);
			free(shorter);
			free(longer);
		}
		free(input);
		free(p);
	}
	assert_true(found);
	free(h);
}

static void test_rsa_signature_length(void **state)
{
	rsa_signature_length(JWS_ALG_RS256);
	rsa_signature_length(JWS_ALG_PS256);
}

struct pss_params {
	const EVP_MD *md, *mgf1;
	int saltlen;
};

static char *ps256_token(const struct pss_params *pp)
{
	char *h = b64("{\"alg\":\"PS256\",\"kid\":\"rsa\"}"), *p = b64("{\"sub\":\"alice\"}"), *input = NULL, *token;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t sig[512];
	size_t sig_len = sizeof(sig);

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	assert_int_equal(EVP_DigestSignInit(md, &pctx, pp->md, NULL, pk_rsa), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, pp->mgf1), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pp->saltlen), 1);
	assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const uint8_t *)input, strlen(input)), 1);
	token = assemble(h, p, sig, sig_len);
	EVP_MD_CTX_free(md);
	free(input);
	free(h);
	free(p);
	return token;
}

static void test_pss_parameters(void **state)
{
	const struct pss_params good = { EVP_sha256(), EVP_sha256(), 32 };
	const struct pss_params salt0 = { EVP_sha256(), EVP_sha256(), 0 };
	const struct pss_params salt_max = { EVP_sha256(), EVP_sha256(), RSA_PSS_SALTLEN_MAX };
	const struct pss_params salt64 = { EVP_sha256(), EVP_sha256(), 64 };
	const struct pss_params mgf_sha1 = { EVP_sha256(), EVP_sha1(), 32 };
	const struct pss_params mgf_sha512 = { EVP_sha256(), EVP_sha512(), 32 };

	expect_pair(ps256_token(&good), ps256_token(&salt0), JWS_E_BAD_SIGNATURE);
	expect_pair(ps256_token(&good), ps256_token(&salt_max), JWS_E_BAD_SIGNATURE);
	expect_pair(ps256_token(&good), ps256_token(&salt64), JWS_E_BAD_SIGNATURE);
	expect_pair(ps256_token(&good), ps256_token(&mgf_sha1), JWS_E_BAD_SIGNATURE);
	expect_pair(ps256_token(&good), ps256_token(&mgf_sha512), JWS_E_BAD_SIGNATURE);
	/* A PKCS#1 v1.5 signature named PS256, and a PSS one named RS256. */
	{
		char *rs = token_from_json(JWS_ALG_RS256, "{\"alg\":\"PS256\",\"kid\":\"rsa\"}", "{}");
		char *ps = token_from_json(JWS_ALG_PS256, "{\"alg\":\"RS256\",\"kid\":\"rsa\"}", "{}");
		assert_int_equal(verify(rs), JWS_E_BAD_SIGNATURE);
		assert_int_equal(verify(ps), JWS_E_BAD_SIGNATURE);
		free(rs);
		free(ps);
	}
}

/* ---- HMAC and EdDSA ---- */

static void test_hmac_rules(void **state)
{
	char *h = b64("{\"alg\":\"HS256\",\"kid\":\"oct\"}"), *p = b64("{\"sub\":\"alice\"}"), *input = NULL, *t;
	uint8_t mac[64], other_key[64];
	unsigned int mac_len = 0;
	size_t len = sizeof(mac);

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(JWS_ALG_HS256, input, strlen(input), mac, &len);
	assert_int_equal(len, 32);
	/* Truncated MAC. */
	expect_pair(assemble(h, p, mac, 32), assemble(h, p, mac, 16), JWS_E_BAD_SIGNATURE);
	/* MAC under another secret. */
	memset(other_key, 0x42, sizeof(other_key));
	assert_non_null(HMAC(EVP_sha256(), other_key, sizeof(other_key), (const uint8_t *)input, strlen(input), mac,
			     &mac_len));
	t = assemble(h, p, mac, mac_len);
	assert_int_equal(verify(t), JWS_E_BAD_SIGNATURE);
	free(t);
	/* The same secret behind a 32-byte key refuses HS512. */
	{
		struct jwk_key *short_key = NULL;
		char *k = b64_bytes(hmac_secret, 32);
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

static void test_eddsa_signature_length(void **state)
{
	char *h = b64("{\"alg\":\"EdDSA\",\"kid\":\"ed\"}"), *p = b64("{}"), *input = NULL;
	uint8_t sig[80];
	size_t sig_len = sizeof(sig);

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(JWS_ALG_EDDSA, input, strlen(input), sig, &sig_len);
	assert_int_equal(sig_len, 64);
	sig[64] = 0;
	expect_pair(assemble(h, p, sig, 64), assemble(h, p, sig, 65), JWS_E_BAD_SIGNATURE);
	expect_pair(assemble(h, p, sig, 64), assemble(h, p, sig, 63), JWS_E_BAD_SIGNATURE);
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
		cmocka_unit_test(test_alg_none_refused),
		cmocka_unit_test(test_alg_unknown_or_missing),
		cmocka_unit_test(test_alg_not_allowed_for_key),
		cmocka_unit_test(test_key_alg_fixed_rs256_refuses_ps256),
		cmocka_unit_test(test_alg_confusion_hs256_with_rsa_public_key),
		cmocka_unit_test(test_unknown_kid),
		cmocka_unit_test(test_kid_lookup_callback),
		cmocka_unit_test(test_forbidden_members),
		cmocka_unit_test(test_header_member_types),
		cmocka_unit_test(test_header_must_be_object),
		cmocka_unit_test(test_duplicate_header_members),
		cmocka_unit_test(test_three_parts),
		cmocka_unit_test(test_non_canonical_base64url),
		cmocka_unit_test(test_non_canonical_signature),
		cmocka_unit_test(test_header_limit),
		cmocka_unit_test(test_payload_limit),
		cmocka_unit_test(test_token_limit),
		cmocka_unit_test(test_header_nesting_limit),
		cmocka_unit_test(test_ecdsa_signature_form),
		cmocka_unit_test(test_ecdsa_range_check),
		cmocka_unit_test(test_rsa_signature_length),
		cmocka_unit_test(test_pss_parameters),
		cmocka_unit_test(test_hmac_rules),
		cmocka_unit_test(test_eddsa_signature_length),
		cmocka_unit_test(test_error_reasons),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
