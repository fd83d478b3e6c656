/*
 * orch.c - the worker side of the RXON 1.0b3 protocol (Avtomatika 1.0b13),
 * for one orchestrator. PROTOCOL.md is the contract; the section numbers in
 * comments refer to it.
 *
 * State machine, all on the loop thread:
 *
 *   unregistered --register 200--> registered --empty-body PATCH answers
 *        ^   |                         |          null (expired)----+
 *        |   +--error: backoff, retry  |                            |
 *        +-----------------------------+<---------------------------+
 *
 * While registered and not draining, one long-poll is outstanding whenever
 * the pool has a free global slot (Decision 5). Heartbeats go out every
 * heartbeat_interval and, rate-bounded by heartbeat_debounce, after every
 * state change; every probe_every-th periodic beat is the empty-body PATCH
 * that detects expiry (2.3). Results wait in the outbox until the
 * orchestrator answers 200 (Decision 3); failures pause result sending with
 * a jittered exponential backoff. Each endpoint backs off on its own, so a
 * 429 on polls does not stop heartbeats (1.3).
 */
#include "orch.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "cfg.h"
#include "http.h"
#include "journal.h"
#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "spool.h"
#include "taskstats.h"
#include "task.h"
#include "tls.h"
#include "util.h"
#include "ws.h"

#define RXON_VERSION "1.0b3"
#define PATH_REGISTER "/_worker/workers/register"
#define PATH_RESULT "/_worker/tasks/result"
#define PATH_STS "/_worker/auth/token"
#define STS_RENEW_AT 0.8 /* of expires_in, as SDK 1.0b7 (4.10) */
#define STS_RENEW_MIN 1.0
#define STS_401_SPACING 5.0 /* a 401 renews at most this often at first, then less */
#define RESULTS_IN_FLIGHT 8
#define PRECANCEL_SLOTS 64
#define PRECANCEL_TTL 600.0
#define REQUEST_TIMEOUT 30.0
#define RATE_LIMIT_PAUSE 61.0 /* the limiter's 60 s window must lapse (1.3) */
/* The long-poll's client timeout exceeds the server's hold by this much: a
 * poll given up early can lose the task the server pops for it (2.2), so
 * err on the side of a busy orchestrator answering late. */
#define POLL_MARGIN 15.0

struct backoff {
    double base, cap, cur;
};

struct result {
    char *task_id;
    char *job_id;
    char *type; /* for log lines; NULL when replayed from the spool */
    char *body;
    size_t len;
    int attempts;
    int holds_slot;         /* the task's global slot is given back on delivery */
    unsigned long long seq; /* its spool record; 0 = in memory only */
    double created;         /* when it was spooled (wall clock) */
    int uncommitted;        /* appended to the spool, not yet durable: not sent */
    struct http_req *req;
    struct orch *o;
    struct result *next;
};

struct precancel {
    char *task_id;
    double at;
};

struct orch {
    struct ev_loop *loop;
    struct http *http;
    const struct cfg *cfg;
    struct pool *pool;
    const struct plugin_set *plugins;

    char *name, *url; /* this orchestrator: its cfg_orch name and base URL */
    char *url_poll, *url_heartbeat, *url_register, *url_result, *url_ws, *url_sts;
    char *header_token;       /* the token in `headers`, to notice a change */
    void (*sched)(void *arg); /* decides when to poll (orchset); NULL: poll itself */
    void *sched_arg;
    void (*state_hook)(void *arg); /* see orch_set_state_hook() */
    void *state_hook_arg;

    /* STS access token (1.2, 2.5): only with a client certificate. */
    char *sts_token;
    struct http_req *sts_req;
    ev_timer sts_timer; /* renewal, or the retry after a failure */
    struct backoff sts_backoff, sts_401_backoff;
    double sts_401_after; /* a 401 may trigger a renewal again from then on */
    int sts_tried;        /* the first attempt, made before registering, is over */
    char **headers;       /* NULL-terminated "Name: value" */

    int registered;
    int draining;
    int started;
    struct http_req *register_req;
    ev_timer register_timer;
    struct backoff register_backoff;

    struct http_req *poll_req;
    /* The plugins the poll in flight was sent under: a reload may retire
     * them before its answer arrives (orch_uses_plugins counts it). */
    const struct plugin_set *poll_plugins;
    ev_timer poll_timer; /* pause after a failed poll */
    struct backoff poll_backoff;

    struct http_req *hb_req;
    int hb_probe; /* the in-flight heartbeat is the empty-body probe */
    int hb_again; /* a state change happened while one was in flight */
    unsigned long beats;
    ev_timer hb_periodic;
    ev_timer hb_debounce;
    double hb_paused_until;
    struct backoff hb_backoff;

    struct ws *ws;
    ev_timer ws_timer;
    struct backoff ws_backoff;

    struct task **active; /* tasks in the pool */
    int nactive, active_cap;
    /* Tasks given up on (orch_abandon): their failure is reported, their
     * handler still runs and owns them; the DONE is dropped. */
    struct task **abandoned;
    int nabandoned, abandoned_cap;
    struct pool_thread_info *threads; /* orch_supervise()'s snapshot buffer */
    size_t nthreads;

    /* The outbox: every undelivered result, oldest first. With a spool
     * (orch_set_durable) each is appended to it, sent only after the
     * spool_commit() that made it durable (orch_flush: one fdatasync per
     * batch of results), and acknowledged in it on the 200. */
    struct result *outbox, *outbox_tail;
    struct spool *spool;
    int uncommitted; /* results in the outbox waiting for orch_flush() */
    struct journal *journal;
    double results_hold_until; /* now_mono() before which no result is sent */
    int results_in_flight;
    ev_timer result_timer;
    int results_paused;
    struct backoff result_backoff;

    json_t *hot_cache; /* array of strings */
    struct precancel precancel[PRECANCEL_SLOTS];
    int told_rate_limit, told_auth;

    struct orch_stats stats;

    struct taskstats *taskstats; /* shared by all orchestrators; NULL: none */
};

/* ---- small helpers ---- */

static double backoff_next(struct backoff *b)
{
    double d = b->cur;
    b->cur = b->cur * 2 > b->cap ? b->cap : b->cur * 2;
    /* Full jitter on the upper half: spreads a fleet of workers apart. */
    return d * (0.5 + 0.5 * ((double)random() / (double)RAND_MAX));
}

static void backoff_reset(struct backoff *b)
{
    b->cur = b->base;
}

static void backoff_init(struct backoff *b, double base, double cap)
{
    b->base = base;
    b->cap = cap < base ? base : cap;
    b->cur = base;
}

static void timer_after(struct orch *o, ev_timer *w, double delay)
{
    ev_timer_stop(o->loop, w);
    ev_timer_set(w, delay < 0 ? 0 : delay, 0.);
    ev_timer_start(o->loop, w);
}

static char *dump_compact(json_t *j, size_t *lenp)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (s == NULL)
        abort(); /* jansson only fails on OOM here */
    if (lenp != NULL)
        *lenp = strlen(s);
    return s;
}

/* ---- reading the orchestrator's answers (pure; exposed in orch.h) ---- */

