/*
 * host.h - the host function table (struct avt_host of sdk/avt_plugin.h):
 * what a plugin can ask of the daemon. Each plugin gets its own copy of
 * the table inside its struct plugin, so a call made with the table tells
 * which plugin it comes from (log lines are tagged with it, hot-cache
 * changes go to its event queue). Outcomes are the task's business
 * (task.h); progress, events and hot-cache changes go to the loop through
 * the worker-to-loop queue (evq.h). Every function may be called from any
 * thread, as the SDK promises.
 */
#ifndef AVT_DAEMON_HOST_H
#define AVT_DAEMON_HOST_H

#include "avt_plugin.h"

/* Fill a plugin's host table with the daemon's host functions. */
void host_init(struct avt_host *host);

#endif /* AVT_DAEMON_HOST_H */
