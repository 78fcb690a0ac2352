/* json: strict JSON parsing for untrusted input (tokens and request bodies).
 *
 * A pure function over a buffer: rejects duplicate member names, NUL in
 * strings, nesting deeper than max_depth (an object or array at top level is
 * depth 1), and anything but a single value. */
#ifndef HSMJWT_JSON_H
#define HSMJWT_JSON_H

#include <jansson.h>
#include <stddef.h>

#define JSON_STRICT_MAX_DEPTH 16

/* 0 and *ret_value (new reference, caller json_decref()s), or -EINVAL
 * (not strict JSON), -E2BIG (deeper than max_depth). */
int json_strict_parse(const char *buf, size_t len, size_t max_depth, json_t **ret_value);

/* The value of a JSON string that holds no NUL byte (C code would read it
 * cut short), else NULL. */
const char *json_plain_string(const json_t *value);

/* An optional string member of a request object: absent or null gives
 * *ret NULL; a string of 1..max_len bytes without NUL gives its value (owned
 * by obj); anything else is -EINVAL and *ret is untouched. */
int json_optional_string(const json_t *obj, const char *name, size_t max_len, const char **ret);

/* A new JSON string of s[0..n) (caller json_decref()s *ret_string), or
 * -EINVAL when s[0..n) is not UTF-8, -ENOMEM when memory ran out; on failure
 * *ret_string is untouched.  A NUL inside s[0..n) is kept (jansson strings
 * carry their length): callers that read the value in C refuse it first. */
int json_utf8_string(const char *s, size_t n, json_t **ret_string);

/* Nesting depth of a value: scalars 0, [] or {} 1, [[1]] 2. */
size_t json_depth(const json_t *value);

#endif
