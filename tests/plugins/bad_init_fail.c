/* bad_init_fail.c - init() refuses with -ENOENT (say, a missing model). */
#include <errno.h>

#include "avt_plugin.h"

static int init(const struct avt_host *host, void **state)
{
    (void)host;
    (void)state;
    return -ENOENT;
}

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"init_fail_type", NULL};
AVT_PLUGIN(.name = "bad_init_fail", .version = "1", .task_types = types, .init = init,
           .handle = handle);
