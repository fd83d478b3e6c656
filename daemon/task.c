/*
 * task.c - the task object: parsing a poll payload into a struct task, the
 * outcome a handler reports through the host table, the mapping from "what
 * the handler did" to the result the orchestrator receives, and the result
 * body itself (PROTOCOL.md 2.2, 2.4, 3.2, 4.5).
 *
 * A task is created on the loop thread, run on exactly one worker thread and
 * handed back to the loop through the pool's event queue (whose mutex orders
 * the worker's writes before the loop's reads). Only two fields are shared
 * while the handler runs: `cancel` (written by the loop) and `has_outcome`
 * (claimed once by the first outcome call, from any thread); both are
 * atomics. Everything a plugin hands in (codes, messages, statuses, names)
 * may be any bytes, so it is cut to a sane length and made valid UTF-8
 * before it is stored: the result body must always be encodable.
 */
#include "task.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "util.h"

#define ID_MAX 256        /* job_id, task_id */
#define TYPE_MAX 128      /* task type */
#define STATUS_MAX 128    /* custom result status */
#define CODE_MAX 128      /* error code */
#define MESSAGE_MAX 16384 /* error and progress messages */
#define NAME_MAX_ 1024    /* hot-cache names */
#define PAYLOAD_MAX (64u << 20)

static const char msg_not_object[] = "handler returned data that is not a JSON object";

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2, cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3, cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4, cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* A copy of s that is valid UTF-8 (bad bytes become '?') and at most max
 * bytes long, cut on a character boundary. */
static char *clean_str(const char *s, size_t max)
{
    size_t n = strlen(s), o = 0;
    char *out = xmalloc((n < max ? n : max) + 1);

    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq((const unsigned char *)s + i, n - i);
        if (o + (len ? len : 1) > max)
            break;
        if (len == 0) {
            out[o++] = '?';
            i++;
        } else {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        }
    }
    out[o] = '\0';
    return out;
}

/* Take the single outcome slot; 1 when this caller won it. */
static int claim(struct task *t)
{
    int expected = 0;
    return atomic_compare_exchange_strong(&t->has_outcome, &expected, 1);
}

static void clear_outcome(struct task *t)
{
    json_decref(t->data);
    t->data = NULL;
    free_and_null(t->status);
    free_and_null(t->err_code);
    free_and_null(t->err_msg);
}

/* Store a failure; the caller has claimed the outcome. */
static void store_failure(struct task *t, const char *code, const char *fmt, va_list ap)
{
    char *msg = fmt != NULL ? xvasprintf(fmt, ap) : xstrdup("");

    clear_outcome(t);
    t->outcome = TASK_OUTCOME_FAILURE;
    t->status = xstrdup("failure");
    t->err_code = clean_str(code, CODE_MAX);
    t->err_msg = clean_str(msg, MESSAGE_MAX);
    free(msg);
}

static void store_failure_f(struct task *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void store_failure_f(struct task *t, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_failure(t, code, fmt, ap);
    va_end(ap);
}

void task_set_failure(struct task *t, const char *code, const char *fmt, ...)
{
    va_list ap;

    if (!claim(t))
        return;
    va_start(ap, fmt);
    store_failure(t, code, fmt, ap);
    va_end(ap);
}

/* ---- Creation and parsing ---------------------------------------------- */

/* Point the public part at the payload's members. */
static void task_bind(struct task *t)
{
    json_t *pm = json_object_get(t->payload, "params_metadata");

    t->pub.struct_size = sizeof(struct avt_task);
    t->pub.id = t->id;
    t->pub.job_id = t->job_id;
    t->pub.type = t->type;
    t->pub.params = json_object_get(t->payload, "params");
    t->pub.tracing_context = json_object_get(t->payload, "tracing_context");
    t->pub.params_metadata = json_is_object(pm) ? pm : NULL;
}

static struct task *task_alloc(const char *id, const char *job_id, const char *type)
{
    struct task *t = xcalloc(1, sizeof(*t));

    t->id = clean_str(id, ID_MAX);
    t->job_id = clean_str(job_id, ID_MAX);
    t->type = clean_str(type, TYPE_MAX);
    atomic_init(&t->cancel, TASK_CANCEL_NONE);
    atomic_init(&t->has_outcome, 0);
    t->pool_type = -1;
    t->t_received = now_mono();
    return t;
}

struct task *task_create(const char *id, const char *job_id, const char *type, json_t *params)
{
    struct task *t = task_alloc(id, job_id, type);

    if (!json_is_object(params)) {
        json_decref(params);
        params = json_object();
    }
    t->payload = json_object();
    json_object_set_new(t->payload, "job_id", json_string(t->job_id));
    json_object_set_new(t->payload, "task_id", json_string(t->id));
    json_object_set_new(t->payload, "type", json_string(t->type));
    json_object_set_new(t->payload, "params", params);
    json_object_set_new(t->payload, "tracing_context", json_object());
    json_object_set_new(t->payload, "params_metadata", json_null());
    task_bind(t);
    return t;
}

/* A string member of at most max bytes, not empty; NULL otherwise. */
static const char *get_str(json_t *root, const char *key, size_t max)
{
    json_t *v = json_object_get(root, key);
    const char *s = json_string_value(v);

    if (s == NULL || *s == '\0' || json_string_length(v) > max ||
        strlen(s) != json_string_length(v))
        return NULL;
    return s;
}

/* Replace an absent or null member by {}; -1 when it is something else. */
static int default_object(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);

    if (v == NULL || json_is_null(v))
        return json_object_set_new(root, key, json_object()) == 0 ? 0 : -1;
    return json_is_object(v) ? 0 : -1;
}

