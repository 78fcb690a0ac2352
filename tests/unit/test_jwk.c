/* jwk: algorithm names, JWK parsing and its refusals, alg/key binding
 * (RFC 8725 §3.1), public JWK export and RFC 7638 thumbprints. */
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

#include "fixture.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jwk.h"

/* RFC 7638 §3.1. */
#define RFC7638_N "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
/* RFC 7517 appendix A.1. */
#define A1_X "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"
#define A1_Y "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"
/* RFC 8037 appendix A.2. */
#define ED_X "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"

static EVP_PKEY *rsa_key, *p256_key, *p384_key, *p521_key, *ed_key;

static int setup(void **state)
{
	rsa_key = fixture_keypair(JWS_ALG_RS256);
	p256_key = fixture_keypair(JWS_ALG_ES256);
	p384_key = fixture_keypair(JWS_ALG_ES384);
	p521_key = fixture_keypair(JWS_ALG_ES512);
	ed_key = fixture_keypair(JWS_ALG_EDDSA);
	return rsa_key && p256_key && p384_key && p521_key && ed_key ? 0 : -1;
}

static int teardown(void **state)
{
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(p256_key);
	EVP_PKEY_free(p384_key);
	EVP_PKEY_free(p521_key);
	EVP_PKEY_free(ed_key);
	return 0;
}

/* Parses JWK text (trusted test input) with jwk_key_from_json. */
static int parse(const char *text, struct jwk_key **ret_key)
{
	json_error_t error;
	json_t *jwk = json_loads(text, 0, &error);
	int r;

	assert_non_null(jwk);
	r = jwk_key_from_json(jwk, ret_key);
	json_decref(jwk);
	return r;
}

static struct jwk_key *parse_ok(const char *text)
{
	struct jwk_key *key = NULL;

	assert_int_equal(parse(text, &key), 0);
	assert_non_null(key);
	return key;
}

static void assert_refused(const char *text)
{
	struct jwk_key *key = (struct jwk_key *)0x1;

	assert_int_equal(parse(text, &key), -EINVAL);
	/* ret_key untouched on failure */
	assert_ptr_equal(key, (struct jwk_key *)0x1);
}

/* The public JWK of pkey with one member replaced (value NULL: removed). */
static char *jwk_with(EVP_PKEY *pkey, const char *member, json_t *value)
{
	json_t *jwk = NULL;
	char *text;

	assert_int_equal(jwk_public_to_json(pkey, NULL, JWS_ALG_INVALID, &jwk), 0);
	if (value != NULL)
		assert_int_equal(json_object_set_new(jwk, member, value), 0);
	else
		assert_int_equal(json_object_del(jwk, member), 0);
	text = json_dumps(jwk, JSON_COMPACT);
	assert_non_null(text);
	json_decref(jwk);
	return text;
}

static json_t *b64_json(const uint8_t *buf, size_t len)
{
	char *s = NULL;
	json_t *v;

	assert_int_equal(b64url_encode_alloc(buf, len, &s), 0);
	v = json_string(s);
	free(s);
	return v;
}

/* Decoded member of a JWK object. */
static size_t member_bytes(const json_t *jwk, const char *name, uint8_t *out, size_t cap)
{
	const char *s = json_string_value(json_object_get(jwk, name));
	size_t len = 0;

	assert_non_null(s);
	assert_true(b64url_decoded_max(strlen(s)) <= cap);
	assert_int_equal(b64url_decode(s, strlen(s), out, &len), 0);
	return len;
}

static void test_alg_names(void **state)
{
	static const char *const bad[] = { "none", "None", "NONE", "hs256", "Hs256", "ES521", "EDDSA", "Ed25519",
					   "RS256 ", "", "RSA-OAEP", "HS1" };
	enum jws_alg alg;

	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		const char *name = jws_alg_name((enum jws_alg)a);
		assert_non_null(name);
		alg = JWS_ALG_INVALID;
		assert_int_equal(jws_alg_from_name(name, &alg), 0);
		assert_int_equal(alg, a);
	}
	assert_string_equal(jws_alg_name(JWS_ALG_ES512), "ES512");
	assert_string_equal(jws_alg_name(JWS_ALG_EDDSA), "EdDSA");
	assert_null(jws_alg_name(JWS_ALG_INVALID));
	assert_null(jws_alg_name(JWS_ALG_COUNT));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		alg = JWS_ALG_HS256;
		assert_int_equal(jws_alg_from_name(bad[i], &alg), -EINVAL);
		assert_int_equal(alg, JWS_ALG_HS256);
	}
	assert_int_equal(jws_alg_from_name(NULL, &alg), -EINVAL);
}

