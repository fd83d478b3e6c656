/*
 * test_http.c - the HTTP module against a real local server
 * (tests/unit/http_test_server.py, started as a child process on an
 * ephemeral port): responses, bodies, methods, gzip, Retry-After, limits,
 * transport errors, cancellation, destruction with requests in flight,
 * concurrency, keep-alive reuse, a long-poll beside short requests, and
 * connect-only connections used with curl_easy_send/recv.
 */
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>

#include "tap.h"
#include "util.h"

extern char **environ;

static struct ev_loop *loop;
static struct http *H; /* the shared client, default options */
static pid_t server_pid;
static int server_in = -1; /* the server exits when this closes */
static char base[64];      /* "http://127.0.0.1:PORT" */
static int in_request;     /* set around http_request() calls */
static int seq;            /* completion order */

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    double f = m ? strtod(m, NULL) : 1.0;
    return s * (f > 0 ? f : 1.0);
}

/* ---- the server child ---- */

static void teardown(void)
{
    http_destroy(H);
    H = NULL;
    if (server_in >= 0) {
        close(server_in);
        waitpid(server_pid, NULL, 0);
    }
    if (loop) {
        ev_loop_destroy(loop);
    }
}

static int read_port(int fd)
{
    char line[32];
    size_t n = 0;

    while (n < sizeof(line) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(tmo(10) * 1000)) <= 0) {
            return -1;
        }
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0) {
            return -1;
        }
        if (line[n] == '\n') {
            break;
        }
        n++;
    }
    line[n] = '\0';
    return (int)strtol(line, NULL, 10);
}

static int server_start(void)
{
    char py[256], script[] = "tests/unit/http_test_server.py";
    snprintf(py, sizeof(py), "%s", getenv("PYTHON") ? getenv("PYTHON") : "/usr/bin/python3");
    char *argv[] = {py, script, NULL};
    int out[2], in[2];
    posix_spawn_file_actions_t fa;

    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0) {
        return -1;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    int rc = posix_spawn(&server_pid, py, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    server_in = in[1];
    int port = rc == 0 ? read_port(out[0]) : -1;
    close(out[0]);
    if (port <= 0) {
        return -1;
    }
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
    return 0;
}

static int setup(void)
{
    if (loop) {
        return H ? 0 : -1;
    }
    signal(SIGPIPE, SIG_IGN);
    loop = ev_loop_new(EVFLAG_AUTO);
    atexit(teardown);
    if (server_start() < 0) {
        printf("# cannot start tests/unit/http_test_server.py\n");
        return -1;
    }
    H = http_create(loop, NULL);
    return 0;
}

/* ---- running the loop ---- */

static int deadline_hit;

static void deadline_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    deadline_hit = 1;
}

/* Run the loop until *count reaches target or `seconds` pass; returns 1
 * when the count was reached. */
static int run_until(const int *count, int target, double seconds)
{
    ev_timer t;

    deadline_hit = 0;
    ev_timer_init(&t, deadline_cb, tmo(seconds), 0.);
    ev_timer_start(loop, &t);
    while (*count < target && !deadline_hit) {
        ev_run(loop, EVRUN_ONCE);
    }
    ev_timer_stop(loop, &t);
    return *count >= target;
}

/* Run the loop for `seconds` (no scaling). */
static void run_for(double seconds)
{
    ev_timer t;

    deadline_hit = 0;
    ev_timer_init(&t, deadline_cb, seconds, 0.);
    ev_timer_start(loop, &t);
    while (!deadline_hit) {
        ev_run(loop, EVRUN_ONCE);
    }
    ev_timer_stop(loop, &t);
}

/* ---- recording responses ---- */

struct result {
    int calls;
    int reentrant;
    int order;
    long status;
    char body[65536];
    size_t len;
    double retry_after;
    CURLcode code;
    char error[CURL_ERROR_SIZE];
    int cancelled;
    int too_large;
    size_t body_seen, max_body;
    double elapsed;
    double date;
    char rxon_version[64];
    int *counter; /* incremented on completion, may be NULL */
};

