/* statuslist: the draft's own examples reproduced byte for byte, every lst
 * read back through OpenSSL's base64 and zlib's uncompress (not the
 * module's code path), URIs, the status claim's list/idx split, the strict
 * list-number parser, and the signed-list cache (generation, age, bound). */
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
#include <jansson.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "fixture.h"
#include "hsmjwt/statuslist.h"

#define SENTINEL_STR ((char *)(uintptr_t)0x1)
#define SENTINEL_JSON ((json_t *)(uintptr_t)0x1)
#define LIST_BYTES ((size_t)STATUSLIST_SIZE * STATUSLIST_BITS / 8)

/* base64url -> bytes with OpenSSL's standard-alphabet decoder, so that the
 * check does not go through the project's b64url module.  Refuses '=' and
 * the standard alphabet's '+' '/', which base64url never contains. */
static uint8_t *b64url_oracle_decode(const char *s, size_t *ret_len)
{
	size_t n = strlen(s), pad = (4 - n % 4) % 4;
	char *std = malloc(n + pad + 1);
	uint8_t *out = malloc(n + pad);
	int len;

	assert_non_null(std);
	assert_non_null(out);
	assert_int_not_equal(n % 4, 1);
	for (size_t i = 0; i < n; i++) {
		assert_true(s[i] != '+' && s[i] != '/' && s[i] != '=');
		std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
	}
	memset(std + n, '=', pad);
	std[n + pad] = '\0';
	len = EVP_DecodeBlock(out, (const unsigned char *)std, (int)(n + pad));
	assert_true(len >= (int)pad);
	free(std);
	/* EVP_DecodeBlock counts the padding's zero bytes too. */
	*ret_len = (size_t)len - pad;
	return out;
}

/* lst -> the packed entries, via the oracle and zlib's uncompress, which
 * reads only the RFC 1950 format (it refuses raw deflate and gzip).  Also
 * checks the zlib header: deflate, and FLEVEL 3 (the best level). */
static uint8_t *lst_oracle_decode(const char *lst, size_t max, size_t *ret_len)
{
	size_t zlen;
	uint8_t *z = b64url_oracle_decode(lst, &zlen);
	uint8_t *out = malloc(max ? max : 1);
	uLongf out_len = max;

	assert_non_null(out);
	assert_true(zlen >= 2);
	assert_int_equal(z[0] & 0x0f, 8);                       /* CM = deflate */
	assert_int_equal(((unsigned)z[0] << 8 | z[1]) % 31, 0);  /* FCHECK */
	assert_int_equal(z[1] >> 6, 3);                          /* FLEVEL = maximum */
	assert_int_equal(uncompress(out, &out_len, z, zlen), Z_OK);
	free(z);
	*ret_len = out_len;
	return out;
}

/* The draft's read rule (§4.1): entry i of a bits-wide list is bits
 * [i*bits, (i+1)*bits) counting from each byte's least significant bit. */
static unsigned entry_at(const uint8_t *packed, unsigned bits, size_t i)
{
	return packed[i * bits / 8] >> (i * bits % 8) & ((1u << bits) - 1);
}

/* lst reads back, through the oracle alone, to bytes[0..n), whose first
 * count bits-wide entries are entries[]. */
static void assert_lst_holds(const char *lst, const uint8_t *bytes, size_t n, unsigned bits,
			     const unsigned *entries, size_t count)
{
	uint8_t *decoded;
	size_t len;

	decoded = lst_oracle_decode(lst, 64, &len);
	assert_int_equal(len, n);
	assert_memory_equal(decoded, bytes, n);
	for (size_t i = 0; i < count; i++)
		assert_int_equal(entry_at(decoded, bits, i), entries[i]);
	free(decoded);
}

static char *encode_ok(const uint8_t *bits, size_t len)
{
	char *lst = NULL;

	assert_int_equal(statuslist_encode(bits, len, &lst), 0);
	assert_non_null(lst);
	return lst;
}

