/* codes: authorization codes with an injected clock — one use, expiry at
 * exactly CODES_TTL, tombstones that remember the family of the tokens a
 * code gave (bound before or after a second presentation) for
 * CODES_TOMBSTONE_TTL after the redemption, past the code's own expiry, a
 * pending redemption's tombstone never purged before its bind, the
 * live-code, byte, per-org and tombstone limits and the purge that frees
 * them,
 * malformed and unknown
 * codes, two threads redeeming one code, and PKCE S256: RFC 7636 Appendix
 * B's vector, wrong and malformed verifiers, and the comparison made by
 * CRYPTO_memcmp over the whole challenge (interposed below). */
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
#include <openssl/crypto.h>

#include "hsmjwt/codes.h"

#define NOW 1800000000LL
/* RFC 7636 Appendix B. */
#define VERIFIER "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
#define CHALLENGE "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

/* ---- CRYPTO_memcmp, interposed: the executable's definition is the one
 * codes.c links to, so every comparison it makes is seen here. ---------- */

static int memcmp_calls;
static size_t memcmp_last_len;

int CRYPTO_memcmp(const void *in_a, const void *in_b, size_t len)
{
	const unsigned char *a = in_a, *b = in_b;
	unsigned char x = 0;

	memcmp_calls++;
	memcmp_last_len = len;
	for (size_t i = 0; i < len; i++)
		x |= a[i] ^ b[i];
	return x;
}

/* ---- helpers ---------------------------------------------------------- */

static struct codes *new_codes(void)
{
	struct codes *codes = NULL;

	assert_int_equal(codes_new(&codes), 0);
	assert_non_null(codes);
	return codes;
}

static struct codes_grant make_grant(const char *subject)
{
	struct codes_grant g;

	memset(&g, 0, sizeof(g));
	snprintf(g.subject, sizeof(g.subject), "%s", subject);
	snprintf(g.client_id, sizeof(g.client_id), "app-1");
	snprintf(g.redirect_uri, sizeof(g.redirect_uri), "https://app.example/cb?x=1");
	snprintf(g.challenge, sizeof(g.challenge), "%s", CHALLENGE);
	snprintf(g.scope, sizeof(g.scope), "read write");
	snprintf(g.nonce, sizeof(g.nonce), "n-0S6_WzA2Mj");
	snprintf(g.org, sizeof(g.org), "org-a");
	g.auth_time = NOW - 5;
	return g;
}

static void issue_ok(struct codes *codes, const char *subject, int64_t now, char code[CODES_CODE_LEN + 1])
{
	struct codes_grant g = make_grant(subject);

	assert_int_equal(codes_issue(codes, &g, now, code), 0);
	assert_int_equal(strlen(code), CODES_CODE_LEN);
	assert_int_equal(strspn(code, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
			 CODES_CODE_LEN);
}

static int redeem(struct codes *codes, const char *code, int64_t now, struct codes_grant *g, char *family)
{
	return codes_redeem(codes, code, strlen(code), now, g, family);
}

/* ---- single use and tombstones ------------------------------------------ */

static void test_single_use(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant want = make_grant("alice"), got;
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "alice", NOW, code);
	assert_int_equal(codes_count(codes, NOW), 1);
	memset(&got, 0x55, sizeof(got));
	assert_int_equal(redeem(codes, code, NOW + 1, &got, family), 0);
	assert_string_equal(got.subject, want.subject);
	assert_string_equal(got.client_id, want.client_id);
	assert_string_equal(got.redirect_uri, want.redirect_uri);
	assert_string_equal(got.challenge, want.challenge);
	assert_string_equal(got.scope, want.scope);
	assert_string_equal(got.nonce, want.nonce);
	assert_string_equal(got.org, want.org);
	assert_int_equal(got.auth_time, want.auth_time);
	assert_int_equal(got.issued_at, NOW);

	/* Second presentation: refused, no grant handed out, no family yet. */
	memset(&got, 0x55, sizeof(got));
	memset(family, 'x', sizeof(family));
	assert_int_equal(redeem(codes, code, NOW + 2, &got, family), -EALREADY);
	assert_string_equal(family, "");
	assert_int_equal((unsigned char)got.subject[0], 0x55);
	/* The first redemption binds afterwards and learns of the reuse; the
	 * family is kept for later presentations all the same. */
	assert_int_equal(codes_bind(codes, code, strlen(code), "FAMILY-1", NOW + 3), -EALREADY);
	assert_int_equal(redeem(codes, code, NOW + 4, &got, family), -EALREADY);
	assert_string_equal(family, "FAMILY-1");
	/* The tombstone still counts until the code's expiry. */
	assert_int_equal(codes_count(codes, NOW + 4), 1);
	codes_free(codes);
}

