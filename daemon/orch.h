/*
 * orch.h - the protocol session with one orchestrator: registration,
 * long-polls, heartbeats, the WebSocket, re-registration and the access
 * token, as a state machine on the loop thread. What goes on the wire is
 * the dialect's business (rxon.h); which tasks the worker holds is the
 * ledger's (ledger.h); results wait in the outbox (outbox.h), which sends
 * them through orch_post_result(). The session holds no task bookkeeping:
 * it reads the ledger and the pool to say what the worker is doing, hands
 * every polled task to the daemon, and passes cancels to the ledger.
 *
 *   unregistered --register 200--> registered --empty-body PATCH answers
 *        ^   |                         |          null (expired)----+
 *        |   +--error: backoff, retry  |                            |
 *        +-----------------------------+<---------------------------+
 *
 * While registered and not draining it long-polls when its scheduler says
 * so (orchset.h: never more polls than free slots); heartbeats go out
 * every heartbeat_interval and, debounced by heartbeat_debounce, after
 * every state change (orch_heartbeat_soon); every probe_every-th periodic
 * beat is the empty-body PATCH that detects expiry. Each endpoint backs
 * off on its own (backoff.h), so a 429 on polls does not stop heartbeats.
 */
#ifndef AVT_DAEMON_ORCH_H
#define AVT_DAEMON_ORCH_H

#include <stddef.h>

#include <jansson.h>

#include "outbox.h"

struct backoff;
struct cfg;
struct ev_loop;
struct http;
struct http_response;
struct ledger;
struct log_ctx;
struct plugin_set;
struct pool;
struct task;

struct orch;

/* The orchestrator endpoints and how an exchange with one failed, for the
 * metrics (admin.c). */
enum orch_endpoint {
    ORCH_EP_REGISTER,
    ORCH_EP_POLL,
    ORCH_EP_HEARTBEAT,
    ORCH_EP_RESULT,
    ORCH_EP_COUNT
};
enum orch_error_kind {
    ORCH_ERR_TRANSPORT,  /* no HTTP answer: refused, reset, timeout, TLS */
    ORCH_ERR_AUTH,       /* 401 or 403 */
    ORCH_ERR_RATE_LIMIT, /* 429 */
    ORCH_ERR_4XX,        /* any other 4xx */
    ORCH_ERR_5XX,
    ORCH_ERR_INVALID, /* 200 with an answer that cannot be used, or another status */
    ORCH_ERR_COUNT
};

/* Link-level figures of one session (the metrics of admin.c). */
struct orch_stats {
    int registered;
    int draining;
    unsigned long polls, polls_failed, tasks_received, tasks_invalid;
    unsigned long heartbeats, heartbeats_failed, registrations;
    unsigned long ws_connects, ws_messages, ws_closes;
    unsigned long sts_tokens; /* access tokens obtained (mTLS, 2.5) */
    /* Exchanges that completed (answered or failed; not the ones cancelled
     * at shutdown), and the failed ones by kind. */
    unsigned long requests[ORCH_EP_COUNT];
    unsigned long errors[ORCH_EP_COUNT][ORCH_ERR_COUNT];
    double last_ok;       /* now_mono() of the last 2xx answer of any endpoint; 0 = none yet */
    const char *protocol; /* the RXON version spoken ("1.0b14"), NULL while not known */
    double clock_skew;    /* its clock minus ours, from its Date header; NAN: unknown */
    /* Polls after a failed one (orch_poll_pause_text): */
    double poll_paused_until;  /* now_wall() when their pause ends; 0: not paused */
    long poll_pause_status;    /* the answer that paused them; 0: none came */
    double poll_failing_since; /* now_mono() since polls fail without one answered; 0: none */
};

/* What the session tells the daemon. */
struct orch_hooks {
    /*
     * A long-poll brought a task (t->origin is set; the hook owns t). valid
     * = 0: a payload with good ids that is not a valid task, whose outcome
     * is already INVALID_INPUT_ERROR (answer it, do not run it).
     * polled_under: the plugin set in force when the poll was sent (a
     * reload may have retired it since).
     */
    void (*task)(void *arg, struct task *t, int valid, const struct plugin_set *polled_under);
    /* The session (re-)registered: results waiting for it may go now. */
    void (*registered)(void *arg, struct orch *o);
    /* 0 while no task may be taken at all (the spool is full); NULL: always. */
    int (*may_poll)(void *arg);
};

/* What the session reads and where it reports. All borrowed for its life. */
struct orch_env {
    struct pool *pool;     /* free slots and per-type room */
    struct ledger *ledger; /* running tasks; cancels go there */
    json_t *hot_cache;     /* the plugins' hot cache (array of names) */
    const struct orch_hooks *hooks;
    void *arg;
};

/* The session for entry `index` of cfg->orchs (cfg and plugins borrowed
 * until the next orch_reconfigure()). */
struct orch *orch_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                         size_t index, const struct orch_env *env,
                         const struct plugin_set *plugins);
void orch_destroy(struct orch *o); /* NULL is a no-op */

/* Begin: (an access token, then) register, then poll and heartbeat. */
void orch_start(struct orch *o);

