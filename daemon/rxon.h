/*
 * rxon.h - the wire dialect of one RXON protocol version: everything about
 * the bytes on the wire, and nothing else.
 *
 * A dialect is a table of pure functions (struct rxon_dialect): it builds
 * the bodies of registration, heartbeat, result, progress and event
 * messages from a neutral description of the worker and its state, turns a
 * body into the bytes to send (1.0b14 signs them), and reads the
 * orchestrator's answers (tasks, heartbeat and registration answers,
 * result answers, WebSocket commands). The protocol session (orch.c) holds
 * the state machine and the timers and calls through this table, so a
 * second RXON version is a second table, not branches in the session.
 *
 * Pure: no I/O, no global state, no clock except the wall-clock timestamp a
 * signed message carries. Everything that reads the orchestrator's bytes
 * accepts any input (the fuzzers call these functions directly) and never
 * crashes. Safe from any thread.
 */
#ifndef AVT_DAEMON_RXON_H
#define AVT_DAEMON_RXON_H

#include <stddef.h>

#include <jansson.h>

struct cfg;
struct plugin_set;
struct task;

/* The advice for a refused credential, shared by the dialects. */
#define RXON_TOKEN_ADVICE                                                                          \
    "set WORKER_TOKEN (or [orchestrator] token/token_file) to the orchestrator's "                 \
    "GLOBAL_WORKER_TOKEN, or to this worker's individual token from its workers.toml"

/* What the worker is, for registration and heartbeats. Borrowed. */
struct rxon_worker {
    const struct cfg *cfg;            /* identity, resources, capabilities */
    const struct plugin_set *plugins; /* the task types (skills) */
    json_t *hot_cache;                /* array of the names the plugins hold warm */
};

/* A running task, as heartbeats report it. */
struct rxon_task_ref {
    const char *task_id;
    const char *job_id;
};

/* What the worker is doing now, for a heartbeat. Borrowed. */
struct rxon_state {
    int draining;       /* stop offering work (a drain or shutdown) */
    int offline;        /* the last heartbeat before the process exits */
    int free_slots;     /* global slots not taken */
    json_t *skills_now; /* array of the types a task could start now */
    const struct rxon_task_ref *tasks;
    size_t ntasks;
    json_t *usage; /* {"cpu_load_percent","ram_used_gb"} when worth sending, else NULL */
};

/* Per-session memory of a dialect that needs one (1.0b14's skills hash);
 * owned by the session, read and written by the builders. */
struct rxon_sync {
    char skills_hash[72]; /* the hash the orchestrator has with our skills; "" = none */
    int full_sync;        /* send the whole skill list with the next heartbeat */
};

/* The signing identity of a session (1.0b14). Borrowed. */
struct rxon_key {
    const char *key;    /* the signing key: individual, else global token; NULL = none */
    const char *signer; /* the worker id */
};

enum rxon_msg {
    RXON_MSG_REGISTER,
    RXON_MSG_HEARTBEAT,
    RXON_MSG_RESULT,
    RXON_MSG_EVENT,
};

enum rxon_hb_answer {
    RXON_HB_OK,         /* nothing to do (cancels already reported) */
    RXON_HB_EXPIRED,    /* a probe answered null or not JSON: register again */
    RXON_HB_UNEXPECTED, /* a full heartbeat answered something that is not an object */
    RXON_HB_RESYNC,     /* the orchestrator lost our skills: register again (1.0b14) */
};

/* What an id in a cancel command names. */
enum rxon_cancel_kind {
    RXON_CANCEL_TASK,        /* a task id */
    RXON_CANCEL_TASK_IS_JOB, /* an id that is a task id and its job id alike (1.0b3
                                heartbeats); a task whose id differs is not meant */
    RXON_CANCEL_JOB,         /* every task of this job id (1.0b14 heartbeats) */
};

typedef void (*rxon_cancel_fn)(void *arg, enum rxon_cancel_kind kind, const char *id);

/* A WebSocket command from the orchestrator. */
struct rxon_command {
    char *task_id; /* cancel_task: the task (owned; NULL: none) */
    char *job_id;  /* and its job, when the dialect names it (owned; NULL: none) */
};

enum rxon_register_answer {
    RXON_REG_OK,
    RXON_REG_UNEXPECTED,    /* 200 but not "registered" */
    RXON_REG_WRONG_VERSION, /* registered, but the orchestrator speaks another version */
};

/* How a dialect carries progress. */
enum rxon_progress_via {
    RXON_PROGRESS_WS_ONLY,    /* a WebSocket frame or nothing (1.0b3) */
    RXON_PROGRESS_WS_OR_HTTP, /* the WebSocket when open, else POST events (1.0b14) */
};

struct rxon_dialect {
    const char *version;  /* X-RXON-Version, "1.0b3" */
    const char *server;   /* the orchestrator release it is known from */
    int worker_id_header; /* send X-Worker-ID on every request */
    long auth_status;     /* the status of a refused credential: 401 or 403 */
    int probe_expired;    /* an empty-body heartbeat answers null for an unknown worker */
    enum rxon_progress_via progress_via;
    const char *path_events; /* POST path of events, NULL when there is none */

    /* The registration body (new reference); updates sync. */
    json_t *(*register_body)(const struct rxon_worker *w, struct rxon_sync *sync);

