/*
 * imaging.c - a two-step image pipeline that only pretends: "resize_image"
 * and "apply_filters" compute the URL their output would have and pass it
 * on. The orchestrator's /jobs/process-image blueprint runs them in turn,
 * feeding resize_image's resized_url into apply_filters' image_url through
 * the job's state_history; that is the point of the example, since real
 * image work would only add a dependency.
 *
 *   resize_image   {image_url, width, height}      all required
 *                  -> {"resized_url": "IMAGE_URL?w=W&h=H", "width": W, "height": H}
 *   apply_filters  {image_url, filters: ["sharpen", ...]}  filters may be []
 *                  -> {"final_url": "IMAGE_URL&filters=sharpen,grayscale",
 *                      "filters_applied": [...]}
 *
 * (`?` becomes `&` when the URL already has a query, and the other way
 * round.) Any missing or malformed param fails the task with
 * INVALID_INPUT_ERROR and a message naming the param: the orchestrator then
 * fails the job at once instead of retrying it.
 *
 * What it shows a plugin author, beyond echo.c and steps.c:
 *   - One plugin may serve several task types; handle() dispatches on
 *     task->type (the daemon only sends the types the descriptor lists).
 *   - Required params versus defaults, and bounds on everything that comes
 *     from the network (URL length, number and spelling of filters), so that
 *     no input can make the plugin allocate without limit or build a result
 *     the next step cannot parse.
 *   - Building result data from borrowed params: strings are copied into new
 *     JSON values (json_string() copies; json_deep_copy() for the filter
 *     list), and the result object is handed to avt_succeed(), which steals
 *     it.
 *   - A plugin without state needs no init() or shutdown(): it is
 *     thread-safe because it shares nothing.
 */
#include <avt_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_URL 4096 /* longest image_url accepted */
#define MAX_DIMENSION 65535
#define MAX_FILTERS 32
#define MAX_FILTER_NAME 64

/* The image_url param: a non-empty string of at most MAX_URL bytes without
 * spaces or control characters. NULL after failing the task. */
static const char *param_url(struct avt_task *task)
{
    json_t *v = json_object_get(task->params, "image_url");
    const char *s;

    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > MAX_URL) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "params.image_url must be a string of 1 to %d bytes", MAX_URL);
        return NULL;
    }
    s = json_string_value(v);
    for (const char *p = s; *p != '\0'; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            avt_fail(task, AVT_INVALID_INPUT_ERROR,
                     "params.image_url must not contain spaces or control characters");
            return NULL;
        }
    }
    /* A NUL inside the JSON string would cut the URL short. */
    if (strlen(s) != json_string_length(v)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.image_url contains a NUL character");
        return NULL;
    }
    return s;
}

/* A required integer dimension; 0 after failing the task. */
static long long param_dimension(struct avt_task *task, const char *key)
{
    json_t *v = json_object_get(task->params, key);

    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_DIMENSION) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.%s must be an integer from 1 to %d", key,
                 MAX_DIMENSION);
        return 0;
    }
    return json_integer_value(v);
}

/* The separator that appends a query parameter to `url`. */
static char query_sep(const char *url)
{
    return strchr(url, '?') != NULL ? '&' : '?';
}

/* Finish with `data`, or fail when jansson ran out of memory building it
 * (json_object_set_new() and friends return -1 then, and still steal). */
static int succeed_or_oom(struct avt_task *task, json_t *data, int build_failed)
{
    if (data == NULL || build_failed) {
        json_decref(data);
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return 0;
    }
    avt_succeed(task, data);
    return 0;
}

