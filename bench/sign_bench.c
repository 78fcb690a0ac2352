/* sign_bench: the raw signing ceiling through Cryptoki that issue 7 measures
 * hsmjwtd's issuance against.
 *
 *   sign_bench --module PATH --token LABEL --pin-file FILE \
 *              --algs ES256,RS256,PS256,EdDSA --threads 1,2 --seconds S
 *
 * It opens the token as hsmjwtd does (SOFTHSM2_CONF from the environment),
 * takes per algorithm the key hsmjwtd would sign with (keystate_plan over
 * the keys' lifecycle records), and for each algorithm × thread count runs
 * T threads, each on its own hsm_session, calling hsm_sign on one fixed
 * JWS signing input for S seconds of CLOCK_MONOTONIC, released together.
 * The first BENCH_KEEP signatures of each thread are kept and verified with
 * OpenSSL against the key's public key once the window is over, so that the
 * verification costs the ceiling nothing.  One line per measurement:
 *
 *   sign alg=ES256 threads=2 signs=123456 seconds=3.001 per_second=41139.5 verified=128
 *
 * Exit 0, 1 when a measurement failed (a sign error, a signature that does
 * not verify, an algorithm without a key: logged, naming it), 2 for a bad
 * command line.  hsmjwtd must not run against the token meanwhile: it would
 * share the CPU the figure is about. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/keystate.h"
#include "hsmjwt/log.h"
#include "hsmjwt/pin.h"

#define BENCH_MAX_THREADS 64
#define BENCH_MAX_SECONDS 3600.0
/* Signatures kept per thread for verification after the window. */
#define BENCH_KEEP 64
/* The largest JOSE signature: RSA 8192. */
#define BENCH_SIG_MAX 1024
#define BENCH_INPUT_MAX 512
#define BENCH_LIST_MAX 256

struct bench_options {
	const char *module;
	char *token;                     /* char *: struct config's, for pin_read */
	char *pin_file;                  /* NULL: pin_read's other sources, as for hsmjwtd */
	enum jws_alg algs[JWS_ALG_COUNT];
	size_t alg_count;
	unsigned threads[BENCH_MAX_THREADS];
	size_t thread_count;
	double seconds;
};

/* Releases the workers of one measurement together once all are ready, or
 * sends them home when one could not be started. */
struct bench_gate {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned ready;
	int state;                       /* 0 waiting, 1 go, -1 abort */
};

struct bench_worker {
	pthread_t thread;
	struct hsm_session *session;
	const struct hsm_key *key;
	const uint8_t *input;
	size_t input_len;
	int64_t window_ns;
	struct bench_gate *gate;
	atomic_int *stop;                /* set by a worker whose sign failed */
	/* results */
	uint64_t signs;
	int64_t start_ns;
	int64_t end_ns;
	int error;
	size_t kept;
	size_t sig_len[BENCH_KEEP];
	uint8_t sig[BENCH_KEEP][BENCH_SIG_MAX];
	uint8_t scratch[BENCH_SIG_MAX];
};

static int64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void bench_usage(FILE *out)
{
	fprintf(out,
		"usage: sign_bench [--module PATH] --token LABEL|URI [--pin-file FILE]\n"
		"                  --algs ES256,RS256,PS256,EdDSA --threads 1,2 --seconds S\n"
		"SOFTHSM2_CONF as for hsmjwtd; hsmjwtd must not be running against the token.\n");
}