static void on_done(void *arg, const struct http_response *r)
{
    struct result *res = arg;

    res->calls++;
    res->reentrant |= in_request;
    res->order = ++seq;
    res->status = r->status;
    res->len = r->len;
    if (r->len < sizeof(res->body)) {
        memcpy(res->body, r->body, r->len + 1);
    }
    res->retry_after = r->retry_after;
    res->code = r->curl_code;
    snprintf(res->error, sizeof(res->error), "%s", r->error ? r->error : "");
    res->cancelled = r->cancelled;
    res->too_large = r->too_large;
    res->body_seen = r->body_seen;
    res->max_body = r->max_body;
    res->elapsed = r->elapsed;
    res->date = r->date;
    snprintf(res->rxon_version, sizeof(res->rxon_version), "%s", r->rxon_version);
    if (res->counter) {
        (*res->counter)++;
    }
}

static struct http_req *start(struct http *h, struct result *res, const char *method,
                              const char *path, const char *const *headers, const char *body,
                              size_t len, double timeout)
{
    char url[256];

    snprintf(url, sizeof(url), "%s%s", base, path);
    in_request = 1;
    struct http_req *req = http_request(h, method, url, headers, body, len, timeout, on_done, res);
    in_request = 0;
    return req;
}

/* One request, run to completion. */
static void fetch(struct http *h, struct result *res, const char *method, const char *path,
                  const char *const *headers, const char *body, size_t len)
{
    memset(res, 0, sizeof(*res));
    start(h, res, method, path, headers, body, len, tmo(10));
    run_until(&res->calls, 1, 15);
}

/* ---- tests ---- */

TEST(get_200_with_body)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/hello", NULL, NULL, 0);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.reentrant, 0);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_INT(r.code, CURLE_OK);
    EXPECT_EQ_STR(r.error, "");
    EXPECT_EQ_STR(r.body, "hello world");
    EXPECT_EQ_INT(r.len, 11);
    EXPECT(r.retry_after == -1);
    EXPECT(r.elapsed > 0 && r.elapsed < tmo(5));
    EXPECT_EQ_INT(http_pending(H), 0);
}

TEST(post_body_echoed)
{
    static struct result r;
    const char *hdrs[] = {"Content-Type: application/json", "X-Test: 1", NULL};
    const char bin[] = {'a', '\0', 'b'};

    ASSERT(setup() == 0);
    fetch(H, &r, "POST", "/info", hdrs, "{\"a\":1}", 7);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_STR(r.body, "POST cl=7 ct=application/json\n{\"a\":1}");
    fetch(H, &r, "PUT", "/info", NULL, bin, sizeof(bin));
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_INT(r.len, strlen("PUT cl=3 ct=-\n") + 3);
    EXPECT(memcmp(r.body + r.len - 3, bin, 3) == 0);
}

TEST(large_post_without_expect_100_continue)
{
    static struct result r;
    size_t len = 1536 * 1024;
    char *body = xmalloc(len);

    ASSERT(setup() == 0);
    memset(body, 'b', len);
    fetch(H, &r, "POST", "/expect", NULL, body, len);
    free(body);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_STR(r.body, "expect=- len=1572864");
    /* libcurl would otherwise wait up to 1 s for a "100 Continue". */
    EXPECT(r.elapsed < tmo(0.8));
}

TEST(patch_empty_body_sends_content_length_0)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "PATCH", "/info", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_STR(r.body, "PATCH cl=0 ct=-\n");
    fetch(H, &r, "POST", "/info", NULL, NULL, 0);
    EXPECT_EQ_STR(r.body, "POST cl=0 ct=-\n");
    fetch(H, &r, "DELETE", "/info", NULL, NULL, 0);
    EXPECT_EQ_STR(r.body, "DELETE cl=- ct=-\n");
    fetch(H, &r, "GET", "/info", NULL, NULL, 0);
    EXPECT_EQ_STR(r.body, "GET cl=- ct=-\n");
}

TEST(status_204_and_500)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/status/204", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 204);
    EXPECT_EQ_INT(r.code, CURLE_OK);
    EXPECT_EQ_STR(r.body, "");
    EXPECT_EQ_INT(r.len, 0);
    fetch(H, &r, "GET", "/status/500", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 500);
    EXPECT_EQ_INT(r.code, CURLE_OK);
    EXPECT_EQ_STR(r.body, "status 500");
}

