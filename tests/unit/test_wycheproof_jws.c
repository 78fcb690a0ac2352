/* Wycheproof json_web_signature_test.json through the project's verifier.
 *
 * Every test case is run: the group's JWK ("public" if the group has one,
 * else "private", whose private members jwk_key_from_json ignores; for the
 * HMAC groups "private" is the only form and "k" is the key) is parsed with
 * jwk_key_from_json, and the case's "jws" string goes to jws_verify with a
 * lookup that returns that key whatever the kid says, so that a modified kid
 * must be caught by the signature check rather than by the lookup.  A JWK
 * the parser refuses leaves the lookup empty: every case of that group must
 * then be rejected.
 *
 * Verdicts: "valid" must give 0, "invalid" a non-zero verification error.
 * "acceptable" (none in the pinned file, handled for a future update) is
 * asserted rejected: hsmjwt accepts one encoding of one token (RFC 8725) and
 * has no legacy mode.  A handful of Wycheproof expectations are wrong for a
 * strict verifier; they are listed in exceptions[] below with the verdict
 * hsmjwt gives, and that verdict is asserted.
 *
 * What the file holds (Wycheproof commit in tests/data/wycheproof/SOURCE):
 * 401 cases in 23 groups, all compact serializations except tcId 17, a JWS
 * JSON serialization ({"payload":...,"signatures":[...]}) that Wycheproof
 * expects rejected ("rejectsValidJsonSerialization"); it is passed to
 * jws_verify as is and must be refused as malformed, since hsmjwt speaks
 * compact serialization only (SPEC §5.1).  No case's expectation depends on
 * anything but the token and the group key (no time, no critical headers). */
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

#include "fixture_vectors.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"

#define VECTORS "wycheproof/json_web_signature_test.json"

/* Why an expectation is overruled; each kind is re-checked on the vector
 * itself, so an entry cannot silently cover a different case. */
enum exception_kind {
	/* The JWK's "alg" names another algorithm than the token's header. */
	EXC_KEY_ALG_MISMATCH,
	/* Named after padding, but the token has none: it is byte for byte a
	 * token of the same group that Wycheproof itself marks valid. */
	EXC_NOT_PADDED,
	/* A '?' inside a base64url part. */
	EXC_NOT_BASE64URL,
};

struct exception {
	int tc_id;
	int hsmjwt_accepts;   /* the verdict hsmjwt gives and this test asserts */
	enum exception_kind kind;
	const char *why;
};

static const struct exception exceptions[] = {
	/* RFC 7520 Figure 20 is a PS384 signature, but Wycheproof's JWK for it
	 * says "alg":"PS256" (RFC 7520's own key carries no alg).  RFC 8725
	 * §3.1: a key is used with one algorithm, and a JWK's "alg" (RFC 7517
	 * §4.4) names it; verifying PS384 with a PS256 key is the algorithm
	 * substitution §5.2 forbids.  hsmjwt: rejected (unsupported_alg). */
	{ 346, 0, EXC_KEY_ALG_MISMATCH, "JWK alg PS256, token PS384 (RFC 8725 §3.1)" },
	/* RFC 7520 Figure 27 is ES512; the JWK says "alg":"ES521", which is not
	 * a JWA name at all.  A key restricted to an unknown algorithm is not a
	 * key for ES512.  hsmjwt: rejected (JWK refused or alg not allowed). */
	{ 347, 0, EXC_KEY_ALG_MISMATCH, "JWK alg \"ES521\" (not JWA), token ES512 (RFC 8725 §3.1)" },
	/* 350/351: the same two tokens with "key_ops":["verify"] JWKs; the
	 * alg mismatch is unchanged. */
	{ 350, 0, EXC_KEY_ALG_MISMATCH, "JWK alg PS256, token PS384 (RFC 8725 §3.1)" },
	{ 351, 0, EXC_KEY_ALG_MISMATCH, "JWK alg \"ES521\" (not JWA), token ES512 (RFC 8725 §3.1)" },
	/* "invalidBase64Padding" / "invalidBase64PaddingInPayload": the token
	 * carries no '=' at all and is identical to tcId 357 ("ValidMac"), a
	 * canonical, correctly MACed token.  Rejecting it would mean rejecting
	 * 357.  hsmjwt: accepted. */
	{ 367, 1, EXC_NOT_PADDED, "no padding in the token; identical to a valid case (357)" },
	{ 370, 1, EXC_NOT_PADDED, "no padding in the token; identical to a valid case (357)" },
	/* "InvalidCharacterInsertedInHeader/Payload", expected valid: Wycheproof
	 * allows decoders that skip characters outside the alphabet.  SPEC §5.2
	 * (and RFC 7515 §2, RFC 8725 one-encoding) reject non-canonical
	 * base64url: '?' is not in the alphabet.  hsmjwt: rejected (malformed). */
	{ 372, 0, EXC_NOT_BASE64URL, "'?' in the header part is not base64url (SPEC §5.2)" },
	{ 373, 0, EXC_NOT_BASE64URL, "'?' in the payload part is not base64url (SPEC §5.2)" },
};
#define N_EXCEPTIONS (sizeof(exceptions) / sizeof(exceptions[0]))

