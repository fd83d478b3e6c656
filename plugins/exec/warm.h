/*
 * warm.h - what the two halves of a persistent type share: warm.c (the
 * pool: its supervisor thread, the task queue, timers, start and stop) and
 * warmchild.c (one child: spawn, the bytes to and from it, its end, the
 * hot cache). Private to the exec plugin.
 */
#ifndef AVT_PLUGINS_EXEC_WARM_H
#define AVT_PLUGINS_EXEC_WARM_H

#include "exec.h"

#include <limits.h>
#include <pthread.h>

#define POLL_MS 50
#define READ_CHUNK 65536
#define BACKOFF_FIRST 0.1 /* seconds before the first restart after a failure */

enum cstate { C_EMPTY, C_STARTING, C_IDLE, C_BUSY, C_EXITING };
enum wstop { W_NONE, W_CANCEL, W_DEADLINE };

struct warm_req {
    struct avt_task *task;
    char *line; /* the task line */
    int done;   /* under pool.mu */
    enum wstop stop;
    struct warm_req *next;
};

struct child {
    enum cstate st;
    pid_t pid;
    int in, out, err; /* parent ends; -1 when closed */
    char workdir[PATH_MAX];
    char *lbuf; /* the stdout line being read */
    size_t llen, lcap;
    char *wbuf; /* bytes still to write to stdin */
    size_t wlen, woff;
    char *tail; /* ring of the last stderr_tail bytes of stderr */
    size_t tail_pos, tail_len;
    json_t *hot; /* hot-cache names this child holds (added) */
    long tasks;
    struct warm_req *req;
    int cancel_sent, planned;
    double ready_by, stop_by, kill_at, restart_at;
    char why[200]; /* why it is exiting (recycle, stop) */
};

struct warm_pool {
    const struct exec_type *ty;
    const struct avt_host *host;
    const char *work_dir;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake[2];
    /* Under mu. */
    int stopping, starting, nready, start_failed;
    char start_err[EXEC_ERRLEN];
    struct warm_req *queue;
    /* The supervisor's own. */
    struct warm_req *waiting;
    struct child *kids;
    size_t n;
    int fails; /* failures since the last result, for the backoff */
    int stop_begun;
};

double warm_mono(void);
double warm_real(void);
void warm_close(int *fd);
int warm_nonblock(int fd);
/* Seconds before the next restart; counts a failure. */
double warm_backoff(struct warm_pool *p);

/* Mark a task done (its outcome set) and wake its handle(). */
void warm_finish(struct warm_pool *p, struct warm_req *r);
/* Fail a task of a child that is gone (TRANSIENT_ERROR, TIMEOUT_ERROR after
 * a deadline, "cancelled" after a cancel) and finish it. */
void warm_fail_req(struct warm_pool *p, struct warm_req *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Start a child in an empty slot: 0, or -errno with the reason in err. */
int wchild_spawn(struct warm_pool *p, struct child *c, char *err, size_t errlen);
/* The child is gone or must go now (why: what we did; NULL: it ended):
 * SIGKILL to its group, reap, fail its task, empty the slot. */
void wchild_gone(struct warm_pool *p, struct child *c, const char *why);
/* Ask the child to exit (EOF on stdin); SIGKILL after kill_grace. */
void wchild_retire(struct warm_pool *p, struct child *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queue a line (taken) for the child's stdin and write what can be. */
void wchild_send(struct warm_pool *p, struct child *c, char *line);
void wchild_flush(struct warm_pool *p, struct child *c);
/* Read what the child's stdout / stderr has (buf: READ_CHUNK bytes). */
void wchild_read_out(struct warm_pool *p, struct child *c, char *buf);
void wchild_read_err(struct warm_pool *p, struct child *c, char *buf);

#endif /* AVT_PLUGINS_EXEC_WARM_H */
