/*
 * orch.c - the protocol session with one orchestrator (orch.h). The state
 * machine, its timers and its requests; the bytes come from the dialect
 * (o->dialect, rxon.h), the task bookkeeping is the ledger's. Section
 * numbers in comments refer to PROTOCOL.md.
 */
#include "orch.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <ev.h>
#include <jansson.h>

#include "backoff.h"
#include "bodycap.h"
#include "cfg.h"
#include "http.h"
#include "ledger.h"
#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "rxon.h"
#include "sts.h"
#include "task.h"
#include "tls.h"
#include "usage.h"
#include "util.h"
#include "ws.h"

#define PATH_REGISTER "/_worker/workers/register"
#define PATH_RESULT "/_worker/tasks/result"
#define PATH_STATUS "/_public/status"
#define PATH_PROBE "/_worker/events" /* 1.0b14 only: the detection's second step */
#define DETECT_TIMEOUT 5.0
#define SKEW_WARN 30.0 /* seconds of clock difference worth a warning (1.0b14 allows 60) */
#define REQUEST_TIMEOUT 30.0
/* The long-poll's client timeout exceeds the server's hold by this much: a
 * poll given up early can lose the task the server pops for it (2.2), so
 * err on the side of a busy orchestrator answering late. */
#define POLL_MARGIN 15.0
#define POLLS_MAX 64 /* the ceiling of [orchestrator] max_polls (cfg.c) */

/* One long-poll in flight. */
struct poll {
    struct orch *o;
    struct http_req *req; /* NULL: this entry is free */
    /* The plugins in force when it was sent: a reload may retire them
     * before its answer arrives (orch_poll_uses). */
    const struct plugin_set *plugins;
    double sent; /* now_mono() */
};

struct orch {
    struct ev_loop *loop;
    struct http *http;
    const struct cfg *cfg;
    const struct plugin_set *plugins;
    struct orch_env env;
    const struct rxon_dialect *dialect;
    struct rxon_sync sync;
    int protocol; /* enum cfg_protocol of this orchestrator's entry */
    int detected; /* the dialect is known (forced, or detected: PROTOCOL-1.0b14.md 4.2) */
    int detect_step;
    struct http_req *detect_req;
    struct backoff detect_backoff;
    double clock_skew; /* the orchestrator's clock minus ours (Date header); NAN: unknown */
    int told_skew;
    struct usage usage;
    int leaving; /* the last ("offline") heartbeat is due */
    int left;    /* it went out */

    char *name, *url; /* this orchestrator: its cfg_orch name and base URL */
    char *url_poll, *url_heartbeat, *url_register, *url_result, *url_ws, *url_events, *url_status,
        *url_probe;
    char *header_token;    /* the token in `headers`, to notice a change */
    int told_cleartext;    /* warned that the token goes out over plain http:// */
    char **headers;        /* NULL-terminated "Name: value" */
    char **static_headers; /* the same with the static token: access-token requests */
    void (*sched)(void *arg);
    void *sched_arg;
    struct sts *sts;

    int registered;
    int draining;
    int started;
    struct http_req *register_req;
    ev_timer register_timer;
    struct backoff register_backoff;

    struct poll polls[POLLS_MAX];
    int npolls; /* in flight */
    /* How many may be in flight: 1 after a poll came back empty (an idle
     * worker holds one poll, as the SDK does), max_polls once one brought a
     * task (a backlog is fetched by several at once). */
    int poll_fanout;
    ev_timer poll_timer; /* pause after a failed poll */
    struct backoff poll_backoff;
    ev_timer poll_hold_end;    /* while draining: gives up polls unanswered after their hold */
    double poll_paused_until;  /* now_wall() when the pause after a failed poll ends */
    long poll_pause_status;    /* the answer that paused polls (0: none came) */
    double poll_failing_since; /* now_mono() of the first failed poll since one was answered */

    struct http_req *hb_req;
    int hb_probe;    /* the in-flight heartbeat is the empty-body probe */
    int hb_again;    /* a state change happened while one was in flight */
    int hb_drain;    /* the heartbeat in flight says this worker drains */
    int drain_known; /* the orchestrator acknowledged a draining heartbeat */
    unsigned long beats;
    ev_timer hb_periodic;
    ev_timer hb_debounce;
    double hb_paused_until;
    int told_busy;    /* advertise_busy: the last heartbeat withheld a type */
    size_t told_open; /* the types it offered */
    struct backoff hb_backoff;

    struct ws *ws;
    ev_timer ws_timer;
    struct backoff ws_backoff;

    int told_rate_limit;
    int told_retry_after;
    struct orch_stats stats;
};

/* One result send in flight (orch_post_result). */
struct post {
    struct orch *o;
    struct http_req *req;
    outbox_answer_fn done;
    void *arg;
};

static void start_register(struct orch *o);
static void send_heartbeat(struct orch *o, int periodic);
static void heartbeat_out(struct orch *o, int probe);
static void send_last_heartbeat(struct orch *o);

/* ---- Small helpers ------------------------------------------------------------ */

static void timer_after(struct orch *o, ev_timer *w, double delay)
{
    ev_timer_stop(o->loop, w);
    ev_timer_set(w, delay < 0 ? 0 : delay, 0.);
    ev_timer_start(o->loop, w);
}

static int is_https(const struct orch *o)
{
    return strncasecmp(o->url, "https://", 8) == 0;
}

static struct rxon_worker worker_view(const struct orch *o)
{
    return (struct rxon_worker){o->cfg, o->plugins, o->env.hot_cache};
}

/* This orchestrator's entry in the configuration in force (reloads swap it). */
static const struct cfg_orch *my_entry(const struct orch *o)
{
    for (size_t i = 0; i < o->cfg->norchs; i++) {
        if (strcmp(o->cfg->orchs[i].url, o->url) == 0)
            return &o->cfg->orchs[i];
    }
    return NULL;
}

/* The configured token: this orchestrator's own, else the global one. */
static const char *static_token(const struct orch *o)
{
    const struct cfg_orch *e = my_entry(o);
    return e != NULL && e->token != NULL ? e->token : o->cfg->token;
}

/* The key of 1.0b14 signatures: [orchestrator] signing_key, else the
 * configured token; never an access token (PROTOCOL-1.0b14.md 2.5). */
static struct rxon_key signing_key(const struct orch *o)
{
    const char *k = o->cfg->signing_key != NULL ? o->cfg->signing_key : static_token(o);
    return (struct rxon_key){k, o->cfg->worker_id};
}

/* The orchestrator's clock from its Date header: 1.0b14 refuses a signed
 * message more than 60 s off, so a difference is worth a warning before
 * it is worth a refusal. */
