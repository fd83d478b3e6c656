/*
 * t_behave.c - a test plugin whose task types each misbehave (or behave) in
 * one specific way, for the run-once and daemon integration tests. Every
 * type starts with "t_" so that it cannot clash with an example plugin.
 *
 *   t_no_outcome   returns 0 without an outcome
 *   t_eio          returns -EIO without an outcome
 *   t_fail         fails with params.code (default TRANSIENT_ERROR) and
 *                  params.message (default "failed on purpose")
 *   t_two          succeeds with {"first": 1}, then tries to fail and to
 *                  succeed again (both refused: the first outcome wins)
 *   t_not_object   "succeeds" with a JSON string
 *   t_custom       completes with the custom status params.status
 *   t_progress     reports params.n (default 3) progress steps "part i",
 *                  params.ms (default 0) apart, then succeeds with {"n": n}
 *   t_block        reports progress 0 "waiting", then waits until the task
 *                  is cancelled and succeeds with {"saw_cancel": true}
 *   t_conc, t_conc2  sleep params.ms (default 50) and succeed with the
 *                  highest number of handlers of the same type, and of both
 *                  types, seen running at once: {"max": n, "max_all": n}
 *   t_stubborn     reports progress 0 "stubborn", then sleeps params.ms
 *                  (default 60000) without ever checking for cancellation;
 *                  with params.path, it waits until that file exists
 *                  instead (still deaf to cancellation) and succeeds
 *   t_hot          adds params.name to the hot cache, removes
 *                  params.remove when given, and succeeds
 *   t_gate         reports progress 0 "gated", then waits until the file
 *                  params.path exists (the test opens the gate) and
 *                  succeeds with {"gate": "opened"}, or until cancelled and
 *                  succeeds with {"gate": "cancelled"}
 *   t_env          what a plugin and its child processes find in the
 *                  environment: {"in_env": whether getenv(params.name)
 *                  (default WORKER_TOKEN) is set or any variable holds
 *                  params.needle, "in_child": the same for the environment
 *                  of a child process (env(1) through popen), "child_ran":
 *                  whether the child printed anything};
 *                  never the values themselves
 *   t_sched        what OpenMP, BLAS and NUMA libraries call: sched_setaffinity
 *                  (to the thread's own mask), setpriority (to its own nice
 *                  value) and mbind (MPOL_DEFAULT on one page); succeeds
 *                  with each call's errno: {"sched_setaffinity": 0, ...}
 *   t_child        runs "exit params.code" (default 3) through popen()/pclose()
 *                  and system(): {"popen": status, "popen_errno", "system"}
 */
#define _POSIX_C_SOURCE 200809L

#include <avt_plugin.h>

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int conc_cur[2], conc_peak[2], all_cur, all_peak;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static long param_long(struct avt_task *task, const char *key, long dflt)
{
    json_t *v = json_object_get(task->params, key);
    return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

static const char *param_str(struct avt_task *task, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(task->params, key));
    return s != NULL ? s : dflt;
}

static void peak_update(atomic_int *p, int v)
{
    int old = atomic_load(p);
    while (v > old && !atomic_compare_exchange_weak(p, &old, v))
        ;
}

static int do_conc(struct avt_task *task, int i)
{
    peak_update(&conc_peak[i], atomic_fetch_add(&conc_cur[i], 1) + 1);
    peak_update(&all_peak, atomic_fetch_add(&all_cur, 1) + 1);
    sleep_ms(param_long(task, "ms", 50));
    atomic_fetch_sub(&all_cur, 1);
    atomic_fetch_sub(&conc_cur[i], 1);
    return avt_succeed(task, json_pack("{s:i,s:i}", "max", atomic_load(&conc_peak[i]), "max_all",
                                       atomic_load(&all_peak)));
}

