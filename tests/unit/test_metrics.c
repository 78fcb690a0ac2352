/* metrics: the Prometheus text exposition, parsed back here line by line
 * (HELP/TYPE per family, sample syntax, label escapes), exact counts under
 * concurrent writers, the histogram's cumulative buckets, the closed label
 * sets (unknown values dropped or mapped), metrics_reset. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/jws.h"
#include "hsmjwt/metrics.h"

/* ---- a parser of the text format (0.0.4) --------------------------------- */

#define MAX_FAMILIES 32
#define MAX_SAMPLES 4096

struct family {
	char name[96];
	char type[16];
	int help;
};

struct sample {
	char name[96];
	char labels[512];     /* decoded, "k=v,k=v" in the order written */
	double value;
	const struct family *family;
};

struct exposition {
	struct family families[MAX_FAMILIES];
	size_t nfamilies;
	struct sample samples[MAX_SAMPLES];
	size_t nsamples;
};

static int name_char(char c, int first)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

/* The metric name at *p into out; advances *p. */
static int parse_name(const char **p, char *out, size_t size)
{
	size_t n = 0;

	if (!name_char(**p, 1))
		return -1;
	while (name_char(**p, n == 0)) {
		if (n + 1 >= size)
			return -1;
		out[n++] = *(*p)++;
	}
	out[n] = '\0';
	return 0;
}

static struct family *find_family(struct exposition *e, const char *name)
{
	for (size_t i = 0; i < e->nfamilies; i++)
		if (strcmp(e->families[i].name, name) == 0)
			return &e->families[i];
	return NULL;
}

/* The family a sample belongs to: its own name, or a histogram's with the
 * _bucket, _sum or _count suffix. */
static const struct family *sample_family(struct exposition *e, const char *name)
{
	static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
	struct family *f = find_family(e, name);
	char base[96];

	if (f != NULL)
		return strcmp(f->type, "histogram") == 0 ? NULL : f;
	for (size_t i = 0; i < 3; i++) {
		size_t n = strlen(name), s = strlen(suffixes[i]);
		if (n > s && strcmp(name + n - s, suffixes[i]) == 0) {
			snprintf(base, sizeof(base), "%.*s", (int)(n - s), name);
			f = find_family(e, base);
			if (f != NULL && strcmp(f->type, "histogram") == 0)
				return f;
		}
	}
	return NULL;
}

static int parse_comment(struct exposition *e, const char *line)
{
	char name[96];
	struct family *f;
	const char *p;
	int help;

	if (strncmp(line, "# HELP ", 7) == 0)
		help = 1;
	else if (strncmp(line, "# TYPE ", 7) == 0)
		help = 0;
	else
		return 0;   /* a plain comment */
	p = line + 7;
	if (parse_name(&p, name, sizeof(name)) < 0 || *p != ' ')
		return -1;
	p++;
	f = find_family(e, name);
	if (f == NULL) {
		if (e->nfamilies == MAX_FAMILIES)
			return -1;
		f = &e->families[e->nfamilies++];
		snprintf(f->name, sizeof(f->name), "%s", name);
	}
	if (help) {
		if (f->help || *p == '\0')
			return -1;
		f->help = 1;
		return 0;
	}
	if (f->type[0] != '\0' ||
	    (strcmp(p, "counter") != 0 && strcmp(p, "gauge") != 0 && strcmp(p, "histogram") != 0))
		return -1;
	snprintf(f->type, sizeof(f->type), "%s", p);
	return 0;
}

static int parse_labels(const char **pp, char *out, size_t size)
{
	const char *p = *pp;
	size_t o = 0;

	out[0] = '\0';
	if (*p != '{')
		return 0;
	p++;
	while (*p != '}') {
		char key[64];

		if (parse_name(&p, key, sizeof(key)) < 0 || *p++ != '=' || *p++ != '"')
			return -1;
		o += (size_t)snprintf(out + o, size - o, "%s%s=", o ? "," : "", key);
		while (*p != '"') {
			char c = *p++;
			if (c == '\0' || c == '\n')
				return -1;
			if (c == '\\') {
				c = *p++;
				if (c == 'n')
					c = '\n';
				else if (c != '\\' && c != '"')
					return -1;
			}
			if (o + 2 >= size)
				return -1;
			out[o++] = c;
			out[o] = '\0';
		}
		p++;
		if (*p == ',')
			p++;
		else if (*p != '}')
			return -1;
	}
	*pp = p + 1;
	return 0;
}

