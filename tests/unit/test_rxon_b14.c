/*
 * test_rxon_b14.c - the RXON 1.0b14 wire dialect (rxon_b14.c) as pure
 * functions, checked against PROTOCOL-1.0b14.md: every signed body verifies
 * with the real canonical rules (sign.h) and carries an integer timestamp;
 * skills are objects with a hash, sent in a heartbeat only when the hash
 * changed or a full sync is due; statuses idle/busy/full/draining/offline;
 * job ids in current_tasks; no empty objects in heartbeats (the Redis merge
 * of the real orchestrator turns them into arrays); progress as a rounded
 * fraction in a signed event whose bubbling_chain is not signed; results
 * re-signed with their origin, and replaced by a PERMANENT_ERROR when they
 * cannot be signed; every answer reader; the operator's advice.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "plugin.h"
#include "rxon.h"
#include "sign.h"
#include "tap.h"
#include "task.h"
#include "util.h"

#define KEY "worker-token"
static const char *const events_ignore[] = {"bubbling_chain", NULL};

static struct cfg *load_cfg(void)
{
    char err[AVT_ERRLEN];
    struct cfg *c = NULL;
    setenv("ORCHESTRATOR_URL", "http://127.0.0.1:1", 1);
    setenv("WORKER_ID", "w-14", 1);
    setenv("GPU_MODEL", "a100", 1);
    setenv("GPU_VRAM_GB", "80", 1);
    setenv("INSTALLED_SOFTWARE", "{\"ffmpeg\": \"6.0\", \"cuda\": 12}", 1);
    setenv("INSTALLED_MODELS", "[{\"name\": \"llama\", \"version\": \"3\"}]", 1);
    if (cfg_load(NULL, &c, err, sizeof(err)) < 0) {
        printf("# cfg_load: %s\n", err);
        abort();
    }
    return c;
}

static json_t *skill_echo, *skill_plain;
static struct plugin owner; /* the plugin the types belong to: never loaded here */
static struct plugin_type types[2];
static struct plugin_set plugins = {.types = types, .ntypes = 2};

static struct rxon_worker worker(const struct cfg *c, json_t *hot)
{
    return (struct rxon_worker){c, &plugins, hot};
}

/* The bytes the dialect sends for a body, and that they verify. */
static char *encode_ok(json_t *body, enum rxon_msg kind)
{
    struct rxon_key key = {KEY, "w-14"};
    char *out = NULL, err[256], why[256];
    size_t len = 0;
    if (rxon_b14.encode(body, kind, &key, &out, &len, err, sizeof(err)) < 0) {
        printf("# encode: %s\n", err);
        return NULL;
    }
    const char *const *ignore = kind == RXON_MSG_EVENT ? events_ignore : NULL;
    if (sign_verify(out, len, KEY, ignore, why, sizeof(why)) < 0) {
        printf("# not verified: %s\n", why);
        free(out);
        return NULL;
    }
    return out;
}

TEST(registration_is_signed_with_skills_as_objects)
{
    struct cfg *c = load_cfg();
    json_t *hot = json_pack("[s, s]", "sk_echo", "a-model");
    struct rxon_worker w = worker(c, hot);
    struct rxon_sync sync = {0};
    json_t *b = rxon_b14.register_body(&w, &sync);
    ASSERT(b != NULL);
    json_t *skills = json_object_get(b, "supported_skills");
    EXPECT_EQ_INT(json_array_size(skills), 2);
    EXPECT(json_is_object(json_array_get(skills, 0)));
    EXPECT_EQ_STR(json_string_value(json_object_get(json_array_get(skills, 0), "version")), "2.1");
    EXPECT_EQ_STR(json_string_value(json_array_get(json_object_get(b, "available_skills"), 1)),
                  "sk_plain");
    json_t *hs = json_object_get(b, "hot_skills"); /* only the names that are types */
    EXPECT(json_array_size(hs) == 1 &&
           strcmp(json_string_value(json_array_get(hs, 0)), "sk_echo") == 0);
    EXPECT_EQ_INT(strlen(sync.skills_hash), 64);
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "skills_hash")), sync.skills_hash);
    json_t *ts = json_object_get(b, "timestamp");
    EXPECT(json_is_integer(ts) && fabs((double)json_integer_value(ts) - now_wall()) < 5);
    json_t *dev = json_array_get(json_object_get(json_object_get(b, "resources"), "devices"), 0);
    EXPECT_EQ_STR(json_string_value(json_object_get(dev, "model")), "a100");
    json_t *sw = json_object_get(b, "installed_software");
    EXPECT_EQ_STR(json_string_value(json_object_get(sw, "cuda")), "12"); /* a map of strings */
    json_t *art = json_array_get(json_object_get(b, "installed_artifacts"), 0);
    EXPECT_EQ_STR(json_string_value(json_object_get(art, "type")), "model");
    char *out = encode_ok(b, RXON_MSG_REGISTER);
    EXPECT(out != NULL && strstr(out, "\"signer_id\":\"w-14\"") != NULL);
    free(out);
    /* The hash is stable for the same skills and changes with them. */
    struct rxon_sync again = {0};
    json_decref(rxon_b14.register_body(&w, &again));
    EXPECT_EQ_STR(again.skills_hash, sync.skills_hash);
    json_decref(b);
    json_decref(hot);
    cfg_destroy(c);
}

