/*
 * echo.c - the smallest useful avtworkerd plugin: task type "echo" succeeds
 * with a copy of its params. The orchestrator's /jobs/echo blueprint relies
 * on it (the job's state_history becomes the params), and so do throughput
 * benchmarks, so the handler does nothing but copy.
 *
 * What it shows a plugin author:
 *   - A plugin is one exported data symbol, defined with AVT_PLUGIN(); it
 *     names the plugin, its version and the NULL-terminated list of task
 *     types it handles. Everything else in the file is static, and the
 *     plugin is built with -fvisibility=hidden, so that symbol is the only
 *     one the daemon sees.
 *   - init(), configure(), start() and shutdown() are optional. A plugin
 *     without state (like this one) leaves them out; with no configure() the
 *     daemon refuses any key in a [plugin.echo] section of worker.ini.
 *   - Ownership follows jansson. task->params is borrowed: it belongs to the
 *     daemon and is freed after handle() returns, so the result must be a
 *     copy (json_deep_copy), never the params themselves or a json_incref of
 *     them. avt_succeed() steals the data it is given, also when it fails,
 *     so the handler never frees it.
 *   - Every path through handle() reports exactly one outcome (succeed,
 *     complete or fail) and then returns 0. The daemon turns a handler that
 *     returns without an outcome into a TRANSIENT_ERROR, which is retried, so
 *     a missing outcome is a bug that shows up as mysterious retries.
 *   - Logging goes through the host table (avt_log_debug here); the daemon
 *     adds the plugin name and the task and job ids to each line and drops
 *     lines below its log level before formatting them.
 *
 * Build it alone with:
 *     cc -std=c17 -shared -fPIC -fvisibility=hidden -Wl,-z,defs \
 *        $(pkg-config --cflags avtworker-sdk) echo.c -o echo.so -ljansson
 */
#include <avt_plugin.h>

static int echo_handle(void *state, struct avt_task *task)
{
    json_t *copy;

    (void)state;
    /* params is always an object when the daemon calls us; the check keeps
     * the plugin safe under any host (unit tests, future daemons). */
    if (!json_is_object(task->params)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params must be a JSON object");
        return 0;
    }
    copy = json_deep_copy(task->params);
    if (copy == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory copying params");
        return 0;
    }
    avt_log_debug(task, "echoing %zu keys", json_object_size(copy));
    avt_succeed(task, copy);
    return 0;
}

static const char *const echo_types[] = {"echo", NULL};

AVT_PLUGIN(.name = "echo", .version = "1.0.0", .task_types = echo_types, .handle = echo_handle);
