#include "hsmjwt/jwt.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

/* Claim typing, decided once for every claim checked here: a claim of the
 * wrong JSON type (iss a number, aud an object or an array holding a
 * non-string, token_type a boolean) is JWS_E_MALFORMED — the token breaks
 * RFC 7519, whoever it is meant for; a well-typed claim with another value
 * (or a missing one) is JWS_E_WRONG_ISSUER / _AUDIENCE / _TYPE.  Claims are
 * only looked at when expect asks for them, except the times. */

static int64_t jwt_sat_add(int64_t a, int64_t b)
{
	int64_t sum;

	if (__builtin_add_overflow(a, b, &sum))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return sum;
}

static int64_t jwt_sat_sub(int64_t a, int64_t b)
{
	int64_t diff;

	if (__builtin_sub_overflow(a, b, &diff))
		return b > 0 ? INT64_MIN : INT64_MAX;
	return diff;
}

/* Sign of (v - bound) for a JSON number v, exact for integers.  A real is
 * compared as a double: epoch seconds are far inside its 53-bit mantissa,
 * and a fractional exp of 100.5 stays valid at now = 100. */
static int jwt_time_cmp(const json_t *v, int64_t bound)
{
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);
		return i < bound ? -1 : i > bound ? 1 : 0;
	}
	double d = json_real_value(v), b = (double)bound;
	return d < b ? -1 : d > b ? 1 : 0;
}

/* The time claim name: absent (*ret NULL) unless required, else a number
 * (RFC 7519 §2 NumericDate; booleans and strings are not numbers). */
static int jwt_time_claim(const json_t *claims, const char *name, int required, const json_t **ret)
{
	const json_t *v = json_object_get(claims, name);

	if (v == NULL && !required) {
		*ret = NULL;
		return 0;
	}
	if (!json_is_number(v)) {
		log_debug("\"time claim missing or not a number\" claim=%s", name);
		return JWS_E_MALFORMED;
	}
	*ret = v;
	return 0;
}

/* An exact string claim: absent → wrong, not a string → malformed. */
static int jwt_check_string_claim(const json_t *claims, const char *name, const char *want, int wrong)
{
	const json_t *v = json_object_get(claims, name);

	if (v == NULL)
		return wrong;
	if (json_plain_string(v) == NULL)
		return JWS_E_MALFORMED;
	return strcmp(json_string_value(v), want) == 0 ? 0 : wrong;
}

static int jwt_check_audience(const json_t *claims, const char *want)
{
	const json_t *aud = json_object_get(claims, "aud"), *member;
	int found = 0;
	size_t i;

	if (aud == NULL)
		return JWS_E_WRONG_AUDIENCE;
	if (json_is_string(aud))
		return jwt_check_string_claim(claims, "aud", want, JWS_E_WRONG_AUDIENCE);
	if (!json_is_array(aud))
		return JWS_E_MALFORMED;
	/* Every member is checked, not only up to a match: an ill-typed
	 * member makes the claim malformed wherever it stands. */
	json_array_foreach(aud, i, member) {
		if (json_plain_string(member) == NULL)
			return JWS_E_MALFORMED;
		if (strcmp(json_string_value(member), want) == 0)
			found = 1;
	}
	return found ? 0 : JWS_E_WRONG_AUDIENCE;
}

/* RFC 7515 §4.1.9: "typ" is a media type whose "application/" prefix may
 * be left out when no other '/' appears; media types compare
 * case-insensitively.  So "at+jwt", "AT+JWT" and "application/at+jwt" are
 * one type, "text/at+jwt" another. */
static const char *jwt_typ_subtype(const char *typ, int *ret_other)
{
	static const char prefix[] = "application/";

	if (strncasecmp(typ, prefix, sizeof(prefix) - 1) == 0) {
		*ret_other = 0;
		return typ + sizeof(prefix) - 1;
	}
	*ret_other = strchr(typ, '/') != NULL;
	return typ;
}

static int jwt_check_typ(const json_t *header, const char *want)
{
	const json_t *typ = header ? json_object_get(header, "typ") : NULL;
	const char *have_sub, *want_sub;
	int have_other, want_other;

	if (typ == NULL)
		return JWS_E_WRONG_TYPE;
	if (json_plain_string(typ) == NULL)
		return JWS_E_MALFORMED;
	have_sub = jwt_typ_subtype(json_string_value(typ), &have_other);
	want_sub = jwt_typ_subtype(want, &want_other);
	if (have_other != want_other || strcasecmp(have_sub, want_sub) != 0)
		return JWS_E_WRONG_TYPE;
	return 0;
}