    /* A heartbeat body with the worker's state (new reference); updates sync. */
    json_t *(*heartbeat_body)(const struct rxon_worker *w, const struct rxon_state *st,
                              struct rxon_sync *sync);

    /* The progress of a task as a message body (new reference; 0..100). */
    json_t *(*progress_body)(const struct rxon_worker *w, const struct task *t, double percent,
                             const char *message);

    /* A custom event of a task (payload borrowed; new reference), or NULL
     * when the dialect has no events. */
    json_t *(*event_body)(const struct rxon_worker *w, const struct task *t, const char *type,
                          json_t *payload);

    /* The bytes to send for a body: 0 and a new buffer, or -EINVAL with the
     * reason (the body cannot be sent: e.g. a number the orchestrator
     * cannot sign). */
    int (*encode)(json_t *body, enum rxon_msg kind, const struct rxon_key *key, char **out,
                  size_t *outlen, char *err, size_t errlen);

    /* The bytes to send for a spooled result record (task_result_json()'s
     * text): 0 with *out NULL means "send the record as it is"; 0 with a new
     * buffer; 1 with a new buffer holding a failure in its place, because
     * the record itself cannot be sent in this dialect (err says why: log
     * it); or -EINVAL when nothing can be sent. */
    int (*result_wire)(const struct rxon_worker *w, const char *record, size_t len,
                       const struct rxon_key *key, char **out, size_t *outlen, char *err,
                       size_t errlen);

    /* A poll answer: task_parse() plus what the dialect adds (task.h). */
    int (*parse_task)(const char *buf, size_t len, struct task **out, char *err, size_t errlen);

    /* A 200 answer to a heartbeat (probe: the empty-body PATCH). Calls
     * on_cancel for every id the orchestrator wants cancelled, in order. */
    enum rxon_hb_answer (*parse_heartbeat_answer)(const char *body, size_t len, int probe,
                                                  rxon_cancel_fn on_cancel, void *arg);

    /* A 200 answer to a registration; *warning is its warning text (caller
     * frees) or NULL. */
    enum rxon_register_answer (*parse_register_answer)(const char *body, size_t len,
                                                       char **warning);

    /* A 200 answer to a result: 1 when the orchestrator ignored it, with
     * "reason (message)" in out; 0 when accepted, with its transition. */
    int (*parse_result_answer)(const char *body, size_t len, char *out, size_t outlen);

    /* A 200 answer to an event: 0 when accepted, else -EINVAL with the
     * orchestrator's reason in out. NULL when the dialect has no events. */
    int (*parse_event_answer)(const char *body, size_t len, char *out, size_t outlen);

    /* A WebSocket text message: 1 and a cancel command in *cmd (free with
     * rxon_command_clear), or 0 for anything else. */
    int (*parse_ws_command)(const char *msg, size_t len, struct rxon_command *cmd);

    /*
     * The operator's fix for a refused message (status 401/403, or 400 for
     * a message the orchestrator could not validate), given the answer's
     * text and the measured difference of the orchestrator's clock from
     * ours (its Date header; NAN when unknown). Returns 1 with the advice in
     * out, 0 when the dialect has none for this status.
     */
    int (*explain)(long status, const char *text, double clock_skew, char *out, size_t outlen);

    int final_offline;            /* after a drain, a last heartbeat says "offline" */
    const char *path_sts_refresh; /* renew an access token with its refresh token; NULL: none */
    int sts_any_credential;       /* access tokens for any credential, not only a certificate */
};

/* RXON 1.0b3 as Avtomatika 1.0b13 speaks it (PROTOCOL.md). */
extern const struct rxon_dialect rxon_b3;

/* RXON 1.0b14 as Avtomatika 1.0b27 speaks it (PROTOCOL-1.0b14.md). */
extern const struct rxon_dialect rxon_b14;

/* The result-answer reader both versions share (parse_result_answer). */
int rxon_parse_result_answer(const char *body, size_t len, char *out, size_t outlen);

/* The heartbeat-answer reader both versions share: a probe (a heartbeat
 * without a body) answered null or not JSON is EXPIRED; the ids of
 * cancel_task_ids go to on_cancel as `kind`; with `full_sync`,
 * "require_full_sync": true is RESYNC; anything but an object for a
 * heartbeat with a body is UNEXPECTED. */
enum rxon_hb_answer rxon_parse_heartbeat_answer(const char *body, size_t len, int probe,
                                                enum rxon_cancel_kind kind, int full_sync,
                                                rxon_cancel_fn on_cancel, void *arg);

/* The register-answer reader both versions share: "registered" is OK, or
 * WRONG_VERSION when the answer names a version other than `version`;
 * the answer's warning, if any, into *warning (free it). */
enum rxon_register_answer rxon_parse_register_answer(const char *body, size_t len,
                                                     const char *version, char **warning);

/* A random RFC 4122 version-4 UUID, lowercase, into out. */
void rxon_uuid4(char out[37]);

/* The server's {"error": "..."} text (read only from a JSON object of at
 * most 64 KiB), or the first 120 bytes of the body with control characters
 * blanked, into out (always NUL-terminated). */
void rxon_answer_text(const char *body, size_t len, char *out, size_t outlen);

void rxon_command_clear(struct rxon_command *cmd);

#endif /* AVT_DAEMON_RXON_H */
