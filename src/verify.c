#include "hsmjwt/verify.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/http.h>
#include <jansson.h>

#include "hsmjwt/json.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/log.h"
#include "verify_internal.h"

/* The cache file holds the JWKS as a JSON string: escaping may grow it up
 * to six times (\u00XX), plus the few members around it. */
#define VERIFY_CACHE_FILE_MAX(max_bytes) ((max_bytes) * 6 + 4096)
#define VERIFY_LEEWAY_MAX 86400

struct verify {
	struct verify_source source;
	char *cache_file;
	char *ca_file;
	int64_t refetch_interval;
	int64_t max_lifetime;
	int64_t max_stale;
	int64_t timeout_ms;
	size_t max_bytes;
	int64_t leeway;
	int64_t (*clock)(void *clock_ctx);
	void *clock_ctx;

	pthread_mutex_t lock;
	pthread_cond_t fetched;       /* broadcast when a fetch ends */
	/* Under lock. */
	struct verify_keyset *set;    /* NULL until one is read */
	int64_t fetched_at;
	int64_t expires_at;
	char etag[VERIFY_ETAG_MAX + 1];
	/* The Cache-Control of the 200 that brought the set, NULL when it had
	 * none: a 304 without one leaves it in force (RFC 9111 §4.3.4). */
	char *cache_control;
	int fetching;                 /* a thread is fetching (lock not held) */
	int attempted;                /* last_attempt is set */
	int last_failed;              /* the last attempt failed */
	int64_t last_attempt;
	struct verify_stats stats;
};

/* ---- options and source ------------------------------------------------ */

void verify_options_init(struct verify_options *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->refetch_interval = VERIFY_DEFAULT_REFETCH_INTERVAL;
	opts->max_lifetime = VERIFY_DEFAULT_MAX_LIFETIME;
	opts->max_stale = VERIFY_DEFAULT_MAX_STALE;
	opts->timeout_ms = VERIFY_DEFAULT_TIMEOUT_MS;
	opts->max_jwks_bytes = VERIFY_MAX_JWKS_BYTES;
	opts->leeway = VERIFY_DEFAULT_LEEWAY;
}

void verify_source_clear(struct verify_source *source)
{
	free(source->text);
	free(source->path);
	free(source->host);
	memset(source, 0, sizeof(*source));
}

/* file:/p, file:///p and file://localhost/p name the local file /p;
 * escapes, queries and fragments are not supported, so '%', '?' and '#'
 * are refused rather than taken literally. */
static int verify_file_url_path(const char *url, const char **ret_path)
{
	const char *p = url + strlen("file:");

	if (strncmp(p, "//", 2) == 0) {
		p += 2;
		if (strncasecmp(p, "localhost/", strlen("localhost/")) == 0)
			p += strlen("localhost");
		else if (*p != '/')
			return -EINVAL;
	}
	if (*p != '/' || strpbrk(p, "%?#") != NULL)
		return -EINVAL;
	*ret_path = p;
	return 0;
}

static int verify_http_url(const char *url, struct verify_source *src)
{
	struct evhttp_uri *uri = evhttp_uri_parse(url);
	const char *scheme, *host, *path, *query;
	size_t host_len;
	int port, r = -EINVAL;

	if (uri == NULL)
		goto out;
	scheme = evhttp_uri_get_scheme(uri);
	host = evhttp_uri_get_host(uri);
	path = evhttp_uri_get_path(uri);
	query = evhttp_uri_get_query(uri);
	port = evhttp_uri_get_port(uri);
	/* Credentials in a URL end up in logs; a fragment is never sent. */
	if (scheme == NULL || host == NULL || host[0] == '\0' || evhttp_uri_get_userinfo(uri) != NULL ||
	    evhttp_uri_get_fragment(uri) != NULL || port == 0 || port > 65535)
		goto out;
	if (strcasecmp(scheme, "http") == 0)
		src->scheme = VERIFY_HTTP;
	else if (strcasecmp(scheme, "https") == 0)
		src->scheme = VERIFY_HTTPS;
	else
		goto out;
	src->port = port > 0 ? port : src->scheme == VERIFY_HTTPS ? 443 : 80;
	host_len = strlen(host);
	if (host[0] == '[') {
		if (host_len < 3 || host[host_len - 1] != ']')
			goto out;
		host++;
		host_len -= 2;
	}
	r = -ENOMEM;
	src->host = strndup(host, host_len);
	if (src->host == NULL ||
	    asprintf(&src->path, "%s%s%s", path && path[0] ? path : "/", query ? "?" : "", query ? query : "") < 0) {
		src->path = NULL;
		goto out;
	}
	r = 0;
out:
	if (uri != NULL)
		evhttp_uri_free(uri);
	return r;
}

