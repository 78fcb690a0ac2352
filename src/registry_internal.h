/* registry_internal: hooks into registry.c for its unit tests only; the
 * daemon and the CLI use registry.h. */
#ifndef HSMJWT_REGISTRY_INTERNAL_H
#define HSMJWT_REGISTRY_INTERNAL_H

#include <stdint.h>

#include "hsmjwt/registry.h"

/* The descriptor of registry.log, so that a test can dup2 a failing file
 * (/dev/full) over it and see the write path fail. */
int registry_internal_fd(struct registry *reg);

/* The frame count above which the background compaction may run
 * (REGISTRY_COMPACT_MIN_FRAMES unless changed), so that a test need not
 * write a hundred thousand frames. */
void registry_internal_set_compact_min(struct registry *reg, uint64_t frames);

/* The flusher's background-compaction decision, run now on the caller's
 * thread with min_frames in place of the flusher's threshold: compacts at
 * now when the file is worth it.  *ret_compacted: 1 when it did. */
int registry_internal_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int *ret_compacted);

#endif
