/*
 * avt_plugin.h - the plugin ABI of avtworkerd, the C worker daemon for the
 * Avtomatika job orchestrator.
 *
 * This is the only header a plugin author includes. A plugin is a shared
 * object (`.so`) that exports one data symbol, `avt_plugin`, describing the
 * plugin and the task types it handles. The daemon loads it with dlopen(),
 * checks the ABI version and struct size, and hands it a host function table
 * (`struct avt_host`) through which the plugin reports outcomes, progress,
 * hot-cache changes and log lines. Plugins never link against daemon symbols,
 * so they build with `-Wl,-z,defs` against this header and libjansson alone:
 *
 *     cc -shared -fPIC $(pkg-config --cflags --libs avtworker-sdk) x.c -o x.so
 *
 * A minimal plugin:
 *
 *     #include <avt_plugin.h>
 *
 *     static int handle(void *state, struct avt_task *task)
 *     {
 *         (void)state;
 *         return avt_succeed(task, json_deep_copy(task->params));
 *     }
 *
 *     static const char *const types[] = {"echo", NULL};
 *     AVT_PLUGIN(.name = "echo", .version = "1.0", .task_types = types,
 *                .handle = handle);
 *
 * Threads. init(), configure(), start() and shutdown() run on the daemon's
 * main thread, never concurrently with anything else of the same plugin.
 * handle() runs on a worker thread; several worker threads may run handle()
 * of the same plugin at the same time, so a plugin must be thread-safe (set
 * `[limits] TYPE = 1` in worker.ini to run a type serially). Every host
 * function may be called from any thread unless its comment says otherwise.
 *
 * Ownership follows jansson: arguments are borrowed unless a comment says the
 * function "steals" them; `task->params` and the other JSON members of a task
 * are borrowed for the duration of handle() and must not be kept or freed.
 *
 * Versioning. AVT_ABI_MAJOR changes on any incompatible change; the daemon
 * refuses a plugin with another major. AVT_ABI_MINOR grows when fields are
 * appended to a struct; the daemon accepts plugins built against its own or
 * an older minor, never a newer one. Structs are only ever appended to, and
 * each carries its size so that both sides can tell which fields exist.
 *
 * The header compiles as C99 and as C++14 or later (AVT_PLUGIN with
 * designated initializers is standard C++ from C++20 and an extension that
 * g++ and clang++ accept in C++14 and C++17).
 */
#ifndef AVT_PLUGIN_H
#define AVT_PLUGIN_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version of this header. See "Versioning" above. */
#define AVT_ABI_MAJOR 1
#define AVT_ABI_MINOR 2
#define AVT_ABI_VERSION ((uint32_t)((AVT_ABI_MAJOR << 16) | AVT_ABI_MINOR))
#define AVT_ABI_VERSION_MAJOR(v) ((uint32_t)(v) >> 16)
#define AVT_ABI_VERSION_MINOR(v) ((uint32_t)(v)&0xffffu)

/* The name of the exported descriptor symbol. */
#define AVT_PLUGIN_SYMBOL "avt_plugin"

/*
 * Error codes understood by the orchestrator (RXON 1.0b3 and 1.0b14). A
 * failure with TRANSIENT_ERROR (or any code the orchestrator does not know,
 * TIMEOUT_ERROR among them) is retried; PERMANENT_ERROR, SECURITY_ERROR and
 * DEPENDENCY_ERROR quarantine the job (with 1.0b14 they also cost the
 * worker reputation: use them only for failures that are the task's own
 * fault); INVALID_INPUT_ERROR and INTEGRITY_MISMATCH_ERROR fail it without
 * retry. CONTRACT_VIOLATION_ERROR is the orchestrator's own (1.0b14: a
 * success whose data violates the skill's output schema).
 */
#define AVT_TRANSIENT_ERROR "TRANSIENT_ERROR"
#define AVT_PERMANENT_ERROR "PERMANENT_ERROR"
#define AVT_INVALID_INPUT_ERROR "INVALID_INPUT_ERROR"
#define AVT_INTEGRITY_MISMATCH_ERROR "INTEGRITY_MISMATCH_ERROR"
#define AVT_TIMEOUT_ERROR "TIMEOUT_ERROR"
#define AVT_RESOURCE_EXHAUSTED_ERROR "RESOURCE_EXHAUSTED_ERROR"
#define AVT_DEPENDENCY_ERROR "DEPENDENCY_ERROR"
#define AVT_SECURITY_ERROR "SECURITY_ERROR"
#define AVT_INTERNAL_ERROR "INTERNAL_ERROR"
#define AVT_CONTRACT_VIOLATION_ERROR "CONTRACT_VIOLATION_ERROR"

