/* hsm: every private-key operation, through Cryptoki (PKCS#11) directly.
 *
 * The process never holds private key material: keys are generated inside
 * the token (CKA_SENSITIVE, !CKA_EXTRACTABLE) and used by object handle.
 * One struct hsm per process (module loaded, token found, user logged in);
 * one struct hsm_session per worker thread, so signing never contends on a
 * session lock.  Object handles are valid in every session of the process.
 *
 * Key objects in the token (both halves CKA_TOKEN):
 *   CKA_LABEL "hsmjwt:<ALG>:<kid>"  — the JWS algorithm the key serves and its
 *                                     RFC 7638 thumbprint
 *   CKA_ID    the 32 raw bytes of that thumbprint
 * so that other PKCS#11 clients (libp11, pkcs11-tool) can find them too.
 * HS256: one CKO_SECRET_KEY (CKK_GENERIC_SECRET, 32 bytes, CKA_SIGN and
 * CKA_VERIFY, sensitive, never extractable) under the same label scheme; its
 * kid is 32 random bytes in base64url (a name only: there is no public key
 * to take a thumbprint of, and a hash of the secret is not published); no
 * public half, and verification runs in the token too (hsm_verify).
 *
 * Lifecycle records (keystate.h) sit next to each key as CKO_DATA objects:
 * CKA_APPLICATION "hsmjwt", CKA_LABEL the key's label, CKA_VALUE the record,
 * opaque to this module.  Records are created and destroyed, never modified.
 *
 * Private keys, secret keys and records are CKA_PRIVATE, and only private
 * objects are taken for hsmjwt's: anyone with a session on the token can
 * make public objects without the PIN (and sign with a public private key).
 *
 * Faults (SPEC §8): an operation whose Cryptoki call fails with a
 * device-class code (hsm_error_from_rv: HSM_E_DEVICE) marks the whole token
 * failed; from then on every operation fails at once with HSM_E_DEVICE
 * without calling into the module, until hsm_recover has re-initialised the
 * module and logged in again.  Each recovery starts a new generation:
 * sessions reopen themselves on their next use, and key handles found in an
 * older generation are refused (HSM_E_STALE) until the keys are reloaded.
 * A key object gone under hsm_sign or hsm_verify marks the token failed
 * only when the token no longer answers or lost its login; otherwise
 * another process destroyed the key, and the answer is HSM_E_STALE. */
#ifndef HSMJWT_HSM_H
#define HSMJWT_HSM_H

#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"

#define HSM_LABEL_PREFIX "hsmjwt:"

/* Bounds of hsm_find_keys: the key objects of each class (private, public)
 * it examines, foreign ones included, and the hsmjwt keys it keeps. */
#define HSM_MAX_KEY_OBJECTS 1024
#define HSM_MAX_KEYS 256

/* Cryptoki failures map to these; CKR values are logged where they occur. */
enum hsm_error {
	HSM_E_MODULE   = -2001, /* module cannot be loaded or initialised */
	HSM_E_NO_TOKEN = -2002, /* no token matches the label / URI */
	HSM_E_LOGIN    = -2003, /* no PIN, or the login failed for a reason not the PIN's */
	HSM_E_DEVICE   = -2004, /* session or device failed: retry after recovery */
	HSM_E_FAILED   = -2005, /* the operation failed for another reason */
	HSM_E_STALE    = -2006, /* a key handle from before a recovery, or of a key
				 * destroyed since (by another process): reload the keys */
	HSM_E_PIN      = -2007, /* the token refused the PIN (CKR_PIN_INCORRECT,
				 * _INVALID, _LEN_RANGE, _EXPIRED, _LOCKED): never
				 * tried again, a token locks its PIN after a few */
};

/* A lifecycle record's value is at most this long; a key keeps at most
 * HSM_MAX_META of them in memory (a transition briefly makes two). */
#define HSM_META_MAX 256
#define HSM_MAX_META 4

struct hsm_meta {
	CK_OBJECT_HANDLE handle;
	size_t len;
	uint8_t value[HSM_META_MAX];
};

struct hsm;
struct hsm_session;

struct hsm_key {
	enum jws_alg alg;
	char kid[JWK_THUMBPRINT_LEN + 1];
	CK_OBJECT_HANDLE private_handle;  /* the private key, or HS256's secret key */
	CK_OBJECT_HANDLE public_handle;   /* CK_INVALID_HANDLE for HS256 */
	EVP_PKEY *public_key;             /* owned; NULL for HS256 */
	unsigned generation;              /* hsm_generation() the handles belong to */
	struct hsm_meta meta[HSM_MAX_META];
	size_t meta_count;                /* records held in meta[] */
	size_t meta_found;                /* records in the token (may exceed HSM_MAX_META) */
};

/* True for the algorithms whose keys hsm generates, holds and signs with
 * (ES256 ES384 RS256 PS256 EdDSA HS256): the one list every caller asks. */
