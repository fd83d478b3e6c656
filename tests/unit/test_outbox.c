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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void reset(void)
{
    for (int i = 0; i < nsends; i++)
        free(sends[i].record);
    memset(sends, 0, sizeof(sends));
    nsends = releases = rooms = in_flight = 0;
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

static const struct outbox_sender sender = {fake_post, fake_cancel, fake_delay};
static const struct outbox_hooks hooks = {on_release, on_room};

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

static void add(struct outbox *ob, void *dest, const char *id, int holds_slot)
{
    json_t *rec = json_pack("{s:s, s:s, s:s}", "task_id", id, "job_id", id, "status", "success");
    outbox_add(ob, dest, rec, id, id, "echo", holds_slot);
    json_decref(rec);
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

TEST(the_crash_hold_and_resume_on_registration)
{
    setup();
    struct spool *sp = open_spool(0);
    struct outbox *ob = new_outbox(sp);
    outbox_hold(ob, 0.2);
    add(ob, DEST_A, "t1", 0);
    outbox_flush(ob);
    EXPECT_EQ_INT(nsends, 0);
    ASSERT(sends_reach(1));
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
    struct outbox_stats os = {1, 1, 1};
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
