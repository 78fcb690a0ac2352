#include "hsmjwt/registry_codec.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

/* The smallest body: seq and kind. */
#define REGISTRY_MIN_BODY 9

/* ---- CRC32C ---------------------------------------------------------------
 * Slicing-by-8 over the reflected Castagnoli polynomial: eight table lookups
 * per 8 bytes instead of one per byte, about 1-2 GB/s, so that a start-up
 * scan of a large registry is bounded by the disk, not the checksum. */

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void registry_crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? c >> 1 ^ 0x82F63B78u : c >> 1;
		crc32c_table[0][i] = c;
	}
	for (int t = 1; t < 8; t++)
		for (int i = 0; i < 256; i++)
			crc32c_table[t][i] = crc32c_table[t - 1][i] >> 8 ^ crc32c_table[0][crc32c_table[t - 1][i] & 0xff];
}

static uint32_t registry_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t registry_le64(const uint8_t *p)
{
	return (uint64_t)registry_le32(p) | (uint64_t)registry_le32(p + 4) << 32;
}

uint32_t registry_crc32c(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;
	const uint32_t (*t)[256] = crc32c_table;

	pthread_once(&crc32c_once, registry_crc32c_init);
	/* crc is the CRC of what came before (0 for nothing), as LevelDB's
	 * Extend: the pre- and post-inversion happen here. */
	crc = ~crc;
	for (; len >= 8; p += 8, len -= 8) {
		uint32_t lo = crc ^ registry_le32(p), hi = registry_le32(p + 4);
		crc = t[7][lo & 0xff] ^ t[6][lo >> 8 & 0xff] ^ t[5][lo >> 16 & 0xff] ^ t[4][lo >> 24] ^
		      t[3][hi & 0xff] ^ t[2][hi >> 8 & 0xff] ^ t[1][hi >> 16 & 0xff] ^ t[0][hi >> 24];
	}
	for (; len > 0; p++, len--)
		crc = crc >> 8 ^ t[0][(crc ^ *p) & 0xff];
	return ~crc;
}

uint32_t registry_crc_mask(uint32_t crc)
{
	return (crc >> 15 | crc << 17) + 0xa282ead8u;
}

/* ---- Body layout ----------------------------------------------------------
 * One table per kind drives the encoder, the validator and the decoder, so
 * that the three cannot disagree on the order or the limits of a field. */

enum registry_field_type { FIELD_STR, FIELD_STATUS, FIELD_TYPE, FIELD_I64, FIELD_U32 };

struct registry_field {
	enum registry_field_type type;
	size_t offset;                  /* in struct registry_entry */
	uint16_t max;                   /* FIELD_STR: longest value */
	bool required;                  /* FIELD_STR: "" is refused */
};

#define FIELD(t, member, m, req) { t, offsetof(struct registry_entry, member), m, req }

static const struct registry_field registry_token_fields[] = {
	FIELD(FIELD_STR, jti, REGISTRY_JTI_MAX, true),
	FIELD(FIELD_STATUS, status, 0, false),
	FIELD(FIELD_I64, at, 0, false),
	FIELD(FIELD_TYPE, type, 0, false),
	FIELD(FIELD_STR, org, REGISTRY_ORG_MAX, false),
	FIELD(FIELD_STR, subject, REGISTRY_SUBJECT_MAX, false),
	FIELD(FIELD_STR, name, REGISTRY_NAME_MAX, false),
	FIELD(FIELD_STR, description, REGISTRY_DESCRIPTION_MAX, false),
	FIELD(FIELD_STR, client_id, REGISTRY_CLIENT_ID_MAX, false),
	FIELD(FIELD_STR, kid, REGISTRY_KID_MAX, false),
	FIELD(FIELD_STR, parent, REGISTRY_JTI_MAX, false),
	FIELD(FIELD_STR, family, REGISTRY_JTI_MAX, false),
	FIELD(FIELD_I64, exp, 0, false),
	FIELD(FIELD_U32, status_idx, 0, false),
};

