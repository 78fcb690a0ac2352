/* The verification rules of SPEC §5.2 as one table of tokens, each with the
 * verdict it must get, and the public JWKS of the keys that signed them.
 *
 * Two verifiers iterate the same table and must give each case its verdict:
 * test_jwt.c (the daemon's path: jwt_verify with keys_lookup over those
 * JWKs) and test_verify.c (libhsmjwt-verify, reading the JWKS from a file).
 * A rule is therefore written down once, and a verifier that skips it
 * fails on the cases that show it.
 *
 * Each defect token is valid but for that one defect, signed with the real
 * key over exactly the bytes it carries, and is next to a control that
 * passes.  The keys are made the way the service makes its own (kid = RFC
 * 7638 thumbprint, alg fixed, "use":"sig"), plus an RSA and a P-256 key
 * published without alg ("rsa-any", "p256-any", as a foreign JWKS may),
 * whose key type alone decides what they verify. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "fixture.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/jws.h"

#define NOW FIXTURE_RULES_NOW
#define LEEWAY FIXTURE_RULES_LEEWAY
#define PAYLOAD "{\"sub\":\"alice\",\"exp\":1700003600}"

/* The service's kinds of key, then two published without alg. */
enum key_id { K_P256, K_P384, K_P521, K_RS256, K_PS256, K_ED, K_RSA_ANY, K_P256_ANY, K_COUNT };

static const enum jws_alg key_alg[K_COUNT] = {
	JWS_ALG_ES256, JWS_ALG_ES384, JWS_ALG_ES512, JWS_ALG_RS256, JWS_ALG_PS256, JWS_ALG_EDDSA, JWS_ALG_INVALID,
	JWS_ALG_INVALID,
};

/* The table being built (one per test binary). */
static struct fixture_rules *R;
static EVP_PKEY *pk[K_COUNT];
static char kid[K_COUNT][JWK_KID_MAX + 1];

/* ---- tokens ------------------------------------------------------------ */

char *fixture_b64_bytes(const uint8_t *buf, size_t len)
{
	char *s = NULL;

	assert_int_equal(b64url_encode_alloc(buf, len, &s), 0);
	return s;
}

char *fixture_b64(const char *text)
{
	return fixture_b64_bytes((const uint8_t *)text, strlen(text));
}

char *fixture_assemble(const char *h, const char *p, const uint8_t *sig, size_t sig_len)
{
	char *s = fixture_b64_bytes(sig, sig_len), *token = NULL;

	assert_true(asprintf(&token, "%s.%s.%s", h, p, s) > 0);
	free(s);
	return token;
}

/* Signs data as alg's signer does, with key k. */
static void sign_raw(enum key_id k, enum jws_alg alg, const char *data, uint8_t *sig, size_t *sig_len)
{
	struct fixture_signer s = { .pkey = pk[k], .alg = alg };

	assert_int_equal(fixture_sign(&s, (const uint8_t *)data, strlen(data), sig, sig_len), 0);
}

/* The encoded parts as they stand, however they are spelled, signed. */
static char *signed_b64(enum key_id k, enum jws_alg alg, const char *h, const char *p)
{
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);
	char *input = NULL, *token;

	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	sign_raw(k, alg, input, sig, &sig_len);
	token = fixture_assemble(h, p, sig, sig_len);
	free(input);
	return token;
}

static char *signed_json(enum key_id k, enum jws_alg alg, const char *header, const char *payload)
{
	char *h = fixture_b64(header), *p = fixture_b64(payload), *token;

	token = signed_b64(k, alg, h, p);
	free(h);
	free(p);
	return token;
}

/* {"alg":<k's alg>,"kid":<k's kid><extra>} */
static char *header_for(enum key_id k, const char *extra)
{
	char *h = NULL;

	assert_true(asprintf(&h, "{\"alg\":\"%s\",\"kid\":\"%s\"%s}", jws_alg_name(key_alg[k]), kid[k], extra) > 0);
	return h;
}

/* A header naming alg and key k's kid, with extra members. */
static char *header_alg(enum jws_alg alg, enum key_id k, const char *extra)
{
	char *h = NULL;

	assert_true(asprintf(&h, "{\"alg\":\"%s\",\"kid\":\"%s\"%s}", jws_alg_name(alg), kid[k], extra) > 0);
	return h;
}

static char *good(enum key_id k, const char *extra)
{
	char *h = header_for(k, extra), *token = signed_json(k, key_alg[k], h, PAYLOAD);

	free(h);
	return token;
}

/* ---- the table ----------------------------------------------------------- */

