/* keystate: the key lifecycle of SPEC §6 as pure functions over records.
 *
 * A key's state lives in the token next to the key, as data objects whose
 * value is a keystate record (keystate_format).  States only move forward —
 * next → active → retired (→ destroyed, which is the key gone) — so records
 * that several processes write at once (daemons sharing a token, hsmjwtctl)
 * merge by taking the furthest state (keystate_merge).  A transition is
 * written as a new record, after which the older records of that key are
 * removed; no record is modified in place (SoftHSM refuses to modify a data
 * object's CKA_VALUE, and tokens differ in which attributes may change).
 *
 * Time decides the rest, so that every process reading the same records
 * sees the same key set at the same moment whether or not anyone has
 * written the outcome yet:
 *   - a next key whose activate_at has come is active;
 *   - per algorithm the active key with the latest activate_at signs
 *     (ties: the later created, then the smaller kid); every other active
 *     key is retired at the activate_at of the key that followed it;
 *   - a retired key may be destroyed once retired_at + max_ttl + leeway has
 *     passed: every token it signed has expired by then, since no lifetime
 *     exceeds max_ttl (hsmjwtctl mint included).
 * keystate_plan computes that effective view and the writes that persist
 * it; the hsm and keys modules carry them out. */
#ifndef HSMJWT_KEYSTATE_H
#define HSMJWT_KEYSTATE_H

#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"

enum keystate_state {
	KEYSTATE_NEXT = 1,    /* published, not signing yet */
	KEYSTATE_ACTIVE,      /* signing (one per algorithm) */
	KEYSTATE_RETIRED,     /* published, verifying only */
};

/* "next", "active", "retired"; NULL for anything else. */
const char *keystate_name(enum keystate_state state);

/* How long another process may take to notice a change in the token (SPEC
 * §6: within 5 s).  keystate_plan's jwks_max_age leaves this much of
 * publish_ahead unused, so that a relying party that fetched the key set
 * from a replica which had not yet seen a new key refetches before that key
 * signs; the daemon does better, counting from when it last read the token
 * (keys_jwks_max_age). */
#define KEYSTATE_REPLICA_LAG 5
/* Longest JWKS max-age whatever publish_ahead says, seconds. */
#define KEYSTATE_JWKS_MAX_AGE 600
/* A new key's activate_at is created + publish_ahead + this: the process
 * that made it publishes it moments after writing its record (labelling,
 * reloading the key set), and the key must not sign before it has been
 * published for a full publish_ahead. */
#define KEYSTATE_PUBLISH_SLACK 2

struct keystate_record {
	enum keystate_state state;
	enum jws_alg alg;
	int64_t created;       /* when the key was generated (or first recorded) */
	int64_t activate_at;   /* next: when it will sign; active/retired: when it started */
	int64_t retired_at;    /* retired: when it stopped signing; 0 otherwise */
};

/* A formatted record is one line of ASCII, at most this many bytes. */
#define KEYSTATE_RECORD_MAX 192

/* "hsmjwt-keystate 1 state=<s> alg=<A> created=<n> activate_at=<n>
 * retired_at=<n>" into buf (size bytes; no NUL is counted in *ret_len).
 * -EINVAL for a record that would not parse back, -ENOSPC when size is too
 * small. */
int keystate_format(const struct keystate_record *rec, char *buf, size_t size, size_t *ret_len);

/* The inverse, strict: exactly the fields above, in that order, once each,
 * decimal integers without sign or leading zeros in 0..2^62, state and alg
 * by name, at most KEYSTATE_RECORD_MAX bytes, no NUL; the invariants hold
 * (created <= activate_at for next, retired_at >= activate_at for retired,
 * retired_at == 0 otherwise).  Anyone with a session on the token can write
 * a data object, so this is a parser of hostile input.  0 or -EINVAL. */
int keystate_parse(const char *buf, size_t len, struct keystate_record *ret_rec);

/* The record that wins when one key has several (concurrent writers, or a
 * crash between writing a new record and removing the old): the furthest
 * state; for two next records the earlier activate_at, for two active the
 * earlier activate_at, for two retired the later retired_at (the
 * conservative destruction time); remaining ties the smaller created.
 * Records for different algorithms: a's alg is kept (the label names the
 * key's algorithm; the caller checks it). */
void keystate_merge(const struct keystate_record *a, const struct keystate_record *b,
		    struct keystate_record *ret_rec);

/* What the configuration says about lifecycles. */
struct keystate_policy {
	int64_t publish_ahead;
	int64_t rotation_period;        /* 0: manual rotation only */
	int64_t max_ttl;
	int64_t leeway;
	const enum jws_alg *algorithms; /* each must always have a signing key */
	size_t algorithm_count;
};

/* Actions keystate_plan asks for, per key. */
enum keystate_action {
	KEYSTATE_WRITE   = 1u << 0,   /* store `effective` as a new record, then drop the others */
	KEYSTATE_DESTROY = 1u << 1,   /* destroy the key (retired past its window, or a surplus next key);
				       * never with WRITE: its records go with it */
};

