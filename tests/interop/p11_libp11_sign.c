/* p11_libp11_sign: an independent PKCS#11 client that signs JWTs with the
 * service's keys.
 *
 * It shares no code with hsmjwt: it finds the keys through libp11 by their
 * CKA_LABEL "hsmjwt:<ALG>:<kid>" and signs through OpenSSL's EVP with the
 * EVP_PKEY libp11 hands out.  When the service then accepts these tokens, the
 * key objects in the token are standard ones that any PKCS#11 client can use,
 * not something only hsmjwt understands.
 *
 * libp11 0.4.12 cannot handle Ed25519 keys (one on the token makes
 * PKCS11_enumerate_keys fail for the whole token), so the token this runs
 * against must hold RSA and EC keys only.
 *
 * Usage: p11_libp11_sign MODULE TOKEN_LABEL PIN_FILE ISSUER AUDIENCE
 *   PIN_FILE "-" reads the PIN from standard input; the PIN is never an
 *   argument.  SOFTHSM2_CONF must name the token's configuration.
 * Prints "ALG KID TOKEN" per signing key on stdout; exits 0 when every hsmjwt
 * RSA/EC key signed, 1 otherwise. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define LABEL_PREFIX "hsmjwt:"
#define PIN_MAX 256
#define TOKEN_TTL 600

struct alg_info {
	const char *name;
	const char *digest;
	int pss;        /* RSASSA-PSS, salt length = digest length (RFC 7518 §3.5) */
	size_t ec_half; /* ECDSA: bytes of r and of s in the JOSE form; 0 otherwise */
};

static const struct alg_info algs[] = {
	{ "RS256", "SHA256", 0, 0 },
	{ "PS256", "SHA256", 1, 0 },
	{ "ES256", "SHA256", 0, 32 },
	{ "ES384", "SHA384", 0, 48 },
};

static const struct alg_info *alg_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
		if (strlen(algs[i].name) == len && memcmp(algs[i].name, name, len) == 0)
			return &algs[i];
	return NULL;
}

/* base64url without padding; out needs 4 * ceil(len / 3) + 1 bytes. */
static void b64url(const unsigned char *in, size_t len, char *out)
{
	int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);

	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (char *p = out; *p; p++) {
		if (*p == '+')
			*p = '-';
		else if (*p == '/')
			*p = '_';
	}
}

static char *b64url_alloc(const unsigned char *in, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);

	if (out != NULL)
		b64url(in, len, out);
	return out;
}

/* A JSON string body for the plain values this tool writes: printable ASCII
 * only, with '"' and '\' escaped.  -EINVAL for anything else. */
static int json_escape(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	for (const char *p = in; *p; p++) {
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			return -EINVAL;
		if (o + 3 > outlen)
			return -EINVAL;
		if (*p == '"' || *p == '\\')
			out[o++] = '\\';
		out[o++] = *p;
	}
	out[o] = '\0';
	return 0;
}

static int read_pin(const char *path, char *pin, size_t size)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	size_t n;

	if (f == NULL) {
		fprintf(stderr, "p11_libp11_sign: cannot open PIN file `%s': %s\n", path, strerror(errno));
		return -1;
	}
	if (fgets(pin, (int)size, f) == NULL)
		pin[0] = '\0';
	if (f != stdin)
		fclose(f);
	n = strcspn(pin, "\r\n");
	pin[n] = '\0';
	if (n == 0) {
		fprintf(stderr, "p11_libp11_sign: PIN file `%s' is empty\n", path);
		return -1;
	}
	return 0;
}

/* ECDSA: OpenSSL gives DER, JWS wants r||s, each left-padded to half. */
static int ecdsa_der_to_jose(const unsigned char *der, size_t der_len, size_t half, unsigned char *out)
{
	const unsigned char *p = der;
	ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	const BIGNUM *r, *s;
	int ok;

	if (sig == NULL)
		return -1;
	ECDSA_SIG_get0(sig, &r, &s);
	ok = BN_bn2binpad(r, out, (int)half) == (int)half && BN_bn2binpad(s, out + half, (int)half) == (int)half;
	ECDSA_SIG_free(sig);
	return ok ? 0 : -1;
}

