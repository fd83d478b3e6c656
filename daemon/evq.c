/*
 * evq.c - the worker-to-loop queue (evq.h): one FIFO under one mutex,
 * swapped out whole by evq_take(). The only lock of this module; nothing
 * else is locked while it is held, and the notify function is called after
 * it is released.
 */
#include "evq.h"

#include <pthread.h>
#include <stdlib.h>

#include "task.h"
#include "util.h"

struct evq {
    pthread_mutex_t mu;
    struct evq_event *head, *tail; /* guarded by mu */
    evq_notify_fn notify;
    void *arg;
};

struct evq *evq_create(evq_notify_fn notify, void *arg)
{
    struct evq *q = xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->mu, NULL);
    q->notify = notify;
    q->arg = arg;
    return q;
}

void evq_event_free(struct evq_event *ev)
{
    if (ev == NULL)
        return;
    free(ev->message);
    free(ev->name);
    json_decref(ev->payload);
    free(ev);
}

void evq_destroy(struct evq *q)
{
    if (q == NULL)
        return;
    for (struct evq_event *ev = q->head, *next; ev != NULL; ev = next) {
        next = ev->next;
        if (ev->kind == EVQ_DONE)
            task_destroy(ev->task);
        evq_event_free(ev);
    }
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* Append under mu (held by the caller). */
static void push_locked(struct evq *q, struct evq_event *ev)
{
    ev->next = NULL;
    if (q->tail != NULL)
        q->tail->next = ev;
    else
        q->head = ev;
    q->tail = ev;
}

static void push(struct evq *q, struct evq_event *ev)
{
    pthread_mutex_lock(&q->mu);
    push_locked(q, ev);
    pthread_mutex_unlock(&q->mu);
    if (q->notify != NULL)
        q->notify(q->arg);
}

static struct evq_event *event_new(enum evq_kind kind, struct task *t)
{
    struct evq_event *ev = xcalloc(1, sizeof(*ev));
    ev->kind = kind;
    ev->task = t;
    return ev;
}

void evq_post_done(struct evq *q, struct task *t)
{
    push(q, event_new(EVQ_DONE, t));
}

void evq_post_progress(struct evq *q, struct task *t, double percent, const char *message)
{
    char *msg = message != NULL ? xstrdup(message) : NULL, *old;
    struct evq_event *ev = NULL;

    pthread_mutex_lock(&q->mu);
    t->progress = percent;
    old = t->progress_msg;
    t->progress_msg = msg;
    if (!t->progress_pending) {
        t->progress_pending = 1;
        ev = event_new(EVQ_PROGRESS, t);
        push_locked(q, ev);
    }
    pthread_mutex_unlock(&q->mu);
    free(old);
    if (ev != NULL && q->notify != NULL)
        q->notify(q->arg);
}

void evq_post_event(struct evq *q, struct task *t, const char *type, json_t *payload)
{
    struct evq_event *ev = event_new(EVQ_EVENT, t);
    ev->name = xstrdup(type);
    ev->payload = payload;
    push(q, ev);
}

void evq_post_hotcache(struct evq *q, int add, const char *name)
{
    struct evq_event *ev = event_new(add ? EVQ_HOTCACHE_ADD : EVQ_HOTCACHE_REMOVE, NULL);
    ev->name = xstrdup(name);
    push(q, ev);
}

struct evq_event *evq_take(struct evq *q)
{
    pthread_mutex_lock(&q->mu);
    struct evq_event *list = q->head;
    q->head = q->tail = NULL;
    for (struct evq_event *ev = list; ev != NULL; ev = ev->next) {
        if (ev->kind != EVQ_PROGRESS)
            continue;
        ev->percent = ev->task->progress;
        ev->message = ev->task->progress_msg;
        ev->task->progress_msg = NULL;
        ev->task->progress_pending = 0;
    }
    pthread_mutex_unlock(&q->mu);
    return list;
}
