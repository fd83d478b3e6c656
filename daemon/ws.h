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
    void (*on_open)(void *arg);
    void (*on_text)(void *arg, const char *msg, size_t len);
    /* code: the peer's close code, or 1006 for an abnormal close; reason is
     * never NULL. Not called after ws_close()/ws_destroy() by the caller. */
    void (*on_close)(void *arg, int code, const char *reason, int auth_failed);
};

/* url: http(s)://host:port/path or ws(s)://...; headers: NULL-terminated
 * "Name: value" strings (copied). max_message: bytes (default 1 MiB when 0). */
struct ws *ws_create(struct ev_loop *loop, struct http *http, const char *url,
                     const char *const *headers, size_t max_message,
                     const struct ws_callbacks *cb, void *arg);
void ws_destroy(struct ws *w);

/* Start connecting; on_open or on_close follows. Returns 0 or -EALREADY. */
int ws_connect(struct ws *w);

/* Queue a text message; returns 0, or -ENOTCONN when not open (the caller
 * decides whether to drop or keep it). */
int ws_send_text(struct ws *w, const char *msg, size_t len);

/* Send a close frame and drop the connection; no on_close follows. */
void ws_close(struct ws *w);

int ws_is_open(const struct ws *w);

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
};

/*
 * Parse one frame from buf (len bytes), unmasking a masked payload in place.
 * Returns the bytes consumed (> 0), 0 when more bytes are needed, or
 * -EPROTO for a frame that breaks RFC 6455 (reserved bits, bad opcode,
 * control frame too long or fragmented, payload over max_len).
 */
long ws_frame_parse(uint8_t *buf, size_t len, size_t max_len, struct ws_frame *out);

/* Encode a client frame (masked with `mask`) into out (at least len + 14
 * bytes); returns the bytes written. */
size_t ws_frame_encode(uint8_t *out, int opcode, const uint8_t *payload, size_t len,
                       const uint8_t mask[4]);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (base64 of SHA-1 of key +
 * GUID) into out (at least 29 bytes). */
void ws_accept_key(const char *key, char out[29]);

#endif /* AVT_DAEMON_WS_H */
