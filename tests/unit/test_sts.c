/*
 * test_sts.c - the access-token client (sts.c) against the test
 * orchestrator (tests/orchestrator/fakeorch.py) on loopback: one fake
 * speaks RXON 1.0b14 over http (tokens for any authenticated worker, with a
 * refresh token), the other RXON 1.0b3 over https, where only a verified
 * client certificate obtains a token (the PKI is made at start by
 * tests/integration/tlscerts.py). The hooks stand in for the session: they
 * keep its headers as orch.c builds them (the token in force, else the
 * static one), hand out the static ones for token requests, and count
 * adoptions, drops and first answers. Covers when tokens
 * are asked for (access_tokens off, auto, on), the first token and the fake
 * accepting it, renewal at 80 % of expires_in through the refresh route
 * (1.0b14) or the token route again (1.0b3), a refusal elsewhere (one
 * renewal per burst, sts_credential_ok re-arming it, a fresh token refused
 * again dropped for the static one, a refused token that cannot be renewed
 * dropped too), a refresh token the orchestrator forgot (asked anew with the
 * static token), an outage across the token's expiry (the expired token
 * dropped, the refresh token kept for the next attempt), and a refused token
 * request (first_done all the same, no token, backoff instead of a tight
 * loop).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "cfg.h"
#include "fakeorch.h"
#include "http.h"
#include "log.h"
#include "rxon.h"
#include "sts.h"
#include "tap.h"
#include "util.h"

#define WORKER "w-sts"
#define TOKEN "worker-token"
#define PATH_TOKEN "/_worker/auth/token"
#define PATH_REFRESH "/_worker/auth/token/refresh"
/* sts.c's STS_REFUSED_SPACING: a token younger than this refused is dropped. */
#define REFUSED_SPACING 5.0

static struct fo fo14, fo3; /* RXON 1.0b14 over http; RXON 1.0b3 over https */
static char pki[64], ca[128], client_cert[128], client_key[128];
static struct ev_loop *loop;

/* ---- The fakes ------------------------------------------------------------------ */

/* A fresh fake issuing tokens valid `expires_in` seconds. */
static void reset_fake(struct fo *f, double expires_in)
{
    char body[64];
    json_decref(fo_request(f, "POST", "/_test/reset", NULL, "{}", NULL));
    snprintf(body, sizeof(body), "{\"sts_expires_in\":%g}", expires_in);
    json_decref(fo_request(f, "POST", "/_test/config", NULL, body, NULL));
}

/* The fake's log of token requests, both routes (decref). */
static json_t *sts_log(struct fo *f)
{
    json_t *rows = fo_request(f, "GET", "/_test/log?path=" PATH_TOKEN, NULL, NULL, NULL);
    return json_is_array(rows) ? rows : (json_decref(rows), json_array());
}

static const char *row_path(json_t *row)
{
    return json_string_value(json_object_get(row, "path"));
}

/* How many rows went to exactly `path`, and how many of those got `status`. */
static int count_rows(json_t *rows, const char *path, long status, int *with_status)
{
    size_t i;
    json_t *r;
    int n = 0;
    *with_status = 0;
    json_array_foreach(rows, i, r)
    {
        if (row_path(r) == NULL || strcmp(row_path(r), path) != 0)
            continue;
        n++;
        *with_status += json_integer_value(json_object_get(r, "status")) == status;
    }
    return n;
}

/* The answer's field `key` in row i of the log. */
static const char *resp_field(json_t *rows, size_t i, const char *key)
{
    return json_string_value(
        json_object_get(json_object_get(json_array_get(rows, i), "resp"), key));
}

/* The status of a poll authenticated by `token` alone (the fakes hold a
 * poll 0.2 s: 204 means the credential was accepted). */
static long poll_with(struct fo *f, const char *token)
{
    char auth[256];
    long status = 0;
    snprintf(auth, sizeof(auth), "X-Worker-Token: %s", token);
    const char *hdrs[] = {auth, "X-Worker-ID: " WORKER, NULL};
    json_decref(
        fo_request(f, "GET", "/_worker/workers/" WORKER "/tasks/next", hdrs, NULL, &status));
    return status;
}

