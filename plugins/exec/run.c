/*
 * run.c - one command, from fork() to its reaping, on the worker thread
 * that runs the task. No signal handler and no SIGCHLD: the daemon's loop
 * does not reap children, so this thread waits for its own child with
 * waitid()/waitpid() between poll() rounds of at most POLL_MS.
 *
 * The child: its own process group (so that a stop reaches everything it
 * started), PR_SET_PDEATHSIG SIGKILL (dies with the daemon's thread), an
 * empty signal mask and default dispositions, stdin from /dev/null or from
 * a memfd holding the params, stdout, stderr and the progress fd on pipes,
 * every other fd closed at exec, rlimits, nice, the task's directory as
 * cwd, execve() with the type's environment. Between fork() and execve()
 * only async-signal-safe calls run (the daemon is multi-threaded); a
 * failure there is written to a close-on-exec pipe as errno.
 *
 * A stop (cancellation, deadline, stdout over its cap) sends SIGTERM to the
 * group, and SIGKILL kill_grace seconds later. Once the child has exited,
 * what remains of its group is killed before the child is reaped (the
 * zombie keeps the group id from being reused meanwhile).
 */
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 50
#define READ_CHUNK 65536
#define CHILD_FD_MIN 10 /* the parent's fds for the child are put at or above this */
#define DRAIN_ROUNDS 20 /* poll rounds to drain pipes once the group is gone */

enum { FD_OUT, FD_ERR, FD_PROG };

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* fd moved to CHILD_FD_MIN or above, close-on-exec; the original closed. */
static int high_fd(int fd)
{
    if (fd < 0)
        return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, CHILD_FD_MIN);
    int e = errno;
    close(fd);
    errno = e;
    return h;
}

int run_pipe(int p[2])
{
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    p[0] = high_fd(p[0]);
    p[1] = high_fd(p[1]);
    if (p[0] < 0 || p[1] < 0) {
        int e = errno;
        if (p[0] >= 0)
            close(p[0]);
        if (p[1] >= 0)
            close(p[1]);
        return -e;
    }
    return 0;
}

