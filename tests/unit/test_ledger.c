/*
 * test_ledger.c - the task ledger against fakes of its neighbours: the
 * hooks record what would reach the pool (cancels) and the outbox (the
 * failures of abandoned tasks); the orchestrators are two distinct
 * addresses (the ledger never looks inside one). Covers lookup by origin,
 * the three kinds of cancel (task id, 1.0b3's task-is-job id with its
 * parallel-branch exception, 1.0b14's job id), cancels remembered for a
 * task that has not arrived, finishing and abandoning, deadline
 * supervision over a hand-made thread snapshot, the heartbeat references
 * and the plugins in use.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "ledger.h"
#include "log.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "task.h"
#include "util.h"

/* Two orchestrators: the ledger only compares their addresses. */
static char orch_a_mem, orch_b_mem;
#define ORCH_A ((struct orch *)(void *)&orch_a_mem)
#define ORCH_B ((struct orch *)(void *)&orch_b_mem)

struct fake {
    struct task *cancelled[16];
    int reasons[16];
    int ncancel;
    struct task *abandoned[16];
    char codes[16][64];
    int nabandon;
};

static void fake_cancel(void *arg, struct task *t, int reason)
{
    struct fake *f = arg;
    f->reasons[f->ncancel] = reason;
    f->cancelled[f->ncancel++] = t;
    task_cancel(t, (enum task_cancel)reason);
}

static void fake_abandoned(void *arg, struct task *t, const char *code, const char *message)
{
    struct fake *f = arg;
    (void)message;
    snprintf(f->codes[f->nabandon], sizeof(f->codes[0]), "%s", code);
    f->abandoned[f->nabandon++] = t;
}

static const struct ledger_hooks hooks = {fake_cancel, fake_abandoned};

static struct task *task_from(struct orch *origin, const char *id, const char *job,
                              const char *type)
{
    struct task *t = task_create(id, job, type, NULL);
    t->origin = origin;
    return t;
}

TEST(find_is_per_orchestrator)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *a = task_from(ORCH_A, "t1", "j1", "echo");
    struct task *b = task_from(ORCH_B, "t1", "j1", "echo");
    ledger_add(l, a);
    ledger_add(l, b);
    EXPECT(ledger_find(l, ORCH_A, "t1") == a);
    EXPECT(ledger_find(l, ORCH_B, "t1") == b);
    EXPECT(ledger_find(l, ORCH_A, "t2") == NULL);
    struct ledger_stats st;
    ledger_get_stats(l, &st);
    EXPECT_EQ_INT(st.active, 2);
    EXPECT_EQ_INT(ledger_finish(l, a), 1);
    EXPECT(ledger_find(l, ORCH_A, "t1") == NULL);
    EXPECT(ledger_find(l, ORCH_B, "t1") == b);
    ledger_destroy(l);
    task_destroy(a);
    task_destroy(b);
}

TEST(cancel_by_task_id_or_remembered)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *a = task_from(ORCH_A, "task-1", "job-1", "echo");
    ledger_add(l, a);
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_TASK, "task-1", "websocket"), 1);
    EXPECT_EQ_INT(f.ncancel, 1);
    EXPECT(f.cancelled[0] == a);
    EXPECT_EQ_INT(f.reasons[0], TASK_CANCEL_ORCHESTRATOR);
    /* Another orchestrator's id is not ours. */
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_B, RXON_CANCEL_TASK, "task-1", "websocket"), 0);
    EXPECT_EQ_INT(f.ncancel, 1);
    /* A cancel for a task that has not arrived is remembered, once, for its
     * orchestrator only. */
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_TASK, "task-2", "websocket"), 0);
    EXPECT_EQ_INT(ledger_take_precancel(l, ORCH_B, "task-2"), 0);
    EXPECT_EQ_INT(ledger_take_precancel(l, ORCH_A, "task-2"), 1);
    EXPECT_EQ_INT(ledger_take_precancel(l, ORCH_A, "task-2"), 0);
    ledger_destroy(l);
    task_destroy(a);
}

TEST(task_is_job_ids_spare_parallel_branches)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *plain = task_from(ORCH_A, "job-1", "job-1", "echo");
    struct task *branch = task_from(ORCH_A, "job-2", "job-3", "echo"); /* id != job id */
    ledger_add(l, plain);
    ledger_add(l, branch);
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_TASK_IS_JOB, "job-1", "heartbeat"), 1);
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_TASK_IS_JOB, "job-2", "heartbeat"), 0);
    EXPECT_EQ_INT(f.ncancel, 1);
    EXPECT(f.cancelled[0] == plain);
    /* A heartbeat's id is never remembered: it only lists ids it was told. */
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_TASK_IS_JOB, "job-9", "heartbeat"), 0);
    EXPECT_EQ_INT(ledger_take_precancel(l, ORCH_A, "job-9"), 0);
    ledger_destroy(l);
    task_destroy(plain);
    task_destroy(branch);
}