static int parse_sample(struct exposition *e, const char *line)
{
	struct sample *s;
	const char *p = line;
	char *end;

	if (e->nsamples == MAX_SAMPLES)
		return -1;
	s = &e->samples[e->nsamples];
	if (parse_name(&p, s->name, sizeof(s->name)) < 0 || parse_labels(&p, s->labels, sizeof(s->labels)) < 0 ||
	    *p++ != ' ')
		return -1;
	s->value = strtod(p, &end);
	if (end == p || *end != '\0')
		return -1;
	s->family = sample_family(e, s->name);
	if (s->family == NULL || s->family->type[0] == '\0')
		return -1;
	for (size_t i = 0; i < e->nsamples; i++)
		if (strcmp(e->samples[i].name, s->name) == 0 && strcmp(e->samples[i].labels, s->labels) == 0)
			return -1;   /* one series twice */
	e->nsamples++;
	return 0;
}

/* Parses text whole; fails the test on the first line that is not valid. */
static void parse(const char *text, size_t len, struct exposition *e)
{
	char line[2048];
	size_t start = 0;

	memset(e, 0, sizeof(*e));
	assert_true(len > 0);
	assert_int_equal(strlen(text), len);
	assert_int_equal(text[len - 1], '\n');
	while (start < len) {
		const char *nl = memchr(text + start, '\n', len - start);
		size_t n = (size_t)(nl - (text + start));

		assert_non_null(nl);
		assert_true(n < sizeof(line));
		memcpy(line, text + start, n);
		line[n] = '\0';
		if (line[0] == '#') {
			if (parse_comment(e, line) < 0)
				fail_msg("bad comment line: %s", line);
		} else if (parse_sample(e, line) < 0) {
			fail_msg("bad sample line: %s", line);
		}
		start += n + 1;
	}
	for (size_t i = 0; i < e->nfamilies; i++)
		if (!e->families[i].help || e->families[i].type[0] == '\0')
			fail_msg("family without HELP or TYPE: %s", e->families[i].name);
}

static const struct sample *find_sample(const struct exposition *e, const char *name, const char *labels)
{
	for (size_t i = 0; i < e->nsamples; i++)
		if (strcmp(e->samples[i].name, name) == 0 && strcmp(e->samples[i].labels, labels) == 0)
			return &e->samples[i];
	return NULL;
}

/* The value of a sample that must be there. */
static double value_of(const struct exposition *e, const char *name, const char *labels)
{
	const struct sample *s = find_sample(e, name, labels);

	if (s == NULL)
		fail_msg("no sample %s{%s}", name, labels);
	return s->value;
}

static size_t count_samples(const struct exposition *e, const char *name)
{
	size_t n = 0;

	for (size_t i = 0; i < e->nsamples; i++)
		n += strcmp(e->samples[i].name, name) == 0;
	return n;
}

static struct exposition *render_parsed(const struct metrics_gauges *gauges)
{
	static struct exposition e;
	struct metrics_gauges zero;
	char *text = NULL;
	size_t len = 0;

	memset(&zero, 0, sizeof(zero));
	assert_int_equal(metrics_render(gauges ? gauges : &zero, &text, &len), 0);
	assert_non_null(text);
	parse(text, len, &e);
	free(text);
	return &e;
}

/* Route patterns: static storage, compared by address (as api.c's table). */
static const char route_token[] = "/token";
static const char route_verify[] = "/token/verify";
static const char route_jti[] = "/tokens/*";

/* ---- tests ------------------------------------------------------------------ */

