/* ratelimit: the token bucket of SPEC §3 rate_limit with an injected clock —
 * a burst of exactly `rate`, then -EBUSY with a Retry-After of whole
 * seconds that is never 0; refill over time in exact integer steps (100 s of
 * 1 ms steps admit exactly burst + 100 * rate); a lower rate after a reload
 * cutting a fuller bucket; rate 0 admitting everything and keeping nothing;
 * the max_keys bound evicting a refilled bucket before the least recently
 * used one, and the least recently used one when none has refilled; keys
 * compared by length and bytes and cut at RATELIMIT_MAX_KEY; 4 threads on
 * one key admitting exactly the burst, and 4 threads adding keys to a
 * small table never holding more than max_keys; ratelimit_peek admitting
 * what a take would without taking, adding a bucket or counting a use.
 * Then the keys api.c charges: an address (an IPv6 client by its /64) and
 * an org + sub. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/ratelimit.h"

#include "../../src/api_internal.h"

#define SEC 1000000000LL
#define MS 1000000LL
/* An arbitrary monotonic origin, far from 0 so no arithmetic leans on it. */
#define T0 (123 * SEC + 456)
#define THREADS 4
#define THREAD_TAKES 1000

static struct ratelimit *new_limit(size_t max_keys)
{
	struct ratelimit *rl = NULL;

	assert_int_equal(ratelimit_new(max_keys, &rl), 0);
	assert_non_null(rl);
	return rl;
}

static int take(struct ratelimit *rl, unsigned rate, const char *key, int64_t now)
{
	return ratelimit_take(rl, rate, key, strlen(key), now, NULL);
}

/* How many of n takes at now are admitted. */
static unsigned admitted(struct ratelimit *rl, unsigned rate, const char *key, int64_t now, unsigned n)
{
	unsigned ok = 0;

	for (unsigned i = 0; i < n; i++)
		ok += take(rl, rate, key, now) == 0;
	return ok;
}

static void test_new_refuses_bad_bounds(void **state)
{
	struct ratelimit *rl = (struct ratelimit *)&state;   /* a sentinel: must stay untouched */

	assert_int_equal(ratelimit_new(0, &rl), -EINVAL);
	assert_ptr_equal(rl, (struct ratelimit *)&state);
	assert_int_equal(ratelimit_new(RATELIMIT_MAX_KEYS + 1, &rl), -EINVAL);
	assert_ptr_equal(rl, (struct ratelimit *)&state);
	rl = new_limit(RATELIMIT_MAX_KEYS);
	assert_int_equal(ratelimit_count(rl), 0);
	ratelimit_free(rl);
	ratelimit_free(NULL);
}

