/*
 * journal.c - the crash journal (journal.h has the records and the rules).
 *
 * Where "started" is recorded. A handler crashes on a worker thread, so
 * the record that tells which handler was running when the process died
 * must be written by that thread, just before it calls the handler: the
 * loop thread cannot know when a task that waits for its type's limit
 * actually starts, and blaming every task the worker held would fail
 * innocent tasks permanently in a crash loop. The loop thread records
 * "accepted" (before pool_submit, so a task waiting in the pool is also
 * reported after a crash) and "ended" once the outbox says the result is
 * settled: durable in the spool (after the fdatasync that covers it, so
 * that even after a power cut a task is reported by the spool or by the
 * journal), or delivered when it could not be written. A result is thus
 * always either spooled or reported by the journal. A task given up on
 * (deadline, drain) ends the same way when its failure is settled: the
 * next start does not report it again, nor count it as a crash.
 *
 * Cost. Every record is one write(2) of a short line to an O_APPEND file,
 * without fsync: measured on this project's CI machine (ext4), three
 * appended lines per task cost about 1.5 us, an fdatasync per record about
 * 190 us (twice per task ~ 390 us, which would cap a busy worker near 2500
 * tasks/s on the loop thread alone), and a file per task (create + unlink)
 * about 32 us. The journal protects against the process dying (a crash, an
 * OOM kill, kill -9), and for that the page cache is enough: it survives
 * the process. After a power loss the journal may miss the last records;
 * then the orchestrator's task timeout covers those tasks, as it would
 * without a journal. The spool, which holds results, does fsync.
 *
 * Concurrency. `mu` guards the fd and the entries' `started` flags (worker
 * threads write "S" records); the loop thread holds it while it writes too,
 * so that a compaction (rewriting the log with the open entries, when it has
 * grown past COMPACT_AT) never races an append. Nothing else is locked
 * while `mu` is held.
 */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "avt_plugin.h"
#include "log.h"
#include "task.h"
#include "util.h"

#define LOG_NAME "running.log"
#define CRASHES_NAME "crashes"
#define COMPACT_AT (1 << 20)
#define JOURNAL_FILE_MAX (64UL << 20)

struct jentry {
    const struct task *t; /* identity only, NULL once it returned; never dereferenced */
    unsigned long long seq;
    char *type;
    char *line; /* the "accepted" record, for compaction */
    int started;
};

struct crash {
    char *type;
    int count;
};

#define POISONED_MAX 256

struct journal {
    pthread_mutex_t mu;
    char *dir;
    int fd;
    off_t size; /* guarded by mu */
    unsigned long long next_seq;
    struct jentry *entries; /* guarded by mu */
    size_t nentries, cap;
    struct crash *crashes; /* loop thread only */
    size_t ncrashes;
    int crash_limit;
    /* Task ids failed permanently for crashing the worker (loop thread
     * only): a copy the orchestrator delivers again (its timeout watcher
     * re-dispatches) is answered without running it. Bounded. */
    char *poisoned[POISONED_MAX];
    size_t npoisoned;
};

/* ---- Crash counts ------------------------------------------------------------- */

static struct crash *crash_find(const struct journal *j, const char *type)
{
    for (size_t i = 0; i < j->ncrashes; i++) {
        if (strcmp(j->crashes[i].type, type) == 0)
            return &j->crashes[i];
    }
    return NULL;
}

static struct crash *crash_get(struct journal *j, const char *type)
{
    struct crash *c = crash_find(j, type);
    if (c != NULL)
        return c;
    j->crashes = xrealloc(j->crashes, (j->ncrashes + 1) * sizeof(*j->crashes));
    j->crashes[j->ncrashes] = (struct crash){xstrdup(type), 0};
    return &j->crashes[j->ncrashes++];
}

static void crashes_load(struct journal *j)
{
    char *path = xasprintf("%s/" CRASHES_NAME, j->dir);
    char *buf = read_file(path, JOURNAL_FILE_MAX, NULL);
    free(path);
    for (char *line = buf, *next; line != NULL && *line; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        char *sp = strchr(line, ' ');
        long n = sp != NULL ? strtol(line, NULL, 10) : 0;
        if (n > 0 && n < 1000000 && sp[1] != '\0')
            crash_get(j, sp + 1)->count = (int)n;
    }
    free(buf);
}