static void test_render_format(void **state)
{
	static const struct {
		const char *name, *type;
	} spec[] = {
		{ "hsmjwt_tokens_issued_total", "counter" },  { "hsmjwt_verifications_total", "counter" },
		{ "hsmjwt_revocations_total", "counter" },    { "hsmjwt_hsm_operations_total", "counter" },
		{ "hsmjwt_hsm_sign_seconds", "histogram" },   { "hsmjwt_http_requests_total", "counter" },
		{ "hsmjwt_keys", "gauge" },                   { "hsmjwt_key_rotations_total", "counter" },
		{ "hsmjwt_registry_records", "gauge" },       { "hsmjwt_parent_tokens_active", "gauge" },
		{ "hsmjwt_rate_limited_total", "counter" },   { "hsmjwt_http_connections", "gauge" },
		{ "hsmjwt_config_reloads_total", "counter" }, { "hsmjwt_build_info", "gauge" },
	};
	struct metrics_gauges g;
	struct exposition *e;

	metrics_reset();
	memset(&g, 0, sizeof(g));
	g.keys[0][JWS_ALG_ES256] = 1;
	g.keys[1][JWS_ALG_ES256] = 1;
	g.keys[1][JWS_ALG_RS256] = 2;
	g.registry_records = 12345;
	g.parent_tokens_active = 7;
	metrics_token_issued("access", JWS_ALG_ES256);
	metrics_token_issued("access", JWS_ALG_ES256);
	metrics_token_issued("id", JWS_ALG_RS256);
	metrics_verification(0);
	metrics_verification(JWS_E_EXPIRED);
	metrics_verification(JWS_E_BAD_SIGNATURE);
	metrics_verification(JWS_E_BAD_SIGNATURE);
	metrics_revocations(3);
	metrics_hsm_operation(METRICS_HSM_SIGN, 1);
	metrics_hsm_operation(METRICS_HSM_LOGIN, 0);
	metrics_hsm_sign_ns(42000);
	metrics_http_request(route_token, 200);
	metrics_http_request(route_token, 200);
	metrics_http_request(route_token, 400);
	metrics_http_request(NULL, 404);
	metrics_key_rotation();
	metrics_rate_limited();
	metrics_config_reload(1);
	metrics_config_reload(0);
	metrics_config_reload(0);
	metrics_http_connections_add(3);
	metrics_http_connections_add(-1);
	e = render_parsed(&g);

	assert_int_equal(e->nfamilies, sizeof(spec) / sizeof(spec[0]));
	for (size_t i = 0; i < sizeof(spec) / sizeof(spec[0]); i++) {
		const struct family *f = NULL;
		for (size_t k = 0; k < e->nfamilies; k++)
			if (strcmp(e->families[k].name, spec[i].name) == 0)
				f = &e->families[k];
		if (f == NULL)
			fail_msg("family %s missing", spec[i].name);
		assert_string_equal(f->type, spec[i].type);
	}
	assert_true(value_of(e, "hsmjwt_tokens_issued_total", "type=access,alg=ES256") == 2);
	assert_true(value_of(e, "hsmjwt_tokens_issued_total", "type=id,alg=RS256") == 1);
	assert_int_equal(count_samples(e, "hsmjwt_tokens_issued_total"), 2);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=valid") == 1);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=expired") == 1);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=bad_signature") == 2);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=revoked") == 0);
	assert_true(value_of(e, "hsmjwt_revocations_total", "") == 3);
	assert_true(value_of(e, "hsmjwt_hsm_operations_total", "op=sign,result=ok") == 1);
	assert_true(value_of(e, "hsmjwt_hsm_operations_total", "op=sign,result=error") == 0);
	assert_true(value_of(e, "hsmjwt_hsm_operations_total", "op=login,result=error") == 1);
	assert_int_equal(count_samples(e, "hsmjwt_hsm_operations_total"), 2 * METRICS_HSM_OP_COUNT);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_count", "") == 1);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/token,code=200") == 2);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/token,code=400") == 1);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=other,code=404") == 1);
	assert_int_equal(count_samples(e, "hsmjwt_http_requests_total"), 3);
	/* Every state of an algorithm with keys, none of one without. */
	assert_true(value_of(e, "hsmjwt_keys", "state=next,alg=ES256") == 1);
	assert_true(value_of(e, "hsmjwt_keys", "state=active,alg=ES256") == 1);
	assert_true(value_of(e, "hsmjwt_keys", "state=retired,alg=ES256") == 0);
	assert_true(value_of(e, "hsmjwt_keys", "state=active,alg=RS256") == 2);
	assert_null(find_sample(e, "hsmjwt_keys", "state=active,alg=EdDSA"));
	assert_int_equal(count_samples(e, "hsmjwt_keys"), 6);
	assert_true(value_of(e, "hsmjwt_key_rotations_total", "") == 1);
	assert_true(value_of(e, "hsmjwt_registry_records", "") == 12345);
	assert_true(value_of(e, "hsmjwt_parent_tokens_active", "") == 7);
	assert_true(value_of(e, "hsmjwt_rate_limited_total", "") == 1);
	assert_true(value_of(e, "hsmjwt_http_connections", "") == 2);
	assert_true(value_of(e, "hsmjwt_config_reloads_total", "result=ok") == 1);
	assert_true(value_of(e, "hsmjwt_config_reloads_total", "result=refused") == 2);
	assert_true(value_of(e, "hsmjwt_build_info", "version=" HSMJWT_VERSION) == 1);
}