static const struct registry_field registry_status_fields[] = {
	FIELD(FIELD_STR, jti, REGISTRY_JTI_MAX, true),
	FIELD(FIELD_STATUS, status, 0, false),
	FIELD(FIELD_I64, at, 0, false),
	FIELD(FIELD_STR, reason, REGISTRY_REASON_MAX, false),
};

static const struct registry_field registry_meta_fields[] = {
	FIELD(FIELD_U32, next_status_idx, 0, false),
};

#undef FIELD

static int registry_fields(unsigned kind, const struct registry_field **ret_fields, size_t *ret_count)
{
	switch (kind) {
	case REGISTRY_KIND_TOKEN:
		*ret_fields = registry_token_fields;
		*ret_count = sizeof(registry_token_fields) / sizeof(registry_token_fields[0]);
		return 0;
	case REGISTRY_KIND_STATUS:
		*ret_fields = registry_status_fields;
		*ret_count = sizeof(registry_status_fields) / sizeof(registry_status_fields[0]);
		return 0;
	case REGISTRY_KIND_META:
		*ret_fields = registry_meta_fields;
		*ret_count = sizeof(registry_meta_fields) / sizeof(registry_meta_fields[0]);
		return 0;
	default:
		return -EINVAL;
	}
}

/* A bounded cursor over a body; ok turns false at the first read past its
 * end, and every later read is then a no-op. */
struct registry_reader {
	const uint8_t *p;
	size_t len, off;
	bool ok;
};

static const uint8_t *registry_read(struct registry_reader *r, size_t n)
{
	const uint8_t *at = r->p + r->off;

	if (!r->ok || r->len - r->off < n) {
		r->ok = false;
		return NULL;
	}
	r->off += n;
	return at;
}

/* Reads one field, checks it against f and, when e is not NULL, stores it:
 * a NULL e validates only, so that a refused body leaves the caller's entry
 * untouched without a copy of the whole entry per frame. */
static int registry_read_field(struct registry_reader *r, const struct registry_field *f, struct registry_entry *e)
{
	char *dst = e ? (char *)e + f->offset : NULL;
	const uint8_t *v;
	size_t n;

	switch (f->type) {
	case FIELD_STR:
		if ((v = registry_read(r, 2)) == NULL)
			return -EBADMSG;
		n = (size_t)v[0] | (size_t)v[1] << 8;
		if (n > f->max || (n == 0 && f->required) || (v = registry_read(r, n)) == NULL ||
		    memchr(v, '\0', n) != NULL)
			return -EBADMSG;
		if (dst) {
			memcpy(dst, v, n);
			dst[n] = '\0';
		}
		return 0;
	case FIELD_STATUS:
		if ((v = registry_read(r, 1)) == NULL || *v > REGISTRY_DELETED)
			return -EBADMSG;
		if (dst)
			*(enum registry_status *)(void *)dst = (enum registry_status)*v;
		return 0;
	case FIELD_TYPE:
		if ((v = registry_read(r, 1)) == NULL || *v > REGISTRY_TYPE_UNREGISTERED)
			return -EBADMSG;
		if (dst)
			*(enum registry_type *)(void *)dst = (enum registry_type)*v;
		return 0;
	case FIELD_I64:
		if ((v = registry_read(r, 8)) == NULL)
			return -EBADMSG;
		if (dst)
			*(int64_t *)(void *)dst = (int64_t)registry_le64(v);
		return 0;
	case FIELD_U32:
		if ((v = registry_read(r, 4)) == NULL)
			return -EBADMSG;
		if (dst)
			*(uint32_t *)(void *)dst = registry_le32(v);
		return 0;
	}
	return -EBADMSG;
}

/* Every field a kind does not carry reads as "" or 0. */
static void registry_entry_reset(struct registry_entry *e)
{
	e->jti[0] = e->org[0] = e->subject[0] = e->name[0] = e->description[0] = '\0';
	e->client_id[0] = e->kid[0] = e->parent[0] = e->family[0] = e->reason[0] = '\0';
	e->status = REGISTRY_ACTIVE;
	e->type = REGISTRY_TYPE_ACCESS;
	e->at = e->exp = 0;
	e->status_idx = REGISTRY_NO_INDEX;
	e->next_status_idx = 0;
}

