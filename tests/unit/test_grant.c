/* grant: the token endpoint's grant requests and POST /codes bodies as pure
 * parsers — both grants with every member, unknown members ignored (RFC
 * 6749 §3.2), unsupported grant types, missing and mistyped members,
 * code_verifier syntax, scope syntax and narrowing, redirect_uri and
 * client_id validity, POST /codes with org confinement, S256 only, unknown
 * members refused, auth_time bounds; outputs untouched on every refusal, and
 * no refusal text quotes a token, code or verifier. */
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

#include "hsmjwt/grant.h"

#define NOW 1800000000LL
#define LEEWAY 30
#define VERIFIER "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
#define CHALLENGE "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
#define REFRESH "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtcmVmcmVzaCJ9.c2ln"
#define CODE "SplxlOBeZQQYbYS6WxSbIA-secret-code-0123456"

static json_t *parse_json(const char *text)
{
	json_error_t error;
	json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &error);

	if (v == NULL)
		fail_msg("bad test JSON %s: %s", text, error.text);
	return v;
}

/* Parses text (a JSON object) and returns grant_parse's result; on success
 * *ret holds the request (borrowing from *ret_body). */
static int parse_grant(const char *text, struct grant_request *ret, json_t **ret_body, char *err, size_t errlen)
{
	json_t *body = parse_json(text);
	int r = grant_parse(body, ret, err, errlen);

	*ret_body = body;
	return r;
}

static void assert_grant_refused(const char *text, int want)
{
	struct grant_request g;
	json_t *body;
	char err[160] = "";

	memset(&g, 0x5a, sizeof(g));
	assert_int_equal(parse_grant(text, &g, &body, err, sizeof(err)), want);
	assert_int_equal(((unsigned char *)&g)[0], 0x5a);
	assert_true(err[0] != '\0');
	assert_null(strstr(err, "secret"));
	assert_null(strstr(err, VERIFIER));
	json_decref(body);
}

/* ---- grant_parse ------------------------------------------------------- */

static void test_refresh_grant(void **state)
{
	struct grant_request g;
	json_t *body;
	char err[160];

	assert_int_equal(parse_grant("{\"grant_type\": \"refresh_token\", \"refresh_token\": \"" REFRESH "\"}", &g,
				     &body, err, sizeof(err)), 0);
	assert_int_equal(g.type, GRANT_REFRESH_TOKEN);
	assert_string_equal(g.refresh_token, REFRESH);
	assert_null(g.scope);
	assert_null(g.client_id);
	assert_null(g.code);
	json_decref(body);

	/* scope and client_id, and members of other grants or unknown ones
	 * (client_secret, a code), which RFC 6749 §3.2 says to ignore. */
	assert_int_equal(parse_grant("{\"grant_type\": \"refresh_token\", \"refresh_token\": \"" REFRESH "\", "
				     "\"scope\": \"read\", \"client_id\": \"app-1\", \"client_secret\": \"x\", "
				     "\"code\": \"c\", \"whatever\": 1}", &g, &body, err, sizeof(err)), 0);
	assert_string_equal(g.scope, "read");
	assert_string_equal(g.client_id, "app-1");
	assert_null(g.code);
	json_decref(body);
}

static void test_code_grant(void **state)
{
	struct grant_request g;
	json_t *body;
	char err[160];

	assert_int_equal(parse_grant("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
				     "\"redirect_uri\": \"https://app.example/cb\", \"client_id\": \"app-1\", "
				     "\"code_verifier\": \"" VERIFIER "\", \"scope\": \"ignored\"}", &g, &body, err,
				     sizeof(err)), 0);
	assert_int_equal(g.type, GRANT_AUTHORIZATION_CODE);
	assert_string_equal(g.code, CODE);
	assert_string_equal(g.redirect_uri, "https://app.example/cb");
	assert_string_equal(g.client_id, "app-1");
	assert_string_equal(g.code_verifier, VERIFIER);
	assert_null(g.refresh_token);
	assert_null(g.scope);
	json_decref(body);
}

