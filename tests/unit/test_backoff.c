/*
 * test_backoff.c - the retry policy towards an orchestrator (backoff.h).
 * The jittered exponential backoff: every delay lies within [0.5, 1.0] x
 * the current step, steps double up to the cap, reset goes back to the
 * base, and a cap below the base is raised to it. backoff_after_failure()
 * with hand-made responses (struct http_response, as http.c fills them):
 * a transport error and a TLS failure use the backoff (the TLS one logs the
 * operator message of tls.h), 401/403 wait at least 5 s with the token
 * advice, a renewable credential waits at least 1 s but less than 5 s, and
 * the renewal callback is asked only for the dialect's auth status; 429
 * honours Retry-After clamped to [1 s, the cap] (backoff_retry_after: 0 is
 * 1 s, 99999999999 the cap, with a warning once; a cap below 1 s wins),
 * else waits the limiter's window out (61..66 s) and gives its hint once;
 * 500 and a too large answer (named with its size and limit) use the
 * backoff.
 * Log lines are captured by pointing stderr at a temporary file.
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "http.h"
#include "log.h"
#include "rxon.h"
#include "tap.h"
#include "util.h"

#define URL "http://orch.test:8080"

/* ---- stderr capture --------------------------------------------------- */

static int saved_stderr = -1;
static char capture_path[64];

