/*
 * spool.h - the durable outbox of finished results (ARCHITECTURE "A result
 * is durable before it is sent"). One file per result in STATE_DIR/spool/:
 * written to a temporary file, fsynced, renamed into place and the
 * directory fsynced before the result is first sent; removed only once the
 * orchestrator answered 200; loaded again, oldest first, at the next start.
 *
 * A file is "<seq>.res" (seq: 16 hex digits, monotonic, so the name orders
 * the files) holding one header line and the JSON body:
 *
 *   AVTSPOOL 1 <body length> <crc32 of body, 8 hex> <created, unix s> <url>\n
 *   <body>
 *
 * url is the orchestrator the result belongs to, so that replay routes it.
 * A file that is not of this shape (foreign, truncated, bad checksum,
 * another version, a body that is not a result) is moved to
 * spool/corrupt/ with a log line. Stale temporary files of a write that a
 * crash interrupted are removed (such a result was never sent; the crash
 * journal reports its task).
 *
 * Bounds (struct spool_limits): while the spool holds max_files files or
 * max_bytes bytes it is "full" (spool_is_full): the transition is logged and
 * counted, and the orchestrator client asks for no new work until results
 * are delivered. A result is still written when full (tasks already running
 * must not lose theirs), so the overshoot is bounded by the slots. Results
 * older than max_age are dropped with an error line and a counter
 * (spool_expire).
 *
 * Only one process may use a spool: spool_open() takes an exclusive lock.
 * Every function is for the loop thread only.
 */
#ifndef AVT_DAEMON_SPOOL_H
#define AVT_DAEMON_SPOOL_H

#include <stddef.h>

#define SPOOL_VERSION 1

struct spool;

struct spool_limits {
    unsigned long long max_bytes; /* 0 = unbounded */
    long max_files;               /* 0 = unbounded */
    double max_age;               /* seconds; 0 = results never expire */
};

/* One spooled result. */
struct spool_record {
    unsigned long long seq; /* 0: not on disk (writing it failed) */
    char *url;              /* the orchestrator it belongs to */
    char *task_id;
    char *job_id;
    char *body; /* the result JSON, len bytes, NUL-terminated */
    size_t len;
    double created; /* now_wall() when it was spooled */
};

struct spool_stats {
    unsigned long files;              /* on disk now */
    unsigned long long bytes;         /* on disk now (headers included) */
    int full;                         /* at a bound now */
    unsigned long written;            /* results made durable */
    unsigned long write_errors;       /* results that could not be written */
    unsigned long removed;            /* delivered and removed */
    unsigned long corrupt;            /* files moved to corrupt/ */
    unsigned long expired;            /* dropped at max_age */
    unsigned long full_events;        /* times the spool became full */
    unsigned long other_orchestrator; /* loaded files that belong to another url */
};

/*
 * Open (creating it 0700 when missing) STATE_DIR/spool and lock it. The
 * state directory itself is created when missing (not its parents).
 * Returns 0, or -errno with a message in err (the caller exits 78).
 */
int spool_open(const char *state_dir, const struct spool_limits *lim, struct spool **out,
               char *err, size_t errlen);

/* Close and unlock; the files stay. NULL is a no-op. */
void spool_close(struct spool *sp);

/*
 * A new record: copies of url, task_id, job_id and body (len bytes);
 * created = now. Free with spool_record_free().
 */
struct spool_record *spool_record_new(const char *url, const char *task_id, const char *job_id,
                                      const char *body, size_t len);
void spool_record_free(struct spool_record *rec);

/*
 * Make rec durable (sets rec->seq) before it is first sent. Returns 0, or
 * -errno after logging (the disk is full or failing); the caller then keeps
 * the result in memory only.
 */
int spool_write(struct spool *sp, struct spool_record *rec);

/* The orchestrator acknowledged rec: remove its file (if it has one). */
void spool_remove(struct spool *sp, struct spool_record *rec);

/*
 * Drop rec because it is older than max_age: logs an error naming the task
 * and counts it. Returns 1 when rec was expired (then its file is gone),
 * 0 when it is young enough (or max_age is 0).
 */
int spool_expire(struct spool *sp, struct spool_record *rec, double now);

/*
 * The records on disk for `url` (NULL: all), oldest first, in a new array
 * of *n records (free each and the array). Files of another url are left
 * on disk and counted; corrupt files are moved aside; records already
 * older than max_age are expired. Returns 0 or -errno (directory
 * unreadable).
 */
int spool_load(struct spool *sp, const char *url, struct spool_record ***out, size_t *n);

/* 1 while at a bound (max_files or max_bytes). */
int spool_is_full(const struct spool *sp);

void spool_get_stats(const struct spool *sp, struct spool_stats *st);

/* CRC-32 (IEEE 802.3, as zlib's crc32) of len bytes; exposed for tests. */
unsigned long spool_crc32(const void *buf, size_t len);

#endif /* AVT_DAEMON_SPOOL_H */
