#include "hsmjwt/ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hsmjwt/log.h"

/* A power of two: the low bits of a key's hash pick its stripe. */
#define RATELIMIT_STRIPES 16
/* One token in a bucket's level, and one second in nanoseconds: with the
 * level counted in nanotokens, `rate` tokens a second refill exactly `rate`
 * units a nanosecond, so every refill is an integer product and nothing is
 * rounded away, however often a bucket is looked at. */
#define RATELIMIT_UNIT 1000000000ull

struct ratelimit_bucket {
	struct ratelimit_bucket *chain;            /* the hash chain */
	struct ratelimit_bucket *newer, *older;    /* the stripe's use order */
	size_t heap_at;                            /* index in the stripe's heap */
	uint64_t hash;
	uint64_t used;                             /* the table's use counter at the last take */
	int64_t last_ns;                           /* when level was last brought up to date */
	uint64_t level;                            /* nanotokens, at most rate * RATELIMIT_UNIT */
	int64_t full_ns;                           /* when level reaches the burst, at the stripe's heap_rate */
	size_t key_len;
	char key[];
};

struct ratelimit_stripe {
	pthread_mutex_t lock;
	struct ratelimit_bucket **chains;
	size_t chain_mask;
	struct ratelimit_bucket *newest, *oldest;
	/* A min-heap on full_ns: its top tells at once whether any bucket of
	 * the stripe has refilled.  full_ns depends on the rate, so a stripe
	 * that sees a new rate (a reload) recomputes and re-heaps them all
	 * once. */
	struct ratelimit_bucket **heap;
	size_t heap_len, heap_cap;
	unsigned heap_rate;
};

struct ratelimit {
	size_t max_keys;
	/* Buckets held.  Changed only under the lock of the stripe that
	 * gains or loses one, so with every stripe locked it is exact. */
	atomic_size_t count;
	/* Orders takes across stripes, for the least recently used. */
	atomic_uint_least64_t used;
	uint64_t sip_k0, sip_k1;
	struct ratelimit_stripe stripes[RATELIMIT_STRIPES];
};

/* ---- SipHash-2-4 (Aumasson, Bernstein 2012): keyed, so that nobody who
 * picks keys (addresses, subs) can aim them all at one chain. */

static uint64_t ratelimit_rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

