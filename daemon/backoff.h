/*
 * backoff.h - the retry policy towards an orchestrator: jittered
 * exponential backoff, and how long to wait after a failed exchange, with
 * the log line that tells the operator what went wrong and what to do.
 *
 * Every endpoint of every orchestrator keeps its own struct backoff, so a
 * 429 on polls does not stop heartbeats or results (PROTOCOL.md 1.3).
 * Loop thread only (random() is not locked).
 */
#ifndef AVT_DAEMON_BACKOFF_H
#define AVT_DAEMON_BACKOFF_H

#include <stddef.h>

struct http_response;
struct log_ctx;

struct backoff {
    double base, cap, cur;
};

/* First delay `base`, doubling up to `cap` (raised to base when lower). */
void backoff_init(struct backoff *b, double base, double cap);

/* The next delay: the current step with full jitter on its upper half
 * (a fleet of workers spreads apart), then the step doubles. */
double backoff_next(struct backoff *b);

/* Back to the first step (after a success). */
void backoff_reset(struct backoff *b);

/* Who failed, for the operator message. */
struct backoff_peer {
    const char *url; /* the orchestrator's base URL */
    int https;
    const char *server; /* "Avtomatika 1.0b13": the release whose quirks the hints name */
    int auth_status;    /* the status of a refused credential in this dialect: 401 or 403 */
    /* The operator's fix for a refused message (token, clock, version, a
     * field the orchestrator could not validate), from the dialect (see
     * struct rxon_dialect); NULL: the generic token advice. */
    int (*explain)(long status, const char *text, double clock_skew, char *out, size_t outlen);
    double clock_skew; /* the orchestrator's clock minus ours, seconds; NAN: unknown */
    /* A credential refusal while an access token is in use: renew it;
     * returns 1 when a renewal is under way (the failure is then expected).
     * NULL: none. */
    int (*renew_credentials)(void *arg);
    void *renew_arg;
    int *told_rate_limit;  /* the 429 hint is given once per orchestrator */
    int *told_retry_after; /* so is a Retry-After beyond the cap; NULL: never told */
};

/* How long to wait for an orchestrator's Retry-After of `retry_after`
 * seconds (delta or date, http.h; -1 when absent or invalid) on an
 * endpoint whose backoff caps at `cap` (retry_max_delay): clamped to
 * [1 s, cap] (to cap when cap is below 1 s). */
double backoff_retry_after(double retry_after, double cap);

/* Seconds to wait before the endpoint tries again after the failed
 * exchange `r` (what: "poll", "result of task X (attempt 2)", ...), using
 * and advancing `b`; logs the failure once at the right level with ctx
 * (may be NULL). 429 honours Retry-After clamped to [1 s, b's cap]
 * (backoff_retry_after), else waits out the limiter's 60 s window (61..66 s,
 * even beyond the cap: an earlier try re-arms the limiter); a refused credential waits at least 5
 * s; TLS failures get the operator message of tls.h. */
double backoff_after_failure(const struct backoff_peer *peer, const char *what,
                             const struct http_response *r, struct backoff *b,
                             const struct log_ctx *ctx);

#endif /* AVT_DAEMON_BACKOFF_H */
