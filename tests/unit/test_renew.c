/* renew: the schedule of auto-renewal (renew_next_due), entries and their
 * limits, subscribers and what they are told, backoff after failures,
 * dropping on expiry and on a parent the registry no longer holds active,
 * and the request of a child made from its parent's claims — driven with
 * an injected clock, without the renewal thread or a token. */
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
#include "hsmjwt/config.h"
#include "hsmjwt/registry.h"
#include "hsmjwt/renew.h"

#define T0 INT64_C(1800000000)
#define RENEW_BEFORE 4
#define CHILD_TTL 8

static struct config cfg;

/* What a subscriber was told. */
struct heard {
	int children;
	int ends;
	char last_jti[ISSUE_JTI_LEN + 1];
	char last_token[64];
	int64_t last_exp;
	char reason[32];
};

static void record(void *arg, const struct renew_event *ev)
{
	struct heard *h = arg;

	if (ev->kind == RENEW_EVENT_END) {
		h->ends++;
		snprintf(h->reason, sizeof(h->reason), "%s", ev->reason);
		return;
	}
	h->children++;
	snprintf(h->last_jti, sizeof(h->last_jti), "%s", ev->jti);
	snprintf(h->last_token, sizeof(h->last_token), "%s", ev->token);
	h->last_exp = ev->exp;
}

static int setup(void **state)
{
	if (config_init_defaults(&cfg) < 0)
		return -1;
	cfg.child_ttl = CHILD_TTL;
	cfg.renew_before = RENEW_BEFORE;
	return 0;
}

static int teardown(void **state)
{
	config_free(&cfg);
	return 0;
}

/* A parent's claims as this service signs them. */
static json_t *parent_claims(const char *jti, const char *org, int64_t exp)
{
	json_t *c = json_pack("{s:s, s:s, s:[s,s], s:I, s:I, s:I, s:s, s:s, s:b, s:s, s:s, s:i, s:[s]}", "iss",
			      "http://issuer", "sub", "alice", "aud", "api", "billing", "iat", (json_int_t)T0, "nbf",
			      (json_int_t)T0, "exp", (json_int_t)exp, "jti", jti, "token_type", "parent", "auto_renew", 1,
			      "client_id", "frontend", "scope", "read write", "tier", 3, "roles", "admin");

	assert_non_null(c);
	if (org != NULL)
		assert_int_equal(json_object_set_new(c, "org", json_string(org)), 0);
	return c;
}

/* Adds parent jti (exp parent_exp) whose first child lives [iat, iat+CHILD_TTL). */
static int add(struct renew *renew, const char *jti, int64_t parent_exp, const char *child_jti, int64_t iat)
{
	json_t *claims = parent_claims(jti, NULL, parent_exp);
	struct renew_parent parent = { jti, "", claims, parent_exp, CHILD_TTL };
	struct renew_child child = { "child.token.one", child_jti, iat, iat + CHILD_TTL };
	int r = renew_add(renew, &parent, &child, iat);

	json_decref(claims);
	return r;
}

/* A distinct 22-character jti for n. */
static const char *jti_of(unsigned n, char buf[ISSUE_JTI_LEN + 1])
{
	snprintf(buf, ISSUE_JTI_LEN + 1, "P%021u", n);
	return buf;
}