TEST(job_id_cancels_every_task_of_the_job)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *old = task_from(ORCH_A, "task-a", "job-1", "echo");
    struct task *retry = task_from(ORCH_A, "task-b", "job-1", "echo");
    struct task *other = task_from(ORCH_A, "task-c", "job-2", "echo");
    ledger_add(l, old);
    ledger_add(l, retry);
    ledger_add(l, other);
    EXPECT_EQ_INT(ledger_cancel(l, ORCH_A, RXON_CANCEL_JOB, "job-1", "heartbeat"), 2);
    EXPECT_EQ_INT(f.ncancel, 2);
    EXPECT(atomic_load(&other->cancel) == TASK_CANCEL_NONE);
    EXPECT(atomic_load(&old->cancel) == TASK_CANCEL_ORCHESTRATOR);
    EXPECT(atomic_load(&retry->cancel) == TASK_CANCEL_ORCHESTRATOR);
    ledger_destroy(l);
    task_destroy(old);
    task_destroy(retry);
    task_destroy(other);
}

TEST(abandoned_tasks_report_once_and_their_done_is_dropped)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *a = task_from(ORCH_A, "t1", "j1", "echo");
    struct task *b = task_from(ORCH_B, "t2", "j2", "echo");
    ledger_add(l, a);
    ledger_add(l, b);
    EXPECT_EQ_INT(ledger_abandon(l, a, AVT_TIMEOUT_ERROR, "too slow"), 0);
    EXPECT_EQ_INT(ledger_abandon(l, a, AVT_TIMEOUT_ERROR, "again"), -ENOENT);
    EXPECT_EQ_INT(f.nabandon, 1);
    EXPECT_EQ_STR(f.codes[0], AVT_TIMEOUT_ERROR);
    struct ledger_stats st;
    ledger_get_stats(l, &st);
    EXPECT_EQ_INT(st.active, 1);
    EXPECT_EQ_INT(st.stuck, 1);
    EXPECT_EQ_INT(st.tasks_abandoned, 1);
    /* Not active any more: a cancel or a lookup does not find it. */
    EXPECT(ledger_find(l, ORCH_A, "t1") == NULL);
    EXPECT_EQ_INT(ledger_finish(l, a), 0); /* its late DONE: drop the outcome */
    ledger_get_stats(l, &st);
    EXPECT_EQ_INT(st.stuck, 0);
    EXPECT_EQ_INT(ledger_abandon_all(l, AVT_TRANSIENT_ERROR, "shutting down"), 1);
    EXPECT_EQ_INT(f.nabandon, 2);
    EXPECT(f.abandoned[1] == b);
    EXPECT_EQ_INT(ledger_finish(l, b), 0);
    ledger_destroy(l);
    task_destroy(a);
    task_destroy(b);
}

TEST(cancel_all_reaches_every_active_task)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *a = task_from(ORCH_A, "t1", "j1", "echo");
    struct task *b = task_from(ORCH_B, "t2", "j2", "echo");
    ledger_add(l, a);
    ledger_add(l, b);
    ledger_cancel_all(l, TASK_CANCEL_SHUTDOWN);
    EXPECT_EQ_INT(f.ncancel, 2);
    EXPECT_EQ_INT(f.reasons[0], TASK_CANCEL_SHUTDOWN);
    EXPECT_EQ_INT(f.reasons[1], TASK_CANCEL_SHUTDOWN);
    ledger_destroy(l);
    task_destroy(a);
    task_destroy(b);
}

/* A thread of the snapshot running t since `since`. */
static struct pool_thread_info running(struct task *t, double since)
{
    struct pool_thread_info th = {.busy = 1, .since = since, .task = t};
    th.cancel = atomic_load(&t->cancel);
    return th;
}