/* Entries 0..11 = 1,2,0,3 0,1,0,1 1,2,3,3, packed by hand two bits each,
 * least significant first: 1 | 2<<2 | 0<<4 | 3<<6 = 0xc9, 0 | 1<<2 | 0<<4 |
 * 1<<6 = 0x44, 1 | 2<<2 | 3<<4 | 3<<6 = 0xf9.  These are also the entries
 * and bytes of the draft's 2-bit example, whose lst is "eNo76fITAAPfAgc". */
static const unsigned example2_entries[12] = { 1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3 };
static const uint8_t example2_bytes[3] = { 0xc9, 0x44, 0xf9 };
static const char example2_lst[] = "eNo76fITAAPfAgc";
/* The draft's 1-bit example: 16 entries, bytes b9 a3. */
static const unsigned example1_entries[16] = { 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1 };
static const uint8_t example1_bytes[2] = { 0xb9, 0xa3 };
static const char example1_lst[] = "eNrbuRgAAhcBXQ";

static void test_hand_computed_layout(void **state)
{
	uint8_t packed[3] = { 0 };
	char *lst;

	/* The layout the header states, written out bit by bit, gives the
	 * hand-computed bytes... */
	for (size_t i = 0; i < 12; i++)
		packed[i * 2 / 8] |= (uint8_t)(example2_entries[i] << (i * 2 % 8));
	assert_memory_equal(packed, example2_bytes, sizeof(packed));
	/* ...and an encoded list reads back, through zlib alone, to those
	 * bytes and entries. */
	lst = encode_ok(example2_bytes, sizeof(example2_bytes));
	assert_lst_holds(lst, example2_bytes, 3, 2, example2_entries, 12);
	free(lst);
}

static void test_draft_examples_byte_identical(void **state)
{
	char *lst;

	/* The draft's lst values decode to the draft's entries... */
	assert_lst_holds(example2_lst, example2_bytes, sizeof(example2_bytes), 2, example2_entries, 12);
	assert_lst_holds(example1_lst, example1_bytes, sizeof(example1_bytes), 1, example1_entries, 16);

	/* ...and at the best level, our encoding of those bytes is the draft's
	 * text exactly. */
	lst = encode_ok(example2_bytes, sizeof(example2_bytes));
	assert_string_equal(lst, example2_lst);
	free(lst);
	lst = encode_ok(example1_bytes, sizeof(example1_bytes));
	assert_string_equal(lst, example1_lst);
	free(lst);
}

/* A whole list, encoded, reads back through the oracle alone to itself;
 * the length of its lst. */
static size_t assert_list_round_trip(const uint8_t *bits)
{
	char *lst = encode_ok(bits, LIST_BYTES);
	uint8_t *decoded;
	size_t len, lst_len = strlen(lst);

	decoded = lst_oracle_decode(lst, LIST_BYTES + 1, &len);
	assert_int_equal(len, LIST_BYTES);
	assert_memory_equal(decoded, bits, LIST_BYTES);
	free(decoded);
	free(lst);
	return lst_len;
}

static void test_full_list_round_trip(void **state)
{
	uint8_t *bits = malloc(LIST_BYTES);
	uint32_t x = 2463534242u;

	assert_non_null(bits);
	/* A sparse list, as a real one is: mostly valid, some revoked or
	 * suspended entries at pseudo-random places. */
	memset(bits, 0, LIST_BYTES);
	for (size_t i = 0; i < 3000; i++) {
		size_t idx;

		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		idx = x % STATUSLIST_SIZE;
		bits[idx / 4] |= (uint8_t)((1 + x / STATUSLIST_SIZE % 2) << (idx % 4 * 2));
	}
	assert_list_round_trip(bits);

	/* Worst case for deflate: every byte different, nothing to compress. */
	for (size_t i = 0; i < LIST_BYTES; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		bits[i] = (uint8_t)x;
	}
	assert_list_round_trip(bits);

	/* An all-valid list is what most lists are: it must stay tiny. */
	memset(bits, 0, LIST_BYTES);
	assert_true(assert_list_round_trip(bits) < 100);
	free(bits);
}

