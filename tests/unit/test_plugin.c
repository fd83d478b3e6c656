/*
 * test_plugin.c - unit tests of the plugin loader against the test plugins
 * built into BUILD/tests/plugins (BUILD from $AVT_BUILD, or else derived
 * from this binary's path, BUILD/tests/unit/test_plugin). Each test makes a
 * private plugin directory of symlinks or copies, loads it, and checks the
 * return code and the message; a hand-made struct cfg stands in for the
 * [plugin.NAME] sections. Also pins the ABI struct sizes.
 */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg.h"
#include "tap.h"
#include "util.h"

/* ---- ABI layout ----------------------------------------------------------
 * An accidental change of a public struct breaks every plugin built before
 * it. These sizes may only grow (minor bump, fields appended) or change with
 * a major bump; update them deliberately. */
#if defined(__x86_64__) && defined(__LP64__)
_Static_assert(sizeof(struct avt_plugin) == 88, "struct avt_plugin changed size");
_Static_assert(sizeof(struct avt_task) == 72, "struct avt_task changed size");
_Static_assert(sizeof(struct avt_host) == 96, "struct avt_host changed size");
_Static_assert(sizeof(struct avt_skill) == 64, "struct avt_skill changed size");
_Static_assert(offsetof(struct avt_plugin, abi_version) == 0, "abi_version must come first");
_Static_assert(offsetof(struct avt_plugin, struct_size) == 4, "struct_size must be second");
_Static_assert(offsetof(struct avt_plugin, task_types) == 24, "avt_plugin layout changed");
_Static_assert(offsetof(struct avt_plugin, handle) == 56, "avt_plugin layout changed");
_Static_assert(offsetof(struct avt_task, params) == 40, "avt_task layout changed");
_Static_assert(offsetof(struct avt_host, succeed) == 16, "avt_host layout changed");
_Static_assert(offsetof(struct avt_host, log) == 80, "avt_host layout changed");
/* ABI 1.1 appended: */
_Static_assert(offsetof(struct avt_plugin, skills) == 72, "avt_plugin 1.1 layout changed");
_Static_assert(offsetof(struct avt_task, deadline) == 64, "avt_task 1.1 layout changed");
_Static_assert(offsetof(struct avt_host, emit_event) == 88, "avt_host 1.1 layout changed");
/* ABI 1.2 appended: */
_Static_assert(offsetof(struct avt_plugin, types) == 80, "avt_plugin 1.2 layout changed");
#endif
_Static_assert(offsetof(struct plugin, host) == 0, "plugin_of_host() needs host first");

TEST(abi_sizes_pinned)
{
    /* The real check is the _Static_assert above; this records it ran. */
#if defined(__x86_64__)
    EXPECT_EQ_INT(sizeof(struct avt_plugin), 88);
    EXPECT_EQ_INT(sizeof(struct avt_host), 96);
#endif
    EXPECT_EQ_INT(AVT_ABI_VERSION_MAJOR(AVT_ABI_VERSION), AVT_ABI_MAJOR);
    EXPECT_EQ_INT(AVT_ABI_VERSION_MINOR(AVT_ABI_VERSION), AVT_ABI_MINOR);
}

/* ---- Helpers -------------------------------------------------------------- */

static char build_dir[PATH_MAX];

static const char *build(void)
{
    if (build_dir[0] != '\0')
        return build_dir;
    const char *env = getenv("AVT_BUILD");
    if (env != NULL && env[0] != '\0') {
        snprintf(build_dir, sizeof(build_dir), "%s", env);
        return build_dir;
    }
    ssize_t n = readlink("/proc/self/exe", build_dir, sizeof(build_dir) - 1);
    build_dir[n > 0 ? n : 0] = '\0';
    for (int i = 0; i < 3; i++) { /* Strip "/test_plugin", "/unit", "/tests". */
        char *slash = strrchr(build_dir, '/');
        if (slash != NULL)
            *slash = '\0';
    }
    return build_dir;
}

/* BUILD/tests/plugins/NAME.so; caller frees. */
static char *so_path(const char *name)
{
    return xasprintf("%s/tests/plugins/%s.so", build(), name);
}

