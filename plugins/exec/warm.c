/*
 * warm.c - the long-lived children of a persistent type (a declaration
 * with "persistent": {...}): started by start() before the type is
 * advertised, each holding its model warm across tasks, spoken to in the
 * line protocol of warmline.c (avtworkerd-warm(7)).
 *
 * One supervisor thread per type owns the children and every byte to and
 * from them: it forks them (so PR_SET_PDEATHSIG ties them to this thread,
 * which lives until warm_stop()), writes task and cancel lines, reads their
 * stdout line by line and their stderr into a tail, reaps them, restarts
 * them with backoff, recycles them after max_tasks_per_child tasks or once
 * their VmRSS is over max_rss_mb, and watches each running task's
 * cancellation and deadline (a cancel line; SIGKILL to the group and a new
 * child when it is not answered within kill_grace_seconds). A worker
 * thread's handle() only queues its task and sleeps until the supervisor
 * has set the outcome; the task stays valid meanwhile, so the supervisor
 * reports progress and the outcome itself (host functions may run on any
 * thread).
 *
 * Locks: pool.mu guards the queue of new tasks, each task's `done`, the
 * ready count and the start-up error; hot_mu guards the process-wide
 * hot-cache reference counts (a model two children hold stays advertised
 * until both are gone). Neither is held while the other is taken, except
 * that host->hot_cache_add/remove run under hot_mu (they take the daemon's
 * queue lock, never ours).
 */
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 50
#define READ_CHUNK 65536
#define BACKOFF_FIRST 0.1 /* seconds before the first restart after a failure */

enum cstate { C_EMPTY, C_STARTING, C_IDLE, C_BUSY, C_EXITING };
enum wstop { W_NONE, W_CANCEL, W_DEADLINE };

struct warm_req {
    struct avt_task *task;
    char *line; /* the task line */
    int done;   /* under pool.mu */
    enum wstop stop;
    struct warm_req *next;
};

struct child {
    enum cstate st;
    pid_t pid;
    int in, out, err; /* parent ends; -1 when closed */
    char workdir[PATH_MAX];
    char *lbuf; /* the stdout line being read */
    size_t llen, lcap;
    char *wbuf; /* bytes still to write to stdin */
    size_t wlen, woff;
    char *tail; /* ring of the last stderr_tail bytes of stderr */
    size_t tail_pos, tail_len;
    json_t *hot; /* hot-cache names this child holds (added) */
    long tasks;
    struct warm_req *req;
    int cancel_sent, planned;
    double ready_by, stop_by, kill_at, restart_at;
    char why[200]; /* why it is exiting (recycle, stop) */
};

struct warm_pool {
    const struct exec_type *ty;
    const struct avt_host *host;
    const char *work_dir;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake[2];
    /* Under mu. */
    int stopping, starting, nready, start_failed;
    char start_err[EXEC_ERRLEN];
    struct warm_req *queue;
    /* The supervisor's own. */
    struct warm_req *waiting;
    struct child *kids;
    size_t n;
    int fails; /* failures since the last result, for the backoff */
    int stop_begun;
};

static double w_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double w_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void w_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* ---- Hot cache: process-wide reference counts --------------------------- */

static pthread_mutex_t hot_mu = PTHREAD_MUTEX_INITIALIZER;
static json_t *hot_counts; /* name -> number of ready children holding it */

static void hot_ref(const struct avt_host *host, const char *name, int delta)
{
    pthread_mutex_lock(&hot_mu);
    if (hot_counts == NULL)
        hot_counts = json_object();
    json_int_t n = json_integer_value(json_object_get(hot_counts, name)) + delta;
    if (n > 0)
        json_object_set_new(hot_counts, name, json_integer(n));
    else
        json_object_del(hot_counts, name);
    if (delta > 0 && n == 1)
        host->hot_cache_add(host, name);
    else if (delta < 0 && n == 0)
        host->hot_cache_remove(host, name);
    if (json_object_size(hot_counts) == 0) {
        json_decref(hot_counts);
        hot_counts = NULL;
    }
    pthread_mutex_unlock(&hot_mu);
}

