/* Auto-renewal of parent/child pairs: the entries, their schedule, their
 * subscribers and the renewal thread (renew.h). */
#include "hsmjwt/renew.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "hsmjwt/clock.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

/* Power of two: a jti's hash is masked into it. */
#define RENEW_BUCKETS 4096

struct renew_entry;

struct renew_sub {
	struct renew_entry *entry;          /* NULL once the entry was dropped */
	renew_notify_fn notify;
	void *arg;
	struct renew_sub *next;             /* in entry->subs */
};

struct renew_entry {
	char parent_jti[ISSUE_JTI_LEN + 1];
	char org[REGISTRY_ORG_MAX + 1];
	json_t *claims;                     /* what a child is made from */
	int64_t parent_exp;
	int64_t child_ttl;
	char *child_token;                  /* the newest child, wiped when replaced */
	char child_jti[ISSUE_JTI_LEN + 1];
	int64_t child_iat, child_exp;
	int64_t due;                        /* renew_next_due of the newest child */
	int64_t retry_at;                   /* after a failed renewal: not before */
	int64_t backoff;                    /* seconds; 0 after a success */
	int64_t next_check;                 /* renew_sweep's next registry look */
	struct renew_sub *subs;
	size_t sub_count;
	struct renew_entry *next;           /* hash chain */
};

/* An entry renew_sweep asks the registry about. */
struct renew_look {
	char jti[ISSUE_JTI_LEN + 1];
	char org[REGISTRY_ORG_MAX + 1];
	const char *reason;
};

struct renew {
	/* The renewal thread's config version, adopted once per round (live
	 * NULL: a fixed config, renew_new's). */
	const struct config *cfg;
	struct config_live *live;
	struct hsm *hsm;
	struct keyring *keyring;
	struct registry *registry;
	pthread_mutex_t lock;               /* guards everything below but the thread's own */
	pthread_cond_t wake;
	struct renew_entry *buckets[RENEW_BUCKETS];
	size_t count;
	size_t sub_count;                   /* subscriptions not yet unsubscribed */
	int stopping;
	/* cfg->renew_before as of the thread's last round, for renew_set_child
	 * on whichever thread adds an entry. */
	int64_t renew_before;
	atomic_int stop_now;                /* the thread's view of stopping, without the lock */
	pthread_t thread;
	int thread_started;
	struct hsm_session *session;        /* the thread's own */
	/* renew_sweep's: entries with subscribers are at most
	 * RENEW_MAX_SUBSCRIBERS. */
	struct renew_look *look;
};

/* ---- pure parts ------------------------------------------------------------ */

int64_t renew_next_due(int64_t child_iat, int64_t child_exp, int64_t parent_exp, int64_t renew_before)
{
	int64_t life = child_exp - child_iat, due;

	/* The parent cannot outlive this child: no successor, the entry goes
	 * when the parent expires. */
	if (child_exp >= parent_exp)
		return parent_exp;
	/* A child no longer than renew_before would be due before it was
	 * issued (config_validate keeps child_ttl above renew_before, but a
	 * pair may ask for a shorter child_expires_in): half its life then. */
	due = life > renew_before ? child_exp - renew_before : child_iat + life / 2;
	if (due < child_iat + 1)
		due = child_iat + 1;
	return due;
}

int renew_child_request(const json_t *parent_claims, int64_t ttl, int64_t now, struct issue_request *ret_request,
			json_t **ret_custom)
{
	const char *sub = json_plain_string(json_object_get(parent_claims, "sub"));
	const char *jti = json_plain_string(json_object_get(parent_claims, "jti"));
	const char *type = json_plain_string(json_object_get(parent_claims, "token_type"));
	const json_t *exp = json_object_get(parent_claims, "exp");
	const json_t *aud = json_object_get(parent_claims, "aud");
	struct issue_request req = { .type = ISSUE_CHILD, .alg = JWS_ALG_INVALID };
	json_t *custom = NULL;
	int r;

	if (sub == NULL || jti == NULL || type == NULL || strcmp(type, "parent") != 0 || !json_is_integer(exp) ||
	    (aud != NULL && !json_is_string(aud) && !json_is_array(aud)) || ttl < 1)
		return -EINVAL;
	if (json_integer_value(exp) <= now)
		return -ETIME;
	/* SPEC §5.5: a child never outlives its parent. */
	if (ttl > json_integer_value(exp) - now)
		ttl = json_integer_value(exp) - now;
	r = issue_custom_claims_of(parent_claims, &custom);
	if (r < 0)
		return r;
	req.subject = sub;
	req.audience = aud;
	req.scope = json_plain_string(json_object_get(parent_claims, "scope"));
	req.client_id = json_plain_string(json_object_get(parent_claims, "client_id"));
	req.org = json_plain_string(json_object_get(parent_claims, "org"));
	req.claims = custom;
	req.ttl = ttl;
	req.parent_jti = jti;
	*ret_request = req;
	*ret_custom = custom;
	return 0;
}

