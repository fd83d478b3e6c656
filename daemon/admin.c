/*
 * admin.c - the local admin endpoint (/metrics, /healthz, /threads): a
 * deliberately small HTTP/1.1 server on the libev loop.
 *
 * One listening socket with an ev_io for accept; each connection is a
 * struct conn with one ev_io (read, then write) and one ev_timer that is
 * armed once, at accept, for ADMIN_REQUEST_TIMEOUT: it is never re-armed
 * by incoming bytes, so a client that trickles its request (slowloris) is
 * cut off like one that sends nothing. The request head is read into a
 * fixed buffer of REQ_MAX bytes; only the request line is looked at (GET
 * or HEAD, a path, HTTP/1.x), headers are skipped, and the answer always
 * closes the connection. Sockets are non-blocking, SIGPIPE is ignored by
 * the daemon and writes use MSG_NOSIGNAL, so a client that vanishes costs
 * one failed write.
 *
 * The figures come from the pool (locked snapshots), the sessions, the
 * outbox and the ledger (loop-thread counters); rendering allocates only
 * the answer buffer, once per scrape.
 */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "cfg.h"
#include "ledger.h"
#include "log.h"
#include "orch.h"
#include "orchset.h"
#include "outbox.h"
#include "pool.h"
#include "spool.h"
#include "taskstats.h"
#include "util.h"

#define REQ_MAX 8192
#define TYPES_SHOWN 1024
#define THREADS_SHOWN 4096
/* accept() failing for want of descriptors pauses accepting this long,
 * doubling up to the maximum while it goes on. */
#define ACCEPT_PAUSE_MIN 0.1
#define ACCEPT_PAUSE_MAX 1.0

struct conn {
    struct admin *a;
    int fd;
    ev_io io;
    ev_timer timer;
    char req[REQ_MAX];
    size_t req_len;
    char *out; /* the whole answer */
    size_t out_len, out_off;
    struct conn *prev, *next;
};

struct admin {
    struct ev_loop *loop;
    const struct admin_sources *src;
    int fd;
    ev_io accept_io;
    struct conn *conns;
    int nconns;
    /* accept() failed (EMFILE and the like): accept_io is stopped and
     * accept_retry restarts it after pause seconds; pause is 0 while
     * accept() works. One episode logs one line when it starts and one
     * when it ends. */
    ev_timer accept_retry;
    double pause;
    double episode_start;
    unsigned long episode_errors;
    unsigned long accept_errors; /* every failed accept(), for /metrics */
};

/* ---- A growing text buffer --------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
}

/* A label value with \, " and newlines escaped (exposition format 0.0.4);
 * the values come from task types and plugin codes, i.e. from outside. */
static void buf_label(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            buf_printf(b, "\\n");
        else
            buf_printf(b, "%c", *s);
    }
}