static struct fixture_rule *add(int want, char *token, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Takes token; the case's expectations start unset, leeway LEEWAY. */
static struct fixture_rule *add(int want, char *token, const char *fmt, ...)
{
	struct fixture_rule *c;
	va_list ap;

	if (R->count == R->cap) {
		R->cap = R->cap ? 2 * R->cap : 64;
		R->cases = realloc(R->cases, R->cap * sizeof(*R->cases));
		assert_non_null(R->cases);
	}
	c = &R->cases[R->count++];
	memset(c, 0, sizeof(*c));
	c->token = token;
	c->len = strlen(token);
	c->want = want;
	c->leeway = LEEWAY;
	va_start(ap, fmt);
	vsnprintf(c->name, sizeof(c->name), fmt, ap);
	va_end(ap);
	return c;
}

/* The same header with a signature by key k over its own bytes; payload
 * as given (JSON text). */
static struct fixture_rule *add_json(int want, enum key_id k, enum jws_alg alg, const char *header,
				     const char *payload, const char *name)
{
	return add(want, signed_json(k, alg, header, payload), "%s", name);
}

/* ---- header rules (jws) --------------------------------------------------- */

static void cases_algorithms(void)
{
	const uint8_t junk[4] = { 1, 2, 3, 4 };
	char *h, *p = fixture_b64(PAYLOAD), *t = NULL;

	for (enum key_id k = 0; k < K_RSA_ANY; k++)
		add(0, good(k, ""), "control: %s signed by its key", jws_alg_name(key_alg[k]));
	add(0, signed_json(K_RSA_ANY, JWS_ALG_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa-any\"}", PAYLOAD),
	    "control: RS256 on the RSA key published without alg");

	h = fixture_b64("{\"alg\":\"none\",\"kid\":\"rsa-any\"}");
	add(JWS_E_UNSUPPORTED_ALG, fixture_assemble(h, p, junk, sizeof(junk)), "alg none");
	free(h);
	h = fixture_b64("{\"alg\":\"None\",\"kid\":\"rsa-any\"}");
	add(JWS_E_UNSUPPORTED_ALG, fixture_assemble(h, p, junk, sizeof(junk)), "alg None");
	free(h);
	h = fixture_b64("{\"alg\":\"none\"}");
	assert_true(asprintf(&t, "%s.%s.", h, p) > 0);
	add(JWS_E_MALFORMED, t, "alg none, unsecured form (empty signature)");
	free(h);

	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":\"ES521\",\"kid\":\"%s\"}", kid[K_P521]) > 0);
	add_json(JWS_E_UNSUPPORTED_ALG, K_P521, JWS_ALG_ES512, t, PAYLOAD, "alg unknown (ES521)");
	free(t);
	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":\"es256\",\"kid\":\"%s\"}", kid[K_P256]) > 0);
	add_json(JWS_E_UNSUPPORTED_ALG, K_P256, JWS_ALG_ES256, t, PAYLOAD, "alg in the wrong case (es256)");
	free(t);
	t = NULL;
	assert_true(asprintf(&t, "{\"kid\":\"%s\"}", kid[K_P256]) > 0);
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, t, PAYLOAD, "alg missing");
	free(t);
	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":[\"ES256\"],\"kid\":\"%s\"}", kid[K_P256]) > 0);
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, t, PAYLOAD, "alg not a string");
	free(t);

	/* The key decides its family, never the token (RFC 8725 §3.1): by
	 * the JWK's alg, and without one by the key type. */
	add_json(0, K_P256_ANY, JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":\"p256-any\"}", PAYLOAD,
		 "control: ES256 on the P-256 key published without alg");
	for (int any = 0; any <= 1; any++) {
		enum key_id p256 = any ? K_P256_ANY : K_P256, rsa = any ? K_RSA_ANY : K_RS256;
		const char *how = any ? "published without alg" : "with its alg";

		h = header_alg(JWS_ALG_ES384, p256, "");
		add(JWS_E_UNSUPPORTED_ALG, signed_json(K_P384, JWS_ALG_ES384, h, PAYLOAD),
		    "ES384 named for the P-256 key %s", how);
		free(h);
		h = header_alg(JWS_ALG_RS256, p256, "");
		add(JWS_E_UNSUPPORTED_ALG, signed_json(K_RS256, JWS_ALG_RS256, h, PAYLOAD),
		    "an RSA signature for the P-256 key %s", how);
		free(h);
		h = header_alg(JWS_ALG_EDDSA, rsa, "");
		add(JWS_E_UNSUPPORTED_ALG, signed_json(K_ED, JWS_ALG_EDDSA, h, PAYLOAD),
		    "EdDSA named for the RSA key %s", how);
		free(h);
	}
	h = header_alg(JWS_ALG_PS256, K_RS256, "");
	add_json(JWS_E_UNSUPPORTED_ALG, K_RS256, JWS_ALG_PS256, h, PAYLOAD,
		 "a genuine PS256 signature by the key whose JWK fixes RS256");
	free(h);
	add_json(0, K_RS256, JWS_ALG_PS256, "{\"alg\":\"PS256\",\"kid\":\"rsa-any\"}", PAYLOAD,
		 "the same PS256 signature against the same key published without alg");
	h = header_alg(JWS_ALG_ES256, K_PS256, "");
	add_json(JWS_E_UNSUPPORTED_ALG, K_P256, JWS_ALG_ES256, h, PAYLOAD, "ES256 named for the PS256 key");
	free(h);

	/* The classic confusion: HS256 keyed with the RSA public key's bytes. */
	for (enum key_id k = K_RS256; k <= K_RSA_ANY; k += K_RSA_ANY - K_RS256) {
		uint8_t *der = NULL, mac[32];
		unsigned int mac_len = 0;
		char *hb, *input = NULL;
		int der_len = i2d_PUBKEY(pk[k], &der);

		assert_true(der_len > 0);
		h = header_alg(JWS_ALG_HS256, k, "");
		hb = fixture_b64(h);
		assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
		assert_non_null(HMAC(EVP_sha256(), der, der_len, (const uint8_t *)input, strlen(input), mac, &mac_len));
		add(JWS_E_UNSUPPORTED_ALG, fixture_assemble(hb, p, mac, mac_len),
		    "HS256 keyed with the RSA public key (alg confusion), key %s",
		    k == K_RSA_ANY ? "published without alg" : "with its alg");
		free(input);
		free(hb);
		free(h);
		OPENSSL_free(der);
	}
	/* HS256 under a kid no JWKS has: the service's HMAC keys are never
	 * published. */
	{
		uint8_t secret[32], mac[32];
		unsigned int mac_len = 0;
		char *hb = fixture_b64("{\"alg\":\"HS256\",\"kid\":\"hs256-in-the-token\"}"), *input = NULL;

		memset(secret, 0x5a, sizeof(secret));
		assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
		assert_non_null(HMAC(EVP_sha256(), secret, sizeof(secret), (const uint8_t *)input, strlen(input), mac,
				     &mac_len));
		add(JWS_E_UNKNOWN_KID, fixture_assemble(hb, p, mac, mac_len), "HS256 under a kid no JWKS holds");
		free(input);
		free(hb);
	}
	free(p);
}

static void cases_kid(void)
{
	char *h = header_alg(JWS_ALG_ES256, K_P256, ""), *t = NULL;

	/* One character changed. */
	h[strlen(h) - 3] = h[strlen(h) - 3] == 'A' ? 'B' : 'A';
	add_json(JWS_E_UNKNOWN_KID, K_P256, JWS_ALG_ES256, h, PAYLOAD, "unknown kid (one character off)");
	free(h);
	add_json(JWS_E_UNKNOWN_KID, K_P256, JWS_ALG_ES256, "{\"alg\":\"ES256\"}", PAYLOAD, "no kid at all");
	assert_true(asprintf(&t, "{\"alg\":\"ES256\",\"kid\":\"\"}") > 0);
	add_json(JWS_E_UNKNOWN_KID, K_P256, JWS_ALG_ES256, t, PAYLOAD, "an empty kid");
	free(t);
}

