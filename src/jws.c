#include "hsmjwt/jws.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

/* Header members that would make the token name its own key or its own
 * processing rules (RFC 8725 §3.1, §3.10; RFC 7797 "b64"): a verifier that
 * honoured any of them would let the sender choose what verifies it. */
static const char *const jws_forbidden_members[] = { "jwk", "jku", "x5u", "x5c", "crit", "b64" };

const char *jws_error_reason(int err)
{
	switch (err) {
	case JWS_E_MALFORMED: return "malformed";
	case JWS_E_UNSUPPORTED_ALG: return "unsupported_alg";
	case JWS_E_UNKNOWN_KID: return "unknown_kid";
	case JWS_E_BAD_SIGNATURE: return "bad_signature";
	case JWS_E_EXPIRED: return "expired";
	case JWS_E_NOT_YET_VALID: return "not_yet_valid";
	case JWS_E_WRONG_AUDIENCE: return "wrong_audience";
	case JWS_E_WRONG_ISSUER: return "wrong_issuer";
	case JWS_E_WRONG_TYPE: return "wrong_type";
	case JWS_E_REVOKED: return "revoked";
	case JWS_E_SUSPENDED: return "suspended";
	case JWS_E_UNAVAILABLE: return "unavailable";
	default: return "internal_error";
	}
}

void jws_parsed_free(struct jws_parsed *parsed)
{
	if (parsed == NULL)
		return;
	json_decref(parsed->header);
	free(parsed->payload);
	free(parsed->signature);
	free(parsed);
}

static int jws_decode_part(const char *s, size_t n, size_t max, uint8_t **ret_buf, size_t *ret_len)
{
	uint8_t *buf;
	size_t len = 0;
	int r;

	/* Every limit is checked on the encoded length, before any decoding. */
	if (b64url_decoded_max(n) > max)
		return JWS_E_MALFORMED;
	/* One spare byte keeps the payload NUL-terminated for callers. */
	buf = malloc(b64url_decoded_max(n) + 1);
	if (buf == NULL)
		return -ENOMEM;
	r = b64url_decode(s, n, buf, &len);
	if (r < 0) {
		free(buf);
		return JWS_E_MALFORMED;
	}
	buf[len] = '\0';
	*ret_buf = buf;
	*ret_len = len;
	return 0;
}

static int jws_check_header(const json_t *header, enum jws_alg *ret_alg, const char **ret_kid)
{
	const json_t *alg, *kid, *typ;
	enum jws_alg parsed_alg;

	for (size_t i = 0; i < sizeof(jws_forbidden_members) / sizeof(jws_forbidden_members[0]); i++) {
		if (json_object_get(header, jws_forbidden_members[i]) != NULL) {
			log_debug("\"JWS header member refused\" member=%s", jws_forbidden_members[i]);
			return JWS_E_MALFORMED;
		}
	}
	kid = json_object_get(header, "kid");
	typ = json_object_get(header, "typ");
	if ((kid != NULL && !json_is_string(kid)) || (typ != NULL && !json_is_string(typ)))
		return JWS_E_MALFORMED;
	alg = json_object_get(header, "alg");
	if (!json_is_string(alg))
		return JWS_E_MALFORMED;
	/* "none" is not in the table, so it ends here too. */
	if (jws_alg_from_name(json_string_value(alg), &parsed_alg) < 0)
		return JWS_E_UNSUPPORTED_ALG;
	*ret_alg = parsed_alg;
	*ret_kid = kid ? json_string_value(kid) : NULL;
	return 0;
}

