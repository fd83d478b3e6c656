/*
 * canon.c - RXON 1.0b14's canonical JSON (PROTOCOL-1.0b14.md 2.2, 2.3),
 * computed from JSON text. The orchestrator signs what orjson parses and
 * rxon's to_dict() normalises, so this file is a small strict JSON parser
 * with orjson's rules (last duplicate wins, lone surrogates and invalid
 * UTF-8 refused, integer literals outside [-2^63, 2^64) read as doubles)
 * followed by a writer with orjson's output rules (sorted keys, compact,
 * raw UTF-8, shortest round-trip doubles laid out as orjson does).
 *
 * The parser builds a flat array of nodes (siblings linked by index) and
 * decodes every string into one buffer as long as the input, since a
 * decoded string is never longer than its JSON form. Nesting is refused
 * beyond CANON_DEPTH_MAX before the parser recurses into it, so the
 * parser's and the writer's recursion are bounded (at most
 * CANON_DEPTH_MAX + 1 containers deep, a few small frames each) whatever
 * the input. Keys are sorted with qsort(). Range errors are raised
 * while writing, like orjson does: a value that is dropped (a top-level
 * `security`, a null member, an overwritten duplicate) is never checked.
 *
 * Numbers are read and written in the C locale whatever a plugin may have
 * set with setlocale(): uselocale() switches only the calling thread, and
 * only for the duration of the call.
 */
#include "canon.h"

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define CN_NONE UINT32_MAX

enum cn_type {
    CN_NULL,
    CN_FALSE,
    CN_TRUE,
    CN_INT,
    CN_NEGINT,
    CN_DOUBLE,
    CN_STRING,
    CN_ARRAY,
    CN_OBJECT
};

struct cn_node {
    uint8_t type;
    uint32_t at;      /* offset of the value in the input, for messages */
    uint32_t next;    /* the next array element or object member, or CN_NONE */
    uint32_t key_off; /* object members: the decoded key in strs */
    uint32_t key_len;
    union {
        uint64_t mag; /* CN_INT, CN_NEGINT: the magnitude */
        double d;     /* CN_DOUBLE */
        struct {
            uint32_t off, len; /* CN_STRING: decoded bytes in strs */
        } str;
        struct {
            uint32_t first, count; /* CN_ARRAY, CN_OBJECT: children */
        } kids;
    } u;
};

struct cn_parser {
    const unsigned char *in;
    size_t len, pos;
    struct cn_node *nodes;
    uint32_t nnodes, cap;
    unsigned char *strs; /* decoded strings, at most len bytes in all */
    uint32_t nstrs;
    char *err;
    size_t errlen;
};

struct cn_buf {
    char *p;
    size_t len, cap;
};

struct cn_emit {
    const unsigned char *in; /* the input, for messages */
    size_t len;
    const struct cn_node *nodes;
    const unsigned char *strs;
    const char *const *ignore_top;
    struct cn_buf out;
    char *err;
    size_t errlen;
};

struct cn_member {
    const unsigned char *key;
    uint32_t len, pos, node;
};

static int parse_value(struct cn_parser *ps, int depth, int member, uint32_t *idx);
static int emit_value(struct cn_emit *em, uint32_t idx, int top);

/* Output buffer. */

