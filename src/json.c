#include "hsmjwt/json.h"

#include <errno.h>
#include <string.h>

#include "hsmjwt/log.h"

/* Nesting depth of buf counted over brackets outside strings, stopping as soon
 * as it exceeds max_depth.  For valid JSON this is exactly the depth jansson
 * will see; for invalid JSON it may be off, but jansson stops at the first
 * error, and up to that point both read the same tokens.  So the recursion in
 * jansson never goes deeper than max_depth, whatever the input. */
static int json_check_depth(const char *buf, size_t len, size_t max_depth)
{
	size_t depth = 0;
	int in_string = 0, escaped = 0;

	for (size_t i = 0; i < len; i++) {
		char c = buf[i];

		if (in_string) {
			if (escaped)
				escaped = 0;
			else if (c == '\\')
				escaped = 1;
			else if (c == '"')
				in_string = 0;
			continue;
		}
		switch (c) {
		case '"':
			in_string = 1;
			break;
		case '[':
		case '{':
			if (++depth > max_depth)
				return -E2BIG;
			break;
		case ']':
		case '}':
			/* A close without an open is never JSON. */
			if (depth == 0)
				return -EINVAL;
			depth--;
			break;
		default:
			break;
		}
	}
	return 0;
}

int json_strict_parse(const char *buf, size_t len, size_t max_depth, json_t **ret_value)
{
	json_error_t error;
	json_t *value;
	int r;

	if (len == 0)
		return -EINVAL;
	r = json_check_depth(buf, len, max_depth);
	if (r < 0) {
		log_debug("\"JSON refused before parsing\" reason=%s max_depth=%zu",
			  r == -E2BIG ? "too_deep" : "unbalanced", max_depth);
		return r;
	}
	/* No JSON_ALLOW_NUL (a NUL in a claim truncates it for C readers) and no
	 * JSON_DISABLE_EOF_CHECK (trailing bytes would let two parsers disagree
	 * on what the document is).  json_loadb, because len is authoritative
	 * and the buffer may hold NUL bytes. */
	value = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &error);
	if (value == NULL) {
		/* Position only: error.text may quote the input, which can be a token. */
		log_debug("\"JSON refused\" line=%d column=%d position=%d", error.line, error.column,
			  error.position);
		return -EINVAL;
	}
	*ret_value = value;
	return 0;
}

size_t json_depth(const json_t *value)
{
	size_t max = 0, d;

	if (json_is_array(value)) {
		size_t i;
		json_t *item;

		json_array_foreach(value, i, item) {
			d = json_depth(item);
			if (d > max)
				max = d;
		}
		return max + 1;
	}
	if (json_is_object(value)) {
		const char *key;
		json_t *member;

		/* json_object_foreach takes a non-const object; iterating does not
		 * modify it. */
		json_object_foreach((json_t *)value, key, member) {
			d = json_depth(member);
			if (d > max)
				max = d;
		}
		return max + 1;
	}
	return 0;
}

const char *json_plain_string(const json_t *value)
{
	if (!json_is_string(value) || strlen(json_string_value(value)) != json_string_length(value))
		return NULL;
	return json_string_value(value);
}

int json_optional_string(const json_t *obj, const char *name, size_t max_len, const char **ret)
{
	const json_t *v = json_object_get(obj, name);
	const char *value;

	if (v == NULL || json_is_null(v)) {
		*ret = NULL;
		return 0;
	}
	value = json_plain_string(v);
	if (value == NULL || json_string_length(v) == 0 || json_string_length(v) > max_len)
		return -EINVAL;
	*ret = value;
	return 0;
}

/* json_stringn answers NULL both for bad UTF-8 and for memory, and json_pack's
 * error codes do not tell them apart either (an allocation failing inside it
 * can surface as "Unable to add key").  The unchecked variant fails only for
 * memory, so asking it tells a bad input (logged and refused by the caller)
 * from an exhausted process. */
int json_utf8_string(const char *s, size_t n, json_t **ret_string)
{
	json_t *string;

	string = json_stringn(s, n);
	if (string == NULL) {
		string = json_stringn_nocheck(s, n);
		if (string == NULL)
			return -ENOMEM;
		json_decref(string);
		return -EINVAL;
	}
	*ret_string = string;
	return 0;
}
