#include "hsmjwt/jwk.h"

#include <errno.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>

#include "hsmjwt/b64url.h"
#include "hsmjwt/json.h"
#include "hsmjwt/log.h"

/* Largest RSA modulus accepted: 8192 bits, the size JWS_MAX_SIG allows.
 * A bigger key would make every verification against it slow. */
#define JWK_RSA_MAX_BYTES 1024
#define JWK_RSA_MIN_BITS 2048
/* Public exponents above 64 bits buy nothing and cost verification time. */
#define JWK_RSA_E_MAX_BYTES 8
/* HMAC secrets: a 64-byte key already covers HS512; longer ones are hashed
 * down by HMAC anyway, the limit only bounds the allocation. */
#define JWK_OCT_MIN_BYTES 32
#define JWK_OCT_MAX_BYTES 1024

static const struct {
	const char *name;
	enum jws_alg alg;
} jwk_alg_names[] = {
	{ "HS256", JWS_ALG_HS256 }, { "HS384", JWS_ALG_HS384 }, { "HS512", JWS_ALG_HS512 },
	{ "RS256", JWS_ALG_RS256 }, { "RS384", JWS_ALG_RS384 }, { "RS512", JWS_ALG_RS512 },
	{ "PS256", JWS_ALG_PS256 }, { "PS384", JWS_ALG_PS384 }, { "PS512", JWS_ALG_PS512 },
	{ "ES256", JWS_ALG_ES256 }, { "ES384", JWS_ALG_ES384 }, { "ES512", JWS_ALG_ES512 },
	{ "EdDSA", JWS_ALG_EDDSA },
};

/* The three curves JWS uses (RFC 7518 §3.4): ES512 is P-521, whose
 * coordinates take 66 bytes. */
