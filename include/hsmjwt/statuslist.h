/* statuslist: the IETF Token Status List (draft-ietf-oauth-status-list),
 * the offline revocation check of relying parties (SPEC §4.2, §5.1).
 *
 * The registry hands out global indices; list n holds indices
 * n*STATUSLIST_SIZE .. (n+1)*STATUSLIST_SIZE-1, and a token's status claim
 * names its list's URI and its index within that list.  Entries are 2 bits
 * (0 valid, 1 invalid, 2 suspended), packed least-significant bit first,
 * ZLIB-compressed (RFC 1950) and base64url-encoded into "lst".
 *
 * The signed list is cached per list number and re-signed when its
 * generation changes or it is older than STATUSLIST_TTL, so that a burst of
 * fetches costs one signature, and a relying party that honours ttl sees a
 * change within STATUSLIST_TTL seconds. */
#ifndef HSMJWT_STATUSLIST_H
#define HSMJWT_STATUSLIST_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/registry.h"

#define STATUSLIST_SIZE REGISTRY_STATUSLIST_SIZE
#define STATUSLIST_BITS 2
#define STATUSLIST_TTL 60                /* seconds: ttl claim and Cache-Control max-age */
#define STATUSLIST_LIFETIME 86400        /* exp - iat of a signed list */
#define STATUSLIST_CACHE_MAX 4096        /* lists kept signed in memory */
#define STATUSLIST_URI_MAX 1100

/* "<issuer>/statuslists/<list>" (a trailing '/' of issuer is not doubled).
 * -ENAMETOOLONG when it does not fit STATUSLIST_URI_MAX. */
int statuslist_uri(const char *issuer, uint32_t list, char *ret_uri, size_t n);

/* The token claim {"status_list": {"idx": idx % SIZE, "uri": ...}} for a
 * global index (new reference). */
int statuslist_claim(const char *issuer, uint32_t global_idx, json_t **ret_claim);

/* Compresses packed entries (len bytes) with zlib and base64url-encodes
 * them: *ret_lst is malloc'd. */
int statuslist_encode(const uint8_t *bits, size_t len, char **ret_lst);

/* The claims of a status list token: sub = uri, iat, exp = iat +
 * STATUSLIST_LIFETIME, ttl = STATUSLIST_TTL, status_list {bits: 2, lst}. */
int statuslist_claims(const char *uri, const char *lst, int64_t iat, json_t **ret_claims);

/* Parses the n of "/statuslists/<n>": decimal, no sign, no leading zero,
 * at most UINT32_MAX / STATUSLIST_SIZE.  -EINVAL otherwise. */
int statuslist_parse_number(const char *text, size_t len, uint32_t *ret_list);

/* The cache of signed lists, shared by the workers. */
struct statuslist_cache;
int statuslist_cache_new(struct statuslist_cache **ret_cache);
void statuslist_cache_free(struct statuslist_cache *cache);
/* A copy (malloc'd) of the signed list `list` if the cache holds one of
 * this generation signed at or after now - STATUSLIST_TTL; else -ENOENT. */
int statuslist_cache_get(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t now,
			 char **ret_jwt);
/* Remembers jwt (copied) for list at generation, signed at signed_at. */
int statuslist_cache_put(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t signed_at,
			 const char *jwt);

#endif