/* Check everything but the ids; returns NULL or what is wrong. */
static const char *check_payload(json_t *root)
{
    json_t *pm = json_object_get(root, "params_metadata");
    json_t *prio = json_object_get(root, "priority");

    if (get_str(root, "type", TYPE_MAX) == NULL)
        return "type is missing, not a string, empty or too long";
    if (default_object(root, "params") < 0)
        return "params is not a JSON object";
    if (default_object(root, "tracing_context") < 0)
        return "tracing_context is not a JSON object";
    if (pm != NULL && !json_is_null(pm) && !json_is_object(pm))
        return "params_metadata is not a JSON object";
    if (prio != NULL && !json_is_null(prio) &&
        (!json_is_integer(prio) || json_integer_value(prio) < INT32_MIN ||
         json_integer_value(prio) > INT32_MAX))
        return "priority is not a 32-bit integer";
    return NULL;
}

int task_parse(const char *buf, size_t len, struct task **out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root;
    const char *id, *job_id, *why;

    *out = NULL;
    if (buf == NULL || len > PAYLOAD_MAX)
        return fmt_err(err, errlen, "task payload missing or larger than %u bytes", PAYLOAD_MAX);
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return fmt_err(err, errlen, "task payload is not JSON: %s", jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return fmt_err(err, errlen, "task payload is not a JSON object");
    }
    id = get_str(root, "task_id", ID_MAX);
    job_id = get_str(root, "job_id", ID_MAX);
    if (id == NULL || job_id == NULL) {
        json_decref(root);
        return fmt_err(err, errlen,
                       "task payload: %s is missing, not a string, empty or longer "
                       "than %d bytes",
                       id == NULL ? "task_id" : "job_id", ID_MAX);
    }
    why = check_payload(root);
    if (why != NULL) {
        /* The ids are good: answer with a result instead of dropping it. */
        const char *type = json_string_value(json_object_get(root, "type"));
        struct task *t =
            task_create(id, job_id, type != NULL && strlen(type) <= TYPE_MAX ? type : "", NULL);
        task_set_failure(t, AVT_INVALID_INPUT_ERROR, "invalid task payload: %s", why);
        json_decref(root);
        *out = t;
        return fmt_err(err, errlen, "task %s: invalid task payload: %s", t->id, why);
    }
    struct task *t = task_alloc(id, job_id, get_str(root, "type", TYPE_MAX));
    json_t *prio = json_object_get(root, "priority");
    t->pub.priority = json_is_integer(prio) ? (int32_t)json_integer_value(prio) : 0;
    t->payload = root;
    task_bind(t);
    *out = t;
    return 0;
}

void task_destroy(struct task *t)
{
    if (t == NULL)
        return;
    clear_outcome(t);
    json_decref(t->payload);
    free(t->progress_msg);
    free(t->id);
    free(t->job_id);
    free(t->type);
    free(t);
}

/* ---- Running and the outcome mapping ----------------------------------- */