static void test_next_due(void **state)
{
	/* renew_before seconds before exp. */
	assert_int_equal(renew_next_due(T0, T0 + 900, T0 + 86400, 120), T0 + 780);
	assert_int_equal(renew_next_due(T0, T0 + CHILD_TTL, T0 + 86400, RENEW_BEFORE), T0 + 4);
	/* renew_before 0: at exp. */
	assert_int_equal(renew_next_due(T0, T0 + 900, T0 + 86400, 0), T0 + 900);
	/* A child no longer than renew_before: at half its life. */
	assert_int_equal(renew_next_due(T0, T0 + 60, T0 + 86400, 120), T0 + 30);
	assert_int_equal(renew_next_due(T0, T0 + 120, T0 + 86400, 120), T0 + 60);
	assert_int_equal(renew_next_due(T0, T0 + 121, T0 + 86400, 120), T0 + 1);
	/* Never before a second after its iat. */
	assert_int_equal(renew_next_due(T0, T0 + 1, T0 + 86400, 120), T0 + 1);
	/* A child reaching the parent's exp has no successor: the parent's exp. */
	assert_int_equal(renew_next_due(T0, T0 + 900, T0 + 900, 120), T0 + 900);
	assert_int_equal(renew_next_due(T0, T0 + 900, T0 + 500, 120), T0 + 500);
	/* Just short of the parent: renewed as usual. */
	assert_int_equal(renew_next_due(T0, T0 + 900, T0 + 901, 120), T0 + 780);
}

/* A job comes when the child is due, carrying what the child is made of. */
static void test_job_when_due(void **state)
{
	struct renew *renew = NULL;
	struct renew_job job;
	char jti[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, jti), T0 + 3600, "C1", T0), 0);
	assert_int_equal(renew_count(renew), 1);
	assert_int_equal(renew_next_job(renew, T0, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + RENEW_BEFORE - 1, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + CHILD_TTL - RENEW_BEFORE, &job), 0);
	assert_string_equal(job.parent_jti, jti);
	assert_string_equal(job.org, "");
	assert_int_equal(job.parent_exp, T0 + 3600);
	assert_int_equal(job.child_ttl, CHILD_TTL);
	assert_string_equal(json_string_value(json_object_get(job.claims, "sub")), "alice");
	assert_string_equal(json_string_value(json_object_get(job.claims, "jti")), jti);
	renew_job_clear(&job);
	assert_null(job.claims);
	renew_free(renew);
}

/* The most overdue entry first. */
static void test_jobs_in_order(void **state)
{
	struct renew *renew = NULL;
	struct renew_job job;
	char a[ISSUE_JTI_LEN + 1], b[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, a), T0 + 3600, "CA", T0 + 2), 0);
	assert_int_equal(add(renew, jti_of(2, b), T0 + 3600, "CB", T0), 0);
	assert_int_equal(renew_next_job(renew, T0 + 10, &job), 0);
	assert_string_equal(job.parent_jti, b);
	renew_job_clear(&job);
	renew_free(renew);
}

/* A renewed child becomes the newest, subscribers hear of it, and the next
 * renewal follows the new child. */
static void test_job_done_publishes(void **state)
{
	struct renew *renew = NULL;
	struct renew_sub *sub = NULL;
	struct renew_latest latest = { 0 };
	struct renew_job job;
	struct heard h = { 0 };
	char jti[ISSUE_JTI_LEN + 1];
	const struct renew_child second = { "child.token.two", "C2", T0 + 4, T0 + 4 + CHILD_TTL };

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, jti), T0 + 3600, "C1", T0), 0);
	/* The newest child at once. */
	assert_int_equal(renew_subscribe(renew, jti, record, &h, &sub), 0);
	assert_int_equal(h.children, 1);
	assert_string_equal(h.last_jti, "C1");
	assert_string_equal(h.last_token, "child.token.one");
	assert_int_equal(h.last_exp, T0 + CHILD_TTL);
	assert_int_equal(renew_next_job(renew, T0 + 4, &job), 0);
	renew_job_done(renew, &job, 0, &second, T0 + 4);
	renew_job_clear(&job);
	assert_int_equal(h.children, 2);
	assert_string_equal(h.last_jti, "C2");
	assert_string_equal(h.last_token, "child.token.two");
	assert_int_equal(h.last_exp, T0 + 4 + CHILD_TTL);
	assert_int_equal(renew_latest(renew, jti, &latest), 0);
	assert_string_equal(latest.token, "child.token.two");
	assert_string_equal(latest.jti, "C2");
	assert_int_equal(latest.exp, T0 + 4 + CHILD_TTL);
	renew_latest_clear(&latest);
	assert_null(latest.token);
	assert_int_equal(renew_next_job(renew, T0 + 7, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + 8, &job), 0);
	renew_job_clear(&job);
	assert_int_equal(h.ends, 0);
	/* Nothing is heard after unsubscribing. */
	renew_unsubscribe(renew, sub);
	renew_remove(renew, jti, "revoked");
	assert_int_equal(h.ends, 0);
	assert_int_equal(renew_latest(renew, jti, &latest), -ENOENT);
	renew_free(renew);
}