/* Comma-separated algorithm names, each one hsm signs with, once. */
static int bench_parse_algs(const char *arg, struct bench_options *opts)
{
	char buf[BENCH_LIST_MAX];
	char *save = NULL;
	size_t n = 0;

	if (strlen(arg) >= sizeof(buf)) {
		log_error("\"--algs is too long\" algs=%.32s...", arg);
		return -EINVAL;
	}
	memcpy(buf, arg, strlen(arg) + 1);
	for (char *name = strtok_r(buf, ",", &save); name != NULL; name = strtok_r(NULL, ",", &save)) {
		enum jws_alg alg;

		if (jws_alg_from_name(name, &alg) < 0 || !hsm_alg_supported(alg)) {
			log_error("\"--algs names an algorithm hsm does not sign with\" alg=`%s'", name);
			return -EINVAL;
		}
		for (size_t i = 0; i < n; i++) {
			if (opts->algs[i] == alg) {
				log_error("\"--algs names an algorithm twice\" alg=`%s'", name);
				return -EINVAL;
			}
		}
		opts->algs[n++] = alg;
	}
	if (n == 0) {
		log_error("\"--algs names no algorithm\" algs=`%s'", arg);
		return -EINVAL;
	}
	opts->alg_count = n;
	return 0;
}

/* Comma-separated thread counts in 1..BENCH_MAX_THREADS; a count may
 * repeat (a second run of the same shape). */
static int bench_parse_threads(const char *arg, struct bench_options *opts)
{
	const char *p = arg;
	size_t n = 0;

	for (;;) {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(p, &end, 10);
		if (end == p || errno != 0 || (*end != ',' && *end != '\0') || *p == '-' || *p == '+' ||
		    v < 1 || v > BENCH_MAX_THREADS) {
			log_error("\"--threads takes counts from 1 to %d, comma-separated\" threads=`%s'",
				  BENCH_MAX_THREADS, arg);
			return -EINVAL;
		}
		if (n == BENCH_MAX_THREADS) {
			log_error("\"--threads names more than %d counts\" threads=`%s'", BENCH_MAX_THREADS, arg);
			return -EINVAL;
		}
		opts->threads[n++] = (unsigned)v;
		if (*end == '\0')
			break;
		p = end + 1;
	}
	opts->thread_count = n;
	return 0;
}

static int bench_parse_seconds(const char *arg, double *ret_seconds)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (end == arg || *end != '\0' || errno != 0 || !isfinite(v) || v <= 0.0 || v > BENCH_MAX_SECONDS) {
		log_error("\"--seconds takes a duration above 0 and up to %.0f\" seconds=`%s'", BENCH_MAX_SECONDS, arg);
		return -EINVAL;
	}
	*ret_seconds = v;
	return 0;
}

