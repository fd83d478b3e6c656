/*
 * task.h - the task object and its outcome.
 *
 * A struct task is created by the loop thread from a poll payload
 * (task_parse), handed to the pool, run by exactly one worker thread (which
 * calls the plugin's handle() and then task_finish()), and handed back to
 * the loop thread through the worker-to-loop queue (evq.h), which turns it
 * into a result record (task_result_json) and frees it. The public part
 * (struct avt_task) is the first member, so the host functions find the
 * task from the pointer the plugin passes.
 *
 * Outcome mapping (task_finish):
 *   - cancelled by the orchestrator (cancel_reason TASK_CANCEL_ORCHESTRATOR)
 *     -> status "cancelled", whatever the handler set;
 *   - cancelled by its deadline -> failure TIMEOUT_ERROR (retried) unless
 *     the handler succeeded (a failure it reported is replaced);
 *   - cancelled by shutdown -> failure TRANSIENT_ERROR "worker shutting
 *     down" unless the handler succeeded (a failure is replaced);
 *   - succeed()/complete() -> status "success" / the custom status, data;
 *   - fail() -> status "failure", error {code, message};
 *   - no outcome -> failure TRANSIENT_ERROR, message "handler returned
 *     without an outcome" (rc 0) or "handler returned error N without an
 *     outcome" (rc != 0).
 */
#ifndef AVT_DAEMON_TASK_H
#define AVT_DAEMON_TASK_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>

#include <jansson.h>

#include "avt_plugin.h"

/* Error and progress messages are cut to this many bytes. */
#define TASK_MESSAGE_MAX 16384

struct evq;
struct orch;
struct plugin;

enum task_outcome {
    TASK_OUTCOME_NONE = 0,
    TASK_OUTCOME_SUCCESS, /* status = "success" or a custom status; data */
    TASK_OUTCOME_FAILURE, /* status = "failure"; err_code, err_msg */
    TASK_OUTCOME_CANCELLED,
};

enum task_cancel {
    TASK_CANCEL_NONE = 0,
    TASK_CANCEL_ORCHESTRATOR, /* WebSocket cancel_task or heartbeat cancel_task_ids */
    TASK_CANCEL_DEADLINE,     /* the type's timeout passed */
    TASK_CANCEL_SHUTDOWN,     /* drain timeout passed */
};

struct task {
    struct avt_task pub; /* first: the plugin sees this */

    char *id;
    char *job_id;
    char *type;
    json_t *payload; /* the whole poll payload; owns params etc. */

    struct plugin *plugin; /* NULL: unknown type (PERMANENT_ERROR) */
    struct evq *evq;       /* where its progress goes; set by pool_submit() */
    struct orch *origin;   /* the orchestrator it came from (its result goes there) */
    int events_ok;         /* its orchestrator takes custom events; set before pool_submit */
    unsigned long long journal_seq; /* its crash journal entry, 0 = none (journal.h) */

    atomic_int cancel;      /* enum task_cancel; set by the loop, read by the handler */
    atomic_int has_outcome; /* 0 until the first outcome call wins */

    /* Outcome: written once by the winner of has_outcome, read by the loop
     * after the completion event. */
    enum task_outcome outcome;
    char *status;   /* "success", a custom status, "failure", "cancelled" */
    json_t *data;   /* owned; NULL = null */
    char *err_code; /* failure only */
    char *err_msg;  /* failure only */

    /* Progress, coalesced: the worker thread writes it under the event
     * queue's lock and posts an event only when none is pending (evq.c). */
    double progress;      /* 0..100 */
    char *progress_msg;   /* owned */
    int progress_pending; /* an event is queued */

    /* The orchestrator's deadline for the result as now_mono(), 0 = none
     * (pub.deadline has it as unix seconds). */
    double deadline;

    /* Timestamps (now_mono()). */
    double t_received;
    double t_started;
    double t_finished;

    struct task *next; /* queue link, owned by whichever queue holds it */
    int pool_type;     /* the pool's index of the type's counters, -1 = none; pool.c only */
};

/* The task behind the pointer a plugin passes to a host function. */
#define task_of(pubp) container_of((pubp), struct task, pub)

/*
 * Parse a poll payload (PROTOCOL.md 2.2: job_id, task_id, type, params,
 * tracing_context, params_metadata). Returns 0 and a new task on success.
 * On a payload that is not a valid task returns -EINVAL with the reason in
 * err; then *out is NULL, or, when the payload carries string job_id and
 * task_id, a task whose outcome is already INVALID_INPUT_ERROR (send its
 * result, do not run it). Never crashes on any input.
 */
int task_parse(const char *buf, size_t len, struct task **out, char *err, size_t errlen);

/* A task built from parts (run-once, tests). params is stolen (NULL = {}). */
struct task *task_create(const char *id, const char *job_id, const char *type, json_t *params);

void task_destroy(struct task *t);

/* Apply the outcome mapping to the handler's return code. Called by
 * plugin_run() (plugin.h) once the handler returned; exposed for unit
 * tests. */
void task_finish(struct task *t, int handler_rc);

/* Record an outcome from the daemon itself (invalid payload, shutdown
 * failure, crash journal). Ignored when the task already has one. */
void task_set_failure(struct task *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * The outcomes a handler reports (host.c; worker thread, or any thread the
 * plugin calls from): the first outcome wins and later ones return
 * -EALREADY. task_succeed() and task_complete() steal `data`, which must be
 * a JSON object or NULL (anything else is refused: the task then fails
 * TRANSIENT_ERROR, -EINVAL). A custom status may not be empty, "failure" or
 * "cancelled" (-EINVAL); an empty code is -EINVAL.
 */
int task_succeed(struct task *t, json_t *data);
int task_complete(struct task *t, const char *status, json_t *data);
int task_vfail(struct task *t, const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Ask the handler to stop. Any thread. The first reason sticks. */
void task_cancel(struct task *t, enum task_cancel reason);

/*
 * The task's result record: {"job_id","task_id","worker_id","status","data",
 * "error","data_metadata"}; error is {"code","message"} or null. This is
 * the dialect-neutral form the outbox spools (it happens to be RXON 1.0b3's
 * wire body, PROTOCOL.md 2.4); each wire dialect derives its own body from
 * it at send time (rxon.h). New reference.
 */
json_t *task_result_json(const struct task *t, const char *worker_id);

#endif /* AVT_DAEMON_TASK_H */
