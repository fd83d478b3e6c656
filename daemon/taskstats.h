/*
 * taskstats.h - what became of the finished tasks: counts by type, result
 * status and error code, and a histogram of handler run time per type. One
 * table for the whole daemon (every orchestrator's tasks), read by /metrics.
 *
 * Memory is bounded whatever the tasks say: at most TASKSTATS_TYPES_MAX
 * types (the last entry collects every further type as "_other") and
 * TASKSTATS_OUTCOMES_MAX (type, status, code) combinations (the last one
 * collects the rest as "_other"/"_other"/"_other"). No allocation once a
 * type and an outcome have been seen. Loop thread only.
 */
#ifndef AVT_DAEMON_TASKSTATS_H
#define AVT_DAEMON_TASKSTATS_H

#include <stddef.h>

#define TASKSTATS_TYPES_MAX 128
#define TASKSTATS_OUTCOMES_MAX 256
#define TASKSTATS_BUCKETS 16

struct taskstats_outcome {
    const char *type, *status, *code; /* code is "" unless the task failed */
    unsigned long count;
};

/* Counts per bucket (not cumulative): bucket i holds run times <=
 * taskstats_bounds[i] and above the previous bound; the last one (index
 * TASKSTATS_BUCKETS) everything longer. */
struct taskstats_duration {
    const char *type;
    unsigned long count;
    double sum;
    unsigned long buckets[TASKSTATS_BUCKETS + 1];
};

/* The upper bounds, in seconds (5 ms ... 1 h). */
extern const double taskstats_bounds[TASKSTATS_BUCKETS];

struct taskstats;

struct taskstats *taskstats_create(void);
/* NULL is a no-op. */
void taskstats_destroy(struct taskstats *ts);

/* One result sent for a task of `type`: its status ("success", a custom
 * status, "failure", "cancelled") and error code (NULL or "" unless it
 * failed). NULL ts is a no-op. */
void taskstats_outcome(struct taskstats *ts, const char *type, const char *status,
                       const char *code);

/* One handler of `type` ran for `seconds` (negative: ignored). */
void taskstats_duration(struct taskstats *ts, const char *type, double seconds);

/* The tables (borrowed: valid until the next taskstats_* call that records);
 * *n is set to the number of entries. */
const struct taskstats_outcome *taskstats_get_outcomes(const struct taskstats *ts, size_t *n);
const struct taskstats_duration *taskstats_get_durations(const struct taskstats *ts, size_t *n);

#endif /* AVT_DAEMON_TASKSTATS_H */
