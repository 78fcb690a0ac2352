/* Compaction: the kept records serialised to registry.log.new, fsynced,
 * renamed over registry.log and the state_dir fsynced, then the expired
 * records pruned from the index; and the flusher's decision to compact.
 * Separate from registry.c because it is the one operation that rewrites
 * the file and swaps the index under the writers' gate. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hsmjwt/log.h"
#include "registry_internal.h"

#define REGISTRY_COMPACT_BUFFER ((size_t)1 << 20)

/* Whether a compacted file needs a STATUS frame after rec's TOKEN frame to
 * keep its status_at and reason. */
static int registry_needs_status_frame(const struct registry_rec *rec)
{
	return rec->status != REGISTRY_ACTIVE || rec->status_at != rec->iat || rec->reason != 0;
}

struct registry_writer {
	int fd;
	uint8_t *buf;
	size_t len;
	uint64_t frames, bytes;
};

static int registry_writer_put(struct registry_writer *w, const struct registry_entry *e)
{
	size_t n;
	int r;

	if (REGISTRY_COMPACT_BUFFER - w->len < REGISTRY_TOKEN_FRAME_MAX) {
		r = registry_write_all(w->fd, w->buf, w->len);
		if (r < 0)
			return r;
		w->len = 0;
	}
	r = registry_encode(e, w->buf + w->len, REGISTRY_COMPACT_BUFFER - w->len, &n);
	if (r < 0)
		return r;
	w->len += n;
	w->bytes += n;
	w->frames++;
	return 0;
}

static void registry_rec_entry(const struct registry_index *ix, const struct registry_rec *rec,
			       struct registry_entry *e)
{
	e->kind = REGISTRY_KIND_TOKEN;
	e->seq = rec->seq;
	e->status = (enum registry_status)rec->status;
	e->at = rec->iat;
	e->type = (enum registry_type)rec->type;
	registry_rec_strings(ix, rec, e->jti, e->org, e->subject, e->name, e->description, e->client_id,
			     e->kid, e->parent, e->family);
	e->exp = rec->exp;
	e->status_idx = rec->status_idx;
}

/* Under the read lock: writes the kept records to new_path, the TOKEN
 * frames with their seqs (the list cursor), then the STATUS frames that
 * carry status_at and reason and a META frame, with fresh seqs.  *ret_seq:
 * the next seq after them. */
static int registry_write_compacted(struct registry *reg, int64_t now, int fd, uint64_t *ret_seq,
				    struct registry_writer *w, uint64_t *ret_dropped)
{
	const struct registry_index *ix = &reg->index;
	struct registry_entry e;
	uint64_t seq = reg->next_seq, dropped = 0;
	int r;

	memset(&e, 0, sizeof(e));
	memcpy(w->buf, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	w->len = w->bytes = REGISTRY_MAGIC_LEN;
	w->fd = fd;
	for (uint32_t i = 0; i < ix->all.count; i++) {
		const struct registry_rec *rec = ix->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now)) {
			dropped++;
			continue;
		}
		registry_rec_entry(ix, rec, &e);
		if ((r = registry_writer_put(w, &e)) < 0)
			return r;
	}
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_STATUS;
	for (uint32_t i = 0; i < ix->all.count; i++) {
		const struct registry_rec *rec = ix->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now) || !registry_needs_status_frame(rec))
			continue;
		e.seq = seq++;
		snprintf(e.jti, sizeof(e.jti), "%s", registry_rec_jti(rec));
		e.status = (enum registry_status)rec->status;
		e.at = rec->status_at;
		snprintf(e.reason, sizeof(e.reason), "%s", registry_ix_string(ix, rec->reason));
		if ((r = registry_writer_put(w, &e)) < 0)
			return r;
	}
	/* Last, not first: a kept record may hold seq 1, and seqs only grow. */
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_META;
	e.seq = seq++;
	e.next_status_idx = (uint32_t)atomic_load(&reg->next_status_idx);
	if ((r = registry_writer_put(w, &e)) < 0)
		return r;
	r = registry_write_all(fd, w->buf, w->len);
	if (r < 0)
		return r;
	w->len = 0;
	*ret_seq = seq;
	*ret_dropped = dropped;
	return 0;
}

/* Dropping expired records from the index after a compaction, in three
 * steps so that readers wait only for pointer swaps: prepare (under the read
 * lock, writers held at the gate) builds the index of the records kept,
 * which stay where they are, and new slots for the strings still used;
 * commit (under the write lock) swaps them in and gives back the strings
 * and the status-list blocks nothing kept uses (those entries read as 0
 * from now on: a new generation); finish (no lock) frees the old index and
 * the slabs the dropped records emptied.  Interned ids do not move, so no
 * record is rewritten. */
struct registry_prune {
	struct registry_index nx;
	struct registry_slot *slots;
	uint8_t *id_used;
	uint8_t *list_used;
};

