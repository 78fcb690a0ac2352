/* keyring_internal.h: the keyring's hook for tests.  Not part of the
 * module's contract: include/hsmjwt/keyring.h is. */
#ifndef HSMJWT_KEYRING_INTERNAL_H
#define HSMJWT_KEYRING_INTERNAL_H

#include "hsmjwt/keyring.h"

/* For tests: how many KEYRING_POLL_MS polls (sync the token, load the set,
 * swap it in when it differs) have completed.  A poll counted here has
 * swapped its set in before the count is raised, so a change made before
 * two further polls complete is in keyring_acquire's set by then: SPEC
 * §6's "within 5 s" as a count, not a time. */
unsigned long keyring_internal_polls(struct keyring *keyring);

#endif
