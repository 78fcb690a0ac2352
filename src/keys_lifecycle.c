/* Lifecycle operations on the token (SPEC §6): making the token say what
 * the plan says (keys_sync), and the operator's rotate, retire, destroy.
 * Each reads the token afresh and plans (keystate.h) before it acts, so
 * that it acts on what the token holds now, not on a set loaded earlier —
 * another daemon or hsmjwtctl may have changed it since. */
#include "hsmjwt/keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

#include "keys_internal.h"

/* Stores rec as key's record, then drops the records it supersedes.
 * Records that already say exactly rec are kept (none is written then):
 * identical copies are harmless under merge, and two processes pruning at
 * once must never delete each other's copy — handle order differs between
 * processes, so "keep the first" would leave the key with no record at all.
 * A failure to drop one leaves two, which merge to rec and are pruned by
 * the next sync. */
static int keys_write_record(struct hsm *hsm, const struct hsm_key *key, const struct keystate_record *rec)
{
	char text[KEYSTATE_RECORD_MAX + 1];
	size_t len;
	int r, present = 0;

	r = keystate_format(rec, text, sizeof(text), &len);
	if (r < 0) {
		log_error("\"cannot format a key lifecycle record\" kid=%s error=%d", key->kid, r);
		return r;
	}
	for (size_t m = 0; m < key->meta_count; m++)
		present |= key->meta[m].len == len && memcmp(key->meta[m].value, text, len) == 0;
	if (!present) {
		r = hsm_meta_add(hsm, key, (const uint8_t *)text, len);
		if (r < 0)
			return r;
	}
	for (size_t m = 0; m < key->meta_count; m++) {
		if (key->meta[m].len == len && memcmp(key->meta[m].value, text, len) == 0)
			continue;
		if (hsm_meta_remove(hsm, key, m) < 0)
			log_warn("\"cannot remove a superseded lifecycle record; the next sync retries\" kid=%s", key->kid);
	}
	return 0;
}

/* The first record of a key being generated, planned before generation
 * as rec (at the caller's now, taken when the wall clock read wall). */
struct keys_generate_meta {
	const struct keystate_record *rec;
	time_t wall;
	struct keystate_record written;
};

/* hsm_meta_fn: rec moved to the moment the key exists.  Generation may take
 * seconds (RSA 4096), and a next key must still be published for
 * publish_ahead + slack before it activates: created becomes now (the
 * caller's now plus the seconds since, on the wall clock — the caller's
 * clock is kept), a next key's activate_at keeps its distance from created,
 * an active key's is now unless rec asked for later (keystate_rotate's
 * second after a predecessor). */
static int keys_generate_meta(void *arg, enum jws_alg alg, uint8_t *buf, size_t size, size_t *ret_len)
{
	struct keys_generate_meta *m = arg;
	struct keystate_record rec = *m->rec;
	int64_t elapsed = (int64_t)(time(NULL) - m->wall), now;
	int r;

	/* A wall clock stepped back says nothing about how long it took. */
	if (elapsed < 0)
		elapsed = 0;
	now = rec.created + elapsed;
	if (rec.state == KEYSTATE_NEXT)
		rec.activate_at = now + (rec.activate_at - rec.created);
	else if (rec.activate_at < now)
		rec.activate_at = now;
	rec.created = now;
	r = keystate_format(&rec, (char *)buf, size, ret_len);
	if (r < 0) {
		log_error("\"cannot format a key lifecycle record\" alg=%s error=%d", jws_alg_name(alg), r);
		return r;
	}
	m->written = rec;
	return 0;
}

/* Generates a key for alg in the token with rec, planned at the moment the
 * wall clock read wall, as its first record, stamped once the key exists;
 * *ret_written is the record written. */
static int keys_generate(struct hsm *hsm, const struct config *cfg, enum jws_alg alg,
			 const struct keystate_record *rec, time_t wall, struct hsm_key *ret_key,
			 struct keystate_record *ret_written)
{
	struct keys_generate_meta m = { rec, wall, { 0 } };
	int r;

	r = hsm_generate_key(hsm, alg, cfg->rsa_bits, keys_generate_meta, &m, ret_key);
	if (r < 0)
		return r;
	*ret_written = m.written;
	return 0;
}

static void keys_log_transition(const struct keystate_key *k)
{
	if (!k->has_record)
		log_info("\"key lifecycle recorded for a key from before records\" kid=%s alg=%s state=%s", k->kid,
			 jws_alg_name(k->alg), keystate_name(k->effective.state));
	else if (k->stored.state != k->effective.state)
		log_info("\"key %s\" kid=%s alg=%s", k->effective.state == KEYSTATE_ACTIVE ? "activated" : "retired",
			 k->kid, jws_alg_name(k->alg));
}

