#include "hsmjwt/statuslist.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

/* The largest list number: list n holds global indices from n * SIZE, and a
 * global index is a uint32_t, so a larger n names indices that cannot exist. */
#define STATUSLIST_LIST_MAX (UINT32_MAX / STATUSLIST_SIZE)
/* One list's packed entries: the most statuslist_encode is ever asked to
 * compress; anything larger is a caller's mistake, not a bigger list. */
#define STATUSLIST_PACKED_MAX ((size_t)STATUSLIST_SIZE * STATUSLIST_BITS / 8)
/* A signed list is at most ~31 kB (lst of a worst-case 16 kB deflate stream,
 * the URI, an RSA-4096 signature); the bound keeps STATUSLIST_CACHE_MAX
 * entries within a known amount of memory whatever a caller puts. */
#define STATUSLIST_JWT_MAX 65536
/* cache->slot_of[list] when the list is not cached. */
#define STATUSLIST_NO_SLOT UINT16_MAX

_Static_assert(STATUSLIST_CACHE_MAX < STATUSLIST_NO_SLOT, "cache slots must fit uint16_t below the sentinel");

int statuslist_uri(const char *issuer, uint32_t list, char *ret_uri, size_t n)
{
	char uri[STATUSLIST_URI_MAX], quoted[128];
	size_t len;
	int w;

	if (issuer == NULL || ret_uri == NULL)
		return -EINVAL;
	len = strlen(issuer);
	if (len > 0 && issuer[len - 1] == '/')
		len--;
	if (len >= sizeof(uri))
		goto too_long;
	w = snprintf(uri, sizeof(uri), "%.*s/statuslists/%" PRIu32, (int)len, issuer, list);
	if (w < 0 || (size_t)w >= sizeof(uri) || (size_t)w >= n)
		goto too_long;
	memcpy(ret_uri, uri, (size_t)w + 1);
	return 0;

too_long:
	log_error("\"status list URI too long\" issuer=%s list=%" PRIu32 " max=%zu",
		  log_quote(quoted, sizeof(quoted), issuer), list, n < sizeof(uri) ? n : sizeof(uri));
	return -ENAMETOOLONG;
}

int statuslist_claim(const char *issuer, uint32_t global_idx, json_t **ret_claim)
{
	char uri[STATUSLIST_URI_MAX], quoted[128];
	json_t *uri_str = NULL, *claim;
	int r;

	r = statuslist_uri(issuer, global_idx / STATUSLIST_SIZE, uri, sizeof(uri));
	if (r < 0)
		return r;
	r = json_utf8_string(uri, strlen(uri), &uri_str);
	if (r < 0) {
		if (r == -EINVAL)
			log_error("\"status claim not built: issuer is not UTF-8\" issuer=%s",
				  log_quote(quoted, sizeof(quoted), issuer));
		return r;
	}
	/* The strings are checked, so any failure now is memory; "o" hands
	 * uri_str over, released by json_pack also when it fails. */
	claim = json_pack("{s:{s:I,s:o}}", "status_list", "idx", (json_int_t)(global_idx % STATUSLIST_SIZE), "uri",
			  uri_str);
	if (claim == NULL)
		return -ENOMEM;
	*ret_claim = claim;
	return 0;
}

int statuslist_encode(const uint8_t *bits, size_t len, char **ret_lst)
{
	uint8_t *compressed = NULL;
	uLongf compressed_len;
	char *lst = NULL;
	int r, z;

	if (bits == NULL && len > 0)
		return -EINVAL;
	if (len > STATUSLIST_PACKED_MAX) {
		log_error("\"status list too large to encode\" bytes=%zu max=%zu", len, (size_t)STATUSLIST_PACKED_MAX);
		return -E2BIG;
	}
	compressed_len = compressBound((uLong)len);
	compressed = malloc(compressed_len);
	if (compressed == NULL) {
		r = -ENOMEM;
		goto out;
	}
	/* compress2 writes the RFC 1950 zlib wrapper the draft requires (not raw
	 * deflate, not gzip); the best level is the draft's recommendation and
	 * what makes our output match its examples byte for byte. */
	z = compress2(compressed, &compressed_len, bits != NULL ? bits : (const uint8_t *)"", (uLong)len,
		      Z_BEST_COMPRESSION);
	if (z != Z_OK) {
		r = z == Z_MEM_ERROR ? -ENOMEM : -EIO;
		log_error("\"status list compression failed\" zlib=%d bytes=%zu", z, len);
		goto out;
	}
	r = b64url_encode_alloc(compressed, compressed_len, &lst);
	if (r < 0)
		goto out;
	*ret_lst = lst;
	r = 0;
out:
	free(compressed);
	return r;
}

int statuslist_claims(const char *uri, const char *lst, int64_t iat, json_t **ret_claims)
{
	json_t *uri_str = NULL, *lst_str = NULL, *claims;
	char quoted[128];
	int r;

	if (uri == NULL || lst == NULL)
		return -EINVAL;
	if (iat > INT64_MAX - STATUSLIST_LIFETIME) {
		log_error("\"status list iat out of range\" iat=%" PRId64, iat);
		return -ERANGE;
	}
	r = json_utf8_string(uri, strlen(uri), &uri_str);
	if (r == 0)
		r = json_utf8_string(lst, strlen(lst), &lst_str);
	if (r < 0) {
		if (r == -EINVAL)
			log_error("\"status list claims not built: not UTF-8\" uri=%s",
				  log_quote(quoted, sizeof(quoted), uri));
		json_decref(uri_str);
		return r;
	}
	claims = json_pack("{s:o,s:I,s:I,s:i,s:{s:i,s:o}}", "sub", uri_str, "iat", (json_int_t)iat, "exp",
			   (json_int_t)(iat + STATUSLIST_LIFETIME), "ttl", STATUSLIST_TTL, "status_list", "bits",
			   STATUSLIST_BITS, "lst", lst_str);
	if (claims == NULL)
		return -ENOMEM;
	*ret_claims = claims;
	return 0;
}

