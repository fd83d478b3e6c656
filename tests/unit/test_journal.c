/*
 * test_journal.c - the crash journal (journal.h) in a fresh temporary state
 * directory per test. Opening an empty directory reports nothing; tasks
 * left open by a "crash" (journal_close() without finishing them, then
 * journal_open() again) come back as lost with their URL, ids and the
 * right code and message (running or waiting); the crash count of each
 * type that was running rises once per crash, is saved, survives restarts
 * and is reset by a clean finish; a type at crash_limit fails its running
 * task PERMANENT_ERROR and the task id is poisoned; journal_recovered()
 * starts a fresh log (a reopen then reports nothing) unless tasks are
 * open; damaged running.log and crashes files are tolerated; "started" may
 * come from many threads at once; an unusable state directory (a file, a
 * missing directory, or one this user cannot write, checked as an
 * unprivileged child when the test runs as root) is an error with a
 * message.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "avt_plugin.h"
#include "journal.h"
#include "tap.h"
#include "task.h"
#include "util.h"

#define URL1 "http://orch-a.test:8080"
#define URL2 "https://orch-b.test"

/* ---- Helpers ------------------------------------------------------------ */

static char *new_state(void)
{
    char tmpl[] = "/tmp/avt-journal-test.XXXXXX";
    char *d = mkdtemp(tmpl);
    return d != NULL ? xstrdup(d) : NULL;
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("chmod -R u+rwx '%s' 2>/dev/null; rm -rf '%s'", dir, dir);
    if (system(cmd) != 0)
        printf("# cleanup of %s failed\n", dir);
    free(cmd);
}

static void write_text(const char *path, const char *text, size_t len)
{
    FILE *fp = fopen(path, "w");
    if (fp == NULL) {
        printf("# cannot write %s\n", path);
        return;
    }
    fwrite(text, 1, len, fp);
    fclose(fp);
}

/* A fake plugin pointer: the journal only checks that a task has one
 * (a task without a plugin runs no handler). */
static long fake_plugin_obj;
#define FAKE_PLUGIN ((struct plugin *)(void *)&fake_plugin_obj)

static struct task *mk(const char *id, const char *job_id, const char *type)
{
    struct task *t = task_create(id, job_id, type, NULL);
    t->plugin = FAKE_PLUGIN;
    return t;
}

struct opened {
    struct journal *j;
    struct journal_lost *lost;
    size_t n;
    int rc;
    char err[AVT_ERRLEN];
};

/* The handler returned cleanly and its result is settled (work.c's way). */
static void finish(struct journal *j, struct task *t)
{
    journal_task_returned(j, t, 1);
    journal_task_settled(j, t->journal_seq);
}

static struct opened open_j(const char *state, int limit)
{
    struct opened o;
    memset(&o, 0, sizeof(o));
    o.rc = journal_open(state, limit, &o.j, &o.lost, &o.n, o.err, sizeof(o.err));
    if (o.rc < 0)
        printf("# journal_open: %s\n", o.err);
    return o;
}

static void close_o(struct opened *o)
{
    journal_lost_free(o->lost, o->n);
    journal_close(o->j);
    memset(o, 0, sizeof(*o));
}

static const struct journal_lost *find_lost(const struct opened *o, const char *task_id)
{
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->lost[i].task_id, task_id) == 0)
            return &o->lost[i];
    }
    return NULL;
}

/* A crash with one task of `type` running: accept, start, close. */
static void crash_running(struct journal *j, const char *id, const char *type)
{
    struct task *t = mk(id, id, type);
    journal_task_accepted(j, t, URL1);
    journal_task_started(j, t);
    journal_close(j);
    task_destroy(t);
}

/* ---- Tests -------------------------------------------------------------- */

TEST(an_empty_state_dir_has_no_lost_tasks)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 3);
    ASSERT(o.rc == 0 && o.j != NULL);
    EXPECT_EQ_INT(o.n, 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "any"), 0);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "any"), 0);
    EXPECT_EQ_INT(journal_is_poisoned(NULL, "any"), 0);
    char *dir = xasprintf("%s/journal", state);
    struct stat st;
    EXPECT(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    free(dir);
    close_o(&o);
    journal_close(NULL); /* a no-op */

    /* Opened and closed without tasks: still nothing. */
    o = open_j(state, 3);
    EXPECT(o.rc == 0 && o.n == 0);
    close_o(&o);
    rm_rf(state);
    free(state);
}

