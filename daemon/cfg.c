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
#include "secfile.h"
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
    K_MULTI_MODE,  /* FAILOVER or ROUND_ROBIN (enum cfg_multi_mode) */
    K_PROTOCOL,    /* auto, 1.0b3 or 1.0b14 (enum cfg_protocol) */
    K_ACCESS,      /* auto, on or off (enum cfg_access_tokens) */
    K_LISTEN,      /* off | PORT | IPV4:PORT | [IPV6]:PORT; PORT alone is 127.0.0.1 */
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
    {"worker", "crash_limit", K_INT, FIELD(crash_limit), 1, 1000, 0},
    {"worker", "cancel_grace", K_DOUBLE, FIELD(cancel_grace), 0, 3600, 0},
    {"worker", "restart_on_stuck", K_BOOL, FIELD(restart_on_stuck), 0, 0, 0},
    {"worker", "batch_scheduling", K_BOOL, FIELD(batch_scheduling), 0, 0, 0},
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
    {"orchestrator", "max_task_bytes", K_INT, FIELD(max_task_bytes), 65536, 67108864, 0},
    {"orchestrator", "max_polls", K_INT, FIELD(max_polls), 1, 64, 0},
    {"orchestrator", "compressed_answers", K_BOOL, FIELD(compressed_answers), 0, 0, 0},
    {"orchestrator", "multi_mode", K_MULTI_MODE, FIELD(multi_mode), 0, 0, 0},
    {"orchestrator", "protocol", K_PROTOCOL, FIELD(protocol), 0, 0, 0},
    {"orchestrator", "signing_key", K_TOKEN, FIELD(signing_key), 0, 0, 0},
    {"orchestrator", "signing_key_file", K_TOKEN_FILE, FIELD(signing_key_file), 0, 0, 0},
    {"orchestrator", "access_tokens", K_ACCESS, FIELD(access_tokens), 0, 0, 0},
    {"admin", "listen", K_LISTEN, FIELD(admin_listen), 0, 0, 0},
    {"tls", "ca_file", K_PATH, FIELD(tls_ca_file), 0, 0, 0},
    {"tls", "cert_file", K_PATH, FIELD(tls_cert_file), 0, 0, 0},
    {"tls", "key_file", K_PATH, FIELD(tls_key_file), 0, 0, 0},
    {"tls", "insecure_skip_verify", K_BOOL, FIELD(tls_insecure), 0, 0, 0},
    {"spool", "max_bytes", K_DOUBLE, FIELD(spool_max_bytes), 0, 1e15, 0},
    {"spool", "max_files", K_INT, FIELD(spool_max_files), 0, 100000000, 0},
    {"spool", "max_age", K_DOUBLE, FIELD(spool_max_age), 0, 31536000, 0},
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
    {"MULTI_ORCHESTRATOR_MODE", "multi_mode", 0},
    {"RXON_PROTOCOL", "protocol", 0},
    {"WORKER_SIGNING_KEY_FILE", "signing_key_file", 0},
    {"WORKER_SIGNING_KEY", "signing_key", 0},
    {"WORKER_ACCESS_TOKENS", "access_tokens", 0},
    {"TLS_CA_PATH", "ca_file", 0},
    {"TLS_CERT_PATH", "cert_file", 0},
    {"TLS_KEY_PATH", "key_file", 0},
    {"TLS_INSECURE", "insecure_skip_verify", 0},
    {"ADMIN_PORT", "listen", 0},
};

#define EXTRA_ENV_PREFIX "WORKER_EXTRA_"

static const char *const log_format_names[] = {"auto", "plain", "json", "journal"};
static const char *const multi_mode_names[] = {"FAILOVER", "ROUND_ROBIN"};
static const char *const protocol_names[] = {"auto", "1.0b3", "1.0b14"};
static const char *const access_names[] = {"auto", "on", "off"};

#define ORCHS_ENV "ORCHESTRATORS_CONFIG"
#define ORCH_PREFIX "orchestrator."
#define ORCHS_MAX 64
#define ORCH_PRIORITY_MAX 1000000
#define ORCH_WEIGHT_MAX 1000

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
    char **orch_where; /* per cfg->orchs entry: where it was defined */
};

