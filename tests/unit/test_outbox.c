/*
 * test_outbox.c - the outbox over a real spool in a temporary directory
 * and a real libev loop, with a fake sender standing in for the sessions:
 * it records every send and answers when the test says so. Covers
 * durability before the first send (nothing goes out before the group
 * commit, one fdatasync per batch), delivery and its acknowledgement in the
 * spool, the slot released exactly once (on delivery or after the first
 * failed attempt), per-destination pauses, the crash hold, resuming on
 * re-registration, the cap on sends in flight, crash reports spooled at
 * start and loaded, expiry at max_age, and cancelling sends at destroy.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <ev.h>

#include "backoff.h"
#include "cfg.h"
#include "http.h"
#include "log.h"
#include "outbox.h"
#include "spool.h"
#include "tap.h"
#include "util.h"

#define MAX_SENDS 64

struct send {
    void *dest;
    char *record;
    outbox_answer_fn done;
    void *arg;
    int answered, cancelled;
};

static struct send sends[MAX_SENDS];
static int nsends, releases, rooms, in_flight;
static double delay = 0.05; /* what failure_delay answers */
/* The refs settled so far, in order. */
static unsigned long long settled[MAX_SENDS];
static int nsettled;

static void reset(void)
{
    for (int i = 0; i < nsends; i++)
        free(sends[i].record);
    memset(sends, 0, sizeof(sends));
    nsends = releases = rooms = in_flight = nsettled = 0;
    delay = 0.05;
}

static void *fake_post(void *dest, const char *record, size_t len, outbox_answer_fn done, void *arg)
{
    if (nsends >= MAX_SENDS)
        abort();
    struct send *s = &sends[nsends++];
    s->dest = dest;
    s->record = xstrndup(record, len);
    s->done = done;
    s->arg = arg;
    in_flight++;
    return s;
}

static void answer(struct send *s, long status, const char *body, int cancelled)
{
    struct http_response r = {.status = status,
                              .body = body,
                              .len = strlen(body),
                              .retry_after = -1,
                              .cancelled = cancelled};
    struct outbox_answer a = {.r = &r, .text = "x"};
    s->answered = 1;
    s->cancelled = cancelled;
    in_flight--;
    s->done(s->arg, &a);
}

static void fake_cancel(void *handle)
{
    answer(handle, 0, "", 1);
}

static double fake_delay(void *dest, const char *what, const struct http_response *r,
                         struct backoff *b, const struct log_ctx *ctx)
{
    (void)dest, (void)what, (void)r, (void)b, (void)ctx;
    return delay;
}

static void on_release(void *arg)
{
    (void)arg;
    releases++;
}

static void on_room(void *arg)
{
    (void)arg;
    rooms++;
}

static void on_settled(void *arg, unsigned long long ref)
{
    (void)arg;
    if (nsettled < MAX_SENDS)
        settled[nsettled++] = ref;
}

static const struct outbox_sender sender = {fake_post, fake_cancel, fake_delay};
static const struct outbox_hooks hooks = {on_release, on_room, on_settled};

/* Two destinations: the outbox only compares their addresses. */
static char dest_a, dest_b;
#define DEST_A ((void *)&dest_a)
#define DEST_B ((void *)&dest_b)
#define URL_A "http://a.example:8080"
#define URL_B "http://b.example:8080"

static char state_dir[64];
static struct ev_loop *loop;
static struct cfg cfg;

static struct spool *open_spool(double max_age)
{
    char err[AVT_ERRLEN];
    struct spool *sp = NULL;
    struct spool_limits lim = {0, 0, max_age};
    if (spool_open(state_dir, &lim, &sp, err, sizeof(err)) < 0) {
        printf("# spool_open: %s\n", err);
        abort();
    }
    return sp;
}

static struct outbox *new_outbox(struct spool *sp)
{
    cfg.result_retry_initial_delay = 0.05;
    cfg.retry_max_delay = 0.1;
    struct outbox *ob = outbox_create(loop, &cfg, sp, &sender, &hooks, NULL);
    outbox_add_dest(ob, DEST_A, URL_A);
    outbox_add_dest(ob, DEST_B, URL_B);
    return ob;
}

static void add_ref(struct outbox *ob, void *dest, const char *id, int holds_slot,
                    unsigned long long ref)
{
    json_t *rec = json_pack("{s:s, s:s, s:s}", "task_id", id, "job_id", id, "status", "success");
    outbox_add(ob, dest, rec, id, id, "echo", holds_slot, ref);
    json_decref(rec);
}