static void note_clock(struct orch *o, const struct http_response *r)
{
    if (r->date <= 0)
        return;
    o->clock_skew = r->date - now_wall();
    if (fabs(o->clock_skew) > SKEW_WARN && !o->told_skew) {
        log_warn("the clock of %s differs from this machine's by %.0f s (its Date header): RXON "
                 "1.0b14 refuses signed messages more than 60 s off; synchronise the clocks "
                 "(NTP)",
                 o->url, o->clock_skew);
        o->told_skew = 1;
    } else if (fabs(o->clock_skew) < SKEW_WARN / 3) {
        o->told_skew = 0;
    }
}

/* Count a completed exchange with endpoint `ep` (not a cancelled one). */
static void count_exchange(struct orch *o, enum orch_endpoint ep, const struct http_response *r)
{
    enum orch_error_kind kind;
    o->stats.requests[ep]++;
    note_clock(o, r);
    if (r->status >= 200 && r->status < 300) {
        o->stats.last_ok = now_mono();
        return;
    }
    if (r->status == 0)
        kind = ORCH_ERR_TRANSPORT;
    else if (r->status == 401 || r->status == 403)
        kind = ORCH_ERR_AUTH;
    else if (r->status == 429)
        kind = ORCH_ERR_RATE_LIMIT;
    else if (r->status >= 400 && r->status < 500)
        kind = ORCH_ERR_4XX;
    else if (r->status >= 500 && r->status < 600)
        kind = ORCH_ERR_5XX;
    else
        kind = ORCH_ERR_INVALID;
    o->stats.errors[ep][kind]++;
}

static int renew_credentials(void *arg)
{
    return sts_after_refusal(((struct orch *)arg)->sts);
}

double orch_failure_delay(struct orch *o, const char *what, const struct http_response *r,
                          struct backoff *b, const struct log_ctx *ctx)
{
    struct backoff_peer peer = {.url = o->url,
                                .https = is_https(o),
                                .server = o->dialect->server,
                                .auth_status = o->dialect->auth_status,
                                .explain = o->dialect->explain,
                                .clock_skew = o->clock_skew,
                                .renew_credentials = renew_credentials,
                                .renew_arg = o,
                                .told_rate_limit = &o->told_rate_limit,
                                .told_retry_after = &o->told_retry_after};
    return backoff_after_failure(&peer, what, r, b, ctx);
}

/* ---- Requests ------------------------------------------------------------------- */

/* A request whose answer is held to the body limit of endpoint ep
 * (bodycap.h), so that no answer costs more than what ep can carry. */
static struct http_req *request(struct orch *o, enum bodycap_endpoint ep, const char *method,
                                const char *url, const char *const *hdrs, const char *body,
                                size_t len, double timeout, http_done_fn done, void *arg)
{
    struct http_req *r = http_request(o->http, method, url, hdrs, body, len, timeout, done, arg);
    if (r != NULL)
        http_set_max_body(
            r, bodycap_limit(ep, (size_t)o->cfg->max_task_bytes, o->cfg->max_concurrent_tasks));
    return r;
}

/* A 2xx answer over its endpoint's limit was not read: say so (a non-2xx
 * one is the backoff's to report). Returns 1 when r is such an answer. */