TEST(a_crash_reports_running_and_waiting_tasks)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 3);
    ASSERT(o.rc == 0);
    journal_recovered(o.j);
    struct task *run = mk("run-1", "job-1", "resize"), *wait = mk("wait-1", "job-2", "resize"),
                *done = mk("done-1", "job-3", "echo"), *run2 = mk("run-2", "job-4", "resize"),
                *quick = mk("quick-1", "job-5", "echo");
    journal_task_accepted(o.j, run, URL1);
    journal_task_accepted(o.j, wait, URL2);
    journal_task_accepted(o.j, done, URL1);
    journal_task_accepted(o.j, run2, URL2);
    journal_task_accepted(o.j, quick, URL1);
    journal_task_started(o.j, run);
    journal_task_started(o.j, done);
    journal_task_started(o.j, run2);
    finish(o.j, done);
    finish(o.j, quick); /* ended without starting (cancelled while waiting) */
    journal_close(o.j); /* the crash */
    journal_lost_free(o.lost, o.n);

    o = open_j(state, 3);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, 3);
    const struct journal_lost *l = find_lost(&o, "run-1");
    ASSERT(l != NULL);
    EXPECT_EQ_STR(l->url, URL1);
    EXPECT_EQ_STR(l->type, "resize");
    EXPECT_EQ_STR(l->job_id, "job-1");
    EXPECT(l->started);
    EXPECT_EQ_STR(l->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(l->message, "worker crashed while running this task");
    l = find_lost(&o, "wait-1");
    ASSERT(l != NULL);
    EXPECT_EQ_STR(l->url, URL2);
    EXPECT_EQ_STR(l->job_id, "job-2");
    EXPECT(!l->started);
    EXPECT_EQ_STR(l->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(l->message, "worker crashed before this task started");
    l = find_lost(&o, "run-2");
    ASSERT(l != NULL);
    EXPECT(l->started);
    EXPECT_EQ_STR(l->url, URL2);
    EXPECT(find_lost(&o, "done-1") == NULL && find_lost(&o, "quick-1") == NULL);
    /* Two resize handlers ran: one crash, counted once; echo did not run. */
    EXPECT_EQ_INT(journal_crash_count(o.j, "resize"), 1);
    EXPECT_EQ_INT(journal_crash_count(o.j, "echo"), 0);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "run-1"), 0);
    close_o(&o);
    task_destroy(run);
    task_destroy(wait);
    task_destroy(done);
    task_destroy(run2);
    task_destroy(quick);
    rm_rf(state);
    free(state);
}

TEST(a_task_that_runs_no_handler_is_not_started)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 3);
    ASSERT(o.rc == 0);
    struct task *cancelled = mk("c", "c", "t"), *failed = mk("f", "f", "t"),
                *unknown = task_create("u", "u", "t", NULL); /* no plugin */
    task_cancel(cancelled, TASK_CANCEL_ORCHESTRATOR);
    task_set_failure(failed, AVT_PERMANENT_ERROR, "refused");
    journal_task_accepted(o.j, cancelled, URL1);
    journal_task_accepted(o.j, failed, URL1);
    journal_task_accepted(o.j, unknown, URL1);
    journal_task_started(o.j, cancelled);
    journal_task_started(o.j, failed);
    journal_task_started(o.j, unknown);
    journal_task_started(NULL, cancelled); /* no journal: a no-op */
    journal_close(o.j);
    journal_lost_free(o.lost, o.n);

    o = open_j(state, 1);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, 3);
    for (size_t i = 0; i < o.n; i++) {
        EXPECT(!o.lost[i].started);
        EXPECT_EQ_STR(o.lost[i].code, AVT_TRANSIENT_ERROR);
    }
    /* Nothing ran: no crash is blamed on the type, even at crash_limit 1. */
    EXPECT_EQ_INT(journal_crash_count(o.j, "t"), 0);
    close_o(&o);
    task_destroy(cancelled);
    task_destroy(failed);
    task_destroy(unknown);
    rm_rf(state);
    free(state);
}