static void capture_begin(void)
{
    snprintf(capture_path, sizeof(capture_path), "/tmp/avt-backoff-test.XXXXXX");
    int fd = mkstemp(capture_path);
    if (fd < 0)
        return;
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* What was logged since capture_begin() (caller frees; "" when nothing). */
static char *capture_end(void)
{
    if (saved_stderr < 0)
        return xstrdup("");
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
    char *text = read_file(capture_path, 1 << 20, NULL);
    unlink(capture_path);
    return text != NULL ? text : xstrdup("");
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ---- helpers ------------------------------------------------------------ */

static struct http_response answer(long status, const char *body)
{
    struct http_response r = {.status = status,
                              .body = body,
                              .len = strlen(body),
                              .retry_after = -1,
                              .curl_code = CURLE_OK};
    return r;
}

static struct http_response transport(CURLcode code, const char *error)
{
    struct http_response r = {
        .status = 0, .body = "", .retry_after = -1, .curl_code = code, .error = error};
    return r;
}

static int renew_calls, renew_answer;

static int renew(void *arg)
{
    (void)arg;
    renew_calls++;
    return renew_answer;
}

static int custom_advice(long status, const char *text, double skew, char *out, size_t outlen)
{
    if (status != 401 && status != 403 && status != 400)
        return 0;
    snprintf(out, outlen, "custom advice for %ld (%s, skew %.0f)", status, text, skew);
    return 1;
}

static struct backoff_peer peer(int https, int auth_status)
{
    struct backoff_peer p = {
        .url = URL, .https = https, .server = "Avtomatika 1.0b13", .auth_status = auth_status};
    return p;
}

static int in_range(double d, double lo, double hi)
{
    return d >= lo && d <= hi;
}

/* ---- backoff_init / next / reset ----------------------------------------- */

TEST(delays_are_jittered_steps_that_double_up_to_the_cap)
{
    for (unsigned seed = 1; seed <= 50; seed++) {
        srandom(seed);
        struct backoff b;
        backoff_init(&b, 0.5, 20);
        const double steps[] = {0.5, 1, 2, 4, 8, 16, 20, 20, 20};
        for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
            EXPECT(b.cur == steps[i]);
            double d = backoff_next(&b);
            if (!in_range(d, 0.5 * steps[i], steps[i]))
                TAP_FAIL_("seed %u step %zu: delay %g not in [%g, %g]", seed, i, d, 0.5 * steps[i],
                          steps[i]);
        }
        EXPECT(b.cur == 20);
    }
}

TEST(the_jitter_spreads_over_the_upper_half)
{
    /* Full jitter on the upper half: over many draws both ends of the range
     * are approached, so a fleet really spreads apart. */
    struct backoff b;
    double lo = 10, hi = 0;
    srandom(7);
    for (int i = 0; i < 2000; i++) {
        backoff_init(&b, 4, 4);
        double d = backoff_next(&b);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    EXPECT(lo >= 2 && lo < 2.1);
    EXPECT(hi <= 4 && hi > 3.9);
}

TEST(reset_returns_to_the_base)
{
    struct backoff b;
    backoff_init(&b, 1, 60);
    for (int i = 0; i < 10; i++)
        backoff_next(&b);
    EXPECT(b.cur == 60);
    backoff_reset(&b);
    EXPECT(b.cur == 1);
    EXPECT(b.base == 1 && b.cap == 60);
    double d = backoff_next(&b);
    EXPECT(in_range(d, 0.5, 1));
    EXPECT(b.cur == 2);
}

TEST(a_cap_below_the_base_is_raised_to_it)
{
    struct backoff b;
    backoff_init(&b, 10, 3);
    EXPECT(b.cap == 10);
    for (int i = 0; i < 20; i++) {
        double d = backoff_next(&b);
        EXPECT(in_range(d, 5, 10));
        EXPECT(b.cur == 10);
    }
}

/* ---- backoff_after_failure ----------------------------------------------- */

TEST(a_transport_error_uses_the_backoff)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    struct backoff b;
    backoff_init(&b, 2, 60);
    struct http_response r = transport(CURLE_COULDNT_CONNECT, "Failed to connect: refused");
    capture_begin();
    double d1 = backoff_after_failure(&p, "poll", &r, &b, NULL);
    double d2 = backoff_after_failure(&p, "poll", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(in_range(d1, 1, 2));
    EXPECT(in_range(d2, 2, 4));
    EXPECT(b.cur == 8);
    EXPECT_CONTAINS(log, "warning poll: " URL ": Failed to connect: refused");
    EXPECT(strstr(log, "TLS") == NULL);
    EXPECT_EQ_INT(count_of(log, "\n"), 2);
    free(log);
}

TEST(a_transport_error_without_text_is_still_logged)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    struct backoff b;
    backoff_init(&b, 1, 1);
    struct http_response r = transport(CURLE_OK, NULL);
    struct log_ctx ctx = {"plug", "task-1", "job-1", "echo"};
    capture_begin();
    double d = backoff_after_failure(&p, "heartbeat", &r, &b, &ctx);
    char *log = capture_end();
    EXPECT(in_range(d, 0.5, 1));
    EXPECT_CONTAINS(log, "heartbeat: " URL ": transport error");
    EXPECT_CONTAINS(log, "task_id=task-1");
    free(log);
}

TEST(a_tls_failure_gets_the_operator_message)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(1, 401);
    struct backoff b;
    backoff_init(&b, 4, 60);
    struct http_response r = transport(CURLE_PEER_FAILED_VERIFICATION,
                                       "SSL certificate problem: certificate has expired");
    capture_begin();
    double d = backoff_after_failure(&p, "register", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(in_range(d, 2, 4));
    EXPECT(b.cur == 8);
    EXPECT_CONTAINS(log, " error register: " URL ": TLS: the orchestrator's certificate has "
                         "expired");
    EXPECT_CONTAINS(log, "(SSL certificate problem: certificate has expired)");
    free(log);

    /* Only a code, no text: still the TLS path, still the backoff. */
    r = transport(CURLE_SSL_CONNECT_ERROR, NULL);
    capture_begin();
    d = backoff_after_failure(&p, "register", &r, &b, NULL);
    log = capture_end();
    EXPECT(in_range(d, 4, 8));
    EXPECT_CONTAINS(log, "TLS: the TLS handshake failed");
    free(log);
}

TEST(refused_credentials_wait_at_least_five_seconds)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    long statuses[] = {401, 403};
    for (size_t i = 0; i < ARRAY_LEN(statuses); i++) {
        struct backoff b;
        backoff_init(&b, 0.1, 60);
        struct http_response r = answer(statuses[i], "{\"error\":\"Unauthorized\"}");
        capture_begin();
        double d = backoff_after_failure(&p, "register", &r, &b, NULL);
        char *log = capture_end();
        EXPECT(d == 5.0);
        EXPECT(b.cur == 0.2); /* the backoff still advanced */
        EXPECT_CONTAINS(log, "error register: the orchestrator refused this worker's "
                             "credentials");
        EXPECT_CONTAINS(log, "Unauthorized");
        EXPECT_CONTAINS(log, RXON_TOKEN_ADVICE);
        free(log);
    }
    /* A long step is kept as it is (it is over 5 s already). */
    struct backoff b;
    backoff_init(&b, 40, 60);
    struct http_response r = answer(403, "forbidden");
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    free(capture_end());
    EXPECT(in_range(d, 20, 40));
}

