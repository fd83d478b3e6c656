/*
 * sts.c - the access-token client (sts.h). One request at a time; a timer
 * either renews the token in force or retries after a failure, with its
 * own backoff; a refusal elsewhere renews at most once per STS_REFUSED_SPACING
 * at first and less often after that.
 */
#include "sts.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ev.h>
#include <jansson.h>

#include "backoff.h"
#include "bodycap.h"
#include "cfg.h"
#include "http.h"
#include "log.h"
#include "rxon.h"
#include "util.h"

#define STS_PATH "/_worker/auth/token"
#define STS_RENEW_AT 0.8 /* of expires_in, as SDK 1.0b7 (4.10) */
#define STS_RENEW_MIN 1.0
#define STS_REFUSED_SPACING 5.0 /* a refusal renews at most this often at first, then less */
#define REQUEST_TIMEOUT 30.0

struct sts {
    struct ev_loop *loop;
    struct http *http;
    const struct cfg *cfg;
    char *url, *url_sts;
    struct sts_hooks hooks;
    void *arg;
    const struct rxon_dialect *dialect;
    char *token;
    char *refresh_token; /* 1.0b14: renews the access token without the static one */
    char *url_refresh;
    double renewed_at; /* now_mono() of the last token obtained */
    double expires_at; /* now_mono() when the token in force runs out */
    struct http_req *req;
    ev_timer timer; /* renewal, or the retry after a failure */
    struct backoff backoff, refused_backoff;
    int refreshing;       /* the request in flight uses the refresh token */
    int after_refusal;    /* the request in flight renews a refused token */
    double refused_after; /* a refusal may trigger a renewal again from then on */
    int tried;            /* the first attempt is over */
    int told_rate_limit;
    unsigned long obtained;
};

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void request(struct sts *s);

static void set_backoffs(struct sts *s)
{
    backoff_init(&s->backoff, 1.0, s->cfg->retry_max_delay);
    backoff_init(&s->refused_backoff, STS_REFUSED_SPACING, s->cfg->retry_max_delay);
}

struct sts *sts_create(struct ev_loop *loop, struct http *http, const char *url,
                       const struct cfg *cfg, const struct sts_hooks *hooks, void *arg)
{
    struct sts *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->http = http;
    s->cfg = cfg;
    s->url = xstrdup(url);
    s->url_sts = xasprintf("%s" STS_PATH, url);
    s->hooks = *hooks;
    s->arg = arg;
    s->dialect = &rxon_b3;
    set_backoffs(s);
    ev_timer_init(&s->timer, on_timer, 0., 0.);
    s->timer.data = s;
    return s;
}

void sts_destroy(struct sts *s)
{
    if (s == NULL)
        return;
    ev_timer_stop(s->loop, &s->timer);
    if (s->req != NULL)
        http_cancel(s->req);
    free(s->token);
    free(s->refresh_token);
    free(s->url);
    free(s->url_sts);
    free(s->url_refresh);
    free(s);
}

int sts_enabled(const struct sts *s)
{
    if (s->cfg->access_tokens == CFG_ACCESS_ON)
        return 1;
    if (s->cfg->access_tokens == CFG_ACCESS_OFF)
        return 0;
    return s->cfg->tls_cert_file != NULL && strncasecmp(s->url, "https://", 8) == 0;
}

void sts_set_dialect(struct sts *s, const struct rxon_dialect *d)
{
    s->dialect = d;
    free(s->url_refresh);
    s->url_refresh =
        d->path_sts_refresh != NULL ? xasprintf("%s%s", s->url, d->path_sts_refresh) : NULL;
}

const char *sts_token(const struct sts *s)
{
    return s->token;
}

unsigned long sts_tokens_obtained(const struct sts *s)
{
    return s->obtained;
}

void sts_reconfigure(struct sts *s, const struct cfg *cfg)
{
    s->cfg = cfg;
    set_backoffs(s);
}

static void timer_after(struct sts *s, double delay)
{
    ev_timer_stop(s->loop, &s->timer);
    ev_timer_set(&s->timer, delay < 0 ? 0 : delay, 0.);
    ev_timer_start(s->loop, &s->timer);
}

/* Adopt a token: every later request carries it. */
static void adopt(struct sts *s, const char *token, const char *refresh, double expires_in)
{
    free(s->token);
    s->token = xstrdup(token);
    if (refresh != NULL) {
        free(s->refresh_token);
        s->refresh_token = xstrdup(refresh);
    }
    s->renewed_at = now_mono();
    s->expires_at = s->renewed_at + expires_in;
    s->hooks.adopted(s->arg);
    double renew = expires_in * STS_RENEW_AT;
    if (renew < STS_RENEW_MIN)
        renew = STS_RENEW_MIN;
    backoff_reset(&s->backoff);
    s->obtained++;
    timer_after(s, renew);
    log_info("access token from %s: valid %.0f s, renewed in %.0f s", s->url, expires_in, renew);
}

/* Back to the static token for the session's requests (1.0b14 1.5: refresh
 * once, then fall back to the static token). */
static void drop_token(struct sts *s, const char *why)
{
    log_warn("%s: %s: going on with the configured token until a new one comes", s->url, why);
    free_and_null(s->token);
    s->hooks.adopted(s->arg);
}

