/* hsmjwtctl: the operator's tool.  It talks to the token directly with the
 * daemon's configuration: holding the PIN is the root of trust. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/jwt.h"
#include "hsmjwt/keys.h"
#include "hsmjwt/log.h"
#include "hsmjwt/registry.h"
#include "hsmjwt/service.h"

#include "hsmjwtctl.h"

int ctl_open(struct ctl *ctl)
{
	int r;

	if (ctl->hsm != NULL)
		return 0;
	/* One login per run: a PIN the token refused is never tried twice. */
	if (ctl->open_failed)
		return -1;
	r = service_open_token(&ctl->cfg, 0, &ctl->hsm);
	if (r == HSM_E_PIN) {
		fprintf(stderr, "hsmjwtctl: token `%s' refused the PIN (see the log line above); fix pin_file or "
				"HSMJWT_PIN before the next try: every wrong try counts towards the token locking "
				"the PIN\n", ctl->cfg.token);
	} else if (r < 0) {
		fprintf(stderr, "hsmjwtctl: cannot open token `%s' (see the log line above)\n", ctl->cfg.token);
	}
	ctl->open_failed = r < 0;
	return r < 0 ? -1 : 0;
}

int ctl_load_keys(struct ctl *ctl, int64_t now, struct keys **ret_keys)
{
	int r;

	if (ctl_open(ctl) < 0)
		return -1;
	r = keys_load(ctl->hsm, &ctl->cfg, now, ret_keys);
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: cannot read keys from the token (error %d)\n", r);
		return -1;
	}
	return 0;
}

static int ctl_is_one_of(const char *const *names, const char *arg)
{
	for (const char *const *n = names; n && *n; n++)
		if (strcmp(*n, arg) == 0)
			return 1;
	return 0;
}

/* The walk below is the one every lookup repeats, so that a value that
 * looks like an option ("--sub --org") is never read as one. */
int ctl_check_options(int argc, char **argv, const char *const *known, const char *const *flags)
{
	for (int i = 0; i < argc; i += ctl_is_one_of(flags, argv[i]) ? 1 : 2) {
		if (!ctl_is_one_of(flags, argv[i]) && (!ctl_is_one_of(known, argv[i]) || i + 1 >= argc)) {
			fprintf(stderr, "hsmjwtctl: unexpected argument `%s'\n", argv[i]);
			return -1;
		}
		for (int j = 0; j < i; j += ctl_is_one_of(flags, argv[j]) ? 1 : 2)
			if (strcmp(argv[i], argv[j]) == 0) {
				fprintf(stderr, "hsmjwtctl: `%s' given twice\n", argv[i]);
				return -1;
			}
	}
	return 0;
}

const char *ctl_option(int argc, char **argv, const char *const *flags, const char *name)
{
	for (int i = 0; i < argc; i += ctl_is_one_of(flags, argv[i]) ? 1 : 2)
		if (!ctl_is_one_of(flags, argv[i]) && i + 1 < argc && strcmp(argv[i], name) == 0)
			return argv[i + 1];
	return NULL;
}

int ctl_flag(int argc, char **argv, const char *const *flags, const char *name)
{
	for (int i = 0; i < argc; i += ctl_is_one_of(flags, argv[i]) ? 1 : 2)
		if (ctl_is_one_of(flags, argv[i]) && strcmp(argv[i], name) == 0)
			return 1;
	return 0;
}

const char *ctl_time(int64_t t, char buf[CTL_TIME_MAX])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t == 0)
		snprintf(buf, CTL_TIME_MAX, "-");
	else if (t == INT64_MAX)
		snprintf(buf, CTL_TIME_MAX, "never");
	else if (gmtime_r(&tt, &tm) == NULL || strftime(buf, CTL_TIME_MAX, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, CTL_TIME_MAX, "@%" PRId64, t);
	return buf;
}

int ctl_print_json(json_t *value)
{
	int r = json_dumpf(value, stdout, JSON_INDENT(2));
	printf("\n");
	return r < 0 ? 1 : 0;
}

