/* p11_custody: proves, through raw Cryptoki and without hsmjwt's code, that
 * the service's private keys cannot leave the token.
 *
 * For every private key labelled "hsmjwt:*" on the token:
 *  - CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL,
 *    CKA_PRIVATE, CKA_TOKEN read back true and CKA_EXTRACTABLE false;
 *  - reading the secret value (CKA_PRIVATE_EXPONENT and CKA_PRIME_1 for RSA,
 *    CKA_VALUE for EC and EdDSA) gives CKR_ATTRIBUTE_SENSITIVE;
 *  - C_WrapKey under a fresh session AES key gives CKR_KEY_UNEXTRACTABLE.
 * The wrap is also tried once on a throwaway extractable session key with
 * the same wrapping key and mechanism, which must succeed: otherwise a refusal
 * could come from an unsupported mechanism rather than from custody.
 *
 * Usage: p11_custody MODULE TOKEN_LABEL PIN_FILE|- [ALG,ALG,...]
 *   The PIN comes from the file (or stdin), never from argv.  With the list,
 *   every named algorithm must have at least one key on the token.
 * Exit 0 when every check passed and at least one key was checked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#define LABEL_PREFIX "hsmjwt:"
#define PIN_MAX 256
#define MAX_KEYS 256
#define LABEL_MAX 256

static CK_FUNCTION_LIST *f;
static unsigned checks, failures;

static void check(int ok, const char *key, const char *what)
{
	checks++;
	if (!ok)
		failures++;
	printf("  %s  %s: %s\n", ok ? "ok  " : "FAIL", key, what);
}

static int read_pin(const char *path, char *pin, size_t size)
{
	FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	size_t n;

	if (in == NULL) {
		fprintf(stderr, "p11_custody: cannot open PIN file `%s': %s\n", path, strerror(errno));
		return -1;
	}
	if (fgets(pin, (int)size, in) == NULL)
		pin[0] = '\0';
	if (in != stdin)
		fclose(in);
	n = strcspn(pin, "\r\n");
	pin[n] = '\0';
	if (n == 0) {
		fprintf(stderr, "p11_custody: PIN file `%s' is empty\n", path);
		return -1;
	}
	return 0;
}

/* Cryptoki strings are blank-padded, not NUL-terminated. */
static int label_is(const CK_UTF8CHAR *padded, size_t size, const char *label)
{
	size_t n = strlen(label);

	if (n > size || memcmp(padded, label, n) != 0)
		return 0;
	for (size_t i = n; i < size; i++)
		if (padded[i] != ' ')
			return 0;
	return 1;
}

static int find_slot(const char *label, CK_SLOT_ID *ret_slot)
{
	CK_SLOT_ID slots[64];
	CK_ULONG count = sizeof(slots) / sizeof(slots[0]);
	CK_TOKEN_INFO info;
	CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &count);

	if (rv != CKR_OK) {
		fprintf(stderr, "p11_custody: C_GetSlotList: 0x%lx\n", (unsigned long)rv);
		return -1;
	}
	for (CK_ULONG i = 0; i < count; i++) {
		if (f->C_GetTokenInfo(slots[i], &info) == CKR_OK && label_is(info.label, sizeof(info.label), label)) {
			*ret_slot = slots[i];
			return 0;
		}
	}
	fprintf(stderr, "p11_custody: no token labelled `%s' among %lu slots\n", label, (unsigned long)count);
	return -1;
}

static int mechanism_supported(CK_SLOT_ID slot, CK_MECHANISM_TYPE type)
{
	CK_MECHANISM_INFO info;

	return f->C_GetMechanismInfo(slot, type, &info) == CKR_OK && (info.flags & CKF_WRAP);
}

static CK_BBOOL bool_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_RV *ret_rv)
{
	CK_BBOOL value = CK_FALSE;
	CK_ATTRIBUTE a = { type, &value, sizeof(value) };

	*ret_rv = f->C_GetAttributeValue(s, o, &a, 1);
	return value;
}

/* A fresh AES-256 wrapping key that lives only in this session. */
static int make_wrapping_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *ret_key)
{
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG len = 32;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_WRAP, &yes, sizeof(yes) },
		{ CKA_UNWRAP, &yes, sizeof(yes) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
	};
	CK_RV rv = f->C_GenerateKey(s, &gen, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), ret_key);

	if (rv != CKR_OK) {
		fprintf(stderr, "p11_custody: C_GenerateKey(CKM_AES_KEY_GEN): 0x%lx\n", (unsigned long)rv);
		return -1;
	}
	return 0;
}