/* A failed renewal keeps the current child and backs off 1, 2, 4 ... 16 s;
 * a success resets the backoff. */
static void test_failure_backs_off(void **state)
{
	static const int64_t waits[] = { 1, 2, 4, 8, 16, 16 };
	struct renew *renew = NULL;
	struct renew_latest latest = { 0 };
	struct renew_job job;
	char jti[ISSUE_JTI_LEN + 1];
	int64_t now = T0 + 4;
	const struct renew_child next = { "child.token.next", "CN", T0 + 60, T0 + 60 + CHILD_TTL };

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, jti), T0 + 3600, "C1", T0), 0);
	for (size_t i = 0; i < sizeof(waits) / sizeof(waits[0]); i++) {
		assert_int_equal(renew_next_job(renew, now, &job), 0);
		renew_job_done(renew, &job, HSM_E_DEVICE, NULL, now);
		renew_job_clear(&job);
		assert_int_equal(renew_next_job(renew, now + waits[i] - 1, &job), -ENOENT);
		now += waits[i];
	}
	assert_int_equal(renew_latest(renew, jti, &latest), 0);
	assert_string_equal(latest.jti, "C1");
	renew_latest_clear(&latest);
	assert_int_equal(renew_next_job(renew, T0 + 60, &job), 0);
	renew_job_done(renew, &job, 0, &next, T0 + 60);
	renew_job_clear(&job);
	/* Due again at the new child's renew time, and a failure then waits
	 * the shortest backoff again. */
	assert_int_equal(renew_next_job(renew, T0 + 63, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + 64, &job), 0);
	renew_job_done(renew, &job, -EIO, NULL, T0 + 64);
	renew_job_clear(&job);
	assert_int_equal(renew_next_job(renew, T0 + 64, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + 65, &job), 0);
	renew_job_clear(&job);
	renew_free(renew);
}

/* An entry goes when its parent expires; its subscribers hear why. */
static void test_sweep_drops_expired(void **state)
{
	struct renew *renew = NULL;
	struct renew_sub *sub = NULL;
	struct renew_latest latest = { 0 };
	struct renew_job job;
	struct heard h = { 0 };
	char a[ISSUE_JTI_LEN + 1], b[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, a), T0 + 10, "CA", T0), 0);
	assert_int_equal(add(renew, jti_of(2, b), T0 + 3600, "CB", T0), 0);
	assert_int_equal(renew_subscribe(renew, a, record, &h, &sub), 0);
	assert_int_equal(renew_sweep(renew, T0 + 9), 0);
	assert_int_equal(h.ends, 0);
	assert_int_equal(renew_sweep(renew, T0 + 10), 1);
	assert_int_equal(h.ends, 1);
	assert_string_equal(h.reason, "expired");
	assert_int_equal(renew_count(renew), 1);
	assert_int_equal(renew_latest(renew, a, &latest), -ENOENT);
	assert_int_equal(renew_latest(renew, b, &latest), 0);
	renew_latest_clear(&latest);
	assert_int_equal(renew_next_job(renew, T0 + 10, &job), 0);
	assert_string_equal(job.parent_jti, b);
	renew_job_clear(&job);
	/* A subscription whose entry went is ended all the same. */
	renew_unsubscribe(renew, sub);
	assert_int_equal(h.ends, 1);
	renew_free(renew);
}

