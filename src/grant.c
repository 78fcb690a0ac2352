#include "hsmjwt/grant.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

static int grant_string(const json_t *body, const char *name, size_t max, const char **ret, char *err,
			size_t errlen)
{
	if (json_optional_string(body, name, max, ret) < 0) {
		snprintf(err, errlen, "%s must be a non-empty string of at most %zu bytes", name, max);
		return -EINVAL;
	}
	return 0;
}

static int grant_required(const char *value, const char *name, char *err, size_t errlen)
{
	if (value != NULL)
		return 0;
	snprintf(err, errlen, "%s is required", name);
	return -EINVAL;
}

int grant_parse(const json_t *body, struct grant_request *ret_request, char *err, size_t errlen)
{
	struct grant_request g = { 0 };
	const char *type = NULL;
	int r;

	if (!json_is_object(body)) {
		snprintf(err, errlen, "the request must be a form or a JSON object");
		return -EINVAL;
	}
	if ((r = grant_string(body, "grant_type", 64, &type, err, errlen)) < 0 ||
	    (r = grant_required(type, "grant_type", err, errlen)) < 0)
		return r;
	if (strcmp(type, "refresh_token") == 0)
		g.type = GRANT_REFRESH_TOKEN;
	else if (strcmp(type, "authorization_code") == 0)
		g.type = GRANT_AUTHORIZATION_CODE;
	else {
		snprintf(err, errlen, "grant_type must be authorization_code or refresh_token");
		return GRANT_E_UNSUPPORTED;
	}
	if ((r = grant_string(body, "client_id", CODES_CLIENT_ID_MAX, &g.client_id, err, errlen)) < 0)
		return r;
	if (g.type == GRANT_REFRESH_TOKEN) {
		if ((r = grant_string(body, "refresh_token", GRANT_MAX_REFRESH_TOKEN, &g.refresh_token, err, errlen)) < 0 ||
		    (r = grant_required(g.refresh_token, "refresh_token", err, errlen)) < 0 ||
		    (r = grant_string(body, "scope", CODES_SCOPE_MAX, &g.scope, err, errlen)) < 0)
			return r;
	} else {
		if ((r = grant_string(body, "code", GRANT_MAX_CODE, &g.code, err, errlen)) < 0 ||
		    (r = grant_required(g.code, "code", err, errlen)) < 0 ||
		    (r = grant_string(body, "redirect_uri", CODES_REDIRECT_URI_MAX, &g.redirect_uri, err, errlen)) < 0 ||
		    (r = grant_required(g.redirect_uri, "redirect_uri", err, errlen)) < 0 ||
		    (r = grant_required(g.client_id, "client_id", err, errlen)) < 0 ||
		    (r = grant_string(body, "code_verifier", CODES_VERIFIER_MAX, &g.code_verifier, err, errlen)) < 0 ||
		    (r = grant_required(g.code_verifier, "code_verifier", err, errlen)) < 0)
			return r;
		if (!codes_verifier_valid(g.code_verifier, strlen(g.code_verifier))) {
			snprintf(err, errlen, "code_verifier must be %d to %d characters of A-Z a-z 0-9 - . _ ~",
				 CODES_VERIFIER_MIN, CODES_VERIFIER_MAX);
			return -EINVAL;
		}
	}
	*ret_request = g;
	return 0;
}

static int grant_scope_char(unsigned char c)
{
	return c == 0x21 || (c >= 0x23 && c <= 0x5B) || (c >= 0x5D && c <= 0x7E);
}

int grant_scope_valid(const char *scope)
{
	size_t i;

	if (scope == NULL || scope[0] == '\0')
		return 0;
	for (i = 0; scope[i] != '\0'; i++) {
		if (scope[i] == ' ') {
			/* One space between tokens, none at either end. */
			if (i == 0 || scope[i + 1] == ' ' || scope[i + 1] == '\0')
				return 0;
		} else if (!grant_scope_char((unsigned char)scope[i])) {
			return 0;
		}
	}
	return 1;
}

/* Whether the scope-token tok[0..len) is one of list's. */
static int grant_scope_has(const char *list, const char *tok, size_t len)
{
	const char *p = list;

	while (p != NULL && *p != '\0') {
		size_t n = strcspn(p, " ");
		if (n == len && memcmp(p, tok, len) == 0)
			return 1;
		p += n;
		p += strspn(p, " ");
	}
	return 0;
}

int grant_scope_narrows(const char *granted, const char *requested)
{
	const char *p = requested;

	if (!grant_scope_valid(requested))
		return -EINVAL;
	while (*p != '\0') {
		size_t n = strcspn(p, " ");
		if (!grant_scope_has(granted, p, n))
			return -EACCES;
		p += n;
		p += strspn(p, " ");
	}
	return 0;
}

int grant_redirect_uri_valid(const char *uri)
{
	size_t len, scheme;

	if (uri == NULL)
		return 0;
	len = strnlen(uri, CODES_REDIRECT_URI_MAX + 1);
	if (len == 0 || len > CODES_REDIRECT_URI_MAX || !isalpha((unsigned char)uri[0]))
		return 0;
	/* RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
	scheme = strspn(uri, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-.");
	if (uri[scheme] != ':' || uri[scheme + 1] == '\0')
		return 0;
	/* RFC 6749 §3.1.2: no fragment.  Nothing a redirect could be
	 * confused by, nor what a log or header would carry badly. */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)uri[i] <= 0x20 || (unsigned char)uri[i] >= 0x7F || uri[i] == '#')
			return 0;
	return 1;
}

