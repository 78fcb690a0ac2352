#include "hsmjwt/discovery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsmjwt/issue.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwk.h"

/* The claims an ID or access token of this service may carry (SPEC §5.1). */
static const char *const discovery_claims[] = {
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "auth_time", "nonce", "azp",
	"client_id", "scope", "org", "token_type", "status",
};

/* issuer + path, without doubling a trailing '/' of the issuer (as
 * statuslist_uri joins them). */
static json_t *discovery_url(const char *issuer, const char *path)
{
	size_t len = strlen(issuer), plen = strlen(path);
	json_t *url = NULL;
	char *s;

	if (len > 0 && issuer[len - 1] == '/')
		len--;
	s = malloc(len + plen + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, issuer, len);
	memcpy(s + len, path, plen + 1);
	if (json_utf8_string(s, len + plen, &url) < 0)
		url = NULL;
	free(s);
	return url;
}

static json_t *discovery_strings(const char *const *names, size_t n)
{
	json_t *array = json_array();

	for (size_t i = 0; array != NULL && i < n; i++)
		if (json_array_append_new(array, json_string(names[i])) < 0) {
			json_decref(array);
			return NULL;
		}
	return array;
}

static json_t *discovery_id_algs(const struct config *cfg)
{
	json_t *algs = json_array();

	for (size_t i = 0; algs != NULL && i < cfg->algorithm_count; i++) {
		if (!issue_id_alg_allowed(cfg, cfg->algorithms[i]))
			continue;
		if (json_array_append_new(algs, json_string(jws_alg_name(cfg->algorithms[i]))) < 0) {
			json_decref(algs);
			return NULL;
		}
	}
	return algs;
}

int discovery_document(const struct config *cfg, json_t **ret_doc)
{
	static const char *const response_types[] = { "code" };
	static const char *const grant_types[] = { "authorization_code", "refresh_token" };
	static const char *const pkce[] = { "S256" };
	static const char *const auth_methods[] = { "none" };
	static const char *const subject_types[] = { "public" };
	json_t *issuer = NULL, *authorize = NULL, *doc = NULL;
	int r;

	if (cfg == NULL || cfg->issuer == NULL || ret_doc == NULL)
		return -EINVAL;
	if (json_utf8_string(cfg->issuer, strlen(cfg->issuer), &issuer) < 0 ||
	    (cfg->authorization_endpoint != NULL &&
	     json_utf8_string(cfg->authorization_endpoint, strlen(cfg->authorization_endpoint), &authorize) < 0)) {
		r = -EINVAL;
		goto out;
	}
	/* "o" takes each reference, also when json_pack fails; a NULL one
	 * (no memory) fails the pack. */
	doc = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
			"issuer", issuer,
			"jwks_uri", discovery_url(cfg->issuer, "/.well-known/jwks.json"),
			"token_endpoint", discovery_url(cfg->issuer, "/token"),
			"response_types_supported", discovery_strings(response_types, 1),
			"grant_types_supported", discovery_strings(grant_types, 2),
			"code_challenge_methods_supported", discovery_strings(pkce, 1),
			"token_endpoint_auth_methods_supported", discovery_strings(auth_methods, 1),
			"subject_types_supported", discovery_strings(subject_types, 1),
			"id_token_signing_alg_values_supported", discovery_id_algs(cfg),
			"claims_supported",
			discovery_strings(discovery_claims, sizeof(discovery_claims) / sizeof(discovery_claims[0])));
	issuer = NULL;
	if (doc == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (authorize != NULL) {
		/* Taken, also when it fails. */
		r = json_object_set_new(doc, "authorization_endpoint", authorize);
		authorize = NULL;
		if (r < 0) {
			r = -ENOMEM;
			goto out;
		}
	}
	*ret_doc = doc;
	doc = NULL;
	r = 0;
out:
	json_decref(issuer);
	json_decref(authorize);
	json_decref(doc);
	return r;
}
