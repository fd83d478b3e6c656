/*
 * t_crash.c - a test plugin for the fault-injection tests
 * (tests/integration/test_faults.py).
 *
 *   t_crash  kills the whole process from its handler (abort()): a poison
 *            task, as a handler with a memory error would be
 *   t_slow   sleeps params.ms (default 200) and succeeds with {"slept": ms}
 */
#define _POSIX_C_SOURCE 200809L

#include <avt_plugin.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int t_handle(void *state, struct avt_task *task)
{
    (void)state;
    if (strcmp(task->type, "t_crash") == 0)
        abort();
    json_t *v = json_object_get(task->params, "ms");
    long ms = json_is_integer(v) ? (long)json_integer_value(v) : 200;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return avt_succeed(task, json_pack("{s:i}", "slept", (int)ms));
}

static const char *const t_types[] = {"t_crash", "t_slow", NULL};

AVT_PLUGIN(.name = "t_crash", .version = "1.0", .task_types = t_types, .handle = t_handle);
