#include "hsmjwt/keystate.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* The largest value a record holds: far beyond any clock, and small enough
 * that adding a configured duration (<= CONFIG_MAX_SECONDS) to it cannot
 * overflow; the arithmetic below saturates anyway. */
#define KEYSTATE_VALUE_MAX (INT64_C(1) << 62)
/* 2^62 has 19 digits; a 20th means the value is out of range, and stopping
 * there keeps the accumulator from overflowing. */
#define KEYSTATE_DIGITS_MAX 19
/* Longer than any JWS alg name ("EdDSA", "PS512"). */
#define KEYSTATE_WORD_MAX 15

#define KEYSTATE_MAGIC "hsmjwt-keystate 1"

static int64_t keystate_add(int64_t a, int64_t b)
{
	if (b > 0 && a > INT64_MAX - b)
		return INT64_MAX;
	if (b < 0 && a < INT64_MIN - b)
		return INT64_MIN;
	return a + b;
}

static int64_t keystate_sub(int64_t a, int64_t b)
{
	if (b < 0 && a > INT64_MAX + b)
		return INT64_MAX;
	if (b > 0 && a < INT64_MIN + b)
		return INT64_MIN;
	return a - b;
}

static int64_t keystate_min(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

const char *keystate_name(enum keystate_state state)
{
	switch (state) {
	case KEYSTATE_NEXT:
		return "next";
	case KEYSTATE_ACTIVE:
		return "active";
	case KEYSTATE_RETIRED:
		return "retired";
	}
	return NULL;
}

static int keystate_alg_valid(enum jws_alg alg)
{
	return alg > JWS_ALG_INVALID && alg < JWS_ALG_COUNT && jws_alg_name(alg) != NULL;
}

static int keystate_value_valid(int64_t v)
{
	return v >= 0 && v <= KEYSTATE_VALUE_MAX;
}

/* Exactly what keystate_parse accepts, so that every record written reads
 * back. */
static int keystate_record_valid(const struct keystate_record *rec)
{
	if (keystate_name(rec->state) == NULL || !keystate_alg_valid(rec->alg))
		return 0;
	if (!keystate_value_valid(rec->created) || !keystate_value_valid(rec->activate_at) ||
	    !keystate_value_valid(rec->retired_at))
		return 0;
	switch (rec->state) {
	case KEYSTATE_NEXT:
		return rec->created <= rec->activate_at && rec->retired_at == 0;
	case KEYSTATE_ACTIVE:
		return rec->retired_at == 0;
	case KEYSTATE_RETIRED:
		return rec->retired_at >= rec->activate_at;
	}
	return 0;
}

int keystate_format(const struct keystate_record *rec, char *buf, size_t size, size_t *ret_len)
{
	char tmp[KEYSTATE_RECORD_MAX + 1];
	int n;

	if (rec == NULL || !keystate_record_valid(rec))
		return -EINVAL;
	n = snprintf(tmp, sizeof(tmp), KEYSTATE_MAGIC " state=%s alg=%s created=%" PRId64 " activate_at=%" PRId64
		     " retired_at=%" PRId64, keystate_name(rec->state), jws_alg_name(rec->alg), rec->created,
		     rec->activate_at, rec->retired_at);
	/* Cannot happen with values bounded by 2^62; refusing keeps the
	 * promise that the output parses back. */
	if (n < 0 || (size_t)n > KEYSTATE_RECORD_MAX)
		return -EINVAL;
	if (buf == NULL || size < (size_t)n + 1)
		return -ENOSPC;
	memcpy(buf, tmp, (size_t)n + 1);
	*ret_len = (size_t)n;
	return 0;
}

/* The parser walks [*p, end) and consumes what it matched; each step fails
 * without consuming on anything unexpected. */
static int keystate_literal(const char **p, const char *end, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
		return -EINVAL;
	*p += n;
	return 0;
}

/* A run of ASCII letters and digits (state and alg names) into
 * word[KEYSTATE_WORD_MAX + 1]. */
static int keystate_word(const char **p, const char *end, char *word)
{
	const char *s = *p;
	size_t n = 0;

	while (s + n < end && n <= KEYSTATE_WORD_MAX &&
	       ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9')))
		n++;
	if (n == 0 || n > KEYSTATE_WORD_MAX)
		return -EINVAL;
	memcpy(word, s, n);
	word[n] = '\0';
	*p = s + n;
	return 0;
}

/* Decimal without sign or leading zeros, 0..2^62. */
static int keystate_number(const char **p, const char *end, int64_t *ret_value)
{
	const char *s = *p;
	uint64_t v = 0;
	size_t n = 0;

	while (s + n < end && s[n] >= '0' && s[n] <= '9') {
		if (n == KEYSTATE_DIGITS_MAX)
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[n] - '0');
		n++;
	}
	if (n == 0 || (s[0] == '0' && n > 1) || v > (uint64_t)KEYSTATE_VALUE_MAX)
		return -EINVAL;
	*ret_value = (int64_t)v;
	*p = s + n;
	return 0;
}

int keystate_parse(const char *buf, size_t len, struct keystate_record *ret_rec)
{
	struct keystate_record rec = { 0 };
	char word[KEYSTATE_WORD_MAX + 1];
	const char *p = buf, *end;

	if (buf == NULL || len > KEYSTATE_RECORD_MAX || memchr(buf, '\0', len) != NULL)
		return -EINVAL;
	end = buf + len;
	if (keystate_literal(&p, end, KEYSTATE_MAGIC " state=") < 0 || keystate_word(&p, end, word) < 0)
		return -EINVAL;
	if (strcmp(word, "next") == 0)
		rec.state = KEYSTATE_NEXT;
	else if (strcmp(word, "active") == 0)
		rec.state = KEYSTATE_ACTIVE;
	else if (strcmp(word, "retired") == 0)
		rec.state = KEYSTATE_RETIRED;
	else
		return -EINVAL;
	if (keystate_literal(&p, end, " alg=") < 0 || keystate_word(&p, end, word) < 0 ||
	    jws_alg_from_name(word, &rec.alg) < 0)
		return -EINVAL;
	if (keystate_literal(&p, end, " created=") < 0 || keystate_number(&p, end, &rec.created) < 0 ||
	    keystate_literal(&p, end, " activate_at=") < 0 || keystate_number(&p, end, &rec.activate_at) < 0 ||
	    keystate_literal(&p, end, " retired_at=") < 0 || keystate_number(&p, end, &rec.retired_at) < 0)
		return -EINVAL;
	if (p != end || !keystate_record_valid(&rec))
		return -EINVAL;
	*ret_rec = rec;
	return 0;
}

static int keystate_rank(enum keystate_state state)
{
	switch (state) {
	case KEYSTATE_NEXT:
		return 1;
	case KEYSTATE_ACTIVE:
		return 2;
	case KEYSTATE_RETIRED:
		return 3;
	}
	return 0;
}

/* < 0 when a beats b.  Beyond the documented rules every field breaks ties,
 * so that the merge is commutative and associative: writers that read the
 * same records in a different order agree. */
static int keystate_merge_cmp(const struct keystate_record *a, const struct keystate_record *b)
{
	int ra = keystate_rank(a->state), rb = keystate_rank(b->state);

	if (ra != rb)
		return ra > rb ? -1 : 1;
	if (a->state == KEYSTATE_RETIRED && a->retired_at != b->retired_at)
		return a->retired_at > b->retired_at ? -1 : 1;
	if (a->activate_at != b->activate_at)
		return a->activate_at < b->activate_at ? -1 : 1;
	if (a->created != b->created)
		return a->created < b->created ? -1 : 1;
	if (a->retired_at != b->retired_at)
		return a->retired_at < b->retired_at ? -1 : 1;
	return 0;
}

void keystate_merge(const struct keystate_record *a, const struct keystate_record *b,
		    struct keystate_record *ret_rec)
{
	/* ret_rec may be a or b. */
	struct keystate_record out = keystate_merge_cmp(a, b) <= 0 ? *a : *b;

	out.alg = a->alg;
	*ret_rec = out;
}

int64_t keystate_destroy_after(const struct keystate_record *rec, const struct keystate_policy *policy)
{
	return keystate_add(keystate_add(rec->retired_at, policy->max_ttl), policy->leeway);
}

static int keystate_kid_cmp(const struct keystate_key *a, const struct keystate_key *b)
{
	return strncmp(a->kid, b->kid, sizeof(a->kid));
}

/* The order in which an algorithm's active keys took over: by activate_at,
 * among equals by created (an immediate rotation in the same second as the
 * signer's own activation makes a newer key, which must win), then the
 * smaller kid last, so that it is the one signing.  The index makes the
 * order total should a kid appear twice. */
static int keystate_took_over_before(const struct keystate_key *keys, size_t a, size_t b)
{
	int c;

	if (keys[a].effective.activate_at != keys[b].effective.activate_at)
		return keys[a].effective.activate_at < keys[b].effective.activate_at;
	if (keys[a].effective.created != keys[b].effective.created)
		return keys[a].effective.created < keys[b].effective.created;
	c = keystate_kid_cmp(&keys[a], &keys[b]);
	if (c != 0)
		return c > 0;
	return a < b;
}

/* Among pending next keys, the one kept (and promoted, should it come to
 * that) is the first: earliest activate_at, then smaller kid. */
static int keystate_next_before(const struct keystate_key *keys, size_t a, size_t b)
{
	int c;

	if (keys[a].effective.activate_at != keys[b].effective.activate_at)
		return keys[a].effective.activate_at < keys[b].effective.activate_at;
	c = keystate_kid_cmp(&keys[a], &keys[b]);
	if (c != 0)
		return c < 0;
	return a < b;
}

static int keystate_policy_valid(const struct keystate_policy *policy)
{
	if (policy == NULL || policy->publish_ahead < 0 || policy->rotation_period < 0 || policy->max_ttl < 0 ||
	    policy->leeway < 0 || (policy->algorithm_count > 0 && policy->algorithms == NULL))
		return 0;
	for (size_t i = 0; i < policy->algorithm_count; i++)
		if (!keystate_alg_valid(policy->algorithms[i]))
			return 0;
	return 1;
}

static int keystate_configured(const struct keystate_policy *policy, enum jws_alg alg)
{
	for (size_t i = 0; i < policy->algorithm_count; i++)
		if (policy->algorithms[i] == alg)
			return 1;
	return 0;
}

static int keystate_same(const struct keystate_record *a, const struct keystate_record *b)
{
	return a->state == b->state && a->alg == b->alg && a->created == b->created &&
	       a->activate_at == b->activate_at && a->retired_at == b->retired_at;
}

/* Per algorithm, after the effective states are known. */
struct keystate_alg_view {
	int signer;   /* index, -1 */
	int next;     /* the pending next key kept, -1 */
};

/* Records for keys made before lifecycle records: the key that signed was,
 * per algorithm, the first found — the smallest kid.  Once any key of the
 * algorithm has a record, a key without one is never made a signer: it is
 * a key whose records were lost (or never readable), and taking it for a
 * pre-record signer would put a retired key back in service. */
static void keystate_migrate(struct keystate_key *keys, size_t n, int64_t now)
{
	for (size_t i = 0; i < n; i++) {
		struct keystate_record *e = &keys[i].effective;
		int first = 1;

		if (keys[i].has_record)
			continue;
		for (size_t j = 0; j < n && first; j++)
			if (j != i && keys[j].alg == keys[i].alg &&
			    (keys[j].has_record || keystate_kid_cmp(&keys[j], &keys[i]) < 0 ||
			     (keystate_kid_cmp(&keys[j], &keys[i]) == 0 && j < i)))
				first = 0;
		e->state = first ? KEYSTATE_ACTIVE : KEYSTATE_RETIRED;
		e->alg = keys[i].alg;
		e->created = now;
		e->activate_at = now;
		e->retired_at = first ? 0 : now;
	}
}

/* Active keys that a later one took over from retire at its activate_at;
 * surplus pending next keys are marked for destruction. */
static void keystate_settle_alg(struct keystate_key *keys, size_t n, enum jws_alg alg, struct keystate_alg_view *view)
{
	view->signer = -1;
	view->next = -1;
	for (size_t i = 0; i < n; i++) {
		if (keys[i].alg != alg)
			continue;
		if (keys[i].effective.state == KEYSTATE_NEXT &&
		    (view->next < 0 || keystate_next_before(keys, i, (size_t)view->next)))
			view->next = (int)i;
		if (keys[i].effective.state == KEYSTATE_ACTIVE &&
		    (view->signer < 0 || keystate_took_over_before(keys, (size_t)view->signer, i)))
			view->signer = (int)i;
	}
	/* Retirement times first, states after: a successor must still count
	 * as active while its predecessors look for it. */
	for (size_t i = 0; i < n; i++) {
		int successor = -1;

		if (keys[i].alg != alg)
			continue;
		if (keys[i].effective.state == KEYSTATE_NEXT && (int)i != view->next)
			keys[i].actions |= KEYSTATE_DESTROY;
		if (keys[i].effective.state != KEYSTATE_ACTIVE || (int)i == view->signer)
			continue;
		for (size_t j = 0; j < n; j++) {
			if (keys[j].alg != alg || keys[j].effective.state != KEYSTATE_ACTIVE ||
			    !keystate_took_over_before(keys, i, j))
				continue;
			if (successor < 0 || keystate_took_over_before(keys, j, (size_t)successor))
				successor = (int)j;
		}
		keys[i].effective.retired_at = keys[successor].effective.activate_at;
	}
	for (size_t i = 0; i < n; i++) {
		if (keys[i].alg == alg && keys[i].effective.state == KEYSTATE_ACTIVE && (int)i != view->signer)
			keys[i].effective.state = KEYSTATE_RETIRED;
	}
}

int keystate_plan(struct keystate_key *keys, size_t n, int64_t now, const struct keystate_policy *policy,
		  struct keystate_plan *ret_plan)
{
	struct keystate_alg_view view;
	struct keystate_plan plan;
	int64_t activation = INT64_MAX;

	/* Everything is checked before any key's outputs change. */
	if ((keys == NULL && n > 0) || !keystate_value_valid(now) || !keystate_policy_valid(policy) ||
	    n > (size_t)INT32_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (!keystate_alg_valid(keys[i].alg))
			return -EINVAL;
		if (keys[i].has_record &&
		    (!keystate_record_valid(&keys[i].stored) || keys[i].stored.alg != keys[i].alg))
			return -EINVAL;
	}

	memset(&plan, 0, sizeof(plan));
	plan.next_change = INT64_MAX;
	for (size_t i = 0; i < n; i++) {
		keys[i].actions = 0;
		keys[i].signer = 0;
		if (keys[i].has_record)
			keys[i].effective = keys[i].stored;
	}
	keystate_migrate(keys, n, now);
	for (size_t i = 0; i < n; i++) {
		if (keys[i].effective.state == KEYSTATE_NEXT && keys[i].effective.activate_at <= now)
			keys[i].effective.state = KEYSTATE_ACTIVE;
	}

	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		enum jws_alg alg = (enum jws_alg)a;
		int configured = keystate_configured(policy, alg);

		keystate_settle_alg(keys, n, alg, &view);
		if (configured && view.signer < 0) {
			if (view.next >= 0) {
				/* Signing early with a published key beats not
				 * signing at all. */
				keys[view.next].effective.state = KEYSTATE_ACTIVE;
				keys[view.next].effective.activate_at = now;
				view.signer = view.next;
				view.next = -1;
			} else {
				plan.generate_active[plan.generate_active_count++] = alg;
			}
		}
		plan.signer[a] = view.signer;
		if (view.signer >= 0)
			keys[view.signer].signer = 1;
		if (view.next >= 0)
			activation = keystate_min(activation, keys[view.next].effective.activate_at);
		if (configured && view.signer >= 0 && view.next < 0 && policy->rotation_period > 0) {
			int64_t due = keystate_add(keys[view.signer].effective.activate_at,
						   keystate_sub(policy->rotation_period, policy->publish_ahead));

			if (now >= due)
				plan.generate_next[plan.generate_next_count++] = alg;
			else
				plan.next_change = keystate_min(plan.next_change, due);
		}
	}
	plan.signer[JWS_ALG_INVALID] = -1;

	for (size_t i = 0; i < n; i++) {
		struct keystate_key *k = &keys[i];

		if (k->effective.state == KEYSTATE_RETIRED) {
			int64_t due = keystate_destroy_after(&k->effective, policy);

			if (now >= due)
				k->actions |= KEYSTATE_DESTROY;
			else
				plan.next_change = keystate_min(plan.next_change, due);
		}
		/* The key goes with its records: nothing to write. */
		if (k->actions & KEYSTATE_DESTROY)
			continue;
		if (!k->has_record || k->record_count > 1 || !keystate_same(&k->effective, &k->stored))
			k->actions |= KEYSTATE_WRITE;
	}
	plan.next_change = keystate_min(plan.next_change, activation);

	plan.jwks_max_age = keystate_min(KEYSTATE_JWKS_MAX_AGE,
					 keystate_sub(policy->publish_ahead, KEYSTATE_REPLICA_LAG));
	if (activation != INT64_MAX)
		plan.jwks_max_age = keystate_min(plan.jwks_max_age, keystate_sub(activation, now));
	if (plan.jwks_max_age < 0)
		plan.jwks_max_age = 0;
	*ret_plan = plan;
	return 0;
}

