/*
 * test_plugin_steps.c - unit tests of the steps example plugin against the
 * mock host: every task type with defaults and params, every param error,
 * per-job attempt counting (including eviction and concurrent counting),
 * cancellation of sleeps and steps, progress values, configuration keys and
 * hot-cache calls.
 */
#include "steps/steps.c"

#include <errno.h>
#include <pthread.h>

#include "mock_host.h"
#include "tap.h"
#include "util.h"

/* A fresh plugin state with fast steps unless a test configures otherwise. */
static struct steps_state *start_plugin(void)
{
    void *state = NULL;
    char err[256];

    if (mock_plugin_init(&avt_plugin, &state) != 0 ||
        mock_plugin_configure(&avt_plugin, state, "default_step_ms", "1", err, sizeof(err)) != 0)
        abort();
    return state;
}

/* Run one task of `type` on a plugin state; the caller frees it. */
static struct mock_task *run(struct steps_state *st, const char *type, const char *job,
                             const char *params)
{
    struct mock_task *mt = mock_task_new_job(type, job, params);

    mock_run(&avt_plugin, st, mt);
    return mt;
}

/* Expect an INVALID_INPUT_ERROR whose message names `param`. */
static void expect_invalid(struct steps_state *st, const char *type, const char *params,
                           const char *param)
{
    struct mock_task *mt = run(st, type, "job-invalid", params);

    if (mt->outcome != MOCK_FAILED || mt->code == NULL ||
        strcmp(mt->code, AVT_INVALID_INPUT_ERROR) != 0 || strstr(mt->message, param) == NULL) {
        TAP_FAIL_("%s %s: got outcome %d code %s message %s (wanted one naming %s)", type, params,
                  mt->outcome, mt->code ? mt->code : "-", mt->message ? mt->message : "-", param);
    }
    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->nprogress, 0);
    EXPECT_EQ_INT(mt->noutcomes, 1);
    mock_task_free(mt);
}

