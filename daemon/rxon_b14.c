/*
 * rxon_b14.c - the RXON 1.0b14 wire dialect, as Avtomatika 1.0b27 speaks it
 * (PROTOCOL-1.0b14.md; section numbers in comments refer to it). Pure
 * functions behind struct rxon_dialect (rxon.h); the signing itself is
 * sign.c's over canon.c's canonical form.
 *
 * What sets it apart from 1.0b3 (section 8): every register, heartbeat
 * with a body, result and event is signed (HMAC-SHA256 over the canonical
 * JSON, integer timestamp, security.signature and signer_id, keyed with the
 * worker's static token, never an access token: 2.5); skills are objects
 * (a string among them breaks dispatch for every worker: Decision 7);
 * heartbeats report job ids in current_tasks and get job ids back in
 * cancel_task_ids (Decision 4); the skills travel with a hash and only when
 * it changed (3.2); every heartbeat carries the complete capabilities with
 * websockets, which registration cannot store (Decision 6); progress and
 * custom events are signed events, over the WebSocket when it is open, else
 * POST /_worker/events (3.5).
 */
#include "rxon.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "canon.h"
#include "cfg.h"
#include "plugin.h"
#include "sign.h"
#include "task.h"
#include "util.h"

#define VERSION "1.0b14"

static const char *const event_ignore[] = {"bubbling_chain", NULL};

/* ---- The worker's description ------------------------------------------------------- */

static json_t *skill_objects(const struct rxon_worker *w)
{
    json_t *a = json_array();
    for (size_t i = 0; i < w->plugins->ntypes; i++) {
        json_t *s = w->plugins->types[i].skill;
        json_array_append_new(a, s != NULL
                                     ? json_deep_copy(s)
                                     : json_pack("{s:s, s:s}", "name", w->plugins->types[i].type,
                                                 "type", w->plugins->types[i].type));
    }
    return a;
}

static json_t *type_names(const struct rxon_worker *w)
{
    json_t *a = json_array();
    for (size_t i = 0; i < w->plugins->ntypes; i++)
        json_array_append_new(a, json_string(w->plugins->types[i].type));
    return a;
}

/* hot_skills: the hot-cache names that are task types of this worker (the
 * orchestrator prefers workers that hold a type hot, 3.1). */
static json_t *hot_skills(const struct rxon_worker *w)
{
    json_t *a = json_array(), *v;
    size_t i;
    json_array_foreach(w->hot_cache, i, v)
    {
        if (plugin_set_find(w->plugins, json_string_value(v)) != NULL)
            json_array_append(a, v);
    }
    return a;
}

/* The complete capabilities: a heartbeat's object replaces the stored one
 * (the merge is shallow), so it must carry everything (Decision 6). */
static json_t *capabilities(const struct cfg *c)
{
    json_t *extra = json_deep_copy(c->extra);
    json_object_set_new(extra, "websockets", json_boolean(c->websockets));
    return json_pack("{s:s, s:s, s:O, s:o, s:b}", "hostname", c->hostname, "ip_address",
                     c->ip_address ? c->ip_address : "127.0.0.1", "cost_per_skill",
                     c->cost_per_skill, "extra", extra, "websockets", c->websockets);
}

/* resources: properties matched >= by the orchestrator, devices one to one. */
static json_t *resources(const struct cfg *c)
{
    json_t *devices = json_array();
    if (c->gpu_model != NULL)
        json_array_append_new(devices, json_pack("{s:s, s:s, s:s, s:{s:i}}", "type", "gpu", "model",
                                                 c->gpu_model, "id", "0", "properties", "memory_gb",
                                                 c->gpu_vram_gb));
    return json_pack("{s:o, s:{s:i, s:i}}", "devices", devices, "properties", "cpu_cores",
                     c->cpu_cores, "max_concurrent_tasks", c->max_concurrent_tasks);
}

/* installed_software: a map of strings (a number becomes its text). */
static json_t *software(const struct cfg *c)
{
    json_t *o = json_object(), *v;
    const char *k;
    json_object_foreach(c->installed_software, k, v)
    {
        if (json_is_string(v)) {
            json_object_set(o, k, v);
        } else {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            json_object_set_new(o, k, json_string(s != NULL ? s : ""));
            free(s);
        }
    }
    return o;
}

