#include "hsmjwt/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsmjwt/jws.h"
#include "hsmjwt/keystate.h"

/* Distinct route patterns counted apart; the API's table has fewer.  A
 * route seen when the table is full counts as "other". */
#define METRICS_MAX_ROUTES 64
/* Addresses mapped to a route row: the same pattern may sit at several
 * addresses (one table entry per method, literals the compiler did not
 * merge), and each must land on one row, or the text would carry one
 * series twice. */
#define METRICS_MAX_ROUTE_KEYS (2 * METRICS_MAX_ROUTES)
#define METRICS_CODE_MIN 100
#define METRICS_CODE_COUNT 500            /* 100..599 */
/* verifications_total: valid, then JWS_E_MALFORMED (-1001) .. JWS_E_UNAVAILABLE (-1012). */
#define METRICS_RESULT_COUNT 13

static const char *const metrics_types[] = { "access", "refresh", "id", "parent", "child" };
#define METRICS_TYPE_COUNT (sizeof(metrics_types) / sizeof(metrics_types[0]))

static const char *const metrics_ops[METRICS_HSM_OP_COUNT] = {
	[METRICS_HSM_SIGN] = "sign",         [METRICS_HSM_VERIFY] = "verify", [METRICS_HSM_LOGIN] = "login",
	[METRICS_HSM_GENERATE] = "generate", [METRICS_HSM_DESTROY] = "destroy", [METRICS_HSM_FIND] = "find",
	[METRICS_HSM_RECOVER] = "recover",
};

/* Upper bounds of hsm_sign_seconds: an in-memory-fast ES256 on a local
 * token takes ~40 µs, RSA on SoftHSM ~0.5 ms, a network HSM milliseconds,
 * a struggling one seconds. */
static const struct {
	uint64_t ns;
	const char *le;
} metrics_buckets[] = {
	{ 100000, "0.0001" },    { 250000, "0.00025" },    { 500000, "0.0005" },     { 1000000, "0.001" },
	{ 2500000, "0.0025" },   { 5000000, "0.005" },     { 10000000, "0.01" },     { 25000000, "0.025" },
	{ 50000000, "0.05" },    { 100000000, "0.1" },     { 250000000, "0.25" },    { 500000000, "0.5" },
	{ 1000000000, "1" },     { 2500000000u, "2.5" },
};
#define METRICS_BUCKET_COUNT (sizeof(metrics_buckets) / sizeof(metrics_buckets[0]))

/* Row METRICS_MAX_ROUTES is "other": no route, or the table is full. */
#define METRICS_ROUTE_OTHER METRICS_MAX_ROUTES

static struct {
	atomic_uint_fast64_t issued[METRICS_TYPE_COUNT][JWS_ALG_COUNT];
	atomic_uint_fast64_t verifications[METRICS_RESULT_COUNT];
	atomic_uint_fast64_t revocations;
	atomic_uint_fast64_t hsm_ops[METRICS_HSM_OP_COUNT][2];   /* [op][ok] */
	atomic_uint_fast64_t sign_buckets[METRICS_BUCKET_COUNT + 1];   /* not cumulative; last: +Inf only */
	atomic_uint_fast64_t sign_sum_ns;
	atomic_uint_fast64_t http[METRICS_MAX_ROUTES + 1][METRICS_CODE_COUNT];
	atomic_uint_fast64_t key_rotations;
	atomic_uint_fast64_t rate_limited;
	atomic_uint_fast64_t config_reloads[2];                 /* [ok] */
	atomic_int_fast64_t http_connections;
} metrics;

/* Route rows.  Written under metrics_routes_lock only, and an entry is
 * complete before route_key_count (release) makes it visible: lookups read
 * without the lock. */
static pthread_mutex_t metrics_routes_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *metrics_route_names[METRICS_MAX_ROUTES];
static unsigned metrics_route_rows;                      /* under the lock */
static atomic_uint metrics_route_rows_seen;              /* rows readable by render */
static struct {
	const char *key;
	unsigned row;
} metrics_route_keys[METRICS_MAX_ROUTE_KEYS];
static atomic_uint metrics_route_key_count;

#define METRICS_ADD(counter, n) atomic_fetch_add_explicit(&(counter), (n), memory_order_relaxed)
#define METRICS_GET(counter) atomic_load_explicit(&(counter), memory_order_relaxed)