/* A child capped at its parent's exp is not renewed: the entry waits for
 * its sweep. */
static void test_capped_child_not_renewed(void **state)
{
	struct renew *renew = NULL;
	struct renew_job job;
	json_t *claims = parent_claims("PARENTCAPPEDAAAAAAAAAA", NULL, T0 + 6);
	struct renew_parent parent = { "PARENTCAPPEDAAAAAAAAAA", "", claims, T0 + 6, CHILD_TTL };
	struct renew_child child = { "child.token.capped", "CC", T0, T0 + 6 };

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(renew_add(renew, &parent, &child, T0), 0);
	assert_int_equal(renew_next_job(renew, T0 + 5, &job), -ENOENT);
	assert_int_equal(renew_next_job(renew, T0 + 6, &job), -ENOENT);
	assert_int_equal(renew_sweep(renew, T0 + 6), 1);
	assert_int_equal(renew_count(renew), 0);
	json_decref(claims);
	renew_free(renew);
}

static void test_add_refuses(void **state)
{
	struct renew *renew = NULL;
	json_t *claims = parent_claims("PARENTREFUSEDAAAAAAAAA", NULL, T0 + 100);
	struct renew_parent parent = { "PARENTREFUSEDAAAAAAAAA", "", claims, T0 + 100, CHILD_TTL };
	struct renew_child child = { "child.token", "C1", T0, T0 + CHILD_TTL };

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(renew_add(renew, &parent, &child, T0 + 100), -ETIME);
	parent.jti = "PARENT-JTI-LONGER-THAN-22";
	assert_int_equal(renew_add(renew, &parent, &child, T0), -EINVAL);
	parent.jti = "PARENTREFUSEDAAAAAAAAA";
	child.token = "";
	assert_int_equal(renew_add(renew, &parent, &child, T0), -EINVAL);
	child.token = "child.token";
	assert_int_equal(renew_add(renew, &parent, &child, T0), 0);
	/* The entry there is kept as it is. */
	child.jti = "C2";
	assert_int_equal(renew_add(renew, &parent, &child, T0), -EEXIST);
	assert_int_equal(renew_count(renew), 1);
	json_decref(claims);
	renew_free(renew);
}