static void hot_drop(struct warm_pool *p, struct child *c)
{
    size_t i;
    json_t *v;
    json_array_foreach(c->hot, i, v)
    {
        hot_ref(p->host, json_string_value(v), -1);
    }
    json_decref(c->hot);
    c->hot = NULL;
}

/* The child's names, and the type itself (RXON 1.0b14 advertises the hot
 * types as hot_skills). */
static void hot_take(struct warm_pool *p, struct child *c, json_t *names)
{
    size_t i;
    json_t *v;
    c->hot = json_array();
    json_array_append_new(c->hot, json_string(p->ty->name));
    json_array_foreach(names, i, v)
    {
        if (strcmp(json_string_value(v), p->ty->name) != 0)
            json_array_append(c->hot, v);
    }
    json_array_foreach(c->hot, i, v)
    {
        hot_ref(p->host, json_string_value(v), 1);
    }
}

/* ---- Small helpers --------------------------------------------------------- */

static void finish(struct warm_pool *p, struct warm_req *r)
{
    pthread_mutex_lock(&p->mu);
    r->done = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void w_tail_add(struct warm_pool *p, struct child *c, const char *s, size_t n)
{
    size_t cap = p->ty->stderr_tail;
    if (cap == 0 || c->tail == NULL)
        return;
    if (n > cap) {
        s += n - cap;
        n = cap;
    }
    for (size_t i = 0; i < n; i++) {
        c->tail[c->tail_pos] = s[i];
        c->tail_pos = (c->tail_pos + 1) % cap;
    }
    c->tail_len = c->tail_len + n > cap ? cap : c->tail_len + n;
}

/* The stderr tail as text from its first whole UTF-8 character, without
 * trailing newlines, into buf. */
static const char *tail_text(const struct warm_pool *p, const struct child *c, char *buf,
                             size_t len)
{
    size_t cap = p->ty->stderr_tail, n = c->tail_len < len - 1 ? c->tail_len : len - 1, s = 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = c->tail[(c->tail_pos + cap - n + i) % cap];
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    while (s < n && s < 4 && ((unsigned char)buf[s] & 0xc0) == 0x80)
        s++;
    return buf + s;
}

static void status_text(int st, char *buf, size_t len)
{
    if (WIFSIGNALED(st)) {
        const char *sig = sigabbrev_np(WTERMSIG(st));
        snprintf(buf, len, "was killed by signal %d (SIG%s)", WTERMSIG(st),
                 sig != NULL ? sig : "?");
    } else {
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    }
}

static long rss_mb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb < 0 ? -1 : kb / 1024;
}

static double backoff(struct warm_pool *p)
{
    double d = BACKOFF_FIRST, max = p->ty->persistent->backoff_max;
    for (int i = 0; i < p->fails && d < max; i++)
        d *= 2;
    p->fails++;
    return d < max ? d : max;
}

/* ---- A child's end ---------------------------------------------------------- */

/* Read what is left on stderr once the group is gone (non-blocking). */
static void drain_stderr(struct warm_pool *p, struct child *c)
{
    char buf[4096];
    ssize_t n;
    for (int i = 0; i < 256 && c->err >= 0 && (n = read(c->err, buf, sizeof(buf))) > 0; i++)
        w_tail_add(p, c, buf, (size_t)n);
}