TEST(the_dialects_refusal_advice_is_used)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 403);
    p.explain = custom_advice;
    p.clock_skew = 42;
    struct backoff b;
    backoff_init(&b, 1, 60);
    struct http_response r = answer(403, "{\"error\":\"bad token\"}");
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(d == 5.0);
    EXPECT_CONTAINS(log, "custom advice for 403 (bad token, skew 42)");
    EXPECT(strstr(log, RXON_TOKEN_ADVICE) == NULL);
    free(log);
    /* A 400 the dialect can explain is an error naming it, with the backoff. */
    r = answer(400, "{\"error\":\"Expected `object` - at `$.x`\"}");
    capture_begin();
    d = backoff_after_failure(&p, "register", &r, &b, NULL);
    log = capture_end();
    EXPECT(d < 5.0 * 2);
    EXPECT_CONTAINS(log, "error register: the orchestrator refused the message (400");
    EXPECT_CONTAINS(log, "custom advice for 400");
    free(log);
}

TEST(a_renewable_credential_waits_one_to_five_seconds)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(1, 401);
    p.renew_credentials = renew;
    renew_calls = 0;
    renew_answer = 1;

    /* A tiny step: raised to 1 s. */
    struct backoff b;
    backoff_init(&b, 0.1, 60);
    struct http_response r = answer(401, "{\"error\":\"token expired\"}");
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(d == 1.0);
    EXPECT_EQ_INT(renew_calls, 1);
    EXPECT_CONTAINS(log, "warning poll: " URL " answered 401 (token expired): renewing the "
                         "access token");
    EXPECT(strstr(log, "refused this worker's credentials") == NULL);
    free(log);

    /* A step of 3 s: its jittered value, below the 5 s of a refusal. */
    backoff_init(&b, 3, 60);
    capture_begin();
    d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    free(capture_end());
    EXPECT(in_range(d, 1.5, 3) && d < 5);
    EXPECT_EQ_INT(renew_calls, 2);

    /* No renewal under way (the callback says 0): a plain refusal. */
    renew_answer = 0;
    backoff_init(&b, 0.1, 60);
    capture_begin();
    d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    log = capture_end();
    EXPECT(d == 5.0);
    EXPECT_EQ_INT(renew_calls, 3);
    EXPECT_CONTAINS(log, "refused this worker's credentials");
    free(log);
}