static const struct jwk_curve {
	const char *crv;        /* JWK name */
	const char *group;      /* OpenSSL group name */
	int nid;
	size_t size;            /* coordinate bytes */
	enum jws_alg alg;
} jwk_curves[] = {
	{ "P-256", "prime256v1", NID_X9_62_prime256v1, 32, JWS_ALG_ES256 },
	{ "P-384", "secp384r1", NID_secp384r1, 48, JWS_ALG_ES384 },
	{ "P-521", "secp521r1", NID_secp521r1, 66, JWS_ALG_ES512 },
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

int jws_alg_from_name(const char *name, enum jws_alg *ret_alg)
{
	if (name == NULL)
		return -EINVAL;
	for (size_t i = 0; i < ARRAY_SIZE(jwk_alg_names); i++) {
		if (strcmp(name, jwk_alg_names[i].name) == 0) {
			*ret_alg = jwk_alg_names[i].alg;
			return 0;
		}
	}
	return -EINVAL;
}

const char *jws_alg_name(enum jws_alg alg)
{
	for (size_t i = 0; i < ARRAY_SIZE(jwk_alg_names); i++)
		if (jwk_alg_names[i].alg == alg)
			return jwk_alg_names[i].name;
	return NULL;
}

static int jwk_alg_is_hmac(enum jws_alg alg)
{
	return alg == JWS_ALG_HS256 || alg == JWS_ALG_HS384 || alg == JWS_ALG_HS512;
}

static int jwk_alg_is_rsa(enum jws_alg alg)
{
	return (alg >= JWS_ALG_RS256 && alg <= JWS_ALG_RS512) || (alg >= JWS_ALG_PS256 && alg <= JWS_ALG_PS512);
}

/* RFC 7518 §3.2: the HMAC key must be at least as long as the hash output. */
static size_t jwk_hmac_min_len(enum jws_alg alg)
{
	switch (alg) {
	case JWS_ALG_HS256: return 32;
	case JWS_ALG_HS384: return 48;
	case JWS_ALG_HS512: return 64;
	default: return SIZE_MAX;
	}
}

static const struct jwk_curve *jwk_curve_by_crv(const char *crv)
{
	for (size_t i = 0; i < ARRAY_SIZE(jwk_curves); i++)
		if (strcmp(crv, jwk_curves[i].crv) == 0)
			return &jwk_curves[i];
	return NULL;
}

/* The curve of an EC key, or NULL for any curve JWS does not use.  Group
 * names differ by how the key was made ("prime256v1", "P-256"), so compare
 * NIDs. */
static const struct jwk_curve *jwk_curve_of(const EVP_PKEY *pkey)
{
	char group[64];
	size_t len = 0;
	int nid;

	if (!EVP_PKEY_is_a(pkey, "EC") ||
	    EVP_PKEY_get_group_name(pkey, group, sizeof(group), &len) != 1)
		return NULL;
	nid = OBJ_sn2nid(group);
	if (nid == NID_undef)
		nid = EC_curve_nist2nid(group);
	for (size_t i = 0; i < ARRAY_SIZE(jwk_curves); i++)
		if (jwk_curves[i].nid == nid)
			return &jwk_curves[i];
	return NULL;
}

int jwk_ec_curve_nid(const EVP_PKEY *pkey)
{
	const struct jwk_curve *curve = pkey ? jwk_curve_of(pkey) : NULL;

	return curve ? curve->nid : NID_undef;
}

/* Whether alg fits the key material, ignoring the JWK's own "alg", "use"
 * and "key_ops". */
static int jwk_material_fits(EVP_PKEY *pkey, size_t secret_len, enum jws_alg alg)
{
	const struct jwk_curve *curve;

	if (pkey == NULL)
		return jwk_alg_is_hmac(alg) && secret_len >= jwk_hmac_min_len(alg);
	if (EVP_PKEY_is_a(pkey, "RSA"))
		return jwk_alg_is_rsa(alg) && EVP_PKEY_get_bits(pkey) >= JWK_RSA_MIN_BITS;
	if (EVP_PKEY_is_a(pkey, "ED25519"))
		return alg == JWS_ALG_EDDSA;
	curve = jwk_curve_of(pkey);
	return curve != NULL && curve->alg == alg;
}

int jwk_key_allows_alg(const struct jwk_key *key, enum jws_alg alg)
{
	if (key == NULL || alg <= JWS_ALG_INVALID || alg >= JWS_ALG_COUNT || !key->verify_allowed)
		return 0;
	if (key->alg != JWS_ALG_INVALID && key->alg != alg)
		return 0;
	if (key->verify_external != NULL)
		return key->alg == alg;
	return jwk_material_fits(key->pkey, key->pkey ? 0 : key->secret_len, alg);
}

void jwk_key_free(struct jwk_key *key)
{
	if (key == NULL)
		return;
	EVP_PKEY_free(key->pkey);
	if (key->secret != NULL) {
		OPENSSL_cleanse(key->secret, key->secret_len);
		free(key->secret);
	}
	free(key);
}

/* Decodes the base64url string member name into a new buffer of at most max
 * bytes.  -EINVAL when it is missing, not a string, not canonical base64url,
 * or too long; the length check comes first so an oversized member costs
 * no decoding. */
static int jwk_member_bytes(const json_t *jwk, const char *name, size_t max, uint8_t **ret_buf,
			    size_t *ret_len)
{
	const char *s = json_plain_string(json_object_get(jwk, name));
	uint8_t *buf;
	size_t len;
	int r;

	if (s == NULL) {
		log_debug("\"JWK member missing or not a string\" member=%s", name);
		return -EINVAL;
	}
	/* ceil(max * 4 / 3) characters encode max bytes. */
	if (strlen(s) > (max * 4 + 2) / 3) {
		log_debug("\"JWK member too long\" member=%s length=%zu", name, strlen(s));
		return -EINVAL;
	}
	r = b64url_decode_alloc(s, strlen(s), &buf, &len);
	if (r < 0) {
		if (r == -EINVAL)
			log_debug("\"JWK member is not canonical base64url\" member=%s", name);
		return r;
	}
	*ret_buf = buf;
	*ret_len = len;
	return 0;
}

static int jwk_rsa_from_json(const json_t *jwk, EVP_PKEY **ret_pkey)
{
	uint8_t *n = NULL, *e = NULL;
	size_t n_len = 0, e_len = 0;
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;
	int r;

	r = jwk_member_bytes(jwk, "n", JWK_RSA_MAX_BYTES, &n, &n_len);
	if (r < 0)
		goto out;
	r = jwk_member_bytes(jwk, "e", JWK_RSA_E_MAX_BYTES, &e, &e_len);
	if (r < 0)
		goto out;
	r = -ENOMEM;
	bn_n = BN_bin2bn(n, (int)n_len, NULL);
	bn_e = BN_bin2bn(e, (int)e_len, NULL);
	if (bn_n == NULL || bn_e == NULL)
		goto out;
	r = -EINVAL;
	if (BN_num_bits(bn_n) < JWK_RSA_MIN_BITS || BN_num_bits(bn_n) > JWK_RSA_MAX_BYTES * 8 || !BN_is_odd(bn_n)) {
		log_debug("\"RSA modulus refused\" bits=%d", BN_num_bits(bn_n));
		goto out;
	}
	/* An even or unit exponent is no RSA key: e = 1 would make every
	 * "signature" equal to its padded message. */
	if (!BN_is_odd(bn_e) || BN_is_one(bn_e) || BN_cmp(bn_e, bn_n) >= 0) {
		log_debug("\"RSA public exponent refused\"");
		goto out;
	}
	r = -ENOMEM;
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL)
		goto out;
	r = -EINVAL;
	if (EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
		log_debug("\"RSA key refused by OpenSSL\"");
		goto out;
	}
	*ret_pkey = pkey;
	r = 0;
out:
	ERR_clear_error();
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn_n);
	BN_free(bn_e);
	free(n);
	free(e);
	return r;
}

