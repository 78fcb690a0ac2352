/* renew: auto-renewal of parent/child pairs (SPEC §5.5).
 *
 * Per parent issued with auto_renew the daemon keeps an entry: what its
 * children are made from (a copy of the parent's claims), the parent's exp,
 * the lifetime of each child, its newest child and the subscribers waiting
 * for the next one.  A thread of its own (its own token session, the key set
 * taken from the keyring for each renewal, like the keyring thread) gives
 * the parent its next child when renew_next_due says, registers it, waits
 * until the registration is durable, and only then publishes it as the
 * newest child and hands it to the subscribers.
 *
 * Nothing is persisted: an entry is made from the parent token itself when
 * it presents itself (POST /token-pairs with auto_renew, /tokens/latest or
 * /tokens/stream by an auto_renew parent the daemon does not know, e.g.
 * after a restart).  The newest child's token string lives only here, in
 * memory — never in the registry or a log — and is wiped when it is
 * replaced or its entry dropped.
 *
 * Scheduling (renew_next_due): a child living longer than renew_before is
 * renewed renew_before seconds before its exp; a shorter one (a
 * child_expires_in at or below renew_before) at half its life, at least a
 * second after its iat.  A child whose exp reaches the parent's gets no
 * successor: the entry is dropped when the parent expires.
 *
 * Dropping: an entry whose parent has expired, or whose parent the registry
 * no longer holds active (revoked, deleted, suspended — suspension does not
 * survive here: the entry is made again when the parent, active again,
 * presents itself), is dropped and its subscribers get a RENEW_EVENT_END
 * naming the reason.  renew_sweep looks at the registry every
 * RENEW_CHECK_SECONDS for entries with subscribers; every renewal looks
 * before it issues.
 *
 * Faults: a renewal that cannot sign (HSM_E_DEVICE, HSM_E_STALE while the
 * keyring reloads) or register is retried after RENEW_BACKOFF_MIN_SECONDS,
 * doubling to RENEW_BACKOFF_MAX_SECONDS; the current child stays the newest
 * meanwhile.
 *
 * Locking: one mutex guards the entries; notifications run under it (see
 * renew_notify_fn).  Every function is safe from any thread. */
#ifndef HSMJWT_RENEW_H
#define HSMJWT_RENEW_H

#include <jansson.h>
#include <stdint.h>

#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/keyring.h"
#include "hsmjwt/registry.h"

/* Entries kept at once: an auto_renew pair beyond it is refused (503). */
#define RENEW_MAX_PARENTS 10000
/* Subscribers (SSE streams) in all (503 beyond) and per parent (429). */
#define RENEW_MAX_SUBSCRIBERS 1024
#define RENEW_MAX_SUBSCRIBERS_PER_PARENT 8
/* POST /renew refuses (429) a parent with this many active, unexpired
 * children: each is a record and a status-list index, and /renew asks for
 * no role.  Auto-renewal and pairs make one child at a time. */
#define RENEW_MAX_LIVE_CHILDREN 8
#define RENEW_TICK_MS 250
#define RENEW_CHECK_SECONDS 1
#define RENEW_BACKOFF_MIN_SECONDS 1
#define RENEW_BACKOFF_MAX_SECONDS 16

struct renew;
struct renew_sub;

/* The parent of an entry.  Everything is copied. */
struct renew_parent {
	const char *jti;
	const char *org;              /* "" when the parent has none */
	const json_t *claims;         /* the parent's verified claims */
	int64_t exp;
	int64_t child_ttl;            /* each child's lifetime, capped at the parent's exp */
};

/* A child, registered durably.  Everything is copied. */
struct renew_child {
	const char *token;
	const char *jti;
	int64_t iat;
	int64_t exp;
};

enum renew_event_kind {
	RENEW_EVENT_CHILD,            /* token, jti, exp: the parent's newest child */
	RENEW_EVENT_END,              /* reason: "revoked", "suspended" or "expired"; nothing follows */
};

struct renew_event {
	enum renew_event_kind kind;
	const char *token;
	const char *jti;
	int64_t exp;
	const char *reason;
};

/* Called with renew's lock held, on whichever thread caused the event (the
 * renewal thread, or the subscriber's own within renew_subscribe): it must
 * not call back into renew, and copies what it keeps (event's strings live
 * for the call only). */
typedef void (*renew_notify_fn)(void *arg, const struct renew_event *event);

/* The entries without a thread (unit tests drive renew_sweep,
 * renew_next_job and renew_job_done with their own clock).  registry may be
 * NULL: no registry checks then. */
int renew_new(const struct config *cfg, struct registry *registry, struct renew **ret_renew);
/* renew_new plus the renewal thread and its token session.  The thread
 * adopts live's newest config version at the start of each round (a reload
 * changes renew_before and the lifetimes from the next round on).  live,
 * hsm, keyring and registry must outlive renew_free. */