TEST(a_type_at_crash_limit_fails_permanently_and_is_poisoned)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 2);
    ASSERT(o.rc == 0);
    crash_running(o.j, "bad-1", "bad");
    journal_lost_free(o.lost, o.n);

    o = open_j(state, 2);
    ASSERT(o.rc == 0 && o.n == 1);
    EXPECT_EQ_STR(o.lost[0].code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_INT(journal_crash_count(o.j, "bad"), 1);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "bad-1"), 0);
    journal_lost_free(o.lost, o.n);
    journal_recovered(o.j);

    /* The second crash in a row with bad running; other (a type that crashed
     * for the first time) and wait (of type bad, not started) ride along. */
    struct task *bad = mk("bad-2", "job-bad-2", "bad"), *other = mk("other-1", "o", "other"),
                *wait = mk("bad-wait", "w", "bad");
    journal_task_accepted(o.j, bad, URL2);
    journal_task_accepted(o.j, other, URL1);
    journal_task_accepted(o.j, wait, URL1);
    journal_task_started(o.j, bad);
    journal_task_started(o.j, other);
    journal_close(o.j);

    o = open_j(state, 2);
    ASSERT(o.rc == 0 && o.n == 3);
    EXPECT_EQ_INT(journal_crash_count(o.j, "bad"), 2);
    EXPECT_EQ_INT(journal_crash_count(o.j, "other"), 1);
    const struct journal_lost *l = find_lost(&o, "bad-2");
    ASSERT(l != NULL);
    EXPECT_EQ_STR(l->code, AVT_PERMANENT_ERROR);
    EXPECT_EQ_STR(l->message, "worker crashed in handler");
    EXPECT_EQ_STR(l->url, URL2);
    EXPECT_EQ_STR(l->job_id, "job-bad-2");
    l = find_lost(&o, "other-1");
    ASSERT(l != NULL);
    EXPECT_EQ_STR(l->code, AVT_TRANSIENT_ERROR);
    l = find_lost(&o, "bad-wait");
    ASSERT(l != NULL);
    EXPECT_EQ_STR(l->code, AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(l->message, "worker crashed before this task started");
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "bad-2"), 1);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "other-1"), 0);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "bad-wait"), 0);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "bad-1"), 0);
    close_o(&o);

    /* Above the limit too (the count keeps rising while it keeps crashing). */
    o = open_j(state, 2); /* nothing was recovered: the same three again */
    ASSERT(o.rc == 0 && o.n == 3);
    EXPECT_EQ_INT(journal_crash_count(o.j, "bad"), 3);
    EXPECT_EQ_STR(find_lost(&o, "bad-2") ? find_lost(&o, "bad-2")->code : NULL,
                  AVT_PERMANENT_ERROR);
    EXPECT_EQ_INT(journal_is_poisoned(o.j, "bad-2"), 1);
    close_o(&o);
    task_destroy(bad);
    task_destroy(other);
    task_destroy(wait);
    rm_rf(state);
    free(state);
}

TEST(a_clean_finish_resets_the_count_for_good)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 5);
    ASSERT(o.rc == 0);
    crash_running(o.j, "x-1", "flaky");
    journal_lost_free(o.lost, o.n);
    o = open_j(state, 5);
    ASSERT(o.rc == 0);
    crash_running(o.j, "x-2", "flaky");
    journal_lost_free(o.lost, o.n);
    o = open_j(state, 5);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "flaky"), 2);
    journal_lost_free(o.lost, o.n);
    o.lost = NULL;
    o.n = 0;
    journal_recovered(o.j);

    /* A task that never started proves nothing about the handler. */
    struct task *waited = mk("w", "w", "flaky");
    journal_task_accepted(o.j, waited, URL1);
    finish(o.j, waited);
    EXPECT_EQ_INT(journal_crash_count(o.j, "flaky"), 2);

    struct task *ok = mk("ok", "ok", "flaky");
    journal_task_accepted(o.j, ok, URL1);
    journal_task_started(o.j, ok);
    finish(o.j, ok);
    EXPECT_EQ_INT(journal_crash_count(o.j, "flaky"), 0);
    finish(o.j, ok); /* a second end of the same task: ignored */
    finish(NULL, ok);
    close_o(&o);

    o = open_j(state, 5);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "flaky"), 0);
    close_o(&o);
    task_destroy(waited);
    task_destroy(ok);
    rm_rf(state);
    free(state);
}

