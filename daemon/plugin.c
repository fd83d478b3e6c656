/*
 * plugin.c - the plugin loader and the task-type registry.
 *
 * plugin_set_load() works in phases, so that a bad plugin is refused before
 * any plugin code has run: (1) check the directory, list its "*.so" files
 * sorted by name; (2) for each file check who can write it, dlopen() it,
 * find the `avt_plugin` descriptor and check its ABI version, size and
 * fields; (3) build the sorted type table, refusing a type claimed twice;
 * (4) refuse a [plugin.NAME] section without a plugin NAME; (5) init() every
 * plugin, (6) hand each [plugin.NAME] key to configure(), (7) start() every
 * plugin. Any failure destroys what was built so far (shutdown() for every
 * plugin whose init() succeeded, then dlclose()) and leaves one message in
 * the caller's buffer. A plugin whose configuration decides its types (ABI
 * 1.2 types()) is left out of the table in (3); after (7) its types are
 * checked like any others and the table is built again with them (none
 * at all is allowed: a plugin installed but not configured serves
 * nothing). Everything here runs on the main thread; once loaded the set
 * is immutable, so plugin_set_find() may run on any thread.
 */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg.h"
#include "exitguard.h"
#include "log.h"
#include "host.h"
#include "skill.h"
#include "task.h"

/* The size of struct avt_plugin in ABI 1.0: every field up to shutdown().
 * Later minors append fields, so this stays the minimum forever. */
#define PLUGIN_DESC_SIZE_1_0 (offsetof(struct avt_plugin, shutdown) + sizeof(void (*)(void *)))
/* ... and in ABI 1.1, up to skills. */
#define PLUGIN_DESC_SIZE_1_1 (offsetof(struct avt_plugin, skills) + sizeof(void *))
/* ... and in ABI 1.2, up to types(). */
#define PLUGIN_DESC_SIZE_1_2 (offsetof(struct avt_plugin, types) + sizeof(void *))

/* Task type strings: what the orchestrator and [limits] keys can carry. */
#define TYPE_MAX_LEN 128
#define NAME_MAX_LEN 64

/* ---- Files and permissions ---------------------------------------------- */

/* 1 when a file or directory with this stat can be changed by someone who
 * is neither root nor the daemon's user. */
static int writable_by_others(const struct stat *st)
{
    if (st->st_uid != 0 && st->st_uid != geteuid())
        return 1;
    if (st->st_mode & S_IWOTH)
        return 1;
    return (st->st_mode & S_IWGRP) && st->st_gid != 0 && st->st_gid != getegid();
}

/* Refuse `path` (shown as `shown`) when others can write it. The group is
 * named only when it is what makes the file unsafe. */
static int check_writers(const char *shown, const struct stat *st, char *err, size_t errlen)
{
    if (!writable_by_others(st))
        return 0;
    int foreign_owner = st->st_uid != 0 && st->st_uid != geteuid();
    int by_group = !(st->st_mode & S_IWOTH) && !foreign_owner;
    char group[32] = "";
    if (by_group)
        snprintf(group, sizeof(group), ", group %u", (unsigned)st->st_gid);
    fmt_err(err, errlen,
            "%s: writable by others (mode %04o, owner uid %u%s): refusing to load code anyone "
            "can change; fix with %s %s",
            shown, (unsigned)(st->st_mode & 07777), (unsigned)st->st_uid, group,
            foreign_owner ? "chown root:" : "chmod go-w", shown);
    return -EPERM;
}

/* Check the plugin directory itself: it must exist and be safe. */
static int check_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        int e = errno;
        /* The compiled-in default is missing: most often avtworkerd runs
         * from a source checkout, whose plugins are in the build tree. */
        int builtin = e == ENOENT && strcmp(dir, cfg_default_plugin_dir()) == 0;
        fmt_err(err, errlen, "%s: cannot open plugin directory: %s%s", dir, strerror(e),
                builtin ? " (the built-in default; in a source checkout pass -P build/plugins, "
                          "the plugins make built, or set [worker] plugin_dir)"
                        : "");
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        fmt_err(err, errlen, "%s: plugin directory is not a directory", dir);
        return -ENOTDIR;
    }
    return check_writers(dir, &st, err, errlen);
}