/* One key as keystate_plan sees it.  The caller fills the inputs. */
struct keystate_key {
	/* inputs */
	char kid[JWK_THUMBPRINT_LEN + 1];
	enum jws_alg alg;              /* from the key's label */
	int has_record;                /* 0: a key from before lifecycle records */
	struct keystate_record stored; /* the merged record(s), when has_record */
	unsigned record_count;         /* records found; > 1 asks for a WRITE that prunes */
	/* outputs */
	struct keystate_record effective;
	unsigned actions;              /* enum keystate_action bits */
	int signer;                    /* 1 for the key that signs its algorithm */
};

struct keystate_plan {
	/* Index into the keys array of each algorithm's signing key, -1 when
	 * it has none. */
	int signer[JWS_ALG_COUNT];
	/* Configured algorithms with no key that could sign, not even a next
	 * key to promote: generate one, active at once (a fresh token). */
	enum jws_alg generate_active[JWS_ALG_COUNT];
	size_t generate_active_count;
	/* Configured algorithms whose rotation is due (rotation_period after
	 * the signer's activation, less publish_ahead) and which have no next
	 * key yet: generate a next key. */
	enum jws_alg generate_next[JWS_ALG_COUNT];
	size_t generate_next_count;
	/* The earliest moment after now at which the effective view changes by
	 * itself (an activation, a rotation falling due, a destruction falling
	 * due); INT64_MAX when none will. */
	int64_t next_change;
	/* Cache-Control max-age for the JWKS, seconds: at most
	 * KEYSTATE_JWKS_MAX_AGE, publish_ahead - KEYSTATE_REPLICA_LAG, and the
	 * time until the next scheduled activation; never negative. */
	int64_t jwks_max_age;
};

/* Computes effective states, signers and actions for keys[0..n) at now:
 *   - a key without a record (made before lifecycle records) is recorded
 *     as it was used: per algorithm the smallest kid active since now, the
 *     others retired now (WRITE) — but where any key of the algorithm has a
 *     record, a key without one is retired now, never made the signer (its
 *     records were lost; it may have been retired);
 *   - next keys whose activate_at has come become active; the active keys
 *     of an algorithm retire as described at the top (WRITE when effective
 *     differs from stored, or record_count > 1);
 *   - several next keys of one algorithm not yet due (two processes rotated
 *     at once): all but the earliest (activate_at, then kid) are DESTROYed
 *     — a next key has never signed;
 *   - a configured algorithm without a signer but with a next key: the
 *     earliest next key is promoted now (WRITE) rather than leaving the
 *     algorithm unable to sign;
 *   - retired keys past retired_at + max_ttl + leeway: DESTROY.
 * Keys of algorithms no longer configured keep their states and signer
 * (tokens they signed still verify) but are not rotated.  0, or -EINVAL
 * for a key whose alg is invalid or whose stored record names another
 * algorithm (the caller skips such a key with a warning); also -EINVAL, with
 * nothing written, for a stored record keystate_format would refuse, now
 * outside 0..2^62, or a negative duration or invalid alg in policy. */
int keystate_plan(struct keystate_key *keys, size_t n, int64_t now, const struct keystate_policy *policy,
		  struct keystate_plan *ret_plan);

/* What a manual rotation of alg does (keys[0..n) planned at now):
 *   - no next key: generate one, recorded as *ret_new — next with
 *     activate_at = now + publish_ahead + KEYSTATE_PUBLISH_SLACK, or
 *     (immediate) active since now, or since a second after the signer's
 *     activate_at when that is not before now (whole seconds: the new key
 *     must take over strictly after its predecessor, or the tie rule could
 *     keep the old one);
 *   - a next key exists, immediate: promote it now — *ret_index is its index
 *     and *ret_new its new record;
 *   - a next key exists, not immediate: -EEXIST (a rotation is already
 *     under way; *ret_index names that key).
 * *ret_index is -1 when a key is to be generated. */
int keystate_rotate(const struct keystate_key *keys, size_t n, enum jws_alg alg, int immediate, int64_t now,
		    const struct keystate_policy *policy, int *ret_index, struct keystate_record *ret_new);

/* Retiring keys[index] (keys[0..n) planned at now) by hand: a next key is retired now (it never signed:
 * activate_at = retired_at = now);
 * the signing key is refused with -EBUSY (its algorithm would have no signer:
 * rotate with immediate instead); an already retired key gives -EALREADY.
 * *ret_new is the record to write. */
int keystate_retire(const struct keystate_key *keys, size_t n, size_t index, int64_t now,
		    struct keystate_record *ret_new);

/* Whether keys[index] (keys[0..n) planned at now) may be destroyed: a next key always (it never
 * signed), a retired key once retired_at + max_ttl + leeway has passed.
 * Otherwise -EBUSY and *ret_safe_at the moment it becomes safe (INT64_MAX
 * for the signing key, which never does until it is retired); force skips
 * the check.  0 when it may go (*ret_safe_at untouched). */
int keystate_check_destroy(const struct keystate_key *keys, size_t n, size_t index, int64_t now,
			   const struct keystate_policy *policy, int force, int64_t *ret_safe_at);

/* When a retired key may be destroyed: retired_at + max_ttl + leeway. */
int64_t keystate_destroy_after(const struct keystate_record *rec, const struct keystate_policy *policy);

#endif
