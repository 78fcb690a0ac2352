#include "hsmjwt/b64url.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char b64url_alphabet[64] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for the 64 base64url characters, -1 for every other byte (NUL, '=',
 * '+', '/', whitespace, bytes >= 0x80). */
static int b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

size_t b64url_encoded_size(size_t n)
{
	return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0) + 1;
}

size_t b64url_encode(const uint8_t *in, size_t n, char *out)
{
	size_t i = 0, o = 0;

	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = b64url_alphabet[v >> 18 & 63];
		out[o++] = b64url_alphabet[v >> 12 & 63];
		out[o++] = b64url_alphabet[v >> 6 & 63];
		out[o++] = b64url_alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		out[o++] = b64url_alphabet[v >> 18 & 63];
		out[o++] = b64url_alphabet[v >> 12 & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = b64url_alphabet[v >> 18 & 63];
		out[o++] = b64url_alphabet[v >> 12 & 63];
		out[o++] = b64url_alphabet[v >> 6 & 63];
	}
	out[o] = '\0';
	return o;
}

int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_str)
{
	char *s;

	/* encoded_size would wrap long before n reaches SIZE_MAX / 4 * 3. */
	if (n > (SIZE_MAX - 4) / 4 * 3)
		return -ENOMEM;
	s = malloc(b64url_encoded_size(n));
	if (s == NULL)
		return -ENOMEM;
	b64url_encode(in, n, s);
	*ret_str = s;
	return 0;
}

size_t b64url_decoded_max(size_t n)
{
	return n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
}

int b64url_decode(const char *in, size_t n, uint8_t *out, size_t *ret_len)
{
	size_t i, o = 0, rest = n % 4;
	int last;

	/* One leftover character carries only 6 of the 8 bits of a byte: no
	 * encoder produces it. */
	if (rest == 1)
		return -EINVAL;
	/* Validate everything before writing, so that out is untouched when the
	 * input is refused. */
	for (i = 0; i < n; i++) {
		if (b64url_value((unsigned char)in[i]) < 0)
			return -EINVAL;
	}
	/* Spare bits must be zero (RFC 4648 §3.5 canonical encoding): otherwise
	 * several strings decode to the same bytes and a token would have more
	 * than one valid spelling. */
	if (rest) {
		last = b64url_value((unsigned char)in[n - 1]);
		if (last & (rest == 2 ? 15 : 3))
			return -EINVAL;
	}
	for (i = 0; i + 4 <= n; i += 4) {
		uint32_t v = (uint32_t)b64url_value((unsigned char)in[i]) << 18 |
			     (uint32_t)b64url_value((unsigned char)in[i + 1]) << 12 |
			     (uint32_t)b64url_value((unsigned char)in[i + 2]) << 6 |
			     (uint32_t)b64url_value((unsigned char)in[i + 3]);
		out[o++] = (uint8_t)(v >> 16);
		out[o++] = (uint8_t)(v >> 8);
		out[o++] = (uint8_t)v;
	}
	if (rest) {
		uint32_t v = (uint32_t)b64url_value((unsigned char)in[i]) << 18 |
			     (uint32_t)b64url_value((unsigned char)in[i + 1]) << 12;
		if (rest == 3)
			v |= (uint32_t)b64url_value((unsigned char)in[i + 2]) << 6;
		out[o++] = (uint8_t)(v >> 16);
		if (rest == 3)
			out[o++] = (uint8_t)(v >> 8);
	}
	*ret_len = o;
	return 0;
}

int b64url_decode_alloc(const char *in, size_t n, uint8_t **ret_buf, size_t *ret_len)
{
	size_t len = 0, max = b64url_decoded_max(n);
	uint8_t *buf;
	int r;

	/* malloc(0) may return NULL; callers are promised a real buffer. */
	buf = malloc(max ? max : 1);
	if (buf == NULL)
		return -ENOMEM;
	r = b64url_decode(in, n, buf, &len);
	if (r < 0) {
		free(buf);
		return r;
	}
	*ret_buf = buf;
	*ret_len = len;
	return 0;
}
