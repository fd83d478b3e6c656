/*
 * test_ws.c - the WebSocket client: framing (encode/parse round trips,
 * every protocol error, truncation at every byte), SHA-1/base64 and the
 * handshake key, then live tests against tests/unit/ws_test_server.py (an
 * aiohttp server started as a child) through a real libev loop and the
 * http module's http_connect_only().
 */
#include "ws.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "tap.h"
#include "util.h"

extern char **environ;

/* ---- SHA-1, base64, Sec-WebSocket-Accept ---- */

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", p[i]);
    }
}

static void expect_sha1(const void *data, size_t len, const char *want)
{
    uint8_t d[20];
    char got[41];
    ws_sha1(data, len, d);
    hex(d, sizeof(d), got);
    EXPECT_EQ_STR(got, want);
}

TEST(sha1_vectors)
{
    /* FIPS 180 examples, and lengths around the padding boundary
     * (references from Python's hashlib). */
    expect_sha1("", 0, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    expect_sha1("abc", 3, "a9993e364706816aba3e25717850c26c9cd0d89d");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    expect_sha1(two, strlen(two), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    char a[1000];
    memset(a, 'a', sizeof(a));
    expect_sha1(a, 55, "c1c8bbdc22796e28c0e15163d20899b65621d65a");
    expect_sha1(a, 56, "c2db330f6083854c99d4b5bfb6e8f29f201be699");
    expect_sha1(a, 63, "03f09f5b158a7a8cdad920bddc29b81c18a551f5");
    expect_sha1(a, 64, "0098ba824b5c16427bd7a1122a5a442a25ec644d");
    expect_sha1(a, 65, "11655326c708d70319be2610e8a57d9a5b959d3b");
    expect_sha1(a, 1000, "291e9a6c66994949b57ba5e650361e98fc36b1ba");
}

TEST(sha1_million_a)
{
    char *a = xmalloc(1000000);
    memset(a, 'a', 1000000);
    expect_sha1(a, 1000000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    free(a);
}

TEST(base64_rfc4648)
{
    static const char *const want[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                       "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[16];
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        size_t n = ws_base64((const uint8_t *)"foobar", i, out);
        EXPECT_EQ_STR(out, want[i]);
        EXPECT_EQ_INT(n, strlen(want[i]));
    }
    const uint8_t bin[3] = {0xfb, 0xff, 0x00};
    ws_base64(bin, 3, out);
    EXPECT_EQ_STR(out, "+/8A");
}

TEST(accept_key_rfc6455_sample)
{
    /* RFC 6455 section 1.3 (Python's hashlib agrees). */
    char out[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    EXPECT_EQ_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

/* ---- framing ---- */

static const uint8_t mask_k[4] = {0x37, 0xfa, 0x21, 0x3d};

static uint8_t *pattern(size_t n)
{
    uint8_t *p = xmalloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(i * 7 + 3);
    }
    return p;
}

/* Encode, check the length form, parse back; masked or not. */
static void round_trip(size_t len, int masked)
{
    uint8_t *payload = pattern(len);
    uint8_t *buf = xmalloc(len + 14);
    size_t n = ws_frame_encode(buf, WS_OP_TEXT, payload, len, masked ? mask_k : NULL);
    size_t hlen = (len < 126 ? 2 : len <= 0xffff ? 4 : 10) + (masked ? 4 : 0);
    EXPECT_EQ_INT(n, hlen + len);
    EXPECT_EQ_INT(buf[0], 0x81);
    EXPECT_EQ_INT(buf[1] >> 7, masked);
    EXPECT_EQ_INT(buf[1] & 0x7f, len < 126 ? (int)len : len <= 0xffff ? 126 : 127);
    if (masked && len > 0) {
        EXPECT_EQ_INT(buf[hlen], payload[0] ^ mask_k[0]);
    }
    struct ws_frame f;
    EXPECT_EQ_INT(ws_frame_parse(buf, n, len, &f), n);
    EXPECT_EQ_INT(f.fin, 1);
    EXPECT_EQ_INT(f.opcode, WS_OP_TEXT);
    EXPECT_EQ_INT(f.masked, masked);
    EXPECT_EQ_INT(f.len, len);
    EXPECT(len == 0 || memcmp(f.payload, payload, len) == 0);
    if (len > 0) {
        EXPECT_EQ_INT(ws_frame_parse(buf, n, len - 1, &f), -EPROTO);
    }
    free(buf);
    free(payload);
}

TEST(frame_round_trips)
{
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        round_trip(lens[i], 1);
        round_trip(lens[i], 0);
    }
}

/* Every proper prefix of a frame needs more bytes and leaves it intact;
 * the buffer is exactly as long as the prefix so ASan sees any overread. */
static void truncations(size_t len, int masked)
{
    uint8_t *payload = pattern(len);
    uint8_t *full = xmalloc(len + 14);
    size_t n = ws_frame_encode(full, WS_OP_BINARY, payload, len, masked ? mask_k : NULL);
    for (size_t k = 0; k < n; k++) {
        uint8_t *part = xmalloc(k ? k : 1);
        memcpy(part, full, k);
        struct ws_frame f;
        long rc = ws_frame_parse(part, k, SIZE_MAX, &f);
        if (rc != 0) {
            TAP_FAIL_("len %zu masked %d: prefix %zu parsed as %ld", len, masked, k, rc);
            free(part);
            break;
        }
        EXPECT(k == 0 || memcmp(part, full, k) == 0);
        free(part);
    }
    free(full);
    free(payload);
}

TEST(frame_truncated_at_every_byte)
{
    static const size_t lens[] = {0, 5, 125, 126, 300, 65536};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        truncations(lens[i], 1);
        truncations(lens[i], 0);
    }
}

/* Parse a copy of the bytes in a buffer of exactly their size. */
static long parse_bytes(const uint8_t *bytes, size_t n, size_t max_len)
{
    uint8_t *copy = xmalloc(n ? n : 1);
    memcpy(copy, bytes, n);
    struct ws_frame f;
    long rc = ws_frame_parse(copy, n, max_len, &f);
    free(copy);
    return rc;
}

#define PARSE(max, ...)                                                                            \
    parse_bytes((const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}), (max))

TEST(frame_protocol_errors)
{
    /* Reserved bits, each alone; detected from the first byte. */
    EXPECT_EQ_INT(PARSE(100, 0xc1), -EPROTO);
    EXPECT_EQ_INT(PARSE(100, 0xa1, 0x00), -EPROTO);
    EXPECT_EQ_INT(PARSE(100, 0x91, 0x00), -EPROTO);
    /* "HTTP/1.1 401": 'H' has RSV1 set (Avtomatika's bad-token answer). */
    EXPECT_EQ_INT(PARSE(100, 'H', 'T', 'T', 'P'), -EPROTO);
    /* Reserved opcodes 3-7 and 0xB-0xF. */
    for (int op = 3; op <= 7; op++) {
        EXPECT_EQ_INT(PARSE(100, (uint8_t)(0x80 | op), 0x00), -EPROTO);
    }
    for (int op = 0xb; op <= 0xf; op++) {
        EXPECT_EQ_INT(PARSE(100, (uint8_t)(0x80 | op), 0x00), -EPROTO);
    }
    /* Fragmented control frames. */
    EXPECT_EQ_INT(PARSE(100, 0x09, 0x00), -EPROTO);
    EXPECT_EQ_INT(PARSE(100, 0x08, 0x00), -EPROTO);
    EXPECT_EQ_INT(PARSE(100, 0x0a, 0x00), -EPROTO);
    /* Control frames over 125 bytes, in each length form. */
    EXPECT_EQ_INT(PARSE(1000, 0x89, 126, 0x00, 0x7e), -EPROTO);
    EXPECT_EQ_INT(PARSE(1000, 0x88, 127, 0, 0, 0, 0, 0, 0, 0, 5), -EPROTO);
    /* 64-bit length with the most significant bit set. */
    EXPECT_EQ_INT(PARSE(SIZE_MAX, 0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1), -EPROTO);
    EXPECT_EQ_INT(PARSE(SIZE_MAX, 0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
                  -EPROTO);
    /* Payload over max_len, known from the header before the payload. */
    EXPECT_EQ_INT(PARSE(10, 0x81, 11), -EPROTO);
    EXPECT_EQ_INT(PARSE(1000, 0x81, 126, 0x03, 0xe9), -EPROTO);
    EXPECT_EQ_INT(PARSE(65536, 0x81, 127, 0, 0, 0, 0, 0, 1, 0, 1), -EPROTO);
    EXPECT_EQ_INT(PARSE(SIZE_MAX, 0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
                  -EPROTO);
    /* ...but exactly max_len is fine (and needs its payload). */
    EXPECT_EQ_INT(PARSE(11, 0x81, 11), 0);
}

TEST(frame_lenient_forms)
{
    /* A non-minimal length form is accepted (RFC 6455 says MUST use the
     * minimal one; rejecting it buys nothing). */
    EXPECT_EQ_INT(PARSE(100, 0x81, 126, 0x00, 0x02, 'h', 'i'), 6);
    EXPECT_EQ_INT(PARSE(100, 0x81, 127, 0, 0, 0, 0, 0, 0, 0, 2, 'h', 'i'), 12);
    /* Control frames of exactly 125 bytes. */
    uint8_t buf[127] = {0x89, 125};
    struct ws_frame f;
    EXPECT_EQ_INT(ws_frame_parse(buf, sizeof(buf), 125, &f), 127);
    EXPECT_EQ_INT(f.opcode, WS_OP_PING);
    /* Trailing bytes after a frame are left alone. */
    EXPECT_EQ_INT(PARSE(100, 0x8a, 0x00, 0x81), 2);
}

TEST(frame_fragments_and_control)
{
    /* TEXT(fin=0) "Hel", PING "x", CONT(fin=0) "lo ", CONT(fin=1) "you". */
    static const uint8_t seq[] = {0x01, 3,   'H', 'e', 'l',  0x89, 1,   'x', 0x00,
                                  3,    'l', 'o', ' ', 0x80, 3,    'y', 'o', 'u'};
    uint8_t buf[sizeof(seq)];
    memcpy(buf, seq, sizeof(seq));
    static const int want_op[] = {WS_OP_TEXT, WS_OP_PING, WS_OP_CONT, WS_OP_CONT};
    static const int want_fin[] = {0, 1, 0, 1};
    static const char *const want_payload[] = {"Hel", "x", "lo ", "you"};
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        struct ws_frame f;
        long n = ws_frame_parse(buf + off, sizeof(buf) - off, 100, &f);
        ASSERT(n > 0);
        EXPECT_EQ_INT(f.opcode, want_op[i]);
        EXPECT_EQ_INT(f.fin, want_fin[i]);
        EXPECT_EQ_INT(f.len, strlen(want_payload[i]));
        EXPECT(memcmp(f.payload, want_payload[i], f.len) == 0);
        off += (size_t)n;
    }
    EXPECT_EQ_INT(off, sizeof(buf));
    /* Close, ping and pong encode as masked control frames. */
    uint8_t out[32];
    EXPECT_EQ_INT(ws_frame_encode(out, WS_OP_CLOSE, (const uint8_t *)"\x03\xe8", 2, mask_k), 8);
    EXPECT_EQ_INT(out[0], 0x88);
    EXPECT_EQ_INT(out[1], 0x82);
    EXPECT_EQ_INT(ws_frame_encode(out, WS_OP_PING, NULL, 0, mask_k), 6);
    EXPECT_EQ_INT(out[0], 0x89);
    EXPECT_EQ_INT(ws_frame_encode(out, WS_OP_PONG, NULL, 0, NULL), 2);
    EXPECT_EQ_INT(out[0], 0x8a);
    EXPECT_EQ_INT(out[1], 0x00);
}

TEST(frame_parse_random_input)
{
    /* A small deterministic fuzz: never a crash, never more than len. */
    uint64_t x = 88172645463325252u;
    for (int iter = 0; iter < 20000; iter++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t len = x % 40;
        uint8_t *b = xmalloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            b[i] = (uint8_t)x;
        }
        if (len > 1 && (x & 1)) {
            b[1] &= 0x7f; /* plenty of short frames that parse */
        }
        struct ws_frame f;
        long rc = ws_frame_parse(b, len, (x >> 8) % 64, &f);
        if (rc > (long)len || (rc < 0 && rc != -EPROTO)) {
            TAP_FAIL_("iteration %d: rc %ld for %zu bytes", iter, rc, len);
        }
        if (rc > 0 && (f.payload < b || f.payload + f.len > b + rc)) {
            TAP_FAIL_("iteration %d: payload outside the frame", iter);
        }
        free(b);
    }
}

/* ---- live tests against ws_test_server.py ---- */

struct server {
    pid_t pid;
    int port;
    int stdin_fd; /* the server exits at EOF on its stdin */
};

static struct server plain_server, tls_server;
static char tls_dir[64];

static double tmo(double secs)
{
    const char *m = getenv("TIMEOUT_MULT");
    double mult = m != NULL ? strtod(m, NULL) : 1.0;
    return secs * (mult > 0 ? mult : 1.0);
}

static void stop_server(struct server *s)
{
    if (s->pid <= 0) {
        return;
    }
    close(s->stdin_fd);
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static void stop_servers(void)
{
    stop_server(&plain_server);
    stop_server(&tls_server);
    if (tls_dir[0] != '\0') {
        char path[128];
        snprintf(path, sizeof(path), "%s/cert.pem", tls_dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/key.pem", tls_dir);
        unlink(path);
        rmdir(tls_dir);
    }
}

/* Read "PORT n" from fd within a few seconds. */
static int read_port(int fd)
{
    char line[64];
    size_t n = 0;
    while (n < sizeof(line) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(tmo(15) * 1000)) <= 0) {
            return -1;
        }
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0) {
            return -1;
        }
        if (line[n++] == '\n') {
            break;
        }
    }
    line[n] = '\0';
    int port = 0;
    return sscanf(line, "PORT %d", &port) == 1 ? port : -1;
}

