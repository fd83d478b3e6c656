/*
 * cfg.c - the configuration loader: built-in defaults, then worker.ini, then
 * the environment, validated into one struct cfg.
 *
 * The INI file is parsed with inih through ini_parse_stream() and a reader
 * of our own (ini_reader), because Debian's libinih is built without
 * INI_HANDLER_LINENO and with a 200-byte line buffer: the reader counts
 * lines so the handler knows where it is, and refuses a line that inih
 * would silently split in two. The [worker] and [orchestrator] keys are
 * described once, in the keys[] table (section, name, kind, field, range);
 * the same table drives parsing, the environment overrides (envs[]) and
 * cfg_dump(), so a key cannot be parsed one way and printed another. The
 * other sections ([limits], [capabilities], [plugin.NAME]) have free keys
 * and their own handlers. Every error is written once, as
 * "file:line: key: what is wrong" or "environment: VAR: what is wrong",
 * and loading stops at the first one.
 */
#include "cfg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#ifndef AVT_PLUGINDIR
#define AVT_PLUGINDIR "/usr/local/lib/avtworkerd"
#endif

#define STATE_DIR_DEFAULT "/var/lib/avtworkerd"
#define URL_DEFAULT "http://localhost:8080"
#define TOKEN_FILE_MAX 65536
#define LIMIT_MAX 4096
#define LIMIT_TIMEOUT_MAX 604800.0 /* one week */
#define TYPE_MAX_LEN 128           /* as the plugin loader's task types */
#define TIMEOUT_SUFFIX ".timeout"
#define PLUGIN_PREFIX "plugin."

/* ---- The fixed keys ------------------------------------------------------ */

enum kind {
    K_STRING,      /* non-empty UTF-8 text without control characters */
    K_ID,          /* ^[a-zA-Z0-9_-]+$ */
    K_PATH,        /* an absolute path */
    K_INT,         /* decimal integer in [min, max] */
    K_DOUBLE,      /* decimal number in [min, max] (or (min, max]) */
    K_BOOL,        /* true/false/yes/no/on/off/1/0 */
    K_URL,         /* http(s)://host[...] without a trailing '/' */
    K_IP,          /* an IPv4 or IPv6 address */
    K_LOG_LEVEL,   /* log_level_parse() */
    K_LOG_FORMAT,  /* log_format_parse() */
    K_TOKEN,       /* a secret: never echoed in messages */
    K_TOKEN_FILE,  /* a path, read after the environment is applied */
    K_JSON_OBJECT, /* any JSON object */
    K_JSON_MODELS, /* JSON array of {"name": str, "version": str} */
    K_JSON_COSTS,  /* JSON object of non-negative numbers */
};

struct key_def {
    const char *section;
    const char *name;
    enum kind kind;
    size_t off; /* of the field in struct cfg */
    double min, max;
    int min_open; /* the minimum itself is excluded (delays must be > 0) */
};

#define FIELD(f) offsetof(struct cfg, f)

static const struct key_def keys[] = {
    {"worker", "id", K_ID, FIELD(worker_id), 0, 0, 0},
    {"worker", "type", K_STRING, FIELD(worker_type), 0, 0, 0},
    {"worker", "max_concurrent_tasks", K_INT, FIELD(max_concurrent_tasks), 1, 4096, 0},
    {"worker", "cpu_cores", K_INT, FIELD(cpu_cores), 1, 65536, 0},
    {"worker", "plugin_dir", K_PATH, FIELD(plugin_dir), 0, 0, 0},
    {"worker", "state_dir", K_PATH, FIELD(state_dir), 0, 0, 0},
    {"worker", "shutdown_timeout", K_DOUBLE, FIELD(shutdown_timeout), 0, 86400, 0},
    {"worker", "advertise_busy", K_BOOL, FIELD(advertise_busy), 0, 0, 0},
    {"worker", "log_level", K_LOG_LEVEL, FIELD(log_level), 0, 0, 0},
    {"worker", "log_format", K_LOG_FORMAT, FIELD(log_format), 0, 0, 0},
    {"worker", "hostname", K_STRING, FIELD(hostname), 0, 0, 0},
    {"worker", "ip_address", K_IP, FIELD(ip_address), 0, 0, 0},
    {"worker", "gpu_model", K_STRING, FIELD(gpu_model), 0, 0, 0},
    {"worker", "gpu_vram_gb", K_INT, FIELD(gpu_vram_gb), 0, 1048576, 0},
    {"worker", "installed_software", K_JSON_OBJECT, FIELD(installed_software), 0, 0, 0},
    {"worker", "installed_models", K_JSON_MODELS, FIELD(installed_models), 0, 0, 0},
    {"worker", "cost_per_skill", K_JSON_COSTS, FIELD(cost_per_skill), 0, 0, 0},
    {"orchestrator", "url", K_URL, FIELD(url), 0, 0, 0},
    {"orchestrator", "token", K_TOKEN, FIELD(token), 0, 0, 0},
    {"orchestrator", "token_file", K_TOKEN_FILE, FIELD(token_file), 0, 0, 0},
    {"orchestrator", "poll_timeout", K_DOUBLE, FIELD(poll_timeout), 1, 3600, 0},
    {"orchestrator", "heartbeat_interval", K_DOUBLE, FIELD(heartbeat_interval), 0.1, 3600, 0},
    {"orchestrator", "heartbeat_debounce", K_DOUBLE, FIELD(heartbeat_debounce), 0, 60, 0},
    {"orchestrator", "websockets", K_BOOL, FIELD(websockets), 0, 0, 0},
    {"orchestrator", "result_retry_initial_delay", K_DOUBLE, FIELD(result_retry_initial_delay), 0,
     3600, 1},
    {"orchestrator", "retry_max_delay", K_DOUBLE, FIELD(retry_max_delay), 0, 86400, 1},
    {"orchestrator", "probe_every", K_INT, FIELD(probe_every), 1, 1000, 0},
};

