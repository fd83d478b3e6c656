/*
 * good_skills.c - a test plugin of ABI 1.1 that describes its task types
 * (struct avt_skill): what RXON 1.0b14 advertises as skills, and what
 * --check-config shows. "sk_echo" has a version, a description, input and
 * output schemas, an event schema and properties; "sk_review" only custom
 * output statuses; "sk_plain" no entry at all (the defaults).
 */
#include <string.h>

#include "avt_plugin.h"

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    if (strcmp(task->type, "sk_review") == 0)
        return avt_complete(task, "needs_review", NULL);
    return avt_succeed(task, json_deep_copy(task->params));
}

static const char *const types[] = {"sk_echo", "sk_review", "sk_plain", NULL};
static const char *const statuses[] = {"needs_review", NULL};

static const struct avt_skill skills[] = {
    {.type = "sk_echo",
     .version = "2.1",
     .description = "returns its params",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"msg\":{\"type\":\"string\"}}}",
     .output_schema = "{\"type\":\"object\"}",
     .events_schema = "{\"note\":{\"type\":\"object\"}}",
     .properties = "{\"gpu\":false}"},
    {.type = "sk_review", .output_statuses = statuses},
    {.type = NULL},
};

AVT_PLUGIN(.name = "good_skills", .version = "1.5", .task_types = types, .handle = handle,
           .skills = skills);