/* Log levels, as syslog(3) numbers them. */
#define AVT_LOG_ERR 3
#define AVT_LOG_WARNING 4
#define AVT_LOG_NOTICE 5
#define AVT_LOG_INFO 6
#define AVT_LOG_DEBUG 7

#if defined(__GNUC__) || defined(__clang__)
#define AVT__PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define AVT__EXPORT __attribute__((visibility("default")))
#else
#define AVT__PRINTF(fmt, args)
#define AVT__EXPORT
#endif

struct avt_host;

/*
 * One task, as the daemon hands it to handle(). The daemon owns it; every
 * member is valid until handle() returns and must not be used afterwards.
 * Fields are only appended (check struct_size before reading a field that a
 * later minor version added).
 */
struct avt_task {
    /* sizeof(struct avt_task) as the daemon was built. */
    uint32_t struct_size;
    /* Task priority as sent by the orchestrator; 0 when it sends none, which
     * is always the case with RXON 1.0b3. */
    int32_t priority;
    /* The host table of the plugin that runs this task. */
    const struct avt_host *host;
    /* Task id, job id and task type: NUL-terminated, never NULL. With
     * Avtomatika 1.0b13 the task id equals the job id and is the same for
     * every retry of a job. */
    const char *id;
    const char *job_id;
    const char *type;
    /* The task parameters: a JSON object, never NULL. Borrowed. */
    json_t *params;
    /* W3C trace context carrier: a JSON object, never NULL ({} when the
     * orchestrator runs without tracing). Borrowed. */
    json_t *tracing_context;
    /* The job's data_metadata ({key path: {uri, size, etag}}) or NULL.
     * Borrowed. */
    json_t *params_metadata;

    /* ABI 1.1 (check struct_size first): the time by which the
     * orchestrator wants the result, as unix seconds, or 0 when it set none
     * (RXON 1.0b14 sends it when the blueprint set a result timeout; 1.0b3
     * never does). The daemon cancels the task at the earlier of this and
     * its type's [limits] timeout and reports TIMEOUT_ERROR. */
    double deadline;
};

/*
 * The host function table. The daemon gives each plugin its own table; it
 * stays valid from init() until shutdown() returns.
 */
struct avt_host {
    /* AVT_ABI_VERSION and sizeof(struct avt_host) of the daemon. */
    uint32_t abi_version;
    uint32_t struct_size;
    /* The daemon's version string, e.g. "0.1.0". */
    const char *daemon_version;

    /*
     * Outcome: the task succeeded with `data` (a JSON object, or NULL for
     * none). Steals `data`, also when it fails. Reported as status
     * "success". Returns 0, or -EALREADY when the task already has an
     * outcome (the first outcome wins; `data` is freed).
     */
    int (*succeed)(struct avt_task *task, json_t *data);

    /*
     * Outcome: the task finished with a custom result status (a transition
     * name of the blueprint other than "success", e.g. "needs_review").
     * Steals `data`. Returns 0, -EINVAL for an empty status, or -EALREADY.
     */
    int (*complete)(struct avt_task *task, const char *status, json_t *data);

    /*
     * Outcome: the task failed with error `code` (one of the AVT_*_ERROR
     * codes or any string the orchestrator knows) and a printf-style
     * message. Returns 0, -EINVAL for an empty code, or -EALREADY.
     */
    int (*fail)(struct avt_task *task, const char *code, const char *fmt, ...) AVT__PRINTF(3, 4);
    int (*vfail)(struct avt_task *task, const char *code, const char *fmt, va_list ap)
        AVT__PRINTF(3, 0);

    /*
     * Progress: `percent` from 0 to 100 (clamped) and a printf-style
     * message (may be NULL). Sent to the orchestrator as a progress_update
     * event; frequent calls are coalesced, the last value always wins.
     * Returns 0.
     */
    int (*progress)(struct avt_task *task, double percent, const char *fmt, ...) AVT__PRINTF(3, 4);

    /*
     * Cancellation check: non-zero once the task should stop (the
     * orchestrator cancelled it, its deadline passed, or the daemon is
     * shutting down). A cooperative handler checks it between steps and
     * returns promptly; the outcome it sets then is replaced by the right
     * report ("cancelled" for a cancelled task). Cheap: one atomic load.
     */
    int (*is_cancelled)(const struct avt_task *task);

