/*
 * daemon.h - the serving mode: everything between a loaded configuration
 * and the process exit status (plugins, pool, event loop, orchestrator
 * connection, signals).
 */
#ifndef AVT_DAEMON_DAEMON_H
#define AVT_DAEMON_DAEMON_H

struct cfg;

/* Load the plugins, serve until SIGTERM/SIGINT, drain; returns the exit
 * status (0, or 78 when the plugins are refused). */
int daemon_run(struct cfg *cfg);

#endif /* AVT_DAEMON_DAEMON_H */
