/* The daemon's live key set: a thread that keeps it in step with the token
 * (lifecycle, changes by other processes, recovery after faults) and a
 * watchdog thread that never calls into the module, so that a hung module
 * is noticed even when the keyring thread itself is the one stuck in it. */
#include "hsmjwt/keyring.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hsmjwt/clock.h"
#include "hsmjwt/log.h"

#include "keyring_internal.h"

/* How long hsm_recover waits for a call still inside the module. */
#define KEYRING_RECOVER_WAIT_MS 1000

struct keyring_request {
	int pending;
	enum jws_alg alg;            /* JWS_ALG_INVALID: every configured algorithm */
	int immediate;
	keyring_rotate_done_fn done;
	void *arg;
};

struct keyring {
	const struct config *cfg;
	struct hsm *hsm;
	pthread_mutex_t lock;        /* guards current, request, stopping */
	pthread_cond_t wake;
	struct keys *current;
	struct keyring_request request;
	int busy;                    /* a rotation is being carried out */
	int stopping;
	pthread_t thread, watchdog;
	int thread_started, watchdog_started;
	/* The keyring thread's own. */
	int64_t next_poll_ms;
	int64_t next_recover_ms;
	unsigned backoff_ms;
	int reload;                  /* load the set at the next turn, whatever the clock says */
	/* Completed polls, counted so that a test (and the daemon's debug
	 * log) can tell SPEC §6's pick-up by polls, not by elapsed time. */
	atomic_ulong polls;
};

static int64_t keyring_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t keyring_wall(void)
{
	return (int64_t)time(NULL);
}

struct keys *keyring_acquire(struct keyring *keyring)
{
	struct keys *keys;

	pthread_mutex_lock(&keyring->lock);
	keys = keys_ref(keyring->current);
	pthread_mutex_unlock(&keyring->lock);
	return keys;
}

/* Whether two sets would serve differently: signers, members, states, the
 * document, the generation of their handles. */
static int keyring_same(const struct keys *a, const struct keys *b)
{
	if (a->count != b->count || a->generation != b->generation || strcmp(a->etag, b->etag) != 0 ||
	    a->next_change != b->next_change)
		return 0;
	for (size_t i = 0; i < a->count; i++) {
		const struct keys_entry *x = &a->entries[i], *y = &b->entries[i];
		/* The handles too: a module may hand out new ones for the same
		 * objects (SoftHSM does after it failed to read an object's file,
		 * e.g. out of descriptors), and a set keeping the old ones would
		 * sign with handles it refuses until something else changed. */
		if (strcmp(x->hsm.kid, y->hsm.kid) != 0 || x->hsm.private_handle != y->hsm.private_handle ||
		    x->hsm.public_handle != y->hsm.public_handle || x->state.state != y->state.state ||
		    x->state.activate_at != y->state.activate_at || x->state.retired_at != y->state.retired_at ||
		    (keys_signer(a, x->hsm.alg) == x) != (keys_signer(b, y->hsm.alg) == y))
			return 0;
	}
	return 1;
}

static void keyring_swap(struct keyring *keyring, struct keys *keys)
{
	struct keys *old;

	pthread_mutex_lock(&keyring->lock);
	old = keyring->current;
	keyring->current = keys;
	pthread_mutex_unlock(&keyring->lock);
	keys_release(old);
}

static void keyring_log_set(const struct keys *keys)
{
	char signers[CONFIG_MAX_ALGS * (JWK_THUMBPRINT_LEN + 12)] = "";
	size_t used = 0;

	for (int a = 1; a < JWS_ALG_COUNT; a++) {
		const struct keys_entry *s = keys_signer(keys, (enum jws_alg)a);
		if (s != NULL && used < sizeof(signers)) {
			int n = snprintf(signers + used, sizeof(signers) - used, "%s%s:%s", used ? "," : "",
					 jws_alg_name(s->hsm.alg), s->hsm.kid);
			used += n > 0 ? (size_t)n : 0;
		}
	}
	log_info("\"key set loaded\" keys=%zu signers=%s generation=%u", keys->count, used ? signers : "-",
		 keys->generation);
}

/* Loads the set (after syncing the token with the lifecycle when sync is
 * set) and swaps it in when it differs from the current one; when it does
 * not, the current set is confirmed as of now.  A failed sync is logged
 * where it happened and does not stop the load: the set must follow the
 * token (other processes' changes, a recovery's new handles) even while
 * this process cannot write to it. */