static void test_thumbprint_rfc7638(void **state)
{
	struct jwk_key *key = parse_ok("{\"kty\":\"RSA\",\"n\":\"" RFC7638_N "\",\"e\":\"AQAB\","
				       "\"alg\":\"RS256\",\"kid\":\"2011-04-29\"}");
	char kid[JWK_THUMBPRINT_LEN + 1];

	assert_int_equal(jwk_thumbprint(key->pkey, kid), 0);
	assert_string_equal(kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
	assert_string_equal(key->kid, "2011-04-29");
	assert_int_equal(key->alg, JWS_ALG_RS256);
	assert_true(key->verify_allowed);
	assert_null(key->secret);
	jwk_key_free(key);
}

static void test_thumbprint_rfc8037_ed25519(void **state)
{
	struct jwk_key *key = parse_ok("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" ED_X "\"}");
	char kid[JWK_THUMBPRINT_LEN + 1];

	assert_int_equal(jwk_thumbprint(key->pkey, kid), 0);
	assert_string_equal(kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
	assert_int_equal(key->alg, JWS_ALG_INVALID);
	assert_string_equal(key->kid, "");
	jwk_key_free(key);
}

/* EC vectors computed with python3-jwcrypto; the P-384 y and the P-521 x
 * start with a zero byte, so a thumbprint over unpadded coordinates would
 * differ. */
static void test_thumbprint_ec(void **state)
{
	static const struct { const char *jwk, *thumbprint; } vectors[] = {
		{ "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A1_X "\",\"y\":\"" A1_Y "\"}",
		  "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s" },
		{ "{\"crv\": \"P-384\", \"kty\": \"EC\", \"x\": \"h7eGkmS8yUPbtlX7krlfvvd0ihgT06vpKj7Kj0oP85Nf_HBh2blknQXyrCkCeXIa\", "
		  "\"y\": \"AN0Mltkhwpp5PKrh5_Zw4JCBY_GcJCUqn6Cje0Kcp0bDfiuaim6avsk48khjR7dk\"}",
		  "J4ECIfIykN_u7ATHCw9aR3ylDPZRmZYN-1zQ5610COM" },
		{ "{\"crv\": \"P-521\", \"kty\": \"EC\", "
		  "\"x\": \"APOdBFJsKyfo2tmC2gdw1JC0Tsc_56QSMXvOHcjPv0Uubj4dXBjfHXd6IksJzABJ0aftVcmLl20BByQalwiu3M-L\", "
		  "\"y\": \"AflOAx8sf2j2n952PSRPwakmwQnI5t2Vglo3gGj6R-wG_CWhw41z5zaC0V3no9Hey2_8yTlE1iIIBs4h-9Vjp8Ie\"}",
		  "c9FQrY28CQ2Th_x01ot3FPBsg71iq0-CwaaQJmfA8y4" },
	};

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		struct jwk_key *key = parse_ok(vectors[i].jwk);
		char kid[JWK_THUMBPRINT_LEN + 1];

		assert_int_equal(jwk_thumbprint(key->pkey, kid), 0);
		assert_string_equal(kid, vectors[i].thumbprint);
		jwk_key_free(key);
	}
}

/* Export, re-import, same key, same thumbprint — for every key type. */
static void test_public_to_json_round_trip(void **state)
{
	struct { EVP_PKEY *pkey; enum jws_alg alg; const char *kty, *crv; } cases[] = {
		{ rsa_key, JWS_ALG_PS256, "RSA", NULL },
		{ p256_key, JWS_ALG_ES256, "EC", "P-256" },
		{ p384_key, JWS_ALG_ES384, "EC", "P-384" },
		{ p521_key, JWS_ALG_ES512, "EC", "P-521" },
		{ ed_key, JWS_ALG_EDDSA, "OKP", "Ed25519" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char kid[JWK_THUMBPRINT_LEN + 1], kid2[JWK_THUMBPRINT_LEN + 1];
		struct jwk_key *key = NULL, *from_pkey = NULL;
		json_t *jwk = NULL, *bare = NULL;

		assert_int_equal(jwk_thumbprint(cases[i].pkey, kid), 0);
		assert_int_equal(strlen(kid), JWK_THUMBPRINT_LEN);
		assert_int_equal(jwk_public_to_json(cases[i].pkey, kid, cases[i].alg, &jwk), 0);
		assert_string_equal(json_string_value(json_object_get(jwk, "kty")), cases[i].kty);
		if (cases[i].crv)
			assert_string_equal(json_string_value(json_object_get(jwk, "crv")), cases[i].crv);
		assert_string_equal(json_string_value(json_object_get(jwk, "kid")), kid);
		assert_string_equal(json_string_value(json_object_get(jwk, "alg")), jws_alg_name(cases[i].alg));
		assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
		/* Nothing private is ever exported. */
		assert_null(json_object_get(jwk, "d"));

		assert_int_equal(jwk_key_from_json(jwk, &key), 0);
		assert_int_equal(EVP_PKEY_eq(key->pkey, cases[i].pkey), 1);
		assert_string_equal(key->kid, kid);
		assert_int_equal(key->alg, cases[i].alg);
		assert_true(jwk_key_allows_alg(key, cases[i].alg));
		assert_int_equal(jwk_thumbprint(key->pkey, kid2), 0);
		assert_string_equal(kid, kid2);

		/* Without kid and alg: only the key members. */
		assert_int_equal(jwk_public_to_json(cases[i].pkey, NULL, JWS_ALG_INVALID, &bare), 0);
		assert_null(json_object_get(bare, "kid"));
		assert_null(json_object_get(bare, "alg"));
		assert_null(json_object_get(bare, "use"));

		/* jwk_key_from_pkey names the key by its thumbprint. */
		assert_int_equal(jwk_key_from_pkey(cases[i].pkey, cases[i].alg, &from_pkey), 0);
		assert_string_equal(from_pkey->kid, kid);
		assert_int_equal(from_pkey->alg, cases[i].alg);
		assert_true(jwk_key_allows_alg(from_pkey, cases[i].alg));

		json_decref(bare);
		json_decref(jwk);
		jwk_key_free(key);
		jwk_key_free(from_pkey);
	}
}

/* EC coordinates are left-padded to the curve size (RFC 7518 §6.2.1.2). */
static void test_ec_coordinates_padded(void **state)
{
	static const struct { const char *group; size_t size; } curves[] = {
		{ "P-256", 32 }, { "P-384", 48 }, { "P-521", 66 },
	};

	for (size_t c = 0; c < sizeof(curves) / sizeof(curves[0]); c++) {
		int found = 0;

		/* A coordinate with a zero top byte turns up once in 128 keys
		 * on average (half the keys for P-521). */
		for (int tries = 0; tries < 4000 && !found; tries++) {
			EVP_PKEY *pkey = EVP_EC_gen(curves[c].group);
			BIGNUM *x = NULL, *y = NULL;
			uint8_t buf[80];
			json_t *jwk = NULL;

			assert_non_null(pkey);
			assert_int_equal(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
			assert_int_equal(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y), 1);
			if ((size_t)BN_num_bytes(x) < curves[c].size || (size_t)BN_num_bytes(y) < curves[c].size) {
				struct jwk_key *key = NULL;

				found = 1;
				assert_int_equal(jwk_public_to_json(pkey, NULL, JWS_ALG_INVALID, &jwk), 0);
				assert_int_equal(member_bytes(jwk, "x", buf, sizeof(buf)), curves[c].size);
				assert_int_equal(member_bytes(jwk, "y", buf, sizeof(buf)), curves[c].size);
				assert_int_equal(jwk_key_from_json(jwk, &key), 0);
				assert_int_equal(EVP_PKEY_eq(key->pkey, pkey), 1);
				jwk_key_free(key);
				json_decref(jwk);
			}
			BN_free(x);
			BN_free(y);
			EVP_PKEY_free(pkey);
		}
		assert_true(found);
	}
}

static void test_rsa_refusals(void **state)
{
	EVP_PKEY *small = EVP_RSA_gen(1024);
	json_t *jwk = NULL;
	uint8_t n[1100];
	size_t n_len;
	char *text;

	/* 1024 bits: parse and from_pkey both refuse. */
	assert_non_null(small);
	assert_int_equal(jwk_public_to_json(small, NULL, JWS_ALG_INVALID, &jwk), 0);
	text = json_dumps(jwk, JSON_COMPACT);
	assert_refused(text);
	free(text);
	json_decref(jwk);
	{
		struct jwk_key *key = NULL;
		assert_int_equal(jwk_key_from_pkey(small, JWS_ALG_RS256, &key), -EINVAL);
		assert_null(key);
	}
	EVP_PKEY_free(small);

	/* Exponents: 1, even, missing, not base64url. */
	text = jwk_with(rsa_key, "e", json_string("AQ"));
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "e", json_string("AQAA")); /* 65536 */
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "e", NULL);
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "e", json_string("AQAB="));
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "e", json_integer(65537));
	assert_refused(text);
	free(text);
	/* The control: e = 3 is odd and > 1. */
	text = jwk_with(rsa_key, "e", json_string("Aw"));
	{
		struct jwk_key *key = parse_ok(text);
		jwk_key_free(key);
	}
	free(text);

	/* An even modulus is no RSA key. */
	assert_int_equal(jwk_public_to_json(rsa_key, NULL, JWS_ALG_INVALID, &jwk), 0);
	n_len = member_bytes(jwk, "n", n, sizeof(n));
	assert_int_equal(n_len, 256);
	json_decref(jwk);
	n[n_len - 1] &= 0xfe;
	text = jwk_with(rsa_key, "n", b64_json(n, n_len));
	assert_refused(text);
	free(text);
	/* Non-canonical base64url in n: '+' for '-' or '/' for '_' where they occur,
	 * else a trailing '='. */
	assert_int_equal(jwk_public_to_json(rsa_key, NULL, JWS_ALG_INVALID, &jwk), 0);
	{
		char *bad = strdup(json_string_value(json_object_get(jwk, "n")));
		char *padded = malloc(strlen(bad) + 3);
		assert_non_null(bad);
		assert_non_null(padded);
		sprintf(padded, "%s==", bad);
		text = jwk_with(rsa_key, "n", json_string(padded));
		assert_refused(text);
		free(text);
		free(padded);
		free(bad);
	}
	json_decref(jwk);
}