int keys_sync(struct hsm *hsm, const struct config *cfg, int64_t now, unsigned flags, unsigned *ret_changed)
{
	struct keys *keys = NULL;
	struct keystate_key *planned = NULL;
	struct keystate_policy policy;
	struct keystate_plan plan;
	unsigned changed = 0;
	time_t wall = time(NULL);
	int r;

	keys_policy(cfg, &policy);
	r = keys_load_plan(hsm, cfg, now, &keys, &planned, &plan);
	if (r < 0)
		return r;
	for (size_t i = 0; i < keys->count; i++) {
		const struct keys_entry *e = &keys->entries[i];

		if ((planned[i].actions & KEYSTATE_DESTROY) && (flags & KEYS_SYNC_DESTROY)) {
			r = hsm_destroy_key(hsm, &e->hsm);
			if (r < 0)
				goto out;
			log_info("\"key destroyed by its lifecycle\" kid=%s alg=%s reason=%s", e->hsm.kid,
				 jws_alg_name(e->hsm.alg),
				 planned[i].effective.state == KEYSTATE_NEXT ? "surplus_next_key" : "retirement_over");
			changed++;
			continue;
		}
		if (planned[i].actions & KEYSTATE_WRITE) {
			r = keys_write_record(hsm, &e->hsm, &planned[i].effective);
			if (r < 0)
				goto out;
			keys_log_transition(&planned[i]);
			changed++;
		}
	}
	for (size_t a = 0; (flags & KEYS_SYNC_GENERATE) && a < plan.generate_active_count; a++) {
		struct keystate_record rec = { KEYSTATE_ACTIVE, plan.generate_active[a], now, now, 0 }, written;
		struct hsm_key key;

		r = keys_generate(hsm, cfg, rec.alg, &rec, wall, &key, &written);
		if (r < 0)
			goto out;
		log_info("\"key generated for an algorithm without one\" kid=%s alg=%s state=active activate_at=%lld",
			 key.kid, jws_alg_name(key.alg), (long long)written.activate_at);
		EVP_PKEY_free(key.public_key);
		changed++;
	}
	for (size_t a = 0; (flags & KEYS_SYNC_ROTATE) && a < plan.generate_next_count; a++) {
		struct keystate_record rec, written = { 0 };
		struct hsm_key key;
		int index = -1;

		r = keystate_rotate(planned, keys->count, plan.generate_next[a], 0, now, &policy, &index, &rec);
		/* The plan asks only for algorithms without a next key: a next
		 * key found here (index >= 0) means nothing is to be made. */
		if (r == -EEXIST || (r == 0 && index >= 0))
			continue;
		if (r == 0)
			r = keys_generate(hsm, cfg, rec.alg, &rec, wall, &key, &written);
		if (r < 0)
			goto out;
		metrics_key_rotation();
		log_info("\"key generated by automatic rotation\" kid=%s alg=%s state=next activate_at=%lld", key.kid,
			 jws_alg_name(key.alg), (long long)written.activate_at);
		EVP_PKEY_free(key.public_key);
		changed++;
	}
	r = 0;
out:
	if (ret_changed != NULL)
		*ret_changed = changed;
	free(planned);
	keys_release(keys);
	return r;
}

/* The token's keys with their plan, as keys_load_plan gives them, and the
 * index of kid among them: what an operator's command on one key starts
 * from.  -ENOENT (logged) when the token has no such key. */
static int keys_load_kid(struct hsm *hsm, const struct config *cfg, const char *kid, int64_t now,
			 struct keys **ret_keys, struct keystate_key **ret_planned, size_t *ret_index)
{
	struct keys *keys = NULL;
	struct keystate_key *planned = NULL;
	const struct keys_entry *e;
	int r;

	r = keys_load_plan(hsm, cfg, now, &keys, &planned, NULL);
	if (r < 0)
		return r;
	e = keys_find(keys, kid);
	if (e == NULL) {
		char shown[2 * JWK_KID_MAX + 3];
		log_error("\"no such key in the token\" kid=%s", log_quote(shown, sizeof(shown), kid));
		r = -ENOENT;
		goto out;
	}
	*ret_index = (size_t)(e - keys->entries);
	*ret_keys = keys;
	*ret_planned = planned;
	keys = NULL;
	planned = NULL;
out:
	free(planned);
	keys_release(keys);
	return r;
}

