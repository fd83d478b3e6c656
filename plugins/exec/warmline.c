/*
 * warmline.c - the line protocol between the daemon and the long-lived
 * children of a persistent type (avtworkerd-warm(7)): one JSON object per
 * line, each way. The daemon writes "task" and "cancel" lines; a child
 * writes one "ready" line once it can take tasks, then for each task any
 * number of "progress" lines and exactly one "result" line. Pure functions:
 * what a line means, not what to do about it (warm.c).
 */
#include "exec.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int proto(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int proto(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EPROTO;
}

static int known_code(const char *s)
{
    return strcmp(s, AVT_TRANSIENT_ERROR) == 0 || strcmp(s, AVT_PERMANENT_ERROR) == 0 ||
           strcmp(s, AVT_INVALID_INPUT_ERROR) == 0;
}

static int parse_ready(struct wline *l, char *err, size_t errlen)
{
    json_t *hc = json_object_get(l->root, "hot_cache"), *v;
    size_t i;
    if (hc != NULL && !json_is_array(hc))
        return proto(err, errlen, "ready: \"hot_cache\" must be an array of names");
    json_array_foreach(hc, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            strlen(json_string_value(v)) != json_string_length(v))
            return proto(err, errlen, "ready: hot_cache[%zu] must be a non-empty string", i);
    }
    l->hot_cache = hc;
    return 0;
}

static int parse_progress(struct wline *l, char *err, size_t errlen)
{
    json_t *pc = json_object_get(l->root, "percent"), *msg = json_object_get(l->root, "message");
    if (!json_is_number(pc) || !isfinite(json_number_value(pc)))
        return proto(err, errlen, "progress: \"percent\" must be a number from 0 to 100");
    if (msg != NULL && !json_is_string(msg) && !json_is_null(msg))
        return proto(err, errlen, "progress: \"message\" must be a string");
    l->percent = json_number_value(pc);
    l->message = json_is_string(msg) ? json_string_value(msg) : NULL;
    return 0;
}

static int parse_error(struct wline *l, json_t *e, char *err, size_t errlen)
{
    json_t *code = json_object_get(e, "code"), *msg = json_object_get(e, "message");
    if (!json_is_object(e) || !json_is_string(code) || !known_code(json_string_value(code)))
        return proto(err, errlen,
                     "result: \"error\" must be {\"code\": TRANSIENT_ERROR, PERMANENT_ERROR or "
                     "INVALID_INPUT_ERROR, \"message\": text}");
    if (msg != NULL && !json_is_string(msg))
        return proto(err, errlen, "result: error.message must be a string");
    l->code = json_string_value(code);
    l->message = msg != NULL ? json_string_value(msg) : "";
    return 0;
}

static int parse_result(struct wline *l, char *err, size_t errlen)
{
    json_t *data = json_object_get(l->root, "data"), *e = json_object_get(l->root, "error");
    json_t *st = json_object_get(l->root, "status");
    if ((data != NULL) == (e != NULL))
        return proto(err, errlen, "result: exactly one of \"data\" (an object) and \"error\"");
    if (e != NULL)
        return st != NULL ? proto(err, errlen, "result: \"status\" only with \"data\"")
                          : parse_error(l, e, err, errlen);
    if (!json_is_object(data))
        return proto(err, errlen, "result: \"data\" must be a JSON object");
    if (st != NULL && (!json_is_string(st) || json_string_length(st) == 0))
        return proto(err, errlen, "result: \"status\" must be a non-empty string");
    l->data = data;
    l->status = st != NULL ? json_string_value(st) : "success";
    return 0;
}

int wline_parse(const char *line, size_t len, struct wline *out, char *err, size_t errlen)
{
    json_error_t jerr;
    memset(out, 0, sizeof(*out));
    out->root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (out->root == NULL)
        return proto(err, errlen, "not JSON (%s at column %d)", jerr.text, jerr.column);
    json_t *type = json_object_get(out->root, "type"), *id = json_object_get(out->root, "id");
    const char *t = json_is_string(type) ? json_string_value(type) : "";
    if (!json_is_object(out->root))
        return proto(err, errlen, "not a JSON object");
    if (strcmp(t, "ready") == 0) {
        out->kind = WLINE_READY;
        return parse_ready(out, err, errlen);
    }
    if (strcmp(t, "progress") != 0 && strcmp(t, "result") != 0)
        return proto(err, errlen, "\"type\" must be \"ready\", \"progress\" or \"result\"");
    if (!json_is_string(id))
        return proto(err, errlen, "%s: \"id\" must be the task's id (a string)", t);
    out->id = json_string_value(id);
    out->kind = t[0] == 'p' ? WLINE_PROGRESS : WLINE_RESULT;
    return out->kind == WLINE_PROGRESS ? parse_progress(out, err, errlen)
                                       : parse_result(out, err, errlen);
}

void wline_free(struct wline *l)
{
    json_decref(l->root);
    l->root = NULL;
}

static char *with_newline(json_t *o)
{
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    char *l = realloc(s, n + 2);
    if (l == NULL) {
        free(s);
        return NULL;
    }
    l[n] = '\n';
    l[n + 1] = '\0';
    return l;
}

char *wline_task(const struct avt_task *task)
{
    double deadline = 0;
    if (task->struct_size >= offsetof(struct avt_task, deadline) + sizeof(double))
        deadline = task->deadline;
    /* JSON_ENSURE_ASCII: a U+2028 in a param cannot split the line for a
     * child that splits on more than "\n". */
    return with_newline(json_pack(
        "{s:s, s:s, s:s, s:s, s:O, s:o, s:i}", "type", "task", "id", task->id, "job_id",
        task->job_id, "task_type", task->type, "params", task->params, "deadline",
        deadline > 0 ? json_real(deadline) : json_null(), "priority", (int)task->priority));
}

char *wline_cancel(const char *id, const char *reason)
{
    return with_newline(json_pack("{s:s, s:s, s:s}", "type", "cancel", "id", id, "reason", reason));
}
