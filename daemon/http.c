/*
 * http.c - asynchronous HTTP for the loop thread: libcurl's multi interface
 * driven by libev. Each curl multi is wrapped in a `struct drv`, which
 * gives curl an ev_io watcher per socket it asks for
 * (CURLMOPT_SOCKETFUNCTION) and one ev_timer (CURLMOPT_TIMERFUNCTION); when
 * a watcher fires we call curl_multi_socket_action() and then drain
 * curl_multi_info_read(), completing finished requests. User callbacks are
 * only ever called from our own watcher callbacks, http_cancel() and
 * http_destroy(), never from inside a libcurl callback or http_request(), so
 * they may start, cancel or destroy anything.
 *
 * Requests share one multi (`h->main`) and so its connection cache: HTTP/1.1
 * connections are kept alive and reused, and a new connection is opened
 * when every cached one is busy (no pipelining, no per-host limit), so a
 * long-poll never holds up other requests. Finished requests go back to a
 * small free list together with their easy handle (curl_easy_reset keeps
 * its internal buffers) and their body buffers, so a steady stream of
 * requests allocates little beyond the header list.
 *
 * Connect-only requests (the WebSocket's TCP/TLS connection) each get a
 * private multi. libcurl 7.88 closes a CONNECT_ONLY connection when its
 * easy handle is removed from the multi (curl_multi_remove_handle), and
 * leaving it in the shared multi is no better: the shared cache prunes it
 * as "dead" once it has been idle for CURLOPT_MAXAGE_CONN seconds or has
 * unread input whenever another transfer opens a connection. So the handle
 * stays in its private multi, whose cache holds nothing else, and is handed
 * to the caller there; curl_easy_send/recv find the connection through
 * that multi. When the caller's curl_easy_cleanup() closes the socket, our
 * CURLOPT_CLOSESOCKETFUNCTION notices and the private multi is freed from
 * the loop shortly after (it cannot be freed inside curl's call).
 *
 * Re-entrancy: `depth` counts user callbacks on the stack; http_destroy()
 * inside one cancels everything at once but frees the object only when the
 * outermost of our frames returns.
 */
#include "http.h"

#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "util.h"

#define MAX_CONNECTS 32          /* idle connections kept by the shared cache */
#define FREE_REQS_MAX 16         /* finished requests kept for reuse */
#define FREE_SOCKS_MAX 32        /* socket watchers kept for reuse */
#define KEEP_BUF_MAX (64 * 1024) /* larger buffers are freed when a request ends */
#define BUF_MIN 1024
#define DEFAULT_MAX_BODY (16 * 1024 * 1024)
#define DEFAULT_CONNECT_TIMEOUT 10.0

struct sock;

/* One curl multi driven by the loop: the shared one, or the private one of
 * a connect-only request. */
struct drv {
    struct http *h;
    CURLM *multi;
    ev_timer timer;
    struct sock *socks; /* watched sockets */
    /* Connect-only, after hand-off: in h->conns until the owner closes. */
    struct drv *prev, *next;
    curl_socket_t fd;
    int handed;
    int closed;
};

struct sock {
    ev_io io;
    struct drv *d;
    struct sock *prev, *next;
};

struct buf {
    char *p;
    size_t len, cap;
};

struct http_req {
    struct http *h;
    struct http_req *prev, *next; /* h->reqs while in flight; h->free_reqs after */
    CURL *easy;
    struct drv *d;              /* the multi the easy handle is in */
    struct curl_slist *headers; /* request headers, freed when done */
    struct buf out;             /* request body (our copy) */
    struct buf in;              /* response body */
    double start;
    double retry_after;
    double date;           /* the Date header, unix seconds; 0 when absent */
    char rxon_version[24]; /* the X-RXON-Version header; "" when absent */
    int in_multi;
    int too_large;
    size_t max_body;   /* this request's limit (http_set_max_body) */
    size_t seen_body;  /* too_large: the body's size as far as known */
    CURLcode deferred; /* != CURLE_OK: failed before reaching the multi */
    http_done_fn done;
    http_connect_fn connect_done; /* set for connect-only requests */
    void *arg;
    char errbuf[CURL_ERROR_SIZE];
};