/*
 * Graceful leave: stop polling, tell the orchestrator at once with a
 * heartbeat without skills ("offline" in 1.0b3, "draining" in 1.0b14);
 * results keep flowing. A long-poll in flight is let finish, because
 * aborting it can lose the task the orchestrator hands out for it
 * (PROTOCOL.md 2.2): the task it still brings goes to the task hook like
 * any other; a poll the orchestrator still holds 2 s after the end of its
 * hold (poll_timeout) is given up.
 */
void orch_drain(struct orch *o);

/*
 * Reload: use cfg and plugins from now on (token, intervals, backoff caps,
 * WebSocket, advertised types; registers again when the set of types
 * changed). The URL and worker id are the caller's to keep unchanged.
 */
void orch_reconfigure(struct orch *o, const struct cfg *cfg, const struct plugin_set *plugins);

/* A heartbeat heartbeat_debounce from now (at most one per interval):
 * something the orchestrator is told about changed. */
void orch_heartbeat_soon(struct orch *o);

/*
 * Who decides when to poll. Without a scheduler the session polls whenever
 * a global slot is free. With one, every occasion to poll (registered, a
 * poll ended, a backoff ran out) calls kick(arg) instead, and the
 * scheduler starts polls with orch_poll().
 */
void orch_set_scheduler(struct orch *o, void (*kick)(void *arg), void *arg);

/*
 * Several long-polls may be in flight, up to [orchestrator] max_polls, so
 * that a backlog is fetched without a round trip between tasks. The
 * session fans out only after a poll brought a task; after an empty answer
 * or a failure one poll is held, as the SDK does, so an idle worker costs
 * the orchestrator one waiting request.
 */
enum orch_poll_state {
    ORCH_POLL_DOWN,  /* not registered, draining, backing off after a failure, or no
                        task may be taken (may_poll); no poll in flight */
    ORCH_POLL_READY, /* healthy, and another poll may go out */
    ORCH_POLL_BUSY,  /* polls in flight, and no other may go out now */
};
enum orch_poll_state orch_poll_state(struct orch *o);

/* Long-polls in flight now. */
int orch_polls_in_flight(const struct orch *o);

/* Start a long-poll when READY (no-op otherwise). The caller has checked
 * that a global slot is free for the task it may bring, beyond the ones
 * the polls in flight may bring. */
void orch_poll(struct orch *o);

/* 1 while a poll sent when `set` was in force is in flight. */
int orch_poll_uses(const struct orch *o, const struct plugin_set *set);

/* now_mono() when the orchestrator's hold of the poll in flight ends (its
 * answer is due), 0 when none is in flight. While draining, a poll still
 * unanswered ORCH_DRAIN_POLL_MARGIN seconds later is given up, and so is one
 * still unanswered ORCH_DRAIN_POLL_GRACE seconds after the orchestrator
 * acknowledged a heartbeat saying that this worker drains (it then
 * dispatches nothing more to it). */
#define ORCH_DRAIN_POLL_MARGIN 2.0
#define ORCH_DRAIN_POLL_GRACE 1.0
double orch_poll_hold_end(const struct orch *o);

/* "polling paused until 2025-06-01T12:00:05Z (the orchestrator asked to
 * retry later (429))" into out, and 1, while polls of the session whose
 * stats are `st` wait after a failed one; else 0. */
int orch_poll_pause_text(const struct orch_stats *st, char *out, size_t outlen);

/* The outbox's sender (outbox.h): send a result record, in this session's
 * dialect, with this session's credentials; cancel one in flight; and how
 * long to wait after a failed answer (logged for the operator). */
void *orch_post_result(struct orch *o, const char *record, size_t len, outbox_answer_fn done,
                       void *arg);
void orch_cancel_post(void *handle);
double orch_failure_delay(struct orch *o, const char *what, const struct http_response *r,
                          struct backoff *b, const struct log_ctx *ctx);

/* Progress of a running task from this orchestrator (0..100; message may
 * be NULL), as the dialect carries it (dropped when it cannot). */
void orch_task_progress(struct orch *o, const struct task *t, double percent, const char *message);

/* 1 when the orchestrator's dialect carries custom events (1.0b14). */
int orch_speaks_events(const struct orch *o);

/* A custom event of a running task (payload borrowed). 0, or -ENOTSUP when
 * the dialect has no events. */
int orch_task_event(struct orch *o, const struct task *t, const char *type, json_t *payload);

/*
 * The end of a drain (nothing left to deliver): the dialects that say so
 * (1.0b14: "draining" first, then "offline", Decision 10) get a last
 * heartbeat. Returns 1 when one went out; orch_leaving() is 1 while it is
 * in flight.
 */
int orch_leave(struct orch *o);
int orch_leaving(const struct orch *o);

void orch_get_stats(const struct orch *o, struct orch_stats *st);

/* The entry's name (for logs) and base URL: the URL is the identity a
 * result keeps until it is delivered (a spooled result names it). */
const char *orch_name(const struct orch *o);
const char *orch_url(const struct orch *o);

#endif /* AVT_DAEMON_ORCH_H */
