/* clock: the monotonic clock the threads' timed waits use, so that a wall
 * clock step (NTP, an operator) neither fires nor delays them. */
#ifndef HSMJWT_CLOCK_H
#define HSMJWT_CLOCK_H

#include <pthread.h>
#include <time.h>

/* CLOCK_MONOTONIC's now plus ms: a deadline for pthread_cond_timedwait on
 * a condition from clock_cond_init, or for pthread_*_clock*lock. */
struct timespec clock_deadline(unsigned ms);

/* Initialises a condition whose timed waits count on CLOCK_MONOTONIC.
 * 0 or -errno. */
int clock_cond_init(pthread_cond_t *cond);

#endif
