/*
 * daemon.c - serving mode: wires the pool, the plugins, the HTTP client and
 * the protocol client to one libev loop, and runs the process lifecycle:
 * signals, the drain, deadlines, reload and the systemd notifications.
 *
 * Worker threads never touch the loop's state: the pool queues their
 * events (completion, progress, hot-cache change) and wakes the loop with
 * an ev_async; on_pool_events() then hands each to the protocol client.
 *
 * Drain (SIGTERM or SIGINT), in phases, each bounded by drain_timer:
 *   DRAINING   stop polling, heartbeat "offline" with no skills, keep
 *              delivering results and heartbeating while running tasks
 *              finish, for at most shutdown_timeout;
 *   CANCELLING the tasks still running are cancelled (TASK_CANCEL_SHUTDOWN)
 *              and get cancel_grace seconds to return;
 *   FLUSHING   every task still not finished is given up on: reported as
 *              TRANSIENT_ERROR so that the orchestrator retries it at once
 *              instead of waiting for its timeout (orch_abandon: built from
 *              the task's ids only, the late DONE is dropped); the results
 *              get FLUSH_LIMIT seconds to be delivered.
 * A long-poll in flight when the drain begins is let finish (orch_drain:
 * aborting it can lose the task the orchestrator hands out for it), even
 * past FLUSHING's end when the drain is shorter than its hold; a task it
 * brings while DRAINING runs like the others, one it brings later is
 * answered TRANSIENT_ERROR at once without running (work_decline).
 * The loop ends as soon as nothing is left: no task, no result, no poll
 * in flight. Every further signal moves on to the next phase at once. The
 * exit status is 0, or EXIT_RESTART when the drain was started because
 * handlers were stuck.
 *
 * Deadlines: a tick calls orch_supervise(), which cancels a task at its
 * type's timeout and gives up on it cancel_grace later. A handler given up
 * on keeps its thread (and its global slot, so that capacity stays right)
 * until it returns. With restart_on_stuck the daemon then drains and exits
 * EXIT_RESTART, which systemd's Restart=on-failure turns into a restart
 * that brings the threads back.
 *
 * Reload (SIGHUP) runs to completion on the loop thread, so two reloads
 * never overlap; SIGHUPs arriving meanwhile are coalesced by libev into one
 * more reload. The new cfg and plugin set are built completely before
 * anything is switched; on any error the old ones stay. The old plugin set
 * (and the cfg loaded with it) is "retired": destroyed only once no task
 * runs with one of its plugins any more (orch_uses_plugins()).
 */
#include "daemon.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <ev.h>

#include "admin.h"
#include "cfg.h"
#include "evq.h"
#include "exitguard.h"
#include "http.h"
#include "journal.h"
#include "ledger.h"
#include "log.h"
#include "notify.h"
#include "orch.h"
#include "orchset.h"
#include "outbox.h"
#include "plugin.h"
#include "pool.h"
#include "sign.h"
#include "spool.h"
#include "task.h"
#include "taskstats.h"
#include "util.h"
#include "work.h"

#define FLUSH_LIMIT 10.0   /* seconds to deliver the last results */
#define LEAVE_LIMIT 2.0    /* seconds for the last ("offline") heartbeats */
#define TICK 0.25          /* deadline supervision and STATUS= */
#define STATUS_MIN_GAP 1.0 /* at most one STATUS= per second */
#define STATUS_MAX 1024

enum phase { RUNNING = 0, DRAINING, CANCELLING, FLUSHING };

/* A plugin set replaced by a reload, with the cfg it was loaded with. */
struct retired {
    struct plugin_set *plugins;
    struct cfg *cfg; /* owned; NULL for the cfg of daemon_run()'s caller */
    struct retired *next;
};

struct daemon {
    struct ev_loop *loop;
    struct cfg *cfg; /* current */
    int cfg_owned;   /* cfg came from a reload (else it is the caller's) */
    struct evq *evq; /* worker threads -> loop */
    struct pool *pool;
    struct plugin_set *plugins; /* current */
    struct retired *retired;
    struct http *http;
    struct orchset *orchs;       /* one session per orchestrator (orchset.h) */
    struct ledger *ledger;       /* the tasks the worker holds */
    struct work *work;           /* a task's way from poll to result */
    struct outbox *outbox;       /* results until acknowledged */
    struct taskstats *taskstats; /* finished tasks, for the metrics */
    struct spool *spool;         /* state_dir/spool: undelivered results */
    struct journal *journal;     /* state_dir/journal: tasks held, for crash reports */
    struct admin *admin;         /* the admin endpoint; NULL when [admin] listen is off */
    struct admin_sources admin_src;
    struct pool_thread_info *threads; /* the tick's snapshot of the worker threads */
    size_t nthreads;
    ev_signal sigusr1; /* thread dump */
    ev_async wake;
    ev_signal sigterm, sigint, sighup;
    ev_timer drain_timer, tick, watchdog, leave_timer;
    ev_check idle_check;
    enum phase phase;
    int exit_code;
    int ready;   /* READY=1 sent */
    double left; /* now_mono() when the last heartbeats went out; 0: not yet */
    char status[STATUS_MAX];
    double status_at;
};

