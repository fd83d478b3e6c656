/* bad_abi_minor.c - a descriptor claiming a newer minor than the daemon's. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"abi_minor_type", NULL};
AVT__EXPORT const struct avt_plugin avt_plugin = {
    .abi_version = ((uint32_t)AVT_ABI_MAJOR << 16) | (AVT_ABI_MINOR + 1u),
    .struct_size = sizeof(struct avt_plugin),
    .name = "bad_abi_minor",
    .version = "1",
    .task_types = types,
    .handle = handle,
};
