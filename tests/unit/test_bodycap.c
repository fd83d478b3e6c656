/*
 * test_bodycap.c - what an orchestrator's answer may cost (bodycap.h).
 * The limits: a poll's is max_task_bytes, a heartbeat's grows with the
 * slots (it names held tasks), every other endpoint's is 64 KiB. The
 * estimate of jansson's memory is checked against jansson itself: the
 * texts are parsed with a counting allocator (json_set_alloc_funcs, usable
 * size plus the chunk header), and the estimate must lie between the peak
 * jansson really reached and three times it (for a small text only above
 * it: the parser's fixed 16 KiB dominates), for every shape a hostile
 * answer could use (empty objects and arrays, numbers, strings, literals,
 * members, nesting, one large string). bodycap_check_task() refuses what
 * is not one object and a 15 MiB `[{},...]` or `{"params":[{},...]}`
 * quickly, and passes a realistic 15 MiB task (a base64 image).
 */
#include "bodycap.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tap.h"
#include "util.h"

#define MIB (1024u * 1024u)

/* ---- a counting allocator for jansson ------------------------------------ */

static size_t cur, peak;

static void *count_malloc(size_t n)
{
    void *p = malloc(n);
    if (p != NULL) {
        cur += malloc_usable_size(p) + sizeof(size_t);
        if (cur > peak)
            peak = cur;
    }
    return p;
}

static void count_free(void *p)
{
    if (p != NULL) {
        cur -= malloc_usable_size(p) + sizeof(size_t);
        free(p);
    }
}

/* The peak bytes jansson allocated to parse s (it must parse). */
static size_t jansson_peak(const char *s)
{
    json_set_alloc_funcs(count_malloc, count_free);
    cur = peak = 0;
    json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
    size_t p = peak;
    if (j == NULL)
        p = 0;
    json_decref(j);
    json_set_alloc_funcs(malloc, free);
    return p;
}

/* pre + n copies of unit separated by commas + post (caller frees). */
static char *repeat(const char *pre, const char *unit, size_t n, const char *post)
{
    size_t ul = strlen(unit), len = strlen(pre) + n * (ul + 1) + strlen(post) + 1;
    char *s = xmalloc(len), *p = s;
    p += snprintf(p, len, "%s", pre);
    for (size_t i = 0; i < n; i++) {
        memcpy(p, unit, ul);
        p += ul;
        if (i + 1 < n)
            *p++ = ',';
    }
    memcpy(p, post, strlen(post) + 1);
    return s;
}

/* ---- limits ---------------------------------------------------------------- */

TEST(each_endpoint_has_the_limit_of_what_it_carries)
{
    EXPECT_EQ_INT(bodycap_limit(BODYCAP_POLL, 16 * MIB, 8), 16 * MIB);
    EXPECT_EQ_INT(bodycap_limit(BODYCAP_POLL, 100000, 8), 100000);
    EXPECT_EQ_INT(bodycap_limit(BODYCAP_HEARTBEAT, 16 * MIB, 8), 64 * 1024 + 8 * 1024);
    EXPECT_EQ_INT(bodycap_limit(BODYCAP_HEARTBEAT, 16 * MIB, 4096), 64 * 1024 + 4 * MIB);
    EXPECT_EQ_INT(bodycap_limit(BODYCAP_HEARTBEAT, 16 * MIB, 0), 64 * 1024);
    enum bodycap_endpoint small[] = {BODYCAP_REGISTER, BODYCAP_RESULT, BODYCAP_EVENT,
                                     BODYCAP_TOKEN,    BODYCAP_DETECT, BODYCAP_WS};
    for (size_t i = 0; i < ARRAY_LEN(small); i++)
        EXPECT_EQ_INT(bodycap_limit(small[i], 16 * MIB, 4096), 64 * 1024);
    EXPECT_EQ_STR(bodycap_name(BODYCAP_POLL), "poll");
    EXPECT_EQ_STR(bodycap_name(BODYCAP_HEARTBEAT), "heartbeat");
    EXPECT_EQ_STR(bodycap_name(BODYCAP_COUNT), "?");
}

/* ---- the estimate against jansson ---------------------------------------------- */

/* The estimate of s is at least jansson's peak, and at most `factor` times
 * it (0: no upper bound; the parser's fixed 16 KiB dominates small texts). */
static void check_estimate(const char *what, const char *s, double factor)
{
    size_t real = jansson_peak(s);
    size_t est = bodycap_json_cost(s, strlen(s), (size_t)-1);
    if (real == 0)
        TAP_FAIL_("%s: jansson did not parse it", what);
    else if (est < real || (factor > 0 && (double)est > factor * (double)real))
        TAP_FAIL_("%s: estimate %zu, jansson's peak %zu (%.2fx)", what, est, real,
                  (double)est / (double)real);
}

