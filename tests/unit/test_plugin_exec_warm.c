/*
 * test_plugin_exec_warm.c - unit tests of the exec plugin's persistent
 * types against the mock host, with the real reference child
 * (plugins/exec/examples/warm_child.py): ready before start() returns and
 * the hot cache filled, tasks served by the same warm child, progress, the
 * child's errors, a child dying mid-task (transient, stderr tail, a new
 * child), protocol errors, cancel honoured and ignored, max_tasks_per_child
 * and max_rss_mb recycling, a child failing to start, and the declaration
 * checks. Every child is gone after shutdown.
 */
#include "exec/decl.c"
#include "exec/exec.c"
#include "exec/run.c"
#include "exec/warm.c"
#include "exec/warmchild.c"
#include "exec/warmline.c"

#include <signal.h>
#include <sys/stat.h>

#include "mock_host.h"
#include "tap.h"

#define EXEC_FIXTURE_NAME "warm"
#define EXEC_FIXTURE_TYPE "w"
#include "exec_fixture.h"

static char child_py[PATH_MAX];

/* Declaration of type "w" running the reference child; `extra` are more
 * members (with a leading comma) and `persistent` the persistent object. */
static int start_warm(void **state, const char *persistent, const char *extra, char *err,
                      size_t errlen)
{
    char json[PATH_MAX + 512];
    snprintf(json, sizeof(json),
             "{\"argv\": [\"/usr/bin/python3\", \"%s\"], \"env_set\": {\"WARM_MODEL\": "
             "\"m-unit\"}, \"persistent\": %s%s}",
             child_py, persistent, extra);
    fresh_dirs();
    write_decl("w", json);
    mock_reset();
    *state = NULL;
    return start_plugin(state, err, errlen);
}

static void *warm(const char *persistent, const char *extra)
{
    void *state;
    char err[EXEC_ERRLEN];
    int rc = start_warm(&state, persistent, extra, err, sizeof(err));
    if (rc != 0) {
        printf("# start: %s\n", err);
        mock_plugin_shutdown(&avt_plugin, state);
        return NULL;
    }
    return state;
}

/* Run params and return the pid of the child that served it (0 when the
 * task did not succeed). */
static long served_by(void *state, const char *params)
{
    struct mock_task *mt = run(state, params);
    long pid = mt->outcome == MOCK_SUCCEEDED ? (long)mock_data_int(mt, "pid") : 0;
    if (pid == 0)
        printf("# %s: %s %s\n", params, mt->code ? mt->code : "", mt->message ? mt->message : "");
    mock_task_free(mt);
    return pid;
}

static int alive(long pid)
{
    return pid > 0 && kill((pid_t)pid, 0) == 0;
}

/* The pids of the type's children, from the pool. */
static long child_pid(void *state, size_t i)
{
    const struct exec_state *s = state;
    return s->pools[0] != NULL && i < s->pools[0]->n ? (long)s->pools[0]->kids[i].pid : -1;
}

TEST(ready_before_start_returns_and_hot_cache)
{
    void *s = warm("{\"children\": 2}", "");
    ASSERT(s != NULL);
    EXPECT(alive(child_pid(s, 0)) && alive(child_pid(s, 1)));
    EXPECT(mock_hot_cache_has("m-unit"));
    EXPECT(mock_hot_cache_has("w"));
    EXPECT_EQ_INT(mock_hot_cache_adds(), 2); /* two children, counted once */
    long a = child_pid(s, 0), b = child_pid(s, 1);
    mock_plugin_shutdown(&avt_plugin, s);
    EXPECT(!alive(a) && !alive(b));
    EXPECT(!mock_hot_cache_has("m-unit") && !mock_hot_cache_has("w"));
}

TEST(tasks_are_served_by_the_warm_child)
{
    void *s = warm("{\"children\": 1}", "");
    ASSERT(s != NULL);
    long pid = child_pid(s, 0);
    for (int i = 1; i <= 5; i++) {
        struct mock_task *mt = run(s, "{\"text\": \"good warm day\", \"steps\": 2}");
        EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
        EXPECT_EQ_INT(mock_data_int(mt, "pid"), pid);
        EXPECT_EQ_INT(mock_data_int(mt, "served"), i);
        EXPECT(mock_data_str(mt, "label") && strcmp(mock_data_str(mt, "label"), "positive") == 0);
        EXPECT_EQ_INT(mt->nprogress, 2);
        EXPECT(mt->last_percent == 100);
        mock_task_free(mt);
    }
    mock_plugin_shutdown(&avt_plugin, s);
    EXPECT(!alive(pid));
}

