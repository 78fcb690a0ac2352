/* The key set: every hsmjwt key in the token with its lifecycle state, the
 * signer of each algorithm, the JWKS document.  Operations that change the
 * token: keys_lifecycle.c. */
#include "hsmjwt/keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/log.h"

#include "keys_internal.h"

/* Readings of the token one load makes when other processes keep changing it. */
#define KEYS_LOAD_ATTEMPTS 3

void keys_policy(const struct config *cfg, struct keystate_policy *ret_policy)
{
	ret_policy->publish_ahead = cfg->publish_ahead;
	ret_policy->rotation_period = cfg->rotation_period;
	ret_policy->max_ttl = cfg->max_ttl;
	ret_policy->leeway = cfg->leeway;
	ret_policy->algorithms = cfg->algorithms;
	ret_policy->algorithm_count = cfg->algorithm_count;
}

static void keys_free(struct keys *keys)
{
	for (size_t i = 0; i < keys->count; i++) {
		EVP_PKEY_free(keys->entries[i].hsm.public_key);
		jwk_key_free(keys->entries[i].verify);
	}
	free(keys->entries);
	free(keys->jwks);
	free(keys);
}

struct keys *keys_ref(struct keys *keys)
{
	atomic_fetch_add(&keys->refs, 1);
	return keys;
}

void keys_release(struct keys *keys)
{
	if (keys != NULL && atomic_fetch_sub(&keys->refs, 1) == 1)
		keys_free(keys);
}

static int keys_build_jwks(struct keys *keys)
{
	json_t *doc = json_object(), *list = json_array();
	uint8_t digest[32];
	char b64[32];  /* 16 bytes → 22 characters */
	int r = -ENOMEM;

	if (doc == NULL || list == NULL || json_object_set(doc, "keys", list) < 0)
		goto out;
	for (size_t i = 0; i < keys->count; i++) {
		json_t *jwk = NULL;
		if (!keys->entries[i].published)
			continue;
		r = jwk_public_to_json(keys->entries[i].hsm.public_key, keys->entries[i].hsm.kid,
				       keys->entries[i].hsm.alg, &jwk);
		if (r < 0)
			goto out;
		if (json_array_append_new(list, jwk) < 0) {
			r = -ENOMEM;
			goto out;
		}
	}
	keys->jwks = json_dumps(doc, JSON_COMPACT);
	if (keys->jwks == NULL) {
		r = -ENOMEM;
		goto out;
	}
	keys->jwks_len = strlen(keys->jwks);
	/* A content hash: every replica serving the same key set serves the
	 * same ETag, so a client's If-None-Match works across a load balancer
	 * (which is also why the keys are ordered by kid, not by discovery). */
	if (!EVP_Digest(keys->jwks, keys->jwks_len, digest, NULL, EVP_sha256(), NULL)) {
		r = -EIO;
		goto out;
	}
	b64url_encode(digest, 16, b64);
	snprintf(keys->etag, sizeof(keys->etag), "\"%s\"", b64);
	r = 0;
out:
	json_decref(list);
	json_decref(doc);
	return r;
}

const struct keys_entry *keys_find(const struct keys *keys, const char *kid)
{
	if (kid == NULL)
		return NULL;
	for (size_t i = 0; i < keys->count; i++)
		if (strcmp(keys->entries[i].hsm.kid, kid) == 0)
			return &keys->entries[i];
	return NULL;
}

/* jwk_external_verify_fn of HS256 keys: the MAC is checked by the token,
 * through the calling thread's session. */
static int keys_verify_in_token(void *ctx, const struct jwk_key *key, const uint8_t *data, size_t data_len,
				const uint8_t *sig, size_t sig_len)
{
	const struct keys_view *view = ctx;
	const struct keys_entry *entry;
	int r;

	if (view == NULL || view->session == NULL)
		return JWS_E_UNAVAILABLE;
	entry = keys_find(view->keys, key->kid);
	if (entry == NULL)
		return JWS_E_UNKNOWN_KID;
	r = hsm_verify(view->session, &entry->hsm, data, data_len, sig, sig_len);
	if (r == 0)
		return 0;
	if (r == -EBADMSG)
		return JWS_E_BAD_SIGNATURE;
	return r == -ENOMEM ? -ENOMEM : JWS_E_UNAVAILABLE;
}