/* RENEW_MAX_PARENTS entries, then -ENOSPC until one goes. */
static void test_parent_limit(void **state)
{
	struct renew *renew = NULL;
	char jti[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	for (unsigned i = 0; i < RENEW_MAX_PARENTS; i++)
		assert_int_equal(add(renew, jti_of(i, jti), T0 + 3600, "C", T0), 0);
	assert_int_equal(renew_count(renew), RENEW_MAX_PARENTS);
	assert_int_equal(renew_room(renew), -ENOSPC);
	assert_int_equal(add(renew, jti_of(RENEW_MAX_PARENTS, jti), T0 + 3600, "C", T0), -ENOSPC);
	renew_remove(renew, jti_of(17, jti), "revoked");
	assert_int_equal(renew_room(renew), 0);
	assert_int_equal(add(renew, jti_of(RENEW_MAX_PARENTS, jti), T0 + 3600, "C", T0), 0);
	renew_free(renew);
}

/* RENEW_MAX_SUBSCRIBERS_PER_PARENT per parent (-EMLINK), RENEW_MAX_SUBSCRIBERS
 * in all (-ENOSPC); an unsubscription makes room. */
static void test_subscriber_limits(void **state)
{
	enum { PARENTS = RENEW_MAX_SUBSCRIBERS / RENEW_MAX_SUBSCRIBERS_PER_PARENT + 1 };
	static struct renew_sub *subs[PARENTS][RENEW_MAX_SUBSCRIBERS_PER_PARENT];
	struct renew *renew = NULL;
	struct renew_sub *extra = NULL;
	struct heard h = { 0 };
	char jti[ISSUE_JTI_LEN + 1];
	size_t total = 0;

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(renew_subscribe(renew, jti_of(0, jti), record, &h, &extra), -ENOENT);
	for (unsigned p = 0; p < PARENTS; p++)
		assert_int_equal(add(renew, jti_of(p, jti), T0 + 3600, "C", T0), 0);
	for (unsigned s = 0; s < RENEW_MAX_SUBSCRIBERS_PER_PARENT; s++, total++)
		assert_int_equal(renew_subscribe(renew, jti_of(0, jti), record, &h, &subs[0][s]), 0);
	assert_int_equal(renew_subscribe(renew, jti_of(0, jti), record, &h, &extra), -EMLINK);
	for (unsigned p = 1; p < PARENTS && total < RENEW_MAX_SUBSCRIBERS; p++)
		for (unsigned s = 0; s < RENEW_MAX_SUBSCRIBERS_PER_PARENT && total < RENEW_MAX_SUBSCRIBERS; s++, total++)
			assert_int_equal(renew_subscribe(renew, jti_of(p, jti), record, &h, &subs[p][s]), 0);
	assert_int_equal(total, RENEW_MAX_SUBSCRIBERS);
	assert_int_equal(h.children, RENEW_MAX_SUBSCRIBERS);
	/* The last parent has room of its own, the service has none. */
	assert_int_equal(renew_subscribe(renew, jti_of(PARENTS - 1, jti), record, &h, &extra), -ENOSPC);
	renew_unsubscribe(renew, subs[1][0]);
	subs[1][0] = NULL;
	assert_int_equal(renew_subscribe(renew, jti_of(PARENTS - 1, jti), record, &h, &extra), 0);
	renew_unsubscribe(renew, extra);
	for (unsigned p = 0; p < PARENTS; p++)
		for (unsigned s = 0; s < RENEW_MAX_SUBSCRIBERS_PER_PARENT; s++)
			renew_unsubscribe(renew, subs[p][s]);
	renew_free(renew);
}

/* renew_remove tells every subscriber, once. */
static void test_remove_ends_subscriptions(void **state)
{
	struct renew *renew = NULL;
	struct renew_sub *one = NULL, *two = NULL;
	struct heard h1 = { 0 }, h2 = { 0 };
	char jti[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, jti), T0 + 3600, "C1", T0), 0);
	assert_int_equal(renew_subscribe(renew, jti, record, &h1, &one), 0);
	assert_int_equal(renew_subscribe(renew, jti, record, &h2, &two), 0);
	renew_remove(renew, jti, "revoked");
	renew_remove(renew, jti, "revoked");
	assert_int_equal(h1.ends, 1);
	assert_int_equal(h2.ends, 1);
	assert_string_equal(h1.reason, "revoked");
	assert_int_equal(renew_count(renew), 0);
	renew_unsubscribe(renew, one);
	renew_unsubscribe(renew, two);
	renew_free(renew);
}

/* After renew_stop nothing new is taken; what is there can still be read. */
static void test_stop_refuses_new(void **state)
{
	struct renew *renew = NULL;
	struct renew_sub *sub = NULL;
	struct renew_latest latest = { 0 };
	struct heard h = { 0 };
	char a[ISSUE_JTI_LEN + 1], b[ISSUE_JTI_LEN + 1];

	assert_int_equal(renew_new(&cfg, NULL, &renew), 0);
	assert_int_equal(add(renew, jti_of(1, a), T0 + 3600, "C1", T0), 0);
	renew_stop(renew);
	assert_int_equal(renew_room(renew), -ECANCELED);
	assert_int_equal(add(renew, jti_of(2, b), T0 + 3600, "C2", T0), -ECANCELED);
	assert_int_equal(renew_subscribe(renew, a, record, &h, &sub), -ECANCELED);
	assert_int_equal(renew_latest(renew, a, &latest), 0);
	renew_latest_clear(&latest);
	renew_free(renew);
}

