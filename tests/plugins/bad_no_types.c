/* bad_no_types.c - a plugin whose task type list is empty. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {NULL};
AVT_PLUGIN(.name = "bad_no_types", .version = "1", .task_types = types, .handle = handle);