static json_t *beat(const struct cfg *c, struct rxon_sync *sync, int draining, int offline,
                    int free_slots, json_t *skills_now, const struct rxon_task_ref *refs, size_t n,
                    json_t *usage)
{
    json_t *hot = json_array();
    struct rxon_worker w = worker(c, hot);
    struct rxon_state st = {.draining = draining,
                            .offline = offline,
                            .free_slots = free_slots,
                            .skills_now = skills_now,
                            .tasks = refs,
                            .ntasks = n,
                            .usage = usage};
    json_t *b = rxon_b14.heartbeat_body(&w, &st, sync);
    json_decref(hot);
    return b;
}

static const char *status(json_t *b)
{
    return json_string_value(json_object_get(b, "status"));
}

TEST(heartbeat_statuses_and_job_ids)
{
    struct cfg *c = load_cfg();
    struct rxon_sync sync = {0};
    json_t *some = json_pack("[s]", "sk_echo"), *none = json_array();
    const struct rxon_task_ref refs[] = {
        {"task-a", "job-1"}, {"task-b", "job-1"}, {"task-c", "job-2"}};
    json_t *b = beat(c, &sync, 0, 0, 2, some, refs, 3, NULL);
    EXPECT_EQ_STR(status(b), "idle");
    json_t *cur = json_object_get(b, "current_tasks");
    EXPECT_EQ_INT(json_array_size(cur), 2); /* job ids, each once */
    EXPECT_EQ_STR(json_string_value(json_array_get(cur, 0)), "job-1");
    EXPECT_EQ_STR(json_string_value(json_array_get(cur, 1)), "job-2");
    json_decref(b);
    b = beat(c, &sync, 0, 0, 1, none, NULL, 0, NULL);
    EXPECT_EQ_STR(status(b), "busy"); /* slots, but no type has room */
    json_decref(b);
    b = beat(c, &sync, 0, 0, 0, none, NULL, 0, NULL);
    EXPECT_EQ_STR(status(b), "full");
    json_decref(b);
    b = beat(c, &sync, 1, 0, 2, some, NULL, 0, NULL);
    EXPECT_EQ_STR(status(b), "draining");
    EXPECT_EQ_INT(json_array_size(json_object_get(b, "available_skills")), 0);
    json_decref(b);
    b = beat(c, &sync, 1, 1, 2, some, NULL, 0, NULL);
    EXPECT_EQ_STR(status(b), "offline");
    char *out = encode_ok(b, RXON_MSG_HEARTBEAT);
    EXPECT(out != NULL);
    free(out);
    json_decref(b);
    json_decref(some);
    json_decref(none);
    cfg_destroy(c);
}