/* Walks a whole body: -EBADMSG for a field out of range or a byte left over. */
static int registry_read_body(const uint8_t *body, size_t len, struct registry_entry *e)
{
	struct registry_reader r = { body, len, 0, true };
	const struct registry_field *fields;
	const uint8_t *head = registry_read(&r, REGISTRY_MIN_BODY);
	size_t count;
	uint64_t seq;

	/* seq 0 means "no frame" (struct registry_scan.last_seq). */
	if (head == NULL || (seq = registry_le64(head)) == 0 || registry_fields(head[8], &fields, &count) < 0)
		return -EBADMSG;
	if (e) {
		registry_entry_reset(e);
		e->seq = seq;
		e->kind = (enum registry_kind)head[8];
	}
	for (size_t i = 0; i < count; i++)
		if (registry_read_field(&r, &fields[i], e) < 0)
			return -EBADMSG;
	return r.off == len ? 0 : -EBADMSG;
}

/* The encoded size of f in e, or -EINVAL when e's value is out of range. */
static int registry_field_size(const struct registry_field *f, const struct registry_entry *e, size_t *ret_size)
{
	const char *src = (const char *)e + f->offset;
	size_t n;

	switch (f->type) {
	case FIELD_STR:
		n = strnlen(src, (size_t)f->max + 1);
		if (n > f->max || (n == 0 && f->required))
			return -EINVAL;
		*ret_size = 2 + n;
		return 0;
	case FIELD_STATUS:
		if ((unsigned)*(const enum registry_status *)(const void *)src > REGISTRY_DELETED)
			return -EINVAL;
		*ret_size = 1;
		return 0;
	case FIELD_TYPE:
		if ((unsigned)*(const enum registry_type *)(const void *)src > REGISTRY_TYPE_UNREGISTERED)
			return -EINVAL;
		*ret_size = 1;
		return 0;
	case FIELD_I64:
		*ret_size = 8;
		return 0;
	case FIELD_U32:
		*ret_size = 4;
		return 0;
	}
	return -EINVAL;
}

static uint8_t *registry_put_le(uint8_t *p, uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		*p++ = (uint8_t)(v >> 8 * i);
	return p;
}

/* Writes f (already checked by registry_field_size) at p; returns the end. */
static uint8_t *registry_write_field(uint8_t *p, const struct registry_field *f, const struct registry_entry *e)
{
	const char *src = (const char *)e + f->offset;
	size_t n;

	switch (f->type) {
	case FIELD_STR:
		n = strlen(src);
		p = registry_put_le(p, n, 2);
		memcpy(p, src, n);
		return p + n;
	case FIELD_STATUS:
		return registry_put_le(p, (uint64_t)*(const enum registry_status *)(const void *)src, 1);
	case FIELD_TYPE:
		return registry_put_le(p, (uint64_t)*(const enum registry_type *)(const void *)src, 1);
	case FIELD_I64:
		return registry_put_le(p, (uint64_t)*(const int64_t *)(const void *)src, 8);
	case FIELD_U32:
		return registry_put_le(p, *(const uint32_t *)(const void *)src, 4);
	}
	return p;
}

