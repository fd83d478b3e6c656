/*
 * test_work.c - a task's way from poll to result (work.c) with its real
 * neighbours where they need no network (the pool with a fake plugin, the
 * ledger, the worker-to-loop queue, the crash journal and the spool in a
 * temporary directory) and a fake in place of the network: the outbox's
 * sender records every result, and the sessions are never started. Covers
 * a task accepted, run and its result queued holding the slot, the journal
 * entry closed once the result is durable, a copy of a running task
 * refused, a task polled before a reload running with the retired plugin,
 * a cancel that arrived first, an invalid payload answered without
 * running, an abandoned task's failure sent at once and its late outcome
 * dropped, hot-cache changes, and custom events on a dialect without
 * them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "evq.h"
#include "host.h"
#include "http.h"
#include "journal.h"
#include "ledger.h"
#include "log.h"
#include "orch.h"
#include "outbox.h"
#include "spool.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "task.h"
#include "taskstats.h"
#include "util.h"
#include "work.h"

/* ---- The fake plugin: "echo" succeeds; "hold" waits for a flag ---- */

static atomic_int release_hold;

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    if (strcmp(task->type, "hold") == 0) {
        while (!atomic_load(&release_hold))
            usleep(1000);
    }
    return avt_succeed(task, json_pack("{s:s}", "by", "fake"));
}

static const char *const fake_types[] = {"echo", "hold", NULL};
static const struct avt_plugin desc = {.name = "fake", .task_types = fake_types, .handle = handle};
static struct plugin fake_plugin, old_plugin;
static char fake_name[] = "fake", old_name[] = "old";
static struct plugin_type types_now[] = {{"echo", &fake_plugin, NULL},
                                         {"hold", &fake_plugin, NULL}};
static struct plugin_type types_old[] = {{"gone", &old_plugin, NULL}};
static struct plugin *list_now[] = {&fake_plugin}, *list_old[] = {&old_plugin};
static struct plugin_set plugins_now = {list_now, 1, types_now, 2};
static struct plugin_set plugins_old = {list_old, 1, types_old, 1};

/* ---- The fake sender ---- */

static char *sent[32];
static int nsent, changes;

static void *fake_post(void *dest, const char *record, size_t len, outbox_answer_fn done, void *arg)
{
    (void)dest, (void)done, (void)arg;
    sent[nsent++] = xstrndup(record, len);
    return &sent[nsent - 1]; /* never answered: the result stays in flight */
}

static void fake_cancel(void *handle)
{
    (void)handle;
}

static double fake_delay(void *dest, const char *what, const struct http_response *r,
                         struct backoff *b, const struct log_ctx *ctx)
{
    (void)dest, (void)what, (void)r, (void)b, (void)ctx;
    return 1;
}

static void on_changed(void *arg)
{
    (void)arg;
    changes++;
}

static const struct outbox_sender sender = {fake_post, fake_cancel, fake_delay};
static const struct outbox_hooks ohooks = {work_release, work_room, work_settled};
static const struct ledger_hooks lhooks = {work_cancel, work_abandoned};

static void no_task(void *arg, struct task *t, int valid, const struct plugin_set *p)
{
    (void)arg, (void)t, (void)valid, (void)p;
}

static void no_registered(void *arg, struct orch *o)
{
    (void)arg, (void)o;
}

static const struct orch_hooks orch_hooks = {no_task, no_registered, NULL};

/* ---- The fixture ---- */

struct fixture {
    struct ev_loop *loop;
    struct http *http;
    struct cfg *cfg;
    struct evq *evq;
    struct pool *pool;
    struct ledger *ledger;
    struct work *work;
    struct outbox *outbox;
    struct spool *spool;
    struct journal *journal;
    struct taskstats *ts;
    struct orch *orch;
    char dir[64];
};