/* ---- The session's stand-in --------------------------------------------------- */

struct fx {
    struct cfg *cfg;
    struct http *http;
    struct sts *sts;
    const struct rxon_dialect *dialect;
    char *headers[5];        /* the session's: the token in force */
    char *static_headers[5]; /* with the static token, for token requests */
    int asked;               /* token requests made (each takes the headers once) */
    int adopted;             /* adopted() calls */
    int dropped;             /* adopted() calls that left no token in force */
    int first_done;          /* first_done() calls */
    double adopted_at;
    unsigned long want; /* for obtained() */
};

static void free_array(char **h)
{
    for (int i = 0; h[i] != NULL; i++)
        free_and_null(h[i]);
}

static void free_headers(struct fx *x)
{
    free_array(x->headers);
    free_array(x->static_headers);
}

static void fill_headers(const struct fx *x, char **h, const char *token)
{
    int n = 0;
    h[n++] = xasprintf("X-Worker-Token: %s", token);
    if (x->dialect->worker_id_header)
        h[n++] = xstrdup("X-Worker-ID: " WORKER);
    h[n++] = xasprintf("X-RXON-Version: %s", x->dialect->version);
    h[n++] = xstrdup("Content-Type: application/json");
    h[n] = NULL;
}

/* As orch.c's build_headers(): the token in force, else the static one;
 * and the static one alone for token requests. */
static void build_headers(struct fx *x)
{
    const char *token =
        x->sts != NULL && sts_token(x->sts) != NULL ? sts_token(x->sts) : x->cfg->token;
    free_headers(x);
    fill_headers(x, x->headers, token);
    fill_headers(x, x->static_headers, x->cfg->token);
}

static const char *const *hk_headers(void *arg)
{
    struct fx *x = arg;
    x->asked++;
    return (const char *const *)x->static_headers;
}

static void hk_adopted(void *arg)
{
    struct fx *x = arg;
    x->adopted++;
    x->dropped += sts_token(x->sts) == NULL;
    x->adopted_at = now_mono();
    build_headers(x);
}

static void hk_first_done(void *arg)
{
    ((struct fx *)arg)->first_done++;
}

static const struct sts_hooks hooks = {hk_headers, hk_adopted, hk_first_done};

static const char *const env_vars[] = {
    "ORCHESTRATORS_CONFIG", "ORCHESTRATOR_URL",   "WORKER_ID",
    "WORKER_TOKEN",         "WORKER_TOKEN_FILE",  "WORKER_INDIVIDUAL_TOKEN",
    "WORKER_ACCESS_TOKENS", "TLS_CA_PATH",        "TLS_CERT_PATH",
    "TLS_KEY_PATH",         "TLS_INSECURE",       "BACKOFF_MAX_DELAY",
    "RXON_PROTOCOL",        "WORKER_SIGNING_KEY", "WORKER_SIGNING_KEY_FILE",
};

/* The configuration from the environment: access_tokens `access` (NULL:
 * the default, auto), the static token, the CA for https, a client
 * certificate when `cert`. */
static struct cfg *load_cfg(const char *url, const char *access, const char *token, int cert)
{
    char err[AVT_ERRLEN];
    struct cfg *cfg;
    for (size_t i = 0; i < ARRAY_LEN(env_vars); i++)
        unsetenv(env_vars[i]);
    setenv("ORCHESTRATOR_URL", url, 1);
    setenv("WORKER_ID", WORKER, 1);
    setenv("WORKER_TOKEN", token, 1);
    if (access != NULL)
        setenv("WORKER_ACCESS_TOKENS", access, 1);
    if (strncmp(url, "https://", 8) == 0)
        setenv("TLS_CA_PATH", ca, 1);
    if (cert) {
        setenv("TLS_CERT_PATH", client_cert, 1);
        setenv("TLS_KEY_PATH", client_key, 1);
    }
    int rc = cfg_load(NULL, &cfg, err, sizeof(err));
    for (size_t i = 0; i < ARRAY_LEN(env_vars); i++)
        unsetenv(env_vars[i]);
    if (rc < 0) {
        printf("# cfg_load: %s\n", err);
        return NULL;
    }
    return cfg;
}