static int fail(struct loader *ld, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *env_get(const char *var);

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
    for (size_t i = 0; ld->orch_where != NULL && i < ld->cfg->norchs; i++)
        free(ld->orch_where[i]);
    free(ld->orch_where);
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

/* The other key of a secret's pair: a token and its file (token /
 * token_file, signing_key / signing_key_file) exclude each other. */
static size_t secret_twin(const struct key_def *k)
{
    char name[64];
    size_t n = strlen(k->name);
    if (k->kind == K_TOKEN_FILE && n > 5)
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), k->name);
    else
        snprintf(name, sizeof(name), "%s_file", k->name);
    return key_index(name);
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

/* 1 when v may carry user:password@: an '@' before the path (after "://",
 * or anywhere before a query when there is no "://"). Checked before any
 * message that would echo v, whatever else is wrong with it. */
static int url_has_userinfo(const char *v)
{
    const char *a = strstr(v, "://");
    size_t n = a != NULL ? strcspn(a + 3, "/?#") : strcspn(v, "?#");
    return memchr(a != NULL ? a + 3 : v, '@', n) != NULL;
}

/* http(s)://host[:port][/path]; trailing '/' removed; no user:password@,
 * query or fragment. */
static int parse_url(struct loader *ld, const char *where, const char *v, char **out)
{
    size_t scheme;
    if (url_has_userinfo(v)) /* the URL itself is a secret then */
        return fail(ld, where,
                    "credentials in the URL are not supported (they would appear in "
                    "logs and metrics); put the token in token or token_file");
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

/* [admin] listen: NULL for off/0, else a normalized "ADDRESS:PORT". */
static int parse_listen(struct loader *ld, const char *where, const char *v, char **out)
{
    static const char *const off[] = {"off", "0", "no", "false"};
    const char *colon = strrchr(v, ':');
    const char *port_s = colon != NULL ? colon + 1 : v;
    char host[64], *end;
    unsigned char a[sizeof(struct in6_addr)];
    for (size_t i = 0; i < ARRAY_LEN(off); i++) {
        if (strcasecmp(v, off[i]) == 0) {
            *out = NULL;
            return 0;
        }
    }
    errno = 0;
    long port = isdigit((unsigned char)*port_s) ? strtol(port_s, &end, 10) : -1;
    if (port < 1 || port > 65535 || errno != 0 || *end != '\0')
        return fail(ld, where,
                    "\"%s\": expected off, PORT, ADDRESS:PORT or [IPV6]:PORT "
                    "with PORT 1..65535",
                    v);
    size_t hl = colon != NULL ? (size_t)(colon - v) : 0;
    int bracketed = hl >= 2 && v[0] == '[' && v[hl - 1] == ']';
    if (!bracketed && hl > 0 && (v[0] == '[' || v[hl - 1] == ']'))
        return fail(ld, where, "\"%s\": unbalanced brackets; expected [IPV6]:PORT", v);
    if (bracketed) {
        v++;
        hl -= 2;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : 0), v);
    if (colon == NULL || strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
        return fail(ld, where, "\"%.*s\" is not an IPv4 or IPv6 address", (int)hl, v);
    /* "::1:9464" is also the address ::1:9464: the port must be unambiguous. */
    if (!bracketed && strchr(host, ':') != NULL)
        return fail(ld, where,
                    "\"%s\" is ambiguous: an IPv6 address goes in brackets, as in "
                    "[%s]:%ld",
                    v, host, port);
    *out = strchr(host, ':') != NULL ? xasprintf("[%s]:%ld", host, port)
                                     : xasprintf("%s:%ld", host, port);
    return 0;
}

/* ---- JSON values ------------------------------------------------------------ */

static int parse_json(struct loader *ld, const char *where, const char *v, size_t flags,
                      json_t **out)
{
    json_error_t jerr;
    json_t *j = json_loads(v, JSON_REJECT_DUPLICATES | flags, &jerr);
    if (j == NULL) {
        /* jansson quotes the input ("':' expected near '\"tok\"'"), which
         * may be a token of ORCHESTRATORS_CONFIG: the column must do. */
        char *near = strstr(jerr.text, " near '");
        if (near != NULL)
            *near = '\0';
        return fail(ld, where, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    }
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
    case K_LISTEN:
        if (parse_listen(ld, where, v, &url) < 0)
            return -EINVAL;
        replace_str(field, url);
        return 0;
    default: /* K_STRING, K_TOKEN_FILE */
        if (check_text(ld, where, v) < 0)
            return -EINVAL;
        break;
    }
    replace_str(field, xstrdup(v));
    return 0;
}

/* The value names of an enumerated kind (K_MULTI_MODE, K_PROTOCOL,
 * K_ACCESS); *n is set to their number. NULL for the other kinds. */
static const char *const *enum_names(enum kind kind, size_t *n)
{
    switch (kind) {
    case K_MULTI_MODE:
        *n = ARRAY_LEN(multi_mode_names);
        return multi_mode_names;
    case K_PROTOCOL:
        *n = ARRAY_LEN(protocol_names);
        return protocol_names;
    case K_ACCESS:
        *n = ARRAY_LEN(access_names);
        return access_names;
    default:
        *n = 0;
        return NULL;
    }
}

/* v as an index of names, case-insensitively; -1 when unknown. */
static int enum_value(const char *const *names, size_t n, const char *v)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(v, names[i]) == 0)
            return (int)i;
    }
    return -1;
}