/* Static, not on daemon_run()'s stack: a handler given up on may still
 * wake the loop after daemon_run() returned. */
static struct daemon the_daemon;
static const char *plugin_dir_override;

void daemon_set_plugin_dir_override(const char *dir)
{
    plugin_dir_override = dir;
}

/* ---- systemd notifications ---------------------------------------------- */

static unsigned long long mono_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
}

static const char *phase_name(const struct daemon *d)
{
    switch (d->phase) {
    case RUNNING:
        return orchset_registered(d->orchs) > 0 ? "serving" : "registering";
    case DRAINING:
        return "draining";
    case CANCELLING:
        return "draining, tasks cancelled";
    case FLUSHING:
        return "draining, delivering the last results";
    }
    fatalx("daemon: unknown phase %d", (int)d->phase);
}

/* What the polls are waiting for, after status_text()'s first part:
 * "; polling paused until ... (why)" for each orchestrator whose polls
 * pause after a failure (named when there are several), and while
 * draining "; waiting for the long-poll in flight (N s)". Returns the new
 * length. */
static size_t status_polls(struct daemon *d, char *buf, size_t len, size_t o)
{
    size_t n = orchset_count(d->orchs);
    double hold = 0;
    for (size_t i = 0; i < n && o < len; i++) {
        const struct orch *s = orchset_get(d->orchs, i);
        struct orch_stats st;
        char pause[160];
        orch_get_stats(s, &st);
        if (orch_poll_pause_text(&st, pause, sizeof(pause)))
            o += (size_t)snprintf(buf + o, len - o, "; %s%s%s", n > 1 ? orch_name(s) : "",
                                  n > 1 ? ": " : "", pause);
        if (orch_poll_hold_end(s) > hold)
            hold = orch_poll_hold_end(s);
    }
    if (o < len && d->phase != RUNNING && hold > 0)
        o += (size_t)snprintf(buf + o, len - o, "; waiting for the long-poll in flight (%.0f s)",
                              hold > now_mono() ? hold - now_mono() : 0);
    return o;
}

/* "serving: 3/8 slots busy; echo 2, t_conc 1/1 (2 waiting); 1 stuck" */
static void status_text(struct daemon *d, char *buf, size_t len)
{
    struct ledger_stats st;
    struct pool_stats ps;
    struct pool_type_stats ts[32];
    ledger_get_stats(d->ledger, &st);
    pool_get_stats(d->pool, &ps);
    size_t n = pool_get_type_stats(d->pool, ts, ARRAY_LEN(ts));
    size_t o =
        (size_t)snprintf(buf, len, "%s: %d/%d slots busy", phase_name(d), ps.inflight, ps.threads);
    const char *sep = "; ";
    for (size_t i = 0; i < n && o < len; i++) {
        if (ts[i].running == 0 && ts[i].waiting == 0)
            continue;
        o += (size_t)snprintf(buf + o, len - o, "%s%s %d", sep, ts[i].type, ts[i].running);
        if (o < len && ts[i].limit > 0)
            o += (size_t)snprintf(buf + o, len - o, "/%d", ts[i].limit);
        if (o < len && ts[i].waiting > 0)
            o += (size_t)snprintf(buf + o, len - o, " (%d waiting)", ts[i].waiting);
        sep = ", ";
    }
    if (o < len && st.stuck > 0)
        o += (size_t)snprintf(buf + o, len - o, "; %d stuck", st.stuck);
    int err = d->spool != NULL ? spool_trouble(d->spool, NULL) : 0;
    if (o < len && err != 0)
        o += (size_t)snprintf(buf + o, len - o, "; spool cannot be written (%s): no new tasks",
                              strerror(err));
    if (o < len)
        status_polls(d, buf, len, o);
}

/* STATUS= when it changed, at most once per STATUS_MIN_GAP unless forced
 * (the tick sends a change held back). */
static void status_update(struct daemon *d, int force)
{
    char buf[STATUS_MAX];
    if (!notify_enabled())
        return;
    status_text(d, buf, sizeof(buf));
    if (strcmp(buf, d->status) == 0 || (!force && now_mono() - d->status_at < STATUS_MIN_GAP))
        return;
    memcpy(d->status, buf, sizeof(buf));
    d->status_at = now_mono();
    notify_sendf("STATUS=%s", buf);
}