/* Signs "header.payload" and returns the compact JWS (malloc'd). */
static char *sign_jwt(EVP_PKEY *pkey, const struct alg_info *alg, const char *kid, const char *issuer,
		      const char *audience)
{
	char header[256], payload[1024], jti[32], *signing_input = NULL, *h64 = NULL, *p64 = NULL;
	char *s64 = NULL, *token = NULL;
	unsigned char jti_raw[16], *sig = NULL, jose_sig[2 * 66];
	const unsigned char *final_sig;
	size_t sig_len = 0, final_len;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	long long now = (long long)time(NULL);

	if (md == NULL || RAND_bytes(jti_raw, sizeof(jti_raw)) != 1)
		goto out;
	b64url(jti_raw, sizeof(jti_raw), jti);
	snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"at+jwt\"}", alg->name, kid);
	if (snprintf(payload, sizeof(payload),
		     "{\"iss\":\"%s\",\"sub\":\"libp11-%s\",\"aud\":\"%s\",\"iat\":%lld,\"nbf\":%lld,"
		     "\"exp\":%lld,\"jti\":\"%s\",\"token_type\":\"access\"}",
		     issuer, alg->name, audience, now, now, now + TOKEN_TTL, jti) >= (int)sizeof(payload))
		goto out;
	h64 = b64url_alloc((const unsigned char *)header, strlen(header));
	p64 = b64url_alloc((const unsigned char *)payload, strlen(payload));
	if (h64 == NULL || p64 == NULL)
		goto out;
	signing_input = malloc(strlen(h64) + strlen(p64) + 2);
	if (signing_input == NULL)
		goto out;
	sprintf(signing_input, "%s.%s", h64, p64);

	if (EVP_DigestSignInit_ex(md, &pctx, alg->digest, NULL, NULL, pkey, NULL) != 1)
		goto out;
	if (alg->pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
			 EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
			 /* The _name variant goes through provider parameters, which a
			  * libp11 (legacy method) key does not take. */
			 EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_get_digestbyname(alg->digest)) != 1))
		goto out;
	if (!alg->pss && alg->ec_half == 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
		goto out;
	if (EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)signing_input, strlen(signing_input)) != 1)
		goto out;
	sig = malloc(sig_len);
	if (sig == NULL ||
	    EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)signing_input, strlen(signing_input)) != 1)
		goto out;
	final_sig = sig;
	final_len = sig_len;
	if (alg->ec_half) {
		if (ecdsa_der_to_jose(sig, sig_len, alg->ec_half, jose_sig) < 0)
			goto out;
		final_sig = jose_sig;
		final_len = 2 * alg->ec_half;
	}
	s64 = b64url_alloc(final_sig, final_len);
	if (s64 == NULL)
		goto out;
	token = malloc(strlen(signing_input) + strlen(s64) + 2);
	if (token != NULL)
		sprintf(token, "%s.%s", signing_input, s64);
out:
	if (token == NULL) {
		fprintf(stderr, "p11_libp11_sign: signing with %s key %s failed\n", alg->name, kid);
		ERR_print_errors_fp(stderr);
	}
	EVP_MD_CTX_free(md);
	free(sig);
	free(signing_input);
	free(h64);
	free(p64);
	free(s64);
	return token;
}

