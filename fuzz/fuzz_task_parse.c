/*
 * fuzz_task_parse.c - libFuzzer target for task_parse(), the parser of the
 * orchestrator's poll payload (PROTOCOL.md 2.2). The input is the raw HTTP
 * body, exactly `size` bytes with no terminating NUL, as http.c could hand
 * it over. Every task the parser returns is turned into its result body
 * (task_result_json), which is what the daemon does with an invalid one, and
 * freed; ASan's leak check at exit covers the frees.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "task.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(getenv("AVT_FUZZ_LOG") ? LOG_DEBUG : LOG_EMERG);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[AVT_ERRLEN];
    struct task *t = NULL;
    memset(err, 'x', sizeof(err));
    int rc = task_parse((const char *)data, size, &t, err, sizeof(err));
    assert(rc == 0 || rc == -EINVAL);
    assert(rc != 0 || t != NULL);
    if (rc < 0)
        assert(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
    if (t == NULL)
        return 0;
    assert(t->id != NULL && t->job_id != NULL);
    json_t *res = task_result_json(t, "fuzz-worker");
    assert(res != NULL);
    char *s = json_dumps(res, JSON_COMPACT);
    assert(s != NULL);
    free(s);
    json_decref(res);
    task_destroy(t);
    return 0;
}