static int unread_answer(const struct orch *o, enum bodycap_endpoint ep,
                         const struct http_response *r, const char *consequence)
{
    if (!r->too_large || r->status < 200 || r->status >= 300)
        return 0;
    log_err("%s: %s answered %ld with a body of at least %zu bytes, over this endpoint's limit "
            "of %zu bytes: not read; %s",
            bodycap_name(ep), o->url, r->status, r->body_seen, r->max_body, consequence);
    return 1;
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void free_headers(char **h)
{
    for (char **p = h; p != NULL && *p; p++)
        free(*p);
    free(h);
}

/* The headers of a request authenticated with `token` (may be NULL). */
static char **make_headers(const struct orch *o, const char *token)
{
    int n = 0;
    char **h = xcalloc(5, sizeof(char *));
    if (token != NULL)
        h[n++] = xasprintf("X-Worker-Token: %s", token);
    if (o->dialect->worker_id_header)
        h[n++] = xasprintf("X-Worker-ID: %s", o->cfg->worker_id);
    h[n++] = xasprintf("X-RXON-Version: %s", o->dialect->version);
    h[n++] = xstrdup("Content-Type: application/json");
    h[n] = NULL;
    return h;
}

/* Once per session: its token would cross the network in clear text. */
static void warn_cleartext(struct orch *o)
{
    if (o->told_cleartext || static_token(o) == NULL || !cfg_url_is_cleartext_remote(o->url))
        return;
    o->told_cleartext = 1;
    log_warn("%s: the worker token goes to this orchestrator in clear text (http:// to another "
             "host): anyone on the way can read it and act as this worker; use an https:// url "
             "(see [tls] in worker.ini(5))",
             o->url);
}

/* (Re)build the headers every request copies; a WebSocket that is not
 * open picks them up at its next connect, an open one keeps its session.
 * Access-token requests always carry the static token (static_headers):
 * an expired or forgotten access token cannot buy its own successor. */
static void build_headers(struct orch *o)
{
    const char *token = sts_token(o->sts) != NULL ? sts_token(o->sts) : static_token(o);
    free_headers(o->headers);
    o->headers = make_headers(o, token);
    free_headers(o->static_headers);
    o->static_headers = make_headers(o, static_token(o));
    if (o->ws != NULL && !ws_is_open(o->ws) && !same_str(o->header_token, token)) {
        ws_destroy(o->ws);
        o->ws = NULL;
        if (o->registered && o->cfg->websockets)
            timer_after(o, &o->ws_timer, 0);
    }
    free(o->header_token);
    o->header_token = token != NULL ? xstrdup(token) : NULL;
    warn_cleartext(o);
}

static const char *const *headers(const struct orch *o)
{
    return (const char *const *)o->headers;
}

/* Send a body built by the dialect; NULL (logged) when it cannot be
 * encoded, which no caller's message can cause but a plugin's data. */
static struct http_req *send_body(struct orch *o, const char *method, const char *url, json_t *body,
                                  enum rxon_msg kind, http_done_fn done, void *arg)
{
    char *s = NULL, err[AVT_ERRLEN];
    size_t len = 0;
    struct rxon_key key = signing_key(o);
    if (body != NULL && o->dialect->encode(body, kind, &key, &s, &len, err, sizeof(err)) < 0) {
        log_err("%s: cannot encode the message: %s", o->url, err);
        return NULL;
    }
    enum bodycap_endpoint ep = kind == RXON_MSG_HEARTBEAT ? BODYCAP_HEARTBEAT : BODYCAP_REGISTER;
    struct http_req *r =
        request(o, ep, method, url, headers(o), s, len, REQUEST_TIMEOUT, done, arg);
    free(s);
    return r;
}

/* ---- Heartbeats (2.3) ------------------------------------------------------------- */

/* The types a task could start with now: all of them unless advertise_busy,
 * then those with a free global slot and room under their limit. */
static json_t *skills_now(const struct orch *o)
{
    json_t *skills = json_array();
    int free_slots = pool_free_slots(o->env.pool);
    for (size_t i = 0; i < o->plugins->ntypes; i++) {
        const char *type = o->plugins->types[i].type;
        if (!o->cfg->advertise_busy || (free_slots > 0 && pool_type_has_room(o->env.pool, type)))
            json_array_append_new(skills, json_string(type));
    }
    return skills;
}

/*
 * advertise_busy: a type withheld by the last heartbeat that could take a
 * task again. Until the orchestrator hears of it, every job created for
 * that type fails dispatch ("No suitable workers": only idle workers listing
 * it are candidates) and is quarantined after its immediate retries
 * (avtomatika 1.0b13 storage/memory.py:181-193, dispatcher.py:189-193,
 * executor.py:467-515; 1.0b27 storage/memory.py:227-245,
 * dispatcher.py:324-335, executor.py:610-659), so that news goes out at
 * once, not one heartbeat_debounce later.
 */
static int reopened(const struct orch *o)
{
    if (!o->told_busy || o->draining)
        return 0;
    json_t *now = skills_now(o);
    int more = json_array_size(now) > o->told_open;
    json_decref(now);
    return more;
}

static json_t *heartbeat_body(struct orch *o)
{
    struct rxon_worker w = worker_view(o);
    struct rxon_state st = {.draining = o->draining,
                            .offline = o->left,
                            .free_slots = pool_free_slots(o->env.pool),
                            .skills_now = skills_now(o),
                            .usage = usage_sample(&o->usage, "/proc")};
    o->told_open = json_array_size(st.skills_now);
    o->told_busy = o->cfg->advertise_busy && o->told_open < o->plugins->ntypes;
    st.ntasks = ledger_refs(o->env.ledger, o, &st.tasks);
    json_t *body = o->dialect->heartbeat_body(&w, &st, &o->sync);
    json_decref(st.skills_now);
    json_decref(st.usage);
    return body;
}

static void heartbeat_cancel(void *arg, enum rxon_cancel_kind kind, const char *id)
{
    struct orch *o = arg;
    ledger_cancel(o->env.ledger, o, kind, id, "heartbeat");
}

static void expired(struct orch *o, const char *why)
{
    log_warn("the orchestrator no longer knows worker %s (%s): registering again",
             o->cfg->worker_id, why);
    o->registered = 0;
    if (o->protocol == CFG_PROTOCOL_AUTO)
        o->detected = 0; /* it may have been replaced by another release (4.2, step 4) */
    start_register(o);
}

/* An answer that says this orchestrator no longer speaks the dialect in use:
 * a route of it unknown to the router (a 404 without a version header), or
 * a 1.0b3 message refused for its missing signature (4.2, step 4). */
static int wrong_dialect(const struct orch *o, const struct http_response *r)
{
    const char *v = r->rxon_version != NULL ? r->rxon_version : "";
    if (o->protocol != CFG_PROTOCOL_AUTO || !o->detected)
        return 0;
    if (r->status == 404 && v[0] == '\0')
        return 1;
    return o->dialect == &rxon_b3 && r->status == 403 &&
           strstr(r->body != NULL ? r->body : "", "timestamp") != NULL;
}

/* After a failed exchange: detect the protocol again when the answer says
 * it changed. Returns 1 when it did. */
static int redetect(struct orch *o, const struct http_response *r, const char *what)
{
    if (!wrong_dialect(o, r))
        return 0;
    log_notice("%s: %s answered %ld: it no longer speaks RXON %s; detecting its protocol again",
               what, o->url, r->status, o->dialect->version);
    o->detected = 0;
    o->registered = 0;
    start_register(o);
    return 1;
}

static void on_heartbeat(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    int probe = o->hb_probe;
    o->hb_req = NULL;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_HEARTBEAT, r);
    if (o->leaving && !o->left) {
        if (o->hb_again) { /* the "draining" is still owed: it goes first */
            o->hb_again = 0;
            heartbeat_out(o, 0);
        } else {
            send_last_heartbeat(o); /* the one in flight was the "draining" */
        }
        return;
    }
    if (r->status != 200) {
        o->stats.heartbeats_failed++;
        o->sync.full_sync = 1; /* the skills it may have carried did not arrive */
        if (o->leaving || redetect(o, r, "heartbeat"))
            return;
        double d = orch_failure_delay(o, probe ? "heartbeat (probe)" : "heartbeat", r,
                                      &o->hb_backoff, NULL);
        o->hb_paused_until = now_mono() + d;
        char text[64];
        rxon_answer_text(r->body, r->len, text, sizeof(text));
        if (r->status == 403 && o->dialect == &rxon_b14 && o->registered &&
            strncmp(text, "Unauthorized", 12) == 0) {
            o->registered = 0; /* Decision 9: register again with the renewed credential */
            start_register(o);
        }
        return;
    }
    backoff_reset(&o->hb_backoff);
    if (o->hb_drain && o->draining && !o->drain_known) {
        o->drain_known = 1;
        if (o->npolls > 0) {
            /* It dispatches to idle workers only, and what it queued for us
             * the held polls would have brought at once: after a grace for a
             * task on its way, they can go. */
            double left = orch_poll_hold_end(o) + ORCH_DRAIN_POLL_MARGIN - now_mono();
            timer_after(o, &o->poll_hold_end,
                        left < ORCH_DRAIN_POLL_GRACE ? left : ORCH_DRAIN_POLL_GRACE);
        }
    }
    sts_credential_ok(o->sts);
    o->hb_paused_until = 0;
    enum rxon_hb_answer ans = RXON_HB_OK;
    if (unread_answer(o, BODYCAP_HEARTBEAT, r, "a cancel it named comes again with a later one"))
        o->stats.errors[ORCH_EP_HEARTBEAT][ORCH_ERR_INVALID]++;
    else
        ans = o->dialect->parse_heartbeat_answer(r->body, r->len, probe, heartbeat_cancel, o);
    if (ans == RXON_HB_EXPIRED && o->registered) {
        expired(o, "heartbeat answered null");
    } else if (ans == RXON_HB_RESYNC && o->registered) {
        expired(o, "it asked for the skills again");
    } else if (ans == RXON_HB_UNEXPECTED) {
        o->stats.errors[ORCH_EP_HEARTBEAT][ORCH_ERR_INVALID]++;
        log_warn("heartbeat: unexpected answer ignored");
    }
    if (o->hb_again) {
        o->hb_again = 0;
        send_heartbeat(o, 0);
    }
}

/* Sends one heartbeat now: a probe (no body) or the full state. */
static void heartbeat_out(struct orch *o, int probe)
{
    json_t *body = probe ? NULL : heartbeat_body(o);
    o->hb_probe = probe;
    o->hb_drain = o->draining && !probe;
    o->stats.heartbeats++;
    o->hb_req = send_body(o, "PATCH", o->url_heartbeat, body, RXON_MSG_HEARTBEAT, on_heartbeat, o);
    json_decref(body);
}

