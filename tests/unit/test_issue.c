/* issue and auth: request validation, the claims of SPEC §5.1, org
 * confinement, roles a caller may grant, and caller authentication of
 * SPEC §4.1 — against keys in a fresh SoftHSM token. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/keys.h"

static struct fixture_token tok;
static struct hsm *hsm;
static struct hsm_session *session;
static struct keys *keys;
static struct keys_view view;
static struct config cfg;
static struct issue_ctx ictx;
/* Callers whose own tokens outlive every test (2100-01-01). */
#define FAR_FUTURE INT64_C(4102444800)
static const struct auth_caller issuer_caller = { "frontend", "", AUTH_ROLE_TOKENS_ISSUE, FAR_FUTURE, "" };
static const struct auth_caller admin_caller = { "root", "", AUTH_ROLE_ADMIN, FAR_FUTURE, "" };
static const struct auth_caller org_caller = { "acme-frontend", "acme", AUTH_ROLE_TOKENS_ISSUE | AUTH_ROLE_TOKENS_READ,
					       FAR_FUTURE, "" };

static int build(const char *body_text, const struct auth_caller *caller, json_t **ret_claims, enum jws_alg *ret_alg)
{
	json_t *body = json_loads(body_text, JSON_REJECT_DUPLICATES, NULL);
	struct issue_request request;
	struct issue_claims built;
	char err[160];
	int r;

	assert_non_null(body);
	r = issue_parse_body(&ictx, body, caller, 0, &request, err, sizeof(err));
	if (r == 0)
		r = issue_build_claims(&ictx, &request, &built, err, sizeof(err));
	json_decref(body);
	if (r == 0) {
		*ret_claims = built.claims;
		*ret_alg = built.alg;
	}
	return r;
}

static void expect_rejected(const char *body_text, const struct auth_caller *caller, int want)
{
	json_t *claims = NULL;
	enum jws_alg alg = JWS_ALG_INVALID;

	assert_int_equal(build(body_text, caller, &claims, &alg), want);
	assert_null(claims);
	assert_int_equal(alg, JWS_ALG_INVALID);
}

static void test_claims_of_an_access_token(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_int_equal(build("{\"subject\":\"alice\",\"scope\":\"read write\",\"client_id\":\"app\","
			       "\"claims\":{\"tenant\":\"t1\"}}", &issuer_caller, &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_ES256);
	assert_string_equal(json_string_value(json_object_get(claims, "iss")), cfg.issuer);
	assert_string_equal(json_string_value(json_object_get(claims, "sub")), "alice");
	assert_string_equal(json_string_value(json_object_get(claims, "aud")), cfg.default_audience);
	assert_string_equal(json_string_value(json_object_get(claims, "scope")), "read write");
	assert_string_equal(json_string_value(json_object_get(claims, "client_id")), "app");
	assert_string_equal(json_string_value(json_object_get(claims, "token_type")), "access");
	assert_string_equal(json_string_value(json_object_get(claims, "tenant")), "t1");
	assert_int_equal(json_integer_value(json_object_get(claims, "iat")), ictx.now);
	assert_int_equal(json_integer_value(json_object_get(claims, "nbf")), ictx.now);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), ictx.now + cfg.access_ttl);
	assert_int_equal(json_string_length(json_object_get(claims, "jti")), ISSUE_JTI_LEN);
	assert_null(json_object_get(claims, "org"));
	json_decref(claims);
}

static void test_jtis_differ(void **state)
{
	char a[ISSUE_JTI_LEN + 1], b[ISSUE_JTI_LEN + 1];
	assert_int_equal(issue_new_jti(a), 0);
	assert_int_equal(issue_new_jti(b), 0);
	assert_int_equal(strlen(a), ISSUE_JTI_LEN);
	assert_string_not_equal(a, b);
}

static void test_audience_forms(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_int_equal(build("{\"subject\":\"a\",\"audience\":[\"x\",\"y\"]}", &issuer_caller, &claims, &alg), 0);
	assert_int_equal(json_array_size(json_object_get(claims, "aud")), 2);
	json_decref(claims);
	expect_rejected("{\"subject\":\"a\",\"audience\":[]}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"audience\":[1]}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"audience\":\"\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"audience\":7}", &issuer_caller, -EINVAL);
}

