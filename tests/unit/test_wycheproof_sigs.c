/* Wycheproof signature vectors through the signature layer, jws_verify_signature:
 *
 *   ecdsa_secp256r1_sha256_p1363_test.json  ES256 (r||s signatures)
 *   rsa_pss_2048_sha256_mgf1_32_test.json   PS256 (MGF1-SHA-256, 32-byte salt)
 *   rsa_signature_2048_sha256_test.json     RS256 (PKCS#1 v1.5)
 *   ed25519_test.json                       EdDSA
 *
 * Each group's key comes from its "publicKeyDer" (SubjectPublicKeyInfo, the
 * one form all four files give) through d2i_PUBKEY, then jwk_key_from_pkey
 * with the alg fixed.  "msg" is the signed data (hashed by the verifier),
 * "sig" the signature as JOSE carries it.
 *
 * A group whose key or parameters the project does not accept by policy
 * (RSA under 2048 bits, PSS other than SHA-256/MGF1-SHA-256/salt 32, a
 * curve or hash other than the alg's) is not skipped: either
 * jwk_key_from_pkey refuses the key or every one of its cases must be
 * rejected, and the group and its cases are counted.  The pinned files hold
 * no such group; the count says so.
 *
 * Verdicts: "valid" must give 0, "invalid" JWS_E_BAD_SIGNATURE.  "acceptable"
 * is asserted rejected (JWS_E_BAD_SIGNATURE): hsmjwt accepts one encoding per
 * signature.  The only acceptable case in the pinned files is RSA PKCS#1
 * tcId 8, a DigestInfo without the NULL parameters: RFC 8017 §8.2.2 verifies
 * by re-encoding (EMSA-PKCS1-v1_5, whose DigestInfo has the NULL, §9.2 note 1)
 * and comparing, so that signature does not verify. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "fixture_vectors.h"
#include "hsmjwt/jwk.h"
#include "hsmjwt/jws.h"

enum vec_kind { VEC_ECDSA_P256, VEC_RSA_PSS, VEC_RSA_PKCS1, VEC_ED25519 };

struct vec_file {
	const char *path;
	enum vec_kind kind;
	enum jws_alg alg;
	const char *group_type;   /* every group must have this "type" */
};

static const char *group_str(const json_t *group, const char *name)
{
	const char *s = json_string_value(json_object_get(group, name));

	return s ? s : "";
}

/* True when hsmjwt's alg can use this group's key and parameters. */
static int group_usable(const struct vec_file *vf, const json_t *group)
{
	const json_t *pub = json_object_get(group, "publicKey");
	json_int_t bits = json_integer_value(json_object_get(group, "keySize"));

	switch (vf->kind) {
	case VEC_ECDSA_P256:
		return strcmp(group_str(pub, "curve"), "secp256r1") == 0 &&
		       strcmp(group_str(group, "sha"), "SHA-256") == 0;
	case VEC_RSA_PSS:
		return bits >= 2048 && strcmp(group_str(group, "sha"), "SHA-256") == 0 &&
		       strcmp(group_str(group, "mgf"), "MGF1") == 0 &&
		       strcmp(group_str(group, "mgfSha"), "SHA-256") == 0 &&
		       json_integer_value(json_object_get(group, "sLen")) == 32;
	case VEC_RSA_PKCS1:
		return bits >= 2048 && strcmp(group_str(group, "sha"), "SHA-256") == 0;
	case VEC_ED25519:
		return strcmp(group_str(pub, "curve"), "edwards25519") == 0;
	}
	return 0;
}

static EVP_PKEY *group_pkey(const json_t *group)
{
	size_t der_len = 0;
	uint8_t *der = fixture_vectors_hex(fixture_vectors_str(group, "publicKeyDer"), &der_len);
	const unsigned char *p = der;
	EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)der_len);

	assert_non_null(pkey);
	assert_ptr_equal(p, der + der_len); /* the whole DER was one key */
	free(der);
	return pkey;
}

