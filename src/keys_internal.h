/* keys_internal.h: what keys.c (the set) and keys_lifecycle.c (operations
 * on the token) share.  include/hsmjwt/keys.h is the module's contract. */
#ifndef HSMJWT_KEYS_INTERNAL_H
#define HSMJWT_KEYS_INTERNAL_H

#include "hsmjwt/keys.h"

/* keys_load, also handing out the plan it made: (*ret_planned)[i] (free())
 * describes keys->entries[i]; either output may be NULL. */
int keys_load_plan(struct hsm *hsm, const struct config *cfg, int64_t now, struct keys **ret_keys,
		   struct keystate_key **ret_planned, struct keystate_plan *ret_plan);

#endif
