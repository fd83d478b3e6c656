/*
 * test_canon.c - the canonical JSON of RXON 1.0b14 (PROTOCOL-1.0b14.md 2.2,
 * 2.3): every vector the orchestrator's own code produced
 * (tests/data/rxon14/), then each rule on its own: escaping, key order,
 * duplicate keys, null removal, the depth limit, integer and double ranges,
 * every float layout, strictness of the parser, the C locale whatever
 * setlocale() says, and concurrent calls.
 */
#include <errno.h>
#include <locale.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canon.h"
#include "rxon_vectors.h"
#include "tap.h"
#include "util.h"

/* canon_json() of a C string; returns the output (caller frees) or NULL
 * with the reason in err. */
static char *canon(const char *in, const char *const *ignore, char *err, size_t errlen)
{
    char *out = NULL;
    size_t len = 0;
    err[0] = '\0';
    int rc = canon_json(in, strlen(in), ignore, &out, &len, err, errlen);
    if (rc == 0 && (out == NULL || strlen(out) != len))
        printf("# canon_json: output length %zu disagrees with strlen\n", len);
    if (rc != 0 && (rc != -EINVAL || out != NULL || err[0] == '\0'))
        printf("# canon_json: rc %d without a clean -EINVAL\n", rc);
    return rc == 0 ? out : NULL;
}

/* The canonical form of in must be want. */
#define EXPECT_CANON(in, want)                                                                     \
    do {                                                                                           \
        char e_[AVT_ERRLEN];                                                                       \
        char *o_ = canon((in), NULL, e_, sizeof(e_));                                              \
        if (o_ == NULL)                                                                            \
            TAP_FAIL_("%s: refused: %s", (in), e_);                                                \
        else if (strcmp(o_, (want)) != 0)                                                          \
            TAP_FAIL_("%s: got %s, want %s", (in), o_, (want));                                    \
        free(o_);                                                                                  \
    } while (0)

/* in must be refused with a reason containing why. */
#define EXPECT_REFUSED(in, why)                                                                    \
    do {                                                                                           \
        char e_[AVT_ERRLEN];                                                                       \
        char *o_ = canon((in), NULL, e_, sizeof(e_));                                              \
        if (o_ != NULL)                                                                            \
            TAP_FAIL_("%s: accepted as %s", (in), o_);                                             \
        else if (strstr(e_, (why)) == NULL)                                                        \
            TAP_FAIL_("%s: reason \"%s\" lacks \"%s\"", (in), e_, (why));                          \
        free(o_);                                                                                  \
    } while (0)

/* One vector: the canonical bytes (string and hex) or the refusal. */
static int check_vector(const json_t *v)
{
    const char *name = rxon_str(v, "name"), *payload = rxon_str(v, "payload_json");
    const char *want = rxon_str(v, "canonical"), *want_hex = rxon_str(v, "canonical_utf8_hex");
    const char *ignore[RXON_IGNORE_MAX + 1];
    char err[AVT_ERRLEN] = "", *out = NULL;
    size_t len = 0;
    int ok = 1;

    if (name == NULL || payload == NULL || rxon_ignore(v, ignore) < 0) {
        TAP_FAIL_("vector %s: malformed", name ? name : "?");
        return 0;
    }
    int rc = canon_json(payload, strlen(payload), ignore, &out, &len, err, sizeof(err));
    if (json_object_get(v, "error") != NULL) {
        if (rc != -EINVAL || out != NULL || err[0] == '\0') {
            TAP_FAIL_("vector %s: rc %d, want -EINVAL (%s)", name, rc, rxon_str(v, "error"));
            ok = 0;
        }
    } else if (rc != 0 || want == NULL || want_hex == NULL) {
        TAP_FAIL_("vector %s: rc %d: %s", name, rc, err);
        ok = 0;
    } else {
        char *hex = rxon_hex(out, len);
        if (len != strlen(want) || memcmp(out, want, len) != 0) {
            TAP_FAIL_("vector %s:\n#     got  %s\n#     want %s", name, out, want);
            ok = 0;
        }
        if (strcmp(hex, want_hex) != 0) {
            TAP_FAIL_("vector %s: canonical_utf8_hex differs", name);
            ok = 0;
        }
        free(hex);
    }
    free(out);
    return ok;
}

static void check_file(const char *file, size_t want_count)
{
    rxon_vectors_check(file, want_count, check_vector, "match");
}

TEST(vectors_main)
{
    check_file(RXON_VECTORS_MAIN, 26);
}

TEST(vectors_extra)
{
    check_file(RXON_VECTORS_EXTRA, 74);
}

/* The canonical form is a fixed point: every vector's canonical text
 * canonicalizes to itself. */
