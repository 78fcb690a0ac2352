/* faultp11: a PKCS#11 module for tests that forwards every call to a real
 * module and fails on command, so that a test can make the token fail under
 * a running process (hsmjwtd) and clear the fault again without restarting
 * it.
 *
 * Built (HSMJWT_TESTS) as <build>/tests/faultp11/libfaultp11.so; point the
 * host at it (HSMJWT_PKCS11_MODULE=..., pkcs11-tool --module ...) with
 * SOFTHSM2_CONF set as usual: the real module reads its own environment.
 * test_faultp11.py shows every command at work.
 *
 * Environment (read once, when the module is loaded):
 *   FAULTP11_TARGET   the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   FAULTP11_CONTROL  the control file; unset: forward everything, always
 *   FAULTP11_STATS    optional: a file rewritten (temp + rename) whenever the
 *                     state changes, a once-fault fires, an action runs,
 *                     a call enters or leaves a hang, or C_Login is called:
 *                       pid N            the process writing (every process
 *                                        that loads the module writes its own)
 *                       version N        control file versions seen (0: none)
 *                       command TEXT     the command in force ("forward",
 *                                        "invalid" for a file not understood)
 *                       fired N          once-faults fired, in total
 *                       actions N        close-sessions/logout actions run
 *                       hanging N        calls blocked right now
 *                       hangs N          calls that have been blocked, in total
 *                       logins N         C_Login calls, whatever they answered
 * Every state change and action is also one line on stderr, "faultp11: ...".
 *
 * The control file holds one command (blank lines and lines starting with
 * '#' are ignored; CKR_X is a name from the table below or a number such as
 * 0x30):
 *   (missing, empty, "forward")  forward everything
 *   error CKR_X       every call but C_Finalize, C_GetFunctionList and
 *                     C_GetInfo returns CKR_X without reaching the module
 *                     (C_Initialize too: a recovery keeps failing until the
 *                     fault is cleared)
 *   error-sign CKR_X  only C_SignInit, C_Sign, C_VerifyInit, C_Verify fail
 *   once CKR_X        the next C_SignInit or C_Sign fails with CKR_X, once
 *                     per file version; everything else forwards
 *   close-sessions    once per file version, on the next call while the
 *                     module is initialised: the real C_CloseAllSessions on
 *                     every slot with a token (sessions invalid and logged
 *                     out, like an HSM reboot); then forward
 *   logout [CKR_X]    once per file version, likewise: the real C_Logout on
 *                     a session the module saw opened and not yet closed,
 *                     once per slot; then forward (the real module answers
 *                     CKR_USER_NOT_LOGGED_IN where a login is needed) —
 *                     except that with CKR_X every C_Login answers CKR_X
 *                     while the command is in force (a token that logged the
 *                     process out and now refuses its PIN)
 *   login-error CKR_X every C_Login answers CKR_X without reaching the
 *                     module (a PIN the token refuses: CKR_PIN_INCORRECT,
 *                     CKR_PIN_LOCKED...); everything else forwards
 *   hang              every call but C_Finalize and C_GetFunctionList blocks
 *                     (20 ms steps, re-reading the file) until the file says
 *                     something else, then goes on as the new command says;
 *                     a call never blocks for more than 120 s in all
 *   hang-sign         only C_SignInit and C_Sign block like that
 * A file that does not parse is logged and forwards everything.
 *
 * Write the file atomically (a temporary file, then rename).  The module
 * stats it on every call and reads it again only when its device, inode,
 * size, mtime or ctime changed — or while its mtime is less than 100 ms old,
 * because a rewrite within one timestamp tick can leave all of those as they
 * were (then the content decides).  A "version" is one such change: writing
 * the same once/close-sessions/logout command again (a new file) re-arms it.
 *
 * Thread safety: a mutex serialises the reload, the stats file and the
 * session table; the command in force and the once/action flags are atomics
 * that the calls read without the lock.  No allocation on any call. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define FAULTP11_DEFAULT_TARGET "/usr/lib/softhsm/libsofthsm2.so"
#define FAULTP11_FILE_MAX 256          /* a longer control file is invalid */
#define FAULTP11_HANG_STEP_MS 20
#define FAULTP11_HANG_CAP_MS 120000
#define FAULTP11_RACY_NS 100000000LL  /* re-read a file younger than this */
#define FAULTP11_MAX_SESSIONS 256
#define FAULTP11_MAX_SLOTS 64

enum faultp11_mode {
	FAULTP11_FORWARD,
	FAULTP11_ERROR,
	FAULTP11_ERROR_SIGN,
	FAULTP11_ONCE,
	FAULTP11_CLOSE_SESSIONS,
	FAULTP11_LOGOUT,
	FAULTP11_HANG,
	FAULTP11_HANG_SIGN,
	FAULTP11_LOGIN_ERROR,
	FAULTP11_INVALID,
};