static int handle_resize(struct avt_task *task)
{
    const char *url = param_url(task);
    long long w, h;
    char *resized;
    size_t len;
    json_t *data;
    int bad;

    if (url == NULL || (w = param_dimension(task, "width")) == 0 ||
        (h = param_dimension(task, "height")) == 0)
        return 0;
    /* The URL is at most MAX_URL bytes; 32 more hold "?w=65535&h=65535". */
    len = strlen(url) + 32;
    if ((resized = malloc(len)) == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return 0;
    }
    snprintf(resized, len, "%s%cw=%lld&h=%lld", url, query_sep(url), w, h);
    avt_log_debug(task, "resize %s to %lldx%lld", url, w, h);
    data = json_object();
    bad = json_object_set_new(data, "resized_url", json_string(resized)) |
          json_object_set_new(data, "width", json_integer(w)) |
          json_object_set_new(data, "height", json_integer(h));
    free(resized);
    return succeed_or_oom(task, data, bad);
}

/* A filter name: 1 to MAX_FILTER_NAME of [a-z0-9_-], so it needs no
 * escaping in a URL. */
static int filter_name_ok(json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    if (s == NULL || n == 0 || n > MAX_FILTER_NAME)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* The filters param: an array of at most MAX_FILTERS valid names. NULL
 * after failing the task. */
static json_t *param_filters(struct avt_task *task)
{
    json_t *filters = json_object_get(task->params, "filters");

    if (!json_is_array(filters) || json_array_size(filters) > MAX_FILTERS) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "params.filters must be an array of at most %d filter names", MAX_FILTERS);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(filters); i++) {
        if (!filter_name_ok(json_array_get(filters, i))) {
            avt_fail(task, AVT_INVALID_INPUT_ERROR,
                     "params.filters[%zu] must be a name of 1 to %d characters [a-z0-9_-]", i,
                     MAX_FILTER_NAME);
            return NULL;
        }
    }
    return filters;
}

/* "URL" + "?filters=a,b" (or "&filters=..."); just "URL" for no filters.
 * NULL on out of memory. */
static char *filtered_url(const char *url, json_t *filters)
{
    size_t n = json_array_size(filters), len = strlen(url) + sizeof("?filters=");
    char *out, *p;

    for (size_t i = 0; i < n; i++)
        len += json_string_length(json_array_get(filters, i)) + 1;
    if ((out = malloc(len)) == NULL)
        return NULL;
    p = out + snprintf(out, len, "%s", url);
    if (n > 0)
        p += snprintf(p, len - (size_t)(p - out), "%cfilters=", query_sep(url));
    for (size_t i = 0; i < n; i++) {
        p += snprintf(p, len - (size_t)(p - out), "%s%s", i > 0 ? "," : "",
                      json_string_value(json_array_get(filters, i)));
    }
    return out;
}

static int handle_filters(struct avt_task *task)
{
    const char *url = param_url(task);
    json_t *filters, *data;
    char *final;
    int bad;

    if (url == NULL || (filters = param_filters(task)) == NULL)
        return 0;
    if ((final = filtered_url(url, filters)) == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return 0;
    }
    avt_log_debug(task, "apply %zu filters to %s", json_array_size(filters), url);
    data = json_object();
    /* filters is borrowed from params: copy it, never incref it. */
    bad = json_object_set_new(data, "final_url", json_string(final)) |
          json_object_set_new(data, "filters_applied", json_deep_copy(filters));
    free(final);
    return succeed_or_oom(task, data, bad);
}

static int imaging_handle(void *state, struct avt_task *task)
{
    (void)state;
    if (!json_is_object(task->params)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params must be a JSON object");
        return 0;
    }
    if (strcmp(task->type, "resize_image") == 0)
        return handle_resize(task);
    if (strcmp(task->type, "apply_filters") == 0)
        return handle_filters(task);
    avt_fail(task, AVT_PERMANENT_ERROR, "imaging: unknown task type %s", task->type);
    return 0;
}

static const char *const imaging_types[] = {"resize_image", "apply_filters", NULL};

AVT_PLUGIN(.name = "imaging", .version = "1.0.0", .task_types = imaging_types,
           .handle = imaging_handle);