static void cases_forbidden_members(void)
{
	static const char *const members[] = {
		",\"jku\":\"https://attacker.example/jwks.json\"",
		",\"x5u\":\"https://attacker.example/cert.pem\"",
		",\"x5c\":[\"MIIB\"]",
		",\"crit\":[\"exp\"],\"exp\":1",
		",\"crit\":[]",
		",\"b64\":true",
		",\"b64\":false",
	};
	json_t *jwk = NULL;
	char *jwk_text, *extra = NULL;

	for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++)
		add(JWS_E_MALFORMED, good(K_P256, members[i]), "header member refused: %.60s", members[i] + 1);
	/* An embedded jwk — even the right key — is never trusted. */
	assert_int_equal(jwk_public_to_json(pk[K_P256], NULL, JWS_ALG_INVALID, &jwk), 0);
	jwk_text = json_dumps(jwk, JSON_COMPACT);
	assert_true(asprintf(&extra, ",\"jwk\":%s", jwk_text) > 0);
	add(JWS_E_MALFORMED, good(K_P256, extra), "embedded jwk (the signer's own key)");
	free(extra);
	free(jwk_text);
	json_decref(jwk);
}

static void cases_header_shape(void)
{
	static const char *const headers[] = { "[\"ES256\"]", "\"ES256\"", "1", "null", "{\"alg\":\"ES256\"", "ES256" };
	char *h, *t = NULL;

	add(0, good(K_P256, ",\"typ\":\"JWT\""), "control: typ JWT");
	add(JWS_E_MALFORMED, good(K_P256, ",\"typ\":1"), "typ not a string (1)");
	add(JWS_E_MALFORMED, good(K_P256, ",\"typ\":null"), "typ not a string (null)");
	assert_true(asprintf(&t, "{\"alg\":\"ES256\",\"kid\":[\"%s\"]}", kid[K_P256]) > 0);
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, t, PAYLOAD, "kid not a string");
	free(t);
	for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
		add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, headers[i], PAYLOAD, "header not a JSON object");
	{
		char *p = fixture_b64(PAYLOAD);
		add(JWS_E_MALFORMED, signed_b64(K_P256, JWS_ALG_ES256, "", p), "empty header part");
		free(p);
	}
	/* Duplicate names: which kid, which alg? */
	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"kid2\":\"%s\"}", kid[K_P256], kid[K_P384]) > 0);
	add_json(0, K_P256, JWS_ALG_ES256, t, PAYLOAD, "control: two distinct members");
	free(t);
	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"kid\":\"%s\"}", kid[K_P384], kid[K_P256]) > 0);
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, t, PAYLOAD, "duplicate header member kid");
	free(t);
	h = header_alg(JWS_ALG_ES256, K_P256, "");
	t = NULL;
	assert_true(asprintf(&t, "{\"alg\":\"ES256\",%s", h + 1) > 0);
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, t, PAYLOAD, "duplicate header member alg");
	free(t);
	free(h);
}

static void cases_structure(void)
{
	char *g = good(K_P256, ""), *last_dot = strrchr(g, '.'), *t = NULL;
	struct fixture_rule *c;

	t = strndup(g, (size_t)(last_dot - g));
	add(JWS_E_MALFORMED, t, "two parts (signature dropped)");
	t = strndup(g, (size_t)(last_dot - g) + 1);
	add(JWS_E_MALFORMED, t, "empty signature part");
	t = NULL;
	assert_true(asprintf(&t, "%s.", g) > 0);
	add(JWS_E_MALFORMED, t, "four parts");
	t = NULL;
	assert_true(asprintf(&t, "%s.e30.e30", g) > 0);
	add(JWS_E_MALFORMED, t, "five parts");
	add(JWS_E_MALFORMED, strdup(""), "empty token");
	add(JWS_E_MALFORMED, strdup(".."), "three empty parts");
	add(JWS_E_MALFORMED, strdup("e30"), "one part");
	/* A NUL inside the given length. */
	t = strdup(g);
	c = add(JWS_E_MALFORMED, t, "a NUL inside the token's length");
	t[3] = '\0';
	c->len = strlen(g);
	/* Only len characters are read: what follows does not matter. */
	t = NULL;
	assert_true(asprintf(&t, "%s.garbage", g) > 0);
	c = add(0, t, "bytes after the token's length are not read");
	c->len = strlen(g);
	free(g);
}

/* ---- base64url spelling ----------------------------------------------------- */

enum part { PART_HEADER, PART_PAYLOAD };

static char *respelled(enum part which, char *(*respell)(const char *))
{
	char *h = header_for(K_P256, ",\"typ\":\"JWT\",\"x\":\"~~~~~~~~~\"");
	char *hb = fixture_b64(h), *pb = fixture_b64("{\"sub\":\"alice\",\"exp\":1700003600,\"x\":\"~~~~~~~\"}"), *token, *changed;

	changed = respell(which == PART_HEADER ? hb : pb);
	token = which == PART_HEADER ? signed_b64(K_P256, JWS_ALG_ES256, changed, pb) :
				       signed_b64(K_P256, JWS_ALG_ES256, hb, changed);
	free(changed);
	free(h);
	free(hb);
	free(pb);
	return token;
}

static char *same(const char *s) { return strdup(s); }

static char *padded(const char *s)
{
	char *out = NULL;
	size_t rest = strlen(s) % 4;

	/* The strings are chosen so that there is padding to add. */
	assert_true(rest == 2 || rest == 3);
	assert_true(asprintf(&out, "%s%s", s, rest == 2 ? "==" : "=") > 0);
	return out;
}

static char *plus_slash(const char *s)
{
	char *out = strdup(s);
	int changed = 0;

	for (char *c = out; *c; c++) {
		if (*c == '-') { *c = '+'; changed = 1; }
		else if (*c == '_') { *c = '/'; changed = 1; }
	}
	assert_true(changed);
	return out;
}

static char *with_newline(const char *s)
{
	char *out = NULL;

	assert_true(asprintf(&out, "%.8s\n%s", s, s + 8) > 0);
	return out;
}