/* "admin,tokens:read" → ["admin", "tokens:read"], every name checked. */
static int ctl_parse_roles(const char *list, json_t **ret_roles)
{
	json_t *roles = json_array();
	char *copy = strdup(list), *save = NULL;
	unsigned role;
	int r = 0;

	if (roles == NULL || copy == NULL) {
		r = -ENOMEM;
		goto out;
	}
	for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		if (auth_role_from_name(name, &role) < 0) {
			fprintf(stderr, "hsmjwtctl: unknown role `%s' (tokens:issue tokens:read tokens:revoke "
					"tokens:introspect keys:admin admin)\n", name);
			r = -EINVAL;
			goto out;
		}
		json_array_append_new(roles, json_string(name));
	}
	if (json_array_size(roles) == 0) {
		fprintf(stderr, "hsmjwtctl: --roles names no role\n");
		r = -EINVAL;
		goto out;
	}
	*ret_roles = roles;
	roles = NULL;
out:
	json_decref(roles);
	free(copy);
	return r;
}

/* A --sub or --org that authentication would refuse (empty, longer than
 * auth_bearer copies, not UTF-8) would mint a token nobody can use. */
static int ctl_check_claim(const char *option, const char *value, size_t max)
{
	size_t len = strlen(value);
	json_t *utf8;

	if (len == 0) {
		fprintf(stderr, "hsmjwtctl: %s `' is empty%s\n", option,
			strcmp(option, "--org") == 0 ? "; leave --org out for a token without an org" : "");
		return -1;
	}
	if (len > max) {
		fprintf(stderr, "hsmjwtctl: %s `%.40s...' is %zu bytes long; authentication accepts at most %zu\n",
			option, value, len, max);
		return -1;
	}
	utf8 = json_string(value);
	if (utf8 == NULL) {
		fprintf(stderr, "hsmjwtctl: %s `%s' is not valid UTF-8\n", option, value);
		return -1;
	}
	json_decref(utf8);
	return 0;
}

static int cmd_mint(struct ctl *ctl, int argc, char **argv)
{
	static const char *const known[] = { "--roles", "--org", "--ttl", "--sub", NULL };
	const char *roles_arg = ctl_option(argc, argv, NULL, "--roles");
	const char *org = ctl_option(argc, argv, NULL, "--org");
	const char *ttl_arg = ctl_option(argc, argv, NULL, "--ttl");
	const char *sub = ctl_option(argc, argv, NULL, "--sub");
	struct keys *keys = NULL;
	struct hsm_session *session = NULL;
	json_t *roles = NULL;
	char *token = NULL, *end = NULL;
	long long ttl = 3600;
	int64_t now = (int64_t)time(NULL);
	enum jws_alg alg = ctl->cfg.algorithms[0];
	int status = 1;

	if (ctl_check_options(argc, argv, known, NULL) < 0 || roles_arg == NULL) {
		fprintf(stderr, "usage: hsmjwtctl mint --roles R1,R2 [--org ORG] [--ttl SECONDS] [--sub SUBJECT]\n");
		return 2;
	}
	if ((sub && ctl_check_claim("--sub", sub, AUTH_SUB_MAX) < 0) ||
	    (org && ctl_check_claim("--org", org, AUTH_ORG_MAX) < 0))
		return 2;
	if (ttl_arg) {
		errno = 0;
		ttl = strtoll(ttl_arg, &end, 10);
		if (errno || *end || ttl < 1 || ttl > ctl->cfg.max_ttl) {
			fprintf(stderr, "hsmjwtctl: --ttl `%s' must be 1..max_ttl (%lld)\n", ttl_arg,
				(long long)ctl->cfg.max_ttl);
			return 2;
		}
	}
	if (ctl_parse_roles(roles_arg, &roles) < 0)
		return 2;
	if (ctl_load_keys(ctl, now, &keys) < 0)
		goto out;
	/* A key made here would sign before any relying party could have
	 * fetched it: bootstrapping is keys generate's, or the daemon's. */
	if (keys_signer(keys, alg) == NULL) {
		fprintf(stderr, "hsmjwtctl: no signing key for %s: run hsmjwtctl keys generate --alg %s or start the "
				"daemon once\n", jws_alg_name(alg), jws_alg_name(alg));
		goto out;
	}
	if (hsm_session_open(ctl->hsm, &session) < 0)
		goto out;
	/* Offline: the daemon's registry (which may be running) never hears of it. */
	struct issue_ctx ictx = { &ctl->cfg, keys, session, now, NULL };
	if (issue_mint(&ictx, sub ? sub : "admin", org, roles, ttl, &token) < 0) {
		fprintf(stderr, "hsmjwtctl: signing failed\n");
		goto out;
	}
	printf("%s\n", token);
	status = 0;
out:
	if (token) {
		OPENSSL_cleanse(token, strlen(token));
		free(token);
	}
	hsm_session_close(session);
	keys_release(keys);
	json_decref(roles);
	return status;
}

