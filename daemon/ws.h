/*
 * ws.h - a minimal RFC 6455 WebSocket client (text frames, ping/pong,
 * close; client-side masking; fragmented messages reassembled), for the
 * orchestrator's /_worker/ws/{worker_id} endpoint. Loop thread only.
 *
 * The TCP (or TLS) connection comes from http_connect_only(), so name
 * resolution never blocks the loop and TLS is libcurl's. The handshake
 * sends the given extra headers (X-Worker-Token, X-RXON-Version) and checks
 * Sec-WebSocket-Accept. Avtomatika answers a bad token with "101" and then
 * a plain "HTTP/1.1 401" in the upgraded stream (PROTOCOL.md 1.1): a
 * connection that closes, or sends bytes that are not a valid frame, before
 * any valid frame arrived is reported with auth_failed = 1.
 *
 * Reconnection and backoff are the caller's (orch) business: after on_close
 * the ws object is idle and may be ws_connect()ed again or destroyed.
 */
#ifndef AVT_DAEMON_WS_H
#define AVT_DAEMON_WS_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct http;
struct ws;

struct ws_callbacks {
    /* The handshake was answered 101 with a correct Sec-WebSocket-Accept.
     * With Avtomatika a bad token still gets here: see auth_failed. */
    void (*on_open)(void *arg);
    /* A complete text message (fragments reassembled). msg is
     * NUL-terminated (msg[len] == 0) and valid during the call only. It is
     * not checked for valid UTF-8: the JSON parser rejects bad input. */
    void (*on_text)(void *arg, const char *msg, size_t len);
    /* code: the peer's close code, or 1006 for an abnormal close; reason is
     * never NULL. Not called after ws_close()/ws_destroy() by the caller.
     * A protocol error of the server is reported with the code this client
     * sent in its close frame: 1002 (protocol error) or 1009 (message over
     * max_message). auth_failed = 1 for a 401/403 handshake answer, for bytes
     * that are not a frame right after the 101, and for a close before any
     * valid frame within 2 s of the 101. Every callback may call any ws_
     * function on this object, ws_destroy() included. */
    void (*on_close)(void *arg, int code, const char *reason, int auth_failed);
};

/* url: http(s)://host:port/path or ws(s)://...; headers: NULL-terminated
 * "Name: value" strings (copied). max_message: bytes (default 1 MiB when 0).
 * Returns NULL (logged) for a URL of another scheme or a header holding a
 * CR or LF. */
struct ws *ws_create(struct ev_loop *loop, struct http *http, const char *url,
                     const char *const *headers, size_t max_message, const struct ws_callbacks *cb,
                     void *arg);
void ws_destroy(struct ws *w);

/* Start connecting; on_open or on_close follows (never from inside this
 * call). Returns 0, -EALREADY when not idle, or -EINVAL for a NULL w. */
int ws_connect(struct ws *w);

/* Queue a text message; returns 0, or -ENOTCONN when not open or w is NULL
 * (the caller decides whether to drop or keep it). The queue has no limit:
 * a peer that stops reading is found by the ping timeout, which drops the
 * connection and its queue. */
int ws_send_text(struct ws *w, const char *msg, size_t len);

/* Send a close frame (1000; ws_destroy sends 1001) as far as the socket
 * takes it now, and drop the connection; no on_close follows. A connect in
 * progress is cancelled. No-op when idle or NULL. */
void ws_close(struct ws *w);

int ws_is_open(const struct ws *w);

/*
 * Keep-alive and time limits (the server sends no pings, so a healthy idle
 * socket may stay silent for hours; only our own pings find a half-open
 * TCP connection). A ping goes out every ping_interval seconds (default 30;
 * 0 disables pings); no pong within pong_timeout seconds (default 30) ends
 * the connection with on_close(1006, "ping timeout"). connect_timeout
 * (default 10) limits the TCP/TLS connect and, separately, the handshake.
 * Values below 0 keep the current setting. Applies from the next
 * ws_connect().
 */
void ws_set_timeouts(struct ws *w, double ping_interval, double pong_timeout,
                     double connect_timeout);

/* Framing, exposed for unit tests and the fuzzer. */
enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

struct ws_frame {
    int fin;
    int opcode;
    const uint8_t *payload; /* points into the parsed buffer, unmasked in place */
    size_t len;
    int masked; /* 1: the frame carried a mask (a server must not send one) */
};

/*
 * Parse one frame from buf (len bytes), unmasking a masked payload in place.
 * Returns the bytes consumed (> 0), 0 when more bytes are needed, or
 * -EPROTO for a frame that breaks RFC 6455 (reserved bits, bad opcode,
 * control frame too long or fragmented, payload over max_len).
 */
long ws_frame_parse(uint8_t *buf, size_t len, size_t max_len, struct ws_frame *out);

/* Encode a client frame (masked with `mask`) into out (at least len + 14
 * bytes); returns the bytes written. FIN is set. mask NULL encodes an
 * unmasked frame, as a server sends it (tests). Lengths of 126 and more use
 * the shortest extended length form; the parser accepts longer forms. */
size_t ws_frame_encode(uint8_t *out, int opcode, const uint8_t *payload, size_t len,
                       const uint8_t mask[4]);

/*
 * Check the server's answer to the opening handshake: buf holds the len
 * bytes received so far (frames may follow the head). Returns the length of
 * the answer's head (> 0) for a 101 with "Upgrade: websocket",
 * "Connection: Upgrade" and Sec-WebSocket-Accept equal to `accept`; 0 when
 * more bytes are needed; -EPROTO otherwise, with *why saying what is wrong.
 * *status is the answer's status code, 0 while there is none.
 */
long ws_handshake_parse(const uint8_t *buf, size_t len, const char *accept, int *status,
                        const char **why);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (base64 of SHA-1 of key +
 * GUID) into out (at least 29 bytes). */
void ws_accept_key(const char *key, char out[29]);

/* The primitives behind it (OpenSSL's), exposed for unit tests: SHA-1 of
 * len bytes, and standard padded base64 of len bytes into out (at least
 * 4 * ((len + 2) / 3) + 1 bytes, NUL-terminated); returns the characters
 * written. */
void ws_sha1(const void *data, size_t len, uint8_t out[20]);
size_t ws_base64(const uint8_t *in, size_t len, char *out);

#endif /* AVT_DAEMON_WS_H */