#define NKEYS ARRAY_LEN(keys)

/* Environment overrides, applied in this order: a later entry for the same
 * key wins, so WORKER_INDIVIDUAL_TOKEN beats WORKER_TOKEN beats
 * WORKER_TOKEN_FILE. */
struct env_def {
    const char *var;
    const char *key;
    int first_of_list; /* take the value up to the first ':' (systemd lists) */
};

static const struct env_def envs[] = {
    {"ORCHESTRATOR_URL", "url", 0},
    {"WORKER_ID", "id", 0},
    {"WORKER_TYPE", "type", 0},
    {"WORKER_TOKEN_FILE", "token_file", 0},
    {"WORKER_TOKEN", "token", 0},
    {"WORKER_INDIVIDUAL_TOKEN", "token", 0},
    {"MAX_CONCURRENT_TASKS", "max_concurrent_tasks", 0},
    {"CPU_CORES", "cpu_cores", 0},
    {"HEARTBEAT_INTERVAL", "heartbeat_interval", 0},
    {"TASK_POLL_TIMEOUT", "poll_timeout", 0},
    {"WORKER_HEARTBEAT_DEBOUNCE_DELAY", "heartbeat_debounce", 0},
    {"RESULT_RETRY_INITIAL_DELAY", "result_retry_initial_delay", 0},
    {"BACKOFF_MAX_DELAY", "retry_max_delay", 0},
    {"WORKER_SHUTDOWN_TIMEOUT", "shutdown_timeout", 0},
    {"WORKER_ENABLE_WEBSOCKETS", "websockets", 0},
    {"GPU_MODEL", "gpu_model", 0},
    {"GPU_VRAM_GB", "gpu_vram_gb", 0},
    {"INSTALLED_SOFTWARE", "installed_software", 0},
    {"INSTALLED_MODELS", "installed_models", 0},
    {"COST_PER_SKILL", "cost_per_skill", 0},
    {"LOG_LEVEL", "log_level", 0},
    {"LOG_FORMAT", "log_format", 0},
    {"STATE_DIRECTORY", "state_dir", 1},
    {"ADVERTISE_BUSY", "advertise_busy", 0},
    {"AVT_PLUGIN_DIR", "plugin_dir", 0},
    {"HOSTNAME_OVERRIDE", "hostname", 0},
    {"IP_ADDRESS", "ip_address", 0},
};

#define EXTRA_ENV_PREFIX "WORKER_EXTRA_"

static const char *const log_format_names[] = {"auto", "plain", "json", "journal"};

/* ---- Loader state and errors --------------------------------------------- */

/* A key already set in the file: section and name, and where. */
struct seen {
    char *section;
    char *name;
    int line;
};

struct loader {
    struct cfg *cfg;
    char *err;
    size_t errlen;
    int failed;   /* err holds the one message */
    int err_line; /* the INI line the error is on (0: not in the file) */

    const char *path;
    FILE *fp;
    char *buf; /* the current line, as getline() read it */
    size_t bufcap;
    int lineno;
    int indented; /* the current line starts with a blank */
    int read_errno;

    struct seen *seen;
    size_t nseen;
    char *origin[NKEYS]; /* where the value in force was set; NULL = default */
    int from_env[NKEYS];
};

static int fail(struct loader *ld, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record the first error as "where: message"; returns -EINVAL. */
static int fail(struct loader *ld, const char *where, const char *fmt, ...)
{
    if (ld->failed)
        return -EINVAL;
    char msg[AVT_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fmt_err(ld->err, ld->errlen, "%s: %s", where, msg);
    ld->failed = 1;
    ld->err_line = ld->lineno;
    return -EINVAL;
}

static void loader_finish(struct loader *ld)
{
    for (size_t i = 0; i < ld->nseen; i++) {
        free(ld->seen[i].section);
        free(ld->seen[i].name);
    }
    free(ld->seen);
    for (size_t i = 0; i < NKEYS; i++)
        free(ld->origin[i]);
    free(ld->buf);
}

/* The [section] key `name`, or NULL. */
static const struct key_def *key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

/* The index in keys[] of a name this file itself uses (names are unique
 * across the two sections). */
static size_t key_index(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].name, name) == 0)
            return i;
    }
    assert(!"cfg.c names a key missing from keys[]");
    abort();
}

/* ---- Value parsers --------------------------------------------------------- */

static int has_control(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    }
    return 0;
}

/* Text that goes into JSON and HTTP: valid UTF-8, no control characters. */
static int check_text(struct loader *ld, const char *where, const char *v)
{
    if (has_control(v))
        return fail(ld, where, "contains a control character");
    json_t *j = json_string(v);
    if (j == NULL)
        return fail(ld, where, "is not valid UTF-8");
    json_decref(j);
    return 0;
}