static void fail_req(struct warm_pool *p, struct warm_req *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The task of a child that is gone: TIMEOUT_ERROR when its deadline had
 * stopped it, TRANSIENT_ERROR otherwise (another child may succeed). */
static void fail_req(struct warm_pool *p, struct warm_req *r, const char *fmt, ...)
{
    char msg[EXEC_ERRLEN + 4200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->stop == W_CANCEL)
        avt_fail(r->task, AVT_TRANSIENT_ERROR, "cancelled");
    else
        avt_fail(r->task, r->stop == W_DEADLINE ? AVT_TIMEOUT_ERROR : AVT_TRANSIENT_ERROR, "%s",
                 msg);
    finish(p, r);
}

/*
 * The child is gone or must go now: SIGKILL to its group, reap it, fail
 * the task it held. `why` is what we did to it (NULL: it ended on its own).
 */
static void child_gone(struct warm_pool *p, struct child *c, const char *why)
{
    char st[96], tail[4200], head[EXEC_ERRLEN], msg[EXEC_ERRLEN + 4400];
    int status = 0;
    kill(-c->pid, SIGKILL);
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
        ;
    drain_stderr(p, c);
    status_text(status, st, sizeof(st));
    const char *t = tail_text(p, c, tail, sizeof(tail));
    snprintf(head, sizeof(head), "type %s: warm child pid %d %s%s", p->ty->name, (int)c->pid,
             why != NULL ? why : st,
             c->req != NULL        ? " while running the task"
             : c->st == C_STARTING ? " before its ready line"
                                   : "");
    snprintf(msg, sizeof(msg), "%s%s%s", head, t[0] ? "; stderr: " : "", t);
    int planned = c->planned && c->req == NULL && why == NULL;
    p->host->log(p->host, c->req != NULL ? c->req->task : NULL,
                 planned ? AVT_LOG_INFO : AVT_LOG_WARNING, "%s", planned ? c->why : msg);
    if (c->req != NULL) {
        struct warm_req *r = c->req;
        c->req = NULL;
        fail_req(p, r, "%s", msg);
    }
    hot_drop(p, c);
    w_close(&c->in);
    w_close(&c->out);
    w_close(&c->err);
    if (c->workdir[0] != '\0' && exec_rmtree(c->workdir) != 0)
        p->host->log(p->host, NULL, AVT_LOG_WARNING, "type %s: cannot remove %s: %s", p->ty->name,
                     c->workdir, strerror(errno));
    c->workdir[0] = '\0';
    free(c->wbuf);
    c->wbuf = NULL;
    c->llen = c->wlen = c->woff = c->tail_len = c->tail_pos = 0;
    pthread_mutex_lock(&p->mu);
    if (c->st != C_STARTING && c->st != C_EXITING)
        p->nready--;
    if (c->st == C_STARTING && p->starting && !p->start_failed) {
        p->start_failed = 1;
        snprintf(p->start_err, sizeof(p->start_err), "%.*s", (int)sizeof(p->start_err) - 1, msg);
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    c->restart_at = w_mono() + (planned ? 0 : backoff(p));
    c->st = C_EMPTY;
    c->pid = -1;
}

/* Let a child go: EOF on its stdin asks it to exit; SIGKILL after the
 * grace. */
static void child_retire(struct warm_pool *p, struct child *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void child_retire(struct warm_pool *p, struct child *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
    if (c->st != C_STARTING) {
        pthread_mutex_lock(&p->mu);
        p->nready--;
        pthread_mutex_unlock(&p->mu);
    }
    w_close(&c->in);
    c->st = C_EXITING;
    c->planned = 1;
    c->kill_at = w_mono() + p->ty->kill_grace;
}

/* ---- Writing to a child ----------------------------------------------------- */

static void flush_in(struct warm_pool *p, struct child *c)
{
    while (c->in >= 0 && c->woff < c->wlen) {
        ssize_t n = write(c->in, c->wbuf + c->woff, c->wlen - c->woff);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return;
        } else {
            /* EPIPE: the child closed its stdin or died; its stdout's EOF
             * tells the rest. SIGPIPE is blocked on this thread. */
            sigset_t pipe_set;
            struct timespec zero = {0, 0};
            sigemptyset(&pipe_set);
            sigaddset(&pipe_set, SIGPIPE);
            sigtimedwait(&pipe_set, NULL, &zero);
            w_close(&c->in);
        }
    }
    (void)p;
}

static void send_line(struct warm_pool *p, struct child *c, char *line)
{
    size_t n = strlen(line);
    if (c->woff == c->wlen) {
        free(c->wbuf);
        c->wbuf = line;
        c->wlen = n;
        c->woff = 0;
    } else {
        char *b = realloc(c->wbuf, c->wlen + n);
        if (b != NULL) {
            memcpy(b + c->wlen, line, n);
            c->wbuf = b;
            c->wlen += n;
        }
        free(line);
    }
    flush_in(p, c);
}

/* ---- Reading from a child --------------------------------------------------- */

static void broke(struct warm_pool *p, struct child *c, const char *what, const char *line,
                  size_t len)
{
    char why[EXEC_ERRLEN];
    snprintf(why, sizeof(why), "broke the line protocol (avtworkerd-warm(7)): %s: \"%.*s%s\"", what,
             (int)(len > 80 ? 80 : len), line, len > 80 ? "..." : "");
    p->host->log(p->host, NULL, AVT_LOG_ERR, "type %s: warm child pid %d %s; replacing it",
                 p->ty->name, (int)c->pid, why);
    child_gone(p, c, why);
}

/* The result's data, out of the parsed line: once handed over, nothing on
 * this thread touches its reference count again (the worker thread may
 * free it as soon as the outcome is set). */
static json_t *take_data(struct wline *l)
{
    json_t *data = json_incref(l->data);
    json_object_del(l->root, "data");
    l->data = NULL;
    return data;
}

static void result(struct warm_pool *p, struct child *c, struct wline *l)
{
    struct warm_req *r = c->req;
    struct avt_task *task = r->task;
    c->req = NULL;
    if (r->stop == W_CANCEL)
        avt_fail(task, AVT_TRANSIENT_ERROR, "cancelled");
    else if (r->stop == W_DEADLINE)
        avt_fail(task, AVT_TIMEOUT_ERROR, "stopped: the task's deadline passed");
    else if (l->code != NULL)
        avt_fail(task, l->code, "%s", l->message[0] ? l->message : "(no message)");
    else if (strcmp(l->status, "success") == 0)
        avt_succeed(task, take_data(l));
    else
        avt_complete(task, l->status, take_data(l));
    finish(p, r);
    c->tasks++;
    p->fails = 0;
    c->st = C_IDLE;
    const struct exec_persistent *ps = p->ty->persistent;
    long mb = ps->max_rss_mb > 0 ? rss_mb(c->pid) : -1;
    if (ps->max_tasks > 0 && c->tasks >= ps->max_tasks)
        child_retire(p, c,
                     "type %s: warm child pid %d served %ld tasks (max_tasks_per_child): "
                     "recycled",
                     p->ty->name, (int)c->pid, c->tasks);
    else if (mb > ps->max_rss_mb)
        child_retire(p, c,
                     "type %s: warm child pid %d uses %ld MiB (VmRSS), over max_rss_mb "
                     "%ld: recycled",
                     p->ty->name, (int)c->pid, mb, ps->max_rss_mb);
}

static void ready(struct warm_pool *p, struct child *c, struct wline *l)
{
    hot_take(p, c, l->hot_cache);
    char *names = json_dumps(c->hot, JSON_COMPACT);
    p->host->log(p->host, NULL, AVT_LOG_INFO, "type %s: warm child pid %d ready (hot cache %s)",
                 p->ty->name, (int)c->pid, names != NULL ? names : "?");
    free(names);
    c->st = C_IDLE;
    pthread_mutex_lock(&p->mu);
    p->nready++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* One whole line; 0, or -1 when the child is gone. */
static int on_line(struct warm_pool *p, struct child *c, const char *s, size_t len)
{
    struct wline l;
    char err[256];
    if (c->st == C_EXITING)
        return 0;
    if (wline_parse(s, len, &l, err, sizeof(err)) < 0) {
        wline_free(&l);
        broke(p, c, err, s, len);
        return -1;
    }
    const char *bad = NULL;
    if (c->st == C_STARTING && l.kind != WLINE_READY)
        bad = "the first line must be {\"type\": \"ready\"}";
    else if (c->st == C_IDLE)
        bad = "a line while it runs no task";
    else if (c->st == C_BUSY && l.kind == WLINE_READY)
        bad = "a second ready line";
    else if (c->st == C_BUSY && strcmp(l.id, c->req->task->id) != 0)
        bad = "a line for another task than the one it runs";
    if (bad != NULL) {
        wline_free(&l);
        broke(p, c, bad, s, len);
        return -1;
    }
    if (l.kind == WLINE_READY)
        ready(p, c, &l);
    else if (l.kind == WLINE_PROGRESS && !c->cancel_sent)
        avt_progress(c->req->task,
                     l.percent < 0     ? 0
                     : l.percent > 100 ? 100
                                       : l.percent,
                     "%s", l.message != NULL ? l.message : "");
    else if (l.kind == WLINE_RESULT)
        result(p, c, &l);
    wline_free(&l);
    return 0;
}

static int lbuf_add(struct child *c, const char *s, size_t n, size_t max)
{
    if (c->llen + n > max)
        return -1;
    if (c->llen + n > c->lcap) {
        size_t cap = (c->llen + n) * 2 > max ? max : (c->llen + n) * 2;
        char *b = realloc(c->lbuf, cap);
        if (b == NULL)
            return -1;
        c->lbuf = b;
        c->lcap = cap;
    }
    memcpy(c->lbuf + c->llen, s, n);
    c->llen += n;
    return 0;
}

/* Bytes from stdout, cut into lines. */
static void stdout_bytes(struct warm_pool *p, struct child *c, const char *s, size_t n)
{
    size_t max = (size_t)p->ty->persistent->max_line;
    while (n > 0 && c->st != C_EMPTY) {
        const char *nl = memchr(s, '\n', n);
        size_t k = nl != NULL ? (size_t)(nl - s) : n;
        if (lbuf_add(c, s, k, max) < 0) {
            char what[128];
            snprintf(what, sizeof(what), "a line longer than max_line_bytes (%ld)",
                     p->ty->persistent->max_line);
            broke(p, c, what, c->lbuf != NULL ? c->lbuf : "", c->llen);
            return;
        }
        if (nl == NULL)
            return;
        size_t len = c->llen;
        c->llen = 0;
        if (on_line(p, c, c->lbuf != NULL ? c->lbuf : "", len) < 0)
            return;
        s += k + 1;
        n -= k + 1;
    }
}

static void read_out(struct warm_pool *p, struct child *c, char *buf)
{
    ssize_t n = read(c->out, buf, READ_CHUNK);
    if (n > 0)
        stdout_bytes(p, c, buf, (size_t)n);
    else if (n == 0 || (errno != EINTR && errno != EAGAIN))
        child_gone(p, c, NULL);
}

static void read_err(struct warm_pool *p, struct child *c, char *buf)
{
    ssize_t n = read(c->err, buf, READ_CHUNK);
    if (n > 0)
        w_tail_add(p, c, buf, (size_t)n);
    else if (n == 0 || (errno != EINTR && errno != EAGAIN))
        w_close(&c->err);
}

/* ---- Starting a child ---------------------------------------------------------- */

static int nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int child_pipes(int pin[2], int pout[2], int perr[2])
{
    pin[0] = pin[1] = pout[0] = pout[1] = perr[0] = perr[1] = -1;
    if (run_pipe(pin) < 0 || run_pipe(pout) < 0 || run_pipe(perr) < 0 || nonblock(pin[1]) < 0 ||
        nonblock(pout[0]) < 0 || nonblock(perr[0]) < 0)
        return -errno;
    return 0;
}

static int spawn_child(struct warm_pool *p, struct child *c, char *err, size_t errlen)
{
    int pin[2], pout[2], perr[2], rc;
    char **env = NULL;
    snprintf(c->workdir, sizeof(c->workdir), "%s/avt-warm-XXXXXX", p->work_dir);
    if (mkdtemp(c->workdir) == NULL) {
        snprintf(err, errlen, "cannot create a directory in %s: %s", p->work_dir, strerror(errno));
        c->workdir[0] = '\0';
        return -errno;
    }
    rc = child_pipes(pin, pout, perr);
    if (rc < 0)
        snprintf(err, errlen, "pipe: %s", strerror(-rc));
    else if ((env = exec_env(p->ty, c->workdir)) == NULL)
        rc = -ENOMEM;
    if (rc == 0) {
        int w[3] = {pout[1], perr[1], -1};
        rc = run_spawn(p->ty, pin[0], w, c->workdir, p->ty->argv, env, &c->pid, err, errlen);
    }
    exec_env_free(env);
    w_close(&pin[0]);
    w_close(&pout[1]);
    w_close(&perr[1]);
    c->in = pin[1];
    c->out = pout[0];
    c->err = perr[0];
    if (rc < 0) {
        w_close(&c->in);
        w_close(&c->out);
        w_close(&c->err);
        exec_rmtree(c->workdir);
        c->workdir[0] = '\0';
        return rc;
    }
    c->st = C_STARTING;
    c->tasks = 0;
    c->planned = 0;
    c->ready_by = w_mono() + p->ty->persistent->ready_timeout;
    p->host->log(p->host, NULL, AVT_LOG_INFO, "type %s: started warm child pid %d", p->ty->name,
                 (int)c->pid);
    return 0;
}

static void respawn(struct warm_pool *p)
{
    char err[EXEC_ERRLEN];
    double now = w_mono();
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st != C_EMPTY || now < c->restart_at)
            continue;
        if (spawn_child(p, c, err, sizeof(err)) == 0)
            continue;
        p->host->log(p->host, NULL, AVT_LOG_ERR, "type %s: cannot start a warm child: %s",
                     p->ty->name, err);
        c->restart_at = now + backoff(p);
        pthread_mutex_lock(&p->mu);
        if (p->starting && !p->start_failed) {
            p->start_failed = 1;
            snprintf(p->start_err, sizeof(p->start_err), "cannot start a warm child: %.440s", err);
            pthread_cond_broadcast(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
    }
}

/* ---- Tasks ----------------------------------------------------------------------- */

static enum wstop w_stop_reason(const struct avt_task *t)
{
    if (avt_is_cancelled(t))
        return W_CANCEL;
    if (t->struct_size >= offsetof(struct avt_task, deadline) + sizeof(double) && t->deadline > 0 &&
        w_real() >= t->deadline)
        return W_DEADLINE;
    return W_NONE;
}

/* 1 once the child has exited (not reaped yet: waitid WNOWAIT). */
static int has_exited(const struct child *c)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    return waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == c->pid;
}

/* An idle child that is still alive: one that died while idle costs no
 * task (it is reaped and replaced here). */
static struct child *idle_child(struct warm_pool *p)
{
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st == C_IDLE && has_exited(c))
            child_gone(p, c, NULL);
        else if (c->st == C_IDLE)
            return c;
    }
    return NULL;
}

