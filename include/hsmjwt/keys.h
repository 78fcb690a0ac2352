/* keys: the service's key set — every hsmjwt key in the token, its public
 * JWK, its lifecycle state (keystate.h), the signing key of each algorithm,
 * and the JWKS document — and the lifecycle operations that change the
 * token (keys_lifecycle.c: sync, rotate, retire, destroy).
 *
 * A struct keys is immutable once loaded and reference-counted, so worker
 * threads read it without locks while the keyring (keyring.h) swaps in a
 * new one; the last keys_release frees it. */
#ifndef HSMJWT_KEYS_H
#define HSMJWT_KEYS_H

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/keystate.h"

struct keys_entry {
	struct hsm_key hsm;              /* alg, kid, handles, public key (NULL for HS256), records */
	struct jwk_key *verify;          /* verification key, alg fixed to hsm.alg; HS256: verified in the token */
	struct keystate_record state;    /* the effective state when the set was loaded */
	int published;                   /* in the JWKS: every key but HS256's */
};

struct keys {
	atomic_uint refs;
	struct keys_entry *entries;
	size_t count;
	/* The key that signs each algorithm (keystate_plan's signer), NULL when
	 * the set has none. */
	const struct keys_entry *signer[JWS_ALG_COUNT];
	/* The next key of each algorithm and when it takes over (INT64_MAX:
	 * none), so that signing switches at that second in every process
	 * whatever the keyring is busy with (keys_signer_at). */
	const struct keys_entry *successor[JWS_ALG_COUNT];
	int64_t successor_at[JWS_ALG_COUNT];
	char *jwks;                  /* the JWKS document, compact JSON, keys ordered by kid */
	size_t jwks_len;
	char etag[40];               /* quoted strong ETag of jwks (a content hash) */
	int64_t loaded_at;           /* the `now` the set was planned at */
	/* When the set goes out of date by itself (keystate_plan's next_change):
	 * the keyring reloads by then. */
	int64_t next_change;
	/* The next scheduled activation, INT64_MAX when none: a JWKS copy must
	 * not be cached past it. */
	int64_t next_activation;
	int64_t jwks_max_age_cap;    /* min(KEYSTATE_JWKS_MAX_AGE, publish_ahead), >= 0 */
	/* When the token was last read and found to hold this set (the keyring
	 * moves it on at every poll that finds nothing new).  A key made after
	 * it activates publish_ahead after its making at the earliest, so a
	 * copy served at t may be cached publish_ahead - (t - confirmed_at). */
	_Atomic int64_t confirmed_at;
	unsigned generation;         /* hsm_generation() of the handles */
};

/* Reads every key and lifecycle record from the token and plans the
 * lifecycle at now with cfg's policy; writes nothing to the token (keys_sync
 * does).  A key the verifier refuses (an RSA key under 2048 bits) or whose
 * record names another algorithm is skipped with a warning.  0 and *ret_keys
 * (one reference), or a negative error (an hsm_error when the token could
 * not be read: never a partial set). */
int keys_load(struct hsm *hsm, const struct config *cfg, int64_t now, struct keys **ret_keys);
/* Another reference to keys; returns keys. */
struct keys *keys_ref(struct keys *keys);
/* Drops a reference; the last one frees the set.  NULL is fine. */
void keys_release(struct keys *keys);

/* What verification needs besides the set: the calling thread's token
 * session, for HS256 keys, which verify inside the token (NULL in offline
 * tools: such tokens then fail with JWS_E_UNAVAILABLE). */
struct keys_view {
	const struct keys *keys;
	struct hsm_session *session;
};

/* jws_key_lookup_fn over a struct keys_view (ctx). */
const struct jwk_key *keys_lookup(void *ctx, const char *kid);

/* The key that signed alg when the set was loaded, or NULL. */
const struct keys_entry *keys_signer(const struct keys *keys, enum jws_alg alg);
/* The key that signs alg at now: the loaded signer, or its successor once
 * the successor's activate_at has come — the switch must not wait for a
 * reload (the keyring may be generating an RSA key for seconds), or the old
 * key would sign past its retirement and outlive its destruction window.
 * For a now before the second the set was planned at, by at most
 * KEYS_SIGNER_SKEW seconds, and before the loaded signer's activate_at, the
 * key that was signing then, if the set still holds it. */
#define KEYS_SIGNER_SKEW 2
const struct keys_entry *keys_signer_at(const struct keys *keys, enum jws_alg alg, int64_t now);
/* The key with this kid, or NULL. */
const struct keys_entry *keys_find(const struct keys *keys, const char *kid);

/* Cache-Control max-age of the JWKS served at now: jwks_max_age_cap less
 * the time since confirmed_at, and never past next_activation; >= 0.  A
 * replica that cannot read the token (failed, hung, busy) serves ever
 * shorter lifetimes rather than a stale set for long. */
int64_t keys_jwks_max_age(const struct keys *keys, int64_t now);

/* One key as GET /admin/keys and `hsmjwtctl keys list` show it:
 * {kid, alg, state, signing, published, created, activate_at, retired_at?,
 * destroy_after?} (times in seconds since the epoch).  New reference. */
int keys_entry_to_json(const struct keys *keys, const struct keys_entry *entry, const struct config *cfg,
		       json_t **ret_json);

/* ---- lifecycle operations on the token (keys_lifecycle.c) ------------- */

enum keys_sync_flags {
	KEYS_SYNC_GENERATE = 1u << 0,  /* a configured algorithm without any key gets an active one */
	KEYS_SYNC_ROTATE   = 1u << 1,  /* generate next keys when rotation_period says so */
	KEYS_SYNC_DESTROY  = 1u << 2,  /* destroy retired keys past their window, surplus next keys */
};

/* Makes the token say what the lifecycle plan at now says: writes the
 * records that differ (persisting activations and retirements, recording
 * keys from before records existed, pruning superseded records), and, as
 * flags allow, destroys and generates keys.  Safe to run from several
 * processes at once (records merge; a surplus next key is destroyed by
 * the next sync).  *ret_changed (may be NULL): how many changes were made. */
int keys_sync(struct hsm *hsm, const struct config *cfg, int64_t now, unsigned flags, unsigned *ret_changed);

/* What a lifecycle operation did to one key. */
struct keys_change {
	enum jws_alg alg;
	char kid[JWK_THUMBPRINT_LEN + 1];
	struct keystate_record record;   /* the record written */
	int generated;                   /* 1 when the key was generated by this operation */
};

/* A manual rotation of alg (keystate_rotate's rules): generates a next key,
 * or (immediate) an active key or promotes the waiting next key.  -EEXIST
 * when a rotation is already under way (its key in *ret_change). */
int keys_rotate(struct hsm *hsm, const struct config *cfg, enum jws_alg alg, int immediate, int64_t now,
		struct keys_change *ret_change);
/* Retires the key kid (keystate_retire's rules); -ENOENT for an unknown kid. */
int keys_retire(struct hsm *hsm, const struct config *cfg, const char *kid, int64_t now,
		struct keys_change *ret_change);
/* Destroys the key kid when keystate_check_destroy allows it (or force);
 * -EBUSY with *ret_safe_at (may be NULL) otherwise, -ENOENT for an unknown
 * kid. */
int keys_destroy(struct hsm *hsm, const struct config *cfg, const char *kid, int force, int64_t now,
		 int64_t *ret_safe_at);

/* cfg's lifecycle policy (publish_ahead, rotation_period, max_ttl, leeway,
 * algorithms); points into cfg. */
void keys_policy(const struct config *cfg, struct keystate_policy *ret_policy);

#endif