TEST(skills_go_only_when_the_hash_changed_or_a_full_sync_is_due)
{
    struct cfg *c = load_cfg();
    json_t *hot = json_array();
    struct rxon_worker w = worker(c, hot);
    struct rxon_sync sync = {0};
    json_decref(rxon_b14.register_body(&w, &sync));
    json_t *none = json_array();
    json_t *b = beat(c, &sync, 0, 0, 1, none, NULL, 0, NULL);
    EXPECT(json_object_get(b, "supported_skills") == NULL); /* it has them */
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "skills_hash")), sync.skills_hash);
    json_decref(b);
    sync.full_sync = 1; /* e.g. a heartbeat that carried them failed */
    b = beat(c, &sync, 0, 0, 1, none, NULL, 0, NULL);
    EXPECT(json_is_array(json_object_get(b, "supported_skills")));
    EXPECT_EQ_INT(sync.full_sync, 0);
    json_decref(b);
    snprintf(sync.skills_hash, sizeof(sync.skills_hash), "old"); /* the plugins changed since */
    b = beat(c, &sync, 0, 0, 1, none, NULL, 0, NULL);
    EXPECT(json_is_array(json_object_get(b, "supported_skills")));
    EXPECT_EQ_INT(strlen(sync.skills_hash), 64);
    json_decref(b);
    json_decref(none);
    json_decref(hot);
    cfg_destroy(c);
}

TEST(heartbeats_carry_capabilities_and_usage_but_no_empty_object)
{
    struct cfg *c = load_cfg(); /* cost_per_skill is {} by default */
    struct rxon_sync sync = {0};
    json_t *none = json_array();
    json_t *usage = json_pack("{s:f, s:f}", "cpu_load_percent", 12.5, "ram_used_gb", 3.0);
    json_t *b = beat(c, &sync, 0, 0, 1, none, NULL, 0, usage);
    json_t *caps = json_object_get(b, "capabilities");
    EXPECT(json_is_true(json_object_get(caps, "websockets")));
    EXPECT(json_is_true(json_object_get(json_object_get(caps, "extra"), "websockets")));
    EXPECT(json_object_get(caps, "cost_per_skill") == NULL); /* {} would come back as [] */
    EXPECT(json_real_value(json_object_get(json_object_get(b, "usage"), "cpu_load_percent")) ==
           12.5);
    char *out = encode_ok(b, RXON_MSG_HEARTBEAT);
    EXPECT(out != NULL && strstr(out, ":{}") == NULL);
    free(out);
    json_decref(b);
    json_decref(usage);
    json_decref(none);
    cfg_destroy(c);
}

TEST(progress_and_events_are_signed_events)
{
    struct cfg *c = load_cfg();
    struct rxon_worker w = worker(c, NULL);
    struct task *t = task_create("task-1", "job-1", "sk_echo", NULL);
    json_t *p = rxon_b14.progress_body(&w, t, 100.0 / 3.0, "a third");
    EXPECT_EQ_STR(json_string_value(json_object_get(p, "event_type")), "progress");
    json_t *payload = json_object_get(p, "payload");
    EXPECT(json_real_value(json_object_get(payload, "progress")) == 0.3333);
    EXPECT_EQ_STR(json_string_value(json_object_get(p, "target_job_id")), "job-1");
    EXPECT_EQ_INT(strlen(json_string_value(json_object_get(p, "event_id"))), 36);
    char *out = encode_ok(p, RXON_MSG_EVENT);
    EXPECT(out != NULL && strstr(out, "\"bubbling_chain\":[]") != NULL);
    free(out);
    /* bubbling_chain is not signed: the orchestrator appends to it. */
    json_object_set_new(p, "bubbling_chain", json_pack("[s]", "relay"));
    out = encode_ok(p, RXON_MSG_EVENT);
    EXPECT(out != NULL);
    free(out);
    json_t *data = json_pack("{s:i}", "n", 1);
    json_t *e = rxon_b14.event_body(&w, t, "note", data);
    EXPECT_EQ_STR(json_string_value(json_object_get(e, "event_type")), "note");
    EXPECT(json_equal(json_object_get(e, "payload"), data));
    json_decref(e);
    json_decref(data);
    json_decref(p);
    task_destroy(t);
    cfg_destroy(c);
}

