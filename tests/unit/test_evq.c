/*
 * test_evq.c - the worker-to-loop queue (evq.h). Progress of one task is
 * coalesced (at most one PROGRESS of a task queued; what evq_take() hands
 * out is the latest value and message, which always belong together), the
 * notify function runs once per event queued, custom events (payload
 * stolen) and hot-cache changes arrive in each thread's posting order, and
 * DONE hands the task over after all of its progress. Many threads post at
 * once for their own task and for one shared task while the main thread,
 * playing the loop, takes the events (run it under TSan too).
 * evq_destroy() frees the queued events and destroys the tasks of queued
 * DONE events (ASan's leak check tells), and the NULL cases are no-ops.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "evq.h"
#include "tap.h"
#include "task.h"
#include "util.h"

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    double f = m != NULL ? strtod(m, NULL) : 1.0;
    return s * (f > 0 ? f : 1.0);
}

/* ---- The fake loop: notify() counts and signals ------------------------ */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned long notified, seen;

static void on_notify(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    notified++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static unsigned long notify_count(void)
{
    pthread_mutex_lock(&mu);
    unsigned long n = notified;
    pthread_mutex_unlock(&mu);
    return n;
}

static void notify_reset(void)
{
    pthread_mutex_lock(&mu);
    notified = seen = 0;
    pthread_mutex_unlock(&mu);
}

/* Wait for a notification since the last call; 0, or -1 after `s`
 * seconds (scaled by TIMEOUT_MULT). */
static int wait_notified(double s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)tmo(s);
    int rc = 0;
    pthread_mutex_lock(&mu);
    while (notified == seen && rc == 0)
        rc = pthread_cond_timedwait(&cv, &mu, &ts);
    seen = notified;
    pthread_mutex_unlock(&mu);
    return rc == 0 ? 0 : -1;
}

static size_t list_len(const struct evq_event *ev)
{
    size_t n = 0;
    for (; ev != NULL; ev = ev->next)
        n++;
    return n;
}

static void free_list(struct evq_event *ev)
{
    while (ev != NULL) {
        struct evq_event *next = ev->next;
        evq_event_free(ev);
        ev = next;
    }
}

/* ---- One thread -------------------------------------------------------- */

TEST(progress_is_coalesced_and_the_latest_value_is_taken)
{
    notify_reset();
    struct evq *q = evq_create(on_notify, NULL);
    struct task *a = task_create("a", "a", "t", NULL), *b = task_create("b", "b", "t", NULL);
    evq_post_progress(q, a, 10, "ten");
    evq_post_progress(q, b, 5, "five");
    evq_post_progress(q, a, 20, "twenty");
    evq_post_progress(q, a, 30, NULL); /* the message goes too */
    EXPECT_EQ_INT(notify_count(), 2);  /* one per event queued, not per call */

    struct evq_event *list = evq_take(q);
    ASSERT(list_len(list) == 2);
    EXPECT(list->kind == EVQ_PROGRESS && list->task == a);
    EXPECT(list->percent == 30 && list->message == NULL);
    EXPECT(list->next->kind == EVQ_PROGRESS && list->next->task == b);
    EXPECT(list->next->percent == 5);
    EXPECT_EQ_STR(list->next->message, "five");
    free_list(list);
    EXPECT(evq_take(q) == NULL);

    /* Taken: the next value is a new event. */
    evq_post_progress(q, a, 40, "forty");
    evq_post_progress(q, a, 50, "fifty");
    EXPECT_EQ_INT(notify_count(), 3);
    list = evq_take(q);
    ASSERT(list_len(list) == 1);
    EXPECT(list->percent == 50);
    EXPECT_EQ_STR(list->message, "fifty");
    free_list(list);

    evq_destroy(q);
    task_destroy(a);
    task_destroy(b);
}