static void test_bad_requests(void **state)
{
	expect_rejected("[]", &issuer_caller, -EINVAL);
	expect_rejected("{}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":5}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"expires_in\":0}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"expires_in\":\"60\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"expires_in\":2592001}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"alg\":\"none\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"alg\":\"HS256\"}", &issuer_caller, -EINVAL);
	/* A configured family without a key in this token. */
	expect_rejected("{\"subject\":\"a\",\"alg\":\"PS256\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"parent\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"bogus\"}", &issuer_caller, -EINVAL);
	/* Members of other families are typos here. */
	expect_rejected("{\"subject\":\"a\",\"nonce\":\"n\"}", &issuer_caller, -EINVAL);
	/* An ID token's audience is its client: it must be named, and
	 * "audience" is not taken. */
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"id\",\"alg\":\"ES256\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"id\",\"client_id\":\"c\",\"alg\":\"ES256\","
			"\"audience\":\"x\"}", &issuer_caller, -EINVAL);
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"id\",\"client_id\":\"c\",\"alg\":\"ES256\","
			"\"auth_time\":4102444800}", &issuer_caller, -EINVAL);
	/* Only access tokens carry roles. */
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"refresh\",\"claims\":{\"roles\":[]}}", &issuer_caller,
			-EINVAL);
	expect_rejected("{\"subject\":\"a\",\"claims\":[1]}", &issuer_caller, -EINVAL);
}

/* SPEC §5.1: a refresh token starts its family; an ID token carries the
 * OIDC claims with aud = azp = client_id; each family has its lifetime. */
static void test_claims_of_refresh_and_id_tokens(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_int_equal(build("{\"subject\":\"alice\",\"token_type\":\"refresh\",\"scope\":\"s\"}", &issuer_caller,
			       &claims, &alg), 0);
	assert_string_equal(json_string_value(json_object_get(claims, "token_type")), "refresh");
	assert_string_equal(json_string_value(json_object_get(claims, "family")),
			    json_string_value(json_object_get(claims, "jti")));
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), ictx.now + cfg.refresh_ttl);
	json_decref(claims);

	assert_int_equal(build("{\"subject\":\"alice\",\"token_type\":\"id\",\"client_id\":\"web\",\"alg\":\"ES256\","
			       "\"nonce\":\"n-0S6\",\"auth_time\":1700000000,\"claims\":{\"email\":\"a@x\"}}",
			       &issuer_caller, &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_ES256);
	assert_string_equal(json_string_value(json_object_get(claims, "token_type")), "id");
	assert_string_equal(json_string_value(json_object_get(claims, "aud")), "web");
	assert_string_equal(json_string_value(json_object_get(claims, "azp")), "web");
	assert_string_equal(json_string_value(json_object_get(claims, "nonce")), "n-0S6");
	assert_int_equal(json_integer_value(json_object_get(claims, "auth_time")), 1700000000);
	assert_string_equal(json_string_value(json_object_get(claims, "email")), "a@x");
	assert_null(json_object_get(claims, "scope"));
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), ictx.now + cfg.id_ttl);
	json_decref(claims);

	/* What a verifier told the family demands of the header. */
	assert_string_equal(issue_typ_for("access"), "at+jwt");
	assert_string_equal(issue_typ_for("refresh"), "rt+jwt");
	assert_string_equal(issue_typ_for("id"), "JWT");
	assert_string_equal(issue_typ_for("parent"), "parent+jwt");
	assert_string_equal(issue_typ_for("child"), "at+jwt");
	assert_null(issue_typ_for("Access"));
	assert_null(issue_typ_for(""));

	/* OIDC's default algorithm, not the service's first. */
	assert_int_equal(build("{\"subject\":\"alice\",\"token_type\":\"id\",\"client_id\":\"web\"}", &issuer_caller,
			       &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_RS256);
	assert_null(json_object_get(claims, "nonce"));
	assert_null(json_object_get(claims, "auth_time"));
	json_decref(claims);
}