static int parse_enum_kind(struct loader *ld, const char *where, const struct key_def *k,
                           const char *v, int *field)
{
    size_t n_names;
    const char *const *names = enum_names(k->kind, &n_names);
    if (names != NULL && k->kind != K_MULTI_MODE) {
        int i = enum_value(names, n_names, v);
        if (i < 0)
            return fail(ld, where, "unknown value \"%s\" (%s, %s or %s)", v, names[0], names[1],
                        names[2]);
        *field = i;
        return 0;
    }
    if (k->kind == K_MULTI_MODE) {
        for (size_t i = 0; i < ARRAY_LEN(multi_mode_names); i++) {
            if (strcasecmp(v, multi_mode_names[i]) == 0) {
                *field = (int)i;
                return 0;
            }
        }
        return fail(ld, where, "unknown mode \"%s\" (FAILOVER or ROUND_ROBIN)", v);
    }
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
    case K_MULTI_MODE:
    case K_PROTOCOL:
    case K_ACCESS:
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
        size_t other = secret_twin(k);
        if (ld->origin[other] != NULL)
            return fail(ld, where, "%s and %s are both set (%s); keep one",
                        k->kind == K_TOKEN ? k->name : keys[other].name,
                        k->kind == K_TOKEN ? keys[other].name : k->name, ld->origin[other]);
    }
    return set_key(ld, ki, v, where, 0);
}

/* ---- [orchestrator.NAME] and ORCHESTRATORS_CONFIG -------------------------- */

static void orchs_free(struct cfg *cfg)
{
    for (size_t i = 0; i < cfg->norchs; i++) {
        free(cfg->orchs[i].name);
        free(cfg->orchs[i].url);
        free(cfg->orchs[i].token);
        free(cfg->orchs[i].token_file);
    }
    free_and_null(cfg->orchs);
    cfg->norchs = 0;
}

/* Forget every orchestrator entry (and where each was defined). */
static void orchs_clear(struct loader *ld)
{
    for (size_t i = 0; ld->orch_where != NULL && i < ld->cfg->norchs; i++)
        free(ld->orch_where[i]);
    free_and_null(ld->orch_where);
    orchs_free(ld->cfg);
}

/* A new entry with the defaults of ORCHESTRATORS_CONFIG (4.1). */
static struct cfg_orch *orch_append(struct loader *ld, const char *name, const char *where)
{
    struct cfg *cfg = ld->cfg;
    cfg->orchs = xrealloc(cfg->orchs, (cfg->norchs + 1) * sizeof(*cfg->orchs));
    ld->orch_where = xrealloc(ld->orch_where, (cfg->norchs + 1) * sizeof(*ld->orch_where));
    ld->orch_where[cfg->norchs] = xstrdup(where);
    struct cfg_orch *e = &cfg->orchs[cfg->norchs++];
    *e = (struct cfg_orch){.name = xstrdup(name), .priority = 10, .weight = 1, .protocol = -1};
    return e;
}