static void metric_head(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_value(struct buf *b, const char *name, double v)
{
    buf_printf(b, "%s %.15g\n", name, v);
}

/* ---- /metrics ------------------------------------------------------------ */

static double rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *fp = fopen("/proc/self/statm", "re");
    if (fp == NULL)
        return 0;
    if (fscanf(fp, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(fp);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* One orchestrator's counters, taken once per scrape. */
struct orch_view {
    const char *url;
    struct orch_stats st;
    struct outbox_stats ob;
};

/* Every orchestrator's stats (caller frees); *n is set to their number. */
static struct orch_view *orch_views(const struct admin_sources *src, size_t *n)
{
    *n = orchset_count(src->orchs);
    struct orch_view *v = xcalloc(*n > 0 ? *n : 1, sizeof(*v));
    for (size_t i = 0; i < *n; i++) {
        const struct orch *o = orchset_get(src->orchs, i);
        v[i].url = orch_url(o);
        orch_get_stats(o, &v[i].st);
        outbox_get_stats(src->outbox, o, &v[i].ob);
    }
    return v;
}

static void render_process(struct buf *b, const struct admin_sources *src,
                           const struct orch_view *v, size_t nv)
{
    metric_head(b, "avtworkerd_build_info", "gauge", "Version of the running daemon.");
    buf_printf(b, "avtworkerd_build_info{version=\"%s\"} 1\n", AVT_VERSION);
    metric_head(b, "avtworkerd_uptime_seconds", "gauge", "Seconds since the daemon started.");
    metric_value(b, "avtworkerd_uptime_seconds", now_mono() - src->started);
    metric_head(b, "process_resident_memory_bytes", "gauge",
                "Resident set size (/proc/self/statm).");
    metric_value(b, "process_resident_memory_bytes", rss_bytes());
    metric_head(b, "avtworkerd_draining", "gauge", "1 while the daemon drains for shutdown.");
    metric_value(b, "avtworkerd_draining", nv > 0 && v[0].st.draining ? 1 : 0);
}

/* The spool: what it holds, and whether it can be written. */
static void render_spool(struct buf *b, const struct admin_sources *src)
{
    if (src->spool == NULL)
        return;
    struct spool_stats st;
    spool_get_stats(src->spool, &st);
    metric_head(b, "avtworkerd_spool_results", "gauge",
                "Results in the spool not yet acknowledged by their orchestrator.");
    metric_value(b, "avtworkerd_spool_results", (double)st.files);
    metric_head(b, "avtworkerd_spool_bytes", "gauge", "Bytes of those results' records.");
    metric_value(b, "avtworkerd_spool_bytes", (double)st.bytes);
    metric_head(b, "avtworkerd_spool_full", "gauge",
                "1 while the spool is at max_files or max_bytes (no new task is taken).");
    metric_value(b, "avtworkerd_spool_full", st.full);
    metric_head(b, "avtworkerd_spool_write_failing", "gauge",
                "1 while the spool cannot be written (disk full, I/O error; no new task is "
                "taken).");
    metric_value(b, "avtworkerd_spool_write_failing", spool_trouble(src->spool, NULL) != 0);
    metric_head(b, "avtworkerd_spool_write_errors_total", "counter",
                "Results or commits that could not be written to the spool.");
    buf_printf(b, "avtworkerd_spool_write_errors_total %lu\n", st.write_errors);
    metric_head(b, "avtworkerd_results_refused_total", "counter",
                "Results an orchestrator refused for good, set aside in STATE_DIR/refused/.");
    buf_printf(b, "avtworkerd_results_refused_total %lu\n", st.refused);
    metric_head(b, "avtworkerd_results_expired_total", "counter",
                "Results dropped undelivered at [spool] max_age.");
    buf_printf(b, "avtworkerd_results_expired_total %lu\n", st.expired);
}

static void render_slots(struct buf *b, const struct admin_sources *src)
{
    struct pool_stats ps;
    pool_get_stats(src->pool, &ps);
    metric_head(b, "avtworkerd_slots", "gauge",
                "Global task slots (max_concurrent_tasks; up to one worker thread each).");
    metric_value(b, "avtworkerd_slots", ps.threads);
    metric_head(b, "avtworkerd_worker_threads", "gauge",
                "Worker threads started (they start as tasks need them, up to the slots).");
    metric_value(b, "avtworkerd_worker_threads", ps.started);
    metric_head(b, "avtworkerd_slots_free", "gauge", "Global slots not taken by a task.");
    metric_value(b, "avtworkerd_slots_free", pool_free_slots(src->pool));
    struct ledger_stats ls;
    ledger_get_stats(src->ledger, &ls);
    metric_head(b, "avtworkerd_tasks_stuck", "gauge",
                "Handlers that ignored their cancellation and still hold a thread.");
    metric_value(b, "avtworkerd_tasks_stuck", ls.stuck);
    metric_head(b, "avtworkerd_deadlines_total", "counter",
                "Tasks cancelled because their type's timeout passed ([limits] TYPE.timeout).");
    buf_printf(b, "avtworkerd_deadlines_total %lu\n", ls.deadlines);
    metric_head(
        b, "avtworkerd_tasks_abandoned_total", "counter",
        "Tasks reported failed while their handler still ran (deadline grace or shutdown).");
    buf_printf(b, "avtworkerd_tasks_abandoned_total %lu\n", ls.tasks_abandoned);
    metric_head(b, "avtworkerd_handlers_stuck_total", "counter",
                "Handlers given up on after ignoring a deadline's cancellation.");
    buf_printf(b, "avtworkerd_handlers_stuck_total %lu\n", ls.stuck_total);
}

static void render_types(struct buf *b, const struct admin_sources *src)
{
    static struct pool_type_stats ts[TYPES_SHOWN]; /* loop thread only */
    size_t n = pool_get_type_stats(src->pool, ts, TYPES_SHOWN);
    static const char *const names[] = {"avtworkerd_tasks_running", "avtworkerd_tasks_waiting",
                                        "avtworkerd_type_limit"};
    static const char *const helps[] = {
        "Handlers running, per task type.",
        "Tasks accepted and waiting for their type's limit or a thread, per type.",
        "The [limits] maximum of a task type (0: only the global limit)."};
    for (size_t m = 0; m < ARRAY_LEN(names); m++) {
        metric_head(b, names[m], "gauge", helps[m]);
        for (size_t i = 0; i < n; i++) {
            int v = m == 0 ? ts[i].running : m == 1 ? ts[i].waiting : ts[i].limit;
            buf_printf(b, "%s{type=\"", names[m]);
            buf_label(b, ts[i].type);
            buf_printf(b, "\"} %d\n", v);
        }
    }
}

/* ---- Task outcomes (all orchestrators together) ------------------------ */

static void render_outcomes(struct buf *b, const struct admin_sources *src)
{
    size_t n;
    const struct taskstats_outcome *oc = taskstats_get_outcomes(src->taskstats, &n);
    metric_head(b, "avtworkerd_tasks_total", "counter",
                "Finished tasks by type, result status and error code (empty unless failed).");
    for (size_t i = 0; i < n; i++) {
        buf_printf(b, "avtworkerd_tasks_total{type=\"");
        buf_label(b, oc[i].type);
        buf_printf(b, "\",status=\"");
        buf_label(b, oc[i].status);
        buf_printf(b, "\",code=\"");
        buf_label(b, oc[i].code);
        buf_printf(b, "\"} %lu\n", oc[i].count);
    }
}

static void render_durations(struct buf *b, const struct admin_sources *src)
{
    size_t n;
    const struct taskstats_duration *d = taskstats_get_durations(src->taskstats, &n);
    const char *name = "avtworkerd_task_duration_seconds";
    metric_head(b, name, "histogram", "Handler run time per task type.");
    for (size_t i = 0; i < n; i++) {
        unsigned long cum = 0;
        for (size_t k = 0; k <= TASKSTATS_BUCKETS; k++) {
            cum += d[i].buckets[k];
            buf_printf(b, "%s_bucket{type=\"", name);
            buf_label(b, d[i].type);
            if (k < TASKSTATS_BUCKETS)
                buf_printf(b, "\",le=\"%g\"} %lu\n", taskstats_bounds[k], cum);
            else
                buf_printf(b, "\",le=\"+Inf\"} %lu\n", cum);
        }
        buf_printf(b, "%s_sum{type=\"", name);
        buf_label(b, d[i].type);
        buf_printf(b, "\"} %.9g\n%s_count{type=\"", d[i].sum, name);
        buf_label(b, d[i].type);
        buf_printf(b, "\"} %lu\n", d[i].count);
    }
}

/* ---- Per orchestrator (label orchestrator="URL") ------------------------- */

static void orch_label(struct buf *b, const char *name, const struct orch_view *v)
{
    buf_printf(b, "%s{orchestrator=\"", name);
    buf_label(b, v->url);
    buf_printf(b, "\"");
}

static void render_links(struct buf *b, const struct orch_view *v, size_t nv)
{
    const char *reg = "avtworkerd_registered",
               *age = "avtworkerd_orchestrator_last_success_age_seconds";
    metric_head(b, reg, "gauge",
                "1 while the orchestrator has accepted this worker's registration.");
    for (size_t i = 0; i < nv; i++) {
        orch_label(b, reg, &v[i]);
        buf_printf(b, "} %d\n", v[i].st.registered ? 1 : 0);
    }
    metric_head(b, age, "gauge",
                "Seconds since the orchestrator last answered any request with 2xx (-1: never).");
    for (size_t i = 0; i < nv; i++) {
        orch_label(b, age, &v[i]);
        buf_printf(b, "} %.15g\n", v[i].st.last_ok > 0 ? now_mono() - v[i].st.last_ok : -1);
    }
}

/* The protocol each orchestrator speaks, and why results were ignored. */
static void render_protocol(struct buf *b, const struct orch_view *v, size_t nv)
{
    const char *info = "avtworkerd_protocol_info", *ign = "avtworkerd_results_ignored_total";
    metric_head(b, info, "gauge",
                "The RXON version spoken with the orchestrator (detecting: not known yet).");
    for (size_t i = 0; i < nv; i++) {
        orch_label(b, info, &v[i]);
        buf_printf(b, ",protocol=\"%s\"} 1\n", v[i].st.protocol ? v[i].st.protocol : "detecting");
    }
    metric_head(b, ign, "counter",
                "Results the orchestrator acknowledged as ignored (it had them, or the job moved "
                "on), by reason.");
    for (size_t i = 0; i < nv; i++)
        for (size_t r = 0; r < OUTBOX_IGNORED_REASONS; r++) {
            orch_label(b, ign, &v[i]);
            buf_printf(b, ",reason=\"%s\"} %lu\n", outbox_ignored_reasons[r], v[i].ob.ignored[r]);
        }
}

static void render_requests(struct buf *b, const struct orch_view *v, size_t nv)
{
    static const char *const eps[ORCH_EP_COUNT] = {"register", "poll", "heartbeat", "result"};
    static const char *const kinds[ORCH_ERR_COUNT] = {"transport", "auth", "rate_limited",
                                                      "4xx",       "5xx",  "invalid"};
    const char *req = "avtworkerd_orchestrator_requests_total";
    const char *err = "avtworkerd_orchestrator_request_errors_total";
    metric_head(b, req, "counter", "Completed requests to the orchestrator, per endpoint.");
    for (size_t i = 0; i < nv; i++)
        for (size_t e = 0; e < ORCH_EP_COUNT; e++) {
            orch_label(b, req, &v[i]);
            buf_printf(b, ",endpoint=\"%s\"} %lu\n", eps[e], v[i].st.requests[e]);
        }
    metric_head(b, err, "counter",
                "Failed requests to the orchestrator, per endpoint and kind (transport: no "
                "answer; auth: 401/403; rate_limited: 429; 4xx; 5xx; invalid: unusable answer).");
    for (size_t i = 0; i < nv; i++)
        for (size_t e = 0; e < ORCH_EP_COUNT; e++)
            for (size_t k = 0; k < ORCH_ERR_COUNT; k++) {
                orch_label(b, err, &v[i]);
                buf_printf(b, ",endpoint=\"%s\",kind=\"%s\"} %lu\n", eps[e], kinds[k],
                           v[i].st.errors[e][k]);
            }
}

/* A counter of one orchestrator: a field of its session's or its outbox's
 * figures. */
struct counter {
    const char *name, *type, *help;
    size_t off;
    int outbox; /* the field is in struct outbox_stats, else in struct orch_stats */
};

static unsigned long counter_at(const struct counter *c, const struct orch_view *v)
{
    unsigned long x;
    const char *base = c->outbox ? (const char *)&v->ob : (const char *)&v->st;
    memcpy(&x, base + c->off, sizeof(x));
    return x;
}

/* The per-orchestrator counters (label orchestrator="URL"). */
static void render_counters(struct buf *b, const struct orch_view *v, size_t nv)
{
    static const struct counter cs[] = {
#define C(n, t, h, f) {n, t, h, offsetof(struct orch_stats, f), 0}
#define O(n, t, h, f)                                                                              \
    {                                                                                              \
        n, t, h, offsetof(struct outbox_stats, f), 1                                               \
    }
        C("avtworkerd_tasks_received_total", "counter", "Tasks received by long-poll.",
          tasks_received),
        C("avtworkerd_tasks_invalid_total", "counter",
          "Poll answers that were not a valid task (answered INVALID_INPUT_ERROR or dropped).",
          tasks_invalid),
        C("avtworkerd_registrations_total", "counter", "Successful registrations.", registrations),
        O("avtworkerd_results_sent_total", "counter", "Results the orchestrator acknowledged.",
          sent),
        O("avtworkerd_results_pending", "gauge",
          "Results not yet acknowledged by the orchestrator (the outbox).", pending),
        C("avtworkerd_websocket_connects_total", "counter", "WebSocket connections opened.",
          ws_connects),
        C("avtworkerd_websocket_disconnects_total", "counter",
          "WebSocket connections lost or refused (each is followed by a reconnect).", ws_closes),
        C("avtworkerd_websocket_messages_total", "counter", "WebSocket messages received.",
          ws_messages),
        C("avtworkerd_sts_tokens_total", "counter",
          "Access tokens obtained from /_worker/auth/token (mTLS).", sts_tokens),
#undef O
#undef C
    };
    for (size_t i = 0; i < ARRAY_LEN(cs); i++) {
        metric_head(b, cs[i].name, cs[i].type, cs[i].help);
        for (size_t k = 0; k < nv; k++) {
            orch_label(b, cs[i].name, &v[k]);
            buf_printf(b, "} %lu\n", counter_at(&cs[i], &v[k]));
        }
    }
}

/* The endpoint's own figures (0 when rendered without a live endpoint). */
static void render_admin(struct buf *b, const struct admin *a)
{
    const char *name = "avtworkerd_admin_accept_errors_total";
    metric_head(b, name, "counter",
                "Connections the admin endpoint could not accept (out of file descriptors, or "
                "another error); accepting pauses 0.1 to 1 s after each.");
    buf_printf(b, "%s %lu\n", name, a != NULL ? a->accept_errors : 0);
}

static char *metrics_text(const struct admin *a, const struct admin_sources *src, size_t *len)
{
    struct buf b = {0};
    size_t nv;
    struct orch_view *v = orch_views(src, &nv);
    render_process(&b, src, v, nv);
    render_slots(&b, src);
    render_spool(&b, src);
    render_types(&b, src);
    render_outcomes(&b, src);
    render_durations(&b, src);
    render_links(&b, v, nv);
    render_protocol(&b, v, nv);
    render_requests(&b, v, nv);
    render_counters(&b, v, nv);
    render_admin(&b, a);
    free(v);
    *len = b.len;
    return b.p;
}

char *admin_metrics_text(const struct admin_sources *src, size_t *len)
{
    return metrics_text(NULL, src, len);
}

/* ---- /healthz and /threads ------------------------------------------------ */

/*
 * 1 when this orchestrator can hand out work, else 0 and the reason. Polls
 * that pause after a failure (a 429's Retry-After, a 5xx) are healthy but
 * say so ("polling paused until ..."): a pause is short (at most
 * retry_max_delay, or the 1.0b13 limiter's 61 s window). Polls that keep
 * failing for longer than poll_window are not: the worker gets no work.
 */
static int orch_healthy(const struct orch_stats *st, double window, double poll_window, char *why,
                        size_t n)
{
    double age = now_mono() - st->last_ok;
    double failing = st->poll_failing_since > 0 ? now_mono() - st->poll_failing_since : 0;
    char pause[160] = "";
    int paused = orch_poll_pause_text(st, pause, sizeof(pause));
    if (st->draining)
        snprintf(why, n, "draining for shutdown");
    else if (!st->registered)
        snprintf(why, n, "not registered with the orchestrator");
    else if (st->last_ok <= 0)
        snprintf(why, n, "no successful exchange with the orchestrator yet");
    else if (age > window)
        snprintf(why, n, "no successful exchange with the orchestrator for %.0f s (limit %g s)",
                 age, window);
    else if (failing > poll_window)
        snprintf(why, n, "polls failing for %.0f s (limit %g s)%s%s", failing, poll_window,
                 paused ? "; " : "", pause);
    else {
        snprintf(why, n, "%s", paused ? pause : "ok");
        return 1;
    }
    return 0;
}

/*
 * The /healthz answer (caller frees): healthy while at least one
 * orchestrator is and the spool can be written, since the worker then
 * still gets work. The first line is "ok" or, when the spool cannot be
 * written, why; with one orchestrator, its reason, with several a summary
 * ("degraded: K of N ..." or "down: ..."); then one "URL: state (RXON
 * version)" line for each orchestrator.
 */
static char *health_text(const struct admin_sources *src, int *ok)
{
    struct buf b = {0};
    size_t nv, good = 0;
    struct orch_view *v = orch_views(src, &nv);
    double window = 3 * src->cfg->heartbeat_interval;
    /* Two full backoffs and a hold without one poll answered. */
    double poll_window = 2 * src->cfg->retry_max_delay + src->cfg->poll_timeout;
    char(*why)[320] = xcalloc(nv > 0 ? nv : 1, sizeof(*why));
    for (size_t i = 0; i < nv; i++)
        good += (size_t)orch_healthy(&v[i].st, window, poll_window, why[i], sizeof(why[i]));
    *ok = good > 0;
    double since;
    int err = src->spool != NULL ? spool_trouble(src->spool, &since) : 0;
    if (err != 0) {
        /* The worker takes no new task: not healthy, whatever the links say. */
        *ok = 0;
        buf_printf(&b,
                   "spool cannot be written for %.0f s (%s): taking no new tasks; free space "
                   "or fix the disk\n",
                   now_wall() - since, strerror(err));
    } else if (nv == 1 || (good == nv && nv > 0)) {
        buf_printf(&b, "%s\n", nv == 1 ? why[0] : "ok");
    } else {
        buf_printf(&b, "%s: %zu of %zu orchestrators healthy\n", good > 0 ? "degraded" : "down",
                   good, nv);
    }
    for (size_t i = 0; i < nv; i++)
        buf_printf(&b, "%s: %s (RXON %s)\n", v[i].url, why[i],
                   v[i].st.protocol ? v[i].st.protocol : "not detected yet");
    free(why);
    free(v);
    return b.p;
}

static const char *const cancel_names[] = {"", "cancel requested by the orchestrator",
                                           "deadline passed, asked to stop",
                                           "shutdown, asked to stop"};

static void thread_line(struct buf *b, const struct pool_thread_info *ti, double now)
{
    if (!ti->busy) {
        buf_printf(b, "avt-worker-%d idle %.1fs\n", ti->index, now - ti->since);
        return;
    }
    int c = ti->cancel >= 0 && (size_t)ti->cancel < ARRAY_LEN(cancel_names) ? ti->cancel : 0;
    /* The ids and the type come from the orchestrator: escaped as in the
     * log, so that none can add a line of its own. */
    char id[4 * sizeof(ti->task_id)], job[4 * sizeof(ti->job_id)], type[4 * sizeof(ti->type)],
        plugin[4 * sizeof(ti->plugin)];
    log_escape(id, sizeof(id), ti->task_id);
    log_escape(job, sizeof(job), ti->job_id);
    log_escape(type, sizeof(type), ti->type);
    log_escape(plugin, sizeof(plugin), ti->plugin);
    buf_printf(b, "avt-worker-%d busy %.1fs task_id=%s job_id=%s type=%s plugin=%s%s%s\n",
               ti->index, now - ti->since, id, job, type, plugin, c ? " " : "", cancel_names[c]);
}

/* The started threads (*n of them), and the slots there are (*slots). */
static struct pool_thread_info *threads_snapshot(struct pool *pool, size_t *n, int *slots)
{
    struct pool_stats ps;
    pool_get_stats(pool, &ps);
    *slots = ps.threads;
    size_t want = ps.threads > 0 ? (size_t)ps.threads : 1;
    struct pool_thread_info *ti = xcalloc(want, sizeof(*ti));
    *n = pool_get_threads(pool, ti, want);
    return ti;
}

static char *threads_text(struct pool *pool, size_t *len)
{
    struct buf b = {0};
    size_t n;
    int slots;
    struct pool_thread_info *ti = threads_snapshot(pool, &n, &slots);
    double now = now_mono();
    buf_printf(&b, "%s", ""); /* an answer even with no threads */
    for (size_t i = 0; i < n; i++)
        thread_line(&b, &ti[i], now);
    free(ti);
    *len = b.len;
    return b.p;
}

void admin_log_threads(struct pool *pool)
{
    size_t n;
    int slots;
    struct pool_thread_info *ti = threads_snapshot(pool, &n, &slots);
    double now = now_mono();
    size_t busy = 0;
    for (size_t i = 0; i < n; i++)
        busy += ti[i].busy != 0;
    log_notice("thread dump: %zu of %zu worker threads busy (threads start as tasks need them, "
               "up to the %d slots)",
               busy, n, slots);
    for (size_t i = 0; i < n; i++) {
        const struct pool_thread_info *t = &ti[i];
        int c = t->cancel >= 0 && (size_t)t->cancel < ARRAY_LEN(cancel_names) ? t->cancel : 0;
        struct log_ctx ctx = {t->plugin, t->task_id, t->job_id, t->type};
        if (t->busy)
            log_emit(LOG_NOTICE, &ctx, "avt-worker-%d running for %.1f s%s%s", t->index,
                     now - t->since, c ? ": " : "", cancel_names[c]);
        else
            log_notice("avt-worker-%d idle for %.1f s", t->index, now - t->since);
    }
    free(ti);
}

/* ---- HTTP ----------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* The whole answer; the body is omitted for HEAD but counted. */
static void respond(struct conn *c, int status, const char *ctype, const char *body, size_t len,
                    int head)
{
    struct buf b = {0};
    buf_printf(&b,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
               status, reason_phrase(status), ctype, len,
               status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head && len > 0) {
        if (b.cap - b.len < len + 1) {
            b.cap = b.len + len + 1;
            b.p = xrealloc(b.p, b.cap);
        }
        memcpy(b.p + b.len, body, len);
        b.len += len;
    }
    c->out = b.p;
    c->out_len = b.len;
    c->out_off = 0;
}

static void respond_text(struct conn *c, int status, const char *text, int head)
{
    respond(c, status, "text/plain; charset=utf-8", text, strlen(text), head);
}

/* Route a complete request line: "METHOD SP TARGET SP HTTP/1.x". */
static void handle_request(struct conn *c, char *line)
{
    const struct admin_sources *src = c->a->src;
    char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (sp1 == NULL || sp2 == NULL || sp2 == sp1 + 1 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        sp1[1] != '/') {
        respond_text(c, 400, "bad request\n", 0);
        return;
    }
    *sp1 = *sp2 = '\0';
    char *path = sp1 + 1;
    path[strcspn(path, "?#")] = '\0';
    int head = strcmp(line, "HEAD") == 0;
    if (!head && strcmp(line, "GET") != 0) {
        respond_text(c, 405, "only GET and HEAD\n", 0);
        return;
    }
    size_t len;
    char *body;
    if (strcmp(path, "/metrics") == 0) {
        body = metrics_text(c->a, src, &len);
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, head);
        free(body);
    } else if (strcmp(path, "/healthz") == 0) {
        int ok;
        body = health_text(src, &ok);
        respond_text(c, ok ? 200 : 503, body, head);
        free(body);
    } else if (strcmp(path, "/threads") == 0) {
        body = threads_text(src->pool, &len);
        respond(c, 200, "text/plain; charset=utf-8", body, len, head);
        free(body);
    } else {
        respond_text(c, 404, "not found (try /metrics, /healthz, /threads)\n", head);
    }
}

static void conn_close(struct conn *c)
{
    struct admin *a = c->a;
    ev_io_stop(a->loop, &c->io);
    ev_timer_stop(a->loop, &c->timer);
    close(c->fd);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    a->nconns--;
    free(c->out);
    free(c);
}

/* Switch the connection to writing its answer. */
static void start_write(struct conn *c)
{
    struct admin *a = c->a;
    ev_io_stop(a->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(a->loop, &c->io);
}

static void on_write(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    /* Done: closing here is the end of the exchange (Connection: close). */
    shutdown(c->fd, SHUT_WR);
    conn_close(c);
}

/* The request line once the head is complete; 0 while more is needed. */
static int request_complete(struct conn *c)
{
    c->req[c->req_len] = '\0';
    if (memchr(c->req, '\0', c->req_len) != NULL) {
        respond_text(c, 400, "bad request\n", 0);
        return 1;
    }
    if (strstr(c->req, "\r\n\r\n") == NULL && strstr(c->req, "\n\n") == NULL) {
        if (c->req_len >= REQ_MAX - 1)
            respond_text(c, 431, "request head too large\n", 0);
        return c->req_len >= REQ_MAX - 1;
    }
    c->req[strcspn(c->req, "\r\n")] = '\0';
    handle_request(c, c->req);
    return 1;
}

static void on_read(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->req + c->req_len, REQ_MAX - 1 - c->req_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) { /* closed before a whole request, or an error */
            conn_close(c);
            return;
        }
        c->req_len += (size_t)n;
        if (request_complete(c)) {
            start_write(c);
            return;
        }
    }
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct conn *c = w->data;
    if (revents & EV_READ)
        on_read(c);
    else if (revents & EV_WRITE)
        on_write(c);
}

static void on_conn_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_close(w->data); /* too slow to send its request or to read the answer */
}