static void test_lifetime_up_to_max_ttl(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_int_equal(build("{\"subject\":\"a\",\"expires_in\":2592000}", &issuer_caller, &claims, &alg), 0);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), ictx.now + 2592000);
	json_decref(claims);
}

static void test_registered_claims_cannot_be_overridden(void **state)
{
	static const char *const names[] = { "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ",
					     "token_type", "status", "org", "scope", "client_id", "nonce",
					     "auth_time", "azp", "family", "parent_jti" };
	char body[128];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(body, sizeof(body), "{\"subject\":\"a\",\"claims\":{\"%s\":\"x\"}}", names[i]);
		expect_rejected(body, &admin_caller, -EINVAL);
	}
}

static void test_roles_only_those_held(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	expect_rejected("{\"subject\":\"a\",\"claims\":{\"roles\":[\"admin\"]}}", &issuer_caller, -EACCES);
	expect_rejected("{\"subject\":\"a\",\"claims\":{\"roles\":[\"tokens:read\"]}}", &issuer_caller, -EACCES);
	expect_rejected("{\"subject\":\"a\",\"claims\":{\"roles\":[\"root\"]}}", &admin_caller, -EINVAL);
	assert_int_equal(build("{\"subject\":\"a\",\"claims\":{\"roles\":[\"tokens:issue\"]}}", &issuer_caller,
			       &claims, &alg), 0);
	json_decref(claims);
	assert_int_equal(build("{\"subject\":\"a\",\"claims\":{\"roles\":[\"keys:admin\"]}}", &admin_caller,
			       &claims, &alg), 0);
	json_decref(claims);
}

static void test_org_confinement(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	/* An org caller issues into its org whether or not it names it. */
	assert_int_equal(build("{\"subject\":\"a\"}", &org_caller, &claims, &alg), 0);
	assert_string_equal(json_string_value(json_object_get(claims, "org")), "acme");
	json_decref(claims);
	assert_int_equal(build("{\"subject\":\"a\",\"org\":\"acme\"}", &org_caller, &claims, &alg), 0);
	json_decref(claims);
	expect_rejected("{\"subject\":\"a\",\"org\":\"globex\"}", &org_caller, -EACCES);
	/* A caller without org may name any. */
	assert_int_equal(build("{\"subject\":\"a\",\"org\":\"globex\"}", &admin_caller, &claims, &alg), 0);
	assert_string_equal(json_string_value(json_object_get(claims, "org")), "globex");
	json_decref(claims);
}

static void test_issued_token_verifies(void **state)
{
	json_t *body = json_pack("{s:s, s:s}", "subject", "bob", "alg", "RS256");
	json_t *response = NULL, *header = NULL, *claims = NULL;
	struct jwt_expect expect = { .now = ictx.now, .leeway = 0, .issuer = cfg.issuer,
				     .audience = cfg.default_audience, .typ = "at+jwt", .token_type = "access" };
	const char *token;
	char err[160];

	assert_int_equal(issue_from_body(&ictx, body, &issuer_caller, 0, &response, NULL, err, sizeof(err)), 0);
	token = json_string_value(json_object_get(response, "access_token"));
	assert_non_null(token);
	assert_string_equal(json_string_value(json_object_get(response, "token_type")), "Bearer");
	assert_int_equal(json_integer_value(json_object_get(response, "expires_in")), cfg.access_ttl);
	assert_int_equal(jwt_verify(token, strlen(token), keys_lookup, &view, &expect, &header, &claims), 0);
	assert_string_equal(json_string_value(json_object_get(header, "alg")), "RS256");
	assert_string_equal(json_string_value(json_object_get(header, "kid")),
			    keys_signer(keys, JWS_ALG_RS256)->hsm.kid);
	assert_string_equal(json_string_value(json_object_get(claims, "jti")),
			    json_string_value(json_object_get(response, "jti")));
	json_decref(header);
	json_decref(claims);
	json_decref(response);
	json_decref(body);
}

static void mint(const char *roles_json, const char *org, int64_t ttl, char **ret_token)
{
	json_t *roles = json_loads(roles_json, 0, NULL);
	assert_int_equal(issue_mint(&ictx, "ops", org, roles, ttl, ret_token), 0);
	json_decref(roles);
}