TEST(gzip_offered_only_when_asked_and_decoded)
{
    static struct result r;
    size_t want = 0;
    char line[32];

    ASSERT(setup() == 0);
    for (int i = 0; i < 5000; i++) {
        want += (size_t)snprintf(line, sizeof(line), "line %d\n", i);
    }
    /* By default no Accept-Encoding: the server answers 406. */
    fetch(H, &r, "GET", "/gzip", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 406);
    http_set_compressed(H, 1);
    fetch(H, &r, "GET", "/gzip", NULL, NULL, 0);
    http_set_compressed(H, 0);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_INT(r.len, want);
    EXPECT(strncmp(r.body, "line 0\nline 1\n", 14) == 0);
    EXPECT_CONTAINS(r.body, "line 4999\n");
}

TEST(retry_after_parsed)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/retry?after=7", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 429);
    EXPECT(r.retry_after == 7);
    fetch(H, &r, "GET", "/retry?after=soon", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 429);
    EXPECT(r.retry_after == -1);
    fetch(H, &r, "GET", "/retry-date", NULL, NULL, 0);
    EXPECT_EQ_INT(r.status, 429);
    EXPECT(r.retry_after >= 25 && r.retry_after <= 31);
    fetch(H, &r, "GET", "/hello", NULL, NULL, 0);
    EXPECT(r.retry_after == -1);
}

/* The orchestrator's clock (Date, for the signature's timestamp advice) and
 * its dialect (X-RXON-Version, for detection) come with every answer. */
TEST(date_and_rxon_version_kept)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/rxon?date=Sun,%2006%20Nov%201994%2008:49:37%20GMT&v=1.0b14", NULL, NULL,
          0);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT(r.date == 784111777.0);
    EXPECT_EQ_STR(r.rxon_version, "1.0b14");
    /* The last Date read is remembered: the same text again, another one,
     * then the first again. */
    fetch(H, &r, "GET", "/rxon?date=Sun,%2006%20Nov%201994%2008:49:37%20GMT", NULL, NULL, 0);
    EXPECT(r.date == 784111777.0);
    fetch(H, &r, "GET", "/rxon?date=Sun,%2006%20Nov%201994%2008:49:38%20GMT", NULL, NULL, 0);
    EXPECT(r.date == 784111778.0);
    fetch(H, &r, "GET", "/rxon?date=Sun,%2006%20Nov%201994%2008:49:37%20GMT", NULL, NULL, 0);
    EXPECT(r.date == 784111777.0);
    fetch(H, &r, "GET", "/rxon?date=yesterday", NULL, NULL, 0);
    EXPECT(r.date == 0);
    EXPECT_EQ_STR(r.rxon_version, "");
    fetch(H, &r, "GET", "/hello", NULL, NULL, 0);
    EXPECT(r.date == 0);
    EXPECT_EQ_STR(r.rxon_version, "");
}

TEST(body_over_max_body_is_too_large)
{
    static struct result r;
    struct http_opts o = {.max_body = 1000};
    struct http *h = NULL;

    ASSERT(setup() == 0);
    h = http_create(loop, &o);
    fetch(h, &r, "GET", "/big?n=5000", NULL, NULL, 0);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.too_large, 1);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_INT(r.len, 0);
    EXPECT(r.code != CURLE_OK);
    fetch(h, &r, "GET", "/big?n=1000", NULL, NULL, 0);
    EXPECT_EQ_INT(r.too_large, 0);
    EXPECT_EQ_INT(r.code, CURLE_OK);
    EXPECT_EQ_INT(r.len, 1000);
    http_destroy(h);
    /* Larger than the kept buffers, with the default limit. */
    fetch(H, &r, "GET", "/big?n=300000", NULL, NULL, 0);
    EXPECT_EQ_INT(r.len, 300000);
    fetch(H, &r, "GET", "/big?n=10", NULL, NULL, 0);
    EXPECT_EQ_STR(r.body, "xxxxxxxxxx");
}

