/*
 * test_orch.c - the protocol session (orch.c) against the test
 * orchestrator (tests/orchestrator/fakeorch.py) on loopback, with fakes of
 * its own neighbours: the daemon's hooks record what the session hands
 * over, the ledger's hooks record cancels, and a plugin set of two types
 * has no plugin behind it. Covers registration (the 1.0b3 body and
 * header), heartbeats and the empty-body probe, polling and handing over
 * tasks (valid or not), a WebSocket cancel reaching the ledger,
 * re-registration after the orchestrator forgot the worker, posting a
 * result for the outbox, a poll failure's backoff, and the drain's offline
 * heartbeat.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "cfg.h"
#include "fakeorch.h"
#include "http.h"
#include "ledger.h"
#include "log.h"
#include "orch.h"
#include "plugin.h"
#include "pool.h"
#include "tap.h"
#include "task.h"
#include "util.h"

#define WORKER "w-orch"

static struct fo fo;
static struct ev_loop *loop;
static struct http *http;
static struct cfg *cfg;
static struct pool *pool;
static struct ledger *ledger;
static json_t *hot;
static struct plugin_type types[] = {{"echo", NULL, NULL}, {"slow", NULL, NULL}};
static struct plugin_set plugins = {.types = types, .ntypes = 2};

/* What the fakes saw. */
static struct task *arrived[16];
static int valid_flags[16], narrived, registrations_seen, cancels;
static const struct plugin_set *under[16];
static int add_to_ledger;

static void on_task(void *arg, struct task *t, int valid, const struct plugin_set *polled_under)
{
    (void)arg;
    under[narrived] = polled_under;
    valid_flags[narrived] = valid;
    arrived[narrived++] = t;
    if (add_to_ledger && valid)
        ledger_add(ledger, t);
}

static void on_registered(void *arg, struct orch *o)
{
    (void)arg, (void)o;
    registrations_seen++;
}

static void on_cancel(void *arg, struct task *t, int reason)
{
    (void)arg;
    task_cancel(t, (enum task_cancel)reason);
    cancels++;
}

static void on_abandon(void *arg, struct task *t, const char *code, const char *msg)
{
    (void)arg, (void)t, (void)code, (void)msg;
}

static const struct orch_hooks hooks = {on_task, on_registered, NULL};
static const struct ledger_hooks lhooks = {on_cancel, on_abandon};

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    return s * (m != NULL && atof(m) > 0 ? atof(m) : 1);
}

static void on_deadline(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l, (void)revents;
    *(int *)w->data = 1;
}

/* Run the loop until cond(arg) holds or `secs` (scaled) passed. */
static int run_until(int (*cond)(void *), void *arg, double secs)
{
    int late = 0;
    ev_timer t;
    ev_timer_init(&t, on_deadline, tmo(secs), 0.);
    t.data = &late;
    ev_timer_start(loop, &t);
    while (!cond(arg) && !late)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &t);
    return cond(arg);
}

static int is_registered(void *arg)
{
    struct orch_stats st;
    orch_get_stats(arg, &st);
    return st.registered;
}

static int tasks_arrived(void *arg)
{
    return narrived >= *(int *)arg;
}

static struct orch *start_session(void)
{
    struct orch_env env = {pool, ledger, hot, &hooks, NULL};
    struct orch *o = orch_create(loop, http, cfg, 0, &env, &plugins);
    orch_start(o);
    return o;
}

static void reset_fake(void)
{
    json_decref(fo_call(&fo, "POST", "/_test/reset", "{}", NULL));
    for (int i = 0; i < narrived; i++)
        task_destroy(arrived[i]);
    narrived = registrations_seen = cancels = add_to_ledger = 0;
}

/* The bodies of the worker's requests to path (decref). */
static json_t *requests(const char *path)
{
    return fo_log(&fo, path);
}

TEST(registers_with_the_1_0b3_body_then_heartbeats_and_probes)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    EXPECT_EQ_INT(registrations_seen, 1);
    json_t *reg = requests("/register");
    json_t *row = json_array_get(reg, 0);
    json_t *body = json_object_get(row, "body");
    json_t *skills = json_object_get(body, "supported_skills");
    EXPECT_EQ_INT(json_array_size(skills), 2);
    EXPECT_EQ_STR(json_string_value(json_array_get(skills, 0)), "echo");
    EXPECT_EQ_STR(
        json_string_value(json_object_get(json_object_get(row, "headers"), "X-RXON-Version")),
        "1.0b3");
    json_decref(reg);
    /* Heartbeats with a body, and (every probe_every-th) the empty probe. */
    int full = 0, probes = 0;
    for (int round = 0; round < 100 && (full == 0 || probes == 0); round++) {
        ev_run(loop, EVRUN_NOWAIT);
        usleep(20000);
        json_t *hbs = requests("/_worker/workers/" WORKER);
        size_t i;
        json_t *r;
        full = probes = 0;
        json_array_foreach(hbs, i, r)
        {
            if (strcmp(json_string_value(json_object_get(r, "method")), "PATCH") != 0)
                continue;
            json_t *b = json_object_get(r, "body");
            probes += json_is_null(b);
            full += json_is_object(b);
        }
        json_decref(hbs);
    }
    EXPECT(full > 0);
    EXPECT(probes > 0);
    orch_destroy(o);
}

