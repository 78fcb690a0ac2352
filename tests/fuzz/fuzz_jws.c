/* fuzz_jws: the token parser and verifier of SPEC §5.2 — jws_parse,
 * jwt_decode_unverified, jws_verify (with its memo on) and jwt_verify —
 * against a fixed set of public keys: those of the Wycheproof JWS vectors
 * (ES256, RSA 2048 for RS* and PS*) and RFC 8037's Ed25519 key, found by
 * kid (no kid: the Ed25519 key).  HS256 is left out: this service verifies
 * it inside the token.  An input without a dot is a header and payload that
 * the target signs with the Ed25519 key first (sign_and_check), so that the
 * header and claims rules meet tokens whose signature holds.
 *
 * Invariants: a parsed token is three canonical base64url parts whose
 * decodings are what the parser returns, with the signing input ending at
 * the second dot, the header's alg and kid, no forbidden member, and the
 * limits kept; a failure leaves outputs untouched; jwt_decode_unverified
 * agrees with jws_parse and the strict parse of the payload; jws_verify
 * accepts exactly the tokens whose signature OpenSSL itself (EVP, without
 * the project's code) verifies over the signing input with the key the kid
 * names, for an algorithm the key allows — so it never accepts a forgery —
 * and says the same again from its memo; jwt_verify accepts only what
 * jws_verify accepts, with claims equal to the decoded ones that keep the
 * claims rules (exp, nbf, iat with the leeway; iss, aud, typ when
 * expected). */
#include <errno.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "fuzz.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/json.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"
#include "hsmjwt/jwt.h"

#define NOW INT64_C(1700000000)
#define LEEWAY 60
#define MAX_KEYS 32

static struct jwk_key *keys[MAX_KEYS];
static size_t key_count;
static struct jwk_key *kidless;
static EVP_PKEY *signer;            /* kidless's private half */
/* Inputs that parsed, verified and passed jwt_verify: FUZZ_STATS=1 prints
 * them at exit, to see that a corpus reaches the accepting paths at all. */
static unsigned long stats_parsed, stats_verified, stats_jwt;

static void print_stats(void)
{
	dprintf(2, "fuzz_jws: parsed=%lu verified=%lu jwt_verified=%lu\n", stats_parsed, stats_verified,
		stats_jwt);
}

static const struct jwk_key *lookup(void *ctx, const char *kid)
{
	if (kid == NULL)
		return kidless;
	for (size_t i = 0; i < key_count; i++) {
		if (strcmp(keys[i]->kid, kid) == 0)
			return keys[i];
	}
	return NULL;
}

/* The first key of each kid; keys without one are left out. */
static void add_key(const json_t *jwk)
{
	struct jwk_key *key = NULL;

	if (jwk == NULL || key_count == MAX_KEYS || jwk_key_from_json(jwk, &key) < 0)
		return;
	if (key->kid[0] == '\0' || lookup(NULL, key->kid) != NULL) {
		jwk_key_free(key);
		return;
	}
	keys[key_count++] = key;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	json_error_t error;
	json_t *doc, *group;
	size_t i;

	fuzz_quiet_logs();
	doc = json_load_file(FUZZ_DATA_DIR "/wycheproof/json_web_signature_test.json", 0, &error);
	FUZZ_CHECK(doc != NULL);
	json_array_foreach(json_object_get(doc, "testGroups"), i, group) {
		const json_t *pub = json_object_get(group, "public");
		if (json_is_string(json_object_get(pub, "kid")))
			add_key(pub);
	}
	json_decref(doc);
	doc = json_load_file(FUZZ_DATA_DIR "/jose-cookbook/curve25519/jws.json", 0, &error);
	FUZZ_CHECK(doc != NULL);
	FUZZ_CHECK(jwk_key_from_json(json_object_get(json_object_get(doc, "input"), "key"), &kidless) == 0);
	{
		const char *d = json_string_value(json_object_get(json_object_get(json_object_get(doc, "input"),
										  "key"), "d"));
		uint8_t raw[32];
		size_t raw_len = 0;
		FUZZ_CHECK(d != NULL && b64url_decode(d, strlen(d), raw, &raw_len) == 0 && raw_len == 32);
		signer = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, raw_len);
		FUZZ_CHECK(signer != NULL);
	}
	json_decref(doc);
	/* An ES256, RSA keys and the Ed25519 one, or the oracle proves little. */
	FUZZ_CHECK(key_count >= 5 && lookup(NULL, "kid-ec-sign") != NULL && lookup(NULL, "PS256_2048") != NULL);
	FUZZ_CHECK(jws_verify_memo_enable(256) == 0);
	if (getenv("FUZZ_STATS") != NULL)
		atexit(print_stats);
	return 0;
}

