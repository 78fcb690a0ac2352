#include "hsmjwt/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hsmjwt/log.h"
#include "registry_internal.h"

/* Queued bytes beyond which writers wait for the flusher: a slow disk slows
 * the writers down instead of growing the queue without bound. */
#define REGISTRY_QUEUE_MAX ((size_t)64 << 20)
/* A flushed batch buffer larger than this is given back, not kept. */
#define REGISTRY_QUEUE_KEEP ((size_t)4 << 20)
#define REGISTRY_SLAB_SIZE ((size_t)1 << 20)
/* While the file is read at open, pages behind the scan are given back in
 * steps of this size, so that the file image never sits in RSS whole. */
#define REGISTRY_READ_WINDOW ((size_t)16 << 20)
#define REGISTRY_COMPACT_BUFFER ((size_t)1 << 20)
/* How often the flusher counts expired records to decide on compaction. */
#define REGISTRY_COMPACT_CHECK_NS (60 * 1000000000LL)
/* The longest STATUS frame (codec layout): header, seq, kind, jti, status,
 * at, reason. */
#define REGISTRY_STATUS_FRAME_MAX \
	(REGISTRY_FRAME_HEADER + 8 + 1 + 2 + REGISTRY_JTI_MAX + 1 + 8 + 2 + REGISTRY_REASON_MAX)
#define REGISTRY_TOKEN_FRAME_MAX (REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY)
#define REGISTRY_LISTS ((uint32_t)(((uint64_t)UINT32_MAX + 1) / REGISTRY_STATUSLIST_SIZE))
#define REGISTRY_LIST_BYTES (REGISTRY_STATUSLIST_SIZE / 4)
#define REGISTRY_REPAIR "hsmjwtctl registry check --repair"

/* ---- hashing ---------------------------------------------------------------
 * Subjects, orgs and unregistered jtis come from callers: a keyed hash
 * (SipHash-1-3, random key per process) keeps them from choosing collisions
 * in the open-addressing tables. */

struct registry_hashkey {
	uint64_t k0, k1;
};

static inline uint64_t registry_rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

#define REGISTRY_SIPROUND(v0, v1, v2, v3)                                                              \
	do {                                                                                           \
		v0 += v1; v1 = registry_rotl(v1, 13); v1 ^= v0; v0 = registry_rotl(v0, 32);           \
		v2 += v3; v3 = registry_rotl(v3, 16); v3 ^= v2;                                        \
		v0 += v3; v3 = registry_rotl(v3, 21); v3 ^= v0;                                        \
		v2 += v1; v1 = registry_rotl(v1, 17); v1 ^= v2; v2 = registry_rotl(v2, 32);           \
	} while (0)

static uint64_t registry_hash(const struct registry_hashkey *key, const char *s, size_t len)
{
	uint64_t v0 = key->k0 ^ 0x736f6d6570736575ULL, v1 = key->k1 ^ 0x646f72616e646f6dULL;
	uint64_t v2 = key->k0 ^ 0x6c7967656e657261ULL, v3 = key->k1 ^ 0x7465646279746573ULL;
	const unsigned char *p = (const unsigned char *)s;
	uint64_t b = (uint64_t)len << 56, m;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		m = 0;
		for (int k = 0; k < 8; k++)
			m |= (uint64_t)p[i + k] << (8 * k);
		v3 ^= m;
		REGISTRY_SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	for (int k = 0; i < len; i++, k++)
		b |= (uint64_t)p[i] << (8 * k);
	v3 ^= b;
	REGISTRY_SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	REGISTRY_SIPROUND(v0, v1, v2, v3);
	REGISTRY_SIPROUND(v0, v1, v2, v3);
	REGISTRY_SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* Probing compares the hash kept in the slot before it touches a string. */
struct registry_slot {
	uint32_t id;                   /* + 1; 0 = empty */
	uint32_t hash;
};

/* ---- records ---------------------------------------------------------------
 * One compact record per token, carved from slabs: the fixed fields, the
 * strings that repeat (org, client_id, kid, reason) as interned ids, and the
 * rest packed after the header. */

struct registry_rec {
	uint64_t seq;
	int64_t iat, exp, status_at;
	uint32_t status_idx;
	uint32_t hash;                 /* of the jti */
	uint32_t org, client_id, kid, reason;
	uint16_t tag;                  /* more bits of the jti's hash, never 0 */
	uint8_t type, status;
	uint8_t mark;                  /* scratch of the write-lock holder */
	char str[];                    /* jti, subject, parent, family, name, description */
};

static inline const char *registry_next_str(const char *s)
{
	return s + strlen(s) + 1;
}

static inline const char *registry_rec_jti(const struct registry_rec *rec)
{
	return rec->str;
}

static inline const char *registry_rec_subject(const struct registry_rec *rec)
{
	return registry_next_str(rec->str);
}

static inline const char *registry_rec_parent(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_subject(rec));
}

static inline const char *registry_rec_family(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_parent(rec));
}

static inline const char *registry_rec_name(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_family(rec));
}

static inline const char *registry_rec_description(const struct registry_rec *rec)
{
	return registry_next_str(registry_rec_name(rec));
}

/* Slabs are REGISTRY_SLAB_SIZE-aligned, so a record finds its slab from its
 * address; a slab whose records were all dropped by compactions is given
 * back (records are carved in seq order, and old tokens expire first). */
struct registry_slab {
	struct registry_slab *next;
	size_t used;
	size_t live;                   /* records carved here and not released */
	_Alignas(8) unsigned char data[];
};

#define REGISTRY_SLAB_ROOM (REGISTRY_SLAB_SIZE - offsetof(struct registry_slab, data))

struct registry_arena {
	struct registry_slab *head;    /* the slab being carved */
};

/* n is at most a record's size, far below REGISTRY_SLAB_ROOM. */
static void *registry_arena_alloc(struct registry_arena *a, size_t n)
{
	struct registry_slab *s = a->head;
	void *p;

	n = (n + 7) & ~(size_t)7;
	if (s == NULL || REGISTRY_SLAB_ROOM - s->used < n) {
		s = aligned_alloc(REGISTRY_SLAB_SIZE, REGISTRY_SLAB_SIZE);
		if (s == NULL)
			return NULL;
		s->used = 0;
		s->live = 0;
		s->next = a->head;
		a->head = s;
	}
	p = s->data + s->used;
	s->used += n;
	s->live++;
	return p;
}

static struct registry_slab *registry_slab_of(const void *p)
{
	return (struct registry_slab *)((uintptr_t)p & ~(uintptr_t)(REGISTRY_SLAB_SIZE - 1));
}

static void registry_arena_release(const void *p)
{
	registry_slab_of(p)->live--;
}

/* Frees every slab but the one being carved that holds no record. */
static void registry_arena_sweep(struct registry_arena *a)
{
	for (struct registry_slab **s = a->head ? &a->head->next : NULL; s && *s;) {
		if ((*s)->live == 0) {
			struct registry_slab *dead = *s;

			*s = dead->next;
			free(dead);
		} else {
			s = &(*s)->next;
		}
	}
}

static void registry_arena_free(struct registry_arena *a)
{
	while (a->head) {
		struct registry_slab *next = a->head->next;

		free(a->head);
		a->head = next;
	}
}

/* ---- vectors of records, in seq order ------------------------------------ */

struct registry_vec {
	struct registry_rec **items;
	uint32_t count, cap;
};

static int registry_vec_reserve(struct registry_vec *v, size_t extra)
{
	size_t need = (size_t)v->count + extra, cap;
	struct registry_rec **items;

	if (need <= v->cap)
		return 0;
	if (need > UINT32_MAX)
		return -ENOMEM;
	cap = v->cap ? v->cap : 4;
	while (cap < need)
		cap *= 2;
	if (cap > UINT32_MAX)
		cap = UINT32_MAX;
	items = realloc(v->items, cap * sizeof(*items));
	if (items == NULL)
		return -ENOMEM;
	v->items = items;
	v->cap = (uint32_t)cap;
	return 0;
}

/* The first position whose record has a seq above seq. */
static uint32_t registry_vec_after(const struct registry_vec *v, uint64_t seq)
{
	uint32_t lo = 0, hi = v->count;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (v->items[mid]->seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* ---- interned strings ------------------------------------------------------
 * org, client_id, kid and reason repeat across records: each distinct value
 * is stored once and records hold its id.  Id 0 is "". */

struct registry_intern {
	char **strings;                /* by id; NULL for a freed id */
	uint32_t count, alloc;
	struct registry_slot *slots;
	uint32_t mask;
	uint32_t *free_ids;            /* ids compaction freed, taken first */
	uint32_t nfree, free_alloc;
};

static int registry_intern_lookup(const struct registry_intern *t, const char *s, uint32_t h, uint32_t *ret_id)
{
	for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
		const struct registry_slot *slot = &t->slots[i];

		if (slot->id == 0)
			return -ENOENT;
		if (slot->hash == h && strcmp(t->strings[slot->id - 1], s) == 0) {
			*ret_id = slot->id - 1;
			return 0;
		}
	}
}

static int registry_intern_find(const struct registry_intern *t, const struct registry_hashkey *key, const char *s,
				uint32_t *ret_id)
{
	if (s[0] == '\0') {
		*ret_id = 0;
		return 0;
	}
	if (t->slots == NULL)
		return -ENOENT;
	return registry_intern_lookup(t, s, (uint32_t)registry_hash(key, s, strlen(s)), ret_id);
}

static int registry_slots_grow(struct registry_slot **slots, uint32_t *mask)
{
	uint32_t old = *slots ? *mask + 1 : 0, cap = old ? old * 2 : 64;
	struct registry_slot *grown;

	if (cap == 0)
		return -ENOMEM;
	grown = calloc(cap, sizeof(*grown));
	if (grown == NULL)
		return -ENOMEM;
	for (uint32_t k = 0; k < old; k++) {
		uint32_t i;

		if ((*slots)[k].id == 0)
			continue;
		for (i = (*slots)[k].hash & (cap - 1); grown[i].id != 0; i = (i + 1) & (cap - 1))
			;
		grown[i] = (*slots)[k];
	}
	free(*slots);
	*slots = grown;
	*mask = cap - 1;
	return 0;
}

static void registry_slots_put(struct registry_slot *slots, uint32_t mask, uint32_t id, uint32_t h)
{
	uint32_t i;

	for (i = h & mask; slots[i].id != 0; i = (i + 1) & mask)
		;
	slots[i] = (struct registry_slot){ id + 1, h };
}

static int registry_intern_init(struct registry_intern *t)
{
	memset(t, 0, sizeof(*t));
	t->strings = malloc(16 * sizeof(*t->strings));
	if (t->strings == NULL)
		return -ENOMEM;
	t->alloc = 16;
	t->strings[0] = strdup("");
	if (t->strings[0] == NULL)
		return -ENOMEM;
	t->count = 1;
	return registry_slots_grow(&t->slots, &t->mask);
}

static void registry_intern_free(struct registry_intern *t)
{
	for (uint32_t i = 0; i < t->count; i++)
		free(t->strings[i]);
	free(t->strings);
	free(t->slots);
	free(t->free_ids);
	memset(t, 0, sizeof(*t));
}

static int registry_intern_add(struct registry_intern *t, const struct registry_hashkey *key, const char *s,
			       uint32_t *ret_id)
{
	size_t len = strlen(s);
	uint32_t h;
	char *copy;

	if (len == 0) {
		*ret_id = 0;
		return 0;
	}
	h = (uint32_t)registry_hash(key, s, len);
	if (registry_intern_lookup(t, s, h, ret_id) == 0)
		return 0;
	if (t->nfree > 0) {
		uint32_t id = t->free_ids[t->nfree - 1];

		if ((t->strings[id] = malloc(len + 1)) == NULL)
			return -ENOMEM;
		memcpy(t->strings[id], s, len + 1);
		t->nfree--;
		/* The slots are sized for every id, freed ones too. */
		registry_slots_put(t->slots, t->mask, id, h);
		*ret_id = id;
		return 0;
	}
	if (t->count == UINT32_MAX - 1)
		return -ENOMEM;
	if ((uint64_t)(t->count + 1) * 2 > (uint64_t)t->mask + 1 && registry_slots_grow(&t->slots, &t->mask) < 0)
		return -ENOMEM;
	if (t->count == t->alloc) {
		uint32_t alloc = t->alloc > UINT32_MAX / 2 ? UINT32_MAX - 1 : t->alloc * 2;
		char **strings = realloc(t->strings, (size_t)alloc * sizeof(*strings));

		if (strings == NULL)
			return -ENOMEM;
		t->strings = strings;
		t->alloc = alloc;
	}
	copy = malloc(len + 1);
	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, s, len + 1);
	t->strings[t->count] = copy;
	registry_slots_put(t->slots, t->mask, t->count, h);
	*ret_id = t->count++;
	return 0;
}