static int bench_parse_options(int argc, char **argv, struct bench_options *ret_opts)
{
	static const struct option longopts[] = {
		{ "module", required_argument, NULL, 'm' },
		{ "token", required_argument, NULL, 't' },
		{ "pin-file", required_argument, NULL, 'p' },
		{ "algs", required_argument, NULL, 'a' },
		{ "threads", required_argument, NULL, 'n' },
		{ "seconds", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct bench_options opts;
	int c;

	memset(&opts, 0, sizeof(opts));
	opts.module = HSMJWT_DEFAULT_MODULE;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			opts.module = optarg;
			break;
		case 't':
			opts.token = optarg;
			break;
		case 'p':
			opts.pin_file = optarg;
			break;
		case 'a':
			if (bench_parse_algs(optarg, &opts) < 0)
				return -EINVAL;
			break;
		case 'n':
			if (bench_parse_threads(optarg, &opts) < 0)
				return -EINVAL;
			break;
		case 's':
			if (bench_parse_seconds(optarg, &opts.seconds) < 0)
				return -EINVAL;
			break;
		case 'h':
			bench_usage(stdout);
			exit(0);
		default:
			bench_usage(stderr);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		log_error("\"unexpected argument\" argument=`%s'", argv[optind]);
		return -EINVAL;
	}
	if (opts.token == NULL || opts.alg_count == 0 || opts.thread_count == 0 || opts.seconds == 0.0) {
		log_error("\"--token, --algs, --threads and --seconds are required\"");
		bench_usage(stderr);
		return -EINVAL;
	}
	*ret_opts = opts;
	return 0;
}

/* The key hsmjwtd signs alg with: the records merged as the keys module
 * merges them (an unreadable one left out), then keystate_plan's signer. */
static int bench_pick_signers(const struct hsm_key *keys, size_t n, const struct hsm_key **ret_signer)
{
	/* No algorithm configured: nothing is generated or promoted, each
	 * algorithm's signer is what the records say. */
	struct keystate_policy policy = { 0 };
	struct keystate_key *planned;
	struct keystate_plan plan;
	int r;

	planned = calloc(n ? n : 1, sizeof(*planned));
	if (planned == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		snprintf(planned[i].kid, sizeof(planned[i].kid), "%s", keys[i].kid);
		planned[i].alg = keys[i].alg;
		for (size_t m = 0; m < keys[i].meta_count; m++) {
			struct keystate_record rec;

			if (keystate_parse((const char *)keys[i].meta[m].value, keys[i].meta[m].len, &rec) < 0 ||
			    rec.alg != keys[i].alg)
				continue;
			if (planned[i].has_record)
				keystate_merge(&planned[i].stored, &rec, &planned[i].stored);
			else
				planned[i].stored = rec;
			planned[i].has_record = 1;
		}
		planned[i].record_count = planned[i].has_record;
	}
	r = keystate_plan(planned, n, (int64_t)time(NULL), &policy, &plan);
	if (r < 0) {
		log_error("\"cannot plan the token's keys\" keys=%zu error=%d", n, r);
		goto out;
	}
	for (int a = 0; a < JWS_ALG_COUNT; a++)
		ret_signer[a] = plan.signer[a] >= 0 ? &keys[plan.signer[a]] : NULL;
out:
	free(planned);
	return r;
}

/* A JWS signing input of ~250 bytes, shaped like an access token's:
 * base64url(header) "." base64url(claims), fixed for the whole run (ECDSA
 * and PSS signatures differ anyway; the hash of a few blocks more or less
 * is noise next to the signature). */
static int bench_signing_input(const struct hsm_key *key, uint8_t *buf, size_t size, size_t *ret_len)
{
	char header[160], claims[256];
	int hn, cn;
	size_t len;

	hn = snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"at+jwt\"}",
		      jws_alg_name(key->alg), key->kid);
	cn = snprintf(claims, sizeof(claims),
		      "{\"iss\":\"https://b.example\",\"sub\":\"u1\",\"aud\":\"b\",\"iat\":1700000000,"
		      "\"exp\":1700000900,\"jti\":\"AAAAAAAAAAAAAAAAAAAAAA\"}");
	if (hn < 0 || (size_t)hn >= sizeof(header) || cn < 0 || (size_t)cn >= sizeof(claims) ||
	    b64url_encoded_size((size_t)hn) + b64url_encoded_size((size_t)cn) > size)
		return -ENOSPC;
	len = b64url_encode((const uint8_t *)header, (size_t)hn, (char *)buf);
	buf[len++] = '.';
	len += b64url_encode((const uint8_t *)claims, (size_t)cn, (char *)buf + len);
	*ret_len = len;
	return 0;
}

/* 0 when sig is key's signature of data under its algorithm, -EBADMSG when
 * it is not, another negative errno when it cannot be checked.  Everything
 * but HS256 is checked against the public key by the verifier the daemon
 * uses for tokens (jws_verify_signature: JOSE lengths, P1363 ranges, PSS
 * salt), independently of the token; HS256 has no public half and is
 * checked inside the token. */
static int bench_verify(struct hsm_session *session, const struct hsm_key *key, const uint8_t *data,
			size_t data_len, const uint8_t *sig, size_t sig_len)
{
	struct jwk_key *public_key = NULL;
	int r;

	if (key->alg == JWS_ALG_HS256)
		return hsm_verify(session, key, data, data_len, sig, sig_len);
	if (key->public_key == NULL)
		return -EINVAL;
	r = jwk_key_from_pkey(key->public_key, key->alg, &public_key);
	if (r < 0)
		return r;
	r = jws_verify_signature(key->alg, public_key, data, data_len, sig, sig_len) == 0 ? 0 : -EBADMSG;
	jwk_key_free(public_key);
	return r;
}

