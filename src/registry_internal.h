/* registry_internal.h: what the files of the registry module share, and the
 * hooks test_registry uses.  registry.c: open, close, the public API (locking,
 * changes, reads); registry_index.c: the in-memory index; registry_flush.c:
 * the queue and the flusher (durability); registry_load.c: recovery at open;
 * registry_compact.c: compaction.  Not part of the module's contract:
 * include/hsmjwt/registry.h is. */
#ifndef HSMJWT_REGISTRY_INTERNAL_H
#define HSMJWT_REGISTRY_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hsmjwt/registry.h"

/* How often the flusher counts expired records to decide on compaction. */
#define REGISTRY_COMPACT_CHECK_NS (60 * 1000000000LL)
/* The longest STATUS frame (codec layout): header, seq, kind, jti, status,
 * at, reason. */
#define REGISTRY_STATUS_FRAME_MAX \
	(REGISTRY_FRAME_HEADER + 8 + 1 + 2 + REGISTRY_JTI_MAX + 1 + 8 + 2 + REGISTRY_REASON_MAX)
#define REGISTRY_TOKEN_FRAME_MAX (REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY)
#define REGISTRY_LIST_BYTES (REGISTRY_STATUSLIST_SIZE / 4)
/* While the file refuses writes (a full or read-only disk), the flusher
 * tries again this often, so that the registry comes back by itself once
 * space is freed, without waiting for a change (changes are refused). */
#define REGISTRY_RETRY_MS 250

/* reg->failed */
enum registry_failure {
	REGISTRY_OK = 0,
	REGISTRY_FAILED_IO,            /* a write or fsync failed: retried */
	REGISTRY_FAILED_FOR_GOOD,      /* the index holds what no frame says: never again */
};

/* ---- hashing ---------------------------------------------------------------
 * Subjects, orgs and unregistered jtis come from callers: a keyed hash
 * (SipHash-1-3, random key per process) keeps them from choosing collisions
 * in the open-addressing tables. */

struct registry_hashkey {
	uint64_t k0, k1;
};

/* Probing compares the hash kept in the slot before it touches a string. */
struct registry_slot {
	uint32_t id;                   /* + 1; 0 = empty */
	uint32_t hash;
};

/* ---- records ---------------------------------------------------------------
 * One compact record per token, carved from slabs: the fixed fields, the
 * strings that repeat (org, client_id, kid, reason) as interned ids, and the
 * rest packed after the header. */

struct registry_rec {
	uint64_t seq;
	int64_t iat, exp, status_at;
	uint32_t status_idx;
	uint32_t hash;                 /* of the jti */
	uint32_t org, client_id, kid, reason;
	uint16_t tag;                  /* more bits of the jti's hash, never 0 */
	uint8_t type, status;
	uint8_t mark;                  /* scratch of the write-lock holder */
	char str[];                    /* jti, subject, parent, family, name, description */
};

static inline const char *registry_next_str(const char *s)
{
	return s + strlen(s) + 1;
}

static inline const char *registry_rec_jti(const struct registry_rec *rec)
{
	return rec->str;
}

static inline const char *registry_rec_subject(const struct registry_rec *rec)
{
	return registry_next_str(rec->str);
}

static inline const char *registry_rec_parent(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_subject(rec));
}

static inline const char *registry_rec_family(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_parent(rec));
}

static inline const char *registry_rec_name(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_family(rec));
}

static inline const char *registry_rec_description(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_name(rec));
}

/* Slabs: registry_index.c. */
struct registry_arena {
	struct registry_slab *head;    /* the slab being carved */
};

/* ---- vectors of records, in seq order ------------------------------------ */

struct registry_vec {
	struct registry_rec **items;
	uint32_t count, cap;
};

/* ---- interned strings ------------------------------------------------------
 * org, client_id, kid and reason repeat across records: each distinct value
 * is stored once and records hold its id.  Id 0 is "". */

struct registry_intern {
	char **strings;                /* by id; NULL for a freed id */
	uint32_t count, alloc;
	struct registry_slot *slots;
	uint32_t mask;
	uint32_t *free_ids;            /* ids compaction freed, taken first */
	uint32_t nfree, free_alloc;
};

/* ---- string -> records in seq order (subject, parent, family) ------------ */

/* Keys that fit are kept inline, so that a lookup reads no record (a cache
 * miss each, at open); longer ones point into the group's first record. */
