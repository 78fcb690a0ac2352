/* The hsm module's fault state and recovery: marking the token failed (once
 * per episode), telling a lost key from a lost token, tracking the calls
 * inside the module for hsm_watchdog, and hsm_recover, which re-initialises
 * the module and logs in again with a PIN from the source.  Module, token,
 * login, sessions and signing: hsm.c; key objects: hsm_key.c. */
#include "hsmjwt/hsm.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "hsm_internal.h"
#include "hsmjwt/clock.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

int hsm_available(const struct hsm *hsm)
{
	return atomic_load_explicit(&hsm->available, memory_order_acquire);
}

unsigned hsm_generation(const struct hsm *hsm)
{
	return atomic_load_explicit(&hsm->generation, memory_order_acquire);
}

const char *hsm_failure(const struct hsm *hsm)
{
	return atomic_load_explicit(&hsm->failure, memory_order_acquire);
}

int hsm_mark_failed(struct hsm *hsm, const char *reason)
{
	int expected = 1;

	/* One line per failure episode: every thread that meets the dead token
	 * afterwards is answered at once, without a log line or a call. */
	if (!atomic_compare_exchange_strong(&hsm->available, &expected, 0))
		return 0;
	atomic_store_explicit(&hsm->failure, reason, memory_order_release);
	log_warn("\"token failed; operations refused until it is recovered\" token=%s reason=%s generation=%u",
		 hsm->token_label, reason, hsm_generation(hsm));
	return 1;
}

int hsm_fail_rv(struct hsm *hsm, CK_RV rv)
{
	int r = hsm_error_from_rv(rv);

	if (r == HSM_E_DEVICE)
		hsm_mark_failed(hsm, hsm_ckr_name(rv));
	return r;
}

CK_RV hsm_token_probe(struct hsm *hsm)
{
	CK_TOKEN_INFO token;
	CK_SESSION_INFO session;
	CK_RV rv;

	rv = hsm->f->C_GetTokenInfo(hsm->slot, &token);
	if (rv != CKR_OK || !(token.flags & CKF_LOGIN_REQUIRED))
		return rv;
	rv = hsm->f->C_GetSessionInfo(hsm->login_session, &session);
	if (rv != CKR_OK)
		return rv;
	if (session.state != CKS_RO_USER_FUNCTIONS && session.state != CKS_RW_USER_FUNCTIONS)
		return CKR_USER_NOT_LOGGED_IN;
	return CKR_OK;
}

int hsm_fail_key_rv(struct hsm *hsm, CK_RV rv)
{
	CK_RV probe;

	if (rv != CKR_OBJECT_HANDLE_INVALID && rv != CKR_KEY_HANDLE_INVALID)
		return hsm_fail_rv(hsm, rv);
	probe = hsm_token_probe(hsm);
	if (probe == CKR_OK)
		return HSM_E_STALE;
	hsm_mark_failed(hsm, hsm_ckr_name(probe));
	return HSM_E_DEVICE;
}

void hsm_call_track(struct hsm *hsm, struct hsm_call *call)
{
	atomic_store_explicit(&call->started, 0, memory_order_relaxed);
	pthread_mutex_lock(&hsm->calls_lock);
	call->next = hsm->calls.next;
	call->prev = &hsm->calls;
	hsm->calls.next->prev = call;
	hsm->calls.next = call;
	pthread_mutex_unlock(&hsm->calls_lock);
}

void hsm_call_untrack(struct hsm *hsm, struct hsm_call *call)
{
	pthread_mutex_lock(&hsm->calls_lock);
	call->prev->next = call->next;
	call->next->prev = call->prev;
	call->next = call->prev = call;
	pthread_mutex_unlock(&hsm->calls_lock);
}

void hsm_set_pin_source(struct hsm *hsm, hsm_pin_read_fn read, hsm_pin_release_fn release, void *ctx)
{
	hsm->pin_read = read;
	hsm->pin_release = release;
	hsm->pin_ctx = ctx;
}

int hsm_watchdog(struct hsm *hsm, unsigned call_hang_ms, unsigned admin_hang_ms)
{
	int64_t now = hsm_now_ms(), hung_ms = 0;
	unsigned limit = 0;
	int admin = 0;

	if (!hsm_available(hsm))
		return 1;
	pthread_mutex_lock(&hsm->calls_lock);
	for (struct hsm_call *c = hsm->calls.next; c != &hsm->calls && hung_ms == 0; c = c->next) {
		int64_t started = atomic_load_explicit(&c->started, memory_order_relaxed);
		unsigned c_limit = c->admin ? admin_hang_ms : call_hang_ms;

		if (started != 0 && now - started > (int64_t)c_limit) {
			hung_ms = now - started;
			limit = c_limit;
			admin = c->admin;
		}
	}
	pthread_mutex_unlock(&hsm->calls_lock);
	/* The warning is hsm_mark_failed's; this says what and how long. */
	if (hung_ms > 0 && hsm_mark_failed(hsm, "hung"))
		log_info("\"a call has been inside the module too long\" token=%s operation=%s ms=%lld limit_ms=%u",
			 hsm->token_label, admin ? "admin" : "call", (long long)hung_ms, limit);
	return !hsm_available(hsm);
}