/* The loop is alive (this runs from it) and not every thread is held by a
 * stuck handler. */
static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    struct pool_stats ps;
    struct ledger_stats ls;
    pool_get_stats(d->pool, &ps);
    ledger_get_stats(d->ledger, &ls);
    if (ls.stuck < ps.threads)
        notify_send("WATCHDOG=1");
    else
        log_err("watchdog: every worker thread is held by a stuck handler; not telling systemd "
                "that all is well");
}

/* Tasks in the pool, not counting the ones given up on. */
static int active_tasks(const struct daemon *d)
{
    struct ledger_stats st;
    ledger_get_stats(d->ledger, &st);
    return st.active;
}

/* 1 while a task runs with a plugin of `set`, or a poll sent when it was in
 * force is in flight (its task may need one of them, work_accept()). */
static int plugins_in_use(const struct daemon *d, const struct plugin_set *set)
{
    if (ledger_uses_plugins(d->ledger, set) > 0)
        return 1;
    for (size_t i = 0; i < orchset_count(d->orchs); i++) {
        if (orch_poll_uses(orchset_get(d->orchs, i), set))
            return 1;
    }
    return 0;
}

/* ---- The drain ------------------------------------------------------------ */

/* 1 while a long-poll is in flight: the drain lets it finish (orch_drain). */
static int polling(const struct daemon *d)
{
    for (size_t i = 0; i < orchset_count(d->orchs); i++) {
        if (orch_poll_hold_end(orchset_get(d->orchs, i)) > 0)
            return 1;
    }
    return 0;
}

/* Seconds until every long-poll in flight has ended at the latest (it is
 * given up then, orch_drain), a little more; 0 when none is in flight. */
static double poll_wait(const struct daemon *d)
{
    double last = 0;
    for (size_t i = 0; i < orchset_count(d->orchs); i++) {
        double end = orch_poll_hold_end(orchset_get(d->orchs, i));
        last = end > last ? end : last;
    }
    return last > 0 ? last + ORCH_DRAIN_POLL_MARGIN + 0.5 - now_mono() : 0;
}

