/*
 * warmchild.c - one long-lived child of a persistent type, on the
 * supervisor thread of its pool (warm.c): its spawn (exec's isolation,
 * run_spawn()), the lines written to its stdin, its stdout read line by
 * line and acted on (ready, progress, result; anything else is a protocol
 * error that replaces it), its stderr kept as a tail, its recycling after
 * max_tasks_per_child tasks or over max_rss_mb, and its end: reaped, the
 * task it held failed, its hot-cache entries withdrawn.
 *
 * Hot-cache names are reference-counted process-wide (hot_mu): a model two
 * children hold stays advertised until both are gone, also across a reload
 * (the new plugin instance shares this object's statics with the old).
 */
#include "warm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
double warm_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double warm_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void warm_close(int *fd)
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

void warm_finish(struct warm_pool *p, struct warm_req *r)
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

double warm_backoff(struct warm_pool *p)
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

/* The task of a child that is gone: TIMEOUT_ERROR when its deadline had
 * stopped it, TRANSIENT_ERROR otherwise (another child may succeed). */
void warm_fail_req(struct warm_pool *p, struct warm_req *r, const char *fmt, ...)
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
    warm_finish(p, r);
}

/*
 * The child is gone or must go now: SIGKILL to its group, reap it, fail
 * the task it held. `why` is what we did to it (NULL: it ended on its own).
 */
void wchild_gone(struct warm_pool *p, struct child *c, const char *why)
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
        warm_fail_req(p, r, "%s", msg);
    }
    hot_drop(p, c);
    warm_close(&c->in);
    warm_close(&c->out);
    warm_close(&c->err);
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
    c->restart_at = warm_mono() + (planned ? 0 : warm_backoff(p));
    c->st = C_EMPTY;
    c->pid = -1;
}

/* Let a child go: EOF on its stdin asks it to exit; SIGKILL after the
 * grace. */
void wchild_retire(struct warm_pool *p, struct child *c, const char *fmt, ...)
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
    warm_close(&c->in);
    c->st = C_EXITING;
    c->planned = 1;
    c->kill_at = warm_mono() + p->ty->kill_grace;
}

/* ---- Writing to a child ----------------------------------------------------- */

void wchild_flush(struct warm_pool *p, struct child *c)
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
            warm_close(&c->in);
        }
    }
    (void)p;
}

void wchild_send(struct warm_pool *p, struct child *c, char *line)
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
    wchild_flush(p, c);
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
    wchild_gone(p, c, why);
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
    warm_finish(p, r);
    c->tasks++;
    p->fails = 0;
    c->st = C_IDLE;
    const struct exec_persistent *ps = p->ty->persistent;
    long mb = ps->max_rss_mb > 0 ? rss_mb(c->pid) : -1;
    if (ps->max_tasks > 0 && c->tasks >= ps->max_tasks)
        wchild_retire(p, c,
                      "type %s: warm child pid %d served %ld tasks (max_tasks_per_child): "
                      "recycled",
                      p->ty->name, (int)c->pid, c->tasks);
    else if (mb > ps->max_rss_mb)
        wchild_retire(p, c,
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

void wchild_read_out(struct warm_pool *p, struct child *c, char *buf)
{
    ssize_t n = read(c->out, buf, READ_CHUNK);
    if (n > 0)
        stdout_bytes(p, c, buf, (size_t)n);
    else if (n == 0 || (errno != EINTR && errno != EAGAIN))
        wchild_gone(p, c, NULL);
}

void wchild_read_err(struct warm_pool *p, struct child *c, char *buf)
{
    ssize_t n = read(c->err, buf, READ_CHUNK);
    if (n > 0)
        w_tail_add(p, c, buf, (size_t)n);
    else if (n == 0 || (errno != EINTR && errno != EAGAIN))
        warm_close(&c->err);
}

/* ---- Starting a child ---------------------------------------------------------- */

int warm_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int child_pipes(int pin[2], int pout[2], int perr[2])
{
    pin[0] = pin[1] = pout[0] = pout[1] = perr[0] = perr[1] = -1;
    if (run_pipe(pin) < 0 || run_pipe(pout) < 0 || run_pipe(perr) < 0 ||
        warm_nonblock(pin[1]) < 0 || warm_nonblock(pout[0]) < 0 || warm_nonblock(perr[0]) < 0)
        return -errno;
    return 0;
}

int wchild_spawn(struct warm_pool *p, struct child *c, char *err, size_t errlen)
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
    warm_close(&pin[0]);
    warm_close(&pout[1]);
    warm_close(&perr[1]);
    c->in = pin[1];
    c->out = pout[0];
    c->err = perr[0];
    if (rc < 0) {
        warm_close(&c->in);
        warm_close(&c->out);
        warm_close(&c->err);
        exec_rmtree(c->workdir);
        c->workdir[0] = '\0';
        return rc;
    }
    c->st = C_STARTING;
    c->tasks = 0;
    c->planned = 0;
    c->ready_by = warm_mono() + p->ty->persistent->ready_timeout;
    p->host->log(p->host, NULL, AVT_LOG_INFO, "type %s: started warm child pid %d", p->ty->name,
                 (int)c->pid);
    return 0;
}