int registry_encode(const struct registry_entry *e, uint8_t *buf, size_t buflen, size_t *ret_len)
{
	const struct registry_field *fields;
	size_t count, body = REGISTRY_MIN_BODY, n;
	uint8_t *p;

	if (e->seq == 0 || registry_fields((unsigned)e->kind, &fields, &count) < 0)
		return -EINVAL;
	/* Every field is checked before the first byte is written: buf is
	 * untouched when e is refused. */
	for (size_t i = 0; i < count; i++) {
		if (registry_field_size(&fields[i], e, &n) < 0)
			return -EINVAL;
		body += n;
	}
	if (buflen < REGISTRY_FRAME_HEADER + body)
		return -ENOBUFS;
	p = buf + REGISTRY_FRAME_HEADER;
	p = registry_put_le(p, e->seq, 8);
	p = registry_put_le(p, (uint64_t)e->kind, 1);
	for (size_t i = 0; i < count; i++)
		p = registry_write_field(p, &fields[i], e);
	registry_put_le(buf, body, 4);
	registry_put_le(buf + 4, registry_crc_mask(registry_crc32c(0, buf + REGISTRY_FRAME_HEADER, body)), 4);
	*ret_len = REGISTRY_FRAME_HEADER + body;
	return 0;
}

int registry_decode(const uint8_t *buf, size_t len, struct registry_entry *ret_entry, size_t *ret_len)
{
	const uint8_t *body = buf + REGISTRY_FRAME_HEADER;
	size_t body_len;

	if (len < 4)
		return -EAGAIN;
	body_len = registry_le32(buf);
	if (body_len == 0 || body_len > REGISTRY_MAX_BODY)
		return -EBADMSG;
	if (len < REGISTRY_FRAME_HEADER + body_len)
		return -EAGAIN;
	if (registry_le32(buf + 4) != registry_crc_mask(registry_crc32c(0, body, body_len)) ||
	    registry_read_body(body, body_len, NULL) < 0)
		return -EBADMSG;
	registry_read_body(body, body_len, ret_entry);
	*ret_len = REGISTRY_FRAME_HEADER + body_len;
	return 0;
}

/* ---- Scanning a file ------------------------------------------------------ */

/* The frame at off into e, if it is good and its seq follows last_seq; e is
 * scratch, written even when the seq is refused. */
static int registry_frame_at(const uint8_t *buf, size_t len, size_t off, uint64_t last_seq,
			     struct registry_entry *e, size_t *ret_len)
{
	size_t n;
	int r;

	r = registry_decode(buf + off, len - off, e, &n);
	if (r < 0)
		return r;
	if (e->seq <= last_seq)
		return -EBADMSG;
	*ret_len = n;
	return 0;
}

/* Whether a good frame following last_seq could start at off: the length,
 * kind and seq are checked before the checksum so that the search past
 * damage hashes a body only where one is plausible. */
static bool registry_frame_plausible(const uint8_t *buf, size_t len, size_t off, uint64_t last_seq)
{
	const uint8_t *p = buf + off;
	size_t body_len;

	if (len - off < REGISTRY_FRAME_HEADER + REGISTRY_MIN_BODY)
		return false;
	body_len = registry_le32(p);
	if (body_len < REGISTRY_MIN_BODY || body_len > REGISTRY_MAX_BODY ||
	    len - off - REGISTRY_FRAME_HEADER < body_len)
		return false;
	p += REGISTRY_FRAME_HEADER;
	return registry_le64(p) > last_seq && p[8] >= REGISTRY_KIND_TOKEN && p[8] <= REGISTRY_KIND_META;
}

/* The offset of the first good frame at or after from whose seq follows
 * last_seq, or len when there is none.  At worst one pass over the rest of
 * the image, hashing only the plausible candidates.  The scan passes 0: any
 * frame that checks out, whatever its seq, shows that the damage before it
 * is not a torn write, and refusing to start is then safer than truncating
 * what may be acknowledged records. */
static size_t registry_find_next(const uint8_t *buf, size_t len, size_t from, uint64_t last_seq)
{
	struct registry_entry e;
	size_t n;

	for (size_t off = from; off < len; off++)
		if (registry_frame_plausible(buf, len, off, last_seq) &&
		    registry_frame_at(buf, len, off, last_seq, &e, &n) == 0)
			return off;
	return len;
}

/* 1 when frames may follow the magic, 0 when the magic alone decides the
 * verdict (filled in *s). */