int grant_client_id_valid(const char *client_id)
{
	size_t len;

	if (client_id == NULL)
		return 0;
	len = strnlen(client_id, CODES_CLIENT_ID_MAX + 1);
	if (len == 0 || len > CODES_CLIENT_ID_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)client_id[i] < 0x20 || (unsigned char)client_id[i] > 0x7E)
			return 0;
	return 1;
}

static const char *const codes_members[] = {
	"subject", "client_id", "redirect_uri", "code_challenge", "code_challenge_method",
	"scope", "nonce", "auth_time", "org",
};

static int grant_codes_members(const json_t *body, char *err, size_t errlen)
{
	const char *name;
	json_t *value;

	json_object_foreach((json_t *)body, name, value) {
		size_t i;
		for (i = 0; i < sizeof(codes_members) / sizeof(codes_members[0]) && strcmp(name, codes_members[i]) != 0;
		     i++)
			;
		if (i == sizeof(codes_members) / sizeof(codes_members[0])) {
			char shown[64];
			snprintf(err, errlen, "unknown member %s in the request", log_quote(shown, sizeof(shown), name));
			return -EINVAL;
		}
	}
	return 0;
}

int grant_parse_codes_body(const json_t *body, const char *caller_org, int64_t now, int64_t leeway,
			   struct codes_grant *ret_grant, char *err, size_t errlen)
{
	const char *subject = NULL, *client_id = NULL, *redirect_uri = NULL, *challenge = NULL, *method = NULL;
	const char *scope = NULL, *nonce = NULL, *org = NULL;
	const json_t *auth_time;
	struct codes_grant g;
	int r;

	if (!json_is_object(body)) {
		snprintf(err, errlen, "request body must be a JSON object");
		return -EINVAL;
	}
	if ((r = grant_codes_members(body, err, errlen)) < 0 ||
	    (r = grant_string(body, "subject", CODES_SUBJECT_MAX, &subject, err, errlen)) < 0 ||
	    (r = grant_required(subject, "subject", err, errlen)) < 0 ||
	    (r = grant_string(body, "client_id", CODES_CLIENT_ID_MAX, &client_id, err, errlen)) < 0 ||
	    (r = grant_required(client_id, "client_id", err, errlen)) < 0 ||
	    (r = grant_string(body, "redirect_uri", CODES_REDIRECT_URI_MAX, &redirect_uri, err, errlen)) < 0 ||
	    (r = grant_required(redirect_uri, "redirect_uri", err, errlen)) < 0 ||
	    (r = grant_string(body, "code_challenge", CODES_CHALLENGE_LEN, &challenge, err, errlen)) < 0 ||
	    (r = grant_required(challenge, "code_challenge", err, errlen)) < 0 ||
	    (r = grant_string(body, "code_challenge_method", 16, &method, err, errlen)) < 0 ||
	    (r = grant_required(method, "code_challenge_method", err, errlen)) < 0 ||
	    (r = grant_string(body, "scope", CODES_SCOPE_MAX, &scope, err, errlen)) < 0 ||
	    (r = grant_string(body, "nonce", CODES_NONCE_MAX, &nonce, err, errlen)) < 0 ||
	    (r = grant_string(body, "org", CODES_ORG_MAX, &org, err, errlen)) < 0)
		return r;
	if (!grant_client_id_valid(client_id)) {
		snprintf(err, errlen, "client_id must be printable ASCII");
		return -EINVAL;
	}
	if (!grant_redirect_uri_valid(redirect_uri)) {
		snprintf(err, errlen, "redirect_uri must be an absolute URI without fragment or spaces, at most %d bytes",
			 CODES_REDIRECT_URI_MAX);
		return -EINVAL;
	}
	/* RFC 7636 §4.2: plain would hand the verifier to whoever sees the
	 * authorization request; only S256 is taken (RFC 9700 §2.1.1). */
	if (strcmp(method, "S256") != 0) {
		snprintf(err, errlen, "code_challenge_method must be S256");
		return -EINVAL;
	}
	if (!codes_challenge_valid(challenge)) {
		snprintf(err, errlen, "code_challenge must be BASE64URL(SHA-256(code_verifier)): 43 characters");
		return -EINVAL;
	}
	if (scope != NULL && !grant_scope_valid(scope)) {
		snprintf(err, errlen, "scope must be scope-tokens separated by single spaces (RFC 6749 §3.3)");
		return -EINVAL;
	}
	memset(&g, 0, sizeof(g));
	auth_time = json_object_get(body, "auth_time");
	if (auth_time != NULL && !json_is_null(auth_time)) {
		/* A login in the future is a clock or caller bug, not a time. */
		if (!json_is_integer(auth_time) || json_integer_value(auth_time) < 1 ||
		    json_integer_value(auth_time) > now + leeway) {
			snprintf(err, errlen, "auth_time must be a positive integer, not in the future");
			return -EINVAL;
		}
		g.auth_time = json_integer_value(auth_time);
	}
	if (caller_org != NULL && caller_org[0] != '\0') {
		if (org != NULL && strcmp(org, caller_org) != 0) {
			snprintf(err, errlen, "a caller of one org cannot register codes for another");
			return -EACCES;
		}
		org = caller_org;
	}
	snprintf(g.subject, sizeof(g.subject), "%s", subject);
	snprintf(g.client_id, sizeof(g.client_id), "%s", client_id);
	snprintf(g.redirect_uri, sizeof(g.redirect_uri), "%s", redirect_uri);
	snprintf(g.challenge, sizeof(g.challenge), "%s", challenge);
	snprintf(g.scope, sizeof(g.scope), "%s", scope ? scope : "");
	snprintf(g.nonce, sizeof(g.nonce), "%s", nonce ? nonce : "");
	snprintf(g.org, sizeof(g.org), "%s", org ? org : "");
	*ret_grant = g;
	return 0;
}