int statuslist_parse_number(const char *text, size_t len, uint32_t *ret_list)
{
	uint32_t n = 0;

	/* One spelling per list: "007" or "+7" naming list 7 would give one
	 * list several URIs, and caches keyed by URI several copies. */
	if (text == NULL || len == 0 || (len > 1 && text[0] == '0'))
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			goto bad;
		n = n * 10 + (uint32_t)(text[i] - '0');
		/* Checked per digit, so n never exceeds 10 * LIST_MAX + 9 and
		 * cannot wrap however long the text is. */
		if (n > STATUSLIST_LIST_MAX)
			goto bad;
	}
	*ret_list = n;
	return 0;

bad:
	log_debug("\"status list number refused\" length=%zu", len);
	return -EINVAL;
}

struct statuslist_entry {
	uint32_t list;
	uint64_t generation;
	int64_t signed_at;
	char *jwt;
};

struct statuslist_cache {
	pthread_mutex_t lock;
	/* Direct map list number -> slot (STATUSLIST_NO_SLOT when absent):
	 * 128 kB for every possible list, so a lookup under the lock is one
	 * load and not a scan of STATUSLIST_CACHE_MAX entries. */
	uint16_t *slot_of;
	struct statuslist_entry entries[STATUSLIST_CACHE_MAX];
	size_t count;
};

int statuslist_cache_new(struct statuslist_cache **ret_cache)
{
	struct statuslist_cache *cache;
	int r;

	cache = calloc(1, sizeof(*cache));
	if (cache == NULL)
		return -ENOMEM;
	cache->slot_of = malloc(((size_t)STATUSLIST_LIST_MAX + 1) * sizeof(*cache->slot_of));
	if (cache->slot_of == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i <= STATUSLIST_LIST_MAX; i++)
		cache->slot_of[i] = STATUSLIST_NO_SLOT;
	r = pthread_mutex_init(&cache->lock, NULL);
	if (r != 0) {
		log_error("\"status list cache lock not created\" errno=%d", r);
		r = -r;
		goto fail;
	}
	*ret_cache = cache;
	return 0;

fail:
	free(cache->slot_of);
	free(cache);
	return r;
}

void statuslist_cache_free(struct statuslist_cache *cache)
{
	if (cache == NULL)
		return;
	for (size_t i = 0; i < cache->count; i++)
		free(cache->entries[i].jwt);
	free(cache->slot_of);
	pthread_mutex_destroy(&cache->lock);
	free(cache);
}

int statuslist_cache_get(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t now,
			 char **ret_jwt)
{
	/* now - TTL without wrapping for a clock near INT64_MIN. */
	int64_t oldest = now < INT64_MIN + STATUSLIST_TTL ? INT64_MIN : now - STATUSLIST_TTL;
	const struct statuslist_entry *e;
	char *copy = NULL;
	int r = -ENOENT;
	uint16_t slot;

	if (cache == NULL || list > STATUSLIST_LIST_MAX)
		return -ENOENT;
	pthread_mutex_lock(&cache->lock);
	slot = cache->slot_of[list];
	if (slot == STATUSLIST_NO_SLOT)
		goto out;
	e = &cache->entries[slot];
	if (e->generation != generation || e->signed_at < oldest)
		goto out;
	copy = strdup(e->jwt);
	if (copy == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret_jwt = copy;
	r = 0;
out:
	pthread_mutex_unlock(&cache->lock);
	return r;
}

/* The slot of the entry signed longest ago: the one a new list displaces. */
static size_t statuslist_cache_oldest(const struct statuslist_cache *cache)
{
	size_t oldest = 0;

	for (size_t i = 1; i < cache->count; i++)
		if (cache->entries[i].signed_at < cache->entries[oldest].signed_at)
			oldest = i;
	return oldest;
}

int statuslist_cache_put(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t signed_at,
			 const char *jwt)
{
	struct statuslist_entry *e;
	size_t len, slot;
	char *copy;

	if (cache == NULL || jwt == NULL || list > STATUSLIST_LIST_MAX)
		return -EINVAL;
	len = strnlen(jwt, STATUSLIST_JWT_MAX + 1);
	if (len > STATUSLIST_JWT_MAX) {
		log_error("\"status list too large to cache\" list=%" PRIu32 " max=%d", list, STATUSLIST_JWT_MAX);
		return -E2BIG;
	}
	/* Copied before taking the lock: workers reading the cache should not
	 * wait on malloc. */
	copy = malloc(len + 1);
	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, jwt, len + 1);

	pthread_mutex_lock(&cache->lock);
	slot = cache->slot_of[list];
	if (slot == STATUSLIST_NO_SLOT) {
		if (cache->count < STATUSLIST_CACHE_MAX) {
			/* Slots past count are still calloc's, jwt NULL. */
			slot = cache->count++;
		} else {
			slot = statuslist_cache_oldest(cache);
			cache->slot_of[cache->entries[slot].list] = STATUSLIST_NO_SLOT;
		}
		cache->slot_of[list] = (uint16_t)slot;
	}
	e = &cache->entries[slot];
	free(e->jwt);
	e->list = list;
	e->generation = generation;
	e->signed_at = signed_at;
	e->jwt = copy;
	pthread_mutex_unlock(&cache->lock);
	return 0;
}