/* Rewrite the crashes file atomically (tmp + rename). */
static void crashes_save(struct journal *j)
{
    char *path = xasprintf("%s/" CRASHES_NAME, j->dir);
    char *tmp = xasprintf("%s.tmp", path);
    FILE *fp = fopen(tmp, "we");
    if (fp != NULL) {
        for (size_t i = 0; i < j->ncrashes; i++) {
            if (j->crashes[i].count > 0)
                fprintf(fp, "%d %s\n", j->crashes[i].count, j->crashes[i].type);
        }
    }
    if (fp == NULL || fclose(fp) != 0 || rename(tmp, path) < 0)
        log_err("journal: cannot save %s: %s", path, strerror(errno));
    free(tmp);
    free(path);
}

int journal_crash_count(const struct journal *j, const char *type)
{
    const struct crash *c = crash_find(j, type);
    return c != NULL ? c->count : 0;
}

/* ---- Reading the previous run ------------------------------------------------- */

static struct journal_lost *lost_find(struct journal_lost *lost, size_t n, unsigned long long seq,
                                      const unsigned long long *seqs)
{
    for (size_t i = 0; i < n; i++) {
        if (seqs[i] == seq)
            return &lost[i];
    }
    return NULL;
}

/* Apply one record to the set of open entries (lost/seqs, *n of them). */
static void replay_line(const char *line, struct journal_lost **lost, unsigned long long **seqs,
                        size_t *n, unsigned long long *maxseq)
{
    unsigned long long seq;
    if ((line[0] == 'S' || line[0] == 'E') && sscanf(line + 1, " %llu", &seq) == 1) {
        struct journal_lost *l = lost_find(*lost, *n, seq, *seqs);
        if (l != NULL && line[0] == 'S')
            l->started = 1;
        if (l != NULL && line[0] == 'E') {
            size_t i = (size_t)(l - *lost);
            free(l->url), free(l->type), free(l->task_id), free(l->job_id);
            (*lost)[i] = (*lost)[*n - 1];
            (*seqs)[i] = (*seqs)[*n - 1];
            (*n)--;
        }
        return;
    }
    json_t *r = json_loads(line, 0, NULL);
    const char *u = json_string_value(json_object_get(r, "u"));
    const char *t = json_string_value(json_object_get(r, "t"));
    const char *id = json_string_value(json_object_get(r, "i"));
    const char *jid = json_string_value(json_object_get(r, "j"));
    json_t *a = json_object_get(r, "a");
    if (u != NULL && t != NULL && id != NULL && jid != NULL && json_is_integer(a)) {
        *lost = xrealloc(*lost, (*n + 1) * sizeof(**lost));
        *seqs = xrealloc(*seqs, (*n + 1) * sizeof(**seqs));
        (*lost)[*n] =
            (struct journal_lost){xstrdup(u), xstrdup(t), xstrdup(id), xstrdup(jid), 0, NULL, NULL};
        (*seqs)[(*n)++] = (unsigned long long)json_integer_value(a);
        if ((unsigned long long)json_integer_value(a) > *maxseq)
            *maxseq = (unsigned long long)json_integer_value(a);
    } else {
        log_warn("journal: ignoring a damaged record (%.80s)", line);
    }
    json_decref(r);
}

/* The entries the previous run left open. A last line without its newline
 * was being written when the process died and is ignored. */
static void read_log(struct journal *j, struct journal_lost **lost, size_t *n)
{
    char *path = xasprintf("%s/" LOG_NAME, j->dir);
    size_t len = 0;
    char *buf = read_file(path, JOURNAL_FILE_MAX, &len);
    unsigned long long *seqs = NULL, maxseq = 0;
    if (buf == NULL && errno != ENOENT)
        log_err("journal: cannot read %s: %s; tasks of a crash cannot be reported", path,
                strerror(errno));
    free(path);
    for (char *line = buf, *nl;
         line != NULL && (nl = memchr(line, '\n', len - (size_t)(line - buf))); line = nl + 1) {
        *nl = '\0';
        if (*line != '\0')
            replay_line(line, lost, &seqs, n, &maxseq);
    }
    j->next_seq = maxseq + 1;
    free(seqs);
    free(buf);
}

static void poison(struct journal *j, const char *task_id)
{
    if (j->npoisoned == POISONED_MAX) {
        free(j->poisoned[0]);
        memmove(j->poisoned, j->poisoned + 1, (POISONED_MAX - 1) * sizeof(char *));
        j->npoisoned--;
    }
    j->poisoned[j->npoisoned++] = xstrdup(task_id);
}

