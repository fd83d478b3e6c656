/*
 * runonce.h - `avtworkerd run-once TYPE [PARAMS_JSON | @FILE]`: run one task
 * through the daemon's own code path (plugin registry, pool with its limits,
 * outcome mapping, result body) without an orchestrator. The result object
 * that would be sent (PROTOCOL.md 2.4) goes to stdout, progress to stderr
 * (a live bar when stderr is a TTY, one line per update otherwise).
 */
#ifndef AVT_DAEMON_RUNONCE_H
#define AVT_DAEMON_RUNONCE_H

struct cfg;
struct plugin_set;

/* Returns the process exit code: 0 when the task succeeded (status
 * "success" or a custom status), 1 when it failed or was cancelled, 64
 * (EX_USAGE) for bad command-line input (params that are not a JSON object,
 * an unreadable @FILE, an empty TYPE), 78 (EX_CONFIG) when the plugins are
 * refused. An unknown type is NOT an argument error: it yields the
 * PERMANENT_ERROR result the daemon would send, exit 1. SIGINT or SIGTERM
 * cancel the task as the orchestrator would (result "cancelled", exit 1); a
 * second one exits 130 at once without a result. */
int runonce_main(const struct cfg *cfg, const char *plugin_dir, const char *type,
                 const char *params_arg);

#endif /* AVT_DAEMON_RUNONCE_H */
