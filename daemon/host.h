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

struct evq;

/* A plugin's host table and what its functions need to know about the
 * plugin; the table is first, so the address the plugin passes back finds
 * the rest. */
struct host_ctx {
    struct avt_host table;
    const char *plugin; /* the plugin's name, for log lines (borrowed) */
    struct evq *evq;    /* where hot-cache changes go; NULL: nowhere (--check-config) */
};

/* Fill the table with the daemon's host functions. */
void host_init(struct host_ctx *h, const char *plugin, struct evq *evq);

#endif /* AVT_DAEMON_HOST_H */
