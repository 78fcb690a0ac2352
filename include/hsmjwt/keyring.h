/* keyring: the daemon's live key set.
 *
 * One thread keeps the key set, the key lifecycle and the token's health in
 * step while the workers serve:
 *   - every KEYRING_POLL_MS, and when the set's next_change comes, it syncs
 *     the token with the lifecycle (keys_sync: persist activations and
 *     retirements, destroy what is due, rotate when rotation_period says)
 *     and loads the key set again, swapping it in when anything differs —
 *     which is how changes made by hsmjwtctl or another daemon sharing the
 *     token arrive (SPEC §6: within 5 s);
 *   - every KEYRING_TICK_MS it runs the hang watchdog and, once the token
 *     has failed, hsm_recover with backoff (KEYRING_BACKOFF_MIN_MS doubling
 *     to KEYRING_BACKOFF_MAX_MS), then reloads the keys under the new
 *     generation — never again once the token refused the PIN (HSM_E_PIN:
 *     a retry could lock it), until a restart.  Meanwhile the workers keep
 *     the last set: verification goes on from its public keys, and signing
 *     answers 503;
 *   - it carries out rotations asked for over HTTP, off the workers' event
 *     loops (generating an RSA key takes seconds).
 * Workers take the current set for each request (keyring_acquire, then
 * keys_release): a swap never frees a set that a request still reads. */
#ifndef HSMJWT_KEYRING_H
#define HSMJWT_KEYRING_H

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/keys.h"

#define KEYRING_POLL_MS 2000
#define KEYRING_TICK_MS 250
/* SPEC §6 (changes by hsmjwtctl picked up within 5 s): a change made while
 * a poll reads the token is seen by the next poll, which starts at most
 * KEYRING_POLL_MS + KEYRING_TICK_MS after that one ends — two polls after
 * the change, leaving at least KEYRING_POLL_MS for the two loads. */
_Static_assert(2 * KEYRING_POLL_MS + KEYRING_TICK_MS <= 5000,
	       "a change must be seen within two keyring polls inside SPEC section 6's 5 s");
/* hsm_watchdog's limits: a signature or verification, and an operation of
 * many calls (a key generation, discovery over many keys). */
#define KEYRING_HANG_MS 5000
#define KEYRING_ADMIN_HANG_MS 120000
#define KEYRING_BACKOFF_MIN_MS 250
#define KEYRING_BACKOFF_MAX_MS 8000
/* A rotation over HTTP makes at most one key per configured algorithm. */
#define KEYRING_MAX_CHANGES CONFIG_MAX_ALGS

struct keyring;

/* Starts the thread with keys as the current set (the reference is taken
 * over, also when starting fails).  cfg and hsm must outlive the keyring. */
int keyring_start(const struct config *cfg, struct hsm *hsm, struct keys *keys, struct keyring **ret_keyring);
/* Stops the thread (a rotation in progress finishes first; queued ones are
 * answered -ECANCELED) and drops the current set. */
void keyring_stop(struct keyring *keyring);

/* The current set, with a reference for the caller (keys_release it).
 * Never NULL. */
struct keys *keyring_acquire(struct keyring *keyring);

/* Called on the keyring thread when a rotation has finished: result 0 and
 * changes[0..n) (the set holding them is current by then), or a negative
 * error (-EEXIST: a rotation already under way, changes[0] its key). */
typedef void (*keyring_rotate_done_fn)(void *arg, int result, const struct keys_change *changes, size_t n);

/* Queues a rotation of alg (JWS_ALG_INVALID: every configured algorithm).
 * 0 (done will be called exactly once), -EAGAIN when one is already queued
 * or running, -ECANCELED when stopping. */
int keyring_rotate(struct keyring *keyring, enum jws_alg alg, int immediate, keyring_rotate_done_fn done,
		   void *arg);

#endif
