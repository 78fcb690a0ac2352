/* discovery: the authorization server metadata served at
 * /.well-known/openid-configuration (OpenID Connect Discovery 1.0 §3) and
 * /.well-known/oauth-authorization-server (RFC 8414 §2), one document for
 * both, every URL derived from the configured issuer.
 *
 * What it says and why:
 * - authorization_endpoint: the configured authorization_endpoint (the
 *   login front end's URL: users log in at a front end of the deployment's
 *   own, which registers codes with POST /codes).  RFC 8414 §2 makes the
 *   member required when a grant uses it, and OIDC Discovery §3 always, so
 *   a deployment sets it; unset, the member is left out rather than made
 *   up — this service has no URL where a browser could be sent, and one
 *   that cannot authorize would be worse than none — and a client library
 *   that insists takes it from its own configuration.
 * - response_types_supported ["code"], grant_types_supported
 *   [authorization_code, refresh_token], code_challenge_methods_supported
 *   [S256] (plain is refused), token_endpoint_auth_methods_supported
 *   ["none"]: public clients, PKCE in place of a client secret.
 * - id_token_signing_alg_values_supported: every configured algorithm but
 *   HS256 (an HMAC key never leaves the token, so no client could verify),
 *   RS256 among them (config_load keeps it, OIDC Discovery requires it);
 *   issue_id_alg_allowed decides, the same rule issue_token applies to ID
 *   tokens.
 * - No scopes_supported: scopes are the deployment's own, carried as the
 *   login front end registers them, not a list this service knows.
 * - No revocation_endpoint, introspection_endpoint: POST /token/revoke and
 *   /token/introspect take a management bearer token of this service with
 *   roles (SPEC §4.1), not a client's credentials.  Advertised without
 *   *_auth_methods_supported, RFC 8414 §2 would have clients assume
 *   client_secret_basic, which is false, and there is no registered value
 *   that is true: they are this service's management endpoints, documented
 *   in the README, not endpoints of the clients this metadata is for. */
#ifndef HSMJWT_DISCOVERY_H
#define HSMJWT_DISCOVERY_H

#include <jansson.h>

#include "hsmjwt/config.h"

/* The metadata document for cfg: 0 and *ret_doc (new reference), -EINVAL
 * for an issuer or authorization_endpoint that is not UTF-8, -ENOMEM. */
int discovery_document(const struct config *cfg, json_t **ret_doc);

#endif
