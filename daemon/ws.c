/*
 * ws.c - a minimal RFC 6455 WebSocket client for the orchestrator's
 * /_worker/ws/{worker_id} endpoint, driven by the libev loop.
 *
 * libcurl 7.88 has no WebSocket API, so the connection (TCP or TLS) comes
 * from http_connect_only() and this module speaks the protocol itself over
 * curl_easy_send/curl_easy_recv, with one ev_io watcher on the socket
 * (EV_READ always, EV_WRITE while output is queued) and one ev_timer that
 * limits the handshake and drives the keep-alive pings.
 *
 * Life of a connection: IDLE -> CONNECTING (http_connect_only outstanding)
 * -> HANDSHAKE (request queued, answer being read) -> OPEN -> IDLE. Every
 * way back to IDLE goes through teardown(), which bumps `gen`; code that
 * calls a user callback checks `gen` afterwards and stops touching the
 * connection when it changed (the callback closed, reconnected or destroyed
 * the object). ws_destroy() inside a callback only marks the object; the
 * outermost event handler frees it (`busy` counts the nesting).
 *
 * Received bytes go to `in`; complete frames are parsed in place and data
 * frames appended to `msg` until FIN. ws_frame_parse() rejects a frame as
 * soon as its header is complete and announces more than max_message bytes,
 * so `in` never holds more than one maximal frame plus one read.
 */
#include "ws.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>
#include <ev.h>
#include <openssl/evp.h>

#include "http.h"
#include "log.h"
#include "util.h"

#define WS_DEFAULT_MAX_MESSAGE (1024 * 1024)
#define WS_MAX_HANDSHAKE 8192 /* bytes of the 101 answer's head */
#define WS_READ_CHUNK 16384   /* bytes asked of curl_easy_recv at a time */
#define WS_READS_PER_EVENT 64 /* then yield to the loop (ev_feed_event) */
#define WS_AUTH_WINDOW 2.0    /* seconds after the 101, see auth_failed */
#define WS_REASON_LEN 192

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum ws_state { WS_IDLE, WS_CONNECTING, WS_HANDSHAKE, WS_OPEN };

struct buf {
    uint8_t *data;
    size_t len, cap;
};

struct ws {
    struct ev_loop *loop;
    struct http *http;
    char *connect_url; /* http(s)://authority/ for http_connect_only */
    char *host;        /* Host header */
    char *path;        /* request target */
    char **headers;
    size_t max_message;
    struct ws_callbacks cb;
    void *arg;
    double ping_interval, pong_timeout, connect_timeout;

    enum ws_state state;
    unsigned gen;  /* bumped by every teardown */
    int busy;      /* event handlers on the stack */
    int destroyed; /* ws_destroy() ran while busy */
    struct http_req *req;
    CURL *easy;
    ev_io io;
    int io_events;
    ev_timer timer;
    int awaiting_pong;
    char accept[29];  /* the Sec-WebSocket-Accept we expect */
    double opened_at; /* ev_now() of the 101 */
    int got_frame;    /* a valid frame arrived on this connection */

    struct buf in;  /* received, not yet parsed */
    struct buf out; /* queued; out_off bytes of it are sent */
    size_t out_off;
    struct buf msg; /* data message being reassembled */
    int msg_op;     /* its opcode, 0 when none */
};

static void io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

/* ---- SHA-1 and base64, for Sec-WebSocket-Accept (OpenSSL's) ---- */

void ws_sha1(const void *data, size_t len, uint8_t out[20])
{
    if (EVP_Digest(data, len, out, NULL, EVP_sha1(), NULL) != 1)
        abort(); /* SHA-1 of a buffer in memory cannot fail but for OOM */
}

size_t ws_base64(const uint8_t *in, size_t len, char *out)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

void ws_accept_key(const char *key, char out[29])
{
    uint8_t digest[20];
    char *cat = xasprintf("%s%s", key, ws_guid);
    ws_sha1(cat, strlen(cat), digest);
    free(cat);
    ws_base64(digest, sizeof(digest), out);
}