void orch_answer_text(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *e = j != NULL ? json_string_value(json_object_get(j, "error")) : NULL;
    if (e != NULL) {
        snprintf(out, outlen, "%s", e);
    } else {
        size_t n = len < 120 ? len : 120;
        snprintf(out, outlen, "%.*s%s", (int)n, body, len > n ? "..." : "");
        for (char *p = out; *p; p++) {
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        }
    }
    json_decref(j);
}

enum orch_hb_answer orch_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                orch_cancel_fn on_cancel, void *arg)
{
    enum orch_hb_answer rc = ORCH_HB_OK;
    json_t *j = json_loadb(body, len, JSON_DECODE_ANY, NULL);
    if (probe && (j == NULL || json_is_null(j))) {
        rc = ORCH_HB_EXPIRED; /* the only reliable "you expired" signal (2.3, 3.6) */
    } else if (json_is_object(j)) {
        json_t *ids = json_object_get(j, "cancel_task_ids");
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v)
        {
            if (json_is_string(v))
                on_cancel(arg, json_string_value(v));
        }
    } else if (!probe) {
        rc = ORCH_HB_UNEXPECTED;
    }
    json_decref(j);
    return rc;
}

int orch_parse_register_answer(const char *body, size_t len, char **warning)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    const char *w = json_string_value(json_object_get(j, "warning"));
    int ok = status != NULL && strcmp(status, "registered") == 0;
    *warning = ok && w != NULL ? xstrdup(w) : NULL;
    json_decref(j);
    return ok;
}

