/* registry: every issued token's metadata, in an append-only file
 * (state_dir/registry.log, format in registry_codec.h) and an in-memory
 * index by jti, org, subject and parent/family, rebuilt at open (SPEC §7).
 *
 * Durability.  Every change is applied to the index at once (under the write
 * lock, so checks like "revoked is final" and the change are atomic) and
 * queued for the file.  One flusher thread writes what is queued and, under
 * fsync=always, fdatasyncs once for everything it wrote: concurrent writers
 * share one fsync (group commit).  A change is acknowledged through its done
 * callback only once durable: after the fsync (always) or after the write
 * (interval, with an fsync every REGISTRY_INTERVAL_MS).  done runs on the
 * flusher thread, exactly once per accepted change; the caller hops back to
 * its own thread.  A write or fsync failure (a full or read-only disk)
 * fails that batch (-EIO: nothing of it is acknowledged) and every change
 * until the disk takes writes again (-EIO at once, nothing applied); the
 * daemon reports the registry as failed meanwhile.  The failed batch's
 * changes stay in the index: the flusher retries every REGISTRY_RETRY_MS,
 * first cutting off whatever a short write left past the last whole batch
 * (so the file never holds half a batch before newer ones), then writing
 * the failed batches ahead of anything newer and fdatasyncing; once that
 * succeeds changes are accepted again, without a restart.  So a change
 * answered -EIO may still become durable (a client must treat it as
 * unknown), and if the process ends first it is not in the file, whose
 * tail is at worst torn (truncated at the next open).  While more
 * than 64 MiB wait for the disk, changes are refused with -EAGAIN instead
 * of blocking the caller's thread. 
 *
 * Reads (lookups, lists, status-list slices) take the read lock and copy
 * out; nothing returned points into the index.
 *
 * Org scoping.  Every call that reads or changes records takes org_scope:
 * NULL (an admin without org) sees every org; a string confines the call to
 * records whose org equals it, and a record of another org behaves exactly
 * as a missing one (-ENOENT), so that a caller cannot even learn it exists.
 *
 * Recovery at open: a torn tail is truncated and logged (offset, bytes); a
 * corrupt middle refuses with -EBADMSG and a log line naming the offset and
 * the repair command `hsmjwtctl registry check --repair`.
 *
 * Compaction rewrites the file with one TOKEN frame per record still worth
 * keeping (status folded in; records expired for longer than `leeway` are
 * dropped, deleted ones too once expired: a deleted unexpired token must stay
 * revoked), after a META frame: write registry.log.new, fsync, rename, fsync
 * the directory.  The daemon runs it in the flusher thread when the file
 * holds more than REGISTRY_COMPACT_MIN_FRAMES frames and over half of them
 * are superseded or dropped; hsmjwtctl runs it on demand. */
#ifndef HSMJWT_REGISTRY_H
#define HSMJWT_REGISTRY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/registry_codec.h"

#define REGISTRY_FILE "registry.log"
#define REGISTRY_INTERVAL_MS 1000
#define REGISTRY_COMPACT_MIN_FRAMES 100000
#define REGISTRY_MAX_RECORDS 50000000    /* refuse to grow the index past this */
#define REGISTRY_LIST_MAX 1000           /* the largest page a list returns */
#define REGISTRY_LIST_SCAN_MAX 100000    /* records a list call may look at */
#define REGISTRY_STATUSLIST_SIZE 65536   /* entries per status list (SPEC §4.2) */

enum registry_fsync {
	REGISTRY_FSYNC_ALWAYS,
	REGISTRY_FSYNC_INTERVAL,
};

struct registry;

/* Called once per accepted change, on the flusher thread: result 0 when the
 * change is durable, -EIO when it cannot be made so. */
typedef void (*registry_done_fn)(void *arg, int result);

/* One record as the API shows it: the TOKEN fields with the current status. */
struct registry_record {
	uint64_t seq;                     /* of its TOKEN frame: the list cursor */
	char jti[REGISTRY_JTI_MAX + 1];
	enum registry_type type;
	enum registry_status status;
	char org[REGISTRY_ORG_MAX + 1];
	char subject[REGISTRY_SUBJECT_MAX + 1];
	char name[REGISTRY_NAME_MAX + 1];
	char description[REGISTRY_DESCRIPTION_MAX + 1];
	char client_id[REGISTRY_CLIENT_ID_MAX + 1];
	char kid[REGISTRY_KID_MAX + 1];
	char parent[REGISTRY_JTI_MAX + 1];
	char family[REGISTRY_JTI_MAX + 1];
	int64_t iat;
	int64_t exp;
	int64_t status_at;                /* last status change, iat if none */
	char reason[REGISTRY_REASON_MAX + 1];
	uint32_t status_idx;              /* REGISTRY_NO_INDEX when none */
};

