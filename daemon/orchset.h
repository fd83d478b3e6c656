/*
 * orchset.h - several orchestrators sharing one pool (PROTOCOL.md 4.9).
 *
 * One struct orch per entry of cfg->orchs (each with its own registration,
 * heartbeats, WebSocket, token and outbox); this module decides which of
 * them may long-poll next, so that the capacity rules hold across all of
 * them: the total of outstanding polls never exceeds the free global slots.
 *
 *   FAILOVER     the first healthy orchestrator in priority order polls;
 *                healthy = registered, not draining, not backing off after
 *                a failed poll. A lower one's poll in flight is let finish
 *                (aborting a long-poll can lose a task, 2.2).
 *   ROUND_ROBIN  every healthy orchestrator may have one poll in flight;
 *                when there are fewer free slots than such orchestrators,
 *                smooth weighted round robin (nginx's) over `weight`
 *                chooses who gets the next slot.
 *
 * A task's result always goes to the orchestrator the task came from
 * (task->origin), and waits in that orchestrator's outbox (and spool) while
 * it is down. With a single orchestrator it behaves exactly like one orch.
 * Loop thread only.
 */
#ifndef AVT_DAEMON_ORCHSET_H
#define AVT_DAEMON_ORCHSET_H

#include <stddef.h>

struct cfg;
struct ev_loop;
struct http;
struct journal;
struct orch;
struct orch_stats;
struct plugin_set;
struct pool;
struct spool;
struct task;
struct taskstats;

struct orchset;

struct orchset *orchset_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                               struct pool *pool, const struct plugin_set *plugins);
void orchset_destroy(struct orchset *s);

size_t orchset_count(const struct orchset *s);
/* The i-th orchestrator, in cfg->orchs order (priority, url); NULL past the end. */
struct orch *orchset_get(const struct orchset *s, size_t i);
/* The orchestrator with this base URL (a spooled result's identity), or NULL. */
struct orch *orchset_find(const struct orchset *s, const char *url);

/* Start all; logs loudly (now and every 10 minutes) when TLS verification
 * is off. */
void orchset_start(struct orchset *s);

/* The orch_* operation of the same name, applied to every orchestrator
 * (counts are summed) or, for a task, to the task's own orchestrator. */
void orchset_set_durable(struct orchset *s, struct spool *spool, struct journal *journal);

/* orch_hold_results() on every orchestrator (after a crash). */
void orchset_hold_results(struct orchset *s, double seconds);
void orchset_task_done(struct orchset *s, struct task *t);
/* The end of a batch of orchset_task_done() calls: orch_flush() on each. */
void orchset_flush(struct orchset *s);
void orchset_task_progress(struct orchset *s, struct task *t, double percent, const char *message);
void orchset_hot_cache(struct orchset *s, int add, const char *name);
void orchset_capacity_changed(struct orchset *s);
void orchset_drain(struct orchset *s);
int orchset_idle(const struct orchset *s);
int orchset_active_tasks(const struct orchset *s);
void orchset_cancel_all(struct orchset *s, int reason);
int orchset_abandon_all(struct orchset *s, const char *code, const char *message);
int orchset_stuck_tasks(const struct orchset *s);
void orchset_supervise(struct orchset *s, double grace);
void orchset_reconfigure(struct orchset *s, const struct cfg *cfg,
                         const struct plugin_set *plugins);
int orchset_uses_plugins(const struct orchset *s, const struct plugin_set *set);

/* The finished-task tables of all the orchestrators together. */
const struct taskstats *orchset_taskstats(const struct orchset *s);

/* How many orchestrators are registered now. */
int orchset_registered(const struct orchset *s);

/* Long-polls in flight over all orchestrators (tests, metrics). */
int orchset_polls_in_flight(const struct orchset *s);

#endif /* AVT_DAEMON_ORCHSET_H */
