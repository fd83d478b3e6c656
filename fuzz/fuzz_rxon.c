/*
 * fuzz_rxon.c - libFuzzer target for the answer readers of every wire
 * dialect (rxon.h): each input is read as a heartbeat answer (probe and
 * full), a registration answer, a result answer, an event answer, a
 * WebSocket command, a task and an error answer, by each dialect (1.0b3
 * and 1.0b14), since
 * any endpoint can get any bytes. The input has exactly `size` bytes and
 * no terminating NUL, like a body from http.c seen through a truncated or
 * garbage response.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rxon.h"
#include "task.h"

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
static void on_cancel(void *arg, enum rxon_cancel_kind kind, const char *id)
{
    assert(id != NULL);
    assert(kind == RXON_CANCEL_TASK || kind == RXON_CANCEL_TASK_IS_JOB || kind == RXON_CANCEL_JOB);
    (void)strlen(id);
    (*(size_t *)arg)++;
}

static void text_ok(const char *out, size_t outlen)
{
    assert(memchr(out, '\0', outlen) != NULL);
}

static void read_as(const struct rxon_dialect *d, const char *body, size_t size)
{
    char out[160];
    size_t ncancel = 0;

    enum rxon_hb_answer a = d->parse_heartbeat_answer(body, size, 1, on_cancel, &ncancel);
    assert(a == RXON_HB_OK || a == RXON_HB_EXPIRED || a == RXON_HB_RESYNC);
    a = d->parse_heartbeat_answer(body, size, 0, on_cancel, &ncancel);
    assert(a != RXON_HB_EXPIRED);

    char *warning = (char *)1;
    enum rxon_register_answer reg = d->parse_register_answer(body, size, &warning);
    assert(reg == RXON_REG_OK || reg == RXON_REG_UNEXPECTED || reg == RXON_REG_WRONG_VERSION);
    free(warning);

    int ignored = d->parse_result_answer(body, size, out, sizeof(out));
    assert(ignored == 0 || ignored == 1);
    text_ok(out, sizeof(out));
    if (d->parse_event_answer != NULL) {
        d->parse_event_answer(body, size, out, sizeof(out));
        text_ok(out, sizeof(out));
    }

    struct rxon_command cmd = {0};
    if (d->parse_ws_command(body, size, &cmd))
        assert(cmd.task_id != NULL || cmd.job_id != NULL);
    rxon_command_clear(&cmd);

    char err[256];
    struct task *t = NULL;
    d->parse_task(body, size, &t, err, sizeof(err));
    task_destroy(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    char out[160];

    read_as(&rxon_b3, body, size);
    read_as(&rxon_b14, body, size);
    rxon_answer_text(body, size, out, sizeof(out));
    text_ok(out, sizeof(out));
    return 0;
}
