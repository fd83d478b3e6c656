/* bad_bad_type.c - a plugin listing an empty task type. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"fine_type", "", NULL};
AVT_PLUGIN(.name = "bad_bad_type", .version = "1", .task_types = types, .handle = handle);