static void test_ec_refusals(void **state)
{
	json_t *jwk = NULL;
	uint8_t x[66], y[66], longer[67];
	size_t x_len, y_len;
	char *text;

	assert_int_equal(jwk_public_to_json(p256_key, NULL, JWS_ALG_INVALID, &jwk), 0);
	x_len = member_bytes(jwk, "x", x, sizeof(x));
	y_len = member_bytes(jwk, "y", y, sizeof(y));
	assert_int_equal(x_len, 32);
	assert_int_equal(y_len, 32);
	json_decref(jwk);

	/* Off the curve: y + 1 (a point (x, y) and (x, y+1) are never both on it). */
	y[31] ^= 0x01;
	text = jwk_with(p256_key, "y", b64_json(y, y_len));
	assert_refused(text);
	free(text);
	y[31] ^= 0x01;
	/* (0, 0) is not on P-256 either. */
	memset(longer, 0, sizeof(longer));
	text = jwk_with(p256_key, "x", b64_json(longer, 32));
	{
		json_error_t error;
		json_t *j = json_loads(text, 0, &error);
		char *t2;
		json_object_set_new(j, "y", b64_json(longer, 32));
		t2 = json_dumps(j, JSON_COMPACT);
		assert_refused(t2);
		free(t2);
		json_decref(j);
	}
	free(text);

	/* Coordinate lengths: one byte short, one byte long (leading zero). */
	text = jwk_with(p256_key, "x", b64_json(x + 1, 31));
	assert_refused(text);
	free(text);
	longer[0] = 0;
	memcpy(longer + 1, x, 32);
	text = jwk_with(p256_key, "x", b64_json(longer, 33));
	assert_refused(text);
	free(text);
	/* A P-256 point named P-384 has coordinates of the wrong length. */
	text = jwk_with(p256_key, "crv", json_string("P-384"));
	assert_refused(text);
	free(text);
	/* Curves JWS does not sign with, and missing members. */
	text = jwk_with(p256_key, "crv", json_string("secp256k1"));
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "crv", json_string("p-256"));
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "crv", NULL);
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "y", NULL);
	assert_refused(text);
	free(text);
	/* The control: the unmodified coordinates parse. */
	text = jwk_with(p256_key, "y", b64_json(y, y_len));
	{
		struct jwk_key *key = parse_ok(text);
		assert_int_equal(EVP_PKEY_eq(key->pkey, p256_key), 1);
		jwk_key_free(key);
	}
	free(text);
}