static void fixture_open(struct fixture *f)
{
    char err[AVT_ERRLEN];
    struct journal_lost *lost = NULL;
    size_t nlost = 0;
    memset(f, 0, sizeof(*f));
    nsent = changes = 0;
    atomic_store(&release_hold, 0);
    setenv("ORCHESTRATOR_URL", "http://127.0.0.1:1", 1);
    setenv("WORKER_ID", "w-work", 1);
    setenv("MAX_CONCURRENT_TASKS", "2", 1);
    if (cfg_load(NULL, &f->cfg, err, sizeof(err)) < 0)
        abort();
    snprintf(f->dir, sizeof(f->dir), "/tmp/avt-work.XXXXXX");
    if (mkdtemp(f->dir) == NULL ||
        journal_open(f->dir, 3, &f->journal, &lost, &nlost, err, sizeof(err)) < 0)
        abort();
    journal_lost_free(lost, nlost);
    struct spool_limits lim = {0, 0, 0};
    if (spool_open(f->dir, &lim, &f->spool, err, sizeof(err)) < 0)
        abort();
    f->loop = ev_loop_new(EVFLAG_AUTO);
    f->http = http_create(f->loop, NULL);
    f->evq = evq_create(NULL, NULL);
    f->pool = pool_create(f->cfg, f->evq);
    f->ts = taskstats_create();
    struct work_env env = {.cfg = f->cfg,
                           .plugins = &plugins_now,
                           .pool = f->pool,
                           .taskstats = f->ts,
                           .changed = on_changed};
    f->work = work_create(&env);
    f->ledger = ledger_create(&lhooks, f->work);
    work_set_ledger(f->work, f->ledger);
    f->outbox = outbox_create(f->loop, f->cfg, f->spool, &sender, &ohooks, f->work);
    work_set_outbox(f->work, f->outbox, f->journal);
    struct orch_env oenv = {f->pool, f->ledger, work_hot_cache(f->work), &orch_hooks, NULL};
    f->orch = orch_create(f->loop, f->http, f->cfg, 0, &oenv, &plugins_now);
    outbox_add_dest(f->outbox, f->orch, orch_url(f->orch));
}

