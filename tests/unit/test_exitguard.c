/*
 * test_exitguard.c - the exit hook (exitguard.h), each case in a child
 * process that installs it and then exits one way or another: the
 * daemon's own exits (main's after exitguard_own_exit, fatalx) keep their
 * status; exit() and quick_exit() inside a plugin site end with status 70
 * and one crit line naming the plugin, the call and the task; an exit
 * outside any site (a plugin's own thread) too, saying so; sites nest and
 * are per thread.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitguard.h"
#include "log.h"
#include "tap.h"
#include "util.h"

enum how { OWN_EXIT, FATALX, PLUGIN_EXIT, PLUGIN_QUICK_EXIT, NESTED_LEFT, OTHER_THREAD };

static const struct exitguard_site handler = {
    .plugin = "p1", .call = "handler", .type = "resize", .task_id = "t-1", .job_id = "j-1"};
static const struct exitguard_site init_site = {.plugin = "p2", .call = "init()"};

static void *thread_exit(void *arg)
{
    (void)arg;
    exit(4); /* this thread never entered a site */
}

static void child(enum how how)
{
    log_init(LOG_INFO, LOG_FORMAT_PLAIN);
    exitguard_install();
    switch (how) {
    case OWN_EXIT:
        exitguard_enter(&handler); /* even with a site: the daemon said so */
        exitguard_own_exit();
        exit(3);
    case FATALX:
        exitguard_enter(&handler);
        fatalx("an invariant broke");
    case PLUGIN_EXIT:
        exitguard_enter(&handler);
        exit(0);
    case PLUGIN_QUICK_EXIT:
        exitguard_enter(&init_site);
        quick_exit(0);
    case NESTED_LEFT: {
        const struct exitguard_site *prev = exitguard_enter(&init_site);
        const struct exitguard_site *inner = exitguard_enter(&handler);
        exitguard_leave(inner); /* back in init() */
        if (inner != &init_site || prev != NULL)
            _exit(98);
        exit(0);
    }
    case OTHER_THREAD: {
        exitguard_enter(&handler); /* the main thread's site, not the exiting one's */
        pthread_t th;
        pthread_create(&th, NULL, thread_exit, NULL);
        pthread_join(th, NULL);
        exit(1);
    }
    }
    _exit(99);
}

/* Run child(how) with stderr captured; returns its exit status (-1: not an
 * exit) and its stderr (caller frees). */
static int run(enum how how, char **log)
{
    char path[] = "/tmp/avt-test-exitguard.XXXXXX";
    int fd = mkstemp(path);
    *log = NULL;
    if (fd < 0)
        return -2;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, STDERR_FILENO);
        child(how);
    }
    close(fd);
    int st = 0;
    waitpid(pid, &st, 0);
    *log = read_file(path, 1 << 16, NULL);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

TEST(the_daemons_own_exits_keep_their_status)
{
    char *log;
    EXPECT_EQ_INT(run(OWN_EXIT, &log), 3);
    EXPECT(log != NULL && strstr(log, " crit ") == NULL);
    free(log);
    EXPECT_EQ_INT(run(FATALX, &log), 1);
    EXPECT(log != NULL && strstr(log, "an invariant broke") != NULL);
    EXPECT(log != NULL && strstr(log, " crit ") == NULL);
    free(log);
}

TEST(an_exit_in_a_plugin_ends_with_70_naming_plugin_and_task)
{
    char *log;
    EXPECT_EQ_INT(run(PLUGIN_EXIT, &log), EXITGUARD_STATUS);
    ASSERT(log != NULL);
    EXPECT_EQ_INT(count(log, " crit "), 1);
    EXPECT(strstr(log, "plugin p1 called exit(0) in its handler: the daemon stops with exit "
                       "status 70") != NULL);
    EXPECT(strstr(log, "the next start reports the task as crashed") != NULL);
    EXPECT(strstr(log, " plugin=p1 task_id=t-1 job_id=j-1 type=resize\n") != NULL);
    free(log);
    EXPECT_EQ_INT(run(PLUGIN_QUICK_EXIT, &log), EXITGUARD_STATUS);
    EXPECT(log != NULL && strstr(log, "plugin p2 called quick_exit() in its init()") != NULL);
    free(log);
}

TEST(sites_nest_and_belong_to_their_thread)
{
    char *log;
    EXPECT_EQ_INT(run(NESTED_LEFT, &log), EXITGUARD_STATUS);
    EXPECT(log != NULL && strstr(log, "plugin p2 called exit(0) in its init()") != NULL);
    free(log);
    EXPECT_EQ_INT(run(OTHER_THREAD, &log), EXITGUARD_STATUS);
    EXPECT(log != NULL && strstr(log, " crit exit(4) was called by code that is not the "
                                      "daemon's") != NULL);
    EXPECT(log != NULL && strstr(log, "plugin=p1") == NULL);
    free(log);
}

TAP_MAIN()
