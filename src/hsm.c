/* The hsm module: the PKCS#11 library, the token, the login, one session per
 * thread, the bracket around each operation, and signing.  Fault state,
 * call tracking, watchdog and recovery: hsm_recover.c; key objects (find,
 * check, destroy): hsm_key.c; generation: hsm_keygen.c; lifecycle records:
 * hsm_record.c. */
#include "hsmjwt/hsm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

#include "hsm_internal.h"
#include "hsmjwt/clock.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

const char *hsm_ckr_name(CK_RV rv)
{
	static const struct { CK_RV rv; const char *name; } names[] = {
		{ CKR_OK, "CKR_OK" },
		{ CKR_HOST_MEMORY, "CKR_HOST_MEMORY" },
		{ CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID" },
		{ CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR" },
		{ CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED" },
		{ CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD" },
		{ CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED" },
		{ CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE" },
		{ CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID" },
		{ CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID" },
		{ CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE" },
		{ CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR" },
		{ CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY" },
		{ CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED" },
		{ CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID" },
		{ CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE" },
		{ CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT" },
		{ CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE" },
		{ CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID" },
		{ CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID" },
		{ CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID" },
		{ CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE" },
		{ CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT" },
		{ CKR_PIN_LOCKED, "CKR_PIN_LOCKED" },
		{ CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED" },
		{ CKR_PIN_INVALID, "CKR_PIN_INVALID" },
		{ CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE" },
		{ CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED" },
		{ CKR_SESSION_COUNT, "CKR_SESSION_COUNT" },
		{ CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID" },
		{ CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY" },
		{ CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID" },
		{ CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE" },
		{ CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY" },
		{ CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE" },
		{ CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT" },
		{ CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT" },
		{ CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED" },
		{ CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED" },
		{ CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN" },
		{ CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN" },
		{ CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED" },
		{ CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL" },
		{ CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED" },
		{ CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED" },
		{ CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED" },
		{ CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID" },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].rv == rv)
			return names[i].name;
	return "CKR_(other)";
}

int hsm_alg_supported(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_ES256:
	case JWS_ALG_ES384:
	case JWS_ALG_RS256:
	case JWS_ALG_PS256:
	case JWS_ALG_EDDSA:
	case JWS_ALG_HS256:
		return 1;
	default:
		return 0;
	}
}

/* Failures that mean the session or the device is gone, so the caller should
 * drop the session and recover rather than report a bad request. */
int hsm_error_from_rv(CK_RV rv)
{
	switch (rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_DEVICE_ERROR:
	case CKR_DEVICE_MEMORY:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_GENERAL_ERROR:
		return HSM_E_DEVICE;
	default:
		return HSM_E_FAILED;
	}
}

/* How long hsm_close waits for calls still inside the module. */
#define HSM_CLOSE_WAIT_MS 2000

int64_t hsm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 1;
}

/* Takes the read lock for an operation: not while the token is failed, and
 * not for a key handle of another generation (generations change under the
 * write lock only, so the comparison holds until hsm_op_unlock). */
static int hsm_op_lock(struct hsm *hsm, const struct hsm_key *key)
{
	if (!atomic_load_explicit(&hsm->available, memory_order_acquire))
		return HSM_E_DEVICE;
	pthread_rwlock_rdlock(&hsm->lock);
	if (key != NULL && key->generation != atomic_load_explicit(&hsm->generation, memory_order_relaxed)) {
		pthread_rwlock_unlock(&hsm->lock);
		return HSM_E_STALE;
	}
	return 0;
}

int hsm_session_begin(struct hsm_session *session, const struct hsm_key *key)
{
	struct hsm *hsm = session->hsm;
	unsigned generation;
	CK_SESSION_HANDLE handle;
	CK_RV rv;
	int r;

	r = hsm_op_lock(hsm, key);
	if (r < 0)
		return r;
	atomic_store_explicit(&session->call.started, hsm_now_ms(), memory_order_relaxed);
	generation = atomic_load_explicit(&hsm->generation, memory_order_relaxed);
	if (session->generation == generation && session->handle != CK_INVALID_HANDLE)
		return 0;
	/* A handle of an older generation is never closed: handles are
	 * numbered afresh after C_Initialize, and that number may now be
	 * another thread's session. */
	session->handle = CK_INVALID_HANDLE;
	rv = hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION, NULL, NULL, &handle);
	if (rv != CKR_OK) {
		log_error("\"C_OpenSession failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		hsm_session_end(session);
		return hsm_fail_rv(hsm, rv);
	}
	session->handle = handle;
	session->generation = generation;
	return 0;
}

void hsm_session_end(struct hsm_session *session)
{
	atomic_store_explicit(&session->call.started, 0, memory_order_relaxed);
	pthread_rwlock_unlock(&session->hsm->lock);
}

int hsm_session_begin_admin(struct hsm_session *session, struct hsm_call *call)
{
	int r = hsm_session_begin(session, NULL);

	if (r < 0)
		return r;
	atomic_store_explicit(&session->call.started, 0, memory_order_relaxed);
	call->admin = 1;
	hsm_call_track(session->hsm, call);
	atomic_store_explicit(&call->started, hsm_now_ms(), memory_order_relaxed);
	return 0;
}

void hsm_session_end_admin(struct hsm_session *session, struct hsm_call *call)
{
	hsm_call_untrack(session->hsm, call);
	hsm_session_end(session);
}

int hsm_raw_begin(struct hsm *hsm, struct hsm_call *call, const struct hsm_key *key)
{
	int r = hsm_op_lock(hsm, key);

	if (r < 0)
		return r;
	call->admin = 1;
	hsm_call_track(hsm, call);
	atomic_store_explicit(&call->started, hsm_now_ms(), memory_order_relaxed);
	return 0;
}

void hsm_raw_end(struct hsm *hsm, struct hsm_call *call)
{
	hsm_call_untrack(hsm, call);
	pthread_rwlock_unlock(&hsm->lock);
}

/* Cryptoki pads labels with spaces to 32 bytes. */
static void hsm_trim_padded(char *dst, const unsigned char *src, size_t n)
{
	while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
		n--;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int hsm_token_matches(P11KitUri *uri, const char *label, const struct hsm_slot_desc *slot)
{
	char have[33];

	if (!(slot->info.flags & CKF_TOKEN_INITIALIZED))
		return 0;
	if (uri == NULL) {
		hsm_trim_padded(have, slot->info.label, sizeof(slot->info.label));
		return strcmp(have, label) == 0;
	}
	if (p11_kit_uri_get_slot_id(uri) != (CK_SLOT_ID)-1 && p11_kit_uri_get_slot_id(uri) != slot->slot_id)
		return 0;
	return p11_kit_uri_match_token_info(uri, &slot->info);
}

int hsm_token_select(const char *token_spec, const struct hsm_slot_desc *slots, size_t count,
		     size_t *ret_index)
{
	P11KitUri *uri = NULL;
	int r = HSM_E_NO_TOKEN;

	if (strncmp(token_spec, "pkcs11:", 7) == 0) {
		uri = p11_kit_uri_new();
		if (uri == NULL)
			return -ENOMEM;
		if (p11_kit_uri_parse(token_spec, P11_KIT_URI_FOR_TOKEN | P11_KIT_URI_FOR_SLOT, uri) != P11_KIT_URI_OK) {
			log_error("\"cannot parse token URI\" token=%s", token_spec);
			goto out;
		}
	}
	for (size_t i = 0; i < count; i++) {
		if (hsm_token_matches(uri, token_spec, &slots[i])) {
			*ret_index = i;
			r = 0;
			goto out;
		}
	}
	log_error("\"no token matches\" token=%s slots=%zu", token_spec, count);
out:
	if (uri)
		p11_kit_uri_free(uri);
	return r;
}

/* The slot of the token token_spec names, and its label (33 bytes). */
int hsm_find_slot(struct hsm *hsm, const char *token_spec, CK_SLOT_ID *ret_slot, char *ret_label)
{
	struct hsm_slot_desc *descs = NULL;
	CK_SLOT_ID *slots = NULL;
	CK_ULONG count = 0;
	size_t described = 0, index;
	CK_RV rv;
	int r = HSM_E_NO_TOKEN;

	rv = hsm->f->C_GetSlotList(CK_TRUE, NULL, &count);
	if (rv != CKR_OK || count == 0) {
		log_error("\"no token present\" rv=%s", hsm_ckr_name(rv));
		goto out;
	}
	slots = calloc(count, sizeof(*slots));
	descs = calloc(count, sizeof(*descs));
	if (slots == NULL || descs == NULL) {
		r = -ENOMEM;
		goto out;
	}
	rv = hsm->f->C_GetSlotList(CK_TRUE, slots, &count);
	if (rv != CKR_OK) {
		log_error("\"C_GetSlotList failed\" rv=%s", hsm_ckr_name(rv));
		goto out;
	}
	/* A slot whose token does not answer cannot be the one named. */
	for (CK_ULONG i = 0; i < count; i++) {
		if (hsm->f->C_GetTokenInfo(slots[i], &descs[described].info) != CKR_OK)
			continue;
		descs[described++].slot_id = slots[i];
	}
	r = hsm_token_select(token_spec, descs, described, &index);
	if (r < 0)
		goto out;
	*ret_slot = descs[index].slot_id;
	hsm_trim_padded(ret_label, descs[index].info.label, sizeof(descs[index].info.label));
out:
	free(descs);
	free(slots);
	return r;
}

int hsm_pin_refused(CK_RV rv)
{
	switch (rv) {
	case CKR_PIN_INCORRECT:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_EXPIRED:
	case CKR_PIN_LOCKED:
		return 1;
	default:
		return 0;
	}
}

int hsm_login(struct hsm *hsm, const char *pin, size_t pin_len, int recovery)
{
	CK_TOKEN_INFO info;
	CK_RV rv;

	rv = hsm->f->C_GetTokenInfo(hsm->slot, &info);
	if (rv != CKR_OK) {
		log_error("\"C_GetTokenInfo failed\" rv=%s", hsm_ckr_name(rv));
		return hsm_error_from_rv(rv);
	}
	if (!(info.flags & CKF_LOGIN_REQUIRED))
		return 0;
	if (pin == NULL) {
		log_error("\"token requires a PIN and none is configured\" token=%s hint=\"set pin_file\"",
			  hsm->token_label);
		return HSM_E_LOGIN;
	}
	rv = hsm->f->C_Login(hsm->login_session, CKU_USER, (CK_UTF8CHAR *)pin, pin_len);
	metrics_hsm_operation(METRICS_HSM_LOGIN, rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
	/* Real tokens lock the user PIN after a few wrong tries (a Nitrokey
	 * HSM after 3), an outage only the security officer ends: a refused
	 * PIN is never tried again, by a restart either (hsmjwtd exits
	 * EX_CONFIG, which its unit does not restart). */
	if (hsm_pin_refused(rv) && recovery) {
		log_error("\"token recovery: the token refused the PIN; no further login until hsmjwtd restarts, "
			  "signing stays unavailable\" token=%s rv=%s hint=\"fix the PIN source (pin_file, the pin "
			  "credential), then restart hsmjwtd: every wrong try counts towards the token locking the PIN\"",
			  hsm->token_label, hsm_ckr_name(rv));
		return HSM_E_PIN;
	}
	if (hsm_pin_refused(rv)) {
		log_error("\"the token refused the PIN; it is not tried again\" token=%s rv=%s hint=\"fix the PIN "
			  "source (pin_file, the pin credential, HSMJWT_PIN), then start again: every wrong try counts "
			  "towards the token locking the PIN\"", hsm->token_label, hsm_ckr_name(rv));
		return HSM_E_PIN;
	}
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		log_error("\"login failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		return HSM_E_LOGIN;
	}
	hsm->logged_in = 1;
	hsm->login_owned = rv == CKR_OK;
	return 0;
}

CK_RV hsm_initialize(struct hsm *hsm)
{
	CK_C_INITIALIZE_ARGS init_args;

	memset(&init_args, 0, sizeof(init_args));
	/* Workers sign from several threads at once. */
	init_args.flags = CKF_OS_LOCKING_OK;
	return hsm->f->C_Initialize(&init_args);
}

int hsm_open(const char *module_path, const char *token_spec, const char *pin, size_t pin_len,
	     struct hsm **ret_hsm)
{
	pthread_rwlockattr_t attr;
	struct hsm *hsm;
	CK_RV rv;
	int r;

	hsm = calloc(1, sizeof(*hsm));
	if (hsm == NULL)
		return -ENOMEM;
	hsm->login_session = CK_INVALID_HANDLE;
	atomic_init(&hsm->available, 1);
	atomic_init(&hsm->failure, "");
	atomic_init(&hsm->generation, 1);
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&hsm->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&hsm->calls_lock, NULL);
	hsm->calls.next = hsm->calls.prev = &hsm->calls;
	hsm->token_spec = strdup(token_spec);
	if (hsm->token_spec == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	/* Unmanaged: we want the module's own return codes and our own
	 * C_Initialize arguments, not p11-kit's proxying. */
	hsm->f = p11_kit_module_load(module_path, P11_KIT_MODULE_UNMANAGED | P11_KIT_MODULE_CRITICAL);
	if (hsm->f == NULL) {
		log_error("\"cannot load PKCS#11 module\" module=%s error=\"%s\"", module_path,
			  p11_kit_message() ? p11_kit_message() : "unknown");
		r = HSM_E_MODULE;
		goto fail;
	}
	rv = hsm_initialize(hsm);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		log_error("\"C_Initialize failed\" module=%s rv=%s", module_path, hsm_ckr_name(rv));
		p11_kit_module_release(hsm->f);
		hsm->f = NULL;
		r = HSM_E_MODULE;
		goto fail;
	}
	hsm->initialized = rv == CKR_OK;
	if (!hsm->initialized)
		log_debug("\"module already initialised in this process; it stays so after close\" module=%s",
			  module_path);
	r = hsm_find_slot(hsm, token_spec, &hsm->slot, hsm->token_label);
	if (r < 0)
		goto fail;
	rv = hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION, NULL, NULL, &hsm->login_session);
	if (rv != CKR_OK) {
		log_error("\"C_OpenSession failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		r = hsm_error_from_rv(rv);
		goto fail;
	}
	r = hsm_login(hsm, pin, pin_len, 0);
	if (r < 0)
		goto fail;
	log_info("\"token opened\" token=%s module=%s", hsm->token_label, module_path);
	*ret_hsm = hsm;
	return 0;
fail:
	hsm_close(hsm);
	return r;
}

void hsm_close(struct hsm *hsm)
{
	struct timespec deadline;

	if (hsm == NULL)
		return;
	if (hsm->f != NULL) {
		deadline = clock_deadline(HSM_CLOSE_WAIT_MS);
		if (pthread_rwlock_clockwrlock(&hsm->lock, CLOCK_MONOTONIC, &deadline) != 0) {
			/* Unloading the module, or freeing the lock, under a thread
			 * that is still inside it would crash that thread when the
			 * module returns: both are left to the process's exit. */
			log_error("\"a call is still inside the PKCS#11 module; it stays loaded\" token=%s",
				  hsm->token_label);
			return;
		}
		/* A failed token may hang on any call; C_Finalize closes the
		 * sessions anyway. */
		if (hsm->login_session != CK_INVALID_HANDLE && hsm_available(hsm)) {
			if (hsm->login_owned)
				hsm->f->C_Logout(hsm->login_session);
			hsm->f->C_CloseSession(hsm->login_session);
		}
		if (hsm->initialized)
			hsm->f->C_Finalize(NULL);
		pthread_rwlock_unlock(&hsm->lock);
		p11_kit_module_release(hsm->f);
	}
	pthread_rwlock_destroy(&hsm->lock);
	pthread_mutex_destroy(&hsm->calls_lock);
	free(hsm->token_spec);
	free(hsm);
}

int hsm_describe(struct hsm *hsm, char **ret_text)
{
	CK_TOKEN_INFO token;
	CK_INFO module;
	CK_MECHANISM_TYPE mechs[256];
	CK_ULONG mech_count = sizeof(mechs) / sizeof(mechs[0]);
	char manufacturer[33], model[17], serial[17], library[33];
	char *text = NULL;
	size_t size = 0;
	struct hsm_call call;
	FILE *out;
	CK_RV rv;
	int r;

	r = hsm_raw_begin(hsm, &call, NULL);
	if (r < 0)
		return r;
	rv = hsm->f->C_GetTokenInfo(hsm->slot, &token);
	if (rv == CKR_OK)
		rv = hsm->f->C_GetInfo(&module);
	if (rv == CKR_OK && hsm->f->C_GetMechanismList(hsm->slot, mechs, &mech_count) != CKR_OK)
		mech_count = 0;
	hsm_raw_end(hsm, &call);
	if (rv != CKR_OK) {
		log_error("\"cannot read token information\" rv=%s", hsm_ckr_name(rv));
		return hsm_fail_rv(hsm, rv);
	}
	hsm_trim_padded(manufacturer, token.manufacturerID, sizeof(token.manufacturerID));
	hsm_trim_padded(model, token.model, sizeof(token.model));
	hsm_trim_padded(serial, token.serialNumber, sizeof(token.serialNumber));
	hsm_trim_padded(library, module.libraryDescription, sizeof(module.libraryDescription));
	out = open_memstream(&text, &size);
	if (out == NULL)
		return -ENOMEM;
	fprintf(out, "module:       %s %u.%u (Cryptoki %u.%u)\n", library,
		module.libraryVersion.major, module.libraryVersion.minor,
		module.cryptokiVersion.major, module.cryptokiVersion.minor);
	fprintf(out, "token:        %s\nslot:         %lu\nmanufacturer: %s\nmodel:        %s\nserial:       %s\n",
		hsm->token_label, (unsigned long)hsm->slot, manufacturer, model, serial);
	/* Tokens may not count sessions (SoftHSM answers CK_UNAVAILABLE_INFORMATION). */
	if (token.ulSessionCount == CK_UNAVAILABLE_INFORMATION)
		fprintf(out, "sessions:     not reported by the token\n");
	else
		fprintf(out, "sessions:     %lu open, %lu read-write\n",
			(unsigned long)token.ulSessionCount, (unsigned long)token.ulRwSessionCount);
	fprintf(out, "logged in:    %s\n", hsm->logged_in ? "yes" : "no (token needs no login)");
	fprintf(out, "generation:   %u\n", hsm_generation(hsm));
	fprintf(out, "mechanisms:   %lu", (unsigned long)mech_count);
	static const struct { CK_MECHANISM_TYPE m; const char *name; } wanted[] = {
		{ CKM_ECDSA, "CKM_ECDSA" }, { CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS" },
		{ CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS" }, { CKM_EDDSA, "CKM_EDDSA" },
		{ CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN" },
		{ CKM_EC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN" },
		{ CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN" },
		{ CKM_SHA256_HMAC, "CKM_SHA256_HMAC" },
		{ CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN" },
	};
	for (size_t w = 0; w < sizeof(wanted) / sizeof(wanted[0]); w++) {
		int present = 0;
		for (CK_ULONG i = 0; i < mech_count; i++)
			present |= mechs[i] == wanted[w].m;
		fprintf(out, "%s %s%s", w == 0 ? " (" : ",", present ? "" : "!", wanted[w].name);
	}
	fprintf(out, ")\n");
	if (fclose(out) != 0) {
		free(text);
		return -ENOMEM;
	}
	*ret_text = text;
	return 0;
}

int hsm_open_raw_session(struct hsm *hsm, CK_FLAGS extra, CK_SESSION_HANDLE *ret_handle)
{
	CK_RV rv = hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | extra, NULL, NULL, ret_handle);
	if (rv != CKR_OK) {
		log_error("\"C_OpenSession failed\" token=%s rv=%s", hsm->token_label, hsm_ckr_name(rv));
		return hsm_fail_rv(hsm, rv);
	}
	return 0;
}

int hsm_session_open(struct hsm *hsm, struct hsm_session **ret_session)
{
	struct hsm_session *s;
	int r;

	if (!hsm_available(hsm))
		return HSM_E_DEVICE;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->hsm = hsm;
	s->handle = CK_INVALID_HANDLE;
	hsm_call_track(hsm, &s->call);
	/* generation 0 is nobody's: the session opens here. */
	r = hsm_session_begin(s, NULL);
	if (r < 0) {
		hsm_call_untrack(hsm, &s->call);
		free(s);
		return r;
	}
	hsm_session_end(s);
	*ret_session = s;
	return 0;
}

void hsm_session_close(struct hsm_session *session)
{
	struct hsm *hsm;

	if (session == NULL)
		return;
	hsm = session->hsm;
	hsm_call_untrack(hsm, &session->call);
	/* Only a handle of the current generation is this session's to close,
	 * and not on a failed token, which may hang: recovery closes them all. */
	if (session->handle != CK_INVALID_HANDLE && hsm_op_lock(hsm, NULL) == 0) {
		if (session->generation == atomic_load_explicit(&hsm->generation, memory_order_relaxed))
			hsm->f->C_CloseSession(session->handle);
		pthread_rwlock_unlock(&hsm->lock);
	}
	free(session);
}

int hsm_session_check(struct hsm_session *session)
{
	struct hsm *hsm = session->hsm;
	const char *reason;
	CK_SESSION_INFO info;
	CK_RV rv;
	int r;

	r = hsm_session_begin(session, NULL);
	reason = hsm_failure(hsm);
	if (r == 0) {
		rv = hsm->f->C_GetSessionInfo(session->handle, &info);
		hsm_session_end(session);
		if (rv != CKR_OK) {
			r = hsm_fail_rv(hsm, rv);
			reason = hsm_ckr_name(rv);
		}
	}
	/* /health asks on every request, without authentication: a log line
	 * per call while the token is down would be a flood anyone can cause.
	 * Log the changes of state only, and below the one warning that
	 * marking the token failed gives. */
	if (r < 0) {
		if (!session->failing)
			log_info("\"token session check failed\" token=%s reason=%s", hsm->token_label, reason);
		session->failing = 1;
		return r;
	}
	if (session->failing)
		log_info("\"token session check works again\" token=%s", hsm->token_label);
	session->failing = 0;
	return 0;
}

/* The length of key's signatures; 0 when unknown. */
static size_t hsm_sig_size(const struct hsm_key *key)
{
	switch (key->alg) {
	case JWS_ALG_ES256:
	case JWS_ALG_EDDSA:
		return 64;
	case JWS_ALG_ES384:
		return 96;
	case JWS_ALG_HS256:
		return 32;
	default:
		return key->public_key ? (size_t)EVP_PKEY_get_size(key->public_key) : 0;
	}
}

int hsm_sign(struct hsm_session *session, const struct hsm_key *key,
	     const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	struct hsm *hsm = session->hsm;
	CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned digest_len = 0;
	const uint8_t *input = data;
	CK_ULONG input_len = data_len;
	CK_ULONG out_len = *sig_len;
	struct timespec t0, t1;
	CK_RV rv;
	int r;

	switch (key->alg) {
	case JWS_ALG_ES256:
	case JWS_ALG_ES384:
		/* No combined ECDSA-SHA mechanism is common to tokens: hash here,
		 * sign the digest inside. */
		if (!EVP_Digest(data, data_len, digest, &digest_len,
				key->alg == JWS_ALG_ES256 ? EVP_sha256() : EVP_sha384(), NULL))
			return HSM_E_FAILED;
		input = digest;
		input_len = digest_len;
		break;
	case JWS_ALG_RS256:
		mech.mechanism = CKM_SHA256_RSA_PKCS;
		break;
	case JWS_ALG_PS256:
		mech.mechanism = CKM_SHA256_RSA_PKCS_PSS;
		mech.pParameter = &pss;
		mech.ulParameterLen = sizeof(pss);
		break;
	case JWS_ALG_EDDSA:
		mech.mechanism = CKM_EDDSA;
		break;
	case JWS_ALG_HS256:
		mech.mechanism = CKM_SHA256_HMAC;
		break;
	default:
		return -EINVAL;
	}
	/* A C_Sign refused for a short buffer leaves the operation active
	 * (SoftHSM, as PKCS#11 says): every later C_SignInit on this session
	 * would fail with CKR_OPERATION_ACTIVE. */
	if (*sig_len < hsm_sig_size(key)) {
		log_error("\"signature buffer too small\" kid=%s alg=%s size=%zu need=%zu", key->kid,
			  jws_alg_name(key->alg), *sig_len, hsm_sig_size(key));
		return -ENOSPC;
	}
	r = hsm_session_begin(session, key);
	if (r < 0)
		return r;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rv = hsm->f->C_SignInit(session->handle, &mech, key->private_handle);
	if (rv == CKR_OK)
		rv = hsm->f->C_Sign(session->handle, (CK_BYTE *)input, input_len, sig, &out_len);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	metrics_hsm_sign_ns((uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec)));
	metrics_hsm_operation(METRICS_HSM_SIGN, rv == CKR_OK);
	if (rv != CKR_OK) {
		log_error("\"sign failed\" kid=%s alg=%s rv=%s", key->kid, jws_alg_name(key->alg), hsm_ckr_name(rv));
		/* Before the end of the operation: it may probe the token. */
		r = hsm_fail_key_rv(hsm, rv);
	}
	hsm_session_end(session);
	if (r < 0)
		return r;
	*sig_len = out_len;
	return 0;
}

int hsm_verify(struct hsm_session *session, const struct hsm_key *key,
	       const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len)
{
	struct hsm *hsm = session->hsm;
	CK_MECHANISM mech = { CKM_SHA256_HMAC, NULL, 0 };
	CK_RV rv;
	int r;

	if (key->alg != JWS_ALG_HS256)
		return -EINVAL;
	r = hsm_session_begin(session, key);
	if (r < 0)
		return r;
	rv = hsm->f->C_VerifyInit(session->handle, &mech, key->private_handle);
	if (rv == CKR_OK)
		rv = hsm->f->C_Verify(session->handle, (CK_BYTE *)data, data_len, (CK_BYTE *)sig, sig_len);
	/* A bad MAC is the token's verdict on the input, not a failure. */
	metrics_hsm_operation(METRICS_HSM_VERIFY,
			      rv == CKR_OK || rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE);
	if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE) {
		r = -EBADMSG;
	} else if (rv != CKR_OK) {
		log_error("\"verify failed\" kid=%s alg=%s rv=%s", key->kid, jws_alg_name(key->alg), hsm_ckr_name(rv));
		/* Before the end of the operation: it may probe the token. */
		r = hsm_fail_key_rv(hsm, rv);
	}
	hsm_session_end(session);
	return r;
}