static void buf_put(struct cn_buf *b, const void *s, size_t n)
{
    if (n == 0)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_ch(struct cn_buf *b, char c)
{
    buf_put(b, &c, 1);
}

/* Parser helpers. */

static int peek(const struct cn_parser *ps)
{
    return ps->pos < ps->len ? ps->in[ps->pos] : -1;
}

static void skip_ws(struct cn_parser *ps)
{
    while (ps->pos < ps->len) {
        unsigned char c = ps->in[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        ps->pos++;
    }
}

static int not_json(const struct cn_parser *ps, size_t at, const char *what)
{
    if (at >= ps->len)
        return fmt_err(ps->err, ps->errlen, "not JSON: unexpected end of input at byte %zu", at);
    return fmt_err(ps->err, ps->errlen, "not JSON: %s at byte %zu", what, at);
}

static uint32_t new_node(struct cn_parser *ps, enum cn_type type)
{
    if (ps->nnodes == ps->cap) {
        ps->cap *= 2;
        ps->nodes = xrealloc(ps->nodes, (size_t)ps->cap * sizeof(*ps->nodes));
    }
    struct cn_node *n = &ps->nodes[ps->nnodes];
    memset(n, 0, sizeof(*n));
    n->type = (uint8_t)type;
    n->at = (uint32_t)ps->pos;
    n->next = CN_NONE;
    if (type == CN_ARRAY || type == CN_OBJECT)
        n->u.kids.first = CN_NONE;
    return ps->nnodes++;
}

static void add_kid(struct cn_parser *ps, uint32_t parent, uint32_t *prev, uint32_t kid)
{
    if (*prev == CN_NONE)
        ps->nodes[parent].u.kids.first = kid;
    else
        ps->nodes[*prev].next = kid;
    ps->nodes[parent].u.kids.count++;
    *prev = kid;
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 for an
 * invalid one: overlong forms, surrogates and code points beyond U+10FFFF
 * are invalid (Unicode table 3-7). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        lo = s[0] == 0xe0 ? 0xa0 : 0x80;
        hi = s[0] == 0xed ? 0x9f : 0xbf;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        lo = s[0] == 0xf0 ? 0x90 : 0x80;
        hi = s[0] == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (len > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    return len;
}

static size_t utf8_put(unsigned char *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (unsigned char)(0xc0 | cp >> 6);
        d[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (unsigned char)(0xe0 | cp >> 12);
        d[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        d[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (unsigned char)(0xf0 | cp >> 18);
    d[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    d[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    d[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The four hex digits at in[at..at+4) as a UTF-16 code unit, or -1. */
static long hex4(const struct cn_parser *ps, size_t at)
{
    long v = 0;
    if (at + 4 > ps->len)
        return -1;
    for (size_t i = at; i < at + 4; i++) {
        unsigned char c = ps->in[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A \uXXXX escape at ps->pos (a surrogate pair takes two), decoded to UTF-8
 * at d; *n is the number of bytes written. */
static int parse_u_escape(struct cn_parser *ps, unsigned char *d, size_t *n)
{
    size_t at = ps->pos;
    long hi = hex4(ps, at + 2), lo;
    uint32_t cp;

    if (hi < 0)
        return not_json(ps, at, "invalid \\u escape");
    ps->pos += 6;
    if (hi < 0xd800 || hi > 0xdfff) {
        cp = (uint32_t)hi;
    } else {
        if (hi >= 0xdc00 || peek(ps) != '\\' || ps->pos + 1 >= ps->len ||
            ps->in[ps->pos + 1] != 'u' || (lo = hex4(ps, ps->pos + 2)) < 0xdc00 || lo > 0xdfff)
            return fmt_err(ps->err, ps->errlen, "lone surrogate \\u%04lx at byte %zu", hi, at);
        ps->pos += 6;
        cp = 0x10000 + ((uint32_t)(hi - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
    }
    *n = utf8_put(d, cp);
    return 0;
}

/* The escape sequence at ps->pos, decoded at d (*n bytes). */
static int parse_escape(struct cn_parser *ps, unsigned char *d, size_t *n)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *c;

    if (ps->pos + 1 >= ps->len)
        return not_json(ps, ps->len, "");
    if (ps->in[ps->pos + 1] == 'u')
        return parse_u_escape(ps, d, n);
    c = ps->in[ps->pos + 1] != '\0' ? strchr(from, ps->in[ps->pos + 1]) : NULL;
    if (c == NULL)
        return not_json(ps, ps->pos, "invalid escape in a string");
    d[0] = (unsigned char)to[c - from];
    *n = 1;
    ps->pos += 2;
    return 0;
}

/* The string at ps->pos (on its opening quote), decoded into strs. */
static int parse_string(struct cn_parser *ps, uint32_t *off, uint32_t *len)
{
    unsigned char *d = ps->strs + ps->nstrs;
    size_t n = 0, k = 0;
    int rc;

    ps->pos++;
    for (;;) {
        int c = peek(ps);
        if (c == '"')
            break;
        if (c < 0)
            return not_json(ps, ps->len, "");
        if (c == '\\') {
            if ((rc = parse_escape(ps, d + n, &k)) < 0)
                return rc;
            n += k;
            continue;
        }
        if (c < 0x20)
            return not_json(ps, ps->pos, "control character in a string");
        k = utf8_len(ps->in + ps->pos, ps->len - ps->pos);
        if (k == 0)
            return fmt_err(ps->err, ps->errlen, "not valid UTF-8 at byte %zu", ps->pos);
        memcpy(d + n, ps->in + ps->pos, k);
        n += k;
        ps->pos += k;
    }
    ps->pos++;
    *off = ps->nstrs;
    *len = (uint32_t)n;
    ps->nstrs += (uint32_t)n;
    return 0;
}

static int parse_string_value(struct cn_parser *ps, uint32_t *idx)
{
    uint32_t self = new_node(ps, CN_STRING), off, len;
    int rc = parse_string(ps, &off, &len);
    ps->nodes[self].u.str.off = off;
    ps->nodes[self].u.str.len = len;
    *idx = self;
    return rc;
}

static int parse_literal(struct cn_parser *ps, const char *word, enum cn_type type, uint32_t *idx)
{
    size_t n = strlen(word);
    if (ps->len - ps->pos < n || memcmp(ps->in + ps->pos, word, n) != 0)
        return not_json(ps, ps->pos, "unexpected character");
    *idx = new_node(ps, type);
    ps->pos += n;
    return 0;
}

/* Skip the digits at p; returns how many there were. */
static size_t skip_digits(const struct cn_parser *ps, size_t *p)
{
    size_t start = *p;
    while (*p < ps->len && ps->in[*p] >= '0' && ps->in[*p] <= '9')
        (*p)++;
    return *p - start;
}

/* The end of the JSON number starting at ps->pos; *is_int is 0 when it has
 * a fraction or an exponent. */
static int scan_number(const struct cn_parser *ps, size_t *end, int *is_int)
{
    size_t p = ps->pos + (ps->in[ps->pos] == '-');

    *is_int = 1;
    if (p < ps->len && ps->in[p] == '0' && p + 1 < ps->len && ps->in[p + 1] >= '0' &&
        ps->in[p + 1] <= '9')
        return not_json(ps, p, "number with a leading zero");
    if (skip_digits(ps, &p) == 0)
        return not_json(ps, p, "no digit in a number");
    if (p < ps->len && ps->in[p] == '.') {
        *is_int = 0;
        p++;
        if (skip_digits(ps, &p) == 0)
            return not_json(ps, p, "no digit after the decimal point");
    }
    if (p < ps->len && (ps->in[p] == 'e' || ps->in[p] == 'E')) {
        *is_int = 0;
        p++;
        if (p < ps->len && (ps->in[p] == '+' || ps->in[p] == '-'))
            p++;
        if (skip_digits(ps, &p) == 0)
            return not_json(ps, p, "no digit in an exponent");
    }
    *end = p;
    return 0;
}

/* The integer literal in[start..end) as a magnitude; 0 when it does not fit
 * in 64 bits. */
static int int_magnitude(const struct cn_parser *ps, size_t start, size_t end, uint64_t *mag)
{
    uint64_t v = 0;
    for (size_t i = start + (ps->in[start] == '-'); i < end; i++) {
        unsigned d = ps->in[i] - '0';
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *mag = v;
    return 1;
}

static int number_to_double(const struct cn_parser *ps, size_t start, size_t end, double *d)
{
    char small[64], *s = end - start < sizeof(small) ? small : xmalloc(end - start + 1);
    memcpy(s, ps->in + start, end - start);
    s[end - start] = '\0';
    /* Underflow (ERANGE with 0 or a subnormal) is what orjson does too. */
    *d = strtod(s, NULL);
    if (s != small)
        free(s);
    if (isinf(*d))
        return fmt_err(ps->err, ps->errlen, "not JSON: number at byte %zu is infinite as a double",
                       start);
    return 0;
}

/* A number: an integer in [-2^63, 2^64) stays exact, anything else is a
 * double (as orjson parses it). */
static int parse_number(struct cn_parser *ps, uint32_t *idx)
{
    size_t start = ps->pos, end = start;
    int is_int, rc;
    uint64_t mag;
    double d;

    if ((rc = scan_number(ps, &end, &is_int)) < 0)
        return rc;
    if (is_int && int_magnitude(ps, start, end, &mag) &&
        (ps->in[start] != '-' || mag <= (uint64_t)1 << 63)) {
        *idx = new_node(ps, ps->in[start] == '-' ? CN_NEGINT : CN_INT);
        ps->nodes[*idx].u.mag = mag;
    } else {
        if ((rc = number_to_double(ps, start, end, &d)) < 0)
            return rc;
        *idx = new_node(ps, CN_DOUBLE);
        ps->nodes[*idx].u.d = d;
    }
    ps->pos = end;
    return 0;
}

static int parse_array(struct cn_parser *ps, int depth, uint32_t *idx)
{
    uint32_t self = new_node(ps, CN_ARRAY), prev = CN_NONE, kid;
    int rc;

    *idx = self;
    ps->pos++;
    skip_ws(ps);
    if (peek(ps) == ']') {
        ps->pos++;
        return 0;
    }
    for (;;) {
        if ((rc = parse_value(ps, depth + 1, 0, &kid)) < 0)
            return rc;
        add_kid(ps, self, &prev, kid);
        skip_ws(ps);
        int c = peek(ps);
        ps->pos++;
        if (c == ']')
            return 0;
        if (c != ',')
            return not_json(ps, ps->pos - 1, "expected ',' or ']'");
    }
}

static int parse_member(struct cn_parser *ps, int depth, uint32_t *kid)
{
    uint32_t off, len;
    int rc;

    skip_ws(ps);
    if (peek(ps) != '"')
        return not_json(ps, ps->pos, "expected a string key");
    if ((rc = parse_string(ps, &off, &len)) < 0)
        return rc;
    skip_ws(ps);
    if (peek(ps) != ':')
        return not_json(ps, ps->pos, "expected ':'");
    ps->pos++;
    if ((rc = parse_value(ps, depth + 1, 1, kid)) < 0)
        return rc;
    ps->nodes[*kid].key_off = off;
    ps->nodes[*kid].key_len = len;
    return 0;
}

static int parse_object(struct cn_parser *ps, int depth, uint32_t *idx)
{
    uint32_t self = new_node(ps, CN_OBJECT), prev = CN_NONE, kid;
    int rc;

    *idx = self;
    ps->pos++;
    skip_ws(ps);
    if (peek(ps) == '}') {
        ps->pos++;
        return 0;
    }
    for (;;) {
        if ((rc = parse_member(ps, depth, &kid)) < 0)
            return rc;
        add_kid(ps, self, &prev, kid);
        skip_ws(ps);
        int c = peek(ps);
        ps->pos++;
        if (c == '}')
            return 0;
        if (c != ',')
            return not_json(ps, ps->pos - 1, "expected ',' or '}'");
    }
}

/* A value at the given depth (the top-level object is 0). Like to_dict(),
 * a value deeper than CANON_DEPTH_MAX is an error unless it is a null
 * object member, which is removed before to_dict() looks at it. */
static int parse_value(struct cn_parser *ps, int depth, int member, uint32_t *idx)
{
    skip_ws(ps);
    int c = peek(ps);
    if (depth > CANON_DEPTH_MAX && c >= 0 && !(member && c == 'n'))
        return fmt_err(ps->err, ps->errlen, "nesting deeper than %d levels at byte %zu",
                       CANON_DEPTH_MAX, ps->pos);
    switch (c) {
    case '{':
        return parse_object(ps, depth, idx);
    case '[':
        return parse_array(ps, depth, idx);
    case '"':
        return parse_string_value(ps, idx);
    case 't':
        return parse_literal(ps, "true", CN_TRUE, idx);
    case 'f':
        return parse_literal(ps, "false", CN_FALSE, idx);
    case 'n':
        return parse_literal(ps, "null", CN_NULL, idx);
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(ps, idx);
        return not_json(ps, ps->pos, "unexpected character");
    }
}

static int parse_document(struct cn_parser *ps, uint32_t *root)
{
    int rc = parse_value(ps, 0, 0, root);
    if (rc < 0)
        return rc;
    skip_ws(ps);
    if (ps->pos < ps->len)
        return not_json(ps, ps->pos, "content after the document");
    if (ps->nodes[*root].type != CN_OBJECT)
        return fmt_err(ps->err, ps->errlen, "top level is not an object");
    return 0;
}

/* Writer. */

/* A string with only the escapes JSON requires: `"`, `\`, and the C0
 * controls (short forms where JSON has one, else \u00xx in lowercase). */
static void emit_str(struct cn_buf *b, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    static const char short_esc[0x20] = {
        ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r'};
    size_t run = 0;

    buf_ch(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        size_t elen = 2;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_put(b, s + run, i - run);
        run = i + 1;
        if (c >= 0x20)
            esc[1] = (char)c;
        else if (short_esc[c] != 0)
            esc[1] = short_esc[c];
        else
            elen = 6;
        buf_put(b, esc, elen);
    }
    buf_put(b, s + run, n - run);
    buf_ch(b, '"');
}

static void emit_u64(struct cn_buf *b, int neg, uint64_t mag)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%s%" PRIu64, neg && mag != 0 ? "-" : "", mag);
    buf_put(b, tmp, (size_t)n);
}

static int same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

/* 1 when the n digits d with the first digit's exponent e10 read back as
 * x. The text is "DDDDeN" with no decimal point, so no locale is involved. */
static int round_trips(const char *d, int n, int e10, double x)
{
    char tmp[48];
    snprintf(tmp, sizeof(tmp), "%.*se%d", n, d, e10 - (n - 1));
    return same_bits(strtod(tmp, NULL), x);
}

/* The p-digit decimal nearest to x (printf rounds correctly) into d, the
 * exponent of its first digit into *e10. */
static void nearest_digits(double x, int p, char d[20], int *e10)
{
    char tmp[40];
    const char *s;
    int n = 0;

    snprintf(tmp, sizeof(tmp), "%.*e", p - 1, x);
    /* tmp is "D[.DDD]e[+-]XX" (the point is the locale's). */
    for (s = tmp; *s != 'e'; s++) {
        if (*s >= '0' && *s <= '9')
            d[n++] = *s;
    }
    *e10 = (int)strtol(s + 1, NULL, 10);
}

/* d (p digits) plus one unit in its last place. */
static void digits_up(char *d, int p, int *e10)
{
    int i = p - 1;
    while (i >= 0 && d[i] == '9')
        d[i--] = '0';
    if (i >= 0) {
        d[i]++;
    } else {
        d[0] = '1';
        (*e10)++;
    }
}

/* Whether x (finite, > 0) is a power of two: no fraction bits in a normal
 * number, a single set bit in a subnormal one. (frexp() would say it too,
 * but the daemon links no libm.) */
static int is_power_of_two(double x)
{
    uint64_t b;
    memcpy(&b, &x, sizeof(b));
    uint64_t frac = b & ((UINT64_C(1) << 52) - 1);
    if ((b >> 52 & 0x7ff) != 0)
        return frac == 0;
    return frac != 0 && (frac & (frac - 1)) == 0;
}

/* Whether a p-digit decimal reads back as x (finite, > 0): the nearest
 * one, or for a power of two the one just above it (a power of two is
 * closer to its lower neighbour than to its upper one, so when the nearest
 * decimal lies below it and outside that narrower half, the decimal just
 * above can still read back). The one that does is left in d, *e10. */
static int fits(double x, int p, int pow2, char d[20], int *e10)
{
    nearest_digits(x, p, d, e10);
    if (round_trips(d, p, *e10, x))
        return 1;
    if (pow2) {
        digits_up(d, p, e10);
        if (round_trips(d, p, *e10, x))
            return 1;
    }
    return 0;
}

/* The shortest digits that read back as x (finite, > 0), as ryu finds them:
 * no decimal point and no trailing zeros in d, the exponent of the first
 * digit in *e10; returns the number of digits. Among the decimals of that
 * length that read back, the nearest is taken. fits() is monotonic in p (a
 * p-digit decimal is also a (p+1)-digit one, and the candidates at p+1 are
 * at least as close on their side of x), and 17 digits always read back,
 * so the length is found by bisection: at most 6 tries of printf and
 * strtod instead of up to 17 (a measured value such as 1765123456.123456 took
 * 9 us one length after another, 3 us so). */
static int shortest_digits(double x, char d[20], int *e10)
{
    int pow2 = is_power_of_two(x), lo = 1, hi = 17, held = 0;

    while (lo < hi) {
        int mid = (lo + hi) / 2;
        held = fits(x, mid, pow2, d, e10) ? mid : 0; /* what d holds now */
        if (held)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (held != lo)
        fits(x, lo, pow2, d, e10);
    int p = lo;
    while (p > 1 && d[p - 1] == '0')
        p--;
    return p;
}

static void emit_zeros(struct cn_buf *b, int n)
{
    for (int i = 0; i < n; i++)
        buf_ch(b, '0');
}

/* A non-integral double as orjson writes it (section 2.3): decimal when
 * |x| >= 1e-5 (first digit's exponent >= -5), else d[.ddd]e-N. */
static void emit_fraction(struct cn_buf *b, double x)
{
    char d[20], tmp[16];
    int e, n = shortest_digits(fabs(x), d, &e);

    if (x < 0)
        buf_ch(b, '-');
    if (e < -5) {
        buf_ch(b, d[0]);
        if (n > 1) {
            buf_ch(b, '.');
            buf_put(b, d + 1, (size_t)n - 1);
        }
        int k = snprintf(tmp, sizeof(tmp), "e%d", e);
        buf_put(b, tmp, (size_t)k);
    } else if (e < 0) {
        buf_put(b, "0.", 2);
        emit_zeros(b, -e - 1);
        buf_put(b, d, (size_t)n);
    } else if (n <= e + 1) {
        buf_put(b, d, (size_t)n);
        emit_zeros(b, e + 1 - n);
    } else {
        buf_put(b, d, (size_t)e + 1);
        buf_ch(b, '.');
        buf_put(b, d + e + 1, (size_t)(n - e - 1));
    }
}

/* A double: integral values become integers (to_dict()), which must fit
 * [-2^63, 2^64) for orjson to write them. */
/* A double: integral values become integers (to_dict()), which must fit
 * [-2^63, 2^64) for orjson to write them. The message quotes the number as
 * it was written. */
static int emit_double(struct cn_emit *em, const struct cn_node *n)
{
    double x = n->u.d;
    size_t end = n->at;

    if (x != trunc(x)) {
        emit_fraction(&em->out, x);
        return 0;
    }
    if (x >= 0x1p64 || x < -0x1p63) {
        while (end < em->len && em->in[end] != 0 && strchr("+-.0123456789eE", em->in[end]) != NULL)
            end++;
        int shown = end - n->at > 64 ? 64 : (int)(end - n->at);
        return fmt_err(em->err, em->errlen,
                       "integer %.*s%s at byte %" PRIu32
                       " is outside [-2^63, 2^64-1]: the orchestrator cannot sign it",
                       shown, (const char *)em->in + n->at, shown == 64 ? "..." : "", n->at);
    }
    if (x < 0)
        emit_u64(&em->out, 1, (uint64_t)-x);
    else
        emit_u64(&em->out, 0, (uint64_t)x);
    return 0;
}

static int emit_array(struct cn_emit *em, const struct cn_node *arr)
{
    int rc = 0;
    buf_ch(&em->out, '[');
    for (uint32_t k = arr->u.kids.first; k != CN_NONE && rc == 0; k = em->nodes[k].next) {
        if (k != arr->u.kids.first)
            buf_ch(&em->out, ',');
        rc = emit_value(em, k, 0);
    }
    buf_ch(&em->out, ']');
    return rc;
}

static int member_cmp(const void *a, const void *b)
{
    const struct cn_member *x = a, *y = b;
    int c = memcmp(x->key, y->key, x->len < y->len ? x->len : y->len);
    if (c != 0)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int same_key(const struct cn_member *x, const struct cn_member *y)
{
    return x->len == y->len && memcmp(x->key, y->key, x->len) == 0;
}

/* 1 for "security" and the names in ignore_top (top-level members only). */
static int dropped_at_top(const struct cn_emit *em, const struct cn_member *m)
{
    if (m->len == 8 && memcmp(m->key, "security", 8) == 0)
        return 1;
    for (const char *const *f = em->ignore_top; f != NULL && *f != NULL; f++) {
        if (strlen(*f) == m->len && memcmp(m->key, *f, m->len) == 0)
            return 1;
    }
    return 0;
}

/* The members of obj in an array sorted by key bytes, then by position, so
 * that the last of duplicates comes last. Returns how many. */
static uint32_t sorted_members(const struct cn_emit *em, const struct cn_node *obj, int top,
                               struct cn_member **out)
{
    struct cn_member *mem = xmalloc(sizeof(*mem) * (obj->u.kids.count + 1));
    uint32_t m = 0, pos = 0;

    for (uint32_t k = obj->u.kids.first; k != CN_NONE; k = em->nodes[k].next) {
        const struct cn_node *kid = &em->nodes[k];
        mem[m] = (struct cn_member){em->strs + kid->key_off, kid->key_len, pos++, k};
        if (!top || !dropped_at_top(em, &mem[m]))
            m++;
    }
    qsort(mem, m, sizeof(*mem), member_cmp);
    *out = mem;
    return m;
}

static int emit_object(struct cn_emit *em, const struct cn_node *obj, int top)
{
    struct cn_member *mem;
    uint32_t m = sorted_members(em, obj, top, &mem);
    int rc = 0, first = 1;

    buf_ch(&em->out, '{');
    for (uint32_t i = 0; i < m && rc == 0; i++) {
        /* A later duplicate wins; null members are removed (to_dict()). */
        if ((i + 1 < m && same_key(&mem[i], &mem[i + 1])) || em->nodes[mem[i].node].type == CN_NULL)
            continue;
        if (!first)
            buf_ch(&em->out, ',');
        first = 0;
        emit_str(&em->out, mem[i].key, mem[i].len);
        buf_ch(&em->out, ':');
        rc = emit_value(em, mem[i].node, 0);
    }
    buf_ch(&em->out, '}');
    free(mem);
    return rc;
}

static int emit_value(struct cn_emit *em, uint32_t idx, int top)
{
    const struct cn_node *n = &em->nodes[idx];

    switch ((enum cn_type)n->type) {
    case CN_NULL:
        buf_put(&em->out, "null", 4);
        return 0;
    case CN_FALSE:
        buf_put(&em->out, "false", 5);
        return 0;
    case CN_TRUE:
        buf_put(&em->out, "true", 4);
        return 0;
    case CN_INT:
    case CN_NEGINT:
        emit_u64(&em->out, n->type == CN_NEGINT, n->u.mag);
        return 0;
    case CN_DOUBLE:
        return emit_double(em, n);
    case CN_STRING:
        emit_str(&em->out, em->strs + n->u.str.off, n->u.str.len);
        return 0;
    case CN_ARRAY:
        return emit_array(em, n);
    case CN_OBJECT:
        return emit_object(em, n, top);
    }
    return 0;
}

/* The last member called name of the object obj, or CN_NONE. */
static uint32_t find_member(const struct cn_parser *ps, uint32_t obj, const char *name)
{
    size_t n = strlen(name);
    uint32_t found = CN_NONE;

    for (uint32_t k = ps->nodes[obj].u.kids.first; k != CN_NONE; k = ps->nodes[k].next) {
        const struct cn_node *kid = &ps->nodes[k];
        if (kid->key_len == n && memcmp(ps->strs + kid->key_off, name, n) == 0)
            found = k;
    }
    return found;
}

/* Follow path (NULL-terminated member names, NULL: none) from the root;
 * *node is the value found, -ENOENT when a step is missing, null or not an
 * object. */
static int follow(const struct cn_parser *ps, uint32_t root, const char *const *path,
                  uint32_t *node)
{
    *node = root;
    for (const char *const *p = path; p != NULL && *p != NULL; p++) {
        if (ps->nodes[*node].type != CN_OBJECT) {
            fmt_err(ps->err, ps->errlen, "no member %s: its parent is not an object", *p);
            return -ENOENT;
        }
        *node = find_member(ps, *node, *p);
        if (*node == CN_NONE || ps->nodes[*node].type == CN_NULL) {
            fmt_err(ps->err, ps->errlen, "no member %s", *p);
            return -ENOENT;
        }
    }
    return 0;
}

static int canon_run(struct cn_parser *ps, const char *const *ignore_top, const char *const *path,
                     char **out, size_t *outlen)
{
    uint32_t root, node;
    int rc = parse_document(ps, &root);
    if (rc < 0)
        return rc;
    if ((rc = follow(ps, root, path, &node)) < 0)
        return rc;
    struct cn_emit em = {.in = ps->in,
                         .len = ps->len,
                         .nodes = ps->nodes,
                         .strs = ps->strs,
                         .ignore_top = ignore_top,
                         .err = ps->err,
                         .errlen = ps->errlen};
    em.out.cap = ps->len + 16;
    em.out.p = xmalloc(em.out.cap);
    if ((rc = emit_value(&em, node, node == root)) < 0) {
        free(em.out.p);
        return rc;
    }
    *out = em.out.p;
    if (outlen != NULL)
        *outlen = em.out.len;
    return 0;
}

static int canon_do(const char *in, size_t len, const char *const *ignore_top,
                    const char *const *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    if (outlen != NULL)
        *outlen = 0;
    if (len > CANON_LEN_MAX)
        return fmt_err(err, errlen, "JSON text of %zu bytes is longer than the %zu limit", len,
                       CANON_LEN_MAX);
    struct cn_parser ps = {
        .in = (const unsigned char *)in, .len = len, .err = err, .errlen = errlen};
    ps.cap = (uint32_t)(len / 8 + 16);
    ps.nodes = xmalloc((size_t)ps.cap * sizeof(*ps.nodes));
    ps.strs = xmalloc(len + 1);

    /* newlocale() of "C" does not allocate in glibc; should it ever fail,
     * the thread's own locale (the C locale unless a plugin changed it) is
     * used. */
    locale_t c_loc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    locale_t old = c_loc != (locale_t)0 ? uselocale(c_loc) : (locale_t)0;
    int rc = canon_run(&ps, ignore_top, path, out, outlen);
    if (c_loc != (locale_t)0) {
        uselocale(old);
        freelocale(c_loc);
    }
    free(ps.nodes);
    free(ps.strs);
    return rc;
}

int canon_json(const char *in, size_t len, const char *const *ignore_top, char **out,
               size_t *outlen, char *err, size_t errlen)
{
    return canon_do(in, len, ignore_top, NULL, out, outlen, err, errlen);
}

int canon_lookup(const char *in, size_t len, const char *const *path, char **out, size_t *outlen,
                 char *err, size_t errlen)
{
    return canon_do(in, len, NULL, path, out, outlen, err, errlen);
}

int canon_quote(const char *s, size_t len, char **out, size_t *outlen, char *err, size_t errlen)
{
    const unsigned char *u = (const unsigned char *)(s != NULL ? s : "");
    struct cn_buf b = {NULL, 0, 0};

    *out = NULL;
    if (outlen != NULL)
        *outlen = 0;
    for (size_t i = 0, k; i < len; i += k) {
        if ((k = utf8_len(u + i, len - i)) == 0)
            return fmt_err(err, errlen, "not valid UTF-8 at byte %zu", i);
    }
    b.cap = len + 3;
    b.p = xmalloc(b.cap);
    emit_str(&b, u, len);
    *out = b.p;
    if (outlen != NULL)
        *outlen = b.len;
    return 0;
}