static void test_bind_then_reuse(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], other[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "bob", NOW, code);
	issue_ok(codes, "carol", NOW, other);
	assert_string_not_equal(code, other);
	/* Binding a code not redeemed yet, or unknown, is refused. */
	assert_int_equal(codes_bind(codes, other, strlen(other), "F", NOW), -ENOENT);
	assert_int_equal(codes_bind(codes, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", CODES_CODE_LEN, "F", NOW),
			 -ENOENT);
	assert_int_equal(redeem(codes, code, NOW, &got, family), 0);
	assert_int_equal(codes_bind(codes, code, strlen(code), "jti-of-the-refresh-token", NOW + 1), 0);
	assert_int_equal(redeem(codes, code, NOW + 30, &got, family), -EALREADY);
	assert_string_equal(family, "jti-of-the-refresh-token");
	/* The other code is untouched by all this. */
	assert_int_equal(redeem(codes, other, NOW + 30, &got, family), 0);
	assert_string_equal(got.subject, "carol");
	/* A family longer than a jti is refused. */
	{
		char longfam[CODES_FAMILY_MAX + 2];
		memset(longfam, 'f', sizeof(longfam) - 1);
		longfam[sizeof(longfam) - 1] = '\0';
		assert_int_equal(codes_bind(codes, other, strlen(other), longfam, NOW + 31), -EINVAL);
	}
	codes_free(codes);
}

/* ---- expiry ------------------------------------------------------------ */

static void test_expiry_exactly_ttl(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char a[CODES_CODE_LEN + 1], b[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "a", NOW, a);
	issue_ok(codes, "b", NOW, b);
	/* One second before CODES_TTL it still redeems... */
	assert_int_equal(redeem(codes, a, NOW + CODES_TTL - 1, &got, family), 0);
	assert_int_equal(codes_bind(codes, a, strlen(a), "FAM-A", NOW + CODES_TTL - 1), 0);
	/* ...at exactly CODES_TTL an unused code is gone, while a's tombstone
	 * is not: it lives from the redemption. */
	assert_int_equal(redeem(codes, b, NOW + CODES_TTL, &got, family), -ENOENT);
	assert_int_equal(redeem(codes, a, NOW + CODES_TTL, &got, family), -EALREADY);
	assert_string_equal(family, "FAM-A");
	assert_int_equal(codes_count(codes, NOW + CODES_TTL), 1);
	codes_free(codes);
}

static void test_tombstone_until_expiry(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "d", NOW, code);
	assert_int_equal(redeem(codes, code, NOW + 10, &got, family), 0);
	assert_int_equal(codes_bind(codes, code, strlen(code), "FAM", NOW + 10), 0);
	assert_int_equal(redeem(codes, code, NOW + CODES_TTL, &got, family), -EALREADY);
	assert_string_equal(family, "FAM");
	assert_int_equal(redeem(codes, code, NOW + 10 + CODES_TOMBSTONE_TTL - 1, &got, family), -EALREADY);
	assert_string_equal(family, "FAM");
	assert_int_equal(codes_count(codes, NOW + 10 + CODES_TOMBSTONE_TTL - 1), 1);
	/* Ten minutes after the redemption a presentation is a stranger's. */
	assert_int_equal(redeem(codes, code, NOW + 10 + CODES_TOMBSTONE_TTL, &got, family), -ENOENT);
	assert_int_equal(codes_count(codes, NOW + 10 + CODES_TOMBSTONE_TTL), 0);
	codes_free(codes);
}

/* Review scenario A: a code issued at 1000, redeemed at 1050 and replayed
 * at 1061, after its own 60 s: the replay must find the family to revoke. */
