/* config_live: the daemon's config as versions that a reload replaces while
 * workers read them (config.h, "reload"). */
#include "hsmjwt/config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* One version.  cfg comes first: the const struct config * readers hold is
 * the version's address. */
struct config_version {
	struct config cfg;
	/* Readers holding it, plus one while it is current, plus one for the
	 * boot version's pin.  Taken under the lock from live->current;
	 * dropped without it. */
	atomic_uint refs;
	struct config_version *next, **prevp;   /* live->versions, under the lock */
};

struct config_live {
	pthread_mutex_t lock;
	_Atomic(struct config_version *) current;
	struct config_version *boot;
	struct config_version *versions;         /* every version not yet freed */
	size_t version_count;
};

/* ---- which keys a reload may change ----------------------------------- */

enum config_live_kind {
	CONFIG_LIVE_LISTEN,        /* listen[], listen_count, listen_systemd */
	CONFIG_LIVE_ADMIN_LISTEN,  /* admin_listen, admin_listen_set */
	CONFIG_LIVE_STRING,
	CONFIG_LIVE_SECRET,        /* a string compared in constant time */
	CONFIG_LIVE_ALGORITHMS,    /* algorithms[], algorithm_count */
	CONFIG_LIVE_UNSIGNED,
	CONFIG_LIVE_INT64,
	CONFIG_LIVE_SIZE,
	CONFIG_LIVE_INT,           /* fsync_always */
	CONFIG_LIVE_LOG_LEVEL,
};

struct config_live_key {
	const char *name;
	enum config_live_kind kind;
	size_t offset;
	int reloadable;
};

#define LIVE_KEY(n, kind, reloadable) { #n, CONFIG_LIVE_##kind, offsetof(struct config, n), reloadable }

/* Every key of SPEC §3, in one place.  Reloadable keys are read per unit of
 * work (a request, a renewal round) or applied by the reload itself
 * (log_level, log_file); every other key shaped something built once at
 * start, and a reload changing it is refused whole (restart to apply). */
static const struct config_live_key config_live_keys[] = {
	LIVE_KEY(log_level, LOG_LEVEL, 1),
	LIVE_KEY(log_file, STRING, 1),
	LIVE_KEY(rate_limit, UNSIGNED, 1),
	LIVE_KEY(access_ttl, INT64, 1),
	LIVE_KEY(refresh_ttl, INT64, 1),
	LIVE_KEY(id_ttl, INT64, 1),
	LIVE_KEY(parent_ttl, INT64, 1),
	LIVE_KEY(child_ttl, INT64, 1),
	LIVE_KEY(renew_before, INT64, 1),
	LIVE_KEY(default_audience, STRING, 1),
	LIVE_KEY(authorization_endpoint, STRING, 1),
	/* The workers' sockets are bound at start (one per worker and address,
	 * SO_REUSEPORT), the admin thread's likewise. */
	{ "listen", CONFIG_LIVE_LISTEN, 0, 0 },
	{ "admin_listen", CONFIG_LIVE_ADMIN_LISTEN, 0, 0 },
	/* In every token, the status list URIs and discovery: tokens issued
	 * before would no longer verify against the service that issued them. */
	LIVE_KEY(issuer, STRING, 0),
	/* The module is loaded, the token opened and logged in once; a recovery
	 * logs in again with the start's PIN source. */
	LIVE_KEY(pkcs11_module, STRING, 0),
	LIVE_KEY(token, STRING, 0),
	LIVE_KEY(pin_file, STRING, 0),
	LIVE_KEY(pin, SECRET, 0),
	/* The registry file and the state lock are held open. */
	LIVE_KEY(state_dir, STRING, 0),
	/* The key lifecycle the keyring runs: which keys exist and sign, their
	 * size, when they rotate and are published, and when a retired key may
	 * be destroyed (max_ttl and leeway: no token it signed may still be
	 * valid). */
	LIVE_KEY(algorithms, ALGORITHMS, 0),
	LIVE_KEY(rsa_bits, UNSIGNED, 0),
	LIVE_KEY(max_ttl, INT64, 0),
	LIVE_KEY(leeway, INT64, 0),
	LIVE_KEY(rotation_period, INT64, 0),
	LIVE_KEY(publish_ahead, INT64, 0),
	/* Threads, their event loops and token sessions, evhttp's body limit,
	 * each worker's share of the connections and each address's are set
	 * up at start. */
	LIVE_KEY(workers, UNSIGNED, 0),
	LIVE_KEY(max_body, SIZE, 0),
	LIVE_KEY(max_connections, UNSIGNED, 0),
	LIVE_KEY(max_connections_per_address, UNSIGNED, 0),
	/* The registry's flusher runs with the policy it was opened with. */
	{ "fsync", CONFIG_LIVE_INT, offsetof(struct config, fsync_always), 0 },
};

