/*
 * orchset.c - several orchestrators over one pool: creates one orch per
 * configured orchestrator, routes each task's events to the orch it came
 * from, and is the poll scheduler of all of them (orchset.h has the rules).
 *
 * Every orch asks the scheduler (kick) instead of polling by itself; the
 * scheduler counts the polls in flight, subtracts them from the pool's
 * free slots and hands the remaining room out by mode. A kick that arrives
 * while one is running (an orch_poll() cannot call back, but a reload or a
 * capacity change may come in between) is folded into a second pass.
 */
#include "orchset.h"

#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "cfg.h"
#include "log.h"
#include "orch.h"
#include "taskstats.h"
#include "pool.h"
#include "task.h"
#include "util.h"

#define INSECURE_NAG_INTERVAL 600.0

struct orchset {
    struct ev_loop *loop;
    const struct cfg *cfg;
    struct pool *pool;
    struct orch **orchs;   /* in cfg->orchs order */
    int *weight, *current; /* smooth weighted round robin state */
    size_t n;
    int kicking, kick_again;
    ev_timer nag;             /* "TLS verification is off" */
    struct taskstats *tstats; /* finished tasks of all of them */
};

/* ---- the scheduler ---- */

int orchset_polls_in_flight(const struct orchset *s)
{
    int busy = 0;
    for (size_t i = 0; i < s->n; i++)
        busy += orch_poll_state(s->orchs[i]) == ORCH_POLL_BUSY;
    return busy;
}

/* The first healthy orchestrator polls; the others wait. */
static void schedule_failover(struct orchset *s, int room)
{
    for (size_t i = 0; i < s->n; i++) {
        enum orch_poll_state st = orch_poll_state(s->orchs[i]);
        if (st == ORCH_POLL_DOWN)
            continue;
        if (st == ORCH_POLL_READY && room > 0)
            orch_poll(s->orchs[i]);
        return;
    }
}

/* nginx's smooth weighted round robin over the READY orchestrators: each
 * gains its weight, the richest is chosen and pays the total. */
static struct orch *swrr_pick(struct orchset *s)
{
    int total = 0;
    size_t best = s->n;
    for (size_t i = 0; i < s->n; i++) {
        if (orch_poll_state(s->orchs[i]) != ORCH_POLL_READY)
            continue;
        s->current[i] += s->weight[i];
        total += s->weight[i];
        if (best == s->n || s->current[i] > s->current[best])
            best = i;
    }
    if (best == s->n)
        return NULL;
    s->current[best] -= total;
    return s->orchs[best];
}

static void schedule_round_robin(struct orchset *s, int room)
{
    struct orch *o;
    while (room > 0 && (o = swrr_pick(s)) != NULL) {
        orch_poll(o);
        room--;
    }
}

static void kick(void *arg)
{
    struct orchset *s = arg;
    if (s->kicking) {
        s->kick_again = 1;
        return;
    }
    s->kicking = 1;
    do {
        s->kick_again = 0;
        int room = pool_free_slots(s->pool) - orchset_polls_in_flight(s);
        if (s->cfg->multi_mode == CFG_MULTI_ROUND_ROBIN)
            schedule_round_robin(s, room);
        else
            schedule_failover(s, room);
    } while (s->kick_again);
    s->kicking = 0;
}

/* Every orchestrator advertises the one pool's capacity: tell them all. */
static void beat_all(void *arg)
{
    struct orchset *s = arg;
    for (size_t i = 0; i < s->n; i++)
        orch_heartbeat_soon(s->orchs[i]);
}

/* ---- life cycle ---- */

static void load_weights(struct orchset *s)
{
    for (size_t i = 0; i < s->n; i++) {
        const char *url = orch_url(s->orchs[i]);
        for (size_t j = 0; j < s->cfg->norchs; j++) {
            if (strcmp(s->cfg->orchs[j].url, url) == 0)
                s->weight[i] = s->cfg->orchs[j].weight;
        }
    }
}

struct orchset *orchset_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                               struct pool *pool, const struct plugin_set *plugins)
{
    struct orchset *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->cfg = cfg;
    s->pool = pool;
    s->n = cfg->norchs > 0 ? cfg->norchs : 1;
    s->orchs = xcalloc(s->n, sizeof(*s->orchs));
    s->weight = xcalloc(s->n, sizeof(*s->weight));
    s->current = xcalloc(s->n, sizeof(*s->current));
    s->tstats = taskstats_create();
    for (size_t i = 0; i < s->n; i++) {
        s->orchs[i] = orch_create_for(loop, http, cfg, i, pool, plugins);
        orch_set_taskstats(s->orchs[i], s->tstats);
        s->weight[i] = 1;
        if (s->n > 1) {
            orch_set_scheduler(s->orchs[i], kick, s);
            orch_set_state_hook(s->orchs[i], beat_all, s);
        }
    }
    load_weights(s);
    return s;
}

void orchset_destroy(struct orchset *s)
{
    if (s == NULL)
        return;
    ev_timer_stop(s->loop, &s->nag);
    for (size_t i = 0; i < s->n; i++)
        orch_destroy(s->orchs[i]);
    free(s->orchs);
    free(s->weight);
    free(s->current);
    taskstats_destroy(s->tstats);
    free(s);
}

const struct taskstats *orchset_taskstats(const struct orchset *s)
{
    return s->tstats;
}

size_t orchset_count(const struct orchset *s)
{
    return s->n;
}

