/* hsm_internal.h: what hsm.c (module, token, login, sessions, signing) and
 * hsm_key.c (key objects: find, check, generate, destroy) share.  Not part of
 * the module's contract: include/hsmjwt/hsm.h is. */
#ifndef HSMJWT_HSM_INTERNAL_H
#define HSMJWT_HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "hsmjwt/hsm.h"

/* One thread's presence inside the module, for hsm_watchdog: the
 * CLOCK_MONOTONIC millisecond its current Cryptoki call began, 0 while it
 * is not in one.  Linked into hsm->calls while it may be.  admin (set
 * before it is linked): an operation of many calls (generation, discovery,
 * records, destruction), timed as a whole against the longer limit. */
struct hsm_call {
	_Atomic int64_t started;
	int admin;
	struct hsm_call *prev, *next;
};

struct hsm {
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	char token_label[33];
	/* As given to hsm_open: recovery finds the token again by it (a slot
	 * id may change when a token comes back). */
	char *token_spec;
	/* Held open for the life of the process: Cryptoki keeps the login only
	 * while the application has at least one session on the token. */
	CK_SESSION_HANDLE login_session;
	int logged_in;
	/* Cryptoki state is per process: another user of the module in this
	 * process (a library, a test) may have initialised it or logged in
	 * first.  Undo only what this hsm did. */
	int initialized;
	int login_owned;

	/* Fault state (hsm.h): read without a lock on every operation. */
	atomic_int available;
	_Atomic(const char *) failure;   /* a static string; "" while available */
	atomic_uint generation;          /* from 1: a zeroed hsm_key is never current */
	/* Every operation holds it for reading while it calls into the module,
	 * hsm_recover for writing while it re-initialises the module under
	 * them.  Writer-preferring, so that a waiting recovery is not starved
	 * by a steady stream of signatures. */
	pthread_rwlock_t lock;
	/* Every hsm_call that may be inside the module: the sessions' and the
	 * raw-session operations'.  A circular list around this head. */
	pthread_mutex_t calls_lock;
	struct hsm_call calls;

	hsm_pin_read_fn pin_read;
	hsm_pin_release_fn pin_release;
	void *pin_ctx;
};

struct hsm_session {
	struct hsm *hsm;
	CK_SESSION_HANDLE handle;     /* CK_INVALID_HANDLE until (re)opened */
	unsigned generation;          /* hsm's generation the handle belongs to */
	int failing;                  /* the last hsm_session_check failed */
	struct hsm_call call;
};

/* The hsm_error of a Cryptoki failure: HSM_E_DEVICE when the session or the
 * device is gone (the caller should recover), HSM_E_FAILED otherwise. */
int hsm_error_from_rv(CK_RV rv);

/* hsm_error_from_rv for a call made during an operation: HSM_E_DEVICE also
 * marks the token failed, with rv's name as the reason. */
int hsm_fail_rv(struct hsm *hsm, CK_RV rv);
/* hsm_fail_rv for a call that used a key handle of the current generation.
 * CKR_OBJECT_HANDLE_INVALID or CKR_KEY_HANDLE_INVALID mean the object is
 * gone: either the token lost it under us (SoftHSM after its directory
 * vanished or a logout), which recovery repairs — HSM_E_DEVICE, marked —
 * or another process destroyed the key (a replica, hsmjwtctl), which a
 * reload of the key set repairs — HSM_E_STALE, not marked: anyone could
 * otherwise force recoveries by verifying a token under that kid.
 * hsm_token_probe tells the two apart, so this is called inside the
 * operation (the read lock held). */
int hsm_fail_key_rv(struct hsm *hsm, CK_RV rv);
/* Whether the token still answers (C_GetTokenInfo) and, when it requires a
 * login, this process is still logged in (the login session in a user
 * state): CKR_OK, or the failing call's CKR (CKR_USER_NOT_LOGGED_IN for a
 * session in a public state).  A token that lost its login hides private
 * objects and otherwise looks well.  Inside an operation. */
CK_RV hsm_token_probe(struct hsm *hsm);
/* Marks the token failed for reason (a static string); 1 when this call
 * did (and logged it), 0 when it was already. */
int hsm_mark_failed(struct hsm *hsm, const char *reason);

/* CLOCK_MONOTONIC in milliseconds (never 0). */
int64_t hsm_now_ms(void);

/* The bracket around an operation on a session: HSM_E_DEVICE at once while
 * the token is failed; HSM_E_STALE for a key (may be NULL) from another
 * generation; otherwise the read lock is held, the session (re)opened for
 * the current generation, and its call marked started, until
 * hsm_session_end. */
int hsm_session_begin(struct hsm_session *session, const struct hsm_key *key);
void hsm_session_end(struct hsm_session *session);
/* hsm_session_begin for an administrative operation on the session
 * (hsm_find_keys): timed through call (the caller's, valid until
 * hsm_session_end_admin) as a whole, under the watchdog's longer limit,
 * rather than as the session's own call. */
int hsm_session_begin_admin(struct hsm_session *session, struct hsm_call *call);
void hsm_session_end_admin(struct hsm_session *session, struct hsm_call *call);
/* The same for an operation on sessions of its own (hsm_open_raw_session),
 * tracked through call (the caller's, valid until hsm_raw_end), an
 * administrative one. */
int hsm_raw_begin(struct hsm *hsm, struct hsm_call *call, const struct hsm_key *key);
void hsm_raw_end(struct hsm *hsm, struct hsm_call *call);

/* A session on hsm's token (CKF_SERIAL_SESSION | extra), logged on failure. */
int hsm_open_raw_session(struct hsm *hsm, CK_FLAGS extra, CK_SESSION_HANDLE *ret_handle);

/* hsm_key.c: "hsmjwt:<ALG>:<kid>" → alg and kid (JWK_THUMBPRINT_LEN
 * base64url characters, ret_kid holds one more); 0, or -EINVAL for a label
 * that is not hsmjwt's.  Pure, for the tests. */
int hsm_parse_label(const char *label, enum jws_alg *ret_alg, char *ret_kid);

/* hsm_key.c: whether params (a CKA_EC_PARAMS value) names the curve of alg
 * (P-256, P-384, Ed25519 in any of its three encodings); 1 or 0.  Pure. */
int hsm_ec_params_match(enum jws_alg alg, const uint8_t *params, size_t len);

/* hsm_key.c: what a Cryptoki answer to an attribute read says of the key:
 * 0 (CKR_OK); -ENOENT when the object has no such attribute or will not
 * reveal it (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE), a verdict
 * on the key; -ENOMEM for CKR_HOST_MEMORY; otherwise the hsm_error, which
 * says nothing about the key.  Pure. */
int hsm_key_rv_verdict(CK_RV rv);

#endif