void metrics_token_issued(const char *type, enum jws_alg alg)
{
	if (type == NULL || alg <= JWS_ALG_INVALID || alg >= JWS_ALG_COUNT)
		return;
	for (size_t t = 0; t < METRICS_TYPE_COUNT; t++)
		if (strcmp(type, metrics_types[t]) == 0) {
			METRICS_ADD(metrics.issued[t][alg], 1);
			return;
		}
}

void metrics_verification(int result)
{
	int index = 0;

	if (result != 0)
		index = result <= JWS_E_MALFORMED && result >= JWS_E_UNAVAILABLE ? JWS_E_MALFORMED + 1 - result
										  : 1;
	METRICS_ADD(metrics.verifications[index], 1);
}

void metrics_revocations(uint64_t count)
{
	METRICS_ADD(metrics.revocations, count);
}

void metrics_hsm_operation(enum metrics_hsm_op op, int ok)
{
	if ((unsigned)op >= METRICS_HSM_OP_COUNT)
		return;
	METRICS_ADD(metrics.hsm_ops[op][ok ? 1 : 0], 1);
}

void metrics_hsm_sign_ns(uint64_t ns)
{
	size_t b = 0;

	while (b < METRICS_BUCKET_COUNT && ns > metrics_buckets[b].ns)
		b++;
	METRICS_ADD(metrics.sign_buckets[b], 1);
	METRICS_ADD(metrics.sign_sum_ns, ns);
}

/* Under metrics_routes_lock: the row of the pattern named route, made if
 * there is room; METRICS_ROUTE_OTHER if not. */
static unsigned metrics_route_row_locked(const char *route)
{
	unsigned row;

	for (row = 0; row < metrics_route_rows; row++)
		if (strcmp(metrics_route_names[row], route) == 0)
			return row;
	if (metrics_route_rows == METRICS_MAX_ROUTES)
		return METRICS_ROUTE_OTHER;
	metrics_route_names[row] = route;
	metrics_route_rows++;
	atomic_store_explicit(&metrics_route_rows_seen, metrics_route_rows, memory_order_release);
	return row;
}

static unsigned metrics_route_row(const char *route)
{
	unsigned n = atomic_load_explicit(&metrics_route_key_count, memory_order_acquire), row;

	if (route == NULL)
		return METRICS_ROUTE_OTHER;
	for (unsigned i = 0; i < n; i++)
		if (metrics_route_keys[i].key == route)
			return metrics_route_keys[i].row;
	/* The first request on this route (or a full table). */
	pthread_mutex_lock(&metrics_routes_lock);
	n = atomic_load_explicit(&metrics_route_key_count, memory_order_relaxed);
	for (unsigned i = 0; i < n; i++)
		if (metrics_route_keys[i].key == route) {
			row = metrics_route_keys[i].row;
			goto out;
		}
	row = metrics_route_row_locked(route);
	/* Kept even when it maps to "other": the next lookup is lock-free. */
	if (n < METRICS_MAX_ROUTE_KEYS) {
		metrics_route_keys[n].key = route;
		metrics_route_keys[n].row = row;
		atomic_store_explicit(&metrics_route_key_count, n + 1, memory_order_release);
	}
out:
	pthread_mutex_unlock(&metrics_routes_lock);
	return row;
}

void metrics_http_request(const char *route, int code)
{
	if (code < METRICS_CODE_MIN || code >= METRICS_CODE_MIN + METRICS_CODE_COUNT)
		return;
	METRICS_ADD(metrics.http[metrics_route_row(route)][code - METRICS_CODE_MIN], 1);
}

void metrics_key_rotation(void)
{
	METRICS_ADD(metrics.key_rotations, 1);
}

void metrics_rate_limited(void)
{
	METRICS_ADD(metrics.rate_limited, 1);
}

void metrics_config_reload(int ok)
{
	METRICS_ADD(metrics.config_reloads[ok ? 1 : 0], 1);
}

void metrics_http_connections_add(int delta)
{
	METRICS_ADD(metrics.http_connections, delta);
}

void metrics_reset(void)
{
	memset(&metrics, 0, sizeof(metrics));
}

/* ---- the text format --------------------------------------------------- */

struct metrics_buf {
	char *data;
	size_t len, cap;
	int failed;
};

static void metrics_printf(struct metrics_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void metrics_printf(struct metrics_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap * 2 > b->len + (size_t)n + 1 ? b->cap * 2 : b->len + (size_t)n + 1;
		char *grown = realloc(b->data, cap);
		if (grown == NULL) {
			b->failed = 1;
			return;
		}
		b->data = grown;
		b->cap = cap;
	}
}