/*
 * Check one plugin file: a regular file nobody else can write. A symlink is
 * judged by its real target, and by the directory that target lives in
 * (whoever can write that directory can replace the target).
 */
static int check_file(const char *path, char *err, size_t errlen)
{
    struct stat lst, st;
    if (lstat(path, &lst) < 0 || stat(path, &st) < 0) {
        int e = errno;
        fmt_err(err, errlen, "%s: cannot load: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        fmt_err(err, errlen, "%s: cannot load: not a regular file", path);
        return -EINVAL;
    }
    if (!S_ISLNK(lst.st_mode))
        return check_writers(path, &st, err, errlen);

    char *real = realpath(path, NULL);
    if (real == NULL) {
        int e = errno;
        fmt_err(err, errlen, "%s: cannot resolve symlink: %s", path, strerror(e));
        return -e;
    }
    char *shown = xasprintf("%s (target of %s)", real, path);
    int rc = check_writers(shown, &st, err, errlen);
    char *slash = strrchr(real, '/');
    struct stat dst;
    if (rc == 0 && slash != NULL) {
        *slash = '\0';
        const char *tdir = real[0] != '\0' ? real : "/";
        free(shown);
        shown = xasprintf("%s (directory of the target of %s)", tdir, path);
        if (stat(tdir, &dst) == 0)
            rc = check_writers(shown, &dst, err, errlen);
    }
    free(shown);
    free(real);
    return rc;
}

static int is_plugin_name(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 3 && strcmp(d->d_name + n - 3, ".so") == 0;
}

/* The "*.so" files of dir, sorted by name; hidden files are ignored. */
static int list_dir(const char *dir, struct dirent ***list, int *n, char *err, size_t errlen)
{
    *n = scandir(dir, list, is_plugin_name, alphasort);
    if (*n < 0) {
        int e = errno;
        fmt_err(err, errlen, "%s: cannot read plugin directory: %s", dir, strerror(e));
        return -e;
    }
    if (*n == 0) {
        free(*list);
        *list = NULL;
        fmt_err(err, errlen, "%s: no plugins (*.so) found", dir);
        return -ENOENT;
    }
    return 0;
}

/* ---- Opening and checking one plugin ------------------------------------ */

/* dlerror() usually starts with the path again; drop that repetition. */
static const char *dl_reason(const char *path)
{
    const char *e = dlerror();
    size_t n = strlen(path);
    if (e == NULL)
        return "unknown dlopen() error";
    if (strncmp(e, path, n) == 0 && strncmp(e + n, ": ", 2) == 0)
        return e + n + 2;
    return e;
}

/*
 * The symbol must be a data object large enough for the two version words
 * (and for what struct_size claims); anything else would make us read past
 * it. The ELF symbol table tells its type and size.
 */
static int check_symbol(const struct plugin *p, const void *sym, char *err, size_t errlen)
{
    Dl_info info;
    ElfW(Sym) *es = NULL;
    if (dladdr1(sym, &info, (void **)&es, RTLD_DL_SYMENT) == 0 || es == NULL)
        return 0; /* Nothing known; the checks below still apply. */
    if (ELF64_ST_TYPE(es->st_info) != STT_OBJECT) {
        fmt_err(err, errlen,
                "%s: 'avt_plugin' is not a data object: not an avtworkerd plugin (define it with "
                "AVT_PLUGIN())",
                p->path);
        return -ENOEXEC;
    }
    if (es->st_size < 2 * sizeof(uint32_t) ||
        es->st_size < ((const struct avt_plugin *)sym)->struct_size) {
        fmt_err(err, errlen,
                "%s: 'avt_plugin' is %zu bytes, smaller than it claims: corrupt or not built with "
                "AVT_PLUGIN()",
                p->path, (size_t)es->st_size);
        return -ENOEXEC;
    }
    return 0;
}

static int open_plugin(struct plugin *p, char *err, size_t errlen)
{
    /* A constructor of the library runs in dlopen(). */
    struct exitguard_site site = {.plugin = p->path, .call = "constructor (at load)"};
    const struct exitguard_site *prev = exitguard_enter(&site);
    p->dl = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    exitguard_leave(prev);
    if (p->dl == NULL) {
        fmt_err(err, errlen, "%s: cannot load: %s", p->path, dl_reason(p->path));
        return -ENOEXEC;
    }
    dlerror();
    const void *sym = dlsym(p->dl, AVT_PLUGIN_SYMBOL);
    if (sym == NULL) {
        fmt_err(
            err, errlen,
            "%s: no 'avt_plugin' symbol: not an avtworkerd plugin (define it with AVT_PLUGIN())",
            p->path);
        return -ENOEXEC;
    }
    int rc = check_symbol(p, sym, err, errlen);
    if (rc < 0)
        return rc;
    p->desc = sym;
    return 0;
}

static int check_abi(const struct plugin *p, char *err, size_t errlen)
{
    uint32_t v = p->desc->abi_version;
    unsigned major = AVT_ABI_VERSION_MAJOR(v), minor = AVT_ABI_VERSION_MINOR(v);
    if (major != AVT_ABI_MAJOR) {
        fmt_err(err, errlen,
                "%s: plugin ABI %u.%u, this avtworkerd speaks %d.%d: rebuild the plugin against "
                "avtworkerd %s (avt_plugin.h ABI %d.%d)",
                p->path, major, minor, AVT_ABI_MAJOR, AVT_ABI_MINOR, AVT_VERSION, AVT_ABI_MAJOR,
                AVT_ABI_MINOR);
        return -EPROTO;
    }
    if (minor > AVT_ABI_MINOR) {
        fmt_err(err, errlen,
                "%s: plugin built against ABI %u.%u, newer than this avtworkerd's %d.%d: rebuild "
                "the plugin against avtworkerd %s or upgrade avtworkerd",
                p->path, major, minor, AVT_ABI_MAJOR, AVT_ABI_MINOR, AVT_VERSION);
        return -EPROTO;
    }
    if (p->desc->struct_size < PLUGIN_DESC_SIZE_1_0) {
        fmt_err(err, errlen,
                "%s: descriptor is %u bytes, smaller than the %zu bytes of ABI 1.0: corrupt or not "
                "built with AVT_PLUGIN()",
                p->path, (unsigned)p->desc->struct_size, PLUGIN_DESC_SIZE_1_0);
        return -EPROTO;
    }
    return 0;
}

/* A task type: 1..TYPE_MAX_LEN of [a-zA-Z0-9_.:-]. */
static int is_type_name(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= TYPE_MAX_LEN &&
           strspn(s, "abcdefghijklmnopqrstuvwxyz"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789_.:-") == n;
}

/* The plugin's types() (ABI 1.2), or NULL when its types are static. */
static const char *const *(*types_fn(const struct plugin *p))(void *)
{
    return p->desc->struct_size >= PLUGIN_DESC_SIZE_1_2 ? p->desc->types : NULL;
}

static int check_types(const struct plugin *p, char *err, size_t errlen)
{
    const char *const *t = p->types;
    if (t == NULL || t[0] == NULL)
        return fmt_err(err, errlen,
                       "%s: plugin '%s' declares no task types (task_types must list at least "
                       "one, NULL-terminated)",
                       p->path, p->name);
    for (size_t i = 0; t[i] != NULL; i++) {
        if (!is_type_name(t[i]))
            return fmt_err(err, errlen,
                           "%s: plugin '%s': task type #%zu \"%.*s\" is %s (use 1 to %d "
                           "characters of a-z A-Z 0-9 _ . : -)",
                           p->path, p->name, i + 1, TYPE_MAX_LEN, t[i],
                           t[i][0] == '\0' ? "empty" : "invalid", TYPE_MAX_LEN);
    }
    return 0;
}

static int check_desc(struct plugin *p, char *err, size_t errlen)
{
    const struct avt_plugin *d = p->desc;
    if (d->name == NULL)
        return fmt_err(err, errlen, "%s: plugin has no name (set .name in AVT_PLUGIN())", p->path);
    if (!str_is_ident(d->name) || strlen(d->name) > NAME_MAX_LEN)
        return fmt_err(err, errlen,
                       "%s: invalid plugin name \"%.*s\": use 1 to %d characters of a-z A-Z 0-9 "
                       "_ -",
                       p->path, NAME_MAX_LEN, d->name, NAME_MAX_LEN);
    p->name = xstrdup(d->name);
    if (d->version == NULL)
        return fmt_err(err, errlen, "%s: plugin '%s' has no version (set .version)", p->path,
                       p->name);
    if (d->handle == NULL)
        return fmt_err(err, errlen,
                       "%s: plugin '%s' has no handle() function: it could not run any task",
                       p->path, p->name);
    if (types_fn(p) != NULL)
        return 0; /* known after start() */
    p->types = d->task_types;
    return check_types(p, err, errlen);
}

static int check_dup_name(const struct plugin_set *set, const struct plugin *p, char *err,
                          size_t errlen)
{
    for (size_t i = 0; i < set->nplugins; i++) {
        const struct plugin *o = set->plugins[i];
        if (o != p && o->name != NULL && strcmp(o->name, p->name) == 0)
            return fmt_err(err, errlen,
                           "%s: plugin name '%s' is already used by plugin '%s' (%s): two plugins "
                           "cannot share a name; remove one of them",
                           p->path, p->name, o->name, o->path);
    }
    return 0;
}

/* Open, check and add one file to the set (added first, so that a failure
 * is cleaned up by plugin_set_destroy()). */
static int load_one(struct plugin_set *set, const char *path, struct evq *evq, char *err,
                    size_t errlen)
{
    struct plugin *p = xcalloc(1, sizeof(*p));
    p->path = xstrdup(path);
    p->host.evq = evq;
    set->plugins = xrealloc(set->plugins, (set->nplugins + 1) * sizeof(*set->plugins));
    set->plugins[set->nplugins++] = p;

    int rc = check_file(path, err, errlen);
    if (rc == 0)
        rc = open_plugin(p, err, errlen);
    if (rc == 0)
        rc = check_abi(p, err, errlen);
    if (rc == 0)
        rc = check_desc(p, err, errlen);
    if (rc == 0)
        rc = check_dup_name(set, p, err, errlen);
    return rc;
}

/* ---- The type registry -------------------------------------------------- */

static int type_cmp(const void *a, const void *b)
{
    const struct plugin_type *x = a, *y = b;
    return strcmp(x->type, y->type);
}

static size_t plugin_index(const struct plugin_set *set, const struct plugin *p)
{
    size_t i = 0;
    while (i < set->nplugins && set->plugins[i] != p)
        i++;
    return i;
}

/* Two entries of the sorted table share a type: name both plugins, the
 * first loaded first. */
static int dup_type_err(const struct plugin_set *set, const struct plugin_type *x,
                        const struct plugin_type *y, char *err, size_t errlen)
{
    if (x->plugin == y->plugin)
        return fmt_err(err, errlen, "%s: plugin '%s' lists task type '%s' twice", x->plugin->path,
                       x->plugin->name, x->type);
    if (plugin_index(set, x->plugin) > plugin_index(set, y->plugin)) {
        const struct plugin_type *t = x;
        x = y;
        y = t;
    }
    return fmt_err(err, errlen,
                   "task type '%s' is claimed by both %s (%s) and %s (%s): a task type can have "
                   "one plugin only; remove one of them",
                   x->type, x->plugin->name, x->plugin->path, y->plugin->name, y->plugin->path);
}

/* The plugin's skill entries (ABI 1.1), or NULL for an older plugin. */
static const struct avt_skill *skills_of(const struct plugin *p)
{
    return p->desc->struct_size >= PLUGIN_DESC_SIZE_1_1 ? p->desc->skills : NULL;
}

static int declares(const struct plugin *p, const char *type)
{
    for (const char *const *t = p->types; *t != NULL; t++) {
        if (strcmp(*t, type) == 0)
            return 1;
    }
    return 0;
}

/* Every skill entry describes a declared type, once. */
static int check_skills(const struct plugin *p, char *err, size_t errlen)
{
    const struct avt_skill *s = skills_of(p);
    for (size_t i = 0; s != NULL && s[i].type != NULL; i++) {
        if (!declares(p, s[i].type))
            return fmt_err(err, errlen,
                           "%s: plugin '%s': skill #%zu describes type \"%.*s\", which is not "
                           "in its task_types",
                           p->path, p->name, i + 1, TYPE_MAX_LEN, s[i].type);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(s[j].type, s[i].type) == 0)
                return fmt_err(err, errlen, "%s: plugin '%s': type '%s' is described twice",
                               p->path, p->name, s[i].type);
        }
    }
    return 0;
}