static char *make_dir(void)
{
    char tmpl[] = "/tmp/avt-test-plugin.XXXXXX";
    char *d = mkdtemp(tmpl);
    if (d == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    chmod(d, 0755);
    return xstrdup(d);
}

/* dir/link_name -> the built plugin `name`. */
static void link_plugin(const char *dir, const char *link_name, const char *name)
{
    char *src = so_path(name);
    char *dst = xasprintf("%s/%s", dir, link_name);
    if (symlink(src, dst) < 0)
        perror(dst);
    free(src);
    free(dst);
}

/* A copy of the built plugin `name` at dir/file_name with `mode`. */
static char *copy_plugin(const char *dir, const char *file_name, const char *name, mode_t mode)
{
    char *src = so_path(name);
    char *dst = xasprintf("%s/%s", dir, file_name);
    size_t len = 0;
    char *data = read_file(src, 64 << 20, &len);
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (data == NULL || fd < 0 || write(fd, data, len) != (ssize_t)len)
        perror(dst);
    if (fd >= 0)
        close(fd);
    chmod(dst, mode);
    free(data);
    free(src);
    return dst;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *p = xasprintf("%s/%s", dir, name);
    FILE *fp = fopen(p, "w");
    if (fp != NULL) {
        fputs(text, fp);
        fclose(fp);
    }
    free(p);
}

static void remove_dir(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = xasprintf("%s/%s", dir, e->d_name);
        unlink(p);
        free(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
    free(dir);
}

static void add_key(struct cfg *c, const char *plugin, const char *key, const char *value, int line)
{
    c->plugin_keys = xrealloc(c->plugin_keys, (c->nplugin_keys + 1) * sizeof(*c->plugin_keys));
    c->plugin_keys[c->nplugin_keys++] = (struct cfg_plugin_key){
        xstrdup(plugin), xstrdup(key), xstrdup(value), xstrdup("worker.ini"), line};
}

static void free_keys(struct cfg *c)
{
    for (size_t i = 0; i < c->nplugin_keys; i++) {
        struct cfg_plugin_key *k = &c->plugin_keys[i];
        free(k->plugin);
        free(k->key);
        free(k->value);
        free(k->file);
    }
    free(c->plugin_keys);
    c->plugin_keys = NULL;
    c->nplugin_keys = 0;
}

/* Load dir, expect failure, and leave the message in err. */
static int load_fails(const char *dir, const struct cfg *cfg, char *err)
{
    struct plugin_set *set = (struct plugin_set *)(void *)&set; /* must be reset to NULL */
    err[0] = '\0';
    int rc = plugin_set_load(dir, cfg, NULL, &set, err, AVT_ERRLEN);
    EXPECT(rc < 0);
    EXPECT(set == NULL);
    if (rc == 0)
        plugin_set_destroy(set);
    return rc;
}

/* A dir holding only the plugin `name`; expect refusal with `what`. */
static void expect_refused(const char *name, const char *what)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    char *file = xasprintf("%s.so", name);
    link_plugin(dir, file, name);
    load_fails(dir, NULL, err);
    char *path = xasprintf("%s/%s", dir, file);
    EXPECT_CONTAINS(err, path);
    EXPECT_CONTAINS(err, what);
    free(path);
    free(file);
    remove_dir(dir);
}

/* A symbol of the plugin at `path`, through our own dlopen() reference,
 * which also keeps it mapped whatever plugin_set_destroy() does. */
static void *plugin_sym(const char *path, const char *sym, void **dl)
{
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    return *dl != NULL ? dlsym(*dl, sym) : NULL;
}

/* ---- Loading good plugins --------------------------------------------------- */

TEST(good_plugin_loads_with_host_table_and_registry)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN] = "";
    char *path = so_path("good_plain");
    void *dl;
    const struct avt_host **hostp = plugin_sym(path, "good_plain_host", &dl);
    int *shutdowns = dlsym(dl, "good_plain_shutdowns");
    ASSERT(hostp != NULL && shutdowns != NULL);
    link_plugin(dir, "good_plain.so", "good_plain");
    write_file(dir, "README.txt", "not a plugin\n");
    write_file(dir, ".hidden.so", "editor backup, ignored\n");
    int evq_word = 0;
    struct evq *evq = (struct evq *)(void *)&evq_word;
    struct plugin_set *set = NULL;
    int before = *shutdowns;
    int rc = plugin_set_load(dir, NULL, evq, &set, err, sizeof(err));
    EXPECT_EQ_INT(rc, 0);
    ASSERT(set != NULL);
    EXPECT_EQ_INT(set->nplugins, 1);
    struct plugin *p = plugin_set_find(set, "plain_a");
    ASSERT(p != NULL);
    EXPECT(plugin_set_find(set, "plain_b") == p);
    EXPECT(plugin_set_find(set, "plain_c") == NULL);
    EXPECT(plugin_set_find(set, "") == NULL);
    EXPECT(plugin_set_find(set, NULL) == NULL);
    EXPECT_EQ_STR(p->name, "good_plain");
    EXPECT(p->host.evq == evq);
    EXPECT(*hostp == &p->host.table);
    EXPECT(plugin_of_host(&p->host.table) == p);
    EXPECT_EQ_INT(p->host.table.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_INT(p->host.table.struct_size, sizeof(struct avt_host));
    EXPECT_EQ_STR(p->host.table.daemon_version, AVT_VERSION);
    EXPECT(p->started);
    EXPECT_EQ_INT(*shutdowns, before);
    plugin_set_destroy(set);
    EXPECT_EQ_INT(*shutdowns, before + 1);
    plugin_set_destroy(NULL);
    dlclose(dl);
    free(path);
    remove_dir(dir);
}