static void conn_new(struct admin *a, int fd)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->a = a;
    c->fd = fd;
    ev_io_init(&c->io, on_conn_io, fd, EV_READ);
    c->io.data = c;
    ev_timer_init(&c->timer, on_conn_timeout, ADMIN_REQUEST_TIMEOUT, 0.);
    c->timer.data = c;
    ev_io_start(a->loop, &c->io);
    ev_timer_start(a->loop, &c->timer);
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
}

/* New connections go to the head of the list: the oldest is its tail. */
static struct conn *oldest(struct admin *a)
{
    struct conn *c = a->conns;
    while (c->next != NULL)
        c = c->next;
    return c;
}

/* accept() failed with errno e (not EAGAIN): stop accepting for a pause,
 * so that a listening socket that stays readable (a connection waits, but
 * no descriptor is free for it) does not spin the loop. */
static void accept_pause(struct admin *a, int e)
{
    a->accept_errors++;
    a->episode_errors++;
    if (a->pause == 0) {
        a->pause = ACCEPT_PAUSE_MIN;
        a->episode_start = now_mono();
        if (e == EMFILE || e == ENFILE)
            log_warn("admin: cannot accept a connection: %s (the daemon is out of file "
                     "descriptors: raise LimitNOFILE= in the unit, or find what holds them in "
                     "/proc/%d/fd); retrying every %g to %g s",
                     strerror(e), (int)getpid(), ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        else
            log_warn("admin: cannot accept a connection: %s; retrying every %g to %g s",
                     strerror(e), ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
    } else {
        a->pause = a->pause * 2 < ACCEPT_PAUSE_MAX ? a->pause * 2 : ACCEPT_PAUSE_MAX;
    }
    ev_io_stop(a->loop, &a->accept_io);
    ev_timer_set(&a->accept_retry, a->pause, 0.);
    ev_timer_start(a->loop, &a->accept_retry);
}

static void accept_resumed(struct admin *a)
{
    log_notice("admin: accepting connections again after %lu failed attempt(s) in %.1f s",
               a->episode_errors, now_mono() - a->episode_start);
    a->pause = 0;
    a->episode_errors = 0;
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct admin *a = w->data;
    ev_io_start(loop, &a->accept_io); /* a waiting connection makes it fire at once */
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct admin *a = w->data;
    for (;;) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                accept_pause(a, errno);
            return;
        }
        if (a->pause > 0)
            accept_resumed(a);
        if (a->nconns >= ADMIN_CONNS_MAX)
            conn_close(oldest(a)); /* a flood of idle connections cannot lock out a scrape */
        conn_new(a, fd);
    }
}

