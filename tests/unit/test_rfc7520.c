/* RFC 7520 (JOSE cookbook) JWS examples through jws_verify.
 *
 *   jws/4_1 RS256, jws/4_2 PS384  with jwk/3_3 (RSA public) and jwk/3_4 (private)
 *   jws/4_3 ES512                 with jwk/3_1 (P-521 public) and jwk/3_2 (private)
 *   curve25519/jws.json EdDSA     (RFC 8037 A.4) with its own input key
 *
 * Each compact example verifies with the public JWK and with the private JWK
 * (whose private members the parser ignores), yields the example's header
 * and payload, and fails with bad_signature when any single byte of the
 * signature or of the payload is changed.  The cookbook's JWKs carry no
 * "alg", so the algorithm allowed comes from the key type (jwk.h); a key
 * pinned to another algorithm of the same family must refuse the token. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "fixture_vectors.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"

struct example {
	const char *path;
	const char *public_jwk;   /* NULL: the example's input.key without "d" */
	const char *private_jwk;  /* NULL: the example's input.key */
	enum jws_alg alg;
	enum jws_alg other_alg;   /* same key type, another alg; INVALID when the type has one */
};

/* Finds the key by kid, as a key set would: an absent kid matches only a
 * key without one. */
static const struct jwk_key *lookup_by_kid(void *ctx, const char *kid)
{
	const struct jwk_key *key = ctx;

	if (kid == NULL)
		return key->kid[0] == '\0' ? key : NULL;
	return strcmp(kid, key->kid) == 0 ? key : NULL;
}

/* For a key made by jwk_key_from_pkey, whose kid is its thumbprint and not
 * the example's kid. */
static const struct jwk_key *lookup_any(void *ctx, const char *kid)
{
	(void)kid;
	return ctx;
}

static struct jwk_key *key_from(const json_t *jwk)
{
	struct jwk_key *key = NULL;

	assert_int_equal(jwk_key_from_json(jwk, &key), 0);
	assert_non_null(key);
	return key;
}

static char *token_with(const char *header_b64, size_t header_len, const uint8_t *payload, size_t payload_len,
			const uint8_t *sig, size_t sig_len)
{
	char *p = NULL, *s = NULL, *token;
	size_t n;

	assert_int_equal(b64url_encode_alloc(payload, payload_len, &p), 0);
	assert_int_equal(b64url_encode_alloc(sig, sig_len, &s), 0);
	n = header_len + strlen(p) + strlen(s) + 3;
	token = malloc(n);
	assert_non_null(token);
	snprintf(token, n, "%.*s.%s.%s", (int)header_len, header_b64, p, s);
	free(p);
	free(s);
	return token;
}

/* Every single-byte change of the decoded payload and of the decoded
 * signature must fail with bad_signature; returns the number of tokens tried. */
static unsigned check_tampering(const char *token, const struct jwk_key *key)
{
	const char *dot1 = strchr(token, '.');
	const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	uint8_t *payload = NULL, *sig = NULL;
	size_t payload_len = 0, sig_len = 0, i;
	unsigned tried = 0;
	char *bad;
	struct jws_parsed *parsed = NULL;

	assert_non_null(dot2);
	assert_int_equal(b64url_decode_alloc(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload, &payload_len), 0);
	assert_int_equal(b64url_decode_alloc(dot2 + 1, strlen(dot2 + 1), &sig, &sig_len), 0);
	assert_true(payload_len > 0 && sig_len > 0);

	/* Re-encoding the untouched parts gives the token back: the tampered
	 * tokens below differ from it in exactly the byte changed. */
	bad = token_with(token, (size_t)(dot1 - token), payload, payload_len, sig, sig_len);
	assert_string_equal(bad, token);
	free(bad);

	for (i = 0; i < sig_len; i++) {
		sig[i] ^= 0x01;
		bad = token_with(token, (size_t)(dot1 - token), payload, payload_len, sig, sig_len);
		assert_int_equal(jws_verify(bad, strlen(bad), lookup_by_kid, (void *)key, &parsed), JWS_E_BAD_SIGNATURE);
		assert_null(parsed);
		free(bad);
		sig[i] ^= 0x01;
		tried++;
	}
	for (i = 0; i < payload_len; i++) {
		payload[i] ^= 0x01;
		bad = token_with(token, (size_t)(dot1 - token), payload, payload_len, sig, sig_len);
		assert_int_equal(jws_verify(bad, strlen(bad), lookup_by_kid, (void *)key, &parsed), JWS_E_BAD_SIGNATURE);
		assert_null(parsed);
		free(bad);
		payload[i] ^= 0x01;
		tried++;
	}
	free(payload);
	free(sig);
	return tried;
}

static void check_verified(const json_t *ex, const char *token, struct jws_parsed *parsed, enum jws_alg alg)
{
	const json_t *input = json_object_get(ex, "input");
	const json_t *signing = json_object_get(ex, "signing");
	const char *payload = fixture_vectors_str(input, "payload");
	const char *sig_input = fixture_vectors_str(signing, "sig-input");

	assert_non_null(parsed);
	assert_int_equal(parsed->alg, alg);
	assert_true(json_equal(parsed->header, json_object_get(signing, "protected")));
	assert_int_equal(parsed->payload_len, strlen(payload));
	assert_memory_equal(parsed->payload, payload, parsed->payload_len);
	assert_int_equal(parsed->signing_input_len, strlen(sig_input));
	assert_memory_equal(token, sig_input, parsed->signing_input_len);
}

