/* verify: what verify.c and verify_fetch.c share, and the pure functions the
 * unit tests drive (tests/unit/test_verify.c).  Not installed. */
#ifndef HSMJWT_VERIFY_INTERNAL_H
#define HSMJWT_VERIFY_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"
#include "hsmjwt/verify.h"

/* Bounds of what a server may hand us besides the body. */
#define VERIFY_ETAG_MAX 256
#define VERIFY_URL_MAX 2048
#define VERIFY_MAX_HEADERS_BYTES 16384
#define VERIFY_CACHE_CONTROL_MAX 1024   /* the Cache-Control lines, joined */

/* ---- the source (verify.c) ------------------------------------------- */

enum verify_scheme { VERIFY_FILE, VERIFY_HTTP, VERIFY_HTTPS };

struct verify_source {
	enum verify_scheme scheme;
	char *text;       /* the URL or path as given: what the cache file is for */
	char *path;       /* FILE: the file; HTTP(S): path and query, "/" at least */
	char *host;       /* HTTP(S): without brackets for an IPv6 literal */
	int port;
};

/* jwks_url (http://, https://, file:) or jwks_file (a path) → source.
 * -EINVAL for anything else (no host, userinfo, a fragment, a port out of
 * range, longer than VERIFY_URL_MAX), -ENOMEM. */
int verify_source_parse(const char *url, const char *file, struct verify_source *ret_source);
void verify_source_clear(struct verify_source *source);

/* ---- Cache-Control (verify.c) ----------------------------------------- */

/* The lifetime of a response from its Cache-Control and Age values (either
 * may be NULL: absent), RFC 9111 §4.2.1 and §5.2.2: no-store or no-cache
 * (also with a field list, no-cache="..."), anywhere in the list → 0; else
 * max-age=N (a token or a quoted string of digits; N past max_lifetime,
 * however many digits, is max_lifetime) less Age (digits, saturating), at
 * least 0; no max-age, or one that is not all digits, or given twice →
 * max_lifetime.  Directive names are case-insensitive; others (public,
 * s-maxage, must-revalidate) change nothing.  max_lifetime >= 0. */
int64_t verify_cache_lifetime(const char *cache_control, const char *age, int64_t max_lifetime);

/* ---- the key set (verify.c) -------------------------------------------- */

struct verify_keyset {
	atomic_uint refs;
	struct jwk_key **keys;   /* usable keys, each with a kid */
	size_t count;
	size_t skipped;          /* entries of the document not used */
	char *doc;               /* the document as fetched, for the cache file */
	size_t doc_len;
};

/* Parses a JWKS document (strict JSON: no duplicate names, depth <= 16) of
 * at most max_bytes: an object whose "keys" is an array of at most
 * VERIFY_MAX_KEYS entries; entries verify.h says are skipped are counted in
 * skipped.  0 and *ret_set (one reference), -EINVAL (not a JWKS), -E2BIG
 * (over max_bytes or VERIFY_MAX_KEYS entries), -ENOMEM. */
int verify_keyset_parse(const char *doc, size_t len, size_t max_bytes, struct verify_keyset **ret_set);
struct verify_keyset *verify_keyset_ref(struct verify_keyset *set);
void verify_keyset_unref(struct verify_keyset *set);
/* The key with this kid, or NULL (also for a NULL kid). */
const struct jwk_key *verify_keyset_find(const struct verify_keyset *set, const char *kid);

/* ---- fetching (verify_fetch.c) ----------------------------------------- */

enum verify_fetch_status { VERIFY_FETCH_OK, VERIFY_FETCH_NOT_MODIFIED };

struct verify_fetched {
	enum verify_fetch_status status;
	char *body;               /* OK: NUL-terminated, body_len bytes before it */
	size_t body_len;
	char *cache_control;      /* NULL when absent */
	char *age;
	char etag[VERIFY_ETAG_MAX + 1];  /* "" when absent or longer than VERIFY_ETAG_MAX */
};

/* Reads the whole of a regular file of at most max bytes into a malloc'd,
 * NUL-terminated buffer; never waits on a FIFO or device.  private_copy: a
 * cache file — no symbolic link, owned by this user, not group/other
 * writable (-EPERM), since a copy someone else could plant would be a key
 * set they chose.  -EINVAL for a file that is not regular, -E2BIG. */
int verify_read_file(const char *path, int private_copy, size_t max, char **ret_buf, size_t *ret_len);

/* Reads source: a regular file of at most max_bytes, or one GET (with
 * If-None-Match: etag when etag is not empty) that must answer 200 with a
 * body of at most max_bytes, or 304, within timeout_ms.  0 and *ret (clear
 * it with verify_fetched_clear), or a negative errno with a one-line reason
 * in err (no secret, no body text). */
int verify_fetch(const struct verify_source *source, const char *ca_file, const char *etag, int64_t timeout_ms,
		 size_t max_bytes, struct verify_fetched *ret, char *err, size_t err_len);
void verify_fetched_clear(struct verify_fetched *fetched);

#endif
