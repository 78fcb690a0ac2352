/* keys: the key set loaded from a token (records, effective states, signers,
 * the JWKS and its max-age) and the lifecycle operations on the token
 * (sync, rotate, retire, destroy), each against a fresh SoftHSM token.  The
 * pure rules are test_keystate's; here every rule is seen through the
 * token: time moves by passing a later `now`, never by sleeping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/config.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/keys.h"

static struct fixture_token tok;
static struct hsm *hsm;
static struct config cfg;
static int64_t t0;

static int setup(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_RS256 };

	if (fixture_token_create(&tok) != 0 || fixture_config(&cfg, algs, 2) != 0 ||
	    hsm_open(fixture_module(), FIXTURE_TOKEN_LABEL, tok.pin, tok.pin_len, &hsm) != 0)
		return -1;
	t0 = (int64_t)time(NULL);
	return 0;
}

static int teardown(void **state)
{
	hsm_close(hsm);
	config_free(&cfg);
	fixture_token_destroy(&tok);
	return 0;
}

static void use_algs(const enum jws_alg *algs, size_t n)
{
	memcpy(cfg.algorithms, algs, n * sizeof(*algs));
	cfg.algorithm_count = n;
}

static struct keys *load_at(int64_t now)
{
	struct keys *keys = NULL;

	assert_int_equal(keys_load(hsm, &cfg, now, &keys), 0);
	return keys;
}

static const struct keys_entry *entry(const struct keys *keys, const char *kid)
{
	const struct keys_entry *e = keys_find(keys, kid);

	assert_non_null(e);
	return e;
}

/* hsm_meta_fn writing ctx, a formatted record, as the new key's record. */
static int text_meta(void *ctx, enum jws_alg alg, uint8_t *buf, size_t size, size_t *ret_len)
{
	size_t len = strlen(ctx);

	if (len > size)
		return -ENOSPC;
	memcpy(buf, ctx, len);
	*ret_len = len;
	return 0;
}

/* The record stored in the token for e (exactly one expected). */
static struct keystate_record stored_record(const struct keys_entry *e)
{
	struct keystate_record rec;

	assert_int_equal(e->hsm.meta_found, 1);
	assert_int_equal(keystate_parse((const char *)e->hsm.meta[0].value, e->hsm.meta[0].len, &rec), 0);
	return rec;
}

static void test_generates_missing_once(void **state)
{
	struct keys *none, *first, *second;

	/* Loading writes nothing: a fresh token has no keys and no signer. */
	none = load_at(t0);
	assert_int_equal(none->count, 0);
	assert_null(keys_signer(none, JWS_ALG_ES256));
	keys_release(none);

	assert_int_equal(fixture_keys(hsm, &cfg, 1, &first), 0);
	assert_int_equal(first->count, 2);
	for (size_t i = 0; i < first->count; i++) {
		struct keystate_record rec = stored_record(&first->entries[i]);
		assert_int_equal(rec.state, KEYSTATE_ACTIVE);
		assert_int_equal(first->entries[i].state.state, KEYSTATE_ACTIVE);
		assert_ptr_equal(keys_signer(first, first->entries[i].hsm.alg), &first->entries[i]);
	}
	assert_null(keys_signer(first, JWS_ALG_PS256));

	/* A second start finds the same keys and generates nothing. */
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &second), 0);
	assert_int_equal(second->count, 2);
	assert_string_equal(keys_signer(first, JWS_ALG_ES256)->hsm.kid, keys_signer(second, JWS_ALG_ES256)->hsm.kid);
	assert_string_equal(keys_signer(first, JWS_ALG_RS256)->hsm.kid, keys_signer(second, JWS_ALG_RS256)->hsm.kid);
	/* Same key set, same document, same ETag. */
	assert_string_equal(first->jwks, second->jwks);
	assert_string_equal(first->etag, second->etag);
	/* The references are counted: one more, one less, still alive. */
	assert_ptr_equal(keys_ref(first), first);
	keys_release(first);
	assert_string_equal(first->etag, second->etag);
	keys_release(first);
	keys_release(second);
}