int verify_source_parse(const char *url, const char *file, struct verify_source *ret_source)
{
	struct verify_source src = { 0 };
	const char *path;
	int r = -EINVAL;

	if ((url == NULL) == (file == NULL))
		return -EINVAL;
	if (url != NULL) {
		if (strlen(url) > VERIFY_URL_MAX)
			return -EINVAL;
		if (strncasecmp(url, "file:", strlen("file:")) == 0) {
			if (verify_file_url_path(url, &path) < 0)
				goto fail;
			src.scheme = VERIFY_FILE;
			src.path = strdup(path);
		} else {
			r = verify_http_url(url, &src);
			if (r < 0)
				goto fail;
		}
		src.text = strdup(url);
	} else {
		if (file[0] == '\0' || strlen(file) > PATH_MAX)
			return -EINVAL;
		src.scheme = VERIFY_FILE;
		src.path = strdup(file);
		src.text = strdup(file);
	}
	r = -ENOMEM;
	if (src.text == NULL || src.path == NULL)
		goto fail;
	*ret_source = src;
	return 0;
fail:
	verify_source_clear(&src);
	return r;
}

/* ---- Cache-Control ------------------------------------------------------ */

/* RFC 9110 §5.6.2 tchar. */
static int verify_is_tchar(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static const char *verify_skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* delta-seconds (RFC 9111 §1.2.2): digits only, saturating at cap, since a
 * value past any lifetime we keep means the same as the cap.  -1 when s[0..n)
 * is empty or holds anything else. */
static int64_t verify_delta_seconds(const char *s, size_t n, int64_t cap)
{
	int64_t v = 0;
	int over = 0;

	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		int d = s[i] - '0';

		if (s[i] < '0' || s[i] > '9')
			return -1;
		if (over)
			continue;
		/* Checked before multiplying: cap may be near INT64_MAX. */
		if (v > (INT64_MAX - d) / 10) {
			over = 1;
			continue;
		}
		v = v * 10 + d;
		over = v > cap;
	}
	return over ? cap : v;
}

/* One directive's value: a token, or a quoted-string copied into buf when
 * it fits and holds no escape (all a number needs; anything else cannot be
 * delta-seconds).  Returns the position after it; *ret_value NULL when the
 * value cannot be a number. */
static const char *verify_directive_value(const char *p, char *buf, size_t size, const char **ret_value,
					  size_t *ret_len)
{
	const char *start;
	size_t n = 0;
	int usable = 1;

	if (*p != '"') {
		start = p;
		while (verify_is_tchar(*p))
			p++;
		*ret_value = start;
		*ret_len = (size_t)(p - start);
		return p;
	}
	for (p++; *p != '\0' && *p != '"'; p++) {
		if (*p == '\\' && p[1] != '\0') {
			p++;
			usable = 0;
		}
		if (n < size)
			buf[n] = *p;
		n++;
	}
	if (*p == '"')
		p++;
	else
		usable = 0;   /* unterminated */
	*ret_value = usable && n <= size ? buf : NULL;
	*ret_len = usable && n <= size ? n : 0;
	return p;
}

