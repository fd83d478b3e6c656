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
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "cfg.h"
#include "http.h"
#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "task.h"
#include "util.h"
#include "ws.h"

#define RXON_VERSION "1.0b3"
#define PATH_REGISTER "/_worker/workers/register"
#define PATH_RESULT "/_worker/tasks/result"
#define RESULTS_IN_FLIGHT 8
#define PRECANCEL_SLOTS 64
#define PRECANCEL_TTL 600.0
#define REQUEST_TIMEOUT 30.0
#define RATE_LIMIT_PAUSE 61.0
/* The long-poll's client timeout exceeds the server's hold by this much: a
 * poll given up early can lose the task the server pops for it (2.2), so
 * err on the side of a busy orchestrator answering late. */
#define POLL_MARGIN 15.0 /* the limiter's 60 s window must lapse (1.3) */

struct backoff {
    double base, cap, cur;
};

struct result {
    char *task_id;
    char *job_id;
    char *body;
    size_t len;
    int attempts;
    int holds_slot; /* the task's global slot is given back on delivery */
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

    char *url_poll, *url_heartbeat, *url_register, *url_result, *url_ws;
    char **headers; /* NULL-terminated "Name: value" */

    int registered;
    int draining;
    int started;
    struct http_req *register_req;
    ev_timer register_timer;
    struct backoff register_backoff;

    struct http_req *poll_req;
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

    struct result *outbox, *outbox_tail;
    int results_in_flight;
    ev_timer result_timer;
    int results_paused;
    struct backoff result_backoff;

    json_t *hot_cache; /* array of strings */
    struct precancel precancel[PRECANCEL_SLOTS];
    int told_rate_limit, told_auth;