static struct fx the_fx; /* one client at a time */

static void fx_close(struct fx *x)
{
    sts_destroy(x->sts);
    http_destroy(x->http);
    cfg_destroy(x->cfg);
    free_headers(x);
    memset(x, 0, sizeof(*x));
}

/* A client of orchestrator f, or NULL; dialect NULL leaves sts.c's default
 * (1.0b3). The previous one is closed first (a test whose ASSERT failed
 * left it open). */
static struct fx *fx_open(struct fo *f, const char *access, const char *token, int cert,
                          const struct rxon_dialect *dialect)
{
    struct fx *x = &the_fx;
    fx_close(x);
    x->cfg = load_cfg(f->base, access, token, cert);
    if (x->cfg == NULL)
        return NULL;
    struct http_opts opts = {.ca_file = x->cfg->tls_ca_file,
                             .cert_file = x->cfg->tls_cert_file,
                             .key_file = x->cfg->tls_key_file};
    x->http = http_create(loop, &opts);
    x->dialect = dialect != NULL ? dialect : &rxon_b3;
    build_headers(x);
    x->sts = sts_create(loop, x->http, f->base, x->cfg, &hooks, x);
    if (dialect != NULL)
        sts_set_dialect(x->sts, dialect);
    return x;
}

/* The token in force, "" when none. */
static const char *tok(const struct fx *x)
{
    return sts_token(x->sts) != NULL ? sts_token(x->sts) : "";
}

/* ---- Driving the loop ----------------------------------------------------------- */

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

/* Run the loop until cond(arg) holds or `secs` passed (a failure guard,
 * scaled by TIMEOUT_MULT when `scaled`); cond NULL: for `secs`. */
static int run_loop(int (*cond)(void *), void *arg, double secs, int scaled)
{
    int late = 0;
    ev_timer t;
    ev_timer_init(&t, on_deadline, scaled ? tmo(secs) : secs, 0.);
    t.data = &late;
    ev_timer_start(loop, &t);
    while ((cond == NULL || !cond(arg)) && !late)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &t);
    return cond != NULL && cond(arg);
}

static int run_until(int (*cond)(void *), void *arg, double secs)
{
    return run_loop(cond, arg, secs, 1);
}

static int first_answered(void *arg)
{
    return ((struct fx *)arg)->first_done > 0;
}

static int obtained(void *arg)
{
    struct fx *x = arg;
    return sts_tokens_obtained(x->sts) >= x->want;
}

static int run_until_obtained(struct fx *x, unsigned long n)
{
    x->want = n;
    return run_until(obtained, x, 30);
}

/* Run the loop until the token in force is older than the refusal spacing
 * (one refused then is not dropped but renewed). */
static void age_token(struct fx *x)
{
    double left = x->adopted_at + REFUSED_SPACING + 0.2 - now_mono();
    if (left > 0)
        run_loop(NULL, NULL, left, 0);
}

/* ---- Tests ---------------------------------------------------------------------- */

TEST(tokens_are_asked_for_only_as_access_tokens_says)
{
    static const struct {
        const char *access; /* NULL: auto */
        int https, cert, enabled;
    } cases[] = {
        {"off", 0, 0, 0},  {"off", 1, 1, 0}, {NULL, 0, 0, 0}, {"auto", 1, 0, 0},
        {"auto", 1, 1, 1}, {"on", 0, 0, 1},  {"on", 1, 0, 1},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct fx *x =
            fx_open(cases[i].https ? &fo3 : &fo14, cases[i].access, TOKEN, cases[i].cert, NULL);
        ASSERT(x != NULL);
        if (sts_enabled(x->sts) != cases[i].enabled)
            TAP_FAIL_("case %zu: access_tokens %s, https %d, cert %d: enabled %d", i,
                      cases[i].access ? cases[i].access : "(auto)", cases[i].https, cases[i].cert,
                      sts_enabled(x->sts));
        fx_close(x);
    }
}