static int bearer(const char *token, int64_t now, struct auth_caller *caller)
{
	char header[20000], err[160];
	snprintf(header, sizeof(header), "Bearer %s", token);
	return auth_bearer(header, &view, &cfg, now, caller, err, sizeof(err));
}

static void test_auth_accepts_minted_tokens(void **state)
{
	struct auth_caller caller;
	char *token = NULL;

	mint("[\"tokens:issue\",\"tokens:read\"]", "acme", 600, &token);
	assert_int_equal(bearer(token, ictx.now, &caller), 0);
	assert_string_equal(caller.sub, "ops");
	assert_string_equal(caller.org, "acme");
	assert_int_equal(caller.roles, AUTH_ROLE_TOKENS_ISSUE | AUTH_ROLE_TOKENS_READ);
	assert_true(auth_allows(&caller, AUTH_ROLE_TOKENS_ISSUE));
	assert_false(auth_allows(&caller, AUTH_ROLE_TOKENS_REVOKE));
	assert_false(auth_allows(&caller, AUTH_ROLE_KEYS_ADMIN));
	free(token);

	mint("[\"admin\"]", NULL, 600, &token);
	assert_int_equal(bearer(token, ictx.now, &caller), 0);
	assert_string_equal(caller.org, "");
	assert_true(auth_allows(&caller, AUTH_ROLE_KEYS_ADMIN | AUTH_ROLE_TOKENS_REVOKE));
	free(token);
}

static void test_auth_refuses(void **state)
{
	struct auth_caller caller;
	char err[160];
	char *token = NULL;
	json_t *body = json_pack("{s:s}", "subject", "alice"), *response = NULL;

	mint("[\"admin\"]", NULL, 60, &token);
	/* Expired beyond the leeway. */
	assert_int_equal(bearer(token, ictx.now + 60 + cfg.leeway + 1, &caller), -EACCES);
	/* Not yet valid. */
	assert_int_equal(bearer(token, ictx.now - cfg.leeway - 5, &caller), -EACCES);
	/* Other schemes and no header. */
	assert_int_equal(auth_bearer(NULL, &view, &cfg, ictx.now, &caller, err, sizeof(err)), -EACCES);
	assert_int_equal(auth_bearer("Basic YWxhZGRpbjpvcGVu", &view, &cfg, ictx.now, &caller, err, sizeof(err)),
			 -EACCES);
	/* A tampered signature. */
	token[strlen(token) - 2] = token[strlen(token) - 2] == 'A' ? 'B' : 'A';
	assert_int_equal(bearer(token, ictx.now, &caller), -EACCES);
	free(token);

	/* An ordinary access token: aud is the API, not this service. */
	assert_int_equal(issue_from_body(&ictx, body, &admin_caller, 0, &response, NULL, err, sizeof(err)), 0);
	assert_int_equal(bearer(json_string_value(json_object_get(response, "access_token")), ictx.now, &caller),
			 -EACCES);
	json_decref(response);
	json_decref(body);
}

static void test_token_without_roles_may_call_nothing(void **state)
{
	struct auth_caller caller;
	char err[160];
	json_t *body = json_pack("{s:s, s:[s]}", "subject", "svc", "audience", cfg.issuer), *response = NULL;

	assert_int_equal(issue_from_body(&ictx, body, &admin_caller, 0, &response, NULL, err, sizeof(err)), 0);
	assert_int_equal(bearer(json_string_value(json_object_get(response, "access_token")), ictx.now, &caller), 0);
	assert_int_equal(caller.roles, 0);
	assert_false(auth_allows(&caller, AUTH_ROLE_TOKENS_ISSUE));
	json_decref(response);
	json_decref(body);
}

/* RFC 9068 §2.2: client_id is always there; the caller is the client unless
 * the request names one. */
static void test_client_id_defaults_to_the_caller(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_int_equal(build("{\"subject\":\"a\"}", &issuer_caller, &claims, &alg), 0);
	assert_string_equal(json_string_value(json_object_get(claims, "client_id")), issuer_caller.sub);
	json_decref(claims);
}