static void test_okp_refusals(void **state)
{
	EVP_PKEY *ed448 = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");
	uint8_t raw[57];
	size_t raw_len = sizeof(raw);
	json_t *jwk;
	char *text;

	/* A genuine Ed448 public key (57 bytes) is refused by its curve. */
	assert_non_null(ed448);
	assert_int_equal(EVP_PKEY_get_raw_public_key(ed448, raw, &raw_len), 1);
	assert_int_equal(raw_len, 57);
	jwk = json_pack("{s:s, s:s, s:o}", "kty", "OKP", "crv", "Ed448", "x", b64_json(raw, raw_len));
	text = json_dumps(jwk, JSON_COMPACT);
	assert_refused(text);
	free(text);
	json_decref(jwk);
	EVP_PKEY_free(ed448);
	/* X25519 is a key-agreement key; names are case-sensitive. */
	assert_refused("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"" ED_X "\"}");
	assert_refused("{\"kty\":\"OKP\",\"crv\":\"ed25519\",\"x\":\"" ED_X "\"}");
	assert_refused("{\"kty\":\"OKP\",\"x\":\"" ED_X "\"}");
	/* 31 and 33 bytes. */
	assert_refused("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUQ\"}");
	assert_refused("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" ED_X "AA\"}");
	/* Non-zero spare bits in the last character ('p' where 'o' belongs). */
	assert_refused("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp\"}");
}

