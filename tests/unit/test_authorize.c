/* POST /authorize's pure parts: which Authorization values carry a bearer
 * token (auth_bearer_token, RFC 6750 §2.1), and which verified claims may
 * pass to a proxy as x-auth-* headers (api_authorize_claims) — the token
 * types an API takes, and every claim value a header would not carry
 * byte for byte.  The HTTP side, nginx included, is
 * tests/integration/test_authorize.py. */
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

#include "hsmjwt/auth.h"

#include "../../src/api_internal.h"

#define UNTOUCHED ((const char *)(uintptr_t)0x1)

/* ---- auth_bearer_token ------------------------------------------------- */

static void assert_bearer(const char *authorization, const char *want)
{
	const char *token = UNTOUCHED;

	if (want == NULL) {
		assert_int_equal(auth_bearer_token(authorization, &token), -ENOENT);
		assert_ptr_equal(token, UNTOUCHED);
		return;
	}
	assert_int_equal(auth_bearer_token(authorization, &token), 0);
	assert_string_equal(token, want);
}

static void test_bearer_token(void **state)
{
	assert_bearer("Bearer abc.def.ghi", "abc.def.ghi");
	assert_bearer("bearer abc", "abc");
	assert_bearer("BEARER abc", "abc");
	assert_bearer("Bearer    abc", "abc");
	/* The token's own syntax is the verifier's to judge. */
	assert_bearer("Bearer a b", "a b");
}

static void test_bearer_not_sent(void **state)
{
	assert_bearer(NULL, NULL);
	assert_bearer("", NULL);
	assert_bearer("Bearer", NULL);
	assert_bearer("Bearer ", NULL);
	assert_bearer("Bearer    ", NULL);
	assert_bearer("Basic YWxpY2U6cGFzcw==", NULL);
	assert_bearer("Bearerabc", NULL);
	assert_bearer("Bearer\tabc", NULL);
	assert_bearer("abc.def.ghi", NULL);
	assert_bearer(" Bearer abc", NULL);
}

/* ---- api_authorize_claims ---------------------------------------------- */

/* claims_json (JSON_ALLOW_NUL, so a claim may hold "\u0000") granted. */
static void assert_granted(const char *claims_json)
{
	json_error_t error;
	json_t *claims = json_loads(claims_json, JSON_ALLOW_NUL, &error);
	const char *reason = UNTOUCHED;

	if (claims == NULL)
		fail_msg("bad test JSON %s: %s", claims_json, error.text);
	if (api_authorize_claims(claims, &reason) != 0)
		fail_msg("refused (%s): %s", reason, claims_json);
	assert_ptr_equal(reason, UNTOUCHED);
	json_decref(claims);
}

/* claims_json refused with a reason that names want_in_reason. */
static void assert_refused(const char *claims_json, const char *want_in_reason)
{
	json_error_t error;
	json_t *claims = json_loads(claims_json, JSON_ALLOW_NUL, &error);
	const char *reason = UNTOUCHED;

	if (claims == NULL)
		fail_msg("bad test JSON %s: %s", claims_json, error.text);
	if (api_authorize_claims(claims, &reason) != -EACCES)
		fail_msg("granted: %s", claims_json);
	assert_ptr_not_equal(reason, UNTOUCHED);
	if (strstr(reason, want_in_reason) == NULL)
		fail_msg("reason '%s' lacks '%s' for %s", reason, want_in_reason, claims_json);
	json_decref(claims);
}

static void test_types_an_api_takes(void **state)
{
	assert_granted("{\"token_type\": \"access\", \"sub\": \"alice\"}");
	assert_granted("{\"token_type\": \"child\", \"sub\": \"alice\", \"parent_jti\": \"p\"}");
	assert_granted("{\"token_type\": \"access\", \"sub\": \"alice\", \"org\": \"acme\","
		       " \"scope\": \"orders:read orders:write\", \"jti\": \"IEXdy8zlij9D23_21WFs6Q\"}");
	/* UTF-8 passes as bytes; inner spaces are part of the value. */
	assert_granted("{\"token_type\": \"access\", \"sub\": \"zo\\u00eb\", \"org\": \"\\u00e7a va\"}");
}

static void test_other_types_refused(void **state)
{
	static const char *const types[] = {
		"\"refresh\"", "\"id\"", "\"parent\"", "\"Access\"", "\"access \"", "\"\"", "1", "null",
		"[\"access\"]", "\"acc\\u0000ess\"",
	};
	char json[128];

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		snprintf(json, sizeof(json), "{\"token_type\": %s, \"sub\": \"alice\"}", types[i]);
		assert_refused(json, "not an access token");
	}
	assert_refused("{\"sub\": \"alice\"}", "not an access token");
}

static void test_subject_required(void **state)
{
	assert_refused("{\"token_type\": \"access\"}", "header");
	assert_refused("{\"token_type\": \"access\", \"sub\": \"\"}", "header");
	assert_refused("{\"token_type\": \"access\", \"sub\": 7}", "header");
	assert_refused("{\"token_type\": \"access\", \"sub\": null}", "header");
	assert_refused("{\"token_type\": \"access\", \"sub\": \"ali\\u0000ce\"}", "header");
}

/* Every value that a header would not carry unchanged, in each claim that
 * becomes one. */
static void test_header_unsafe_values_refused(void **state)
{
	static const char *const claims[] = { "sub", "org", "scope", "jti" };
	static const char *const values[] = {
		"\"mallory\\r\\nX-Injected: yes\"", "\"mallory\\r\\n X-Injected: yes\"", "\"a\\nb\"", "\"a\\rb\"",
		"\"a\\tb\"", "\"a\\u0001b\"", "\"a\\u001fb\"", "\"a\\u007fb\"", "\"a\\u0000b\"", "\" admin\"",
		"\"admin \"", "\"\\tadmin\"", "\"admin\\t\"", "\" \"", "1", "true", "[\"acme\"]", "{}", "null",
	};
	char json[256];

	for (size_t c = 0; c < sizeof(claims) / sizeof(claims[0]); c++) {
		for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
			if (strcmp(claims[c], "sub") == 0)
				snprintf(json, sizeof(json), "{\"token_type\": \"access\", \"sub\": %s}", values[v]);
			else
				snprintf(json, sizeof(json), "{\"token_type\": \"access\", \"sub\": \"alice\", \"%s\": %s}",
					 claims[c], values[v]);
			assert_refused(json, "header");
		}
	}
}

/* Claims that become no header are not judged. */
static void test_other_claims_ignored(void **state)
{
	assert_granted("{\"token_type\": \"access\", \"sub\": \"alice\", \"client_id\": \"a\\r\\nb\","
		       " \"roles\": [\"admin\"], \"aud\": [\"api\", \" x\"]}");
	/* Empty org or scope: a string, passed on as it is. */
	assert_granted("{\"token_type\": \"access\", \"sub\": \"alice\", \"org\": \"\", \"scope\": \"\"}");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bearer_token),
		cmocka_unit_test(test_bearer_not_sent),
		cmocka_unit_test(test_types_an_api_takes),
		cmocka_unit_test(test_other_types_refused),
		cmocka_unit_test(test_subject_required),
		cmocka_unit_test(test_header_unsafe_values_refused),
		cmocka_unit_test(test_other_claims_ignored),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