int64_t verify_cache_lifetime(const char *cache_control, const char *age, int64_t max_lifetime)
{
	const char *p = cache_control ? cache_control : "";
	int no_cache = 0, max_age_seen = 0, max_age_bad = 0;
	int64_t max_age = 0, age_s = 0;

	if (max_lifetime < 0)
		max_lifetime = 0;
	while (*p != '\0') {
		const char *name, *value = NULL;
		size_t name_len, value_len = 0;
		char quoted[24];

		p = verify_skip_ows(p);
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p == '\0')
			break;
		name = p;
		while (verify_is_tchar(*p))
			p++;
		name_len = (size_t)(p - name);
		p = verify_skip_ows(p);
		if (name_len > 0 && *p == '=') {
			p = verify_directive_value(verify_skip_ows(p + 1), quoted, sizeof(quoted), &value, &value_len);
			p = verify_skip_ows(p);
		}
		/* Anything else before the next comma makes the directive
		 * garbage, skipped whole (a comma inside it ends it early: no
		 * harm, the rest is garbage too). */
		if (name_len == 0 || (*p != ',' && *p != '\0')) {
			/* A garbled max-age is invalid freshness information,
			 * not an absent one. */
			if (name_len == 7 && strncasecmp(name, "max-age", 7) == 0)
				max_age_bad = max_age_seen = 1;
			while (*p != '\0' && *p != ',')
				p++;
			continue;
		}
		if ((name_len == 8 && strncasecmp(name, "no-store", 8) == 0) ||
		    (name_len == 8 && strncasecmp(name, "no-cache", 8) == 0)) {
			no_cache = 1;
		} else if (name_len == 7 && strncasecmp(name, "max-age", 7) == 0) {
			int64_t v = value ? verify_delta_seconds(value, value_len, max_lifetime) : -1;
			/* RFC 9111 §4.2.1: invalid or repeated freshness
			 * information is best taken as stale. */
			if (v < 0 || max_age_seen)
				max_age_bad = 1;
			else
				max_age = v;
			max_age_seen = 1;
		}
	}
	if (no_cache || max_age_bad)
		return 0;
	if (!max_age_seen)
		return max_lifetime;
	/* An Age that is not delta-seconds is ignored (RFC 9111 §5.1). */
	if (age != NULL && (age_s = verify_delta_seconds(age, strlen(age), max_lifetime)) < 0)
		age_s = 0;
	return max_age > age_s ? max_age - age_s : 0;
}

/* ---- key sets ------------------------------------------------------------ */

struct verify_keyset *verify_keyset_ref(struct verify_keyset *set)
{
	atomic_fetch_add(&set->refs, 1);
	return set;
}

void verify_keyset_unref(struct verify_keyset *set)
{
	if (set == NULL || atomic_fetch_sub(&set->refs, 1) != 1)
		return;
	for (size_t i = 0; i < set->count; i++)
		jwk_key_free(set->keys[i]);
	free(set->keys);
	free(set->doc);
	free(set);
}

const struct jwk_key *verify_keyset_find(const struct verify_keyset *set, const char *kid)
{
	if (set == NULL || kid == NULL)
		return NULL;
	for (size_t i = 0; i < set->count; i++)
		if (strcmp(set->keys[i]->kid, kid) == 0)
			return set->keys[i];
	return NULL;
}

/* One "keys" entry → a usable key, or 1 (skipped) with the reason logged
 * at debug level, or -ENOMEM. */
static int verify_keyset_entry(const json_t *entry, size_t index, struct jwk_key **ret_key)
{
	const char *kid = json_plain_string(json_object_get(entry, "kid"));
	const char *kty = json_plain_string(json_object_get(entry, "kty"));
	struct jwk_key *key = NULL;
	int r;

	if (!json_is_object(entry) || kid == NULL || kid[0] == '\0') {
		log_debug("\"JWKS entry skipped: no kid\" index=%zu", index);
		return 1;
	}
	/* Never read a secret out of a published document. */
	if (kty != NULL && strcmp(kty, "oct") == 0) {
		log_debug("\"JWKS entry skipped: symmetric key\" index=%zu", index);
		return 1;
	}
	r = jwk_key_from_json(entry, &key);
	if (r == -ENOMEM)
		return r;
	if (r < 0 || key->pkey == NULL || !key->verify_allowed) {
		log_debug("\"JWKS entry skipped: not a usable verification key\" index=%zu", index);
		jwk_key_free(key);
		return 1;
	}
	*ret_key = key;
	return 0;
}

/* A kid named twice picks no key: neither is kept in favour of the other,
 * since either could be the one the signer meant.  Frees the duplicates,
 * compacts keys[0..count) and returns how many were dropped. */
static size_t verify_keyset_drop_duplicates(struct jwk_key **keys, size_t count)
{
	unsigned char twice[VERIFY_MAX_KEYS] = { 0 };
	size_t kept = 0;

	for (size_t i = 0; i < count; i++)
		for (size_t j = i + 1; j < count; j++)
			if (strcmp(keys[i]->kid, keys[j]->kid) == 0)
				twice[i] = twice[j] = 1;
	for (size_t i = 0; i < count; i++) {
		if (twice[i]) {
			char quoted[64];
			log_debug("\"JWKS kid given twice: skipped\" kid=%s",
				  log_quote(quoted, sizeof(quoted), keys[i]->kid));
			jwk_key_free(keys[i]);
			continue;
		}
		keys[kept++] = keys[i];
	}
	return count - kept;
}