static void test_grant_refusals(void **state)
{
	/* Not a grant this service implements. */
	assert_grant_refused("{\"grant_type\": \"password\", \"username\": \"u\", \"password\": \"secret\"}",
			     GRANT_E_UNSUPPORTED);
	assert_grant_refused("{\"grant_type\": \"client_credentials\"}", GRANT_E_UNSUPPORTED);
	assert_grant_refused("{\"grant_type\": \"Refresh_Token\", \"refresh_token\": \"" REFRESH "\"}",
			     GRANT_E_UNSUPPORTED);
	/* grant_type missing, empty or not a string. */
	assert_grant_refused("{\"refresh_token\": \"" REFRESH "\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"\", \"refresh_token\": \"" REFRESH "\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": 1}", -EINVAL);
	assert_grant_refused("[\"grant_type\"]", -EINVAL);
	/* refresh_token missing or mistyped, scope empty. */
	assert_grant_refused("{\"grant_type\": \"refresh_token\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"refresh_token\", \"refresh_token\": [\"" REFRESH "\"]}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"refresh_token\", \"refresh_token\": \"" REFRESH "\", \"scope\": \"\"}",
			     -EINVAL);
	assert_grant_refused("{\"grant_type\": \"refresh_token\", \"refresh_token\": \"" REFRESH "\", \"client_id\": 7}",
			     -EINVAL);
	/* Each member of the code grant missing in turn. */
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"redirect_uri\": \"https://a/cb\", "
			     "\"client_id\": \"app\", \"code_verifier\": \"" VERIFIER "\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
			     "\"client_id\": \"app\", \"code_verifier\": \"" VERIFIER "\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
			     "\"redirect_uri\": \"https://a/cb\", \"code_verifier\": \"" VERIFIER "\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
			     "\"redirect_uri\": \"https://a/cb\", \"client_id\": \"app\"}", -EINVAL);
	/* A verifier outside RFC 7636 §4.1: short, with '+', too long. */
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
			     "\"redirect_uri\": \"https://a/cb\", \"client_id\": \"app\", "
			     "\"code_verifier\": \"secret-but-short\"}", -EINVAL);
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": \"" CODE "\", "
			     "\"redirect_uri\": \"https://a/cb\", \"client_id\": \"app\", "
			     "\"code_verifier\": \"dBjftJeZ4CVP+mB92K27uhbUJU1p1r_wW1gFWFOEjXk\"}", -EINVAL);
	{
		char text[512], v[CODES_VERIFIER_MAX + 2];
		memset(v, 'v', sizeof(v) - 1);
		v[sizeof(v) - 1] = '\0';
		snprintf(text, sizeof(text), "{\"grant_type\": \"authorization_code\", \"code\": \"%s\", "
			 "\"redirect_uri\": \"https://a/cb\", \"client_id\": \"app\", \"code_verifier\": \"%s\"}", CODE, v);
		assert_grant_refused(text, -EINVAL);
	}
	assert_grant_refused("{\"grant_type\": \"authorization_code\", \"code\": 5, "
			     "\"redirect_uri\": \"https://a/cb\", \"client_id\": \"app\", "
			     "\"code_verifier\": \"" VERIFIER "\"}", -EINVAL);
}

/* No body at all (the caller's JSON was not an object): refused, the
 * output untouched. */
static void test_grant_null_body(void **state)
{
	struct grant_request g;
	char err[160];

	memset(&g, 0x5a, sizeof(g));
	assert_int_equal(grant_parse(NULL, &g, err, sizeof(err)), -EINVAL);
	assert_int_equal(((unsigned char *)&g)[0], 0x5a);
}

/* ---- scopes -------------------------------------------------------------- */

static void test_scope_syntax(void **state)
{
	assert_true(grant_scope_valid("read"));
	assert_true(grant_scope_valid("read write openid"));
	assert_true(grant_scope_valid("urn:x:y!#$%&'()*+,-./:;<=>?@[]^_`{|}~"));
	assert_false(grant_scope_valid(""));
	assert_false(grant_scope_valid(NULL));
	assert_false(grant_scope_valid(" read"));
	assert_false(grant_scope_valid("read "));
	assert_false(grant_scope_valid("read  write"));
	assert_false(grant_scope_valid("re\"ad"));
	assert_false(grant_scope_valid("re\\ad"));
	assert_false(grant_scope_valid("read\twrite"));
	assert_false(grant_scope_valid("caf\xc3\xa9"));
}

static void test_scope_narrowing(void **state)
{
	assert_int_equal(grant_scope_narrows("read write admin", "read"), 0);
	assert_int_equal(grant_scope_narrows("read write admin", "admin read"), 0);
	assert_int_equal(grant_scope_narrows("read write admin", "read write admin"), 0);
	assert_int_equal(grant_scope_narrows("read write", "read read"), 0);
	/* Widening: a scope not granted, a prefix or extension of one. */
	assert_int_equal(grant_scope_narrows("read write", "read delete"), -EACCES);
	assert_int_equal(grant_scope_narrows("read write", "rea"), -EACCES);
	assert_int_equal(grant_scope_narrows("read write", "reads"), -EACCES);
	assert_int_equal(grant_scope_narrows("read write", "read write admin"), -EACCES);
	/* A token without scope has nothing to narrow. */
	assert_int_equal(grant_scope_narrows(NULL, "read"), -EACCES);
	/* Malformed. */
	assert_int_equal(grant_scope_narrows("read write", "read  write"), -EINVAL);
	assert_int_equal(grant_scope_narrows("read write", ""), -EINVAL);
}

