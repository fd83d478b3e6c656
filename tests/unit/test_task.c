/*
 * test_task.c - the task module: parsing poll payloads (valid, every kind of
 * invalid, random bytes), the host functions a handler calls, the outcome
 * mapping of task_finish() and the exact result body. Handlers run
 * synchronously through plugin_run() with a fake struct plugin whose host
 * table comes from host_init(); there is no event queue (progress and
 * hot-cache calls are accepted and ignored).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "plugin.h"
#include "tap.h"
#include "task.h"
#include "util.h"

static const char example[] =
    "{\"job_id\": \"8f27c419-aaaa\", \"task_id\": \"8f27c419-bbbb\", \"type\": \"echo\", "
    "\"params\": {\"msg\": \"hi\"}, \"tracing_context\": {}, \"params_metadata\": null}";

/* ---- A fake plugin whose handler does what the current test wants ---- */

static int (*behaviour)(struct avt_task *task);
static int handler_calls;

static int fake_handle(void *state, struct avt_task *task)
{
    (void)state;
    handler_calls++;
    return behaviour(task);
}

static const char *const fake_types[] = {"fake", NULL};
static const struct avt_plugin fake_desc = {
    .abi_version = AVT_ABI_VERSION,
    .struct_size = sizeof(struct avt_plugin),
    .name = "fake",
    .version = "1",
    .task_types = fake_types,
    .handle = fake_handle,
};
static struct plugin fake_plugin;
static char fake_name[] = "fake";

static struct task *fake_task(void)
{
    struct task *t = task_create("t-1", "j-1", "fake", json_pack("{s:i}", "n", 7));
    host_init(&fake_plugin.host, fake_name, NULL);
    fake_plugin.desc = &fake_desc;
    fake_plugin.name = fake_name;
    t->plugin = &fake_plugin;
    handler_calls = 0;
    return t;
}

/* Run `fn` as the handler and return the result body. */
static json_t *run_with(struct task *t, int (*fn)(struct avt_task *))
{
    behaviour = fn;
    plugin_run(t);
    return task_result_json(t, "w-1");
}

static const char *jstr(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static const char *err_code(json_t *r)
{
    return jstr(json_object_get(r, "error"), "code");
}

static const char *err_msg(json_t *r)
{
    return jstr(json_object_get(r, "error"), "message");
}

/* ---- Parsing ---------------------------------------------------------- */

TEST(parse_protocol_example)
{
    char err[AVT_ERRLEN] = "";
    struct task *t = NULL;

    EXPECT_EQ_INT(task_parse(example, strlen(example), &t, err, sizeof(err)), 0);
    ASSERT(t != NULL);
    EXPECT_EQ_STR(t->pub.job_id, "8f27c419-aaaa");
    EXPECT_EQ_STR(t->pub.id, "8f27c419-bbbb");
    EXPECT_EQ_STR(t->pub.type, "echo");
    EXPECT_EQ_STR(jstr(t->pub.params, "msg"), "hi");
    EXPECT(json_is_object(t->pub.tracing_context));
    EXPECT_EQ_INT(json_object_size(t->pub.tracing_context), 0);
    EXPECT(t->pub.params_metadata == NULL);
    EXPECT_EQ_INT(t->pub.priority, 0);
    EXPECT_EQ_INT(t->pub.struct_size, sizeof(struct avt_task));
    EXPECT_EQ_INT(atomic_load(&t->has_outcome), 0);
    EXPECT(t->plugin == NULL);
    task_destroy(t);
}

TEST(parse_defaults_and_optional_members)
{
    static const char *const ok[] = {
        "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\"}",
        "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"params\":null,"
        "\"tracing_context\":null,\"params_metadata\":null}",
    };
    char err[AVT_ERRLEN];
    struct task *t;

    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        t = NULL;
        EXPECT_EQ_INT(task_parse(ok[i], strlen(ok[i]), &t, err, sizeof(err)), 0);
        ASSERT(t != NULL);
        EXPECT(json_is_object(t->pub.params) && json_object_size(t->pub.params) == 0);
        EXPECT(json_is_object(t->pub.tracing_context));
        EXPECT(t->pub.params_metadata == NULL);
        task_destroy(t);
    }
    const char *full = "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"priority\":9,"
                       "\"tracing_context\":{\"traceparent\":\"00-ab\"},"
                       "\"params_metadata\":{\"a.b\":{\"uri\":\"s3://x/y\",\"size\":3}}}";
    t = NULL;
    EXPECT_EQ_INT(task_parse(full, strlen(full), &t, err, sizeof(err)), 0);
    ASSERT(t != NULL);
    EXPECT_EQ_INT(t->pub.priority, 9);
    EXPECT_EQ_STR(jstr(t->pub.tracing_context, "traceparent"), "00-ab");
    ASSERT(t->pub.params_metadata != NULL);
    EXPECT_EQ_STR(jstr(json_object_get(t->pub.params_metadata, "a.b"), "uri"), "s3://x/y");
    task_destroy(t);
}

