/*
 * work.h - the life of a task on the loop thread, between the protocol
 * sessions, the pool, the ledger and the outbox.
 *
 *   accepted   a session hands over a polled task (work_accept): a copy
 *              of one still running is refused, the plugin is found (or
 *              the retired one the poll was sent under), a task that
 *              crashed the worker crash_limit times or was cancelled
 *              ahead of time is answered without running, the journal
 *              records it, the pool takes it (one global slot) and the
 *              ledger lists it;
 *   running    its progress and custom events go to the session it came
 *              from (work_events);
 *   finished   its DONE turns into a result record in the outbox, which
 *              keeps the slot until the result is delivered; the journal
 *              entry is closed once the result is spooled;
 *   given up   (the ledger's deadline or the drain) its failure goes to the
 *              outbox at once; its late DONE only frees its thread and slot.
 *
 * Every change the orchestrators are told about (a task taken or finished,
 * a slot given back, the hot cache) calls the `changed` hook once.
 * Loop thread only.
 */
#ifndef AVT_DAEMON_WORK_H
#define AVT_DAEMON_WORK_H

#include <jansson.h>

struct cfg;
struct evq_event;
struct journal;
struct ledger;
struct outbox;
struct plugin_set;
struct pool;
struct task;
struct taskstats;

struct work_env {
    const struct cfg *cfg;            /* current; work_reconfigure() swaps it */
    const struct plugin_set *plugins; /* current; work_reconfigure() swaps it */
    struct pool *pool;
    struct ledger *ledger;
    struct outbox *outbox;
    struct journal *journal;     /* NULL: no crash journal */
    struct taskstats *taskstats; /* finished tasks (metrics) */
    void (*changed)(void *arg);  /* tell every orchestrator (orchset_changed) */
    void *arg;
};

struct work;

struct work *work_create(const struct work_env *env);
void work_destroy(struct work *w); /* NULL is a no-op */

/* The ledger, the outbox and the journal are created after the work (they
 * are given its hooks); set them before the first task. */
void work_set_ledger(struct work *w, struct ledger *l);
void work_set_outbox(struct work *w, struct outbox *ob, struct journal *j);

void work_reconfigure(struct work *w, const struct cfg *cfg, const struct plugin_set *plugins);

/* The plugins' hot cache (an array of names, owned here; the sessions read
 * it for their heartbeats). */
json_t *work_hot_cache(struct work *w);

/* A polled task (orch_hooks.task): takes ownership of t. */
void work_accept(struct work *w, struct task *t, int valid, const struct plugin_set *polled_under);

/* A valid polled task that will not run (the worker is shutting down):
 * answered at once with a failure (code, message), without a slot, so that
 * the orchestrator retries it instead of waiting for its timeout. Takes
 * ownership of t. */
void work_decline(struct work *w, struct task *t, const char *code, const char *message);

/* The events the worker threads queued (evq_take()), oldest first; frees
 * them. One spool commit covers all the results among them. */
void work_events(struct work *w, struct evq_event *list);

/* The ledger's hooks (ledger.h). */
void work_cancel(void *w, struct task *t, int reason);
void work_abandoned(void *w, struct task *t, const char *code, const char *message);

/* The outbox's hooks (outbox.h). */
void work_release(void *w);
void work_room(void *w);
void work_settled(void *w, unsigned long long ref); /* closes the task's journal entry */

#endif /* AVT_DAEMON_WORK_H */