TEST(polls_and_hands_tasks_over)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    json_decref(fo_call(&fo, "POST", "/_test/prequeue",
                        "{\"worker_id\":\"" WORKER "\",\"type\":\"echo\",\"count\":2}", NULL));
    int want = 2;
    ASSERT(run_until(tasks_arrived, &want, 10));
    EXPECT(arrived[0]->origin == o);
    EXPECT(valid_flags[0] && valid_flags[1]);
    EXPECT(under[0] == &plugins);
    EXPECT_EQ_STR(arrived[0]->type, "echo");
    struct orch_stats st;
    orch_get_stats(o, &st);
    EXPECT_EQ_INT(st.tasks_received, 2);
    EXPECT(st.polls >= 2);
    orch_destroy(o);
}

TEST(an_invalid_payload_is_handed_over_as_invalid)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    json_decref(fo_call(&fo, "POST", "/_test/fault",
                        "{\"kind\":\"poll\",\"status\":200,\"body\":"
                        "{\"job_id\":\"j-1\",\"task_id\":\"j-1\",\"type\":5}}",
                        NULL));
    int want = 1;
    ASSERT(run_until(tasks_arrived, &want, 10));
    EXPECT_EQ_INT(valid_flags[0], 0);
    EXPECT_EQ_STR(arrived[0]->err_code, "INVALID_INPUT_ERROR");
    struct orch_stats st;
    orch_get_stats(o, &st);
    EXPECT_EQ_INT(st.tasks_invalid, 1);
    orch_destroy(o);
}

static int cancelled(void *arg)
{
    (void)arg;
    return cancels > 0;
}

TEST(a_websocket_cancel_reaches_the_ledger)
{
    reset_fake();
    add_to_ledger = 1;
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    json_t *job = fo_call(&fo, "POST", "/api/v1/jobs",
                          "{\"type\":\"slow\",\"params\":{},\"worker_id\":\"" WORKER "\"}", NULL);
    const char *job_id = json_string_value(json_object_get(job, "job_id"));
    ASSERT(job_id != NULL);
    int want = 1;
    ASSERT(run_until(tasks_arrived, &want, 10));
    /* The socket may still be connecting: cancel once it is up. */
    struct orch_stats st;
    for (int i = 0; i < 500; i++) {
        orch_get_stats(o, &st);
        if (st.ws_connects > 0)
            break;
        ev_run(loop, EVRUN_NOWAIT);
        usleep(10000);
    }
    char path[128];
    snprintf(path, sizeof(path), "/api/v1/jobs/%s/cancel", job_id);
    json_decref(fo_call(&fo, "POST", path, "{}", NULL));
    json_decref(job);
    ASSERT(run_until(cancelled, NULL, 10));
    EXPECT(atomic_load(&arrived[0]->cancel) == TASK_CANCEL_ORCHESTRATOR);
    ledger_finish(ledger, arrived[0]);
    orch_destroy(o);
}

static int registered_twice(void *arg)
{
    (void)arg;
    return registrations_seen >= 2;
}

TEST(registers_again_when_the_orchestrator_forgot_the_worker)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    json_decref(fo_call(&fo, "POST", "/_test/expire", "{\"worker_id\":\"" WORKER "\"}", NULL));
    ASSERT(run_until(registered_twice, NULL, 20));
    struct orch_stats st;
    orch_get_stats(o, &st);
    EXPECT_EQ_INT(st.registrations, 2);
    orch_destroy(o);
}

struct post_result {
    int done;
    long status;
    int ignored;
    char text[128];
};

static void on_posted(void *arg, const struct outbox_answer *a)
{
    struct post_result *p = arg;
    p->done = 1;
    p->status = a->r->status;
    p->ignored = a->ignored;
    snprintf(p->text, sizeof(p->text), "%s", a->text);
}

static int posted(void *arg)
{
    return ((struct post_result *)arg)->done;
}

