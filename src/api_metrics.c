/* GET /metrics (SPEC §8): the counters metrics.c keeps, and the gauges read
 * now from what owns them — the key set this request holds, the registry's
 * index.  Served on admin_listen when that is set (api.c routes it). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"
#include "hsmjwt/metrics.h"

#include "api_internal.h"

/* Prometheus' text exposition format, version 0.0.4. */
#define API_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The published keys by state and algorithm: what a client fetching the
 * JWKS now sees (HS256 keys are never published). */
static void api_metrics_keys(const struct keys *keys, struct metrics_gauges *g)
{
	for (size_t i = 0; i < keys->count; i++) {
		const struct keys_entry *e = &keys->entries[i];
		int state = (int)e->state.state - KEYSTATE_NEXT;

		if (!e->published || state < 0 || state > 2 || e->hsm.alg <= JWS_ALG_INVALID ||
		    e->hsm.alg >= JWS_ALG_COUNT)
			continue;
		g->keys[state][e->hsm.alg]++;
	}
}

/* evbuffer_ref_cleanup_cb: the rendered text, once the connection has sent
 * it (evhttp moves the body's chains into its own buffer). */
static void api_metrics_text_free(const void *data, size_t len, void *arg)
{
	free((void *)data);
}

void api_metrics(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *segment)
{
	struct metrics_gauges gauges;
	struct registry_stats stats;
	struct evbuffer *body = NULL;
	char *text = NULL;
	size_t len = 0;

	memset(&gauges, 0, sizeof(gauges));
	api_metrics_keys(ctx->keys, &gauges);
	registry_get_stats(ctx->registry, &stats);
	gauges.registry_records = stats.records;
	/* A registry that cannot answer leaves the gauge at 0: the scrape
	 * itself must not fail for it. */
	if (registry_count_active_parents(ctx->registry, api_now(), &gauges.parent_tokens_active) < 0)
		gauges.parent_tokens_active = 0;
	if (metrics_render(&gauges, &text, &len) < 0 || (body = evbuffer_new()) == NULL ||
	    evbuffer_add_reference(body, text, len, api_metrics_text_free, NULL) < 0) {
		evbuffer_free(body);
		free(text);
		api_error(out, req, 500, "server_error", "out of memory rendering the metrics");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", API_METRICS_CONTENT_TYPE);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	out->status = 200;
	http_send(req, 200, body);
	/* text now belongs to whichever buffer holds its chain. */
	evbuffer_free(body);
}
