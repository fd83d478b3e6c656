/*
 * test_plugin_http_fetch.c - the http_fetch plugin against the mock host and
 * a real local HTTP server (tests/unit/http_test_server.py on 127.0.0.1):
 * text, base64 and file bodies, HEAD, selected headers, redirects and their
 * limit, the total timeout and the task's deadline, the body limit, status
 * classes and their overrides, cancellation, the refusal of loopback and
 * private addresses (by default, and after a redirect), the host allowlist,
 * configuration checks, and concurrent fetches.
 *
 * The server listens on loopback, which the plugin refuses by default: the
 * refusal tests run with the defaults, the others with allow_private = true
 * or an allow_networks entry.
 */
#include "http_fetch/http_fetch.c"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "mock_host.h"
#include "tap.h"

extern char **environ;

static pid_t server_pid;
static int server_in = -1; /* the server exits when this closes */
static int port;

static double tmo(double s)
{
    const char *m = getenv("TIMEOUT_MULT");
    double f = m ? strtod(m, NULL) : 1.0;
    return s * (f > 0 ? f : 1.0);
}

/* ---- The server child (as in test_http.c) ---- */

static void server_stop(void)
{
    if (server_in >= 0) {
        close(server_in);
        waitpid(server_pid, NULL, 0);
    }
}

static int read_port(int fd)
{
    char line[32];
    size_t n = 0;

    while (n < sizeof(line) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(tmo(10) * 1000)) <= 0 || read(fd, line + n, 1) <= 0)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    return (int)strtol(line, NULL, 10);
}

static int server(void)
{
    char py[256], script[] = "tests/unit/http_test_server.py";
    char *argv[] = {py, script, NULL};
    int out[2], in[2], rc;
    posix_spawn_file_actions_t fa;

    if (port > 0)
        return 0;
    snprintf(py, sizeof(py), "%s", getenv("PYTHON") ? getenv("PYTHON") : "/usr/bin/python3");
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0)
        return -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    rc = posix_spawn(&server_pid, py, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    server_in = in[1];
    atexit(server_stop);
    port = rc == 0 ? read_port(out[0]) : -1;
    close(out[0]);
    if (port <= 0)
        printf("# cannot start tests/unit/http_test_server.py\n");
    return port > 0 ? 0 : -1;
}

/* ---- Helpers ---- */

/* A configured plugin: init(), the key/value pairs (NULL-ended), start().
 * NULL when a step fails (printed). */
static void *conf_new(const char *const *kv)
{
    void *state = NULL;
    char err[256];

    if (mock_plugin_init(&avt_plugin, &state) != 0)
        return NULL;
    for (; kv != NULL && kv[0] != NULL; kv += 2) {
        if (mock_plugin_configure(&avt_plugin, state, kv[0], kv[1], err, sizeof(err)) != 0) {
            printf("# configure %s = %s: %s\n", kv[0], kv[1], err);
            mock_plugin_shutdown(&avt_plugin, state);
            return NULL;
        }
    }
    if (avt_plugin.start(state, err, sizeof(err)) != 0) {
        printf("# start: %s\n", err);
        mock_plugin_shutdown(&avt_plugin, state);
        return NULL;
    }
    return state;
}

static const char *const OPEN[] = {"allow_private", "true", NULL};

/* Run one task; params_fmt is a printf format where each %d is the port. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static struct mock_task *fetch(void *state, const char *params_fmt)
{
    char params[1024];
    struct mock_task *mt;

    snprintf(params, sizeof(params), params_fmt, port, port, port);
    mt = mock_task_new("http_fetch", params);
    mock_run(&avt_plugin, state, mt);
    return mt;
}
#pragma GCC diagnostic pop

static void expect_failure(struct mock_task *mt, const char *code, const char *text)
{
    EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
    EXPECT_EQ_STR(mt->code, code);
    EXPECT_CONTAINS(mt->message, text);
    EXPECT_EQ_INT(mt->noutcomes, 1);
    EXPECT_EQ_INT(mt->rc, 0);
}

/* The number of connections the server accepted so far (this query's
 * own included), fetched through a plugin that may reach loopback. */
