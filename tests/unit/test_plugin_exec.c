/*
 * test_plugin_exec.c - unit tests of the exec plugin against the mock host,
 * with real child processes: argv templates (no shell, whole values),
 * invalid params, the result from stdout (JSON, text, none), the stdout cap
 * and the stderr tail, the exit status mapping, death by a signal, the
 * progress protocol (stdout, an fd, a pattern against a duration param),
 * cancellation and the deadline (nothing left of the process group, no
 * zombie), the environment allowlist, the task directory, rlimits, nice,
 * closed fds, and the declaration checks.
 */
#include "exec/decl.c"
#include "exec/exec.c"
#include "exec/run.c"
#include "exec/warm.c"
#include "exec/warmchild.c"
#include "exec/warmline.c"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "mock_host.h"
#include "tap.h"

#define EXEC_FIXTURE_NAME "exec"
#define EXEC_FIXTURE_TYPE "t"
#include "exec_fixture.h"

/* One type `t` declared as json, started; NULL (and a failed check) if it
 * does not start. */
static void *with_type(const char *json)
{
    void *state = NULL;
    char err[EXEC_ERRLEN];
    fresh_dirs();
    write_decl("t", json);
    int rc = start_plugin(&state, err, sizeof(err));
    if (rc != 0) {
        printf("# start: %s\n", err);
        EXPECT_EQ_INT(rc, 0);
        mock_plugin_shutdown(&avt_plugin, state);
        return NULL;
    }
    return state;
}

static void done(void *state)
{
    mock_plugin_shutdown(&avt_plugin, state);
}

/* The process group `pgid` has no member left running, and no zombie of
 * ours (a background child the group's leader left is reparented to init,
 * which reaps it when it will). */
static int group_gone_now(pid_t pgid, int quiet)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;
    while (d != NULL && (e = readdir(d)) != NULL && !found) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *rp = strrchr(buf, ')');
        int pgrp = 0, ppid = 0;
        char st;
        if (rp != NULL && sscanf(rp + 2, "%c %d %d", &st, &ppid, &pgrp) == 3 && pgrp == pgid &&
            (st != 'Z' || ppid == getpid())) {
            if (!quiet)
                printf("# /proc/%s is still in group %d (state %c)\n", e->d_name, (int)pgid, st);
            found = 1;
        }
    }
    if (d != NULL)
        closedir(d);
    return !found;
}

/* ... within 10 s: SIGKILL is delivered asynchronously, so a member may
 * still be on its way out when the handler returns. */
static int group_gone(pid_t pgid)
{
    for (int i = 0; i < 1000; i++) {
        if (group_gone_now(pgid, 1))
            return 1;
        usleep(10000);
    }
    return group_gone_now(pgid, 0);
}

static pid_t read_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = -1;
    if (f != NULL) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = -1;
        fclose(f);
    }
    return pid;
}

/* ---- Templates and params ------------------------------------------------ */

TEST(template_whole_values_no_shell)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", "
                        "\"printf '{\\\"a\\\":\\\"%s\\\",\\\"b\\\":\\\"%s\\\",\\\"n\\\":%s}' "
                        "\\\"$1\\\" \\\"$2\\\" \\\"$#\\\"\", \"sh\", \"{params.name}\", "
                        "\"x={params.n}:{params.f}:{params.ok}\"]}");
    ASSERT(s != NULL);
    struct mock_task *mt =
        run(s, "{\"name\": \"a b; $(touch /tmp/avt-pwned) `id` *\", \"n\": 42, \"f\": 1.5, "
               "\"ok\": true}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "a"), "a b; $(touch /tmp/avt-pwned) `id` *");
    EXPECT_EQ_STR(mock_data_str(mt, "b"), "x=42:1.5:true");
    EXPECT_EQ_INT(mock_data_int(mt, "n"), 2); /* two arguments, never split */
    EXPECT(access("/tmp/avt-pwned", F_OK) != 0);
    mock_task_free(mt);
    done(s);
}

