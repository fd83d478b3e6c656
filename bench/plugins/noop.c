/*
 * noop.c - benchmark plugin: task type "noop" succeeds at once with {}, so
 * that everything a benchmark measures on it is the daemon's own cost per
 * task (poll, parse, dispatch to a thread, result, delivery). With params
 * {"stamp": true} the data carries the handler's start and end times
 * (stamp.h) for the latency figures.
 */
#include "stamp.h"

static int noop_handle(void *state, struct avt_task *task)
{
    double t0 = stamp_now();

    (void)state;
    return stamp_succeed(task, stamp_wanted(task), t0);
}

static const char *const noop_types[] = {"noop", NULL};

AVT_PLUGIN(.name = "noop", .version = "1.0.0", .task_types = noop_types, .handle = noop_handle);
