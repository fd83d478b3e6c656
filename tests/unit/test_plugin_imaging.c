/*
 * test_plugin_imaging.c - unit tests of the imaging example plugin against
 * the mock host: both task types, the two-step pipeline as the orchestrator's
 * process-image blueprint runs it, query separators, and every param error.
 */
#include "imaging/imaging.c"

#include <pthread.h>

#include "mock_host.h"
#include "tap.h"

static struct mock_task *run(const char *type, const char *params)
{
    struct mock_task *mt = mock_task_new(type, params);

    mock_run(&avt_plugin, NULL, mt);
    return mt;
}

static void expect_invalid(const char *type, const char *params, const char *param)
{
    struct mock_task *mt = run(type, params);

    if (mt->outcome != MOCK_FAILED || mt->code == NULL ||
        strcmp(mt->code, AVT_INVALID_INPUT_ERROR) != 0 || strstr(mt->message, param) == NULL) {
        TAP_FAIL_("%s %.60s: got outcome %d code %s message %s (wanted one naming %s)", type,
                  params, mt->outcome, mt->code ? mt->code : "-", mt->message ? mt->message : "-",
                  param);
    }
    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->noutcomes, 1);
    EXPECT(mt->data == NULL);
    mock_task_free(mt);
}

TEST(descriptor)
{
    EXPECT_EQ_INT(avt_plugin.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_INT(avt_plugin.struct_size, sizeof(struct avt_plugin));
    EXPECT_EQ_STR(avt_plugin.name, "imaging");
    ASSERT(avt_plugin.task_types != NULL);
    EXPECT_EQ_STR(avt_plugin.task_types[0], "resize_image");
    EXPECT_EQ_STR(avt_plugin.task_types[1], "apply_filters");
    EXPECT(avt_plugin.task_types[2] == NULL);
    EXPECT(avt_plugin.init == NULL && avt_plugin.shutdown == NULL);
}

TEST(resize_image)
{
    struct mock_task *mt = run(
        "resize_image", "{\"image_url\":\"s3://harness/input.png\",\"width\":640,\"height\":480}");

    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "resized_url"), "s3://harness/input.png?w=640&h=480");
    EXPECT_EQ_INT(mock_data_int(mt, "width"), 640);
    EXPECT_EQ_INT(mock_data_int(mt, "height"), 480);
    EXPECT_EQ_INT(mt->violations, 0);
    mock_task_free(mt);
}

TEST(resize_url_with_query_and_limits)
{
    struct mock_task *mt = run("resize_image", "{\"image_url\":\"https://x/img?v=2\",\"width\":1,"
                                               "\"height\":65535}");

    EXPECT_EQ_STR(mock_data_str(mt, "resized_url"), "https://x/img?v=2&w=1&h=65535");
    mock_task_free(mt);
}

TEST(apply_filters)
{
    struct mock_task *mt = run("apply_filters", "{\"image_url\":\"s3://h/in.png?w=640&h=480\","
                                                "\"filters\":[\"sharpen\",\"grayscale\"]}");
    json_t *applied;

    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "final_url"),
                  "s3://h/in.png?w=640&h=480&filters=sharpen,grayscale");
    applied = json_object_get(mt->data, "filters_applied");
    EXPECT(json_equal(applied, json_object_get(mt->pub.params, "filters")));
    EXPECT(applied != json_object_get(mt->pub.params, "filters"));
    mock_task_free(mt);

    mt = run("apply_filters", "{\"image_url\":\"s3://h/in.png\",\"filters\":[\"blur\"]}");
    EXPECT_EQ_STR(mock_data_str(mt, "final_url"), "s3://h/in.png?filters=blur");
    mock_task_free(mt);

    mt = run("apply_filters", "{\"image_url\":\"s3://h/in.png\",\"filters\":[]}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "final_url"), "s3://h/in.png");
    mock_task_free(mt);
}

/* The process-image blueprint: resize, then filters on state_history's
 * resized_url. */
TEST(pipeline_passes_data_forward)
{
    struct mock_task *resize = run("resize_image", "{\"image_url\":\"s3://harness/input.png\","
                                                   "\"width\":320,\"height\":200}");
    json_t *params;
    struct mock_task *filters;

    ASSERT(resize->outcome == MOCK_SUCCEEDED);
    params = json_pack("{s:s, s:[s,s]}", "image_url", mock_data_str(resize, "resized_url"),
                       "filters", "sharpen", "grayscale");
    filters = mock_task_new_json("apply_filters", "job-img", params);
    mock_run(&avt_plugin, NULL, filters);
    EXPECT_EQ_INT(filters->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(filters, "final_url"),
                  "s3://harness/input.png?w=320&h=200&filters=sharpen,grayscale");
    mock_task_free(filters);
    mock_task_free(resize);
}