static void test_jwks_document_and_lookup(void **state)
{
	struct keys *keys = NULL;
	struct keys_view view;
	const struct keys_entry *signer;
	json_t *doc = NULL, *list, *jwk;
	const char *previous = "";
	size_t i;

	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	view = (struct keys_view){ keys, NULL };
	assert_int_equal(json_strict_parse(keys->jwks, keys->jwks_len, 16, &doc), 0);
	list = json_object_get(doc, "keys");
	assert_int_equal(json_array_size(list), keys->count);
	json_array_foreach(list, i, jwk) {
		const char *kid = json_string_value(json_object_get(jwk, "kid"));
		assert_non_null(kid);
		/* Ordered by kid, so that replicas serve the same bytes. */
		assert_true(strcmp(previous, kid) < 0);
		previous = kid;
		assert_non_null(keys_lookup(&view, kid));
		assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
		assert_null(json_object_get(jwk, "d"));
		assert_null(json_object_get(jwk, "p"));
	}
	assert_true(keys->etag[0] == '"' && keys->etag[strlen(keys->etag) - 1] == '"');
	signer = keys_signer(keys, JWS_ALG_ES256);
	assert_ptr_equal(keys_lookup(&view, signer->hsm.kid), signer->verify);
	assert_int_equal(signer->verify->alg, JWS_ALG_ES256);
	assert_null(keys_lookup(&view, NULL));
	assert_null(keys_lookup(&view, "no-such-kid"));
	assert_null(keys_signer(keys, JWS_ALG_INVALID));
	assert_null(keys_signer(keys, JWS_ALG_COUNT));
	json_decref(doc);
	keys_release(keys);
}

/* Keys made before lifecycle records existed: per algorithm the smallest
 * kid (the signer of the old rule) goes on signing, the others retire, and
 * a sync writes that down. */
static void test_keys_without_records_are_recorded(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES384 };
	struct hsm_key legacy[2];
	struct keys *before, *after;
	const char *smallest, *other;

	use_algs(algs, 1);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES384, 2048, NULL, NULL, &legacy[0]), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES384, 2048, NULL, NULL, &legacy[1]), 0);
	smallest = strcmp(legacy[0].kid, legacy[1].kid) < 0 ? legacy[0].kid : legacy[1].kid;
	other = smallest == legacy[0].kid ? legacy[1].kid : legacy[0].kid;
	before = load_at(t0);
	assert_string_equal(keys_signer(before, JWS_ALG_ES384)->hsm.kid, smallest);
	assert_int_equal(entry(before, other)->state.state, KEYSTATE_RETIRED);
	assert_int_equal(entry(before, other)->hsm.meta_found, 0);

	assert_int_equal(keys_sync(hsm, &cfg, t0, 0, NULL), 0);
	after = load_at(t0 + 5);
	assert_string_equal(keys_signer(after, JWS_ALG_ES384)->hsm.kid, smallest);
	assert_int_equal(stored_record(entry(after, smallest)).state, KEYSTATE_ACTIVE);
	assert_int_equal(stored_record(entry(after, other)).state, KEYSTATE_RETIRED);
	assert_int_equal(stored_record(entry(after, other)).retired_at, t0);
	/* Both still verify. */
	assert_non_null(strstr(after->jwks, legacy[0].kid));
	assert_non_null(strstr(after->jwks, legacy[1].kid));
	keys_release(before);
	keys_release(after);
	EVP_PKEY_free(legacy[0].public_key);
	EVP_PKEY_free(legacy[1].public_key);
}

/* A correctly labelled key the verifier refuses (RSA under 2048 bits) is
 * skipped with a warning, never planned, and a usable one is generated. */
struct sync_args {
	struct keys *keys;
};

static int sync_and_load(void *arg)
{
	struct sync_args *a = arg;
	return fixture_keys(hsm, &cfg, 1, &a->keys);
}

