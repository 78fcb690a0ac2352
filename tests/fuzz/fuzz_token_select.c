/* fuzz_token_select: which token a token spec names (hsm_token_select) and
 * which file its pin-source names (pin_uri_source), over synthetic slots.
 *
 * Input: the spec, a NUL byte, then up to four slot descriptions of 1 + 8 +
 * 4 * 32 bytes each — flags (bit 0: CKF_TOKEN_INITIALIZED), slot id
 * (little-endian), then label, manufacturer, model and serial as padded
 * Cryptoki fields (serial: its first 16 bytes).  Missing bytes are spaces.
 *
 * Invariants: the selected slot is initialized, and no earlier slot is one
 * the spec also names (the first match wins: checked by selecting again
 * from the earlier slots alone); a label spec selects exactly a slot whose
 * unpadded label equals it; selecting from the chosen slot alone picks it;
 * a failure leaves the index untouched; a pin-source path is absolute,
 * NUL-terminated within its buffer, and only ever comes from a pkcs11:
 * URI. */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/pin.h"

#define MAX_SLOTS 4
#define SLOT_BYTES (1 + 8 + 4 * 32)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet_logs();
	return 0;
}

static void take(unsigned char *dst, size_t n, const uint8_t **p, const uint8_t *end)
{
	size_t k = (size_t)(end - *p) < n ? (size_t)(end - *p) : n;

	memset(dst, ' ', n);
	memcpy(dst, *p, k);
	*p += k;
}

static size_t unpadded_len(const unsigned char *s, size_t n)
{
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\0'))
		n--;
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct hsm_slot_desc slots[MAX_SLOTS];
	const uint8_t *nul = memchr(data, '\0', size), *p, *end = data + size;
	unsigned char serial[32], id[8], flags;
	char *spec, path[64];
	size_t count = 0, index = 777, again;
	int r;

	if (nul == NULL)
		nul = end;
	spec = malloc((size_t)(nul - data) + 1);
	FUZZ_CHECK(spec != NULL);
	memcpy(spec, data, (size_t)(nul - data));
	spec[nul - data] = '\0';

	p = nul < end ? nul + 1 : end;
	memset(slots, 0, sizeof(slots));
	while (count < MAX_SLOTS && p < end) {
		struct hsm_slot_desc *d = &slots[count++];
		take(&flags, 1, &p, end);
		take(id, 8, &p, end);
		d->info.flags = (flags & 1) ? CKF_TOKEN_INITIALIZED : 0;
		d->slot_id = 0;
		for (int i = 7; i >= 0; i--)
			d->slot_id = (d->slot_id << 8) | id[i];
		take(d->info.label, sizeof(d->info.label), &p, end);
		take(d->info.manufacturerID, sizeof(d->info.manufacturerID), &p, end);
		take(d->info.model, sizeof(d->info.model), &p, end);
		take(serial, sizeof(serial), &p, end);
		memcpy(d->info.serialNumber, serial, sizeof(d->info.serialNumber));
	}

	r = hsm_token_select(spec, slots, count, &index);
	if (r < 0) {
		FUZZ_CHECK(r == HSM_E_NO_TOKEN || r == -ENOMEM);
		FUZZ_CHECK(index == 777);
	} else {
		FUZZ_CHECK(r == 0 && index < count);
		FUZZ_CHECK(slots[index].info.flags & CKF_TOKEN_INITIALIZED);
		if (strncmp(spec, "pkcs11:", 7) != 0) {
			/* The label less its padding, read as a C string: a NUL
			 * inside a label (not valid in Cryptoki's blank-padded
			 * UTF-8) ends it, as it always has. */
			char label[sizeof(slots[index].info.label) + 1];
			size_t n = unpadded_len(slots[index].info.label, sizeof(slots[index].info.label));
			memcpy(label, slots[index].info.label, n);
			label[n] = '\0';
			FUZZ_CHECK(strcmp(spec, label) == 0);
		}
		/* The first match: none before it, and it alone is a match. */
		again = 777;
		FUZZ_CHECK(hsm_token_select(spec, slots, index, &again) == HSM_E_NO_TOKEN && again == 777);
		FUZZ_CHECK(hsm_token_select(spec, &slots[index], 1, &again) == 0 && again == 0);
	}

	memset(path, 0x7f, sizeof(path));
	r = pin_uri_source(spec, path, sizeof(path));
	if (r < 0) {
		FUZZ_CHECK(r == -ENOENT || r == -EINVAL || r == -ENAMETOOLONG || r == -ENOMEM);
		for (size_t i = 0; i < sizeof(path); i++)
			FUZZ_CHECK(path[i] == 0x7f);
	} else {
		FUZZ_CHECK(r == 0);
		FUZZ_CHECK(strncmp(spec, "pkcs11:", 7) == 0);
		FUZZ_CHECK(memchr(path, '\0', sizeof(path)) != NULL);
		FUZZ_CHECK(path[0] == '/');
	}
	free(spec);
	return 0;
}