static int parse_int(struct loader *ld, const char *where, const char *v, long min, long max,
                     int *out)
{
    char *end;
    if (!isdigit((unsigned char)v[0]) &&
        !((v[0] == '-' || v[0] == '+') && isdigit((unsigned char)v[1])))
        return fail(ld, where, "not an integer: \"%s\"", v);
    errno = 0;
    long n = strtol(v, &end, 10);
    if (*end != '\0')
        return fail(ld, where, "not an integer: \"%s\"", v);
    if (errno == ERANGE || n < min || n > max)
        return fail(ld, where, "%s is out of range (%ld..%ld)", v, min, max);
    *out = (int)n;
    return 0;
}

static int parse_double(struct loader *ld, const char *where, const char *v,
                        const struct key_def *k, double *out)
{
    char *end;
    if (v[strspn(v, "0123456789.eE+-")] != '\0')
        return fail(ld, where, "not a number: \"%s\"", v);
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end != '\0' || !isfinite(d))
        return fail(ld, where, "not a number: \"%s\"", v);
    if (d < k->min || d > k->max || (k->min_open && d <= k->min)) {
        return fail(ld, where, "%s is out of range (%s%g..%g seconds)", v,
                    k->min_open ? "more than " : "", k->min, k->max);
    }
    *out = d;
    return 0;
}

static int parse_bool(struct loader *ld, const char *where, const char *v, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return fail(ld, where, "not a boolean: \"%s\" (use true/false, yes/no, on/off, 1/0)", v);
}

/* http(s)://host[:port][/path]; trailing '/' removed; no query/fragment. */
static int parse_url(struct loader *ld, const char *where, const char *v, char **out)
{
    size_t scheme;
    if (strncasecmp(v, "http://", 7) == 0)
        scheme = 7;
    else if (strncasecmp(v, "https://", 8) == 0)
        scheme = 8;
    else
        return fail(ld, where, "\"%s\" must start with http:// or https://", v);
    size_t host = strcspn(v + scheme, "/?#");
    if (host == 0 || v[scheme] == ':')
        return fail(ld, where, "\"%s\" has no host", v);
    if (strpbrk(v, "?# \t") != NULL || has_control(v))
        return fail(ld, where, "\"%s\" must not contain blanks, a query or a fragment", v);
    char *u = xstrdup(v);
    size_t n = strlen(u);
    while (n > scheme + host && u[n - 1] == '/')
        u[--n] = '\0';
    *out = u;
    return 0;
}

static int parse_token(struct loader *ld, const char *where, const char *v)
{
    /* The token itself never appears in a message. */
    if (has_control(v))
        return fail(ld, where, "the token contains a control character");
    return 0;
}

/* ---- JSON values ------------------------------------------------------------ */

static int parse_json(struct loader *ld, const char *where, const char *v, size_t flags,
                      json_t **out)
{
    json_error_t jerr;
    json_t *j = json_loads(v, JSON_REJECT_DUPLICATES | flags, &jerr);
    if (j == NULL)
        return fail(ld, where, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    *out = j;
    return 0;
}

static int check_models(struct loader *ld, const char *where, json_t *j)
{
    if (!json_is_array(j))
        return fail(ld, where, "must be a JSON array of {\"name\": ..., \"version\": ...}");
    size_t i;
    json_t *m;
    json_array_foreach(j, i, m)
    {
        json_t *name = json_object_get(m, "name"), *version = json_object_get(m, "version");
        if (!json_is_object(m))
            return fail(ld, where, "element %zu is not an object", i);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return fail(ld, where, "element %zu: \"name\" must be a non-empty string", i);
        if (!json_is_string(version))
            return fail(ld, where, "element %zu: \"version\" must be a string", i);
    }
    return 0;
}

static int check_costs(struct loader *ld, const char *where, json_t *j)
{
    if (!json_is_object(j))
        return fail(ld, where, "must be a JSON object of skill -> number");
    const char *skill;
    json_t *cost;
    json_object_foreach(j, skill, cost)
    {
        if (!json_is_number(cost) || json_number_value(cost) < 0)
            return fail(ld, where, "the cost of \"%s\" must be a non-negative number", skill);
    }
    return 0;
}

static int parse_json_key(struct loader *ld, const char *where, const struct key_def *k,
                          const char *v, json_t **field)
{
    json_t *j = NULL;
    int rc = parse_json(ld, where, v, 0, &j);
    if (rc == 0 && k->kind == K_JSON_OBJECT && !json_is_object(j))
        rc = fail(ld, where, "must be a JSON object");
    if (rc == 0 && k->kind == K_JSON_MODELS)
        rc = check_models(ld, where, j);
    if (rc == 0 && k->kind == K_JSON_COSTS)
        rc = check_costs(ld, where, j);
    if (rc < 0) {
        json_decref(j);
        return rc;
    }
    json_decref(*field);
    *field = j;
    return 0;
}

/* A [capabilities] or WORKER_EXTRA_* value: JSON when it starts with '{' or
 * '[', a boolean for "true"/"false", else a string. */
static int parse_extra(struct loader *ld, const char *where, const char *v, json_t **out)
{
    if (v[0] == '{' || v[0] == '[')
        return parse_json(ld, where, v, 0, out);
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
        *out = json_boolean(v[0] == 't');
        return 0;
    }
    if (check_text(ld, where, v) < 0)
        return -EINVAL;
    *out = json_string(v);
    return 0;
}

