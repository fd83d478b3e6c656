/*
 * orchset.h - the orchestrators of one daemon (PROTOCOL.md 4.9) and their
 * poll scheduler.
 *
 * One protocol session (orch.h) per entry of cfg->orchs, each with its own
 * registration, heartbeats, WebSocket and token. This module decides which
 * of them may long-poll next, so that the capacity rules hold across all
 * of them: the total of outstanding polls never exceeds the free global
 * slots.
 *
 *   FAILOVER     the first healthy orchestrator in priority order polls;
 *                healthy = registered, not draining, not backing off after
 *                a failed poll. A lower one's poll in flight is let finish
 *                (aborting a long-poll can lose a task, 2.2); while the
 *                first has polls in flight and may send no more, the
 *                others wait too.
 *   ROUND_ROBIN  every healthy orchestrator may poll; each free slot goes
 *                to one of them by smooth weighted round robin (nginx's)
 *                over `weight`, one poll per orchestrator and round.
 *
 * Either way a session has at most its fan-out of polls in flight (orch.h:
 * one while idle, up to max_polls while tasks come).
 *
 * Everything about tasks (which one came from where, results, deadlines)
 * is the ledger's and the outbox's, not this module's. Loop thread only.
 */
#ifndef AVT_DAEMON_ORCHSET_H
#define AVT_DAEMON_ORCHSET_H

#include <stddef.h>

#include "orch.h"

struct cfg;
struct ev_loop;
struct http;
struct plugin_set;

struct orchset;

/* One session per entry of cfg->orchs, all with the same env (orch.h). */
struct orchset *orchset_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                               const struct orch_env *env, const struct plugin_set *plugins);
void orchset_destroy(struct orchset *s);

size_t orchset_count(const struct orchset *s);
/* The i-th orchestrator, in cfg->orchs order (priority, url); NULL past the end. */
struct orch *orchset_get(const struct orchset *s, size_t i);

/* Start all; logs loudly (now and every 10 minutes) when TLS verification
 * is off. */
void orchset_start(struct orchset *s);

/* Something every orchestrator is told about changed (the one pool's
 * capacity, the running tasks, the hot cache): a debounced heartbeat to
 * each, and polls where a slot is free now. */
void orchset_changed(struct orchset *s);

/* The list of orchestrators itself is fixed until a restart (a changed one
 * is logged); weights, the mode and everything orch_reconfigure() covers
 * apply now. */
void orchset_reconfigure(struct orchset *s, const struct cfg *cfg,
                         const struct plugin_set *plugins);

/* How many orchestrators are registered now. */
int orchset_registered(const struct orchset *s);

/* Long-polls in flight over all orchestrators (tests, metrics). */
int orchset_polls_in_flight(const struct orchset *s);

/*
 * The scheduler's decision, pure (exposed for tests): given each session's
 * poll state st[n] (updated: the chosen become BUSY), weights, the smooth
 * round-robin state current[n] (updated), the room (free slots minus the
 * polls in flight) and the mode (enum cfg_multi_mode), write the indexes of
 * the sessions that poll now into out (n entries) and return their count.
 */
size_t orchset_plan(enum orch_poll_state *st, const int *weight, int *current, size_t n, int room,
                    int mode, size_t *out);

#endif /* AVT_DAEMON_ORCHSET_H */