static void send_heartbeat(struct orch *o, int periodic)
{
    if (!o->registered || o->leaving)
        return;
    if (o->hb_req != NULL) {
        o->hb_again = 1;
        return;
    }
    if (now_mono() < o->hb_paused_until)
        return;
    heartbeat_out(o, periodic && o->cfg->probe_every > 0 && ++o->beats % o->cfg->probe_every == 0);
}

static void on_hb_periodic(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    send_heartbeat(w->data, 1);
}

static void on_hb_debounce(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    send_heartbeat(w->data, 0);
}

void orch_heartbeat_soon(struct orch *o)
{
    if (!o->registered)
        return;
    if (reopened(o)) {
        ev_timer_stop(o->loop, &o->hb_debounce);
        send_heartbeat(o, 0);
        return;
    }
    if (!ev_is_active(&o->hb_debounce))
        timer_after(o, &o->hb_debounce, o->cfg->heartbeat_debounce);
}

/* ---- Results (2.4): the outbox's sender --------------------------------------------- */

static void on_post(void *arg, const struct http_response *r)
{
    struct post *p = arg;
    struct orch *o = p->o;
    char text[320] = "";
    struct outbox_answer a = {.r = r, .text = text};
    if (!r->cancelled) {
        count_exchange(o, ORCH_EP_RESULT, r);
        if (r->status == 200 &&
            !unread_answer(o, BODYCAP_RESULT, r, "the result counts as delivered (200)"))
            a.ignored = o->dialect->parse_result_answer(r->body, r->len, text, sizeof(text));
    }
    p->done(p->arg, &a);
    free(p);
}

void *orch_post_result(struct orch *o, const char *record, size_t len, outbox_answer_fn done,
                       void *arg)
{
    struct post *p = xcalloc(1, sizeof(*p));
    char *wire = NULL, err[AVT_ERRLEN];
    size_t wlen = 0;
    struct rxon_worker w = worker_view(o);
    struct rxon_key key = signing_key(o);
    p->o = o;
    p->done = done;
    p->arg = arg;
    int rc = o->dialect->result_wire(&w, record, len, &key, &wire, &wlen, err, sizeof(err));
    if (rc < 0)
        log_err("result for %s cannot be encoded: %s; sending it as it is", o->url, err);
    else if (rc > 0)
        log_err("result for %s: %s", o->url, err);
    p->req = request(o, BODYCAP_RESULT, "POST", o->url_result, headers(o), wire ? wire : record,
                     wire ? wlen : len, REQUEST_TIMEOUT, on_post, p);
    free(wire);
    if (p->req == NULL) { /* only while the HTTP client is being destroyed */
        free(p);
        return NULL;
    }
    return p;
}

void orch_cancel_post(void *handle)
{
    struct post *p = handle;
    http_cancel(p->req); /* on_post runs now, with cancelled = 1, and frees p */
}

/* ---- Polling (2.2) ------------------------------------------------------------------------ */

static void maybe_poll(struct orch *o);

static void on_poll_task(struct orch *o, const struct http_response *r,
                         const struct plugin_set *polled_under)
{
    char err[AVT_ERRLEN];
    struct task *t = NULL;
    if (unread_answer(o, BODYCAP_POLL, r,
                      "the task is dropped and the orchestrator will time it out (raise "
                      "[orchestrator] max_task_bytes if tasks this large are expected)")) {
        o->stats.tasks_invalid++;
        return;
    }
    /* The shape and the cost of the tree, before jansson builds it. */
    if (bodycap_check_task(r->body, r->len, (size_t)o->cfg->max_task_bytes, err, sizeof(err)) < 0) {
        log_err("poll: %s answered a task of %zu bytes that is not read: %s; the orchestrator "
                "will time it out",
                o->url, r->len, err);
        o->stats.tasks_invalid++;
        return;
    }
    int valid = o->dialect->parse_task(r->body, r->len, &t, err, sizeof(err)) == 0;
    if (!valid)
        o->stats.tasks_invalid++;
    if (t == NULL) {
        log_err("poll: the orchestrator sent something that is not a task (%s); ignored", err);
        return;
    }
    if (!valid) {
        struct log_ctx ctx = {NULL, t->id, t->job_id, t->type};
        log_emit(LOG_ERR, &ctx, "invalid task payload (%s): answering INVALID_INPUT_ERROR", err);
    } else {
        o->stats.tasks_received++;
    }
    t->origin = o;
    o->env.hooks->task(o->env.arg, t, valid, polled_under);
}

/* Polls wait `delay` s after a failed one; /healthz and STATUS= say until
 * when, and why (orch_poll_pause_text). */
static void pause_polls(struct orch *o, const struct http_response *r, double delay)
{
    timer_after(o, &o->poll_timer, delay);
    o->poll_paused_until = now_wall() + delay;
    o->poll_pause_status = r->status;
    if (o->poll_failing_since == 0)
        o->poll_failing_since = now_mono();
}

/* How many polls may be in flight now. */
static int poll_cap(const struct orch *o)
{
    return o->poll_fanout < o->cfg->max_polls ? o->poll_fanout : o->cfg->max_polls;
}

static void on_poll(void *arg, const struct http_response *r)
{
    struct poll *p = arg;
    struct orch *o = p->o;
    const struct plugin_set *polled_under = p->plugins;
    p->req = NULL;
    p->plugins = NULL;
    if (--o->npolls == 0)
        ev_timer_stop(o->loop, &o->poll_hold_end);
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_POLL, r);
    if (r->status == 200 || r->status == 204) {
        backoff_reset(&o->poll_backoff);
        o->poll_failing_since = 0;
        /* A task says there may be more: fetch them with several polls. An
         * empty answer says the queue is empty: hold one. */
        o->poll_fanout = r->status == 200 ? POLLS_MAX : 1;
        if (r->status == 200)
            on_poll_task(o, r, polled_under);
        maybe_poll(o);
        return;
    }
    o->stats.polls_failed++;
    o->poll_fanout = 1;
    /* The polls sent beside this one fail alike: the first one decides
     * (pause, detection, registration), the others are only counted. */
    if (!o->registered || ev_is_active(&o->poll_timer))
        return;
    if (redetect(o, r, "poll"))
        return;
    pause_polls(o, r, orch_failure_delay(o, "poll", r, &o->poll_backoff, NULL));
}

/* Poll when this orchestrator may: alone, while a global slot is free for
 * each poll; with a scheduler, when it says so (orch_poll). */
static void maybe_poll(struct orch *o)
{
    if (o->sched != NULL) {
        o->sched(o->sched_arg);
        return;
    }
    while (orch_poll_state(o) == ORCH_POLL_READY && pool_free_slots(o->env.pool) > o->npolls) {
        int before = o->npolls;
        orch_poll(o);
        if (o->npolls == before)
            break;
    }
}

