/* registry_codec: CRC32C against RFC 3720 and a bitwise reference, every
 * kind round-tripped at its limits, the layout against bytes built here by
 * hand, every field the decoder must refuse, and recovery: the image cut at
 * every byte of its last frames (torn tail) and every byte of its middle
 * frames flipped (corruption), seqs out of order, salvage. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/registry_codec.h"

#define FRAME_MAX (REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY)

/* ---- helpers ---------------------------------------------------------- */

/* Bytes appended by hand, little-endian, to check the codec's layout. */
struct bytes {
	uint8_t b[2 * FRAME_MAX];
	size_t len;
};

static void put(struct bytes *o, uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		o->b[o->len++] = (uint8_t)(v >> 8 * i);
}

static void put_str(struct bytes *o, const char *s, size_t n)
{
	put(o, n, 2);
	memcpy(o->b + o->len, s, n);
	o->len += n;
}

/* body → length | masked CRC32C | body */
static void frame_of(const struct bytes *body, struct bytes *frame)
{
	frame->len = 0;
	put(frame, body->len, 4);
	put(frame, registry_crc_mask(registry_crc32c(0, body->b, body->len)), 4);
	memcpy(frame->b + frame->len, body->b, body->len);
	frame->len += body->len;
}

static void fill(char *s, size_t n, char c)
{
	memset(s, c, n);
	s[n] = '\0';
}

static void token_entry(struct registry_entry *e, uint64_t seq, const char *jti)
{
	memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->kind = REGISTRY_KIND_TOKEN;
	snprintf(e->jti, sizeof(e->jti), "%s", jti);
	e->status = REGISTRY_ACTIVE;
	e->at = 1700000000;
	e->type = REGISTRY_TYPE_REFRESH;
	snprintf(e->org, sizeof(e->org), "acme");
	snprintf(e->subject, sizeof(e->subject), "alice");
	snprintf(e->kid, sizeof(e->kid), "kid-1");
	e->exp = 1700003600;
	e->status_idx = (uint32_t)seq * 3;
}

static void status_entry(struct registry_entry *e, uint64_t seq, const char *jti, enum registry_status status)
{
	memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->kind = REGISTRY_KIND_STATUS;
	snprintf(e->jti, sizeof(e->jti), "%s", jti);
	e->status = status;
	e->at = 1700000100 + (int64_t)seq;
	snprintf(e->reason, sizeof(e->reason), "reason %llu", (unsigned long long)seq);
}

static void meta_entry(struct registry_entry *e, uint64_t seq, uint32_t next)
{
	memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->kind = REGISTRY_KIND_META;
	e->next_status_idx = next;
}

/* What decode must give back for e: the fields its kind carries, and ""/0
 * (status_idx: none) for the rest. */
static void expected_of(const struct registry_entry *e, struct registry_entry *want)
{
	memset(want, 0, sizeof(*want));
	want->seq = e->seq;
	want->kind = e->kind;
	want->status_idx = REGISTRY_NO_INDEX;
	if (e->kind == REGISTRY_KIND_META) {
		want->next_status_idx = e->next_status_idx;
		return;
	}
	memcpy(want->jti, e->jti, sizeof(want->jti));
	want->status = e->status;
	want->at = e->at;
	if (e->kind == REGISTRY_KIND_STATUS) {
		memcpy(want->reason, e->reason, sizeof(want->reason));
		return;
	}
	want->type = e->type;
	memcpy(want->org, e->org, sizeof(want->org));
	memcpy(want->subject, e->subject, sizeof(want->subject));
	memcpy(want->name, e->name, sizeof(want->name));
	memcpy(want->description, e->description, sizeof(want->description));
	memcpy(want->client_id, e->client_id, sizeof(want->client_id));
	memcpy(want->kid, e->kid, sizeof(want->kid));
	memcpy(want->parent, e->parent, sizeof(want->parent));
	memcpy(want->family, e->family, sizeof(want->family));
	want->exp = e->exp;
	want->status_idx = e->status_idx;
}

static void assert_entry_equal(const struct registry_entry *got, const struct registry_entry *want)
{
	assert_int_equal(got->seq, want->seq);
	assert_int_equal(got->kind, want->kind);
	assert_string_equal(got->jti, want->jti);
	assert_int_equal(got->status, want->status);
	assert_int_equal(got->at, want->at);
	assert_int_equal(got->type, want->type);
	assert_string_equal(got->org, want->org);
	assert_string_equal(got->subject, want->subject);
	assert_string_equal(got->name, want->name);
	assert_string_equal(got->description, want->description);
	assert_string_equal(got->client_id, want->client_id);
	assert_string_equal(got->kid, want->kid);
	assert_string_equal(got->parent, want->parent);
	assert_string_equal(got->family, want->family);
	assert_int_equal(got->exp, want->exp);
	assert_int_equal(got->status_idx, want->status_idx);
	assert_string_equal(got->reason, want->reason);
	assert_int_equal(got->next_status_idx, want->next_status_idx);
}

