/*
 * pool.c - the pool of worker threads that run plugin handlers, with
 * the global and per-type concurrency limits (STYLE.md R9, ARCHITECTURE
 * "Capacity decides what we ask for"). A finished task goes to the loop
 * through the worker-to-loop queue (evq.h), which is not this module's.
 *
 * Design. Up to N threads (avt-worker-0 .. N-1, N = max_concurrent_tasks)
 * share one mutex `mu`. Submitted tasks wait in one FIFO. A worker takes
 * the FIRST queued task whose type has room (running < limit, or no limit),
 * so a task of a type at its limit never blocks tasks of other types behind
 * it, and tasks of one type start in the order they arrived. The worker
 * counts the task as running, drops the lock, runs plugin_run(), takes the
 * lock again, uncounts it and, after unlocking, posts the task's DONE to
 * the event queue; then it looks at the queue again, so a task that the
 * freed type slot lets start needs no other thread.
 *
 * Threads start as work needs them: one in pool_create(), another when a
 * task is submitted and no thread is idle, until there are N; a started
 * thread stays until pool_destroy(). A worker configured with 1,000 slots
 * for I/O-bound tasks starts with one thread, not 1,000 (each
 * costs ~9 KiB of RSS). Idle threads wait on a stack, each on its own
 * condition variable, and a submitted task wakes the one that went idle
 * last; that thread is taken off the stack by its waker, so the count of
 * idle threads is exact and a task never waits for a thread that was
 * already woken for another one. A cancel or a raised limit counts the
 * queued tasks that can start before and after, and provides threads (idle
 * ones first, then new ones) for the difference only. If a thread cannot
 * be started, the task waits for a running one
 * (it is logged once). A task submitted while the thread that just
 * finished one is between posting its DONE and looking at the queue again
 * may start a thread more than needed; it then waits idle, first in line,
 * so the count grows only while every started thread is busy or just
 * finishing, never beyond the slots.
 *
 * Capacity. The loop thread owns the global slot counter `inflight`: it
 * takes a slot in pool_submit() and gives it back in pool_release() after it
 * has handled the DONE event. There are N slots and up to N threads, so the
 * queue never holds more than N tasks (it is bounded by construction) and a
 * task waiting for its type never needs a thread that cannot be started.
 *
 * Each thread records the task it runs and since when (current, since;
 * guarded by `mu`), so that pool_get_threads() can say what every thread
 * is doing (SIGUSR1, the admin endpoint) without touching the task after
 * the worker handed it to the loop: the record is cleared under `mu`
 * before the DONE is posted.
 *
 * Per-type limits are copied out of the cfg (which a reload may free) into
 * `types`, which also records every type seen (for statistics; bounded by
 * TYPES_MAX). Type names stay allocated until pool_destroy().
 *
 * Lock order: `mu` is the only lock of this module and nothing else is
 * locked while it is held, but for pthread_create() (the loop thread
 * starting a thread: workers finishing at that moment wait the tens of
 * microseconds it takes, once per thread started); plugin_run() and
 * logging are always called without it, and so is the event queue (whose own mutex is
 * never taken while `mu` is held). Callers hold no lock of theirs when
 * calling in.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "evq.h"
#include "log.h"
#include "plugin.h"
#include "task.h"
#include "util.h"

/* Types tracked for statistics only (no limit) stop being added beyond
 * this, so that a stream of made-up types cannot grow memory. */
#define TYPES_MAX 1024

struct pool_type {
    char *name;
    int limit; /* 0: global limit only */
    int running;
    int waiting;
    int counted; /* scratch of count_startable() */
};

struct pool_thread {
    struct pool *pool;
    pthread_t tid;
    int index;
    struct task *current; /* running on this thread, or NULL; guarded by mu */
    double since;         /* now_mono() when current started or the thread went idle; mu */
    pthread_cond_t cv;    /* signalled when the thread is taken off the idle stack */
    int idle;             /* on the idle stack; mu */
};

