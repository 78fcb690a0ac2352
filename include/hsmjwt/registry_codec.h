/* registry_codec: the record format of state_dir/registry.log (SPEC §7), as
 * pure functions over buffers, so that the format can be unit-tested and
 * fuzzed without a file.
 *
 * File:  REGISTRY_MAGIC (8 bytes), then frames back to back.
 * Frame: u32 body length | u32 masked CRC32C of the body | body   (8 bytes
 *        of header; all integers little-endian)
 * Body:  u64 seq | u8 kind | kind-specific fields, in this order:
 *        TOKEN  str jti | u8 status | i64 at | u8 type | str org | str subject |
 *               str name | str description | str client_id | str kid |
 *               str parent | str family | i64 exp | u32 status_idx
 *        STATUS str jti | u8 status | i64 at | str reason
 *        META   u32 next_status_idx
 *
 * seq starts at 1 and strictly increases through the file: it orders
 * records, and a frame whose seq does not follow its predecessor is
 * corruption, not data.  The
 * CRC is masked as LevelDB does, so a file of CRCs of CRCs cannot look valid.
 * Strings are u16 length + bytes (no NUL inside); every string has a maximum
 * below, so one body never exceeds REGISTRY_MAX_BODY.
 *
 * Kinds:
 *  TOKEN  a token was registered (issued, or a revocation of a jti the
 *         registry had never seen: type UNREGISTERED, status REVOKED);
 *  STATUS a token's status changed (supersedes the status of earlier frames);
 *  META   the first frame of a compacted file: the status-list index high
 *         water mark, because compaction drops the records that showed it and
 *         indices are never reused. */
#ifndef HSMJWT_REGISTRY_CODEC_H
#define HSMJWT_REGISTRY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define REGISTRY_MAGIC "HSMJWTR1"
#define REGISTRY_MAGIC_LEN 8
#define REGISTRY_FRAME_HEADER 8          /* length + crc */
#define REGISTRY_MAX_BODY 4096

#define REGISTRY_JTI_MAX 64
#define REGISTRY_ORG_MAX 128
#define REGISTRY_SUBJECT_MAX 256
#define REGISTRY_NAME_MAX 128
#define REGISTRY_DESCRIPTION_MAX 1024
#define REGISTRY_CLIENT_ID_MAX 256
#define REGISTRY_KID_MAX 64
#define REGISTRY_REASON_MAX 128

#define REGISTRY_NO_INDEX UINT32_MAX     /* a record without a status-list entry */

enum registry_kind {
	REGISTRY_KIND_TOKEN = 1,
	REGISTRY_KIND_STATUS = 2,
	REGISTRY_KIND_META = 3,
};

enum registry_status {
	REGISTRY_ACTIVE = 0,
	REGISTRY_SUSPENDED = 1,
	REGISTRY_REVOKED = 2,   /* final */
	REGISTRY_DELETED = 3,   /* final; revoked and hidden from lists */
};

enum registry_type {
	REGISTRY_TYPE_ACCESS = 0,
	REGISTRY_TYPE_REFRESH = 1,
	REGISTRY_TYPE_ID = 2,
	REGISTRY_TYPE_PARENT = 3,
	REGISTRY_TYPE_CHILD = 4,
	REGISTRY_TYPE_UNREGISTERED = 5,   /* revoked before the registry knew it */
};

/* One decoded frame.  Strings are NUL-terminated copies ("" when absent). */
struct registry_entry {
	uint64_t seq;
	enum registry_kind kind;
	char jti[REGISTRY_JTI_MAX + 1];
	enum registry_status status;      /* TOKEN: initial status; STATUS: new one */
	int64_t at;                       /* TOKEN: iat; STATUS: when it changed */
	/* TOKEN only */
	enum registry_type type;
	char org[REGISTRY_ORG_MAX + 1];
	char subject[REGISTRY_SUBJECT_MAX + 1];
	char name[REGISTRY_NAME_MAX + 1];
	char description[REGISTRY_DESCRIPTION_MAX + 1];
	char client_id[REGISTRY_CLIENT_ID_MAX + 1];
	char kid[REGISTRY_KID_MAX + 1];
	char parent[REGISTRY_JTI_MAX + 1];   /* parent_jti of a child token */
	char family[REGISTRY_JTI_MAX + 1];   /* first refresh token's jti */
	int64_t exp;
	uint32_t status_idx;              /* REGISTRY_NO_INDEX when none */
	/* STATUS only */
	char reason[REGISTRY_REASON_MAX + 1];
	/* META only */
	uint32_t next_status_idx;
};

/* CRC32C (Castagnoli), and the mask stored in frames. */
uint32_t registry_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t registry_crc_mask(uint32_t crc);

/* Encodes e as one frame into buf (at most REGISTRY_FRAME_HEADER +
 * REGISTRY_MAX_BODY bytes).  -EINVAL when a string is too long or holds a
 * NUL, a kind/status/type is out of range, the seq is 0, or the jti is empty
 * (TOKEN, STATUS); -ENOBUFS when buflen is too small.  buf is untouched on
 * failure. */
int registry_encode(const struct registry_entry *e, uint8_t *buf, size_t buflen, size_t *ret_len);

/* Decodes the frame at buf.  0, *ret_entry and *ret_len (bytes consumed);
 * -EAGAIN when buf ends before the frame does (a torn tail, if it is the
 * end of the file); -EBADMSG for a bad length, checksum or field. */
int registry_decode(const uint8_t *buf, size_t len, struct registry_entry *ret_entry, size_t *ret_len);

/* What a scan of a whole file image found. */
enum registry_verdict {
	REGISTRY_CLEAN,        /* every byte belongs to a good frame */
	REGISTRY_TORN_TAIL,    /* good frames, then an incomplete or bad tail with
				* no good frame after it: truncate at bad_offset */
	REGISTRY_CORRUPT,      /* a bad frame (or a seq out of order) followed
				* by good frames, or a bad magic: refuse */
};

struct registry_scan {
	enum registry_verdict verdict;
	size_t good_end;       /* offset after the last good frame before any damage */
	size_t bad_offset;     /* first damaged byte (TORN_TAIL, CORRUPT) */
	uint64_t frames;       /* good frames before bad_offset */
	uint64_t last_seq;     /* seq of the last of them (0: none) */
};

/* Scans a file image (magic included; an empty image is CLEAN with no
 * frames), calling each(arg, entry, offset) for every good frame up to the
 * damage, in file order; a negative return from each stops the scan and is
 * returned; each may be NULL.  Always fills *ret_scan when it returns 0. */
int registry_scan(const uint8_t *buf, size_t len,
		  int (*each)(void *arg, const struct registry_entry *e, size_t offset), void *arg,
		  struct registry_scan *ret_scan);

/* Salvage for `hsmjwtctl registry check --repair`: like registry_scan, but
 * past damage it resynchronises on the next good frame whose seq follows the
 * last one kept, calling each for every good frame in the image.
 * *ret_skipped_bytes counts the bytes dropped. */
int registry_salvage(const uint8_t *buf, size_t len,
		     int (*each)(void *arg, const struct registry_entry *e, size_t offset), void *arg,
		     size_t *ret_skipped_bytes);

const char *registry_status_name(enum registry_status status);
int registry_status_from_name(const char *name, enum registry_status *ret_status);
const char *registry_type_name(enum registry_type type);
int registry_type_from_name(const char *name, enum registry_type *ret_type);

#endif