/* One request held to `limit` bytes (http_set_max_body), run to completion. */
static void fetch_limited(struct result *res, const char *path, size_t limit)
{
    memset(res, 0, sizeof(*res));
    struct http_req *req = start(H, res, "GET", path, NULL, NULL, 0, tmo(10));
    http_set_max_body(req, limit);
    run_until(&res->calls, 1, 15);
}

TEST(a_request_limit_overrides_the_clients)
{
    static struct result r;

    ASSERT(setup() == 0);
    /* Refused by its Content-Length, which names the size. */
    fetch_limited(&r, "/big?n=5000", 1000);
    EXPECT_EQ_INT(r.too_large, 1);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT_EQ_INT(r.len, 0);
    EXPECT_EQ_INT(r.body_seen, 5000);
    EXPECT_EQ_INT(r.max_body, 1000);
    /* Exactly the limit is fine. */
    fetch_limited(&r, "/big?n=1000", 1000);
    EXPECT_EQ_INT(r.too_large, 0);
    EXPECT_EQ_INT(r.len, 1000);
    EXPECT_EQ_INT(r.max_body, 1000);
    /* Without a Content-Length: stopped once past the limit; the size
     * known then is a lower bound. */
    fetch_limited(&r, "/chunked?n=50000", 2500);
    EXPECT_EQ_INT(r.too_large, 1);
    EXPECT_EQ_INT(r.len, 0);
    EXPECT(r.body_seen > 2500 && r.body_seen <= 50000);
    EXPECT_EQ_INT(r.max_body, 2500);
    fetch_limited(&r, "/chunked?n=2500", 2500);
    EXPECT_EQ_INT(r.too_large, 0);
    EXPECT_EQ_INT(r.len, 2500);
    /* 0: the client's limit again (16 MiB by default). */
    fetch_limited(&r, "/big?n=5000", 0);
    EXPECT_EQ_INT(r.too_large, 0);
    EXPECT_EQ_INT(r.len, 5000);
    EXPECT_EQ_INT(r.max_body, 16 * 1024 * 1024);
    /* The next request on the same (reused) handle has the client's limit. */
    fetch(H, &r, "GET", "/big?n=300000", NULL, NULL, 0);
    EXPECT_EQ_INT(r.too_large, 0);
    EXPECT_EQ_INT(r.len, 300000);
}

static int closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

TEST(connection_refused)
{
    static struct result r;
    char url[64];
    int port = closed_port();

    ASSERT(setup() == 0 && port > 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
    in_request = 1;
    http_request(H, "GET", url, NULL, NULL, 0, tmo(5), on_done, &r);
    in_request = 0;
    run_until(&r.calls, 1, 10);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.reentrant, 0);
    EXPECT_EQ_INT(r.status, 0);
    EXPECT_EQ_INT(r.code, CURLE_COULDNT_CONNECT);
    EXPECT(r.error[0] != '\0');
}

TEST(bad_url_fails_from_the_loop)
{
    static struct result r;

    ASSERT(setup() == 0);
    in_request = 1;
    http_request(H, "GET", "gopher://127.0.0.1/", NULL, NULL, 0, 0, on_done, &r);
    in_request = 0;
    EXPECT_EQ_INT(r.calls, 0);
    run_until(&r.calls, 1, 5);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.reentrant, 0);
    EXPECT_EQ_INT(r.code, CURLE_UNSUPPORTED_PROTOCOL);
}

TEST(transfer_timeout)
{
    static struct result r;

    ASSERT(setup() == 0);
    memset(&r, 0, sizeof(r));
    start(H, &r, "GET", "/sleep?ms=5000", NULL, NULL, 0, 0.3);
    run_until(&r.calls, 1, 10);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.code, CURLE_OPERATION_TIMEDOUT);
    EXPECT_EQ_INT(r.status, 0);
    EXPECT(r.elapsed >= 0.25 && r.elapsed < tmo(3));
}

TEST(server_closes_without_answer)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/close", NULL, NULL, 0);
    EXPECT_EQ_INT(r.calls, 1);
    EXPECT_EQ_INT(r.status, 0);
    EXPECT_EQ_INT(r.code, CURLE_GOT_NOTHING);
    EXPECT(r.error[0] != '\0');
}

