/* keystate: records (format, the strict parser against hostile input),
 * merging concurrent records, and the lifecycle rules of keystate_plan one
 * test per rule, then manual rotate/retire/destroy, then seeded random
 * scenarios checking the plan's invariants and its idempotence. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/keystate.h"

#define T0 INT64_C(1700000000)
#define V62 (INT64_C(1) << 62)
#define MAXK 16

/* publish_ahead 100, rotation 1000 (due 900 after activation), destroy
 * 300 + 60 after retirement; ES256 configured. */
static const enum jws_alg es256_only[] = { JWS_ALG_ES256 };
static const struct keystate_policy base_policy = {
	.publish_ahead = 100,
	.rotation_period = 1000,
	.max_ttl = 300,
	.leeway = 60,
	.algorithms = es256_only,
	.algorithm_count = 1,
};

/* ---- helpers ---------------------------------------------------------- */

static struct keystate_record rec_of(enum keystate_state state, enum jws_alg alg, int64_t created,
				     int64_t activate_at, int64_t retired_at)
{
	struct keystate_record r = { .state = state, .alg = alg, .created = created,
				     .activate_at = activate_at, .retired_at = retired_at };
	return r;
}

static void assert_rec(const struct keystate_record *r, enum keystate_state state, enum jws_alg alg,
		       int64_t created, int64_t activate_at, int64_t retired_at)
{
	assert_int_equal(r->state, state);
	assert_int_equal(r->alg, alg);
	assert_int_equal(r->created, created);
	assert_int_equal(r->activate_at, activate_at);
	assert_int_equal(r->retired_at, retired_at);
}

/* Output fields poisoned so that a test sees what plan wrote. */
static void key_set(struct keystate_key *k, const char *kid, enum jws_alg alg, enum keystate_state state,
		    int64_t created, int64_t activate_at, int64_t retired_at)
{
	memset(k, 0xa5, sizeof(*k));
	snprintf(k->kid, sizeof(k->kid), "%s", kid);
	k->alg = alg;
	k->has_record = 1;
	k->stored = rec_of(state, alg, created, activate_at, retired_at);
	k->record_count = 1;
}

static void key_unrecorded(struct keystate_key *k, const char *kid, enum jws_alg alg)
{
	memset(k, 0xa5, sizeof(*k));
	snprintf(k->kid, sizeof(k->kid), "%s", kid);
	k->alg = alg;
	k->has_record = 0;
	k->record_count = 0;
}

static void plan_ok(struct keystate_key *keys, size_t n, int64_t now, const struct keystate_policy *policy,
		    struct keystate_plan *plan)
{
	memset(plan, 0xa5, sizeof(*plan));
	assert_int_equal(keystate_plan(keys, n, now, policy, plan), 0);
}

static void assert_signers(const struct keystate_plan *plan, const struct keystate_key *keys, size_t n)
{
	for (int a = 0; a < JWS_ALG_COUNT; a++) {
		int seen = -1;

		for (size_t i = 0; i < n; i++)
			if (keys[i].signer && keys[i].alg == (enum jws_alg)a)
				seen = (int)i;
		assert_int_equal(plan->signer[a], seen);
	}
}

static int contains(const enum jws_alg *list, size_t n, enum jws_alg alg)
{
	for (size_t i = 0; i < n; i++)
		if (list[i] == alg)
			return 1;
	return 0;
}

static void assert_parse_fails(const char *s, size_t len)
{
	struct keystate_record r;

	memset(&r, 0x5a, sizeof(r));
	assert_int_equal(keystate_parse(s, len, &r), -EINVAL);
	for (size_t i = 0; i < sizeof(r); i++)
		assert_int_equal(((const unsigned char *)&r)[i], 0x5a);
}

/* ---- names, format, parse --------------------------------------------- */

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(keystate_name(KEYSTATE_NEXT), "next");
	assert_string_equal(keystate_name(KEYSTATE_ACTIVE), "active");
	assert_string_equal(keystate_name(KEYSTATE_RETIRED), "retired");
	assert_null(keystate_name((enum keystate_state)0));
	assert_null(keystate_name((enum keystate_state)4));
}

static void test_format_exact(void **state)
{
	struct keystate_record r = rec_of(KEYSTATE_RETIRED, JWS_ALG_EDDSA, 0, 17, V62);
	char buf[KEYSTATE_RECORD_MAX + 1];
	size_t len = 0;
	const char *want = "hsmjwt-keystate 1 state=retired alg=EdDSA created=0 activate_at=17 "
			   "retired_at=4611686018427387904";

	(void)state;
	assert_int_equal(keystate_format(&r, buf, sizeof(buf), &len), 0);
	assert_int_equal(len, strlen(want));
	assert_string_equal(buf, want);

	r = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, T0, T0 + 102, 0);
	assert_int_equal(keystate_format(&r, buf, sizeof(buf), &len), 0);
	assert_string_equal(buf, "hsmjwt-keystate 1 state=next alg=ES256 created=1700000000 "
				 "activate_at=1700000102 retired_at=0");
}

/* Every state with every algorithm, at the value bounds. */
static void test_round_trip(void **state)
{
	static const enum keystate_state states[] = { KEYSTATE_NEXT, KEYSTATE_ACTIVE, KEYSTATE_RETIRED };
	static const int64_t values[][3] = {
		{ 0, 0, 0 }, { T0, T0 + 100, T0 + 500 }, { V62 - 1, V62, V62 }, { 1, 9, 10 },
	};
	int seen = 0;

	(void)state;
	for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
		for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
			for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
				int64_t retired = states[s] == KEYSTATE_RETIRED ? values[v][2] : 0;
				struct keystate_record r = rec_of(states[s], (enum jws_alg)a, values[v][0],
								  values[v][1], retired);
				struct keystate_record back;
				char buf[KEYSTATE_RECORD_MAX + 1], want[256];
				size_t len = 0;

				snprintf(want, sizeof(want),
					 "hsmjwt-keystate 1 state=%s alg=%s created=%lld activate_at=%lld retired_at=%lld",
					 keystate_name(states[s]), jws_alg_name((enum jws_alg)a),
					 (long long)values[v][0], (long long)values[v][1], (long long)retired);
				assert_int_equal(keystate_format(&r, buf, sizeof(buf), &len), 0);
				assert_string_equal(buf, want);
				assert_int_equal(len, strlen(want));
				assert_true(len <= KEYSTATE_RECORD_MAX);
				memset(&back, 0, sizeof(back));
				assert_int_equal(keystate_parse(buf, len, &back), 0);
				assert_rec(&back, r.state, r.alg, r.created, r.activate_at, r.retired_at);
				seen++;
			}
		}
	}
	assert_int_equal(seen, 3 * (JWS_ALG_COUNT - 1) * 4);
}