/* A label value as the text format quotes it: \\, \" and \n escaped. */
static void metrics_put_label(struct metrics_buf *b, const char *name, const char *value, int last)
{
	metrics_printf(b, "%s=\"", name);
	for (const char *p = value; *p != '\0'; p++) {
		if (*p == '\\')
			metrics_printf(b, "\\\\");
		else if (*p == '"')
			metrics_printf(b, "\\\"");
		else if (*p == '\n')
			metrics_printf(b, "\\n");
		else
			metrics_printf(b, "%c", *p);
	}
	metrics_printf(b, "\"%s", last ? "}" : ",");
}

static void metrics_family(struct metrics_buf *b, const char *name, const char *type, const char *help)
{
	metrics_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *metrics_result_name(size_t index)
{
	return index == 0 ? "valid" : jws_error_reason(JWS_E_MALFORMED + 1 - (int)index);
}

static void metrics_render_counters(struct metrics_buf *b)
{
	metrics_family(b, "hsmjwt_tokens_issued_total", "counter", "Tokens signed, by family and algorithm.");
	for (size_t t = 0; t < METRICS_TYPE_COUNT; t++)
		for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
			uint64_t v = METRICS_GET(metrics.issued[t][a]);
			/* Only pairs that occurred: 5 families times 13 names
			 * would be mostly zeros no configuration can move. */
			if (v == 0)
				continue;
			metrics_printf(b, "hsmjwt_tokens_issued_total{");
			metrics_put_label(b, "type", metrics_types[t], 0);
			metrics_put_label(b, "alg", jws_alg_name((enum jws_alg)a), 1);
			metrics_printf(b, " %" PRIu64 "\n", v);
		}
	metrics_family(b, "hsmjwt_verifications_total", "counter",
		       "Token verifications answered, by result (valid or the reason reported).");
	for (size_t i = 0; i < METRICS_RESULT_COUNT; i++) {
		metrics_printf(b, "hsmjwt_verifications_total{");
		metrics_put_label(b, "result", metrics_result_name(i), 1);
		metrics_printf(b, " %" PRIu64 "\n", (uint64_t)METRICS_GET(metrics.verifications[i]));
	}
	metrics_family(b, "hsmjwt_revocations_total", "counter",
		       "Registry records revoked, each record of a cascade counted.");
	metrics_printf(b, "hsmjwt_revocations_total %" PRIu64 "\n", (uint64_t)METRICS_GET(metrics.revocations));
	metrics_family(b, "hsmjwt_hsm_operations_total", "counter", "PKCS#11 operations, by operation and result.");
	for (size_t op = 0; op < METRICS_HSM_OP_COUNT; op++)
		for (int ok = 1; ok >= 0; ok--) {
			metrics_printf(b, "hsmjwt_hsm_operations_total{");
			metrics_put_label(b, "op", metrics_ops[op], 0);
			metrics_put_label(b, "result", ok ? "ok" : "error", 1);
			metrics_printf(b, " %" PRIu64 "\n", (uint64_t)METRICS_GET(metrics.hsm_ops[op][ok]));
		}
}

static void metrics_render_histogram(struct metrics_buf *b)
{
	uint64_t cumulative = 0, sum = METRICS_GET(metrics.sign_sum_ns);

	metrics_family(b, "hsmjwt_hsm_sign_seconds", "histogram",
		       "Time in C_SignInit and C_Sign, successful or not.");
	for (size_t i = 0; i <= METRICS_BUCKET_COUNT; i++) {
		cumulative += METRICS_GET(metrics.sign_buckets[i]);
		metrics_printf(b, "hsmjwt_hsm_sign_seconds_bucket{");
		metrics_put_label(b, "le", i < METRICS_BUCKET_COUNT ? metrics_buckets[i].le : "+Inf", 1);
		metrics_printf(b, " %" PRIu64 "\n", cumulative);
	}
	metrics_printf(b, "hsmjwt_hsm_sign_seconds_sum %" PRIu64 ".%09" PRIu64 "\n", sum / 1000000000u,
		       sum % 1000000000u);
	/* The +Inf bucket's own reading, so the two agree under concurrent
	 * observations. */
	metrics_printf(b, "hsmjwt_hsm_sign_seconds_count %" PRIu64 "\n", cumulative);
}