/* Tasks that wait for a child: stopped ones end here; the oldest go to
 * idle children. */
static void assign(struct warm_pool *p)
{
    struct warm_req **pp = &p->waiting, *r;
    while ((r = *pp) != NULL) {
        enum wstop why = w_stop_reason(r->task);
        struct child *c = why == W_NONE ? idle_child(p) : NULL;
        if (why == W_NONE && c == NULL)
            break;
        *pp = r->next;
        if (why != W_NONE) {
            r->stop = why;
            fail_req(p, r, "the task's deadline passed while it waited for a free %s child",
                     p->ty->name);
            continue;
        }
        char *line = strdup(r->line);
        if (line == NULL) {
            avt_fail(r->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
            finish(p, r);
            continue;
        }
        c->req = r;
        c->st = C_BUSY;
        c->cancel_sent = 0;
        send_line(p, c, line);
    }
}

static void watch_busy(struct warm_pool *p, struct child *c, double now)
{
    char why[200];
    if (!c->cancel_sent) {
        enum wstop s = w_stop_reason(c->req->task);
        char *line;
        if (s == W_NONE)
            return;
        c->req->stop = s;
        c->cancel_sent = 1;
        c->stop_by = now + p->ty->kill_grace;
        line = wline_cancel(c->req->task->id, s == W_CANCEL ? "cancelled" : "deadline");
        if (line != NULL)
            send_line(p, c, line);
        return;
    }
    if (now < c->stop_by)
        return;
    snprintf(why, sizeof(why),
             "did not answer the cancel within kill_grace_seconds (%g): killed and replaced",
             p->ty->kill_grace);
    child_gone(p, c, why);
}

static void timers(struct warm_pool *p)
{
    char why[200];
    double now = w_mono();
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st == C_STARTING && now >= c->ready_by) {
            snprintf(why, sizeof(why), "sent no ready line within ready_timeout_seconds (%g)",
                     p->ty->persistent->ready_timeout);
            child_gone(p, c, why);
        } else if (c->st == C_BUSY) {
            watch_busy(p, c, now);
        } else if (c->st == C_EXITING && now >= c->kill_at) {
            c->planned = 0; /* it ignored EOF on stdin: say so */
            snprintf(why, sizeof(why),
                     "did not exit within kill_grace_seconds (%g) of EOF on its stdin: killed",
                     p->ty->kill_grace);
            child_gone(p, c, why);
        }
    }
}