/* Registers a parent record durably. */
static void register_parent(struct registry *reg, const char *jti)
{
	struct registry_record rec;
	struct registry_wait w;

	memset(&rec, 0, sizeof(rec));
	snprintf(rec.jti, sizeof(rec.jti), "%s", jti);
	rec.type = REGISTRY_TYPE_PARENT;
	rec.status = REGISTRY_ACTIVE;
	snprintf(rec.subject, sizeof(rec.subject), "alice");
	rec.iat = T0;
	rec.exp = T0 + 3600;
	rec.status_idx = REGISTRY_NO_INDEX;
	registry_wait_init(&w);
	assert_int_equal(registry_add(reg, &rec, registry_wait_done, &w), 0);
	assert_int_equal(registry_wait(&w), 0);
}

static void set_status(struct registry *reg, const char *jti, enum registry_status status)
{
	struct registry_wait w;

	registry_wait_init(&w);
	assert_int_equal(registry_set_status(reg, jti, NULL, status, T0, NULL, registry_wait_done, &w, NULL), 0);
	assert_int_equal(registry_wait(&w), 0);
}

/* With subscribers, a parent suspended, revoked or unknown to the registry
 * ends its entry at the next look (every RENEW_CHECK_SECONDS); without
 * subscribers the sweep leaves the registry alone (the renewal looks). */
static void test_sweep_follows_the_registry(void **state)
{
	struct registry *reg = NULL;
	struct renew *renew = NULL;
	struct renew_sub *s_susp = NULL, *s_rev = NULL, *s_unknown = NULL, *s_ok = NULL;
	struct heard h_susp = { 0 }, h_rev = { 0 }, h_unknown = { 0 }, h_ok = { 0 };
	struct renew_latest latest = { 0 };
	char susp[ISSUE_JTI_LEN + 1], rev[ISSUE_JTI_LEN + 1], unknown[ISSUE_JTI_LEN + 1], ok[ISSUE_JTI_LEN + 1],
		quiet[ISSUE_JTI_LEN + 1];

	assert_int_equal(registry_open(fixture_tmpdir, REGISTRY_FSYNC_ALWAYS, 5, &reg), 0);
	assert_int_equal(renew_new(&cfg, reg, &renew), 0);
	jti_of(1, susp);
	jti_of(2, rev);
	jti_of(3, unknown);
	jti_of(4, ok);
	jti_of(5, quiet);
	register_parent(reg, susp);
	register_parent(reg, rev);
	register_parent(reg, ok);
	register_parent(reg, quiet);
	assert_int_equal(add(renew, susp, T0 + 3600, "C1", T0), 0);
	assert_int_equal(add(renew, rev, T0 + 3600, "C2", T0), 0);
	assert_int_equal(add(renew, unknown, T0 + 3600, "C3", T0), 0);
	assert_int_equal(add(renew, ok, T0 + 3600, "C4", T0), 0);
	assert_int_equal(add(renew, quiet, T0 + 3600, "C5", T0), 0);
	assert_int_equal(renew_subscribe(renew, susp, record, &h_susp, &s_susp), 0);
	assert_int_equal(renew_subscribe(renew, rev, record, &h_rev, &s_rev), 0);
	assert_int_equal(renew_subscribe(renew, unknown, record, &h_unknown, &s_unknown), 0);
	assert_int_equal(renew_subscribe(renew, ok, record, &h_ok, &s_ok), 0);
	/* The parent unknown to the registry goes at the first look. */
	assert_int_equal(renew_sweep(renew, T0 + 1), 1);
	assert_int_equal(h_unknown.ends, 1);
	assert_string_equal(h_unknown.reason, "revoked");
	set_status(reg, susp, REGISTRY_SUSPENDED);
	set_status(reg, rev, REGISTRY_REVOKED);
	set_status(reg, quiet, REGISTRY_REVOKED);
	/* Looked at T0+1: the next look is a second later. */
	assert_int_equal(renew_sweep(renew, T0 + 1), 0);
	assert_int_equal(renew_sweep(renew, T0 + 1 + RENEW_CHECK_SECONDS), 2);
	assert_int_equal(h_susp.ends, 1);
	assert_string_equal(h_susp.reason, "suspended");
	assert_int_equal(h_rev.ends, 1);
	assert_string_equal(h_rev.reason, "revoked");
	assert_int_equal(h_ok.ends, 0);
	/* No subscriber: still there until its renewal looks. */
	assert_int_equal(renew_latest(renew, quiet, &latest), 0);
	renew_latest_clear(&latest);
	assert_int_equal(renew_count(renew), 2);
	renew_unsubscribe(renew, s_susp);
	renew_unsubscribe(renew, s_rev);
	renew_unsubscribe(renew, s_unknown);
	renew_unsubscribe(renew, s_ok);
	renew_free(renew);
	registry_close(reg);
}

