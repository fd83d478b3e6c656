/*
 * ledger.c - the task ledger (ledger.h). Arrays, because a worker holds at
 * most max_concurrent_tasks active tasks (plus the few stuck ones) and a
 * linear scan over them is cheaper than any index; the remembered cancels
 * are a fixed ring that forgets the oldest.
 */
#include "ledger.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "task.h"
#include "util.h"

#define PRECANCEL_SLOTS 64
#define PRECANCEL_TTL 600.0

struct precancel {
    const struct orch *origin;
    char *task_id;
    double at;
};

struct ledger {
    struct ledger_hooks hooks;
    void *arg;
    struct task **active;
    int nactive, active_cap;
    struct task **abandoned;
    int nabandoned, abandoned_cap;
    struct rxon_task_ref *refs; /* ledger_refs()'s answer */
    size_t refs_cap;
    struct precancel precancel[PRECANCEL_SLOTS];
    struct ledger_stats stats;
};

struct ledger *ledger_create(const struct ledger_hooks *hooks, void *arg)
{
    struct ledger *l = xcalloc(1, sizeof(*l));
    l->hooks = *hooks;
    l->arg = arg;
    return l;
}

void ledger_destroy(struct ledger *l)
{
    if (l == NULL)
        return;
    for (int i = 0; i < PRECANCEL_SLOTS; i++)
        free(l->precancel[i].task_id);
    free(l->active);
    free(l->abandoned);
    free(l->refs);
    free(l);
}

static void push(struct task ***arr, int *n, int *cap, struct task *t)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *arr = xrealloc(*arr, (size_t)*cap * sizeof(**arr));
    }
    (*arr)[(*n)++] = t;
}

/* Remove t from arr; 1 when it was there. */
static int take(struct task **arr, int *n, const struct task *t)
{
    for (int i = 0; i < *n; i++) {
        if (arr[i] == t) {
            arr[i] = arr[--*n];
            return 1;
        }
    }
    return 0;
}

static int has(struct task *const *arr, int n, const struct task *t)
{
    for (int i = 0; i < n; i++) {
        if (arr[i] == t)
            return 1;
    }
    return 0;
}

static struct log_ctx task_ctx(const struct task *t)
{
    return (struct log_ctx){t->plugin ? t->plugin->name : NULL, t->id, t->job_id, t->type};
}

void ledger_add(struct ledger *l, struct task *t)
{
    push(&l->active, &l->nactive, &l->active_cap, t);
}

struct task *ledger_find(const struct ledger *l, const struct orch *origin, const char *task_id)
{
    for (int i = 0; i < l->nactive; i++) {
        struct task *t = l->active[i];
        if (t->origin == origin && strcmp(t->id, task_id) == 0)
            return t;
    }
    return NULL;
}

/* ---- Cancels ------------------------------------------------------------- */

static void precancel_add(struct ledger *l, const struct orch *origin, const char *task_id)
{
    int slot = 0;
    for (int i = 0; i < PRECANCEL_SLOTS; i++) {
        if (l->precancel[i].task_id == NULL) {
            slot = i;
            break;
        }
        if (l->precancel[i].at < l->precancel[slot].at)
            slot = i;
    }
    free(l->precancel[slot].task_id);
    l->precancel[slot] = (struct precancel){origin, xstrdup(task_id), now_mono()};
}

int ledger_take_precancel(struct ledger *l, const struct orch *origin, const char *task_id)
{
    double now = now_mono();
    for (int i = 0; i < PRECANCEL_SLOTS; i++) {
        struct precancel *p = &l->precancel[i];
        if (p->task_id == NULL)
            continue;
        if (now - p->at > PRECANCEL_TTL) {
            free_and_null(p->task_id);
            continue;
        }
        if (p->origin == origin && strcmp(p->task_id, task_id) == 0) {
            free_and_null(p->task_id);
            return 1;
        }
    }
    return 0;
}

static int matches(const struct task *t, enum rxon_cancel_kind kind, const char *id)
{
    switch (kind) {
    case RXON_CANCEL_TASK:
        return strcmp(t->id, id) == 0;
    case RXON_CANCEL_TASK_IS_JOB:
        return strcmp(t->id, id) == 0 && strcmp(t->id, t->job_id) == 0;
    case RXON_CANCEL_JOB:
        return strcmp(t->job_id, id) == 0;
    }
    return 0;
}

int ledger_cancel(struct ledger *l, const struct orch *origin, enum rxon_cancel_kind kind,
                  const char *id, const char *source)
{
    int n = 0, known = 0;
    for (int i = 0; i < l->nactive; i++) {
        struct task *t = l->active[i];
        if (t->origin != origin)
            continue;
        if (kind == RXON_CANCEL_TASK_IS_JOB && strcmp(t->id, id) == 0)
            known = 1;
        if (!matches(t, kind, id))
            continue;
        struct log_ctx ctx = task_ctx(t);
        log_emit(LOG_NOTICE, &ctx, "cancel requested by the orchestrator (%s)", source);
        l->hooks.cancel(l->arg, t, TASK_CANCEL_ORCHESTRATOR);
        n++;
    }
    if (n == 0 && known) {
        log_debug("ignoring cancel_task_ids entry %s: a parallel-branch id (3.7)", id);
    } else if (n == 0 && kind == RXON_CANCEL_TASK) {
        struct log_ctx ctx = {NULL, id, NULL, NULL};
        log_emit(LOG_INFO, &ctx,
                 "cancel from %s for task %s, which is not running here: remembered", source, id);
        precancel_add(l, origin, id);
    }
    return n;
}

