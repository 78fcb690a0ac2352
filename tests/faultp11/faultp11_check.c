/* faultp11_check: the in-process half of integration.faultp11.  Loads
 * libfaultp11.so as hsmjwtd does (p11_kit_module_load, unmanaged, OS
 * locking), writes each command to the control file, and checks what the
 * Cryptoki calls then return — the injected codes, and for close-sessions and
 * logout the real module's own answers afterwards.
 *
 * Usage: faultp11_check MODULE CONTROL STATS TOKEN_LABEL KEY_LABEL PIN_FILE
 * (SOFTHSM2_CONF in the environment; the token holds an EC P-256 key pair
 * whose private half is labelled KEY_LABEL).  Prints one line per check;
 * exit 0 when every check passed. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

struct check {
	const char *control;
	const char *stats;
	const char *token_label;
	const char *key_label;
	char pin[128];
	size_t pin_len;
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE session;  /* logged in */
	CK_OBJECT_HANDLE key;
	int passed, failed;
};

static int check_that(struct check *c, int cond, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int check_that(struct check *c, int cond, const char *fmt, ...)
{
	va_list ap;

	printf("  %s  ", cond ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (cond)
		c->passed++;
	else
		c->failed++;
	return cond;
}

static const char *check_rv_name(CK_RV rv)
{
	static const struct { CK_RV rv; const char *name; } names[] = {
		{ CKR_OK, "CKR_OK" },
		{ CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR" },
		{ CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR" },
		{ CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED" },
		{ CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID" },
		{ CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID" },
		{ CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED" },
		{ CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID" },
		{ CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT" },
		{ CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN" },
		{ CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN" },
		{ CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED" },
		{ CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED" },
		{ CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED" },
		{ CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT" },
		{ CKR_PIN_INVALID, "CKR_PIN_INVALID" },
		{ CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE" },
		{ CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED" },
		{ CKR_PIN_LOCKED, "CKR_PIN_LOCKED" },
	};
	static char other[32];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].rv == rv)
			return names[i].name;
	snprintf(other, sizeof(other), "0x%lx", (unsigned long)rv);
	return other;
}

/* Atomically, as the module's README asks. */
static void check_control(struct check *c, const char *text)
{
	char tmp[4200];
	FILE *fp;

	snprintf(tmp, sizeof(tmp), "%s.tmp", c->control);
	fp = fopen(tmp, "w");
	if (fp == NULL || fputs(text, fp) < 0 || fclose(fp) != 0 || rename(tmp, c->control) != 0) {
		fprintf(stderr, "faultp11_check: cannot write %s: %s\n", c->control, strerror(errno));
		exit(1);
	}
}

/* The number after "name " in the stats file, or -1. */
static long check_stat(struct check *c, const char *name)
{
	char line[512];
	long value = -1;
	size_t n = strlen(name);
	FILE *fp = fopen(c->stats, "r");

	if (fp == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, name, n) == 0 && line[n] == ' ')
			value = strtol(line + n + 1, NULL, 10);
	fclose(fp);
	return value;
}

static void check_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static CK_RV check_find_slot(struct check *c)
{
	CK_SLOT_ID slots[32];
	CK_ULONG count = 32;
	CK_TOKEN_INFO info;
	size_t n = strlen(c->token_label);
	CK_RV rv = c->f->C_GetSlotList(CK_TRUE, slots, &count);

	if (rv != CKR_OK)
		return rv;
	for (CK_ULONG i = 0; i < count; i++) {
		if (c->f->C_GetTokenInfo(slots[i], &info) != CKR_OK)
			continue;
		if (n <= sizeof(info.label) && memcmp(info.label, c->token_label, n) == 0 &&
		    (n == sizeof(info.label) || info.label[n] == ' ')) {
			c->slot = slots[i];
			return CKR_OK;
		}
	}
	return CKR_TOKEN_NOT_PRESENT;
}

static CK_RV check_find_key(struct check *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *ret_key, CK_ULONG *ret_found)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, (void *)c->key_label, strlen(c->key_label) },
	};
	CK_OBJECT_HANDLE found[4];
	CK_ULONG count = 0;
	CK_RV rv = c->f->C_FindObjectsInit(s, tmpl, 2);

	if (rv != CKR_OK)
		return rv;
	rv = c->f->C_FindObjects(s, found, 4, &count);
	c->f->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return rv;
	*ret_found = count;
	if (count > 0)
		*ret_key = found[0];
	return CKR_OK;
}

/* C_SignInit + C_Sign (ECDSA over a 32-byte digest): the first code that is
 * not CKR_OK, and in *ret_step which call gave it. */
static CK_RV check_sign(struct check *c, CK_SESSION_HANDLE s, const char **ret_step)
{
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	unsigned char digest[32], sig[132];
	CK_ULONG sig_len = sizeof(sig);
	CK_RV rv;

	memset(digest, 0x5a, sizeof(digest));
	*ret_step = "C_SignInit";
	rv = c->f->C_SignInit(s, &mech, c->key);
	if (rv != CKR_OK)
		return rv;
	*ret_step = "C_Sign";
	rv = c->f->C_Sign(s, digest, sizeof(digest), sig, &sig_len);
	if (rv == CKR_OK && sig_len != 64)
		return CKR_GENERAL_ERROR;
	return rv;
}

static int check_sign_ok(struct check *c, CK_SESSION_HANDLE s, const char *what)
{
	const char *step;
	CK_RV rv = check_sign(c, s, &step);

	return check_that(c, rv == CKR_OK, "%s: signing works (%s: %s)", what, step, check_rv_name(rv));
}

/* Login session on the token, the key found: a fresh start. */
static CK_RV check_open_login(struct check *c)
{
	CK_ULONG found = 0;
	CK_RV rv = check_find_slot(c);

	if (rv == CKR_OK)
		rv = c->f->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, &c->session);
	if (rv == CKR_OK)
		rv = c->f->C_Login(c->session, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	if (rv == CKR_OK)
		rv = check_find_key(c, c->session, &c->key, &found);
	if (rv == CKR_OK && found != 1)
		rv = CKR_GENERAL_ERROR;
	return rv;
}

static CK_RV check_initialize(struct check *c)
{
	CK_C_INITIALIZE_ARGS args;

	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	return c->f->C_Initialize(&args);
}

static void check_forwarding(struct check *c)
{
	CK_INFO info;
	CK_RV rv;

	printf("-- forwarding\n");
	check_control(c, "");
	rv = check_initialize(c);
	check_that(c, rv == CKR_OK, "C_Initialize through the module: %s", check_rv_name(rv));
	rv = c->f->C_GetInfo(&info);
	check_that(c, rv == CKR_OK && memcmp(info.manufacturerID, "SoftHSM", 7) == 0,
		   "C_GetInfo answers from SoftHSM: %s, manufacturer `%.7s'", check_rv_name(rv),
		   rv == CKR_OK ? (const char *)info.manufacturerID : "");
	rv = check_open_login(c);
	if (!check_that(c, rv == CKR_OK, "token found, logged in, key `%s' found: %s", c->key_label,
			check_rv_name(rv))) {
		printf("faultp11_check: cannot go on without the token\n");
		exit(1);
	}
	check_sign_ok(c, c->session, "empty control file");
}

/* error CKR_X: every call but C_GetInfo/C_Finalize answers CKR_X. */
static void check_error(struct check *c)
{
	static const struct { const char *name; CK_RV rv; } codes[] = {
		{ "CKR_DEVICE_ERROR", CKR_DEVICE_ERROR },
		{ "CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID },
		{ "CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT },
		{ "CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN },
		{ "CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED },
		{ "CKR_GENERAL_ERROR", CKR_GENERAL_ERROR },
		{ "0x30", CKR_DEVICE_ERROR },
	};
	char text[64];

	printf("-- error CKR_X\n");
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		CK_SESSION_INFO sinfo;
		CK_INFO info;
		CK_SLOT_ID slots[8];
		CK_ULONG count = 8;
		const char *step;
		CK_RV r1, r2, r3, r4;

		snprintf(text, sizeof(text), "error %s\n", codes[i].name);
		check_control(c, text);
		r1 = c->f->C_GetSessionInfo(c->session, &sinfo);
		r2 = c->f->C_GetSlotList(CK_TRUE, slots, &count);
		r3 = check_sign(c, c->session, &step);
		r4 = c->f->C_GetInfo(&info);
		check_that(c, r1 == codes[i].rv && r2 == codes[i].rv && r3 == codes[i].rv && r4 == CKR_OK,
			   "error %s: C_GetSessionInfo %s, C_GetSlotList %s, %s %s; C_GetInfo %s", codes[i].name,
			   check_rv_name(r1), check_rv_name(r2), step, check_rv_name(r3), check_rv_name(r4));
	}
	check_control(c, "# cleared\n");
	/* The faults never reached SoftHSM: the same session signs again. */
	check_sign_ok(c, c->session, "cleared (a comment only)");

	check_control(c, "error CKR_NOT_A_CODE\n");
	check_sign_ok(c, c->session, "unknown code `CKR_NOT_A_CODE' (forwards)");
}

/* error CKR_DEVICE_ERROR holds C_Initialize too, until cleared. */
static void check_reinitialize(struct check *c)
{
	CK_RV rv;

	printf("-- error across C_Finalize/C_Initialize\n");
	check_control(c, "error CKR_DEVICE_ERROR\n");
	rv = c->f->C_Finalize(NULL);
	check_that(c, rv == CKR_OK, "C_Finalize is never faulted: %s", check_rv_name(rv));
	rv = check_initialize(c);
	check_that(c, rv == CKR_DEVICE_ERROR, "C_Initialize under the fault: %s", check_rv_name(rv));
	rv = check_initialize(c);
	check_that(c, rv == CKR_DEVICE_ERROR, "C_Initialize again, still: %s", check_rv_name(rv));
	check_control(c, "");
	rv = check_initialize(c);
	check_that(c, rv == CKR_OK, "C_Initialize once cleared: %s", check_rv_name(rv));
	rv = check_open_login(c);
	check_that(c, rv == CKR_OK, "token, login and key again: %s", check_rv_name(rv));
	check_sign_ok(c, c->session, "after re-initialisation");
}

static void check_error_sign(struct check *c)
{
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_SESSION_INFO sinfo;
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG found = 0;
	const char *step;
	CK_RV rv, r2, r3;

	printf("-- error-sign CKR_X\n");
	check_control(c, "error-sign CKR_DEVICE_REMOVED\n");
	rv = check_sign(c, c->session, &step);
	check_that(c, rv == CKR_DEVICE_REMOVED && strcmp(step, "C_SignInit") == 0, "signing: %s %s", step,
		   check_rv_name(rv));
	rv = c->f->C_VerifyInit(c->session, &mech, c->key);
	check_that(c, rv == CKR_DEVICE_REMOVED, "C_VerifyInit: %s", check_rv_name(rv));
	r2 = c->f->C_GetSessionInfo(c->session, &sinfo);
	r3 = check_find_key(c, c->session, &key, &found);
	check_that(c, r2 == CKR_OK && r3 == CKR_OK && found == 1 && key == c->key,
		   "the rest forwards: C_GetSessionInfo %s, find key %s (%lu found)", check_rv_name(r2),
		   check_rv_name(r3), (unsigned long)found);
	check_control(c, "");
	check_sign_ok(c, c->session, "cleared");
}

static void check_once(struct check *c)
{
	const char *step;
	long fired_before = check_stat(c, "fired");
	CK_RV rv;

	printf("-- once CKR_X\n");
	check_control(c, "once CKR_DEVICE_ERROR\n");
	rv = check_sign(c, c->session, &step);
	check_that(c, rv == CKR_DEVICE_ERROR && strcmp(step, "C_SignInit") == 0, "first signature: %s %s", step,
		   check_rv_name(rv));
	check_sign_ok(c, c->session, "second signature");
	check_sign_ok(c, c->session, "third signature");
	/* A new file with the same command is a new version: armed again. */
	check_control(c, "once CKR_DEVICE_ERROR\n");
	rv = check_sign(c, c->session, &step);
	check_that(c, rv == CKR_DEVICE_ERROR, "same command rewritten: fails once more: %s %s", step,
		   check_rv_name(rv));
	check_sign_ok(c, c->session, "and then works");
	check_that(c, check_stat(c, "fired") == fired_before + 2, "stats file: fired went from %ld to %ld",
		   fired_before, check_stat(c, "fired"));
	check_control(c, "");
}

/* close-sessions and logout: the module calls the real module; what the
 * checks see afterwards are SoftHSM's own answers. */
static void check_close_sessions(struct check *c)
{
	CK_SESSION_HANDLE other;
	CK_SESSION_INFO sinfo;
	const char *step;
	long actions = check_stat(c, "actions");
	CK_RV rv;

	printf("-- close-sessions\n");
	check_control(c, "close-sessions\n");
	rv = check_sign(c, c->session, &step);
	check_that(c, rv == CKR_SESSION_HANDLE_INVALID && strcmp(step, "C_SignInit") == 0,
		   "the old session: %s %s (SoftHSM's answer)", step, check_rv_name(rv));
	check_that(c, check_stat(c, "actions") == actions + 1, "stats file: actions %ld -> %ld", actions,
		   check_stat(c, "actions"));
	rv = c->f->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, &other);
	if (check_that(c, rv == CKR_OK, "a new session opens: %s", check_rv_name(rv))) {
		rv = c->f->C_GetSessionInfo(other, &sinfo);
		check_that(c, rv == CKR_OK && sinfo.state == CKS_RO_PUBLIC_SESSION,
			   "and is logged out (state %lu, want CKS_RO_PUBLIC_SESSION): %s",
			   (unsigned long)sinfo.state, check_rv_name(rv));
		rv = check_sign(c, other, &step);
		check_that(c, rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_KEY_HANDLE_INVALID ||
				      rv == CKR_OBJECT_HANDLE_INVALID,
			   "signing there without a login fails: %s %s", step, check_rv_name(rv));
		c->f->C_CloseSession(other);
	}
	/* Once per version: the next calls forward (the login session is new). */
	rv = check_open_login(c);
	check_that(c, rv == CKR_OK, "log in again (the action ran once only): %s", check_rv_name(rv));
	check_sign_ok(c, c->session, "after logging in again");
	check_that(c, check_stat(c, "actions") == actions + 1, "no second action: actions %ld",
		   check_stat(c, "actions"));
	check_control(c, "");
}

static void check_logout(struct check *c)
{
	CK_SESSION_INFO sinfo;
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG found = 99;
	const char *step;
	long actions = check_stat(c, "actions");
	CK_RV rv;

	printf("-- logout\n");
	check_control(c, "logout\n");
	rv = c->f->C_GetSessionInfo(c->session, &sinfo);
	check_that(c, rv == CKR_OK && sinfo.state == CKS_RO_PUBLIC_SESSION,
		   "the session survives, logged out (state %lu, want CKS_RO_PUBLIC_SESSION): %s",
		   (unsigned long)sinfo.state, check_rv_name(rv));
	/* SoftHSM drops the handles of private objects at logout. */
	rv = check_sign(c, c->session, &step);
	check_that(c, rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID,
		   "signing with the key's handle fails: %s %s (SoftHSM's answer)", step, check_rv_name(rv));
	rv = check_find_key(c, c->session, &key, &found);
	check_that(c, rv == CKR_OK && found == 0, "the private key is invisible: %s, %lu found", check_rv_name(rv),
		   (unsigned long)found);
	rv = c->f->C_Login(c->session, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	check_that(c, rv == CKR_OK, "C_Login again: %s", check_rv_name(rv));
	rv = check_find_key(c, c->session, &c->key, &found);
	check_that(c, rv == CKR_OK && found == 1, "the key found again: %s, %lu found", check_rv_name(rv),
		   (unsigned long)found);
	check_sign_ok(c, c->session, "logged in again");
	check_that(c, check_stat(c, "actions") == actions + 1, "stats file: one action for the version (%ld -> %ld)",
		   actions, check_stat(c, "actions"));
	check_control(c, "");
}

/* login-error CKR_X: C_Login answers CKR_X, the right PIN or not, and the
 * stats file counts every C_Login; nothing else is touched. */
static void check_login_error(struct check *c)
{
	static const struct { const char *name; CK_RV rv; } codes[] = {
		{ "CKR_PIN_INCORRECT", CKR_PIN_INCORRECT }, { "CKR_PIN_INVALID", CKR_PIN_INVALID },
		{ "CKR_PIN_LEN_RANGE", CKR_PIN_LEN_RANGE }, { "CKR_PIN_EXPIRED", CKR_PIN_EXPIRED },
		{ "CKR_PIN_LOCKED", CKR_PIN_LOCKED }, { "CKR_DEVICE_ERROR", CKR_DEVICE_ERROR },
	};
	CK_SESSION_HANDLE other;
	CK_SESSION_INFO sinfo;
	char text[64];
	long logins = check_stat(c, "logins");
	CK_RV rv, r2;

	printf("-- login-error CKR_X\n");
	check_that(c, logins >= 1 && check_stat(c, "pid") == (long)getpid(),
		   "stats file: this process's (pid %ld), %ld C_Login so far", check_stat(c, "pid"), logins);
	rv = c->f->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, &other);
	if (!check_that(c, rv == CKR_OK, "a second session: %s", check_rv_name(rv)))
		return;
	/* The login of the first session is the application's: forwarded, a
	 * C_Login here would answer CKR_USER_ALREADY_LOGGED_IN. */
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		snprintf(text, sizeof(text), "login-error %s\n", codes[i].name);
		check_control(c, text);
		rv = c->f->C_Login(other, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
		r2 = c->f->C_GetSessionInfo(c->session, &sinfo);
		check_that(c, rv == codes[i].rv && r2 == CKR_OK && sinfo.state == CKS_RO_USER_FUNCTIONS,
			   "login-error %s: C_Login with the right PIN %s; the logged-in session %s, state %lu",
			   codes[i].name, check_rv_name(rv), check_rv_name(r2), (unsigned long)sinfo.state);
	}
	check_sign_ok(c, c->session, "under login-error (signing forwards)");
	check_that(c, check_stat(c, "logins") == logins + 6, "stats file: logins %ld -> %ld (6 tried)", logins,
		   check_stat(c, "logins"));
	check_control(c, "login-error\n");
	rv = c->f->C_Login(other, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	check_that(c, rv == CKR_USER_ALREADY_LOGGED_IN, "`login-error' without a code is invalid (forwards): %s",
		   check_rv_name(rv));
	check_control(c, "");
	rv = c->f->C_Login(other, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	check_that(c, rv == CKR_USER_ALREADY_LOGGED_IN, "cleared: C_Login reaches SoftHSM: %s", check_rv_name(rv));
	check_that(c, check_stat(c, "logins") == logins + 8, "stats file: logins %ld", check_stat(c, "logins"));
	c->f->C_CloseSession(other);
}

/* logout CKR_X: the process is logged out once, and its logins are refused
 * with CKR_X while the command is in force — a token that now refuses the
 * PIN; cleared, the same PIN logs in. */
static void check_logout_refusing(struct check *c)
{
	CK_SESSION_INFO sinfo;
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG found = 99;
	long actions = check_stat(c, "actions"), logins = check_stat(c, "logins");
	CK_RV rv, r2;

	printf("-- logout CKR_X\n");
	check_control(c, "logout CKR_PIN_INCORRECT\n");
	rv = c->f->C_GetSessionInfo(c->session, &sinfo);
	check_that(c, rv == CKR_OK && sinfo.state == CKS_RO_PUBLIC_SESSION,
		   "logged out (state %lu, want CKS_RO_PUBLIC_SESSION): %s", (unsigned long)sinfo.state,
		   check_rv_name(rv));
	rv = c->f->C_Login(c->session, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	r2 = c->f->C_Login(c->session, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	check_that(c, rv == CKR_PIN_INCORRECT && r2 == CKR_PIN_INCORRECT,
		   "C_Login with the right PIN: %s, again: %s", check_rv_name(rv), check_rv_name(r2));
	rv = check_find_key(c, c->session, &key, &found);
	check_that(c, rv == CKR_OK && found == 0, "still logged out: the key invisible (%s, %lu found)",
		   check_rv_name(rv), (unsigned long)found);
	check_that(c, check_stat(c, "actions") == actions + 1 && check_stat(c, "logins") == logins + 2,
		   "stats file: actions %ld -> %ld, logins %ld -> %ld", actions, check_stat(c, "actions"), logins,
		   check_stat(c, "logins"));
	check_control(c, "logout CKR_NOT_A_CODE\n");
	rv = c->f->C_Login(c->session, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
	check_that(c, rv == CKR_OK, "an unknown code is invalid, forwards: C_Login %s", check_rv_name(rv));
	check_control(c, "");
	rv = check_find_key(c, c->session, &c->key, &found);
	check_that(c, rv == CKR_OK && found == 1, "logged in again: the key found (%s, %lu found)", check_rv_name(rv),
		   (unsigned long)found);
	check_sign_ok(c, c->session, "after logout CKR_X");
}

struct check_signer {
	struct check *c;
	CK_SESSION_HANDLE session;
	atomic_int done;
	CK_RV rv;
	const char *step;
};

static void *check_signer_run(void *arg)
{
	struct check_signer *s = arg;

	s->rv = check_sign(s->c, s->session, &s->step);
	atomic_store(&s->done, 1);
	return NULL;
}

static void check_hang_sign(struct check *c)
{
	struct check_signer s = { .c = c };
	struct timespec deadline;
	CK_SESSION_INFO sinfo;
	pthread_t thread;
	int waited;
	CK_RV rv;

	printf("-- hang-sign\n");
	rv = c->f->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, &s.session);
	if (!check_that(c, rv == CKR_OK, "a second session for the signing thread: %s", check_rv_name(rv)))
		return;
	check_control(c, "hang-sign\n");
	if (pthread_create(&thread, NULL, check_signer_run, &s) != 0) {
		check_that(c, 0, "pthread_create");
		return;
	}
	/* The module counts the calls it holds: wait until it holds this one. */
	for (waited = 0; waited < 30000 && check_stat(c, "hanging") < 1; waited += 20)
		check_sleep_ms(20);
	check_that(c, check_stat(c, "hanging") == 1, "the module holds one call (after %d ms)", waited);
	check_sleep_ms(2000);
	check_that(c, !atomic_load(&s.done), "the signing thread is still blocked 2 s later");
	rv = c->f->C_GetSessionInfo(c->session, &sinfo);
	check_that(c, rv == CKR_OK, "other calls go through meanwhile: C_GetSessionInfo %s", check_rv_name(rv));
	check_control(c, "");
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 60;
	if (!check_that(c, pthread_timedjoin_np(thread, NULL, &deadline) == 0,
			"cleared: the signing thread returns (within 60 s)")) {
		printf("faultp11_check: a thread is stuck in the module; not finalising\n");
		fflush(stdout);
		_exit(1);
	}
	check_that(c, s.rv == CKR_OK, "and its signature succeeded: %s %s", s.step, check_rv_name(s.rv));
	check_that(c, check_stat(c, "hanging") == 0 && check_stat(c, "hangs") >= 1,
		   "stats file: hanging %ld, hangs %ld", check_stat(c, "hanging"), check_stat(c, "hangs"));
	c->f->C_CloseSession(s.session);
}

static int check_read_pin(struct check *c, const char *path)
{
	FILE *fp = fopen(path, "r");
	size_t n;

	if (fp == NULL)
		return -1;
	n = fread(c->pin, 1, sizeof(c->pin) - 1, fp);
	fclose(fp);
	while (n > 0 && (c->pin[n - 1] == '\n' || c->pin[n - 1] == '\r'))
		n--;
	c->pin[n] = '\0';
	c->pin_len = n;
	return n > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct check c = { 0 };
	CK_RV rv;

	if (argc != 7) {
		fprintf(stderr, "usage: faultp11_check MODULE CONTROL STATS TOKEN_LABEL KEY_LABEL PIN_FILE\n");
		return 2;
	}
	c.control = argv[2];
	c.stats = argv[3];
	c.token_label = argv[4];
	c.key_label = argv[5];
	if (check_read_pin(&c, argv[6]) < 0) {
		fprintf(stderr, "faultp11_check: cannot read a PIN from %s\n", argv[6]);
		return 2;
	}
	check_control(&c, "");
	setenv("FAULTP11_CONTROL", c.control, 1);
	setenv("FAULTP11_STATS", c.stats, 1);
	c.f = p11_kit_module_load(argv[1], P11_KIT_MODULE_UNMANAGED | P11_KIT_MODULE_CRITICAL);
	if (c.f == NULL) {
		fprintf(stderr, "faultp11_check: p11_kit_module_load %s: %s\n", argv[1],
			p11_kit_message() ? p11_kit_message() : "?");
		return 1;
	}
	check_forwarding(&c);
	check_error(&c);
	check_reinitialize(&c);
	check_error_sign(&c);
	check_once(&c);
	check_close_sessions(&c);
	check_logout(&c);
	check_login_error(&c);
	check_logout_refusing(&c);
	check_hang_sign(&c);

	rv = c.f->C_Finalize(NULL);
	check_that(&c, rv == CKR_OK, "C_Finalize: %s", check_rv_name(rv));
	p11_kit_module_release(c.f);
	memset(c.pin, 0, sizeof(c.pin));
	printf("faultp11_check: %d passed, %d failed\n", c.passed, c.failed);
	return c.failed == 0 ? 0 : 1;
}
