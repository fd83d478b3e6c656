/*
 * taskstats.c - the finished-task tables behind avtworkerd_tasks_total and
 * avtworkerd_task_duration_seconds.
 *
 * Types are interned once, in the order first seen, and index the duration
 * table; an outcome is found by its interned type pointer and its status
 * and code strings. The searches are linear: the tables are small, and a
 * scrape or a finished task costs far more elsewhere. Strings are copied
 * the first time they are seen and freed with the tables.
 */
#include "taskstats.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define OTHER "_other"

const double taskstats_bounds[TASKSTATS_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                    2.5,   5,    10,    30,   60,  300,  900, 3600};

struct taskstats {
    struct taskstats_duration durations[TASKSTATS_TYPES_MAX]; /* one per type */
    size_t ntypes;
    struct taskstats_outcome outcomes[TASKSTATS_OUTCOMES_MAX];
    size_t noutcomes;
    char **names; /* every string the tables point to */
    size_t nnames;
};

struct taskstats *taskstats_create(void)
{
    return xcalloc(1, sizeof(struct taskstats));
}

void taskstats_destroy(struct taskstats *ts)
{
    if (ts == NULL)
        return;
    for (size_t i = 0; i < ts->nnames; i++)
        free(ts->names[i]);
    free(ts->names);
    free(ts);
}

/* One copy per distinct string; searched only when a table gains an entry. */
static const char *intern(struct taskstats *ts, const char *s)
{
    for (size_t i = 0; i < ts->nnames; i++) {
        if (strcmp(ts->names[i], s) == 0)
            return ts->names[i];
    }
    ts->names = xrealloc(ts->names, (ts->nnames + 1) * sizeof(*ts->names));
    ts->names[ts->nnames] = xstrdup(s);
    return ts->names[ts->nnames++];
}

static struct taskstats_duration *type_find(struct taskstats *ts, const char *type)
{
    for (size_t i = 0; i < ts->ntypes; i++) {
        if (strcmp(ts->durations[i].type, type) == 0)
            return &ts->durations[i];
    }
    return NULL;
}

/* The entry of a type; once only one is left, it collects "_other" (the
 * entry of a type that is itself called "_other", if there is one: no two
 * entries may have the same name). */
static struct taskstats_duration *type_entry(struct taskstats *ts, const char *type)
{
    struct taskstats_duration *d = type_find(ts, type);
    if (d == NULL && ts->ntypes >= TASKSTATS_TYPES_MAX - 1) {
        type = OTHER;
        d = type_find(ts, type);
    }
    if (d != NULL)
        return d;
    d = &ts->durations[ts->ntypes++];
    d->type = intern(ts, type);
    return d;
}

static struct taskstats_outcome *outcome_find(struct taskstats *ts, const char *type,
                                              const char *status, const char *code)
{
    for (size_t i = 0; i < ts->noutcomes; i++) {
        struct taskstats_outcome *e = &ts->outcomes[i];
        if (e->type == type && strcmp(e->status, status) == 0 && strcmp(e->code, code) == 0)
            return e;
    }
    return NULL;
}

void taskstats_outcome(struct taskstats *ts, const char *type, const char *status, const char *code)
{
    if (ts == NULL)
        return;
    const char *ty = type_entry(ts, type != NULL ? type : "")->type;
    status = status != NULL ? status : "unknown";
    code = code != NULL ? code : "";
    struct taskstats_outcome *e = outcome_find(ts, ty, status, code);
    if (e == NULL && ts->noutcomes >= TASKSTATS_OUTCOMES_MAX - 1) {
        /* The last entry: "_other" three times, unless that exists already.
         * intern() gives the type table's own "_other" if it has one. */
        ty = status = code = intern(ts, OTHER);
        e = outcome_find(ts, ty, status, code);
    }
    if (e == NULL) {
        e = &ts->outcomes[ts->noutcomes++];
        *e = (struct taskstats_outcome){intern(ts, ty), intern(ts, status), intern(ts, code), 0};
    }
    e->count++;
}

void taskstats_duration(struct taskstats *ts, const char *type, double seconds)
{
    if (ts == NULL || !(seconds >= 0))
        return;
    struct taskstats_duration *d = type_entry(ts, type != NULL ? type : "");
    size_t b = 0;
    while (b < TASKSTATS_BUCKETS && seconds > taskstats_bounds[b])
        b++;
    d->buckets[b]++;
    d->count++;
    d->sum += seconds;
}

const struct taskstats_outcome *taskstats_get_outcomes(const struct taskstats *ts, size_t *n)
{
    *n = ts->noutcomes;
    return ts->outcomes;
}

const struct taskstats_duration *taskstats_get_durations(const struct taskstats *ts, size_t *n)
{
    *n = ts->ntypes;
    return ts->durations;
}
