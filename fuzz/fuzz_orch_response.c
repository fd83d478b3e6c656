/*
 * fuzz_orch_response.c - libFuzzer target for the orchestrator-answer
 * readers of orch.c (orch.h): every input is read as a heartbeat answer
 * (probe and full), a registration answer, a result answer, a WebSocket
 * command and an error answer, since any endpoint can get any bytes. The
 * input has exactly `size` bytes and no terminating NUL, like a body from
 * http.c seen through a truncated or garbage response.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "orch.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(getenv("AVT_FUZZ_LOG") ? LOG_DEBUG : LOG_EMERG);
    return 0;
}

/* Every cancelled id is a NUL-terminated string; count them. */
static void on_cancel(void *arg, const char *task_id)
{
    assert(task_id != NULL);
    (void)strlen(task_id);
    (*(size_t *)arg)++;
}

static void text_ok(const char *out, size_t outlen)
{
    assert(memchr(out, '\0', outlen) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    char out[160];
    size_t ncancel = 0;

    enum orch_hb_answer a = orch_parse_heartbeat_answer(body, size, 1, on_cancel, &ncancel);
    assert(a == ORCH_HB_OK || a == ORCH_HB_EXPIRED);
    a = orch_parse_heartbeat_answer(body, size, 0, on_cancel, &ncancel);
    assert(a == ORCH_HB_OK || a == ORCH_HB_UNEXPECTED);

    char *warning = (char *)1;
    int reg = orch_parse_register_answer(body, size, &warning);
    assert(reg == 0 || reg == 1);
    assert(reg || warning == NULL);
    free(warning);

    int ignored = orch_parse_result_answer(body, size, out, sizeof(out));
    assert(ignored == 0 || ignored == 1);
    text_ok(out, sizeof(out));

    free(orch_parse_ws_command(body, size));

    orch_answer_text(body, size, out, sizeof(out));
    text_ok(out, sizeof(out));
    return 0;
}
