/*
 * steps.c - a plugin that does nothing useful, slowly and on demand: it
 * reports progress, honours cancellation, fails with chosen error codes and
 * touches the hot cache, as the params of each task ask. The orchestrator's
 * end-to-end scenarios (progress, slow/cancel, transient-fail, permanent-fail,
 * invalid-input) run against it, and so do the daemon's own tests and demo.
 *
 * Task types and params (every param is optional; a param of the wrong JSON
 * type or out of range fails the task with INVALID_INPUT_ERROR naming it):
 *
 *   progress  {steps = 5, step_seconds = 0.2}
 *             Sleeps `steps` times and reports progress after each step
 *             ("step i/n", i*100/n percent). Succeeds with {"steps": n}.
 *   sleep     {seconds = 30}
 *             Sleeps, waking every 50 ms to check for cancellation.
 *             Succeeds with {"slept": seconds}.
 *   fail      {code = "TRANSIENT_ERROR", times = 2, message, steps = 0}
 *             Fails the first `times` attempts of the job (times < 0: every
 *             attempt) with error `code` and "MESSAGE (attempt N)", then
 *             succeeds with {"attempts": N}. Runs `steps` steps of
 *             default_step_ms first. Attempts are counted per job_id, since
 *             the orchestrator retries a job under the same id.
 *   steps     {steps = 5, step_ms = default_step_ms, fail_after, fail_code =
 *              "TRANSIENT_ERROR", fail_message, hot_cache_add, hot_cache_remove,
 *              status}
 *             The general form: adds `hot_cache_add` to the hot cache, runs
 *             the steps with progress, fails after `fail_after` steps when
 *             given, removes `hot_cache_remove` whatever happened, and
 *             finishes with {"steps": n}, as "success" or as the custom
 *             result `status`.
 *
 * [plugin.steps] keys in worker.ini: max_steps (1..1000000, default 1000; a
 * task asking for more steps is INVALID_INPUT_ERROR, and the default of 5
 * steps is capped to it) and default_step_ms (0..3600000, default 100).
 *
 * What it shows a plugin author, beyond echo.c:
 *   - State: init() allocates it and hands it back through *state, every
 *     other callback receives it, and shutdown() frees it. Configuration is
 *     written by configure() on the main thread before any task runs, so
 *     handlers may read it without a lock; anything handlers change (the
 *     attempt counts) needs a lock of its own, because handlers run on
 *     several worker threads at once. The attempt map is bounded: a plugin
 *     lives as long as the daemon, so per-task memory must be evicted.
 *   - configure() gets each key of [plugin.steps] as a string, checks it
 *     completely, and refuses unknown keys with -EINVAL and a message (the
 *     daemon prints it as `file:line: key: message` and exits 78).
 *   - Cancellation is cooperative: long work is cut into short slices with
 *     avt_is_cancelled() checked between them. When it reports cancellation
 *     the handler stops, reports any outcome (here TRANSIENT_ERROR
 *     "cancelled"; the daemon replaces it with the right report) and
 *     returns promptly.
 *   - Params are validated up front, with a message naming the bad param, so
 *     that a bad job fails once with INVALID_INPUT_ERROR (not retried)
 *     instead of failing half-way or retrying forever.
 *   - Logging without a task: host->log(host, NULL, level, ...).
 */
/* clock_gettime() and nanosleep() are POSIX, not C17: ask for them, since
 * a plugin author may build with plain -std=c17. */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <avt_plugin.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLICE_MS 50.0        /* longest sleep between cancellation checks */
#define MAX_SECONDS 86400.0  /* longest sleep or step a task may ask for */
#define ATTEMPT_BUCKETS 1024 /* hash buckets of the attempt map */
#define ATTEMPT_MAX 4096     /* jobs remembered; the oldest is evicted */

/* One job's attempt count: chained in its hash bucket and, for eviction, in
 * the order the jobs were first seen. */
struct attempt {
    struct attempt *chain;
    struct attempt *newer;
    long long count;
    char job_id[];
};

struct steps_state {
    const struct avt_host *host;
    /* Configuration: written by configure(), read-only once tasks run. */
    long long max_steps;
    long long default_step_ms;
    /* The attempt map of type "fail", guarded by lock. */
    pthread_mutex_t lock;
    struct attempt *buckets[ATTEMPT_BUCKETS];
    struct attempt *oldest, *newest;
    size_t nattempts;
};