TEST(the_estimate_bounds_what_jansson_takes)
{
    static const struct {
        const char *name, *unit;
    } shapes[] = {
        {"empty objects", "{}"},
        {"empty arrays", "[]"},
        {"integers", "1"},
        {"reals", "0.12345678"},
        {"empty strings", "\"\""},
        {"short strings", "\"abcdefghij\""},
        {"escaped strings", "\"a\\\"b\\\\c\\u00e9\""},
        {"true", "true"},
        {"null", "null"},
        {"small objects", "{\"a\":1}"},
        {"nested", "[[1]]"},
        {"objects in objects", "{\"a\":{}}"},
        {"records", "{\"id\":\"x-1\",\"score\":0.5,\"tags\":[\"a\",\"b\"],\"ok\":true}"},
    };
    for (size_t i = 0; i < ARRAY_LEN(shapes); i++) {
        char *s = repeat("[", shapes[i].unit, 20000, "]");
        check_estimate(shapes[i].name, s, 3);
        free(s);
    }
    /* Many members of one object (the hashtable grows). */
    size_t n = 20000, len = n * 24 + 4;
    char *s = xmalloc(len), *p = s;
    *p++ = '{';
    for (size_t i = 0; i < n; i++)
        p += snprintf(p, len - (size_t)(p - s), "%s\"key%zu\": %zu", i ? ", " : "", i, i);
    memcpy(p, "}", 2);
    check_estimate("members", s, 3);
    free(s);
    /* One large string: the parser's buffer peaks well above it. */
    size_t big = 4 * MIB;
    s = xmalloc(big + 32);
    int head = snprintf(s, 32, "{\"params\":{\"image\":\"");
    memset(s + head, 'A', big);
    memcpy(s + head + big, "\"}}", 4);
    check_estimate("a large string", s, 3);
    free(s);
    /* A realistic task payload. */
    check_estimate("a task",
                   "{\"job_id\":\"j1\",\"task_id\":\"t1\",\"type\":\"echo\","
                   "\"params\":{\"msg\":\"hi\",\"n\":1},\"tracing_context\":{},"
                   "\"params_metadata\":null}",
                   0);
}

TEST(counting_stops_past_the_limit_asked)
{
    char *s = repeat("[", "{}", 1000000, "]");
    size_t all = bodycap_json_cost(s, strlen(s), (size_t)-1);
    size_t some = bodycap_json_cost(s, strlen(s), 10000);
    EXPECT(all > 200000000); /* a million empty objects: ~250 MB */
    EXPECT(some > 10000 && some < 10000 + 16384 + 300);
    free(s);
    /* Not JSON: estimated all the same, never past the text. */
    EXPECT(bodycap_json_cost("\"unterminated", 13, (size_t)-1) >= 3 * 13);
    EXPECT(bodycap_json_cost("\\", 1, (size_t)-1) == 16384 + 24);
    EXPECT(bodycap_json_cost("", 0, (size_t)-1) == 0);
    EXPECT(bodycap_json_cost("\"a\\", 3, (size_t)-1) > 0);
}

/* ---- a task before it is parsed --------------------------------------------------- */

TEST(a_task_must_be_one_object)
{
    char why[256];
    EXPECT_EQ_INT(bodycap_check_task(" \n{\"task_id\":\"t\"}", 17, 16 * MIB, why, sizeof(why)), 0);
    EXPECT_EQ_INT(bodycap_check_task("[{},{}]", 7, 16 * MIB, why, sizeof(why)), -1);
    EXPECT_CONTAINS(why, "not a JSON object (a task is one object): it starts with '[' (a list)");
    EXPECT_EQ_INT(bodycap_check_task("  ", 2, 16 * MIB, why, sizeof(why)), -1);
    EXPECT_CONTAINS(why, "starts with nothing");
    EXPECT_EQ_INT(bodycap_check_task("\"x\"", 3, 16 * MIB, why, sizeof(why)), -1);
    EXPECT_CONTAINS(why, "starts with something else");
}

TEST(a_task_that_would_be_built_too_large_is_refused)
{
    char why[256];
    /* The 15 MiB answer, as a list and wrapped in an object. */
    size_t n = 15 * MIB / 3;
    char *list = repeat("[", "{}", n, "]");
    EXPECT_EQ_INT(bodycap_check_task(list, strlen(list), 16 * MIB, why, sizeof(why)), -1);
    free(list);
    char *obj = repeat("{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"echo\",\"params\":{\"a\":[",
                       "{}", n, "]}}");
    EXPECT_EQ_INT(bodycap_check_task(obj, strlen(obj), 16 * MIB, why, sizeof(why)), -1);
    EXPECT_CONTAINS(why, "would take more than 64.0 MiB of memory once parsed (4 x "
                         "max_task_bytes): too many small values");
    /* With a smaller max_task_bytes the budget shrinks with it. */
    EXPECT_EQ_INT(bodycap_check_task(obj, 1 * MIB, 1 * MIB, why, sizeof(why)), -1);
    EXPECT_CONTAINS(why, "more than 4.0 MiB");
    free(obj);
    /* A realistic large task: one 15 MiB base64 string in its params. */
    size_t big = 15 * MIB;
    char *img = xmalloc(big + 128);
    int head = snprintf(img, 128,
                        "{\"job_id\":\"j\",\"task_id\":\"t\",\"type\":\"ocr\","
                        "\"params\":{\"image\":\"");
    memset(img + head, 'Q', big);
    memcpy(img + head + big, "\"}}", 4);
    EXPECT_EQ_INT(bodycap_check_task(img, strlen(img), 16 * MIB, why, sizeof(why)), 0);
    free(img);
    /* So is a dense list of numbers of 11 MiB (a vector of a million reals,
     * about 56 MB in jansson); one of 15 MiB would take more than 64 MiB:
     * such tasks need a larger max_task_bytes. */
    char *vec = repeat("{\"task_id\":\"t\",\"params\":{\"v\":[", "0.12345678", 1000000, "]}}");
    EXPECT_EQ_INT(bodycap_check_task(vec, strlen(vec), 16 * MIB, why, sizeof(why)), 0);
    free(vec);
    vec = repeat("{\"task_id\":\"t\",\"params\":{\"v\":[", "0.12345678", 1400000, "]}}");
    EXPECT_EQ_INT(bodycap_check_task(vec, strlen(vec), 16 * MIB, why, sizeof(why)), -1);
    EXPECT_EQ_INT(bodycap_check_task(vec, strlen(vec), 24 * MIB, why, sizeof(why)), 0);
    free(vec);
}

TAP_MAIN()
