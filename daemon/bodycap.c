/*
 * bodycap.c - what an orchestrator's answer may cost (bodycap.h): the body
 * limit of each endpoint, and jansson's memory for a JSON text estimated
 * before it is built. The costs below were measured with jansson 2.14 on
 * glibc (a counting allocator, malloc_usable_size plus the chunk header)
 * and rounded up: `[{},...]` 234 bytes per element, `[[],...]` 138,
 * `[1,...]` 42, `["",...]` 90, `[true,...]` 20 at the peak (the table's
 * growth), an object member 101 plus its value; a large string peaks at
 * three times its length (the lexer's doubling buffer, then the copy).
 */
#include "bodycap.h"

#include <stdio.h>

#define COST_OBJECT 240
#define COST_ARRAY 144
#define COST_MEMBER 96
#define COST_STRING 80
#define COST_NUMBER 32
#define COST_SLOT 24 /* a pointer in a table that doubles: old and new table at once */
#define STRING_FACTOR 3
#define COST_PARSE 16384 /* the parser's own state and buffers */

static const char *const names[BODYCAP_COUNT] = {"register",  "heartbeat",    "result",
                                                 "event",     "access token", "protocol detection",
                                                 "WebSocket", "poll"};

const char *bodycap_name(enum bodycap_endpoint ep)
{
    return (unsigned)ep < BODYCAP_COUNT ? names[ep] : "?";
}

size_t bodycap_limit(enum bodycap_endpoint ep, size_t max_task_bytes, int slots)
{
    switch (ep) {
    case BODYCAP_POLL:
        return max_task_bytes;
    case BODYCAP_HEARTBEAT:
        return BODYCAP_SMALL + (size_t)(slots > 0 ? slots : 0) * BODYCAP_PER_SLOT;
    default:
        return BODYCAP_SMALL;
    }
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_space(const char *s, size_t i, size_t len)
{
    while (i < len && is_space(s[i]))
        i++;
    return i;
}

/* The index after the string that opens at s[i] (len when unterminated). */
static size_t string_end(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* The index after the bare token (number, literal, garbage) at s[i]. */
static size_t token_end(const char *s, size_t i, size_t len)
{
    while (i < len && !is_space(s[i]) && s[i] != ',' && s[i] != ']' && s[i] != '}' && s[i] != ':' &&
           s[i] != '"' && s[i] != '[' && s[i] != '{')
        i++;
    return i;
}

size_t bodycap_json_cost(const char *s, size_t len, size_t stop)
{
    size_t cost = len > 0 ? COST_PARSE : 0, i = 0;
    while (i < len && cost <= stop) {
        char c = s[i];
        if (c == '"') {
            size_t end = string_end(s, i, len), n = end - i;
            size_t next = skip_space(s, end, len);
            if (next < len && s[next] == ':')
                cost += COST_MEMBER + STRING_FACTOR * n; /* a key: the pair holds it */
            else
                cost += COST_SLOT + COST_STRING + STRING_FACTOR * n;
            i = end;
        } else if (c == '{') {
            cost += COST_SLOT + COST_OBJECT;
            i++;
        } else if (c == '[') {
            cost += COST_SLOT + COST_ARRAY;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            cost += COST_SLOT + COST_NUMBER;
            i = token_end(s, i, len);
        } else if (is_space(c) || c == ',' || c == ':' || c == ']' || c == '}') {
            i++;
        } else { /* true, false, null: shared singletons; or garbage */
            cost += COST_SLOT;
            i = token_end(s, i, len);
        }
    }
    return cost;
}

/* "15.0 MiB", "64 KiB", "300 bytes". */
static const char *human(size_t n, char *buf, size_t len)
{
    if (n >= 1024 * 1024)
        snprintf(buf, len, "%.1f MiB", (double)n / (1024.0 * 1024.0));
    else if (n >= 1024)
        snprintf(buf, len, "%.1f KiB", (double)n / 1024.0);
    else
        snprintf(buf, len, "%zu bytes", n);
    return buf;
}

int bodycap_check_task(const char *s, size_t len, size_t max_task_bytes, char *why, size_t whylen)
{
    char b[32];
    size_t i = skip_space(s, 0, len);
    if (i == len || s[i] != '{') {
        snprintf(why, whylen, "not a JSON object (a task is one object): it starts with %s",
                 i == len      ? "nothing"
                 : s[i] == '[' ? "'[' (a list)"
                               : "something else");
        return -1;
    }
    size_t budget = BODYCAP_PARSE_FACTOR * max_task_bytes;
    size_t cost = bodycap_json_cost(s, len, budget);
    if (cost > budget) {
        snprintf(why, whylen,
                 "its %zu bytes would take more than %s of memory once parsed (%u x "
                 "max_task_bytes): too many small values",
                 len, human(budget, b, sizeof(b)), BODYCAP_PARSE_FACTOR);
        return -1;
    }
    return 0;
}