/* OpenSSL's own verdict on sig over data: 1 valid, 0 not. */
static int oracle(enum jws_alg alg, EVP_PKEY *pkey, const uint8_t *data, size_t n, const uint8_t *sig,
		  size_t sig_len)
{
	const EVP_MD *md = NULL;
	EVP_MD_CTX *ctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	ECDSA_SIG *es = NULL;
	unsigned char *der = NULL;
	int der_len, ok = 0, pad = 0;

	switch (alg) {
	case JWS_ALG_RS256: md = EVP_sha256(); pad = RSA_PKCS1_PADDING; break;
	case JWS_ALG_RS384: md = EVP_sha384(); pad = RSA_PKCS1_PADDING; break;
	case JWS_ALG_RS512: md = EVP_sha512(); pad = RSA_PKCS1_PADDING; break;
	case JWS_ALG_PS256: md = EVP_sha256(); pad = RSA_PKCS1_PSS_PADDING; break;
	case JWS_ALG_PS384: md = EVP_sha384(); pad = RSA_PKCS1_PSS_PADDING; break;
	case JWS_ALG_PS512: md = EVP_sha512(); pad = RSA_PKCS1_PSS_PADDING; break;
	case JWS_ALG_ES256: md = EVP_sha256(); break;
	case JWS_ALG_ES384: md = EVP_sha384(); break;
	case JWS_ALG_ES512: md = EVP_sha512(); break;
	case JWS_ALG_EDDSA: break;
	default: return 0;
	}
	if (pad != 0) {
		if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA || sig_len != (size_t)EVP_PKEY_get_size(pkey))
			return 0;
	} else if (alg == JWS_ALG_EDDSA) {
		if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_ED25519)
			return 0;
	} else {
		size_t half = ((size_t)EVP_PKEY_get_bits(pkey) + 7) / 8;
		BIGNUM *r, *s;
		if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC || sig_len != 2 * half)
			return 0;
		/* JOSE's r||s, as the DER SEQUENCE OpenSSL verifies. */
		es = ECDSA_SIG_new();
		r = BN_bin2bn(sig, (int)half, NULL);
		s = BN_bin2bn(sig + half, (int)half, NULL);
		FUZZ_CHECK(es != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(es, r, s) == 1);
		der_len = i2d_ECDSA_SIG(es, &der);
		FUZZ_CHECK(der_len > 0);
		sig = der;
		sig_len = (size_t)der_len;
	}
	ctx = EVP_MD_CTX_new();
	FUZZ_CHECK(ctx != NULL);
	if (EVP_DigestVerifyInit(ctx, &pctx, md, NULL, pkey) != 1)
		goto out;
	if (pad != 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, pad) != 1)
		goto out;
	if (pad == RSA_PKCS1_PSS_PADDING &&
	    (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
	     EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1))
		goto out;
	ok = EVP_DigestVerify(ctx, sig, sig_len, data, n) == 1;
out:
	EVP_MD_CTX_free(ctx);
	OPENSSL_free(der);
	ECDSA_SIG_free(es);
	return ok;
}

/* The parts of a parsed token are its three base64url parts, decoded. */
static void check_parsed(const uint8_t *data, size_t size, const struct jws_parsed *p)
{
	static const char *const forbidden[] = { "jwk", "jku", "x5u", "x5c", "crit", "b64" };
	const char *dot1, *dot2, *tok = (const char *)data;
	uint8_t *buf;
	size_t len;
	json_t *header = NULL, *alg;

	FUZZ_CHECK(size <= JWS_MAX_TOKEN);
	dot1 = memchr(tok, '.', size);
	FUZZ_CHECK(dot1 != NULL);
	dot2 = memchr(dot1 + 1, '.', size - (size_t)(dot1 + 1 - tok));
	FUZZ_CHECK(dot2 != NULL);
	FUZZ_CHECK(memchr(dot2 + 1, '.', size - (size_t)(dot2 + 1 - tok)) == NULL);
	FUZZ_CHECK(p->signing_input_len == (size_t)(dot2 - tok));

	buf = malloc(size + 1);
	FUZZ_CHECK(buf != NULL);
	FUZZ_CHECK(b64url_decode(tok, (size_t)(dot1 - tok), buf, &len) == 0);
	FUZZ_CHECK(len <= JWS_MAX_HEADER);
	FUZZ_CHECK(json_strict_parse((const char *)buf, len, JSON_STRICT_MAX_DEPTH, &header) == 0);
	FUZZ_CHECK(json_is_object(header) && json_equal(header, p->header));
	json_decref(header);
	FUZZ_CHECK(b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), buf, &len) == 0);
	FUZZ_CHECK(len == p->payload_len && len <= JWS_MAX_PAYLOAD);
	FUZZ_CHECK(memcmp(buf, p->payload, len) == 0 && p->payload[len] == '\0');
	FUZZ_CHECK(b64url_decode(dot2 + 1, size - (size_t)(dot2 + 1 - tok), buf, &len) == 0);
	FUZZ_CHECK(len == p->signature_len && len <= JWS_MAX_SIG);
	FUZZ_CHECK(len == 0 || memcmp(buf, p->signature, len) == 0);
	free(buf);

	alg = json_object_get(p->header, "alg");
	FUZZ_CHECK(json_is_string(alg) && strcmp(json_string_value(alg), jws_alg_name(p->alg)) == 0);
	if (p->kid == NULL)
		FUZZ_CHECK(json_object_get(p->header, "kid") == NULL);
	else
		FUZZ_CHECK(strcmp(p->kid, json_string_value(json_object_get(p->header, "kid"))) == 0);
	for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
		FUZZ_CHECK(json_object_get(p->header, forbidden[i]) == NULL);
}

