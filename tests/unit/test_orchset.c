/*
 * test_orchset.c - the poll scheduler of several orchestrators
 * (orchset_plan, a pure function over the sessions' poll states): FAILOVER
 * polls with the first healthy orchestrator only and lets a lower one's
 * poll in flight finish; ROUND_ROBIN never starts more polls than the room
 * and shares a scarce slot by weight, in nginx's smooth order. Plus the
 * set itself built over sessions that are never started.
 */
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "cfg.h"
#include "http.h"
#include "ledger.h"
#include "orch.h"
#include "orchset.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "util.h"

#define DOWN ORCH_POLL_DOWN
#define READY ORCH_POLL_READY
#define BUSY ORCH_POLL_BUSY

TEST(failover_polls_with_the_first_healthy_one)
{
    size_t out[3];
    int w[3] = {1, 1, 1}, cur[3] = {0};
    enum orch_poll_state st[3] = {READY, READY, READY};
    EXPECT_EQ_INT(orchset_plan(st, w, cur, 3, 5, CFG_MULTI_FAILOVER, out), 1);
    EXPECT_EQ_INT(out[0], 0);

    enum orch_poll_state down_first[3] = {DOWN, READY, READY};
    EXPECT_EQ_INT(orchset_plan(down_first, w, cur, 3, 5, CFG_MULTI_FAILOVER, out), 1);
    EXPECT_EQ_INT(out[0], 1);

    /* The first healthy one is busy: nobody else polls. */
    enum orch_poll_state busy_first[3] = {DOWN, BUSY, READY};
    EXPECT_EQ_INT(orchset_plan(busy_first, w, cur, 3, 5, CFG_MULTI_FAILOVER, out), 0);

    /* No room: no poll. */
    enum orch_poll_state ready[3] = {READY, READY, READY};
    EXPECT_EQ_INT(orchset_plan(ready, w, cur, 3, 0, CFG_MULTI_FAILOVER, out), 0);
    enum orch_poll_state all_down[3] = {DOWN, DOWN, DOWN};
    EXPECT_EQ_INT(orchset_plan(all_down, w, cur, 3, 5, CFG_MULTI_FAILOVER, out), 0);
}

TEST(round_robin_polls_every_ready_one_within_the_room)
{
    size_t out[3];
    int w[3] = {1, 1, 1}, cur[3] = {0};
    enum orch_poll_state st[3] = {READY, BUSY, READY};
    size_t k = orchset_plan(st, w, cur, 3, 5, CFG_MULTI_ROUND_ROBIN, out);
    EXPECT_EQ_INT(k, 2);
    EXPECT(st[0] == BUSY && st[2] == BUSY); /* marked as polling */
    EXPECT((out[0] == 0 && out[1] == 2) || (out[0] == 2 && out[1] == 0));

    enum orch_poll_state st2[3] = {READY, READY, READY};
    EXPECT_EQ_INT(orchset_plan(st2, w, cur, 3, 1, CFG_MULTI_ROUND_ROBIN, out), 1);
    EXPECT_EQ_INT(orchset_plan(st2, w, cur, 3, -1, CFG_MULTI_ROUND_ROBIN, out), 0);
}

TEST(round_robin_shares_a_scarce_slot_by_weight)
{
    size_t out[2], count[2] = {0};
    int w[2] = {3, 1}, cur[2] = {0};
    for (int i = 0; i < 400; i++) {
        enum orch_poll_state st[2] = {READY, READY};
        ASSERT(orchset_plan(st, w, cur, 2, 1, CFG_MULTI_ROUND_ROBIN, out) == 1);
        count[out[0]]++;
    }
    EXPECT_EQ_INT(count[0], 300);
    EXPECT_EQ_INT(count[1], 100);
    /* Smooth: the light one is not starved for long stretches. */
    int gap = 0, worst = 0;
    for (int i = 0; i < 40; i++) {
        enum orch_poll_state st[2] = {READY, READY};
        orchset_plan(st, w, cur, 2, 1, CFG_MULTI_ROUND_ROBIN, out);
        gap = out[0] == 1 ? 0 : gap + 1;
        worst = gap > worst ? gap : worst;
    }
    EXPECT(worst <= 3);
}

static void no_task(void *arg, struct task *t, int valid, const struct plugin_set *under)
{
    (void)arg, (void)t, (void)valid, (void)under;
}

static void no_registered(void *arg, struct orch *o)
{
    (void)arg, (void)o;
}

static void no_cancel(void *arg, struct task *t, int reason)
{
    (void)arg, (void)t, (void)reason;
}

static void no_abandon(void *arg, struct task *t, const char *code, const char *msg)
{
    (void)arg, (void)t, (void)code, (void)msg;
}

TEST(a_set_over_unstarted_sessions)
{
    char err[AVT_ERRLEN];
    struct cfg *c = NULL;
    setenv("ORCHESTRATORS_CONFIG",
           "[{\"url\":\"http://127.0.0.1:1\",\"priority\":2,\"name\":\"b\"},"
           "{\"url\":\"http://127.0.0.1:2\",\"priority\":1,\"name\":\"a\"}]",
           1);
    setenv("WORKER_ID", "w-1", 1);
    ASSERT(cfg_load(NULL, &c, err, sizeof(err)) == 0);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct http *http = http_create(loop, NULL);
    struct pool *pool = pool_create(c, NULL);
    static const struct ledger_hooks lh = {no_cancel, no_abandon};
    struct ledger *l = ledger_create(&lh, NULL);
    static const struct orch_hooks oh = {no_task, no_registered, NULL};
    struct plugin_set plugins = {0};
    json_t *hot = json_array();
    struct orch_env env = {pool, l, hot, &oh, NULL};
    struct orchset *s = orchset_create(loop, http, c, &env, &plugins);
    EXPECT_EQ_INT(orchset_count(s), 2);
    EXPECT_EQ_STR(orch_url(orchset_get(s, 0)), "http://127.0.0.1:2"); /* priority order */
    EXPECT_EQ_STR(orch_name(orchset_get(s, 1)), "b");
    EXPECT(orchset_get(s, 2) == NULL);
    EXPECT_EQ_INT(orchset_registered(s), 0);
    EXPECT_EQ_INT(orchset_polls_in_flight(s), 0);
    orchset_changed(s); /* nobody registered: nothing to send, nothing polls */
    EXPECT_EQ_INT(orchset_polls_in_flight(s), 0);
    EXPECT_EQ_INT(http_pending(http), 0);
    orchset_destroy(s);
    json_decref(hot);
    ledger_destroy(l);
    pool_destroy(pool);
    http_destroy(http);
    ev_loop_destroy(loop);
    cfg_destroy(c);
    unsetenv("ORCHESTRATORS_CONFIG");
}

TAP_MAIN()