static char *with_space(const char *s)
{
	char *out = NULL;

	assert_true(asprintf(&out, "%.4s %s", s, s + 4) > 0);
	return out;
}

/* The last character with one spare bit set: same bytes, another spelling. */
static char *spare_bits(const char *s)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = strdup(s);
	size_t len = strlen(out), rest = len % 4;
	int v = (int)(strchr(alphabet, out[len - 1]) - alphabet);

	assert_true(rest == 2 || rest == 3);
	out[len - 1] = alphabet[v | 1];
	assert_int_not_equal(out[len - 1], s[len - 1]);
	return out;
}

static void cases_base64url(void)
{
	static const struct { char *(*fn)(const char *); const char *what; } respellers[] = {
		{ padded, "padding" }, { plus_slash, "'+' and '/'" }, { with_newline, "a newline" },
		{ with_space, "a space" }, { spare_bits, "non-zero spare bits" },
	};
	static const char *const part_names[] = { "header", "payload" };

	for (int part = PART_HEADER; part <= PART_PAYLOAD; part++) {
		add(0, respelled((enum part)part, same), "control: canonical %s", part_names[part]);
		for (size_t i = 0; i < sizeof(respellers) / sizeof(respellers[0]); i++)
			add(JWS_E_MALFORMED, respelled((enum part)part, respellers[i].fn), "%s with %s",
			    part_names[part], respellers[i].what);
	}
	{
		char *g = good(K_P256, ""), *dot = strrchr(g, '.'), *t = NULL, *sig;

		/* 64 bytes → 86 characters: two padding characters would follow. */
		assert_int_equal(strlen(dot + 1), 86);
		assert_true(asprintf(&t, "%s==", g) > 0);
		add(JWS_E_MALFORMED, t, "signature with padding");
		sig = spare_bits(dot + 1);
		t = NULL;
		assert_true(asprintf(&t, "%.*s.%s", (int)(dot - g), g, sig) > 0);
		add(JWS_E_MALFORMED, t, "signature with non-zero spare bits");
		free(sig);
		free(g);
	}
}

/* ---- sizes and depth ------------------------------------------------------------- */

/* {members,"pad":"xxx"} of exactly total bytes. */
static char *sized_json(const char *members, size_t total)
{
	size_t fixed = strlen("{,\"pad\":\"\"}") + strlen(members), n;
	char *out;

	assert_true(total >= fixed);
	n = total - fixed;
	out = malloc(total + 1);
	assert_non_null(out);
	sprintf(out, "{%s,\"pad\":\"", members);
	memset(out + strlen(out), 'x', n);
	sprintf(out + total - 2, "\"}");
	assert_int_equal(strlen(out), total);
	return out;
}

static char *sized_token(size_t header_bytes, size_t payload_bytes)
{
	char *hm = NULL, *h, *p, *token;

	assert_true(asprintf(&hm, "\"alg\":\"ES256\",\"kid\":\"%s\"", kid[K_P256]) > 0);
	h = sized_json(hm, header_bytes);
	p = sized_json("\"sub\":\"alice\",\"exp\":1700003600", payload_bytes);
	token = signed_json(K_P256, JWS_ALG_ES256, h, p);
	free(hm);
	free(h);
	free(p);
	return token;
}

static char *nested(const char *members, int depth)
{
	/* The object is depth 1; each array adds one. */
	char *s = malloc(strlen(members) + 16 + 2 * (size_t)depth), *p;

	assert_non_null(s);
	p = s + sprintf(s, "{%s,\"x\":", members);
	for (int i = 1; i < depth; i++)
		*p++ = '[';
	*p++ = '1';
	for (int i = 1; i < depth; i++)
		*p++ = ']';
	strcpy(p, "}");
	return s;
}

static void cases_limits(void)
{
	char *hm = NULL, *ok, *deep, *h;

	add(0, sized_token(JWS_MAX_HEADER, 100), "control: header of exactly 8 KiB");
	add(JWS_E_MALFORMED, sized_token(JWS_MAX_HEADER + 1, 100), "header over 8 KiB");
	add(0, sized_token(100, JWS_MAX_PAYLOAD), "control: payload of exactly 8 KiB");
	add(JWS_E_MALFORMED, sized_token(100, JWS_MAX_PAYLOAD + 1), "payload over 8 KiB");
	/* 6000 header bytes → 8000 characters, 6222 payload bytes → 8296, two
	 * dots and 86 signature characters: exactly 16384.  One payload byte
	 * more is 16386 characters, while both parts stay under 8 KiB. */
	{
		struct fixture_rule *c = add(0, sized_token(6000, 6222), "control: token of exactly 16 KiB");
		assert_int_equal(c->len, JWS_MAX_TOKEN);
		c = add(JWS_E_MALFORMED, sized_token(6000, 6223), "token over 16 KiB, each part under 8 KiB");
		assert_true(c->len > JWS_MAX_TOKEN);
	}
	assert_true(asprintf(&hm, "\"alg\":\"ES256\",\"kid\":\"%s\"", kid[K_P256]) > 0);
	ok = nested(hm, 16);
	deep = nested(hm, 17);
	add_json(0, K_P256, JWS_ALG_ES256, ok, PAYLOAD, "control: header nested 16 deep");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, deep, PAYLOAD, "header nested 17 deep");
	free(ok);
	free(deep);
	h = header_for(K_P256, "");
	ok = nested("\"exp\":1700003600", 16);
	deep = nested("\"exp\":1700003600", 17);
	add_json(0, K_P256, JWS_ALG_ES256, h, ok, "control: payload nested 16 deep");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, deep, "payload nested 17 deep");
	free(ok);
	free(deep);
	free(h);
	free(hm);
}

/* ---- signatures --------------------------------------------------------------------- */

/* An ES256 token whose signature mangle changes. */
static char *es256_with_sig(void (*mangle)(uint8_t *sig, size_t *sig_len))
{
	char *h = header_for(K_P256, ""), *hb = fixture_b64(h), *p = fixture_b64(PAYLOAD), *input = NULL, *token;
	uint8_t sig[200];
	size_t sig_len = 64;

	assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
	sign_raw(K_P256, JWS_ALG_ES256, input, sig, &sig_len);
	assert_int_equal(sig_len, 64);
	mangle(sig, &sig_len);
	token = fixture_assemble(hb, p, sig, sig_len);
	free(input);
	free(hb);
	free(h);
	free(p);
	return token;
}

