/*
 * evq.h - the one queue from worker threads to the loop thread.
 *
 * Whatever a handler produces while it runs, and its end, reaches the loop
 * through here: a finished task (DONE hands the task over), its latest
 * progress, a custom event, and the plugins' hot-cache changes. Posting
 * takes the queue's mutex, appends, releases it and then calls the notify
 * function (ev_async_send in the daemon), so any thread may post and the
 * loop thread drains everything with one evq_take().
 *
 * Progress is coalesced per task: while a PROGRESS event of a task is
 * queued, a newer value only replaces the one it carries (the value lives
 * in the task, guarded by this queue's mutex), and evq_take() copies it
 * out. A worker posts a task's progress only while its handler runs, i.e.
 * before that task's DONE, so DONE always comes after its progress and the
 * loop, which frees a task only after its DONE, never sees an event for a
 * freed task.
 *
 * Threads: evq_post_* from any thread; evq_take() and evq_destroy() from
 * the loop thread.
 */
#ifndef AVT_DAEMON_EVQ_H
#define AVT_DAEMON_EVQ_H

#include <jansson.h>

struct task;

enum evq_kind {
    EVQ_DONE = 1,        /* the task finished; its outcome is set; the loop owns it now */
    EVQ_PROGRESS,        /* the latest progress of a running task */
    EVQ_EVENT,           /* a custom event of a running task (avt_emit_event) */
    EVQ_HOTCACHE_ADD,    /* name */
    EVQ_HOTCACHE_REMOVE, /* name */
};

struct evq_event {
    enum evq_kind kind;
    struct task *task; /* DONE, PROGRESS, EVENT */
    double percent;    /* PROGRESS: 0..100, the latest value */
    char *message;     /* PROGRESS: the latest message, may be NULL; owned */
    char *name;        /* HOTCACHE_*: the name; EVENT: the event type; owned */
    json_t *payload;   /* EVENT: a JSON object; owned */
    struct evq_event *next;
};

/* Called after an event was queued, on the posting thread, with no lock
 * held; it must only wake the loop. */
typedef void (*evq_notify_fn)(void *arg);

struct evq;

struct evq *evq_create(evq_notify_fn notify, void *arg);

/* Free the queued events; the tasks of DONE events are destroyed (nobody
 * else owns them any more). NULL is a no-op. */
void evq_destroy(struct evq *q);

/* A task finished: the loop owns it from here. */
void evq_post_done(struct evq *q, struct task *t);

/* The latest progress of a running task (message may be NULL; copied). */
void evq_post_progress(struct evq *q, struct task *t, double percent, const char *message);

/* A custom event of a running task: `type` is copied, `payload` (an object)
 * is stolen. Events are never coalesced. The task must not be destroyed
 * before the event is taken, which holds while its handler runs. */
void evq_post_event(struct evq *q, struct task *t, const char *type, json_t *payload);

/* A hot-cache change (name copied). */
void evq_post_hotcache(struct evq *q, int add, const char *name);

/* Everything queued, oldest first; free each with evq_event_free() (which
 * never frees a task). */
struct evq_event *evq_take(struct evq *q);
void evq_event_free(struct evq_event *ev);

#endif /* AVT_DAEMON_EVQ_H */