TEST(parse_rejects_payloads_without_usable_ids)
{
    char huge[600];
    memset(huge, 'a', sizeof(huge));
    huge[sizeof(huge) - 1] = '\0';
    char *huge_id = xasprintf("{\"job_id\":\"%s\",\"task_id\":\"t\",\"type\":\"x\"}", huge);
    static const char nul_in_id[] = "{\"job_id\":\"a\\u0000b\",\"task_id\":\"t\",\"type\":\"x\"}";
    const char *bad[] = {
        "",
        "nope",
        "null",
        "42",
        "\"str\"",
        "[]",
        "[{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\"}]",
        "{}",
        "{\"task_id\":\"t\",\"type\":\"x\"}",
        "{\"job_id\":\"j\",\"type\":\"x\"}",
        "{\"job_id\":1,\"task_id\":\"t\",\"type\":\"x\"}",
        "{\"job_id\":\"j\",\"task_id\":null,\"type\":\"x\"}",
        "{\"job_id\":\"j\",\"task_id\":[\"t\"],\"type\":\"x\"}",
        "{\"job_id\":\"\",\"task_id\":\"t\",\"type\":\"x\"}",
        "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\"",
        "{\"job_id\":\"j\",\"task_id\":\"t\",\"job_id\":\"k\",\"type\":\"x\"}",
        huge_id,
        nul_in_id,
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char err[AVT_ERRLEN] = "";
        struct task *t = (struct task *)&err; /* must be overwritten */
        int rc = task_parse(bad[i], strlen(bad[i]), &t, err, sizeof(err));
        if (rc != -EINVAL || t != NULL || err[0] == '\0')
            TAP_FAIL_("payload %zu (%.60s): rc %d, task %p, err '%s'", i, bad[i], rc, (void *)t,
                      err);
        task_destroy(t == (struct task *)&err ? NULL : t);
    }
    /* A NULL buffer and a truncation of the example. */
    char err[AVT_ERRLEN];
    struct task *t = NULL;
    EXPECT_EQ_INT(task_parse(NULL, 0, &t, err, sizeof(err)), -EINVAL);
    EXPECT_EQ_INT(task_parse(example, 40, &t, err, sizeof(err)), -EINVAL);
    EXPECT(t == NULL);
    EXPECT_CONTAINS(err, "not JSON");
    free(huge_id);
}

TEST(parse_invalid_payload_with_ids_yields_invalid_input_result)
{
    static const struct {
        const char *payload, *why;
    } cases[] = {
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"params\":\"s\"}", "params"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"params\":[1]}", "params"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\"}", "type"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"\"}", "type"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":7}", "type"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"tracing_context\":[]}",
         "tracing_context"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"params_metadata\":\"m\"}",
         "params_metadata"},
        {"{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"x\",\"priority\":\"high\"}", "priority"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char err[AVT_ERRLEN] = "";
        struct task *t = NULL;
        EXPECT_EQ_INT(task_parse(cases[i].payload, strlen(cases[i].payload), &t, err, sizeof(err)),
                      -EINVAL);
        if (t == NULL) {
            TAP_FAIL_("case %zu: no task", i);
            continue;
        }
        EXPECT_CONTAINS(err, cases[i].why);
        EXPECT_EQ_INT(t->outcome, TASK_OUTCOME_FAILURE);
        json_t *r = task_result_json(t, "w");
        EXPECT_EQ_STR(jstr(r, "job_id"), "j");
        EXPECT_EQ_STR(jstr(r, "task_id"), "t");
        EXPECT_EQ_STR(jstr(r, "status"), "failure");
        EXPECT_EQ_STR(err_code(r), "INVALID_INPUT_ERROR");
        EXPECT_CONTAINS(err_msg(r), cases[i].why);
        json_decref(r);
        task_destroy(t);
    }
}