struct pool {
    pthread_mutex_t mu;

    struct pool_thread *threads; /* maxthreads of them, nthreads started */
    int maxthreads;              /* the slots */
    int nthreads;                /* started; mu */
    struct pool_thread **idle;   /* waiting for work, the latest last; mu */
    int nidle;
    int start_failed; /* the last thread start failed (logged once); mu */
    int first_coming; /* the first thread has not looked at the queue yet; mu */
    int stopping;     /* guarded by mu */

    struct task *qhead, *qtail; /* submitted, not started; guarded by mu */

    struct pool_type *types; /* guarded by mu */
    size_t ntypes;

    int running, waiting, max_running_seen; /* guarded by mu */
    int inflight;                           /* loop thread only */

    struct evq *evq;          /* where finished tasks go */
    pool_start_fn start_hook; /* set before the first submit */
    void *start_arg;
};

/* ---- Types (mu held) ---------------------------------------------------- */

static struct pool_type *type_find(struct pool *pool, const char *name)
{
    for (size_t i = 0; i < pool->ntypes; i++) {
        if (strcmp(pool->types[i].name, name) == 0)
            return &pool->types[i];
    }
    return NULL;
}

/* Index of a type, added when new; -1 when it is new and the table is
 * full (force adds it anyway: limits always get an entry). Entries are never
 * removed, so an index stays valid until pool_destroy(). */
static int type_get(struct pool *pool, const char *name, int force)
{
    struct pool_type *ty = type_find(pool, name);

    if (ty != NULL)
        return (int)(ty - pool->types);
    if (!force && pool->ntypes >= TYPES_MAX)
        return -1;
    pool->types = xrealloc(pool->types, (pool->ntypes + 1) * sizeof(*pool->types));
    pool->types[pool->ntypes] = (struct pool_type){.name = xstrdup(name)};
    return (int)pool->ntypes++;
}

/* The counters of a submitted task's type, or NULL. */
static struct pool_type *type_of(struct pool *pool, const struct task *t)
{
    return t->pool_type >= 0 ? &pool->types[t->pool_type] : NULL;
}

static void apply_limits(struct pool *pool, const struct cfg *cfg)
{
    for (size_t i = 0; i < pool->ntypes; i++)
        pool->types[i].limit = 0;
    for (size_t i = 0; cfg != NULL && i < cfg->nlimits; i++) {
        if (cfg->limits[i].type == NULL || cfg->limits[i].max <= 0)
            continue;
        int idx = type_get(pool, cfg->limits[i].type, 1); /* may move pool->types */
        pool->types[idx].limit = cfg->limits[i].max;
    }
}

static int type_has_room(const struct pool_type *ty)
{
    return ty == NULL || ty->limit <= 0 || ty->running < ty->limit;
}

/* ---- Workers ------------------------------------------------------------ */

/* Unlink and return the first queued task whose type has room. */
static struct task *queue_pick(struct pool *pool)
{
    struct task *prev = NULL;

    for (struct task *t = pool->qhead; t != NULL; prev = t, t = t->next) {
        struct pool_type *ty = type_of(pool, t);
        /* A task cancelled while it waited never runs its handler, so it
         * need not wait for its type: it goes out at once, uncounted. */
        int bypass = atomic_load(&t->cancel) != TASK_CANCEL_NONE;
        if (!bypass && !type_has_room(ty))
            continue;
        if (prev != NULL)
            prev->next = t->next;
        else
            pool->qhead = t->next;
        if (pool->qtail == t)
            pool->qtail = prev;
        t->next = NULL;
        if (ty != NULL) {
            ty->waiting--;
            if (bypass)
                t->pool_type = -1; /* not counted as running its type */
            else
                ty->running++;
        }
        pool->waiting--;
        if (++pool->running > pool->max_running_seen)
            pool->max_running_seen = pool->running;
        return t;
    }
    return NULL;
}