TEST(registry_is_sorted_across_plugins)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN] = "";
    struct cfg cfg = {0};
    add_key(&cfg, "good_config", "greeting", "hello", 3);
    link_plugin(dir, "good_plain.so", "good_plain");
    link_plugin(dir, "good_config.so", "good_config");
    struct plugin_set *set = NULL;
    int rc = plugin_set_load(dir, &cfg, NULL, &set, err, sizeof(err));
    EXPECT_EQ_INT(rc, 0);
    ASSERT(set != NULL);
    EXPECT_EQ_INT(set->nplugins, 2);
    /* Loaded in name order: good_config.so before good_plain.so. */
    EXPECT_EQ_STR(set->plugins[0]->name, "good_config");
    EXPECT_EQ_INT(set->ntypes, 3);
    for (size_t i = 1; i < set->ntypes; i++)
        EXPECT(strcmp(set->types[i - 1].type, set->types[i].type) < 0);
    EXPECT_EQ_STR(plugin_set_find(set, "good_config_type")->name, "good_config");
    EXPECT_EQ_STR(plugin_set_find(set, "plain_b")->name, "good_plain");
    EXPECT(plugin_set_find(set, "good_config") == NULL);
    plugin_set_destroy(set);
    free_keys(&cfg);
    remove_dir(dir);
}

TEST(configured_types_join_the_registry)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN] = "";
    struct cfg cfg = {0};
    add_key(&cfg, "good_types", "types", "zeta alpha", 2);
    link_plugin(dir, "good_plain.so", "good_plain");
    link_plugin(dir, "good_types.so", "good_types");
    struct plugin_set *set = NULL;
    int rc = plugin_set_load(dir, &cfg, NULL, &set, err, sizeof(err));
    EXPECT_EQ_INT(rc, 0);
    ASSERT(set != NULL);
    EXPECT_EQ_INT(set->ntypes, 4);
    for (size_t i = 1; i < set->ntypes; i++)
        EXPECT(strcmp(set->types[i - 1].type, set->types[i].type) < 0);
    EXPECT_EQ_STR(plugin_set_find(set, "alpha")->name, "good_types");
    EXPECT_EQ_STR(plugin_set_find(set, "zeta")->name, "good_types");
    EXPECT_EQ_STR(plugin_set_find(set, "plain_a")->name, "good_plain");
    EXPECT(set->types[0].skill != NULL);
    plugin_set_destroy(set);
    free_keys(&cfg);

    /* No type configured: loaded, serving nothing. */
    add_key(&cfg, "good_types", "types", "", 2);
    rc = plugin_set_load(dir, &cfg, NULL, &set, err, sizeof(err));
    EXPECT_EQ_INT(rc, 0);
    ASSERT(set != NULL);
    EXPECT_EQ_INT(set->ntypes, 2);
    EXPECT(plugin_set_find(set, "zeta") == NULL);
    plugin_set_destroy(set);
    free_keys(&cfg);
    /* A bad name, a type another plugin has. */
    add_key(&cfg, "good_types", "types", "ok bad/name", 2);
    load_fails(dir, &cfg, err);
    EXPECT_CONTAINS(err, "task type #2 \"bad/name\" is invalid");
    free_keys(&cfg);
    add_key(&cfg, "good_types", "types", "plain_b", 2);
    load_fails(dir, &cfg, err);
    EXPECT_CONTAINS(err, "task type 'plain_b' is claimed by both good_plain");
    free_keys(&cfg);
    remove_dir(dir);
}

