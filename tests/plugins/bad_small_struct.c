/* bad_small_struct.c - a descriptor whose struct_size is too small. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"small_struct_type", NULL};
AVT__EXPORT const struct avt_plugin avt_plugin = {
    .abi_version = AVT_ABI_VERSION,
    .struct_size = 24,
    .name = "bad_small_struct",
    .version = "1",
    .task_types = types,
    .handle = handle,
};
