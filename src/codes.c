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
#define CODES_FIELDS 7

/* One code, live or a tombstone.  payload holds the grant's strings, one
 * after the other, NUL-terminated; it is wiped and freed at redemption. */
struct codes_entry {
	struct codes_entry *hnext;      /* bucket chain */
	struct codes_entry *fnext;      /* registration order: expiry order */
	uint8_t hash[SHA256_DIGEST_LENGTH];
	int64_t issued_at, expires, auth_time;
	int used, reused;
	char family[CODES_FAMILY_MAX + 1];
	char *payload;
	size_t payload_len;
};

struct codes {
	pthread_mutex_t mutex;
	struct codes_entry **buckets;
	struct codes_entry *head, *tail;
	size_t count, bytes;
};

int codes_new(struct codes **ret_codes)
{
	struct codes *codes = calloc(1, sizeof(*codes));

	if (codes == NULL)
		return -ENOMEM;
	codes->buckets = calloc(CODES_BUCKETS, sizeof(*codes->buckets));
	if (codes->buckets == NULL || pthread_mutex_init(&codes->mutex, NULL) != 0) {
		free(codes->buckets);
		free(codes);
		return -ENOMEM;
	}
	*ret_codes = codes;
	return 0;
}

static void codes_entry_free(struct codes *codes, struct codes_entry *e)
{
	codes->count--;
	codes->bytes -= sizeof(*e) + e->payload_len;
	if (e->payload != NULL) {
		OPENSSL_cleanse(e->payload, e->payload_len);
		free(e->payload);
	}
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

void codes_free(struct codes *codes)
{
	if (codes == NULL)
		return;
	while (codes->head != NULL) {
		struct codes_entry *e = codes->head;
		codes->head = e->fnext;
		codes_entry_free(codes, e);
	}
	pthread_mutex_destroy(&codes->mutex);
	free(codes->buckets);
	free(codes);
}

static uint32_t codes_bucket(const uint8_t *hash)
{
	return ((uint32_t)hash[0] | (uint32_t)hash[1] << 8 | (uint32_t)hash[2] << 16) & (CODES_BUCKETS - 1);
}

/* Under the mutex.  The comparison is of SHA-256 digests: how far a
 * presented code's digest matches a stored one tells nothing about a code. */
static struct codes_entry *codes_find(const struct codes *codes, const uint8_t *hash)
{
	struct codes_entry *e;

	for (e = codes->buckets[codes_bucket(hash)]; e != NULL; e = e->hnext)
		if (memcmp(e->hash, hash, sizeof(e->hash)) == 0)
			return e;
	return NULL;
}

/* Under the mutex: drops entries expired at now, oldest first.  The clock
 * may step back, so a later entry can expire before an earlier one: it then
 * goes with the earlier one, a few seconds late, never early. */
static void codes_purge(struct codes *codes, int64_t now)
{
	while (codes->head != NULL && codes->head->expires <= now) {
		struct codes_entry *e = codes->head, **p = &codes->buckets[codes_bucket(e->hash)];

		while (*p != e)
			p = &(*p)->hnext;
		*p = e->hnext;
		codes->head = e->fnext;
		if (codes->head == NULL)
			codes->tail = NULL;
		codes_entry_free(codes, e);
	}
}

size_t codes_count(struct codes *codes, int64_t now)
{
	size_t n;

	pthread_mutex_lock(&codes->mutex);
	codes_purge(codes, now);
	n = codes->count;
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
	uint32_t b;
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
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		log_error("\"RAND_bytes failed\" for=\"authorization code\"");
		r = -EIO;
		goto out;
	}
	b64url_encode(raw, sizeof(raw), code);
	SHA256((const unsigned char *)code, CODES_CODE_LEN, e->hash);
	pthread_mutex_lock(&codes->mutex);
	codes_purge(codes, now);
	if (codes->count >= CODES_MAX_LIVE || codes->bytes + sizeof(*e) + e->payload_len > CODES_MAX_BYTES) {
		log_limited(LOG_LEVEL_WARN, "\"authorization codes full: refusing a code\" codes=%zu bytes=%zu",
			    codes->count, codes->bytes);
		r = -ENOSPC;
	} else if (codes_find(codes, e->hash) != NULL) {
		/* 256 random bits met an earlier code: the generator is broken. */
		log_error("\"authorization code collision\"");
		r = -EIO;
	} else {
		b = codes_bucket(e->hash);
		e->hnext = codes->buckets[b];
		codes->buckets[b] = e;
		if (codes->tail != NULL)
			codes->tail->fnext = e;
		else
			codes->head = e;
		codes->tail = e;
		codes->count++;
		codes->bytes += sizeof(*e) + e->payload_len;
		e = NULL;
	}
	pthread_mutex_unlock(&codes->mutex);
	if (r == 0)
		memcpy(ret_code, code, sizeof(code));
out:
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(code, sizeof(code));
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
		codes_unpack(e, ret_grant);
		/* The tombstone needs none of it. */
		OPENSSL_cleanse(e->payload, e->payload_len);
		free(e->payload);
		e->payload = NULL;
		codes->bytes -= e->payload_len;
		e->payload_len = 0;
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
	codes_purge(codes, now);
	e = codes_find(codes, hash);
	if (e == NULL || !e->used) {
		r = -ENOENT;
	} else {
		memcpy(e->family, family, strlen(family) + 1);
		r = e->reused ? -EALREADY : 0;
	}
	pthread_mutex_unlock(&codes->mutex);
	return r;
}