/* Off, and auto over plain http without a certificate: nothing is asked,
 * sts_begin() says so and first_done never comes (the session registers at
 * once itself); no token, and a refusal is not the client's to heal. */
TEST(without_tokens_nothing_is_asked_and_first_done_is_not_called)
{
    static const char *const access[] = {"off", "auto"};
    for (size_t i = 0; i < ARRAY_LEN(access); i++) {
        reset_fake(&fo14, 3600);
        struct fx *x = fx_open(&fo14, access[i], TOKEN, 0, &rxon_b14);
        ASSERT(x != NULL);
        EXPECT_EQ_INT(sts_enabled(x->sts), 0);
        EXPECT_EQ_INT(sts_begin(x->sts), 0);
        EXPECT_EQ_INT(http_pending(x->http), 0);
        EXPECT_EQ_INT(sts_after_refusal(x->sts), 0);
        EXPECT_EQ_INT(http_pending(x->http), 0);
        run_loop(NULL, NULL, 0.3, 0);
        EXPECT_EQ_INT(x->first_done, 0);
        EXPECT_EQ_INT(x->adopted, 0);
        EXPECT_EQ_INT(x->asked, 0);
        EXPECT(sts_token(x->sts) == NULL);
        EXPECT_EQ_INT(sts_tokens_obtained(x->sts), 0);
        json_t *rows = sts_log(&fo14);
        EXPECT_EQ_INT(json_array_size(rows), 0);
        json_decref(rows);
        fx_close(x);
    }
}

TEST(the_first_token_comes_from_the_token_route_and_the_fake_accepts_it)
{
    reset_fake(&fo14, 3600);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_enabled(x->sts), 1);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    EXPECT_EQ_INT(x->first_done, 0); /* never from inside sts_begin() */
    /* Asked again while the request is under way: still one request. */
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    EXPECT_EQ_INT(x->asked, 1);
    EXPECT_EQ_INT(http_pending(x->http), 1);
    ASSERT(run_until(first_answered, x, 30));
    EXPECT_EQ_INT(x->first_done, 1);
    EXPECT_EQ_INT(x->adopted, 1);
    EXPECT_EQ_INT(x->asked, 1);
    EXPECT_EQ_INT(sts_tokens_obtained(x->sts), 1);
    const char *token = sts_token(x->sts);
    ASSERT(token != NULL);
    EXPECT(strcmp(token, TOKEN) != 0);
    /* The headers now carry it (adopted() came after the token was set). */
    EXPECT_CONTAINS(x->headers[0], token);
    /* Asked once, with the static token, and the fake's answer is in force. */
    json_t *rows = sts_log(&fo14);
    int ok;
    EXPECT_EQ_INT(json_array_size(rows), 1);
    EXPECT_EQ_INT(count_rows(rows, PATH_TOKEN, 200, &ok), 1);
    EXPECT_EQ_INT(ok, 1);
    EXPECT_EQ_STR(json_string_value(json_object_get(
                      json_object_get(json_array_get(rows, 0), "headers"), "X-Worker-Token")),
                  TOKEN);
    EXPECT_EQ_STR(resp_field(rows, 0, "access_token"), token);
    EXPECT_EQ_STR(resp_field(rows, 0, "worker_id"), WORKER);
    json_decref(rows);
    /* It authenticates a request on its own; a made-up one does not. */
    EXPECT_EQ_INT(poll_with(&fo14, token), 204);
    EXPECT_EQ_INT(poll_with(&fo14, "not-a-token"), 403);
    /* A begin once the first attempt is over asks nothing more. */
    EXPECT_EQ_INT(sts_begin(x->sts), 0);
    run_loop(NULL, NULL, 0.3, 0);
    EXPECT_EQ_INT(x->first_done, 1);
    EXPECT_EQ_INT(x->asked, 1);
    fx_close(x);
}

