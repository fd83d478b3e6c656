/*
 * work.c - the life of a task on the loop thread (work.h).
 */
#include "work.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "evq.h"
#include "journal.h"
#include "ledger.h"
#include "log.h"
#include "orch.h"
#include "outbox.h"
#include "plugin.h"
#include "pool.h"
#include "task.h"
#include "taskstats.h"
#include "util.h"

struct work {
    struct work_env env;
    json_t *hot_cache;  /* array of strings */
    int told_no_events; /* "this dialect has no events", once */
};

struct work *work_create(const struct work_env *env)
{
    struct work *w = xcalloc(1, sizeof(*w));
    w->env = *env;
    w->hot_cache = json_array();
    return w;
}

void work_destroy(struct work *w)
{
    if (w == NULL)
        return;
    json_decref(w->hot_cache);
    free(w);
}

void work_set_ledger(struct work *w, struct ledger *l)
{
    w->env.ledger = l;
}

void work_set_outbox(struct work *w, struct outbox *ob, struct journal *j)
{
    w->env.outbox = ob;
    w->env.journal = j;
}

void work_reconfigure(struct work *w, const struct cfg *cfg, const struct plugin_set *plugins)
{
    w->env.cfg = cfg;
    w->env.plugins = plugins;
}

json_t *work_hot_cache(struct work *w)
{
    return w->hot_cache;
}