static int registry_check_magic(const uint8_t *buf, size_t len, struct registry_scan *s)
{
	memset(s, 0, sizeof(*s));
	if (len >= REGISTRY_MAGIC_LEN && memcmp(buf, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN) == 0)
		return 1;
	if (len == 0)
		s->verdict = REGISTRY_CLEAN;
	else if (len < REGISTRY_MAGIC_LEN && memcmp(buf, REGISTRY_MAGIC, len) == 0)
		/* A crash while the file was being created. */
		s->verdict = REGISTRY_TORN_TAIL;
	else
		s->verdict = REGISTRY_CORRUPT;
	return 0;
}

int registry_scan(const uint8_t *buf, size_t len,
		  int (*each)(void *arg, const struct registry_entry *e, size_t offset), void *arg,
		  struct registry_scan *ret_scan)
{
	struct registry_scan s;
	struct registry_entry e;
	size_t off = REGISTRY_MAGIC_LEN, n;
	int r;

	if (registry_check_magic(buf, len, &s) == 0)
		goto done;
	while (off < len && registry_frame_at(buf, len, off, s.last_seq, &e, &n) == 0) {
		if (each && (r = each(arg, &e, off)) < 0)
			return r;
		s.frames++;
		s.last_seq = e.seq;
		off += n;
	}
	s.good_end = s.bad_offset = off;
	/* A crash tears only the end: damage with a good frame after it
	 * happened to data already written. */
	if (off == len)
		s.verdict = REGISTRY_CLEAN;
	else if (registry_find_next(buf, len, off + 1, 0) < len)
		s.verdict = REGISTRY_CORRUPT;
	else
		s.verdict = REGISTRY_TORN_TAIL;
done:
	*ret_scan = s;
	return 0;
}

int registry_salvage(const uint8_t *buf, size_t len,
		     int (*each)(void *arg, const struct registry_entry *e, size_t offset), void *arg,
		     size_t *ret_skipped_bytes)
{
	struct registry_scan magic;
	struct registry_entry e;
	size_t off = 0, kept = 0, n;
	uint64_t last_seq = 0;
	int r;

	if (registry_check_magic(buf, len, &magic) == 1)
		off = kept = REGISTRY_MAGIC_LEN;
	while (off < len) {
		if (registry_frame_at(buf, len, off, last_seq, &e, &n) < 0) {
			off = registry_find_next(buf, len, off + 1, last_seq);
			continue;
		}
		if (each && (r = each(arg, &e, off)) < 0)
			return r;
		kept += n;
		last_seq = e.seq;
		off += n;
	}
	*ret_skipped_bytes = len - kept;
	return 0;
}

/* ---- Names ---------------------------------------------------------------- */

static const char *const registry_status_names[] = { "active", "suspended", "revoked", "deleted" };
static const char *const registry_type_names[] = { "access", "refresh", "id", "parent", "child", "unregistered" };

#define REGISTRY_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int registry_name_index(const char *const *names, size_t count, const char *name, size_t *ret_index)
{
	for (size_t i = 0; i < count; i++)
		if (strcmp(names[i], name) == 0) {
			*ret_index = i;
			return 0;
		}
	return -EINVAL;
}

const char *registry_status_name(enum registry_status status)
{
	return (unsigned)status < REGISTRY_COUNT(registry_status_names) ? registry_status_names[status] : NULL;
}

int registry_status_from_name(const char *name, enum registry_status *ret_status)
{
	size_t i;

	if (registry_name_index(registry_status_names, REGISTRY_COUNT(registry_status_names), name, &i) < 0)
		return -EINVAL;
	*ret_status = (enum registry_status)i;
	return 0;
}

const char *registry_type_name(enum registry_type type)
{
	return (unsigned)type < REGISTRY_COUNT(registry_type_names) ? registry_type_names[type] : NULL;
}

int registry_type_from_name(const char *name, enum registry_type *ret_type)
{
	size_t i;

	if (registry_name_index(registry_type_names, REGISTRY_COUNT(registry_type_names), name, &i) < 0)
		return -EINVAL;
	*ret_type = (enum registry_type)i;
	return 0;
}
