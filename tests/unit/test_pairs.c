/* POST /token-pairs' body (issue_parse_pair_body): defaults, the members it
 * takes and refuses, lifetimes (a child never outliving its parent), org
 * confinement, custom claims, and the bound a caller's own exp puts on a
 * parent addressed to this service.  Parsing only: no token needed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/issue.h"

#define NOW INT64_C(1800000000)
#define FAR_FUTURE INT64_C(4102444800)

static struct config cfg;
static struct issue_ctx ictx;
static const struct auth_caller issuer_caller = { "frontend", "", AUTH_ROLE_TOKENS_ISSUE, FAR_FUTURE, "" };
static const struct auth_caller org_caller = { "acme-frontend", "acme", AUTH_ROLE_TOKENS_ISSUE, FAR_FUTURE, "" };

static int setup(void **state)
{
	if (config_init_defaults(&cfg) < 0)
		return -1;
	cfg.parent_ttl = 86400;
	cfg.child_ttl = 900;
	cfg.max_ttl = 2592000;
	ictx = (struct issue_ctx){ &cfg, NULL, NULL, NOW, NULL };
	return 0;
}

static int teardown(void **state)
{
	config_free(&cfg);
	return 0;
}

/* Parses text; err gets the message.  The body stays alive in *ret_body
 * (the pair borrows from it). */
static int parse(const char *text, const struct auth_caller *caller, struct issue_pair *pair, json_t **ret_body,
		 char *err, size_t errlen)
{
	json_t *body = json_loads(text, JSON_REJECT_DUPLICATES, NULL);

	assert_non_null(body);
	*ret_body = body;
	return issue_parse_pair_body(&ictx, body, caller, pair, err, errlen);
}

static void expect_refused(const char *text, const struct auth_caller *caller, int want, const char *in_err)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	memset(&pair, 0x5a, sizeof(pair));
	assert_int_equal(parse(text, caller, &pair, &body, err, sizeof(err)), want);
	if (in_err != NULL && strstr(err, in_err) == NULL)
		fail_msg("error `%s' does not mention `%s'", err, in_err);
	/* The output stays untouched on failure. */
	assert_int_equal(pair.include_child, 0x5a5a5a5a);
	json_decref(body);
}

static void test_defaults(void **state)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	assert_int_equal(parse("{\"subject\":\"alice\"}", &issuer_caller, &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.parent.type, ISSUE_PARENT);
	assert_string_equal(pair.parent.subject, "alice");
	assert_null(pair.parent.audience);
	assert_null(pair.parent.claims);
	assert_null(pair.parent.org);
	assert_string_equal(pair.parent.client_id, "frontend");
	assert_int_equal(pair.parent.ttl, cfg.parent_ttl);
	assert_int_equal(pair.parent.auto_renew, 0);
	assert_int_equal(pair.parent.alg, JWS_ALG_INVALID);
	assert_int_equal(pair.child_ttl, cfg.child_ttl);
	assert_int_equal(pair.include_child, 1);
	json_decref(body);
}