static void drain_extend(struct daemon *d, double seconds)
{
    notify_sendf("EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)((seconds + 5.0) * 1e6));
    status_update(d, 1);
}

static void drain_timer_after(struct daemon *d, double delay)
{
    ev_timer_stop(d->loop, &d->drain_timer);
    ev_timer_set(&d->drain_timer, delay, 0.);
    ev_timer_start(d->loop, &d->drain_timer);
}

static void drain_begin(struct daemon *d, int exit_code)
{
    const struct cfg *c = d->cfg;
    d->phase = DRAINING;
    d->exit_code = exit_code;
    for (size_t i = 0; i < orchset_count(d->orchs); i++)
        orch_drain(orchset_get(d->orchs, i));
    notify_send("STOPPING=1");
    drain_extend(d, c->shutdown_timeout + c->cancel_grace + FLUSH_LIMIT);
    drain_timer_after(d, c->shutdown_timeout);
}

static void on_drain_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct daemon *d = w->data;
    const struct cfg *c = d->cfg;
    switch (d->phase) {
    case RUNNING:
        return;
    case DRAINING:
        log_warn("shutdown: %d task(s) still running; asking them to stop (%g s grace)",
                 active_tasks(d), c->cancel_grace);
        ledger_cancel_all(d->ledger, TASK_CANCEL_SHUTDOWN);
        d->phase = CANCELLING;
        drain_extend(d, c->cancel_grace + FLUSH_LIMIT);
        drain_timer_after(d, c->cancel_grace);
        return;
    case CANCELLING:
        ledger_abandon_all(d->ledger, AVT_TRANSIENT_ERROR,
                           "worker shutting down: task did not finish in time");
        d->phase = FLUSHING;
        drain_extend(d, FLUSH_LIMIT);
        drain_timer_after(d, FLUSH_LIMIT);
        return;
    case FLUSHING:
        if (poll_wait(d) > 0) { /* a short drain: the long-poll still decides */
            drain_extend(d, poll_wait(d));
            drain_timer_after(d, poll_wait(d));
            return;
        }
        log_err("shutdown: giving up on undelivered results; the orchestrator's timeout covers "
                "them");
        ev_break(loop, EVBREAK_ALL);
        return;
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    if (d->phase != RUNNING) {
        log_notice("%s again: shortening the drain", strsignal(w->signum));
        if (d->phase != FLUSHING)
            drain_timer_after(d, 0.);
        return;
    }
    log_notice("%s: draining (%d task(s) running, up to %g s)", strsignal(w->signum),
               active_tasks(d), d->cfg->shutdown_timeout);
    drain_begin(d, 0);
}

/* ---- Reload ------------------------------------------------------------- */

/* Plugin sets no task runs with any more are unloaded. */
static void retired_reap(struct daemon *d, int all)
{
    struct retired **pp = &d->retired;
    while (*pp != NULL) {
        struct retired *r = *pp;
        if (!all && plugins_in_use(d, r->plugins)) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        log_info("reload: plugins of the previous configuration unloaded");
        plugin_set_destroy(r->plugins);
        cfg_destroy(r->cfg);
        free(r);
    }
}

static void keep_str(char **now, const char *before, const char *what)
{
    if (strcmp(*now, before) == 0)
        return;
    log_warn("reload: %s changed; it takes effect at the next restart", what);
    free(*now);
    *now = xstrdup(before);
}

/* What the running daemon cannot change: kept as it was. */
static void keep_identity(const struct cfg *old, struct cfg *c)
{
    if (plugin_dir_override != NULL) {
        free(c->plugin_dir);
        c->plugin_dir = xstrdup(plugin_dir_override);
    }
    keep_str(&c->url, old->url, "[orchestrator] url");
    keep_str(&c->worker_id, old->worker_id, "[worker] id");
    keep_str(&c->state_dir, old->state_dir, "[worker] state_dir");
    if (c->batch_scheduling != old->batch_scheduling) {
        log_warn("reload: batch_scheduling changed; it takes effect at the next restart");
        c->batch_scheduling = old->batch_scheduling;
    }
    if (c->max_concurrent_tasks != old->max_concurrent_tasks) {
        log_warn("reload: max_concurrent_tasks changed; it takes effect at the next restart");
        c->max_concurrent_tasks = old->max_concurrent_tasks;
    }
}

/* Build the new cfg and plugin set; 0, or -errno with nothing changed. */
static int reload_load(struct daemon *d, struct cfg **cfgp, struct plugin_set **setp)
{
    char err[AVT_ERRLEN];
    int rc = cfg_load(d->cfg->path, cfgp, err, sizeof(err));
    if (rc < 0) {
        log_err("reload rejected, the running configuration stays: %s", err);
        return rc;
    }
    keep_identity(d->cfg, *cfgp);
    rc = plugin_set_load((*cfgp)->plugin_dir, *cfgp, d->evq, setp, err, sizeof(err));
    if (rc < 0) {
        log_err("reload rejected, the running configuration and plugins stay: %s", err);
        cfg_destroy(*cfgp);
        *cfgp = NULL;
    }
    return rc;
}

static void daemon_reload(struct daemon *d)
{
    struct cfg *c = NULL;
    struct plugin_set *set = NULL;
    notify_sendf("RELOADING=1\nMONOTONIC_USEC=%llu", mono_usec());
    log_notice("SIGHUP: reloading %s and the plugins of %s",
               d->cfg->path != NULL ? d->cfg->path : "the environment", d->cfg->plugin_dir);
    if (reload_load(d, &c, &set) == 0) {
        struct retired *r = xcalloc(1, sizeof(*r));
        r->plugins = d->plugins;
        r->cfg = d->cfg_owned ? d->cfg : NULL;
        r->next = d->retired;
        d->retired = r;
        if (c->log_level != d->cfg->log_level || c->log_format != d->cfg->log_format)
            log_init(c->log_level, (enum log_format)c->log_format);
        pool_set_limits(d->pool, c);
        http_set_compressed(d->http, c->compressed_answers);
        orchset_reconfigure(d->orchs, c, set);
        work_reconfigure(d->work, c, set);
        outbox_reconfigure(d->outbox, c);
        d->cfg = c;
        d->admin_src.cfg = c;
        d->cfg_owned = 1;
        d->plugins = set;
        exitguard_install(); /* ahead of the new plugins' own exit handlers */
        sign_forget();       /* the old keys' copies, should they have changed */
        log_notice("reloaded: %zu plugin(s), %zu task type(s)", set->nplugins, set->ntypes);
        retired_reap(d, 0);
    }
    notify_send("READY=1");
    status_update(d, 1);
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    if (d->phase != RUNNING) {
        log_notice("SIGHUP while shutting down: not reloading");
        return;
    }
    daemon_reload(d);
}

/* ---- The loop ------------------------------------------------------------- */

static void pool_wake(void *arg)
{
    struct daemon *d = arg;
    ev_async_send(d->loop, &d->wake);
}

static void on_pool_events(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    work_events(d->work, evq_take(d->evq));
    if (d->retired != NULL)
        retired_reap(d, 0);
}

static void on_leave_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* only wakes the loop for on_idle_check */
}

