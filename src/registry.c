/* The registry: open and close, and the public API of
 * include/hsmjwt/registry.h, its locking, changes and reads.  The index is
 * registry_index.c, the queue and the flusher registry_flush.c, recovery at
 * open registry_load.c, compaction registry_compact.c; registry_internal.h
 * is what they share. */
#include "hsmjwt/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hsmjwt/clock.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"
#include "registry_internal.h"

/* Queued bytes beyond which writers wait for the flusher: a slow disk slows
 * the writers down instead of growing the queue without bound. */
#define REGISTRY_QUEUE_MAX ((size_t)64 << 20)

/* ---- open ----------------------------------------------------------------- */

static void registry_free(struct registry *reg)
{
	if (reg->fd >= 0)
		close(reg->fd);
	registry_index_free(&reg->index);
	for (uint32_t i = 0; i < reg->nlists; i++)
		free(reg->lists[i]);
	free(reg->lists);
	free(reg->generations);
	registry_queue_release(&reg->queue);
	registry_queue_release(&reg->retry);
	if (reg->locks >= 5) {
		pthread_cond_destroy(&reg->qwork);
		pthread_mutex_destroy(&reg->qmutex);
		pthread_rwlock_destroy(&reg->lock);
		pthread_mutex_destroy(&reg->gate);
		pthread_mutex_destroy(&reg->io);
	}
	free(reg);
}

static int registry_init_locks(struct registry *reg)
{
	pthread_rwlockattr_t rwa;

	/* Writers must not starve behind a stream of list calls. */
	if (pthread_rwlockattr_init(&rwa) != 0)
		return -ENOMEM;
	pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (pthread_mutex_init(&reg->io, NULL) != 0 || pthread_mutex_init(&reg->gate, NULL) != 0 ||
	    pthread_rwlock_init(&reg->lock, &rwa) != 0 || pthread_mutex_init(&reg->qmutex, NULL) != 0 ||
	    clock_cond_init(&reg->qwork) < 0) {
		pthread_rwlockattr_destroy(&rwa);
		return -ENOMEM;
	}
	pthread_rwlockattr_destroy(&rwa);
	reg->locks = 5;
	return 0;
}

int registry_open(const char *state_dir, enum registry_fsync fsync_policy, int64_t leeway,
		  struct registry **ret_registry)
{
	struct registry_hashkey key;
	struct registry *reg = NULL;
	int64_t start = registry_mono_ns();
	char q[PATH_MAX + 8];
	struct stat st;
	int r;