int renew_start(struct config_live *live, struct hsm *hsm, struct keyring *keyring, struct registry *registry,
		struct renew **ret_renew);
/* Stops the thread (a renewal in progress finishes first, registration
 * included: call it before registry_close) and closes its session; from
 * then on renew_add and renew_subscribe answer -ECANCELED.  The entries
 * stay for renew_latest and renew_unsubscribe until renew_free.  NULL is
 * fine; so is a renew without thread. */
void renew_stop(struct renew *renew);
/* Frees everything, wiping the children (renew_stop first if started).
 * Every subscription must have been ended by renew_unsubscribe.  NULL is
 * fine. */
void renew_free(struct renew *renew);

/* Adds the entry of an auto-renewed parent whose first child is child
 * (registered durably already).  0, -EEXIST when the parent has one (left
 * as it is), -ENOSPC at RENEW_MAX_PARENTS, -ETIME when the parent has
 * expired by now, -ECANCELED when stopping, -EINVAL, -ENOMEM. */
int renew_add(struct renew *renew, const struct renew_parent *parent, const struct renew_child *child, int64_t now);
/* 0 while an entry could be added, else renew_add's -ENOSPC or -ECANCELED:
 * checked before issuing a pair, so that a full table refuses the request
 * instead of a pair being handed out without its renewal. */
int renew_room(struct renew *renew);
/* Drops parent_jti's entry (if any), telling its subscribers reason. */
void renew_remove(struct renew *renew, const char *parent_jti, const char *reason);
/* Entries held. */
size_t renew_count(struct renew *renew);

/* The newest child of parent_jti: 0 and *ret_latest (token malloc'd:
 * renew_latest_clear wipes it), or -ENOENT when there is no entry. */
struct renew_latest {
	char *token;
	char jti[ISSUE_JTI_LEN + 1];
	int64_t exp;
};
int renew_latest(struct renew *renew, const char *parent_jti, struct renew_latest *ret_latest);
void renew_latest_clear(struct renew_latest *latest);

/* Subscribes to parent_jti's children: notify gets the newest child at once
 * (before this returns), then each new one, then at most one END.  0 and
 * *ret_sub (for renew_unsubscribe), -ENOENT (no entry), -EMLINK (the
 * parent's RENEW_MAX_SUBSCRIBERS_PER_PARENT), -ENOSPC
 * (RENEW_MAX_SUBSCRIBERS), -ECANCELED, -ENOMEM. */
int renew_subscribe(struct renew *renew, const char *parent_jti, renew_notify_fn notify, void *arg,
		    struct renew_sub **ret_sub);
/* Ends a subscription (also one whose entry was dropped) and frees sub:
 * once it returns, notify is never called for it again.  NULL is fine. */
void renew_unsubscribe(struct renew *renew, struct renew_sub *sub);

/* ---- the renewal thread's steps, exposed for tests ---------------------- */

/* When the child after this one is due (seconds), per the rule above;
 * parent_exp when no successor is needed. */
int64_t renew_next_due(int64_t child_iat, int64_t child_exp, int64_t parent_exp, int64_t renew_before);

/* Drops the entries whose parent has expired by now and — with a registry,
 * at most every RENEW_CHECK_SECONDS per entry — those with subscribers
 * whose parent is no longer active.  Returns how many were dropped.  One
 * caller at a time (the renewal thread). */
size_t renew_sweep(struct renew *renew, int64_t now);

/* One renewal to carry out: copies of what it needs. */
struct renew_job {
	char parent_jti[ISSUE_JTI_LEN + 1];
	char org[REGISTRY_ORG_MAX + 1];
	json_t *claims;               /* owned: renew_job_clear */
	int64_t parent_exp;
	int64_t child_ttl;
};
/* The entry most overdue at now (due, and past any backoff): 0 and *ret_job,
 * or -ENOENT when none is due. */
int renew_next_job(struct renew *renew, int64_t now, struct renew_job *ret_job);
/* The outcome of job: result 0 publishes child as the parent's newest and
 * notifies the subscribers (when the entry is still there); a negative
 * result keeps the current child and backs the entry off. */
void renew_job_done(struct renew *renew, const struct renew_job *job, int result, const struct renew_child *child,
		    int64_t now);
void renew_job_clear(struct renew_job *job);

/* The request of a child of a parent with these claims (SPEC §4.2, §5.5):
 * sub, aud, org, client_id, scope and the custom claims, parent_jti, and a
 * lifetime of ttl capped at the parent's exp.  The request borrows from
 * parent_claims and from *ret_custom (a new object: json_decref it after
 * issuing).  -ETIME when the parent has expired by now, -EINVAL for claims
 * no parent of this service has, -ENOMEM. */
int renew_child_request(const json_t *parent_claims, int64_t ttl, int64_t now, struct issue_request *ret_request,
			json_t **ret_custom);

#endif