/* The verification key of a key from the token, or the verifier's refusal
 * (logged). */
static int keys_verify_key(const struct hsm_key *key, struct jwk_key **ret_verify)
{
	int r;

	if (key->alg == JWS_ALG_HS256)
		return jwk_key_external(key->kid, key->alg, keys_verify_in_token, ret_verify);
	r = jwk_key_from_pkey(key->public_key, key->alg, ret_verify);
	if (r < 0 && r != -ENOMEM)
		log_warn("\"the verifier refuses this key; skipped\" kid=%s alg=%s bits=%d", key->kid,
			 jws_alg_name(key->alg), EVP_PKEY_get_bits(key->public_key));
	return r;
}

/* The key's lifecycle records merged into one: *ret_count records parsed.
 * A record that does not parse, or names another algorithm than the key's
 * label, is left out with a warning (keys_sync replaces it). */
static void keys_read_records(const struct hsm_key *key, struct keystate_key *ret)
{
	for (size_t m = 0; m < key->meta_count; m++) {
		struct keystate_record rec;
		if (keystate_parse((const char *)key->meta[m].value, key->meta[m].len, &rec) < 0 ||
		    rec.alg != key->alg) {
			log_warn("\"unreadable key lifecycle record ignored\" kid=%s", key->kid);
			continue;
		}
		if (ret->has_record)
			keystate_merge(&ret->stored, &rec, &ret->stored);
		else
			ret->stored = rec;
		ret->has_record = 1;
	}
	/* Identical copies are harmless (two processes wrote the same
	 * transition at once) and are never pruned: each process would keep
	 * its own copy and delete the other's, leaving none.  Distinct texts
	 * count, and so do records beyond those read: a WRITE prunes them. */
	ret->record_count = (unsigned)(key->meta_found - key->meta_count);
	for (size_t m = 0; m < key->meta_count; m++) {
		size_t same = 0;
		for (size_t k = 0; k < m && !same; k++)
			same = key->meta[k].len == key->meta[m].len &&
			       memcmp(key->meta[k].value, key->meta[m].value, key->meta[m].len) == 0;
		ret->record_count += !same;
	}
}

static int keys_entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct keys_entry *)a)->hsm.kid, ((const struct keys_entry *)b)->hsm.kid);
}

static int keys_load_plan_once(struct hsm *hsm, const struct config *cfg, int64_t now, struct keys **ret_keys,
				struct keystate_key **ret_planned, struct keystate_plan *ret_plan)
{
	struct hsm_session *session = NULL;
	struct hsm_key *found = NULL;
	struct keystate_key *planned = NULL;
	struct keystate_policy policy;
	struct keystate_plan plan;
	struct keys *keys = NULL;
	size_t n = 0;
	int r;

