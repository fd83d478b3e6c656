/*
 * spool.h - the durable outbox of finished results (ARCHITECTURE "A result
 * is durable before it is sent"): an append-only segment log with group
 * commit in STATE_DIR/spool/.
 *
 * Records are appended to the current segment "<id>.seg" (id: 16 hex
 * digits, monotonic, so the names order the segments). spool_write()
 * appends a result (one write(2)); spool_commit() makes everything appended
 * since the last commit durable with ONE fdatasync, and a result is sent
 * only after the commit that covers it. spool_remove() (the orchestrator
 * answered 200) appends a "done <seq>" acknowledgement without fsync: a
 * lost ack only means the result is sent again after a restart, which the
 * orchestrator answers "ignored" (README "Delivery guarantee": a possible
 * duplicate, never a loss). A segment is rotated at SPOOL_SEGMENT_MAX
 * bytes; a segment that is not the current one is deleted once every
 * result in it is acknowledged (acks it holds for still-present older
 * segments are first appended again). The directory is fsynced when a
 * segment is created or deleted.
 *
 * A record is a 36-byte header and its payload (integers little-endian):
 *
 *   0  magic "AVSP"           4  version (2)       5  kind 'R' result, 'D' done
 *   6  url length (u16)       8  seq (u64)        16  created, ms since the epoch (u64)
 *  24  body length (u32)     28  CRC-32 of url + body
 *  32  CRC-32 of header bytes 0..31
 *  36  url, then body (the result JSON); a 'D' record has neither.
 *
 * Loading (spool_open) scans the segments oldest first, collects the acks
 * of all of them and keeps the unacknowledged results; spool_load() hands
 * them out oldest first (by seq). A record cut short at the end of a
 * segment (a crash mid-append: it was never committed, so never sent) is
 * ignored with a log line. Any other damage (bad header or body checksum,
 * bad magic or version, a body that is not a result) makes the segment
 * corrupt: its still-parseable unacknowledged results are appended again
 * (new seqs, same url and created time) and committed, then the segment is
 * moved to spool/corrupt/ with a log line. Files that are not spool files
 * are moved there too; stale "tmp.*" files of the previous format are
 * removed. Version-1 files ("<seq>.res", one result each, header line
 * "AVTSPOOL 1 <len> <crc> <created> <url>") are migrated at open: appended
 * as records, committed, then unlinked; a damaged one is moved aside.
 *
 * Bounds (struct spool_limits) count live (unacknowledged) results and
 * their record bytes: while the spool holds max_files results or max_bytes
 * bytes it is "full" (spool_is_full): the transition is logged and
 * counted, and the orchestrator client asks for no new work until results
 * are delivered. A result is still written when full (tasks already
 * running must not lose theirs), so the overshoot is bounded by the slots.
 * Results older than max_age are dropped with an error line and a counter
 * (spool_expire).
 *
 * Only one process may use a spool: spool_open() takes an exclusive lock.
 * Every function is for the loop thread only, except spool_parse_segment()
 * and spool_crc32(), which are pure.
 */
#ifndef AVT_DAEMON_SPOOL_H
#define AVT_DAEMON_SPOOL_H

#include <stddef.h>

#include <jansson.h>

#define SPOOL_VERSION 2
#define SPOOL_SEGMENT_MAX (4UL << 20) /* rotation size of a segment */

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
    unsigned long files;               /* live (unacknowledged) results now */
    unsigned long long bytes;          /* their record bytes (headers included) */
    int full;                          /* at a bound now */
    unsigned long written;             /* results made durable */
    unsigned long write_errors;        /* results that could not be written */
    unsigned long removed;             /* delivered and removed */
    unsigned long corrupt;             /* files moved to corrupt/ */
    unsigned long expired;             /* dropped at max_age */
    unsigned long full_events;         /* times the spool became full */
    unsigned long other_orchestrator;  /* loaded results that belong to another url */
    unsigned long corrupt_segments;    /* of corrupt: segments (the rest are files) */
    unsigned long torn;                /* records cut short by a crash, ignored */
    unsigned long migrated;            /* version-1 files taken over */
    unsigned long commits;             /* fdatasyncs of spool_commit() */
    unsigned long segments;            /* segment files now */
    unsigned long refused;             /* refused for good, set aside in refused/ */
    unsigned long unreadable_segments; /* segments that could not be read at start, left in place */
    unsigned long trouble_events;      /* times writing started to fail */
    unsigned long long disk_bytes;     /* their size now */
};

/*
 * Open (creating it 0700 when missing) STATE_DIR/spool and lock it. The
 * state directory itself is created when missing (not its parents).
 * Returns 0, or -errno with a message in err (the caller exits 78).
 */