/* ---- framing ---- */

struct frame_hdr {
    int fin, opcode, masked;
    size_t hlen;   /* header bytes, mask included */
    uint64_t plen; /* payload bytes */
};

static int opcode_valid(int op)
{
    return op == WS_OP_CONT || op == WS_OP_TEXT || op == WS_OP_BINARY || op == WS_OP_CLOSE ||
           op == WS_OP_PING || op == WS_OP_PONG;
}

/* Parse a frame header: > 0 when complete (h filled), 0 when more bytes are
 * needed, -EPROTO when what is there already breaks RFC 6455. */
static int frame_header(const uint8_t *buf, size_t len, struct frame_hdr *h)
{
    if (len < 1) {
        return 0;
    }
    h->fin = buf[0] >> 7;
    h->opcode = buf[0] & 0x0f;
    if ((buf[0] & 0x70) != 0 || !opcode_valid(h->opcode)) {
        return -EPROTO;
    }
    if ((h->opcode & 0x8) != 0 && !h->fin) {
        return -EPROTO; /* control frames are never fragmented */
    }
    if (len < 2) {
        return 0;
    }
    h->masked = buf[1] >> 7;
    h->plen = buf[1] & 0x7f;
    if ((h->opcode & 0x8) != 0 && h->plen > 125) {
        return -EPROTO;
    }
    h->hlen = 2;
    if (h->plen == 126) {
        if (len < 4) {
            return 0;
        }
        h->plen = (uint64_t)buf[2] << 8 | buf[3];
        h->hlen = 4;
    } else if (h->plen == 127) {
        if (len < 10) {
            return 0;
        }
        h->plen = 0;
        for (int i = 0; i < 8; i++) {
            h->plen = h->plen << 8 | buf[2 + i];
        }
        if (h->plen >> 63) {
            return -EPROTO; /* the most significant bit must be 0 */
        }
        h->hlen = 10;
    }
    h->hlen += h->masked ? 4 : 0;
    return 1;
}

long ws_frame_parse(uint8_t *buf, size_t len, size_t max_len, struct ws_frame *out)
{
    struct frame_hdr h;
    int rc = frame_header(buf, len, &h);
    if (rc <= 0) {
        return rc;
    }
    if (h.plen > max_len || h.plen > (uint64_t)(LONG_MAX - 14)) {
        return -EPROTO;
    }
    if (len < h.hlen || len - h.hlen < h.plen) {
        return 0;
    }
    uint8_t *p = buf + h.hlen;
    if (h.masked) {
        const uint8_t *mask = buf + h.hlen - 4;
        for (size_t i = 0; i < h.plen; i++) {
            p[i] ^= mask[i & 3];
        }
    }
    out->fin = h.fin;
    out->opcode = h.opcode;
    out->payload = p;
    out->len = (size_t)h.plen;
    out->masked = h.masked;
    return (long)(h.hlen + h.plen);
}

size_t ws_frame_encode(uint8_t *out, int opcode, const uint8_t *payload, size_t len,
                       const uint8_t mask[4])
{
    size_t n = 0;
    uint8_t mbit = mask != NULL ? 0x80 : 0;
    out[n++] = (uint8_t)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        out[n++] = (uint8_t)(mbit | len);
    } else if (len <= 0xffff) {
        out[n++] = mbit | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = mbit | 127;
        for (int i = 7; i >= 0; i--) {
            out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
        }
    }
    if (mask == NULL) {
        if (len > 0) {
            memcpy(out + n, payload, len);
        }
        return n + len;
    }
    memcpy(out + n, mask, 4);
    n += 4;
    for (size_t i = 0; i < len; i++) {
        out[n + i] = payload[i] ^ mask[i & 3];
    }
    return n + len;
}

/* ---- small helpers ---- */

/* Random bytes for keys and masks. getrandom() without GRND_NONBLOCK could
 * block early at boot; masks only need to be unpredictable to
 * intermediaries, so a clock-seeded xorshift stands in when the pool is not
 * ready. */