static void keyring_refresh(struct keyring *keyring, int sync)
{
	struct keys *keys = NULL, *current;
	int64_t now;
	int same;

	if (sync)
		keys_sync(keyring->hsm, keyring->cfg, keyring_wall(), KEYS_SYNC_GENERATE | KEYS_SYNC_ROTATE | KEYS_SYNC_DESTROY,
			  NULL);
	/* Read after the sync: it may have taken seconds (an RSA key). */
	now = keyring_wall();
	if (keys_load(keyring->hsm, keyring->cfg, now, &keys) < 0)
		return;
	current = keyring_acquire(keyring);
	same = keyring_same(current, keys);
	if (same)
		atomic_store(&current->confirmed_at, now);
	keys_release(current);
	if (same) {
		keys_release(keys);
		return;
	}
	keyring_log_set(keys);
	keyring_swap(keyring, keys);
}

/* Carries out the queued rotation and answers it. */
static void keyring_rotate_now(struct keyring *keyring, const struct keyring_request *req)
{
	struct keys_change changes[KEYRING_MAX_CHANGES];
	size_t n = 0;
	int result = 0, existing = 0;

	memset(changes, 0, sizeof(changes));
	for (size_t a = 0; a < keyring->cfg->algorithm_count && n < KEYRING_MAX_CHANGES; a++) {
		enum jws_alg alg = keyring->cfg->algorithms[a];
		int r;

		if (req->alg != JWS_ALG_INVALID && req->alg != alg)
			continue;
		r = keys_rotate(keyring->hsm, keyring->cfg, alg, req->immediate, keyring_wall(), &changes[n]);
		if (r == 0 || r == -EEXIST) {
			existing += r == -EEXIST;
			n++;
			/* Published before the next algorithm's key is made: an RSA
			 * key takes seconds, which this key's publish_ahead must not
			 * lose. */
			if (r == 0)
				keyring_refresh(keyring, 0);
			continue;
		}
		result = r;
		break;
	}
	/* An algorithm that is not configured is not rotated here either. */
	if (result == 0 && n == 0)
		result = -EINVAL;
	else if (result == 0 && existing == (int)n)
		result = -EEXIST;
	/* Publish before answering: the caller may fetch the JWKS next. */
	keyring_refresh(keyring, 1);
	req->done(req->arg, result, changes, n);
}

/* One turn of the keyring thread. */
static void keyring_turn(struct keyring *keyring, struct keyring_request *req)
{
	int64_t now_ms = keyring_now_ms();
	struct keys *current;
	int due, r;

	if (!hsm_available(keyring->hsm)) {
		if (req->pending) {
			req->done(req->arg, HSM_E_DEVICE, NULL, 0);
			req->pending = 0;
		}
		if (now_ms < keyring->next_recover_ms)
			return;
		r = hsm_recover(keyring->hsm, KEYRING_RECOVER_WAIT_MS);
		/* The token refused the PIN: no more turns (hsm_recover would
		 * refuse them anyway) until a restart; the workers serve on
		 * degraded. */
		if (r == HSM_E_PIN) {
			keyring->next_recover_ms = INT64_MAX;
			return;
		}
		if (r < 0) {
			keyring->backoff_ms = keyring->backoff_ms == 0 ? KEYRING_BACKOFF_MIN_MS :
					      keyring->backoff_ms * 2 > KEYRING_BACKOFF_MAX_MS ? KEYRING_BACKOFF_MAX_MS :
					      keyring->backoff_ms * 2;
			keyring->next_recover_ms = keyring_now_ms() + keyring->backoff_ms;
			return;
		}
		keyring->backoff_ms = 0;
		keyring->reload = 1;
	}
	if (req->pending) {
		keyring_rotate_now(keyring, req);
		req->pending = 0;
		keyring->next_poll_ms = keyring_now_ms() + KEYRING_POLL_MS;
		return;
	}
	if (keyring->reload || now_ms >= keyring->next_poll_ms) {
		unsigned long polls;

		keyring->reload = 0;
		keyring_refresh(keyring, 1);
		/* Raised after the swap: whoever reads the count sees the set. */
		polls = atomic_fetch_add(&keyring->polls, 1) + 1;
		log_debug("\"keyring poll done\" polls=%lu", polls);
		keyring->next_poll_ms = keyring_now_ms() + KEYRING_POLL_MS;
		return;
	}
	/* Between polls, a set that went out of date by itself (an activation,
	 * a destruction falling due: next_change) or whose handles a recovery
	 * made stale is only reloaded: writing it down is the poll's, so that
	 * a failing write is retried every KEYRING_POLL_MS, not every tick. */
	current = keyring_acquire(keyring);
	due = keyring_wall() >= current->next_change || current->generation != hsm_generation(keyring->hsm);
	keys_release(current);
	if (due)
		keyring_refresh(keyring, 0);
}

