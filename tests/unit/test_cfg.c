/*
 * test_cfg.c - unit tests of the configuration loader: defaults, the INI
 * file, environment overrides, every kind of error and its
 * "file:line: key:" text, the token file, and cfg_dump() (token masked,
 * output loadable again).
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"
#include "tap.h"
#include "util.h"

static const char *const env_vars[] = {
    "ORCHESTRATOR_URL",
    "WORKER_ID",
    "WORKER_TYPE",
    "WORKER_INDIVIDUAL_TOKEN",
    "WORKER_TOKEN",
    "WORKER_TOKEN_FILE",
    "MAX_CONCURRENT_TASKS",
    "CPU_CORES",
    "HEARTBEAT_INTERVAL",
    "TASK_POLL_TIMEOUT",
    "WORKER_HEARTBEAT_DEBOUNCE_DELAY",
    "RESULT_RETRY_INITIAL_DELAY",
    "BACKOFF_MAX_DELAY",
    "WORKER_SHUTDOWN_TIMEOUT",
    "WORKER_ENABLE_WEBSOCKETS",
    "GPU_MODEL",
    "GPU_VRAM_GB",
    "INSTALLED_SOFTWARE",
    "INSTALLED_MODELS",
    "COST_PER_SKILL",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "STATE_DIRECTORY",
    "ADVERTISE_BUSY",
    "AVT_PLUGIN_DIR",
    "HOSTNAME_OVERRIDE",
    "IP_ADDRESS",
};

/* Every test starts from an environment without configuration variables. */
static void clear_env(void)
{
    extern char **environ;
    for (size_t i = 0; i < ARRAY_LEN(env_vars); i++)
        unsetenv(env_vars[i]);
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "WORKER_EXTRA_", 13) == 0) {
                char *name = xstrndup(*e, strcspn(*e, "="));
                unsetenv(name);
                free(name);
                again = 1;
                break;
            }
        }
    }
}

