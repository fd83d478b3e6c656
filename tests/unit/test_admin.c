/*
 * test_admin.c - the admin endpoint (admin.h) over real neighbours that
 * need no network: a cfg from the environment plus a [limits] file, a pool
 * (one of its threads held busy by a fake plugin), a ledger whose
 * deadline supervision and abandons have run, an outbox with a fake
 * sender that has acknowledged some results per orchestrator, taskstats
 * with a task type holding a quote, a backslash and a newline, and an
 * orchset that is created but never started (no traffic). The /metrics
 * text is checked against the exposition format (one HELP and one TYPE per
 * family before its samples, no family twice, samples belong to their
 * family, labels well formed and escaped, no series twice, histograms
 * cumulative), against README.md's metrics table (every metric present
 * with its type), and for its figures: the orchestrator label is the URL,
 * deadlines/abandoned/stuck totals come from the ledger without labels,
 * results sent and pending per orchestrator from the outbox. Then the
 * endpoint is served for real on 127.0.0.1 (a free port found first) while
 * the test drives the loop with EVRUN_NOWAIT and a client thread talks raw
 * HTTP: /metrics (GET, HEAD, with a query), /healthz (503, not registered),
 * /threads (one line per worker thread), 404, 405, 400 for malformed
 * request lines and a NUL byte, 431 for a head that fills the buffer, and
 * a scrape that still works behind a flood of idle connections (the
 * oldest of which are closed to make room).
 * admin_log_threads() logs one line per thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "admin.h"
#include "cfg.h"
#include "evq.h"
#include "host.h"
#include "http.h"
#include "ledger.h"
#include "log.h"
#include "orch.h"
#include "orchset.h"
#include "outbox.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "task.h"
#include "taskstats.h"
#include "util.h"

#define URL_A "http://127.0.0.1:1"
#define URL_B "http://127.0.0.1:2"
#define NTHREADS 3

/* "we"ird\ty<newline>pe" and its escaped form in a label value. */
#define ODD_TYPE "we\"ird\\ty\npe"
#define ODD_TYPE_ESC "we\\\"ird\\\\ty\\npe"
#define ODD_CODE "E\"1\\"
#define ODD_CODE_ESC "E\\\"1\\\\"

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    double f = m != NULL ? strtod(m, NULL) : 1.0;
    return s * (f > 0 ? f : 1.0);
}

/* ---- A fake plugin whose handler waits at a gate ------------------------ */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open;

static int gate_handle(void *state, struct avt_task *task)
{
    (void)state;
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    return avt_succeed(task, NULL);
}