/* A typo must not silently get a default. */
static void test_unknown_members_are_refused(void **state)
{
	json_t *body = json_loads("{\"subject\":\"a\",\"expires_In\":60}", 0, NULL);
	struct issue_request request = { .subject = NULL };
	char err[160] = "";

	assert_int_equal(issue_parse_body(&ictx, body, &issuer_caller, 0, &request, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "expires_In"));
	assert_null(request.subject);
	json_decref(body);
}

/* A key left in the token for an algorithm that is no longer configured
 * verifies but does not sign. */
static void test_only_configured_algorithms_sign(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_non_null(keys_signer(keys, JWS_ALG_RS256));
	cfg.algorithm_count = 1;
	expect_rejected("{\"subject\":\"a\",\"alg\":\"RS256\"}", &issuer_caller, -EINVAL);
	cfg.algorithm_count = 3;
	assert_int_equal(build("{\"subject\":\"a\",\"alg\":\"RS256\"}", &issuer_caller, &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_RS256);
	json_decref(claims);
}

/* An ID token's alg is one the discovery document lists: HS256, whose key
 * is never published, signs access tokens when configured, never an ID
 * token; issue_id_alg_allowed is the rule discovery uses too. */
static void test_id_tokens_never_hs256(void **state)
{
	json_t *claims = NULL;
	enum jws_alg alg;

	assert_non_null(keys_signer(keys, JWS_ALG_HS256));
	cfg.algorithms[3] = JWS_ALG_HS256;
	cfg.algorithm_count = 4;
	assert_int_equal(build("{\"subject\":\"a\",\"alg\":\"HS256\"}", &issuer_caller, &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_HS256);
	json_decref(claims);
	expect_rejected("{\"subject\":\"a\",\"token_type\":\"id\",\"client_id\":\"web\",\"alg\":\"HS256\"}",
			&issuer_caller, -EINVAL);
	assert_false(issue_id_alg_allowed(&cfg, JWS_ALG_HS256));
	assert_true(issue_id_alg_allowed(&cfg, JWS_ALG_RS256));
	assert_true(issue_id_alg_allowed(&cfg, JWS_ALG_ES256));
	/* Configured algorithms only, as for every token. */
	assert_false(issue_id_alg_allowed(&cfg, JWS_ALG_ES384));
	/* The asymmetric ones still sign ID tokens. */
	assert_int_equal(build("{\"subject\":\"a\",\"token_type\":\"id\",\"client_id\":\"web\",\"alg\":\"ES256\"}",
			       &issuer_caller, &claims, &alg), 0);
	assert_int_equal(alg, JWS_ALG_ES256);
	json_decref(claims);
	cfg.algorithm_count = 3;
	assert_false(issue_id_alg_allowed(&cfg, JWS_ALG_HS256));
}

/* Claims too big to sign are the client's mistake: 400, not 500. */
static void test_oversized_claims_are_refused(void **state)
{
	static const char head[] = "{\"subject\":\"a\",\"claims\":{\"big\":\"";
	char *text = malloc(sizeof(head) + JWS_MAX_PAYLOAD + 4);

	assert_non_null(text);
	memcpy(text, head, sizeof(head) - 1);
	memset(text + sizeof(head) - 1, 'x', JWS_MAX_PAYLOAD);
	strcpy(text + sizeof(head) - 1 + JWS_MAX_PAYLOAD, "\"}}");
	expect_rejected(text, &issuer_caller, -EINVAL);
	free(text);
}

/* A credential for this service (roles, or aud = issuer) may not outlive
 * the caller's own token: an explicit longer lifetime is refused, the
 * default is cut to the caller's exp; ordinary tokens are not bound. */
static void test_credentials_do_not_outlive_the_caller(void **state)
{
	struct auth_caller brief = issuer_caller;
	json_t *claims = NULL;
	enum jws_alg alg;
	char body[256];

	brief.exp = ictx.now + 60;
	expect_rejected("{\"subject\":\"a\",\"expires_in\":3600,\"claims\":{\"roles\":[\"tokens:issue\"]}}", &brief,
			-EACCES);
	snprintf(body, sizeof(body), "{\"subject\":\"a\",\"expires_in\":3600,\"audience\":[\"api\",\"%s\"]}", cfg.issuer);
	expect_rejected(body, &brief, -EACCES);
	assert_int_equal(build("{\"subject\":\"a\",\"claims\":{\"roles\":[\"tokens:issue\"]}}", &brief, &claims, &alg), 0);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), brief.exp);
	json_decref(claims);
	assert_int_equal(build("{\"subject\":\"a\",\"expires_in\":60,\"claims\":{\"roles\":[\"tokens:issue\"]}}", &brief,
			       &claims, &alg), 0);
	json_decref(claims);
	/* An ordinary API token may outlive the caller that asked for it. */
	assert_int_equal(build("{\"subject\":\"a\",\"expires_in\":3600}", &brief, &claims, &alg), 0);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), ictx.now + 3600);
	json_decref(claims);
	/* A caller at its last second hands on nothing. */
	brief.exp = ictx.now;
	expect_rejected("{\"subject\":\"a\",\"claims\":{\"roles\":[\"tokens:issue\"]}}", &brief, -EACCES);
}

