/* bad_abi_major.c - a descriptor built by hand for ABI major 2. */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"abi_major_type", NULL};
AVT__EXPORT const struct avt_plugin avt_plugin = {
    .abi_version = (2u << 16) | 0u,
    .struct_size = sizeof(struct avt_plugin),
    .name = "bad_abi_major",
    .version = "1",
    .task_types = types,
    .handle = handle,
};
