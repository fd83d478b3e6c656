/*
 * exitguard.h - a plugin that calls exit() must not end the daemon quietly.
 *
 * exit(0) from a handler would otherwise end the process with status 0:
 * systemd's Restart=on-failure does not restart it, the task's journal
 * entry stays open and nothing says why the worker went away. The guard is
 * an exit hook: unless the daemon itself said it is exiting
 * (exitguard_own_exit), it logs at LOG_CRIT which plugin called exit() and
 * from where (its handler with the task's ids and type, init(), start(),
 * ...), as far as the calling thread knows, and ends the process with
 * _exit(EXITGUARD_STATUS) before any other exit handler runs. The next
 * start reports the task from the crash journal like any crash.
 *
 * quick_exit() is caught the same way; _exit(), abort() and signals are not
 * exits through here (a signal is a crash systemd restarts anyway).
 */
#ifndef AVT_DAEMON_EXITGUARD_H
#define AVT_DAEMON_EXITGUARD_H

/* EX_SOFTWARE: systemd's Restart=on-failure restarts the daemon. */
#define EXITGUARD_STATUS 70

/* What plugin code the calling thread runs; every field may be NULL. */
struct exitguard_site {
    const char *plugin;                  /* its name, or its file before the name is known */
    const char *call;                    /* "handler", "init()", "configure()", "start()", ... */
    const char *type, *task_id, *job_id; /* the task a handler runs */
};

/* Register the hook. Exit hooks run last-registered first, so the daemon
 * calls this once at the very start and again once its libraries and
 * plugins are set up (whose own exit handlers must not run while other
 * threads still use them). Main thread. */
void exitguard_install(void);

/* The daemon's own exit follows (main returns, fatal()): let it through.
 * Any thread. */
void exitguard_own_exit(void);

/* The calling thread enters plugin code at `site` (borrowed until the
 * matching leave); returns what it ran before, for exitguard_leave(). */
const struct exitguard_site *exitguard_enter(const struct exitguard_site *site);
void exitguard_leave(const struct exitguard_site *previous);

#endif /* AVT_DAEMON_EXITGUARD_H */
