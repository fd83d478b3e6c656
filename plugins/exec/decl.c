/*
 * decl.c - one task type's declaration file: a JSON object, checked
 * completely when the plugin starts so that a typo stops the daemon (exit
 * 78) with the file and member named, instead of failing tasks later. The
 * format is in README.md ("exec: run a command per task") and
 * avt_plugin(3).
 */
#include "exec.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_STDOUT_MAX (1024 * 1024)
#define DEFAULT_STDERR_TAIL 4096
#define DEFAULT_KILL_GRACE 2.0
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

static const char *const known_keys[] = {"argv",
                                         "stdin",
                                         "result",
                                         "result_key",
                                         "stdout_max_bytes",
                                         "stderr_tail_bytes",
                                         "progress",
                                         "exit_codes",
                                         "env",
                                         "env_set",
                                         "rlimits",
                                         "nice",
                                         "kill_grace_seconds",
                                         "description",
                                         "persistent",
                                         NULL};

static const char *const default_env[] = {"PATH", "LANG", "LC_ALL", "TZ", NULL};

static int bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* The first member of object o whose name is not in keys (NULL-terminated),
 * or NULL. */
static const char *unknown_member(json_t *o, const char *const *keys)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        size_t i = 0;
        while (keys[i] != NULL && strcmp(keys[i], k) != 0)
            i++;
        if (keys[i] == NULL)
            return k;
    }
    return NULL;
}

static int is_param_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* A template argument: every "{params." starts a placeholder that must be
 * "{params.NAME}" with NAME of [A-Za-z0-9_-]+. */
static int check_template(const char *arg, size_t i, char *err, size_t errlen)
{
    for (const char *p = strstr(arg, "{params."); p != NULL; p = strstr(p, "{params.")) {
        const char *name = p + 8, *end = name;
        while (is_param_char(*end))
            end++;
        if (end == name || *end != '}')
            return bad(err, errlen,
                       "argv[%zu] \"%s\": a placeholder is {params.NAME} with NAME of "
                       "A-Z a-z 0-9 _ -",
                       i, arg);
        p = end + 1;
    }
    return 0;
}

/* Find argv[0] in PATH (or take it as a path) and check it can be run. */
static char *resolve(const char *prog, const char *path, char *err, size_t errlen)
{
    if (strchr(prog, '/') != NULL) {
        if (prog[0] != '/') {
            bad(err, errlen, "argv[0] \"%s\": use an absolute path or a bare name", prog);
            return NULL;
        }
        if (access(prog, X_OK) < 0) {
            bad(err, errlen, "argv[0] \"%s\": cannot execute: %s", prog, strerror(errno));
            return NULL;
        }
        return strdup(prog);
    }
    for (const char *dir = path; dir != NULL && *dir != '\0';) {
        const char *colon = strchr(dir, ':');
        size_t n = colon != NULL ? (size_t)(colon - dir) : strlen(dir);
        char full[PATH_MAX];
        if (n > 0 &&
            snprintf(full, sizeof(full), "%.*s/%s", (int)n, dir, prog) < (int)sizeof(full) &&
            access(full, X_OK) == 0)
            return strdup(full);
        dir = colon != NULL ? colon + 1 : NULL;
    }
    bad(err, errlen, "argv[0] \"%s\": not found in PATH (%s); install it or give its full path",
        prog, path);
    return NULL;
}

static int load_argv(struct exec_type *t, json_t *argv, char *err, size_t errlen)
{
    size_t i;
    json_t *v;
    if (!json_is_array(argv) || json_array_size(argv) == 0)
        return bad(err, errlen, "argv: required, an array of strings (the program first)");
    t->argc = json_array_size(argv);
    t->argv = calloc(t->argc + 1, sizeof(char *));
    if (t->argv == NULL)
        return -ENOMEM;
    json_array_foreach(argv, i, v)
    {
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
            return bad(err, errlen, "argv[%zu]: must be a string (without NUL)", i);
        if ((t->argv[i] = strdup(json_string_value(v))) == NULL)
            return -ENOMEM;
        if (check_template(t->argv[i], i, err, errlen) < 0)
            return -EINVAL;
    }
    if (t->argv[0][0] == '\0' || strchr(t->argv[0], '{') != NULL)
        return bad(err, errlen, "argv[0]: the program is fixed: no placeholder, not empty");
    return 0;
}

/* A whole number member in [lo, hi]; absent leaves *out alone. */
static int get_long(json_t *o, const char *key, long lo, long hi, long *out, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return bad(err, errlen, "%s: must be a whole number from %ld to %ld", key, lo, hi);
    *out = (long)json_integer_value(v);
    return 0;
}

