/*
 * test_pool.c - the worker pool: global and per-type limits under load
 * (handlers record how many of their type run at once), every task
 * completed exactly once, tasks waiting for their type starting when
 * another finishes, no head-of-line blocking, progress coalescing and its
 * ordering before DONE, hot-cache events, raising a limit at run time,
 * threads started as tasks need them (and a start the system refuses:
 * pthread_create() is wrapped at link time, -Wl,--wrap), thread names,
 * and destroying a pool that still holds queued tasks. The
 * test's main thread plays the loop thread; the pool's notify function
 * signals a condition variable instead of libev.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "evq.h"
#include "host.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "task.h"
#include "util.h"

/* pthread_create() as the pool sees it (linked with
 * -Wl,--wrap=pthread_create): refused with EAGAIN while `refuse_starts` is
 * set, as the system does at its thread limit (TasksMax=, RLIMIT_NPROC). */
int __real_pthread_create(pthread_t *tid, const pthread_attr_t *attr, void *(*fn)(void *),
                          void *arg);
int __wrap_pthread_create(pthread_t *tid, const pthread_attr_t *attr, void *(*fn)(void *),
                          void *arg);
static atomic_int refuse_starts, refused;

int __wrap_pthread_create(pthread_t *tid, const pthread_attr_t *attr, void *(*fn)(void *),
                          void *arg)
{
    if (atomic_load(&refuse_starts)) {
        atomic_fetch_add(&refused, 1);
        return EAGAIN;
    }
    return __real_pthread_create(tid, attr, fn, arg);
}

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    return s * (m != NULL && atof(m) > 0 ? atof(m) : 1);
}

/* ---- The fake loop: notify() signals, loop_wait() waits ---------------- */

static pthread_mutex_t loop_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t loop_cv = PTHREAD_COND_INITIALIZER;
static unsigned long notified, seen;

static void fake_notify(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&loop_mu);
    notified++;
    pthread_cond_broadcast(&loop_cv);
    pthread_mutex_unlock(&loop_mu);
}

static struct timespec deadline_in(double s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)tmo(s);
    return ts;
}

/* Wait for a notification since the last call; -ETIMEDOUT after 10 s. */
static int loop_wait(void)
{
    struct timespec ts = deadline_in(10);
    int rc = 0;

    pthread_mutex_lock(&loop_mu);
    while (notified == seen && rc == 0)
        rc = pthread_cond_timedwait(&loop_cv, &loop_mu, &ts);
    seen = notified;
    pthread_mutex_unlock(&loop_mu);
    return rc == 0 ? 0 : -ETIMEDOUT;
}

/* ---- A gate handlers wait at ------------------------------------------ */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_arrived;

static void gate_reset(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 0;
    gate_arrived = 0;
    pthread_mutex_unlock(&gate_mu);
}

