/*
 * test_rxon_b3.c - the RXON 1.0b3 wire dialect (rxon_b3.c) as pure
 * functions: the registration and heartbeat bodies a 1.0b13 orchestrator
 * needs (PROTOCOL.md 2.1, 2.3: skills as strings, websockets at the top of
 * the capabilities, no null lists, only ids equal to their job id in
 * current_tasks, "offline" and no skills while draining), progress frames,
 * encoding, results sent as spooled, and every answer reader.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "plugin.h"
#include "rxon.h"
#include "tap.h"
#include "task.h"
#include "util.h"

static struct cfg *load_cfg(void)
{
    char err[AVT_ERRLEN];
    struct cfg *c = NULL;
    setenv("ORCHESTRATOR_URL", "http://127.0.0.1:1", 1);
    setenv("WORKER_ID", "w-1", 1);
    setenv("GPU_MODEL", "a100", 1);
    setenv("GPU_VRAM_GB", "80", 1);
    setenv("WORKER_EXTRA_REGION", "eu", 1);
    if (cfg_load(NULL, &c, err, sizeof(err)) < 0) {
        printf("# cfg_load: %s\n", err);
        abort();
    }
    return c;
}

/* A plugin set of two types, without any plugin behind it. */
static struct plugin_type types[] = {{"echo", NULL, NULL}, {"resize", NULL, NULL}};
static struct plugin_set plugins = {.types = types, .ntypes = 2};

static struct rxon_worker worker(const struct cfg *c, json_t *hot)
{
    return (struct rxon_worker){c, &plugins, hot};
}

TEST(register_body_is_what_1_0b13_reads)
{
    struct cfg *c = load_cfg();
    json_t *hot = json_array();
    struct rxon_worker w = worker(c, hot);
    struct rxon_sync sync = {0};
    json_t *b = rxon_b3.register_body(&w, &sync);
    ASSERT(b != NULL);
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "worker_id")), "w-1");
    json_t *skills = json_object_get(b, "supported_skills");
    EXPECT_EQ_INT(json_array_size(skills), 2);
    EXPECT_EQ_STR(json_string_value(json_array_get(skills, 0)), "echo");
    json_t *caps = json_object_get(b, "capabilities");
    EXPECT(json_is_boolean(json_object_get(caps, "websockets")));
    EXPECT_EQ_STR(json_string_value(json_object_get(json_object_get(caps, "extra"), "region")),
                  "eu");
    json_t *res = json_object_get(b, "resources");
    EXPECT_EQ_INT(json_integer_value(json_object_get(res, "max_concurrent_tasks")),
                  c->max_concurrent_tasks);
    EXPECT_EQ_STR(json_string_value(json_object_get(json_object_get(res, "gpu_info"), "model")),
                  "a100");
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "status")), "idle");
    json_decref(b);
    json_decref(hot);
    cfg_destroy(c);
}

static json_t *beat(const struct cfg *c, int draining, json_t *skills,
                    const struct rxon_task_ref *refs, size_t n)
{
    json_t *hot = json_pack("[s]", "model-x");
    struct rxon_worker w = worker(c, hot);
    struct rxon_state st = {.draining = draining, .free_slots = 1, .skills_now = skills};
    st.tasks = refs;
    st.ntasks = n;
    struct rxon_sync sync = {0};
    json_t *b = rxon_b3.heartbeat_body(&w, &st, &sync);
    json_decref(hot);
    return b;
}