TEST(posts_a_result_record_and_reads_the_answer)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    const char *rec = "{\"job_id\":\"nope\",\"task_id\":\"nope\",\"worker_id\":\"" WORKER
                      "\",\"status\":\"success\",\"data\":null,\"error\":null}";
    struct post_result p = {0};
    ASSERT(orch_post_result(o, rec, strlen(rec), on_posted, &p) != NULL);
    ASSERT(run_until(posted, &p, 10));
    EXPECT_EQ_INT(p.status, 200);
    EXPECT_EQ_INT(p.ignored, 1); /* an unknown job: ignored, i.e. delivered */
    EXPECT_CONTAINS(p.text, "job_not_found");
    orch_destroy(o);
}

static int polls_failed(void *arg)
{
    struct orch_stats st;
    orch_get_stats(arg, &st);
    return st.polls_failed > 0 && orch_poll_state(arg) != ORCH_POLL_DOWN;
}

TEST(a_failed_poll_backs_off_then_polls_again)
{
    reset_fake();
    json_decref(fo_call(&fo, "POST", "/_test/fault",
                        "{\"kind\":\"poll\",\"status\":503,\"body\":{}}", NULL));
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    ASSERT(run_until(polls_failed, o, 20));
    struct orch_stats st;
    orch_get_stats(o, &st);
    EXPECT_EQ_INT(st.errors[ORCH_EP_POLL][ORCH_ERR_5XX], 1);
    orch_destroy(o);
}

static int offline_seen(void *arg)
{
    (void)arg;
    json_t *hbs = requests("/_worker/workers/" WORKER);
    size_t i;
    json_t *r;
    int seen = 0;
    json_array_foreach(hbs, i, r)
    {
        json_t *b = json_object_get(r, "body");
        const char *status = json_string_value(json_object_get(b, "status"));
        if (status != NULL && strcmp(status, "offline") == 0 &&
            json_array_size(json_object_get(b, "supported_skills")) == 0)
            seen = 1;
    }
    json_decref(hbs);
    return seen;
}

TEST(the_drain_says_offline_and_stops_polling)
{
    reset_fake();
    struct orch *o = start_session();
    ASSERT(run_until(is_registered, o, 10));
    orch_drain(o);
    EXPECT(orch_poll_state(o) != ORCH_POLL_READY);
    ASSERT(run_until(offline_seen, NULL, 10));
    struct orch_stats st;
    orch_get_stats(o, &st);
    EXPECT_EQ_INT(st.draining, 1);
    orch_destroy(o);
}

static void write_ini(const char *path)
{
    FILE *fp = fopen(path, "w");
    if (fp == NULL)
        abort();
    fprintf(fp,
            "[worker]\nid = " WORKER "\nmax_concurrent_tasks = 2\n"
            "[orchestrator]\nurl = %s\ntoken = worker-token\npoll_timeout = 1\n"
            "heartbeat_interval = 0.2\nheartbeat_debounce = 0.05\nprobe_every = 2\n"
            "websockets = true\nretry_max_delay = 1\n",
            fo.base);
    fclose(fp);
}

static void teardown(void)
{
    for (int i = 0; i < narrived; i++)
        task_destroy(arrived[i]);
    ledger_destroy(ledger);
    pool_destroy(pool);
    json_decref(hot);
    http_destroy(http);
    cfg_destroy(cfg);
    if (loop != NULL)
        ev_loop_destroy(loop);
    fo_stop(&fo);
}

__attribute__((constructor)) static void setup(void)
{
    char err[AVT_ERRLEN], ini[64];
    log_set_level(getenv("AVT_TEST_LOG") ? LOG_DEBUG : LOG_EMERG);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (fo_start(&fo, (const char *const[]){"--poll-timeout", "1", NULL}) < 0) {
        printf("Bail out! cannot start tests/orchestrator/fakeorch.py\n");
        exit(1);
    }
    snprintf(ini, sizeof(ini), "/tmp/avt-test-orch.%ld.ini", (long)getpid());
    write_ini(ini);
    unsetenv("ORCHESTRATOR_URL");
    unsetenv("WORKER_ID");
    if (cfg_load(ini, &cfg, err, sizeof(err)) < 0) {
        printf("Bail out! %s\n", err);
        fo_stop(&fo);
        exit(1);
    }
    unlink(ini);
    loop = ev_loop_new(EVFLAG_AUTO);
    http = http_create(loop, NULL);
    pool = pool_create(cfg, NULL);
    ledger = ledger_create(&lhooks, NULL);
    hot = json_array();
    atexit(teardown);
}

TAP_MAIN()