static void fill_random(void *buf, size_t n)
{
    static uint64_t x;
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, GRND_NONBLOCK);
        if (r > 0) {
            p += r, n -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (x == 0) {
            x = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)buf ^ 0x9E3779B97F4A7C15u;
        }
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        *p++ = (uint8_t)x, n--;
    }
}

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->cap - b->len >= more) {
        return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more) {
        cap *= 2;
    }
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n > 0) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    *b = (struct buf){0};
}

/* Copy at most n bytes of p into out as printable text, stopping at CR/LF. */
static void printable(char *out, size_t outlen, const uint8_t *p, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < outlen && p[i] != '\r' && p[i] != '\n'; i++) {
        out[j++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    }
    out[j] = '\0';
}

/* ---- object ---- */

/* Split url into the http(s) URL to connect to, the Host header and the
 * request target. */
static int url_split(struct ws *w, const char *url)
{
    static const char *const map[][2] = {{"ws://", "http://"},
                                         {"wss://", "https://"},
                                         {"http://", "http://"},
                                         {"https://", "https://"}};
    for (size_t i = 0; i < ARRAY_LEN(map); i++) {
        size_t n = strlen(map[i][0]);
        if (strncasecmp(url, map[i][0], n) != 0) {
            continue;
        }
        const char *auth = url + n;
        size_t alen = strcspn(auth, "/?#");
        if (alen == 0) {
            return -EINVAL;
        }
        w->host = xstrndup(auth, alen);
        w->connect_url = xasprintf("%s%s/", map[i][1], w->host);
        const char *rest = auth + alen;
        size_t rlen = strcspn(rest, "#");
        w->path = rest[0] == '/' ? xstrndup(rest, rlen) : xasprintf("/%.*s", (int)rlen, rest);
        return 0;
    }
    return -EINVAL;
}

static void free_ws(struct ws *w)
{
    for (size_t i = 0; w->headers != NULL && w->headers[i] != NULL; i++) {
        free(w->headers[i]);
    }
    free(w->headers);
    free(w->connect_url);
    free(w->host);
    free(w->path);
    free(w);
}

static int copy_headers(struct ws *w, const char *const *headers)
{
    size_t n = 0;
    while (headers != NULL && headers[n] != NULL) {
        n++;
    }
    w->headers = xcalloc(n + 1, sizeof(*w->headers));
    for (size_t i = 0; i < n; i++) {
        if (strpbrk(headers[i], "\r\n") != NULL) {
            return -EINVAL;
        }
        w->headers[i] = xstrdup(headers[i]);
    }
    return 0;
}

struct ws *ws_create(struct ev_loop *loop, struct http *http, const char *url,
                     const char *const *headers, size_t max_message, const struct ws_callbacks *cb,
                     void *arg)
{
    struct ws *w = xcalloc(1, sizeof(*w));
    w->loop = loop;
    w->http = http;
    w->max_message = max_message ? max_message : WS_DEFAULT_MAX_MESSAGE;
    w->cb = *cb;
    w->arg = arg;
    w->ping_interval = 30.0;
    w->pong_timeout = 30.0;
    w->connect_timeout = 10.0;
    if (url == NULL || url_split(w, url) < 0) {
        log_err("websocket: unsupported URL '%s' (expected ws, wss, http or https)",
                url ? url : "(null)");
        free_ws(w);
        return NULL;
    }
    if (copy_headers(w, headers) < 0) {
        log_err("websocket: a header for %s contains a line break", w->host);
        free_ws(w);
        return NULL;
    }
    ev_io_init(&w->io, io_cb, -1, EV_READ);
    w->io.data = w;
    ev_init(&w->timer, timer_cb);
    w->timer.data = w;
    return w;
}