struct http {
    struct ev_loop *loop;
    struct drv main;
    char *user_agent;
    char *ca_file, *cert_file, *key_file;
    int insecure;
    int compressed; /* offer Accept-Encoding: gzip */
    size_t max_body;
    long connect_timeout_ms;
    struct http_req *reqs; /* in flight, connect-only included */
    int npending;
    struct http_req *free_reqs;
    int nfree_reqs;
    struct sock *free_socks;
    int nfree_socks;
    struct drv *conns; /* handed-off connect-only multis */
    int nconns;
    ev_timer chores;    /* deferred failures, freeing closed connect-only multis */
    int depth;          /* our frames that call user callbacks */
    int dying;          /* http_destroy() was called */
    char date_text[64]; /* the last Date header read, and its value (parse_date) */
    double date_value;
};

static void drv_drain(struct drv *d);
static void request_finish(struct http_req *req, CURLcode rc);
static void connect_finish(struct http_req *req, CURLcode rc);

/* ---- small helpers ---- */

static long to_ms(double seconds)
{
    if (seconds <= 0) {
        return 0;
    }
    if (seconds > (double)(LONG_MAX / 2000)) {
        return LONG_MAX / 2;
    }
    long ms = (long)(seconds * 1000.0 + 0.5);
    return ms > 0 ? ms : 1;
}

/* Make room for `need` bytes; growth doubles, and never beyond `limit`
 * unless `need` itself is larger. */
static void buf_reserve(struct buf *b, size_t need, size_t limit)
{
    if (need <= b->cap) {
        return;
    }
    size_t cap = b->cap ? b->cap : BUF_MIN;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    if (cap > limit && need <= limit) {
        cap = limit;
    }
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

/* Buffers that grew large are not kept for the next request. */
static void buf_trim(struct buf *b)
{
    b->len = 0;
    if (b->cap > KEEP_BUF_MAX) {
        free_and_null(b->p);
        b->cap = 0;
    }
}

static struct curl_slist *slist_add(struct curl_slist *l, const char *s)
{
    struct curl_slist *n = curl_slist_append(l, s);
    if (n == NULL) {
        fatalx("out of memory (curl_slist_append)");
    }
    return n;
}

static void enter(struct http *h)
{
    h->depth++;
}

static void http_free(struct http *h);

/* Returns 1 when h has been freed (http_destroy ran in a callback). */
static int leave(struct http *h)
{
    if (--h->depth == 0 && h->dying) {
        http_free(h);
        return 1;
    }
    return 0;
}

static void chores_arm(struct http *h)
{
    if (!ev_is_active(&h->chores)) {
        ev_timer_set(&h->chores, 0., 0.);
        ev_timer_start(h->loop, &h->chores);
    }
}

/* ---- libev <-> curl multi glue ---- */

static void sock_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sock *s = container_of(w, struct sock, io);
    struct drv *d = s->d;
    int flags =
        ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;

    (void)loop;
    /* `s` may be freed inside (CURL_POLL_REMOVE); `d` may not. */
    curl_multi_socket_action(d->multi, w->fd, flags, &running);
    drv_drain(d);
}

static void drv_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct drv *d = container_of(w, struct drv, timer);
    int running;

    (void)loop;
    (void)revents;
    curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drv_drain(d);
}

