/*
 * log.h - the daemon's logging. Lines go to stderr as one write(2) each, so
 * lines from several threads never interleave. Under journald
 * ($JOURNAL_STREAM set, or format "journal") each line starts with the
 * sd-daemon "<N>" priority prefix; otherwise plain "LEVEL message k=v" text
 * or one JSON object per line. Levels are syslog's (LOG_CRIT..LOG_DEBUG).
 * Tokens must never be passed to these functions.
 *
 * Outside text (task and job ids, types, answers of the orchestrator,
 * plugin messages) cannot forge a line: the message and every context field
 * go through log_escape() in all three formats.
 */
#ifndef AVT_DAEMON_LOG_H
#define AVT_DAEMON_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <syslog.h>

enum log_format {
    LOG_FORMAT_AUTO = 0, /* journal when $JOURNAL_STREAM is set, else plain */
    LOG_FORMAT_PLAIN,
    LOG_FORMAT_JSON,
    LOG_FORMAT_JOURNAL,
};

/* Context a line can carry; every field may be NULL. */
struct log_ctx {
    const char *plugin;
    const char *task_id;
    const char *job_id;
    const char *type;
};

/* Lines above this level are dropped; default LOG_INFO. Atomic because a
 * reload changes it while worker threads log. */
extern _Atomic int log_level;

void log_init(int level, enum log_format format);
void log_set_level(int level);
/* Parse "error|warning|notice|info|debug"; returns -1 when unknown. */
int log_level_parse(const char *s);
const char *log_level_name(int level);
/* Parse "auto|plain|json|journal"; returns -1 when unknown. */
int log_format_parse(const char *s);

/*
 * Copy `in` to `out` (outlen >= 1 bytes, always NUL-terminated) so that it
 * stays on one line whatever it holds: \n, \r and \t become those two
 * characters, every other control character (C0, DEL, C1) and U+2028/U+2029
 * becomes \xNN per byte, and so does each byte that is not valid UTF-8.
 * Printable text, backslashes included, is kept as it is. A result longer
 * than outlen - 1 is cut before the escape or character that does not fit.
 * Returns the length written. Any thread.
 */
size_t log_escape(char *out, size_t outlen, const char *in);

void log_emit(int level, const struct log_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vemit(int level, const struct log_ctx *ctx, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* The level is checked before the arguments are evaluated. */
#define log_at(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) <= log_level)                                                                    \
            log_emit((lvl), NULL, __VA_ARGS__);                                                    \
    } while (0)
#define log_err(...) log_at(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_at(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)

/* Log at LOG_ERR and exit(1) (fatal appends strerror(errno)). For start-up
 * and invariant failures only. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* 1 once fatal() or fatalx() has begun to exit: the daemon's own exit
 * (exitguard.h lets it through). */
int log_fatal_exiting(void);

#endif /* AVT_DAEMON_LOG_H */