TEST(canonical_is_idempotent)
{
    const char *files[] = {RXON_VECTORS_MAIN, RXON_VECTORS_EXTRA};
    for (size_t f = 0; f < ARRAY_LEN(files); f++) {
        json_t *vectors = rxon_vectors_load(files[f]), *v;
        size_t i;
        ASSERT(vectors != NULL);
        json_array_foreach(vectors, i, v)
        {
            if (rxon_str(v, "canonical") != NULL)
                EXPECT_CANON(rxon_str(v, "canonical"), rxon_str(v, "canonical"));
        }
        json_decref(vectors);
    }
}

/* How JSON writes the control character c, when it has a short form. */
static const char *short_escape(int c)
{
    switch (c) {
    case '\b':
        return "\\b";
    case '\t':
        return "\\t";
    case '\n':
        return "\\n";
    case '\f':
        return "\\f";
    case '\r':
        return "\\r";
    default:
        return NULL;
    }
}

TEST(escaping_table)
{
    /* Every C0 control, then the two JSON specials, then what stays raw. */
    char in[512], want[512];
    size_t a = 0, b = 0;
    a += (size_t)snprintf(in + a, sizeof(in) - a, "{\"s\":\"");
    b += (size_t)snprintf(want + b, sizeof(want) - b, "{\"s\":\"");
    for (int c = 0; c < 0x20; c++) {
        a += (size_t)snprintf(in + a, sizeof(in) - a, "\\u%04X", c);
        const char *named = short_escape(c);
        if (named != NULL)
            b += (size_t)snprintf(want + b, sizeof(want) - b, "%s", named);
        else
            b += (size_t)snprintf(want + b, sizeof(want) - b, "\\u%04x", c);
    }
    snprintf(in + a, sizeof(in) - a, "\\\"\\\\\\/</>&'\x7f\\u007f\\u0080\\u2028\xe2\x80\xa9\"}");
    snprintf(want + b, sizeof(want) - b,
             "\\\"\\\\/</>&'\x7f\x7f\xc2\x80\xe2\x80\xa8\xe2\x80\xa9\"}");
    EXPECT_CANON(in, want);
    /* Short escapes in, same bytes out; keys are escaped the same way. */
    EXPECT_CANON("{\"k\\n\\t\":\"\\b\\f\\n\\r\\t\"}", "{\"k\\n\\t\":\"\\b\\f\\n\\r\\t\"}");
    EXPECT_CANON("{\"s\":\"\\ud83d\\ude00 \\uDBFF\\uDFFF\"}",
                 "{\"s\":\"\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"}");
    EXPECT_CANON("{\"s\":\"h\\u00e9llo\",\"t\":\"h\xc3\xa9llo\"}",
                 "{\"s\":\"h\xc3\xa9llo\",\"t\":\"h\xc3\xa9llo\"}");
}

