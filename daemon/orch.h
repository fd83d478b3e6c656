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

struct orch;

struct orch_stats {
    int registered;
    unsigned long polls, polls_failed, tasks_received, tasks_invalid;
    unsigned long heartbeats, heartbeats_failed, registrations;
    unsigned long results_sent, results_failed, results_pending;
    unsigned long ws_connects, ws_messages;
};

struct orch *orch_create(struct ev_loop *loop, struct http *http, const struct cfg *cfg,
                         struct pool *pool, const struct plugin_set *plugins);
void orch_destroy(struct orch *o);

/* Begin: register, then poll and heartbeat. */
void orch_start(struct orch *o);

/* A task finished (its DONE event); orch takes ownership, sends its result
 * and frees it once delivered. */
void orch_task_done(struct orch *o, struct task *t);

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

#endif /* AVT_DAEMON_ORCH_H */
