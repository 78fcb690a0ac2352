/* discovery: the metadata document of OIDC Discovery / RFC 8414 — every
 * URL derived from the issuer (with and without a trailing '/', with a
 * path), the members a client relies on with their exact values, HS256
 * never offered for ID tokens, RS256 always (config_load adds it),
 * authorization_endpoint exactly as configured (from the file or
 * HSMJWT_AUTHORIZATION_ENDPOINT) and absent when it is not, and no
 * revocation or introspection endpoint (management endpoints, not a
 * client's). */
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

#include "hsmjwt/config.h"
#include "hsmjwt/discovery.h"

static json_t *document(const char *issuer, const char *algorithms)
{
	char *const envp[] = { NULL };
	struct config cfg;
	char err[256];
	json_t *doc = NULL;

	assert_int_equal(config_init_defaults(&cfg), 0);
	assert_int_equal(config_set(&cfg, "issuer", issuer, err, sizeof(err)), 0);
	assert_int_equal(config_set(&cfg, "algorithms", algorithms, err, sizeof(err)), 0);
	assert_int_equal(config_apply_env(&cfg, envp, err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), 0);
	assert_non_null(doc);
	config_free(&cfg);
	return doc;
}

static void assert_strings(const json_t *doc, const char *name, const char *const *want, size_t n)
{
	const json_t *array = json_object_get(doc, name);

	assert_true(json_is_array(array));
	assert_int_equal(json_array_size(array), n);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(json_string_value(json_array_get(array, i)), want[i]);
}

static void assert_member(const json_t *doc, const char *name, const char *want)
{
	assert_string_equal(json_string_value(json_object_get(doc, name)), want);
}

static void test_urls_from_issuer(void **state)
{
	static const char *const issuers[][2] = {
		{ "https://auth.example.com", "https://auth.example.com" },
		{ "https://auth.example.com/", "https://auth.example.com" },
		{ "https://example.com/tenant-1", "https://example.com/tenant-1" },
	};

	for (size_t i = 0; i < sizeof(issuers) / sizeof(issuers[0]); i++) {
		json_t *doc = document(issuers[i][0], "ES256");
		char want[256];

		/* issuer is the configured value, byte for byte (RFC 8414 §3.3). */
		assert_member(doc, "issuer", issuers[i][0]);
		snprintf(want, sizeof(want), "%s/.well-known/jwks.json", issuers[i][1]);
		assert_member(doc, "jwks_uri", want);
		snprintf(want, sizeof(want), "%s/token", issuers[i][1]);
		assert_member(doc, "token_endpoint", want);
		json_decref(doc);
	}
}

static void test_members(void **state)
{
	static const char *const code[] = { "code" };
	static const char *const grants[] = { "authorization_code", "refresh_token" };
	static const char *const s256[] = { "S256" };
	static const char *const none[] = { "none" };
	static const char *const pub[] = { "public" };
	json_t *doc = document("https://auth.example.com", "ES256");
	const json_t *claims = json_object_get(doc, "claims_supported");
	size_t i;
	json_t *v;
	int nonce = 0, auth_time = 0, azp = 0;

	assert_strings(doc, "response_types_supported", code, 1);
	assert_strings(doc, "grant_types_supported", grants, 2);
	assert_strings(doc, "code_challenge_methods_supported", s256, 1);
	assert_strings(doc, "token_endpoint_auth_methods_supported", none, 1);
	assert_strings(doc, "subject_types_supported", pub, 1);
	assert_true(json_is_array(claims));
	json_array_foreach(claims, i, v) {
		nonce += strcmp(json_string_value(v), "nonce") == 0;
		auth_time += strcmp(json_string_value(v), "auth_time") == 0;
		azp += strcmp(json_string_value(v), "azp") == 0;
	}
	assert_int_equal(nonce + auth_time + azp, 3);
	/* Left out on purpose (see discovery.h): no login front end is
	 * configured here; the revocation and introspection endpoints take a
	 * management bearer token, which RFC 8414's default
	 * client_secret_basic would misstate. */
	assert_null(json_object_get(doc, "authorization_endpoint"));
	assert_null(json_object_get(doc, "revocation_endpoint"));
	assert_null(json_object_get(doc, "revocation_endpoint_auth_methods_supported"));
	assert_null(json_object_get(doc, "introspection_endpoint"));
	assert_null(json_object_get(doc, "introspection_endpoint_auth_methods_supported"));
	assert_null(json_object_get(doc, "scopes_supported"));
	assert_int_equal(json_object_size(doc), 10);
	json_decref(doc);
}