static void *lookup_thread(void *arg)
{
    const struct plugin_set *set = arg;
    long found = 0;
    for (int i = 0; i < 20000; i++) {
        found += plugin_set_find(set, (i & 1) ? "plain_a" : "good_config_type") != NULL;
        found += plugin_set_find(set, "nosuch") != NULL;
    }
    return (void *)found;
}

TEST(lookups_from_many_threads)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN] = "";
    struct cfg cfg = {0};
    add_key(&cfg, "good_config", "greeting", "hello", 3);
    link_plugin(dir, "good_plain.so", "good_plain");
    link_plugin(dir, "good_config.so", "good_config");
    struct plugin_set *set = NULL;
    EXPECT_EQ_INT(plugin_set_load(dir, &cfg, NULL, &set, err, sizeof(err)), 0);
    ASSERT(set != NULL);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        EXPECT_EQ_INT(pthread_create(&th[i], NULL, lookup_thread, set), 0);
    for (int i = 0; i < 4; i++) {
        void *found = NULL;
        pthread_join(th[i], &found);
        EXPECT_EQ_INT((long)found, 20000);
    }
    plugin_set_destroy(set);
    free_keys(&cfg);
    remove_dir(dir);
}

TEST(dlclose_unless_no_dlclose_is_set)
{
    const char *saved = getenv("AVT_NO_DLCLOSE");
    char *keep = saved != NULL ? xstrdup(saved) : NULL;
    char *dir = make_dir();
    char err[AVT_ERRLEN] = "";
    /* A private copy: nothing else in this process holds it open. */
    char *path = copy_plugin(dir, "own_copy.so", "good_plain", 0755);
    for (int no_dlclose = 0; no_dlclose <= 1; no_dlclose++) {
        if (no_dlclose)
            setenv("AVT_NO_DLCLOSE", "1", 1);
        else
            unsetenv("AVT_NO_DLCLOSE");
        struct plugin_set *set = NULL;
        EXPECT_EQ_INT(plugin_set_load(dir, NULL, NULL, &set, err, sizeof(err)), 0);
        plugin_set_destroy(set);
        void *dl = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        EXPECT((dl != NULL) == no_dlclose);
        if (dl != NULL)
            dlclose(dl);
    }
    if (keep != NULL)
        setenv("AVT_NO_DLCLOSE", keep, 1);
    else
        unsetenv("AVT_NO_DLCLOSE");
    free(keep);
    free(path);
    remove_dir(dir);
}

/* ---- Refusals ----------------------------------------------------------------- */

TEST(refuses_missing_symbol)
{
    expect_refused("bad_no_symbol", "no 'avt_plugin' symbol: not an avtworkerd plugin (define "
                                    "it with AVT_PLUGIN())");
}

TEST(refuses_function_named_avt_plugin)
{
    expect_refused("bad_func_symbol", "'avt_plugin' is not a data object");
}

TEST(refuses_symbol_smaller_than_it_claims)
{
    expect_refused("bad_tiny_symbol", "'avt_plugin' is 4 bytes, smaller than it claims");
}

TEST(refuses_other_abi_major)
{
    char *what = xasprintf("plugin ABI 2.0, this avtworkerd speaks %d.%d: rebuild the plugin "
                           "against avtworkerd %s (avt_plugin.h ABI %d.%d)",
                           AVT_ABI_MAJOR, AVT_ABI_MINOR, AVT_VERSION, AVT_ABI_MAJOR, AVT_ABI_MINOR);
    expect_refused("bad_abi_major", what);
    free(what);
}

TEST(refuses_newer_abi_minor)
{
    char *what =
        xasprintf("plugin built against ABI %d.%d, newer than this avtworkerd's %d.%d: "
                  "rebuild the plugin against avtworkerd %s or upgrade avtworkerd",
                  AVT_ABI_MAJOR, AVT_ABI_MINOR + 1, AVT_ABI_MAJOR, AVT_ABI_MINOR, AVT_VERSION);
    expect_refused("bad_abi_minor", what);
    free(what);
}

TEST(refuses_small_struct)
{
    expect_refused("bad_small_struct", "descriptor is 24 bytes, smaller than the 72 bytes of ABI "
                                       "1.0: corrupt or not built with AVT_PLUGIN()");
}

TEST(refuses_missing_handler)
{
    expect_refused("bad_no_handler", "plugin 'bad_no_handler' has no handle() function");
}

TEST(refuses_invalid_name)
{
    expect_refused("bad_bad_name", "invalid plugin name \"bad name!\"");
}

TEST(refuses_missing_and_empty_types)
{
    expect_refused("bad_no_types", "plugin 'bad_no_types' declares no task types");
    expect_refused("bad_bad_type", "task type #2 \"\" is empty");
}

