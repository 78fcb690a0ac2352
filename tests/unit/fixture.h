/* Test fixtures shared by the unit tests. */
#ifndef HSMJWT_TEST_FIXTURE_H
#define HSMJWT_TEST_FIXTURE_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/hsm.h"
#include "hsmjwt/jwk.h"

#define FIXTURE_TOKEN_LABEL "hsmjwt-unit"

struct fixture_token {
	char dir[256];        /* temporary state directory, removed by fixture_token_destroy */
	char pin[64];
	size_t pin_len;
};

/* Creates a fresh SoftHSM token with hsm/softhsm-setup.sh in a temporary
 * directory and points SOFTHSM2_CONF at it.  Returns 0, or 77 when SoftHSM
 * is not installed (the caller exits 77 = skipped), or -1. */
int fixture_token_create(struct fixture_token *tok);
void fixture_token_destroy(struct fixture_token *tok);
/* For a test file whose every test makes its own token, before cmocka
 * runs: makes a token and removes it again, to tell whether SoftHSM is
 * there.  Returns 0, 77 when it is not (the caller exits 77 = skipped), or
 * 1 (the caller exits 1). */
int fixture_token_probe(void);
/* The SoftHSM module path. */
const char *fixture_module(void);

/* An in-memory key pair for alg (RSA 2048 for RS* and PS*), for tests that need
 * signatures without a token. */
EVP_PKEY *fixture_keypair(enum jws_alg alg);
/* jws_sign_fn over an in-memory EVP_PKEY (ctx) for its algorithm; ECDSA
 * signatures are converted to r||s.  The struct carries the alg. */
struct fixture_signer {
	EVP_PKEY *pkey;
	enum jws_alg alg;
};
int fixture_sign(void *ctx, const uint8_t *data, size_t data_len, uint8_t *sig, size_t *sig_len);

/* A temporary directory per test, as cmocka setup/teardown functions:
 * fixture_tmpdir holds its path between the two. */
#include <sys/types.h>
extern char fixture_tmpdir[];
int fixture_tmpdir_setup(void **state);
int fixture_tmpdir_teardown(void **state);
/* Writes fixture_tmpdir/name with exactly mode; returns the path (a static
 * buffer, valid until the next call). */
const char *fixture_write_file(const char *name, const void *data, size_t len, mode_t mode);
/* Runs fn(arg) with stderr (the log) captured; *ret gets fn's result and the
 * text is returned (a static buffer, valid until the next call). */
const char *fixture_capture_stderr(int (*fn)(void *), void *arg, int *ret);

/* jansson's allocations fail once `budget` more of them have succeeded (0:
 * the next one fails), until fixture_json_alloc_restore().  Call it again
 * to start a new budget. */
void fixture_json_fail_after(int budget);
void fixture_json_alloc_restore(void);

/* A configuration for key tests: defaults, then algs[0..n), rsa_bits 2048,
 * and short lifecycle times (publish_ahead 60, rotation_period 0, max_ttl
 * 600, leeway 30).  config_free it. */
struct config;
struct keys;
int fixture_config(struct config *cfg, const enum jws_alg *algs, size_t n);
/* keys_sync (generating what is missing when generate) then keys_load at
 * the current time: the daemon's start. */
int fixture_keys(struct hsm *hsm, const struct config *cfg, int generate, struct keys **ret_keys);

/* The verification rules of SPEC §5.2 as data (fixture_rules.c): tokens
 * signed with in-memory keys, each with the verdict both the daemon's
 * verifier (test_jwt.c) and libhsmjwt-verify (test_verify.c) must give,
 * evaluated at now = FIXTURE_RULES_NOW. */
#define FIXTURE_RULES_NOW 1700000000LL
#define FIXTURE_RULES_LEEWAY 30LL

struct fixture_rule {
	char name[128];         /* what the case shows */
	char *token;
	size_t len;             /* the length to verify (may stop short of a NUL, or hold one) */
	int want;               /* 0 or a JWS_E_* verdict */
	int64_t leeway;         /* FIXTURE_RULES_LEEWAY, or 0 for the cases about none */
	/* Expectations; NULL: not checked. */
	const char *issuer;
	const char *audience;
	const char *typ;
	const char *token_type;
};

struct fixture_rules {
	struct fixture_rule *cases;
	size_t count, cap;
	char *jwks;             /* {"keys":[...]}: every key a case is signed with, as the service publishes */
};

/* Builds the table (a second or so: RSA signatures are searched for a
 * leading zero byte); asserts on failure.  fixture_rules_free it. */
struct fixture_rules *fixture_rules_build(void);
void fixture_rules_free(struct fixture_rules *rules);

/* base64url of bytes or of a string, and "h.p.sig" with sig encoded: for
 * building tokens by hand in rule tests (fixture_rules.c).  malloc'd; a
 * failure fails the test. */
char *fixture_b64_bytes(const uint8_t *buf, size_t len);
char *fixture_b64(const char *text);
char *fixture_assemble(const char *h, const char *p, const uint8_t *sig, size_t sig_len);

#endif