static void run_example(const struct example *e)
{
	json_t *ex = fixture_vectors_load(e->path);
	const json_t *input = json_object_get(ex, "input");
	const json_t *output = json_object_get(ex, "output");
	const char *token = fixture_vectors_str(output, "compact");
	json_t *pub_jwk, *priv_jwk;
	struct jwk_key *pub, *priv, *pinned = NULL;
	struct jws_parsed *parsed = NULL;
	unsigned tampered;
	const char *form, *kid;
	char *json_token;
	int i;

	assert_string_equal(fixture_vectors_str(input, "alg"), jws_alg_name(e->alg));
	if (e->private_jwk) {
		priv_jwk = fixture_vectors_load(e->private_jwk);
		pub_jwk = fixture_vectors_load(e->public_jwk);
	} else {
		priv_jwk = json_deep_copy(json_object_get(input, "key"));
		pub_jwk = json_deep_copy(priv_jwk);
		assert_int_equal(json_object_del(pub_jwk, "d"), 0);
	}
	assert_non_null(json_object_get(priv_jwk, "d"));
	assert_null(json_object_get(pub_jwk, "d"));

	/* No "alg" in the cookbook's keys: the key type decides what they verify. */
	assert_null(json_object_get(pub_jwk, "alg"));
	pub = key_from(pub_jwk);
	assert_int_equal(pub->alg, JWS_ALG_INVALID);
	assert_true(jwk_key_allows_alg(pub, e->alg));
	kid = json_string_value(json_object_get(pub_jwk, "kid"));
	assert_string_equal(pub->kid, kid ? kid : "");

	assert_int_equal(jws_verify(token, strlen(token), lookup_by_kid, pub, &parsed), 0);
	check_verified(ex, token, parsed, e->alg);
	jws_parsed_free(parsed);
	parsed = NULL;

	/* The private JWK is the same verification key. */
	priv = key_from(priv_jwk);
	assert_non_null(priv->pkey);
	assert_int_equal(EVP_PKEY_eq(pub->pkey, priv->pkey), 1);
	assert_int_equal(jws_verify(token, strlen(token), lookup_by_kid, priv, &parsed), 0);
	check_verified(ex, token, parsed, e->alg);
	jws_parsed_free(parsed);
	parsed = NULL;

	tampered = check_tampering(token, pub);

	/* Pinned to its own alg the key verifies; pinned to another one of its
	 * family it refuses (RFC 8725 §3.1). */
	assert_int_equal(jwk_key_from_pkey(pub->pkey, e->alg, &pinned), 0);
	assert_int_equal(jws_verify(token, strlen(token), lookup_any, pinned, &parsed), 0);
	jws_parsed_free(parsed);
	parsed = NULL;
	jwk_key_free(pinned);
	pinned = NULL;
	if (e->other_alg != JWS_ALG_INVALID) {
		assert_int_equal(jwk_key_from_pkey(pub->pkey, e->other_alg, &pinned), 0);
		assert_false(jwk_key_allows_alg(pinned, e->alg));
		assert_int_equal(jws_verify(token, strlen(token), lookup_any, pinned, &parsed),
				 JWS_E_UNSUPPORTED_ALG);
		assert_null(parsed);
		jwk_key_free(pinned);
	}

	/* The same signature in the JSON serializations is not a compact token. */
	for (i = 0; i < 2; i++) {
		form = i == 0 ? "json" : "json_flat";
		json_token = json_dumps(json_object_get(output, form), JSON_COMPACT);
		assert_non_null(json_token);
		assert_int_equal(jws_verify(json_token, strlen(json_token), lookup_by_kid, pub, &parsed),
				 JWS_E_MALFORMED);
		assert_null(parsed);
		free(json_token);
	}

	printf("%s (%s): verifies with public and private JWK; %u one-byte changes rejected\n", e->path,
	       jws_alg_name(e->alg), tampered);
	jwk_key_free(pub);
	jwk_key_free(priv);
	json_decref(pub_jwk);
	json_decref(priv_jwk);
	json_decref(ex);
}

static void test_4_1_rs256(void **state)
{
	static const struct example e = {
		"jose-cookbook/jws/4_1.rsa_v15_signature.json", "jose-cookbook/jwk/3_3.rsa_public_key.json",
		"jose-cookbook/jwk/3_4.rsa_private_key.json", JWS_ALG_RS256, JWS_ALG_PS256,
	};
	run_example(&e);
}

static void test_4_2_ps384(void **state)
{
	static const struct example e = {
		"jose-cookbook/jws/4_2.rsa-pss_signature.json", "jose-cookbook/jwk/3_3.rsa_public_key.json",
		"jose-cookbook/jwk/3_4.rsa_private_key.json", JWS_ALG_PS384, JWS_ALG_RS384,
	};
	run_example(&e);
}

static void test_4_3_es512(void **state)
{
	static const struct example e = {
		"jose-cookbook/jws/4_3.ecdsa_signature.json", "jose-cookbook/jwk/3_1.ec_public_key.json",
		"jose-cookbook/jwk/3_2.ec_private_key.json", JWS_ALG_ES512, JWS_ALG_INVALID,
	};
	run_example(&e);
}

static void test_rfc8037_eddsa(void **state)
{
	static const struct example e = {
		"jose-cookbook/curve25519/jws.json", NULL, NULL, JWS_ALG_EDDSA, JWS_ALG_INVALID,
	};
	run_example(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_4_1_rs256),
		cmocka_unit_test(test_4_2_ps384),
		cmocka_unit_test(test_4_3_es512),
		cmocka_unit_test(test_rfc8037_eddsa),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