static struct cfg_orch *orch_find(struct cfg *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->norchs; i++) {
        if (strcmp(cfg->orchs[i].name, name) == 0)
            return &cfg->orchs[i];
    }
    return NULL;
}

/* An entry's protocol from its text; the error names the choices. */
static int parse_protocol(struct loader *ld, const char *where, const char *v, int *out)
{
    int i = enum_value(protocol_names, ARRAY_LEN(protocol_names), v);
    if (i < 0)
        return fail(ld, where, "unknown protocol \"%s\" (auto, 1.0b3 or 1.0b14)", v);
    *out = i;
    return 0;
}

/* One key of [orchestrator.NAME]: url, priority, weight, token, token_file,
 * protocol. */
static int handle_orch_section(struct loader *ld, const char *name, const char *key, const char *v,
                               const char *where)
{
    if (!str_is_ident(name))
        return fail(ld, where, "the name in [orchestrator.%s] must match ^[a-zA-Z0-9_-]+$", name);
    if (ld->cfg->norchs >= ORCHS_MAX && orch_find(ld->cfg, name) == NULL)
        return fail(ld, where, "at most %d orchestrators", ORCHS_MAX);
    if (*v == '\0')
        return fail(ld, where, "empty value (comment the line out to get the default)");
    struct cfg_orch *e = orch_find(ld->cfg, name);
    if (e == NULL) {
        char *sect = xasprintf("%s:%d: [orchestrator.%s]", ld->path, ld->lineno, name);
        e = orch_append(ld, name, sect);
        free(sect);
    }
    if (strcmp(key, "url") == 0)
        return parse_url(ld, where, v, &e->url);
    if (strcmp(key, "priority") == 0)
        return parse_int(ld, where, v, 0, ORCH_PRIORITY_MAX, &e->priority);
    if (strcmp(key, "weight") == 0)
        return parse_int(ld, where, v, 1, ORCH_WEIGHT_MAX, &e->weight);
    if (strcmp(key, "protocol") == 0)
        return parse_protocol(ld, where, v, &e->protocol);
    if (strcmp(key, "token") == 0 || strcmp(key, "token_file") == 0) {
        int is_file = key[5] == '_';
        if ((is_file ? e->token : e->token_file) != NULL)
            return fail(ld, where, "token and token_file are both set; keep one");
        if (is_file ? v[0] != '/' || check_text(ld, where, v) < 0 : parse_token(ld, where, v) < 0)
            return ld->failed ? -EINVAL : fail(ld, where, "\"%s\" must be an absolute path", v);
        replace_str(is_file ? &e->token_file : &e->token, xstrdup(v));
        return 0;
    }
    return fail(ld, where, "unknown key (url, priority, weight, token, token_file or protocol)");
}

static int json_int_field(struct loader *ld, const char *where, json_t *o, const char *key,
                          long min, long max, int *out)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return fail(ld, where, "\"%s\" must be an integer in %ld..%ld", key, min, max);
    *out = (int)json_integer_value(v);
    return 0;
}

