/*
 * journal.h - the crash journal (issue "Nothing lost", part 2): which tasks
 * this worker holds, so that after an abnormal exit the next start reports
 * each of them as failed at once instead of leaving it to the
 * orchestrator's timeout, and so that a task type whose handler keeps
 * crashing the process is failed permanently instead of crash-looping the
 * service.
 *
 * STATE_DIR/journal/running.log is an append-only log of three records:
 *   accepted  {"a":SEQ,"u":URL,"t":TYPE,"i":TASK_ID,"j":JOB_ID}   loop thread
 *   started   S SEQ                                                worker thread
 *   ended     E SEQ  (once its result is settled)                  loop thread
 * STATE_DIR/journal/crashes holds "COUNT TYPE" lines: how many times in a
 * row a handler of TYPE was running when the process died.
 *
 * Threads: journal_task_started() may be called from any thread (it runs
 * on the worker thread just before the handler); everything else is for the
 * loop thread.
 */
#ifndef AVT_DAEMON_JOURNAL_H
#define AVT_DAEMON_JOURNAL_H

#include <stddef.h>

struct journal;
struct task;

/* A task found in the journal at start: the previous process died with it. */
struct journal_lost {
    char *url; /* the orchestrator it came from */
    char *type;
    char *task_id;
    char *job_id;
    int started;      /* its handler had started */
    const char *code; /* AVT_TRANSIENT_ERROR or AVT_PERMANENT_ERROR */
    char *message;    /* the failure message to report */
};

/*
 * Open STATE_DIR/journal (created 0700), read what the previous run left
 * and return its lost tasks (*lost, *nlost; free with journal_lost_free()).
 * The crash counts of the types that were running are raised (and saved)
 * here; a type at crash_limit or above gets PERMANENT_ERROR "worker crashed
 * in handler" for its lost tasks, logged loudly. Returns 0 or -errno with
 * err set (the caller exits 78).
 */
int journal_open(const char *state_dir, int crash_limit, struct journal **out,
                 struct journal_lost **lost, size_t *nlost, char *err, size_t errlen);
void journal_lost_free(struct journal_lost *lost, size_t n);

/* The lost tasks' results are durable (spooled): start a fresh log. */
void journal_recovered(struct journal *j);

/* NULL is a no-op. Entries still open stay in the file (reported by the
 * next start). */
void journal_close(struct journal *j);

/* Loop thread, before the task is handed to the pool; sets t->journal_seq
 * (0 when it is not journaled). */
void journal_task_accepted(struct journal *j, struct task *t, const char *url);

/* Any thread, just before the task's handler runs. */
void journal_task_started(struct journal *j, const struct task *t);

/* Loop thread: t's handler returned (t is freed next). clean: it ended by
 * itself (not given up on), which resets its type's crash count when it
 * had started. The entry stays open until its result is settled. */
void journal_task_returned(struct journal *j, const struct task *t, int clean);

/* Loop thread: the result of the task journaled as seq (t->journal_seq) is
 * settled: durable in the spool, or delivered. The entry is closed ("ended").
 * seq 0 or an unknown seq is a no-op. */
void journal_task_settled(struct journal *j, unsigned long long seq);

/* Crash count of a type (tests, metrics). */
int journal_crash_count(const struct journal *j, const char *type);

/* 1 when task_id was failed permanently at start for crashing the worker
 * crash_limit times: a copy delivered again must not run. Loop thread; NULL
 * journal: 0. */
int journal_is_poisoned(const struct journal *j, const char *task_id);

#endif /* AVT_DAEMON_JOURNAL_H */