int jws_parse(const char *token, size_t len, struct jws_parsed **ret_parsed)
{
	struct jws_parsed *parsed = NULL;
	const char *dot1, *dot2, *sig_start;
	uint8_t *header_buf = NULL;
	size_t header_len = 0;
	int r;

	if (token == NULL || len == 0 || len > JWS_MAX_TOKEN)
		return JWS_E_MALFORMED;
	dot1 = memchr(token, '.', len);
	if (dot1 == NULL)
		return JWS_E_MALFORMED;
	dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
	if (dot2 == NULL)
		return JWS_E_MALFORMED;
	sig_start = dot2 + 1;
	/* A third dot is a JWE or garbage; an empty signature is an unsecured
	 * JWS whatever its header says. */
	if (memchr(sig_start, '.', len - (size_t)(sig_start - token)) != NULL || sig_start == token + len)
		return JWS_E_MALFORMED;

	parsed = calloc(1, sizeof(*parsed));
	if (parsed == NULL)
		return -ENOMEM;
	r = jws_decode_part(token, (size_t)(dot1 - token), JWS_MAX_HEADER, &header_buf, &header_len);
	if (r < 0)
		goto fail;
	r = jws_decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1), JWS_MAX_PAYLOAD, &parsed->payload,
			    &parsed->payload_len);
	if (r < 0)
		goto fail;
	r = jws_decode_part(sig_start, len - (size_t)(sig_start - token), JWS_MAX_SIG, &parsed->signature,
			    &parsed->signature_len);
	if (r < 0)
		goto fail;
	r = json_strict_parse((const char *)header_buf, header_len, JSON_STRICT_MAX_DEPTH, &parsed->header);
	if (r < 0) {
		r = r == -ENOMEM ? -ENOMEM : JWS_E_MALFORMED;
		goto fail;
	}
	if (!json_is_object(parsed->header)) {
		r = JWS_E_MALFORMED;
		goto fail;
	}
	r = jws_check_header(parsed->header, &parsed->alg, &parsed->kid);
	if (r < 0)
		goto fail;
	parsed->signing_input_len = (size_t)(dot2 - token);
	free(header_buf);
	*ret_parsed = parsed;
	return 0;
fail:
	free(header_buf);
	jws_parsed_free(parsed);
	return r;
}

static const EVP_MD *jws_alg_md(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_HS256: case JWS_ALG_RS256: case JWS_ALG_PS256: case JWS_ALG_ES256:
		return EVP_sha256();
	case JWS_ALG_HS384: case JWS_ALG_RS384: case JWS_ALG_PS384: case JWS_ALG_ES384:
		return EVP_sha384();
	case JWS_ALG_HS512: case JWS_ALG_RS512: case JWS_ALG_PS512: case JWS_ALG_ES512:
		return EVP_sha512();
	default:
		return NULL;
	}
}

/* The order n of each curve JWS uses, big-endian and as wide as r and s:
 * built once, since a fresh EC_GROUP per verification cost a tenth of an
 * ES256 verification (perf, issue 7).  Fixed-width big-endian numbers
 * compare like memcmp. */
static struct jws_ec_order {
	int nid;
	size_t half;
	uint8_t n[66];
} jws_ec_orders[] = {
	{ NID_X9_62_prime256v1, 32, { 0 } },
	{ NID_secp384r1, 48, { 0 } },
	{ NID_secp521r1, 66, { 0 } },
};
static pthread_once_t jws_ec_orders_once = PTHREAD_ONCE_INIT;
static int jws_ec_orders_ready;

static void jws_ec_orders_init(void)
{
	for (size_t i = 0; i < sizeof(jws_ec_orders) / sizeof(jws_ec_orders[0]); i++) {
		EC_GROUP *group = EC_GROUP_new_by_curve_name(jws_ec_orders[i].nid);
		int ok = group != NULL && BN_bn2binpad(EC_GROUP_get0_order(group), jws_ec_orders[i].n,
						       (int)jws_ec_orders[i].half) == (int)jws_ec_orders[i].half;

		EC_GROUP_free(group);
		if (!ok) {
			ERR_clear_error();
			log_error("\"cannot read a curve order\" nid=%d", jws_ec_orders[i].nid);
			return;
		}
	}
	jws_ec_orders_ready = 1;
}

static int jws_is_zero(const uint8_t *b, size_t len)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < len; i++)
		acc |= b[i];
	return acc == 0;
}

int jws_ecdsa_sig_check(const EVP_PKEY *pkey, const uint8_t *sig, size_t sig_len)
{
	int nid = jwk_ec_curve_nid(pkey);
	const struct jws_ec_order *order = NULL;

	if (pthread_once(&jws_ec_orders_once, jws_ec_orders_init) != 0 || !jws_ec_orders_ready)
		return JWS_E_BAD_SIGNATURE;
	for (size_t i = 0; i < sizeof(jws_ec_orders) / sizeof(jws_ec_orders[0]); i++)
		if (jws_ec_orders[i].nid == nid)
			order = &jws_ec_orders[i];
	/* RFC 7518 §3.4: exactly r||s, each as wide as the order; a DER
	 * signature or a shortened integer is another spelling of a signature,
	 * and a token has exactly one. */
	if (order == NULL || sig == NULL || sig_len != 2 * order->half)
		return JWS_E_BAD_SIGNATURE;
	/* CVE-2022-21449 style (r = s = 0) and out-of-range values are refused
	 * here, before any library sees them. */
	if (jws_is_zero(sig, order->half) || jws_is_zero(sig + order->half, order->half) ||
	    memcmp(sig, order->n, order->half) >= 0 || memcmp(sig + order->half, order->n, order->half) >= 0)
		return JWS_E_BAD_SIGNATURE;
	return 0;
}