static void registry_prune_free(struct registry_prune *p)
{
	registry_index_free(&p->nx);
	free(p->slots);
	free(p->id_used);
	free(p->list_used);
	memset(p, 0, sizeof(*p));
}

static int registry_prune_prepare(struct registry *reg, int64_t now, struct registry_prune *p)
{
	struct registry_index *old = &reg->index;
	struct registry_intern *t = &old->strings;
	uint32_t unused = 0;

	memset(p, 0, sizeof(*p));
	if (registry_index_init(&p->nx, &old->key) < 0 || registry_table_reserve(&p->nx, old->all.count) < 0 ||
	    registry_vec_reserve(&p->nx.all, old->all.count) < 0 ||
	    (p->id_used = calloc(t->count, 1)) == NULL ||
	    (reg->nlists > 0 && (p->list_used = calloc(reg->nlists, 1)) == NULL) ||
	    (p->slots = calloc((size_t)t->mask + 1, sizeof(*p->slots))) == NULL)
		goto fail;
	p->id_used[0] = 1;
	for (uint32_t i = 0; i < old->all.count; i++) {
		struct registry_rec *rec = old->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now))
			continue;
		p->id_used[rec->org] = p->id_used[rec->client_id] = p->id_used[rec->kid] = p->id_used[rec->reason] = 1;
		if (registry_index_link(&p->nx, rec) < 0)
			goto fail;
		if (rec->status_idx != REGISTRY_NO_INDEX && rec->status_idx / REGISTRY_STATUSLIST_SIZE < reg->nlists)
			p->list_used[rec->status_idx / REGISTRY_STATUSLIST_SIZE] = 1;
	}
	for (uint32_t id = 1; id < t->count; id++)
		unused += !p->id_used[id] && t->strings[id] != NULL;
	if (t->nfree + unused > t->free_alloc) {
		uint32_t *ids = realloc(t->free_ids, (size_t)(t->nfree + unused) * sizeof(*ids));

		if (ids == NULL)
			goto fail;
		t->free_ids = ids;
		t->free_alloc = t->nfree + unused;
	}
	for (uint32_t k = 0; k <= t->mask; k++)
		if (t->slots[k].id != 0 && p->id_used[t->slots[k].id - 1])
			registry_slots_put(p->slots, t->mask, t->slots[k].id - 1, t->slots[k].hash);
	/* Nothing fails from here on: the dropped records leave their slabs. */
	for (uint32_t i = 0; i < old->all.count; i++)
		if (registry_expired_for_good(reg, old->all.items[i]->exp, now))
			registry_arena_release(old->all.items[i]);
	return 0;
fail:
	registry_prune_free(p);
	return -ENOMEM;
}

static void registry_prune_commit(struct registry *reg, struct registry_prune *p)
{
	struct registry_index *ix = &reg->index, old = *ix;
	struct registry_intern *t = &old.strings, fresh = p->nx.strings;

	free(t->slots);
	t->slots = p->slots;
	p->slots = NULL;
	for (uint32_t id = 1; id < t->count; id++)
		if (!p->id_used[id] && t->strings[id] != NULL) {
			free(t->strings[id]);
			t->strings[id] = NULL;
			t->free_ids[t->nfree++] = id;
		}
	*ix = p->nx;
	ix->strings = *t;
	ix->arena = old.arena;
	/* The old structures, to be freed by registry_prune_finish. */
	p->nx = old;
	p->nx.strings = fresh;
	p->nx.arena.head = NULL;
	for (uint32_t l = 0; l < reg->nlists; l++) {
		if (p->list_used[l] || reg->lists[l] == NULL)
			continue;
		for (size_t b = 0; b < REGISTRY_LIST_BYTES; b++)
			if (reg->lists[l][b] != 0) {
				reg->generations[l]++;
				break;
			}
		free(reg->lists[l]);
		reg->lists[l] = NULL;
	}
}

/* No lock: readers cannot reach what the commit unlinked, and writers are
 * held at the gate. */
static void registry_prune_finish(struct registry *reg, struct registry_prune *p)
{
	registry_prune_free(p);
	registry_arena_sweep(&reg->index.arena);
}