/* The control: an extractable, non-sensitive session EC key must wrap. */
static CK_RV wrap_control(CK_SESSION_HANDLE s, CK_MECHANISM *wrap, CK_OBJECT_HANDLE wrapping_key)
{
	static const CK_BYTE p256_oid[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	CK_MECHANISM gen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE pub[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid) },
	};
	CK_ATTRIBUTE priv[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_SENSITIVE, &no, sizeof(no) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
		{ CKA_SIGN, &yes, sizeof(yes) },
	};
	CK_OBJECT_HANDLE pub_key, priv_key;
	CK_ULONG len = 0;
	CK_RV rv = f->C_GenerateKeyPair(s, &gen, pub, 2, priv, 4, &pub_key, &priv_key);

	if (rv != CKR_OK)
		return rv;
	rv = f->C_WrapKey(s, wrap, wrapping_key, priv_key, NULL, &len);
	f->C_DestroyObject(s, priv_key);
	f->C_DestroyObject(s, pub_key);
	return rv;
}

static const char *ckr_text(CK_RV rv)
{
	switch (rv) {
	case CKR_OK: return "CKR_OK";
	case CKR_ATTRIBUTE_SENSITIVE: return "CKR_ATTRIBUTE_SENSITIVE";
	case CKR_ATTRIBUTE_TYPE_INVALID: return "CKR_ATTRIBUTE_TYPE_INVALID";
	case CKR_KEY_UNEXTRACTABLE: return "CKR_KEY_UNEXTRACTABLE";
	case CKR_KEY_NOT_WRAPPABLE: return "CKR_KEY_NOT_WRAPPABLE";
	case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
	default: return "another CKR";
	}
}