/* ---- string -> records in seq order (subject, parent, family) ------------ */

/* Keys that fit are kept inline, so that a lookup reads no record (a cache
 * miss each, at open); longer ones point into the group's first record. */
#define REGISTRY_GROUP_INLINE 32

struct registry_group {
	struct registry_vec vec;
	const char *key;               /* NULL when inline */
	char inline_key[REGISTRY_GROUP_INLINE];
};

static inline const char *registry_group_key(const struct registry_group *g)
{
	return g->key ? g->key : g->inline_key;
}

struct registry_map {
	struct registry_group *groups;
	uint32_t count, alloc;
	struct registry_slot *slots;
	uint32_t mask;
};

static struct registry_group *registry_map_lookup(const struct registry_map *m, const char *s, uint32_t h)
{
	for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
		const struct registry_slot *slot = &m->slots[i];

		if (slot->id == 0)
			return NULL;
		if (slot->hash == h && strcmp(registry_group_key(&m->groups[slot->id - 1]), s) == 0)
			return &m->groups[slot->id - 1];
	}
}

static struct registry_group *registry_map_find(const struct registry_map *m, const struct registry_hashkey *key,
						const char *s)
{
	if (m->slots == NULL)
		return NULL;
	return registry_map_lookup(m, s, (uint32_t)registry_hash(key, s, strlen(s)));
}

/* The group of s, created empty if missing: its index in m->groups (which
 * a later call may move). */
static int registry_map_group(struct registry_map *m, const struct registry_hashkey *key, const char *s,
			      uint32_t *ret_group)
{
	size_t len = strlen(s);
	uint32_t h = (uint32_t)registry_hash(key, s, len);
	struct registry_group *g = m->slots ? registry_map_lookup(m, s, h) : NULL;

	if (g != NULL) {
		*ret_group = (uint32_t)(g - m->groups);
		return 0;
	}
	if (m->count == UINT32_MAX - 1)
		return -ENOMEM;
	if ((m->slots == NULL || (uint64_t)(m->count + 1) * 2 > (uint64_t)m->mask + 1) &&
	    registry_slots_grow(&m->slots, &m->mask) < 0)
		return -ENOMEM;
	if (m->count == m->alloc) {
		uint32_t alloc = m->alloc ? (m->alloc > UINT32_MAX / 2 ? UINT32_MAX - 1 : m->alloc * 2) : 16;
		struct registry_group *groups = realloc(m->groups, (size_t)alloc * sizeof(*groups));

		if (groups == NULL)
			return -ENOMEM;
		m->groups = groups;
		m->alloc = alloc;
	}
	g = &m->groups[m->count];
	memset(g, 0, sizeof(*g));
	if (len < sizeof(g->inline_key))
		memcpy(g->inline_key, s, len + 1);
	else
		g->key = s;
	registry_slots_put(m->slots, m->mask, m->count, h);
	*ret_group = m->count++;
	return 0;
}

