/* hsm_internal.h: what hsm.c (module, token, login, sessions, signing) and
 * hsm_key.c (key objects: find, check, generate, destroy) share.  Not part of
 * the module's contract: include/hsmjwt/hsm.h is. */
#ifndef HSMJWT_HSM_INTERNAL_H
#define HSMJWT_HSM_INTERNAL_H

#include "hsmjwt/hsm.h"

struct hsm {
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	char token_label[33];
	/* Held open for the life of the process: Cryptoki keeps the login only
	 * while the application has at least one session on the token. */
	CK_SESSION_HANDLE login_session;
	int logged_in;
	/* Cryptoki state is per process: another user of the module in this
	 * process (a library, a test) may have initialised it or logged in
	 * first.  Undo only what this hsm did. */
	int initialized;
	int login_owned;
};

struct hsm_session {
	struct hsm *hsm;
	CK_SESSION_HANDLE handle;
	int failing;   /* the last hsm_session_check failed */
};

/* The hsm_error of a Cryptoki failure: HSM_E_DEVICE when the session or the
 * device is gone (the caller should recover), HSM_E_FAILED otherwise. */
int hsm_error_from_rv(CK_RV rv);

/* hsm_error_from_rv for a call made during an operation: HSM_E_DEVICE also
 * marks the token failed, with rv's name as the reason. */
int hsm_fail_rv(struct hsm *hsm, CK_RV rv);

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