/* Encodes e, decodes it back (with trailing bytes after the frame, which
 * the decoder must leave alone) and compares. */
static void assert_round_trip(const struct registry_entry *e)
{
	static uint8_t buf[FRAME_MAX + 16];
	static struct registry_entry got, want;
	size_t len = 0, used = 0;

	assert_int_equal(registry_encode(e, buf, sizeof(buf), &len), 0);
	assert_in_range(len, REGISTRY_FRAME_HEADER + 9, FRAME_MAX);
	memset(buf + len, 0x5a, 16);
	memset(&got, 0xee, sizeof(got));
	assert_int_equal(registry_decode(buf, len + 16, &got, &used), 0);
	assert_int_equal(used, len);
	expected_of(e, &want);
	assert_entry_equal(&got, &want);
	/* The exact buffer is enough; one byte less is an incomplete frame. */
	assert_int_equal(registry_decode(buf, len, &got, &used), 0);
	assert_int_equal(registry_decode(buf, len - 1, &got, &used), -EAGAIN);
}

/* ---- CRC32C ----------------------------------------------------------- */

/* Bit by bit, as RFC 3720 B.4 defines it: the oracle for the tables. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n)
{
	uint32_t crc = 0xffffffffu;

	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
	}
	return ~crc;
}

static void test_crc32c_vectors(void **state)
{
	uint8_t buf[32];

	memset(buf, 0, sizeof(buf));
	assert_int_equal(registry_crc32c(0, buf, 32), 0x8A9136AA);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(registry_crc32c(0, buf, 32), 0x62A8AB43);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(registry_crc32c(0, buf, 32), 0x46DD794E);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(registry_crc32c(0, buf, 32), 0x113FDB5C);
	assert_int_equal(registry_crc32c(0, "123456789", 9), 0xE3069283);
	assert_int_equal(registry_crc32c(0, "", 0), 0);
}

static void test_crc32c_against_bitwise(void **state)
{
	uint8_t buf[300];
	uint32_t seed = 12345;

	for (size_t i = 0; i < sizeof(buf); i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t)(seed >> 16);
	}
	/* Every length and misalignment around the 8-byte stride. */
	for (size_t start = 0; start < 9; start++)
		for (size_t n = 0; start + n <= sizeof(buf); n++)
			assert_int_equal(registry_crc32c(0, buf + start, n), crc32c_bitwise(buf + start, n));
	/* crc extends: the CRC of a split buffer is the CRC of the whole. */
	for (size_t cut = 0; cut <= sizeof(buf); cut++)
		assert_int_equal(registry_crc32c(registry_crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut),
				 crc32c_bitwise(buf, sizeof(buf)));
}

static void test_crc_mask(void **state)
{
	assert_int_equal(registry_crc_mask(0), 0xa282ead8);
	assert_int_equal(registry_crc_mask(0xE3069283), ((0xE3069283u >> 15 | 0xE3069283u << 17) + 0xa282ead8u));
	assert_int_equal(registry_crc_mask(0x00008000), 1 + 0xa282ead8u);
	assert_int_equal(registry_crc_mask(0x00000001), (1u << 17) + 0xa282ead8u);
	/* The mask is not the identity and wraps modulo 2^32. */
	assert_int_equal(registry_crc_mask(0xffffffff), (uint32_t)(0xffffffffu + 0xa282ead8u));
}

/* ---- round trips and layout -------------------------------------------- */

static void test_round_trip_max(void **state)
{
	static struct registry_entry e;

	token_entry(&e, UINT64_MAX, "x");
	fill(e.jti, REGISTRY_JTI_MAX, 'j');
	fill(e.org, REGISTRY_ORG_MAX, 'o');
	fill(e.subject, REGISTRY_SUBJECT_MAX, 's');
	fill(e.name, REGISTRY_NAME_MAX, 'n');
	fill(e.description, REGISTRY_DESCRIPTION_MAX, 'd');
	fill(e.client_id, REGISTRY_CLIENT_ID_MAX, 'c');
	fill(e.kid, REGISTRY_KID_MAX, 'k');
	fill(e.parent, REGISTRY_JTI_MAX, 'p');
	fill(e.family, REGISTRY_JTI_MAX, 'f');
	e.status = REGISTRY_DELETED;
	e.type = REGISTRY_TYPE_UNREGISTERED;
	e.at = INT64_MAX;
	e.exp = INT64_MIN;
	e.status_idx = UINT32_MAX - 1;
	assert_round_trip(&e);

	status_entry(&e, UINT64_MAX, "x", REGISTRY_DELETED);
	fill(e.jti, REGISTRY_JTI_MAX, 'J');
	fill(e.reason, REGISTRY_REASON_MAX, 'r');
	e.at = INT64_MIN;
	assert_round_trip(&e);

	meta_entry(&e, UINT64_MAX, UINT32_MAX);
	assert_round_trip(&e);
}