static void test_encode_limits(void **state)
{
	uint8_t *bits = calloc(1, LIST_BYTES + 1), *decoded;
	char *lst = SENTINEL_STR;
	size_t len;

	assert_non_null(bits);
	/* More than one list's entries is a caller's mistake. */
	assert_int_equal(statuslist_encode(bits, LIST_BYTES + 1, &lst), -E2BIG);
	assert_ptr_equal(lst, SENTINEL_STR);
	assert_int_equal(statuslist_encode(NULL, 1, &lst), -EINVAL);
	assert_ptr_equal(lst, SENTINEL_STR);
	/* Nothing at all is still a valid zlib stream. */
	lst = encode_ok(NULL, 0);
	decoded = lst_oracle_decode(lst, 16, &len);
	assert_int_equal(len, 0);
	free(decoded);
	free(lst);
	free(bits);
}

static void assert_uri(const char *issuer, uint32_t list, const char *want)
{
	char uri[STATUSLIST_URI_MAX];

	memset(uri, 'x', sizeof(uri));
	assert_int_equal(statuslist_uri(issuer, list, uri, sizeof(uri)), 0);
	assert_string_equal(uri, want);
}

static void test_uri(void **state)
{
	char uri[STATUSLIST_URI_MAX + 8], issuer[STATUSLIST_URI_MAX + 8];
	size_t suffix = strlen("/statuslists/7");

	assert_uri("https://issuer.example", 0, "https://issuer.example/statuslists/0");
	assert_uri("https://issuer.example/", 7, "https://issuer.example/statuslists/7");
	assert_uri("https://issuer.example/tenant", 65535, "https://issuer.example/tenant/statuslists/65535");
	assert_uri("https://issuer.example/tenant/", 4294967295u,
		   "https://issuer.example/tenant/statuslists/4294967295");

	/* The buffer is too small by one: refused, untouched. */
	memset(uri, 'x', sizeof(uri));
	assert_int_equal(statuslist_uri("https://a.example", 7, uri, strlen("https://a.example/statuslists/7")),
			 -ENAMETOOLONG);
	assert_int_equal(uri[0], 'x');
	assert_int_equal(statuslist_uri("https://a.example", 7, uri, strlen("https://a.example/statuslists/7") + 1),
			 0);
	assert_string_equal(uri, "https://a.example/statuslists/7");

	/* STATUSLIST_URI_MAX bytes with the NUL fit; one more does not, even
	 * in a bigger buffer. */
	memset(issuer, 'i', sizeof(issuer));
	issuer[STATUSLIST_URI_MAX - 1 - suffix] = '\0';
	assert_int_equal(statuslist_uri(issuer, 7, uri, sizeof(uri)), 0);
	assert_int_equal(strlen(uri), STATUSLIST_URI_MAX - 1);
	issuer[STATUSLIST_URI_MAX - 1 - suffix] = 'i';
	issuer[STATUSLIST_URI_MAX - suffix] = '\0';
	memset(uri, 'x', sizeof(uri));
	assert_int_equal(statuslist_uri(issuer, 7, uri, sizeof(uri)), -ENAMETOOLONG);
	assert_int_equal(uri[0], 'x');
	/* Its trailing '/' is dropped before the length counts. */
	issuer[STATUSLIST_URI_MAX - 1 - suffix] = '/';
	assert_int_equal(statuslist_uri(issuer, 7, uri, sizeof(uri)), 0);
	assert_int_equal(strlen(uri), STATUSLIST_URI_MAX - 1);
	/* An issuer longer than the buffer altogether. */
	memset(issuer, 'i', sizeof(issuer) - 1);
	issuer[sizeof(issuer) - 1] = '\0';
	assert_int_equal(statuslist_uri(issuer, 7, uri, sizeof(uri)), -ENAMETOOLONG);
}

static void assert_claim(uint32_t global_idx, json_int_t idx, const char *uri)
{
	json_t *claim = NULL, *want;

	assert_int_equal(statuslist_claim("https://issuer.example/", global_idx, &claim), 0);
	want = json_pack("{s:{s:I,s:s}}", "status_list", "idx", idx, "uri", uri);
	assert_non_null(want);
	/* json_equal: exactly these members, no more. */
	assert_true(json_equal(claim, want));
	json_decref(claim);
	json_decref(want);
}