/* ---- Threads (mu held) ---------------------------------------------------- */

static void *worker_main(void *arg);

/* Start the next thread; -1 when the system refuses (errno-style code in
 * *err). The new thread waits for mu before it looks at the queue. */
static int start_thread(struct pool *pool, int *err)
{
    struct pool_thread *th = &pool->threads[pool->nthreads];
    *th = (struct pool_thread){.pool = pool, .index = pool->nthreads};
    pthread_cond_init(&th->cv, NULL);
    *err = pthread_create(&th->tid, NULL, worker_main, th);
    if (*err != 0) {
        pthread_cond_destroy(&th->cv);
        return -1;
    }
    pool->nthreads++;
    return 0;
}

/* Wait on the idle stack until a waker takes this thread off it, or the
 * pool stops. */
static void wait_idle(struct pool *pool, struct pool_thread *th)
{
    th->idle = 1;
    pool->idle[pool->nidle++] = th;
    while (th->idle && !pool->stopping)
        pthread_cond_wait(&th->cv, &pool->mu);
    if (th->idle) { /* stopping: off the stack by itself */
        for (int i = 0; i < pool->nidle; i++) {
            if (pool->idle[i] == th) {
                pool->idle[i] = pool->idle[--pool->nidle];
                break;
            }
        }
        th->idle = 0;
    }
}

/* Wake the thread that went idle last; 0 when none is idle. */
static int wake_one(struct pool *pool)
{
    if (pool->nidle == 0)
        return 0;
    struct pool_thread *th = pool->idle[--pool->nidle];
    th->idle = 0;
    pthread_cond_signal(&th->cv);
    return 1;
}

/* Provide threads for n more queued tasks that can start now: wake up to
 * n idle threads, the one idle last first; count on the first thread when
 * it has not looked at the queue yet; start the rest, up to the slots.
 * Returns the error of a start that failed and was not told yet (to log
 * after unlocking, see unlock_telling()), else 0: a failure is told once
 * until a start succeeds, and a call that starts nothing leaves that be. */
static int provide(struct pool *pool, int n)
{
    while (n > 0 && wake_one(pool))
        n--;
    if (n > 0 && pool->first_coming) {
        pool->first_coming = 0; /* it takes one when it first looks */
        n--;
    }
    if (n <= 0 || pool->nthreads >= pool->maxthreads)
        return 0;
    int err = 0;
    while (n-- > 0 && pool->nthreads < pool->maxthreads && start_thread(pool, &err) == 0)
        ;
    int told = pool->start_failed;
    pool->start_failed = err != 0;
    return err != 0 && !told ? err : 0;
}

/* Unlock mu, then log the failed start provide() returned (0: none). */
static void unlock_telling(struct pool *pool, int err)
{
    int n = pool->nthreads;
    pthread_mutex_unlock(&pool->mu);
    if (err != 0)
        log_warn("pool: cannot start worker thread %d of %d (%s): queued tasks wait for a running "
                 "one; told once until a start succeeds",
                 n + 1, pool->maxthreads, strerror(err));
}

/* How many queued tasks could start now, each type counted up to its room
 * (mu held). A cancel or a limit change compares this before and after to
 * know how many tasks it lets start: those had no thread provided. */
static int count_startable(struct pool *pool)
{
    for (size_t i = 0; i < pool->ntypes; i++)
        pool->types[i].counted = 0;
    int n = 0;
    for (struct task *t = pool->qhead; t != NULL; t = t->next) {
        struct pool_type *ty = type_of(pool, t);
        if (atomic_load(&t->cancel) != TASK_CANCEL_NONE || ty == NULL || ty->limit <= 0) {
            n++; /* a cancelled task goes out at once, uncounted */
        } else if (ty->running + ty->counted < ty->limit) {
            ty->counted++;
            n++;
        }
    }
    return n;
}

