/*
 * exec.h - the parts of the exec plugin (exec.c: plugin and task; decl.c:
 * a type's declaration file; run.c: one child process from fork to reap;
 * warm.c and warmchild.c (warm.h): the long-lived children of a
 * "persistent" type; warmline.c: the line protocol they speak). Private to
 * the plugin; built against sdk/ only.
 */
#ifndef AVT_PLUGINS_EXEC_H
#define AVT_PLUGINS_EXEC_H

#include <avt_plugin.h>

#include <regex.h>
#include <stddef.h>
#include <sys/types.h>

#define EXEC_ERRLEN 512
#define EXEC_LINE_MAX 4096 /* longest line looked at for progress */

enum exec_result { EXEC_RESULT_JSON, EXEC_RESULT_TEXT, EXEC_RESULT_NONE };
enum exec_psource { EXEC_PROGRESS_NONE, EXEC_PROGRESS_STDOUT, EXEC_PROGRESS_STDERR, EXEC_PROGRESS_FD };

/* One declared task type: immutable once decl_load() returned. */
struct exec_type {
    char *name;
    char **argv; /* templates, NULL-terminated; argv[0] has no placeholder */
    size_t argc;
    char *path; /* argv[0] resolved at load */
    int stdin_params;
    enum exec_result result;
    char *result_key; /* EXEC_RESULT_TEXT */
    size_t stdout_max, stderr_tail;
    enum exec_psource psource;
    int pfd; /* EXEC_PROGRESS_FD: 3..9 */
    int has_pattern;
    regex_t pattern; /* one capture: the progress value */
    double scale, total;
    char *total_param; /* or NULL: total is the constant */
    const char *exit_codes[256]; /* error code of each exit status 1..255 */
    char **envp;                 /* NAME=value, NULL-terminated (TMPDIR added per task) */
    long rl_cpu, rl_as_mb, rl_nofile; /* -1: not set */
    int has_nice, nice;
    double kill_grace;
    struct exec_persistent *persistent; /* NULL: a command per task */
};

/* The "persistent" member of a declaration: long-lived children speaking
 * the line protocol of avtworkerd-warm(7). */
struct exec_persistent {
    long children;          /* 1..64 */
    long max_tasks;         /* max_tasks_per_child; 0: no limit */
    long max_rss_mb;        /* max_rss_mb (VmRSS); 0: no limit */
    double ready_timeout;   /* seconds from spawn to the ready line */
    long max_line;          /* longest line accepted from a child, bytes */
    double backoff_max;     /* restart backoff cap, seconds */
};

/* Load and check one declaration file (a JSON object) as type `name`;
 * `env` is the environment the allowlist picks from. NULL with the reason
 * in err. */
struct exec_type *decl_load(const char *file, const char *name, char *const *env, char *err,
                            size_t errlen);
void decl_free(struct exec_type *t);

/* The type's environment plus TMPDIR=workdir (exec.c); free with
 * exec_env_free(). NULL when out of memory. */
char **exec_env(const struct exec_type *ty, const char *workdir);
void exec_env_free(char **env);

/* Remove a directory tree; 0 or -1 with errno. */
int exec_rmtree(const char *dir);

/* Fork and exec argv in workdir with envp: stdin from `in`, stdout and
 * stderr to w[0] and w[1], w[2] (or -1) to the declared progress fd; own
 * process group, PR_SET_PDEATHSIG (dies with the calling thread), rlimits
 * and nice of ty, every other fd closed. 0 and *pid, or -errno with the
 * reason in err. */
int run_spawn(const struct exec_type *ty, int in, const int *w, const char *workdir,
              char *const *argv, char *const *envp, pid_t *pid, char *err, size_t errlen);

/* A close-on-exec pipe whose fds are at or above 10 (out of the way of the
 * fds a child is given). 0 or -errno. */
int run_pipe(int p[2]);

/* ---- persistent types (warm.c) ----------------------------------------- */

struct warm_pool;

/* Start ty->persistent->children children and wait until every one has
 * sent its ready line (hot-cache entries go to host). NULL with the reason
 * in err when one died or the ready timeout passed first. */
struct warm_pool *warm_start(const struct exec_type *ty, const struct avt_host *host,
                             const char *work_dir, char *err, size_t errlen);

/* Run one task on a free child (waiting for one); sets the outcome. */
void warm_run(struct warm_pool *p, struct avt_task *task);

/* Stop every child (EOF on stdin, SIGKILL after kill_grace), reap them,
 * withdraw their hot-cache entries, free. NULL is a no-op. */
void warm_stop(struct warm_pool *p);

/* ---- the line protocol (warmline.c) --------------------------------------- */

enum wline_kind { WLINE_READY, WLINE_PROGRESS, WLINE_RESULT };

/* One line a child sent, parsed and checked. */
struct wline {
    enum wline_kind kind;
    json_t *root;      /* the parsed line; owns what the members point to */
    const char *id;    /* progress, result */
    json_t *hot_cache; /* ready: array of strings, or NULL */
    double percent;    /* progress */
    const char *message; /* progress (or NULL), error */
    json_t *data;      /* result: success or custom status data, or NULL */
    const char *status; /* result: "success" or a custom status; NULL for an error */
    const char *code;  /* result: an error's code */
};

/* Parse one line (without newline). 0, or -EPROTO with what is wrong in
 * err. wline_free() frees root. */
int wline_parse(const char *line, size_t len, struct wline *out, char *err, size_t errlen);
void wline_free(struct wline *l);

/* The task line for `task` (newline-terminated), or NULL when out of
 * memory; caller frees. */
char *wline_task(const struct avt_task *task);

/* The cancel line of task id ("cancelled" or "deadline"); caller frees. */
char *wline_cancel(const char *id, const char *reason);

/* A running command, from spawn to its reaping. */
enum exec_stop { EXEC_STOP_NONE, EXEC_STOP_CANCEL, EXEC_STOP_DEADLINE, EXEC_STOP_OVERSIZE };

struct exec_line {
    char buf[EXEC_LINE_MAX];
    size_t len;
    int overlong; /* the current line is past EXEC_LINE_MAX: not progress */
};

struct exec_run {
    const struct exec_type *ty;
    struct avt_task *task;
    double total;  /* the progress total of this task */
    pid_t pid;     /* also the process group */
    int fds[3];    /* parent ends: stdout, stderr, progress fd; -1 when closed */
    char *out; /* stdout kept for the result */
    size_t out_len, out_cap;
    char *tail; /* last stderr_tail bytes of stderr, a ring */
    size_t tail_pos, tail_len;
    struct exec_line lines[3];
    double percent; /* last progress reported, -1 before any */
    int status;     /* wait status once reaped */
    enum exec_stop stop;
};

/* Run argv (argv[0] is the resolved path) in workdir with envp, stdin from
 * `input` (or /dev/null when NULL), until it ends or is stopped; the
 * command's process group is gone when it returns. 0, or -errno with the
 * reason in err when it could not be started. */
int run_command(struct exec_run *r, char *const *argv, char *const *envp, const char *workdir,
                const char *input, char *err, size_t errlen);
void run_free(struct exec_run *r);

/* The stderr tail as a string (valid UTF-8 start); caller frees. */
char *run_stderr_tail(const struct exec_run *r);

/* One progress line of the command (without its newline). 1 when it was a
 * progress line (consumed), 0 otherwise. */
int progress_line(struct exec_run *r, const char *line);

#endif /* AVT_PLUGINS_EXEC_H */
