/*
 * good_plain.c - a test plugin without settings (no configure()) handling
 * two types. It exports what the loader did to it, for the unit tests: the
 * host table init() got and how often init() and shutdown() ran.
 */
#include "avt_plugin.h"

AVT__EXPORT const struct avt_host *good_plain_host;
AVT__EXPORT int good_plain_inits;
AVT__EXPORT int good_plain_shutdowns;

static int state_word;

static int init(const struct avt_host *host, void **state)
{
    good_plain_host = host;
    good_plain_inits++;
    *state = &state_word;
    return 0;
}

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static void shutdown(void *state)
{
    if (state == &state_word)
        good_plain_shutdowns++;
}

static const char *const types[] = {"plain_b", "plain_a", NULL};
AVT_PLUGIN(.name = "good_plain", .version = "0.1", .task_types = types, .init = init,
           .handle = handle, .shutdown = shutdown);
