/* The registry's in-memory index: records carved from slabs, interned
 * strings, the jti table, the maps by org, subject, parent and family, the
 * bitset of non-active records, the status-list bits and their generations,
 * and the copy of a record out to a caller.  Pure data structures: no file
 * I/O, no locks, no threads; the callers in registry.c, registry_load.c and
 * registry_compact.c hold the locks these need. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry_internal.h"

#define REGISTRY_SLAB_SIZE ((size_t)1 << 20)
#define REGISTRY_LISTS ((uint32_t)(((uint64_t)UINT32_MAX + 1) / REGISTRY_STATUSLIST_SIZE))

/* ---- hashing -------------------------------------------------------------- */

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

uint64_t registry_hash(const struct registry_hashkey *key, const char *s, size_t len)
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

/* ---- slabs -------------------------------------------------------------- */

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

void registry_arena_release(const void *p)
{
	registry_slab_of(p)->live--;
}

/* Frees every slab but the one being carved that holds no record. */
void registry_arena_sweep(struct registry_arena *a)
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

int registry_vec_reserve(struct registry_vec *v, size_t extra)
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
uint32_t registry_vec_after(const struct registry_vec *v, uint64_t seq)
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

/* ---- interned strings ---------------------------------------------------- */

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

int registry_intern_find(const struct registry_intern *t, const struct registry_hashkey *key, const char *s,
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

void registry_slots_put(struct registry_slot *slots, uint32_t mask, uint32_t id, uint32_t h)
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

int registry_intern_add(struct registry_intern *t, const struct registry_hashkey *key, const char *s,
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

static inline const char *registry_group_key(const struct registry_group *g)
{
	return g->key ? g->key : g->inline_key;
}

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

struct registry_group *registry_map_find(const struct registry_map *m, const struct registry_hashkey *key,
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

int registry_index_init(struct registry_index *ix, const struct registry_hashkey *key)
{
	memset(ix, 0, sizeof(*ix));
	ix->key = *key;
	return registry_intern_init(&ix->strings);
}

void registry_index_free(struct registry_index *ix)
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
	free(ix->parent_recs.items);
	memset(ix, 0, sizeof(*ix));
}

static inline uint16_t registry_tag(uint64_t h)
{
	return (uint16_t)((h >> 48) | 1);
}

/* A miss reads the small tag array only, never a record. */
struct registry_rec *registry_index_lookup(const struct registry_index *ix, const char *jti, uint64_t h)
{
	uint16_t tag = registry_tag(h);

	if (ix->table == NULL)
		return NULL;
	for (size_t i = (uint32_t)h & ix->table_mask; ix->tags[i] != 0; i = (i + 1) & ix->table_mask)
		if (ix->tags[i] == tag && ix->table[i]->hash == (uint32_t)h && strcmp(ix->table[i]->str, jti) == 0)
			return ix->table[i];
	return NULL;
}

struct registry_rec *registry_index_get(const struct registry_index *ix, const char *jti)
{
	return registry_index_lookup(ix, jti, registry_hash(&ix->key, jti, strlen(jti)));
}

int registry_table_reserve(struct registry_index *ix, size_t count)
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
uint32_t registry_nonactive_next(const struct registry_index *ix, uint32_t pos)
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
int registry_index_link(struct registry_index *ix, struct registry_rec *rec)
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
			   registry_vec_reserve(&ix->families.groups[gf].vec, 1) < 0)) ||
	    (rec->type == REGISTRY_TYPE_PARENT && registry_vec_reserve(&ix->parent_recs, 1) < 0))
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
	if (rec->type == REGISTRY_TYPE_PARENT)
		ix->parent_recs.items[ix->parent_recs.count++] = rec;
	return 0;
}

/* A record from a TOKEN entry (unlinked). */
int registry_rec_new(struct registry_index *ix, const struct registry_entry *e, uint64_t seq, uint64_t h,
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
int registry_bits_reserve(struct registry *reg, uint32_t idx, enum registry_status status)
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

void registry_bits_set(struct registry *reg, uint32_t idx, enum registry_status status)
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

/* rec is linked (its bit has room) and its status-list entry reserved. */
void registry_apply_status(struct registry *reg, struct registry_rec *rec, enum registry_status status,
			   int64_t at, uint32_t reason)
{
	rec->status = (uint8_t)status;
	rec->status_at = at;
	rec->reason = reason;
	registry_bits_set(reg, rec->status_idx, status);
	registry_nonactive_mark(&reg->index, registry_vec_after(&reg->index.all, rec->seq - 1),
				status != REGISTRY_ACTIVE);
}

/* ---- copy-out ------------------------------------------------------------- */

/* The strings of a record, copied out where a registry_record (a read) or a
 * registry_entry (a compaction) wants them: both declare them with the
 * codec's sizes, and [static N] has the compiler hold each caller to them. */
void registry_rec_strings(const struct registry_index *ix, const struct registry_rec *rec,
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

void registry_copy_out(const struct registry_index *ix, const struct registry_rec *rec,
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