TEST(events_arrive_in_posting_order_and_done_comes_last)
{
    notify_reset();
    struct evq *q = evq_create(on_notify, NULL);
    struct task *t = task_create("t1", "j1", "t", NULL);
    json_t *payload = json_pack("{s:i}", "n", 1);
    json_incref(payload); /* our own reference, to see that the queue steals its one */
    evq_post_hotcache(q, 1, "model-a");
    evq_post_progress(q, t, 1, "one");
    evq_post_event(q, t, "step", payload);
    evq_post_hotcache(q, 0, "model-a");
    evq_post_progress(q, t, 2, "two"); /* coalesced into the first PROGRESS */
    evq_post_event(q, t, "step2", json_object());
    evq_post_done(q, t);
    EXPECT_EQ_INT(notify_count(), 6);

    struct evq_event *list = evq_take(q), *ev = list;
    const enum evq_kind want[] = {EVQ_HOTCACHE_ADD,    EVQ_PROGRESS, EVQ_EVENT,
                                  EVQ_HOTCACHE_REMOVE, EVQ_EVENT,    EVQ_DONE};
    ASSERT(list_len(list) == ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++, ev = ev->next)
        EXPECT_EQ_INT(ev->kind, want[i]);
    ev = list;
    EXPECT_EQ_STR(ev->name, "model-a");
    EXPECT(ev->task == NULL);
    ev = ev->next;
    EXPECT(ev->percent == 2);
    EXPECT_EQ_STR(ev->message, "two");
    ev = ev->next;
    EXPECT(ev->task == t && ev->payload == payload);
    EXPECT_EQ_STR(ev->name, "step");
    ev = ev->next;
    EXPECT_EQ_STR(ev->name, "model-a");
    ev = ev->next->next;
    EXPECT(ev->task == t); /* DONE: the task is the loop's now */
    free_list(list);       /* never frees a task */
    EXPECT_EQ_INT(payload->refcount, 1);
    json_decref(payload);
    task_destroy(t);
    evq_destroy(q);
}

TEST(without_a_notify_function_events_still_queue)
{
    struct evq *q = evq_create(NULL, NULL);
    struct task *t = task_create("t1", "j1", "t", NULL);
    evq_post_progress(q, t, 5, NULL);
    evq_post_hotcache(q, 1, "x");
    evq_post_done(q, t);
    struct evq_event *list = evq_take(q);
    EXPECT_EQ_INT(list_len(list), 3);
    free_list(list);
    task_destroy(t);
    evq_destroy(q);
}

TEST(destroy_frees_queued_events_and_the_tasks_of_done)
{
    struct evq *q = evq_create(on_notify, NULL);
    struct task *kept = task_create("kept", "j", "t", NULL);
    struct task *d1 = task_create("d1", "j", "t", NULL), *d2 = task_create("d2", "j", "t", NULL);
    evq_post_progress(q, kept, 10, "kept progress");
    evq_post_event(q, kept, "ev", json_pack("{s:s}", "big", "payload"));
    evq_post_hotcache(q, 1, "cache-name");
    evq_post_progress(q, d1, 50, "half way");
    evq_post_done(q, d1);
    evq_post_done(q, d2);
    /* The queue owns d1 and d2 now; kept is still ours. Leaks show
     * under ASan. */
    evq_destroy(q);
    task_destroy(kept);
    EXPECT(1);
}

TEST(null_is_a_no_op)
{
    evq_event_free(NULL);
    evq_destroy(NULL);
    struct evq *q = evq_create(on_notify, NULL);
    EXPECT(evq_take(q) == NULL);
    evq_destroy(q);
}

/* ---- Many threads ------------------------------------------------------- */

#define NTHREADS 8
#define NSTEPS 3000
#define EVENT_EVERY 10
#define CACHE_EVERY 50

struct poster {
    pthread_t th;
    int index;
    struct evq *q;
    struct task *own, *shared;
};

static void *poster_main(void *arg)
{
    struct poster *p = arg;
    char msg[64];
    for (int k = 1; k <= NSTEPS; k++) {
        snprintf(msg, sizeof(msg), "%d:%d", p->index, k);
        evq_post_progress(p->q, p->own, k, msg);
        evq_post_progress(p->q, p->shared, k, msg);
        if (k % EVENT_EVERY == 0)
            evq_post_event(p->q, p->own, "step", json_pack("{s:i, s:i}", "t", p->index, "k", k));
        if (k % CACHE_EVERY == 0) {
            snprintf(msg, sizeof(msg), "cache-%d-%d", p->index, k);
            evq_post_hotcache(p->q, (k / CACHE_EVERY) % 2, msg);
        }
    }
    evq_post_done(p->q, p->own); /* the loop owns p->own from here */
    return NULL;
}

/* What the loop has seen of each thread. */
struct seen_state {
    double last_progress[NTHREADS];
    int last_event[NTHREADS], last_cache[NTHREADS];
    int events, caches, progresses, dones, done[NTHREADS];
    double shared_last;
    int bad;
};

