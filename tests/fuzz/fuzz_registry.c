/* fuzz_registry: the decoders of records hsmjwt reads back from storage it
 * does not fully control — registry frames (registry_decode, and a whole
 * file image through registry_scan and registry_salvage) and key lifecycle
 * records read from the token (keystate_parse).  Every input goes through
 * all of them: as a frame, as a file image with and without the magic, and
 * as a lifecycle record.
 *
 * Invariants: a decoded frame consumed at most the input and re-encodes to
 * exactly the bytes it was decoded from; failures leave the outputs
 * untouched; a scan reports frames in file order, each decoding at its
 * offset to what the scan handed out, with seq strictly increasing, a
 * CLEAN verdict only when every byte was used, and offsets within the
 * image; a parsed lifecycle record formats back to the same bytes (the
 * format is canonical). */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "hsmjwt/keystate.h"
#include "hsmjwt/registry_codec.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet_logs();
	return 0;
}

static void check_decode(const uint8_t *data, size_t size)
{
	static struct registry_entry e, before;
	static uint8_t frame[REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY];
	size_t used = 7777, len = 0;
	int r;

	memset(&e, 0x5a, sizeof(e));
	memcpy(&before, &e, sizeof(e));
	r = registry_decode(data, size, &e, &used);
	if (r < 0) {
		FUZZ_CHECK(r == -EAGAIN || r == -EBADMSG);
		FUZZ_CHECK(used == 7777 && memcmp(&e, &before, sizeof(e)) == 0);
		return;
	}
	FUZZ_CHECK(r == 0);
	FUZZ_CHECK(used > REGISTRY_FRAME_HEADER && used <= size);
	FUZZ_CHECK(used <= REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY);
	FUZZ_CHECK(e.seq > 0);
	FUZZ_CHECK(e.kind == REGISTRY_KIND_TOKEN || e.kind == REGISTRY_KIND_STATUS || e.kind == REGISTRY_KIND_META);
	FUZZ_CHECK(registry_encode(&e, frame, sizeof(frame), &len) == 0);
	FUZZ_CHECK(len == used);
	FUZZ_CHECK(memcmp(frame, data, used) == 0);
	/* One byte short of the frame is a torn tail, not a frame. */
	FUZZ_CHECK(registry_decode(data, used - 1, &before, &len) == -EAGAIN);
}

struct scan_state {
	const uint8_t *image;
	size_t size;
	size_t next_offset;        /* a frame may not start before this */
	uint64_t last_seq;
	uint64_t frames;
	int salvage;
};

static int entry_equal(const struct registry_entry *a, const struct registry_entry *b)
{
	return a->seq == b->seq && a->kind == b->kind && strcmp(a->jti, b->jti) == 0 && a->status == b->status &&
	       a->at == b->at && a->type == b->type && strcmp(a->org, b->org) == 0 &&
	       strcmp(a->subject, b->subject) == 0 && strcmp(a->name, b->name) == 0 &&
	       strcmp(a->description, b->description) == 0 && strcmp(a->client_id, b->client_id) == 0 &&
	       strcmp(a->kid, b->kid) == 0 && strcmp(a->parent, b->parent) == 0 &&
	       strcmp(a->family, b->family) == 0 && a->exp == b->exp && a->status_idx == b->status_idx &&
	       strcmp(a->reason, b->reason) == 0 && a->next_status_idx == b->next_status_idx;
}

static int scan_each(void *arg, const struct registry_entry *e, size_t offset)
{
	static struct registry_entry again;
	struct scan_state *s = arg;
	size_t used;

	/* Salvage reads an image with a bad magic from its first byte. */
	FUZZ_CHECK(offset >= s->next_offset && offset < s->size);
	FUZZ_CHECK(s->salvage || offset >= REGISTRY_MAGIC_LEN);
	FUZZ_CHECK(e->seq > s->last_seq);
	FUZZ_CHECK(registry_decode(s->image + offset, s->size - offset, &again, &used) == 0);
	FUZZ_CHECK(entry_equal(&again, e));
	s->next_offset = offset + used;
	s->last_seq = e->seq;
	s->frames++;
	return 0;
}

static void check_image(const uint8_t *image, size_t size)
{
	struct scan_state s = { .image = image, .size = size };
	struct registry_scan scan;
	size_t skipped = 0;
	int r;

	r = registry_scan(image, size, scan_each, &s, &scan);
	FUZZ_CHECK(r == 0);
	FUZZ_CHECK(scan.frames == s.frames && scan.last_seq == s.last_seq);
	FUZZ_CHECK(scan.good_end <= size);
	switch (scan.verdict) {
	case REGISTRY_CLEAN:
		FUZZ_CHECK(scan.good_end == size);
		if (scan.frames > 0)
			FUZZ_CHECK(s.next_offset == size);
		break;
	case REGISTRY_TORN_TAIL:
		FUZZ_CHECK(scan.bad_offset >= scan.good_end && scan.bad_offset < size);
		FUZZ_CHECK(scan.frames == 0 || s.next_offset == scan.good_end);
		break;
	case REGISTRY_CORRUPT:
		FUZZ_CHECK(scan.bad_offset <= size);
		break;
	default:
		FUZZ_CHECK(!"a verdict registry_scan does not define");
	}

	struct scan_state t = { .image = image, .size = size, .salvage = 1 };
	r = registry_salvage(image, size, scan_each, &t, &skipped);
	FUZZ_CHECK(r == 0);
	FUZZ_CHECK(skipped <= size);
	/* Salvage keeps at least what the scan found good before any damage. */
	FUZZ_CHECK(t.frames >= scan.frames);
}

static void check_keystate(const uint8_t *data, size_t size)
{
	struct keystate_record rec, before, again;
	char buf[KEYSTATE_RECORD_MAX + 1];
	size_t len = 0;
	int r;

	memset(&rec, 0x5a, sizeof(rec));
	before = rec;
	r = keystate_parse((const char *)data, size, &rec);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL);
		FUZZ_CHECK(memcmp(&rec, &before, sizeof(rec)) == 0);
		return;
	}
	FUZZ_CHECK(r == 0);
	FUZZ_CHECK(size <= KEYSTATE_RECORD_MAX);
	FUZZ_CHECK(keystate_name(rec.state) != NULL);
	FUZZ_CHECK(jws_alg_name(rec.alg) != NULL);
	if (rec.state == KEYSTATE_NEXT)
		FUZZ_CHECK(rec.created <= rec.activate_at);
	if (rec.state == KEYSTATE_RETIRED)
		FUZZ_CHECK(rec.retired_at >= rec.activate_at);
	else
		FUZZ_CHECK(rec.retired_at == 0);
	FUZZ_CHECK(keystate_format(&rec, buf, sizeof(buf), &len) == 0);
	FUZZ_CHECK(len == size && memcmp(buf, data, size) == 0);
	FUZZ_CHECK(keystate_parse(buf, len, &again) == 0);
	FUZZ_CHECK(memcmp(&again, &rec, sizeof(rec)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *image;

	check_decode(data, size);
	check_image(data, size);
	image = malloc(REGISTRY_MAGIC_LEN + size + 1);
	FUZZ_CHECK(image != NULL);
	memcpy(image, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	if (size > 0)
		memcpy(image + REGISTRY_MAGIC_LEN, data, size);
	check_image(image, REGISTRY_MAGIC_LEN + size);
	free(image);
	check_keystate(data, size);
	return 0;
}
