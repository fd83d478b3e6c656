/*
 * outbox.c - the outbox (outbox.h). One FIFO of results per destination,
 * oldest first; at most RESULTS_IN_FLIGHT sends per destination at once;
 * a failure pauses that destination with its own backoff timer.
 *
 * A result's spool record is written by outbox_add() and covered by the
 * next outbox_flush(); until then it is "uncommitted" and never sent. Once
 * committed it is "settled": the settled hook closes its crash journal
 * entry. A disk error leaves the result in memory only (spool.c has logged
 * it and takes no new work): it is still delivered, its journal entry stays
 * open until then, and a retry timer writes it again once the disk can be
 * written (spool_probe).
 *
 * Answers. 200 is delivered. A network error, a 5xx, 408, 429, 401 or 403
 * pauses the destination with its backoff (the orchestrator is away or
 * busy, or the credential is being renewed) and moves the result to the end
 * of its queue, so that a result that keeps failing never holds the others
 * back. Any other 4xx refuses this one result for good: it is set aside in
 * STATE_DIR/refused/ and counted, and the others go on at once.
 */
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "backoff.h"
#include "cfg.h"
#include "http.h"
#include "log.h"
#include "rxon.h"
#include "spool.h"
#include "util.h"

#define RESULTS_IN_FLIGHT 8
#define RETRY_WRITE_MIN 1.0 /* s: writing results again after a disk error */
#define RETRY_WRITE_MAX 10.0

struct dest;

struct result {
    char *task_id, *job_id;
    char *type; /* for log lines; NULL when loaded from the spool */
    char *body;
    size_t len;
    int attempts;
    int holds_slot;         /* the task's global slot is given back on delivery */
    unsigned long long seq; /* its spool record; 0 = in memory only */
    double created;         /* when it was spooled (wall clock) */
    int uncommitted;        /* appended to the spool, not yet durable: not sent */
    int durable;            /* covered by a commit (else in memory only) */
    int held;               /* a crash report: not sent before the hold ends */
    unsigned long long ref; /* its journal entry, until it is settled (0: none or done) */
    char *url;              /* a crash report not spooled: its orchestrator until loaded */
    void *req;              /* the send in flight */
    struct dest *d;
    struct result *next;
};

struct dest {
    struct outbox *ob;
    void *dest;
    char *url;
    struct result *head, *tail;
    int in_flight;
    int paused;
    ev_timer timer; /* the end of a pause */
    struct backoff backoff;
    struct outbox_stats stats;
    struct dest *next;
};

struct outbox {
    struct ev_loop *loop;
    const struct cfg *cfg;
    struct spool *spool;
    struct outbox_sender sender;
    struct outbox_hooks hooks;
    void *arg;
    struct dest *dests;
    int uncommitted;   /* results waiting for outbox_flush() */
    double hold_until; /* now_mono() before which crash reports are not sent */
    ev_timer hold_timer;
    unsigned long long *held; /* spool seqs of this start's crash reports */
    size_t nheld;
    struct result *unspooled; /* crash reports that could not be spooled, until outbox_load */
    ev_timer retry_timer;     /* writing results again after a disk error */
    double retry_delay;
};

static void send_some(struct dest *d);

/* ---- Results ----------------------------------------------------------------- */

static void result_free(struct result *res)
{
    free(res->task_id);
    free(res->job_id);
    free(res->type);
    free(res->body);
    free(res->url);
    free(res);
}

static struct spool_record view(const struct result *res)
{
    return (struct spool_record){res->seq,  res->d->url, res->task_id, res->job_id,
                                 res->body, res->len,    res->created};
}

static void unlink_result(struct dest *d, struct result *res)
{
    struct result **pp = &d->head, *prev = NULL;
    while (*pp != NULL && *pp != res) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = res->next;
    if (d->tail == res)
        d->tail = prev;
}

static void link_result(struct dest *d, struct result *res)
{
    res->d = d;
    if (d->tail != NULL)
        d->tail->next = res;
    else
        d->head = res;
    d->tail = res;
    d->stats.pending++;
}

/* The result is durable or delivered: its journal entry can close. */
static void settle(struct outbox *ob, struct result *res)
{
    if (res->ref == 0)
        return;
    unsigned long long ref = res->ref;
    res->ref = 0;
    if (ob->hooks.settled != NULL)
        ob->hooks.settled(ob->arg, ref);
}