static int jwk_ec_from_json(const json_t *jwk, EVP_PKEY **ret_pkey)
{
	const char *crv = json_plain_string(json_object_get(jwk, "crv"));
	const struct jwk_curve *curve = crv ? jwk_curve_by_crv(crv) : NULL;
	uint8_t *x = NULL, *y = NULL, point[1 + 2 * 66];
	size_t x_len = 0, y_len = 0;
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = NULL, *check = NULL;
	EVP_PKEY *pkey = NULL;
	int r = -EINVAL;

	if (curve == NULL) {
		char quoted[48];
		log_debug("\"EC curve refused\" crv=%s", log_quote(quoted, sizeof(quoted), crv ? crv : ""));
		goto out;
	}
	r = jwk_member_bytes(jwk, "x", curve->size, &x, &x_len);
	if (r == 0)
		r = jwk_member_bytes(jwk, "y", curve->size, &y, &y_len);
	if (r < 0)
		goto out;
	/* RFC 7518 §6.2.1.2: the coordinate is exactly the curve's size, no
	 * more, no less — one key, one encoding. */
	if (x_len != curve->size || y_len != curve->size) {
		log_debug("\"EC coordinate of the wrong length\" crv=%s x=%zu y=%zu", crv, x_len, y_len);
		r = -EINVAL;
		goto out;
	}
	point[0] = 0x04;
	memcpy(point + 1, x, x_len);
	memcpy(point + 1 + x_len, y, y_len);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)curve->group, 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * curve->size);
	params[2] = OSSL_PARAM_construct_end();
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL) {
		r = -ENOMEM;
		goto out;
	}
	r = -EINVAL;
	if (EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
		log_debug("\"EC point refused by OpenSSL\" crv=%s", crv);
		goto out;
	}
	/* Invalid-curve attacks: the point must lie on the named curve. */
	check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	if (check == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (EVP_PKEY_public_check(check) != 1) {
		log_debug("\"EC point not on its curve\" crv=%s", crv);
		goto out;
	}
	*ret_pkey = pkey;
	pkey = NULL;
	r = 0;
out:
	ERR_clear_error();
	EVP_PKEY_CTX_free(check);
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pkey);
	free(x);
	free(y);
	return r;
}