/* Nothing left to deliver: the last heartbeats ("offline", 1.0b14) go out,
 * and the loop waits for their answers for at most LEAVE_LIMIT. 1 once
 * they are answered or the time is up. */
static int left(struct daemon *d)
{
    int pending = 0;
    if (d->left == 0) {
        d->left = now_mono();
        for (size_t i = 0; i < orchset_count(d->orchs); i++)
            pending += orch_leave(orchset_get(d->orchs, i));
        if (pending > 0) {
            ev_timer_init(&d->leave_timer, on_leave_timer, LEAVE_LIMIT, 0.);
            ev_timer_start(d->loop, &d->leave_timer);
        }
        return pending == 0;
    }
    for (size_t i = 0; i < orchset_count(d->orchs); i++)
        pending += orch_leaving(orchset_get(d->orchs, i));
    return pending == 0 || now_mono() - d->left >= LEAVE_LIMIT;
}

/* After every loop iteration: READY=1 once registered; stop the loop once
 * a drain has nothing left to wait for. */
static void on_idle_check(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    struct daemon *d = w->data;
    if (!d->ready) {
        if (orchset_registered(d->orchs) > 0) {
            d->ready = 1;
            notify_send("READY=1");
            status_update(d, 1);
        }
    }
    if (d->phase != RUNNING && active_tasks(d) == 0 && !polling(d) && outbox_idle(d->outbox) &&
        left(d))
        ev_break(loop, EVBREAK_ALL);
}

/* Deadlines, over one snapshot of what every worker thread runs. */
static void supervise(struct daemon *d)
{
    struct pool_stats ps;
    pool_get_stats(d->pool, &ps);
    if ((size_t)ps.threads > d->nthreads) {
        d->nthreads = (size_t)ps.threads;
        d->threads = xrealloc(d->threads, d->nthreads * sizeof(*d->threads));
    }
    size_t n = pool_get_threads(d->pool, d->threads, d->nthreads);
    ledger_supervise(d->ledger, d->cfg, d->threads, n, now_mono(), d->cfg->cancel_grace);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    struct ledger_stats st;
    supervise(d);
    if (d->retired != NULL)
        retired_reap(d, 0); /* e.g. once a poll sent before a reload came back empty */
    ledger_get_stats(d->ledger, &st);
    if (st.stuck > 0 && d->cfg->restart_on_stuck && d->phase == RUNNING) {
        log_warn("%d handler(s) stuck: finishing the other tasks, then exiting %d to be "
                 "restarted with all threads (restart_on_stuck)",
                 st.stuck, DAEMON_EXIT_RESTART);
        drain_begin(d, DAEMON_EXIT_RESTART);
    }
    status_update(d, 0);
}

/* ---- Life cycle ------------------------------------------------------------ */

static void watchers_init(struct daemon *d)
{
    ev_signal_init(&d->sigterm, on_signal, SIGTERM);
    ev_signal_init(&d->sigint, on_signal, SIGINT);
    ev_signal_init(&d->sighup, on_sighup, SIGHUP);
    d->sigterm.data = d->sigint.data = d->sighup.data = d;
    ev_signal_start(d->loop, &d->sigterm);
    ev_signal_start(d->loop, &d->sigint);
    ev_signal_start(d->loop, &d->sighup);
    ev_timer_init(&d->drain_timer, on_drain_timer, 0., 0.);
    ev_timer_init(&d->tick, on_tick, TICK, TICK);
    d->drain_timer.data = d->tick.data = d->watchdog.data = d;
    ev_timer_start(d->loop, &d->tick);
    double wd = notify_watchdog_interval();
    if (wd > 0) {
        ev_timer_init(&d->watchdog, on_watchdog, 0., wd / 2);
        ev_timer_start(d->loop, &d->watchdog);
    }
    ev_check_init(&d->idle_check, on_idle_check);
    d->idle_check.data = d;
    ev_check_start(d->loop, &d->idle_check);
}

/* The pool's start hook: the journal's "started" record, on the worker
 * thread just before the handler runs. */
static void on_task_start(void *arg, struct task *t)
{
    journal_task_started(arg, t);
}

/* Spool a failure result for every task the previous run died with; the
 * outbox sends them once their orchestrator's session is up. Returns how
 * many could not be spooled (the outbox keeps those in memory). */
static size_t report_lost(struct daemon *d, struct journal_lost *lost, size_t n)
{
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
        struct task *t = task_create(lost[i].task_id, lost[i].job_id, lost[i].type, NULL);
        task_set_failure(t, lost[i].code, "%s", lost[i].message);
        json_t *record = task_result_json(t, d->cfg->worker_id);
        if (outbox_spool(d->outbox, lost[i].url, record, lost[i].task_id, lost[i].job_id) < 0)
            failed++;
        json_decref(record);
        task_destroy(t);
    }
    return failed;
}