/* r||s (already range-checked) → DER ECDSA-Sig-Value for OpenSSL. */
static int jws_ecdsa_to_der(const uint8_t *sig, size_t sig_len, uint8_t **ret_der, int *ret_der_len)
{
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *r_bn = BN_bin2bn(sig, (int)(sig_len / 2), NULL);
	BIGNUM *s_bn = BN_bin2bn(sig + sig_len / 2, (int)(sig_len / 2), NULL);
	uint8_t *der = NULL;
	int der_len, r = -ENOMEM;

	if (es == NULL || r_bn == NULL || s_bn == NULL || ECDSA_SIG_set0(es, r_bn, s_bn) != 1)
		goto out;
	r_bn = s_bn = NULL; /* owned by es now */
	der_len = i2d_ECDSA_SIG(es, &der);
	if (der_len <= 0)
		goto out;
	*ret_der = der;
	*ret_der_len = der_len;
	r = 0;
out:
	ECDSA_SIG_free(es);
	BN_free(r_bn);
	BN_free(s_bn);
	return r;
}

static int jws_verify_hmac(enum jws_alg alg, const struct jwk_key *key, const uint8_t *data, size_t data_len,
			   const uint8_t *sig, size_t sig_len)
{
	uint8_t mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	int r = JWS_E_BAD_SIGNATURE;

	if (HMAC(jws_alg_md(alg), key->secret, (int)key->secret_len, data, data_len, mac, &mac_len) == NULL) {
		ERR_clear_error();
		return JWS_E_BAD_SIGNATURE;
	}
	/* Constant time: the comparison must not tell how many leading bytes
	 * of a forged MAC were right. */
	if (sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0)
		r = 0;
	OPENSSL_cleanse(mac, sizeof(mac));
	return r;
}

static int jws_verify_pkey(enum jws_alg alg, EVP_PKEY *pkey, const uint8_t *data, size_t data_len,
			   const uint8_t *sig, size_t sig_len)
{
	EVP_MD_CTX *md_ctx = NULL;
	EVP_PKEY_CTX *pkey_ctx = NULL;
	const EVP_MD *md = jws_alg_md(alg);
	uint8_t *der = NULL;
	int der_len = 0, r = JWS_E_BAD_SIGNATURE;

	switch (alg) {
	case JWS_ALG_RS256: case JWS_ALG_RS384: case JWS_ALG_RS512:
	case JWS_ALG_PS256: case JWS_ALG_PS384: case JWS_ALG_PS512:
		/* RFC 8017 §8.2.2: the signature is exactly k octets. */
		if (sig_len != (size_t)EVP_PKEY_get_size(pkey))
			goto out;
		break;
	case JWS_ALG_ES256: case JWS_ALG_ES384: case JWS_ALG_ES512:
		r = jws_ecdsa_sig_check(pkey, sig, sig_len);
		if (r < 0)
			goto out;
		r = jws_ecdsa_to_der(sig, sig_len, &der, &der_len);
		if (r < 0)
			goto out;
		r = JWS_E_BAD_SIGNATURE;
		sig = der;
		sig_len = (size_t)der_len;
		break;
	case JWS_ALG_EDDSA:
		md = NULL; /* Ed25519 hashes internally */
		if (sig_len != 64)
			goto out;
		break;
	default:
		r = JWS_E_UNSUPPORTED_ALG;
		goto out;
	}
	md_ctx = EVP_MD_CTX_new();
	if (md_ctx == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (EVP_DigestVerifyInit(md_ctx, &pkey_ctx, md, NULL, pkey) != 1)
		goto out;
	if (alg == JWS_ALG_PS256 || alg == JWS_ALG_PS384 || alg == JWS_ALG_PS512) {
		/* RFC 7518 §3.5: MGF1 with the same hash, salt as long as the
		 * hash; SALTLEN_DIGEST refuses any other salt length, where the
		 * default would recover and accept whatever the signer used. */
		if (EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PSS_PADDING) != 1 ||
		    EVP_PKEY_CTX_set_rsa_mgf1_md(pkey_ctx, md) != 1 ||
		    EVP_PKEY_CTX_set_rsa_pss_saltlen(pkey_ctx, RSA_PSS_SALTLEN_DIGEST) != 1)
			goto out;
	} else if (alg >= JWS_ALG_RS256 && alg <= JWS_ALG_RS512) {
		if (EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PADDING) != 1)
			goto out;
	}
	if (EVP_DigestVerify(md_ctx, sig, sig_len, data, data_len) == 1)
		r = 0;
