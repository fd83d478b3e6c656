/*
 * daemon.c - serving mode: wires the pool, the plugins, the HTTP client and
 * the protocol client to one libev loop, and runs the process lifecycle.
 *
 * Worker threads never touch the loop's state: the pool queues their
 * events (completion, progress, hot-cache change) and wakes the loop with
 * an ev_async; on_pool_events() then hands each to the protocol client.
 *
 * Shutdown (SIGTERM or SIGINT): stop polling, tell the orchestrator we are
 * offline, keep delivering results while running tasks finish, for at most
 * shutdown_timeout. Then the tasks still running are asked to stop; after a
 * short grace those that still did not finish are reported as
 * TRANSIENT_ERROR so that the orchestrator retries them at once instead of
 * waiting for its timeout. A second signal shortens the drain to the grace.
 */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <ev.h>

#include "cfg.h"
#include "http.h"
#include "log.h"
#include "orch.h"
#include "plugin.h"
#include "pool.h"
#include "task.h"
#include "util.h"

#define CANCEL_GRACE 5.0
#define FLUSH_LIMIT 10.0

struct daemon {
    struct ev_loop *loop;
    const struct cfg *cfg;
    struct pool *pool;
    struct plugin_set *plugins;
    struct http *http;
    struct orch *orch;
    ev_async wake;
    ev_signal sigterm, sigint;
    ev_timer drain_timer;
    ev_check idle_check;
    int stopping; /* 1 draining, 2 cancelled the rest, 3 flushing orphans */
    int exit_code;
};

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
    struct pool_event *ev = pool_take_events(d->pool);
    while (ev != NULL) {
        struct pool_event *next = ev->next;
        switch (ev->kind) {
        case POOL_EV_DONE:
            /* orch gives the slot back once the result is delivered. */
            orch_task_done(d->orch, ev->task);
            break;
        case POOL_EV_PROGRESS:
            orch_task_progress(d->orch, ev->task, ev->percent, ev->message);
            break;
        case POOL_EV_HOTCACHE_ADD:
        case POOL_EV_HOTCACHE_REMOVE:
            orch_hot_cache(d->orch, ev->kind == POOL_EV_HOTCACHE_ADD, ev->name);
            break;
        }
        pool_event_free(ev);
        ev = next;
    }
}

/* Stop the loop once a drain has nothing left to wait for. */
static void on_idle_check(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    struct daemon *d = w->data;
    if (d->stopping && orch_idle(d->orch))
        ev_break(loop, EVBREAK_ALL);
}

static void on_drain_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct daemon *d = w->data;
    if (d->stopping == 1) {
        log_warn("shutdown: %d task(s) still running after the drain; asking them to stop",
                 orch_active_tasks(d->orch));
        orch_cancel_all(d->orch, TASK_CANCEL_SHUTDOWN);
        d->stopping = 2;
        ev_timer_set(w, CANCEL_GRACE, 0.);
        ev_timer_start(loop, w);
        return;
    }
    /* Whatever is still running or undelivered now is given up: the
     * orchestrator's own timeout covers it. */
    log_err("shutdown: giving up on %d running task(s) and undelivered results",
            orch_active_tasks(d->orch));
    d->exit_code = 0;
    ev_break(loop, EVBREAK_ALL);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    struct daemon *d = w->data;
    if (d->stopping) {
        log_notice("second signal: shortening the drain");
        if (d->stopping == 1) {
            ev_timer_stop(loop, &d->drain_timer);
            ev_timer_set(&d->drain_timer, 0., 0.);
            ev_timer_start(loop, &d->drain_timer);
        }
        return;
    }
    log_notice("%s: draining (%d task(s) running, up to %.0f s)", strsignal(w->signum),
               orch_active_tasks(d->orch), d->cfg->shutdown_timeout);
    d->stopping = 1;
    orch_drain(d->orch);
    ev_timer_set(&d->drain_timer, d->cfg->shutdown_timeout, 0.);
    ev_timer_start(loop, &d->drain_timer);
}

static int daemon_setup(struct daemon *d, struct cfg *cfg)
{
    char err[AVT_ERRLEN];
    d->cfg = cfg;
    d->loop = ev_default_loop(EVFLAG_AUTO);
    ev_async_init(&d->wake, on_pool_events);
    d->wake.data = d;
    ev_async_start(d->loop, &d->wake);
    d->pool = pool_create(cfg, pool_wake, d);
    int rc = plugin_set_load(cfg->plugin_dir, cfg, d->pool, &d->plugins, err, sizeof(err));
    if (rc < 0) {
        log_err("%s", err);
        return EX_CONFIG_CODE;
    }
    d->http = http_create(d->loop, NULL);
    d->orch = orch_create(d->loop, d->http, cfg, d->pool, d->plugins);
    ev_signal_init(&d->sigterm, on_signal, SIGTERM);
    ev_signal_init(&d->sigint, on_signal, SIGINT);
    d->sigterm.data = d->sigint.data = d;
    ev_signal_start(d->loop, &d->sigterm);
    ev_signal_start(d->loop, &d->sigint);
    ev_timer_init(&d->drain_timer, on_drain_timer, 0., 0.);
    d->drain_timer.data = d;
    ev_check_init(&d->idle_check, on_idle_check);
    d->idle_check.data = d;
    ev_check_start(d->loop, &d->idle_check);
    return 0;
}

static void daemon_teardown(struct daemon *d)
{
    /* A handler that ignored its cancellation still owns its thread and
     * its task: joining it would hang the exit, so the pool and the
     * plugins are only torn down when every task has finished. */
    int stuck = d->orch != NULL && orch_active_tasks(d->orch) > 0;
    orch_destroy(d->orch);
    http_destroy(d->http);
    if (!stuck) {
        pool_destroy(d->pool);
        plugin_set_destroy(d->plugins);
    }
    ev_async_stop(d->loop, &d->wake);
    ev_check_stop(d->loop, &d->idle_check);
    ev_timer_stop(d->loop, &d->drain_timer);
    ev_signal_stop(d->loop, &d->sigterm);
    ev_signal_stop(d->loop, &d->sigint);
    if (!stuck)
        ev_loop_destroy(d->loop);
}

int daemon_run(struct cfg *cfg)
{
    struct daemon d;
    memset(&d, 0, sizeof(d));
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        fatalx("cannot initialise libcurl");
    srandom((unsigned)getpid() ^ (unsigned)now_wall());
    int rc = daemon_setup(&d, cfg);
    if (rc != 0) {
        pool_destroy(d.pool);
        ev_async_stop(d.loop, &d.wake);
        ev_loop_destroy(d.loop);
        curl_global_cleanup();
        return rc;
    }
    log_notice("avtworkerd %s starting: worker %s, orchestrator %s, %d slots", AVT_VERSION,
               cfg->worker_id, cfg->url, cfg->max_concurrent_tasks);
    orch_start(d.orch);
    ev_run(d.loop, 0);
    log_notice("stopped");
    daemon_teardown(&d);
    curl_global_cleanup();
    return d.exit_code;
}
