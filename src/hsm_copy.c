/* hsm_copy.c: signing keys copied into each worker's session.  SoftHSM
 * opens, locks and reads a token object's file on every C_SignInit; a
 * session object it keeps in memory.  A session's table is keyed by kid and
 * token handle together: a handle may be reused for another key after a
 * destruction, a kid names one key's material.  Copies are destroyed in two
 * places only: by their own session when evicted or failing, and all at
 * once by hsm_copy_invalidate under the exclusive lock. */
#include <string.h>

#include "hsm_internal.h"
#include "hsmjwt/log.h"

/* Session objects a process may hold: 8 per session for more sessions than
 * the daemon opens (one per worker, plus the keyring's and the renewal's). */
#define HSM_COPY_FIND_MAX 4096

static void hsm_copy_destroy_slot(struct hsm_session *session, struct hsm_session_copy *copy)
{
	if (copy->kid[0] != '\0' && copy->handle != CK_INVALID_HANDLE)
		session->hsm->f->C_DestroyObject(session->handle, copy->handle);
	memset(copy, 0, sizeof(*copy));
}

static struct hsm_session_copy *hsm_copy_find(struct hsm_session *session, const struct hsm_key *key)
{
	for (size_t i = 0; i < HSM_SESSION_COPIES; i++) {
		struct hsm_session_copy *copy = &session->copies[i];

		if (copy->kid[0] != '\0' && copy->original == key->private_handle && strcmp(copy->kid, key->kid) == 0)
			return copy;
	}
	return NULL;
}

CK_OBJECT_HANDLE hsm_copy_handle(struct hsm_session *session, const struct hsm_key *key)
{
	struct hsm *hsm = session->hsm;
	unsigned epoch = atomic_load_explicit(&hsm->copies_epoch, memory_order_acquire);
	struct hsm_session_copy *copy, *slot = &session->copies[0];
	CK_BBOOL in_session = CK_FALSE;
	CK_ATTRIBUTE session_object = { CKA_TOKEN, &in_session, sizeof(in_session) };
	CK_OBJECT_HANDLE made = CK_INVALID_HANDLE;
	CK_RV rv;

	/* A new session (after a recovery), or copies hsm_copy_invalidate has
	 * destroyed: the table is forgotten, never destroyed — its handles may
	 * now be other objects. */
	if (session->copies_generation != session->generation || session->copies_epoch != epoch) {
		memset(session->copies, 0, sizeof(session->copies));
		session->copies_generation = session->generation;
		session->copies_epoch = epoch;
	}
	copy = hsm_copy_find(session, key);
	if (copy == NULL) {
		for (size_t i = 1; i < HSM_SESSION_COPIES && slot->kid[0] != '\0'; i++)
			if (session->copies[i].kid[0] == '\0' || session->copies[i].used < slot->used)
				slot = &session->copies[i];
		hsm_copy_destroy_slot(session, slot);
		rv = hsm->f->C_CopyObject(session->handle, key->private_handle, &session_object, 1, &made);
		if (rv != CKR_OK) {
			/* Remembered in the slot: asked once per session, not per
			 * signature.  CKA_COPYABLE false, or a module without
			 * C_CopyObject (several cloud HSMs). */
			log_info("\"key not copied into the session: signing with the token object\" kid=%s rv=%s",
				 key->kid, hsm_ckr_name(rv));
			made = CK_INVALID_HANDLE;
		}
		memcpy(slot->kid, key->kid, sizeof(slot->kid));
		slot->original = key->private_handle;
		slot->handle = made;
		copy = slot;
	}
	copy->used = ++session->copies_used;
	return copy->handle != CK_INVALID_HANDLE ? copy->handle : key->private_handle;
}

void hsm_copy_forget(struct hsm_session *session, const struct hsm_key *key)
{
	struct hsm_session_copy *copy = hsm_copy_find(session, key);

	if (copy != NULL)
		hsm_copy_destroy_slot(session, copy);
}

/* Every session object of this process that carries an hsmjwt key label:
 * the copies, whichever session made them (a session object is visible to
 * all the application's sessions). */
static void hsm_copy_destroy_all(struct hsm *hsm)
{
	CK_BBOOL in_session = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = { { CKA_TOKEN, &in_session, sizeof(in_session) } };
	CK_OBJECT_HANDLE found[HSM_COPY_FIND_MAX];
	CK_ULONG count = 0;
	CK_SESSION_HANDLE s;
	size_t destroyed = 0;
	CK_RV rv;

	rv = hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		/* The token is going: its recovery re-initialises the module,
		 * which ends every session and its objects. */
		log_warn("\"cannot open a session to destroy the key copies\" rv=%s", hsm_ckr_name(rv));
		return;
	}
	rv = hsm->f->C_FindObjectsInit(s, tmpl, 1);
	if (rv == CKR_OK) {
		rv = hsm->f->C_FindObjects(s, found, HSM_COPY_FIND_MAX, &count);
		hsm->f->C_FindObjectsFinal(s);
	}
	for (CK_ULONG i = 0; rv == CKR_OK && i < count; i++) {
		char label[HSM_LABEL_MAX] = "";
		CK_ATTRIBUTE attr = { CKA_LABEL, label, sizeof(label) - 1 };

		if (hsm->f->C_GetAttributeValue(s, found[i], &attr, 1) != CKR_OK ||
		    strncmp(label, HSM_LABEL_PREFIX, strlen(HSM_LABEL_PREFIX)) != 0)
			continue;
		if (hsm->f->C_DestroyObject(s, found[i]) == CKR_OK)
			destroyed++;
	}
	if (rv != CKR_OK)
		log_warn("\"cannot list the key copies\" rv=%s", hsm_ckr_name(rv));
	hsm->f->C_CloseSession(s);
	log_debug("\"key copies destroyed\" count=%zu", destroyed);
}

void hsm_copy_invalidate(struct hsm *hsm)
{
	/* Exclusive: no session is inside the module, so none is signing with
	 * a copy this destroys, and none makes one before the epoch moves. */
	pthread_rwlock_wrlock(&hsm->lock);
	if (atomic_load_explicit(&hsm->available, memory_order_acquire))
		hsm_copy_destroy_all(hsm);
	atomic_fetch_add_explicit(&hsm->copies_epoch, 1, memory_order_release);
	pthread_rwlock_unlock(&hsm->lock);
}
