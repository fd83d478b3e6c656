/*
 * runonce.c - `avtworkerd run-once TYPE [PARAMS_JSON | @FILE]`: one task
 * through the daemon's own machinery, without an orchestrator. The plugins
 * are loaded and configured as the daemon does, the task goes through the
 * pool (so [limits], the worker threads and the outcome mapping are the
 * real ones), and the loop thread is a private libev loop woken through
 * the worker-to-loop queue (evq.h), exactly like the daemon's. The result body that
 * would be sent is printed on stdout; progress and custom events
 * (avt_emit_event(), as "event TYPE {payload}") go to stderr. SIGINT (and
 * SIGTERM) cancel the task as the orchestrator would; a second one exits at
 * once with status 130 for handlers that never look at is_cancelled().
 */
#include "runonce.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "cfg.h"
#include "evq.h"
#include "plugin.h"
#include "pool.h"
#include "task.h"
#include "util.h"

#define EX_USAGE_CODE 64
#define PARAMS_MAX (64u << 20)
#define BAR_WIDTH 30

struct runonce {
    struct ev_loop *loop;
    ev_async wake;
    ev_signal sigint, sigterm;
    struct evq *evq;
    struct pool *pool;
    struct task *task;
    const char *worker_id;
    int tty;       /* stderr is a terminal: draw a live bar */
    int bar_drawn; /* a bar line is on screen without its newline */
    int signals;   /* SIGINT/SIGTERM received */
    int exit_code;
    int done;
};