out:
	ERR_clear_error();
	EVP_MD_CTX_free(md_ctx);
	OPENSSL_free(der);
	return r;
}

int jws_verify_signature(enum jws_alg alg, const struct jwk_key *key,
			 const uint8_t *data, size_t data_len,
			 const uint8_t *sig, size_t sig_len)
{
	/* RFC 8725 §3.1: the key decides which algorithms it verifies, never
	 * the token; an RSA public key is no HMAC secret. */
	if (!jwk_key_allows_alg(key, alg))
		return JWS_E_UNSUPPORTED_ALG;
	if (sig == NULL || sig_len == 0 || sig_len > JWS_MAX_SIG || (data == NULL && data_len > 0))
		return JWS_E_BAD_SIGNATURE;
	/* Its secret is in a token this call has no way to reach. */
	if (key->verify_external != NULL)
		return JWS_E_UNAVAILABLE;
	if (key->pkey == NULL)
		return jws_verify_hmac(alg, key, data, data_len, sig, sig_len);
	return jws_verify_pkey(alg, key->pkey, data, data_len, sig, sig_len);
}

/* ---- verified-signature memo ------------------------------------------ */

struct jws_memo_slot {
	uint8_t digest[SHA256_DIGEST_LENGTH];  /* of the whole token */
	uint64_t serial;                       /* the key that verified it; 0: empty */
};

struct jws_memo {
	size_t count;  /* a power of two */
	struct jws_memo_slot slots[];
};

static atomic_size_t jws_memo_slots;  /* 0 while off */
static pthread_key_t jws_memo_key;
static pthread_once_t jws_memo_once = PTHREAD_ONCE_INIT;
static int jws_memo_key_ready;

static void jws_memo_key_init(void)
{
	jws_memo_key_ready = pthread_key_create(&jws_memo_key, free) == 0;
}

int jws_verify_memo_enable(size_t slots)
{
	size_t off = 0;

	if (slots == 0 || slots > JWS_MEMO_MAX_SLOTS || (slots & (slots - 1)) != 0)
		return -EINVAL;
	if (pthread_once(&jws_memo_once, jws_memo_key_init) != 0 || !jws_memo_key_ready)
		return -ENOMEM;
	/* Once only: a thread's table is sized when it first verifies. */
	if (!atomic_compare_exchange_strong(&jws_memo_slots, &off, slots) && off != slots)
		return -EALREADY;
	return 0;
}

/* This thread's slot for digest, or NULL while the memo is off (or its
 * table cannot be had: then every token is verified, as without it). */
static struct jws_memo_slot *jws_memo_slot(const uint8_t digest[SHA256_DIGEST_LENGTH])
{
	size_t count = atomic_load_explicit(&jws_memo_slots, memory_order_acquire);
	struct jws_memo *memo;
	uint64_t index;

	if (count == 0)
		return NULL;
	memo = pthread_getspecific(jws_memo_key);
	if (memo == NULL) {
		memo = calloc(1, sizeof(*memo) + count * sizeof(memo->slots[0]));
		if (memo == NULL)
			return NULL;
		memo->count = count;
		if (pthread_setspecific(jws_memo_key, memo) != 0) {
			free(memo);
			return NULL;
		}
	}
	memcpy(&index, digest, sizeof(index));
	return &memo->slots[index & (memo->count - 1)];
}

int jws_verify(const char *token, size_t len, jws_key_lookup_fn lookup, void *lookup_ctx,
	       struct jws_parsed **ret_parsed)
{
	uint8_t digest[SHA256_DIGEST_LENGTH];
	struct jws_memo_slot *slot = NULL;
	struct jws_parsed *parsed = NULL;
	const struct jwk_key *key;
	int r;