struct registry_stats {
	uint64_t records;                 /* in the index */
	uint64_t frames;                  /* in the file */
	uint64_t file_bytes;
	uint32_t next_status_idx;
	int failed;                       /* a write or fsync failed: changes refused until a retry succeeds */
};

/* Opens (creating it if missing) state_dir/registry.log, recovers, builds
 * the index and starts the flusher.  The caller holds the state_dir lock
 * (service_lock_state_dir): one writer per file. */
int registry_open(const char *state_dir, enum registry_fsync fsync, int64_t leeway, struct registry **ret_registry);
/* Writes and fsyncs whatever is queued (acknowledging it), stops the
 * flusher, frees.  NULL is fine. */
void registry_close(struct registry *reg);

/* A fresh status-list index, never handed out before (across restarts and
 * compactions, as long as a record or the META frame holds it). */
int registry_reserve_index(struct registry *reg, uint32_t *ret_idx);

/* Registers a token (rec->seq, status_at and reason are ignored; status must
 * be ACTIVE).  -EEXIST if the jti is known, -EPERM when rec->parent names a
 * record that is not ACTIVE (revoked, deleted, suspended: checked with the
 * registration under one lock, so that a child registered after its
 * parent's revocation cascade is refused instead of left active; a parent
 * the registry does not know is let be: it holds no status for it, and one
 * compacted away had expired), -EINVAL for a bad field, -ENOSPC past
 * REGISTRY_MAX_RECORDS, -EIO when the registry has failed.  On 0, done will
 * be called. */
int registry_add(struct registry *reg, const struct registry_record *rec, registry_done_fn done, void *arg);

/* Consumes a single-use token and registers what replaces it, as one change
 * (the refresh grant's rotation, SPEC §5.3; the code grant's three tokens).
 * jti, unless NULL, goes ACTIVE -> REVOKED with reason and nothing else
 * changes with it — unlike registry_set_status, which would revoke every
 * record whose family is jti, i.e. for a family's first refresh token the
 * family's live tokens.  add[0..n_add) are registered as registry_add does.
 * Both happen under one write lock: of several callers consuming one jti
 * exactly one succeeds, and whoever finds jti consumed also finds its
 * replacements registered, so that a revocation of the family made then
 * reaches them.  -EALREADY when jti's record is not ACTIVE (*ret_status, may
 * be NULL, gets its status), -ENOENT when jti is unknown, -EEXIST when a jti
 * of add is known (or given twice), -EPERM when a parent of add is not
 * ACTIVE (as registry_add), -EINVAL for a bad record or more than
 * REGISTRY_CONSUME_MAX records; nothing has changed then.  -ENOMEM may leave
 * a prefix of add registered (tokens never handed out) and jti unconsumed.
 * On 0, done will be called once. */
#define REGISTRY_CONSUME_MAX 8
int registry_consume(struct registry *reg, const char *jti, int64_t now, const char *reason,
		     const struct registry_record *add, size_t n_add, registry_done_fn done, void *arg,
		     enum registry_status *ret_status);

/* Sets one token's status.  ACTIVE <-> SUSPENDED freely; REVOKED and DELETED
 * are final: leaving REVOKED for ACTIVE/SUSPENDED is -EPERM (409), DELETED
 * may follow REVOKED, nothing leaves DELETED (-EPERM), and setting the
 * status a record already has is a no-op that still succeeds (and calls
 * done).  Revoking or deleting a token also revokes every record whose
 * parent or family is its jti (SPEC §4.2 / §5.5); *ret_changed (may be
 * NULL) counts the records whose status changed.  -ENOENT when the jti is
 * unknown within org_scope. */
int registry_set_status(struct registry *reg, const char *jti, const char *org_scope,
			enum registry_status status, int64_t now, const char *reason,
			registry_done_fn done, void *arg, size_t *ret_changed);

/* Revokes a jti the registry has never seen (RFC 7009 on a token minted
 * offline): records it as an UNREGISTERED record of org (""), revoked, kept
 * until exp.  -EEXIST when the jti is known (in any org: the caller then
 * treats it as unknown in its scope and answers 200 without a change). */