TEST(deadline_cancels_then_gives_up_after_the_grace)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    char slow_type[] = "slow";
    struct cfg_limit limits[] = {{slow_type, 0, 10.0}};
    struct cfg c = {.limits = limits, .nlimits = 1};
    struct task *slow = task_from(ORCH_A, "t1", "j1", "slow");
    struct task *free_ = task_from(ORCH_A, "t2", "j2", "other"); /* no timeout */
    ledger_add(l, slow);
    ledger_add(l, free_);
    struct pool_thread_info th[2] = {running(slow, 100.0), running(free_, 0.0)};
    ledger_supervise(l, &c, th, 2, 109.9, 5.0); /* before the deadline */
    EXPECT_EQ_INT(f.ncancel, 0);
    ledger_supervise(l, &c, th, 2, 110.0, 5.0); /* at it */
    EXPECT_EQ_INT(f.ncancel, 1);
    EXPECT_EQ_INT(f.reasons[0], TASK_CANCEL_DEADLINE);
    th[0] = running(slow, 100.0);               /* the next snapshot sees the cancel */
    ledger_supervise(l, &c, th, 2, 114.9, 5.0); /* within the grace */
    EXPECT_EQ_INT(f.nabandon, 0);
    EXPECT_EQ_INT(f.ncancel, 1);
    ledger_supervise(l, &c, th, 2, 115.0, 5.0); /* the grace ran out */
    EXPECT_EQ_INT(f.nabandon, 1);
    EXPECT(f.abandoned[0] == slow);
    EXPECT_EQ_STR(f.codes[0], AVT_TIMEOUT_ERROR);
    ledger_supervise(l, &c, th, 2, 200.0, 5.0); /* given up on: left alone */
    EXPECT_EQ_INT(f.nabandon, 1);
    struct ledger_stats st;
    ledger_get_stats(l, &st);
    EXPECT_EQ_INT(st.deadlines, 1);
    EXPECT_EQ_INT(st.stuck_total, 1);
    EXPECT_EQ_INT(st.stuck, 1);
    EXPECT_EQ_INT(ledger_finish(l, slow), 0);
    EXPECT_EQ_INT(ledger_finish(l, free_), 1);
    ledger_destroy(l);
    task_destroy(slow);
    task_destroy(free_);
}

TEST(refs_list_an_orchestrators_tasks)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct task *t[5];
    char id[16];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "t%d", i);
        t[i] = task_from(i % 2 ? ORCH_B : ORCH_A, id, "job", "echo");
        ledger_add(l, t[i]);
    }
    const struct rxon_task_ref *refs;
    size_t n = ledger_refs(l, ORCH_A, &refs);
    EXPECT_EQ_INT(n, 3);
    for (size_t i = 0; i < n; i++)
        EXPECT(strcmp(refs[i].task_id, "t1") != 0 && strcmp(refs[i].task_id, "t3") != 0);
    EXPECT_EQ_INT(ledger_refs(l, ORCH_B, &refs), 2);
    EXPECT_EQ_INT(ledger_refs(l, NULL, &refs), 5);
    EXPECT_EQ_STR(refs[0].job_id, "job");
    ledger_destroy(l);
    for (int i = 0; i < 5; i++)
        task_destroy(t[i]);
}

TEST(plugins_in_use_count_active_and_abandoned_tasks)
{
    struct fake f = {0};
    struct ledger *l = ledger_create(&hooks, &f);
    struct plugin p1 = {0}, p2 = {0};
    struct plugin *list1[] = {&p1}, *list2[] = {&p2};
    struct plugin_set set1 = {.plugins = list1, .nplugins = 1};
    struct plugin_set set2 = {.plugins = list2, .nplugins = 1};
    struct task *a = task_from(ORCH_A, "t1", "j1", "echo");
    struct task *b = task_from(ORCH_A, "t2", "j2", "echo");
    a->plugin = &p1;
    b->plugin = &p1;
    ledger_add(l, a);
    ledger_add(l, b);
    EXPECT_EQ_INT(ledger_uses_plugins(l, &set1), 2);
    EXPECT_EQ_INT(ledger_uses_plugins(l, &set2), 0);
    ledger_abandon(l, a, AVT_TRANSIENT_ERROR, "x");
    EXPECT_EQ_INT(ledger_uses_plugins(l, &set1), 2); /* its handler still runs */
    ledger_finish(l, a);
    ledger_finish(l, b);
    EXPECT_EQ_INT(ledger_uses_plugins(l, &set1), 0);
    ledger_destroy(l);
    task_destroy(a);
    task_destroy(b);
}

TEST(destroy_null_is_a_noop)
{
    ledger_destroy(NULL);
}

/* The ledger logs every cancel and deadline: keep the TAP output readable. */
__attribute__((constructor)) static void quiet(void)
{
    log_set_level(LOG_EMERG);
}

TAP_MAIN()