static void *bench_worker_run(void *arg)
{
	struct bench_worker *w = arg;
	struct bench_gate *gate = w->gate;
	int64_t now, deadline;
	int state;

	pthread_mutex_lock(&gate->lock);
	gate->ready++;
	pthread_cond_broadcast(&gate->cond);
	while (gate->state == 0)
		pthread_cond_wait(&gate->cond, &gate->lock);
	state = gate->state;
	pthread_mutex_unlock(&gate->lock);
	if (state < 0)
		return NULL;

	now = w->start_ns = bench_now_ns();
	deadline = now + w->window_ns;
	while (now < deadline && !atomic_load_explicit(w->stop, memory_order_relaxed)) {
		uint8_t *out = w->kept < BENCH_KEEP ? w->sig[w->kept] : w->scratch;
		size_t len = BENCH_SIG_MAX;
		int r = hsm_sign(w->session, w->key, w->input, w->input_len, out, &len);

		if (r < 0) {
			w->error = r;
			atomic_store(w->stop, 1);
			break;
		}
		w->signs++;
		if (w->kept < BENCH_KEEP)
			w->sig_len[w->kept++] = len;
		now = bench_now_ns();
	}
	w->end_ns = bench_now_ns();
	return NULL;
}

/* One measurement: threads workers on sessions[0..threads) sign for the
 * window, then their kept signatures are verified.  Prints its line; 0, or
 * a negative error (logged, naming what failed). */
static int bench_measure(struct hsm_session **sessions, const struct hsm_key *key, unsigned threads,
			 double seconds)
{
	struct bench_gate gate = { .ready = 0, .state = 0 };
	struct bench_worker *workers = NULL;
	atomic_int stop;
	uint8_t input[BENCH_INPUT_MAX];
	size_t input_len = 0, started = 0, verified = 0;
	uint64_t signs = 0;
	int64_t first = INT64_MAX, last = INT64_MIN;
	double elapsed;
	int r;

	atomic_init(&stop, 0);
	pthread_mutex_init(&gate.lock, NULL);
	pthread_cond_init(&gate.cond, NULL);
	r = bench_signing_input(key, input, sizeof(input), &input_len);
	if (r < 0) {
		log_error("\"cannot build the signing input\" alg=%s kid=%s", jws_alg_name(key->alg), key->kid);
		goto out;
	}
	r = -ENOMEM;
	workers = calloc(threads, sizeof(*workers));
	if (workers == NULL)
		goto out;
	for (unsigned i = 0; i < threads; i++) {
		struct bench_worker *w = &workers[i];
		int e;

		w->session = sessions[i];
		w->key = key;
		w->input = input;
		w->input_len = input_len;
		w->window_ns = (int64_t)llround(seconds * 1e9);
		w->gate = &gate;
		w->stop = &stop;
		e = pthread_create(&w->thread, NULL, bench_worker_run, w);
		if (e != 0) {
			log_error("\"cannot start a signing thread\" alg=%s thread=%u error=\"%s\"",
				  jws_alg_name(key->alg), i, strerror(e));
			r = -e;
			break;
		}
		started++;
	}
	pthread_mutex_lock(&gate.lock);
	while (started == threads && gate.ready < threads)
		pthread_cond_wait(&gate.cond, &gate.lock);
	gate.state = started == threads ? 1 : -1;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
	for (size_t i = 0; i < started; i++)
		pthread_join(workers[i].thread, NULL);
	if (started < threads)
		goto out;

	for (unsigned i = 0; i < threads; i++) {
		struct bench_worker *w = &workers[i];

		if (w->error < 0) {
			log_error("\"a signature failed during the measurement\" alg=%s kid=%s threads=%u thread=%u "
				  "after=%" PRIu64 " error=%d",
				  jws_alg_name(key->alg), key->kid, threads, i, w->signs, w->error);
			r = w->error;
			goto out;
		}
		signs += w->signs;
		if (w->start_ns < first)
			first = w->start_ns;
		if (w->end_ns > last)
			last = w->end_ns;
	}
	/* After the window, on the thread's own session for HS256: nothing
	 * signs any more. */
	for (unsigned i = 0; i < threads; i++) {
		struct bench_worker *w = &workers[i];

		for (size_t k = 0; k < w->kept; k++) {
			r = bench_verify(w->session, key, input, input_len, w->sig[k], w->sig_len[k]);
			if (r < 0) {
				log_error("\"signature does not verify\" alg=%s kid=%s threads=%u thread=%u "
					  "signature=%zu length=%zu error=%d",
					  jws_alg_name(key->alg), key->kid, threads, i, k, w->sig_len[k], r);
				goto out;
			}
			verified++;
		}
	}
	elapsed = (double)(last - first) / 1e9;
	printf("sign alg=%s threads=%u signs=%" PRIu64 " seconds=%.3f per_second=%.1f verified=%zu\n",
	       jws_alg_name(key->alg), threads, signs, elapsed, elapsed > 0 ? (double)signs / elapsed : 0.0,
	       verified);
	fflush(stdout);
	r = 0;
out:
	free(workers);
	pthread_cond_destroy(&gate.cond);
	pthread_mutex_destroy(&gate.lock);
	return r;
}