static void add(struct outbox *ob, void *dest, const char *id, int holds_slot)
{
    add_ref(ob, dest, id, holds_slot, 0);
}

/* Run the loop until cond() holds (a generous bound, never a verdict). */
static int run_until(int (*cond)(void))
{
    for (int i = 0; i < 2000 && !cond(); i++) {
        ev_run(loop, EVRUN_NOWAIT);
        usleep(2000);
    }
    return cond();
}

static int want_sends;
static int enough_sends(void)
{
    return nsends >= want_sends;
}

/* Run the loop until n sends were made in all. */
static int sends_reach(int n)
{
    want_sends = n;
    return run_until(enough_sends);
}

static void rm_state(void)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", state_dir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", state_dir);
}

static void setup(void)
{
    reset();
    snprintf(state_dir, sizeof(state_dir), "/tmp/avt-outbox.XXXXXX");
    if (mkdtemp(state_dir) == NULL)
        abort();
}

TEST(nothing_is_sent_before_the_group_commit)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    struct spool_stats st0, st1;
    spool_get_stats(sp, &st0);
    add(ob, DEST_A, "t1", 1);
    add(ob, DEST_A, "t2", 1);
    add(ob, DEST_B, "t3", 1);
    EXPECT_EQ_INT(nsends, 0); /* appended, not yet durable */
    outbox_flush(ob);
    spool_get_stats(sp, &st1);
    EXPECT_EQ_INT(st1.commits - st0.commits, 1); /* one fdatasync for the batch */
    EXPECT_EQ_INT(st1.written - st0.written, 3);
    EXPECT_EQ_INT(nsends, 3);
    EXPECT(sends[0].dest == DEST_A && sends[2].dest == DEST_B);
    EXPECT_CONTAINS(sends[0].record, "\"task_id\":\"t1\"");
    outbox_flush(ob); /* nothing new: no commit */
    spool_get_stats(sp, &st0);
    EXPECT_EQ_INT(st0.commits, st1.commits);
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(delivery_acknowledges_in_the_spool_and_releases_the_slot_once)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    add(ob, DEST_A, "t1", 1);
    add(ob, DEST_A, "t2", 0);
    outbox_flush(ob);
    struct outbox_stats os;
    outbox_get_stats(ob, DEST_A, &os);
    EXPECT_EQ_INT(os.pending, 2);
    answer(&sends[0], 200, "{\"status\":\"accepted\"}", 0);
    answer(&sends[1], 200, "{\"status\":\"ignored\"}", 0);
    EXPECT_EQ_INT(releases, 1); /* only t1 held a slot */
    outbox_get_stats(ob, DEST_A, &os);
    EXPECT_EQ_INT(os.pending, 0);
    EXPECT_EQ_INT(os.sent, 2);
    EXPECT(outbox_idle(ob));
    struct spool_stats st;
    spool_get_stats(sp, &st);
    EXPECT_EQ_INT(st.files, 0);
    EXPECT_EQ_INT(st.removed, 2);
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(a_failure_releases_the_slot_and_pauses_only_its_destination)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    delay = 0.2;
    add(ob, DEST_A, "t1", 1);
    outbox_flush(ob);
    answer(&sends[0], 503, "{\"error\":\"down\"}", 0);
    EXPECT_EQ_INT(releases, 1); /* capacity does not wait for an orchestrator that is down */
    struct outbox_stats os;
    outbox_get_stats(ob, DEST_A, &os);
    EXPECT_EQ_INT(os.failed, 1);
    EXPECT_EQ_INT(os.pending, 1);
    add(ob, DEST_A, "t2", 1); /* A is paused: waits */
    add(ob, DEST_B, "t3", 1); /* B is not */
    outbox_flush(ob);
    EXPECT_EQ_INT(nsends, 2);
    EXPECT(sends[1].dest == DEST_B);
    /* The pause ends: both of A's results go, oldest first. */
    ASSERT(sends_reach(4));
    int i = nsends - 2;
    EXPECT_CONTAINS(sends[i].record, "\"t1\"");
    EXPECT_CONTAINS(sends[i + 1].record, "\"t2\"");
    answer(&sends[i], 200, "{}", 0);
    EXPECT_EQ_INT(releases, 1); /* t1's slot went at its first failure */
    answer(&sends[i + 1], 200, "{}", 0);
    EXPECT_EQ_INT(releases, 2);
    answer(&sends[1], 200, "{}", 0);
    EXPECT_EQ_INT(releases, 3);
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