static void test_claim(void **state)
{
	json_t *claim = SENTINEL_JSON;

	assert_int_equal(STATUSLIST_SIZE, 65536);
	assert_claim(0, 0, "https://issuer.example/statuslists/0");
	assert_claim(1, 1, "https://issuer.example/statuslists/0");
	assert_claim(65535, 65535, "https://issuer.example/statuslists/0");
	assert_claim(65536, 0, "https://issuer.example/statuslists/1");
	assert_claim(7u * 65536 + 42, 42, "https://issuer.example/statuslists/7");
	assert_claim(4294967295u, 65535, "https://issuer.example/statuslists/65535");

	assert_int_equal(statuslist_claim(NULL, 1, &claim), -EINVAL);
	assert_ptr_equal(claim, SENTINEL_JSON);
	/* An issuer that is not UTF-8 cannot become a JSON string. */
	assert_int_equal(statuslist_claim("https://\xff.example", 1, &claim), -EINVAL);
	assert_ptr_equal(claim, SENTINEL_JSON);
}

static void test_claims(void **state)
{
	json_t *claims = NULL, *want;

	assert_int_equal(statuslist_claims("https://issuer.example/statuslists/3", example2_lst, 1700000000, &claims),
			 0);
	want = json_pack("{s:s,s:I,s:I,s:i,s:{s:i,s:s}}", "sub", "https://issuer.example/statuslists/3", "iat",
			 (json_int_t)1700000000, "exp", (json_int_t)(1700000000 + 86400), "ttl", 60, "status_list",
			 "bits", 2, "lst", example2_lst);
	assert_non_null(want);
	assert_true(json_equal(claims, want));
	json_decref(claims);
	json_decref(want);

	claims = SENTINEL_JSON;
	/* exp = iat + lifetime would overflow. */
	assert_int_equal(statuslist_claims("u", "l", INT64_MAX - STATUSLIST_LIFETIME + 1, &claims), -ERANGE);
	assert_ptr_equal(claims, SENTINEL_JSON);
	assert_int_equal(statuslist_claims("u", "l", INT64_MAX - STATUSLIST_LIFETIME, &claims), 0);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), INT64_MAX);
	json_decref(claims);
	claims = SENTINEL_JSON;
	assert_int_equal(statuslist_claims("\xc3", "l", 1, &claims), -EINVAL);
	assert_int_equal(statuslist_claims(NULL, "l", 1, &claims), -EINVAL);
	assert_int_equal(statuslist_claims("u", NULL, 1, &claims), -EINVAL);
	assert_ptr_equal(claims, SENTINEL_JSON);
}

/* Out of memory while building a claim is -ENOMEM (a 500), not the -EINVAL
 * of a bad input, at every allocation jansson makes; nothing leaks (ASan). */
static void test_claims_out_of_memory(void **state)
{
	json_t *claim = SENTINEL_JSON, *claims = SENTINEL_JSON;
	int r = -ENOMEM, failures = 0;

	for (int budget = 0; r == -ENOMEM && budget < 1000; budget++) {
		fixture_json_fail_after(budget);
		r = statuslist_claim("https://issuer.example", 70000, &claim);
		if (r == -ENOMEM) {
			assert_ptr_equal(claim, SENTINEL_JSON);
			failures++;
		}
	}
	assert_int_equal(r, 0);
	assert_true(failures >= 4);
	json_decref(claim);
	r = -ENOMEM;
	failures = 0;
	for (int budget = 0; r == -ENOMEM && budget < 1000; budget++) {
		fixture_json_fail_after(budget);
		r = statuslist_claims("https://issuer.example/statuslists/1", example2_lst, 1700000000, &claims);
		if (r == -ENOMEM) {
			assert_ptr_equal(claims, SENTINEL_JSON);
			failures++;
		}
	}
	fixture_json_alloc_restore();
	assert_int_equal(r, 0);
	assert_true(failures >= 8);
	json_decref(claims);
}

static void assert_number(const char *text, uint32_t want)
{
	uint32_t list = 0xdeadbeef;

	assert_int_equal(statuslist_parse_number(text, strlen(text), &list), 0);
	assert_int_equal(list, want);
}

static void assert_number_refused_len(const char *text, size_t len)
{
	uint32_t list = 0xdeadbeef;

	assert_int_equal(statuslist_parse_number(text, len, &list), -EINVAL);
	assert_int_equal(list, 0xdeadbeef);
}