static double failed(struct sts *s, const struct http_response *r)
{
    char text[160];
    if (r->status == 0) {
        struct backoff_peer peer = {.url = s->url,
                                    .https = 1,
                                    .server = s->dialect->server,
                                    .auth_status = s->dialect->auth_status,
                                    .told_rate_limit = &s->told_rate_limit};
        return backoff_after_failure(&peer, "access token", r, &s->backoff, NULL);
    }
    rxon_answer_text(r->body, r->len, text, sizeof(text));
    if ((r->status == 401 || r->status == 403) && !s->dialect->sts_any_credential)
        log_err("access token: %s did not accept this worker's client certificate (%ld %s): "
                "it issues tokens only when it verifies the certificate itself (TLS_ENABLED, "
                "TLS_CA_PATH naming the CA of TLS_CERT_PATH, no TLS-terminating proxy in "
                "between) and its Common Name is the worker id %s",
                s->url, r->status, text, s->cfg->worker_id);
    else if (r->status == 401 || r->status == 403)
        log_err("access token: %s refused this worker's credentials (%ld %s): %s", s->url,
                r->status, text, RXON_TOKEN_ADVICE);
    else
        log_warn("access token: %s answered %ld: %s", s->url, r->status, text);
    return backoff_next(&s->backoff);
}

/* A usable answer: a non-empty token without CR/LF and a positive lifetime. */
static int usable(json_t *j, const char **token, double *expires_in)
{
    json_t *exp = json_object_get(j, "expires_in");
    *token = json_string_value(json_object_get(j, "access_token"));
    *expires_in = json_is_number(exp) ? json_number_value(exp) : 0;
    return *token != NULL && **token != '\0' && strpbrk(*token, "\r\n") == NULL && *expires_in > 0;
}

/* A refresh that failed because the refresh token was refused (and not
 * because the orchestrator could not answer): ask anew with the static one. */
static int refresh_refused(const struct http_response *r)
{
    return r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429;
}

static void on_answer(void *arg, const struct http_response *r)
{
    struct sts *s = arg;
    s->req = NULL;
    if (r->cancelled)
        return;
    int first = !s->tried, after_refusal = s->after_refusal;
    s->tried = 1;
    s->after_refusal = 0;
    json_t *j = r->status == 200 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    const char *token;
    double expires_in;
    if (usable(j, &token, &expires_in)) {
        const char *refresh = json_string_value(json_object_get(j, "refresh_token"));
        adopt(s, token, refresh != NULL && strpbrk(refresh, "\r\n\"\\") == NULL ? refresh : NULL,
              expires_in);
    } else if (s->refreshing && refresh_refused(r)) {
        /* The refresh token was refused or lost: ask with the static token. */
        log_notice("access token: %s refused the refresh token (%ld); asking anew", s->url,
                   r->status);
        free_and_null(s->refresh_token);
        json_decref(j);
        request(s);
        s->after_refusal = after_refusal && s->req != NULL;
        return;
    } else {
        double d;
        if (r->status == 200 && r->too_large) {
            log_warn("access token: %s answered with a body of at least %zu bytes, over this "
                     "endpoint's limit of %zu bytes: not read",
                     s->url, r->body_seen, r->max_body);
            d = backoff_next(&s->backoff);
        } else if (r->status == 200) {
            log_warn("access token: unusable answer from %s", s->url);
            d = backoff_next(&s->backoff);
        } else {
            d = failed(s, r);
        }
        if (s->token != NULL && after_refusal)
            drop_token(s, "the refused access token could not be renewed");
        else if (s->token != NULL && now_mono() >= s->expires_at)
            drop_token(s, "the access token expired and could not be renewed");
        log_info("access token: asking again in %.1f s%s", d,
                 s->token != NULL ? " (the current one stays in use)" : "");
        timer_after(s, d);
    }
    json_decref(j);
    if (first)
        s->hooks.first_done(s->arg); /* with the token, or with the configured one */
}

static void request(struct sts *s)
{
    if (s->req != NULL)
        return;
    ev_timer_stop(s->loop, &s->timer);
    s->refreshing = s->refresh_token != NULL && s->url_refresh != NULL;
    if (!s->refreshing) {
        s->req = http_request(s->http, "POST", s->url_sts, s->hooks.headers(s->arg), NULL, 0,
                              REQUEST_TIMEOUT, on_answer, s);
    } else {
        json_t *b = json_pack("{s:s}", "refresh_token", s->refresh_token);
        char *body = json_dumps(b, JSON_COMPACT);
        s->req = http_request(s->http, "POST", s->url_refresh, s->hooks.headers(s->arg), body,
                              strlen(body), REQUEST_TIMEOUT, on_answer, s);
        free(body);
        json_decref(b);
    }
    if (s->req != NULL) /* a token answer is small (bodycap.h) */
        http_set_max_body(s->req, bodycap_limit(BODYCAP_TOKEN, 0, 0));
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    request(w->data);
}

int sts_begin(struct sts *s)
{
    if (!sts_enabled(s) || s->tried)
        return 0;
    request(s);
    return 1;
}

void sts_credential_ok(struct sts *s)
{
    backoff_reset(&s->refused_backoff);
    s->refused_after = 0;
}

int sts_after_refusal(struct sts *s)
{
    if (!sts_enabled(s))
        return 0;
    double now = now_mono();
    if (s->token != NULL && s->req == NULL && now - s->renewed_at < STS_REFUSED_SPACING) {
        /* A token just obtained is refused too: go on with the static one. */
        log_warn("%s refused a fresh access token: going on with the configured token", s->url);
        free_and_null(s->token);
        free_and_null(s->refresh_token);
        s->hooks.adopted(s->arg);
        return 0;
    }
    if (s->req == NULL && now >= s->refused_after) {
        s->refused_after = now + backoff_next(&s->refused_backoff);
        log_notice("%s answered %ld: renewing the access token", s->url, s->dialect->auth_status);
        request(s);
        s->after_refusal = s->req != NULL;
    }
    return 1;
}
