/* jwt: the claims rules of SPEC §5.2 on top of a verified JWS — time
 * claims and both sides of every leeway boundary, issuer, audience, typ and
 * token_type, strict payload JSON — and the unverified decoder. */
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

static struct jwt_expect expect_default(void)
{
	struct jwt_expect e = { .now = NOW, .leeway = LEEWAY };
	return e;
}

/* jwt_verify; outputs checked for ownership and untouched on failure. */
static int verify_with(char *token, const struct jwt_expect *expect)
{
	json_t *header = (json_t *)0x1, *claims = (json_t *)0x1;
	int r = jwt_verify(token, strlen(token), lookup, NULL, expect, &header, &claims);

	if (r == 0) {
		assert_true(json_is_object(header));
		assert_true(json_is_object(claims));
		json_decref(header);
		json_decref(claims);
	} else {
		assert_ptr_equal(header, (json_t *)0x1);
		assert_ptr_equal(claims, (json_t *)0x1);
	}
	free(token);
	return r;
}

static int verify_claims(const char *members)
{
	struct jwt_expect e = expect_default();
	return verify_with(token_claims(members), &e);
}

/* "exp":<now + delta> and the rest of members, as JSON text. */
static char *with_exp(long long exp, const char *rest)
{
	char *s = NULL;

	assert_true(asprintf(&s, "\"exp\":%lld%s", exp, rest) > 0);
	return s;
}

static int verify_exp_and(long long exp, const char *rest)
{
	char *m = with_exp(exp, rest);
	int r = verify_claims(m);

	free(m);
	return r;
}

static void test_valid_token_and_outputs(void **state)
{
	struct jwt_expect e = expect_default();
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

static void test_signature_checked_before_claims(void **state)
{
	struct jwt_expect e = expect_default();
	char *token = token_claims("\"exp\":1");
	char *dot = strrchr(token, '.');

	/* An expired token with a broken signature says bad_signature: nothing
	 * about its claims is revealed before it is known to be genuine. */
	dot[1] = dot[1] == 'A' ? 'B' : 'A';
	assert_int_equal(verify_with(token, &e), JWS_E_BAD_SIGNATURE);
	/* Header rules still apply through jwt_verify. */
	assert_int_equal(verify_with(token_raw("{\"alg\":\"ES256\",\"kid\":\"p256\",\"jku\":\"https://x\"}",
					       "{\"exp\":1700003600}"), &e),
			 JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw("{\"alg\":\"ES256\",\"kid\":\"other\"}", "{\"exp\":1700003600}"), &e),
			 JWS_E_UNKNOWN_KID);
}

static void test_exp_required_and_numeric(void **state)
{
	assert_int_equal(verify_claims("\"exp\":1700003600"), 0);
	assert_int_equal(verify_claims("\"sub\":\"alice\""), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":\"1700003600\""), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":true"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":null"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":[1700003600]"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":{}"), JWS_E_MALFORMED);
	/* A real is a number (RFC 7519 NumericDate allows fractions). */
	assert_int_equal(verify_claims("\"exp\":1700003600.5"), 0);
	assert_int_equal(verify_claims("\"exp\":1.7000036e9"), 0);
}

static void test_nbf_iat_numeric(void **state)
{
	assert_int_equal(verify_claims("\"exp\":1700003600,\"nbf\":1700000000,\"iat\":1700000000"), 0);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"nbf\":\"1700000000\""), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"nbf\":false"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"nbf\":null"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"iat\":\"1700000000\""), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"iat\":true"), JWS_E_MALFORMED);
	assert_int_equal(verify_claims("\"exp\":1700003600,\"iat\":1699999999.25"), 0);
}

/* RFC 7519 §4.1.4: valid only before exp + leeway: one second before the
 * token passes, at now == exp + leeway it has expired. */