int journal_is_poisoned(const struct journal *j, const char *task_id)
{
    for (size_t i = 0; j != NULL && i < j->npoisoned; i++) {
        if (strcmp(j->poisoned[i], task_id) == 0)
            return 1;
    }
    return 0;
}

/* Raise the crash count of every type that was running, then decide each
 * lost task's failure. */
static void judge(struct journal *j, struct journal_lost *lost, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t k = 0; k < i; k++)
            seen |= lost[k].started && strcmp(lost[k].type, lost[i].type) == 0;
        if (lost[i].started && !seen)
            crash_get(j, lost[i].type)->count++;
    }
    for (size_t i = 0; i < n; i++) {
        struct journal_lost *l = &lost[i];
        int count = journal_crash_count(j, l->type);
        struct log_ctx ctx = {NULL, l->task_id, l->job_id, l->type};
        if (l->started && count >= j->crash_limit) {
            l->code = AVT_PERMANENT_ERROR;
            l->message = xstrdup("worker crashed in handler");
            poison(j, l->task_id);
            log_emit(LOG_CRIT, &ctx,
                     "task type %s was running when the worker died %d times in a row "
                     "(crash_limit %d): failing this task permanently so that it cannot "
                     "crash-loop the service; fix or remove the plugin",
                     l->type, count, j->crash_limit);
        } else {
            l->code = AVT_TRANSIENT_ERROR;
            l->message = xstrdup(l->started ? "worker crashed while running this task"
                                            : "worker crashed before this task started");
            log_emit(LOG_ERR, &ctx, "the previous run died with this task (%s): reporting %s",
                     l->started ? "running" : "waiting", l->code);
        }
    }
    if (n > 0)
        crashes_save(j);
}

/* ---- Opening and closing ------------------------------------------------------ */

static int open_log(struct journal *j, int trunc)
{
    char *path = xasprintf("%s/" LOG_NAME, j->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (trunc ? O_TRUNC : 0), 0600);
    int e = errno;
    free(path);
    if (fd < 0)
        return -e;
    if (j->fd >= 0)
        close(j->fd);
    j->fd = fd;
    j->size = lseek(fd, 0, SEEK_END);
    return 0;
}

int journal_open(const char *state_dir, int crash_limit, struct journal **out,
                 struct journal_lost **lost, size_t *nlost, char *err, size_t errlen)
{
    *out = NULL;
    *lost = NULL;
    *nlost = 0;
    struct journal *j = xcalloc(1, sizeof(*j));
    j->fd = -1;
    j->next_seq = 1;
    j->crash_limit = crash_limit;
    j->dir = xasprintf("%s/journal", state_dir);
    pthread_mutex_init(&j->mu, NULL);
    if (mkdir(j->dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        fmt_err(err, errlen, "%s: cannot create: %s", j->dir, strerror(e));
        journal_close(j);
        return -e;
    }
    crashes_load(j);
    read_log(j, lost, nlost);
    judge(j, *lost, *nlost);
    int rc = open_log(j, 0);
    if (rc < 0) {
        fmt_err(err, errlen, "%s/" LOG_NAME ": %s", j->dir, strerror(-rc));
        journal_lost_free(*lost, *nlost);
        *lost = NULL;
        *nlost = 0;
        journal_close(j);
        return rc;
    }
    *out = j;
    return 0;
}

void journal_lost_free(struct journal_lost *lost, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(lost[i].url);
        free(lost[i].type);
        free(lost[i].task_id);
        free(lost[i].job_id);
        free(lost[i].message);
    }
    free(lost);
}

void journal_recovered(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    if (j->nentries == 0 && open_log(j, 1) < 0)
        log_err("journal: cannot restart %s/" LOG_NAME ": %s", j->dir, strerror(errno));
    pthread_mutex_unlock(&j->mu);
}

void journal_close(struct journal *j)
{
    if (j == NULL)
        return;
    if (j->fd >= 0)
        close(j->fd);
    for (size_t i = 0; i < j->nentries; i++) {
        free(j->entries[i].type);
        free(j->entries[i].line);
    }
    for (size_t i = 0; i < j->ncrashes; i++)
        free(j->crashes[i].type);
    free(j->crashes);
    for (size_t i = 0; i < j->npoisoned; i++)
        free(j->poisoned[i]);
    free(j->entries);
    free(j->dir);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* ---- Records ------------------------------------------------------------------ */

/* Append one line (mu held). A failure is logged, never fatal: the journal
 * is a shortcut for the orchestrator's timeout, not the only safety net. */
static void append(struct journal *j, const char *line, size_t len)
{
    ssize_t n;
    do
        n = write(j->fd, line, len);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        log_warn("journal: cannot append to %s/" LOG_NAME ": %s", j->dir, strerror(errno));
        return;
    }
    j->size += n;
}

