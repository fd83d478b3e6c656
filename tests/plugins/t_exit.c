/*
 * t_exit.c - a test plugin that ends the process the way a careless plugin
 * or one of its libraries would, for tests/integration/test_exit.py.
 *
 *   t_exit         calls exit(params.status) (default 0) from its handler
 *   t_quick_exit   calls quick_exit(0) from its handler
 *   t_exit_thread  starts a thread of its own that calls exit(0), and waits
 *
 * With T_EXIT_IN_INIT set in the environment, init() calls exit(0) instead
 * (a plugin that gives up at load time).
 */

#include <avt_plugin.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int t_init(const struct avt_host *host, void **state)
{
    (void)host;
    *state = NULL;
    if (getenv("T_EXIT_IN_INIT") != NULL)
        exit(0);
    return 0;
}

static void *exiter(void *arg)
{
    (void)arg;
    exit(0);
}

static int t_handle(void *state, struct avt_task *task)
{
    (void)state;
    if (strcmp(task->type, "t_quick_exit") == 0)
        quick_exit(0);
    if (strcmp(task->type, "t_exit_thread") == 0) {
        pthread_t th;
        if (pthread_create(&th, NULL, exiter, NULL) == 0)
            pthread_join(th, NULL);
        return avt_fail(task, AVT_PERMANENT_ERROR, "t_exit: the thread did not exit");
    }
    json_t *v = json_object_get(task->params, "status");
    exit(json_is_integer(v) ? (int)json_integer_value(v) : 0);
}

static const char *const t_types[] = {"t_exit", "t_quick_exit", "t_exit_thread", NULL};

AVT_PLUGIN(.name = "t_exit", .version = "1.0", .task_types = t_types, .init = t_init,
           .handle = t_handle);
