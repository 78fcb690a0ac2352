/* grant: the OAuth 2.0 requests of the token endpoint's grants (RFC 6749
 * §4.1.3, §6; RFC 7636 §4.5) and of POST /codes, parsed into structs.
 *
 * Pure functions over the JSON object a JSON or form body became (form.h
 * turns a form into an object of strings), so that they can be tested and
 * fuzzed without a daemon.  Parsed requests borrow their strings from that
 * object. */
#ifndef HSMJWT_GRANT_H
#define HSMJWT_GRANT_H

#include <errno.h>
#include <jansson.h>
#include <stdint.h>

#include "hsmjwt/codes.h"

/* A grant_type this service does not implement (RFC 6749 §5.2
 * unsupported_grant_type). */
#define GRANT_E_UNSUPPORTED (-EPROTONOSUPPORT)

#define GRANT_MAX_CODE 256            /* longer is certainly not a code of ours */
#define GRANT_MAX_REFRESH_TOKEN 16384 /* JWS_MAX_TOKEN */

enum grant_type {
	GRANT_REFRESH_TOKEN = 1,
	GRANT_AUTHORIZATION_CODE,
};

struct grant_request {
	enum grant_type type;
	/* refresh_token */
	const char *refresh_token;
	const char *scope;            /* NULL: the refresh token's scope */
	/* both: optional for refresh_token (if sent, must be the token's
	 * client), required for authorization_code */
	const char *client_id;
	/* authorization_code */
	const char *code;
	const char *redirect_uri;
	const char *code_verifier;    /* syntax checked (RFC 7636 §4.1) */
};

/* The token endpoint's body → request.  Members this service does not know
 * are ignored (RFC 6749 §3.2); a known member that is not a non-empty
 * string, a missing one or a malformed code_verifier is -EINVAL
 * (invalid_request); a grant_type other than refresh_token and
 * authorization_code is GRANT_E_UNSUPPORTED.  err: a client-safe text that
 * never quotes a token, code or verifier. */
int grant_parse(const json_t *body, struct grant_request *ret_request, char *err, size_t errlen);

/* RFC 6749 §3.3: scope-token *( SP scope-token ), scope-token =
 * 1*( %x21 / %x23-5B / %x5D-7E ). */
int grant_scope_valid(const char *scope);
/* Whether requested asks for nothing granted does not hold (RFC 6749 §6:
 * a refresh may narrow the scope, never widen it): 0, -EINVAL for a
 * malformed requested, -EACCES for a token not granted (granted NULL: none
 * is). */
int grant_scope_narrows(const char *granted, const char *requested);

/* An absolute URI (RFC 3986 scheme ":" ...) of printable ASCII without
 * spaces or a fragment, at most CODES_REDIRECT_URI_MAX bytes: what a
 * redirect_uri may be (RFC 6749 §3.1.2). */
int grant_redirect_uri_valid(const char *uri);
/* RFC 6749 Appendix A.1: client_id = *VSCHAR, here 1..CODES_CLIENT_ID_MAX. */
int grant_client_id_valid(const char *client_id);

/* POST /codes: {subject, client_id, redirect_uri, code_challenge,
 * code_challenge_method: "S256", scope?, nonce?, auth_time?, org?} →
 * *ret_grant (issued_at left 0).  Unknown members are refused (a typo must
 * not silently drop a nonce); plain PKCE is refused; a caller confined to
 * an org (caller_org not "") registers codes of its org only.  -EINVAL
 * (invalid_request), -EACCES (another org: 403). */
int grant_parse_codes_body(const json_t *body, const char *caller_org, int64_t now, int64_t leeway,
			   struct codes_grant *ret_grant, char *err, size_t errlen);

#endif
