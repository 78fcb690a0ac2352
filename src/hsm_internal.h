/* hsm_internal.h: what the files of the hsm module share — hsm.c (module,
 * token, login, sessions, signing), hsm_recover.c (fault state, call
 * tracking, watchdog, recovery), hsm_key.c (key objects: find, check,
 * destroy), hsm_keygen.c (generation) and hsm_record.c (lifecycle records).
 * Not part of the module's contract: include/hsmjwt/hsm.h is. */
#ifndef HSMJWT_HSM_INTERNAL_H
#define HSMJWT_HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

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
	/* A recovery's login was refused for its PIN: hsm_recover's own (one
	 * thread), which never logs in again. */
	int pin_rejected;
};

struct hsm_session {
	struct hsm *hsm;
	CK_SESSION_HANDLE handle;     /* CK_INVALID_HANDLE until (re)opened */
	unsigned generation;          /* hsm's generation the handle belongs to */
	int failing;                  /* the last hsm_session_check failed */
	struct hsm_call call;
};

/* ---- hsm.c ------------------------------------------------------------ */

/* The hsm_error of a Cryptoki failure: HSM_E_DEVICE when the session or the
 * device is gone (the caller should recover), HSM_E_FAILED otherwise. */
int hsm_error_from_rv(CK_RV rv);

/* CLOCK_MONOTONIC in milliseconds (never 0). */
int64_t hsm_now_ms(void);

/* C_Initialize as this module wants it (OS locking): at hsm_open, and again
 * when hsm_recover re-initialises the module. */
CK_RV hsm_initialize(struct hsm *hsm);
/* The slot of the token token_spec names, and its label (33 bytes): at
 * hsm_open, and again at recovery (a slot id may change). */
int hsm_find_slot(struct hsm *hsm, const char *token_spec, CK_SLOT_ID *ret_slot, char *ret_label);
/* Whether C_Login's answer rv refuses the PIN itself (CKR_PIN_INCORRECT,
 * _INVALID, _LEN_RANGE, _EXPIRED, _LOCKED): the same PIN would be refused
 * again, and each try counts towards the token locking it.  Pure. */
int hsm_pin_refused(CK_RV rv);
/* Logs the login session in with pin when the token requires it: at
 * hsm_open (recovery 0), and at recovery with a PIN from the source
 * (recovery 1).  HSM_E_PIN when the token refused the PIN, logged naming
 * the CKR and what the operator must do, as each of the two callers then
 * goes on; HSM_E_LOGIN for another failure (logged). */
int hsm_login(struct hsm *hsm, const char *pin, size_t pin_len, int recovery);

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

/* ---- hsm_recover.c ---------------------------------------------------- */

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

/* Links call into hsm->calls (not started) / unlinks it: the calls
 * hsm_watchdog looks at, for hsm.c's sessions and operations. */
void hsm_call_track(struct hsm *hsm, struct hsm_call *call);
void hsm_call_untrack(struct hsm *hsm, struct hsm_call *call);

/* ---- hsm_key.c -------------------------------------------------------- */

#define HSM_LABEL_MAX 128
/* A label as log_quote() writes it: escaped, quoted, truncated to fit. */
#define HSM_LABEL_QUOTED (2 * HSM_LABEL_MAX + 3)
/* Handles asked of C_FindObjects at a time. */
#define HSM_FIND_BATCH 64
/* HS256's secret: RFC 7518 §3.2 wants a key of at least the hash's size. */
#define HSM_HS256_KEY_LEN 32

/* DER of the curve parameters CKA_EC_PARAMS takes: what discovery accepts
 * (hsm_ec_params_match) and generation asks for (hsm_keygen.c). */
extern const uint8_t hsm_oid_p256[10];
extern const uint8_t hsm_oid_p384[7];
extern const uint8_t hsm_ed25519_printable[14];
extern const uint8_t hsm_oid_ed25519[5];

/* "hsmjwt:<ALG>:<kid>" → alg and kid (JWK_THUMBPRINT_LEN
 * base64url characters, ret_kid holds one more); 0, or -EINVAL for a label
 * that is not hsmjwt's.  Pure, for the tests. */