static const struct exception *exception_find(int tc_id)
{
	size_t i;

	for (i = 0; i < N_EXCEPTIONS; i++)
		if (exceptions[i].tc_id == tc_id)
			return &exceptions[i];
	return NULL;
}

struct group_key {
	const struct jwk_key *key;   /* NULL when the JWK was refused */
	unsigned calls;
};

static const struct jwk_key *lookup_group_key(void *ctx, const char *kid)
{
	struct group_key *gk = ctx;

	(void)kid;
	gk->calls++;
	return gk->key;
}

/* The header's "alg" of a compact token, decoded here only to re-check an
 * exception's premise (never used for the verdict). */
static char *header_alg(const char *token)
{
	const char *dot = strchr(token, '.');
	uint8_t *buf = NULL;
	size_t len = 0;
	json_t *hdr;
	char *alg = NULL;

	assert_non_null(dot);
	assert_int_equal(b64url_decode_alloc(token, (size_t)(dot - token), &buf, &len), 0);
	hdr = json_loadb((const char *)buf, len, 0, NULL);
	assert_non_null(hdr);
	alg = strdup(fixture_vectors_str(hdr, "alg"));
	json_decref(hdr);
	free(buf);
	return alg;
}

/* Fails unless the exception's stated reason holds for this vector. */
static void exception_check_premise(const struct exception *e, const json_t *group, const json_t *jwk,
				    const char *token)
{
	const json_t *tests = json_object_get(group, "tests");
	const json_t *t;
	size_t i;
	int twin = 0;
	char *alg;

	switch (e->kind) {
	case EXC_KEY_ALG_MISMATCH:
		alg = header_alg(token);
		if (strcmp(alg, fixture_vectors_str(jwk, "alg")) == 0)
			fail_msg("tcId %d: JWK alg equals header alg %s; the exception does not apply", e->tc_id, alg);
		free(alg);
		break;
	case EXC_NOT_PADDED:
		assert_null(strchr(token, '='));
		json_array_foreach(tests, i, t) {
			if (strcmp(fixture_vectors_str(t, "result"), "valid") == 0 &&
			    strcmp(fixture_vectors_str(t, "jws"), token) == 0)
				twin = 1;
		}
		if (!twin)
			fail_msg("tcId %d: no valid case in its group carries the same token", e->tc_id);
		break;
	case EXC_NOT_BASE64URL:
		assert_non_null(strchr(token, '?'));
		break;
	}
}

static int is_verification_error(int rc)
{
	return rc == JWS_E_MALFORMED || rc == JWS_E_UNSUPPORTED_ALG || rc == JWS_E_UNKNOWN_KID ||
	       rc == JWS_E_BAD_SIGNATURE;
}

static int has_flag(const json_t *test, const char *flag)
{
	const json_t *f;
	size_t i;

	json_array_foreach(json_object_get(test, "flags"), i, f)
		if (json_is_string(f) && strcmp(json_string_value(f), flag) == 0)
			return 1;
	return 0;
}

static void test_exception_list_shape(void **state)
{
	size_t i, j;

	/* Exactly the eight cases reviewed; a new entry needs a new review. */
	assert_int_equal(N_EXCEPTIONS, 8);
	for (i = 0; i < N_EXCEPTIONS; i++) {
		assert_true(exceptions[i].hsmjwt_accepts == 0 || exceptions[i].hsmjwt_accepts == 1);
		assert_non_null(exceptions[i].why);
		for (j = i + 1; j < N_EXCEPTIONS; j++)
			assert_int_not_equal(exceptions[i].tc_id, exceptions[j].tc_id);
	}
}