TEST(descriptor)
{
    EXPECT_EQ_INT(avt_plugin.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_INT(avt_plugin.struct_size, sizeof(struct avt_plugin));
    EXPECT_EQ_STR(avt_plugin.name, "steps");
    EXPECT(avt_plugin.init && avt_plugin.configure && avt_plugin.start && avt_plugin.handle &&
           avt_plugin.shutdown);
    /* The type list and the dispatch table agree. */
    for (size_t i = 0; i < ARRAY_LEN(handlers); i++)
        EXPECT_EQ_STR(avt_plugin.task_types[i], handlers[i].type);
    EXPECT(avt_plugin.task_types[ARRAY_LEN(handlers)] == NULL);
}

TEST(configure_defaults_and_keys)
{
    void *state;
    struct steps_state *st;
    char err[256];

    ASSERT(mock_plugin_init(&avt_plugin, &state) == 0);
    st = state;
    EXPECT(st->host == mock_host());
    EXPECT_EQ_INT(st->max_steps, 1000);
    EXPECT_EQ_INT(st->default_step_ms, 100);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "max_steps", "7", err, sizeof(err)), 0);
    EXPECT_EQ_INT(st->max_steps, 7);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "default_step_ms", "0", err, sizeof(err)),
                  0);
    EXPECT_EQ_INT(st->default_step_ms, 0);
    mock_reset();
    EXPECT_EQ_INT(avt_plugin.start(st, err, sizeof(err)), 0);
    EXPECT(mock_log_contains("max_steps=7"));
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(configure_bad_values)
{
    static const char *const bad_max[] = {"0",  "-1", "abc", "10x",     "",
                                          " 5", "+5", "-",   "1000001", "99999999999999999999999"};
    static const char *const bad_ms[] = {"-1", "1.5", "3600001", "ms", "", "0x10"};
    struct steps_state *st = start_plugin();
    char err[256];

    for (size_t i = 0; i < ARRAY_LEN(bad_max); i++) {
        err[0] = '\0';
        EXPECT_EQ_INT(
            mock_plugin_configure(&avt_plugin, st, "max_steps", bad_max[i], err, sizeof(err)),
            -EINVAL);
        EXPECT_CONTAINS(err, "must be an integer from 1 to 1000000");
    }
    for (size_t i = 0; i < ARRAY_LEN(bad_ms); i++) {
        err[0] = '\0';
        EXPECT_EQ_INT(
            mock_plugin_configure(&avt_plugin, st, "default_step_ms", bad_ms[i], err, sizeof(err)),
            -EINVAL);
        EXPECT_CONTAINS(err, "must be an integer from 0 to 3600000");
    }
    /* Refused values leave the configuration alone. */
    EXPECT_EQ_INT(st->max_steps, 1000);
    EXPECT_EQ_INT(st->default_step_ms, 1);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(configure_unknown_key)
{
    struct steps_state *st = start_plugin();
    char err[256] = "";

    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "max_step", "5", err, sizeof(err)),
                  -EINVAL);
    EXPECT_CONTAINS(err, "unknown key");
    EXPECT_CONTAINS(err, "max_steps");
    /* A tiny buffer is still NUL-terminated. */
    memset(err, 'x', sizeof(err));
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "nope", "1", err, 4), -EINVAL);
    EXPECT_EQ_INT(strlen(err), 3);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_reports_each_step)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "progress", NULL, "{\"steps\":4,\"step_seconds\":0.01}");

    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 4);
    ASSERT(mt->nprogress == 4);
    for (int i = 0; i < 4; i++)
        EXPECT(fabs(mt->percents[i] - 25.0 * (i + 1)) < 1e-9);
    EXPECT_EQ_STR(mt->last_progress, "step 4/4");
    EXPECT(mt->elapsed >= 0.04);
    EXPECT_EQ_INT(mt->violations, 0);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_defaults_five_steps_of_200ms)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "progress", NULL, "{}");

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 5);
    EXPECT_EQ_INT(mt->nprogress, 5);
    EXPECT(fabs(mt->percents[0] - 20.0) < 1e-9);
    EXPECT_EQ_STR(mt->last_progress, "step 5/5");
    EXPECT(mt->elapsed >= 0.99);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_zero_steps_and_integer_seconds)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "progress", NULL, "{\"steps\":0,\"step_seconds\":5}");

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 0);
    EXPECT_EQ_INT(mt->nprogress, 0);
    EXPECT(mt->elapsed < 1.0);
    mock_task_free(mt);
    mt = run(st, "progress", NULL, "{\"steps\":1,\"step_seconds\":0}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mt->nprogress, 1);
    EXPECT(fabs(mt->last_percent - 100.0) < 1e-9);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_invalid_params)
{
    struct steps_state *st = start_plugin();
    char err[64];

    expect_invalid(st, "progress", "{\"steps\":\"4\"}", "params.steps");
    expect_invalid(st, "progress", "{\"steps\":1.5}", "params.steps");
    expect_invalid(st, "progress", "{\"steps\":-1}", "params.steps");
    expect_invalid(st, "progress", "{\"steps\":null}", "params.steps");
    expect_invalid(st, "progress", "{\"steps\":1001}", "from 0 to 1000");
    expect_invalid(st, "progress", "{\"step_seconds\":\"0.1\"}", "params.step_seconds");
    expect_invalid(st, "progress", "{\"step_seconds\":-0.1}", "params.step_seconds");
    expect_invalid(st, "progress", "{\"step_seconds\":100000}", "params.step_seconds");
    expect_invalid(st, "progress", "{\"step_seconds\":[1]}", "params.step_seconds");
    /* max_steps bounds what a task may ask for. */
    ASSERT(mock_plugin_configure(&avt_plugin, st, "max_steps", "3", err, sizeof(err)) == 0);
    expect_invalid(st, "progress", "{\"steps\":4}", "from 0 to 3");
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(default_steps_capped_by_max_steps)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt;
    char err[64];

    ASSERT(mock_plugin_configure(&avt_plugin, st, "max_steps", "2", err, sizeof(err)) == 0);
    mt = run(st, "progress", NULL, "{\"step_seconds\":0}");
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 2);
    EXPECT_EQ_INT(mt->nprogress, 2);
    mock_task_free(mt);
    mt = run(st, "steps", NULL, "{}");
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 2);
    EXPECT_EQ_STR(mt->last_progress, "step 2/2");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_cancelled_between_steps)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = mock_task_new("progress", "{\"steps\":10,\"step_seconds\":0.01}");

    mock_cancel_after_progress(mt, 2);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(mt->message, "cancelled");
    EXPECT_EQ_INT(mt->nprogress, 2);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(sleep_sleeps_and_polls_cancellation)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "sleep", NULL, "{\"seconds\":0.2}");

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(fabs(mock_data_real(mt, "slept") - 0.2) < 1e-9);
    EXPECT(mt->elapsed >= 0.2);
    /* Slices of at most 50 ms: at least 4 checks in 200 ms. */
    EXPECT(atomic_load(&mt->is_cancelled_calls) >= 4);
    mock_task_free(mt);
    mt = run(st, "sleep", NULL, "{\"seconds\":0}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(fabs(mock_data_real(mt, "slept")) < 1e-9);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(sleep_cancel_stops_promptly)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = mock_task_new("sleep", "{}"); /* default: 30 s */

    mock_cancel_after_ms(mt, 100);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(mt->message, "cancelled");
    EXPECT(mt->elapsed >= 0.09);
    /* 100 ms + one 50 ms slice, with slack for loaded machines. */
    EXPECT(mt->elapsed < 0.1 + 0.05 + 0.5);
    mock_task_free(mt);

    /* Already cancelled: no sleep at all. */
    mt = mock_task_new("sleep", "{\"seconds\":10}");
    mock_cancel(mt);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_STR(mt->message, "cancelled");
    EXPECT(mt->elapsed < 0.05);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(sleep_invalid_params)
{
    struct steps_state *st = start_plugin();

    expect_invalid(st, "sleep", "{\"seconds\":\"5\"}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":-1}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":-0.001}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":86401}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":null}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":true}", "params.seconds");
    expect_invalid(st, "sleep", "{\"seconds\":{}}", "params.seconds");
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(fail_counts_attempts_per_job)
{
    struct steps_state *st = start_plugin();
    const char *p = "{\"code\":\"TRANSIENT_ERROR\",\"times\":2,\"message\":\"harness\"}";
    struct mock_task *mt;

    for (int attempt = 1; attempt <= 2; attempt++) {
        char want[64];
        mt = run(st, "fail", "job-A", p);
        snprintf(want, sizeof(want), "harness (attempt %d)", attempt);
        EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
        EXPECT_EQ_STR(mt->code, "TRANSIENT_ERROR");
        EXPECT_EQ_STR(mt->message, want);
        mock_task_free(mt);
        /* Another job in between has its own count. */
        mt = run(st, "fail", attempt == 1 ? "job-B" : "job-C", p);
        EXPECT_EQ_STR(mt->message, "harness (attempt 1)");
        mock_task_free(mt);
    }
    mt = run(st, "fail", "job-A", p);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "attempts"), 3);
    mock_task_free(mt);
    mt = run(st, "fail", "job-B", p);
    EXPECT_EQ_STR(mt->message, "harness (attempt 2)");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(fail_defaults_and_always)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt;

    /* Defaults: TRANSIENT_ERROR, twice, then success. */
    for (int i = 1; i <= 3; i++) {
        mt = run(st, "fail", "job-D", "{}");
        EXPECT_EQ_INT(mt->outcome, i <= 2 ? MOCK_FAILED : MOCK_SUCCEEDED);
        if (i <= 2) {
            EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
            EXPECT_CONTAINS(mt->message, "requested failure (attempt");
        }
        mock_task_free(mt);
    }
    /* times < 0: every attempt fails, with any code. */
    for (int i = 1; i <= 6; i++) {
        mt = run(st, "fail", "job-P", "{\"code\":\"PERMANENT_ERROR\",\"times\":-1}");
        EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
        EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
        mock_task_free(mt);
    }
    mt = run(st, "fail", "job-I", "{\"code\":\"INVALID_INPUT_ERROR\",\"times\":-5}");
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    mock_task_free(mt);
    /* times 0: succeeds at once. */
    mt = run(st, "fail", "job-Z", "{\"times\":0}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "attempts"), 1);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(fail_invalid_params_do_not_count)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt;

    expect_invalid(st, "fail", "{\"code\":\"\"}", "params.code");
    expect_invalid(st, "fail", "{\"code\":5}", "params.code");
    expect_invalid(st, "fail", "{\"times\":\"2\"}", "params.times");
    expect_invalid(st, "fail", "{\"times\":2.5}", "params.times");
    expect_invalid(st, "fail", "{\"message\":7}", "params.message");
    expect_invalid(st, "fail", "{\"steps\":-1}", "params.steps");
    expect_invalid(st, "fail", "{\"steps\":\"x\"}", "params.steps");
    /* expect_invalid runs as job-invalid: none of that counted. */
    mt = run(st, "fail", "job-invalid", "{\"times\":1}");
    EXPECT_EQ_STR(mt->message, "requested failure (attempt 1)");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(fail_with_steps_reports_progress_first)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "fail", "job-S", "{\"steps\":3,\"times\":1}");

    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_INT(mt->nprogress, 3);
    EXPECT_EQ_STR(mt->last_progress, "step 3/3");
    mock_task_free(mt);
    mt = mock_task_new_job("fail", "job-S", "{\"steps\":3,\"times\":1}");
    mock_cancel_after_progress(mt, 1);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_STR(mt->message, "cancelled");
    EXPECT_EQ_INT(mt->nprogress, 1);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(fail_attempt_map_is_bounded)
{
    struct steps_state *st = start_plugin();
    char job[32];
    struct mock_task *mt;

    for (int i = 0; i <= ATTEMPT_MAX; i++) {
        snprintf(job, sizeof(job), "job-%d", i);
        mock_task_free(run(st, "fail", job, "{\"times\":-1}"));
    }
    EXPECT_EQ_INT(st->nattempts, ATTEMPT_MAX);
    /* The newest job is remembered... */
    snprintf(job, sizeof(job), "job-%d", ATTEMPT_MAX);
    mt = run(st, "fail", job, "{\"times\":-1}");
    EXPECT_CONTAINS(mt->message, "(attempt 2)");
    mock_task_free(mt);
    /* ...the oldest was evicted and starts again. */
    mt = run(st, "fail", "job-0", "{\"times\":-1}");
    EXPECT_CONTAINS(mt->message, "(attempt 1)");
    mock_task_free(mt);
    EXPECT_EQ_INT(st->nattempts, ATTEMPT_MAX);
    mock_plugin_shutdown(&avt_plugin, st);
}