TEST(invalid_params_are_invalid_input)
{
    void *s = with_type("{\"argv\": [\"/bin/echo\", \"{params.x}\"], \"result\": \"none\"}");
    static const char *const cases[][2] = {
        {"{}", "param 'x' is missing (argv[1] of t needs it)"},
        {"{\"x\": null}", "param 'x' is null, not a string, number or boolean"},
        {"{\"x\": {\"y\": 1}}", "param 'x' is an object"},
        {"{\"x\": [1]}", "param 'x' is an array"},
        {"{\"x\": \"a\\u0000b\"}", "param 'x' contains a NUL character"},
    };
    ASSERT(s != NULL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mock_task *mt = run(s, cases[i][0]);
        EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
        EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
        EXPECT_CONTAINS(mt->message, cases[i][1]);
        mock_task_free(mt);
    }
    struct mock_task *mt = run(s, "[1]");
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    mock_task_free(mt);
    done(s);
}

/* ---- Result ------------------------------------------------------------- */

TEST(params_on_stdin_and_json_result)
{
    void *s = with_type("{\"argv\": [\"cat\"], \"stdin\": \"params\"}");
    ASSERT(s != NULL);
    const char *p = "{\"msg\": \"héllo\", \"list\": [1, 2, {\"k\": null}], \"n\": 3}";
    struct mock_task *mt = run(s, p);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(json_equal(mt->data, mt->pub.params));
    mock_task_free(mt);
    done(s);
}

TEST(result_must_be_an_object)
{
    void *s = with_type("{\"argv\": [\"/bin/echo\", \"{params.out}\"]}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{\"out\": \"[1, 2]\"}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "exited 0 without a JSON object on stdout (not an object)");
    mock_task_free(mt);
    mt = run(s, "{\"out\": \"{oops\"}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "without a JSON object on stdout");
    mock_task_free(mt);
    done(s);
}

TEST(text_result_under_key)
{
    void *s = with_type("{\"argv\": [\"/bin/echo\", \"-n\", \"{params.out}\"], \"result\": "
                        "\"text\", \"result_key\": \"said\"}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{\"out\": \"plain → text\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "said"), "plain → text");
    mock_task_free(mt);
    done(s);
}

TEST(stdout_cap_stops_the_command)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"yes\"], \"stdout_max_bytes\": 1000}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "stopped: stdout over stdout_max_bytes (1000)");
    mock_task_free(mt);
    done(s);
}

TEST(stderr_tail_in_message_and_log)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 200 ]; do echo "
                        "noise-noise-noise-noise-noise-noise >&2; i=$((i+1)); done; echo "
                        "THE-REAL-REASON >&2; exit 3\"], \"stderr_tail_bytes\": 100}");
    ASSERT(s != NULL);
    mock_reset();
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    EXPECT_CONTAINS(mt->message, "/bin/sh exited with status 3; stderr: ");
    EXPECT_CONTAINS(mt->message, "THE-REAL-REASON");
    EXPECT(strlen(mt->message) < 200);
    EXPECT(mock_log_contains("THE-REAL-REASON"));
    mock_task_free(mt);
    done(s);
}

/* ---- Exit status and signals ------------------------------------------------ */

static const char *code_of_exit(void *s, int status)
{
    static char code[64];
    char p[64];
    snprintf(p, sizeof(p), "{\"st\": %d}", status);
    struct mock_task *mt = run(s, p);
    snprintf(code, sizeof(code), "%s", mt->code != NULL ? mt->code : "(none)");
    mock_task_free(mt);
    return code;
}

TEST(exit_status_mapping_defaults_and_declared)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"exit $1\", \"sh\", \"{params.st}\"], "
                        "\"result\": \"none\"}");
    ASSERT(s != NULL);
    EXPECT_EQ_STR(code_of_exit(s, 1), AVT_PERMANENT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 75), AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 69), AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 65), AVT_INVALID_INPUT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 0), "(none)");
    done(s);
    s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"exit $1\", \"sh\", \"{params.st}\"], "
                  "\"result\": \"none\", \"exit_codes\": {\"default\": \"INVALID_INPUT_ERROR\", "
                  "\"1\": \"TRANSIENT_ERROR\", \"75\": \"PERMANENT_ERROR\"}}");
    ASSERT(s != NULL);
    EXPECT_EQ_STR(code_of_exit(s, 1), AVT_TRANSIENT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 75), AVT_PERMANENT_ERROR);
    EXPECT_EQ_STR(code_of_exit(s, 2), AVT_INVALID_INPUT_ERROR);
    done(s);
}