struct orch *orchset_get(const struct orchset *s, size_t i)
{
    return i < s->n ? s->orchs[i] : NULL;
}

struct orch *orchset_find(const struct orchset *s, const char *url)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(orch_url(s->orchs[i]), url) == 0)
            return s->orchs[i];
    }
    return NULL;
}

static void nag_insecure(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    (void)w;
    log_err("TLS certificate verification is OFF ([tls] insecure_skip_verify / TLS_INSECURE): "
            "anyone between this worker and the orchestrator can read and change tasks, "
            "results and the worker token. Use [tls] ca_file (TLS_CA_PATH) instead");
}

void orchset_start(struct orchset *s)
{
    if (s->cfg->tls_insecure) {
        nag_insecure(s->loop, &s->nag, 0);
        ev_timer_init(&s->nag, nag_insecure, INSECURE_NAG_INTERVAL, INSECURE_NAG_INTERVAL);
        ev_timer_start(s->loop, &s->nag);
    }
    if (s->n > 1) {
        for (size_t i = 0; i < s->n; i++) {
            const struct cfg_orch *e = &s->cfg->orchs[i];
            log_info("orchestrator %s: %s (priority %d, weight %d)", e->name, e->url, e->priority,
                     e->weight);
        }
        log_notice("%zu orchestrators, mode %s", s->n,
                   s->cfg->multi_mode == CFG_MULTI_ROUND_ROBIN ? "ROUND_ROBIN" : "FAILOVER");
    }
    for (size_t i = 0; i < s->n; i++)
        orch_start(s->orchs[i]);
}

/* ---- the orch operations, fanned out ---- */

/* The orch a task came from; the first one if it is unknown (cannot happen:
 * every task is accepted by an orch, which sets origin). */
static struct orch *origin_of(struct orchset *s, const struct task *t)
{
    for (size_t i = 0; i < s->n; i++) {
        if (t->origin == s->orchs[i])
            return s->orchs[i];
    }
    log_err("task %s has no known orchestrator (bug): its result goes to %s", t->id,
            orch_url(s->orchs[0]));
    return s->orchs[0];
}

void orchset_hold_results(struct orchset *s, double seconds)
{
    for (size_t i = 0; i < s->n; i++)
        orch_hold_results(s->orchs[i], seconds);
}

void orchset_set_durable(struct orchset *s, struct spool *spool, struct journal *journal)
{
    for (size_t i = 0; i < s->n; i++)
        orch_set_durable(s->orchs[i], spool, journal);
}

void orchset_task_done(struct orchset *s, struct task *t)
{
    orch_task_done(origin_of(s, t), t);
}

void orchset_flush(struct orchset *s)
{
    for (size_t i = 0; i < s->n; i++)
        orch_flush(s->orchs[i]);
}

void orchset_task_progress(struct orchset *s, struct task *t, double percent, const char *message)
{
    orch_task_progress(origin_of(s, t), t, percent, message);
}

void orchset_hot_cache(struct orchset *s, int add, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        orch_hot_cache(s->orchs[i], add, name);
}

void orchset_capacity_changed(struct orchset *s)
{
    for (size_t i = 0; i < s->n; i++)
        orch_capacity_changed(s->orchs[i]);
}

void orchset_drain(struct orchset *s)
{
    for (size_t i = 0; i < s->n; i++)
        orch_drain(s->orchs[i]);
}

int orchset_idle(const struct orchset *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (!orch_idle(s->orchs[i]))
            return 0;
    }
    return 1;
}

int orchset_active_tasks(const struct orchset *s)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += orch_active_tasks(s->orchs[i]);
    return n;
}

void orchset_cancel_all(struct orchset *s, int reason)
{
    for (size_t i = 0; i < s->n; i++)
        orch_cancel_all(s->orchs[i], reason);
}

int orchset_abandon_all(struct orchset *s, const char *code, const char *message)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += orch_abandon_all(s->orchs[i], code, message);
    return n;
}

int orchset_stuck_tasks(const struct orchset *s)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += orch_stuck_tasks(s->orchs[i]);
    return n;
}

void orchset_supervise(struct orchset *s, double grace)
{
    for (size_t i = 0; i < s->n; i++)
        orch_supervise(s->orchs[i], grace);
}

/* The list of orchestrators itself is fixed until a restart; tokens (and
 * token files), weights, the mode and everything orch_reconfigure covers
 * apply now. */
void orchset_reconfigure(struct orchset *s, const struct cfg *cfg, const struct plugin_set *plugins)
{
    int same = cfg->norchs == s->n;
    for (size_t i = 0; same && i < s->n; i++)
        same = orchset_find(s, cfg->orchs[i].url) != NULL;
    if (!same)
        log_warn("reload: the list of orchestrators changed: it takes effect at the next "
                 "restart (still serving the %zu of the start)",
                 s->n);
    s->cfg = cfg;
    load_weights(s);
    for (size_t i = 0; i < s->n; i++)
        orch_reconfigure(s->orchs[i], cfg, plugins);
}

int orchset_uses_plugins(const struct orchset *s, const struct plugin_set *set)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += orch_uses_plugins(s->orchs[i], set);
    return n;
}

int orchset_registered(const struct orchset *s)
{
    struct orch_stats st;
    int n = 0;
    for (size_t i = 0; i < s->n; i++) {
        orch_get_stats(s->orchs[i], &st);
        n += st.registered != 0;
    }
    return n;
}