enum orch_poll_state orch_poll_state(struct orch *o)
{
    int healthy = o->registered && !o->draining && !ev_is_active(&o->poll_timer);
    /* may_poll: the spool is full (logged and counted by the spool) */
    if (healthy && o->env.hooks->may_poll != NULL)
        healthy = o->env.hooks->may_poll(o->env.arg);
    if (o->npolls > 0 && (!healthy || o->npolls >= poll_cap(o)))
        return ORCH_POLL_BUSY;
    return healthy ? ORCH_POLL_READY : ORCH_POLL_DOWN;
}

int orch_polls_in_flight(const struct orch *o)
{
    return o->npolls;
}

void orch_poll(struct orch *o)
{
    if (orch_poll_state(o) != ORCH_POLL_READY)
        return;
    struct poll *p = NULL;
    for (size_t i = 0; i < POLLS_MAX && p == NULL; i++)
        p = o->polls[i].req == NULL ? &o->polls[i] : NULL;
    if (p == NULL) /* cannot happen: max_polls <= POLLS_MAX (cfg.c) */
        return;
    p->o = o;
    p->plugins = o->plugins;
    p->sent = now_mono();
    p->req = request(o, BODYCAP_POLL, "GET", o->url_poll, headers(o), NULL, 0,
                     o->cfg->poll_timeout + POLL_MARGIN, on_poll, p);
    if (p->req == NULL) { /* only while the HTTP client is being destroyed */
        p->plugins = NULL;
        return;
    }
    o->stats.polls++;
    o->npolls++;
}

double orch_poll_hold_end(const struct orch *o)
{
    double last = 0;
    for (size_t i = 0; i < POLLS_MAX; i++) {
        if (o->polls[i].req != NULL && o->polls[i].sent > last)
            last = o->polls[i].sent;
    }
    return last > 0 ? last + o->cfg->poll_timeout : 0;
}

/* Give up every poll in flight (their on_poll runs now, cancelled). */
static void cancel_polls(struct orch *o)
{
    for (size_t i = 0; i < POLLS_MAX; i++) {
        if (o->polls[i].req != NULL)
            http_cancel(o->polls[i].req);
    }
}

/* While draining: the orchestrator has answered every poll it will by the
 * end of the last one's hold; the ones it still holds are given up
 * (ORCH_DRAIN_POLL_MARGIN). */
static void on_poll_hold_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct orch *o = w->data;
    if (o->npolls == 0)
        return;
    if (o->drain_known && now_mono() < orch_poll_hold_end(o))
        log_info("shutdown: %s knows this worker is draining and handed out no task since: "
                 "giving up %d long-poll%s",
                 o->url, o->npolls, o->npolls == 1 ? "" : "s");
    else
        log_notice("shutdown: %s has not answered %d long-poll%s %.0f s after the end of its "
                   "hold (poll_timeout = %g s, which must match its "
                   "WORKER_POLL_TIMEOUT_SECONDS): giving %s up",
                   o->url, o->npolls, o->npolls == 1 ? "" : "s", ORCH_DRAIN_POLL_MARGIN,
                   o->cfg->poll_timeout, o->npolls == 1 ? "it" : "them");
    cancel_polls(o);
}

static const char *pause_reason(long status, char *buf, size_t len)
{
    if (status == 429)
        return "the orchestrator asked to retry later (429)";
    if (status == 0)
        return "no answer from the orchestrator";
    if (status == 401 || status == 403)
        snprintf(buf, len, "the orchestrator refused the credentials (%ld)", status);
    else
        snprintf(buf, len, "the orchestrator answered %ld", status);
    return buf;
}

int orch_poll_pause_text(const struct orch_stats *st, char *out, size_t outlen)
{
    char when[32], why[64];
    struct tm tm;
    time_t t = (time_t)st->poll_paused_until; /* rounded up: "until" never too early */
    if ((double)t < st->poll_paused_until)
        t++;
    if (st->poll_paused_until <= 0 || gmtime_r(&t, &tm) == NULL)
        return 0;
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(out, outlen, "polling paused until %s (%s)", when,
             pause_reason(st->poll_pause_status, why, sizeof(why)));
    return 1;
}

int orch_poll_uses(const struct orch *o, const struct plugin_set *set)
{
    for (size_t i = 0; i < POLLS_MAX; i++) {
        if (o->polls[i].req != NULL && o->polls[i].plugins == set)
            return 1;
    }
    return 0;
}

static void on_poll_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct orch *o = w->data;
    o->poll_paused_until = 0;
    maybe_poll(o);
}

/* ---- Progress and events ------------------------------------------------------------------- */

static void on_event_answer(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    char text[320];
    if (r->cancelled || unread_answer(o, BODYCAP_EVENT, r, "the event counts as delivered"))
        return;
    if (r->status != 200) {
        rxon_answer_text(r->body, r->len, text, sizeof(text));
        log_warn("event: %s answered %ld: %s; the event is dropped", o->url, r->status, text);
    } else if (o->dialect->parse_event_answer(r->body, r->len, text, sizeof(text)) < 0) {
        log_warn("event: %s refused it: %s", o->url, text);
    }
}

/* An event body goes over the WebSocket when it is open, else (when the
 * dialect has an HTTP route for events) as a POST; otherwise it is dropped:
 * progress is advisory, and 1.0b3 has no HTTP progress endpoint (2.6). */
static int send_event(struct orch *o, json_t *body)
{
    struct rxon_key key = signing_key(o);
    int ws_open = o->ws != NULL && ws_is_open(o->ws);
    char *s = NULL, err[AVT_ERRLEN];
    size_t len;
    if (!ws_open && (o->url_events == NULL || !o->registered))
        return -ENOTCONN;
    if (o->dialect->encode(body, RXON_MSG_EVENT, &key, &s, &len, err, sizeof(err)) < 0) {
        log_warn("event: cannot encode it for %s: %s", o->url, err);
        return -EINVAL;
    }
    if (ws_open)
        ws_send_text(o->ws, s, len);
    else
        request(o, BODYCAP_EVENT, "POST", o->url_events, headers(o), s, len, REQUEST_TIMEOUT,
                on_event_answer, o);
    free(s);
    return 0;
}

void orch_task_progress(struct orch *o, const struct task *t, double percent, const char *message)
{
    if (o->dialect->progress_via == RXON_PROGRESS_WS_ONLY && (o->ws == NULL || !ws_is_open(o->ws)))
        return;
    struct rxon_worker w = worker_view(o);
    json_t *body = o->dialect->progress_body(&w, t, percent, message);
    send_event(o, body);
    json_decref(body);
}

int orch_speaks_events(const struct orch *o)
{
    return o->dialect->event_body != NULL;
}

int orch_task_event(struct orch *o, const struct task *t, const char *type, json_t *payload)
{
    if (o->dialect->event_body == NULL)
        return -ENOTSUP;
    struct rxon_worker w = worker_view(o);
    json_t *body = o->dialect->event_body(&w, t, type, payload);
    int rc = send_event(o, body);
    json_decref(body);
    return rc;
}