void ws_set_timeouts(struct ws *w, double ping_interval, double pong_timeout,
                     double connect_timeout)
{
    if (ping_interval >= 0) {
        w->ping_interval = ping_interval;
    }
    if (pong_timeout > 0) {
        w->pong_timeout = pong_timeout;
    }
    if (connect_timeout > 0) {
        w->connect_timeout = connect_timeout;
    }
}

int ws_is_open(const struct ws *w)
{
    return w != NULL && w->state == WS_OPEN;
}

/* ---- connection teardown and failure ---- */

static void timer_arm(struct ws *w, double after)
{
    ev_timer_stop(w->loop, &w->timer);
    ev_timer_set(&w->timer, after, 0.);
    ev_timer_start(w->loop, &w->timer);
}

/* Back to IDLE: stop the watchers, drop the connection and the buffers. */
static void teardown(struct ws *w)
{
    ev_io_stop(w->loop, &w->io);
    ev_timer_stop(w->loop, &w->timer);
    w->io_events = 0;
    struct http_req *req = w->req;
    w->req = NULL;
    w->state = WS_IDLE; /* before http_cancel: its callback must see IDLE */
    w->gen++;
    if (req != NULL) {
        http_cancel(req);
    }
    if (w->easy != NULL) {
        curl_easy_cleanup(w->easy);
    }
    w->easy = NULL;
    buf_free(&w->in);
    buf_free(&w->out);
    buf_free(&w->msg);
    w->out_off = 0;
    w->msg_op = 0;
    w->awaiting_pong = 0;
    w->got_frame = 0;
}

/* Send what is queued without waiting: 0 when all went, 1 when the socket
 * is full, -EIO on an error. */
static int flush(struct ws *w)
{
    while (w->out_off < w->out.len) {
        size_t n = 0;
        CURLcode rc =
            curl_easy_send(w->easy, w->out.data + w->out_off, w->out.len - w->out_off, &n);
        if (rc == CURLE_AGAIN) {
            return 1;
        }
        if (rc != CURLE_OK) {
            log_debug("websocket: send to %s: %s", w->host, curl_easy_strerror(rc));
            return -EIO;
        }
        w->out_off += n;
    }
    w->out.len = w->out_off = 0;
    return 0;
}

static void queue_frame(struct ws *w, int opcode, const void *payload, size_t len)
{
    uint8_t mask[4];
    fill_random(mask, sizeof(mask));
    if (w->out_off > 0) {
        memmove(w->out.data, w->out.data + w->out_off, w->out.len - w->out_off);
        w->out.len -= w->out_off;
        w->out_off = 0;
    }
    buf_reserve(&w->out, len + 14);
    w->out.len += ws_frame_encode(w->out.data + w->out.len, opcode, payload, len, mask);
}

static void queue_close(struct ws *w, int code, const char *reason)
{
    uint8_t p[125] = {(uint8_t)(code >> 8), (uint8_t)code};
    size_t n = strlen(reason);
    n = n > sizeof(p) - 2 ? sizeof(p) - 2 : n;
    memcpy(p + 2, reason, n);
    queue_frame(w, WS_OP_CLOSE, p, n + 2);
}

/* Tear down and report. The reason is formatted into a local buffer that
 * lives through the callback. */