static void test_replay_after_code_expiry(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "scenario-a", 1000, code);
	assert_int_equal(redeem(codes, code, 1050, &got, family), 0);
	assert_int_equal(codes_bind(codes, code, strlen(code), "FAMILY-A", 1050), 0);
	memset(family, 'x', sizeof(family));
	assert_int_equal(redeem(codes, code, 1061, &got, family), -EALREADY);
	assert_string_equal(family, "FAMILY-A");
	codes_free(codes);
}

/* Review scenario B: issued at 2000, redeemed at 2059, presented again at
 * 2059 (before the bind), and the first redemption's bind coming after
 * the code's expiry at 2060, when other calls have purged: the binder must
 * still hear of the reuse. */
static void test_reuse_race_at_expiry(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], other[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "scenario-b", 2000, code);
	assert_int_equal(redeem(codes, code, 2059, &got, family), 0);
	assert_int_equal(redeem(codes, code, 2059, &got, family), -EALREADY);
	assert_string_equal(family, "");
	/* Other workers' calls purge meanwhile. */
	assert_int_equal(codes_count(codes, 2061), 1);
	issue_ok(codes, "someone else", 2061, other);
	assert_int_equal(codes_bind(codes, code, strlen(code), "FAMILY-B", 2061), -EALREADY);
	/* The family is kept for later presentations. */
	assert_int_equal(redeem(codes, code, 2062, &got, family), -EALREADY);
	assert_string_equal(family, "FAMILY-B");
	codes_free(codes);
}

/* A redemption whose tokens take longer than a tombstone's life to sign:
 * its entry stays until it is bound, then lives a tombstone's life. */
static void test_pending_never_purged(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];
	const int64_t late = NOW + 3 * CODES_TOMBSTONE_TTL;

	issue_ok(codes, "slow", NOW, code);
	assert_int_equal(redeem(codes, code, NOW, &got, family), 0);
	assert_int_equal(codes_count(codes, late), 1);
	assert_int_equal(redeem(codes, code, late, &got, family), -EALREADY);
	assert_string_equal(family, "");
	assert_int_equal(codes_bind(codes, code, strlen(code), "SLOW", late), -EALREADY);
	assert_int_equal(codes_count(codes, late + CODES_TOMBSTONE_TTL - 1), 1);
	assert_int_equal(codes_count(codes, late + CODES_TOMBSTONE_TTL), 0);
	/* Settled without tokens (""), an entry expires like any tombstone. */
	issue_ok(codes, "refused", late, code);
	assert_int_equal(redeem(codes, code, late, &got, family), 0);
	assert_int_equal(codes_bind(codes, code, strlen(code), "", late), 0);
	assert_int_equal(redeem(codes, code, late + 1, &got, family), -EALREADY);
	assert_string_equal(family, "");
	assert_int_equal(codes_count(codes, late + CODES_TOMBSTONE_TTL), 0);
	codes_free(codes);
}

/* ---- limits ------------------------------------------------------------- */

static void test_live_limit(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant g;
	char code[CODES_CODE_LEN + 1], first[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	memset(&g, 0, sizeof(g));
	snprintf(g.subject, sizeof(g.subject), "s");
	snprintf(g.client_id, sizeof(g.client_id), "c");
	snprintf(g.redirect_uri, sizeof(g.redirect_uri), "x:y");
	snprintf(g.challenge, sizeof(g.challenge), "%s", CHALLENGE);
	/* Ten orgs, each exactly at its quota when the table is full. */
	assert_int_equal(CODES_MAX_LIVE % CODES_MAX_PER_ORG, 0);
	snprintf(g.org, sizeof(g.org), "o0");
	assert_int_equal(codes_issue(codes, &g, NOW, first), 0);
	for (int i = 1; i < CODES_MAX_LIVE; i++) {
		snprintf(g.org, sizeof(g.org), "o%d", i % (CODES_MAX_LIVE / CODES_MAX_PER_ORG));
		assert_int_equal(codes_issue(codes, &g, NOW + (i >= CODES_MAX_LIVE / 2), code), 0);
	}
	assert_int_equal(codes_count(codes, NOW + 1), CODES_MAX_LIVE);
	/* Full: an org under its quota gets -ENOSPC, one at it -EDQUOT. */
	memset(code, 'z', sizeof(code));
	assert_int_equal(codes_issue(codes, &g, NOW + 1, code), -EDQUOT);
	snprintf(g.org, sizeof(g.org), "fresh");
	assert_int_equal(codes_issue(codes, &g, NOW + 1, code), -ENOSPC);
	assert_int_equal((unsigned char)code[0], 'z');
	/* A redemption frees its code's place (the tombstone is counted
	 * apart)... */
	assert_int_equal(redeem(codes, first, NOW + 1, &g, family), 0);
	assert_int_equal(codes_bind(codes, first, strlen(first), "F", NOW + 1), 0);
	snprintf(g.org, sizeof(g.org), "fresh");
	assert_int_equal(codes_issue(codes, &g, NOW + 1, code), 0);
	assert_int_equal(codes_count(codes, NOW + 1), CODES_MAX_LIVE + 1);
	assert_int_equal(codes_issue(codes, &g, NOW + 1, code), -ENOSPC);
	/* ...and the expiry of the first half frees theirs: left are the
	 * codes of NOW + 1, one more, and the tombstone. */
	assert_int_equal(codes_issue(codes, &g, NOW + CODES_TTL, code), 0);
	assert_int_equal(codes_count(codes, NOW + CODES_TTL), CODES_MAX_LIVE / 2 + 1 + 1 + 1);
	codes_free(codes);
}

#define PAYLOAD_MAX (CODES_SUBJECT_MAX + CODES_CLIENT_ID_MAX + CODES_REDIRECT_URI_MAX + CODES_CHALLENGE_LEN + \
		     CODES_SCOPE_MAX + CODES_NONCE_MAX + CODES_ORG_MAX + 7)