TEST(renews_at_80_percent_through_the_refresh_route_in_1_0b14)
{
    reset_fake(&fo14, 2);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));
    char first[256];
    snprintf(first, sizeof(first), "%s", tok(x));
    ASSERT(run_until_obtained(x, 2));
    const char *token = sts_token(x->sts);
    ASSERT(token != NULL);
    EXPECT(strcmp(token, first) != 0);
    EXPECT_EQ_INT(sts_tokens_obtained(x->sts), 2);
    EXPECT_EQ_INT(x->adopted, 2);
    EXPECT_EQ_INT(x->first_done, 1);
    /* One token request, then the refresh route with the refresh token of
     * its answer; the new token is the refresh's answer. */
    json_t *rows = sts_log(&fo14);
    int ok;
    EXPECT_EQ_INT(count_rows(rows, PATH_TOKEN, 200, &ok), 1);
    EXPECT_EQ_INT(count_rows(rows, PATH_REFRESH, 200, &ok), 1);
    EXPECT_EQ_INT(ok, 1);
    ASSERT(json_array_size(rows) == 2);
    EXPECT_EQ_STR(row_path(json_array_get(rows, 0)), PATH_TOKEN);
    EXPECT_EQ_STR(row_path(json_array_get(rows, 1)), PATH_REFRESH);
    const char *refresh = resp_field(rows, 0, "refresh_token");
    EXPECT(refresh != NULL);
    EXPECT_EQ_STR(json_string_value(json_object_get(
                      json_object_get(json_array_get(rows, 1), "body"), "refresh_token")),
                  refresh);
    EXPECT_EQ_STR(resp_field(rows, 1, "access_token"), token);
    json_decref(rows);
    EXPECT_EQ_INT(poll_with(&fo14, token), 204);
    fx_close(x);
}

/* 1.0b3 has no refresh route: the client certificate obtains every token
 * from the token route (access_tokens auto, https and a certificate). */
TEST(renews_through_the_token_route_again_in_1_0b3)
{
    reset_fake(&fo3, 2);
    struct fx *x = fx_open(&fo3, NULL, TOKEN, 1, NULL);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_enabled(x->sts), 1);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));
    EXPECT_EQ_INT(x->first_done, 1);
    char first[256];
    snprintf(first, sizeof(first), "%s", tok(x));
    ASSERT(run_until_obtained(x, 2));
    const char *token = sts_token(x->sts);
    ASSERT(token != NULL);
    EXPECT(strcmp(token, first) != 0);
    EXPECT_EQ_INT(x->first_done, 1);
    json_t *rows = sts_log(&fo3);
    int ok;
    EXPECT_EQ_INT(count_rows(rows, PATH_TOKEN, 200, &ok), 2);
    EXPECT_EQ_INT(ok, 2);
    EXPECT_EQ_INT(count_rows(rows, PATH_REFRESH, 200, &ok), 0);
    EXPECT_EQ_INT(json_array_size(rows), 2);
    EXPECT_EQ_STR(resp_field(rows, 0, "worker_id"), WORKER); /* the certificate's CN */
    EXPECT_EQ_STR(resp_field(rows, 1, "access_token"), token);
    json_decref(rows);
    EXPECT_EQ_INT(poll_with(&fo3, token), 204);
    EXPECT_EQ_INT(poll_with(&fo3, "not-a-token"), 401);
    fx_close(x);
}

/* The client asked `want` times and has no request in flight. */
static int asked_and_idle(void *arg)
{
    struct fx *x = arg;
    return x->asked >= (int)x->want && http_pending(x->http) == 0;
}

