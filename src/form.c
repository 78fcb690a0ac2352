#include "hsmjwt/form.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

static int form_hex(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes in[0..n) ('+' is a space, %XX a byte) into out, which has room
 * for n + 1 bytes (decoding never lengthens), NUL-terminated; *ret_len is
 * the decoded length.  A NUL, encoded or raw, is refused: C readers of the
 * value would see it cut short there, and the endpoints read it in C. */
static int form_decode(const char *in, size_t n, char *out, size_t *ret_len)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			int hi, lo;

			if (n - i < 3)
				return -EINVAL;
			hi = form_hex((unsigned char)in[i + 1]);
			lo = form_hex((unsigned char)in[i + 2]);
			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		}
		if (c == '\0')
			return -EINVAL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	*ret_len = o;
	return 0;
}

int form_parse(const char *buf, size_t len, json_t **ret_object)
{
	const char *reason = NULL;
	json_t *object = NULL, *name_str = NULL, *value_str = NULL;
	char *scratch = NULL;
	size_t fields = 0, pos = 0;	/* fields: non-empty pairs so far */
	int r;

	if (buf == NULL && len > 0)
		return -EINVAL;
	object = json_object();
	/* name and value decode into one buffer: together they are never
	 * longer than the body, whose size the HTTP layer bounds. */
	scratch = malloc(len + 2);
	if (object == NULL || scratch == NULL) {
		r = -ENOMEM;
		goto out;
	}
	while (pos < len) {
		const char *pair = buf + pos, *amp, *eq;
		size_t pair_len, name_len, value_len;
		char *name, *value;

		amp = memchr(pair, '&', len - pos);
		pair_len = amp != NULL ? (size_t)(amp - pair) : len - pos;
		pos += pair_len + 1;
		if (pair_len == 0)
			continue;
		if (++fields > FORM_MAX_FIELDS) {
			reason = "too_many_fields";
			r = -EINVAL;
			goto out;
		}
		eq = memchr(pair, '=', pair_len);
		name_len = eq != NULL ? (size_t)(eq - pair) : pair_len;
		if (name_len == 0) {
			reason = "empty_name";
			r = -EINVAL;
			goto out;
		}
		name = scratch;
		r = form_decode(pair, name_len, name, &name_len);
		if (r < 0) {
			reason = "bad_name_encoding";
			goto out;
		}
		value = name + name_len + 1;
		if (eq != NULL)
			r = form_decode(eq + 1, pair_len - (size_t)(eq - pair) - 1, value, &value_len);
		else
			r = form_decode("", 0, value, &value_len);
		if (r < 0) {
			reason = "bad_value_encoding";
			goto out;
		}
		/* The name is checked as a JSON string: object keys take it
		 * unchecked below. */
		r = json_utf8_string(name, name_len, &name_str);
		if (r == 0)
			r = json_utf8_string(value, value_len, &value_str);
		if (r < 0) {
			reason = "not_utf8";
			goto out;
		}
		if (json_object_get(object, name) != NULL) {
			reason = "repeated_name";
			r = -EINVAL;
			goto out;
		}
		if (json_object_set_new_nocheck(object, json_string_value(name_str), value_str) < 0) {
			value_str = NULL;
			r = -ENOMEM;
			goto out;
		}
		value_str = NULL;
		json_decref(name_str);
		name_str = NULL;
	}
	*ret_object = object;
	object = NULL;
	r = 0;
out:
	/* Reason and field number only: the body holds secrets
	 * (client_secret, tokens), and a client can cause this line at will,
	 * hence debug. */
	if (r == -EINVAL && reason != NULL)
		log_debug("\"form body refused\" reason=%s field=%zu", reason, fields);
	json_decref(name_str);
	json_decref(value_str);
	json_decref(object);
	/* It held the last pair decoded: a refresh token, a code, a
	 * verifier. */
	if (scratch != NULL)
		OPENSSL_cleanse(scratch, len + 2);
	free(scratch);
	return r;
}
