/*
 * fuzz_cfg.c - libFuzzer target for cfg_load(), the worker.ini parser and
 * validator. The input is written to a private temporary file that cfg_load
 * reads (cfg.h's contract is a path; inih reads it as a stream), with an
 * empty environment so that only the file decides. A configuration that
 * loads is dumped (cfg_dump, the --check-config output) and destroyed; a
 * rejected one must leave an error message. A token_file key naming a FIFO
 * or a terminal would block, as it would for the daemon: run the fuzzer
 * with stdin from /dev/null (tools/fuzz.sh does).
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];
static int fd = -1;
static FILE *devnull;

static void remove_input(void)
{
    unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    int keep_log = getenv("AVT_FUZZ_LOG") != NULL;
    clearenv();
    log_set_level(keep_log ? LOG_DEBUG : LOG_EMERG);
    snprintf(path, sizeof(path), "/tmp/avt-fuzz-cfg.XXXXXX");
    fd = mkstemp(path);
    devnull = fopen("/dev/null", "w");
    if (fd < 0 || devnull == NULL) {
        perror("fuzz_cfg: setup");
        exit(1);
    }
    atexit(remove_input);
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size) {
        perror("fuzz_cfg: write");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct cfg *cfg = NULL;
    write_input(data, size);
    int rc = cfg_load(path, &cfg, err, sizeof(err));
    if (rc < 0) {
        assert(cfg == NULL && err[0] != '\0');
        return 0;
    }
    assert(cfg != NULL && cfg->worker_id != NULL && cfg->url != NULL);
    cfg_dump(cfg, devnull);
    for (size_t i = 0; i < cfg->nlimits; i++)
        assert(cfg_limit_find(cfg, cfg->limits[i].type) != NULL);
    cfg_destroy(cfg);
    return 0;
}