static void registry_map_free(struct registry_map *m)
{
	for (uint32_t g = 0; g < m->count; g++)
		free(m->groups[g].vec.items);
	free(m->groups);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

/* ---- the index --------------------------------------------------------- */

struct registry_index {
	struct registry_hashkey key;
	struct registry_arena arena;
	struct registry_rec **table;   /* jti -> record, open addressing */
	uint16_t *tags;                /* per slot: the record's tag, 0 = empty */
	size_t table_mask, table_count;
	struct registry_intern strings;
	struct registry_vec all;
	uint64_t *nonactive;           /* bit per position in all: status other than ACTIVE */
	size_t nonactive_words;
	uint32_t nonactive_count;
	struct registry_vec *by_org;   /* by interned org id */
	uint32_t by_org_len;
	struct registry_map subjects, parents, families;
};

static int registry_index_init(struct registry_index *ix, const struct registry_hashkey *key)
{
	memset(ix, 0, sizeof(*ix));
	ix->key = *key;
	return registry_intern_init(&ix->strings);
}

static void registry_index_free(struct registry_index *ix)
{
	registry_arena_free(&ix->arena);
	free(ix->table);
	free(ix->tags);
	registry_intern_free(&ix->strings);
	free(ix->all.items);
	free(ix->nonactive);
	for (uint32_t i = 0; i < ix->by_org_len; i++)
		free(ix->by_org[i].items);
	free(ix->by_org);
	registry_map_free(&ix->subjects);
	registry_map_free(&ix->parents);
	registry_map_free(&ix->families);
	memset(ix, 0, sizeof(*ix));
}

static inline uint16_t registry_tag(uint64_t h)
{
	return (uint16_t)((h >> 48) | 1);
}

/* A miss reads the small tag array only, never a record. */
static struct registry_rec *registry_index_lookup(const struct registry_index *ix, const char *jti, uint64_t h)
{
	uint16_t tag = registry_tag(h);

	if (ix->table == NULL)
		return NULL;
	for (size_t i = (uint32_t)h & ix->table_mask; ix->tags[i] != 0; i = (i + 1) & ix->table_mask)
		if (ix->tags[i] == tag && ix->table[i]->hash == (uint32_t)h && strcmp(ix->table[i]->str, jti) == 0)
			return ix->table[i];
	return NULL;
}

static struct registry_rec *registry_index_get(const struct registry_index *ix, const char *jti)
{
	return registry_index_lookup(ix, jti, registry_hash(&ix->key, jti, strlen(jti)));
}

static int registry_table_reserve(struct registry_index *ix, size_t count)
{
	size_t cap = ix->table ? ix->table_mask + 1 : 1024;
	struct registry_rec **table;
	uint16_t *tags;

	if (ix->table && count * 2 <= cap)
		return 0;
	while (count * 2 > cap)
		cap *= 2;
	table = malloc(cap * sizeof(*table));
	tags = calloc(cap, sizeof(*tags));
	if (table == NULL || tags == NULL) {
		free(table);
		free(tags);
		return -ENOMEM;
	}
	for (size_t i = 0; ix->table && i <= ix->table_mask; i++) {
		size_t j;

		if (ix->tags[i] == 0)
			continue;
		for (j = ix->table[i]->hash & (cap - 1); tags[j] != 0; j = (j + 1) & (cap - 1))
			;
		table[j] = ix->table[i];
		tags[j] = ix->tags[i];
	}
	free(ix->table);
	free(ix->tags);
	ix->table = table;
	ix->tags = tags;
	ix->table_mask = cap - 1;
	return 0;
}

static int registry_by_org_reserve(struct registry_index *ix, uint32_t org)
{
	uint32_t len = ix->by_org_len;
	struct registry_vec *v;

	if (org >= len) {
		len = org + 1 > len * 2 ? org + 1 : len * 2;
		v = realloc(ix->by_org, (size_t)len * sizeof(*v));
		if (v == NULL)
			return -ENOMEM;
		memset(v + ix->by_org_len, 0, (size_t)(len - ix->by_org_len) * sizeof(*v));
		ix->by_org = v;
		ix->by_org_len = len;
	}
	return registry_vec_reserve(&ix->by_org[org], 1);
}

/* Room in the non-active bits for positions below count. */
static int registry_nonactive_reserve(struct registry_index *ix, size_t count)
{
	size_t need = (count + 63) / 64, words = ix->nonactive_words ? ix->nonactive_words : 16;
	uint64_t *bits;

	if (need <= ix->nonactive_words)
		return 0;
	while (words < need)
		words *= 2;
	bits = realloc(ix->nonactive, words * sizeof(*bits));
	if (bits == NULL)
		return -ENOMEM;
	memset(bits + ix->nonactive_words, 0, (words - ix->nonactive_words) * sizeof(*bits));
	ix->nonactive = bits;
	ix->nonactive_words = words;
	return 0;
}

static void registry_nonactive_mark(struct registry_index *ix, uint32_t pos, int on)
{
	uint64_t bit = (uint64_t)1 << (pos % 64), *w = &ix->nonactive[pos / 64];

	if (on && !(*w & bit)) {
		*w |= bit;
		ix->nonactive_count++;
	} else if (!on && (*w & bit)) {
		*w &= ~bit;
		ix->nonactive_count--;
	}
}

/* The first position at or after pos of a non-active record, or
 * all.count; whole words of active records are skipped at once. */
static uint32_t registry_nonactive_next(const struct registry_index *ix, uint32_t pos)
{
	while (pos < ix->all.count) {
		uint64_t w = ix->nonactive[pos / 64] >> (pos % 64);

		if (w != 0) {
			pos += (uint32_t)__builtin_ctzll(w);
			return pos < ix->all.count ? pos : ix->all.count;
		}
		pos = (pos / 64 + 1) * 64;
	}
	return ix->all.count;
}

/* Links a record (its seq above every linked one) into every index, or
 * changes nothing: the room is taken first. */
static int registry_index_link(struct registry_index *ix, struct registry_rec *rec)
{
	const char *subject = registry_rec_subject(rec), *parent = registry_rec_parent(rec);
	const char *family = registry_rec_family(rec);
	uint32_t gs = 0, gp = 0, gf = 0;
	size_t i;

	if (registry_vec_reserve(&ix->all, 1) < 0 || registry_table_reserve(ix, ix->table_count + 1) < 0 ||
	    registry_by_org_reserve(ix, rec->org) < 0 || registry_nonactive_reserve(ix, (size_t)ix->all.count + 1) < 0 ||
	    registry_map_group(&ix->subjects, &ix->key, subject, &gs) < 0 ||
	    registry_vec_reserve(&ix->subjects.groups[gs].vec, 1) < 0 ||
	    (parent[0] && (registry_map_group(&ix->parents, &ix->key, parent, &gp) < 0 ||
			   registry_vec_reserve(&ix->parents.groups[gp].vec, 1) < 0)) ||
	    (family[0] && (registry_map_group(&ix->families, &ix->key, family, &gf) < 0 ||
			   registry_vec_reserve(&ix->families.groups[gf].vec, 1) < 0)))
		return -ENOMEM;
	for (i = rec->hash & ix->table_mask; ix->tags[i] != 0; i = (i + 1) & ix->table_mask)
		;
	ix->table[i] = rec;
	ix->tags[i] = rec->tag;
	ix->table_count++;
	registry_nonactive_mark(ix, ix->all.count, rec->status != REGISTRY_ACTIVE);
	ix->all.items[ix->all.count++] = rec;
	ix->by_org[rec->org].items[ix->by_org[rec->org].count++] = rec;
	ix->subjects.groups[gs].vec.items[ix->subjects.groups[gs].vec.count++] = rec;
	if (parent[0])
		ix->parents.groups[gp].vec.items[ix->parents.groups[gp].vec.count++] = rec;
	if (family[0])
		ix->families.groups[gf].vec.items[ix->families.groups[gf].vec.count++] = rec;
	return 0;
}

/* A record from a TOKEN entry (unlinked). */
static int registry_rec_new(struct registry_index *ix, const struct registry_entry *e, uint64_t seq, uint64_t h,
			    struct registry_rec **ret_rec)
{
	const char *parts[] = { e->jti, e->subject, e->parent, e->family, e->name, e->description };
	size_t lens[6], total = 0;
	uint32_t org, client_id, kid;
	struct registry_rec *rec;
	char *p;

	for (size_t i = 0; i < 6; i++)
		total += (lens[i] = strlen(parts[i])) + 1;
	if (registry_intern_add(&ix->strings, &ix->key, e->org, &org) < 0 ||
	    registry_intern_add(&ix->strings, &ix->key, e->client_id, &client_id) < 0 ||
	    registry_intern_add(&ix->strings, &ix->key, e->kid, &kid) < 0)
		return -ENOMEM;
	rec = registry_arena_alloc(&ix->arena, offsetof(struct registry_rec, str) + total);
	if (rec == NULL)
		return -ENOMEM;
	rec->seq = seq;
	rec->iat = e->at;
	rec->exp = e->exp;
	rec->status_at = e->at;
	rec->status_idx = e->status_idx;
	rec->hash = (uint32_t)h;
	rec->tag = registry_tag(h);
	rec->org = org;
	rec->client_id = client_id;
	rec->kid = kid;
	rec->reason = 0;
	rec->type = (uint8_t)e->type;
	rec->status = (uint8_t)e->status;
	rec->mark = 0;
	p = rec->str;
	for (size_t i = 0; i < 6; i++) {
		memcpy(p, parts[i], lens[i] + 1);
		p += lens[i] + 1;
	}
	*ret_rec = rec;
	return 0;
}

static const char *registry_ix_string(const struct registry_index *ix, uint32_t id)
{
	return ix->strings.strings[id];
}

/* ---- the registry ------------------------------------------------------- */

struct registry_waiter {
	registry_done_fn done;
	void *arg;
};

/* Encoded frames waiting for the file, and whom to tell when they are
 * durable. */
struct registry_queue {
	uint8_t *buf;
	size_t len, cap;
	struct registry_waiter *waiters;
	size_t nwaiters, wcap;
	uint64_t frames;
};

struct registry {
	char path[PATH_MAX];
	char new_path[PATH_MAX];
	char dir[PATH_MAX];
	int fd;
	enum registry_fsync fsync;
	int64_t leeway;
	atomic_uint_fast64_t compact_min;

	/* Lock order: io, gate, lock, qmutex. */
	pthread_mutex_t io;            /* the file: flushes and compactions */
	pthread_mutex_t gate;          /* writers; a compaction holds it across its two phases */
	pthread_rwlock_t lock;         /* the index, next_seq, the status lists */
	pthread_mutex_t qmutex;        /* queue, stopping */
	pthread_cond_t qwork;          /* to the flusher: work, or stop */
	int locks;                     /* how many of the above exist, for a partial teardown */

	struct registry_queue queue;
	int stopping;
	pthread_t flusher;
	int flusher_running;

	atomic_int failed;
	atomic_uint_fast64_t frames, file_bytes;
	atomic_uint_fast32_t next_status_idx;

	/* under io (atomic: the flusher reads them to time its waits) */
	atomic_int dirty;              /* written, not yet fdatasynced (interval) */
	atomic_int_fast64_t last_sync_ns;
	atomic_int_fast64_t last_compact_check_ns;

	/* under lock */
	struct registry_index index;
	uint64_t next_seq;
	uint8_t **lists;               /* per status list, NULL while all zero */
	uint64_t *generations;
	uint32_t nlists;
};

static int64_t registry_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int registry_write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int registry_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* The first write or fsync failure, logged once: from now on nothing is
 * acknowledged. */
static void registry_fail(struct registry *reg, const char *what, int err)
{
	if (atomic_exchange(&reg->failed, 1) == 0) {
		char q[PATH_MAX + 8];

		log_error("\"registry %s failed: no further changes are accepted\" path=%s error=\"%s\"", what,
			  log_quote(q, sizeof(q), reg->path), strerror(err));
	}
}

/* ---- status lists ----------------------------------------------------------
 * 2 bits per index (0 valid, 1 invalid, 2 suspended), least-significant
 * first, one 16 KiB block per list allocated on its first non-zero entry. */

static unsigned registry_status_bits(enum registry_status status)
{
	switch (status) {
	case REGISTRY_ACTIVE:
		return 0;
	case REGISTRY_SUSPENDED:
		return 2;
	default:
		return 1;
	}
}

/* Makes room for idx to take status, so that setting it cannot fail. */
static int registry_bits_reserve(struct registry *reg, uint32_t idx, enum registry_status status)
{
	uint32_t list = idx / REGISTRY_STATUSLIST_SIZE;

	if (idx == REGISTRY_NO_INDEX || registry_status_bits(status) == 0)
		return 0;
	if (list >= reg->nlists) {
		uint32_t n = reg->nlists ? reg->nlists : 16;
		uint8_t **lists;
		uint64_t *gens;

		while (n <= list)
			n = n > REGISTRY_LISTS / 2 ? REGISTRY_LISTS : n * 2;
		lists = realloc(reg->lists, (size_t)n * sizeof(*lists));
		if (lists == NULL)
			return -ENOMEM;
		reg->lists = lists;
		gens = realloc(reg->generations, (size_t)n * sizeof(*gens));
		if (gens == NULL)
			return -ENOMEM;
		reg->generations = gens;
		memset(lists + reg->nlists, 0, (size_t)(n - reg->nlists) * sizeof(*lists));
		memset(gens + reg->nlists, 0, (size_t)(n - reg->nlists) * sizeof(*gens));
		reg->nlists = n;
	}
	if (reg->lists[list] == NULL && (reg->lists[list] = calloc(1, REGISTRY_LIST_BYTES)) == NULL)
		return -ENOMEM;
	return 0;
}

static void registry_bits_set(struct registry *reg, uint32_t idx, enum registry_status status)
{
	uint32_t list = idx / REGISTRY_STATUSLIST_SIZE, entry = idx % REGISTRY_STATUSLIST_SIZE;
	unsigned value = registry_status_bits(status), shift = (entry % 4) * 2;
	uint8_t *byte;

	if (idx == REGISTRY_NO_INDEX || list >= reg->nlists || reg->lists[list] == NULL)
		return;   /* all zero, and value 0 (the room was reserved otherwise) */
	byte = &reg->lists[list][entry / 4];
	if (((*byte >> shift) & 3u) == value)
		return;
	*byte = (uint8_t)((*byte & ~(3u << shift)) | (value << shift));
	reg->generations[list]++;
}

/* ---- the queue ---------------------------------------------------------- */

/* Under qmutex: room for bytes more and one more waiter. */
static int registry_queue_reserve(struct registry_queue *q, size_t bytes)
{
	if (q->cap - q->len < bytes) {
		size_t cap = q->cap ? q->cap : 65536;
		uint8_t *buf;

		while (cap - q->len < bytes)
			cap *= 2;
		buf = realloc(q->buf, cap);
		if (buf == NULL)
			return -ENOMEM;
		q->buf = buf;
		q->cap = cap;
	}
	if (q->nwaiters == q->wcap) {
		size_t wcap = q->wcap ? q->wcap * 2 : 64;
		struct registry_waiter *w = realloc(q->waiters, wcap * sizeof(*w));

		if (w == NULL)
			return -ENOMEM;
		q->waiters = w;
		q->wcap = wcap;
	}
	return 0;
}

/* Under qmutex, with room reserved. */
static int registry_queue_entry(struct registry_queue *q, const struct registry_entry *e)
{
	size_t len;
	int r = registry_encode(e, q->buf + q->len, q->cap - q->len, &len);

	if (r < 0)
		return r;
	q->len += len;
	q->frames++;
	return 0;
}

static void registry_queue_waiter(struct registry_queue *q, registry_done_fn done, void *arg)
{
	if (done)
		q->waiters[q->nwaiters++] = (struct registry_waiter){ done, arg };
}

static void registry_queue_release(struct registry_queue *q)
{
	free(q->buf);
	free(q->waiters);
	memset(q, 0, sizeof(*q));
}

static void registry_queue_answer(struct registry_queue *q, int result)
{
	for (size_t i = 0; i < q->nwaiters; i++)
		q->waiters[i].done(q->waiters[i].arg, result);
	q->nwaiters = 0;
	q->len = 0;
	q->frames = 0;
	if (q->cap > REGISTRY_QUEUE_KEEP) {
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

/* Under io: takes everything queued into batch (empty on entry). */
static void registry_queue_take(struct registry *reg, struct registry_queue *batch)
{
	struct registry_queue tmp;

	pthread_mutex_lock(&reg->qmutex);
	tmp = reg->queue;
	reg->queue = *batch;
	*batch = tmp;
	pthread_mutex_unlock(&reg->qmutex);
}

static int registry_sync(struct registry *reg)
{
	if (fdatasync(reg->fd) < 0) {
		registry_fail(reg, "fdatasync", errno);
		return -EIO;
	}
	reg->dirty = 0;
	reg->last_sync_ns = registry_mono_ns();
	return 0;
}

/* Under io: appends a taken batch to the file and makes it durable per the
 * policy; the result for its waiters. */
static int registry_write_batch(struct registry *reg, const struct registry_queue *batch)
{
	int r;

	if (atomic_load(&reg->failed))
		return -EIO;
	if (batch->len == 0)
		return 0;   /* only no-ops: what they rely on was acknowledged before them */
	r = registry_write_all(reg->fd, batch->buf, batch->len);
	if (r < 0) {
		registry_fail(reg, "write", -r);
		return -EIO;
	}
	atomic_fetch_add(&reg->frames, batch->frames);
	atomic_fetch_add(&reg->file_bytes, batch->len);
	if (reg->fsync == REGISTRY_FSYNC_ALWAYS)
		return registry_sync(reg);
	reg->dirty = 1;
	if (registry_mono_ns() - reg->last_sync_ns >= (int64_t)REGISTRY_INTERVAL_MS * 1000000)
		return registry_sync(reg);
	return 0;
}

static void registry_flush_once(struct registry *reg, struct registry_queue *batch)
{
	int r;

	pthread_mutex_lock(&reg->io);
	registry_queue_take(reg, batch);
	r = registry_write_batch(reg, batch);
	pthread_mutex_unlock(&reg->io);
	registry_queue_answer(batch, r);
}

static void registry_sync_if_due(struct registry *reg, int force)
{
	pthread_mutex_lock(&reg->io);
	if (reg->dirty && !atomic_load(&reg->failed) &&
	    (force || registry_mono_ns() - reg->last_sync_ns >= (int64_t)REGISTRY_INTERVAL_MS * 1000000))
		registry_sync(reg);
	pthread_mutex_unlock(&reg->io);
}

static int registry_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int force_check,
				  int *ret_compacted);

static void *registry_flusher(void *arg)
{
	struct registry *reg = arg;
	struct registry_queue batch = { 0 };

	pthread_mutex_lock(&reg->qmutex);
	for (;;) {
		if (reg->queue.len == 0 && reg->queue.nwaiters == 0) {
			struct timespec ts;
			int64_t deadline;

			if (reg->stopping)
				break;
			/* Wakes for the interval fdatasync and the compaction check. */
			deadline = reg->dirty ? reg->last_sync_ns + (int64_t)REGISTRY_INTERVAL_MS * 1000000
					      : registry_mono_ns() + REGISTRY_COMPACT_CHECK_NS;
			ts.tv_sec = deadline / 1000000000;
			ts.tv_nsec = deadline % 1000000000;
			if (pthread_cond_timedwait(&reg->qwork, &reg->qmutex, &ts) == ETIMEDOUT) {
				pthread_mutex_unlock(&reg->qmutex);
				registry_sync_if_due(reg, 0);
				registry_maybe_compact(reg, time(NULL), atomic_load(&reg->compact_min), 0, NULL);
				pthread_mutex_lock(&reg->qmutex);
			}
			continue;
		}
		pthread_mutex_unlock(&reg->qmutex);
		registry_flush_once(reg, &batch);
		registry_maybe_compact(reg, time(NULL), atomic_load(&reg->compact_min), 0, NULL);
		pthread_mutex_lock(&reg->qmutex);
	}
	pthread_mutex_unlock(&reg->qmutex);
	registry_sync_if_due(reg, 1);
	registry_queue_release(&batch);
	return NULL;
}

/* ---- open ----------------------------------------------------------------- */

struct registry_load {
	struct registry *reg;
	const uint8_t *base;
	size_t released;               /* bytes of the map given back */
	size_t page;
	uint32_t next_idx;
	uint64_t orphans;              /* STATUS frames of unknown jtis */
	int logged;
};

/* rec is linked (its bit has room) and its status-list entry reserved. */
static void registry_apply_status(struct registry *reg, struct registry_rec *rec, enum registry_status status,
				  int64_t at, uint32_t reason)
{
	rec->status = (uint8_t)status;
	rec->status_at = at;
	rec->reason = reason;
	registry_bits_set(reg, rec->status_idx, status);
	registry_nonactive_mark(&reg->index, registry_vec_after(&reg->index.all, rec->seq - 1),
				status != REGISTRY_ACTIVE);
}

static int registry_load_frame(void *arg, const struct registry_entry *e, size_t offset)
{
	struct registry_load *ld = arg;
	struct registry *reg = ld->reg;
	struct registry_rec *rec;
	char q[PATH_MAX + 8];
	uint32_t reason;
	uint64_t h;
	size_t upto = offset & ~(ld->page - 1);

	if (upto - ld->released >= REGISTRY_READ_WINDOW) {
		madvise((void *)(uintptr_t)(ld->base + ld->released), upto - ld->released, MADV_DONTNEED);
		ld->released = upto;
	}
	switch (e->kind) {
	case REGISTRY_KIND_TOKEN:
		h = registry_hash(&reg->index.key, e->jti, strlen(e->jti));
		if (registry_index_lookup(&reg->index, e->jti, h) != NULL) {
			log_error("\"registry holds a jti twice: refusing to start\" path=%s offset=%zu jti=%s repair=\"%s\"",
				  log_quote(q, sizeof(q), reg->path), offset, e->jti, REGISTRY_REPAIR);
			ld->logged = 1;
			return -EBADMSG;
		}
		if (registry_rec_new(&reg->index, e, e->seq, h, &rec) < 0 ||
		    registry_bits_reserve(reg, e->status_idx, e->status) < 0 ||
		    registry_index_link(&reg->index, rec) < 0)
			return -ENOMEM;
		registry_bits_set(reg, rec->status_idx, e->status);
		if (e->status_idx != REGISTRY_NO_INDEX && e->status_idx >= ld->next_idx)
			ld->next_idx = e->status_idx + 1;
		return 0;
	case REGISTRY_KIND_STATUS:
		rec = registry_index_get(&reg->index, e->jti);
		if (rec == NULL) {
			/* Only a repair that dropped the TOKEN frame leaves one. */
			ld->orphans++;
			return 0;
		}
		if (registry_intern_add(&reg->index.strings, &reg->index.key, e->reason, &reason) < 0 ||
		    registry_bits_reserve(reg, rec->status_idx, e->status) < 0)
			return -ENOMEM;
		registry_apply_status(reg, rec, e->status, e->at, reason);
		return 0;
	case REGISTRY_KIND_META:
		if (e->next_status_idx > ld->next_idx)
			ld->next_idx = e->next_status_idx;
		return 0;
	}
	return 0;
}

/* Reads the file into the index: 0, or -EBADMSG (logged) when it must not
 * be used as it is. */
static int registry_load(struct registry *reg, size_t size)
{
	struct registry_load ld = { .reg = reg, .page = (size_t)sysconf(_SC_PAGESIZE) };
	struct registry_scan scan;
	char q[PATH_MAX + 8];
	void *map = NULL;
	size_t map_size = size;
	int r;

	if (size > 0) {
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, reg->fd, 0);
		if (map == MAP_FAILED) {
			r = -errno;
			log_error("\"cannot map the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
				  strerror(-r));
			return r;
		}
		madvise(map, size, MADV_SEQUENTIAL);
		ld.base = map;
		/* A good guess of the record count spares the table its doublings. */
		if (registry_table_reserve(&reg->index, size / 160) < 0) {
			r = -ENOMEM;
			log_error("\"cannot read the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
				  strerror(-r));
			goto out;
		}
	}
	r = registry_scan(map, size, registry_load_frame, &ld, &scan);
	if (r < 0) {
		if (!ld.logged)
			log_error("\"cannot read the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
				  strerror(-r));
		goto out;
	}
	if (scan.verdict == REGISTRY_CORRUPT) {
		log_error("\"registry is corrupt: refusing to start\" path=%s offset=%zu repair=\"%s\"",
			  log_quote(q, sizeof(q), reg->path), scan.bad_offset, REGISTRY_REPAIR);
		r = -EBADMSG;
		goto out;
	}
	if (scan.verdict == REGISTRY_TORN_TAIL) {
		if (ftruncate(reg->fd, (off_t)scan.bad_offset) < 0 || fsync(reg->fd) < 0) {
			r = -errno;
			log_error("\"cannot truncate the registry's torn tail\" path=%s offset=%zu error=\"%s\"",
				  log_quote(q, sizeof(q), reg->path), scan.bad_offset, strerror(-r));
			goto out;
		}
		log_warn("\"registry had a torn tail: truncated\" path=%s offset=%zu dropped_bytes=%zu",
			 log_quote(q, sizeof(q), reg->path), scan.bad_offset, size - scan.bad_offset);
		size = scan.bad_offset;
	}
	if (ld.orphans > 0)
		log_warn("\"registry has status changes of unknown tokens: ignored\" path=%s frames=%llu",
			 log_quote(q, sizeof(q), reg->path), (unsigned long long)ld.orphans);
	reg->next_seq = scan.last_seq + 1;
	atomic_store(&reg->next_status_idx, ld.next_idx);
	atomic_store(&reg->frames, scan.frames);
	atomic_store(&reg->file_bytes, size);
	r = 0;
out:
	if (map)
		munmap(map, map_size);
	return r;
}

/* An empty (or torn-while-created) file gets its magic, durably. */
static int registry_init_file(struct registry *reg)
{
	char q[PATH_MAX + 8];
	struct stat st;
	int r;

	if (fstat(reg->fd, &st) < 0)
		return -errno;
	/* 0 also after registry_load truncated a magic torn at creation. */
	if (st.st_size > 0)
		return 0;
	r = registry_write_all(reg->fd, (const uint8_t *)REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	if (r == 0 && fsync(reg->fd) < 0)
		r = -errno;
	if (r == 0)
		r = registry_fsync_dir(reg->dir);
	if (r < 0)
		log_error("\"cannot initialise the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
			  strerror(-r));
	else
		atomic_store(&reg->file_bytes, REGISTRY_MAGIC_LEN);
	return r;
}

static void registry_free(struct registry *reg)
{
	if (reg->fd >= 0)
		close(reg->fd);
	registry_index_free(&reg->index);
	for (uint32_t i = 0; i < reg->nlists; i++)
		free(reg->lists[i]);
	free(reg->lists);
	free(reg->generations);
	registry_queue_release(&reg->queue);
	if (reg->locks >= 5) {
		pthread_cond_destroy(&reg->qwork);
		pthread_mutex_destroy(&reg->qmutex);
		pthread_rwlock_destroy(&reg->lock);
		pthread_mutex_destroy(&reg->gate);
		pthread_mutex_destroy(&reg->io);
	}
	free(reg);
}

static int registry_init_locks(struct registry *reg)
{
	pthread_rwlockattr_t rwa;
	pthread_condattr_t ca;

	/* Writers must not starve behind a stream of list calls. */
	if (pthread_rwlockattr_init(&rwa) != 0)
		return -ENOMEM;
	pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (pthread_condattr_init(&ca) != 0) {
		pthread_rwlockattr_destroy(&rwa);
		return -ENOMEM;
	}
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_mutex_init(&reg->io, NULL) != 0 || pthread_mutex_init(&reg->gate, NULL) != 0 ||
	    pthread_rwlock_init(&reg->lock, &rwa) != 0 || pthread_mutex_init(&reg->qmutex, NULL) != 0 ||
	    pthread_cond_init(&reg->qwork, &ca) != 0) {
		pthread_rwlockattr_destroy(&rwa);
		pthread_condattr_destroy(&ca);
		return -ENOMEM;
	}
	pthread_rwlockattr_destroy(&rwa);
	pthread_condattr_destroy(&ca);
	reg->locks = 5;
	return 0;
}

int registry_open(const char *state_dir, enum registry_fsync fsync_policy, int64_t leeway,
		  struct registry **ret_registry)
{
	struct registry_hashkey key;
	struct registry *reg = NULL;
	int64_t start = registry_mono_ns();
	char q[PATH_MAX + 8];
	struct stat st;
	int r;

	if (state_dir == NULL || ret_registry == NULL || leeway < 0 ||
	    (fsync_policy != REGISTRY_FSYNC_ALWAYS && fsync_policy != REGISTRY_FSYNC_INTERVAL))
		return -EINVAL;
	reg = calloc(1, sizeof(*reg));
	if (reg == NULL)
		return -ENOMEM;
	reg->fd = -1;
	if ((size_t)snprintf(reg->dir, sizeof(reg->dir), "%s", state_dir) >= sizeof(reg->dir) ||
	    (size_t)snprintf(reg->path, sizeof(reg->path), "%s/%s", state_dir, REGISTRY_FILE) >= sizeof(reg->path) ||
	    (size_t)snprintf(reg->new_path, sizeof(reg->new_path), "%s/%s.new", state_dir, REGISTRY_FILE) >=
		    sizeof(reg->new_path)) {
		log_error("\"state_dir path too long\" state_dir=%s", log_quote(q, sizeof(q), state_dir));
		r = -ENAMETOOLONG;
		goto fail;
	}
	reg->fsync = fsync_policy;
	reg->leeway = leeway;
	reg->compact_min = REGISTRY_COMPACT_MIN_FRAMES;
	r = registry_init_locks(reg);
	if (r < 0) {
		log_error("\"cannot create the registry's locks\"");
		goto fail;
	}
	if (getrandom(&key, sizeof(key), 0) != (ssize_t)sizeof(key)) {
		r = -EIO;
		log_error("\"cannot seed the registry's hash\" error=\"%s\"", strerror(errno));
		goto fail;
	}
	r = registry_index_init(&reg->index, &key);
	if (r < 0) {
		log_error("\"cannot allocate the registry index\" error=\"%s\"", strerror(-r));
		goto fail;
	}
	/* A compaction that died before its rename left this behind. */
	if (unlink(reg->new_path) == 0)
		log_warn("\"removed an unfinished registry compaction\" path=%s",
			 log_quote(q, sizeof(q), reg->new_path));
	reg->fd = open(reg->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	r = reg->fd < 0 || fstat(reg->fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
	if (r < 0) {
		log_error("\"cannot open the registry\" path=%s error=\"%s\"", log_quote(q, sizeof(q), reg->path),
			  r == -EINVAL ? "not a regular file" : strerror(-r));
		goto fail;
	}
	r = registry_load(reg, (size_t)st.st_size);
	if (r < 0)
		goto fail;
	r = registry_init_file(reg);
	if (r < 0)
		goto fail;
	reg->last_sync_ns = reg->last_compact_check_ns = registry_mono_ns();
	r = -pthread_create(&reg->flusher, NULL, registry_flusher, reg);
	if (r < 0) {
		log_error("\"cannot start the registry flusher\" error=\"%s\"", strerror(-r));
		goto fail;
	}
	reg->flusher_running = 1;
	log_info("\"registry opened\" path=%s records=%llu frames=%llu bytes=%llu next_status_idx=%u ms=%lld",
		 log_quote(q, sizeof(q), reg->path), (unsigned long long)reg->index.all.count,
		 (unsigned long long)atomic_load(&reg->frames), (unsigned long long)atomic_load(&reg->file_bytes),
		 (unsigned)atomic_load(&reg->next_status_idx), (long long)((registry_mono_ns() - start) / 1000000));
	*ret_registry = reg;
	return 0;
fail:
	registry_free(reg);
	return r;
}

void registry_close(struct registry *reg)
{
	if (reg == NULL)
		return;
	if (reg->flusher_running) {
		pthread_mutex_lock(&reg->qmutex);
		reg->stopping = 1;
		pthread_cond_broadcast(&reg->qwork);
		pthread_mutex_unlock(&reg->qmutex);
		pthread_join(reg->flusher, NULL);
	}
	registry_free(reg);
}

int registry_reserve_index(struct registry *reg, uint32_t *ret_idx)
{
	uint_fast32_t v;

	if (reg == NULL || ret_idx == NULL)
		return -EINVAL;
	v = atomic_load(&reg->next_status_idx);
	do {
		/* REGISTRY_NO_INDEX (UINT32_MAX) is never an index. */
		if (v >= REGISTRY_NO_INDEX) {
			log_error("\"status list indices exhausted\" next_status_idx=%u", (unsigned)v);
			return -ENOSPC;
		}
	} while (!atomic_compare_exchange_weak(&reg->next_status_idx, &v, v + 1));
	*ret_idx = (uint32_t)v;
	return 0;
}

/* ---- changes -------------------------------------------------------------- */

/* Takes the gate and the write lock: -EIO (nothing held) once the registry
 * has failed, -EAGAIN while the queue is over its limit.  Refusing rather
 * than waiting: the caller is an event loop that serves verifications and
 * health checks too, and a disk that far behind may never catch up. */
static int registry_write_begin(struct registry *reg)
{
	size_t queued;

	pthread_mutex_lock(&reg->qmutex);
	queued = reg->queue.len;
	pthread_mutex_unlock(&reg->qmutex);
	if (queued > REGISTRY_QUEUE_MAX) {
		log_limited(LOG_LEVEL_WARN, "\"registry queue full: refusing a change\" queued_bytes=%zu", queued);
		return -EAGAIN;
	}
	pthread_mutex_lock(&reg->gate);
	pthread_rwlock_wrlock(&reg->lock);
	if (atomic_load(&reg->failed)) {
		pthread_rwlock_unlock(&reg->lock);
		pthread_mutex_unlock(&reg->gate);
		return -EIO;
	}
	return 0;
}

static void registry_write_end(struct registry *reg)
{
	pthread_rwlock_unlock(&reg->lock);
	pthread_mutex_unlock(&reg->gate);
}

static int registry_in_scope(const struct registry_index *ix, const struct registry_rec *rec, const char *org_scope)
{
	return org_scope == NULL || strcmp(registry_ix_string(ix, rec->org), org_scope) == 0;
}

/* A string field of a caller's struct: terminated within its array. */
static int registry_field_ok(const char *s, size_t size, int required)
{
	size_t n = strnlen(s, size);

	return n < size && (!required || n > 0);
}

static int registry_string_ok(const char *s, size_t max, int required)
{
	return s != NULL && registry_field_ok(s, max + 1, required);
}

static int registry_expired_for_good(const struct registry *reg, int64_t exp, int64_t now)
{
	int64_t until;

	/* Past exp + leeway no verifier accepts the token any more. */
	return !__builtin_add_overflow(exp, reg->leeway, &until) && until < now;
}

int registry_add(struct registry *reg, const struct registry_record *rec, registry_done_fn done, void *arg)
{
	struct registry_entry e;
	struct registry_rec *r_new;
	uint8_t frame[REGISTRY_TOKEN_FRAME_MAX];
	size_t len;
	int r;

	if (reg == NULL || rec == NULL || !registry_field_ok(rec->jti, sizeof(rec->jti), 1) ||
	    !registry_field_ok(rec->org, sizeof(rec->org), 0) ||
	    !registry_field_ok(rec->subject, sizeof(rec->subject), 0) ||
	    !registry_field_ok(rec->name, sizeof(rec->name), 0) ||
	    !registry_field_ok(rec->description, sizeof(rec->description), 0) ||
	    !registry_field_ok(rec->client_id, sizeof(rec->client_id), 0) ||
	    !registry_field_ok(rec->kid, sizeof(rec->kid), 0) ||
	    !registry_field_ok(rec->parent, sizeof(rec->parent), 0) ||
	    !registry_field_ok(rec->family, sizeof(rec->family), 0) || rec->status != REGISTRY_ACTIVE ||
	    (unsigned)rec->type > REGISTRY_TYPE_CHILD)
		return -EINVAL;
	/* An index must have been handed out by registry_reserve_index. */
	if (rec->status_idx != REGISTRY_NO_INDEX && rec->status_idx >= atomic_load(&reg->next_status_idx))
		return -EINVAL;
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	memcpy(e.jti, rec->jti, sizeof(e.jti));
	e.status = REGISTRY_ACTIVE;
	e.at = rec->iat;
	e.type = rec->type;
	memcpy(e.org, rec->org, sizeof(e.org));
	memcpy(e.subject, rec->subject, sizeof(e.subject));
	memcpy(e.name, rec->name, sizeof(e.name));
	memcpy(e.description, rec->description, sizeof(e.description));
	memcpy(e.client_id, rec->client_id, sizeof(e.client_id));
	memcpy(e.kid, rec->kid, sizeof(e.kid));
	memcpy(e.parent, rec->parent, sizeof(e.parent));
	memcpy(e.family, rec->family, sizeof(e.family));
	e.exp = rec->exp;
	e.status_idx = rec->status_idx;

	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	if (registry_index_get(&reg->index, rec->jti) != NULL) {
		r = -EEXIST;
		goto out;
	}
	if (reg->index.all.count >= REGISTRY_MAX_RECORDS) {
		log_error("\"registry full\" records=%u", (unsigned)reg->index.all.count);
		r = -ENOSPC;
		goto out;
	}
	e.seq = reg->next_seq;
	r = registry_encode(&e, frame, sizeof(frame), &len);
	if (r < 0) {
		r = -EINVAL;
		goto out;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, len);
	if (r == 0)
		r = registry_rec_new(&reg->index, &e, e.seq, registry_hash(&reg->index.key, e.jti, strlen(e.jti)),
				     &r_new);
	if (r == 0 && (r = registry_index_link(&reg->index, r_new)) < 0)
		registry_arena_release(r_new);
	if (r == 0) {
		memcpy(reg->queue.buf + reg->queue.len, frame, len);
		reg->queue.len += len;
		reg->queue.frames++;
		registry_queue_waiter(&reg->queue, done, arg);
		reg->next_seq++;
		pthread_cond_signal(&reg->qwork);
	}
	pthread_mutex_unlock(&reg->qmutex);
out:
	registry_write_end(reg);
	return r;
}

/* Adds to plan, transitively, every record of scope (org id, or any when
 * UINT32_MAX) whose parent or family is the jti of a record already in
 * plan from position from on, and that is still active or suspended.  The
 * records in plan carry mark = 1. */
static int registry_cascade(struct registry_index *ix, struct registry_vec *plan, uint32_t from, uint32_t scope)
{
	for (uint32_t i = from; i < plan->count; i++) {
		const char *jti = registry_rec_jti(plan->items[i]);
		struct registry_group *groups[2] = { registry_map_find(&ix->parents, &ix->key, jti),
						     registry_map_find(&ix->families, &ix->key, jti) };

		for (int g = 0; g < 2; g++) {
			if (groups[g] == NULL)
				continue;
			for (uint32_t k = 0; k < groups[g]->vec.count; k++) {
				struct registry_rec *d = groups[g]->vec.items[k];

				if (d->mark || (d->status != REGISTRY_ACTIVE && d->status != REGISTRY_SUSPENDED) ||
				    (scope != UINT32_MAX && d->org != scope))
					continue;
				if (registry_vec_reserve(plan, 1) < 0)
					return -ENOMEM;
				d->mark = 1;
				plan->items[plan->count++] = d;
			}
		}
	}
	return 0;
}

static void registry_unmark(struct registry_vec *plan)
{
	for (uint32_t i = 0; i < plan->count; i++)
		plan->items[i]->mark = 0;
}

/* Applies plan: plan->items[i] takes statuses[i] (or, with statuses NULL,
 * status) at now, one STATUS frame each, and one waiter for the whole
 * change.  Nothing changes unless all of it can. */
static int registry_commit(struct registry *reg, struct registry_vec *plan, enum registry_status status,
			   const uint8_t *statuses, int64_t now, const char *reason, registry_done_fn done,
			   void *arg)
{
	struct registry_index *ix = &reg->index;
	struct registry_entry e;
	uint32_t reason_id;
	int r;

	if (registry_intern_add(&ix->strings, &ix->key, reason, &reason_id) < 0)
		return -ENOMEM;
	for (uint32_t i = 0; i < plan->count; i++) {
		enum registry_status s = statuses ? (enum registry_status)statuses[i] : status;

		if (registry_bits_reserve(reg, plan->items[i]->status_idx, s) < 0)
			return -ENOMEM;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, (size_t)plan->count * REGISTRY_STATUS_FRAME_MAX);
	if (r < 0) {
		pthread_mutex_unlock(&reg->qmutex);
		return r;
	}
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_STATUS;
	e.at = now;
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	for (uint32_t i = 0; i < plan->count; i++) {
		struct registry_rec *rec = plan->items[i];

		e.status = statuses ? (enum registry_status)statuses[i] : status;
		registry_apply_status(reg, rec, e.status, now, reason_id);
		e.seq = reg->next_seq++;
		memcpy(e.jti, rec->str, strlen(rec->str) + 1);
		if (registry_queue_entry(&reg->queue, &e) < 0)
			/* Cannot happen (every field was checked): the file
			 * would no longer match the index. */
			registry_fail(reg, "encode", EINVAL);
	}
	registry_queue_waiter(&reg->queue, done, arg);
	pthread_cond_signal(&reg->qwork);
	pthread_mutex_unlock(&reg->qmutex);
	return 0;
}

static int registry_transition_ok(enum registry_status from, enum registry_status to)
{
	if (from == to)
		return 1;
	if (from == REGISTRY_DELETED)
		return 0;
	if (from == REGISTRY_REVOKED)
		return to == REGISTRY_DELETED;
	return 1;
}

int registry_set_status(struct registry *reg, const char *jti, const char *org_scope, enum registry_status status,
			int64_t now, const char *reason, registry_done_fn done, void *arg, size_t *ret_changed)
{
	struct registry_vec plan = { 0 };
	struct registry_rec *rec;
	uint8_t *statuses = NULL;
	uint32_t scope = UINT32_MAX;
	int r;

	if (reason == NULL)
		reason = "";
	if (reg == NULL || !registry_string_ok(jti, REGISTRY_JTI_MAX, 1) || (unsigned)status > REGISTRY_DELETED ||
	    !registry_string_ok(reason, REGISTRY_REASON_MAX, 0) ||
	    (org_scope != NULL && !registry_string_ok(org_scope, REGISTRY_ORG_MAX, 0)))
		return -EINVAL;
	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	rec = registry_index_get(&reg->index, jti);
	if (rec == NULL || !registry_in_scope(&reg->index, rec, org_scope)) {
		r = -ENOENT;
		goto out;
	}
	if (!registry_transition_ok(rec->status, status)) {
		r = -EPERM;
		goto out;
	}
	if (org_scope != NULL)
		scope = rec->org;
	r = registry_vec_reserve(&plan, 1);
	if (r < 0)
		goto out;
	rec->mark = 1;
	plan.items[plan.count++] = rec;
	/* Revocation reaches the dependents even when the token itself was
	 * revoked before: a child registered since must not outlive it. */
	if (status == REGISTRY_REVOKED || status == REGISTRY_DELETED) {
		r = registry_cascade(&reg->index, &plan, 0, scope);
		if (r < 0)
			goto out;
	}
	statuses = malloc(plan.count);
	if (statuses == NULL) {
		r = -ENOMEM;
		goto out;
	}
	statuses[0] = (uint8_t)status;
	memset(statuses + 1, REGISTRY_REVOKED, plan.count - 1);
	/* The token itself is in plan only if it changes. */
	if (rec->status == status) {
		memmove(plan.items, plan.items + 1, (plan.count - 1) * sizeof(*plan.items));
		memmove(statuses, statuses + 1, plan.count - 1);
		plan.count--;
		rec->mark = 0;
	}
	r = registry_commit(reg, &plan, REGISTRY_REVOKED, statuses, now, reason, done, arg);
	if (r == 0 && ret_changed)
		*ret_changed = plan.count;
out:
	registry_unmark(&plan);
	registry_write_end(reg);
	free(plan.items);
	free(statuses);
	return r;
}

int registry_revoke_unregistered(struct registry *reg, const char *jti, const char *org, int64_t exp, int64_t now,
				 const char *reason, registry_done_fn done, void *arg)
{
	struct registry_entry e;
	struct registry_rec *rec;
	uint8_t token[REGISTRY_TOKEN_FRAME_MAX], status[REGISTRY_STATUS_FRAME_MAX];
	size_t token_len, status_len = 0;
	int r;

	if (reason == NULL)
		reason = "";
	if (org == NULL)
		org = "";
	if (reg == NULL || !registry_string_ok(jti, REGISTRY_JTI_MAX, 1) ||
	    !registry_string_ok(org, REGISTRY_ORG_MAX, 0) || !registry_string_ok(reason, REGISTRY_REASON_MAX, 0))
		return -EINVAL;
	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	if (registry_index_get(&reg->index, jti) != NULL) {
		r = -EEXIST;
		goto out;
	}
	if (reg->index.all.count >= REGISTRY_MAX_RECORDS) {
		log_error("\"registry full\" records=%u", (unsigned)reg->index.all.count);
		r = -ENOSPC;
		goto out;
	}
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_TOKEN;
	e.seq = reg->next_seq;
	snprintf(e.jti, sizeof(e.jti), "%s", jti);
	e.status = REGISTRY_REVOKED;
	e.at = now;
	e.type = REGISTRY_TYPE_UNREGISTERED;
	snprintf(e.org, sizeof(e.org), "%s", org);
	e.exp = exp;
	e.status_idx = REGISTRY_NO_INDEX;
	r = registry_encode(&e, token, sizeof(token), &token_len);
	if (r == 0 && reason[0] != '\0') {
		/* The TOKEN frame has no room for the reason. */
		struct registry_entry s;

		memset(&s, 0, sizeof(s));
		s.kind = REGISTRY_KIND_STATUS;
		s.seq = e.seq + 1;
		snprintf(s.jti, sizeof(s.jti), "%s", jti);
		s.status = REGISTRY_REVOKED;
		s.at = now;
		snprintf(s.reason, sizeof(s.reason), "%s", reason);
		r = registry_encode(&s, status, sizeof(status), &status_len);
	}
	if (r < 0) {
		r = -EINVAL;
		goto out;
	}
	pthread_mutex_lock(&reg->qmutex);
	r = registry_queue_reserve(&reg->queue, token_len + status_len);
	if (r == 0)
		r = registry_rec_new(&reg->index, &e, e.seq, registry_hash(&reg->index.key, e.jti, strlen(e.jti)),
				     &rec);
	if (r == 0 && status_len > 0 &&
	    (r = registry_intern_add(&reg->index.strings, &reg->index.key, reason, &rec->reason)) < 0)
		registry_arena_release(rec);
	if (r == 0 && (r = registry_index_link(&reg->index, rec)) < 0)
		registry_arena_release(rec);
	if (r == 0) {
		memcpy(reg->queue.buf + reg->queue.len, token, token_len);
		memcpy(reg->queue.buf + reg->queue.len + token_len, status, status_len);
		reg->queue.len += token_len + status_len;
		reg->queue.frames += status_len > 0 ? 2 : 1;
		reg->next_seq += status_len > 0 ? 2 : 1;
		registry_queue_waiter(&reg->queue, done, arg);
		pthread_cond_signal(&reg->qwork);
	}
	pthread_mutex_unlock(&reg->qmutex);
out:
	registry_write_end(reg);
	return r;
}

int registry_revoke_subject(struct registry *reg, const char *subject, const char *org_scope, int64_t now,
			    registry_done_fn done, void *arg, size_t *ret_count)
{
	struct registry_vec plan = { 0 };
	struct registry_group *group;
	uint32_t scope = UINT32_MAX;
	int r;

	if (reg == NULL || !registry_string_ok(subject, REGISTRY_SUBJECT_MAX, 1) ||
	    (org_scope != NULL && !registry_string_ok(org_scope, REGISTRY_ORG_MAX, 0)))
		return -EINVAL;
	r = registry_write_begin(reg);
	if (r < 0)
		return r;
	if (org_scope != NULL && registry_intern_find(&reg->index.strings, &reg->index.key, org_scope, &scope) < 0)
		goto commit;   /* an org without records: nothing to revoke */
	group = registry_map_find(&reg->index.subjects, &reg->index.key, subject);
	for (uint32_t i = 0; group && i < group->vec.count; i++) {
		struct registry_rec *rec = group->vec.items[i];

		if ((rec->status != REGISTRY_ACTIVE && rec->status != REGISTRY_SUSPENDED) ||
		    (scope != UINT32_MAX && rec->org != scope) || registry_expired_for_good(reg, rec->exp, now))
			continue;
		r = registry_vec_reserve(&plan, 1);
		if (r < 0)
			goto out;
		rec->mark = 1;
		plan.items[plan.count++] = rec;
	}
	r = registry_cascade(&reg->index, &plan, 0, scope);
	if (r < 0)
		goto out;
commit:
	r = registry_commit(reg, &plan, REGISTRY_REVOKED, NULL, now, "", done, arg);
	if (r == 0 && ret_count)
		*ret_count = plan.count;
out:
	registry_unmark(&plan);
	registry_write_end(reg);
	free(plan.items);
	return r;
}

/* ---- reads ---------------------------------------------------------------- */

/* The strings of a record, copied out where a registry_record (a read) or a
 * registry_entry (a compaction) wants them: both declare them with the
 * codec's sizes, and [static N] has the compiler hold each caller to them. */
static void registry_rec_strings(const struct registry_index *ix, const struct registry_rec *rec,
				 char jti[static REGISTRY_JTI_MAX + 1], char org[static REGISTRY_ORG_MAX + 1],
				 char subject[static REGISTRY_SUBJECT_MAX + 1], char name[static REGISTRY_NAME_MAX + 1],
				 char description[static REGISTRY_DESCRIPTION_MAX + 1],
				 char client_id[static REGISTRY_CLIENT_ID_MAX + 1], char kid[static REGISTRY_KID_MAX + 1],
				 char parent[static REGISTRY_JTI_MAX + 1], char family[static REGISTRY_JTI_MAX + 1])
{
	snprintf(jti, REGISTRY_JTI_MAX + 1, "%s", registry_rec_jti(rec));
	snprintf(org, REGISTRY_ORG_MAX + 1, "%s", registry_ix_string(ix, rec->org));
	snprintf(subject, REGISTRY_SUBJECT_MAX + 1, "%s", registry_rec_subject(rec));
	snprintf(name, REGISTRY_NAME_MAX + 1, "%s", registry_rec_name(rec));
	snprintf(description, REGISTRY_DESCRIPTION_MAX + 1, "%s", registry_rec_description(rec));
	snprintf(client_id, REGISTRY_CLIENT_ID_MAX + 1, "%s", registry_ix_string(ix, rec->client_id));
	snprintf(kid, REGISTRY_KID_MAX + 1, "%s", registry_ix_string(ix, rec->kid));
	snprintf(parent, REGISTRY_JTI_MAX + 1, "%s", registry_rec_parent(rec));
	snprintf(family, REGISTRY_JTI_MAX + 1, "%s", registry_rec_family(rec));
}

static void registry_copy_out(const struct registry_index *ix, const struct registry_rec *rec,
			      struct registry_record *out)
{
	memset(out, 0, sizeof(*out));
	out->seq = rec->seq;
	out->type = (enum registry_type)rec->type;
	out->status = (enum registry_status)rec->status;
	registry_rec_strings(ix, rec, out->jti, out->org, out->subject, out->name, out->description,
			     out->client_id, out->kid, out->parent, out->family);
	out->iat = rec->iat;
	out->exp = rec->exp;
	out->status_at = rec->status_at;
	snprintf(out->reason, sizeof(out->reason), "%s", registry_ix_string(ix, rec->reason));
	out->status_idx = rec->status_idx;
}

int registry_get(struct registry *reg, const char *jti, const char *org_scope, struct registry_record *ret_record)
{
	const struct registry_rec *rec;
	int r = -ENOENT;

	if (reg == NULL || jti == NULL || ret_record == NULL)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	rec = registry_index_get(&reg->index, jti);
	if (rec != NULL && registry_in_scope(&reg->index, rec, org_scope)) {
		registry_copy_out(&reg->index, rec, ret_record);
		r = 0;
	}
	pthread_rwlock_unlock(&reg->lock);
	return r;
}

int registry_check(struct registry *reg, const char *jti, const char *token_org, int *ret_found,
		   enum registry_status *ret_status)
{
	const struct registry_rec *rec;
	int found = 0;
	enum registry_status status = REGISTRY_ACTIVE;

	if (reg == NULL || jti == NULL || ret_found == NULL || ret_status == NULL)
		return -EINVAL;
	if (token_org == NULL)
		token_org = "";
	pthread_rwlock_rdlock(&reg->lock);
	rec = registry_index_get(&reg->index, jti);
	if (rec != NULL) {
		const char *org = registry_ix_string(&reg->index, rec->org);

		/* A confined caller's offline revocation binds only tokens of
		 * its own org. */
		if (rec->type != REGISTRY_TYPE_UNREGISTERED || org[0] == '\0' || strcmp(org, token_org) == 0) {
			found = 1;
			status = (enum registry_status)rec->status;
		}
	}
	pthread_rwlock_unlock(&reg->lock);
	*ret_found = found;
	if (found)
		*ret_status = status;
	return 0;
}

static int registry_list_match(const struct registry *reg, const struct registry_query *query, uint32_t org,
			       const struct registry_rec *rec)
{
	enum registry_status s = (enum registry_status)rec->status;

	if (query->org_scope != NULL && rec->org != org)
		return 0;
	if (query->type >= 0 && rec->type != (unsigned)query->type)
		return 0;
	if (query->subject != NULL && strcmp(registry_rec_subject(rec), query->subject) != 0)
		return 0;
	/* A revocation matters as long as a verifier with leeway could still
	 * accept the token. */
	if (query->revocations &&
	    (s == REGISTRY_ACTIVE || registry_expired_for_good(reg, rec->exp, query->now)))
		return 0;
	switch (query->status) {
	case -1:
		return query->revocations || s != REGISTRY_DELETED;
	case REGISTRY_EXPIRED_FILTER:
		return (s == REGISTRY_ACTIVE || s == REGISTRY_SUSPENDED) && rec->exp <= query->now;
	case REGISTRY_ACTIVE:
	case REGISTRY_SUSPENDED:
		return (int)s == query->status && rec->exp > query->now;
	default:
		return (int)s == query->status;
	}
}

int registry_list(struct registry *reg, const struct registry_query *query, struct registry_record **ret_records,
		  size_t *ret_count, uint64_t *ret_next_cursor)
{
	const struct registry_vec *src, *candidate;
	const struct registry_rec *last = NULL;
	struct registry_record *records = NULL;
	const struct registry_group *group;
	size_t count = 0, cap = 0, scanned = 0;
	uint64_t next = 0;
	uint32_t org = 0, i;
	int r = 0, nonactive = 0;

	if (reg == NULL || query == NULL || ret_records == NULL || ret_count == NULL || ret_next_cursor == NULL ||
	    query->limit == 0 || query->limit > REGISTRY_LIST_MAX ||
	    (query->status != -1 && query->status != REGISTRY_EXPIRED_FILTER &&
	     (query->status < 0 || query->status > REGISTRY_DELETED)) ||
	    query->type < -1 || query->type > REGISTRY_TYPE_UNREGISTERED)
		return -EINVAL;
	pthread_rwlock_rdlock(&reg->lock);
	/* Every record that can match is in each of these; walk the smallest. */
	src = &reg->index.all;
	if (query->org_scope != NULL) {
		if (registry_intern_find(&reg->index.strings, &reg->index.key, query->org_scope, &org) < 0 ||
		    org >= reg->index.by_org_len)
			goto done;
		candidate = &reg->index.by_org[org];
		if (candidate->count < src->count)
			src = candidate;
	}
	if (query->subject != NULL) {
		group = registry_map_find(&reg->index.subjects, &reg->index.key, query->subject);
		if (group == NULL)
			goto done;
		if (group->vec.count < src->count)
			src = &group->vec;
	}
	/* or all's non-active records, through their bits */
	if ((query->revocations || query->status == REGISTRY_SUSPENDED || query->status == REGISTRY_REVOKED ||
	     query->status == REGISTRY_DELETED) &&
	    reg->index.nonactive_count < src->count) {
		src = &reg->index.all;
		nonactive = 1;
	}
	i = registry_vec_after(src, query->cursor);
	for (;; i++) {
		const struct registry_rec *rec;

		if (nonactive)
			i = registry_nonactive_next(&reg->index, i);
		if (i >= src->count)
			break;
		rec = src->items[i];
		if (scanned == REGISTRY_LIST_SCAN_MAX) {
			next = last->seq;
			break;
		}
		scanned++;
		last = rec;
		if (!registry_list_match(reg, query, org, rec))
			continue;
		if (count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct registry_record *grown;

			if (ncap > query->limit)
				ncap = query->limit;
			grown = realloc(records, ncap * sizeof(*grown));
			if (grown == NULL) {
				r = -ENOMEM;
				goto done;
			}
			records = grown;
			cap = ncap;
		}
		registry_copy_out(&reg->index, rec, &records[count++]);
		if (count == query->limit) {
			if ((nonactive ? registry_nonactive_next(&reg->index, i + 1) : i + 1) < src->count)
				next = rec->seq;
			break;
		}
	}
done:
	pthread_rwlock_unlock(&reg->lock);
	if (r < 0) {
		free(records);
		return r;
	}
	if (records == NULL && (records = malloc(sizeof(*records))) == NULL)
		return -ENOMEM;
	*ret_records = records;
	*ret_count = count;
	*ret_next_cursor = next;
	return 0;
}

int registry_statuslist(struct registry *reg, uint32_t list, uint8_t *ret_bits, uint64_t *ret_generation)
{
	if (reg == NULL || ret_bits == NULL || ret_generation == NULL)
		return -EINVAL;
	if ((uint64_t)list * REGISTRY_STATUSLIST_SIZE >= atomic_load(&reg->next_status_idx))
		return -ENOENT;
	pthread_rwlock_rdlock(&reg->lock);
	if (list < reg->nlists && reg->lists[list] != NULL)
		memcpy(ret_bits, reg->lists[list], REGISTRY_LIST_BYTES);
	else
		memset(ret_bits, 0, REGISTRY_LIST_BYTES);
	*ret_generation = list < reg->nlists ? reg->generations[list] : 0;
	pthread_rwlock_unlock(&reg->lock);
	return 0;
}

void registry_get_stats(struct registry *reg, struct registry_stats *ret_stats)
{
	if (ret_stats == NULL)
		return;
	memset(ret_stats, 0, sizeof(*ret_stats));
	if (reg == NULL)
		return;
	pthread_rwlock_rdlock(&reg->lock);
	ret_stats->records = reg->index.all.count;
	pthread_rwlock_unlock(&reg->lock);
	ret_stats->frames = atomic_load(&reg->frames);
	ret_stats->file_bytes = atomic_load(&reg->file_bytes);
	ret_stats->next_status_idx = (uint32_t)atomic_load(&reg->next_status_idx);
	ret_stats->failed = atomic_load(&reg->failed);
}

/* ---- compaction --------------------------------------------------------- */

/* Whether a compacted file needs a STATUS frame after rec's TOKEN frame to
 * keep its status_at and reason. */
static int registry_needs_status_frame(const struct registry_rec *rec)
{
	return rec->status != REGISTRY_ACTIVE || rec->status_at != rec->iat || rec->reason != 0;
}

struct registry_writer {
	int fd;
	uint8_t *buf;
	size_t len;
	uint64_t frames, bytes;
};

static int registry_writer_put(struct registry_writer *w, const struct registry_entry *e)
{
	size_t n;
	int r;

	if (REGISTRY_COMPACT_BUFFER - w->len < REGISTRY_TOKEN_FRAME_MAX) {
		r = registry_write_all(w->fd, w->buf, w->len);
		if (r < 0)
			return r;
		w->len = 0;
	}
	r = registry_encode(e, w->buf + w->len, REGISTRY_COMPACT_BUFFER - w->len, &n);
	if (r < 0)
		return r;
	w->len += n;
	w->bytes += n;
	w->frames++;
	return 0;
}

static void registry_rec_entry(const struct registry_index *ix, const struct registry_rec *rec,
			       struct registry_entry *e)
{
	e->kind = REGISTRY_KIND_TOKEN;
	e->seq = rec->seq;
	e->status = (enum registry_status)rec->status;
	e->at = rec->iat;
	e->type = (enum registry_type)rec->type;
	registry_rec_strings(ix, rec, e->jti, e->org, e->subject, e->name, e->description, e->client_id,
			     e->kid, e->parent, e->family);
	e->exp = rec->exp;
	e->status_idx = rec->status_idx;
}

/* Under the read lock: writes the kept records to new_path, the TOKEN
 * frames with their seqs (the list cursor), then the STATUS frames that
 * carry status_at and reason and a META frame, with fresh seqs.  *ret_seq:
 * the next seq after them. */
static int registry_write_compacted(struct registry *reg, int64_t now, int fd, uint64_t *ret_seq,
				    struct registry_writer *w, uint64_t *ret_dropped)
{
	const struct registry_index *ix = &reg->index;
	struct registry_entry e;
	uint64_t seq = reg->next_seq, dropped = 0;
	int r;

	memset(&e, 0, sizeof(e));
	memcpy(w->buf, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	w->len = w->bytes = REGISTRY_MAGIC_LEN;
	w->fd = fd;
	for (uint32_t i = 0; i < ix->all.count; i++) {
		const struct registry_rec *rec = ix->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now)) {
			dropped++;
			continue;
		}
		registry_rec_entry(ix, rec, &e);
		if ((r = registry_writer_put(w, &e)) < 0)
			return r;
	}
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_STATUS;
	for (uint32_t i = 0; i < ix->all.count; i++) {
		const struct registry_rec *rec = ix->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now) || !registry_needs_status_frame(rec))
			continue;
		e.seq = seq++;
		snprintf(e.jti, sizeof(e.jti), "%s", registry_rec_jti(rec));
		e.status = (enum registry_status)rec->status;
		e.at = rec->status_at;
		snprintf(e.reason, sizeof(e.reason), "%s", registry_ix_string(ix, rec->reason));
		if ((r = registry_writer_put(w, &e)) < 0)
			return r;
	}
	/* Last, not first: a kept record may hold seq 1, and seqs only grow. */
	memset(&e, 0, sizeof(e));
	e.kind = REGISTRY_KIND_META;
	e.seq = seq++;
	e.next_status_idx = (uint32_t)atomic_load(&reg->next_status_idx);
	if ((r = registry_writer_put(w, &e)) < 0)
		return r;
	r = registry_write_all(fd, w->buf, w->len);
	if (r < 0)
		return r;
	w->len = 0;
	*ret_seq = seq;
	*ret_dropped = dropped;
	return 0;
}