static void gate_set(int open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static const char *const gate_types[] = {"slow", NULL};
static const struct avt_plugin gate_desc = {
    .abi_version = AVT_ABI_VERSION,
    .struct_size = sizeof(struct avt_plugin),
    .name = "gatekeeper",
    .version = "1",
    .task_types = gate_types,
    .handle = gate_handle,
};
static struct plugin gate_plugin;
static char gate_name[] = "gatekeeper";

/* ---- Fakes for the ledger, the outbox and the sessions ----------------- */

static int cancels, abandons;

static void l_cancel(void *arg, struct task *t, int reason)
{
    (void)arg;
    (void)t;
    (void)reason;
    cancels++;
}

static void l_abandoned(void *arg, struct task *t, const char *code, const char *message)
{
    (void)arg;
    (void)t;
    (void)code;
    (void)message;
    abandons++;
}

static const struct ledger_hooks lhooks = {l_cancel, l_abandoned};

/* Sends are kept until the test answers them. */
struct post {
    void *dest;
    outbox_answer_fn done;
    void *arg;
    int answered;
};
#define POSTS_MAX 32
static struct post posts[POSTS_MAX];
static int nposts;

static void *f_post(void *dest, const char *record, size_t len, outbox_answer_fn done, void *arg)
{
    (void)record;
    (void)len;
    if (nposts == POSTS_MAX)
        return NULL;
    posts[nposts] = (struct post){dest, done, arg, 0};
    return &posts[nposts++];
}

static void f_cancel(void *handle)
{
    ((struct post *)handle)->answered = 1; /* the outbox frees the result itself */
}

static double f_failure_delay(void *dest, const char *what, const struct http_response *r,
                              struct backoff *b, const struct log_ctx *ctx)
{
    (void)dest;
    (void)what;
    (void)r;
    (void)b;
    (void)ctx;
    return 3600;
}

static const struct outbox_sender fsender = {f_post, f_cancel, f_failure_delay};

static void o_release(void *arg)
{
    (void)arg;
}

static void o_room(void *arg)
{
    (void)arg;
}

static const struct outbox_hooks ohooks = {o_release, o_room, NULL};

/* Answer `n` unanswered sends to dest with 200. */
static void ack_sends(void *dest, int n)
{
    struct http_response r = {.status = 200, .body = "{}", .len = 2, .retry_after = -1};
    struct outbox_answer a = {&r, 0, "accepted"};
    for (int i = 0; i < nposts && n > 0; i++) {
        if (posts[i].dest != dest || posts[i].answered)
            continue;
        posts[i].answered = 1;
        posts[i].done(posts[i].arg, &a);
        n--;
    }
}

static void s_task(void *arg, struct task *t, int valid, const struct plugin_set *polled_under)
{
    (void)arg;
    (void)valid;
    (void)polled_under;
    task_destroy(t);
}

static void s_registered(void *arg, struct orch *o)
{
    (void)arg;
    (void)o;
}

static const struct orch_hooks shooks = {s_task, s_registered, NULL};

/* ---- The fixture --------------------------------------------------------- */

static const char *const env_vars[] = {
    "ORCHESTRATOR_URL",
    "ORCHESTRATORS_CONFIG",
    "WORKER_ID",
    "WORKER_TYPE",
    "WORKER_TOKEN",
    "WORKER_TOKEN_FILE",
    "MAX_CONCURRENT_TASKS",
    "WORKER_INDIVIDUAL_TOKEN",
    "HEARTBEAT_INTERVAL",
    "ADMIN_PORT",
    "MULTI_ORCHESTRATOR_MODE",
    "TLS_CA_PATH",
    "TLS_CERT_PATH",
    "TLS_KEY_PATH",
    "TLS_INSECURE",
    "STATE_DIRECTORY",
    "LOG_LEVEL",
    "LOG_FORMAT",
};

struct fx {
    struct cfg *cfg;
    struct ev_loop *loop;
    struct http *http;
    struct evq *evq;
    struct pool *pool;
    struct ledger *ledger;
    json_t *hot;
    struct orchset *orchs;
    struct outbox *outbox;
    struct taskstats *ts;
    struct admin_sources src;
    struct task *held[6]; /* the ledger's tasks (it never frees them) */
    struct task *busy;    /* running in the pool until the gate opens */
};

static int load_cfg(struct fx *f, int norchs)
{
    char err[AVT_ERRLEN], ini[64];
    for (size_t i = 0; i < ARRAY_LEN(env_vars); i++)
        unsetenv(env_vars[i]);
    setenv("WORKER_ID", "w1", 1);
    setenv("MAX_CONCURRENT_TASKS", "3", 1);
    if (norchs == 1)
        setenv("ORCHESTRATOR_URL", URL_A, 1);
    else
        setenv("ORCHESTRATORS_CONFIG",
               "[{\"url\":\"" URL_A "\",\"name\":\"a\",\"priority\":1},"
               "{\"url\":\"" URL_B "\",\"name\":\"b\",\"priority\":2}]",
               1);
    snprintf(ini, sizeof(ini), "/tmp/avt-test-admin.%ld.ini", (long)getpid());
    FILE *fp = fopen(ini, "w");
    if (fp == NULL)
        return -1;
    fputs("[limits]\nslow = 2\nslow.timeout = 1\nfast = 1\n", fp);
    fclose(fp);
    int rc = cfg_load(ini, &f->cfg, err, sizeof(err));
    unlink(ini);
    if (rc < 0)
        printf("# cfg_load: %s\n", err);
    return rc;
}

/* Wait until the pool runs `n` handlers; 0 or -1. */
static int wait_running(struct pool *pool, int n)
{
    double end = now_mono() + tmo(10);
    struct pool_stats ps;
    for (;;) {
        pool_get_stats(pool, &ps);
        if (ps.running == n)
            return 0;
        if (now_mono() > end)
            return -1;
        usleep(1000);
    }
}

/* Deadlines, a stuck handler and abandons in the ledger: deadlines 3,
 * abandoned 2, of which stuck 1. */
static void fill_ledger(struct fx *f)
{
    static const char *const ids[] = {"d1", "d2", "d3", "s1", "a1", "keep"};
    struct pool_thread_info th[4];
    double now = now_mono();
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        f->held[i] = task_create(ids[i], ids[i], i == 4 ? "fast" : "slow", NULL);
        f->held[i]->origin = orchset_get(f->orchs, 0);
        ledger_add(f->ledger, f->held[i]);
    }
    memset(th, 0, sizeof(th));
    for (int i = 0; i < 4; i++) {
        th[i].index = i;
        th[i].busy = 1;
        th[i].task = f->held[i];
        th[i].since = now - 100;
        th[i].cancel = i == 3 ? TASK_CANCEL_DEADLINE : TASK_CANCEL_NONE;
    }
    ledger_supervise(f->ledger, f->cfg, th, 4, now, 5);
    ledger_abandon(f->ledger, f->held[4], AVT_TIMEOUT_ERROR, "given up");
}

/* Results: A has 3 (2 acknowledged), B has 4 (1 acknowledged). */
static void fill_outbox(struct fx *f)
{
    size_t n = orchset_count(f->orchs);
    json_t *rec = json_pack("{s:s, s:s, s:s}", "job_id", "j", "task_id", "t", "status", "success");
    for (size_t i = 0; i < n; i++) {
        struct orch *o = orchset_get(f->orchs, i);
        int k = i == 0 ? 3 : 4;
        for (int r = 0; r < k; r++)
            outbox_add(f->outbox, o, rec, "t", "j", "echo", 0, 0);
        ack_sends(o, i == 0 ? 2 : 1);
    }
    json_decref(rec);
}

static void fill_taskstats(struct fx *f)
{
    for (int i = 0; i < 3; i++)
        taskstats_outcome(f->ts, "echo", "success", NULL);
    taskstats_outcome(f->ts, "resize", "failure", AVT_TRANSIENT_ERROR);
    taskstats_outcome(f->ts, ODD_TYPE, "failure", ODD_CODE);
    taskstats_duration(f->ts, "echo", 0.001);
    taskstats_duration(f->ts, "echo", 0.3);
    taskstats_duration(f->ts, "echo", 7200);
    taskstats_duration(f->ts, ODD_TYPE, 0.01);
}

static int fx_up(struct fx *f, int norchs)
{
    memset(f, 0, sizeof(*f));
    nposts = 0;
    cancels = abandons = 0;
    if (load_cfg(f, norchs) < 0)
        return -1;
    f->loop = ev_loop_new(EVFLAG_AUTO);
    f->http = http_create(f->loop, NULL);
    f->evq = evq_create(NULL, NULL);
    f->pool = pool_create(f->cfg, f->evq);
    f->ledger = ledger_create(&lhooks, NULL);
    f->hot = json_array();
    struct orch_env env = {
        .pool = f->pool, .ledger = f->ledger, .hot_cache = f->hot, .hooks = &shooks};
    f->orchs = orchset_create(f->loop, f->http, f->cfg, &env, NULL);
    f->outbox = outbox_create(f->loop, f->cfg, NULL, &fsender, &ohooks, NULL);
    for (size_t i = 0; i < orchset_count(f->orchs); i++) {
        struct orch *o = orchset_get(f->orchs, i);
        outbox_add_dest(f->outbox, o, orch_url(o));
    }
    f->ts = taskstats_create();
    f->src = (struct admin_sources){.cfg = f->cfg,
                                    .pool = f->pool,
                                    .orchs = f->orchs,
                                    .ledger = f->ledger,
                                    .outbox = f->outbox,
                                    .taskstats = f->ts,
                                    .started = now_mono() - 100};
    fill_ledger(f);
    fill_outbox(f);
    fill_taskstats(f);

    /* One handler of "slow" runs (held at the gate). */
    host_init(&gate_plugin.host, gate_name, f->evq);
    gate_plugin.desc = &gate_desc;
    gate_plugin.name = gate_name;
    gate_set(0);
    f->busy = task_create("busy-1", "job-busy", "slow", NULL);
    f->busy->plugin = &gate_plugin;
    if (pool_submit(f->pool, f->busy) < 0 || wait_running(f->pool, 1) < 0) {
        printf("# the busy task did not start\n");
        return -1;
    }
    return 0;
}