TEST(recovered_starts_afresh_and_counts_survive_restarts)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 9);
    ASSERT(o.rc == 0);
    crash_running(o.j, "a-1", "alpha");
    journal_lost_free(o.lost, o.n);

    o = open_j(state, 9);
    ASSERT(o.rc == 0 && o.n == 1);
    EXPECT_EQ_INT(journal_crash_count(o.j, "alpha"), 1);
    journal_recovered(o.j); /* the reports are durable */
    close_o(&o);

    for (int restart = 0; restart < 3; restart++) {
        o = open_j(state, 9);
        ASSERT(o.rc == 0);
        EXPECT_EQ_INT(o.n, 0);
        /* Clean restarts neither raise nor forget the count. */
        EXPECT_EQ_INT(journal_crash_count(o.j, "alpha"), 1);
        close_o(&o);
    }

    /* recovered() keeps a log that has open entries: nothing is lost. */
    o = open_j(state, 9);
    ASSERT(o.rc == 0);
    struct task *t = mk("held", "held", "beta");
    journal_task_accepted(o.j, t, URL1);
    journal_recovered(o.j);
    journal_close(o.j);
    o.j = NULL;
    o = open_j(state, 9);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, 1);
    EXPECT(find_lost(&o, "held") != NULL);
    close_o(&o);

    /* New records after a reopen continue the old sequence: a crash now
     * reports the new task, not a mix-up with the old one. */
    o = open_j(state, 9);
    ASSERT(o.rc == 0 && o.n == 1);
    journal_lost_free(o.lost, o.n);
    o.lost = NULL;
    o.n = 0;
    struct task *t2 = mk("next", "next", "beta");
    journal_task_accepted(o.j, t2, URL2);
    journal_task_started(o.j, t2);
    journal_close(o.j);
    o = open_j(state, 9);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, 2);
    const struct journal_lost *l = find_lost(&o, "next");
    EXPECT(l != NULL && l->started);
    l = find_lost(&o, "held");
    EXPECT(l != NULL && !l->started);
    close_o(&o);
    task_destroy(t);
    task_destroy(t2);
    rm_rf(state);
    free(state);
}

