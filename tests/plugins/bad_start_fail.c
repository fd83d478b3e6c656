/* bad_start_fail.c - start() refuses without writing a message; init()
 * succeeded, so the loader owes it a shutdown(). */
#include <errno.h>

#include "avt_plugin.h"

AVT__EXPORT int bad_start_fail_shutdowns;

static int start(void *state, char *err, size_t errlen)
{
    (void)state;
    (void)err;
    (void)errlen;
    return -EADDRINUSE;
}

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static void shutdown(void *state)
{
    (void)state;
    bad_start_fail_shutdowns++;
}

static const char *const types[] = {"start_fail_type", NULL};
AVT_PLUGIN(.name = "bad_start_fail", .version = "1", .task_types = types, .start = start,
           .handle = handle, .shutdown = shutdown);