static void sock_free(struct drv *d, struct sock *s)
{
    struct http *h = d->h;

    ev_io_stop(h->loop, &s->io);
    if (s->prev) {
        s->prev->next = s->next;
    } else {
        d->socks = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    if (h->nfree_socks < FREE_SOCKS_MAX) {
        s->next = h->free_socks;
        h->free_socks = s;
        h->nfree_socks++;
    } else {
        free(s);
    }
}

static struct sock *sock_new(struct drv *d, curl_socket_t fd)
{
    struct http *h = d->h;
    struct sock *s = h->free_socks;

    if (s) {
        h->free_socks = s->next;
        h->nfree_socks--;
    } else {
        s = xmalloc(sizeof(*s));
    }
    s->d = d;
    s->prev = NULL;
    s->next = d->socks;
    if (d->socks) {
        d->socks->prev = s;
    }
    d->socks = s;
    ev_io_init(&s->io, sock_io_cb, fd, 0);
    curl_multi_assign(d->multi, fd, s);
    return s;
}

/* CURLMOPT_SOCKETFUNCTION: watch `fd` for what curl wants, or stop. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    struct drv *d = userp;
    struct sock *s = sockp;
    int events = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_free(d, s);
        }
        return 0;
    }
    if (s == NULL) {
        s = sock_new(d, fd);
    } else if (s->io.events == events && ev_is_active(&s->io)) {
        return 0;
    }
    ev_io_stop(d->h->loop, &s->io);
    ev_io_set(&s->io, fd, events);
    ev_io_start(d->h->loop, &s->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or stop the multi's one timer. curl may
 * not be called back from here, so a 0 ms timeout also goes through the
 * loop. */
static int on_timer(CURLM *multi, long ms, void *userp)
{
    struct drv *d = userp;

    (void)multi;
    ev_timer_stop(d->h->loop, &d->timer);
    if (ms >= 0) {
        ev_timer_set(&d->timer, (double)ms / 1000.0, 0.);
        ev_timer_start(d->h->loop, &d->timer);
    }
    return 0;
}

static void drv_init(struct http *h, struct drv *d)
{
    memset(d, 0, sizeof(*d));
    d->h = h;
    d->fd = CURL_SOCKET_BAD;
    d->multi = curl_multi_init();
    if (d->multi == NULL) {
        fatalx("curl_multi_init failed");
    }
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d);
    ev_timer_init(&d->timer, drv_timer_cb, 0., 0.);
}

/* Free the multi (never from inside a curl call) and its watchers. */
static void drv_finish(struct drv *d)
{
    curl_multi_cleanup(d->multi);
    d->multi = NULL;
    ev_timer_stop(d->h->loop, &d->timer);
    while (d->socks) {
        sock_free(d, d->socks);
    }
}

/* ---- the request list ---- */

static void req_link(struct http *h, struct http_req *req)
{
    req->prev = NULL;
    req->next = h->reqs;
    if (h->reqs) {
        h->reqs->prev = req;
    }
    h->reqs = req;
    h->npending++;
}

static void req_unlink(struct http_req *req)
{
    struct http *h = req->h;

    if (req->prev) {
        req->prev->next = req->next;
    } else {
        h->reqs = req->next;
    }
    if (req->next) {
        req->next->prev = req->prev;
    }
    req->prev = req->next = NULL;
    h->npending--;
}

static void req_leave_multi(struct http_req *req)
{
    if (req->in_multi) {
        curl_multi_remove_handle(req->d->multi, req->easy);
        req->in_multi = 0;
    }
}

static struct http_req *req_get(struct http *h)
{
    struct http_req *req = h->free_reqs;

    if (req) {
        h->free_reqs = req->next;
        h->nfree_reqs--;
    } else {
        req = xcalloc(1, sizeof(*req));
        req->h = h;
        req->easy = curl_easy_init();
        if (req->easy == NULL) {
            fatalx("curl_easy_init failed");
        }
    }
    req->prev = req->next = NULL;
    req->d = &h->main;
    req->in.len = req->out.len = 0;
    req->retry_after = -1;
    req->date = 0;
    req->rxon_version[0] = '\0';
    req->too_large = 0;
    req->max_body = h->max_body;
    req->seen_body = 0;
    req->deferred = CURLE_OK;
    req->errbuf[0] = '\0';
    req->start = now_mono();
    return req;
}

static void req_free(struct http_req *req)
{
    if (req->easy) {
        curl_easy_cleanup(req->easy);
    }
    curl_slist_free_all(req->headers);
    free(req->in.p);
    free(req->out.p);
    free(req);
}

/* A finished request (out of the multi and the list) goes back to the free
 * list with its easy handle reset, or is freed. */
static void req_release(struct http *h, struct http_req *req)
{
    curl_slist_free_all(req->headers);
    req->headers = NULL;
    if (h->dying || h->nfree_reqs >= FREE_REQS_MAX || req->easy == NULL) {
        req_free(req);
        return;
    }
    curl_easy_reset(req->easy);
    buf_trim(&req->in);
    buf_trim(&req->out);
    req->done = NULL;
    req->arg = NULL;
    req->next = h->free_reqs;
    h->free_reqs = req;
    h->nfree_reqs++;
}