static int cmd_decode(struct ctl *ctl, int argc, char **argv)
{
	json_t *header = NULL, *claims = NULL, *doc;
	int r;

	if (argc != 1) {
		fprintf(stderr, "usage: hsmjwtctl decode TOKEN\n");
		return 2;
	}
	r = jwt_decode_unverified(argv[0], strlen(argv[0]), &header, &claims);
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: not a decodable JWT (%s)\n", jws_error_reason(r));
		return 1;
	}
	doc = json_pack("{s:o, s:o}", "header", header, "claims", claims);
	r = doc ? ctl_print_json(doc) : 1;
	json_decref(doc);
	return r;
}

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
	struct keys *keys = NULL;
	char *text = NULL;

	if (argc != 0) {
		fprintf(stderr, "hsmjwtctl: status takes no arguments\n");
		return 2;
	}
	if (ctl_load_keys(ctl, (int64_t)time(NULL), &keys) < 0)
		return 1;
	if (hsm_describe(ctl->hsm, &text) < 0) {
		keys_release(keys);
		return 1;
	}
	printf("%s", text);
	ctl_keys_status(ctl, keys);
	free(text);
	keys_release(keys);
	return 0;
}

/* ---- registry check / compact (SPEC §7) -----------------------------------
 * They need the state_dir, not the token: the PIN is never read.  Both take
 * the state_dir lock, so that they never race a daemon writing the file. */

struct ctl_image {
	uint8_t *buf;
	size_t len;
};

static int ctl_registry_path(const struct ctl *ctl, const char *suffix, char *buf, size_t len)
{
	if ((size_t)snprintf(buf, len, "%s/%s%s", ctl->cfg.state_dir, REGISTRY_FILE, suffix) >= len) {
		fprintf(stderr, "hsmjwtctl: state_dir `%s' is too long\n", ctl->cfg.state_dir);
		return -1;
	}
	return 0;
}

static int ctl_lock_state_dir(const struct ctl *ctl, int *ret_fd)
{
	int r = service_lock_state_dir(ctl->cfg.state_dir, ret_fd);

	if (r == -EBUSY)
		fprintf(stderr, "hsmjwtctl: a daemon runs on this state_dir (`%s'): stop it first\n",
			ctl->cfg.state_dir);
	else if (r < 0)
		fprintf(stderr, "hsmjwtctl: cannot lock state_dir `%s': %s\n", ctl->cfg.state_dir, strerror(-r));
	return r < 0 ? -1 : 0;
}

/* Maps path read-only: 0, -ENOENT when there is no file (nothing said), or
 * -1 after a message. */
static int ctl_image_map(const char *path, struct ctl_image *ret_image)
{
	struct stat st;
	void *buf = NULL;
	int fd, r = -1;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT)
		return -ENOENT;
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "hsmjwtctl: cannot read `%s': %s\n", path, strerror(errno));
		goto out;
	}
	if (st.st_size > 0) {
		buf = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (buf == MAP_FAILED) {
			fprintf(stderr, "hsmjwtctl: cannot map `%s': %s\n", path, strerror(errno));
			goto out;
		}
	}
	ret_image->buf = buf;
	ret_image->len = (size_t)st.st_size;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	return r;
}