/* jwt_verify's claims rules, restated: exp a number not yet passed, nbf
 * and iat (if present) numbers not in the future, each with the leeway;
 * and what expect names. */
static void check_claims(const json_t *hdr, const json_t *claims, const struct jwt_expect *expect)
{
	const json_t *exp = json_object_get(claims, "exp"), *nbf = json_object_get(claims, "nbf"),
		     *iat = json_object_get(claims, "iat"), *aud, *v;
	double now = (double)expect->now, leeway = (double)expect->leeway;
	size_t i;
	int found = 0;

	FUZZ_CHECK(json_is_object(claims));
	FUZZ_CHECK(json_is_number(exp) && now < json_number_value(exp) + leeway);
	FUZZ_CHECK(nbf == NULL || (json_is_number(nbf) && now + leeway >= json_number_value(nbf)));
	FUZZ_CHECK(iat == NULL || (json_is_number(iat) && now + leeway >= json_number_value(iat)));
	if (expect->issuer != NULL)
		FUZZ_CHECK(json_is_string(json_object_get(claims, "iss")) &&
			   strcmp(json_string_value(json_object_get(claims, "iss")), expect->issuer) == 0);
	if (expect->typ != NULL)
		FUZZ_CHECK(json_is_string(json_object_get(hdr, "typ")) &&
			   strcmp(json_string_value(json_object_get(hdr, "typ")), expect->typ) == 0);
	if (expect->audience != NULL) {
		aud = json_object_get(claims, "aud");
		if (json_is_string(aud))
			found = strcmp(json_string_value(aud), expect->audience) == 0;
		json_array_foreach(aud, i, v)
			found |= json_is_string(v) && strcmp(json_string_value(v), expect->audience) == 0;
		FUZZ_CHECK(found);
	}
}