/* auth records the caller's exp, which bounds what it may hand on. */
static void test_auth_records_the_callers_expiry(void **state)
{
	struct auth_caller caller;
	char *token = NULL;

	mint("[\"tokens:issue\"]", NULL, 600, &token);
	assert_int_equal(bearer(token, ictx.now, &caller), 0);
	assert_int_equal(caller.exp, ictx.now + 600);
	free(token);
}

/* A genuine token whose exp is a real beyond int64 (never issued by the
 * service, but signed by its key) gives a clamped, not undefined, expiry. */
static void test_auth_clamps_a_huge_exp(void **state)
{
	json_t *claims = json_pack("{s:s, s:s, s:[s], s:I, s:I, s:f, s:s, s:s, s:[s]}", "iss", cfg.issuer, "sub", "ops",
				   "aud", cfg.issuer, "iat", (json_int_t)ictx.now, "nbf", (json_int_t)ictx.now,
				   "exp", 1e300, "jti", "AAAAAAAAAAAAAAAAAAAAAA", "token_type", "access",
				   "roles", "tokens:issue");
	struct auth_caller caller;
	char *token = NULL;

	assert_non_null(claims);
	assert_int_equal(issue_sign(&ictx, JWS_ALG_ES256, "at+jwt", claims, &token), 0);
	assert_int_equal(bearer(token, ictx.now, &caller), 0);
	assert_true(caller.exp == INT64_MAX);
	free(token);
	json_decref(claims);
}

static void test_role_names(void **state)
{
	unsigned role = 0;
	char err[96];
	json_t *bad = json_loads("[\"tokens:issue\", 3]", 0, NULL);

	assert_int_equal(auth_role_from_name("tokens:introspect", &role), 0);
	assert_int_equal(role, AUTH_ROLE_TOKENS_INTROSPECT);
	assert_int_equal(auth_role_from_name("Admin", &role), -EINVAL);
	assert_int_equal(auth_roles_from_json(bad, &role, err, sizeof(err)), -EINVAL);
	json_decref(bad);
}

/* POST /tokens: a named token needs a name; its record mirrors the claims
 * it was signed with, and only a named request may carry name/description. */
