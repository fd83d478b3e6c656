/*
 * pool.h - the fixed thread pool that runs handlers, with the global and
 * per-type concurrency limits. A task whose handler returned is posted to
 * the worker-to-loop queue (evq.h) as a DONE event.
 *
 * Capacity (PROTOCOL.md Decision 5). The pool has N threads and N global
 * slots (N = max_concurrent_tasks). The loop thread takes a slot with
 * pool_submit() for every task it accepts and gives it back with
 * pool_release() once it has taken over the task's result. A submitted task
 * whose type is at its [limits] maximum waits inside the pool, holding its
 * global slot, until a task of that type finishes; it is never dropped and
 * a limit is never exceeded. The loop asks for new work only while
 * pool_free_slots() > 0.
 *
 * Threads: pool_create/submit/release/free_slots/destroy are for the loop
 * (main) thread only; the rest may be called from any thread.
 */
#ifndef AVT_DAEMON_POOL_H
#define AVT_DAEMON_POOL_H

#include <stddef.h>

struct cfg;
struct evq;
struct task;

struct pool_type_stats {
    const char *type;
    int limit;   /* 0 = global limit only */
    int running; /* handler running */
    int waiting; /* submitted, waiting for its type's limit or a thread */
};

struct pool_stats {
    int threads;  /* the slots: threads there may be */
    int started;  /* threads started so far (they start as tasks need them) */
    int idle;     /* started threads waiting for a task */
    int inflight; /* slots taken: submitted and not yet released */
    int running;
    int waiting;
    int max_running_seen; /* high-water mark of running, for tests and metrics */
};

/* A pool of up to cfg->max_concurrent_tasks threads named avt-worker-N,
 * started as tasks need them (one at once; NULL when even that one cannot
 * start), with the per-type limits of cfg; finished tasks are posted to `evq` (borrowed; it
 * must outlive the pool), and so is progress (task->evq is set by
 * pool_submit()). */
struct pool *pool_create(const struct cfg *cfg, struct evq *evq);

/* Stop accepting work, wait for running handlers to return, join the
 * threads and free the tasks still queued. NULL is a no-op. */
void pool_destroy(struct pool *pool);

/* Take a global slot and queue the task. Returns 0, or -EBUSY when no
 * slot is free (a caller bug: check pool_free_slots() first). */
int pool_submit(struct pool *pool, struct task *t);

/* Give back the slot of a task whose DONE event the loop has handled. */
void pool_release(struct pool *pool);

/* Global slots not taken. */
int pool_free_slots(const struct pool *pool);

/* 1 if a task of `type` submitted now would start without waiting for its
 * type's limit (used for the heartbeat's supported_skills). */
int pool_type_has_room(struct pool *pool, const char *type);

/* Loop thread: task_cancel(t, reason) for a submitted task, and provide a
 * thread (an idle one, else a new one) for each queued task the cancel lets
 * start, so that a task cancelled while it waits for its type's limit is
 * finished at once (without running its handler) instead of waiting for a
 * task of its type to end. Prefer it over a bare task_cancel() for tasks
 * the pool holds. */
void pool_cancel(struct pool *pool, struct task *t, int reason);

void pool_get_stats(struct pool *pool, struct pool_stats *st);
/* Per-type figures of every type with a limit or a task seen; returns the
 * count written (at most n). */
size_t pool_get_type_stats(struct pool *pool, struct pool_type_stats *out, size_t n);

/* What one worker thread is doing (SIGUSR1 dump, admin /threads). */
struct pool_thread_info {
    int index;    /* the thread is named avt-worker-<index> */
    int busy;     /* running a task (the fields below are set) */
    double since; /* now_mono() when the task started, or when the thread went idle */
    int cancel;   /* enum task_cancel of the running task: asked to stop, and why */
    char task_id[160], job_id[160], type[130], plugin[130]; /* truncated copies */
    struct task *task; /* the task itself; for the loop thread only, which may use it
                          until it takes the task's DONE event */
};

/* A snapshot of the first n threads, taken under the pool's lock; returns
 * the count written. Any thread. */
size_t pool_get_threads(struct pool *pool, struct pool_thread_info *out, size_t n);

/* Called on the worker thread just before a task's handler is run (the
 * crash journal's "started" record); it must be cheap and thread-safe. */
typedef void (*pool_start_fn)(void *arg, struct task *t);

/* Loop thread, before the first pool_submit(): install the start hook
 * (NULL: none). */
void pool_set_start_hook(struct pool *pool, pool_start_fn fn, void *arg);

/* Replace the per-type limits (reload). Running tasks are not affected; a
 * lowered limit only delays later starts. */
void pool_set_limits(struct pool *pool, const struct cfg *cfg);

#endif /* AVT_DAEMON_POOL_H */