#define THREADS 4
#define ROUNDS 20000

struct worker_arg {
	const char *route;        /* this thread's own route, seen first concurrently */
};

static void *writer(void *p)
{
	const struct worker_arg *arg = p;

	for (unsigned i = 0; i < ROUNDS; i++) {
		metrics_token_issued(i % 2 ? "refresh" : "access", JWS_ALG_ES256);
		metrics_verification(i % 3 == 0 ? JWS_E_EXPIRED : 0);
		metrics_revocations(2);
		metrics_hsm_operation(METRICS_HSM_SIGN, i % 4 != 0);
		metrics_hsm_sign_ns((uint64_t)(i % 7) * 300000);
		metrics_http_request(route_verify, 200);
		metrics_http_request(arg->route, 201);
		metrics_http_connections_add(1);
		metrics_http_connections_add(-1);
	}
	return NULL;
}

static void test_threads_exact(void **state)
{
	static const char own[THREADS][16] = { "/thread/0", "/thread/1", "/thread/2", "/thread/3" };
	struct worker_arg args[THREADS];
	pthread_t threads[THREADS];
	struct exposition *e;
	double per_bucket_total = 0;

	metrics_reset();
	for (int t = 0; t < THREADS; t++) {
		args[t].route = own[t];
		assert_int_equal(pthread_create(&threads[t], NULL, writer, &args[t]), 0);
	}
	for (int t = 0; t < THREADS; t++)
		assert_int_equal(pthread_join(threads[t], NULL), 0);
	e = render_parsed(NULL);

	assert_true(value_of(e, "hsmjwt_tokens_issued_total", "type=access,alg=ES256") == THREADS * ROUNDS / 2);
	assert_true(value_of(e, "hsmjwt_tokens_issued_total", "type=refresh,alg=ES256") == THREADS * ROUNDS / 2);
	/* i % 3 == 0 for 6667 of 0..19999. */
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=expired") == THREADS * 6667);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=valid") == THREADS * (ROUNDS - 6667));
	assert_true(value_of(e, "hsmjwt_revocations_total", "") == 2.0 * THREADS * ROUNDS);
	assert_true(value_of(e, "hsmjwt_hsm_operations_total", "op=sign,result=ok") == THREADS * ROUNDS * 3 / 4);
	assert_true(value_of(e, "hsmjwt_hsm_operations_total", "op=sign,result=error") == THREADS * ROUNDS / 4);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_count", "") == THREADS * ROUNDS);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/token/verify,code=200") == THREADS * ROUNDS);
	for (int t = 0; t < THREADS; t++) {
		char labels[128];
		snprintf(labels, sizeof(labels), "path=%s,code=201", own[t]);
		assert_true(value_of(e, "hsmjwt_http_requests_total", labels) == ROUNDS);
	}
	assert_int_equal(count_samples(e, "hsmjwt_http_requests_total"), 1 + THREADS);
	assert_true(value_of(e, "hsmjwt_http_connections", "") == 0);
	/* Durations 0, 0.3, ..., 1.8 ms in turn: the 1 ms bucket holds
	 * i % 7 in 0..3. */
	for (unsigned i = 0; i < ROUNDS; i++)
		per_bucket_total += (i % 7) <= 3;
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=0.001") == THREADS * per_bucket_total);
}

