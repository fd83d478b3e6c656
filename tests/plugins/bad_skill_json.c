/*
 * bad_skill_json.c - a test plugin whose skill description holds an input
 * schema that is not JSON: the loader refuses it with the reason (exit 78).
 */
#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, NULL);
}

static const char *const types[] = {"bad_skill_type", NULL};
static const struct avt_skill skills[] = {
    {.type = "bad_skill_type", .input_schema = "{\"type\": \"object\",}"},
    {.type = NULL},
};

AVT_PLUGIN(.name = "bad_skill_json", .version = "1", .task_types = types, .handle = handle,
           .skills = skills);