/* Random bytes and mutations of a valid payload: no crash, no leak, and
 * every answer is either a task or -EINVAL. */
TEST(parse_survives_garbage)
{
    unsigned seed = 12345;
    char buf[256], err[AVT_ERRLEN];
    size_t n = strlen(example);

    for (int i = 0; i < 20000; i++) {
        size_t len;
        if (i % 2) {
            len = (size_t)rand_r(&seed) % sizeof(buf);
            for (size_t k = 0; k < len; k++)
                buf[k] = (char)(rand_r(&seed) & 0xff);
        } else {
            len = n < sizeof(buf) ? n : sizeof(buf);
            memcpy(buf, example, len);
            for (int k = 0; k < 3; k++)
                buf[(size_t)rand_r(&seed) % len] = (char)(rand_r(&seed) & 0xff);
            len = (size_t)rand_r(&seed) % (len + 1);
        }
        struct task *t = NULL;
        int rc = task_parse(buf, len, &t, err, sizeof(err));
        if (rc != 0 && rc != -EINVAL)
            TAP_FAIL_("rc %d", rc);
        if (t != NULL) {
            json_t *r = task_result_json(t, "w");
            char *s = json_dumps(r, 0);
            if (s == NULL)
                TAP_FAIL_("result of iteration %d is not encodable", i);
            free(s);
            json_decref(r);
        }
        task_destroy(t);
    }
}

TEST(parse_survives_deep_nesting_and_big_input)
{
    size_t depth = 200000;
    char *buf = xmalloc(depth * 2 + 64);
    char err[AVT_ERRLEN];
    struct task *t = NULL;
    int n = snprintf(buf, 64, "{\"job_id\":\"j\",\"task_id\":\"t\",\"params\":");
    memset(buf + n, '[', depth);
    memset(buf + n + depth, ']', depth);
    buf[n + 2 * depth] = '}';
    EXPECT_EQ_INT(task_parse(buf, (size_t)n + 2 * depth + 1, &t, err, sizeof(err)), -EINVAL);
    EXPECT(t == NULL);
    free(buf);
}

/* ---- Handlers and the outcome mapping --------------------------------- */

static int h_succeed(struct avt_task *task)
{
    return avt_succeed(task,
                       json_pack("{s:s,s:i}", "echo", "x", "n",
                                 (int)json_integer_value(json_object_get(task->params, "n"))));
}

TEST(result_success_exact_shape)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_succeed);

    EXPECT_EQ_INT(handler_calls, 1);
    EXPECT_EQ_INT(json_object_size(r), 7);
    EXPECT_EQ_STR(jstr(r, "job_id"), "j-1");
    EXPECT_EQ_STR(jstr(r, "task_id"), "t-1");
    EXPECT_EQ_STR(jstr(r, "worker_id"), "w-1");
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    EXPECT(json_is_null(json_object_get(r, "error")));
    EXPECT(json_is_null(json_object_get(r, "data_metadata")));
    json_t *expect = json_pack("{s:s,s:i}", "echo", "x", "n", 7);
    EXPECT(json_equal(json_object_get(r, "data"), expect));
    json_decref(expect);
    EXPECT(t->t_finished >= t->t_started && t->t_started >= t->t_received);
    json_decref(r);
    task_destroy(t);
}

static int h_succeed_null(struct avt_task *task)
{
    return avt_succeed(task, NULL);
}