/* Start ws_test_server.py (with TLS when tls_arg is a directory). */
static int spawn_server(struct server *s, char *tls_arg)
{
    int out[2], in[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0) {
        return -1;
    }
    char py[256], script[] = "tests/unit/ws_test_server.py", opt[] = "--tls";
    snprintf(py, sizeof(py), "%s", getenv("PYTHON") ? getenv("PYTHON") : "/usr/bin/python3");
    char *argv[] = {py, script, tls_arg ? opt : NULL, tls_arg, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    int rc = posix_spawn(&s->pid, py, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(in[0]);
    s->stdin_fd = in[1];
    if (rc != 0) {
        s->pid = 0;
        close(out[0]);
        close(in[1]);
        return -1;
    }
    s->port = read_port(out[0]);
    close(out[0]);
    return s->port > 0 ? 0 : -1;
}

static int start_server(void)
{
    static int registered;
    if (!registered) {
        atexit(stop_servers);
        registered = 1;
    }
    if (plain_server.port > 0) {
        return 0;
    }
    return spawn_server(&plain_server, NULL);
}

static int start_tls_server(void)
{
    if (start_server() < 0) {
        return -1;
    }
    if (tls_server.port > 0) {
        return 0;
    }
    snprintf(tls_dir, sizeof(tls_dir), "/tmp/avt-ws-tls.XXXXXX");
    if (mkdtemp(tls_dir) == NULL) {
        tls_dir[0] = '\0';
        return -1;
    }
    return spawn_server(&tls_server, tls_dir);
}

struct live {
    struct ev_loop *loop;
    struct http *http;
    struct ws *ws;
    int opened, closed, code, auth_failed, ntext;
    char reason[256];
    char *text; /* the last message */
    size_t text_len;
    int destroy_on_text;    /* on_text calls ws_destroy() */
    int reconnect_on_close; /* on_close calls ws_connect() */
};

static void on_open(void *arg)
{
    struct live *l = arg;
    l->opened++;
}

static void on_text(void *arg, const char *msg, size_t len)
{
    struct live *l = arg;
    l->ntext++;
    free(l->text);
    l->text = xmalloc(len + 1);
    memcpy(l->text, msg, len + 1); /* msg[len] must be the NUL */
    l->text_len = len;
    if (l->destroy_on_text) {
        ws_destroy(l->ws);
        l->ws = NULL;
    }
}

static void on_close(void *arg, int code, const char *reason, int auth_failed)
{
    struct live *l = arg;
    l->closed++;
    l->code = code;
    l->auth_failed = auth_failed;
    snprintf(l->reason, sizeof(l->reason), "%s", reason);
    if (l->reconnect_on_close) {
        l->reconnect_on_close = 0;
        EXPECT_EQ_INT(ws_connect(l->ws), 0);
    }
}

static const struct ws_callbacks live_cb = {on_open, on_text, on_close};

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    *(int *)t->data = 1;
}

/* Run the loop until *flag >= want or secs (scaled) pass; 1 when reached. */
static int run_until(struct live *l, const int *flag, int want, double secs)
{
    int expired = 0;
    ev_timer t;
    ev_timer_init(&t, deadline_cb, tmo(secs), 0.);
    t.data = &expired;
    ev_timer_start(l->loop, &t);
    while (*flag < want && !expired) {
        ev_run(l->loop, EVRUN_ONCE);
    }
    ev_timer_stop(l->loop, &t);
    return *flag >= want;
}

/* Run the loop for secs (unscaled): for checks that nothing happens. */
static void run_for(struct live *l, double secs)
{
    int expired = 0;
    ev_timer t;
    ev_timer_init(&t, deadline_cb, secs, 0.);
    t.data = &expired;
    ev_timer_start(l->loop, &t);
    while (!expired) {
        ev_run(l->loop, EVRUN_ONCE);
    }
}

/* Create the loop, the http client and the ws object for path on the
 * plain server, or with tls on the TLS one (trusting its certificate). */
static int live_open_on(struct live *l, const char *path, size_t max_message, int tls)
{
    memset(l, 0, sizeof(*l));
    if ((tls ? start_tls_server() : start_server()) < 0) {
        return -1;
    }
    char ca[128];
    snprintf(ca, sizeof(ca), "%s/cert.pem", tls_dir);
    struct http_opts opts = {.ca_file = tls ? ca : NULL};
    l->loop = ev_loop_new(EVFLAG_AUTO);
    l->http = http_create(l->loop, &opts);
    char url[128];
    snprintf(url, sizeof(url), "%s://127.0.0.1:%d%s", tls ? "wss" : "ws",
             tls ? tls_server.port : plain_server.port, path);
    static const char *const headers[] = {"X-Worker-Token: secret-token", "X-RXON-Version: 1.0b3",
                                          NULL};
    l->ws = ws_create(l->loop, l->http, url, headers, max_message, &live_cb, l);
    return l->ws != NULL ? 0 : -1;
}

static int live_open(struct live *l, const char *path, size_t max_message)
{
    return live_open_on(l, path, max_message, 0);
}

static void live_finish(struct live *l)
{
    ws_destroy(l->ws);
    http_destroy(l->http);
    ev_loop_destroy(l->loop);
    free(l->text);
}

/* Connect and wait for on_open. */
static int live_connect(struct live *l)
{
    return ws_connect(l->ws) == 0 && run_until(l, &l->opened, l->opened + 1, 10) ? 0 : -1;
}

/* Send msg and wait for the next text message. */
static int exchange(struct live *l, const char *msg)
{
    int want = l->ntext + 1;
    if (ws_send_text(l->ws, msg, strlen(msg)) != 0) {
        return -1;
    }
    return run_until(l, &l->ntext, want, 10) ? 0 : -1;
}

TEST(live_echo_and_headers)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 0) == 0);
    EXPECT_EQ_INT(ws_send_text(l.ws, "x", 1), -ENOTCONN);
    ASSERT(live_connect(&l) == 0);
    EXPECT(ws_is_open(l.ws));
    EXPECT_EQ_INT(ws_connect(l.ws), -EALREADY);
    ASSERT(exchange(&l, "hello, world") == 0);
    EXPECT_EQ_STR(l.text, "hello, world");
    ASSERT(exchange(&l, "token") == 0);
    EXPECT_EQ_STR(l.text, "token=secret-token;rxon=1.0b3");
    /* An empty message and one needing the 64-bit length form. */
    ASSERT(exchange(&l, "") == 0);
    EXPECT_EQ_INT(l.text_len, 0);
    char *big = xmalloc(70001);
    memset(big, 'z', 70000);
    big[70000] = '\0';
    ASSERT(exchange(&l, big) == 0);
    EXPECT_EQ_INT(l.text_len, 70000);
    EXPECT(strcmp(l.text, big) == 0);
    free(big);
    EXPECT_EQ_INT(l.closed, 0);
    live_finish(&l);
}

