/*
 * host.c - the daemon's side of the plugin ABI: the functions of struct
 * avt_host (host.h). They validate what the plugin hands in, make it valid
 * UTF-8 of a bounded length, and pass it on: outcomes to the task
 * (task.c), progress and hot-cache changes to the worker-to-loop queue
 * (evq.c), log lines to the log with the plugin and task as context.
 */
#include "host.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "evq.h"
#include "log.h"
#include "task.h"
#include "util.h"

#define NAME_MAX_ 1024 /* hot-cache names, event types */

/* The context of the (const) table the plugin passes back. */
static const struct host_ctx *ctx_of(const struct avt_host *host)
{
    return (const struct host_ctx *)(const void *)((const char *)host -
                                                   offsetof(struct host_ctx, table));
}

static int host_succeed(struct avt_task *task, json_t *data)
{
    return task_succeed(task_of(task), data);
}

static int host_complete(struct avt_task *task, const char *status, json_t *data)
{
    return task_complete(task_of(task), status, data);
}

static int host_vfail(struct avt_task *task, const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static int host_vfail(struct avt_task *task, const char *code, const char *fmt, va_list ap)
{
    return task_vfail(task_of(task), code, fmt, ap);
}

static int host_fail(struct avt_task *task, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int host_fail(struct avt_task *task, const char *code, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = task_vfail(task_of(task), code, fmt, ap);
    va_end(ap);
    return rc;
}

static int host_progress(struct avt_task *task, double percent, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int host_progress(struct avt_task *task, double percent, const char *fmt, ...)
{
    struct task *t = task_of(task);
    char *msg = NULL, *clean = NULL;
    va_list ap;

    if (t->evq == NULL)
        return 0;
    if (isnan(percent) || percent < 0)
        percent = 0;
    if (percent > 100)
        percent = 100;
    if (fmt != NULL) {
        va_start(ap, fmt);
        msg = xvasprintf(fmt, ap);
        va_end(ap);
        clean = str_clean_utf8(msg, TASK_MESSAGE_MAX);
        free(msg);
    }
    evq_post_progress(t->evq, t, percent, clean);
    free(clean);
    return 0;
}

/* The first plugin that emits an event its task's orchestrator cannot take
 * is told in the log; later ones only get -ENOTSUP. */
static atomic_int told_no_events;

static int host_emit_event(struct avt_task *task, const char *type, json_t *payload)
{
    struct task *t = task_of(task);
    if (type == NULL || *type == '\0' || strlen(type) > NAME_MAX_ ||
        strcmp(type, "progress") == 0 || !json_is_object(payload)) {
        json_decref(payload);
        return -EINVAL;
    }
    if (!t->events_ok) {
        json_decref(payload);
        if (atomic_exchange(&told_no_events, 1) == 0) {
            struct log_ctx ctx = {ctx_of(task->host)->plugin, t->id, t->job_id, t->type};
            log_emit(LOG_WARNING, &ctx,
                     "event '%s' not sent: the task's orchestrator speaks RXON 1.0b3, which has "
                     "no custom events (avt_emit_event returned -ENOTSUP; said once)",
                     type);
        }
        return -ENOTSUP;
    }
    if (t->evq == NULL) {
        json_decref(payload);
        return 0;
    }
    char *clean = str_clean_utf8(type, NAME_MAX_);
    evq_post_event(t->evq, t, clean, payload);
    free(clean);
    return 0;
}

static int host_is_cancelled(const struct avt_task *task)
{
    const struct task *t =
        (const struct task *)(const void *)((const char *)task - offsetof(struct task, pub));
    return atomic_load(&t->cancel) != TASK_CANCEL_NONE;
}

static int host_hot_cache(const struct avt_host *host, int add, const char *name)
{
    const struct host_ctx *h = ctx_of(host);
    char *clean;

    if (name == NULL || *name == '\0' || strlen(name) > NAME_MAX_)
        return -EINVAL;
    if (h->evq == NULL)
        return 0;
    clean = str_clean_utf8(name, NAME_MAX_);
    evq_post_hotcache(h->evq, add, clean);
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
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void host_log(const struct avt_host *host, const struct avt_task *task, int level,
                     const char *fmt, ...)
{
    struct log_ctx ctx = {.plugin = ctx_of(host)->plugin};
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

void host_init(struct host_ctx *h, const char *plugin, struct evq *evq)
{
    struct avt_host *host = &h->table;
    memset(h, 0, sizeof(*h));
    h->plugin = plugin;
    h->evq = evq;
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
    host->emit_event = host_emit_event;
}