int orch_parse_result_answer(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    int ignored = status != NULL && strcmp(status, "ignored") == 0;
    if (ignored) {
        const char *reason = json_string_value(json_object_get(j, "reason"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        snprintf(out, outlen, "%s (%s)", reason ? reason : "no reason", msg ? msg : "");
    } else {
        const char *tr = json_string_value(json_object_get(j, "transition"));
        snprintf(out, outlen, "%s", tr ? tr : status ? status : "200");
    }
    json_decref(j);
    return ignored;
}

char *orch_parse_ws_command(const char *msg, size_t len)
{
    json_t *j = json_loadb(msg, len, 0, NULL);
    const char *cmd = json_string_value(json_object_get(j, "command"));
    const char *id = json_string_value(json_object_get(j, "task_id"));
    char *task_id =
        cmd != NULL && strcmp(cmd, "cancel_task") == 0 && id != NULL ? xstrdup(id) : NULL;
    json_decref(j);
    return task_id;
}

/* The server's {"error": "..."} text, or a short excerpt of the body. */
static void answer_text(const struct http_response *r, char *out, size_t outlen)
{
    orch_answer_text(r->body, r->len, out, outlen);
}

/*
 * Log a failed exchange and return how long that endpoint should pause.
 * 401 names the token settings; 429 honours Retry-After, else waits out
 * the limiter's window, and tells the operator once how to fix it.
 */
static int sts_after_401(struct orch *o);

static int is_https(const struct orch *o)
{
    return strncasecmp(o->url, "https://", 8) == 0;
}

static double failure_delay_ctx(struct orch *o, const char *what, const struct http_response *r,
                                struct backoff *b, const struct log_ctx *ctx)
{
    char text[160];
    if (r->status == 0) {
        char msg[AVT_ERRLEN];
        if (tls_explain(r->curl_code, r->error, is_https(o), msg, sizeof(msg)) != TLS_FAIL_NONE)
            log_emit(LOG_ERR, ctx, "%s: %s: %s", what, o->url, msg);
        else
            log_emit(LOG_WARNING, ctx, "%s: %s: %s", what, o->url,
                     r->error ? r->error : "transport error");
        return backoff_next(b);
    }
    answer_text(r, text, sizeof(text));
    if (r->status == 401 && sts_after_401(o)) {
        log_emit(LOG_WARNING, ctx, "%s: %s answered 401 (%s): renewing the access token", what,
                 o->url, text);
        double d = backoff_next(b);
        return d < 1 ? 1 : d;
    }
    if (r->status == 401 || r->status == 403) {
        log_emit(LOG_ERR, ctx,
                 "%s: the orchestrator refused this worker's credentials (%ld %s): set "
                 "WORKER_TOKEN (or [orchestrator] token/token_file) to the orchestrator's "
                 "GLOBAL_WORKER_TOKEN, or to this worker's individual token from its workers.toml",
                 what, r->status, text);
        o->told_auth = 1;
        double d = backoff_next(b);
        return d < 5 ? 5 : d;
    }
    if (r->status == 429) {
        if (!o->told_rate_limit) {
            log_emit(
                LOG_WARNING, ctx,
                "%s: the orchestrator's rate limiter answered 429. Avtomatika 1.0b13's limiter "
                "locks out normally behaving workers (its window re-arms on every request): "
                "set RATE_LIMITING_ENABLED=false on the orchestrator, or raise "
                "RATE_LIMIT_LIMIT and RATE_LIMIT_POLL_LIMIT",
                what);
            o->told_rate_limit = 1;
        }
        if (r->retry_after >= 0)
            return r->retry_after;
        return RATE_LIMIT_PAUSE + 5.0 * ((double)random() / (double)RAND_MAX);
    }
    if (r->too_large)
        log_emit(LOG_WARNING, ctx, "%s: answer %ld larger than the body limit, ignored", what,
                 r->status);
    else
        log_emit(LOG_WARNING, ctx, "%s: orchestrator answered %ld: %s", what, r->status, text);
    return backoff_next(b);
}

static double failure_delay(struct orch *o, const char *what, const struct http_response *r,
                            struct backoff *b)
{
    return failure_delay_ctx(o, what, r, b, NULL);
}

/* ---- metrics ---- */

/* Count a completed exchange with endpoint `ep` (not a cancelled one). */
static void count_exchange(struct orch *o, enum orch_endpoint ep, const struct http_response *r)
{
    enum orch_error_kind kind;
    o->stats.requests[ep]++;
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

/* A finished task: its outcome and handler run time. */
static void record_task(struct orch *o, const struct task *t)
{
    const char *code = t->outcome == TASK_OUTCOME_FAILURE ? t->err_code : NULL;
    taskstats_outcome(o->taskstats, t->type, t->status, code);
    if (t->t_started > 0) /* else it never ran: a poison task, say */
        taskstats_duration(o->taskstats, t->type, t->t_finished - t->t_started);
}

/* ---- requests ---- */

static int same_token(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static struct http_req *post_json(struct orch *o, const char *method, const char *url, json_t *body,
                                  double timeout, http_done_fn done, void *arg)
{
    size_t len = 0;
    char *s = body != NULL ? dump_compact(body, &len) : NULL;
    struct http_req *r = http_request(o->http, method, url, (const char *const *)o->headers, s, len,
                                      timeout, done, arg);
    free(s);
    return r;
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

/* The X-Worker-Token: the STS access token, else this orchestrator's own
 * token, else the global one. */
static const char *current_token(const struct orch *o)
{
    const struct cfg_orch *e = my_entry(o);
    if (o->sts_token != NULL)
        return o->sts_token;
    return e != NULL && e->token != NULL ? e->token : o->cfg->token;
}

/* (Re)build the headers every request copies; a WebSocket that is not
 * open picks them up at its next connect, an open one keeps its session. */
static void build_headers(struct orch *o)
{
    int n = 0;
    const char *token = current_token(o);
    for (char **h = o->headers; h != NULL && *h; h++)
        free(*h);
    free(o->headers);
    o->headers = xcalloc(4, sizeof(char *));
    if (token != NULL)
        o->headers[n++] = xasprintf("X-Worker-Token: %s", token);
    if (o->ws != NULL && !ws_is_open(o->ws) && !same_token(o->header_token, token)) {
        ws_destroy(o->ws);
        o->ws = NULL;
        if (o->registered && o->cfg->websockets)
            timer_after(o, &o->ws_timer, 0);
    }
    free(o->header_token);
    o->header_token = token != NULL ? xstrdup(token) : NULL;
    o->headers[n++] = xstrdup("X-RXON-Version: " RXON_VERSION);
    o->headers[n++] = xstrdup("Content-Type: application/json");
    o->headers[n] = NULL;
}

/* ---- active tasks ---- */

static struct task *active_find(struct orch *o, const char *task_id)
{
    for (int i = 0; i < o->nactive; i++) {
        if (strcmp(o->active[i]->id, task_id) == 0)
            return o->active[i];
    }
    return NULL;
}

static void active_add(struct orch *o, struct task *t)
{
    if (o->nactive == o->active_cap) {
        o->active_cap = o->active_cap ? o->active_cap * 2 : 16;
        o->active = xrealloc(o->active, (size_t)o->active_cap * sizeof(*o->active));
    }
    o->active[o->nactive++] = t;
}

static void active_remove(struct orch *o, struct task *t)
{
    for (int i = 0; i < o->nactive; i++) {
        if (o->active[i] == t) {
            o->active[i] = o->active[--o->nactive];
            return;
        }
    }
}

/* A cancel for a task that has not arrived yet is remembered (README quirk
 * 6): when the task comes, it is answered "cancelled" without running. */
static void precancel_add(struct orch *o, const char *task_id)
{
    int slot = 0;
    for (int i = 0; i < PRECANCEL_SLOTS; i++) {
        if (o->precancel[i].task_id == NULL) {
            slot = i;
            break;
        }
        if (o->precancel[i].at < o->precancel[slot].at)
            slot = i;
    }
    free(o->precancel[slot].task_id);
    o->precancel[slot].task_id = xstrdup(task_id);
    o->precancel[slot].at = now_mono();
}

static int precancel_take(struct orch *o, const char *task_id)
{
    double now = now_mono();
    for (int i = 0; i < PRECANCEL_SLOTS; i++) {
        struct precancel *p = &o->precancel[i];
        if (p->task_id == NULL)
            continue;
        if (now - p->at > PRECANCEL_TTL) {
            free_and_null(p->task_id);
            continue;
        }
        if (strcmp(p->task_id, task_id) == 0) {
            free_and_null(p->task_id);
            return 1;
        }
    }
    return 0;
}

static void cancel_by_id(struct orch *o, const char *task_id, const char *source)
{
    struct task *t = active_find(o, task_id);
    if (t == NULL) {
        struct log_ctx ctx = {NULL, task_id, NULL, NULL};
        log_emit(LOG_INFO, &ctx,
                 "cancel from %s for task %s, which is not running here: remembered", source,
                 task_id);
        precancel_add(o, task_id);
        return;
    }
    struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
    log_emit(LOG_NOTICE, &ctx, "cancel requested by the orchestrator (%s)", source);
    pool_cancel(o->pool, t, TASK_CANCEL_ORCHESTRATOR);
}

/* ---- heartbeats (2.3) ---- */

static void send_heartbeat(struct orch *o, int periodic);

static json_t *heartbeat_body(struct orch *o)
{
    json_t *skills = json_array(), *current = json_array();
    int free_slots = pool_free_slots(o->pool);
    const struct plugin_set *ps = o->plugins;
    for (size_t i = 0; !o->draining && i < ps->ntypes; i++) {
        const char *type = ps->types[i].type;
        if (!o->cfg->advertise_busy || (free_slots > 0 && pool_type_has_room(o->pool, type)))
            json_array_append_new(skills, json_string(type));
    }
    /* Only ids equal to their job id can be looked up by the orchestrator;
     * parallel-branch ids would always come back as "cancel" (3.7). */
    for (int i = 0; i < o->nactive; i++) {
        if (strcmp(o->active[i]->id, o->active[i]->job_id) == 0)
            json_array_append_new(current, json_string(o->active[i]->id));
    }
    const char *status = o->draining ? "offline" : json_array_size(skills) > 0 ? "idle" : "busy";
    return json_pack("{s:s, s:s, s:f, s:o, s:o, s:O}", "worker_id", o->cfg->worker_id, "status",
                     status, "load", (double)o->nactive, "current_tasks", current,
                     "supported_skills", skills, "hot_cache", o->hot_cache);
}

/* One entry of a heartbeat answer's cancel_task_ids. */
static void heartbeat_cancel(void *arg, const char *id)
{
    struct orch *o = arg;
    struct task *t = active_find(o, id);
    if (t == NULL)
        return; /* finished meanwhile, or not ours */
    if (strcmp(t->id, t->job_id) != 0) {
        log_debug("ignoring cancel_task_ids entry %s: a parallel-branch id (3.7)", id);
        return;
    }
    cancel_by_id(o, id, "heartbeat");
}

static void start_register(struct orch *o);

static void on_heartbeat(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    int probe = o->hb_probe;
    o->hb_req = NULL;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_HEARTBEAT, r);
    if (r->status != 200) {
        o->stats.heartbeats_failed++;
        double d = failure_delay(o, probe ? "heartbeat (probe)" : "heartbeat", r, &o->hb_backoff);
        o->hb_paused_until = now_mono() + d;
        return;
    }
    backoff_reset(&o->hb_backoff);
    backoff_reset(&o->sts_401_backoff);
    o->hb_paused_until = 0;
    enum orch_hb_answer ans =
        orch_parse_heartbeat_answer(r->body, r->len, probe, heartbeat_cancel, o);
    if (ans == ORCH_HB_EXPIRED && o->registered) {
        log_warn("the orchestrator no longer knows worker %s (heartbeat answered null): "
                 "registering again",
                 o->cfg->worker_id);
        o->registered = 0;
        start_register(o);
    } else if (ans == ORCH_HB_UNEXPECTED) {
        o->stats.errors[ORCH_EP_HEARTBEAT][ORCH_ERR_INVALID]++;
        log_warn("heartbeat: unexpected answer ignored");
    }
    if (o->hb_again) {
        o->hb_again = 0;
        send_heartbeat(o, 0);
    }
}

static void send_heartbeat(struct orch *o, int periodic)
{
    if (!o->registered)
        return;
    if (o->hb_req != NULL) {
        o->hb_again = 1;
        return;
    }
    if (now_mono() < o->hb_paused_until)
        return;
    int probe = periodic && o->cfg->probe_every > 0 && ++o->beats % o->cfg->probe_every == 0;
    json_t *body = probe ? NULL : heartbeat_body(o);
    o->hb_probe = probe;
    o->stats.heartbeats++;
    o->hb_req = post_json(o, "PATCH", o->url_heartbeat, body, REQUEST_TIMEOUT, on_heartbeat, o);
    json_decref(body);
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

/* A state change: one heartbeat heartbeat_debounce from now (at most one
 * per debounce interval, so a busy worker does not flood the orchestrator). */
void orch_heartbeat_soon(struct orch *o)
{
    if (!o->registered || ev_is_active(&o->hb_debounce))
        return;
    timer_after(o, &o->hb_debounce, o->cfg->heartbeat_debounce);
}

/* The pool is shared: a state change is news for every orchestrator. */
static void heartbeat_soon(struct orch *o)
{
    if (o->state_hook != NULL)
        o->state_hook(o->state_hook_arg);
    else
        orch_heartbeat_soon(o);
}

/* ---- results (2.4) ---- */

static void send_results(struct orch *o);

static void result_free(struct result *res)
{
    free(res->task_id);
    free(res->job_id);
    free(res->type);
    free(res->body);
    free(res);
}

static void outbox_unlink(struct orch *o, struct result *res)
{
    struct result **pp = &o->outbox, *prev = NULL;
    while (*pp != NULL && *pp != res) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = res->next;
    if (o->outbox_tail == res)
        o->outbox_tail = prev;
}

static void log_result_answer(struct result *res, const struct http_response *r)
{
    char text[320];
    struct log_ctx ctx = {NULL, res->task_id, res->job_id, res->type};
    if (orch_parse_result_answer(r->body, r->len, text, sizeof(text)))
        log_emit(LOG_WARNING, &ctx, "result ignored by the orchestrator: %s", text);
    else if (log_level >= LOG_DEBUG)
        log_emit(LOG_DEBUG, &ctx, "result delivered (%s)", text);
}

/*
 * A task's global slot is given back once its result is delivered, so that
 * the orchestrator never sees a poll while, from its side, every slot still
 * holds a task. If the first attempt fails the slot is given back anyway:
 * the result waits in the outbox, and capacity must not depend on an
 * orchestrator that is down.
 */
static void result_release_slot(struct orch *o, struct result *res)
{
    if (!res->holds_slot)
        return;
    res->holds_slot = 0;
    pool_release(o->pool);
    orch_capacity_changed(o);
}

/* A spool view of a result (borrowed strings) for spool.c. */
static struct spool_record result_view(struct orch *o, struct result *res)
{
    return (struct spool_record){res->seq,  o->url,   res->task_id, res->job_id,
                                 res->body, res->len, res->created};
}

/* Delivered: remove its spool file; leaving a full spool resumes polling. */
static void result_unspool(struct orch *o, struct result *res)
{
    if (o->spool == NULL || res->seq == 0)
        return;
    int was_full = spool_is_full(o->spool);
    struct spool_record v = result_view(o, res);
    spool_remove(o->spool, &v);
    res->seq = 0;
    if (was_full && !spool_is_full(o->spool))
        orch_capacity_changed(o);
}

/* Drop the results older than [spool] max_age that are not being sent. */
static void outbox_expire(struct orch *o)
{
    double now = now_wall();
    for (struct result *res = o->outbox, *next; o->spool != NULL && res != NULL; res = next) {
        next = res->next;
        struct spool_record v = result_view(o, res);
        if (res->req != NULL || res->seq == 0 || !spool_expire(o->spool, &v, now))
            continue;
        outbox_unlink(o, res);
        result_release_slot(o, res);
        result_free(res);
        o->stats.results_pending--;
    }
}

static void on_result(void *arg, const struct http_response *r)
{
    struct result *res = arg;
    struct orch *o = res->o;
    res->req = NULL;
    o->results_in_flight--;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_RESULT, r);
    if (r->status == 200) {
        /* accepted or ignored: delivered either way (Decision 3). */
        log_result_answer(res, r);
        outbox_unlink(o, res);
        result_unspool(o, res);
        result_release_slot(o, res);
        result_free(res);
        o->stats.results_sent++;
        o->stats.results_pending--;
        backoff_reset(&o->result_backoff);
        send_results(o);
        return;
    }
    res->attempts++;
    o->stats.results_failed++;
    result_release_slot(o, res);
    char what[160];
    snprintf(what, sizeof(what), "result of task %s (attempt %d)", res->task_id, res->attempts);
    struct log_ctx ctx = {NULL, res->task_id, res->job_id, res->type};
    double d = failure_delay_ctx(o, what, r, &o->result_backoff, &ctx);
    if (!o->results_paused) {
        o->results_paused = 1;
        timer_after(o, &o->result_timer, d);
    }
}

static void send_results(struct orch *o)
{
    if (o->results_paused)
        return;
    double hold = o->results_hold_until - now_mono();
    if (hold > 0) {
        o->results_paused = 1;
        timer_after(o, &o->result_timer, hold);
        return;
    }
    for (struct result *res = o->outbox; res != NULL; res = res->next) {
        if (o->results_in_flight >= RESULTS_IN_FLIGHT)
            return;
        if (res->req != NULL || res->uncommitted)
            continue;
        res->req = http_request(o->http, "POST", o->url_result, (const char *const *)o->headers,
                                res->body, res->len, REQUEST_TIMEOUT, on_result, res);
        o->results_in_flight++;
    }
}

static void on_result_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct orch *o = w->data;
    o->results_paused = 0;
    outbox_expire(o);
    send_results(o);
}

static void outbox_link(struct orch *o, struct result *res);

/* Queue a result body (borrowed) for task t (its ids and type are copied). */
static void outbox_push(struct orch *o, json_t *body, const struct task *t, int holds_slot)
{
    struct result *res = xcalloc(1, sizeof(*res));
    res->holds_slot = holds_slot;
    res->body = dump_compact(body, &res->len);
    res->task_id = xstrdup(t->id);
    res->job_id = xstrdup(t->job_id);
    res->type = t->type != NULL ? xstrdup(t->type) : NULL;
    res->created = now_wall();
    res->o = o;
    if (o->spool != NULL) {
        /* Durable before the first send: appended now, sent after the
         * commit in orch_flush(). On a disk error spool_write has logged
         * it and the result is kept in memory only. */
        struct spool_record v = result_view(o, res);
        if (spool_write(o->spool, &v) == 0) {
            res->seq = v.seq;
            res->uncommitted = 1;
            o->uncommitted++;
        }
    }
    outbox_link(o, res);
}

void orch_flush(struct orch *o)
{
    if (o->uncommitted == 0)
        return;
    /* A failed commit has been logged; the results are sent anyway (kept
     * in memory), as after a failed write. */
    spool_commit(o->spool);
    for (struct result *res = o->outbox; res != NULL; res = res->next)
        res->uncommitted = 0;
    o->uncommitted = 0;
    send_results(o);
}

static void outbox_link(struct orch *o, struct result *res)
{
    if (o->outbox_tail != NULL)
        o->outbox_tail->next = res;
    else
        o->outbox = res;
    o->outbox_tail = res;
    o->stats.results_pending++;
    send_results(o);
}

static void outbox_add(struct orch *o, struct task *t, int holds_slot)
{
    json_t *body = task_result_json(t, o->cfg->worker_id);
    outbox_push(o, body, t, holds_slot);
    json_decref(body);
}

/* ---- tasks given up on ---- */

static int abandoned_index(const struct orch *o, const struct task *t)
{
    for (int i = 0; i < o->nabandoned; i++) {
        if (o->abandoned[i] == t)
            return i;
    }
    return -1;
}

static int active_has(const struct orch *o, const struct task *t)
{
    for (int i = 0; i < o->nactive; i++) {
        if (o->active[i] == t)
            return 1;
    }
    return 0;
}

/*
 * The DONE of a task given up on: its result was already sent, so this one
 * is dropped; its thread and its global slot (held until now, because the
 * thread was busy) come back. Returns 1 when t was such a task.
 */
static int abandoned_take(struct orch *o, struct task *t)
{
    int i = abandoned_index(o, t);
    if (i < 0)
        return 0;
    o->abandoned[i] = o->abandoned[--o->nabandoned];
    taskstats_duration(o->taskstats, t->type, t->t_finished - t->t_started);
    struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
    log_emit(LOG_NOTICE, &ctx,
             "handler given up on returned after %.1f s: its thread is free again "
             "(its outcome was not sent: the failure already was)",
             t->t_finished - t->t_started);
    journal_task_finished(o->journal, t);
    task_destroy(t);
    pool_release(o->pool);
    orch_capacity_changed(o);
    return 1;
}

/* A failure result built only from the ids, which never change while the
 * task exists: the worker thread may still be writing the rest. */
static void outbox_add_failure(struct orch *o, const struct task *t, const char *code,
                               const char *message)
{
    json_t *body = json_pack("{s:s, s:s, s:s, s:s, s:n, s:{s:s, s:s}, s:n}", "job_id", t->job_id,
                             "task_id", t->id, "worker_id", o->cfg->worker_id, "status", "failure",
                             "data", "error", "code", code, "message", message, "data_metadata");
    if (body == NULL)
        abort(); /* the ids are valid UTF-8 (task_parse): only OOM fails here */
    outbox_push(o, body, t, 0);
    json_decref(body);
}

/* ---- polling (2.2) ---- */

static void maybe_poll(struct orch *o);

/* A polled task answered with a failure without running: counted, spooled
 * and sent at once. The caller still owns t. */
static void answer_unrun(struct orch *o, struct task *t, const char *code, const char *message)
{
    task_set_failure(t, code, "%s", message);
    record_task(o, t);
    outbox_add(o, t, 0);
    orch_flush(o);
}

static void accept_task(struct orch *o, struct task *t)
{
    struct log_ctx ctx = {NULL, t->id, t->job_id, t->type};
    if (active_find(o, t->id) != NULL) {
        /* The orchestrator re-dispatched a task that still runs here (an
         * execution timeout, 3.4): its running copy answers for both. */
        log_emit(LOG_WARNING, &ctx, "task delivered again while still running: not run twice");
        task_destroy(t);
        return;
    }
    t->plugin = plugin_set_find(o->plugins, t->type);
    if (t->plugin == NULL && o->poll_plugins != o->plugins && o->poll_plugins != NULL) {
        /* Handed out before a reload removed its plugin, which stays
         * loaded until this task ends: run it rather than refuse it. */
        t->plugin = plugin_set_find(o->poll_plugins, t->type);
        if (t->plugin != NULL)
            log_emit(LOG_NOTICE, &ctx,
                     "task polled before the reload: run with plugin %s of the "
                     "previous configuration",
                     t->plugin->name);
    }
    t->origin = o;
    if (journal_is_poisoned(o->journal, t->id)) {
        log_emit(LOG_CRIT, &ctx,
                 "a task that crashed the worker crash_limit times was delivered "
                 "again: failing it permanently without running it");
        answer_unrun(o, t, AVT_PERMANENT_ERROR, "worker crashed in handler");
        task_destroy(t);
        return;
    }
    if (precancel_take(o, t->id))
        task_cancel(t, TASK_CANCEL_ORCHESTRATOR);
    t->t_received = now_mono();
    /* Journaled before the pool can start it (journal.c explains why the
     * "started" record is the worker thread's). */
    journal_task_accepted(o->journal, t, o->url);
    if (pool_submit(o->pool, t) < 0) {
        /* Cannot happen: we poll only with a free slot. Keep the task's
         * result rather than lose it. */
        log_emit(LOG_ERR, &ctx, "no free slot for a polled task (bug): failing it transiently");
        answer_unrun(o, t, AVT_TRANSIENT_ERROR, "worker had no free slot");
        journal_task_finished(o->journal, t);
        task_destroy(t);
        return;
    }
    active_add(o, t);
    o->stats.tasks_received++;
    log_emit(LOG_DEBUG, &ctx, "task accepted");
    heartbeat_soon(o);
}

static void on_poll_task(struct orch *o, const struct http_response *r)
{
    char err[AVT_ERRLEN];
    struct task *t = NULL;
    if (r->too_large) {
        log_err("poll: a task larger than the body limit was dropped; the orchestrator will time "
                "it out");
        o->stats.tasks_invalid++;
        return;
    }
    if (task_parse(r->body, r->len, &t, err, sizeof(err)) == 0) {
        accept_task(o, t);
        return;
    }
    o->stats.tasks_invalid++;
    if (t == NULL) {
        log_err("poll: the orchestrator sent something that is not a task (%s); ignored", err);
        return;
    }
    struct log_ctx ctx = {NULL, t->id, t->job_id, t->type};
    log_emit(LOG_ERR, &ctx, "invalid task payload (%s): answering INVALID_INPUT_ERROR", err);
    outbox_add(o, t, 0);
    orch_flush(o);
    task_destroy(t);
}

static void on_poll(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->poll_req = NULL;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_POLL, r);
    if (r->status == 200 || r->status == 204) {
        backoff_reset(&o->poll_backoff);
        if (r->status == 200)
            on_poll_task(o, r);
        maybe_poll(o);
        return;
    }
    o->stats.polls_failed++;
    timer_after(o, &o->poll_timer, failure_delay(o, "poll", r, &o->poll_backoff));
}

/* Poll when this orchestrator may: alone, whenever a global slot is free;
 * with others, when the orchset's scheduler says so (orch_poll). */
static void maybe_poll(struct orch *o)
{
    if (o->sched != NULL) {
        o->sched(o->sched_arg);
        return;
    }
    if (orch_poll_state(o) != ORCH_POLL_READY || pool_free_slots(o->pool) <= 0)
        return;
    orch_poll(o);
}

enum orch_poll_state orch_poll_state(const struct orch *o)
{
    if (o->poll_req != NULL)
        return ORCH_POLL_BUSY;
    if (!o->registered || o->draining || ev_is_active(&o->poll_timer))
        return ORCH_POLL_DOWN;
    if (o->spool != NULL && spool_is_full(o->spool))
        return ORCH_POLL_DOWN; /* logged and counted by the spool; see result_unspool() */
    return ORCH_POLL_READY;
}

void orch_poll(struct orch *o)
{
    if (orch_poll_state(o) != ORCH_POLL_READY)
        return;
    o->stats.polls++;
    o->poll_plugins = o->plugins;
    o->poll_req = http_request(o->http, "GET", o->url_poll, (const char *const *)o->headers, NULL,
                               0, o->cfg->poll_timeout + POLL_MARGIN, on_poll, o);
}

static void on_poll_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    maybe_poll(w->data);
}

/* ---- WebSocket (2.6) ---- */

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
    o->stats.ws_messages++;
    char *id = orch_parse_ws_command(msg, len);
    if (id != NULL)
        cancel_by_id(o, id, "websocket");
    else
        log_info("websocket: ignoring message %.*s", (int)(len < 200 ? len : 200), msg);
    free(id);
}

