/*
 * exec.c - run a command per task, for task types the operator declares:
 * one JSON file per type in `types_dir` ([plugin.exec] of worker.ini), the
 * type named after the file (transcode.json declares "transcode"). The
 * format, the progress protocol and the exit status mapping are in
 * README.md ("exec") and avt_plugin(3) (EXEC).
 *
 * A task: its argv is the declared template with every {params.NAME}
 * replaced by that param's whole value (never split, never seen by a
 * shell; a missing or non-scalar param is INVALID_INPUT_ERROR); the command
 * runs in a directory of its own (created under work_dir, removed
 * afterwards) with the declared environment, limits and nice level (run.c);
 * its stdout becomes the result (a JSON object, or text under a key), its
 * exit status the outcome (declared mapping; death by a signal is
 * TRANSIENT_ERROR), the tail of its stderr goes into a failure's message
 * and the log.
 *
 * [plugin.exec] keys: types_dir (required), work_dir (default $TMPDIR, or
 * /tmp). The declarations are read by start(): a reload (SIGHUP) reads them
 * again. Handlers share nothing but the declarations, which nothing changes
 * once start() returned.
 */
#include "exec.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_TYPES 256
#define TYPE_NAME_MAX 128

struct exec_state {
    const struct avt_host *host;
    char *types_dir;
    char *work_dir;
    struct exec_type **types;
    size_t ntypes;
    const char **names;       /* NULL-terminated, what types() returns */
    struct warm_pool **pools; /* of each type, NULL unless persistent */
};

static int exec_init(const struct avt_host *host, void **state)
{
    struct exec_state *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->host = host;
    *state = s;
    return 0;
}

static int set_str(char **dst, const char *value, const char *key, char *err, size_t errlen)
{
    if (value[0] != '/') {
        snprintf(err, errlen, "%s must be an absolute directory path, not \"%s\"", key, value);
        return -EINVAL;
    }
    free(*dst);
    *dst = strdup(value);
    return *dst != NULL ? 0 : -ENOMEM;
}

static int exec_configure(void *state, const char *key, const char *value, char *err, size_t errlen)
{
    struct exec_state *s = state;
    if (strcmp(key, "types_dir") == 0)
        return set_str(&s->types_dir, value, key, err, errlen);
    if (strcmp(key, "work_dir") == 0)
        return set_str(&s->work_dir, value, key, err, errlen);
    snprintf(err, errlen, "unknown key '%s' (exec knows types_dir, work_dir)", key);
    return -EINVAL;
}

/* ---- start(): the declarations ------------------------------------------ */

/* A declaration runs commands: like a plugin, it must not be writable by
 * anyone but root or the daemon's user. */
static int check_owner(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    if ((st.st_uid != 0 && st.st_uid != geteuid()) || (st.st_mode & S_IWOTH) ||
        ((st.st_mode & S_IWGRP) && st.st_gid != 0 && st.st_gid != getegid())) {
        snprintf(err, errlen,
                 "%s: writable by others (mode %04o, owner uid %u): refusing commands anyone "
                 "can change; fix with chmod go-w or chown root:",
                 path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
        return -EPERM;
    }
    return 0;
}

static int is_decl(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 5 && strcmp(d->d_name + n - 5, ".json") == 0;
}

static int type_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= TYPE_NAME_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") == n;
}

static int load_one(struct exec_state *s, const char *file, char *err, size_t errlen)
{
    char path[PATH_MAX], name[TYPE_NAME_MAX + 8];
    snprintf(name, sizeof(name), "%.*s", (int)(strlen(file) - 5), file);
    if (!type_name_ok(name)) {
        snprintf(err, errlen,
                 "%s/%s: \"%s\" is not a task type name (1 to %d of a-z A-Z 0-9 _ . "
                 ": -)",
                 s->types_dir, file, name, TYPE_NAME_MAX);
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "%s/%s", s->types_dir, file);
    int rc = check_owner(path, err, errlen);
    if (rc < 0)
        return rc;
    struct exec_type *t = decl_load(path, name, environ, err, errlen);
    if (t == NULL)
        return -EINVAL;
    s->types[s->ntypes] = t;
    s->names[s->ntypes++] = t->name;
    return 0;
}