TEST(the_renewal_is_asked_only_for_the_dialects_auth_status)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(1, 401);
    p.renew_credentials = renew;
    renew_calls = 0;
    renew_answer = 1;
    struct backoff b;
    backoff_init(&b, 0.1, 60);

    /* 403 is refused, but this dialect's credential refusal is 401. */
    struct http_response r = answer(403, "forbidden");
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    free(capture_end());
    EXPECT_EQ_INT(renew_calls, 0);
    EXPECT(d == 5.0);

    /* Neither for other failures. */
    long others[] = {429, 500, 404};
    for (size_t i = 0; i < ARRAY_LEN(others); i++) {
        r = answer(others[i], "");
        r.retry_after = 0;
        capture_begin();
        backoff_after_failure(&p, "poll", &r, &b, NULL);
        free(capture_end());
    }
    r = transport(CURLE_COULDNT_CONNECT, "refused");
    capture_begin();
    backoff_after_failure(&p, "poll", &r, &b, NULL);
    free(capture_end());
    EXPECT_EQ_INT(renew_calls, 0);

    /* With auth_status 403 the same 403 is a renewal. */
    p.auth_status = 403;
    backoff_init(&b, 0.1, 60);
    r = answer(403, "forbidden");
    capture_begin();
    d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    free(capture_end());
    EXPECT_EQ_INT(renew_calls, 1);
    EXPECT(d == 1.0);
}

TEST(retry_after_is_clamped_to_one_second_and_the_cap)
{
    EXPECT(backoff_retry_after(7.5, 60) == 7.5);
    EXPECT(backoff_retry_after(60, 60) == 60);
    EXPECT(backoff_retry_after(1, 60) == 1);
    /* "Retry-After: 0" (or a date in the past) is no licence to hammer. */
    EXPECT(backoff_retry_after(0, 60) == 1);
    EXPECT(backoff_retry_after(0.2, 60) == 1);
    /* 99999999999 s (http.c makes it 1e10) would stop the endpoint for good. */
    EXPECT(backoff_retry_after(1e10, 60) == 60);
    EXPECT(backoff_retry_after(99999999999.0, 5) == 5);
    EXPECT(backoff_retry_after(61, 60) == 60);
    /* An operator's cap below 1 s wins over the floor. */
    EXPECT(backoff_retry_after(0, 0.5) == 0.5);
    EXPECT(backoff_retry_after(30, 0.5) == 0.5);
    /* Garbage never yields a negative or infinite wait. */
    EXPECT(backoff_retry_after(-1, 60) == 1);
    EXPECT(backoff_retry_after(NAN, 60) == 1);
    EXPECT(backoff_retry_after(INFINITY, 60) == 60);
}

TEST(rate_limited_with_retry_after_uses_it_within_the_cap)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    int told = 0;
    p.told_rate_limit = &told;
    struct backoff b;
    backoff_init(&b, 1, 60);
    struct http_response r = answer(429, "{\"error\":\"Too Many Requests\"}");
    r.retry_after = 7.5;
    capture_begin();
    double d1 = backoff_after_failure(&p, "poll", &r, &b, NULL);
    r.retry_after = 0;
    double d2 = backoff_after_failure(&p, "heartbeat", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(d1 == 7.5);
    EXPECT(d2 == 1);
    EXPECT(b.cur == 1); /* the backoff is not used */
    EXPECT_EQ_INT(told, 1);
    EXPECT_EQ_INT(count_of(log, "rate limiter answered 429"), 1);
    EXPECT_CONTAINS(log, "poll: the orchestrator's rate limiter answered 429. Avtomatika 1.0b13");
    EXPECT_CONTAINS(log, "RATE_LIMITING_ENABLED=false");
    free(log);
}

