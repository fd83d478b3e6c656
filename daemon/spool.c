/*
 * spool.c - the durable result outbox (spool.h has the file format and the
 * rules). This module only moves bytes between memory and STATE_DIR/spool;
 * what is sent when, and what counts as delivered, is orch.c's business.
 *
 * Durability: a record is written to "tmp.<seq>" (O_EXCL), fsynced, renamed
 * to "<seq>.res" and the directory fsynced, so that after a crash or a power
 * loss the file is either absent (the result was never sent: the crash
 * journal reports the task) or complete. Removal after a 200 is a plain
 * unlink without fsync: if it is lost in a power failure the result is sent
 * once more, which the orchestrator answers "ignored" (the at-least-once
 * half of the guarantee, README "Delivery guarantee").
 *
 * The spool keeps only counters in memory (files, bytes); the records
 * themselves are held by the caller.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "util.h"

#define SPOOL_MAGIC "AVTSPOOL"
#define SPOOL_SUBDIR "spool"
#define CORRUPT_SUBDIR "corrupt"
#define SUFFIX ".res"
#define TMP_PREFIX "tmp."
#define HEADER_MAX 4096
#define FILE_MAX (512UL << 20) /* a larger file is not one of ours */

struct spool {
    char *dir;     /* STATE_DIR/spool */
    char *corrupt; /* STATE_DIR/spool/corrupt */
    int dirfd;
    int lockfd;
    struct spool_limits lim;
    unsigned long long next_seq;
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

unsigned long spool_crc32(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint32_t c = 0xFFFFFFFFu;
    pthread_once(&crc_once, crc_init);
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
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
        log_err("spool full (%lu files, %llu bytes; limits max_files=%ld max_bytes=%llu): "
                "asking the orchestrator for no new tasks until results are delivered",
                sp->st.files, sp->st.bytes, sp->lim.max_files, sp->lim.max_bytes);
    } else {
        log_notice("spool below its limits again (%lu files, %llu bytes): taking tasks again",
                   sp->st.files, sp->st.bytes);
    }
}