static void ctl_image_unmap(struct ctl_image *image)
{
	if (image->len > 0)
		munmap(image->buf, image->len);
}

/* What registry_salvage keeps, written to out when out is not NULL. */
struct ctl_salvage {
	FILE *out;
	uint64_t frames;
	uint64_t last_seq;
};

static int ctl_salvage_each(void *arg, const struct registry_entry *e, size_t offset)
{
	struct ctl_salvage *s = arg;
	uint8_t frame[REGISTRY_FRAME_HEADER + REGISTRY_MAX_BODY];
	size_t len;
	int r;

	/* The decoder accepts only what the encoder writes, so that encoding
	 * the entry again gives the frame's exact bytes back. */
	if (s->out != NULL) {
		r = registry_encode(e, frame, sizeof(frame), &len);
		if (r < 0)
			return r;
		if (fwrite(frame, 1, len, s->out) != len)
			return -EIO;
	}
	s->frames++;
	s->last_seq = e->seq;
	return 0;
}

static int ctl_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

	if (fd < 0 || fsync(fd) < 0) {
		fprintf(stderr, "hsmjwtctl: cannot fsync `%s': %s\n", dir, strerror(errno));
		r = -1;
	}
	if (fd >= 0)
		close(fd);
	return r;
}

/* Writes the salvage of image to registry.log.new, fsyncs, renames it over
 * registry.log and fsyncs the directory: a crash leaves the old file or
 * the new one, never half of one. */
static int ctl_registry_rewrite(const struct ctl *ctl, const struct ctl_image *image, struct ctl_salvage *ret_kept,
				size_t *ret_skipped)
{
	char path[4096], tmp[4096];
	struct ctl_salvage kept = { NULL, 0, 0 };
	size_t skipped = 0;
	int fd = -1, r = -1, closed;

	if (ctl_registry_path(ctl, "", path, sizeof(path)) < 0 || ctl_registry_path(ctl, ".new", tmp, sizeof(tmp)) < 0)
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || (kept.out = fdopen(fd, "wb")) == NULL) {
		fprintf(stderr, "hsmjwtctl: cannot create `%s': %s\n", tmp, strerror(errno));
		goto out;
	}
	fd = -1;   /* kept.out owns it */
	if (fwrite(REGISTRY_MAGIC, 1, REGISTRY_MAGIC_LEN, kept.out) != REGISTRY_MAGIC_LEN ||
	    registry_salvage(image->buf, image->len, ctl_salvage_each, &kept, &skipped) < 0 ||
	    fflush(kept.out) != 0 || fsync(fileno(kept.out)) < 0) {
		fprintf(stderr, "hsmjwtctl: cannot write `%s': %s\n", tmp, strerror(errno));
		goto out;
	}
	closed = fclose(kept.out);
	kept.out = NULL;
	if (closed != 0 || rename(tmp, path) < 0) {
		fprintf(stderr, "hsmjwtctl: cannot replace `%s' with `%s': %s\n", path, tmp, strerror(errno));
		goto out;
	}
	if (ctl_fsync_dir(ctl->cfg.state_dir) < 0)
		goto out;
	*ret_kept = kept;
	*ret_skipped = skipped;
	r = 0;
out:
	if (kept.out != NULL)
		fclose(kept.out);
	if (fd >= 0)
		close(fd);
	if (r < 0)
		unlink(tmp);
	return r;
}

static int ctl_registry_repair(const struct ctl *ctl, const struct ctl_image *image)
{
	struct ctl_salvage kept;
	size_t skipped;

	if (ctl_registry_rewrite(ctl, image, &kept, &skipped) < 0)
		return 1;
	printf("repaired:   kept %" PRIu64 " frames (last seq %" PRIu64 "), dropped %zu bytes\n", kept.frames,
	       kept.last_seq, skipped);
	return 0;
}

/* The verdict in words, and what to do unless repairing; 0 for a clean
 * file, else 1. */
