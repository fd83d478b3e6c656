/*
 * fuzz_state.c - libFuzzer target for what the daemon reads back from its
 * state directory at start: a result spool segment (spool_parse_segment,
 * spool_open, spool_load), a version-1 spool file (migrated at open) and the
 * crash journal's running.log and crashes files (journal_open). A disk can
 * hand back anything after a crash or a foreign write; none of it may crash
 * the daemon. The first input byte picks the file (0: spool/<id>.seg,
 * 1: journal/running.log, 2: journal/crashes, 3: spool/<seq>.res), the rest
 * is its content. The
 * state directory is a private one under /dev/shm (fsync is cheap there),
 * emptied after every input.
 */
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "spool.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char base[64];

/* Remove everything below dir (not dir itself). */
static void empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            empty_dir(p);
            rmdir(p);
        } else {
            unlink(p);
        }
    }
    closedir(d);
}

static void remove_base(void)
{
    empty_dir(base);
    rmdir(base);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(getenv("AVT_FUZZ_LOG") ? LOG_DEBUG : LOG_EMERG);
    snprintf(base, sizeof(base), "/dev/shm/avt-fuzz-state.XXXXXX");
    if (mkdtemp(base) == NULL) {
        snprintf(base, sizeof(base), "/tmp/avt-fuzz-state.XXXXXX");
        if (mkdtemp(base) == NULL) {
            perror("fuzz_state: mkdtemp");
            exit(1);
        }
    }
    atexit(remove_base);
    return 0;
}

static void write_file(const char *dir, const char *name, const uint8_t *data, size_t size)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", base, dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/%s/%s", base, dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert(fd >= 0);
    ssize_t w = size > 0 ? write(fd, data, size) : 0;
    assert(w == (ssize_t)size);
    close(fd);
}

static void count_item(void *arg, const struct spool_item *it)
{
    size_t *n = arg;
    assert(it->url_len == 0 || it->url != NULL);
    (*n)++;
}

/* The spool as spool_open() finds it after a crash: one segment (or one
 * version-1 .res file, which open migrates) holding the input, then the
 * records spool_load() hands back. The pure parser sees the bytes too. */
static void load_spool(const char *name, const uint8_t *data, size_t size)
{
    size_t items = 0, bad = 0;
    spool_parse_segment(data, size, count_item, &items, &bad);
    assert(bad <= size);
    write_file("spool", name, data, size);
    struct spool_limits lim = {1 << 20, 100, 0};
    struct spool *sp;
    char err[512];
    if (spool_open(base, &lim, &sp, err, sizeof(err)) != 0)
        return;
    struct spool_record **recs = NULL;
    size_t n = 0;
    if (spool_load(sp, NULL, &recs, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            assert(recs[i]->body != NULL && recs[i]->body[recs[i]->len] == '\0');
            spool_remove(sp, recs[i]);
            spool_record_free(recs[i]);
        }
        free(recs);
    }
    spool_close(sp);
}

static void load_journal(const char *name, const uint8_t *data, size_t size)
{
    write_file("journal", name, data, size);
    struct journal *j = NULL;
    struct journal_lost *lost = NULL;
    size_t n = 0;
    char err[512];
    if (journal_open(base, 3, &j, &lost, &n, err, sizeof(err)) < 0)
        return;
    for (size_t i = 0; i < n; i++)
        assert(lost[i].task_id != NULL && lost[i].job_id != NULL && lost[i].message != NULL);
    journal_lost_free(lost, n);
    journal_close(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0:
        load_spool("0000000000000001.seg", data + 1, size - 1);
        break;
    case 3:
        load_spool("0000000000000001.res", data + 1, size - 1);
        break;
    case 1:
        load_journal("running.log", data + 1, size - 1);
        break;
    default:
        load_journal("crashes", data + 1, size - 1);
        break;
    }
    empty_dir(base);
    return 0;
}