static int jwk_okp_from_json(const json_t *jwk, EVP_PKEY **ret_pkey)
{
	const char *crv = json_plain_string(json_object_get(jwk, "crv"));
	uint8_t *x = NULL;
	size_t x_len = 0;
	EVP_PKEY *pkey;
	int r = -EINVAL;

	/* Ed448 would need its own JWS alg handling; X25519/X448 do not sign. */
	if (crv == NULL || strcmp(crv, "Ed25519") != 0) {
		char quoted[48];
		log_debug("\"OKP curve refused\" crv=%s", log_quote(quoted, sizeof(quoted), crv ? crv : ""));
		goto out;
	}
	r = jwk_member_bytes(jwk, "x", 32, &x, &x_len);
	if (r < 0)
		goto out;
	r = -EINVAL;
	if (x_len != 32) {
		log_debug("\"Ed25519 public key of the wrong length\" length=%zu", x_len);
		goto out;
	}
	pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, x_len);
	if (pkey == NULL) {
		ERR_clear_error();
		goto out;
	}
	*ret_pkey = pkey;
	r = 0;
out:
	free(x);
	return r;
}

/* "use" and "key_ops" (RFC 7517 §4.2, §4.3): a key published for anything
 * but verification stays parsed but verifies nothing. */
static int jwk_usage(const json_t *jwk, int *ret_verify_allowed)
{
	const json_t *use = json_object_get(jwk, "use"), *ops = json_object_get(jwk, "key_ops"), *op;
	int allowed = 1, has_verify = 0;
	size_t i;

	if (use != NULL) {
		if (json_plain_string(use) == NULL)
			return -EINVAL;
		if (strcmp(json_string_value(use), "sig") != 0)
			allowed = 0;
	}
	if (ops != NULL) {
		if (!json_is_array(ops))
			return -EINVAL;
		json_array_foreach(ops, i, op) {
			if (json_plain_string(op) == NULL)
				return -EINVAL;
			if (strcmp(json_string_value(op), "verify") == 0)
				has_verify = 1;
		}
		if (!has_verify)
			allowed = 0;
	}
	*ret_verify_allowed = allowed;
	return 0;
}

/* Every key gets a serial no other key of this process had: a verification
 * remembered for one key must not count for a later key that reuses its
 * kid, or its address (jws_verify's memo). */
static struct jwk_key *jwk_key_alloc(void)
{
	static atomic_uint_fast64_t next_serial = 1;
	struct jwk_key *key = calloc(1, sizeof(*key));

	if (key != NULL)
		key->serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed);
	return key;
}