static uint8_t p256_order[32];

static void mangle_append_zero(uint8_t *sig, size_t *sig_len) { sig[(*sig_len)++] = 0; }
static void mangle_truncate(uint8_t *sig, size_t *sig_len) { (*sig_len)--; }
static void mangle_r_zero(uint8_t *sig, size_t *sig_len) { memset(sig, 0, 32); }
static void mangle_s_zero(uint8_t *sig, size_t *sig_len) { memset(sig + 32, 0, 32); }
static void mangle_both_zero(uint8_t *sig, size_t *sig_len) { memset(sig, 0, 64); }
static void mangle_r_order(uint8_t *sig, size_t *sig_len) { memcpy(sig, p256_order, 32); }
static void mangle_s_order(uint8_t *sig, size_t *sig_len) { memcpy(sig + 32, p256_order, 32); }
static void mangle_s_all_ones(uint8_t *sig, size_t *sig_len) { memset(sig + 32, 0xff, 32); }
static void mangle_flip(uint8_t *sig, size_t *sig_len) { sig[10] ^= 0x01; }
/* r||s as two 33-byte integers with a leading zero each: same values,
 * another width. */
static void mangle_widen(uint8_t *sig, size_t *sig_len)
{
	memmove(sig + 34, sig + 32, 32);
	sig[33] = 0;
	memmove(sig + 1, sig, 32);
	sig[0] = 0;
	*sig_len = 66;
}

static void cases_ecdsa(void)
{
	static const struct { void (*fn)(uint8_t *, size_t *); const char *what; } mangles[] = {
		{ mangle_append_zero, "65 bytes (a zero appended)" }, { mangle_truncate, "63 bytes" },
		{ mangle_widen, "r and s 33 bytes wide" }, { mangle_r_zero, "r = 0" }, { mangle_s_zero, "s = 0" },
		{ mangle_both_zero, "r = s = 0 (CVE-2022-21449)" }, { mangle_r_order, "r = n" },
		{ mangle_s_order, "s = n" }, { mangle_s_all_ones, "s > n (all ones)" }, { mangle_flip, "one bit flipped" },
	};
	EC_GROUP *group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);

	assert_non_null(group);
	assert_int_equal(BN_bn2binpad(EC_GROUP_get0_order(group), p256_order, 32), 32);
	EC_GROUP_free(group);
	for (size_t i = 0; i < sizeof(mangles) / sizeof(mangles[0]); i++)
		add(JWS_E_BAD_SIGNATURE, es256_with_sig(mangles[i].fn), "ES256 signature %s", mangles[i].what);
	/* DER (what OpenSSL produces natively) is not the JOSE form. */
	{
		char *h = header_for(K_P256, ""), *hb = fixture_b64(h), *p = fixture_b64(PAYLOAD), *input = NULL;
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		uint8_t der[80];
		size_t der_len = sizeof(der);

		assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
		assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk[K_P256]), 1);
		assert_int_equal(EVP_DigestSign(md, der, &der_len, (const uint8_t *)input, strlen(input)), 1);
		assert_int_equal(der[0], 0x30);
		add(JWS_E_BAD_SIGNATURE, fixture_assemble(hb, p, der, der_len), "ES256 signature in DER");
		EVP_MD_CTX_free(md);
		free(input);
		free(hb);
		free(h);
		free(p);
	}
	/* Another payload under a genuine signature, for every public alg. */
	for (enum key_id k = 0; k < K_RSA_ANY; k++) {
		char *g = good(k, ""), *first = strchr(g, '.'), *dot = strrchr(g, '.'), *t = NULL;
		char *p = fixture_b64("{\"sub\":\"mallory\",\"exp\":1700003600}");

		assert_true(asprintf(&t, "%.*s.%s%s", (int)(first - g), g, p, dot) > 0);
		add(JWS_E_BAD_SIGNATURE, t, "%s signature over another payload", jws_alg_name(key_alg[k]));
		free(p);
		free(g);
	}
}

/* A signature whose first byte is zero (1 in 256) is a number OpenSSL
 * would also take without that byte; JWS demands exactly the modulus
 * length, for PKCS#1 v1.5 and PSS alike. */
static void cases_rsa_length(enum key_id k)
{
	char *h = header_for(k, ""), *hb = fixture_b64(h);
	int found = 0;

	for (int i = 0; i < 20000 && !found; i++) {
		char claims[64], *p, *input = NULL;
		uint8_t sig[JWS_MAX_SIG + 1];
		size_t sig_len = JWS_MAX_SIG;

		snprintf(claims, sizeof(claims), "{\"exp\":1700003600,\"n\":%d}", i);
		p = fixture_b64(claims);
		assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
		sign_raw(k, key_alg[k], input, sig, &sig_len);
		assert_int_equal(sig_len, 256);
		if (sig[0] == 0) {
			found = 1;
			add(0, fixture_assemble(hb, p, sig, sig_len), "control: %s signature starting with a zero byte",
			    jws_alg_name(key_alg[k]));
			add(JWS_E_BAD_SIGNATURE, fixture_assemble(hb, p, sig + 1, sig_len - 1),
			    "%s signature without its leading zero byte", jws_alg_name(key_alg[k]));
			memmove(sig + 1, sig, sig_len);
			sig[0] = 0;
			add(JWS_E_BAD_SIGNATURE, fixture_assemble(hb, p, sig, sig_len + 1), "%s signature with a zero byte more",
			    jws_alg_name(key_alg[k]));
		}
		free(input);
		free(p);
	}
	assert_true(found);
	free(hb);
	free(h);
}

struct pss_params {
	const EVP_MD *mgf1;
	int saltlen;
	const char *what;
};

