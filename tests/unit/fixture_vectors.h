/* Helpers for the external test-vector suites under tests/data. */
#ifndef HSMJWT_TEST_FIXTURE_VECTORS_H
#define HSMJWT_TEST_FIXTURE_VECTORS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Loads $TEST_DATA_DIR/relpath (duplicate member names rejected); fails the
 * running test when the file is missing or not JSON.  New reference. */
json_t *fixture_vectors_load(const char *relpath);

/* The string member name of obj; fails the running test when absent. */
const char *fixture_vectors_str(const json_t *obj, const char *name);

/* Decodes a hex string into a malloc'd buffer (never NULL, even for "");
 * fails the running test on odd length or a non-hex digit. */
uint8_t *fixture_vectors_hex(const char *hex, size_t *ret_len);

#endif
