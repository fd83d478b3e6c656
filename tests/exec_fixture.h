/*
 * exec_fixture.h - what the exec plugin's unit tests share
 * (test_plugin_exec.c, test_plugin_exec_warm.c): a fresh pair of types and
 * work directories, a declaration written into the first, the plugin
 * started on both against the mock host, and one task of the test's type
 * run to its single outcome.
 *
 * Included after the plugin's sources and mock_host.h, tap.h, by a test
 * that first defines EXEC_FIXTURE_NAME (in the directories' names) and
 * EXEC_FIXTURE_TYPE (the type run() runs).
 */
#ifndef AVT_TESTS_EXEC_FIXTURE_H
#define AVT_TESTS_EXEC_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static char types_dir[64];
static char work_dir[64];

/* types_dir/NAME.json holding json, mode 0644. */
static void write_decl(const char *name, const char *json)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s.json", types_dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(json, f);
    fclose(f);
    chmod(path, 0644);
}

/* New, empty types and work directories; the previous pair is removed. */
static void fresh_dirs(void)
{
    if (types_dir[0] != '\0')
        exec_rmtree(types_dir);
    if (work_dir[0] != '\0')
        exec_rmtree(work_dir);
    snprintf(types_dir, sizeof(types_dir), "/tmp/avt-" EXEC_FIXTURE_NAME "-types.XXXXXX");
    snprintf(work_dir, sizeof(work_dir), "/tmp/avt-" EXEC_FIXTURE_NAME "-work.XXXXXX");
    if (mkdtemp(types_dir) == NULL || mkdtemp(work_dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    chmod(types_dir, 0755);
}

/* init, configure and start the plugin on the current directories; returns
 * the start() result and leaves its message in err. */
static int start_plugin(void **state, char *err, size_t errlen)
{
    if (mock_plugin_init(&avt_plugin, state) != 0 ||
        mock_plugin_configure(&avt_plugin, *state, "types_dir", types_dir, err, errlen) != 0 ||
        mock_plugin_configure(&avt_plugin, *state, "work_dir", work_dir, err, errlen) != 0)
        return -EIO;
    err[0] = '\0';
    return avt_plugin.start(*state, err, errlen);
}

/* One task of EXEC_FIXTURE_TYPE with params, run to its one outcome. */
static struct mock_task *run(void *state, const char *params)
{
    struct mock_task *mt = mock_task_new(EXEC_FIXTURE_TYPE, params);
    mock_run(&avt_plugin, state, mt);
    EXPECT_EQ_INT(mt->rc, 0);
    EXPECT_EQ_INT(mt->noutcomes, 1);
    EXPECT_EQ_INT(mt->violations, 0);
    return mt;
}

#endif /* AVT_TESTS_EXEC_FIXTURE_H */