/* ---- Params ------------------------------------------------------------ */

/*
 * Each reader looks up params[key]; when it is absent *out keeps the default
 * the caller stored there. On a bad value it fails the task with
 * INVALID_INPUT_ERROR naming the param and returns -EINVAL; the handler then
 * just returns 0.
 */
static int param_int(struct avt_task *task, const char *key, long long min, long long max,
                     long long *out)
{
    json_t *v = json_object_get(task->params, key);

    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.%s must be an integer from %lld to %lld",
                 key, min, max);
        return -EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

static int param_number(struct avt_task *task, const char *key, double min, double max, double *out)
{
    json_t *v = json_object_get(task->params, key);

    if (v == NULL)
        return 0;
    /* json_number_value() is never NaN: jansson refuses NaN and infinity. */
    if (!json_is_number(v) || json_number_value(v) < min || json_number_value(v) > max) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.%s must be a number from %g to %g", key,
                 min, max);
        return -EINVAL;
    }
    *out = json_number_value(v);
    return 0;
}

/* A non-empty string; *out points into params (borrowed, like params). */
static int param_string(struct avt_task *task, const char *key, const char **out)
{
    json_t *v = json_object_get(task->params, key);

    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.%s must be a non-empty string", key);
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

/* ---- Cancellable work --------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Sleep `ms` milliseconds in slices of at most SLICE_MS. Returns 0, or
 * -ECANCELED as soon as the task is cancelled. */
static int sleep_cancellable(struct avt_task *task, double ms)
{
    double deadline = now_ms() + ms;

    for (;;) {
        double left = deadline - now_ms();
        double slice = left < SLICE_MS ? left : SLICE_MS;
        struct timespec ts;

        if (avt_is_cancelled(task))
            return -ECANCELED;
        if (left <= 0)
            return 0;
        ts.tv_sec = (time_t)(slice / 1e3);
        ts.tv_nsec = (long)((slice - (double)ts.tv_sec * 1e3) * 1e6);
        nanosleep(&ts, NULL); /* EINTR is fine: the loop recomputes. */
    }
}

/* Run steps 1..upto of n (upto <= n), each sleeping step_ms and then
 * reporting "step i/n". Returns 0 or -ECANCELED. */
static int run_steps(struct avt_task *task, long long n, long long upto, double step_ms)
{
    for (long long i = 1; i <= upto; i++) {
        if (sleep_cancellable(task, step_ms) != 0)
            return -ECANCELED;
        avt_progress(task, 100.0 * (double)i / (double)n, "step %lld/%lld", i, n);
    }
    return 0;
}

/* The outcome of a handler that noticed cancellation. The daemon replaces it
 * with the report the reason calls for ("cancelled", TIMEOUT_ERROR, ...). */
static int cancelled(struct avt_task *task)
{
    avt_log_info(task, "cancelled, stopping");
    avt_fail(task, AVT_TRANSIENT_ERROR, "cancelled");
    return 0;
}

/* Succeed with {key: value}, or fail when jansson runs out of memory. */
static int succeed_with(struct avt_task *task, const char *status, const char *key, json_t *value)
{
    json_t *data = json_object();

    if (data == NULL || json_object_set_new(data, key, value) != 0) {
        json_decref(data);
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return 0;
    }
    if (status != NULL)
        avt_complete(task, status, data);
    else
        avt_succeed(task, data);
    return 0;
}

/* ---- The attempt map of type "fail" -------------------------------------- */

static size_t hash_str(const char *s)
{
    size_t h = 2166136261u; /* FNV-1a */

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % ATTEMPT_BUCKETS;
}

/* Drop the job seen first. Called with the lock held and the map full. */
static void attempts_evict_oldest(struct steps_state *st)
{
    struct attempt *old = st->oldest;
    struct attempt **pp = &st->buckets[hash_str(old->job_id)];

    while (*pp != old)
        pp = &(*pp)->chain;
    *pp = old->chain;
    st->oldest = old->newer;
    if (st->oldest == NULL)
        st->newest = NULL;
    st->nattempts--;
    free(old);
}

static struct attempt *attempts_insert(struct steps_state *st, const char *job_id, size_t b)
{
    size_t len = strlen(job_id);
    struct attempt *a = malloc(sizeof(*a) + len + 1);

    if (a == NULL)
        return NULL;
    memcpy(a->job_id, job_id, len + 1);
    a->count = 0;
    a->newer = NULL;
    if (st->nattempts >= ATTEMPT_MAX)
        attempts_evict_oldest(st);
    a->chain = st->buckets[b];
    st->buckets[b] = a;
    if (st->newest != NULL)
        st->newest->newer = a;
    else
        st->oldest = a;
    st->newest = a;
    st->nattempts++;
    return a;
}

/* Count one more attempt of `job_id`; returns the count (1 for the first),
 * or -ENOMEM. Any thread. */
static long long attempts_count(struct steps_state *st, const char *job_id)
{
    size_t b = hash_str(job_id);
    struct attempt *a;
    long long n = -ENOMEM;

    pthread_mutex_lock(&st->lock);
    for (a = st->buckets[b]; a != NULL; a = a->chain) {
        if (strcmp(a->job_id, job_id) == 0)
            break;
    }
    if (a == NULL)
        a = attempts_insert(st, job_id, b);
    if (a != NULL)
        n = ++a->count;
    pthread_mutex_unlock(&st->lock);
    return n;
}

/* ---- Task types --------------------------------------------------------- */

/* Types with steps run 5 unless asked otherwise, never more than max_steps. */
static long long default_steps(const struct steps_state *st)
{
    return st->max_steps < 5 ? st->max_steps : 5;
}

static int handle_progress(struct steps_state *st, struct avt_task *task)
{
    long long steps = default_steps(st);
    double step_seconds = 0.2;

    if (param_int(task, "steps", 0, st->max_steps, &steps) != 0 ||
        param_number(task, "step_seconds", 0, MAX_SECONDS, &step_seconds) != 0)
        return 0;
    if (run_steps(task, steps, steps, step_seconds * 1e3) != 0)
        return cancelled(task);
    return succeed_with(task, NULL, "steps", json_integer(steps));
}

static int handle_sleep(struct steps_state *st, struct avt_task *task)
{
    double seconds = 30;

    (void)st;
    if (param_number(task, "seconds", 0, MAX_SECONDS, &seconds) != 0)
        return 0;
    avt_log_debug(task, "sleeping %g s", seconds);
    if (sleep_cancellable(task, seconds * 1e3) != 0)
        return cancelled(task);
    return succeed_with(task, NULL, "slept", json_real(seconds));
}

static int handle_fail(struct steps_state *st, struct avt_task *task)
{
    const char *code = AVT_TRANSIENT_ERROR;
    const char *message = "requested failure";
    long long times = 2, steps = 0, n;

    /* Validate everything before counting: a bad job is not an attempt. */
    if (param_string(task, "code", &code) != 0 || param_string(task, "message", &message) != 0 ||
        param_int(task, "times", LLONG_MIN, LLONG_MAX, &times) != 0 ||
        param_int(task, "steps", 0, st->max_steps, &steps) != 0)
        return 0;
    n = attempts_count(st, task->job_id);
    if (n < 0) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory counting attempts");
        return 0;
    }
    if (run_steps(task, steps, steps, (double)st->default_step_ms) != 0)
        return cancelled(task);
    if (times < 0 || n <= times) {
        avt_log_info(task, "failing attempt %lld with %s as asked", n, code);
        avt_fail(task, code, "%s (attempt %lld)", message, n);
        return 0;
    }
    return succeed_with(task, NULL, "attempts", json_integer(n));
}