/* ---- Setting a fixed key ---------------------------------------------------- */

static void replace_str(char **field, char *value)
{
    free(*field);
    *field = value;
}

static int parse_string_kind(struct loader *ld, const char *where, const struct key_def *k,
                             const char *v, char **field)
{
    char *url = NULL;
    struct in6_addr a6;
    switch (k->kind) {
    case K_ID:
        if (!str_is_ident(v) || strlen(v) > 255)
            return fail(ld, where, "\"%s\" must match ^[a-zA-Z0-9_-]+$ (at most 255)", v);
        break;
    case K_PATH:
        if (v[0] != '/' || has_control(v))
            return fail(ld, where, "\"%s\" must be an absolute path", v);
        break;
    case K_IP:
        if (inet_pton(AF_INET, v, &a6) != 1 && inet_pton(AF_INET6, v, &a6) != 1)
            return fail(ld, where, "\"%s\" is not an IPv4 or IPv6 address", v);
        break;
    case K_URL:
        if (parse_url(ld, where, v, &url) < 0)
            return -EINVAL;
        replace_str(field, url);
        return 0;
    case K_TOKEN:
        if (parse_token(ld, where, v) < 0)
            return -EINVAL;
        break;
    default: /* K_STRING, K_TOKEN_FILE */
        if (check_text(ld, where, v) < 0)
            return -EINVAL;
        break;
    }
    replace_str(field, xstrdup(v));
    return 0;
}

static int parse_enum_kind(struct loader *ld, const char *where, const struct key_def *k,
                           const char *v, int *field)
{
    int n = k->kind == K_LOG_LEVEL ? log_level_parse(v) : log_format_parse(v);
    if (n < 0 && k->kind == K_LOG_LEVEL)
        return fail(ld, where, "unknown log level \"%s\" (error, warning, notice, info, debug)", v);
    if (n < 0)
        return fail(ld, where, "unknown log format \"%s\" (auto, plain, json, journal)", v);
    *field = n;
    return 0;
}

/* Parse `v` into the field of keys[ki]; remember where it came from. */
static int set_key(struct loader *ld, size_t ki, const char *v, const char *where, int from_env)
{
    const struct key_def *k = &keys[ki];
    void *field = (char *)ld->cfg + k->off;
    int rc;
    if (*v == '\0')
        return fail(ld, where, "empty value (comment the line out to get the default)");
    switch (k->kind) {
    case K_INT:
        rc = parse_int(ld, where, v, (long)k->min, (long)k->max, field);
        break;
    case K_DOUBLE:
        rc = parse_double(ld, where, v, k, field);
        break;
    case K_BOOL:
        rc = parse_bool(ld, where, v, field);
        break;
    case K_LOG_LEVEL:
    case K_LOG_FORMAT:
        rc = parse_enum_kind(ld, where, k, v, field);
        break;
    case K_JSON_OBJECT:
    case K_JSON_MODELS:
    case K_JSON_COSTS:
        rc = parse_json_key(ld, where, k, v, field);
        break;
    default:
        rc = parse_string_kind(ld, where, k, v, field);
        break;
    }
    if (rc == 0) {
        replace_str(&ld->origin[ki], xstrdup(where));
        ld->from_env[ki] = from_env;
    }
    return rc;
}

/* ---- [worker] and [orchestrator] ------------------------------------------- */

static int handle_fixed(struct loader *ld, const char *section, const char *name, const char *v,
                        const char *where)
{
    const struct key_def *k = key_find(section, name);
    if (k == NULL)
        return fail(ld, where, "unknown key in [%s] (see worker.ini.example)", section);
    size_t ki = (size_t)(k - keys);
    if (k->kind == K_TOKEN || k->kind == K_TOKEN_FILE) {
        size_t other = key_index(k->kind == K_TOKEN ? "token_file" : "token");
        if (ld->origin[other] != NULL)
            return fail(ld, where, "token and token_file are both set (%s); keep one",
                        ld->origin[other]);
    }
    return set_key(ld, ki, v, where, 0);
}

/* ---- [limits] ------------------------------------------------------------- */

static struct cfg_limit *limit_get(struct cfg *cfg, const char *type)
{
    for (size_t i = 0; i < cfg->nlimits; i++) {
        if (strcmp(cfg->limits[i].type, type) == 0)
            return &cfg->limits[i];
    }
    cfg->limits = xrealloc(cfg->limits, (cfg->nlimits + 1) * sizeof(*cfg->limits));
    struct cfg_limit *l = &cfg->limits[cfg->nlimits++];
    *l = (struct cfg_limit){.type = xstrdup(type), .max = 0, .timeout = 0};
    return l;
}