/* ---- curl callbacks of one transfer ---- */

/* The body is over this request's limit: the transfer stops here. */
static size_t body_too_large(struct http_req *req, size_t seen)
{
    req->too_large = 1;
    req->seen_body = seen;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct http_req *req = arg;
    size_t n = size * nmemb;
    size_t need = req->in.len + n;
    curl_off_t cl = -1;

    if (req->in.len == 0) {
        /* First chunk: the declared size (a lower bound when the body is
         * compressed) refuses an answer at once, or sizes the buffer. */
        curl_easy_getinfo(req->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        if (cl > 0 && (size_t)cl > req->max_body) {
            return body_too_large(req, (size_t)cl);
        }
    }
    if (need > req->max_body) {
        return body_too_large(req, need);
    }
    if (need + 1 > req->in.cap) {
        if (cl > 0 && (size_t)cl >= need) {
            buf_reserve(&req->in, (size_t)cl + 1, (size_t)cl + 1);
        } else {
            buf_reserve(&req->in, need + 1, req->max_body + 1);
        }
    }
    memcpy(req->in.p + req->in.len, data, n);
    req->in.len = need;
    return n;
}

/* Retry-After: delta-seconds or an HTTP-date; -1 when invalid. */
static double parse_retry_after(const char *s, size_t n)
{
    char tmp[64];

    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    if (n == 0 || n >= sizeof(tmp)) {
        return -1;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (strspn(tmp, "0123456789") == n) {
        return n > 10 ? 1e10 : strtod(tmp, NULL);
    }
    time_t t = curl_getdate(tmp, NULL);
    if (t == (time_t)-1) {
        return -1;
    }
    double delta = difftime(t, time(NULL));
    return delta > 0 ? delta : 0;
}

/* A header's value without surrounding blanks, cut to outlen - 1 bytes;
 * control characters end it. */
static void header_value(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && o + 1 < outlen && (unsigned char)*s >= 0x20 && *s != 0x7f) {
        out[o++] = *s++;
        n--;
    }
    while (o > 0 && (out[o - 1] == ' ' || out[o - 1] == '\t')) {
        o--;
    }
    out[o] = '\0';
}

/* Date: an HTTP-date; 0 when invalid. Every answer of the same second
 * carries the same text, so the last one read is remembered: at one slot
 * curl_getdate()'s sscanf()s were 1.5 % of the daemon's CPU. */
static double parse_date(struct http *h, const char *s, size_t n)
{
    char tmp[sizeof(h->date_text)];
    header_value(s, n, tmp, sizeof(tmp));
    if (strcmp(tmp, h->date_text) == 0)
        return h->date_value;
    time_t t = tmp[0] ? curl_getdate(tmp, NULL) : (time_t)-1;
    memcpy(h->date_text, tmp, sizeof(tmp));
    h->date_value = t == (time_t)-1 ? 0 : (double)t;
    return h->date_value;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct http_req *req = arg;
    size_t n = size * nmemb;

    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        req->retry_after = -1; /* a new response (after 100 Continue) */
        req->date = 0;
        req->rxon_version[0] = '\0';
    } else if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        req->retry_after = parse_retry_after(data + 12, n - 12);
    } else if (n > 5 && strncasecmp(data, "Date:", 5) == 0) {
        req->date = parse_date(req->h, data + 5, n - 5);
    } else if (n > 15 && strncasecmp(data, "X-RXON-Version:", 15) == 0) {
        header_value(data + 15, n - 15, req->rxon_version, sizeof(req->rxon_version));
    }
    return n;
}

/* ---- setting up a transfer ---- */

static void setup_common(struct http *h, struct http_req *req, const char *url)
{
    CURL *e = req->easy;

    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, req);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 60L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 20L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
    if (h->ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
    }
    if (h->cert_file) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, h->cert_file);
    }
    if (h->key_file) {
        curl_easy_setopt(e, CURLOPT_SSLKEY, h->key_file);
    }
    if (h->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

static int has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; headers && headers[i]; i++) {
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':') {
            return 1;
        }
    }
    return 0;
}