TEST(death_by_signal_is_transient)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"echo dying >&2; kill -SEGV $$\"]}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_CONTAINS(mt->message, "/bin/sh was killed by signal 11 (SIGSEGV); stderr: dying");
    mock_task_free(mt);
    done(s);
}

TEST(cannot_run_is_transient)
{
    char script[128];
    snprintf(script, sizeof(script), "/tmp/avt-exec-gone.%d", (int)getpid());
    FILE *f = fopen(script, "w");
    ASSERT(f != NULL);
    fputs("#!/bin/sh\necho '{}'\n", f);
    fclose(f);
    chmod(script, 0755);
    char json[256];
    snprintf(json, sizeof(json), "{\"argv\": [\"%s\"]}", script);
    void *s = with_type(json);
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    mock_task_free(mt);
    unlink(script);
    mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_CONTAINS(mt->message, "cannot run");
    EXPECT_CONTAINS(mt->message, "No such file or directory");
    mock_task_free(mt);
    done(s);
}

/* ---- Progress ------------------------------------------------------------- */

TEST(progress_protocol_on_stdout_beside_json)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"echo '@progress 10 starting'; "
                        "echo '{\\\"ok\\\":'; echo '@progress 60 half way'; echo '@progress 40 "
                        "back'; echo '@progress x bad'; echo 'true}'\"], \"progress\": {}}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(json_is_true(json_object_get(mt->data, "ok")));
    EXPECT_EQ_INT(mt->nprogress, 3);
    EXPECT(mt->percents[0] == 10 && mt->percents[1] == 60 && mt->percents[2] == 100);
    mock_task_free(mt);
    done(s);
}

TEST(progress_on_declared_fd)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"echo '@progress 25 a' >&3; echo "
                        "'@progress 75' >&3; echo '{}'\"], \"progress\": {\"source\": \"fd\", "
                        "\"fd\": 3}}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mt->nprogress, 3);
    EXPECT(mt->percents[0] == 25 && mt->percents[1] == 75 && mt->percents[2] == 100);
    mock_task_free(mt);
    done(s);
}

TEST(progress_pattern_against_duration_param)
{
    /* What ffmpeg -progress pipe:1 prints (out_time_ms is in microseconds). */
    void *s = with_type(
        "{\"argv\": [\"/bin/sh\", \"-c\", \"printf 'frame=1\\\\nout_time_ms=500000\\\\n"
        "progress=continue\\\\nout_time_ms=-9223372036854775807\\\\nout_time_ms=1000000\\\\n"
        "out_time_ms=1500000\\\\nprogress=end\\\\n'\"], \"result\": \"none\", \"progress\": "
        "{\"pattern\": \"^out_time_ms=([0-9]+)$\", \"scale\": 0.000001, \"total_param\": "
        "\"duration\"}}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{\"duration\": 2}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mt->nprogress, 4);
    EXPECT(mt->percents[0] == 25 && mt->percents[1] == 50 && mt->percents[2] == 75 &&
           mt->percents[3] == 100);
    mock_task_free(mt);
    mt = run(s, "{\"duration\": \"4.0\"}");
    EXPECT(mt->nprogress == 4 && mt->percents[0] == 12.5);
    mock_task_free(mt);
    mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    EXPECT_CONTAINS(mt->message, "param 'duration' must be a number above 0");
    mock_task_free(mt);
    done(s);
}

/* ---- Cancellation and deadline -------------------------------------------- */

/* A command that starts a background child, ignores SIGTERM when asked
 * to, and writes its pid (its process group) to params.pidfile. */
static const char *stubborn =
    "{\"argv\": [\"/bin/sh\", \"-c\", \"[ \\\"$2\\\" = 1 ] && trap '' TERM; echo $$ > \\\"$1\\\"; "
    "sleep 1000 & sleep 1000; wait\", \"sh\", \"{params.pidfile}\", \"{params.ignore}\"], "
    "\"kill_grace_seconds\": 0.3}";

static void stop_leaves_nothing(int ignore_term, int by_deadline)
{
    char pidfile[128], params[256];
    snprintf(pidfile, sizeof(pidfile), "/tmp/avt-exec-pid.%d", (int)getpid());
    unlink(pidfile);
    snprintf(params, sizeof(params), "{\"pidfile\": \"%s\", \"ignore\": %d}", pidfile, ignore_term);
    void *s = with_type(stubborn);
    ASSERT(s != NULL);
    struct mock_task *mt = mock_task_new("t", params);
    if (by_deadline)
        mt->pub.deadline = now_real() + 0.5;
    else
        mock_cancel_after_ms(mt, 500);
    mock_run(&avt_plugin, s, mt);
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, by_deadline ? AVT_TIMEOUT_ERROR : AVT_TRANSIENT_ERROR);
    if (!by_deadline)
        EXPECT_EQ_STR(mt->message, "cancelled");
    pid_t pid = read_pid(pidfile);
    EXPECT(pid > 0);
    EXPECT(group_gone(pid));
    EXPECT(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD); /* reaped */
    unlink(pidfile);
    mock_task_free(mt);
    done(s);
}