/* One element of ORCHESTRATORS_CONFIG: {url, priority?, weight?, token?, name?}. */
static int parse_orch_json(struct loader *ld, const char *where, size_t i, json_t *o)
{
    static const char *const known[] = {"url", "priority", "weight", "token", "name", "protocol"};
    const char *key;
    json_t *v;
    if (!json_is_object(o))
        return fail(ld, where, "element %zu is not an object", i);
    json_object_foreach(o, key, v)
    {
        size_t k = 0;
        while (k < ARRAY_LEN(known) && strcmp(known[k], key) != 0)
            k++;
        if (k == ARRAY_LEN(known))
            return fail(ld, where,
                        "element %zu: unknown key \"%s\" (url, priority, weight, "
                        "token, name, protocol)",
                        i, key);
    }
    const char *url = json_string_value(json_object_get(o, "url"));
    const char *name = json_string_value(json_object_get(o, "name"));
    json_t *token = json_object_get(o, "token");
    if (url == NULL)
        return fail(ld, where, "element %zu: \"url\" must be a string", i);
    if (json_object_get(o, "name") != NULL && (name == NULL || !str_is_ident(name)))
        return fail(ld, where, "element %zu: \"name\" must match ^[a-zA-Z0-9_-]+$", i);
    if (token != NULL && (!json_is_string(token) || json_string_length(token) == 0))
        return fail(ld, where, "element %zu: \"token\" must be a non-empty string", i);
    json_t *proto = json_object_get(o, "protocol");
    if (proto != NULL && !json_is_string(proto))
        return fail(ld, where, "element %zu: \"protocol\" must be a string", i);
    char dflt[32];
    snprintf(dflt, sizeof(dflt), "orch%zu", i + 1);
    if (orch_find(ld->cfg, name ? name : dflt) != NULL)
        return fail(ld, where, "element %zu: the name \"%s\" is used twice", i, name ? name : dflt);
    struct cfg_orch *e = orch_append(ld, name ? name : dflt, where);
    if (token != NULL && parse_token(ld, where, json_string_value(token)) == 0)
        e->token = xstrdup(json_string_value(token));
    if (proto != NULL && parse_protocol(ld, where, json_string_value(proto), &e->protocol) < 0)
        return -EINVAL;
    if (ld->failed || parse_url(ld, where, url, &e->url) < 0 ||
        json_int_field(ld, where, o, "priority", 0, ORCH_PRIORITY_MAX, &e->priority) < 0 ||
        json_int_field(ld, where, o, "weight", 1, ORCH_WEIGHT_MAX, &e->weight) < 0)
        return -EINVAL;
    return 0;
}

/* ORCHESTRATORS_CONFIG replaces the [orchestrator.NAME] sections. */
static int apply_orchs_env(struct loader *ld)
{
    const char *v = env_get(ORCHS_ENV);
    const char *where = "environment: " ORCHS_ENV;
    json_t *j = NULL;
    if (v == NULL || *v == '\0')
        return 0;
    if (parse_json(ld, where, v, 0, &j) < 0)
        return -EINVAL;
    int rc = 0;
    if (!json_is_array(j) || json_array_size(j) == 0 || json_array_size(j) > ORCHS_MAX)
        rc = fail(ld, where,
                  "must be a JSON array of 1..%d {\"url\": ..., \"priority\": ..., "
                  "\"weight\": ..., \"token\": ...} objects",
                  ORCHS_MAX);
    orchs_clear(ld);
    for (size_t i = 0; rc == 0 && i < json_array_size(j); i++)
        rc = parse_orch_json(ld, where, i, json_array_get(j, i));
    json_decref(j);
    ld->cfg->orchs_listed = 1;
    return rc;
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
    if (strcmp(section, "worker") == 0 || strcmp(section, "orchestrator") == 0 ||
        strcmp(section, "admin") == 0 || strcmp(section, "tls") == 0)
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
    if (strcmp(section, "worker") == 0 || strcmp(section, "orchestrator") == 0 ||
        strcmp(section, "admin") == 0 || strcmp(section, "tls") == 0 ||
        strcmp(section, "spool") == 0)
        return handle_fixed(ld, section, name, v, where);
    if (strncmp(section, ORCH_PREFIX, strlen(ORCH_PREFIX)) == 0)
        return handle_orch_section(ld, section + strlen(ORCH_PREFIX), name, v, where);
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
                "unknown section (expected [worker], [orchestrator], [orchestrator.NAME], "
                "[tls], [admin], [spool], [limits], [capabilities] or [plugin.NAME])");
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

/* ---- Secrets in the environment ------------------------------------------- */

/* A variable of the environment that holds a secret: one that sets a
 * K_TOKEN key (tokens, the signing key), and ORCHESTRATORS_CONFIG, whose
 * entries may carry tokens. Derived from the tables, so that a secret key
 * added later is scrubbed too. */
static int env_is_secret(const char *var)
{
    if (strcmp(var, ORCHS_ENV) == 0)
        return 1;
    for (size_t i = 0; i < ARRAY_LEN(envs); i++) {
        if (strcmp(envs[i].var, var) == 0)
            return keys[key_index(envs[i].key)].kind == K_TOKEN;
    }
    return 0;
}