static void test_round_trip_empty(void **state)
{
	static struct registry_entry e;

	/* Only the jti is required. */
	memset(&e, 0, sizeof(e));
	e.seq = 1;
	e.kind = REGISTRY_KIND_TOKEN;
	strcpy(e.jti, "j");
	e.status_idx = REGISTRY_NO_INDEX;
	assert_round_trip(&e);

	memset(&e, 0, sizeof(e));
	e.seq = 1;
	e.kind = REGISTRY_KIND_STATUS;
	strcpy(e.jti, "j");
	assert_round_trip(&e);

	meta_entry(&e, 1, 0);
	assert_round_trip(&e);
}

static void test_round_trip_every_value(void **state)
{
	static struct registry_entry e;

	for (int s = REGISTRY_ACTIVE; s <= REGISTRY_DELETED; s++)
		for (int t = REGISTRY_TYPE_ACCESS; t <= REGISTRY_TYPE_UNREGISTERED; t++) {
			token_entry(&e, (uint64_t)(s * 10 + t + 1), "jti-v");
			e.status = (enum registry_status)s;
			e.type = (enum registry_type)t;
			assert_round_trip(&e);
			status_entry(&e, (uint64_t)(s + 1), "jti-v", (enum registry_status)s);
			assert_round_trip(&e);
		}
}

static void test_layout(void **state)
{
	static struct registry_entry e;
	static struct bytes body, want;
	static uint8_t buf[FRAME_MAX];
	size_t len = 0;

	token_entry(&e, 0x0102030405060708ull, "jt");
	strcpy(e.name, "nm");
	strcpy(e.description, "d");
	strcpy(e.client_id, "cli");
	strcpy(e.parent, "pa");
	strcpy(e.family, "fa");
	e.status = REGISTRY_SUSPENDED;
	e.type = REGISTRY_TYPE_CHILD;
	e.at = -2;
	e.exp = 0x1122334455667788ll;
	e.status_idx = 0xa0b0c0d0;
	body.len = 0;
	put(&body, 0x0102030405060708ull, 8);
	put(&body, REGISTRY_KIND_TOKEN, 1);
	put_str(&body, "jt", 2);
	put(&body, REGISTRY_SUSPENDED, 1);
	put(&body, (uint64_t)-2, 8);
	put(&body, REGISTRY_TYPE_CHILD, 1);
	put_str(&body, "acme", 4);
	put_str(&body, "alice", 5);
	put_str(&body, "nm", 2);
	put_str(&body, "d", 1);
	put_str(&body, "cli", 3);
	put_str(&body, "kid-1", 5);
	put_str(&body, "pa", 2);
	put_str(&body, "fa", 2);
	put(&body, 0x1122334455667788ull, 8);
	put(&body, 0xa0b0c0d0, 4);
	frame_of(&body, &want);
	assert_int_equal(registry_encode(&e, buf, sizeof(buf), &len), 0);
	assert_int_equal(len, want.len);
	assert_memory_equal(buf, want.b, len);
	/* The length and the masked CRC, spelled out. */
	assert_int_equal(buf[0], body.len);
	assert_int_equal(buf[1], 0);
	assert_int_equal((uint32_t)buf[4] | (uint32_t)buf[5] << 8 | (uint32_t)buf[6] << 16 | (uint32_t)buf[7] << 24,
			 registry_crc_mask(crc32c_bitwise(body.b, body.len)));

	status_entry(&e, 7, "jt", REGISTRY_REVOKED);
	body.len = 0;
	put(&body, 7, 8);
	put(&body, REGISTRY_KIND_STATUS, 1);
	put_str(&body, "jt", 2);
	put(&body, REGISTRY_REVOKED, 1);
	put(&body, (uint64_t)e.at, 8);
	put_str(&body, "reason 7", 8);
	frame_of(&body, &want);
	assert_int_equal(registry_encode(&e, buf, sizeof(buf), &len), 0);
	assert_int_equal(len, want.len);
	assert_memory_equal(buf, want.b, len);

	meta_entry(&e, 9, 0x01020304);
	body.len = 0;
	put(&body, 9, 8);
	put(&body, REGISTRY_KIND_META, 1);
	put(&body, 0x01020304, 4);
	frame_of(&body, &want);
	assert_int_equal(registry_encode(&e, buf, sizeof(buf), &len), 0);
	assert_int_equal(len, want.len);
	assert_memory_equal(buf, want.b, len);
}

/* ---- encoder rejections -------------------------------------------------- */

static void assert_encode_refused(const struct registry_entry *e, size_t buflen, int want)
{
	static uint8_t buf[FRAME_MAX];
	size_t len = 777;

	memset(buf, 0xa5, sizeof(buf));
	assert_int_equal(registry_encode(e, buf, buflen, &len), want);
	assert_int_equal(len, 777);
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 0xa5);
}