static char tmpdir[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tmpdir(void)
{
    nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* The test's private directory, removed at exit. */
static const char *dir(void)
{
    if (tmpdir[0] == '\0') {
        snprintf(tmpdir, sizeof(tmpdir), "%s/test_cfg.XXXXXX",
                 getenv("TMPDIR") && strlen(getenv("TMPDIR")) < 40 ? getenv("TMPDIR") : "/tmp");
        if (mkdtemp(tmpdir) == NULL) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

/* Write `text` to a file in the test directory; returns its path (static). */
static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir(), name);
    FILE *fp = fopen(path, "w");
    if (fp == NULL || fputs(text, fp) < 0 || fclose(fp) != 0) {
        perror(path);
        exit(2);
    }
    return path;
}

/* A token file: private (mode 0600), as the loader requires. */
static const char *write_secret(const char *name, const char *text)
{
    const char *p = write_file(name, text);
    if (chmod(p, 0600) < 0) {
        perror(p);
        exit(2);
    }
    return p;
}

static const char *ini(const char *text)
{
    return write_file("worker.ini", text);
}

/* Load `text` as worker.ini and expect failure with err == "INI:" + want. */
static int expect_error(const char *text, const char *want)
{
    char err[AVT_ERRLEN], expected[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    const char *path = ini(text);
    snprintf(expected, sizeof(expected), "%s:%s", path, want);
    int rc = cfg_load(path, &cfg, err, sizeof(err));
    if (rc != -EINVAL || cfg != NULL || strncmp(err, expected, strlen(expected)) != 0) {
        printf("#   for:\n#   %s\n#   rc %d, err \"%s\", wanted prefix \"%s\"\n", text, rc,
               rc < 0 ? err : "", expected);
        cfg_destroy(cfg);
        return 0;
    }
    return 1;
}

/* Load with the environment only and expect "environment: VAR: ...". */
static int expect_env_error(const char *var, const char *value, const char *want)
{
    char err[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    setenv(var, value, 1);
    int rc = cfg_load(NULL, &cfg, err, sizeof(err));
    unsetenv(var);
    if (rc != -EINVAL || strncmp(err, want, strlen(want)) != 0) {
        printf("#   %s=%s: rc %d, err \"%s\", wanted \"%s\"\n", var, value, rc, rc < 0 ? err : "",
               want);
        cfg_destroy(cfg);
        return 0;
    }
    return 1;
}

static struct cfg *load_ok(const char *path)
{
    char err[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    int rc = cfg_load(path, &cfg, err, sizeof(err));
    if (rc != 0)
        printf("#   cfg_load failed: %s\n", err);
    return cfg;
}

/* cfg_dump() through a real file, as --check-config writes to stdout. */
static char *dump_to_string(const struct cfg *cfg)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/dump.out", dir());
    FILE *fp = fopen(path, "w");
    if (fp == NULL) {
        perror(path);
        exit(2);
    }
    cfg_dump(cfg, fp);
    fclose(fp);
    char *text = read_file(path, 1 << 20, NULL);
    if (text == NULL) {
        perror(path);
        exit(2);
    }
    return text;
}

TEST(defaults)
{
    clear_env();
    struct cfg *cfg = load_ok(NULL);
    ASSERT(cfg != NULL);
    char host[256] = "";
    gethostname(host, sizeof(host));
    EXPECT(cfg->path == NULL);
    EXPECT_EQ_INT(strncmp(cfg->worker_id, "avtworkerd-", 11), 0);
    EXPECT(str_is_ident(cfg->worker_id));
    EXPECT_EQ_STR(cfg->hostname, host);
    EXPECT_EQ_STR(cfg->worker_type, "generic-worker");
    EXPECT_EQ_INT(cfg->max_concurrent_tasks, 10);
    EXPECT_EQ_INT(cfg->cpu_cores, sysconf(_SC_NPROCESSORS_ONLN));
    EXPECT_EQ_STR(cfg->plugin_dir, AVT_PLUGINDIR);
    EXPECT_EQ_STR(cfg->state_dir, "/var/lib/avtworkerd");
    EXPECT(cfg->shutdown_timeout == 30);
    EXPECT_EQ_INT(cfg->advertise_busy, 0);
    EXPECT_EQ_INT(cfg->batch_scheduling, 1);
    EXPECT_EQ_INT(cfg->log_level, LOG_INFO);
    EXPECT_EQ_INT(cfg->log_format, LOG_FORMAT_AUTO);
    EXPECT(cfg->ip_address == NULL);
    EXPECT(cfg->gpu_model == NULL);
    EXPECT_EQ_INT(cfg->gpu_vram_gb, 0);
    EXPECT_EQ_STR(json_string_value(json_object_get(cfg->installed_software, "avtworkerd")),
                  AVT_VERSION);
    EXPECT(json_is_array(cfg->installed_models) && json_array_size(cfg->installed_models) == 0);
    EXPECT(json_is_object(cfg->cost_per_skill) && json_object_size(cfg->cost_per_skill) == 0);
    EXPECT(json_is_object(cfg->extra) && json_object_size(cfg->extra) == 0);
    EXPECT_EQ_STR(cfg->url, "http://localhost:8080");
    EXPECT(cfg->token == NULL && cfg->token_file == NULL);
    EXPECT(cfg->poll_timeout == 30 && cfg->heartbeat_interval == 15);
    EXPECT(cfg->heartbeat_debounce == 1 && cfg->result_retry_initial_delay == 1.0);
    EXPECT(cfg->retry_max_delay == 60);
    EXPECT_EQ_INT(cfg->websockets, 1);
    EXPECT_EQ_INT(cfg->probe_every, 4);
    EXPECT_EQ_INT(cfg->max_task_bytes, 16 * 1024 * 1024);
    EXPECT_EQ_INT(cfg->max_polls, 8);
    EXPECT_EQ_INT(cfg->compressed_answers, 0);
    EXPECT_EQ_INT(cfg->nlimits, 0);
    EXPECT_EQ_INT(cfg->nplugin_keys, 0);
    cfg_destroy(cfg);
}

TEST(default_worker_id_sanitises_hostname)
{
    clear_env();
    setenv("HOSTNAME_OVERRIDE", "web.example.com", 1);
    struct cfg *cfg = load_ok(NULL);
    unsetenv("HOSTNAME_OVERRIDE");
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->hostname, "web.example.com");
    EXPECT_EQ_STR(cfg->worker_id, "avtworkerd-web-example-com");
    cfg_destroy(cfg);
}

static const char full_ini[] = "# a comment\n"
                               "[worker]\n"
                               "id = w-1\n"
                               "type = gpu-worker\n"
                               "max_concurrent_tasks = 7 ; inline comment\n"
                               "cpu_cores = 3\n"
                               "plugin_dir = /opt/avt/plugins\n"
                               "state_dir = /srv/avt\n"
                               "shutdown_timeout = 12.5\n"
                               "advertise_busy = yes\n"
                               "batch_scheduling = no\n"
                               "log_level = debug\n"
                               "log_format = json\n"
                               "hostname = box1\n"
                               "ip_address = 10.1.2.3\n"
                               "gpu_model = NVIDIA A100\n"
                               "gpu_vram_gb = 40\n"
                               "installed_software = {\"ffmpeg\": \"5.1\"}\n"
                               "installed_models = [{\"name\": \"m1\", \"version\": \"2\"}]\n"
                               "cost_per_skill = {\"echo\": 0.5, \"resize\": 2}\n"
                               "\n"
                               "[orchestrator]\n"
                               "url = https://orch.example.com:8443/base///\n"
                               "token = s3cret-token\n"
                               "poll_timeout = 20\n"
                               "heartbeat_interval = 5\n"
                               "heartbeat_debounce = 0\n"
                               "websockets = off\n"
                               "result_retry_initial_delay = 0.25\n"
                               "retry_max_delay = 30\n"
                               "probe_every = 2\n"
                               "\n"
                               "[capabilities]\n"
                               "region = eu\n"
                               "fast = true\n"
                               "tags = [\"a\", \"b\"]\n";

TEST(file_values)
{
    clear_env();
    struct cfg *cfg = load_ok(ini(full_ini));
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->worker_id, "w-1");
    EXPECT_EQ_STR(cfg->worker_type, "gpu-worker");
    EXPECT_EQ_INT(cfg->max_concurrent_tasks, 7);
    EXPECT_EQ_INT(cfg->cpu_cores, 3);
    EXPECT_EQ_STR(cfg->plugin_dir, "/opt/avt/plugins");
    EXPECT_EQ_STR(cfg->state_dir, "/srv/avt");
    EXPECT(cfg->shutdown_timeout == 12.5);
    EXPECT_EQ_INT(cfg->advertise_busy, 1);
    EXPECT_EQ_INT(cfg->batch_scheduling, 0);
    EXPECT_EQ_INT(cfg->log_level, LOG_DEBUG);
    EXPECT_EQ_INT(cfg->log_format, LOG_FORMAT_JSON);
    EXPECT_EQ_STR(cfg->hostname, "box1");
    EXPECT_EQ_STR(cfg->ip_address, "10.1.2.3");
    EXPECT_EQ_STR(cfg->gpu_model, "NVIDIA A100");
    EXPECT_EQ_INT(cfg->gpu_vram_gb, 40);
    EXPECT_EQ_STR(json_string_value(json_object_get(cfg->installed_software, "ffmpeg")), "5.1");
    EXPECT_EQ_STR(
        json_string_value(json_object_get(json_array_get(cfg->installed_models, 0), "name")), "m1");
    EXPECT(json_number_value(json_object_get(cfg->cost_per_skill, "resize")) == 2);
    EXPECT_EQ_STR(cfg->url, "https://orch.example.com:8443/base");
    EXPECT_EQ_STR(cfg->token, "s3cret-token");
    EXPECT(cfg->poll_timeout == 20 && cfg->heartbeat_interval == 5);
    EXPECT(cfg->heartbeat_debounce == 0 && cfg->result_retry_initial_delay == 0.25);
    EXPECT(cfg->retry_max_delay == 30);
    EXPECT_EQ_INT(cfg->websockets, 0);
    EXPECT_EQ_INT(cfg->probe_every, 2);
    EXPECT_EQ_STR(json_string_value(json_object_get(cfg->extra, "region")), "eu");
    EXPECT(json_is_true(json_object_get(cfg->extra, "fast")));
    EXPECT_EQ_INT(json_array_size(json_object_get(cfg->extra, "tags")), 2);
    EXPECT_EQ_STR(cfg->path, ini(full_ini));
    cfg_destroy(cfg);
}

TEST(env_overrides_file)
{
    clear_env();
    setenv("MAX_CONCURRENT_TASKS", "99", 1);
    setenv("WORKER_ID", "from-env", 1);
    setenv("ORCHESTRATOR_URL", "http://10.0.0.1:8080/", 1);
    setenv("WORKER_ENABLE_WEBSOCKETS", "yes", 1);
    setenv("HEARTBEAT_INTERVAL", "2.5", 1);
    setenv("LOG_LEVEL", "warning", 1);
    setenv("STATE_DIRECTORY", "/var/lib/a:/var/lib/b", 1);
    setenv("AVT_PLUGIN_DIR", "/plugins", 1);
    setenv("INSTALLED_MODELS", "[{\"name\":\"x\",\"version\":\"1\"}]", 1);
    setenv("WORKER_EXTRA_REGION", "us", 1);
    setenv("WORKER_EXTRA_GPU_COUNT", "{\"n\": 2}", 1);
    setenv("CPU_CORES", "", 1); /* empty counts as unset */
    struct cfg *cfg = load_ok(ini(full_ini));
    clear_env();
    ASSERT(cfg != NULL);
    EXPECT_EQ_INT(cfg->max_concurrent_tasks, 99);
    EXPECT_EQ_STR(cfg->worker_id, "from-env");
    EXPECT_EQ_STR(cfg->url, "http://10.0.0.1:8080");
    EXPECT_EQ_INT(cfg->websockets, 1);
    EXPECT(cfg->heartbeat_interval == 2.5);
    EXPECT_EQ_INT(cfg->log_level, LOG_WARNING);
    EXPECT_EQ_STR(cfg->state_dir, "/var/lib/a");
    EXPECT_EQ_STR(cfg->plugin_dir, "/plugins");
    EXPECT_EQ_STR(
        json_string_value(json_object_get(json_array_get(cfg->installed_models, 0), "name")), "x");
    EXPECT_EQ_STR(json_string_value(json_object_get(cfg->extra, "region")), "us");
    EXPECT(json_is_object(json_object_get(cfg->extra, "gpu_count")));
    EXPECT(json_is_true(json_object_get(cfg->extra, "fast"))); /* file value kept */
    EXPECT_EQ_INT(cfg->cpu_cores, 3);
    cfg_destroy(cfg);
}

TEST(env_token_precedence)
{
    clear_env();
    const char *tf = write_secret("token.env", "from-file\n");
    char tfpath[256];
    snprintf(tfpath, sizeof(tfpath), "%s", tf);
    const char *path = ini("[orchestrator]\ntoken = in-ini\n");

    setenv("WORKER_TOKEN_FILE", tfpath, 1);
    struct cfg *cfg = load_ok(path);
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->token, "from-file");
    EXPECT_EQ_STR(cfg->token_file, tfpath);
    cfg_destroy(cfg);

    setenv("WORKER_TOKEN", "global", 1);
    cfg = load_ok(path);
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->token, "global");
    EXPECT(cfg->token_file == NULL);
    cfg_destroy(cfg);

    setenv("WORKER_INDIVIDUAL_TOKEN", "individual", 1);
    cfg = load_ok(path);
    clear_env();
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->token, "individual");
    cfg_destroy(cfg);
}

