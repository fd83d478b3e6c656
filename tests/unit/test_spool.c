/*
 * test_spool.c - the durable result spool and the crash journal against a
 * private temporary state directory: write, replay order, removal, corrupt
 * and foreign files moved aside, the size and count bounds, max_age, the
 * lock, and the journal's report of tasks a "crashed" run left behind.
 */
#include "tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "spool.h"
#include "task.h"
#include "util.h"

#define URL "http://orch.test:8080"

static char *new_state(void)
{
    char tmpl[] = "/tmp/avt-spool-test.XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? xstrdup(d) : NULL;
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("# cleanup of %s failed\n", dir);
    free(cmd);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL)
        n += de->d_name[0] != '.' && de->d_type == DT_REG;
    if (d != NULL)
        closedir(d);
    return n;
}

static void put(struct spool *sp, const char *url, const char *id)
{
    char *body = xasprintf("{\"job_id\":\"%s\",\"task_id\":\"%s\",\"status\":\"success\"}", id, id);
    struct spool_record *rec = spool_record_new(url, id, id, body, strlen(body));
    EXPECT_EQ_INT(spool_write(sp, rec), 0);
    EXPECT(rec->seq > 0);
    spool_record_free(rec);
    free(body);
}

static struct spool *open_sp(const char *state, long max_files, unsigned long long max_bytes,
                             double max_age)
{
    char err[AVT_ERRLEN];
    struct spool_limits lim = {max_bytes, max_files, max_age};
    struct spool *sp = NULL;
    int rc = spool_open(state, &lim, &sp, err, sizeof(err));
    if (rc < 0)
        printf("# spool_open: %s\n", err);
    return sp;
}

static void free_recs(struct spool_record **recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        spool_record_free(recs[i]);
    free(recs);
}

TEST(crc32_matches_zlib)
{
    EXPECT_EQ_INT(spool_crc32("123456789", 9), 0xCBF43926UL);
    EXPECT_EQ_INT(spool_crc32("", 0), 0);
}

TEST(write_then_replay_oldest_first_after_reopen)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    const char *ids[] = {"t-c", "t-a", "t-b"};
    for (int i = 0; i < 3; i++)
        put(sp, URL, ids[i]);
    spool_close(sp);
    char *dir = xasprintf("%s/spool", state);
    struct stat st;
    EXPECT(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    EXPECT_EQ_INT(count_files(dir), 4); /* 3 results + the lock */

    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    ASSERT(n == 3);
    for (int i = 0; i < 3; i++) {
        EXPECT_EQ_STR(recs[i]->task_id, ids[i]);
        EXPECT_EQ_STR(recs[i]->url, URL);
        EXPECT_CONTAINS(recs[i]->body, "\"status\":\"success\"");
    }
    EXPECT(recs[0]->seq < recs[1]->seq && recs[1]->seq < recs[2]->seq);
    /* New writes continue the sequence. */
    put(sp, URL, "t-d");
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.files, 4);
    spool_remove(sp, recs[1]);
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.files, 3);
    EXPECT_EQ_INT(ss.removed, 1);
    free_recs(recs, n);
    spool_close(sp);

    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    ASSERT(n == 3);
    EXPECT_EQ_STR(recs[0]->task_id, "t-c");
    EXPECT_EQ_STR(recs[1]->task_id, "t-b");
    EXPECT_EQ_STR(recs[2]->task_id, "t-d");
    free_recs(recs, n);
    spool_close(sp);
    free(dir);
    rm_rf(state);
    free(state);
}

TEST(other_orchestrators_records_are_kept_not_loaded)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    put(sp, URL, "mine");
    put(sp, "http://other:1", "theirs");
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    EXPECT_EQ_INT(n, 1);
    EXPECT_EQ_STR(n ? recs[0]->task_id : NULL, "mine");
    free_recs(recs, n);
    EXPECT_EQ_INT(spool_load(sp, "http://other:1", &recs, &n), 0);
    EXPECT_EQ_INT(n, 1);
    free_recs(recs, n);
    spool_close(sp);
    rm_rf(state);
    free(state);
}

static void write_raw(const char *state, const char *name, const char *text, size_t len)
{
    char *p = xasprintf("%s/spool/%s", state, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        if (write(fd, text, len) != (ssize_t)len)
            printf("# short write\n");
        close(fd);
    }
    free(p);
}