/* Dropping expired records from the index after a compaction, in three
 * steps so that readers wait only for pointer swaps: prepare (under the read
 * lock, writers held at the gate) builds the index of the records kept,
 * which stay where they are, and new slots for the strings still used;
 * commit (under the write lock) swaps them in and gives back the strings
 * and the status-list blocks nothing kept uses (those entries read as 0
 * from now on: a new generation); finish (no lock) frees the old index and
 * the slabs the dropped records emptied.  Interned ids do not move, so no
 * record is rewritten. */
struct registry_prune {
	struct registry_index nx;
	struct registry_slot *slots;
	uint8_t *id_used;
	uint8_t *list_used;
};

static void registry_prune_free(struct registry_prune *p)
{
	registry_index_free(&p->nx);
	free(p->slots);
	free(p->id_used);
	free(p->list_used);
	memset(p, 0, sizeof(*p));
}

static int registry_prune_prepare(struct registry *reg, int64_t now, struct registry_prune *p)
{
	struct registry_index *old = &reg->index;
	struct registry_intern *t = &old->strings;
	uint32_t unused = 0;

	memset(p, 0, sizeof(*p));
	if (registry_index_init(&p->nx, &old->key) < 0 || registry_table_reserve(&p->nx, old->all.count) < 0 ||
	    registry_vec_reserve(&p->nx.all, old->all.count) < 0 ||
	    (p->id_used = calloc(t->count, 1)) == NULL ||
	    (reg->nlists > 0 && (p->list_used = calloc(reg->nlists, 1)) == NULL) ||
	    (p->slots = calloc((size_t)t->mask + 1, sizeof(*p->slots))) == NULL)
		goto fail;
	p->id_used[0] = 1;
	for (uint32_t i = 0; i < old->all.count; i++) {
		struct registry_rec *rec = old->all.items[i];

		if (registry_expired_for_good(reg, rec->exp, now))
			continue;
		p->id_used[rec->org] = p->id_used[rec->client_id] = p->id_used[rec->kid] = p->id_used[rec->reason] = 1;
		if (registry_index_link(&p->nx, rec) < 0)
			goto fail;
		if (rec->status_idx != REGISTRY_NO_INDEX && rec->status_idx / REGISTRY_STATUSLIST_SIZE < reg->nlists)
			p->list_used[rec->status_idx / REGISTRY_STATUSLIST_SIZE] = 1;
	}
	for (uint32_t id = 1; id < t->count; id++)
		unused += !p->id_used[id] && t->strings[id] != NULL;
	if (t->nfree + unused > t->free_alloc) {
		uint32_t *ids = realloc(t->free_ids, (size_t)(t->nfree + unused) * sizeof(*ids));

		if (ids == NULL)
			goto fail;
		t->free_ids = ids;
		t->free_alloc = t->nfree + unused;
	}
	for (uint32_t k = 0; k <= t->mask; k++)
		if (t->slots[k].id != 0 && p->id_used[t->slots[k].id - 1])
			registry_slots_put(p->slots, t->mask, t->slots[k].id - 1, t->slots[k].hash);
	/* Nothing fails from here on: the dropped records leave their slabs. */
	for (uint32_t i = 0; i < old->all.count; i++)
		if (registry_expired_for_good(reg, old->all.items[i]->exp, now))
			registry_arena_release(old->all.items[i]);
	return 0;
fail:
	registry_prune_free(p);
	return -ENOMEM;
}