/* A child's request from its parent's claims: what it inherits, what it
 * does not (roles, the parent's own registered claims), its lifetime capped
 * at the parent's exp. */
static void test_child_request(void **state)
{
	json_t *claims = parent_claims("PARENTCLAIMSAAAAAAAAAA", "acme", T0 + 100);
	struct issue_request req;
	json_t *custom = NULL;

	assert_int_equal(renew_child_request(claims, 60, T0, &req, &custom), 0);
	assert_int_equal(req.type, ISSUE_CHILD);
	assert_string_equal(req.subject, "alice");
	assert_true(json_equal((json_t *)req.audience, json_object_get(claims, "aud")));
	assert_string_equal(req.scope, "read write");
	assert_string_equal(req.client_id, "frontend");
	assert_string_equal(req.org, "acme");
	assert_string_equal(req.parent_jti, "PARENTCLAIMSAAAAAAAAAA");
	assert_int_equal(req.ttl, 60);
	assert_int_equal(req.auto_renew, 0);
	assert_int_equal(req.alg, JWS_ALG_INVALID);
	assert_ptr_equal(req.claims, custom);
	assert_int_equal(json_object_size(custom), 1);
	assert_int_equal(json_integer_value(json_object_get(custom, "tier")), 3);
	json_decref(custom);
	/* Capped at the parent's exp. */
	assert_int_equal(renew_child_request(claims, 900, T0 + 40, &req, &custom), 0);
	assert_int_equal(req.ttl, 60);
	json_decref(custom);
	assert_int_equal(renew_child_request(claims, 900, T0 + 99, &req, &custom), 0);
	assert_int_equal(req.ttl, 1);
	json_decref(custom);
	custom = NULL;
	assert_int_equal(renew_child_request(claims, 900, T0 + 100, &req, &custom), -ETIME);
	assert_null(custom);
	/* Only a parent has children. */
	json_object_set_new(claims, "token_type", json_string("access"));
	assert_int_equal(renew_child_request(claims, 60, T0, &req, &custom), -EINVAL);
	json_object_set_new(claims, "token_type", json_string("parent"));
	json_object_del(claims, "sub");
	assert_int_equal(renew_child_request(claims, 60, T0, &req, &custom), -EINVAL);
	assert_null(custom);
	json_decref(claims);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_next_due),
		cmocka_unit_test(test_job_when_due),
		cmocka_unit_test(test_jobs_in_order),
		cmocka_unit_test(test_job_done_publishes),
		cmocka_unit_test(test_failure_backs_off),
		cmocka_unit_test(test_sweep_drops_expired),
		cmocka_unit_test(test_capped_child_not_renewed),
		cmocka_unit_test(test_add_refuses),
		cmocka_unit_test(test_parent_limit),
		cmocka_unit_test(test_subscriber_limits),
		cmocka_unit_test(test_remove_ends_subscriptions),
		cmocka_unit_test(test_stop_refuses_new),
		cmocka_unit_test_setup_teardown(test_sweep_follows_the_registry, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test(test_child_request),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