#define REGISTRY_GROUP_INLINE 32

struct registry_group {
	struct registry_vec vec;
	const char *key;               /* NULL when inline */
	char inline_key[REGISTRY_GROUP_INLINE];
};

struct registry_map {
	struct registry_group *groups;
	uint32_t count, alloc;
	struct registry_slot *slots;
	uint32_t mask;
};

/* ---- the index --------------------------------------------------------- */

struct registry_index {
	struct registry_hashkey key;
	struct registry_arena arena;
	struct registry_rec **table;   /* jti -> record, open addressing */
	uint16_t *tags;                /* per slot: the record's tag, 0 = empty */
	size_t table_mask, table_count;
	struct registry_intern strings;
	struct registry_vec all;
	uint64_t *nonactive;           /* bit per position in all: status other than ACTIVE */
	size_t nonactive_words;
	uint32_t nonactive_count;
	struct registry_vec *by_org;   /* by interned org id */
	uint32_t by_org_len;
	struct registry_map subjects, parents, families;
	/* Records of type PARENT, so that the active-parents gauge walks
	 * these and not every record. */
	struct registry_vec parent_recs;
};

static inline const char *registry_ix_string(const struct registry_index *ix, uint32_t id)
{
	return ix->strings.strings[id];
}

/* ---- the registry ------------------------------------------------------- */

struct registry_waiter {
	registry_done_fn done;
	void *arg;
};

/* Encoded frames waiting for the file, and whom to tell when they are
 * durable. */
struct registry_queue {
	uint8_t *buf;
	size_t len, cap;
	struct registry_waiter *waiters;
	size_t nwaiters, wcap;
	uint64_t frames;
};

struct registry {
	char path[PATH_MAX];
	char new_path[PATH_MAX];
	char dir[PATH_MAX];
	int fd;
	enum registry_fsync fsync;
	int64_t leeway;
	atomic_uint_fast64_t compact_min;

	/* Lock order: io, gate, lock, qmutex. */
	pthread_mutex_t io;            /* the file: flushes and compactions */
	pthread_mutex_t gate;          /* writers; a compaction holds it across its two phases */
	pthread_rwlock_t lock;         /* the index, next_seq, the status lists */
	pthread_mutex_t qmutex;        /* queue, stopping */
	pthread_cond_t qwork;          /* to the flusher: work, or stop */
	int locks;                     /* how many of the above exist, for a partial teardown */

	struct registry_queue queue;
	int stopping;
	pthread_t flusher;
	int flusher_running;

	atomic_int failed;             /* enum registry_failure */
	atomic_uint_fast64_t frames, file_bytes;
	atomic_uint_fast32_t next_status_idx;

	/* under io (atomic: the flusher reads them to time its waits) */
	atomic_int dirty;              /* written, not yet fdatasynced (interval) */
	/* Under io.  The frames of batches whose write or fdatasync failed:
	 * in the index already, their waiters answered -EIO, written ahead of
	 * anything newer once the disk takes writes again (the file must hold
	 * what the index holds).  good_bytes: the length of the file up to
	 * the last whole batch that was written; past it there may be a torn
	 * write (torn), cut off before the next one.  dir_unsynced: a
	 * compaction's rename whose directory fsync failed. */
	struct registry_queue retry;
	uint64_t good_bytes;
	int torn;
	int dir_unsynced;
	atomic_int_fast64_t last_retry_ns;  /* also set when a failure starts: the first retry waits too */
	atomic_int_fast64_t last_sync_ns;
	atomic_int timers_paused;      /* test hook: no timed retry or interval fdatasync */
	atomic_int_fast64_t last_compact_check_ns;

	/* under lock */
	struct registry_index index;
	uint64_t next_seq;
	uint8_t **lists;               /* per status list, NULL while all zero */
	uint64_t *generations;
	uint32_t nlists;
};

/* ---- registry_index.c ----------------------------------------------------- */

uint64_t registry_hash(const struct registry_hashkey *key, const char *s, size_t len);
void registry_arena_release(const void *p);
void registry_arena_sweep(struct registry_arena *a);
int registry_vec_reserve(struct registry_vec *v, size_t extra);
uint32_t registry_vec_after(const struct registry_vec *v, uint64_t seq);
int registry_intern_find(const struct registry_intern *t, const struct registry_hashkey *key, const char *s,
			 uint32_t *ret_id);
