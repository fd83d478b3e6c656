/*
 * exitguard.c - catch an exit() that is not the daemon's own (exitguard.h).
 *
 * Each thread records the plugin code it runs in a thread-local pointer to
 * a site on its own stack (plugin.c sets it around every call into a
 * plugin). exit() runs the exit handlers on the thread that called it, so
 * the hook reads its own thread's site: the plugin and the task are known
 * exactly when that thread called exit(). A thread a plugin started itself
 * has no site; the line then says so.
 *
 * The daemon's own exits: main() returning (exitguard_own_exit() first) and
 * fatal()/fatalx() (log_fatal_exiting()).
 *
 * on_exit() (glibc) rather than atexit(), for the status the plugin passed.
 * The hook only logs (one write(2)) and calls _exit(): no lock is taken, no
 * memory freed, nothing another thread uses is torn down.
 */
#include "exitguard.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"

static atomic_int own_exit;
static _Thread_local const struct exitguard_site *current;

static void caught(const char *how)
{
    const struct exitguard_site *s = current;
    if (s != NULL && s->plugin != NULL) {
        struct log_ctx ctx = {s->plugin, s->task_id, s->job_id, s->type};
        log_emit(LOG_CRIT, &ctx,
                 "plugin %s called %s in its %s: the daemon stops with exit status %d so that it "
                 "is restarted%s; a plugin must return an error, never exit (avt_plugin(3))",
                 s->plugin, how, s->call != NULL ? s->call : "code", EXITGUARD_STATUS,
                 s->task_id != NULL ? ", and the next start reports the task as crashed" : "");
    } else {
        log_emit(LOG_CRIT, NULL,
                 "%s was called by code that is not the daemon's (a thread a plugin started, or "
                 "a library a plugin uses): the daemon stops with exit status %d so that it is "
                 "restarted, and the next start reports the tasks that were running as crashed; "
                 "a plugin must return an error, never exit (avt_plugin(3))",
                 how, EXITGUARD_STATUS);
    }
    _exit(EXITGUARD_STATUS);
}

static void on_exit_hook(int status, void *arg)
{
    (void)arg;
    if (atomic_load(&own_exit) || log_fatal_exiting())
        return;
    char how[32];
    snprintf(how, sizeof(how), "exit(%d)", status);
    caught(how);
}

static void on_quick_exit_hook(void)
{
    if (!atomic_load(&own_exit) && !log_fatal_exiting())
        caught("quick_exit()");
}

void exitguard_install(void)
{
    if (on_exit(on_exit_hook, NULL) != 0 || at_quick_exit(on_quick_exit_hook) != 0)
        log_warn("cannot register the exit hook: a plugin calling exit() would end the daemon "
                 "without a trace");
}

void exitguard_own_exit(void)
{
    atomic_store(&own_exit, 1);
}

const struct exitguard_site *exitguard_enter(const struct exitguard_site *site)
{
    const struct exitguard_site *prev = current;
    current = site;
    return prev;
}

void exitguard_leave(const struct exitguard_site *previous)
{
    current = previous;
}
