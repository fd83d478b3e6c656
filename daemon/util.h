/*
 * util.h - small helpers shared by every module: allocation that aborts on
 * out-of-memory (systemd restarts the daemon; there are no untested OOM
 * branches), string formatting into caller buffers, and clocks.
 */
#ifndef AVT_DAEMON_UTIL_H
#define AVT_DAEMON_UTIL_H

#include <stdarg.h>
#include <stddef.h>

#define AVT_ERRLEN 512
#define AVT_VERSION "0.1.0"

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation: log and abort() on failure, never return NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* free(*pp) and set *pp to NULL. */
#define free_and_null(p)                                                                           \
    do {                                                                                           \
        free(p);                                                                                   \
        (p) = NULL;                                                                                \
    } while (0)

/* snprintf into err (errlen bytes); always NUL-terminates; returns -EINVAL
 * so that loaders can write `return fmt_err(err, errlen, "...")`. */
int fmt_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* x rounded to the nearest integer, halves away from zero, as C's round();
 * zero comes back as +0, NaN and infinities unchanged. The daemon links no
 * libm: it would be ~330 KiB of RSS for the two or three calls it needs. */
double round_away(double x);

/* Seconds on CLOCK_MONOTONIC and CLOCK_REALTIME. */
double now_mono(void);
double now_wall(void);

/* Length of the valid UTF-8 sequence at s (at most n bytes, n >= 1), or 0
 * when the bytes there are not one. */
size_t utf8_seq_len(const unsigned char *s, size_t n);

/* A copy of s that is valid UTF-8 (bad bytes become '?') and at most max
 * bytes long, cut on a character boundary. Whatever a plugin or the
 * orchestrator hands in goes through it before it is stored. */
char *str_clean_utf8(const char *s, size_t max);

/* 1 if s matches ^[a-zA-Z0-9_-]+$ (worker ids, plugin names). */
int str_is_ident(const char *s);

/* Read a whole small file (at most maxlen bytes) into a NUL-terminated
 * buffer; returns NULL and sets errno on failure (EFBIG when too large). */
char *read_file(const char *path, size_t maxlen, size_t *lenp);

#endif /* AVT_DAEMON_UTIL_H */
