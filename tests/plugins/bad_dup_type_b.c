/* bad_dup_type_b.c - claims the type "dup_type", as bad_dup_type_a.c does. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"dup_type_only_b", "dup_type", NULL};
AVT_PLUGIN(.name = "bad_dup_type_b", .version = "1", .task_types = types, .handle = handle);