/* Logs in again after recovery, with a PIN from the source, wiped at once. */
static int hsm_recover_login(struct hsm *hsm)
{
	CK_TOKEN_INFO info;
	char *pin = NULL;
	size_t pin_len = 0;
	CK_RV rv;
	int r;

	rv = hsm->f->C_GetTokenInfo(hsm->slot, &info);
	if (rv != CKR_OK) {
		log_error("\"token recovery: C_GetTokenInfo failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		return hsm_error_from_rv(rv);
	}
	if (!(info.flags & CKF_LOGIN_REQUIRED))
		return 0;
	if (hsm->pin_read == NULL) {
		log_error("\"token recovery: the token needs a login and no PIN source is set\" token=%s",
			  hsm->token_label);
		return HSM_E_LOGIN;
	}
	r = hsm->pin_read(hsm->pin_ctx, &pin, &pin_len);
	if (r < 0) {
		log_error("\"token recovery: cannot read the PIN\" token=%s error=%d", hsm->token_label, r);
		return r == -ENOENT ? HSM_E_LOGIN : r;
	}
	r = hsm_login(hsm, pin, pin_len, 1);
	if (hsm->pin_release != NULL)
		hsm->pin_release(hsm->pin_ctx, pin, pin_len);
	return r;
}

int hsm_recover(struct hsm *hsm, unsigned wait_ms)
{
	struct timespec deadline;
	char label[33] = { 0 };
	unsigned generation;
	int attempted = 0;
	CK_RV rv;
	int r;

	if (hsm_available(hsm))
		return 0;
	/* hsm_login has said why, once: another try could lock the PIN. */
	if (hsm->pin_rejected)
		return HSM_E_PIN;
	deadline = clock_deadline(wait_ms);
	r = pthread_rwlock_clockwrlock(&hsm->lock, CLOCK_MONOTONIC, &deadline);
	if (r == ETIMEDOUT) {
		log_warn("\"token recovery waits: a call is still inside the module\" token=%s wait_ms=%u",
			 hsm->token_label, wait_ms);
		return -EBUSY;
	}
	if (r != 0)
		return -r;
	if (hsm_available(hsm)) {
		r = 0;
		goto out;
	}
	attempted = 1;
	/* Every session of this process on the token goes, the login with
	 * them; the sessions reopen themselves in the new generation. */
	hsm->f->C_CloseAllSessions(hsm->slot);
	hsm->login_session = CK_INVALID_HANDLE;
	hsm->logged_in = 0;
	hsm->login_owned = 0;
	if (hsm->initialized) {
		hsm->f->C_Finalize(NULL);
		rv = hsm_initialize(hsm);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			log_error("\"token recovery: C_Initialize failed\" token=%s rv=%s", hsm->token_label,
				  hsm_ckr_name(rv));
			r = HSM_E_MODULE;
			goto out;
		}
	}
	r = hsm_find_slot(hsm, hsm->token_spec, &hsm->slot, label);
	if (r < 0)
		goto out;
	/* A token found by URI (serial=, model=) may come back under another
	 * label: log lines name it as it is now.  Written only when it changed
	 * (other threads' log lines read it; every operation is refused until
	 * the end of recovery, so none is about to). */
	if (strcmp(label, hsm->token_label) != 0) {
		log_warn("\"token recovery: the token's label changed\" token=%s label=%s", hsm->token_label, label);
		memcpy(hsm->token_label, label, sizeof(hsm->token_label));
	}
	rv = hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION, NULL, NULL, &hsm->login_session);
	if (rv != CKR_OK) {
		log_error("\"token recovery: C_OpenSession failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		hsm->login_session = CK_INVALID_HANDLE;
		r = hsm_error_from_rv(rv);
		goto out;
	}
	r = hsm_recover_login(hsm);
	if (r < 0) {
		hsm->f->C_CloseSession(hsm->login_session);
		hsm->login_session = CK_INVALID_HANDLE;
		if (r == HSM_E_PIN) {
			hsm->pin_rejected = 1;
			atomic_store_explicit(&hsm->failure, "pin_rejected", memory_order_release);
		}
		goto out;
	}
	generation = atomic_fetch_add(&hsm->generation, 1) + 1;
	atomic_store_explicit(&hsm->failure, "", memory_order_release);
	atomic_store_explicit(&hsm->available, 1, memory_order_release);
	log_info("\"token recovered\" token=%s generation=%u", hsm->token_label, generation);
out:
	pthread_rwlock_unlock(&hsm->lock);
	/* Another thread's recovery, found done, is not one more. */
	if (attempted)
		metrics_hsm_operation(METRICS_HSM_RECOVER, r == 0);
	return r;
}
