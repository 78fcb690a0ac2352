/* hsm_token_select and pin_uri_source: which token a token spec (a label or
 * an RFC 7512 pkcs11: URI) names among the slots a module lists, and which
 * file a URI's pin-source names — pure functions, no token needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "hsmjwt/hsm.h"
#include "hsmjwt/log.h"
#include "hsmjwt/pin.h"

/* Cryptoki's fixed-width, space-padded text fields. */
static void pad(unsigned char *dst, size_t n, const char *src)
{
	size_t len = strlen(src);

	assert_true(len <= n);
	memset(dst, ' ', n);
	memcpy(dst, src, len);
}

static struct hsm_slot_desc slot(CK_SLOT_ID id, const char *label, const char *serial,
				 const char *model, const char *manufacturer, int initialized)
{
	struct hsm_slot_desc d;

	memset(&d, 0, sizeof(d));
	d.slot_id = id;
	pad(d.info.label, sizeof(d.info.label), label);
	pad(d.info.serialNumber, sizeof(d.info.serialNumber), serial);
	pad(d.info.model, sizeof(d.info.model), model);
	pad(d.info.manufacturerID, sizeof(d.info.manufacturerID), manufacturer);
	d.info.flags = CKF_RNG | (initialized ? CKF_TOKEN_INITIALIZED : 0);
	return d;
}

static struct hsm_slot_desc slots[5];

static int setup(void **state)
{
	/* Each field tells exactly one slot apart, and slots 1 and 3 share a
	 * label so that "several match" has something to choose between. */
	slots[0] = slot(11, "gamma", "S0", "SoftHSM v2", "SoftHSM project", 0);
	slots[1] = slot(12, "alpha", "S1", "SoftHSM v2", "SoftHSM project", 1);
	slots[2] = slot(13, "alpha beta", "S2", "Nitrokey HSM", "www.CardContact.de", 1);
	slots[3] = slot(14, "alpha", "S3", "SoftHSM v2", "SoftHSM project", 1);
	slots[4] = slot(7, "gamma", "S4", "YubiHSM", "Yubico", 1);
	return 0;
}

/* The index hsm_token_select picks for spec among all slots, or -1 for
 * HSM_E_NO_TOKEN (any other answer fails the test); a failure leaves the
 * index untouched. */
static long pick(const char *spec)
{
	size_t index = 999;
	int r = hsm_token_select(spec, slots, 5, &index);

	if (r == HSM_E_NO_TOKEN) {
		assert_int_equal(index, 999);
		return -1;
	}
	assert_int_equal(r, 0);
	assert_true(index < 5);
	return (long)index;
}

static void test_label(void **state)
{
	assert_int_equal(pick("alpha"), 1);        /* the first of two, in slot order */
	assert_int_equal(pick("alpha beta"), 2);
	assert_int_equal(pick("gamma"), 4);        /* slot 0's gamma is not initialized */
	assert_int_equal(pick("alph"), -1);        /* whole label, not a prefix */
	assert_int_equal(pick("alpha "), -1);      /* the padding is not part of it */
	assert_int_equal(pick("Alpha"), -1);       /* case matters */
	assert_int_equal(pick(""), -1);
	assert_int_equal(pick("delta"), -1);
}

static void test_label_nul_padding(void **state)
{
	struct hsm_slot_desc one = slot(3, "zeta", "", "", "", 1);
	size_t index = 999;

	/* Some modules pad with NULs rather than spaces. */
	memset(one.info.label + 4, 0, sizeof(one.info.label) - 4);
	assert_int_equal(hsm_token_select("zeta", &one, 1, &index), 0);
	assert_int_equal(index, 0);
	/* A 32-byte label fills the field: no padding at all. */
	one = slot(3, "abcdefghijklmnopqrstuvwxyz012345", "", "", "", 1);
	index = 999;
	assert_int_equal(hsm_token_select("abcdefghijklmnopqrstuvwxyz012345", &one, 1, &index), 0);
	assert_int_equal(index, 0);
	assert_int_equal(hsm_token_select("abcdefghijklmnopqrstuvwxyz01234", &one, 1, &index), HSM_E_NO_TOKEN);
}

static void test_uri_token(void **state)
{
	assert_int_equal(pick("pkcs11:token=alpha"), 1);
	assert_int_equal(pick("pkcs11:token=alpha%20beta"), 2);
	assert_int_equal(pick("pkcs11:token=gamma"), 4);
	assert_int_equal(pick("pkcs11:token=alph"), -1);
	assert_int_equal(pick("pkcs11:token=ALPHA"), -1);
}

