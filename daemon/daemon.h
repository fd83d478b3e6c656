/*
 * daemon.h - the serving mode: everything between a loaded configuration
 * and the process exit status (plugins, pool, event loop, orchestrator
 * connection, signals, drain, deadlines, reload, systemd notifications).
 */
#ifndef AVT_DAEMON_DAEMON_H
#define AVT_DAEMON_DAEMON_H

struct cfg;

/* Exit status after a drain started because handlers were stuck
 * (EX_TEMPFAIL): systemd's Restart=on-failure restarts the daemon. */
#define DAEMON_EXIT_RESTART 75

/* The -P directory, which replaces plugin_dir also when SIGHUP reloads
 * the configuration. Borrowed; call before daemon_run(). */
void daemon_set_plugin_dir_override(const char *dir);

/* Load the plugins, serve until SIGTERM/SIGINT (SIGHUP reloads), drain;
 * returns the exit status: 0, 78 when the plugins are refused, or
 * DAEMON_EXIT_RESTART. cfg is borrowed and must outlive the call; a
 * configuration loaded by a reload is the daemon's own. */
int daemon_run(struct cfg *cfg);

#endif /* AVT_DAEMON_DAEMON_H */
