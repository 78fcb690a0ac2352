#include "hsmjwt/codes.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/log.h"

/* Chains stay short: a bucket is chosen by bits of SHA-256 of a random
 * code, which no caller picks. */
#define CODES_BUCKETS (1u << 17)
#define CODES_ORG_BUCKETS (1u << 12)
#define CODES_FIELDS 7

/* The live codes of one org (the grant's org, "" for codes without one,
 * which only unconfined callers register): the quota's count.  There when
 * the org has a live code, so at most CODES_MAX_LIVE of them. */
struct codes_org {
	struct codes_org *next;         /* bucket chain */
	size_t live, size;              /* size: of this allocation, for the byte budget */
	char name[];
};

/* One code, live or a tombstone.  payload holds the grant's strings, one
 * after the other, NUL-terminated; it is wiped and freed at redemption,
 * when the entry moves from the live queue to the tombstones'. */
struct codes_entry {
	struct codes_entry *hnext;      /* bucket chain */
	struct codes_entry *next, *prev; /* its queue, in expiry order */
	uint8_t hash[SHA256_DIGEST_LENGTH];
	int64_t issued_at, expires, auth_time;
	int used, reused;
	/* Redeemed but not yet bound: the redemption is still issuing, and
	 * its codes_bind must find the entry to learn of a reuse. */
	int pending;
	struct codes_org *org;          /* while live: whose quota it counts in */
	char family[CODES_FAMILY_MAX + 1];
	char *payload;
	size_t payload_len;
};

/* A FIFO whose order is expiry order: entries join at the tail with the
 * longest expiry yet (up to a clock stepping back). */
struct codes_queue {
	struct codes_entry *head, *tail;
	size_t count;
};

struct codes {
	pthread_mutex_t mutex;
	struct codes_entry **buckets;
	struct codes_queue live, tombs;
	struct codes_org **orgs;
	size_t bytes;                   /* live codes: entries, payloads, their orgs */
};

int codes_new(struct codes **ret_codes)
{
	struct codes *codes = calloc(1, sizeof(*codes));

	if (codes == NULL)
		return -ENOMEM;
	codes->buckets = calloc(CODES_BUCKETS, sizeof(*codes->buckets));
	codes->orgs = calloc(CODES_ORG_BUCKETS, sizeof(*codes->orgs));
	if (codes->buckets == NULL || codes->orgs == NULL || pthread_mutex_init(&codes->mutex, NULL) != 0) {
		free(codes->buckets);
		free(codes->orgs);
		free(codes);
		return -ENOMEM;
	}
	*ret_codes = codes;
	return 0;
}

/* Wipes and frees an entry no longer linked anywhere. */
static void codes_entry_free(struct codes_entry *e)
{
	if (e->payload != NULL) {
		OPENSSL_cleanse(e->payload, e->payload_len);
		free(e->payload);
	}
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

static void codes_queue_push(struct codes_queue *q, struct codes_entry *e)
{
	e->next = NULL;
	e->prev = q->tail;
	if (q->tail != NULL)
		q->tail->next = e;
	else
		q->head = e;
	q->tail = e;
	q->count++;
}

static void codes_queue_remove(struct codes_queue *q, struct codes_entry *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		q->head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		q->tail = e->prev;
	e->next = e->prev = NULL;
	q->count--;
}

static uint32_t codes_org_bucket(const char *org)
{
	uint8_t digest[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)org, strlen(org), digest);
	return ((uint32_t)digest[0] | (uint32_t)digest[1] << 8) & (CODES_ORG_BUCKETS - 1);
}

/* Under the mutex: org's counter, NULL when it has no live code. */
static struct codes_org *codes_org_find(const struct codes *codes, const char *org, uint32_t b)
{
	struct codes_org *o;

	for (o = codes->orgs[b]; o != NULL; o = o->next)
		if (strcmp(o->name, org) == 0)
			return o;
	return NULL;
}

/* Under the mutex: a live code of o is gone; the counter goes with its
 * last one. */