static void *keyring_main(void *arg)
{
	struct keyring *keyring = arg;
	struct timespec deadline;

	pthread_mutex_lock(&keyring->lock);
	while (!keyring->stopping) {
		struct keyring_request req;

		if (!keyring->request.pending) {
			deadline = clock_deadline(KEYRING_TICK_MS);
			pthread_cond_timedwait(&keyring->wake, &keyring->lock, &deadline);
			if (keyring->stopping)
				break;
		}
		req = keyring->request;
		keyring->request.pending = 0;
		keyring->busy = req.pending;
		pthread_mutex_unlock(&keyring->lock);
		keyring_turn(keyring, &req);
		pthread_mutex_lock(&keyring->lock);
		keyring->busy = 0;
	}
	pthread_mutex_unlock(&keyring->lock);
	return NULL;
}

/* Never calls into the module: it must run while a call hangs there. */
static void *keyring_watchdog_main(void *arg)
{
	struct keyring *keyring = arg;
	struct timespec deadline;

	pthread_mutex_lock(&keyring->lock);
	while (!keyring->stopping) {
		deadline = clock_deadline(KEYRING_TICK_MS);
		pthread_cond_timedwait(&keyring->wake, &keyring->lock, &deadline);
		if (keyring->stopping)
			break;
		pthread_mutex_unlock(&keyring->lock);
		hsm_watchdog(keyring->hsm, KEYRING_HANG_MS, KEYRING_ADMIN_HANG_MS);
		pthread_mutex_lock(&keyring->lock);
	}
	pthread_mutex_unlock(&keyring->lock);
	return NULL;
}

unsigned long keyring_internal_polls(struct keyring *keyring)
{
	return atomic_load(&keyring->polls);
}

int keyring_rotate(struct keyring *keyring, enum jws_alg alg, int immediate, keyring_rotate_done_fn done,
		   void *arg)
{
	int r = 0;

	pthread_mutex_lock(&keyring->lock);
	if (keyring->stopping)
		r = -ECANCELED;
	else if (keyring->request.pending || keyring->busy)
		r = -EAGAIN;
	else {
		keyring->request = (struct keyring_request){ 1, alg, immediate, done, arg };
		pthread_cond_broadcast(&keyring->wake);
	}
	pthread_mutex_unlock(&keyring->lock);
	return r;
}

int keyring_start(const struct config *cfg, struct hsm *hsm, struct keys *keys, struct keyring **ret_keyring)
{
	struct keyring *keyring;
	int r;

	keyring = calloc(1, sizeof(*keyring));
	if (keyring == NULL)
		return -ENOMEM;
	keyring->cfg = cfg;
	keyring->hsm = hsm;
	keyring->current = keys;
	keyring->next_poll_ms = keyring_now_ms() + KEYRING_POLL_MS;
	atomic_init(&keyring->polls, 0);
	pthread_mutex_init(&keyring->lock, NULL);
	r = clock_cond_init(&keyring->wake);
	if (r == 0)
		r = -pthread_create(&keyring->thread, NULL, keyring_main, keyring);
	if (r == 0) {
		keyring->thread_started = 1;
		r = -pthread_create(&keyring->watchdog, NULL, keyring_watchdog_main, keyring);
		keyring->watchdog_started = r == 0;
	}
	if (r < 0) {
		log_error("\"cannot start the keyring thread\" error=\"%s\"", strerror(-r));
		keyring_stop(keyring);
		return r;
	}
	*ret_keyring = keyring;
	return 0;
}

void keyring_stop(struct keyring *keyring)
{
	struct keyring_request req;

	if (keyring == NULL)
		return;
	pthread_mutex_lock(&keyring->lock);
	keyring->stopping = 1;
	pthread_cond_broadcast(&keyring->wake);
	pthread_mutex_unlock(&keyring->lock);
	if (keyring->thread_started)
		pthread_join(keyring->thread, NULL);
	if (keyring->watchdog_started)
		pthread_join(keyring->watchdog, NULL);
	req = keyring->request;
	if (req.pending)
		req.done(req.arg, -ECANCELED, NULL, 0);
	keys_release(keyring->current);
	pthread_cond_destroy(&keyring->wake);
	pthread_mutex_destroy(&keyring->lock);
	free(keyring);
}