static void test_skips_a_key_the_verifier_refuses(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_PS256 };
	struct sync_args args = { NULL };
	struct hsm_key weak;
	const struct keys_entry *signer;
	struct keys_view view;
	const char *log;
	char want[128];
	int r;

	use_algs(algs, 1);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_PS256, 1024, NULL, NULL, &weak), 0);
	log = fixture_capture_stderr(sync_and_load, &args, &r);
	assert_int_equal(r, 0);
	snprintf(want, sizeof(want), "kid=%s alg=PS256 bits=1024", weak.kid);
	assert_non_null(strstr(log, want));
	view = (struct keys_view){ args.keys, NULL };
	assert_null(keys_lookup(&view, weak.kid));
	assert_null(strstr(args.keys->jwks, weak.kid));
	signer = keys_signer(args.keys, JWS_ALG_PS256);
	assert_non_null(signer);
	assert_string_not_equal(signer->hsm.kid, weak.kid);
	assert_int_equal(EVP_PKEY_get_bits(signer->hsm.public_key), 2048);
	keys_release(args.keys);
	assert_int_equal(hsm_destroy_key(hsm, &weak), 0);
	EVP_PKEY_free(weak.public_key);
}

/* Rotation with pre-publication: the next key is published at once, signs
 * exactly at created + publish_ahead + KEYSTATE_PUBLISH_SLACK, the old key
 * retires then and may be destroyed max_ttl + leeway later, not before. */