/* The SkillInfo of one type (its entry, or the defaults). */
static int describe(struct plugin_type *pt, char *err, size_t errlen)
{
    const struct plugin *p = pt->plugin;
    const struct avt_skill *s = skills_of(p), *entry = NULL;
    char why[AVT_ERRLEN];
    for (size_t i = 0; s != NULL && s[i].type != NULL && entry == NULL; i++) {
        if (strcmp(s[i].type, pt->type) == 0)
            entry = &s[i];
    }
    pt->skill = skill_describe(pt->type, p->desc->version, entry, why, sizeof(why));
    if (pt->skill == NULL)
        return fmt_err(err, errlen, "%s: plugin '%s': skill '%s': %s", p->path, p->name, pt->type,
                       why);
    return 0;
}

static void free_types(struct plugin_set *set)
{
    for (size_t i = 0; i < set->ntypes; i++)
        json_decref(set->types[i].skill);
    free_and_null(set->types);
    set->ntypes = 0;
}

/* The table of every plugin whose types are known (p->types set). */
static int build_types(struct plugin_set *set, char *err, size_t errlen)
{
    size_t n = 0;
    free_types(set);
    for (size_t i = 0; i < set->nplugins; i++)
        for (const char *const *t = set->plugins[i]->types; t != NULL && *t != NULL; t++)
            n++;
    set->types = xcalloc(n > 0 ? n : 1, sizeof(*set->types));
    for (size_t i = 0; i < set->nplugins; i++) {
        for (const char *const *t = set->plugins[i]->types; t != NULL && *t != NULL; t++)
            set->types[set->ntypes++] = (struct plugin_type){*t, set->plugins[i], NULL};
    }
    qsort(set->types, set->ntypes, sizeof(*set->types), type_cmp);
    for (size_t i = 1; i < set->ntypes; i++) {
        if (strcmp(set->types[i - 1].type, set->types[i].type) == 0)
            return dup_type_err(set, &set->types[i - 1], &set->types[i], err, errlen);
    }
    for (size_t i = 0; i < set->nplugins; i++) {
        if (set->plugins[i]->types != NULL && check_skills(set->plugins[i], err, errlen) < 0)
            return -EINVAL;
    }
    for (size_t i = 0; i < set->ntypes; i++) {
        if (describe(&set->types[i], err, errlen) < 0)
            return -EINVAL;
    }
    return 0;
}

