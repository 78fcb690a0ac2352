/* api: the endpoints of SPEC §4.2 — routing, caller checks, responses. */
#ifndef HSMJWT_API_H
#define HSMJWT_API_H

#include <event2/http.h>

#include "hsmjwt/auth.h"
#include "hsmjwt/config.h"
#include "hsmjwt/hsm.h"
#include "hsmjwt/issue.h"
#include "hsmjwt/keys.h"

/* What one worker thread serves with. */
struct api_ctx {
	const struct config *cfg;
	const struct keys *keys;
	struct hsm_session *session;
};

/* What a request did, for its log line. */
struct api_outcome {
	int status;
	char sub[AUTH_SUB_MAX + 1];   /* the caller, when authenticated */
	char jti[ISSUE_JTI_LEN + 1];  /* the token issued, when one was */
};

/* Answers req (always: every path replies exactly once). */
void api_dispatch(struct api_ctx *ctx, struct evhttp_request *req, struct api_outcome *outcome);

#endif