int hsm_parse_label(const char *label, enum jws_alg *ret_alg, char *ret_kid);

/* Whether params (a CKA_EC_PARAMS value) names the curve of alg
 * (P-256, P-384, Ed25519 in any of its three encodings); 1 or 0.  Pure. */
int hsm_ec_params_match(enum jws_alg alg, const uint8_t *params, size_t len);

/* What a Cryptoki answer to an attribute read says of the key:
 * 0 (CKR_OK); -ENOENT when the object has no such attribute or will not
 * reveal it (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE), a verdict
 * on the key; -ENOMEM for CKR_HOST_MEMORY; otherwise the hsm_error, which
 * says nothing about the key.  Pure. */
int hsm_key_rv_verdict(CK_RV rv);

/* The mapping of a failed call that makes or grows an object (generation,
 * naming, a record): a token out of room is HSM_E_FAILED, not a failure. */
int hsm_create_error(struct hsm *hsm, CK_RV rv);
/* hsm_key_rv_verdict for an attribute read during an operation (records'
 * reads too): a failed device marks the token failed. */
int hsm_key_verdict(struct hsm *hsm, CK_RV rv);
/* Up to max handles of the objects matching tmpl; *ret_more (may be NULL)
 * whether there are more.  Records are searched and destroyed in batches. */
int hsm_find_objects(struct hsm *hsm, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
		     CK_OBJECT_HANDLE *found, CK_ULONG max, CK_ULONG *ret_count, int *ret_more);
/* Every object matching tmpl (at most HSM_MAX_KEY_OBJECTS, else -E2BIG) in
 * a new array: keys and records are indexed alike. */
int hsm_find_all(struct hsm *hsm, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
		 const char *what, CK_OBJECT_HANDLE **ret_handles, CK_ULONG *ret_count);
/* The EVP_PKEY of a public key object for alg: discovery checks a half by
 * it, generation takes the new key's kid from it. */
int hsm_read_public_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
			enum jws_alg alg, EVP_PKEY **ret_pkey);
/* The custody check every key passes, found (generated 0: skipped when it
 * fails) or just generated (1: an error, the key destroyed). */
int hsm_check_private_key(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
			  CK_OBJECT_HANDLE pub, enum jws_alg alg, const char *label, int generated);
/* "hsmjwt:<ALG>:<kid>" into label (HSM_LABEL_MAX bytes): the name a key's
 * objects and its lifecycle records share. */
void hsm_key_label(enum jws_alg alg, const char *kid, char *label);
/* Destroys obj; one already gone counts as destroyed: keys and records. */
int hsm_destroy_object(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, const char *what,
		       const char *kid);

/* ---- hsm_record.c ----------------------------------------------------- */

/* One lifecycle record's handle and label; opaque outside hsm_record.c. */
struct hsm_record_ref;

/* Every lifecycle record in the token, sorted by label, in a new array:
 * read once per hsm_find_keys, then attached to each key found. */
int hsm_index_records(struct hsm *hsm, CK_SESSION_HANDLE s, struct hsm_record_ref **ret_refs,
		      size_t *ret_count);
/* Gives key (alg and kid set) the records of refs under its label. */
int hsm_attach_records(struct hsm *hsm, CK_SESSION_HANDLE s, const struct hsm_record_ref *refs,
		       size_t n, struct hsm_key *key);
/* Creates the lifecycle record value[0..len) under label: hsm_generate_key
 * writes a new key's first record before it names the key. */
int hsm_record_create(struct hsm *hsm, CK_SESSION_HANDLE s, const char *label, const uint8_t *value,
		      size_t len, CK_OBJECT_HANDLE *ret_handle);
/* Destroys every lifecycle record under label, found afresh, when
 * hsm_destroy_key has made the key unloadable; *ret_count: how many. */
int hsm_destroy_records(struct hsm *hsm, CK_SESSION_HANDLE s, const char *label, const char *kid,
			size_t *ret_count);

#endif