struct plugin *plugin_set_find(const struct plugin_set *set, const char *type)
{
    if (set == NULL || type == NULL || set->ntypes == 0)
        return NULL;
    const struct plugin_type key = {type, NULL, NULL};
    const struct plugin_type *t =
        bsearch(&key, set->types, set->ntypes, sizeof(*set->types), type_cmp);
    return t != NULL ? t->plugin : NULL;
}

/* ---- Running the plugins: init, configure, start ------------------------ */

/* strerror() of a negative errno, safe for any int a plugin may return. */
static const char *rc_str(int rc)
{
    return rc < 0 && rc > -4096 ? strerror(-rc) : "unknown error";
}

static struct plugin *find_plugin(const struct plugin_set *set, const char *name)
{
    for (size_t i = 0; i < set->nplugins; i++)
        if (strcmp(set->plugins[i]->name, name) == 0)
            return set->plugins[i];
    return NULL;
}

static const char *key_file(const struct cfg_plugin_key *k)
{
    return k->file != NULL ? k->file : "(configuration)";
}

/* Every [plugin.NAME] section must belong to a loaded plugin. */
static int check_sections(const struct plugin_set *set, const struct cfg *cfg, const char *dir,
                          char *err, size_t errlen)
{
    for (size_t i = 0; cfg != NULL && i < cfg->nplugin_keys; i++) {
        const struct cfg_plugin_key *k = &cfg->plugin_keys[i];
        if (find_plugin(set, k->plugin) == NULL)
            return fmt_err(err, errlen, "%s:%d: plugin.%s: no plugin named %s in %s", key_file(k),
                           k->line, k->plugin, k->plugin, dir);
    }
    return 0;
}