void task_run(struct task *t)
{
    int rc = 0;

    t->t_started = now_mono();
    if (t->plugin == NULL) {
        task_set_failure(t, AVT_PERMANENT_ERROR, "Unsupported task: %s", t->type);
        t->t_finished = now_mono();
        return;
    }
    t->pub.host = &t->plugin->host;
    /* A task that already has an outcome (invalid payload) or was cancelled
     * while it waited is not started at all. */
    if (atomic_load(&t->has_outcome) == 0 && atomic_load(&t->cancel) == TASK_CANCEL_NONE)
        rc = t->plugin->desc->handle(t->plugin->state, &t->pub);
    task_finish(t, rc);
    t->t_finished = now_mono();
}

static void store_reason_failure(struct task *t, int reason)
{
    if (reason == TASK_CANCEL_DEADLINE)
        store_failure_f(t, AVT_TIMEOUT_ERROR, "task exceeded its timeout");
    else if (reason == TASK_CANCEL_SHUTDOWN)
        store_failure_f(t, AVT_TRANSIENT_ERROR, "worker shutting down");
}

void task_finish(struct task *t, int handler_rc)
{
    int reason = atomic_load(&t->cancel);

    if (reason == TASK_CANCEL_ORCHESTRATOR) {
        /* Whatever the handler set: the orchestrator asked for this. */
        atomic_store(&t->has_outcome, 1);
        clear_outcome(t);
        t->outcome = TASK_OUTCOME_CANCELLED;
        t->status = xstrdup("cancelled");
        return;
    }
    if (!claim(t)) {
        /* A failure reported while a deadline or the shutdown stopped the
         * handler (steps' "cancelled") says nothing more than the reason:
         * the reason's report replaces it, so that the orchestrator learns
         * why. A success stands: the work was done. */
        if (t->outcome == TASK_OUTCOME_FAILURE &&
            (reason == TASK_CANCEL_DEADLINE || reason == TASK_CANCEL_SHUTDOWN)) {
            clear_outcome(t);
            store_reason_failure(t, reason);
        }
        return;
    }
    if (reason == TASK_CANCEL_DEADLINE || reason == TASK_CANCEL_SHUTDOWN)
        store_reason_failure(t, reason);
    else if (handler_rc == 0)
        store_failure_f(t, AVT_TRANSIENT_ERROR, "handler returned without an outcome");
    else
        store_failure_f(t, AVT_TRANSIENT_ERROR, "handler returned error %d without an outcome",
                        handler_rc);
}

void task_cancel(struct task *t, enum task_cancel reason)
{
    int expected = TASK_CANCEL_NONE;

    if (t != NULL && reason != TASK_CANCEL_NONE)
        atomic_compare_exchange_strong(&t->cancel, &expected, (int)reason);
}

static json_t *str_or_null(const char *s)
{
    json_t *v = s != NULL ? json_string(s) : NULL;
    return v != NULL ? v : json_null();
}

json_t *task_result_json(const struct task *t, const char *worker_id)
{
    json_t *r = json_object();
    json_t *error = json_null();
    json_t *data = json_null();

    if (t->outcome == TASK_OUTCOME_FAILURE || t->outcome == TASK_OUTCOME_NONE) {
        json_decref(error);
        error = json_object();
        json_object_set_new(error, "code",
                            str_or_null(t->err_code ? t->err_code : AVT_TRANSIENT_ERROR));
        json_object_set_new(error, "message",
                            str_or_null(t->err_msg ? t->err_msg : "task has no outcome"));
    } else if (t->outcome == TASK_OUTCOME_SUCCESS && t->data != NULL) {
        json_decref(data);
        data = json_incref(t->data);
    }
    json_object_set_new(r, "job_id", str_or_null(t->job_id));
    json_object_set_new(r, "task_id", str_or_null(t->id));
    json_object_set_new(r, "worker_id", str_or_null(worker_id));
    json_object_set_new(r, "status", str_or_null(t->status ? t->status : "failure"));
    json_object_set_new(r, "data", data != NULL ? data : json_null());
    json_object_set_new(r, "error", error);
    json_object_set_new(r, "data_metadata", json_null());
    return r;
}

/* ---- The host table ---------------------------------------------------- */

static int host_succeed(struct avt_task *task, json_t *data)
{
    struct task *t = task_of(task);

    if (data != NULL && !json_is_object(data)) {
        json_decref(data);
        if (!claim(t))
            return -EALREADY;
        store_failure_f(t, AVT_TRANSIENT_ERROR, "%s", msg_not_object);
        return -EINVAL;
    }
    if (!claim(t)) {
        json_decref(data);
        return -EALREADY;
    }
    t->outcome = TASK_OUTCOME_SUCCESS;
    t->status = xstrdup("success");
    t->data = data;
    return 0;
}