static void fail(struct ws *w, int code, int auth_failed, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct ws *w, int code, int auth_failed, const char *fmt, ...)
{
    char reason[WS_REASON_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    log_debug("websocket %s%s: closed %d (%s)%s", w->host, w->path, code, reason,
              auth_failed ? ", authentication failed" : "");
    teardown(w);
    if (w->cb.on_close != NULL) {
        w->cb.on_close(w->arg, code, reason, auth_failed);
    }
}

/* Our side found a protocol violation: send a close frame with `code` (best
 * effort) and report it. Before any valid frame it is Avtomatika's way of
 * refusing the token (PROTOCOL.md 1.1): report an authentication failure. */
static void fail_protocol(struct ws *w, int code, const char *what)
{
    if (!w->got_frame) {
        char first[81];
        printable(first, sizeof(first), w->in.data, w->in.len);
        fail(w, 1006, 1, "no WebSocket frame after the 101 (authentication refused?): \"%s\"",
             first);
        return;
    }
    queue_close(w, code, code == 1009 ? "message too big" : "protocol error");
    (void)flush(w);
    fail(w, code, 0, "%s", what);
}

/* ---- connecting and the handshake ---- */

static void io_update(struct ws *w)
{
    int want = EV_READ | (w->out_off < w->out.len ? EV_WRITE : 0);
    if (want == w->io_events) {
        return;
    }
    ev_io_stop(w->loop, &w->io);
    ev_io_set(&w->io, w->io.fd, want);
    ev_io_start(w->loop, &w->io);
    w->io_events = want;
}

static void queue_handshake(struct ws *w)
{
    uint8_t raw[16];
    char key[25];
    fill_random(raw, sizeof(raw));
    ws_base64(raw, sizeof(raw), key);
    ws_accept_key(key, w->accept);
    char *head = xasprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\nUser-Agent: avtworkerd/%s\r\n",
                           w->path, w->host, key, AVT_VERSION);
    buf_append(&w->out, head, strlen(head));
    free(head);
    for (size_t i = 0; w->headers[i] != NULL; i++) {
        buf_append(&w->out, w->headers[i], strlen(w->headers[i]));
        buf_append(&w->out, "\r\n", 2);
    }
    buf_append(&w->out, "\r\n", 2);
}

static void on_connected(struct ws *w, CURL *easy, const char *error)
{
    w->req = NULL;
    if (easy == NULL) {
        fail(w, 1006, 0, "connect failed: %s", error ? error : "unknown error");
        return;
    }
    w->easy = easy;
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD) {
        fail(w, 1006, 0, "connect failed: no socket");
        return;
    }
    w->state = WS_HANDSHAKE;
    queue_handshake(w);
    ev_io_set(&w->io, fd, EV_READ | EV_WRITE);
    ev_io_start(w->loop, &w->io);
    w->io_events = EV_READ | EV_WRITE;
    timer_arm(w, w->connect_timeout);
}

static void connect_done(void *arg, CURL *easy, const char *error)
{
    struct ws *w = arg;
    if (w->state != WS_CONNECTING) { /* cancelled by teardown */
        if (easy != NULL) {
            curl_easy_cleanup(easy);
        }
        return;
    }
    w->busy++;
    on_connected(w, easy, error);
    if (--w->busy == 0 && w->destroyed) {
        free_ws(w);
    }
}

int ws_connect(struct ws *w)
{
    if (w == NULL) {
        return -EINVAL;
    }
    if (w->state != WS_IDLE) {
        return -EALREADY;
    }
    w->state = WS_CONNECTING;
    w->req = http_connect_only(w->http, w->connect_url, w->connect_timeout, connect_done, w);
    if (w->req == NULL) {
        timer_arm(w, 0.); /* reported from the loop, never from in here */
    }
    return 0;
}

/* Is `name` (case-insensitive) a comma-separated token of `value`? */
static int has_token(const char *value, const char *name)
{
    size_t n = strlen(name);
    while (*value != '\0') {
        value += strspn(value, " \t,");
        size_t len = strcspn(value, ",");
        while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t')) {
            len--;
        }
        if (len == n && strncasecmp(value, name, n) == 0) {
            return 1;
        }
        value += strcspn(value, ",");
    }
    return 0;
}

/* One "Name: value" line of the 101 answer (NUL-terminated, no CRLF):
 * note in *seen which of the three required headers it satisfies. */
static void check_header(const char *accept, char *line, int *seen)
{
    char *colon = strchr(line, ':');
    if (colon == NULL) {
        return;
    }
    *colon = '\0';
    char *value = colon + 1 + strspn(colon + 1, " \t");
    size_t vlen = strlen(value);
    while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) {
        value[--vlen] = '\0';
    }
    if (strcasecmp(line, "Upgrade") == 0 && has_token(value, "websocket")) {
        *seen |= 1;
    } else if (strcasecmp(line, "Connection") == 0 && has_token(value, "upgrade")) {
        *seen |= 2;
    } else if (strcasecmp(line, "Sec-WebSocket-Accept") == 0 && strcmp(value, accept) == 0) {
        *seen |= 4;
    }
}