struct cancel_other {
    struct result r;
    struct http_req *victim;
    const struct result *victim_result;
};

static void on_done_cancel_other(void *arg, const struct http_response *resp)
{
    struct cancel_other *c = arg;
    on_done(&c->r, resp);
    if (c->victim_result->calls == 0) {
        http_cancel(c->victim);
    }
}

TEST(cancel_runs_callback_once)
{
    static struct result a, b, v;
    static struct cancel_other c;

    ASSERT(setup() == 0);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    /* In flight on the wire. */
    struct http_req *req = start(H, &a, "GET", "/sleep?ms=2000", NULL, NULL, 0, 0);
    run_for(0.2);
    EXPECT_EQ_INT(a.calls, 0);
    http_cancel(req);
    EXPECT_EQ_INT(a.calls, 1);
    EXPECT_EQ_INT(a.cancelled, 1);
    /* Cancelled before the loop ever ran. */
    http_cancel(start(H, &b, "GET", "/hello", NULL, NULL, 0, 0));
    EXPECT_EQ_INT(b.calls, 1);
    EXPECT_EQ_INT(b.cancelled, 1);
    EXPECT_EQ_INT(http_pending(H), 0);
    /* Cancelled from another request's callback. */
    memset(&v, 0, sizeof(v));
    memset(&c, 0, sizeof(c));
    c.victim = start(H, &v, "GET", "/sleep?ms=2000", NULL, NULL, 0, 0);
    c.victim_result = &v;
    char url[128];
    snprintf(url, sizeof(url), "%s/hello", base);
    http_request(H, "GET", url, NULL, NULL, 0, 0, on_done_cancel_other, &c);
    run_until(&v.calls, 1, 5);
    EXPECT_EQ_INT(v.cancelled, 1);
    run_for(0.3);
    EXPECT_EQ_INT(a.calls, 1);
    EXPECT_EQ_INT(b.calls, 1);
    EXPECT_EQ_INT(v.calls, 1);
    EXPECT_EQ_INT(c.r.calls, 1);
    EXPECT_EQ_INT(http_pending(H), 0);
}

static int conn_calls;
static CURL *conn_easy;
static char conn_error[CURL_ERROR_SIZE];

static void on_connect(void *arg, CURL *easy, const char *error)
{
    (void)arg;
    conn_calls++;
    conn_easy = easy;
    snprintf(conn_error, sizeof(conn_error), "%s", error ? error : "");
}

TEST(destroy_with_pending_requests)
{
    static struct result r[5];

    ASSERT(setup() == 0);
    struct http *h = http_create(loop, NULL);
    memset(r, 0, sizeof(r));
    conn_calls = 0;
    for (int i = 0; i < 5; i++) {
        start(h, &r[i], "GET", "/sleep?ms=3000", NULL, NULL, 0, 0);
    }
    http_connect_only(h, base, tmo(5), on_connect, NULL);
    run_for(0.1);
    EXPECT_EQ_INT(http_pending(h), 6 - conn_calls);
    http_destroy(h);
    for (int i = 0; i < 5; i++) {
        EXPECT_EQ_INT(r[i].calls, 1);
        EXPECT_EQ_INT(r[i].cancelled, 1);
    }
    EXPECT_EQ_INT(conn_calls, 1);
    if (conn_easy) {
        curl_easy_cleanup(conn_easy); /* it connected before the destroy */
    }
    conn_easy = NULL;
    run_for(0.2);
    for (int i = 0; i < 5; i++) {
        EXPECT_EQ_INT(r[i].calls, 1);
    }
}

static struct http *self_destruct;

static void on_done_destroy(void *arg, const struct http_response *resp)
{
    on_done(arg, resp);
    http_destroy(self_destruct);
    /* Requests made while destroying are refused. */
    if (http_request(self_destruct, "GET", base, NULL, NULL, 0, 0, on_done, arg) != NULL) {
        ((struct result *)arg)->calls += 100;
    }
}