static void fx_down(struct fx *f)
{
    gate_set(1);
    outbox_destroy(f->outbox);
    orchset_destroy(f->orchs);
    ledger_destroy(f->ledger);
    for (size_t i = 0; i < ARRAY_LEN(f->held); i++)
        task_destroy(f->held[i]);
    http_destroy(f->http);
    pool_destroy(f->pool); /* the busy task's DONE is in the queue now */
    evq_destroy(f->evq);   /* and is freed with it */
    json_decref(f->hot);
    taskstats_destroy(f->ts);
    cfg_destroy(f->cfg);
    if (f->loop != NULL)
        ev_loop_destroy(f->loop);
}

/* ---- The exposition format ------------------------------------------------ */

struct family {
    char name[128], type[16];
    int help, typed, samples;
};

#define FAMILIES_MAX 64

struct parsed {
    struct family fam[FAMILIES_MAX];
    int nfam;
    json_t *series; /* "name{labels}" -> value */
    int errors;
};

static struct family *family_find(struct parsed *p, const char *name)
{
    for (int i = 0; i < p->nfam; i++) {
        if (strcmp(p->fam[i].name, name) == 0)
            return &p->fam[i];
    }
    return NULL;
}

#define BAD(p, ...)                                                                                \
    do {                                                                                           \
        (p)->errors++;                                                                             \
        TAP_FAIL_(__VA_ARGS__);                                                                    \
    } while (0)

static size_t name_len(const char *s, int metric)
{
    size_t n = 0;
    while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') || s[n] == '_' ||
           (metric && s[n] == ':') || (n > 0 && s[n] >= '0' && s[n] <= '9'))
        n++;
    return n;
}

/* "# HELP name text" or "# TYPE name type". */
static void parse_comment(struct parsed *p, const char *line, struct family **cur)
{
    int help = strncmp(line, "# HELP ", 7) == 0, type = strncmp(line, "# TYPE ", 7) == 0;
    if (!help && !type)
        return; /* another comment: allowed */
    const char *name = line + 7;
    size_t n = name_len(name, 1);
    if (n == 0 || n >= sizeof((*cur)->name) || name[n] != ' ' || name[n + 1] == '\0') {
        BAD(p, "malformed: %s", line);
        return;
    }
    char nm[128];
    memcpy(nm, name, n);
    nm[n] = '\0';
    struct family *f = family_find(p, nm);
    if (f != NULL && f != *cur)
        BAD(p, "family %s announced twice", nm);
    if (f == NULL) {
        if (p->nfam == FAMILIES_MAX) {
            BAD(p, "too many families");
            return;
        }
        f = &p->fam[p->nfam++];
        memset(f, 0, sizeof(*f));
        snprintf(f->name, sizeof(f->name), "%s", nm);
    }
    if (f->samples > 0)
        BAD(p, "%s after the samples of %s", help ? "HELP" : "TYPE", nm);
    if (help && f->help++)
        BAD(p, "two HELP lines for %s", nm);
    if (type) {
        const char *t = name + n + 1;
        if (f->typed++)
            BAD(p, "two TYPE lines for %s", nm);
        if (strcmp(t, "counter") != 0 && strcmp(t, "gauge") != 0 && strcmp(t, "histogram") != 0 &&
            strcmp(t, "summary") != 0 && strcmp(t, "untyped") != 0)
            BAD(p, "unknown type %s of %s", t, nm);
        snprintf(f->type, sizeof(f->type), "%s", t);
    }
    *cur = f;
}

/* The labels of a sample from just after '{'; returns the end (after
 * '}') or NULL. Sets *has_le. */
static const char *parse_labels(struct parsed *p, const char *s, const char *line, int *has_le)
{
    char seen[8][64];
    int nseen = 0;
    *has_le = 0;
    while (*s != '}') {
        size_t n = name_len(s, 0);
        if (n == 0 || n >= 64 || s[n] != '=' || s[n + 1] != '"') {
            BAD(p, "bad label in: %s", line);
            return NULL;
        }
        for (int i = 0; i < nseen; i++) {
            if (strncmp(seen[i], s, n) == 0 && seen[i][n] == '\0')
                BAD(p, "label given twice in: %s", line);
        }
        if (nseen < 8) {
            memcpy(seen[nseen], s, n);
            seen[nseen++][n] = '\0';
        }
        *has_le |= n == 2 && strncmp(s, "le", 2) == 0;
        s += n + 2;
        while (*s != '"') {
            if (*s == '\0') {
                BAD(p, "unterminated label value in: %s", line);
                return NULL;
            }
            if (*s == '\\') {
                s++;
                if (*s != '\\' && *s != '"' && *s != 'n') {
                    BAD(p, "bad escape in: %s", line);
                    return NULL;
                }
            }
            s++;
        }
        s++;
        if (*s == ',')
            s++;
        else if (*s != '}') {
            BAD(p, "expected , or } in: %s", line);
            return NULL;
        }
    }
    return s + 1;
}