TEST(nul_inside_strings)
{
    const char in[] = "{\"a\\u0000b\":\"x\\u0000\",\"a\":1}";
    char err[AVT_ERRLEN], *out;
    size_t len;
    ASSERT(canon_json(in, sizeof(in) - 1, NULL, &out, &len, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(out, "{\"a\":1,\"a\\u0000b\":\"x\\u0000\"}");
    EXPECT_EQ_INT(len, strlen(out));
    free(out);
}

TEST(key_order_is_utf8_byte_order)
{
    /* U+FFFF (ef bf bf) sorts before U+10000 (f0 90 80 80), unlike UTF-16;
     * a prefix sorts first. */
    EXPECT_CANON("{\"\\ud800\\udc00\":1,\"\\uffff\":2,\"\\ue000\":3,\"z\":4,\"\":5,"
                 "\"\\u00e9\":6,\"Z\":7,\" \":8,\"ab\":9,\"a\":10,\"a\\u0000\":11}",
                 "{\"\":5,\" \":8,\"Z\":7,\"a\":10,\"a\\u0000\":11,\"ab\":9,\"z\":4,"
                 "\"\xc3\xa9\":6,\"\xee\x80\x80\":3,\"\xef\xbf\xbf\":2,\"\xf0\x90\x80\x80\":1}");
    EXPECT_CANON("{\"b\":{\"y\":1,\"x\":[{\"d\":1,\"c\":2}]},\"a\":0}",
                 "{\"a\":0,\"b\":{\"x\":[{\"c\":2,\"d\":1}],\"y\":1}}");
}

TEST(duplicate_keys_keep_the_last)
{
    EXPECT_CANON("{\"a\":1,\"a\":2}", "{\"a\":2}");
    EXPECT_CANON("{\"a\":1,\"a\":null}", "{}");
    EXPECT_CANON("{\"a\":null,\"a\":1}", "{\"a\":1}");
    EXPECT_CANON("{\"b\":1,\"a\":2,\"b\":3,\"a\":4,\"b\":5}", "{\"a\":4,\"b\":5}");
    EXPECT_CANON("{\"a\":{\"x\":1},\"a\":{\"y\":2}}", "{\"a\":{\"y\":2}}");
    /* An escaped and a raw spelling are the same key. */
    EXPECT_CANON("{\"\\u00e9\":1,\"\xc3\xa9\":2}", "{\"\xc3\xa9\":2}");
    /* A value that is overwritten is never range-checked (orjson drops it
     * while parsing). */
    EXPECT_CANON("{\"a\":1e300,\"a\":1}", "{\"a\":1}");
}

TEST(nulls_go_from_objects_only)
{
    EXPECT_CANON("{\"a\":null}", "{}");
    EXPECT_CANON("{\"a\":{\"b\":{\"c\":null}},\"d\":[{\"e\":null}]}",
                 "{\"a\":{\"b\":{}},\"d\":[{}]}");
    EXPECT_CANON("{\"a\":[null,null],\"b\":[[null]],\"c\":[1,null,{\"k\":null}]}",
                 "{\"a\":[null,null],\"b\":[[null]],\"c\":[1,null,{}]}");
    EXPECT_CANON("{\"s\":\"null\",\"e\":[],\"o\":{}}", "{\"e\":[],\"o\":{},\"s\":\"null\"}");
}

TEST(top_level_security_and_ignored_members)
{
    const char *const bubbling[] = {"bubbling_chain", NULL};
    const char *const two[] = {"x", "y", NULL};
    char err[AVT_ERRLEN], *out;

    EXPECT_CANON("{\"security\":{\"signature\":\"s\"},\"a\":1}", "{\"a\":1}");
    EXPECT_CANON("{\"a\":{\"security\":1},\"security\":2}", "{\"a\":{\"security\":1}}");
    EXPECT_CANON("{\"security\":1}", "{}");
    /* The dropped member is not range-checked either (rxon pops it after
     * to_dict()), but its encoding is (orjson parses it). */
    EXPECT_CANON("{\"security\":1e300,\"a\":1}", "{\"a\":1}");
    EXPECT_REFUSED("{\"security\":\"\\udc00\",\"a\":1}", "lone surrogate \\udc00");
    out = canon("{\"bubbling_chain\":[\"a\"],\"w\":1,\"n\":{\"bubbling_chain\":1}}", bubbling, err,
                sizeof(err));
    EXPECT_EQ_STR(out, "{\"n\":{\"bubbling_chain\":1},\"w\":1}");
    free(out);
    out = canon("{\"x\":1,\"y\":2,\"z\":3,\"xy\":4}", two, err, sizeof(err));
    EXPECT_EQ_STR(out, "{\"xy\":4,\"z\":3}");
    free(out);
    out = canon("{\"x\":1}", (const char *const[]){NULL}, err, sizeof(err));
    EXPECT_EQ_STR(out, "{\"x\":1}");
    free(out);
}

/* n nested containers below the top-level object ('{' objects with key "a"
 * or '[' arrays) around inner: inner sits at depth n + 1. */
static char *nest(int n, char kind, const char *inner)
{
    size_t cap = (size_t)n * 6 + strlen(inner) + 16, at = 0;
    char *s = xmalloc(cap);
    at += (size_t)snprintf(s + at, cap - at, "{\"a\":");
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(s + at, cap - at, "%s", kind == '{' ? "{\"a\":" : "[");
    at += (size_t)snprintf(s + at, cap - at, "%s", inner);
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(s + at, cap - at, "%c", kind == '{' ? '}' : ']');
    snprintf(s + at, cap - at, "}");
    return s;
}

static int nest_ok(int n, char kind, const char *inner)
{
    char err[AVT_ERRLEN], *in = nest(n, kind, inner), *out = canon(in, NULL, err, sizeof(err));
    int ok = out != NULL;
    if (!ok && strstr(err, "nesting deeper than 100 levels") == NULL)
        printf("# unexpected reason: %s\n", err);
    free(in);
    free(out);
    return ok;
}

TEST(depth_limit_matches_to_dict)
{
    /* Vectors "depth 100 objects" (a value at depth 100 passes) and "depth
     * 101 objects/arrays" (a value at depth 101 fails). */
    EXPECT(nest_ok(99, '{', "1"));
    EXPECT(!nest_ok(100, '{', "1"));
    EXPECT(nest_ok(99, '[', "1"));
    EXPECT(!nest_ok(100, '[', "1"));
    EXPECT(nest_ok(99, '{', "{}"));
    EXPECT(nest_ok(99, '[', "[]"));
    EXPECT(!nest_ok(100, '{', "{}"));
    EXPECT(!nest_ok(100, '[', "\"s\""));
    /* A null member at depth 101 is removed before to_dict() recurses into
     * it; a null array element is not. */
    EXPECT(nest_ok(100, '{', "null"));
    EXPECT(!nest_ok(100, '[', "null"));
    EXPECT(!nest_ok(99, '{', "[null]"));
    EXPECT(!nest_ok(101, '{', "null"));
    /* Far too deep: refused without deep recursion. */
    EXPECT(!nest_ok(100000, '[', "1"));
    EXPECT(!nest_ok(100000, '{', "1"));
}

TEST(integers_in_range_are_exact)
{
    EXPECT_CANON("{\"a\":18446744073709551615,\"b\":-9223372036854775808,"
                 "\"c\":9223372036854775807,\"d\":9223372036854775808,\"e\":9007199254740993}",
                 "{\"a\":18446744073709551615,\"b\":-9223372036854775808,"
                 "\"c\":9223372036854775807,\"d\":9223372036854775808,\"e\":9007199254740993}");
    EXPECT_CANON("{\"a\":-0,\"b\":0,\"c\":-1,\"d\":[-0]}", "{\"a\":0,\"b\":0,\"c\":-1,\"d\":[0]}");
    /* Beyond the range a literal is a double: -2^63-1 rounds to -2^63. */
    EXPECT_CANON("{\"x\":-9223372036854775809}", "{\"x\":-9223372036854775808}");
    EXPECT_CANON("{\"x\":-9223372036854776832}", "{\"x\":-9223372036854775808}");
    EXPECT_REFUSED("{\"x\":18446744073709551616}",
                   "integer 18446744073709551616 at byte 5 is outside [-2^63, 2^64-1]: the "
                   "orchestrator cannot sign it");
    EXPECT_REFUSED("{\"x\":100000000000000000000}", "integer 100000000000000000000");
    EXPECT_REFUSED("{\"x\":-9223372036854777856}", "outside [-2^63, 2^64-1]");
    EXPECT_REFUSED("{\"x\":[1,{\"y\":-18446744073709551616}]}", "at byte 13");
}

TEST(integral_doubles_become_integers)
{
    EXPECT_CANON("{\"a\":1.0,\"b\":-0.0,\"c\":0.0,\"d\":1E2,\"e\":1e+2,\"f\":-3.0,\"g\":0e5}",
                 "{\"a\":1,\"b\":0,\"c\":0,\"d\":100,\"e\":100,\"f\":-3,\"g\":0}");
    EXPECT_CANON("{\"a\":1e16,\"b\":1.5e16,\"c\":1e19,\"d\":1.23e17}",
                 "{\"a\":10000000000000000,\"b\":15000000000000000,"
                 "\"c\":10000000000000000000,\"d\":123000000000000000}");
    EXPECT_CANON("{\"a\":9.2233720368547758e18,\"b\":-9.2233720368547758e18}",
                 "{\"a\":9223372036854775808,\"b\":-9223372036854775808}");
    EXPECT_CANON("{\"a\":9007199254740993.0,\"b\":1.8446744073709550e19}",
                 "{\"a\":9007199254740992,\"b\":18446744073709549568}");
    /* Underflow is zero, as in orjson; overflow is not JSON orjson reads. */
    EXPECT_CANON("{\"a\":1e-400,\"b\":-1e-400}", "{\"a\":0,\"b\":0}");
    EXPECT_REFUSED("{\"x\":1e20}", "integer 1e20 at byte 5 is outside");
    EXPECT_REFUSED("{\"x\":1.8446744073709552e19}", "outside [-2^63, 2^64-1]");
    EXPECT_REFUSED("{\"x\":-1e19}", "integer -1e19");
    EXPECT_REFUSED("{\"x\":1.7976931348623157e308}", "outside");
    EXPECT_REFUSED("{\"x\":1e400}", "infinite as a double");
    EXPECT_REFUSED("{\"x\":-1e400}", "infinite as a double");
}

TEST(fraction_layout_decimal_from_1e_minus_5)
{
    EXPECT_CANON("{\"x\":1e-5}", "{\"x\":0.00001}");
    EXPECT_CANON("{\"x\":0.000012345}", "{\"x\":0.000012345}");
    EXPECT_CANON("{\"x\":0.00009999}", "{\"x\":0.00009999}");
    EXPECT_CANON("{\"x\":0.1}", "{\"x\":0.1}");
    EXPECT_CANON("{\"x\":0.30000000000000004}", "{\"x\":0.30000000000000004}");
    EXPECT_CANON("{\"x\":123.456}", "{\"x\":123.456}");
    EXPECT_CANON("{\"x\":1000000000000000.2}", "{\"x\":1000000000000000.2}");
    EXPECT_CANON("{\"x\":4503599627370495.5}", "{\"x\":4503599627370495.5}");
    EXPECT_CANON("{\"x\":1796599254.5}", "{\"x\":1796599254.5}");
    EXPECT_CANON("{\"x\":-1.5}", "{\"x\":-1.5}");
    EXPECT_CANON("{\"x\":1.0000000000000002}", "{\"x\":1.0000000000000002}");
    EXPECT_CANON("{\"x\":123456789012345.67}", "{\"x\":123456789012345.67}");
    EXPECT_CANON("{\"x\":3.141592653589793}", "{\"x\":3.141592653589793}");
    EXPECT_CANON("{\"x\":1.5e-5}", "{\"x\":0.000015}");
    EXPECT_CANON("{\"x\":-0.00001}", "{\"x\":-0.00001}");
}

TEST(fraction_layout_exponent_below_1e_minus_5)
{
    EXPECT_CANON("{\"x\":9.999999999999999e-6}", "{\"x\":9.999999999999999e-6}");
    EXPECT_CANON("{\"x\":0.000001}", "{\"x\":1e-6}");
    EXPECT_CANON("{\"x\":0.0000015}", "{\"x\":1.5e-6}");
    EXPECT_CANON("{\"x\":5e-6}", "{\"x\":5e-6}");
    EXPECT_CANON("{\"x\":1.5e-7}", "{\"x\":1.5e-7}");
    EXPECT_CANON("{\"x\":1e-7}", "{\"x\":1e-7}");
    EXPECT_CANON("{\"x\":-1e-7}", "{\"x\":-1e-7}");
    EXPECT_CANON("{\"x\":2.5E-8}", "{\"x\":2.5e-8}");
    EXPECT_CANON("{\"x\":3.14e-10}", "{\"x\":3.14e-10}");
    EXPECT_CANON("{\"x\":1e-300}", "{\"x\":1e-300}");
    EXPECT_CANON("{\"x\":2.2250738585072014e-308}", "{\"x\":2.2250738585072014e-308}");
    EXPECT_CANON("{\"x\":5e-324}", "{\"x\":5e-324}");
    EXPECT_CANON("{\"x\":2.5e-324}", "{\"x\":5e-324}");
}

TEST(fraction_digits_are_the_shortest_round_trip)
{
    /* Many digits in, the shortest digits out. */
    EXPECT_CANON("{\"x\":0.1000000000000000055511151231257827}", "{\"x\":0.1}");
    EXPECT_CANON("{\"x\":123456789012345678901234567890e-30}", "{\"x\":0.12345678901234568}");
    /* A power of two is nearer its lower neighbour: the nearest 16 digits
     * (7.291122019556397e-304) read back as that neighbour, the digits just
     * above do not (what ryu and orjson print). */
    EXPECT_CANON("{\"x\":7.2911220195563975e-304}", "{\"x\":7.291122019556398e-304}");
    EXPECT_CANON("{\"x\":5.2256807065210415e-200}", "{\"x\":5.225680706521042e-200}");
}

/* The digits of a "D.DDDe[+-]X" or "DDDDeX" text into out, trailing zeros
 * dropped. */
static void mantissa_digits(const char *t, char out[24])
{
    int n = 0;
    for (const char *c = t; *c != '\0' && *c != 'e' && n < 23; c++)
        if (*c >= '0' && *c <= '9')
            out[n++] = *c;
    while (n > 1 && out[n - 1] == '0')
        n--;
    out[n] = '\0';
}

/* The oracle of the test below: the significant digits of the decimal that
 * canonical JSON must write for x (> 0, not integral), trying every length
 * in turn: the nearest decimal of that length (printf rounds correctly),
 * and for a power of two the one just above it; the first that reads back
 * as x wins. */
static void oracle_digits(double x, char want[24])
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof(bits));
    int pow2 = (bits & ((UINT64_C(1) << 52) - 1)) == 0 || (bits >> 52) == 0;
    char t[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(t, sizeof(t), "%.*e", p - 1, x);
        if (strtod(t, NULL) == x || p == 17)
            break;
        if (pow2) {
            /* the next p-digit decimal above: one unit in the last place */
            char dg[24], *e = strchr(t, 'e');
            int n = 0, e10 = (int)strtol(e + 1, NULL, 10);
            for (const char *c = t; c < e; c++)
                if (*c >= '0' && *c <= '9')
                    dg[n++] = *c;
            int k = n - 1;
            while (k >= 0 && dg[k] == '9')
                dg[k--] = '0';
            if (k >= 0) {
                dg[k]++;
            } else {
                dg[0] = '1';
                e10++;
            }
            char up[64];
            snprintf(up, sizeof(up), "%.*se%d", n, dg, e10 - (n - 1));
            if (strtod(up, NULL) == x) {
                memcpy(t, up, sizeof(t));
                break;
            }
        }
    }
    mantissa_digits(t, want);
}