    struct orch_stats stats;
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
    char *task_id = cmd != NULL && strcmp(cmd, "cancel_task") == 0 && id != NULL ? xstrdup(id)
                                                                                 : NULL;
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
static double failure_delay(struct orch *o, const char *what, const struct http_response *r,
                            struct backoff *b)
{
    char text[160];
    if (r->status == 0) {
        log_warn("%s: %s: %s", what, o->cfg->url, r->error ? r->error : "transport error");
        return backoff_next(b);
    }
    answer_text(r, text, sizeof(text));
    if (r->status == 401 || r->status == 403) {
        log_err("%s: the orchestrator refused this worker's credentials (%ld %s): set "
                "WORKER_TOKEN (or [orchestrator] token/token_file) to the orchestrator's "
                "GLOBAL_WORKER_TOKEN, or to this worker's individual token from its workers.toml",
                what, r->status, text);
        o->told_auth = 1;
        double d = backoff_next(b);
        return d < 5 ? 5 : d;
    }
    if (r->status == 429) {
        if (!o->told_rate_limit) {
            log_warn(
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
        log_warn("%s: answer %ld larger than the body limit, ignored", what, r->status);
    else
        log_warn("%s: orchestrator answered %ld: %s", what, r->status, text);
    return backoff_next(b);
}

/* ---- requests ---- */

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

static void build_headers(struct orch *o)
{
    int n = 0;
    o->headers = xcalloc(4, sizeof(char *));
    if (o->cfg->token != NULL)
        o->headers[n++] = xasprintf("X-Worker-Token: %s", o->cfg->token);
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
        log_info("cancel from %s for task %s, which is not running here: remembered", source,
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
    if (r->status != 200) {
        o->stats.heartbeats_failed++;
        double d = failure_delay(o, probe ? "heartbeat (probe)" : "heartbeat", r, &o->hb_backoff);
        o->hb_paused_until = now_mono() + d;
        return;
    }
    backoff_reset(&o->hb_backoff);
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
static void heartbeat_soon(struct orch *o)
{
    if (!o->registered || ev_is_active(&o->hb_debounce))
        return;
    timer_after(o, &o->hb_debounce, o->cfg->heartbeat_debounce);
}

/* ---- results (2.4) ---- */

static void send_results(struct orch *o);

static void result_free(struct result *res)
{
    free(res->task_id);
    free(res->job_id);
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
    struct log_ctx ctx = {NULL, res->task_id, res->job_id, NULL};
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

static void on_result(void *arg, const struct http_response *r)
{
    struct result *res = arg;
    struct orch *o = res->o;
    res->req = NULL;
    o->results_in_flight--;
    if (r->cancelled)
        return;
    if (r->status == 200) {
        /* accepted or ignored: delivered either way (Decision 3). */
        log_result_answer(res, r);
        outbox_unlink(o, res);
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
    double d = failure_delay(o, what, r, &o->result_backoff);
    if (!o->results_paused) {
        o->results_paused = 1;
        timer_after(o, &o->result_timer, d);
    }
}

static void send_results(struct orch *o)
{
    if (o->results_paused)
        return;
    for (struct result *res = o->outbox; res != NULL; res = res->next) {
        if (o->results_in_flight >= RESULTS_IN_FLIGHT)
            return;
        if (res->req != NULL)
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
    send_results(o);
}

static void outbox_add(struct orch *o, struct task *t, int holds_slot)
{
    struct result *res = xcalloc(1, sizeof(*res));
    res->holds_slot = holds_slot;
    json_t *body = task_result_json(t, o->cfg->worker_id);
    res->body = dump_compact(body, &res->len);
    json_decref(body);
    res->task_id = xstrdup(t->id);
    res->job_id = xstrdup(t->job_id);
    res->o = o;
    if (o->outbox_tail != NULL)
        o->outbox_tail->next = res;
    else
        o->outbox = res;
    o->outbox_tail = res;
    o->stats.results_pending++;
    send_results(o);
}

/* ---- polling (2.2) ---- */

static void maybe_poll(struct orch *o);

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
    t->origin = o;
    if (precancel_take(o, t->id))
        task_cancel(t, TASK_CANCEL_ORCHESTRATOR);
    t->t_received = now_mono();
    if (pool_submit(o->pool, t) < 0) {
        /* Cannot happen: we poll only with a free slot. Keep the task's
         * result rather than lose it. */
        log_emit(LOG_ERR, &ctx, "no free slot for a polled task (bug): failing it transiently");
        task_set_failure(t, AVT_TRANSIENT_ERROR, "worker had no free slot");
        outbox_add(o, t, 0);
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
    task_destroy(t);
}

static void on_poll(void *arg, const struct http_response *r)
{
    struct orch *o = arg;
    o->poll_req = NULL;
    if (r->cancelled)
        return;
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

static void maybe_poll(struct orch *o)
{
    if (!o->registered || o->draining || o->poll_req != NULL || ev_is_active(&o->poll_timer))
        return;
    if (pool_free_slots(o->pool) <= 0)
        return;
    o->stats.polls++;
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
    double d = backoff_next(&o->ws_backoff);
    if (auth_failed)
        log_err("websocket: the orchestrator refused this worker's credentials (%s): set "
                "WORKER_TOKEN to its GLOBAL_WORKER_TOKEN or this worker's individual token; "
                "retrying in %.0f s",
                reason, d);
    else
        log_warn("websocket closed (%d %s); reconnecting in %.1f s", code, reason, d);
    timer_after(o, &o->ws_timer, d);
}

static void on_ws_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct orch *o = w->data;
    if (o->ws != NULL && !ws_is_open(o->ws))
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
    char *warning = NULL;
    if (r->status == 200 && orch_parse_register_answer(r->body, r->len, &warning)) {
        if (warning != NULL)
            log_warn("orchestrator: %s", warning);
        free(warning);
        log_notice("registered with %s as %s (%zu task types, %d slots)", o->cfg->url,
                   o->cfg->worker_id, o->plugins->ntypes, o->cfg->max_concurrent_tasks);
        o->registered = 1;
        o->told_auth = 0;
        o->stats.registrations++;
        backoff_reset(&o->register_backoff);
        start_ws(o);
        send_heartbeat(o, 0);
        maybe_poll(o);
        send_results(o);
        return;
    }
    double d;
    if (r->status == 200) {
        log_warn("register: unexpected answer from %s", o->cfg->url);
        d = backoff_next(&o->register_backoff);
    } else {
        d = failure_delay(o, "register", r, &o->register_backoff);
    }
    log_info("registering again in %.1f s", d);
    timer_after(o, &o->register_timer, d);
}

static void start_register(struct orch *o)
{
    if (o->register_req != NULL || ev_is_active(&o->register_timer))
        return;
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
    struct orch *o = xcalloc(1, sizeof(*o));
    o->loop = loop;
    o->http = http;
    o->cfg = cfg;
    o->pool = pool;
    o->plugins = plugins;
    o->url_register = xasprintf("%s" PATH_REGISTER, cfg->url);
    o->url_result = xasprintf("%s" PATH_RESULT, cfg->url);
    o->url_poll = xasprintf("%s/_worker/workers/%s/tasks/next", cfg->url, cfg->worker_id);
    o->url_heartbeat = xasprintf("%s/_worker/workers/%s", cfg->url, cfg->worker_id);
    o->url_ws = xasprintf("%s/_worker/ws/%s", cfg->url, cfg->worker_id);
    o->hot_cache = json_array();
    build_headers(o);
    double cap = cfg->retry_max_delay;
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
                          &o->hb_debounce,    &o->ws_timer,   &o->result_timer};
    for (size_t i = 0; i < ARRAY_LEN(timers); i++)
        ev_timer_stop(o->loop, timers[i]);
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
    json_decref(o->hot_cache);
    free(o->url_register);
    free(o->url_result);
    free(o->url_poll);
    free(o->url_heartbeat);
    free(o->url_ws);
    free(o);
}

void orch_task_done(struct orch *o, struct task *t)
{
    active_remove(o, t);
    struct log_ctx ctx = {t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
    if (t->outcome == TASK_OUTCOME_FAILURE)
        log_emit(LOG_WARNING, &ctx, "task failed: %s: %s", t->err_code, t->err_msg);
    else
        log_emit(LOG_DEBUG, &ctx, "task %s in %.3f s", t->status, t->t_finished - t->t_started);
    outbox_add(o, t, 1);
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
}
