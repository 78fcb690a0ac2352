/* hsmjwtctl verify: a token checked offline against a JWKS with
 * libhsmjwt-verify (include/hsmjwt/verify.h), as a relying party would.  It
 * never opens the token and needs no PIN: only the configuration's issuer
 * (the default JWKS URL) and leeway. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hsmjwt/issue.h"
#include "hsmjwt/log.h"
#include "hsmjwt/verify.h"

#include "hsmjwtctl.h"

#define CTL_VERIFY_USAGE "usage: hsmjwtctl verify TOKEN|- [--jwks URL|FILE] [--audience A] [--issuer I] " \
			 "[--token-type access|refresh|id|parent|child] [--cache FILE]\n"

static int ctl_is_url(const char *s)
{
	return strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0 ||
	       strncasecmp(s, "file:", 5) == 0;
}

static int ctl_mkdir_private(const char *dir)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "hsmjwtctl: cannot create `%s': %s\n", dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* $XDG_CACHE_HOME/hsmjwt/jwks-<first 16 hex digits of SHA-256(url)>.json,
 * else under ~/.cache; the directory made 0700.  1 when there is nowhere to
 * put it (no cache then), 0, or -1 after a message. */
static int ctl_default_cache(const char *url, char *buf, size_t len)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	unsigned char digest[32];
	char base[4096], hex[17];

	if (xdg != NULL && xdg[0] == '/') {
		if ((size_t)snprintf(base, sizeof(base), "%s", xdg) >= sizeof(base) || ctl_mkdir_private(base) < 0)
			return -1;
	} else if (home != NULL && home[0] == '/') {
		if ((size_t)snprintf(base, sizeof(base), "%s/.cache", home) >= sizeof(base) ||
		    ctl_mkdir_private(base) < 0)
			return -1;
	} else {
		return 1;
	}
	if (strlen(base) + strlen("/hsmjwt/jwks-0123456789abcdef.json") >= len ||
	    strlen(base) + strlen("/hsmjwt") >= sizeof(base)) {
		fprintf(stderr, "hsmjwtctl: cache directory `%s' is too long\n", base);
		return -1;
	}
	strcat(base, "/hsmjwt");
	if (ctl_mkdir_private(base) < 0)
		return -1;
	if (!EVP_Digest(url, strlen(url), digest, NULL, EVP_sha256(), NULL))
		return -1;
	for (size_t i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	snprintf(buf, len, "%s/jwks-%s.json", base, hex);
	return 0;
}

/* TOKEN, or "-": one line from stdin, so that the token stays out of argv
 * (and ps). */
static char *ctl_read_token(const char *arg)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (strcmp(arg, "-") != 0)
		return strdup(arg);
	n = getline(&line, &cap, stdin);
	if (n <= 0) {
		free(line);
		return NULL;
	}
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	return line;
}

static int ctl_print_claims(const char *claims_json)
{
	json_t *claims = json_loads(claims_json, JSON_REJECT_DUPLICATES, NULL);
	int r;

	if (claims == NULL)
		return 1;
	r = ctl_print_json(claims);
	json_decref(claims);
	return r;
}

int cmd_verify(struct ctl *ctl, int argc, char **argv)
{
	static const char *const known[] = { "--jwks", "--audience", "--issuer", "--token-type", "--cache", NULL };
	struct verify_options opts;
	struct verify_expect expect = { 0 };
	struct verify_result result = { 0 };
	struct verify_stats stats;
	struct verify *v = NULL;
	const char *jwks, *cache, *token_type;
	char default_jwks[4096], cache_path[4096], *token = NULL;
	int status = 2, r;

	if (argc < 1 || strncmp(argv[0], "--", 2) == 0 || ctl_check_options(argc - 1, argv + 1, known, NULL) < 0) {
		fprintf(stderr, CTL_VERIFY_USAGE);
		return 2;
	}
	jwks = ctl_option(argc - 1, argv + 1, NULL, "--jwks");
	cache = ctl_option(argc - 1, argv + 1, NULL, "--cache");
	token_type = ctl_option(argc - 1, argv + 1, NULL, "--token-type");
	expect.audience = ctl_option(argc - 1, argv + 1, NULL, "--audience");
	expect.issuer = ctl_option(argc - 1, argv + 1, NULL, "--issuer");
	if (token_type != NULL) {
		expect.token_type = token_type;
		expect.typ = issue_typ_for(token_type);
		if (expect.typ == NULL) {
			fprintf(stderr, "hsmjwtctl: --token-type `%s' must be access, refresh, id, parent or child\n", token_type);
			return 2;
		}
	}
	if (jwks == NULL) {
		size_t n = strlen(ctl->cfg.issuer);
		while (n > 0 && ctl->cfg.issuer[n - 1] == '/')
			n--;
		snprintf(default_jwks, sizeof(default_jwks), "%.*s/.well-known/jwks.json", (int)n, ctl->cfg.issuer);
		jwks = default_jwks;
	}
	/* The library's warnings would repeat what this command prints. */
	if (!log_enabled(LOG_LEVEL_DEBUG))
		log_set_level(LOG_LEVEL_ERROR);
	verify_options_init(&opts);
	opts.leeway = ctl->cfg.leeway;
	if (ctl_is_url(jwks))
		opts.jwks_url = jwks;
	else
		opts.jwks_file = jwks;
	/* A local file needs no copy; a URL's is kept per URL. */
	if (cache != NULL) {
		opts.cache_file = cache;
	} else if (opts.jwks_url != NULL && strncasecmp(jwks, "file:", 5) != 0) {
		r = ctl_default_cache(jwks, cache_path, sizeof(cache_path));
		if (r < 0)
			return 2;
		if (r == 0)
			opts.cache_file = cache_path;
	}
	if (verify_new(&opts, &v) < 0) {
		fprintf(stderr, "hsmjwtctl: cannot use the JWKS source `%s'\n", jwks);
		return 2;
	}
	token = ctl_read_token(argv[0]);
	if (token == NULL) {
		fprintf(stderr, "hsmjwtctl: no token on stdin\n");
		goto out;
	}
	r = verify_token(v, token, strlen(token), &expect, &result);
	if (r < 0) {
		verify_get_stats(v, &stats);
		fprintf(stderr, "hsmjwtctl: no JWKS from `%s': %s\n", jwks,
			r == -EIO ? stats.last_error : strerror(-r));
		goto out;
	}
	if (result.stale) {
		verify_get_stats(v, &stats);
		fprintf(stderr, "hsmjwtctl: warning: verified with an expired copy of the JWKS (refetch failed: %s)\n",
			stats.last_error);
	}
	if (!result.valid) {
		fprintf(stderr, "invalid: %s\n", result.error);
		status = 1;
		goto out;
	}
	status = ctl_print_claims(result.claims_json) == 0 ? 0 : 2;
out:
	verify_result_clear(&result);
	if (token != NULL) {
		OPENSSL_cleanse(token, strlen(token));
		free(token);
	}
	verify_free(v);
	return status;
}