/* A refusal elsewhere renews the token once per burst: a second refusal
 * while the renewal is under way, or soon after a renewal that failed,
 * asks nothing more; sts_credential_ok() brings the spacing back to its
 * first step, so that the next burst renews at once again. */
TEST(a_refusal_renews_once_per_burst_and_credential_ok_rearms_it)
{
    reset_fake(&fo14, 3600);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));

    /* Burst 1: two refusals while the renewal is in flight. */
    age_token(x);
    char before[256];
    snprintf(before, sizeof(before), "%s", tok(x));
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
    EXPECT_EQ_INT(x->asked, 2);
    EXPECT_EQ_INT(http_pending(x->http), 1);
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
    EXPECT_EQ_INT(x->asked, 2);
    EXPECT_EQ_INT(http_pending(x->http), 1);
    ASSERT(run_until_obtained(x, 2));
    EXPECT(strcmp(tok(x), before) != 0);
    sts_credential_ok(x->sts);

    /* Burst 2: the renewal fails (the orchestrator answers 503 to the
     * refresh): the refused token is dropped for the static one (refresh
     * once, then fall back, PROTOCOL-1.0b14.md 1.5) and the refresh token
     * kept; a refusal right after asks nothing. The spacing is at least
     * half of REFUSED_SPACING, far more than one loopback answer; a machine
     * too slow for that skips it. */
    age_token(x);
    json_decref(fo_request(&fo14, "POST", "/_test/fault", NULL,
                           "{\"kind\":\"sts\",\"count\":1,\"status\":503,\"body\":{}}", NULL));
    double t0 = now_mono();
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
    EXPECT_EQ_INT(x->asked, 3);
    x->want = 3;
    ASSERT(run_until(asked_and_idle, x, 30));
    EXPECT_EQ_INT(x->asked, 3);
    EXPECT(sts_token(x->sts) == NULL);
    EXPECT_EQ_INT(x->dropped, 1);
    EXPECT_EQ_STR(x->headers[0], "X-Worker-Token: " TOKEN);
    if (now_mono() - t0 < REFUSED_SPACING / 2) {
        EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
        EXPECT_EQ_INT(x->asked, 3);
        EXPECT_EQ_INT(http_pending(x->http), 0);
    } else {
        printf("# the second refusal of burst 2 came too late to check\n");
    }
    /* The client's own retry obtains the next one, with the refresh token. */
    ASSERT(run_until_obtained(x, 3));
    sts_credential_ok(x->sts);

    /* Burst 3: spaced as the first burst was, it renews at once. */
    age_token(x);
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
    EXPECT_EQ_INT(http_pending(x->http), 1);
    ASSERT(run_until_obtained(x, 4));

    json_t *rows = sts_log(&fo14);
    int ok;
    EXPECT_EQ_INT(count_rows(rows, PATH_TOKEN, 200, &ok), 1); /* the first */
    EXPECT_EQ_INT(ok, 1);
    /* bursts 1, 2 (failed), its retry, 3 */
    EXPECT_EQ_INT(count_rows(rows, PATH_REFRESH, 200, &ok), 4);
    EXPECT_EQ_INT(ok, 3);
    json_decref(rows);
    EXPECT_EQ_INT(x->first_done, 1);
    fx_close(x);
}

/* A token that was just obtained and is refused all the same is dropped:
 * the session goes on with its static token and nothing is asked. */
TEST(a_fresh_token_refused_is_dropped_for_the_static_one)
{
    reset_fake(&fo14, 3600);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));
    EXPECT_EQ_INT(x->adopted, 1);
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 0);
    EXPECT(sts_token(x->sts) == NULL);
    EXPECT_EQ_INT(x->adopted, 2);
    EXPECT_EQ_STR(x->headers[0], "X-Worker-Token: " TOKEN);
    EXPECT_EQ_INT(x->asked, 1);
    EXPECT_EQ_INT(http_pending(x->http), 0);
    fx_close(x);
}

