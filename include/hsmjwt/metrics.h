/* metrics: the Prometheus metrics of SPEC §8, process-wide.
 *
 * Counters are relaxed atomics in fixed arrays indexed by label values that
 * come from closed sets — a token family, an algorithm, a verification
 * reason, a route of the API's table, a status code — so no request can make
 * a new time series: a path is counted by its route (/tokens/{jti} as "/tokens/\*"), a path
 * no route matches as "other".  Counting is one atomic add and never
 * allocates or locks on the hot path.  Gauges (keys by state, registry
 * records, active parents) are read at scrape time from the objects that
 * own them and handed to metrics_render; open connections are a counter
 * http.c moves both ways.
 *
 * hsmjwtctl links the same code; its counters simply are never rendered.
 *
 * Exposed (text format 0.0.4):
 *   hsmjwt_tokens_issued_total{type,alg}        type: access refresh id parent child
 *   hsmjwt_verifications_total{result}          valid, or a /token/verify reason
 *   hsmjwt_revocations_total                    records revoked (cascades count each)
 *   hsmjwt_hsm_operations_total{op,result}      result: ok error
 *   hsmjwt_hsm_sign_seconds                     histogram of C_SignInit+C_Sign
 *   hsmjwt_http_requests_total{path,code}       path: the route
 *   hsmjwt_keys{state,alg}                      gauge
 *   hsmjwt_key_rotations_total
 *   hsmjwt_registry_records                     gauge
 *   hsmjwt_parent_tokens_active                 gauge
 *   hsmjwt_rate_limited_total                   requests answered 429 by rate_limit
 *   hsmjwt_http_connections                     gauge, open connections
 *   hsmjwt_config_reloads_total{result}         result: ok refused
 *   hsmjwt_build_info{version}                  1
 */
#ifndef HSMJWT_METRICS_H
#define HSMJWT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "hsmjwt/jwk.h"

enum metrics_hsm_op {
	METRICS_HSM_SIGN,        /* C_SignInit + C_Sign */
	METRICS_HSM_VERIFY,      /* C_VerifyInit + C_Verify (HS256) */
	METRICS_HSM_LOGIN,       /* C_Login, at start and on recovery */
	METRICS_HSM_GENERATE,    /* C_GenerateKeyPair / C_GenerateKey */
	METRICS_HSM_DESTROY,     /* C_DestroyObject of a key */
	METRICS_HSM_FIND,        /* a key listing (C_FindObjects...) */
	METRICS_HSM_RECOVER,     /* a re-initialisation after a fault */
	METRICS_HSM_OP_COUNT
};

/* type: "access", "refresh", "id", "parent" or "child" (issue.c's family
 * names); another name is not counted. */
void metrics_token_issued(const char *type, enum jws_alg alg);
/* result: 0 (valid) or a JWS_E_* code (jws.h); another value counts as
 * "malformed". */
void metrics_verification(int result);
void metrics_revocations(uint64_t count);
void metrics_hsm_operation(enum metrics_hsm_op op, int ok);
/* One sign's duration, CLOCK_MONOTONIC nanoseconds. */
void metrics_hsm_sign_ns(uint64_t ns);
/* route: the matched route's pattern from the API's table (a string with
 * static storage, compared by address), or NULL for no route; code: the
 * status sent (100..599; others are dropped). */
void metrics_http_request(const char *route, int code);
void metrics_key_rotation(void);
void metrics_rate_limited(void);
void metrics_config_reload(int ok);
/* The open-connections gauge, kept by http.c's connection accounting:
 * +1 when a connection is accepted, -1 when it is closed. */
void metrics_http_connections_add(int delta);

/* What the scrape reads from the objects that own it. */
struct metrics_gauges {
	/* Published keys by state (keystate.h: next, active, retired) and alg. */
	uint64_t keys[3][JWS_ALG_COUNT];
	uint64_t registry_records;
	uint64_t parent_tokens_active;
};

/* The whole exposition: 0 and *ret_text (malloc'd, NUL-terminated, the
 * caller frees) with its length, or -ENOMEM. */
int metrics_render(const struct metrics_gauges *gauges, char **ret_text, size_t *ret_len);

/* Zeroes every counter (unit tests). */
void metrics_reset(void);

#endif