static int ctl_registry_report(const struct ctl *ctl, const struct ctl_image *image, const struct registry_scan *s,
			       int repairing)
{
	const char *config = ctl->config_path ? " --config " : "";
	const char *config_path = ctl->config_path ? ctl->config_path : "";
	struct ctl_salvage would = { NULL, 0, 0 };
	size_t skipped = 0;

	printf("frames:     %" PRIu64 "\nlast seq:   %" PRIu64 "\nbytes:      %zu\n", s->frames, s->last_seq, image->len);
	switch (s->verdict) {
	case REGISTRY_CLEAN:
		printf("verdict:    clean\n");
		return 0;
	case REGISTRY_TORN_TAIL:
		printf("verdict:    torn tail at offset %zu (%zu bytes after the last good frame)\n", s->bad_offset,
		       image->len - s->bad_offset);
		if (!repairing)
			printf("The daemon truncates it there when it starts; `hsmjwtctl%s%s registry check --repair' "
			       "does it now.\n", config, config_path);
		return 1;
	case REGISTRY_CORRUPT:
		printf("verdict:    corrupt at offset %zu\n", s->bad_offset);
		if (repairing)
			return 1;
		registry_salvage(image->buf, image->len, ctl_salvage_each, &would, &skipped);
		printf("The daemon refuses to start.  Keep a copy of the file, then run `hsmjwtctl%s%s registry "
		       "check --repair': it keeps the %" PRIu64 " good frames and drops %zu bytes.\n",
		       config, config_path, would.frames, skipped);
		return 1;
	}
	return 1;
}

static int cmd_registry_check(struct ctl *ctl, int argc, char **argv)
{
	static const char *const flags[] = { "--repair", NULL };
	struct ctl_image image = { NULL, 0 };
	struct registry_scan scan;
	char path[4096];
	int lock = -1, status = 1, repair, r;

	if (ctl_check_options(argc, argv, NULL, flags) < 0) {
		fprintf(stderr, "usage: hsmjwtctl registry check [--repair]\n");
		return 2;
	}
	if (ctl_registry_path(ctl, "", path, sizeof(path)) < 0 || ctl_lock_state_dir(ctl, &lock) < 0)
		goto out;
	r = ctl_image_map(path, &image);
	if (r == -ENOENT) {
		printf("no registry yet (%s)\n", path);
		status = 0;
		goto out;
	}
	if (r < 0)
		goto out;
	repair = ctl_flag(argc, argv, flags, "--repair");
	registry_scan(image.buf, image.len, NULL, NULL, &scan);
	printf("registry:   %s\n", path);
	status = ctl_registry_report(ctl, &image, &scan, repair);
	if (status != 0 && repair)
		status = ctl_registry_repair(ctl, &image);
	ctl_image_unmap(&image);
out:
	if (lock >= 0)
		close(lock);
	return status;
}

static int cmd_registry_compact(struct ctl *ctl, int argc, char **argv)
{
	struct registry *reg = NULL;
	struct registry_stats before, after;
	char path[4096];
	int lock = -1, status = 1, r;

	if (argc != 0) {
		fprintf(stderr, "hsmjwtctl: registry compact takes no arguments\n");
		return 2;
	}
	if (ctl_registry_path(ctl, "", path, sizeof(path)) < 0 || ctl_lock_state_dir(ctl, &lock) < 0)
		goto out;
	/* registry_open would create an empty registry: not what was asked. */
	if (access(path, F_OK) < 0 && errno == ENOENT) {
		printf("no registry yet (%s)\n", path);
		status = 0;
		goto out;
	}
	r = registry_open(ctl->cfg.state_dir, REGISTRY_FSYNC_ALWAYS, ctl->cfg.leeway, &reg);
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: cannot open the registry `%s' (error %d, see the log line above)\n", path, r);
		goto out;
	}
	registry_get_stats(reg, &before);
	r = registry_compact(reg, (int64_t)time(NULL), &after);
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: compacting `%s' failed (error %d, see the log line above)\n", path, r);
		goto out;
	}
	printf("registry:   %s\n"
	       "records:    %" PRIu64 " before, %" PRIu64 " after\n"
	       "frames:     %" PRIu64 " before, %" PRIu64 " after\n"
	       "file bytes: %" PRIu64 " before, %" PRIu64 " after\n",
	       path, before.records, after.records, before.frames, after.frames, before.file_bytes, after.file_bytes);
	status = 0;