static int type_ok(const char *t, size_t n)
{
    static const char chars[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-";
    return n > 0 && n <= TYPE_MAX_LEN && strspn(t, chars) >= n;
}

/* "TYPE = N" or "TYPE.timeout = SECONDS". */
static int handle_limit(struct loader *ld, const char *name, const char *v, const char *where)
{
    static const struct key_def timeout_def = {
        .section = "limits", .name = "timeout", .kind = K_DOUBLE, .max = LIMIT_TIMEOUT_MAX};
    size_t n = strlen(name), sl = strlen(TIMEOUT_SUFFIX);
    int is_timeout = n >= sl && strcmp(name + n - sl, TIMEOUT_SUFFIX) == 0;
    size_t tl = is_timeout ? n - sl : n;
    if (!type_ok(name, tl))
        return fail(ld, where, "a task type must be 1..%d of [a-zA-Z0-9_.-]", TYPE_MAX_LEN);
    if (*v == '\0')
        return fail(ld, where, "empty value");
    int max = 0;
    double timeout = 0;
    if (is_timeout ? parse_double(ld, where, v, &timeout_def, &timeout) < 0
                   : parse_int(ld, where, v, 0, LIMIT_MAX, &max) < 0)
        return -EINVAL;
    char *type = xstrndup(name, tl);
    struct cfg_limit *l = limit_get(ld->cfg, type);
    free(type);
    if (is_timeout)
        l->timeout = timeout;
    else
        l->max = max;
    return 0;
}

/* ---- [capabilities] and [plugin.NAME] --------------------------------------- */

static int set_extra(struct loader *ld, const char *name, const char *v, const char *where)
{
    json_t *j = NULL;
    if (!str_is_ident(name))
        return fail(ld, where, "a capability name must match ^[a-zA-Z0-9_-]+$");
    if (*v == '\0')
        return fail(ld, where, "empty value");
    if (parse_extra(ld, where, v, &j) < 0)
        return -EINVAL;
    json_object_set_new(ld->cfg->extra, name, j);
    return 0;
}

static int handle_plugin(struct loader *ld, const char *plugin, const char *name, const char *v,
                         const char *where)
{
    struct cfg *cfg = ld->cfg;
    if (!str_is_ident(plugin))
        return fail(ld, where, "the plugin name in [plugin.%s] must match ^[a-zA-Z0-9_-]+$",
                    plugin);
    cfg->plugin_keys =
        xrealloc(cfg->plugin_keys, (cfg->nplugin_keys + 1) * sizeof(*cfg->plugin_keys));
    cfg->plugin_keys[cfg->nplugin_keys++] = (struct cfg_plugin_key){
        .plugin = xstrdup(plugin),
        .key = xstrdup(name),
        .value = xstrdup(v),
        .file = xstrdup(ld->path),
        .line = ld->lineno,
    };
    return 0;
}

/* ---- The INI file ------------------------------------------------------------ */

/* The reader given to inih: one whole line per call, counted; a line that does not
 * fit inih's buffer (num bytes with the newline and the NUL) stops the
 * parse instead of being split silently. */
static char *line_reader(char *str, int num, void *stream)
{
    struct loader *ld = stream;
    if (ld->failed)
        return NULL;
    errno = 0;
    ssize_t n = getline(&ld->buf, &ld->bufcap, ld->fp);
    if (n < 0) {
        if (ferror(ld->fp))
            ld->read_errno = errno ? errno : EIO;
        return NULL;
    }
    ld->lineno++;
    char where[PATH_MAX + 32];
    snprintf(where, sizeof(where), "%s:%d", ld->path, ld->lineno);
    size_t len = (size_t)n - (ld->buf[n - 1] == '\n');
    if (strlen(ld->buf) != (size_t)n) {
        fail(ld, where, "line contains a NUL byte");
        return NULL;
    }
    if (num < 2 || (size_t)n > (size_t)num - 1) {
        fail(ld, where, "line too long (%zu characters, at most %d fit)", len, num - 2);
        return NULL;
    }
    memcpy(str, ld->buf, (size_t)n + 1);
    ld->indented = str[0] == ' ' || str[0] == '\t';
    return str;
}

/* The key as messages name it: plain for [worker] and [orchestrator]. */
static char *key_where(const struct loader *ld, const char *section, const char *name)
{
    if (strcmp(section, "worker") == 0 || strcmp(section, "orchestrator") == 0)
        return xasprintf("%s:%d: %s", ld->path, ld->lineno, name);
    return xasprintf("%s:%d: %s.%s", ld->path, ld->lineno, section, name);
}

/* Refuse inih's continuation lines and keys set twice; then remember it. */
static int check_seen(struct loader *ld, const char *section, const char *name, const char *where)
{
    const struct seen *last = ld->nseen ? &ld->seen[ld->nseen - 1] : NULL;
    if (ld->indented && last != NULL && strcmp(last->section, section) == 0 &&
        strcmp(last->name, name) == 0)
        return fail(ld, where,
                    "indented line continues the value of line %d; multi-line values are "
                    "not supported (remove the leading blanks)",
                    last->line);
    for (size_t i = 0; i < ld->nseen; i++) {
        if (strcmp(ld->seen[i].section, section) == 0 && strcmp(ld->seen[i].name, name) == 0)
            return fail(ld, where, "duplicate key (first set on line %d)", ld->seen[i].line);
    }
    ld->seen = xrealloc(ld->seen, (ld->nseen + 1) * sizeof(*ld->seen));
    ld->seen[ld->nseen++] =
        (struct seen){.section = xstrdup(section), .name = xstrdup(name), .line = ld->lineno};
    return 0;
}

static int dispatch(struct loader *ld, const char *section, const char *name, const char *v,
                    const char *where)
{
    if (strcmp(section, "worker") == 0 || strcmp(section, "orchestrator") == 0)
        return handle_fixed(ld, section, name, v, where);
    if (strcmp(section, "limits") == 0)
        return handle_limit(ld, name, v, where);
    if (strcmp(section, "capabilities") == 0)
        return set_extra(ld, name, v, where);
    if (strncmp(section, PLUGIN_PREFIX, strlen(PLUGIN_PREFIX)) == 0)
        return handle_plugin(ld, section + strlen(PLUGIN_PREFIX), name, v, where);
    char sect_where[PATH_MAX + 300];
    snprintf(sect_where, sizeof(sect_where), "%s:%d: [%s]", ld->path, ld->lineno, section);
    if (*section == '\0')
        return fail(ld, sect_where, "key \"%s\" before any [section]", name);
    return fail(ld, sect_where,
                "unknown section (expected [worker], [orchestrator], [limits], "
                "[capabilities] or [plugin.NAME])");
}

static int key_handler(void *user, const char *section, const char *name, const char *value)
{
    struct loader *ld = user;
    if (ld->failed)
        return 0;
    if (*name == '\0') {
        char where[PATH_MAX + 32];
        snprintf(where, sizeof(where), "%s:%d", ld->path, ld->lineno);
        fail(ld, where, "syntax error (no key name before '=')");
        return 0;
    }
    char *where = key_where(ld, section, name);
    if (check_seen(ld, section, name, where) == 0)
        dispatch(ld, section, name, value, where);
    free(where);
    return !ld->failed;
}

static int load_file(struct loader *ld, const char *path)
{
    ld->path = path;
    ld->fp = fopen(path, "re");
    if (ld->fp == NULL) {
        int e = errno;
        fmt_err(ld->err, ld->errlen, "%s: cannot read: %s", path, strerror(e));
        return -e;
    }
    int rc = ini_parse_stream(line_reader, ld, key_handler, ld);
    fclose(ld->fp);
    ld->fp = NULL;
    if (ld->read_errno != 0) {
        fmt_err(ld->err, ld->errlen, "%s: cannot read: %s", path, strerror(ld->read_errno));
        return -ld->read_errno;
    }
    if (rc > 0 && (!ld->failed || rc < ld->err_line)) {
        fmt_err(ld->err, ld->errlen,
                "%s:%d: syntax error (expected \"key = value\", \"[section]\" or a comment)", path,
                rc);
        ld->failed = 1;
    } else if (rc < 0 && !ld->failed) {
        fail(ld, path, "cannot parse (inih error %d)", rc);
    }
    return ld->failed ? -EINVAL : 0;
}

/* ---- The environment ------------------------------------------------------- */

/* The environment wins over the file; a token from it replaces a token file
 * and the other way round, so only one source of the secret is in force. */
static int apply_env_one(struct loader *ld, const struct env_def *e, const char *v)
{
    char where[128];
    snprintf(where, sizeof(where), "environment: %s", e->var);
    char *val = e->first_of_list ? xstrndup(v, strcspn(v, ":")) : xstrdup(v);
    size_t ki = key_index(e->key);
    const struct key_def *k = &keys[ki];
    int rc = set_key(ld, ki, val, where, 1);
    free(val);
    if (rc == 0 && (k->kind == K_TOKEN || k->kind == K_TOKEN_FILE)) {
        size_t other = key_index(k->kind == K_TOKEN ? "token_file" : "token");
        free_and_null(*(char **)(void *)((char *)ld->cfg + keys[other].off));
        free_and_null(ld->origin[other]);
    }
    return rc;
}

static int apply_extra_env(struct loader *ld)
{
    extern char **environ;
    size_t pl = strlen(EXTRA_ENV_PREFIX);
    for (char **e = environ; e != NULL && *e != NULL && !ld->failed; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || strncmp(*e, EXTRA_ENV_PREFIX, pl) != 0 || eq[1] == '\0')
            continue;
        char *var = xstrndup(*e, (size_t)(eq - *e));
        char *name = xstrdup(var + pl);
        for (char *p = name; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        char *where = xasprintf("environment: %s", var);
        json_t *j = NULL;
        if (!str_is_ident(name))
            fail(ld, where, "the name after %s must match ^[a-zA-Z0-9_-]+$", EXTRA_ENV_PREFIX);
        else if (parse_extra(ld, where, eq + 1, &j) == 0)
            json_object_set_new(ld->cfg->extra, name, j);
        free(where);
        free(name);
        free(var);
    }
    return ld->failed ? -EINVAL : 0;
}

static int apply_env(struct loader *ld)
{
    for (size_t i = 0; i < ARRAY_LEN(envs); i++) {
        const char *v = getenv(envs[i].var);
        if (v == NULL || *v == '\0')
            continue;
        if (apply_env_one(ld, &envs[i], v) < 0)
            return -EINVAL;
    }
    return apply_extra_env(ld);
}

/* ---- Finishing ------------------------------------------------------------- */

static int read_token_file(struct loader *ld)
{
    struct cfg *cfg = ld->cfg;
    size_t len;
    const char *where = ld->origin[key_index("token_file")];
    char *t = read_file(cfg->token_file, TOKEN_FILE_MAX, &len);
    if (t == NULL)
        return fail(ld, where, "cannot read %s: %s", cfg->token_file, strerror(errno));
    if (len > 0 && t[len - 1] == '\n')
        t[--len] = '\0';
    if (len > 0 && t[len - 1] == '\r')
        t[--len] = '\0';
    int rc = 0;
    if (len == 0)
        rc = fail(ld, where, "%s is empty", cfg->token_file);
    else if (strlen(t) != len || has_control(t))
        rc = fail(ld, where,
                  "%s contains a control character (only one trailing newline is "
                  "stripped)",
                  cfg->token_file);
    if (rc < 0) {
        free(t);
        return rc;
    }
    replace_str(&cfg->token, t);
    return 0;
}

/* avtworkerd-<hostname>, with characters a worker id cannot hold as '-'. */
static char *default_worker_id(const char *hostname)
{
    char *id = xasprintf("avtworkerd-%s", hostname);
    for (char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            *p = '-';
    }
    return id;
}

static int finalize(struct loader *ld)
{
    struct cfg *cfg = ld->cfg;
    size_t ki_init = key_index("result_retry_initial_delay");
    size_t ki_max = key_index("retry_max_delay");
    if (cfg->worker_id == NULL)
        cfg->worker_id = default_worker_id(cfg->hostname);
    if (cfg->token_file != NULL && read_token_file(ld) < 0)
        return -EINVAL;
    if (cfg->result_retry_initial_delay > cfg->retry_max_delay) {
        const char *where = ld->origin[ki_init] ? ld->origin[ki_init] : ld->origin[ki_max];
        return fail(ld, where,
                    "result_retry_initial_delay (%g) is larger than "
                    "retry_max_delay (%g)",
                    cfg->result_retry_initial_delay, cfg->retry_max_delay);
    }
    return 0;
}

static char *default_hostname(void)
{
    char buf[256];
    if (gethostname(buf, sizeof(buf)) < 0 || buf[0] == '\0')
        return xstrdup("localhost");
    buf[sizeof(buf) - 1] = '\0';
    return xstrdup(buf);
}

static struct cfg *cfg_new_defaults(void)
{
    struct cfg *c = xcalloc(1, sizeof(*c));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->worker_type = xstrdup("generic-worker");
    c->max_concurrent_tasks = 10;
    c->cpu_cores = ncpu < 1 ? 1 : ncpu > 65536 ? 65536 : (int)ncpu;
    c->plugin_dir = xstrdup(AVT_PLUGINDIR);
    c->state_dir = xstrdup(STATE_DIR_DEFAULT);
    c->shutdown_timeout = 30;
    c->advertise_busy = 1;
    c->log_level = LOG_INFO;
    c->log_format = LOG_FORMAT_AUTO;
    c->hostname = default_hostname();
    c->installed_software = json_pack("{s:s}", "avtworkerd", AVT_VERSION);
    c->installed_models = json_array();
    c->cost_per_skill = json_object();
    c->extra = json_object();
    c->url = xstrdup(URL_DEFAULT);
    c->poll_timeout = 30;
    c->heartbeat_interval = 15;
    c->heartbeat_debounce = 0.1;
    c->websockets = 1;
    c->result_retry_initial_delay = 1.0;
    c->retry_max_delay = 60;
    c->probe_every = 4;
    if (c->installed_software == NULL || c->installed_models == NULL || c->cost_per_skill == NULL ||
        c->extra == NULL)
        fatalx("cfg: out of memory building the defaults");
    return c;
}

/* ---- Public API ------------------------------------------------------------ */

int cfg_load(const char *path, struct cfg **out, char *err, size_t errlen)
{
    struct loader ld = {.err = err, .errlen = errlen};
    int rc = 0;
    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    ld.cfg = cfg_new_defaults();
    if (path != NULL) {
        ld.cfg->path = xstrdup(path);
        rc = load_file(&ld, path);
    }
    if (rc == 0)
        rc = apply_env(&ld);
    if (rc == 0)
        rc = finalize(&ld);
    loader_finish(&ld);
    if (rc < 0) {
        cfg_destroy(ld.cfg);
        return rc;
    }
    *out = ld.cfg;
    return 0;
}

void cfg_destroy(struct cfg *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        void *field = (char *)cfg + keys[i].off;
        if (keys[i].kind == K_JSON_OBJECT || keys[i].kind == K_JSON_MODELS ||
            keys[i].kind == K_JSON_COSTS)
            json_decref(*(json_t **)field);
        else if (keys[i].kind != K_INT && keys[i].kind != K_DOUBLE && keys[i].kind != K_BOOL &&
                 keys[i].kind != K_LOG_LEVEL && keys[i].kind != K_LOG_FORMAT)
            free(*(char **)field);
    }
    json_decref(cfg->extra);
    for (size_t i = 0; i < cfg->nlimits; i++)
        free(cfg->limits[i].type);
    free(cfg->limits);
    for (size_t i = 0; i < cfg->nplugin_keys; i++) {
        struct cfg_plugin_key *k = &cfg->plugin_keys[i];
        free(k->plugin);
        free(k->key);
        free(k->value);
        free(k->file);
    }
    free(cfg->plugin_keys);
    free(cfg->path);
    free(cfg);
}