    /*
     * Hot cache: add or remove a model name the worker holds warm. The
     * daemon sends the set in its next heartbeat (the orchestrator prefers
     * workers whose hot cache holds what a task needs). Returns 0 or
     * -EINVAL for an empty name.
     */
    int (*hot_cache_add)(const struct avt_host *host, const char *name);
    int (*hot_cache_remove)(const struct avt_host *host, const char *name);

    /*
     * Logging at an AVT_LOG_* level. The daemon tags each line with the
     * plugin name and, when `task` is not NULL, the task id, job id and
     * type. `host` is the table the plugin was given.
     */
    void (*log)(const struct avt_host *host, const struct avt_task *task, int level,
                const char *fmt, ...) AVT__PRINTF(4, 5);

    /*
     * ABI 1.1 (use avt_emit_event(), which checks struct_size). A custom
     * event of a running task, e.g. a partial result or a log record for
     * the job's history: `type` is its event type (not "progress", which
     * is avt_progress()'s), `payload` a JSON object (stolen, also on
     * failure). Sent to the orchestrator as a signed event (RXON 1.0b14);
     * when the skill declares events_schema, the orchestrator validates
     * the payload against the schema of `type`. Returns 0, -EINVAL for an
     * empty type, "progress" or a payload that is not an object, or
     * -ENOTSUP when the task's orchestrator speaks RXON 1.0b3, which has no
     * events (the daemon logs that once).
     */
    int (*emit_event)(struct avt_task *task, const char *type, json_t *payload);
};

/*
 * ABI 1.1: what a task type is, for the orchestrator (RXON 1.0b14 "skills
 * as objects"; 1.0b3 only learns the type names). One entry per task type
 * a plugin wants to describe, in an array ended by an entry whose type is
 * NULL; a type without an entry is advertised with its name and the
 * plugin's version only. The JSON members are JSON texts, checked when the
 * plugin is loaded (a text that is not valid JSON of the right kind stops
 * the daemon with exit 78). Beware: the orchestrator enforces the schemas
 * (a task whose params violate input_schema is not given to this worker; a
 * success whose data violates output_schema becomes a failure that costs
 * reputation).
 */
struct avt_skill {
    const char *type;          /* the task type described; one of task_types */
    const char *version;       /* default: the plugin's version */
    const char *description;   /* free text, may be NULL */
    const char *input_schema;  /* JSON Schema object of params, or NULL */
    const char *output_schema; /* JSON Schema object of a success's data, or NULL */
    const char *events_schema; /* JSON object: event type -> JSON Schema, or NULL */
    /* Custom result statuses (avt_complete()) the type may report,
     * NULL-terminated, or NULL. */
    const char *const *output_statuses;
    const char *properties; /* JSON object matched against a blueprint's requirements */
};

/*
 * The plugin descriptor, exported as the data symbol `avt_plugin`. Define it
 * with AVT_PLUGIN(), which fills in abi_version and struct_size.
 */
struct avt_plugin {
    /* AVT_ABI_VERSION and sizeof(struct avt_plugin) when the plugin was
     * built. */
    uint32_t abi_version;
    uint32_t struct_size;
    /* Plugin name ([a-zA-Z0-9_-]+, names the [plugin.NAME] section) and
     * version. Required. */
    const char *name;
    const char *version;
    /* NULL-terminated list of task types this plugin handles. A type may be
     * claimed by one plugin only. Required, at least one. */
    const char *const *task_types;

    /*
     * Optional. Called once after loading, on the main thread. Store
     * `host` for later and set *state to the plugin's own state (passed to
     * every other callback). Return 0, or a negative errno to refuse to
     * load (the daemon then does not start).
     */
    int (*init)(const struct avt_host *host, void **state);

    /*
     * Optional. Called on the main thread once per key of the
     * `[plugin.NAME]` section of worker.ini, after init(). Return 0, or
     * -EINVAL for an unknown key or a bad value after writing what is
     * wrong into err (errlen bytes, NUL-terminated). The daemon reports it
     * as `file:line: key: err` and exits 78. A plugin without configure()
     * accepts no keys.
     */
    int (*configure)(void *state, const char *key, const char *value, char *err, size_t errlen);

    /*
     * Optional. Called on the main thread after the last configure(), before
     * any task. Check that the configuration is complete here. Return 0, or
     * -EINVAL after writing into err.
     */
    int (*start)(void *state, char *err, size_t errlen);

    /*
     * Required. Runs one task on a worker thread. Report the outcome with
     * avt_succeed(), avt_complete() or avt_fail() before returning, then
     * return 0. A handler that returns without an outcome, or returns a
     * non-zero value without one, is reported as TRANSIENT_ERROR with a
     * message saying so.
     */
    int (*handle)(void *state, struct avt_task *task);