static void test_rotation_timeline(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_EDDSA };
	int64_t due;
	struct keys_change change, again;
	struct keys *keys;
	char old_kid[JWK_THUMBPRINT_LEN + 1];
	int64_t safe_at = 0;

	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	snprintf(old_kid, sizeof(old_kid), "%s", keys_signer(keys, JWS_ALG_EDDSA)->hsm.kid);
	/* Before its activate_at with no key before it: still the only signer. */
	assert_true(keys_signer(keys, JWS_ALG_EDDSA)->state.activate_at > t0 - 100);
	assert_ptr_equal(keys_signer_at(keys, JWS_ALG_EDDSA, t0 - 100), keys_signer(keys, JWS_ALG_EDDSA));
	keys_release(keys);

	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_EDDSA, 0, t0, &change), 0);
	assert_int_equal(change.generated, 1);
	assert_int_equal(change.alg, JWS_ALG_EDDSA);
	assert_int_equal(change.record.state, KEYSTATE_NEXT);
	/* Stamped once the key exists: in the second of the call, or the next
	 * when generation crossed into it. */
	assert_true(change.record.created == t0 || change.record.created == t0 + 1);
	due = change.record.created + cfg.publish_ahead + KEYSTATE_PUBLISH_SLACK;
	assert_int_equal(change.record.activate_at, due);
	/* A second rotation while one is under way names the waiting key. */
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_EDDSA, 0, t0 + 1, &again), -EEXIST);
	assert_string_equal(again.kid, change.kid);

	/* Published at once, not signing; the JWKS max-age is publish_ahead
	 * (the set was read from the token just now; the activation is further
	 * away), and shrinks as the set ages unconfirmed. */
	keys = load_at(t0);
	assert_non_null(strstr(keys->jwks, change.kid));
	assert_int_equal(entry(keys, change.kid)->state.state, KEYSTATE_NEXT);
	assert_string_equal(keys_signer(keys, JWS_ALG_EDDSA)->hsm.kid, old_kid);
	assert_int_equal(keys_jwks_max_age(keys, t0), cfg.publish_ahead);
	assert_int_equal(keys_jwks_max_age(keys, t0 + 10), cfg.publish_ahead - 10);
	/* Confirmed again (the keyring found the token unchanged): now the
	 * activation is the nearer bound. */
	atomic_store(&keys->confirmed_at, t0 + 10);
	assert_int_equal(keys_jwks_max_age(keys, t0 + 10), due - (t0 + 10));
	assert_int_equal(keys->next_activation, due);
	assert_int_equal(keys->next_change, due);
	/* Close to the activation, no copy is cached past it. */
	atomic_store(&keys->confirmed_at, due - 3);
	assert_int_equal(keys_jwks_max_age(keys, due - 3), 3);
	assert_int_equal(keys_jwks_max_age(keys, due), 0);
	/* Never negative, however stale. */
	atomic_store(&keys->confirmed_at, t0);
	assert_int_equal(keys_jwks_max_age(keys, t0 + 1000), 0);
	keys_release(keys);

	keys = load_at(due - 1);
	assert_string_equal(keys_signer(keys, JWS_ALG_EDDSA)->hsm.kid, old_kid);
	/* A set loaded before the activation switches at that second by itself
	 * (keys_signer_at), whatever the keyring is busy with. */
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due - 1)->hsm.kid, old_kid);
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due)->hsm.kid, change.kid);
	assert_int_equal(keys->successor_at[JWS_ALG_EDDSA], due);
	keys_release(keys);
	/* At activate_at, before anyone writes it: the new key signs. */
	keys = load_at(due);
	assert_string_equal(keys_signer(keys, JWS_ALG_EDDSA)->hsm.kid, change.kid);
	assert_int_equal(entry(keys, old_kid)->state.state, KEYSTATE_RETIRED);
	assert_int_equal(entry(keys, old_kid)->state.retired_at, due);
	assert_non_null(strstr(keys->jwks, old_kid));
	/* Asked for a second before the one it was planned at (a clock stepped
	 * back, a now read before the set was): the key of that second signs,
	 * never one before its activate_at. */
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due - 1)->hsm.kid, old_kid);
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due - KEYS_SIGNER_SKEW)->hsm.kid, old_kid);
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due)->hsm.kid, change.kid);
	/* Further back than a few seconds, the planned signer: a long step of
	 * the clock does not bring a replaced key back. */
	assert_string_equal(keys_signer_at(keys, JWS_ALG_EDDSA, due - KEYS_SIGNER_SKEW - 1)->hsm.kid, change.kid);
	keys_release(keys);

	/* The sync writes both transitions down. */
	assert_int_equal(keys_sync(hsm, &cfg, due, KEYS_SYNC_DESTROY, NULL), 0);
	keys = load_at(due);
	assert_int_equal(stored_record(entry(keys, change.kid)).state, KEYSTATE_ACTIVE);
	assert_int_equal(stored_record(entry(keys, old_kid)).state, KEYSTATE_RETIRED);
	assert_int_equal(stored_record(entry(keys, old_kid)).retired_at, due);
	keys_release(keys);

	/* Destroying the retired key: refused until every token it signed has
	 * expired (retired_at + max_ttl + leeway), allowed from then on. */
	assert_int_equal(keys_destroy(hsm, &cfg, old_kid, 0, due, &safe_at), -EBUSY);
	assert_int_equal(safe_at, due + cfg.max_ttl + cfg.leeway);
	assert_int_equal(keys_destroy(hsm, &cfg, old_kid, 0, safe_at - 1, NULL), -EBUSY);
	/* A sync one second early destroys nothing either. */
	assert_int_equal(keys_sync(hsm, &cfg, safe_at - 1, KEYS_SYNC_DESTROY, NULL), 0);
	keys = load_at(safe_at - 1);
	assert_non_null(keys_find(keys, old_kid));
	keys_release(keys);
	assert_int_equal(keys_destroy(hsm, &cfg, old_kid, 0, safe_at, NULL), 0);
	keys = load_at(safe_at);
	assert_null(keys_find(keys, old_kid));
	assert_null(strstr(keys->jwks, old_kid));
	assert_string_equal(keys_signer(keys, JWS_ALG_EDDSA)->hsm.kid, change.kid);
	keys_release(keys);
	assert_int_equal(keys_destroy(hsm, &cfg, old_kid, 0, safe_at, NULL), -ENOENT);
}

