/*
 * main.c - the command line and the process lifecycle of avtworkerd.
 *
 *   avtworkerd [-c FILE] [-P DIR]                     serve the orchestrator
 *   avtworkerd [-c FILE] [-P DIR] --check-config      load config + plugins, print, exit
 *   avtworkerd [-c FILE] [-P DIR] run-once TYPE [PARAMS_JSON | @FILE]
 *
 * Without -c the daemon runs on built-in defaults plus the environment, as
 * the Python worker SDK does. Configuration and plugin errors exit 78
 * (EX_CONFIG), which the systemd unit lists in RestartPreventExitStatus.
 * An exit() that main() did not make (a plugin's) ends the process with
 * status 70 instead (exitguard.h), in every mode.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avt_plugin.h"
#include "cfg.h"
#include "daemon.h"
#include "exitguard.h"
#include "log.h"
#include "plugin.h"
#include "runonce.h"
#include "util.h"

static void usage(FILE *fp)
{
    fprintf(fp, "usage: avtworkerd [-c FILE] [-P DIR] [--check-config]\n"
                "       avtworkerd [-c FILE] [-P DIR] run-once TYPE [PARAMS_JSON | @FILE]\n"
                "\n"
                "Worker daemon for the Avtomatika orchestrator: loads handler plugins and\n"
                "runs the tasks the orchestrator dispatches to them.\n"
                "\n"
                "  -c, --config FILE   worker.ini to read (default: built-in defaults and\n"
                "                      the environment only)\n"
                "  -P, --plugin-dir DIR  load plugins from DIR instead of plugin_dir\n"
                "  -t, --check-config  load the configuration and the plugins, print the\n"
                "                      effective configuration (token masked), exit 0 or 78\n"
                "  -h, --help          this text\n"
                "  -V, --version       version and plugin ABI\n"
                "\n"
                "run-once runs one task of TYPE through the daemon's own code path without\n"
                "an orchestrator; PARAMS_JSON is a JSON object, or @FILE reads it from a file\n"
                "(@- from stdin). It prints the result that would be sent on stdout and\n"
                "exits 0 on success, 1 on failure.\n"
                "\n"
                "Environment (overrides worker.ini): ORCHESTRATOR_URL WORKER_ID WORKER_TOKEN\n"
                "WORKER_TOKEN_FILE MAX_CONCURRENT_TASKS CPU_CORES HEARTBEAT_INTERVAL\n"
                "TASK_POLL_TIMEOUT LOG_LEVEL LOG_FORMAT and more; see avtworkerd(8).\n");
}

/* What each type advertises to an RXON 1.0b14 orchestrator (1.0b3 only
 * learns the names). */
static void print_skills(const struct plugin_set *set)
{
    printf("# task types as advertised (RXON 1.0b14 skills):\n");
    for (size_t i = 0; i < set->ntypes; i++) {
        char *s = json_dumps(set->types[i].skill, JSON_COMPACT | JSON_SORT_KEYS);
        printf("#   %s\n", s != NULL ? s : "?");
        free(s);
    }
}

static int run(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"plugin-dir", required_argument, NULL, 'P'},
        {"check-config", no_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *plugin_dir = NULL;
    int check_only = 0, c;

    /* First of all, while this is the only thread: no plugin, library or
     * child process may find the token in the environment. */
    cfg_env_scrub();
    while ((c = getopt_long(argc, argv, "+c:P:thV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'P':
            plugin_dir = optarg;
            break;
        case 't':
            check_only = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("avtworkerd %s (plugin ABI %d.%d, protocols RXON 1.0b3 (Avtomatika 1.0b13) "
                   "and RXON 1.0b14 (Avtomatika 1.0b27), chosen per orchestrator)\n",
                   AVT_VERSION, AVT_ABI_MAJOR, AVT_ABI_MINOR);
            return 0;
        default:
            usage(stderr);
            return 64;
        }
    }
    const char *command = optind < argc ? argv[optind] : NULL;
    if (command != NULL && strcmp(command, "run-once") != 0) {
        fprintf(stderr, "avtworkerd: unknown command '%s'\n", command);
        usage(stderr);
        return 64;
    }
    if (command != NULL && (argc - optind < 2 || argc - optind > 3)) {
        fprintf(stderr, "avtworkerd: usage: run-once TYPE [PARAMS_JSON | @FILE]\n");
        return 64;
    }

    log_init(LOG_INFO, LOG_FORMAT_AUTO);
    char err[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    int rc = cfg_load(config_path, &cfg, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "avtworkerd: %s\n", err);
        return EX_CONFIG_CODE;
    }
    if (plugin_dir != NULL) {
        free(cfg->plugin_dir);
        cfg->plugin_dir = xstrdup(plugin_dir);
    }
    log_init(cfg->log_level, (enum log_format)cfg->log_format);

    if (command != NULL) {
        rc = runonce_main(cfg, cfg->plugin_dir, argv[optind + 1],
                          argc - optind == 3 ? argv[optind + 2] : NULL);
        cfg_destroy(cfg);
        return rc;
    }
    if (check_only) {
        struct plugin_set *set = NULL;
        rc = plugin_set_load(cfg->plugin_dir, cfg, NULL, &set, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "avtworkerd: %s\n", err);
            cfg_destroy(cfg);
            return EX_CONFIG_CODE;
        }
        cfg_dump(cfg, stdout);
        printf("# plugins loaded from %s:\n", cfg->plugin_dir);
        for (size_t i = 0; i < set->nplugins; i++) {
            const struct plugin *p = set->plugins[i];
            printf("#   %s %s (%s):", p->name, p->desc->version, p->path);
            for (const char *const *t = p->types; *t; t++)
                printf(" %s", *t);
            printf("\n");
        }
        print_skills(set);
        const char *bare = cfg_orch_without_credential(cfg);
        if (bare != NULL) {
            fprintf(stderr,
                    "avtworkerd: warning: no token for %s: the orchestrator refuses a worker "
                    "without one; set token_file (or token) in [orchestrator], or "
                    "WORKER_TOKEN_FILE / WORKER_TOKEN\n",
                    bare);
        }
        printf("# configuration OK%s\n", bare != NULL ? ", but with no token (see stderr)" : "");
        plugin_set_destroy(set);
        cfg_destroy(cfg);
        return 0;
    }
    daemon_set_plugin_dir_override(plugin_dir);
    rc = daemon_run(cfg);
    cfg_destroy(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    exitguard_install();
    int rc = run(argc, argv);
    exitguard_own_exit();
    return rc;
}
