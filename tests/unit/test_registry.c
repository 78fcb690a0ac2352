/* registry: the index and its file, through registry.h on real files in a
 * temporary state_dir: lookups and org scoping, every status transition,
 * cascades, lists (pagination, filters, the scan cap), status lists,
 * status-list indices across reopen and compaction, records identical after
 * reopen and compaction, group commit from 16 threads, exactly one done per
 * change, the interval policy, a failed write, a disk that tears a write
 * and then takes writes again (RLIMIT_FSIZE), a torn tail and a corrupt
 * middle.  Every wait is on a done callback, never a sleep. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "hsmjwt/metrics.h"
#include "hsmjwt/registry.h"
#include "hsmjwt/registry_codec.h"
#include "../../src/registry_internal.h"

#define LEEWAY 30
#define NOW 1800000000LL
#define HOUR 3600

/* ---- helpers ---------------------------------------------------------- */

static struct registry *open_registry(enum registry_fsync policy)
{
	struct registry *reg = NULL;

	assert_int_equal(registry_open(fixture_tmpdir, policy, LEEWAY, &reg), 0);
	assert_non_null(reg);
	return reg;
}

static const char *log_path(void)
{
	static char path[PATH_MAX + 32];

	snprintf(path, sizeof(path), "%s/%s", fixture_tmpdir, REGISTRY_FILE);
	return path;
}

static struct registry_record make_rec(const char *jti, const char *org, const char *subject,
				       enum registry_type type, int64_t exp)
{
	struct registry_record rec;

	memset(&rec, 0, sizeof(rec));
	snprintf(rec.jti, sizeof(rec.jti), "%s", jti);
	snprintf(rec.org, sizeof(rec.org), "%s", org);
	snprintf(rec.subject, sizeof(rec.subject), "%s", subject);
	rec.type = type;
	rec.status = REGISTRY_ACTIVE;
	rec.iat = exp - HOUR;
	rec.exp = exp;
	rec.status_idx = REGISTRY_NO_INDEX;
	return rec;
}

/* Adds and waits until durable; returns the add's error or the done result. */
static int add_wait(struct registry *reg, const struct registry_record *rec)
{
	struct registry_wait w;
	int r;

	registry_wait_init(&w);
	r = registry_add(reg, rec, registry_wait_done, &w);
	if (r < 0)
		return r;
	return registry_wait(&w);
}

static void add_ok(struct registry *reg, const char *jti, const char *org, const char *subject,
		   enum registry_type type, int64_t exp)
{
	struct registry_record rec = make_rec(jti, org, subject, type, exp);

	assert_int_equal(add_wait(reg, &rec), 0);
}

static int set_wait(struct registry *reg, const char *jti, const char *scope, enum registry_status status,
		    const char *reason, size_t *changed)
{
	struct registry_wait w;
	int r;

	registry_wait_init(&w);
	r = registry_set_status(reg, jti, scope, status, NOW, reason, registry_wait_done, &w, changed);
	if (r < 0)
		return r;
	return registry_wait(&w);
}

static enum registry_status status_of(struct registry *reg, const char *jti)
{
	struct registry_record rec;

	assert_int_equal(registry_get(reg, jti, NULL, &rec), 0);
	return rec.status;
}

static void assert_same_record(const struct registry_record *a, const struct registry_record *b)
{
	assert_int_equal(a->seq, b->seq);
	assert_string_equal(a->jti, b->jti);
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->status, b->status);
	assert_string_equal(a->org, b->org);
	assert_string_equal(a->subject, b->subject);
	assert_string_equal(a->name, b->name);
	assert_string_equal(a->description, b->description);
	assert_string_equal(a->client_id, b->client_id);
	assert_string_equal(a->kid, b->kid);
	assert_string_equal(a->parent, b->parent);
	assert_string_equal(a->family, b->family);
	assert_int_equal(a->iat, b->iat);
	assert_int_equal(a->exp, b->exp);
	assert_int_equal(a->status_at, b->status_at);
	assert_string_equal(a->reason, b->reason);
	assert_int_equal(a->status_idx, b->status_idx);
}

/* Every record (deleted ones included), in seq order, through lists of
 * the given page size. */
static size_t list_all(struct registry *reg, const struct registry_query *base, size_t page,
		       struct registry_record **ret)
{
	struct registry_record *all = NULL;
	size_t n = 0;
	struct registry_query q = *base;

	q.limit = page;
	q.cursor = 0;
	for (;;) {
		struct registry_record *recs;
		size_t count;
		uint64_t next;

		assert_int_equal(registry_list(reg, &q, &recs, &count, &next), 0);
		assert_true(count <= page);
		all = realloc(all, (n + count + 1) * sizeof(*all));
		assert_non_null(all);
		memcpy(all + n, recs, count * sizeof(*recs));
		n += count;
		free(recs);
		if (next == 0)
			break;
		assert_true(next > q.cursor);
		q.cursor = next;
	}
	*ret = all;
	return n;
}

/* Both the live and the deleted records, merged by seq. */
static size_t snapshot(struct registry *reg, struct registry_record **ret)
{
	struct registry_query live = { .status = -1, .type = -1, .now = NOW };
	struct registry_query deleted = { .status = REGISTRY_DELETED, .type = -1, .now = NOW };
	struct registry_record *a, *b, *all;
	size_t na = list_all(reg, &live, 1000, &a), nb = list_all(reg, &deleted, 1000, &b), i = 0, j = 0, n = 0;

	all = malloc((na + nb + 1) * sizeof(*all));
	assert_non_null(all);
	while (i < na || j < nb)
		all[n++] = (j >= nb || (i < na && a[i].seq < b[j].seq)) ? a[i++] : b[j++];
	free(a);
	free(b);
	*ret = all;
	return n;
}

static void assert_same_snapshot(const struct registry_record *a, size_t na, const struct registry_record *b,
				 size_t nb)
{
	assert_int_equal(na, nb);
	for (size_t i = 0; i < na; i++)
		assert_same_record(&a[i], &b[i]);
}

static uint8_t *read_file(const char *path, size_t *ret_len)
{
	struct stat st;
	uint8_t *buf;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	assert_non_null(buf);
	assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
	close(fd);
	*ret_len = (size_t)st.st_size;
	return buf;
}

/* The file image read at open is unmapped whole, whatever was truncated. */
static void assert_log_unmapped(void)
{
	char line[PATH_MAX + 256];
	FILE *maps = fopen("/proc/self/maps", "r");

	assert_non_null(maps);
	while (fgets(line, sizeof(line), maps))
		assert_null(strstr(line, log_path()));
	fclose(maps);
}

struct offsets {
	size_t off[64];
	size_t count;
	int meta;
};

static int collect_offset(void *arg, const struct registry_entry *e, size_t offset)
{
	struct offsets *o = arg;

	if (o->count < 64)
		o->off[o->count++] = offset;
	o->meta += e->kind == REGISTRY_KIND_META;
	return 0;
}

/* Counts done calls per change. */
struct counter {
	pthread_mutex_t mutex;
	int calls[64];
	int results[64];
};

static struct counter counter = { .mutex = PTHREAD_MUTEX_INITIALIZER };

static void count_done(void *arg, int result)
{
	size_t i = (size_t)(uintptr_t)arg;

	pthread_mutex_lock(&counter.mutex);
	counter.calls[i]++;
	/* The first failure sticks. */
	if (counter.results[i] == 0)
		counter.results[i] = result;
	pthread_mutex_unlock(&counter.mutex);
}

/* ---- lookups ---------------------------------------------------------- */

static void test_add_get_check(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record rec = make_rec("jti-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR), got, bad;
	enum registry_status status = REGISTRY_DELETED;
	uint32_t idx;
	int found = -1;

	assert_int_equal(registry_reserve_index(reg, &idx), 0);
	snprintf(rec.name, sizeof(rec.name), "ci key");
	snprintf(rec.description, sizeof(rec.description), "the deploy pipeline's");
	snprintf(rec.client_id, sizeof(rec.client_id), "portal");
	snprintf(rec.kid, sizeof(rec.kid), "kid-a");
	snprintf(rec.parent, sizeof(rec.parent), "p-1");
	snprintf(rec.family, sizeof(rec.family), "f-1");
	rec.status_idx = idx;
	rec.seq = 999;   /* ignored */
	assert_int_equal(add_wait(reg, &rec), 0);
	assert_int_equal(registry_get(reg, "jti-1", NULL, &got), 0);
	rec.seq = got.seq;
	rec.status_at = rec.iat;
	assert_true(got.seq >= 1 && got.seq != 999);
	assert_same_record(&got, &rec);

	assert_int_equal(registry_check(reg, "jti-1", "acme", &found, &status), 0);
	assert_int_equal(found, 1);
	assert_int_equal(status, REGISTRY_ACTIVE);
	assert_int_equal(registry_check(reg, "nope", "acme", &found, &status), 0);
	assert_int_equal(found, 0);
	assert_int_equal(registry_get(reg, "nope", NULL, &got), -ENOENT);

	/* Known jti, in any org. */
	bad = make_rec("jti-1", "other", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EEXIST);
	/* Bad fields, refused before anything changes. */
	bad = make_rec("", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EINVAL);
	bad = make_rec("jti-2", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	bad.status = REGISTRY_REVOKED;
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EINVAL);
	bad.status = REGISTRY_ACTIVE;
	bad.type = REGISTRY_TYPE_UNREGISTERED;
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EINVAL);
	bad.type = REGISTRY_TYPE_ACCESS;
	bad.status_idx = idx + 1;   /* never handed out */
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EINVAL);
	bad.status_idx = REGISTRY_NO_INDEX;
	memset(bad.subject, 'x', sizeof(bad.subject));   /* unterminated */
	assert_int_equal(registry_add(reg, &bad, registry_wait_done, NULL), -EINVAL);
	assert_int_equal(registry_get(reg, "jti-2", NULL, &got), -ENOENT);
	registry_close(reg);
}