static void account(struct spool *sp, long files, long long bytes)
{
    sp->st.files = (unsigned long)((long)sp->st.files + files);
    sp->st.bytes = (unsigned long long)((long long)sp->st.bytes + bytes);
    update_full(sp);
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

/* The sequence number of "<16 hex>.res", or 0 when the name is not one. */
static unsigned long long seq_of(const char *name)
{
    size_t n = strlen(name);
    if (n != 16 + strlen(SUFFIX) || strcmp(name + 16, SUFFIX) != 0)
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

static void move_aside(struct spool *sp, const char *name, const char *why)
{
    char *to = xasprintf("%s/%s", sp->corrupt, name);
    if (renameat(sp->dirfd, name, sp->dirfd, to) < 0) {
        log_err("spool: %s/%s is %s and cannot be moved to %s: %s", sp->dir, name, why,
                sp->corrupt, strerror(errno));
    } else {
        log_err("spool: %s/%s is %s: moved to %s", sp->dir, name, why, sp->corrupt);
        sp->st.corrupt++;
    }
    free(to);
}

/* Count the files, find the next sequence number, drop stale temporaries
 * and move foreign files aside. */
static int scan(struct spool *sp, char *err, size_t errlen)
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
        unsigned long long seq = seq_of(name);
        if (seq == 0 || fstatat(sp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(st.st_mode)) {
            move_aside(sp, name, "not a spool file");
            continue;
        }
        if (seq >= sp->next_seq)
            sp->next_seq = seq + 1;
        sp->st.files++;
        sp->st.bytes += (unsigned long long)st.st_size;
    }
    closedir(d);
    return 0;
}

int spool_open(const char *state_dir, const struct spool_limits *lim, struct spool **out,
               char *err, size_t errlen)
{
    *out = NULL;
    int rc = make_dir(state_dir, err, errlen);
    if (rc < 0)
        return rc;
    struct spool *sp = xcalloc(1, sizeof(*sp));
    sp->dirfd = sp->lockfd = -1;
    sp->lim = *lim;
    sp->next_seq = 1;
    sp->dir = xasprintf("%s/" SPOOL_SUBDIR, state_dir);
    sp->corrupt = xasprintf("%s/" CORRUPT_SUBDIR, sp->dir);
    rc = make_dir(sp->dir, err, errlen);
    if (rc == 0)
        rc = make_dir(sp->corrupt, err, errlen);
    if (rc == 0)
        rc = lock_dir(sp, err, errlen);
    if (rc == 0 && (sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        rc = -errno, fmt_err(err, errlen, "%s: %s", sp->dir, strerror(errno));
    if (rc == 0)
        rc = scan(sp, err, errlen);
    if (rc < 0) {
        spool_close(sp);
        return rc;
    }
    sp->st.full = 0;
    update_full(sp);
    *out = sp;
    return 0;
}

void spool_close(struct spool *sp)
{
    if (sp == NULL)
        return;
    if (sp->dirfd >= 0)
        close(sp->dirfd);
    if (sp->lockfd >= 0)
        close(sp->lockfd); /* releases the lock */
    free(sp->dir);
    free(sp->corrupt);
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

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Header and body into a new temporary file, fsynced. */
static int write_tmp(struct spool *sp, const char *tmp, const struct spool_record *rec,
                     size_t *size)
{
    char hdr[HEADER_MAX];
    int hl = snprintf(hdr, sizeof(hdr), SPOOL_MAGIC " %d %zu %08lx %.3f %s\n", SPOOL_VERSION,
                      rec->len, spool_crc32(rec->body, rec->len), rec->created, rec->url);
    if (hl < 0 || (size_t)hl >= sizeof(hdr))
        return -ENAMETOOLONG;
    int fd = openat(sp->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, hdr, (size_t)hl);
    if (rc == 0)
        rc = write_all(fd, rec->body, rec->len);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    *size = (size_t)hl + rec->len;
    return rc;
}

int spool_write(struct spool *sp, struct spool_record *rec)
{
    char tmp[64], name[64];
    unsigned long long seq = sp->next_seq++;
    size_t size = 0;
    snprintf(tmp, sizeof(tmp), TMP_PREFIX "%016llx", seq);
    snprintf(name, sizeof(name), "%016llx" SUFFIX, seq);
    int rc = write_tmp(sp, tmp, rec, &size);
    if (rc == 0 && renameat(sp->dirfd, tmp, sp->dirfd, name) < 0)
        rc = -errno;
    if (rc == 0 && fsync(sp->dirfd) < 0)
        rc = -errno;
    if (rc < 0) {
        unlinkat(sp->dirfd, tmp, 0);
        sp->st.write_errors++;
        struct log_ctx ctx = {NULL, rec->task_id, rec->job_id, NULL};
        log_emit(LOG_ERR, &ctx,
                 "spool: cannot write the result to %s: %s; it is kept in memory only and "
                 "is lost if the worker stops before it is delivered",
                 sp->dir, strerror(-rc));
        return rc;
    }
    rec->seq = seq;
    sp->st.written++;
    account(sp, 1, (long long)size);
    return 0;
}

/* Unlink a record's file and uncount it. */
static void unlink_record(struct spool *sp, struct spool_record *rec)
{
    char name[64];
    struct stat st;
    if (rec->seq == 0)
        return;
    snprintf(name, sizeof(name), "%016llx" SUFFIX, rec->seq);
    long long size = fstatat(sp->dirfd, name, &st, 0) == 0 ? (long long)st.st_size : 0;
    if (unlinkat(sp->dirfd, name, 0) < 0) {
        log_warn("spool: cannot remove %s/%s: %s", sp->dir, name, strerror(errno));
    } else {
        account(sp, -1, -size);
    }
    rec->seq = 0;
}

void spool_remove(struct spool *sp, struct spool_record *rec)
{
    if (rec->seq == 0)
        return;
    unlink_record(sp, rec);
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
    unlink_record(sp, rec);
    sp->st.expired++;
    return 1;
}

/* ---- Loading ----------------------------------------------------------------- */

/* Parse one file's bytes; returns the record, or NULL with why set. */
static struct spool_record *parse_file(const char *buf, size_t size, const char **why)
{
    const char *nl = memchr(buf, '\n', size < HEADER_MAX ? size : HEADER_MAX);
    char url[HEADER_MAX];
    int version, used = 0;
    size_t len;
    unsigned long crc;
    double created;
    *why = "truncated or not a spool file";
    if (nl == NULL || strncmp(buf, SPOOL_MAGIC " ", strlen(SPOOL_MAGIC) + 1) != 0)
        return NULL;
    char *hdr = xstrndup(buf, (size_t)(nl - buf));
    int n = sscanf(hdr, SPOOL_MAGIC " %d %zu %lx %lf %4095s%n", &version, &len, &crc, &created,
                   url, &used);
    int hdr_ok = n == 5 && (size_t)used == strlen(hdr);
    free(hdr);
    if (hdr_ok && version != SPOOL_VERSION)
        *why = "of another spool version";
    if (!hdr_ok || version != SPOOL_VERSION)
        return NULL;
    const char *body = nl + 1;
    if ((size_t)(buf + size - body) != len)
        return NULL;
    *why = "damaged (checksum mismatch)";
    if (spool_crc32(body, len) != crc)
        return NULL;
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *tid = json_string_value(json_object_get(j, "task_id"));
    const char *jid = json_string_value(json_object_get(j, "job_id"));
    struct spool_record *rec = NULL;
    *why = "not a result body";
    if (tid != NULL && jid != NULL) {
        rec = spool_record_new(url, tid, jid, body, len);
        rec->created = created;
    }
    json_decref(j);
    return rec;
}

static struct spool_record *load_one(struct spool *sp, const char *name, unsigned long long seq)
{
    char *path = xasprintf("%s/%s", sp->dir, name);
    size_t size = 0;
    char *buf = read_file(path, FILE_MAX, &size);
    free(path);
    if (buf == NULL) {
        move_aside(sp, name, errno == EFBIG ? "too large" : "unreadable");
        return NULL;
    }
    const char *why = NULL;
    struct spool_record *rec = parse_file(buf, size, &why);
    free(buf);
    if (rec == NULL) {
        struct stat st;
        long long sz = fstatat(sp->dirfd, name, &st, 0) == 0 ? (long long)st.st_size : 0;
        move_aside(sp, name, why);
        account(sp, -1, -sz);
        return NULL;
    }
    rec->seq = seq;
    return rec;
}

static int cmp_seq(const void *a, const void *b)
{
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

/* The sequence numbers of the files on disk, sorted. */
static int list_seqs(struct spool *sp, unsigned long long **out, size_t *n)
{
    DIR *d = opendir(sp->dir);
    size_t cap = 16;
    *n = 0;
    *out = NULL;
    if (d == NULL)
        return -errno;
    unsigned long long *seqs = xmalloc(cap * sizeof(*seqs));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long seq = seq_of(de->d_name);
        if (seq == 0)
            continue;
        if (*n == cap)
            seqs = xrealloc(seqs, (cap *= 2) * sizeof(*seqs));
        seqs[(*n)++] = seq;
    }
    closedir(d);
    qsort(seqs, *n, sizeof(*seqs), cmp_seq);
    *out = seqs;
    return 0;
}

int spool_load(struct spool *sp, const char *url, struct spool_record ***out, size_t *n)
{
    unsigned long long *seqs;
    size_t nseq, count = 0;
    *out = NULL;
    *n = 0;
    int rc = list_seqs(sp, &seqs, &nseq);
    if (rc < 0)
        return rc;
    struct spool_record **recs = xcalloc(nseq + 1, sizeof(*recs));
    double now = now_wall();
    for (size_t i = 0; i < nseq; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%016llx" SUFFIX, seqs[i]);
        struct spool_record *rec = load_one(sp, name, seqs[i]);
        if (rec == NULL)
            continue;
        if (url != NULL && strcmp(rec->url, url) != 0) {
            sp->st.other_orchestrator++;
            spool_record_free(rec);
        } else if (spool_expire(sp, rec, now)) {
            spool_record_free(rec);
        } else {
            recs[count++] = rec;
        }
    }
    free(seqs);
    *out = recs;
    *n = count;
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
