/* fuzz_json: the request body decoders — json_strict_parse, form_parse, and
 * what the endpoints make of the object either gives (grant_parse,
 * grant_parse_codes_body, issue_parse_body, issue_parse_pair_body).  One
 * input goes through all of them: as JSON, and as a form.
 *
 * Invariants: a strict-parsed value has no duplicate names (jansson cannot
 * hold them) nor NUL in a string, its depth is within the limit and parses
 * again at exactly that limit (one less is -E2BIG), and it dumps and
 * re-parses to an equal value; a parsed form is an object of at most
 * FORM_MAX_FIELDS non-empty names and NUL-free UTF-8 strings that survives
 * re-encoding; the decoders' outputs are untouched on failure and, on
 * success, consistent with the body they borrow from. */
#include <errno.h>
#include <string.h>

#include <jansson.h>

#include "fuzz.h"
#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/form.h"
#include "hsmjwt/grant.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/json.h"

#define NOW INT64_C(1700000000)

static struct config cfg;
static const struct auth_caller admin = { "root", "", AUTH_ROLE_ADMIN, INT64_C(4102444800), "" };
static const struct auth_caller confined = { "acme-frontend", "acme", AUTH_ROLE_TOKENS_ISSUE,
					     NOW + 600, "j1" };

static void fuzz_json_decoders(const json_t *body);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet_logs();
	FUZZ_CHECK(config_init_defaults(&cfg) == 0);
	return 0;
}

/* Every string in v is NUL-free; objects' names too. */
static void check_strings(const json_t *v)
{
	const char *name;
	json_t *member;
	size_t i;

	if (json_is_string(v)) {
		FUZZ_CHECK(json_plain_string(v) != NULL);
		FUZZ_CHECK(strlen(json_string_value(v)) == json_string_length(v));
	} else if (json_is_object(v)) {
		json_object_foreach((json_t *)v, name, member) {
			FUZZ_CHECK(memchr(name, '\0', strlen(name) + 1) == name + strlen(name));
			check_strings(member);
		}
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, member)
			check_strings(member);
	}
}

static void check_strict(const uint8_t *data, size_t size)
{
	json_t *sentinel = (json_t *)&cfg, *v = sentinel, *again = sentinel;
	size_t depth;
	char *dump;
	int r;

	r = json_strict_parse((const char *)data, size, JSON_STRICT_MAX_DEPTH, &v);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || r == -E2BIG);
		FUZZ_CHECK(v == sentinel);
		return;
	}
	FUZZ_CHECK(r == 0 && v != NULL && v != sentinel);
	depth = json_depth(v);
	FUZZ_CHECK(depth <= JSON_STRICT_MAX_DEPTH);
	check_strings(v);

	/* The depth limit is exact. */
	FUZZ_CHECK(json_strict_parse((const char *)data, size, depth, &again) == 0);
	FUZZ_CHECK(json_equal(v, again));
	json_decref(again);
	if (depth > 0) {
		again = sentinel;
		FUZZ_CHECK(json_strict_parse((const char *)data, size, depth - 1, &again) == -E2BIG);
		FUZZ_CHECK(again == sentinel);
	}

	/* What jansson writes, the strict parser reads back as the same value. */
	dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	FUZZ_CHECK(dump != NULL);
	again = sentinel;
	r = json_strict_parse(dump, strlen(dump), JSON_STRICT_MAX_DEPTH, &again);
	FUZZ_CHECK(r == 0);
	FUZZ_CHECK(json_equal(v, again));
	json_decref(again);
	free(dump);

	if (json_is_object(v))
		fuzz_json_decoders(v);
	json_decref(v);
}

/* application/x-www-form-urlencoded of one byte string. */
static size_t form_escape(const char *s, size_t n, char *out)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '*') {
			out[o++] = (char)c;
		} else if (c == ' ') {
			out[o++] = '+';
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	return o;
}