static void test_exp_boundary(void **state)
{
	assert_int_equal(verify_exp_and(NOW - LEEWAY + 1, ""), 0);
	assert_int_equal(verify_exp_and(NOW - LEEWAY, ""), JWS_E_EXPIRED);
	assert_int_equal(verify_exp_and(NOW - LEEWAY - 1, ""), JWS_E_EXPIRED);
	assert_int_equal(verify_exp_and(NOW, ""), 0);
	assert_int_equal(verify_exp_and(1, ""), JWS_E_EXPIRED);
	assert_int_equal(verify_exp_and(-1, ""), JWS_E_EXPIRED);
	/* Fractions: half a second past the boundary is past it. */
	{
		char m[64];
		snprintf(m, sizeof(m), "\"exp\":%lld.5", NOW - LEEWAY - 1);
		assert_int_equal(verify_claims(m), JWS_E_EXPIRED);
		snprintf(m, sizeof(m), "\"exp\":%lld.5", NOW - LEEWAY);
		assert_int_equal(verify_claims(m), 0);
	}
	/* Without leeway the boundary is exp itself. */
	{
		struct jwt_expect e = { .now = NOW, .leeway = 0 };
		char *m = with_exp(NOW + 1, "");
		assert_int_equal(verify_with(token_claims(m), &e), 0);
		free(m);
		m = with_exp(NOW, "");
		assert_int_equal(verify_with(token_claims(m), &e), JWS_E_EXPIRED);
		free(m);
	}
}

/* Not before nbf - leeway: nbf == now + leeway passes, one second more does not. */
static void test_nbf_boundary(void **state)
{
	char rest[64];

	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW + LEEWAY);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), 0);
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW + LEEWAY + 1);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), JWS_E_NOT_YET_VALID);
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld.5", NOW + LEEWAY);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), JWS_E_NOT_YET_VALID);
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW - 100000);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), 0);
}

static void test_iat_boundary(void **state)
{
	char rest[64];

	snprintf(rest, sizeof(rest), ",\"iat\":%lld", NOW + LEEWAY);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), 0);
	snprintf(rest, sizeof(rest), ",\"iat\":%lld", NOW + LEEWAY + 1);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), JWS_E_NOT_YET_VALID);
	snprintf(rest, sizeof(rest), ",\"iat\":%lld.5", NOW + LEEWAY);
	assert_int_equal(verify_exp_and(NOW + 3600, rest), JWS_E_NOT_YET_VALID);
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

static void test_issuer(void **state)
{
	struct jwt_expect e = expect_default();

	e.issuer = "https://issuer.example";
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":\"https://issuer.example\""), &e), 0);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":\"https://issuer.example/\""), &e),
			 JWS_E_WRONG_ISSUER);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":\"https://ISSUER.example\""), &e),
			 JWS_E_WRONG_ISSUER);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":\"https://issuer.exampl\""), &e),
			 JWS_E_WRONG_ISSUER);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600"), &e), JWS_E_WRONG_ISSUER);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":[\"https://issuer.example\"]"), &e),
			 JWS_E_MALFORMED);
	/* Not asked: not checked. */
	e.issuer = NULL;
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"iss\":\"https://other.example\""), &e), 0);
}

/* aud: a string equal to the audience, or an array of strings holding it.
 * An aud of another type, or an array with a non-string member, breaks
 * RFC 7519 §4.1.3 and is malformed; a well-formed aud without the
 * audience is wrong_audience. */
static void test_audience(void **state)
{
	struct jwt_expect e = expect_default();

	e.audience = "api";
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":\"api\""), &e), 0);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[\"web\",\"api\"]"), &e), 0);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[\"api\"]"), &e), 0);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":\"apis\""), &e), JWS_E_WRONG_AUDIENCE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":\"API\""), &e), JWS_E_WRONG_AUDIENCE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[\"web\",\"ap\"]"), &e),
			 JWS_E_WRONG_AUDIENCE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[]"), &e), JWS_E_WRONG_AUDIENCE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600"), &e), JWS_E_WRONG_AUDIENCE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[\"api\",7]"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[7,\"api\"]"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":[[\"api\"]]"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":{\"api\":1}"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":null"), &e), JWS_E_MALFORMED);
	e.audience = NULL;
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"aud\":\"web\""), &e), 0);
}

/* RFC 7515 §4.1.9: "application/" may be omitted, media types compare
 * case-insensitively. */