TEST(live_server_push)
{
    struct live l;
    ASSERT(live_open(&l, "/push", 0) == 0);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.ntext, 1, 10));
    EXPECT_EQ_INT(l.opened, 1);
    EXPECT_EQ_STR(l.text, "hello from server");
    live_finish(&l);
}

TEST(live_server_close_with_code)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 0) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(ws_send_text(l.ws, "close 4001 bye now", 18) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 4001);
    EXPECT_EQ_STR(l.reason, "bye now");
    EXPECT_EQ_INT(l.auth_failed, 0);
    EXPECT(!ws_is_open(l.ws));
    EXPECT_EQ_INT(ws_send_text(l.ws, "x", 1), -ENOTCONN);
    live_finish(&l);
}

TEST(live_large_fragmented_message)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 300000) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(exchange(&l, "big 200000 ping") == 0);
    ASSERT(l.text_len == 200000);
    int ok = 1;
    for (size_t i = 0; i < l.text_len; i++) {
        ok &= l.text[i] == (char)('a' + i % 26);
    }
    EXPECT(ok);
    /* The pings between the fragments were answered and the socket works. */
    ASSERT(exchange(&l, "still there") == 0);
    EXPECT_EQ_STR(l.text, "still there");
    live_finish(&l);
}

TEST(live_message_too_big_then_reconnect)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 100000) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(ws_send_text(l.ws, "big 200000", 10) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1009);
    EXPECT_EQ_INT(l.auth_failed, 0);
    EXPECT_EQ_INT(l.ntext, 0);
    /* The same object connects again; the server saw our 1009. */
    ASSERT(live_connect(&l) == 0);
    ASSERT(exchange(&l, "last_close") == 0);
    EXPECT_EQ_STR(l.text, "1009");
    live_finish(&l);
}