static void gate_pass(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_arrived++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void gate_set_open(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* Wait until n handlers arrived at the gate; 0 or -ETIMEDOUT. */
static int gate_wait_arrived(int n)
{
    struct timespec ts = deadline_in(10);
    int rc = 0;

    pthread_mutex_lock(&gate_mu);
    while (gate_arrived < n && rc == 0)
        rc = pthread_cond_timedwait(&gate_cv, &gate_mu, &ts);
    pthread_mutex_unlock(&gate_mu);
    return rc == 0 ? 0 : -ETIMEDOUT;
}

/* ---- The fake plugin -------------------------------------------------- */

enum { T_A, T_B, T_C, T_GATE, T_NTYPES };
static const char *const type_names[T_NTYPES] = {"a", "b", "c", "gate"};
static atomic_int cur[T_NTYPES], peak[T_NTYPES], cur_all, peak_all;

static int type_index(const char *type)
{
    for (int i = 0; i < T_NTYPES; i++) {
        if (strcmp(type, type_names[i]) == 0)
            return i;
    }
    return -1;
}

static void peak_update(atomic_int *p, int v)
{
    int old = atomic_load(p);
    while (v > old && !atomic_compare_exchange_weak(p, &old, v))
        ;
}

static void counters_reset(void)
{
    for (int i = 0; i < T_NTYPES; i++) {
        atomic_store(&cur[i], 0);
        atomic_store(&peak[i], 0);
    }
    atomic_store(&cur_all, 0);
    atomic_store(&peak_all, 0);
}

static int h_progress(struct avt_task *task)
{
    for (int i = 1; i <= 100; i++)
        avt_progress(task, i, "step %d", i);
    gate_pass();
    avt_progress(task, 50, "final");
    return avt_succeed(task, NULL);
}

static int h_hotcache(struct avt_task *task)
{
    const struct avt_host *h = task->host;
    h->hot_cache_add(h, "m1");
    h->hot_cache_remove(h, "m1");
    h->hot_cache_add(h, "m2");
    return avt_succeed(task, NULL);
}

static int fake_handle(void *state, struct avt_task *task)
{
    (void)state;
    if (strcmp(task->type, "progress") == 0)
        return h_progress(task);
    if (strcmp(task->type, "hotcache") == 0)
        return h_hotcache(task);
    int ti = type_index(task->type);
    if (ti < 0)
        return avt_fail(task, "TEST", "unexpected type %s", task->type);
    peak_update(&peak[ti], atomic_fetch_add(&cur[ti], 1) + 1);
    peak_update(&peak_all, atomic_fetch_add(&cur_all, 1) + 1);
    if (ti == T_GATE) {
        gate_pass();
    } else {
        long us = (long)json_integer_value(json_object_get(task->params, "us"));
        struct timespec ts = {0, us * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_fetch_sub(&cur_all, 1);
    atomic_fetch_sub(&cur[ti], 1);
    return avt_succeed(task, json_pack("{s:O}", "i", json_object_get(task->params, "i")));
}

static const char *const fake_types[] = {"a", "b", "c", "gate", "progress", "hotcache", NULL};
static const struct avt_plugin fake_desc = {
    .abi_version = AVT_ABI_VERSION,
    .struct_size = sizeof(struct avt_plugin),
    .name = "fake",
    .version = "1",
    .task_types = fake_types,
    .handle = fake_handle,
};
static struct plugin fake_plugin;
static char fake_name[] = "fake";

static struct task *new_task(const char *type, int i, long us)
{
    char id[32];
    snprintf(id, sizeof(id), "t%d", i);
    struct task *t = task_create(id, id, type, json_pack("{s:i,s:i}", "i", i, "us", (int)us));
    t->plugin = &fake_plugin;
    return t;
}

/* A cfg with N threads and [limits] a = 2, b = 1, gate = 1 (c: none). */
static char s_a[] = "a", s_b[] = "b", s_gate[] = "gate";
static struct cfg_limit limits[] = {{s_a, 2, 0}, {s_b, 1, 0}, {s_gate, 1, 0}};

static struct cfg make_cfg(int n)
{
    struct cfg c;
    memset(&c, 0, sizeof(c));
    c.max_concurrent_tasks = n;
    c.limits = limits;
    c.nlimits = ARRAY_LEN(limits);
    return c;
}

/* The worker-to-loop queue of the pool under test (one at a time). */
static struct evq *evq;

static struct pool *new_pool_with(struct cfg c)
{
    evq_destroy(evq);
    evq = evq_create(fake_notify, NULL);
    struct pool *pool = pool_create(&c, evq);
    /* Written before any task is submitted: pool_submit() publishes it. */
    host_init(&fake_plugin.host, fake_name, evq);
    fake_plugin.desc = &fake_desc;
    fake_plugin.name = fake_name;
    pthread_mutex_lock(&loop_mu);
    seen = notified;
    pthread_mutex_unlock(&loop_mu);
    counters_reset();
    gate_reset();
    return pool;
}

static struct pool *new_pool(int n)
{
    return new_pool_with(make_cfg(n));
}

/* Handle all events; returns the number of DONE events (tasks freed,
 * slots released). `done_by_index` counts completions per task. */
static int drain_events(struct pool *pool, int *done_by_index, int nidx)
{
    int done = 0;
    struct evq_event *ev = evq_take(evq), *next;

    for (; ev != NULL; ev = next) {
        next = ev->next;
        if (ev->kind == EVQ_DONE) {
            struct task *t = ev->task;
            EXPECT_EQ_STR(t->status, "success");
            int i = (int)json_integer_value(json_object_get(t->data, "i"));
            if (done_by_index != NULL && i >= 0 && i < nidx)
                done_by_index[i]++;
            task_destroy(t);
            pool_release(pool);
            done++;
        }
        evq_event_free(ev);
    }
    return done;
}

/* Wait for the DONE of a task cancelled while it waited, which comes while
 * the tasks that run hold their threads; check and free it. */
static void take_cancelled(struct pool *pool, struct task *want)
{
    int found = 0;
    while (!found && loop_wait() == 0) {
        for (struct evq_event *ev = evq_take(evq), *next; ev != NULL; ev = next) {
            next = ev->next;
            if (ev->kind == EVQ_DONE) {
                EXPECT(ev->task == want);
                EXPECT_EQ_STR(ev->task->status, "cancelled");
                task_destroy(ev->task);
                pool_release(pool);
                found = 1;
            }
            evq_event_free(ev);
        }
    }
    EXPECT(found);
}

/* ---- Tests ------------------------------------------------------------ */

TEST(limits_hold_under_load_and_every_task_completes_once)
{
    enum { NTASKS = 400, N = 6 };
    static int done_by_index[NTASKS];
    struct pool *pool = new_pool(N);
    unsigned seed = 7;
    int submitted = 0, done = 0;

    ASSERT(pool != NULL);
    memset(done_by_index, 0, sizeof(done_by_index));
    while (done < NTASKS) {
        while (submitted < NTASKS && pool_free_slots(pool) > 0) {
            /* Mostly a and b, so both sit at their limits with tasks waiting. */
            int r = rand_r(&seed) % 10;
            const char *type = r < 4 ? "a" : r < 8 ? "b" : "c";
            struct task *t = new_task(type, submitted, rand_r(&seed) % 300);
            EXPECT_EQ_INT(pool_submit(pool, t), 0);
            submitted++;
        }
        struct pool_stats st;
        pool_get_stats(pool, &st);
        EXPECT(st.running <= N && st.inflight <= N);
        if (loop_wait() < 0) {
            TAP_FAIL_("no progress after %d of %d tasks", done, NTASKS);
            break;
        }
        done += drain_events(pool, done_by_index, NTASKS);
    }
    for (int i = 0; i < NTASKS; i++) {
        if (done_by_index[i] != 1)
            TAP_FAIL_("task %d completed %d times", i, done_by_index[i]);
    }
    EXPECT(atomic_load(&peak[T_A]) <= 2);
    EXPECT(atomic_load(&peak[T_B]) <= 1);
    EXPECT(atomic_load(&peak_all) <= N);
    /* The limits were actually reached: the test can see an overrun. */
    EXPECT_EQ_INT(atomic_load(&peak[T_A]), 2);
    EXPECT_EQ_INT(atomic_load(&peak[T_B]), 1);
    struct pool_stats st;
    pool_get_stats(pool, &st);
    EXPECT(st.max_running_seen <= N && st.max_running_seen >= 3);
    EXPECT_EQ_INT(st.inflight, 0);
    EXPECT_EQ_INT(st.running, 0);
    EXPECT_EQ_INT(st.waiting, 0);
    EXPECT_EQ_INT(pool_free_slots(pool), N);
    pool_destroy(pool);
}

TEST(submit_without_a_free_slot_is_refused)
{
    struct pool *pool = new_pool(2);
    struct task *t[3];

    ASSERT(pool != NULL);
    for (int i = 0; i < 3; i++)
        t[i] = new_task("gate", i, 0);
    EXPECT_EQ_INT(pool_submit(pool, t[0]), 0);
    EXPECT_EQ_INT(pool_submit(pool, t[1]), 0);
    EXPECT_EQ_INT(pool_free_slots(pool), 0);
    EXPECT_EQ_INT(pool_submit(pool, t[2]), -EBUSY);
    task_destroy(t[2]);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    gate_set_open();
    int done = 0;
    while (done < 2 && loop_wait() == 0)
        done += drain_events(pool, NULL, 0);
    EXPECT_EQ_INT(done, 2);
    EXPECT_EQ_INT(pool_free_slots(pool), 2);
    pool_destroy(pool);
}

TEST(waiting_task_starts_when_its_type_frees_and_does_not_block_others)
{
    struct pool *pool = new_pool(4);
    struct pool_stats st;
    struct pool_type_stats ts[8];

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_type_has_room(pool, "gate"), 1);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 1, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    EXPECT_EQ_INT(pool_type_has_room(pool, "gate"), 0);
    EXPECT_EQ_INT(pool_type_has_room(pool, "c"), 1);
    /* A task of another type behind the waiting one runs at once. */
    EXPECT_EQ_INT(pool_submit(pool, new_task("c", 2, 0)), 0);
    int done = 0;
    while (done < 1 && loop_wait() == 0)
        done += drain_events(pool, NULL, 0);
    EXPECT_EQ_INT(done, 1);
    pool_get_stats(pool, &st);
    EXPECT_EQ_INT(st.running, 1);
    EXPECT_EQ_INT(st.waiting, 1);
    EXPECT_EQ_INT(st.inflight, 2);
    size_t n = pool_get_type_stats(pool, ts, ARRAY_LEN(ts));
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ts[i].type, "gate") == 0) {
            found = 1;
            EXPECT_EQ_INT(ts[i].limit, 1);
            EXPECT_EQ_INT(ts[i].running, 1);
            EXPECT_EQ_INT(ts[i].waiting, 1);
        }
    }
    EXPECT(found);
    EXPECT(n >= 4); /* a, b, gate from the limits, c seen */
    EXPECT_EQ_INT(atomic_load(&peak[T_GATE]), 1);
    gate_set_open();
    while (done < 3 && loop_wait() == 0)
        done += drain_events(pool, NULL, 0);
    EXPECT_EQ_INT(done, 3);
    EXPECT_EQ_INT(atomic_load(&peak[T_GATE]), 1);
    EXPECT_EQ_INT(pool_type_has_room(pool, "gate"), 1);
    pool_destroy(pool);
}