/* ---- The supervisor thread ---------------------------------------------------- */

static void poll_round(struct warm_pool *p, char *buf)
{
    struct pollfd pfd[1 + 3 * 64];
    struct {
        struct child *c;
        int which;
    } who[1 + 3 * 64];
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){p->wake[0], POLLIN, 0};
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        int fds[3] = {c->out, c->err, c->woff < c->wlen ? c->in : -1};
        for (int k = 0; k < 3; k++) {
            if (c->st == C_EMPTY || fds[k] < 0)
                continue;
            who[n].c = c;
            who[n].which = k;
            pfd[n++] = (struct pollfd){fds[k], k == 2 ? POLLOUT : POLLIN, 0};
        }
    }
    if (poll(pfd, n, POLL_MS) <= 0)
        return;
    if (pfd[0].revents != 0)
        while (read(p->wake[0], buf, 256) > 0)
            ;
    for (nfds_t i = 1; i < n; i++) {
        struct child *c = who[i].c;
        /* A child gone earlier in this round has other fds now (or none). */
        if (pfd[i].revents == 0 || c->st == C_EMPTY)
            continue;
        if (who[i].which == 0 && pfd[i].fd == c->out)
            read_out(p, c, buf);
        else if (who[i].which == 1 && pfd[i].fd == c->err)
            read_err(p, c, buf);
        else if (who[i].which == 2 && pfd[i].fd == c->in)
            flush_in(p, c);
    }
}