/*
 * Open the state directory: the spool and the crash journal. Returns 0 or
 * EX_CONFIG_CODE (logged); *lost and *nlost are the tasks the previous run
 * died with.
 */
static int open_state(struct daemon *d, const struct cfg *cfg, struct journal_lost **lost,
                      size_t *nlost)
{
    char err[AVT_ERRLEN];
    struct spool_limits lim = {(unsigned long long)cfg->spool_max_bytes, cfg->spool_max_files,
                               cfg->spool_max_age};
    if (spool_open(cfg->state_dir, &lim, &d->spool, err, sizeof(err)) < 0 ||
        journal_open(cfg->state_dir, cfg->crash_limit, &d->journal, lost, nlost, err, sizeof(err)) <
            0) {
        log_err("state directory unusable: %s (set [worker] state_dir or STATE_DIRECTORY to a "
                "private directory this user can write)",
                err);
        return EX_CONFIG_CODE;
    }
    return 0;
}

/* ---- Admin endpoint and thread dump ---------------------------------------- */

/* SIGUSR1: log what every worker thread is doing, and since when. */
static void on_sigusr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct daemon *d = w->data;
    admin_log_threads(d->pool);
}

/* The admin endpoint (after the orchestrator clients: it reports on them).
 * A configured port that cannot be opened is a configuration error. */
static int admin_setup(struct daemon *d)
{
    char err[AVT_ERRLEN];
    d->admin_src = (struct admin_sources){.cfg = d->cfg,
                                          .pool = d->pool,
                                          .orchs = d->orchs,
                                          .ledger = d->ledger,
                                          .outbox = d->outbox,
                                          .spool = d->spool,
                                          .taskstats = d->taskstats,
                                          .started = now_mono()};
    ev_signal_init(&d->sigusr1, on_sigusr1, SIGUSR1);
    d->sigusr1.data = d;
    ev_signal_start(d->loop, &d->sigusr1);
    if (d->cfg->admin_listen == NULL)
        return 0;
    d->admin = admin_create(d->loop, d->cfg->admin_listen, &d->admin_src, err, sizeof(err));
    if (d->admin == NULL) {
        log_err("%s", err);
        return EX_CONFIG_CODE;
    }
    return 0;
}

static void admin_teardown(struct daemon *d)
{
    admin_destroy(d->admin);
    d->admin = NULL;
    ev_signal_stop(d->loop, &d->sigusr1);
}

/* ---- Wiring ------------------------------------------------------------------ */

static void on_changed(void *arg)
{
    struct daemon *d = arg;
    if (d->orchs != NULL)
        orchset_changed(d->orchs);
}

/* A polled task. The long-poll a drain lets finish may still bring one:
 * while DRAINING it runs like the others; once running tasks are being
 * cancelled or given up on, it is answered without running, so that the
 * orchestrator retries it at once instead of after its timeout. */
static void on_task(void *arg, struct task *t, int valid, const struct plugin_set *polled_under)
{
    struct daemon *d = arg;
    if (valid && (d->phase == CANCELLING || d->phase == FLUSHING))
        work_decline(d->work, t, AVT_TRANSIENT_ERROR, "worker shutting down, task not started");
    else
        work_accept(d->work, t, valid, polled_under);
}

static void on_registered(void *arg, struct orch *o)
{
    struct daemon *d = arg;
    outbox_resume(d->outbox, o);
}

/* No new task while the spool is at a bound or cannot be written. */
static int may_poll(void *arg)
{
    struct daemon *d = arg;
    return d->spool == NULL || (!spool_is_full(d->spool) && spool_trouble(d->spool, NULL) == 0);
}

static const struct orch_hooks orch_hooks = {on_task, on_registered, may_poll};

static void *post_result(void *dest, const char *record, size_t len, outbox_answer_fn done,
                         void *arg)
{
    return orch_post_result(dest, record, len, done, arg);
}

static double failure_delay(void *dest, const char *what, const struct http_response *r,
                            struct backoff *b, const struct log_ctx *ctx)
{
    return orch_failure_delay(dest, what, r, b, ctx);
}

static const struct outbox_sender outbox_sender = {post_result, orch_cancel_post, failure_delay};
static const struct outbox_hooks outbox_hooks = {work_release, work_room, work_settled};
static const struct ledger_hooks ledger_hooks = {work_cancel, work_abandoned};