static void codes_org_release(struct codes *codes, struct codes_org *o)
{
	struct codes_org **p;

	if (--o->live > 0)
		return;
	for (p = &codes->orgs[codes_org_bucket(o->name)]; *p != o; p = &(*p)->next)
		;
	*p = o->next;
	codes->bytes -= o->size;
	free(o);
}

void codes_free(struct codes *codes)
{
	struct codes_queue *queues[2];

	if (codes == NULL)
		return;
	queues[0] = &codes->live;
	queues[1] = &codes->tombs;
	for (size_t i = 0; i < 2; i++)
		while (queues[i]->head != NULL) {
			struct codes_entry *e = queues[i]->head;

			codes_queue_remove(queues[i], e);
			codes_entry_free(e);
		}
	for (size_t b = 0; b < CODES_ORG_BUCKETS; b++)
		while (codes->orgs[b] != NULL) {
			struct codes_org *o = codes->orgs[b];

			codes->orgs[b] = o->next;
			free(o);
		}
	pthread_mutex_destroy(&codes->mutex);
	free(codes->buckets);
	free(codes->orgs);
	free(codes);
}

static uint32_t codes_bucket(const uint8_t *hash)
{
	return ((uint32_t)hash[0] | (uint32_t)hash[1] << 8 | (uint32_t)hash[2] << 16) & (CODES_BUCKETS - 1);
}

/* Under the mutex.  The comparison is of SHA-256 digests, so how far a
 * presented code's digest matches a stored one tells nothing about a code;
 * it is constant-time all the same, as every comparison of secret-derived
 * bytes is (tests/lint/secret_compare.py holds the code to that). */
static struct codes_entry *codes_find(const struct codes *codes, const uint8_t *hash)
{
	struct codes_entry *e;

	for (e = codes->buckets[codes_bucket(hash)]; e != NULL; e = e->hnext)
		if (CRYPTO_memcmp(e->hash, hash, sizeof(e->hash)) == 0)
			return e;
	return NULL;
}

/* Under the mutex: takes e out of its bucket and queue and frees it. */
static void codes_drop(struct codes *codes, struct codes_queue *q, struct codes_entry *e)
{
	struct codes_entry **p = &codes->buckets[codes_bucket(e->hash)];

	while (*p != e)
		p = &(*p)->hnext;
	*p = e->hnext;
	codes_queue_remove(q, e);
	if (q == &codes->live) {
		codes->bytes -= sizeof(*e) + e->payload_len;
		codes_org_release(codes, e->org);
	}
	codes_entry_free(e);
}

/* Under the mutex: the oldest tombstone goes, unless its redemption is
 * still pending: that one moves to the tail with a fresh lifetime, since
 * dropping it would let its codes_bind miss a reuse.  Pending entries are
 * as many as redemptions in flight, a handful, so the caller's loop ends. */
static void codes_drop_oldest_tomb(struct codes *codes, int64_t now)
{
	struct codes_entry *e = codes->tombs.head;

	if (e->pending) {
		codes_queue_remove(&codes->tombs, e);
		e->expires = now + CODES_TOMBSTONE_TTL;
		codes_queue_push(&codes->tombs, e);
		return;
	}
	codes_drop(codes, &codes->tombs, e);
}

/* Under the mutex: drops entries expired at now, oldest first.  The clock
 * may step back, so a later entry can expire before an earlier one: it then
 * goes with the earlier one, a few seconds late, never early.  A pending
 * tombstone is never dropped (codes_drop_oldest_tomb); the loop over the
 * tombstones stops at the first one that is not expired, which a requeued
 * pending one is not. */
static void codes_purge(struct codes *codes, int64_t now)
{
	while (codes->live.head != NULL && codes->live.head->expires <= now)
		codes_drop(codes, &codes->live, codes->live.head);
	while (codes->tombs.head != NULL && codes->tombs.head->expires <= now)
		codes_drop_oldest_tomb(codes, now);
}