/* The params, in a memfd the child reads as stdin; -1 and errno on failure. */
static int input_fd(const char *input)
{
    int fd = (int)syscall(SYS_memfd_create, "avt-exec-params", MFD_CLOEXEC);
    size_t len = strlen(input), off = 0;
    if (fd < 0)
        return -1;
    while (off < len) {
        ssize_t n = write(fd, input + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    if (lseek(fd, 0, SEEK_SET) < 0) {
        close(fd);
        return -1;
    }
    return high_fd(fd);
}

/* ---- The child, between fork() and execve() --------------------------------- */

/* Async-signal-safe only from here to the end of child_exec(). */
static void child_fail(int errpipe, int e)
{
    while (write(errpipe, &e, sizeof(e)) < 0 && errno == EINTR)
        ;
    _exit(127);
}

static void child_limit(int res, long value)
{
    struct rlimit rl = {(rlim_t)value, (rlim_t)value};
    if (value >= 0 && setrlimit(res, &rl) < 0)
        rl.rlim_cur = 0; /* reported by the caller through errno */
}

/* Every fd from `lo` up but `keep` closes at exec (the error pipe, already
 * close-on-exec, only then). */
static void cloexec_from(unsigned lo, unsigned keep)
{
    const unsigned flag = 4u; /* CLOSE_RANGE_CLOEXEC (Linux 5.11) */
    int rc = keep > lo ? (int)syscall(SYS_close_range, lo, keep - 1u, flag) : 0;
    if (rc == 0)
        rc = (int)syscall(SYS_close_range, keep >= lo ? keep + 1u : lo, ~0u, flag);
    if (rc == 0)
        return;
    for (unsigned fd = lo; fd < 65536u; fd++)
        if (fd != keep)
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
}

static int child_setup(const struct exec_type *ty, pid_t parent, int in, const int *w,
                       const char *workdir)
{
    sigset_t none;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    if (setpgid(0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        return errno;
    if (getppid() != parent)
        _exit(127); /* the forking thread is already gone */
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(in, 0) < 0 || dup2(w[FD_OUT], 1) < 0 || dup2(w[FD_ERR], 2) < 0)
        return errno;
    if (w[FD_PROG] >= 0 && dup2(w[FD_PROG], ty->pfd) < 0)
        return errno;
    cloexec_from(3, ty->pfd > 0 ? (unsigned)ty->pfd : 0);
    errno = 0;
    child_limit(RLIMIT_CPU, ty->rl_cpu);
    child_limit(RLIMIT_AS, ty->rl_as_mb >= 0 ? ty->rl_as_mb * 1024L * 1024L : -1);
    child_limit(RLIMIT_NOFILE, ty->rl_nofile);
    if (errno != 0)
        return errno;
    if (ty->has_nice && setpriority(PRIO_PROCESS, 0, ty->nice) < 0)
        return errno;
    return chdir(workdir) < 0 ? errno : 0;
}

static void child_exec(const struct exec_type *ty, pid_t parent, int in, const int *w,
                       const char *workdir, char *const *argv, char *const *envp, int errpipe)
{
    int e = child_setup(ty, parent, in, w, workdir);
    if (e == 0) {
        execve(ty->path, argv, envp);
        e = errno;
    }
    child_fail(errpipe, e);
}

/* ---- The parent ---------------------------------------------------------- */

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

int run_spawn(const struct exec_type *ty, int in, const int *w, const char *workdir,
              char *const *argv, char *const *envp, pid_t *pidp, char *err, size_t errlen)
{
    int ep[2], e = 0;
    pid_t parent = getpid(), pid;
    *pidp = -1;
    if (run_pipe(ep) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -EIO;
    }
    pid = fork();
    if (pid == 0)
        child_exec(ty, parent, in, w, workdir, argv, envp, ep[1]);
    e = errno;
    close(ep[1]);
    if (pid < 0) {
        close(ep[0]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -e;
    }
    setpgid(pid, pid); /* also here: no race with a kill of the group */
    ssize_t n;
    while ((n = read(ep[0], &e, sizeof(e))) < 0 && errno == EINTR)
        ;
    close(ep[0]);
    if (n == (ssize_t)sizeof(e)) {
        waitpid(pid, NULL, 0);
        snprintf(err, errlen, "cannot run %s: %s", ty->path, strerror(e));
        return -e;
    }
    *pidp = pid;
    return 0;
}

static void tail_add(struct exec_run *r, const char *p, size_t n)
{
    size_t cap = r->ty->stderr_tail;
    if (cap == 0)
        return;
    if (n > cap) {
        p += n - cap;
        n = cap;
    }
    for (size_t i = 0; i < n; i++) {
        r->tail[r->tail_pos] = p[i];
        r->tail_pos = (r->tail_pos + 1) % cap;
    }
    r->tail_len = r->tail_len + n > cap ? cap : r->tail_len + n;
}

static void out_add(struct exec_run *r, const char *p, size_t n)
{
    if (r->ty->result == EXEC_RESULT_NONE || r->stop == EXEC_STOP_OVERSIZE)
        return;
    if (r->out_len + n > r->ty->stdout_max) {
        r->stop = EXEC_STOP_OVERSIZE;
        return;
    }
    if (r->out_len + n + 1 > r->out_cap) {
        /* Grown as needed: stdout_max may be large and most output small. */
        size_t cap = (r->out_len + n + 1) * 2;
        cap = cap > r->ty->stdout_max + 1 ? r->ty->stdout_max + 1 : cap;
        char *q = realloc(r->out, cap);
        if (q == NULL) {
            r->stop = EXEC_STOP_OVERSIZE;
            return;
        }
        r->out = q;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
}

/* One complete line of stream `which` (NUL-terminated, newline removed). */
static void line_done(struct exec_run *r, int which, struct exec_line *l, int had_nl)
{
    int consumed = 0;
    l->buf[l->len] = '\0';
    if (!l->overlong)
        consumed = progress_line(r, l->buf);
    if (which == FD_OUT && !consumed) {
        out_add(r, l->buf, l->len);
        if (had_nl)
            out_add(r, "\n", 1);
    }
    l->len = 0;
    l->overlong = 0;
}

/* Bytes of a stream read line by line (the one progress comes on). */
static void lines_add(struct exec_run *r, int which, const char *p, size_t n)
{
    struct exec_line *l = &r->lines[which];
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            line_done(r, which, l, 1);
        } else if (l->len + 1 >= sizeof(l->buf)) {
            /* Too long to be progress: stdout keeps it as it is. */
            if (which == FD_OUT)
                out_add(r, l->buf, l->len);
            l->len = 0;
            l->overlong = 1;
            l->buf[l->len++] = p[i];
        } else {
            l->buf[l->len++] = p[i];
        }
    }
}

static int has_lines(const struct exec_run *r, int which)
{
    enum exec_psource s = r->ty->psource;
    return (which == FD_OUT && s == EXEC_PROGRESS_STDOUT) ||
           (which == FD_ERR && s == EXEC_PROGRESS_STDERR) || which == FD_PROG;
}

static void got(struct exec_run *r, int which, const char *p, size_t n)
{
    if (which == FD_ERR)
        tail_add(r, p, n);
    if (has_lines(r, which))
        lines_add(r, which, p, n);
    else if (which == FD_OUT)
        out_add(r, p, n);
}

/* Read what fd has; close it at EOF (flushing a last line without newline). */
static void read_fd(struct exec_run *r, int which, char *buf)
{
    ssize_t n = read(r->fds[which], buf, READ_CHUNK);
    if (n > 0) {
        got(r, which, buf, (size_t)n);
        return;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (has_lines(r, which) && r->lines[which].len > 0)
        line_done(r, which, &r->lines[which], 0);
    close_fd(&r->fds[which]);
}

static int open_fds(const struct exec_run *r)
{
    return (r->fds[0] >= 0) + (r->fds[1] >= 0) + (r->fds[2] >= 0);
}

/* One poll() round over the open pipes. */
static void pump(struct exec_run *r, int timeout_ms, char *buf)
{
    struct pollfd pfd[3];
    int which[3], n = 0;
    for (int i = 0; i < 3; i++) {
        if (r->fds[i] >= 0) {
            pfd[n] = (struct pollfd){r->fds[i], POLLIN, 0};
            which[n++] = i;
        }
    }
    if (n == 0) {
        poll(NULL, 0, timeout_ms);
        return;
    }
    if (poll(pfd, (nfds_t)n, timeout_ms) <= 0)
        return;
    for (int i = 0; i < n; i++)
        if (pfd[i].revents != 0)
            read_fd(r, which[i], buf);
}

/* Why the command must stop now, if it must. */
static enum exec_stop stop_reason(const struct exec_run *r)
{
    const struct avt_task *t = r->task;
    if (r->stop != EXEC_STOP_NONE)
        return r->stop;
    if (avt_is_cancelled(t))
        return EXEC_STOP_CANCEL;
    if (t->struct_size >= offsetof(struct avt_task, deadline) + sizeof(double) && t->deadline > 0 &&
        now_real() >= t->deadline)
        return EXEC_STOP_DEADLINE;
    return EXEC_STOP_NONE;
}

/* 1 once the child has exited (not reaped yet: waitid WNOWAIT). */
static int exited(const struct exec_run *r)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    return waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == r->pid;
}

/* Supervise until the child exited; then kill its group, drain, reap. */
static void supervise(struct exec_run *r, char *buf)
{
    double term_at = 0;
    int killed = 0;
    while (!exited(r)) {
        pump(r, POLL_MS, buf);
        enum exec_stop why = stop_reason(r);
        if (why != EXEC_STOP_NONE && term_at == 0) {
            r->stop = why;
            kill(-r->pid, SIGTERM);
            term_at = now_mono();
        } else if (term_at > 0 && !killed && now_mono() - term_at >= r->ty->kill_grace) {
            kill(-r->pid, SIGKILL);
            killed = 1;
        }
    }
    /* What is left of the group (a background child) goes with it; the
     * zombie leader keeps the group id ours until waitpid(). */
    kill(-r->pid, SIGKILL);
    for (int i = 0; i < DRAIN_ROUNDS && open_fds(r) > 0; i++)
        pump(r, POLL_MS, buf);
    while (waitpid(r->pid, &r->status, 0) < 0 && errno == EINTR)
        ;
    for (int i = 0; i < 3; i++)
        close_fd(&r->fds[i]);
}

/* Pipes for stdout, stderr and the progress fd: parent ends in r->fds,
 * child ends in w. */
static int make_pipes(struct exec_run *r, int *w, char *err, size_t errlen)
{
    int p[2];
    for (int i = 0; i < 3; i++) {
        r->fds[i] = w[i] = -1;
        if (i == FD_PROG && r->ty->psource != EXEC_PROGRESS_FD)
            continue;
        if (run_pipe(p) < 0) {
            snprintf(err, errlen, "pipe: %s", strerror(errno));
            return -EIO;
        }
        r->fds[i] = p[0];
        w[i] = p[1];
    }
    return 0;
}

int run_command(struct exec_run *r, char *const *argv, char *const *envp, const char *workdir,
                const char *input, char *err, size_t errlen)
{
    int w[3], in = -1, rc;
    char *buf = malloc(READ_CHUNK);
    r->pid = -1;
    r->percent = -1;
    r->out_cap = 4096;
    r->out = malloc(r->out_cap);
    r->tail = malloc(r->ty->stderr_tail + 1);
    if (buf == NULL || r->out == NULL || r->tail == NULL) {
        free(buf);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    rc = make_pipes(r, w, err, errlen);
    if (rc == 0) {
        in = input != NULL ? input_fd(input) : high_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (in < 0) {
            rc = -EIO;
            snprintf(err, errlen, "stdin: %s", strerror(errno));
        }
    }
    if (rc == 0)
        rc = run_spawn(r->ty, in, w, workdir, argv, envp, &r->pid, err, errlen);
    if (in >= 0)
        close(in);
    for (int i = 0; i < 3; i++)
        close_fd(&w[i]);
    if (rc == 0)
        supervise(r, buf);
    for (int i = 0; i < 3; i++)
        close_fd(&r->fds[i]);
    free(buf);
    return rc;
}

void run_free(struct exec_run *r)
{
    free(r->out);
    free(r->tail);
    r->out = r->tail = NULL;
}

char *run_stderr_tail(const struct exec_run *r)
{
    size_t cap = r->ty->stderr_tail, start = 0;
    char *s = malloc(r->tail_len + 1);
    if (s == NULL)
        return NULL;
    for (size_t i = 0; i < r->tail_len; i++)
        s[i] = r->tail[(r->tail_pos + cap - r->tail_len + i) % cap];
    s[r->tail_len] = '\0';
    /* Cut from the first UTF-8 lead byte, so the tail starts with a whole
     * character. */
    while (start < r->tail_len && ((unsigned char)s[start] & 0xc0) == 0x80 && start < 4)
        start++;
    memmove(s, s + start, r->tail_len - start + 1);
    return s;
}

/* ---- Progress ------------------------------------------------------------ */

static void report(struct exec_run *r, double percent, const char *msg)
{
    if (!isfinite(percent))
        return;
    percent = percent < 0 ? 0 : percent > 100 ? 100 : percent;
    if (percent < r->percent)
        return; /* progress only rises */
    r->percent = percent;
    if (msg != NULL && msg[0] != '\0')
        avt_progress(r->task, percent, "%s", msg);
    else
        avt_progress(r->task, percent, NULL);
}

/* "@progress PERCENT [MESSAGE]" */
static int protocol_line(struct exec_run *r, const char *line)
{
    char *end;
    if (strncmp(line, "@progress ", 10) != 0)
        return 0;
    double v = strtod(line + 10, &end);
    if (end == line + 10 || (*end != '\0' && *end != ' '))
        return 1; /* a progress line, but a bad one: dropped */
    while (*end == ' ')
        end++;
    report(r, v, end);
    return 1;
}

int progress_line(struct exec_run *r, const char *line)
{
    const struct exec_type *ty = r->ty;
    regmatch_t m[2];
    if (!ty->has_pattern)
        return protocol_line(r, line);
    if (regexec(&ty->pattern, line, 2, m, 0) != 0)
        return 0;
    if (m[1].rm_so >= 0) {
        char num[64], *end;
        size_t n = (size_t)(m[1].rm_eo - m[1].rm_so);
        if (n > 0 && n < sizeof(num)) {
            memcpy(num, line + m[1].rm_so, n);
            num[n] = '\0';
            double v = strtod(num, &end);
            if (*end == '\0' && v >= 0)
                report(r, v * ty->scale / r->total * 100.0, NULL);
        }
    }
    return 1;
}