/* Under io. */
static int registry_compact_io(struct registry *reg, int64_t now, struct registry_queue *taken, int *ret_result)
{
	struct registry_writer w = { .fd = -1 };
	char q[PATH_MAX + 8];
	int64_t start = registry_mono_ns();
	uint64_t seq = 0, dropped = 0;
	struct registry_prune prune;
	int fd = -1, r, renamed = 0, pruned = -1;

	*ret_result = 0;
	pthread_mutex_lock(&reg->gate);
	if (atomic_load(&reg->failed)) {
		pthread_mutex_unlock(&reg->gate);
		return -EIO;
	}
	w.buf = malloc(REGISTRY_COMPACT_BUFFER);
	if (w.buf == NULL) {
		pthread_mutex_unlock(&reg->gate);
		return -ENOMEM;
	}
	pthread_rwlock_rdlock(&reg->lock);
	/* What is queued is in the index, so in the new file: its waiters are
	 * answered once that file is durable. */
	registry_queue_take(reg, taken);
	fd = open(reg->new_path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
		goto unlock;
	}
	r = registry_write_compacted(reg, now, fd, &seq, &w, &dropped);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(reg->new_path, reg->path) < 0)
		r = -errno;
	if (r == 0) {
		renamed = 1;
		close(reg->fd);
		reg->fd = fd;
		fd = -1;
		reg->next_seq = seq;
		atomic_store(&reg->frames, w.frames);
		atomic_store(&reg->file_bytes, w.bytes);
		reg->good_bytes = w.bytes;
		reg->torn = 0;
		reg->dirty = 0;
		reg->last_sync_ns = registry_mono_ns();
		r = registry_fsync_dir(reg->dir);
		if (r < 0) {
			/* The new file is in place; only its name may not be
			 * durable yet: registry_recover fsyncs the directory again. */
			reg->dir_unsynced = 1;
			registry_fail(reg, "fsync of the state_dir", -r);
		} else if (dropped > 0) {
			pruned = registry_prune_prepare(reg, now, &prune);
		}
	}
unlock:
	pthread_rwlock_unlock(&reg->lock);
	if (fd >= 0) {
		close(fd);
		unlink(reg->new_path);
	}
	if (r < 0 && !renamed) {
		log_error("\"registry compaction failed: the file is kept as it was\" path=%s error=\"%s\"",
			  log_quote(q, sizeof(q), reg->new_path), strerror(-r));
		/* The taken frames still belong at the end of the old file. */
		*ret_result = registry_write_batch(reg, taken);
	} else if (r < 0) {
		*ret_result = -EIO;
	} else if (pruned == 0) {
		pthread_rwlock_wrlock(&reg->lock);
		registry_prune_commit(reg, &prune);
		pthread_rwlock_unlock(&reg->lock);
		registry_prune_finish(reg, &prune);
	} else if (dropped > 0) {
		/* The file has them no more; memory keeps them until the next
		 * compaction. */
		log_warn("\"registry compaction could not free the dropped records\" path=%s",
			 log_quote(q, sizeof(q), reg->path));
	}
	pthread_mutex_unlock(&reg->gate);
	free(w.buf);
	if (r == 0)
		log_info("\"registry compacted\" path=%s dropped=%llu frames=%llu bytes=%llu ms=%lld",
			 log_quote(q, sizeof(q), reg->path), (unsigned long long)dropped,
			 (unsigned long long)w.frames, (unsigned long long)w.bytes,
			 (long long)((registry_mono_ns() - start) / 1000000));
	return r;
}

int registry_compact(struct registry *reg, int64_t now, struct registry_stats *ret_stats)
{
	struct registry_queue taken = { 0 };
	int r, result;

	if (reg == NULL)
		return -EINVAL;
	pthread_mutex_lock(&reg->io);
	r = registry_compact_io(reg, now, &taken, &result);
	pthread_mutex_unlock(&reg->io);
	registry_queue_answer(&taken, result);
	registry_queue_release(&taken);
	if (r == 0 && ret_stats)
		registry_get_stats(reg, ret_stats);
	return r;
}

/* Compacts when the file is over compact_min frames and more than half of
 * them are superseded or expired.  Counting the expired records walks the
 * index, so the flusher does it at most every REGISTRY_COMPACT_CHECK_NS. */
int registry_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int force_check,
			   int *ret_compacted)
{
	uint64_t frames = atomic_load(&reg->frames), live, expired = 0;
	int64_t mono = registry_mono_ns();
	int r;

	if (ret_compacted)
		*ret_compacted = 0;
	if (atomic_load(&reg->failed) || frames <= min_frames)
		return 0;
	pthread_rwlock_rdlock(&reg->lock);
	live = (uint64_t)reg->index.all.count + reg->index.nonactive_count + 1;
	if (live * 2 >= frames && (force_check || mono - reg->last_compact_check_ns >= REGISTRY_COMPACT_CHECK_NS)) {
		reg->last_compact_check_ns = mono;
		for (uint32_t i = 0; i < reg->index.all.count; i++)
			expired += registry_expired_for_good(reg, reg->index.all.items[i]->exp, now);
		live -= expired < live ? expired : live;
	}
	pthread_rwlock_unlock(&reg->lock);
	if (live * 2 >= frames)
		return 0;
	r = registry_compact(reg, now, NULL);
	if (r == 0 && ret_compacted)
		*ret_compacted = 1;
	return r;
}