/* A custom status may not be one of the statuses with their own call. */
static int status_ok(const char *status)
{
    return status != NULL && *status != '\0' && strlen(status) <= STATUS_MAX &&
           strcmp(status, "failure") != 0 && strcmp(status, "cancelled") != 0;
}

static int host_complete(struct avt_task *task, const char *status, json_t *data)
{
    struct task *t = task_of(task);

    if (!status_ok(status)) {
        json_decref(data);
        return -EINVAL;
    }
    if (data != NULL && !json_is_object(data))
        return host_succeed(task, data); /* the same rejection */
    if (!claim(t)) {
        json_decref(data);
        return -EALREADY;
    }
    t->outcome = TASK_OUTCOME_SUCCESS;
    t->status = clean_str(status, STATUS_MAX);
    t->data = data;
    return 0;
}

static int host_vfail(struct avt_task *task, const char *code, const char *fmt, va_list ap)
{
    struct task *t = task_of(task);

    if (code == NULL || *code == '\0')
        return -EINVAL;
    if (!claim(t))
        return -EALREADY;
    store_failure(t, code, fmt, ap);
    return 0;
}

static int host_fail(struct avt_task *task, const char *code, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = host_vfail(task, code, fmt, ap);
    va_end(ap);
    return rc;
}

static int host_progress(struct avt_task *task, double percent, const char *fmt, ...)
{
    struct task *t = task_of(task);
    char *msg = NULL, *clean = NULL;
    va_list ap;

    if (t->pool == NULL)
        return 0;
    if (isnan(percent) || percent < 0)
        percent = 0;
    if (percent > 100)
        percent = 100;
    if (fmt != NULL) {
        va_start(ap, fmt);
        msg = xvasprintf(fmt, ap);
        va_end(ap);
        clean = clean_str(msg, MESSAGE_MAX);
        free(msg);
    }
    pool_post_progress(t->pool, t, percent, clean);
    free(clean);
    return 0;
}

static int host_is_cancelled(const struct avt_task *task)
{
    const struct task *t =
        (const struct task *)(const void *)((const char *)task - offsetof(struct task, pub));
    return atomic_load(&t->cancel) != TASK_CANCEL_NONE;
}

/* plugin_of_host() for the const table the plugin passes back. */
static const struct plugin *host_plugin(const struct avt_host *host)
{
    return (const struct plugin *)(const void *)((const char *)host -
                                                 offsetof(struct plugin, host));
}

static int host_hot_cache(const struct avt_host *host, int add, const char *name)
{
    const struct plugin *p = host_plugin(host);
    char *clean;

    if (name == NULL || *name == '\0' || strlen(name) > NAME_MAX_)
        return -EINVAL;
    if (p->pool == NULL)
        return 0;
    clean = clean_str(name, NAME_MAX_);
    pool_post_hotcache(p->pool, add, clean);
    free(clean);
    return 0;
}

static int host_hot_cache_add(const struct avt_host *host, const char *name)
{
    return host_hot_cache(host, 1, name);
}

static int host_hot_cache_remove(const struct avt_host *host, const char *name)
{
    return host_hot_cache(host, 0, name);
}

static void host_log(const struct avt_host *host, const struct avt_task *task, int level,
                     const char *fmt, ...)
{
    struct log_ctx ctx = {.plugin = host_plugin(host)->name};
    va_list ap;

    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    if (level > log_level || fmt == NULL)
        return;
    if (task != NULL) {
        ctx.task_id = task->id;
        ctx.job_id = task->job_id;
        ctx.type = task->type;
    }
    va_start(ap, fmt);
    log_vemit(level, &ctx, fmt, ap);
    va_end(ap);
}

void task_host_init(struct avt_host *host)
{
    memset(host, 0, sizeof(*host));
    host->abi_version = AVT_ABI_VERSION;
    host->struct_size = sizeof(*host);
    host->daemon_version = AVT_VERSION;
    host->succeed = host_succeed;
    host->complete = host_complete;
    host->fail = host_fail;
    host->vfail = host_vfail;
    host->progress = host_progress;
    host->is_cancelled = host_is_cancelled;
    host->hot_cache_add = host_hot_cache_add;
    host->hot_cache_remove = host_hot_cache_remove;
    host->log = host_log;
}