static struct jentry *entry_find(struct journal *j, const struct task *t)
{
    for (size_t i = 0; i < j->nentries; i++) {
        if (j->entries[i].t == t)
            return &j->entries[i];
    }
    return NULL;
}

/* Rewrite the log with the open entries only (mu held). */
static void compact(struct journal *j)
{
    char *path = xasprintf("%s/" LOG_NAME, j->dir);
    char *tmp = xasprintf("%s.tmp", path);
    FILE *fp = fopen(tmp, "we");
    for (size_t i = 0; fp != NULL && i < j->nentries; i++) {
        fputs(j->entries[i].line, fp);
        if (j->entries[i].started)
            fprintf(fp, "S %llu\n", j->entries[i].seq);
    }
    if (fp == NULL || fclose(fp) != 0 || rename(tmp, path) < 0 || open_log(j, 0) < 0)
        log_warn("journal: cannot compact %s: %s", path, strerror(errno));
    free(tmp);
    free(path);
}

void journal_task_accepted(struct journal *j, struct task *t, const char *url)
{
    t->journal_seq = 0;
    if (j == NULL)
        return;
    json_t *r = json_pack("{s:I, s:s, s:s, s:s, s:s}", "a", (json_int_t)j->next_seq, "u", url, "t",
                          t->type, "i", t->id, "j", t->job_id);
    char *s = r != NULL ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    if (s == NULL)
        return; /* not valid UTF-8: the task cannot be journaled */
    t->journal_seq = j->next_seq;
    char *line = xasprintf("%s\n", s);
    free(s);
    pthread_mutex_lock(&j->mu);
    if (j->nentries == j->cap) {
        j->cap = j->cap ? j->cap * 2 : 16;
        j->entries = xrealloc(j->entries, j->cap * sizeof(*j->entries));
    }
    j->entries[j->nentries++] = (struct jentry){t, j->next_seq++, xstrdup(t->type), line, 0};
    append(j, line, strlen(line));
    pthread_mutex_unlock(&j->mu);
}

void journal_task_started(struct journal *j, const struct task *t)
{
    char line[40];
    /* A task cancelled while it waited, or already failed, runs no handler. */
    if (j == NULL || t->plugin == NULL || atomic_load(&t->cancel) != TASK_CANCEL_NONE ||
        atomic_load(&t->has_outcome) != 0)
        return;
    pthread_mutex_lock(&j->mu);
    struct jentry *e = entry_find(j, t);
    if (e != NULL) {
        e->started = 1;
        int n = snprintf(line, sizeof(line), "S %llu\n", e->seq);
        append(j, line, (size_t)n);
    }
    pthread_mutex_unlock(&j->mu);
}

void journal_task_returned(struct journal *j, const struct task *t, int clean)
{
    if (j == NULL)
        return;
    pthread_mutex_lock(&j->mu);
    struct jentry *e = entry_find(j, t);
    int started = 0;
    if (e != NULL) {
        started = e->started;
        e->t = NULL; /* t is freed next; another task may get its address */
    }
    pthread_mutex_unlock(&j->mu);
    struct crash *c = clean && started ? crash_find(j, t->type) : NULL;
    if (c != NULL && c->count > 0) {
        log_notice("journal: a %s task ended cleanly: its crash count (%d) is reset", t->type,
                   c->count);
        c->count = 0;
        crashes_save(j);
    }
}

void journal_task_settled(struct journal *j, unsigned long long seq)
{
    char line[40];
    if (j == NULL || seq == 0)
        return;
    pthread_mutex_lock(&j->mu);
    struct jentry *e = NULL;
    for (size_t i = 0; i < j->nentries && e == NULL; i++) {
        if (j->entries[i].seq == seq)
            e = &j->entries[i];
    }
    if (e != NULL) {
        int n = snprintf(line, sizeof(line), "E %llu\n", e->seq);
        append(j, line, (size_t)n);
        free(e->type);
        free(e->line);
        *e = j->entries[--j->nentries];
        if (j->nentries == 0 && j->size > COMPACT_AT / 16)
            open_log(j, 1); /* nothing open: start the file afresh */
        else if (j->size > COMPACT_AT)
            compact(j);
    }
    pthread_mutex_unlock(&j->mu);
}