static void check_form(const uint8_t *data, size_t size)
{
	json_t *sentinel = (json_t *)&cfg, *obj = sentinel, *again = sentinel, *value;
	const char *name;
	size_t len = 0;
	char *enc;
	int r;

	r = form_parse((const char *)data, size, &obj);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL);
		FUZZ_CHECK(obj == sentinel);
		return;
	}
	FUZZ_CHECK(r == 0 && json_is_object(obj));
	FUZZ_CHECK(json_object_size(obj) <= FORM_MAX_FIELDS);
	json_object_foreach(obj, name, value) {
		FUZZ_CHECK(name[0] != '\0');
		FUZZ_CHECK(json_is_string(value) && json_plain_string(value) != NULL);
		len += 3 * (strlen(name) + json_string_length(value)) + 2;
	}
	/* Re-encoded, the form parses to the same object. */
	enc = malloc(len + 1);
	FUZZ_CHECK(enc != NULL);
	len = 0;
	json_object_foreach(obj, name, value) {
		if (len > 0)
			enc[len++] = '&';
		len += form_escape(name, strlen(name), enc + len);
		enc[len++] = '=';
		len += form_escape(json_string_value(value), json_string_length(value), enc + len);
	}
	FUZZ_CHECK(form_parse(enc, len, &again) == 0);
	FUZZ_CHECK(json_equal(obj, again));
	json_decref(again);
	free(enc);

	fuzz_json_decoders(obj);
	json_decref(obj);
}

/* A borrowed string of a grant request is the body's member of that name. */
static void check_borrowed(const json_t *body, const char *name, const char *value)
{
	if (value == NULL)
		return;
	FUZZ_CHECK(value == json_string_value(json_object_get(body, name)));
	FUZZ_CHECK(value[0] != '\0');
}

static void check_grant(const json_t *body)
{
	struct grant_request req, before;
	struct codes_grant grant, grant_before;
	char err[128];
	int r;

	memset(&req, 0xa5, sizeof(req));
	before = req;
	err[0] = '\0';
	r = grant_parse(body, &req, err, sizeof(err));
	FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || r == GRANT_E_UNSUPPORTED);
		FUZZ_CHECK(memcmp(&req, &before, sizeof(req)) == 0);
	} else {
		FUZZ_CHECK(r == 0);
		check_borrowed(body, "client_id", req.client_id);
		if (req.type == GRANT_REFRESH_TOKEN) {
			FUZZ_CHECK(strcmp(json_string_value(json_object_get(body, "grant_type")), "refresh_token") == 0);
			FUZZ_CHECK(req.refresh_token != NULL);
			FUZZ_CHECK(strlen(req.refresh_token) <= GRANT_MAX_REFRESH_TOKEN);
			check_borrowed(body, "refresh_token", req.refresh_token);
			check_borrowed(body, "scope", req.scope);
			/* grant_parse leaves the scope's syntax to the refresh flow's
			 * grant_scope_narrows, which must refuse what is malformed. */
			if (req.scope != NULL && !grant_scope_valid(req.scope))
				FUZZ_CHECK(grant_scope_narrows("read write", req.scope) == -EINVAL);
			if (req.scope != NULL && grant_scope_valid(req.scope))
				FUZZ_CHECK(grant_scope_narrows(req.scope, req.scope) == 0);
		} else {
			FUZZ_CHECK(req.type == GRANT_AUTHORIZATION_CODE);
			FUZZ_CHECK(req.code != NULL && req.redirect_uri != NULL && req.client_id != NULL &&
				   req.code_verifier != NULL);
			FUZZ_CHECK(strlen(req.code) <= GRANT_MAX_CODE);
			check_borrowed(body, "code", req.code);
			check_borrowed(body, "redirect_uri", req.redirect_uri);
			check_borrowed(body, "code_verifier", req.code_verifier);
			/* RFC 7636 §4.1: 43..128 unreserved characters. */
			FUZZ_CHECK(strlen(req.code_verifier) >= 43 && strlen(req.code_verifier) <= 128);
			FUZZ_CHECK(strspn(req.code_verifier, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
							     "0123456789-._~") == strlen(req.code_verifier));
		}
	}

	memset(&grant, 0x5a, sizeof(grant));
	grant_before = grant;
	r = grant_parse_codes_body(body, "", NOW, 60, &grant, err, sizeof(err));
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || r == -EACCES);
		FUZZ_CHECK(memcmp(&grant, &grant_before, sizeof(grant)) == 0);
	} else {
		FUZZ_CHECK(r == 0);
		FUZZ_CHECK(grant.subject[0] != '\0' && grant.client_id[0] != '\0');
		FUZZ_CHECK(grant_redirect_uri_valid(grant.redirect_uri));
		FUZZ_CHECK(grant_client_id_valid(grant.client_id));
		FUZZ_CHECK(strlen(grant.challenge) == CODES_CHALLENGE_LEN);
		FUZZ_CHECK(grant.issued_at == 0);
	}
	memset(&grant, 0x5a, sizeof(grant));
	r = grant_parse_codes_body(body, "acme", NOW, 60, &grant, err, sizeof(err));
	if (r == 0)
		FUZZ_CHECK(strcmp(grant.org, "acme") == 0);
}