/* Its task's slot is free again: delivered, or its first attempt failed. */
static void release_slot(struct outbox *ob, struct result *res)
{
    if (!res->holds_slot)
        return;
    res->holds_slot = 0;
    ob->hooks.release(ob->arg);
}

/* Gone for good (delivered, expired or set aside): out of the queue and,
 * unless the caller took it out already, the spool. */
/* A record left the spool: if that gave a full spool room, work is taken
 * again (the room hook). */
static void left_spool(struct outbox *ob, int was_full)
{
    if (was_full && !spool_is_full(ob->spool))
        ob->hooks.room(ob->arg);
}

static void retire(struct dest *d, struct result *res)
{
    struct outbox *ob = d->ob;
    unlink_result(d, res);
    if (ob->spool != NULL && res->seq != 0) {
        int was_full = spool_is_full(ob->spool);
        struct spool_record v = view(res);
        spool_remove(ob->spool, &v);
        left_spool(ob, was_full);
    }
    settle(ob, res);
    release_slot(ob, res);
    d->stats.pending--;
    result_free(res);
}

/* ---- Destinations -------------------------------------------------------------- */

static struct dest *dest_of(const struct outbox *ob, const void *dest)
{
    for (struct dest *d = ob->dests; d != NULL; d = d->next) {
        if (d->dest == dest)
            return d;
    }
    return NULL;
}

static void pause_for(struct dest *d, double delay)
{
    d->paused = 1;
    ev_timer_stop(d->ob->loop, &d->timer);
    ev_timer_set(&d->timer, delay < 0 ? 0 : delay, 0.);
    ev_timer_start(d->ob->loop, &d->timer);
}

