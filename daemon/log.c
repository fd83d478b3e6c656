/*
 * log.c - leveled logging to stderr, one write(2) per line so that lines of
 * several threads never interleave. Three formats: journald ("<N>" sd-daemon
 * priority prefix, no timestamp: the journal adds its own), plain text with
 * an ISO-8601 timestamp, and one JSON object per line. A line about a task
 * carries plugin, task_id, job_id and type as key=value pairs (or JSON
 * members). Nothing here ever sees a token: callers must not pass one.
 *
 * Much of what is logged comes from outside: ids and types chosen by the
 * orchestrator, its answers, plugin messages. A newline in any of them
 * would start a line of the attacker's choosing (with a "<0>" of its own
 * under journald), so the formatted message and each context field are
 * escaped (log_escape) once, here, before any format puts them together.
 */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "util.h"

_Atomic int log_level = LOG_INFO;
static atomic_int fatal_exit; /* fatal() or fatalx() is ending the process */
static enum log_format log_fmt = LOG_FORMAT_PLAIN;

static const char *const level_names[] = {"emerg",   "alert",  "crit", "error",
                                          "warning", "notice", "info", "debug"};

void log_init(int level, enum log_format format)
{
    log_set_level(level);
    if (format == LOG_FORMAT_AUTO) {
        const char *js = getenv("JOURNAL_STREAM");
        format = (js != NULL && *js != '\0') ? LOG_FORMAT_JOURNAL : LOG_FORMAT_PLAIN;
    }
    log_fmt = format;
}

void log_set_level(int level)
{
    if (level < LOG_EMERG)
        level = LOG_EMERG;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    log_level = level;
}

int log_level_parse(const char *s)
{
    for (int i = LOG_ERR; i <= LOG_DEBUG; i++) {
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    }
    if (strcasecmp(s, "warn") == 0)
        return LOG_WARNING;
    if (strcasecmp(s, "err") == 0)
        return LOG_ERR;
    return -1;
}

const char *log_level_name(int level)
{
    if (level < 0 || level > LOG_DEBUG)
        return "unknown";
    return level_names[level];
}

int log_format_parse(const char *s)
{
    static const char *const names[] = {"auto", "plain", "json", "journal"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (strcasecmp(s, names[i]) == 0)
            return (int)i;
    }
    return -1;
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* Room for a field of `raw` bytes once escaped (4 bytes per byte at most). */
#define ESCAPED_MAX(raw) (4 * (raw) + 1)
#define MSG_MAX 2048
#define FIELD_MAX 192 /* a context field is cut there (ids are at most 128 bytes) */

/* An escape of one byte: "\xNN". */
static size_t put_hex(char *out, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    out[0] = '\\';
    out[1] = 'x';
    out[2] = hex[c >> 4];
    out[3] = hex[c & 0xf];
    return 4;
}

/* The length of the valid UTF-8 character at s that is shown as it is, or
 * 0 when its bytes are to be escaped: not UTF-8, a C1 control, U+2028 or
 * U+2029 (line breaks to some viewers). */
static size_t kept_len(const unsigned char *s, size_t n)
{
    size_t len = utf8_seq_len(s, n);
    if (len == 2 && s[0] == 0xc2 && s[1] < 0xa0)
        return 0;
    if (len == 3 && s[0] == 0xe2 && s[1] == 0x80 && (s[2] == 0xa8 || s[2] == 0xa9))
        return 0;
    return len;
}

size_t log_escape(char *out, size_t outlen, const char *in)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t n = strlen(in), o = 0, i = 0;
    while (i < n) {
        char esc[16];
        size_t elen, used;
        if (s[i] == '\n' || s[i] == '\r' || s[i] == '\t') {
            esc[0] = '\\';
            esc[1] = s[i] == '\n' ? 'n' : s[i] == '\r' ? 'r' : 't';
            elen = 2, used = 1;
        } else if (s[i] < 0x20 || s[i] == 0x7f) {
            elen = put_hex(esc, s[i]), used = 1;
        } else if ((used = kept_len(s + i, n - i)) > 0) {
            memcpy(esc, s + i, used);
            elen = used;
        } else { /* escape every byte of a C1 control or line separator */
            size_t len = utf8_seq_len(s + i, n - i);
            used = len > 0 ? len : 1;
            elen = 0;
            for (size_t k = 0; k < used; k++)
                elen += put_hex(esc + elen, s[i + k]);
        }
        if (o + elen >= outlen)
            break;
        memcpy(out + o, esc, elen);
        o += elen;
        i += used;
    }
    if (outlen > 0)
        out[o] = '\0';
    return o;
}