static void test_org_scope(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_query q = { .org_scope = "beta", .status = -1, .type = -1, .now = NOW };
	struct registry_record got, *recs;
	size_t n, changed = 99;
	struct registry_wait w;

	add_ok(reg, "a-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "b-1", "beta", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "n-1", "", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);

	assert_int_equal(registry_get(reg, "a-1", "beta", &got), -ENOENT);
	assert_int_equal(registry_get(reg, "a-1", "acme", &got), 0);
	assert_int_equal(registry_get(reg, "a-1", NULL, &got), 0);
	assert_int_equal(registry_get(reg, "n-1", "acme", &got), -ENOENT);
	assert_int_equal(registry_get(reg, "n-1", "", &got), 0);
	assert_int_equal(registry_set_status(reg, "a-1", "beta", REGISTRY_REVOKED, NOW, NULL, registry_wait_done, NULL,
					     &changed),
			 -ENOENT);
	assert_int_equal(changed, 99);
	assert_int_equal(status_of(reg, "a-1"), REGISTRY_ACTIVE);

	n = list_all(reg, &q, 10, &recs);
	assert_int_equal(n, 1);
	assert_string_equal(recs[0].jti, "b-1");
	free(recs);
	q.org_scope = "nobody";
	n = list_all(reg, &q, 10, &recs);
	assert_int_equal(n, 0);
	free(recs);
	q.org_scope = NULL;
	n = list_all(reg, &q, 10, &recs);
	assert_int_equal(n, 3);
	free(recs);

	/* revoke_subject counts and changes only the caller's org. */
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_subject(reg, "alice", "beta", NOW, registry_wait_done, &w, &changed), 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(changed, 1);
	assert_int_equal(status_of(reg, "b-1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "a-1"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "n-1"), REGISTRY_ACTIVE);
	registry_close(reg);
}

static void test_check_unregistered(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	enum registry_status status;
	struct registry_record got;
	struct registry_wait w;
	int found;

	add_ok(reg, "known", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_unregistered(reg, "off-any", "", NOW + HOUR, NOW, "leaked", registry_wait_done,
						      &w),
			 0);
	assert_int_equal(registry_wait(&w), 0);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_unregistered(reg, "off-acme", "acme", NOW + HOUR, NOW, NULL,
						      registry_wait_done, &w),
			 0);
	assert_int_equal(registry_wait(&w), 0);
	/* Known in another org: the caller answers as if unknown. */
	assert_int_equal(registry_revoke_unregistered(reg, "known", "beta", NOW + HOUR, NOW, NULL, registry_wait_done,
						      NULL),
			 -EEXIST);
	assert_int_equal(registry_revoke_unregistered(reg, "off-acme", "", NOW + HOUR, NOW, NULL, registry_wait_done,
						      NULL),
			 -EEXIST);

	assert_int_equal(registry_get(reg, "off-any", NULL, &got), 0);
	assert_int_equal(got.type, REGISTRY_TYPE_UNREGISTERED);
	assert_int_equal(got.status, REGISTRY_REVOKED);
	assert_string_equal(got.org, "");
	assert_string_equal(got.reason, "leaked");
	assert_int_equal(got.exp, NOW + HOUR);
	assert_int_equal(got.status_at, NOW);

	/* An unconfined revocation binds every org's token of that jti. */
	for (int i = 0; i < 3; i++) {
		found = -1;
		assert_int_equal(registry_check(reg, "off-any", (const char *[]){ "acme", "beta", "" }[i], &found,
						&status),
				 0);
		assert_int_equal(found, 1);
		assert_int_equal(status, REGISTRY_REVOKED);
	}
	/* A confined one only its own org's. */
	assert_int_equal(registry_check(reg, "off-acme", "acme", &found, &status), 0);
	assert_int_equal(found, 1);
	assert_int_equal(registry_check(reg, "off-acme", "beta", &found, &status), 0);
	assert_int_equal(found, 0);
	assert_int_equal(registry_check(reg, "off-acme", "", &found, &status), 0);
	assert_int_equal(found, 0);
	assert_int_equal(registry_check(reg, "off-acme", NULL, &found, &status), 0);
	assert_int_equal(found, 0);
	/* A registered token's status applies whatever its claim says. */
	assert_int_equal(registry_check(reg, "known", "beta", &found, &status), 0);
	assert_int_equal(found, 1);
	registry_close(reg);
}

/* ---- status changes --------------------------------------------------- */

static void test_transitions(void **state)
{
	/* expected[from][to]: 0 changes, 1 no-op, -EPERM */
	static const int expected[4][4] = {
		/* to:        ACTIVE  SUSPENDED REVOKED DELETED */
		/* ACTIVE */ { 1, 0, 0, 0 },
		/* SUSP.  */ { 0, 1, 0, 0 },
		/* REVOKED*/ { -EPERM, -EPERM, 1, 0 },
		/* DELETED*/ { -EPERM, -EPERM, -EPERM, 1 },
	};
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record got;

	for (int from = 0; from < 4; from++)
		for (int to = 0; to < 4; to++) {
			char jti[32];
			size_t changed = 99;
			int r;

			snprintf(jti, sizeof(jti), "t-%d-%d", from, to);
			add_ok(reg, jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
			if (from != REGISTRY_ACTIVE)
				assert_int_equal(set_wait(reg, jti, NULL, from, "first", NULL), 0);
			assert_int_equal(status_of(reg, jti), from);
			r = set_wait(reg, jti, "acme", to, "second", &changed);
			if (expected[from][to] == -EPERM) {
				assert_int_equal(r, -EPERM);
				assert_int_equal(changed, 99);
				assert_int_equal(status_of(reg, jti), from);
				continue;
			}
			assert_int_equal(r, 0);
			assert_int_equal(status_of(reg, jti), to);
			assert_int_equal(changed, expected[from][to] == 1 ? 0 : 1);
			assert_int_equal(registry_get(reg, jti, NULL, &got), 0);
			/* A no-op leaves status_at and reason alone. */
			if (expected[from][to] == 0)
				assert_string_equal(got.reason, "second");
			else
				assert_string_equal(got.reason, from == REGISTRY_ACTIVE ? "" : "first");
		}
	assert_int_equal(registry_set_status(reg, "missing", NULL, REGISTRY_REVOKED, NOW, NULL, registry_wait_done,
					     NULL, NULL),
			 -ENOENT);
	assert_int_equal(registry_set_status(reg, "t-0-0", NULL, (enum registry_status)4, NOW, NULL,
					     registry_wait_done, NULL, NULL),
			 -EINVAL);
	registry_close(reg);
}

static void add_dep(struct registry *reg, const char *jti, const char *org, enum registry_type type,
		    const char *parent, const char *family)
{
	struct registry_record rec = make_rec(jti, org, "alice", type, NOW + HOUR);

	snprintf(rec.parent, sizeof(rec.parent), "%s", parent);
	snprintf(rec.family, sizeof(rec.family), "%s", family);
	assert_int_equal(add_wait(reg, &rec), 0);
}

static void test_cascade(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	size_t changed = 0;

	/* A parent with children (one suspended, one already revoked, one
	 * with a child of its own) and a refresh family. */
	add_dep(reg, "P", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "C1", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C2", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C3", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "G1", "acme", REGISTRY_TYPE_CHILD, "C3", "");
	add_dep(reg, "X", "beta", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "F1", "acme", REGISTRY_TYPE_REFRESH, "", "F1");
	add_dep(reg, "F2", "acme", REGISTRY_TYPE_REFRESH, "", "F1");
	add_dep(reg, "F3", "acme", REGISTRY_TYPE_REFRESH, "", "F1");
	add_dep(reg, "A1", "acme", REGISTRY_TYPE_ACCESS, "", "");
	assert_int_equal(set_wait(reg, "C1", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "C2", NULL, REGISTRY_REVOKED, NULL, NULL), 0);

	/* Suspending cascades nothing. */
	assert_int_equal(set_wait(reg, "P", "acme", REGISTRY_SUSPENDED, NULL, &changed), 0);
	assert_int_equal(changed, 1);
	assert_int_equal(status_of(reg, "C3"), REGISTRY_ACTIVE);

	/* Confined to acme: P, C1, C3 and G1 change; C2 was revoked; X is beta's. */
	assert_int_equal(set_wait(reg, "P", "acme", REGISTRY_REVOKED, "compromised", &changed), 0);
	assert_int_equal(changed, 4);
	assert_int_equal(status_of(reg, "P"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "C1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "C2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "C3"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "G1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "X"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "A1"), REGISTRY_ACTIVE);
	/* Unconfined, again: a no-op for P, but the child left behind goes. */
	assert_int_equal(set_wait(reg, "P", NULL, REGISTRY_REVOKED, NULL, &changed), 0);
	assert_int_equal(changed, 1);
	assert_int_equal(status_of(reg, "X"), REGISTRY_REVOKED);

	/* Deleting the family's first token revokes the rest. */
	assert_int_equal(set_wait(reg, "F1", NULL, REGISTRY_DELETED, NULL, &changed), 0);
	assert_int_equal(changed, 3);
	assert_int_equal(status_of(reg, "F1"), REGISTRY_DELETED);
	assert_int_equal(status_of(reg, "F2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "F3"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "A1"), REGISTRY_ACTIVE);
	registry_close(reg);
}

/* A child registered after its parent's cascade would stay active: the
 * parent's status is looked at with the registration, under one lock. */
static void test_add_under_an_inactive_parent(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record child, rec, add[2];
	struct registry_stats before, after;
	struct registry_wait w;
	size_t changed = 0;
	int found = 0, r;
	enum registry_status status;

	add_dep(reg, "P", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "C1", "acme", REGISTRY_TYPE_CHILD, "P", "");
	assert_int_equal(set_wait(reg, "P", NULL, REGISTRY_REVOKED, "compromised", &changed), 0);
	assert_int_equal(changed, 2);

	registry_get_stats(reg, &before);
	child = make_rec("C2", "acme", "alice", REGISTRY_TYPE_CHILD, NOW + HOUR);
	snprintf(child.parent, sizeof(child.parent), "P");
	assert_int_equal(add_wait(reg, &child), -EPERM);
	/* Nothing registered, nothing queued for the file. */
	assert_int_equal(registry_get(reg, "C2", NULL, &rec), -ENOENT);
	assert_int_equal(registry_check(reg, "C2", "acme", &found, &status), 0);
	assert_int_equal(found, 0);
	registry_get_stats(reg, &after);
	assert_int_equal(after.records, before.records);
	assert_int_equal(after.frames, before.frames);
	/* registry_consume registers as registry_add does. */
	add[0] = make_rec("A9", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add[1] = child;
	registry_wait_init(&w);
	r = registry_consume(reg, NULL, NOW, NULL, add, 2, registry_wait_done, &w, NULL);
	if (r == 0)
		registry_wait(&w);
	assert_int_equal(r, -EPERM);
	assert_int_equal(registry_get(reg, "A9", NULL, &rec), -ENOENT);

	/* Suspended is not active either; reactivated, it may have children. */
	add_dep(reg, "Q", "acme", REGISTRY_TYPE_PARENT, "", "");
	assert_int_equal(set_wait(reg, "Q", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	snprintf(child.parent, sizeof(child.parent), "Q");
	assert_int_equal(add_wait(reg, &child), -EPERM);
	assert_int_equal(set_wait(reg, "Q", NULL, REGISTRY_ACTIVE, NULL, NULL), 0);
	assert_int_equal(add_wait(reg, &child), 0);
	assert_int_equal(status_of(reg, "C2"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "C2", NULL, &rec), 0);
	assert_string_equal(rec.parent, "Q");

	/* An offline revocation of the parent's jti binds its own org's
	 * children (registry_check's rule), not another org's. */
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_unregistered(reg, "U", "beta", NOW + HOUR, NOW, NULL, registry_wait_done, &w),
			 0);
	assert_int_equal(registry_wait(&w), 0);
	child = make_rec("C3", "acme", "alice", REGISTRY_TYPE_CHILD, NOW + HOUR);
	snprintf(child.parent, sizeof(child.parent), "U");
	assert_int_equal(add_wait(reg, &child), 0);
	child = make_rec("C4", "beta", "alice", REGISTRY_TYPE_CHILD, NOW + HOUR);
	snprintf(child.parent, sizeof(child.parent), "U");
	assert_int_equal(add_wait(reg, &child), -EPERM);

	/* A parent the registry does not know: registered as before. */
	child = make_rec("C5", "acme", "alice", REGISTRY_TYPE_CHILD, NOW + HOUR);
	snprintf(child.parent, sizeof(child.parent), "nobody");
	assert_int_equal(add_wait(reg, &child), 0);
	registry_close(reg);
}

/* What bounds POST /renew: a parent's active, unexpired children. */
static void test_count_children(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record child;
	size_t n = 99;

	assert_int_equal(registry_count_children(reg, "P", NOW, &n), 0);
	assert_int_equal(n, 0);
	add_dep(reg, "P", "acme", REGISTRY_TYPE_PARENT, "", "");
	assert_int_equal(registry_count_children(reg, "P", NOW, &n), 0);
	assert_int_equal(n, 0);
	add_dep(reg, "C1", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C2", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C3", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C4", "acme", REGISTRY_TYPE_CHILD, "P", "");
	/* Another parent's child, and a grandchild, are not P's. */
	add_dep(reg, "Q", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "D1", "acme", REGISTRY_TYPE_CHILD, "Q", "");
	add_dep(reg, "G1", "acme", REGISTRY_TYPE_CHILD, "C1", "");
	/* Expired by NOW. */
	child = make_rec("C5", "acme", "alice", REGISTRY_TYPE_CHILD, NOW);
	snprintf(child.parent, sizeof(child.parent), "P");
	assert_int_equal(add_wait(reg, &child), 0);
	assert_int_equal(registry_count_children(reg, "P", NOW, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(registry_count_children(reg, "P", NOW - 1, &n), 0);
	assert_int_equal(n, 5);
	assert_int_equal(registry_count_children(reg, "Q", NOW, &n), 0);
	assert_int_equal(n, 1);
	/* Revoked or suspended children are not live. */
	assert_int_equal(set_wait(reg, "C2", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "C3", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(registry_count_children(reg, "P", NOW, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(registry_count_children(reg, "P", NOW + HOUR, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(registry_count_children(NULL, "P", NOW, &n), -EINVAL);
	assert_int_equal(registry_count_children(reg, NULL, NOW, &n), -EINVAL);
	registry_close(reg);
}

/* The hsmjwt_parent_tokens_active gauge: parents ACTIVE and unexpired, in
 * every org, from the index's own list of parents (rebuilt at open and by
 * compaction). */
static void test_count_active_parents(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record rec;
	uint64_t n = 99;

	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 0);
	add_dep(reg, "P1", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "P2", "beta", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "P3", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "P4", "", REGISTRY_TYPE_PARENT, "", "");
	/* Children, an access token: not parents. */
	add_dep(reg, "C1", "acme", REGISTRY_TYPE_CHILD, "P1", "");
	add_dep(reg, "C2", "acme", REGISTRY_TYPE_CHILD, "P3", "");
	add_dep(reg, "A1", "acme", REGISTRY_TYPE_ACCESS, "", "");
	/* Expired by NOW. */
	rec = make_rec("P5", "acme", "alice", REGISTRY_TYPE_PARENT, NOW);
	assert_int_equal(add_wait(reg, &rec), 0);
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(registry_count_active_parents(reg, NOW - 1, &n), 0);
	assert_int_equal(n, 5);
	assert_int_equal(set_wait(reg, "P2", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "P3", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(set_wait(reg, "P2", NULL, REGISTRY_ACTIVE, NULL, NULL), 0);
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 3);
	registry_close(reg);

	/* Rebuilt from the file. */
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_count_active_parents(reg, NOW - 1, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 3);
	/* Compaction drops P5 (expired past the leeway) and keeps the rest. */
	assert_int_equal(registry_compact(reg, NOW + LEEWAY + 1, NULL), 0);
	assert_int_equal(registry_get(reg, "P5", NULL, &rec), -ENOENT);
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 3);
	add_dep(reg, "P6", "acme", REGISTRY_TYPE_PARENT, "", "");
	assert_int_equal(registry_count_active_parents(reg, NOW, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(registry_count_active_parents(reg, NOW + HOUR, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(registry_count_active_parents(NULL, NOW, &n), -EINVAL);
	registry_close(reg);
}

/* hsmjwt_revocations_total: one per record a change revokes, cascades
 * included, nothing for a record revoked already. */
static uint64_t revocations_counted(void)
{
	struct metrics_gauges g;
	char *text = NULL, *line;
	size_t len;
	unsigned long long v = 0;

	memset(&g, 0, sizeof(g));
	assert_int_equal(metrics_render(&g, &text, &len), 0);
	line = strstr(text, "\nhsmjwt_revocations_total ");
	assert_non_null(line);
	assert_int_equal(sscanf(line, "\nhsmjwt_revocations_total %llu", &v), 1);
	free(text);
	return v;
}

static void test_revocations_counted(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record add;
	struct registry_wait w;
	size_t changed = 0;

	add_dep(reg, "P", "acme", REGISTRY_TYPE_PARENT, "", "");
	add_dep(reg, "C1", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "C2", "acme", REGISTRY_TYPE_CHILD, "P", "");
	add_dep(reg, "G1", "acme", REGISTRY_TYPE_CHILD, "C2", "");
	add_dep(reg, "A1", "acme", REGISTRY_TYPE_ACCESS, "", "");
	add_dep(reg, "F1", "acme", REGISTRY_TYPE_REFRESH, "", "F1");
	metrics_reset();
	/* Suspending revokes nothing; revoking a suspended record does. */
	assert_int_equal(set_wait(reg, "C1", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(revocations_counted(), 0);
	assert_int_equal(set_wait(reg, "P", NULL, REGISTRY_REVOKED, NULL, &changed), 0);
	assert_int_equal(changed, 4);
	assert_int_equal(revocations_counted(), 4);
	/* Again, and deleting a revoked record: nothing more is revoked. */
	assert_int_equal(set_wait(reg, "P", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "C2", NULL, REGISTRY_DELETED, NULL, NULL), 0);
	assert_int_equal(revocations_counted(), 4);
	/* Deleting an active record revokes it. */
	assert_int_equal(set_wait(reg, "A1", NULL, REGISTRY_DELETED, NULL, NULL), 0);
	assert_int_equal(revocations_counted(), 5);
	/* A refresh token consumed by its rotation, and an offline jti. */
	add = make_rec("F2", "acme", "alice", REGISTRY_TYPE_REFRESH, NOW + HOUR);
	snprintf(add.family, sizeof(add.family), "F1");
	registry_wait_init(&w);
	assert_int_equal(registry_consume(reg, "F1", NOW, "rotated", &add, 1, registry_wait_done, &w, NULL), 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(revocations_counted(), 6);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_unregistered(reg, "U", "", NOW + HOUR, NOW, NULL, registry_wait_done, &w),
			 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(revocations_counted(), 7);
	registry_close(reg);
	/* Replaying the file at open counts nothing: those happened before. */
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(revocations_counted(), 7);
	registry_close(reg);
}

static void test_revoke_subject(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_wait w;
	size_t count = 99;

	add_ok(reg, "s-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "s-2", "acme", "alice", REGISTRY_TYPE_REFRESH, NOW + HOUR);
	add_ok(reg, "s-3", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW - LEEWAY - 1);   /* expired for good */
	add_ok(reg, "s-4", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW - 1);            /* within leeway */
	add_ok(reg, "s-5", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "s-6", "beta", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "s-7", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_dep(reg, "s-8", "acme", REGISTRY_TYPE_CHILD, "s-1", "");   /* alice's too, reached once */
	{
		struct registry_record dep = make_rec("s-9", "acme", "carol", REGISTRY_TYPE_CHILD, NOW + HOUR);

		snprintf(dep.parent, sizeof(dep.parent), "s-2");
		assert_int_equal(add_wait(reg, &dep), 0);
	}
	assert_int_equal(set_wait(reg, "s-2", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "s-5", NULL, REGISTRY_REVOKED, NULL, NULL), 0);

	registry_wait_init(&w);
	assert_int_equal(registry_revoke_subject(reg, "alice", "acme", NOW, registry_wait_done, &w, &count), 0);
	assert_int_equal(registry_wait(&w), 0);
	/* s-1, s-2 (suspended), s-4, s-8, and s-9 through its parent s-2. */
	assert_int_equal(count, 5);
	assert_int_equal(status_of(reg, "s-1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "s-2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "s-3"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "s-4"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "s-6"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "s-7"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "s-8"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "s-9"), REGISTRY_REVOKED);

	/* Nothing left: 0 is a success, and done still comes. */
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_subject(reg, "alice", "acme", NOW, registry_wait_done, &w, &count), 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(count, 0);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_subject(reg, "alice", "nobody", NOW, registry_wait_done, &w, &count), 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(count, 0);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_subject(reg, "alice", NULL, NOW, registry_wait_done, &w, &count), 0);
	assert_int_equal(registry_wait(&w), 0);
	assert_int_equal(count, 1);
	assert_int_equal(status_of(reg, "s-6"), REGISTRY_REVOKED);
	registry_close(reg);
}

/* ---- lists ------------------------------------------------------------ */

static void test_list_pagination(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_INTERVAL);
	struct registry_query q = { .status = -1, .type = -1, .now = NOW };
	struct registry_record *recs;
	static const size_t pages[] = { 1, 7, 100, 1000 };
	size_t n;

	for (int i = 0; i < 250; i++) {
		char jti[32];

		snprintf(jti, sizeof(jti), "p-%03d", i);
		add_ok(reg, jti, i % 3 ? "acme" : "beta", i % 5 ? "alice" : "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	}
	for (size_t p = 0; p < sizeof(pages) / sizeof(pages[0]); p++) {
		/* Every record once, in order, whatever the page size. */
		q.org_scope = NULL;
		q.subject = NULL;
		n = list_all(reg, &q, pages[p], &recs);
		assert_int_equal(n, 250);
		for (size_t i = 0; i < n; i++) {
			char jti[32];

			snprintf(jti, sizeof(jti), "p-%03zu", i);
			assert_string_equal(recs[i].jti, jti);
			if (i > 0)
				assert_true(recs[i].seq > recs[i - 1].seq);
		}
		free(recs);
		/* The same through the org and subject indexes. */
		q.org_scope = "acme";
		q.subject = "bob";
		n = list_all(reg, &q, pages[p], &recs);
		assert_int_equal(n, 33);   /* i % 3 != 0 and i % 5 == 0 below 250 */
		for (size_t i = 0; i < n; i++) {
			int k = atoi(recs[i].jti + 2);

			assert_true(k % 3 != 0 && k % 5 == 0);
			if (i > 0)
				assert_true(recs[i].seq > recs[i - 1].seq);
		}
		free(recs);
	}
	/* Through the non-active records: every 7th revoked, every 11th
	 * suspended, and every 22nd of those active again. */
	for (int i = 0; i < 250; i++) {
		char jti[32];

		snprintf(jti, sizeof(jti), "p-%03d", i);
		if (i % 7 == 0)
			assert_int_equal(set_wait(reg, jti, NULL, REGISTRY_REVOKED, NULL, NULL), 0);
		else if (i % 11 == 0)
			assert_int_equal(set_wait(reg, jti, NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
		if (i % 7 != 0 && i % 22 == 0)
			assert_int_equal(set_wait(reg, jti, NULL, REGISTRY_ACTIVE, NULL, NULL), 0);
	}
	q.org_scope = NULL;
	q.subject = NULL;
	for (size_t p = 0; p < sizeof(pages) / sizeof(pages[0]); p++) {
		size_t want = 0;

		q.revocations = 1;
		n = list_all(reg, &q, pages[p], &recs);
		for (int i = 0; i < 250; i++) {
			char jti[32];

			if (!(i % 7 == 0 || (i % 11 == 0 && i % 22 != 0)))
				continue;
			snprintf(jti, sizeof(jti), "p-%03d", i);
			assert_true(want < n);
			assert_string_equal(recs[want].jti, jti);
			assert_int_equal(recs[want].status, i % 7 == 0 ? REGISTRY_REVOKED : REGISTRY_SUSPENDED);
			want++;
		}
		assert_int_equal(n, want);
		free(recs);
		q.revocations = 0;
		q.status = REGISTRY_REVOKED;
		n = list_all(reg, &q, pages[p], &recs);
		assert_int_equal(n, 36);   /* multiples of 7 below 250 */
		for (size_t i = 0; i < n; i++)
			assert_int_equal(atoi(recs[i].jti + 2), (int)(7 * i));
		free(recs);
		q.status = -1;
	}
	registry_close(reg);
}

static int list_has(struct registry *reg, const struct registry_query *base, const char *const *want, size_t nwant)
{
	struct registry_record *recs;
	size_t n = list_all(reg, base, 1000, &recs);

	assert_int_equal(n, nwant);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(recs[i].jti, want[i]);
	free(recs);
	return 1;
}

static void test_list_filters(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_query q = { .type = -1, .now = NOW };
	struct registry_record *recs;
	size_t count;
	uint64_t next;

	add_ok(reg, "active", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "active-exp", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW);
	add_ok(reg, "susp", "acme", "bob", REGISTRY_TYPE_REFRESH, NOW + HOUR);
	add_ok(reg, "susp-exp", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW - 10);
	add_ok(reg, "rev", "acme", "alice", REGISTRY_TYPE_ID, NOW + HOUR);
	add_ok(reg, "rev-leeway", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW - LEEWAY);
	add_ok(reg, "rev-gone", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW - LEEWAY - 1);
	add_ok(reg, "del", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "other", "beta", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(reg, "nosub", "beta", "", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(set_wait(reg, "susp", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "susp-exp", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "rev", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "rev-leeway", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "rev-gone", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "del", NULL, REGISTRY_DELETED, NULL, NULL), 0);
	q.org_scope = "acme";

	q.status = -1;
	list_has(reg, &q,
		 (const char *const[]){ "active", "active-exp", "susp", "susp-exp", "rev", "rev-leeway", "rev-gone" }, 7);
	q.status = REGISTRY_DELETED;
	list_has(reg, &q, (const char *const[]){ "del" }, 1);
	q.status = REGISTRY_ACTIVE;
	list_has(reg, &q, (const char *const[]){ "active" }, 1);
	q.status = REGISTRY_SUSPENDED;
	list_has(reg, &q, (const char *const[]){ "susp" }, 1);
	q.status = REGISTRY_REVOKED;
	list_has(reg, &q, (const char *const[]){ "rev", "rev-leeway", "rev-gone" }, 3);
	q.status = REGISTRY_EXPIRED_FILTER;
	list_has(reg, &q, (const char *const[]){ "active-exp", "susp-exp" }, 2);
	q.status = -1;
	q.subject = "bob";
	list_has(reg, &q, (const char *const[]){ "susp", "susp-exp" }, 2);
	q.subject = "nobody";
	list_has(reg, &q, NULL, 0);
	q.org_scope = NULL;
	q.subject = "";
	list_has(reg, &q, (const char *const[]){ "nosub" }, 1);
	q.org_scope = "acme";
	q.subject = NULL;
	q.type = REGISTRY_TYPE_ID;
	list_has(reg, &q, (const char *const[]){ "rev" }, 1);
	q.type = -1;
	/* Revocations: revoked, suspended or deleted, while a verifier with
	 * leeway could still accept the token. */
	q.revocations = 1;
	list_has(reg, &q, (const char *const[]){ "susp", "susp-exp", "rev", "rev-leeway", "del" }, 5);
	q.org_scope = "beta";
	list_has(reg, &q, NULL, 0);
	q.org_scope = "acme";
	q.status = REGISTRY_SUSPENDED;
	list_has(reg, &q, (const char *const[]){ "susp" }, 1);

	q.status = -1;
	q.limit = 0;
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), -EINVAL);
	q.limit = REGISTRY_LIST_MAX + 1;
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), -EINVAL);
	q.limit = 10;
	q.status = 7;
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), -EINVAL);
	q.status = -1;
	q.type = REGISTRY_TYPE_UNREGISTERED + 1;
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), -EINVAL);
	registry_close(reg);
}

static void test_list_scan_cap(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_INTERVAL);
	struct registry_query q = { .status = -1, .type = REGISTRY_TYPE_REFRESH, .limit = 10, .now = NOW };
	struct registry_record *recs, rec;
	struct registry_wait w;
	size_t count;
	uint64_t next, first_seq = 0;

	memset(counter.calls, 0, sizeof(counter.calls));
	memset(counter.results, 0, sizeof(counter.results));

	for (int i = 0; i < REGISTRY_LIST_SCAN_MAX + 5; i++) {
		char jti[32];

		snprintf(jti, sizeof(jti), "c-%d", i);
		rec = make_rec(jti, "acme", "alice", i == REGISTRY_LIST_SCAN_MAX + 2 ? REGISTRY_TYPE_REFRESH
										     : REGISTRY_TYPE_ACCESS,
			       NOW + HOUR);
		/* Done callbacks come in order: waiting for the last is enough. */
		if (i < REGISTRY_LIST_SCAN_MAX + 4) {
			assert_int_equal(registry_add(reg, &rec, count_done, (void *)(uintptr_t)0), 0);
			continue;
		}
		registry_wait_init(&w);
		assert_int_equal(registry_add(reg, &rec, registry_wait_done, &w), 0);
		assert_int_equal(registry_wait(&w), 0);
	}
	assert_int_equal(counter.calls[0], REGISTRY_LIST_SCAN_MAX + 4);
	assert_int_equal(counter.results[0], 0);
	assert_int_equal(registry_get(reg, "c-0", NULL, &rec), 0);
	first_seq = rec.seq;
	/* The first call looks at REGISTRY_LIST_SCAN_MAX records, finds none,
	 * and says where to go on. */
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), 0);
	assert_int_equal(count, 0);
	assert_non_null(recs);
	free(recs);
	assert_int_equal(registry_get(reg, "c-99999", NULL, &rec), 0);
	assert_int_equal(next, rec.seq);
	assert_true(next > first_seq);
	q.cursor = next;
	assert_int_equal(registry_list(reg, &q, &recs, &count, &next), 0);
	assert_int_equal(count, 1);
	assert_string_equal(recs[0].jti, "c-100002");
	assert_int_equal(next, 0);
	free(recs);
	registry_close(reg);
}

/* ---- status lists and indices --------------------------------------- */

static void test_statuslist(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	uint8_t bits[REGISTRY_STATUSLIST_SIZE / 4];
	uint64_t gen0, gen;
	struct registry_record rec;
	uint32_t idx[6];

	assert_int_equal(registry_statuslist(reg, 0, bits, &gen), -ENOENT);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(registry_reserve_index(reg, &idx[i]), 0);
		assert_int_equal(idx[i], (uint32_t)i);
	}
	assert_int_equal(registry_statuslist(reg, 1, bits, &gen), -ENOENT);
	for (int i = 0; i < 6; i++) {
		char jti[16];

		snprintf(jti, sizeof(jti), "sl-%d", i);
		rec = make_rec(jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
		rec.status_idx = idx[i];
		assert_int_equal(add_wait(reg, &rec), 0);
	}
	memset(bits, 0xAA, sizeof(bits));
	assert_int_equal(registry_statuslist(reg, 0, bits, &gen0), 0);
	for (size_t i = 0; i < sizeof(bits); i++)
		assert_int_equal(bits[i], 0);

	/* Entry i: bits 2*(i%4) of byte i/4 (least-significant first). */
	assert_int_equal(set_wait(reg, "sl-1", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "sl-2", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(set_wait(reg, "sl-5", NULL, REGISTRY_DELETED, NULL, NULL), 0);
	assert_int_equal(registry_statuslist(reg, 0, bits, &gen), 0);
	assert_true(gen != gen0);
	assert_int_equal(bits[0], (2 << 2) | (1 << 4));
	assert_int_equal(bits[1], 1 << 2);
	for (size_t i = 2; i < sizeof(bits); i++)
		assert_int_equal(bits[i], 0);

	/* A no-op changes nothing, not even the generation. */
	gen0 = gen;
	assert_int_equal(set_wait(reg, "sl-2", NULL, REGISTRY_REVOKED, NULL, NULL), 0);
	assert_int_equal(registry_statuslist(reg, 0, bits, &gen), 0);
	assert_int_equal(gen, gen0);
	assert_int_equal(set_wait(reg, "sl-1", NULL, REGISTRY_ACTIVE, NULL, NULL), 0);
	assert_int_equal(registry_statuslist(reg, 0, bits, &gen), 0);
	assert_true(gen != gen0);
	assert_int_equal(bits[0], 1 << 4);

	/* The status list after a reopen. */
	registry_close(reg);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_statuslist(reg, 0, bits, &gen), 0);
	assert_int_equal(bits[0], 1 << 4);
	assert_int_equal(bits[1], 1 << 2);
	registry_close(reg);
}

static void test_reserve_index_survives(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record rec;
	struct registry_stats stats;
	uint32_t idx = 0, prev;

	for (int i = 0; i < 5; i++) {
		prev = idx;
		assert_int_equal(registry_reserve_index(reg, &idx), 0);
		assert_true(i == 0 || idx > prev);
	}
	assert_int_equal(idx, 4);
	/* The highest index is held by a record that expires. */
	rec = make_rec("holder", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW - 2 * HOUR);
	rec.status_idx = 4;
	assert_int_equal(add_wait(reg, &rec), 0);
	add_ok(reg, "keeper", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	registry_close(reg);

	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_reserve_index(reg, &idx), 0);
	assert_int_equal(idx, 5);
	assert_int_equal(registry_reserve_index(reg, &idx), 0);
	assert_int_equal(idx, 6);
	/* Compaction drops the holder; the META frame keeps the mark. */
	assert_int_equal(registry_compact(reg, NOW, &stats), 0);
	assert_int_equal(stats.records, 1);
	assert_int_equal(stats.next_status_idx, 7);
	assert_int_equal(registry_get(reg, "holder", NULL, &rec), -ENOENT);
	registry_close(reg);

	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_reserve_index(reg, &idx), 0);
	assert_int_equal(idx, 7);
	registry_close(reg);
}

/* ---- the file ----------------------------------------------------------- */

/* Records with every field set, status changes with reasons, an
 * unregistered revocation: the state a reopen must reproduce. */
static void populate(struct registry *reg)
{
	struct registry_wait w;

	for (int i = 0; i < 40; i++) {
		struct registry_record rec;
		char jti[32];
		uint32_t idx;

		snprintf(jti, sizeof(jti), "r-%02d", i);
		rec = make_rec(jti, (const char *[]){ "acme", "beta", "" }[i % 3], i % 2 ? "alice" : "bob",
			       (enum registry_type)(i % 5), NOW + (i % 4 == 0 ? -2 * HOUR : HOUR) + i);
		assert_int_equal(registry_reserve_index(reg, &idx), 0);
		rec.status_idx = i % 7 ? idx : REGISTRY_NO_INDEX;
		snprintf(rec.name, sizeof(rec.name), "name %d", i);
		snprintf(rec.description, sizeof(rec.description), "description of %d, with spaces", i);
		snprintf(rec.client_id, sizeof(rec.client_id), "client-%d", i % 4);
		snprintf(rec.kid, sizeof(rec.kid), "kid-%d", i % 2);
		if (i % 5 == REGISTRY_TYPE_CHILD)
			snprintf(rec.parent, sizeof(rec.parent), "r-%02d", i - 1);
		if (i % 5 == REGISTRY_TYPE_REFRESH)
			snprintf(rec.family, sizeof(rec.family), "r-01");
		assert_int_equal(add_wait(reg, &rec), 0);
	}
	for (int round = 0; round < 5; round++) {
		assert_int_equal(set_wait(reg, "r-10", NULL, REGISTRY_SUSPENDED, "hold", NULL), 0);
		assert_int_equal(set_wait(reg, "r-10", NULL, REGISTRY_ACTIVE, "release", NULL), 0);
	}
	assert_int_equal(set_wait(reg, "r-02", NULL, REGISTRY_SUSPENDED, "audit", NULL), 0);
	assert_int_equal(set_wait(reg, "r-03", NULL, REGISTRY_REVOKED, "stolen", NULL), 0);
	assert_int_equal(set_wait(reg, "r-05", NULL, REGISTRY_DELETED, "", NULL), 0);
	assert_int_equal(set_wait(reg, "r-08", NULL, REGISTRY_DELETED, "gone", NULL), 0);   /* expired too */
	assert_int_equal(set_wait(reg, "r-12", NULL, REGISTRY_REVOKED, "expired anyway", NULL), 0);
	registry_wait_init(&w);
	assert_int_equal(registry_revoke_unregistered(reg, "offline", "acme", NOW + HOUR, NOW, "minted by hand",
						      registry_wait_done, &w),
			 0);
	assert_int_equal(registry_wait(&w), 0);
}

static void test_reopen_identical(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record *before, *after;
	struct registry_stats s1, s2;
	size_t nb, na;

	populate(reg);
	nb = snapshot(reg, &before);
	assert_int_equal(nb, 41);
	registry_get_stats(reg, &s1);
	registry_close(reg);

	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_log_unmapped();
	na = snapshot(reg, &after);
	assert_same_snapshot(before, nb, after, na);
	registry_get_stats(reg, &s2);
	assert_int_equal(s2.records, s1.records);
	assert_int_equal(s2.frames, s1.frames);
	assert_int_equal(s2.file_bytes, s1.file_bytes);
	assert_int_equal(s2.next_status_idx, s1.next_status_idx);
	assert_int_equal(s2.failed, 0);
	free(after);
	free(before);
	registry_close(reg);
}

static void test_compaction(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record *before, *after, *kept, got;
	struct registry_stats s1, s2;
	struct offsets offs = { 0 };
	struct registry_scan scan;
	size_t nb, na, nk = 0, len;
	uint8_t *image;

	populate(reg);
	nb = snapshot(reg, &before);
	registry_get_stats(reg, &s1);
	/* Dropped: expired beyond the leeway, whatever their status. */
	kept = malloc(nb * sizeof(*kept));
	assert_non_null(kept);
	for (size_t i = 0; i < nb; i++)
		if (before[i].exp + LEEWAY >= NOW)
			kept[nk++] = before[i];
	assert_true(nk < nb && nk > 0);

	assert_int_equal(registry_compact(reg, NOW, &s2), 0);
	assert_int_equal(s2.records, nk);
	assert_true(s2.frames < s1.frames);
	assert_true(s2.file_bytes < s1.file_bytes);
	assert_int_equal(s2.next_status_idx, s1.next_status_idx);
	na = snapshot(reg, &after);
	assert_same_snapshot(kept, nk, after, na);
	free(after);
	assert_int_equal(registry_get(reg, "r-08", NULL, &got), -ENOENT);   /* deleted and expired */
	assert_int_equal(registry_get(reg, "r-05", NULL, &got), 0);         /* deleted, unexpired */
	assert_int_equal(got.status, REGISTRY_DELETED);

	/* The file holds exactly that, cleanly, with its META frame. */
	image = read_file(log_path(), &len);
	assert_int_equal(len, s2.file_bytes);
	assert_int_equal(registry_scan(image, len, collect_offset, &offs, &scan), 0);
	assert_int_equal(scan.verdict, REGISTRY_CLEAN);
	assert_int_equal(scan.frames, s2.frames);
	assert_int_equal(offs.meta, 1);
	free(image);

	/* Appends continue after it, above every seq. */
	add_ok(reg, "after", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(set_wait(reg, "r-01", NULL, REGISTRY_REVOKED, "late", NULL), 0);
	/* "gone" was only a dropped record's reason: given back, then reused. */
	assert_int_equal(set_wait(reg, "r-10", NULL, REGISTRY_SUSPENDED, "gone", NULL), 0);
	assert_int_equal(registry_get(reg, "r-10", NULL, &got), 0);
	assert_string_equal(got.reason, "gone");
	assert_int_equal(registry_get(reg, "r-03", NULL, &got), 0);
	assert_string_equal(got.reason, "stolen");
	assert_int_equal(registry_get(reg, "after", NULL, &got), 0);
	assert_true(got.seq > kept[nk - 1].seq);
	nb = snapshot(reg, &after);
	registry_close(reg);

	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	free(before);
	na = snapshot(reg, &before);
	assert_same_snapshot(after, nb, before, na);
	registry_close(reg);
	free(before);
	free(after);
	free(kept);
}

/* Toggles jti's status n times (ending ACTIVE when n is even). */
static void toggle(struct registry *reg, const char *jti, int n)
{
	for (int i = 0; i < n; i++)
		assert_int_equal(set_wait(reg, jti, NULL, i % 2 ? REGISTRY_ACTIVE : REGISTRY_SUSPENDED, NULL, NULL), 0);
}

static void ten_records(struct registry *reg)
{
	for (int i = 0; i < 10; i++) {
		char jti[16];

		snprintf(jti, sizeof(jti), "b-%d", i);
		/* iat = NOW + HOUR: a change at NOW moves status_at away from it. */
		add_ok(reg, jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + 2 * HOUR);
	}
}

static void test_compaction_decision(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record *before, *after;
	struct registry_stats s1, s2;
	size_t nb, na;
	int compacted = -1;

	/* The flusher keeps its own threshold (100000 frames): it stays out. */
	ten_records(reg);
	toggle(reg, "b-0", 5);
	toggle(reg, "b-1", 6);
	registry_get_stats(reg, &s1);
	assert_int_equal(s1.frames, 21);
	/* Over 21 frames but 12 live (10 records, a suspended one, META). */
	assert_int_equal(registry_internal_maybe_compact(reg, NOW, 21, &compacted), 0);
	assert_int_equal(compacted, 0);
	assert_int_equal(registry_internal_maybe_compact(reg, NOW, 20, &compacted), 0);
	assert_int_equal(compacted, 0);
	/* Over half superseded: compacts. */
	toggle(reg, "b-2", 10);
	nb = snapshot(reg, &before);
	assert_int_equal(registry_internal_maybe_compact(reg, NOW, 20, &compacted), 0);
	assert_int_equal(compacted, 1);
	registry_get_stats(reg, &s2);
	/* 10 TOKEN frames, 3 STATUS frames keeping status_at, META. */
	assert_int_equal(s2.frames, 14);
	na = snapshot(reg, &after);
	assert_same_snapshot(before, nb, after, na);
	free(after);
	/* Expired records count as dead frames: 10 records expired, 14
	 * frames, nothing superseded. */
	assert_int_equal(registry_internal_maybe_compact(reg, NOW, 10, &compacted), 0);
	assert_int_equal(compacted, 0);
	assert_int_equal(registry_internal_maybe_compact(reg, NOW + 3 * HOUR, 10, &compacted), 0);
	assert_int_equal(compacted, 1);
	registry_get_stats(reg, &s2);
	assert_int_equal(s2.records, 0);
	assert_int_equal(s2.frames, 1);
	free(before);
	registry_close(reg);
}

static void test_background_compaction(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record *before, *after;
	struct registry_stats stats;
	size_t nb, na;

	registry_internal_set_compact_min(reg, 20);
	ten_records(reg);
	toggle(reg, "b-0", 5);
	toggle(reg, "b-1", 6);
	toggle(reg, "b-2", 10);
	nb = snapshot(reg, &before);
	/* The flusher looks after every batch, the last one before it stops
	 * included: 31 frames were written, 12 of them live. */
	registry_close(reg);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	registry_get_stats(reg, &stats);
	assert_true(stats.frames < 31);
	na = snapshot(reg, &after);
	assert_same_snapshot(before, nb, after, na);
	free(before);
	free(after);
	registry_close(reg);
}

/* ---- concurrency and durability --------------------------------------- */

#define THREADS 16
#define PER_THREAD 20

struct writer_arg {
	struct registry *reg;
	int id;
	int failures;
};

static void *writer(void *p)
{
	struct writer_arg *a = p;

	for (int i = 0; i < PER_THREAD; i++) {
		char jti[32];
		struct registry_record rec;

		snprintf(jti, sizeof(jti), "w-%d-%d", a->id, i);
		rec = make_rec(jti, a->id % 2 ? "acme" : "beta", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
		a->failures += add_wait(a->reg, &rec) != 0;
		if (i % 3 == 0)
			a->failures += set_wait(a->reg, jti, NULL, REGISTRY_REVOKED, "bulk", NULL) != 0;
	}
	return NULL;
}

static void test_concurrent_writers(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct writer_arg args[THREADS];
	pthread_t threads[THREADS];
	struct registry_stats stats;

	for (int t = 0; t < THREADS; t++) {
		args[t] = (struct writer_arg){ .reg = reg, .id = t };
		assert_int_equal(pthread_create(&threads[t], NULL, writer, &args[t]), 0);
	}
	for (int t = 0; t < THREADS; t++) {
		assert_int_equal(pthread_join(threads[t], NULL), 0);
		assert_int_equal(args[t].failures, 0);
	}
	registry_close(reg);

	/* Everything acknowledged is in the file. */
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.records, THREADS * PER_THREAD);
	for (int t = 0; t < THREADS; t++)
		for (int i = 0; i < PER_THREAD; i++) {
			char jti[32];

			snprintf(jti, sizeof(jti), "w-%d-%d", t, i);
			assert_int_equal(status_of(reg, jti), i % 3 == 0 ? REGISTRY_REVOKED : REGISTRY_ACTIVE);
		}
	registry_close(reg);
}

/* Writers go on while the main thread compacts again and again: frames
 * queued when a compaction starts are in its file, their waiters answered
 * after its rename; nothing acknowledged is lost either way. */
static void test_compaction_concurrent(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct writer_arg args[4];
	pthread_t threads[4];
	struct registry_stats stats;
	int compactions = 0;

	for (int t = 0; t < 4; t++) {
		args[t] = (struct writer_arg){ .reg = reg, .id = t };
		assert_int_equal(pthread_create(&threads[t], NULL, writer, &args[t]), 0);
	}
	for (int k = 0; k < 20; k++) {
		assert_int_equal(registry_compact(reg, NOW, NULL), 0);
		compactions++;
	}
	for (int t = 0; t < 4; t++) {
		assert_int_equal(pthread_join(threads[t], NULL), 0);
		assert_int_equal(args[t].failures, 0);
	}
	assert_int_equal(compactions, 20);
	registry_close(reg);

	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.records, 4 * PER_THREAD);
	for (int t = 0; t < 4; t++)
		for (int i = 0; i < PER_THREAD; i++) {
			char jti[32];

			snprintf(jti, sizeof(jti), "w-%d-%d", t, i);
			assert_int_equal(status_of(reg, jti), i % 3 == 0 ? REGISTRY_REVOKED : REGISTRY_ACTIVE);
		}
	registry_close(reg);
}

/* Changes whose done is only counted, answered by registry_close at the
 * latest: each exactly once. */
static void run_changes_counted(enum registry_fsync policy)
{
	struct registry *reg = open_registry(policy);
	struct registry_record rec;
	size_t n = 0, changed;

	memset(counter.calls, 0, sizeof(counter.calls));
	memset(counter.results, 0, sizeof(counter.results));
	for (int i = 0; i < 10; i++) {
		char jti[16];

		snprintf(jti, sizeof(jti), "d-%d", i);
		rec = make_rec(jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
		assert_int_equal(registry_add(reg, &rec, count_done, (void *)(uintptr_t)n++), 0);
	}
	assert_int_equal(registry_set_status(reg, "d-0", NULL, REGISTRY_REVOKED, NOW, NULL, count_done,
					     (void *)(uintptr_t)n++, &changed),
			 0);
	/* A no-op and a revocation of nobody's tokens still answer. */
	assert_int_equal(registry_set_status(reg, "d-0", NULL, REGISTRY_REVOKED, NOW, NULL, count_done,
					     (void *)(uintptr_t)n++, &changed),
			 0);
	assert_int_equal(changed, 0);
	assert_int_equal(registry_revoke_subject(reg, "nobody", NULL, NOW, count_done, (void *)(uintptr_t)n++,
						 &changed),
			 0);
	assert_int_equal(registry_revoke_subject(reg, "alice", NULL, NOW, count_done, (void *)(uintptr_t)n++,
						 &changed),
			 0);
	assert_int_equal(changed, 9);
	assert_int_equal(registry_revoke_unregistered(reg, "u-1", "", NOW + HOUR, NOW, "r", count_done,
						      (void *)(uintptr_t)n++),
			 0);
	/* Refused calls never answer. */
	assert_int_equal(registry_add(reg, &rec, count_done, (void *)(uintptr_t)n), -EEXIST);
	assert_int_equal(registry_set_status(reg, "d-0", NULL, REGISTRY_ACTIVE, NOW, NULL, count_done,
					     (void *)(uintptr_t)n, &changed),
			 -EPERM);
	registry_close(reg);
	for (size_t i = 0; i <= n; i++) {
		assert_int_equal(counter.calls[i], i < n ? 1 : 0);
		if (i < n)
			assert_int_equal(counter.results[i], 0);
	}

	reg = open_registry(policy);
	assert_int_equal(status_of(reg, "d-9"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "u-1"), REGISTRY_REVOKED);
	registry_close(reg);
}

static void test_done_once_always(void **state)
{
	run_changes_counted(REGISTRY_FSYNC_ALWAYS);
}

static void test_done_once_interval(void **state)
{
	run_changes_counted(REGISTRY_FSYNC_INTERVAL);
}

static void test_interval_durable(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_INTERVAL);
	struct registry_stats stats;

	for (int i = 0; i < 50; i++) {
		char jti[16];

		snprintf(jti, sizeof(jti), "i-%d", i);
		add_ok(reg, jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	}
	assert_int_equal(set_wait(reg, "i-7", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.frames, 51);
	registry_close(reg);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.records, 50);
	assert_int_equal(status_of(reg, "i-7"), REGISTRY_SUSPENDED);
	registry_close(reg);
}

struct fail_ctx {
	struct registry *reg;
	int add_result, wait_result, later_add, later_set, later_subject, later_unreg, failed;
};

static int do_failing_writes(void *arg)
{
	struct fail_ctx *c = arg;
	struct registry_record rec = make_rec("f-2", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	struct registry_stats stats;
	struct registry_wait w;
	int full = open("/dev/full", O_WRONLY | O_CLOEXEC);

	assert_true(full >= 0);
	assert_true(dup2(full, registry_internal_fd(c->reg)) >= 0);
	close(full);
	registry_wait_init(&w);
	c->add_result = registry_add(c->reg, &rec, registry_wait_done, &w);
	c->wait_result = c->add_result == 0 ? registry_wait(&w) : 1;
	rec = make_rec("f-3", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	c->later_add = registry_add(c->reg, &rec, registry_wait_done, NULL);
	c->later_set = registry_set_status(c->reg, "f-1", NULL, REGISTRY_REVOKED, NOW, NULL, registry_wait_done, NULL,
					   NULL);
	c->later_subject = registry_revoke_subject(c->reg, "alice", NULL, NOW, registry_wait_done, NULL, NULL);
	c->later_unreg = registry_revoke_unregistered(c->reg, "f-4", "", NOW + HOUR, NOW, NULL, registry_wait_done,
						      NULL);
	registry_get_stats(c->reg, &stats);
	c->failed = stats.failed;
	return 0;
}

static void test_write_failure(void **state)
{
	struct fail_ctx c = { 0 };
	struct registry_record got;
	const char *log;
	int r;

	c.reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	add_ok(c.reg, "f-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	log = fixture_capture_stderr(do_failing_writes, &c, &r);
	assert_int_equal(c.add_result, 0);
	assert_int_equal(c.wait_result, -EIO);
	assert_int_equal(c.later_add, -EIO);
	assert_int_equal(c.later_set, -EIO);
	assert_int_equal(c.later_subject, -EIO);
	assert_int_equal(c.later_unreg, -EIO);
	assert_int_equal(c.failed, 1);
	assert_non_null(strstr(log, "level=error"));
	assert_non_null(strstr(log, "registry write failed"));
	assert_non_null(strstr(log, "No space left on device"));
	/* Logged once. */
	assert_null(strstr(strstr(log, "registry write failed") + 1, "registry write failed"));
	assert_int_equal(registry_compact(c.reg, NOW, NULL), -EIO);
	registry_close(c.reg);

	/* The file still holds what was acknowledged, and nothing else. */
	c.reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_get(c.reg, "f-1", NULL, &got), 0);
	assert_int_equal(got.status, REGISTRY_ACTIVE);
	assert_int_equal(registry_get(c.reg, "f-2", NULL, &got), -ENOENT);
	registry_close(c.reg);
}

/* The file's frames: the scan's verdict, the count in *ret_frames. */
static enum registry_verdict scan_log(size_t *ret_frames)
{
	struct offsets offs = { 0 };
	struct registry_scan scan;
	size_t len;
	uint8_t *image = read_file(log_path(), &len);

	assert_int_equal(registry_scan(image, len, collect_offset, &offs, &scan), 0);
	free(image);
	*ret_frames = scan.frames;
	return scan.verdict;
}

static off_t log_size(void)
{
	struct stat st;

	assert_int_equal(stat(log_path(), &st), 0);
	return st.st_size;
}

/* A file size limit (RLIMIT_FSIZE) a few bytes past the end of the file:
 * the next write stops short there, as on a disk that fills up in the
 * middle of a batch, and the one after fails (EFBIG). */
static void limit_file_size(off_t extra)
{
	struct rlimit rl;

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
	rl.rlim_cur = extra < 0 ? rl.rlim_max : (rlim_t)(log_size() + extra);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

/* A disk that stops taking writes in the middle of a batch and then takes
 * them again: the change is refused (-EIO, never 0), and so is every change
 * until then; the torn bytes are cut off, the failed batch is written ahead
 * of anything newer, changes are accepted again without a reopen, and the
 * file reads back clean with the index's records. */
static void test_write_recovery(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record rec = make_rec("w-2", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	struct registry_stats stats;
	struct sigaction ign = { .sa_handler = SIG_IGN }, old;
	int64_t before;
	off_t good;
	size_t frames;

	(void)state;
	/* Recovery is driven by hand below: the flusher's own retry would
	 * cut and tear the file while the sizes are checked. */
	registry_internal_pause_timers(reg, 1);
	add_ok(reg, "w-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	good = log_size();
	assert_int_equal(sigaction(SIGXFSZ, &ign, &old), 0);
	limit_file_size(10);
	before = registry_mono_ns();
	assert_int_equal(add_wait(reg, &rec), -EIO);
	/* The failure starts the retry clock: the first timed retry waits
	 * REGISTRY_RETRY_MS, not none. */
	assert_true(atomic_load(&reg->last_retry_ns) >= before);
	assert_true(atomic_load(&reg->last_retry_ns) <= registry_mono_ns());
	/* The torn write left 10 bytes. */
	assert_int_equal(log_size(), good + 10);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.failed, REGISTRY_FAILED_IO);
	rec = make_rec("w-3", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(add_wait(reg, &rec), -EIO);
	assert_int_equal(set_wait(reg, "w-1", NULL, REGISTRY_REVOKED, "r", NULL), -EIO);
	assert_int_equal(status_of(reg, "w-1"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "w-3", NULL, &rec), -ENOENT);
	/* Still short: the retry tears again, after cutting the last tear. */
	assert_true(registry_internal_recover(reg) < 0);
	assert_int_equal(log_size(), good + 10);
	limit_file_size(-1);
	assert_int_equal(sigaction(SIGXFSZ, &old, NULL), 0);
	assert_int_equal(registry_internal_recover(reg), 0);
	registry_get_stats(reg, &stats);
	assert_int_equal(stats.failed, 0);
	assert_int_equal(stats.file_bytes, (uint64_t)log_size());
	assert_int_equal(scan_log(&frames), REGISTRY_CLEAN);
	assert_int_equal(frames, 2);
	assert_int_equal(stats.frames, 2);
	registry_internal_pause_timers(reg, 0);
	add_ok(reg, "w-4", "acme", "carol", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(set_wait(reg, "w-1", NULL, REGISTRY_REVOKED, "r", NULL), 0);
	registry_close(reg);

	assert_int_equal(scan_log(&frames), REGISTRY_CLEAN);
	assert_int_equal(frames, 4);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(status_of(reg, "w-1"), REGISTRY_REVOKED);
	/* Refused, then written with the retry: a 503 that may have happened. */
	assert_int_equal(status_of(reg, "w-2"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "w-3", NULL, &rec), -ENOENT);
	assert_int_equal(status_of(reg, "w-4"), REGISTRY_ACTIVE);
	registry_close(reg);
}

struct unsynced_ctx {
	struct registry *reg;
	int sync_result, recover_result, later_add, failed;
};

static int do_failing_sync(void *arg)
{
	struct unsynced_ctx *c = arg;
	struct registry_record rec = make_rec("u-3", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	struct registry_stats stats;
	int fd = registry_internal_fd(c->reg), saved = dup(fd), null = open("/dev/null", O_WRONLY | O_CLOEXEC);

	assert_true(saved >= 0);
	assert_true(null >= 0);
	/* fdatasync of /dev/null fails (EINVAL) where writes succeed: a
	 * periodic fdatasync failing after its batches were written. */
	assert_true(dup2(null, fd) >= 0);
	close(null);
	c->sync_result = registry_internal_sync(c->reg);
	/* The file back, as after a writeback error the kernel reported
	 * once: a bare fdatasync would now succeed. */
	assert_true(dup2(saved, fd) >= 0);
	close(saved);
	c->recover_result = registry_internal_recover(c->reg);
	c->later_add = add_wait(c->reg, &rec);
	registry_get_stats(c->reg, &stats);
	c->failed = stats.failed;
	return 0;
}

/* fsync=interval, a periodic fdatasync fails: the batches written since the
 * last good one may be lost and are not in memory to write again, so the
 * registry fails for good (retrying the fdatasync would "succeed" and
 * later frames would follow a hole), with a log line saying why and what
 * to do; the acknowledged records are there after a reopen. */
static void test_interval_sync_failure(void **state)
{
	struct unsynced_ctx c = { 0 };
	struct registry_record got;
	const char *log, *line;
	size_t frames;
	int r;

	(void)state;
	c.reg = open_registry(REGISTRY_FSYNC_INTERVAL);
	registry_internal_pause_timers(c.reg, 1);
	add_ok(c.reg, "u-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	add_ok(c.reg, "u-2", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	log = fixture_capture_stderr(do_failing_sync, &c, &r);
	assert_int_equal(c.sync_result, -EIO);
	assert_int_equal(c.recover_result, -EIO);
	assert_int_equal(c.later_add, -EIO);
	assert_int_equal(c.failed, REGISTRY_FAILED_FOR_GOOD);
	line = strstr(log, "registry fdatasync failed under fsync=interval");
	assert_non_null(line);
	assert_non_null(strstr(line, "may be lost"));
	assert_non_null(strstr(line, "hsmjwtctl registry check"));
	assert_non_null(strstr(line, "Invalid argument"));
	/* Logged once, the retry included. */
	assert_null(strstr(line + 1, "registry fdatasync failed"));
	assert_null(strstr(log, "takes writes again"));
	assert_int_equal(registry_get(c.reg, "u-3", NULL, &got), -ENOENT);
	assert_int_equal(set_wait(c.reg, "u-1", NULL, REGISTRY_REVOKED, NULL, NULL), -EIO);
	registry_close(c.reg);

	assert_int_equal(scan_log(&frames), REGISTRY_CLEAN);
	assert_int_equal(frames, 2);
	c.reg = open_registry(REGISTRY_FSYNC_INTERVAL);
	assert_int_equal(status_of(c.reg, "u-1"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(c.reg, "u-2"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(c.reg, "u-3", NULL, &got), -ENOENT);
	registry_close(c.reg);
}

/* Closed while the disk still tears the write: the file ends in a torn
 * tail, never a corrupt middle, and opens with the acknowledged records. */
static void test_close_while_torn(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record rec = make_rec("t-2", "acme", "bob", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	struct sigaction ign = { .sa_handler = SIG_IGN }, old;
	size_t frames;

	(void)state;
	add_ok(reg, "t-1", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	assert_int_equal(sigaction(SIGXFSZ, &ign, &old), 0);
	limit_file_size(7);
	assert_int_equal(add_wait(reg, &rec), -EIO);
	registry_close(reg);
	limit_file_size(-1);
	assert_int_equal(sigaction(SIGXFSZ, &old, NULL), 0);
	assert_int_equal(scan_log(&frames), REGISTRY_TORN_TAIL);
	assert_int_equal(frames, 1);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(status_of(reg, "t-1"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "t-2", NULL, &rec), -ENOENT);
	add_ok(reg, "t-3", "acme", "carol", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	registry_close(reg);
	assert_int_equal(scan_log(&frames), REGISTRY_CLEAN);
	assert_int_equal(frames, 2);
}

/* ---- recovery ----------------------------------------------------------- */

/* Five records in the file; the frame offsets (and the file) returned. */
static uint8_t *five_records(size_t *ret_len, struct offsets *offs)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_scan scan;
	uint8_t *image;

	for (int i = 0; i < 5; i++) {
		char jti[16];

		snprintf(jti, sizeof(jti), "k-%d", i);
		add_ok(reg, jti, "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
	}
	registry_close(reg);
	image = read_file(log_path(), ret_len);
	memset(offs, 0, sizeof(*offs));
	assert_int_equal(registry_scan(image, *ret_len, collect_offset, offs, &scan), 0);
	assert_int_equal(scan.verdict, REGISTRY_CLEAN);
	assert_int_equal(offs->count, 5);
	return image;
}

struct open_ctx {
	struct registry *reg;
};

static int do_open(void *arg)
{
	struct open_ctx *c = arg;

	c->reg = NULL;
	return registry_open(fixture_tmpdir, REGISTRY_FSYNC_ALWAYS, LEEWAY, &c->reg);
}

static void test_torn_tail(void **state)
{
	struct offsets offs;
	struct open_ctx c;
	size_t len, cuts[3];
	uint8_t *image = five_records(&len, &offs);
	struct registry_record got;
	struct registry_stats stats;

	cuts[0] = offs.off[4] + 1;
	cuts[1] = offs.off[4] + 12;
	cuts[2] = len - 1;
	for (int k = 0; k < 3; k++) {
		char want[64];
		const char *log;
		int r;

		fixture_write_file(REGISTRY_FILE, image, cuts[k], 0600);
		log = fixture_capture_stderr(do_open, &c, &r);
		assert_int_equal(r, 0);
		snprintf(want, sizeof(want), "offset=%zu dropped_bytes=%zu", offs.off[4], cuts[k] - offs.off[4]);
		assert_non_null(strstr(log, "torn tail"));
		assert_non_null(strstr(log, want));
		assert_log_unmapped();
		registry_get_stats(c.reg, &stats);
		assert_int_equal(stats.records, 4);
		assert_int_equal(stats.file_bytes, offs.off[4]);
		assert_int_equal(registry_get(c.reg, "k-3", NULL, &got), 0);
		assert_int_equal(registry_get(c.reg, "k-4", NULL, &got), -ENOENT);
		/* Appends land right after the good frames. */
		add_ok(c.reg, "k-4", "acme", "alice", REGISTRY_TYPE_ACCESS, NOW + HOUR);
		registry_close(c.reg);
		log = fixture_capture_stderr(do_open, &c, &r);
		assert_int_equal(r, 0);
		assert_null(strstr(log, "torn tail"));
		registry_get_stats(c.reg, &stats);
		assert_int_equal(stats.records, 5);
		registry_close(c.reg);
	}
	/* Zeros past the last frame, pages of them: a crash after the size
	 * grew and before the data landed. */
	{
		size_t zlen = len + 3 * 4096;
		uint8_t *zeros = calloc(1, zlen);
		char want[64];
		const char *log;
		int r;

		assert_non_null(zeros);
		memcpy(zeros, image, len);
		fixture_write_file(REGISTRY_FILE, zeros, zlen, 0600);
		log = fixture_capture_stderr(do_open, &c, &r);
		assert_int_equal(r, 0);
		snprintf(want, sizeof(want), "offset=%zu dropped_bytes=%zu", len, zlen - len);
		assert_non_null(strstr(log, want));
		assert_log_unmapped();
		registry_get_stats(c.reg, &stats);
		assert_int_equal(stats.records, 5);
		assert_int_equal(stats.file_bytes, len);
		registry_close(c.reg);
		free(zeros);
	}
	/* A magic torn at creation. */
	fixture_write_file(REGISTRY_FILE, image, 3, 0600);
	c.reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	registry_get_stats(c.reg, &stats);
	assert_int_equal(stats.records, 0);
	assert_int_equal(stats.file_bytes, REGISTRY_MAGIC_LEN);
	registry_close(c.reg);
	free(image);
}

static void test_corrupt_middle(void **state)
{
	struct offsets offs;
	struct open_ctx c;
	char want[64];
	size_t len, len2;
	uint8_t *image = five_records(&len, &offs), *after;
	const char *log;
	int r;

	image[offs.off[2] + 20] ^= 0x40;
	fixture_write_file(REGISTRY_FILE, image, len, 0600);
	log = fixture_capture_stderr(do_open, &c, &r);
	assert_int_equal(r, -EBADMSG);
	assert_null(c.reg);
	snprintf(want, sizeof(want), "offset=%zu", offs.off[2]);
	assert_non_null(strstr(log, "level=error"));
	assert_non_null(strstr(log, want));
	assert_non_null(strstr(log, "hsmjwtctl registry check --repair"));
	/* Refused, not repaired: the file is as it was. */
	after = read_file(log_path(), &len2);
	assert_int_equal(len2, len);
	assert_memory_equal(after, image, len);
	free(after);
	free(image);
}

static void test_duplicate_and_orphan_frames(void **state)
{
	uint8_t image[4 * (REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY)];
	struct registry_entry e;
	struct open_ctx c;
	size_t len = REGISTRY_MAGIC_LEN, n;
	const char *log;
	int r;

	memcpy(image, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	e.seq = 1;
	snprintf(e.jti, sizeof(e.jti), "dup");
	e.exp = NOW + HOUR;
	e.status_idx = REGISTRY_NO_INDEX;
	assert_int_equal(registry_encode(&e, image + len, sizeof(image) - len, &n), 0);
	len += n;
	/* A status change of a jti the file never registered: ignored. */
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_STATUS;
	e.seq = 2;
	snprintf(e.jti, sizeof(e.jti), "ghost");
	e.status = REGISTRY_REVOKED;
	assert_int_equal(registry_encode(&e, image + len, sizeof(image) - len, &n), 0);
	len += n;
	fixture_write_file(REGISTRY_FILE, image, len, 0600);
	log = fixture_capture_stderr(do_open, &c, &r);
	assert_int_equal(r, 0);
	assert_non_null(strstr(log, "unknown tokens"));
	registry_close(c.reg);

	/* The same jti registered twice is refused like corruption. */
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	e.seq = 3;
	snprintf(e.jti, sizeof(e.jti), "dup");
	e.status_idx = REGISTRY_NO_INDEX;
	assert_int_equal(registry_encode(&e, image + len, sizeof(image) - len, &n), 0);
	len += n;
	fixture_write_file(REGISTRY_FILE, image, len, 0600);
	log = fixture_capture_stderr(do_open, &c, &r);
	assert_int_equal(r, -EBADMSG);
	assert_non_null(strstr(log, "hsmjwtctl registry check --repair"));
}

/* ---- registry_consume (refresh rotation, SPEC §5.3) ---------------------- */

static struct registry_record family_rec(const char *jti, enum registry_type type, const char *family)
{
	struct registry_record rec = make_rec(jti, "acme", "alice", type, NOW + HOUR);

	snprintf(rec.family, sizeof(rec.family), "%s", family);
	return rec;
}

static int consume_wait(struct registry *reg, const char *jti, const struct registry_record *add, size_t n,
			enum registry_status *status)
{
	struct registry_wait w;
	int r;

	registry_wait_init(&w);
	r = registry_consume(reg, jti, NOW, "rotated", add, n, registry_wait_done, &w, status);
	if (r < 0) {
		/* done will not come: the wait is not used. */
		pthread_mutex_destroy(&w.mutex);
		pthread_cond_destroy(&w.cond);
		return r;
	}
	return registry_wait(&w);
}

static void test_consume(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record add[2], rec, after;
	enum registry_status status = REGISTRY_ACTIVE;
	size_t changed = 0;

	/* A family: its first refresh token R1 and an access token of it. */
	add_dep(reg, "R1", "acme", REGISTRY_TYPE_REFRESH, "", "R1");
	add_dep(reg, "A1", "acme", REGISTRY_TYPE_ACCESS, "", "R1");
	add[0] = family_rec("A2", REGISTRY_TYPE_ACCESS, "R1");
	add[1] = family_rec("R2", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), 0);
	/* R1 retired with the reason, and nothing else with it: the family's
	 * tokens (A1), which set_status(REVOKED) would revoke, stay. */
	assert_int_equal(registry_get(reg, "R1", NULL, &rec), 0);
	assert_int_equal(rec.status, REGISTRY_REVOKED);
	assert_string_equal(rec.reason, "rotated");
	assert_int_equal(rec.status_at, NOW);
	assert_int_equal(status_of(reg, "A1"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "A2", NULL, &rec), 0);
	assert_int_equal(rec.status, REGISTRY_ACTIVE);
	assert_string_equal(rec.family, "R1");
	assert_int_equal(registry_get(reg, "R2", NULL, &rec), 0);
	assert_int_equal(rec.type, REGISTRY_TYPE_REFRESH);

	/* Consumed again: -EALREADY with the status, and its adds are not
	 * registered. */
	add[0] = family_rec("A3", REGISTRY_TYPE_ACCESS, "R1");
	add[1] = family_rec("R3", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EALREADY);
	assert_int_equal(status, REGISTRY_REVOKED);
	assert_int_equal(registry_get(reg, "A3", NULL, &rec), -ENOENT);
	assert_int_equal(registry_get(reg, "R3", NULL, &rec), -ENOENT);

	/* What reuse detection then does: the family's first jti revoked
	 * (already revoked: a no-op for it) reaches every member, the
	 * successors the consume registered included. */
	assert_int_equal(set_wait(reg, "R1", NULL, REGISTRY_REVOKED, "refresh token reuse", &changed), 0);
	assert_int_equal(changed, 3);
	assert_int_equal(status_of(reg, "A1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "A2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "R2"), REGISTRY_REVOKED);

	/* Durable: the same after a reopen. */
	assert_int_equal(registry_get(reg, "R1", NULL, &rec), 0);
	registry_close(reg);
	reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	assert_int_equal(registry_get(reg, "R1", NULL, &after), 0);
	assert_same_record(&rec, &after);
	assert_int_equal(registry_get(reg, "A2", NULL, &after), 0);
	assert_int_equal(after.status, REGISTRY_REVOKED);
	assert_string_equal(after.family, "R1");
	registry_close(reg);
}

/* A logout revokes the refresh token the client holds — after a rotation
 * not the family's first — and with it the grant: every token of the
 * family (RFC 7009 §2.1), and nothing of another family. */
static void test_revoking_a_rotated_refresh_token_ends_its_family(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record add[2];
	enum registry_status status = REGISTRY_ACTIVE;
	size_t changed = 0;

	add_dep(reg, "R1", "acme", REGISTRY_TYPE_REFRESH, "", "R1");
	add_dep(reg, "A1", "acme", REGISTRY_TYPE_ACCESS, "", "R1");
	add_dep(reg, "S1", "acme", REGISTRY_TYPE_REFRESH, "", "S1");
	add_dep(reg, "B1", "acme", REGISTRY_TYPE_ACCESS, "", "S1");
	add[0] = family_rec("A2", REGISTRY_TYPE_ACCESS, "R1");
	add[1] = family_rec("R2", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), 0);

	assert_int_equal(set_wait(reg, "R2", "acme", REGISTRY_REVOKED, "logout", &changed), 0);
	assert_int_equal(changed, 3);
	assert_int_equal(status_of(reg, "R2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "A1"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "A2"), REGISTRY_REVOKED);
	assert_int_equal(status_of(reg, "S1"), REGISTRY_ACTIVE);
	assert_int_equal(status_of(reg, "B1"), REGISTRY_ACTIVE);
	/* Another org's scope does not reach the family. */
	assert_int_equal(set_wait(reg, "S1", "other", REGISTRY_REVOKED, "x", &changed), -ENOENT);
	assert_int_equal(status_of(reg, "B1"), REGISTRY_ACTIVE);
	registry_close(reg);
}

static void test_consume_refusals(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_ALWAYS);
	struct registry_record add[REGISTRY_CONSUME_MAX + 1], rec;
	enum registry_status status = REGISTRY_ACTIVE;

	add_dep(reg, "R1", "acme", REGISTRY_TYPE_REFRESH, "", "R1");
	add_dep(reg, "S1", "acme", REGISTRY_TYPE_REFRESH, "", "S1");
	add_dep(reg, "EXISTS", "acme", REGISTRY_TYPE_ACCESS, "", "");
	assert_int_equal(set_wait(reg, "S1", NULL, REGISTRY_SUSPENDED, NULL, NULL), 0);

	/* Unknown, suspended. */
	add[0] = family_rec("N1", REGISTRY_TYPE_ACCESS, "R1");
	assert_int_equal(consume_wait(reg, "nope", add, 1, &status), -ENOENT);
	assert_int_equal(consume_wait(reg, "S1", add, 1, &status), -EALREADY);
	assert_int_equal(status, REGISTRY_SUSPENDED);
	assert_int_equal(status_of(reg, "S1"), REGISTRY_SUSPENDED);
	/* An add whose jti is known, twice in the batch, or the consumed
	 * jti itself: nothing changes, R1 stays active. */
	add[1] = family_rec("EXISTS", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EEXIST);
	add[1] = family_rec("N1", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EEXIST);
	add[1] = family_rec("R1", REGISTRY_TYPE_REFRESH, "R1");
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EEXIST);
	assert_int_equal(status_of(reg, "R1"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "N1", NULL, &rec), -ENOENT);
	/* A bad record (not ACTIVE, unterminated) or too many. */
	add[1] = family_rec("N2", REGISTRY_TYPE_REFRESH, "R1");
	add[1].status = REGISTRY_REVOKED;
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EINVAL);
	add[1] = family_rec("N2", REGISTRY_TYPE_REFRESH, "R1");
	memset(add[1].subject, 's', sizeof(add[1].subject));
	assert_int_equal(consume_wait(reg, "R1", add, 2, &status), -EINVAL);
	for (size_t i = 0; i < REGISTRY_CONSUME_MAX + 1; i++) {
		char jti[16];
		snprintf(jti, sizeof(jti), "M%zu", i);
		add[i] = family_rec(jti, REGISTRY_TYPE_ACCESS, "R1");
	}
	assert_int_equal(consume_wait(reg, "R1", add, REGISTRY_CONSUME_MAX + 1, &status), -EINVAL);
	assert_int_equal(consume_wait(reg, NULL, NULL, 0, &status), -EINVAL);
	assert_int_equal(consume_wait(reg, "R1", NULL, 1, &status), -EINVAL);
	assert_int_equal(status_of(reg, "R1"), REGISTRY_ACTIVE);
	assert_int_equal(registry_get(reg, "M0", NULL, &rec), -ENOENT);

	/* No jti: the batch alone, as one change (the code grant's three
	 * tokens); the most a batch takes; a consume without adds. */
	assert_int_equal(consume_wait(reg, NULL, add, REGISTRY_CONSUME_MAX, NULL), 0);
	for (size_t i = 0; i < REGISTRY_CONSUME_MAX; i++)
		assert_int_equal(status_of(reg, add[i].jti), REGISTRY_ACTIVE);
	assert_int_equal(consume_wait(reg, "R1", NULL, 0, NULL), 0);
	assert_int_equal(status_of(reg, "R1"), REGISTRY_REVOKED);
	registry_close(reg);
}

struct consume_race {
	struct registry *reg;
	const char *root;
	pthread_barrier_t *barrier;
	struct registry_record add[2];
	int result;
	enum registry_status status;
};

static void *consume_racer(void *arg)
{
	struct consume_race *c = arg;

	pthread_barrier_wait(c->barrier);
	c->result = consume_wait(c->reg, c->root, c->add, 2, &c->status);
	return NULL;
}

/* Two threads consume one jti, 100 times over: exactly one wins, the other
 * sees it retired, and only the winner's successors exist. */
static void test_consume_race(void **state)
{
	struct registry *reg = open_registry(REGISTRY_FSYNC_INTERVAL);

	for (int round = 0; round < 100; round++) {
		struct consume_race c[2];
		pthread_barrier_t barrier;
		pthread_t threads[2];
		struct registry_record rec;
		char root[32];
		int wins = 0;

		snprintf(root, sizeof(root), "ROOT-%d", round);
		add_dep(reg, root, "acme", REGISTRY_TYPE_REFRESH, "", root);
		assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
		for (int i = 0; i < 2; i++) {
			char a[32], r[32];
			snprintf(a, sizeof(a), "A-%d-%d", round, i);
			snprintf(r, sizeof(r), "R-%d-%d", round, i);
			c[i].reg = reg;
			c[i].root = root;
			c[i].barrier = &barrier;
			c[i].add[0] = family_rec(a, REGISTRY_TYPE_ACCESS, root);
			c[i].add[1] = family_rec(r, REGISTRY_TYPE_REFRESH, root);
			c[i].result = 1;
			c[i].status = REGISTRY_ACTIVE;
			assert_int_equal(pthread_create(&threads[i], NULL, consume_racer, &c[i]), 0);
		}
		for (int i = 0; i < 2; i++)
			assert_int_equal(pthread_join(threads[i], NULL), 0);
		pthread_barrier_destroy(&barrier);
		for (int i = 0; i < 2; i++) {
			if (c[i].result == 0) {
				wins++;
				assert_int_equal(registry_get(reg, c[i].add[0].jti, NULL, &rec), 0);
				assert_int_equal(registry_get(reg, c[i].add[1].jti, NULL, &rec), 0);
			} else {
				assert_int_equal(c[i].result, -EALREADY);
				assert_int_equal(c[i].status, REGISTRY_REVOKED);
				assert_int_equal(registry_get(reg, c[i].add[0].jti, NULL, &rec), -ENOENT);
				assert_int_equal(registry_get(reg, c[i].add[1].jti, NULL, &rec), -ENOENT);
			}
		}
		assert_int_equal(wins, 1);
		/* The loser's family revocation reaches the winner's tokens. */
		assert_int_equal(set_wait(reg, root, NULL, REGISTRY_REVOKED, "refresh token reuse", NULL), 0);
		for (int i = 0; i < 2; i++)
			if (c[i].result == 0) {
				assert_int_equal(status_of(reg, c[i].add[0].jti), REGISTRY_REVOKED);
				assert_int_equal(status_of(reg, c[i].add[1].jti), REGISTRY_REVOKED);
			}
	}
	registry_close(reg);
}

static void test_open_refuses_symlink(void **state)
{
	char target[PATH_MAX + 16];
	struct registry *reg = NULL;

	snprintf(target, sizeof(target), "%s/elsewhere", fixture_tmpdir);
	assert_int_equal(symlink(target, log_path()), 0);
	assert_int_equal(registry_open(fixture_tmpdir, REGISTRY_FSYNC_ALWAYS, LEEWAY, &reg), -ELOOP);
	assert_null(reg);
	assert_int_equal(access(target, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_add_get_check, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_org_scope, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_check_unregistered, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_transitions, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_cascade, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_add_under_an_inactive_parent, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_count_children, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_count_active_parents, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_revocations_counted, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_revoke_subject, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_list_pagination, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_list_filters, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_list_scan_cap, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_statuslist, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_reserve_index_survives, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_reopen_identical, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_compaction, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_compaction_decision, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_background_compaction, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_writers, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_compaction_concurrent, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_done_once_always, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_done_once_interval, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_interval_durable, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_write_failure, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_write_recovery, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_interval_sync_failure, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_close_while_torn, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_middle, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_and_orphan_frames, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_open_refuses_symlink, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_consume, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_revoking_a_rotated_refresh_token_ends_its_family, fixture_tmpdir_setup,
						fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_consume_refusals, fixture_tmpdir_setup, fixture_tmpdir_teardown),
		cmocka_unit_test_setup_teardown(test_consume_race, fixture_tmpdir_setup, fixture_tmpdir_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