static void test_byte_limit(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant g;
	char code[CODES_CODE_LEN + 1];
	size_t issued = 0;
	int r;

	/* Every field at its longest: the byte budget runs out long before
	 * CODES_MAX_LIVE codes. */
	memset(&g, 0, sizeof(g));
	memset(g.subject, 's', sizeof(g.subject) - 1);
	memset(g.client_id, 'c', sizeof(g.client_id) - 1);
	memcpy(g.redirect_uri, "https://", 8);
	memset(g.redirect_uri + 8, 'r', sizeof(g.redirect_uri) - 9);
	snprintf(g.challenge, sizeof(g.challenge), "%s", CHALLENGE);
	memset(g.scope, 'p', sizeof(g.scope) - 1);
	memset(g.nonce, 'n', sizeof(g.nonce) - 1);
	memset(g.org, 'o', sizeof(g.org) - 1);
	/* Spread over four orgs of the longest name: the quota of one would
	 * stop this before the bytes do. */
	while ((r = codes_issue(codes, &g, NOW, code)) == 0) {
		issued++;
		g.org[0] = (char)('a' + issued % 4);
	}
	assert_int_equal(r, -ENOSPC);
	/* What it holds is the strings (each field's NUL included) and a
	 * small header per code, less than 512 bytes. */
	assert_true(issued * PAYLOAD_MAX <= CODES_MAX_BYTES);
	assert_true((issued + 1) * (PAYLOAD_MAX + 512) > CODES_MAX_BYTES);
	assert_int_equal(codes_count(codes, NOW), issued);
	/* The budget comes back with the expiry. */
	assert_int_equal(codes_issue(codes, &g, NOW + CODES_TTL, code), 0);
	assert_int_equal(codes_count(codes, NOW + CODES_TTL), 1);
	codes_free(codes);
}

/* Past CODES_MAX_TOMBSTONES the oldest tombstone goes early, unless its
 * redemption is still pending. */