static struct log_ctx task_ctx(const struct task *t)
{
    return (struct log_ctx){t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
}

static void changed(struct work *w)
{
    w->env.changed(w->env.arg);
}

/* A finished task: its outcome and handler run time. */
static void record_task(struct work *w, const struct task *t)
{
    const char *code = t->outcome == TASK_OUTCOME_FAILURE ? t->err_code : NULL;
    taskstats_outcome(w->env.taskstats, t->type, t->status, code);
    if (t->t_started > 0) /* else it never ran: a poison task, say */
        taskstats_duration(w->env.taskstats, t->type, t->t_finished - t->t_started);
}

/* Queue t's result for the orchestrator it came from; its journal entry
 * closes once the result is settled (work_settled). */
static void to_outbox(struct work *w, const struct task *t, int holds_slot)
{
    json_t *record = task_result_json(t, w->env.cfg->worker_id);
    outbox_add(w->env.outbox, t->origin, record, t->id, t->job_id, t->type, holds_slot,
               t->journal_seq);
    json_decref(record);
}

/* ---- Accepting a polled task ----------------------------------------------------- */

/* A polled task answered with a failure without running: counted, spooled
 * and sent at once. The caller still owns t. */
static void answer_unrun(struct work *w, struct task *t, const char *code, const char *message)
{
    task_set_failure(t, code, "%s", message);
    record_task(w, t);
    to_outbox(w, t, 0);
    outbox_flush(w->env.outbox);
}

/* The plugin for t: the current one, or the one of the set the poll was
 * sent under (a reload removed it since; it stays loaded until t ends). */
static void find_plugin(struct work *w, struct task *t, const struct plugin_set *polled_under)
{
    t->plugin = plugin_set_find(w->env.plugins, t->type);
    if (t->plugin != NULL || polled_under == NULL || polled_under == w->env.plugins)
        return;
    t->plugin = plugin_set_find(polled_under, t->type);
    if (t->plugin != NULL) {
        struct log_ctx ctx = task_ctx(t);
        log_emit(LOG_NOTICE, &ctx,
                 "task polled before the reload: run with plugin %s of the previous configuration",
                 t->plugin->name);
    }
}

/* The task cannot be run: answered or dropped here. 1 when it was. */
static int refused(struct work *w, struct task *t)
{
    struct log_ctx ctx = {NULL, t->id, t->job_id, t->type};
    if (ledger_find(w->env.ledger, t->origin, t->id) != NULL) {
        /* The orchestrator re-dispatched a task that still runs here (an
         * execution timeout, 3.4): its running copy answers for both. */
        log_emit(LOG_WARNING, &ctx, "task delivered again while still running: not run twice");
        return 1;
    }
    if (journal_is_poisoned(w->env.journal, t->id)) {
        log_emit(LOG_CRIT, &ctx,
                 "a task that crashed the worker crash_limit times was delivered "
                 "again: failing it permanently without running it");
        answer_unrun(w, t, AVT_PERMANENT_ERROR, "worker crashed in handler");
        return 1;
    }
    return 0;
}

void work_accept(struct work *w, struct task *t, int valid, const struct plugin_set *polled_under)
{
    if (!valid) { /* its outcome is INVALID_INPUT_ERROR already */
        to_outbox(w, t, 0);
        outbox_flush(w->env.outbox);
        task_destroy(t);
        return;
    }
    find_plugin(w, t, polled_under);
    if (refused(w, t)) {
        task_destroy(t);
        return;
    }
    if (ledger_take_precancel(w->env.ledger, t->origin, t->id))
        task_cancel(t, TASK_CANCEL_ORCHESTRATOR);
    t->events_ok = orch_speaks_events(t->origin);
    t->t_received = now_mono();
    /* Journaled before the pool can start it (journal.c explains why the
     * "started" record is the worker thread's). */
    journal_task_accepted(w->env.journal, t, orch_url(t->origin));
    if (pool_submit(w->env.pool, t) < 0) {
        /* Cannot happen: the scheduler polls only with a free slot. Keep the
         * task's result rather than lose it. */
        struct log_ctx ctx = task_ctx(t);
        log_emit(LOG_ERR, &ctx, "no free slot for a polled task (bug): failing it transiently");
        answer_unrun(w, t, AVT_TRANSIENT_ERROR, "worker had no free slot");
        journal_task_returned(w->env.journal, t, 0);
        task_destroy(t);
        return;
    }
    ledger_add(w->env.ledger, t);
    struct log_ctx ctx = task_ctx(t);
    log_emit(LOG_DEBUG, &ctx, "task accepted");
    changed(w);
}

void work_decline(struct work *w, struct task *t, const char *code, const char *message)
{
    struct log_ctx ctx = task_ctx(t);
    log_emit(LOG_NOTICE, &ctx,
             "task not started (%s): reported as %s for the orchestrator to retry", message, code);
    answer_unrun(w, t, code, message);
    task_destroy(t);
}

/* ---- The end of a task ------------------------------------------------------------ */

/*
 * The DONE of a task given up on: its failure was sent already, so this
 * outcome is dropped; its thread and its global slot (held until now,
 * because the thread was busy) come back.
 */
static void abandoned_done(struct work *w, struct task *t)
{
    taskstats_duration(w->env.taskstats, t->type, t->t_finished - t->t_started);
    struct log_ctx ctx = task_ctx(t);
    log_emit(LOG_NOTICE, &ctx,
             "handler given up on returned after %.1f s: its thread is free again "
             "(its outcome was not sent: the failure already was)",
             t->t_finished - t->t_started);
    journal_task_returned(w->env.journal, t, 0); /* closed when its failure was settled */
    task_destroy(t);
    pool_release(w->env.pool);
    changed(w);
}

static void task_done(struct work *w, struct task *t)
{
    if (!ledger_finish(w->env.ledger, t)) {
        abandoned_done(w, t);
        return;
    }
    record_task(w, t);
    struct log_ctx ctx = task_ctx(t);
    if (t->outcome == TASK_OUTCOME_FAILURE)
        log_emit(LOG_WARNING, &ctx, "task failed: %s: %s", t->err_code, t->err_msg);
    else
        log_emit(LOG_DEBUG, &ctx, "task %s in %.3f s", t->status, t->t_finished - t->t_started);
    to_outbox(w, t, 1); /* the outbox gives the slot back once it is delivered */
    journal_task_returned(w->env.journal, t, 1);
    task_destroy(t);
    changed(w);
}

static void hot_cache(struct work *w, int add, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(w->hot_cache, i, v)
    {
        if (strcmp(json_string_value(v), name) == 0) {
            if (!add) {
                json_array_remove(w->hot_cache, i);
                changed(w);
            }
            return;
        }
    }
    if (add) {
        json_array_append_new(w->hot_cache, json_string(name));
        changed(w);
    }
}

static void task_event(struct work *w, struct evq_event *ev)
{
    if (orch_task_event(ev->task->origin, ev->task, ev->name, ev->payload) != -ENOTSUP ||
        w->told_no_events)
        return;
    struct log_ctx ctx = task_ctx(ev->task);
    log_emit(LOG_WARNING, &ctx,
             "event '%s' dropped: the orchestrator's protocol has no custom events (said once)",
             ev->name);
    w->told_no_events = 1;
}

void work_events(struct work *w, struct evq_event *ev)
{
    int done = 0;
    while (ev != NULL) {
        struct evq_event *next = ev->next;
        switch (ev->kind) {
        case EVQ_DONE:
            task_done(w, ev->task);
            done = 1;
            break;
        case EVQ_PROGRESS:
            orch_task_progress(ev->task->origin, ev->task, ev->percent, ev->message);
            break;
        case EVQ_EVENT:
            task_event(w, ev);
            break;
        case EVQ_HOTCACHE_ADD:
        case EVQ_HOTCACHE_REMOVE:
            hot_cache(w, ev->kind == EVQ_HOTCACHE_ADD, ev->name);
            break;
        }
        evq_event_free(ev);
        ev = next;
    }
    /* One spool commit (fdatasync) for all the results of this wake-up,
     * then they are sent. */
    if (done)
        outbox_flush(w->env.outbox);
}

/* ---- Hooks ----------------------------------------------------------------------------- */

void work_cancel(void *arg, struct task *t, int reason)
{
    struct work *w = arg;
    pool_cancel(w->env.pool, t, reason);
}

/* A failure built only from the ids, which never change while the task
 * exists: the worker thread may still be writing the rest. */
void work_abandoned(void *arg, struct task *t, const char *code, const char *message)
{
    struct work *w = arg;
    json_t *record =
        json_pack("{s:s, s:s, s:s, s:s, s:n, s:{s:s, s:s}, s:n}", "job_id", t->job_id, "task_id",
                  t->id, "worker_id", w->env.cfg->worker_id, "status", "failure", "data", "error",
                  "code", code, "message", message, "data_metadata");
    if (record == NULL)
        abort(); /* the ids are valid UTF-8 (task_parse): only OOM fails here */
    taskstats_outcome(w->env.taskstats, t->type, "failure", code);
    /* Its journal entry closes once this failure is settled: the next start
     * neither reports the task again nor counts it as a crash. */
    outbox_add(w->env.outbox, t->origin, record, t->id, t->job_id, t->type, 0, t->journal_seq);
    json_decref(record);
    outbox_flush(w->env.outbox);
    changed(w);
}

void work_release(void *arg)
{
    struct work *w = arg;
    pool_release(w->env.pool);
    changed(w);
}

void work_room(void *arg)
{
    changed(arg);
}

void work_settled(void *arg, unsigned long long ref)
{
    struct work *w = arg;
    journal_task_settled(w->env.journal, ref);
}