/* Check the headers of a 101 answer (head is NUL-terminated, lines end in
 * CRLF, the status line first); returns NULL or what is wrong. */
static const char *check_upgrade(const char *accept, char *head)
{
    int seen = 0;
    char *line = strstr(head, "\r\n");
    while (line != NULL && line[2] != '\0') {
        line += 2;
        char *eol = strstr(line, "\r\n");
        if (eol != NULL) {
            *eol = '\0';
        }
        check_header(accept, line, &seen);
        line = eol;
    }
    if (!(seen & 1)) {
        return "no \"Upgrade: websocket\" in the 101 answer";
    }
    if (!(seen & 2)) {
        return "no \"Connection: Upgrade\" in the 101 answer";
    }
    return (seen & 4) ? NULL : "wrong or missing Sec-WebSocket-Accept";
}

/* Parse "HTTP/1.x NNN" at the start of in; returns the status, 0 when the
 * line is incomplete, -1 when it is not an HTTP status line. */
static int status_code(const uint8_t *data, size_t len)
{
    const uint8_t *eol = len ? memchr(data, '\n', len) : NULL;
    if (eol == NULL) {
        return len > WS_MAX_HANDSHAKE ? -1 : 0;
    }
    const char *p = (const char *)data;
    if (eol - data < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') {
        return -1;
    }
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        code = code * 10 + (p[i] - '0');
    }
    return code;
}

/* Find the end of the answer's head; 0 while incomplete. */
static size_t head_end(const uint8_t *data, size_t len)
{
    for (size_t i = 3; i < len; i++) {
        if (memcmp(data + i - 3, "\r\n\r\n", 4) == 0) {
            return i + 1;
        }
    }
    return 0;
}

static void process_frames(struct ws *w);

/* The 101 checked out: switch to OPEN, tell the caller, then handle any
 * frames that came in the same read as the answer. */
static void open_established(struct ws *w)
{
    w->state = WS_OPEN;
    w->opened_at = ev_now(w->loop);
    if (w->ping_interval > 0) {
        timer_arm(w, w->ping_interval);
    } else {
        ev_timer_stop(w->loop, &w->timer);
    }
    log_debug("websocket %s%s: open", w->host, w->path);
    unsigned gen = w->gen;
    if (w->cb.on_open != NULL) {
        w->cb.on_open(w->arg);
    }
    if (w->gen == gen) {
        process_frames(w);
    }
}

long ws_handshake_parse(const uint8_t *buf, size_t len, const char *accept, int *status,
                        const char **why)
{
    int code = status_code(buf, len);
    *status = code > 0 ? code : 0;
    *why = NULL;
    if (code < 0) {
        *why = "the answer is not HTTP";
        return -EPROTO;
    }
    if (code > 0 && code != 101) {
        *why = "not 101";
        return -EPROTO;
    }
    size_t end = head_end(buf, len);
    if (end == 0) {
        if (len > WS_MAX_HANDSHAKE) {
            *why = "answer head over 8192 bytes"; /* WS_MAX_HANDSHAKE */
            return -EPROTO;
        }
        return 0;
    }
    char *head = xstrndup((const char *)buf, end);
    *why = check_upgrade(accept, head);
    free(head);
    return *why != NULL ? -EPROTO : (long)end;
}