	keys_policy(cfg, &policy);
	r = hsm_session_open(hsm, &session);
	if (r < 0)
		return r;
	r = hsm_find_keys(session, &found, &n);
	if (r < 0)
		goto out;
	r = -ENOMEM;
	keys = calloc(1, sizeof(*keys));
	planned = calloc(n ? n : 1, sizeof(*planned));
	if (keys == NULL || planned == NULL)
		goto out;
	atomic_init(&keys->refs, 1);
	keys->entries = calloc(n ? n : 1, sizeof(*keys->entries));
	if (keys->entries == NULL)
		goto out;
	keys->generation = n > 0 ? found[0].generation : hsm_generation(hsm);
	/* One key the verifier refuses (an RSA key under 2048 bits, say) must
	 * not keep the service from starting with the others; it is not
	 * planned either, so it never signs. */
	for (size_t i = 0; i < n; i++) {
		struct keys_entry *e = &keys->entries[keys->count];

		r = keys_verify_key(&found[i], &e->verify);
		if (r == -ENOMEM)
			goto out;
		if (r < 0)
			continue;
		e->hsm = found[i];
		found[i].public_key = NULL; /* ownership moved */
		e->published = e->hsm.alg != JWS_ALG_HS256;
		keys->count++;
	}
	/* Sorted by kid before planning, so that planned[i] is entries[i] and
	 * the same set gives the same document everywhere. */
	qsort(keys->entries, keys->count, sizeof(*keys->entries), keys_entry_cmp);
	for (size_t i = 0; i < keys->count; i++) {
		snprintf(planned[i].kid, sizeof(planned[i].kid), "%s", keys->entries[i].hsm.kid);
		planned[i].alg = keys->entries[i].hsm.alg;
		keys_read_records(&keys->entries[i].hsm, &planned[i]);
	}
	r = keystate_plan(planned, keys->count, now, &policy, &plan);
	if (r < 0) {
		log_error("\"cannot plan the key lifecycle\" error=%d", r);
		goto out;
	}
	keys->loaded_at = now;
	keys->next_change = plan.next_change;
	keys->next_activation = INT64_MAX;
	for (size_t i = 0; i < keys->count; i++) {
		keys->entries[i].state = planned[i].effective;
		if (planned[i].effective.state == KEYSTATE_NEXT && planned[i].effective.activate_at < keys->next_activation)
			keys->next_activation = planned[i].effective.activate_at;
	}
	atomic_init(&keys->confirmed_at, now);
	keys->jwks_max_age_cap = policy.publish_ahead;
	if (keys->jwks_max_age_cap > KEYSTATE_JWKS_MAX_AGE)
		keys->jwks_max_age_cap = KEYSTATE_JWKS_MAX_AGE;
	if (keys->jwks_max_age_cap < 0)
		keys->jwks_max_age_cap = 0;
	for (int a = 0; a < JWS_ALG_COUNT; a++) {
		keys->successor_at[a] = INT64_MAX;
		if (plan.signer[a] >= 0)
			keys->signer[a] = &keys->entries[plan.signer[a]];
	}
	/* The next key that will take over: the earliest of its algorithm
	 * (the plan destroys any others). */
	for (size_t i = 0; i < keys->count; i++) {
		enum jws_alg a = keys->entries[i].hsm.alg;
		if (keys->entries[i].state.state == KEYSTATE_NEXT &&
		    keys->entries[i].state.activate_at < keys->successor_at[a]) {
			keys->successor[a] = &keys->entries[i];
			keys->successor_at[a] = keys->entries[i].state.activate_at;
		}
	}
	r = keys_build_jwks(keys);
	if (r < 0)
		goto out;
	*ret_keys = keys;
	keys = NULL;
	if (ret_planned != NULL) {
		*ret_planned = planned;
		planned = NULL;
	}
	if (ret_plan != NULL)
		*ret_plan = plan;
out:
	if (keys != NULL)
		keys_free(keys);
	free(planned);
	hsm_keys_free(found, n);
	hsm_session_close(session);
	return r;
}

int keys_load_plan(struct hsm *hsm, const struct config *cfg, int64_t now, struct keys **ret_keys,
		   struct keystate_key **ret_planned, struct keystate_plan *ret_plan)
{
	int r = -EAGAIN;

	/* -EAGAIN: another process destroyed an object (a key, a superseded
	 * record) between the search and the read.  Such a half-read view must
	 * not be planned — a key missing its replaced record would look like
	 * one that lost its records — so the whole view is read again. */
	for (int attempt = 0; attempt < KEYS_LOAD_ATTEMPTS && r == -EAGAIN; attempt++)
		r = keys_load_plan_once(hsm, cfg, now, ret_keys, ret_planned, ret_plan);
	if (r == -EAGAIN)
		log_warn("\"the token's keys kept changing while being read\" attempts=%d", KEYS_LOAD_ATTEMPTS);
	return r;
}