/* The slot whose token carries label, or NULL. */
static PKCS11_SLOT *find_token_by_label(PKCS11_CTX *ctx, PKCS11_SLOT *slots, unsigned nslots, const char *label)
{
	PKCS11_SLOT *slot = PKCS11_find_token(ctx, slots, nslots);

	while (slot != NULL) {
		if (slot->token != NULL && slot->token->initialized && strcmp(slot->token->label, label) == 0)
			return slot;
		slot = PKCS11_find_next_token(ctx, slots, nslots, slot);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *module, *label, *pin_file;
	char pin[PIN_MAX], issuer[512], audience[512];
	PKCS11_CTX *ctx = NULL;
	PKCS11_SLOT *slots = NULL, *slot;
	PKCS11_KEY *keys = NULL;
	unsigned nslots = 0, nkeys = 0, signed_count = 0, failures = 0;
	EVP_PKEY *pkeys[64];
	unsigned npkeys = 0;
	int status = 1, loaded = 0;

	memset(pin, 0, sizeof(pin));
	if (argc != 6) {
		fprintf(stderr, "usage: p11_libp11_sign MODULE TOKEN_LABEL PIN_FILE|- ISSUER AUDIENCE\n");
		return 2;
	}
	module = argv[1];
	label = argv[2];
	pin_file = argv[3];
	if (json_escape(argv[4], issuer, sizeof(issuer)) < 0 || json_escape(argv[5], audience, sizeof(audience)) < 0) {
		fprintf(stderr, "p11_libp11_sign: ISSUER and AUDIENCE must be short printable ASCII\n");
		return 2;
	}
	if (read_pin(pin_file, pin, sizeof(pin)) < 0)
		goto out;

	ctx = PKCS11_CTX_new();
	if (ctx == NULL || PKCS11_CTX_load(ctx, module) < 0) {
		fprintf(stderr, "p11_libp11_sign: cannot load PKCS#11 module `%s'\n", module);
		goto out;
	}
	loaded = 1;
	if (PKCS11_enumerate_slots(ctx, &slots, &nslots) < 0) {
		fprintf(stderr, "p11_libp11_sign: cannot enumerate slots\n");
		goto out;
	}
	slot = find_token_by_label(ctx, slots, nslots, label);
	if (slot == NULL) {
		fprintf(stderr, "p11_libp11_sign: no token labelled `%s'\n", label);
		goto out;
	}
	if (PKCS11_open_session(slot, 0) < 0 || PKCS11_login(slot, 0, pin) < 0) {
		fprintf(stderr, "p11_libp11_sign: cannot log in to token `%s'\n", label);
		goto out;
	}
	OPENSSL_cleanse(pin, sizeof(pin));
	if (PKCS11_enumerate_keys(slot->token, &keys, &nkeys) < 0) {
		fprintf(stderr, "p11_libp11_sign: cannot enumerate the keys of token `%s'\n", label);
		goto out;
	}
	for (unsigned i = 0; i < nkeys; i++) {
		PKCS11_KEY *key = &keys[i];
		const char *alg_name, *kid, *sep;
		const struct alg_info *alg;
		char *id64, *token;
		EVP_PKEY *pkey;

		if (!key->isPrivate || key->label == NULL || strncmp(key->label, LABEL_PREFIX, strlen(LABEL_PREFIX)) != 0)
			continue;
		alg_name = key->label + strlen(LABEL_PREFIX);
		sep = strchr(alg_name, ':');
		if (sep == NULL) {
			fprintf(stderr, "p11_libp11_sign: key label `%s' is not hsmjwt:<ALG>:<kid>\n", key->label);
			failures++;
			continue;
		}
		kid = sep + 1;
		alg = alg_find(alg_name, (size_t)(sep - alg_name));
		if (alg == NULL) {
			fprintf(stderr, "p11_libp11_sign: skipping key `%s' (not an RSA/EC algorithm)\n", key->label);
			continue;
		}
		/* The label's kid and the CKA_ID must name the same thumbprint, or a
		 * client looking a key up by one would find another. */
		id64 = b64url_alloc(key->id, key->id_len);
		if (id64 == NULL || strcmp(id64, kid) != 0) {
			fprintf(stderr, "p11_libp11_sign: key `%s' has a CKA_ID (%s) that is not its kid\n", key->label,
				id64 ? id64 : "?");
			free(id64);
			failures++;
			continue;
		}
		free(id64);
		pkey = PKCS11_get_private_key(key);
		if (pkey == NULL) {
			fprintf(stderr, "p11_libp11_sign: libp11 gives no EVP_PKEY for `%s'\n", key->label);
			failures++;
			continue;
		}
		/* Freed before the slots are released: an EVP_PKEY that outlives its
		 * slot hangs libp11 0.4.12 (NOTES-PKCS11.md). */
		if (npkeys < sizeof(pkeys) / sizeof(pkeys[0]))
			pkeys[npkeys++] = pkey;
		token = sign_jwt(pkey, alg, kid, issuer, audience);
		if (token == NULL) {
			failures++;
			continue;
		}
		printf("%s %s %s\n", alg->name, kid, token);
		free(token);
		signed_count++;
	}
	fprintf(stderr, "p11_libp11_sign: %u keys on the token, %u hsmjwt RSA/EC keys signed, %u failures\n", nkeys,
		signed_count, failures);
	status = signed_count > 0 && failures == 0 ? 0 : 1;
out:
	OPENSSL_cleanse(pin, sizeof(pin));
	fflush(stdout);
	for (unsigned i = 0; i < npkeys; i++)
		EVP_PKEY_free(pkeys[i]);
	if (slots != NULL)
		PKCS11_release_all_slots(ctx, slots, nslots);
	if (loaded)
		PKCS11_CTX_unload(ctx);
	if (ctx != NULL)
		PKCS11_CTX_free(ctx);
	return status;
}