TEST(destroy_from_a_callback)
{
    static struct result a, b;

    ASSERT(setup() == 0);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    self_destruct = http_create(loop, NULL);
    start(self_destruct, &b, "GET", "/sleep?ms=3000", NULL, NULL, 0, 0);
    char url[128];
    snprintf(url, sizeof(url), "%s/hello", base);
    http_request(self_destruct, "GET", url, NULL, NULL, 0, 0, on_done_destroy, &a);
    run_until(&a.calls, 1, 5);
    EXPECT_EQ_INT(a.calls, 1);
    EXPECT_EQ_INT(a.status, 200);
    EXPECT_EQ_INT(b.calls, 1);
    EXPECT_EQ_INT(b.cancelled, 1);
    run_for(0.2);
    EXPECT_EQ_INT(a.calls, 1);
    EXPECT_EQ_INT(b.calls, 1);
}

TEST(fifty_concurrent_requests)
{
    static struct result r[50];
    static char bodies[50][32];
    int done = 0;

    ASSERT(setup() == 0);
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 50; i++) {
        int n = snprintf(bodies[i], sizeof(bodies[i]), "request %d", i);
        r[i].counter = &done;
        start(H, &r[i], "POST", "/info", NULL, bodies[i], (size_t)n, tmo(20));
    }
    EXPECT_EQ_INT(http_pending(H), 50);
    run_until(&done, 50, 30);
    EXPECT_EQ_INT(done, 50);
    for (int i = 0; i < 50; i++) {
        char want[64];
        snprintf(want, sizeof(want), "POST cl=%zu ct=-\n%s", strlen(bodies[i]), bodies[i]);
        EXPECT_EQ_INT(r[i].calls, 1);
        EXPECT_EQ_STR(r[i].body, want);
    }
    EXPECT_EQ_INT(http_pending(H), 0);
}

TEST(keep_alive_reuses_one_connection)
{
    static struct result r;

    ASSERT(setup() == 0);
    struct http *h = http_create(loop, NULL);
    fetch(h, &r, "GET", "/conns", NULL, NULL, 0);
    long before = strtol(r.body, NULL, 10);
    EXPECT(before >= 1);
    for (int i = 0; i < 20; i++) {
        fetch(h, &r, "GET", "/hello", NULL, NULL, 0);
        EXPECT_EQ_INT(r.status, 200);
    }
    fetch(h, &r, "GET", "/conns", NULL, NULL, 0);
    EXPECT_EQ_INT(strtol(r.body, NULL, 10), before);
    http_destroy(h);
}

TEST(long_poll_does_not_block_others)
{
    static struct result lp, r[5];
    char path[64];
    int done = 0;

    ASSERT(setup() == 0);
    memset(&lp, 0, sizeof(lp));
    memset(r, 0, sizeof(r));
    lp.counter = &done;
    snprintf(path, sizeof(path), "/sleep?ms=%d", (int)(tmo(1) * 1000));
    start(H, &lp, "GET", path, NULL, NULL, 0, 0);
    for (int i = 0; i < 5; i++) {
        r[i].counter = &done;
        start(H, &r[i], "GET", "/hello", NULL, NULL, 0, 0);
    }
    run_until(&done, 6, 20);
    EXPECT_EQ_INT(lp.calls, 1);
    EXPECT_EQ_INT(lp.status, 200);
    EXPECT(lp.elapsed >= tmo(1) * 0.9);
    for (int i = 0; i < 5; i++) {
        EXPECT_EQ_INT(r[i].status, 200);
        EXPECT(r[i].order < lp.order);
        EXPECT(r[i].elapsed < lp.elapsed);
    }
}

static double cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

TEST(waiting_costs_no_cpu)
{
    static struct result r;

    ASSERT(setup() == 0);
    fetch(H, &r, "GET", "/hello", NULL, NULL, 0); /* warm the connection */
    double cpu = cpu_seconds();
    memset(&r, 0, sizeof(r));
    start(H, &r, "GET", "/sleep?ms=1000", NULL, NULL, 0, 0);
    run_until(&r.calls, 1, 10);
    cpu = cpu_seconds() - cpu;
    printf("# %.3f s CPU while a request waited %.3f s\n", cpu, r.elapsed);
    EXPECT_EQ_INT(r.status, 200);
    EXPECT(cpu < 0.2);
}