static void keys_fill_change(struct keys_change *ret, enum jws_alg alg, const char *kid,
			     const struct keystate_record *rec, int generated)
{
	memset(ret, 0, sizeof(*ret));
	ret->alg = alg;
	snprintf(ret->kid, sizeof(ret->kid), "%s", kid);
	ret->record = *rec;
	ret->generated = generated;
}

int keys_rotate(struct hsm *hsm, const struct config *cfg, enum jws_alg alg, int immediate, int64_t now,
		struct keys_change *ret_change)
{
	struct keys *keys = NULL;
	struct keystate_key *planned = NULL;
	struct keystate_policy policy;
	struct keystate_record rec;
	struct hsm_key key;
	time_t wall = time(NULL);
	int index = -1, r;

	if (!hsm_alg_supported(alg)) {
		log_error("\"cannot rotate: not an algorithm hsmjwt holds keys for\" alg=%s",
			  jws_alg_name(alg) ? jws_alg_name(alg) : "(invalid)");
		return -EINVAL;
	}
	keys_policy(cfg, &policy);
	r = keys_load_plan(hsm, cfg, now, &keys, &planned, NULL);
	if (r < 0)
		return r;
	r = keystate_rotate(planned, keys->count, alg, immediate, now, &policy, &index, &rec);
	if (r == -EEXIST) {
		keys_fill_change(ret_change, alg, planned[index].kid, &planned[index].effective, 0);
		goto out;
	}
	if (r < 0)
		goto out;
	if (index >= 0) {
		r = keys_write_record(hsm, &keys->entries[index].hsm, &rec);
		if (r < 0)
			goto out;
		keys_fill_change(ret_change, alg, planned[index].kid, &rec, 0);
	} else {
		/* rec becomes the record written, stamped after generation. */
		r = keys_generate(hsm, cfg, alg, &rec, wall, &key, &rec);
		if (r < 0)
			goto out;
		/* A rotation counts once, when it makes its key: promoting that
		 * key later (immediate, or its activation) is the same one. */
		metrics_key_rotation();
		keys_fill_change(ret_change, alg, key.kid, &rec, 1);
		EVP_PKEY_free(key.public_key);
	}
	log_info("\"key rotation\" kid=%s alg=%s state=%s activate_at=%lld generated=%d", ret_change->kid,
		 jws_alg_name(alg), keystate_name(rec.state), (long long)rec.activate_at, ret_change->generated);
	/* An immediate rotation retires the previous signer at once: say so in
	 * the token now rather than at the next sync. */
	if (immediate)
		r = keys_sync(hsm, cfg, now, 0, NULL);
out:
	free(planned);
	keys_release(keys);
	return r;
}

int keys_retire(struct hsm *hsm, const struct config *cfg, const char *kid, int64_t now,
		struct keys_change *ret_change)
{
	struct keys *keys = NULL;
	struct keystate_key *planned = NULL;
	struct keystate_record rec;
	size_t index;
	int r;

	r = keys_load_kid(hsm, cfg, kid, now, &keys, &planned, &index);
	if (r < 0)
		return r;
	r = keystate_retire(planned, keys->count, index, now, &rec);
	if (r < 0)
		goto out;
	r = keys_write_record(hsm, &keys->entries[index].hsm, &rec);
	if (r < 0)
		goto out;
	keys_fill_change(ret_change, rec.alg, kid, &rec, 0);
	log_info("\"key retired by the operator\" kid=%s alg=%s", kid, jws_alg_name(rec.alg));
out:
	free(planned);
	keys_release(keys);
	return r;
}

int keys_destroy(struct hsm *hsm, const struct config *cfg, const char *kid, int force, int64_t now,
		 int64_t *ret_safe_at)
{
	struct keys *keys = NULL;
	struct keystate_key *planned = NULL;
	struct keystate_policy policy;
	int64_t safe_at = 0;
	size_t index;
	int r;

	keys_policy(cfg, &policy);
	r = keys_load_kid(hsm, cfg, kid, now, &keys, &planned, &index);
	if (r < 0)
		return r;
	r = keystate_check_destroy(planned, keys->count, index, now, &policy, force, &safe_at);
	if (r == -EBUSY) {
		if (ret_safe_at != NULL)
			*ret_safe_at = safe_at;
		goto out;
	}
	if (r < 0)
		goto out;
	r = hsm_destroy_key(hsm, &keys->entries[index].hsm);
	if (r == 0)
		log_info("\"key destroyed by the operator\" kid=%s alg=%s state=%s forced=%d", kid,
			 jws_alg_name(keys->entries[index].hsm.alg), keystate_name(planned[index].effective.state),
			 force);
out:
	free(planned);
	keys_release(keys);
	return r;
}
