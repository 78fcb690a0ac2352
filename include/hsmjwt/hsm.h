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
 * so that other PKCS#11 clients (libp11, pkcs11-tool) can find them too. */
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
	HSM_E_LOGIN    = -2003, /* PIN wrong, locked, or missing */
	HSM_E_DEVICE   = -2004, /* session or device failed: retry after recovery */
	HSM_E_FAILED   = -2005, /* the operation failed for another reason */
};

struct hsm;
struct hsm_session;

struct hsm_key {
	enum jws_alg alg;
	char kid[JWK_THUMBPRINT_LEN + 1];
	CK_OBJECT_HANDLE private_handle;
	CK_OBJECT_HANDLE public_handle;
	EVP_PKEY *public_key;             /* owned */
};

/* True for the algorithms whose keys hsm generates, holds and signs with
 * (ES256 ES384 RS256 PS256 EdDSA): the one list every caller asks. */
int hsm_alg_supported(enum jws_alg alg);

/* Loads module_path, finds the token named by token_spec (a label, or an RFC
 * 7512 pkcs11: URI with token=, serial=, slot-id=, model=, manufacturer=),
 * and logs in with pin when the token requires a login.  The caller wipes pin
 * afterwards.  0 and *ret_hsm, or an hsm_error. */
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
 * works, HSM_E_DEVICE when it does not.  Logs only when the answer changes
 * (works → fails, fails → works), however often it is called. */
int hsm_session_check(struct hsm_session *session);

/* Every hsmjwt key pair in the token (private key with an hsmjwt label and its
 * public half).  A private key that was not generated in the token as
 * sensitive and unextractable (CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE),
 * cannot sign, or whose type or curve is not its label's algorithm is
 * skipped with a warning naming its label and the attribute.
 * *ret_keys is an array of *ret_count keys (hsm_keys_free).
 * -E2BIG (logged) when the token holds more than HSM_MAX_KEY_OBJECTS
 * private or public keys, or more than HSM_MAX_KEYS hsmjwt keys: never a
 * partial set. */
int hsm_find_keys(struct hsm_session *session, struct hsm_key **ret_keys, size_t *ret_count);
void hsm_keys_free(struct hsm_key *keys, size_t count);

/* Generates a key pair for alg inside the token (rsa_bits for RS256/PS256),
 * labels it, and returns it.  Needs a read-write session, which it opens. */
int hsm_generate_key(struct hsm *hsm, enum jws_alg alg, unsigned rsa_bits, struct hsm_key *ret_key);

/* Destroys both halves of a key pair (for failed generation and, later, the
 * key lifecycle). */
int hsm_destroy_key(struct hsm *hsm, const struct hsm_key *key);

/* Signs data with the key for its algorithm inside the token; sig receives
 * the JOSE form (r||s for ECDSA), *sig_len is its capacity on entry. */
int hsm_sign(struct hsm_session *session, const struct hsm_key *key,
	     const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len);

/* Name of a Cryptoki return value for log lines ("CKR_PIN_INCORRECT"). */
const char *hsm_ckr_name(CK_RV rv);

#endif