/* The significant digits of a number as canon writes it ("0.00123",
 * "4185.257", "1.5e-7"): leading zeros dropped, and trailing ones. */
static void digits_of(const char *num, char out[24])
{
    char t[64];
    int n = 0, lead = 1;
    for (const char *c = num; *c != '\0' && *c != 'e' && *c != '}' && n < 62; c++) {
        if (*c < '0' || *c > '9' || (lead && *c == '0'))
            continue;
        lead = 0;
        t[n++] = *c;
    }
    t[n] = '\0';
    mantissa_digits(t, out);
}

TEST(fraction_digits_are_the_fewest_that_read_back_for_random_doubles)
{
    /* Bit patterns of every exponent, subnormals, powers of two, short
     * decimals and ratios: each canonical number must read back as the
     * double and have the digits the slow oracle finds (the fewest, and of
     * those the nearest). */
    uint64_t s = 88172645463325252ULL;
    int checked = 0, bad = 0;
    for (int i = 0; i < 30000 && bad < 5; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint64_t bits = s & 0x7fffffffffffffffULL;
        if (i % 4 == 1)
            bits = (s % 2046 + 1) << 52; /* a power of two */
        else if (i % 4 == 2)
            bits = s % 4096; /* a subnormal */
        double x;
        memcpy(&x, &bits, sizeof(x));
        if (i % 4 == 3)
            x = (double)(s % 1000000) / (double)(1 + (s >> 20) % 100000);
        if (!(x > 0) || x >= 0x1p53 || x == (double)(int64_t)x)
            continue; /* integral values are written as integers (all from 2^53 on) */
        char in[64], err[AVT_ERRLEN];
        snprintf(in, sizeof(in), "{\"x\":%.17g}", x);
        char *out = canon(in, NULL, err, sizeof(err));
        if (out == NULL) {
            TAP_FAIL_("%s: refused: %s", in, err);
            bad++;
            continue;
        }
        const char *num = out + 5; /* after {"x": */
        double back = strtod(num, NULL);
        char want[24], got[24];
        oracle_digits(x, want);
        digits_of(num, got);
        if (memcmp(&back, &x, sizeof(x)) != 0 || strcmp(got, want) != 0) {
            TAP_FAIL_("%s: got %s (digits %s, reads back as %.17g), want the digits %s", in, out,
                      got, back, want);
            bad++;
        }
        free(out);
        checked++;
    }
    EXPECT(checked > 12000);
}