TEST(heartbeat_reports_state_without_null_lists)
{
    struct cfg *c = load_cfg();
    const struct rxon_task_ref refs[] = {{"job-1", "job-1"}, {"branch-7", "job-2"}};
    json_t *skills = json_pack("[s]", "echo");
    json_t *b = beat(c, 0, skills, refs, 2);
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "status")), "idle");
    json_t *cur = json_object_get(b, "current_tasks");
    EXPECT_EQ_INT(json_array_size(cur), 1); /* the branch id would come back as "cancel" */
    EXPECT_EQ_STR(json_string_value(json_array_get(cur, 0)), "job-1");
    EXPECT(json_real_value(json_object_get(b, "load")) == 2.0);
    EXPECT_EQ_INT(json_array_size(json_object_get(b, "supported_skills")), 1);
    EXPECT_EQ_STR(json_string_value(json_array_get(json_object_get(b, "hot_cache"), 0)), "model-x");
    json_decref(b);

    json_t *none = json_array();
    b = beat(c, 0, none, NULL, 0);
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "status")), "busy");
    EXPECT(json_is_array(json_object_get(b, "supported_skills")));
    EXPECT(json_is_array(json_object_get(b, "current_tasks")));
    json_decref(b);

    b = beat(c, 1, skills, NULL, 0); /* draining: offline, no skills */
    EXPECT_EQ_STR(json_string_value(json_object_get(b, "status")), "offline");
    EXPECT_EQ_INT(json_array_size(json_object_get(b, "supported_skills")), 0);
    json_decref(b);
    json_decref(none);
    json_decref(skills);
    cfg_destroy(c);
}

TEST(progress_is_a_websocket_frame_and_results_go_as_spooled)
{
    struct cfg *c = load_cfg();
    struct task *t = task_create("job-1", "job-1", "echo", NULL);
    struct rxon_worker w = worker(c, NULL);
    json_t *ev = rxon_b3.progress_body(&w, t, 50.0, "half");
    EXPECT_EQ_STR(json_string_value(json_object_get(ev, "event")), "progress_update");
    EXPECT(json_real_value(json_object_get(ev, "progress")) == 0.5);
    EXPECT_EQ_STR(json_string_value(json_object_get(ev, "message")), "half");
    char *out = NULL, err[128];
    size_t len = 0;
    struct rxon_key key = {"tok", "w-1"};
    EXPECT_EQ_INT(rxon_b3.encode(ev, RXON_MSG_EVENT, &key, &out, &len, err, sizeof(err)), 0);
    EXPECT(out != NULL && strchr(out, ' ') == NULL && len == strlen(out));
    EXPECT(strstr(out, "security") == NULL); /* 1.0b3 signs nothing */
    free(out);
    json_decref(ev);
    out = (char *)1;
    EXPECT_EQ_INT(rxon_b3.result_wire(&w, "{}", 2, &key, &out, &len, err, sizeof(err)), 0);
    EXPECT(out == NULL); /* send the record as it is */
    EXPECT(rxon_b3.event_body == NULL && rxon_b3.path_events == NULL);
    task_destroy(t);
    cfg_destroy(c);
}

struct cancels {
    char ids[8][32];
    enum rxon_cancel_kind kinds[8];
    int n;
};

static void on_cancel(void *arg, enum rxon_cancel_kind kind, const char *id)
{
    struct cancels *cs = arg;
    snprintf(cs->ids[cs->n], sizeof(cs->ids[0]), "%s", id);
    cs->kinds[cs->n++] = kind;
}

static enum rxon_hb_answer hb(const char *body, int probe, struct cancels *cs)
{
    return rxon_b3.parse_heartbeat_answer(body, strlen(body), probe, on_cancel, cs);
}

TEST(heartbeat_answers)
{
    struct cancels cs = {0};
    EXPECT_EQ_INT(hb("{\"status\": \"ok\"}", 0, &cs), RXON_HB_OK);
    EXPECT_EQ_INT(hb("{\"status\": \"ttl_refreshed\"}", 1, &cs), RXON_HB_OK);
    EXPECT_EQ_INT(hb("null", 1, &cs), RXON_HB_EXPIRED); /* the only "you expired" signal */
    EXPECT_EQ_INT(hb("garbage", 1, &cs), RXON_HB_EXPIRED);
    EXPECT_EQ_INT(hb("null", 0, &cs), RXON_HB_UNEXPECTED);
    EXPECT_EQ_INT(hb("[1]", 0, &cs), RXON_HB_UNEXPECTED);
    EXPECT_EQ_INT(cs.n, 0);
    EXPECT_EQ_INT(hb("{\"status\": \"ok\", \"cancel_task_ids\": [\"a\", 7, \"b\"]}", 0, &cs),
                  RXON_HB_OK);
    EXPECT_EQ_INT(cs.n, 2);
    EXPECT_EQ_STR(cs.ids[0], "a");
    EXPECT_EQ_STR(cs.ids[1], "b");
    EXPECT_EQ_INT(cs.kinds[0], RXON_CANCEL_TASK_IS_JOB);
}

