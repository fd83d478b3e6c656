/*
 * rxon.c - what the wire dialects share (rxon.h): the operator's excerpt of
 * an answer, the readers of result, heartbeat and register answers (the
 * same in both versions but for a few knobs), the clearing of a command,
 * and the random ids of events.
 */
#include "rxon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util.h"

#define ANSWER_PARSE_MAX (64 * 1024) /* the largest error answer parsed for its text */

/* An error answer worth parsing for its "error": a small JSON object. Any
 * other body is only excerpted, so that a large hostile one (a 15 MiB
 * `[{},{},...]` is 1.2 GB once parsed) is never built. */
static int small_object(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    return len <= ANSWER_PARSE_MAX && i < len && body[i] == '{';
}

void rxon_answer_text(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *j = small_object(body, len) ? json_loadb(body, len, 0, NULL) : NULL;
    const char *e = j != NULL ? json_string_value(json_object_get(j, "error")) : NULL;
    if (e != NULL) {
        snprintf(out, outlen, "%s", e);
    } else {
        size_t n = len < 120 ? len : 120;
        snprintf(out, outlen, "%.*s%s", (int)n, body, len > n ? "..." : "");
        for (char *p = out; *p; p++) {
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        }
    }
    json_decref(j);
}

void rxon_command_clear(struct rxon_command *cmd)
{
    free_and_null(cmd->task_id);
    free_and_null(cmd->job_id);
}

int rxon_parse_result_answer(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    int ignored = status != NULL && strcmp(status, "ignored") == 0;
    if (ignored) {
        const char *reason = json_string_value(json_object_get(j, "reason"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        snprintf(out, outlen, "%s (%s)", reason ? reason : "no reason", msg ? msg : "");
    } else {
        const char *tr = json_string_value(json_object_get(j, "transition"));
        snprintf(out, outlen, "%s", tr ? tr : status ? status : "200");
    }
    json_decref(j);
    return ignored;
}

enum rxon_hb_answer rxon_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                enum rxon_cancel_kind kind, int full_sync,
                                                rxon_cancel_fn on_cancel, void *arg)
{
    enum rxon_hb_answer rc = RXON_HB_OK;
    json_t *j = json_loadb(body, len, JSON_DECODE_ANY, NULL);
    if (probe && (j == NULL || json_is_null(j))) {
        rc = RXON_HB_EXPIRED; /* the only reliable "you expired" signal (2.3, 3.6; 1.0b14 3.2) */
    } else if (json_is_object(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(j, "cancel_task_ids"), i, v)
        {
            if (json_is_string(v))
                on_cancel(arg, kind, json_string_value(v));
        }
        if (full_sync && json_is_true(json_object_get(j, "require_full_sync")))
            rc = RXON_HB_RESYNC;
    } else if (!probe) {
        rc = RXON_HB_UNEXPECTED;
    }
    json_decref(j);
    return rc;
}

enum rxon_register_answer rxon_parse_register_answer(const char *body, size_t len,
                                                     const char *version, char **warning)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    const char *v = json_string_value(json_object_get(j, "version"));
    const char *w = json_string_value(json_object_get(j, "warning"));
    enum rxon_register_answer rc = RXON_REG_UNEXPECTED;
    if (status != NULL && strcmp(status, "registered") == 0)
        rc = v != NULL && strcmp(v, version) != 0 ? RXON_REG_WRONG_VERSION : RXON_REG_OK;
    *warning = w != NULL ? xstrdup(w) : NULL;
    json_decref(j);
    return rc;
}

void rxon_uuid4(char out[37])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (n < 0 && errno != EINTR)
            abort(); /* the kernel's random source cannot fail once seeded */
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}