/* What cfg_env_scrub() took: the value of each secret variable that was
 * set (NULL when it was not), for every later cfg_load() (reloads).
 * Process lifetime. */
static struct {
    int done;
    const char *var[ARRAY_LEN(envs) + 1];
    char *value[ARRAY_LEN(envs) + 1];
    size_t n;
} scrubbed;

/* Keep var's value and wipe it from the environment: every "VAR=value"
 * string's value is overwritten in place (the strings of the initial
 * environment are what /proc/PID/environ shows), then the variable is
 * unset so that nothing later getenv()s it or hands it to a child. */
static void scrub_one(const char *var)
{
    extern char **environ;
    size_t n = strlen(var);
    char *value = NULL;
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        if (strncmp(*e, var, n) != 0 || (*e)[n] != '=')
            continue;
        char *v = *e + n + 1;
        if (value == NULL)
            value = xstrdup(v); /* the first, as getenv() would */
        explicit_bzero(v, strlen(v));
    }
    unsetenv(var);
    scrubbed.var[scrubbed.n] = var;
    scrubbed.value[scrubbed.n++] = value;
}

void cfg_env_scrub(void)
{
    if (scrubbed.done)
        return;
    scrubbed.done = 1;
    for (size_t i = 0; i < ARRAY_LEN(envs); i++) {
        if (env_is_secret(envs[i].var))
            scrub_one(envs[i].var);
    }
    scrub_one(ORCHS_ENV);
}

/* getenv(), except for a secret variable once cfg_env_scrub() took it. */
static const char *env_get(const char *var)
{
    if (!scrubbed.done || !env_is_secret(var))
        return getenv(var);
    for (size_t i = 0; i < scrubbed.n; i++) {
        if (strcmp(scrubbed.var[i], var) == 0)
            return scrubbed.value[i];
    }
    return NULL;
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
        size_t other = secret_twin(k);
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
        const char *v = env_get(envs[i].var);
        if (v == NULL || *v == '\0')
            continue;
        if (apply_env_one(ld, &envs[i], v) < 0)
            return -EINVAL;
    }
    if (apply_orchs_env(ld) < 0)
        return -EINVAL;
    return apply_extra_env(ld);
}

/* ---- Finishing ------------------------------------------------------------- */

/* A secret from a file: private like a TLS key (secfile_check_private:
 * owner only, owned by the daemon's user or root); one trailing newline
 * (and CR) stripped; empty or control characters refused. The secret itself
 * never appears in a message. */
static int read_secret_file(struct loader *ld, const char *path, const char *where, char **out)
{
    size_t len;
    char err[AVT_ERRLEN];
    if (secfile_check_private(path, err, sizeof(err)) < 0)
        return fail(ld, where, "%s", err);
    char *t = read_file(path, TOKEN_FILE_MAX, &len);
    if (t == NULL)
        return fail(ld, where, "cannot read %s: %s", path, strerror(errno));
    if (len > 0 && t[len - 1] == '\n')
        t[--len] = '\0';
    if (len > 0 && t[len - 1] == '\r')
        t[--len] = '\0';
    int rc = 0;
    if (len == 0)
        rc = fail(ld, where, "%s is empty", path);
    else if (strlen(t) != len || has_control(t))
        rc = fail(ld, where,
                  "%s contains a control character (only one trailing newline is "
                  "stripped)",
                  path);
    if (rc < 0) {
        free(t);
        return rc;
    }
    replace_str(out, t);
    return 0;
}

static int read_token_files(struct loader *ld)
{
    struct cfg *cfg = ld->cfg;
    if (cfg->token_file != NULL &&
        read_secret_file(ld, cfg->token_file, ld->origin[key_index("token_file")], &cfg->token) < 0)
        return -EINVAL;
    if (cfg->signing_key_file != NULL &&
        read_secret_file(ld, cfg->signing_key_file, ld->origin[key_index("signing_key_file")],
                         &cfg->signing_key) < 0)
        return -EINVAL;
    return 0;
}

static int orch_cmp(const void *a, const void *b)
{
    const struct cfg_orch *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority < y->priority ? -1 : 1;
    return strcmp(x->url, y->url);
}