static int load_types(struct exec_state *s, char *err, size_t errlen)
{
    struct dirent **list = NULL;
    int rc = check_owner(s->types_dir, err, errlen), n = 0;
    if (rc == 0 && (n = scandir(s->types_dir, &list, is_decl, alphasort)) < 0) {
        snprintf(err, errlen, "types_dir %s: %s", s->types_dir, strerror(errno));
        return -errno;
    }
    if (rc == 0 && (n == 0 || n > MAX_TYPES)) {
        snprintf(err, errlen, "types_dir %s: %s (one NAME.json file per task type)", s->types_dir,
                 n == 0 ? "no *.json declaration" : "more than 256 declarations");
        rc = -EINVAL;
    }
    if (rc == 0) {
        s->types = calloc((size_t)n, sizeof(*s->types));
        s->names = calloc((size_t)n + 1, sizeof(*s->names));
        if (s->types == NULL || s->names == NULL)
            rc = -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (rc == 0)
            rc = load_one(s, list[i]->d_name, err, errlen);
        free(list[i]);
    }
    free(list);
    return rc;
}

/*
 * rlimits and nice are set by system calls the service's own filter may
 * forbid (systemd/avtworkerd.service denies @resources: setrlimit,
 * prlimit64, setpriority fail with EPERM). Every task of such a type would
 * fail, so try them here, with values that change nothing, and refuse to
 * start with the fix instead.
 */
static int probe_limits(const struct exec_state *s, char *err, size_t errlen)
{
    const struct exec_type *rl = NULL, *nice = NULL;
    struct rlimit cur;
    for (size_t i = 0; i < s->ntypes; i++) {
        const struct exec_type *t = s->types[i];
        if (rl == NULL && (t->rl_cpu >= 0 || t->rl_as_mb >= 0 || t->rl_nofile >= 0))
            rl = t;
        if (nice == NULL && t->has_nice)
            nice = t;
    }
    const struct exec_type *bad = NULL;
    const char *what = NULL, *calls = NULL;
    if (rl != NULL && getrlimit(RLIMIT_NOFILE, &cur) == 0 && setrlimit(RLIMIT_NOFILE, &cur) < 0) {
        bad = rl;
        what = "rlimits, but setrlimit()";
        calls = "setrlimit prlimit64";
    }
    errno = 0;
    int prio = nice != NULL ? getpriority(PRIO_PROCESS, 0) : 0;
    if (bad == NULL && nice != NULL && errno == 0 && setpriority(PRIO_PROCESS, 0, prio) < 0) {
        bad = nice;
        what = "nice, but setpriority()";
        calls = "setpriority";
    }
    if (bad == NULL)
        return 0;
    snprintf(err, errlen,
             "type %s declares %s fails here: %s (a systemd SystemCallFilter= without "
             "@resources? allow it with a drop-in: SystemCallFilter=%s)",
             bad->name, what, strerror(errno), calls);
    return -EPERM;
}