TEST(refuses_failing_init)
{
    expect_refused("bad_init_fail", "init() failed: No such file or directory");
}

TEST(refuses_file_that_is_not_elf)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    char text[200];
    memset(text, 'x', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    write_file(dir, "garbage.so", text);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -ENOEXEC);
    char *what = xasprintf("%s/garbage.so: cannot load: invalid ELF header", dir);
    EXPECT_EQ_STR(err, what);
    free(what);
    write_file(dir, "garbage.so", "short\n");
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -ENOEXEC);
    what = xasprintf("%s/garbage.so: cannot load: file too short", dir);
    EXPECT_EQ_STR(err, what);
    free(what);
    remove_dir(dir);
}

TEST(refuses_dir_without_plugins)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    write_file(dir, "plugin.so.txt", "not a plugin\n");
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -ENOENT);
    char *what = xasprintf("%s: no plugins (*.so) found", dir);
    EXPECT_EQ_STR(err, what);
    free(what);
    char *missing = xasprintf("%s/nonexistent", dir);
    EXPECT_EQ_INT(load_fails(missing, NULL, err), -ENOENT);
    EXPECT_CONTAINS(err, missing);
    EXPECT_CONTAINS(err, "No such file or directory");
    free(missing);
    remove_dir(dir);
}

TEST(duplicate_type_names_both_plugins)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    link_plugin(dir, "bad_dup_type_a.so", "bad_dup_type_a");
    link_plugin(dir, "bad_dup_type_b.so", "bad_dup_type_b");
    load_fails(dir, NULL, err);
    char *a = xasprintf("%s/bad_dup_type_a.so", dir), *b = xasprintf("%s/bad_dup_type_b.so", dir);
    char *what = xasprintf("task type 'dup_type' is claimed by both bad_dup_type_a (%s) and "
                           "bad_dup_type_b (%s): a task type can have one plugin only",
                           a, b);
    EXPECT_CONTAINS(err, what);
    free(what);
    free(a);
    free(b);
    remove_dir(dir);
}

TEST(duplicate_name_names_both_files)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    link_plugin(dir, "one.so", "good_plain");
    char *two = copy_plugin(dir, "two.so", "good_plain", 0755);
    load_fails(dir, NULL, err);
    char *what = xasprintf("%s: plugin name 'good_plain' is already used by plugin 'good_plain' "
                           "(%s/one.so)",
                           two, dir);
    EXPECT_CONTAINS(err, what);
    free(what);
    free(two);
    remove_dir(dir);
}

/* ---- Permissions ----------------------------------------------------------------- */

TEST(refuses_world_writable_file_and_dir)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    char *file = copy_plugin(dir, "good_plain.so", "good_plain", 0757);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    char *what =
        xasprintf("%s: writable by others (mode 0757, owner uid %u): ", file, (unsigned)geteuid());
    EXPECT_CONTAINS(err, what);
    free(what);
    EXPECT_CONTAINS(err, "refusing to load code anyone can change; fix with chmod go-w");

    chmod(file, 0755);
    chmod(dir, 0777);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    what = xasprintf("%s: writable by others (mode 0777", dir);
    EXPECT_CONTAINS(err, what);
    free(what);
    chmod(dir, 0755);
    free(file);
    remove_dir(dir);
}

TEST(refuses_group_writable_and_foreign_owner)
{
    if (geteuid() != 0) {
        printf("# skipped: chown needs root\n");
        return;
    }
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    char *file = copy_plugin(dir, "good_plain.so", "good_plain", 0775);
    /* Group-writable for our own group is fine. */
    struct plugin_set *set = NULL;
    EXPECT_EQ_INT(plugin_set_load(dir, NULL, NULL, &set, err, sizeof(err)), 0);
    plugin_set_destroy(set);
    EXPECT_EQ_INT(chown(file, 0, 1234), 0);
    chmod(file, 0775); /* chown may clear mode bits */
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    EXPECT_CONTAINS(err, "writable by others (mode 0775, owner uid 0, group 1234)");
    EXPECT_EQ_INT(chown(file, 1234, 0), 0);
    chmod(file, 0755);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    EXPECT_CONTAINS(err, "(mode 0755, owner uid 1234): ");
    EXPECT_CONTAINS(err, "fix with chown root: ");
    free(file);
    remove_dir(dir);
}