/* Run one task with mu released; returns with mu held again. */
static void worker_run(struct pool_thread *th, struct task *t)
{
    struct pool *pool = th->pool;
    th->current = t;
    th->since = now_mono();
    pthread_mutex_unlock(&pool->mu);
    if (pool->start_hook != NULL)
        pool->start_hook(pool->start_arg, t);
    plugin_run(t);
    pthread_mutex_lock(&pool->mu);
    th->current = NULL;
    th->since = now_mono();

    struct pool_type *ty = type_of(pool, t);
    if (ty != NULL)
        ty->running--;
    pool->running--;
    /* No other thread is woken: a task that the freed type slot lets start
     * is taken by this thread, which looks at the queue again right after
     * posting the DONE (docs/benchmarks.md: a broadcast here woke every
     * idle thread once per task, 64 futex wake-ups at 64 slots). */
    pthread_mutex_unlock(&pool->mu);
    evq_post_done(pool->evq, t); /* t belongs to the loop from here */
    pthread_mutex_lock(&pool->mu);
}

static void *worker_main(void *arg)
{
    struct pool_thread *th = arg;
    struct pool *pool = th->pool;
    char name[16];

    snprintf(name, sizeof(name), "avt-worker-%d", th->index);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&pool->mu);
    th->since = now_mono();
    while (!pool->stopping) {
        struct task *t = queue_pick(pool);
        if (t != NULL) {
            worker_run(th, t);
        } else {
            pool->first_coming = 0;
            wait_idle(pool, th);
        }
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* ---- Life cycle --------------------------------------------------------- */

/* Stop every started thread and join it (no thread starts once stopping
 * is set: pool_submit() is the loop thread's, and so is this). */
static void stop_threads(struct pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    pool->stopping = 1;
    int n = pool->nthreads;
    for (int i = 0; i < n; i++)
        pthread_cond_signal(&pool->threads[i].cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < n; i++)
        pthread_join(pool->threads[i].tid, NULL);
}

struct pool *pool_create(const struct cfg *cfg, struct evq *evq)
{
    struct pool *pool = xcalloc(1, sizeof(*pool));
    int n = cfg != NULL && cfg->max_concurrent_tasks > 0 ? cfg->max_concurrent_tasks : 1;

    pthread_mutex_init(&pool->mu, NULL);
    pool->evq = evq;
    pool->maxthreads = n;
    pool->threads = xcalloc((size_t)n, sizeof(*pool->threads));
    pool->idle = xcalloc((size_t)n, sizeof(*pool->idle));
    apply_limits(pool, cfg);
    int err;
    pthread_mutex_lock(&pool->mu);
    int rc = start_thread(pool, &err);
    pool->first_coming = rc == 0;
    pthread_mutex_unlock(&pool->mu);
    if (rc < 0) {
        log_err("pool: cannot start a worker thread: %s", strerror(err));
        pool_destroy(pool);
        return NULL;
    }
    return pool;
}

void pool_destroy(struct pool *pool)
{
    if (pool == NULL)
        return;
    stop_threads(pool);
    /* No thread runs now: what is left needs no lock. */
    while (pool->qhead != NULL) {
        struct task *t = pool->qhead;
        pool->qhead = t->next;
        task_set_failure(t, AVT_TRANSIENT_ERROR, "worker shutting down");
        task_destroy(t);
    }
    for (size_t i = 0; i < pool->ntypes; i++)
        free(pool->types[i].name);
    free(pool->types);
    for (int i = 0; i < pool->nthreads; i++)
        pthread_cond_destroy(&pool->threads[i].cv);
    free(pool->threads);
    free(pool->idle);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}

/* ---- Loop thread -------------------------------------------------------- */

int pool_submit(struct pool *pool, struct task *t)
{
    if (pool->inflight >= pool->maxthreads)
        return -EBUSY;
    pool->inflight++;
    t->evq = pool->evq;
    t->next = NULL;
    pthread_mutex_lock(&pool->mu);
    t->pool_type = type_get(pool, t->type, 0);
    struct pool_type *ty = type_of(pool, t);
    if (ty != NULL)
        ty->waiting++;
    pool->waiting++;
    if (pool->qtail != NULL)
        pool->qtail->next = t;
    else
        pool->qhead = t;
    pool->qtail = t;
    unlock_telling(pool, provide(pool, 1));
    return 0;
}

void pool_release(struct pool *pool)
{
    if (pool->inflight > 0)
        pool->inflight--;
}

int pool_free_slots(const struct pool *pool)
{
    return pool->maxthreads - pool->inflight;
}

int pool_type_has_room(struct pool *pool, const char *type)
{
    pthread_mutex_lock(&pool->mu);
    const struct pool_type *ty = type_find(pool, type);
    int room = ty == NULL || ty->limit <= 0 || ty->running + ty->waiting < ty->limit;
    pthread_mutex_unlock(&pool->mu);
    return room;
}

/* ---- Any thread --------------------------------------------------------- */

void pool_cancel(struct pool *pool, struct task *t, int reason)
{
    pthread_mutex_lock(&pool->mu);
    int before = count_startable(pool);
    task_cancel(t, (enum task_cancel)reason); /* a queued task may start now */
    unlock_telling(pool, provide(pool, count_startable(pool) - before));
}

void pool_set_start_hook(struct pool *pool, pool_start_fn fn, void *arg)
{
    pool->start_hook = fn;
    pool->start_arg = arg;
}

void pool_get_stats(struct pool *pool, struct pool_stats *st)
{
    pthread_mutex_lock(&pool->mu);
    st->threads = pool->maxthreads;
    st->started = pool->nthreads;
    st->idle = pool->nidle;
    st->inflight = pool->inflight;
    st->running = pool->running;
    st->waiting = pool->waiting;
    st->max_running_seen = pool->max_running_seen;
    pthread_mutex_unlock(&pool->mu);
}

size_t pool_get_type_stats(struct pool *pool, struct pool_type_stats *out, size_t n)
{
    size_t i;

    pthread_mutex_lock(&pool->mu);
    for (i = 0; i < n && i < pool->ntypes; i++) {
        out[i] = (struct pool_type_stats){.type = pool->types[i].name,
                                          .limit = pool->types[i].limit,
                                          .running = pool->types[i].running,
                                          .waiting = pool->types[i].waiting};
    }
    pthread_mutex_unlock(&pool->mu);
    return i;
}

static void copy_str(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src != NULL ? src : "");
}