TEST(result_success_without_data_is_null)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_succeed_null);
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    EXPECT(json_is_null(json_object_get(r, "data")));
    json_decref(r);
    task_destroy(t);
}

static int h_custom(struct avt_task *task)
{
    return avt_complete(task, "needs_review", json_pack("{s:b}", "flag", 1));
}

TEST(result_custom_status)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_custom);
    EXPECT_EQ_STR(jstr(r, "status"), "needs_review");
    EXPECT(json_is_true(json_object_get(json_object_get(r, "data"), "flag")));
    EXPECT(json_is_null(json_object_get(r, "error")));
    json_decref(r);
    task_destroy(t);
}

static int h_fail_fmt(struct avt_task *task)
{
    return avt_fail(task, "MY_OWN_CODE", "x=%d %s%%", 42, "y");
}

TEST(result_failure_with_custom_code_and_formatting)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_fail_fmt);
    EXPECT_EQ_STR(jstr(r, "status"), "failure");
    EXPECT(json_is_null(json_object_get(r, "data")));
    EXPECT_EQ_INT(json_object_size(json_object_get(r, "error")), 2);
    EXPECT_EQ_STR(err_code(r), "MY_OWN_CODE");
    EXPECT_EQ_STR(err_msg(r), "x=42 y%");
    json_decref(r);
    task_destroy(t);
}

static int h_none(struct avt_task *task)
{
    (void)task;
    return 0;
}

static int h_eio(struct avt_task *task)
{
    (void)task;
    return -EIO;
}

TEST(no_outcome_maps_to_transient_error)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_none);
    EXPECT_EQ_STR(jstr(r, "status"), "failure");
    EXPECT_EQ_STR(err_code(r), "TRANSIENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "handler returned without an outcome");
    json_decref(r);
    task_destroy(t);

    t = fake_task();
    r = run_with(t, h_eio);
    EXPECT_EQ_STR(err_code(r), "TRANSIENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "handler returned error -5 without an outcome");
    json_decref(r);
    task_destroy(t);
}

static int rc_second, rc_third;

static int h_two_outcomes(struct avt_task *task)
{
    int rc = avt_succeed(task, json_pack("{s:i}", "first", 1));
    rc_second = avt_fail(task, AVT_PERMANENT_ERROR, "too late");
    rc_third = avt_succeed(task, json_pack("{s:i}", "third", 3)); /* freed, not leaked */
    return rc;
}

TEST(first_outcome_wins)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_two_outcomes);
    EXPECT_EQ_INT(rc_second, -EALREADY);
    EXPECT_EQ_INT(rc_third, -EALREADY);
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    EXPECT(json_object_get(json_object_get(r, "data"), "first") != NULL);
    json_decref(r);
    task_destroy(t);
}

static int rc_notobj;

static int h_not_object(struct avt_task *task)
{
    rc_notobj = avt_succeed(task, json_pack("[i,i]", 1, 2));
    return 0;
}

TEST(data_that_is_not_an_object_is_rejected)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_not_object);
    EXPECT_EQ_INT(rc_notobj, -EINVAL);
    EXPECT_EQ_STR(jstr(r, "status"), "failure");
    EXPECT_EQ_STR(err_code(r), "TRANSIENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "handler returned data that is not a JSON object");
    json_decref(r);
    task_destroy(t);
}

static int rc_bad[4];

static int h_bad_calls(struct avt_task *task)
{
    rc_bad[0] = avt_complete(task, "", json_object());
    rc_bad[1] = avt_complete(task, "failure", NULL);
    rc_bad[2] = avt_fail(task, "", "no code");
    rc_bad[3] = avt_fail(task, NULL, "no code");
    return avt_complete(task, "done", NULL);
}

TEST(bad_outcome_arguments_are_refused_without_taking_the_outcome)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_bad_calls);
    for (int i = 0; i < 4; i++)
        EXPECT_EQ_INT(rc_bad[i], -EINVAL);
    EXPECT_EQ_STR(jstr(r, "status"), "done");
    json_decref(r);
    task_destroy(t);
}