static int exec_start(void *state, char *err, size_t errlen)
{
    struct exec_state *s = state;
    struct stat st;
    if (s->types_dir == NULL) {
        /* Installed with the other plugins but not set up: no types. */
        s->names = calloc(1, sizeof(*s->names));
        s->host->log(s->host, NULL, AVT_LOG_INFO,
                     "exec: no types_dir in [plugin.exec]: no task types to run");
        return s->names != NULL ? 0 : -ENOMEM;
    }
    if (s->work_dir == NULL) {
        const char *tmp = getenv("TMPDIR");
        s->work_dir = strdup(tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
        if (s->work_dir == NULL)
            return -ENOMEM;
    }
    if (stat(s->work_dir, &st) < 0 || !S_ISDIR(st.st_mode) || access(s->work_dir, W_OK) < 0) {
        snprintf(err, errlen, "work_dir %s: not a directory the daemon can write in", s->work_dir);
        return -EINVAL;
    }
    int rc = load_types(s, err, errlen);
    if (rc == 0)
        rc = probe_limits(s, err, errlen);
    if (rc == 0 && (s->pools = calloc(s->ntypes + 1, sizeof(*s->pools))) == NULL)
        rc = -ENOMEM;
    /* Persistent types: their children are ready before types() names
     * them (the daemon advertises a type only after start()). */
    for (size_t i = 0; rc == 0 && i < s->ntypes; i++) {
        if (s->types[i]->persistent == NULL)
            continue;
        s->pools[i] = warm_start(s->types[i], s->host, s->work_dir, err, errlen);
        rc = s->pools[i] != NULL ? 0 : -EINVAL;
    }
    return rc;
}

static const char *const *exec_types(void *state)
{
    return ((struct exec_state *)state)->names;
}

static void exec_shutdown(void *state)
{
    struct exec_state *s = state;
    for (size_t i = 0; s->pools != NULL && i < s->ntypes; i++)
        warm_stop(s->pools[i]);
    free(s->pools);
    for (size_t i = 0; i < s->ntypes; i++)
        decl_free(s->types[i]);
    free(s->types);
    free(s->names);
    free(s->types_dir);
    free(s->work_dir);
    free(s);
}

/* ---- A task ------------------------------------------------------------- */

/* A scalar param as argument text; NULL with the reason in why. */
static char *scalar_text(json_t *v, char *why, size_t whylen)
{
    char num[64];
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v)) {
            snprintf(why, whylen, "contains a NUL character");
            return NULL;
        }
        return strdup(json_string_value(v));
    }
    if (json_is_integer(v))
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
    else if (json_is_boolean(v))
        snprintf(num, sizeof(num), "%s", json_is_true(v) ? "true" : "false");
    else {
        snprintf(why, whylen, "is %s, not a string, number or boolean",
                 json_is_null(v)     ? "null"
                 : json_is_object(v) ? "an object"
                                     : "an array");
        return NULL;
    }
    return strdup(num);
}

struct sbuf {
    char *p;
    size_t len, cap;
};

static int sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* One template argument with its placeholders replaced; NULL and a task
 * failure (INVALID_INPUT_ERROR, or out of memory) otherwise. */
static char *expand(struct avt_task *task, const char *tmpl, size_t i)
{
    struct sbuf b = {0};
    const char *p = tmpl, *ph;
    char why[128];
    int rc = sbuf_add(&b, "", 0);
    while (rc == 0 && (ph = strstr(p, "{params.")) != NULL) {
        const char *end = strchr(ph, '}'); /* there is one: checked at load */
        int nlen = (int)(end - ph - 8);
        json_t *v = json_object_getn(task->params, ph + 8, (size_t)nlen);
        char *text = v != NULL ? scalar_text(v, why, sizeof(why)) : NULL;
        if (text == NULL) {
            avt_fail(task, AVT_INVALID_INPUT_ERROR, "param '%.*s' %s (argv[%zu] of %s needs it)",
                     nlen, ph + 8, v == NULL ? "is missing" : why, i, task->type);
            free(b.p);
            return NULL;
        }
        rc = sbuf_add(&b, p, (size_t)(ph - p));
        if (rc == 0)
            rc = sbuf_add(&b, text, strlen(text));
        free(text);
        p = end + 1;
    }
    if (rc == 0)
        rc = sbuf_add(&b, p, strlen(p));
    if (rc != 0) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory building argv");
        free(b.p);
        return NULL;
    }
    return b.p;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