TEST(raising_a_limit_lets_a_waiting_task_start)
{
    struct pool *pool = new_pool(3);

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 1, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    static char s_gate2[] = "gate";
    struct cfg_limit raised[] = {{s_gate2, 2, 0}};
    struct cfg c = make_cfg(3);
    c.limits = raised;
    c.nlimits = 1;
    pool_set_limits(pool, &c);
    EXPECT_EQ_INT(gate_wait_arrived(2), 0);
    EXPECT_EQ_INT(atomic_load(&peak[T_GATE]), 2);
    gate_set_open();
    int done = 0;
    while (done < 2 && loop_wait() == 0)
        done += drain_events(pool, NULL, 0);
    EXPECT_EQ_INT(done, 2);
    pool_destroy(pool);
}

TEST(a_task_cancelled_while_waiting_finishes_at_once)
{
    struct pool *pool = new_pool(3);
    struct task *waiting = new_task("gate", 1, 0);

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(pool_submit(pool, waiting), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    pool_cancel(pool, waiting, TASK_CANCEL_ORCHESTRATOR);
    take_cancelled(pool, waiting); /* while the first task holds the type's slot */
    struct pool_stats st;
    pool_get_stats(pool, &st);
    EXPECT_EQ_INT(st.running, 1);
    EXPECT_EQ_INT(st.waiting, 0);
    EXPECT_EQ_INT(pool_type_has_room(pool, "gate"), 0);
    gate_set_open();
    int done = 0;
    while (done < 1 && loop_wait() == 0)
        done += drain_events(pool, NULL, 0);
    EXPECT_EQ_INT(done, 1);
    pool_get_stats(pool, &st);
    EXPECT_EQ_INT(st.running, 0);
    EXPECT_EQ_INT(pool_type_has_room(pool, "gate"), 1);
    EXPECT_EQ_INT(gate_arrived, 1);
    pool_destroy(pool);
}

TEST(progress_is_coalesced_and_comes_before_done)
{
    struct pool *pool = new_pool(2);

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("progress", 0, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    /* 100 updates while the loop looked away: one event, the last value. */
    struct evq_event *ev = evq_take(evq);
    ASSERT(ev != NULL);
    EXPECT_EQ_INT(ev->kind, EVQ_PROGRESS);
    EXPECT(ev->percent == 100.0);
    EXPECT_EQ_STR(ev->message, "step 100");
    EXPECT(ev->next == NULL);
    EXPECT(evq_take(evq) == NULL);
    evq_event_free(ev);
    gate_set_open();

    int done = 0, progress_after = 0;
    while (!done && loop_wait() == 0) {
        struct evq_event *next;
        for (ev = evq_take(evq); ev != NULL; ev = next) {
            next = ev->next;
            if (ev->kind == EVQ_PROGRESS) {
                EXPECT(!done);
                EXPECT(ev->percent == 50.0);
                EXPECT_EQ_STR(ev->message, "final");
                progress_after++;
            } else if (ev->kind == EVQ_DONE) {
                task_destroy(ev->task);
                pool_release(pool);
                done = 1;
            }
            evq_event_free(ev);
        }
    }
    EXPECT_EQ_INT(done, 1);
    EXPECT_EQ_INT(progress_after, 1);
    pool_destroy(pool);
}

TEST(hot_cache_changes_arrive_in_order)
{
    struct pool *pool = new_pool(1);
    static const struct {
        enum evq_kind kind;
        const char *name;
    } want[] = {{EVQ_HOTCACHE_ADD, "m1"},
                {EVQ_HOTCACHE_REMOVE, "m1"},
                {EVQ_HOTCACHE_ADD, "m2"},
                {EVQ_DONE, NULL}};
    size_t got = 0;

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("hotcache", 0, 0)), 0);
    while (got < ARRAY_LEN(want) && loop_wait() == 0) {
        struct evq_event *ev = evq_take(evq), *next;
        for (; ev != NULL; ev = next, got++) {
            next = ev->next;
            if (got < ARRAY_LEN(want)) {
                EXPECT_EQ_INT(ev->kind, want[got].kind);
                if (want[got].name != NULL)
                    EXPECT_EQ_STR(ev->name, want[got].name);
            }
            if (ev->kind == EVQ_DONE) {
                task_destroy(ev->task);
                pool_release(pool);
            }
            evq_event_free(ev);
        }
    }
    EXPECT_EQ_INT(got, ARRAY_LEN(want));
    pool_destroy(pool);
}