static void test_uri_other_attributes(void **state)
{
	assert_int_equal(pick("pkcs11:serial=S3"), 3);
	assert_int_equal(pick("pkcs11:serial=S0"), -1);       /* not initialized */
	assert_int_equal(pick("pkcs11:model=Nitrokey%20HSM"), 2);
	assert_int_equal(pick("pkcs11:model=SoftHSM%20v2"), 1);
	assert_int_equal(pick("pkcs11:manufacturer=Yubico"), 4);
	assert_int_equal(pick("pkcs11:token=alpha;serial=S3"), 3);
	assert_int_equal(pick("pkcs11:token=alpha;serial=S2"), -1);  /* every attribute must hold */
	assert_int_equal(pick("pkcs11:token=gamma;manufacturer=Yubico;model=YubiHSM;serial=S4"), 4);
}

static void test_uri_slot_id(void **state)
{
	assert_int_equal(pick("pkcs11:slot-id=14"), 3);
	assert_int_equal(pick("pkcs11:slot-id=7"), 4);
	assert_int_equal(pick("pkcs11:slot-id=14;token=alpha"), 3);  /* not slot 12's alpha */
	assert_int_equal(pick("pkcs11:slot-id=13;token=alpha"), -1);
	assert_int_equal(pick("pkcs11:slot-id=11"), -1);             /* not initialized */
	assert_int_equal(pick("pkcs11:slot-id=99"), -1);
}

static void test_uri_any(void **state)
{
	/* A URI that names nothing matches every token: the first initialized. */
	assert_int_equal(pick("pkcs11:"), 1);
	/* An object attribute is outside what a token URI is parsed for:
	 * p11-kit counts it unrecognized, and such a URI names no token. */
	assert_int_equal(pick("pkcs11:token=alpha%20beta;object=foo"), -1);
}

static void test_uri_refused(void **state)
{
	assert_int_equal(pick("pkcs11:token=%zz"), -1);      /* bad %-escape */
	assert_int_equal(pick("pkcs11:slot-id=abc"), -1);
	assert_int_equal(pick("pkcs11:frobnicate=1"), -1);   /* unknown attribute: matches nothing */
	assert_int_equal(pick("pkcs11:token=alpha;frobnicate=1"), -1);
}

static void test_no_slots(void **state)
{
	size_t index = 999;

	assert_int_equal(hsm_token_select("alpha", slots, 0, &index), HSM_E_NO_TOKEN);
	assert_int_equal(hsm_token_select("pkcs11:", slots, 0, &index), HSM_E_NO_TOKEN);
	assert_int_equal(index, 999);
	/* Only what count covers is looked at. */
	assert_int_equal(hsm_token_select("alpha beta", slots, 2, &index), HSM_E_NO_TOKEN);
	assert_int_equal(hsm_token_select("alpha beta", slots, 3, &index), 0);
	assert_int_equal(index, 2);
}

static void test_pin_uri_source(void **state)
{
	char path[32];

	memcpy(path, "untouched", 10);
	assert_int_equal(pin_uri_source(NULL, path, sizeof(path)), -ENOENT);
	assert_int_equal(pin_uri_source("alpha", path, sizeof(path)), -ENOENT);
	assert_int_equal(pin_uri_source("pkcs11:token=alpha", path, sizeof(path)), -ENOENT);
	assert_int_equal(pin_uri_source("pkcs11:token=%zz?pin-source=/p", path, sizeof(path)), -ENOENT);
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=relative/pin", path, sizeof(path)), -EINVAL);
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=file:relative", path, sizeof(path)), -EINVAL);
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=http://x/pin", path, sizeof(path)), -EINVAL);
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=/abcdefghijklmnopqrstuvwxyz01234", path, sizeof(path)),
			 -ENAMETOOLONG);
	assert_string_equal(path, "untouched");

	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=file:/etc/hsmjwt/pin", path, sizeof(path)), 0);
	assert_string_equal(path, "/etc/hsmjwt/pin");
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=/run/pin", path, sizeof(path)), 0);
	assert_string_equal(path, "/run/pin");
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=file:/a%20b", path, sizeof(path)), 0);
	assert_string_equal(path, "/a b");
	/* 31 bytes and its NUL fill the buffer exactly. */
	assert_int_equal(pin_uri_source("pkcs11:token=t?pin-source=/abcdefghijklmnopqrstuvwxyz0123", path, sizeof(path)), 0);
	assert_string_equal(path, "/abcdefghijklmnopqrstuvwxyz0123");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_label),
		cmocka_unit_test(test_label_nul_padding),
		cmocka_unit_test(test_uri_token),
		cmocka_unit_test(test_uri_other_attributes),
		cmocka_unit_test(test_uri_slot_id),
		cmocka_unit_test(test_uri_any),
		cmocka_unit_test(test_uri_refused),
		cmocka_unit_test(test_no_slots),
		cmocka_unit_test(test_pin_uri_source),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