/* Read the handshake answer from `in`; on 101 switch to OPEN. */
static void process_handshake(struct ws *w)
{
    int code;
    const char *why;
    long n = ws_handshake_parse(w->in.data, w->in.len, w->accept, &code, &why);
    if (n == 0) {
        return;
    }
    if (n < 0) {
        if (code != 0 && code != 101) {
            fail(w, 1006, code == 401 || code == 403, "handshake answered %d", code);
        } else {
            fail(w, 1006, 0, "handshake: %s", why);
        }
        return;
    }
    size_t end = (size_t)n;
    memmove(w->in.data, w->in.data + end, w->in.len - end);
    w->in.len -= end;
    open_established(w);
}

/* ---- frames ---- */

static int close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static void on_close_frame(struct ws *w, const struct ws_frame *f)
{
    int code = 1005; /* no status code in the frame */
    char reason[124];
    if (f->len == 1) {
        fail_protocol(w, 1002, "close frame with a 1-byte payload");
        return;
    }
    if (f->len >= 2) {
        code = f->payload[0] << 8 | f->payload[1];
        if (!close_code_valid(code)) {
            fail_protocol(w, 1002, "invalid close code");
            return;
        }
    }
    size_t n = f->len > 2 ? f->len - 2 : 0;
    memcpy(reason, f->payload + 2 * (f->len >= 2), n);
    reason[n] = '\0';
    queue_frame(w, WS_OP_CLOSE, f->payload, f->len >= 2 ? 2 : 0); /* echo the code */
    (void)flush(w);
    fail(w, code, 0, "%s", reason);
}

static void on_control(struct ws *w, const struct ws_frame *f)
{
    if (f->opcode == WS_OP_PING) {
        queue_frame(w, WS_OP_PONG, f->payload, f->len);
        io_update(w);
    } else if (f->opcode == WS_OP_PONG) {
        if (w->awaiting_pong && w->ping_interval > 0) {
            timer_arm(w, w->ping_interval);
        }
        w->awaiting_pong = 0;
    } else {
        on_close_frame(w, f);
    }
}

/* A text or binary frame, or a continuation. Binary messages are
 * reassembled like text ones (for the size limit) and then dropped. */
static void on_data(struct ws *w, const struct ws_frame *f)
{
    if (f->opcode == WS_OP_CONT && w->msg_op == 0) {
        fail_protocol(w, 1002, "continuation frame outside a message");
        return;
    }
    if (f->opcode != WS_OP_CONT && w->msg_op != 0) {
        fail_protocol(w, 1002, "new message inside a fragmented one");
        return;
    }
    if (f->opcode != WS_OP_CONT) {
        w->msg_op = f->opcode;
        w->msg.len = 0;
    }
    if (f->len > w->max_message - w->msg.len) {
        fail_protocol(w, 1009, "message over max_message");
        return;
    }
    buf_reserve(&w->msg, f->len + 1);
    buf_append(&w->msg, f->payload, f->len);
    if (!f->fin) {
        return;
    }
    int op = w->msg_op;
    w->msg_op = 0;
    w->msg.data[w->msg.len] = '\0';
    if (op == WS_OP_TEXT && w->cb.on_text != NULL) {
        w->cb.on_text(w->arg, (const char *)w->msg.data, w->msg.len);
    }
}

/* Parse and handle every complete frame in `in`, then compact it. */
static void process_frames(struct ws *w)
{
    unsigned gen = w->gen;
    size_t off = 0;
    while (w->gen == gen && off < w->in.len) {
        struct ws_frame f;
        long n = ws_frame_parse(w->in.data + off, w->in.len - off, w->max_message, &f);
        if (n == 0) {
            break;
        }
        if (n < 0) {
            struct frame_hdr h;
            int big = frame_header(w->in.data + off, w->in.len - off, &h) > 0;
            fail_protocol(w, big ? 1009 : 1002, big ? "frame over max_message" : "invalid frame");
            return;
        }
        off += (size_t)n;
        if (f.masked) {
            fail_protocol(w, 1002, "masked frame from the server");
            return;
        }
        w->got_frame = 1;
        if (f.opcode & 0x8) {
            on_control(w, &f);
        } else {
            on_data(w, &f);
        }
    }
    if (w->gen != gen) {
        return;
    }
    memmove(w->in.data, w->in.data + off, w->in.len - off);
    w->in.len -= off;
    io_update(w);
}