static int belongs(const struct family *f, const char *name, size_t n)
{
    size_t fl = strlen(f->name);
    if (n == fl && strncmp(name, f->name, n) == 0)
        return 1;
    if (n <= fl || strncmp(name, f->name, fl) != 0)
        return 0;
    const char *suffix = name + fl;
    size_t sl = n - fl;
    int hist = strcmp(f->type, "histogram") == 0, summ = strcmp(f->type, "summary") == 0;
    return ((hist || summ) && ((sl == 4 && strncmp(suffix, "_sum", 4) == 0) ||
                               (sl == 6 && strncmp(suffix, "_count", 6) == 0))) ||
           (hist && sl == 7 && strncmp(suffix, "_bucket", 7) == 0);
}

static void parse_sample(struct parsed *p, const char *line, struct family *cur)
{
    size_t n = name_len(line, 1);
    if (n == 0) {
        BAD(p, "not a sample: %s", line);
        return;
    }
    if (cur == NULL || !belongs(cur, line, n)) {
        BAD(p, "sample outside its family (%s): %s", cur ? cur->name : "none", line);
        return;
    }
    if (!cur->help || !cur->typed)
        BAD(p, "sample before HELP and TYPE of %s", cur->name);
    cur->samples++;
    const char *s = line + n;
    int has_le = 0;
    if (*s == '{' && (s = parse_labels(p, s + 1, line, &has_le)) == NULL)
        return;
    if (n > 7 && strncmp(line + n - 7, "_bucket", 7) == 0 && !has_le)
        BAD(p, "bucket without le: %s", line);
    if (*s != ' ') {
        BAD(p, "no value: %s", line);
        return;
    }
    char *end;
    double v = strtod(s + 1, &end);
    if (end == s + 1 || *end != '\0')
        BAD(p, "bad value: %s", line);
    char *key = xstrndup(line, (size_t)(s - line));
    if (json_object_get(p->series, key) != NULL)
        BAD(p, "series twice: %s", key);
    json_object_set_new(p->series, key, json_real(v));
    free(key);
}

/* Parse a whole exposition; p->series must be freed with json_decref. */
static void parse_exposition(struct parsed *p, const char *text, size_t len)
{
    memset(p, 0, sizeof(*p));
    p->series = json_object();
    if (len == 0 || text[len - 1] != '\n')
        BAD(p, "the text does not end with a newline");
    if (strlen(text) != len)
        BAD(p, "a NUL byte inside the text");
    struct family *cur = NULL;
    char *copy = xstrndup(text, len);
    for (char *line = copy, *nl; line != NULL && *line; line = nl) {
        nl = strchr(line, '\n');
        if (nl != NULL)
            *nl++ = '\0';
        if (*line == '\0')
            BAD(p, "empty line");
        else if (*line == '#')
            parse_comment(p, line, &cur);
        else
            parse_sample(p, line, cur);
    }
    free(copy);
    for (int i = 0; i < p->nfam; i++) {
        if (!p->fam[i].help || !p->fam[i].typed)
            BAD(p, "family %s lacks HELP or TYPE", p->fam[i].name);
    }
}

/* The value of one series ("name" or "name{labels}"); NAN-free: -12345
 * when absent (and a failure is reported). */
static double value_of(const struct parsed *p, const char *series)
{
    json_t *v = json_object_get(p->series, series);
    if (v == NULL) {
        TAP_FAIL_("series %s is missing", series);
        return -12345;
    }
    return json_real_value(v);
}

/* ---- README.md's table ------------------------------------------------------ */

struct readme_metric {
    const char *name, *type;
};

/* README.md "Operations", the /metrics table (hard-coded as of this test;
 * the test also reads README.md when it is at hand). */
static const struct readme_metric readme_metrics[] = {
    {"avtworkerd_tasks_total", "counter"},
    {"avtworkerd_task_duration_seconds", "histogram"},
    {"avtworkerd_tasks_running", "gauge"},
    {"avtworkerd_tasks_waiting", "gauge"},
    {"avtworkerd_type_limit", "gauge"},
    {"avtworkerd_slots", "gauge"},
    {"avtworkerd_slots_free", "gauge"},
    {"avtworkerd_tasks_stuck", "gauge"},
    {"avtworkerd_deadlines_total", "counter"},
    {"avtworkerd_tasks_abandoned_total", "counter"},
    {"avtworkerd_handlers_stuck_total", "counter"},
    {"avtworkerd_tasks_received_total", "counter"},
    {"avtworkerd_tasks_invalid_total", "counter"},
    {"avtworkerd_orchestrator_requests_total", "counter"},
    {"avtworkerd_orchestrator_request_errors_total", "counter"},
    {"avtworkerd_orchestrator_last_success_age_seconds", "gauge"},
    {"avtworkerd_registered", "gauge"},
    {"avtworkerd_draining", "gauge"},
    {"avtworkerd_registrations_total", "counter"},
    {"avtworkerd_results_pending", "gauge"},
    {"avtworkerd_results_sent_total", "counter"},
    {"avtworkerd_websocket_connects_total", "counter"},
    {"avtworkerd_websocket_disconnects_total", "counter"},
    {"avtworkerd_websocket_messages_total", "counter"},
    {"avtworkerd_sts_tokens_total", "counter"},
    {"process_resident_memory_bytes", "gauge"},
    {"avtworkerd_uptime_seconds", "gauge"},
    {"avtworkerd_build_info", "gauge"},
    {"avtworkerd_admin_accept_errors_total", "counter"},
};

/* Every `name` in the first column of README.md's metrics table (the
 * rows after "| metric | type |") must be a family of p, with the row's
 * type. Returns the number of names checked, -1 without README.md. */