int jwk_key_from_json(const json_t *jwk, struct jwk_key **ret_key)
{
	struct jwk_key *key = NULL;
	const char *kty, *name;
	const json_t *v;
	int verify_allowed = 0, r = -EINVAL;

	if (!json_is_object(jwk) || (kty = json_plain_string(json_object_get(jwk, "kty"))) == NULL) {
		log_debug("\"JWK without a kty string\"");
		return -EINVAL;
	}
	key = jwk_key_alloc();
	if (key == NULL)
		return -ENOMEM;
	v = json_object_get(jwk, "alg");
	if (v != NULL) {
		name = json_plain_string(v);
		/* A key bound to an algorithm we cannot run is unusable, not
		 * free for any algorithm. */
		if (name == NULL || jws_alg_from_name(name, &key->alg) < 0) {
			log_debug("\"JWK names an unknown alg\"");
			goto fail;
		}
	}
	v = json_object_get(jwk, "kid");
	if (v != NULL) {
		name = json_plain_string(v);
		if (name == NULL || strlen(name) > JWK_KID_MAX) {
			log_debug("\"JWK kid is not a string of at most %d bytes\"", JWK_KID_MAX);
			goto fail;
		}
		memcpy(key->kid, name, strlen(name) + 1);
	}
	if (jwk_usage(jwk, &verify_allowed) < 0) {
		log_debug("\"JWK use or key_ops malformed\"");
		goto fail;
	}
	key->verify_allowed = verify_allowed ? 1 : 0;

	if (strcmp(kty, "RSA") == 0) {
		r = jwk_rsa_from_json(jwk, &key->pkey);
	} else if (strcmp(kty, "EC") == 0) {
		r = jwk_ec_from_json(jwk, &key->pkey);
	} else if (strcmp(kty, "OKP") == 0) {
		r = jwk_okp_from_json(jwk, &key->pkey);
	} else if (strcmp(kty, "oct") == 0) {
		r = jwk_member_bytes(jwk, "k", JWK_OCT_MAX_BYTES, &key->secret, &key->secret_len);
		if (r == 0 && key->secret_len < JWK_OCT_MIN_BYTES) {
			log_debug("\"HMAC key too short\" length=%zu", key->secret_len);
			r = -EINVAL;
		}
	} else {
		char quoted[48];
		log_debug("\"JWK kty refused\" kty=%s", log_quote(quoted, sizeof(quoted), kty));
		r = -EINVAL;
	}
	if (r < 0)
		goto fail;
	if (key->alg != JWS_ALG_INVALID && !jwk_material_fits(key->pkey, key->secret_len, key->alg)) {
		log_debug("\"JWK alg does not fit its key\" alg=%s kty=%s", jws_alg_name(key->alg), kty);
		r = -EINVAL;
		goto fail;
	}
	*ret_key = key;
	return 0;
fail:
	jwk_key_free(key);
	return r;
}

int jwk_key_external(const char *kid, enum jws_alg alg, jwk_external_verify_fn verify, struct jwk_key **ret_key)
{
	struct jwk_key *key;

	if (kid == NULL || strlen(kid) > JWK_KID_MAX || !jwk_alg_is_hmac(alg) || verify == NULL)
		return -EINVAL;
	key = jwk_key_alloc();
	if (key == NULL)
		return -ENOMEM;
	snprintf(key->kid, sizeof(key->kid), "%s", kid);
	key->alg = alg;
	key->verify_allowed = 1;
	key->verify_external = verify;
	*ret_key = key;
	return 0;
}

int jwk_key_from_pkey(EVP_PKEY *pkey, enum jws_alg alg, struct jwk_key **ret_key)
{
	struct jwk_key *key;
	int r;

	if (pkey == NULL || jwk_alg_is_hmac(alg) || !jwk_material_fits(pkey, 0, alg))
		return -EINVAL;
	key = jwk_key_alloc();
	if (key == NULL)
		return -ENOMEM;
	r = jwk_thumbprint(pkey, key->kid);
	if (r < 0) {
		free(key);
		return r;
	}
	if (!EVP_PKEY_up_ref(pkey)) {
		free(key);
		return -ENOMEM;
	}
	key->pkey = pkey;
	key->alg = alg;
	key->verify_allowed = 1;
	*ret_key = key;
	return 0;
}

static int jwk_set_b64(json_t *obj, const char *name, const uint8_t *buf, size_t len)
{
	char *s = NULL;
	int r;

	r = b64url_encode_alloc(buf, len, &s);
	if (r < 0)
		return r;
	r = json_object_set_new(obj, name, json_string(s)) < 0 ? -ENOMEM : 0;
	free(s);
	return r;
}

/* A BIGNUM parameter of pkey as unsigned big-endian bytes, left-padded to
 * pad bytes (0: minimal length, RFC 7518 §6.3.1). */
