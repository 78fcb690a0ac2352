/* codes: authorization codes with PKCE (RFC 6749 §4.1, RFC 7636, SPEC §5.4).
 *
 * A trusted login front end registers a code (POST /codes) for a subject it
 * has authenticated; the client redeems it once at the token endpoint with
 * the PKCE verifier.  Codes live in this process's memory only, shared by
 * the workers under one mutex: a daemon replica behind a load balancer
 * cannot redeem another replica's code, so the token endpoint must be
 * routed to the replica that registered the code (sticky), or the front end
 * must talk to one replica.  A restart forgets every code (60 s of logins
 * redo theirs).
 *
 * Only SHA-256 of a code is kept in the table, never the code: the table
 * itself holds nothing that redeems.  The plaintext does pass through
 * memory briefly — the POST /codes answer and the token request, in
 * libevent's request and response buffers and jansson's strings, which
 * are freed without being wiped — so a dump taken while a code is in
 * flight may show it; the copies this service makes itself (the code in
 * codes_issue, the serialized answer in http_reply_json, a form body's
 * decoding buffer) are wiped.  A code is 32 random bytes, base64url (43
 * characters).
 * It expires CODES_TTL seconds after it was registered (now >= issued +
 * CODES_TTL is expired); the first presentation consumes it, whatever the
 * rest of the request says (RFC 6749 §10.5), and leaves a tombstone that
 * remembers the family of the tokens issued for it, so that a second
 * presentation revokes them (RFC 6749 §4.1.2).  A tombstone lives
 * CODES_TOMBSTONE_TTL (10 minutes) from the redemption, far longer than the
 * code: a replay soon after the code's own 60 s must still be recognised.
 * Ten minutes because a replay is an attacker's use of an intercepted code,
 * which comes soon or not at all; a presentation later than that is
 * answered like an unknown code (nothing revoked), indistinguishable from
 * garbage, and the tokens of the first redemption stay valid.  A tombstone
 * whose redemption has not reached codes_bind yet (the tokens are still
 * being signed) is never dropped, whatever its age: the binder must learn
 * of a reuse.  Expired entries are purged lazily, oldest first, by every
 * call.
 *
 * Bounded: at most CODES_MAX_LIVE live codes and CODES_MAX_BYTES of them
 * (past either, codes_issue answers -ENOSPC), of which CODES_MAX_PER_ORG
 * per org — the grant's org, "" counting as one org of its own (codes
 * without org, which only unconfined callers register) — past which
 * codes_issue answers -EDQUOT for that org alone: a caller confined to one
 * org cannot fill the table that every org's logins share.  A code counts
 * until it is redeemed or expires.  At most CODES_MAX_TOMBSTONES
 * tombstones of about 200 bytes each are kept (past that, the oldest one is
 * dropped early: under a flood of redemptions the window of reuse
 * detection shrinks, logins go on), plus the pending ones, one per
 * redemption in flight.
 *
 * Every function takes the time as an argument, so that expiry is tested
 * with an injected clock. */
#ifndef HSMJWT_CODES_H
#define HSMJWT_CODES_H

#include <stddef.h>
#include <stdint.h>

#define CODES_TTL 60
#define CODES_TOMBSTONE_TTL 600
#define CODES_MAX_LIVE 100000
#define CODES_MAX_PER_ORG 10000
#define CODES_MAX_TOMBSTONES 200000
#define CODES_MAX_BYTES ((size_t)64 << 20)
#define CODES_CODE_LEN 43             /* 32 bytes, base64url */
#define CODES_CHALLENGE_LEN 43        /* BASE64URL(SHA-256(verifier)) */
#define CODES_VERIFIER_MIN 43         /* RFC 7636 §4.1 */
#define CODES_VERIFIER_MAX 128
#define CODES_SUBJECT_MAX 256
#define CODES_CLIENT_ID_MAX 256
#define CODES_REDIRECT_URI_MAX 2048
#define CODES_SCOPE_MAX 1024
#define CODES_NONCE_MAX 512
#define CODES_ORG_MAX 128
#define CODES_FAMILY_MAX 64

struct codes;

/* What a code stands for.  Empty strings are absent members (scope, nonce,
 * org); auth_time 0: the login time is issued_at. */
struct codes_grant {
	char subject[CODES_SUBJECT_MAX + 1];
	char client_id[CODES_CLIENT_ID_MAX + 1];
	char redirect_uri[CODES_REDIRECT_URI_MAX + 1];
	char challenge[CODES_CHALLENGE_LEN + 1];   /* S256 only */
	char scope[CODES_SCOPE_MAX + 1];
	char nonce[CODES_NONCE_MAX + 1];
	char org[CODES_ORG_MAX + 1];
	int64_t auth_time;
	int64_t issued_at;                         /* set by codes_issue */
};

int codes_new(struct codes **ret_codes);
/* Wipes and frees every entry.  NULL is fine. */
void codes_free(struct codes *codes);

/* Registers grant (subject, client_id, redirect_uri and a valid challenge
 * required) at now and writes the new code and a NUL into ret_code.
 * -EINVAL for a bad grant, -EDQUOT when grant->org holds CODES_MAX_PER_ORG
 * live codes, -ENOSPC when full, -EIO when no random bytes. */
int codes_issue(struct codes *codes, const struct codes_grant *grant, int64_t now,
		char ret_code[CODES_CODE_LEN + 1]);

/* The first presentation of code[0..len): 0, the code consumed and
 * *ret_grant what it stood for.  -ENOENT for a code unknown or expired (a
 * malformed one included).  -EALREADY for a code presented before: it is
 * marked reused, and ret_family (CODES_FAMILY_MAX + 1 bytes) gets the
 * family codes_bind gave it, or "" while its first redemption has not bound
 * one (that redemption then learns of the reuse from codes_bind). */
int codes_redeem(struct codes *codes, const char *code, size_t len, int64_t now, struct codes_grant *ret_grant,
		 char *ret_family);

/* Settles a redemption: records the family of the tokens issued for the
 * code, for its tombstone, or "" when the redemption issued nothing (a
 * refused verifier, a failure).  Every successful codes_redeem must be
 * followed by one codes_bind.  0; -EALREADY when the code was presented
 * again since its redemption (the caller revokes the family: the family is
 * recorded all the same); -ENOENT when the code was never redeemed (or is
 * unknown): a caller that issued tokens treats that like -EALREADY. */
int codes_bind(struct codes *codes, const char *code, size_t len, const char *family, int64_t now);

/* Entries held (live codes and tombstones) after purging those expired at
 * now. */
size_t codes_count(struct codes *codes, int64_t now);

/* RFC 7636: a code_challenge of method S256 is 43 base64url characters
 * encoding 32 bytes; a code_verifier is 43..128 characters of
 * [A-Za-z0-9-._~]. */
int codes_challenge_valid(const char *challenge);
int codes_verifier_valid(const char *verifier, size_t len);
/* 1 when verifier[0..len) is valid and BASE64URL(SHA-256(verifier)) equals
 * challenge, compared in constant time (CRYPTO_memcmp), else 0. */
int codes_pkce_matches(const char *challenge, const char *verifier, size_t len);

#endif
