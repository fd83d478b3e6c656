/*
 * sleep.c - benchmark plugin: task type "sleep" waits params.ms
 * milliseconds (default 0) without using the CPU, standing in for I/O-bound
 * handlers (a download, a remote call). It wakes every 100 ms to honour a
 * cancellation. With params {"stamp": true} the data carries the handler's
 * start and end times (stamp.h).
 */
#include <errno.h>

#include "stamp.h"

/* Sleep `ms` milliseconds in slices of at most 100 ms; stop early when the
 * task is cancelled. */
static void sleep_ms(const struct avt_task *task, double ms)
{
    while (ms > 0 && !avt_is_cancelled(task)) {
        double slice = ms < 100 ? ms : 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(slice * 1e6)};

        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        ms -= slice;
    }
}

static int sleep_handle(void *state, struct avt_task *task)
{
    double t0 = stamp_now();
    json_t *ms = json_object_get(task->params, "ms");

    (void)state;
    if (ms != NULL && (!json_is_number(ms) || json_number_value(ms) < 0 ||
                       json_number_value(ms) > 86400e3)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.ms must be a number from 0 to 86400000");
        return 0;
    }
    sleep_ms(task, ms != NULL ? json_number_value(ms) : 0);
    return stamp_succeed(task, stamp_wanted(task), t0);
}

static const char *const sleep_types[] = {"sleep", NULL};

AVT_PLUGIN(.name = "sleep", .version = "1.0.0", .task_types = sleep_types,
           .handle = sleep_handle);