static void test_parse_refuses_hostile(void **state)
{
#define GOOD_HEAD "hsmjwt-keystate 1 state=active alg=ES256 "
	static const char *const bad[] = {
		"",
		"hsmjwt-keystate 1",
		"hsmjwt-keystate 2 state=active alg=ES256 created=1 activate_at=2 retired_at=0",
		"HSMJWT-keystate 1 state=active alg=ES256 created=1 activate_at=2 retired_at=0",
		" hsmjwt-keystate 1 state=active alg=ES256 created=1 activate_at=2 retired_at=0",
		/* missing field */
		GOOD_HEAD "created=1 activate_at=2",
		"hsmjwt-keystate 1 state=active created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 alg=ES256 created=1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1 retired_at=0",
		/* reordered */
		GOOD_HEAD "activate_at=2 created=1 retired_at=0",
		"hsmjwt-keystate 1 alg=ES256 state=active created=1 activate_at=2 retired_at=0",
		/* duplicate */
		GOOD_HEAD "created=1 created=1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1 activate_at=2 retired_at=0 retired_at=0",
		/* extra field */
		GOOD_HEAD "created=1 activate_at=2 retired_at=0 kid=x",
		GOOD_HEAD "created=1 activate_at=2 extra=1 retired_at=0",
		/* whitespace */
		"hsmjwt-keystate 1 state=active  alg=ES256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active\talg=ES256 created=1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1 activate_at=2 retired_at=0 ",
		GOOD_HEAD "created=1 activate_at=2 retired_at=0\n",
		GOOD_HEAD "created=1 activate_at=2 retired_at=0\r\n",
		GOOD_HEAD "created= 1 activate_at=2 retired_at=0",
		GOOD_HEAD "created =1 activate_at=2 retired_at=0",
		/* numbers */
		GOOD_HEAD "created=+1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=-1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=01 activate_at=2 retired_at=0",
		GOOD_HEAD "created=00 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1 activate_at=2 retired_at=00",
		GOOD_HEAD "created= activate_at=2 retired_at=0",
		GOOD_HEAD "created=1 activate_at=2 retired_at=",
		GOOD_HEAD "created=0x1 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1.0 activate_at=2 retired_at=0",
		GOOD_HEAD "created=1e3 activate_at=2000 retired_at=0",
		GOOD_HEAD "created=4611686018427387905 activate_at=4611686018427387905 retired_at=0",
		GOOD_HEAD "created=1 activate_at=4611686018427387905 retired_at=0",
		GOOD_HEAD "created=1 activate_at=9223372036854775807 retired_at=0",
		GOOD_HEAD "created=1 activate_at=18446744073709551617 retired_at=0",
		GOOD_HEAD "created=1 activate_at=99999999999999999999999 retired_at=0",
		GOOD_HEAD "created=1 activate_at=04611686018427387904 retired_at=0",
		/* names */
		"hsmjwt-keystate 1 state=destroyed alg=ES256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=Active alg=ES256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state= alg=ES256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active alg=none created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active alg=es256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active alg= created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active alg=ES256ES256ES256ES256 created=1 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=active alg=\"ES256\" created=1 activate_at=2 retired_at=0",
		/* invariants */
		"hsmjwt-keystate 1 state=next alg=ES256 created=3 activate_at=2 retired_at=0",
		"hsmjwt-keystate 1 state=next alg=ES256 created=1 activate_at=2 retired_at=5",
		GOOD_HEAD "created=1 activate_at=2 retired_at=5",
		"hsmjwt-keystate 1 state=retired alg=ES256 created=1 activate_at=5 retired_at=4",
	};
#undef GOOD_HEAD
	const char good[] = "hsmjwt-keystate 1 state=active alg=ES256 created=1 activate_at=2 retired_at=0";
	struct keystate_record r;

	(void)state;
	assert_true(sizeof(bad) / sizeof(bad[0]) >= 25);
	/* The same line without the malformation parses: the table tests
	 * the malformation, not something else. */
	assert_int_equal(keystate_parse(good, strlen(good), &r), 0);
	assert_rec(&r, KEYSTATE_ACTIVE, JWS_ALG_ES256, 1, 2, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("hostile %zu: %s\n", i, bad[i]);
		assert_parse_fails(bad[i], strlen(bad[i]));
	}
}

/* NUL inside the buffer, len cutting the record short or reaching past it,
 * and the length limit. */
static void test_parse_refuses_bytes(void **state)
{
	char good[] = "hsmjwt-keystate 1 state=next alg=PS256 created=10 activate_at=20 retired_at=0";
	size_t n = strlen(good);
	char buf[KEYSTATE_RECORD_MAX * 2];
	struct keystate_record r;

	(void)state;
	assert_int_equal(keystate_parse(good, n, &r), 0);
	assert_rec(&r, KEYSTATE_NEXT, JWS_ALG_PS256, 10, 20, 0);
	/* The terminating NUL counted in len. */
	assert_parse_fails(good, n + 1);
	/* Every prefix lacks a field or a value. */
	for (size_t cut = 0; cut < n; cut++)
		assert_parse_fails(good, cut);
	/* NUL anywhere inside. */
	for (size_t at = 0; at < n; at++) {
		memcpy(buf, good, n);
		buf[at] = '\0';
		assert_parse_fails(buf, n);
	}
	/* A byte >= 0x80 inside the alg. */
	memcpy(buf, good, n);
	buf[strlen("hsmjwt-keystate 1 state=next alg=PS")] = (char)0xb2;
	assert_parse_fails(buf, n);
	/* Longer than KEYSTATE_RECORD_MAX (no valid record is that long, so
	 * the grammar refuses it too). */
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, good, n);
	assert_parse_fails(buf, KEYSTATE_RECORD_MAX + 1);
	assert_parse_fails(buf, sizeof(buf));
	assert_parse_fails(NULL, 0);
}

static void test_format_refuses_invalid(void **state)
{
	static const struct keystate_record bad[] = {
		{ (enum keystate_state)0, JWS_ALG_ES256, 1, 2, 0 },
		{ (enum keystate_state)4, JWS_ALG_ES256, 1, 2, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_INVALID, 1, 2, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_COUNT, 1, 2, 0 },
		{ KEYSTATE_ACTIVE, (enum jws_alg)-1, 1, 2, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_ES256, -1, 2, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_ES256, 1, -2, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_ES256, V62 + 1, V62 + 1, 0 },
		{ KEYSTATE_ACTIVE, JWS_ALG_ES256, 1, INT64_MAX, 0 },
		{ KEYSTATE_RETIRED, JWS_ALG_ES256, 1, 2, V62 + 1 },
		{ KEYSTATE_RETIRED, JWS_ALG_ES256, 1, INT64_MIN, 0 },
		{ KEYSTATE_NEXT, JWS_ALG_ES256, 3, 2, 0 },
		{ KEYSTATE_NEXT, JWS_ALG_ES256, 1, 2, 2 },
		{ KEYSTATE_ACTIVE, JWS_ALG_ES256, 1, 2, 3 },
		{ KEYSTATE_RETIRED, JWS_ALG_ES256, 1, 5, 4 },
	};
	char buf[KEYSTATE_RECORD_MAX + 1];
	size_t len = 777;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(buf, 'z', sizeof(buf));
		assert_int_equal(keystate_format(&bad[i], buf, sizeof(buf), &len), -EINVAL);
		assert_int_equal(len, 777);
		assert_int_equal(buf[0], 'z');
	}
}

