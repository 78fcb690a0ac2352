/* What the libFuzzer targets of tests/fuzz share: an invariant check that
 * stops the run with the broken condition named, so that a violated
 * property is a crash libFuzzer saves like any other. */
#ifndef HSMJWT_FUZZ_H
#define HSMJWT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                                       \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			dprintf(2, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                               \
		}                                                                              \
	} while (0)

/* The project's log lines go to /dev/null (unless FUZZ_LOGS is set): a
 * fuzzer feeds mostly bad input, and a line for each would bury the report
 * of a crash.  Only the stdio stream log.c writes through is replaced:
 * libFuzzer, the sanitizers and FUZZ_CHECK write to descriptor 2. */
void fuzz_quiet_logs(void);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