TEST(damaged_files_are_tolerated)
{
    char *state = new_state();
    ASSERT(state != NULL);
    char *dir = xasprintf("%s/journal", state);
    char *log = xasprintf("%s/running.log", dir);
    char *crashes = xasprintf("%s/crashes", dir);
    ASSERT(mkdir(dir, 0700) == 0);
    static const char log_text[] =
        "garbage that is no record\n"
        "\n"
        "{\"a\":1,\"u\":\"" URL1 "\",\"t\":\"t1\",\"i\":\"good-1\",\"j\":\"j1\"}\n"
        "{\"a\":2,\"u\":\"" URL1 "\",\"t\":\"t1\",\"i\":\"no-job\"}\n"
        "{\"a\":\"3\",\"u\":\"" URL1 "\",\"t\":\"t1\",\"i\":\"seq-string\",\"j\":\"j\"}\n"
        "{\"a\":4,\"u\":7,\"t\":\"t1\",\"i\":\"url-number\",\"j\":\"j\"}\n"
        "[1,2,3]\n"
        "S\n"
        "S abc\n"
        "S 999\n"
        "E 999\n"
        "E\n"
        "Sx 1\n"
        "{\"a\":5,\"u\":\"" URL2 "\",\"t\":\"t2\",\"i\":\"good-2\",\"j\":\"j2\"}\n"
        "S 5\n"
        "E 1 trailing words\n"
        "E 1\n"
        "{\"a\":6,\"u\":\"" URL2 "\",\"t\":\"t2\",\"i\":\"good-3\",\"j\":\"j3\"}\n"
        "\x01\x02\xff\xfe binary\n"
        "embedded\0nul\n"
        "{\"a\":7,\"u\":\"" URL2 "\",\"t\":\"t2\",\"i\":\"torn\",\"j\":\"j";
    write_text(log, log_text, sizeof(log_text) - 1);
    static const char crashes_text[] = "garbage\n"
                                       "5\n"
                                       "-3 negative\n"
                                       "0 zero\n"
                                       "2 good\n"
                                       "x3 letters\n"
                                       "7 \n"
                                       "99999999 huge\n"
                                       "\n"
                                       "1 with space\n"
                                       "4 good-torn";
    write_text(crashes, crashes_text, sizeof(crashes_text) - 1);

    struct opened o = open_j(state, 3);
    ASSERT(o.rc == 0 && o.j != NULL);
    /* good-1 ended ("E 1 trailing words" closes seq 1 already); good-2 ran;
     * good-3 waited; the damaged ones and the torn last line are skipped. */
    EXPECT_EQ_INT(o.n, 2);
    const struct journal_lost *l = find_lost(&o, "good-2");
    EXPECT(l != NULL && l->started && strcmp(l->url, URL2) == 0);
    l = find_lost(&o, "good-3");
    EXPECT(l != NULL && !l->started);
    EXPECT(find_lost(&o, "torn") == NULL && find_lost(&o, "no-job") == NULL);
    EXPECT_EQ_INT(journal_crash_count(o.j, "good"), 2);
    EXPECT_EQ_INT(journal_crash_count(o.j, "good-torn"), 4);
    EXPECT_EQ_INT(journal_crash_count(o.j, "with space"), 1);
    EXPECT_EQ_INT(journal_crash_count(o.j, "negative"), 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "zero"), 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "huge"), 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "letters"), 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "t2"), 1); /* good-2's crash */
    journal_recovered(o.j);
    close_o(&o);

    /* The rewritten crashes file holds only sensible lines. */
    char *text = read_file(crashes, 1 << 20, NULL);
    ASSERT(text != NULL);
    EXPECT(strstr(text, "garbage") == NULL && strstr(text, "huge") == NULL);
    EXPECT_CONTAINS(text, "2 good\n");
    EXPECT_CONTAINS(text, "1 t2\n");
    free(text);

    /* Files that are all junk, or empty. */
    write_text(log, "\xff\xff\xff\n\n\n}{", 8);
    write_text(crashes, "", 0);
    o = open_j(state, 3);
    EXPECT(o.rc == 0 && o.n == 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "good"), 0);
    close_o(&o);
    free(dir);
    free(log);
    free(crashes);
    rm_rf(state);
    free(state);
}

/* ---- "started" from many threads ---------------------------------------- */

#define NSTARTERS 8
#define PER_STARTER 50

struct starter {
    pthread_t th;
    struct journal *j;
    struct task *tasks[PER_STARTER];
};

static void *starter_main(void *arg)
{
    struct starter *s = arg;
    for (int i = 0; i < PER_STARTER; i++)
        journal_task_started(s->j, s->tasks[i]);
    return NULL;
}

TEST(started_records_from_many_threads)
{
    char *state = new_state();
    ASSERT(state != NULL);
    struct opened o = open_j(state, 3);
    ASSERT(o.rc == 0);
    struct starter st[NSTARTERS];
    char id[32];
    for (int s = 0; s < NSTARTERS; s++) {
        st[s].j = o.j;
        for (int i = 0; i < PER_STARTER; i++) {
            snprintf(id, sizeof(id), "task-%d-%d", s, i);
            st[s].tasks[i] = mk(id, id, "par");
            journal_task_accepted(o.j, st[s].tasks[i], URL1);
        }
    }
    int started = 0;
    for (int s = 0; s < NSTARTERS; s++)
        started += pthread_create(&st[s].th, NULL, starter_main, &st[s]) == 0;
    /* The loop thread keeps accepting and finishing meanwhile. */
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "loop-%d", i);
        struct task *t = mk(id, id, "other");
        journal_task_accepted(o.j, t, URL2);
        finish(o.j, t);
        task_destroy(t);
    }
    for (int s = 0; s < NSTARTERS; s++)
        pthread_join(st[s].th, NULL);
    ASSERT(started == NSTARTERS);
    journal_close(o.j);

    o = open_j(state, 3);
    ASSERT(o.rc == 0);
    EXPECT_EQ_INT(o.n, NSTARTERS * PER_STARTER);
    size_t not_started = 0;
    for (size_t i = 0; i < o.n; i++)
        not_started += !o.lost[i].started;
    EXPECT_EQ_INT(not_started, 0);
    EXPECT_EQ_INT(journal_crash_count(o.j, "par"), 1);
    close_o(&o);
    for (int s = 0; s < NSTARTERS; s++) {
        for (int i = 0; i < PER_STARTER; i++)
            task_destroy(st[s].tasks[i]);
    }
    rm_rf(state);
    free(state);
}