static void test_format_buffer_size(void **state)
{
	struct keystate_record r = rec_of(KEYSTATE_ACTIVE, JWS_ALG_RS256, 5, 6, 0);
	const char *want = "hsmjwt-keystate 1 state=active alg=RS256 created=5 activate_at=6 retired_at=0";
	size_t n = strlen(want), len = 777;
	char buf[KEYSTATE_RECORD_MAX + 8];

	(void)state;
	/* Room for the text but not its NUL, and less. */
	memset(buf, 'z', sizeof(buf));
	assert_int_equal(keystate_format(&r, buf, n, &len), -ENOSPC);
	assert_int_equal(keystate_format(&r, buf, 1, &len), -ENOSPC);
	assert_int_equal(keystate_format(&r, buf, 0, &len), -ENOSPC);
	assert_int_equal(len, 777);
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 'z');
	/* Exactly enough. */
	assert_int_equal(keystate_format(&r, buf, n + 1, &len), 0);
	assert_int_equal(len, n);
	assert_string_equal(buf, want);
	assert_int_equal(buf[n + 1], 'z');
}

/* ---- merge ------------------------------------------------------------ */

static void merge_both(const struct keystate_record *a, const struct keystate_record *b,
		       const struct keystate_record *want)
{
	struct keystate_record out;

	keystate_merge(a, b, &out);
	assert_rec(&out, want->state, a->alg, want->created, want->activate_at, want->retired_at);
	keystate_merge(b, a, &out);
	assert_rec(&out, want->state, b->alg, want->created, want->activate_at, want->retired_at);
}

static void test_merge_furthest_state(void **state)
{
	struct keystate_record next = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 10, 200, 0);
	struct keystate_record active = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 10, 150, 0);
	struct keystate_record retired = rec_of(KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 100, 120);

	(void)state;
	merge_both(&next, &active, &active);
	merge_both(&next, &retired, &retired);
	merge_both(&active, &retired, &retired);
	merge_both(&next, &next, &next);
}

static void test_merge_same_state_ties(void **state)
{
	(void)state;
	/* next, active: the earlier activate_at, whatever created says. */
	{
		struct keystate_record a = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 50, 300, 0);
		struct keystate_record b = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 10, 301, 0);
		merge_both(&a, &b, &a);
	}
	{
		struct keystate_record a = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 50, 300, 0);
		struct keystate_record b = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 10, 301, 0);
		merge_both(&a, &b, &a);
	}
	/* retired: the later retired_at, whatever activate_at says. */
	{
		struct keystate_record a = rec_of(KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 100, 400);
		struct keystate_record b = rec_of(KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 50, 399);
		merge_both(&a, &b, &a);
	}
	/* Remaining ties: the smaller created. */
	{
		struct keystate_record a = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 20, 300, 0);
		struct keystate_record b = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 19, 300, 0);
		merge_both(&a, &b, &b);
	}
	{
		struct keystate_record a = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 20, 300, 0);
		struct keystate_record b = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 19, 300, 0);
		merge_both(&a, &b, &b);
	}
	{
		struct keystate_record a = rec_of(KEYSTATE_RETIRED, JWS_ALG_ES256, 20, 300, 400);
		struct keystate_record b = rec_of(KEYSTATE_RETIRED, JWS_ALG_ES256, 19, 300, 400);
		merge_both(&a, &b, &b);
	}
}

static void test_merge_alg_and_alias(void **state)
{
	struct keystate_record a = rec_of(KEYSTATE_NEXT, JWS_ALG_ES256, 10, 200, 0);
	struct keystate_record b = rec_of(KEYSTATE_RETIRED, JWS_ALG_RS256, 10, 100, 120);
	struct keystate_record out;

	(void)state;
	/* a's alg is kept even when b wins. */
	keystate_merge(&a, &b, &out);
	assert_rec(&out, KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 100, 120);
	/* The output may be one of the inputs. */
	keystate_merge(&a, &b, &a);
	assert_rec(&a, KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 100, 120);
	a = rec_of(KEYSTATE_ACTIVE, JWS_ALG_ES256, 10, 200, 0);
	keystate_merge(&a, &b, &b);
	assert_rec(&b, KEYSTATE_RETIRED, JWS_ALG_ES256, 10, 100, 120);
}

/* ---- plan ------------------------------------------------------------- */

static void test_plan_bootstrap(void **state)
{
	static const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256 };
	struct keystate_policy policy = base_policy;
	struct keystate_plan plan;

	(void)state;
	policy.algorithms = algs;
	policy.algorithm_count = 2;
	plan_ok(NULL, 0, T0, &policy, &plan);
	assert_int_equal(plan.generate_active_count, 2);
	/* In enum order. */
	assert_int_equal(plan.generate_active[0], JWS_ALG_RS256);
	assert_int_equal(plan.generate_active[1], JWS_ALG_ES256);
	assert_int_equal(plan.generate_next_count, 0);
	for (int a = 0; a < JWS_ALG_COUNT; a++)
		assert_int_equal(plan.signer[a], -1);
	assert_int_equal(plan.next_change, INT64_MAX);
	assert_int_equal(plan.jwks_max_age, 95);
}

/* Only retired keys left: no key could sign, so one is generated. */
static void test_plan_bootstrap_retired_only(void **state)
{
	struct keystate_key keys[1];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 100, T0 - 90, T0 - 10);
	plan_ok(keys, 1, T0, &base_policy, &plan);
	assert_int_equal(plan.generate_active_count, 1);
	assert_int_equal(plan.generate_active[0], JWS_ALG_ES256);
	assert_int_equal(plan.signer[JWS_ALG_ES256], -1);
	assert_int_equal(keys[0].signer, 0);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(plan.next_change, T0 - 10 + 360);
}

static void next_scenario(struct keystate_key *keys)
{
	key_set(&keys[0], "old", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 600, T0 - 500, 0);
	key_set(&keys[1], "new", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 92, T0 + 10, 0);
}

static void test_plan_next_before_activation(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	next_scenario(keys);
	plan_ok(keys, 2, T0 + 9, &base_policy, &plan);
	assert_signers(&plan, keys, 2);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
	assert_rec(&keys[0].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 600, T0 - 500, 0);
	assert_rec(&keys[1].effective, KEYSTATE_NEXT, JWS_ALG_ES256, T0 - 92, T0 + 10, 0);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, 0);
	assert_int_equal(plan.generate_next_count, 0);
	assert_int_equal(plan.generate_active_count, 0);
	assert_int_equal(plan.next_change, T0 + 10);
	assert_int_equal(plan.jwks_max_age, 1);
}

/* activate_at == now is active; one second later the same. */
static void test_plan_next_at_and_after_activation(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	for (int64_t now = T0 + 10; now <= T0 + 11; now++) {
		next_scenario(keys);
		plan_ok(keys, 2, now, &base_policy, &plan);
		assert_signers(&plan, keys, 2);
		assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
		assert_rec(&keys[1].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 92, T0 + 10, 0);
		assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 600, T0 - 500, T0 + 10);
		assert_int_equal(keys[0].actions, KEYSTATE_WRITE);
		assert_int_equal(keys[1].actions, KEYSTATE_WRITE);
		/* Old key destroyable at T0 + 10 + 360; rotation due at
		 * T0 + 10 + 900. */
		assert_int_equal(plan.next_change, T0 + 370);
		assert_int_equal(plan.generate_next_count, 0);
		assert_int_equal(plan.jwks_max_age, 95);
	}
}

