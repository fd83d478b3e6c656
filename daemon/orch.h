/*
 * orch.h - the worker protocol client for one orchestrator (RXON 1.0b3 as
 * served by Avtomatika 1.0b13; PROTOCOL.md). Everything version-specific
 * (paths, payload shapes, how answers are read) lives in orch.c, so that a
 * later RXON version is an addition, not a rewrite.
 *
 * What it does, all on the loop thread:
 *   - registers (retried with backoff until accepted; again whenever an
 *     empty-body heartbeat answers `null`);
 *   - keeps one long-poll outstanding while the pool has a free global
 *     slot, and hands every polled task to the pool;
 *   - sends heartbeats every heartbeat_interval and, debounced, after every
 *     state change; acts on cancel_task_ids;
 *   - keeps the WebSocket open (cancel commands in, progress out);
 *   - delivers every result until the orchestrator answers 200;
 *   - backs off on 401, 429 (Retry-After), 5xx, resets, timeouts and
 *     malformed answers, and tells the operator what to do.
 */
#ifndef AVT_DAEMON_ORCH_H
#define AVT_DAEMON_ORCH_H

#include <stddef.h>

struct cfg;
struct ev_loop;
struct http;
struct plugin_set;
struct pool;
struct task;
struct taskstats;

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

struct orch_stats {
    int registered;
    int draining;
    unsigned long polls, polls_failed, tasks_received, tasks_invalid;
    unsigned long heartbeats, heartbeats_failed, registrations;
    unsigned long results_sent, results_failed, results_pending;
    unsigned long ws_connects, ws_messages, ws_closes;
    unsigned long sts_tokens; /* access tokens obtained (mTLS, 2.5) */
    /* Exchanges that completed (answered or failed; not the ones cancelled
     * at shutdown), and the failed ones by kind. */
    unsigned long requests[ORCH_EP_COUNT];
    unsigned long errors[ORCH_EP_COUNT][ORCH_ERR_COUNT];
    double last_ok; /* now_mono() of the last 2xx answer of any endpoint; 0 = none yet */
    /* Deadlines and stuck handlers (orch_supervise, orch_abandon). */
    unsigned long deadlines;       /* tasks cancelled because their type's timeout passed */
    unsigned long tasks_abandoned; /* reported failed while their handler still ran */
    unsigned long stuck_total;     /* of those, given up on after ignoring a deadline */
    int stuck;                     /* handlers given up on that still run now */
};

struct orch *orch_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                         struct pool *pool, const struct plugin_set *plugins);
void orch_destroy(struct orch *o);

struct spool;
struct journal;

/*
 * Make the outbox durable (loop thread, before orch_start): every result is
 * written to `spool` before it is first sent and removed on the 200; the
 * spooled results of this orchestrator's URL are loaded (oldest first) by
 * orch_start(); no task is polled while the spool is full; tasks are
 * recorded in `journal` from acceptance until their result is spooled.
 * Both are borrowed and must outlive the orch. NULL: memory only.
 */
void orch_set_durable(struct orch *o, struct spool *spool, struct journal *journal);

/*
 * Send no result for `seconds` (loop thread, before orch_start). Used after
 * a crash: the dead process's long-poll may still be held by the
 * orchestrator, and a task retried at once because of a crash report would
 * be handed to it and lost (PROTOCOL.md 2.2); waiting out the server's hold
 * lets the retry reach a live poll.
 */
void orch_hold_results(struct orch *o, double seconds);

/* Begin: register, then poll and heartbeat. */
void orch_start(struct orch *o);

/* A task finished (its DONE event); orch takes ownership and queues its
 * result, which is appended to the spool and sent after the next
 * orch_flush() (at once without a spool), and frees it once delivered. */
void orch_task_done(struct orch *o, struct task *t);

/*
 * The end of a batch of orch_task_done() calls (loop thread): one
 * spool_commit() makes the results appended since the last flush durable,
 * then they are sent. Cheap when there is nothing to commit.
 */
void orch_flush(struct orch *o);

/* Progress of a running task (0..100) and its message (may be NULL). */
void orch_task_progress(struct orch *o, struct task *t, double percent, const char *message);

/* The plugins' hot cache changed. */
void orch_hot_cache(struct orch *o, int add, const char *name);

/* A global slot was given back: poll again if idle, schedule a heartbeat. */
void orch_capacity_changed(struct orch *o);

/*
 * Graceful leave: stop polling (an in-flight long-poll is left to finish:
 * aborting it can lose a task, PROTOCOL.md 2.2; a task it still brings is
 * run), send an "offline" heartbeat with no skills; results keep flowing.
 */
void orch_drain(struct orch *o);

/* 1 when nothing is left to do: no task running or waiting and no result
 * undelivered. */
int orch_idle(const struct orch *o);

/* Tasks handed to the pool and not yet finished. */
int orch_active_tasks(const struct orch *o);

/* Cancel every active task with `reason` (enum task_cancel). */
void orch_cancel_all(struct orch *o, int reason);

void orch_get_stats(const struct orch *o, struct orch_stats *st);

/*
 * Give up on an active task that has not finished: send a failure result
 * (code, message) built only from its ids, at once. Its handler still runs
 * and still owns the task; when its DONE arrives, orch_task_done() drops it
 * without a second result and only then gives its global slot back (its
 * thread was busy until then, so the capacity stays right). Returns 0, or
 * -ENOENT when t is not active.
 */
int orch_abandon(struct orch *o, struct task *t, const char *code, const char *message);

/* orch_abandon() every active task, each logged; returns how many. */
int orch_abandon_all(struct orch *o, const char *code, const char *message);