/* Close everything; returns how many tasks the journal still held. */
static size_t fixture_close(struct fixture *f)
{
    char err[AVT_ERRLEN];
    struct journal_lost *lost = NULL;
    size_t nlost = 0;
    pool_destroy(f->pool);
    evq_destroy(f->evq);
    outbox_destroy(f->outbox);
    spool_close(f->spool);
    orch_destroy(f->orch);
    ledger_destroy(f->ledger);
    work_destroy(f->work);
    taskstats_destroy(f->ts);
    http_destroy(f->http);
    ev_loop_destroy(f->loop);
    journal_close(f->journal);
    if (journal_open(f->dir, 3, &f->journal, &lost, &nlost, err, sizeof(err)) == 0)
        journal_close(f->journal);
    journal_lost_free(lost, nlost);
    cfg_destroy(f->cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", f->dir);
    for (int i = 0; i < nsent; i++)
        free(sent[i]);
    return nlost;
}

static struct task *polled(struct fixture *f, const char *id, const char *type)
{
    struct task *t = task_create(id, id, type, NULL);
    t->origin = f->orch;
    return t;
}

/* Hand the pool's events to the work until `n` results were sent. */
static int pump(struct fixture *f, int n)
{
    for (int i = 0; i < 5000 && nsent < n; i++) {
        struct evq_event *ev = evq_take(f->evq);
        if (ev != NULL)
            work_events(f->work, ev);
        else
            usleep(1000);
    }
    return nsent >= n;
}

TEST(a_task_runs_and_its_result_holds_the_slot_until_delivered)
{
    struct fixture f;
    fixture_open(&f);
    work_accept(f.work, polled(&f, "t1", "echo"), 1, &plugins_now);
    EXPECT_EQ_INT(pool_free_slots(f.pool), 1);
    EXPECT(changes > 0);
    ASSERT(pump(&f, 1));
    EXPECT_CONTAINS(sent[0], "\"task_id\":\"t1\"");
    EXPECT_CONTAINS(sent[0], "\"by\":\"fake\"");
    EXPECT_EQ_INT(pool_free_slots(f.pool), 1); /* the result still holds it */
    struct ledger_stats ls;
    ledger_get_stats(f.ledger, &ls);
    EXPECT_EQ_INT(ls.active, 0);
    work_release(f.work); /* what the outbox does on delivery */
    EXPECT_EQ_INT(pool_free_slots(f.pool), 2);
    EXPECT_EQ_INT(fixture_close(&f), 0); /* the journal entry was closed */
}

TEST(a_copy_of_a_running_task_is_not_run_twice)
{
    struct fixture f;
    fixture_open(&f);
    work_accept(f.work, polled(&f, "t1", "hold"), 1, &plugins_now);
    work_accept(f.work, polled(&f, "t1", "hold"), 1, &plugins_now);
    EXPECT_EQ_INT(pool_free_slots(f.pool), 1);
    atomic_store(&release_hold, 1);
    ASSERT(pump(&f, 1));
    usleep(20000);
    EXPECT_EQ_INT(nsent, 1);
    fixture_close(&f);
}

TEST(a_task_polled_before_a_reload_runs_with_the_retired_plugin)
{
    struct fixture f;
    fixture_open(&f);
    old_plugin = fake_plugin;
    old_plugin.desc = &desc;
    old_plugin.name = old_name;
    struct task *t = polled(&f, "t1", "gone");
    work_accept(f.work, t, 1, &plugins_old);
    ASSERT(pump(&f, 1));
    EXPECT_CONTAINS(sent[0], "\"status\":\"success\"");
    /* Polled under the current set, an unknown type fails permanently. */
    work_accept(f.work, polled(&f, "t2", "gone"), 1, &plugins_now);
    ASSERT(pump(&f, 2));
    EXPECT_CONTAINS(sent[1], "Unsupported task");
    fixture_close(&f);
}

TEST(a_cancel_that_came_first_answers_without_running)
{
    struct fixture f;
    fixture_open(&f);
    ledger_cancel(f.ledger, f.orch, RXON_CANCEL_TASK, "t1", "websocket");
    work_accept(f.work, polled(&f, "t1", "hold"), 1, &plugins_now);
    ASSERT(pump(&f, 1)); /* "hold" never blocks: its handler does not run */
    EXPECT_CONTAINS(sent[0], "\"status\":\"cancelled\"");
    EXPECT_EQ_INT(fixture_close(&f), 0);
}

TEST(an_invalid_payload_is_answered_without_running)
{
    struct fixture f;
    fixture_open(&f);
    struct task *t = polled(&f, "bad", "echo");
    task_set_failure(t, AVT_INVALID_INPUT_ERROR, "invalid task payload: x");
    work_accept(f.work, t, 0, &plugins_now);
    EXPECT_EQ_INT(nsent, 1);
    EXPECT_CONTAINS(sent[0], "INVALID_INPUT_ERROR");
    EXPECT_EQ_INT(pool_free_slots(f.pool), 2);
    fixture_close(&f);
}

TEST(an_abandoned_task_reports_at_once_and_its_late_outcome_is_dropped)
{
    struct fixture f;
    fixture_open(&f);
    struct task *t = polled(&f, "t1", "hold");
    work_accept(f.work, t, 1, &plugins_now);
    EXPECT_EQ_INT(ledger_abandon(f.ledger, t, AVT_TRANSIENT_ERROR, "shutting down"), 0);
    EXPECT_EQ_INT(nsent, 1);
    EXPECT_CONTAINS(sent[0], "\"code\":\"TRANSIENT_ERROR\"");
    EXPECT_EQ_INT(pool_free_slots(f.pool), 1); /* its thread is still busy */
    atomic_store(&release_hold, 1);
    for (int i = 0; i < 5000 && pool_free_slots(f.pool) < 2; i++) {
        struct evq_event *ev = evq_take(f.evq);
        if (ev != NULL)
            work_events(f.work, ev);
        else
            usleep(1000);
    }
    EXPECT_EQ_INT(pool_free_slots(f.pool), 2); /* the late DONE gave the slot back */
    EXPECT_EQ_INT(nsent, 1);                   /* and sent nothing */
    EXPECT_EQ_INT(fixture_close(&f), 0);
}

TEST(hot_cache_changes_are_kept_and_announced)
{
    struct fixture f;
    fixture_open(&f);
    evq_post_hotcache(f.evq, 1, "model-a");
    evq_post_hotcache(f.evq, 1, "model-a");
    evq_post_hotcache(f.evq, 1, "model-b");
    evq_post_hotcache(f.evq, 0, "model-a");
    evq_post_hotcache(f.evq, 0, "never-added");
    changes = 0;
    work_events(f.work, evq_take(f.evq));
    json_t *hot = work_hot_cache(f.work);
    EXPECT_EQ_INT(json_array_size(hot), 1);
    EXPECT_EQ_STR(json_string_value(json_array_get(hot, 0)), "model-b");
    EXPECT_EQ_INT(changes, 3); /* add a, add b, remove a */
    fixture_close(&f);
}

TEST(events_of_a_dialect_without_them_are_dropped)
{
    struct fixture f;
    fixture_open(&f);
    struct task *t = polled(&f, "t1", "echo");
    evq_post_event(f.evq, t, "custom", json_pack("{s:i}", "n", 1));
    evq_post_event(f.evq, t, "custom", json_pack("{s:i}", "n", 2));
    work_events(f.work, evq_take(f.evq)); /* logged once, nothing sent */
    EXPECT_EQ_INT(nsent, 0);
    task_destroy(t);
    fixture_close(&f);
}

__attribute__((constructor)) static void init(void)
{
    log_set_level(LOG_EMERG);
    host_init(&fake_plugin.host, fake_name, NULL);
    fake_plugin.desc = &desc;
    fake_plugin.name = fake_name;
}

TAP_MAIN()
