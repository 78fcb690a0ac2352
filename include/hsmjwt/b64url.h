/* b64url: base64url without padding (RFC 7515 §2), strict.
 *
 * Decoding accepts only the canonical form: the alphabet A-Z a-z 0-9 - _, no
 * padding, no whitespace, a length that is not 1 mod 4, and zero spare bits in
 * the last character (RFC 8725: one token, one encoding). */
#ifndef HSMJWT_B64URL_H
#define HSMJWT_B64URL_H

#include <stddef.h>
#include <stdint.h>

/* Bytes needed to encode n bytes, including the terminating NUL. */
size_t b64url_encoded_size(size_t n);
/* Writes the encoding of in[0..n) and a NUL into out (b64url_encoded_size(n)
 * bytes); returns the length written without the NUL. */
size_t b64url_encode(const uint8_t *in, size_t n, char *out);
/* Allocating variant: *ret_str is malloc'd, caller frees. 0 or -ENOMEM. */
int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_str);

/* Upper bound of the decoded size of n characters. */
size_t b64url_decoded_max(size_t n);
/* Decodes in[0..n) into out (at least b64url_decoded_max(n) bytes).
 * 0 and *ret_len, or -EINVAL for any non-canonical input. */
int b64url_decode(const char *in, size_t n, uint8_t *out, size_t *ret_len);
/* Allocating variant; *ret_buf is malloc'd (n == 0 gives a non-NULL empty buffer). */
int b64url_decode_alloc(const char *in, size_t n, uint8_t **ret_buf, size_t *ret_len);

#endif
