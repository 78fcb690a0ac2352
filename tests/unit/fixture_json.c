/* jansson's allocator made to fail, for the tests that every allocation
 * failure of a function is -ENOMEM (a 500), never -EINVAL (a 400 blaming the
 * client), and leaks nothing (ASan). */
#include <stddef.h>
#include <stdlib.h>

#include <jansson.h>

#include "fixture.h"

static int fixture_json_budget;

static void *fixture_json_malloc(size_t n)
{
	if (fixture_json_budget <= 0)
		return NULL;
	fixture_json_budget--;
	return malloc(n);
}

void fixture_json_fail_after(int budget)
{
	fixture_json_budget = budget;
	/* Same free either way: what jansson allocated before the switch is
	 * still freed correctly after it. */
	json_set_alloc_funcs(fixture_json_malloc, free);
}

void fixture_json_alloc_restore(void)
{
	json_set_alloc_funcs(malloc, free);
}
