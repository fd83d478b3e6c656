/* task.c - placeholder until the task module lands; see task.h. */
#include "task.h"

#include <errno.h>
#include <stdlib.h>

#include "util.h"

int task_parse(const char *buf, size_t len, struct task **out, char *err, size_t errlen)
{
    (void)buf;
    (void)len;
    *out = NULL;
    return fmt_err(err, errlen, "not built yet");
}

struct task *task_create(const char *id, const char *job_id, const char *type, json_t *params)
{
    (void)id;
    (void)job_id;
    (void)type;
    json_decref(params);
    return NULL;
}

void task_destroy(struct task *t)
{
    free(t);
}

void task_run(struct task *t)
{
    (void)t;
}

void task_finish(struct task *t, int handler_rc)
{
    (void)t;
    (void)handler_rc;
}

void task_set_failure(struct task *t, const char *code, const char *fmt, ...)
{
    (void)t;
    (void)code;
    (void)fmt;
}

void task_cancel(struct task *t, enum task_cancel reason)
{
    (void)t;
    (void)reason;
}

json_t *task_result_json(const struct task *t, const char *worker_id)
{
    (void)t;
    (void)worker_id;
    return NULL;
}

void task_host_init(struct avt_host *host)
{
    (void)host;
}