/* Send all of `msg` on a connect-only handle, waiting for the socket. */
static int easy_send_all(CURL *easy, int fd, const char *msg, size_t len)
{
    size_t off = 0;

    while (off < len) {
        size_t n = 0;
        CURLcode rc = curl_easy_send(easy, msg + off, len - off, &n);
        if (rc == CURLE_AGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, (int)(tmo(5) * 1000)) <= 0) {
                return -1;
            }
            continue;
        }
        if (rc != CURLE_OK) {
            return -1;
        }
        off += n;
    }
    return 0;
}

/* Read until EOF (the request said Connection: close). */
static size_t easy_recv_all(CURL *easy, int fd, char *buf, size_t size)
{
    size_t len = 0;

    while (len < size - 1) {
        size_t n = 0;
        CURLcode rc = curl_easy_recv(easy, buf + len, size - 1 - len, &n);
        if (rc == CURLE_AGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, (int)(tmo(5) * 1000)) <= 0) {
                break;
            }
            continue;
        }
        if (rc != CURLE_OK || n == 0) {
            break;
        }
        len += n;
    }
    buf[len] = '\0';
    return len;
}

TEST(connect_only_send_recv)
{
    static struct result r;
    static char answer[4096];
    const char req[] = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    curl_socket_t fd = CURL_SOCKET_BAD;

    ASSERT(setup() == 0);
    conn_calls = 0;
    conn_easy = NULL;
    http_connect_only(H, base, tmo(5), on_connect, NULL);
    EXPECT_EQ_INT(conn_calls, 0);
    run_until(&conn_calls, 1, 10);
    EXPECT_EQ_INT(conn_calls, 1);
    EXPECT_EQ_STR(conn_error, "");
    ASSERT(conn_easy != NULL);
    EXPECT_EQ_INT(http_pending(H), 0);
    EXPECT_EQ_INT(http_conn_count(H), 1);
    /* Other traffic on the client must leave the connection alone. */
    for (int i = 0; i < 3; i++) {
        fetch(H, &r, "GET", "/hello", NULL, NULL, 0);
        EXPECT_EQ_INT(r.status, 200);
    }
    EXPECT_EQ_INT(curl_easy_getinfo(conn_easy, CURLINFO_ACTIVESOCKET, &fd), CURLE_OK);
    EXPECT(fd != CURL_SOCKET_BAD);
    EXPECT_EQ_INT(easy_send_all(conn_easy, fd, req, strlen(req)), 0);
    easy_recv_all(conn_easy, fd, answer, sizeof(answer));
    EXPECT(strncmp(answer, "HTTP/1.1 200", 12) == 0);
    EXPECT_CONTAINS(answer, "\r\n\r\nhello world");
    curl_easy_cleanup(conn_easy);
    conn_easy = NULL;
    /* Its private multi is freed from the loop once the socket closed. */
    for (int i = 0; i < 50 && http_conn_count(H) > 0; i++) {
        run_for(0.02);
    }
    EXPECT_EQ_INT(http_conn_count(H), 0);
}

TEST(connect_only_refused_and_cancelled)
{
    char url[64];
    int port = closed_port();

    ASSERT(setup() == 0 && port > 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    conn_calls = 0;
    http_connect_only(H, url, tmo(5), on_connect, NULL);
    run_until(&conn_calls, 1, 10);
    EXPECT_EQ_INT(conn_calls, 1);
    EXPECT(conn_easy == NULL);
    EXPECT(conn_error[0] != '\0');
    conn_calls = 0;
    http_cancel(http_connect_only(H, base, tmo(5), on_connect, NULL));
    EXPECT_EQ_INT(conn_calls, 1);
    EXPECT(conn_easy == NULL);
    EXPECT_EQ_STR(conn_error, "cancelled");
    run_for(0.2);
    EXPECT_EQ_INT(conn_calls, 1);
    EXPECT_EQ_INT(http_pending(H), 0);
    EXPECT_EQ_INT(http_conn_count(H), 0);
}

TAP_MAIN()