static void test_plan_two_actives_later_wins(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "b", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 50, T0 - 40, 0);
	key_set(&keys[1], "a", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 90, T0 - 80, 0);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_signers(&plan, keys, 2);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
	assert_rec(&keys[0].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 50, T0 - 40, 0);
	assert_rec(&keys[1].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 90, T0 - 80, T0 - 40);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, KEYSTATE_WRITE);
}

/* Equal activate_at: the smaller kid signs, the other retires at that same
 * moment. */
static void test_plan_two_actives_tie(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	/* Same activation second: the newer key (an immediate rotation made in
	 * the second its predecessor activated) signs, whatever the kids. */
	key_set(&keys[0], "kb", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 50, T0 - 40, 0);
	key_set(&keys[1], "ka", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 60, T0 - 40, 0);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
	assert_int_equal(keys[0].signer, 1);
	assert_int_equal(keys[1].signer, 0);
	assert_rec(&keys[1].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 60, T0 - 40, T0 - 40);
	assert_int_equal(keys[0].actions, 0);

	/* Same activation and creation: the smaller kid signs. */
	key_set(&keys[0], "kb", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 50, T0 - 40, 0);
	key_set(&keys[1], "ka", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 50, T0 - 40, 0);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
	assert_int_equal(keys[1].signer, 1);
	assert_int_equal(keys[0].signer, 0);
	assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 50, T0 - 40, T0 - 40);
	assert_int_equal(keys[1].actions, 0);
}

/* Each retires at the activation of the key that followed it, not at the
 * signer's; the array order is not the activation order. */
static void test_plan_chain_of_three(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "second", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 250, T0 - 200, 0);
	key_set(&keys[1], "third", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 150, T0 - 100, 0);
	key_set(&keys[2], "first", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 350, T0 - 300, 0);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_signers(&plan, keys, 3);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
	assert_rec(&keys[2].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 350, T0 - 300, T0 - 200);
	assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 250, T0 - 200, T0 - 100);
	assert_rec(&keys[1].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 150, T0 - 100, 0);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(keys[i].actions, KEYSTATE_WRITE);
	/* first destroyable at T0 - 200 + 360. */
	assert_int_equal(plan.next_change, T0 + 160);
}

/* retired_at + max_ttl + leeway: one second before it stays, at it goes. */
static void test_plan_destroy_boundary(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;
	const int64_t retired_at = T0 - 1000;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 1000, T0 - 1000, 0);
	key_set(&keys[1], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 3000, T0 - 2000, retired_at);
	plan_ok(keys, 2, retired_at + 359, &base_policy, &plan);
	assert_int_equal(keys[1].actions, 0);
	assert_int_equal(plan.next_change, retired_at + 360);
	assert_int_equal(keystate_destroy_after(&keys[1].stored, &base_policy), retired_at + 360);

	key_set(&keys[1], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 3000, T0 - 2000, retired_at);
	keys[1].record_count = 3; /* destruction takes the records too: no WRITE */
	plan_ok(keys, 2, retired_at + 360, &base_policy, &plan);
	assert_int_equal(keys[1].actions, KEYSTATE_DESTROY);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].signer, 0);
	/* Rotation of s due at T0 - 1000 + 900. */
	assert_int_equal(plan.next_change, T0 - 100);
}

/* Due rotation_period - publish_ahead after the signer's activation. */
static void test_plan_rotation_boundary(void **state)
{
	struct keystate_key keys[1];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0, 0);
	plan_ok(keys, 1, T0 + 899, &base_policy, &plan);
	assert_int_equal(plan.generate_next_count, 0);
	assert_int_equal(plan.next_change, T0 + 900);
	assert_int_equal(keys[0].actions, 0);

	plan_ok(keys, 1, T0 + 900, &base_policy, &plan);
	assert_int_equal(plan.generate_next_count, 1);
	assert_int_equal(plan.generate_next[0], JWS_ALG_ES256);
	assert_int_equal(plan.next_change, INT64_MAX);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
}

static void test_plan_no_rotation_with_next_key(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 5000, T0 - 5000, 0);
	key_set(&keys[1], "n", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 50, T0 + 52, 0);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(plan.generate_next_count, 0);
	assert_int_equal(plan.next_change, T0 + 52);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, 0);
}

static void test_plan_no_rotation_when_manual(void **state)
{
	struct keystate_policy policy = base_policy;
	struct keystate_key keys[1];
	struct keystate_plan plan;

	(void)state;
	policy.rotation_period = 0;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 500000, T0 - 500000, 0);
	plan_ok(keys, 1, T0, &policy, &plan);
	assert_int_equal(plan.generate_next_count, 0);
	assert_int_equal(plan.next_change, INT64_MAX);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
}

/* Several pending next keys: the earliest is kept, the rest destroyed. */
static void test_plan_surplus_next_keys(void **state)
{
	struct keystate_key keys[4];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 500, T0 - 500, 0);
	key_set(&keys[1], "nb", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 10, T0 + 50, 0);
	key_set(&keys[2], "na", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 10, T0 + 50, 0);
	key_set(&keys[3], "nz", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 20, T0 + 40, 0);
	plan_ok(keys, 4, T0, &base_policy, &plan);
	assert_int_equal(keys[3].actions, 0);
	assert_int_equal(keys[1].actions, KEYSTATE_DESTROY);
	assert_int_equal(keys[2].actions, KEYSTATE_DESTROY);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
	assert_int_equal(plan.next_change, T0 + 40);
	assert_int_equal(plan.jwks_max_age, 40);

	/* Same activate_at: the smaller kid stays. */
	keys[3].stored.activate_at = T0 + 50;
	keys[3].stored.created = T0 - 10;
	plan_ok(keys, 4, T0, &base_policy, &plan);
	assert_int_equal(keys[2].actions, 0);
	assert_int_equal(keys[1].actions, KEYSTATE_DESTROY);
	assert_int_equal(keys[3].actions, KEYSTATE_DESTROY);
}

/* No key can sign but next keys wait: the earliest signs now. */
static void test_plan_promotes_next_without_signer(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "old", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 900, T0 - 800, T0 - 100);
	key_set(&keys[1], "late", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 20, T0 + 80, 0);
	key_set(&keys[2], "early", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 30, T0 + 70, 0);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_signers(&plan, keys, 3);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 2);
	assert_rec(&keys[2].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 30, T0, 0);
	assert_int_equal(keys[2].actions, KEYSTATE_WRITE);
	assert_int_equal(keys[1].actions, KEYSTATE_DESTROY);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(plan.generate_active_count, 0);
	assert_int_equal(plan.generate_next_count, 0);
	/* old destroyable at T0 + 260; rotation of "early" at T0 + 900; no
	 * pending activation left. */
	assert_int_equal(plan.next_change, T0 + 260);
	assert_int_equal(plan.jwks_max_age, 95);
}

/* Keys from before lifecycle records: per algorithm the smallest kid is
 * active since now, the others retired now. */
