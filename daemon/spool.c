/*
 * spool.c - the durable result outbox (spool.h has the on-disk format and
 * the rules). This module only moves bytes between memory and
 * STATE_DIR/spool; what is sent when, and what counts as delivered, is
 * orch.c's business.
 *
 * Cost. The previous format (one file per result: open, write, fsync,
 * rename, directory fsync, later unlink) cost two fsyncs per result on the
 * loop thread. Here a result is one write(2) to an O_APPEND segment, the
 * batch of results one loop wake-up finished shares one fdatasync
 * (spool_commit), and an acknowledgement is one write(2) of 36 bytes. The
 * directory is fsynced only when a segment is created or deleted (every
 * SPOOL_SEGMENT_MAX bytes).
 *
 * Memory. The spool keeps an index of the live (unacknowledged) results:
 * seq, segment and size, sorted by seq (new seqs are always the highest);
 * an acknowledged entry is marked dead and the array compacted when half of
 * it is dead, so acknowledging oldest-first stays O(log n). Per segment it
 * keeps the count of live results in it and the acks it holds for results
 * of older segments ("cross acks"), which are appended again before the
 * segment is deleted so that no acknowledgement is lost while its result's
 * segment still exists. Result bodies are held by the caller only.
 *
 * Durability. A result is durable once spool_commit() returned 0: the
 * segment's name was made durable (directory fsync) when the segment was
 * created, and fdatasync covers the data and the file size. A crash between
 * an append and its commit leaves at worst a record cut short at the end of
 * the segment, which loading ignores: such a result was never sent, and the
 * crash journal reports its task. A new process never appends to an old
 * segment; it starts a new one with its first write.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "spool_v1.h"
#include "util.h"

#define SPOOL_SUBDIR "spool"
#define CORRUPT_SUBDIR "corrupt"
#define REFUSED_SUBDIR "refused" /* in STATE_DIR, beside spool/ */
#define PROBE_NAME ".probe"
#define PROBE_SIZE (64 * 1024)
#define SEG_SUFFIX ".seg"
#define TMP_PREFIX "tmp."
#define MAGIC "AVSP"
#define HDR 36
#define URL_MAX 65535U
#define BODY_MAX (256UL << 20)
#define FILE_MAX (1024UL << 20) /* a larger file is not one of ours */

/* An ack written in one segment for a result of another (older) one. */
struct xack {
    unsigned long long seq, seg;
};

struct seg {
    unsigned long long id;
    unsigned long live;      /* unacknowledged results in it */
    unsigned long long size; /* bytes on disk */
    struct xack *xacks;
    size_t nxacks, xcap;
};

struct live {
    unsigned long long seq, seg, size;
    int dead;
};

struct spool {
    char *dir;     /* STATE_DIR/spool */
    char *corrupt; /* STATE_DIR/spool/corrupt */
    int dirfd;
    int lockfd;
    struct spool_limits lim;
    unsigned long long next_seq, next_seg;
    struct seg *segs; /* by id; the last one is current while curfd >= 0 */
    size_t nsegs, segcap;
    int curfd;
    int dirty; /* results appended since the last commit */
    int told_ack_error;
    char *refused;     /* STATE_DIR/refused */
    double trouble;    /* now_wall() since writing fails, 0 = it works */
    int trouble_err;   /* its errno */
    struct live *live; /* by seq */
    size_t nlive, livecap, ndead;
    struct spool_stats st;
};

/* ---- CRC-32 ---------------------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* Feed len bytes into a running (pre-inverted) CRC register. */
static uint32_t crc_run(uint32_t c, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    pthread_once(&crc_once, crc_init);
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c;
}

unsigned long spool_crc32(const void *buf, size_t len)
{
    return crc_run(0xFFFFFFFFu, buf, len) ^ 0xFFFFFFFFu;
}

/* ---- Record encoding and parsing (pure) ------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t payload_crc(const struct spool_item *it)
{
    uint32_t c = crc_run(0xFFFFFFFFu, it->url, it->url_len);
    return crc_run(c, it->body, it->len) ^ 0xFFFFFFFFu;
}

unsigned char *spool_encode(const struct spool_item *it, size_t *size)
{
    *size = HDR + it->url_len + it->len;
    unsigned char *h = xmalloc(*size);
    double ms = it->created > 0 ? it->created * 1000.0 + 0.5 : 0;
    memcpy(h, MAGIC, 4);
    h[4] = SPOOL_VERSION;
    h[5] = (unsigned char)it->kind;
    put_le(h + 6, it->url_len, 2);
    put_le(h + 8, it->seq, 8);
    put_le(h + 16, ms < 1e18 ? (uint64_t)ms : 0, 8);
    put_le(h + 24, it->len, 4);
    put_le(h + 28, payload_crc(it), 4);
    put_le(h + 32, spool_crc32(h, 32), 4);
    if (it->url_len > 0)
        memcpy(h + HDR, it->url, it->url_len);
    if (it->len > 0)
        memcpy(h + HDR + it->url_len, it->body, it->len);
    return h;
}

/* The header's fields are consistent (its own checksum already matched). */
static int header_sane(const struct spool_item *it)
{
    if (it->seq == 0 || it->len > BODY_MAX)
        return 0;
    if (it->kind == SPOOL_ITEM_DONE)
        return it->url_len == 0 && it->len == 0;
    return it->kind == SPOOL_ITEM_RESULT && it->url_len > 0 && it->len > 0;
}

