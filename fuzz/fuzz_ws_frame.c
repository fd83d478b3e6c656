/*
 * fuzz_ws_frame.c - libFuzzer target for the WebSocket client's parsers: the
 * handshake answer (ws_handshake_parse) and the frame parser
 * (ws_frame_parse), driven the way ws.c drives them. The input is the byte
 * stream a server sends after the client's upgrade request: when it starts
 * with a valid 101 head (Sec-WebSocket-Accept for the RFC 6455 sample key,
 * as in the seeds), frames are read after it; otherwise the whole input is
 * also read as frames. Frames go through a reassembly state machine with the
 * rules of ws.c's on_data (continuations, interleaved control frames, a
 * message size limit), and every parsed frame is re-encoded with
 * ws_frame_encode, masked and unmasked, and must parse back to itself.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ws.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* RFC 6455 1.3: the accept value for key "dGhlIHNhbXBsZSBub25jZQ==". */
#define SAMPLE_KEY "dGhlIHNhbXBsZSBub25jZQ=="
static char accept_value[29];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(getenv("AVT_FUZZ_LOG") ? LOG_DEBUG : LOG_EMERG);
    ws_accept_key(SAMPLE_KEY, accept_value);
    assert(strcmp(accept_value, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    return 0;
}

/* The reassembly state of one connection (ws.c: msg_op, msg). */
struct reasm {
    int op; /* opcode of the message being reassembled, 0 = none */
    size_t len, max;
    uint8_t *buf;
};

/* Encode the frame again and parse it back: same opcode, payload, FIN. */
static void roundtrip(const struct ws_frame *f)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t *enc = malloc(f->len + 14);
    assert(enc != NULL);
    for (int masked = 0; masked < 2; masked++) {
        size_t n = ws_frame_encode(enc, f->opcode, f->payload, f->len, masked ? mask : NULL);
        assert(n >= f->len + 2 && n <= f->len + 14);
        struct ws_frame g;
        long m = ws_frame_parse(enc, n, f->len, &g);
        assert(m == (long)n);
        assert(g.fin == 1 && g.opcode == f->opcode && g.len == f->len && g.masked == masked);
        assert(f->len == 0 || memcmp(g.payload, f->payload, f->len) == 0);
    }
    free(enc);
}

/* A data frame: 0 to go on, -1 for a protocol error (the connection ends). */
static int on_data(struct reasm *r, const struct ws_frame *f)
{
    if ((f->opcode == WS_OP_CONT) != (r->op != 0))
        return -1; /* a continuation outside a message, or a new one inside */
    if (f->opcode != WS_OP_CONT) {
        r->op = f->opcode;
        r->len = 0;
    }
    if (f->len > r->max - r->len)
        return -1;
    uint8_t *nb = realloc(r->buf, r->len + f->len + 1);
    assert(nb != NULL);
    r->buf = nb;
    if (f->len > 0)
        memcpy(r->buf + r->len, f->payload, f->len);
    r->len += f->len;
    if (f->fin) {
        r->buf[r->len] = '\0';
        r->op = 0;
    }
    return 0;
}

/* Read frames from a private copy of data as ws.c's process_frames does. */
static void read_frames(const uint8_t *data, size_t size, size_t max_message)
{
    uint8_t *copy = malloc(size ? size : 1);
    assert(copy != NULL);
    if (size > 0)
        memcpy(copy, data, size);
    struct reasm r = {0, 0, max_message, NULL};
    size_t off = 0;
    while (off < size) {
        struct ws_frame f;
        long n = ws_frame_parse(copy + off, size - off, max_message, &f);
        if (n <= 0) {
            assert(n == 0 || n == -EPROTO);
            break;
        }
        assert((size_t)n <= size - off && f.len <= max_message);
        assert(f.payload >= copy + off && f.payload + f.len <= copy + off + n);
        off += (size_t)n;
        roundtrip(&f);
        if (f.masked)
            break; /* a server must not mask */
        if ((f.opcode & 0x8) != 0) {
            assert(f.fin && f.len <= 125);
            if (f.opcode == WS_OP_CLOSE)
                break;
        } else if (on_data(&r, &f) < 0) {
            break;
        }
    }
    free(r.buf);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int status;
    const char *why;
    long head = ws_handshake_parse(data, size, accept_value, &status, &why);
    assert(head >= -EPROTO && (size_t)(head > 0 ? head : 0) <= size);
    assert(head != -EPROTO || why != NULL);
    if (head > 0) {
        assert(status == 101);
        read_frames(data + head, size - (size_t)head, 1 << 20);
        read_frames(data + head, size - (size_t)head, 16);
    } else {
        read_frames(data, size, 1 << 20);
        read_frames(data, size, 16);
    }
    return 0;
}