TEST(live_bad_token_101_then_http_401)
{
    struct live l;
    ASSERT(live_open(&l, "/authfail", 0) == 0);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 1);
    EXPECT_CONTAINS(l.reason, "HTTP/1.1 401");
    live_finish(&l);
}

TEST(live_handshake_403)
{
    struct live l;
    ASSERT(live_open(&l, "/forbidden", 0) == 0);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.opened, 0);
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 1);
    EXPECT_CONTAINS(l.reason, "handshake answered 403");
    live_finish(&l);
}

TEST(live_close_right_after_101)
{
    struct live l;
    ASSERT(live_open(&l, "/dropnow", 0) == 0);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 1);
    live_finish(&l);
}

TEST(live_server_drops_tcp)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 0) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(ws_send_text(l.ws, "drop", 4) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_STR(l.text, "dropping");
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 0); /* a valid frame came first */
    live_finish(&l);
}

TEST(live_client_close_and_reconnect)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 0) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(exchange(&l, "one") == 0);
    ws_close(l.ws);
    EXPECT(!ws_is_open(l.ws));
    ws_close(l.ws); /* closing an idle object is a no-op */
    run_for(&l, 0.2);
    EXPECT_EQ_INT(l.closed, 0);
    ASSERT(live_connect(&l) == 0);
    EXPECT_EQ_INT(l.opened, 2);
    ASSERT(exchange(&l, "last_close") == 0);
    EXPECT_EQ_STR(l.text, "1000");
    live_finish(&l);
}