TEST(symlink_judged_by_its_target)
{
    char *dir = make_dir(), *elsewhere = make_dir();
    char err[AVT_ERRLEN];
    char *target = copy_plugin(elsewhere, "real.so", "good_plain", 0666);
    char *link = xasprintf("%s/good_plain.so", dir);
    EXPECT_EQ_INT(symlink(target, link), 0);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    char *what = xasprintf("%s (target of %s): writable by others (mode 0666", target, link);
    EXPECT_CONTAINS(err, what);
    free(what);
    /* A safe target in a directory anyone may write is no better. */
    chmod(target, 0755);
    chmod(elsewhere, 0777);
    EXPECT_EQ_INT(load_fails(dir, NULL, err), -EPERM);
    EXPECT_CONTAINS(err, "(directory of the target of");
    chmod(elsewhere, 0755);
    free(target);
    free(link);
    remove_dir(elsewhere);
    remove_dir(dir);
}

/* ---- Configuration --------------------------------------------------------------- */

static void expect_config_error(struct cfg *cfg, const char *plugin, const char *what)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    char *file = xasprintf("%s.so", plugin);
    link_plugin(dir, file, plugin);
    load_fails(dir, cfg, err);
    EXPECT_CONTAINS(err, what);
    if (strstr(what, " in ") != NULL) /* "no plugin named X in DIR" */
        EXPECT_CONTAINS(err, dir);
    free(file);
    free_keys(cfg);
    remove_dir(dir);
}

TEST(configure_passes_keys_and_reports_file_line)
{
    struct cfg cfg = {0};
    add_key(&cfg, "good_config", "greeting", "hi", 2);
    add_key(&cfg, "good_config", "bogus", "1", 3);
    expect_config_error(&cfg, "good_config",
                        "worker.ini:3: plugin.good_config.bogus: unknown key 'bogus' "
                        "(good_config knows greeting, count)");
    add_key(&cfg, "good_config", "greeting", "hi", 2);
    add_key(&cfg, "good_config", "count", "12x", 7);
    expect_config_error(&cfg, "good_config",
                        "worker.ini:7: plugin.good_config.count: count must be an integer, not "
                        "\"12x\"");
    add_key(&cfg, "good_config", "count", "3", 4);
    expect_config_error(&cfg, "good_config",
                        "good_config.so: start() failed: greeting is required");
    add_key(&cfg, "good_plain", "speed", "3", 9);
    expect_config_error(&cfg, "good_plain",
                        "worker.ini:9: plugin.good_plain.speed: plugin good_plain takes no "
                        "settings");
    add_key(&cfg, "nosuch", "x", "1", 11);
    expect_config_error(&cfg, "good_plain",
                        "worker.ini:11: plugin.nosuch: no plugin named nosuch "
                        "in /tmp/avt-test-plugin.");
}

TEST(failure_shuts_down_what_was_started)
{
    char *dir = make_dir();
    char err[AVT_ERRLEN];
    /* A copy, so that its counters are our own whatever other tests did. */
    char *plain = copy_plugin(dir, "a_plain.so", "good_plain", 0755);
    void *dl;
    int *inits = plugin_sym(plain, "good_plain_inits", &dl);
    int *downs = dlsym(dl, "good_plain_shutdowns");
    ASSERT(inits != NULL && downs != NULL);

    /* b_init.so fails in init(): a_plain.so was initialised and is shut down. */
    link_plugin(dir, "b_init.so", "bad_init_fail");
    load_fails(dir, NULL, err);
    EXPECT_CONTAINS(err, "b_init.so: init() failed");
    EXPECT_EQ_INT(*inits, 1);
    EXPECT_EQ_INT(*downs, 1);

    /* c_start.so fails in start() without a message: both get shutdown(). */
    char *b = xasprintf("%s/b_init.so", dir);
    unlink(b);
    free(b);
    char *start = so_path("bad_start_fail");
    void *dl2;
    int *start_downs = plugin_sym(start, "bad_start_fail_shutdowns", &dl2);
    ASSERT(start_downs != NULL);
    int before = *start_downs;
    link_plugin(dir, "c_start.so", "bad_start_fail");
    load_fails(dir, NULL, err);
    EXPECT_CONTAINS(err, "c_start.so: start() failed: Address already in use");
    EXPECT_EQ_INT(*inits, 2);
    EXPECT_EQ_INT(*downs, 2);
    EXPECT_EQ_INT(*start_downs, before + 1);
    dlclose(dl2);
    dlclose(dl);
    free(start);
    free(plain);
    remove_dir(dir);
}

TAP_MAIN()
