/*
 * good_types.c - a test plugin whose configuration decides its task types
 * (ABI 1.2 types()): [plugin.good_types] `types = a b c` (space-separated).
 * It has no task_types; with no key its types() returns an empty list,
 * which the daemon refuses. Each type succeeds with {"type": TYPE}.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"

#define MAX_TYPES 8

struct state {
    char *buf;
    const char *types[MAX_TYPES + 1];
};

static int init(const struct avt_host *host, void **state)
{
    (void)host;
    *state = calloc(1, sizeof(struct state));
    return *state != NULL ? 0 : -ENOMEM;
}

static int configure(void *state, const char *key, const char *value, char *err, size_t errlen)
{
    struct state *s = state;
    size_t n = 0;
    char *save = NULL;
    if (strcmp(key, "types") != 0) {
        snprintf(err, errlen, "unknown key '%s'", key);
        return -EINVAL;
    }
    free(s->buf);
    s->buf = strdup(value);
    if (s->buf == NULL)
        return -ENOMEM;
    for (char *t = strtok_r(s->buf, " ", &save); t != NULL && n < MAX_TYPES;
         t = strtok_r(NULL, " ", &save))
        s->types[n++] = t;
    s->types[n] = NULL;
    return 0;
}

static const char *const *types(void *state)
{
    return ((struct state *)state)->types;
}

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    return avt_succeed(task, json_pack("{s:s}", "type", task->type));
}

static void shutdown(void *state)
{
    struct state *s = state;
    free(s->buf);
    free(s);
}

AVT_PLUGIN(.name = "good_types", .version = "1.2.0", .init = init, .configure = configure,
           .handle = handle, .shutdown = shutdown, .types = types);