static int check_readme(struct parsed *p)
{
    char *text = read_file("README.md", 1 << 22, NULL);
    if (text == NULL)
        return -1;
    int checked = 0, in_table = 0;
    for (char *line = text, *nl; line != NULL && *line; line = nl) {
        nl = strchr(line, '\n');
        if (nl != NULL)
            *nl++ = '\0';
        if (strncmp(line, "| metric | type |", 17) == 0) {
            in_table = 1;
            continue;
        }
        if (in_table && line[0] != '|')
            in_table = 0;
        if (!in_table || strncmp(line, "| `", 3) != 0)
            continue;
        char *col_end = strchr(line + 1, '|');
        char *type = col_end != NULL ? col_end + 1 : NULL;
        if (col_end == NULL)
            continue;
        *col_end = '\0';
        while (*type == ' ')
            type++;
        type[strcspn(type, " |")] = '\0';
        for (char *q = line; (q = strchr(q, '`')) != NULL;) {
            char *e = strchr(q + 1, '`');
            if (e == NULL)
                break;
            *e = '\0';
            char *name = q + 1;
            name[strcspn(name, "{")] = '\0';
            const struct family *f = family_find(p, name);
            if (f == NULL)
                TAP_FAIL_("README.md lists %s, /metrics lacks it", name);
            else if (strcmp(f->type, type) != 0)
                TAP_FAIL_("%s: README.md says %s, /metrics %s", name, type, f->type);
            checked++;
            q = e + 1;
        }
    }
    free(text);
    return checked;
}

/* ---- Metrics tests ---------------------------------------------------------- */

static struct parsed scrape(struct fx *f)
{
    struct parsed p;
    size_t len = 0;
    char *text = admin_metrics_text(&f->src, &len);
    parse_exposition(&p, text != NULL ? text : "", text != NULL ? len : 0);
    if (p.errors > 0)
        printf("# ---- the text ----\n%s# ----\n", text);
    free(text);
    return p;
}

TEST(metrics_follow_the_exposition_format)
{
    struct fx f;
    ASSERT(fx_up(&f, 2) == 0);
    struct parsed p = scrape(&f);
    EXPECT_EQ_INT(p.errors, 0);
    EXPECT(p.nfam >= (int)ARRAY_LEN(readme_metrics));
    /* Histograms: cumulative buckets, +Inf equal to _count. */
    const char *types[] = {"echo", ODD_TYPE_ESC};
    for (size_t t = 0; t < ARRAY_LEN(types); t++) {
        double prev = 0, inf = -1;
        int buckets = 0;
        const char *key;
        json_t *v;
        char prefix[160];
        snprintf(prefix, sizeof(prefix), "avtworkerd_task_duration_seconds_bucket{type=\"%s\",",
                 types[t]);
        json_object_foreach(p.series, key, v)
        {
            if (strncmp(key, prefix, strlen(prefix)) != 0)
                continue;
            buckets++;
            if (strstr(key, "le=\"+Inf\"") != NULL)
                inf = json_real_value(v);
        }
        EXPECT_EQ_INT(buckets, TASKSTATS_BUCKETS + 1);
        for (size_t b = 0; b < TASKSTATS_BUCKETS; b++) {
            char series[200];
            snprintf(series, sizeof(series), "%sle=\"%g\"}", prefix, taskstats_bounds[b]);
            double x = value_of(&p, series);
            EXPECT(x >= prev);
            prev = x;
        }
        char count[200];
        snprintf(count, sizeof(count), "avtworkerd_task_duration_seconds_count{type=\"%s\"}",
                 types[t]);
        EXPECT(inf >= prev && inf == value_of(&p, count));
    }
    EXPECT(value_of(&p, "avtworkerd_task_duration_seconds_count{type=\"echo\"}") == 3);
    EXPECT(value_of(&p, "avtworkerd_task_duration_seconds_bucket{type=\"echo\",le=\"0.005\"}") ==
           1);
    json_decref(p.series);
    fx_down(&f);
}

TEST(every_metric_of_the_readme_is_there)
{
    struct fx f;
    ASSERT(fx_up(&f, 2) == 0);
    struct parsed p = scrape(&f);
    for (size_t i = 0; i < ARRAY_LEN(readme_metrics); i++) {
        const struct family *fam = family_find(&p, readme_metrics[i].name);
        if (fam == NULL)
            TAP_FAIL_("%s is missing", readme_metrics[i].name);
        else
            EXPECT_EQ_STR(fam->type, readme_metrics[i].type);
    }
    int n = check_readme(&p);
    if (n < 0)
        printf("# README.md not found (run from the source tree): hard-coded list only\n");
    else
        printf("# README.md: %d metric names checked\n", n);
    EXPECT(n < 0 || n >= (int)ARRAY_LEN(readme_metrics));
    json_decref(p.series);
    fx_down(&f);
}

TEST(label_values_are_escaped)
{
    struct fx f;
    ASSERT(fx_up(&f, 1) == 0);
    size_t len;
    char *text = admin_metrics_text(&f.src, &len);
    EXPECT_CONTAINS(text, "avtworkerd_tasks_total{type=\"" ODD_TYPE_ESC
                          "\",status=\"failure\",code=\"" ODD_CODE_ESC "\"} 1\n");
    EXPECT_CONTAINS(text, "avtworkerd_task_duration_seconds_count{type=\"" ODD_TYPE_ESC "\"} 1\n");
    EXPECT(strstr(text, ODD_TYPE) == NULL); /* never raw */
    struct parsed p;
    parse_exposition(&p, text, len);
    EXPECT_EQ_INT(p.errors, 0);
    json_decref(p.series);
    free(text);
    fx_down(&f);
}