static char *ps256_token(enum key_id k, const char *header, const struct pss_params *pp)
{
	char *hb = fixture_b64(header), *p = fixture_b64(PAYLOAD), *input = NULL, *token;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t sig[512];
	size_t sig_len = sizeof(sig);

	assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
	assert_int_equal(EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, pk[k]), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, pp->mgf1), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pp->saltlen), 1);
	assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const uint8_t *)input, strlen(input)), 1);
	token = fixture_assemble(hb, p, sig, sig_len);
	EVP_MD_CTX_free(md);
	free(input);
	free(hb);
	free(p);
	return token;
}

static void cases_rsa(void)
{
	const struct pss_params good_pss = { EVP_sha256(), 32, "MGF1-SHA256, salt 32" };
	const struct pss_params bad[] = {
		{ EVP_sha256(), 0, "salt 0" }, { EVP_sha256(), RSA_PSS_SALTLEN_MAX, "the longest salt" },
		{ EVP_sha256(), 64, "salt 64" }, { EVP_sha1(), 32, "MGF1-SHA1" }, { EVP_sha512(), 32, "MGF1-SHA512" },
	};
	char *h = header_for(K_PS256, "");

	cases_rsa_length(K_RS256);
	cases_rsa_length(K_PS256);
	add(0, ps256_token(K_PS256, h, &good_pss), "control: PS256 with %s", good_pss.what);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		add(JWS_E_BAD_SIGNATURE, ps256_token(K_PS256, h, &bad[i]), "PS256 with %s", bad[i].what);
	free(h);
	/* A PKCS#1 v1.5 signature named PS256, and a PSS one named RS256, on
	 * the key that allows both. */
	add_json(JWS_E_BAD_SIGNATURE, K_RSA_ANY, JWS_ALG_RS256, "{\"alg\":\"PS256\",\"kid\":\"rsa-any\"}", PAYLOAD,
		 "a PKCS#1 v1.5 signature named PS256");
	add_json(JWS_E_BAD_SIGNATURE, K_RSA_ANY, JWS_ALG_PS256, "{\"alg\":\"RS256\",\"kid\":\"rsa-any\"}", PAYLOAD,
		 "a PSS signature named RS256");
}

static void cases_eddsa(void)
{
	char *h = header_for(K_ED, ""), *hb = fixture_b64(h), *p = fixture_b64(PAYLOAD), *input = NULL;
	uint8_t sig[80];
	size_t sig_len = sizeof(sig);

	assert_true(asprintf(&input, "%s.%s", hb, p) > 0);
	sign_raw(K_ED, JWS_ALG_EDDSA, input, sig, &sig_len);
	assert_int_equal(sig_len, 64);
	sig[64] = 0;
	add(JWS_E_BAD_SIGNATURE, fixture_assemble(hb, p, sig, 65), "EdDSA signature of 65 bytes");
	add(JWS_E_BAD_SIGNATURE, fixture_assemble(hb, p, sig, 63), "EdDSA signature of 63 bytes");
	free(input);
	free(hb);
	free(h);
	free(p);
}

/* ---- claims rules (jwt) ------------------------------------------------------------- */

/* A P-256 token with typ (NULL: none) and the claims members. */
static char *claims_typ(const char *typ, const char *members)
{
	char *h = NULL, *p = NULL, *t;

	if (typ != NULL)
		assert_true(asprintf(&h, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"typ\":\"%s\"}", kid[K_P256], typ) > 0);
	else
		h = header_for(K_P256, "");
	assert_true(asprintf(&p, "{%s}", members) > 0);
	t = signed_json(K_P256, JWS_ALG_ES256, h, p);
	free(h);
	free(p);
	return t;
}

static char *claims(const char *members)
{
	return claims_typ("at+jwt", members);
}

static struct fixture_rule *add_claims(int want, const char *members, const char *name)
{
	return add(want, claims(members), "%s: {%.60s}", name, members);
}

/* "exp":exp followed by rest. */
static struct fixture_rule *add_exp(int want, long long exp, const char *rest, const char *name)
{
	char m[128];

	snprintf(m, sizeof(m), "\"exp\":%lld%s", exp, rest);
	return add_claims(want, m, name);
}

static void cases_signature_before_claims(void)
{
	char *t = claims("\"exp\":1"), *dot = strrchr(t, '.'), *h;

	/* An expired token with a broken signature says bad_signature: nothing
	 * about its claims is revealed before it is known to be genuine. */
	dot[1] = dot[1] == 'A' ? 'B' : 'A';
	add(JWS_E_BAD_SIGNATURE, t, "expired and badly signed: bad_signature first");
	h = header_for(K_P256, ",\"jku\":\"https://x\"");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "{\"exp\":1}", "expired with jku: malformed first");
	free(h);
	add_json(JWS_E_UNKNOWN_KID, K_P256, JWS_ALG_ES256, "{\"alg\":\"ES256\",\"kid\":\"other\"}", "{\"exp\":1}",
		 "expired under an unknown kid: unknown_kid first");
}