static void test_encode_refuses(void **state)
{
	static struct registry_entry e;
	static const struct {
		size_t offset, max;
	} token_strings[] = {
		{ offsetof(struct registry_entry, jti), REGISTRY_JTI_MAX },
		{ offsetof(struct registry_entry, org), REGISTRY_ORG_MAX },
		{ offsetof(struct registry_entry, subject), REGISTRY_SUBJECT_MAX },
		{ offsetof(struct registry_entry, name), REGISTRY_NAME_MAX },
		{ offsetof(struct registry_entry, description), REGISTRY_DESCRIPTION_MAX },
		{ offsetof(struct registry_entry, client_id), REGISTRY_CLIENT_ID_MAX },
		{ offsetof(struct registry_entry, kid), REGISTRY_KID_MAX },
		{ offsetof(struct registry_entry, parent), REGISTRY_JTI_MAX },
		{ offsetof(struct registry_entry, family), REGISTRY_JTI_MAX },
	};
	size_t len;

	/* A string filling its whole array has no NUL within max + 1. */
	for (size_t i = 0; i < sizeof(token_strings) / sizeof(token_strings[0]); i++) {
		token_entry(&e, 1, "j");
		memset((char *)&e + token_strings[i].offset, 'z', token_strings[i].max + 1);
		assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	}
	status_entry(&e, 1, "j", REGISTRY_REVOKED);
	memset(e.reason, 'r', sizeof(e.reason));
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	status_entry(&e, 1, "j", REGISTRY_REVOKED);
	memset(e.jti, 'r', sizeof(e.jti));
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);

	token_entry(&e, 1, "");
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	status_entry(&e, 1, "", REGISTRY_REVOKED);
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	token_entry(&e, 0, "j");
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	meta_entry(&e, 0, 5);
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	token_entry(&e, 1, "j");
	e.kind = (enum registry_kind)0;
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	e.kind = (enum registry_kind)4;
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	token_entry(&e, 1, "j");
	e.status = (enum registry_status)4;
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	e.status = (enum registry_status)-1;
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	token_entry(&e, 1, "j");
	e.type = (enum registry_type)6;
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);
	status_entry(&e, 1, "j", (enum registry_status)4);
	assert_encode_refused(&e, FRAME_MAX, -EINVAL);

	/* A buffer one byte short of the frame. */
	token_entry(&e, 1, "j");
	assert_int_equal(registry_encode(&e, (uint8_t[FRAME_MAX]){ 0 }, FRAME_MAX, &len), 0);
	assert_encode_refused(&e, len - 1, -ENOBUFS);
}

/* ---- decoder rejections -------------------------------------------------- */

static void assert_decode_refused(const uint8_t *buf, size_t len, int want)
{
	static struct registry_entry got;
	size_t used = 777;

	memset(&got, 0xee, sizeof(got));
	assert_int_equal(registry_decode(buf, len, &got, &used), want);
	assert_int_equal(used, 777);
	for (size_t i = 0; i < sizeof(got); i++)
		assert_int_equal(((uint8_t *)&got)[i], 0xee);
}

/* A valid checksum around body: only the field check can refuse it. */
static void assert_body_refused(const struct bytes *body)
{
	static struct bytes frame;

	frame_of(body, &frame);
	assert_decode_refused(frame.b, frame.len, -EBADMSG);
}

/* A TOKEN body with each string given explicitly, so that lengths past the
 * maxima and NULs inside can be written. */
struct token_strings {
	const char *s[9];
	size_t n[9];
	unsigned status, type;
};

static void token_body(const struct token_strings *t, uint64_t seq, struct bytes *body)
{
	body->len = 0;
	put(body, seq, 8);
	put(body, REGISTRY_KIND_TOKEN, 1);
	put_str(body, t->s[0], t->n[0]);
	put(body, t->status, 1);
	put(body, 1700000000, 8);
	put(body, t->type, 1);
	for (int i = 1; i < 9; i++)
		put_str(body, t->s[i], t->n[i]);
	put(body, 1700003600, 8);
	put(body, 4, 4);
}

static void token_strings_valid(struct token_strings *t)
{
	static const size_t max[9] = { REGISTRY_JTI_MAX, REGISTRY_ORG_MAX, REGISTRY_SUBJECT_MAX, REGISTRY_NAME_MAX,
				       REGISTRY_DESCRIPTION_MAX, REGISTRY_CLIENT_ID_MAX, REGISTRY_KID_MAX,
				       REGISTRY_JTI_MAX, REGISTRY_JTI_MAX };
	static char long_text[REGISTRY_DESCRIPTION_MAX + 1];

	memset(long_text, 'a', sizeof(long_text));
	for (int i = 0; i < 9; i++) {
		t->s[i] = long_text;
		t->n[i] = max[i];
	}
	t->status = REGISTRY_REVOKED;
	t->type = REGISTRY_TYPE_ID;
}