/* Method and body. POST, PUT and PATCH always send a body, an empty one as
 * "Content-Length: 0". libcurl's own Expect: 100-continue (a round trip)
 * and form Content-Type defaults are switched off. */
static void setup_method(struct http_req *req, const char *method, const char *const *headers,
                         const char *body, size_t len)
{
    CURL *e = req->easy;
    int sends = body != NULL || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                strcmp(method, "PATCH") == 0;

    for (size_t i = 0; headers && headers[i]; i++) {
        req->headers = slist_add(req->headers, headers[i]);
    }
    if (sends) {
        const char *p = "";
        if (len > 0) {
            buf_reserve(&req->out, len, SIZE_MAX);
            memcpy(req->out.p, body, len);
            req->out.len = len;
            p = req->out.p;
        }
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, p);
        req->headers = slist_add(req->headers, "Expect:");
        if (!has_header(headers, "Content-Type")) {
            req->headers = slist_add(req->headers, "Content-Type:");
        }
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    }
    /* POSTFIELDS makes a POST; GET and HEAD without a body are the
     * defaults; everything else is named. */
    int plain = strcmp(method, "POST") == 0 ||
                (!sends && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0));
    if (!plain) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (req->headers) {
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
    }
}

/* Add to the multi; a failure completes from the loop, never from here. */
static void req_start(struct http *h, struct http_req *req)
{
    CURLMcode mc = curl_multi_add_handle(req->d->multi, req->easy);

    req_link(h, req);
    if (mc == CURLM_OK) {
        req->in_multi = 1;
        return;
    }
    snprintf(req->errbuf, sizeof(req->errbuf), "curl_multi_add_handle: %s",
             curl_multi_strerror(mc));
    req->deferred = CURLE_FAILED_INIT;
    chores_arm(h);
}

struct http_req *http_request(struct http *h, const char *method, const char *url,
                              const char *const *headers, const char *body, size_t len,
                              double timeout, http_done_fn done, void *arg)
{
    assert(h && url && done);
    if (h->dying) {
        return NULL;
    }
    if (method == NULL) {
        method = "GET";
    }
    struct http_req *req = req_get(h);
    req->done = done;
    req->arg = arg;
    setup_common(h, req, url);
    curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_ACCEPT_ENCODING, h->compressed ? "gzip" : NULL);
    curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, to_ms(timeout));
    setup_method(req, method, headers, body, len);
    req_start(h, req);
    return req;
}

void http_set_compressed(struct http *h, int on)
{
    h->compressed = on;
}

void http_set_max_body(struct http_req *req, size_t max_body)
{
    req->max_body = max_body > 0 ? max_body : req->h->max_body;
}

/* ---- completion ---- */

static void request_finish(struct http_req *req, CURLcode rc)
{
    struct http *h = req->h;
    struct http_response r = {.body = "",
                              .retry_after = req->retry_after,
                              .date = req->date,
                              .rxon_version = req->rxon_version};

    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &r.status);
    req_leave_multi(req); /* the connection goes back to the cache now */
    req_unlink(req);
    r.elapsed = now_mono() - req->start;
    r.max_body = req->max_body;
    if (req->too_large) {
        r.too_large = 1;
        r.body_seen = req->seen_body;
        r.curl_code = CURLE_FILESIZE_EXCEEDED;
        r.error = "response body larger than its limit";
    } else if (rc != CURLE_OK) {
        /* As http.h says: no status on a transport error, even when the
         * status line had arrived (a truncated answer must never look
         * like a complete 200). */
        r.status = 0;
        r.curl_code = rc;
        r.error = req->errbuf[0] ? req->errbuf : curl_easy_strerror(rc);
    } else if (req->in.len > 0) {
        req->in.p[req->in.len] = '\0';
        r.body = req->in.p;
        r.len = req->in.len;
    }
    req->done(req->arg, &r);
    req_release(h, req);
}

static void request_cancel(struct http_req *req)
{
    struct http *h = req->h;
    struct http_response r = {
        .body = "",
        .retry_after = -1,
        .rxon_version = "",
        .curl_code = CURLE_ABORTED_BY_CALLBACK,
        .error = "cancelled",
        .cancelled = 1,
    };

    req_leave_multi(req);
    req_unlink(req);
    r.elapsed = now_mono() - req->start;
    req->done(req->arg, &r);
    req_release(h, req);
}