/* Number of this process's threads whose name starts with prefix. */
static int threads_named(const char *prefix)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL) {
        char path[300], comm[32] = "";
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
        FILE *fp = fopen(path, "r");
        if (fp == NULL)
            continue;
        if (fgets(comm, sizeof(comm), fp) != NULL && strncmp(comm, prefix, strlen(prefix)) == 0)
            n++;
        fclose(fp);
    }
    closedir(d);
    return n;
}

static int wait_threads_named(const char *prefix, int n)
{
    double end = now_mono() + tmo(10);
    while (threads_named(prefix) != n) {
        if (now_mono() > end)
            return -ETIMEDOUT;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static struct pool_stats stats(struct pool *pool)
{
    struct pool_stats st;
    pool_get_stats(pool, &st);
    return st;
}

/* Wait until the pool has n idle threads; 0 or -ETIMEDOUT. */
static int wait_idle_threads(struct pool *pool, int n)
{
    double end = now_mono() + tmo(10);
    while (stats(pool).idle != n) {
        if (now_mono() > end)
            return -ETIMEDOUT;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Wait for n DONE events and handle them; 0 or -ETIMEDOUT. */
static int finish(struct pool *pool, int n)
{
    int done = 0;
    while (done < n) {
        if (loop_wait() < 0)
            return -ETIMEDOUT;
        done += drain_events(pool, NULL, 0);
    }
    return 0;
}

TEST(threads_start_as_tasks_need_them_named_and_joined)
{
    struct cfg c = make_cfg(3);
    c.nlimits = 0; /* "gate" without a limit: three can wait at it */
    struct pool *pool = new_pool_with(c);
    ASSERT(pool != NULL);
    /* One thread at once, the slots all there. */
    EXPECT_EQ_INT(wait_threads_named("avt-worker-", 1), 0);
    EXPECT_EQ_INT(stats(pool).started, 1);
    EXPECT_EQ_INT(stats(pool).threads, 3);
    EXPECT_EQ_INT(pool_free_slots(pool), 3);
    /* Each task that finds no idle thread starts one. */
    for (int i = 0; i < 3; i++) {
        EXPECT_EQ_INT(pool_submit(pool, new_task("gate", i, 0)), 0);
        EXPECT_EQ_INT(gate_wait_arrived(i + 1), 0);
        EXPECT_EQ_INT(stats(pool).started, i + 1);
    }
    EXPECT_EQ_INT(wait_threads_named("avt-worker-", 3), 0);
    EXPECT_EQ_INT(threads_named("avt-worker-2"), 1);
    gate_set_open();
    EXPECT_EQ_INT(finish(pool, 3), 0);
    pool_destroy(pool);
    /* Joined; the kernel drops a thread's /proc entry a moment after the
     * join returns, so wait for the entries rather than read them once. */
    EXPECT_EQ_INT(wait_threads_named("avt-worker-", 0), 0);
}

TEST(an_idle_thread_takes_the_next_task)
{
    struct pool *pool = new_pool(8);
    ASSERT(pool != NULL);
    gate_set_open();
    for (int i = 0; i < 20; i++) {
        EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
        EXPECT_EQ_INT(pool_submit(pool, new_task("c", i, 0)), 0);
        EXPECT_EQ_INT(finish(pool, 1), 0);
    }
    /* Twenty tasks one after another, each given to the idle thread: no
     * other thread was started for them. */
    EXPECT_EQ_INT(stats(pool).started, 1);
    pool_destroy(pool);
}

/* Opens the gate once the idle worker thread has exited, i.e. once
 * pool_destroy() has told the threads to stop. */
static void *open_gate_when_stopping(void *arg)
{
    (void)arg;
    if (wait_threads_named("avt-worker-", 1) < 0)
        fprintf(stderr, "# the idle worker never exited\n");
    gate_set_open();
    return NULL;
}

/* With every started thread busy and a slot free, a change that lets a
 * queued task start without a submit (a cancel, a raised limit) starts the
 * threads it needs. */
TEST(a_task_cancelled_while_every_started_thread_is_busy_finishes_at_once)
{
    struct pool *pool = new_pool(3);
    struct task *waiting = new_task("gate", 1, 0);
    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    EXPECT_EQ_INT(pool_submit(pool, waiting), 0); /* starts a thread, which idles */
    EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("progress", 2, 0)), 0); /* takes that thread */
    EXPECT_EQ_INT(gate_wait_arrived(2), 0);
    EXPECT_EQ_INT(stats(pool).idle, 0);
    EXPECT_EQ_INT(stats(pool).started, 2);
    pool_cancel(pool, waiting, TASK_CANCEL_ORCHESTRATOR);
    take_cancelled(pool, waiting); /* while both started threads wait at the gate */
    EXPECT_EQ_INT(stats(pool).started, 3);
    gate_set_open();
    EXPECT_EQ_INT(finish(pool, 2), 0);
    pool_destroy(pool);
}

TEST(raising_a_limit_starts_threads_for_every_task_it_lets_start)
{
    struct pool *pool = new_pool(4);
    ASSERT(pool != NULL);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 1, 0)), 0); /* starts a thread, which idles */
    EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 2, 0)), 0); /* wakes it; it idles again */
    EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
    EXPECT_EQ_INT(stats(pool).started, 2); /* one thread idle, two tasks waiting */
    static char s_gate3[] = "gate";
    struct cfg_limit raised[] = {{s_gate3, 3, 0}};
    struct cfg c = make_cfg(4);
    c.limits = raised;
    c.nlimits = 1;
    pool_set_limits(pool, &c);
    EXPECT_EQ_INT(gate_wait_arrived(3), 0);
    EXPECT_EQ_INT(atomic_load(&peak[T_GATE]), 3);
    gate_set_open();
    EXPECT_EQ_INT(finish(pool, 3), 0);
    pool_destroy(pool);
}