/* Take the tasks handle() queued; 1 once the pool stops. */
static int take_queue(struct warm_pool *p)
{
    struct warm_req **tail = &p->waiting;
    while (*tail != NULL)
        tail = &(*tail)->next;
    pthread_mutex_lock(&p->mu);
    *tail = p->queue;
    p->queue = NULL;
    int stopping = p->stopping;
    pthread_mutex_unlock(&p->mu);
    return stopping;
}

static void begin_stop(struct warm_pool *p)
{
    for (struct warm_req *r = p->waiting, *next; r != NULL; r = next) {
        next = r->next;
        avt_fail(r->task, AVT_TRANSIENT_ERROR, "the %s children are stopping", p->ty->name);
        finish(p, r);
    }
    p->waiting = NULL;
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st == C_STARTING || c->st == C_IDLE || c->st == C_BUSY)
            child_retire(p, c, "type %s: warm child pid %d stopped", p->ty->name, (int)c->pid);
    }
    p->stop_begun = 1;
}

static int all_empty(const struct warm_pool *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->kids[i].st != C_EMPTY)
            return 0;
    return 1;
}

static void *warm_main(void *arg)
{
    struct warm_pool *p = arg;
    sigset_t all;
    char *buf = malloc(READ_CHUNK);
    /* Signals are the daemon's main thread's business; SIGPIPE from a
     * write to a dead child becomes EPIPE. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        int stopping = take_queue(p);
        if (stopping && !p->stop_begun)
            begin_stop(p);
        if (stopping && all_empty(p))
            break;
        if (!stopping)
            respawn(p);
        if (buf != NULL)
            assign(p);
        timers(p);
        if (buf != NULL)
            poll_round(p, buf);
        else
            poll(NULL, 0, POLL_MS);
    }
    free(buf);
    return NULL;
}

/* ---- The interface ------------------------------------------------------------- */

static void wake(struct warm_pool *p)
{
    char b = 1;
    while (write(p->wake[1], &b, 1) < 0 && errno == EINTR)
        ;
}

static void pool_free(struct warm_pool *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->kids[i].lbuf);
        free(p->kids[i].wbuf);
        free(p->kids[i].tail);
    }
    free(p->kids);
    w_close(&p->wake[0]);
    w_close(&p->wake[1]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static struct warm_pool *pool_new(const struct exec_type *ty, const struct avt_host *host,
                                  const char *work_dir)
{
    struct warm_pool *p = calloc(1, sizeof(*p));
    pthread_condattr_t ca;
    if (p == NULL)
        return NULL;
    p->ty = ty;
    p->host = host;
    p->work_dir = work_dir;
    p->n = (size_t)ty->persistent->children;
    p->wake[0] = p->wake[1] = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    p->kids = calloc(p->n, sizeof(*p->kids));
    int ok = p->kids != NULL && run_pipe(p->wake) == 0 && nonblock(p->wake[0]) == 0 &&
             nonblock(p->wake[1]) == 0;
    for (size_t i = 0; ok && i < p->n; i++) {
        struct child *c = &p->kids[i];
        c->in = c->out = c->err = c->pid = -1;
        c->tail = malloc(ty->stderr_tail + 1);
        ok = c->tail != NULL;
    }
    if (!ok) {
        if (p->kids == NULL)
            p->n = 0;
        pool_free(p);
        return NULL;
    }
    p->starting = 1;
    return p;
}

/* Until every child is ready, one failed, or well past the ready timeout
 * (the supervisor enforces it; this is only a backstop). */
static int wait_ready(struct warm_pool *p, char *err, size_t errlen)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)p->ty->persistent->ready_timeout + 10;
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    while (p->nready < (int)p->n && !p->start_failed && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&p->cv, &p->mu, &until);
    if (p->start_failed)
        snprintf(err, errlen, "%s", p->start_err);
    else if (p->nready < (int)p->n)
        snprintf(err, errlen, "type %s: the warm children are not ready", p->ty->name);
    rc = p->nready == (int)p->n && !p->start_failed ? 0 : -EINVAL;
    p->starting = 0;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