static void assert_number_refused(const char *text)
{
	assert_number_refused_len(text, strlen(text));
}

static void test_parse_number(void **state)
{
	static const char *const refused[] = {
		"",          /* empty */
		"00", "01", "007", "065535",                 /* leading zero */
		"+1", "-1", "-0", "+0",                      /* sign */
		" 1", "1 ", "1\t", "\n1", "1 2",             /* spaces */
		"65536", "65540", "100000", "4294967295",    /* beyond UINT32_MAX / SIZE */
		"4294967296", "18446744073709551617",        /* overflow of uint32, uint64 */
		"99999999999999999999999999999999999999999", /* any length */
		"1a", "a1", "0x1", "1e3", "1.0", "１",        /* not decimal ASCII (the last: fullwidth one) */
		"1/", "/1", "1?x", "%31",
	};
	uint32_t list;

	assert_number("0", 0);
	assert_number("1", 1);
	assert_number("10", 10);
	assert_number("65535", 65535);
	assert_int_equal(UINT32_MAX / STATUSLIST_SIZE, 65535);
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		assert_number_refused(refused[i]);
	/* A buffer, not a string: len is authoritative both ways. */
	assert_int_equal(statuslist_parse_number("12", 1, &list), 0);
	assert_int_equal(list, 1);
	assert_number_refused_len("1\0", 2);
	assert_number_refused_len(NULL, 0);
}

static char *cache_get(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t now)
{
	char *jwt = SENTINEL_STR;
	int r = statuslist_cache_get(cache, list, generation, now, &jwt);

	if (r == -ENOENT) {
		assert_ptr_equal(jwt, SENTINEL_STR);
		return NULL;
	}
	assert_int_equal(r, 0);
	assert_non_null(jwt);
	assert_ptr_not_equal(jwt, SENTINEL_STR);
	return jwt;
}

static void assert_hit(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t now,
		       const char *want)
{
	char *jwt = cache_get(cache, list, generation, now);

	assert_non_null(jwt);
	assert_string_equal(jwt, want);
	free(jwt);
}

static void assert_miss(struct statuslist_cache *cache, uint32_t list, uint64_t generation, int64_t now)
{
	assert_null(cache_get(cache, list, generation, now));
}

static void test_cache_generation_and_age(void **state)
{
	struct statuslist_cache *cache = NULL;
	char jwt[] = "header.payload.sig-a";
	char *got;

	assert_int_equal(statuslist_cache_new(&cache), 0);
	assert_miss(cache, 5, 1, 1000);

	assert_int_equal(statuslist_cache_put(cache, 5, 1, 1000, jwt), 0);
	/* Copied in: the caller's buffer may change afterwards. */
	jwt[0] = 'X';
	assert_hit(cache, 5, 1, 1000, "header.payload.sig-a");
	/* Copied out: two gets are two buffers. */
	got = cache_get(cache, 5, 1, 1000);
	assert_non_null(got);
	got[0] = 'Y';
	assert_hit(cache, 5, 1, 1000, "header.payload.sig-a");
	free(got);

	/* Another generation or another list is a miss. */
	assert_miss(cache, 5, 2, 1000);
	assert_miss(cache, 5, 0, 1000);
	assert_miss(cache, 6, 1, 1000);
	assert_miss(cache, 4, 1, 1000);
	/* Age: fresh up to and including STATUSLIST_TTL seconds after
	 * signing, stale one second later. */
	assert_hit(cache, 5, 1, 1000 + STATUSLIST_TTL, "header.payload.sig-a");
	assert_miss(cache, 5, 1, 1000 + STATUSLIST_TTL + 1);
	assert_hit(cache, 5, 1, 999, "header.payload.sig-a");

	/* A put for the same list replaces its entry. */
	assert_int_equal(statuslist_cache_put(cache, 5, 2, 1100, "header.payload.sig-b"), 0);
	assert_hit(cache, 5, 2, 1100, "header.payload.sig-b");
	assert_miss(cache, 5, 1, 1100);
	/* Re-signed after aging out, same generation. */
	assert_int_equal(statuslist_cache_put(cache, 5, 2, 1200, "header.payload.sig-c"), 0);
	assert_hit(cache, 5, 2, 1200 + STATUSLIST_TTL, "header.payload.sig-c");

	/* The last possible list works; beyond it nothing can be cached. */
	assert_int_equal(statuslist_cache_put(cache, 65535, 9, 1000, "last"), 0);
	assert_hit(cache, 65535, 9, 1000, "last");
	assert_int_equal(statuslist_cache_put(cache, 65536, 9, 1000, "beyond"), -EINVAL);
	assert_miss(cache, 65536, 9, 1000);
	assert_miss(cache, UINT32_MAX, 9, 1000);

	/* Clocks at the edges of int64 do not wrap the age check. */
	assert_int_equal(statuslist_cache_put(cache, 7, 1, INT64_MIN, "early"), 0);
	assert_hit(cache, 7, 1, INT64_MIN, "early");
	assert_hit(cache, 7, 1, INT64_MIN + STATUSLIST_TTL, "early");
	assert_miss(cache, 7, 1, INT64_MAX);
	statuslist_cache_free(cache);
	statuslist_cache_free(NULL);
}