TEST(child_errors_pass_through)
{
    void *s = warm("{}", "");
    ASSERT(s != NULL);
    struct mock_task *mt =
        run(s, "{\"error\": {\"code\": \"INVALID_INPUT_ERROR\", \"message\": \"no such label\"}}");
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_CONTAINS(mt->code, "INVALID_INPUT_ERROR");
    EXPECT(mt->message != NULL && strcmp(mt->message, "no such label") == 0);
    mock_task_free(mt);
    mt = run(s, "{\"text\": 5}");
    EXPECT(mt->code != NULL && strcmp(mt->code, "INVALID_INPUT_ERROR") == 0);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(child_dying_mid_task_is_transient_and_replaced)
{
    void *s = warm("{}", "");
    ASSERT(s != NULL);
    long first = served_by(s, "{}");
    struct mock_task *mt = run(s, "{\"exit\": 3}");
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_CONTAINS(mt->code, "TRANSIENT_ERROR");
    EXPECT_CONTAINS(mt->message, "type w: warm child pid");
    EXPECT_CONTAINS(mt->message, "exited with status 3 while running the task; stderr: ");
    EXPECT_CONTAINS(mt->message, "exiting with status 3 as asked"); /* stderr tail */
    mock_task_free(mt);
    EXPECT(!alive(first));
    long second = served_by(s, "{}");
    EXPECT(second > 0 && second != first);
    /* Killed from outside while idle: the next task finds a new child. */
    kill((pid_t)second, SIGKILL);
    siginfo_t si = {0};
    waitid(P_PID, (id_t)second, &si, WEXITED | WNOWAIT); /* dead, not reaped */
    long third = served_by(s, "{}");
    EXPECT(third > 0 && third != second);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(malformed_lines_fail_transient_and_replace_the_child)
{
    void *s = warm("{\"max_line_bytes\": 4096}", "");
    ASSERT(s != NULL);
    const char *bad[] = {"{\"raw\": \"not json\"}", "{\"raw\": \"[1, 2]\"}",
                         "{\"raw\": \"{\\\"type\\\": \\\"result\\\", \\\"id\\\": \\\"other\\\", "
                         "\\\"data\\\": {}}\"}",
                         "{\"raw\": \"{\\\"type\\\": \\\"result\\\", \\\"id\\\": \\\"task-1\\\", "
                         "\\\"error\\\": {\\\"code\\\": \\\"OOPS\\\"}}\"}",
                         NULL};
    const char *what[] = {"not JSON", "not a JSON object", "another task",
                          "TRANSIENT_ERROR, PERMANENT_ERROR or INVALID_INPUT_ERROR"};
    for (int i = 0; bad[i] != NULL; i++) {
        long before = child_pid(s, 0);
        struct mock_task *mt = run(s, bad[i]);
        EXPECT(mt->code != NULL && strcmp(mt->code, "TRANSIENT_ERROR") == 0);
        EXPECT(mt->message != NULL && strstr(mt->message, "broke the line protocol") != NULL);
        EXPECT(mt->message != NULL && strstr(mt->message, what[i]) != NULL);
        if (mt->message != NULL)
            printf("# %s\n", mt->message);
        mock_task_free(mt);
        EXPECT(!alive(before));
        long next = served_by(s, "{}");
        EXPECT(next > 0 && next != before);
    }
    EXPECT(mock_log_contains("type w: warm child pid"));
    /* A line over max_line_bytes. */
    char params[8192];
    snprintf(params, sizeof(params), "{\"raw\": \"%05000d\"}", 7);
    struct mock_task *mt = run(s, params);
    EXPECT(mt->message != NULL && strstr(mt->message, "longer than max_line_bytes (4096)"));
    mock_task_free(mt);
    EXPECT(served_by(s, "{}") > 0);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(cancel_honoured_keeps_the_child)
{
    void *s = warm("{}", "");
    ASSERT(s != NULL);
    long pid = child_pid(s, 0);
    struct mock_task *mt = mock_task_new("w", "{\"steps\": 400, \"step_seconds\": 0.05}");
    mock_cancel_after_progress(mt, 3);
    mock_run(&avt_plugin, s, mt);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT(mt->message != NULL && strcmp(mt->message, "cancelled") == 0);
    EXPECT(mt->nprogress < 50);
    mock_task_free(mt);
    EXPECT_EQ_INT(served_by(s, "{}"), pid);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(cancel_ignored_kills_and_replaces)
{
    void *s = warm("{}", ", \"kill_grace_seconds\": 0.3");
    ASSERT(s != NULL);
    long pid = child_pid(s, 0);
    struct mock_task *mt =
        mock_task_new("w", "{\"steps\": 2000, \"step_seconds\": 0.05, \"ignore_cancel\": true}");
    mock_cancel_after_progress(mt, 2);
    mock_run(&avt_plugin, s, mt);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT(mt->message != NULL && strcmp(mt->message, "cancelled") == 0);
    mock_task_free(mt);
    EXPECT(!alive(pid));
    EXPECT(mock_log_contains("did not answer the cancel within kill_grace_seconds (0.3)"));
    long next = served_by(s, "{}");
    EXPECT(next > 0 && next != pid);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(deadline_is_timeout_error)
{
    void *s = warm("{}", "");
    ASSERT(s != NULL);
    long pid = child_pid(s, 0);
    struct mock_task *mt = mock_task_new("w", "{\"steps\": 400, \"step_seconds\": 0.05}");
    mt->pub.deadline = warm_real() + 0.5;
    mock_run(&avt_plugin, s, mt);
    EXPECT(mt->code != NULL && strcmp(mt->code, "TIMEOUT_ERROR") == 0);
    mock_task_free(mt);
    EXPECT_EQ_INT(served_by(s, "{}"), pid);
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(recycled_after_max_tasks_per_child)
{
    void *s = warm("{\"max_tasks_per_child\": 2}", "");
    ASSERT(s != NULL);
    long p[5];
    for (int i = 0; i < 5; i++)
        p[i] = served_by(s, "{}");
    EXPECT(p[0] > 0 && p[0] == p[1]);
    EXPECT(p[2] > 0 && p[2] == p[3] && p[2] != p[0]);
    EXPECT(p[4] > 0 && p[4] != p[2] && p[4] != p[0]);
    EXPECT(!alive(p[0]));
    EXPECT(mock_log_contains("served 2 tasks (max_tasks_per_child): recycled"));
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(recycled_over_max_rss)
{
    void *s = warm("{\"max_rss_mb\": 80}", "");
    ASSERT(s != NULL);
    long a = served_by(s, "{}"), b = served_by(s, "{}");
    EXPECT(a > 0 && a == b); /* a small child stays */
    long c = served_by(s, "{\"alloc_mb\": 120}");
    EXPECT_EQ_INT(c, a);
    long d = served_by(s, "{}");
    EXPECT(d > 0 && d != a);
    EXPECT(!alive(a));
    EXPECT(mock_log_contains("(VmRSS), over max_rss_mb 80: recycled"));
    mock_plugin_shutdown(&avt_plugin, s);
}

TEST(a_child_that_cannot_start_fails_start)
{
    void *state;
    char err[EXEC_ERRLEN];
    int rc;
    /* Dies before its ready line: the message has its status and stderr. */
    fresh_dirs();
    write_decl("w", "{\"argv\": [\"/usr/bin/python3\", \"-c\", \"import sys; "
                    "sys.stderr.write('no model here\\\\n'); sys.exit(4)\"], \"persistent\": {}}");
    mock_plugin_init(&avt_plugin, &state);
    mock_plugin_configure(&avt_plugin, state, "types_dir", types_dir, err, sizeof(err));
    rc = avt_plugin.start(state, err, sizeof(err));
    EXPECT(rc != 0);
    printf("# %s\n", err);
    EXPECT(strstr(err, "exited with status 4 before its ready line; stderr: no model") != NULL);
    EXPECT(strstr(err, "no model here") != NULL);
    EXPECT(strstr(err, "before its ready line") != NULL);
    mock_plugin_shutdown(&avt_plugin, state);
    /* Never ready. */
    fresh_dirs();
    write_decl("w", "{\"argv\": [\"/bin/sleep\", \"100\"], \"persistent\": "
                    "{\"ready_timeout_seconds\": 0.5}}");
    mock_plugin_init(&avt_plugin, &state);
    mock_plugin_configure(&avt_plugin, state, "types_dir", types_dir, err, sizeof(err));
    rc = avt_plugin.start(state, err, sizeof(err));
    EXPECT(rc != 0);
    EXPECT(strstr(err, "sent no ready line within ready_timeout_seconds (0.5)") != NULL);
    mock_plugin_shutdown(&avt_plugin, state);
}

TEST(declaration_checks)
{
    static const struct {
        const char *json, *msg;
    } cases[] = {
        {"{\"argv\": [\"/bin/cat\"], \"persistent\": {\"childs\": 2}}",
         "persistent.childs: unknown member"},
        {"{\"argv\": [\"/bin/cat\"], \"persistent\": {\"children\": 0}}",
         "persistent.children: must be a whole number from 1 to 64"},
        {"{\"argv\": [\"/bin/cat\"], \"persistent\": 3}", "persistent: an object"},
        {"{\"argv\": [\"/bin/cat\"], \"stdin\": \"params\", \"persistent\": {}}",
         "stdin: does not apply to a persistent type"},
        {"{\"argv\": [\"/bin/cat\", \"{params.x}\"], \"persistent\": {}}",
         "argv[1]: no {params.NAME} in a persistent type"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        void *state;
        char err[EXEC_ERRLEN];
        fresh_dirs();
        write_decl("w", cases[i].json);
        mock_plugin_init(&avt_plugin, &state);
        mock_plugin_configure(&avt_plugin, state, "types_dir", types_dir, err, sizeof(err));
        EXPECT(avt_plugin.start(state, err, sizeof(err)) != 0);
        if (strstr(err, cases[i].msg) == NULL)
            printf("# got: %s\n", err);
        EXPECT(strstr(err, cases[i].msg) != NULL);
        mock_plugin_shutdown(&avt_plugin, state);
    }
}

static void cleanup(void)
{
    if (types_dir[0] != '\0')
        exec_rmtree(types_dir);
    if (work_dir[0] != '\0')
        exec_rmtree(work_dir);
}

/* Run from the source tree (tests/run.sh does): the reference child. */
__attribute__((constructor)) static void setup(void)
{
    if (realpath("plugins/exec/examples/warm_child.py", child_py) == NULL) {
        perror("plugins/exec/examples/warm_child.py (run from the source tree)");
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN); /* as the daemon does */
    atexit(cleanup);
}

TAP_MAIN()