/* The task path: ledger, work and the sessions. */
static void tasks_setup(struct daemon *d, struct cfg *cfg)
{
    struct work_env wenv = {.cfg = cfg,
                            .plugins = d->plugins,
                            .pool = d->pool,
                            .taskstats = d->taskstats,
                            .changed = on_changed,
                            .arg = d};
    d->work = work_create(&wenv);
    d->ledger = ledger_create(&ledger_hooks, d->work);
    work_set_ledger(d->work, d->ledger);
    struct orch_env env = {.pool = d->pool,
                           .ledger = d->ledger,
                           .hot_cache = work_hot_cache(d->work),
                           .hooks = &orch_hooks,
                           .arg = d};
    d->orchs = orchset_create(d->loop, d->http, cfg, &env, d->plugins);
}

/* The outbox over the spool, one destination per session; the crash
 * reports of the previous run go through it. */
static void outbox_setup(struct daemon *d, struct cfg *cfg, struct journal_lost *lost, size_t nlost)
{
    d->outbox = outbox_create(d->loop, cfg, d->spool, &outbox_sender, &outbox_hooks, d->work);
    work_set_outbox(d->work, d->outbox, d->journal);
    for (size_t i = 0; i < orchset_count(d->orchs); i++) {
        struct orch *o = orchset_get(d->orchs, i);
        outbox_add_dest(d->outbox, o, orch_url(o));
    }
    if (nlost > 0)
        log_err("the previous run ended abnormally with %zu task(s): reporting them as failed "
                "once its long-poll has lapsed (%.0f s); new work is taken and delivered at once",
                nlost, cfg->poll_timeout + 1.0);
    size_t unspooled = report_lost(d, lost, nlost);
    if (unspooled == 0)
        journal_recovered(d->journal); /* the reports are durable: start afresh */
    else
        log_err("%zu crash report(s) could not be written to the spool: they are sent from "
                "memory, and the crash journal keeps them until its next compaction",
                unspooled);
    if (nlost > 0)
        outbox_hold(d->outbox, cfg->poll_timeout + 1.0);
}

/* [worker] batch_scheduling: SCHED_BATCH for this thread, and so for every
 * thread and child process started after it. Such a thread does not preempt
 * the one running when it wakes up: the worker's many short wake-ups (a poll
 * answer, a pool hand-off, a result) no longer interrupt a co-located
 * orchestrator or database, which on a shared machine is the bottleneck of
 * the whole system (docs/benchmarks.md, "Sharing the CPU"). Its share of the
 * CPU is unchanged. Under the unit the policy is set by systemd
 * (CPUSchedulingPolicy=batch), whose system-call filter denies the call.
 * An idle or real-time policy the daemon was started with is kept. run-once
 * keeps the caller's policy: it is interactive and latency-bound. */
static void apply_scheduling(const struct cfg *cfg)
{
    int want = cfg->batch_scheduling ? SCHED_BATCH : SCHED_OTHER;
    int have = sched_getscheduler(0);
    if (have < 0) {
        log_warn("cannot read the CPU scheduling policy (%s): left as it is", strerror(errno));
        return;
    }
    have &= ~SCHED_RESET_ON_FORK; /* CPUSchedulingResetOnFork=yes adds it */
    if (have == want || (have != SCHED_OTHER && have != SCHED_BATCH)) {
        return; /* already so, or a real-time or idle policy the operator chose */
    }
    struct sched_param sp = {.sched_priority = 0};
    if (sched_setscheduler(0, want, &sp) < 0) {
        /* systemd's names of the two policies (CPUSchedulingPolicy=) */
        const char *wname = want == SCHED_BATCH ? "batch" : "other";
        const char *hname = have == SCHED_BATCH ? "batch" : "other";
        log_warn("cannot set the CPU scheduling policy to %s (%s): the worker keeps %s; under "
                 "systemd set CPUSchedulingPolicy=%s in a drop-in, or batch_scheduling = %s to "
                 "keep the policy the unit gives",
                 wname, strerror(errno), hname, wname, have == SCHED_BATCH ? "true" : "false");
    }
}