static void metrics_render_http(struct metrics_buf *b)
{
	unsigned rows = atomic_load_explicit(&metrics_route_rows_seen, memory_order_acquire);

	metrics_family(b, "hsmjwt_http_requests_total", "counter",
		       "HTTP replies, by route pattern (\"other\": no route) and status code.");
	for (unsigned row = 0; row <= METRICS_MAX_ROUTES; row++) {
		const char *path = row == METRICS_ROUTE_OTHER ? "other" : row < rows ? metrics_route_names[row] : NULL;

		if (path == NULL)
			continue;
		for (int c = 0; c < METRICS_CODE_COUNT; c++) {
			uint64_t v = METRICS_GET(metrics.http[row][c]);
			if (v == 0)
				continue;
			metrics_printf(b, "hsmjwt_http_requests_total{");
			metrics_put_label(b, "path", path, 0);
			metrics_printf(b, "code=\"%d\"} %" PRIu64 "\n", c + METRICS_CODE_MIN, v);
		}
	}
}

static void metrics_render_gauges(struct metrics_buf *b, const struct metrics_gauges *g)
{
	metrics_family(b, "hsmjwt_keys", "gauge", "Published keys, by lifecycle state and algorithm.");
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT; a++) {
		/* Every state of an algorithm that has a key, so that a state
		 * emptied reads 0 instead of vanishing. */
		if (g->keys[0][a] + g->keys[1][a] + g->keys[2][a] == 0)
			continue;
		for (int s = 0; s < 3; s++) {
			metrics_printf(b, "hsmjwt_keys{");
			metrics_put_label(b, "state", keystate_name((enum keystate_state)(KEYSTATE_NEXT + s)), 0);
			metrics_put_label(b, "alg", jws_alg_name((enum jws_alg)a), 1);
			metrics_printf(b, " %" PRIu64 "\n", g->keys[s][a]);
		}
	}
	metrics_family(b, "hsmjwt_key_rotations_total", "counter", "Keys generated by a rotation, manual or automatic.");
	metrics_printf(b, "hsmjwt_key_rotations_total %" PRIu64 "\n", (uint64_t)METRICS_GET(metrics.key_rotations));
	metrics_family(b, "hsmjwt_registry_records", "gauge", "Records in the registry's index.");
	metrics_printf(b, "hsmjwt_registry_records %" PRIu64 "\n", g->registry_records);
	metrics_family(b, "hsmjwt_parent_tokens_active", "gauge", "Parent tokens active and unexpired.");
	metrics_printf(b, "hsmjwt_parent_tokens_active %" PRIu64 "\n", g->parent_tokens_active);
	metrics_family(b, "hsmjwt_rate_limited_total", "counter", "Requests refused with 429 by rate_limit.");
	metrics_printf(b, "hsmjwt_rate_limited_total %" PRIu64 "\n", (uint64_t)METRICS_GET(metrics.rate_limited));
	metrics_family(b, "hsmjwt_http_connections", "gauge", "HTTP connections open.");
	metrics_printf(b, "hsmjwt_http_connections %" PRId64 "\n", (int64_t)METRICS_GET(metrics.http_connections));
	metrics_family(b, "hsmjwt_config_reloads_total", "counter", "Configuration reloads, applied or refused.");
	metrics_printf(b, "hsmjwt_config_reloads_total{result=\"ok\"} %" PRIu64 "\n",
		       (uint64_t)METRICS_GET(metrics.config_reloads[1]));
	metrics_printf(b, "hsmjwt_config_reloads_total{result=\"refused\"} %" PRIu64 "\n",
		       (uint64_t)METRICS_GET(metrics.config_reloads[0]));
	metrics_family(b, "hsmjwt_build_info", "gauge", "The running build.");
	metrics_printf(b, "hsmjwt_build_info{");
	metrics_put_label(b, "version", HSMJWT_VERSION, 1);
	metrics_printf(b, " 1\n");
}

int metrics_render(const struct metrics_gauges *gauges, char **ret_text, size_t *ret_len)
{
	struct metrics_buf b = { malloc(16384), 0, 16384, 0 };

	if (b.data == NULL)
		return -ENOMEM;
	metrics_render_counters(&b);
	metrics_render_histogram(&b);
	metrics_render_http(&b);
	metrics_render_gauges(&b, gauges);
	if (b.failed) {
		free(b.data);
		return -ENOMEM;
	}
	*ret_text = b.data;
	*ret_len = b.len;
	return 0;
}