TEST(register_result_and_command_answers)
{
    char *warning = NULL;
    const char *ok = "{\"status\": \"registered\", \"version\": \"1.0b3\", \"warning\": null}";
    EXPECT_EQ_INT(rxon_b3.parse_register_answer(ok, strlen(ok), &warning), RXON_REG_OK);
    EXPECT(warning == NULL);
    const char *warn = "{\"status\": \"registered\", \"warning\": \"mismatch\"}";
    EXPECT_EQ_INT(rxon_b3.parse_register_answer(warn, strlen(warn), &warning), RXON_REG_OK);
    EXPECT_EQ_STR(warning, "mismatch");
    free(warning);
    EXPECT_EQ_INT(rxon_b3.parse_register_answer("{}", 2, &warning), RXON_REG_UNEXPECTED);

    char out[160];
    const char *ign = "{\"status\": \"ignored\", \"reason\": \"stale_task\", \"message\": \"m\"}";
    EXPECT_EQ_INT(rxon_b3.parse_result_answer(ign, strlen(ign), out, sizeof(out)), 1);
    EXPECT_EQ_STR(out, "stale_task (m)");
    const char *acc = "{\"status\": \"accepted\", \"transition\": \"success\"}";
    EXPECT_EQ_INT(rxon_b3.parse_result_answer(acc, strlen(acc), out, sizeof(out)), 0);
    EXPECT_EQ_STR(out, "success");
    EXPECT_EQ_INT(rxon_b3.parse_result_answer("", 0, out, sizeof(out)), 0);
    EXPECT_EQ_STR(out, "200");

    struct rxon_command cmd = {0};
    const char *cancel = "{\"command\": \"cancel_task\", \"task_id\": \"t-1\", \"job_id\": \"j\"}";
    EXPECT_EQ_INT(rxon_b3.parse_ws_command(cancel, strlen(cancel), &cmd), 1);
    EXPECT_EQ_STR(cmd.task_id, "t-1");
    rxon_command_clear(&cmd);
    EXPECT(cmd.task_id == NULL);
    const char *other = "{\"command\": \"reboot\"}";
    EXPECT_EQ_INT(rxon_b3.parse_ws_command(other, strlen(other), &cmd), 0);
    EXPECT(cmd.task_id == NULL);
}

TEST(answer_text_and_refusal_advice)
{
    char out[64];
    const char *e = "{\"error\": \"Missing X-Worker-Token header\"}";
    rxon_answer_text(e, strlen(e), out, sizeof(out));
    EXPECT_EQ_STR(out, "Missing X-Worker-Token header");
    rxon_answer_text("line1\nline2", 11, out, sizeof(out));
    EXPECT_EQ_STR(out, "line1 line2");
    char big[300];
    memset(big, 'x', sizeof(big));
    rxon_answer_text(big, sizeof(big), out, sizeof(out));
    EXPECT_EQ_INT(strlen(out), sizeof(out) - 1);
    char advice[512];
    EXPECT_EQ_INT(rxon_b3.explain(401, "bad token", 0, advice, sizeof(advice)), 1);
    EXPECT_CONTAINS(advice, "WORKER_TOKEN");
    EXPECT_CONTAINS(advice, "GLOBAL_WORKER_TOKEN");
    /* A 1.0b27 orchestrator refusing 1.0b3 messages: the protocol, not the token. */
    EXPECT_EQ_INT(rxon_b3.explain(403, "Missing required timestamp for replay protection", 0,
                                  advice, sizeof(advice)),
                  1);
    EXPECT_CONTAINS(advice, "protocol = auto");
    EXPECT_EQ_INT(rxon_b3.explain(400, "x", 0, advice, sizeof(advice)), 0);
    EXPECT_EQ_INT(rxon_b3.auth_status, 401);
    EXPECT_EQ_STR(rxon_b3.version, "1.0b3");
}

TAP_MAIN()