static int get_number(json_t *o, const char *key, double lo, double hi, double *out, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 0;
    if (!json_is_number(v) || !(json_number_value(v) > lo) || json_number_value(v) > hi)
        return bad(err, errlen, "%s: must be a number above %g, at most %g", key, lo, hi);
    *out = json_number_value(v);
    return 0;
}

static int load_result(struct exec_type *t, json_t *o, char *err, size_t errlen)
{
    json_t *res = json_object_get(o, "result"), *key = json_object_get(o, "result_key");
    const char *r = json_is_string(res) ? json_string_value(res) : res == NULL ? "json" : "";
    if (strcmp(r, "json") == 0)
        t->result = EXEC_RESULT_JSON;
    else if (strcmp(r, "text") == 0)
        t->result = EXEC_RESULT_TEXT;
    else if (strcmp(r, "none") == 0)
        t->result = EXEC_RESULT_NONE;
    else
        return bad(err, errlen, "result: \"json\" (default), \"text\" or \"none\"");
    if (key != NULL && (!json_is_string(key) || json_string_length(key) == 0))
        return bad(err, errlen, "result_key: a non-empty string");
    if (key != NULL && t->result != EXEC_RESULT_TEXT)
        return bad(err, errlen, "result_key: only with \"result\": \"text\"");
    t->result_key = strdup(key != NULL ? json_string_value(key) : "output");
    json_t *in = json_object_get(o, "stdin");
    if (in != NULL && !(json_is_string(in) && (strcmp(json_string_value(in), "params") == 0 ||
                                               strcmp(json_string_value(in), "none") == 0)))
        return bad(err, errlen, "stdin: \"params\" (the params as JSON) or \"none\" (default)");
    t->stdin_params = in != NULL && strcmp(json_string_value(in), "params") == 0;
    long out_max = DEFAULT_STDOUT_MAX, tail = DEFAULT_STDERR_TAIL;
    if (get_long(o, "stdout_max_bytes", 1, 1L << 30, &out_max, err, errlen) < 0 ||
        get_long(o, "stderr_tail_bytes", 0, 1L << 20, &tail, err, errlen) < 0)
        return -EINVAL;
    t->stdout_max = (size_t)out_max;
    t->stderr_tail = (size_t)tail;
    return t->result_key != NULL ? 0 : -ENOMEM;
}

static int load_source(struct exec_type *t, json_t *p, char *err, size_t errlen)
{
    json_t *src = json_object_get(p, "source");
    const char *s = json_is_string(src) ? json_string_value(src) : src == NULL ? "stdout" : "";
    long fd = -1;
    if (get_long(p, "fd", 3, 9, &fd, err, errlen) < 0)
        return bad(err, errlen, "progress.fd: a file descriptor from 3 to 9");
    if (strcmp(s, "stdout") == 0)
        t->psource = EXEC_PROGRESS_STDOUT;
    else if (strcmp(s, "stderr") == 0)
        t->psource = EXEC_PROGRESS_STDERR;
    else if (strcmp(s, "fd") == 0 && fd > 0)
        t->psource = EXEC_PROGRESS_FD;
    else
        return bad(err, errlen,
                   "progress.source: \"stdout\" (default), \"stderr\" or \"fd\" "
                   "(with \"fd\": 3..9)");
    if (fd > 0 && t->psource != EXEC_PROGRESS_FD)
        return bad(err, errlen, "progress.fd: only with \"source\": \"fd\"");
    t->pfd = (int)fd;
    return 0;
}

static int load_pattern(struct exec_type *t, json_t *p, char *err, size_t errlen)
{
    json_t *pat = json_object_get(p, "pattern"), *tp = json_object_get(p, "total_param");
    if (pat == NULL)
        return 0;
    if (!json_is_string(pat))
        return bad(err, errlen, "progress.pattern: a string (POSIX extended regex)");
    int rc = regcomp(&t->pattern, json_string_value(pat), REG_EXTENDED);
    if (rc != 0) {
        char why[200];
        regerror(rc, &t->pattern, why, sizeof(why));
        return bad(err, errlen, "progress.pattern: %s", why);
    }
    t->has_pattern = 1;
    if (t->pattern.re_nsub != 1)
        return bad(err, errlen, "progress.pattern: needs exactly one capture group (the value)");
    if (get_number(p, "scale", 0, 1e300, &t->scale, err, errlen) < 0 ||
        get_number(p, "total", 0, 1e300, &t->total, err, errlen) < 0)
        return bad(err, errlen, "progress.scale and progress.total: numbers above 0");
    if (tp != NULL && (!json_is_string(tp) || json_string_length(tp) == 0))
        return bad(err, errlen, "progress.total_param: the name of a param");
    if (tp != NULL && (t->total_param = strdup(json_string_value(tp))) == NULL)
        return -ENOMEM;
    return 0;
}