void ledger_cancel_all(struct ledger *l, int reason)
{
    for (int i = 0; i < l->nactive; i++)
        l->hooks.cancel(l->arg, l->active[i], reason);
}

/* ---- The end of a task, and giving up on one ------------------------------ */

int ledger_finish(struct ledger *l, struct task *t)
{
    if (take(l->abandoned, &l->nabandoned, t)) {
        l->stats.stuck = l->nabandoned;
        return 0;
    }
    take(l->active, &l->nactive, t);
    return 1;
}

int ledger_abandon(struct ledger *l, struct task *t, const char *code, const char *message)
{
    if (!take(l->active, &l->nactive, t))
        return -ENOENT;
    push(&l->abandoned, &l->nabandoned, &l->abandoned_cap, t);
    l->stats.tasks_abandoned++;
    l->hooks.abandoned(l->arg, t, code, message);
    return 0;
}

int ledger_abandon_all(struct ledger *l, const char *code, const char *message)
{
    int n = 0;
    while (l->nactive > 0) {
        struct task *t = l->active[l->nactive - 1];
        struct log_ctx ctx = task_ctx(t);
        log_emit(LOG_ERR, &ctx, "task did not finish in time: reported as %s", code);
        ledger_abandon(l, t, code, message);
        n++;
    }
    return n;
}

/* ---- Deadlines -------------------------------------------------------------- */

/* When a task running since `since` is due (now_mono()): the earlier of its
 * type's [limits] timeout and the orchestrator's deadline; 0 = never. */
static double deadline_of(const struct cfg *cfg, const struct task *t, double since)
{
    const struct cfg_limit *lim = cfg_limit_find(cfg, t->type);
    double due = lim != NULL && lim->timeout > 0 ? since + lim->timeout : 0;
    if (t->deadline > 0 && (due == 0 || t->deadline < due))
        due = t->deadline;
    return due;
}

/* The deadline of one running task: cancel when it is due, give it up
 * `grace` later. */
static void supervise_one(struct ledger *l, const struct cfg *cfg,
                          const struct pool_thread_info *th, double now, double grace)
{
    struct task *t = th->task;
    if (!has(l->active, l->nactive, t))
        return; /* given up on already, or not one of ours */
    double due = deadline_of(cfg, t, th->since);
    if (due <= 0 || now < due)
        return;
    struct log_ctx ctx = task_ctx(t);
    double ran = now - th->since;
    if (th->cancel == TASK_CANCEL_NONE) {
        log_emit(LOG_WARNING, &ctx, "deadline: running for %.1f s (%s): cancelling", ran,
                 due == t->deadline ? "the orchestrator's result deadline passed"
                                    : "its type's timeout passed");
        l->stats.deadlines++;
        l->hooks.cancel(l->arg, t, TASK_CANCEL_DEADLINE);
        return;
    }
    if (now < due + grace)
        return;
    log_emit(LOG_ERR, &ctx,
             "handler is stuck: running for %.1f s, ignored its cancellation for %.1f s; "
             "reported TIMEOUT_ERROR, its thread stays busy until it returns",
             ran, now - due);
    l->stats.stuck_total++;
    char msg[160];
    snprintf(msg, sizeof(msg),
             "task ran past its deadline (%.1f s after its start) and did not stop",
             due - th->since);
    ledger_abandon(l, t, AVT_TIMEOUT_ERROR, msg);
}

void ledger_supervise(struct ledger *l, const struct cfg *cfg, const struct pool_thread_info *th,
                      size_t n, double now, double grace)
{
    for (size_t i = 0; i < n; i++) {
        if (th[i].busy && th[i].task != NULL)
            supervise_one(l, cfg, &th[i], now, grace);
    }
}

/* ---- Queries --------------------------------------------------------------------- */

size_t ledger_refs(struct ledger *l, const struct orch *origin, const struct rxon_task_ref **out)
{
    if (l->refs_cap < (size_t)l->nactive) {
        l->refs_cap = (size_t)l->nactive;
        l->refs = xrealloc(l->refs, l->refs_cap * sizeof(*l->refs));
    }
    size_t n = 0;
    for (int i = 0; i < l->nactive; i++) {
        const struct task *t = l->active[i];
        if (origin == NULL || t->origin == origin)
            l->refs[n++] = (struct rxon_task_ref){t->id, t->job_id};
    }
    *out = l->refs;
    return n;
}

static int plugin_in_set(const struct plugin *p, const struct plugin_set *set)
{
    for (size_t i = 0; p != NULL && i < set->nplugins; i++) {
        if (set->plugins[i] == p)
            return 1;
    }
    return 0;
}

int ledger_uses_plugins(const struct ledger *l, const struct plugin_set *set)
{
    int n = 0;
    for (int i = 0; i < l->nactive; i++)
        n += plugin_in_set(l->active[i]->plugin, set);
    for (int i = 0; i < l->nabandoned; i++)
        n += plugin_in_set(l->abandoned[i]->plugin, set);
    return n;
}

void ledger_get_stats(const struct ledger *l, struct ledger_stats *st)
{
    *st = l->stats;
    st->active = l->nactive;
    st->stuck = l->nabandoned;
}