static void ws_on_close(void *arg, int code, const char *reason, int auth_failed)
{
    struct orch *o = arg;
    o->stats.ws_closes++;
    double d = backoff_next(&o->ws_backoff);
    char msg[AVT_ERRLEN];
    if (auth_failed && sts_after_401(o))
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
    o->ws = ws_create(o->loop, o->http, o->url_ws, (const char *const *)o->headers, 0, &cb, o);
    ws_connect(o->ws);
}

/* ---- STS access token (1.2, 2.5, 4.10) ---- */

/* Only a client certificate can obtain a token: a CA-only configuration
 * must not ask (SDK 1.0b7 does, and gets 403 forever: 4.10). */
static int sts_enabled(const struct orch *o)
{
    return o->cfg->tls_cert_file != NULL && is_https(o);
}

/* Adopt a token: every later request carries it; running tasks, the
 * in-flight poll and an open WebSocket are not touched. */
static void sts_adopt(struct orch *o, const char *token, double expires_in)
{
    free(o->sts_token);
    o->sts_token = xstrdup(token);
    build_headers(o);
    double renew = expires_in * STS_RENEW_AT;
    if (renew < STS_RENEW_MIN)
        renew = STS_RENEW_MIN;
    backoff_reset(&o->sts_backoff);
    o->stats.sts_tokens++;
    timer_after(o, &o->sts_timer, renew);
    log_info("access token from %s: valid %.0f s, renewed in %.0f s", o->url, expires_in, renew);
}