int hsm_alg_supported(enum jws_alg alg);

/* A slot with a token, as C_GetSlotList and C_GetTokenInfo describe it. */
struct hsm_slot_desc {
	CK_SLOT_ID slot_id;
	CK_TOKEN_INFO info;
};

/* The token token_spec names among slots[0..count), as hsm_open finds it: a
 * spec that does not start with "pkcs11:" is a label, equal to the token's
 * CKA_LABEL less its padding (trailing spaces and NULs); otherwise an RFC
 * 7512 URI (p11-kit's parser) whose slot-id= must equal the slot's and whose
 * token attributes (token=, serial=, model=, manufacturer=) must equal the
 * token info's.  Tokens without CKF_TOKEN_INITIALIZED never match.  The
 * first match in slot order wins.  A pure function over the buffers, for
 * tests and fuzzing.  0 and *ret_index; HSM_E_NO_TOKEN (logged) for no
 * match or a URI that does not parse; -ENOMEM. */
int hsm_token_select(const char *token_spec, const struct hsm_slot_desc *slots, size_t count,
		     size_t *ret_index);

/* Loads module_path, finds the token named by token_spec (a label, or an RFC
 * 7512 pkcs11: URI with token=, serial=, slot-id=, model=, manufacturer=),
 * and logs in with pin when the token requires a login: one C_Login, never
 * repeated.  The caller wipes pin afterwards.  0 and *ret_hsm, or an
 * hsm_error: HSM_E_PIN (logged with the CKR) when the token refused the
 * PIN, which the caller must not try again. */
int hsm_open(const char *module_path, const char *token_spec,
	     const char *pin, size_t pin_len, struct hsm **ret_hsm);
/* Closes sessions, logs out and finalises the module — the last two only
 * when this hsm logged in and initialised it, not when another user of the
 * module in this process had.  Every hsm_session must have been closed
 * first. */
void hsm_close(struct hsm *hsm);

/* Token, module and mechanism description for `hsmjwtctl status`; *ret_text
 * is malloc'd, the caller frees it. */
int hsm_describe(struct hsm *hsm, char **ret_text);

/* A session for one thread. */
int hsm_session_open(struct hsm *hsm, struct hsm_session **ret_session);
void hsm_session_close(struct hsm_session *session);
/* A cheap round trip to the token (C_GetSessionInfo): 0 while the session
 * works, HSM_E_DEVICE when it does not (which marks the token failed).
 * Logs only when the answer changes (works → fails, fails → works), however
 * often it is called. */
int hsm_session_check(struct hsm_session *session);

/* Every hsmjwt key pair in the token (private key with an hsmjwt label and its
 * public half), then every HS256 secret key, each with its lifecycle records
 * (in handle order).  A private key that was not generated in the token as
 * sensitive and unextractable (CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE),
 * cannot sign, or whose type or curve is not its label's algorithm is
 * skipped with a warning naming its label and the attribute.
 * *ret_keys is an array of *ret_count keys (hsm_keys_free).
 * -E2BIG (logged) when the token holds more than HSM_MAX_KEY_OBJECTS
 * private, public or secret keys or lifecycle records, or more than
 * HSM_MAX_KEYS hsmjwt keys: never a partial set.  HSM_E_DEVICE, the token
 * marked failed, when by the end it no longer answers or has lost its
 * login (hsm_token_probe): such a token answers searches with nothing. */
int hsm_find_keys(struct hsm_session *session, struct hsm_key **ret_keys, size_t *ret_count);
void hsm_keys_free(struct hsm_key *keys, size_t count);

/* Writes the first lifecycle record of a key just generated for alg into
 * buf (size bytes: HSM_META_MAX): 0 and *ret_len, or a negative error (the
 * callback logs it), which fails the generation. */
typedef int (*hsm_meta_fn)(void *ctx, enum jws_alg alg, uint8_t *buf, size_t size, size_t *ret_len);

/* Generates a key pair (HS256: a secret key) for alg inside the token
 * (rsa_bits for RS256/PS256), labels it, and returns it.  When meta is not
 * NULL, it is called once the key exists (C_GenerateKeyPair or
 * C_GenerateKey succeeded and the public key was read), so that times in
 * the record count from after generation, which may take seconds (RSA
 * 4096); the record is then created before the key gets its label, so that
 * no process ever finds the key without its record.  An error from meta, or
 * a *ret_len over size (-EINVAL), fails the generation and the key is
 * destroyed.  -EINVAL for an RSA size outside the token's range (checked
 * first: SoftHSM answers one with CKR_GENERAL_ERROR, a device failure).
 * A token out of room (CKR_DEVICE_MEMORY) is HSM_E_FAILED, logged, and not
 * marked failed: it signs on with the keys it holds.  Needs a read-write
 * session, which it opens. */