static void test_plan_migration(void **state)
{
	static const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256 };
	struct keystate_policy policy = base_policy;
	struct keystate_key keys[4];
	struct keystate_plan plan;

	(void)state;
	policy.algorithms = algs;
	policy.algorithm_count = 2;
	key_unrecorded(&keys[0], "kc", JWS_ALG_ES256);
	key_unrecorded(&keys[1], "ka", JWS_ALG_ES256);
	key_unrecorded(&keys[2], "kb", JWS_ALG_ES256);
	key_unrecorded(&keys[3], "kz", JWS_ALG_RS256);
	plan_ok(keys, 4, T0, &policy, &plan);
	assert_signers(&plan, keys, 4);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
	assert_int_equal(plan.signer[JWS_ALG_RS256], 3);
	assert_rec(&keys[1].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0, T0, 0);
	assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0, T0, T0);
	assert_rec(&keys[2].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0, T0, T0);
	assert_rec(&keys[3].effective, KEYSTATE_ACTIVE, JWS_ALG_RS256, T0, T0, 0);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(keys[i].actions, KEYSTATE_WRITE);
	assert_int_equal(plan.generate_active_count, 0);
	assert_int_equal(plan.next_change, T0 + 360);
}

/* A record-less key next to recorded ones lost its records (two processes
 * pruning each other's copies, a crash, an unreadable record): it is
 * retired now and never made the signer — it may have been retired. */
static void test_plan_migration_mixed(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "rec", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 100, T0 - 100, 0);
	/* "aaa" sorts first: the smallest kid would have been the old signer. */
	key_unrecorded(&keys[1], "aaa", JWS_ALG_ES256);
	key_unrecorded(&keys[2], "zzz", JWS_ALG_ES256);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
	assert_rec(&keys[0].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 100, T0 - 100, 0);
	assert_rec(&keys[1].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0, T0, T0);
	assert_rec(&keys[2].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0, T0, T0);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, KEYSTATE_WRITE);
	assert_int_equal(keys[2].actions, KEYSTATE_WRITE);
}

/* An algorithm no longer configured keeps its signer, is not rotated, not
 * bootstrapped, and its next key is not promoted. */
static void test_plan_unconfigured_alg(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "rs", JWS_ALG_RS256, KEYSTATE_ACTIVE, T0 - 90000, T0 - 90000, 0);
	key_set(&keys[1], "ps", JWS_ALG_PS256, KEYSTATE_NEXT, T0 - 10, T0 + 30, 0);
	key_set(&keys[2], "rs-old", JWS_ALG_RS256, KEYSTATE_RETIRED, T0 - 99000, T0 - 99000, T0 - 90000);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_signers(&plan, keys, 3);
	assert_int_equal(plan.signer[JWS_ALG_RS256], 0);
	assert_int_equal(keys[0].signer, 1);
	assert_int_equal(plan.signer[JWS_ALG_PS256], -1);
	assert_rec(&keys[1].effective, KEYSTATE_NEXT, JWS_ALG_PS256, T0 - 10, T0 + 30, 0);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, 0);
	assert_int_equal(keys[2].actions, KEYSTATE_DESTROY);
	assert_int_equal(plan.generate_next_count, 0);
	/* ES256 (configured) has nothing. */
	assert_int_equal(plan.generate_active_count, 1);
	assert_int_equal(plan.generate_active[0], JWS_ALG_ES256);
	assert_int_equal(plan.next_change, T0 + 30);
	assert_int_equal(plan.jwks_max_age, 30);
	/* At its time the PS256 key activates and signs. */
	plan_ok(keys, 3, T0 + 30, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_PS256], 1);
	assert_int_equal(keys[1].actions, KEYSTATE_WRITE);
}

static void test_plan_write_only_when_needed(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	key_set(&keys[1], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 30, T0 - 20, T0 - 10);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(keys[0].actions, 0);
	assert_int_equal(keys[1].actions, 0);
	assert_rec(&keys[0].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 10, T0 - 10, 0);
	assert_rec(&keys[1].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 30, T0 - 20, T0 - 10);

	keys[0].record_count = 2;
	keys[1].record_count = 5;
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(keys[0].actions, KEYSTATE_WRITE);
	assert_int_equal(keys[1].actions, KEYSTATE_WRITE);
	assert_rec(&keys[0].effective, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 10, T0 - 10, 0);
}

static void test_plan_next_change_and_max_age(void **state)
{
	struct keystate_policy policy = base_policy;
	struct keystate_key keys[3];
	struct keystate_plan plan;

	(void)state;
	/* publish_ahead below the replica lag: nothing may be cached. */
	policy.publish_ahead = 3;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0, T0, 0);
	plan_ok(keys, 1, T0, &policy, &plan);
	assert_int_equal(plan.jwks_max_age, 0);
	assert_int_equal(plan.next_change, T0 + 997);
	policy.publish_ahead = 5;
	plan_ok(keys, 1, T0, &policy, &plan);
	assert_int_equal(plan.jwks_max_age, 0);
	policy.publish_ahead = 6;
	plan_ok(keys, 1, T0, &policy, &plan);
	assert_int_equal(plan.jwks_max_age, 1);

	/* The cap. */
	policy.publish_ahead = 86400;
	policy.rotation_period = 30 * 86400;
	plan_ok(keys, 1, T0, &policy, &plan);
	assert_int_equal(plan.jwks_max_age, 600);
	assert_int_equal(plan.next_change, T0 + 29 * 86400);

	/* Time until activation, below the cap. */
	key_set(&keys[1], "n", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 86000, T0 + 420, 0);
	plan_ok(keys, 2, T0, &policy, &plan);
	assert_int_equal(plan.jwks_max_age, 420);
	assert_int_equal(plan.next_change, T0 + 420);

	/* A destruction coming before the activation. */
	key_set(&keys[2], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 900, T0 - 800, T0 - 50);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_int_equal(plan.next_change, T0 + 310);
	assert_int_equal(plan.jwks_max_age, 95);
	/* ... and after it, the activation first. */
	keys[2].stored.retired_at = T0 + 100;
	keys[2].stored.activate_at = T0 - 800;
	plan_ok(keys, 3, T0, &policy, &plan);
	assert_int_equal(plan.next_change, T0 + 420);
}

/* Huge configured durations saturate instead of overflowing. */
static void test_plan_saturates(void **state)
{
	struct keystate_policy policy = base_policy;
	struct keystate_key keys[2];
	struct keystate_plan plan;

	(void)state;
	policy.rotation_period = INT64_MAX;
	policy.publish_ahead = 0;
	policy.max_ttl = INT64_MAX;
	policy.leeway = INT64_MAX;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, V62, V62, 0);
	key_set(&keys[1], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, V62, V62, V62);
	plan_ok(keys, 2, V62, &policy, &plan);
	assert_int_equal(plan.generate_next_count, 0);
	assert_int_equal(keys[1].actions, 0);
	assert_int_equal(plan.next_change, INT64_MAX);
	assert_int_equal(plan.jwks_max_age, 0);
	assert_int_equal(keystate_destroy_after(&keys[1].stored, &policy), INT64_MAX);

	policy.rotation_period = 1;
	policy.publish_ahead = INT64_MAX;
	plan_ok(keys, 2, V62, &policy, &plan);
	assert_int_equal(plan.generate_next_count, 1);
	assert_int_equal(plan.jwks_max_age, 600);
}