#define FAIL_THREADS 4
#define FAIL_PER_THREAD 200

static void *fail_thread(void *arg)
{
    struct steps_state *st = arg;
    char job[32];

    for (int i = 0; i < FAIL_PER_THREAD; i++) {
        /* Half the attempts on one shared job, half on jobs of their own. */
        if (i % 2 == 0)
            snprintf(job, sizeof(job), "shared");
        else
            snprintf(job, sizeof(job), "own-%p-%d", (void *)&job, i);
        mock_task_free(run(st, "fail", job, "{\"times\":-1}"));
    }
    return NULL;
}

TEST(fail_counting_is_thread_safe)
{
    struct steps_state *st = start_plugin();
    pthread_t th[FAIL_THREADS];
    struct mock_task *mt;
    char want[64];

    for (int i = 0; i < FAIL_THREADS; i++)
        ASSERT(pthread_create(&th[i], NULL, fail_thread, st) == 0);
    for (int i = 0; i < FAIL_THREADS; i++)
        pthread_join(th[i], NULL);
    mt = run(st, "fail", "shared", "{\"times\":-1}");
    snprintf(want, sizeof(want), "(attempt %d)", FAIL_THREADS * FAIL_PER_THREAD / 2 + 1);
    EXPECT_CONTAINS(mt->message, want);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_default_run)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "steps", NULL, "{}");

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mt->status, "success");
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 5);
    EXPECT_EQ_INT(mt->nprogress, 5);
    EXPECT(fabs(mt->last_percent - 100.0) < 1e-9);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_step_ms_and_default_step_ms)
{
    struct steps_state *st = start_plugin();
    char err[64];
    struct mock_task *mt = run(st, "steps", NULL, "{\"steps\":2,\"step_ms\":60}");

    EXPECT(mt->elapsed >= 0.12);
    mock_task_free(mt);
    ASSERT(mock_plugin_configure(&avt_plugin, st, "default_step_ms", "70", err, sizeof(err)) == 0);
    mt = run(st, "steps", NULL, "{\"steps\":2}");
    EXPECT(mt->elapsed >= 0.14);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_fail_after)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "steps", NULL,
                               "{\"steps\":5,\"fail_after\":2,\"fail_code\":\"PERMANENT_ERROR\","
                               "\"fail_message\":\"model crashed\"}");

    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_EQ_STR(mt->message, "model crashed");
    EXPECT_EQ_INT(mt->nprogress, 2);
    EXPECT(fabs(mt->last_percent - 40.0) < 1e-9);
    mock_task_free(mt);
    mt = run(st, "steps", NULL, "{\"steps\":4,\"fail_after\":3}");
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(mt->message, "failed after 3 of 4 steps");
    mock_task_free(mt);
    mt = run(st, "steps", NULL, "{\"steps\":4,\"fail_after\":0}");
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_INT(mt->nprogress, 0);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_hot_cache)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt;

    mock_reset();
    mt = run(st, "steps", NULL, "{\"steps\":1,\"hot_cache_add\":\"llama-7b\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(mock_hot_cache_has("llama-7b"));
    EXPECT_EQ_INT(mock_hot_cache_adds(), 1);
    EXPECT_EQ_INT(mock_hot_cache_removes(), 0);
    mock_task_free(mt);
    /* Removal happens also when the task fails or is cancelled. */
    mt = run(st, "steps", NULL, "{\"steps\":1,\"fail_after\":1,\"hot_cache_remove\":\"llama-7b\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT(!mock_hot_cache_has("llama-7b"));
    EXPECT_EQ_INT(mock_hot_cache_removes(), 1);
    mock_task_free(mt);
    mt = mock_task_new("steps", "{\"steps\":3,\"hot_cache_add\":\"a\",\"hot_cache_remove\":\"b\"}");
    mock_cancel(mt);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_STR(mt->message, "cancelled");
    EXPECT(mock_hot_cache_has("a"));
    EXPECT_EQ_INT(mock_hot_cache_adds(), 2);
    EXPECT_EQ_INT(mock_hot_cache_removes(), 2);
    mock_task_free(mt);
    EXPECT_EQ_INT(mock_violations(), 0);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_custom_status)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "steps", NULL, "{\"steps\":1,\"status\":\"needs_review\"}");

    EXPECT_EQ_INT(mt->outcome, MOCK_COMPLETED);
    EXPECT_EQ_STR(mt->status, "needs_review");
    EXPECT_EQ_INT(mock_data_int(mt, "steps"), 1);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(steps_invalid_params)
{
    struct steps_state *st = start_plugin();

    mock_reset();
    expect_invalid(st, "steps", "{\"steps\":\"5\"}", "params.steps");
    expect_invalid(st, "steps", "{\"steps\":1001}", "params.steps");
    expect_invalid(st, "steps", "{\"step_ms\":-1}", "params.step_ms");
    expect_invalid(st, "steps", "{\"step_ms\":0.5}", "params.step_ms");
    expect_invalid(st, "steps", "{\"fail_after\":-1}", "params.fail_after");
    expect_invalid(st, "steps", "{\"steps\":2,\"fail_after\":3}", "params.fail_after");
    expect_invalid(st, "steps", "{\"fail_after\":\"1\"}", "params.fail_after");
    expect_invalid(st, "steps", "{\"fail_code\":\"\"}", "params.fail_code");
    expect_invalid(st, "steps", "{\"fail_message\":false}", "params.fail_message");
    expect_invalid(st, "steps", "{\"hot_cache_add\":\"\"}", "params.hot_cache_add");
    expect_invalid(st, "steps", "{\"hot_cache_remove\":[\"m\"]}", "params.hot_cache_remove");
    expect_invalid(st, "steps", "{\"status\":1}", "params.status");
    /* A refused task touched nothing. */
    EXPECT_EQ_INT(mock_hot_cache_adds() + mock_hot_cache_removes(), 0);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(unknown_type_is_permanent)
{
    struct steps_state *st = start_plugin();
    struct mock_task *mt = run(st, "nope", NULL, "{}");

    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "nope");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TAP_MAIN()