TEST(cancel_kills_the_group)
{
    stop_leaves_nothing(0, 0);
}

TEST(cancel_kills_a_group_that_ignores_sigterm)
{
    stop_leaves_nothing(1, 0);
}

TEST(deadline_is_timeout_error)
{
    stop_leaves_nothing(0, 1);
}

TEST(background_child_dies_with_the_command)
{
    char pidfile[128], params[256];
    snprintf(pidfile, sizeof(pidfile), "/tmp/avt-exec-bg.%d", (int)getpid());
    snprintf(params, sizeof(params), "{\"pidfile\": \"%s\"}", pidfile);
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"echo $$ > \\\"$1\\\"; sleep 1000 "
                        ">/dev/null 2>&1 & echo '{}'\", \"sh\", \"{params.pidfile}\"]}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, params);
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT(group_gone(read_pid(pidfile)));
    unlink(pidfile);
    mock_task_free(mt);
    done(s);
}

/* ---- Isolation ------------------------------------------------------------ */

TEST(environment_allowlist_and_task_directory)
{
    setenv("AVT_TEST_SECRET", "hunter2", 1);
    setenv("AVT_TEST_PASSED", "yes", 1);
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"env; echo CWD=$(pwd); touch "
                        "made-here\"], \"result\": \"text\", \"env\": [\"PATH\", "
                        "\"AVT_TEST_PASSED\"], \"env_set\": {\"FIXED\": \"1\"}}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    const char *out = mock_data_str(mt, "output");
    ASSERT(out != NULL);
    EXPECT(strstr(out, "hunter2") == NULL);
    EXPECT_CONTAINS(out, "AVT_TEST_PASSED=yes\n");
    EXPECT_CONTAINS(out, "FIXED=1\n");
    EXPECT_CONTAINS(out, "PATH=");
    char expect[128];
    snprintf(expect, sizeof(expect), "TMPDIR=%s/avt-exec-", work_dir);
    EXPECT_CONTAINS(out, expect);
    snprintf(expect, sizeof(expect), "CWD=%s/avt-exec-", work_dir);
    EXPECT_CONTAINS(out, expect);
    /* The task directory is gone, with what the command made in it. */
    DIR *d = opendir(work_dir);
    struct dirent *e;
    int left = 0;
    while (d != NULL && (e = readdir(d)) != NULL)
        left += e->d_name[0] != '.';
    closedir(d);
    EXPECT_EQ_INT(left, 0);
    mock_task_free(mt);
    done(s);
    unsetenv("AVT_TEST_SECRET");
    unsetenv("AVT_TEST_PASSED");
}

TEST(rlimits_nice_and_closed_fds)
{
    int leak = open("/dev/null", O_RDONLY); /* not close-on-exec: must not reach the child */
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"echo $(ulimit -n) $(ulimit -t) "
                        "$(ulimit -v) $(cut -d' ' -f19 /proc/$$/stat); ls /proc/$$/fd | tr "
                        "'\\\\n' ' '\"], \"result\": \"text\", \"rlimits\": {\"cpu_seconds\": "
                        "30, \"address_space_mb\": 2048, \"open_files\": 64}, \"nice\": 7}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_STR(mock_data_str(mt, "output"), "64 30 2097152 7\n0 1 2 ");
    mock_task_free(mt);
    done(s);
    close(leak);
}

TEST(cpu_limit_kills_and_is_transient)
{
    void *s = with_type("{\"argv\": [\"/bin/sh\", \"-c\", \"while :; do :; done\"], "
                        "\"rlimits\": {\"cpu_seconds\": 1}}");
    ASSERT(s != NULL);
    struct mock_task *mt = run(s, "{}");
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    EXPECT_CONTAINS(mt->message, "was killed by signal");
    mock_task_free(mt);
    done(s);
}