static int h_bad_utf8(struct avt_task *task)
{
    return avt_fail(task, "C\xff", "bad \xc3\x28 bytes \xe2\x82");
}

TEST(invalid_utf8_from_a_plugin_still_gives_an_encodable_result)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_bad_utf8);
    char *s = json_dumps(r, 0);
    EXPECT(s != NULL);
    EXPECT_EQ_STR(err_code(r), "C?");
    EXPECT_EQ_STR(err_msg(r), "bad ?( bytes ??");
    free(s);
    json_decref(r);
    task_destroy(t);
}

static struct task *cancel_me;
static enum task_cancel cancel_reason;
static int seen_cancelled;

/* Set an outcome, then get cancelled (as if the loop did it meanwhile). */
static int h_succeed_then_cancelled(struct avt_task *task)
{
    int rc = avt_succeed(task, json_object());
    seen_cancelled = avt_is_cancelled(task);
    task_cancel(cancel_me, cancel_reason);
    seen_cancelled += avt_is_cancelled(task) ? 10 : 0;
    return rc;
}

/* Notice the cancellation and return without an outcome. */
static int h_cancelled_no_outcome(struct avt_task *task)
{
    task_cancel(cancel_me, cancel_reason);
    return avt_is_cancelled(task) ? -ECANCELED : 0;
}

/* Notice the cancellation and fail (what the steps plugin does). */
static int h_cancelled_then_fail(struct avt_task *task)
{
    task_cancel(cancel_me, cancel_reason);
    return avt_fail(task, AVT_TRANSIENT_ERROR, "cancelled");
}

static json_t *run_cancelled(int (*fn)(struct avt_task *), enum task_cancel reason)
{
    struct task *t = fake_task();
    cancel_me = t;
    cancel_reason = reason;
    json_t *r = run_with(t, fn);
    task_destroy(t);
    return r;
}

