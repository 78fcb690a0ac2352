/* verify: offline verification of hsmjwt tokens for relying parties
 * (SPEC §6, libhsmjwt-verify; `pkg-config --cflags --libs hsmjwt-verify`).
 *
 * A struct verify reads one JWKS — an http(s) URL or a file — and keeps the
 * key set.  verify_token applies SPEC §5.2 with the daemon's own code (the
 * library is built from the same jws, jwt and jwk modules as POST
 * /token/verify, so the two give the same reason for the same token), except
 * the registry's rules: revocation and suspension are known to the service
 * only (POST /token/verify, GET /revocations).
 *
 * The key set (RFC 9111, the part a JWKS needs):
 *  - It is read on first need (not by verify_new), and from cache_file when
 *    verify_new finds a copy there made for the same source (its lifetime
 *    capped at this context's max_lifetime).
 *  - Its lifetime is Cache-Control max-age less Age, capped at max_lifetime;
 *    no-cache or no-store give 0; no usable max-age, and a file source,
 *    give max_lifetime.  A lifetime shorter than refetch_interval (0
 *    included) is stretched to it: while a set is held no two fetch
 *    attempts are less than refetch_interval apart, whatever the server
 *    says (refetch_interval 0: none stretched).  A refetch sends
 *    If-None-Match with the ETag; a 304 renews the copy held, for its own
 *    max-age or, when it has no Cache-Control, for the held copy's (RFC
 *    9111 §4.3.4).
 *  - A verification that meets an expired set fetches.  When that fails it
 *    goes on with the expired ("stale") set — public keys only, and the
 *    result says stale — for at most max_stale seconds past its expiry, and
 *    the next attempt comes no sooner than refetch_interval after this one.
 *  - A kid the set lacks causes one refetch when the last attempt is at
 *    least refetch_interval old; otherwise the answer is unknown_kid at once
 *    (stats.kid_refetches_refused).  So a stream of made-up kids costs the
 *    JWKS server one request per refetch_interval, whatever the rate.  A
 *    token without kid, or with an empty one, is unknown_kid without a
 *    fetch (the service always names the key).  A malformed token, or one
 *    whose alg is refused by name, never causes a fetch.
 *  - The JWKS is at most max_jwks_bytes and VERIFY_MAX_KEYS entries, else
 *    refused whole; an answer that makes the connection hold more than
 *    that (plus headers and a little slack) unparsed, as a chunk-size line
 *    without end does, is a failed fetch at once.  Entries the library cannot use are skipped, not fatal:
 *    unknown kty or alg, "use" other than "sig" or key_ops without
 *    "verify", symmetric ("oct") keys — a published document never carries
 *    a secret — keys without kid, keys the server's rules refuse (RSA under
 *    2048 bits, points off their curve), and every key of a kid that is
 *    given twice.  A kid is taken as given: a foreign JWKS need not use
 *    RFC 7638 thumbprints as hsmjwt does.
 *  - HS256: the service's HMAC keys never leave its token, so no JWKS holds
 *    them.  An HS256 token naming a published key is unsupported_alg (an
 *    HMAC keyed with a public key is the confusion RFC 8725 §3.1 forbids);
 *    naming any other kid it is unknown_kid, like any unknown kid.  Verify
 *    such tokens with POST /token/verify.
 *
 * https: the peer certificate is always verified (the system trust store,
 * or ca_file), against the URL's host name (SNI sent) or IP address; TLS 1.2
 * at least; no redirects are followed (the status must be 200, or 304).
 * Only the first address a name resolves to is tried.
 *
 * Threads: one struct verify may be used by any number of threads at once.
 * The key set is immutable and reference-counted: a mutex guards only the
 * swap, never a fetch.  One fetch runs at a time; a thread that has a set
 * (even a stale one) goes on with it meanwhile, a thread without one waits.
 * While a fetch runs, SIGPIPE is blocked in the fetching thread and any it
 * raised is discarded, so the caller's signal handling is not disturbed.
 *
 * The library writes warnings (a failed fetch, a stale set in use, a
 * refused cache file) as key=value lines on stderr; stats.last_error holds
 * the last fetch failure.  It never logs a token.
 *
 * Functions return 0 or a negative errno value; outputs are untouched on
 * failure. */
#ifndef HSMJWT_VERIFY_H
#define HSMJWT_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VERIFY_DEFAULT_REFETCH_INTERVAL 30       /* seconds */
#define VERIFY_DEFAULT_MAX_LIFETIME     3600     /* seconds */
#define VERIFY_DEFAULT_MAX_STALE        86400    /* seconds */
#define VERIFY_DEFAULT_TIMEOUT_MS       10000
#define VERIFY_DEFAULT_LEEWAY           30       /* seconds, as the service's default */
#define VERIFY_MAX_JWKS_BYTES           (1024 * 1024)
#define VERIFY_MAX_KEYS                 64
#define VERIFY_KID_MAX                  128