size_t codes_count(struct codes *codes, int64_t now)
{
	size_t n;

	pthread_mutex_lock(&codes->mutex);
	codes_purge(codes, now);
	n = codes->live.count + codes->tombs.count;
	pthread_mutex_unlock(&codes->mutex);
	return n;
}

/* A code as codes_issue makes them: 43 base64url characters.  Anything else
 * is not looked up at all. */
static int codes_hash(const char *code, size_t len, uint8_t *ret_hash)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

	if (code == NULL || len != CODES_CODE_LEN)
		return -ENOENT;
	for (size_t i = 0; i < len; i++)
		if (code[i] == '\0' || strchr(alphabet, code[i]) == NULL)
			return -ENOENT;
	SHA256((const unsigned char *)code, len, ret_hash);
	return 0;
}

int codes_challenge_valid(const char *challenge)
{
	uint8_t raw[CODES_CHALLENGE_LEN];
	size_t n = 0;

	return challenge != NULL && strnlen(challenge, CODES_CHALLENGE_LEN + 1) == CODES_CHALLENGE_LEN &&
	       b64url_decode(challenge, CODES_CHALLENGE_LEN, raw, &n) == 0 && n == SHA256_DIGEST_LENGTH;
}

int codes_verifier_valid(const char *verifier, size_t len)
{
	static const char unreserved[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

	if (verifier == NULL || len < CODES_VERIFIER_MIN || len > CODES_VERIFIER_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (verifier[i] == '\0' || strchr(unreserved, verifier[i]) == NULL)
			return 0;
	return 1;
}

int codes_pkce_matches(const char *challenge, const char *verifier, size_t len)
{
	uint8_t digest[SHA256_DIGEST_LENGTH];
	char computed[CODES_CHALLENGE_LEN + 1];
	int match;

	if (!codes_verifier_valid(verifier, len) || challenge == NULL ||
	    strnlen(challenge, CODES_CHALLENGE_LEN + 1) != CODES_CHALLENGE_LEN)
		return 0;
	SHA256((const unsigned char *)verifier, len, digest);
	b64url_encode(digest, sizeof(digest), computed);
	/* Constant time: how much of a guess matched must not show. */
	match = CRYPTO_memcmp(computed, challenge, CODES_CHALLENGE_LEN) == 0;
	OPENSSL_cleanse(digest, sizeof(digest));
	OPENSSL_cleanse(computed, sizeof(computed));
	return match;
}

static int codes_field_ok(const char *s, size_t size, int required)
{
	size_t n = strnlen(s, size);

	return n < size && (!required || n > 0);
}

/* The grant's strings in payload order. */
static void codes_fields(const struct codes_grant *g, const char *fields[CODES_FIELDS])
{
	fields[0] = g->subject;
	fields[1] = g->client_id;
	fields[2] = g->redirect_uri;
	fields[3] = g->challenge;
	fields[4] = g->scope;
	fields[5] = g->nonce;
	fields[6] = g->org;
}

/* A new entry for grant at now, its payload packed. */
static int codes_entry_new(const struct codes_grant *grant, int64_t now, struct codes_entry **ret_entry)
{
	const char *fields[CODES_FIELDS];
	size_t lens[CODES_FIELDS], total = 0;
	struct codes_entry *e;
	char *p;

	codes_fields(grant, fields);
	for (size_t i = 0; i < CODES_FIELDS; i++)
		total += (lens[i] = strlen(fields[i])) + 1;
	e = calloc(1, sizeof(*e));
	if (e == NULL || (e->payload = malloc(total)) == NULL) {
		free(e);
		return -ENOMEM;
	}
	p = e->payload;
	for (size_t i = 0; i < CODES_FIELDS; i++) {
		memcpy(p, fields[i], lens[i] + 1);
		p += lens[i] + 1;
	}
	e->payload_len = total;
	e->issued_at = now;
	e->expires = now + CODES_TTL;
	e->auth_time = grant->auth_time;
	*ret_entry = e;
	return 0;
}

int codes_issue(struct codes *codes, const struct codes_grant *grant, int64_t now, char ret_code[CODES_CODE_LEN + 1])
{
	uint8_t raw[32];
	char code[CODES_CODE_LEN + 1];
	struct codes_entry *e = NULL;
	struct codes_org *o, *fresh = NULL;
	size_t org_len, need;
	char shown[CODES_ORG_MAX + 3];
	uint32_t b, ob;
	int r;

	if (codes == NULL || grant == NULL || !codes_field_ok(grant->subject, sizeof(grant->subject), 1) ||
	    !codes_field_ok(grant->client_id, sizeof(grant->client_id), 1) ||
	    !codes_field_ok(grant->redirect_uri, sizeof(grant->redirect_uri), 1) ||
	    !codes_challenge_valid(grant->challenge) || !codes_field_ok(grant->scope, sizeof(grant->scope), 0) ||
	    !codes_field_ok(grant->nonce, sizeof(grant->nonce), 0) ||
	    !codes_field_ok(grant->org, sizeof(grant->org), 0) || grant->auth_time < 0)
		return -EINVAL;
	r = codes_entry_new(grant, now, &e);
	if (r < 0)
		return r;
	/* Made before the lock, used only if the org has no live code yet. */
	org_len = strlen(grant->org);
	fresh = calloc(1, sizeof(*fresh) + org_len + 1);
	if (fresh == NULL) {
		r = -ENOMEM;
		goto out;
	}
	fresh->size = sizeof(*fresh) + org_len + 1;
	memcpy(fresh->name, grant->org, org_len + 1);
	ob = codes_org_bucket(grant->org);
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		log_error("\"RAND_bytes failed\" for=\"authorization code\"");
		r = -EIO;
		goto out;
	}
	b64url_encode(raw, sizeof(raw), code);
	SHA256((const unsigned char *)code, CODES_CODE_LEN, e->hash);
	pthread_mutex_lock(&codes->mutex);
	codes_purge(codes, now);
	o = codes_org_find(codes, grant->org, ob);
	need = sizeof(*e) + e->payload_len + (o == NULL ? fresh->size : 0);
	if (o != NULL && o->live >= CODES_MAX_PER_ORG) {
		/* One org's flood, a confined caller's included, must not
		 * take the table from every other org's logins. */
		log_limited(LOG_LEVEL_WARN, "\"authorization codes: org over its quota\" org=%s codes=%zu",
			    log_quote(shown, sizeof(shown), grant->org), o->live);
		r = -EDQUOT;
	} else if (codes->live.count >= CODES_MAX_LIVE || codes->bytes + need > CODES_MAX_BYTES) {
		log_limited(LOG_LEVEL_WARN, "\"authorization codes full: refusing a code\" codes=%zu bytes=%zu",
			    codes->live.count, codes->bytes);
		r = -ENOSPC;
	} else if (codes_find(codes, e->hash) != NULL) {
		/* 256 random bits met an earlier code: the generator is broken. */
		log_error("\"authorization code collision\"");
		r = -EIO;
	} else {
		if (o == NULL) {
			o = fresh;
			fresh = NULL;
			o->next = codes->orgs[ob];
			codes->orgs[ob] = o;
			codes->bytes += o->size;
		}
		o->live++;
		e->org = o;
		b = codes_bucket(e->hash);
		e->hnext = codes->buckets[b];
		codes->buckets[b] = e;
		codes_queue_push(&codes->live, e);
		codes->bytes += sizeof(*e) + e->payload_len;
		e = NULL;
	}
	pthread_mutex_unlock(&codes->mutex);
	if (r == 0)
		memcpy(ret_code, code, sizeof(code));
out:
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(code, sizeof(code));
	free(fresh);
	if (e != NULL) {
		OPENSSL_cleanse(e->payload, e->payload_len);
		free(e->payload);
		free(e);
	}
	return r;
}

/* The payload back into a grant. */
static void codes_unpack(const struct codes_entry *e, struct codes_grant *g)
{
	char *dst[CODES_FIELDS] = { g->subject, g->client_id, g->redirect_uri, g->challenge, g->scope, g->nonce,
				    g->org };
	const size_t sizes[CODES_FIELDS] = { sizeof(g->subject), sizeof(g->client_id), sizeof(g->redirect_uri),
					     sizeof(g->challenge), sizeof(g->scope), sizeof(g->nonce),
					     sizeof(g->org) };
	const char *p = e->payload;

	for (size_t i = 0; i < CODES_FIELDS; i++) {
		size_t n = strlen(p), kept = n < sizes[i] ? n : sizes[i] - 1;

		/* codes_issue bounded every field by its size: kept == n. */
		memcpy(dst[i], p, kept);
		dst[i][kept] = '\0';
		p += n + 1;
	}
	g->auth_time = e->auth_time;
	g->issued_at = e->issued_at;
}

int codes_redeem(struct codes *codes, const char *code, size_t len, int64_t now, struct codes_grant *ret_grant,
		 char *ret_family)
{
	uint8_t hash[SHA256_DIGEST_LENGTH];
	struct codes_entry *e;
	int r;

	if (codes == NULL || ret_grant == NULL || ret_family == NULL || codes_hash(code, len, hash) < 0)
		return -ENOENT;
	pthread_mutex_lock(&codes->mutex);
	codes_purge(codes, now);
	e = codes_find(codes, hash);
	if (e == NULL) {
		r = -ENOENT;
	} else if (e->used) {
		e->reused = 1;
		memcpy(ret_family, e->family, sizeof(e->family));
		r = -EALREADY;
	} else {
		e->used = 1;
		e->pending = 1;
		codes_unpack(e, ret_grant);
		/* The tombstone needs none of it. */
		codes_queue_remove(&codes->live, e);
		codes->bytes -= sizeof(*e) + e->payload_len;
		codes_org_release(codes, e->org);
		e->org = NULL;
		OPENSSL_cleanse(e->payload, e->payload_len);
		free(e->payload);
		e->payload = NULL;
		e->payload_len = 0;
		/* A tombstone outlives the code: a replay after the code's own
		 * expiry must still find it, and a code is redeemed at most
		 * CODES_TTL after registration, so its tombstone covers a
		 * replay during the first minutes of its tokens' lives. */
		e->expires = now + CODES_TOMBSTONE_TTL;
		codes_queue_push(&codes->tombs, e);
		while (codes->tombs.count > CODES_MAX_TOMBSTONES) {
			log_limited(LOG_LEVEL_WARN, "\"authorization code tombstones full: dropping the oldest early\" "
				    "tombstones=%zu", codes->tombs.count);
			codes_drop_oldest_tomb(codes, now);
		}
		r = 0;
	}
	pthread_mutex_unlock(&codes->mutex);
	return r;
}

int codes_bind(struct codes *codes, const char *code, size_t len, const char *family, int64_t now)
{
	uint8_t hash[SHA256_DIGEST_LENGTH];
	struct codes_entry *e;
	int r;

	if (codes == NULL || family == NULL || strnlen(family, CODES_FAMILY_MAX + 1) > CODES_FAMILY_MAX)
		return -EINVAL;
	if (codes_hash(code, len, hash) < 0)
		return -ENOENT;
	pthread_mutex_lock(&codes->mutex);
	/* Looked up before the purge: a pending tombstone is never purged,
	 * but its lifetime may be over by now, and it is settled first. */
	e = codes_find(codes, hash);
	if (e == NULL || !e->used) {
		r = -ENOENT;
	} else {
		memcpy(e->family, family, strlen(family) + 1);
		e->pending = 0;
		r = e->reused ? -EALREADY : 0;
	}
	codes_purge(codes, now);
	pthread_mutex_unlock(&codes->mutex);
	return r;
}
