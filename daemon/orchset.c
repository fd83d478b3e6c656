/*
 * orchset.c - the orchestrators of one daemon over one pool: one session
 * per configured orchestrator, and the poll scheduler of all of them
 * (orchset.h has the rules).
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
#include "pool.h"
#include "util.h"

#define INSECURE_NAG_INTERVAL 600.0

struct orchset {
    struct ev_loop *loop;
    const struct cfg *cfg;
    struct pool *pool;
    struct orch **orchs;         /* in cfg->orchs order */
    int *weight, *current;       /* smooth weighted round robin state */
    enum orch_poll_state *state; /* kick()'s view of the sessions */
    size_t *picked;              /* kick()'s plan */
    size_t n;
    int kicking, kick_again;
    ev_timer nag; /* "TLS verification is off" */
};

/* ---- the scheduler ---- */

int orchset_polls_in_flight(const struct orchset *s)
{
    int busy = 0;
    for (size_t i = 0; i < s->n; i++)
        busy += orch_polls_in_flight(s->orchs[i]);
    return busy;
}

/* The first healthy orchestrator polls; the others wait. */
static size_t plan_failover(enum orch_poll_state *st, size_t n, int room, size_t *out)
{
    for (size_t i = 0; i < n; i++) {
        if (st[i] == ORCH_POLL_DOWN)
            continue;
        if (st[i] == ORCH_POLL_READY && room > 0) {
            out[0] = i;
            return 1;
        }
        return 0;
    }
    return 0;
}

/* nginx's smooth weighted round robin over the READY orchestrators: each
 * gains its weight, the richest is chosen and pays the total; one chosen is
 * busy for the next pick. */
static size_t plan_round_robin(enum orch_poll_state *st, const int *weight, int *current, size_t n,
                               int room, size_t *out)
{
    size_t k = 0;
    while (room-- > 0) {
        int total = 0;
        size_t best = n;
        for (size_t i = 0; i < n; i++) {
            if (st[i] != ORCH_POLL_READY)
                continue;
            current[i] += weight[i];
            total += weight[i];
            if (best == n || current[i] > current[best])
                best = i;
        }
        if (best == n)
            break;
        current[best] -= total;
        st[best] = ORCH_POLL_BUSY;
        out[k++] = best;
    }
    return k;
}

size_t orchset_plan(enum orch_poll_state *st, const int *weight, int *current, size_t n, int room,
                    int mode, size_t *out)
{
    if (mode == CFG_MULTI_ROUND_ROBIN)
        return plan_round_robin(st, weight, current, n, room, out);
    return plan_failover(st, n, room, out);
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
        /* One poll per chosen session and pass; passes until the room or
         * the sessions' fan-out is used up. */
        for (;;) {
            int busy = orchset_polls_in_flight(s);
            for (size_t i = 0; i < s->n; i++)
                s->state[i] = orch_poll_state(s->orchs[i]);
            size_t k = orchset_plan(s->state, s->weight, s->current, s->n,
                                    pool_free_slots(s->pool) - busy, s->cfg->multi_mode, s->picked);
            for (size_t i = 0; i < k; i++)
                orch_poll(s->orchs[s->picked[i]]);
            if (k == 0 || orchset_polls_in_flight(s) == busy)
                break;
        }
    } while (s->kick_again);
    s->kicking = 0;
}

void orchset_changed(struct orchset *s)
{
    kick(s);
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
                               const struct orch_env *env, const struct plugin_set *plugins)
{
    struct orchset *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->cfg = cfg;
    s->pool = env->pool;
    s->n = cfg->norchs > 0 ? cfg->norchs : 1;
    s->orchs = xcalloc(s->n, sizeof(*s->orchs));
    s->weight = xcalloc(s->n, sizeof(*s->weight));
    s->current = xcalloc(s->n, sizeof(*s->current));
    s->state = xcalloc(s->n, sizeof(*s->state));
    s->picked = xcalloc(s->n, sizeof(*s->picked));
    for (size_t i = 0; i < s->n; i++) {
        s->orchs[i] = orch_create(loop, http, cfg, i, env, plugins);
        s->weight[i] = 1;
        orch_set_scheduler(s->orchs[i], kick, s);
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
    free(s->state);
    free(s->picked);
    free(s);
}

size_t orchset_count(const struct orchset *s)
{
    return s->n;
}

struct orch *orchset_get(const struct orchset *s, size_t i)
{
    return i < s->n ? s->orchs[i] : NULL;
}

static struct orch *find(const struct orchset *s, const char *url)
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

/* ---- Reload and figures ---- */

void orchset_reconfigure(struct orchset *s, const struct cfg *cfg, const struct plugin_set *plugins)
{
    int same = cfg->norchs == s->n;
    for (size_t i = 0; same && i < s->n; i++)
        same = find(s, cfg->orchs[i].url) != NULL;
    if (!same)
        log_warn("reload: the list of orchestrators changed: it takes effect at the next "
                 "restart (still serving the %zu of the start)",
                 s->n);
    s->cfg = cfg;
    load_weights(s);
    for (size_t i = 0; i < s->n; i++)
        orch_reconfigure(s->orchs[i], cfg, plugins);
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