/* The lifecycle's own destruction, and automatic rotation falling due. */
static void test_sync_rotates_and_destroys_on_time(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256 };
	struct keys *keys;
	char first[JWK_THUMBPRINT_LEN + 1];
	const struct keys_entry *next;
	unsigned changed = 0;
	int64_t rotation_due, activation, destroy_due;
	time_t wall_before, wall_after;

	use_algs(algs, 1);
	cfg.rotation_period = 1000;
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	snprintf(first, sizeof(first), "%s", keys_signer(keys, JWS_ALG_ES256)->hsm.kid);
	rotation_due = keys_signer(keys, JWS_ALG_ES256)->state.activate_at + cfg.rotation_period - cfg.publish_ahead;
	keys_release(keys);

	assert_int_equal(keys_sync(hsm, &cfg, rotation_due - 1, KEYS_SYNC_ROTATE, &changed), 0);
	assert_int_equal(changed, 0);
	wall_before = time(NULL);
	assert_int_equal(keys_sync(hsm, &cfg, rotation_due, KEYS_SYNC_ROTATE, &changed), 0);
	wall_after = time(NULL);
	assert_int_equal(changed, 1);
	/* One next key is enough. */
	assert_int_equal(keys_sync(hsm, &cfg, rotation_due + 1, KEYS_SYNC_ROTATE, &changed), 0);
	assert_int_equal(changed, 0);
	keys = load_at(rotation_due);
	assert_int_equal(keys->count, 2);
	/* Stamped once the key exists: the sync's now plus the wall-clock
	 * seconds generation took, which under a sanitizer may cross a second
	 * (CI saw it); activation counts from there. */
	next = &keys->entries[strcmp(keys->entries[0].hsm.kid, first) == 0 ? 1 : 0];
	assert_true(next->state.created >= rotation_due &&
		    next->state.created <= rotation_due + (int64_t)(wall_after - wall_before));
	activation = next->state.created + cfg.publish_ahead + KEYSTATE_PUBLISH_SLACK;
	assert_int_equal(keys->next_activation, activation);
	keys_release(keys);

	/* Activation, then the first key's destruction by the sync. */
	assert_int_equal(keys_sync(hsm, &cfg, activation, KEYS_SYNC_ROTATE | KEYS_SYNC_DESTROY, &changed), 0);
	assert_int_equal(changed, 2);   /* both records written */
	destroy_due = activation + cfg.max_ttl + cfg.leeway;
	assert_int_equal(keys_sync(hsm, &cfg, destroy_due - 1, KEYS_SYNC_DESTROY, &changed), 0);
	assert_int_equal(changed, 0);
	assert_int_equal(keys_sync(hsm, &cfg, destroy_due, KEYS_SYNC_DESTROY, &changed), 0);
	assert_int_equal(changed, 1);
	keys = load_at(destroy_due);
	assert_int_equal(keys->count, 1);
	assert_null(keys_find(keys, first));
	keys_release(keys);
}

