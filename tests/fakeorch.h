/*
 * fakeorch.h - for C unit tests that need a real orchestrator on loopback:
 * start tests/orchestrator/fakeorch.py on an ephemeral port, call its
 * client and control APIs (blocking libcurl requests; the fake is another
 * process, so the test's own loop may stand still meanwhile), stop it.
 * Header-only, so that a test includes it without a Makefile rule.
 */
#ifndef AVT_TESTS_FAKEORCH_H
#define AVT_TESTS_FAKEORCH_H

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

extern char **environ;

struct fo {
    pid_t pid;
    char base[64];
    char port_file[64];
    const char *ca_file; /* the CA to trust when base is https://, or NULL */
};

struct fo_buf {
    char *p;
    size_t len;
};

static size_t fo_write(char *ptr, size_t size, size_t n, void *arg)
{
    struct fo_buf *b = arg;
    char *np = realloc(b->p, b->len + size * n + 1);
    if (np == NULL)
        return 0;
    b->p = np;
    memcpy(b->p + b->len, ptr, size * n);
    b->len += size * n;
    b->p[b->len] = '\0';
    return size * n;
}

/* Start the fake with extra flags (NULL-terminated, may be NULL). 0 or -1. */
static __attribute__((unused)) int fo_start(struct fo *f, const char *const *extra)
{
    char py[256], script[] = "tests/orchestrator/fakeorch.py";
    const char *argv[32];
    int n = 0;
    snprintf(py, sizeof(py), "%s", getenv("PYTHON") ? getenv("PYTHON") : "/usr/bin/python3");
    snprintf(f->port_file, sizeof(f->port_file), "/tmp/avt-fo-port.%ld", (long)getpid());
    unlink(f->port_file);
    argv[n++] = py;
    argv[n++] = script;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = f->port_file;
    argv[n++] = "--log-level";
    argv[n++] = "ERROR";
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    if (posix_spawn(&f->pid, py, NULL, NULL, (char *const *)(void *)argv, environ) != 0)
        return -1;
    for (int i = 0; i < 3000; i++) { /* up to 30 s on a slow machine */
        FILE *fp = fopen(f->port_file, "r");
        int port = 0;
        if (fp != NULL) {
            if (fscanf(fp, "%d", &port) != 1)
                port = 0;
            fclose(fp);
        }
        if (port > 0) {
            snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", port);
            return 0;
        }
        usleep(10000);
    }
    return -1;
}

static __attribute__((unused)) void fo_stop(struct fo *f)
{
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        waitpid(f->pid, NULL, 0);
        f->pid = 0;
    }
    unlink(f->port_file);
}

/* A request to the fake with extra headers (NULL-terminated, may be NULL):
 * its control API, or a worker route with the worker's headers. The
 * answer's JSON (decref it) or NULL; its status in *status (may be NULL). */
static __attribute__((unused)) json_t *fo_request(struct fo *f, const char *method,
                                                  const char *path, const char *const *hdrs,
                                                  const char *body, long *status)
{
    char url[512];
    struct fo_buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (int i = 0; hdrs != NULL && hdrs[i] != NULL; i++)
        h = curl_slist_append(h, hdrs[i]);
    CURL *c = curl_easy_init();
    snprintf(url, sizeof(url), "%s%s", f->base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fo_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (f->ca_file != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, f->ca_file);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long st = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (status != NULL)
        *status = st;
    json_t *j = b.p != NULL ? json_loads(b.p, JSON_DECODE_ANY, NULL) : NULL;
    free(b.p);
    return j;
}

/* A request to the fake; the answer's JSON (decref it) or NULL. */
static __attribute__((unused)) json_t *fo_call(struct fo *f, const char *method, const char *path,
                                               const char *body, long *status)
{
    return fo_request(f, method, path, NULL, body, status);
}

/* The request log rows whose path contains `path` (decref). */
static __attribute__((unused)) json_t *fo_log(struct fo *f, const char *path)
{
    char q[256];
    snprintf(q, sizeof(q), "/_test/log?path=%s", path);
    return fo_call(f, "GET", q, NULL, NULL);
}

#endif /* AVT_TESTS_FAKEORCH_H */
