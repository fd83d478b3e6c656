/*
 * cfg.h - worker.ini plus the environment, parsed once into an immutable
 * struct cfg. Every value is validated here; nothing else in the daemon
 * reads the INI file or the configuration environment variables. A reload
 * builds a new struct cfg and swaps it in.
 *
 * Precedence: built-in defaults < worker.ini < environment variables.
 * Errors are reported as "file:line: key: what is wrong" (or
 * "environment: VAR: what is wrong") in the caller's buffer; callers exit 78
 * (EX_CONFIG) at start-up.
 */
#ifndef AVT_DAEMON_CFG_H
#define AVT_DAEMON_CFG_H

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#define EX_CONFIG_CODE 78

/* [limits]: per task type. */
struct cfg_limit {
    char *type;
    int max;        /* concurrent tasks of this type; 0 = only the global limit */
    double timeout; /* seconds a task of this type may run; 0 = no deadline */
};

/* One orchestrator: [orchestrator.NAME] sections or ORCHESTRATORS_CONFIG
 * (PROTOCOL.md 4.9), or the single [orchestrator] url. */
struct cfg_orch {
    char *name;       /* the section's NAME, the JSON "name", or "default" / "orchN" */
    char *url;        /* as [orchestrator] url; unique in the list */
    int priority;     /* lower is preferred; default 10 (1 for the single url) */
    int weight;       /* ROUND_ROBIN share, 1..1000; default 1 */
    char *token;      /* this orchestrator's token; NULL = the global one. Never log. */
    char *token_file; /* read at load like [orchestrator] token_file */
    int protocol;     /* enum cfg_protocol; the [orchestrator] protocol unless set */
};

/* [orchestrator] protocol / RXON_PROTOCOL: the wire dialect. */
enum cfg_protocol {
    CFG_PROTOCOL_AUTO,   /* detected per orchestrator (PROTOCOL-1.0b14.md 4.2) */
    CFG_PROTOCOL_1_0B3,  /* RXON 1.0b3, Avtomatika 1.0b13 */
    CFG_PROTOCOL_1_0B14, /* RXON 1.0b14, Avtomatika 1.0b27 */
};

/* "auto", "1.0b3" or "1.0b14". */
const char *cfg_protocol_name(int protocol);

/* [orchestrator] access_tokens / WORKER_ACCESS_TOKENS: STS access tokens. */
enum cfg_access_tokens {
    CFG_ACCESS_AUTO, /* with a client certificate (1.0b3 issues them only then) */
    CFG_ACCESS_ON,   /* always (1.0b14 issues them for any credential) */
    CFG_ACCESS_OFF,
};

/* MULTI_ORCHESTRATOR_MODE */
enum cfg_multi_mode {
    CFG_MULTI_FAILOVER,    /* poll the first healthy orchestrator in priority order */
    CFG_MULTI_ROUND_ROBIN, /* smooth weighted round robin of polls */
};

/* One key of a [plugin.NAME] section, kept for the plugin's configure(). */
struct cfg_plugin_key {
    char *plugin;
    char *key;
    char *value;
    char *file; /* where it was set, for "file:line" errors */
    int line;
};

struct cfg {
    char *path; /* the INI file, or NULL when running on defaults + env */

    /* [worker] */
    char *worker_id;          /* WORKER_ID; ^[a-zA-Z0-9_-]+$; default avtworkerd-<hostname> */
    char *worker_type;        /* WORKER_TYPE; default "generic-worker" */
    int max_concurrent_tasks; /* MAX_CONCURRENT_TASKS; 1..4096, default 10 */
    int cpu_cores;            /* CPU_CORES; default: online CPUs */
    char *plugin_dir;         /* default AVT_PLUGINDIR */
    char *state_dir;          /* STATE_DIRECTORY (systemd) or /var/lib/avtworkerd */
    double shutdown_timeout;  /* WORKER_SHUTDOWN_TIMEOUT; seconds, default 30 */
    int advertise_busy;       /* ADVERTISE_BUSY; withdraw full types (status busy); default 0 */
    int crash_limit;          /* a type running at N crashes in a row fails PERMANENT; default 3 */
    double cancel_grace;      /* seconds between a task's cancellation (deadline or drain)
                                 and reporting it failed; default 5 */
    int restart_on_stuck;     /* drain and exit 75 when a handler ignores its
                                 cancellation; default 1 */
    int batch_scheduling;     /* SCHED_BATCH for every thread (and child); default 1 */
    int log_level;            /* LOG_LEVEL; syslog level, default LOG_INFO */
    int log_format;           /* LOG_FORMAT; enum log_format, default auto */
    char *hostname;           /* HOSTNAME_OVERRIDE; default gethostname() */
    char *ip_address;         /* IP_ADDRESS; default resolved hostname or 127.0.0.1 */
    char *gpu_model;          /* GPU_MODEL; NULL = no GPU */
    int gpu_vram_gb;          /* GPU_VRAM_GB */
    json_t *installed_software; /* INSTALLED_SOFTWARE; JSON object */
    json_t *installed_models;   /* INSTALLED_MODELS; JSON array of {name, version} */
    json_t *cost_per_skill;     /* COST_PER_SKILL; JSON object skill -> number */
    json_t *extra;              /* [capabilities] and WORKER_EXTRA_*; JSON object */

