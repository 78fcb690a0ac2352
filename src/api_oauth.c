/* The OAuth endpoints over the registry: token revocation (RFC 7009) and
 * introspection (RFC 7662), and what verification learns from the
 * registry.  Both take JSON or form bodies, and both answer a token they
 * cannot or may not act on exactly like an unknown one. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "hsmjwt/http.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/metrics.h"

#include "api_internal.h"

/* ---- RFC 7009 revocation and RFC 7662 introspection ------------------- */

/* A token of ours, genuinely signed and unexpired: its claims, or NULL for
 * anything else (RFC 7009 §2.2 and RFC 7662 §2.2 answer both alike).
 * *ret_result (may be NULL): jwt_verify's verdict, for the metrics. */
static json_t *api_own_token_claims(struct api_ctx *ctx, const char *token, size_t len, int *ret_result)
{
	struct jwt_expect expect = { .now = api_now(), .leeway = ctx->cfg->leeway, .issuer = ctx->cfg->issuer };
	json_t *header = NULL, *claims = NULL;
	int r = jwt_verify(token, len, keys_lookup, &ctx->view, &expect, &header, &claims);

	if (r < 0)
		claims = NULL;
	json_decref(header);
	if (ret_result != NULL)
		*ret_result = r;
	return claims;
}

/* Whether a confined caller may act on a token with this org claim. */
static int api_in_scope(const struct auth_caller *caller, const json_t *claims)
{
	const char *org = json_plain_string(json_object_get(claims, "org"));

	return caller->org[0] == '\0' || (org != NULL && strcmp(org, caller->org) == 0);
}

/* A jti as this service makes them (issue_new_jti): 22 base64url characters. */
static int api_jti_plausible(const char *jti)
{
	return strlen(jti) == ISSUE_JTI_LEN &&
	       strspn(jti, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == ISSUE_JTI_LEN;
}

/* Queues the revocation of jti for caller: the registered record within the
 * caller's scope, else (when unregistered is set) a revocation of a jti the
 * registry never saw, of org, kept until exp.  1: queued (done will run),
 * 0: nothing to do, or a negative error. */
static int api_queue_revocation(struct api_ctx *ctx, const struct auth_caller *caller, const char *jti,
				int unregistered, const char *org, int64_t exp, const char *reason,
				struct api_pending *pending)
{
	int64_t now = api_now();
	int r;

	r = registry_set_status(ctx->registry, jti, api_scope(caller), REGISTRY_REVOKED, now, reason,
				api_pending_done, pending, NULL);
	/* Deleted already (revoked, and final): still answered only once that
	 * deletion is durable, which re-setting the same status waits for. */
	if (r == -EPERM)
		r = registry_set_status(ctx->registry, jti, api_scope(caller), REGISTRY_DELETED, now, NULL,
					api_pending_done, pending, NULL);
	if (r == -ENOENT && unregistered)
		r = registry_revoke_unregistered(ctx->registry, jti, org, exp, now, reason, api_pending_done,
						 pending);
	/* Unknown in the caller's scope: RFC 7009 §2.2 answers 200 all the
	 * same, and nothing changes. */
	if (r == -ENOENT || r == -EEXIST || r == -EINVAL)
		return 0;
	return r < 0 ? r : 1;
}

void api_revoke(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct auth_caller caller;
	struct api_pending *pending = NULL;
	const char *token = NULL, *jti = NULL, *reason = NULL, *hint = NULL;
	json_t *body = NULL, *claims = NULL;
	int r = 0;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_REVOKE, &caller, out) < 0 ||
	    api_read_body(ctx, req, out, 1, &body) < 0)
		return;
	/* Other members (client_id, ... of a form post) are ignored, as RFC
	 * 6749 §3.2 lets a server do. */
	if (!json_is_object(body) || json_optional_string(body, "token", JWS_MAX_TOKEN, &token) < 0 ||
	    json_optional_string(body, "jti", REGISTRY_JTI_MAX, &jti) < 0 ||
	    json_optional_string(body, "reason", REGISTRY_REASON_MAX, &reason) < 0 ||
	    json_optional_string(body, "token_type_hint", 64, &hint) < 0 || (token == NULL && jti == NULL)) {
		api_error(out, req, 400, "invalid_request", "expected token or jti (strings), reason?, token_type_hint?");
		goto out;
	}
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	if (token != NULL) {
		claims = api_own_token_claims(ctx, token, strlen(token), NULL);
		if (claims != NULL && api_in_scope(&caller, claims) &&
		    json_plain_string(json_object_get(claims, "jti")) != NULL) {
			const char *org = json_plain_string(json_object_get(claims, "org"));
			jti = json_plain_string(json_object_get(claims, "jti"));
			/* A genuine token of the caller's org: recorded as revoked
			 * even if the registry never saw it (minted offline). */
			r = api_queue_revocation(ctx, &caller, jti, 1, org ? org : "",
						 json_integer_value(json_object_get(claims, "exp")) + ctx->cfg->leeway,
						 reason, pending);
		}
	} else {
		/* Only a jti.  A confined caller revokes its org's records
		 * only: a revocation it could record for a jti unknown in its
		 * scope would tell it (by the record appearing or not) whether
		 * another org holds that jti, and would let it fill the
		 * registry with guesses.  An unconfined admin may revoke an
		 * offline-minted jti; whatever token carries it lives at most
		 * max_ttl. */
		r = api_queue_revocation(ctx, &caller, jti, caller.org[0] == '\0' && api_jti_plausible(jti), "",
					 api_now() + ctx->cfg->max_ttl + ctx->cfg->leeway, reason, pending);
	}
	if (r > 0) {
		snprintf(out->jti, sizeof(out->jti), "%s", jti);
		api_pending_reply(pending, out, 200, json_object());
		goto out;
	}
	api_pending_free(pending);
	if (r < 0)
		api_registry_failed(out, req, r);
	else
		api_json(out, req, 200, json_object());