static void registry_prune_commit(struct registry *reg, struct registry_prune *p)
{
	struct registry_index *ix = &reg->index, old = *ix;
	struct registry_intern *t = &old.strings, fresh = p->nx.strings;

	free(t->slots);
	t->slots = p->slots;
	p->slots = NULL;
	for (uint32_t id = 1; id < t->count; id++)
		if (!p->id_used[id] && t->strings[id] != NULL) {
			free(t->strings[id]);
			t->strings[id] = NULL;
			t->free_ids[t->nfree++] = id;
		}
	*ix = p->nx;
	ix->strings = *t;
	ix->arena = old.arena;
	/* The old structures, to be freed by registry_prune_finish. */
	p->nx = old;
	p->nx.strings = fresh;
	p->nx.arena.head = NULL;
	for (uint32_t l = 0; l < reg->nlists; l++) {
		if (p->list_used[l] || reg->lists[l] == NULL)
			continue;
		for (size_t b = 0; b < REGISTRY_LIST_BYTES; b++)
			if (reg->lists[l][b] != 0) {
				reg->generations[l]++;
				break;
			}
		free(reg->lists[l]);
		reg->lists[l] = NULL;
	}
}

/* No lock: readers cannot reach what the commit unlinked, and writers are
 * held at the gate. */