static void test_immediate_rotation_and_retire_rules(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_RS256 };
	struct keys_change now_change, next_change, retired;
	struct keys *keys;
	char old_kid[JWK_THUMBPRINT_LEN + 1];

	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	snprintf(old_kid, sizeof(old_kid), "%s", keys_signer(keys, JWS_ALG_RS256)->hsm.kid);
	keys_release(keys);
	/* RSA generation takes a while: time goes on from the key's activation,
	 * never back before it. */
	t0 = (int64_t)time(NULL);

	/* The signer cannot be retired: its algorithm would have none. */
	assert_int_equal(keys_retire(hsm, &cfg, old_kid, t0, &retired), -EBUSY);
	assert_int_equal(keys_retire(hsm, &cfg, "no-such-kid", t0, &retired), -ENOENT);

	/* Immediate: the new key signs at once, the old one retires now and
	 * the token says so without waiting for a sync. */
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_RS256, 1, t0, &now_change), 0);
	assert_int_equal(now_change.record.state, KEYSTATE_ACTIVE);
	/* Now, or a second after the old key's activation when that was in
	 * this very second (whole seconds; keystate_rotate). */
	assert_true(now_change.record.activate_at == t0 || now_change.record.activate_at == t0 + 1);
	t0 = now_change.record.activate_at;
	keys = load_at(t0);
	assert_string_equal(keys_signer(keys, JWS_ALG_RS256)->hsm.kid, now_change.kid);
	keys_release(keys);
	/* Written down by the rotation itself, or at the latest by the next
	 * sync once its activation second has come. */
	assert_int_equal(keys_sync(hsm, &cfg, t0, 0, NULL), 0);
	keys = load_at(t0);
	assert_int_equal(stored_record(entry(keys, old_kid)).state, KEYSTATE_RETIRED);
	assert_int_equal(stored_record(entry(keys, old_kid)).retired_at, t0);
	keys_release(keys);
	assert_int_equal(keys_retire(hsm, &cfg, old_kid, t0, &retired), -EALREADY);

	/* A next key never signed: it may be retired, and destroyed at once. */
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_RS256, 0, t0, &next_change), 0);
	assert_int_equal(keys_retire(hsm, &cfg, next_change.kid, t0 + 1, &retired), 0);
	assert_int_equal(retired.record.state, KEYSTATE_RETIRED);
	assert_int_equal(retired.record.retired_at, t0 + 1);
	keys = load_at(t0 + 1);
	assert_int_equal(entry(keys, next_change.kid)->state.state, KEYSTATE_RETIRED);
	assert_string_equal(keys_signer(keys, JWS_ALG_RS256)->hsm.kid, now_change.kid);
	keys_release(keys);

	/* A waiting next key is promoted by an immediate rotation rather than
	 * a third key made. */
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_RS256, 0, t0 + 2, &next_change), 0);
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_RS256, 1, t0 + 3, &now_change), 0);
	assert_int_equal(now_change.generated, 0);
	assert_string_equal(now_change.kid, next_change.kid);
	keys = load_at(t0 + 3);
	assert_string_equal(keys_signer(keys, JWS_ALG_RS256)->hsm.kid, next_change.kid);
	keys_release(keys);
	/* The signer is never destroyed without --force. */
	assert_int_equal(keys_destroy(hsm, &cfg, next_change.kid, 0, t0 + 100000, NULL), -EBUSY);
}

/* Records written by two processes at once, or left by a crash between
 * writing the new and removing the old: the furthest state wins and the
 * next sync leaves one record. */
static void test_superseded_records_are_pruned(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256 };
	struct keystate_record next = { KEYSTATE_NEXT, JWS_ALG_ES256, t0, t0 + 10, 0 };
	char text[KEYSTATE_RECORD_MAX + 1];
	const struct keys_entry *e;
	struct keys *keys;
	size_t len;

	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	e = keys_signer(keys, JWS_ALG_ES256);
	assert_int_equal(keystate_format(&next, text, sizeof(text), &len), 0);
	assert_int_equal(hsm_meta_add(hsm, &e->hsm, (const uint8_t *)text, len), 0);
	keys_release(keys);

	keys = load_at(t0);
	e = keys_signer(keys, JWS_ALG_ES256);
	assert_int_equal(e->hsm.meta_found, 2);
	assert_int_equal(e->state.state, KEYSTATE_ACTIVE);
	keys_release(keys);
	assert_int_equal(keys_sync(hsm, &cfg, t0, 0, NULL), 0);
	keys = load_at(t0);
	assert_int_equal(stored_record(keys_signer(keys, JWS_ALG_ES256)).state, KEYSTATE_ACTIVE);
	keys_release(keys);
}

/* Two processes writing the same transition at once leave two identical
 * records: harmless, and never pruned — each process would keep its own
 * copy and delete the other's (handles differ per process), leaving none,
 * and a key without records is no longer anybody's signer. */
static void test_identical_records_are_kept(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256 };
	char text[KEYSTATE_RECORD_MAX + 1];
	struct keystate_record rec;
	const struct keys_entry *e;
	struct keys *keys;
	unsigned changed = 1;
	size_t len;

	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	e = keys_signer(keys, JWS_ALG_ES256);
	rec = stored_record(e);
	assert_int_equal(keystate_format(&rec, text, sizeof(text), &len), 0);
	assert_int_equal(hsm_meta_add(hsm, &e->hsm, (const uint8_t *)text, len), 0);
	keys_release(keys);
	assert_int_equal(keys_sync(hsm, &cfg, t0, 0, &changed), 0);
	assert_int_equal(changed, 0);
	keys = load_at(t0);
	e = keys_signer(keys, JWS_ALG_ES256);
	assert_int_equal(e->hsm.meta_found, 2);
	assert_int_equal(e->state.state, KEYSTATE_ACTIVE);
	keys_release(keys);
}

