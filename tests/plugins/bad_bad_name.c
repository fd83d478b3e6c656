/* bad_bad_name.c - a plugin name with characters a section name cannot hold. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"bad_name_type", NULL};
AVT_PLUGIN(.name = "bad name!", .version = "1", .task_types = types, .handle = handle);