	r = jws_parse(token, len, &parsed);
	if (r < 0)
		return r;
	key = lookup ? lookup(lookup_ctx, parsed->kid) : NULL;
	if (key == NULL) {
		r = JWS_E_UNKNOWN_KID;
		goto fail;
	}
	/* The same bytes under the same key verify the same way: a caller's
	 * bearer token, or a token a resource server asks about again, costs
	 * one SHA-256 instead of a signature check.  Only successes are kept,
	 * so a forged token is checked every time.  A key that verifies inside
	 * the token (HS256) is asked every time: while the token is down its
	 * tokens get 503, as the token's availability decides. */
	if (key->serial != 0 && key->verify_external == NULL && atomic_load_explicit(&jws_memo_slots, memory_order_relaxed) != 0 &&
	    SHA256((const unsigned char *)token, len, digest) != NULL) {
		slot = jws_memo_slot(digest);
		if (slot != NULL && slot->serial == key->serial &&
		    CRYPTO_memcmp(slot->digest, digest, sizeof(digest)) == 0)
			goto verified;
	}
	if (key->verify_external != NULL && jwk_key_allows_alg(key, parsed->alg) && parsed->signature_len > 0 &&
	    parsed->signature_len <= JWS_MAX_SIG)
		r = key->verify_external(lookup_ctx, key, (const uint8_t *)token, parsed->signing_input_len,
					 parsed->signature, parsed->signature_len);
	else
		r = jws_verify_signature(parsed->alg, key, (const uint8_t *)token, parsed->signing_input_len,
					 parsed->signature, parsed->signature_len);
	if (r < 0)
		goto fail;
	if (slot != NULL) {
		memcpy(slot->digest, digest, sizeof(digest));
		slot->serial = key->serial;
	}
verified:
	*ret_parsed = parsed;
	return 0;
fail:
	jws_parsed_free(parsed);
	return r;
}

int jws_sign_compact(const json_t *header, const json_t *payload,
		     jws_sign_fn sign, void *sign_ctx, char **ret_token)
{
	char *header_json = NULL, *payload_json = NULL, *token = NULL;
	size_t header_len, payload_len, h_enc, p_enc, s_enc, pos;
	uint8_t sig[JWS_MAX_SIG];
	size_t sig_len = sizeof(sig);
	int r = -ENOMEM;

	if (!json_is_object(header) || !json_is_object(payload) || sign == NULL)
		return -EINVAL;
	header_json = json_dumps(header, JSON_COMPACT);
	payload_json = json_dumps(payload, JSON_COMPACT);
	if (header_json == NULL || payload_json == NULL)
		goto out;
	header_len = strlen(header_json);
	payload_len = strlen(payload_json);
	/* Never issue what jws_parse would refuse. */
	if (header_len > JWS_MAX_HEADER || payload_len > JWS_MAX_PAYLOAD) {
		log_error("\"token too large to sign\" header_bytes=%zu payload_bytes=%zu", header_len, payload_len);
		r = -E2BIG;
		goto out;
	}
	h_enc = b64url_encoded_size(header_len) - 1;
	p_enc = b64url_encoded_size(payload_len) - 1;
	s_enc = b64url_encoded_size(JWS_MAX_SIG) - 1;
	token = malloc(h_enc + 1 + p_enc + 1 + s_enc + 1);
	if (token == NULL)
		goto out;
	pos = b64url_encode((const uint8_t *)header_json, header_len, token);
	token[pos++] = '.';
	pos += b64url_encode((const uint8_t *)payload_json, payload_len, token + pos);
	r = sign(sign_ctx, (const uint8_t *)token, pos, sig, &sig_len);
	if (r < 0)
		goto out;
	if (sig_len == 0 || sig_len > sizeof(sig)) {
		log_error("\"signer returned a signature of impossible length\" length=%zu", sig_len);
		r = -EIO;
		goto out;
	}
	token[pos++] = '.';
	pos += b64url_encode(sig, sig_len, token + pos);
	if (pos > JWS_MAX_TOKEN) {
		log_error("\"token too large to sign\" length=%zu", pos);
		r = -E2BIG;
		goto out;
	}
	*ret_token = token;
	token = NULL;
	r = 0;
out:
	free(token);
	free(header_json);
	free(payload_json);
	return r;
}