out:
	json_decref(claims);
	json_decref(body);
}

int api_registry_verdict(struct api_ctx *ctx, const json_t *claims, const char **ret_status)
{
	const char *jti = json_plain_string(json_object_get(claims, "jti"));
	const char *org = json_plain_string(json_object_get(claims, "org"));
	const char *parent;
	enum registry_status status;
	int found = 0;

	if (jti != NULL && registry_check(ctx->registry, jti, org ? org : "", &found, &status) < 0)
		found = 0;
	if (!found) {
		*ret_status = "unregistered";
		return 0;
	}
	if (status == REGISTRY_SUSPENDED)
		return JWS_E_SUSPENDED;
	if (status != REGISTRY_ACTIVE)
		return JWS_E_REVOKED;
	/* SPEC §5.5: a child verifies only while its parent is active.  A
	 * revocation reaches the child's own record (registry_set_status
	 * cascades), a suspension does not: it is looked up here.  A parent
	 * the registry does not know is not active either. */
	parent = json_plain_string(json_object_get(claims, "parent_jti"));
	if (parent != NULL) {
		found = 0;
		if (registry_check(ctx->registry, parent, org ? org : "", &found, &status) < 0 || !found)
			return JWS_E_REVOKED;
		if (status == REGISTRY_SUSPENDED)
			return JWS_E_SUSPENDED;
		if (status != REGISTRY_ACTIVE)
			return JWS_E_REVOKED;
	}
	*ret_status = "active";
	return 0;
}

void api_introspect(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct auth_caller caller;
	const char *token = NULL, *status;
	json_t *body = NULL, *claims = NULL;
	int r;

	if (api_authorize(ctx, req, AUTH_ROLE_TOKENS_INTROSPECT, &caller, out) < 0 ||
	    api_read_body(ctx, req, out, 1, &body) < 0)
		return;
	if (!json_is_object(body) || json_optional_string(body, "token", JWS_MAX_TOKEN, &token) < 0 || token == NULL) {
		api_error(out, req, 400, "invalid_request", "expected token (string), token_type_hint?");
		goto out;
	}
	claims = api_own_token_claims(ctx, token, strlen(token), &r);
	if (r == 0)
		r = api_registry_verdict(ctx, claims, &status);
	/* The token's own verdict, whoever may see it: POST /token/verify
	 * tells anyone as much. */
	metrics_verification(r);
	/* RFC 7662 §2.2: whatever makes a token unusable, and a token the
	 * caller may not see, is {"active": false} and nothing more. */
	if (r < 0 || !api_in_scope(&caller, claims)) {
		api_json(out, req, 200, json_pack("{s:b}", "active", 0));
		goto out;
	}
	snprintf(out->jti, sizeof(out->jti), "%s", json_plain_string(json_object_get(claims, "jti")) ?
		 json_plain_string(json_object_get(claims, "jti")) : "");
	/* The token's own "status" claim (its status-list entry) stays as it
	 * is; the registry's view is an extension member (RFC 7662 §2.2). */
	if (json_object_set_new(claims, "active", json_true()) < 0 ||
	    json_object_set_new(claims, "registry_status", json_string(status)) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	api_json(out, req, 200, json_incref(claims));
out:
	json_decref(claims);
	json_decref(body);
}
