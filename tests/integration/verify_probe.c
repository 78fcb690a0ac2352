/* verify_probe: a relying party built on libhsmjwt-verify alone (it links
 * nothing else of hsmjwt, which shows the library is self-contained), driven
 * by tests/integration/test_verify_lib.py over stdin/stdout.
 *
 *   verify_probe --jwks URL|FILE [--cache FILE] [--ca-file FILE]
 *                [--refetch-interval S] [--max-lifetime S] [--timeout-ms MS]
 *                [--max-bytes N] [--leeway S]
 *
 * Commands, one per line; each answers one JSON line:
 *   verify TOKEN [AUDIENCE]  → {"r", "valid", "error", "stale", "kid",
 *                               "claims", "now", "stats": {...}}
 *   TOKEN                    → the same as verify TOKEN
 *   advance SECONDS          → {"now"}: the library's clock moves on (the
 *                               test seam of verify_options.clock)
 *   freeze                   → {"now"}: the clock stops there, and moves
 *                               only by advance from then on
 *   stats                    → {"now", "stats"}
 *   quit
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hsmjwt/verify.h"

static int64_t probe_offset;
static int64_t probe_frozen_at;   /* 0: the clock runs */

static int64_t probe_clock(void *ctx)
{
	return (probe_frozen_at ? probe_frozen_at : (int64_t)time(NULL)) + probe_offset;
}

static void probe_string(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void probe_stats(struct verify *v)
{
	struct verify_stats st;

	if (verify_get_stats(v, &st) < 0) {
		printf("null");
		return;
	}
	printf("{\"fetches\":%llu,\"fetch_failures\":%llu,\"not_modified\":%llu,\"kid_refetches\":%llu,"
	       "\"kid_refetches_refused\":%llu,\"cache_file_loads\":%llu,\"keys\":%zu,\"keys_skipped\":%zu,"
	       "\"fetched_at\":%lld,\"expires_at\":%lld,\"last_error\":",
	       (unsigned long long)st.fetches, (unsigned long long)st.fetch_failures,
	       (unsigned long long)st.not_modified, (unsigned long long)st.kid_refetches,
	       (unsigned long long)st.kid_refetches_refused, (unsigned long long)st.cache_file_loads, st.keys,
	       st.keys_skipped, (long long)st.fetched_at, (long long)st.expires_at);
	probe_string(st.last_error);
	putchar('}');
}

static void probe_verify(struct verify *v, const char *token, const char *audience)
{
	struct verify_expect expect = { .audience = audience };
	struct verify_result res;
	int r = verify_token(v, token, strlen(token), &expect, &res);

	printf("{\"r\":%d", r);
	if (r == 0) {
		printf(",\"valid\":%s,\"error\":", res.valid ? "true" : "false");
		if (res.error)
			probe_string(res.error);
		else
			printf("null");
		printf(",\"stale\":%s,\"kid\":", res.stale ? "true" : "false");
		probe_string(res.kid);
		printf(",\"claims\":%s", res.claims_json ? res.claims_json : "null");
		verify_result_clear(&res);
	}
	printf(",\"now\":%lld,\"stats\":", (long long)probe_clock(NULL));
	probe_stats(v);
	printf("}\n");
}

static int probe_number(const char *s, long long *ret)
{
	char *end = NULL;

	errno = 0;
	*ret = strtoll(s, &end, 10);
	return errno == 0 && end != s && *end == '\0' ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct verify_options opts;
	struct verify *v = NULL;
	char line[20000];
	long long n;

	verify_options_init(&opts);
	opts.clock = probe_clock;
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *name = argv[i], *value = argv[i + 1];
		if (strcmp(name, "--jwks") == 0) {
			if (strncmp(value, "http://", 7) == 0 || strncmp(value, "https://", 8) == 0 ||
			    strncmp(value, "file:", 5) == 0)
				opts.jwks_url = value;
			else
				opts.jwks_file = value;
		} else if (strcmp(name, "--cache") == 0) {
			opts.cache_file = value;
		} else if (strcmp(name, "--ca-file") == 0) {
			opts.ca_file = value;
		} else if (probe_number(value, &n) == 0 && strcmp(name, "--refetch-interval") == 0) {
			opts.refetch_interval = n;
		} else if (probe_number(value, &n) == 0 && strcmp(name, "--max-lifetime") == 0) {
			opts.max_lifetime = n;
		} else if (probe_number(value, &n) == 0 && strcmp(name, "--timeout-ms") == 0) {
			opts.timeout_ms = n;
		} else if (probe_number(value, &n) == 0 && strcmp(name, "--max-bytes") == 0) {
			opts.max_jwks_bytes = (size_t)n;
		} else if (probe_number(value, &n) == 0 && strcmp(name, "--leeway") == 0) {
			opts.leeway = n;
		} else {
			fprintf(stderr, "verify_probe: bad argument `%s'\n", name);
			return 2;
		}
	}
	if (verify_new(&opts, &v) < 0) {
		fprintf(stderr, "verify_probe: verify_new refused the options\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin) != NULL) {
		char *save = NULL, *cmd, *arg, *arg2;

		line[strcspn(line, "\r\n")] = '\0';
		cmd = strtok_r(line, " ", &save);
		arg = strtok_r(NULL, " ", &save);
		arg2 = strtok_r(NULL, " ", &save);
		if (cmd == NULL)
			continue;
		if (strcmp(cmd, "quit") == 0)
			break;
		if (strcmp(cmd, "advance") == 0 && arg != NULL && probe_number(arg, &n) == 0) {
			probe_offset += n;
			printf("{\"now\":%lld}\n", (long long)probe_clock(NULL));
		} else if (strcmp(cmd, "freeze") == 0) {
			probe_frozen_at = (int64_t)time(NULL);
			printf("{\"now\":%lld}\n", (long long)probe_clock(NULL));
		} else if (strcmp(cmd, "stats") == 0) {
			printf("{\"now\":%lld,\"stats\":", (long long)probe_clock(NULL));
			probe_stats(v);
			printf("}\n");
		} else if (strcmp(cmd, "verify") == 0 && arg != NULL) {
			probe_verify(v, arg, arg2);
		} else {
			probe_verify(v, cmd, arg);
		}
	}
	verify_free(v);
	return 0;
}