/* Writes that extend a file fail with EFBIG past RLIMIT_FSIZE (SIGXFSZ is
 * ignored): a real failing write, as on a full disk. */
static void file_size_limit(rlim_t lim)
{
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = lim;
    setrlimit(RLIMIT_FSIZE, &rl);
}

/* A crash report of this start for A, spooled before the outbox loads. */
static void spool_crash_report(struct outbox *ob, const char *id)
{
    json_t *rec = json_pack("{s:s, s:s, s:s}", "task_id", id, "job_id", id, "status", "failure");
    EXPECT_EQ_INT(outbox_spool(ob, URL_A, rec, id, id), 0);
    json_decref(rec);
}

TEST(only_crash_reports_wait_out_the_hold)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    spool_crash_report(ob, "lost");
    outbox_hold(ob, 0.3); /* as daemon.c: before the spool is loaded */
    outbox_load(ob);
    EXPECT_EQ_INT(nsends, 0); /* the crash report waits */
    add(ob, DEST_A, "new", 1);
    outbox_flush(ob);
    EXPECT_EQ_INT(nsends, 1); /* a new result does not: its slot comes back at once */
    EXPECT_CONTAINS(sends[0].record, "\"new\"");
    answer(&sends[0], 200, "{}", 0);
    EXPECT_EQ_INT(releases, 1);
    ASSERT(sends_reach(2)); /* the hold ends */
    EXPECT_CONTAINS(sends[1].record, "\"lost\"");
    answer(&sends[1], 200, "{}", 0);
    EXPECT(outbox_idle(ob));
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(resume_on_registration_cuts_a_backoff_short)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    add(ob, DEST_A, "t1", 0);
    outbox_flush(ob);
    answer(&sends[0], 500, "{}", 0);
    delay = 3600; /* a long backoff... */
    add(ob, DEST_A, "t2", 0);
    outbox_flush(ob);
    EXPECT_EQ_INT(nsends, 1);
    outbox_resume(ob, DEST_A); /* ...cut short: the orchestrator is back */
    EXPECT_EQ_INT(nsends, 3);
    outbox_resume(ob, DEST_B); /* nothing waits there */
    EXPECT_EQ_INT(nsends, 3);
    outbox_destroy(ob); /* cancels the two in flight */
    EXPECT(sends[1].cancelled && sends[2].cancelled);
    spool_close(sp);
    rm_state();
}

/* The one file in STATE_DIR/refused, read whole (NULL: none or several). */
static char *refused_file(void)
{
    char dir[128], path[400];
    snprintf(dir, sizeof(dir), "%s/refused", state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.' && n++ == 0)
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    }
    if (d != NULL)
        closedir(d);
    return n == 1 ? read_file(path, 1 << 20, NULL) : NULL;
}

TEST(a_refused_result_is_set_aside_and_delays_no_other)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    delay = 3600; /* a pause would stop everything for the test's life */
    add_ref(ob, DEST_A, "big", 1, 5);
    add(ob, DEST_A, "t2", 1);
    outbox_flush(ob);
    EXPECT_EQ_INT(nsettled, 1); /* durable: settled at the commit */
    answer(&sends[0], 413, "<html>Request Entity Too Large</html>", 0);
    EXPECT_EQ_INT(releases, 1);
    struct outbox_stats os;
    outbox_get_stats(ob, DEST_A, &os);
    EXPECT_EQ_INT(os.refused, 1);
    EXPECT_EQ_INT(os.pending, 1);
    char *text = refused_file();
    ASSERT(text != NULL);
    EXPECT_CONTAINS(text, "\"task_id\": \"big\"");
    EXPECT_CONTAINS(text, "413");
    EXPECT_CONTAINS(text, URL_A);
    free(text);
    add(ob, DEST_A, "t3", 1); /* not paused: goes at once */
    outbox_flush(ob);
    EXPECT_EQ_INT(nsends, 3);
    answer(&sends[1], 200, "{}", 0);
    answer(&sends[2], 200, "{}", 0);
    EXPECT(outbox_idle(ob));
    struct spool_stats st;
    spool_get_stats(sp, &st);
    EXPECT_EQ_INT(st.refused, 1);
    EXPECT_EQ_INT(st.files, 0); /* acknowledged: not sent again after a restart */
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(answers_that_may_change_are_retried_not_refused)
{
    static const long retry[] = {0, 401, 403, 408, 429, 500, 502, 503};
    for (size_t k = 0; k < ARRAY_LEN(retry); k++) {
        setup();
        struct spool *sp = open_spool(0);
        struct outbox *ob = new_outbox(sp);
        add(ob, DEST_A, "t1", 0);
        outbox_flush(ob);
        answer(&sends[0], retry[k], "{}", 0);
        struct outbox_stats os;
        outbox_get_stats(ob, DEST_A, &os);
        EXPECT_EQ_INT(os.refused, 0);
        EXPECT_EQ_INT(os.pending, 1);
        ASSERT(sends_reach(2)); /* sent again after the pause */
        answer(&sends[1], 200, "{}", 0);
        outbox_destroy(ob);
        spool_close(sp);
        rm_state();
    }
}