/* The pending next key of alg that keystate_plan kept, -1. */
static int keystate_find_next(const struct keystate_key *keys, size_t n, enum jws_alg alg)
{
	int found = -1;

	for (size_t i = 0; i < n; i++) {
		if (keys[i].alg != alg || keys[i].effective.state != KEYSTATE_NEXT || (keys[i].actions & KEYSTATE_DESTROY))
			continue;
		if (found < 0 || keystate_next_before(keys, i, (size_t)found))
			found = (int)i;
	}
	return found;
}

int keystate_rotate(const struct keystate_key *keys, size_t n, enum jws_alg alg, int immediate, int64_t now,
		    const struct keystate_policy *policy, int *ret_index, struct keystate_record *ret_new)
{
	struct keystate_record rec = { 0 };
	int index;

	if ((keys == NULL && n > 0) || n > (size_t)INT32_MAX || !keystate_alg_valid(alg) ||
	    !keystate_value_valid(now) || !keystate_policy_valid(policy))
		return -EINVAL;
	index = keystate_find_next(keys, n, alg);
	if (index >= 0 && !immediate) {
		*ret_index = index;
		return -EEXIST;
	}
	if (index >= 0) {
		rec = keys[index].effective;
	} else {
		rec.alg = alg;
		rec.created = now;
	}
	rec.retired_at = 0;
	if (immediate) {
		rec.state = KEYSTATE_ACTIVE;
		rec.activate_at = now;
		/* Times are whole seconds: in the second its predecessor took over,
		 * the new key could lose the tie (created, then kid).  It takes over
		 * a second later instead — strictly after, so it always wins. */
		for (size_t i = 0; i < n; i++)
			if (keys[i].alg == alg && keys[i].signer && keys[i].effective.activate_at >= rec.activate_at)
				rec.activate_at = keystate_add(keys[i].effective.activate_at, 1);
	} else {
		rec.state = KEYSTATE_NEXT;
		rec.activate_at = keystate_add(keystate_add(now, policy->publish_ahead), KEYSTATE_PUBLISH_SLACK);
	}
	/* Only a clock near 2^62 gets here. */
	if (!keystate_record_valid(&rec))
		return -EINVAL;
	*ret_index = index;
	*ret_new = rec;
	return 0;
}