static void run_file(const struct vec_file *vf)
{
	json_t *root = fixture_vectors_load(vf->path);
	const json_t *group, *test;
	size_t gi, ti;
	unsigned checked = 0, n_valid = 0, n_invalid = 0, n_acceptable = 0;
	unsigned policy_groups = 0, policy_cases = 0, mismatches = 0;
	json_int_t declared = json_integer_value(json_object_get(root, "numberOfTests"));

	assert_true(json_array_size(json_object_get(root, "testGroups")) > 0);
	json_array_foreach(json_object_get(root, "testGroups"), gi, group) {
		int usable = group_usable(vf, group);
		EVP_PKEY *pkey;
		struct jwk_key *key = NULL;
		int krc;

		assert_string_equal(group_str(group, "type"), vf->group_type);
		pkey = group_pkey(group);
		krc = jwk_key_from_pkey(pkey, vf->alg, &key);
		if (usable) {
			if (krc != 0)
				fail_msg("%s group %zu: jwk_key_from_pkey refused a usable key (%d)", vf->path, gi, krc);
			assert_non_null(key);
			assert_int_equal(key->alg, vf->alg);
			assert_true(jwk_key_allows_alg(key, vf->alg));
		} else {
			policy_groups++;
			if (krc != 0)
				assert_null(key);
		}

		json_array_foreach(json_object_get(group, "tests"), ti, test) {
			json_int_t tc = json_integer_value(json_object_get(test, "tcId"));
			const char *result = fixture_vectors_str(test, "result");
			size_t msg_len = 0, sig_len = 0;
			uint8_t *msg = fixture_vectors_hex(fixture_vectors_str(test, "msg"), &msg_len);
			uint8_t *sig = fixture_vectors_hex(fixture_vectors_str(test, "sig"), &sig_len);
			int want, rc;

			if (strcmp(result, "valid") == 0) {
				want = 0;
				n_valid++;
			} else if (strcmp(result, "invalid") == 0) {
				want = JWS_E_BAD_SIGNATURE;
				n_invalid++;
			} else if (strcmp(result, "acceptable") == 0) {
				want = JWS_E_BAD_SIGNATURE; /* strict: see the file comment */
				n_acceptable++;
			} else {
				fail_msg("%s tcId %lld: unknown result \"%s\"", vf->path, (long long)tc, result);
				return;
			}
			checked++;

			if (!usable) {
				/* Refused by policy: the key is refused, or no case verifies. */
				policy_cases++;
				rc = key ? jws_verify_signature(vf->alg, key, msg, msg_len, sig, sig_len) : -EINVAL;
				if (rc == 0) {
					mismatches++;
					printf("MISMATCH %s tcId %lld: a group outside policy verified\n", vf->path,
					       (long long)tc);
				}
			} else {
				rc = jws_verify_signature(vf->alg, key, msg, msg_len, sig, sig_len);
				if (rc != want) {
					mismatches++;
					printf("MISMATCH %s tcId %lld (%s) [%s]: got %d (%s), want %d (%s)\n", vf->path,
					       (long long)tc, fixture_vectors_str(test, "comment"), result, rc,
					       rc == 0 ? "ok" : jws_error_reason(rc), want,
					       want == 0 ? "ok" : jws_error_reason(want));
				}
				/* The exposed P1363 range check never disagrees with a
				 * signature the full verifier accepted. */
				if (vf->kind == VEC_ECDSA_P256 && rc == 0)
					assert_int_equal(jws_ecdsa_sig_check(key->pkey, sig, sig_len), 0);
			}
			free(msg);
			free(sig);
		}
		jwk_key_free(key);
		EVP_PKEY_free(pkey);
	}

	assert_int_equal(checked, (unsigned)declared);
	assert_int_equal(checked, n_valid + n_invalid + n_acceptable);
	printf("%s (%s): %u checked: %u valid, %u invalid, %u acceptable (asserted rejected); "
	       "%u groups / %u cases outside policy (asserted rejected); %u mismatches\n",
	       vf->path, jws_alg_name(vf->alg), checked, n_valid, n_invalid, n_acceptable, policy_groups,
	       policy_cases, mismatches);
	assert_int_equal(mismatches, 0);
	json_decref(root);
}

static void test_ecdsa_p256_p1363(void **state)
{
	static const struct vec_file vf = {
		"wycheproof/ecdsa_secp256r1_sha256_p1363_test.json", VEC_ECDSA_P256, JWS_ALG_ES256,
		"EcdsaP1363Verify",
	};
	run_file(&vf);
}

static void test_rsa_pss_2048_sha256_32(void **state)
{
	static const struct vec_file vf = {
		"wycheproof/rsa_pss_2048_sha256_mgf1_32_test.json", VEC_RSA_PSS, JWS_ALG_PS256, "RsassaPssVerify",
	};
	run_file(&vf);
}

static void test_rsa_pkcs1_2048_sha256(void **state)
{
	static const struct vec_file vf = {
		"wycheproof/rsa_signature_2048_sha256_test.json", VEC_RSA_PKCS1, JWS_ALG_RS256, "RsassaPkcs1Verify",
	};
	run_file(&vf);
}

static void test_ed25519(void **state)
{
	static const struct vec_file vf = {
		"wycheproof/ed25519_test.json", VEC_ED25519, JWS_ALG_EDDSA, "EddsaVerify",
	};
	run_file(&vf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ecdsa_p256_p1363),
		cmocka_unit_test(test_rsa_pss_2048_sha256_32),
		cmocka_unit_test(test_rsa_pkcs1_2048_sha256),
		cmocka_unit_test(test_ed25519),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