TEST(results_are_signed_anew_or_replaced_when_they_cannot_be)
{
    struct cfg *c = load_cfg();
    struct rxon_worker w = worker(c, NULL);
    struct rxon_key key = {KEY, "w-14"};
    const char *rec = "{\"job_id\":\"j\",\"task_id\":\"task-1\",\"worker_id\":\"w-14\","
                      "\"status\":\"success\",\"data\":{\"x\":1},\"error\":null,"
                      "\"data_metadata\":null}";
    char *out = NULL, err[512], why[256];
    size_t len = 0;
    EXPECT_EQ_INT(rxon_b14.result_wire(&w, rec, strlen(rec), &key, &out, &len, err, sizeof(err)),
                  0);
    ASSERT(out != NULL);
    EXPECT_EQ_INT(sign_verify(out, len, KEY, NULL, why, sizeof(why)), 0);
    EXPECT(strstr(out, "\"origin_worker_id\":\"w-14\"") != NULL);
    EXPECT(strstr(out, "null") == NULL && strstr(out, "\"timestamp\":") != NULL);
    free(out);
    const char *huge = "{\"job_id\":\"j\",\"task_id\":\"task-2\",\"status\":\"success\","
                       "\"data\":{\"x\":1e300}}";
    EXPECT_EQ_INT(rxon_b14.result_wire(&w, huge, strlen(huge), &key, &out, &len, err, sizeof(err)),
                  1);
    ASSERT(out != NULL);
    EXPECT_EQ_INT(sign_verify(out, len, KEY, NULL, why, sizeof(why)), 0);
    EXPECT(strstr(out, "\"code\":\"PERMANENT_ERROR\"") != NULL);
    EXPECT(strstr(out, "\"task_id\":\"task-2\"") != NULL);
    EXPECT(strstr(err, "sent PERMANENT_ERROR in its place") != NULL);
    free(out);
    EXPECT(rxon_b14.result_wire(&w, "[]", 2, &key, &out, &len, err, sizeof(err)) < 0);
    cfg_destroy(c);
}

TEST(unsigned_when_there_is_no_key)
{
    json_t *b = json_pack("{s:s, s:n}", "worker_id", "w", "x");
    struct rxon_key key = {NULL, "w"};
    char *out = NULL, err[128];
    size_t len;
    EXPECT_EQ_INT(rxon_b14.encode(b, RXON_MSG_HEARTBEAT, &key, &out, &len, err, sizeof(err)), 0);
    EXPECT_EQ_STR(out, "{\"worker_id\":\"w\"}");
    free(out);
    json_decref(b);
}

TEST(tasks_keep_their_deadline)
{
    char buf[512], err[256];
    double due = now_wall() + 100;
    snprintf(buf, sizeof(buf),
             "{\"job_id\":\"j\",\"task_id\":\"task-9\",\"type\":\"sk_echo\",\"params\":{},"
             "\"timestamp\":1796599688.590541,\"priority\":5,\"deadline\":%.3f,"
             "\"security\":{\"signature\":\"x\"}}",
             due);
    struct task *t = NULL;
    ASSERT(rxon_b14.parse_task(buf, strlen(buf), &t, err, sizeof(err)) == 0);
    EXPECT(fabs(t->pub.deadline - due) < 0.01);
    EXPECT(fabs(t->deadline - (now_mono() + 100)) < 2);
    EXPECT_EQ_INT(t->pub.priority, 5);
    task_destroy(t);
    const char *none = "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"params\":{}}";
    ASSERT(rxon_b14.parse_task(none, strlen(none), &t, err, sizeof(err)) == 0);
    EXPECT(t->deadline == 0 && t->pub.deadline == 0);
    task_destroy(t);
}

struct cancels {
    char ids[8][40];
    enum rxon_cancel_kind kinds[8];
    int n;
};

static void on_cancel(void *arg, enum rxon_cancel_kind kind, const char *id)
{
    struct cancels *cs = arg;
    snprintf(cs->ids[cs->n], sizeof(cs->ids[0]), "%s", id);
    cs->kinds[cs->n++] = kind;
}