/* ---- WebSocket (2.6) ----------------------------------------------------------------------------
 */

static void ws_on_open(void *arg)
{
    struct orch *o = arg;
    o->stats.ws_connects++;
    backoff_reset(&o->ws_backoff);
    log_info("websocket connected to %s", o->url_ws);
}

static void ws_on_text(void *arg, const char *msg, size_t len)
{
    struct orch *o = arg;
    struct rxon_command cmd = {0};
    o->stats.ws_messages++;
    if (o->dialect->parse_ws_command(msg, len, &cmd)) {
        int n = cmd.task_id != NULL
                    ? ledger_cancel(o->env.ledger, o, RXON_CANCEL_TASK, cmd.task_id, "websocket")
                    : 0;
        if (n == 0 && cmd.job_id != NULL) /* by task id, else by job id (7, item 11) */
            ledger_cancel(o->env.ledger, o, RXON_CANCEL_JOB, cmd.job_id, "websocket");
    } else
        log_info("websocket: ignoring message %.*s", (int)(len < 200 ? len : 200), msg);
    rxon_command_clear(&cmd);
}

static void ws_on_close(void *arg, int code, const char *reason, int auth_failed)
{
    struct orch *o = arg;
    o->stats.ws_closes++;
    double d = backoff_next(&o->ws_backoff);
    char msg[AVT_ERRLEN];
    if (auth_failed && sts_after_refusal(o->sts))
        log_warn("websocket: %s refused the access token (%s): renewing it", o->url, reason);
    else if (tls_explain(CURLE_OK, reason, is_https(o), msg, sizeof(msg)) != TLS_FAIL_NONE)
        log_err("websocket: %s: %s; retrying in %.0f s", o->url_ws, msg, d);
    else if (auth_failed)
        log_err("websocket: the orchestrator refused this worker's credentials (%s): set "
                "WORKER_TOKEN to its GLOBAL_WORKER_TOKEN or this worker's individual token; "
                "retrying in %.0f s",
                reason, d);
    else
        log_warn("websocket closed (%d %s); reconnecting in %.1f s", code, reason, d);
    timer_after(o, &o->ws_timer, d);
}

static void start_ws(struct orch *o);

static void on_ws_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct orch *o = w->data;
    if (o->ws == NULL && o->registered)
        start_ws(o); /* dropped by build_headers: the token changed */
    else if (o->ws != NULL && !ws_is_open(o->ws))
        ws_connect(o->ws);
}

static void start_ws(struct orch *o)
{
    if (!o->cfg->websockets || o->ws != NULL)
        return;
    static const struct ws_callbacks cb = {ws_on_open, ws_on_text, ws_on_close};
    o->ws = ws_create(o->loop, o->http, o->url_ws, headers(o),
                      bodycap_limit(BODYCAP_WS, 0, o->cfg->max_concurrent_tasks), &cb, o);
    ws_connect(o->ws);
}

/* ---- Access tokens (1.2, 2.5, 4.10)
 * ----------------------------------------------------------------- */

static const char *const *sts_headers(void *arg)
{
    const struct orch *o = arg;
    return (const char *const *)o->static_headers;
}

static void sts_adopted(void *arg)
{
    build_headers(arg);
}

static void sts_first_done(void *arg)
{
    start_register(arg); /* with the token, or with the configured one */
}

static const struct sts_hooks sts_hooks = {sts_headers, sts_adopted, sts_first_done};

/* ---- Registration (2.1)
 * ------------------------------------------------------------------------------ */

static void registered(struct orch *o)
{
    log_notice("registered with %s as %s (%zu task types, %d slots)", o->url, o->cfg->worker_id,
               o->plugins->ntypes, o->cfg->max_concurrent_tasks);
    o->registered = 1;
    o->poll_failing_since = 0;
    o->told_busy = 0; /* the registration offered every type */
    sts_credential_ok(o->sts);
    o->stats.registrations++;
    backoff_reset(&o->register_backoff);
    start_ws(o);
    send_heartbeat(o, 0);
    maybe_poll(o);
    o->env.hooks->registered(o->env.arg, o);
}

static void on_register(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->register_req = NULL;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_REGISTER, r);
    char *warning = NULL;
    enum rxon_register_answer ans = RXON_REG_UNEXPECTED;
    if (r->status == 200 && !unread_answer(o, BODYCAP_REGISTER, r, "registering again"))
        ans = o->dialect->parse_register_answer(r->body, r->len, &warning);
    if (warning != NULL)
        log_warn("orchestrator: %s", warning);
    free(warning);
    if (ans == RXON_REG_OK) {
        registered(o);
        return;
    }
    double d;
    if (r->status == 200 && ans == RXON_REG_WRONG_VERSION) {
        o->stats.errors[ORCH_EP_REGISTER][ORCH_ERR_INVALID]++;
        d = backoff_next(&o->register_backoff);
        log_err("register: %s answered as another RXON version than %s (see the warning above): "
                "%s; trying again in %.1f s",
                o->url, o->dialect->version,
                o->protocol == CFG_PROTOCOL_AUTO
                    ? "detecting its protocol again"
                    : "set [orchestrator] protocol = auto, or the version it speaks",
                d);
        if (o->protocol == CFG_PROTOCOL_AUTO)
            o->detected = 0;
        timer_after(o, &o->register_timer, d);
        return;
    }
    if (redetect(o, r, "register"))
        return;
    if (r->status == 200) {
        o->stats.errors[ORCH_EP_REGISTER][ORCH_ERR_INVALID]++;
        log_warn("register: unexpected answer from %s", o->url);
        d = backoff_next(&o->register_backoff);
    } else {
        d = orch_failure_delay(o, "register", r, &o->register_backoff, NULL);
    }
    log_info("registering again in %.1f s", d);
    timer_after(o, &o->register_timer, d);
}

/* ---- Which protocol (PROTOCOL-1.0b14.md 4.2) ------------------------------------------------ */

static void set_dialect(struct orch *o, const struct rxon_dialect *d)
{
    o->dialect = d;
    free(o->url_events);
    o->url_events = d->path_events != NULL ? xasprintf("%s%s", o->url, d->path_events) : NULL;
    memset(&o->sync, 0, sizeof(o->sync));
    sts_set_dialect(o->sts, d);
    build_headers(o);
}

/* "1.0bN" -> N; -1 for anything else. */
static int beta_of(const char *v)
{
    char *end;
    if (v == NULL || strncmp(v, "1.0b", 4) != 0)
        return -1;
    long n = strtol(v + 4, &end, 10);
    return end != v + 4 && *end == '\0' && n > 0 && n < 1000 ? (int)n : -1;
}

static void detected(struct orch *o, const struct rxon_dialect *d, const char *how)
{
    set_dialect(o, d);
    o->detected = 1;
    backoff_reset(&o->detect_backoff);
    log_notice("%s speaks RXON %s (%s): using it", o->url, d->version, how);
    start_register(o);
}