/* stderr (the log) goes to a file while `fd` is not -1; end_capture()
 * restores it and counts the lines that hold `needle`. */
static int begin_capture(char *path, size_t n)
{
    snprintf(path, n, "/tmp/test_pool.log.XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    close(fd);
    return saved;
}

static int end_capture(int saved, const char *path, const char *needle)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fopen(path, "r");
    char line[512];
    int count = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        count += strstr(line, needle) != NULL;
    if (f != NULL)
        fclose(f);
    unlink(path);
    return count;
}

TEST(a_refused_thread_start_is_told_once_and_the_task_waits_for_a_running_one)
{
    static const char told[] = "cannot start worker thread";
    struct cfg c = make_cfg(4);
    c.nlimits = 0; /* "gate" without a limit: every task could run at once */
    struct pool *pool = new_pool_with(c);
    ASSERT(pool != NULL);
    char path[64];
    int saved = begin_capture(path, sizeof(path));
    ASSERT(saved >= 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0); /* the first thread */
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    atomic_store(&refuse_starts, 1);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 1, 0)), 0); /* refused: told */
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 2, 0)), 0); /* refused again: quiet */
    EXPECT_EQ_INT(atomic_load(&refused), 2);
    /* A reload that lets no queued task start (it limits "gate" to the one
     * running) attempts no start and does not make the next refusal told
     * again. */
    struct cfg one = make_cfg(4); /* "gate" limited to 1 */
    pool_set_limits(pool, &one);
    EXPECT_EQ_INT(atomic_load(&refused), 2);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 3, 0)), 0);
    EXPECT_EQ_INT(atomic_load(&refused), 3);
    EXPECT_EQ_INT(end_capture(saved, path, told), 1);
    EXPECT_EQ_INT(stats(pool).started, 1);
    /* The queued tasks wait for the running thread, which takes them one
     * after another once the gate opens. */
    gate_set_open();
    EXPECT_EQ_INT(finish(pool, 4), 0);
    EXPECT_EQ_INT(stats(pool).started, 1);
    /* A start that succeeds ends the quiet: the next refusal is told. The
     * only thread is idle first (its last DONE may come before it looks at
     * the queue again), so that the next task takes it. */
    pool_set_limits(pool, &c);
    atomic_store(&refuse_starts, 0);
    EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
    gate_reset();
    saved = begin_capture(path, sizeof(path));
    ASSERT(saved >= 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 4, 0)), 0);
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 5, 0)), 0); /* starts thread 2 */
    EXPECT_EQ_INT(gate_wait_arrived(2), 0);
    EXPECT_EQ_INT(stats(pool).started, 2);
    atomic_store(&refuse_starts, 1);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 6, 0)), 0); /* refused: told */
    atomic_store(&refuse_starts, 0);
    EXPECT_EQ_INT(end_capture(saved, path, told), 1);
    gate_set_open();
    EXPECT_EQ_INT(finish(pool, 3), 0);
    pool_destroy(pool);
}

