/*
 * task.c - the task object: parsing a poll payload into a struct task, the
 * outcome a handler reports (through the host table, host.c), the mapping
 * from "what the handler did" to the result the orchestrator receives, and
 * the result record itself (PROTOCOL.md 2.2, 2.4, 3.2, 4.5).
 *
 * A task is created on the loop thread, run on exactly one worker thread and
 * handed back to the loop through the worker-to-loop queue (evq.c, whose
 * mutex orders the worker's writes before the loop's reads). Only two fields are shared
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
#include "util.h"

#define ID_MAX 256     /* job_id, task_id */
#define TYPE_MAX 128   /* task type */
#define STATUS_MAX 128 /* custom result status */
#define CODE_MAX 128   /* error code */
#define MESSAGE_MAX TASK_MESSAGE_MAX
#define PAYLOAD_MAX (64u << 20)

static const char msg_not_object[] = "handler returned data that is not a JSON object";

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
    __attribute__((format(printf, 3, 0)));
static void store_failure(struct task *t, const char *code, const char *fmt, va_list ap)
{
    char *msg = fmt != NULL ? xvasprintf(fmt, ap) : xstrdup("");

    clear_outcome(t);
    t->outcome = TASK_OUTCOME_FAILURE;
    t->status = xstrdup("failure");
    t->err_code = str_clean_utf8(code, CODE_MAX);
    t->err_msg = str_clean_utf8(msg, MESSAGE_MAX);
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

    t->id = str_clean_utf8(id, ID_MAX);
    t->job_id = str_clean_utf8(job_id, ID_MAX);
    t->type = str_clean_utf8(type, TYPE_MAX);
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

/* ---- Outcomes reported by the handler (host.c) ---------------------------- */

int task_succeed(struct task *t, json_t *data)
{
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

int task_complete(struct task *t, const char *status, json_t *data)
{
    if (!status_ok(status)) {
        json_decref(data);
        return -EINVAL;
    }
    if (data != NULL && !json_is_object(data))
        return task_succeed(t, data); /* the same rejection */
    if (!claim(t)) {
        json_decref(data);
        return -EALREADY;
    }
    t->outcome = TASK_OUTCOME_SUCCESS;
    t->status = str_clean_utf8(status, STATUS_MAX);
    t->data = data;
    return 0;
}

int task_vfail(struct task *t, const char *code, const char *fmt, va_list ap)
{
    if (code == NULL || *code == '\0')
        return -EINVAL;
    if (!claim(t))
        return -EALREADY;
    store_failure(t, code, fmt, ap);
    return 0;
}