const struct cfg_limit *cfg_limit_find(const struct cfg *cfg, const char *type)
{
    for (size_t i = 0; i < cfg->nlimits; i++) {
        if (strcmp(cfg->limits[i].type, type) == 0)
            return &cfg->limits[i];
    }
    return NULL;
}

/* ---- cfg_dump -------------------------------------------------------------- */

/* Plain decimal when 15 digits read back as the same double, else 17. */
static void fmt_double(char *buf, size_t n, double v)
{
    snprintf(buf, n, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, n, "%.17g", v);
}

static void dump_json(FILE *fp, const char *name, const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    fprintf(fp, "%s = %s\n", name, s ? s : "null");
    free(s);
}

static void dump_key(const struct cfg *cfg, const struct key_def *k, FILE *fp)
{
    const void *field = (const char *)cfg + k->off;
    char num[64];
    switch (k->kind) {
    case K_INT:
        fprintf(fp, "%s = %d\n", k->name, *(const int *)field);
        return;
    case K_DOUBLE:
        fmt_double(num, sizeof(num), *(const double *)field);
        fprintf(fp, "%s = %s\n", k->name, num);
        return;
    case K_BOOL:
        fprintf(fp, "%s = %s\n", k->name, *(const int *)field ? "true" : "false");
        return;
    case K_LOG_LEVEL:
        fprintf(fp, "%s = %s\n", k->name, log_level_name(*(const int *)field));
        return;
    case K_LOG_FORMAT: {
        int f = *(const int *)field;
        fprintf(fp, "%s = %s\n", k->name,
                f >= 0 && (size_t)f < ARRAY_LEN(log_format_names) ? log_format_names[f] : "auto");
        return;
    }
    case K_JSON_OBJECT:
    case K_JSON_MODELS:
    case K_JSON_COSTS:
        dump_json(fp, k->name, *(const json_t *const *)field);
        return;
    default:
        break;
    }
    const char *s = *(const char *const *)field;
    if (s == NULL)
        fprintf(fp, "# %s = (not set)\n", k->name);
    else if (k->kind == K_TOKEN)
        fprintf(fp, "%s = ********\n", k->name);
    else
        fprintf(fp, "%s = %s\n", k->name, s);
}

