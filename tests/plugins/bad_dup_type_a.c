/* bad_dup_type_a.c - claims the type "dup_type", as bad_dup_type_b.c does. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"dup_type_only_a", "dup_type", NULL};
AVT_PLUGIN(.name = "bad_dup_type_a", .version = "1", .task_types = types, .handle = handle);