static void test_decode_refuses_fields(void **state)
{
	static struct bytes body, frame;
	static struct registry_entry got;
	struct token_strings t;
	size_t used;

	/* The control: every string at its maximum decodes. */
	token_strings_valid(&t);
	token_body(&t, 5, &body);
	frame_of(&body, &frame);
	assert_int_equal(registry_decode(frame.b, frame.len, &got, &used), 0);
	assert_int_equal(used, frame.len);
	assert_int_equal(strlen(got.description), REGISTRY_DESCRIPTION_MAX);

	for (int i = 0; i < 9; i++) {
		token_strings_valid(&t);
		t.n[i]++;
		token_body(&t, 5, &body);
		assert_body_refused(&body);
		token_strings_valid(&t);
		t.s[i] = "a\0b";
		t.n[i] = 3;
		token_body(&t, 5, &body);
		assert_body_refused(&body);
	}
	token_strings_valid(&t);
	t.n[0] = 0;                     /* empty jti */
	token_body(&t, 5, &body);
	assert_body_refused(&body);
	token_strings_valid(&t);
	t.status = 4;
	token_body(&t, 5, &body);
	assert_body_refused(&body);
	token_strings_valid(&t);
	t.type = 6;
	token_body(&t, 5, &body);
	assert_body_refused(&body);
	token_strings_valid(&t);
	token_body(&t, 0, &body);       /* seq 0 */
	assert_body_refused(&body);
	/* A byte more, a byte less. */
	token_strings_valid(&t);
	token_body(&t, 5, &body);
	put(&body, 0, 1);
	assert_body_refused(&body);
	body.len -= 2;
	assert_body_refused(&body);
}

static void test_decode_refuses_kinds(void **state)
{
	static struct bytes body;

	for (unsigned kind = 0; kind < 256; kind++) {
		if (kind >= REGISTRY_KIND_TOKEN && kind <= REGISTRY_KIND_META)
			continue;
		body.len = 0;
		put(&body, 1, 8);
		put(&body, kind, 1);
		put(&body, 0, 4);
		assert_body_refused(&body);
	}
	/* STATUS: status out of range, reason too long, a NUL, trailing bytes. */
	body.len = 0;
	put(&body, 1, 8);
	put(&body, REGISTRY_KIND_STATUS, 1);
	put_str(&body, "j", 1);
	put(&body, 4, 1);
	put(&body, 0, 8);
	put_str(&body, "", 0);
	assert_body_refused(&body);
	body.b[9 + 3] = REGISTRY_DELETED;
	body.len -= 2;
	{
		char reason[REGISTRY_REASON_MAX + 1];
		memset(reason, 'r', sizeof(reason));
		put_str(&body, reason, sizeof(reason));
	}
	assert_body_refused(&body);
	body.len -= 2 + REGISTRY_REASON_MAX + 1;
	put_str(&body, "r\0", 2);
	assert_body_refused(&body);
	body.len -= 4;
	put_str(&body, "", 0);
	put(&body, 0, 1);
	assert_body_refused(&body);
	/* META: a byte short, a byte over. */
	body.len = 0;
	put(&body, 1, 8);
	put(&body, REGISTRY_KIND_META, 1);
	put(&body, 0, 3);
	assert_body_refused(&body);
	put(&body, 0, 2);
	assert_body_refused(&body);
	/* A body holding only a seq, and a seq cut short. */
	body.len = 0;
	put(&body, 1, 8);
	assert_body_refused(&body);
	body.len = 5;
	assert_body_refused(&body);
}

static void test_decode_refuses_frames(void **state)
{
	static uint8_t buf[FRAME_MAX + 8];
	static struct registry_entry e;
	uint8_t hdr[8];
	size_t len = 0;

	/* Length 0, and lengths past REGISTRY_MAX_BODY: refused at once, even
	 * with too few bytes to hold them. */
	memset(hdr, 0, sizeof(hdr));
	assert_decode_refused(hdr, sizeof(hdr), -EBADMSG);
	assert_decode_refused(hdr, 4, -EBADMSG);
	hdr[0] = (REGISTRY_MAX_BODY + 1) & 0xff;
	hdr[1] = (REGISTRY_MAX_BODY + 1) >> 8;
	assert_decode_refused(hdr, sizeof(hdr), -EBADMSG);
	memset(buf, 0, sizeof(buf));
	memcpy(buf, hdr, 4);
	assert_decode_refused(buf, sizeof(buf), -EBADMSG);
	hdr[0] = hdr[1] = hdr[2] = hdr[3] = 0xff;
	assert_decode_refused(hdr, sizeof(hdr), -EBADMSG);

	/* Fewer bytes than the header or the body announce: incomplete. */
	token_entry(&e, 3, "jti-3");
	assert_int_equal(registry_encode(&e, buf, sizeof(buf), &len), 0);
	for (size_t cut = 0; cut < len; cut++)
		assert_decode_refused(buf, cut, -EAGAIN);
	/* Every bit of the checksum, and a bit of the body. */
	for (size_t bit = 32; bit < 64; bit++) {
		buf[bit / 8] ^= (uint8_t)(1u << bit % 8);
		assert_decode_refused(buf, len, -EBADMSG);
		buf[bit / 8] ^= (uint8_t)(1u << bit % 8);
	}
	buf[len - 1] ^= 0x40;
	assert_decode_refused(buf, len, -EBADMSG);
}

