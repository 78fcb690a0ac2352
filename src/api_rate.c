/* rate_limit (SPEC §3) for the api module: who is charged for a request
 * and the 429 of a refused one; the buckets are ratelimit.c's. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "hsmjwt/http.h"
#include "hsmjwt/metrics.h"

#include "api_internal.h"

int api_rate_key_address(const char *peer, char *buf, size_t n, size_t *ret_len)
{
	struct in6_addr a6;
	char text[INET6_ADDRSTRLEN];
	const char *suffix = "";
	int len;

	if (inet_pton(AF_INET6, peer, &a6) == 1) {
		if (IN6_IS_ADDR_V4MAPPED(&a6)) {
			if (inet_ntop(AF_INET, &a6.s6_addr[12], text, sizeof(text)) == NULL)
				return -EINVAL;
		} else {
			/* A host is handed a whole /64 and picks addresses in
			 * it at will: a key per address would be a bucket per
			 * request. */
			memset(&a6.s6_addr[8], 0, 8);
			if (inet_ntop(AF_INET6, &a6, text, sizeof(text)) == NULL)
				return -EINVAL;
			suffix = "/64";
		}
		peer = text;
	}
	len = snprintf(NULL, 0, "a:%s%s", peer, suffix);
	if (len < 0 || (size_t)len >= n)
		return -ENOBUFS;
	snprintf(buf, n, "a:%s%s", peer, suffix);
	*ret_len = (size_t)len;
	return 0;
}

int api_rate_key_caller(const char *org, const char *sub, char *buf, size_t n, size_t *ret_len)
{
	size_t org_len = strlen(org), sub_len = strlen(sub), len = 2 + org_len + 1 + sub_len;

	if (len > n)
		return -ENOBUFS;
	memcpy(buf, "s:", 2);
	memcpy(buf + 2, org, org_len);
	buf[2 + org_len] = '\0';
	memcpy(buf + 3 + org_len, sub, sub_len);
	*ret_len = len;
	return 0;
}

/* The 429 of a refused request. */
static int api_rate_refused(struct evhttp_request *req, struct api_outcome *out, unsigned retry_after)
{
	metrics_rate_limited();
	out->status = 429;
	http_reply_retry_after(req, 429, "rate_limited", "more requests than rate_limit allows this caller; retry later",
			       retry_after);
	return -EBUSY;
}

static int64_t api_rate_now(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* One token from key's bucket, at the rate the config says now (a reload
 * may change it): 0, or -EBUSY with the 429 sent. */
static int api_rate_take(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *key,
			 size_t key_len)
{
	unsigned retry_after = 1;

	if (ctx->ratelimit == NULL || ctx->cfg->rate_limit == 0)
		return 0;
	if (ratelimit_take(ctx->ratelimit, ctx->cfg->rate_limit, key, key_len, api_rate_now(), &retry_after) == 0)
		return 0;
	return api_rate_refused(req, out, retry_after);
}

/* The client's address as a rate_limit key (buf: API_RATE_KEY_ADDRESS_MAX bytes). */
#define API_RATE_KEY_ADDRESS_MAX (2 + INET6_ADDRSTRLEN + 4 + 256)
static size_t api_rate_address_key(struct evhttp_request *req, char *buf)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	char *peer = NULL;
	ev_uint16_t port;
	size_t key_len = 0;

	if (evcon != NULL)
		evhttp_connection_get_peer(evcon, &peer, &port);
	/* A name too long for the key (never an address): one bucket for
	 * all of those. */
	if (api_rate_key_address(peer ? peer : "", buf, API_RATE_KEY_ADDRESS_MAX, &key_len) < 0)
		api_rate_key_address("", buf, API_RATE_KEY_ADDRESS_MAX, &key_len);
	return key_len;
}

/* Charges the client's address. */
int api_rate_address(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out)
{
	char key[API_RATE_KEY_ADDRESS_MAX];
	size_t key_len;

	if (ctx->ratelimit == NULL || ctx->cfg->rate_limit == 0)
		return 0;
	key_len = api_rate_address_key(req, key);
	return api_rate_take(ctx, req, out, key, key_len);
}

int api_rate_unverified(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out)
{
	/* Without the header, api_route charged it already. */
	if (evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization") == NULL)
		return 0;
	return api_rate_address(ctx, req, out);
}

int api_rate_peek_address(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out)
{
	char key[API_RATE_KEY_ADDRESS_MAX];
	size_t key_len;
	unsigned retry_after = 1;

	if (ctx->ratelimit == NULL || ctx->cfg->rate_limit == 0)
		return 0;
	key_len = api_rate_address_key(req, key);
	if (ratelimit_peek(ctx->ratelimit, ctx->cfg->rate_limit, key, key_len, api_rate_now(), &retry_after) == 0)
		return 0;
	return api_rate_refused(req, out, retry_after);
}

int api_rate_caller(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *out, const char *org,
		    const char *sub)
{
	char key[2 + AUTH_ORG_MAX + 1 + AUTH_SUB_MAX];
	size_t key_len;
	int r;

	if (api_rate_key_caller(org, sub, key, sizeof(key), &key_len) < 0)
		return api_rate_address(ctx, req, out);
	r = api_rate_take(ctx, req, out, key, key_len);
	/* The log line names who was refused. */
	if (r < 0)
		snprintf(out->sub, sizeof(out->sub), "%s", sub);
	return r;
}