#define CONFIG_LIVE_KEY_COUNT (sizeof(config_live_keys) / sizeof(config_live_keys[0]))

static const void *config_live_field(const struct config *cfg, size_t offset)
{
	return (const char *)cfg + offset;
}

static int config_live_str_equal(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Without an early exit on the first differing byte: a PIN compared with
 * one an attacker may have planted in the file. */
static int config_live_secret_equal(const char *a, const char *b)
{
	size_t la, lb;

	if (a == NULL || b == NULL)
		return a == b;
	la = strlen(a);
	lb = strlen(b);
	return la == lb && CRYPTO_memcmp(a, b, la) == 0;
}

static int config_live_key_equal(const struct config_live_key *key, const struct config *a, const struct config *b)
{
	const void *fa = config_live_field(a, key->offset), *fb = config_live_field(b, key->offset);

	switch (key->kind) {
	case CONFIG_LIVE_LISTEN:
		/* Unused entries may hold anything: compared up to the count. */
		return a->listen_systemd == b->listen_systemd && a->listen_count == b->listen_count &&
		       memcmp(a->listen, b->listen, a->listen_count * sizeof(a->listen[0])) == 0;
	case CONFIG_LIVE_ADMIN_LISTEN:
		return a->admin_listen_set == b->admin_listen_set &&
		       (!a->admin_listen_set || (strcmp(a->admin_listen.host, b->admin_listen.host) == 0 &&
						 a->admin_listen.port == b->admin_listen.port));
	case CONFIG_LIVE_STRING:
		return config_live_str_equal(*(char *const *)fa, *(char *const *)fb);
	case CONFIG_LIVE_SECRET:
		return config_live_secret_equal(*(char *const *)fa, *(char *const *)fb);
	case CONFIG_LIVE_ALGORITHMS:
		return a->algorithm_count == b->algorithm_count &&
		       memcmp(a->algorithms, b->algorithms, a->algorithm_count * sizeof(a->algorithms[0])) == 0;
	case CONFIG_LIVE_UNSIGNED:
		return *(const unsigned *)fa == *(const unsigned *)fb;
	case CONFIG_LIVE_INT64:
		return *(const int64_t *)fa == *(const int64_t *)fb;
	case CONFIG_LIVE_SIZE:
		return *(const size_t *)fa == *(const size_t *)fb;
	case CONFIG_LIVE_INT:
		return *(const int *)fa == *(const int *)fb;
	case CONFIG_LIVE_LOG_LEVEL:
		return *(const enum log_level *)fa == *(const enum log_level *)fb;
	}
	return 0;
}

const char *config_reload_blocker(const struct config *current, const struct config *next)
{
	for (size_t i = 0; i < CONFIG_LIVE_KEY_COUNT; i++)
		if (!config_live_keys[i].reloadable && !config_live_key_equal(&config_live_keys[i], current, next))
			return config_live_keys[i].name;
	return NULL;
}

size_t config_reload_changes(const struct config *current, const struct config *next, char *buf, size_t n)
{
	size_t count = 0, o = 0;

	if (n > 0)
		buf[0] = '\0';
	for (size_t i = 0; i < CONFIG_LIVE_KEY_COUNT; i++) {
		const struct config_live_key *key = &config_live_keys[i];
		int w;
		if (!key->reloadable || config_live_key_equal(key, current, next))
			continue;
		count++;
		if (o >= n)
			continue;
		w = snprintf(buf + o, n - o, "%s%s", o ? "," : "", key->name);
		o = w < 0 || (size_t)w >= n - o ? n : o + (size_t)w;
	}
	return count;
}

/* ---- versions ----------------------------------------------------------- */

static struct config_version *config_live_version_of(const struct config *cfg)
{
	return (struct config_version *)(void *)(uintptr_t)cfg;
}

static void config_live_version_free(struct config_version *v)
{
	config_free(&v->cfg);
	free(v);
}

/* Takes over *cfg; the version starts with one reference, under the lock. */
static int config_live_version_new(struct config_live *live, struct config *cfg, struct config_version **ret_version)
{
	struct config_version *v = calloc(1, sizeof(*v));

	if (v == NULL)
		return -ENOMEM;
	v->cfg = *cfg;
	/* The moved-from struct must not free what the version now owns;
	 * plain memset: no secret is left in it, only pointers. */
	memset(cfg, 0, sizeof(*cfg));
	atomic_init(&v->refs, 1);
	v->next = live->versions;
	if (v->next != NULL)
		v->next->prevp = &v->next;
	v->prevp = &live->versions;
	live->versions = v;
	live->version_count++;
	*ret_version = v;
	return 0;
}

static void config_live_unref(struct config_live *live, struct config_version *v)
{
	if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
		return;
	/* Nobody holds it, and it is not current (current holds a reference):
	 * nothing can take it again. */
	pthread_mutex_lock(&live->lock);
	*v->prevp = v->next;
	if (v->next != NULL)
		v->next->prevp = v->prevp;
	live->version_count--;
	pthread_mutex_unlock(&live->lock);
	config_live_version_free(v);
}

int config_live_new(struct config *cfg, struct config_live **ret_live)
{
	struct config_live *live = calloc(1, sizeof(*live));
	struct config_version *boot;
	int r;

	if (live == NULL)
		return -ENOMEM;
	pthread_mutex_init(&live->lock, NULL);
	r = config_live_version_new(live, cfg, &boot);
	if (r < 0) {
		pthread_mutex_destroy(&live->lock);
		free(live);
		return r;
	}
	/* One reference for being current, one for the boot pin. */
	atomic_store(&boot->refs, 2);
	live->boot = boot;
	atomic_init(&live->current, boot);
	*ret_live = live;
	return 0;
}

const struct config *config_live_boot(const struct config_live *live)
{
	return &live->boot->cfg;
}

int config_live_publish(struct config_live *live, struct config *next, const char **ret_blocker)
{
	struct config_version *v, *old = NULL;
	const char *blocker;
	int r;

	/* Against the boot version: every published version carries its
	 * restart-only keys unchanged, except the development pin, which
	 * only the boot version keeps (a recovery logs in with it). */
	blocker = config_reload_blocker(&live->boot->cfg, next);
	if (ret_blocker != NULL)
		*ret_blocker = blocker;
	if (blocker != NULL)
		return -EPERM;
	if (next->pin != NULL) {
		OPENSSL_cleanse(next->pin, strlen(next->pin));
		free(next->pin);
		next->pin = NULL;
	}
	pthread_mutex_lock(&live->lock);
	r = config_live_version_new(live, next, &v);
	if (r == 0) {
		old = atomic_load_explicit(&live->current, memory_order_relaxed);
		atomic_store_explicit(&live->current, v, memory_order_release);
	}
	pthread_mutex_unlock(&live->lock);
	if (r < 0)
		return r;
	/* The reference it held as current; readers holding it keep it. */
	config_live_unref(live, old);
	return 0;
}

void config_live_adopt(struct config_live *live, const struct config **slot)
{
	struct config_version *cur;
	const struct config *held;

	if (live == NULL)
		return;
	cur = atomic_load_explicit(&live->current, memory_order_acquire);
	if (*slot == &cur->cfg)
		return;
	/* Under the lock, current cannot be replaced and released between
	 * reading it and counting this reference. */
	pthread_mutex_lock(&live->lock);
	cur = atomic_load_explicit(&live->current, memory_order_relaxed);
	atomic_fetch_add_explicit(&cur->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&live->lock);
	held = *slot;
	*slot = &cur->cfg;
	if (held != NULL)
		config_live_unref(live, config_live_version_of(held));
}

void config_live_leave(struct config_live *live, const struct config **slot)
{
	if (live == NULL || *slot == NULL)
		return;
	config_live_unref(live, config_live_version_of(*slot));
	*slot = NULL;
}

const struct config *config_live_retain(struct config_live *live, const struct config *cfg)
{
	/* The caller holds a reference already: no publish can free it. */
	if (live != NULL && cfg != NULL)
		atomic_fetch_add_explicit(&config_live_version_of(cfg)->refs, 1, memory_order_relaxed);
	return cfg;
}

void config_live_release(struct config_live *live, const struct config *cfg)
{
	if (live != NULL && cfg != NULL)
		config_live_unref(live, config_live_version_of(cfg));
}

size_t config_live_versions(struct config_live *live)
{
	size_t n;

	pthread_mutex_lock(&live->lock);
	n = live->version_count;
	pthread_mutex_unlock(&live->lock);
	return n;
}

void config_live_free(struct config_live *live)
{
	if (live == NULL)
		return;
	while (live->versions != NULL) {
		struct config_version *v = live->versions;
		live->versions = v->next;
		config_live_version_free(v);
	}
	pthread_mutex_destroy(&live->lock);
	free(live);
}
