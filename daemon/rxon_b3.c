/*
 * rxon_b3.c - the RXON 1.0b3 wire dialect, as Avtomatika 1.0b13 speaks it
 * (PROTOCOL.md; section numbers in comments refer to it). Pure functions
 * behind struct rxon_dialect (rxon.h), plus the answer readers both
 * dialects share.
 *
 * The quirks of 1.0b13 this dialect works around on the worker side: no
 * null lists in heartbeats (3.5), `websockets` at the top level of the
 * capabilities (the SDK's extra.websockets is never read, 2.1, 4.11), only
 * ids equal to their job id in current_tasks (parallel-branch ids always
 * come back as "cancel", 3.7), and an empty-body PATCH as the only
 * reliable "you expired" signal (2.3, 3.6).
 */
#include "rxon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "plugin.h"
#include "task.h"
#include "util.h"

/* ---- Messages ---------------------------------------------------------------- */

static json_t *b3_register_body(const struct rxon_worker *w, struct rxon_sync *sync)
{
    const struct cfg *c = w->cfg;
    (void)sync;
    json_t *skills = json_array();
    for (size_t i = 0; i < w->plugins->ntypes; i++)
        json_array_append_new(skills, json_string(w->plugins->types[i].type));
    json_t *gpu = c->gpu_model != NULL
                      ? json_pack("{s:s, s:i}", "model", c->gpu_model, "vram_gb", c->gpu_vram_gb)
                      : json_null();
    json_t *extra = json_deep_copy(c->extra);
    json_object_set_new(extra, "websockets", json_boolean(c->websockets));
    /* websockets at the top level of capabilities is what the orchestrator
     * reads; the SDK's extra.websockets is never read (2.1, 4.11). */
    json_t *caps =
        json_pack("{s:s, s:s, s:O, s:n, s:b, s:o}", "hostname", c->hostname, "ip_address",
                  c->ip_address ? c->ip_address : "127.0.0.1", "cost_per_skill", c->cost_per_skill,
                  "s3_config_hash", "websockets", c->websockets, "extra", extra);
    return json_pack("{s:s, s:s, s:o, s:{s:i, s:i, s:o}, s:O, s:O, s:o, s:s}", "worker_id",
                     c->worker_id, "worker_type", c->worker_type, "supported_skills", skills,
                     "resources", "max_concurrent_tasks", c->max_concurrent_tasks, "cpu_cores",
                     c->cpu_cores, "gpu_info", gpu, "installed_software", c->installed_software,
                     "installed_models", c->installed_models, "capabilities", caps, "status",
                     "idle");
}

static json_t *b3_heartbeat_body(const struct rxon_worker *w, const struct rxon_state *st,
                                 struct rxon_sync *sync)
{
    (void)sync;
    json_t *skills = st->draining ? json_array() : json_copy(st->skills_now);
    json_t *current = json_array();
    /* Only ids equal to their job id can be looked up by the orchestrator;
     * parallel-branch ids would always come back as "cancel" (3.7). */
    for (size_t i = 0; i < st->ntasks; i++) {
        if (strcmp(st->tasks[i].task_id, st->tasks[i].job_id) == 0)
            json_array_append_new(current, json_string(st->tasks[i].task_id));
    }
    const char *status = st->draining ? "offline" : json_array_size(skills) > 0 ? "idle" : "busy";
    return json_pack("{s:s, s:s, s:f, s:o, s:o, s:O}", "worker_id", w->cfg->worker_id, "status",
                     status, "load", (double)st->ntasks, "current_tasks", current,
                     "supported_skills", skills, "hot_cache", w->hot_cache);
}

/* Progress is a WebSocket frame; 1.0b3 has no HTTP progress endpoint (2.6). */
static json_t *b3_progress_body(const struct rxon_worker *w, const struct task *t, double percent,
                                const char *message)
{
    (void)w;
    return json_pack("{s:s, s:s, s:s, s:f, s:s}", "event", "progress_update", "task_id", t->id,
                     "job_id", t->job_id, "progress", percent / 100.0, "message",
                     message ? message : "");
}