/* installed_artifacts from installed_models [{name, version}]. */
static json_t *artifacts(const struct cfg *c)
{
    json_t *a = json_array(), *m;
    size_t i;
    json_array_foreach(c->installed_models, i, m)
    {
        json_t *art = json_pack("{s:O, s:s}", "name", json_object_get(m, "name"), "type", "model");
        json_t *ver = json_object_get(m, "version");
        if (art == NULL)
            continue;
        if (json_is_string(ver))
            json_object_set(art, "version", ver);
        json_array_append_new(a, art);
    }
    return a;
}

/* The skills hash: sha256 of the canonical {capabilities, extra, skills},
 * as SDK 1.0b18 computes it (3.2); the orchestrator only compares it. */
static void skills_hash(const struct cfg *c, json_t *skills, char out[72])
{
    json_t *o = json_pack("{s:O, s:O, s:O}", "capabilities", c->cost_per_skill, "extra", c->extra,
                          "skills", skills);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL, *canon = NULL, err[128];
    size_t len = 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    if (text != NULL && canon_json(text, strlen(text), NULL, &canon, &len, err, sizeof(err)) == 0 &&
        EVP_Digest(canon, len, md, &mdlen, EVP_sha256(), NULL) == 1) {
        for (unsigned int i = 0; i < mdlen && i < 32; i++)
            snprintf(out + 2 * i, 3, "%02x", md[i]);
    }
    free(canon);
    free(text);
    json_decref(o);
}

static json_int_t now_seconds(void)
{
    return (json_int_t)now_wall();
}

/* ---- Messages ------------------------------------------------------------------------ */

static json_t *b14_register_body(const struct rxon_worker *w, struct rxon_sync *sync)
{
    const struct cfg *c = w->cfg;
    json_t *skills = skill_objects(w);
    skills_hash(c, skills, sync->skills_hash);
    sync->full_sync = 0; /* registration stores the skills and their hash together */
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:I}", "worker_id",
                     c->worker_id, "worker_type", c->worker_type, "supported_skills", skills,
                     "available_skills", type_names(w), "hot_skills", hot_skills(w), "resources",
                     resources(c), "installed_software", software(c), "installed_artifacts",
                     artifacts(c), "capabilities", capabilities(c), "skills_hash",
                     sync->skills_hash, "timestamp", now_seconds());
}

/* idle only when a task could start now; full when no slot is free. */
static const char *status_of(const struct rxon_state *st)
{
    if (st->offline)
        return "offline";
    if (st->draining)
        return "draining";
    if (json_array_size(st->skills_now) > 0)
        return "idle";
    return st->free_slots <= 0 ? "full" : "busy";
}

/* The job ids of the running tasks, each once (Decision 4). */
static json_t *job_ids(const struct rxon_state *st)
{
    json_t *a = json_array();
    for (size_t i = 0; i < st->ntasks; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(st->tasks[j].job_id, st->tasks[i].job_id) == 0;
        if (!seen)
            json_array_append_new(a, json_string(st->tasks[i].job_id));
    }
    return a;
}

/*
 * Members whose value is an empty object, removed at every depth. Found
 * against the real 1.0b27 on RedisStorage (the contract is silent): a
 * heartbeat is merged into the stored record by a Lua script whose
 * serializer (cmsgpack) turns an empty object into an empty array, so an
 * empty cost_per_skill came back as [] and every dispatch failed with
 * "'list' object has no attribute 'get'". An absent member means the same
 * to the orchestrator.
 */
static void strip_empty_objects(json_t *v)
{
    const char *k;
    json_t *m;
    void *tmp;
    size_t i;
    if (json_is_array(v)) {
        json_array_foreach(v, i, m) strip_empty_objects(m);
        return;
    }
    json_object_foreach_safe(v, tmp, k, m)
    {
        strip_empty_objects(m);
        if (json_is_object(m) && json_object_size(m) == 0)
            json_object_del(v, k);
    }
}