static int init_one(struct plugin *p, char *err, size_t errlen)
{
    host_init(&p->host, p->name, p->host.evq);
    if (p->desc->init != NULL) {
        void *state = NULL;
        struct exitguard_site site = {.plugin = p->name, .call = "init()"};
        const struct exitguard_site *prev = exitguard_enter(&site);
        int rc = p->desc->init(&p->host.table, &state);
        exitguard_leave(prev);
        if (rc < 0) {
            fmt_err(err, errlen, "%s: init() failed: %s", p->path, rc_str(rc));
            return rc > -4096 ? rc : -EIO;
        }
        p->state = state;
    }
    p->started = 1;
    return 0;
}

/* Hand one [plugin.NAME] key to its plugin. A key of NULL marks an empty
 * section: nothing to configure. */
static int configure_one(struct plugin *p, const struct cfg_plugin_key *k, char *err, size_t errlen)
{
    if (k->key == NULL)
        return 0;
    if (p->desc->configure == NULL)
        return fmt_err(err, errlen, "%s:%d: plugin.%s.%s: plugin %s takes no settings", key_file(k),
                       k->line, p->name, k->key, p->name);
    char perr[AVT_ERRLEN] = "";
    struct exitguard_site site = {.plugin = p->name, .call = "configure()"};
    const struct exitguard_site *prev = exitguard_enter(&site);
    int rc =
        p->desc->configure(p->state, k->key, k->value != NULL ? k->value : "", perr, sizeof(perr));
    exitguard_leave(prev);
    if (rc == 0)
        return 0;
    perr[sizeof(perr) - 1] = '\0';
    const char *why = perr[0] != '\0' ? perr : rc == -EINVAL ? "unknown key" : rc_str(rc);
    return fmt_err(err, errlen, "%s:%d: plugin.%s.%s: %s", key_file(k), k->line, p->name, k->key,
                   why);
}