/* Drain finished transfers of one multi. */
static void drv_drain(struct drv *d)
{
    struct http *h = d->h;
    CURLMsg *msg;
    int left;

    enter(h);
    while (!h->dying && d->multi && (msg = curl_multi_info_read(d->multi, &left))) {
        struct http_req *req = NULL;
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &req);
        if (req == NULL) {
            continue; /* a handed-off connect-only handle */
        }
        if (req->connect_done) {
            connect_finish(req, msg->data.result);
            break; /* its private multi holds nothing else and may be gone */
        }
        request_finish(req, msg->data.result);
    }
    leave(h);
}

/* ---- connect-only ---- */

/* CURLOPT_CLOSESOCKETFUNCTION of connect-only handles: once the handed-off
 * connection is closed (the owner's curl_easy_cleanup), free its multi. */
static int on_close_socket(void *clientp, curl_socket_t fd)
{
    struct drv *d = clientp;

    if (d->handed && fd == d->fd && !d->closed) {
        d->closed = 1;
        if (!d->h->dying) {
            chores_arm(d->h);
        }
    }
    return close(fd);
}

static void conn_unlink(struct http *h, struct drv *d)
{
    if (d->prev) {
        d->prev->next = d->next;
    } else {
        h->conns = d->next;
    }
    if (d->next) {
        d->next->prev = d->prev;
    }
    h->nconns--;
}

static void connect_handoff(struct http *h, struct http_req *req)
{
    struct drv *d = req->d;
    curl_socket_t fd = CURL_SOCKET_BAD;

    curl_easy_getinfo(req->easy, CURLINFO_ACTIVESOCKET, &fd);
    if (d->socks) {
        /* libcurl stops watching a finished transfer's sockets; if it did
         * not, our watcher would compete with the new owner's. */
        log_warn("http: connect-only socket still watched at hand-off");
    }
    /* The caller owns the handle now: no pointers into req may remain. */
    curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, NULL);
    d->fd = fd;
    d->handed = 1;
    d->prev = NULL;
    d->next = h->conns;
    if (h->conns) {
        h->conns->prev = d;
    }
    h->conns = d;
    h->nconns++;
}

static void connect_fail(struct http_req *req, const char *error)
{
    req_leave_multi(req);
    curl_easy_cleanup(req->easy);
    req->easy = NULL;
    drv_finish(req->d);
    free(req->d);
    req->d = NULL;
    req->connect_done(req->arg, NULL, error);
    free(req);
}

static void connect_finish(struct http_req *req, CURLcode rc)
{
    struct http *h = req->h;

    req_unlink(req);
    if (rc == CURLE_OK) {
        CURL *easy = req->easy;
        connect_handoff(h, req);
        req->connect_done(req->arg, easy, NULL);
        free(req);
        return;
    }
    char err[CURL_ERROR_SIZE + 64];
    snprintf(err, sizeof(err), "%s", req->errbuf[0] ? req->errbuf : curl_easy_strerror(rc));
    connect_fail(req, err);
}