/* Drop the results older than [spool] max_age that are not being sent. */
static void expire(struct dest *d)
{
    struct outbox *ob = d->ob;
    double now = now_wall();
    for (struct result *res = d->head, *next; ob->spool != NULL && res != NULL; res = next) {
        next = res->next;
        struct spool_record v = view(res);
        if (res->req == NULL && res->seq != 0 && spool_expire(ob->spool, &v, now))
            retire(d, res);
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct dest *d = w->data;
    d->paused = 0;
    expire(d);
    send_some(d);
}

static void set_backoff(struct outbox *ob, struct dest *d)
{
    backoff_init(&d->backoff, ob->cfg->result_retry_initial_delay, ob->cfg->retry_max_delay);
}

void outbox_add_dest(struct outbox *ob, void *dest, const char *url)
{
    struct dest *d = xcalloc(1, sizeof(*d));
    d->ob = ob;
    d->dest = dest;
    d->url = xstrdup(url);
    set_backoff(ob, d);
    ev_timer_init(&d->timer, on_timer, 0., 0.);
    d->timer.data = d;
    struct dest **pp = &ob->dests; /* in the order they were added */
    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = d;
}

/* ---- Sending --------------------------------------------------------------------- */

const char *const outbox_ignored_reasons[OUTBOX_IGNORED_REASONS] = {
    "job_not_found",          "stale_task", "worker_mismatch", "deadline_exceeded",
    "job_already_terminated", "other"};

/* Count an ignored result under its reason ("reason (message)"). */
static void count_ignored(struct dest *d, const char *text)
{
    size_t i = 0, n = strcspn(text, " (");
    while (i < OUTBOX_IGNORED_REASONS - 1 && (strlen(outbox_ignored_reasons[i]) != n ||
                                              strncmp(outbox_ignored_reasons[i], text, n) != 0))
        i++;
    d->stats.ignored[i]++;
}

static void log_answer(const struct result *res, const struct outbox_answer *a)
{
    struct log_ctx ctx = {NULL, res->task_id, res->job_id, res->type};
    if (a->ignored)
        log_emit(LOG_WARNING, &ctx, "result ignored by the orchestrator: %s", a->text);
    else if (log_level >= LOG_DEBUG)
        log_emit(LOG_DEBUG, &ctx, "result delivered (%s)", a->text);
}

/* An answer that may change when sent again later: the orchestrator is
 * away, busy or overloaded, or the credential is being renewed. */
static int retryable(const struct http_response *r)
{
    long st = r->status;
    return st == 0 || st == 401 || st == 403 || st == 408 || st == 429 || st < 400 || st >= 500 ||
           r->too_large;
}

/* Refused for good: set aside in the spool's refused/ directory. */
static void refuse(struct dest *d, struct result *res, const struct http_response *r)
{
    struct outbox *ob = d->ob;
    char text[160], why[200];
    rxon_answer_text(r->body, r->len, text, sizeof(text));
    snprintf(why, sizeof(why), "%ld %s", r->status, text);
    d->stats.refused++;
    if (ob->spool != NULL) {
        struct spool_record v = view(res);
        int was_full = spool_is_full(ob->spool);
        /* Saved: acknowledged in the spool. Not saved: it stays in the spool
         * (sent again after a restart), or, in memory only, its task stays
         * in the crash journal. */
        if (spool_set_aside(ob->spool, &v, why) < 0 && !res->durable)
            res->ref = 0;
        res->seq = 0;
        left_spool(ob, was_full);
    } else {
        struct log_ctx ctx = {NULL, res->task_id, res->job_id, res->type};
        log_emit(LOG_ERR, &ctx, "the orchestrator %s refused this result for good (%s): dropped",
                 d->url, why);
    }
    retire(d, res);
}

static void on_answer(void *arg, const struct outbox_answer *a)
{
    struct result *res = arg;
    struct dest *d = res->d;
    struct outbox *ob = d->ob;
    res->req = NULL;
    d->in_flight--;
    if (a->r->cancelled)
        return;
    if (a->r->status == 200) {
        /* accepted or ignored: delivered either way (Decision 3). */
        log_answer(res, a);
        if (a->ignored)
            count_ignored(d, a->text);
        retire(d, res);
        d->stats.sent++;
        backoff_reset(&d->backoff);
        send_some(d);
        return;
    }
    res->attempts++;
    d->stats.failed++;
    release_slot(ob, res);
    if (!retryable(a->r)) {
        refuse(d, res, a->r);
        send_some(d);
        return;
    }
    /* To the end of the queue: the next attempt starts with the others. */
    unlink_result(d, res);
    res->next = NULL;
    d->stats.pending--;
    link_result(d, res);
    char what[160];
    snprintf(what, sizeof(what), "result of task %s (attempt %d)", res->task_id, res->attempts);
    struct log_ctx ctx = {NULL, res->task_id, res->job_id, res->type};
    double delay = ob->sender.failure_delay(d->dest, what, a->r, &d->backoff, &ctx);
    if (!d->paused)
        pause_for(d, delay);
}

static void send_some(struct dest *d)
{
    struct outbox *ob = d->ob;
    if (d->paused)
        return;
    double hold = ob->hold_until - now_mono();
    for (struct result *res = d->head; res != NULL; res = res->next) {
        if (d->in_flight >= RESULTS_IN_FLIGHT)
            return;
        if (res->req != NULL || res->uncommitted)
            continue;
        if (res->held && hold > 0) {
            if (!ev_is_active(&ob->hold_timer)) {
                ev_timer_set(&ob->hold_timer, hold, 0.);
                ev_timer_start(ob->loop, &ob->hold_timer);
            }
            continue;
        }
        res->held = 0;
        res->req = ob->sender.post(d->dest, res->body, res->len, on_answer, res);
        if (res->req != NULL)
            d->in_flight++;
    }
}

/* ---- Timers ---------------------------------------------------------------------- */

static void on_hold_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct outbox *ob = w->data;
    for (struct dest *d = ob->dests; d != NULL; d = d->next)
        send_some(d);
}

/* Results in memory only (a disk error): are there any? */
static int any_in_memory(const struct outbox *ob)
{
    for (const struct dest *d = ob->dests; d != NULL; d = d->next) {
        for (const struct result *res = d->head; res != NULL; res = res->next) {
            if (!res->durable && !res->uncommitted)
                return 1;
        }
    }
    return 0;
}

static void arm_retry(struct outbox *ob)
{
    if (ob->spool == NULL || ev_is_active(&ob->retry_timer))
        return;
    ob->retry_delay = ob->retry_delay <= 0 ? RETRY_WRITE_MIN : ob->retry_delay;
    ev_timer_set(&ob->retry_timer, ob->retry_delay, 0.);
    ev_timer_start(ob->loop, &ob->retry_timer);
}

/* Write a result that is in memory only to the spool again; 0 or -errno. */
static int respool(struct outbox *ob, struct result *res)
{
    struct spool_record v = view(res);
    if (res->seq != 0) /* written before a failed commit: maybe on disk, never durable */
        spool_remove(ob->spool, &v);
    v.seq = 0;
    int rc = spool_write(ob->spool, &v);
    res->seq = v.seq;
    return rc;
}