    /*
     * Optional. Called on the main thread when the plugin is unloaded,
     * after its last handle() returned. Free the state here.
     */
    void (*shutdown)(void *state);

    /* ABI 1.1, optional: descriptions of the task types (struct avt_skill),
     * ended by an entry whose type is NULL. */
    const struct avt_skill *skills;

    /*
     * ABI 1.2, optional: the task types, when the configuration decides
     * them (a plugin whose types an operator declares, like exec). Called
     * on the main thread after start(); returns a NULL-terminated array
     * owned by the plugin's state, valid until shutdown(). When set, it
     * replaces task_types (which may then be NULL); the types are checked
     * like task_types, and .skills may describe them. An empty list (or
     * NULL) is allowed: the plugin is loaded and serves no type.
     */
    const char *const *(*types)(void *state);
};

/*
 * Define the plugin descriptor with designated initializers:
 *     AVT_PLUGIN(.name = "x", .version = "1", .task_types = t, .handle = h);
 */
#ifdef __cplusplus
/*
 * C++20 forbids mixing positional and designated initializers, so in C++ the
 * designated fields fill a struct that has no version fields, and a
 * constexpr function adds them. Fields must be given in declaration order
 * (a C++20 rule).
 */
struct avt__plugin_fields {
    const char *name = nullptr;
    const char *version = nullptr;
    const char *const *task_types = nullptr;
    int (*init)(const struct avt_host *host, void **state) = nullptr;
    int (*configure)(void *state, const char *key, const char *value, char *err,
                     size_t errlen) = nullptr;
    int (*start)(void *state, char *err, size_t errlen) = nullptr;
    int (*handle)(void *state, struct avt_task *task) = nullptr;
    void (*shutdown)(void *state) = nullptr;
    const struct avt_skill *skills = nullptr;
    const char *const *(*types)(void *state) = nullptr;
};

static inline constexpr struct avt_plugin avt__plugin_make(struct avt__plugin_fields f)
{
    return {AVT_ABI_VERSION, (uint32_t)sizeof(struct avt_plugin),
            f.name,          f.version,
            f.task_types,    f.init,
            f.configure,     f.start,
            f.handle,        f.shutdown,
            f.skills,        f.types};
}

#define AVT_PLUGIN(...)                                                                            \
    extern "C" AVT__EXPORT const struct avt_plugin avt_plugin;                                     \
    extern "C" AVT__EXPORT constexpr struct avt_plugin avt_plugin =                                \
        avt__plugin_make(avt__plugin_fields{__VA_ARGS__})
#else
#define AVT_PLUGIN(...)                                                                            \
    AVT__EXPORT const struct avt_plugin avt_plugin = {.abi_version = AVT_ABI_VERSION,              \
                                                      .struct_size =                               \
                                                          (uint32_t)sizeof(struct avt_plugin),     \
                                                      __VA_ARGS__}
#endif

/* Convenience wrappers; each calls the host table of the task. */
static inline int avt_succeed(struct avt_task *task, json_t *data)
{
    return task->host->succeed(task, data);
}

static inline int avt_complete(struct avt_task *task, const char *status, json_t *data)
{
    return task->host->complete(task, status, data);
}

static inline int avt_is_cancelled(const struct avt_task *task)
{
    return task->host->is_cancelled(task);
}

/* A custom event (ABI 1.1); -ENOTSUP from a daemon older than ABI 1.1. */
static inline int avt_emit_event(struct avt_task *task, const char *type, json_t *payload)
{
    if (task->host->struct_size < offsetof(struct avt_host, emit_event) + sizeof(void *)) {
        json_decref(payload);
        return -ENOTSUP;
    }
    return task->host->emit_event(task, type, payload);
}

#define avt_fail(task, code, ...) ((task)->host->fail((task), (code), __VA_ARGS__))
#define avt_progress(task, percent, ...) ((task)->host->progress((task), (percent), __VA_ARGS__))
#define avt_log(task, level, ...) ((task)->host->log((task)->host, (task), (level), __VA_ARGS__))
#define avt_log_err(task, ...) avt_log((task), AVT_LOG_ERR, __VA_ARGS__)
#define avt_log_warn(task, ...) avt_log((task), AVT_LOG_WARNING, __VA_ARGS__)
#define avt_log_info(task, ...) avt_log((task), AVT_LOG_INFO, __VA_ARGS__)
#define avt_log_debug(task, ...) avt_log((task), AVT_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif /* AVT_PLUGIN_H */