static json_t *b14_heartbeat_body(const struct rxon_worker *w, const struct rxon_state *st,
                                  struct rxon_sync *sync)
{
    const struct cfg *c = w->cfg;
    json_t *skills = skill_objects(w);
    char hash[72];
    skills_hash(c, skills, hash);
    int leaving = st->draining || st->offline;
    json_t *avail = leaving ? json_array() : json_incref(st->skills_now);
    json_t *b =
        json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:o, s:I}", "worker_id", c->worker_id, "status",
                  status_of(st), "current_tasks", job_ids(st), "available_skills", avail,
                  "hot_skills", leaving ? json_array() : hot_skills(w), "skills_hash", hash,
                  "capabilities", capabilities(c), "timestamp", now_seconds());
    /* The skills only when the orchestrator lacks them: equal hashes make it
     * drop the list anyway (3.2). */
    if (sync->full_sync || strcmp(hash, sync->skills_hash) != 0) {
        json_object_set(b, "supported_skills", skills);
        snprintf(sync->skills_hash, sizeof(sync->skills_hash), "%s", hash);
        sync->full_sync = 0;
    }
    json_decref(skills);
    if (st->usage != NULL)
        json_object_set(b, "usage", st->usage);
    strip_empty_objects(b);
    return b;
}

/* An event's envelope (3.5); payload is stolen. */
static json_t *event(const struct rxon_worker *w, const struct task *t, const char *type,
                     json_t *payload)
{
    char id[37];
    rxon_uuid4(id);
    const char *me = w->cfg->worker_id;
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:[], s:I}", "event_id", id, "worker_id",
                     me, "origin_worker_id", me, "event_type", type, "payload", payload,
                     "target_job_id", t->job_id, "target_task_id", t->id, "bubbling_chain",
                     "timestamp", now_seconds());
}

/* Progress as the SDK sends it: a fraction (the orchestrator stores the
 * number as sent), kept to four decimals so that its text is the same in
 * every shortest-round-trip printer (9, orjson versions). */
static json_t *b14_progress_body(const struct rxon_worker *w, const struct task *t, double percent,
                                 const char *message)
{
    double fraction = round_away(percent * 100.0) / 10000.0;
    json_t *p = json_pack("{s:f, s:s}", "progress", fraction, "message", message ? message : "");
    return event(w, t, "progress", p);
}

static json_t *b14_event_body(const struct rxon_worker *w, const struct task *t, const char *type,
                              json_t *payload)
{
    return event(w, t, type, json_deep_copy(payload));
}

static int b14_encode(json_t *body, enum rxon_msg kind, const struct rxon_key *key, char **out,
                      size_t *outlen, char *err, size_t errlen)
{
    const char *const *ignore = kind == RXON_MSG_EVENT ? event_ignore : NULL;
    char *text = json_dumps(body, JSON_COMPACT);
    int rc;
    if (text == NULL)
        return fmt_err(err, errlen, "the message cannot be encoded as JSON");
    if (key->key != NULL && key->key[0] != '\0')
        rc = sign_message(text, strlen(text), key->key, key->signer, ignore, out, outlen, err,
                          errlen);
    else /* the orchestrator has no key: unsigned, timestamp still required (2.1) */
        rc = canon_json(text, strlen(text), NULL, out, outlen, err, errlen);
    free(text);
    return rc;
}

/* The 1.0b14 result of a spooled record (3.4): the record's members that are
 * set, its origin (this worker) and a fresh timestamp (every attempt is
 * signed anew: a signature is good for 60 s only). */
static json_t *result_body(const struct rxon_worker *w, json_t *rec)
{
    json_t *b =
        json_pack("{s:O, s:O, s:s, s:s, s:I}", "job_id", json_object_get(rec, "job_id"), "task_id",
                  json_object_get(rec, "task_id"), "worker_id", w->cfg->worker_id,
                  "origin_worker_id", w->cfg->worker_id, "timestamp", now_seconds());
    static const char *const keep[] = {"status", "data", "error", "data_metadata"};
    for (size_t i = 0; b != NULL && i < ARRAY_LEN(keep); i++) {
        json_t *v = json_object_get(rec, keep[i]);
        if (v != NULL && !json_is_null(v))
            json_object_set(b, keep[i], v);
    }
    return b;
}