static int jwk_set_bn(json_t *obj, const char *name, EVP_PKEY *pkey, const char *param, size_t pad)
{
	BIGNUM *bn = NULL;
	uint8_t *buf = NULL;
	int len, r = -EINVAL;

	if (EVP_PKEY_get_bn_param(pkey, param, &bn) != 1)
		goto out;
	len = pad ? (int)pad : BN_num_bytes(bn);
	if (len <= 0 || (pad && BN_num_bytes(bn) > (int)pad))
		goto out;
	buf = malloc((size_t)len);
	if (buf == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (BN_bn2binpad(bn, buf, len) != len)
		goto out;
	r = jwk_set_b64(obj, name, buf, (size_t)len);
out:
	ERR_clear_error();
	free(buf);
	BN_free(bn);
	return r;
}

int jwk_public_to_json(EVP_PKEY *pkey, const char *kid, enum jws_alg alg, json_t **ret_jwk)
{
	const struct jwk_curve *curve;
	json_t *jwk;
	uint8_t raw[32];
	size_t raw_len = sizeof(raw);
	int r = -EINVAL;

	if (pkey == NULL)
		return -EINVAL;
	jwk = json_object();
	if (jwk == NULL)
		return -ENOMEM;
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		r = json_object_set_new(jwk, "kty", json_string("RSA")) < 0 ? -ENOMEM : 0;
		if (r == 0)
			r = jwk_set_bn(jwk, "n", pkey, OSSL_PKEY_PARAM_RSA_N, 0);
		if (r == 0)
			r = jwk_set_bn(jwk, "e", pkey, OSSL_PKEY_PARAM_RSA_E, 0);
	} else if (EVP_PKEY_is_a(pkey, "ED25519")) {
		if (EVP_PKEY_get_raw_public_key(pkey, raw, &raw_len) != 1 || raw_len != 32)
			goto fail;
		r = json_object_set_new(jwk, "kty", json_string("OKP")) < 0 ||
		    json_object_set_new(jwk, "crv", json_string("Ed25519")) < 0 ? -ENOMEM : 0;
		if (r == 0)
			r = jwk_set_b64(jwk, "x", raw, raw_len);
	} else if ((curve = jwk_curve_of(pkey)) != NULL) {
		r = json_object_set_new(jwk, "kty", json_string("EC")) < 0 ||
		    json_object_set_new(jwk, "crv", json_string(curve->crv)) < 0 ? -ENOMEM : 0;
		if (r == 0)
			r = jwk_set_bn(jwk, "x", pkey, OSSL_PKEY_PARAM_EC_PUB_X, curve->size);
		if (r == 0)
			r = jwk_set_bn(jwk, "y", pkey, OSSL_PKEY_PARAM_EC_PUB_Y, curve->size);
	}
	if (r < 0)
		goto fail;
	if (kid != NULL && json_object_set_new(jwk, "kid", json_string(kid)) < 0)
		goto nomem;
	if (alg != JWS_ALG_INVALID) {
		if (jws_alg_name(alg) == NULL) {
			r = -EINVAL;
			goto fail;
		}
		if (json_object_set_new(jwk, "alg", json_string(jws_alg_name(alg))) < 0)
			goto nomem;
	}
	if ((kid != NULL || alg != JWS_ALG_INVALID) && json_object_set_new(jwk, "use", json_string("sig")) < 0)
		goto nomem;
	*ret_jwk = jwk;
	return 0;
nomem:
	r = -ENOMEM;
fail:
	json_decref(jwk);
	return r;
}

int jwk_thumbprint(EVP_PKEY *pkey, char *ret_kid)
{
	json_t *jwk = NULL;
	char *canonical = NULL;
	uint8_t digest[32];
	int r;

	/* RFC 7638 §3.2: the required members only, sorted, no whitespace.
	 * The members are ASCII and base64url, so jansson's compact, sorted
	 * output is exactly that form (nothing in them needs escaping). */
	r = jwk_public_to_json(pkey, NULL, JWS_ALG_INVALID, &jwk);
	if (r < 0)
		return r;
	canonical = json_dumps(jwk, JSON_COMPACT | JSON_SORT_KEYS);
	if (canonical == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (!EVP_Digest(canonical, strlen(canonical), digest, NULL, EVP_sha256(), NULL)) {
		ERR_clear_error();
		r = -EIO;
		goto out;
	}
	b64url_encode(digest, sizeof(digest), ret_kid);
	r = 0;
out:
	free(canonical);
	json_decref(jwk);
	return r;
}