size_t pool_get_threads(struct pool *pool, struct pool_thread_info *out, size_t n)
{
    size_t i;

    pthread_mutex_lock(&pool->mu);
    for (i = 0; i < n && i < (size_t)pool->nthreads; i++) {
        const struct pool_thread *th = &pool->threads[i];
        const struct task *t = th->current;
        out[i] = (struct pool_thread_info){.index = th->index, .since = th->since};
        if (t == NULL)
            continue;
        out[i].busy = 1;
        out[i].task = th->current;
        out[i].cancel = atomic_load(&t->cancel);
        copy_str(out[i].task_id, sizeof(out[i].task_id), t->id);
        copy_str(out[i].job_id, sizeof(out[i].job_id), t->job_id);
        copy_str(out[i].type, sizeof(out[i].type), t->type);
        copy_str(out[i].plugin, sizeof(out[i].plugin), t->plugin ? t->plugin->name : NULL);
    }
    pthread_mutex_unlock(&pool->mu);
    return i;
}

void pool_set_limits(struct pool *pool, const struct cfg *cfg)
{
    pthread_mutex_lock(&pool->mu);
    int before = count_startable(pool);
    apply_limits(pool, cfg); /* a raised limit may let queued tasks start */
    unlock_telling(pool, provide(pool, count_startable(pool) - before));
}