int verify_keyset_parse(const char *doc, size_t len, size_t max_bytes, struct verify_keyset **ret_set)
{
	struct verify_keyset *set = NULL;
	json_t *root = NULL, *entries;
	struct jwk_key **keys = NULL;
	size_t n = 0, count = 0, skipped = 0;
	int r;

	if (len > max_bytes)
		return -E2BIG;
	r = json_strict_parse(doc, len, JSON_STRICT_MAX_DEPTH, &root);
	if (r < 0)
		return r == -ENOMEM ? -ENOMEM : -EINVAL;
	entries = json_object_get(root, "keys");
	r = -EINVAL;
	if (!json_is_object(root) || !json_is_array(entries))
		goto out;
	n = json_array_size(entries);
	/* Counted before any key is parsed: each costs a curve check or an
	 * RSA key import. */
	r = -E2BIG;
	if (n > VERIFY_MAX_KEYS)
		goto out;
	r = -ENOMEM;
	keys = calloc(n ? n : 1, sizeof(*keys));
	set = calloc(1, sizeof(*set));
	if (keys == NULL || set == NULL || (set->doc = malloc(len + 1)) == NULL)
		goto out;
	for (size_t i = 0; i < n; i++) {
		r = verify_keyset_entry(json_array_get(entries, i), i, &keys[count]);
		if (r < 0)
			goto out;
		if (r == 0)
			count++;
		else
			skipped++;
	}
	skipped += verify_keyset_drop_duplicates(keys, count);
	count = n - skipped;
	memcpy(set->doc, doc, len);
	set->doc[len] = '\0';
	set->doc_len = len;
	atomic_init(&set->refs, 1);
	set->keys = keys;
	set->count = count;
	set->skipped = skipped;
	log_debug("\"JWKS read\" keys=%zu skipped=%zu", count, skipped);
	*ret_set = set;
	set = NULL;
	keys = NULL;
	r = 0;
out:
	if (keys != NULL) {
		for (size_t i = 0; i < count; i++)
			jwk_key_free(keys[i]);
		free(keys);
	}
	if (set != NULL) {
		free(set->doc);
		free(set);
	}
	json_decref(root);
	return r;
}

/* ---- the cache file ------------------------------------------------------ */

/* A copy made for this source, parsed; anything wrong is logged and the
 * file is ignored: the source is asked instead. */
static void verify_cache_load(struct verify *v)
{
	char *text = NULL, quoted[256];
	size_t len = 0;
	json_t *root = NULL;
	const char *source, *doc, *etag, *cache_control;
	json_int_t fetched_at, expires_at;
	struct verify_keyset *set = NULL;
	int r;

	r = verify_read_file(v->cache_file, 1, VERIFY_CACHE_FILE_MAX(v->max_bytes), &text, &len);
	if (r == -ENOENT)
		return;
	if (r < 0) {
		log_warn("\"JWKS cache file ignored\" file=%s reason=%s",
			 log_quote(quoted, sizeof(quoted), v->cache_file),
			 r == -EPERM || r == -EINVAL ? "not_a_private_file" : r == -E2BIG ? "too_large" : "unreadable");
		goto out;
	}
	r = json_strict_parse(text, len, 2, &root);
	source = json_plain_string(json_object_get(root, "source"));
	doc = json_plain_string(json_object_get(root, "jwks"));
	etag = json_plain_string(json_object_get(root, "etag"));
	cache_control = json_plain_string(json_object_get(root, "cache_control"));
	fetched_at = json_integer_value(json_object_get(root, "fetched_at"));
	expires_at = json_integer_value(json_object_get(root, "expires_at"));
	if (r < 0 || source == NULL || doc == NULL || etag == NULL || strlen(etag) > VERIFY_ETAG_MAX ||
	    (json_object_get(root, "cache_control") != NULL &&
	     (cache_control == NULL || strlen(cache_control) > VERIFY_CACHE_CONTROL_MAX)) ||
	    !json_is_integer(json_object_get(root, "fetched_at")) ||
	    !json_is_integer(json_object_get(root, "expires_at")) || fetched_at <= 0 || expires_at < fetched_at) {
		log_warn("\"JWKS cache file ignored\" file=%s reason=malformed",
			 log_quote(quoted, sizeof(quoted), v->cache_file));
		goto out;
	}
	/* Another source's keys are not this source's. */
	if (strcmp(source, v->source.text) != 0) {
		log_info("\"JWKS cache file is for another source: ignored\" file=%s",
			 log_quote(quoted, sizeof(quoted), v->cache_file));
		goto out;
	}
	r = verify_keyset_parse(doc, strlen(doc), v->max_bytes, &set);
	if (r < 0) {
		log_warn("\"JWKS cache file ignored\" file=%s reason=not_a_jwks",
			 log_quote(quoted, sizeof(quoted), v->cache_file));
		goto out;
	}
	if (cache_control != NULL && (v->cache_control = strdup(cache_control)) == NULL) {
		verify_keyset_unref(set);
		goto out;
	}
	/* The copy was kept under the options of its writer: a max_lifetime
	 * lowered since applies to it too.  expires_at >= fetched_at > 0, so
	 * neither the difference nor the sum can overflow. */
	if (expires_at - fetched_at > v->max_lifetime)
		expires_at = fetched_at + v->max_lifetime;
	v->set = set;
	v->fetched_at = fetched_at;
	v->expires_at = expires_at;
	snprintf(v->etag, sizeof(v->etag), "%s", etag);
	v->stats.cache_file_loads++;
out:
	json_decref(root);
	free(text);
}