/* Read all of stdin into a NUL-terminated buffer; NULL + errno on error. */
static char *read_stdin(void)
{
    size_t len = 0, cap = 4096;
    char *buf = xmalloc(cap);

    for (;;) {
        if (len + 1 >= cap) {
            if (cap >= PARAMS_MAX) {
                free(buf);
                errno = EFBIG;
                return NULL;
            }
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        ssize_t n = read(STDIN_FILENO, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* The params object from the command line; NULL after printing why. */
static json_t *load_params(const char *arg)
{
    json_error_t jerr;
    char *text = NULL;
    json_t *params;

    if (arg == NULL)
        return json_object();
    if (arg[0] == '@') {
        text = strcmp(arg, "@-") == 0 ? read_stdin() : read_file(arg + 1, PARAMS_MAX, NULL);
        if (text == NULL) {
            fprintf(stderr, "run-once: params: cannot read %s: %s\n",
                    strcmp(arg, "@-") == 0 ? "standard input" : arg + 1, strerror(errno));
            return NULL;
        }
        arg = text;
    }
    params = json_loads(arg, 0, &jerr);
    free(text);
    if (params == NULL) {
        fprintf(stderr, "run-once: params: not a JSON object: %s (line %d, column %d)\n", jerr.text,
                jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(params)) {
        fprintf(stderr, "run-once: params: not a JSON object: got a JSON %s\n",
                json_is_array(params) ? "array" : "scalar");
        json_decref(params);
        return NULL;
    }
    return params;
}

/* A plugin's message with control characters (which could move the cursor
 * or end the bar's line) blanked; the caller frees it. */
static char *printable(const char *message)
{
    char *s = xstrdup(message != NULL ? message : "");

    for (char *p = s; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    return s;
}

static void show_progress(struct runonce *ro, double percent, const char *message)
{
    char *msg = printable(message);

    if (!ro->tty) {
        fprintf(stderr, "progress %.0f%%%s%s\n", percent, *msg ? " " : "", msg);
        free(msg);
        return;
    }
    char bar[BAR_WIDTH + 1];
    int filled = (int)(percent / 100.0 * BAR_WIDTH + 0.5);
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : ' ';
    bar[BAR_WIDTH] = '\0';
    /* \033[K clears what a longer previous message left behind. */
    fprintf(stderr, "\r[%s] %3.0f%% %s\033[K", bar, percent, msg);
    fflush(stderr);
    ro->bar_drawn = 1;
    free(msg);
}

/* A custom event, one line on stderr, as it would reach the orchestrator. */
static void show_event(struct runonce *ro, const char *type, const json_t *payload)
{
    char *text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
    char *name = printable(type);

    if (ro->bar_drawn)
        fputc('\n', stderr);
    ro->bar_drawn = 0;
    fprintf(stderr, "event %s %s\n", name, text != NULL ? text : "{}");
    free(name);
    free(text);
}

static void show_result(struct runonce *ro, struct task *t)
{
    json_t *result = task_result_json(t, ro->worker_id);
    char *text = json_dumps(result, JSON_INDENT(2) | JSON_SORT_KEYS);

    if (ro->bar_drawn)
        fputc('\n', stderr);
    ro->bar_drawn = 0;
    if (text != NULL)
        printf("%s\n", text);
    fflush(stdout);
    free(text);
    json_decref(result);
    ro->exit_code = t->outcome == TASK_OUTCOME_SUCCESS ? 0 : 1;
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    struct runonce *ro = w->data;
    struct evq_event *ev = evq_take(ro->evq), *next;

    (void)revents;
    for (; ev != NULL; ev = next) {
        next = ev->next;
        if (ev->kind == EVQ_PROGRESS) {
            show_progress(ro, ev->percent, ev->message);
        } else if (ev->kind == EVQ_EVENT) {
            show_event(ro, ev->name, ev->payload);
        } else if (ev->kind == EVQ_DONE) {
            show_result(ro, ev->task);
            pool_release(ro->pool);
            ro->done = 1;
            ev_break(loop, EVBREAK_ALL);
        }
        /* Hot-cache changes mean nothing without an orchestrator. */
        evq_event_free(ev);
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct runonce *ro = w->data;

    (void)loop;
    (void)revents;
    if (ro->signals++ > 0) {
        fprintf(stderr, "\nrun-once: interrupted again, exiting without a result\n");
        _exit(130);
    }
    if (ro->bar_drawn)
        fputc('\n', stderr);
    ro->bar_drawn = 0;
    fprintf(stderr, "run-once: cancelling the task (interrupt again to exit at once)\n");
    task_cancel(ro->task, TASK_CANCEL_ORCHESTRATOR);
}

static void notify_loop(void *arg)
{
    struct runonce *ro = arg;
    ev_async_send(ro->loop, &ro->wake);
}

static void watchers_start(struct runonce *ro)
{
    ev_async_init(&ro->wake, on_wake);
    ro->wake.data = ro;
    ev_async_start(ro->loop, &ro->wake);
    ev_signal_init(&ro->sigint, on_signal, SIGINT);
    ro->sigint.data = ro;
    ev_signal_start(ro->loop, &ro->sigint);
    ev_signal_init(&ro->sigterm, on_signal, SIGTERM);
    ro->sigterm.data = ro;
    ev_signal_start(ro->loop, &ro->sigterm);
}

static void watchers_stop(struct runonce *ro)
{
    ev_signal_stop(ro->loop, &ro->sigterm);
    ev_signal_stop(ro->loop, &ro->sigint);
    ev_async_stop(ro->loop, &ro->wake);
}

/* Load the plugins, run the task, print its result; returns the exit code. */
static int run_task(struct runonce *ro, const struct cfg *cfg, const char *plugin_dir,
                    const char *type, json_t *params)
{
    struct plugin_set *set = NULL;
    char err[AVT_ERRLEN], id[64];

    if (plugin_set_load(plugin_dir, cfg, ro->evq, &set, err, sizeof(err)) < 0) {
        fprintf(stderr, "avtworkerd: %s\n", err);
        json_decref(params);
        return EX_CONFIG_CODE;
    }
    snprintf(id, sizeof(id), "run-once-%ld", (long)getpid());
    ro->task = task_create(id, id, type, params);
    ro->task->plugin = plugin_set_find(set, type);
    ro->task->events_ok = 1; /* shown on stderr */
    if (pool_submit(ro->pool, ro->task) < 0) {
        fprintf(stderr, "run-once: the pool has no free slot\n"); /* cannot happen */
        task_destroy(ro->task);
        plugin_set_destroy(set);
        return 1;
    }
    ev_run(ro->loop, 0);
    /* The pool's threads must be gone before the plugins are unloaded. */
    pool_destroy(ro->pool);
    ro->pool = NULL;
    task_destroy(ro->task);
    plugin_set_destroy(set);
    return ro->exit_code;
}

int runonce_main(const struct cfg *cfg, const char *plugin_dir, const char *type,
                 const char *params_arg)
{
    struct runonce ro = {.worker_id = cfg->worker_id, .exit_code = 1};
    json_t *params;
    int rc;

    if (type == NULL || *type == '\0') {
        fprintf(stderr, "run-once: TYPE must not be empty\n");
        return EX_USAGE_CODE;
    }
    params = load_params(params_arg);
    if (params == NULL)
        return EX_USAGE_CODE;
    ro.tty = isatty(STDERR_FILENO);
    ro.loop = ev_loop_new(EVFLAG_AUTO);
    if (ro.loop == NULL) {
        fprintf(stderr, "run-once: cannot create an event loop\n");
        json_decref(params);
        return 1;
    }
    watchers_start(&ro);
    ro.evq = evq_create(notify_loop, &ro);
    ro.pool = pool_create(cfg, ro.evq);
    if (ro.pool == NULL) {
        fprintf(stderr, "run-once: cannot start the worker threads\n");
        json_decref(params);
        rc = 1;
    } else {
        rc = run_task(&ro, cfg, plugin_dir, type, params);
    }
    pool_destroy(ro.pool);
    evq_destroy(ro.evq);
    watchers_stop(&ro);
    ev_loop_destroy(ro.loop);
    return rc;
}