static void registry_prune_finish(struct registry *reg, struct registry_prune *p)
{
	registry_prune_free(p);
	registry_arena_sweep(&reg->index.arena);
}

/* Under io. */
static int registry_compact_io(struct registry *reg, int64_t now, struct registry_queue *taken, int *ret_result)
{
	struct registry_writer w = { .fd = -1 };
	char q[PATH_MAX + 8];
	int64_t start = registry_mono_ns();
	uint64_t seq = 0, dropped = 0;
	struct registry_prune prune;
	int fd = -1, r, renamed = 0, pruned = -1;

	*ret_result = 0;
	pthread_mutex_lock(&reg->gate);
	if (atomic_load(&reg->failed)) {
		pthread_mutex_unlock(&reg->gate);
		return -EIO;
	}
	w.buf = malloc(REGISTRY_COMPACT_BUFFER);
	if (w.buf == NULL) {
		pthread_mutex_unlock(&reg->gate);
		return -ENOMEM;
	}
	pthread_rwlock_rdlock(&reg->lock);
	/* What is queued is in the index, so in the new file: its waiters are
	 * answered once that file is durable. */
	registry_queue_take(reg, taken);
	fd = open(reg->new_path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
		goto unlock;
	}
	r = registry_write_compacted(reg, now, fd, &seq, &w, &dropped);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(reg->new_path, reg->path) < 0)
		r = -errno;
	if (r == 0) {
		renamed = 1;
		close(reg->fd);
		reg->fd = fd;
		fd = -1;
		reg->next_seq = seq;
		atomic_store(&reg->frames, w.frames);
		atomic_store(&reg->file_bytes, w.bytes);
		reg->dirty = 0;
		reg->last_sync_ns = registry_mono_ns();
		r = registry_fsync_dir(reg->dir);
		if (r < 0)
			registry_fail(reg, "fsync of the state_dir", -r);
		else if (dropped > 0)
			pruned = registry_prune_prepare(reg, now, &prune);
	}