static double sts_failed(struct orch *o, const struct http_response *r)
{
    char text[160];
    if (r->status == 0)
        return failure_delay(o, "access token", r, &o->sts_backoff);
    orch_answer_text(r->body, r->len, text, sizeof(text));
    if (r->status == 401 || r->status == 403)
        log_err("access token: %s did not accept this worker's client certificate (%ld %s): "
                "it issues tokens only when it verifies the certificate itself (TLS_ENABLED, "
                "TLS_CA_PATH naming the CA of TLS_CERT_PATH, no TLS-terminating proxy in "
                "between) and its Common Name is the worker id %s",
                o->url, r->status, text, o->cfg->worker_id);
    else
        log_warn("access token: %s answered %ld: %s", o->url, r->status, text);
    return backoff_next(&o->sts_backoff);
}

static void on_sts(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->sts_req = NULL;
    if (r->cancelled)
        return;
    int first = !o->sts_tried;
    o->sts_tried = 1;
    json_t *j = r->status == 200 ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    const char *token = json_string_value(json_object_get(j, "access_token"));
    json_t *exp = json_object_get(j, "expires_in");
    if (token != NULL && *token != '\0' && strpbrk(token, "\r\n") == NULL && json_is_number(exp) &&
        json_number_value(exp) > 0) {
        sts_adopt(o, token, json_number_value(exp));
    } else {
        double d;
        if (r->status == 200) {
            log_warn("access token: unusable answer from %s", o->url);
            d = backoff_next(&o->sts_backoff);
        } else {
            d = sts_failed(o, r);
        }
        log_info("access token: asking again in %.1f s%s", d,
                 o->sts_token != NULL ? " (the current one stays in use)" : "");
        timer_after(o, &o->sts_timer, d);
    }
    json_decref(j);
    if (first)
        start_register(o); /* with the token, or with the configured one */
}