static void test_named_token_record(void **state)
{
	json_t *body = json_pack("{s:s, s:s, s:s, s:s}", "subject", "ci-bot", "name", "deploy key", "description",
				 "used by CI", "org", "acme");
	json_t *unnamed = json_pack("{s:s}", "subject", "ci-bot");
	json_t *response = NULL, *header = NULL, *claims = NULL;
	struct registry_record rec;
	struct jwt_expect expect = { .now = ictx.now, .leeway = 0 };
	const char *token;
	char err[160] = "";

	assert_int_equal(issue_from_body(&ictx, unnamed, &admin_caller, ISSUE_NAMED, &response, &rec, err,
					    sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "name"));
	assert_int_equal(issue_from_body(&ictx, body, &admin_caller, 0, &response, &rec, err, sizeof(err)),
			 -EINVAL);
	assert_null(response);
	assert_int_equal(issue_from_body(&ictx, body, &admin_caller, ISSUE_NAMED, &response, &rec, err,
					    sizeof(err)), 0);
	token = json_string_value(json_object_get(response, "access_token"));
	assert_int_equal(jwt_verify(token, strlen(token), keys_lookup, &view, &expect, &header, &claims), 0);
	assert_string_equal(rec.jti, json_string_value(json_object_get(claims, "jti")));
	assert_string_equal(rec.subject, "ci-bot");
	assert_string_equal(rec.org, "acme");
	assert_string_equal(rec.name, "deploy key");
	assert_string_equal(rec.description, "used by CI");
	assert_string_equal(rec.client_id, "root");
	assert_string_equal(rec.kid, json_string_value(json_object_get(header, "kid")));
	assert_int_equal(rec.type, REGISTRY_TYPE_ACCESS);
	assert_int_equal(rec.status, REGISTRY_ACTIVE);
	assert_int_equal(rec.iat, json_integer_value(json_object_get(claims, "iat")));
	assert_int_equal(rec.exp, json_integer_value(json_object_get(claims, "exp")));
	/* Without a registry (ictx.registry NULL) there is no status entry. */
	assert_int_equal(rec.status_idx, REGISTRY_NO_INDEX);
	assert_null(json_object_get(claims, "status"));
	json_decref(header);
	json_decref(claims);
	json_decref(response);
	json_decref(unnamed);
	json_decref(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_claims_of_an_access_token),
		cmocka_unit_test(test_jtis_differ),
		cmocka_unit_test(test_audience_forms),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_claims_of_refresh_and_id_tokens),
		cmocka_unit_test(test_lifetime_up_to_max_ttl),
		cmocka_unit_test(test_registered_claims_cannot_be_overridden),
		cmocka_unit_test(test_roles_only_those_held),
		cmocka_unit_test(test_org_confinement),
		cmocka_unit_test(test_issued_token_verifies),
		cmocka_unit_test(test_auth_accepts_minted_tokens),
		cmocka_unit_test(test_auth_refuses),
		cmocka_unit_test(test_token_without_roles_may_call_nothing),
		cmocka_unit_test(test_role_names),
		cmocka_unit_test(test_client_id_defaults_to_the_caller),
		cmocka_unit_test(test_unknown_members_are_refused),
		cmocka_unit_test(test_named_token_record),
		cmocka_unit_test(test_only_configured_algorithms_sign),
		cmocka_unit_test(test_id_tokens_never_hs256),
		cmocka_unit_test(test_oversized_claims_are_refused),
		cmocka_unit_test(test_credentials_do_not_outlive_the_caller),
		cmocka_unit_test(test_auth_records_the_callers_expiry),
		cmocka_unit_test(test_auth_clamps_a_huge_exp),
	};
	const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256, JWS_ALG_HS256 };
	struct config key_cfg;
	int r = fixture_token_create(&tok);

	if (r != 0)
		return r == 77 ? 77 : 1;
	/* Keys for ES256, RS256 and HS256 only (key_cfg); cfg configures
	 * PS256 instead of HS256 below. */
	if (config_init_defaults(&cfg) != 0 || fixture_config(&key_cfg, algs, 3) != 0 ||
	    hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm) != 0 ||
	    fixture_keys(hsm, &key_cfg, 1, &keys) != 0 || hsm_session_open(hsm, &session) != 0)
		return 1;
	config_free(&key_cfg);
	view = (struct keys_view){ keys, session };
	/* Defaults sign ES256 first; PS256 is configured but has no key here. */
	cfg.algorithms[0] = JWS_ALG_ES256;
	cfg.algorithms[1] = JWS_ALG_RS256;
	cfg.algorithms[2] = JWS_ALG_PS256;
	cfg.algorithm_count = 3;
	ictx = (struct issue_ctx){ &cfg, keys, session, (int64_t)time(NULL), NULL };
	r = cmocka_run_group_tests(tests, NULL, NULL);
	hsm_session_close(session);
	keys_release(keys);
	hsm_close(hsm);
	config_free(&cfg);
	fixture_token_destroy(&tok);
	return r;
}
