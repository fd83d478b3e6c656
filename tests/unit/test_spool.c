/*
 * test_spool.c - the durable result spool and the crash journal against a
 * private temporary state directory. The spool: append + one commit per
 * batch, replay order after reopening, acknowledgements, rotation and the
 * deletion of fully acknowledged segments (cross acks kept), a torn tail, a
 * corrupt record (segment moved aside, intact results recovered), foreign
 * files, migration of version-1 files, the bounds, max_age, the lock, and
 * the pure segment parser. The journal: the report of tasks a "crashed" run
 * left behind.
 */
#include "tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* Regular files in dir whose name ends with suffix ("" = all). */
static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), s = strlen(suffix);
        n += de->d_name[0] != '.' && de->d_type == DT_REG && l >= s &&
             strcmp(de->d_name + l - s, suffix) == 0;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static char *body_of(const char *id, size_t pad)
{
    char *fill = xmalloc(pad + 1);
    memset(fill, 'x', pad);
    fill[pad] = '\0';
    char *body = xasprintf("{\"job_id\":\"%s\",\"task_id\":\"%s\",\"status\":\"success\","
                           "\"pad\":\"%s\"}",
                           id, id, fill);
    free(fill);
    return body;
}

/* Append a result (padded to about pad bytes); returns its seq. */
static unsigned long long put_pad(struct spool *sp, const char *url, const char *id, size_t pad)
{
    char *body = body_of(id, pad);
    struct spool_record *rec = spool_record_new(url, id, id, body, strlen(body));
    EXPECT_EQ_INT(spool_write(sp, rec), 0);
    EXPECT(rec->seq > 0);
    unsigned long long seq = rec->seq;
    spool_record_free(rec);
    free(body);
    return seq;
}

static unsigned long long put(struct spool *sp, const char *url, const char *id)
{
    return put_pad(sp, url, id, 0);
}

/* Acknowledge by seq, as orch does with its own copy of the record. */
static void ack(struct spool *sp, unsigned long long seq)
{
    char url[] = URL, task_id[] = "t", job_id[] = "j", body[] = "{}";
    struct spool_record rec = {seq, url, task_id, job_id, body, 2, 0};
    spool_remove(sp, &rec);
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

/* The task ids spool_load() returns, joined with ',' (static buffer). */
static const char *loaded(struct spool *sp, const char *url)
{
    static char out[4096];
    struct spool_record **recs;
    size_t n;
    out[0] = '\0';
    if (spool_load(sp, url, &recs, &n) < 0)
        return "(error)";
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, sizeof(out) - l, "%s%s", i ? "," : "", recs[i]->task_id);
    }
    free_recs(recs, n);
    return out;
}

static struct spool_stats stats(const struct spool *sp)
{
    struct spool_stats st;
    spool_get_stats(sp, &st);
    return st;
}

static char *spool_path(const char *state, const char *name)
{
    return xasprintf("%s/spool%s%s", state, name[0] ? "/" : "", name);
}

static void write_raw(const char *state, const char *name, const void *data, size_t len, int append)
{
    char *p = spool_path(state, name);
    int fd = open(p, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0600);
    if (fd >= 0) {
        if (write(fd, data, len) != (ssize_t)len)
            printf("# short write\n");
        close(fd);
    }
    free(p);
}

static off_t file_size(const char *state, const char *name)
{
    char *p = spool_path(state, name);
    struct stat st;
    off_t sz = stat(p, &st) == 0 ? st.st_size : -1;
    free(p);
    return sz;
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
    EXPECT_EQ_INT(spool_commit(sp), 0);
    spool_close(sp);
    char *dir = spool_path(state, "");
    struct stat st;
    EXPECT(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    EXPECT_EQ_INT(count_files(dir, ".seg"), 1); /* one segment holds the three */
    EXPECT_EQ_INT(count_files(dir, ""), 2);     /* ... and the lock */

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
        EXPECT(recs[i]->created > now_wall() - 60);
    }
    EXPECT(recs[0]->seq < recs[1]->seq && recs[1]->seq < recs[2]->seq);
    /* New writes continue the sequence, in a new segment. */
    EXPECT(put(sp, URL, "t-d") > recs[2]->seq);
    EXPECT_EQ_INT(stats(sp).files, 4);
    EXPECT_EQ_INT(stats(sp).segments, 2);
    spool_remove(sp, recs[1]);
    EXPECT_EQ_INT(recs[1]->seq, 0);
    EXPECT_EQ_INT(stats(sp).files, 3);
    EXPECT_EQ_INT(stats(sp).removed, 1);
    spool_remove(sp, recs[1]); /* twice: a no-op */
    EXPECT_EQ_INT(stats(sp).removed, 1);
    free_recs(recs, n);
    spool_close(sp);

    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_STR(loaded(sp, URL), "t-c,t-b,t-d");
    EXPECT_EQ_INT(stats(sp).corrupt + stats(sp).torn, 0);
    spool_close(sp);
    free(dir);
    rm_rf(state);
    free(state);
}