TEST(destroy_waits_for_running_and_frees_queued_tasks)
{
    struct pool *pool = new_pool(2);
    pthread_t opener;

    ASSERT(pool != NULL);
    EXPECT_EQ_INT(wait_threads_named("avt-worker-", 1), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 0, 0)), 0);
    EXPECT_EQ_INT(pool_submit(pool, new_task("gate", 1, 0)), 0); /* waits for its type */
    EXPECT_EQ_INT(gate_wait_arrived(1), 0);
    /* The second task started a thread, which found it waiting for its
     * type and went idle: two threads, one idle, before the gate opener
     * starts counting. */
    EXPECT_EQ_INT(wait_idle_threads(pool, 1), 0);
    EXPECT_EQ_INT(wait_threads_named("avt-worker-", 2), 0);
    pthread_create(&opener, NULL, open_gate_when_stopping, NULL);
    /* The running task finishes (its DONE event is freed with the queue),
     * the queued one never starts; ASan checks that both are freed. */
    pool_destroy(pool);
    evq_destroy(evq);
    evq = NULL;
    pthread_join(opener, NULL);
    pthread_mutex_lock(&gate_mu);
    EXPECT_EQ_INT(gate_arrived, 1);
    pthread_mutex_unlock(&gate_mu);
    EXPECT_EQ_INT(atomic_load(&peak[T_GATE]), 1);
}

TEST(destroy_null_is_a_noop)
{
    pool_destroy(NULL);
    evq_destroy(NULL);
    evq_event_free(NULL);
}

TAP_MAIN()