int spool_open(const char *state_dir, const struct spool_limits *lim, struct spool **out, char *err,
               size_t errlen);

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
 * Append rec to the current segment (sets rec->seq). It is NOT durable yet:
 * it must not be sent before the next spool_commit(). Returns 0, or -errno
 * after logging (the disk is full or failing); the caller then keeps the
 * result in memory only.
 */
int spool_write(struct spool *sp, struct spool_record *rec);

/*
 * Make every record appended so far durable: one fdatasync for all of them
 * (none when nothing was appended since the last commit). Returns 0, or
 * -errno after logging; the records are then in memory (and maybe on disk)
 * only, and the next write starts a new segment.
 */
int spool_commit(struct spool *sp);

/* The orchestrator acknowledged rec: append its "done" record (if it has a
 * seq); a segment left without live results is deleted. */
void spool_remove(struct spool *sp, struct spool_record *rec);

/*
 * Drop rec because it is older than max_age: logs an error naming the task
 * and counts it. Returns 1 when rec was expired (then it is acknowledged
 * like a delivered one), 0 when it is young enough (or max_age is 0).
 */
int spool_expire(struct spool *sp, struct spool_record *rec, double now);

/*
 * The live records on disk for `url` (NULL: all), oldest first, in a new
 * array of *n records (free each and the array). Records of another url are
 * left on disk and counted; records already older than max_age are
 * expired. Damage found since spool_open() is logged and skipped. Returns 0
 * or -errno (nothing could be read).
 */
int spool_load(struct spool *sp, const char *url, struct spool_record ***out, size_t *n);

/* 1 while at a bound (max_files or max_bytes). */
int spool_is_full(const struct spool *sp);

/*
 * The errno of the failure while writing fails (a write or a commit failed:
 * disk full, quota, I/O error; *since = its now_wall() when not NULL), else
 * 0. While it fails the worker takes no new tasks.
 */
int spool_trouble(const struct spool *sp, double *since);

/*
 * While writing fails: write, sync and delete a probe file the size of a
 * large result; when that works the trouble is over (logged). Returns 0
 * when the spool can be written, else -errno.
 */
int spool_probe(struct spool *sp);

/*
 * The orchestrator refused rec for good: write it with the reason durably
 * to STATE_DIR/refused/<ms>-<task id>.json (an operator's record, never read
 * back), then acknowledge it in the spool. Logged and counted. Returns 0,
 * or -errno (logged) when the file cannot be written: rec stays in the
 * spool then.
 */
int spool_set_aside(struct spool *sp, struct spool_record *rec, const char *why);

void spool_get_stats(const struct spool *sp, struct spool_stats *st);

/* One record found by spool_parse_segment(); the pointers are into its
 * buffer (url is not NUL-terminated). */
struct spool_item {
    int kind; /* SPOOL_ITEM_RESULT or SPOOL_ITEM_DONE */
    unsigned long long seq;
    double created; /* unix seconds; results only */
    const char *url;
    size_t url_len;
    const char *body;
    size_t len;
    size_t off;  /* where the record starts in the buffer */
    size_t size; /* its bytes, header included */
};

#define SPOOL_ITEM_RESULT 'R'
#define SPOOL_ITEM_DONE 'D'
#define SPOOL_PARSE_TORN 1    /* a record cut short at the end */
#define SPOOL_PARSE_CORRUPT 2 /* damaged bytes (records after them were recovered) */

typedef void (*spool_item_fn)(void *arg, const struct spool_item *it);

/*
 * Parse a segment's bytes (pure; any input is safe, for the fuzzer): cb is
 * called for every intact record in order. After damage it resynchronises
 * at the next intact record header. Returns 0 (clean), SPOOL_PARSE_TORN or
 * SPOOL_PARSE_CORRUPT (corrupt wins over torn); *bad (may be NULL) is then
 * the offset of the first bad byte.
 */
int spool_parse_segment(const void *buf, size_t len, spool_item_fn cb, void *arg, size_t *bad);

/*
 * The record bytes of one item (kind, seq, created, url, body; off and size
 * are ignored) in a new buffer of *size bytes (for tests and seeds).
 */
unsigned char *spool_encode(const struct spool_item *it, size_t *size);

/* The ids of a result body: the parsed JSON (decref it; *tid and *jid
 * point into it), or NULL when the body is not a result. */
json_t *spool_result_ids(const char *body, size_t len, const char **tid, const char **jid);

/* CRC-32 (IEEE 802.3, as zlib's crc32) of len bytes; exposed for tests. */
unsigned long spool_crc32(const void *buf, size_t len);

#endif /* AVT_DAEMON_SPOOL_H */
