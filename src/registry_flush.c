/* The registry's durability path: the queue of encoded frames that changes
 * append to, the flusher thread that writes them to registry.log and
 * fdatasyncs per the policy before it answers their waiters, and the file
 * helpers the load and the compaction use too.  Separate from registry.c
 * because it is the one place a change waits for the disk. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hsmjwt/log.h"
#include "registry_internal.h"

/* A flushed batch buffer larger than this is given back, not kept. */
#define REGISTRY_QUEUE_KEEP ((size_t)4 << 20)

int64_t registry_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int registry_write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int registry_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* The first write or fsync failure of an episode, logged once: until
 * registry_recover succeeds nothing more is accepted or acknowledged. */
void registry_fail(struct registry *reg, const char *what, int err)
{
	int ok = REGISTRY_OK;

	/* Set before the failure shows, so that the flusher's first retry
	 * waits REGISTRY_RETRY_MS like the others rather than tearing the
	 * file again at once. */
	if (atomic_load(&reg->failed) == REGISTRY_OK)
		atomic_store(&reg->last_retry_ns, registry_mono_ns());
	if (atomic_compare_exchange_strong(&reg->failed, &ok, REGISTRY_FAILED_IO)) {
		char q[PATH_MAX + 8];

		log_error("\"registry %s failed: changes are refused until the disk takes writes again\" path=%s error=\"%s\"",
			  what, log_quote(q, sizeof(q), reg->path), strerror(err));
	}
}

/* The index now holds a change no frame will ever carry: the file can no
 * longer be brought to match it, so nothing is accepted again. */
void registry_fail_for_good(struct registry *reg, const char *what, int err)
{
	if (atomic_exchange(&reg->failed, REGISTRY_FAILED_FOR_GOOD) != REGISTRY_FAILED_FOR_GOOD) {
		char q[PATH_MAX + 8];

		log_error("\"registry %s failed: no further changes are accepted\" path=%s error=\"%s\"", what,
			  log_quote(q, sizeof(q), reg->path), strerror(err));
	}
}

/* Under io, fsync=interval: an fdatasync failed with batches written since
 * the last one that succeeded.  Linux reports a writeback error once per
 * open file and marks the pages clean, so a second fdatasync returns 0
 * while those bytes may never reach the disk, and frames appended after
 * them would sit behind a hole: a corrupt middle after a crash.  They are
 * no longer in memory to be written again (fsync=always keeps its failed
 * batch), so the registry fails for good. */
static void registry_fail_unsynced(struct registry *reg, int err)
{
	if (atomic_exchange(&reg->failed, REGISTRY_FAILED_FOR_GOOD) != REGISTRY_FAILED_FOR_GOOD) {
		char q[PATH_MAX + 8];

		log_error("\"registry fdatasync failed under fsync=interval: the changes written since the last good fdatasync may be lost, so no further changes are accepted; restart hsmjwtd, then run hsmjwtctl registry check\" path=%s error=\"%s\"",
			  log_quote(q, sizeof(q), reg->path), strerror(err));
	}
}

/* ---- the queue ---------------------------------------------------------- */

/* Under qmutex: room for bytes more and one more waiter. */
int registry_queue_reserve(struct registry_queue *q, size_t bytes)
{
	if (q->cap - q->len < bytes) {
		size_t cap = q->cap ? q->cap : 65536;
		uint8_t *buf;

		while (cap - q->len < bytes)
			cap *= 2;
		buf = realloc(q->buf, cap);
		if (buf == NULL)
			return -ENOMEM;
		q->buf = buf;
		q->cap = cap;
	}
	if (q->nwaiters == q->wcap) {
		size_t wcap = q->wcap ? q->wcap * 2 : 64;
		struct registry_waiter *w = realloc(q->waiters, wcap * sizeof(*w));

		if (w == NULL)
			return -ENOMEM;
		q->waiters = w;
		q->wcap = wcap;
	}
	return 0;
}

/* Under qmutex, with room reserved. */
int registry_queue_entry(struct registry_queue *q, const struct registry_entry *e)
{
	size_t len;
	int r = registry_encode(e, q->buf + q->len, q->cap - q->len, &len);

	if (r < 0)
		return r;
	q->len += len;
	q->frames++;
	return 0;
}

void registry_queue_waiter(struct registry_queue *q, registry_done_fn done, void *arg)
{
	if (done)
		q->waiters[q->nwaiters++] = (struct registry_waiter){ done, arg };
}

void registry_queue_release(struct registry_queue *q)
{
	free(q->buf);
	free(q->waiters);
	memset(q, 0, sizeof(*q));
}