static int thread_of(struct poster *ps, const struct task *t)
{
    for (int i = 0; i < NTHREADS; i++) {
        if (ps[i].own == t)
            return i;
    }
    return -1;
}

/* The message "I:K" that came with percent K (from thread I when i >= 0). */
static int message_matches(const char *msg, double percent, int i)
{
    int mi, mk;
    if (msg == NULL || sscanf(msg, "%d:%d", &mi, &mk) != 2)
        return 0;
    return mk == (int)percent && (i < 0 || mi == i);
}

static void check_progress(struct seen_state *s, struct poster *ps, struct task *shared,
                           const struct evq_event *ev)
{
    s->progresses++;
    if (ev->task == shared) {
        if (!message_matches(ev->message, ev->percent, -1)) {
            s->bad++;
            TAP_FAIL_("shared: %g with \"%s\"", ev->percent, ev->message);
        }
        s->shared_last = ev->percent;
        return;
    }
    int i = thread_of(ps, ev->task);
    if (i < 0 || s->done[i] || ev->percent < s->last_progress[i] ||
        !message_matches(ev->message, ev->percent, i)) {
        s->bad++;
        TAP_FAIL_("progress %g \"%s\" of thread %d", ev->percent, ev->message, i);
    }
    if (i >= 0)
        s->last_progress[i] = ev->percent;
}

static void check_one(struct seen_state *s, struct poster *ps, struct task *shared,
                      const struct evq_event *ev)
{
    int i, k;
    switch (ev->kind) {
    case EVQ_PROGRESS:
        check_progress(s, ps, shared, ev);
        break;
    case EVQ_EVENT:
        i = thread_of(ps, ev->task);
        k = (int)json_integer_value(json_object_get(ev->payload, "k"));
        if (i < 0 || s->done[i] || strcmp(ev->name, "step") != 0 ||
            json_integer_value(json_object_get(ev->payload, "t")) != i ||
            k != s->last_event[i] + EVENT_EVERY) {
            s->bad++;
            TAP_FAIL_("event k=%d of thread %d out of order", k, i);
        }
        if (i >= 0)
            s->last_event[i] = k;
        s->events++;
        break;
    case EVQ_HOTCACHE_ADD:
    case EVQ_HOTCACHE_REMOVE:
        if (sscanf(ev->name, "cache-%d-%d", &i, &k) != 2 || i < 0 || i >= NTHREADS ||
            k != s->last_cache[i] + CACHE_EVERY ||
            (ev->kind == EVQ_HOTCACHE_ADD) != ((k / CACHE_EVERY) % 2)) {
            s->bad++;
            TAP_FAIL_("hot cache %s out of order", ev->name);
        } else {
            s->last_cache[i] = k;
        }
        s->caches++;
        break;
    case EVQ_DONE:
        i = thread_of(ps, ev->task);
        if (i < 0 || s->done[i]) {
            s->bad++;
            TAP_FAIL_("DONE of thread %d twice or unknown", i);
        } else {
            s->done[i] = 1;
        }
        s->dones++;
        break;
    }
}

/* One evq_take(): check it, then free it and the tasks of its DONEs. */
static void take_batch(struct evq *q, struct seen_state *s, struct poster *ps, struct task *shared)
{
    struct evq_event *list = evq_take(q);
    const struct task *in_batch[NTHREADS + 1];
    size_t nb = 0;
    for (struct evq_event *ev = list; ev != NULL; ev = ev->next) {
        if (ev->kind == EVQ_PROGRESS) {
            for (size_t j = 0; j < nb; j++) {
                if (in_batch[j] == ev->task) {
                    s->bad++;
                    TAP_FAIL_("two PROGRESS events of one task in one take");
                }
            }
            if (nb < ARRAY_LEN(in_batch))
                in_batch[nb++] = ev->task;
        }
        check_one(s, ps, shared, ev);
    }
    for (struct evq_event *ev = list, *next; ev != NULL; ev = next) {
        next = ev->next;
        if (ev->kind == EVQ_DONE)
            task_destroy(ev->task);
        evq_event_free(ev);
    }
}