static void test_cache_refuses(void **state)
{
	struct statuslist_cache *cache = NULL;
	size_t big_len = 65536 + 1;
	char *big = malloc(big_len + 1);

	assert_non_null(big);
	assert_int_equal(statuslist_cache_new(&cache), 0);
	assert_int_equal(statuslist_cache_put(cache, 1, 1, 1000, NULL), -EINVAL);
	/* A signed list is ~31 kB at most: a much bigger value is refused
	 * rather than held STATUSLIST_CACHE_MAX times. */
	memset(big, 'a', big_len);
	big[big_len] = '\0';
	assert_int_equal(statuslist_cache_put(cache, 1, 1, 1000, big), -E2BIG);
	assert_miss(cache, 1, 1, 1000);
	big[big_len - 1] = '\0';
	assert_int_equal(statuslist_cache_put(cache, 1, 1, 1000, big), 0);
	assert_hit(cache, 1, 1, 1000, big);
	free(big);
	statuslist_cache_free(cache);
}

static void test_cache_eviction_bound(void **state)
{
	struct statuslist_cache *cache = NULL;
	const uint32_t victim = 100;
	size_t hits = 0;
	char jwt[32];

	assert_int_equal(statuslist_cache_new(&cache), 0);
	/* Fill it; signing times fall as list numbers rise, except that the
	 * victim is the oldest of all, so "oldest signed" is neither the
	 * first nor the last put. */
	for (uint32_t list = 0; list < STATUSLIST_CACHE_MAX; list++) {
		snprintf(jwt, sizeof(jwt), "jwt-%u", list);
		assert_int_equal(statuslist_cache_put(cache, list, 1, list == victim ? 1 : 100000 - list, jwt), 0);
	}
	/* Re-putting a cached list takes no new slot. */
	for (int i = 0; i < 10; i++)
		assert_int_equal(statuslist_cache_put(cache, 0, 1, 100000, "jwt-0"), 0);
	for (uint32_t list = 0; list < STATUSLIST_CACHE_MAX; list++) {
		snprintf(jwt, sizeof(jwt), "jwt-%u", list);
		assert_hit(cache, list, 1, list == victim ? 1 : list == 0 ? 100000 : 100000 - list, jwt);
	}

	/* One more list displaces the victim and nothing else. */
	assert_int_equal(statuslist_cache_put(cache, 60000, 1, 200000, "jwt-60000"), 0);
	assert_miss(cache, victim, 1, 1);
	assert_hit(cache, 60000, 1, 200000, "jwt-60000");
	for (uint32_t list = 0; list < STATUSLIST_CACHE_MAX; list++) {
		if (list == victim)
			continue;
		snprintf(jwt, sizeof(jwt), "jwt-%u", list);
		assert_hit(cache, list, 1, list == 0 ? 100000 : 100000 - list, jwt);
	}

	/* Then the next oldest: list STATUSLIST_CACHE_MAX - 1. */
	assert_int_equal(statuslist_cache_put(cache, 60001, 1, 200000, "jwt-60001"), 0);
	assert_miss(cache, STATUSLIST_CACHE_MAX - 1, 1, 100000 - (STATUSLIST_CACHE_MAX - 1));
	assert_hit(cache, 60000, 1, 200000, "jwt-60000");

	/* Many more lists than it holds: it never holds more than
	 * STATUSLIST_CACHE_MAX, and holds the newest ones. */
	for (uint32_t list = 10000; list < 10000 + 3 * STATUSLIST_CACHE_MAX; list++) {
		snprintf(jwt, sizeof(jwt), "jwt-%u", list);
		assert_int_equal(statuslist_cache_put(cache, list, 1, 300000 + list, jwt), 0);
	}
	for (uint32_t list = 0; list <= 65535; list++) {
		/* now = signed_at of each put: fresh whenever still cached. */
		int64_t now = list >= 10000 && list < 10000 + 3 * STATUSLIST_CACHE_MAX ? 300000 + (int64_t)list :
			      list >= 60000 ? 200000 : list == 0 ? 100000 : list == victim ? 1 : 100000 - (int64_t)list;
		char *got = cache_get(cache, list, 1, now);

		if (got != NULL) {
			hits++;
			assert_true(list >= 10000 + 2 * STATUSLIST_CACHE_MAX);
			free(got);
		}
	}
	assert_int_equal(hits, STATUSLIST_CACHE_MAX);
	statuslist_cache_free(cache);
}

