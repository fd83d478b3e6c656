/*
 * stamp.h - shared by the benchmark plugins: CLOCK_REALTIME timestamps that
 * a handler puts into its result data when the task's params ask for them
 * ({"stamp": true}). The fake orchestrator (fakeorch.py, config timings)
 * stores them next to its own enqueue and result-arrival times, on the same
 * clock, so bench.py can split a task's latency into pickup (enqueued to
 * handler start) and result delivery (handler end to result arrival).
 */
#ifndef AVT_BENCH_STAMP_H
#define AVT_BENCH_STAMP_H

#include <time.h>

#include <avt_plugin.h>

/* Seconds since the epoch, as Python's time.time(). */
static inline double stamp_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether the task asks for timestamps. */
static inline int stamp_wanted(const struct avt_task *task)
{
    return json_is_true(json_object_get(task->params, "stamp"));
}

/* Succeed with {} or, when stamps are wanted, {"t0": start, "t1": now}. */
static inline int stamp_succeed(struct avt_task *task, int wanted, double t0)
{
    json_t *data = json_object();

    if (wanted && data != NULL) {
        json_object_set_new(data, "t0", json_real(t0));
        json_object_set_new(data, "t1", json_real(stamp_now()));
    }
    avt_succeed(task, data);
    return 0;
}

#endif /* AVT_BENCH_STAMP_H */