static int b3_encode(json_t *body, enum rxon_msg kind, const struct rxon_key *key, char **out,
                     size_t *outlen, char *err, size_t errlen)
{
    (void)kind;
    (void)key;
    *out = json_dumps(body, JSON_COMPACT);
    if (*out == NULL)
        return fmt_err(err, errlen, "the message cannot be encoded as JSON");
    *outlen = strlen(*out);
    return 0;
}

/* A 1.0b3 result is the record itself (task.h): sent as spooled. */
static int b3_result_wire(const struct rxon_worker *w, const char *record, size_t len,
                          const struct rxon_key *key, char **out, size_t *outlen, char *err,
                          size_t errlen)
{
    (void)w, (void)record, (void)len, (void)key, (void)err, (void)errlen;
    *out = NULL;
    *outlen = 0;
    return 0;
}

/* ---- Answers ----------------------------------------------------------------- */

static enum rxon_hb_answer b3_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                     rxon_cancel_fn on_cancel, void *arg)
{
    return rxon_parse_heartbeat_answer(body, len, probe, RXON_CANCEL_TASK_IS_JOB, 0, on_cancel,
                                       arg);
}

static enum rxon_register_answer b3_parse_register_answer(const char *body, size_t len,
                                                          char **warning)
{
    enum rxon_register_answer rc = rxon_parse_register_answer(body, len, "1.0b3", warning);
    if (rc == RXON_REG_UNEXPECTED) /* 1.0b13 warns only about a registration it made */
        free_and_null(*warning);
    return rc;
}

static int b3_parse_ws_command(const char *msg, size_t len, struct rxon_command *cmd)
{
    json_t *j = json_loadb(msg, len, 0, NULL);
    const char *c = json_string_value(json_object_get(j, "command"));
    const char *id = json_string_value(json_object_get(j, "task_id"));
    int ok = c != NULL && strcmp(c, "cancel_task") == 0 && id != NULL;
    cmd->task_id = ok ? xstrdup(id) : NULL;
    cmd->job_id = NULL;
    json_decref(j);
    return ok;
}

/* A 1.0b27 orchestrator refuses 1.0b3 messages for their missing signature
 * (PROTOCOL-1.0b14.md 4.1): that is a protocol choice, not a token. */
static int b3_explain(long status, const char *text, double clock_skew, char *out, size_t outlen)
{
    (void)clock_skew;
    if (status != 401 && status != 403)
        return 0;
    if (strstr(text, "timestamp") != NULL || strstr(text, "security context") != NULL)
        snprintf(out, outlen,
                 "the orchestrator wants signed messages: it speaks RXON 1.0b14 (Avtomatika "
                 "1.0b21 or later), and this worker was set to speak 1.0b3 to it; set "
                 "[orchestrator] protocol = auto (or 1.0b14), or RXON_PROTOCOL");
    else
        snprintf(out, outlen, "%s", RXON_TOKEN_ADVICE);
    return 1;
}

const struct rxon_dialect rxon_b3 = {
    .version = "1.0b3",
    .server = "Avtomatika 1.0b13",
    .worker_id_header = 0,
    .auth_status = 401,
    .probe_expired = 1,
    .progress_via = RXON_PROGRESS_WS_ONLY,
    .path_events = NULL,
    .register_body = b3_register_body,
    .heartbeat_body = b3_heartbeat_body,
    .progress_body = b3_progress_body,
    .event_body = NULL,
    .encode = b3_encode,
    .result_wire = b3_result_wire,
    .parse_task = task_parse,
    .parse_heartbeat_answer = b3_parse_heartbeat_answer,
    .parse_register_answer = b3_parse_register_answer,
    .parse_result_answer = rxon_parse_result_answer,
    .parse_event_answer = NULL,
    .parse_ws_command = b3_parse_ws_command,
    .explain = b3_explain,
    .final_offline = 0,
    .path_sts_refresh = NULL,
    .sts_any_credential = 0,
};