static long server_conns(void)
{
    void *st = conf_new(OPEN);
    struct mock_task *mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/conns\"}");
    long n = mock_data_str(mt, "body") ? strtol(mock_data_str(mt, "body"), NULL, 10) : -1;

    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
    return n;
}

static const char *header(const struct mock_task *mt, const char *name)
{
    json_t *h = mt->data ? json_object_get(mt->data, "headers") : NULL;

    return json_string_value(json_object_get(h, name));
}

/* ---- Descriptor, configuration, policy ---- */

TEST(descriptor)
{
    EXPECT_EQ_INT(avt_plugin.abi_version, AVT_ABI_VERSION);
    EXPECT_EQ_STR(avt_plugin.name, "http_fetch");
    ASSERT(avt_plugin.task_types != NULL);
    EXPECT_EQ_STR(avt_plugin.task_types[0], "http_fetch");
    EXPECT(avt_plugin.task_types[1] == NULL);
    EXPECT(avt_plugin.configure != NULL && avt_plugin.start != NULL);
}

TEST(configuration_refuses_unknown_keys_and_bad_values)
{
    static const char *const bad[][2] = {
        {"no_such_key", "1"},
        {"timeout", "0"},
        {"timeout", "abc"},
        {"connect_timeout", "-1"},
        {"max_body_bytes", "0"},
        {"max_body_bytes", "2000000000"},
        {"max_redirects", "51"},
        {"allow_private", "maybe"},
        {"allow_hosts", "exa mple/x"},
        {"allow_networks", "10.0.0.0/33"},
        {"allow_networks", "nonsense"},
        {"output_dir", "relative/dir"},
        {"success_status", "99"},
        {"transient_status", "500-450"},
        {"user_agent", ""},
    };
    char err[256];
    void *st;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ASSERT(mock_plugin_init(&avt_plugin, &st) == 0);
        err[0] = '\0';
        EXPECT_EQ_INT(
            mock_plugin_configure(&avt_plugin, st, bad[i][0], bad[i][1], err, sizeof(err)),
            -EINVAL);
        EXPECT(err[0] != '\0');
        mock_plugin_shutdown(&avt_plugin, st);
    }
    ASSERT(mock_plugin_init(&avt_plugin, &st) == 0);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "no_such_key", "1", err, sizeof(err)),
                  -EINVAL);
    EXPECT_CONTAINS(err, "unknown key");
    /* A status in two classes depends on the order of keys: refused. */
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "success_status", "404", err, sizeof(err)),
                  0);
    EXPECT_EQ_INT(
        mock_plugin_configure(&avt_plugin, st, "permanent_status", "400-499", err, sizeof(err)),
        -EINVAL);
    EXPECT_CONTAINS(err, "404");
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(start_refuses_an_output_dir_that_is_not_there)
{
    void *st;
    char err[256];

    ASSERT(mock_plugin_init(&avt_plugin, &st) == 0);
    EXPECT_EQ_INT(mock_plugin_configure(&avt_plugin, st, "output_dir", "/nonexistent/avt-fetch",
                                        err, sizeof(err)),
                  0);
    EXPECT_EQ_INT(avt_plugin.start(st, err, sizeof(err)), -EINVAL);
    EXPECT_CONTAINS(err, "/nonexistent/avt-fetch");
    mock_plugin_shutdown(&avt_plugin, st);
}

static int refused(const struct fetch_conf *c, const char *addr)
{
    struct sockaddr_storage ss = {0};

    if (strchr(addr, ':') != NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, addr, &in6->sin6_addr) != 1)
            return -1;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        if (inet_pton(AF_INET, addr, &in->sin_addr) != 1)
            return -1;
    }
    return addr_refused(c, (struct sockaddr *)&ss);
}

