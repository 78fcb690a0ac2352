/* Key administration over HTTP (SPEC §4.2, §6): GET /admin/keys and
 * POST /admin/rotate-keys.  A rotation runs on the keyring's thread —
 * generating an RSA key takes seconds, which no worker's loop may spend —
 * and is answered once the new key set is current. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "hsmjwt/api.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

#include "api_internal.h"

/* The keys serve every org: a caller confined to one (its token has an
 * org claim) may not list or rotate them, whatever its roles say. */
static int api_service_wide(struct evhttp_request *req, const struct auth_caller *caller, struct api_outcome *out)
{
	if (caller->org[0] == '\0')
		return 0;
	api_error(out, req, 403, "insufficient_scope", "key administration needs a caller token without an org");
	return -EACCES;
}

void api_admin_keys(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct auth_caller caller;
	json_t *list, *body;

	if (api_authorize(ctx, req, AUTH_ROLE_KEYS_ADMIN, &caller, out) < 0 || api_service_wide(req, &caller, out) < 0)
		return;
	list = json_array();
	for (size_t i = 0; list != NULL && i < ctx->keys->count; i++) {
		json_t *entry = NULL;
		if (keys_entry_to_json(ctx->keys, &ctx->keys->entries[i], ctx->cfg, &entry) < 0 ||
		    json_array_append_new(list, entry) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	body = list ? json_pack("{s:o, s:I, s:s}", "keys", list, "jwks_max_age",
				(json_int_t)keys_jwks_max_age(ctx->keys, api_now()), "hsm",
				hsm_available(ctx->hsm) ? "ok" : "unavailable") : NULL;
	if (body == NULL) {
		api_error(out, req, 500, "server_error", "out of memory");
		return;
	}
	api_json(out, req, 200, body);
}

/* keyring_rotate_done_fn: on the keyring's thread. */
static void api_rotated(void *arg, int result, const struct keys_change *changes, size_t n)
{
	struct api_pending *pending = arg;
	json_t *list, *body = NULL;

	switch (result) {
	case 0:
		break;
	case -EEXIST:
		api_pending_answer(pending, 409, NULL, "conflict",
				   "a rotation is already under way: its next key has not been activated yet");
		return;
	case -EINVAL:
		api_pending_answer(pending, 400, NULL, "invalid_request", "no configured algorithm to rotate");
		return;
	case HSM_E_DEVICE:
	case HSM_E_STALE:
	case HSM_E_LOGIN:
	case HSM_E_MODULE:
	case HSM_E_NO_TOKEN:
		api_pending_answer(pending, 503, NULL, "hsm_unavailable", "the token cannot generate keys right now");
		return;
	case -ECANCELED:
		api_pending_answer(pending, 503, NULL, "hsm_unavailable", "the service is stopping");
		return;
	default:
		api_pending_answer(pending, 500, NULL, "server_error", "the rotation failed; see the service log");
		return;
	}
	list = json_array();
	for (size_t i = 0; list != NULL && i < n; i++) {
		json_t *entry = json_pack("{s:s, s:s, s:s, s:I, s:b}", "alg", jws_alg_name(changes[i].alg), "kid",
					  changes[i].kid, "state", keystate_name(changes[i].record.state),
					  "activate_at", (json_int_t)changes[i].record.activate_at, "generated",
					  changes[i].generated);
		if (entry == NULL || json_array_append_new(list, entry) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	if (list != NULL)
		body = json_pack("{s:o}", "rotated", list);
	if (body == NULL)
		api_pending_answer(pending, 500, NULL, "server_error", "out of memory");
	else
		api_pending_answer(pending, 200, body, NULL, NULL);
}

void api_admin_rotate(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out,
		      const char *segment)
{
	static const char *const members[] = { "alg", "immediate" };
	enum jws_alg alg = JWS_ALG_INVALID;
	struct api_pending *pending = NULL;
	struct auth_caller caller;
	json_t *body = NULL, *immediate = NULL;
	const char *alg_name = NULL, *name;
	json_t *value;
	int r;

	if (api_authorize(ctx, req, AUTH_ROLE_KEYS_ADMIN, &caller, out) < 0 || api_service_wide(req, &caller, out) < 0)
		return;
	/* No body at all asks for the default: every algorithm, pre-published. */
	if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) == 0)
		body = json_object();
	else if (api_read_body(ctx, req, out, 0, &body) < 0)
		return;
	if (!json_is_object(body) || json_optional_string(body, "alg", 16, &alg_name) < 0 ||
	    ((immediate = json_object_get(body, "immediate")) != NULL && !json_is_boolean(immediate))) {
		api_error(out, req, 400, "invalid_request", "expected {\"alg\"?: string, \"immediate\"?: boolean}");
		goto out;
	}
	json_object_foreach(body, name, value) {
		size_t i;
		for (i = 0; i < sizeof(members) / sizeof(members[0]) && strcmp(name, members[i]) != 0; i++)
			;
		if (i == sizeof(members) / sizeof(members[0])) {
			api_error(out, req, 400, "invalid_request", "unknown member in the request");
			goto out;
		}
	}
	if (alg_name != NULL) {
		size_t a;
		for (a = 0; a < ctx->cfg->algorithm_count && strcmp(jws_alg_name(ctx->cfg->algorithms[a]), alg_name) != 0;
		     a++)
			;
		if (a == ctx->cfg->algorithm_count) {
			api_error(out, req, 400, "invalid_request", "alg is not one of the configured algorithms");
			goto out;
		}
		alg = ctx->cfg->algorithms[a];
	}
	if (api_pending_new(ctx, req, &pending) < 0) {
		api_error(out, req, 500, "server_error", "out of memory");
		goto out;
	}
	r = keyring_rotate(ctx->keyring, alg, json_is_true(immediate), api_rotated, pending);
	if (r < 0) {
		api_pending_free(pending);
		if (r == -EAGAIN)
			api_error(out, req, 409, "conflict", "a rotation is being carried out; try again when it is done");
		else
			api_error(out, req, 503, "hsm_unavailable", "the service is stopping");
		goto out;
	}
	/* The answer goes out from this worker's loop, after this returns. */
	api_pending_defer(pending, out);
out:
	json_decref(body);
}