TEST(answers)
{
    struct cancels cs = {0};
    const char *hb =
        "{\"cancel_task_ids\":[\"job-1\"],\"require_full_sync\":true,\"status\":\"ok\"}";
    EXPECT_EQ_INT(rxon_b14.parse_heartbeat_answer(hb, strlen(hb), 0, on_cancel, &cs),
                  RXON_HB_RESYNC);
    EXPECT(cs.n == 1 && cs.kinds[0] == RXON_CANCEL_JOB && strcmp(cs.ids[0], "job-1") == 0);
    EXPECT_EQ_INT(rxon_b14.parse_heartbeat_answer("null", 4, 1, on_cancel, &cs), RXON_HB_EXPIRED);
    EXPECT_EQ_INT(rxon_b14.parse_heartbeat_answer("{\"status\":\"ok\"}", 15, 0, on_cancel, &cs),
                  RXON_HB_OK);

    char *warning = NULL;
    const char *ok = "{\"status\":\"registered\",\"version\":\"1.0b14\"}";
    EXPECT_EQ_INT(rxon_b14.parse_register_answer(ok, strlen(ok), &warning), RXON_REG_OK);
    const char *old =
        "{\"status\": \"registered\", \"version\": \"1.0b3\", \"warning\": \"mismatch\"}";
    EXPECT_EQ_INT(rxon_b14.parse_register_answer(old, strlen(old), &warning),
                  RXON_REG_WRONG_VERSION);
    EXPECT_EQ_STR(warning, "mismatch");
    free(warning);

    char out[200];
    EXPECT_EQ_INT(
        rxon_b14.parse_event_answer("{\"status\":\"event_accepted\"}", 27, out, sizeof(out)), 0);
    const char *bad =
        "{\"code\":\"CONTRACT_VIOLATION_ERROR\",\"message\":\"bad\",\"status\":\"error\"}";
    EXPECT_EQ_INT(rxon_b14.parse_event_answer(bad, strlen(bad), out, sizeof(out)), -EINVAL);
    EXPECT_EQ_STR(out, "CONTRACT_VIOLATION_ERROR: bad");

    struct rxon_command cmd = {0};
    const char *c1 = "{\"command\": \"cancel_task\", \"task_id\": \"task-1\", \"job_id\": \"j\"}";
    EXPECT_EQ_INT(rxon_b14.parse_ws_command(c1, strlen(c1), &cmd), 1);
    EXPECT(strcmp(cmd.task_id, "task-1") == 0 && strcmp(cmd.job_id, "j") == 0);
    rxon_command_clear(&cmd);
    const char *c2 = "{\"command\": \"cancel_task\", \"job_id\": \"j\"}";
    EXPECT_EQ_INT(rxon_b14.parse_ws_command(c2, strlen(c2), &cmd), 1);
    EXPECT(cmd.task_id == NULL && strcmp(cmd.job_id, "j") == 0);
    rxon_command_clear(&cmd);
}

TEST(advice_for_the_operator)
{
    char out[512];
    EXPECT_EQ_INT(rxon_b14.explain(403, "Message timestamp expired (replay protection)", 95.4, out,
                                   sizeof(out)),
                  1);
    EXPECT(strstr(out, "differ by 95 s") != NULL && strstr(out, "NTP") != NULL);
    EXPECT_EQ_INT(rxon_b14.explain(403, "Invalid cryptographic signature", NAN, out, sizeof(out)),
                  1);
    EXPECT(strstr(out, "GLOBAL_WORKER_TOKEN") != NULL && strstr(out, "signing_key") != NULL);
    EXPECT(strstr(out, "clock") == NULL);
    EXPECT_EQ_INT(rxon_b14.explain(403, "Invalid cryptographic signature", -45, out, sizeof(out)),
                  1);
    EXPECT(strstr(out, "more than 30 s") != NULL);
    EXPECT_EQ_INT(
        rxon_b14.explain(403, "Unauthorized: No valid token found", NAN, out, sizeof(out)), 1);
    EXPECT(strstr(out, "WORKER_TOKEN") != NULL);
    EXPECT_EQ_INT(rxon_b14.explain(400,
                                   "Invalid TaskResult payload: Expected `object`, got `str` "
                                   "- at `$.error`",
                                   NAN, out, sizeof(out)),
                  1);
    EXPECT(strstr(out, "member $.error ") != NULL);
    EXPECT_EQ_INT(rxon_b14.explain(400, "input length is 0", NAN, out, sizeof(out)), 0);
    EXPECT_EQ_INT(rxon_b14.explain(500, "boom", NAN, out, sizeof(out)), 0);
}

__attribute__((constructor)) static void init(void)
{
    skill_echo = json_pack("{s:s, s:s, s:s, s:{s:s}}", "name", "sk_echo", "type", "sk_echo",
                           "version", "2.1", "input_schema", "type", "object");
    skill_plain = json_pack("{s:s, s:s}", "name", "sk_plain", "type", "sk_plain");
    types[0] = (struct plugin_type){"sk_echo", &owner, skill_echo};
    types[1] = (struct plugin_type){"sk_plain", &owner, skill_plain};
}

TAP_MAIN()