/* The record at off: 1 intact (in *it), 0 cut short by the end, -1 damaged. */
static int parse_at(const unsigned char *p, size_t len, size_t off, struct spool_item *it)
{
    const unsigned char *h = p + off;
    size_t rest = len - off;
    if (memcmp(h, MAGIC, rest < 4 ? rest : 4) != 0 || (rest > 4 && h[4] != SPOOL_VERSION))
        return -1;
    if (rest < HDR)
        return 0;
    if (get_le(h + 32, 4) != spool_crc32(h, 32))
        return -1;
    it->kind = h[5];
    it->url_len = (size_t)get_le(h + 6, 2);
    it->seq = get_le(h + 8, 8);
    it->created = (double)get_le(h + 16, 8) / 1000.0;
    it->len = (size_t)get_le(h + 24, 4);
    if (!header_sane(it))
        return -1;
    if (rest - HDR < it->url_len + it->len)
        return 0;
    it->url = (const char *)h + HDR;
    it->body = it->url + it->url_len;
    it->off = off;
    it->size = HDR + it->url_len + it->len;
    return payload_crc(it) == get_le(h + 28, 4) ? 1 : -1;
}

/* The next offset from `from` on where an intact record starts, or len. */
static size_t resync(const unsigned char *p, size_t len, size_t from)
{
    static const unsigned char mark[5] = {'A', 'V', 'S', 'P', SPOOL_VERSION};
    while (from < len) {
        const unsigned char *m = memmem(p + from, len - from, mark, sizeof(mark));
        if (m == NULL)
            break;
        struct spool_item it;
        size_t off = (size_t)(m - p);
        if (parse_at(p, len, off, &it) == 1)
            return off;
        from = off + 1;
    }
    return len;
}

int spool_parse_segment(const void *buf, size_t len, spool_item_fn cb, void *arg, size_t *bad)
{
    const unsigned char *p = buf;
    size_t off = 0;
    int rc = 0;
    while (off < len) {
        struct spool_item it;
        int r = parse_at(p, len, off, &it);
        if (r > 0) {
            cb(arg, &it);
            off += it.size;
            continue;
        }
        if (rc == 0 && bad != NULL)
            *bad = off;
        if (r == 0) {
            rc = rc ? rc : SPOOL_PARSE_TORN;
            break;
        }
        rc = SPOOL_PARSE_CORRUPT;
        off = resync(p, len, off + 1);
    }
    return rc;
}

json_t *spool_result_ids(const char *body, size_t len, const char **tid, const char **jid)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    *tid = json_string_value(json_object_get(j, "task_id"));
    *jid = json_string_value(json_object_get(j, "job_id"));
    if (*tid == NULL || *jid == NULL) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ---- Bounds ------------------------------------------------------------------ */

static int at_bound(const struct spool *sp)
{
    return (sp->lim.max_files > 0 && sp->st.files >= (unsigned long)sp->lim.max_files) ||
           (sp->lim.max_bytes > 0 && sp->st.bytes >= sp->lim.max_bytes);
}

/* Log and count a change of the full state; never silent. */
static void update_full(struct spool *sp)
{
    int full = at_bound(sp);
    if (full == sp->st.full)
        return;
    sp->st.full = full;
    if (full) {
        sp->st.full_events++;
        log_err("spool full (%lu results, %llu bytes; limits max_files=%ld max_bytes=%llu): "
                "asking the orchestrator for no new tasks until results are delivered",
                sp->st.files, sp->st.bytes, sp->lim.max_files, sp->lim.max_bytes);
    } else {
        log_notice("spool below its limits again (%lu results, %llu bytes): taking tasks again",
                   sp->st.files, sp->st.bytes);
    }
}

static void account(struct spool *sp, long files, long long bytes)
{
    sp->st.files = (unsigned long)((long)sp->st.files + files);
    sp->st.bytes = (unsigned long long)((long long)sp->st.bytes + bytes);
    update_full(sp);
}

/* Writing failed (disk full, quota, I/O error): the worker takes no new
 * tasks until spool_probe() finds the disk writable again. Said once per
 * episode. */
static void set_trouble(struct spool *sp, int e)
{
    sp->trouble_err = e;
    if (sp->trouble > 0)
        return;
    sp->trouble = now_wall();
    sp->st.trouble_events++;
    log_err("spool: cannot write to %s: %s; taking no new tasks until it can (free space or "
            "fix the disk); the results in memory are still delivered",
            sp->dir, strerror(e));
}

/* ---- The index: segments and live results ------------------------------------ */