static void sts_request(struct orch *o)
{
    if (o->sts_req != NULL)
        return;
    ev_timer_stop(o->loop, &o->sts_timer);
    o->sts_req = http_request(o->http, "POST", o->url_sts, (const char *const *)o->headers, NULL, 0,
                              REQUEST_TIMEOUT, on_sts, o);
}

static void on_sts_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sts_request(w->data);
}

/* A 401 while we hold an access token: renew it, once per burst of 401s
 * (the poll, heartbeat and results fail together), then back off. Returns
 * 1 when STS is in use (a renewal is under way or was just made). */
static int sts_after_401(struct orch *o)
{
    if (!sts_enabled(o))
        return 0;
    double now = now_mono();
    if (o->sts_req == NULL && now >= o->sts_401_after) {
        o->sts_401_after = now + backoff_next(&o->sts_401_backoff);
        log_notice("%s answered 401: renewing the access token", o->url);
        sts_request(o);
    }
    return 1;
}

/* ---- registration (2.1) ---- */

static json_t *register_body(struct orch *o)
{
    const struct cfg *c = o->cfg;
    json_t *skills = json_array();
    for (size_t i = 0; i < o->plugins->ntypes; i++)
        json_array_append_new(skills, json_string(o->plugins->types[i].type));
    json_t *gpu = c->gpu_model != NULL
                      ? json_pack("{s:s, s:i}", "model", c->gpu_model, "vram_gb", c->gpu_vram_gb)
                      : json_null();
    json_t *extra = json_deep_copy(c->extra);
    json_object_set_new(extra, "websockets", json_boolean(c->websockets));
    /* websockets at the top level of capabilities is what the orchestrator
     * reads; the SDK's extra.websockets is never read (2.1, 4.11). */
    json_t *caps =
        json_pack("{s:s, s:s, s:O, s:n, s:b, s:o}", "hostname", c->hostname, "ip_address",
                  c->ip_address ? c->ip_address : "127.0.0.1", "cost_per_skill", c->cost_per_skill,
                  "s3_config_hash", "websockets", c->websockets, "extra", extra);
    return json_pack("{s:s, s:s, s:o, s:{s:i, s:i, s:o}, s:O, s:O, s:o, s:s}", "worker_id",
                     c->worker_id, "worker_type", c->worker_type, "supported_skills", skills,
                     "resources", "max_concurrent_tasks", c->max_concurrent_tasks, "cpu_cores",
                     c->cpu_cores, "gpu_info", gpu, "installed_software", c->installed_software,
                     "installed_models", c->installed_models, "capabilities", caps, "status",
                     "idle");
}

static void on_register(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->register_req = NULL;
    if (r->cancelled)
        return;
    count_exchange(o, ORCH_EP_REGISTER, r);
    char *warning = NULL;
    if (r->status == 200 && orch_parse_register_answer(r->body, r->len, &warning)) {
        if (warning != NULL)
            log_warn("orchestrator: %s", warning);
        free(warning);
        log_notice("registered with %s as %s (%zu task types, %d slots)", o->url, o->cfg->worker_id,
                   o->plugins->ntypes, o->cfg->max_concurrent_tasks);
        o->registered = 1;
        o->told_auth = 0;
        backoff_reset(&o->sts_401_backoff);
        o->stats.registrations++;
        backoff_reset(&o->register_backoff);
        start_ws(o);
        send_heartbeat(o, 0);
        maybe_poll(o);
        /* (Re-)registered: the orchestrator is back, so replay the outbox
         * now instead of waiting out the result backoff. */
        ev_timer_stop(o->loop, &o->result_timer);
        o->results_paused = 0;
        backoff_reset(&o->result_backoff);
        send_results(o);
        return;
    }
    double d;
    if (r->status == 200) {
        o->stats.errors[ORCH_EP_REGISTER][ORCH_ERR_INVALID]++;
        log_warn("register: unexpected answer from %s", o->url);
        d = backoff_next(&o->register_backoff);
    } else {
        d = failure_delay(o, "register", r, &o->register_backoff);
    }
    log_info("registering again in %.1f s", d);
    timer_after(o, &o->register_timer, d);
}