	if (state_dir == NULL || ret_registry == NULL || leeway < 0 ||
	    (fsync_policy != REGISTRY_FSYNC_ALWAYS && fsync_policy != REGISTRY_FSYNC_INTERVAL))
		return -EINVAL;
	reg = calloc(1, sizeof(*reg));
	if (reg == NULL)
		return -ENOMEM;
	reg->fd = -1;
	if ((size_t)snprintf(reg->dir, sizeof(reg->dir), "%s", state_dir) >= sizeof(reg->dir) ||
	    (size_t)snprintf(reg->path, sizeof(reg->path), "%s/%s", state_dir, REGISTRY_FILE) >= sizeof(reg->path) ||
	    (size_t)snprintf(reg->new_path, sizeof(reg->new_path), "%s/%s.new", state_dir, REGISTRY_FILE) >=
		    sizeof(reg->new_path)) {
		log_error("\"state_dir path too long\" state_dir=%s", log_quote(q, sizeof(q), state_dir));
		r = -ENAMETOOLONG;
		goto fail;
	}
	reg->fsync = fsync_policy;
	reg->leeway = leeway;
	reg->compact_min = REGISTRY_COMPACT_MIN_FRAMES;
	r = registry_init_locks(reg);
	if (r < 0) {
		log_error("\"cannot create the registry's locks\"");
		goto fail;
	}
	if (getrandom(&key, sizeof(key), 0) != (ssize_t)sizeof(key)) {
		r = -EIO;
		log_error("\"cannot seed the registry's hash\" error=\"%s\"", strerror(errno));
		goto fail;
	}
	r = registry_index_init(&reg->index, &key);
	if (r < 0) {
		log_error("\"cannot allocate the registry index\" error=\"%s\"", strerror(-r));
		goto fail;
	}
	/* A compaction that died before its rename left this behind. */
	if (unlink(reg->new_path) == 0)
		log_warn("\"removed an unfinished registry compaction\" path=%s",
			 log_quote(q, sizeof(q), reg->new_path));
	reg->fd = open(reg->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	r = reg->fd < 0 || fstat(reg->fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
	if (r < 0) {
		log_error("\"cannot open the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
			  r == -EINVAL ? "not a regular file" : strerror(-r));
		goto fail;
	}
	r = registry_load(reg, (size_t)st.st_size);
	if (r < 0)
		goto fail;
	r = registry_init_file(reg);
	if (r < 0)
		goto fail;
	reg->good_bytes = atomic_load(&reg->file_bytes);
	reg->last_sync_ns = reg->last_compact_check_ns = registry_mono_ns();
	r = -pthread_create(&reg->flusher, NULL, registry_flusher, reg);
	if (r < 0) {
		log_error("\"cannot start the registry flusher\" error=\"%s\"", strerror(-r));
		goto fail;
	}
	reg->flusher_running = 1;
	log_info("\"registry opened\" path=%s records=%llu frames=%llu bytes=%llu next_status_idx=%u ms=%lld",
		 log_quote(q, sizeof(q), reg->path), (unsigned long long)reg->index.all.count,
		 (unsigned long long)atomic_load(&reg->frames), (unsigned long long)atomic_load(&reg->file_bytes),
		 (unsigned)atomic_load(&reg->next_status_idx), (long long)((registry_mono_ns() - start) / 1000000));
	*ret_registry = reg;
	return 0;
fail:
	registry_free(reg);
	return r;
}

void registry_close(struct registry *reg)
{
	if (reg == NULL)
		return;
	if (reg->flusher_running) {
		pthread_mutex_lock(&reg->qmutex);
		reg->stopping = 1;
		pthread_cond_broadcast(&reg->qwork);
		pthread_mutex_unlock(&reg->qmutex);
		pthread_join(reg->flusher, NULL);
	}
	registry_free(reg);
}

int registry_reserve_index(struct registry *reg, uint32_t *ret_idx)
{
	uint_fast32_t v;

	if (reg == NULL || ret_idx == NULL)
		return -EINVAL;
	v = atomic_load(&reg->next_status_idx);
	do {
		/* REGISTRY_NO_INDEX (UINT32_MAX) is never an index. */
		if (v >= REGISTRY_NO_INDEX) {
			log_error("\"status list indices exhausted\" next_status_idx=%u", (unsigned)v);
			return -ENOSPC;
		}
	} while (!atomic_compare_exchange_weak(&reg->next_status_idx, &v, v + 1));
	*ret_idx = (uint32_t)v;
	return 0;
}

/* ---- changes -------------------------------------------------------------- */

/* Takes the gate and the write lock: -EIO (nothing held) while the registry
 * has failed (until the flusher finds the disk taking writes again), -EAGAIN
 * while the queue is over its limit.  Refusing rather
 * than waiting: the caller is an event loop that serves verifications and
 * health checks too, and a disk that far behind may never catch up. */
static int registry_write_begin(struct registry *reg)
{
	size_t queued;

	pthread_mutex_lock(&reg->qmutex);
	queued = reg->queue.len;
	pthread_mutex_unlock(&reg->qmutex);
	if (queued > REGISTRY_QUEUE_MAX) {
		log_limited(LOG_LEVEL_WARN, "\"registry queue full: refusing a change\" queued_bytes=%zu", queued);
		return -EAGAIN;
	}
	pthread_mutex_lock(&reg->gate);
	pthread_rwlock_wrlock(&reg->lock);
	if (atomic_load(&reg->failed)) {
		pthread_rwlock_unlock(&reg->lock);
		pthread_mutex_unlock(&reg->gate);
		return -EIO;
	}
	return 0;
}

static void registry_write_end(struct registry *reg)
{
	pthread_rwlock_unlock(&reg->lock);
	pthread_mutex_unlock(&reg->gate);
}

/* registry_write_begin for a new record: -EEXIST (nothing held) when the
 * jti is known, -ENOSPC when the index is full. */
static int registry_write_begin_new(struct registry *reg, const char *jti)
{
	int r = registry_write_begin(reg);

	if (r < 0)
		return r;
	if (registry_index_get(&reg->index, jti) != NULL)
		r = -EEXIST;
	else if (reg->index.all.count >= REGISTRY_MAX_RECORDS) {
		log_error("\"registry full\" records=%u", (unsigned)reg->index.all.count);
		r = -ENOSPC;
	}
	if (r < 0)
		registry_write_end(reg);
	return r;
}

static int registry_in_scope(const struct registry_index *ix, const struct registry_rec *rec, const char *org_scope)
{
	return org_scope == NULL || strcmp(registry_ix_string(ix, rec->org), org_scope) == 0;
}

/* A string field of a caller's struct: terminated within its array. */
static int registry_field_ok(const char *s, size_t size, int required)
{
	size_t n = strnlen(s, size);

	return n < size && (!required || n > 0);
}

static int registry_string_ok(const char *s, size_t max, int required)
{
	return s != NULL && registry_field_ok(s, max + 1, required);
}

int registry_expired_for_good(const struct registry *reg, int64_t exp, int64_t now)
{
	int64_t until;

	/* Past exp + leeway no verifier accepts the token any more. */
	return !__builtin_add_overflow(exp, reg->leeway, &until) && until < now;
}

/* The TOKEN entry registering rec, or -EINVAL for a field out of bounds. */
static int registry_entry_of(struct registry *reg, const struct registry_record *rec, struct registry_entry *ret_e)
{
	struct registry_entry e;

	if (rec == NULL || !registry_field_ok(rec->jti, sizeof(rec->jti), 1) ||
	    !registry_field_ok(rec->org, sizeof(rec->org), 0) ||
	    !registry_field_ok(rec->subject, sizeof(rec->subject), 0) ||
	    !registry_field_ok(rec->name, sizeof(rec->name), 0) ||
	    !registry_field_ok(rec->description, sizeof(rec->description), 0) ||
	    !registry_field_ok(rec->client_id, sizeof(rec->client_id), 0) ||
	    !registry_field_ok(rec->kid, sizeof(rec->kid), 0) ||
	    !registry_field_ok(rec->parent, sizeof(rec->parent), 0) ||
	    !registry_field_ok(rec->family, sizeof(rec->family), 0) || rec->status != REGISTRY_ACTIVE ||
	    (unsigned)rec->type > REGISTRY_TYPE_CHILD)
		return -EINVAL;
	/* An index must have been handed out by registry_reserve_index. */
	if (rec->status_idx != REGISTRY_NO_INDEX && rec->status_idx >= atomic_load(&reg->next_status_idx))
		return -EINVAL;
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	memcpy(e.jti, rec->jti, sizeof(e.jti));
	e.status = REGISTRY_ACTIVE;
	e.at = rec->iat;
	e.type = rec->type;
	memcpy(e.org, rec->org, sizeof(e.org));
	memcpy(e.subject, rec->subject, sizeof(e.subject));
	memcpy(e.name, rec->name, sizeof(e.name));
	memcpy(e.description, rec->description, sizeof(e.description));
	memcpy(e.client_id, rec->client_id, sizeof(e.client_id));
	memcpy(e.kid, rec->kid, sizeof(e.kid));
	memcpy(e.parent, rec->parent, sizeof(e.parent));
	memcpy(e.family, rec->family, sizeof(e.family));
	e.exp = rec->exp;
	e.status_idx = rec->status_idx;
	*ret_e = e;
	return 0;
}

/* Under the write lock: whether e's parent, known to the index, is no
 * longer active.  Callers look at the parent before they issue, but a
 * revocation cascade run in between would miss a child registered after
 * it: this check and the link are one step.  An UNREGISTERED record binds
 * as registry_check says.  A parent the index does not know is let be:
 * the registry holds no judgement on it, and one compacted away had
 * expired, as has every child of it (a child never outlives its parent). */
static int registry_parent_refuses(const struct registry *reg, const struct registry_entry *e)
{
	const struct registry_rec *p;
	const char *org;

	if (e->parent[0] == '\0' || (p = registry_index_get(&reg->index, e->parent)) == NULL)
		return 0;
	org = registry_ix_string(&reg->index, p->org);
	if (p->type == REGISTRY_TYPE_UNREGISTERED && org[0] != '\0' && strcmp(org, e->org) != 0)
		return 0;
	return p->status != REGISTRY_ACTIVE;
}

int registry_add(struct registry *reg, const struct registry_record *rec, registry_done_fn done, void *arg)
{
	struct registry_entry e;
	struct registry_rec *r_new;
	uint8_t frame[REGISTRY_TOKEN_FRAME_MAX];
	size_t len;
	int r;

	if (reg == NULL || registry_entry_of(reg, rec, &e) < 0)
		return -EINVAL;
	r = registry_write_begin_new(reg, rec->jti);
	if (r < 0)
		return r;
	if (registry_parent_refuses(reg, &e)) {
		r = -EPERM;
		goto out;
	}
	e.seq = reg->next_seq;
	r = registry_encode(&e, frame, sizeof(frame), &len);
	if (r < 0) {
		r = -EINVAL;
		goto out;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, len);
	if (r == 0)
		r = registry_rec_new(&reg->index, &e, e.seq, registry_hash(&reg->index.key, e.jti, strlen(e.jti)),
				     &r_new);
	if (r == 0 && (r = registry_index_link(&reg->index, r_new)) < 0)
		registry_arena_release(r_new);
	if (r == 0) {
		memcpy(reg->queue.buf + reg->queue.len, frame, len);
		reg->queue.len += len;
		reg->queue.frames++;
		registry_queue_waiter(&reg->queue, done, arg);
		reg->next_seq++;
		pthread_cond_signal(&reg->qwork);
	}
	pthread_mutex_unlock(&reg->qmutex);
out:
	registry_write_end(reg);
	return r;
}

/* Under the write lock: whether add[0..n) may all be registered. */
static int registry_consume_check(struct registry *reg, const struct registry_entry *add, size_t n)
{
	if (reg->index.all.count + n > REGISTRY_MAX_RECORDS) {
		log_error("\"registry full\" records=%u", (unsigned)reg->index.all.count);
		return -ENOSPC;
	}
	for (size_t i = 0; i < n; i++)
		if (registry_index_get(&reg->index, add[i].jti) != NULL)
			return -EEXIST;
	for (size_t i = 0; i < n; i++)
		if (registry_parent_refuses(reg, &add[i]))
			return -EPERM;
	return 0;
}

int registry_consume(struct registry *reg, const char *jti, int64_t now, const char *reason,
		     const struct registry_record *add, size_t n_add, registry_done_fn done, void *arg,
		     enum registry_status *ret_status)
{
	struct registry_entry *entries = NULL, s;
	struct registry_rec *rec = NULL, *r_new;
	uint8_t frame[REGISTRY_TOKEN_FRAME_MAX];
	size_t len, total = REGISTRY_STATUS_FRAME_MAX;
	uint32_t reason_id = 0;
	int r;

	if (reason == NULL)
		reason = "";
	if (reg == NULL || (jti == NULL && n_add == 0) || (add == NULL && n_add > 0) || n_add > REGISTRY_CONSUME_MAX ||
	    (jti != NULL && !registry_string_ok(jti, REGISTRY_JTI_MAX, 1)) ||
	    !registry_string_ok(reason, REGISTRY_REASON_MAX, 0))
		return -EINVAL;
	if (n_add > 0 && (entries = calloc(n_add, sizeof(*entries))) == NULL)
		return -ENOMEM;
	/* Every frame is checked before anything changes: once the first
	 * record is linked, the rest must not fail but for memory. */
	for (size_t i = 0; i < n_add; i++) {
		if (registry_entry_of(reg, &add[i], &entries[i]) < 0) {
			r = -EINVAL;
			goto out_free;
		}
		/* The seq, known only under the lock, changes no length. */
		entries[i].seq = 1;
		if (registry_encode(&entries[i], frame, sizeof(frame), &len) < 0) {
			r = -EINVAL;
			goto out_free;
		}
		total += len;
		for (size_t k = 0; k < i; k++)
			if (strcmp(entries[k].jti, entries[i].jti) == 0) {
				r = -EEXIST;
				goto out_free;
			}
		if (jti != NULL && strcmp(jti, entries[i].jti) == 0) {
			r = -EEXIST;
			goto out_free;
		}
	}
	r = registry_write_begin(reg);
	if (r < 0)
		goto out_free;
	if (jti != NULL) {
		rec = registry_index_get(&reg->index, jti);
		if (rec == NULL) {
			r = -ENOENT;
			goto out;
		}
		if (rec->status != REGISTRY_ACTIVE) {
			if (ret_status != NULL)
				*ret_status = (enum registry_status)rec->status;
			r = -EALREADY;
			goto out;
		}
	}
	r = registry_consume_check(reg, entries, n_add);
	if (r < 0)
		goto out;
	if (rec != NULL && (registry_intern_add(&reg->index.strings, &reg->index.key, reason, &reason_id) < 0 ||
			    registry_bits_reserve(reg, rec->status_idx, REGISTRY_REVOKED) < 0)) {
		r = -ENOMEM;
		goto out;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, total);
	for (size_t i = 0; r == 0 && i < n_add; i++) {
		entries[i].seq = reg->next_seq;
		r = registry_rec_new(&reg->index, &entries[i], entries[i].seq,
				     registry_hash(&reg->index.key, entries[i].jti, strlen(entries[i].jti)), &r_new);
		if (r == 0 && (r = registry_index_link(&reg->index, r_new)) < 0)
			registry_arena_release(r_new);
		if (r < 0)
			break;
		/* A record linked is written, whatever follows: the file
		 * must hold what the index holds. */
		if (registry_queue_entry(&reg->queue, &entries[i]) < 0)
			registry_fail_for_good(reg, "encode", EINVAL);
		reg->next_seq++;
	}
	if (r == 0 && rec != NULL) {
		memset(&s, 0, sizeof(s));
		s.kind = REGISTRY_KIND_STATUS;
		s.seq = reg->next_seq++;
		snprintf(s.jti, sizeof(s.jti), "%s", jti);
		s.status = REGISTRY_REVOKED;
		s.at = now;
		snprintf(s.reason, sizeof(s.reason), "%s", reason);
		registry_apply_status(reg, rec, REGISTRY_REVOKED, now, reason_id);
		if (registry_queue_entry(&reg->queue, &s) < 0)
			registry_fail_for_good(reg, "encode", EINVAL);
		metrics_revocations(1);
	}
	if (r == 0)
		registry_queue_waiter(&reg->queue, done, arg);
	pthread_cond_signal(&reg->qwork);
	pthread_mutex_unlock(&reg->qmutex);
out:
	registry_write_end(reg);
out_free:
	free(entries);
	return r;
}

/* Adds to plan every record of scope (org id, or any when UINT32_MAX)
 * whose parent or family is jti, and that is still active or suspended.
 * The records in plan carry mark = 1. */
static int registry_cascade_jti(struct registry_index *ix, struct registry_vec *plan, const char *jti, uint32_t scope)
{
	struct registry_group *groups[2] = { registry_map_find(&ix->parents, &ix->key, jti),
					     registry_map_find(&ix->families, &ix->key, jti) };

	for (int g = 0; g < 2; g++) {
		if (groups[g] == NULL)
			continue;
		for (uint32_t k = 0; k < groups[g]->vec.count; k++) {
			struct registry_rec *d = groups[g]->vec.items[k];

			if (d->mark || (d->status != REGISTRY_ACTIVE && d->status != REGISTRY_SUSPENDED) ||
			    (scope != UINT32_MAX && d->org != scope))
				continue;
			if (registry_vec_reserve(plan, 1) < 0)
				return -ENOMEM;
			d->mark = 1;
			plan->items[plan->count++] = d;
		}
	}
	return 0;
}

/* The same, transitively, for every record in plan from position from on. */
static int registry_cascade(struct registry_index *ix, struct registry_vec *plan, uint32_t from, uint32_t scope)
{
	for (uint32_t i = from; i < plan->count; i++) {
		int r = registry_cascade_jti(ix, plan, registry_rec_jti(plan->items[i]), scope);
		if (r < 0)
			return r;
	}
	return 0;
}

static void registry_unmark(struct registry_vec *plan)
{
	for (uint32_t i = 0; i < plan->count; i++)
		plan->items[i]->mark = 0;
}

/* Whether a change from `from` to `to` revokes a record (metrics): a live
 * record that becomes revoked or deleted. */
static int registry_revokes(unsigned from, enum registry_status to)
{
	return (from == REGISTRY_ACTIVE || from == REGISTRY_SUSPENDED) &&
	       (to == REGISTRY_REVOKED || to == REGISTRY_DELETED);
}

/* Applies plan: plan->items[i] takes statuses[i] (or, with statuses NULL,
 * status) at now, one STATUS frame each, and one waiter for the whole
 * change.  Nothing changes unless all of it can. */
static int registry_commit(struct registry *reg, struct registry_vec *plan, enum registry_status status,
			   const uint8_t *statuses, int64_t now, const char *reason, registry_done_fn done,
			   void *arg)
{
	struct registry_index *ix = &reg->index;
	struct registry_entry e;
	uint32_t reason_id;
	uint64_t revoked = 0;
	int r;

	if (registry_intern_add(&ix->strings, &ix->key, reason, &reason_id) < 0)
		return -ENOMEM;
	for (uint32_t i = 0; i < plan->count; i++) {
		enum registry_status s = statuses ? (enum registry_status)statuses[i] : status;

		if (registry_bits_reserve(reg, plan->items[i]->status_idx, s) < 0)
			return -ENOMEM;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, (size_t)plan->count * REGISTRY_STATUS_FRAME_MAX);
	if (r < 0) {
		pthread_mutex_unlock(&reg->qmutex);
		return r;
	}
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_STATUS;
	e.at = now;
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	for (uint32_t i = 0; i < plan->count; i++) {
		struct registry_rec *rec = plan->items[i];

		e.status = statuses ? (enum registry_status)statuses[i] : status;
		/* Deleting a revoked record revokes nothing more. */
		revoked += registry_revokes(rec->status, e.status);
		registry_apply_status(reg, rec, e.status, now, reason_id);
		e.seq = reg->next_seq++;
		memcpy(e.jti, rec->str, strlen(rec->str) + 1);
		if (registry_queue_entry(&reg->queue, &e) < 0)
			/* Cannot happen (every field was checked): the file
			 * would no longer match the index. */
			registry_fail_for_good(reg, "encode", EINVAL);
	}
	registry_queue_waiter(&reg->queue, done, arg);
	pthread_cond_signal(&reg->qwork);
	pthread_mutex_unlock(&reg->qmutex);
	metrics_revocations(revoked);
	return 0;
}

static int registry_transition_ok(enum registry_status from, enum registry_status to)
{
	if (from == to)
		return 1;
	if (from == REGISTRY_DELETED)
		return 0;
	if (from == REGISTRY_REVOKED)
		return to == REGISTRY_DELETED;
	return 1;
}

int registry_set_status(struct registry *reg, const char *jti, const char *org_scope, enum registry_status status,
			int64_t now, const char *reason, registry_done_fn done, void *arg, size_t *ret_changed)
{
	struct registry_vec plan = { 0 };
	struct registry_rec *rec;
	uint8_t *statuses = NULL;
	uint32_t scope = UINT32_MAX;
	int r;

	if (reason == NULL)
		reason = "";
	if (reg == NULL || !registry_string_ok(jti, REGISTRY_JTI_MAX, 1) || (unsigned)status > REGISTRY_DELETED ||
	    !registry_string_ok(reason, REGISTRY_REASON_MAX, 0) ||
	    (org_scope != NULL && !registry_string_ok(org_scope, REGISTRY_ORG_MAX, 0)))
		return -EINVAL;
	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	rec = registry_index_get(&reg->index, jti);
	if (rec == NULL || !registry_in_scope(&reg->index, rec, org_scope)) {
		r = -ENOENT;
		goto out;
	}
	if (!registry_transition_ok(rec->status, status)) {
		r = -EPERM;
		goto out;
	}
	if (org_scope != NULL)
		scope = rec->org;
	r = registry_vec_reserve(&plan, 1);
	if (r < 0)
		goto out;
	rec->mark = 1;
	plan.items[plan.count++] = rec;
	/* Revocation reaches the dependents even when the token itself was
	 * revoked before: a child registered since must not outlive it. */
	if (status == REGISTRY_REVOKED || status == REGISTRY_DELETED) {
		/* A refresh token after a rotation is not its family's first:
		 * revoking it (a logout) ends the grant — every token of the
		 * family, whose records name the first jti (RFC 7009 §2.1). */
		const char *family = registry_rec_family(rec);

		if (rec->type == REGISTRY_TYPE_REFRESH && family[0] != '\0' && strcmp(family, jti) != 0) {
			r = registry_cascade_jti(&reg->index, &plan, family, scope);
			if (r < 0)
				goto out;
		}
		/* Transitively from every record in plan, the family's too. */
		r = registry_cascade(&reg->index, &plan, 0, scope);
		if (r < 0)
			goto out;
	}
	statuses = malloc(plan.count);
	if (statuses == NULL) {
		r = -ENOMEM;
		goto out;
	}
	statuses[0] = (uint8_t)status;
	memset(statuses + 1, REGISTRY_REVOKED, plan.count - 1);
	/* The token itself is in plan only if it changes. */
	if (rec->status == status) {
		memmove(plan.items, plan.items + 1, (plan.count - 1) * sizeof(*plan.items));
		memmove(statuses, statuses + 1, plan.count - 1);
		plan.count--;
		rec->mark = 0;
	}
	r = registry_commit(reg, &plan, REGISTRY_REVOKED, statuses, now, reason, done, arg);
	if (r == 0 && ret_changed)
		*ret_changed = plan.count;
out:
	registry_unmark(&plan);
	registry_write_end(reg);
	free(plan.items);
	free(statuses);
	return r;
}

int registry_revoke_unregistered(struct registry *reg, const char *jti, const char *org, int64_t exp, int64_t now,
				 const char *reason, registry_done_fn done, void *arg)
{
	struct registry_entry e;
	struct registry_rec *rec;
	uint8_t token[REGISTRY_TOKEN_FRAME_MAX], status[REGISTRY_STATUS_FRAME_MAX];
	size_t token_len, status_len = 0;
	int r;

	if (reason == NULL)
		reason = "";
	if (org == NULL)
		org = "";
	if (reg == NULL || !registry_string_ok(jti, REGISTRY_JTI_MAX, 1) ||
	    !registry_string_ok(org, REGISTRY_ORG_MAX, 0) || !registry_string_ok(reason, REGISTRY_REASON_MAX, 0))
		return -EINVAL;
	r = registry_write_begin_new(reg, jti);
	if (r < 0)
		return r;
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	e.seq = reg->next_seq;
	snprintf(e.jti, sizeof(e.jti), "%s", jti);
	e.status = REGISTRY_REVOKED;
	e.at = now;
	e.type = REGISTRY_TYPE_UNREGISTERED;
	snprintf(e.org, sizeof(e.org), "%s", org);
	e.exp = exp;
	e.status_idx = REGISTRY_NO_INDEX;
	r = registry_encode(&e, token, sizeof(token), &token_len);
	if (r == 0 && reason[0] != '\0') {
		/* The TOKEN frame has no room for the reason. */
		struct registry_entry s;

		memset(&s, 0, sizeof(s));
		s.kind = REGISTRY_KIND_STATUS;
		s.seq = e.seq + 1;
		snprintf(s.jti, sizeof(s.jti), "%s", jti);
		s.status = REGISTRY_REVOKED;
		s.at = now;
		snprintf(s.reason, sizeof(s.reason), "%s", reason);
		r = registry_encode(&s, status, sizeof(status), &status_len);
	}
	if (r < 0) {
		r = -EINVAL;
		goto out;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, token_len + status_len);
	if (r == 0)
		r = registry_rec_new(&reg->index, &e, e.seq, registry_hash(&reg->index.key, e.jti, strlen(e.jti)),
				     &rec);
	if (r == 0 && status_len > 0 &&
	    (r = registry_intern_add(&reg->index.strings, &reg->index.key, reason, &rec->reason)) < 0)
		registry_arena_release(rec);
	if (r == 0 && (r = registry_index_link(&reg->index, rec)) < 0)
		registry_arena_release(rec);
	if (r == 0) {
		memcpy(reg->queue.buf + reg->queue.len, token, token_len);
		memcpy(reg->queue.buf + reg->queue.len + token_len, status, status_len);
		reg->queue.len += token_len + status_len;
		reg->queue.frames += status_len > 0 ? 2 : 1;
		reg->next_seq += status_len > 0 ? 2 : 1;
		registry_queue_waiter(&reg->queue, done, arg);
		pthread_cond_signal(&reg->qwork);
		/* A record born revoked: a revocation all the same. */
		metrics_revocations(1);
	}
	pthread_mutex_unlock(&reg->qmutex);
out:
	registry_write_end(reg);
	return r;
}

int registry_revoke_subject(struct registry *reg, const char *subject, const char *org_scope, int64_t now,
			    registry_done_fn done, void *arg, size_t *ret_count)
{
	struct registry_vec plan = { 0 };
	struct registry_group *group;
	uint32_t scope = UINT32_MAX;
	int r;

	if (reg == NULL || !registry_string_ok(subject, REGISTRY_SUBJECT_MAX, 1) ||
	    (org_scope != NULL && !registry_string_ok(org_scope, REGISTRY_ORG_MAX, 0)))
		return -EINVAL;
	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	if (org_scope != NULL && registry_intern_find(&reg->index.strings, &reg->index.key, org_scope, &scope) < 0)
		goto commit;   /* an org without records: nothing to revoke */
	group = registry_map_find(&reg->index.subjects, &reg->index.key, subject);
	for (uint32_t i = 0; group && i < group->vec.count; i++) {
		struct registry_rec *rec = group->vec.items[i];

		if ((rec->status != REGISTRY_ACTIVE && rec->status != REGISTRY_SUSPENDED) ||
		    (scope != UINT32_MAX && rec->org != scope) || registry_expired_for_good(reg, rec->exp, now))
			continue;
		r = registry_vec_reserve(&plan, 1);
		if (r < 0)
			goto out;
		rec->mark = 1;
		plan.items[plan.count++] = rec;
	}
	r = registry_cascade(&reg->index, &plan, 0, scope);
	if (r < 0)
		goto out;
commit:
	r = registry_commit(reg, &plan, REGISTRY_REVOKED, NULL, now, "", done, arg);
	if (r == 0 && ret_count)
		*ret_count = plan.count;
out:
	registry_unmark(&plan);
	registry_write_end(reg);
	free(plan.items);
	return r;
}

/* ---- reads ---------------------------------------------------------------- */

int registry_get(struct registry *reg, const char *jti, const char *org_scope, struct registry_record *ret_record)
{
	const struct registry_rec *rec;
	int r = -ENOENT;

	if (reg == NULL || jti == NULL || ret_record == NULL)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	rec = registry_index_get(&reg->index, jti);
	if (rec != NULL && registry_in_scope(&reg->index, rec, org_scope)) {
		registry_copy_out(&reg->index, rec, ret_record);
		r = 0;
	}
	pthread_rwlock_unlock(&reg->lock);
	return r;
}

int registry_count_children(struct registry *reg, const char *parent_jti, int64_t now, size_t *ret_count)
{
	const struct registry_group *children;
	size_t n = 0;

	if (reg == NULL || parent_jti == NULL || ret_count == NULL)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	children = registry_map_find(&reg->index.parents, &reg->index.key, parent_jti);
	for (uint32_t k = 0; children != NULL && k < children->vec.count; k++)
		if (children->vec.items[k]->status == REGISTRY_ACTIVE && children->vec.items[k]->exp > now)
			n++;
	pthread_rwlock_unlock(&reg->lock);
	*ret_count = n;
	return 0;
}

int registry_count_active_parents(struct registry *reg, int64_t now, uint64_t *ret_count)
{
	const struct registry_vec *parents;
	uint64_t n = 0;

	if (reg == NULL || ret_count == NULL)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	parents = &reg->index.parent_recs;
	for (uint32_t k = 0; k < parents->count; k++)
		n += parents->items[k]->status == REGISTRY_ACTIVE && parents->items[k]->exp > now;
	pthread_rwlock_unlock(&reg->lock);
	*ret_count = n;
	return 0;
}

int registry_check(struct registry *reg, const char *jti, const char *token_org, int *ret_found,
		   enum registry_status *ret_status)
{
	const struct registry_rec *rec;
	int found = 0;
	enum registry_status status = REGISTRY_ACTIVE;

	if (reg == NULL || jti == NULL || ret_found == NULL || ret_status == NULL)
		return -EINVAL;
	if (token_org == NULL)
		token_org = "";
	pthread_rwlock_rdlock(&reg->lock);
	rec = registry_index_get(&reg->index, jti);
	if (rec != NULL) {
		const char *org = registry_ix_string(&reg->index, rec->org);

		/* A confined caller's offline revocation binds only tokens of
		 * its own org. */
		if (rec->type != REGISTRY_TYPE_UNREGISTERED || org[0] == '\0' || strcmp(org, token_org) == 0) {
			found = 1;
			status = (enum registry_status)rec->status;
		}
	}
	pthread_rwlock_unlock(&reg->lock);
	*ret_found = found;
	if (found)
		*ret_status = status;
	return 0;
}

static int registry_list_match(const struct registry *reg, const struct registry_query *query, uint32_t org,
			       const struct registry_rec *rec)
{
	enum registry_status s = (enum registry_status)rec->status;

	if (query->org_scope != NULL && rec->org != org)
		return 0;
	if (query->type >= 0 && rec->type != (unsigned)query->type)
		return 0;
	if (query->subject != NULL && strcmp(registry_rec_subject(rec), query->subject) != 0)
		return 0;
	/* A revocation matters as long as a verifier with leeway could still
	 * accept the token. */
	if (query->revocations &&
	    (s == REGISTRY_ACTIVE || registry_expired_for_good(reg, rec->exp, query->now)))
		return 0;
	switch (query->status) {
	case -1:
		return query->revocations || s != REGISTRY_DELETED;
	case REGISTRY_EXPIRED_FILTER:
		return (s == REGISTRY_ACTIVE || s == REGISTRY_SUSPENDED) && rec->exp <= query->now;
	case REGISTRY_ACTIVE:
	case REGISTRY_SUSPENDED:
		return (int)s == query->status && rec->exp > query->now;
	default:
		return (int)s == query->status;
	}
}

int registry_list(struct registry *reg, const struct registry_query *query, struct registry_record **ret_records,
		  size_t *ret_count, uint64_t *ret_next_cursor)
{
	const struct registry_vec *src, *candidate;
	const struct registry_rec *last = NULL;
	struct registry_record *records = NULL;
	const struct registry_group *group;
	size_t count = 0, cap = 0, scanned = 0;
	uint64_t next = 0;
	uint32_t org = 0, i;
	int r = 0, nonactive = 0;

	if (reg == NULL || query == NULL || ret_records == NULL || ret_count == NULL || ret_next_cursor == NULL ||
	    query->limit == 0 || query->limit > REGISTRY_LIST_MAX ||
	    (query->status != -1 && query->status != REGISTRY_EXPIRED_FILTER &&
	     (query->status < 0 || query->status > REGISTRY_DELETED)) ||
	    query->type < -1 || query->type > REGISTRY_TYPE_UNREGISTERED)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	/* Every record that can match is in each of these; walk the smallest. */
	src = &reg->index.all;
	if (query->org_scope != NULL) {
		if (registry_intern_find(&reg->index.strings, &reg->index.key, query->org_scope, &org) < 0 ||
		    org >= reg->index.by_org_len)
			goto done;
		candidate = &reg->index.by_org[org];
		if (candidate->count < src->count)
			src = candidate;
	}
	if (query->subject != NULL) {
		group = registry_map_find(&reg->index.subjects, &reg->index.key, query->subject);
		if (group == NULL)
			goto done;
		if (group->vec.count < src->count)
			src = &group->vec;
	}
	/* or all's non-active records, through their bits */
	if ((query->revocations || query->status == REGISTRY_SUSPENDED || query->status == REGISTRY_REVOKED ||
	     query->status == REGISTRY_DELETED) &&
	    reg->index.nonactive_count < src->count) {
		src = &reg->index.all;
		nonactive = 1;
	}
	i = registry_vec_after(src, query->cursor);
	for (;; i++) {
		const struct registry_rec *rec;

		if (nonactive)
			i = registry_nonactive_next(&reg->index, i);
		if (i >= src->count)
			break;
		rec = src->items[i];
		if (scanned == REGISTRY_LIST_SCAN_MAX) {
			next = last->seq;
			break;
		}
		scanned++;
		last = rec;
		if (!registry_list_match(reg, query, org, rec))
			continue;
		if (count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct registry_record *grown;

			if (ncap > query->limit)
				ncap = query->limit;
			grown = realloc(records, ncap * sizeof(*grown));
			if (grown == NULL) {
				r = -ENOMEM;
				goto done;
			}
			records = grown;
			cap = ncap;
		}
		registry_copy_out(&reg->index, rec, &records[count++]);
		if (count == query->limit) {
			if ((nonactive ? registry_nonactive_next(&reg->index, i + 1) : i + 1) < src->count)
				next = rec->seq;
			break;
		}
	}
done:
	pthread_rwlock_unlock(&reg->lock);
	if (r < 0) {
		free(records);
		return r;
	}
	if (records == NULL && (records = malloc(sizeof(*records))) == NULL)
		return -ENOMEM;
	*ret_records = records;
	*ret_count = count;
	*ret_next_cursor = next;
	return 0;
}

int registry_statuslist(struct registry *reg, uint32_t list, uint8_t *ret_bits, uint64_t *ret_generation)
{
	if (reg == NULL || ret_bits == NULL || ret_generation == NULL)
		return -EINVAL;
	if ((uint64_t)list * REGISTRY_STATUSLIST_SIZE >= atomic_load(&reg->next_status_idx))
		return -ENOENT;
	pthread_rwlock_rdlock(&reg->lock);
	if (list < reg->nlists && reg->lists[list] != NULL)
		memcpy(ret_bits, reg->lists[list], REGISTRY_LIST_BYTES);
	else
		memset(ret_bits, 0, REGISTRY_LIST_BYTES);
	*ret_generation = list < reg->nlists ? reg->generations[list] : 0;
	pthread_rwlock_unlock(&reg->lock);
	return 0;
}

void registry_get_stats(struct registry *reg, struct registry_stats *ret_stats)
{
	if (ret_stats == NULL)
		return;
	memset(ret_stats, 0, sizeof(*ret_stats));
	if (reg == NULL)
		return;
	pthread_rwlock_rdlock(&reg->lock);
	ret_stats->records = reg->index.all.count;
	pthread_rwlock_unlock(&reg->lock);
	ret_stats->frames = atomic_load(&reg->frames);
	ret_stats->file_bytes = atomic_load(&reg->file_bytes);
	ret_stats->next_status_idx = (uint32_t)atomic_load(&reg->next_status_idx);
	ret_stats->failed = atomic_load(&reg->failed);
}

/* ---- waiting ------------------------------------------------------------ */

void registry_wait_init(struct registry_wait *w)
{
	pthread_mutex_init(&w->mutex, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->finished = 0;
	w->result = 0;
}

void registry_wait_done(void *arg, int result)
{
	struct registry_wait *w = arg;

	pthread_mutex_lock(&w->mutex);
	w->result = result;
	w->finished = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mutex);
}

int registry_wait(struct registry_wait *w)
{
	int r;

	pthread_mutex_lock(&w->mutex);
	while (!w->finished)
		pthread_cond_wait(&w->cond, &w->mutex);
	r = w->result;
	pthread_mutex_unlock(&w->mutex);
	pthread_mutex_destroy(&w->mutex);
	pthread_cond_destroy(&w->cond);
	return r;
}

/* ---- test hooks ----------------------------------------------------------- */

int registry_internal_fd(struct registry *reg)
{
	return reg->fd;
}

void registry_internal_set_compact_min(struct registry *reg, uint64_t frames)
{
	reg->compact_min = frames;
}

int registry_internal_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int *ret_compacted)
{
	return registry_maybe_compact(reg, now, min_frames, 1, ret_compacted);
}

int registry_internal_recover(struct registry *reg)
{
	int r;

	pthread_mutex_lock(&reg->io);
	r = atomic_load(&reg->failed) == REGISTRY_OK ? 0 : registry_recover(reg);
	pthread_mutex_unlock(&reg->io);
	return r;
}

void registry_internal_pause_timers(struct registry *reg, int paused)
{
	atomic_store(&reg->timers_paused, paused);
	/* A flusher asleep until a retry's deadline computes it again. */
	pthread_mutex_lock(&reg->qmutex);
	pthread_cond_signal(&reg->qwork);
	pthread_mutex_unlock(&reg->qmutex);
}

int registry_internal_sync(struct registry *reg)
{
	int r = -EIO;

	pthread_mutex_lock(&reg->io);
	if (atomic_load(&reg->failed) == REGISTRY_OK)
		r = registry_sync(reg);
	pthread_mutex_unlock(&reg->io);
	return r;
}
