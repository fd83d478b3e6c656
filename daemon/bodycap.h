/*
 * bodycap.h - what an orchestrator's answer may cost this worker: the body
 * limit of each endpoint, sized to what the endpoint can carry, and the
 * memory jansson would take to build a JSON text, estimated in one pass
 * without allocating, so that a hostile or broken orchestrator cannot
 * make the daemon build a tree many times larger than the bytes it sent
 * (a 15 MiB `[{},{},...]` is 1.2 GB of jansson objects).
 *
 * Pure functions: no state, no allocation, any thread.
 */
#ifndef AVT_DAEMON_BODYCAP_H
#define AVT_DAEMON_BODYCAP_H

#include <stddef.h>

/* The answers a worker reads. */
enum bodycap_endpoint {
    BODYCAP_REGISTER,  /* {"status": "registered", ...} */
    BODYCAP_HEARTBEAT, /* {"status": "ok", "cancel_task_ids": [ids of held tasks]} or null */
    BODYCAP_RESULT,    /* {"status": "accepted"|"ignored", ...} */
    BODYCAP_EVENT,     /* 1.0b14: {"status": "event_accepted"} */
    BODYCAP_TOKEN,     /* an access token (and a refresh token) */
    BODYCAP_DETECT,    /* /_public/status and the detection's probe */
    BODYCAP_WS,        /* one WebSocket message: a command such as cancel_task */
    BODYCAP_POLL,      /* one task: its params are the plugin's input */
    BODYCAP_COUNT
};

/* The limit of the small answers (everything but a task and a heartbeat
 * of a worker with many slots). */
#define BODYCAP_SMALL (64u * 1024u)
/* Room in a heartbeat answer for one held task's id (256 bytes at most,
 * task.c, escaped). */
#define BODYCAP_PER_SLOT 1024u
/* A task's parsed form may take this many times max_task_bytes. */
#define BODYCAP_PARSE_FACTOR 4u

/* The name of an endpoint for the log ("poll", "heartbeat", ...). */
const char *bodycap_name(enum bodycap_endpoint ep);

/*
 * The largest answer body (decoded bytes) read from `ep`: max_task_bytes
 * for a poll; BODYCAP_SMALL plus BODYCAP_PER_SLOT per slot for a heartbeat
 * (it names held tasks); BODYCAP_SMALL for every other endpoint.
 */
size_t bodycap_limit(enum bodycap_endpoint ep, size_t max_task_bytes, int slots);

/*
 * The bytes jansson (2.x, glibc malloc) would allocate to parse the JSON
 * text s[0..len), an upper estimate: an object costs about 240 bytes, an
 * array 144, a member 96 plus three times its key, a string 80 plus three
 * times its length (the parser's buffer grows by doubling while it reads
 * it), a number 32, every value a 24-byte slot in its container, and the
 * parser 16 KiB. Stops
 * counting (and returns a value above `stop`) as soon as the estimate
 * exceeds `stop`. Text that is not JSON is estimated all the same (an
 * unterminated string counts to the end); jansson refuses it later.
 */
size_t bodycap_json_cost(const char *s, size_t len, size_t stop);

/*
 * May a poll answer of `len` bytes be parsed? It must be one JSON object
 * (both dialects hand out one task per answer) whose estimated parse
 * (bodycap_json_cost) stays within BODYCAP_PARSE_FACTOR x max_task_bytes.
 * Returns 0, or -1 with the reason in why (for the log).
 */
int bodycap_check_task(const char *s, size_t len, size_t max_task_bytes, char *why, size_t whylen);

#endif /* AVT_DAEMON_BODYCAP_H */