TEST(figures_come_from_their_sources)
{
    struct fx f;
    ASSERT(fx_up(&f, 2) == 0);
    struct parsed p = scrape(&f);
    /* The ledger: summed, no labels. */
    EXPECT(value_of(&p, "avtworkerd_deadlines_total") == 3);
    EXPECT(value_of(&p, "avtworkerd_tasks_abandoned_total") == 2);
    EXPECT(value_of(&p, "avtworkerd_handlers_stuck_total") == 1);
    EXPECT(value_of(&p, "avtworkerd_tasks_stuck") == 2);
    EXPECT_EQ_INT(cancels, 3);
    EXPECT_EQ_INT(abandons, 2);
    /* The outbox, per orchestrator (label = the URL). */
    EXPECT(value_of(&p, "avtworkerd_results_sent_total{orchestrator=\"" URL_A "\"}") == 2);
    EXPECT(value_of(&p, "avtworkerd_results_pending{orchestrator=\"" URL_A "\"}") == 1);
    EXPECT(value_of(&p, "avtworkerd_results_sent_total{orchestrator=\"" URL_B "\"}") == 1);
    EXPECT(value_of(&p, "avtworkerd_results_pending{orchestrator=\"" URL_B "\"}") == 3);
    /* The sessions (never started). */
    const char *urls[] = {URL_A, URL_B};
    for (size_t i = 0; i < ARRAY_LEN(urls); i++) {
        char s[200];
        snprintf(s, sizeof(s), "avtworkerd_registered{orchestrator=\"%s\"}", urls[i]);
        EXPECT(value_of(&p, s) == 0);
        snprintf(s, sizeof(s),
                 "avtworkerd_orchestrator_last_success_age_seconds{orchestrator=\"%s\"}", urls[i]);
        EXPECT(value_of(&p, s) == -1);
        snprintf(
            s, sizeof(s),
            "avtworkerd_orchestrator_request_errors_total{orchestrator=\"%s\",endpoint=\"poll\","
            "kind=\"rate_limited\"}",
            urls[i]);
        EXPECT(value_of(&p, s) == 0);
        snprintf(
            s, sizeof(s),
            "avtworkerd_orchestrator_requests_total{orchestrator=\"%s\",endpoint=\"register\"}",
            urls[i]);
        EXPECT(value_of(&p, s) == 0);
    }
    /* Every per-orchestrator series names one of the two URLs. */
    const char *key;
    json_t *v;
    int per_orch = 0;
    json_object_foreach(p.series, key, v)
    {
        if (strstr(key, "orchestrator=\"") == NULL)
            continue;
        per_orch++;
        EXPECT(strstr(key, "orchestrator=\"" URL_A "\"") != NULL ||
               strstr(key, "orchestrator=\"" URL_B "\"") != NULL);
    }
    /* registered, age; protocol, 6 ignored reasons; 4 requests, 4 x 6 errors; 9 counters */
    EXPECT_EQ_INT(per_orch, 2 * (2 + 1 + 6 + 4 + 4 * 6 + 9));
    /* The pool: 3 slots, one taken by the busy "slow" task. */
    EXPECT(value_of(&p, "avtworkerd_slots") == NTHREADS);
    EXPECT(value_of(&p, "avtworkerd_slots_free") == NTHREADS - 1);
    /* Threads start as tasks need them: the first one runs the busy task. */
    EXPECT(value_of(&p, "avtworkerd_worker_threads") == 1);
    EXPECT(value_of(&p, "avtworkerd_tasks_running{type=\"slow\"}") == 1);
    EXPECT(value_of(&p, "avtworkerd_tasks_waiting{type=\"slow\"}") == 0);
    EXPECT(value_of(&p, "avtworkerd_type_limit{type=\"slow\"}") == 2);
    EXPECT(value_of(&p, "avtworkerd_type_limit{type=\"fast\"}") == 1);
    /* taskstats, summed over the orchestrators. */
    EXPECT(value_of(&p, "avtworkerd_tasks_total{type=\"echo\",status=\"success\",code=\"\"}") == 3);
    EXPECT(value_of(&p, "avtworkerd_tasks_total{type=\"resize\",status=\"failure\","
                        "code=\"TRANSIENT_ERROR\"}") == 1);
    /* The process. */
    EXPECT(value_of(&p, "avtworkerd_build_info{version=\"" AVT_VERSION "\"}") == 1);
    EXPECT(value_of(&p, "avtworkerd_uptime_seconds") >= 100);
    EXPECT(value_of(&p, "avtworkerd_draining") == 0);
    EXPECT(value_of(&p, "process_resident_memory_bytes") > 0);
    json_decref(p.series);
    fx_down(&f);
}

/* ---- Serving for real --------------------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &sl) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static struct admin *listen_somewhere(struct fx *f, int *port)
{
    char err[AVT_ERRLEN], addr[64];
    for (int attempt = 0; attempt < 10; attempt++) {
        *port = free_port();
        if (*port <= 0)
            continue;
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", *port);
        struct admin *a = admin_create(f->loop, addr, &f->src, err, sizeof(err));
        if (a != NULL)
            return a;
        printf("# %s\n", err); /* taken meanwhile (EADDRINUSE): another port */
    }
    return NULL;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Read until the server closes (or timeout); the bytes (caller frees). */