TEST(strict_parser_errors)
{
    EXPECT_REFUSED("", "not JSON: unexpected end of input at byte 0");
    EXPECT_REFUSED("{\"a\":1", "not JSON: unexpected end of input at byte 6");
    EXPECT_REFUSED("{\"a\":1,}", "not JSON: expected a string key at byte 7");
    EXPECT_REFUSED("{\"a\" 1}", "expected ':'");
    EXPECT_REFUSED("{\"a\":1 \"b\":2}", "expected ',' or '}' at byte 7");
    EXPECT_REFUSED("{\"a\":[1 2]}", "expected ',' or ']'");
    EXPECT_REFUSED("{\"a\":1}x", "content after the document at byte 7");
    EXPECT_REFUSED("{\"a\":1}{}", "content after the document");
    EXPECT_REFUSED("\xef\xbb\xbf{}", "unexpected character at byte 0");
    EXPECT_REFUSED("{\"a\":01}", "leading zero");
    EXPECT_REFUSED("{\"a\":-01}", "leading zero");
    EXPECT_REFUSED("{\"a\":1.}", "no digit after the decimal point");
    EXPECT_REFUSED("{\"a\":.5}", "unexpected character");
    EXPECT_REFUSED("{\"a\":1e}", "no digit in an exponent");
    EXPECT_REFUSED("{\"a\":-}", "no digit in a number");
    EXPECT_REFUSED("{\"a\":+1}", "unexpected character");
    EXPECT_REFUSED("{\"a\":NaN}", "unexpected character");
    EXPECT_REFUSED("{\"a\":Infinity}", "unexpected character");
    EXPECT_REFUSED("{\"a\":tru}", "unexpected character");
    EXPECT_REFUSED("{\"a\":\"x\ty\"}", "control character in a string at byte 7");
    EXPECT_REFUSED("{\"a\":\"\\x\"}", "invalid escape in a string at byte 6");
    EXPECT_REFUSED("{\"a\":\"\\u12g4\"}", "invalid \\u escape at byte 6");
    EXPECT_REFUSED("{\"a\":\"\\u12", "invalid \\u escape");
    EXPECT_REFUSED("{'a':1}", "expected a string key");
    EXPECT_CANON(" \t\r\n{ \"a\" :\t1 , \"b\" : [ 1 , 2 ] }\r\n", "{\"a\":1,\"b\":[1,2]}");
}