/* Two processes rotating at once make two next keys: the later one goes,
 * it never signed. */
static void test_surplus_next_key_is_destroyed(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES384 };
	struct keystate_record late = { KEYSTATE_NEXT, JWS_ALG_ES384, t0 + 1, t0 + 100, 0 };
	struct keys_change change;
	char text[KEYSTATE_RECORD_MAX + 1];
	struct hsm_key twin;
	struct keys *keys;
	size_t len;

	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	keys_release(keys);
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_ES384, 0, t0, &change), 0);
	assert_int_equal(keystate_format(&late, text, sizeof(text), &len), 0);
	assert_int_equal(hsm_generate_key(hsm, JWS_ALG_ES384, 2048, text_meta, text, &twin), 0);
	keys = load_at(t0 + 2);
	assert_int_equal(keys->count, 3);
	keys_release(keys);
	assert_int_equal(keys_sync(hsm, &cfg, t0 + 2, KEYS_SYNC_DESTROY, NULL), 0);
	keys = load_at(t0 + 2);
	assert_int_equal(keys->count, 2);
	assert_non_null(keys_find(keys, change.kid));
	assert_null(keys_find(keys, twin.kid));
	keys_release(keys);
	EVP_PKEY_free(twin.public_key);
}

struct hmac_ctx {
	struct hsm_session *session;
	const struct hsm_key *key;
};

static int hmac_sign(void *ctx, const uint8_t *data, size_t len, uint8_t *sig, size_t *sig_len)
{
	const struct hmac_ctx *h = ctx;
	return hsm_sign(h->session, h->key, data, len, sig, sig_len);
}

/* HS256: the key stays in the token, never in the JWKS, and verification
 * runs there through the caller's session. */
static void test_hs256_verifies_in_the_token(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256, JWS_ALG_HS256 };
	struct hsm_session *session = NULL;
	struct jws_parsed *parsed = NULL;
	const struct keys_entry *hs;
	struct keys_view view, offline;
	struct hmac_ctx hctx;
	struct keys *keys;
	json_t *header, *payload;
	char *token = NULL;

	use_algs(algs, 2);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	hs = keys_signer(keys, JWS_ALG_HS256);
	assert_non_null(hs);
	assert_false(hs->published);
	assert_null(hs->hsm.public_key);
	assert_null(strstr(keys->jwks, hs->hsm.kid));
	assert_null(strstr(keys->jwks, "\"oct\""));
	assert_int_equal(hsm_session_open(hsm, &session), 0);
	hctx = (struct hmac_ctx){ session, &hs->hsm };
	header = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "kid", hs->hsm.kid, "typ", "JWT");
	payload = json_pack("{s:s}", "sub", "machine");
	assert_int_equal(jws_sign_compact(header, payload, hmac_sign, &hctx, &token), 0);

	view = (struct keys_view){ keys, session };
	assert_int_equal(jws_verify(token, strlen(token), keys_lookup, &view, &parsed), 0);
	jws_parsed_free(parsed);
	/* Offline (no session): no verdict rather than a wrong one. */
	offline = (struct keys_view){ keys, NULL };
	assert_int_equal(jws_verify(token, strlen(token), keys_lookup, &offline, &parsed), JWS_E_UNAVAILABLE);
	/* One bit of the MAC flipped ('A' and 'B' differ in the lowest bit of
	 * the first six). */
	token[strlen(token) - 5] = token[strlen(token) - 5] == 'A' ? 'B' : 'A';
	assert_int_equal(jws_verify(token, strlen(token), keys_lookup, &view, &parsed), JWS_E_BAD_SIGNATURE);
	free(token);
	json_decref(header);
	json_decref(payload);
	hsm_session_close(session);
	keys_release(keys);
}