struct warm_pool *warm_start(const struct exec_type *ty, const struct avt_host *host,
                             const char *work_dir, char *err, size_t errlen)
{
    struct warm_pool *p = pool_new(ty, host, work_dir);
    if (p == NULL) {
        snprintf(err, errlen, "type %s: out of memory", ty->name);
        return NULL;
    }
    int rc = pthread_create(&p->thread, NULL, warm_main, p);
    if (rc != 0) {
        snprintf(err, errlen, "type %s: cannot create a thread: %s", ty->name, strerror(rc));
        pool_free(p);
        return NULL;
    }
    if (wait_ready(p, err, errlen) < 0) {
        warm_stop(p);
        return NULL;
    }
    return p;
}

void warm_run(struct warm_pool *p, struct avt_task *task)
{
    struct warm_req r = {.task = task};
    r.line = wline_task(task);
    if (r.line == NULL) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory encoding the task line");
        return;
    }
    pthread_mutex_lock(&p->mu);
    r.next = NULL;
    struct warm_req **tail = &p->queue;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = &r;
    pthread_mutex_unlock(&p->mu);
    wake(p);
    pthread_mutex_lock(&p->mu);
    while (!r.done)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    free(r.line);
}

void warm_stop(struct warm_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_mutex_unlock(&p->mu);
    wake(p);
    pthread_join(p->thread, NULL);
    pool_free(p);
}
