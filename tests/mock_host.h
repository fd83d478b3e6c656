/*
 * mock_host.h - a fake host function table for plugin unit tests (STYLE.md
 * R15): a plugin is tested without the daemon by handing it this table and
 * running its handler on a hand-made task.
 *
 * The host table is process-wide (mock_host()); it records hot-cache calls
 * and log lines, protected by a mutex so that handlers may run on several
 * threads. Each struct mock_task records its own outcome (status, data,
 * error code and message, how many outcome calls were made), its progress
 * calls, and carries the cancelled flag the plugin polls. A test can set that
 * flag directly, after N progress calls, or from a helper thread after a
 * delay.
 *
 * Typical use, with the plugin's .c file included into the test so that its
 * descriptor `avt_plugin` and statics are visible:
 *
 *     #include "steps/steps.c"
 *     void *state;
 *     mock_plugin_init(&avt_plugin, &state);
 *     struct mock_task *mt = mock_task_new("progress", "{\"steps\": 3}");
 *     mock_run(&avt_plugin, state, mt);
 *     EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
 *     mock_task_free(mt);
 *     mock_plugin_shutdown(&avt_plugin, state);
 *
 * The mock also checks the plugin against the ABI contract: an outcome after
 * the first, a fail() with an empty code, a complete() with an empty status,
 * a succeed() with data that is not an object, or a progress() without a
 * task count as contract violations (mt->violations, mock_violations()).
 */
#ifndef AVT_TESTS_MOCK_HOST_H
#define AVT_TESTS_MOCK_HOST_H

#include <pthread.h>
#include <stdatomic.h>

#include "avt_plugin.h"

enum mock_outcome {
    MOCK_NONE = 0,
    MOCK_SUCCEEDED, /* succeed(): status "success" */
    MOCK_COMPLETED, /* complete(): a custom status */
    MOCK_FAILED,    /* fail() / vfail() */
};

/* Percent values of the first MOCK_MAX_PROGRESS progress calls are kept. */
#define MOCK_MAX_PROGRESS 64

struct mock_task {
    struct avt_task pub; /* first: what the plugin sees */

    /* Outcome: set by the first outcome call. */
    enum mock_outcome outcome;
    char *status;  /* "success", the custom status, or "failure" */
    json_t *data;  /* owned; NULL when the plugin passed none */
    char *code;    /* failure only */
    char *message; /* failure only */
    int noutcomes; /* every outcome call, including refused later ones */

    /* Progress. */
    int nprogress;
    double last_percent; /* as passed, before clamping */
    char *last_progress; /* last message, NULL when none */
    double percents[MOCK_MAX_PROGRESS];

    /* Contract violations seen on this task. */
    int violations;

    /* Cancellation: the flag is_cancelled() returns. */
    atomic_int cancelled;
    int cancel_after_progress; /* > 0: set cancelled at that progress call */
    atomic_int is_cancelled_calls;

    /* Filled by mock_run(). */
    int rc;         /* what handle() returned */
    double elapsed; /* seconds handle() took */

    /* Private. */
    pthread_t canceller;
    int has_canceller;
    long cancel_delay_ms;
    char *id_buf, *job_id_buf, *type_buf;
};

/* The process-wide host table handed to plugins. */
const struct avt_host *mock_host(void);

/* Forget recorded hot-cache calls, log lines and violations. */
void mock_reset(void);

/*
 * A task of `type` with params parsed from `params_json` (NULL = {}); its id
 * and job id are "task-1"/"job-1" (mock_task_new) or `job_id` for both
 * (mock_task_new_job, the way Avtomatika 1.0b13 sends them). NUL characters
 * in strings are allowed (a plugin must cope with them). Aborts the test
 * binary on unparsable JSON: that is a bug in the test.
 */
struct mock_task *mock_task_new(const char *type, const char *params_json);
struct mock_task *mock_task_new_job(const char *type, const char *job_id, const char *params_json);

/* Same, with params given as a JSON value (stolen). */
struct mock_task *mock_task_new_json(const char *type, const char *job_id, json_t *params);

/* Joins a pending canceller thread and frees everything. NULL is a no-op. */
void mock_task_free(struct mock_task *mt);

/* Cancellation: now, at the n-th progress call, or `ms` milliseconds after
 * mock_run() starts the handler (from a helper thread). */
void mock_cancel(struct mock_task *mt);
void mock_cancel_after_progress(struct mock_task *mt, int n);
void mock_cancel_after_ms(struct mock_task *mt, long ms);

/* Plugin lifecycle through the mock host. init() is optional in a
 * descriptor; then *state is NULL and 0 is returned. */
int mock_plugin_init(const struct avt_plugin *desc, void **state);
int mock_plugin_configure(const struct avt_plugin *desc, void *state, const char *key,
                          const char *value, char *err, size_t errlen);
void mock_plugin_shutdown(const struct avt_plugin *desc, void *state);

/* Run the handler on `mt` (on the calling thread) and record rc and elapsed
 * time. Returns the handler's return value. */
int mock_run(const struct avt_plugin *desc, void *state, struct mock_task *mt);

/* The data member `key` of a succeeded task as an integer / real (integers
 * are converted) / string; 0 / NAN / NULL when absent or of another type. */
long long mock_data_int(const struct mock_task *mt, const char *key);
double mock_data_real(const struct mock_task *mt, const char *key);
const char *mock_data_str(const struct mock_task *mt, const char *key);

/* Hot cache: whether `name` is in the set the plugin built with add/remove,
 * and how many add / remove calls were made since mock_reset(). */
int mock_hot_cache_has(const char *name);
int mock_hot_cache_adds(void);
int mock_hot_cache_removes(void);

/* Log lines since mock_reset(): how many, how many at `level`, and whether
 * one contains `needle` (1/0). Lines are also printed as TAP comments when
 * MOCK_VERBOSE is set in the environment. */
int mock_log_count(void);
int mock_log_count_level(int level);
int mock_log_contains(const char *needle);

/* Contract violations seen by host-level calls (hot cache, log) since
 * mock_reset(). */
int mock_violations(void);

#endif /* AVT_TESTS_MOCK_HOST_H */