static void dump_limits(const struct cfg *cfg, FILE *fp)
{
    char num[64];
    fprintf(fp, "\n[limits]\n");
    if (cfg->nlimits == 0)
        fprintf(fp, "# none: only max_concurrent_tasks applies\n");
    for (size_t i = 0; i < cfg->nlimits; i++) {
        const struct cfg_limit *l = &cfg->limits[i];
        fprintf(fp, "%s = %d\n", l->type, l->max);
        if (l->timeout > 0) {
            fmt_double(num, sizeof(num), l->timeout);
            fprintf(fp, "%s%s = %s\n", l->type, TIMEOUT_SUFFIX, num);
        }
    }
}

static void dump_capabilities(const struct cfg *cfg, FILE *fp)
{
    const char *name;
    json_t *v;
    fprintf(fp, "\n[capabilities]\n");
    json_object_foreach(cfg->extra, name, v)
    {
        if (json_is_string(v))
            fprintf(fp, "%s = %s\n", name, json_string_value(v));
        else
            dump_json(fp, name, v);
    }
}

/* Plugin keys are opaque here; a value whose key names a secret is masked
 * like the token, so --check-config output can be pasted into a ticket. */
static int key_is_secret(const char *key)
{
    static const char *const words[] = {"token", "secret", "password", "passwd", "credential"};
    for (size_t i = 0; i < ARRAY_LEN(words); i++) {
        if (strcasestr(key, words[i]) != NULL)
            return 1;
    }
    return 0;
}