static void test_tombstone_limit(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char pending[CODES_CODE_LEN + 1], oldest[CODES_CODE_LEN + 1], second[CODES_CODE_LEN + 1];
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	issue_ok(codes, "pending", NOW, pending);
	assert_int_equal(redeem(codes, pending, NOW, &got, family), 0);
	issue_ok(codes, "oldest", NOW, oldest);
	assert_int_equal(redeem(codes, oldest, NOW, &got, family), 0);
	assert_int_equal(codes_bind(codes, oldest, strlen(oldest), "OLDEST", NOW), 0);
	issue_ok(codes, "second", NOW, second);
	assert_int_equal(redeem(codes, second, NOW, &got, family), 0);
	assert_int_equal(codes_bind(codes, second, strlen(second), "SECOND", NOW), 0);
	for (int i = 3; i < CODES_MAX_TOMBSTONES; i++) {
		issue_ok(codes, "filler", NOW + 1, code);
		assert_int_equal(redeem(codes, code, NOW + 1, &got, family), 0);
		assert_int_equal(codes_bind(codes, code, strlen(code), "", NOW + 1), 0);
	}
	assert_int_equal(codes_count(codes, NOW + 1), CODES_MAX_TOMBSTONES);
	/* All three still there at the limit. */
	assert_int_equal(redeem(codes, oldest, NOW + 1, &got, family), -EALREADY);
	assert_string_equal(family, "OLDEST");
	/* One more: the pending one moves back, the oldest bound one goes. */
	issue_ok(codes, "one more", NOW + 1, code);
	assert_int_equal(redeem(codes, code, NOW + 1, &got, family), 0);
	assert_int_equal(codes_count(codes, NOW + 1), CODES_MAX_TOMBSTONES);
	assert_int_equal(redeem(codes, oldest, NOW + 1, &got, family), -ENOENT);
	assert_int_equal(redeem(codes, second, NOW + 1, &got, family), -EALREADY);
	assert_string_equal(family, "SECOND");
	assert_int_equal(redeem(codes, pending, NOW + 1, &got, family), -EALREADY);
	assert_string_equal(family, "");
	assert_int_equal(codes_bind(codes, pending, strlen(pending), "PENDING", NOW + 1), -EALREADY);
	codes_free(codes);
}

/* CODES_MAX_PER_ORG live codes per org ("" being one more org): past it
 * that org alone is refused, until one of its codes is redeemed or
 * expires. */
static void test_org_quota(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant a = make_grant("a"), b = make_grant("b"), none = make_grant("n"), got;
	char code[CODES_CODE_LEN + 1], first[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1];

	snprintf(a.org, sizeof(a.org), "org-a");
	snprintf(b.org, sizeof(b.org), "org-b");
	none.org[0] = '\0';
	assert_int_equal(codes_issue(codes, &a, NOW, first), 0);
	for (int i = 1; i < CODES_MAX_PER_ORG; i++)
		assert_int_equal(codes_issue(codes, &a, NOW + 1, code), 0);
	memset(code, 'z', sizeof(code));
	assert_int_equal(codes_issue(codes, &a, NOW + 1, code), -EDQUOT);
	assert_int_equal((unsigned char)code[0], 'z');
	/* Other orgs, and codes without org, are not affected. */
	assert_int_equal(codes_issue(codes, &b, NOW + 1, code), 0);
	assert_int_equal(codes_issue(codes, &none, NOW + 1, code), 0);
	assert_int_equal(codes_count(codes, NOW + 1), CODES_MAX_PER_ORG + 2);
	/* A redemption frees a place of org-a, and only one. */
	assert_int_equal(redeem(codes, first, NOW + 1, &got, family), 0);
	assert_int_equal(codes_bind(codes, first, strlen(first), "F", NOW + 1), 0);
	assert_int_equal(codes_issue(codes, &a, NOW + 1, code), 0);
	assert_int_equal(codes_issue(codes, &a, NOW + 1, code), -EDQUOT);
	/* So does an expiry: all of org-a's codes were issued at NOW + 1. */
	assert_int_equal(codes_issue(codes, &a, NOW + CODES_TTL, code), -EDQUOT);
	assert_int_equal(codes_issue(codes, &a, NOW + 1 + CODES_TTL, code), 0);
	/* "" is an org of its own with the same quota. */
	for (int i = 0; i < CODES_MAX_PER_ORG; i++)
		assert_int_equal(codes_issue(codes, &none, NOW + 2 + CODES_TTL, code), 0);
	assert_int_equal(codes_issue(codes, &none, NOW + 2 + CODES_TTL, code), -EDQUOT);
	assert_int_equal(codes_issue(codes, &a, NOW + 2 + CODES_TTL, code), 0);
	assert_int_equal(codes_issue(codes, &b, NOW + 2 + CODES_TTL, code), 0);
	codes_free(codes);
}

/* ---- what is refused ---------------------------------------------------- */