static void cases_times(void)
{
	static const char *const not_numbers[] = { "\"1700003600\"", "true", "null", "[1700003600]", "{}" };
	char rest[80];

	add_claims(0, "\"exp\":1700003600", "control: exp");
	add_claims(JWS_E_MALFORMED, "\"sub\":\"alice\"", "exp missing");
	for (size_t i = 0; i < sizeof(not_numbers) / sizeof(not_numbers[0]); i++) {
		char m[64];
		snprintf(m, sizeof(m), "\"exp\":%s", not_numbers[i]);
		add_claims(JWS_E_MALFORMED, m, "exp not a number");
	}
	/* A real is a number (RFC 7519 NumericDate allows fractions). */
	add_claims(0, "\"exp\":1700003600.5", "exp a real");
	add_claims(0, "\"exp\":1.7000036e9", "exp in exponent form");
	add_claims(0, "\"exp\":1700003600,\"nbf\":1700000000,\"iat\":1700000000", "control: nbf and iat");
	add_claims(JWS_E_MALFORMED, "\"exp\":1700003600,\"nbf\":\"1700000000\"", "nbf not a number");
	add_claims(JWS_E_MALFORMED, "\"exp\":1700003600,\"nbf\":false", "nbf not a number");
	add_claims(JWS_E_MALFORMED, "\"exp\":1700003600,\"nbf\":null", "nbf not a number");
	add_claims(JWS_E_MALFORMED, "\"exp\":1700003600,\"iat\":\"1700000000\"", "iat not a number");
	add_claims(JWS_E_MALFORMED, "\"exp\":1700003600,\"iat\":true", "iat not a number");
	add_claims(0, "\"exp\":1700003600,\"iat\":1699999999.25", "iat a real");

	/* RFC 7519 §4.1.4: valid only before exp + leeway. */
	add_exp(0, NOW - LEEWAY + 1, "", "exp one second inside the leeway");
	add_exp(JWS_E_EXPIRED, NOW - LEEWAY, "", "exp exactly at the leeway");
	add_exp(JWS_E_EXPIRED, NOW - LEEWAY - 1, "", "exp past the leeway");
	add_exp(0, NOW, "", "exp now (within the leeway)");
	add_exp(JWS_E_EXPIRED, 1, "", "exp long past");
	add_exp(JWS_E_EXPIRED, -1, "", "exp negative");
	snprintf(rest, sizeof(rest), "\"exp\":%lld.5", NOW - LEEWAY - 1);
	add_claims(JWS_E_EXPIRED, rest, "exp half a second past the leeway");
	snprintf(rest, sizeof(rest), "\"exp\":%lld.5", NOW - LEEWAY);
	add_claims(0, rest, "exp half a second inside the leeway");
	/* Without leeway the boundary is exp itself. */
	add_exp(0, NOW + 1, "", "exp a second ahead, no leeway")->leeway = 0;
	add_exp(JWS_E_EXPIRED, NOW, "", "exp now, no leeway")->leeway = 0;

	/* Not before nbf - leeway. */
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW + LEEWAY);
	add_exp(0, NOW + 3600, rest, "nbf exactly at the leeway");
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW + LEEWAY + 1);
	add_exp(JWS_E_NOT_YET_VALID, NOW + 3600, rest, "nbf past the leeway");
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld.5", NOW + LEEWAY);
	add_exp(JWS_E_NOT_YET_VALID, NOW + 3600, rest, "nbf half a second past the leeway");
	snprintf(rest, sizeof(rest), ",\"nbf\":%lld", NOW - 100000);
	add_exp(0, NOW + 3600, rest, "nbf long past");
	/* A token issued in the future comes from a clock not trusted. */
	snprintf(rest, sizeof(rest), ",\"iat\":%lld", NOW + LEEWAY);
	add_exp(0, NOW + 3600, rest, "iat exactly at the leeway");
	snprintf(rest, sizeof(rest), ",\"iat\":%lld", NOW + LEEWAY + 1);
	add_exp(JWS_E_NOT_YET_VALID, NOW + 3600, rest, "iat past the leeway");
	snprintf(rest, sizeof(rest), ",\"iat\":%lld.5", NOW + LEEWAY);
	add_exp(JWS_E_NOT_YET_VALID, NOW + 3600, rest, "iat half a second past the leeway");
}

static void cases_issuer_audience(void)
{
	static const struct { const char *members; int want; } iss[] = {
		{ "\"exp\":1700003600,\"iss\":\"https://issuer.example\"", 0 },
		{ "\"exp\":1700003600,\"iss\":\"https://issuer.example/\"", JWS_E_WRONG_ISSUER },
		{ "\"exp\":1700003600,\"iss\":\"https://ISSUER.example\"", JWS_E_WRONG_ISSUER },
		{ "\"exp\":1700003600,\"iss\":\"https://issuer.exampl\"", JWS_E_WRONG_ISSUER },
		{ "\"exp\":1700003600", JWS_E_WRONG_ISSUER },
		{ "\"exp\":1700003600,\"iss\":[\"https://issuer.example\"]", JWS_E_MALFORMED },
	};
	/* aud: a string equal to the audience, or an array of strings holding
	 * it; another type, or an array with a non-string, is malformed. */
	static const struct { const char *members; int want; } aud[] = {
		{ "\"exp\":1700003600,\"aud\":\"api\"", 0 },
		{ "\"exp\":1700003600,\"aud\":[\"web\",\"api\"]", 0 },
		{ "\"exp\":1700003600,\"aud\":[\"api\"]", 0 },
		{ "\"exp\":1700003600,\"aud\":\"apis\"", JWS_E_WRONG_AUDIENCE },
		{ "\"exp\":1700003600,\"aud\":\"API\"", JWS_E_WRONG_AUDIENCE },
		{ "\"exp\":1700003600,\"aud\":[\"web\",\"ap\"]", JWS_E_WRONG_AUDIENCE },
		{ "\"exp\":1700003600,\"aud\":[]", JWS_E_WRONG_AUDIENCE },
		{ "\"exp\":1700003600", JWS_E_WRONG_AUDIENCE },
		{ "\"exp\":1700003600,\"aud\":[\"api\",7]", JWS_E_MALFORMED },
		{ "\"exp\":1700003600,\"aud\":[7,\"api\"]", JWS_E_MALFORMED },
		{ "\"exp\":1700003600,\"aud\":[[\"api\"]]", JWS_E_MALFORMED },
		{ "\"exp\":1700003600,\"aud\":{\"api\":1}", JWS_E_MALFORMED },
		{ "\"exp\":1700003600,\"aud\":null", JWS_E_MALFORMED },
	};
	static const struct { const char *members; int want; } token_type[] = {
		{ "\"exp\":1700003600,\"token_type\":\"access\"", 0 },
		{ "\"exp\":1700003600,\"token_type\":\"Access\"", JWS_E_WRONG_TYPE },
		{ "\"exp\":1700003600,\"token_type\":\"refresh\"", JWS_E_WRONG_TYPE },
		{ "\"exp\":1700003600", JWS_E_WRONG_TYPE },
		{ "\"exp\":1700003600,\"token_type\":1", JWS_E_MALFORMED },
	};

	for (size_t i = 0; i < sizeof(iss) / sizeof(iss[0]); i++)
		add_claims(iss[i].want, iss[i].members, "issuer https://issuer.example")->issuer = "https://issuer.example";
	add_claims(0, "\"exp\":1700003600,\"iss\":\"https://other.example\"", "issuer not asked");
	for (size_t i = 0; i < sizeof(aud) / sizeof(aud[0]); i++)
		add_claims(aud[i].want, aud[i].members, "audience api")->audience = "api";
	add_claims(0, "\"exp\":1700003600,\"aud\":\"web\"", "audience not asked");
	for (size_t i = 0; i < sizeof(token_type) / sizeof(token_type[0]); i++)
		add_claims(token_type[i].want, token_type[i].members, "token_type access")->token_type = "access";
	add_claims(0, "\"exp\":1700003600,\"token_type\":\"refresh\"", "token_type not asked");
	/* Everything asked at once. */
	{
		struct fixture_rule *c = add_claims(0, "\"iss\":\"https://issuer.example\",\"sub\":\"alice\",\"aud\":\"api\","
						    "\"iat\":1700000000,\"nbf\":1700000000,\"exp\":1700003600,"
						    "\"token_type\":\"access\"", "every expectation met");
		c->issuer = "https://issuer.example";
		c->audience = "api";
		c->typ = "at+jwt";
		c->token_type = "access";
	}
}

