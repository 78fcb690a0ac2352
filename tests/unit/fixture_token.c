#include "fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

const char *fixture_module(void)
{
	const char *m = getenv("TEST_PKCS11_MODULE");
	return m ? m : HSMJWT_DEFAULT_MODULE;
}

int fixture_token_create(struct fixture_token *tok)
{
	const char *src = getenv("TEST_SOURCE_DIR");
	char cmd[1024], path[512];
	FILE *f;

	memset(tok, 0, sizeof(*tok));
	if (access(fixture_module(), R_OK) != 0) {
		fprintf(stderr, "SoftHSM module %s not found: skipped\n", fixture_module());
		return 77;
	}
	snprintf(tok->dir, sizeof(tok->dir), "/tmp/hsmjwt-unit-XXXXXX");
	if (mkdtemp(tok->dir) == NULL)
		return -1;
	snprintf(cmd, sizeof(cmd), "%s/hsm/softhsm-setup.sh '%s' %s >/dev/null", src ? src : "..", tok->dir,
		 FIXTURE_TOKEN_LABEL);
	if (system(cmd) != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/softhsm2.conf", tok->dir);
	setenv("SOFTHSM2_CONF", path, 1);
	snprintf(path, sizeof(path), "%s/pin", tok->dir);
	f = fopen(path, "r");
	if (f == NULL || fgets(tok->pin, sizeof(tok->pin), f) == NULL) {
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	tok->pin_len = strcspn(tok->pin, "\n");
	tok->pin[tok->pin_len] = '\0';
	return 0;
}

void fixture_token_destroy(struct fixture_token *tok)
{
	char cmd[512];

	if (tok->dir[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tok->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tok->dir);
}

int fixture_token_probe(void)
{
	struct fixture_token probe;
	int r = fixture_token_create(&probe);

	if (r != 0)
		return r == 77 ? 77 : 1;
	fixture_token_destroy(&probe);
	return 0;
}

EVP_PKEY *fixture_keypair(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_ES256: return EVP_EC_gen("P-256");
	case JWS_ALG_ES384: return EVP_EC_gen("P-384");
	case JWS_ALG_ES512: return EVP_EC_gen("P-521");
	case JWS_ALG_EDDSA: return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	case JWS_ALG_RS256: case JWS_ALG_RS384: case JWS_ALG_RS512:
	case JWS_ALG_PS256: case JWS_ALG_PS384: case JWS_ALG_PS512:
		return EVP_RSA_gen(2048);
	default:
		return NULL;
	}
}

static const EVP_MD *fixture_md(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_RS256: case JWS_ALG_PS256: case JWS_ALG_ES256: return EVP_sha256();
	case JWS_ALG_RS384: case JWS_ALG_PS384: case JWS_ALG_ES384: return EVP_sha384();
	case JWS_ALG_RS512: case JWS_ALG_PS512: case JWS_ALG_ES512: return EVP_sha512();
	default: return NULL;
	}
}

/* DER ECDSA-Sig-Value → fixed-width r||s. */
static int fixture_der_to_p1363(const uint8_t *der, size_t der_len, size_t half, uint8_t *out)
{
	const uint8_t *p = der;
	ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	const BIGNUM *r, *s;
	int ok;

	if (es == NULL)
		return -1;
	ECDSA_SIG_get0(es, &r, &s);
	ok = BN_bn2binpad(r, out, (int)half) == (int)half && BN_bn2binpad(s, out + half, (int)half) == (int)half;
	ECDSA_SIG_free(es);
	return ok ? 0 : -1;
}

int fixture_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len)
{
	const struct fixture_signer *s = ctx;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t der[1024];
	size_t der_len = sizeof(der);
	int r = -1;

	if (md == NULL)
		return -ENOMEM;
	if (EVP_DigestSignInit(md, &pctx, fixture_md(s->alg), NULL, s->pkey) != 1)
		goto out;
	if (s->alg == JWS_ALG_PS256 || s->alg == JWS_ALG_PS384 || s->alg == JWS_ALG_PS512) {
		if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
		    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
			goto out;
	}
	if (EVP_DigestSign(md, der, &der_len, data, data_len) != 1)
		goto out;
	if (s->alg == JWS_ALG_ES256 || s->alg == JWS_ALG_ES384 || s->alg == JWS_ALG_ES512) {
		size_t half = s->alg == JWS_ALG_ES256 ? 32 : s->alg == JWS_ALG_ES384 ? 48 : 66;
		if (*sig_len < 2 * half || fixture_der_to_p1363(der, der_len, half, sig) < 0)
			goto out;
		*sig_len = 2 * half;
	} else {
		if (*sig_len < der_len)
			goto out;
		memcpy(sig, der, der_len);
		*sig_len = der_len;
	}
	r = 0;
out:
	EVP_MD_CTX_free(md);
	return r;
}