/* After a disk error: once the spool can be written, the results in memory
 * are written and committed again by outbox_flush() (their journal entries
 * then close), and the worker takes tasks again. */
static void on_retry_write(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct outbox *ob = w->data;
    ob->retry_delay = ob->retry_delay * 2 > RETRY_WRITE_MAX ? RETRY_WRITE_MAX : ob->retry_delay * 2;
    int rc = spool_probe(ob->spool);
    for (struct dest *d = ob->dests; rc == 0 && d != NULL; d = d->next) {
        for (struct result *res = d->head; rc == 0 && res != NULL; res = res->next) {
            if (res->durable || res->uncommitted)
                continue;
            rc = respool(ob, res);
            if (rc == 0) {
                res->uncommitted = 1;
                ob->uncommitted++;
            }
        }
    }
    outbox_flush(ob); /* settles them, or arms this timer again */
    if (rc < 0 || any_in_memory(ob) || spool_trouble(ob->spool, NULL) != 0) {
        arm_retry(ob);
        return;
    }
    ob->retry_delay = 0;
    ob->hooks.room(ob->arg); /* the spool works again: poll */
}

/* ---- Public ---------------------------------------------------------------------- */

struct outbox *outbox_create(struct ev_loop *loop, const struct cfg *cfg, struct spool *spool,
                             const struct outbox_sender *sender, const struct outbox_hooks *hooks,
                             void *arg)
{
    struct outbox *ob = xcalloc(1, sizeof(*ob));
    ob->loop = loop;
    ob->cfg = cfg;
    ob->spool = spool;
    ob->sender = *sender;
    ob->hooks = *hooks;
    ob->arg = arg;
    ev_timer_init(&ob->hold_timer, on_hold_end, 0., 0.);
    ob->hold_timer.data = ob;
    ev_timer_init(&ob->retry_timer, on_retry_write, 0., 0.);
    ob->retry_timer.data = ob;
    return ob;
}

void outbox_destroy(struct outbox *ob)
{
    if (ob == NULL)
        return;
    ev_timer_stop(ob->loop, &ob->hold_timer);
    ev_timer_stop(ob->loop, &ob->retry_timer);
    for (struct result *res = ob->unspooled, *next; res != NULL; res = next) {
        next = res->next;
        result_free(res);
    }
    free(ob->held);
    while (ob->dests != NULL) {
        struct dest *d = ob->dests;
        ob->dests = d->next;
        ev_timer_stop(ob->loop, &d->timer);
        for (struct result *res = d->head, *next; res != NULL; res = next) {
            next = res->next;
            if (res->req != NULL)
                ob->sender.cancel(res->req);
            result_free(res);
        }
        free(d->url);
        free(d);
    }
    free(ob);
}

static struct result *result_new(const char *task_id, const char *job_id, const char *type)
{
    struct result *res = xcalloc(1, sizeof(*res));
    res->task_id = xstrdup(task_id);
    res->job_id = xstrdup(job_id);
    res->type = type != NULL ? xstrdup(type) : NULL;
    res->created = now_wall();
    return res;
}

static char *dump_record(json_t *record, size_t *len)
{
    char *s = json_dumps(record, JSON_COMPACT);
    if (s == NULL)
        abort(); /* the record is built from valid UTF-8: only OOM fails here */
    *len = strlen(s);
    return s;
}

void outbox_add(struct outbox *ob, void *dest, json_t *record, const char *task_id,
                const char *job_id, const char *type, int holds_slot, unsigned long long ref)
{
    struct dest *d = dest_of(ob, dest);
    struct result *res = result_new(task_id, job_id, type);
    res->holds_slot = holds_slot;
    res->ref = ref;
    res->body = dump_record(record, &res->len);
    res->d = d;
    if (ob->spool != NULL) {
        /* Durable before the first send: appended now, sent after the
         * commit in outbox_flush(). On a disk error spool_write has logged
         * it and the result is kept in memory only. */
        struct spool_record v = view(res);
        if (spool_write(ob->spool, &v) == 0) {
            res->seq = v.seq;
            res->uncommitted = 1;
            ob->uncommitted++;
        } else {
            arm_retry(ob);
        }
    }
    link_result(d, res);
    send_some(d);
}