/* The list in force: ORCHESTRATORS_CONFIG, else ORCHESTRATOR_URL, else the
 * file's [orchestrator.NAME] sections, else its url (or the default). */
static int finalize_orchs(struct loader *ld)
{
    struct cfg *cfg = ld->cfg;
    size_t ki_url = key_index("url");
    int env_list = env_get(ORCHS_ENV) != NULL && *env_get(ORCHS_ENV) != '\0';
    if (!env_list && cfg->norchs > 0 && ld->from_env[ki_url])
        orchs_clear(ld); /* the environment wins over the file */
    if (!env_list && cfg->norchs > 0 && ld->origin[ki_url] != NULL)
        return fail(ld, ld->origin[ki_url],
                    "url and [orchestrator.NAME] sections are both set (%s); keep one",
                    ld->orch_where[0]);
    cfg->orchs_listed = cfg->norchs > 0;
    if (cfg->norchs == 0) {
        struct cfg_orch *e = orch_append(ld, "default", "url");
        e->url = xstrdup(cfg->url);
        e->priority = 1;
    }
    for (size_t i = 0; i < cfg->norchs; i++) {
        struct cfg_orch *e = &cfg->orchs[i];
        if (e->url == NULL)
            return fail(ld, ld->orch_where[i], "no url");
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->orchs[j].url, e->url) == 0)
                return fail(ld, ld->orch_where[i], "%s is listed twice", e->url);
        }
        if (e->token_file != NULL &&
            read_secret_file(ld, e->token_file, ld->orch_where[i], &e->token) < 0)
            return -EINVAL;
        if (e->protocol < 0)
            e->protocol = cfg->protocol;
    }
    /* orch_where is indexed like the entries: no errors after sorting. */
    qsort(cfg->orchs, cfg->norchs, sizeof(*cfg->orchs), orch_cmp);
    replace_str(&cfg->url, xstrdup(cfg->orchs[0].url));
    return 0;
}