/* ---- redirect_uri, client_id --------------------------------------------- */

static void test_redirect_uri(void **state)
{
	char uri[CODES_REDIRECT_URI_MAX + 2];

	assert_true(grant_redirect_uri_valid("https://app.example/cb"));
	assert_true(grant_redirect_uri_valid("http://127.0.0.1:5000/callback?state=1"));
	assert_true(grant_redirect_uri_valid("com.example.app:/oauth2redirect"));
	assert_true(grant_redirect_uri_valid("x:y"));
	assert_false(grant_redirect_uri_valid("/relative/cb"));
	assert_false(grant_redirect_uri_valid("app.example/cb"));
	assert_false(grant_redirect_uri_valid("https:"));
	assert_false(grant_redirect_uri_valid("1http://a/cb"));
	assert_false(grant_redirect_uri_valid("https://app.example/cb#frag"));
	assert_false(grant_redirect_uri_valid("https://app.example/c b"));
	assert_false(grant_redirect_uri_valid("https://app.example/cb\r\nX: y"));
	assert_false(grant_redirect_uri_valid("https://app.example/caf\xc3\xa9"));
	assert_false(grant_redirect_uri_valid(""));
	assert_false(grant_redirect_uri_valid(NULL));
	memcpy(uri, "https://a/", 10);
	memset(uri + 10, 'p', sizeof(uri) - 10);
	uri[CODES_REDIRECT_URI_MAX] = '\0';
	assert_true(grant_redirect_uri_valid(uri));
	uri[CODES_REDIRECT_URI_MAX] = 'p';
	uri[CODES_REDIRECT_URI_MAX + 1] = '\0';
	assert_false(grant_redirect_uri_valid(uri));
}

static void test_client_id(void **state)
{
	char id[CODES_CLIENT_ID_MAX + 2];

	assert_true(grant_client_id_valid("app-1"));
	assert_true(grant_client_id_valid("my app (web)"));
	assert_false(grant_client_id_valid(""));
	assert_false(grant_client_id_valid("app\n"));
	assert_false(grant_client_id_valid("caf\xc3\xa9"));
	assert_false(grant_client_id_valid(NULL));
	memset(id, 'c', sizeof(id) - 1);
	id[CODES_CLIENT_ID_MAX] = '\0';
	assert_true(grant_client_id_valid(id));
	id[CODES_CLIENT_ID_MAX] = 'c';
	id[CODES_CLIENT_ID_MAX + 1] = '\0';
	assert_false(grant_client_id_valid(id));
}

/* ---- POST /codes --------------------------------------------------------- */

#define CODES_BODY(extra) \
	"{\"subject\": \"alice\", \"client_id\": \"app-1\", \"redirect_uri\": \"https://app.example/cb\", " \
	"\"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"S256\"" extra "}"

static int parse_codes(const char *text, const char *org, struct codes_grant *g, char *err, size_t errlen)
{
	json_t *body = parse_json(text);
	int r = grant_parse_codes_body(body, org, NOW, LEEWAY, g, err, errlen);

	json_decref(body);
	return r;
}

static void assert_codes_refused(const char *text, const char *org, int want)
{
	struct codes_grant g;
	char err[160] = "";

	memset(&g, 0x5a, sizeof(g));
	assert_int_equal(parse_codes(text, org, &g, err, sizeof(err)), want);
	assert_int_equal((unsigned char)g.subject[0], 0x5a);
	assert_true(err[0] != '\0');
}

static void test_codes_body(void **state)
{
	struct codes_grant g;
	char err[160];

	assert_int_equal(parse_codes(CODES_BODY(""), "", &g, err, sizeof(err)), 0);
	assert_string_equal(g.subject, "alice");
	assert_string_equal(g.client_id, "app-1");
	assert_string_equal(g.redirect_uri, "https://app.example/cb");
	assert_string_equal(g.challenge, CHALLENGE);
	assert_string_equal(g.scope, "");
	assert_string_equal(g.nonce, "");
	assert_string_equal(g.org, "");
	assert_int_equal(g.auth_time, 0);
	assert_int_equal(g.issued_at, 0);

	assert_int_equal(parse_codes(CODES_BODY(", \"scope\": \"openid read\", \"nonce\": \"n-1\", "
						"\"auth_time\": 1799999000, \"org\": \"org-a\""), "", &g, err, sizeof(err)),
			 0);
	assert_string_equal(g.scope, "openid read");
	assert_string_equal(g.nonce, "n-1");
	assert_string_equal(g.org, "org-a");
	assert_int_equal(g.auth_time, 1799999000);
	/* auth_time up to leeway ahead is clock skew, and taken. */
	assert_int_equal(parse_codes(CODES_BODY(", \"auth_time\": 1800000030"), "", &g, err, sizeof(err)), 0);

	/* A confined caller: its org, named or not. */
	assert_int_equal(parse_codes(CODES_BODY(""), "org-b", &g, err, sizeof(err)), 0);
	assert_string_equal(g.org, "org-b");
	assert_int_equal(parse_codes(CODES_BODY(", \"org\": \"org-b\""), "org-b", &g, err, sizeof(err)), 0);
	assert_string_equal(g.org, "org-b");
	assert_codes_refused(CODES_BODY(", \"org\": \"org-a\""), "org-b", -EACCES);
}