/* ---- Unusable state directories ------------------------------------------- */

static void expect_open_fails(const char *state, int want_errno, const char *what)
{
    struct journal *j = (struct journal *)&fake_plugin_obj; /* must be reset to NULL */
    struct journal_lost *lost = (struct journal_lost *)&fake_plugin_obj;
    size_t n = 99;
    char err[AVT_ERRLEN] = "";
    int rc = journal_open(state, 3, &j, &lost, &n, err, sizeof(err));
    if (rc != -want_errno)
        TAP_FAIL_("%s: journal_open returned %d, want %d (%s)", what, rc, -want_errno, err);
    EXPECT(j == NULL && lost == NULL && n == 0);
    EXPECT_CONTAINS(err, state);
    EXPECT_CONTAINS(err, strerror(want_errno));
}

TEST(an_unusable_state_dir_is_an_error_with_a_message)
{
    char *state = new_state();
    ASSERT(state != NULL);
    /* A file where the directory should be. */
    char *file = xasprintf("%s/not-a-dir", state);
    write_text(file, "x", 1);
    expect_open_fails(file, ENOTDIR, "state dir is a file");
    /* A state dir that does not exist. */
    char *missing = xasprintf("%s/missing", state);
    expect_open_fails(missing, ENOENT, "missing state dir");
    /* journal/ itself is a file. */
    char *jstate = xasprintf("%s/jfile", state);
    char *jfile = xasprintf("%s/journal", jstate);
    ASSERT(mkdir(jstate, 0700) == 0);
    write_text(jfile, "x", 1);
    expect_open_fails(jstate, ENOTDIR, "journal is a file");
    free(file);
    free(missing);
    free(jfile);
    free(jstate);
    rm_rf(state);
    free(state);
}

/* A directory this user cannot write (0500). Root writes anywhere, so as
 * root the check runs in a child that has given up root. */
static int readonly_dir_check(const char *ro)
{
    char err[AVT_ERRLEN] = "";
    struct journal *j = NULL;
    struct journal_lost *lost = NULL;
    size_t n = 0;
    int rc = journal_open(ro, 3, &j, &lost, &n, err, sizeof(err));
    if (rc != -EACCES || j != NULL || strstr(err, "cannot create") == NULL ||
        strstr(err, strerror(EACCES)) == NULL) {
        printf("#   journal_open on a 0500 dir: %d (%s)\n", rc, err);
        journal_close(j);
        journal_lost_free(lost, n);
        return 1;
    }
    return 0;
}

TEST(a_read_only_state_dir_is_an_error_with_a_message)
{
    char *state = new_state();
    ASSERT(state != NULL);
    char *ro = xasprintf("%s/ro", state);
    ASSERT(mkdir(ro, 0700) == 0);
    if (getuid() != 0) {
        ASSERT(chmod(ro, 0500) == 0);
        EXPECT_EQ_INT(readonly_dir_check(ro), 0);
    } else {
        /* 77: root cannot be dropped here (a user namespace without
         * uid 65534): nothing to check, not a failure. */
        const uid_t nobody = 65534;
        int status = 77 << 8;
        fflush(stdout);
        if (chmod(state, 0711) == 0 && chown(ro, nobody, nobody) == 0 && chmod(ro, 0500) == 0) {
            pid_t pid = fork();
            ASSERT(pid >= 0);
            if (pid == 0) {
                if (setgid(nobody) != 0 || setuid(nobody) != 0 || getuid() == 0)
                    _exit(77);
                _exit(readonly_dir_check(ro));
            }
            ASSERT(waitpid(pid, &status, 0) == pid);
        }
        EXPECT(WIFEXITED(status));
        if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
            printf("# root cannot give up root here: the 0500 case is not checked\n");
        else
            EXPECT_EQ_INT(WEXITSTATUS(status), 0);
    }
    free(ro);
    rm_rf(state);
    free(state);
}

TAP_MAIN()