    /* [orchestrator] */
    char *url;                 /* ORCHESTRATOR_URL; http:// or https://, no trailing '/' */
    char *token;               /* WORKER_INDIVIDUAL_TOKEN > WORKER_TOKEN > token_file. Never log. */
    char *token_file;          /* WORKER_TOKEN_FILE; read at load, trailing newline stripped */
    double poll_timeout;       /* TASK_POLL_TIMEOUT; server hold, seconds, default 30 */
    double heartbeat_interval; /* HEARTBEAT_INTERVAL; seconds, default 15 */
    double heartbeat_debounce; /* WORKER_HEARTBEAT_DEBOUNCE_DELAY; seconds, default 1 */
    int websockets;            /* WORKER_ENABLE_WEBSOCKETS; default 1 */
    double result_retry_initial_delay; /* RESULT_RETRY_INITIAL_DELAY; default 1.0 */
    double retry_max_delay;            /* BACKOFF_MAX_DELAY; cap of every backoff, default 60 */
    int probe_every;                   /* empty-body liveness PATCH every N heartbeats; default 4 */
    int max_task_bytes;     /* the largest poll answer (one task) read, bytes; default 16 MiB */
    int max_polls;          /* long-polls in flight per orchestrator at most; default 8 */
    int compressed_answers; /* ask for gzip answers (the orchestrator pays for it); default 0 */

    /* The orchestrators, sorted by (priority, url); never empty: without a
     * list it holds one entry made of url (the global token applies). */
    struct cfg_orch *orchs;
    size_t norchs;
    int orchs_listed; /* 1: from [orchestrator.NAME] or ORCHESTRATORS_CONFIG */
    int multi_mode;   /* [orchestrator] multi_mode; enum cfg_multi_mode */
    int protocol;     /* [orchestrator] protocol; enum cfg_protocol; default auto */
    /* The key that signs RXON 1.0b14 messages: the orchestrator's individual
     * token for this worker, else its global token; by default the token
     * this worker authenticates with (never an STS access token). Set it
     * when the two differ (the orchestrator in mtls-only mode). Never log. */
    char *signing_key;      /* WORKER_SIGNING_KEY */
    char *signing_key_file; /* WORKER_SIGNING_KEY_FILE; read at load */
    int access_tokens;      /* [orchestrator] access_tokens; enum cfg_access_tokens */

    /* [tls] (https:// orchestrators; verification is always on unless
     * insecure_skip_verify) */
    char *tls_ca_file;   /* TLS_CA_PATH; NULL = the system CA store */
    char *tls_cert_file; /* TLS_CERT_PATH; client certificate (mTLS + STS tokens) */
    char *tls_key_file;  /* TLS_KEY_PATH; refused when group/others can access it */
    int tls_insecure;    /* TLS_INSECURE; do not verify the orchestrator (loudly logged) */

    /* [admin] */
    char *admin_listen; /* ADMIN_PORT; "ADDRESS:PORT" of the metrics/health endpoint,
                           NULL = off (the default) */

    /* [spool] the durable result outbox in state_dir/spool (README "Delivery
     * guarantee") */
    double spool_max_bytes; /* no new tasks while the spool holds this much; default 256 MiB */
    int spool_max_files;    /* ... or this many results; default 100000; 0 = no bound */
    double spool_max_age;   /* seconds; older results are dropped (logged); default 7 days */

    /* [limits] */
    struct cfg_limit *limits;
    size_t nlimits;

    /* [plugin.NAME] */
    struct cfg_plugin_key *plugin_keys;
    size_t nplugin_keys;
};

/*
 * Build a cfg from built-in defaults, the INI file at `path` (NULL: none)
 * and the environment. On success returns 0 and sets *out. On failure
 * returns -EINVAL (or -errno when the file cannot be read) and writes
 * "file:line: key: what is wrong" into err.
 */
int cfg_load(const char *path, struct cfg **out, char *err, size_t errlen);

/*
 * Take the secrets out of the environment: WORKER_TOKEN,
 * WORKER_INDIVIDUAL_TOKEN, WORKER_SIGNING_KEY (every variable of a token
 * key) and ORCHESTRATORS_CONFIG (it may carry tokens). Their values are kept
 * for every later cfg_load(), so a reload reads them as the start did; the
 * environment's copies are overwritten and unset, so that no plugin, library
 * or child process finds them there, nor /proc/PID/environ. Call it once,
 * from main() before any thread exists (unsetenv() is not thread-safe).
 */
void cfg_env_scrub(void);

/* 1 when url is http:// to a host that may be another machine: anything
 * but localhost, *.localhost, 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
 * A token sent there crosses the network in clear text. 0 for https://. */
int cfg_url_is_cleartext_remote(const char *url);

void cfg_destroy(struct cfg *cfg);

/* The plugin directory compiled in (make's PLUGINDIR), used when neither
 * [worker] plugin_dir, AVT_PLUGIN_DIR nor -P names one. */
const char *cfg_default_plugin_dir(void);

/* The URL of the first orchestrator this worker has no credential for (no
 * token or token_file, global or its own, and no client certificate), or
 * NULL when every one has one. The orchestrator refuses such a worker. */
const char *cfg_orch_without_credential(const struct cfg *cfg);

/* The limit entry of a task type, or NULL when it has none. */
const struct cfg_limit *cfg_limit_find(const struct cfg *cfg, const char *type);

/* Print the effective configuration as INI text; the token is masked. */
void cfg_dump(const struct cfg *cfg, FILE *fp);

#endif /* AVT_DAEMON_CFG_H */