int jwt_check_claims(const json_t *header, const json_t *claims, const struct jwt_expect *expect)
{
	const json_t *exp, *nbf, *iat;
	int64_t latest;
	int r;

	if (expect == NULL)
		return -EINVAL;
	if (!json_is_object(claims))
		return JWS_E_MALFORMED;
	if ((r = jwt_time_claim(claims, "exp", 1, &exp)) < 0 ||
	    (r = jwt_time_claim(claims, "nbf", 0, &nbf)) < 0 ||
	    (r = jwt_time_claim(claims, "iat", 0, &iat)) < 0)
		return r;
	/* RFC 7519 §4.1.4: the current time must be before exp (plus leeway),
	 * as PyJWT and jose read it; written as exp <= now - leeway so that no
	 * claim value can overflow. */
	if (jwt_time_cmp(exp, jwt_sat_sub(expect->now, expect->leeway)) <= 0)
		return JWS_E_EXPIRED;
	latest = jwt_sat_add(expect->now, expect->leeway);
	if (nbf != NULL && jwt_time_cmp(nbf, latest) > 0)
		return JWS_E_NOT_YET_VALID;
	/* A token issued in the future comes from a clock we do not trust. */
	if (iat != NULL && jwt_time_cmp(iat, latest) > 0)
		return JWS_E_NOT_YET_VALID;
	if (expect->issuer != NULL &&
	    (r = jwt_check_string_claim(claims, "iss", expect->issuer, JWS_E_WRONG_ISSUER)) < 0)
		return r;
	if (expect->audience != NULL && (r = jwt_check_audience(claims, expect->audience)) < 0)
		return r;
	if (expect->typ != NULL && (r = jwt_check_typ(header, expect->typ)) < 0)
		return r;
	if (expect->token_type != NULL &&
	    (r = jwt_check_string_claim(claims, "token_type", expect->token_type, JWS_E_WRONG_TYPE)) < 0)
		return r;
	return 0;
}

/* The payload of a parsed JWS as a strict JSON object. */
static int jwt_payload_claims(const struct jws_parsed *parsed, json_t **ret_claims)
{
	json_t *claims = NULL;
	int r;

	r = json_strict_parse((const char *)parsed->payload, parsed->payload_len, JSON_STRICT_MAX_DEPTH, &claims);
	if (r < 0)
		return r == -ENOMEM ? -ENOMEM : JWS_E_MALFORMED;
	if (!json_is_object(claims)) {
		json_decref(claims);
		return JWS_E_MALFORMED;
	}
	*ret_claims = claims;
	return 0;
}

/* The claims of a parsed token, checked against expect when it is given,
 * handed out through the optional ret_ pointers. */
static int jwt_claims_of(const struct jws_parsed *parsed, const struct jwt_expect *expect,
			 json_t **ret_header, json_t **ret_claims)
{
	json_t *claims = NULL;
	int r;

	r = jwt_payload_claims(parsed, &claims);
	if (r < 0)
		return r;
	if (expect != NULL) {
		r = jwt_check_claims(parsed->header, claims, expect);
		if (r < 0)
			goto out;
	}
	if (ret_header != NULL)
		*ret_header = json_incref(parsed->header);
	if (ret_claims != NULL) {
		*ret_claims = claims;
		claims = NULL;
	}
out:
	json_decref(claims);
	return r;
}

int jwt_verify(const char *token, size_t len, jws_key_lookup_fn lookup, void *lookup_ctx,
	       const struct jwt_expect *expect, json_t **ret_header, json_t **ret_claims)
{
	struct jws_parsed *parsed = NULL;
	int r;

	if (expect == NULL)
		return -EINVAL;
	r = jws_verify(token, len, lookup, lookup_ctx, &parsed);
	if (r < 0)
		return r;
	r = jwt_claims_of(parsed, expect, ret_header, ret_claims);
	jws_parsed_free(parsed);
	return r;
}

int jwt_decode_unverified(const char *token, size_t len, json_t **ret_header, json_t **ret_claims)
{
	struct jws_parsed *parsed = NULL;
	int r;

	/* The same structural limits as verification: decoding untrusted input
	 * is no reason to parse more of it. */
	r = jws_parse(token, len, &parsed);
	if (r < 0)
		return r;
	r = jwt_claims_of(parsed, NULL, ret_header, ret_claims);
	jws_parsed_free(parsed);
	return r;
}