static int do_progress(struct avt_task *task)
{
    long n = param_long(task, "n", 3);
    for (long i = 1; i <= n; i++) {
        if (param_long(task, "ms", 0) > 0)
            sleep_ms(param_long(task, "ms", 0));
        avt_progress(task, (double)i * 100.0 / (double)n, "part %ld", i);
    }
    return avt_succeed(task, json_pack("{s:I}", "n", (json_int_t)n));
}

static int do_block(struct avt_task *task)
{
    avt_progress(task, 0, "waiting");
    while (!avt_is_cancelled(task))
        sleep_ms(10);
    return avt_succeed(task, json_pack("{s:b}", "saw_cancel", 1));
}

static int do_gate(struct avt_task *task)
{
    const char *path = param_str(task, "path", "/nonexistent");
    avt_progress(task, 0, "gated");
    while (access(path, F_OK) != 0) {
        if (avt_is_cancelled(task))
            return avt_succeed(task, json_pack("{s:s}", "gate", "cancelled"));
        sleep_ms(10);
    }
    return avt_succeed(task, json_pack("{s:s}", "gate", "opened"));
}

static int do_stubborn(struct avt_task *task)
{
    const char *path = param_str(task, "path", NULL);
    avt_progress(task, 0, "stubborn");
    if (path == NULL)
        sleep_ms(param_long(task, "ms", 60000));
    while (path != NULL && access(path, F_OK) != 0)
        sleep_ms(10);
    return avt_succeed(task, NULL);
}

static int do_two(struct avt_task *task)
{
    avt_succeed(task, json_pack("{s:i}", "first", 1));
    int rc1 = avt_fail(task, AVT_PERMANENT_ERROR, "second outcome");
    int rc2 = avt_succeed(task, json_pack("{s:i}", "third", 3));
    avt_log_info(task, "later outcomes returned %d and %d", rc1, rc2);
    return 0;
}

static int do_hot(struct avt_task *task)
{
    const struct avt_host *h = task->host;
    const char *rm = param_str(task, "remove", NULL);
    int rc = h->hot_cache_add(h, param_str(task, "name", "model-x"));
    if (rm != NULL)
        rc = rc != 0 ? rc : h->hot_cache_remove(h, rm);
    return avt_succeed(task, json_pack("{s:i}", "rc", rc));
}

/* Custom events (ABI 1.1): n of them; the result says what the last
 * emission returned and the task's deadline as the daemon passed it. */
static int do_event(struct avt_task *task)
{
    long n = param_long(task, "n", 2);
    int rc = 0;
    for (long i = 0; i < n; i++)
        rc = avt_emit_event(task, param_str(task, "event", "t_note"),
                            json_pack("{s:I, s:s}", "i", (json_int_t)i, "tag", "from t_event"));
    return avt_succeed(task, json_pack("{s:i, s:f}", "rc", rc, "deadline", task->deadline));
}

/* 1 when `line` ("NAME=value") is the variable name or holds needle. */
static int env_line_matches(const char *line, const char *name, const char *needle)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) == 0 && line[n] == '=')
        return 1;
    return needle != NULL && *needle != '\0' && strstr(line, needle) != NULL;
}

static int do_env(struct avt_task *task)
{
    extern char **environ;
    const char *name = param_str(task, "name", "WORKER_TOKEN");
    const char *needle = param_str(task, "needle", NULL);
    int in_env = 0, in_child = 0, child_ran = 0;
    for (char **e = environ; e != NULL && *e != NULL; e++)
        in_env |= env_line_matches(*e, name, needle);
    FILE *fp = popen("env", "r");
    if (fp != NULL) {
        char line[65536];
        while (fgets(line, sizeof(line), fp) != NULL) {
            child_ran = 1;
            in_child |= env_line_matches(line, name, needle);
        }
        pclose(fp);
    }
    return avt_succeed(task, json_pack("{s:b,s:b,s:b}", "in_env", in_env, "in_child", in_child,
                                       "child_ran", child_ran));
}

/* A child's exit status, through popen()/pclose() and system(): the
 * daemon must not reap a plugin's children. */