static int sts_enabled(const struct orch *o);
static void sts_request(struct orch *o);

static void start_register(struct orch *o)
{
    if (o->register_req != NULL || ev_is_active(&o->register_timer))
        return;
    if (sts_enabled(o) && !o->sts_tried) {
        sts_request(o); /* registers when it is answered, whatever the answer */
        return;
    }
    json_t *body = register_body(o);
    o->register_req = post_json(o, "POST", o->url_register, body, REQUEST_TIMEOUT, on_register, o);
    json_decref(body);
}

static void on_register_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    start_register(w->data);
}

/* ---- public API ---- */

struct orch *orch_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                         struct pool *pool, const struct plugin_set *plugins)
{
    return orch_create_for(loop, http, cfg, 0, pool, plugins);
}

struct orch *orch_create_for(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                             size_t index, struct pool *pool, const struct plugin_set *plugins)
{
    struct orch *o = xcalloc(1, sizeof(*o));
    const struct cfg_orch *e = index < cfg->norchs ? &cfg->orchs[index] : NULL;
    o->loop = loop;
    o->http = http;
    o->cfg = cfg;
    o->pool = pool;
    o->plugins = plugins;
    o->name = xstrdup(e != NULL ? e->name : "default");
    o->url = xstrdup(e != NULL ? e->url : cfg->url);
    o->url_register = xasprintf("%s" PATH_REGISTER, o->url);
    o->url_result = xasprintf("%s" PATH_RESULT, o->url);
    o->url_sts = xasprintf("%s" PATH_STS, o->url);
    o->url_poll = xasprintf("%s/_worker/workers/%s/tasks/next", o->url, cfg->worker_id);
    o->url_heartbeat = xasprintf("%s/_worker/workers/%s", o->url, cfg->worker_id);
    o->url_ws = xasprintf("%s/_worker/ws/%s", o->url, cfg->worker_id);
    o->hot_cache = json_array();
    build_headers(o);
    double cap = cfg->retry_max_delay;
    backoff_init(&o->sts_backoff, 1.0, cap);
    backoff_init(&o->sts_401_backoff, STS_401_SPACING, cap);
    ev_timer_init(&o->sts_timer, on_sts_timer, 0., 0.);
    o->sts_timer.data = o;
    backoff_init(&o->register_backoff, 0.5, cap);
    backoff_init(&o->poll_backoff, 0.5, cap);
    backoff_init(&o->hb_backoff, 0.5, cap);
    backoff_init(&o->ws_backoff, 1.0, cap);
    backoff_init(&o->result_backoff, cfg->result_retry_initial_delay, cap);
    ev_timer_init(&o->register_timer, on_register_timer, 0., 0.);
    ev_timer_init(&o->poll_timer, on_poll_timer, 0., 0.);
    ev_timer_init(&o->hb_periodic, on_hb_periodic, cfg->heartbeat_interval,
                  cfg->heartbeat_interval);
    ev_timer_init(&o->hb_debounce, on_hb_debounce, 0., 0.);
    ev_timer_init(&o->ws_timer, on_ws_timer, 0., 0.);
    ev_timer_init(&o->result_timer, on_result_timer, 0., 0.);
    o->register_timer.data = o->poll_timer.data = o->hb_periodic.data = o;
    o->hb_debounce.data = o->ws_timer.data = o->result_timer.data = o;
    return o;
}

void orch_hold_results(struct orch *o, double seconds)
{
    o->results_hold_until = now_mono() + seconds;
}

void orch_set_durable(struct orch *o, struct spool *spool, struct journal *journal)
{
    o->spool = spool;
    o->journal = journal;
}

/* The spooled results of this orchestrator from a previous run, oldest
 * first, ahead of anything new. */