int keys_load(struct hsm *hsm, const struct config *cfg, int64_t now, struct keys **ret_keys)
{
	return keys_load_plan(hsm, cfg, now, ret_keys, NULL, NULL);
}

const struct jwk_key *keys_lookup(void *ctx, const char *kid)
{
	const struct keys_view *view = ctx;
	const struct keys_entry *entry = keys_find(view->keys, kid);

	return entry ? entry->verify : NULL;
}

const struct keys_entry *keys_signer(const struct keys *keys, enum jws_alg alg)
{
	if ((int)alg <= 0 || alg >= JWS_ALG_COUNT)
		return NULL;
	return keys->signer[alg];
}

const struct keys_entry *keys_signer_at(const struct keys *keys, enum jws_alg alg, int64_t now)
{
	const struct keys_entry *chosen, *before = NULL;

	if ((int)alg <= 0 || alg >= JWS_ALG_COUNT)
		return NULL;
	if (keys->successor[alg] != NULL && now >= keys->successor_at[alg])
		return keys->successor[alg];
	chosen = keys->signer[alg];
	/* An immediate rotation in the very second its predecessor took over
	 * activates a second later (keystate_rotate) yet signs at once: only a
	 * now before the second the set was planned at looks further. */
	if (chosen == NULL || now >= keys->loaded_at || now >= chosen->state.activate_at)
		return chosen;
	/* The set was planned at a later second than now: a now read before
	 * the set was acquired (the renewal thread's), or a wall clock that
	 * stepped back (a VM restored, NTP).  The key whose records say it
	 * signed at now does, so that no token's iat precedes its key's
	 * activate_at; with none (a key promoted early because nothing else
	 * could sign), the planned signer does.  Only for a few seconds: a
	 * clock stepped back further must not bring back a key that an
	 * immediate rotation replaced (perhaps compromised) for as long as the
	 * step — the planned signer signs, its tokens' iat a little early. */
	if (keys->loaded_at - now > KEYS_SIGNER_SKEW)
		return chosen;
	for (size_t i = 0; i < keys->count; i++) {
		const struct keys_entry *e = &keys->entries[i];

		if (e->hsm.alg == alg && e->state.state == KEYSTATE_RETIRED && e->state.activate_at <= now &&
		    now < e->state.retired_at && (before == NULL || e->state.activate_at > before->state.activate_at))
			before = e;
	}
	return before != NULL ? before : chosen;
}

int64_t keys_jwks_max_age(const struct keys *keys, int64_t now)
{
	int64_t age = keys->jwks_max_age_cap - (now - atomic_load(&keys->confirmed_at));

	if (keys->next_activation != INT64_MAX && keys->next_activation - now < age)
		age = keys->next_activation - now;
	return age > 0 ? age : 0;
}

int keys_entry_to_json(const struct keys *keys, const struct keys_entry *entry, const struct config *cfg,
		       json_t **ret_json)
{
	const struct keystate_record *st = &entry->state;
	struct keystate_policy policy;
	json_t *j;

	keys_policy(cfg, &policy);
	j = json_pack("{s:s, s:s, s:s, s:b, s:b, s:I, s:I}", "kid", entry->hsm.kid, "alg",
		      jws_alg_name(entry->hsm.alg), "state", keystate_name(st->state), "signing",
		      keys_signer(keys, entry->hsm.alg) == entry, "published", entry->published, "created",
		      (json_int_t)st->created, "activate_at", (json_int_t)st->activate_at);
	if (j == NULL)
		return -ENOMEM;
	if (st->state == KEYSTATE_RETIRED &&
	    (json_object_set_new(j, "retired_at", json_integer(st->retired_at)) < 0 ||
	     json_object_set_new(j, "destroy_after", json_integer(keystate_destroy_after(st, &policy))) < 0)) {
		json_decref(j);
		return -ENOMEM;
	}
	*ret_json = j;
	return 0;
}