/* Writes the copy next to the cache file and renames it over: a reader
 * sees the old copy or the new one.  Not fsynced: a copy lost in a crash is
 * fetched again. */
static void verify_cache_store(const struct verify *v, const struct verify_keyset *set, int64_t fetched_at,
			       int64_t expires_at, const char *etag, const char *cache_control)
{
	char *tmp = NULL, *text = NULL, quoted[256];
	json_t *root;
	size_t len;
	int fd = -1, ok = 0;

	root = json_pack("{s:s, s:I, s:I, s:s, s:s%}", "source", v->source.text, "fetched_at", (json_int_t)fetched_at,
			 "expires_at", (json_int_t)expires_at, "etag", etag, "jwks", set->doc, set->doc_len);
	if (root == NULL ||
	    (cache_control != NULL && json_object_set_new(root, "cache_control", json_string(cache_control)) < 0) ||
	    (text = json_dumps(root, JSON_COMPACT)) == NULL ||
	    asprintf(&tmp, "%s.XXXXXX", v->cache_file) < 0) {
		tmp = NULL;
		goto out;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		free(tmp);
		tmp = NULL;
		goto out;
	}
	len = strlen(text);
	ok = fchmod(fd, 0600) == 0 && write(fd, text, len) == (ssize_t)len;
	ok = close(fd) == 0 && ok;
	fd = -1;
	ok = ok && rename(tmp, v->cache_file) == 0;
out:
	if (!ok)
		log_warn("\"JWKS cache file not written\" file=%s error=%s",
			 log_quote(quoted, sizeof(quoted), v->cache_file), strerror(errno));
	if (!ok && tmp != NULL)
		unlink(tmp);
	free(tmp);
	free(text);
	json_decref(root);
}

/* ---- the context ------------------------------------------------------- */

static int verify_strdup_opt(const char *s, char **ret)
{
	*ret = NULL;
	if (s == NULL)
		return 0;
	*ret = strdup(s);
	return *ret ? 0 : -ENOMEM;
}

void verify_free(struct verify *v)
{
	if (v == NULL)
		return;
	verify_keyset_unref(v->set);
	free(v->cache_control);
	pthread_cond_destroy(&v->fetched);
	pthread_mutex_destroy(&v->lock);
	verify_source_clear(&v->source);
	free(v->cache_file);
	free(v->ca_file);
	free(v);
}