TEST(a_retry_after_beyond_the_cap_waits_the_cap_and_says_so_once)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    int told = 0, told_ra = 0;
    p.told_rate_limit = &told;
    p.told_retry_after = &told_ra;
    struct backoff b;
    backoff_init(&b, 0.5, 20); /* retry_max_delay = 20 */
    struct http_response r = answer(429, "");
    r.retry_after = 1e10; /* "Retry-After: 99999999999", as http.c reads it */
    capture_begin();
    double d1 = backoff_after_failure(&p, "poll", &r, &b, NULL);
    double d2 = backoff_after_failure(&p, "poll", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(d1 == 20);
    EXPECT(d2 == 20);
    EXPECT(b.cur == 0.5);
    EXPECT_EQ_INT(told_ra, 1);
    EXPECT_EQ_INT(count_of(log, "asked to retry after"), 1);
    EXPECT_CONTAINS(log, "poll: " URL " asked to retry after 10000000000 s; waiting 20 s instead "
                         "(retry_max_delay)");
    free(log);

    /* Without a flag to remember it by: still clamped, not told. */
    p.told_retry_after = NULL;
    capture_begin();
    double d3 = backoff_after_failure(&p, "heartbeat", &r, &b, NULL);
    log = capture_end();
    EXPECT(d3 == 20);
    EXPECT(strstr(log, "asked to retry after") == NULL);
    free(log);
}

TEST(rate_limited_without_retry_after_waits_the_window_out)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    int told = 0;
    p.told_rate_limit = &told;
    struct backoff b;
    backoff_init(&b, 1, 60);
    struct http_response r = answer(429, "");
    capture_begin();
    for (int i = 0; i < 200; i++) {
        double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
        if (!in_range(d, 61, 66))
            TAP_FAIL_("429 delay %g not in [61, 66]", d);
    }
    char *log = capture_end();
    EXPECT_EQ_INT(told, 1);
    EXPECT_EQ_INT(count_of(log, "rate limiter answered 429"), 1);
    EXPECT(b.cur == 1);
    free(log);

    /* Without a flag to remember it by: the hint is not given, no crash. */
    p.told_rate_limit = NULL;
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    log = capture_end();
    EXPECT(in_range(d, 61, 66));
    EXPECT(strstr(log, "rate limiter") == NULL);
    free(log);
}

TEST(a_server_error_uses_the_backoff)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    struct backoff b;
    backoff_init(&b, 2, 5);
    struct http_response r = answer(500, "{\"error\":\"database is down\"}");
    capture_begin();
    double d1 = backoff_after_failure(&p, "result of task t1 (attempt 1)", &r, &b, NULL);
    double d2 = backoff_after_failure(&p, "result of task t1 (attempt 2)", &r, &b, NULL);
    double d3 = backoff_after_failure(&p, "result of task t1 (attempt 3)", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(in_range(d1, 1, 2));
    EXPECT(in_range(d2, 2, 4));
    EXPECT(in_range(d3, 2.5, 5));
    EXPECT_CONTAINS(log, "warning result of task t1 (attempt 1): orchestrator answered 500: "
                         "database is down");
    free(log);

    /* A body that is not JSON is quoted, control characters blanked. */
    r = answer(502, "Bad\ngateway");
    capture_begin();
    double d = backoff_after_failure(&p, "poll", &r, &b, NULL);
    log = capture_end();
    EXPECT(in_range(d, 2.5, 5));
    EXPECT_CONTAINS(log, "orchestrator answered 502: Bad gateway");
    free(log);
}

TEST(a_too_large_answer_uses_the_backoff)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    struct backoff_peer p = peer(0, 401);
    struct backoff b;
    backoff_init(&b, 1, 60);
    /* As http.c reports it: the status is set, the body is not. */
    struct http_response r = answer(502, "");
    r.too_large = 1;
    r.body_seen = 70000;
    r.max_body = 65536;
    r.curl_code = CURLE_FILESIZE_EXCEEDED;
    r.error = "response body larger than its limit";
    capture_begin();
    double d = backoff_after_failure(&p, "heartbeat", &r, &b, NULL);
    char *log = capture_end();
    EXPECT(in_range(d, 0.5, 1));
    EXPECT(b.cur == 2);
    EXPECT_CONTAINS(log, "heartbeat: " URL " answered 502 with a body of at least 70000 bytes, "
                         "over this endpoint's limit of 65536 bytes: not read");
    free(log);
}

TAP_MAIN()