TEST(surrogates_and_utf8)
{
    EXPECT_REFUSED("{\"s\":\"\\ud800\"}", "lone surrogate \\ud800 at byte 6");
    EXPECT_REFUSED("{\"s\":\"\\udc00\\ud800\"}", "lone surrogate \\udc00");
    EXPECT_REFUSED("{\"s\":\"\\udc00\\udc00\"}", "lone surrogate \\udc00"); /* low, low */
    EXPECT_REFUSED("{\"s\":\"\\ud800\\u0041\"}", "lone surrogate \\ud800");
    EXPECT_REFUSED("{\"s\":\"\\ud800\\ud800\"}", "lone surrogate \\ud800");
    EXPECT_REFUSED("{\"s\":\"\\uD83D\"}", "lone surrogate \\ud83d");
    EXPECT_REFUSED("{\"\\udfff\":1}", "lone surrogate \\udfff at byte 2");
    EXPECT_REFUSED("{\"s\":\"\xff\"}", "not valid UTF-8 at byte 6");
    EXPECT_REFUSED("{\"s\":\"\xc0\xaf\"}", "not valid UTF-8 at byte 6");       /* overlong */
    EXPECT_REFUSED("{\"s\":\"ab\xe0\x80\x80\"}", "not valid UTF-8 at byte 8"); /* overlong */
    EXPECT_REFUSED("{\"s\":\"\xf0\x80\x80\x80\"}", "not valid UTF-8");         /* overlong */
    EXPECT_REFUSED("{\"s\":\"\xed\xa0\x80\"}", "not valid UTF-8");             /* surrogate */
    EXPECT_REFUSED("{\"s\":\"\xf4\x90\x80\x80\"}", "not valid UTF-8");         /* > U+10FFFF */
    EXPECT_REFUSED("{\"s\":\"\xc3\"}", "not valid UTF-8");                     /* truncated */
    EXPECT_REFUSED("{\"s\":\"\x80\"}", "not valid UTF-8");                     /* continuation */
    EXPECT_REFUSED("{\"\xc3\x28\":1}", "not valid UTF-8 at byte 2");
    EXPECT_CANON("{\"s\":\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\xc2\x80\"}",
                 "{\"s\":\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\xc2\x80\"}");
}

