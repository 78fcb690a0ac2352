/* seed_registry DIR: writes the registry seeds of fuzz_registry's corpus,
 * made by the project's own encoders — single frames of each kind, file
 * images (magic and frames, a torn tail, a corrupt middle) and key
 * lifecycle records of each state.  tests/fuzz/make-corpus.sh runs it;
 * its output is committed, so a fresh clone has the corpus without it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsmjwt/keystate.h"
#include "hsmjwt/registry_codec.h"

static const char *dir;

static void write_seed(const char *name, const void *buf, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "seed_registry: cannot write %s\n", path);
		exit(1);
	}
}

static size_t encode(const struct registry_entry *e, uint8_t *buf, size_t size)
{
	size_t len = 0;

	if (registry_encode(e, buf, size, &len) < 0) {
		fprintf(stderr, "seed_registry: registry_encode refused seq %llu\n", (unsigned long long)e->seq);
		exit(1);
	}
	return len;
}

static void entries(struct registry_entry *e, size_t n)
{
	memset(e, 0, n * sizeof(*e));
	e[0].seq = 1;
	e[0].kind = REGISTRY_KIND_META;
	e[0].next_status_idx = 42;

	e[1].seq = 2;
	e[1].kind = REGISTRY_KIND_TOKEN;
	strcpy(e[1].jti, "Yk3bH0x9R5uWcQ2nV8aLzA");
	e[1].status = REGISTRY_ACTIVE;
	e[1].at = 1700000000;
	e[1].type = REGISTRY_TYPE_ACCESS;
	strcpy(e[1].org, "acme");
	strcpy(e[1].subject, "alice@example.com");
	strcpy(e[1].client_id, "web-app");
	strcpy(e[1].kid, "xzx28CmKSWNDHtf4zBJfr02fRyeiFEKl3BshegSR0aA");
	e[1].exp = 1700003600;
	e[1].status_idx = 7;

	e[2].seq = 3;
	e[2].kind = REGISTRY_KIND_TOKEN;
	strcpy(e[2].jti, "c2hpbGQtb2YtcGFyZW50MQ");
	e[2].status = REGISTRY_ACTIVE;
	e[2].at = 1700000100;
	e[2].type = REGISTRY_TYPE_CHILD;
	strcpy(e[2].subject, "service-a");
	strcpy(e[2].name, "nightly batch");
	strcpy(e[2].description, "child of the batch parent, renewed automatically");
	strcpy(e[2].parent, "cGFyZW50LWp0aS0wMDAwMQ");
	strcpy(e[2].family, "cGFyZW50LWp0aS0wMDAwMQ");
	e[2].exp = 1700001000;
	e[2].status_idx = REGISTRY_NO_INDEX;

	e[3].seq = 4;
	e[3].kind = REGISTRY_KIND_STATUS;
	strcpy(e[3].jti, "Yk3bH0x9R5uWcQ2nV8aLzA");
	e[3].status = REGISTRY_REVOKED;
	e[3].at = 1700000200;
	strcpy(e[3].reason, "key compromise");

	e[4].seq = 5;
	e[4].kind = REGISTRY_KIND_TOKEN;
	strcpy(e[4].jti, "dW5yZWdpc3RlcmVkLWp0aQ");
	e[4].status = REGISTRY_REVOKED;
	e[4].at = 1700000300;
	e[4].type = REGISTRY_TYPE_UNREGISTERED;
	e[4].status_idx = REGISTRY_NO_INDEX;

	e[5].seq = 6;
	e[5].kind = REGISTRY_KIND_STATUS;
	strcpy(e[5].jti, "c2hpbGQtb2YtcGFyZW50MQ");
	e[5].status = REGISTRY_SUSPENDED;
	e[5].at = 1700000400;
}

int main(int argc, char **argv)
{
	static uint8_t image[8 * (REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY)];
	static uint8_t frame[REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY];
	struct registry_entry e[6];
	char name[64], rec[KEYSTATE_RECORD_MAX + 1];
	size_t len, off = 0, mid = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: seed_registry DIR\n");
		return 2;
	}
	dir = argv[1];
	entries(e, 6);

	/* Each frame alone, and all of them as a clean file image. */
	memcpy(image, REGISTRY_MAGIC, REGISTRY_MAGIC_LEN);
	off = REGISTRY_MAGIC_LEN;
	for (size_t i = 0; i < 6; i++) {
		len = encode(&e[i], frame, sizeof(frame));
		snprintf(name, sizeof(name), "frame-%zu", i + 1);
		write_seed(name, frame, len);
		memcpy(image + off, frame, len);
		off += len;
		if (i == 2)
			mid = off;
	}
	write_seed("image-clean", image, off);
	/* A torn tail: the last frame cut short. */
	write_seed("image-torn", image, off - 5);
	/* A flipped byte in the middle, good frames after it. */
	image[mid + REGISTRY_FRAME_HEADER + 3] ^= 0x20;
	write_seed("image-corrupt", image, off);

	/* Lifecycle records: next, active, retired. */
	{
		const struct keystate_record recs[] = {
			{ KEYSTATE_NEXT, JWS_ALG_ES256, 1700000000, 1700003602, 0 },
			{ KEYSTATE_ACTIVE, JWS_ALG_RS256, 1690000000, 1690000000, 0 },
			{ KEYSTATE_RETIRED, JWS_ALG_EDDSA, 1680000000, 1680003602, 1690000000 },
			{ KEYSTATE_ACTIVE, JWS_ALG_HS256, 0, 0, 0 },
		};
		for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
			if (keystate_format(&recs[i], rec, sizeof(rec), &len) < 0) {
				fprintf(stderr, "seed_registry: keystate_format refused record %zu\n", i);
				return 1;
			}
			snprintf(name, sizeof(name), "keystate-%zu", i + 1);
			write_seed(name, rec, len);
		}
	}
	return 0;
}