static struct seg *seg_find(struct spool *sp, unsigned long long id)
{
    size_t lo = 0, hi = sp->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp->segs[mid].id == id)
            return &sp->segs[mid];
        if (sp->segs[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Ids only grow, so appending keeps the table sorted. */
static struct seg *seg_add(struct spool *sp, unsigned long long id, unsigned long long size)
{
    if (sp->nsegs == sp->segcap) {
        sp->segcap = sp->segcap ? sp->segcap * 2 : 8;
        sp->segs = xrealloc(sp->segs, sp->segcap * sizeof(*sp->segs));
    }
    struct seg *g = &sp->segs[sp->nsegs++];
    memset(g, 0, sizeof(*g));
    g->id = id;
    g->size = size;
    sp->st.segments++;
    sp->st.disk_bytes += size;
    return g;
}

static struct seg *seg_current(struct spool *sp)
{
    return sp->curfd >= 0 ? &sp->segs[sp->nsegs - 1] : NULL;
}

static void xack_push(struct seg *g, unsigned long long seq, unsigned long long target)
{
    if (g->nxacks == g->xcap) {
        g->xcap = g->xcap ? g->xcap * 2 : 16;
        g->xacks = xrealloc(g->xacks, g->xcap * sizeof(*g->xacks));
    }
    g->xacks[g->nxacks++] = (struct xack){seq, target};
}

static struct live *live_find(struct spool *sp, unsigned long long seq)
{
    size_t lo = 0, hi = sp->nlive;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp->live[mid].seq == seq)
            return sp->live[mid].dead ? NULL : &sp->live[mid];
        if (sp->live[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Seqs must come in increasing order (the caller guarantees it). */
static void live_push(struct spool *sp, unsigned long long seq, unsigned long long seg,
                      unsigned long long size)
{
    if (sp->nlive == sp->livecap) {
        sp->livecap = sp->livecap ? sp->livecap * 2 : 64;
        sp->live = xrealloc(sp->live, sp->livecap * sizeof(*sp->live));
    }
    sp->live[sp->nlive++] = (struct live){seq, seg, size, 0};
    account(sp, 1, (long long)size);
}

static void live_compact(struct spool *sp)
{
    if (sp->ndead < 32 || sp->ndead * 2 < sp->nlive)
        return;
    size_t k = 0;
    for (size_t i = 0; i < sp->nlive; i++) {
        if (!sp->live[i].dead)
            sp->live[k++] = sp->live[i];
    }
    sp->nlive = k;
    sp->ndead = 0;
}

/* ---- Files ------------------------------------------------------------------- */

static void seg_name(char *buf, size_t len, unsigned long long id)
{
    snprintf(buf, len, "%016llx" SEG_SUFFIX, id);
}

/* The number in "<16 hex digits><suffix>", or 0 when the name is not one. */
static unsigned long long hex_name(const char *name, const char *suffix)
{
    if (strlen(name) != 16 + strlen(suffix) || strcmp(name + 16, suffix) != 0)
        return 0;
    unsigned long long v = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        v = v << 4 | (unsigned long long)d;
    }
    return v;
}

/* Move a file to corrupt/ (never over an earlier one), with a log line. */
static int move_aside(struct spool *sp, const char *name, const char *why)
{
    char *to = xasprintf(CORRUPT_SUBDIR "/%s", name);
    int rc;
    for (int i = 1;; i++) {
        rc = renameat2(sp->dirfd, name, sp->dirfd, to, RENAME_NOREPLACE);
        if (rc < 0 && errno == EINVAL)
            rc = renameat(sp->dirfd, name, sp->dirfd, to); /* no RENAME_NOREPLACE here */
        if (rc == 0 || errno != EEXIST || i == 1000)
            break;
        free(to);
        to = xasprintf(CORRUPT_SUBDIR "/%s.%d", name, i);
    }
    if (rc < 0) {
        log_err("spool: %s/%s is %s and cannot be moved to %s: %s", sp->dir, name, why, sp->corrupt,
                strerror(errno));
    } else {
        log_err("spool: %s/%s is %s: moved to %s/%s", sp->dir, name, why, sp->dir, to);
        sp->st.corrupt++;
    }
    free(to);
    return rc;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static char *read_seg(struct spool *sp, unsigned long long id, size_t *size)
{
    char name[32];
    seg_name(name, sizeof(name), id);
    char *path = xasprintf("%s/%s", sp->dir, name);
    char *buf = read_file(path, FILE_MAX, size);
    int e = errno;
    if (buf == NULL)
        log_err("spool: cannot read %s: %s", path, strerror(e));
    free(path);
    errno = e;
    return buf;
}

/* ---- Appending --------------------------------------------------------------- */

static void seg_retire(struct spool *sp, unsigned long long id);

/* Start a new current segment; its name is durable before any record. */
static int open_segment(struct spool *sp)
{
    char name[32];
    unsigned long long id = sp->next_seg++;
    seg_name(name, sizeof(name), id);
    int fd = openat(sp->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    if (fsync(sp->dirfd) < 0) {
        int e = errno;
        close(fd);
        unlinkat(sp->dirfd, name, 0);
        return -e;
    }
    seg_add(sp, id, 0);
    sp->curfd = fd;
    return 0;
}

/* Stop appending to the current segment (committed or not: the caller
 * decides); it is deleted when nothing in it is live. */
static void close_current(struct spool *sp)
{
    struct seg *g = seg_current(sp);
    if (g == NULL)
        return;
    unsigned long long id = g->id;
    close(sp->curfd);
    sp->curfd = -1;
    sp->dirty = 0;
    seg_retire(sp, id);
}

/* A current segment with room for `need` more bytes (rotating when full). */
static int ensure_current(struct spool *sp, size_t need)
{
    struct seg *g = seg_current(sp);
    if (g != NULL && (g->size == 0 || g->size + need <= SPOOL_SEGMENT_MAX))
        return 0;
    if (g != NULL) {
        spool_commit(sp); /* its results must be durable before its fd goes */
        close_current(sp);
    }
    return sp->curfd >= 0 ? 0 : open_segment(sp);
}

/* Append one record to the current segment; on a failed write the segment
 * is cut back to where it was (or abandoned when that fails too). */
static int append_item(struct spool *sp, const struct spool_item *it)
{
    size_t size;
    unsigned char *buf = spool_encode(it, &size);
    int rc = ensure_current(sp, size);
    if (rc == 0) {
        struct seg *g = seg_current(sp);
        rc = write_all(sp->curfd, buf, size);
        if (rc == 0) {
            g->size += size;
            sp->st.disk_bytes += size;
        } else if (ftruncate(sp->curfd, (off_t)g->size) < 0) {
            spool_commit(sp);
            close_current(sp);
        }
    }
    free(buf);
    return rc;
}

/* Append a result with a new seq; it is live (not durable before a commit). */
static int append_result(struct spool *sp, const char *url, const char *body, size_t len,
                         double created, unsigned long long *seq)
{
    struct spool_item it = {
        SPOOL_ITEM_RESULT, sp->next_seq, created, url, strlen(url), body, len, 0, 0};
    if (it.url_len == 0 || it.url_len > URL_MAX || len == 0 || len > BODY_MAX)
        return -EINVAL;
    int rc = append_item(sp, &it);
    if (rc < 0)
        return rc;
    struct seg *g = seg_current(sp);
    sp->next_seq++;
    g->live++;
    sp->dirty = 1;
    live_push(sp, it.seq, g->id, HDR + it.url_len + len);
    *seq = it.seq;
    return 0;
}

/* Append "done seq" (no fsync: a lost ack only means a second send). */
static void append_ack(struct spool *sp, unsigned long long seq, unsigned long long target)
{
    struct spool_item it = {SPOOL_ITEM_DONE, seq, 0, "", 0, "", 0, 0, 0};
    int rc = sp->curfd >= 0 ? 0 : open_segment(sp);
    if (rc == 0)
        rc = append_item(sp, &it);
    struct seg *g = seg_current(sp);
    if (rc == 0 && g->id != target)
        xack_push(g, seq, target);
    if (rc < 0 && !sp->told_ack_error) {
        sp->told_ack_error = 1;
        log_warn("spool: cannot record a delivery in %s: %s (the result may be sent again "
                 "after a restart; said once)",
                 sp->dir, strerror(-rc));
    }
}

int spool_write(struct spool *sp, struct spool_record *rec)
{
    int rc = append_result(sp, rec->url, rec->body, rec->len, rec->created, &rec->seq);
    if (rc < 0) {
        rec->seq = 0;
        sp->st.write_errors++;
        struct log_ctx ctx = {NULL, rec->task_id, rec->job_id, NULL};
        log_emit(LOG_ERR, &ctx,
                 "spool: cannot write the result to %s: %s; it is kept in memory (and its "
                 "task in the crash journal) until it is delivered or can be written",
                 sp->dir, strerror(-rc));
        if (rc != -EINVAL)
            set_trouble(sp, -rc);
        return rc;
    }
    sp->st.written++;
    return 0;
}

int spool_commit(struct spool *sp)
{
    if (!sp->dirty || sp->curfd < 0)
        return 0;
    sp->dirty = 0;
    if (fdatasync(sp->curfd) == 0) {
        sp->st.commits++;
        return 0;
    }
    int e = errno;
    sp->st.write_errors++;
    log_err("spool: cannot make the results in %s durable: %s; they are kept in memory (and "
            "their tasks in the crash journal) until they are delivered or can be written",
            sp->dir, strerror(e));
    close_current(sp);
    set_trouble(sp, e);
    return -e;
}

int spool_trouble(const struct spool *sp, double *since)
{
    if (since != NULL)
        *since = sp->trouble;
    return sp->trouble > 0 ? sp->trouble_err : 0;
}

/* Write, sync and delete a file of PROBE_SIZE bytes: room for results. */
static int probe_write(struct spool *sp)
{
    static const char zeros[4096];
    int fd = openat(sp->dirfd, PROBE_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    for (size_t done = 0; rc == 0 && done < PROBE_SIZE; done += sizeof(zeros))
        rc = write_all(fd, zeros, sizeof(zeros));
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    unlinkat(sp->dirfd, PROBE_NAME, 0);
    return rc;
}

int spool_probe(struct spool *sp)
{
    if (sp->trouble <= 0)
        return 0;
    int rc = probe_write(sp);
    if (rc < 0) {
        sp->trouble_err = -rc;
        return rc;
    }
    log_notice("spool: %s can be written again (after %.0f s): taking tasks again", sp->dir,
               now_wall() - sp->trouble);
    sp->trouble = 0;
    sp->trouble_err = 0;
    return 0;
}

/* ---- Acknowledging and deleting ---------------------------------------------- */

/*
 * Delete segment id when it is not the current one and nothing in it is
 * live. Its cross acks whose results' segments still exist are appended
 * again first, so that none of them is lost.
 */
static void seg_retire(struct spool *sp, unsigned long long id)
{
    struct seg *g = seg_find(sp, id);
    if (g == NULL || g->live > 0 || g == seg_current(sp))
        return;
    struct xack *x = g->xacks;
    size_t nx = g->nxacks;
    g->xacks = NULL;
    g->nxacks = g->xcap = 0;
    for (size_t i = 0; i < nx; i++) {
        if (x[i].seg != id && seg_find(sp, x[i].seg) != NULL)
            append_ack(sp, x[i].seq, x[i].seg);
    }
    free(x);
    char name[32];
    seg_name(name, sizeof(name), id);
    if (unlinkat(sp->dirfd, name, 0) < 0 && errno != ENOENT) {
        log_warn("spool: cannot remove %s/%s: %s", sp->dir, name, strerror(errno));
        return;
    }
    fsync(sp->dirfd);
    g = seg_find(sp, id); /* append_ack may have grown the table */
    sp->st.segments--;
    sp->st.disk_bytes -= g->size;
    size_t i = (size_t)(g - sp->segs);
    memmove(g, g + 1, (sp->nsegs - i - 1) * sizeof(*g));
    sp->nsegs--;
}

static void ack_live(struct spool *sp, struct live *l)
{
    unsigned long long seq = l->seq, id = l->seg;
    l->dead = 1;
    sp->ndead++;
    account(sp, -1, -(long long)l->size);
    append_ack(sp, seq, id);
    struct seg *g = seg_find(sp, id);
    if (g != NULL && g->live > 0 && --g->live == 0)
        seg_retire(sp, id);
    live_compact(sp);
}

void spool_remove(struct spool *sp, struct spool_record *rec)
{
    struct live *l = rec->seq ? live_find(sp, rec->seq) : NULL;
    rec->seq = 0;
    if (l == NULL)
        return;
    ack_live(sp, l);
    sp->st.removed++;
}

int spool_expire(struct spool *sp, struct spool_record *rec, double now)
{
    if (sp->lim.max_age <= 0 || now - rec->created <= sp->lim.max_age)
        return 0;
    struct log_ctx ctx = {NULL, rec->task_id, rec->job_id, NULL};
    log_emit(LOG_ERR, &ctx,
             "spool: result for %s undelivered for %.0f s (max_age %.0f s): dropped; the "
             "orchestrator's own timeout decides what happens to the task",
             rec->url, now - rec->created, sp->lim.max_age);
    struct live *l = rec->seq ? live_find(sp, rec->seq) : NULL;
    rec->seq = 0;
    if (l != NULL)
        ack_live(sp, l);
    sp->st.expired++;
    return 1;
}

/* A file name from a task id: what is not [A-Za-z0-9._-] becomes '_'. */
static void safe_name(char *out, size_t n, const char *id)
{
    size_t i = 0;
    for (; id[i] != '\0' && i + 1 < n; i++) {
        char c = id[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        out[i] = ok && !(i == 0 && c == '.') ? c : '_';
    }
    out[i] = '\0';
}

/* Write text to dir/name durably (tmp, fsync, rename, directory fsync). */
static int write_durably(const char *dir, const char *name, const char *text)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    char *tmp = xasprintf(".%s.tmp", name);
    int rc = 0, fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        rc = -errno;
    if (rc == 0)
        rc = write_all(fd, text, strlen(text));
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    if (rc == 0 && renameat(dfd, tmp, dfd, name) < 0)
        rc = -errno;
    if (rc == 0 && fsync(dfd) < 0)
        rc = -errno;
    if (rc < 0)
        unlinkat(dfd, tmp, 0);
    free(tmp);
    close(dfd);
    return rc;
}

int spool_set_aside(struct spool *sp, struct spool_record *rec, const char *why)
{
    char id[128], name[200];
    safe_name(id, sizeof(id), rec->task_id);
    snprintf(name, sizeof(name), "%.0f-%s.json", now_wall() * 1000.0, id);
    json_t *result = json_loadb(rec->body, rec->len, 0, NULL);
    json_t *doc =
        json_pack("{s:s, s:f, s:s, s:s, s:s, s:o}", "reason", why, "refused_at", now_wall(),
                  "orchestrator", rec->url, "task_id", rec->task_id, "job_id", rec->job_id,
                  "result", result != NULL ? result : json_stringn(rec->body, rec->len));
    char *text = doc != NULL ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    json_decref(doc);
    int rc = text == NULL ? -EINVAL : mkdir(sp->refused, 0700) < 0 && errno != EEXIST ? -errno : 0;
    if (rc == 0)
        rc = write_durably(sp->refused, name, text);
    free(text);
    struct log_ctx ctx = {NULL, rec->task_id, rec->job_id, NULL};
    if (rc < 0) {
        log_emit(LOG_ERR, &ctx,
                 "spool: the orchestrator %s refused this result (%s) and it cannot be saved in "
                 "%s: %s; it stays in the spool and is sent again after a restart",
                 rec->url, why, sp->refused, strerror(-rc));
        return rc;
    }
    log_emit(LOG_ERR, &ctx,
             "the orchestrator %s refused this result for good (%s): moved to %s/%s; the "
             "orchestrator's own timeout decides what happens to the task",
             rec->url, why, sp->refused, name);
    struct live *l = rec->seq ? live_find(sp, rec->seq) : NULL;
    rec->seq = 0;
    if (l != NULL)
        ack_live(sp, l);
    sp->st.refused++;
    return 0;
}

/* ---- Opening ----------------------------------------------------------------- */

static int make_dir(const char *path, char *err, size_t errlen)
{
    struct stat st;
    int e;
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        e = errno;
        fmt_err(err, errlen, "%s: cannot create: %s", path, strerror(e));
        return -e;
    }
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fmt_err(err, errlen, "%s: not a directory", path);
        return -ENOTDIR;
    }
    if (access(path, R_OK | W_OK | X_OK) < 0) {
        e = errno;
        fmt_err(err, errlen, "%s: not writable: %s", path, strerror(e));
        return -e;
    }
    return 0;
}

static int lock_dir(struct spool *sp, char *err, size_t errlen)
{
    char *path = xasprintf("%s/lock", sp->dir);
    sp->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int rc = 0;
    if (sp->lockfd < 0)
        rc = -errno, fmt_err(err, errlen, "%s: %s", path, strerror(errno));
    else if (flock(sp->lockfd, LOCK_EX | LOCK_NB) < 0)
        rc = -errno, fmt_err(err, errlen,
                             "%s: locked by another avtworkerd using the same state directory "
                             "(give each worker its own state_dir)",
                             path);
    free(path);
    return rc;
}

/* A growing array of numbers. */
struct nums {
    unsigned long long *v;
    size_t n, cap;
};

static void nums_push(struct nums *a, unsigned long long x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    a->v[a->n++] = x;
}

static int cmp_ull(const void *a, const void *b)
{
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

/* Sort the directory into segments and version-1 files; drop stale
 * temporaries and move anything else aside. */
static int scan_dir(struct spool *sp, struct nums *segs, struct nums *v1, char *err, size_t errlen)
{
    DIR *d = opendir(sp->dir);
    if (d == NULL)
        return fmt_err(err, errlen, "%s: %s", sp->dir, strerror(errno)), -errno;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        struct stat st;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, "lock") == 0 ||
            strcmp(name, CORRUPT_SUBDIR) == 0)
            continue;
        if (strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            log_info("spool: removing %s/%s, left by an interrupted write", sp->dir, name);
            unlinkat(sp->dirfd, name, 0);
            continue;
        }
        unsigned long long s = hex_name(name, SEG_SUFFIX), r = hex_name(name, SPOOL_V1_SUFFIX);
        int reg = fstatat(sp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
        if (reg && s > 0)
            nums_push(segs, s);
        else if (reg && r > 0)
            nums_push(v1, r);
        else
            move_aside(sp, name, "not a spool file");
    }
    closedir(d);
    if (segs->n > 1)
        qsort(segs->v, segs->n, sizeof(*segs->v), cmp_ull);
    if (v1->n > 1)
        qsort(v1->v, v1->n, sizeof(*v1->v), cmp_ull);
    return 0;
}

/* What the first pass over the segments found. */
struct meta {
    unsigned long long seq, seg, size;
    int acked;
};

struct scan {
    struct spool *sp;
    unsigned long long seg; /* the segment being parsed */
    int bad_body;           /* it holds a result whose body is not a result */
    struct meta *recs;      /* every intact result */
    size_t nrecs, cap;
    struct xack *acks; /* every ack: seq, and the segment holding the ack */
    size_t nacks, acap;
    unsigned long long max_seq;
    struct nums corrupt;      /* segments to recover and move aside */
    unsigned long unreadable; /* segments left in place unread */
};

static void scan_item(void *arg, const struct spool_item *it)
{
    struct scan *s = arg;
    const char *tid, *jid;
    if (it->seq > s->max_seq)
        s->max_seq = it->seq;
    if (it->kind == SPOOL_ITEM_DONE) {
        if (s->nacks == s->acap) {
            s->acap = s->acap ? s->acap * 2 : 64;
            s->acks = xrealloc(s->acks, s->acap * sizeof(*s->acks));
        }
        s->acks[s->nacks++] = (struct xack){it->seq, s->seg};
        return;
    }
    json_t *j = spool_result_ids(it->body, it->len, &tid, &jid);
    if (j == NULL) {
        s->bad_body = 1;
        return;
    }
    json_decref(j);
    if (s->nrecs == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->recs = xrealloc(s->recs, s->cap * sizeof(*s->recs));
    }
    s->recs[s->nrecs++] = (struct meta){it->seq, s->seg, it->size, 0};
}

static int cmp_meta(const void *a, const void *b)
{
    const struct meta *x = a, *y = b;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return x->seg < y->seg ? -1 : x->seg > y->seg;
}

static struct meta *meta_find(struct scan *s, unsigned long long seq)
{
    struct meta key = {seq, 0, 0, 0};
    size_t lo = 0, hi = s->nrecs;
    while (lo < hi) { /* the first entry with this seq */
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_meta(&s->recs[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nrecs && s->recs[lo].seq == seq ? &s->recs[lo] : NULL;
}

/* The entry of seq that came from segment seg. */
static struct meta *meta_find_in(struct scan *s, unsigned long long seq, unsigned long long seg)
{
    struct meta *m = meta_find(s, seq);
    for (; m != NULL && m < s->recs + s->nrecs && m->seq == seq; m++) {
        if (m->seg == seg)
            return m;
    }
    return NULL;
}

static int is_corrupt(const struct scan *s, unsigned long long id)
{
    return s->corrupt.n > 0 &&
           bsearch(&id, s->corrupt.v, s->corrupt.n, sizeof(id), cmp_ull) != NULL;
}

/* Pass one over a segment: its records into s, its damage logged. */
static void scan_segment(struct scan *s, unsigned long long id)
{
    size_t size = 0, bad = 0;
    char *buf = read_seg(s->sp, id, &size);
    s->seg = id;
    s->bad_body = 0;
    if (buf == NULL && errno != ENOMEM) {
        /* Unreadable is not damaged: left in place, neither indexed nor
         * deleted, so its results are sent by a start that can read it. */
        log_err("spool: %s/%016llx" SEG_SUFFIX " cannot be read (%s): left in place, not "
                "moved; its undelivered results are sent by the first start that can read it "
                "(check the disk, then restart)",
                s->sp->dir, id, strerror(errno));
        s->sp->st.unreadable_segments++;
        s->unreadable++;
        return;
    }
    int rc = buf ? spool_parse_segment(buf, size, scan_item, s, &bad) : SPOOL_PARSE_CORRUPT;
    free(buf);
    if (rc == SPOOL_PARSE_TORN) {
        log_warn("spool: %s/%016llx" SEG_SUFFIX ": a record cut short at byte %zu (a crash "
                 "during a write; that result was never sent): ignored",
                 s->sp->dir, id, bad);
        s->sp->st.torn++;
    }
    if (rc == SPOOL_PARSE_CORRUPT || s->bad_body)
        nums_push(&s->corrupt, id); /* ids come in order: stays sorted */
    else
        seg_add(s->sp, id, size);
}

/*
 * Match every ack to its result. An ack in a healthy segment for a result
 * of another healthy segment becomes a cross ack of its segment; one in a
 * corrupt segment is appended again (that segment goes).
 */
static void match_acks(struct scan *s, struct nums *reack)
{
    if (s->nrecs > 1)
        qsort(s->recs, s->nrecs, sizeof(*s->recs), cmp_meta);
    for (size_t i = 0; i < s->nacks; i++) {
        struct meta *m = meta_find(s, s->acks[i].seq);
        for (; m != NULL && m < s->recs + s->nrecs && m->seq == s->acks[i].seq; m++) {
            m->acked = 1;
            if (m->seg == s->acks[i].seg || is_corrupt(s, m->seg))
                continue;
            struct seg *g = seg_find(s->sp, s->acks[i].seg);
            if (g != NULL)
                xack_push(g, m->seq, m->seg);
            else
                nums_push(reack, m->seq);
        }
    }
}

/* The live index from the healthy segments' unacknowledged results (a
 * duplicated seq, which only a foreign write can make, counts once). */
static void build_live(struct scan *s)
{
    struct spool *sp = s->sp;
    for (size_t i = 0; i < s->nrecs; i++) {
        struct meta *m = &s->recs[i];
        if (m->acked || is_corrupt(s, m->seg) ||
            (sp->nlive > 0 && sp->live[sp->nlive - 1].seq == m->seq))
            continue;
        struct seg *g = seg_find(sp, m->seg);
        g->live++;
        live_push(sp, m->seq, m->seg, m->size);
    }
}

/* Pass two over a corrupt segment: its unacknowledged results again. */
struct recover {
    struct scan *s;
    unsigned long long seg;
    unsigned long n;
};

static void recover_item(void *arg, const struct spool_item *it)
{
    struct recover *r = arg;
    const char *tid, *jid;
    if (it->kind != SPOOL_ITEM_RESULT)
        return;
    struct meta *m = meta_find_in(r->s, it->seq, r->seg);
    json_t *j = spool_result_ids(it->body, it->len, &tid, &jid);
    char *url = xstrndup(it->url, it->url_len);
    unsigned long long seq;
    if (j != NULL && m != NULL && !m->acked &&
        append_result(r->s->sp, url, it->body, it->len, it->created, &seq) == 0)
        r->n++;
    free(url);
    json_decref(j);
}

static void recover_segment(struct scan *s, unsigned long long id)
{
    size_t size = 0;
    char *buf = read_seg(s->sp, id, &size);
    struct recover r = {s, id, 0};
    if (buf != NULL)
        spool_parse_segment(buf, size, recover_item, &r, NULL);
    free(buf);
    if (r.n > 0)
        log_notice("spool: %lu undelivered result(s) recovered from the damaged segment "
                   "%016llx" SEG_SUFFIX,
                   r.n, id);
}

/* ---- The version-1 format: migrated at open ------------------------------------ */

/* A version-1 file as a record, or NULL with why set. */
static struct spool_record *v1_record(const char *buf, size_t size, const char **why)
{
    struct spool_v1_file f;
    const char *tid, *jid;
    if (spool_v1_parse(buf, size, &f, why) < 0)
        return NULL;
    *why = "damaged (checksum mismatch)";
    if (spool_crc32(f.body, f.len) != f.crc)
        return NULL;
    json_t *j = spool_result_ids(f.body, f.len, &tid, &jid);
    *why = "not a result body";
    if (j == NULL)
        return NULL;
    struct spool_record *rec = spool_record_new(f.url, tid, jid, f.body, f.len);
    rec->created = f.created;
    json_decref(j);
    return rec;
}

/* Append one version-1 file as a record; 1 when it is to be unlinked. */
static int migrate_one(struct spool *sp, const char *name)
{
    char *path = xasprintf("%s/%s", sp->dir, name);
    size_t size = 0;
    char *buf = read_file(path, FILE_MAX, &size);
    free(path);
    const char *why = errno == EFBIG ? "too large" : "unreadable";
    struct spool_record *rec = buf ? v1_record(buf, size, &why) : NULL;
    free(buf);
    if (rec == NULL) {
        move_aside(sp, name, why);
        return 0;
    }
    int rc = spool_write(sp, rec);
    spool_record_free(rec);
    return rc == 0;
}

/*
 * Take over the results of the previous format, oldest first: appended,
 * committed, then the old files unlinked. If the commit fails the files
 * stay (the next start migrates them again; a result may then be sent
 * twice, which the orchestrator answers "ignored").
 */
static void migrate_v1(struct spool *sp, const struct nums *v1)
{
    char name[32];
    struct nums done = {0};
    for (size_t i = 0; i < v1->n; i++) {
        snprintf(name, sizeof(name), "%016llx" SPOOL_V1_SUFFIX, v1->v[i]);
        if (migrate_one(sp, name))
            nums_push(&done, v1->v[i]);
    }
    if (done.n > 0 && spool_commit(sp) == 0) {
        for (size_t i = 0; i < done.n; i++) {
            snprintf(name, sizeof(name), "%016llx" SPOOL_V1_SUFFIX, done.v[i]);
            unlinkat(sp->dirfd, name, 0);
        }
        fsync(sp->dirfd);
        sp->st.migrated += done.n;
        log_notice("spool: %zu result(s) migrated from the version-1 format (one file per "
                   "result) to segments",
                   done.n);
    }
    free(done.v);
}

/* ---- Loading at open ---------------------------------------------------------- */

/*
 * Build the index from the segments: pass one collects every record, the
 * acks are matched, the live results indexed. Then the corrupt segments'
 * unacknowledged results are appended again and committed, and the corrupt
 * segments moved aside; finally segments without live results are deleted.
 */
static void load_segments(struct spool *sp, const struct nums *ids)
{
    struct scan s = {.sp = sp};
    struct nums reack = {0};
    for (size_t i = 0; i < ids->n; i++)
        scan_segment(&s, ids->v[i]);
    if (ids->n > 0)
        sp->next_seg = ids->v[ids->n - 1] + 1;
    /* Past every seq an unreadable segment can hold (each record takes at
     * least HDR bytes), so that none is reused. */
    sp->next_seq = s.max_seq + 1 + s.unreadable * (SPOOL_SEGMENT_MAX / HDR + 2);
    match_acks(&s, &reack);
    build_live(&s);
    for (size_t i = 0; i < s.corrupt.n; i++)
        recover_segment(&s, s.corrupt.v[i]);
    for (size_t i = 0; i < reack.n; i++) {
        struct meta *m = meta_find(&s, reack.v[i]);
        append_ack(sp, reack.v[i], m->seg);
    }
    spool_commit(sp);
    for (size_t i = 0; i < s.corrupt.n; i++) {
        char name[32];
        seg_name(name, sizeof(name), s.corrupt.v[i]);
        if (move_aside(sp, name, "damaged (its intact undelivered results were kept)") == 0)
            sp->st.corrupt_segments++;
    }
    if (s.corrupt.n > 0)
        fsync(sp->dirfd);
    free(s.recs);
    free(s.acks);
    free(s.corrupt.v);
    free(reack.v);
}

/* Delete the segments (none is current yet) that hold no live result. */
static void retire_empty(struct spool *sp)
{
    struct nums ids = {0};
    for (size_t i = 0; i < sp->nsegs; i++) {
        if (sp->segs[i].live == 0)
            nums_push(&ids, sp->segs[i].id);
    }
    for (size_t i = 0; i < ids.n; i++)
        seg_retire(sp, ids.v[i]);
    free(ids.v);
}

static int load_dir(struct spool *sp, char *err, size_t errlen)
{
    struct nums segs = {0}, v1 = {0};
    int rc = scan_dir(sp, &segs, &v1, err, errlen);
    if (rc == 0) {
        load_segments(sp, &segs);
        migrate_v1(sp, &v1);
        retire_empty(sp);
    }
    free(segs.v);
    free(v1.v);
    return rc;
}

int spool_open(const char *state_dir, const struct spool_limits *lim, struct spool **out, char *err,
               size_t errlen)
{
    *out = NULL;
    int rc = make_dir(state_dir, err, errlen);
    if (rc < 0)
        return rc;
    struct spool *sp = xcalloc(1, sizeof(*sp));
    sp->dirfd = sp->lockfd = sp->curfd = -1;
    sp->lim = *lim;
    sp->next_seq = sp->next_seg = 1;
    sp->dir = xasprintf("%s/" SPOOL_SUBDIR, state_dir);
    sp->corrupt = xasprintf("%s/" CORRUPT_SUBDIR, sp->dir);
    sp->refused = xasprintf("%s/" REFUSED_SUBDIR, state_dir);
    rc = make_dir(sp->dir, err, errlen);
    if (rc == 0)
        rc = make_dir(sp->corrupt, err, errlen);
    if (rc == 0)
        rc = lock_dir(sp, err, errlen);
    if (rc == 0 && (sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        rc = -errno, fmt_err(err, errlen, "%s: %s", sp->dir, strerror(errno));
    if (rc == 0)
        rc = load_dir(sp, err, errlen);
    if (rc < 0) {
        spool_close(sp);
        return rc;
    }
    *out = sp;
    return 0;
}

void spool_close(struct spool *sp)
{
    if (sp == NULL)
        return;
    spool_commit(sp);
    if (sp->curfd >= 0)
        close(sp->curfd);
    if (sp->dirfd >= 0)
        close(sp->dirfd);
    if (sp->lockfd >= 0)
        close(sp->lockfd); /* releases the lock */
    for (size_t i = 0; i < sp->nsegs; i++)
        free(sp->segs[i].xacks);
    free(sp->segs);
    free(sp->live);
    free(sp->dir);
    free(sp->corrupt);
    free(sp->refused);
    free(sp);
}

/* ---- Records ----------------------------------------------------------------- */

struct spool_record *spool_record_new(const char *url, const char *task_id, const char *job_id,
                                      const char *body, size_t len)
{
    struct spool_record *rec = xcalloc(1, sizeof(*rec));
    rec->url = xstrdup(url);
    rec->task_id = xstrdup(task_id);
    rec->job_id = xstrdup(job_id);
    rec->body = xstrndup(body, len);
    rec->len = len;
    rec->created = now_wall();
    return rec;
}

void spool_record_free(struct spool_record *rec)
{
    if (rec == NULL)
        return;
    free(rec->url);
    free(rec->task_id);
    free(rec->job_id);
    free(rec->body);
    free(rec);
}

/* ---- Loading for a client ------------------------------------------------------ */

struct load {
    struct spool *sp;
    unsigned long long seg;
    const char *url;
    struct spool_record **recs;
    size_t n, cap;
};

static void load_item(void *arg, const struct spool_item *it)
{
    struct load *ld = arg;
    const char *tid, *jid;
    struct live *l = it->kind == SPOOL_ITEM_RESULT ? live_find(ld->sp, it->seq) : NULL;
    if (l == NULL || l->seg != ld->seg)
        return;
    if (ld->url != NULL &&
        (strlen(ld->url) != it->url_len || memcmp(ld->url, it->url, it->url_len) != 0)) {
        ld->sp->st.other_orchestrator++;
        return;
    }
    json_t *j = spool_result_ids(it->body, it->len, &tid, &jid);
    if (j == NULL)
        return;
    char *url = xstrndup(it->url, it->url_len);
    struct spool_record *rec = spool_record_new(url, tid, jid, it->body, it->len);
    rec->seq = it->seq;
    rec->created = it->created;
    free(url);
    json_decref(j);
    if (ld->n == ld->cap) {
        ld->cap = ld->cap ? ld->cap * 2 : 16;
        ld->recs = xrealloc(ld->recs, ld->cap * sizeof(*ld->recs));
    }
    ld->recs[ld->n++] = rec;
}

static int cmp_rec(const void *a, const void *b)
{
    const struct spool_record *x = *(struct spool_record *const *)a;
    const struct spool_record *y = *(struct spool_record *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int spool_load(struct spool *sp, const char *url, struct spool_record ***out, size_t *n)
{
    struct load ld = {.sp = sp, .url = url};
    for (size_t i = 0; i < sp->nsegs; i++) {
        size_t size = 0;
        char *buf = sp->segs[i].live > 0 ? read_seg(sp, sp->segs[i].id, &size) : NULL;
        ld.seg = sp->segs[i].id;
        if (buf != NULL &&
            spool_parse_segment(buf, size, load_item, &ld, NULL) == SPOOL_PARSE_CORRUPT)
            log_err("spool: %s/%016llx" SEG_SUFFIX " was damaged after the start; its intact "
                    "results were loaded",
                    sp->dir, ld.seg);
        free(buf);
    }
    if (ld.n > 1)
        qsort(ld.recs, ld.n, sizeof(*ld.recs), cmp_rec);
    double now = now_wall();
    size_t k = 0;
    for (size_t i = 0; i < ld.n; i++) {
        if (spool_expire(sp, ld.recs[i], now))
            spool_record_free(ld.recs[i]);
        else
            ld.recs[k++] = ld.recs[i];
    }
    *out = ld.recs ? ld.recs : xcalloc(1, sizeof(*ld.recs));
    *n = k;
    return 0;
}

int spool_is_full(const struct spool *sp)
{
    return sp->st.full;
}

void spool_get_stats(const struct spool *sp, struct spool_stats *st)
{
    *st = sp->st;
}