void outbox_flush(struct outbox *ob)
{
    if (ob->uncommitted == 0)
        return;
    /* A failed commit has been logged; the results are sent anyway (kept
     * in memory), as after a failed write, and written again later. Their
     * journal entries close only once they are durable or delivered. */
    int rc = spool_commit(ob->spool);
    ob->uncommitted = 0;
    for (struct dest *d = ob->dests; d != NULL; d = d->next) {
        for (struct result *res = d->head; res != NULL; res = res->next) {
            if (!res->uncommitted)
                continue;
            res->uncommitted = 0;
            res->durable = rc == 0;
            if (rc == 0)
                settle(ob, res);
        }
    }
    if (rc < 0)
        arm_retry(ob);
    for (struct dest *d = ob->dests; d != NULL; d = d->next)
        send_some(d);
}

int outbox_spool(struct outbox *ob, const char *url, json_t *record, const char *task_id,
                 const char *job_id)
{
    size_t len;
    char *body = dump_record(record, &len);
    struct spool_record *rec = spool_record_new(url, task_id, job_id, body, len);
    int rc = spool_write(ob->spool, rec);
    if (rc == 0)
        rc = spool_commit(ob->spool);
    if (rc == 0) {
        ob->held = xrealloc(ob->held, (ob->nheld + 1) * sizeof(*ob->held));
        ob->held[ob->nheld++] = rec->seq;
    } else {
        /* Kept in memory and sent like the spooled ones (the caller keeps
         * the journal, so a next start reports it again if need be). */
        struct result *res = result_new(task_id, job_id, NULL);
        res->body = body;
        res->len = len;
        body = NULL;
        res->held = 1;
        res->url = xstrdup(url);
        res->next = ob->unspooled;
        ob->unspooled = res;
        arm_retry(ob);
    }
    spool_record_free(rec);
    free(body);
    return rc;
}

/* The spooled results of one destination from a previous run. */
static void load_dest(struct outbox *ob, struct dest *d)
{
    struct spool_record **recs = NULL;
    size_t n = 0;
    if (spool_load(ob->spool, d->url, &recs, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct result *res = result_new(recs[i]->task_id, recs[i]->job_id, NULL);
        free(res->type);
        res->type = NULL;
        res->body = recs[i]->body; /* taken over */
        res->len = recs[i]->len;
        res->seq = recs[i]->seq;
        res->created = recs[i]->created;
        res->durable = 1;
        for (size_t k = 0; k < ob->nheld && !res->held; k++)
            res->held = ob->held[k] == res->seq;
        recs[i]->body = NULL;
        spool_record_free(recs[i]);
        link_result(d, res);
    }
    /* This start's crash reports that could not be spooled. */
    for (struct result **pp = &ob->unspooled; *pp != NULL;) {
        struct result *res = *pp;
        if (strcmp(res->url, d->url) != 0) {
            pp = &res->next;
            continue;
        }
        *pp = res->next;
        res->next = NULL;
        link_result(d, res);
        n++;
    }
    if (n > 0)
        log_notice("spool: %zu undelivered result(s) of %s from a previous run queued", n, d->url);
    free(recs);
    send_some(d);
}

void outbox_load(struct outbox *ob)
{
    for (struct dest *d = ob->dests; ob->spool != NULL && d != NULL; d = d->next)
        load_dest(ob, d);
}

void outbox_hold(struct outbox *ob, double seconds)
{
    ob->hold_until = now_mono() + seconds;
    for (struct dest *d = ob->dests; d != NULL; d = d->next)
        send_some(d);
}

void outbox_resume(struct outbox *ob, void *dest)
{
    struct dest *d = dest_of(ob, dest);
    if (d == NULL)
        return;
    /* The orchestrator is back: replay now instead of waiting out the
     * backoff. */
    ev_timer_stop(ob->loop, &d->timer);
    d->paused = 0;
    backoff_reset(&d->backoff);
    send_some(d);
}

void outbox_reconfigure(struct outbox *ob, const struct cfg *cfg)
{
    ob->cfg = cfg;
    for (struct dest *d = ob->dests; d != NULL; d = d->next)
        set_backoff(ob, d);
}

int outbox_idle(const struct outbox *ob)
{
    for (const struct dest *d = ob->dests; d != NULL; d = d->next) {
        if (d->head != NULL)
            return 0;
    }
    return 1;
}

void outbox_get_stats(const struct outbox *ob, const void *dest, struct outbox_stats *st)
{
    const struct dest *d = dest_of(ob, dest);
    memset(st, 0, sizeof(*st));
    if (d != NULL)
        *st = d->stats;
}