static void test_plan_refuses_invalid(void **state)
{
	static const enum jws_alg bad_algs[] = { JWS_ALG_ES256, JWS_ALG_INVALID };
	struct keystate_policy policy = base_policy;
	struct keystate_key keys[2];
	struct keystate_plan plan, before;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0, T0, 0);
	key_set(&keys[1], "x", JWS_ALG_INVALID, KEYSTATE_ACTIVE, T0, T0, 0);
	keys[1].stored.alg = JWS_ALG_ES256;
	memset(&plan, 0x5a, sizeof(plan));
	before = plan;
	assert_int_equal(keystate_plan(keys, 2, T0, &base_policy, &plan), -EINVAL);
	/* Nothing written, to the plan or to the keys. */
	assert_memory_equal(&plan, &before, sizeof(plan));
	assert_int_equal(keys[0].actions, 0xa5a5a5a5u);
	assert_int_equal(keys[0].signer, (int)0xa5a5a5a5u);

	keys[1].alg = JWS_ALG_COUNT;
	assert_int_equal(keystate_plan(keys, 2, T0, &base_policy, &plan), -EINVAL);
	/* The record names another algorithm than the label. */
	key_set(&keys[1], "x", JWS_ALG_RS256, KEYSTATE_ACTIVE, T0, T0, 0);
	keys[1].stored.alg = JWS_ALG_ES256;
	assert_int_equal(keystate_plan(keys, 2, T0, &base_policy, &plan), -EINVAL);
	/* A stored record that would not parse. */
	key_set(&keys[1], "x", JWS_ALG_ES256, KEYSTATE_RETIRED, T0, T0, T0 - 1);
	assert_int_equal(keystate_plan(keys, 2, T0, &base_policy, &plan), -EINVAL);
	/* now outside the records' range, policy out of range. */
	key_set(&keys[1], "x", JWS_ALG_ES256, KEYSTATE_RETIRED, T0, T0, T0);
	assert_int_equal(keystate_plan(keys, 2, -1, &base_policy, &plan), -EINVAL);
	assert_int_equal(keystate_plan(keys, 2, V62 + 1, &base_policy, &plan), -EINVAL);
	policy.algorithms = bad_algs;
	policy.algorithm_count = 2;
	assert_int_equal(keystate_plan(keys, 2, T0, &policy, &plan), -EINVAL);
	policy = base_policy;
	policy.leeway = -1;
	assert_int_equal(keystate_plan(keys, 2, T0, &policy, &plan), -EINVAL);
	assert_memory_equal(&plan, &before, sizeof(plan));
	/* The same keys are fine once valid. */
	assert_int_equal(keystate_plan(keys, 2, T0, &base_policy, &plan), 0);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);
}

/* ---- rotate, retire, destroy ------------------------------------------ */

static void test_rotate_generates_next(void **state)
{
	struct keystate_key keys[1];
	struct keystate_plan plan;
	struct keystate_record rec;
	int index = 99;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	plan_ok(keys, 1, T0, &base_policy, &plan);
	assert_int_equal(keystate_rotate(keys, 1, JWS_ALG_ES256, 0, T0, &base_policy, &index, &rec), 0);
	assert_int_equal(index, -1);
	assert_rec(&rec, KEYSTATE_NEXT, JWS_ALG_ES256, T0, T0 + 100 + KEYSTATE_PUBLISH_SLACK, 0);
	/* An algorithm without keys at all. */
	index = 99;
	assert_int_equal(keystate_rotate(keys, 1, JWS_ALG_RS256, 0, T0, &base_policy, &index, &rec), 0);
	assert_int_equal(index, -1);
	assert_rec(&rec, KEYSTATE_NEXT, JWS_ALG_RS256, T0, T0 + 102, 0);
}

static void test_rotate_immediate_generates_active(void **state)
{
	struct keystate_key keys[2];
	struct keystate_plan plan;
	struct keystate_record rec;
	int index = 99;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	plan_ok(keys, 1, T0, &base_policy, &plan);
	assert_int_equal(keystate_rotate(keys, 1, JWS_ALG_ES256, 1, T0, &base_policy, &index, &rec), 0);
	assert_int_equal(index, -1);
	assert_rec(&rec, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0, T0, 0);
	/* Written, the new key takes over at once. */
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	key_set(&keys[1], "t", JWS_ALG_ES256, rec.state, rec.created, rec.activate_at, rec.retired_at);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
	assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 10, T0 - 10, T0);

	/* In the very second the signer took over (same created too, and a
	 * larger kid that would lose the tie): the new key activates a second
	 * later and then wins. */
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0, T0, 0);
	plan_ok(keys, 1, T0, &base_policy, &plan);
	assert_int_equal(keystate_rotate(keys, 1, JWS_ALG_ES256, 1, T0, &base_policy, &index, &rec), 0);
	assert_rec(&rec, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0, T0 + 1, 0);
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0, T0, 0);
	key_set(&keys[1], "t", JWS_ALG_ES256, rec.state, rec.created, rec.activate_at, rec.retired_at);
	plan_ok(keys, 2, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
	assert_rec(&keys[0].effective, KEYSTATE_RETIRED, JWS_ALG_ES256, T0, T0, T0 + 1);
	plan_ok(keys, 2, T0 + 1, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 1);
}

static void test_rotate_with_next_key(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;
	struct keystate_record rec, untouched;
	int index = 99;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	key_set(&keys[1], "n2", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 5, T0 + 97, 0);
	key_set(&keys[2], "n1", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 8, T0 + 94, 0);
	plan_ok(keys, 3, T0, &base_policy, &plan);
	assert_int_equal(keys[1].actions, KEYSTATE_DESTROY);

	/* Not immediate: a rotation is under way. */
	memset(&rec, 0x77, sizeof(rec));
	untouched = rec;
	assert_int_equal(keystate_rotate(keys, 3, JWS_ALG_ES256, 0, T0, &base_policy, &index, &rec), -EEXIST);
	assert_int_equal(index, 2);
	assert_memory_equal(&rec, &untouched, sizeof(rec));

	/* Immediate: the kept next key signs now. */
	index = 99;
	assert_int_equal(keystate_rotate(keys, 3, JWS_ALG_ES256, 1, T0, &base_policy, &index, &rec), 0);
	assert_int_equal(index, 2);
	assert_rec(&rec, KEYSTATE_ACTIVE, JWS_ALG_ES256, T0 - 8, T0, 0);

	assert_int_equal(keystate_rotate(keys, 3, JWS_ALG_INVALID, 1, T0, &base_policy, &index, &rec), -EINVAL);
}