TEST(live_ping_pong_keeps_socket)
{
    struct live l;
    ASSERT(live_open(&l, "/echo", 0) == 0);
    ws_set_timeouts(l.ws, 0.05, tmo(1), -1);
    ASSERT(live_connect(&l) == 0);
    run_for(&l, 0.5); /* about ten pings, each answered */
    EXPECT_EQ_INT(l.closed, 0);
    ASSERT(exchange(&l, "after pings") == 0);
    EXPECT_EQ_STR(l.text, "after pings");
    live_finish(&l);
}

TEST(live_ping_timeout)
{
    struct live l;
    ASSERT(live_open(&l, "/noping", 0) == 0);
    ws_set_timeouts(l.ws, 0.1, 0.2, -1);
    ASSERT(live_connect(&l) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_STR(l.reason, "ping timeout");
    EXPECT_EQ_INT(l.auth_failed, 0);
    live_finish(&l);
}

TEST(live_bad_accept)
{
    struct live l;
    ASSERT(live_open(&l, "/badaccept", 0) == 0);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.opened, 0);
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 0);
    EXPECT_CONTAINS(l.reason, "Sec-WebSocket-Accept");
    live_finish(&l);
}

TEST(live_handshake_timeout)
{
    struct live l;
    ASSERT(live_open(&l, "/silent", 0) == 0);
    ws_set_timeouts(l.ws, -1, -1, 0.3);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_STR(l.reason, "handshake timed out");
    live_finish(&l);
}