static char **build_argv(const struct exec_type *ty, struct avt_task *task)
{
    char **argv = calloc(ty->argc + 1, sizeof(char *));
    if (argv == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory building argv");
        return NULL;
    }
    for (size_t i = 0; i < ty->argc; i++) {
        argv[i] = expand(task, ty->argv[i], i);
        if (argv[i] == NULL) {
            free_strv(argv);
            return NULL;
        }
    }
    return argv;
}

/* The total progress is measured against: the declared constant, or the
 * param total_param (a number or a numeric string above 0). */
static int progress_total(const struct exec_type *ty, struct avt_task *task, double *total)
{
    *total = ty->total;
    if (ty->total_param == NULL)
        return 0;
    json_t *v = json_object_get(task->params, ty->total_param);
    char *end = NULL;
    if (json_is_number(v))
        *total = json_number_value(v);
    else if (json_is_string(v))
        *total = strtod(json_string_value(v), &end);
    if ((!json_is_number(v) && !json_is_string(v)) ||
        (end != NULL && (end == json_string_value(v) || *end != '\0')) || !(*total > 0) ||
        !isfinite(*total)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "param '%s' must be a number above 0 (the progress total of %s)", ty->total_param,
                 task->type);
        return -EINVAL;
    }
    return 0;
}

char **exec_env(const struct exec_type *ty, const char *workdir)
{
    size_t n = 0;
    while (ty->envp[n] != NULL)
        n++;
    char **env = calloc(n + 2, sizeof(char *));
    size_t len = strlen(workdir) + 8;
    if (env == NULL || (env[n] = malloc(len)) == NULL) {
        free(env);
        return NULL;
    }
    memcpy(env, ty->envp, n * sizeof(char *));
    snprintf(env[n], len, "TMPDIR=%s", workdir);
    return env;
}

/* What exec_env() made: the type's strings are borrowed, only the last
 * one (TMPDIR) is ours. */