static int load_progress(struct exec_type *t, json_t *p, char *err, size_t errlen)
{
    static const char *const keys[] = {"source", "fd",          "pattern", "scale",
                                       "total",  "total_param", NULL};
    const char *k;
    t->scale = 1;
    t->total = 100;
    if (p == NULL)
        return 0;
    if (!json_is_object(p))
        return bad(err, errlen, "progress: an object");
    if ((k = unknown_member(p, keys)) != NULL)
        return bad(err, errlen,
                   "progress.%s: unknown member (known: source, fd, pattern, "
                   "scale, total, total_param)",
                   k);
    if (load_source(t, p, err, errlen) < 0)
        return -EINVAL;
    if (load_pattern(t, p, err, errlen) < 0)
        return -EINVAL;
    if (!t->has_pattern && (json_object_get(p, "scale") || json_object_get(p, "total") ||
                            json_object_get(p, "total_param")))
        return bad(err, errlen, "progress: scale, total and total_param need a pattern");
    return 0;
}

static const char *error_code(const char *s)
{
    static const char *const codes[] = {AVT_TRANSIENT_ERROR, AVT_PERMANENT_ERROR,
                                        AVT_INVALID_INPUT_ERROR, NULL};
    for (size_t i = 0; codes[i] != NULL; i++)
        if (strcmp(codes[i], s) == 0)
            return codes[i];
    return NULL;
}

/* Defaults: sysexits(3) EX_DATAERR and EX_NOINPUT are the input's fault,
 * EX_UNAVAILABLE, EX_IOERR and EX_TEMPFAIL may pass; anything else is
 * PERMANENT_ERROR. Then the declared entries, "default" first. */
static int load_exit_codes(struct exec_type *t, json_t *o, char *err, size_t errlen)
{
    json_t *m = json_object_get(o, "exit_codes"), *def = NULL, *v;
    const char *k;
    for (int i = 1; i < 256; i++)
        t->exit_codes[i] = AVT_PERMANENT_ERROR;
    t->exit_codes[65] = t->exit_codes[66] = AVT_INVALID_INPUT_ERROR;
    t->exit_codes[69] = t->exit_codes[74] = t->exit_codes[75] = AVT_TRANSIENT_ERROR;
    if (m == NULL)
        return 0;
    if (!json_is_object(m))
        return bad(err, errlen, "exit_codes: an object {\"STATUS\" or \"default\": CODE}");
    if ((def = json_object_get(m, "default")) != NULL) {
        if (!json_is_string(def) || error_code(json_string_value(def)) == NULL)
            goto bad_code;
        for (int i = 1; i < 256; i++)
            t->exit_codes[i] = error_code(json_string_value(def));
    }
    json_object_foreach(m, k, v)
    {
        char *end;
        long n = strtol(k, &end, 10);
        if (strcmp(k, "default") == 0)
            continue;
        if (end == k || *end != '\0' || n < 1 || n > 255)
            return bad(err, errlen, "exit_codes: \"%s\" is not an exit status from 1 to 255", k);
        if (!json_is_string(v) || error_code(json_string_value(v)) == NULL)
            goto bad_code;
        t->exit_codes[n] = error_code(json_string_value(v));
    }
    return 0;
bad_code:
    return bad(err, errlen,
               "exit_codes: each value is TRANSIENT_ERROR, PERMANENT_ERROR or "
               "INVALID_INPUT_ERROR");
}

static int env_add(struct exec_type *t, size_t *n, const char *name, const char *value)
{
    char **e = realloc(t->envp, (*n + 2) * sizeof(char *));
    if (e == NULL)
        return -ENOMEM;
    t->envp = e;
    size_t len = strlen(name) + strlen(value) + 2;
    if ((e[*n] = malloc(len)) == NULL)
        return -ENOMEM;
    snprintf(e[*n], len, "%s=%s", name, value);
    e[++*n] = NULL;
    return 0;
}

static const char *env_get(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return env[i] + n + 1;
    return NULL;
}