TEST(live_connect_refused)
{
    struct live l;
    ASSERT(start_server() == 0);
    memset(&l, 0, sizeof(l));
    l.loop = ev_loop_new(EVFLAG_AUTO);
    l.http = http_create(l.loop, NULL);
    /* Port 1 on loopback: nothing listens there. */
    l.ws = ws_create(l.loop, l.http, "http://127.0.0.1:1/_worker/ws/w1", NULL, 0, &live_cb, &l);
    ASSERT(l.ws != NULL);
    ASSERT(ws_connect(l.ws) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 1006);
    EXPECT_EQ_INT(l.auth_failed, 0);
    EXPECT_CONTAINS(l.reason, "connect failed");
    live_finish(&l);
}

/* After one good exchange, the server writes raw bytes; each must end the
 * connection with on_close(code), and the server must see our close code. */
TEST(live_protocol_errors)
{
    static const struct {
        const char *hex;
        int code;
    } cases[] = {
        {"81850102030469676f686e", 1002}, /* masked frame from the server */
        {"c100", 1002},                   /* RSV1 */
        {"830100", 1002},                 /* reserved opcode */
        {"800161", 1002},                 /* continuation outside a message */
        {"010161810162", 1002},           /* new message inside a fragmented one */
        {"880103", 1002},                 /* close with a 1-byte payload */
        {"880203e7", 1002},               /* close code 999 */
        {"8a7e0080", 1002},               /* control frame over 125 bytes */
        {"817f0000000000100000", 1009},   /* 1 MiB text frame over max_message */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct live l;
        ASSERT(live_open(&l, "/echo", 65536) == 0);
        ASSERT(live_connect(&l) == 0);
        ASSERT(exchange(&l, "valid frame first") == 0);
        char cmd[64];
        snprintf(cmd, sizeof(cmd), "raw %s", cases[i].hex);
        ASSERT(ws_send_text(l.ws, cmd, strlen(cmd)) == 0);
        if (!run_until(&l, &l.closed, 1, 10)) {
            TAP_FAIL_("%s: no on_close", cases[i].hex);
        }
        if (l.code != cases[i].code || l.auth_failed) {
            TAP_FAIL_("%s: code %d auth %d (%s)", cases[i].hex, l.code, l.auth_failed, l.reason);
        }
        ASSERT(live_connect(&l) == 0);
        ASSERT(exchange(&l, "last_close") == 0);
        char want[16];
        snprintf(want, sizeof(want), "%d", cases[i].code);
        EXPECT_EQ_STR(l.text, want);
        live_finish(&l);
    }
}