TEST(resize_invalid_params)
{
    char *big = malloc(MAX_URL + 64);

    expect_invalid("resize_image", "{\"width\":1,\"height\":1}", "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":\"\",\"width\":1,\"height\":1}",
                   "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":5,\"width\":1,\"height\":1}",
                   "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":\"a b\",\"width\":1,\"height\":1}",
                   "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":\"a\\nb\",\"width\":1,\"height\":1}",
                   "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":\"a\\u0000b\",\"width\":1,\"height\":1}",
                   "params.image_url");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"height\":1}", "params.width");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":\"640\",\"height\":1}",
                   "params.width");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":0,\"height\":1}",
                   "params.width");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":65536,\"height\":1}",
                   "params.width");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":1.5,\"height\":1}",
                   "params.width");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":1}", "params.height");
    expect_invalid("resize_image", "{\"image_url\":\"u\",\"width\":1,\"height\":-3}",
                   "params.height");
    expect_invalid("resize_image", "[1]", "params");
    /* The longest URL accepted, and one byte more. */
    ASSERT(big != NULL);
    int n = snprintf(big, MAX_URL + 64, "{\"image_url\":\"%0*d\",\"width\":1,\"height\":1}",
                     MAX_URL, 0);
    ASSERT(n > 0);
    struct mock_task *mt = run("resize_image", big);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(strlen(mock_data_str(mt, "resized_url")), MAX_URL + strlen("?w=1&h=1"));
    mock_task_free(mt);
    snprintf(big, MAX_URL + 64, "{\"image_url\":\"%0*d\",\"width\":1,\"height\":1}", MAX_URL + 1,
             0);
    expect_invalid("resize_image", big, "params.image_url");
    free(big);
}

TEST(filters_invalid_params)
{
    json_t *many = json_array();
    json_t *params;
    struct mock_task *mt;

    expect_invalid("apply_filters", "{\"filters\":[]}", "params.image_url");
    expect_invalid("apply_filters", "{\"image_url\":\"u\"}", "params.filters");
    expect_invalid("apply_filters", "{\"image_url\":\"u\",\"filters\":\"blur\"}", "params.filters");
    expect_invalid("apply_filters", "{\"image_url\":\"u\",\"filters\":[\"blur\",3]}",
                   "params.filters[1]");
    expect_invalid("apply_filters", "{\"image_url\":\"u\",\"filters\":[\"\"]}",
                   "params.filters[0]");
    expect_invalid("apply_filters", "{\"image_url\":\"u\",\"filters\":[\"a&b=c\"]}",
                   "params.filters[0]");
    expect_invalid("apply_filters", "{\"image_url\":\"u\",\"filters\":[\"Blur\"]}",
                   "params.filters[0]");
    /* MAX_FILTERS is fine, one more is not. */
    for (int i = 0; i < MAX_FILTERS; i++)
        json_array_append_new(many, json_string("sepia"));
    params = json_pack("{s:s, s:O}", "image_url", "u", "filters", many);
    mt = mock_task_new_json("apply_filters", "job-many", params);
    mock_run(&avt_plugin, NULL, mt);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    mock_task_free(mt);
    json_array_append_new(many, json_string("sepia"));
    params = json_pack("{s:s, s:o}", "image_url", "u", "filters", many);
    mt = mock_task_new_json("apply_filters", "job-many", params);
    mock_run(&avt_plugin, NULL, mt);
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    mock_task_free(mt);
}

TEST(unknown_type_is_permanent)
{
    struct mock_task *mt = run("rotate_image", "{}");

    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "rotate_image");
    mock_task_free(mt);
}

static void *pipeline_thread(void *arg)
{
    long bad = 0;

    (void)arg;
    for (int i = 0; i < 200; i++) {
        struct mock_task *mt = run("apply_filters", "{\"image_url\":\"s3://a/b.png\","
                                                    "\"filters\":[\"x\",\"y\"]}");
        const char *u = mock_data_str(mt, "final_url");
        bad += u == NULL || strcmp(u, "s3://a/b.png?filters=x,y") != 0;
        mock_task_free(mt);
    }
    return (void *)bad;
}

TEST(concurrent)
{
    pthread_t th[4];
    long bad = 0;

    for (int i = 0; i < 4; i++)
        ASSERT(pthread_create(&th[i], NULL, pipeline_thread, NULL) == 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += (long)r;
    }
    EXPECT_EQ_INT(bad, 0);
}

TAP_MAIN()