TEST(many_threads_post_while_the_loop_takes)
{
    notify_reset();
    struct evq *q = evq_create(on_notify, NULL);
    struct task *shared = task_create("shared", "j", "t", NULL);
    struct poster ps[NTHREADS];
    struct seen_state s;
    memset(&s, 0, sizeof(s));
    char id[32];
    for (int i = 0; i < NTHREADS; i++) {
        snprintf(id, sizeof(id), "own-%d", i);
        ps[i] = (struct poster){.index = i, .q = q, .shared = shared};
        ps[i].own = task_create(id, id, "t", NULL);
    }
    int started = 0;
    for (int i = 0; i < NTHREADS; i++)
        started += pthread_create(&ps[i].th, NULL, poster_main, &ps[i]) == 0;
    ASSERT(started == NTHREADS);

    while (s.dones < NTHREADS && s.bad < 20) {
        if (wait_notified(60) < 0) {
            TAP_FAIL_("no notification for 60 s with %d of %d threads done", s.dones, NTHREADS);
            break;
        }
        take_batch(q, &s, ps, shared);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(ps[i].th, NULL);
    take_batch(q, &s, ps, shared); /* nothing is left after the last DONE */

    EXPECT_EQ_INT(s.dones, NTHREADS);
    EXPECT_EQ_INT(s.events, NTHREADS * (NSTEPS / EVENT_EVERY));
    EXPECT_EQ_INT(s.caches, NTHREADS * (NSTEPS / CACHE_EVERY));
    for (int i = 0; i < NTHREADS; i++) {
        EXPECT(s.last_progress[i] == NSTEPS); /* the latest value is never lost */
        EXPECT_EQ_INT(s.last_event[i], NSTEPS);
    }
    /* Every thread's last post to the shared task is NSTEPS, so the last
     * post of all is too. */
    EXPECT(s.shared_last == NSTEPS);
    /* Each event queued notified once. */
    EXPECT_EQ_INT(notify_count(), (unsigned long)(s.progresses + s.events + s.caches + s.dones));
    EXPECT(evq_take(q) == NULL);
    evq_destroy(q);
    task_destroy(shared);
}

/* Posters that finish before the loop takes anything: however many
 * threads posted, each task has exactly one PROGRESS queued. */
struct coalescer {
    pthread_t th;
    int index;
    struct evq *q;
    struct task *own, *shared;
};

static void *coalescer_main(void *arg)
{
    struct coalescer *c = arg;
    char msg[64];
    for (int k = 1; k <= NSTEPS; k++) {
        snprintf(msg, sizeof(msg), "%d:%d", c->index, k);
        evq_post_progress(c->q, c->own, k, msg);
        evq_post_progress(c->q, c->shared, k, msg);
    }
    return NULL;
}

TEST(concurrent_progress_coalesces_to_one_event_per_task)
{
    notify_reset();
    struct evq *q = evq_create(on_notify, NULL);
    struct task *shared = task_create("shared", "j", "t", NULL);
    struct coalescer cs[NTHREADS];
    int started = 0;
    for (int i = 0; i < NTHREADS; i++) {
        cs[i] = (struct coalescer){.index = i, .q = q, .shared = shared};
        cs[i].own = task_create("own", "j", "t", NULL);
        started += pthread_create(&cs[i].th, NULL, coalescer_main, &cs[i]) == 0;
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(cs[i].th, NULL);
    EXPECT_EQ_INT(started, NTHREADS);
    struct evq_event *list = evq_take(q);
    EXPECT_EQ_INT(list_len(list), NTHREADS + 1);
    EXPECT_EQ_INT(notify_count(), NTHREADS + 1);
    int own_seen = 0, shared_seen = 0;
    for (struct evq_event *ev = list; ev != NULL; ev = ev->next) {
        EXPECT(ev->kind == EVQ_PROGRESS && ev->percent == NSTEPS);
        if (ev->task == shared) {
            shared_seen++;
            EXPECT(message_matches(ev->message, NSTEPS, -1));
            continue;
        }
        for (int i = 0; i < NTHREADS; i++) {
            if (cs[i].own == ev->task) {
                own_seen++;
                EXPECT(message_matches(ev->message, NSTEPS, i));
            }
        }
    }
    EXPECT_EQ_INT(own_seen, NTHREADS);
    EXPECT_EQ_INT(shared_seen, 1);
    free_list(list);
    for (int i = 0; i < NTHREADS; i++)
        task_destroy(cs[i].own);
    task_destroy(shared);
    evq_destroy(q);
}

TAP_MAIN()