static char *read_all(int fd, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, (int)(tmo(10) * 1000)) <= 0)
            break;
        if (cap - n < 2048)
            buf = xrealloc(buf, cap *= 2);
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* One request on a fresh connection; the raw answer (caller frees). */
static char *exchange(int port, const char *req, size_t len, size_t *out_len)
{
    int fd = connect_to(port);
    if (fd < 0) {
        *out_len = 0;
        return xstrdup("");
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    char *resp = read_all(fd, out_len);
    close(fd);
    return resp;
}

enum {
    R_METRICS,
    R_METRICS_QUERY,
    R_HEAD,
    R_HEALTHZ,
    R_THREADS,
    R_NOT_FOUND,
    R_POST,
    R_GARBAGE,
    R_NO_VERSION,
    R_NO_SLASH,
    R_NUL,
    R_TOO_LARGE,
    R_AFTER_FLOOD,
    R_COUNT
};

#define FLOOD 40
/* The idle connections beyond ADMIN_CONNS_MAX, plus the scrape's own. */
#define EVICTED (FLOOD + 1 - ADMIN_CONNS_MAX)

struct client {
    pthread_t th;
    int port;
    char *resp[R_COUNT];
    size_t len[R_COUNT];
    int evicted; /* the oldest idle connections closed by the server */
    atomic_int done;
};

static char *too_large_request(size_t *len)
{
    /* No blank line: the head never completes and fills the buffer. */
    *len = 8191;
    char *r = xmalloc(*len + 1);
    memset(r, 'a', *len);
    memcpy(r, "GET /metrics HTTP/1.1\r\nX-Pad: ", 30);
    r[*len] = '\0';
    return r;
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    static const char nul_req[] = "GET /me\0trics HTTP/1.1\r\n\r\n";
    const struct {
        const char *text;
        size_t len;
    } reqs[] = {
        [R_METRICS] = {"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", 0},
        [R_METRICS_QUERY] = {"GET /metrics?name[]=x#frag HTTP/1.0\n\n", 0},
        [R_HEAD] = {"HEAD /metrics HTTP/1.1\r\n\r\n", 0},
        [R_HEALTHZ] = {"GET /healthz HTTP/1.1\r\nAccept: */*\r\n\r\n", 0},
        [R_THREADS] = {"GET /threads HTTP/1.1\r\n\r\n", 0},
        [R_NOT_FOUND] = {"GET /nope HTTP/1.1\r\n\r\n", 0},
        [R_POST] = {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0},
        [R_GARBAGE] = {"garbage\r\n\r\n", 0},
        [R_NO_VERSION] = {"GET /metrics\r\n\r\n", 0},
        [R_NO_SLASH] = {"GET metrics HTTP/1.1\r\n\r\n", 0},
        [R_NUL] = {nul_req, sizeof(nul_req) - 1},
    };
    for (int i = 0; i < R_TOO_LARGE; i++) {
        size_t len = reqs[i].len ? reqs[i].len : strlen(reqs[i].text);
        c->resp[i] = exchange(c->port, reqs[i].text, len, &c->len[i]);
    }
    size_t big_len;
    char *big = too_large_request(&big_len);
    c->resp[R_TOO_LARGE] = exchange(c->port, big, big_len, &c->len[R_TOO_LARGE]);
    free(big);

    /* A flood of idle connections, then a scrape. */
    int idle[FLOOD];
    for (int i = 0; i < FLOOD; i++)
        idle[i] = connect_to(c->port);
    static const char m[] = "GET /metrics HTTP/1.1\r\n\r\n";
    c->resp[R_AFTER_FLOOD] = exchange(c->port, m, sizeof(m) - 1, &c->len[R_AFTER_FLOOD]);
    /* The oldest ones were closed to make room, at once. Each wait is at
     * most tmo(1) s: without eviction they would close only at their
     * request timeout (ADMIN_REQUEST_TIMEOUT), after most of these waits.
     * A large TIMEOUT_MULT can hide a missing eviction, never fail a
     * working one. */
    for (int i = 0; i < EVICTED; i++) {
        char b;
        struct pollfd pf = {.fd = idle[i], .events = POLLIN};
        c->evicted +=
            idle[i] >= 0 && poll(&pf, 1, (int)(tmo(1) * 1000)) == 1 && recv(idle[i], &b, 1, 0) <= 0;
    }
    for (int i = 0; i < FLOOD; i++) {
        if (idle[i] >= 0)
            close(idle[i]);
    }
    atomic_store(&c->done, 1);
    return NULL;
}

struct answer {
    int status;
    char head[2048];
    const char *body;
    size_t body_len;
    long content_length;
};

static struct answer parse_answer(const char *resp, size_t len)
{
    struct answer a;
    memset(&a, 0, sizeof(a));
    a.content_length = -1;
    const char *end = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.1 %d ", &a.status) != 1 || end == NULL)
        return a;
    size_t hl = (size_t)(end - resp);
    snprintf(a.head, sizeof(a.head), "%.*s", (int)(hl < sizeof(a.head) ? hl : 0), resp);
    const char *cl = strstr(a.head, "\r\nContent-Length: ");
    if (cl != NULL)
        a.content_length = strtol(cl + 18, NULL, 10);
    a.body = end + 4;
    a.body_len = len - hl - 4;
    return a;
}

static void check_simple(const struct client *c, int which, int status, const char *body)
{
    struct answer a = parse_answer(c->resp[which], c->len[which]);
    if (a.status != status)
        TAP_FAIL_("request %d: status %d, want %d", which, a.status, status);
    EXPECT_CONTAINS(a.head, "\r\nConnection: close");
    EXPECT(a.content_length == (long)a.body_len);
    if (body != NULL)
        EXPECT_EQ_STR(a.body, body);
}

/* Count lines of /threads; check each is "avt-worker-N idle|busy ...":
 * one per started thread (threads start as tasks need them, and the
 * fixture's one task runs on the first). */
static void check_threads(const char *body)
{
    int lines = 0, busy = 0, seen[NTHREADS] = {0};
    const char *p = body;
    while (p != NULL && *p) {
        int idx = -1;
        char state[8] = "";
        double secs = -1;
        if (sscanf(p, "avt-worker-%d %7s %lfs", &idx, state, &secs) != 3 || idx < 0 ||
            idx >= NTHREADS || secs < 0)
            TAP_FAIL_("bad /threads line: %.80s", p);
        else
            seen[idx]++;
        if (strcmp(state, "busy") == 0) {
            busy++;
            const char *nl = strchr(p, '\n');
            char *line = xstrndup(p, nl ? (size_t)(nl - p) : strlen(p));
            EXPECT_CONTAINS(line, " task_id=busy-1 job_id=job-busy type=slow plugin=gatekeeper");
            free(line);
        } else if (strcmp(state, "idle") != 0) {
            TAP_FAIL_("state %s", state);
        }
        lines++;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    EXPECT_EQ_INT(lines, 1);
    EXPECT_EQ_INT(busy, 1);
    EXPECT_EQ_INT(seen[0], 1);
}

static void serve_and_check(int norchs)
{
    struct fx f;
    ASSERT(fx_up(&f, norchs) == 0);
    struct client c;
    memset(&c, 0, sizeof(c));
    struct admin *a = listen_somewhere(&f, &c.port);
    ASSERT(a != NULL);
    ASSERT(pthread_create(&c.th, NULL, client_main, &c) == 0);
    double end = now_mono() + tmo(60);
    while (!atomic_load(&c.done) && now_mono() < end) {
        ev_run(f.loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    EXPECT(atomic_load(&c.done));
    /* The client gives up on its own (poll timeouts); keep serving until. */
    while (!atomic_load(&c.done)) {
        ev_run(f.loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    pthread_join(c.th, NULL);

    struct answer m = parse_answer(c.resp[R_METRICS], c.len[R_METRICS]);
    EXPECT_EQ_INT(m.status, 200);
    EXPECT_CONTAINS(m.head, "\r\nContent-Type: text/plain; version=0.0.4");
    EXPECT(m.content_length == (long)m.body_len && m.body_len > 1000);
    if (m.body != NULL) {
        struct parsed p;
        parse_exposition(&p, m.body, m.body_len);
        EXPECT_EQ_INT(p.errors, 0);
        EXPECT(value_of(&p, "avtworkerd_slots") == NTHREADS);
        json_decref(p.series);
    }
    struct answer q = parse_answer(c.resp[R_METRICS_QUERY], c.len[R_METRICS_QUERY]);
    EXPECT_EQ_INT(q.status, 200);
    EXPECT_CONTAINS(q.body, "# TYPE avtworkerd_slots gauge\n");
    struct answer h = parse_answer(c.resp[R_HEAD], c.len[R_HEAD]);
    EXPECT_EQ_INT(h.status, 200);
    EXPECT(h.body_len == 0 && h.content_length > 1000); /* counted, not sent */

    if (norchs == 1) {
        check_simple(&c, R_HEALTHZ, 503,
                     "not registered with the orchestrator\n" URL_A
                     ": not registered with the orchestrator (RXON not detected yet)\n");
    } else {
        check_simple(&c, R_HEALTHZ, 503,
                     "down: 0 of 2 orchestrators healthy\n" URL_A
                     ": not registered with the orchestrator (RXON not detected yet)\n" URL_B
                     ": not registered with the orchestrator (RXON not detected yet)\n");
    }
    struct answer t = parse_answer(c.resp[R_THREADS], c.len[R_THREADS]);
    EXPECT_EQ_INT(t.status, 200);
    check_threads(t.body);
    check_simple(&c, R_NOT_FOUND, 404, NULL);
    check_simple(&c, R_POST, 405, NULL);
    EXPECT_CONTAINS(c.resp[R_POST], "\r\nAllow: GET, HEAD\r\n");
    check_simple(&c, R_GARBAGE, 400, "bad request\n");
    check_simple(&c, R_NO_VERSION, 400, "bad request\n");
    check_simple(&c, R_NO_SLASH, 400, "bad request\n");
    check_simple(&c, R_NUL, 400, "bad request\n");
    check_simple(&c, R_TOO_LARGE, 431, NULL);
    check_simple(&c, R_AFTER_FLOOD, 200, NULL);
    EXPECT_EQ_INT(c.evicted, EVICTED);

    for (int i = 0; i < R_COUNT; i++)
        free(c.resp[i]);
    admin_destroy(a);
    admin_destroy(NULL);
    fx_down(&f);
}

TEST(serves_one_orchestrator)
{
    serve_and_check(1);
}

TEST(serves_two_orchestrators)
{
    serve_and_check(2);
}

TEST(a_port_in_use_or_a_bad_address_is_an_error)
{
    struct fx f;
    ASSERT(fx_up(&f, 1) == 0);
    char err[AVT_ERRLEN], addr[64];
    int port;
    struct admin *a = listen_somewhere(&f, &port);
    ASSERT(a != NULL);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    EXPECT(admin_create(f.loop, addr, &f.src, err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "admin: cannot listen on 127.0.0.1:");
    EXPECT_CONTAINS(err, strerror(EADDRINUSE));
    /* Addresses cfg would never hand over (it normalizes [admin] listen);
     * none is guessed at: "[::1:PORT" once bound [::]:PORT, every
     * interface. # is a free port, so that a wrong guess would succeed. */
    const char *bad[] = {"localhost",      "127.0.0.1:0",  "127.0.0.1:70000",
                         "nohost:#",       "1.2.3:#",      "[::1:#",
                         "::1]:#",         "[::1]:",       "[::1]:#x",
                         "127.0.0.1:#x",   "127.0.0.1:+#", "127.0.0.1: #",
                         "127.0.0.1:",     ":#",           "[]:#",
                         "::1:#",          "[::1]#",       "[127.0.0.1]:#",
                         "127.0.0.1:#0000"};
    int free = free_port();
    ASSERT(free > 0);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char which[64];
        const char *hash = strchr(bad[i], '#');
        if (hash != NULL)
            snprintf(which, sizeof(which), "%.*s%d%s", (int)(hash - bad[i]), bad[i], free,
                     hash + 1);
        else
            snprintf(which, sizeof(which), "%s", bad[i]);
        err[0] = '\0';
        struct admin *b = admin_create(f.loop, which, &f.src, err, sizeof(err));
        if (b != NULL)
            TAP_FAIL_("admin_create accepted %s", which);
        admin_destroy(b);
        EXPECT_CONTAINS(err, "admin: cannot listen on");
        EXPECT_CONTAINS(err, "not IPV4:PORT or [IPV6]:PORT");
    }
    admin_destroy(a);
    fx_down(&f);
}

/* ---- The thread dump ---------------------------------------------------------- */

TEST(log_threads_names_every_thread)
{
    struct fx f;
    ASSERT(fx_up(&f, 1) == 0);
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    char path[] = "/tmp/avt-test-admin-log.XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    admin_log_threads(f.pool);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char *log = read_file(path, 1 << 20, NULL);
    unlink(path);
    ASSERT(log != NULL);
    EXPECT_CONTAINS(log, "thread dump: 1 of 1 worker threads busy (threads start as tasks need "
                         "them, up to the 3 slots)");
    EXPECT_CONTAINS(log, " running for ");
    EXPECT_CONTAINS(log, "task_id=busy-1");
    int idle = 0;
    for (const char *p = log; (p = strstr(p, " idle for ")) != NULL; p++)
        idle++;
    EXPECT_EQ_INT(idle, 0);
    free(log);
    fx_down(&f);
}

static void ignore_sigpipe(void) __attribute__((constructor));
static void ignore_sigpipe(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemon does */
}

TAP_MAIN()
