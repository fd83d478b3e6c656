/*
 * http.h - asynchronous HTTP over libcurl's multi interface, driven by the
 * libev loop (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION). Loop thread
 * only. Connections are kept alive and reused; responses may be
 * gzip-encoded (Accept-Encoding: gzip) and are decoded by libcurl; a body
 * larger than max_body is an error, never a crash.
 *
 * A request's callback runs exactly once: with the response, with a
 * transport error, or with cancelled = 1 (http_cancel, http_destroy). It is
 * never called from inside http_request() itself.
 */
#ifndef AVT_DAEMON_HTTP_H
#define AVT_DAEMON_HTTP_H

#include <stddef.h>

#include <curl/curl.h>

struct ev_loop;
struct http;
struct http_req;

struct http_opts {
    const char *user_agent; /* default "avtworkerd/VERSION" */
    size_t max_body;        /* bytes; default 16 MiB */
    double connect_timeout; /* seconds; default 10 */
    /* TLS (issue "Production connectivity"); all may be NULL. */
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    int insecure; /* 1: do not verify the server (loudly logged by the caller) */
    /* 1: offer "Accept-Encoding: gzip". Off by default: the orchestrator
     * compresses every answer of 500 bytes or more at gzip level 9 when
     * asked, CPU that a fast network does not pay back (http_set_compressed). */
    int compressed;
};

struct http_response {
    long status;      /* HTTP status, 0 when there is none (transport error) */
    const char *body; /* NUL-terminated, decoded; "" when empty; valid during the callback */
    size_t len;
    double retry_after;       /* seconds from a Retry-After header, -1 when absent/invalid */
    double date;              /* the Date header as unix seconds, 0 when absent/invalid */
    const char *rxon_version; /* the X-RXON-Version header, "" when absent (never NULL) */
    CURLcode curl_code;       /* CURLE_OK, or the transport error */
    const char *error;        /* human-readable transport error, NULL when none */
    int cancelled;            /* 1: cancelled; ignore the rest */
    int too_large;            /* 1: body exceeded its limit (status is set, body is not) */
    size_t body_seen;         /* too_large: the body's size as far as known (its Content-Length,
                                 else the bytes received when the limit was passed: a lower bound) */
    size_t max_body;          /* the limit the body was held to (http_set_max_body) */
    double elapsed;           /* seconds from start to completion */
};

typedef void (*http_done_fn)(void *arg, const struct http_response *resp);

/* opts may be NULL (defaults). The loop must outlive the http object. */
struct http *http_create(struct ev_loop *loop, const struct http_opts *opts);

/* Cancel every outstanding request (their callbacks run with cancelled =
 * 1, synchronously, before this returns), then free. NULL is a no-op. */
void http_destroy(struct http *h);

/*
 * Start a request. `headers` is a NULL-terminated array of "Name: value"
 * strings (copied; may be NULL). `body` (copied) with `len` bytes is sent
 * for POST/PATCH/PUT; body NULL sends none (POST/PATCH/PUT then send
 * "Content-Length: 0"). `timeout` is the whole transfer's limit in seconds
 * (0 = none). Returns a handle usable with http_cancel() until the callback
 * has run; NULL (and no callback) only when called during http_destroy(),
 * i.e. from a callback that it runs.
 */
struct http_req *http_request(struct http *h, const char *method, const char *url,
                              const char *const *headers, const char *body, size_t len,
                              double timeout, http_done_fn done, void *arg);

/*
 * Hold this request's answer body to `max_body` decoded bytes instead of
 * the client's (0: the client's again). Call it right after http_request():
 * an answer whose Content-Length is larger is refused before its first
 * byte is kept, a longer one when it passes the limit (too_large).
 */
void http_set_max_body(struct http_req *req, size_t max_body);

/* Offer gzip (1) or not (0) in the requests made from now on (reload). */
void http_set_compressed(struct http *h, int on);

/* Cancel one request: its callback runs now with cancelled = 1. */
void http_cancel(struct http_req *req);

/* Number of requests in flight (tests, metrics). */
int http_pending(const struct http *h);

/* Number of connections handed out by http_connect_only() whose owner has
 * not closed them yet (tests, metrics). */
int http_conn_count(const struct http *h);

/*
 * Open a raw connection to the host and port of `url` (http:// or https://;
 * TLS is set up by libcurl with the same options) without sending anything
 * (CURLOPT_CONNECT_ONLY), for the WebSocket client. On success `done` gets
 * an easy handle that is connected and no longer in the multi: the caller
 * owns it, uses curl_easy_send/curl_easy_recv on it with an ev_io watcher on
 * CURLINFO_ACTIVESOCKET, and frees it with curl_easy_cleanup(). On failure
 * `easy` is NULL and `error` says why. Exactly once, never re-entrantly.
 * (libcurl 7.88 closes a CONNECT_ONLY connection whose handle leaves its
 * multi, so the handle stays in a private multi of this module, freed from
 * the loop after the caller's curl_easy_cleanup(). The caller must not add
 * it to a multi of its own. Connections still open at http_destroy() are
 * closed there; curl_easy_cleanup() remains safe afterwards.)
 */
typedef void (*http_connect_fn)(void *arg, CURL *easy, const char *error);
struct http_req *http_connect_only(struct http *h, const char *url, double timeout,
                                   http_connect_fn done, void *arg);

#endif /* AVT_DAEMON_HTTP_H */
