/*
 * ledger.h - the task ledger: one per daemon, the only record of which
 * tasks the worker holds, wherever they came from.
 *
 *   active     accepted from an orchestrator and handed to the pool, until
 *              the loop takes their DONE (ledger_finish);
 *   abandoned  reported failed while their handler still runs (a deadline's
 *              grace ran out, or the drain gave up on them): the handler
 *              still owns the task and its thread, the late DONE is dropped;
 *   cancelled  ahead of time: a cancel for a task that has not arrived yet
 *              is remembered for PRECANCEL_TTL, so that when the task comes
 *              it is answered "cancelled" without running (PROTOCOL.md,
 *              README quirk 6).
 *
 * Every task carries a typed link to the orchestrator it came from
 * (task->origin), which is how cancels are matched and results routed.
 * Deadline supervision ([limits] TYPE.timeout, from the handler's start)
 * runs here once per tick over one snapshot of the pool's threads: a task
 * past its timeout is cancelled; one still running cancel_grace later is
 * given up on (TIMEOUT_ERROR, logged as stuck).
 *
 * The ledger never touches the pool, the outbox or the network itself: what
 * it decides goes out through its hooks. Loop thread only.
 */
#ifndef AVT_DAEMON_LEDGER_H
#define AVT_DAEMON_LEDGER_H

#include <stddef.h>

#include "rxon.h"

struct cfg;
struct orch;
struct plugin_set;
struct pool_thread_info;
struct task;

struct ledger_hooks {
    /* Ask a task's handler to stop (pool_cancel). */
    void (*cancel)(void *arg, struct task *t, int reason);
    /* Report a task as failed now, built from its ids only (the worker
     * thread may still be writing the rest): the outbox sends it. */
    void (*abandoned)(void *arg, struct task *t, const char *code, const char *message);
};

struct ledger_stats {
    int active;                    /* tasks in the pool */
    int stuck;                     /* given up on, their handler still running */
    unsigned long deadlines;       /* tasks cancelled because their type's timeout passed */
    unsigned long tasks_abandoned; /* reported failed while their handler still ran */
    unsigned long stuck_total;     /* of those, given up on after ignoring a deadline */
};

struct ledger;

struct ledger *ledger_create(const struct ledger_hooks *hooks, void *arg);
void ledger_destroy(struct ledger *l); /* NULL is a no-op; the tasks are not freed */

/* A task accepted and handed to the pool (t->origin set). */
void ledger_add(struct ledger *l, struct task *t);

/* The active task with this id from this orchestrator, or NULL. */
struct task *ledger_find(const struct ledger *l, const struct orch *origin, const char *task_id);

/*
 * The orchestrator `origin` wants `id` cancelled (source: "websocket",
 * "heartbeat", for the log). Matching active tasks are cancelled
 * (TASK_CANCEL_ORCHESTRATOR); a task id that matches none is remembered
 * for when the task arrives. Returns the number of tasks cancelled.
 */
int ledger_cancel(struct ledger *l, const struct orch *origin, enum rxon_cancel_kind kind,
                  const char *id, const char *source);

/* 1 (once) when a cancel for this task arrived before the task did. */
int ledger_take_precancel(struct ledger *l, const struct orch *origin, const char *task_id);

/* The DONE of t arrived: 1 when t was active (its result is owed), 0 when
 * it had been abandoned (its failure was sent already: drop the outcome). */
int ledger_finish(struct ledger *l, struct task *t);

/* Give up on an active task: report `code`/`message` through the hook at
 * once; its late DONE is dropped. 0, or -ENOENT when t is not active. */
int ledger_abandon(struct ledger *l, struct task *t, const char *code, const char *message);

/* ledger_abandon() every active task, each logged; returns how many. */
int ledger_abandon_all(struct ledger *l, const char *code, const char *message);

/* Cancel every active task with `reason` (enum task_cancel). */
void ledger_cancel_all(struct ledger *l, int reason);

/* Deadlines over one snapshot of the pool's threads (taken by the caller
 * at `now`); cfg gives each type's timeout. */
void ledger_supervise(struct ledger *l, const struct cfg *cfg, const struct pool_thread_info *th,
                      size_t n, double now, double grace);

/* The active tasks of `origin` (NULL: all), as references valid until the
 * next ledger call that changes the ledger; returns their number. */
size_t ledger_refs(struct ledger *l, const struct orch *origin, const struct rxon_task_ref **out);

/* Active and abandoned tasks that run with a plugin of `set`. */
int ledger_uses_plugins(const struct ledger *l, const struct plugin_set *set);

void ledger_get_stats(const struct ledger *l, struct ledger_stats *st);

#endif /* AVT_DAEMON_LEDGER_H */
