/* The hsm module's key generation (hsm_generate_key): the templates that
 * make a key pair or an HS256 secret in the token with every custody
 * attribute set, its kid and name, and its first lifecycle record.
 * Discovery, custody checks, public-key reading and destruction: hsm_key.c;
 * lifecycle records: hsm_record.c; module, token, login, sessions and
 * signing: hsm.c. */
#include "hsmjwt/hsm.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "hsm_internal.h"
#include "hsmjwt/b64url.h"
#include "hsmjwt/log.h"
#include "hsmjwt/metrics.h"

static int hsm_set_name(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
			const char *label, const uint8_t *id, size_t id_len)
{
	CK_ATTRIBUTE attrs[] = {
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, (void *)id, id_len },
	};
	char quoted[HSM_LABEL_QUOTED];
	CK_RV rv = hsm->f->C_SetAttributeValue(s, obj, attrs, 2);
	if (rv != CKR_OK) {
		log_error("\"cannot label key\" label=%s rv=%s", log_quote(quoted, sizeof(quoted), label),
			  hsm_ckr_name(rv));
		return hsm_create_error(hsm, rv);
	}
	return 0;
}

static CK_RV hsm_generate_pair(struct hsm *hsm, CK_SESSION_HANDLE s, enum jws_alg alg, unsigned rsa_bits,
			       const uint8_t *ec_params, size_t ec_params_len,
			       CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	static const char pending[] = HSM_LABEL_PREFIX "pending";
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG bits = rsa_bits;
	uint8_t exponent[] = { 0x01, 0x00, 0x01 };
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_ATTRIBUTE pub_tmpl[6] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &no, sizeof(no) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_LABEL, (void *)pending, sizeof(pending) - 1 },
	};
	CK_ULONG pub_n = 4;
	/* Set every custody attribute explicitly: tokens differ in defaults. */
	CK_ATTRIBUTE priv_tmpl[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_DECRYPT, &no, sizeof(no) },
		{ CKA_UNWRAP, &no, sizeof(no) },
		{ CKA_DERIVE, &no, sizeof(no) },
		{ CKA_LABEL, (void *)pending, sizeof(pending) - 1 },
	};

	if (alg == JWS_ALG_RS256 || alg == JWS_ALG_PS256) {
		mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
		pub_tmpl[pub_n++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof(bits) };
		pub_tmpl[pub_n++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent) };
	} else {
		mech.mechanism = alg == JWS_ALG_EDDSA ? CKM_EC_EDWARDS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN;
		pub_tmpl[pub_n++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)ec_params, ec_params_len };
	}
	return hsm->f->C_GenerateKeyPair(s, &mech, pub_tmpl, pub_n, priv_tmpl,
					 sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), pub, priv);
}

/* HS256's key: a generic secret that only signs and verifies (an HMAC key
 * that could also encrypt, wrap or derive would lend itself to other uses
 * of the same secret). */
static CK_RV hsm_generate_secret(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *ret_key)
{
	static const char pending[] = HSM_LABEL_PREFIX "pending";
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE type = CKK_GENERIC_SECRET;
	CK_ULONG len = HSM_HS256_KEY_LEN;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &type, sizeof(type) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_ENCRYPT, &no, sizeof(no) },
		{ CKA_DECRYPT, &no, sizeof(no) },
		{ CKA_WRAP, &no, sizeof(no) },
		{ CKA_UNWRAP, &no, sizeof(no) },
		{ CKA_DERIVE, &no, sizeof(no) },
		{ CKA_LABEL, (void *)pending, sizeof(pending) - 1 },
	};

	return hsm->f->C_GenerateKey(s, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), ret_key);
}

/* A size outside the token's range is the caller's mistake, and must not
 * reach C_GenerateKeyPair: SoftHSM answers it with CKR_GENERAL_ERROR, which
 * would mark the token failed.  A token that does not say lets it through. */