int hsm_generate_key(struct hsm *hsm, enum jws_alg alg, unsigned rsa_bits,
		     hsm_meta_fn meta, void *meta_ctx, struct hsm_key *ret_key);

/* Destroys a key: the private (or secret) key first, so that it can no
 * longer sign even if what follows fails, then the public half, then every
 * lifecycle record in the token under its label.  An object already gone
 * (another process destroyed it) counts as destroyed.  An object that will
 * not go does not stop the others (the first error is returned), except
 * that the records stay while the key can still be loaded (neither half
 * gone), and nothing more is tried once the token is marked failed. */
int hsm_destroy_key(struct hsm *hsm, const struct hsm_key *key);

/* Adds a lifecycle record value[0..len) (len <= HSM_META_MAX) to key.
 * CKR_DEVICE_MEMORY as for hsm_generate_key. */
int hsm_meta_add(struct hsm *hsm, const struct hsm_key *key, const uint8_t *value, size_t len);
/* Removes key->meta[index] from the token (0 if it is gone already). */
int hsm_meta_remove(struct hsm *hsm, const struct hsm_key *key, size_t index);

/* Signs data with the key for its algorithm inside the token; sig receives
 * the JOSE form (r||s for ECDSA), *sig_len is its capacity on entry: below
 * the key's signature size, -ENOSPC without a call (a C_Sign refused for
 * its buffer would leave the session's operation active). */
int hsm_sign(struct hsm_session *session, const struct hsm_key *key,
	     const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len);

/* HS256 verification inside the token (C_Verify with CKM_SHA256_HMAC, whose
 * comparison is the module's): 0 when sig is the MAC of data, -EBADMSG
 * when it is not (CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE), -EINVAL
 * for a key that is not HS256, or an hsm_error. */
int hsm_verify(struct hsm_session *session, const struct hsm_key *key,
	       const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len);

/* ---- faults and recovery ---------------------------------------------- */

/* 1 while operations may call into the module, 0 once it has failed and
 * until hsm_recover succeeds.  Lock-free: /health asks it on every call. */
int hsm_available(const struct hsm *hsm);
/* The current generation (incremented by every successful recovery). */
unsigned hsm_generation(const struct hsm *hsm);
/* Why the token was marked failed: a CKR name, "hung", "pin_rejected" once
 * a recovery's login was refused for its PIN (for good: see hsm_recover),
 * or "" when it has not.  A static string. */
const char *hsm_failure(const struct hsm *hsm);

/* Where hsm_recover gets the PIN to log in again: read returns a fresh copy
 * (0, or -ENOENT when no source is set), release wipes and frees it.  Without
 * a source, a token that needs a login cannot be recovered (HSM_E_LOGIN).
 * The PIN handed to hsm_open is never kept. */
typedef int (*hsm_pin_read_fn)(void *ctx, char **ret_pin, size_t *ret_len);
typedef void (*hsm_pin_release_fn)(void *ctx, char *pin, size_t len);
void hsm_set_pin_source(struct hsm *hsm, hsm_pin_read_fn read, hsm_pin_release_fn release, void *ctx);

/* Marks the token failed ("hung") when an operation has been inside the
 * module for too long, so that other threads answer at once instead of
 * queueing behind it (the thread in the call stays there until the module
 * returns).  The limit is call_hang_ms for a signature or verification
 * (hsm_sign, hsm_verify, hsm_session_check: a Cryptoki call or two), and
 * admin_hang_ms for the operations of many calls, timed as a whole (key
 * generation — RSA 8192 takes seconds —, hsm_find_keys over many keys on a
 * network HSM, records, destruction, hsm_describe).  1 when the token is
 * failed (now or already), 0 otherwise.  Called periodically from one
 * thread. */
int hsm_watchdog(struct hsm *hsm, unsigned call_hang_ms, unsigned admin_hang_ms);

/* Brings a failed token back: waits up to wait_ms for operations still in
 * the module (-EBUSY if one stays: a hung call), then closes every session,
 * finalises and initialises the module (when this hsm initialised it),
 * finds the token again, opens the login session and logs in (PIN from the
 * source above), and marks the token available under a new generation.
 * Logged at each step that fails.  0, or a negative error: the caller tries
 * again later, with backoff — except HSM_E_PIN: the token refused the PIN
 * (one error line naming the CKR), the failure becomes "pin_rejected", and
 * from then on hsm_recover answers HSM_E_PIN at once, without a call into
 * the module or a PIN read, for the life of this hsm: each wrong try counts
 * towards the token locking the PIN (3 on a Nitrokey HSM), and the PIN
 * source needs an operator and a restart.  Called from one thread. */
int hsm_recover(struct hsm *hsm, unsigned wait_ms);

/* Name of a Cryptoki return value for log lines ("CKR_PIN_INCORRECT"). */
const char *hsm_ckr_name(CK_RV rv);

#endif
