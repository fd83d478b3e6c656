/*
 * mock_host.c - the fake host function table of plugin unit tests. It plays
 * the daemon's part of the plugin ABI (sdk/avt_plugin.h): it records what a
 * handler reports (outcome, progress, hot cache, log lines) in plain fields
 * the test reads afterwards, enforces the "first outcome wins" and ownership
 * rules the way the daemon does, and counts contract violations instead of
 * crashing on them. Host-level records are shared by all threads and sit
 * behind one mutex; per-task records are written only by the thread running
 * that task's handler, except the cancelled flag, which is atomic.
 */
#include "mock_host.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

struct mock_log_line {
    int level;
    char *text;
};

/* Host-level records, guarded by lock. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char **hot;
static size_t nhot;
static int hot_adds, hot_removes;
static struct mock_log_line *logs;
static size_t nlogs;
static int host_violations;

/* The canceller thread of a task waits on this pair so that it can be woken
 * early when the handler returns before the delay. */
static pthread_mutex_t cancel_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cancel_cond;
static pthread_once_t cancel_once = PTHREAD_ONCE_INIT;

#define MOCK(pubp) container_of((pubp), struct mock_task, pub)

static void violation(struct mock_task *mt, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void violation(struct mock_task *mt, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    printf("# mock_host: contract violation: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (mt != NULL) {
        mt->violations++;
    } else {
        pthread_mutex_lock(&lock);
        host_violations++;
        pthread_mutex_unlock(&lock);
    }
}

/* Claim the outcome slot; 0 when this call is the first. */
static int claim_outcome(struct mock_task *mt)
{
    mt->noutcomes++;
    if (mt->outcome != MOCK_NONE) {
        violation(mt, "task %s: outcome reported twice", mt->pub.id);
        return -EALREADY;
    }
    return 0;
}

static int mock_succeed(struct avt_task *task, json_t *data)
{
    struct mock_task *mt = MOCK(task);

    if (data != NULL && !json_is_object(data))
        violation(mt, "task %s: succeed() data is not an object", task->id);
    if (claim_outcome(mt) != 0) {
        json_decref(data);
        return -EALREADY;
    }
    mt->outcome = MOCK_SUCCEEDED;
    mt->status = xstrdup("success");
    mt->data = data;
    return 0;
}

static int mock_complete(struct avt_task *task, const char *status, json_t *data)
{
    struct mock_task *mt = MOCK(task);

    if (status == NULL || status[0] == '\0') {
        violation(mt, "task %s: complete() with an empty status", task->id);
        json_decref(data);
        return -EINVAL;
    }
    if (claim_outcome(mt) != 0) {
        json_decref(data);
        return -EALREADY;
    }
    mt->outcome = MOCK_COMPLETED;
    mt->status = xstrdup(status);
    mt->data = data;
    return 0;
}

static int mock_vfail(struct avt_task *task, const char *code, const char *fmt, va_list ap)
{
    struct mock_task *mt = MOCK(task);

    if (code == NULL || code[0] == '\0') {
        violation(mt, "task %s: fail() with an empty code", task->id);
        return -EINVAL;
    }
    if (claim_outcome(mt) != 0)
        return -EALREADY;
    mt->outcome = MOCK_FAILED;
    mt->status = xstrdup("failure");
    mt->code = xstrdup(code);
    mt->message = fmt != NULL ? xvasprintf(fmt, ap) : xstrdup("");
    return 0;
}

static int mock_fail(struct avt_task *task, const char *code, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = mock_vfail(task, code, fmt, ap);
    va_end(ap);
    return rc;
}

static int mock_progress(struct avt_task *task, double percent, const char *fmt, ...)
{
    struct mock_task *mt;
    va_list ap;

    if (task == NULL) {
        violation(NULL, "progress() without a task");
        return -EINVAL;
    }
    mt = MOCK(task);
    if (isnan(percent))
        violation(mt, "task %s: progress() with NaN", task->id);
    if (mt->nprogress < MOCK_MAX_PROGRESS)
        mt->percents[mt->nprogress] = percent;
    mt->nprogress++;
    mt->last_percent = percent;
    free_and_null(mt->last_progress);
    if (fmt != NULL) {
        va_start(ap, fmt);
        mt->last_progress = xvasprintf(fmt, ap);
        va_end(ap);
    }
    if (mt->cancel_after_progress > 0 && mt->nprogress >= mt->cancel_after_progress)
        atomic_store(&mt->cancelled, 1);
    return 0;
}

static int mock_is_cancelled(const struct avt_task *task)
{
    /* The ABI passes the task as const; every mock task is a mutable object
     * of ours, so counting the call through a non-const pointer is fine. */
    struct mock_task *mt = (struct mock_task *)(uintptr_t)task;

    atomic_fetch_add(&mt->is_cancelled_calls, 1);
    return atomic_load(&mt->cancelled);
}

static int mock_hot_cache_add(const struct avt_host *host, const char *name)
{
    (void)host;
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    pthread_mutex_lock(&lock);
    hot_adds++;
    for (size_t i = 0; i < nhot; i++) {
        if (strcmp(hot[i], name) == 0)
            goto out;
    }
    hot = xrealloc(hot, (nhot + 1) * sizeof(*hot));
    hot[nhot++] = xstrdup(name);
out:
    pthread_mutex_unlock(&lock);
    return 0;
}

static int mock_hot_cache_remove(const struct avt_host *host, const char *name)
{
    (void)host;
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    pthread_mutex_lock(&lock);
    hot_removes++;
    for (size_t i = 0; i < nhot; i++) {
        if (strcmp(hot[i], name) == 0) {
            free(hot[i]);
            hot[i] = hot[--nhot];
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return 0;
}

static void mock_log(const struct avt_host *host, const struct avt_task *task, int level,
                     const char *fmt, ...)
{
    va_list ap;
    char *text;

    if (host != mock_host())
        violation(NULL, "log() with a host table that is not the plugin's");
    if (level < AVT_LOG_ERR || level > AVT_LOG_DEBUG)
        violation(NULL, "log() with level %d", level);
    va_start(ap, fmt);
    text = xvasprintf(fmt, ap);
    va_end(ap);
    if (getenv("MOCK_VERBOSE") != NULL)
        printf("# log <%d> %s%s%s\n", level, task ? task->id : "", task ? ": " : "", text);
    pthread_mutex_lock(&lock);
    logs = xrealloc(logs, (nlogs + 1) * sizeof(*logs));
    logs[nlogs++] = (struct mock_log_line){level, text};
    pthread_mutex_unlock(&lock);
}

static const struct avt_host host_table = {
    .abi_version = AVT_ABI_VERSION,
    .struct_size = sizeof(struct avt_host),
    .daemon_version = "mock",
    .succeed = mock_succeed,
    .complete = mock_complete,
    .fail = mock_fail,
    .vfail = mock_vfail,
    .progress = mock_progress,
    .is_cancelled = mock_is_cancelled,
    .hot_cache_add = mock_hot_cache_add,
    .hot_cache_remove = mock_hot_cache_remove,
    .log = mock_log,
};

const struct avt_host *mock_host(void)
{
    return &host_table;
}

void mock_reset(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nhot; i++)
        free(hot[i]);
    free_and_null(hot);
    nhot = 0;
    hot_adds = hot_removes = 0;
    for (size_t i = 0; i < nlogs; i++)
        free(logs[i].text);
    free_and_null(logs);
    nlogs = 0;
    host_violations = 0;
    pthread_mutex_unlock(&lock);
}

struct mock_task *mock_task_new_json(const char *type, const char *job_id, json_t *params)
{
    struct mock_task *mt = xcalloc(1, sizeof(*mt));

    mt->id_buf = xstrdup(job_id != NULL ? job_id : "task-1");
    mt->job_id_buf = xstrdup(job_id != NULL ? job_id : "job-1");
    mt->type_buf = xstrdup(type);
    mt->pub.struct_size = sizeof(struct avt_task);
    mt->pub.host = mock_host();
    mt->pub.id = mt->id_buf;
    mt->pub.job_id = mt->job_id_buf;
    mt->pub.type = mt->type_buf;
    mt->pub.params = params != NULL ? params : json_object();
    mt->pub.tracing_context = json_object();
    mt->pub.params_metadata = NULL;
    atomic_init(&mt->cancelled, 0);
    atomic_init(&mt->is_cancelled_calls, 0);
    return mt;
}

struct mock_task *mock_task_new_job(const char *type, const char *job_id, const char *params_json)
{
    json_t *params = NULL;
    json_error_t jerr;

    if (params_json != NULL) {
        params = json_loads(params_json, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (params == NULL) {
            fprintf(stderr, "mock_task_new: bad params %s: %s\n", params_json, jerr.text);
            abort();
        }
    }
    return mock_task_new_json(type, job_id, params);
}

struct mock_task *mock_task_new(const char *type, const char *params_json)
{
    return mock_task_new_job(type, NULL, params_json);
}

void mock_task_free(struct mock_task *mt)
{
    if (mt == NULL)
        return;
    json_decref(mt->pub.params);
    json_decref(mt->pub.tracing_context);
    json_decref(mt->data);
    free(mt->status);
    free(mt->code);
    free(mt->message);
    free(mt->last_progress);
    free(mt->id_buf);
    free(mt->job_id_buf);
    free(mt->type_buf);
    free(mt);
}

void mock_cancel(struct mock_task *mt)
{
    atomic_store(&mt->cancelled, 1);
}

void mock_cancel_after_progress(struct mock_task *mt, int n)
{
    mt->cancel_after_progress = n;
}

void mock_cancel_after_ms(struct mock_task *mt, long ms)
{
    mt->cancel_delay_ms = ms;
}

static void cancel_cond_init(void)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&cancel_cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* The canceller thread: sleep cancel_delay_ms unless the handler returns
 * first (has_canceller drops to 0 under cancel_lock), then cancel. */
static void *canceller_main(void *arg)
{
    struct mock_task *mt = arg;
    struct timespec deadline;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += mt->cancel_delay_ms / 1000;
    deadline.tv_nsec += (mt->cancel_delay_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&cancel_lock);
    while (mt->has_canceller == 1) {
        if (pthread_cond_timedwait(&cancel_cond, &cancel_lock, &deadline) == ETIMEDOUT) {
            atomic_store(&mt->cancelled, 1);
            break;
        }
    }
    pthread_mutex_unlock(&cancel_lock);
    return NULL;
}

static void canceller_start(struct mock_task *mt)
{
    pthread_once(&cancel_once, cancel_cond_init);
    mt->has_canceller = 1;
    if (pthread_create(&mt->canceller, NULL, canceller_main, mt) != 0) {
        fprintf(stderr, "mock_run: pthread_create failed\n");
        abort();
    }
}

static void canceller_stop(struct mock_task *mt)
{
    pthread_mutex_lock(&cancel_lock);
    mt->has_canceller = 0;
    pthread_cond_broadcast(&cancel_cond);
    pthread_mutex_unlock(&cancel_lock);
    pthread_join(mt->canceller, NULL);
}

int mock_run(const struct avt_plugin *desc, void *state, struct mock_task *mt)
{
    struct timespec t0, t1;

    if (mt->cancel_delay_ms > 0)
        canceller_start(mt);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mt->rc = desc->handle(state, &mt->pub);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (mt->cancel_delay_ms > 0)
        canceller_stop(mt);
    mt->elapsed = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return mt->rc;
}

int mock_plugin_init(const struct avt_plugin *desc, void **state)
{
    *state = NULL;
    if (desc->init == NULL)
        return 0;
    return desc->init(mock_host(), state);
}

int mock_plugin_configure(const struct avt_plugin *desc, void *state, const char *key,
                          const char *value, char *err, size_t errlen)
{
    if (errlen > 0)
        err[0] = '\0';
    if (desc->configure == NULL) {
        snprintf(err, errlen, "plugin accepts no keys");
        return -EINVAL;
    }
    return desc->configure(state, key, value, err, errlen);
}

void mock_plugin_shutdown(const struct avt_plugin *desc, void *state)
{
    if (desc->shutdown != NULL)
        desc->shutdown(state);
}

static json_t *data_member(const struct mock_task *mt, const char *key)
{
    return mt->data != NULL ? json_object_get(mt->data, key) : NULL;
}

long long mock_data_int(const struct mock_task *mt, const char *key)
{
    json_t *v = data_member(mt, key);

    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

double mock_data_real(const struct mock_task *mt, const char *key)
{
    json_t *v = data_member(mt, key);

    return json_is_number(v) ? json_number_value(v) : NAN;
}

const char *mock_data_str(const struct mock_task *mt, const char *key)
{
    json_t *v = data_member(mt, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

int mock_hot_cache_has(const char *name)
{
    int found = 0;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nhot && !found; i++)
        found = strcmp(hot[i], name) == 0;
    pthread_mutex_unlock(&lock);
    return found;
}

int mock_hot_cache_adds(void)
{
    int n;

    pthread_mutex_lock(&lock);
    n = hot_adds;
    pthread_mutex_unlock(&lock);
    return n;
}

int mock_hot_cache_removes(void)
{
    int n;

    pthread_mutex_lock(&lock);
    n = hot_removes;
    pthread_mutex_unlock(&lock);
    return n;
}

int mock_log_count(void)
{
    int n;

    pthread_mutex_lock(&lock);
    n = (int)nlogs;
    pthread_mutex_unlock(&lock);
    return n;
}

int mock_log_count_level(int level)
{
    int n = 0;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nlogs; i++)
        n += logs[i].level == level;
    pthread_mutex_unlock(&lock);
    return n;
}

int mock_log_contains(const char *needle)
{
    int found = 0;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nlogs && !found; i++)
        found = strstr(logs[i].text, needle) != NULL;
    pthread_mutex_unlock(&lock);
    return found;
}

int mock_violations(void)
{
    int n;

    pthread_mutex_lock(&lock);
    n = host_violations;
    pthread_mutex_unlock(&lock);
    return n;
}