#define CODES_BASE "\"subject\": \"alice\", \"client_id\": \"app-1\", \"redirect_uri\": \"https://a/cb\""

static void test_codes_body_refusals(void **state)
{
	char text[4096], uri[CODES_REDIRECT_URI_MAX + 2];

	/* plain, a missing method (RFC 7636 would default it to plain), a
	 * lower-case one. */
	assert_codes_refused("{" CODES_BASE ", \"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"plain\"}",
			     "", -EINVAL);
	assert_codes_refused("{" CODES_BASE ", \"code_challenge\": \"" CHALLENGE "\"}", "", -EINVAL);
	assert_codes_refused("{" CODES_BASE ", \"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"s256\"}",
			     "", -EINVAL);
	/* A challenge that is no S256 output: short, long, a verifier. */
	assert_codes_refused("{" CODES_BASE ", \"code_challenge\": \"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c\", "
			     "\"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{" CODES_BASE ", \"code_challenge\": \"" VERIFIER "xyz\", "
			     "\"code_challenge_method\": \"S256\"}", "", -EINVAL);
	/* Each required member missing in turn. */
	assert_codes_refused("{\"client_id\": \"app-1\", \"redirect_uri\": \"https://a/cb\", \"code_challenge\": \""
			     CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{\"subject\": \"alice\", \"redirect_uri\": \"https://a/cb\", \"code_challenge\": \""
			     CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{\"subject\": \"alice\", \"client_id\": \"app-1\", \"code_challenge\": \""
			     CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{" CODES_BASE ", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	/* A typo is not silently dropped; members of the wrong type. */
	assert_codes_refused(CODES_BODY(", \"nonse\": \"n\""), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"scope\": [\"read\"]"), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"nonce\": 5"), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"scope\": \"read  write\""), "", -EINVAL);
	/* auth_time: not an integer, not positive, in the future. */
	assert_codes_refused(CODES_BODY(", \"auth_time\": \"1799999000\""), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"auth_time\": 1799999000.5"), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"auth_time\": 0"), "", -EINVAL);
	assert_codes_refused(CODES_BODY(", \"auth_time\": 1800000031"), "", -EINVAL);
	/* redirect_uri and client_id outside what they may be. */
	assert_codes_refused("{\"subject\": \"alice\", \"client_id\": \"app-1\", \"redirect_uri\": \"/cb\", "
			     "\"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{\"subject\": \"alice\", \"client_id\": \"app-1\", \"redirect_uri\": \"https://a/cb#f\", "
			     "\"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	assert_codes_refused("{\"subject\": \"alice\", \"client_id\": \"app\\n1\", \"redirect_uri\": \"https://a/cb\", "
			     "\"code_challenge\": \"" CHALLENGE "\", \"code_challenge_method\": \"S256\"}", "", -EINVAL);
	memcpy(uri, "https://a/", 10);
	memset(uri + 10, 'p', sizeof(uri) - 10);
	uri[CODES_REDIRECT_URI_MAX + 1] = '\0';
	snprintf(text, sizeof(text), "{\"subject\": \"alice\", \"client_id\": \"app-1\", \"redirect_uri\": \"%s\", "
		 "\"code_challenge\": \"%s\", \"code_challenge_method\": \"S256\"}", uri, CHALLENGE);
	assert_codes_refused(text, "", -EINVAL);
	assert_codes_refused("[]", "", -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_refresh_grant),
		cmocka_unit_test(test_code_grant),
		cmocka_unit_test(test_grant_refusals),
		cmocka_unit_test(test_grant_null_body),
		cmocka_unit_test(test_scope_syntax),
		cmocka_unit_test(test_scope_narrowing),
		cmocka_unit_test(test_redirect_uri),
		cmocka_unit_test(test_client_id),
		cmocka_unit_test(test_codes_body),
		cmocka_unit_test(test_codes_body_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