out:
	registry_close(reg);
	if (lock >= 0)
		close(lock);
	return status;
}

static const struct {
	const char *name;
	const char *sub;
	int (*run)(struct ctl *, int, char **);
	const char *help;
} commands[] = {
	{ "keys", "list", cmd_keys_list, "keys list [--json]" },
	{ "keys", "generate", cmd_keys_generate, "keys generate --alg ALG" },
	{ "keys", "rotate", cmd_keys_rotate, "keys rotate [--alg ALG] [--immediate]" },
	{ "keys", "retire", cmd_keys_retire, "keys retire KID" },
	{ "keys", "destroy", cmd_keys_destroy, "keys destroy KID [--force]" },
	{ "jwks", NULL, cmd_jwks, "jwks" },
	{ "mint", NULL, cmd_mint, "mint --roles R1,R2 [--org ORG] [--ttl SECONDS] [--sub SUBJECT]" },
	{ "decode", NULL, cmd_decode, "decode TOKEN" },
	{ "verify", NULL, cmd_verify, "verify TOKEN|- [--jwks URL|FILE] [--audience A] [--issuer I] "
				      "[--token-type T] [--cache FILE]" },
	{ "status", NULL, cmd_status, "status" },
	{ "registry", "check", cmd_registry_check, "registry check [--repair]" },
	{ "registry", "compact", cmd_registry_compact, "registry compact" },
};

static void usage(FILE *out)
{
	fprintf(out, "usage: hsmjwtctl [--config FILE] COMMAND\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %s\n", commands[i].help);
	fprintf(out, "ALG is one of %s.\n"
		     "keys generate only bootstraps an ALG without a signing key (it has no --force any more);\n"
		     "further keys come from keys rotate, published publish_ahead before they sign, or at once\n"
		     "with --immediate.  keys destroy refuses while tokens the key signed may be live.\n",
		ctl_key_algs());
	fprintf(out, "verify checks a token offline against the JWKS (default: the issuer's), never opening\n"
		     "the token; it caches the fetched JWKS under $XDG_CACHE_HOME/hsmjwt (or ~/.cache).\n");
	fprintf(out, "The configuration is the daemon's: --config and HSMJWT_<KEY> variables.\n");
}

int main(int argc, char **argv)
{
	struct ctl ctl;
	const char *config_path = NULL;
	int i = 1, status;

	memset(&ctl, 0, sizeof(ctl));
	/* It reads the PIN and logs in like the daemon. */
	if (service_harden_process() < 0)
		return 1;
	if (i + 1 < argc && (strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0)) {
		config_path = argv[i + 1];
		ctl.config_path = config_path;
		i += 2;
	}
	if (i >= argc || strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
		usage(i >= argc ? stderr : stdout);
		return i >= argc ? 2 : 0;
	}
	for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
		int consumed = commands[c].sub ? 2 : 1;
		if (strcmp(argv[i], commands[c].name) != 0)
			continue;
		if (commands[c].sub && (i + 1 >= argc || strcmp(argv[i + 1], commands[c].sub) != 0))
			continue;
		/* The decode command needs no token and no configuration. */
		if (commands[c].run != cmd_decode) {
			if (service_load_config(&ctl.cfg, config_path) < 0)
				return 1;
			ctl.cfg_loaded = 1;
			/* The daemon's info lines ("token opened") are noise around a
			 * command's output; warnings and errors still show. */
			if (ctl.cfg.log_level < LOG_LEVEL_DEBUG)
				log_set_level(ctl.cfg.log_level < LOG_LEVEL_WARN ? ctl.cfg.log_level : LOG_LEVEL_WARN);
		}
		status = commands[c].run(&ctl, argc - i - consumed, argv + i + consumed);
		hsm_close(ctl.hsm);
		if (ctl.cfg_loaded)
			config_free(&ctl.cfg);
		return status;
	}
	fprintf(stderr, "hsmjwtctl: unknown command `%s'\n", argv[i]);
	usage(stderr);
	return 2;
}