/* What a call is, for the commands that single some out. */
enum faultp11_class {
	FAULTP11_CALL_OTHER,
	FAULTP11_CALL_INIT,    /* C_Initialize: no actions before it */
	FAULTP11_CALL_INFO,    /* C_GetInfo: hang only */
	FAULTP11_CALL_SIGN,    /* C_SignInit, C_Sign */
	FAULTP11_CALL_VERIFY,  /* C_VerifyInit, C_Verify */
	FAULTP11_CALL_LOGIN,   /* C_Login */
};

struct faultp11_key {
	int present;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct faultp11_session {
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE handle;
};

static pthread_once_t faultp11_once_load = PTHREAD_ONCE_INIT;
static CK_RV faultp11_load_rv = CKR_GENERAL_ERROR;
static CK_FUNCTION_LIST *faultp11_real;
static CK_FUNCTION_LIST faultp11_list;
static char faultp11_control[4096];  /* "" when FAULTP11_CONTROL is unset */
static char faultp11_stats[4096];

static pthread_mutex_t faultp11_lock = PTHREAD_MUTEX_INITIALIZER;
/* Under faultp11_lock: */
static struct faultp11_key faultp11_file_key;
static int faultp11_racy;
static char faultp11_content[FAULTP11_FILE_MAX + 1];
static size_t faultp11_content_len;
static char faultp11_command[FAULTP11_FILE_MAX + 1] = "forward";
static struct faultp11_session faultp11_sessions[FAULTP11_MAX_SESSIONS];
static size_t faultp11_session_count;
static int faultp11_sessions_overflow_logged;

/* The command in force: mode << 32 | code, one atomic so that a call never
 * sees one version's mode with another's code. */
static _Atomic uint64_t faultp11_state;
static atomic_uint faultp11_version;
static atomic_int faultp11_once_armed;
static atomic_int faultp11_action_armed;
static atomic_int faultp11_initialized;
static atomic_uint faultp11_fired;
static atomic_uint faultp11_actions;
static atomic_uint faultp11_hanging;
static atomic_uint faultp11_hangs;
static atomic_uint faultp11_logins;

static const struct {
	CK_RV rv;
	const char *name;
} faultp11_codes[] = {
	{ CKR_CANCEL, "CKR_CANCEL" },
	{ CKR_HOST_MEMORY, "CKR_HOST_MEMORY" },
	{ CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID" },
	{ CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR" },
	{ CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED" },
	{ CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD" },
	{ CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR" },
	{ CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY" },
	{ CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED" },
	{ CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED" },
	{ CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID" },
	{ CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID" },
	{ CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE" },
	{ CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED" },
	{ CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT" },
	{ CKR_PIN_LOCKED, "CKR_PIN_LOCKED" },
	{ CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED" },
	{ CKR_PIN_INVALID, "CKR_PIN_INVALID" },
	{ CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE" },
	{ CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED" },
	{ CKR_SESSION_COUNT, "CKR_SESSION_COUNT" },
	{ CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID" },
	{ CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY" },
	{ CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID" },
	{ CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE" },
	{ CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT" },
	{ CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED" },
	{ CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED" },
	{ CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN" },
	{ CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN" },
	{ CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED" },
	{ CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG" },
	{ CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL" },
	{ CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED" },
	{ CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED" },
	{ CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED" },
};

static const char *faultp11_rv_name(CK_RV rv)
{
	if (rv == CKR_OK)
		return "CKR_OK";
	for (size_t i = 0; i < sizeof(faultp11_codes) / sizeof(faultp11_codes[0]); i++)
		if (faultp11_codes[i].rv == rv)
			return faultp11_codes[i].name;
	return "CKR_(other)";
}

static void faultp11_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void faultp11_log(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	memcpy(line, "faultp11: ", 10);
	va_start(ap, fmt);
	n = vsnprintf(line + 10, sizeof(line) - 11, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	n = 10 + (n < (int)sizeof(line) - 11 ? n : (int)sizeof(line) - 12);
	line[n++] = '\n';
	/* One write: the lines of several threads (and the host's log) do not
	 * interleave inside a line. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

static uint64_t faultp11_pack(enum faultp11_mode mode, CK_RV code)
{
	return (uint64_t)mode << 32 | (uint64_t)(code & 0xffffffffUL);
}

/* Called with faultp11_lock held. */
static void faultp11_write_stats(void)
{
	char tmp[sizeof(faultp11_stats) + 8];
	char text[FAULTP11_FILE_MAX + 256];
	int fd, n;

	if (faultp11_stats[0] == '\0')
		return;
	n = snprintf(text, sizeof(text),
		     "pid %ld\nversion %u\ncommand %s\nfired %u\nactions %u\nhanging %u\nhangs %u\nlogins %u\n",
		     (long)getpid(), atomic_load(&faultp11_version), faultp11_command, atomic_load(&faultp11_fired),
		     atomic_load(&faultp11_actions), atomic_load(&faultp11_hanging),
		     atomic_load(&faultp11_hangs), atomic_load(&faultp11_logins));
	if (n < 0 || (size_t)n >= sizeof(text))
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", faultp11_stats);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		faultp11_log("cannot write stats file %s: %s", tmp, strerror(errno));
		return;
	}
	if (write(fd, text, (size_t)n) != n) {
		close(fd);
		faultp11_log("cannot write stats file %s", tmp);
		return;
	}
	if (close(fd) != 0) {
		faultp11_log("cannot write stats file %s: %s", tmp, strerror(errno));
		return;
	}
	if (rename(tmp, faultp11_stats) != 0)
		faultp11_log("cannot rename %s: %s", tmp, strerror(errno));
}

static void faultp11_stats_event(void)
{
	pthread_mutex_lock(&faultp11_lock);
	faultp11_write_stats();
	pthread_mutex_unlock(&faultp11_lock);
}

static int faultp11_parse_code(const char *word, CK_RV *ret_code)
{
	char *end;
	unsigned long v;

	for (size_t i = 0; i < sizeof(faultp11_codes) / sizeof(faultp11_codes[0]); i++) {
		if (strcmp(faultp11_codes[i].name, word) == 0) {
			*ret_code = faultp11_codes[i].rv;
			return 0;
		}
	}
	if (word[0] < '0' || word[0] > '9')
		return -1;
	errno = 0;
	v = strtoul(word, &end, 0);
	/* CKR_OK would make a fault that is no fault. */
	if (errno != 0 || *end != '\0' || v == CKR_OK || v > 0xffffffffUL)
		return -1;
	*ret_code = v;
	return 0;
}

/* The command in text[0..len): its mode and code, and in command[] the line
 * itself for the log and the stats file.  Pure. */
static enum faultp11_mode faultp11_parse(const char *text, size_t len, CK_RV *ret_code,
					 char command[static FAULTP11_FILE_MAX + 1])
{
	/* takes_code: 0 none, 1 required, 2 optional. */
	static const struct {
		const char *word;
		enum faultp11_mode mode;
		int takes_code;
	} words[] = {
		{ "forward", FAULTP11_FORWARD, 0 },
		{ "error", FAULTP11_ERROR, 1 },
		{ "error-sign", FAULTP11_ERROR_SIGN, 1 },
		{ "once", FAULTP11_ONCE, 1 },
		{ "close-sessions", FAULTP11_CLOSE_SESSIONS, 0 },
		{ "logout", FAULTP11_LOGOUT, 2 },
		{ "hang", FAULTP11_HANG, 0 },
		{ "hang-sign", FAULTP11_HANG_SIGN, 0 },
		{ "login-error", FAULTP11_LOGIN_ERROR, 1 },
	};
	char buf[FAULTP11_FILE_MAX + 1];
	char *line = NULL, *save = NULL, *word, *arg, *extra;
	CK_RV code = CKR_OK;

	memcpy(buf, text, len);
	buf[len] = '\0';
	for (char *l = strtok_r(buf, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
		l += strspn(l, " \t\r");
		if (*l != '\0' && *l != '#') {
			if (line != NULL) {
				snprintf(command, FAULTP11_FILE_MAX + 1, "invalid (more than one command)");
				return FAULTP11_INVALID;
			}
			line = l;
		}
	}
	if (line == NULL) {
		snprintf(command, FAULTP11_FILE_MAX + 1, "forward");
		*ret_code = CKR_OK;
		return FAULTP11_FORWARD;
	}
	word = strtok_r(line, " \t\r", &save);
	arg = strtok_r(NULL, " \t\r", &save);
	extra = strtok_r(NULL, " \t\r", &save);
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		if (strcmp(words[i].word, word) != 0)
			continue;
		if (extra != NULL || (words[i].takes_code == 0 && arg != NULL) ||
		    (words[i].takes_code == 1 && arg == NULL) ||
		    (arg != NULL && faultp11_parse_code(arg, &code) < 0))
			break;
		if (arg != NULL)
			snprintf(command, FAULTP11_FILE_MAX + 1, "%s %s", word, arg);
		else
			snprintf(command, FAULTP11_FILE_MAX + 1, "%s", word);
		*ret_code = code;
		return words[i].mode;
	}
	snprintf(command, FAULTP11_FILE_MAX + 1, "invalid (`%.100s%s%.100s')", word,
		 arg != NULL ? " " : "", arg != NULL ? arg : "");
	return FAULTP11_INVALID;
}

static int faultp11_key_equal(const struct faultp11_key *a, const struct faultp11_key *b)
{
	if (a->present != b->present)
		return 0;
	if (!a->present)
		return 1;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Reads the control file into buf; its length, or -1 when it is missing,
 * unreadable or too long (then *ret_bad names why). */
static ssize_t faultp11_read_file(char buf[static FAULTP11_FILE_MAX + 1], const char **ret_bad)
{
	ssize_t len = 0, n;
	int fd = open(faultp11_control, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		*ret_bad = errno == ENOENT ? NULL : "unreadable";
		return -1;
	}
	while (len <= FAULTP11_FILE_MAX &&
	       (n = read(fd, buf + len, (size_t)(FAULTP11_FILE_MAX + 1 - len))) > 0)
		len += n;
	close(fd);
	if (n < 0) {
		*ret_bad = "unreadable";
		return -1;
	}
	if (len > FAULTP11_FILE_MAX) {
		*ret_bad = "longer than 256 bytes";
		return -1;
	}
	return len;
}

/* Called with faultp11_lock held: a new version of the control file. */
static void faultp11_apply(const char *text, size_t len, const char *bad)
{
	char command[FAULTP11_FILE_MAX + 1];
	enum faultp11_mode mode;
	CK_RV code = CKR_OK;
	unsigned version;

	if (bad != NULL) {
		mode = FAULTP11_INVALID;
		snprintf(command, sizeof(command), "invalid (control file %s)", bad);
	} else {
		mode = faultp11_parse(text, len, &code, command);
	}
	version = atomic_fetch_add(&faultp11_version, 1) + 1;
	atomic_store(&faultp11_once_armed, mode == FAULTP11_ONCE);
	atomic_store(&faultp11_action_armed, mode == FAULTP11_CLOSE_SESSIONS || mode == FAULTP11_LOGOUT);
	atomic_store(&faultp11_state, faultp11_pack(mode == FAULTP11_INVALID ? FAULTP11_FORWARD : mode, code));
	memcpy(faultp11_command, command, sizeof(command));
	faultp11_log("version %u: %s%s", version, command,
		     mode == FAULTP11_INVALID ? ": forwarding everything" : "");
	faultp11_write_stats();
}

/* Brings the command in force up to date with the control file: one stat,
 * and a read only when the file changed (or may have, see the top). */
static void faultp11_refresh(void)
{
	struct faultp11_key key = { 0 };
	struct stat st;
	struct timespec now;
	char text[FAULTP11_FILE_MAX + 1];
	const char *bad = NULL;
	ssize_t len = 0;
	int changed;

	if (faultp11_control[0] == '\0')
		return;
	if (stat(faultp11_control, &st) == 0) {
		key = (struct faultp11_key){ 1, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim };
	}
	pthread_mutex_lock(&faultp11_lock);
	changed = !faultp11_key_equal(&key, &faultp11_file_key);
	if (!changed && !faultp11_racy)
		goto out;
	if (key.present) {
		len = faultp11_read_file(text, &bad);
		if (len < 0) {
			if (bad == NULL)  /* gone between stat and open */
				key.present = 0;
			len = 0;
		}
	}
	if (!changed && bad == NULL &&
	    ((size_t)len != faultp11_content_len || memcmp(text, faultp11_content, (size_t)len) != 0))
		changed = 1;
	faultp11_file_key = key;
	clock_gettime(CLOCK_REALTIME, &now);
	faultp11_racy = key.present &&
			((long long)(now.tv_sec - key.mtime.tv_sec) * 1000000000LL +
			 (now.tv_nsec - key.mtime.tv_nsec)) < FAULTP11_RACY_NS;
	if (changed) {
		memcpy(faultp11_content, text, (size_t)len);
		faultp11_content_len = (size_t)len;
		faultp11_apply(text, (size_t)len, bad);
	}
out:
	pthread_mutex_unlock(&faultp11_lock);
}

static enum faultp11_mode faultp11_mode_of(uint64_t state)
{
	return (enum faultp11_mode)(state >> 32);
}

static CK_RV faultp11_code_of(uint64_t state)
{
	return (CK_RV)(state & 0xffffffffU);
}

/* close-sessions: what an HSM reboot does to the sessions of this process. */
static void faultp11_close_sessions(void)
{
	CK_SLOT_ID slots[FAULTP11_MAX_SLOTS];
	CK_ULONG count = FAULTP11_MAX_SLOTS, closed = 0;
	CK_RV rv;

	rv = faultp11_real->C_GetSlotList(CK_TRUE, slots, &count);
	if (rv != CKR_OK) {
		faultp11_log("close-sessions: C_GetSlotList: %s", faultp11_rv_name(rv));
		return;
	}
	for (CK_ULONG i = 0; i < count; i++) {
		rv = faultp11_real->C_CloseAllSessions(slots[i]);
		if (rv == CKR_OK)
			closed++;
		else
			faultp11_log("close-sessions: C_CloseAllSessions(slot %lu): %s", slots[i],
				     faultp11_rv_name(rv));
	}
	pthread_mutex_lock(&faultp11_lock);
	faultp11_session_count = 0;
	pthread_mutex_unlock(&faultp11_lock);
	faultp11_log("close-sessions: closed every session on %lu of %lu slots", closed, count);
}

/* logout: C_Logout through one open session of each slot (a login belongs to
 * the application and the token, not to a session). */
static void faultp11_logout(void)
{
	struct faultp11_session copy[FAULTP11_MAX_SESSIONS];
	CK_SLOT_ID done[FAULTP11_MAX_SESSIONS];
	size_t count, done_count = 0;
	CK_RV rv;

	pthread_mutex_lock(&faultp11_lock);
	count = faultp11_session_count;
	memcpy(copy, faultp11_sessions, count * sizeof(copy[0]));
	pthread_mutex_unlock(&faultp11_lock);
	for (size_t i = 0; i < count; i++) {
		size_t d;

		for (d = 0; d < done_count && done[d] != copy[i].slot; d++)
			;
		if (d < done_count)
			continue;
		rv = faultp11_real->C_Logout(copy[i].handle);
		faultp11_log("logout: C_Logout(session %lu, slot %lu): %s", copy[i].handle, copy[i].slot,
			     faultp11_rv_name(rv));
		if (rv == CKR_OK || rv == CKR_USER_NOT_LOGGED_IN)
			done[done_count++] = copy[i].slot;
	}
	if (done_count == 0)
		faultp11_log("logout: no open session to log out through (%zu known)", count);
}

static void faultp11_run_action(enum faultp11_mode mode)
{
	if (!atomic_load(&faultp11_initialized) || !atomic_exchange(&faultp11_action_armed, 0))
		return;
	if (mode == FAULTP11_CLOSE_SESSIONS)
		faultp11_close_sessions();
	else if (mode == FAULTP11_LOGOUT)
		faultp11_logout();
	else
		return;
	atomic_fetch_add(&faultp11_actions, 1);
	faultp11_stats_event();
}

static int faultp11_hangs_call(enum faultp11_mode mode, enum faultp11_class cls)
{
	return mode == FAULTP11_HANG || (mode == FAULTP11_HANG_SIGN && cls == FAULTP11_CALL_SIGN);
}

/* Blocks while the command in force hangs this call; the command after. */
static uint64_t faultp11_hang(enum faultp11_class cls, uint64_t state)
{
	struct timespec step = { 0, FAULTP11_HANG_STEP_MS * 1000000L };
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);

	atomic_fetch_add(&faultp11_hanging, 1);
	atomic_fetch_add(&faultp11_hangs, 1);
	faultp11_stats_event();
	while (faultp11_hangs_call(faultp11_mode_of(state), cls)) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - start.tv_sec) * 1000L + (now.tv_nsec - start.tv_nsec) / 1000000L >=
		    FAULTP11_HANG_CAP_MS) {
			faultp11_log("hang: released after %d s (the cap), forwarding", FAULTP11_HANG_CAP_MS / 1000);
			state = faultp11_pack(FAULTP11_FORWARD, CKR_OK);
			break;
		}
		nanosleep(&step, NULL);
		faultp11_refresh();
		state = atomic_load(&faultp11_state);
	}
	atomic_fetch_sub(&faultp11_hanging, 1);
	faultp11_stats_event();
	return state;
}

/* The fault for a call of class cls: CKR_OK to forward it. */
static CK_RV faultp11_enter(enum faultp11_class cls)
{
	uint64_t state;
	enum faultp11_mode mode;

	faultp11_refresh();
	state = atomic_load(&faultp11_state);
	if (faultp11_hangs_call(faultp11_mode_of(state), cls))
		state = faultp11_hang(cls, state);
	mode = faultp11_mode_of(state);
	switch (mode) {
	case FAULTP11_ERROR:
		if (cls != FAULTP11_CALL_INFO)
			return faultp11_code_of(state);
		break;
	case FAULTP11_ERROR_SIGN:
		if (cls == FAULTP11_CALL_SIGN || cls == FAULTP11_CALL_VERIFY)
			return faultp11_code_of(state);
		break;
	case FAULTP11_ONCE:
		if (cls == FAULTP11_CALL_SIGN && atomic_exchange(&faultp11_once_armed, 0)) {
			atomic_fetch_add(&faultp11_fired, 1);
			faultp11_log("once: %s", faultp11_rv_name(faultp11_code_of(state)));
			faultp11_stats_event();
			return faultp11_code_of(state);
		}
		break;
	case FAULTP11_CLOSE_SESSIONS:
		if (cls != FAULTP11_CALL_INIT)
			faultp11_run_action(mode);
		break;
	case FAULTP11_LOGOUT:
		if (cls != FAULTP11_CALL_INIT)
			faultp11_run_action(mode);
		/* After the action: the login it took is refused back. */
		if (cls == FAULTP11_CALL_LOGIN && faultp11_code_of(state) != CKR_OK)
			return faultp11_code_of(state);
		break;
	case FAULTP11_LOGIN_ERROR:
		if (cls == FAULTP11_CALL_LOGIN)
			return faultp11_code_of(state);
		break;
	default:
		break;
	}
	return CKR_OK;
}

/* ---- session tracking (for logout) -------------------------------------- */

static void faultp11_session_add(CK_SLOT_ID slot, CK_SESSION_HANDLE handle)
{
	pthread_mutex_lock(&faultp11_lock);
	if (faultp11_session_count < FAULTP11_MAX_SESSIONS) {
		faultp11_sessions[faultp11_session_count++] = (struct faultp11_session){ slot, handle };
	} else if (!faultp11_sessions_overflow_logged) {
		faultp11_sessions_overflow_logged = 1;
		faultp11_log("more than %d open sessions: logout may miss the newer ones", FAULTP11_MAX_SESSIONS);
	}
	pthread_mutex_unlock(&faultp11_lock);
}

/* Forgets one session (all == 0) or every session of slot (all == 1). */
static void faultp11_session_remove(CK_SESSION_HANDLE handle, CK_SLOT_ID slot, int all)
{
	pthread_mutex_lock(&faultp11_lock);
	for (size_t i = 0; i < faultp11_session_count;) {
		if (all ? faultp11_sessions[i].slot == slot : faultp11_sessions[i].handle == handle)
			faultp11_sessions[i] = faultp11_sessions[--faultp11_session_count];
		else
			i++;
	}
	pthread_mutex_unlock(&faultp11_lock);
}

/* ---- the wrappers -------------------------------------------------------- */

#define FAULTP11_WRAP(name, cls, params, args)               \
	static CK_RV faultp11_##name params                  \
	{                                                    \
		CK_RV fault = faultp11_enter(cls);           \
		if (fault != CKR_OK)                         \
			return fault;                        \
		return faultp11_real->name args;             \
	}

#define O FAULTP11_CALL_OTHER
FAULTP11_WRAP(C_GetInfo, FAULTP11_CALL_INFO, (CK_INFO_PTR a), (a))
FAULTP11_WRAP(C_GetSlotList, O, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_GetSlotInfo, O, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))
FAULTP11_WRAP(C_GetTokenInfo, O, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))
FAULTP11_WRAP(C_GetMechanismList, O, (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_GetMechanismInfo, O, (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))
FAULTP11_WRAP(C_InitToken, O, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))
FAULTP11_WRAP(C_InitPIN, O, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_SetPIN, O, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_GetSessionInfo, O, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b))
FAULTP11_WRAP(C_GetOperationState, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_SetOperationState, O,
	      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_Logout, O, (CK_SESSION_HANDLE a), (a))
FAULTP11_WRAP(C_CreateObject, O, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d),
	      (a, b, c, d))
FAULTP11_WRAP(C_CopyObject, O,
	      (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_DestroyObject, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
FAULTP11_WRAP(C_GetObjectSize, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_GetAttributeValue, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d),
	      (a, b, c, d))
FAULTP11_WRAP(C_SetAttributeValue, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d),
	      (a, b, c, d))
FAULTP11_WRAP(C_FindObjectsInit, O, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_FindObjects, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d),
	      (a, b, c, d))
FAULTP11_WRAP(C_FindObjectsFinal, O, (CK_SESSION_HANDLE a), (a))
FAULTP11_WRAP(C_EncryptInit, O, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULTP11_WRAP(C_Encrypt, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_EncryptUpdate, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_EncryptFinal, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_DecryptInit, O, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULTP11_WRAP(C_Decrypt, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_DecryptUpdate, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_DecryptFinal, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_DigestInit, O, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b), (a, b))
FAULTP11_WRAP(C_Digest, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_DigestUpdate, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_DigestKey, O, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
FAULTP11_WRAP(C_DigestFinal, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_SignInit, FAULTP11_CALL_SIGN, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c),
	      (a, b, c))
FAULTP11_WRAP(C_Sign, FAULTP11_CALL_SIGN, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_SignUpdate, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_SignFinal, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULTP11_WRAP(C_SignRecoverInit, O, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULTP11_WRAP(C_SignRecover, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_VerifyInit, FAULTP11_CALL_VERIFY, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c),
	      (a, b, c))
FAULTP11_WRAP(C_Verify, FAULTP11_CALL_VERIFY, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_VerifyUpdate, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_VerifyFinal, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_VerifyRecoverInit, O, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULTP11_WRAP(C_VerifyRecover, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_DigestEncryptUpdate, O,
	      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULTP11_WRAP(C_DecryptDigestUpdate, O,
	      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULTP11_WRAP(C_SignEncryptUpdate, O,
	      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULTP11_WRAP(C_DecryptVerifyUpdate, O,
	      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULTP11_WRAP(C_GenerateKey, O,
	      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e),
	      (a, b, c, d, e))
FAULTP11_WRAP(C_GenerateKeyPair, O,
	      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e,
	       CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h),
	      (a, b, c, d, e, f, g, h))
FAULTP11_WRAP(C_WrapKey, O,
	      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e,
	       CK_ULONG_PTR f),
	      (a, b, c, d, e, f))
FAULTP11_WRAP(C_UnwrapKey, O,
	      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e,
	       CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h),
	      (a, b, c, d, e, f, g, h))
FAULTP11_WRAP(C_DeriveKey, O,
	      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e,
	       CK_OBJECT_HANDLE_PTR f),
	      (a, b, c, d, e, f))
FAULTP11_WRAP(C_SeedRandom, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_GenerateRandom, O, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULTP11_WRAP(C_GetFunctionStatus, O, (CK_SESSION_HANDLE a), (a))
FAULTP11_WRAP(C_CancelFunction, O, (CK_SESSION_HANDLE a), (a))
FAULTP11_WRAP(C_WaitForSlotEvent, O, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))
#undef O

static CK_RV faultp11_C_Initialize(CK_VOID_PTR args)
{
	CK_RV rv = faultp11_enter(FAULTP11_CALL_INIT);

	if (rv != CKR_OK)
		return rv;
	rv = faultp11_real->C_Initialize(args);
	if (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
		atomic_store(&faultp11_initialized, 1);
	return rv;
}

/* Never faulted: a test must always be able to tear the module down. */
static CK_RV faultp11_C_Finalize(CK_VOID_PTR reserved)
{
	CK_RV rv = faultp11_real->C_Finalize(reserved);

	if (rv == CKR_OK) {
		atomic_store(&faultp11_initialized, 0);
		pthread_mutex_lock(&faultp11_lock);
		faultp11_session_count = 0;
		pthread_mutex_unlock(&faultp11_lock);
	}
	return rv;
}

/* Counted before the fault, so that a test sees every login its host tried,
 * refused here or not. */
static CK_RV faultp11_C_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
	CK_RV rv;

	atomic_fetch_add(&faultp11_logins, 1);
	faultp11_stats_event();
	rv = faultp11_enter(FAULTP11_CALL_LOGIN);
	if (rv != CKR_OK)
		return rv;
	return faultp11_real->C_Login(session, user, pin, len);
}

static CK_RV faultp11_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
				    CK_SESSION_HANDLE_PTR ret_session)
{
	CK_RV rv = faultp11_enter(FAULTP11_CALL_OTHER);

	if (rv != CKR_OK)
		return rv;
	rv = faultp11_real->C_OpenSession(slot, flags, app, notify, ret_session);
	if (rv == CKR_OK && ret_session != NULL)
		faultp11_session_add(slot, *ret_session);
	return rv;
}

static CK_RV faultp11_C_CloseSession(CK_SESSION_HANDLE session)
{
	CK_RV rv = faultp11_enter(FAULTP11_CALL_OTHER);

	if (rv != CKR_OK)
		return rv;
	rv = faultp11_real->C_CloseSession(session);
	if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
		faultp11_session_remove(session, 0, 0);
	return rv;
}

static CK_RV faultp11_C_CloseAllSessions(CK_SLOT_ID slot)
{
	CK_RV rv = faultp11_enter(FAULTP11_CALL_OTHER);

	if (rv != CKR_OK)
		return rv;
	rv = faultp11_real->C_CloseAllSessions(slot);
	if (rv == CKR_OK)
		faultp11_session_remove(0, slot, 1);
	return rv;
}

/* ---- loading ------------------------------------------------------------- */

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret_list) __attribute__((visibility("default")));

static void faultp11_load(void)
{
	const char *target = getenv("FAULTP11_TARGET");
	const char *control = getenv("FAULTP11_CONTROL");
	const char *stats = getenv("FAULTP11_STATS");
	CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
	void *handle;
	CK_RV rv;

	if (target == NULL || target[0] == '\0')
		target = FAULTP11_DEFAULT_TARGET;
	if ((control != NULL && strlen(control) >= sizeof(faultp11_control)) ||
	    (stats != NULL && strlen(stats) >= sizeof(faultp11_stats))) {
		faultp11_log("FAULTP11_CONTROL or FAULTP11_STATS is too long");
		return;
	}
	snprintf(faultp11_control, sizeof(faultp11_control), "%s", control != NULL ? control : "");
	snprintf(faultp11_stats, sizeof(faultp11_stats), "%s", stats != NULL ? stats : "");
	handle = dlopen(target, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		faultp11_log("cannot load FAULTP11_TARGET %s: %s", target, dlerror());
		return;
	}
	*(void **)&get_list = dlsym(handle, "C_GetFunctionList");
	if (get_list == NULL) {
		faultp11_log("%s has no C_GetFunctionList", target);
		return;
	}
	rv = get_list(&faultp11_real);
	if (rv != CKR_OK || faultp11_real == NULL) {
		faultp11_log("%s: C_GetFunctionList: %s", target, faultp11_rv_name(rv));
		return;
	}

	/* The table below is the 2.40 layout: never claim a later version. */
	faultp11_list.version.major = 2;
	faultp11_list.version.minor = 40;
	if (faultp11_real->version.major < 2 ||
	    (faultp11_real->version.major == 2 && faultp11_real->version.minor < 40))
		faultp11_list.version = faultp11_real->version;
#define F(name) faultp11_list.name = faultp11_##name
	F(C_Initialize); F(C_Finalize); F(C_GetInfo);
	faultp11_list.C_GetFunctionList = C_GetFunctionList;
	F(C_GetSlotList); F(C_GetSlotInfo); F(C_GetTokenInfo); F(C_GetMechanismList);
	F(C_GetMechanismInfo); F(C_InitToken); F(C_InitPIN); F(C_SetPIN); F(C_OpenSession);
	F(C_CloseSession); F(C_CloseAllSessions); F(C_GetSessionInfo); F(C_GetOperationState);
	F(C_SetOperationState); F(C_Login); F(C_Logout); F(C_CreateObject); F(C_CopyObject);
	F(C_DestroyObject); F(C_GetObjectSize); F(C_GetAttributeValue); F(C_SetAttributeValue);
	F(C_FindObjectsInit); F(C_FindObjects); F(C_FindObjectsFinal); F(C_EncryptInit);
	F(C_Encrypt); F(C_EncryptUpdate); F(C_EncryptFinal); F(C_DecryptInit); F(C_Decrypt);
	F(C_DecryptUpdate); F(C_DecryptFinal); F(C_DigestInit); F(C_Digest); F(C_DigestUpdate);
	F(C_DigestKey); F(C_DigestFinal); F(C_SignInit); F(C_Sign); F(C_SignUpdate);
	F(C_SignFinal); F(C_SignRecoverInit); F(C_SignRecover); F(C_VerifyInit); F(C_Verify);
	F(C_VerifyUpdate); F(C_VerifyFinal); F(C_VerifyRecoverInit); F(C_VerifyRecover);
	F(C_DigestEncryptUpdate); F(C_DecryptDigestUpdate); F(C_SignEncryptUpdate);
	F(C_DecryptVerifyUpdate); F(C_GenerateKey); F(C_GenerateKeyPair); F(C_WrapKey);
	F(C_UnwrapKey); F(C_DeriveKey); F(C_SeedRandom); F(C_GenerateRandom);
	F(C_GetFunctionStatus); F(C_CancelFunction); F(C_WaitForSlotEvent);
#undef F
	atomic_store(&faultp11_state, faultp11_pack(FAULTP11_FORWARD, CKR_OK));
	faultp11_log("forwarding to %s; control file %s", target,
		     faultp11_control[0] != '\0' ? faultp11_control : "(none: FAULTP11_CONTROL unset)");
	faultp11_load_rv = CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret_list)
{
	if (ret_list == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_once(&faultp11_once_load, faultp11_load);
	if (faultp11_load_rv != CKR_OK)
		return faultp11_load_rv;
	*ret_list = &faultp11_list;
	return CKR_OK;
}