/* The orchestrator forgot its tokens (a restart with MemoryStorage): the
 * refresh is refused (403), so the client asks the token route anew, with
 * the static token, not with the access token it can no longer use. */
TEST(a_forgotten_refresh_token_is_replaced_through_the_token_route)
{
    reset_fake(&fo14, 3600);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));
    char dead[256];
    snprintf(dead, sizeof(dead), "%s", tok(x));
    age_token(x);
    reset_fake(&fo14, 3600);
    EXPECT_EQ_INT(poll_with(&fo14, dead), 403);
    EXPECT_EQ_INT(sts_after_refusal(x->sts), 1);
    ASSERT(run_until_obtained(x, 2));
    EXPECT(strcmp(tok(x), dead) != 0);
    EXPECT_EQ_INT(poll_with(&fo14, tok(x)), 204);
    json_t *rows = sts_log(&fo14);
    ASSERT(json_array_size(rows) == 2);
    EXPECT_EQ_STR(row_path(json_array_get(rows, 0)), PATH_REFRESH);
    EXPECT_EQ_INT(json_integer_value(json_object_get(json_array_get(rows, 0), "status")), 403);
    EXPECT_EQ_STR(row_path(json_array_get(rows, 1)), PATH_TOKEN);
    EXPECT_EQ_STR(json_string_value(json_object_get(
                      json_object_get(json_array_get(rows, 1), "headers"), "X-Worker-Token")),
                  TOKEN);
    json_decref(rows);
    fx_close(x);
}

/* The orchestrator cannot answer across the token's expiry: a failure
 * before the expiry keeps the token, one after drops it for the static one
 * (an expired token is refused everywhere), and the refresh token, which a
 * 503 did not refuse, obtains the next one once the orchestrator is back. */
TEST(an_outage_across_the_expiry_falls_back_to_the_static_token)
{
    reset_fake(&fo14, 2);
    struct fx *x = fx_open(&fo14, "on", TOKEN, 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until_obtained(x, 1));
    /* The renewal at 1.6 s and its first retry (0.5-1 s later, after the
     * expiry at 2 s) are answered 503. */
    json_decref(fo_request(&fo14, "POST", "/_test/fault", NULL,
                           "{\"kind\":\"sts\",\"count\":2,\"status\":503,\"body\":{}}", NULL));
    ASSERT(run_until_obtained(x, 2));
    EXPECT_EQ_INT(x->dropped, 1);
    EXPECT_EQ_INT(x->adopted, 3); /* the first, the drop, the next */
    EXPECT_EQ_INT(poll_with(&fo14, tok(x)), 204);
    json_t *rows = sts_log(&fo14);
    int ok;
    EXPECT_EQ_INT(count_rows(rows, PATH_TOKEN, 200, &ok), 1);
    EXPECT_EQ_INT(count_rows(rows, PATH_REFRESH, 200, &ok), 3);
    EXPECT_EQ_INT(ok, 1);
    json_decref(rows);
    fx_close(x);
}

static int asked_more(void *arg)
{
    struct fx *x = arg;
    return x->asked > (int)x->want;
}

/* A wrong static token: the 1.0b14 fake refuses the token request (403). */
TEST(a_refused_token_request_still_ends_the_first_attempt_and_backs_off)
{
    reset_fake(&fo14, 3600);
    struct fx *x = fx_open(&fo14, "on", "wrong-token", 0, &rxon_b14);
    ASSERT(x != NULL);
    EXPECT_EQ_INT(sts_begin(x->sts), 1);
    ASSERT(run_until(first_answered, x, 30));
    EXPECT(sts_token(x->sts) == NULL);
    EXPECT_EQ_INT(x->adopted, 0);
    /* The retries wait 0.5-1 s, then 1-2 s, then 2-4 s: at most three
     * requests before two more seconds are over (a retry at once would make
     * hundreds). */
    run_loop(NULL, NULL, 2.0, 0);
    json_t *rows = sts_log(&fo14);
    int refused, n = count_rows(rows, PATH_TOKEN, 403, &refused);
    EXPECT(n >= 1);
    EXPECT(n <= 3);
    EXPECT(refused >= n - 1); /* the last may still be in flight */
    EXPECT_EQ_INT(count_rows(rows, PATH_REFRESH, 403, &refused), 0);
    json_decref(rows);
    /* It keeps asking, without a token, and first_done came once. */
    x->want = (unsigned long)x->asked;
    EXPECT(run_until(asked_more, x, 30));
    EXPECT(sts_token(x->sts) == NULL);
    EXPECT_EQ_INT(sts_tokens_obtained(x->sts), 0);
    EXPECT_EQ_INT(x->first_done, 1);
    fx_close(x);
}