static void test_malformed_and_unknown(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant got;
	char code[CODES_CODE_LEN + 1], family[CODES_FAMILY_MAX + 1], altered[CODES_CODE_LEN + 2];

	issue_ok(codes, "e", NOW, code);
	/* One character off, one short, one long, a '+', a NUL inside, NULL. */
	memcpy(altered, code, sizeof(code));
	altered[0] = altered[0] == 'A' ? 'B' : 'A';
	assert_int_equal(redeem(codes, altered, NOW, &got, family), -ENOENT);
	assert_int_equal(codes_redeem(codes, code, CODES_CODE_LEN - 1, NOW, &got, family), -ENOENT);
	memcpy(altered, code, CODES_CODE_LEN);
	altered[CODES_CODE_LEN] = 'A';
	altered[CODES_CODE_LEN + 1] = '\0';
	assert_int_equal(redeem(codes, altered, NOW, &got, family), -ENOENT);
	memcpy(altered, code, sizeof(code));
	altered[5] = '+';
	assert_int_equal(redeem(codes, altered, NOW, &got, family), -ENOENT);
	memcpy(altered, code, sizeof(code));
	altered[5] = '\0';
	assert_int_equal(codes_redeem(codes, altered, CODES_CODE_LEN, NOW, &got, family), -ENOENT);
	assert_int_equal(codes_redeem(codes, NULL, CODES_CODE_LEN, NOW, &got, family), -ENOENT);
	/* None of that consumed the real code. */
	assert_int_equal(redeem(codes, code, NOW, &got, family), 0);
	codes_free(codes);
}

static void test_issue_refuses_bad_grants(void **state)
{
	struct codes *codes = new_codes();
	struct codes_grant g;
	char code[CODES_CODE_LEN + 1];

	g = make_grant("");
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	g = make_grant("f");
	g.client_id[0] = '\0';
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	g = make_grant("f");
	g.redirect_uri[0] = '\0';
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	g = make_grant("f");
	g.challenge[42] = '\0';
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	g = make_grant("f");
	memset(g.nonce, 'n', sizeof(g.nonce));   /* unterminated */
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	g = make_grant("f");
	g.auth_time = -1;
	assert_int_equal(codes_issue(codes, &g, NOW, code), -EINVAL);
	assert_int_equal(codes_count(codes, NOW), 0);
	codes_free(codes);
}

/* ---- concurrency -------------------------------------------------------- */

struct race {
	struct codes *codes;
	const char *code;
	pthread_barrier_t *barrier;
	int result;
};

static void *race_redeem(void *arg)
{
	struct race *r = arg;
	struct codes_grant g;
	char family[CODES_FAMILY_MAX + 1];

	pthread_barrier_wait(r->barrier);
	r->result = codes_redeem(r->codes, r->code, strlen(r->code), NOW, &g, family);
	return NULL;
}

static void test_two_threads_one_code(void **state)
{
	struct codes *codes = new_codes();

	for (int round = 0; round < 200; round++) {
		char code[CODES_CODE_LEN + 1];
		pthread_barrier_t barrier;
		struct race races[2];
		pthread_t threads[2];
		int wins = 0;

		issue_ok(codes, "race", NOW, code);
		assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
		for (int i = 0; i < 2; i++) {
			races[i] = (struct race){ codes, code, &barrier, 1 };
			assert_int_equal(pthread_create(&threads[i], NULL, race_redeem, &races[i]), 0);
		}
		for (int i = 0; i < 2; i++) {
			assert_int_equal(pthread_join(threads[i], NULL), 0);
			assert_true(races[i].result == 0 || races[i].result == -EALREADY);
			wins += races[i].result == 0;
		}
		assert_int_equal(wins, 1);
		pthread_barrier_destroy(&barrier);
	}
	codes_free(codes);
}

/* ---- PKCE ---------------------------------------------------------------- */