static void detect_later(struct orch *o, const char *why)
{
    double d = backoff_next(&o->detect_backoff);
    log_warn("%s: %s; detecting its protocol again in %.1f s (or set [orchestrator] protocol)",
             o->url, why, d);
    timer_after(o, &o->register_timer, d);
}

static void on_detect(void *arg, const struct http_response *r);

static void detect_step(struct orch *o, int step)
{
    o->detect_step = step;
    if (step == 1) /* no credentials: nothing here can be refused or counted */
        o->detect_req = request(o, BODYCAP_DETECT, "GET", o->url_status, NULL, NULL, 0,
                                DETECT_TIMEOUT, on_detect, o);
    else
        o->detect_req = request(o, BODYCAP_DETECT, "POST", o->url_probe, NULL, NULL, 0,
                                DETECT_TIMEOUT, on_detect, o);
}

/* Step 1: the version header of /_public/status. */
static void detect_by_header(struct orch *o, const struct http_response *r)
{
    int n = beta_of(r->rxon_version);
    char why[160];
    if (n == 3)
        detected(o, &rxon_b3, "its X-RXON-Version");
    else if (n == 14)
        detected(o, &rxon_b14, "its X-RXON-Version");
    else if (n > 14) {
        log_warn("%s speaks RXON %s, newer than 1.0b14: speaking 1.0b14 to it (not tested with "
                 "that release)",
                 o->url, r->rxon_version);
        detected(o, &rxon_b14, "its X-RXON-Version");
    } else if (n > 3) {
        snprintf(why, sizeof(why),
                 "it speaks RXON %s, which this avtworkerd does not (it speaks 1.0b3 and 1.0b14)",
                 r->rxon_version);
        detect_later(o, why);
    } else {
        detect_step(o, 2);
    }
}

/* Step 2: POST /_worker/events without a token or a body: 1.0b14 parses
 * the body first (400), 1.0b3 has no such route (404). */
static void detect_by_events(struct orch *o, const struct http_response *r)
{
    char why[160];
    json_t *j = r->status == 400 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    int b14 = json_is_string(json_object_get(j, "error"));
    json_decref(j);
    if (b14)
        detected(o, &rxon_b14, "POST /_worker/events answered 400");
    else if (r->status == 404)
        detected(o, &rxon_b3, "POST /_worker/events answered 404");
    else {
        snprintf(why, sizeof(why), "cannot tell which protocol it speaks (%s)",
                 r->status == 0 ? (r->error ? r->error : "no answer") : "unexpected answers");
        detect_later(o, why);
    }
}

static void on_detect(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->detect_req = NULL;
    if (r->cancelled)
        return;
    if (r->status == 0) {
        /* No answer at all (refused, TLS, DNS): the registration failed, and
         * the operator needs the same message as for any request. */
        count_exchange(o, ORCH_EP_REGISTER, r);
        double d = orch_failure_delay(o, "register", r, &o->register_backoff, NULL);
        log_info("registering again in %.1f s", d);
        timer_after(o, &o->register_timer, d);
        return;
    }
    note_clock(o, r);
    if (r->status < 300)
        o->stats.last_ok = now_mono();
    if (o->detect_step == 1)
        detect_by_header(o, r);
    else
        detect_by_events(o, r);
}

static void start_register(struct orch *o)
{
    if (o->register_req != NULL || o->detect_req != NULL || ev_is_active(&o->register_timer))
        return;
    if (!o->detected) {
        detect_step(o, 1);
        return;
    }
    if (sts_begin(o->sts))
        return; /* registers when the token request is answered, whatever the answer */
    struct rxon_worker w = worker_view(o);
    json_t *body = o->dialect->register_body(&w, &o->sync);
    o->register_req =
        send_body(o, "POST", o->url_register, body, RXON_MSG_REGISTER, on_register, o);
    json_decref(body);
}

static void on_register_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    start_register(w->data);
}

/* ---- Life cycle
 * ------------------------------------------------------------------------------------------- */

static void set_backoffs(struct orch *o)
{
    double cap = o->cfg->retry_max_delay;
    backoff_init(&o->register_backoff, 0.5, cap);
    backoff_init(&o->poll_backoff, 0.5, cap);
    backoff_init(&o->hb_backoff, 0.5, cap);
    backoff_init(&o->ws_backoff, 1.0, cap);
    backoff_init(&o->detect_backoff, 1.0, cap);
}

static void init_timers(struct orch *o)
{
    ev_timer_init(&o->register_timer, on_register_timer, 0., 0.);
    ev_timer_init(&o->poll_timer, on_poll_timer, 0., 0.);
    ev_timer_init(&o->poll_hold_end, on_poll_hold_end, 0., 0.);
    ev_timer_init(&o->hb_periodic, on_hb_periodic, o->cfg->heartbeat_interval,
                  o->cfg->heartbeat_interval);
    ev_timer_init(&o->hb_debounce, on_hb_debounce, 0., 0.);
    ev_timer_init(&o->ws_timer, on_ws_timer, 0., 0.);
    o->register_timer.data = o->poll_timer.data = o->hb_periodic.data = o;
    o->poll_hold_end.data = o;
    o->hb_debounce.data = o->ws_timer.data = o;
}

static void build_urls(struct orch *o)
{
    const char *id = o->cfg->worker_id;
    o->url_register = xasprintf("%s" PATH_REGISTER, o->url);
    o->url_result = xasprintf("%s" PATH_RESULT, o->url);
    o->url_poll = xasprintf("%s/_worker/workers/%s/tasks/next", o->url, id);
    o->url_heartbeat = xasprintf("%s/_worker/workers/%s", o->url, id);
    o->url_ws = xasprintf("%s/_worker/ws/%s", o->url, id);
    o->url_status = xasprintf("%s" PATH_STATUS, o->url);
    o->url_probe = xasprintf("%s" PATH_PROBE, o->url);
}

struct orch *orch_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                         size_t index, const struct orch_env *env, const struct plugin_set *plugins)
{
    struct orch *o = xcalloc(1, sizeof(*o));
    const struct cfg_orch *e = index < cfg->norchs ? &cfg->orchs[index] : NULL;
    o->loop = loop;
    o->http = http;
    o->cfg = cfg;
    o->env = *env;
    o->plugins = plugins;
    o->dialect = &rxon_b3;
    o->name = xstrdup(e != NULL ? e->name : "default");
    o->url = xstrdup(e != NULL ? e->url : cfg->url);
    o->protocol = e != NULL ? e->protocol : cfg->protocol;
    o->detected = o->protocol != CFG_PROTOCOL_AUTO;
    o->clock_skew = NAN;
    o->poll_fanout = 1; /* more once a poll brings a task */
    build_urls(o);
    o->sts = sts_create(loop, http, o->url, cfg, &sts_hooks, o);
    /* Until it is detected, nothing is sent in a dialect (4.2). */
    set_dialect(o, o->protocol == CFG_PROTOCOL_1_0B14 ? &rxon_b14 : &rxon_b3);
    set_backoffs(o);
    init_timers(o);
    return o;
}