static void test_retire(void **state)
{
	struct keystate_key keys[4];
	struct keystate_plan plan;
	struct keystate_record rec, untouched;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	key_set(&keys[1], "n", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 5, T0 + 97, 0);
	key_set(&keys[2], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 90, T0 - 80, T0 - 70);
	/* Stored active, but s took over after it: retired by time. */
	key_set(&keys[3], "o", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 60, T0 - 50, 0);
	plan_ok(keys, 4, T0, &base_policy, &plan);
	assert_int_equal(plan.signer[JWS_ALG_ES256], 0);

	memset(&rec, 0x77, sizeof(rec));
	untouched = rec;
	assert_int_equal(keystate_retire(keys, 4, 0, T0, &rec), -EBUSY);
	assert_int_equal(keystate_retire(keys, 4, 2, T0, &rec), -EALREADY);
	assert_int_equal(keystate_retire(keys, 4, 3, T0, &rec), -EALREADY);
	assert_int_equal(keystate_retire(keys, 4, 4, T0, &rec), -EINVAL);
	assert_memory_equal(&rec, &untouched, sizeof(rec));

	assert_int_equal(keystate_retire(keys, 4, 1, T0, &rec), 0);
	assert_rec(&rec, KEYSTATE_RETIRED, JWS_ALG_ES256, T0 - 5, T0, T0);
}

static void test_check_destroy(void **state)
{
	struct keystate_key keys[3];
	struct keystate_plan plan;
	int64_t safe_at = 12345;
	const int64_t retired_at = T0 - 100;

	(void)state;
	key_set(&keys[0], "s", JWS_ALG_ES256, KEYSTATE_ACTIVE, T0 - 10, T0 - 10, 0);
	key_set(&keys[1], "n", JWS_ALG_ES256, KEYSTATE_NEXT, T0 - 5, T0 + 97, 0);
	key_set(&keys[2], "r", JWS_ALG_ES256, KEYSTATE_RETIRED, T0 - 900, T0 - 800, retired_at);
	plan_ok(keys, 3, T0, &base_policy, &plan);

	/* A next key never signed. */
	assert_int_equal(keystate_check_destroy(keys, 3, 1, T0, &base_policy, 0, &safe_at), 0);
	assert_int_equal(safe_at, 12345);
	/* Retired: one second before the boundary, then at it. */
	assert_int_equal(keystate_check_destroy(keys, 3, 2, retired_at + 359, &base_policy, 0, &safe_at), -EBUSY);
	assert_int_equal(safe_at, retired_at + 360);
	assert_int_equal(keystate_check_destroy(keys, 3, 2, retired_at + 360, &base_policy, 0, &safe_at), 0);
	/* The signer never, unless forced. */
	safe_at = 12345;
	assert_int_equal(keystate_check_destroy(keys, 3, 0, T0, &base_policy, 0, &safe_at), -EBUSY);
	assert_int_equal(safe_at, INT64_MAX);
	assert_int_equal(keystate_check_destroy(keys, 3, 0, T0, &base_policy, 1, &safe_at), 0);
	assert_int_equal(keystate_check_destroy(keys, 3, 2, T0, &base_policy, 1, &safe_at), 0);
	assert_int_equal(keystate_check_destroy(keys, 3, 3, T0, &base_policy, 1, &safe_at), -EINVAL);
}

/* ---- random scenarios ------------------------------------------------- */

static uint32_t rnd(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static int64_t rnd_range(uint32_t *s, int64_t lo, int64_t hi)
{
	return lo + (int64_t)(rnd(s) % (uint32_t)(hi - lo + 1));
}

static const enum jws_alg rnd_algs[] = { JWS_ALG_ES256, JWS_ALG_RS256, JWS_ALG_HS256 };

static void random_key(uint32_t *s, struct keystate_key *k, int64_t now)
{
	char kid[16];
	enum jws_alg alg = rnd_algs[rnd(s) % 3];
	enum keystate_state st;
	int64_t created, activate, retired;

	/* Few kids, so that some collide. */
	snprintf(kid, sizeof(kid), "k%u", (unsigned)(rnd(s) % 12));
	if (rnd(s) % 8 == 0) {
		key_unrecorded(k, kid, alg);
		return;
	}
	st = (enum keystate_state)(1 + rnd(s) % 3);
	created = now - rnd_range(s, 0, 3000);
	/* activate_at may lie in the future even for an active key (a
	 * writer with a faster clock); now itself is the boundary that
	 * matters most. */
	activate = rnd(s) % 4 == 0 ? now : created + rnd_range(s, 0, 3000);
	retired = st == KEYSTATE_RETIRED ? activate + rnd_range(s, 0, 1000) : 0;
	key_set(k, kid, alg, st, created, activate, retired);
	k->record_count = 1 + rnd(s) % 2;
}

static void check_plan_invariants(const struct keystate_key *keys, size_t n, int64_t now,
				  const struct keystate_policy *policy, const struct keystate_plan *plan)
{
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		size_t signers = 0;

		for (size_t i = 0; i < n; i++)
			if (keys[i].alg == (enum jws_alg)a && keys[i].signer)
				signers++;
		assert_true(signers <= 1);
		assert_int_equal(signers, plan->signer[a] >= 0 ? 1 : 0);
		if (plan->signer[a] >= 0) {
			const struct keystate_key *s = &keys[plan->signer[a]];

			assert_int_equal(s->alg, a);
			assert_int_equal(s->signer, 1);
			assert_int_equal(s->effective.state, KEYSTATE_ACTIVE);
			assert_int_equal(s->actions & KEYSTATE_DESTROY, 0);
		}
		if (contains(policy->algorithms, policy->algorithm_count, (enum jws_alg)a))
			assert_true((plan->signer[a] >= 0) !=
				    contains(plan->generate_active, plan->generate_active_count, (enum jws_alg)a));
		else
			assert_false(contains(plan->generate_active, plan->generate_active_count, (enum jws_alg)a));
		if (contains(plan->generate_next, plan->generate_next_count, (enum jws_alg)a)) {
			assert_true(contains(policy->algorithms, policy->algorithm_count, (enum jws_alg)a));
			assert_true(plan->signer[a] >= 0);
		}
	}
	for (size_t i = 0; i < n; i++) {
		const struct keystate_key *k = &keys[i];
		struct keystate_record back;
		char buf[KEYSTATE_RECORD_MAX + 1];
		size_t len;

		/* One signing key per algorithm, every other one is not. */
		if (!k->signer)
			assert_int_not_equal(k->effective.state, KEYSTATE_ACTIVE);
		/* Every effective record can be written and read back. */
		assert_int_equal(keystate_format(&k->effective, buf, sizeof(buf), &len), 0);
		assert_int_equal(keystate_parse(buf, len, &back), 0);
		assert_memory_equal(&back, &k->effective, sizeof(back));
		/* Forward only: the effective state never goes back. */
		if (k->has_record)
			assert_true(k->effective.state >= k->stored.state);
		/* Retired by time: at the activation of a key of its
		 * algorithm that took over. */
		if (k->has_record && k->stored.state != KEYSTATE_RETIRED && k->effective.state == KEYSTATE_RETIRED) {
			int found = 0;

			for (size_t j = 0; j < n; j++)
				if (j != i && keys[j].alg == k->alg && keys[j].effective.state != KEYSTATE_NEXT &&
				    keys[j].effective.activate_at == k->effective.retired_at &&
				    keys[j].effective.activate_at >= k->effective.activate_at)
					found = 1;
			assert_true(found);
		}
		assert_true((k->actions & ~(unsigned)(KEYSTATE_WRITE | KEYSTATE_DESTROY)) == 0);
		assert_false((k->actions & KEYSTATE_WRITE) && (k->actions & KEYSTATE_DESTROY));
	}
	assert_true(plan->next_change > now);
	assert_true(plan->jwks_max_age >= 0 && plan->jwks_max_age <= KEYSTATE_JWKS_MAX_AGE);
}