unlock:
	pthread_rwlock_unlock(&reg->lock);
	if (fd >= 0) {
		close(fd);
		unlink(reg->new_path);
	}
	if (r < 0 && !renamed) {
		log_error("\"registry compaction failed: the file is kept as it was\" path=%s error=\"%s\"",
			  log_quote(q, sizeof(q), reg->new_path), strerror(-r));
		/* The taken frames still belong at the end of the old file. */
		*ret_result = registry_write_batch(reg, taken);
	} else if (r < 0) {
		*ret_result = -EIO;
	} else if (pruned == 0) {
		pthread_rwlock_wrlock(&reg->lock);
		registry_prune_commit(reg, &prune);
		pthread_rwlock_unlock(&reg->lock);
		registry_prune_finish(reg, &prune);
	} else if (dropped > 0) {
		/* The file has them no more; memory keeps them until the next
		 * compaction. */
		log_warn("\"registry compaction could not free the dropped records\" path=%s",
			 log_quote(q, sizeof(q), reg->path));
	}
	pthread_mutex_unlock(&reg->gate);
	free(w.buf);
	if (r == 0)
		log_info("\"registry compacted\" path=%s dropped=%llu frames=%llu bytes=%llu ms=%lld",
			 log_quote(q, sizeof(q), reg->path), (unsigned long long)dropped,
			 (unsigned long long)w.frames, (unsigned long long)w.bytes,
			 (long long)((registry_mono_ns() - start) / 1000000));
	return r;
}

