/* ratelimit: SPEC §3 rate_limit — a token bucket per caller, refilled at
 * `rate` tokens a second up to a burst of `rate`, shared by every worker (a
 * bucket per worker would multiply the limit by the worker count).
 *
 * Who the caller is (api.c decides, this module only sees a key): the org
 * and sub of a caller token that verified and that the registry does not
 * refuse, else the client's address.  A request whose bearer token does
 * not verify (or is revoked) is charged to its address, so a flood of bad
 * tokens is limited too; and an address already over its limit is refused
 * before its bearer token is verified (ratelimit_peek).
 *
 * Bounded: at most max_keys buckets.  A bucket that has refilled to its
 * burst holds no state worth keeping and is the first to go when the table
 * is full; when every bucket is partly drained, the least recently used one
 * is dropped (its owner starts again with a full bucket — a limit that
 * errs towards admitting, never towards refusing a caller it has never
 * seen).  A lookup is one hash and one short chain walk under one of
 * RATELIMIT_STRIPES locks.
 *
 * The clock is the caller's (CLOCK_MONOTONIC nanoseconds), so unit tests
 * drive it. */
#ifndef HSMJWT_RATELIMIT_H
#define HSMJWT_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#define RATELIMIT_MAX_KEYS 100000
#define RATELIMIT_MAX_KEY  512   /* longer keys are cut (an org and a sub are bounded well below) */

struct ratelimit;

int ratelimit_new(size_t max_keys, struct ratelimit **ret_rl);
void ratelimit_free(struct ratelimit *rl);

/* Takes one token from key's bucket at now_ns.  rate: the config's
 * rate_limit as it is now (a reload may change it; a bucket holding more
 * than the new burst is cut to it); 0 admits everything and touches
 * nothing.  0: admitted; -EBUSY: refused, and *ret_retry_after (may be
 * NULL) is the whole seconds until a token is back, at least 1 (RFC 9110
 * §10.2.3 Retry-After). */
int ratelimit_take(struct ratelimit *rl, unsigned rate, const char *key, size_t key_len, int64_t now_ns,
		   unsigned *ret_retry_after);

/* Whether key's bucket holds a token at now_ns, without taking it, adding
 * a bucket or counting a use: a request that takes only after expensive
 * work (verifying a bearer token, in the token for HS256) first asks
 * whether its address is over the limit already.  A key without a bucket
 * has a full one.  0, or -EBUSY and *ret_retry_after (may be NULL) as
 * ratelimit_take would give it; rate 0: 0. */
int ratelimit_peek(struct ratelimit *rl, unsigned rate, const char *key, size_t key_len, int64_t now_ns,
		   unsigned *ret_retry_after);

/* Buckets held now (tests, metrics). */
size_t ratelimit_count(struct ratelimit *rl);

#endif
