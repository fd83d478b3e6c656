/*
 * good_config.c - a test plugin with settings: [plugin.good_config] takes
 * `greeting` (required, checked in start()) and `count` (an integer);
 * any other key is refused with a message. It logs through the host table
 * and handles the type `good_config_type` by answering with its settings.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"

struct state {
    const struct avt_host *host;
    char *greeting;
    long count;
};

/* Incremented by shutdown(); the unit test reads it through dlsym(). */
AVT__EXPORT int good_config_shutdowns;

static void say(const struct avt_host *host, const char *what)
{
    /* A plugin only calls host functions that exist in the host's table. */
    if (host->struct_size >= offsetof(struct avt_host, log) + sizeof(host->log) && host->log)
        host->log(host, NULL, AVT_LOG_INFO, "good_config: %s", what);
}

static int init(const struct avt_host *host, void **state)
{
    struct state *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->host = host;
    *state = s;
    say(host, "init");
    return 0;
}

static int set_count(struct state *s, const char *value, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0') {
        snprintf(err, errlen, "count must be an integer, not \"%s\"", value);
        return -EINVAL;
    }
    s->count = v;
    return 0;
}

static int configure(void *state, const char *key, const char *value, char *err, size_t errlen)
{
    struct state *s = state;
    if (strcmp(key, "count") == 0)
        return set_count(s, value, err, errlen);
    if (strcmp(key, "greeting") == 0) {
        char *g = strdup(value);
        if (g == NULL)
            return -ENOMEM;
        free(s->greeting);
        s->greeting = g;
        return 0;
    }
    snprintf(err, errlen, "unknown key '%s' (good_config knows greeting, count)", key);
    return -EINVAL;
}

static int start(void *state, char *err, size_t errlen)
{
    struct state *s = state;
    if (s->greeting == NULL) {
        snprintf(err, errlen, "greeting is required: set it in [plugin.good_config]");
        return -EINVAL;
    }
    say(s->host, "started");
    return 0;
}

static int handle(void *state, struct avt_task *task)
{
    struct state *s = state;
    return avt_succeed(
        task, json_pack("{s:s, s:i}", "greeting", s->greeting, "count", (json_int_t)s->count));
}

static void shutdown(void *state)
{
    struct state *s = state;
    good_config_shutdowns++;
    free(s->greeting);
    free(s);
}

static const char *const types[] = {"good_config_type", NULL};
AVT_PLUGIN(.name = "good_config", .version = "1.2.3", .task_types = types, .init = init,
           .configure = configure, .start = start, .handle = handle, .shutdown = shutdown);