struct cache_worker {
	struct statuslist_cache *cache;
	unsigned id;
	int failures;
};

/* Each worker writes and reads its own lists and some shared ones; a get
 * must return either a miss or exactly a value some worker put for that
 * list and generation. */
static void *cache_worker_run(void *arg)
{
	struct cache_worker *w = arg;
	char jwt[32], *got;

	for (unsigned i = 0; i < 20000; i++) {
		uint32_t list = i % 2 ? w->id * 1000 + i % 50 : i % 7;
		uint64_t generation = i % 3;

		snprintf(jwt, sizeof(jwt), "l%u-g%u", (unsigned)list, (unsigned)generation);
		if (statuslist_cache_put(w->cache, list, generation, 1000, jwt) != 0)
			w->failures++;
		got = NULL;
		if (statuslist_cache_get(w->cache, list, generation, 1000, &got) == 0) {
			if (strcmp(got, jwt) != 0)
				w->failures++;
			free(got);
		}
	}
	return NULL;
}

static void test_cache_threads(void **state)
{
	struct cache_worker workers[4];
	pthread_t threads[4];
	struct statuslist_cache *cache = NULL;

	assert_int_equal(statuslist_cache_new(&cache), 0);
	for (unsigned i = 0; i < 4; i++) {
		workers[i] = (struct cache_worker){ cache, i + 1, 0 };
		assert_int_equal(pthread_create(&threads[i], NULL, cache_worker_run, &workers[i]), 0);
	}
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(threads[i], NULL), 0);
		assert_int_equal(workers[i].failures, 0);
	}
	/* A private list holds the last value its worker put: list id*1000+49
	 * was last put at i = 19999, generation 19999 % 3 = 1. */
	for (unsigned i = 1; i <= 4; i++) {
		char want[32];

		snprintf(want, sizeof(want), "l%u-g1", i * 1000 + 49);
		assert_hit(cache, i * 1000 + 49, 1, 1000, want);
		assert_miss(cache, i * 1000 + 49, 0, 1000);
	}
	statuslist_cache_free(cache);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hand_computed_layout),
		cmocka_unit_test(test_draft_examples_byte_identical),
		cmocka_unit_test(test_full_list_round_trip),
		cmocka_unit_test(test_encode_limits),
		cmocka_unit_test(test_uri),
		cmocka_unit_test(test_claim),
		cmocka_unit_test(test_claims),
		cmocka_unit_test(test_claims_out_of_memory),
		cmocka_unit_test(test_parse_number),
		cmocka_unit_test(test_cache_generation_and_age),
		cmocka_unit_test(test_cache_refuses),
		cmocka_unit_test(test_cache_eviction_bound),
		cmocka_unit_test(test_cache_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