TEST(internal_addresses_are_refused_public_ones_not)
{
    static const char *const internal[] = {
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "fc00::5",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
        "2001:0:1234::1",
        "::127.0.0.1",
    };
    static const char *const public_[] = {"93.184.216.34",  "1.1.1.1",          "172.32.0.1",
                                          "192.169.0.1",    "100.128.0.1",      "2606:4700::1111",
                                          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"};
    static const char *const nets[] = {"allow_networks", "10.1.0.0/16, fd00::/8", NULL};
    struct fetch_conf *c = conf_new(NULL), *n = conf_new(nets);

    ASSERT(c != NULL && n != NULL);
    for (size_t i = 0; i < sizeof(internal) / sizeof(internal[0]); i++) {
        if (refused(c, internal[i]) != 1)
            TAP_FAIL_("%s is not refused", internal[i]);
    }
    for (size_t i = 0; i < sizeof(public_) / sizeof(public_[0]); i++) {
        if (refused(c, public_[i]) != 0)
            TAP_FAIL_("%s is refused", public_[i]);
    }
    /* allow_networks lets exactly its networks through. */
    EXPECT_EQ_INT(refused(n, "10.1.200.3"), 0);
    EXPECT_EQ_INT(refused(n, "10.2.0.1"), 1);
    EXPECT_EQ_INT(refused(n, "fd00::1"), 0);
    EXPECT_EQ_INT(refused(n, "127.0.0.1"), 1);
    c->allow_private = 1;
    EXPECT_EQ_INT(refused(c, "127.0.0.1"), 0);
    EXPECT_EQ_INT(refused(c, "fe80::1"), 0);
    mock_plugin_shutdown(&avt_plugin, c);
    mock_plugin_shutdown(&avt_plugin, n);
}

TEST(host_patterns)
{
    static const char *const kv[] = {"allow_hosts", "Example.COM, *.example.org [::1]", NULL};
    struct fetch_conf *c = conf_new(kv);

    ASSERT(c != NULL);
    EXPECT(host_allowed(c, "example.com"));
    EXPECT(host_allowed(c, "EXAMPLE.com."));
    EXPECT(!host_allowed(c, "www.example.com"));
    EXPECT(!host_allowed(c, "example.com.evil.net"));
    EXPECT(host_allowed(c, "a.example.org"));
    EXPECT(host_allowed(c, "a.b.example.org"));
    EXPECT(!host_allowed(c, "example.org"));
    EXPECT(!host_allowed(c, "badexample.org"));
    EXPECT(host_allowed(c, "[::1]"));
    EXPECT(!host_allowed(c, "127.0.0.1"));
    mock_plugin_shutdown(&avt_plugin, c);
}

TEST(invalid_params_are_invalid_input)
{
    static const char *const bad[] = {
        "{}",
        "{\"url\": 5}",
        "{\"url\": \"\"}",
        "{\"url\": \"not a url\"}",
        "{\"url\": \"ftp://127.0.0.1:%d/x\"}",
        "{\"url\": \"file:///etc/passwd\"}",
        "{\"url\": \"http://127.0.0.1:%d/hello\", \"method\": \"POST\"}",
        "{\"url\": \"http://127.0.0.1:%d/hello\", \"as\": \"xml\"}",
        "{\"url\": \"http://127.0.0.1:%d/hello\", \"headers\": \"content-type\"}",
        "{\"url\": \"http://127.0.0.1:%d/hello\", \"headers\": [\"bad name\"]}",
        "{\"url\": \"http://127.0.0.1:%d/hello\", \"as\": \"file\"}",
    };
    void *st = conf_new(OPEN);
    struct mock_task *mt;

    ASSERT(st != NULL);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mt = fetch(st, bad[i]);
        EXPECT_EQ_INT(mt->outcome, MOCK_FAILED);
        if (mt->code == NULL || strcmp(mt->code, AVT_INVALID_INPUT_ERROR) != 0)
            TAP_FAIL_("%s: %s %s", bad[i], mt->code, mt->message);
        mock_task_free(mt);
    }
    mt = mock_task_new("http_fetch", "[1]");
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_STR(mt->code, AVT_INVALID_INPUT_ERROR);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

/* ---- Fetching ---- */

TEST(text_body_status_and_selected_headers)
{
    void *st;
    struct mock_task *mt;
    char url[128];

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/page\", \"headers\": [\"Content-Type\", "
                   "\"x-tag\", \"x-absent\"]}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "status"), 200);
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "<p>h\u00e9llo \u2013 w\u00f6rld \u2603</p>\n");
    EXPECT_EQ_INT(mock_data_int(mt, "size"), strlen(mock_data_str(mt, "body")));
    EXPECT_EQ_INT(mock_data_int(mt, "redirects"), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/page", port);
    EXPECT_EQ_STR(mock_data_str(mt, "url"), url);
    EXPECT_EQ_STR(header(mt, "content-type"), "text/html; charset=utf-8");
    EXPECT_EQ_STR(header(mt, "x-tag"), "a, b");
    EXPECT(header(mt, "x-absent") == NULL);
    EXPECT(json_object_get(mt->data, "body_base64") == NULL);
    EXPECT_EQ_INT(mt->violations, 0);
    mock_task_free(mt);
    /* Without params.headers: content-type only. */
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/page\"}");
    EXPECT_EQ_STR(header(mt, "content-type"), "text/html; charset=utf-8");
    EXPECT_EQ_INT(json_object_size(json_object_get(mt->data, "headers")), 1);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(binary_body_as_base64_and_refused_as_text)
{
    static const char *const b64 =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+"
        "P0BBQkN"
        "ERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+"
        "AgYKDhIWGh4"
        "iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/"
        "wMHCw8TFxsfIycrLz"
        "M3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==";
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/bytes\", \"as\": \"base64\"}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    EXPECT_EQ_STR(mock_data_str(mt, "body_base64"), b64);
    EXPECT_EQ_INT(mock_data_int(mt, "size"), 256);
    EXPECT(json_object_get(mt->data, "body") == NULL);
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/hello\", \"as\": \"base64\"}");
    EXPECT_EQ_STR(mock_data_str(mt, "body_base64"), "aGVsbG8gd29ybGQ=");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/bytes\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "UTF-8");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    while (d != NULL && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name), sl = strlen(suffix);
        n += e->d_name[0] != '.' && l >= sl && strcmp(e->d_name + l - sl, suffix) == 0;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

