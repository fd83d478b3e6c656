/*
 * admin.h - the local admin endpoint: a tiny HTTP/1.1 server on the loop
 * thread (GET or HEAD, one request per connection, "Connection: close").
 *
 *   /metrics   Prometheus text format 0.0.4 (README "Operations" lists the
 *              metrics)
 *   /healthz   200 while at least one orchestrator is healthy (registered,
 *              not draining, and its last successful exchange at most
 *              3 x heartbeat_interval old); else 503. The text is "ok" or
 *              the reason; with several orchestrators, unless all are
 *              healthy, "degraded: K of N ..." or "down: ..." and one
 *              "URL: state" line for each of them
 *   /threads   what every worker thread does, and for how long (text; ids
 *              and types escaped like the log, log_escape())
 *
 * Connection-level metrics carry the label orchestrator="URL"; task-level
 * ones (outcomes, durations, deadlines) are summed over the orchestrators.
 *
 * Malformed requests get 400, a request head over 8 KiB 431, another
 * method 405, an unknown path 404. A request must arrive whole within
 * ADMIN_REQUEST_TIMEOUT seconds of the connection (slow clients are cut
 * off) and at most ADMIN_CONNS_MAX connections are open at once (a new one
 * closes the oldest); nothing a client sends can block the loop or crash
 * the daemon. When accept() fails (out of file descriptors), accepting
 * pauses 0.1 s, doubling up to 1 s, with one log line per episode and
 * avtworkerd_admin_accept_errors_total counting the attempts.
 *
 * Everything here runs on the loop thread.
 */
#ifndef AVT_DAEMON_ADMIN_H
#define AVT_DAEMON_ADMIN_H

#include <stddef.h>

struct cfg;
struct ev_loop;
struct ledger;
struct orchset;
struct outbox;
struct pool;
struct taskstats;

#define ADMIN_REQUEST_TIMEOUT 5.0
#define ADMIN_CONNS_MAX 32

/* What the endpoint reports on. Borrowed for the admin's lifetime: the
 * daemon may change the fields between loop iterations (a reload swaps
 * cfg). */
struct admin_sources {
    const struct cfg *cfg;
    struct pool *pool;
    const struct orchset *orchs;       /* link-level figures, per orchestrator */
    const struct ledger *ledger;       /* deadlines, abandoned and stuck tasks */
    const struct outbox *outbox;       /* results sent and pending, per orchestrator */
    const struct spool *spool;         /* the durable outbox; NULL: none */
    const struct taskstats *taskstats; /* finished tasks */
    double started;                    /* now_mono() at start-up, for the uptime */
};

struct admin;

/*
 * Listen on `addr` ("IPV4:PORT" or "[IPV6]:PORT", as cfg normalizes it;
 * any other form is refused, never guessed at). Returns the admin, or NULL
 * with "admin: cannot listen on ...: why" in err (the daemon then exits
 * 78). An address that is not loopback is served with a warning logged:
 * the endpoint has no authentication.
 */
struct admin *admin_create(struct ev_loop *loop, const char *addr, const struct admin_sources *src,
                           char *err, size_t errlen);

/* Close the listening socket and every connection. NULL is a no-op. */
void admin_destroy(struct admin *a);

/* The /metrics text (caller frees); *len is set to its length. */
char *admin_metrics_text(const struct admin_sources *src, size_t *len);

/* Log one line per worker thread (SIGUSR1): idle for how long, or the
 * task it runs (task_id, job_id, type, plugin) and for how long. */
void admin_log_threads(struct pool *pool);

#endif /* AVT_DAEMON_ADMIN_H */