TEST(invalid_values_name_file_line_and_key)
{
    clear_env();
    static const struct {
        const char *ini, *want;
    } cases[] = {
        {"[worker]\nmax_concurrent_tasks = 0\n", "2: max_concurrent_tasks: 0 is out of range"},
        {"[worker]\nmax_concurrent_tasks = 4097\n", "2: max_concurrent_tasks: "},
        {"[worker]\n\nmax_concurrent_tasks = 5x\n", "3: max_concurrent_tasks: not an integer"},
        {"[worker]\ncpu_cores = 99999999999999999999\n", "2: cpu_cores: "},
        {"[worker]\ngpu_vram_gb = -1\n", "2: gpu_vram_gb: -1 is out of range"},
        {"[worker]\nid = bad id!\n", "2: id: \"bad id!\" must match"},
        {"[worker]\nplugin_dir = relative/dir\n", "2: plugin_dir: "},
        {"[worker]\nshutdown_timeout = 86401\n", "2: shutdown_timeout: "},
        {"[worker]\nshutdown_timeout = nan\n", "2: shutdown_timeout: not a number"},
        {"[worker]\nshutdown_timeout = 1e999\n", "2: shutdown_timeout: not a number"},
        {"[worker]\nadvertise_busy = maybe\n", "2: advertise_busy: not a boolean"},
        {"[worker]\nbatch_scheduling = 2\n", "2: batch_scheduling: not a boolean"},
        {"[worker]\nlog_level = loud\n", "2: log_level: unknown log level"},
        {"[worker]\nlog_format = xml\n", "2: log_format: unknown log format"},
        {"[worker]\nip_address = 1.2.3\n", "2: ip_address: "},
        {"[worker]\ntype =\n", "2: type: empty value"},
        {"[worker]\ninstalled_software = [1]\n", "2: installed_software: must be a JSON object"},
        {"[worker]\ninstalled_software = {\"a\":\n", "2: installed_software: invalid JSON"},
        {"[worker]\ninstalled_models = [{\"name\": \"m\"}]\n",
         "2: installed_models: element 0: \"version\""},
        {"[worker]\ninstalled_models = [{\"version\": \"1\"}]\n",
         "2: installed_models: element 0: \"name\""},
        {"[worker]\ninstalled_models = {}\n", "2: installed_models: must be a JSON array"},
        {"[worker]\ncost_per_skill = {\"a\": \"cheap\"}\n", "2: cost_per_skill: the cost of \"a\""},
        {"[worker]\ncost_per_skill = {\"a\": -1}\n", "2: cost_per_skill: "},
        {"[orchestrator]\nurl = ftp://x\n", "2: url: \"ftp://x\" must start with http://"},
        {"[orchestrator]\nurl = http://\n", "2: url: \"http://\" has no host"},
        {"[orchestrator]\nurl = http:///path\n", "2: url: "},
        {"[orchestrator]\nurl = https://u:s3cret@h/x\n", "2: url: credentials in the URL"},
        {"[orchestrator]\npoll_timeout = 0.5\n", "2: poll_timeout: 0.5 is out of range"},
        {"[orchestrator]\npoll_timeout = 3601\n", "2: poll_timeout: "},
        {"[orchestrator]\nheartbeat_interval = 0.05\n", "2: heartbeat_interval: "},
        {"[orchestrator]\nheartbeat_debounce = 61\n", "2: heartbeat_debounce: "},
        {"[orchestrator]\nresult_retry_initial_delay = 0\n", "2: result_retry_initial_delay: "},
        {"[orchestrator]\nretry_max_delay = 0\n", "2: retry_max_delay: "},
        {"[orchestrator]\nresult_retry_initial_delay = 90\n",
         "2: result_retry_initial_delay: result_retry_initial_delay (90) is larger"},
        {"[orchestrator]\nprobe_every = 0\n", "2: probe_every: "},
        {"[orchestrator]\nmax_task_bytes = 65535\n", "2: max_task_bytes: 65535 is out of range"},
        {"[orchestrator]\nmax_task_bytes = 67108865\n", "2: max_task_bytes: "},
        {"[orchestrator]\nmax_polls = 0\n", "2: max_polls: 0 is out of range"},
        {"[orchestrator]\nmax_polls = 65\n", "2: max_polls: "},
        {"[orchestrator]\ncompressed_answers = maybe\n", "2: compressed_answers: "},
        {"[orchestrator]\nwebsockets = 2\n", "2: websockets: not a boolean"},
        {"[limits]\nresize = -1\n", "2: limits.resize: -1 is out of range"},
        {"[limits]\nresize = 4097\n", "2: limits.resize: "},
        {"[limits]\nresize.timeout = -3\n", "2: limits.resize.timeout: "},
        {"[limits]\nresize.timeout = soon\n", "2: limits.resize.timeout: not a number"},
        {"[limits]\nre$ize = 1\n", "2: limits.re$ize: a task type"},
        {"[limits]\n.timeout = 1\n", "2: limits..timeout: a task type"},
        {"[capabilities]\nbad key = 1\n", "2: capabilities.bad key: a capability name"},
        {"[capabilities]\nj = {oops\n", "2: capabilities.j: invalid JSON"},
        {"[plugin.bad name]\nk = v\n", "2: plugin.bad name.k: the plugin name"},
        {"[plugin.]\nk = v\n", "2: plugin..k: the plugin name"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        EXPECT(expect_error(cases[i].ini, cases[i].want));
}

TEST(credentials_in_the_url_are_refused_without_showing_them)
{
    char err[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    int rc = cfg_load(ini("[orchestrator]\nurl = https://bob:s3cret@orch.example\n"), &cfg, err,
                      sizeof(err));
    EXPECT(rc == -EINVAL && cfg == NULL);
    EXPECT(strstr(err, "credentials in the URL") != NULL);
    EXPECT(strstr(err, "s3cret") == NULL && strstr(err, "bob") == NULL);
    /* Nor when something else is wrong with the URL too (a message about
     * that would echo it): no user, another scheme, none. */
    static const char *const others[] = {"http://:s3cret@orch.example", "ftp://bob:s3cret@h",
                                         "bob:s3cret@orch.example", "http:/bob:s3cret@h/x"};
    for (size_t i = 0; i < ARRAY_LEN(others); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[orchestrator]\nurl = %s\n", others[i]);
        EXPECT(cfg_load(ini(text), &cfg, err, sizeof(err)) == -EINVAL);
        EXPECT_CONTAINS(err, "credentials in the URL");
        if (strstr(err, "s3cret") != NULL)
            TAP_FAIL_("the password shown: %s", err);
    }
    /* An '@' in the path is not a credential. */
    rc = cfg_load(ini("[orchestrator]\nurl = https://orch.example/a@b\n"), &cfg, err, sizeof(err));
    EXPECT(rc == 0 && cfg != NULL);
    cfg_destroy(cfg);
}

TEST(env_errors_name_the_variable)
{
    clear_env();
    EXPECT(expect_env_error("MAX_CONCURRENT_TASKS", "lots",
                            "environment: MAX_CONCURRENT_TASKS: not an integer"));
    EXPECT(expect_env_error("ORCHESTRATOR_URL", "localhost:8080",
                            "environment: ORCHESTRATOR_URL: \"localhost:8080\" must start"));
    EXPECT(expect_env_error("WORKER_ID", "a b", "environment: WORKER_ID: "));
    EXPECT(expect_env_error("INSTALLED_MODELS", "[1]", "environment: INSTALLED_MODELS: element 0"));
    EXPECT(expect_env_error("COST_PER_SKILL", "[]", "environment: COST_PER_SKILL: "));
    EXPECT(expect_env_error("WORKER_ENABLE_WEBSOCKETS", "sure",
                            "environment: WORKER_ENABLE_WEBSOCKETS: not a boolean"));
    EXPECT(expect_env_error("STATE_DIRECTORY", "rel:/abs", "environment: STATE_DIRECTORY: "));
    EXPECT(expect_env_error("WORKER_EXTRA_BAD.NAME", "x", "environment: WORKER_EXTRA_BAD.NAME: "));
    EXPECT(
        expect_env_error("WORKER_EXTRA_J", "{nope", "environment: WORKER_EXTRA_J: invalid JSON"));
    EXPECT(expect_env_error("GPU_MODEL", "bad\x01model",
                            "environment: GPU_MODEL: contains a control"));
    EXPECT(expect_env_error("WORKER_TOKEN", "sec\nret", "environment: WORKER_TOKEN: "));
}

TEST(token_never_in_error_messages)
{
    clear_env();
    char err[AVT_ERRLEN];
    struct cfg *cfg = NULL;
    setenv("WORKER_TOKEN", "topsecret\x01value", 1);
    int rc = cfg_load(NULL, &cfg, err, sizeof(err));
    unsetenv("WORKER_TOKEN");
    EXPECT_EQ_INT(rc, -EINVAL);
    EXPECT(strstr(err, "topsecret") == NULL);
    EXPECT_CONTAINS(err, "environment: WORKER_TOKEN: ");
    /* A JSON syntax error next to a token: the parser's "near ..." is not
     * shown. */
    setenv("ORCHESTRATORS_CONFIG", "[{\"url\": \"http://h\", \"token\" \"topsecret\"}]", 1);
    rc = cfg_load(NULL, &cfg, err, sizeof(err));
    unsetenv("ORCHESTRATORS_CONFIG");
    EXPECT_EQ_INT(rc, -EINVAL);
    EXPECT(strstr(err, "topsecret") == NULL);
    EXPECT_CONTAINS(err, "ORCHESTRATORS_CONFIG: invalid JSON at column ");
}

TEST(long_line)
{
    clear_env();
    char text[600];
    int n = snprintf(text, sizeof(text), "[worker]\ntype = x\n# ");
    memset(text + n, 'a', 300);
    snprintf(text + n + 300, sizeof(text) - (size_t)n - 300, "\n[nosuch]\nk = v\n");
    EXPECT(expect_error(text, "3: line too long"));

    /* The longest line that fits is accepted, one more is refused. */
    n = snprintf(text, sizeof(text), "[worker]\ntype = ");
    memset(text + n, 'b', 198 - 7);
    snprintf(text + n + 198 - 7, 2, "\n");
    struct cfg *cfg = load_ok(ini(text));
    EXPECT(cfg != NULL);
    EXPECT(cfg != NULL && strlen(cfg->worker_type) == 198 - 7);
    cfg_destroy(cfg);
    memset(text + n, 'b', 198 - 6);
    snprintf(text + n + 198 - 6, 2, "\n");
    EXPECT(expect_error(text, "2: line too long"));
}

TEST(duplicate_key)
{
    clear_env();
    EXPECT(expect_error("[worker]\nid = a\ntype = t\nid = b\n",
                        "4: id: duplicate key (first set on line 2)"));
    EXPECT(expect_error("[worker]\nid = a\n[orchestrator]\nurl = http://x\n[worker]\nid = b\n",
                        "6: id: duplicate key"));
    EXPECT(expect_error("[limits]\nx = 1\nx = 2\n", "3: limits.x: duplicate key"));
    EXPECT(expect_error("[plugin.p]\nk = 1\nk = 2\n", "3: plugin.p.k: duplicate key"));
    EXPECT(expect_error("[capabilities]\nk = 1\nk = 2\n", "3: capabilities.k: duplicate key"));
}

TEST(unknown_section_and_key)
{
    clear_env();
    EXPECT(expect_error("[worker]\nid = a\n[wrker]\nid = b\n", "4: [wrker]: unknown section"));
    EXPECT(expect_error("[worker]\nmax_tasks = 3\n", "2: max_tasks: unknown key in [worker]"));
    EXPECT(expect_error("[orchestrator]\nid = x\n", "2: id: unknown key in [orchestrator]"));
    EXPECT(expect_error("id = x\n", "1: []: key \"id\" before any [section]"));
}

TEST(syntax_errors_and_continuations)
{
    clear_env();
    EXPECT(expect_error("[worker]\nid = a\njust words\n", "3: syntax error"));
    EXPECT(expect_error("[worker\nid = a\n", "1: syntax error"));
    EXPECT(expect_error("[worker]\n= value\n", "2: syntax error"));
    /* The first error wins, whichever kind it is. */
    EXPECT(expect_error("[worker]\nbogus\nmax_concurrent_tasks = 0\n", "2: syntax error"));
    EXPECT(expect_error("[worker]\nmax_concurrent_tasks = 0\nbogus\n", "2: max_concurrent_tasks"));
    EXPECT(expect_error("[worker]\nid = a\n  type = b\n", "3: id: indented line continues"));
    /* An indented comment and blank lines are fine. */
    struct cfg *cfg = load_ok(ini("[worker]\nid = a\n   # note\n\n\t; other\ntype = b\n"));
    EXPECT(cfg != NULL);
    cfg_destroy(cfg);
}

TEST(unreadable_ini)
{
    clear_env();
    char err[AVT_ERRLEN], path[256];
    struct cfg *cfg = (struct cfg *)1;
    snprintf(path, sizeof(path), "%s/missing.ini", dir());
    EXPECT_EQ_INT(cfg_load(path, &cfg, err, sizeof(err)), -ENOENT);
    EXPECT(cfg == NULL);
    char want[512];
    snprintf(want, sizeof(want), "%s: cannot read: %s", path, strerror(ENOENT));
    EXPECT_EQ_STR(err, want);
    EXPECT_EQ_INT(cfg_load(dir(), &cfg, err, sizeof(err)), -EISDIR);
    EXPECT_CONTAINS(err, "cannot read");
}

TEST(plugin_keys_keep_line_numbers)
{
    clear_env();
    const char *path = ini("[worker]\nid = a\n\n[plugin.steps]\nmax_steps = 10\n"
                           "# comment\nname = spaced value ; trailing\n"
                           "[plugin.echo]\nprefix = >\n[plugin.steps]\nextra = 1\n");
    struct cfg *cfg = load_ok(path);
    ASSERT(cfg != NULL);
    ASSERT(cfg->nplugin_keys == 4);
    struct cfg_plugin_key *k = cfg->plugin_keys;
    EXPECT_EQ_STR(k[0].plugin, "steps");
    EXPECT_EQ_STR(k[0].key, "max_steps");
    EXPECT_EQ_STR(k[0].value, "10");
    EXPECT_EQ_INT(k[0].line, 5);
    EXPECT_EQ_STR(k[0].file, path);
    EXPECT_EQ_STR(k[1].value, "spaced value");
    EXPECT_EQ_INT(k[1].line, 7);
    EXPECT_EQ_STR(k[2].plugin, "echo");
    EXPECT_EQ_INT(k[2].line, 9);
    EXPECT_EQ_STR(k[3].plugin, "steps");
    EXPECT_EQ_INT(k[3].line, 11);
    cfg_destroy(cfg);
}

TEST(limits_with_timeouts)
{
    clear_env();
    struct cfg *cfg = load_ok(ini("[limits]\nresize = 2\nresize.timeout = 30.5\n"
                                  "slow.timeout = 600\nfree = 0\nx.y.z = 4096\n"));
    ASSERT(cfg != NULL);
    EXPECT_EQ_INT(cfg->nlimits, 4);
    const struct cfg_limit *l = cfg_limit_find(cfg, "resize");
    ASSERT(l != NULL);
    EXPECT_EQ_INT(l->max, 2);
    EXPECT(l->timeout == 30.5);
    l = cfg_limit_find(cfg, "slow");
    ASSERT(l != NULL);
    EXPECT_EQ_INT(l->max, 0);
    EXPECT(l->timeout == 600);
    l = cfg_limit_find(cfg, "free");
    EXPECT(l != NULL && l->max == 0 && l->timeout == 0);
    l = cfg_limit_find(cfg, "x.y.z");
    EXPECT(l != NULL && l->max == 4096);
    EXPECT(cfg_limit_find(cfg, "other") == NULL);
    EXPECT(cfg_limit_find(cfg, "resize.timeout") == NULL);
    cfg_destroy(cfg);
}

TEST(token_file)
{
    clear_env();
    char tf[256], text[512];
    snprintf(tf, sizeof(tf), "%s", write_secret("token", "tok-123\n"));
    snprintf(text, sizeof(text), "[orchestrator]\ntoken_file = %s\n", tf);
    struct cfg *cfg = load_ok(ini(text));
    ASSERT(cfg != NULL);
    EXPECT_EQ_STR(cfg->token, "tok-123");
    EXPECT_EQ_STR(cfg->token_file, tf);
    cfg_destroy(cfg);

    /* Only one newline is stripped: a second one is a control character. */
    write_secret("token", "tok\n\n");
    EXPECT(expect_error(text, "2: token_file: "));

    write_secret("token", "\n");
    char want[512];
    snprintf(want, sizeof(want), "2: token_file: %s is empty", tf);
    EXPECT(expect_error(text, want));

    snprintf(text, sizeof(text), "[orchestrator]\n\ntoken_file = %s/nope\n", dir());
    snprintf(want, sizeof(want), "3: token_file: cannot read %s/nope: %s", dir(), strerror(ENOENT));
    EXPECT(expect_error(text, want));

    EXPECT(expect_env_error("WORKER_TOKEN_FILE", "/nonexistent/token",
                            "environment: WORKER_TOKEN_FILE: cannot read /nonexistent/token: "));
}

/* A token file open to others is refused like a TLS key (mode, owner),
 * whichever key names it; the token itself never shows. */
TEST(token_file_must_be_private)
{
    clear_env();
    char tf[256], text[512], want[1024];
    snprintf(tf, sizeof(tf), "%s", write_secret("token.open", "tok-secret-42\n"));
    snprintf(text, sizeof(text), "[orchestrator]\ntoken_file = %s\n", tf);
    struct cfg *cfg = load_ok(ini(text));
    EXPECT(cfg != NULL);
    cfg_destroy(cfg);

    static const mode_t open_modes[] = {0644, 0640, 0604, 0620, 0660};
    for (size_t i = 0; i < ARRAY_LEN(open_modes); i++) {
        chmod(tf, open_modes[i]);
        snprintf(want, sizeof(want),
                 "2: token_file: %s has mode %04o: a file holding a secret must not be accessible "
                 "by group or others; run chmod 600 %s",
                 tf, (unsigned)open_modes[i], tf);
        EXPECT(expect_error(text, want));
    }
    chmod(tf, 0644);
    snprintf(want, sizeof(want), "environment: WORKER_TOKEN_FILE: %s has mode 0644", tf);
    EXPECT(expect_env_error("WORKER_TOKEN_FILE", tf, want));
    snprintf(text, sizeof(text), "[orchestrator]\nsigning_key_file = %s\n", tf);
    EXPECT(expect_error(text, "2: signing_key_file: "));
    snprintf(text, sizeof(text), "[orchestrator.b]\nurl = http://b\ntoken_file = %s\n", tf);
    EXPECT(expect_error(text, "2: [orchestrator.b]: "));

    /* Owned by another user (only root can make such a file readable). */
    chmod(tf, 0600);
    if (geteuid() == 0 && chown(tf, 1, 1) == 0) {
        snprintf(text, sizeof(text), "[orchestrator]\ntoken_file = %s\n", tf);
        snprintf(want, sizeof(want),
                 "2: token_file: %s is owned by uid 1: a file holding a secret must belong to the "
                 "user the daemon runs as (uid 0) or to root",
                 tf);
        EXPECT(expect_error(text, want));
        EXPECT(chown(tf, 0, 0) == 0);
    } else {
        printf(
            "# (not root: a file of another user's cannot be made readable to test its owner)\n");
    }
}

/* The environment of a child process that ran cfg_env_scrub(): the
 * secrets are gone (also from the strings of the environment), other
 * variables stay, and every cfg_load() - a reload too - still sees the
 * secrets. In a child, because the scrub is once per process. */
static int scrub_in_child(void)
{
    extern char **environ;
    int bad = 0;
    setenv("WORKER_TOKEN", "tok-global-1", 1);
    setenv("WORKER_INDIVIDUAL_TOKEN", "tok-individual-2", 1);
    setenv("WORKER_SIGNING_KEY", "key-signing-3", 1);
    setenv("ORCHESTRATORS_CONFIG", "[{\"url\": \"http://h:1\", \"token\": \"tok-orch-4\"}]", 1);
    setenv("MAX_CONCURRENT_TASKS", "7", 1);
    char *kept = getenv("WORKER_TOKEN");
    cfg_env_scrub();
    static const char *const gone[] = {"WORKER_TOKEN", "WORKER_INDIVIDUAL_TOKEN",
                                       "WORKER_SIGNING_KEY", "ORCHESTRATORS_CONFIG"};
    for (size_t i = 0; i < ARRAY_LEN(gone); i++) {
        if (getenv(gone[i]) != NULL) {
            printf("#   %s is still in the environment\n", gone[i]);
            bad = 1;
        }
    }
    for (char **e = environ; *e != NULL; e++)
        bad |= strstr(*e, "tok-") != NULL || strstr(*e, "key-signing") != NULL;
    if (kept[0] != '\0') {
        printf("#   the environment's copy of WORKER_TOKEN was not wiped\n");
        bad = 1;
    }
    if (getenv("MAX_CONCURRENT_TASKS") == NULL) {
        printf("#   MAX_CONCURRENT_TASKS was taken too\n");
        bad = 1;
    }
    for (int round = 0; round < 2; round++) { /* the start, then a reload */
        struct cfg *cfg = load_ok(NULL);
        if (cfg == NULL || strcmp(cfg->token, "tok-individual-2") != 0 ||
            strcmp(cfg->signing_key, "key-signing-3") != 0 || cfg->norchs != 1 ||
            strcmp(cfg->orchs[0].token, "tok-orch-4") != 0 || cfg->max_concurrent_tasks != 7) {
            printf("#   load %d did not see the scrubbed secrets\n", round);
            bad = 1;
        }
        cfg_destroy(cfg);
    }
    cfg_env_scrub(); /* twice is harmless: the kept values stay */
    struct cfg *cfg = load_ok(NULL);
    bad |= cfg == NULL || strcmp(cfg->token, "tok-individual-2") != 0;
    cfg_destroy(cfg);
    return bad;
}

TEST(env_scrub_takes_secrets_and_keeps_them_for_reloads)
{
    clear_env();
    fflush(stdout);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        int bad = scrub_in_child();
        fflush(stdout);
        _exit(bad);
    }
    int status = 0;
    ASSERT(waitpid(pid, &status, 0) == pid);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(cleartext_remote_urls)
{
    static const char *const remote[] = {
        "http://orch.example.com:8080", "http://192.0.2.7",         "HTTP://Example.COM/api",
        "http://[2001:db8::1]:80",      "http://localhost.evil.io", "http://127.0.0.1.nip.io",
        "http://10.0.0.1:8080/",        "http://[::ffff:10.0.0.1]",
    };
    static const char *const local[] = {
        "http://localhost:8080", "http://LOCALHOST",   "http://localhost.",
        "http://127.0.0.1:1",    "http://127.0.0.2/x", "http://127.1",
        "http://[::1]:8080",     "http://w.localhost", "http://[::ffff:127.0.0.1]:9",
    };
    static const char *const secure[] = {"https://orch.example.com", "https://192.0.2.7:443",
                                         "https://[2001:db8::1]"};
    for (size_t i = 0; i < ARRAY_LEN(remote); i++) {
        if (!cfg_url_is_cleartext_remote(remote[i]))
            TAP_FAIL_("%s is another host over http://", remote[i]);
    }
    for (size_t i = 0; i < ARRAY_LEN(local); i++) {
        if (cfg_url_is_cleartext_remote(local[i]))
            TAP_FAIL_("%s is this machine", local[i]);
    }
    for (size_t i = 0; i < ARRAY_LEN(secure); i++)
        EXPECT(!cfg_url_is_cleartext_remote(secure[i]));
}

TEST(token_and_token_file_conflict)
{
    clear_env();
    EXPECT(expect_error("[orchestrator]\ntoken = a\ntoken_file = /etc/t\n",
                        "3: token_file: token and token_file are both set"));
    EXPECT(expect_error("[orchestrator]\ntoken_file = /etc/t\n\ntoken = a\n",
                        "4: token: token and token_file are both set"));
}

TEST(dump_masks_token)
{
    clear_env();
    static const char secret[] = "Zq9-very-secret-token";
    char text[256];
    snprintf(text, sizeof(text),
             "[orchestrator]\ntoken = %s\n[plugin.p]\nk = v\napi_Token = plugin-secret\n", secret);
    struct cfg *cfg = load_ok(ini(text));
    ASSERT(cfg != NULL);
    char *out = dump_to_string(cfg);
    EXPECT(strstr(out, secret) == NULL);
    EXPECT(strstr(out, "Zq9") == NULL);
    EXPECT_CONTAINS(out, "\ntoken = ********\n");
    EXPECT_CONTAINS(out, "\n[plugin.p]\nk = v\napi_Token = ********\n");
    EXPECT(strstr(out, "plugin-secret") == NULL);
    EXPECT_CONTAINS(out, "\n[limits]\n");
    free(out);
    cfg_destroy(cfg);
}

/* The dump is INI that loads back to the same values. */
TEST(dump_round_trips)
{
    clear_env();
    struct cfg *a = load_ok(ini(full_ini));
    ASSERT(a != NULL);
    free_and_null(a->token); /* the mask would come back as the token */
    char *text = dump_to_string(a);
    struct cfg *b = load_ok(write_file("dumped.ini", text));
    if (b == NULL)
        printf("# dump was:\n%s", text);
    ASSERT(b != NULL);
    char *again = dump_to_string(b);
    /* Only the "# from:" line (the file name) differs. */
    EXPECT_EQ_STR(strstr(text, "[worker]"), strstr(again, "[worker]"));
    EXPECT_EQ_STR(b->url, a->url);
    EXPECT(b->shutdown_timeout == a->shutdown_timeout);
    EXPECT(json_equal(b->extra, a->extra));
    EXPECT(json_equal(b->cost_per_skill, a->cost_per_skill));
    free(again);
    free(text);
    cfg_destroy(a);
    cfg_destroy(b);
}

TEST(admin_listen_values)
{
    clear_env();
    static const struct {
        const char *ini, *want;
    } bad[] = {
        {"[admin]\nlisten = [::1:80\n", "2: listen: \"[::1:80\": unbalanced brackets"},
        {"[admin]\nlisten = ::1]:80\n", "2: listen: \"::1]:80\": unbalanced brackets"},
        {"[admin]\nlisten = 80x\n", "2: listen: \"80x\": expected off, PORT"},
        {"[admin]\nlisten = 127.0.0.1:80x\n", "2: listen: \"127.0.0.1:80x\": expected off"},
        {"[admin]\nlisten = 127.0.0.1:0\n", "2: listen: \"127.0.0.1:0\": expected off"},
        {"[admin]\nlisten = ::1:9464\n",
         "2: listen: \"::1:9464\" is ambiguous: an IPv6 address goes in brackets, as in "
         "[::1]:9464"},
        {"[admin]\nlisten = host.example:80\n", "2: listen: \"host.example\" is not an IPv4"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        EXPECT(expect_error(bad[i].ini, bad[i].want));
    static const struct {
        const char *value, *want;
    } good[] = {{"9464", "127.0.0.1:9464"},       {"localhost:9464", "127.0.0.1:9464"},
                {"0.0.0.0:9464", "0.0.0.0:9464"}, {"[::1]:9464", "[::1]:9464"},
                {"[::]:9464", "[::]:9464"},       {"off", NULL}};
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[admin]\nlisten = %s\n", good[i].value);
        struct cfg *c = load_ok(ini(text));
        if (c == NULL) {
            TAP_FAIL_("listen = %s refused", good[i].value);
            continue;
        }
        if (good[i].want == NULL
                ? c->admin_listen != NULL
                : c->admin_listen == NULL || strcmp(c->admin_listen, good[i].want) != 0)
            TAP_FAIL_("listen = %s gave %s", good[i].value,
                      c->admin_listen ? c->admin_listen : "(off)");
        cfg_destroy(c);
    }
}

TEST(destroy_null)
{
    cfg_destroy(NULL);
}

TAP_MAIN()