TEST(live_destroy_and_reconnect_from_callbacks)
{
    struct live l;
    ASSERT(live_open(&l, "/push", 0) == 0);
    /* on_close reconnects at once; the new connection's push arrives. */
    l.reconnect_on_close = 1;
    ASSERT(live_connect(&l) == 0);
    ASSERT(run_until(&l, &l.ntext, 1, 10));
    ASSERT(ws_send_text(l.ws, "close 1000 again", 16) == 0);
    ASSERT(run_until(&l, &l.ntext, 2, 10));
    EXPECT_EQ_INT(l.closed, 1);
    EXPECT_EQ_INT(l.opened, 2);
    /* on_text destroys the object in the middle of reading. */
    l.destroy_on_text = 1;
    ASSERT(ws_send_text(l.ws, "a", 1) == 0);
    ASSERT(ws_send_text(l.ws, "b", 1) == 0);
    ASSERT(run_until(&l, &l.ntext, 3, 10));
    EXPECT(l.ws == NULL);
    run_for(&l, 0.1);
    EXPECT_EQ_INT(l.ntext, 3);
    live_finish(&l);
}

TEST(live_tls)
{
    /* wss: the same client over libcurl's TLS, including a message larger
     * than one read, so decrypted bytes wait inside the TLS layer. */
    struct live l;
    ASSERT(live_open_on(&l, "/echo", 300000, 1) == 0);
    ASSERT(live_connect(&l) == 0);
    ASSERT(exchange(&l, "token") == 0);
    EXPECT_EQ_STR(l.text, "token=secret-token;rxon=1.0b3");
    ASSERT(exchange(&l, "big 200000 ping") == 0);
    EXPECT_EQ_INT(l.text_len, 200000);
    EXPECT(l.text_len > 0 && l.text[199999] == (char)('a' + 199999 % 26));
    ASSERT(ws_send_text(l.ws, "close 4002 tls bye", 18) == 0);
    ASSERT(run_until(&l, &l.closed, 1, 10));
    EXPECT_EQ_INT(l.code, 4002);
    EXPECT_EQ_STR(l.reason, "tls bye");
    live_finish(&l);
}

TEST(create_rejects_bad_input)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int saved = log_level;
    log_set_level(LOG_CRIT); /* the rejections are logged at LOG_ERR */
    EXPECT(ws_create(loop, NULL, "ftp://h/x", NULL, 0, &live_cb, NULL) == NULL);
    EXPECT(ws_create(loop, NULL, "ws:///x", NULL, 0, &live_cb, NULL) == NULL);
    static const char *const bad[] = {"X-Worker-Token: a\r\nX-Evil: 1", NULL};
    EXPECT(ws_create(loop, NULL, "ws://h/x", bad, 0, &live_cb, NULL) == NULL);
    log_set_level(saved);
    struct ws *w = ws_create(loop, NULL, "wss://h:8443?x=1", NULL, 0, &live_cb, NULL);
    EXPECT(w != NULL);
    EXPECT(!ws_is_open(w));
    EXPECT(!ws_is_open(NULL));
    EXPECT_EQ_INT(ws_send_text(NULL, "x", 1), -ENOTCONN);
    ws_close(NULL);
    ws_destroy(w);
    ws_destroy(NULL);
    ev_loop_destroy(loop);
}

TAP_MAIN()