static int do_child(struct avt_task *task)
{
    long code = param_long(task, "code", 3);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "exit %ld", code);
    int popen_status = -1, popen_errno = 0;
    FILE *fp = popen(cmd, "r");
    if (fp != NULL) {
        int st = pclose(fp);
        popen_errno = st < 0 ? errno : 0;
        popen_status = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    int st = system(cmd);
    int system_status = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return avt_succeed(task, json_pack("{s:i,s:i,s:i}", "popen", popen_status, "popen_errno",
                                       popen_errno, "system", system_status));
}

/* errno of the last call when rc != 0, else 0. */
static int err_of(long rc)
{
    return rc == 0 ? 0 : errno;
}

static int do_sched(struct avt_task *task)
{
    cpu_set_t set;
    int aff = err_of(sched_getaffinity(0, sizeof(set), &set));
    if (aff == 0)
        aff = err_of(sched_setaffinity(0, sizeof(set), &set));
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, 0);
    int prio = errno != 0 ? errno : err_of(setpriority(PRIO_PROCESS, 0, nice_now));
    long page = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int mb = p == MAP_FAILED ? errno : err_of(syscall(SYS_mbind, p, page, 0, NULL, 0UL, 0U));
    if (p != MAP_FAILED)
        munmap(p, (size_t)page);
    return avt_succeed(task, json_pack("{s:i,s:i,s:i}", "sched_setaffinity", aff, "setpriority",
                                       prio, "mbind", mb));
}

static int t_handle(void *state, struct avt_task *task)
{
    const char *type = task->type;

    (void)state;
    if (strcmp(type, "t_no_outcome") == 0)
        return 0;
    if (strcmp(type, "t_eio") == 0)
        return -EIO;
    if (strcmp(type, "t_fail") == 0)
        return avt_fail(task, param_str(task, "code", AVT_TRANSIENT_ERROR), "%s",
                        param_str(task, "message", "failed on purpose"));
    if (strcmp(type, "t_two") == 0)
        return do_two(task);
    if (strcmp(type, "t_not_object") == 0)
        return avt_succeed(task, json_string("not an object")) == -EINVAL ? 0 : -EPROTO;
    if (strcmp(type, "t_custom") == 0)
        return avt_complete(task, param_str(task, "status", "needs_review"),
                            json_pack("{s:b}", "custom", 1));
    if (strcmp(type, "t_progress") == 0)
        return do_progress(task);
    if (strcmp(type, "t_block") == 0)
        return do_block(task);
    if (strcmp(type, "t_conc") == 0 || strcmp(type, "t_conc2") == 0)
        return do_conc(task, type[6] == '2');
    if (strcmp(type, "t_hot") == 0)
        return do_hot(task);
    if (strcmp(type, "t_gate") == 0)
        return do_gate(task);
    if (strcmp(type, "t_stubborn") == 0)
        return do_stubborn(task);
    if (strcmp(type, "t_event") == 0)
        return do_event(task);
    if (strcmp(type, "t_env") == 0)
        return do_env(task);
    if (strcmp(type, "t_sched") == 0)
        return do_sched(task);
    if (strcmp(type, "t_child") == 0)
        return do_child(task);
    if (strcmp(type, "t_huge") == 0) /* a number RXON 1.0b14 cannot sign */
        return avt_succeed(task, json_pack("{s:f}", "x", 1e300));
    return avt_fail(task, AVT_PERMANENT_ERROR, "t_behave: unexpected type %s", type);
}

static const char *const t_types[] = {"t_no_outcome", "t_eio",    "t_fail",     "t_two",
                                      "t_not_object", "t_custom", "t_progress", "t_block",
                                      "t_conc",       "t_conc2",  "t_hot",      "t_stubborn",
                                      "t_child",      "t_gate",   "t_event",    "t_huge",
                                      "t_env",        "t_sched",  NULL};

AVT_PLUGIN(.name = "t_behave", .version = "1.0", .task_types = t_types, .handle = t_handle);
