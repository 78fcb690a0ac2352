/* form: application/x-www-form-urlencoded request bodies, which the OAuth
 * endpoints must take (RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1). */
#ifndef HSMJWT_FORM_H
#define HSMJWT_FORM_H

#include <jansson.h>
#include <stddef.h>

#define FORM_MAX_FIELDS 32

/* Parses "a=1&b=x+y%21" into the JSON object {"a": "1", "b": "x y!"} so that
 * the endpoints validate one shape whatever the media type.  -EINVAL for a
 * bad %-escape, a name or value that is not UTF-8 or holds a NUL, an empty
 * name, a parameter given twice (RFC 6749 §3.1: parameters MUST NOT repeat)
 * or more than FORM_MAX_FIELDS fields; -ENOMEM.  Empty pairs ("a=1&&b=2",
 * a trailing '&') are skipped; "a" alone is a = "". */
int form_parse(const char *buf, size_t len, json_t **ret_object);

#endif