void registry_slots_put(struct registry_slot *slots, uint32_t mask, uint32_t id, uint32_t h);
int registry_intern_add(struct registry_intern *t, const struct registry_hashkey *key, const char *s,
			uint32_t *ret_id);
struct registry_group *registry_map_find(const struct registry_map *m, const struct registry_hashkey *key,
					 const char *s);
int registry_index_init(struct registry_index *ix, const struct registry_hashkey *key);
void registry_index_free(struct registry_index *ix);
struct registry_rec *registry_index_lookup(const struct registry_index *ix, const char *jti, uint64_t h);
struct registry_rec *registry_index_get(const struct registry_index *ix, const char *jti);
int registry_table_reserve(struct registry_index *ix, size_t count);
uint32_t registry_nonactive_next(const struct registry_index *ix, uint32_t pos);
int registry_index_link(struct registry_index *ix, struct registry_rec *rec);
int registry_rec_new(struct registry_index *ix, const struct registry_entry *e, uint64_t seq, uint64_t h,
		     struct registry_rec **ret_rec);
int registry_bits_reserve(struct registry *reg, uint32_t idx, enum registry_status status);
void registry_bits_set(struct registry *reg, uint32_t idx, enum registry_status status);
void registry_apply_status(struct registry *reg, struct registry_rec *rec, enum registry_status status,
			   int64_t at, uint32_t reason);
void registry_rec_strings(const struct registry_index *ix, const struct registry_rec *rec,
			  char jti[static REGISTRY_JTI_MAX + 1], char org[static REGISTRY_ORG_MAX + 1],
			  char subject[static REGISTRY_SUBJECT_MAX + 1], char name[static REGISTRY_NAME_MAX + 1],
			  char description[static REGISTRY_DESCRIPTION_MAX + 1],
			  char client_id[static REGISTRY_CLIENT_ID_MAX + 1], char kid[static REGISTRY_KID_MAX + 1],
			  char parent[static REGISTRY_JTI_MAX + 1], char family[static REGISTRY_JTI_MAX + 1]);
void registry_copy_out(const struct registry_index *ix, const struct registry_rec *rec,
		       struct registry_record *out);

/* ---- registry_flush.c ----------------------------------------------------- */

int64_t registry_mono_ns(void);
int registry_write_all(int fd, const uint8_t *buf, size_t len);
int registry_fsync_dir(const char *dir);
void registry_fail(struct registry *reg, const char *what, int err);
void registry_fail_for_good(struct registry *reg, const char *what, int err);
int registry_sync(struct registry *reg);
int registry_recover(struct registry *reg);
int registry_queue_reserve(struct registry_queue *q, size_t bytes);
int registry_queue_entry(struct registry_queue *q, const struct registry_entry *e);
void registry_queue_waiter(struct registry_queue *q, registry_done_fn done, void *arg);
void registry_queue_release(struct registry_queue *q);
void registry_queue_answer(struct registry_queue *q, int result);
void registry_queue_take(struct registry *reg, struct registry_queue *batch);
int registry_write_batch(struct registry *reg, const struct registry_queue *batch);
void *registry_flusher(void *arg);

/* ---- registry_load.c ------------------------------------------------------ */

int registry_load(struct registry *reg, size_t size);
int registry_init_file(struct registry *reg);

/* ---- registry_compact.c --------------------------------------------------- */

int registry_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int force_check,
			   int *ret_compacted);

/* ---- registry.c ----------------------------------------------------------- */

int registry_expired_for_good(const struct registry *reg, int64_t exp, int64_t now);

/* ---- test hooks (registry.c) ---------------------------------------------- */

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

/* registry_recover now, on the caller's thread, when the registry has
 * failed (0 when it has not), as the flusher does every REGISTRY_RETRY_MS:
 * a test need not wait for the flusher's clock. */
int registry_internal_recover(struct registry *reg);

/* paused 1: the flusher makes no timed retry of a failed disk and no timed
 * interval fdatasync until called again with 0, so that a test sees the
 * file as the failure left it, whatever the machine's speed, and drives
 * recovery with registry_internal_recover / registry_internal_sync. */
void registry_internal_pause_timers(struct registry *reg, int paused);

/* The interval policy's periodic fdatasync, now on the caller's thread
 * (dirty or not): 0, or -EIO when it failed or the registry had failed. */
int registry_internal_sync(struct registry *reg);

#endif