int registry_compact(struct registry *reg, int64_t now, struct registry_stats *ret_stats)
{
	struct registry_queue taken = { 0 };
	int r, result;

	if (reg == NULL)
		return -EINVAL;
	pthread_mutex_lock(&reg->io);
	r = registry_compact_io(reg, now, &taken, &result);
	pthread_mutex_unlock(&reg->io);
	registry_queue_answer(&taken, result);
	registry_queue_release(&taken);
	if (r == 0 && ret_stats)
		registry_get_stats(reg, ret_stats);
	return r;
}

/* Compacts when the file is over compact_min frames and more than half of
 * them are superseded or expired.  Counting the expired records walks the
 * index, so the flusher does it at most every REGISTRY_COMPACT_CHECK_NS. */
static int registry_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int force_check,
				  int *ret_compacted)
{
	uint64_t frames = atomic_load(&reg->frames), live, expired = 0;
	int64_t mono = registry_mono_ns();
	int r;

	if (ret_compacted)
		*ret_compacted = 0;
	if (atomic_load(&reg->failed) || frames <= min_frames)
		return 0;
	pthread_rwlock_rdlock(&reg->lock);
	live = (uint64_t)reg->index.all.count + reg->index.nonactive_count + 1;
	if (live * 2 >= frames && (force_check || mono - reg->last_compact_check_ns >= REGISTRY_COMPACT_CHECK_NS)) {
		reg->last_compact_check_ns = mono;
		for (uint32_t i = 0; i < reg->index.all.count; i++)
			expired += registry_expired_for_good(reg, reg->index.all.items[i]->exp, now);
		live -= expired < live ? expired : live;
	}
	pthread_rwlock_unlock(&reg->lock);
	if (live * 2 >= frames)
		return 0;
	r = registry_compact(reg, now, NULL);
	if (r == 0 && ret_compacted)
		*ret_compacted = 1;
	return r;
}

/* ---- waiting ------------------------------------------------------------ */

void registry_wait_init(struct registry_wait *w)
{
	pthread_mutex_init(&w->mutex, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->finished = 0;
	w->result = 0;
}

void registry_wait_done(void *arg, int result)
{
	struct registry_wait *w = arg;

	pthread_mutex_lock(&w->mutex);
	w->result = result;
	w->finished = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mutex);
}

int registry_wait(struct registry_wait *w)
{
	int r;

	pthread_mutex_lock(&w->mutex);
	while (!w->finished)
		pthread_cond_wait(&w->cond, &w->mutex);
	r = w->result;
	pthread_mutex_unlock(&w->mutex);
	pthread_mutex_destroy(&w->mutex);
	pthread_cond_destroy(&w->cond);
	return r;
}

/* ---- test hooks ----------------------------------------------------------- */

int registry_internal_fd(struct registry *reg)
{
	return reg->fd;
}

void registry_internal_set_compact_min(struct registry *reg, uint64_t frames)
{
	reg->compact_min = frames;
}

int registry_internal_maybe_compact(struct registry *reg, int64_t now, uint64_t min_frames, int *ret_compacted)
{
	return registry_maybe_compact(reg, now, min_frames, 1, ret_compacted);
}