TEST(corrupt_and_foreign_files_are_moved_aside)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    put(sp, URL, "good");
    spool_close(sp);
    const char *body = "{\"job_id\":\"j\",\"task_id\":\"t\"}";
    char *bad_crc = xasprintf("AVTSPOOL 1 %zu 00000000 1.0 " URL "\n%s", strlen(body), body);
    char *bad_ver = xasprintf("AVTSPOOL 9 %zu %08lx 1.0 " URL "\n%s", strlen(body),
                              spool_crc32(body, strlen(body)), body);
    char *truncated = xasprintf("AVTSPOOL 1 %zu %08lx 1.0 " URL "\n%.5s", strlen(body),
                                spool_crc32(body, strlen(body)), body);
    const char *nonresult = "[1,2]";
    char *not_result = xasprintf("AVTSPOOL 1 5 %08lx 1.0 " URL "\n%s", spool_crc32(nonresult, 5),
                                 nonresult);
    write_raw(state, "00000000000000a0.res", bad_crc, strlen(bad_crc));
    write_raw(state, "00000000000000a1.res", bad_ver, strlen(bad_ver));
    write_raw(state, "00000000000000a2.res", truncated, strlen(truncated));
    write_raw(state, "00000000000000a3.res", not_result, strlen(not_result));
    write_raw(state, "00000000000000a4.res", "\0\1\2garbage", 10);
    write_raw(state, "notes.txt", "hello", 5);
    write_raw(state, "tmp.00000000000000ff", "half", 4);

    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    EXPECT_EQ_INT(n, 1);
    EXPECT_EQ_STR(n ? recs[0]->task_id : NULL, "good");
    free_recs(recs, n);
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.corrupt, 6);
    EXPECT_EQ_INT(ss.files, 1);
    char *corrupt = xasprintf("%s/spool/corrupt", state);
    EXPECT_EQ_INT(count_files(corrupt), 6);
    char *tmp = xasprintf("%s/spool/tmp.00000000000000ff", state);
    EXPECT(access(tmp, F_OK) < 0); /* an interrupted write is removed */
    /* A new record never reuses a corrupt file's sequence range below the
     * highest valid one, and the spool keeps working. */
    put(sp, URL, "after");
    spool_close(sp);
    free(tmp);
    free(corrupt);
    free(bad_crc);
    free(bad_ver);
    free(truncated);
    free(not_result);
    rm_rf(state);
    free(state);
}

TEST(bounds_make_it_full_and_removal_frees_it)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 3, 0, 0);
    ASSERT(sp != NULL);
    put(sp, URL, "a");
    put(sp, URL, "b");
    EXPECT(!spool_is_full(sp));
    put(sp, URL, "c");
    EXPECT(spool_is_full(sp));
    put(sp, URL, "d"); /* still written: a running task never loses its result */
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.files, 4);
    EXPECT_EQ_INT(ss.full_events, 1);
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    ASSERT(n == 4);
    spool_remove(sp, recs[0]);
    EXPECT(spool_is_full(sp));
    spool_remove(sp, recs[1]);
    EXPECT(!spool_is_full(sp));
    free_recs(recs, n);
    spool_close(sp);

    /* The byte bound, also counted on reopen. */
    sp = open_sp(state, 0, 100, 0);
    ASSERT(sp != NULL);
    EXPECT(spool_is_full(sp)); /* two files of > 50 bytes each */
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.full_events, 1);
    spool_close(sp);
    rm_rf(state);
    free(state);
}

TEST(old_records_expire_with_a_count)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 60);
    ASSERT(sp != NULL);
    const char *body = "{\"job_id\":\"old\",\"task_id\":\"old\"}";
    struct spool_record *rec = spool_record_new(URL, "old", "old", body, strlen(body));
    rec->created = now_wall() - 3600;
    EXPECT_EQ_INT(spool_write(sp, rec), 0);
    EXPECT_EQ_INT(spool_expire(sp, rec, now_wall() - 3600 + 10), 0); /* young then */
    spool_record_free(rec);
    put(sp, URL, "young");
    spool_close(sp);

    sp = open_sp(state, 0, 0, 60);
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    EXPECT_EQ_INT(n, 1);
    EXPECT_EQ_STR(n ? recs[0]->task_id : NULL, "young");
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    EXPECT_EQ_INT(ss.expired, 1);
    EXPECT_EQ_INT(ss.files, 1);
    if (n > 0) {
        EXPECT_EQ_INT(spool_expire(sp, recs[0], now_wall() + 61), 1);
        spool_get_stats(sp, &ss);
        EXPECT_EQ_INT(ss.files, 0);
    }
    free_recs(recs, n);
    spool_close(sp);
    rm_rf(state);
    free(state);
}

TEST(a_second_user_of_the_state_dir_is_refused)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    char err[AVT_ERRLEN];
    struct spool_limits lim = {0, 0, 0};
    struct spool *sp2 = NULL;
    EXPECT(spool_open(state, &lim, &sp2, err, sizeof(err)) < 0);
    EXPECT_CONTAINS(err, "another avtworkerd");
    spool_close(sp);
    EXPECT_EQ_INT(spool_open(state, &lim, &sp2, err, sizeof(err)), 0);
    spool_close(sp2);
    EXPECT(spool_open("/proc/avt-no-such/state", &lim, &sp2, err, sizeof(err)) < 0);
    EXPECT(sp2 == NULL);
    rm_rf(state);
    free(state);
}

/* ---- crash journal ---- */

