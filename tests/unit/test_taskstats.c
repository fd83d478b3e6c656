/*
 * test_taskstats.c - the finished-task tables: outcomes counted by (type,
 * status, code), run times in the right histogram bucket, and the bounds
 * that keep made-up types and error codes from growing memory ("_other").
 */
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "taskstats.h"

static unsigned long outcome_count(const struct taskstats *ts, const char *type, const char *status,
                                   const char *code)
{
    size_t n;
    const struct taskstats_outcome *oc = taskstats_get_outcomes(ts, &n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(oc[i].type, type) == 0 && strcmp(oc[i].status, status) == 0 &&
            strcmp(oc[i].code, code) == 0)
            return oc[i].count;
    }
    return 0;
}

static const struct taskstats_duration *duration_of(const struct taskstats *ts, const char *type)
{
    size_t n;
    const struct taskstats_duration *d = taskstats_get_durations(ts, &n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(d[i].type, type) == 0)
            return &d[i];
    }
    return NULL;
}

TEST(outcomes_are_counted_by_type_status_and_code)
{
    struct taskstats *ts = taskstats_create();
    taskstats_outcome(ts, "echo", "success", NULL);
    taskstats_outcome(ts, "echo", "success", "");
    taskstats_outcome(ts, "echo", "failure", "TRANSIENT_ERROR");
    taskstats_outcome(ts, "resize", "failure", "TRANSIENT_ERROR");
    taskstats_outcome(ts, "resize", NULL, NULL);
    EXPECT(outcome_count(ts, "echo", "success", "") == 2);
    EXPECT(outcome_count(ts, "echo", "failure", "TRANSIENT_ERROR") == 1);
    EXPECT(outcome_count(ts, "resize", "failure", "TRANSIENT_ERROR") == 1);
    EXPECT(outcome_count(ts, "resize", "unknown", "") == 1);
    size_t n;
    taskstats_get_outcomes(ts, &n);
    EXPECT(n == 4);
    taskstats_destroy(ts);
}

TEST(durations_land_in_their_bucket)
{
    struct taskstats *ts = taskstats_create();
    taskstats_duration(ts, "echo", 0.001); /* <= 5 ms: bucket 0 */
    taskstats_duration(ts, "echo", 0.005); /* exactly a bound: that bucket */
    taskstats_duration(ts, "echo", 0.3);   /* (0.25, 0.5] */
    taskstats_duration(ts, "echo", 7200);  /* beyond 1 h: the last */
    taskstats_duration(ts, "echo", -1);    /* ignored */
    const struct taskstats_duration *d = duration_of(ts, "echo");
    ASSERT(d != NULL);
    EXPECT(d->count == 4 && d->sum > 7200.30 && d->sum < 7200.31);
    EXPECT(d->buckets[0] == 2);
    for (size_t b = 0; b < TASKSTATS_BUCKETS; b++) {
        if (taskstats_bounds[b] == 0.5)
            EXPECT(d->buckets[b] == 1);
    }
    EXPECT(d->buckets[TASKSTATS_BUCKETS] == 1);
    taskstats_destroy(ts);
}

TEST(types_beyond_the_bound_are_other)
{
    struct taskstats *ts = taskstats_create();
    char type[32];
    for (int i = 0; i < TASKSTATS_TYPES_MAX + 50; i++) {
        snprintf(type, sizeof(type), "type-%d", i);
        taskstats_outcome(ts, type, "success", "");
        taskstats_duration(ts, type, 0.01);
    }
    size_t n;
    taskstats_get_durations(ts, &n);
    EXPECT(n == TASKSTATS_TYPES_MAX);
    EXPECT(outcome_count(ts, "type-0", "success", "") == 1);
    EXPECT(outcome_count(ts, "type-126", "success", "") == 1);
    EXPECT(duration_of(ts, "type-127") == NULL);
    /* The last entry took type 127 and the 50 after it. */
    EXPECT(outcome_count(ts, "_other", "success", "") == 51);
    EXPECT(duration_of(ts, "_other")->count == 51);
    /* A type seen before the bound keeps its own entry. */
    taskstats_outcome(ts, "type-5", "success", "");
    EXPECT(outcome_count(ts, "type-5", "success", "") == 2);
    taskstats_destroy(ts);
}

TEST(outcomes_beyond_the_bound_are_other)
{
    struct taskstats *ts = taskstats_create();
    char code[32];
    for (int i = 0; i < TASKSTATS_OUTCOMES_MAX + 10; i++) {
        snprintf(code, sizeof(code), "E%d", i);
        taskstats_outcome(ts, "t", "failure", code);
    }
    size_t n;
    taskstats_get_outcomes(ts, &n);
    EXPECT(n == TASKSTATS_OUTCOMES_MAX);
    EXPECT(outcome_count(ts, "t", "failure", "E0") == 1);
    EXPECT(outcome_count(ts, "_other", "_other", "_other") == 11);
    /* A known combination is still counted under its own name. */
    taskstats_outcome(ts, "t", "failure", "E3");
    EXPECT(outcome_count(ts, "t", "failure", "E3") == 2);
    taskstats_destroy(ts);
}

/* No two entries of a table with the same labels: a type or code that is
 * itself "_other" (the orchestrator chooses types) shares the overflow
 * entry instead of repeating its series in /metrics. */
TEST(a_type_named_other_is_not_a_second_other)
{
    struct taskstats *ts = taskstats_create();
    char type[32];
    taskstats_outcome(ts, "_other", "_other", "_other");
    taskstats_duration(ts, "_other", 0.01);
    for (int i = 0; i < TASKSTATS_TYPES_MAX + TASKSTATS_OUTCOMES_MAX; i++) {
        snprintf(type, sizeof(type), "type-%d", i);
        taskstats_outcome(ts, type, "success", "");
        taskstats_duration(ts, type, 0.01);
        snprintf(type, sizeof(type), "E%d", i); /* an error code */
        taskstats_outcome(ts, "t", "failure", type);
    }
    size_t n, m;
    const struct taskstats_duration *d = taskstats_get_durations(ts, &n);
    const struct taskstats_outcome *oc = taskstats_get_outcomes(ts, &m);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = i + 1; k < n; k++)
            EXPECT(strcmp(d[i].type, d[k].type) != 0);
    }
    for (size_t i = 0; i < m; i++) {
        for (size_t k = i + 1; k < m; k++)
            EXPECT(strcmp(oc[i].type, oc[k].type) != 0 || strcmp(oc[i].status, oc[k].status) != 0 ||
                   strcmp(oc[i].code, oc[k].code) != 0);
    }
    /* Nothing lost: every task is in some entry. */
    unsigned long tasks = 0, runs = 0;
    for (size_t i = 0; i < m; i++)
        tasks += oc[i].count;
    for (size_t i = 0; i < n; i++)
        runs += d[i].count;
    EXPECT(tasks == 2 * (TASKSTATS_TYPES_MAX + TASKSTATS_OUTCOMES_MAX) + 1);
    EXPECT(runs == TASKSTATS_TYPES_MAX + TASKSTATS_OUTCOMES_MAX + 1);
    taskstats_destroy(ts);
}

TEST(null_tables_are_ignored)
{
    taskstats_outcome(NULL, "t", "success", "");
    taskstats_duration(NULL, "t", 1);
    taskstats_destroy(NULL);
    EXPECT(1);
}

TAP_MAIN()