static void check_token(const uint8_t *data, size_t size)
{
	struct jws_parsed *sentinel = (struct jws_parsed *)&key_count, *parsed = sentinel,
			  *verified = sentinel;
	json_t *jsentinel = (json_t *)&key_count, *header = jsentinel, *claims = jsentinel,
	       *vheader = jsentinel, *vclaims = jsentinel, *payload = NULL;
	const struct jwt_expect expect = { .now = NOW, .leeway = LEEWAY };
	const struct jwt_expect strict = { .now = NOW, .leeway = 0, .issuer = "http://127.0.0.1:8080",
					   .audience = "api", .typ = "at+jwt" };
	const char *tok = (const char *)data;
	const struct jwk_key *key = NULL;
	int r_parse, r, r2, expected = 0;

	r_parse = jws_parse(tok, size, &parsed);
	if (r_parse < 0) {
		FUZZ_CHECK(r_parse == JWS_E_MALFORMED || r_parse == JWS_E_UNSUPPORTED_ALG);
		FUZZ_CHECK(parsed == sentinel);
	} else {
		FUZZ_CHECK(r_parse == 0 && parsed != sentinel && parsed != NULL);
		check_parsed(data, size, parsed);
		stats_parsed++;
		key = lookup(NULL, parsed->kid);
		expected = key != NULL && jwk_key_allows_alg(key, parsed->alg) &&
			   oracle(parsed->alg, key->pkey, data, parsed->signing_input_len, parsed->signature,
				  parsed->signature_len);
	}

	/* Decoding without verification: jws_parse, then the payload as a
	 * strict JSON object. */
	r = jwt_decode_unverified(tok, size, &header, &claims);
	if (r_parse < 0) {
		FUZZ_CHECK(r == r_parse);
	} else if (json_strict_parse((const char *)parsed->payload, parsed->payload_len, JSON_STRICT_MAX_DEPTH,
				     &payload) == 0 && json_is_object(payload)) {
		FUZZ_CHECK(r == 0);
		FUZZ_CHECK(json_equal(header, parsed->header) && json_equal(claims, payload));
	} else {
		FUZZ_CHECK(r < 0);
	}
	if (r < 0)
		FUZZ_CHECK(header == jsentinel && claims == jsentinel);

	/* The verifier against the oracle, then against its own memo. */
	r = jws_verify(tok, size, lookup, NULL, &verified);
	if (r == 0) {
		FUZZ_CHECK(expected);
		stats_verified++;
		FUZZ_CHECK(verified != NULL && verified != sentinel);
		FUZZ_CHECK(verified->alg == parsed->alg && verified->signing_input_len == parsed->signing_input_len);
		jws_parsed_free(verified);
	} else {
		FUZZ_CHECK(verified == sentinel);
		FUZZ_CHECK(!expected);
		if (r_parse < 0)
			FUZZ_CHECK(r == r_parse);
		else if (key == NULL)
			FUZZ_CHECK(r == JWS_E_UNKNOWN_KID);
	}
	verified = sentinel;
	r2 = jws_verify(tok, size, lookup, NULL, &verified);
	FUZZ_CHECK(r2 == r);
	if (r2 == 0)
		jws_parsed_free(verified);

	r2 = jwt_verify(tok, size, lookup, NULL, &expect, &vheader, &vclaims);
	if (r2 == 0) {
		FUZZ_CHECK(r == 0 && claims != jsentinel);
		stats_jwt++;
		FUZZ_CHECK(json_equal(vheader, header) && json_equal(vclaims, claims));
		check_claims(vheader, vclaims, &expect);
		json_decref(vheader);
		json_decref(vclaims);
	} else {
		FUZZ_CHECK(vheader == jsentinel && vclaims == jsentinel);
		if (r < 0)
			FUZZ_CHECK(r2 == r);
	}
	vheader = vclaims = jsentinel;
	r2 = jwt_verify(tok, size, lookup, NULL, &strict, &vheader, &vclaims);
	if (r2 == 0) {
		FUZZ_CHECK(r == 0);
		check_claims(vheader, vclaims, &strict);
		json_decref(vheader);
		json_decref(vclaims);
	} else {
		FUZZ_CHECK(vheader == jsentinel && vclaims == jsentinel);
	}

	if (header != jsentinel)
		json_decref(header);
	if (claims != jsentinel)
		json_decref(claims);
	json_decref(payload);
	if (parsed != sentinel)
		jws_parsed_free(parsed);
}

/* An input without a dot is not a token but what to sign: a protected
 * header, a newline, and a payload (all of it the payload when there is no
 * newline, under {"alg":"EdDSA"}).  It is signed here with RFC 8037's
 * Ed25519 key, so that the header and claims rules are fuzzed on tokens
 * whose signature holds — a mutated token almost never has one. */
static void sign_and_check(const uint8_t *data, size_t size)
{
	static const char fixed[] = "{\"alg\":\"EdDSA\"}";
	const uint8_t *nl = memchr(data, '\n', size), *hdr = (const uint8_t *)fixed, *body = data;
	size_t hdr_len = sizeof(fixed) - 1, body_len = size, n, sig_len = 64;
	uint8_t sig[64];
	EVP_MD_CTX *ctx;
	char *token;

	if (nl != NULL) {
		hdr = data;
		hdr_len = (size_t)(nl - data);
		body = nl + 1;
		body_len = size - hdr_len - 1;
	}
	token = malloc(b64url_encoded_size(hdr_len) + b64url_encoded_size(body_len) + b64url_encoded_size(64) + 2);
	FUZZ_CHECK(token != NULL);
	n = b64url_encode(hdr, hdr_len, token);
	token[n++] = '.';
	n += b64url_encode(body, body_len, token + n);
	ctx = EVP_MD_CTX_new();
	FUZZ_CHECK(ctx != NULL && EVP_DigestSignInit(ctx, NULL, NULL, NULL, signer) == 1);
	FUZZ_CHECK(EVP_DigestSign(ctx, sig, &sig_len, (const uint8_t *)token, n) == 1 && sig_len == 64);
	EVP_MD_CTX_free(ctx);
	token[n++] = '.';
	n += b64url_encode(sig, sig_len, token + n);
	check_token((const uint8_t *)token, n);
	free(token);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memchr(data, '.', size) == NULL)
		sign_and_check(data, size);
	else
		check_token(data, size);
	return 0;
}