/* The params of type "steps", read in one place so that the handler stays
 * short. fail_after < 0 means "do not fail". */
struct steps_params {
    long long steps, step_ms, fail_after;
    const char *fail_code, *fail_message, *add, *remove, *status;
};

static int steps_params_read(struct steps_state *st, struct avt_task *task, struct steps_params *p)
{
    *p = (struct steps_params){.steps = default_steps(st),
                               .step_ms = st->default_step_ms,
                               .fail_after = -1,
                               .fail_code = AVT_TRANSIENT_ERROR};
    if (param_int(task, "steps", 0, st->max_steps, &p->steps) != 0 ||
        param_int(task, "step_ms", 0, (long long)(MAX_SECONDS * 1e3), &p->step_ms) != 0 ||
        param_string(task, "fail_code", &p->fail_code) != 0 ||
        param_string(task, "fail_message", &p->fail_message) != 0 ||
        param_string(task, "hot_cache_add", &p->add) != 0 ||
        param_string(task, "hot_cache_remove", &p->remove) != 0 ||
        param_string(task, "status", &p->status) != 0)
        return -EINVAL;
    /* fail_after is checked last: its range depends on steps. */
    return param_int(task, "fail_after", 0, p->steps, &p->fail_after);
}

static int handle_steps(struct steps_state *st, struct avt_task *task)
{
    struct steps_params p;
    long long upto;
    int rc;

    if (steps_params_read(st, task, &p) != 0)
        return 0;
    if (p.add != NULL)
        task->host->hot_cache_add(task->host, p.add);
    upto = p.fail_after >= 0 ? p.fail_after : p.steps;
    rc = run_steps(task, p.steps, upto, (double)p.step_ms);
    if (p.remove != NULL)
        task->host->hot_cache_remove(task->host, p.remove);
    if (rc != 0)
        return cancelled(task);
    if (p.fail_after >= 0) {
        if (p.fail_message != NULL)
            avt_fail(task, p.fail_code, "%s", p.fail_message);
        else
            avt_fail(task, p.fail_code, "failed after %lld of %lld steps", upto, p.steps);
        return 0;
    }
    return succeed_with(task, p.status, "steps", json_integer(p.steps));
}