static void check_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const char *label, CK_MECHANISM *wrap,
		      CK_OBJECT_HANDLE wrapping_key)
{
	static const struct {
		CK_ATTRIBUTE_TYPE type;
		const char *name;
		CK_BBOOL want;
	} flags[] = {
		{ CKA_SENSITIVE, "CKA_SENSITIVE", CK_TRUE },
		{ CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", CK_TRUE },
		{ CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", CK_TRUE },
		{ CKA_LOCAL, "CKA_LOCAL (generated inside the token)", CK_TRUE },
		{ CKA_PRIVATE, "CKA_PRIVATE", CK_TRUE },
		{ CKA_TOKEN, "CKA_TOKEN", CK_TRUE },
		{ CKA_EXTRACTABLE, "CKA_EXTRACTABLE", CK_FALSE },
	};
	CK_KEY_TYPE key_type = (CK_KEY_TYPE)-1;
	CK_ATTRIBUTE type_attr = { CKA_KEY_TYPE, &key_type, sizeof(key_type) };
	CK_ATTRIBUTE_TYPE secrets[2];
	const char *secret_names[2];
	size_t nsecrets = 0;
	char what[160];
	CK_ULONG len = 0;
	CK_RV rv;

	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		CK_BBOOL v = bool_attr(s, key, flags[i].type, &rv);
		snprintf(what, sizeof(what), "%s reads back %s", flags[i].name, flags[i].want ? "true" : "false");
		check(rv == CKR_OK && v == flags[i].want, label, what);
	}

	rv = f->C_GetAttributeValue(s, key, &type_attr, 1);
	if (rv == CKR_OK && key_type == CKK_RSA) {
		secrets[nsecrets] = CKA_PRIVATE_EXPONENT;
		secret_names[nsecrets++] = "CKA_PRIVATE_EXPONENT";
		secrets[nsecrets] = CKA_PRIME_1;
		secret_names[nsecrets++] = "CKA_PRIME_1";
	} else if (rv == CKR_OK && (key_type == CKK_EC || key_type == CKK_EC_EDWARDS)) {
		secrets[nsecrets] = CKA_VALUE;
		secret_names[nsecrets++] = "CKA_VALUE";
	}
	check(nsecrets > 0, label, "key type is RSA, EC or EC_EDWARDS");
	for (size_t i = 0; i < nsecrets; i++) {
		CK_BYTE buf[1024];
		CK_ATTRIBUTE a = { secrets[i], buf, sizeof(buf) };
		rv = f->C_GetAttributeValue(s, key, &a, 1);
		snprintf(what, sizeof(what), "reading %s gives CKR_ATTRIBUTE_SENSITIVE (got %s, 0x%lx)",
			 secret_names[i], ckr_text(rv), (unsigned long)rv);
		check(rv == CKR_ATTRIBUTE_SENSITIVE && a.ulValueLen == CK_UNAVAILABLE_INFORMATION, label, what);
		OPENSSL_cleanse(buf, sizeof(buf));
	}

	/* Only the length is asked for: nothing could land in memory even if the
	 * token were wrong. */
	rv = f->C_WrapKey(s, wrap, wrapping_key, key, NULL, &len);
	snprintf(what, sizeof(what), "C_WrapKey gives CKR_KEY_UNEXTRACTABLE (got %s, 0x%lx)", ckr_text(rv),
		 (unsigned long)rv);
	check(rv == CKR_KEY_UNEXTRACTABLE, label, what);
}

/* "hsmjwt:ES256:kid" → does the ALG part equal alg? */
static int label_has_alg(const char *label, const char *alg, size_t alg_len)
{
	const char *a = label + strlen(LABEL_PREFIX);
	return strncmp(a, alg, alg_len) == 0 && a[alg_len] == ':';
}

int main(int argc, char **argv)
{
	char pin[PIN_MAX], labels[MAX_KEYS][LABEL_MAX];
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE found[MAX_KEYS], wrapping_key;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE find = { CKA_CLASS, &cls, sizeof(cls) };
	CK_ULONG nfound = 0;
	CK_BYTE iv[16] = { 0 };
	CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_C_INITIALIZE_ARGS init;
	CK_RV rv;
	unsigned checked = 0;
	int status = 1, initialized = 0;

	memset(pin, 0, sizeof(pin));
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: p11_custody MODULE TOKEN_LABEL PIN_FILE|- [ALG,ALG,...]\n");
		return 2;
	}
	if (read_pin(argv[3], pin, sizeof(pin)) < 0)
		return 1;
	f = p11_kit_module_load(argv[1], P11_KIT_MODULE_UNMANAGED | P11_KIT_MODULE_CRITICAL);
	if (f == NULL) {
		fprintf(stderr, "p11_custody: cannot load `%s': %s\n", argv[1], p11_kit_message());
		goto out;
	}
	memset(&init, 0, sizeof(init));
	init.flags = CKF_OS_LOCKING_OK;
	rv = f->C_Initialize(&init);
	if (rv != CKR_OK) {
		fprintf(stderr, "p11_custody: C_Initialize: 0x%lx\n", (unsigned long)rv);
		goto out;
	}
	initialized = 1;
	if (find_slot(argv[2], &slot) < 0)
		goto out;
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv == CKR_OK)
		rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
	OPENSSL_cleanse(pin, sizeof(pin));
	if (rv != CKR_OK) {
		fprintf(stderr, "p11_custody: cannot open a session and log in: 0x%lx\n", (unsigned long)rv);
		goto out;
	}

	/* SoftHSM builds with AES key wrap with padding when its OpenSSL has
	 * it; CBC-PAD is the fallback every build has. */
	if (!mechanism_supported(slot, CKM_AES_KEY_WRAP_PAD)) {
		wrap.mechanism = CKM_AES_CBC_PAD;
		wrap.pParameter = iv;
		wrap.ulParameterLen = sizeof(iv);
	}
	printf("p11_custody: token `%s', wrapping mechanism %s\n", argv[2],
	       wrap.mechanism == CKM_AES_KEY_WRAP_PAD ? "CKM_AES_KEY_WRAP_PAD" : "CKM_AES_CBC_PAD");
	if (make_wrapping_key(s, &wrapping_key) < 0)
		goto out;
	rv = wrap_control(s, &wrap, wrapping_key);
	check(rv == CKR_OK, "control key", "an extractable session key does wrap with this mechanism");

	if (f->C_FindObjectsInit(s, &find, 1) != CKR_OK ||
	    f->C_FindObjects(s, found, MAX_KEYS, &nfound) != CKR_OK) {
		fprintf(stderr, "p11_custody: cannot search the token's private keys\n");
		goto out;
	}
	f->C_FindObjectsFinal(s);
	for (CK_ULONG i = 0; i < nfound; i++) {
		CK_ATTRIBUTE a = { CKA_LABEL, labels[checked], LABEL_MAX - 1 };
		if (f->C_GetAttributeValue(s, found[i], &a, 1) != CKR_OK)
			continue;
		labels[checked][a.ulValueLen] = '\0';
		if (strncmp(labels[checked], LABEL_PREFIX, strlen(LABEL_PREFIX)) != 0)
			continue;
		check_key(s, found[i], labels[checked], &wrap, wrapping_key);
		checked++;
	}
	f->C_DestroyObject(s, wrapping_key);

	if (argc == 5) {
		const char *p = argv[4];
		while (*p) {
			size_t n = strcspn(p, ",");
			int present = 0;
			char what[64];
			for (unsigned k = 0; k < checked; k++)
				present |= label_has_alg(labels[k], p, n);
			snprintf(what, sizeof(what), "a %.*s key was checked", (int)n, p);
			check(present, "token", what);
			p += n + (p[n] == ',');
		}
	}
	check(checked > 0, "token", "at least one hsmjwt private key was found and checked");
	printf("p11_custody: %u private keys on the token, %u hsmjwt keys checked; %u checks, %u failed\n",
	       (unsigned)nfound, checked, checks, failures);
	status = failures == 0 && checked > 0 ? 0 : 1;
out:
	OPENSSL_cleanse(pin, sizeof(pin));
	if (s != CK_INVALID_HANDLE) {
		f->C_Logout(s);
		f->C_CloseSession(s);
	}
	if (initialized)
		f->C_Finalize(NULL);
	if (f != NULL)
		p11_kit_module_release(f);
	return status;
}