/* ---- Setup ---------------------------------------------------------------------- */

static int spawn_wait(const char **argv)
{
    pid_t pid;
    int st;
    if (posix_spawn(&pid, argv[0], NULL, NULL, (char *const *)(void *)argv, environ) != 0)
        return -1;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return -1;
    return 0;
}

/* A CA, a server certificate for 127.0.0.1 and a client certificate whose
 * CN is the worker id, in pki/. */
static int make_pki(const char *py)
{
    snprintf(pki, sizeof(pki), "/tmp/avt-test-sts.XXXXXX");
    if (mkdtemp(pki) == NULL) {
        pki[0] = '\0';
        return -1;
    }
    snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
    snprintf(client_cert, sizeof(client_cert), "%s/client.pem", pki);
    snprintf(client_key, sizeof(client_key), "%s/client.key", pki);
    const char *argv[] = {py,
                          "-c",
                          "import sys; sys.path.insert(0, 'tests/integration'); import tlscerts; "
                          "tlscerts.make_pki(sys.argv[1], worker_id=sys.argv[2])",
                          pki,
                          WORKER,
                          NULL};
    return spawn_wait(argv);
}

static void remove_pki(void)
{
    char path[512];
    DIR *d = pki[0] != '\0' ? opendir(pki) : NULL;
    if (d == NULL)
        return;
    for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", pki, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(pki);
}

static void teardown(void)
{
    fx_close(&the_fx);
    if (loop != NULL)
        ev_loop_destroy(loop);
    fo_stop(&fo14);
    fo_stop(&fo3);
    remove_pki();
}

static void bail_out(const char *why)
{
    printf("Bail out! %s\n", why);
    teardown();
    exit(1);
}

__attribute__((constructor)) static void setup(void)
{
    char py[256], server_cert[128], server_key[128];
    log_set_level(getenv("AVT_TEST_LOG") ? LOG_DEBUG : LOG_EMERG);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(py, sizeof(py), "%s", getenv("PYTHON") ? getenv("PYTHON") : "/usr/bin/python3");
    if (make_pki(py) < 0)
        bail_out("cannot make the test PKI with tests/integration/tlscerts.py");
    snprintf(server_cert, sizeof(server_cert), "%s/server.pem", pki);
    snprintf(server_key, sizeof(server_key), "%s/server.key", pki);
    if (fo_start(&fo14,
                 (const char *const[]){"--protocol", "1.0b14", "--poll-timeout", "0.2", NULL}) < 0)
        bail_out("cannot start tests/orchestrator/fakeorch.py --protocol 1.0b14");
    if (fo_start(&fo3, (const char *const[]){"--protocol", "1.0b3", "--poll-timeout", "0.2",
                                             "--tls-cert", server_cert, "--tls-key", server_key,
                                             "--tls-ca", ca, NULL}) < 0)
        bail_out("cannot start tests/orchestrator/fakeorch.py with TLS");
    fo3.ca_file = ca;
    long port = strtol(strrchr(fo3.base, ':') + 1, NULL, 10);
    snprintf(fo3.base, sizeof(fo3.base), "https://127.0.0.1:%ld", port);
    loop = ev_loop_new(EVFLAG_AUTO);
    atexit(teardown);
}

TAP_MAIN()