static void ctx_pairs(char *out, size_t outlen, const struct log_ctx *ctx)
{
    out[0] = '\0';
    if (ctx == NULL)
        return;
    const char *keys[] = {"plugin", "task_id", "job_id", "type"};
    const char *vals[] = {ctx->plugin, ctx->task_id, ctx->job_id, ctx->type};
    size_t used = 0;
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        if (vals[i] == NULL)
            continue;
        char v[ESCAPED_MAX(FIELD_MAX)];
        log_escape(v, sizeof(v), vals[i]);
        /* The job id equals the task id with Avtomatika 1.0b13; still print
         * both, since tools grep for either. */
        int n = snprintf(out + used, outlen - used, " %s=%s", keys[i], v);
        if (n < 0 || (size_t)n >= outlen - used)
            break;
        used += (size_t)n;
    }
}

/* "2026-11-26T10:00:00.123Z" (UTC) into ts. */
static void format_ts(char ts[40])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, 40 - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

/* A context field of a JSON line, escaped like the message. */
static void json_field(json_t *o, const char *key, const char *val)
{
    if (val == NULL)
        return;
    char v[ESCAPED_MAX(FIELD_MAX)];
    log_escape(v, sizeof(v), val);
    json_object_set_new(o, key, json_string(v));
}

static void emit_json(int level, const struct log_ctx *ctx, const char *msg)
{
    char ts[40];
    format_ts(ts);
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(log_level_name(level)));
    json_object_set_new(o, "msg", json_string(msg));
    if (ctx != NULL) {
        json_field(o, "plugin", ctx->plugin);
        json_field(o, "task_id", ctx->task_id);
        json_field(o, "job_id", ctx->job_id);
        json_field(o, "type", ctx->type);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (s == NULL)
        return;
    size_t len = strlen(s);
    char *line = xasprintf("%s\n", s);
    write_all(line, len + 1);
    free(line);
    free(s);
}

void log_vemit(int level, const struct log_ctx *ctx, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    int saved = errno;
    char raw[MSG_MAX], msg[ESCAPED_MAX(MSG_MAX)];
    vsnprintf(raw, sizeof(raw), fmt, ap);
    /* One line per record, whatever the message holds. */
    log_escape(msg, sizeof(msg), raw);
    if (log_fmt == LOG_FORMAT_JSON) {
        emit_json(level, ctx, msg);
        errno = saved;
        return;
    }
    char pairs[768];
    ctx_pairs(pairs, sizeof(pairs), ctx);
    char line[sizeof(msg) + sizeof(pairs) + 64];
    int n;
    if (log_fmt == LOG_FORMAT_JOURNAL) {
        n = snprintf(line, sizeof(line), "<%d>%s%s\n", level, msg, pairs);
    } else {
        char ts[40];
        format_ts(ts);
        n = snprintf(line, sizeof(line), "%s %s %s%s\n", ts, level_names[level], msg, pairs);
    }
    if (n > 0) {
        size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
        line[len - 1] = '\n';
        write_all(line, len);
    }
    errno = saved;
}

void log_emit(int level, const struct log_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(level, ctx, fmt, ap);
    va_end(ap);
}

int log_fatal_exiting(void)
{
    return atomic_load(&fatal_exit);
}

void fatal(const char *fmt, ...)
{
    int e = errno;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_emit(LOG_ERR, NULL, "%s: %s", msg, strerror(e));
    atomic_store(&fatal_exit, 1);
    exit(1);
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_ERR, NULL, fmt, ap);
    va_end(ap);
    atomic_store(&fatal_exit, 1);
    exit(1);
}