static void check_issue(const json_t *body, const struct auth_caller *caller, unsigned flags)
{
	const struct issue_ctx ctx = { .cfg = &cfg, .now = NOW };
	struct issue_request req, before;
	struct issue_pair pair, pair_before;
	char err[160];
	int r;

	memset(&req, 0xa5, sizeof(req));
	before = req;
	r = issue_parse_body(&ctx, body, caller, flags, &req, err, sizeof(err));
	FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	if (r < 0) {
		FUZZ_CHECK(memcmp(&req, &before, sizeof(req)) == 0);
	} else {
		FUZZ_CHECK(r == 0);
		FUZZ_CHECK(req.type >= ISSUE_ACCESS && req.type <= ISSUE_CHILD);
		FUZZ_CHECK(req.subject != NULL && req.subject[0] != '\0');
		FUZZ_CHECK(req.ttl >= 1 && req.ttl <= cfg.max_ttl);
		FUZZ_CHECK(req.alg == JWS_ALG_INVALID || jws_alg_name(req.alg) != NULL);
		FUZZ_CHECK(!(flags & ISSUE_NAMED) || req.name != NULL);
		FUZZ_CHECK(req.claims == NULL || json_is_object(req.claims));
		if (caller->org[0] != '\0')
			FUZZ_CHECK(req.org != NULL && strcmp(req.org, caller->org) == 0);
	}

	memset(&pair, 0xa5, sizeof(pair));
	pair_before = pair;
	r = issue_parse_pair_body(&ctx, body, caller, &pair, err, sizeof(err));
	if (r < 0) {
		FUZZ_CHECK(memcmp(&pair, &pair_before, sizeof(pair)) == 0);
	} else {
		FUZZ_CHECK(r == 0);
		FUZZ_CHECK(pair.parent.type == ISSUE_PARENT);
		FUZZ_CHECK(pair.parent.subject != NULL);
		FUZZ_CHECK(pair.parent.ttl >= 1 && pair.parent.ttl <= cfg.max_ttl);
		FUZZ_CHECK(pair.child_ttl >= 1 && pair.child_ttl <= pair.parent.ttl);
		FUZZ_CHECK(pair.include_child == 0 || pair.include_child == 1);
	}
}

static void fuzz_json_decoders(const json_t *body)
{
	check_grant(body);
	check_issue(body, &admin, 0);
	check_issue(body, &admin, ISSUE_NAMED);
	check_issue(body, &confined, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_strict(data, size);
	check_form(data, size);
	return 0;
}