/* ---- Declarations ------------------------------------------------------------- */

static void expect_decl_error(const char *json, const char *what)
{
    void *state = NULL;
    char err[EXEC_ERRLEN];
    fresh_dirs();
    write_decl("bad", json);
    EXPECT(start_plugin(&state, err, sizeof(err)) < 0);
    EXPECT_CONTAINS(err, "/bad.json:");
    EXPECT_CONTAINS(err, what);
    mock_plugin_shutdown(&avt_plugin, state);
}

TEST(declaration_errors_name_file_and_member)
{
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"stdout_max\": 5}",
                      "unknown member \"stdout_max\"");
    expect_decl_error("{}", "argv: required");
    expect_decl_error("{\"argv\": [\"{params.prog}\"]}", "argv[0]: the program is fixed");
    expect_decl_error("{\"argv\": [\"/bin/true\", \"{params.a b}\"]}",
                      "argv[1] \"{params.a b}\": a placeholder is {params.NAME}");
    expect_decl_error("{\"argv\": [\"no-such-program-avt\"]}",
                      "argv[0] \"no-such-program-avt\": not found in PATH");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"exit_codes\": {\"1\": \"OOPS\"}}",
                      "exit_codes: each value is TRANSIENT_ERROR");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"progress\": {\"pattern\": \"a(b\"}}",
                      "progress.pattern: ");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"progress\": {\"pattern\": \"ab\"}}",
                      "exactly one capture group");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"progress\": {\"source\": \"fd\", \"fd\": 1}}",
                      "progress.fd: a file descriptor from 3 to 9");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"env\": [\"TMPDIR\"]}", "env[0]");
    expect_decl_error("{\"argv\": [\"/bin/true\"], \"rlimits\": {\"cpu\": 1}}",
                      "rlimits.cpu: unknown");
    expect_decl_error("{\"argv\": [\"/bin/true\"],}", "");
}

TEST(plugin_configuration_and_types)
{
    void *state = NULL;
    char err[EXEC_ERRLEN];
    fresh_dirs();
    /* Not set up: no types, and no error (the plugin is installed with
     * the others; the daemon starts without [plugin.exec]). */
    ASSERT(mock_plugin_init(&avt_plugin, &state) == 0);
    EXPECT_EQ_INT(avt_plugin.start(state, err, sizeof(err)), 0);
    EXPECT(avt_plugin.types(state)[0] == NULL);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, state, "typesdir", "/x", err, sizeof(err)),
                  -EINVAL);
    EXPECT_CONTAINS(err, "exec knows types_dir, work_dir");
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, state, "types_dir", "rel", err, sizeof(err)),
                  -EINVAL);
    mock_plugin_shutdown(&avt_plugin, state);

    /* Empty directory; then two types, listed by types(); a README is ignored. */
    EXPECT(start_plugin(&state, err, sizeof(err)) < 0);
    EXPECT_CONTAINS(err, "no *.json declaration");
    mock_plugin_shutdown(&avt_plugin, state);
    write_decl("zz.transcode", "{\"argv\": [\"/bin/true\"]}");
    write_decl("aa", "{\"argv\": [\"/bin/true\"]}");
    char readme[128];
    snprintf(readme, sizeof(readme), "%s/README.txt", types_dir);
    FILE *f = fopen(readme, "w");
    ASSERT(f != NULL);
    fclose(f);
    ASSERT(start_plugin(&state, err, sizeof(err)) == 0);
    const char *const *t = avt_plugin.types(state);
    EXPECT_EQ_STR(t[0], "aa");
    EXPECT_EQ_STR(t[1], "zz.transcode");
    EXPECT(t[2] == NULL);
    mock_plugin_shutdown(&avt_plugin, state);

    /* A declaration others can write is refused. */
    char path[128];
    snprintf(path, sizeof(path), "%s/aa.json", types_dir);
    chmod(path, 0666);
    EXPECT(start_plugin(&state, err, sizeof(err)) < 0);
    EXPECT_CONTAINS(err, "aa.json: writable by others (mode 0666");
    mock_plugin_shutdown(&avt_plugin, state);
    exec_rmtree(types_dir);
    exec_rmtree(work_dir);
}

TAP_MAIN()