static void test_burst_then_busy(void **state)
{
	struct ratelimit *rl = new_limit(16);
	unsigned retry = 0;

	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(ratelimit_take(rl, 5, "a:1", 3, T0, &retry), 0);
	assert_int_equal(retry, 0);   /* untouched while admitted */
	assert_int_equal(ratelimit_take(rl, 5, "a:1", 3, T0, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	/* Refused takes cost nothing: still refused, and one token back after
	 * exactly 1/5 s. */
	assert_int_equal(ratelimit_take(rl, 5, "a:1", 3, T0 + 200 * MS - 1, NULL), -EBUSY);
	assert_int_equal(take(rl, 5, "a:1", T0 + 200 * MS), 0);
	assert_int_equal(take(rl, 5, "a:1", T0 + 200 * MS), -EBUSY);
	assert_int_equal(ratelimit_count(rl), 1);
	ratelimit_free(rl);
}

static void test_retry_after_rounds_up_never_zero(void **state)
{
	struct ratelimit *rl = new_limit(16);
	unsigned retry = 0;

	assert_int_equal(take(rl, 1, "k", T0), 0);
	assert_int_equal(ratelimit_take(rl, 1, "k", 1, T0, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	/* Half a second left: rounded up to 1. */
	retry = 0;
	assert_int_equal(ratelimit_take(rl, 1, "k", 1, T0 + SEC / 2, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	/* One nanosecond left: still 1, never 0. */
	retry = 0;
	assert_int_equal(ratelimit_take(rl, 1, "k", 1, T0 + SEC - 1, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	assert_int_equal(take(rl, 1, "k", T0 + SEC), 0);
	/* A high rate: the next token is microseconds away, still 1 s. */
	assert_int_equal(admitted(rl, 1000000, "fast", T0, 1000001), 1000000);
	retry = 0;
	assert_int_equal(ratelimit_take(rl, 1000000, "fast", 4, T0, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	ratelimit_free(rl);
}

static void test_refill_is_exact(void **state)
{
	struct ratelimit *rl = new_limit(16);
	unsigned ok = 0;

	/* rate 4: a token every 250 ms, never more than the burst. */
	assert_int_equal(admitted(rl, 4, "k", T0, 10), 4);
	assert_int_equal(admitted(rl, 4, "k", T0 + 250 * MS, 10), 1);
	assert_int_equal(admitted(rl, 4, "k", T0 + 750 * MS, 10), 2);
	assert_int_equal(admitted(rl, 4, "k", T0 + 3600 * SEC, 10), 4);
	/* rate 3: a third of a second is 333333333.3 ns — one nanosecond
	 * short of it leaves the token incomplete, the next completes it. */
	assert_int_equal(admitted(rl, 3, "third", T0, 3), 3);
	assert_int_equal(take(rl, 3, "third", T0 + 333333333), -EBUSY);
	assert_int_equal(take(rl, 3, "third", T0 + 333333334), 0);
	/* No drift: 100 s looked at every millisecond, a take each time,
	 * admit the burst plus exactly 100 * rate. */
	for (int64_t t = 0; t <= 100 * SEC; t += MS)
		ok += take(rl, 7, "drift", T0 + t) == 0;
	assert_int_equal(ok, 7 + 100 * 7);
	ratelimit_free(rl);
}

static void test_lower_rate_cuts_fuller_bucket(void **state)
{
	struct ratelimit *rl = new_limit(16);

	/* rate 10, 2 taken: 8 left; the reload to 4 cuts them to 4. */
	assert_int_equal(admitted(rl, 10, "k", T0, 2), 2);
	assert_int_equal(admitted(rl, 4, "k", T0, 10), 4);
	/* The new rate refills too: 1 token in 250 ms. */
	assert_int_equal(admitted(rl, 4, "k", T0 + 250 * MS, 10), 1);
	/* A higher rate raises the burst, not what the bucket holds now... */
	assert_int_equal(admitted(rl, 20, "k", T0 + 250 * MS, 10), 0);
	/* ...and refills at its own pace: 20 a second, up to 20. */
	assert_int_equal(admitted(rl, 20, "k", T0 + 500 * MS, 30), 5);
	assert_int_equal(admitted(rl, 20, "k", T0 + 10 * SEC, 30), 20);
	ratelimit_free(rl);
}

static void test_rate_zero_admits_all(void **state)
{
	struct ratelimit *rl = new_limit(4);
	char key[32];

	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "a:%d", i % 10);
		assert_int_equal(take(rl, 0, key, T0), 0);
	}
	assert_int_equal(ratelimit_count(rl), 0);
	/* A bucket drained at rate 5 is not looked at with the limit off. */
	assert_int_equal(admitted(rl, 5, "k", T0, 6), 5);
	assert_int_equal(admitted(rl, 0, "k", T0, 100), 100);
	assert_int_equal(take(rl, 5, "k", T0), -EBUSY);
	ratelimit_free(rl);
}

static void test_keys_independent(void **state)
{
	struct ratelimit *rl = new_limit(64);
	char long_a[RATELIMIT_MAX_KEY + 10], long_b[RATELIMIT_MAX_KEY + 10];

	assert_int_equal(admitted(rl, 3, "a:1", T0, 5), 3);
	assert_int_equal(admitted(rl, 3, "a:2", T0, 5), 3);
	/* By length and bytes: a prefix, an embedded NUL, a case change. */
	assert_int_equal(admitted(rl, 3, "a:", T0, 5), 3);
	assert_int_equal(ratelimit_take(rl, 3, "a:1\0", 4, T0, NULL), 0);
	assert_int_equal(ratelimit_take(rl, 3, "a:1\0x", 5, T0, NULL), 0);
	assert_int_equal(ratelimit_take(rl, 3, "a:1\0", 4, T0, NULL), 0);
	assert_int_equal(ratelimit_take(rl, 3, "A:1", 3, T0, NULL), 0);
	assert_int_equal(ratelimit_count(rl), 6);
	/* Cut at RATELIMIT_MAX_KEY: keys that differ only beyond it share a
	 * bucket. */
	memset(long_a, 'x', sizeof(long_a));
	memcpy(long_b, long_a, sizeof(long_b));
	long_b[sizeof(long_b) - 1] = 'y';
	assert_int_equal(ratelimit_take(rl, 2, long_a, sizeof(long_a), T0, NULL), 0);
	assert_int_equal(ratelimit_take(rl, 2, long_b, sizeof(long_b), T0, NULL), 0);
	assert_int_equal(ratelimit_take(rl, 2, long_a, sizeof(long_a), T0, NULL), -EBUSY);
	assert_int_equal(ratelimit_count(rl), 7);
	ratelimit_free(rl);
}

static void test_bound_evicts_refilled_then_lru(void **state)
{
	/* Fewer keys than stripes: the eviction is the table's, not a
	 * stripe's. */
	struct ratelimit *rl = new_limit(3);

	/* rate 2: a token every 500 ms, an empty bucket full after 1 s. */
	assert_int_equal(admitted(rl, 2, "A", T0, 2), 2);              /* full at T0 + 1 s */
	assert_int_equal(admitted(rl, 2, "B", T0 + 100 * MS, 1), 1);   /* full at T0 + 600 ms */
	assert_int_equal(admitted(rl, 2, "C", T0 + 200 * MS, 2), 2);   /* full at T0 + 1.2 s */
	assert_int_equal(ratelimit_count(rl), 3);
	/* At 700 ms B has refilled, A (the least recently used) has not: D
	 * takes B's place, and A keeps what it spent — 1.4 tokens, one take. */
	assert_int_equal(admitted(rl, 2, "D", T0 + 700 * MS, 1), 1);
	assert_int_equal(ratelimit_count(rl), 3);
	assert_int_equal(admitted(rl, 2, "A", T0 + 700 * MS, 3), 1);
	/* C kept its state too: 1 token (1.0) at 700 ms. */
	assert_int_equal(admitted(rl, 2, "C", T0 + 700 * MS, 3), 1);
	assert_int_equal(ratelimit_count(rl), 3);
	/* At 750 ms none has refilled (D full at 1.2 s, A at 1.5, C at 1.7); D was
	 * used before A and C: E takes D's place.  D comes back with a full
	 * bucket (2 takes where the kept one had 1.1 tokens), taking the place
	 * of the least recently used then, A. */
	assert_int_equal(admitted(rl, 2, "E", T0 + 750 * MS, 1), 1);
	assert_int_equal(ratelimit_count(rl), 3);
	assert_int_equal(admitted(rl, 2, "D", T0 + 750 * MS, 3), 2);
	assert_int_equal(ratelimit_count(rl), 3);
	/* C is still there, with its 0.1 token: refused. */
	assert_int_equal(take(rl, 2, "C", T0 + 750 * MS), -EBUSY);
	/* A was evicted: a full bucket again. */
	assert_int_equal(admitted(rl, 2, "A", T0 + 750 * MS, 3), 2);
	assert_int_equal(ratelimit_count(rl), 3);
	ratelimit_free(rl);
}

static void test_bound_after_reload(void **state)
{
	/* Whether a bucket has refilled depends on the rate, which a reload
	 * changes under buckets already kept. */
	struct ratelimit *rl = new_limit(2);

	assert_int_equal(admitted(rl, 10, "Y", T0, 10), 10);              /* empty: full at +1 s at 10/s */
	assert_int_equal(admitted(rl, 10, "X", T0 + 100 * MS, 9), 9);     /* 1 left: full at +1 s at 10/s */
	/* Reloaded to 1/s: X's one token is the whole burst — refilled; Y
	 * is 1 s from full.  Z takes X's place though Y was used first. */
	assert_int_equal(admitted(rl, 1, "Z", T0 + 200 * MS, 1), 1);
	assert_int_equal(ratelimit_count(rl), 2);
	/* Y kept: 0.2 token at 200 ms, refused. */
	assert_int_equal(take(rl, 1, "Y", T0 + 200 * MS), -EBUSY);
	assert_int_equal(ratelimit_count(rl), 2);
	ratelimit_free(rl);
}

static int peek(struct ratelimit *rl, unsigned rate, const char *key, int64_t now)
{
	return ratelimit_peek(rl, rate, key, strlen(key), now, NULL);
}

static void test_peek_takes_nothing(void **state)
{
	struct ratelimit *rl = new_limit(16);
	unsigned retry = 0;

	/* A key never seen has a full bucket, and peeking adds none. */
	assert_int_equal(ratelimit_peek(rl, 3, "a:1", 3, T0, &retry), 0);
	assert_int_equal(retry, 0);
	assert_int_equal(ratelimit_count(rl), 0);
	/* Peeks at a bucket with tokens leave them all there. */
	assert_int_equal(take(rl, 3, "a:1", T0), 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(peek(rl, 3, "a:1", T0), 0);
	assert_int_equal(admitted(rl, 3, "a:1", T0, 10), 2);
	/* Empty: refused with the Retry-After a take would give. */
	assert_int_equal(ratelimit_peek(rl, 3, "a:1", 3, T0, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	/* The refill a peek sees is the take's, to the nanosecond, and it
	 * stays in the bucket: one take, not one per peek. */
	assert_int_equal(peek(rl, 3, "a:1", T0 + 333333333), -EBUSY);
	for (int i = 0; i < 10; i++)
		assert_int_equal(peek(rl, 3, "a:1", T0 + 333333334), 0);
	assert_int_equal(admitted(rl, 3, "a:1", T0 + 333333334, 10), 1);
	assert_int_equal(peek(rl, 3, "a:1", T0 + 333333334), -EBUSY);
	assert_int_equal(ratelimit_count(rl), 1);
	/* rate 0: never refused, nothing added. */
	assert_int_equal(peek(rl, 0, "a:1", T0), 0);
	assert_int_equal(peek(rl, 0, "a:2", T0), 0);
	assert_int_equal(ratelimit_count(rl), 1);
	ratelimit_free(rl);
}

static void test_peek_retry_after_and_rate(void **state)
{
	struct ratelimit *rl = new_limit(16);
	unsigned retry = 0;

	assert_int_equal(take(rl, 1, "k", T0), 0);
	/* A second short of a token, then a nanosecond short: 1 both times. */
	assert_int_equal(ratelimit_peek(rl, 1, "k", 1, T0, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	retry = 0;
	assert_int_equal(ratelimit_peek(rl, 1, "k", 1, T0 + SEC - 1, &retry), -EBUSY);
	assert_int_equal(retry, 1);
	assert_int_equal(peek(rl, 1, "k", T0 + SEC), 0);
	/* rate 10 with 8 left, reloaded to 2: peek and take see the bucket
	 * cut to the new burst. */
	assert_int_equal(admitted(rl, 10, "r", T0, 2), 2);
	assert_int_equal(peek(rl, 2, "r", T0), 0);
	assert_int_equal(admitted(rl, 2, "r", T0, 10), 2);
	assert_int_equal(peek(rl, 2, "r", T0), -EBUSY);
	/* Keys are cut at RATELIMIT_MAX_KEY as take cuts them. */
	{
		char long_a[RATELIMIT_MAX_KEY + 10], long_b[RATELIMIT_MAX_KEY + 10];
		memset(long_a, 'x', sizeof(long_a));
		memcpy(long_b, long_a, sizeof(long_b));
		long_b[sizeof(long_b) - 1] = 'y';
		assert_int_equal(ratelimit_take(rl, 1, long_a, sizeof(long_a), T0, NULL), 0);
		assert_int_equal(ratelimit_peek(rl, 1, long_b, sizeof(long_b), T0, NULL), -EBUSY);
	}
	ratelimit_free(rl);
}

static void test_peek_is_no_use(void **state)
{
	/* A peek is no use of the bucket: the least recently used one is still
	 * the one least recently taken from. */
	struct ratelimit *rl = new_limit(2);

	assert_int_equal(admitted(rl, 2, "A", T0, 2), 2);              /* full at T0 + 1 s */
	assert_int_equal(admitted(rl, 2, "B", T0 + 100 * MS, 2), 2);   /* full at T0 + 1.1 s */
	assert_int_equal(peek(rl, 2, "A", T0 + 200 * MS), -EBUSY);
	/* Neither has refilled at 300 ms: C takes A's place, the peek
	 * notwithstanding. */
	assert_int_equal(admitted(rl, 2, "C", T0 + 300 * MS, 1), 1);
	assert_int_equal(ratelimit_count(rl), 2);
	assert_int_equal(take(rl, 2, "B", T0 + 300 * MS), -EBUSY);     /* kept: 0.4 token */
	assert_int_equal(peek(rl, 2, "A", T0 + 300 * MS), 0);          /* gone: full */
	ratelimit_free(rl);
}

struct hammer {
	struct ratelimit *rl;
	pthread_barrier_t *start;
	int64_t now;
	unsigned admitted;
	unsigned id;
	int distinct;          /* each take a key of its own */
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	char key[32];

	pthread_barrier_wait(h->start);
	for (unsigned i = 0; i < THREAD_TAKES; i++) {
		if (h->distinct)
			snprintf(key, sizeof(key), "a:%u.%u", h->id, i);
		else
			snprintf(key, sizeof(key), "s:org");
		h->admitted += take(h->rl, 50, key, h->now) == 0;
	}
	return NULL;
}

/* THREADS threads, THREAD_TAKES takes each; the sum admitted. */
static unsigned hammer(struct ratelimit *rl, int64_t now, int distinct)
{
	pthread_t threads[THREADS];
	struct hammer h[THREADS];
	pthread_barrier_t start;
	unsigned sum = 0;

	assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
	for (unsigned i = 0; i < THREADS; i++) {
		h[i] = (struct hammer){ rl, &start, now, 0, i, distinct };
		assert_int_equal(pthread_create(&threads[i], NULL, hammer_main, &h[i]), 0);
	}
	for (unsigned i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(threads[i], NULL), 0);
		sum += h[i].admitted;
	}
	pthread_barrier_destroy(&start);
	return sum;
}

static void test_threads_one_key(void **state)
{
	struct ratelimit *rl = new_limit(16);

	/* 4000 takes at one instant: exactly the burst. */
	assert_int_equal(hammer(rl, T0, 0), 50);
	/* 100 ms later, 5 more; a second later, the burst again. */
	assert_int_equal(hammer(rl, T0 + 100 * MS, 0), 5);
	assert_int_equal(hammer(rl, T0 + 2 * SEC, 0), 50);
	assert_int_equal(ratelimit_count(rl), 1);
	ratelimit_free(rl);
}

static void test_threads_bound(void **state)
{
	struct ratelimit *rl = new_limit(8);

	/* 4000 new keys, each admitted (a new key's bucket is full), the
	 * table never above its bound; a take of a kept key still works. */
	assert_int_equal(hammer(rl, T0, 1), THREADS * THREAD_TAKES);
	assert_int_equal(ratelimit_count(rl), 8);
	assert_int_equal(admitted(rl, 50, "s:org", T0, 60), 50);
	assert_int_equal(ratelimit_count(rl), 8);
	ratelimit_free(rl);
}

/* ---- the keys api.c charges ----------------------------------------------- */

static const char *address_key(const char *peer)
{
	static char buf[96];
	size_t len = 0;

	assert_int_equal(api_rate_key_address(peer, buf, sizeof(buf), &len), 0);
	assert_int_equal(len, strlen(buf));
	return buf;
}

static void test_address_keys(void **state)
{
	char small[8];
	size_t len = 99;

	assert_string_equal(address_key("127.0.0.1"), "a:127.0.0.1");
	/* One /64 is one client: a host holds the whole of it. */
	assert_string_equal(address_key("2001:db8:1:2:3:4:5:6"), "a:2001:db8:1:2::/64");
	assert_string_equal(address_key("2001:db8:1:2:ffff::1"), "a:2001:db8:1:2::/64");
	assert_string_equal(address_key("2001:db8:1:3::1"), "a:2001:db8:1:3::/64");
	/* A v4 client on a dual-stack socket is its v4 address. */
	assert_string_equal(address_key("::ffff:192.0.2.1"), "a:192.0.2.1");
	/* Not an address (a unix socket's name, say): itself. */
	assert_string_equal(address_key("unix:/run/x"), "a:unix:/run/x");
	assert_int_equal(api_rate_key_address("127.0.0.1", small, sizeof(small), &len), -ENOBUFS);
	assert_int_equal(len, 99);
}

static void test_caller_keys(void **state)
{
	char a[64], b[64];
	size_t a_len = 0, b_len = 0;

	assert_int_equal(api_rate_key_caller("acme", "alice", a, sizeof(a), &a_len), 0);
	assert_int_equal(a_len, 2 + 4 + 1 + 5);
	assert_memory_equal(a, "s:acme\0alice", a_len);
	/* Where the org ends is part of the key. */
	assert_int_equal(api_rate_key_caller("acm", "ealice", b, sizeof(b), &b_len), 0);
	assert_int_equal(b_len, a_len);
	assert_true(memcmp(a, b, a_len) != 0);
	/* No org: still its own key, and never an address's. */
	assert_int_equal(api_rate_key_caller("", "127.0.0.1", b, sizeof(b), &b_len), 0);
	assert_memory_equal(b, "s:\0" "127.0.0.1", b_len);
	assert_int_equal(api_rate_key_caller("acme", "alice", a, 8, &a_len), -ENOBUFS);
	assert_int_equal(a_len, 12);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_refuses_bad_bounds),
		cmocka_unit_test(test_burst_then_busy),
		cmocka_unit_test(test_retry_after_rounds_up_never_zero),
		cmocka_unit_test(test_refill_is_exact),
		cmocka_unit_test(test_lower_rate_cuts_fuller_bucket),
		cmocka_unit_test(test_rate_zero_admits_all),
		cmocka_unit_test(test_keys_independent),
		cmocka_unit_test(test_bound_evicts_refilled_then_lru),
		cmocka_unit_test(test_bound_after_reload),
		cmocka_unit_test(test_peek_takes_nothing),
		cmocka_unit_test(test_peek_retry_after_and_rate),
		cmocka_unit_test(test_peek_is_no_use),
		cmocka_unit_test(test_threads_one_key),
		cmocka_unit_test(test_threads_bound),
		cmocka_unit_test(test_address_keys),
		cmocka_unit_test(test_caller_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