/* The failure sent in place of a result that cannot be signed (2.3). */
static json_t *unsignable(const struct rxon_worker *w, json_t *rec, const char *why)
{
    json_t *r =
        json_pack("{s:O, s:O, s:s, s:n, s:{s:s, s:s}}", "job_id", json_object_get(rec, "job_id"),
                  "task_id", json_object_get(rec, "task_id"), "status", "failure", "data", "error",
                  "code", "PERMANENT_ERROR", "message", why);
    json_t *b = r != NULL ? result_body(w, r) : NULL;
    json_decref(r);
    return b;
}

static int b14_result_wire(const struct rxon_worker *w, const char *record, size_t len,
                           const struct rxon_key *key, char **out, size_t *outlen, char *err,
                           size_t errlen)
{
    json_t *rec = json_loadb(record, len, 0, NULL);
    if (!json_is_string(json_object_get(rec, "job_id")) ||
        !json_is_string(json_object_get(rec, "task_id"))) {
        json_decref(rec);
        return fmt_err(err, errlen, "the spooled record is not a result");
    }
    json_t *b = result_body(w, rec);
    int rc = b14_encode(b, RXON_MSG_RESULT, key, out, outlen, err, errlen);
    json_decref(b);
    if (rc < 0) {
        char why[AVT_ERRLEN];
        snprintf(why, sizeof(why), "the task's result cannot be signed for RXON 1.0b14: %s", err);
        b = unsignable(w, rec, why);
        rc = b != NULL ? b14_encode(b, RXON_MSG_RESULT, key, out, outlen, err, errlen) : -EINVAL;
        json_decref(b);
        if (rc == 0) {
            snprintf(err, errlen, "%s; sent PERMANENT_ERROR in its place", why);
            rc = 1;
        }
    }
    json_decref(rec);
    return rc;
}

/* ---- Answers ---------------------------------------------------------------------------- */

/* task_parse() plus the deadline (3.3): absolute unix seconds. */
static int b14_parse_task(const char *buf, size_t len, struct task **out, char *err, size_t errlen)
{
    int rc = task_parse(buf, len, out, err, errlen);
    if (rc < 0 || *out == NULL)
        return rc;
    json_t *d = json_object_get((*out)->payload, "deadline");
    if (json_is_number(d) && json_number_value(d) > 0 && isfinite(json_number_value(d))) {
        (*out)->pub.deadline = json_number_value(d);
        (*out)->deadline = now_mono() + (json_number_value(d) - now_wall());
    }
    return 0;
}

static enum rxon_hb_answer b14_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                      rxon_cancel_fn on_cancel, void *arg)
{
    /* cancel_task_ids are job ids (6); require_full_sync is new (3.2) */
    return rxon_parse_heartbeat_answer(body, len, probe, RXON_CANCEL_JOB, 1, on_cancel, arg);
}

static enum rxon_register_answer b14_parse_register_answer(const char *body, size_t len,
                                                           char **warning)
{
    return rxon_parse_register_answer(body, len, VERSION, warning);
}

static int b14_parse_event_answer(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    const char *code = json_string_value(json_object_get(j, "code"));
    const char *msg = json_string_value(json_object_get(j, "message"));
    int rc = status != NULL && strcmp(status, "event_accepted") == 0 ? 0 : -EINVAL;
    snprintf(out, outlen, "%s%s%s", code ? code : "", code ? ": " : "",
             msg      ? msg
             : status ? status
                      : "no status");
    json_decref(j);
    return rc;
}