TEST(one_fdatasync_per_batch)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    EXPECT_EQ_INT(spool_commit(sp), 0); /* nothing appended: nothing to do */
    EXPECT_EQ_INT(stats(sp).commits, 0);
    for (int i = 0; i < 10; i++)
        put(sp, URL, "batch");
    EXPECT_EQ_INT(spool_commit(sp), 0);
    EXPECT_EQ_INT(stats(sp).commits, 1);
    EXPECT_EQ_INT(spool_commit(sp), 0);
    EXPECT_EQ_INT(stats(sp).commits, 1);
    /* Acks need no commit. */
    ack(sp, 1);
    EXPECT_EQ_INT(spool_commit(sp), 0);
    EXPECT_EQ_INT(stats(sp).commits, 1);
    EXPECT_EQ_INT(stats(sp).written, 10);
    EXPECT_EQ_INT(stats(sp).files, 9);
    spool_close(sp);
    rm_rf(state);
    free(state);
}

TEST(rotation_and_deletion_of_acknowledged_segments)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    size_t pad = 256 * 1024; /* 16 results fill a segment */
    unsigned long long a = put_pad(sp, URL, "A", pad), b = put_pad(sp, URL, "B", pad);
    unsigned long long seqs[40];
    for (int i = 0; i < 14; i++)
        seqs[i] = put_pad(sp, URL, "fill1", pad);
    unsigned long long c = put_pad(sp, URL, "C", pad); /* the second segment */
    EXPECT_EQ_INT(stats(sp).segments, 2);
    spool_commit(sp);
    ack(sp, a); /* an ack in segment 2 for segment 1 (a cross ack) */
    for (int i = 0; i < 14; i++)
        ack(sp, seqs[i]);
    for (int i = 0; i < 15; i++)
        seqs[i] = put_pad(sp, URL, "fill2", pad);
    unsigned long long d = put_pad(sp, URL, "D", pad); /* the third segment */
    EXPECT_EQ_INT(stats(sp).segments, 3);
    /* Segment 2 goes once C and its fillers are acknowledged; its ack for A
     * must survive it, because segment 1 (B) is still there. */
    ack(sp, c);
    for (int i = 0; i < 15; i++)
        ack(sp, seqs[i]);
    EXPECT_EQ_INT(stats(sp).segments, 2);
    spool_commit(sp);
    spool_close(sp);
    char *dir = spool_path(state, "");
    EXPECT_EQ_INT(count_files(dir, ".seg"), 2);

    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    EXPECT_EQ_STR(loaded(sp, URL), "B,D");
    ack(sp, b); /* segment 1 emptied and not current: deleted at once */
    EXPECT_EQ_INT(count_files(dir, ".seg"), 2); /* segment 3 and the new current one */
    ack(sp, d);
    spool_close(sp);
    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_STR(loaded(sp, URL), "");
    EXPECT_EQ_INT(count_files(dir, ".seg"), 0); /* nothing live: all deleted at open */
    EXPECT_EQ_INT(stats(sp).disk_bytes, 0);
    spool_close(sp);
    (void)seqs;
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
    EXPECT_EQ_STR(loaded(sp, URL), "mine");
    EXPECT_EQ_INT(stats(sp).other_orchestrator, 1);
    EXPECT_EQ_STR(loaded(sp, "http://other:1"), "theirs");
    EXPECT_EQ_STR(loaded(sp, NULL), "mine,theirs");
    spool_close(sp);
    rm_rf(state);
    free(state);
}

