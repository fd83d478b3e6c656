/*
 * plugin.h - loading handler plugins with dlopen(), checking their ABI, and
 * the registry that maps a task type to the plugin that handles it.
 *
 * plugin_set_load() loads every "*.so" in a directory (sorted by name),
 * refusing with a message naming the file: a missing `avt_plugin` symbol,
 * an ABI major mismatch or a newer minor, a too-small struct, a missing
 * name/handler/task type, a type claimed by two plugins (both named), and a
 * file or directory writable by anyone but root or the daemon's user. Then
 * it calls each plugin's init(), configure() once per [plugin.NAME] key,
 * and start(). All of this runs on the main thread.
 */
#ifndef AVT_DAEMON_PLUGIN_H
#define AVT_DAEMON_PLUGIN_H

#include <stddef.h>

#include "avt_plugin.h"
#include "host.h"
#include "util.h"

struct cfg;
struct evq;
struct task;

struct plugin {
    struct host_ctx host; /* first: its table is handed to the plugin; see plugin_of_host() */
    const struct avt_plugin *desc;
    void *state; /* what init() returned */
    void *dl;    /* dlopen() handle */
    char *path;  /* the .so file */
    char *name;  /* copy of desc->name */
    int started; /* init() succeeded; shutdown() is owed */
    /* Its task types: desc->task_types, or what types() (ABI 1.2) returned
     * after start(); NULL until known. */
    const char *const *types;
};

struct plugin_type {
    const char *type; /* points into the plugin's descriptor or state */
    struct plugin *plugin;
    json_t *skill; /* what the type advertises: its SkillInfo (skill.h) */
};

struct plugin_set {
    struct plugin **plugins;
    size_t nplugins;
    struct plugin_type *types; /* sorted by type, for bsearch */
    size_t ntypes;
};

/* The plugin whose host table this is. */
#define plugin_of_host(h) container_of((h), struct plugin, host)

/*
 * Load all plugins of `dir` and configure them from `cfg` (a [plugin.NAME]
 * section without a loaded plugin of that name is an error too). `evq`
 * (where hot-cache changes go) may be NULL (check-config). Returns 0 and sets *out, or a negative
 * errno with the reason in err: "path: what is wrong" for plugin refusals, or "file:line: key: what
 * is wrong" for configuration errors. The caller exits 78 on any failure at start-up.
 */
int plugin_set_load(const char *dir, const struct cfg *cfg, struct evq *evq,
                    struct plugin_set **out, char *err, size_t errlen);

/* The plugin that handles `type`, or NULL. Any thread (the set is
 * immutable once loaded). */
struct plugin *plugin_set_find(const struct plugin_set *set, const char *type);

/*
 * Run a task's handler on the calling (worker) thread and apply the outcome
 * mapping (task_finish). A task without a plugin gets PERMANENT_ERROR
 * "Unsupported task: TYPE" without running anything; one that already has
 * an outcome (an invalid payload) or was cancelled while it waited is not
 * started at all. Sets t_started and t_finished.
 */
void plugin_run(struct task *t);

/* Call shutdown() of every started plugin, then free the set. dlclose() is
 * skipped when AVT_NO_DLCLOSE is set in the environment (sanitizer and
 * valgrind runs keep plugin symbols for their reports). NULL is a no-op. */
void plugin_set_destroy(struct plugin_set *set);

#endif /* AVT_DAEMON_PLUGIN_H */