static void test_histogram(void **state)
{
	static const char *const les[] = { "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
					   "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf" };
	/* Bounds are inclusive (le): exactly 100 µs is in the first bucket. */
	static const uint64_t observations[] = { 0, 20000, 100000, 100001, 999999, 1000000, 2500000000u, 2500000001u,
						 9000000000u };
	struct exposition *e;
	double previous = 0, sum_ns = 0;
	char labels[32];

	metrics_reset();
	for (size_t i = 0; i < sizeof(observations) / sizeof(observations[0]); i++) {
		metrics_hsm_sign_ns(observations[i]);
		sum_ns += (double)observations[i];
	}
	e = render_parsed(NULL);

	assert_int_equal(count_samples(e, "hsmjwt_hsm_sign_seconds_bucket"), sizeof(les) / sizeof(les[0]));
	for (size_t i = 0; i < sizeof(les) / sizeof(les[0]); i++) {
		double v;
		snprintf(labels, sizeof(labels), "le=%s", les[i]);
		v = value_of(e, "hsmjwt_hsm_sign_seconds_bucket", labels);
		assert_true(v >= previous);
		previous = v;
	}
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=0.0001") == 3);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=0.00025") == 4);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=0.001") == 6);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=1") == 6);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=2.5") == 7);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=+Inf") ==
		    sizeof(observations) / sizeof(observations[0]));
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_count", "") == sizeof(observations) / sizeof(observations[0]));
	/* Nanoseconds printed exactly: 14.102220001 s. */
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_sum", "") == sum_ns / 1e9);
}

static void test_unknown_values(void **state)
{
	struct exposition *e;
	double total = 0;

	metrics_reset();
	metrics_token_issued("bogus", JWS_ALG_ES256);
	metrics_token_issued(NULL, JWS_ALG_ES256);
	metrics_token_issued("access", JWS_ALG_INVALID);
	metrics_token_issued("access", JWS_ALG_COUNT);
	metrics_token_issued("Access", JWS_ALG_ES256);
	metrics_verification(-5);                 /* not a JWS_E_ code: malformed */
	metrics_verification(1);
	metrics_verification(JWS_E_UNAVAILABLE);
	metrics_verification(JWS_E_MALFORMED);
	metrics_hsm_operation(METRICS_HSM_OP_COUNT, 1);
	metrics_hsm_operation((enum metrics_hsm_op)-1, 1);
	metrics_http_request(route_jti, 99);
	metrics_http_request(route_jti, 600);
	metrics_http_request(route_jti, -200);
	metrics_http_request(route_jti, 599);
	metrics_http_request(route_jti, 100);
	metrics_http_request(NULL, 405);
	e = render_parsed(NULL);

	assert_int_equal(count_samples(e, "hsmjwt_tokens_issued_total"), 0);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=malformed") == 3);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=unavailable") == 1);
	for (size_t i = 0; i < e->nsamples; i++)
		if (strcmp(e->samples[i].name, "hsmjwt_hsm_operations_total") == 0)
			total += e->samples[i].value;
	assert_true(total == 0);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/tokens/*,code=599") == 1);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/tokens/*,code=100") == 1);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=other,code=405") == 1);
	assert_int_equal(count_samples(e, "hsmjwt_http_requests_total"), 3);
}

static void test_route_labels(void **state)
{
	/* One pattern at two addresses (two methods' entries): one series. */
	static const char same_a[] = "/same", same_b[] = "/same";
	static const char odd[] = "/we\"ird\\path\nx";
	struct exposition *e;
	char *text = NULL;
	size_t len = 0;
	struct metrics_gauges zero;

	metrics_reset();
	assert_ptr_not_equal(same_a, same_b);
	metrics_http_request(same_a, 200);
	metrics_http_request(same_b, 200);
	metrics_http_request(same_b, 204);
	metrics_http_request(odd, 200);
	e = render_parsed(NULL);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/same,code=200") == 2);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/same,code=204") == 1);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/we\"ird\\path\nx,code=200") == 1);
	memset(&zero, 0, sizeof(zero));
	assert_int_equal(metrics_render(&zero, &text, &len), 0);
	assert_non_null(strstr(text, "hsmjwt_http_requests_total{path=\"/we\\\"ird\\\\path\\nx\",code=\"200\"} 1\n"));
	free(text);
}