static int start_one(struct plugin *p, char *err, size_t errlen)
{
    if (p->desc->start == NULL)
        return 0;
    char perr[AVT_ERRLEN] = "";
    struct exitguard_site site = {.plugin = p->name, .call = "start()"};
    const struct exitguard_site *prev = exitguard_enter(&site);
    int rc = p->desc->start(p->state, perr, sizeof(perr));
    exitguard_leave(prev);
    if (rc == 0)
        return 0;
    perr[sizeof(perr) - 1] = '\0';
    return fmt_err(err, errlen, "%s: start() failed: %s", p->path,
                   perr[0] != '\0' ? perr : rc_str(rc));
}

static const char *const no_types[] = {NULL};

/* After start(): ask each plugin whose configuration decides its types
 * (ABI 1.2) for them, check them and build the table again. */
static int configured_types(struct plugin_set *set, char *err, size_t errlen)
{
    int any = 0;
    for (size_t i = 0; i < set->nplugins; i++) {
        struct plugin *p = set->plugins[i];
        if (types_fn(p) == NULL)
            continue;
        struct exitguard_site site = {.plugin = p->name, .call = "types()"};
        const struct exitguard_site *prev = exitguard_enter(&site);
        p->types = types_fn(p)(p->state);
        exitguard_leave(prev);
        if (p->types == NULL || p->types[0] == NULL) {
            /* Unconfigured (e.g. exec installed but not set up): loaded,
             * serving nothing. */
            p->types = no_types;
            log_notice("plugin %s: its configuration declares no task types", p->name);
        } else if (check_types(p, err, errlen) < 0) {
            return -EINVAL;
        }
        any = 1;
    }
    return any ? build_types(set, err, errlen) : 0;
}

static int run_plugins(struct plugin_set *set, const struct cfg *cfg, char *err, size_t errlen)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < set->nplugins; i++)
        rc = init_one(set->plugins[i], err, errlen);
    for (size_t i = 0; rc == 0 && cfg != NULL && i < cfg->nplugin_keys; i++) {
        const struct cfg_plugin_key *k = &cfg->plugin_keys[i];
        rc = configure_one(find_plugin(set, k->plugin), k, err, errlen);
    }
    for (size_t i = 0; rc == 0 && i < set->nplugins; i++)
        rc = start_one(set->plugins[i], err, errlen);
    if (rc == 0)
        rc = configured_types(set, err, errlen);
    return rc;
}