static void test_pkce_vector_and_wrong_verifiers(void **state)
{
	char v[CODES_VERIFIER_MAX + 2];

	assert_true(codes_challenge_valid(CHALLENGE));
	assert_int_equal(codes_pkce_matches(CHALLENGE, VERIFIER, strlen(VERIFIER)), 1);
	/* Last character changed. */
	snprintf(v, sizeof(v), "%s", VERIFIER);
	v[strlen(v) - 1] = 'Y';
	assert_int_equal(codes_pkce_matches(CHALLENGE, v, strlen(v)), 0);
	/* The right verifier against another challenge. */
	assert_int_equal(codes_pkce_matches("F9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", VERIFIER, strlen(VERIFIER)), 0);
	/* A prefix of the right verifier (42 characters: too short anyway). */
	assert_int_equal(codes_pkce_matches(CHALLENGE, VERIFIER, strlen(VERIFIER) - 1), 0);
	/* plain: the challenge itself as the verifier. */
	assert_int_equal(codes_pkce_matches(CHALLENGE, CHALLENGE, strlen(CHALLENGE)), 0);
	assert_int_equal(codes_pkce_matches(NULL, VERIFIER, strlen(VERIFIER)), 0);
	assert_int_equal(codes_pkce_matches("short", VERIFIER, strlen(VERIFIER)), 0);
}

static void test_verifier_syntax(void **state)
{
	char v[CODES_VERIFIER_MAX + 2];

	memset(v, 'a', sizeof(v));
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN - 1));
	assert_true(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	assert_true(codes_verifier_valid(v, CODES_VERIFIER_MAX));
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MAX + 1));
	memcpy(v, "-._~AZaz09", 10);
	assert_true(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	v[3] = '+';
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	v[3] = '/';
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	v[3] = '=';
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	v[3] = ' ';
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	v[3] = '\0';
	assert_false(codes_verifier_valid(v, CODES_VERIFIER_MIN));
	assert_false(codes_verifier_valid(NULL, CODES_VERIFIER_MIN));
	/* Challenges: exactly 43 canonical base64url characters of 32 bytes. */
	assert_false(codes_challenge_valid("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"));
	assert_false(codes_challenge_valid("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cMA"));
	assert_false(codes_challenge_valid("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"));
	/* Non-zero spare bits in the last character: not canonical. */
	assert_false(codes_challenge_valid("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"));
	assert_false(codes_challenge_valid(NULL));
}

static void test_pkce_compares_in_constant_time(void **state)
{
	char v[CODES_VERIFIER_MAX + 1];

	/* A match, a verifier whose digest differs from the start, and the
	 * right verifier against a challenge differing in its last character:
	 * each is one CRYPTO_memcmp over the whole challenge. */
	memcmp_calls = 0;
	assert_int_equal(codes_pkce_matches(CHALLENGE, VERIFIER, strlen(VERIFIER)), 1);
	assert_int_equal(memcmp_calls, 1);
	assert_int_equal(memcmp_last_len, CODES_CHALLENGE_LEN);
	snprintf(v, sizeof(v), "%s", VERIFIER);
	v[0] = 'e';
	memcmp_calls = 0;
	memcmp_last_len = 0;
	assert_int_equal(codes_pkce_matches(CHALLENGE, v, strlen(v)), 0);
	assert_int_equal(memcmp_calls, 1);
	assert_int_equal(memcmp_last_len, CODES_CHALLENGE_LEN);
	memcmp_calls = 0;
	memcmp_last_len = 0;
	assert_int_equal(codes_pkce_matches("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cA", VERIFIER, strlen(VERIFIER)), 0);
	assert_int_equal(memcmp_calls, 1);
	assert_int_equal(memcmp_last_len, CODES_CHALLENGE_LEN);
	/* A malformed verifier is refused before any comparison. */
	memcmp_calls = 0;
	assert_int_equal(codes_pkce_matches(CHALLENGE, "short", 5), 0);
	assert_int_equal(memcmp_calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_use),
		cmocka_unit_test(test_bind_then_reuse),
		cmocka_unit_test(test_expiry_exactly_ttl),
		cmocka_unit_test(test_tombstone_until_expiry),
		cmocka_unit_test(test_replay_after_code_expiry),
		cmocka_unit_test(test_reuse_race_at_expiry),
		cmocka_unit_test(test_pending_never_purged),
		cmocka_unit_test(test_tombstone_limit),
		cmocka_unit_test(test_live_limit),
		cmocka_unit_test(test_byte_limit),
		cmocka_unit_test(test_org_quota),
		cmocka_unit_test(test_malformed_and_unknown),
		cmocka_unit_test(test_issue_refuses_bad_grants),
		cmocka_unit_test(test_two_threads_one_code),
		cmocka_unit_test(test_pkce_vector_and_wrong_verifiers),
		cmocka_unit_test(test_verifier_syntax),
		cmocka_unit_test(test_pkce_compares_in_constant_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