struct http_req *http_connect_only(struct http *h, const char *url, double timeout,
                                   http_connect_fn done, void *arg)
{
    assert(h && url && done);
    if (h->dying) {
        return NULL;
    }
    struct http_req *req = xcalloc(1, sizeof(*req));
    req->h = h;
    req->connect_done = done;
    req->arg = arg;
    req->retry_after = -1;
    req->start = now_mono();
    req->easy = curl_easy_init();
    req->d = xmalloc(sizeof(*req->d));
    if (req->easy == NULL) {
        fatalx("curl_easy_init failed");
    }
    drv_init(h, req->d);
    setup_common(h, req, url);
    if (timeout > 0) {
        curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS, to_ms(timeout));
    }
    curl_easy_setopt(req->easy, CURLOPT_CONNECT_ONLY, 1L);
    /* Through a proxy (environment), the raw stream must be a tunnel. */
    curl_easy_setopt(req->easy, CURLOPT_HTTPPROXYTUNNEL, 1L);
    /* The WebSocket handshake is HTTP/1.1: never let ALPN pick h2. */
    curl_easy_setopt(req->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(req->easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(req->easy, CURLOPT_CLOSESOCKETDATA, req->d);
    req_start(h, req);
    return req;
}

/* ---- chores: deferred failures, closed connections ---- */

static struct http_req *first_deferred(struct http *h)
{
    for (struct http_req *r = h->reqs; r; r = r->next) {
        if (r->deferred != CURLE_OK) {
            return r;
        }
    }
    return NULL;
}

static void chores_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct http *h = container_of(w, struct http, chores);
    struct http_req *req;

    (void)loop;
    (void)revents;
    enter(h);
    while (!h->dying && (req = first_deferred(h))) {
        if (req->connect_done) {
            req_unlink(req);
            connect_fail(req, req->errbuf);
        } else {
            request_finish(req, req->deferred);
        }
    }
    for (struct drv *d = h->conns, *next; d && !h->dying; d = next) {
        next = d->next;
        if (d->closed) {
            conn_unlink(h, d);
            drv_finish(d);
            free(d);
        }
    }
    leave(h);
}

/* ---- public API ---- */

void http_cancel(struct http_req *req)
{
    if (req == NULL) {
        return;
    }
    struct http *h = req->h;
    enter(h);
    if (req->connect_done) {
        req_unlink(req);
        connect_fail(req, "cancelled");
    } else {
        request_cancel(req);
    }
    leave(h);
}

int http_pending(const struct http *h)
{
    return h ? h->npending : 0;
}

int http_conn_count(const struct http *h)
{
    return h ? h->nconns : 0;
}

struct http *http_create(struct ev_loop *loop, const struct http_opts *opts)
{
    static const struct http_opts defaults = {0};
    struct http *h = xcalloc(1, sizeof(*h));

    if (opts == NULL) {
        opts = &defaults;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    h->loop = loop;
    h->user_agent =
        opts->user_agent ? xstrdup(opts->user_agent) : xstrdup("avtworkerd/" AVT_VERSION);
    h->max_body = opts->max_body ? opts->max_body : DEFAULT_MAX_BODY;
    h->connect_timeout_ms =
        to_ms(opts->connect_timeout > 0 ? opts->connect_timeout : DEFAULT_CONNECT_TIMEOUT);
    h->ca_file = opts->ca_file ? xstrdup(opts->ca_file) : NULL;
    h->cert_file = opts->cert_file ? xstrdup(opts->cert_file) : NULL;
    h->key_file = opts->key_file ? xstrdup(opts->key_file) : NULL;
    h->insecure = opts->insecure;
    h->compressed = opts->compressed;
    drv_init(h, &h->main);
    curl_multi_setopt(h->main.multi, CURLMOPT_MAXCONNECTS, (long)MAX_CONNECTS);
    curl_multi_setopt(h->main.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    /* HTTP/2 streams may share a connection (TLS + ALPN); HTTP/1.1 is never
     * pipelined: a busy connection means a new one. */
    curl_multi_setopt(h->main.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    ev_timer_init(&h->chores, chores_cb, 0., 0.);
    return h;
}

static void http_free(struct http *h)
{
    while (h->conns) {
        struct drv *d = h->conns;
        conn_unlink(h, d);
        drv_finish(d); /* closes the connection under its owner's feet */
        free(d);
    }
    drv_finish(&h->main);
    while (h->free_reqs) {
        struct http_req *req = h->free_reqs;
        h->free_reqs = req->next;
        req_free(req);
    }
    while (h->free_socks) {
        struct sock *s = h->free_socks;
        h->free_socks = s->next;
        free(s);
    }
    ev_timer_stop(h->loop, &h->chores);
    free(h->user_agent);
    free(h->ca_file);
    free(h->cert_file);
    free(h->key_file);
    free(h);
    curl_global_cleanup();
}

void http_destroy(struct http *h)
{
    if (h == NULL || h->dying) {
        return;
    }
    h->dying = 1;
    enter(h);
    while (h->reqs) {
        http_cancel(h->reqs);
    }
    leave(h);
}