void registry_queue_answer(struct registry_queue *q, int result)
{
	for (size_t i = 0; i < q->nwaiters; i++)
		q->waiters[i].done(q->waiters[i].arg, result);
	q->nwaiters = 0;
	q->len = 0;
	q->frames = 0;
	if (q->cap > REGISTRY_QUEUE_KEEP) {
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

/* Under io: takes everything queued into batch (empty on entry). */
void registry_queue_take(struct registry *reg, struct registry_queue *batch)
{
	struct registry_queue tmp;

	pthread_mutex_lock(&reg->qmutex);
	tmp = reg->queue;
	reg->queue = *batch;
	*batch = tmp;
	pthread_mutex_unlock(&reg->qmutex);
}

/* Under io: the interval policy's fdatasync of what was written. */
int registry_sync(struct registry *reg)
{
	if (fdatasync(reg->fd) < 0) {
		registry_fail_unsynced(reg, errno);
		return -EIO;
	}
	reg->dirty = 0;
	reg->last_sync_ns = registry_mono_ns();
	return 0;
}

/* Under io: a batch the file did not take.  Its changes are in the index,
 * so its frames are kept to be written first when the disk comes back;
 * without the memory to keep them the file could never match the index. */
static void registry_retry_keep(struct registry *reg, const struct registry_queue *batch)
{
	struct registry_queue *q = &reg->retry;

	/* Nothing will be written again: keeping would only grow. */
	if (batch->len == 0 || atomic_load(&reg->failed) == REGISTRY_FAILED_FOR_GOOD)
		return;
	if (q->cap - q->len < batch->len) {
		size_t cap = q->len + batch->len;
		uint8_t *buf = realloc(q->buf, cap);

		if (buf == NULL) {
			registry_fail_for_good(reg, "keeping a failed batch", ENOMEM);
			return;
		}
		q->buf = buf;
		q->cap = cap;
	}
	memcpy(q->buf + q->len, batch->buf, batch->len);
	q->len += batch->len;
	q->frames += batch->frames;
}

/* Under io, after a failure: cuts off whatever a failed write left past
 * the last whole batch, writes the batches the file did not take and
 * fdatasyncs, fsyncs the directory of a compaction's rename.  0 when the
 * file holds again everything the index does: changes are accepted again. */
int registry_recover(struct registry *reg)
{
	char q[PATH_MAX + 8];
	int r = 0;

	if (atomic_load(&reg->failed) == REGISTRY_FAILED_FOR_GOOD)
		return -EIO;
	reg->last_retry_ns = registry_mono_ns();
	/* A write that stopped short would sit in the middle of the file,
	 * under the batches written after it: corruption, not a torn tail. */
	if (reg->torn && ftruncate(reg->fd, (off_t)reg->good_bytes) < 0)
		return -errno;
	reg->torn = 0;
	if (reg->dir_unsynced && (r = registry_fsync_dir(reg->dir)) < 0)
		return r;
	reg->dir_unsynced = 0;
	if (reg->retry.len > 0) {
		r = registry_write_all(reg->fd, reg->retry.buf, reg->retry.len);
		if (r < 0) {
			reg->torn = 1;
			return r;
		}
	}
	/* Also covers, under the interval policy, the batches written before
	 * the failure and not yet fdatasynced (dirty). */
	if (fdatasync(reg->fd) < 0) {
		r = errno;
		if (reg->fsync == REGISTRY_FSYNC_INTERVAL && reg->dirty) {
			/* Those are not in memory to be written again. */
			registry_fail_unsynced(reg, r);
			return -EIO;
		}
		reg->torn = reg->retry.len > 0;
		return -r;
	}
	reg->good_bytes += reg->retry.len;
	atomic_fetch_add(&reg->frames, reg->retry.frames);
	atomic_store(&reg->file_bytes, reg->good_bytes);
	reg->dirty = 0;
	reg->last_sync_ns = registry_mono_ns();
	log_warn("\"registry takes writes again\" path=%s rewritten_frames=%llu rewritten_bytes=%zu",
		 log_quote(q, sizeof(q), reg->path), (unsigned long long)reg->retry.frames, reg->retry.len);
	reg->retry.len = 0;
	reg->retry.frames = 0;
	if (reg->retry.cap > REGISTRY_QUEUE_KEEP) {
		free(reg->retry.buf);
		reg->retry.buf = NULL;
		reg->retry.cap = 0;
	}
	atomic_store(&reg->failed, REGISTRY_OK);
	return 0;
}

/* Under io: appends a taken batch to the file and makes it durable per the
 * policy; the result for its waiters.  A batch the file does not take is
 * kept for registry_recover: either its every frame is in the file in the
 * end, or none is (a torn write is cut off first). */
int registry_write_batch(struct registry *reg, const struct registry_queue *batch)
{
	int r;

	if (atomic_load(&reg->failed) != REGISTRY_OK && registry_recover(reg) < 0) {
		registry_retry_keep(reg, batch);
		return -EIO;
	}
	if (batch->len == 0)
		return 0;   /* only no-ops: what they rely on was acknowledged before them */
	r = registry_write_all(reg->fd, batch->buf, batch->len);
	if (r < 0) {
		reg->torn = 1;
		registry_retry_keep(reg, batch);
		registry_fail(reg, "write", -r);
		return -EIO;
	}
	if (reg->fsync == REGISTRY_FSYNC_ALWAYS && fdatasync(reg->fd) < 0) {
		/* Whether those pages reach the disk now is unknown: written
		 * again from memory, after the cut, they are. */
		r = errno;
		reg->torn = 1;
		registry_retry_keep(reg, batch);
		registry_fail(reg, "fdatasync", r);
		return -EIO;
	}
	reg->good_bytes += batch->len;
	atomic_fetch_add(&reg->frames, batch->frames);
	atomic_fetch_add(&reg->file_bytes, batch->len);
	if (reg->fsync == REGISTRY_FSYNC_ALWAYS) {
		reg->dirty = 0;
		reg->last_sync_ns = registry_mono_ns();
		return 0;
	}
	reg->dirty = 1;
	if (registry_mono_ns() - reg->last_sync_ns >= (int64_t)REGISTRY_INTERVAL_MS * 1000000)
		return registry_sync(reg);
	return 0;
}

static void registry_flush_once(struct registry *reg, struct registry_queue *batch)
{
	int r;

	pthread_mutex_lock(&reg->io);
	registry_queue_take(reg, batch);
	r = registry_write_batch(reg, batch);
	pthread_mutex_unlock(&reg->io);
	registry_queue_answer(batch, r);
}

static void registry_sync_if_due(struct registry *reg, int force)
{
	pthread_mutex_lock(&reg->io);
	if (reg->dirty && atomic_load(&reg->failed) == REGISTRY_OK && (force || !atomic_load(&reg->timers_paused)) &&
	    (force || registry_mono_ns() - reg->last_sync_ns >= (int64_t)REGISTRY_INTERVAL_MS * 1000000))
		registry_sync(reg);
	pthread_mutex_unlock(&reg->io);
}

/* Under qmutex: when the flusher must wake with nothing queued — the
 * interval fdatasync, a retry of a failed disk, the compaction check. */
static int64_t registry_next_wake(struct registry *reg)
{
	int64_t deadline = registry_mono_ns() + REGISTRY_COMPACT_CHECK_NS;

	if (atomic_load(&reg->timers_paused))
		return deadline;
	if (reg->dirty && reg->last_sync_ns + (int64_t)REGISTRY_INTERVAL_MS * 1000000 < deadline)
		deadline = reg->last_sync_ns + (int64_t)REGISTRY_INTERVAL_MS * 1000000;
	if (atomic_load(&reg->failed) == REGISTRY_FAILED_IO &&
	    reg->last_retry_ns + (int64_t)REGISTRY_RETRY_MS * 1000000 < deadline)
		deadline = reg->last_retry_ns + (int64_t)REGISTRY_RETRY_MS * 1000000;
	return deadline;
}

static void registry_retry_if_due(struct registry *reg, int force)
{
	pthread_mutex_lock(&reg->io);
	if (atomic_load(&reg->failed) == REGISTRY_FAILED_IO && (force || !atomic_load(&reg->timers_paused)) &&
	    (force || registry_mono_ns() - reg->last_retry_ns >= (int64_t)REGISTRY_RETRY_MS * 1000000))
		registry_recover(reg);
	pthread_mutex_unlock(&reg->io);
}

void *registry_flusher(void *arg)
{
	struct registry *reg = arg;
	struct registry_queue batch = { 0 };

	pthread_mutex_lock(&reg->qmutex);
	for (;;) {
		if (reg->queue.len == 0 && reg->queue.nwaiters == 0) {
			struct timespec ts;
			int64_t deadline;

			if (reg->stopping)
				break;
			deadline = registry_next_wake(reg);
			ts.tv_sec = deadline / 1000000000;
			ts.tv_nsec = deadline % 1000000000;
			if (pthread_cond_timedwait(&reg->qwork, &reg->qmutex, &ts) == ETIMEDOUT) {
				pthread_mutex_unlock(&reg->qmutex);
				registry_retry_if_due(reg, 0);
				registry_sync_if_due(reg, 0);
				registry_maybe_compact(reg, time(NULL), atomic_load(&reg->compact_min), 0, NULL);
				pthread_mutex_lock(&reg->qmutex);
			}
			continue;
		}
		pthread_mutex_unlock(&reg->qmutex);
		registry_flush_once(reg, &batch);
		registry_maybe_compact(reg, time(NULL), atomic_load(&reg->compact_min), 0, NULL);
		pthread_mutex_lock(&reg->qmutex);
	}
	pthread_mutex_unlock(&reg->qmutex);
	/* Last chance for changes answered 503 to become durable anyway. */
	registry_retry_if_due(reg, 1);
	registry_sync_if_due(reg, 1);
	pthread_mutex_lock(&reg->io);
	if (reg->retry.len > 0) {
		char q[PATH_MAX + 8];

		log_warn("\"registry closed with changes the disk never took (each was answered as failed)\" path=%s frames=%llu",
			 log_quote(q, sizeof(q), reg->path), (unsigned long long)reg->retry.frames);
	}
	pthread_mutex_unlock(&reg->io);
	registry_queue_release(&batch);
	return NULL;
}