static int daemon_setup(struct daemon *d, struct cfg *cfg)
{
    char err[AVT_ERRLEN];
    struct journal_lost *lost = NULL;
    size_t nlost = 0;
    d->cfg = cfg;
    apply_scheduling(cfg);
    /* Not the default loop: that one reaps every child process on SIGCHLD,
     * which would take their exit status from plugins (pclose, system). */
    d->loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&d->wake, on_pool_events);
    d->wake.data = d;
    ev_async_start(d->loop, &d->wake);
    d->evq = evq_create(pool_wake, d);
    d->pool = pool_create(cfg, d->evq);
    if (d->pool == NULL)
        return 1;
    int rc = plugin_set_load(cfg->plugin_dir, cfg, d->evq, &d->plugins, err, sizeof(err));
    if (rc < 0) {
        log_err("%s", err);
        return EX_CONFIG_CODE;
    }
    struct http_opts hopts = {.ca_file = cfg->tls_ca_file,
                              .cert_file = cfg->tls_cert_file,
                              .key_file = cfg->tls_key_file,
                              .insecure = cfg->tls_insecure,
                              .compressed = cfg->compressed_answers};
    d->http = http_create(d->loop, &hopts);
    d->taskstats = taskstats_create();
    tasks_setup(d, cfg);
    rc = open_state(d, cfg, &lost, &nlost);
    if (rc == 0)
        outbox_setup(d, cfg, lost, nlost);
    journal_lost_free(lost, nlost);
    if (rc != 0)
        return rc;
    pool_set_start_hook(d->pool, on_task_start, d->journal);
    notify_init();
    watchers_init(d);
    return admin_setup(d);
}

static void watchers_stop(struct daemon *d)
{
    ev_async_stop(d->loop, &d->wake);
    ev_check_stop(d->loop, &d->idle_check);
    ev_timer_stop(d->loop, &d->drain_timer);
    ev_timer_stop(d->loop, &d->tick);
    ev_timer_stop(d->loop, &d->watchdog);
    ev_timer_stop(d->loop, &d->leave_timer);
    ev_signal_stop(d->loop, &d->sigterm);
    ev_signal_stop(d->loop, &d->sigint);
    ev_signal_stop(d->loop, &d->sighup);
}

/* The network side: results in flight are cancelled (they stay spooled). */
static void network_teardown(struct daemon *d)
{
    admin_teardown(d);
    outbox_destroy(d->outbox);
    d->outbox = NULL;
    orchset_destroy(d->orchs);
    d->orchs = NULL;
    http_destroy(d->http);
    d->http = NULL;
}

static void daemon_teardown(struct daemon *d)
{
    /* A handler that ignored its cancellation still owns its thread and
     * its task: joining it would hang the exit, so the pool, the plugins
     * and the loop (which its completion would wake) are only torn down
     * when every task has finished; the process exits around them. */
    struct ledger_stats st;
    ledger_get_stats(d->ledger, &st);
    int stuck = st.active + st.stuck;
    network_teardown(d);
    watchers_stop(d);
    if (stuck) {
        log_warn("exiting with %d handler(s) still running", stuck);
        return;
    }
    pool_destroy(d->pool);
    ledger_destroy(d->ledger);
    work_destroy(d->work);
    taskstats_destroy(d->taskstats);
    free(d->threads);
    journal_close(d->journal);
    spool_close(d->spool);
    plugin_set_destroy(d->plugins);
    for (struct retired *r = d->retired, *next; r != NULL; r = next) {
        next = r->next;
        plugin_set_destroy(r->plugins);
        cfg_destroy(r->cfg);
        free(r);
    }
    /* After the plugins: their host table (hot cache, progress) posts to
     * the queue until shutdown() returns (the exec plugin's persistent
     * types withdraw their hot-cache entries there). */
    evq_destroy(d->evq);
    if (d->cfg_owned)
        cfg_destroy(d->cfg);
    ev_loop_destroy(d->loop);
}

int daemon_run(struct cfg *cfg)
{
    struct daemon *d = &the_daemon;
    memset(d, 0, sizeof(*d));
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        fatalx("cannot initialise libcurl");
    srandom((unsigned)getpid() ^ (unsigned)now_wall());
    int rc = daemon_setup(d, cfg);
    if (rc != 0) {
        network_teardown(d);
        pool_destroy(d->pool);
        ledger_destroy(d->ledger);
        work_destroy(d->work);
        taskstats_destroy(d->taskstats);
        plugin_set_destroy(d->plugins);
        evq_destroy(d->evq); /* after the plugins, as in daemon_teardown */
        journal_close(d->journal);
        spool_close(d->spool);
        ev_async_stop(d->loop, &d->wake);
        ev_loop_destroy(d->loop);
        curl_global_cleanup();
        return rc;
    }
    /* Again, now that libcurl, OpenSSL and the plugins have registered
     * their exit handlers: a plugin's exit() is caught before they run. */
    exitguard_install();
    log_notice("avtworkerd %s starting: worker %s, orchestrator %s, %d slots", AVT_VERSION,
               cfg->worker_id, cfg->url, cfg->max_concurrent_tasks);
    outbox_load(d->outbox);
    orchset_start(d->orchs);
    ev_run(d->loop, 0);
    log_notice("stopped (exit status %d)", d->exit_code);
    daemon_teardown(d);
    sign_forget(); /* the signing keys' copies, cleansed */
    curl_global_cleanup();
    return d->exit_code;
}
