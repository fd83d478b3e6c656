/*
 * backoff.c - the retry policy (backoff.h): jittered exponential backoff
 * and the operator's view of a failed exchange. The messages name the
 * setting to change, because the person reading them at 3 a.m. needs the
 * fix, not the symptom.
 */
#include "backoff.h"

#include <stdio.h>
#include <stdlib.h>

#include "http.h"
#include "log.h"
#include "rxon.h"
#include "tls.h"
#include "util.h"

#define RATE_LIMIT_PAUSE 61.0 /* the limiter's 60 s window must lapse (1.3) */
#define REFUSED_MIN 5.0       /* a refused credential is not retried faster */
#define RETRY_AFTER_MIN 1.0   /* "Retry-After: 0" is no licence to hammer */

void backoff_init(struct backoff *b, double base, double cap)
{
    b->base = base;
    b->cap = cap < base ? base : cap;
    b->cur = base;
}

double backoff_next(struct backoff *b)
{
    double d = b->cur;
    b->cur = b->cur * 2 > b->cap ? b->cap : b->cur * 2;
    return d * (0.5 + 0.5 * ((double)random() / (double)RAND_MAX));
}

void backoff_reset(struct backoff *b)
{
    b->cur = b->base;
}

static double transport_failure(const struct backoff_peer *p, const char *what,
                                const struct http_response *r, struct backoff *b,
                                const struct log_ctx *ctx)
{
    char msg[AVT_ERRLEN];
    if (tls_explain(r->curl_code, r->error, p->https, msg, sizeof(msg)) != TLS_FAIL_NONE)
        log_emit(LOG_ERR, ctx, "%s: %s: %s", what, p->url, msg);
    else
        log_emit(LOG_WARNING, ctx, "%s: %s: %s", what, p->url,
                 r->error ? r->error : "transport error");
    return backoff_next(b);
}

double backoff_retry_after(double retry_after, double cap)
{
    double lo = cap < RETRY_AFTER_MIN ? cap : RETRY_AFTER_MIN;
    if (!(retry_after >= lo)) /* also NaN */
        return lo;
    return retry_after > cap ? cap : retry_after;
}

/* An orchestrator's Retry-After, clamped to [1 s, the endpoint's cap]: a
 * value beyond the cap would stop the endpoint for that long (99999999999
 * s is forever), and the cap is the operator's promise of how long any
 * retry waits. The operator hears of a clamped long wait once. */
static double honour_retry_after(const struct backoff_peer *p, const char *what,
                                 const struct http_response *r, const struct backoff *b,
                                 const struct log_ctx *ctx)
{
    double d = backoff_retry_after(r->retry_after, b->cap);
    if (r->retry_after > d && p->told_retry_after != NULL && !*p->told_retry_after) {
        log_emit(LOG_WARNING, ctx,
                 "%s: %s asked to retry after %.0f s; waiting %g s instead (retry_max_delay)", what,
                 p->url, r->retry_after, d);
        *p->told_retry_after = 1;
    }
    return d;
}

static double rate_limited(const struct backoff_peer *p, const char *what,
                           const struct http_response *r, const struct backoff *b,
                           const struct log_ctx *ctx)
{
    if (p->told_rate_limit != NULL && !*p->told_rate_limit) {
        log_emit(LOG_WARNING, ctx,
                 "%s: the orchestrator's rate limiter answered 429. %s's limiter "
                 "locks out normally behaving workers (its window re-arms on every request): "
                 "set RATE_LIMITING_ENABLED=false on the orchestrator, or raise "
                 "RATE_LIMIT_LIMIT and RATE_LIMIT_POLL_LIMIT",
                 what, p->server);
        *p->told_rate_limit = 1;
    }
    if (r->retry_after >= 0)
        return honour_retry_after(p, what, r, b, ctx);
    return RATE_LIMIT_PAUSE + 5.0 * ((double)random() / (double)RAND_MAX);
}

static double refused(const struct backoff_peer *p, const char *what, const struct http_response *r,
                      const char *text, struct backoff *b, const struct log_ctx *ctx)
{
    char advice[AVT_ERRLEN];
    if (r->status == p->auth_status && p->renew_credentials != NULL &&
        p->renew_credentials(p->renew_arg)) {
        log_emit(LOG_WARNING, ctx, "%s: %s answered %ld (%s): renewing the access token", what,
                 p->url, r->status, text);
        double d = backoff_next(b);
        return d < 1 ? 1 : d;
    }
    if (p->explain == NULL || !p->explain(r->status, text, p->clock_skew, advice, sizeof(advice)))
        snprintf(advice, sizeof(advice), "%s", RXON_TOKEN_ADVICE);
    log_emit(LOG_ERR, ctx, "%s: the orchestrator refused this worker's credentials (%ld %s): %s",
             what, r->status, text, advice);
    double d = backoff_next(b);
    return d < REFUSED_MIN ? REFUSED_MIN : d;
}

double backoff_after_failure(const struct backoff_peer *p, const char *what,
                             const struct http_response *r, struct backoff *b,
                             const struct log_ctx *ctx)
{
    char text[160];
    if (r->status == 0)
        return transport_failure(p, what, r, b, ctx);
    rxon_answer_text(r->body, r->len, text, sizeof(text));
    if (r->status == 401 || r->status == 403 || r->status == p->auth_status)
        return refused(p, what, r, text, b, ctx);
    if (r->status == 429)
        return rate_limited(p, what, r, b, ctx);
    char advice[AVT_ERRLEN];
    if (r->status == 400 && p->explain != NULL &&
        p->explain(r->status, text, p->clock_skew, advice, sizeof(advice))) {
        log_emit(LOG_ERR, ctx, "%s: the orchestrator refused the message (400 %s): %s", what, text,
                 advice);
        return backoff_next(b);
    }
    if (r->too_large)
        log_emit(LOG_WARNING, ctx,
                 "%s: %s answered %ld with a body of at least %zu bytes, over this endpoint's "
                 "limit of %zu bytes: not read",
                 what, p->url, r->status, r->body_seen, r->max_body);
    else
        log_emit(LOG_WARNING, ctx, "%s: orchestrator answered %ld: %s", what, r->status, text);
    return backoff_next(b);
}