TEST(top_level_must_be_an_object)
{
    EXPECT_REFUSED("[1]", "top level is not an object");
    EXPECT_REFUSED("1", "top level is not an object");
    EXPECT_REFUSED("\"s\"", "top level is not an object");
    EXPECT_REFUSED("null", "top level is not an object");
    EXPECT_CANON("{}", "{}");
}

TEST(input_is_bounded_by_len_not_nul)
{
    char err[AVT_ERRLEN], *out;
    size_t len;
    /* Only the first 7 bytes count; no NUL is needed. */
    ASSERT(canon_json("{\"a\":1}garbage", 7, NULL, &out, &len, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(out, "{\"a\":1}");
    free(out);
    char *heap = xmalloc(4);
    memcpy(heap, "{\"a\"", 4);
    EXPECT_EQ_INT(canon_json(heap, 4, NULL, &out, &len, err, sizeof(err)), -EINVAL);
    EXPECT(out == NULL);
    memcpy(heap, "{\"\\u", 4);
    EXPECT_EQ_INT(canon_json(heap, 4, NULL, &out, &len, err, sizeof(err)), -EINVAL);
    free(heap);
    /* A zero-length error buffer and a NULL outlen are fine. */
    EXPECT_EQ_INT(canon_json("[", 1, NULL, &out, NULL, NULL, 0), -EINVAL);
    EXPECT_EQ_INT(canon_json("{}", 2, NULL, &out, NULL, NULL, 0), 0);
    EXPECT_EQ_STR(out, "{}");
    free(out);
}

TEST(quote)
{
    char err[AVT_ERRLEN], *out;
    size_t len;
    ASSERT(canon_quote("w\"1\\\n\x01\xc3\xa9", 8, &out, &len, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(out, "\"w\\\"1\\\\\\n\\u0001\xc3\xa9\"");
    EXPECT_EQ_INT(len, strlen(out));
    free(out);
    ASSERT(canon_quote("", 0, &out, NULL, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(out, "\"\"");
    free(out);
    EXPECT_EQ_INT(canon_quote("a\xff", 2, &out, &len, err, sizeof(err)), -EINVAL);
    EXPECT(out == NULL);
    EXPECT_CONTAINS(err, "not valid UTF-8 at byte 1");
}

TEST(lookup)
{
    static const char doc[] = "{\"security\":{\"signature\":\"ab\",\"signer_id\":null,"
                              "\"n\":{\"z\":1e300,\"y\":[1.0,{\"k\":null}]},\"signature\":\"cd\"},"
                              "\"big\":1e300,\"s\":\"x\"}";
    char err[AVT_ERRLEN], *out;
    size_t len;
#define LOOKUP(...)                                                                                \
    canon_lookup(doc, sizeof(doc) - 1, (const char *const[]){__VA_ARGS__, NULL}, &out, &len, err,  \
                 sizeof(err))
    ASSERT(LOOKUP("security", "signature") == 0); /* the last duplicate */
    EXPECT_EQ_STR(out, "\"cd\"");
    EXPECT_EQ_INT(len, 4);
    free(out);
    ASSERT(LOOKUP("security", "n", "y") == 0); /* canonical, and 1e300 is not looked at */
    EXPECT_EQ_STR(out, "[1,{}]");
    free(out);
    EXPECT_EQ_INT(LOOKUP("security", "signer_id"), -ENOENT); /* null is absent */
    EXPECT_CONTAINS(err, "no member signer_id");
    EXPECT(out == NULL);
    EXPECT_EQ_INT(LOOKUP("security", "nope"), -ENOENT);
    EXPECT_EQ_INT(LOOKUP("s", "x"), -ENOENT);
    EXPECT_CONTAINS(err, "its parent is not an object");
    EXPECT_EQ_INT(LOOKUP("security", "n", "z"), -EINVAL);
    EXPECT_CONTAINS(err, "integer 1e300");
    ASSERT(LOOKUP("s") == 0);
    EXPECT_EQ_STR(out, "\"x\"");
    free(out);
#undef LOOKUP
    EXPECT_EQ_INT(
        canon_lookup("{\"a\":", 5, (const char *const[]){"a", NULL}, &out, &len, err, sizeof(err)),
        -EINVAL);
    ASSERT(canon_lookup("{\"a\":1,\"security\":2}", 20, NULL, &out, &len, err, sizeof(err)) == 0);
    EXPECT_EQ_STR(out, "{\"a\":1}");
    free(out);
}

/* Whatever LC_NUMERIC the process runs with (a plugin may call setlocale),
 * numbers are read and written with a point. de_DE is built into a private
 * directory with localedef when the system does not have it. */
static int set_comma_locale(char *dir, size_t dirlen)
{
    char cmd[512];
    dir[0] = '\0';
    if (setlocale(LC_NUMERIC, "de_DE.UTF-8") != NULL)
        return 0;
    snprintf(dir, dirlen, "%s/avt-locale-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8 >/dev/null 2>&1", dir);
    if (system(cmd) != 0)
        return -1;
    setenv("LOCPATH", dir, 1);
    return setlocale(LC_NUMERIC, "de_DE.UTF-8") != NULL ? 0 : -1;
}

TEST(numbers_ignore_the_locale)
{
    char dir[256], cmd[300];
    if (set_comma_locale(dir, sizeof(dir)) < 0) {
        printf("# skipped: no de_DE locale and localedef could not build one\n");
    } else {
        char probe[16];
        snprintf(probe, sizeof(probe), "%.1f", 1.5);
        EXPECT_EQ_STR(probe, "1,5"); /* the locale really is active */
        EXPECT_CANON("{\"a\":1.5,\"b\":2.5e-7,\"c\":0.30000000000000004,\"d\":1.0}",
                     "{\"a\":1.5,\"b\":2.5e-7,\"c\":0.30000000000000004,\"d\":1}");
        snprintf(probe, sizeof(probe), "%.1f", 1.5);
        EXPECT_EQ_STR(probe, "1,5"); /* and is back after the call */
    }
    setlocale(LC_NUMERIC, "C");
    unsetenv("LOCPATH");
    if (dir[0] != '\0') {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        EXPECT(system(cmd) == 0);
    }
}

static void *canon_thread(void *arg)
{
    const char *in = arg;
    for (int i = 0; i < 300; i++) {
        char err[AVT_ERRLEN], *out;
        if (canon_json(in, strlen(in), NULL, &out, NULL, err, sizeof(err)) != 0 ||
            strcmp(out, "{\"a\":[0.1,1e-7,18446744073709551615],\"b\":\"\xc3\xa9\"}") != 0)
            return (void *)1;
        free(out);
    }
    return NULL;
}

TEST(concurrent_calls)
{
    pthread_t t[4];
    static const char in[] = "{\"b\":\"\\u00e9\",\"a\":[0.1,1e-7,18446744073709551615],\"n\":null}";
    for (size_t i = 0; i < ARRAY_LEN(t); i++)
        ASSERT(pthread_create(&t[i], NULL, canon_thread, (void *)(uintptr_t)in) == 0);
    for (size_t i = 0; i < ARRAY_LEN(t); i++) {
        void *rv;
        pthread_join(t[i], &rv);
        EXPECT(rv == NULL);
    }
}

TAP_MAIN()
