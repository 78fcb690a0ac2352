/* Recovery at open: registry.log read back into the index (mapped, scanned
 * frame by frame, the pages behind the scan given back), a torn tail
 * truncated, a corrupt file refused, and an empty file given its magic.
 * Separate from registry.c because it runs once, before the flusher starts,
 * and is the only reader of the file. */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hsmjwt/log.h"
#include "registry_internal.h"

/* While the file is read at open, pages behind the scan are given back in
 * steps of this size, so that the file image never sits in RSS whole. */
#define REGISTRY_READ_WINDOW ((size_t)16 << 20)
#define REGISTRY_REPAIR "hsmjwtctl registry check --repair"

struct registry_load {
	struct registry *reg;
	const uint8_t *base;
	size_t released;               /* bytes of the map given back */
	size_t page;
	uint32_t next_idx;
	uint64_t orphans;              /* STATUS frames of unknown jtis */
	int logged;
};

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
int registry_load(struct registry *reg, size_t size)
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
int registry_init_file(struct registry *reg)
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