static int env_name_ok(const char *s)
{
    return s[0] != '\0' && strchr(s, '=') == NULL && strcmp(s, "TMPDIR") != 0;
}

/* The child's environment: the allowlisted names the daemon has, then the
 * fixed values of env_set. TMPDIR is the task's directory (added per task). */
static int load_env(struct exec_type *t, json_t *o, char *const *env, char *err, size_t errlen)
{
    json_t *allow = json_object_get(o, "env"), *set = json_object_get(o, "env_set"), *v;
    size_t n = 0, i;
    const char *k;
    if ((t->envp = calloc(1, sizeof(char *))) == NULL)
        return -ENOMEM;
    if (allow != NULL && !json_is_array(allow))
        return bad(err, errlen, "env: an array of variable names to pass from the daemon");
    if (set != NULL && !json_is_object(set))
        return bad(err, errlen, "env_set: an object {NAME: value}");
    for (i = 0; allow == NULL && default_env[i] != NULL; i++) {
        const char *val = env_get(env, default_env[i]);
        if (val != NULL && env_add(t, &n, default_env[i], val) < 0)
            return -ENOMEM;
    }
    json_array_foreach(allow, i, v)
    {
        if (!json_is_string(v) || !env_name_ok(json_string_value(v)))
            return bad(err, errlen, "env[%zu]: a variable name (not TMPDIR)", i);
        const char *val = env_get(env, json_string_value(v));
        if (val != NULL && env_add(t, &n, json_string_value(v), val) < 0)
            return -ENOMEM;
    }
    json_object_foreach(set, k, v)
    {
        if (!env_name_ok(k) || !json_is_string(v))
            return bad(err, errlen, "env_set.%s: a variable name (not TMPDIR) and a string", k);
        if (env_add(t, &n, k, json_string_value(v)) < 0)
            return -ENOMEM;
    }
    return 0;
}

static int load_limits(struct exec_type *t, json_t *o, char *err, size_t errlen)
{
    json_t *rl = json_object_get(o, "rlimits"), *v;
    const char *k;
    long nice = 0;
    t->rl_cpu = t->rl_as_mb = t->rl_nofile = -1;
    t->kill_grace = DEFAULT_KILL_GRACE;
    if (rl != NULL && !json_is_object(rl))
        return bad(err, errlen, "rlimits: an object {cpu_seconds, address_space_mb, open_files}");
    json_object_foreach(rl, k, v)
    {
        if (strcmp(k, "cpu_seconds") != 0 && strcmp(k, "address_space_mb") != 0 &&
            strcmp(k, "open_files") != 0)
            return bad(err, errlen,
                       "rlimits.%s: unknown (known: cpu_seconds, address_space_mb, "
                       "open_files)",
                       k);
    }
    if (get_long(rl, "cpu_seconds", 1, 1L << 30, &t->rl_cpu, err, errlen) < 0 ||
        get_long(rl, "address_space_mb", 1, 1L << 30, &t->rl_as_mb, err, errlen) < 0 ||
        get_long(rl, "open_files", 16, 1L << 20, &t->rl_nofile, err, errlen) < 0)
        return -EINVAL;
    t->has_nice = json_object_get(o, "nice") != NULL;
    if (get_long(o, "nice", 0, 19, &nice, err, errlen) < 0)
        return -EINVAL;
    t->nice = (int)nice;
    return get_number(o, "kill_grace_seconds", 0, 3600, &t->kill_grace, err, errlen);
}

/* Members that describe a command per task; a persistent type speaks the
 * line protocol instead. */
static const char *const per_task_keys[] = {
    "stdin", "result", "result_key", "stdout_max_bytes", "progress", "exit_codes", NULL};