/* The client certificate and key come as a pair; the key is private. */
static int finalize_tls(struct loader *ld)
{
    struct cfg *cfg = ld->cfg;
    char err[AVT_ERRLEN];
    const char *w_cert = ld->origin[key_index("cert_file")];
    const char *w_key = ld->origin[key_index("key_file")];
    const char *w_ca = ld->origin[key_index("ca_file")];
    if ((cfg->tls_cert_file == NULL) != (cfg->tls_key_file == NULL))
        return fail(ld, w_cert ? w_cert : w_key,
                    "a client certificate needs both cert_file and key_file "
                    "(TLS_CERT_PATH and TLS_KEY_PATH)");
    if (cfg->tls_ca_file != NULL && secfile_check_readable(cfg->tls_ca_file, err, sizeof(err)) < 0)
        return fail(ld, w_ca, "%s", err);
    if (cfg->tls_cert_file != NULL &&
        secfile_check_readable(cfg->tls_cert_file, err, sizeof(err)) < 0)
        return fail(ld, w_cert, "%s", err);
    if (cfg->tls_key_file != NULL && secfile_check_private(cfg->tls_key_file, err, sizeof(err)) < 0)
        return fail(ld, w_key, "%s", err);
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
    if (read_token_files(ld) < 0)
        return -EINVAL;
    if (finalize_orchs(ld) < 0 || finalize_tls(ld) < 0)
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

const char *cfg_default_plugin_dir(void)
{
    return AVT_PLUGINDIR;
}

const char *cfg_orch_without_credential(const struct cfg *cfg)
{
    if (cfg->token != NULL || cfg->tls_cert_file != NULL)
        return NULL;
    for (size_t i = 0; i < cfg->norchs; i++) {
        if (cfg->orchs[i].token == NULL)
            return cfg->orchs[i].url;
    }
    return NULL;
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
    c->advertise_busy = 0;
    c->crash_limit = 3;
    c->spool_max_bytes = 256.0 * 1024 * 1024;
    c->spool_max_files = 100000;
    c->spool_max_age = 7 * 86400;
    c->cancel_grace = 5;
    c->restart_on_stuck = 1;
    c->batch_scheduling = 1;
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
    c->heartbeat_debounce = 1;
    c->websockets = 1;
    c->result_retry_initial_delay = 1.0;
    c->retry_max_delay = 60;
    c->probe_every = 4;
    c->max_task_bytes = 16 * 1024 * 1024;
    c->max_polls = 8;
    if (c->installed_software == NULL || c->installed_models == NULL || c->cost_per_skill == NULL ||
        c->extra == NULL)
        fatalx("cfg: out of memory building the defaults");
    return c;
}

/* ---- Public API ------------------------------------------------------------ */

const char *cfg_protocol_name(int protocol)
{
    return protocol >= 0 && (size_t)protocol < ARRAY_LEN(protocol_names) ? protocol_names[protocol]
                                                                         : "auto";
}

/* The host of an http:// url (lower case, without port, brackets or a
 * final dot) in host[n]; 0, or -1 for another scheme or a host too long. */
static int http_host(const char *url, char *host, size_t n)
{
    if (strncasecmp(url, "http://", 7) != 0)
        return -1;
    const char *h = url + 7;
    size_t len = strcspn(h, "/?#");
    const char *close = h[0] == '[' ? memchr(h, ']', len) : NULL;
    if (close != NULL) {
        h++;
        len = (size_t)(close - h);
    } else {
        const char *colon = memchr(h, ':', len);
        len = colon != NULL ? (size_t)(colon - h) : len;
    }
    if (len > 0 && h[len - 1] == '.')
        len--;
    if (len >= n)
        return -1;
    for (size_t i = 0; i < len; i++)
        host[i] = (char)tolower((unsigned char)h[i]);
    host[len] = '\0';
    return 0;
}

int cfg_url_is_cleartext_remote(const char *url)
{
    char host[256];
    struct in_addr a4;
    struct in6_addr a6;
    size_t n;
    if (strncasecmp(url, "http://", 7) != 0)
        return 0;
    if (http_host(url, host, sizeof(host)) < 0)
        return 1;
    n = strlen(host);
    if (strcmp(host, "localhost") == 0 || (n > 10 && strcmp(host + n - 10, ".localhost") == 0))
        return 0; /* RFC 6761 6.3: never leaves the machine (curl resolves it itself) */
    if (inet_aton(host, &a4) != 0) /* also 127.1 and 2130706433, as the resolver reads them */
        return (ntohl(a4.s_addr) >> 24) != 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return !(IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127));
    return 1; /* a name: where it resolves to is not known here */
}

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
                 keys[i].kind != K_LOG_LEVEL && keys[i].kind != K_LOG_FORMAT &&
                 keys[i].kind != K_MULTI_MODE && keys[i].kind != K_PROTOCOL &&
                 keys[i].kind != K_ACCESS)
            free(*(char **)field);
    }
    orchs_free(cfg);
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
    case K_MULTI_MODE:
    case K_PROTOCOL:
    case K_ACCESS: {
        size_t n;
        const char *const *names = enum_names(k->kind, &n);
        int i = *(const int *)field;
        fprintf(fp, "%s = %s\n", k->name, i >= 0 && (size_t)i < n ? names[i] : names[0]);
        return;
    }
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

/* The [orchestrator.NAME] list, when one is in force; tokens masked. */
static void dump_orchs(const struct cfg *cfg, FILE *fp)
{
    for (size_t i = 0; cfg->orchs_listed && i < cfg->norchs; i++) {
        const struct cfg_orch *e = &cfg->orchs[i];
        fprintf(fp, "\n[orchestrator.%s]\nurl = %s\npriority = %d\nweight = %d\nprotocol = %s\n",
                e->name, e->url, e->priority, e->weight, protocol_names[e->protocol]);
        if (e->token_file != NULL)
            fprintf(fp, "token_file = %s\n", e->token_file);
        else if (e->token != NULL)
            fprintf(fp, "token = ********\n");
    }
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
        if (keys[i].off == FIELD(url) && cfg->orchs_listed)
            fprintf(fp, "# url: not used, the [orchestrator.NAME] sections below are\n");
        else
            dump_key(cfg, &keys[i], fp);
    }
    dump_orchs(cfg, fp);
    dump_limits(cfg, fp);
    dump_capabilities(cfg, fp);
    dump_plugins(cfg, fp);
}