static void test_members(void **state)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	assert_int_equal(parse("{\"subject\":\"alice\",\"audience\":[\"api\",\"billing\"],\"scope\":\"read\","
			       "\"client_id\":\"app\",\"org\":\"acme\",\"claims\":{\"tier\":3},\"parent_expires_in\":600,"
			       "\"child_expires_in\":240,\"include_child\":false,\"auto_renew\":true}",
			       &issuer_caller, &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(json_array_size(pair.parent.audience), 2);
	assert_string_equal(pair.parent.scope, "read");
	assert_string_equal(pair.parent.client_id, "app");
	assert_string_equal(pair.parent.org, "acme");
	assert_int_equal(json_integer_value(json_object_get(pair.parent.claims, "tier")), 3);
	assert_int_equal(pair.parent.ttl, 600);
	assert_int_equal(pair.child_ttl, 240);
	assert_int_equal(pair.include_child, 0);
	assert_int_equal(pair.parent.auto_renew, 1);
	json_decref(body);
	/* null is absent. */
	assert_int_equal(parse("{\"subject\":\"alice\",\"include_child\":null,\"auto_renew\":null,\"claims\":null}",
			       &issuer_caller, &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.include_child, 1);
	assert_int_equal(pair.parent.auto_renew, 0);
	assert_null(pair.parent.claims);
	json_decref(body);
}

/* A typo must not silently get a default. */
static void test_unknown_members_refused(void **state)
{
	expect_refused("{\"subject\":\"a\",\"expires_in\":60}", &issuer_caller, -EINVAL, "expires_in");
	expect_refused("{\"subject\":\"a\",\"token_type\":\"parent\"}", &issuer_caller, -EINVAL, "token_type");
	expect_refused("{\"subject\":\"a\",\"autoRenew\":true}", &issuer_caller, -EINVAL, "autoRenew");
	expect_refused("{\"subject\":\"a\",\"alg\":\"ES256\"}", &issuer_caller, -EINVAL, "alg");
	expect_refused("[]", &issuer_caller, -EINVAL, "object");
	expect_refused("{\"audience\":\"api\"}", &issuer_caller, -EINVAL, "subject");
}

static void test_bad_values_refused(void **state)
{
	expect_refused("{\"subject\":\"a\",\"auto_renew\":1}", &issuer_caller, -EINVAL, "auto_renew");
	expect_refused("{\"subject\":\"a\",\"include_child\":\"yes\"}", &issuer_caller, -EINVAL, "include_child");
	expect_refused("{\"subject\":\"a\",\"parent_expires_in\":0}", &issuer_caller, -EINVAL, "parent_expires_in");
	expect_refused("{\"subject\":\"a\",\"parent_expires_in\":2592001}", &issuer_caller, -EINVAL, "parent_expires_in");
	expect_refused("{\"subject\":\"a\",\"child_expires_in\":\"60\"}", &issuer_caller, -EINVAL, "child_expires_in");
	expect_refused("{\"subject\":\"a\",\"audience\":[]}", &issuer_caller, -EINVAL, "audience");
	expect_refused("{\"subject\":\"\"}", &issuer_caller, -EINVAL, "subject");
}

/* Registered claims, the ones the flows set (parent_jti, auto_renew) and
 * roles (only access tokens carry them) are not custom claims. */
static void test_reserved_claims_refused(void **state)
{
	expect_refused("{\"subject\":\"a\",\"claims\":{\"parent_jti\":\"x\"}}", &issuer_caller, -EINVAL, "parent_jti");
	expect_refused("{\"subject\":\"a\",\"claims\":{\"auto_renew\":true}}", &issuer_caller, -EINVAL, "auto_renew");
	expect_refused("{\"subject\":\"a\",\"claims\":{\"token_type\":\"access\"}}", &issuer_caller, -EINVAL,
		       "token_type");
	expect_refused("{\"subject\":\"a\",\"claims\":{\"exp\":1}}", &issuer_caller, -EINVAL, "exp");
	expect_refused("{\"subject\":\"a\",\"claims\":{\"roles\":[\"tokens:issue\"]}}", &issuer_caller, -EINVAL, "roles");
	expect_refused("{\"subject\":\"a\",\"claims\":[1]}", &issuer_caller, -EINVAL, "claims");
}

/* SPEC §5.5: a child never outlives its parent. */
static void test_child_within_parent(void **state)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	expect_refused("{\"subject\":\"a\",\"parent_expires_in\":600,\"child_expires_in\":601}", &issuer_caller, -EINVAL,
		       "child_expires_in");
	assert_int_equal(parse("{\"subject\":\"a\",\"parent_expires_in\":600,\"child_expires_in\":600}", &issuer_caller,
			       &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.child_ttl, 600);
	json_decref(body);
	/* The default child_ttl (900) is shortened to the parent's. */
	assert_int_equal(parse("{\"subject\":\"a\",\"parent_expires_in\":300}", &issuer_caller, &pair, &body, err,
			       sizeof(err)), 0);
	assert_int_equal(pair.parent.ttl, 300);
	assert_int_equal(pair.child_ttl, 300);
	json_decref(body);
}

/* With auto_renew a child shorter than twice renew_before would have its
 * parent renewed more often than once per renew_before (a record and a
 * status-list index each time, for the parent's whole life). */
static void test_auto_renew_child_floor(void **state)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	assert_int_equal(cfg.renew_before, 120);
	expect_refused("{\"subject\":\"a\",\"auto_renew\":true,\"child_expires_in\":1}", &issuer_caller, -EINVAL,
		       "240");
	expect_refused("{\"subject\":\"a\",\"auto_renew\":true,\"child_expires_in\":239}", &issuer_caller, -EINVAL,
		       "child_expires_in");
	assert_int_equal(parse("{\"subject\":\"a\",\"auto_renew\":true,\"child_expires_in\":240}", &issuer_caller,
			       &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.child_ttl, 240);
	json_decref(body);
	/* Without auto_renew nothing is renewed: any lifetime will do. */
	assert_int_equal(parse("{\"subject\":\"a\",\"child_expires_in\":1}", &issuer_caller, &pair, &body, err,
			       sizeof(err)), 0);
	assert_int_equal(pair.child_ttl, 1);
	json_decref(body);
	/* A child living as long as its parent has no successor. */
	assert_int_equal(parse("{\"subject\":\"a\",\"auto_renew\":true,\"parent_expires_in\":60}", &issuer_caller,
			       &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.child_ttl, 60);
	json_decref(body);
	expect_refused("{\"subject\":\"a\",\"auto_renew\":true,\"parent_expires_in\":60,\"child_expires_in\":59}",
		       &issuer_caller, -EINVAL, "child_expires_in");
	/* The floor follows renew_before. */
	cfg.renew_before = 4;
	assert_int_equal(parse("{\"subject\":\"a\",\"auto_renew\":true,\"child_expires_in\":8}", &issuer_caller, &pair, &body, err, sizeof(err)), 0);
	json_decref(body);
	expect_refused("{\"subject\":\"a\",\"auto_renew\":true,\"child_expires_in\":7}", &issuer_caller, -EINVAL,
		       "8");
	cfg.renew_before = 120;
}

static void test_org_confinement(void **state)
{
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "";

	assert_int_equal(parse("{\"subject\":\"a\"}", &org_caller, &pair, &body, err, sizeof(err)), 0);
	assert_string_equal(pair.parent.org, "acme");
	json_decref(body);
	assert_int_equal(parse("{\"subject\":\"a\",\"org\":\"acme\"}", &org_caller, &pair, &body, err, sizeof(err)), 0);
	assert_string_equal(pair.parent.org, "acme");
	json_decref(body);
	expect_refused("{\"subject\":\"a\",\"org\":\"globex\"}", &org_caller, -EACCES, "org");
}

/* A parent addressed to this service (its children would be too) may not
 * outlive the caller: an explicit lifetime past it is refused, the default
 * is cut to it, and the child follows. */
static void test_bound_by_the_caller(void **state)
{
	struct auth_caller brief = issuer_caller;
	struct issue_pair pair;
	json_t *body = NULL;
	char err[160] = "", text[256];

	brief.exp = NOW + 120;
	snprintf(text, sizeof(text), "{\"subject\":\"a\",\"audience\":\"%s\",\"parent_expires_in\":3600}", cfg.issuer);
	expect_refused(text, &brief, -EACCES, "outlive");
	snprintf(text, sizeof(text), "{\"subject\":\"a\",\"audience\":\"%s\"}", cfg.issuer);
	assert_int_equal(parse(text, &brief, &pair, &body, err, sizeof(err)), 0);
	assert_int_equal(pair.parent.ttl, 120);
	assert_int_equal(pair.child_ttl, 120);
	json_decref(body);
	/* An ordinary parent may outlive the caller that asked for it. */
	assert_int_equal(parse("{\"subject\":\"a\",\"parent_expires_in\":3600}", &brief, &pair, &body, err,
			       sizeof(err)), 0);
	assert_int_equal(pair.parent.ttl, 3600);
	json_decref(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_members),
		cmocka_unit_test(test_unknown_members_refused),
		cmocka_unit_test(test_bad_values_refused),
		cmocka_unit_test(test_reserved_claims_refused),
		cmocka_unit_test(test_child_within_parent),
		cmocka_unit_test(test_auto_renew_child_floor),
		cmocka_unit_test(test_org_confinement),
		cmocka_unit_test(test_bound_by_the_caller),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