/* {"kty":"oct","k":<len bytes>} plus extra members (a JSON fragment). */
static char *oct_jwk(size_t len, const char *extra)
{
	uint8_t secret[80];
	char *k = NULL, *text;

	assert_true(len <= sizeof(secret));
	for (size_t i = 0; i < len; i++)
		secret[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(b64url_encode_alloc(secret, len, &k), 0);
	text = malloc(strlen(k) + strlen(extra) + 64);
	assert_non_null(text);
	sprintf(text, "{\"kty\":\"oct\",\"k\":\"%s\"%s}", k, extra);
	free(k);
	return text;
}

static void test_oct_keys(void **state)
{
	static const struct { size_t len; int hs256, hs384, hs512; } sizes[] = {
		{ 32, 1, 0, 0 }, { 47, 1, 0, 0 }, { 48, 1, 1, 0 }, { 63, 1, 1, 0 }, { 64, 1, 1, 1 }, { 80, 1, 1, 1 },
	};
	struct jwk_key *key;
	char *text;

	/* 31 bytes is shorter than any HMAC hash output. */
	text = oct_jwk(31, "");
	assert_refused(text);
	free(text);
	assert_refused("{\"kty\":\"oct\"}");
	assert_refused("{\"kty\":\"oct\",\"k\":\"\"}");

	/* RFC 7518 §3.2: a key at least as long as the hash output. */
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		text = oct_jwk(sizes[i].len, "");
		key = parse_ok(text);
		assert_null(key->pkey);
		assert_int_equal(key->secret_len, sizes[i].len);
		assert_int_equal(key->secret[0], 1);
		assert_int_equal(jwk_key_allows_alg(key, JWS_ALG_HS256), sizes[i].hs256);
		assert_int_equal(jwk_key_allows_alg(key, JWS_ALG_HS384), sizes[i].hs384);
		assert_int_equal(jwk_key_allows_alg(key, JWS_ALG_HS512), sizes[i].hs512);
		assert_false(jwk_key_allows_alg(key, JWS_ALG_RS256));
		assert_false(jwk_key_allows_alg(key, JWS_ALG_ES256));
		assert_false(jwk_key_allows_alg(key, JWS_ALG_EDDSA));
		jwk_key_free(key);
		free(text);
	}

	/* A key bound to HS512 but too short for it is unusable. */
	text = oct_jwk(32, ",\"alg\":\"HS512\"");
	assert_refused(text);
	free(text);
	/* Bound to HS384: HS256 and HS512 refused even though the length would do. */
	text = oct_jwk(64, ",\"alg\":\"HS384\"");
	key = parse_ok(text);
	assert_int_equal(key->alg, JWS_ALG_HS384);
	assert_true(jwk_key_allows_alg(key, JWS_ALG_HS384));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_HS256));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_HS512));
	jwk_key_free(key);
	free(text);
	/* An oct key named for a public-key algorithm is unusable. */
	text = oct_jwk(64, ",\"alg\":\"RS256\"");
	assert_refused(text);
	free(text);
}