static void outbox_load(struct orch *o)
{
    struct spool_record **recs = NULL;
    size_t n = 0;
    if (o->spool == NULL || spool_load(o->spool, o->url, &recs, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct result *res = xcalloc(1, sizeof(*res));
        res->task_id = xstrdup(recs[i]->task_id);
        res->job_id = xstrdup(recs[i]->job_id);
        res->body = recs[i]->body; /* taken over */
        res->len = recs[i]->len;
        res->seq = recs[i]->seq;
        res->created = recs[i]->created;
        res->o = o;
        recs[i]->body = NULL;
        spool_record_free(recs[i]);
        outbox_link(o, res);
    }
    if (n > 0)
        log_notice("spool: %zu undelivered result(s) of %s from a previous run queued", n, o->url);
    free(recs);
}

void orch_start(struct orch *o)
{
    o->started = 1;
    outbox_load(o);
    ev_timer_start(o->loop, &o->hb_periodic);
    start_register(o);
}

void orch_destroy(struct orch *o)
{
    if (o == NULL)
        return;
    ev_timer *timers[] = {&o->register_timer, &o->poll_timer,   &o->hb_periodic, &o->hb_debounce,
                          &o->ws_timer,       &o->result_timer, &o->sts_timer};
    for (size_t i = 0; i < ARRAY_LEN(timers); i++)
        ev_timer_stop(o->loop, timers[i]);
    if (o->sts_req)
        http_cancel(o->sts_req);
    if (o->register_req)
        http_cancel(o->register_req);
    if (o->poll_req)
        http_cancel(o->poll_req);
    if (o->hb_req)
        http_cancel(o->hb_req);
    for (struct result *res = o->outbox, *next; res != NULL; res = next) {
        next = res->next;
        if (res->req)
            http_cancel(res->req);
        result_free(res);
    }
    ws_destroy(o->ws);
    for (int i = 0; i < PRECANCEL_SLOTS; i++)
        free(o->precancel[i].task_id);
    for (char **h = o->headers; *h; h++)
        free(*h);
    free(o->headers);
    free(o->active);
    free(o->abandoned);
    free(o->threads);
    json_decref(o->hot_cache);
    free(o->url_register);
    free(o->url_result);
    free(o->url_poll);
    free(o->url_heartbeat);
    free(o->url_ws);
    free(o->url_sts);
    free(o->name);
    free(o->url);
    free(o->header_token);
    free(o->sts_token);
    free(o);
}

void orch_task_done(struct orch *o, struct task *t)
{
    if (abandoned_take(o, t))
        return;
    active_remove(o, t);
    record_task(o, t);
    struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
    if (t->outcome == TASK_OUTCOME_FAILURE)
        log_emit(LOG_WARNING, &ctx, "task failed: %s: %s", t->err_code, t->err_msg);
    else
        log_emit(LOG_DEBUG, &ctx, "task %s in %.3f s", t->status, t->t_finished - t->t_started);
    outbox_add(o, t, 1);
    journal_task_finished(o->journal, t); /* after the result is spooled */
    task_destroy(t);
    heartbeat_soon(o);
}

void orch_task_progress(struct orch *o, struct task *t, double percent, const char *message)
{
    if (o->ws == NULL || !ws_is_open(o->ws))
        return; /* there is no HTTP progress endpoint in RXON 1.0b3 (2.6) */
    json_t *ev = json_pack("{s:s, s:s, s:s, s:f, s:s}", "event", "progress_update", "task_id",
                           t->id, "job_id", t->job_id, "progress", percent / 100.0, "message",
                           message ? message : "");
    size_t len;
    char *s = dump_compact(ev, &len);
    ws_send_text(o->ws, s, len);
    free(s);
    json_decref(ev);
}

void orch_hot_cache(struct orch *o, int add, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(o->hot_cache, i, v)
    {
        if (strcmp(json_string_value(v), name) == 0) {
            if (!add) {
                json_array_remove(o->hot_cache, i);
                heartbeat_soon(o);
            }
            return;
        }
    }
    if (add) {
        json_array_append_new(o->hot_cache, json_string(name));
        heartbeat_soon(o);
    }
}

void orch_capacity_changed(struct orch *o)
{
    maybe_poll(o);
    heartbeat_soon(o);
}

void orch_drain(struct orch *o)
{
    if (o->draining)
        return;
    o->draining = 1;
    ev_timer_stop(o->loop, &o->poll_timer);
    /* Tell the orchestrator at once (3.6 "graceful leave"). */
    ev_timer_stop(o->loop, &o->hb_debounce);
    send_heartbeat(o, 0);
}

int orch_idle(const struct orch *o)
{
    return o->nactive == 0 && o->outbox == NULL;
}

int orch_active_tasks(const struct orch *o)
{
    return o->nactive;
}

void orch_cancel_all(struct orch *o, int reason)
{
    for (int i = 0; i < o->nactive; i++)
        pool_cancel(o->pool, o->active[i], reason);
}

void orch_get_stats(const struct orch *o, struct orch_stats *st)
{
    *st = o->stats;
    st->registered = o->registered;
    st->draining = o->draining;
    st->stuck = o->nabandoned;
}

void orch_set_taskstats(struct orch *o, struct taskstats *ts)
{
    o->taskstats = ts;
}

/* ---- deadlines, stuck handlers, reload ---- */

int orch_abandon(struct orch *o, struct task *t, const char *code, const char *message)
{
    if (!active_has(o, t))
        return -ENOENT;
    active_remove(o, t);
    if (o->nabandoned == o->abandoned_cap) {
        o->abandoned_cap = o->abandoned_cap ? o->abandoned_cap * 2 : 8;
        o->abandoned = xrealloc(o->abandoned, (size_t)o->abandoned_cap * sizeof(*o->abandoned));
    }
    o->abandoned[o->nabandoned++] = t;
    o->stats.tasks_abandoned++;
    taskstats_outcome(o->taskstats, t->type, "failure", code);
    outbox_add_failure(o, t, code, message);
    orch_flush(o);
    heartbeat_soon(o);
    return 0;
}

int orch_abandon_all(struct orch *o, const char *code, const char *message)
{
    int n = 0;
    while (o->nactive > 0) {
        struct task *t = o->active[o->nactive - 1];
        struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
        log_emit(LOG_ERR, &ctx, "task did not finish in time: reported as %s", code);
        orch_abandon(o, t, code, message);
        n++;
    }
    return n;
}

int orch_stuck_tasks(const struct orch *o)
{
    return o->nabandoned;
}

/* The deadline of one running task: cancel at the type's timeout, give it
 * up cancel_grace later. */
static void supervise_one(struct orch *o, const struct pool_thread_info *th, double now,
                          double grace)
{
    struct task *t = th->task;
    if (!active_has(o, t))
        return; /* another orchestrator's task (orchset), or given up on */
    const struct cfg_limit *lim = cfg_limit_find(o->cfg, t->type);
    if (lim == NULL || lim->timeout <= 0 || now - th->since < lim->timeout)
        return;
    struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
    double ran = now - th->since;
    if (th->cancel == TASK_CANCEL_NONE) {
        log_emit(LOG_WARNING, &ctx, "deadline: running for %.1f s (timeout %g s): cancelling", ran,
                 lim->timeout);
        o->stats.deadlines++;
        pool_cancel(o->pool, t, TASK_CANCEL_DEADLINE);
        return;
    }
    if (ran < lim->timeout + grace || !active_has(o, t))
        return;
    log_emit(LOG_ERR, &ctx,
             "handler is stuck: running for %.1f s, ignored its cancellation for %.1f s; "
             "reported TIMEOUT_ERROR, its thread stays busy until it returns",
             ran, ran - lim->timeout);
    o->stats.stuck_total++;
    char msg[160];
    snprintf(msg, sizeof(msg), "task exceeded its timeout of %g s and did not stop", lim->timeout);
    orch_abandon(o, t, AVT_TIMEOUT_ERROR, msg);
}

void orch_supervise(struct orch *o, double grace)
{
    struct pool_stats ps;
    pool_get_stats(o->pool, &ps);
    if ((size_t)ps.threads > o->nthreads) {
        o->nthreads = (size_t)ps.threads;
        o->threads = xrealloc(o->threads, o->nthreads * sizeof(*o->threads));
    }
    size_t n = pool_get_threads(o->pool, o->threads, o->nthreads);
    double now = now_mono();
    for (size_t i = 0; i < n; i++) {
        if (o->threads[i].busy && o->threads[i].task != NULL)
            supervise_one(o, &o->threads[i], now, grace);
    }
}

static int plugin_in_set(const struct plugin *p, const struct plugin_set *set)
{
    for (size_t i = 0; p != NULL && i < set->nplugins; i++) {
        if (set->plugins[i] == p)
            return 1;
    }
    return 0;
}

int orch_uses_plugins(const struct orch *o, const struct plugin_set *set)
{
    int n = 0;
    for (int i = 0; i < o->nactive; i++)
        n += plugin_in_set(o->active[i]->plugin, set);
    for (int i = 0; i < o->nabandoned; i++)
        n += plugin_in_set(o->abandoned[i]->plugin, set);
    if (o->poll_req != NULL && o->poll_plugins == set)
        n++; /* its task may need one of them (accept_task) */
    return n;
}

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

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
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

void orch_reconfigure(struct orch *o, const struct cfg *cfg, const struct plugin_set *plugins)
{
    char *old_token = o->header_token != NULL ? xstrdup(o->header_token) : NULL;
    int skills_changed = !same_types(o->plugins, plugins);
    o->cfg = cfg;
    o->plugins = plugins;
    build_headers(o); /* a token file is re-read by the reload's cfg_load */
    int token_changed = !same_str(old_token, o->header_token);
    free(old_token);
    double cap = cfg->retry_max_delay;
    backoff_init(&o->register_backoff, 0.5, cap);
    backoff_init(&o->poll_backoff, 0.5, cap);
    backoff_init(&o->hb_backoff, 0.5, cap);
    backoff_init(&o->ws_backoff, 1.0, cap);
    backoff_init(&o->result_backoff, cfg->result_retry_initial_delay, cap);
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
    heartbeat_soon(o);
}

/* ---- several orchestrators (orchset.c) ---- */

const char *orch_name(const struct orch *o)
{
    return o->name;
}

const char *orch_url(const struct orch *o)
{
    return o->url;
}

void orch_set_state_hook(struct orch *o, void (*beat)(void *arg), void *arg)
{
    o->state_hook = beat;
    o->state_hook_arg = arg;
}

void orch_set_scheduler(struct orch *o, void (*kick)(void *arg), void *arg)
{
    o->sched = kick;
    o->sched_arg = arg;
}

int orch_has_task(const struct orch *o, const struct task *t)
{
    return active_has(o, t);
}