/* Fill with verify_options_init, then set what differs.  Strings are copied
 * by verify_new.  New members are only ever appended (SOVERSION 0). */
struct verify_options {
	const char *jwks_url;        /* http://, https:// or file: URL ... */
	const char *jwks_file;       /* ... or a file path: exactly one of the two.
				      * Anything but a regular file (a FIFO, a device)
				      * is a failed fetch, never waited on */
	const char *cache_file;      /* NULL: none.  The last fetched JWKS, kept across
				      * runs (written 0600, atomically; a file not owned
				      * by the caller, writable by others, a symbolic
				      * link or not a regular file is ignored) */
	const char *ca_file;         /* PEM trust anchors for https; NULL: the system's */
	int64_t refetch_interval;    /* seconds: the least time between two fetch
				      * attempts while a set is held or after a
				      * failure, so also the least lifetime; >= 0 */
	int64_t max_lifetime;        /* seconds: the cap on max-age, and the lifetime
				      * without one; >= 0 */
	int64_t max_stale;           /* seconds a stale set may still be used; >= 0 */
	int64_t timeout_ms;          /* one fetch, connecting to the last byte; > 0 */
	size_t max_jwks_bytes;       /* 1 .. VERIFY_MAX_JWKS_BYTES */
	int64_t leeway;              /* seconds of clock skew on exp/nbf/iat; 0 .. 86400 */
	/* The time in seconds since the epoch, for tokens and the key set's
	 * lifetime; NULL: time(2).  For tests and simulations. */
	int64_t (*clock)(void *clock_ctx);
	void *clock_ctx;
};

/* The defaults above, no source, no cache file. */
void verify_options_init(struct verify_options *opts);

struct verify;

/* 0 and *ret_verify (verify_free it), or -EINVAL (a bad option: no source
 * or two, a URL that is not http, https or file, a number out of range),
 * -ENOMEM.  Reads cache_file if there is one; fetches nothing. */
int verify_new(const struct verify_options *opts, struct verify **ret_verify);
/* NULL is fine.  No verification may be running. */
void verify_free(struct verify *verify);

/* What a token must also carry; NULL members are not checked.  The same
 * meaning as the service's: audience is aud or one of aud[]; typ compares as
 * a media type (RFC 7515 §4.1.9: "at+jwt" is "application/at+jwt"). */
struct verify_expect {
	const char *issuer;
	const char *audience;
	const char *typ;             /* the header's typ */
	const char *token_type;      /* the claim token_type (access, refresh, id, ...) */
};

struct verify_result {
	int valid;                   /* 1: genuine, and every rule and expectation holds */
	/* NULL when valid, else the reason POST /token/verify gives: malformed,
	 * unsupported_alg, unknown_kid, bad_signature, expired, not_yet_valid,
	 * wrong_audience, wrong_issuer, wrong_type.  A static string. */
	const char *error;
	int stale;                   /* decided with a stale key set (see above) */
	/* The header's kid as read, "" when none or not yet read: for logs. */
	char kid[VERIFY_KID_MAX + 1];
	/* Valid only, else NULL: the header and the claims as compact JSON
	 * (members in the token's order), malloc'd; verify_result_clear frees
	 * them.  Text, not a JSON library's objects: the caller's code keeps
	 * its own JSON library, and this header depends on none. */
	char *header_json;
	char *claims_json;
};

/* Verifies token[0..len) (it need not be NUL-terminated).  0: a verdict is
 * in *ret_result (verify_result_clear it), valid or not.  Without a verdict:
 * -EINVAL (NULL arguments), -ENOMEM, or -EIO when no key set can be had (no
 * copy, or only one stale past max_stale, and the fetch failed or was
 * attempted less than refetch_interval ago; stats.last_error says why). */
int verify_token(struct verify *verify, const char *token, size_t len, const struct verify_expect *expect,
		 struct verify_result *ret_result);
/* Frees what a result holds and zeroes it; NULL is fine. */
void verify_result_clear(struct verify_result *result);

struct verify_stats {
	uint64_t fetches;               /* attempts: HTTP requests sent, files read */
	uint64_t fetch_failures;        /* of which failed (status, size, JWKS refused, ...) */
	uint64_t not_modified;          /* 304 answers */
	uint64_t kid_refetches;         /* attempts an unknown kid caused */
	uint64_t kid_refetches_refused; /* unknown kids answered at once: the last
					 * attempt was under refetch_interval ago */
	uint64_t cache_file_loads;      /* key sets read from cache_file */
	size_t keys;                    /* usable keys in the set held (0: none) */
	size_t keys_skipped;            /* entries of its JWKS that were skipped */
	int64_t fetched_at;             /* when the set held was fetched or renewed; 0: none */
	int64_t expires_at;             /* when it goes stale */
	char last_error[160];           /* the last fetch failure, "" when none */
};

/* A consistent snapshot of the counters.  0, or -EINVAL for NULL. */
int verify_get_stats(struct verify *verify, struct verify_stats *ret_stats);

#ifdef __cplusplus
}
#endif

#endif
