/*
 * floor.c - the cheapest worker libcurl allows, as a yardstick for bench.py.
 *
 * `floor serve` polls /_worker/workers/{id}/tasks/next and answers every
 * task with a success result, on ONE thread and ONE keep-alive easy handle,
 * parsing the task with jansson: the two HTTP exchanges per task that the
 * protocol requires and nothing else (no registration, heartbeats,
 * WebSocket, thread pool or plugin). Its CPU time per task is the floor
 * that any libcurl-based worker pays on this machine and kernel; what
 * avtworkerd spends above it is its own overhead.
 *
 * `floor durable DIR` is `serve` that also keeps the rule avtworkerd keeps
 * ("a result is durable before it is sent"): each result is appended to a
 * file in DIR and fdatasync()ed before it is posted, the file started
 * afresh every 4 MiB like the spool's segments. Its CPU per task is the
 * floor of any worker that loses no result on this machine's disk.
 *
 * `floor idle` initialises libcurl exactly as the daemon does and waits:
 * its RSS is what the shared libraries of an empty program linked like
 * avtworkerd (libcurl with its TLS, LDAP, SSH and Kerberos dependencies,
 * jansson, libev, inih, glibc) cost before the first line of daemon code.
 *
 * Environment (the daemon's names): ORCHESTRATOR_URL, WORKER_TOKEN,
 * WORKER_ID. Stops on SIGTERM/SIGINT.
 */
#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DURABLE_FILE_MAX (4L << 20)

static volatile sig_atomic_t stop;

/* Where `floor durable` keeps its results (fd -1 until the first one);
 * dir NULL for `floor serve`, which keeps nothing. */
struct durable {
    const char *dir;
    int fd;
    long size;
};

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

struct buf {
    char *data;
    size_t len, cap;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;
    size_t add = size * n;

    if (b->len + add + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + add + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, add);
    b->len += add;
    b->data[b->len] = '\0';
    return add;
}

/* One exchange; returns the HTTP status (0 on a transport error). */
static long exchange(CURL *c, const char *url, const char *body, struct buf *b)
{
    long status = 0;

    b->len = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    if (curl_easy_perform(c) != CURLE_OK)
        return 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

/* Append one result and make it durable (fdatasync); -1 when the disk
 * refuses, and the result is then not sent. */
static int keep(struct durable *d, const char *text)
{
    char path[1024];
    size_t len = strlen(text);

    if (d->fd >= 0 && d->size + (long)len > DURABLE_FILE_MAX) {
        close(d->fd);
        d->fd = -1;
    }
    if (d->fd < 0) {
        snprintf(path, sizeof(path), "%s/floor.results", d->dir);
        d->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        d->size = 0;
        if (d->fd < 0)
            return -1;
    }
    if (write(d->fd, text, len) != (ssize_t)len || fdatasync(d->fd) != 0)
        return -1;
    d->size += (long)len;
    return 0;
}

/* Answer one polled task (in b) with a success result. */
static void answer(CURL *c, const char *result_url, const char *wid, struct buf *b,
                   struct durable *d)
{
    json_t *task = json_loadb(b->data, b->len, 0, NULL);
    const char *job = json_string_value(json_object_get(task, "job_id"));
    const char *tid = json_string_value(json_object_get(task, "task_id"));

    if (job != NULL && tid != NULL) {
        json_t *res = json_pack("{s:s,s:s,s:s,s:s,s:{},s:n,s:n}", "job_id", job, "task_id", tid,
                                "worker_id", wid, "status", "success", "data", "error",
                                "data_metadata");
        char *text = json_dumps(res, JSON_COMPACT);
        if (d->dir == NULL || keep(d, text) == 0)
            exchange(c, result_url, text, b);
        free(text);
        json_decref(res);
    }
    json_decref(task);
}

static int serve(const char *base, const char *token, const char *wid, struct durable *d)
{
    char poll_url[1024], result_url[1024], auth[512];
    struct curl_slist *hdr = NULL;
    struct buf b = {0};
    CURL *c = curl_easy_init();

    snprintf(poll_url, sizeof(poll_url), "%s/_worker/workers/%s/tasks/next", base, wid);
    snprintf(result_url, sizeof(result_url), "%s/_worker/tasks/result", base);
    snprintf(auth, sizeof(auth), "X-Worker-Token: %s", token);
    hdr = curl_slist_append(hdr, auth);
    hdr = curl_slist_append(hdr, "X-RXON-Version: 1.0b3");
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    while (!stop) {
        long st = exchange(c, poll_url, NULL, &b);
        if (st == 200)
            answer(c, result_url, wid, &b, d);
        else if (st != 204)
            usleep(100000);
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    free(b.data);
    return 0;
}

int main(int argc, char **argv)
{
    const char *base = getenv("ORCHESTRATOR_URL");
    const char *token = getenv("WORKER_TOKEN");
    const char *wid = getenv("WORKER_ID");
    int rc = 0;

    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (argc == 2 && strcmp(argv[1], "idle") == 0) {
        while (!stop)
            pause();
    } else if (argc == 2 && strcmp(argv[1], "serve") == 0 && base && token && wid) {
        struct durable d = {.fd = -1};
        rc = serve(base, token, wid, &d);
    } else if (argc == 3 && strcmp(argv[1], "durable") == 0 && base && token && wid) {
        struct durable d = {.dir = argv[2], .fd = -1};
        rc = serve(base, token, wid, &d);
        if (d.fd >= 0)
            close(d.fd);
    } else {
        fprintf(stderr, "usage: ORCHESTRATOR_URL=.. WORKER_TOKEN=.. WORKER_ID=.. floor serve | floor "
                        "durable DIR | floor idle\n");
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