void exec_env_free(char **env)
{
    size_t n = 0;
    if (env == NULL)
        return;
    while (env[n] != NULL)
        n++;
    if (n > 0)
        free(env[n - 1]);
    free(env);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

int exec_rmtree(const char *dir)
{
    return nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 ? -1 : 0;
}

static void remove_workdir(struct avt_task *task, const char *dir)
{
    if (exec_rmtree(dir) != 0)
        avt_log_warn(task, "could not remove the task directory %s: %s", dir, strerror(errno));
}

static void fail_tail(struct exec_run *r, const char *code, const char *what)
{
    char *tail = run_stderr_tail(r);
    const char *t = tail != NULL ? tail : "";
    avt_log_warn(r->task, "%s %s%s%s", r->ty->argv[0], what, t[0] ? "; stderr: " : "", t);
    avt_fail(r->task, code, "%s %s%s%s", r->ty->argv[0], what, t[0] ? "; stderr: " : "", t);
    free(tail);
}

static void succeed(struct exec_run *r)
{
    json_error_t jerr;
    json_t *data = NULL;
    char what[300];
    if (r->ty->result == EXEC_RESULT_NONE)
        data = json_object();
    else if (r->ty->result == EXEC_RESULT_TEXT)
        data = json_pack("{s:s%}", r->ty->result_key, r->out, r->out_len);
    else
        data = json_loadb(r->out, r->out_len, JSON_REJECT_DUPLICATES, &jerr);
    if (r->ty->result == EXEC_RESULT_JSON && !json_is_object(data)) {
        snprintf(what, sizeof(what), "exited 0 without a JSON object on stdout (%s)",
                 data != NULL ? "not an object" : jerr.text);
        json_decref(data);
        fail_tail(r, AVT_PERMANENT_ERROR, what);
        return;
    }
    if (data == NULL) {
        fail_tail(r, AVT_PERMANENT_ERROR, "exited 0 with stdout that is not UTF-8 text");
        return;
    }
    if (r->ty->psource != EXEC_PROGRESS_NONE && r->percent < 100)
        avt_progress(r->task, 100, "done");
    avt_succeed(r->task, data);
}

static void outcome(struct exec_run *r)
{
    char what[200];
    int st = r->status;
    if (r->stop == EXEC_STOP_CANCEL) {
        avt_fail(r->task, AVT_TRANSIENT_ERROR, "cancelled");
    } else if (r->stop == EXEC_STOP_DEADLINE) {
        fail_tail(r, AVT_TIMEOUT_ERROR, "stopped: the task's deadline passed");
    } else if (r->stop == EXEC_STOP_OVERSIZE) {
        snprintf(what, sizeof(what), "stopped: stdout over stdout_max_bytes (%zu)",
                 r->ty->stdout_max);
        fail_tail(r, AVT_PERMANENT_ERROR, what);
    } else if (WIFSIGNALED(st)) {
        const char *sig = sigabbrev_np(WTERMSIG(st));
        snprintf(what, sizeof(what), "was killed by signal %d (SIG%s)", WTERMSIG(st),
                 sig != NULL ? sig : "?");
        fail_tail(r, AVT_TRANSIENT_ERROR, what);
    } else if (WEXITSTATUS(st) != 0) {
        snprintf(what, sizeof(what), "exited with status %d", WEXITSTATUS(st));
        fail_tail(r, r->ty->exit_codes[WEXITSTATUS(st)], what);
    } else {
        succeed(r);
    }
}

static void run_task(const struct exec_state *s, const struct exec_type *ty, struct avt_task *task,
                     char **argv, const char *input)
{
    char workdir[PATH_MAX], err[EXEC_ERRLEN];
    struct exec_run r = {.ty = ty, .task = task};
    snprintf(workdir, sizeof(workdir), "%s/avt-exec-XXXXXX", s->work_dir);
    if (progress_total(ty, task, &r.total) < 0)
        return;
    if (mkdtemp(workdir) == NULL) {
        avt_log_err(task, "cannot create a task directory in %s: %s", s->work_dir, strerror(errno));
        avt_fail(task, AVT_TRANSIENT_ERROR, "cannot create a task directory: %s", strerror(errno));
        return;
    }
    char **env = exec_env(ty, workdir);
    int rc = env != NULL ? run_command(&r, argv, env, workdir, input, err, sizeof(err)) : -ENOMEM;
    if (rc < 0) {
        avt_log_err(task, "%s", env != NULL ? err : "out of memory");
        avt_fail(task, AVT_TRANSIENT_ERROR, "%s", env != NULL ? err : "out of memory");
    } else {
        outcome(&r);
    }
    exec_env_free(env);
    run_free(&r);
    remove_workdir(task, workdir);
}

static size_t find_type(const struct exec_state *s, const char *name)
{
    size_t i = 0;
    while (i < s->ntypes && strcmp(s->types[i]->name, name) != 0)
        i++;
    return i;
}

static int exec_handle(void *state, struct avt_task *task)
{
    const struct exec_state *s = state;
    size_t i = find_type(s, task->type);
    const struct exec_type *ty = i < s->ntypes ? s->types[i] : NULL;
    char *input = NULL;
    if (ty == NULL) {
        avt_fail(task, AVT_PERMANENT_ERROR, "exec has no declaration of type %s", task->type);
        return 0;
    }
    if (!json_is_object(task->params)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params must be a JSON object");
        return 0;
    }
    if (ty->persistent != NULL) {
        warm_run(s->pools[i], task);
        return 0;
    }
    char **argv = build_argv(ty, task);
    if (argv == NULL)
        return 0;
    if (ty->stdin_params && (input = json_dumps(task->params, JSON_COMPACT)) == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory encoding params");
    } else {
        run_task(s, ty, task, argv, input);
    }
    free(input);
    free_strv(argv);
    return 0;
}

static const char *const exec_no_types[] = {NULL};

AVT_PLUGIN(.name = "exec", .version = "1.0.0", .task_types = exec_no_types, .init = exec_init,
           .configure = exec_configure, .start = exec_start, .handle = exec_handle,
           .shutdown = exec_shutdown, .types = exec_types);