static void test_random_scenarios(void **state)
{
	uint32_t seed = 0x9e3779b9u;
	unsigned writes = 0, destroys = 0, promotions = 0;

	(void)state;
	for (int round = 0; round < 3000; round++) {
		struct keystate_key keys[MAXK], again[MAXK];
		struct keystate_plan plan, plan2;
		enum jws_alg configured[3];
		struct keystate_policy policy = base_policy;
		int64_t now = T0 + rnd_range(&seed, 0, 100);
		size_t n = (size_t)rnd_range(&seed, 0, 8), m = 0;
		int map[MAXK];

		policy.algorithm_count = 0;
		for (size_t a = 0; a < 3; a++)
			if (rnd(&seed) % 2)
				configured[policy.algorithm_count++] = rnd_algs[a];
		policy.algorithms = configured;
		policy.rotation_period = rnd(&seed) % 3 ? rnd_range(&seed, 200, 3000) : 0;
		policy.publish_ahead = rnd_range(&seed, 0, 200);
		for (size_t i = 0; i < n; i++)
			random_key(&seed, &keys[i], now);

		plan_ok(keys, n, now, &policy, &plan);
		check_plan_invariants(keys, n, now, &policy, &plan);

		/* Carry the plan out: destroyed keys go, written keys hold
		 * their effective record alone.  Planning again at the same
		 * moment must find nothing left to do. */
		for (size_t i = 0; i < n; i++) {
			map[i] = -1;
			if (keys[i].actions & KEYSTATE_DESTROY) {
				destroys++;
				continue;
			}
			again[m] = keys[i];
			if (keys[i].actions & KEYSTATE_WRITE) {
				writes++;
				again[m].has_record = 1;
				again[m].stored = keys[i].effective;
				again[m].record_count = 1;
				if (keys[i].has_record && keys[i].stored.state == KEYSTATE_NEXT &&
				    keys[i].effective.activate_at != keys[i].stored.activate_at)
					promotions++;
			}
			map[i] = (int)m++;
		}
		plan_ok(again, m, now, &policy, &plan2);
		check_plan_invariants(again, m, now, &policy, &plan2);
		for (size_t i = 0; i < n; i++) {
			if (map[i] < 0)
				continue;
			assert_int_equal(again[map[i]].actions, 0);
			assert_memory_equal(&again[map[i]].effective, &keys[i].effective, sizeof(keys[i].effective));
			assert_int_equal(again[map[i]].signer, keys[i].signer);
		}
		for (int a = 0; a < JWS_ALG_COUNT; a++)
			assert_int_equal(plan2.signer[a], plan.signer[a] < 0 ? -1 : map[plan.signer[a]]);
		assert_int_equal(plan2.generate_active_count, plan.generate_active_count);
		assert_memory_equal(plan2.generate_active, plan.generate_active,
				    plan.generate_active_count * sizeof(plan.generate_active[0]));
		assert_int_equal(plan2.generate_next_count, plan.generate_next_count);
		assert_memory_equal(plan2.generate_next, plan.generate_next,
				    plan.generate_next_count * sizeof(plan.generate_next[0]));
		assert_int_equal(plan2.next_change, plan.next_change);
		assert_int_equal(plan2.jwks_max_age, plan.jwks_max_age);
	}
	/* The scenarios reached the interesting paths. */
	assert_true(writes > 500);
	assert_true(destroys > 100);
	assert_true(promotions > 10);
}

/* Merging in any order gives the same record (alg aside): commutative,
 * associative, idempotent, never going back. */
static void test_random_merge(void **state)
{
	uint32_t seed = 12345;

	(void)state;
	for (int round = 0; round < 5000; round++) {
		struct keystate_record r[3], ab, ba, ab_c, a_bc, bc, aa;

		for (size_t i = 0; i < 3; i++) {
			enum keystate_state st = (enum keystate_state)(1 + rnd(&seed) % 3);
			int64_t created = rnd_range(&seed, 0, 4);
			int64_t act = created + rnd_range(&seed, 0, 4);

			r[i] = rec_of(st, JWS_ALG_ES256, created, act,
				      st == KEYSTATE_RETIRED ? act + rnd_range(&seed, 0, 4) : 0);
		}
		keystate_merge(&r[0], &r[1], &ab);
		keystate_merge(&r[1], &r[0], &ba);
		assert_memory_equal(&ab, &ba, sizeof(ab));
		keystate_merge(&ab, &r[2], &ab_c);
		keystate_merge(&r[1], &r[2], &bc);
		keystate_merge(&r[0], &bc, &a_bc);
		assert_memory_equal(&ab_c, &a_bc, sizeof(ab_c));
		keystate_merge(&r[0], &r[0], &aa);
		assert_memory_equal(&aa, &r[0], sizeof(aa));
		assert_true(ab.state >= r[0].state && ab.state >= r[1].state);
		assert_true(!memcmp(&ab, &r[0], sizeof(ab)) || !memcmp(&ab, &r[1], sizeof(ab)));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_format_exact),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_parse_refuses_hostile),
		cmocka_unit_test(test_parse_refuses_bytes),
		cmocka_unit_test(test_format_refuses_invalid),
		cmocka_unit_test(test_format_buffer_size),
		cmocka_unit_test(test_merge_furthest_state),
		cmocka_unit_test(test_merge_same_state_ties),
		cmocka_unit_test(test_merge_alg_and_alias),
		cmocka_unit_test(test_plan_bootstrap),
		cmocka_unit_test(test_plan_bootstrap_retired_only),
		cmocka_unit_test(test_plan_next_before_activation),
		cmocka_unit_test(test_plan_next_at_and_after_activation),
		cmocka_unit_test(test_plan_two_actives_later_wins),
		cmocka_unit_test(test_plan_two_actives_tie),
		cmocka_unit_test(test_plan_chain_of_three),
		cmocka_unit_test(test_plan_destroy_boundary),
		cmocka_unit_test(test_plan_rotation_boundary),
		cmocka_unit_test(test_plan_no_rotation_with_next_key),
		cmocka_unit_test(test_plan_no_rotation_when_manual),
		cmocka_unit_test(test_plan_surplus_next_keys),
		cmocka_unit_test(test_plan_promotes_next_without_signer),
		cmocka_unit_test(test_plan_migration),
		cmocka_unit_test(test_plan_migration_mixed),
		cmocka_unit_test(test_plan_unconfigured_alg),
		cmocka_unit_test(test_plan_write_only_when_needed),
		cmocka_unit_test(test_plan_next_change_and_max_age),
		cmocka_unit_test(test_plan_saturates),
		cmocka_unit_test(test_plan_refuses_invalid),
		cmocka_unit_test(test_rotate_generates_next),
		cmocka_unit_test(test_rotate_immediate_generates_active),
		cmocka_unit_test(test_rotate_with_next_key),
		cmocka_unit_test(test_retire),
		cmocka_unit_test(test_check_destroy),
		cmocka_unit_test(test_random_scenarios),
		cmocka_unit_test(test_random_merge),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
