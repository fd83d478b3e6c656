/*
 * warm.c - the long-lived children of a persistent type (a declaration
 * with "persistent": {...}): started by start() before the type is
 * advertised, each holding its model warm across tasks, spoken to in the
 * line protocol of warmline.c (avtworkerd-warm(7)). This file is the
 * pool; one child's spawn, I/O and end are warmchild.c.
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
#include "warm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void respawn(struct warm_pool *p)
{
    char err[EXEC_ERRLEN];
    double now = warm_mono();
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st != C_EMPTY || now < c->restart_at)
            continue;
        if (wchild_spawn(p, c, err, sizeof(err)) == 0)
            continue;
        p->host->log(p->host, NULL, AVT_LOG_ERR, "type %s: cannot start a warm child: %s",
                     p->ty->name, err);
        c->restart_at = now + warm_backoff(p);
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
        warm_real() >= t->deadline)
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
            wchild_gone(p, c, NULL);
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
            warm_fail_req(p, r, "the task's deadline passed while it waited for a free %s child",
                          p->ty->name);
            continue;
        }
        char *line = strdup(r->line);
        if (line == NULL) {
            avt_fail(r->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
            warm_finish(p, r);
            continue;
        }
        c->req = r;
        c->st = C_BUSY;
        c->cancel_sent = 0;
        wchild_send(p, c, line);
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
            wchild_send(p, c, line);
        return;
    }
    if (now < c->stop_by)
        return;
    snprintf(why, sizeof(why),
             "did not answer the cancel within kill_grace_seconds (%g): killed and replaced",
             p->ty->kill_grace);
    wchild_gone(p, c, why);
}

static void timers(struct warm_pool *p)
{
    char why[200];
    double now = warm_mono();
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st == C_STARTING && now >= c->ready_by) {
            snprintf(why, sizeof(why), "sent no ready line within ready_timeout_seconds (%g)",
                     p->ty->persistent->ready_timeout);
            wchild_gone(p, c, why);
        } else if (c->st == C_BUSY) {
            watch_busy(p, c, now);
        } else if (c->st == C_EXITING && now >= c->kill_at) {
            c->planned = 0; /* it ignored EOF on stdin: say so */
            snprintf(why, sizeof(why),
                     "did not exit within kill_grace_seconds (%g) of EOF on its stdin: killed",
                     p->ty->kill_grace);
            wchild_gone(p, c, why);
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
            wchild_read_out(p, c, buf);
        else if (who[i].which == 1 && pfd[i].fd == c->err)
            wchild_read_err(p, c, buf);
        else if (who[i].which == 2 && pfd[i].fd == c->in)
            wchild_flush(p, c);
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
        warm_finish(p, r);
    }
    p->waiting = NULL;
    for (size_t i = 0; i < p->n; i++) {
        struct child *c = &p->kids[i];
        if (c->st == C_STARTING || c->st == C_IDLE || c->st == C_BUSY)
            wchild_retire(p, c, "type %s: warm child pid %d stopped", p->ty->name, (int)c->pid);
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
    warm_close(&p->wake[0]);
    warm_close(&p->wake[1]);
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
    int ok = p->kids != NULL && run_pipe(p->wake) == 0 && warm_nonblock(p->wake[0]) == 0 &&
             warm_nonblock(p->wake[1]) == 0;
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