TEST(cancel_reasons_map_to_results)
{
    json_t *r = run_cancelled(h_succeed_then_cancelled, TASK_CANCEL_ORCHESTRATOR);
    EXPECT_EQ_INT(seen_cancelled, 10);
    EXPECT_EQ_STR(jstr(r, "status"), "cancelled");
    EXPECT(json_is_null(json_object_get(r, "data")));
    EXPECT(json_is_null(json_object_get(r, "error")));
    json_decref(r);

    r = run_cancelled(h_cancelled_no_outcome, TASK_CANCEL_ORCHESTRATOR);
    EXPECT_EQ_STR(jstr(r, "status"), "cancelled");
    json_decref(r);

    r = run_cancelled(h_cancelled_no_outcome, TASK_CANCEL_DEADLINE);
    EXPECT_EQ_STR(jstr(r, "status"), "failure");
    EXPECT_EQ_STR(err_code(r), "TIMEOUT_ERROR");
    json_decref(r);

    r = run_cancelled(h_succeed_then_cancelled, TASK_CANCEL_DEADLINE);
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    json_decref(r);

    r = run_cancelled(h_cancelled_no_outcome, TASK_CANCEL_SHUTDOWN);
    EXPECT_EQ_STR(err_code(r), "TRANSIENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "worker shutting down");
    json_decref(r);

    r = run_cancelled(h_succeed_then_cancelled, TASK_CANCEL_SHUTDOWN);
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    json_decref(r);

    /* A failure reported after noticing gives way to the reason's report. */
    r = run_cancelled(h_cancelled_then_fail, TASK_CANCEL_DEADLINE);
    EXPECT_EQ_STR(err_code(r), "TIMEOUT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "task exceeded its timeout");
    json_decref(r);

    r = run_cancelled(h_cancelled_then_fail, TASK_CANCEL_SHUTDOWN);
    EXPECT_EQ_STR(err_code(r), "TRANSIENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "worker shutting down");
    json_decref(r);
}

TEST(first_cancel_reason_sticks_and_cancelled_tasks_do_not_start)
{
    struct task *t = fake_task();
    task_cancel(t, TASK_CANCEL_DEADLINE);
    task_cancel(t, TASK_CANCEL_ORCHESTRATOR);
    EXPECT_EQ_INT(atomic_load(&t->cancel), TASK_CANCEL_DEADLINE);
    json_t *r = run_with(t, h_succeed);
    EXPECT_EQ_INT(handler_calls, 0);
    EXPECT_EQ_STR(err_code(r), "TIMEOUT_ERROR");
    json_decref(r);
    task_destroy(t);

    t = fake_task();
    task_cancel(t, TASK_CANCEL_ORCHESTRATOR);
    r = run_with(t, h_succeed);
    EXPECT_EQ_INT(handler_calls, 0);
    EXPECT_EQ_STR(jstr(r, "status"), "cancelled");
    json_decref(r);
    task_destroy(t);
}

TEST(unknown_type_is_a_permanent_error_without_running)
{
    struct task *t = task_create("t", "j", "no_such_type", NULL);
    plugin_run(t);
    json_t *r = task_result_json(t, NULL);
    EXPECT_EQ_STR(jstr(r, "status"), "failure");
    EXPECT_EQ_STR(err_code(r), "PERMANENT_ERROR");
    EXPECT_EQ_STR(err_msg(r), "Unsupported task: no_such_type");
    EXPECT(json_is_null(json_object_get(r, "worker_id")));
    json_decref(r);
    task_destroy(t);
}

TEST(set_failure_is_ignored_once_there_is_an_outcome)
{
    struct task *t = fake_task();
    json_t *r = run_with(t, h_succeed);
    json_decref(r);
    task_set_failure(t, AVT_TRANSIENT_ERROR, "worker shutting down");
    r = task_result_json(t, "w");
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    json_decref(r);
    task_destroy(t);

    t = task_create("t", "j", "x", NULL);
    task_set_failure(t, "A", "first %d", 1);
    task_set_failure(t, "B", "second");
    r = task_result_json(t, "w");
    EXPECT_EQ_STR(err_code(r), "A");
    EXPECT_EQ_STR(err_msg(r), "first 1");
    json_decref(r);
    task_destroy(t);
}

static int rc_host[5];

static int h_host_calls(struct avt_task *task)
{
    const struct avt_host *h = task->host;
    rc_host[0] = avt_progress(task, 150, "step %d", 1);
    rc_host[1] = h->hot_cache_add(h, "model-a");
    rc_host[2] = h->hot_cache_add(h, "");
    rc_host[3] = h->hot_cache_remove(h, NULL);
    rc_host[4] = h->hot_cache_remove(h, "model-a");
    avt_log_debug(task, "a debug line %d", 1);
    h->log(h, NULL, 99, "a line at a made-up level");
    return avt_succeed(task, NULL);
}

TEST(host_table_is_complete_and_tolerates_no_event_queue)
{
    struct host_ctx ctx;
    memset(&ctx, 0xa5, sizeof(ctx));
    host_init(&ctx, "p", NULL);
    struct avt_host h = ctx.table;
    EXPECT_EQ_INT(h.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_INT(h.struct_size, sizeof(struct avt_host));
    EXPECT_EQ_STR(h.daemon_version, AVT_VERSION);
    EXPECT(h.succeed && h.complete && h.fail && h.vfail && h.progress && h.is_cancelled &&
           h.hot_cache_add && h.hot_cache_remove && h.log);

    struct task *t = fake_task();
    json_t *r = run_with(t, h_host_calls);
    EXPECT_EQ_INT(rc_host[0], 0);
    EXPECT_EQ_INT(rc_host[1], 0);
    EXPECT_EQ_INT(rc_host[2], -EINVAL);
    EXPECT_EQ_INT(rc_host[3], -EINVAL);
    EXPECT_EQ_INT(rc_host[4], 0);
    EXPECT_EQ_STR(jstr(r, "status"), "success");
    json_decref(r);
    task_destroy(t);
}

TEST(destroy_null_is_a_noop)
{
    task_destroy(NULL);
    task_cancel(NULL, TASK_CANCEL_ORCHESTRATOR);
}

TAP_MAIN()