static void ratelimit_sipround(uint64_t v[4])
{
	v[0] += v[1]; v[1] = ratelimit_rotl(v[1], 13); v[1] ^= v[0]; v[0] = ratelimit_rotl(v[0], 32);
	v[2] += v[3]; v[3] = ratelimit_rotl(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = ratelimit_rotl(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = ratelimit_rotl(v[1], 17); v[1] ^= v[2]; v[2] = ratelimit_rotl(v[2], 32);
}

static uint64_t ratelimit_siphash(uint64_t k0, uint64_t k1, const unsigned char *p, size_t len)
{
	uint64_t v[4] = { k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull, k0 ^ 0x6c7967656e657261ull,
			  k1 ^ 0x7465646279746573ull };
	uint64_t m, last = (uint64_t)len << 56;
	size_t i, tail = len & 7;

	for (i = 0; i + 8 <= len; i += 8) {
		m = 0;
		for (int j = 7; j >= 0; j--)
			m = (m << 8) | p[i + (size_t)j];
		v[3] ^= m;
		ratelimit_sipround(v);
		ratelimit_sipround(v);
		v[0] ^= m;
	}
	for (size_t j = 0; j < tail; j++)
		last |= (uint64_t)p[i + j] << (8 * j);
	v[3] ^= last;
	ratelimit_sipround(v);
	ratelimit_sipround(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	for (int r = 0; r < 4; r++)
		ratelimit_sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- one stripe's heap ------------------------------------------------------ */

static void ratelimit_heap_set(struct ratelimit_stripe *s, size_t at, struct ratelimit_bucket *b)
{
	s->heap[at] = b;
	b->heap_at = at;
}

static void ratelimit_heap_up(struct ratelimit_stripe *s, size_t at)
{
	struct ratelimit_bucket *b = s->heap[at];

	while (at > 0 && s->heap[(at - 1) / 2]->full_ns > b->full_ns) {
		ratelimit_heap_set(s, at, s->heap[(at - 1) / 2]);
		at = (at - 1) / 2;
	}
	ratelimit_heap_set(s, at, b);
}

static void ratelimit_heap_down(struct ratelimit_stripe *s, size_t at)
{
	struct ratelimit_bucket *b = s->heap[at];

	for (;;) {
		size_t child = 2 * at + 1;
		if (child >= s->heap_len)
			break;
		if (child + 1 < s->heap_len && s->heap[child + 1]->full_ns < s->heap[child]->full_ns)
			child++;
		if (s->heap[child]->full_ns >= b->full_ns)
			break;
		ratelimit_heap_set(s, at, s->heap[child]);
		at = child;
	}
	ratelimit_heap_set(s, at, b);
}

/* b's full_ns changed: up or down to its place. */
static void ratelimit_heap_fix(struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	ratelimit_heap_up(s, b->heap_at);
	ratelimit_heap_down(s, b->heap_at);
}

static int ratelimit_heap_push(struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	if (s->heap_len == s->heap_cap) {
		size_t cap = s->heap_cap ? 2 * s->heap_cap : 16;
		struct ratelimit_bucket **heap = realloc(s->heap, cap * sizeof(*heap));
		if (heap == NULL)
			return -ENOMEM;
		s->heap = heap;
		s->heap_cap = cap;
	}
	ratelimit_heap_set(s, s->heap_len++, b);
	ratelimit_heap_up(s, b->heap_at);
	return 0;
}

static void ratelimit_heap_remove(struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	size_t at = b->heap_at;
	struct ratelimit_bucket *last = s->heap[--s->heap_len];

	if (last == b)
		return;
	ratelimit_heap_set(s, at, last);
	ratelimit_heap_fix(s, last);
}

/* ---- a bucket --------------------------------------------------------------- */

static uint64_t ratelimit_cap(unsigned rate)
{
	return (uint64_t)rate * RATELIMIT_UNIT;
}

/* When b's level, as it stands at b->last_ns, reaches the burst at rate
 * (a level above the burst, from a higher rate, is cut to it). */
static int64_t ratelimit_full_ns(const struct ratelimit_bucket *b, unsigned rate)
{
	uint64_t cap = ratelimit_cap(rate), level = b->level < cap ? b->level : cap;

	/* At most RATELIMIT_UNIT ns: an empty bucket refills in one second. */
	return b->last_ns + (int64_t)((cap - level + rate - 1) / rate);
}

/* Brings the stripe's heap to rate, once per change of rate. */
static void ratelimit_stripe_rate(struct ratelimit_stripe *s, unsigned rate)
{
	if (s->heap_rate == rate)
		return;
	s->heap_rate = rate;
	for (size_t i = 0; i < s->heap_len; i++)
		s->heap[i]->full_ns = ratelimit_full_ns(s->heap[i], rate);
	for (size_t i = s->heap_len / 2; i-- > 0;)
		ratelimit_heap_down(s, i);
}

static struct ratelimit_bucket **ratelimit_chain(struct ratelimit_stripe *s, uint64_t hash)
{
	/* The stripe took the low bits. */
	return &s->chains[(hash / RATELIMIT_STRIPES) & s->chain_mask];
}

static struct ratelimit_bucket *ratelimit_find(struct ratelimit_stripe *s, uint64_t hash, const char *key,
					       size_t key_len)
{
	for (struct ratelimit_bucket *b = *ratelimit_chain(s, hash); b != NULL; b = b->chain)
		if (b->hash == hash && b->key_len == key_len && memcmp(b->key, key, key_len) == 0)
			return b;
	return NULL;
}

static void ratelimit_use_unlink(struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	if (b->newer != NULL)
		b->newer->older = b->older;
	else
		s->newest = b->older;
	if (b->older != NULL)
		b->older->newer = b->newer;
	else
		s->oldest = b->newer;
	b->newer = b->older = NULL;
}

static void ratelimit_use_front(struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	b->older = s->newest;
	b->newer = NULL;
	if (s->newest != NULL)
		s->newest->newer = b;
	else
		s->oldest = b;
	s->newest = b;
}

/* Links a new bucket (full, as of now_ns) into its stripe, in a place
 * already counted; -ENOMEM when the heap cannot grow (b is then not
 * linked). */
static int ratelimit_link(struct ratelimit_stripe *s, struct ratelimit_bucket *b, unsigned rate, int64_t now_ns)
{
	struct ratelimit_bucket **chain = ratelimit_chain(s, b->hash);

	b->level = ratelimit_cap(rate);
	b->last_ns = now_ns;
	b->full_ns = now_ns;
	if (ratelimit_heap_push(s, b) < 0)
		return -ENOMEM;
	b->chain = *chain;
	*chain = b;
	ratelimit_use_front(s, b);
	return 0;
}

/* Counts one more bucket if the table has room for it. */
static int ratelimit_reserve(struct ratelimit *rl)
{
	size_t n = atomic_load(&rl->count);

	do {
		if (n >= rl->max_keys)
			return 0;
	} while (!atomic_compare_exchange_weak(&rl->count, &n, n + 1));
	return 1;
}

static void ratelimit_unlink(struct ratelimit *rl, struct ratelimit_stripe *s, struct ratelimit_bucket *b)
{
	struct ratelimit_bucket **p = ratelimit_chain(s, b->hash);

	while (*p != b)
		p = &(*p)->chain;
	*p = b->chain;
	ratelimit_use_unlink(s, b);
	ratelimit_heap_remove(s, b);
	atomic_fetch_sub(&rl->count, 1);
	free(b);
}

/* b's level at now_ns and rate, b unchanged. */
static uint64_t ratelimit_level_at(const struct ratelimit_bucket *b, unsigned rate, int64_t now_ns)
{
	uint64_t cap = ratelimit_cap(rate);
	/* A reload to a lower rate: what the bucket holds beyond the new
	 * burst goes. */
	uint64_t level = b->level > cap ? cap : b->level;

	if (now_ns > b->last_ns) {
		uint64_t elapsed = (uint64_t)(now_ns - b->last_ns);
		/* An empty bucket is full after one second: capping the
		 * elapsed time there keeps the product within 64 bits. */
		uint64_t gain = elapsed >= RATELIMIT_UNIT ? cap : elapsed * rate;
		level = cap - level <= gain ? cap : level + gain;
	}
	return level;
}

/* The Retry-After of a level short of one token: the nanoseconds until it
 * reaches one, in whole seconds rounded up; never 0, which would invite a
 * retry at once. */
static unsigned ratelimit_retry_after(uint64_t level, unsigned rate)
{
	uint64_t wait_ns = (RATELIMIT_UNIT - level + rate - 1) / rate;
	uint64_t seconds = (wait_ns + RATELIMIT_UNIT - 1) / RATELIMIT_UNIT;

	return seconds == 0 ? 1 : (unsigned)seconds;
}

/* The token bucket itself, under its stripe's lock. */
static int ratelimit_bucket_take(struct ratelimit *rl, struct ratelimit_stripe *s, struct ratelimit_bucket *b,
				 unsigned rate, int64_t now_ns, unsigned *ret_retry_after)
{
	int r = 0;

	b->level = ratelimit_level_at(b, rate, now_ns);
	if (now_ns > b->last_ns)
		b->last_ns = now_ns;
	if (b->level >= RATELIMIT_UNIT) {
		b->level -= RATELIMIT_UNIT;
	} else {
		if (ret_retry_after != NULL)
			*ret_retry_after = ratelimit_retry_after(b->level, rate);
		r = -EBUSY;
	}
	b->full_ns = ratelimit_full_ns(b, rate);
	ratelimit_heap_fix(s, b);
	b->used = atomic_fetch_add(&rl->used, 1);
	ratelimit_use_unlink(s, b);
	ratelimit_use_front(s, b);
	return r;
}

/* The bucket the table gives up for a new one: of the refilled ones, the
 * one refilled the longest; when none has, the least recently used. */
static struct ratelimit_bucket *ratelimit_victim(struct ratelimit *rl, int64_t now_ns,
						 struct ratelimit_stripe **ret_stripe)
{
	struct ratelimit_bucket *victim = NULL;

	for (size_t i = 0; i < RATELIMIT_STRIPES; i++) {
		struct ratelimit_stripe *t = &rl->stripes[i];
		struct ratelimit_bucket *top = t->heap_len > 0 ? t->heap[0] : NULL;
		if (top != NULL && top->full_ns <= now_ns && (victim == NULL || top->full_ns < victim->full_ns)) {
			victim = top;
			*ret_stripe = t;
		}
	}
	if (victim != NULL)
		return victim;
	for (size_t i = 0; i < RATELIMIT_STRIPES; i++) {
		struct ratelimit_stripe *t = &rl->stripes[i];
		if (t->oldest != NULL && (victim == NULL || t->oldest->used < victim->used)) {
			victim = t->oldest;
			*ret_stripe = t;
		}
	}
	return victim;
}

/* Adds fresh (a key not found in s) and takes from it; s is locked, and
 * so, when the table is full, is every stripe.  fresh is freed when it
 * cannot be added, and the request admitted: the limit errs towards
 * admitting. */
static int ratelimit_take_fresh(struct ratelimit *rl, struct ratelimit_stripe *s, struct ratelimit_bucket *fresh,
				unsigned rate, int64_t now_ns, unsigned *ret_retry_after)
{
	if (ratelimit_link(s, fresh, rate, now_ns) < 0) {
		atomic_fetch_sub(&rl->count, 1);
		free(fresh);
		log_limited(LOG_LEVEL_WARN, "\"rate limit table cannot grow: request admitted unlimited\"");
		return 0;
	}
	return ratelimit_bucket_take(rl, s, fresh, rate, now_ns, ret_retry_after);
}

/* The table is full.  With every stripe locked — in index order, so two
 * threads here cannot deadlock, and a thread holding one stripe never
 * waits for another — nothing is added or dropped meanwhile, so the count
 * is exact: one bucket goes, fresh comes in s.  Between the first look and
 * these locks another thread may have added the key or dropped a bucket:
 * both are looked at again. */
static int ratelimit_take_evicting(struct ratelimit *rl, struct ratelimit_stripe *s, struct ratelimit_bucket *fresh,
				   unsigned rate, int64_t now_ns, unsigned *ret_retry_after)
{
	struct ratelimit_stripe *victim_stripe = NULL;
	struct ratelimit_bucket *b, *victim;
	int r;

	for (size_t i = 0; i < RATELIMIT_STRIPES; i++) {
		pthread_mutex_lock(&rl->stripes[i].lock);
		ratelimit_stripe_rate(&rl->stripes[i], rate);
	}
	b = ratelimit_find(s, fresh->hash, fresh->key, fresh->key_len);
	if (b != NULL) {
		free(fresh);
		r = ratelimit_bucket_take(rl, s, b, rate, now_ns, ret_retry_after);
	} else {
		if (!ratelimit_reserve(rl)) {
			victim = ratelimit_victim(rl, now_ns, &victim_stripe);
			/* Its place goes to fresh: counted out and in. */
			if (victim != NULL)
				ratelimit_unlink(rl, victim_stripe, victim);
			atomic_fetch_add(&rl->count, 1);
		}
		r = ratelimit_take_fresh(rl, s, fresh, rate, now_ns, ret_retry_after);
	}
	for (size_t i = RATELIMIT_STRIPES; i-- > 0;)
		pthread_mutex_unlock(&rl->stripes[i].lock);
	return r;
}

/* The stripe a key lives in, its hash, and its length as kept (cut at
 * RATELIMIT_MAX_KEY). */
static struct ratelimit_stripe *ratelimit_stripe_of(struct ratelimit *rl, const char *key, size_t *key_len,
						    uint64_t *ret_hash)
{
	if (*key_len > RATELIMIT_MAX_KEY)
		*key_len = RATELIMIT_MAX_KEY;
	*ret_hash = ratelimit_siphash(rl->sip_k0, rl->sip_k1, (const unsigned char *)key, *key_len);
	return &rl->stripes[*ret_hash & (RATELIMIT_STRIPES - 1)];
}

int ratelimit_take(struct ratelimit *rl, unsigned rate, const char *key, size_t key_len, int64_t now_ns,
		   unsigned *ret_retry_after)
{
	struct ratelimit_stripe *s;
	struct ratelimit_bucket *b, *fresh;
	uint64_t hash;
	int r;

	if (rate == 0)
		return 0;
	s = ratelimit_stripe_of(rl, key, &key_len, &hash);
	pthread_mutex_lock(&s->lock);
	ratelimit_stripe_rate(s, rate);
	b = ratelimit_find(s, hash, key, key_len);
	if (b != NULL) {
		r = ratelimit_bucket_take(rl, s, b, rate, now_ns, ret_retry_after);
		pthread_mutex_unlock(&s->lock);
		return r;
	}
	pthread_mutex_unlock(&s->lock);
	/* A new caller's bucket is allocated unlocked: it costs the
	 * stripe's other callers no wait. */
	fresh = malloc(sizeof(*fresh) + key_len);
	if (fresh == NULL) {
		log_limited(LOG_LEVEL_WARN, "\"rate limit table out of memory: request admitted unlimited\"");
		return 0;
	}
	memset(fresh, 0, sizeof(*fresh));
	fresh->hash = hash;
	fresh->key_len = key_len;
	memcpy(fresh->key, key, key_len);
	pthread_mutex_lock(&s->lock);
	ratelimit_stripe_rate(s, rate);
	b = ratelimit_find(s, hash, key, key_len);
	if (b != NULL) {
		free(fresh);
		r = ratelimit_bucket_take(rl, s, b, rate, now_ns, ret_retry_after);
	} else if (ratelimit_reserve(rl)) {
		r = ratelimit_take_fresh(rl, s, fresh, rate, now_ns, ret_retry_after);
	} else {
		pthread_mutex_unlock(&s->lock);
		return ratelimit_take_evicting(rl, s, fresh, rate, now_ns, ret_retry_after);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

int ratelimit_peek(struct ratelimit *rl, unsigned rate, const char *key, size_t key_len, int64_t now_ns,
		   unsigned *ret_retry_after)
{
	struct ratelimit_stripe *s;
	struct ratelimit_bucket *b;
	uint64_t hash, level = 0;
	int found;

	if (rate == 0)
		return 0;
	s = ratelimit_stripe_of(rl, key, &key_len, &hash);
	pthread_mutex_lock(&s->lock);
	b = ratelimit_find(s, hash, key, key_len);
	found = b != NULL;
	if (found)
		level = ratelimit_level_at(b, rate, now_ns);
	pthread_mutex_unlock(&s->lock);
	/* A key without a bucket has a full one. */
	if (!found || level >= RATELIMIT_UNIT)
		return 0;
	if (ret_retry_after != NULL)
		*ret_retry_after = ratelimit_retry_after(level, rate);
	return -EBUSY;
}

int ratelimit_new(size_t max_keys, struct ratelimit **ret_rl)
{
	struct ratelimit *rl;
	unsigned char seed[16];
	size_t heads = 1;
	size_t i;

	if (max_keys == 0 || max_keys > RATELIMIT_MAX_KEYS)
		return -EINVAL;
	if (RAND_bytes(seed, sizeof(seed)) != 1)
		return -EIO;
	rl = calloc(1, sizeof(*rl));
	if (rl == NULL)
		return -ENOMEM;
	rl->max_keys = max_keys;
	atomic_init(&rl->count, 0);
	atomic_init(&rl->used, 0);
	memcpy(&rl->sip_k0, seed, 8);
	memcpy(&rl->sip_k1, seed + 8, 8);
	/* About one chain per bucket the stripe may hold. */
	while (heads * RATELIMIT_STRIPES < max_keys)
		heads *= 2;
	for (i = 0; i < RATELIMIT_STRIPES; i++) {
		struct ratelimit_stripe *s = &rl->stripes[i];
		s->chains = calloc(heads, sizeof(*s->chains));
		s->chain_mask = heads - 1;
		if (s->chains == NULL || pthread_mutex_init(&s->lock, NULL) != 0) {
			free(s->chains);
			break;
		}
	}
	if (i < RATELIMIT_STRIPES) {
		while (i-- > 0) {
			pthread_mutex_destroy(&rl->stripes[i].lock);
			free(rl->stripes[i].chains);
		}
		free(rl);
		return -ENOMEM;
	}
	*ret_rl = rl;
	return 0;
}

void ratelimit_free(struct ratelimit *rl)
{
	if (rl == NULL)
		return;
	for (size_t i = 0; i < RATELIMIT_STRIPES; i++) {
		struct ratelimit_stripe *s = &rl->stripes[i];
		for (size_t j = 0; j < s->heap_len; j++)
			free(s->heap[j]);
		free(s->heap);
		free(s->chains);
		pthread_mutex_destroy(&s->lock);
	}
	free(rl);
}

size_t ratelimit_count(struct ratelimit *rl)
{
	return atomic_load(&rl->count);
}