static struct journal *open_j(const char *state, int limit, struct journal_lost **lost,
                              size_t *n)
{
    char err[AVT_ERRLEN];
    struct journal *j = NULL;
    if (journal_open(state, limit, &j, lost, n, err, sizeof(err)) < 0)
        printf("# journal_open: %s\n", err);
    return j;
}

/* A fake plugin pointer: journal_task_started only checks it is set. */
static long fake_plugin_obj;
#define fake_plugin ((struct plugin *)(void *)&fake_plugin_obj)

static struct task *mk(const char *id, const char *type)
{
    struct task *t = task_create(id, id, type, NULL);
    t->plugin = fake_plugin;
    return t;
}

TEST(journal_reports_what_a_crash_left_and_counts_crashes)
{
    char *state = new_state();
    struct journal_lost *lost;
    size_t n;
    struct journal *j = open_j(state, 2, &lost, &n);
    ASSERT(j != NULL);
    EXPECT_EQ_INT(n, 0);
    journal_lost_free(lost, n);
    journal_recovered(j);
    struct task *done = mk("done", "t_ok"), *run = mk("run", "t_bad"), *wait = mk("wait", "t_ok");
    journal_task_accepted(j, done, URL);
    journal_task_accepted(j, run, URL);
    journal_task_accepted(j, wait, URL);
    journal_task_started(j, done);
    journal_task_started(j, run);
    journal_task_finished(j, done);
    journal_close(j); /* the "crash": run and wait still open */

    j = open_j(state, 2, &lost, &n);
    ASSERT(j != NULL);
    ASSERT(n == 2);
    for (size_t i = 0; i < n; i++) {
        EXPECT_EQ_STR(lost[i].url, URL);
        EXPECT_EQ_STR(lost[i].code, "TRANSIENT_ERROR");
        if (strcmp(lost[i].task_id, "run") == 0) {
            EXPECT(lost[i].started);
            EXPECT_EQ_STR(lost[i].message, "worker crashed while running this task");
        } else {
            EXPECT_EQ_STR(lost[i].task_id, "wait");
            EXPECT(!lost[i].started);
        }
    }
    EXPECT_EQ_INT(journal_crash_count(j, "t_bad"), 1);
    EXPECT_EQ_INT(journal_crash_count(j, "t_ok"), 0);
    journal_lost_free(lost, n);
    journal_recovered(j);
    /* The same type crashes again: at crash_limit 2 it is failed permanently. */
    journal_task_accepted(j, run, URL);
    journal_task_started(j, run);
    journal_close(j);
    j = open_j(state, 2, &lost, &n);
    ASSERT(j != NULL && n == 1);
    EXPECT_EQ_STR(lost[0].code, "PERMANENT_ERROR");
    EXPECT_EQ_STR(lost[0].message, "worker crashed in handler");
    EXPECT_EQ_INT(journal_crash_count(j, "t_bad"), 2);
    journal_lost_free(lost, n);
    journal_recovered(j);
    /* A clean end of that type resets its count, persistently. */
    journal_task_accepted(j, run, URL);
    journal_task_started(j, run);
    journal_task_finished(j, run);
    EXPECT_EQ_INT(journal_crash_count(j, "t_bad"), 0);
    journal_close(j);
    j = open_j(state, 2, &lost, &n);
    EXPECT_EQ_INT(n, 0);
    EXPECT_EQ_INT(journal_crash_count(j, "t_bad"), 0);
    journal_lost_free(lost, n);
    journal_close(j);
    task_destroy(done);
    task_destroy(run);
    task_destroy(wait);
    rm_rf(state);
    free(state);
}

TEST(journal_ignores_a_torn_last_record_and_compacts)
{
    char *state = new_state();
    struct journal_lost *lost;
    size_t n;
    struct journal *j = open_j(state, 3, &lost, &n);
    ASSERT(j != NULL);
    journal_lost_free(lost, n);
    struct task *keep = mk("keep", "t_x");
    journal_task_accepted(j, keep, URL);
    /* Enough short tasks to pass the compaction threshold. */
    for (int i = 0; i < 20000; i++) {
        struct task *t = mk("short-task-with-a-longish-id", "t_y");
        journal_task_accepted(j, t, URL);
        journal_task_started(j, t);
        journal_task_finished(j, t);
        task_destroy(t);
    }
    journal_close(j);
    char *path = xasprintf("%s/journal/running.log", state);
    struct stat st;
    EXPECT(stat(path, &st) == 0 && st.st_size < (1 << 20) + 4096);
    FILE *fp = fopen(path, "a");
    if (fp != NULL) {
        fputs("{\"a\":99999,\"u\":\"x", fp); /* torn by the crash */
        fclose(fp);
    }
    j = open_j(state, 3, &lost, &n);
    ASSERT(j != NULL);
    EXPECT_EQ_INT(n, 1);
    EXPECT_EQ_STR(n ? lost[0].task_id : NULL, "keep");
    journal_lost_free(lost, n);
    journal_close(j);
    task_destroy(keep);
    free(path);
    rm_rf(state);
    free(state);
}

TAP_MAIN()