/* ---- the entries ------------------------------------------------------------ */

static size_t renew_bucket(const char *jti)
{
	uint32_t h = 2166136261u;   /* FNV-1a */

	for (const unsigned char *p = (const unsigned char *)jti; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h & (RENEW_BUCKETS - 1);
}

/* Under lock. */
static struct renew_entry **renew_find_slot(struct renew *renew, const char *jti)
{
	struct renew_entry **slot = &renew->buckets[renew_bucket(jti)];

	while (*slot != NULL && strcmp((*slot)->parent_jti, jti) != 0)
		slot = &(*slot)->next;
	return slot;
}

static struct renew_entry *renew_find(struct renew *renew, const char *jti)
{
	return *renew_find_slot(renew, jti);
}

static void renew_wipe_token(char **token)
{
	if (*token != NULL) {
		OPENSSL_cleanse(*token, strlen(*token));
		free(*token);
		*token = NULL;
	}
}

static void renew_entry_free(struct renew_entry *e)
{
	renew_wipe_token(&e->child_token);
	json_decref(e->claims);
	free(e);
}

/* Under lock: tells the subscribers, detaches them (each is freed by its
 * renew_unsubscribe) and frees the entry. */
static void renew_drop(struct renew *renew, struct renew_entry **slot, const char *reason)
{
	struct renew_entry *e = *slot;
	const struct renew_event end = { .kind = RENEW_EVENT_END, .reason = reason };

	*slot = e->next;
	renew->count--;
	for (struct renew_sub *s = e->subs, *next; s != NULL; s = next) {
		next = s->next;
		s->notify(s->arg, &end);
		s->entry = NULL;
		s->next = NULL;
	}
	log_info("\"auto-renewal ended\" parent_jti=%s reason=%s subscribers=%zu", e->parent_jti, reason, e->sub_count);
	renew_entry_free(e);
}

/* Under lock. */
static void renew_notify_child(const struct renew_entry *e, struct renew_sub *only)
{
	const struct renew_event ev = { .kind = RENEW_EVENT_CHILD, .token = e->child_token, .jti = e->child_jti,
					.exp = e->child_exp };

	for (struct renew_sub *s = only ? only : e->subs; s != NULL; s = only ? NULL : s->next)
		s->notify(s->arg, &ev);
}

/* Sets e's newest child; under lock (or before e is shared). */
static int renew_set_child(const struct renew *renew, struct renew_entry *e, const struct renew_child *child)
{
	char *token = strdup(child->token);

	if (token == NULL)
		return -ENOMEM;
	renew_wipe_token(&e->child_token);
	e->child_token = token;
	snprintf(e->child_jti, sizeof(e->child_jti), "%s", child->jti);
	e->child_iat = child->iat;
	e->child_exp = child->exp;
	e->due = renew_next_due(child->iat, child->exp, e->parent_exp, renew->renew_before);
	e->backoff = 0;
	e->retry_at = 0;
	return 0;
}

static int renew_parent_valid(const struct renew_parent *parent, const struct renew_child *child)
{
	return parent->jti != NULL && parent->jti[0] != '\0' && strlen(parent->jti) <= ISSUE_JTI_LEN &&
	       parent->org != NULL && strlen(parent->org) <= REGISTRY_ORG_MAX && json_is_object(parent->claims) &&
	       parent->child_ttl >= 1 && child->token != NULL && child->token[0] != '\0' && child->jti != NULL &&
	       strlen(child->jti) <= ISSUE_JTI_LEN && child->exp > child->iat;
}

int renew_add(struct renew *renew, const struct renew_parent *parent, const struct renew_child *child, int64_t now)
{
	struct renew_entry **slot, *e = NULL;
	int r;

	if (!renew_parent_valid(parent, child))
		return -EINVAL;
	if (parent->exp <= now)
		return -ETIME;
	pthread_mutex_lock(&renew->lock);
	slot = renew_find_slot(renew, parent->jti);
	if (renew->stopping)
		r = -ECANCELED;
	else if (*slot != NULL)
		r = -EEXIST;
	else if (renew->count >= RENEW_MAX_PARENTS)
		r = -ENOSPC;
	else if ((e = calloc(1, sizeof(*e))) == NULL || (e->claims = json_deep_copy(parent->claims)) == NULL)
		r = -ENOMEM;
	else {
		snprintf(e->parent_jti, sizeof(e->parent_jti), "%s", parent->jti);
		snprintf(e->org, sizeof(e->org), "%s", parent->org);
		e->parent_exp = parent->exp;
		e->child_ttl = parent->child_ttl;
		r = renew_set_child(renew, e, child);
	}
	if (r == 0) {
		*slot = e;
		renew->count++;
		e = NULL;
	}
	pthread_mutex_unlock(&renew->lock);
	if (e != NULL)
		renew_entry_free(e);
	return r;
}

int renew_room(struct renew *renew)
{
	int r = 0;

	pthread_mutex_lock(&renew->lock);
	if (renew->stopping)
		r = -ECANCELED;
	else if (renew->count >= RENEW_MAX_PARENTS)
		r = -ENOSPC;
	pthread_mutex_unlock(&renew->lock);
	return r;
}

void renew_remove(struct renew *renew, const char *parent_jti, const char *reason)
{
	struct renew_entry **slot;

	pthread_mutex_lock(&renew->lock);
	slot = renew_find_slot(renew, parent_jti);
	if (*slot != NULL)
		renew_drop(renew, slot, reason);
	pthread_mutex_unlock(&renew->lock);
}

size_t renew_count(struct renew *renew)
{
	size_t n;

	pthread_mutex_lock(&renew->lock);
	n = renew->count;
	pthread_mutex_unlock(&renew->lock);
	return n;
}

int renew_latest(struct renew *renew, const char *parent_jti, struct renew_latest *ret_latest)
{
	struct renew_entry *e;
	int r = -ENOENT;

	pthread_mutex_lock(&renew->lock);
	e = renew_find(renew, parent_jti);
	if (e != NULL) {
		char *token = strdup(e->child_token);
		r = -ENOMEM;
		if (token != NULL) {
			ret_latest->token = token;
			memcpy(ret_latest->jti, e->child_jti, sizeof(ret_latest->jti));
			ret_latest->exp = e->child_exp;
			r = 0;
		}
	}
	pthread_mutex_unlock(&renew->lock);
	return r;
}

void renew_latest_clear(struct renew_latest *latest)
{
	renew_wipe_token(&latest->token);
}

int renew_subscribe(struct renew *renew, const char *parent_jti, renew_notify_fn notify, void *arg,
		    struct renew_sub **ret_sub)
{
	struct renew_entry *e;
	struct renew_sub *sub = NULL;
	int r = 0;

	pthread_mutex_lock(&renew->lock);
	e = renew_find(renew, parent_jti);
	if (renew->stopping)
		r = -ECANCELED;
	else if (e == NULL)
		r = -ENOENT;
	else if (e->sub_count >= RENEW_MAX_SUBSCRIBERS_PER_PARENT)
		r = -EMLINK;
	else if (renew->sub_count >= RENEW_MAX_SUBSCRIBERS)
		r = -ENOSPC;
	else if ((sub = calloc(1, sizeof(*sub))) == NULL)
		r = -ENOMEM;
	if (r == 0) {
		sub->entry = e;
		sub->notify = notify;
		sub->arg = arg;
		sub->next = e->subs;
		e->subs = sub;
		e->sub_count++;
		renew->sub_count++;
		/* The revocation of a parent with a fresh subscriber is looked for
		 * at the next sweep, not a child's lifetime later. */
		e->next_check = 0;
		renew_notify_child(e, sub);
		*ret_sub = sub;
	}
	pthread_mutex_unlock(&renew->lock);
	return r;
}

void renew_unsubscribe(struct renew *renew, struct renew_sub *sub)
{
	if (sub == NULL)
		return;
	pthread_mutex_lock(&renew->lock);
	if (sub->entry != NULL) {
		struct renew_sub **p = &sub->entry->subs;
		while (*p != sub)
			p = &(*p)->next;
		*p = sub->next;
		sub->entry->sub_count--;
	}
	renew->sub_count--;
	pthread_mutex_unlock(&renew->lock);
	free(sub);
}

/* ---- sweeping and scheduling --------------------------------------------- */

/* A parent the registry holds as anything but active: why its entry goes,
 * else NULL. */
static const char *renew_parent_gone(struct registry *registry, const char *jti, const char *org)
{
	enum registry_status status;
	int found = 0;

	if (registry_check(registry, jti, org, &found, &status) < 0 || !found)
		return "revoked";
	if (status == REGISTRY_ACTIVE)
		return NULL;
	return status == REGISTRY_SUSPENDED ? "suspended" : "revoked";
}

size_t renew_sweep(struct renew *renew, int64_t now)
{
	struct renew_look *look = renew->registry != NULL ? renew->look : NULL;
	size_t n_look = 0, dropped = 0;

	pthread_mutex_lock(&renew->lock);
	for (size_t b = 0; b < RENEW_BUCKETS; b++) {
		struct renew_entry **slot = &renew->buckets[b];
		while (*slot != NULL) {
			struct renew_entry *e = *slot;
			if (e->parent_exp <= now) {
				renew_drop(renew, slot, "expired");
				dropped++;
				continue;
			}
			if (look != NULL && e->subs != NULL && now >= e->next_check && n_look < RENEW_MAX_SUBSCRIBERS) {
				e->next_check = now + RENEW_CHECK_SECONDS;
				memcpy(look[n_look].jti, e->parent_jti, sizeof(look[n_look].jti));
				memcpy(look[n_look].org, e->org, sizeof(look[n_look].org));
				n_look++;
			}
			slot = &e->next;
		}
	}
	pthread_mutex_unlock(&renew->lock);
	/* The registry outside renew's lock: a registry done callback may
	 * be waiting for it. */
	for (size_t i = 0; i < n_look; i++)
		look[i].reason = renew_parent_gone(renew->registry, look[i].jti, look[i].org);
	pthread_mutex_lock(&renew->lock);
	for (size_t i = 0; i < n_look; i++) {
		struct renew_entry **slot;
		if (look[i].reason == NULL)
			continue;
		slot = renew_find_slot(renew, look[i].jti);
		if (*slot != NULL) {
			renew_drop(renew, slot, look[i].reason);
			dropped++;
		}
	}
	pthread_mutex_unlock(&renew->lock);
	return dropped;
}

static int64_t renew_when(const struct renew_entry *e)
{
	return e->retry_at > e->due ? e->retry_at : e->due;
}

int renew_next_job(struct renew *renew, int64_t now, struct renew_job *ret_job)
{
	struct renew_entry *best = NULL;
	struct renew_job job;
	int r = -ENOENT;

	pthread_mutex_lock(&renew->lock);
	for (size_t b = 0; b < RENEW_BUCKETS; b++)
		for (struct renew_entry *e = renew->buckets[b]; e != NULL; e = e->next)
			/* A child whose exp reaches the parent's is due at the
			 * parent's exp: that is renew_sweep's drop, not a job. */
			if (e->due < e->parent_exp && renew_when(e) <= now && (best == NULL || renew_when(e) < renew_when(best)))
				best = e;
	if (best != NULL) {
		memset(&job, 0, sizeof(job));
		memcpy(job.parent_jti, best->parent_jti, sizeof(job.parent_jti));
		memcpy(job.org, best->org, sizeof(job.org));
		job.parent_exp = best->parent_exp;
		job.child_ttl = best->child_ttl;
		job.claims = json_deep_copy(best->claims);
		r = job.claims != NULL ? 0 : -ENOMEM;
		if (r == 0)
			*ret_job = job;
	}
	pthread_mutex_unlock(&renew->lock);
	return r;
}

void renew_job_done(struct renew *renew, const struct renew_job *job, int result, const struct renew_child *child,
		    int64_t now)
{
	struct renew_entry *e;

	pthread_mutex_lock(&renew->lock);
	e = renew_find(renew, job->parent_jti);
	if (e != NULL && result == 0 && child != NULL && renew_set_child(renew, e, child) == 0) {
		renew_notify_child(e, NULL);
	} else if (e != NULL) {
		e->backoff = e->backoff == 0 ? RENEW_BACKOFF_MIN_SECONDS :
			     e->backoff * 2 > RENEW_BACKOFF_MAX_SECONDS ? RENEW_BACKOFF_MAX_SECONDS : e->backoff * 2;
		e->retry_at = now + e->backoff;
	}
	pthread_mutex_unlock(&renew->lock);
}

void renew_job_clear(struct renew_job *job)
{
	json_decref(job->claims);
	job->claims = NULL;
}

/* ---- the renewal thread --------------------------------------------------- */

/* Issues, registers (durably) and publishes the next child of job's parent. */
static void renew_run(struct renew *renew, const struct renew_job *job, int64_t now)
{
	struct issue_request req;
	struct issue_result result = { 0 };
	struct registry_wait wait;
	struct renew_child child;
	const char *gone = renew_parent_gone(renew->registry, job->parent_jti, job->org);
	json_t *custom = NULL;
	struct keys *keys;
	char err[160] = "";
	int r;

	if (gone != NULL || job->parent_exp <= now) {
		renew_remove(renew, job->parent_jti, gone ? gone : "expired");
		return;
	}
	r = renew_child_request(job->claims, job->child_ttl, now, &req, &custom);
	if (r == -ETIME) {
		renew_remove(renew, job->parent_jti, "expired");
		return;
	}
	if (r == 0) {
		struct issue_ctx ictx = { renew->cfg, NULL, renew->session, now, renew->registry };
		keys = keyring_acquire(renew->keyring);
		ictx.keys = keys;
		r = issue_token(&ictx, &req, &result, err, sizeof(err));
		keys_release(keys);
	}
	json_decref(custom);
	if (r == 0) {
		registry_wait_init(&wait);
		r = registry_add(renew->registry, &result.record, registry_wait_done, &wait);
		if (r == 0)
			r = registry_wait(&wait);
		else {
			pthread_mutex_destroy(&wait.mutex);
			pthread_cond_destroy(&wait.cond);
		}
	}
	if (r == -EPERM) {
		/* The parent went between the look above and the registration
		 * (registry_add refused the child): the entry goes as it would
		 * have then.  Active again by now, it was suspended: revoking
		 * is final. */
		gone = renew_parent_gone(renew->registry, job->parent_jti, job->org);
		renew_remove(renew, job->parent_jti, gone ? gone : "suspended");
	} else if (r == 0) {
		child = (struct renew_child){ result.token, result.jti, result.record.iat, result.exp };
		renew_job_done(renew, job, 0, &child, now);
		log_debug("\"child renewed\" parent_jti=%s jti=%s exp=%lld", job->parent_jti, result.jti,
			  (long long)result.exp);
	} else {
		/* A token down affects every entry at once: limited. */
		log_limited(LOG_LEVEL_WARN, "\"auto-renewal failed, retrying\" parent_jti=%s error=%d", job->parent_jti, r);
		renew_job_done(renew, job, r, NULL, now);
	}
	issue_result_clear(&result);
}

static void renew_round(struct renew *renew)
{
	const struct config *before = renew->cfg;
	struct renew_job job;
	int64_t now = (int64_t)time(NULL);

	/* One config version for the whole round (a reload may change
	 * renew_before and the lifetimes). */
	config_live_adopt(renew->live, &renew->cfg);
	if (renew->cfg != before) {
		pthread_mutex_lock(&renew->lock);
		renew->renew_before = renew->cfg->renew_before;
		pthread_mutex_unlock(&renew->lock);
	}
	renew_sweep(renew, now);
	while (!atomic_load(&renew->stop_now) && renew_next_job(renew, now, &job) == 0) {
		renew_run(renew, &job, now);
		renew_job_clear(&job);
		now = (int64_t)time(NULL);
	}
}

static void *renew_main(void *arg)
{
	struct renew *renew = arg;
	struct timespec deadline;

	pthread_mutex_lock(&renew->lock);
	while (!renew->stopping) {
		deadline = clock_deadline(RENEW_TICK_MS);
		pthread_cond_timedwait(&renew->wake, &renew->lock, &deadline);
		if (renew->stopping)
			break;
		pthread_mutex_unlock(&renew->lock);
		renew_round(renew);
		pthread_mutex_lock(&renew->lock);
	}
	pthread_mutex_unlock(&renew->lock);
	return NULL;
}

/* ---- life ----------------------------------------------------------------- */

int renew_new(const struct config *cfg, struct registry *registry, struct renew **ret_renew)
{
	struct renew *renew = calloc(1, sizeof(*renew));

	if (renew == NULL || (renew->look = calloc(RENEW_MAX_SUBSCRIBERS, sizeof(*renew->look))) == NULL ||
	    clock_cond_init(&renew->wake) < 0) {
		if (renew != NULL)
			free(renew->look);
		free(renew);
		return -ENOMEM;
	}
	renew->cfg = cfg;
	renew->renew_before = cfg->renew_before;
	renew->registry = registry;
	pthread_mutex_init(&renew->lock, NULL);
	atomic_init(&renew->stop_now, 0);
	*ret_renew = renew;
	return 0;
}

int renew_start(struct config_live *live, struct hsm *hsm, struct keyring *keyring, struct registry *registry,
		struct renew **ret_renew)
{
	struct renew *renew = NULL;
	int r;

	if (live == NULL || registry == NULL || keyring == NULL || hsm == NULL)
		return -EINVAL;
	r = renew_new(config_live_boot(live), registry, &renew);
	if (r < 0)
		return r;
	/* From here on the thread's own reference (renew_free leaves it). */
	renew->live = live;
	renew->cfg = NULL;
	config_live_adopt(live, &renew->cfg);
	renew->renew_before = renew->cfg->renew_before;
	renew->hsm = hsm;
	renew->keyring = keyring;
	r = hsm_session_open(hsm, &renew->session);
	if (r == 0) {
		r = -pthread_create(&renew->thread, NULL, renew_main, renew);
		renew->thread_started = r == 0;
		if (r < 0)
			log_error("\"cannot start the auto-renewal thread\" error=\"%s\"", strerror(-r));
	}
	if (r < 0) {
		renew_stop(renew);
		renew_free(renew);
		return r;
	}
	*ret_renew = renew;
	return 0;
}

void renew_stop(struct renew *renew)
{
	if (renew == NULL)
		return;
	pthread_mutex_lock(&renew->lock);
	renew->stopping = 1;
	atomic_store(&renew->stop_now, 1);
	pthread_cond_broadcast(&renew->wake);
	pthread_mutex_unlock(&renew->lock);
	if (renew->thread_started) {
		pthread_join(renew->thread, NULL);
		renew->thread_started = 0;
	}
	hsm_session_close(renew->session);
	renew->session = NULL;
}

void renew_free(struct renew *renew)
{
	if (renew == NULL)
		return;
	renew_stop(renew);
	if (renew->sub_count != 0)
		log_warn("\"auto-renewal freed with subscriptions left\" subscribers=%zu", renew->sub_count);
	for (size_t b = 0; b < RENEW_BUCKETS; b++)
		while (renew->buckets[b] != NULL) {
			struct renew_entry *e = renew->buckets[b];
			renew->buckets[b] = e->next;
			/* A subscription outliving this would point at freed memory. */
			for (struct renew_sub *s = e->subs; s != NULL; s = s->next)
				s->entry = NULL;
			renew_entry_free(e);
		}
	config_live_leave(renew->live, &renew->cfg);
	pthread_cond_destroy(&renew->wake);
	pthread_mutex_destroy(&renew->lock);
	free(renew->look);
	free(renew);
}