static void test_alg_binding(void **state)
{
	json_t *jwk = NULL;
	struct jwk_key *key = NULL;
	char *text;

	/* RSA without alg: RS* and PS*, nothing else. */
	assert_int_equal(jwk_public_to_json(rsa_key, NULL, JWS_ALG_INVALID, &jwk), 0);
	assert_int_equal(jwk_key_from_json(jwk, &key), 0);
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		int rsa = (a >= JWS_ALG_RS256 && a <= JWS_ALG_PS512);
		assert_int_equal(jwk_key_allows_alg(key, (enum jws_alg)a), rsa);
	}
	assert_false(jwk_key_allows_alg(key, JWS_ALG_INVALID));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_COUNT));
	assert_false(jwk_key_allows_alg(NULL, JWS_ALG_RS256));
	jwk_key_free(key);
	json_decref(jwk);

	/* alg fixed to RS256 refuses PS256 (RFC 8725 §3.1). */
	assert_int_equal(jwk_public_to_json(rsa_key, NULL, JWS_ALG_RS256, &jwk), 0);
	assert_int_equal(jwk_key_from_json(jwk, &key), 0);
	assert_true(jwk_key_allows_alg(key, JWS_ALG_RS256));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_PS256));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_RS384));
	jwk_key_free(key);
	json_decref(jwk);

	/* EC: the ES* of its curve only. */
	{
		struct { EVP_PKEY *pkey; enum jws_alg alg; } ec[] = {
			{ p256_key, JWS_ALG_ES256 }, { p384_key, JWS_ALG_ES384 }, { p521_key, JWS_ALG_ES512 },
		};
		for (size_t i = 0; i < 3; i++) {
			assert_int_equal(jwk_public_to_json(ec[i].pkey, NULL, JWS_ALG_INVALID, &jwk), 0);
			assert_int_equal(jwk_key_from_json(jwk, &key), 0);
			for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++)
				assert_int_equal(jwk_key_allows_alg(key, (enum jws_alg)a), a == (int)ec[i].alg);
			jwk_key_free(key);
			json_decref(jwk);
		}
	}
	/* Ed25519: EdDSA only. */
	assert_int_equal(jwk_public_to_json(ed_key, NULL, JWS_ALG_INVALID, &jwk), 0);
	assert_int_equal(jwk_key_from_json(jwk, &key), 0);
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++)
		assert_int_equal(jwk_key_allows_alg(key, (enum jws_alg)a), a == JWS_ALG_EDDSA);
	jwk_key_free(key);
	json_decref(jwk);

	/* An alg that does not fit the key, or that is unknown, makes it unusable. */
	text = jwk_with(p256_key, "alg", json_string("ES384"));
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "alg", json_string("HS256"));
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "alg", json_string("RSA-OAEP"));
	assert_refused(text);
	free(text);
	text = jwk_with(p521_key, "alg", json_string("ES521"));
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "alg", json_string("none"));
	assert_refused(text);
	free(text);
	text = jwk_with(rsa_key, "alg", json_integer(1));
	assert_refused(text);
	free(text);

	/* from_pkey binds the alg and checks it fits. */
	assert_int_equal(jwk_key_from_pkey(p256_key, JWS_ALG_ES384, &key), -EINVAL);
	assert_int_equal(jwk_key_from_pkey(rsa_key, JWS_ALG_EDDSA, &key), -EINVAL);
	assert_int_equal(jwk_key_from_pkey(rsa_key, JWS_ALG_HS256, &key), -EINVAL);
	assert_int_equal(jwk_key_from_pkey(ed_key, JWS_ALG_ES256, &key), -EINVAL);
	assert_int_equal(jwk_key_from_pkey(rsa_key, JWS_ALG_PS384, &key), 0);
	assert_true(jwk_key_allows_alg(key, JWS_ALG_PS384));
	assert_false(jwk_key_allows_alg(key, JWS_ALG_PS256));
	jwk_key_free(key);
}