TEST(a_torn_tail_is_ignored_with_a_count)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    put(sp, URL, "one");
    put(sp, URL, "two");
    spool_close(sp);
    /* A crash in the middle of appending a third. */
    char *body = body_of("three", 10);
    struct spool_item it = {SPOOL_ITEM_RESULT, 3, 1.0, URL, strlen(URL), body, strlen(body), 0, 0};
    size_t size;
    unsigned char *rec = spool_encode(&it, &size);
    write_raw(state, "0000000000000001.seg", rec, size - 7, 1);
    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    EXPECT_EQ_STR(loaded(sp, URL), "one,two");
    EXPECT_EQ_INT(stats(sp).torn, 1);
    EXPECT_EQ_INT(stats(sp).corrupt, 0);
    /* Never appended to again: new records go to a new segment (the torn
     * record's seq may be reused: it was never sent, so nothing refers to it). */
    put(sp, URL, "four");
    spool_close(sp);
    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_STR(loaded(sp, URL), "one,two,four");
    EXPECT_EQ_INT(stats(sp).torn, 1);
    spool_close(sp);
    free(rec);
    free(body);
    rm_rf(state);
    free(state);
}

TEST(a_corrupt_record_moves_the_segment_aside_and_recovers_the_rest)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    put(sp, URL, "first");
    unsigned long long s2 = put(sp, URL, "second");
    put(sp, URL, "third");
    unsigned long long s4 = put(sp, URL, "fourth");
    ack(sp, s4);
    spool_close(sp);
    off_t size = file_size(state, "0000000000000001.seg");
    ASSERT(size > 0);
    /* Flip a byte in the second record's body. */
    char *p = spool_path(state, "0000000000000001.seg");
    int fd = open(p, O_RDWR);
    ASSERT(fd >= 0);
    off_t at = size / 4 + 60; /* records are about a quarter of the segment each */
    char byte;
    EXPECT(pread(fd, &byte, 1, at) == 1);
    byte ^= 0x55;
    EXPECT(pwrite(fd, &byte, 1, at) == 1);
    close(fd);
    write_raw(state, "notes.txt", "hello", 5, 0);
    write_raw(state, "tmp.00000000000000ff", "half", 4, 0);
    write_raw(state, "00000000000000ff.seg", "#!/bin/sh\n", 10, 0);

    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    /* second is damaged; fourth was acknowledged (its ack still counts). */
    EXPECT_EQ_STR(loaded(sp, URL), "first,third");
    struct spool_stats st = stats(sp);
    EXPECT_EQ_INT(st.corrupt_segments, 2); /* the damaged one and the foreign .seg */
    EXPECT_EQ_INT(st.corrupt, 3);          /* ... and notes.txt */
    EXPECT_EQ_INT(st.files, 2);
    char *corrupt = spool_path(state, "corrupt");
    EXPECT_EQ_INT(count_files(corrupt, ""), 3);
    EXPECT(access(p, F_OK) < 0);
    char *tmp = spool_path(state, "tmp.00000000000000ff");
    EXPECT(access(tmp, F_OK) < 0); /* an interrupted v1 write is removed */
    EXPECT(put(sp, URL, "after") > s2);
    spool_close(sp);
    /* The recovered results are durable in a healthy segment now. */
    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_STR(loaded(sp, URL), "first,third,after");
    EXPECT_EQ_INT(stats(sp).corrupt, 0);
    spool_close(sp);
    free(tmp);
    free(corrupt);
    free(p);
    rm_rf(state);
    free(state);
}

/* In a child running as a user the permission bits bind (root's do not):
 * a segment that cannot be read is left in place, its results are loaded
 * by the first open that can read it, and no seq is used twice meanwhile.
 * Returns the number of failed checks. */
static int unreadable_segment_scenario(void)
{
    int bad = 0;
#define CHILD_CHECK(c)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            printf("#   %s:%d: %s\n", __FILE__, __LINE__, #c);                                     \
            bad++;                                                                                 \
        }                                                                                          \
    } while (0)
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    put(sp, URL, "a");
    unsigned long long sb = put(sp, URL, "b");
    spool_close(sp);
    sp = open_sp(state, 0, 0, 0); /* a new process starts a new segment */
    put(sp, URL, "c");
    spool_close(sp);
    char *seg1 = spool_path(state, "0000000000000001.seg");
    CHILD_CHECK(chmod(seg1, 0) == 0);
    sp = open_sp(state, 0, 0, 0);
    CHILD_CHECK(sp != NULL);
    CHILD_CHECK(strcmp(loaded(sp, URL), "c") == 0);
    CHILD_CHECK(stats(sp).unreadable_segments == 1);
    CHILD_CHECK(stats(sp).corrupt_segments == 0);
    CHILD_CHECK(access(seg1, F_OK) == 0); /* left in place, not moved aside */
    unsigned long long sd = put(sp, URL, "d");
    CHILD_CHECK(sd > sb);
    spool_close(sp);
    CHILD_CHECK(chmod(seg1, 0600) == 0); /* the disk is fixed */
    sp = open_sp(state, 0, 0, 0);
    CHILD_CHECK(strcmp(loaded(sp, URL), "a,b,c,d") == 0);
    spool_close(sp);
    free(seg1);
    rm_rf(state);
    free(state);
    return bad;