/* ---- Loading and unloading the set -------------------------------------- */

static int load_all(struct plugin_set *set, const char *dir, struct evq *evq, char *err,
                    size_t errlen)
{
    struct dirent **list = NULL;
    int n = 0;
    int rc = check_dir(dir, err, errlen);
    if (rc == 0)
        rc = list_dir(dir, &list, &n, err, errlen);
    size_t dlen = strlen(dir);
    const char *sep = dlen > 0 && dir[dlen - 1] == '/' ? "" : "/";
    for (int i = 0; i < n; i++) {
        if (rc == 0) {
            char *path = xasprintf("%s%s%s", dir, sep, list[i]->d_name);
            rc = load_one(set, path, evq, err, errlen);
            free(path);
        }
        free(list[i]);
    }
    free(list);
    return rc;
}

static void log_loaded(const struct plugin_set *set)
{
    for (size_t i = 0; i < set->nplugins; i++) {
        const struct plugin *p = set->plugins[i];
        char types[AVT_ERRLEN] = "";
        size_t len = 0;
        for (const char *const *t = p->types; *t != NULL && len < sizeof(types); t++)
            len += (size_t)snprintf(types + len, sizeof(types) - len, "%s%s", len ? " " : "", *t);
        log_info("plugin %s %s loaded from %s: types %s", p->name, p->desc->version, p->path,
                 types);
    }
}

int plugin_set_load(const char *dir, const struct cfg *cfg, struct evq *evq,
                    struct plugin_set **out, char *err, size_t errlen)
{
    struct plugin_set *set = xcalloc(1, sizeof(*set));
    *out = NULL;
    int rc = load_all(set, dir, evq, err, errlen);
    if (rc == 0)
        rc = build_types(set, err, errlen);
    if (rc == 0)
        rc = check_sections(set, cfg, dir, err, errlen);
    if (rc == 0)
        rc = run_plugins(set, cfg, err, errlen);
    if (rc < 0) {
        plugin_set_destroy(set);
        return rc;
    }
    log_loaded(set);
    *out = set;
    return 0;
}

void plugin_set_destroy(struct plugin_set *set)
{
    if (set == NULL)
        return;
    const char *keep = getenv("AVT_NO_DLCLOSE");
    int do_close = keep == NULL || keep[0] == '\0';
    /* Shut down in reverse load order, before any code is unmapped. */
    for (size_t i = set->nplugins; i-- > 0;) {
        struct plugin *p = set->plugins[i];
        if (p->started && p->desc->shutdown != NULL) {
            struct exitguard_site site = {.plugin = p->name, .call = "shutdown()"};
            const struct exitguard_site *prev = exitguard_enter(&site);
            p->desc->shutdown(p->state);
            exitguard_leave(prev);
        }
        p->started = 0;
    }
    for (size_t i = 0; i < set->nplugins; i++) {
        struct plugin *p = set->plugins[i];
        if (p->dl != NULL && do_close)
            dlclose(p->dl);
        free(p->path);
        free(p->name);
        free(p);
    }
    free_types(set);
    free(set->plugins);
    free(set);
}

void plugin_run(struct task *t)
{
    int rc = 0;

    t->t_started = now_mono();
    if (t->plugin == NULL) {
        task_set_failure(t, AVT_PERMANENT_ERROR, "Unsupported task: %s", t->type);
        t->t_finished = now_mono();
        return;
    }
    t->pub.host = &t->plugin->host.table;
    /* A task that already has an outcome (invalid payload) or was cancelled
     * while it waited is not started at all. */
    if (atomic_load(&t->has_outcome) == 0 && atomic_load(&t->cancel) == TASK_CANCEL_NONE) {
        struct exitguard_site site = {.plugin = t->plugin->name,
                                      .call = "handler",
                                      .type = t->type,
                                      .task_id = t->id,
                                      .job_id = t->job_id};
        const struct exitguard_site *prev = exitguard_enter(&site);
        rc = t->plugin->desc->handle(t->plugin->state, &t->pub);
        exitguard_leave(prev);
    }
    task_finish(t, rc);
    t->t_finished = now_mono();
}