static void test_typ(void **state)
{
	static const char *const same[] = { "at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt", "APPLICATION/AT+JWT" };
	static const char *const other[] = { "jwt", "JWT", "rt+jwt", "at+jwt2", "text/at+jwt", "application/jwt",
					     "application/application/at+jwt", "at+jwt ", "" };
	struct jwt_expect e = expect_default();

	e.typ = "at+jwt";
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
		assert_int_equal(verify_with(token_typ(same[i], "\"exp\":1700003600"), &e), 0);
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		assert_int_equal(verify_with(token_typ(other[i], "\"exp\":1700003600"), &e), JWS_E_WRONG_TYPE);
	assert_int_equal(verify_with(token_typ(NULL, "\"exp\":1700003600"), &e), JWS_E_WRONG_TYPE);
	/* The expected value may carry the prefix too. */
	e.typ = "application/at+jwt";
	assert_int_equal(verify_with(token_typ("at+jwt", "\"exp\":1700003600"), &e), 0);
	assert_int_equal(verify_with(token_typ("rt+jwt", "\"exp\":1700003600"), &e), JWS_E_WRONG_TYPE);
	/* Not asked: not checked. */
	e.typ = NULL;
	assert_int_equal(verify_with(token_typ("rt+jwt", "\"exp\":1700003600"), &e), 0);
	/* jwt_check_claims directly: no header, or a non-string typ. */
	{
		json_t *claims = json_pack("{s:I}", "exp", (json_int_t)1700003600);
		json_t *header = json_pack("{s:i}", "typ", 1);
		e.typ = "at+jwt";
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
}

static void test_token_type(void **state)
{
	struct jwt_expect e = expect_default();

	e.token_type = "access";
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"token_type\":\"access\""), &e), 0);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"token_type\":\"Access\""), &e),
			 JWS_E_WRONG_TYPE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"token_type\":\"refresh\""), &e),
			 JWS_E_WRONG_TYPE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600"), &e), JWS_E_WRONG_TYPE);
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"token_type\":1"), &e), JWS_E_MALFORMED);
	e.token_type = NULL;
	assert_int_equal(verify_with(token_claims("\"exp\":1700003600,\"token_type\":\"refresh\""), &e), 0);
}

static char *nested_payload(int depth)
{
	/* The claims object is depth 1; each array adds one. */
	char *s = malloc(64 + 2 * (size_t)depth), *p;

	assert_non_null(s);
	p = s + sprintf(s, "{\"exp\":1700003600,\"x\":");
	for (int i = 1; i < depth; i++)
		*p++ = '[';
	*p++ = '1';
	for (int i = 1; i < depth; i++)
		*p++ = ']';
	strcpy(p, "}");
	return s;
}

static void test_payload_strict_json(void **state)
{
	struct jwt_expect e = expect_default();
	const char *h = "{\"alg\":\"ES256\",\"kid\":\"p256\"}";
	char *ok = nested_payload(16), *deep = nested_payload(17);

	assert_int_equal(verify_with(token_raw(h, "{\"exp\":1700003600,\"sub\":\"a\"}"), &e), 0);
	/* Duplicate names: which exp would count? */
	assert_int_equal(verify_with(token_raw(h, "{\"exp\":1,\"exp\":1700003600}"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, "{\"exp\":1700003600,\"sub\":\"a\",\"sub\":\"b\"}"), &e),
			 JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, ok), &e), 0);
	assert_int_equal(verify_with(token_raw(h, deep), &e), JWS_E_MALFORMED);
	/* Not an object. */
	assert_int_equal(verify_with(token_raw(h, "[{\"exp\":1700003600}]"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, "\"exp\""), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, "1700003600"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, "{\"exp\":1700003600"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, "{\"exp\":1700003600} {}"), &e), JWS_E_MALFORMED);
	assert_int_equal(verify_with(token_raw(h, ""), &e), JWS_E_MALFORMED);
	free(ok);
	free(deep);
	/* jwt_check_claims on a non-object. */
	{
		json_t *arr = json_array();
		assert_int_equal(jwt_check_claims(NULL, arr, &e), JWS_E_MALFORMED);
		assert_int_equal(jwt_check_claims(NULL, NULL, &e), JWS_E_MALFORMED);
		json_decref(arr);
	}
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
		cmocka_unit_test(test_valid_token_and_outputs),
		cmocka_unit_test(test_signature_checked_before_claims),
		cmocka_unit_test(test_exp_required_and_numeric),
		cmocka_unit_test(test_nbf_iat_numeric),
		cmocka_unit_test(test_exp_boundary),
		cmocka_unit_test(test_nbf_boundary),
		cmocka_unit_test(test_iat_boundary),
		cmocka_unit_test(test_time_extremes),
		cmocka_unit_test(test_issuer),
		cmocka_unit_test(test_audience),
		cmocka_unit_test(test_typ),
		cmocka_unit_test(test_token_type),
		cmocka_unit_test(test_payload_strict_json),
		cmocka_unit_test(test_decode_unverified),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