/* ---- recovery ------------------------------------------------------------- */

#define IMAGE_FRAMES 6

struct image {
	uint8_t b[IMAGE_FRAMES * 600];
	size_t len;
	int count;
	size_t off[IMAGE_FRAMES], end[IMAGE_FRAMES];
	uint64_t seq[IMAGE_FRAMES];
};

static void image_add(struct image *im, const struct registry_entry *e)
{
	size_t len = 0;

	assert_true(im->count < IMAGE_FRAMES);
	assert_int_equal(registry_encode(e, im->b + im->len, sizeof(im->b) - im->len, &len), 0);
	im->off[im->count] = im->len;
	im->seq[im->count] = e->seq;
	im->len += len;
	im->end[im->count++] = im->len;
}

/* META, then tokens and status changes with seqs that skip (allowed: only
 * order matters), frames of different kinds and sizes. */
static void image_build(struct image *im, const uint64_t seqs[IMAGE_FRAMES])
{
	struct registry_entry e;

	memset(im, 0, sizeof(*im));
	memcpy(im->b, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	im->len = REGISTRY_MAGIC_LEN;
	meta_entry(&e, seqs[0], 42);
	image_add(im, &e);
	token_entry(&e, seqs[1], "jti-a");
	strcpy(e.description, "a token with a description");
	image_add(im, &e);
	token_entry(&e, seqs[2], "jti-b");
	image_add(im, &e);
	status_entry(&e, seqs[3], "jti-a", REGISTRY_SUSPENDED);
	image_add(im, &e);
	token_entry(&e, seqs[4], "jti-c");
	strcpy(e.parent, "jti-b");
	image_add(im, &e);
	status_entry(&e, seqs[5], "jti-b", REGISTRY_REVOKED);
	image_add(im, &e);
}

static const uint64_t default_seqs[IMAGE_FRAMES] = { 1, 2, 5, 6, 9, 10 };

struct seen {
	size_t count;
	uint64_t seq[IMAGE_FRAMES + 2];
	size_t off[IMAGE_FRAMES + 2];
	size_t stop_after;              /* 0: never */
};

static int seen_each(void *arg, const struct registry_entry *e, size_t offset)
{
	struct seen *s = arg;

	if (s->stop_after && s->count == s->stop_after)
		return -ECANCELED;
	assert_true(s->count < IMAGE_FRAMES + 2);
	s->seq[s->count] = e->seq;
	s->off[s->count++] = offset;
	return 0;
}

/* scan(buf, len) must find the first `frames` frames of im, then verdict at
 * offset `at`. */
static void assert_scan(const struct image *im, const uint8_t *buf, size_t len, enum registry_verdict verdict,
			int frames, size_t at)
{
	struct registry_scan s;
	struct seen seen = { 0 };

	memset(&s, 0xee, sizeof(s));
	assert_int_equal(registry_scan(buf, len, seen_each, &seen, &s), 0);
	assert_int_equal(s.verdict, verdict);
	assert_int_equal(s.good_end, at);
	assert_int_equal(s.bad_offset, at);
	assert_int_equal(s.frames, frames);
	assert_int_equal(s.last_seq, frames ? im->seq[frames - 1] : 0);
	assert_int_equal(seen.count, frames);
	for (int i = 0; i < frames; i++) {
		assert_int_equal(seen.seq[i], im->seq[i]);
		assert_int_equal(seen.off[i], im->off[i]);
	}
}

static void test_scan_clean(void **state)
{
	static struct image im;
	struct registry_scan s;

	image_build(&im, default_seqs);
	assert_scan(&im, im.b, im.len, REGISTRY_CLEAN, IMAGE_FRAMES, im.len);
	/* No callback is fine. */
	assert_int_equal(registry_scan(im.b, im.len, NULL, NULL, &s), 0);
	assert_int_equal(s.frames, IMAGE_FRAMES);
	/* The magic alone, and nothing at all. */
	assert_scan(&im, im.b, REGISTRY_MAGIC_LEN, REGISTRY_CLEAN, 0, REGISTRY_MAGIC_LEN);
	assert_scan(&im, im.b, 0, REGISTRY_CLEAN, 0, 0);
}

static void test_scan_torn_tail_every_cut(void **state)
{
	static struct image im;
	int checked = 0;

	image_build(&im, default_seqs);
	for (size_t cut = im.off[IMAGE_FRAMES - 3]; cut <= im.len; cut++) {
		int k = 0;

		while (k < IMAGE_FRAMES && im.end[k] <= cut)
			k++;
		if (k > 0 && im.end[k - 1] == cut)
			assert_scan(&im, im.b, cut, REGISTRY_CLEAN, k, cut);
		else
			assert_scan(&im, im.b, cut, REGISTRY_TORN_TAIL, k, im.off[k]);
		checked++;
	}
	assert_int_equal(checked, im.len - im.off[IMAGE_FRAMES - 3] + 1);
	/* A crash while the file was being created: a prefix of the magic. */
	for (size_t cut = 1; cut < REGISTRY_MAGIC_LEN; cut++)
		assert_scan(&im, im.b, cut, REGISTRY_TORN_TAIL, 0, 0);
}

static void test_scan_flipped_bytes(void **state)
{
	static struct image im;
	static const uint8_t masks[] = { 0x01, 0x80 };

	image_build(&im, default_seqs);
	for (int k = 0; k < IMAGE_FRAMES; k++)
		for (size_t b = im.off[k]; b < im.end[k]; b++)
			for (size_t m = 0; m < sizeof(masks); m++) {
				im.b[b] ^= masks[m];
				/* Good frames follow every frame but the last. */
				assert_scan(&im, im.b, im.len,
					    k < IMAGE_FRAMES - 1 ? REGISTRY_CORRUPT : REGISTRY_TORN_TAIL, k, im.off[k]);
				im.b[b] ^= masks[m];
			}
	/* A bad magic, whatever follows; a short file that is not its prefix. */
	for (size_t b = 0; b < REGISTRY_MAGIC_LEN; b++) {
		im.b[b] ^= 0x01;
		assert_scan(&im, im.b, im.len, REGISTRY_CORRUPT, 0, 0);
		assert_scan(&im, im.b, REGISTRY_MAGIC_LEN, REGISTRY_CORRUPT, 0, 0);
		assert_scan(&im, im.b, b + 1, REGISTRY_CORRUPT, 0, 0);
		im.b[b] ^= 0x01;
	}
	assert_scan(&im, im.b, im.len, REGISTRY_CLEAN, IMAGE_FRAMES, im.len);
}

static void test_scan_seq_order(void **state)
{
	static struct image im;
	static const uint64_t repeat[IMAGE_FRAMES] = { 1, 2, 5, 5, 9, 10 };
	static const uint64_t back[IMAGE_FRAMES] = { 1, 2, 5, 3, 9, 10 };
	static const uint64_t last_repeats[IMAGE_FRAMES] = { 1, 2, 5, 6, 9, 9 };
	static const uint64_t late_start[IMAGE_FRAMES] = { 7, 8, 9, 10, 11, 12 };
	static const uint64_t jump[IMAGE_FRAMES] = { 1, 2, 5, 60, 9, 10 };

	image_build(&im, repeat);
	assert_scan(&im, im.b, im.len, REGISTRY_CORRUPT, 3, im.off[3]);
	image_build(&im, back);
	assert_scan(&im, im.b, im.len, REGISTRY_CORRUPT, 3, im.off[3]);
	/* A checksummed frame that does not follow at the very end is no proof
	 * of corruption before it: it is the tail. */
	image_build(&im, last_repeats);
	assert_scan(&im, im.b, im.len, REGISTRY_TORN_TAIL, 5, im.off[5]);
	/* A seq that jumps ahead makes the frames after it out of order; they
	 * still check out, so this is corruption, not a tail to cut. */
	image_build(&im, jump);
	assert_scan(&im, im.b, im.len, REGISTRY_CORRUPT, 4, im.off[4]);
	image_build(&im, late_start);
	assert_scan(&im, im.b, im.len, REGISTRY_CLEAN, IMAGE_FRAMES, im.len);
}

static void test_scan_each_stops(void **state)
{
	static struct image im;
	struct registry_scan s;
	struct seen seen = { .stop_after = 2 };
	size_t skipped = 999;

	image_build(&im, default_seqs);
	memset(&s, 0xee, sizeof(s));
	assert_int_equal(registry_scan(im.b, im.len, seen_each, &seen, &s), -ECANCELED);
	assert_int_equal(seen.count, 2);
	assert_int_equal(s.frames, 0xeeeeeeeeeeeeeeeeull);
	seen.count = 0;
	assert_int_equal(registry_salvage(im.b, im.len, seen_each, &seen, &skipped), -ECANCELED);
	assert_int_equal(seen.count, 2);
	assert_int_equal(skipped, 999);
}

/* salvage(buf, len) must call each for exactly the frames of im in keep
 * (indices, -1 ends) and report skipped bytes. */
static void assert_salvage(const struct image *im, const uint8_t *buf, size_t len, const int *keep,
			   const size_t *offsets, size_t skipped)
{
	struct seen seen = { 0 };
	size_t got = 999;
	size_t n = 0;

	assert_int_equal(registry_salvage(buf, len, seen_each, &seen, &got), 0);
	for (; keep[n] >= 0; n++) {
		assert_true(n < seen.count);
		assert_int_equal(seen.seq[n], im->seq[keep[n]]);
		assert_int_equal(seen.off[n], offsets[n]);
	}
	assert_int_equal(seen.count, n);
	assert_int_equal(got, skipped);
}

static void test_salvage(void **state)
{
	static struct image im, bigger;
	static const int all[] = { 0, 1, 2, 3, 4, 5, -1 };
	static const int but2[] = { 0, 1, 3, 4, 5, -1 };
	static const int but5[] = { 0, 1, 2, 3, 4, -1 };
	static const uint64_t repeat[IMAGE_FRAMES] = { 1, 2, 5, 5, 9, 10 };
	static const int but3[] = { 0, 1, 2, 4, 5, -1 };
	static const int none[] = { -1 };
	size_t garbage = 37;

	image_build(&im, default_seqs);
	assert_salvage(&im, im.b, im.len, all, im.off, 0);

	/* A damaged middle frame: everything around it is kept. */
	im.b[im.off[2] + REGISTRY_FRAME_HEADER + 3] ^= 0x10;
	assert_salvage(&im, im.b, im.len, but2, (size_t[]){ im.off[0], im.off[1], im.off[3], im.off[4], im.off[5] },
		       im.end[2] - im.off[2]);
	/* ... its length too (now pointing past the end of the image). */
	im.b[im.off[2] + 1] ^= 0x40;
	assert_salvage(&im, im.b, im.len, but2, (size_t[]){ im.off[0], im.off[1], im.off[3], im.off[4], im.off[5] },
		       im.end[2] - im.off[2]);

	/* Garbage inserted between frames. */
	image_build(&im, default_seqs);
	memcpy(&bigger, &im, sizeof(im));
	memset(bigger.b + im.end[2], 0x33, garbage);
	memcpy(bigger.b + im.end[2] + garbage, im.b + im.end[2], im.len - im.end[2]);
	bigger.len = im.len + garbage;
	assert_scan(&im, bigger.b, bigger.len, REGISTRY_CORRUPT, 3, im.end[2]);
	assert_salvage(&im, bigger.b, bigger.len, all,
		       (size_t[]){ im.off[0], im.off[1], im.off[2], im.off[3] + garbage, im.off[4] + garbage,
				   im.off[5] + garbage },
		       garbage);

	/* A torn tail, a bad magic, a frame whose seq does not follow. */
	assert_salvage(&im, im.b, im.len - 4, but5, im.off, im.end[5] - im.off[5] - 4);
	im.b[0] ^= 0x01;
	assert_salvage(&im, im.b, im.len, all, im.off, REGISTRY_MAGIC_LEN);
	assert_salvage(&im, im.b, 3, none, im.off, 3);
	image_build(&im, repeat);
	assert_salvage(&im, im.b, im.len, but3, (size_t[]){ im.off[0], im.off[1], im.off[2], im.off[4], im.off[5] },
		       im.end[3] - im.off[3]);
	assert_salvage(&im, im.b, 0, none, im.off, 0);
}

/* ---- names ----------------------------------------------------------------- */

static void test_names(void **state)
{
	static const char *const statuses[] = { "active", "suspended", "revoked", "deleted" };
	static const char *const types[] = { "access", "refresh", "id", "parent", "child", "unregistered" };
	enum registry_status s;
	enum registry_type t;

	for (int i = 0; i < 4; i++) {
		assert_string_equal(registry_status_name((enum registry_status)i), statuses[i]);
		assert_int_equal(registry_status_from_name(statuses[i], &s), 0);
		assert_int_equal(s, i);
	}
	for (int i = 0; i < 6; i++) {
		assert_string_equal(registry_type_name((enum registry_type)i), types[i]);
		assert_int_equal(registry_type_from_name(types[i], &t), 0);
		assert_int_equal(t, i);
	}
	assert_null(registry_status_name((enum registry_status)4));
	assert_null(registry_status_name((enum registry_status)-1));
	assert_null(registry_type_name((enum registry_type)6));
	s = REGISTRY_SUSPENDED;
	t = REGISTRY_TYPE_CHILD;
	assert_int_equal(registry_status_from_name("expired", &s), -EINVAL);
	assert_int_equal(registry_status_from_name("Active", &s), -EINVAL);
	assert_int_equal(registry_status_from_name("", &s), -EINVAL);
	assert_int_equal(registry_type_from_name("access ", &t), -EINVAL);
	assert_int_equal(registry_type_from_name("", &t), -EINVAL);
	assert_int_equal(s, REGISTRY_SUSPENDED);
	assert_int_equal(t, REGISTRY_TYPE_CHILD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_vectors),
		cmocka_unit_test(test_crc32c_against_bitwise),
		cmocka_unit_test(test_crc_mask),
		cmocka_unit_test(test_round_trip_max),
		cmocka_unit_test(test_round_trip_empty),
		cmocka_unit_test(test_round_trip_every_value),
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_encode_refuses),
		cmocka_unit_test(test_decode_refuses_fields),
		cmocka_unit_test(test_decode_refuses_kinds),
		cmocka_unit_test(test_decode_refuses_frames),
		cmocka_unit_test(test_scan_clean),
		cmocka_unit_test(test_scan_torn_tail_every_cut),
		cmocka_unit_test(test_scan_flipped_bytes),
		cmocka_unit_test(test_scan_seq_order),
		cmocka_unit_test(test_scan_each_stops),
		cmocka_unit_test(test_salvage),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