static int hsm_rsa_bits_supported(struct hsm *hsm, unsigned rsa_bits)
{
	CK_MECHANISM_INFO info;
	CK_RV rv = hsm->f->C_GetMechanismInfo(hsm->slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &info);

	if (rv != CKR_OK) {
		log_debug("\"cannot read the token's RSA key sizes\" rv=%s", hsm_ckr_name(rv));
		return hsm_fail_rv(hsm, rv) == HSM_E_DEVICE ? HSM_E_DEVICE : 0;
	}
	if (info.ulMaxKeySize > 0 && (rsa_bits < info.ulMinKeySize || rsa_bits > info.ulMaxKeySize)) {
		log_error("\"RSA key size outside the token's range\" bits=%u min=%lu max=%lu", rsa_bits,
			  (unsigned long)info.ulMinKeySize, (unsigned long)info.ulMaxKeySize);
		return -EINVAL;
	}
	return 0;
}

static int hsm_generate_key_locked(struct hsm *hsm, enum jws_alg alg, unsigned rsa_bits, hsm_meta_fn meta,
				   void *meta_ctx, struct hsm_key *ret_key)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE, record = CK_INVALID_HANDLE;
	const uint8_t *params = NULL;
	size_t params_len = 0;
	struct hsm_key key;
	char label[HSM_LABEL_MAX], quoted[HSM_LABEL_QUOTED];
	uint8_t id[32], meta_value[HSM_META_MAX];
	size_t id_len, meta_len = 0;
	CK_RV rv;
	int r;

	memset(&key, 0, sizeof(key));
	if (!hsm_alg_supported(alg)) {
		log_error("\"cannot generate a key for this algorithm\" alg=%s",
			  jws_alg_name(alg) ? jws_alg_name(alg) : "(invalid)");
		return -EINVAL;
	}
	switch (alg) {
	case JWS_ALG_ES256: params = hsm_oid_p256; params_len = sizeof(hsm_oid_p256); break;
	case JWS_ALG_ES384: params = hsm_oid_p384; params_len = sizeof(hsm_oid_p384); break;
	case JWS_ALG_EDDSA: params = hsm_ed25519_printable; params_len = sizeof(hsm_ed25519_printable); break;
	default: break; /* RSA: no curve */
	}
	if (alg == JWS_ALG_RS256 || alg == JWS_ALG_PS256) {
		r = hsm_rsa_bits_supported(hsm, rsa_bits);
		if (r < 0)
			return r;
	}
	/* An HS256 kid names the key and nothing more: random, as there is no
	 * public key to take a thumbprint of, and a hash of the secret would
	 * publish something computed from it. */
	if (alg == JWS_ALG_HS256) {
		if (RAND_bytes(id, sizeof(id)) != 1) {
			log_error("\"no randomness for a kid\" alg=%s", jws_alg_name(alg));
			return HSM_E_FAILED;
		}
		id_len = sizeof(id);
		b64url_encode(id, id_len, key.kid);
	}
	r = hsm_open_raw_session(hsm, CKF_RW_SESSION, &s);
	if (r < 0)
		return r;
	if (alg == JWS_ALG_HS256) {
		rv = hsm_generate_secret(hsm, s, &priv);
	} else {
		rv = hsm_generate_pair(hsm, s, alg, rsa_bits, params, params_len, &pub, &priv);
		if (alg == JWS_ALG_EDDSA && (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_CURVE_NOT_SUPPORTED ||
					     rv == CKR_DOMAIN_PARAMS_INVALID || rv == CKR_TEMPLATE_INCONSISTENT))
			rv = hsm_generate_pair(hsm, s, alg, rsa_bits, hsm_oid_ed25519, sizeof(hsm_oid_ed25519), &pub, &priv);
	}
	if (rv != CKR_OK) {
		log_error("\"key generation failed\" alg=%s rv=%s", jws_alg_name(alg), hsm_ckr_name(rv));
		r = hsm_create_error(hsm, rv);
		goto out;
	}
	if (alg != JWS_ALG_HS256) {
		r = hsm_read_public_key(hsm, s, pub, alg, &key.public_key);
		if (r == 0)
			r = jwk_thumbprint(key.public_key, key.kid);
		if (r < 0) {
			log_error("\"cannot read the generated public key\" alg=%s", jws_alg_name(alg));
			if (r == -ENOENT || r == -EMSGSIZE || r == -EBADMSG)
				r = HSM_E_FAILED;
			goto out;
		}
		/* The kid is the thumbprint, so the name can only be given once
		 * the key exists. */
		if (b64url_decoded_max(JWK_THUMBPRINT_LEN) > sizeof(id) + 2 ||
		    b64url_decode(key.kid, JWK_THUMBPRINT_LEN, id, &id_len) < 0) {
			r = HSM_E_FAILED;
			goto out;
		}
	}
	hsm_key_label(alg, key.kid, label);
	/* The record first: from the moment the key bears its name, another
	 * process may find it, and must find its state with it.  Written only
	 * now that the key exists: its times (a next key's activation) must
	 * count from after a generation that may have taken seconds. */
	if (meta != NULL) {
		r = meta(meta_ctx, alg, meta_value, sizeof(meta_value), &meta_len);
		if (r == 0 && meta_len > sizeof(meta_value)) {
			log_error("\"lifecycle record refused\" alg=%s len=%zu limit=%d", jws_alg_name(alg), meta_len,
				  HSM_META_MAX);
			r = -EINVAL;
		}
		if (r < 0)
			goto out;
		r = hsm_record_create(hsm, s, label, meta_value, meta_len, &record);
		if (r < 0)
			goto out;
	}
	r = hsm_set_name(hsm, s, priv, label, id, id_len);
	if (r == 0 && pub != CK_INVALID_HANDLE)
		r = hsm_set_name(hsm, s, pub, label, id, id_len);
	if (r < 0)
		goto out;
	/* The token may not honour the template (or store the curve in a form
	 * hsm_find_keys refuses): a key it would skip on the next start must not
	 * sign on this one, or every start makes another. */
	r = hsm_check_private_key(hsm, s, priv, pub, alg, log_quote(quoted, sizeof(quoted), label), 1);
	if (r < 0)
		goto out;
	key.alg = alg;
	key.private_handle = priv;
	key.public_handle = pub;
	key.generation = hsm_generation(hsm);
	if (meta != NULL) {
		key.meta[0].handle = record;
		key.meta[0].len = meta_len;
		memcpy(key.meta[0].value, meta_value, meta_len);
		key.meta_count = key.meta_found = 1;
	}
	log_info("\"key generated in token\" alg=%s kid=%s", jws_alg_name(alg), key.kid);
	*ret_key = key;
	key.public_key = NULL;
out:
	if (r < 0) {
		/* Never leave a half-made key (or the record of a key that is
		 * not there) behind for the next start to trip on. */
		if (priv != CK_INVALID_HANDLE)
			hsm->f->C_DestroyObject(s, priv);
		if (pub != CK_INVALID_HANDLE)
			hsm->f->C_DestroyObject(s, pub);
		if (record != CK_INVALID_HANDLE)
			hsm->f->C_DestroyObject(s, record);
	}
	EVP_PKEY_free(key.public_key);
	hsm->f->C_CloseSession(s);
	metrics_hsm_operation(METRICS_HSM_GENERATE, r == 0);
	return r;
}

int hsm_generate_key(struct hsm *hsm, enum jws_alg alg, unsigned rsa_bits, hsm_meta_fn meta, void *meta_ctx,
		     struct hsm_key *ret_key)
{
	struct hsm_call call;
	int r = hsm_raw_begin(hsm, &call, NULL);

	if (r < 0)
		return r;
	r = hsm_generate_key_locked(hsm, alg, rsa_bits, meta, meta_ctx, ret_key);
	hsm_raw_end(hsm, &call);
	return r;
}