TEST(a_result_that_failed_goes_behind_the_waiting_ones)
{
    setup();
    struct outbox *ob = new_outbox(NULL);
    for (int i = 1; i <= 9; i++) {
        char id[16];
        snprintf(id, sizeof(id), "t%d", i);
        add(ob, DEST_A, id, 0);
    }
    EXPECT_EQ_INT(nsends, 8);        /* t9 waits for room */
    answer(&sends[0], 500, "{}", 0); /* t1 fails: a pause */
    for (int i = 1; i < 8; i++)
        answer(&sends[i], 200, "{}", 0);
    ASSERT(sends_reach(10)); /* after the pause: t9 first, then t1 */
    EXPECT_CONTAINS(sends[8].record, "\"t9\"");
    EXPECT_CONTAINS(sends[9].record, "\"t1\"");
    outbox_destroy(ob);
}

TEST(a_result_settles_after_the_commit_that_covers_it)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    add_ref(ob, DEST_A, "t1", 1, 7);
    add_ref(ob, DEST_A, "t2", 1, 8);
    add(ob, DEST_A, "t3", 1);   /* no journal entry */
    EXPECT_EQ_INT(nsettled, 0); /* appended, not durable: its journal entry stays open */
    outbox_flush(ob);
    EXPECT_EQ_INT(nsettled, 2);
    EXPECT(settled[0] == 7 && settled[1] == 8);
    for (int i = 0; i < 3; i++)
        answer(&sends[i], 200, "{}", 0);
    EXPECT_EQ_INT(nsettled, 2); /* once each */
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

static struct outbox *retrying;
static int spool_works_again(void)
{
    return nsettled == 2 && rooms > 0;
}

