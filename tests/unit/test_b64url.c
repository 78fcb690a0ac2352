/* b64url: RFC 4648 vectors, round trips against OpenSSL's base64 as an
 * independent oracle, and every non-canonical spelling refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "hsmjwt/b64url.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Decodes s (strlen) and expects -EINVAL with the outputs untouched. */
static void assert_rejected(const char *s, size_t n)
{
	uint8_t out[256];
	uint8_t *buf = (uint8_t *)"sentinel";
	size_t len = 12345;

	memset(out, 0xa5, sizeof(out));
	assert_true(b64url_decoded_max(n) <= sizeof(out));
	assert_int_equal(b64url_decode(s, n, out, &len), -EINVAL);
	assert_int_equal(len, 12345);
	for (size_t i = 0; i < sizeof(out); i++)
		assert_int_equal(out[i], 0xa5);
	assert_int_equal(b64url_decode_alloc(s, n, &buf, &len), -EINVAL);
	assert_string_equal((const char *)buf, "sentinel");
	assert_int_equal(len, 12345);
}

static void assert_decodes(const char *s, const void *want, size_t want_len)
{
	uint8_t out[256];
	uint8_t *buf = NULL;
	size_t len = 0;

	assert_int_equal(b64url_decode(s, strlen(s), out, &len), 0);
	assert_int_equal(len, want_len);
	assert_memory_equal(out, want, want_len);
	assert_int_equal(b64url_decode_alloc(s, strlen(s), &buf, &len), 0);
	assert_non_null(buf);
	assert_int_equal(len, want_len);
	if (want_len)
		assert_memory_equal(buf, want, want_len);
	free(buf);
}

static void assert_encodes(const void *in, size_t n, const char *want)
{
	char out[256];
	char *s = NULL;

	assert_int_equal(b64url_encoded_size(n), strlen(want) + 1);
	memset(out, 'x', sizeof(out));
	assert_int_equal(b64url_encode(in, n, out), strlen(want));
	assert_string_equal(out, want);
	assert_int_equal(b64url_encode_alloc(in, n, &s), 0);
	assert_string_equal(s, want);
	free(s);
}

static void test_rfc4648_vectors(void **state)
{
	/* RFC 4648 §10 with the padding removed (RFC 7515 §2). */
	static const struct { const char *plain, *enc; } v[] = {
		{ "", "" },
		{ "f", "Zg" },
		{ "fo", "Zm8" },
		{ "foo", "Zm9v" },
		{ "foob", "Zm9vYg" },
		{ "fooba", "Zm9vYmE" },
		{ "foobar", "Zm9vYmFy" },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		assert_encodes(v[i].plain, strlen(v[i].plain), v[i].enc);
		assert_decodes(v[i].enc, v[i].plain, strlen(v[i].plain));
	}
}

static void test_url_alphabet(void **state)
{
	/* The bytes that standard base64 spells with '+' and '/'. */
	static const uint8_t dash[] = { 0xfb, 0xef, 0xbe };
	static const uint8_t under[] = { 0xff, 0xff, 0xff };
	static const uint8_t mixed[] = { 0xfb, 0xff };
	static const uint8_t rfc7515[] = { 3, 236, 255, 224, 193 };

	assert_encodes(dash, sizeof(dash), "----");
	assert_decodes("----", dash, sizeof(dash));
	assert_encodes(under, sizeof(under), "____");
	assert_decodes("____", under, sizeof(under));
	assert_encodes(mixed, sizeof(mixed), "-_8");
	assert_decodes("-_8", mixed, sizeof(mixed));
	/* RFC 7515 Appendix C. */
	assert_encodes(rfc7515, sizeof(rfc7515), "A-z_4ME");
	assert_decodes("A-z_4ME", rfc7515, sizeof(rfc7515));
}

static void test_sizes(void **state)
{
	static const size_t enc[] = { 1, 3, 4, 5, 7, 8, 9, 11, 12 };

	for (size_t n = 0; n < sizeof(enc) / sizeof(enc[0]); n++)
		assert_int_equal(b64url_encoded_size(n), enc[n]);
	assert_int_equal(b64url_decoded_max(0), 0);
	assert_int_equal(b64url_decoded_max(2), 1);
	assert_int_equal(b64url_decoded_max(3), 2);
	assert_int_equal(b64url_decoded_max(4), 3);
	assert_int_equal(b64url_decoded_max(43), 32);
	assert_int_equal(b64url_decoded_max(86), 64);
}