/* ---- Plugin callbacks ---------------------------------------------------- */

typedef int (*steps_handler_fn)(struct steps_state *st, struct avt_task *task);

static const struct {
    const char *type;
    steps_handler_fn fn;
} handlers[] = {
    {"progress", handle_progress},
    {"sleep", handle_sleep},
    {"fail", handle_fail},
    {"steps", handle_steps},
};

/* Must list the types of handlers[] in the same order. */
static const char *const steps_types[] = {"progress", "sleep", "fail", "steps", NULL};

static int steps_handle(void *state, struct avt_task *task)
{
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        if (strcmp(task->type, handlers[i].type) == 0)
            return handlers[i].fn(state, task);
    }
    /* Unreachable with the daemon, which only sends the types we list. */
    avt_fail(task, AVT_PERMANENT_ERROR, "steps: unknown task type %s", task->type);
    return 0;
}

static int steps_init(const struct avt_host *host, void **state)
{
    struct steps_state *st = calloc(1, sizeof(*st));

    if (st == NULL)
        return -ENOMEM;
    if (pthread_mutex_init(&st->lock, NULL) != 0) {
        free(st);
        return -ENOMEM;
    }
    st->host = host;
    st->max_steps = 1000;
    st->default_step_ms = 100;
    *state = st;
    return 0;
}

/* Parse a whole decimal integer from min to max: digits with an optional
 * leading '-', nothing else (strtoll alone would skip leading spaces and
 * accept '+'). */
static int parse_ll(const char *s, long long min, long long max, long long *out)
{
    const char *digits = s[0] == '-' ? s + 1 : s;
    char *end;
    long long v;

    if (*digits < '0' || *digits > '9')
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int steps_configure(void *state, const char *key, const char *value, char *err,
                           size_t errlen)
{
    struct steps_state *st = state;

    if (strcmp(key, "max_steps") == 0) {
        if (parse_ll(value, 1, 1000000, &st->max_steps) == 0)
            return 0;
        snprintf(err, errlen, "must be an integer from 1 to 1000000, not \"%s\"", value);
        return -EINVAL;
    }
    if (strcmp(key, "default_step_ms") == 0) {
        if (parse_ll(value, 0, 3600000, &st->default_step_ms) == 0)
            return 0;
        snprintf(err, errlen, "must be an integer from 0 to 3600000, not \"%s\"", value);
        return -EINVAL;
    }
    snprintf(err, errlen, "unknown key (known: max_steps, default_step_ms)");
    return -EINVAL;
}

static int steps_start(void *state, char *err, size_t errlen)
{
    struct steps_state *st = state;

    (void)err;
    (void)errlen;
    st->host->log(st->host, NULL, AVT_LOG_DEBUG, "max_steps=%lld default_step_ms=%lld",
                  st->max_steps, st->default_step_ms);
    return 0;
}

static void steps_shutdown(void *state)
{
    struct steps_state *st = state;

    if (st == NULL)
        return;
    while (st->oldest != NULL)
        attempts_evict_oldest(st);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

AVT_PLUGIN(.name = "steps", .version = "1.0.0", .task_types = steps_types, .init = steps_init,
           .configure = steps_configure, .start = steps_start, .handle = steps_handle,
           .shutdown = steps_shutdown);