TEST(a_disk_error_keeps_the_journal_entry_until_the_result_is_delivered_or_written)
{
    setup();
    signal(SIGXFSZ, SIG_IGN);
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    retrying = ob;
    add(ob, DEST_A, "before", 0); /* a segment exists: later writes extend it */
    outbox_flush(ob);
    answer(&sends[0], 200, "{}", 0);
    file_size_limit(1);
    add_ref(ob, DEST_A, "delivered", 1, 21);
    add_ref(ob, DEST_A, "kept", 1, 22);
    outbox_flush(ob);
    file_size_limit(RLIM_INFINITY);
    EXPECT(spool_trouble(sp, NULL) != 0); /* the worker takes no new task */
    EXPECT_EQ_INT(nsends, 3);             /* sent from memory all the same */
    EXPECT_EQ_INT(nsettled, 0);           /* neither durable nor delivered */
    answer(&sends[1], 200, "{}", 0);
    EXPECT_EQ_INT(nsettled, 1); /* delivered: its entry can close */
    EXPECT(settled[0] == 21);
    answer(&sends[2], 503, "{}", 0);
    /* The disk can be written again: the retry writes "kept" and the worker
     * takes tasks again. */
    ASSERT(run_until(spool_works_again));
    EXPECT(settled[1] == 22);
    EXPECT_EQ_INT(spool_trouble(sp, NULL), 0);
    struct spool_stats st;
    spool_get_stats(sp, &st);
    EXPECT_EQ_INT(st.trouble_events, 1);
    outbox_destroy(ob);
    spool_close(sp);
    /* The next start finds "kept" in the spool. */
    sp = open_spool(0);
    ob = new_outbox(sp);
    outbox_load(ob);
    ASSERT(nsends >= 4);
    EXPECT_CONTAINS(sends[nsends - 1].record, "\"kept\"");
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(a_crash_report_that_cannot_be_spooled_is_sent_from_memory)
{
    setup();
    signal(SIGXFSZ, SIG_IGN);
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    add(ob, DEST_A, "before", 0); /* a segment exists: the report would extend it */
    outbox_flush(ob);
    answer(&sends[0], 200, "{}", 0);
    json_t *rec =
        json_pack("{s:s, s:s, s:s}", "task_id", "lost", "job_id", "lost", "status", "failure");
    file_size_limit(1);
    EXPECT(outbox_spool(ob, URL_A, rec, "lost", "lost") < 0);
    file_size_limit(RLIM_INFINITY);
    json_decref(rec);
    outbox_hold(ob, 0.05);
    outbox_load(ob);
    ASSERT(sends_reach(2)); /* after the hold, from memory */
    EXPECT_CONTAINS(sends[1].record, "\"lost\"");
    answer(&sends[1], 200, "{}", 0);
    EXPECT(outbox_idle(ob));
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(at_most_eight_sends_in_flight_per_destination)
{
    setup();
    struct outbox *ob = new_outbox(NULL); /* memory only: sent at once */
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof(id), "t%d", i);
        add(ob, DEST_A, id, 0);
    }
    EXPECT_EQ_INT(nsends, 8);
    answer(&sends[0], 200, "{}", 0);
    EXPECT_EQ_INT(nsends, 9);
    EXPECT_EQ_INT(in_flight, 8);
    outbox_destroy(ob);
    EXPECT_EQ_INT(in_flight, 0);
}

TEST(crash_reports_are_spooled_and_loaded_for_their_orchestrator)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = outbox_create(loop, &cfg, sp, &sender, &hooks, NULL);
    json_t *rec =
        json_pack("{s:s, s:s, s:s}", "task_id", "lost", "job_id", "lost", "status", "failure");
    EXPECT_EQ_INT(outbox_spool(ob, URL_B, rec, "lost", "lost"), 0);
    json_decref(rec);
    outbox_destroy(ob);
    spool_close(sp);
    /* The next start: a session for B exists now. */
    sp = open_spool(0);
    ob = new_outbox(sp);
    outbox_load(ob);
    EXPECT_EQ_INT(nsends, 1);
    EXPECT(sends[0].dest == DEST_B);
    EXPECT_CONTAINS(sends[0].record, "\"lost\"");
    answer(&sends[0], 200, "{}", 0);
    EXPECT_EQ_INT(releases, 0); /* a report of the previous run holds no slot */
    EXPECT(outbox_idle(ob));
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

static struct outbox *expiring;
static int expired(void)
{
    return outbox_idle(expiring);
}

TEST(results_older_than_max_age_are_dropped)
{
    setup();
    struct spool *sp = open_spool(0.01);
    struct outbox *ob = new_outbox(sp);
    expiring = ob;
    add(ob, DEST_A, "old", 1);
    outbox_flush(ob);
    usleep(20000);
    answer(&sends[0], 503, "{}", 0); /* paused; at the pause's end it is too old */
    EXPECT_EQ_INT(releases, 1);
    ASSERT(run_until(expired));
    EXPECT_EQ_INT(nsends, 1); /* never sent again */
    struct spool_stats st;
    spool_get_stats(sp, &st);
    EXPECT_EQ_INT(st.expired, 1);
    EXPECT_EQ_INT(releases, 1);
    outbox_destroy(ob);
    spool_close(sp);
    rm_state();
}

TEST(unknown_destination_has_zero_figures)
{
    struct outbox *ob = new_outbox(NULL);
    struct outbox_stats os = {.sent = 1, .failed = 1, .pending = 1};
    outbox_get_stats(ob, &os, &os);
    EXPECT_EQ_INT(os.sent + os.failed + os.pending, 0);
    outbox_destroy(ob);
    outbox_destroy(NULL);
    reset();
}

__attribute__((constructor)) static void init(void)
{
    log_set_level(LOG_CRIT); /* the failures are logged at err and below */
    loop = ev_loop_new(EVFLAG_AUTO);
}

TAP_MAIN()
