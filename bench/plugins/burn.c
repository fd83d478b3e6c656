/*
 * burn.c - benchmark plugin: task type "burn" does a fixed amount of CPU
 * work, params.iterations rounds of a 64-bit xorshift (default 1000000,
 * about a millisecond), and succeeds with {"x": <final state>} so that the
 * compiler cannot drop the loop. It shows how CPU-bound tasks spread over
 * the worker threads.
 */
#include <stdint.h>

#include <avt_plugin.h>

static uint64_t burn(json_int_t iterations)
{
    uint64_t x = 88172645463325252ULL;

    for (json_int_t i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static int burn_handle(void *state, struct avt_task *task)
{
    json_t *it = json_object_get(task->params, "iterations");
    json_int_t n = 1000000;

    (void)state;
    if (it != NULL) {
        if (!json_is_integer(it) || json_integer_value(it) < 0) {
            avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.iterations must be an integer >= 0");
            return 0;
        }
        n = json_integer_value(it);
    }
    /* Only the low 52 bits fit a JSON number exactly; that is enough. */
    avt_succeed(task, json_pack("{s:I}", "x", (json_int_t)(burn(n) & 0xfffffffffffffULL)));
    return 0;
}

static const char *const burn_types[] = {"burn", NULL};

AVT_PLUGIN(.name = "burn", .version = "1.0.0", .task_types = burn_types, .handle = burn_handle);
