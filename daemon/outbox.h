/*
 * outbox.h - the one outbox of the daemon: every result from the moment
 * its task finished until its orchestrator acknowledged it (ARCHITECTURE
 * "A result is durable before it is sent"; README "Delivery guarantee").
 *
 * A result record (task_result_json(), the dialect-neutral form) is
 * appended to the spool when it is added; the results added in one loop
 * wake-up are made durable together by outbox_flush() (one fdatasync:
 * group commit) and only then sent. Each result goes to the orchestrator
 * its task came from (a destination), through that orchestrator's session,
 * which turns the record into its dialect's bytes at send time. A 200
 * (accepted, or ignored because the orchestrator has it already) is the
 * acknowledgement: the spool records it and the result is freed. An answer
 * that may change (network error, 5xx, 408, 429, 401, 403) pauses that
 * destination's results for a jittered backoff and sends the failed result
 * to the back of its queue; other destinations are not affected. Any other
 * 4xx refuses that one result for good: it is set aside in
 * STATE_DIR/refused/ (spool_set_aside) and the others go on. Results older
 * than [spool] max_age are dropped (logged). At start the spool's
 * undelivered results of every destination are loaded ahead of anything
 * new; after a crash only the crash reports are held back (outbox_hold)
 * while the dead process's long-poll lapses.
 *
 * Capacity: a result added with holds_slot keeps its task's global slot
 * until it is delivered or its first attempt failed; then the release hook
 * gives the slot back. Capacity thus never depends on an orchestrator that
 * is down, and the orchestrator never sees a poll while it still counts
 * every slot busy.
 *
 * Loop thread only.
 */
#ifndef AVT_DAEMON_OUTBOX_H
#define AVT_DAEMON_OUTBOX_H

#include <stddef.h>

#include <jansson.h>

struct backoff;
struct cfg;
struct ev_loop;
struct http_response;
struct log_ctx;
struct spool;

/* What a destination's session answers about one send. */
struct outbox_answer {
    const struct http_response *r; /* the exchange (r->cancelled: dropped at shutdown) */
    int ignored;                   /* 200: the orchestrator ignored it (already has it) */
    const char *text;              /* 200: its transition or "reason (message)" */
};

typedef void (*outbox_answer_fn)(void *arg, const struct outbox_answer *a);

/* How results reach a destination (the daemon wires these to orch.h). */
struct outbox_sender {
    /* Send record (len bytes) to dest; `done` runs exactly once, never from
     * inside this call. Returns a handle for cancel(), or NULL (and no
     * `done`) when nothing can be sent any more (shutdown). */
    void *(*post)(void *dest, const char *record, size_t len, outbox_answer_fn done, void *arg);
    void (*cancel)(void *handle);
    /* How long to wait after a failed answer, logged for the operator. */
    double (*failure_delay)(void *dest, const char *what, const struct http_response *r,
                            struct backoff *b, const struct log_ctx *ctx);
};

/* What the outbox tells its owner (the daemon). */
struct outbox_hooks {
    /* A task's global slot is free again. */
    void (*release)(void *arg);
    /* The spool left its bound (delivered results made room) or can be
     * written again after a disk error: poll again. */
    void (*room)(void *arg);
    /* The result added with ref is settled: durable in the spool (after the
     * commit that covers it) or, when it could not be written, delivered or
     * set aside. The task's crash journal entry can close. */
    void (*settled)(void *arg, unsigned long long ref);
};

/* Why an orchestrator ignored a result (it counts as delivered), bounded:
 * the reasons of PROTOCOL-1.0b14.md 3.4, and "other". */
#define OUTBOX_IGNORED_REASONS 6
extern const char *const outbox_ignored_reasons[OUTBOX_IGNORED_REASONS];

struct outbox_stats {
    unsigned long sent;                            /* results acknowledged (accepted or ignored) */
    unsigned long ignored[OUTBOX_IGNORED_REASONS]; /* of those, ignored, by reason */
    unsigned long failed;                          /* attempts that failed */
    unsigned long refused;                         /* refused for good, set aside */
    unsigned long pending;                         /* results not yet acknowledged */
};

struct outbox;

/* spool: durable when not NULL (borrowed; must outlive the outbox). cfg:
 * retry delays; borrowed until the next outbox_reconfigure(). */
struct outbox *outbox_create(struct ev_loop *loop, const struct cfg *cfg, struct spool *spool,
                             const struct outbox_sender *sender, const struct outbox_hooks *hooks,
                             void *arg);
void outbox_destroy(struct outbox *ob); /* cancels sends in flight; NULL is a no-op */

/* A destination: results for `url` go to `dest` (borrowed; the URL is the
 * identity a spooled result keeps). Before outbox_load(). */
void outbox_add_dest(struct outbox *ob, void *dest, const char *url);

/* Queue the spooled results of every destination, oldest first. */
void outbox_load(struct outbox *ob);

/* Send no crash report of this start (outbox_spool) for `seconds`: the
 * previous process's long-poll may still be held by the orchestrator.
 * Everything else is sent at once. */
void outbox_hold(struct outbox *ob, double seconds);

/*
 * A finished task's result record for dest (record borrowed; the ids and
 * type are copied): spooled now, sent after the next outbox_flush().
 * holds_slot: give the task's global slot back through release() once it
 * is delivered or its first attempt failed. ref (0: none): passed to the
 * settled hook once the result is settled.
 */
void outbox_add(struct outbox *ob, void *dest, json_t *record, const char *task_id,
                const char *job_id, const char *type, int holds_slot, unsigned long long ref);

/* The end of a batch of outbox_add(): one commit, then the results go. */
void outbox_flush(struct outbox *ob);

/*
 * A result that belongs to the orchestrator at `url` but has no session
 * yet (the crash reports made at start): spooled and committed at once,
 * then loaded by outbox_load() like any result of a previous run, and held
 * back by outbox_hold(). Returns 0, or -errno (logged) when it could not be
 * made durable: it is then kept in memory and sent all the same.
 */
int outbox_spool(struct outbox *ob, const char *url, json_t *record, const char *task_id,
                 const char *job_id);

/* dest is (again) registered: send its waiting results now instead of
 * waiting out their backoff. */
void outbox_resume(struct outbox *ob, void *dest);

/* A reloaded configuration (retry delays). */
void outbox_reconfigure(struct outbox *ob, const struct cfg *cfg);

/* 1 when no result is waiting anywhere. */
int outbox_idle(const struct outbox *ob);

/* The figures of one destination (zeros for an unknown one). */
void outbox_get_stats(const struct outbox *ob, const void *dest, struct outbox_stats *st);

#endif /* AVT_DAEMON_OUTBOX_H */