/* Tasks given up on whose handler still runs ("stuck"). */
int orch_stuck_tasks(const struct orch *o);

/*
 * Deadlines ([limits] TYPE.timeout, measured from the handler's start):
 * cancel (TASK_CANCEL_DEADLINE) a running task whose timeout passed; give
 * up on it (TIMEOUT_ERROR, logged as stuck) when it still runs `grace`
 * seconds later. Call it periodically from the loop.
 */
void orch_supervise(struct orch *o, double grace);

/*
 * Reload: use cfg and plugins from now on (token, intervals, backoff caps,
 * WebSocket, advertised types; registers again when the set of types
 * changed). The URL and worker id are the caller's to keep unchanged. The
 * old cfg is no longer referenced by orch once this returns; the old
 * plugin set may be, by tasks still running with its plugins and by a poll
 * sent before the reload (its task runs with the old plugin when the new
 * set lacks the type): see orch_uses_plugins().
 */
void orch_reconfigure(struct orch *o, const struct cfg *cfg, const struct plugin_set *plugins);

/* How many active or given-up tasks run with a plugin of `set`, plus one
 * while a poll sent under `set` is in flight. */
int orch_uses_plugins(const struct orch *o, const struct plugin_set *set);

/* Record finished tasks (outcome, handler run time) in ts from now on;
 * NULL: not recorded. Borrowed; ts may be shared by several orchs. */
void orch_set_taskstats(struct orch *o, struct taskstats *ts);

/*
 * Reading the orchestrator's answers: pure functions, exposed for unit tests
 * and the fuzzer (fuzz/fuzz_orch_response.c). body is any bytes (len of
 * them, not necessarily NUL-terminated); none of them ever crashes.
 */

/* The server's {"error": "..."} text, or the first 120 bytes of the body with
 * control characters blanked, into out (always NUL-terminated). */
void orch_answer_text(const char *body, size_t len, char *out, size_t outlen);

enum orch_hb_answer {
    ORCH_HB_OK,         /* nothing to do (cancels already reported) */
    ORCH_HB_EXPIRED,    /* a probe answered null or not JSON: register again */
    ORCH_HB_UNEXPECTED, /* a full heartbeat answered something that is not an object */
};
typedef void (*orch_cancel_fn)(void *arg, const char *task_id);

/* A 200 answer to a heartbeat (probe: the empty-body PATCH, 2.3). Calls
 * on_cancel for every string in the object's cancel_task_ids, in order. */
enum orch_hb_answer orch_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                orch_cancel_fn on_cancel, void *arg);

/* A 200 answer to a registration (2.1): 1 when it says "registered"; then
 * *warning is its "warning" text (caller frees) or NULL. 0 otherwise, with
 * *warning NULL. */
int orch_parse_register_answer(const char *body, size_t len, char **warning);

/* A 200 answer to a result (2.4): 1 when the orchestrator ignored it, with
 * "reason (message)" in out; 0 when accepted, with its transition or status
 * (or "200") in out. */
int orch_parse_result_answer(const char *body, size_t len, char *out, size_t outlen);

/* A WebSocket text message (2.6): the task id of a cancel_task command
 * (caller frees), or NULL for anything else. */
char *orch_parse_ws_command(const char *msg, size_t len);

/*
 * Several orchestrators (PROTOCOL.md 4.9; orchset.h): one struct orch per
 * entry of cfg->orchs, each with its own registration, heartbeats,
 * WebSocket, token and outbox. orch_create() is orch_create_for(..., 0, ...).
 * The orch finds its entry again by URL after a reload (orch_reconfigure),
 * for its token.
 */
struct orch *orch_create_for(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                             size_t index, struct pool *pool, const struct plugin_set *plugins);

/* The entry's name (for logs) and base URL: the URL is the identity a
 * result keeps until it is delivered (a spooled result names it). */
const char *orch_name(const struct orch *o);
const char *orch_url(const struct orch *o);

/*
 * Who decides when to poll. Without a scheduler an orch polls whenever a
 * global slot is free. With one, every occasion to poll (a slot came back,
 * registered, a poll ended, a backoff ran out) calls kick(arg) instead, and
 * the scheduler starts polls with orch_poll() (loop thread; kick may call
 * orch_poll on any orch, never re-entered from orch_poll itself).
 */
void orch_set_scheduler(struct orch *o, void (*kick)(void *arg), void *arg);

/*
 * The pool is shared by every orchestrator, so a task accepted or finished,
 * or a slot given back, changes what each of them must be told (status,
 * skills with a free slot). Without a hook such a change schedules a
 * debounced heartbeat to this orchestrator; with one it calls beat(arg),
 * which should call orch_heartbeat_soon() on every orch (loop thread).
 */
void orch_set_state_hook(struct orch *o, void (*beat)(void *arg), void *arg);

/* A heartbeat heartbeat_debounce from now (at most one per interval). */
void orch_heartbeat_soon(struct orch *o);

enum orch_poll_state {
    ORCH_POLL_DOWN,  /* not registered, draining, or backing off after a failure */
    ORCH_POLL_READY, /* healthy and without a poll in flight */
    ORCH_POLL_BUSY,  /* a long-poll is in flight */
};
enum orch_poll_state orch_poll_state(const struct orch *o);

/* Start a long-poll when READY (no-op otherwise). The caller has checked
 * that a global slot is free for the task it may bring. */
void orch_poll(struct orch *o);

/* 1 when t is a running task that came from o (task->origin == o). */
int orch_has_task(const struct orch *o, const struct task *t);

#endif /* AVT_DAEMON_ORCH_H */