static int load_persistent(struct exec_type *t, json_t *o, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "children",       "max_tasks_per_child",         "max_rss_mb", "ready_timeout_seconds",
        "max_line_bytes", "restart_backoff_max_seconds", NULL};
    json_t *p = json_object_get(o, "persistent");
    const char *k;
    if (p == NULL)
        return 0;
    if (!json_is_object(p))
        return bad(err, errlen, "persistent: an object (see avtworkerd-warm(7))");
    if ((k = unknown_member(p, keys)) != NULL)
        return bad(err, errlen,
                   "persistent.%s: unknown member (known: children, max_tasks_per_child, "
                   "max_rss_mb, ready_timeout_seconds, max_line_bytes, "
                   "restart_backoff_max_seconds)",
                   k);
    for (size_t i = 0; per_task_keys[i] != NULL; i++)
        if (json_object_get(o, per_task_keys[i]) != NULL)
            return bad(err, errlen,
                       "%s: does not apply to a persistent type (its children speak the "
                       "line protocol of avtworkerd-warm(7))",
                       per_task_keys[i]);
    for (size_t i = 1; i < t->argc; i++)
        if (strstr(t->argv[i], "{params.") != NULL)
            return bad(err, errlen,
                       "argv[%zu]: no {params.NAME} in a persistent type (its children get "
                       "the params of each task on stdin)",
                       i);
    struct exec_persistent *ps = calloc(1, sizeof(*ps));
    if (ps == NULL)
        return -ENOMEM;
    t->persistent = ps;
    *ps = (struct exec_persistent){
        .children = 1, .ready_timeout = 60, .max_line = 1L << 20, .backoff_max = 30};
    char why[200];
    if (get_long(p, "children", 1, 64, &ps->children, why, sizeof(why)) < 0 ||
        get_long(p, "max_tasks_per_child", 0, 1L << 30, &ps->max_tasks, why, sizeof(why)) < 0 ||
        get_long(p, "max_rss_mb", 0, 1L << 30, &ps->max_rss_mb, why, sizeof(why)) < 0 ||
        get_long(p, "max_line_bytes", 256, 1L << 30, &ps->max_line, why, sizeof(why)) < 0 ||
        get_number(p, "ready_timeout_seconds", 0, 86400, &ps->ready_timeout, why, sizeof(why)) <
            0 ||
        get_number(p, "restart_backoff_max_seconds", 0, 3600, &ps->backoff_max, why, sizeof(why)) <
            0)
        return bad(err, errlen, "persistent.%s", why);
    return 0;
}

static int check_keys(json_t *o, char *err, size_t errlen)
{
    const char *k = unknown_member(o, known_keys);
    if (k != NULL)
        return bad(err, errlen, "unknown member \"%s\" (see avt_plugin(3), EXEC)", k);
    return 0;
}

static int load_all(struct exec_type *t, json_t *o, char *const *env, char *err, size_t errlen)
{
    int rc = check_keys(o, err, errlen);
    if (rc == 0)
        rc = load_argv(t, json_object_get(o, "argv"), err, errlen);
    if (rc == 0)
        rc = load_result(t, o, err, errlen);
    if (rc == 0)
        rc = load_progress(t, json_object_get(o, "progress"), err, errlen);
    if (rc == 0 && t->psource == EXEC_PROGRESS_STDOUT && t->result == EXEC_RESULT_TEXT)
        rc = bad(err, errlen,
                 "progress on stdout with \"result\": \"text\": progress lines "
                 "would be cut out of the text; use stderr or an fd");
    if (rc == 0)
        rc = load_exit_codes(t, o, err, errlen);
    if (rc == 0)
        rc = load_env(t, o, env, err, errlen);
    if (rc == 0)
        rc = load_limits(t, o, err, errlen);
    if (rc == 0)
        rc = load_persistent(t, o, err, errlen);
    if (rc == 0) {
        const char *path = env_get(t->envp, "PATH");
        t->path = resolve(t->argv[0], path != NULL ? path : DEFAULT_PATH, err, errlen);
        rc = t->path != NULL ? 0 : -EINVAL;
    }
    return rc;
}

struct exec_type *decl_load(const char *file, const char *name, char *const *env, char *err,
                            size_t errlen)
{
    json_error_t jerr;
    char why[EXEC_ERRLEN] = "out of memory";
    json_t *o = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    struct exec_type *t = calloc(1, sizeof(*t));
    int rc = -ENOMEM;
    if (o == NULL) {
        snprintf(err, errlen, "%s:%d: %s", file, jerr.line, jerr.text);
        free(t);
        return NULL;
    }
    if (t != NULL && (t->name = strdup(name)) != NULL)
        rc = json_is_object(o) ? load_all(t, o, env, why, sizeof(why))
                               : bad(why, sizeof(why), "must be a JSON object");
    json_decref(o);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", file, why);
        decl_free(t);
        return NULL;
    }
    return t;
}

void decl_free(struct exec_type *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; t->argv != NULL && t->argv[i] != NULL; i++)
        free(t->argv[i]);
    for (size_t i = 0; t->envp != NULL && t->envp[i] != NULL; i++)
        free(t->envp[i]);
    if (t->has_pattern)
        regfree(&t->pattern);
    free(t->argv);
    free(t->envp);
    free(t->path);
    free(t->result_key);
    free(t->total_param);
    free(t->persistent);
    free(t->name);
    free(t);
}