int verify_new(const struct verify_options *opts, struct verify **ret_verify)
{
	struct verify *v = NULL;
	int r = -EINVAL;

	if (opts == NULL || ret_verify == NULL || opts->refetch_interval < 0 || opts->max_lifetime < 0 ||
	    opts->max_stale < 0 || opts->timeout_ms <= 0 || opts->max_jwks_bytes == 0 ||
	    opts->max_jwks_bytes > VERIFY_MAX_JWKS_BYTES || opts->leeway < 0 || opts->leeway > VERIFY_LEEWAY_MAX ||
	    (opts->cache_file != NULL && (opts->cache_file[0] == '\0' || strlen(opts->cache_file) > PATH_MAX)))
		return -EINVAL;
	v = calloc(1, sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	if (pthread_mutex_init(&v->lock, NULL) != 0) {
		free(v);
		return -ENOMEM;
	}
	if (pthread_cond_init(&v->fetched, NULL) != 0) {
		pthread_mutex_destroy(&v->lock);
		free(v);
		return -ENOMEM;
	}
	r = verify_source_parse(opts->jwks_url, opts->jwks_file, &v->source);
	if (r < 0) {
		if (r == -EINVAL) {
			char quoted[256];
			log_error("\"JWKS source refused: need one http://, https:// or file: URL, or a file path\" "
				  "source=%s", log_quote(quoted, sizeof(quoted),
							 opts->jwks_url ? opts->jwks_url :
							 opts->jwks_file ? opts->jwks_file : ""));
		}
		goto fail;
	}
	if ((r = verify_strdup_opt(opts->cache_file, &v->cache_file)) < 0 ||
	    (r = verify_strdup_opt(opts->ca_file, &v->ca_file)) < 0)
		goto fail;
	v->refetch_interval = opts->refetch_interval;
	v->max_lifetime = opts->max_lifetime;
	v->max_stale = opts->max_stale;
	v->timeout_ms = opts->timeout_ms;
	v->max_bytes = opts->max_jwks_bytes;
	v->leeway = opts->leeway;
	v->clock = opts->clock;
	v->clock_ctx = opts->clock_ctx;
	if (v->cache_file != NULL)
		verify_cache_load(v);
	*ret_verify = v;
	return 0;
fail:
	verify_free(v);
	return r;
}

static int64_t verify_now(const struct verify *v)
{
	return v->clock ? v->clock(v->clock_ctx) : (int64_t)time(NULL);
}

static int64_t verify_add_sat(int64_t a, int64_t b)
{
	int64_t sum;

	return __builtin_add_overflow(a, b, &sum) ? INT64_MAX : sum;
}

/* ---- one verification --------------------------------------------------- */

/* What a verification holds between the lookup callback and its end. */
struct verify_call {
	struct verify *v;
	int64_t now;
	struct verify_keyset *set;    /* one reference, or NULL */
	int64_t expires_at;           /* of set */
	int fetched;                  /* this call fetched, or waited for a fetch */
	int unavailable;              /* no usable set */
	int stale;                    /* the key came from a stale set */
	char kid[VERIFY_KID_MAX + 1];
};

enum verify_why { VERIFY_WHY_NONE, VERIFY_WHY_EXPIRED, VERIFY_WHY_KID };

/* Takes the context's current set into the call; under lock. */
static void verify_adopt(struct verify_call *call)
{
	struct verify *v = call->v;

	if (call->set != v->set) {
		verify_keyset_unref(call->set);
		call->set = v->set ? verify_keyset_ref(v->set) : NULL;
	}
	call->expires_at = v->expires_at;
}

static const char *verify_fetch_error_name(int r)
{
	switch (r) {
	case -E2BIG: return "too_large";
	case -ETIMEDOUT: return "timeout";
	case -EINVAL: return "not_a_jwks";
	case -ENOMEM: return "out_of_memory";
	default: return "failed";
	}
}

/* One fetch, the lock not held; the outcome is stored under the lock and
 * announced to the threads waiting for it. */
static void verify_fetch_once(struct verify_call *call, const char *etag, const char *held_cache_control,
			      int have_set)
{
	struct verify *v = call->v;
	struct verify_fetched got = { 0 };
	struct verify_keyset *set = NULL, *old = NULL;
	const char *cache_control = NULL;
	char *kept_cache_control = NULL;
	int64_t lifetime = 0;
	char err[sizeof(v->stats.last_error)] = "", quoted_source[256], quoted_err[200];
	int r;

	r = verify_fetch(&v->source, v->ca_file, have_set ? etag : "", v->timeout_ms, v->max_bytes, &got, err,
			 sizeof(err));
	if (r == 0 && got.status == VERIFY_FETCH_OK) {
		r = verify_keyset_parse(got.body, got.body_len, v->max_bytes, &set);
		if (r < 0)
			snprintf(err, sizeof(err), "%s", r == -E2BIG ? "more than 64 keys" : "not a JWKS document");
	} else if (r == 0 && call->set == NULL) {
		/* 304 to a request that had no copy to validate. */
		r = -EPROTO;
		snprintf(err, sizeof(err), "HTTP 304 without If-None-Match");
	}
	if (r == 0) {
		/* A 304 may name the ETag again, or leave the old one standing. */
		if (set == NULL && got.etag[0] == '\0')
			snprintf(got.etag, sizeof(got.etag), "%s", etag);
		/* The 200's Cache-Control, or for a 304 without one the one
		 * held (RFC 9111 §4.3.4); Age is the answer's own. */
		cache_control = set != NULL || got.cache_control != NULL ? got.cache_control : held_cache_control;
		if (cache_control != NULL && (kept_cache_control = strdup(cache_control)) == NULL) {
			r = -ENOMEM;
			snprintf(err, sizeof(err), "out of memory");
		}
	}
	if (r == 0) {
		/* A file says nothing about its freshness. */
		lifetime = v->source.scheme == VERIFY_FILE ?
			v->max_lifetime : verify_cache_lifetime(cache_control, got.age, v->max_lifetime);
		/* A shorter one would let every verification fetch (no-cache:
		 * one request per token): refetch_interval is the least time
		 * between two requests while a set is held. */
		if (lifetime < v->refetch_interval)
			lifetime = v->refetch_interval;
		if (v->cache_file != NULL)
			verify_cache_store(v, set ? set : call->set, call->now, verify_add_sat(call->now, lifetime),
					   got.etag, cache_control);
	}

	pthread_mutex_lock(&v->lock);
	v->fetching = 0;
	if (r == 0) {
		if (set != NULL) {
			old = v->set;
			v->set = set;
		} else {
			v->stats.not_modified++;
		}
		snprintf(v->etag, sizeof(v->etag), "%s", got.etag);
		free(v->cache_control);
		v->cache_control = kept_cache_control;
		kept_cache_control = NULL;
		v->fetched_at = call->now;
		v->expires_at = verify_add_sat(call->now, lifetime);
		v->last_failed = 0;
	} else {
		v->stats.fetch_failures++;
		v->last_failed = 1;
		snprintf(v->stats.last_error, sizeof(v->stats.last_error), "%s", err);
	}
	verify_adopt(call);
	call->fetched = 1;
	pthread_cond_broadcast(&v->fetched);
	pthread_mutex_unlock(&v->lock);

	if (r < 0)
		log_warn("\"JWKS fetch failed\" source=%s error=%s reason=%s using=%s",
			 log_quote(quoted_source, sizeof(quoted_source), v->source.text), verify_fetch_error_name(r),
			 log_quote(quoted_err, sizeof(quoted_err), err),
			 call->set == NULL ? "none" : call->now < call->expires_at ? "fresh" : "stale");
	verify_keyset_unref(old);
	verify_keyset_unref(set != NULL && r < 0 ? set : NULL);
	free(kept_cache_control);
	verify_fetched_clear(&got);
}

/* Brings call->set up to date as far as the rules of verify.h allow:
 * fetches, waits for another thread's fetch, or goes on with what there
 * is.  The lock is not held on entry or exit, and never during a fetch. */
static void verify_refresh(struct verify_call *call, enum verify_why why)
{
	struct verify *v = call->v;
	char etag[VERIFY_ETAG_MAX + 1], held[VERIFY_CACHE_CONTROL_MAX + 1];
	int too_soon, have_set, have_held;

	pthread_mutex_lock(&v->lock);
	if (v->fetching) {
		/* Going on with a stale set beats queueing behind the network;
		 * without one, or for an unknown kid, the fetch under way is the
		 * one this call would make. */
		if (why == VERIFY_WHY_EXPIRED && v->set != NULL) {
			verify_adopt(call);
			pthread_mutex_unlock(&v->lock);
			return;
		}
		while (v->fetching)
			pthread_cond_wait(&v->fetched, &v->lock);
		verify_adopt(call);
		call->fetched = 1;
		pthread_mutex_unlock(&v->lock);
		return;
	}
	/* A clock that went back counts as long enough ago.  While a set is
	 * held (even a stale one) no fetch starts within refetch_interval of
	 * the last attempt, whatever caused it; without one, only a failed
	 * attempt holds the next one back. */
	too_soon = v->attempted && call->now >= v->last_attempt && call->now - v->last_attempt < v->refetch_interval;
	if (too_soon && (why == VERIFY_WHY_KID || v->set != NULL || v->last_failed)) {
		if (why == VERIFY_WHY_KID)
			v->stats.kid_refetches_refused++;
		verify_adopt(call);
		pthread_mutex_unlock(&v->lock);
		return;
	}
	v->fetching = 1;
	v->attempted = 1;
	v->last_attempt = call->now;
	v->stats.fetches++;
	if (why == VERIFY_WHY_KID)
		v->stats.kid_refetches++;
	have_set = v->set != NULL;
	snprintf(etag, sizeof(etag), "%s", v->etag);
	have_held = v->cache_control != NULL;
	snprintf(held, sizeof(held), "%s", have_held ? v->cache_control : "");
	/* The set a 304 renews must be the one the call holds. */
	verify_adopt(call);
	pthread_mutex_unlock(&v->lock);
	verify_fetch_once(call, etag, have_held ? held : NULL, have_set);
}

/* jws_key_lookup_fn: the key set is made current here, once the token is
 * known to be well-formed, so that garbage never costs the JWKS server a
 * request. */
static const struct jwk_key *verify_lookup(void *ctx, const char *kid)
{
	struct verify_call *call = ctx;
	struct verify *v = call->v;
	const struct jwk_key *key;

	if (kid != NULL)
		snprintf(call->kid, sizeof(call->kid), "%s", kid);
	pthread_mutex_lock(&v->lock);
	verify_adopt(call);
	pthread_mutex_unlock(&v->lock);
	if (call->set == NULL)
		verify_refresh(call, VERIFY_WHY_NONE);
	else if (call->now >= call->expires_at)
		verify_refresh(call, VERIFY_WHY_EXPIRED);
	if (call->set == NULL || call->now >= verify_add_sat(call->expires_at, v->max_stale)) {
		call->unavailable = 1;
		return NULL;
	}
	/* No key has an empty kid (such entries are skipped): no refetch. */
	if (kid == NULL || kid[0] == '\0')
		return NULL;
	key = verify_keyset_find(call->set, kid);
	if (key == NULL && !call->fetched) {
		verify_refresh(call, VERIFY_WHY_KID);
		if (call->set == NULL || call->now >= verify_add_sat(call->expires_at, v->max_stale)) {
			call->unavailable = 1;
			return NULL;
		}
		key = verify_keyset_find(call->set, kid);
	}
	if (key != NULL)
		call->stale = call->now >= call->expires_at;
	return key;
}

static int verify_is_reason(int r)
{
	return r <= JWS_E_MALFORMED && r >= JWS_E_UNAVAILABLE;
}

int verify_token(struct verify *v, const char *token, size_t len, const struct verify_expect *expect,
		 struct verify_result *ret_result)
{
	struct verify_call call = { .v = v };
	struct verify_result result = { 0 };
	json_t *header = NULL, *claims = NULL;
	struct jwt_expect e;
	int r;

	if (v == NULL || token == NULL || ret_result == NULL)
		return -EINVAL;
	call.now = verify_now(v);
	e = (struct jwt_expect){ .now = call.now, .leeway = v->leeway };
	if (expect != NULL) {
		e.issuer = expect->issuer;
		e.audience = expect->audience;
		e.typ = expect->typ;
		e.token_type = expect->token_type;
	}
	r = jwt_verify(token, len, verify_lookup, &call, &e, &header, &claims);
	if (r == JWS_E_UNKNOWN_KID && call.unavailable) {
		r = -EIO;
		goto out;
	}
	if (r < 0 && !verify_is_reason(r))
		goto out;
	result.valid = r == 0;
	result.error = r == 0 ? NULL : jws_error_reason(r);
	result.stale = call.stale;
	memcpy(result.kid, call.kid, sizeof(result.kid));
	if (r == 0) {
		result.header_json = json_dumps(header, JSON_COMPACT);
		result.claims_json = json_dumps(claims, JSON_COMPACT);
		if (result.header_json == NULL || result.claims_json == NULL) {
			verify_result_clear(&result);
			r = -ENOMEM;
			goto out;
		}
	}
	*ret_result = result;
	r = 0;
out:
	json_decref(header);
	json_decref(claims);
	verify_keyset_unref(call.set);
	return r;
}

void verify_result_clear(struct verify_result *result)
{
	if (result == NULL)
		return;
	free(result->header_json);
	free(result->claims_json);
	memset(result, 0, sizeof(*result));
}

int verify_get_stats(struct verify *v, struct verify_stats *ret_stats)
{
	if (v == NULL || ret_stats == NULL)
		return -EINVAL;
	pthread_mutex_lock(&v->lock);
	*ret_stats = v->stats;
	ret_stats->keys = v->set ? v->set->count : 0;
	ret_stats->keys_skipped = v->set ? v->set->skipped : 0;
	ret_stats->fetched_at = v->set ? v->fetched_at : 0;
	ret_stats->expires_at = v->set ? v->expires_at : 0;
	pthread_mutex_unlock(&v->lock);
	return 0;
}