/* RFC 7515 §4.1.9: "application/" may be left out, media types compare
 * case-insensitively. */
static void cases_typ(void)
{
	static const char *const same_type[] = { "at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt",
						 "APPLICATION/AT+JWT" };
	static const char *const other[] = { "jwt", "JWT", "rt+jwt", "at+jwt2", "text/at+jwt", "application/jwt",
					     "application/application/at+jwt", "at+jwt ", "" };

	for (size_t i = 0; i < sizeof(same_type) / sizeof(same_type[0]); i++)
		add(0, claims_typ(same_type[i], "\"exp\":1700003600"), "typ %s is at+jwt", same_type[i])->typ = "at+jwt";
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		add(JWS_E_WRONG_TYPE, claims_typ(other[i], "\"exp\":1700003600"), "typ '%s' is not at+jwt",
		    other[i])->typ = "at+jwt";
	add(JWS_E_WRONG_TYPE, claims_typ(NULL, "\"exp\":1700003600"), "no typ when at+jwt is asked")->typ = "at+jwt";
	/* The expected value may carry the prefix too. */
	add(0, claims_typ("at+jwt", "\"exp\":1700003600"), "typ at+jwt is application/at+jwt")->typ =
		"application/at+jwt";
	add(JWS_E_WRONG_TYPE, claims_typ("rt+jwt", "\"exp\":1700003600"), "typ rt+jwt is not application/at+jwt")
		->typ = "application/at+jwt";
	add(0, claims_typ("rt+jwt", "\"exp\":1700003600"), "typ not asked");
}

static void cases_payload_json(void)
{
	char *h = header_for(K_P256, "");

	add_json(0, K_P256, JWS_ALG_ES256, h, "{\"exp\":1700003600,\"sub\":\"a\"}", "control: payload object");
	/* Duplicate names: which exp would count? */
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "{\"exp\":1,\"exp\":1700003600}", "duplicate exp");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "{\"exp\":1700003600,\"sub\":\"a\",\"sub\":\"b\"}",
		 "duplicate sub");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "[{\"exp\":1700003600}]", "payload an array");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "\"exp\"", "payload a string");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "1700003600", "payload a number");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "{\"exp\":1700003600", "payload cut short");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "{\"exp\":1700003600} {}", "payload with trailing JSON");
	add_json(JWS_E_MALFORMED, K_P256, JWS_ALG_ES256, h, "not json at all", "payload not JSON");
	{
		char *hb = fixture_b64(h);
		add(JWS_E_MALFORMED, signed_b64(K_P256, JWS_ALG_ES256, hb, ""), "empty payload");
		free(hb);
	}
	free(h);
}

/* ---- building -------------------------------------------------------------------------- */

static void rules_keys(void)
{
	json_t *doc = json_object(), *list = json_array();

	assert_non_null(doc);
	assert_non_null(list);
	assert_int_equal(json_object_set_new(doc, "keys", list), 0);
	pk[K_P256] = fixture_keypair(JWS_ALG_ES256);
	pk[K_P384] = fixture_keypair(JWS_ALG_ES384);
	pk[K_P521] = fixture_keypair(JWS_ALG_ES512);
	pk[K_RS256] = fixture_keypair(JWS_ALG_RS256);
	pk[K_PS256] = fixture_keypair(JWS_ALG_PS256);
	pk[K_ED] = fixture_keypair(JWS_ALG_EDDSA);
	pk[K_RSA_ANY] = pk[K_RS256];
	assert_true(EVP_PKEY_up_ref(pk[K_RSA_ANY]));
	pk[K_P256_ANY] = fixture_keypair(JWS_ALG_ES256);
	for (enum key_id k = 0; k < K_COUNT; k++) {
		json_t *jwk = NULL;

		assert_non_null(pk[k]);
		if (k == K_RSA_ANY || k == K_P256_ANY)
			snprintf(kid[k], sizeof(kid[k]), "%s", k == K_RSA_ANY ? "rsa-any" : "p256-any");
		else
			assert_int_equal(jwk_thumbprint(pk[k], kid[k]), 0);
		assert_int_equal(jwk_public_to_json(pk[k], kid[k], key_alg[k], &jwk), 0);
		assert_int_equal(json_array_append_new(list, jwk), 0);
	}
	R->jwks = json_dumps(doc, JSON_COMPACT);
	assert_non_null(R->jwks);
	json_decref(doc);
}

struct fixture_rules *fixture_rules_build(void)
{
	R = calloc(1, sizeof(*R));
	assert_non_null(R);
	rules_keys();
	cases_algorithms();
	cases_kid();
	cases_forbidden_members();
	cases_header_shape();
	cases_structure();
	cases_base64url();
	cases_limits();
	cases_ecdsa();
	cases_rsa();
	cases_eddsa();
	cases_signature_before_claims();
	cases_times();
	cases_issuer_audience();
	cases_typ();
	cases_payload_json();
	return R;
}

void fixture_rules_free(struct fixture_rules *rules)
{
	if (rules == NULL)
		return;
	for (size_t i = 0; i < rules->count; i++)
		free(rules->cases[i].token);
	free(rules->cases);
	free(rules->jwks);
	free(rules);
	for (enum key_id k = 0; k < K_COUNT; k++) {
		EVP_PKEY_free(pk[k]);
		pk[k] = NULL;
	}
	R = NULL;
}