int registry_revoke_unregistered(struct registry *reg, const char *jti, const char *org, int64_t exp,
				 int64_t now, const char *reason, registry_done_fn done, void *arg);

/* Revokes every not yet revoked/deleted, unexpired token of subject within
 * org_scope (with their dependents).  *ret_count: tokens whose status
 * changed (0 is a success: done is still called). */
int registry_revoke_subject(struct registry *reg, const char *subject, const char *org_scope, int64_t now,
			    registry_done_fn done, void *arg, size_t *ret_count);

/* The children of parent_jti (records naming it as their parent) that are
 * ACTIVE and unexpired at now, whatever their org: *ret_count (0 for a
 * parent without any, or unknown).  Bounds POST /renew per parent. */
int registry_count_children(struct registry *reg, const char *parent_jti, int64_t now, size_t *ret_count);

/* Parent tokens (type PARENT) ACTIVE and unexpired at now, in every org:
 * *ret_count, for the hsmjwt_parent_tokens_active gauge.  The index keeps
 * the parent records apart, so this walks them only, not every record. */
int registry_count_active_parents(struct registry *reg, int64_t now, uint64_t *ret_count);

/* One record within org_scope: 0 and *ret_record, or -ENOENT. */
int registry_get(struct registry *reg, const char *jti, const char *org_scope, struct registry_record *ret_record);

/* What verification needs to know about a genuinely signed token with this
 * jti and org claim ("" when none): *ret_found = 0 when the registry does
 * not know it (status meaningless), else 1 and *ret_status.  An
 * UNREGISTERED record applies only when its org is "" (an unconfined admin
 * revoked it) or equals token_org: a confined caller cannot revoke another
 * org's offline token by guessing its jti. */
int registry_check(struct registry *reg, const char *jti, const char *token_org, int *ret_found,
		   enum registry_status *ret_status);

/* A page of records, in seq order, starting after cursor (0: the first).
 * Filters: status (-1: any but DELETED; DELETED lists only deleted ones;
 * REGISTRY_EXPIRED_FILTER lists active/suspended records with exp <= now and
 * a status filter of ACTIVE or SUSPENDED excludes expired ones), subject and
 * type (-1: any), org_scope.  At most limit (<= REGISTRY_LIST_MAX) records,
 * looking at no more than REGISTRY_LIST_SCAN_MAX: *ret_next_cursor is the seq
 * to continue after, or 0 when the end was reached.  *ret_records is
 * malloc'd (free it), possibly with *ret_count 0. */
#define REGISTRY_EXPIRED_FILTER 100
struct registry_query {
	const char *org_scope;
	int status;                       /* enum registry_status, -1 or REGISTRY_EXPIRED_FILTER */
	const char *subject;              /* NULL: any */
	int type;                         /* enum registry_type or -1 */
	int revocations;                  /* 1: only REVOKED or SUSPENDED (DELETED counts as revoked), unexpired */
	uint64_t cursor;
	size_t limit;
	int64_t now;
};
int registry_list(struct registry *reg, const struct registry_query *query, struct registry_record **ret_records,
		  size_t *ret_count, uint64_t *ret_next_cursor);

/* Status list `list` (indices list*REGISTRY_STATUSLIST_SIZE ...): the 2-bit
 * entries packed least-significant bit first (0 valid, 1 invalid = revoked
 * or deleted, 2 suspended) into ret_bits (REGISTRY_STATUSLIST_SIZE / 4
 * bytes), and a generation that changes whenever any entry of that list
 * does.  -ENOENT when no index of that list has been handed out yet. */
int registry_statuslist(struct registry *reg, uint32_t list, uint8_t *ret_bits, uint64_t *ret_generation);

/* Compacts now (see above; leeway is registry_open's).  The flusher is
 * paused meanwhile.  *ret_stats (may be NULL): the index after it. */
int registry_compact(struct registry *reg, int64_t now, struct registry_stats *ret_stats);

void registry_get_stats(struct registry *reg, struct registry_stats *ret_stats);

/* A done callback for callers that block: registry_wait_init, pass
 * registry_wait_done and the struct, then registry_wait returns the result. */
struct registry_wait {
	pthread_mutex_t mutex;
	pthread_cond_t cond;
	int finished;
	int result;
};
void registry_wait_init(struct registry_wait *w);
void registry_wait_done(void *arg, int result);
int registry_wait(struct registry_wait *w);

#endif
