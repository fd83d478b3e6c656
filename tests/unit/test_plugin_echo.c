/*
 * test_plugin_echo.c - unit tests of the echo example plugin against the
 * mock host: the descriptor, the deep copy of params, refusal of non-object
 * params and of configuration keys, and concurrent use.
 */
#include "echo/echo.c"

#include <errno.h>
#include <pthread.h>

#include "mock_host.h"
#include "tap.h"

/* Run one echo task on params_json; the caller frees it. */
static struct mock_task *run_echo(const char *params_json)
{
    struct mock_task *mt = mock_task_new("echo", params_json);

    mock_run(&avt_plugin, NULL, mt);
    return mt;
}

TEST(descriptor)
{
    EXPECT_EQ_INT(avt_plugin.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_INT(avt_plugin.struct_size, sizeof(struct avt_plugin));
    EXPECT_EQ_STR(avt_plugin.name, "echo");
    EXPECT(avt_plugin.version != NULL);
    EXPECT(avt_plugin.handle != NULL);
    ASSERT(avt_plugin.task_types != NULL);
    EXPECT_EQ_STR(avt_plugin.task_types[0], "echo");
    EXPECT(avt_plugin.task_types[1] == NULL);
}

TEST(echo_returns_equal_deep_copy)
{
    const char *p = "{\"msg\":\"e2e\",\"n\":3,\"nested\":{\"list\":[1,2,{\"x\":null}]},\"f\":1.5}";
    struct mock_task *mt = run_echo(p);
    json_t *nested;

    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mt->noutcomes, 1);
    EXPECT_EQ_INT(mt->violations, 0);
    ASSERT(mt->data != NULL);
    EXPECT(json_equal(mt->data, mt->pub.params));
    EXPECT_EQ_STR(mock_data_str(mt, "msg"), "e2e");
    /* A deep copy: nothing is shared with the borrowed params. */
    EXPECT(mt->data != mt->pub.params);
    nested = json_object_get(mt->data, "nested");
    EXPECT(nested != json_object_get(mt->pub.params, "nested"));
    json_object_set_new(json_object_get(mt->pub.params, "nested"), "added", json_true());
    EXPECT(json_object_get(nested, "added") == NULL);
    EXPECT_EQ_INT(mt->pub.params->refcount, 1);
    mock_task_free(mt);
}

TEST(echo_empty_params)
{
    struct mock_task *mt = run_echo(NULL);

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(json_is_object(mt->data));
    EXPECT_EQ_INT(json_object_size(mt->data), 0);
    mock_task_free(mt);
}

TEST(echo_utf8_and_large)
{
    json_t *params = json_object();
    char key[32];
    struct mock_task *mt;

    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        json_object_set_new(params, key, json_string("π ≈ 3.14159 – ünïcödé"));
    }
    mt = mock_task_new_json("echo", "job-big", params);
    mock_run(&avt_plugin, NULL, mt);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(json_equal(mt->data, mt->pub.params));
    EXPECT_EQ_INT(json_object_size(mt->data), 1000);
    mock_task_free(mt);
}

TEST(echo_refuses_non_object_params)
{
    struct mock_task *mt = run_echo("[1,2,3]");

    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    EXPECT_CONTAINS(mt->message, "params");
    EXPECT(mt->data == NULL);
    mock_task_free(mt);
}

TEST(echo_logs_through_host)
{
    struct mock_task *mt;

    mock_reset();
    mt = run_echo("{\"a\":1,\"b\":2}");
    EXPECT_EQ_INT(mock_log_count_level(AVT_LOG_DEBUG), 1);
    EXPECT(mock_log_contains("2 keys"));
    EXPECT_EQ_INT(mock_violations(), 0);
    mock_task_free(mt);
}

TEST(echo_accepts_no_configuration)
{
    char err[128];
    void *state = (void *)1;

    EXPECT_EQ_INT(mock_plugin_init(&avt_plugin, &state), 0);
    EXPECT(state == NULL);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, state, "x", "1", err, sizeof(err)), -EINVAL);
    mock_plugin_shutdown(&avt_plugin, state);
}

#define ECHO_THREADS 4
#define ECHO_PER_THREAD 300

static void *echo_thread(void *arg)
{
    long failures = 0, id = (long)arg;
    char params[64], job[32];

    for (int i = 0; i < ECHO_PER_THREAD; i++) {
        snprintf(params, sizeof(params), "{\"thread\":%ld,\"i\":%d}", id, i);
        snprintf(job, sizeof(job), "job-%ld-%d", id, i);
        struct mock_task *mt = mock_task_new_job("echo", job, params);
        mock_run(&avt_plugin, NULL, mt);
        if (mt->outcome != MOCK_SUCCEEDED || mock_data_int(mt, "i") != i ||
            mock_data_int(mt, "thread") != id)
            failures++;
        mock_task_free(mt);
    }
    return (void *)failures;
}

TEST(echo_concurrent)
{
    pthread_t th[ECHO_THREADS];
    long total = 0;

    for (long i = 0; i < ECHO_THREADS; i++)
        ASSERT(pthread_create(&th[i], NULL, echo_thread, (void *)i) == 0);
    for (int i = 0; i < ECHO_THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        total += (long)r;
    }
    EXPECT_EQ_INT(total, 0);
}

TAP_MAIN()