TEST(body_as_file_in_output_dir)
{
    char dir[] = "/tmp/avt-fetch-XXXXXX", buf[512], prefix[64];
    const char *kv[] = {"allow_private", "true", "output_dir", dir, NULL};
    void *st;
    struct mock_task *mt;
    const char *path;
    ssize_t n;
    int fd;

    ASSERT(server() == 0 && mkdtemp(dir) != NULL && (st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/bytes\", \"as\": \"file\"}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    path = mock_data_str(mt, "path");
    ASSERT(path != NULL);
    snprintf(prefix, sizeof(prefix), "%s/job-1-", dir);
    EXPECT(strncmp(path, prefix, strlen(prefix)) == 0);
    fd = open(path, O_RDONLY);
    ASSERT(fd >= 0);
    n = read(fd, buf, sizeof(buf));
    close(fd);
    EXPECT_EQ_INT(n, 256);
    for (int i = 0; i < 256 && n == 256; i++)
        EXPECT_EQ_INT((unsigned char)buf[i], i);
    EXPECT_EQ_INT(mock_data_int(mt, "size"), 256);
    unlink(path);
    mock_task_free(mt);
    /* A failed fetch leaves nothing behind, not even the part file. */
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/status/404\", \"as\": \"file\"}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/big?n=20000000\", \"as\": \"file\"}");
    EXPECT_EQ_STR(mt->code, AVT_PERMANENT_ERROR);
    mock_task_free(mt);
    EXPECT_EQ_INT(count_files(dir, ""), 0);
    mock_plugin_shutdown(&avt_plugin, st);
    rmdir(dir);
}

TEST(head_has_no_body)
{
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/hello\", \"method\": \"HEAD\"}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "status"), 200);
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "");
    EXPECT_EQ_INT(mock_data_int(mt, "size"), 0);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(user_agent_is_configurable)
{
    static const char *const kv[] = {"allow_private", "true", "user_agent", "my-scraper/2.0 (ops)",
                                     NULL};
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/ua\"}");
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "avtworkerd-http_fetch/1.0");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
    ASSERT((st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/ua\"}");
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "my-scraper/2.0 (ops)");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(redirects_are_followed_up_to_the_limit)
{
    /* Each redirect has a 100000-byte body, over max_body_bytes: it must not
     * be read. */
    static const char *const kv[] = {
        "allow_private", "true", "max_redirects", "3", "max_body_bytes", "1000", NULL};
    static const char *const codes[] = {"301", "302", "303", "307", "308"};
    void *st;
    struct mock_task *mt;
    char params[256], url[128];

    ASSERT(server() == 0 && (st = conf_new(kv)) != NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/page", port);
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        snprintf(params, sizeof(params), "{\"url\": \"http://127.0.0.1:%%d/redirect?n=2&code=%s\"}",
                 codes[i]);
        mt = fetch(st, params);
        if (mt->outcome != MOCK_SUCCEEDED)
            printf("# code %s: %s %s\n", codes[i], mt->code, mt->message);
        ASSERT(mt->outcome == MOCK_SUCCEEDED);
        EXPECT_EQ_INT(mock_data_int(mt, "status"), 200);
        EXPECT_EQ_INT(mock_data_int(mt, "redirects"), 3);
        EXPECT_EQ_STR(mock_data_str(mt, "url"), url);
        EXPECT_CONTAINS(mock_data_str(mt, "body"), "w\u00f6rld");
        mock_task_free(mt);
    }
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/redirect?n=3\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "more than 3 redirects");
    mock_task_free(mt);
    /* A redirect to another scheme is not followed. */
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/redirect-to?url=file:///etc/passwd\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "redirect");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(total_timeout_is_transient)
{
    static const char *const kv[] = {"allow_private", "true", "timeout", "0.5", NULL};
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/sleep?ms=30000\"}");
    expect_failure(mt, AVT_TRANSIENT_ERROR, "timed out");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(task_deadline_ends_the_fetch)
{
    void *st;
    struct mock_task *mt;
    struct timespec now;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = mock_task_new("http_fetch", NULL);
    json_object_set_new(mt->pub.params, "url",
                        json_sprintf("http://127.0.0.1:%d/sleep?ms=30000", port));
    clock_gettime(CLOCK_REALTIME, &now);
    mt->pub.deadline = (double)now.tv_sec + 0.5;
    mock_run(&avt_plugin, st, mt);
    expect_failure(mt, AVT_TRANSIENT_ERROR, "timed out");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(body_over_the_limit_is_permanent)
{
    static const char *const kv[] = {"allow_private", "true", "max_body_bytes", "1000", NULL};
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(kv)) != NULL);
    /* With a Content-Length (refused up front) and without (chunked). */
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/big?n=5000\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "max_body_bytes");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/chunked?n=5000\", \"as\": \"base64\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "max_body_bytes");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/chunked?n=1000\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "size"), 1000);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(progress_rises_with_a_known_length)
{
    static const char *const kv[] = {"allow_private", "true", "max_body_bytes", "30000000", NULL};
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/big?n=20000000\", \"as\": \"base64\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "size"), 20000000);
    EXPECT(mt->nprogress >= 1);
    for (int i = 0; i < mt->nprogress && i < MOCK_MAX_PROGRESS; i++) {
        EXPECT(mt->percents[i] >= 0 && mt->percents[i] < 100);
        EXPECT(i == 0 || mt->percents[i] > mt->percents[i - 1]);
    }
    EXPECT_CONTAINS(mt->last_progress, "of 20000000 bytes");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(status_classes_and_overrides)
{
    static const char *const kv[] = {
        "allow_private", "true", "success_status", "404, 410", "permanent_status", "503", NULL};
    static const struct {
        int status;
        const char *code;
    } dflt[] = {{400, AVT_PERMANENT_ERROR}, {404, AVT_PERMANENT_ERROR}, {408, AVT_TRANSIENT_ERROR},
                {429, AVT_TRANSIENT_ERROR}, {500, AVT_TRANSIENT_ERROR}, {503, AVT_TRANSIENT_ERROR}};
    void *st;
    struct mock_task *mt;
    char params[128];

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    for (size_t i = 0; i < sizeof(dflt) / sizeof(dflt[0]); i++) {
        snprintf(params, sizeof(params), "{\"url\": \"http://127.0.0.1:%%d/status/%d\"}",
                 dflt[i].status);
        mt = fetch(st, params);
        snprintf(params, sizeof(params), "HTTP status %d", dflt[i].status);
        expect_failure(mt, dflt[i].code, params);
        mock_task_free(mt);
    }
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/status/204\"}");
    EXPECT_EQ_INT(mock_data_int(mt, "status"), 204);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
    ASSERT((st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/status/404\"}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    EXPECT_EQ_INT(mock_data_int(mt, "status"), 404);
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "status 404");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/status/503\"}");
    expect_failure(mt, AVT_PERMANENT_ERROR, "HTTP status 503");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(network_error_is_transient)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0), closed;
    void *st = conf_new(OPEN);
    struct mock_task *mt;
    char params[128];

    /* A port that was just free: nothing listens there. */
    ASSERT(st != NULL && s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
    getsockname(s, (struct sockaddr *)&a, &al);
    closed = ntohs(a.sin_port);
    close(s);
    snprintf(params, sizeof(params), "{\"url\": \"http://127.0.0.1:%d/x\"}", closed);
    mt = mock_task_new("http_fetch", params);
    mock_run(&avt_plugin, st, mt);
    EXPECT_EQ_STR(mt->code, AVT_TRANSIENT_ERROR);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(cancellation_stops_the_fetch)
{
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    mt = mock_task_new("http_fetch", NULL);
    json_object_set_new(mt->pub.params, "url",
                        json_sprintf("http://127.0.0.1:%d/sleep?ms=30000", port));
    mock_cancel_after_ms(mt, 300);
    mock_run(&avt_plugin, st, mt);
    expect_failure(mt, AVT_TRANSIENT_ERROR, "cancelled");
    EXPECT(atomic_load(&mt->is_cancelled_calls) > 0);
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

/* ---- Server-side request forgery ---- */

TEST(loopback_is_refused_by_default_before_connecting)
{
    void *st;
    struct mock_task *mt;
    long before, after;

    ASSERT(server() == 0 && (st = conf_new(NULL)) != NULL);
    mock_reset();
    before = server_conns();
    ASSERT(before > 0);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "address 127.0.0.1 of host 127.0.0.1 is not allowed");
    mock_task_free(mt);
    /* A name that resolves to loopback: the check is on the address. */
    mt = fetch(st, "{\"url\": \"http://localhost:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "of host localhost is not allowed");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://[::1]:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "address ::1");
    mock_task_free(mt);
    /* The server saw no connection but the one of the count itself. */
    after = server_conns();
    EXPECT_EQ_INT(after, before + 1);
    EXPECT(mock_log_contains("refused"));
    EXPECT(mock_log_count_level(AVT_LOG_WARNING) >= 3);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(a_redirect_to_a_refused_address_is_refused)
{
    /* 127.0.0.1 (the server) is let through by allow_networks; the redirect
     * goes to 127.0.0.2, loopback too but not allowed. */
    static const char *const kv[] = {"allow_networks", "127.0.0.1/32", NULL};
    void *st;
    struct mock_task *mt;

    ASSERT(server() == 0 && (st = conf_new(kv)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/redirect?n=1\"}");
    EXPECT_EQ_INT(mt->outcome, MOCK_SUCCEEDED);
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/redirect-to?url=http://127.0.0.2:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "address 127.0.0.2");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(allowlist_refuses_other_hosts_also_after_a_redirect)
{
    static const char *const other[] = {"allow_private", "true", "allow_hosts",
                                        "example.invalid, *.example.invalid", NULL};
    static const char *const ours[] = {"allow_private", "true", "allow_hosts", "127.0.0.1", NULL};
    void *st;
    struct mock_task *mt;
    long before;

    ASSERT(server() == 0 && (st = conf_new(other)) != NULL);
    before = server_conns();
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "host 127.0.0.1 is not allowed");
    mock_task_free(mt);
    EXPECT_EQ_INT(server_conns(), before + 1);
    mock_plugin_shutdown(&avt_plugin, st);
    ASSERT((st = conf_new(ours)) != NULL);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/hello\"}");
    EXPECT_EQ_STR(mock_data_str(mt, "body"), "hello world");
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://127.0.0.1:%d/redirect-to?url=http://localhost:%d/hello\"}");
    expect_failure(mt, AVT_SECURITY_ERROR, "host localhost is not allowed");
    mock_task_free(mt);
    mock_plugin_shutdown(&avt_plugin, st);
}

TEST(credentials_in_the_url_are_never_shown)
{
    static const char *const kv[] = {"allow_private", "true", "timeout", "2", NULL};
    void *open_st, *st;
    struct mock_task *mt;
    char url[128];

    ASSERT(server() == 0 && (open_st = conf_new(kv)) != NULL && (st = conf_new(NULL)) != NULL);
    mock_reset();
    mt = fetch(open_st, "{\"url\": \"http://ann:s3cret@127.0.0.1:%d/page?q=1\"}");
    ASSERT(mt->outcome == MOCK_SUCCEEDED);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/page?q=1", port);
    EXPECT_EQ_STR(mock_data_str(mt, "url"), url);
    mock_task_free(mt);
    mt = fetch(open_st, "{\"url\": \"http://ann:s3cret@127.0.0.1:%d/sleep?ms=20000&t=tok\"}");
    expect_failure(mt, AVT_TRANSIENT_ERROR, "timed out");
    EXPECT(strstr(mt->message, "s3cret") == NULL && strstr(mt->message, "tok") == NULL);
    mock_task_free(mt);
    mt = fetch(st, "{\"url\": \"http://ann:s3cret@127.0.0.1:%d/hello?token=tok\"}");
    EXPECT_EQ_STR(mt->code, AVT_SECURITY_ERROR);
    EXPECT(strstr(mt->message, "s3cret") == NULL && strstr(mt->message, "tok") == NULL);
    mock_task_free(mt);
    EXPECT(mock_log_count() > 0);
    EXPECT(!mock_log_contains("s3cret"));
    EXPECT(!mock_log_contains("tok"));
    mock_plugin_shutdown(&avt_plugin, open_st);
    mock_plugin_shutdown(&avt_plugin, st);
}

/* ---- Threads ---- */

#define THREADS 4
#define PER_THREAD 10

static void *fetch_thread(void *state)
{
    long failures = 0;

    for (int i = 0; i < PER_THREAD; i++) {
        struct mock_task *mt =
            fetch(state, i % 2 ? "{\"url\": \"http://127.0.0.1:%d/page\"}"
                               : "{\"url\": \"http://127.0.0.1:%d/redirect?n=1\"}");
        failures += mt->outcome != MOCK_SUCCEEDED || mock_data_int(mt, "status") != 200;
        mock_task_free(mt);
    }
    return (void *)failures;
}

TEST(concurrent_fetches)
{
    pthread_t th[THREADS];
    long total = 0;
    void *st;

    ASSERT(server() == 0 && (st = conf_new(OPEN)) != NULL);
    for (int i = 0; i < THREADS; i++)
        ASSERT(pthread_create(&th[i], NULL, fetch_thread, st) == 0);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        total += (long)r;
    }
    EXPECT_EQ_INT(total, 0);
    mock_plugin_shutdown(&avt_plugin, st);
}

TAP_MAIN()