static void test_use_and_key_ops(void **state)
{
	struct jwk_key *key;
	char *text;

	/* use=enc: the key parses but verifies nothing. */
	text = jwk_with(p256_key, "use", json_string("enc"));
	key = parse_ok(text);
	assert_false(key->verify_allowed);
	assert_false(jwk_key_allows_alg(key, JWS_ALG_ES256));
	jwk_key_free(key);
	free(text);
	text = jwk_with(p256_key, "use", json_string("sig"));
	key = parse_ok(text);
	assert_true(key->verify_allowed);
	assert_true(jwk_key_allows_alg(key, JWS_ALG_ES256));
	jwk_key_free(key);
	free(text);

	/* key_ops without "verify". */
	text = jwk_with(p256_key, "key_ops", json_pack("[s, s]", "sign", "encrypt"));
	key = parse_ok(text);
	assert_false(key->verify_allowed);
	assert_false(jwk_key_allows_alg(key, JWS_ALG_ES256));
	jwk_key_free(key);
	free(text);
	text = jwk_with(p256_key, "key_ops", json_pack("[s, s]", "sign", "verify"));
	key = parse_ok(text);
	assert_true(key->verify_allowed);
	jwk_key_free(key);
	free(text);
	text = jwk_with(p256_key, "key_ops", json_pack("[]"));
	key = parse_ok(text);
	assert_false(key->verify_allowed);
	jwk_key_free(key);
	free(text);

	/* Ill-typed use / key_ops are malformed. */
	text = jwk_with(p256_key, "key_ops", json_string("verify"));
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "key_ops", json_pack("[s, i]", "verify", 1));
	assert_refused(text);
	free(text);
	text = jwk_with(p256_key, "use", json_true());
	assert_refused(text);
	free(text);
}

static void test_kid_and_members(void **state)
{
	char long_kid[JWK_KID_MAX + 2];
	struct jwk_key *key;
	char *text;

	memset(long_kid, 'k', sizeof(long_kid));
	long_kid[JWK_KID_MAX] = '\0';
	text = jwk_with(ed_key, "kid", json_string(long_kid));
	key = parse_ok(text);
	assert_string_equal(key->kid, long_kid);
	jwk_key_free(key);
	free(text);
	long_kid[JWK_KID_MAX] = 'k';
	long_kid[JWK_KID_MAX + 1] = '\0';
	text = jwk_with(ed_key, "kid", json_string(long_kid));
	assert_refused(text);
	free(text);
	text = jwk_with(ed_key, "kid", json_integer(7));
	assert_refused(text);
	free(text);

	/* Private members are ignored: the key is the public one. */
	key = parse_ok("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" ED_X "\","
		       "\"d\":\"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\"}");
	{
		uint8_t priv[32];
		size_t priv_len = sizeof(priv);
		assert_int_not_equal(EVP_PKEY_get_raw_private_key(key->pkey, priv, &priv_len), 1);
	}
	jwk_key_free(key);

	/* Not an object, no kty, unknown kty. */
	{
		json_t *arr = json_array();
		struct jwk_key *k2 = NULL;
		assert_int_equal(jwk_key_from_json(arr, &k2), -EINVAL);
		assert_int_equal(jwk_key_from_json(NULL, &k2), -EINVAL);
		assert_null(k2);
		json_decref(arr);
	}
	assert_refused("{\"crv\":\"Ed25519\",\"x\":\"" ED_X "\"}");
	assert_refused("{\"kty\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"" ED_X "\"}");
	assert_refused("{\"kty\":\"okp\",\"crv\":\"Ed25519\",\"x\":\"" ED_X "\"}");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_alg_names),
		cmocka_unit_test(test_thumbprint_rfc7638),
		cmocka_unit_test(test_thumbprint_rfc8037_ed25519),
		cmocka_unit_test(test_thumbprint_ec),
		cmocka_unit_test(test_public_to_json_round_trip),
		cmocka_unit_test(test_ec_coordinates_padded),
		cmocka_unit_test(test_rsa_refusals),
		cmocka_unit_test(test_ec_refusals),
		cmocka_unit_test(test_okp_refusals),
		cmocka_unit_test(test_oct_keys),
		cmocka_unit_test(test_alg_binding),
		cmocka_unit_test(test_use_and_key_ops),
		cmocka_unit_test(test_kid_and_members),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