static void test_every_case(void **state)
{
	json_t *root = fixture_vectors_load(VECTORS);
	const json_t *group, *test;
	size_t gi, ti, i;
	int seen_exception[N_EXCEPTIONS] = { 0 };
	unsigned checked = 0, n_valid = 0, n_invalid = 0, n_acceptable = 0, n_json = 0;
	unsigned n_exceptions = 0, mismatches = 0, refused_jwks = 0;
	unsigned by_reason[4] = { 0 }; /* malformed, unsupported_alg, unknown_kid, bad_signature */
	json_int_t declared = json_integer_value(json_object_get(root, "numberOfTests"));
	json_t *ids = json_object();

	assert_true(json_array_size(json_object_get(root, "testGroups")) > 0);
	json_array_foreach(json_object_get(root, "testGroups"), gi, group) {
		const json_t *jwk = json_object_get(group, "public");
		struct jwk_key *key = NULL;
		struct group_key gk;
		int krc;

		if (jwk == NULL)
			jwk = json_object_get(group, "private");
		assert_true(json_is_object(jwk));
		krc = jwk_key_from_json(jwk, &key);
		if (krc != 0) {
			assert_null(key);
			assert_true(krc == -EINVAL);
			refused_jwks++;
			printf("group %zu (%s): JWK refused (%d); its %zu cases must all be rejected\n", gi,
			       fixture_vectors_str(group, "comment"), krc,
			       json_array_size(json_object_get(group, "tests")));
		} else {
			assert_non_null(key);
		}
		gk.key = key;

		json_array_foreach(json_object_get(group, "tests"), ti, test) {
			json_int_t tc = json_integer_value(json_object_get(test, "tcId"));
			const char *result = fixture_vectors_str(test, "result");
			const char *token = fixture_vectors_str(test, "jws");
			const struct exception *exc = exception_find((int)tc);
			struct jws_parsed *parsed = NULL;
			char tcname[32];
			int want_accept, rc;

			snprintf(tcname, sizeof(tcname), "%lld", (long long)tc);
			assert_null(json_object_get(ids, tcname)); /* tcIds are unique */
			json_object_set_new(ids, tcname, json_true());

			if (strcmp(result, "valid") == 0) {
				want_accept = 1;
				n_valid++;
			} else if (strcmp(result, "invalid") == 0) {
				want_accept = 0;
				n_invalid++;
			} else if (strcmp(result, "acceptable") == 0) {
				want_accept = 0; /* strict: see the file comment */
				n_acceptable++;
			} else {
				fail_msg("tcId %lld: unknown result \"%s\"", (long long)tc, result);
				return;
			}
			if (exc != NULL) {
				/* An entry that agrees with Wycheproof hides nothing and
				 * means the list is stale. */
				assert_int_not_equal(exc->hsmjwt_accepts, want_accept);
				exception_check_premise(exc, group, jwk, token);
				want_accept = exc->hsmjwt_accepts;
				seen_exception[exc - exceptions]++;
				n_exceptions++;
			}

			gk.calls = 0;
			rc = jws_verify(token, strlen(token), lookup_group_key, &gk, &parsed);
			checked++;
			if (rc == 0) {
				assert_non_null(parsed);
				assert_true(gk.calls > 0);
				jws_parsed_free(parsed);
			} else {
				/* ret_ untouched on failure, and a verification outcome,
				 * not an internal error. */
				assert_null(parsed);
				if (!is_verification_error(rc))
					fail_msg("tcId %lld: jws_verify returned %d (%s), not a verification error",
						 (long long)tc, rc, jws_error_reason(rc));
				by_reason[JWS_E_MALFORMED - rc]++;
			}
			if (token[0] == '{') {
				/* A JWS JSON serialization: compact only, refused as malformed. */
				assert_true(has_flag(test, "JsonSerialization"));
				assert_int_equal(rc, JWS_E_MALFORMED);
				n_json++;
			}
			if (exc != NULL)
				printf("exception tcId %d: hsmjwt %s (%s), Wycheproof says %s: %s\n", exc->tc_id,
				       rc == 0 ? "accepts" : "rejects", rc == 0 ? "ok" : jws_error_reason(rc), result,
				       exc->why);
			if ((rc == 0) != want_accept) {
				mismatches++;
				printf("MISMATCH tcId %lld (%s, group %s): hsmjwt %s (%d %s), expected %s%s\n",
				       (long long)tc, fixture_vectors_str(test, "comment"),
				       fixture_vectors_str(group, "comment"), rc == 0 ? "accepts" : "rejects", rc,
				       rc == 0 ? "" : jws_error_reason(rc), want_accept ? "accept" : "reject",
				       exc ? " (exception list)" : "");
			}
		}
		jwk_key_free(key);
	}

	/* Every listed id exists in the file, exactly once. */
	for (i = 0; i < N_EXCEPTIONS; i++)
		if (seen_exception[i] != 1)
			fail_msg("exception tcId %d seen %d times in %s", exceptions[i].tc_id, seen_exception[i],
				 VECTORS);
	assert_int_equal(n_exceptions, N_EXCEPTIONS);
	assert_int_equal(checked, (unsigned)declared);
	assert_int_equal(checked, n_valid + n_invalid + n_acceptable);
	assert_int_equal(n_json, 1);
	printf("%s: %u checked (%u valid, %u invalid, %u acceptable; %u JSON serialization), "
	       "%u exceptions, %u groups with a refused JWK, %u mismatches\n",
	       VECTORS, checked, n_valid, n_invalid, n_acceptable, n_json, n_exceptions, refused_jwks, mismatches);
	printf("rejections: %u malformed, %u unsupported_alg, %u unknown_kid, %u bad_signature\n", by_reason[0],
	       by_reason[1], by_reason[2], by_reason[3]);
	assert_int_equal(mismatches, 0);
	json_decref(ids);
	json_decref(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exception_list_shape),
		cmocka_unit_test(test_every_case),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