static void dump_plugins(const struct cfg *cfg, FILE *fp)
{
    for (size_t i = 0; i < cfg->nplugin_keys; i++) {
        const char *plugin = cfg->plugin_keys[i].plugin;
        size_t j = 0;
        while (j < i && strcmp(cfg->plugin_keys[j].plugin, plugin) != 0)
            j++;
        if (j < i)
            continue; /* printed with its first key */
        fprintf(fp, "\n[plugin.%s]\n", plugin);
        for (j = i; j < cfg->nplugin_keys; j++) {
            const struct cfg_plugin_key *k = &cfg->plugin_keys[j];
            if (strcmp(k->plugin, plugin) == 0)
                fprintf(fp, "%s = %s\n", k->key, key_is_secret(k->key) ? "********" : k->value);
        }
    }
}

void cfg_dump(const struct cfg *cfg, FILE *fp)
{
    const char *section = NULL;
    fprintf(fp, "# avtworkerd %s effective configuration\n", AVT_VERSION);
    fprintf(fp, "# from: built-in defaults, %s, environment\n",
            cfg->path ? cfg->path : "(no file)");
    for (size_t i = 0; i < NKEYS; i++) {
        if (section == NULL || strcmp(section, keys[i].section) != 0) {
            section = keys[i].section;
            fprintf(fp, "%s[%s]\n", i ? "\n" : "", section);
        }
        dump_key(cfg, &keys[i], fp);
    }
    dump_limits(cfg, fp);
    dump_capabilities(cfg, fp);
    dump_plugins(cfg, fp);
}