#undef CHILD_CHECK
}

TEST(an_unreadable_segment_is_left_in_place_and_read_later)
{
    fflush(stdout);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
            _exit(100);
        _exit(unreadable_segment_scenario() == 0 ? 0 : 1);
    }
    int status = 0;
    ASSERT(waitpid(pid, &status, 0) == pid);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(version_1_files_are_migrated_or_moved_aside)
{
    char *state = new_state();
    struct spool *sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    spool_close(sp);
    const char *body = "{\"job_id\":\"j1\",\"task_id\":\"v1-old\"}";
    const char *body2 = "{\"job_id\":\"j2\",\"task_id\":\"v1-new\"}";
    char *good = xasprintf("AVTSPOOL 1 %zu %08lx 1700000000.500 " URL "\n%s", strlen(body),
                           spool_crc32(body, strlen(body)), body);
    char *good2 = xasprintf("AVTSPOOL 1 %zu %08lx 1700000001.000 " URL "\n%s", strlen(body2),
                            spool_crc32(body2, strlen(body2)), body2);
    char *bad_crc = xasprintf("AVTSPOOL 1 %zu 00000000 1.0 " URL "\n%s", strlen(body), body);
    char *bad_ver = xasprintf("AVTSPOOL 9 %zu %08lx 1.0 " URL "\n%s", strlen(body),
                              spool_crc32(body, strlen(body)), body);
    write_raw(state, "0000000000000002.res", good2, strlen(good2), 0);
    write_raw(state, "0000000000000001.res", good, strlen(good), 0);
    write_raw(state, "00000000000000a0.res", bad_crc, strlen(bad_crc), 0);
    write_raw(state, "00000000000000a1.res", bad_ver, strlen(bad_ver), 0);
    write_raw(state, "00000000000000a2.res", "\0\1\2garbage", 10, 0);

    sp = open_sp(state, 0, 0, 0);
    ASSERT(sp != NULL);
    struct spool_record **recs;
    size_t n;
    EXPECT_EQ_INT(spool_load(sp, URL, &recs, &n), 0);
    ASSERT(n == 2);
    EXPECT_EQ_STR(recs[0]->task_id, "v1-old");
    EXPECT_EQ_STR(recs[1]->task_id, "v1-new");
    EXPECT(recs[0]->created > 1700000000.4 && recs[0]->created < 1700000000.6);
    free_recs(recs, n);
    struct spool_stats st = stats(sp);
    EXPECT_EQ_INT(st.migrated, 2);
    EXPECT_EQ_INT(st.corrupt, 3);
    char *dir = spool_path(state, "");
    EXPECT_EQ_INT(count_files(dir, ".res"), 0);
    EXPECT_EQ_INT(count_files(dir, ".seg"), 1);
    spool_close(sp);
    sp = open_sp(state, 0, 0, 0);
    EXPECT_EQ_STR(loaded(sp, URL), "v1-old,v1-new");
    EXPECT_EQ_INT(stats(sp).migrated, 0);
    spool_close(sp);
    free(dir);
    free(good);
    free(good2);
    free(bad_crc);
    free(bad_ver);
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
    EXPECT_EQ_INT(stats(sp).files, 4);
    EXPECT_EQ_INT(stats(sp).full_events, 1);
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

    /* The byte bound counts live records only (acks do not count), also
     * on reopen. */
    sp = open_sp(state, 0, 100, 0);
    ASSERT(sp != NULL);
    EXPECT(spool_is_full(sp)); /* two records of > 50 bytes each */
    EXPECT_EQ_INT(stats(sp).full_events, 1);
    EXPECT(stats(sp).bytes > 100 && stats(sp).bytes < 400);
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
    EXPECT_EQ_INT(stats(sp).expired, 1);
    EXPECT_EQ_INT(stats(sp).files, 1);
    if (n > 0) {
        EXPECT_EQ_INT(spool_expire(sp, recs[0], now_wall() + 61), 1);
        EXPECT_EQ_INT(stats(sp).files, 0);
    }
    free_recs(recs, n);
    spool_close(sp);
    sp = open_sp(state, 0, 0, 60); /* an expiry is an ack: nothing comes back */
    EXPECT_EQ_STR(loaded(sp, URL), "");
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

/* ---- the pure segment parser ---- */

struct seen {
    int n;
    unsigned long long seqs[64];
    char kinds[65];
};

static void on_item(void *arg, const struct spool_item *it)
{
    struct seen *s = arg;
    if (s->n < 64) {
        s->seqs[s->n] = it->seq;
        s->kinds[s->n] = (char)it->kind;
        s->kinds[s->n + 1] = '\0';
    }
    s->n++;
}

static size_t encode_into(unsigned char *buf, size_t at, int kind, unsigned long long seq)
{
    const char *body = "{\"job_id\":\"j\",\"task_id\":\"t\"}";
    int r = kind == SPOOL_ITEM_RESULT;
    struct spool_item it = {
        kind, seq, 5.0, r ? URL : "", r ? strlen(URL) : 0, r ? body : "", r ? strlen(body) : 0,
        0,    0};
    size_t size;
    unsigned char *rec = spool_encode(&it, &size);
    memcpy(buf + at, rec, size);
    free(rec);
    return at + size;
}

TEST(parser_resyncs_after_damage_and_survives_garbage)
{
    unsigned char buf[4096];
    size_t len = encode_into(buf, 0, SPOOL_ITEM_RESULT, 1);
    size_t second = len;
    len = encode_into(buf, len, SPOOL_ITEM_RESULT, 2);
    len = encode_into(buf, len, SPOOL_ITEM_DONE, 1);
    len = encode_into(buf, len, SPOOL_ITEM_RESULT, 3);
    struct seen s = {0};
    size_t bad = 0;
    EXPECT_EQ_INT(spool_parse_segment(buf, len, on_item, &s, &bad), 0);
    EXPECT_EQ_INT(s.n, 4);
    EXPECT_EQ_STR(s.kinds, "RRDR");
    /* Torn at every possible length: never more than the whole records. */
    for (size_t cut = 1; cut < second; cut++) {
        struct seen t = {0};
        EXPECT_EQ_INT(spool_parse_segment(buf, cut, on_item, &t, &bad), SPOOL_PARSE_TORN);
        EXPECT_EQ_INT(t.n, 0);
    }
    /* Damage in the second record: the others are still found. */
    buf[second + 40] ^= 1;
    struct seen d = {0};
    EXPECT_EQ_INT(spool_parse_segment(buf, len, on_item, &d, &bad), SPOOL_PARSE_CORRUPT);
    EXPECT_EQ_INT(bad, second);
    EXPECT_EQ_STR(d.kinds, "RDR");
    EXPECT(d.seqs[0] == 1 && d.seqs[2] == 3);
    /* Pseudo-random garbage, and garbage with headers inside. */
    unsigned int x = 12345;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < sizeof(buf); i++) {
            x = x * 1103515245u + 12345u;
            buf[i] = (unsigned char)(x >> 16);
        }
        if (round % 2)
            encode_into(buf, (size_t)(x % 2048), SPOOL_ITEM_DONE, 7);
        struct seen g = {0};
        int rc = spool_parse_segment(buf, sizeof(buf) - (size_t)round, on_item, &g, NULL);
        EXPECT(rc == SPOOL_PARSE_CORRUPT || rc == SPOOL_PARSE_TORN || rc == 0);
        EXPECT(g.n <= 1);
    }
    EXPECT_EQ_INT(spool_parse_segment("", 0, on_item, &s, NULL), 0);
}

/* ---- crash journal ---- */

/* The handler returned cleanly and its result is settled (work.c's way). */
static void finish(struct journal *j, struct task *t)
{
    journal_task_returned(j, t, 1);
    journal_task_settled(j, t->journal_seq);
}

static struct journal *open_j(const char *state, int limit, struct journal_lost **lost, size_t *n)
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
    finish(j, done);
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
    finish(j, run);
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
        finish(j, t);
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