static int bench_run(const struct bench_options *opts)
{
	struct config cfg;
	struct hsm *hsm = NULL;
	struct hsm_session *sessions[BENCH_MAX_THREADS] = { NULL };
	struct hsm_key *keys = NULL;
	const struct hsm_key *signer[JWS_ALG_COUNT] = { NULL };
	char *pin = NULL;
	size_t pin_len = 0, key_count = 0, session_count = 0;
	unsigned max_threads = 0;
	int r;

	/* The daemon's PIN rules (pin.h): --pin-file, else a credential or
	 * the token URI's pin-source; -ENOENT leaves a token needing no login. */
	memset(&cfg, 0, sizeof(cfg));
	cfg.pin_file = opts->pin_file;
	cfg.token = opts->token;
	r = pin_read(&cfg, &pin, &pin_len);
	if (r < 0 && r != -ENOENT)
		goto out;
	r = hsm_open(opts->module, opts->token, pin, pin_len, &hsm);
	pin_free(pin, pin_len);
	pin = NULL;
	if (r < 0)
		goto out;

	for (size_t i = 0; i < opts->thread_count; i++)
		if (opts->threads[i] > max_threads)
			max_threads = opts->threads[i];
	for (; session_count < max_threads; session_count++) {
		r = hsm_session_open(hsm, &sessions[session_count]);
		if (r < 0) {
			log_error("\"cannot open a session\" token=%s session=%zu error=%d", opts->token,
				  session_count, r);
			goto out;
		}
	}
	r = hsm_find_keys(sessions[0], &keys, &key_count);
	if (r < 0)
		goto out;
	r = bench_pick_signers(keys, key_count, signer);
	if (r < 0)
		goto out;
	/* Every algorithm is checked before the first measurement: a missing
	 * key found minutes into a run wastes them. */
	for (size_t a = 0; a < opts->alg_count; a++) {
		if (signer[opts->algs[a]] == NULL) {
			log_error("\"no usable key for this algorithm in the token\" alg=%s token=%s keys=%zu "
				  "hint=\"run hsmjwtd once with this algorithm in algorithms\"",
				  jws_alg_name(opts->algs[a]), opts->token, key_count);
			r = -ENOENT;
			goto out;
		}
	}
	for (size_t a = 0; a < opts->alg_count; a++) {
		for (size_t t = 0; t < opts->thread_count; t++) {
			r = bench_measure(sessions, signer[opts->algs[a]], opts->threads[t], opts->seconds);
			if (r < 0)
				goto out;
		}
	}
out:
	pin_free(pin, pin_len);
	hsm_keys_free(keys, key_count);
	for (size_t i = 0; i < session_count; i++)
		hsm_session_close(sessions[i]);
	hsm_close(hsm);
	return r;
}

int main(int argc, char **argv)
{
	struct bench_options opts;

	if (bench_parse_options(argc, argv, &opts) < 0)
		return 2;
	return bench_run(&opts) < 0 ? 1 : 0;
}