int keystate_retire(const struct keystate_key *keys, size_t n, size_t index, int64_t now,
		    struct keystate_record *ret_new)
{
	struct keystate_record rec;

	if (keys == NULL || index >= n || !keystate_value_valid(now))
		return -EINVAL;
	if (keys[index].signer)
		return -EBUSY;
	/* Any other active key is retired already by time (a later key took
	 * over); keystate_plan writes that record. */
	if (keys[index].effective.state != KEYSTATE_NEXT)
		return -EALREADY;
	rec = keys[index].effective;
	rec.state = KEYSTATE_RETIRED;
	/* It never signed: an empty signing window, which also keeps
	 * retired_at >= activate_at. */
	rec.activate_at = now;
	rec.retired_at = now;
	if (!keystate_record_valid(&rec))
		return -EINVAL;
	*ret_new = rec;
	return 0;
}

int keystate_check_destroy(const struct keystate_key *keys, size_t n, size_t index, int64_t now,
			   const struct keystate_policy *policy, int force, int64_t *ret_safe_at)
{
	const struct keystate_key *k;
	int64_t safe_at;

	if (keys == NULL || index >= n || policy == NULL)
		return -EINVAL;
	if (force)
		return 0;
	k = &keys[index];
	if (k->effective.state == KEYSTATE_NEXT && !k->signer)
		return 0;
	if (k->signer || k->effective.state != KEYSTATE_RETIRED) {
		*ret_safe_at = INT64_MAX;
		return -EBUSY;
	}
	safe_at = keystate_destroy_after(&k->effective, policy);
	if (now >= safe_at)
		return 0;
	*ret_safe_at = safe_at;
	return -EBUSY;
}