static void test_entry_json(void **state)
{
	struct keys *keys;
	struct keys_change change;
	json_t *j = NULL;
	const struct keys_entry *e;
	int64_t at;

	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	e = keys_signer(keys, JWS_ALG_ES256);
	/* Ten seconds after the signer's activation: fixture_keys stamps its
	 * keys with the wall clock, which under a sanitizer may have moved
	 * past t0 + 10 already (a rotation in the signer's own activation
	 * second activates a second later, to win the tie). */
	at = (e->state.activate_at > t0 ? e->state.activate_at : t0) + 10;
	assert_int_equal(keys_entry_to_json(keys, e, &cfg, &j), 0);
	assert_string_equal(json_string_value(json_object_get(j, "kid")), e->hsm.kid);
	assert_string_equal(json_string_value(json_object_get(j, "alg")), "ES256");
	assert_string_equal(json_string_value(json_object_get(j, "state")), "active");
	assert_true(json_is_true(json_object_get(j, "signing")));
	assert_true(json_is_true(json_object_get(j, "published")));
	assert_int_equal(json_integer_value(json_object_get(j, "activate_at")), e->state.activate_at);
	assert_null(json_object_get(j, "retired_at"));
	json_decref(j);
	keys_release(keys);

	/* Retired: when its successor took over, and when it may go.  The
	 * successor activates at `at', or a second or more later when its
	 * generation crossed a second on the wall clock (keys_generate_meta:
	 * slow under a sanitizer on a loaded machine). */
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_ES256, 1, at, &change), 0);
	assert_true(change.record.activate_at >= at);
	at = change.record.activate_at;
	keys = load_at(at);
	for (size_t i = 0; i < keys->count; i++) {
		e = &keys->entries[i];
		if (e->hsm.alg != JWS_ALG_ES256 || e->state.state != KEYSTATE_RETIRED)
			continue;
		assert_int_equal(keys_entry_to_json(keys, e, &cfg, &j), 0);
		assert_true(json_is_false(json_object_get(j, "signing")));
		assert_int_equal(json_integer_value(json_object_get(j, "retired_at")), at);
		assert_int_equal(json_integer_value(json_object_get(j, "destroy_after")),
				 at + cfg.max_ttl + cfg.leeway);
		json_decref(j);
		j = NULL;
	}
	keys_release(keys);
}

/* An immediate rotation made in the second its predecessor took over
 * activates a second later to win the tie, and still signs at once — the
 * operator rotating at once may be answering a compromise. */
static void test_immediate_in_predecessors_second(void **state)
{
	const enum jws_alg algs[] = { JWS_ALG_ES256 };
	struct keys_change change;
	struct keys *keys;
	int64_t previous;

	(void)state;
	use_algs(algs, 1);
	assert_int_equal(fixture_keys(hsm, &cfg, 1, &keys), 0);
	previous = keys_signer(keys, JWS_ALG_ES256)->state.activate_at;
	keys_release(keys);
	assert_int_equal(keys_rotate(hsm, &cfg, JWS_ALG_ES256, 1, previous, &change), 0);
	assert_true(change.record.activate_at > previous);
	keys = load_at(previous);
	assert_string_equal(keys_signer(keys, JWS_ALG_ES256)->hsm.kid, change.kid);
	assert_string_equal(keys_signer_at(keys, JWS_ALG_ES256, previous)->hsm.kid, change.kid);
	keys_release(keys);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_generates_missing_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_jwks_document_and_lookup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keys_without_records_are_recorded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_skips_a_key_the_verifier_refuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_timeline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_rotates_and_destroys_on_time, setup, teardown),
		cmocka_unit_test_setup_teardown(test_immediate_rotation_and_retire_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_immediate_in_predecessors_second, setup, teardown),
		cmocka_unit_test_setup_teardown(test_superseded_records_are_pruned, setup, teardown),
		cmocka_unit_test_setup_teardown(test_identical_records_are_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_surplus_next_key_is_destroyed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hs256_verifies_in_the_token, setup, teardown),
		cmocka_unit_test_setup_teardown(test_entry_json, setup, teardown),
	};
	/* Each test makes its own token. */
	int r = fixture_token_probe();

	if (r != 0)
		return r;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