/* The login front end's URL, when configured, is the
 * authorization_endpoint, byte for byte (a query kept). */
static void test_authorization_endpoint(void **state)
{
	char *const envp[] = { "HSMJWT_AUTHORIZATION_ENDPOINT=https://login.example.com/authorize?tenant=7",
			       "HSMJWT_ISSUER=https://b", "HSMJWT_PIN=1234", NULL };
	struct config cfg;
	char err[256];
	json_t *doc = NULL;

	assert_int_equal(config_load(&cfg, NULL, envp, err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), 0);
	assert_member(doc, "authorization_endpoint", "https://login.example.com/authorize?tenant=7");
	assert_int_equal(json_object_size(doc), 11);
	json_decref(doc);
	doc = NULL;
	/* Unset again: the member goes. */
	assert_int_equal(config_set(&cfg, "authorization_endpoint", "", err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), 0);
	assert_null(json_object_get(doc, "authorization_endpoint"));
	json_decref(doc);
	doc = (json_t *)(uintptr_t)1;
	/* Bytes that are no UTF-8 cannot be a JSON string. */
	assert_int_equal(config_set(&cfg, "authorization_endpoint", "https://login\xff", err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), -EINVAL);
	assert_ptr_equal(doc, (json_t *)(uintptr_t)1);
	config_free(&cfg);
}

static void test_id_token_algorithms(void **state)
{
	static const char *const es_rs[] = { "ES256", "RS256" };
	static const char *const all[] = { "PS256", "EdDSA", "ES384", "RS256" };
	json_t *doc;

	/* HS256 never: no client could verify an HMAC it has no key for. */
	doc = document("https://a", "ES256 HS256 RS256");
	assert_strings(doc, "id_token_signing_alg_values_supported", es_rs, 2);
	json_decref(doc);
	doc = document("https://a", "PS256 EdDSA HS256 ES384 RS256");
	assert_strings(doc, "id_token_signing_alg_values_supported", all, 4);
	json_decref(doc);
}

/* What the daemon serves: config_load keeps RS256 whatever algorithms
 * says, and the document offers it. */
static void test_config_load_offers_rs256(void **state)
{
	char *const envp[] = { "HSMJWT_ALGORITHMS=ES256 HS256", "HSMJWT_ISSUER=https://b", "HSMJWT_PIN=1234", NULL };
	static const char *const want[] = { "ES256", "RS256" };
	struct config cfg;
	char err[256];
	json_t *doc = NULL;

	assert_int_equal(config_load(&cfg, NULL, envp, err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), 0);
	assert_strings(doc, "id_token_signing_alg_values_supported", want, 2);
	json_decref(doc);
	config_free(&cfg);
}

static void test_refusals(void **state)
{
	struct config cfg;
	char err[256];
	json_t *doc = (json_t *)(uintptr_t)1;

	assert_int_equal(discovery_document(NULL, &doc), -EINVAL);
	assert_int_equal(config_init_defaults(&cfg), 0);
	assert_int_equal(config_set(&cfg, "issuer", "https://a\xff", err, sizeof(err)), 0);
	assert_int_equal(discovery_document(&cfg, &doc), -EINVAL);
	assert_ptr_equal(doc, (json_t *)(uintptr_t)1);
	config_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_urls_from_issuer),
		cmocka_unit_test(test_members),
		cmocka_unit_test(test_authorization_endpoint),
		cmocka_unit_test(test_id_token_algorithms),
		cmocka_unit_test(test_config_load_offers_rs256),
		cmocka_unit_test(test_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