static void test_reset(void **state)
{
	struct exposition *e;

	metrics_token_issued("child", JWS_ALG_EDDSA);
	metrics_verification(JWS_E_REVOKED);
	metrics_revocations(5);
	metrics_hsm_operation(METRICS_HSM_FIND, 1);
	metrics_hsm_sign_ns(1000);
	metrics_http_request(route_token, 200);
	metrics_key_rotation();
	metrics_rate_limited();
	metrics_config_reload(1);
	metrics_http_connections_add(4);
	e = render_parsed(NULL);
	assert_true(value_of(e, "hsmjwt_tokens_issued_total", "type=child,alg=EdDSA") == 1);
	assert_true(value_of(e, "hsmjwt_http_connections", "") == 4);

	metrics_reset();
	e = render_parsed(NULL);
	assert_int_equal(count_samples(e, "hsmjwt_tokens_issued_total"), 0);
	assert_int_equal(count_samples(e, "hsmjwt_http_requests_total"), 0);
	for (size_t i = 0; i < e->nsamples; i++)
		if (strcmp(e->samples[i].name, "hsmjwt_build_info") != 0 && e->samples[i].value != 0)
			fail_msg("%s{%s} is %g after reset", e->samples[i].name, e->samples[i].labels,
				 e->samples[i].value);
	assert_true(value_of(e, "hsmjwt_verifications_total", "result=revoked") == 0);
	assert_true(value_of(e, "hsmjwt_hsm_sign_seconds_bucket", "le=+Inf") == 0);
}

/* Last: it fills the route table for the rest of the process. */
static void test_route_table_full(void **state)
{
	static char routes[100][16];
	struct exposition *e;
	double own = 0;
	size_t own_series = 0;

	metrics_reset();
	for (int i = 0; i < 100; i++) {
		snprintf(routes[i], sizeof(routes[i]), "/filler/%d", i);
		metrics_http_request(routes[i], 200);
	}
	/* A route that got a row keeps it once the table is full. */
	metrics_http_request(routes[0], 200);
	e = render_parsed(NULL);
	for (size_t i = 0; i < e->nsamples; i++)
		if (strcmp(e->samples[i].name, "hsmjwt_http_requests_total") == 0 &&
		    strncmp(e->samples[i].labels, "path=/filler/", 13) == 0) {
			own += e->samples[i].value;
			own_series++;
		}
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=/filler/0,code=200") == 2);
	/* Fewer rows than routes: the rest went to "other", none was lost. */
	assert_true(own_series < 100);
	assert_true(own_series > 0);
	assert_true(value_of(e, "hsmjwt_http_requests_total", "path=other,code=200") == 100 - (own - 1));
	/* Rows are bounded whatever the requests: 64 patterns. */
	assert_true(count_samples(e, "hsmjwt_http_requests_total") <= 64 + 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render_format),
		cmocka_unit_test(test_threads_exact),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_unknown_values),
		cmocka_unit_test(test_route_labels),
		cmocka_unit_test(test_reset),
		cmocka_unit_test(test_route_table_full),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