/* ---- events ---- */

/* The peer closed the connection (EOF or a receive error). */
static void on_peer_gone(struct ws *w, const char *why)
{
    if (w->state == WS_HANDSHAKE) {
        fail(w, 1006, 0, "%s during the handshake", why);
    } else if (!w->got_frame && ev_now(w->loop) - w->opened_at < WS_AUTH_WINDOW) {
        fail(w, 1006, 1, "%s right after the 101 (authentication refused?)", why);
    } else {
        fail(w, 1006, 0, "%s", why);
    }
}

/* Read until the socket would block; a TLS layer may hold decrypted bytes
 * that poll() cannot see, so stopping early re-feeds the event. */
static void do_read(struct ws *w)
{
    unsigned gen = w->gen;
    for (int i = 0; i < WS_READS_PER_EVENT; i++) {
        size_t n = 0;
        buf_reserve(&w->in, WS_READ_CHUNK);
        CURLcode rc = curl_easy_recv(w->easy, w->in.data + w->in.len, WS_READ_CHUNK, &n);
        if (rc == CURLE_AGAIN) {
            return;
        }
        if (rc != CURLE_OK || n == 0) {
            on_peer_gone(w, rc != CURLE_OK ? curl_easy_strerror(rc) : "connection closed");
            return;
        }
        w->in.len += n;
        if (w->state == WS_HANDSHAKE) {
            process_handshake(w);
        } else {
            process_frames(w);
        }
        if (w->gen != gen) {
            return;
        }
    }
    ev_feed_event(w->loop, &w->io, EV_READ);
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct ws *w = io->data;
    unsigned gen = w->gen;
    w->busy++;
    if (revents & EV_WRITE) {
        if (flush(w) < 0) {
            on_peer_gone(w, "send failed");
        } else {
            io_update(w);
        }
    }
    if ((revents & EV_READ) && w->gen == gen) {
        do_read(w);
    }
    if (--w->busy == 0 && w->destroyed) {
        free_ws(w);
    }
}

static void on_timer(struct ws *w)
{
    switch (w->state) {
    case WS_CONNECTING:
        fail(w, 1006, 0, "connect failed: could not start the request");
        break;
    case WS_HANDSHAKE:
        fail(w, 1006, 0, "handshake timed out");
        break;
    case WS_OPEN:
        if (w->awaiting_pong) {
            fail(w, 1006, 0, "ping timeout");
            break;
        }
        queue_frame(w, WS_OP_PING, NULL, 0);
        io_update(w);
        w->awaiting_pong = 1;
        timer_arm(w, w->pong_timeout);
        break;
    case WS_IDLE:
        break;
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct ws *w = t->data;
    w->busy++;
    on_timer(w);
    if (--w->busy == 0 && w->destroyed) {
        free_ws(w);
    }
}

/* ---- sending and closing ---- */

int ws_send_text(struct ws *w, const char *msg, size_t len)
{
    if (w == NULL || w->state != WS_OPEN) {
        return -ENOTCONN;
    }
    queue_frame(w, WS_OP_TEXT, msg, len);
    io_update(w);
    return 0;
}

/* Close without a callback: a close frame goes out with whatever is still
 * queued, as far as the socket takes it now. */
static void close_quietly(struct ws *w, int code, const char *reason)
{
    if (w->state == WS_OPEN) {
        queue_close(w, code, reason);
        (void)flush(w);
    }
    if (w->state != WS_IDLE) {
        teardown(w);
    }
}

void ws_close(struct ws *w)
{
    if (w != NULL) {
        close_quietly(w, 1000, "");
    }
}

void ws_destroy(struct ws *w)
{
    if (w == NULL || w->destroyed) {
        return;
    }
    close_quietly(w, 1001, "going away");
    if (w->busy > 0) {
        w->destroyed = 1;
    } else {
        free_ws(w);
    }
}