void orch_start(struct orch *o)
{
    o->started = 1;
    ev_timer_start(o->loop, &o->hb_periodic);
    start_register(o);
}

void orch_destroy(struct orch *o)
{
    if (o == NULL)
        return;
    ev_timer *timers[] = {&o->register_timer, &o->poll_timer, &o->hb_periodic,
                          &o->hb_debounce,    &o->ws_timer,   &o->poll_hold_end};
    for (size_t i = 0; i < ARRAY_LEN(timers); i++)
        ev_timer_stop(o->loop, timers[i]);
    sts_destroy(o->sts);
    if (o->register_req)
        http_cancel(o->register_req);
    cancel_polls(o);
    if (o->hb_req)
        http_cancel(o->hb_req);
    if (o->detect_req)
        http_cancel(o->detect_req);
    ws_destroy(o->ws);
    free_headers(o->headers);
    free_headers(o->static_headers);
    char *urls[] = {o->url_register, o->url_result, o->url_poll,    o->url_heartbeat,
                    o->url_ws,       o->url_events, o->url_status,  o->url_probe,
                    o->name,         o->url,        o->header_token};
    for (size_t i = 0; i < ARRAY_LEN(urls); i++)
        free(urls[i]);
    free(o);
}

void orch_drain(struct orch *o)
{
    if (o->draining)
        return;
    o->draining = 1;
    ev_timer_stop(o->loop, &o->poll_timer);
    o->poll_paused_until = 0;
    if (o->npolls > 0) {
        /* Aborting a long-poll can lose the task the orchestrator hands out
         * for it meanwhile (PROTOCOL.md 2.2): polls are let finish, and
         * given up only when they outlast their hold. */
        double left = orch_poll_hold_end(o) + ORCH_DRAIN_POLL_MARGIN - now_mono();
        log_notice("shutdown: letting %d long-poll%s to %s finish (the last hold ends within "
                   "%.0f s, or %.0f s after the orchestrator acknowledged that this worker "
                   "drains): aborting one could lose a task handed out meanwhile",
                   o->npolls, o->npolls == 1 ? "" : "s", o->url, left > 0 ? left : 0,
                   ORCH_DRAIN_POLL_GRACE);
        timer_after(o, &o->poll_hold_end, left);
    }
    /* Tell the orchestrator at once (3.6 "graceful leave"). */
    ev_timer_stop(o->loop, &o->hb_debounce);
    send_heartbeat(o, 0);
}

/* The last heartbeat ("offline"): after the one in flight, if any, which
 * may be the "draining" that must reach the orchestrator first. */
static void send_last_heartbeat(struct orch *o)
{
    o->left = 1;
    heartbeat_out(o, 0);
}

int orch_leave(struct orch *o)
{
    if (!o->dialect->final_offline || !o->registered || o->leaving)
        return 0;
    o->leaving = 1;
    if (o->hb_req == NULL)
        send_last_heartbeat(o); /* else on_heartbeat sends it */
    return 1;
}

int orch_leaving(const struct orch *o)
{
    return o->leaving && o->hb_req != NULL;
}

void orch_get_stats(const struct orch *o, struct orch_stats *st)
{
    *st = o->stats;
    st->registered = o->registered;
    st->draining = o->draining;
    st->sts_tokens = sts_tokens_obtained(o->sts);
    st->protocol = o->detected ? o->dialect->version : NULL;
    st->clock_skew = o->clock_skew;
    st->poll_paused_until = o->poll_paused_until;
    st->poll_pause_status = o->poll_pause_status;
    st->poll_failing_since = o->poll_failing_since;
}

/* ---- Reload
 * ------------------------------------------------------------------------------------------------
 */

/* 1 when both sets handle exactly the same types (the lists are sorted). */
static int same_types(const struct plugin_set *a, const struct plugin_set *b)
{
    if (a->ntypes != b->ntypes)
        return 0;
    for (size_t i = 0; i < a->ntypes; i++) {
        if (strcmp(a->types[i].type, b->types[i].type) != 0)
            return 0;
    }
    return 1;
}

/* Apply a reloaded configuration's WebSocket setting and token. */
static void reconfigure_ws(struct orch *o, int token_changed)
{
    if (o->ws != NULL && (!o->cfg->websockets || token_changed)) {
        ws_destroy(o->ws);
        o->ws = NULL;
        ev_timer_stop(o->loop, &o->ws_timer);
    }
    if (o->registered)
        start_ws(o);
}

/* The protocol this orchestrator's entry asks for in cfg (its own when the
 * entry is gone: orchset tells about a changed list). */
static int wanted_protocol(const struct orch *o, const struct cfg *cfg)
{
    for (size_t i = 0; i < cfg->norchs; i++) {
        if (strcmp(cfg->orchs[i].url, o->url) == 0)
            return cfg->orchs[i].protocol;
    }
    return cfg->norchs > 0 ? o->protocol : cfg->protocol;
}

void orch_reconfigure(struct orch *o, const struct cfg *cfg, const struct plugin_set *plugins)
{
    int want = wanted_protocol(o, cfg);
    if (want != o->protocol)
        log_warn("reload: %s: protocol changed to %s; it takes effect at the next restart (still "
                 "%s)",
                 o->name, cfg_protocol_name(want), cfg_protocol_name(o->protocol));
    char *old_token = o->header_token != NULL ? xstrdup(o->header_token) : NULL;
    int skills_changed = !same_types(o->plugins, plugins);
    o->cfg = cfg;
    o->plugins = plugins;
    sts_reconfigure(o->sts, cfg);
    build_headers(o); /* a token file is re-read by the reload's cfg_load */
    int token_changed = !same_str(old_token, o->header_token);
    free(old_token);
    set_backoffs(o);
    if (o->hb_periodic.repeat != cfg->heartbeat_interval) {
        o->hb_periodic.repeat = cfg->heartbeat_interval;
        if (o->started)
            ev_timer_again(o->loop, &o->hb_periodic);
    }
    reconfigure_ws(o, token_changed);
    if (skills_changed && o->registered && !o->draining && o->register_req == NULL) {
        log_notice("reload: the task types changed: registering them");
        ev_timer_stop(o->loop, &o->register_timer);
        start_register(o);
    }
    orch_heartbeat_soon(o);
}

/* ---- Identity and scheduling
 * ------------------------------------------------------------------------------------ */

const char *orch_name(const struct orch *o)
{
    return o->name;
}

const char *orch_url(const struct orch *o)
{
    return o->url;
}

void orch_set_scheduler(struct orch *o, void (*kick)(void *arg), void *arg)
{
    o->sched = kick;
    o->sched_arg = arg;
}