/* Deterministic so that a failure reproduces. */
static uint32_t xorshift(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Standard padded base64 from OpenSSL, translated to the URL alphabet. */
static void oracle_encode(const uint8_t *in, size_t n, char *out)
{
	int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

	for (int i = 0; i < len; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
		else if (out[i] == '=')
			out[i] = '\0';
	}
	out[len] = '\0';
}

static void test_round_trips(void **state)
{
	uint32_t seed = 0x9e3779b9u;

	for (int round = 0; round < 16; round++) {
		for (size_t n = 0; n <= 64; n++) {
			uint8_t in[64], out[64];
			char enc[128], want[128];
			size_t len = 0;

			for (size_t i = 0; i < n; i++)
				in[i] = (uint8_t)xorshift(&seed);
			assert_int_equal(b64url_encode(in, n, enc), b64url_encoded_size(n) - 1);
			oracle_encode(in, n, want);
			assert_string_equal(enc, want);
			assert_true(b64url_decoded_max(strlen(enc)) >= n);
			assert_int_equal(b64url_decode(enc, strlen(enc), out, &len), 0);
			assert_int_equal(len, n);
			if (n)
				assert_memory_equal(out, in, n);
		}
	}
}

static void test_empty_alloc(void **state)
{
	uint8_t *buf = NULL;
	size_t len = 99;
	char *s = NULL;

	assert_int_equal(b64url_decode_alloc("", 0, &buf, &len), 0);
	assert_non_null(buf);
	assert_int_equal(len, 0);
	free(buf);
	assert_int_equal(b64url_encode_alloc(NULL, 0, &s), 0);
	assert_string_equal(s, "");
	free(s);
}

static void test_padding_rejected(void **state)
{
	assert_rejected("Zg==", 4);
	assert_rejected("Zg=", 3);
	assert_rejected("Zm8=", 4);
	assert_rejected("Zm9vYg==", 8);
	assert_rejected("Zm9v=", 5);
	assert_rejected("====", 4);
	assert_rejected("Zm9v====", 8);
}

static void test_standard_alphabet_rejected(void **state)
{
	assert_rejected("++++", 4);
	assert_rejected("////", 4);
	assert_rejected("+_8", 3);
	assert_rejected("-/8", 3);
	assert_rejected("A+z_4ME", 7);
}

static void test_whitespace_rejected(void **state)
{
	assert_rejected(" Zm9v", 5);
	assert_rejected("Zm9v ", 5);
	assert_rejected("Zm 9v", 5);
	assert_rejected("Zm9v\n", 5);
	assert_rejected("Zm9v\r\n", 6);
	assert_rejected("Zm\t9v", 5);
	assert_rejected("Zm9vYmFy\nZm9v", 13);
	/* Same length as a valid string, so only the character is wrong. */
	assert_rejected("Zm9 ", 4);
	assert_rejected("Zm9\n", 4);
}

static void test_length_one_mod_four_rejected(void **state)
{
	/* Every single character, valid or not, is refused alone. */
	for (size_t i = 0; i < 64; i++) {
		char s[2] = { alphabet[i], '\0' };
		assert_rejected(s, 1);
	}
	assert_rejected("Zm9vY", 5);
	assert_rejected("Zm9vYmFyA", 9);
}

/* For a tail of 2 characters the last one carries 4 spare bits, for 3 it
 * carries 2: every one of the 64 possible last characters is tried, and
 * exactly those with zero spare bits are accepted. */
static void test_spare_bits(void **state)
{
	for (size_t i = 0; i < 64; i++) {
		char two[] = { 'Q', alphabet[i], '\0' };
		char three[] = { 'Z', 'm', alphabet[i], '\0' };
		char six[] = { 'Z', 'm', '9', 'v', 'Y', alphabet[i], '\0' };
		uint8_t out[8];
		size_t len = 0;

		if (i & 15) {
			assert_rejected(two, 2);
			assert_rejected(six, 6);
		} else {
			assert_int_equal(b64url_decode(two, 2, out, &len), 0);
			assert_int_equal(len, 1);
			assert_int_equal(out[0], (uint8_t)(16 << 2 | i >> 4));
			assert_int_equal(b64url_decode(six, 6, out, &len), 0);
			assert_int_equal(len, 4);
		}
		if (i & 3) {
			assert_rejected(three, 3);
		} else {
			assert_int_equal(b64url_decode(three, 3, out, &len), 0);
			assert_int_equal(len, 2);
			assert_int_equal(out[0], 'f');
			assert_int_equal(out[1], (uint8_t)(0x6 << 4 | i >> 2));
		}
	}
	/* "Zh" and "Zm9" are the classic second spellings of "f" and "fo". */
	assert_rejected("Zh", 2);
	assert_rejected("Zm9", 3);
}

static void test_nul_and_high_bytes_rejected(void **state)
{
	assert_rejected("Zm\0v", 4);
	assert_rejected("\0\0\0\0", 4);
	assert_rejected("Zm9v\0", 5);
	assert_rejected("Zm9vYg\0\0", 8);
	/* Every byte outside the alphabet, in every position of a quad. */
	for (int c = 0; c < 256; c++) {
		if (c && strchr(alphabet, c))
			continue;
		for (int pos = 0; pos < 4; pos++) {
			char s[5] = "Zm9v";
			s[pos] = (char)c;
			assert_rejected(s, 4);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc4648_vectors),
		cmocka_unit_test(test_url_alphabet),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_round_trips),
		cmocka_unit_test(test_empty_alloc),
		cmocka_unit_test(test_padding_rejected),
		cmocka_unit_test(test_standard_alphabet_rejected),
		cmocka_unit_test(test_whitespace_rejected),
		cmocka_unit_test(test_length_one_mod_four_rejected),
		cmocka_unit_test(test_spare_bits),
		cmocka_unit_test(test_nul_and_high_bytes_rejected),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