static int b14_parse_ws_command(const char *msg, size_t len, struct rxon_command *cmd)
{
    json_t *j = json_loadb(msg, len, 0, NULL);
    const char *c = json_string_value(json_object_get(j, "command"));
    const char *task_id = json_string_value(json_object_get(j, "task_id"));
    const char *job_id = json_string_value(json_object_get(j, "job_id"));
    int ok = c != NULL && strcmp(c, "cancel_task") == 0 && (task_id != NULL || job_id != NULL);
    cmd->task_id = ok && task_id != NULL ? xstrdup(task_id) : NULL;
    cmd->job_id = ok && job_id != NULL ? xstrdup(job_id) : NULL;
    json_decref(j);
    return ok;
}

/* ---- What to tell the operator ---------------------------------------------------------- */

static int clock_off(double skew)
{
    return !isnan(skew) && fabs(skew) > 30;
}

/* A 403 (1.2, 2.1): the token, the signing key, the clock or the protocol. */
static void explain_403(const char *text, double skew, char *out, size_t outlen)
{
    if (strstr(text, "timestamp expired") != NULL)
        snprintf(out, outlen,
                 "the orchestrator's clock and this machine's differ by %.0f s (its Date header; "
                 "a signed message must be within 60 s): synchronise the clocks (NTP, e.g. "
                 "systemd-timesyncd) on both machines",
                 isnan(skew) ? 0.0 : skew);
    else if (strstr(text, "signature") != NULL || strstr(text, "security context") != NULL ||
             strstr(text, "signer ID") != NULL)
        snprintf(out, outlen,
                 "the orchestrator checks signatures with another key: it uses this worker's "
                 "individual token from its workers.toml when it has one, else its "
                 "GLOBAL_WORKER_TOKEN; set WORKER_TOKEN to that token (or [orchestrator] "
                 "signing_key when the orchestrator authenticates by certificate)%s",
                 clock_off(skew) ? "; its clock also differs from this machine's by more than "
                                   "30 s: check NTP"
                                 : "");
    else if (strstr(text, "Missing required timestamp") != NULL)
        snprintf(out, outlen,
                 "the message had no timestamp: the orchestrator and this worker disagree about "
                 "the protocol; set [orchestrator] protocol = auto");
    else
        snprintf(out, outlen, "%s%s", RXON_TOKEN_ADVICE,
                 clock_off(skew) ? "; the clocks also differ by more than 30 s: check NTP" : "");
}

/* A 400 (1.2): name the member the orchestrator refused, from msgspec's
 * "... - at `$.path`". */
static int explain_400(const char *text, char *out, size_t outlen)
{
    const char *at = strstr(text, "at `$");
    if (at == NULL)
        return 0;
    const char *end = strchr(at + 4, '`');
    int n = end != NULL ? (int)(end - (at + 4)) : (int)strlen(at + 4);
    snprintf(out, outlen,
             "it refused the member %.*s of the message; this is a bug of avtworkerd or a value "
             "from a plugin or the configuration that the orchestrator's model does not allow",
             n, at + 4);
    return 1;
}

static int b14_explain(long status, const char *text, double clock_skew, char *out, size_t outlen)
{
    if (status == 400)
        return explain_400(text, out, outlen);
    if (status != 401 && status != 403)
        return 0;
    explain_403(text, clock_skew, out, outlen);
    return 1;
}

const struct rxon_dialect rxon_b14 = {
    .version = VERSION,
    .server = "Avtomatika 1.0b27",
    .worker_id_header = 1,
    .auth_status = 403,
    .probe_expired = 1,
    .progress_via = RXON_PROGRESS_WS_OR_HTTP,
    .path_events = "/_worker/events",
    .register_body = b14_register_body,
    .heartbeat_body = b14_heartbeat_body,
    .progress_body = b14_progress_body,
    .event_body = b14_event_body,
    .encode = b14_encode,
    .result_wire = b14_result_wire,
    .parse_task = b14_parse_task,
    .parse_heartbeat_answer = b14_parse_heartbeat_answer,
    .parse_register_answer = b14_parse_register_answer,
    .parse_result_answer = rxon_parse_result_answer,
    .parse_event_answer = b14_parse_event_answer,
    .parse_ws_command = b14_parse_ws_command,
    .explain = b14_explain,
    .final_offline = 1,
    .path_sts_refresh = "/_worker/auth/token/refresh",
    .sts_any_credential = 1,
};