/* ---- Life cycle ------------------------------------------------------------ */

/* "IPV4:PORT" or "[IPV6]:PORT" (as cfg normalizes [admin] listen) into a
 * socket address; anything else, e.g. "[::1:80" or "127.0.0.1:80x", is
 * -EINVAL: it is never guessed at, since a wrong guess may open the
 * endpoint on every interface. */
static int parse_listen(const char *addr, struct sockaddr_storage *ss, socklen_t *sl)
{
    const char *colon = strrchr(addr, ':');
    char host[64];
    if (colon == NULL)
        return -EINVAL;
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") != pl)
        return -EINVAL;
    int port = (int)strtol(ps, NULL, 10);
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    int bracketed = hl > 0 && h[0] == '[';
    if (bracketed != (hl >= 2 && h[hl - 1] == ']'))
        return -EINVAL;
    if (bracketed) {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host) || port < 1 || port > 65535)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (!bracketed && inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *sl = sizeof(*s4);
        return 0;
    }
    if (bracketed && inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *sl = sizeof(*s6);
        return 0;
    }
    return -EINVAL;
}

/* 1 for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

static int open_listener(const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_listen(addr, &ss, &sl) < 0)
        return fmt_err(err, errlen,
                       "admin: cannot listen on %s: not IPV4:PORT or [IPV6]:PORT with PORT "
                       "1..65535",
                       addr);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        fmt_err(err, errlen,
                "admin: cannot listen on %s: %s (another avtworkerd or exporter on that port? "
                "set [admin] listen to a free port, or off)",
                addr, strerror(e));
        return -e;
    }
    if (!is_loopback(&ss))
        log_warn("admin: listening on %s, which is not a loopback address: /metrics, /healthz "
                 "and /threads (the ids of running tasks) answer anyone who can reach it, "
                 "without authentication; set [admin] listen to 127.0.0.1:PORT (or a bare "
                 "PORT) and scrape it from this host, or restrict the port with a firewall",
                 addr);
    return fd;
}

struct admin *admin_create(struct ev_loop *loop, const char *addr, const struct admin_sources *src,
                           char *err, size_t errlen)
{
    int fd = open_listener(addr, err, errlen);
    if (fd < 0)
        return NULL;
    struct admin *a = xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->src = src;
    a->fd = fd;
    ev_io_init(&a->accept_io, on_accept, fd, EV_READ);
    a->accept_io.data = a;
    ev_io_start(loop, &a->accept_io);
    ev_timer_init(&a->accept_retry, on_accept_retry, 0., 0.);
    a->accept_retry.data = a;
    log_info("admin endpoint on http://%s (/metrics, /healthz, /threads)", addr);
    return a;
}

void admin_destroy(struct admin *a)
{
    if (a == NULL)
        return;
    while (a->conns != NULL)
        conn_close(a->conns);
    ev_io_stop(a->loop, &a->accept_io);
    ev_timer_stop(a->loop, &a->accept_retry);
    close(a->fd);
    free(a);
}
