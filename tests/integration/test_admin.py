"""The admin endpoint (/metrics, /healthz, /threads), the SIGUSR1 thread
dump and the logs, with the real daemon against the fake orchestrator.
Metrics are parsed as Prometheus text and checked against what the
orchestrator itself recorded."""
import json
import os
import re
import select
import signal
import socket
import time
import urllib.error
import urllib.request

from avt import *  # noqa: F401,F403
from avt import check, main, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"
TOKEN = "tok-Zq8VxN3-distinctive"


def ini(t, port=None, slots=4, hb=0.5, extra=""):
    admin = "[admin]\nlisten = 127.0.0.1:%d\n" % port if port else ""
    return t.ini("""
[worker]
max_concurrent_tasks = %d
shutdown_timeout = 5
log_level = debug
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = %s
heartbeat_debounce = 0.05
probe_every = 2
result_retry_initial_delay = 0.2
retry_max_delay = 1
%s""" % (slots, extra, hb, admin))


def spawn(t, o, conf, env=None, plugins=("echo", "steps", "t_behave")):
    e = o.worker_env(WID) if o is not None else {}
    e.update(env or {})
    return t.spawn(["-c", conf, "-P", t.plugin_dir(*plugins)], env=e)


def stop(p):
    """SIGTERM: the daemon drains and exits 0."""
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(20))
    check(p.returncode == 0, p.log()[-2000:])


def get(port, path, method="GET", timeout=5):
    """(status, body text); status 0 when the connection failed."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=tmo(timeout)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return 0, ""


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, ((label, value), ...)): float}; checks that every sample's
    family was announced once by # HELP and # TYPE first, that a family's
    samples all have the same label names (le aside), that no series
    repeats, and that no counter X_total sits beside a family X (OpenMetrics
    and the client libraries read both as the family X)."""
    out, typed, helped, names = {}, {}, set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            check(line.split()[2] not in helped, "HELP twice: %r" % line)
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            check(name not in typed, "TYPE twice: %r" % line)
            typed[name] = kind
            continue
        check(line and not line.startswith("#"), "stray line %r" % line)
        m = LINE.match(line)
        check(m, "unparsable sample %r" % line)
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        family = re.sub(r'_(bucket|sum|count)$', '', name) if name not in typed else name
        check(family in typed and family in helped, "no HELP/TYPE before %s" % name)
        key = (name, tuple(sorted(LABEL.findall(labels))))
        check(key not in out, "series twice: %r" % line)
        out[key] = value
        lnames = tuple(k for k, _ in key[1] if k != "le")
        check(names.setdefault(family, lnames) == lnames, "label names differ in %s" % family,
              line)
    for name, kind in typed.items():
        check(kind != "counter" or not name.endswith("_total") or name[:-6] not in typed,
              "counter %s clashes with the family %s" % (name, name[:-6]))
    return out


def metric(ms, name, **labels):
    """The sum of the samples of `name` whose labels include `labels` (so a
    per-orchestrator series is summed over its orchestrator label), or
    None when there is none."""
    want = set(labels.items())
    vals = [v for (n, ls), v in ms.items() if n == name and want <= set(ls)]
    return sum(vals) if vals else None


def scrape(port):
    st, body = get(port, "/metrics")
    check(st == 200, "metrics answered %s" % st, body[:500])
    return parse_metrics(body)


@test
def metrics_count_tasks_by_outcome_with_durations_and_slots(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, port, slots=4))
        o.wait_worker(WID, timeout=15)
        ids = o.prequeue(WID, "echo", {"x": 1}, count=6)
        ids += o.prequeue(WID, "t_fail", {"code": "PERMANENT_ERROR"}, count=3)
        ids += o.prequeue(WID, "t_conc", {"ms": 1200}, count=2)
        ids += o.prequeue(WID, "t_custom", {"status": "needs_review"}, count=1)
        o.wait_jobs(ids, timeout=30)
        # What the orchestrator received, by (type, status, code).
        want, by_id = {}, {}
        for ty, lo, hi in (("echo", 0, 6), ("t_fail", 6, 9), ("t_conc", 9, 11), ("t_custom", 11, 12)):
            for i in ids[lo:hi]:
                by_id[i] = ty
        for r in o.log(kind="result", worker_id=None):
            b = r["body"] or {}
            if b.get("task_id") not in by_id:
                continue
            code = (b.get("error") or {}).get("code", "") if b.get("status") == "failure" else ""
            k = (by_id[b["task_id"]], b["status"], code)
            want[k] = want.get(k, 0) + 1
        check(want.get(("echo", "success", "")) == 6, want)
        ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_results_pending") == 0
                               and metric(m, "avtworkerd_slots_free") == 4 else None)(scrape(port)),
                      what="all results delivered and slots free")
        for (ty, status, code), n in want.items():
            got = metric(ms, "avtworkerd_tasks_total", type=ty, status=status, code=code)
            check(got == n, "tasks_total %s/%s/%s: %s, orchestrator saw %d" % (ty, status, code, got, n))
        check(metric(ms, "avtworkerd_tasks_total", type="t_fail", status="failure",
                     code="PERMANENT_ERROR") == 3, ms)
        check(metric(ms, "avtworkerd_tasks_total", type="t_custom", status="needs_review", code="") == 1)
        # The histogram: t_conc slept 1.2 s, so nothing at or below 1 s,
        # everything at 2.5 s (1.3 s of slack for a slow machine); buckets
        # are cumulative and end at +Inf = count.
        h = "avtworkerd_task_duration_seconds"
        check(metric(ms, h + "_bucket", type="t_conc", le="1") == 0, "fast t_conc?")
        check(metric(ms, h + "_bucket", type="t_conc", le="2.5") == 2, "t_conc not in 2.5 bucket")
        check(metric(ms, h + "_count", type="t_conc") == 2)
        check(2.4 <= metric(ms, h + "_sum", type="t_conc") < 5.0, metric(ms, h + "_sum", type="t_conc"))
        check(metric(ms, h + "_bucket", type="echo", le="+Inf") == 6)
        les = sorted(float(dict(k[1])["le"]) for k in ms if k[0] == h + "_bucket"
                     and dict(k[1])["type"] == "echo")
        vals = [metric(ms, h + "_bucket", type="echo", le=("+Inf" if le == float("inf") else "%g" % le))
                for le in les]
        check(vals == sorted(vals), "buckets not cumulative", vals)
        check(metric(ms, "avtworkerd_slots") == 4 and metric(ms, "avtworkerd_registered") == 1, ms)
        check(metric(ms, "avtworkerd_tasks_received_total") == len(ids), ms)
        check(metric(ms, "avtworkerd_results_sent_total") >= len(ids))
        check(metric(ms, "avtworkerd_orchestrator_requests_total", endpoint="register") == 1)
        check(metric(ms, "avtworkerd_orchestrator_requests_total", endpoint="result") >= len(ids))
        check(metric(ms, "avtworkerd_orchestrator_requests_total", endpoint="poll") >= len(ids))
        check(metric(ms, "process_resident_memory_bytes") > 1e6, "RSS")
        check(metric(ms, "avtworkerd_uptime_seconds") > 0)
        check(metric(ms, "avtworkerd_websocket_connects_total") == 1)
        # A running task shows in the per-type gauges and in /threads.
        jid = o.prequeue(WID, "t_block", {}, count=1)[0]
        ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_tasks_running", type="t_block") == 1
                               else None)(scrape(port)), what="t_block running")
        check(metric(ms, "avtworkerd_slots_free") == 3, metric(ms, "avtworkerd_slots_free"))
        st, threads = get(port, "/threads")
        busy = [ln for ln in threads.splitlines() if " busy " in ln]
        check(st == 200 and len(busy) == 1 and "task_id=%s" % jid in busy[0] and "type=t_block" in busy[0]
              and "plugin=t_behave" in busy[0], threads)
        # One line per started thread: the busy one, the others idle.
        started = metric(scrape(port), "avtworkerd_worker_threads")
        check(1 <= started <= 4 and len(threads.splitlines()) == started
              and threads.count(" idle ") == started - 1, started, threads)
        o.cancel(jid)
        o.wait_job(jid)
        stop(p)


@test
def errors_are_counted_by_endpoint_and_kind(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        o.inject("register", status=503, body={"error": "busy"}, count=1)
        p = spawn(t, o, ini(t, port))
        o.wait_worker(WID, timeout=15)
        o.inject("result", status=500, body={"error": "boom"}, count=2)
        o.inject("poll", status=429, headers={"Retry-After": "0"}, body={"error": "slow"}, count=1)
        ids = o.prequeue(WID, "echo", {}, count=2)
        o.wait_jobs(ids, timeout=30)
        ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_results_pending") == 0 else None)(
            scrape(port)), what="results delivered")
        e = "avtworkerd_orchestrator_request_errors_total"
        check(metric(ms, e, endpoint="register", kind="5xx") == 1, ms)
        check(metric(ms, e, endpoint="result", kind="5xx") == 2, metric(ms, e, endpoint="result", kind="5xx"))
        check(metric(ms, e, endpoint="poll", kind="rate_limited") == 1)
        check(metric(ms, e, endpoint="heartbeat", kind="transport") == 0)
        check(metric(ms, "avtworkerd_orchestrator_requests_total", endpoint="register") == 2)
        p.kill()


@test
def healthz_follows_registration_and_orchestrator_contact(t):
    port = free_port()
    o = FakeOrch(poll_timeout=1).start()
    t.on_cleanup(o.stop)
    o.stop()  # keep the port; the worker starts while the orchestrator is down
    p = spawn(t, o, ini(t, port, hb=0.5))
    st, body = wait_for(lambda: (lambda r: r if r[0] else None)(get(port, "/healthz")), what="admin up")
    check(st == 503 and "not registered" in body, st, body)
    ms = scrape(port)
    check(metric(ms, "avtworkerd_registered") == 0, ms)
    wait_for(lambda: metric(scrape(port), "avtworkerd_orchestrator_request_errors_total",
                            endpoint="register", kind="transport") >= 1, what="transport error counted")
    o.start()
    o.wait_worker(WID, timeout=20)
    wait_for(lambda: (lambda r: r[0] == 200 and r[1].startswith("ok\n"))(get(port, "/healthz")),
             what="healthy")
    st, body = get(port, "/healthz")
    check("%s: ok (RXON 1.0b3)\n" % o.url in body, body)  # detected, not configured
    st, body = get(port, "/healthz", method="HEAD")
    check(st == 200 and body == "", st, body)
    # The orchestrator vanishes: still "registered", but no exchange succeeds.
    o.kill()
    st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
                        timeout=15, what="unhealthy after the orchestrator left")
    check("no successful exchange" in body, body)
    check(metric(scrape(port), "avtworkerd_orchestrator_last_success_age_seconds") > 1.5)
    o.start()
    wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="healthy again")
    stop(p)


@test
def metrics_and_healthz_cover_every_orchestrator(t):
    port = free_port()
    a = FakeOrch(poll_timeout=1).start()
    b = FakeOrch(poll_timeout=1).start()
    t.on_cleanup(a.stop)
    t.on_cleanup(b.stop)
    env = {"ORCHESTRATORS_CONFIG": json.dumps([{"url": a.url}, {"url": b.url}]),
           "MULTI_ORCHESTRATOR_MODE": "ROUND_ROBIN", "WORKER_ID": WID, "WORKER_TOKEN": a.token}
    p = spawn(t, None, ini(t, port), env=env)
    a.wait_worker(WID, timeout=15)
    b.wait_worker(WID, timeout=15)
    ids_a = a.prequeue(WID, "echo", {}, count=3)
    ids_b = b.prequeue(WID, "echo", {}, count=2) + b.prequeue(WID, "t_fail", {"code": "PERMANENT_ERROR"}, count=1)
    a.wait_jobs(ids_a, timeout=30)
    b.wait_jobs(ids_b, timeout=30)
    ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_results_pending") == 0 else None)(
        scrape(port)), what="results delivered")
    # Task-level series count the tasks of both; link-level ones are per orchestrator.
    check(metric(ms, "avtworkerd_tasks_total", type="echo", status="success", code="") == 5, ms)
    check(metric(ms, "avtworkerd_tasks_total", type="t_fail", status="failure",
                 code="PERMANENT_ERROR") == 1, ms)
    check(metric(ms, "avtworkerd_task_duration_seconds_count", type="echo") == 5)
    for o, n in ((a, 3), (b, 3)):
        check(metric(ms, "avtworkerd_registered", orchestrator=o.url) == 1, o.url, ms)
        check(metric(ms, "avtworkerd_protocol_info", orchestrator=o.url, protocol="1.0b3") == 1)
        check(metric(ms, "avtworkerd_tasks_received_total", orchestrator=o.url) == n, o.url)
        check(metric(ms, "avtworkerd_results_sent_total", orchestrator=o.url) == n, o.url)
        check(metric(ms, "avtworkerd_orchestrator_requests_total", orchestrator=o.url,
                     endpoint="register") == 1, o.url)
        check(0 <= metric(ms, "avtworkerd_orchestrator_last_success_age_seconds",
                          orchestrator=o.url) < tmo(5), o.url)
    check((lambda r: r[0] == 200 and r[1].startswith("ok\n"))(get(port, "/healthz")),
          get(port, "/healthz"))
    # One gone: still serving through the other, so healthy, and it says which.
    b.kill()
    st, body = wait_for(lambda: (lambda r: r if "degraded" in r[1] else None)(get(port, "/healthz")),
                        timeout=15, what="degraded health")
    check(st == 200 and body.startswith("degraded: 1 of 2 orchestrators healthy\n"), st, body)
    check("%s: ok (RXON" % a.url in body and "%s: " % b.url in body and "%s: ok" % b.url not in body,
          body)
    # Both gone: 503, each named.
    a.kill()
    st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
                        timeout=15, what="unhealthy with both down")
    check(body.startswith("down: 0 of 2 orchestrators healthy\n") and a.url in body and b.url in body,
          body)
    a.start()
    b.start()
    wait_for(lambda: (lambda r: r[0] == 200 and r[1].startswith("ok\n"))(get(port, "/healthz")),
             timeout=30, what="healthy again")
    stop(p)


@test
def deadlines_and_stuck_handlers_are_counted(t):
    port = free_port()
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        conf = ini(t, port, extra="cancel_grace = 0.5\nrestart_on_stuck = false\n"
                   "[limits]\nsleep.timeout = 0.5\nt_stubborn.timeout = 0.5\n")
        p = spawn(t, o, conf)
        o.wait_worker(WID, timeout=15)
        jb = o.prequeue(WID, "sleep", {"seconds": 30})[0]
        # Deaf to its cancellation until the test opens its gate.
        gate = t.path("gate")
        js = o.prequeue(WID, "t_stubborn", {"path": gate})[0]
        for j in (jb, js):
            r = o.wait_job(j, pred=lambda x: len(x.get("results") or []) >= 1, timeout=20)["results"][0]
            check(r["status"] == "failure" and r["error"]["code"] == "TIMEOUT_ERROR", j, r)
        # Both passed their deadline; only the stubborn one was given up on.
        ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_handlers_stuck_total") == 1 else None)(
            scrape(port)), what="stuck counted")
        check(metric(ms, "avtworkerd_deadlines_total") == 2, ms)
        check(metric(ms, "avtworkerd_tasks_abandoned_total") == 1, ms)
        # What the orchestrator got for each is what tasks_total says.
        for ty in ("sleep", "t_stubborn"):
            check(metric(ms, "avtworkerd_tasks_total", type=ty, status="failure",
                         code="TIMEOUT_ERROR") == 1, ty, ms)
        check(metric(ms, "avtworkerd_tasks_stuck") == 1, ms)
        # The gauge goes back to 0 once the handler returns; the counters stay.
        open(gate, "w").close()
        ms = wait_for(lambda: (lambda m: m if metric(m, "avtworkerd_tasks_stuck") == 0 else None)(
            scrape(port)), timeout=30, what="stuck handler returned")
        check(metric(ms, "avtworkerd_handlers_stuck_total") == 1 and
              metric(ms, "avtworkerd_deadlines_total") == 2, ms)
        # The stubborn handler's run time is recorded when it returns, once.
        check(metric(ms, "avtworkerd_task_duration_seconds_count", type="t_stubborn") == 1, ms)
        check(metric(ms, "avtworkerd_tasks_total", type="t_stubborn", status="success", code="")
              is None, "a late outcome was counted", ms)
        stop(p)


@test
def admin_is_off_unless_configured(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, None))
        o.wait_worker(WID, timeout=15)
        check(get(port, "/healthz")[0] == 0, "something answers on the port")
        check("admin endpoint" not in p.log(), p.log())
        p.kill()
    # ADMIN_PORT turns it on (loopback), and "off" in the file turns it off.
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, None), env={"ADMIN_PORT": str(port)})
        o.wait_worker(WID, timeout=15)
        wait_for(lambda: get(port, "/healthz")[0] == 200, what="admin via ADMIN_PORT")
        p.kill()
    r = run_daemon(["--check-config", "-c", t.ini("[admin]\nlisten = off\n", name="off.ini"),
                    "-P", t.plugin_dir("echo")])
    check(r.returncode == 0 and "# listen = (not set)" in r.stdout, r.stdout, r.stderr)


@test
def port_in_use_is_a_startup_error(t):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        with FakeOrch(poll_timeout=2) as o:
            p = spawn(t, o, ini(t, port))
            p.wait(timeout=tmo(20))
            log = p.log()
            check(p.returncode == 78, p.returncode, log[-2000:])
            check("admin: cannot listen on 127.0.0.1:%d: Address already in use" % port in log, log)
            check(not o.log(kind="register"), "registered although it could not start")
    finally:
        s.close()


def raw(port, data, timeout=5, read=True):
    c = socket.create_connection(("127.0.0.1", port), timeout=tmo(timeout))
    try:
        c.sendall(data)
        if not read:
            return c
        chunks = []
        while True:
            try:
                b = c.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        if read:
            c.close()


def status_of(answer):
    m = re.match(rb"HTTP/1\.1 (\d+) ", answer)
    return int(m.group(1)) if m else None


@test
def hostile_clients_get_errors_and_cannot_stall_the_loop(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, port))
        o.wait_worker(WID, timeout=15)
        check(status_of(raw(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")) == 404)
        check(status_of(raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")) == 405)
        check(status_of(raw(port, b"\x00\x01garbage\xff\r\n\r\n")) == 400)
        check(status_of(raw(port, b"GET\r\n\r\n")) == 400)
        check(status_of(raw(port, b"GET metrics HTTP/1.1\r\n\r\n")) == 400)
        check(status_of(raw(port, b"GET /metrics SPDY/9\r\n\r\n")) == 400)
        check(status_of(raw(port, b"GET /metrics?x=1 HTTP/1.0\n\n")) == 200)
        big = b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20000 + b"\r\n\r\n"
        check(status_of(raw(port, big)) == 431)
        # Slowloris: connections that send part of a request and then
        # trickle. The endpoint keeps answering, and they are cut off within
        # ADMIN_REQUEST_TIMEOUT (5 s) of connecting, however they trickle.
        t0 = time.monotonic()
        slow = [raw(port, b"GET /metrics HTTP/1.1\r\n", read=False) for _ in range(5)]
        st, body = get(port, "/healthz")
        check(st == 200 and time.monotonic() - t0 < tmo(3), "healthz slow or refused", st)
        # They keep trickling past the timeout: a timer re-armed by every
        # byte would keep them forever.
        closed = {}
        while len(closed) < len(slow) and time.monotonic() - t0 < tmo(10):
            live = [s for s in slow if s not in closed]
            for s in live:
                try:
                    s.sendall(b"X-A: b\r\n")
                except OSError:
                    pass
            for s in select.select(live, [], [], 0.5)[0]:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                check(data == b"", "a partial request was answered", data[:100])
                closed[s] = time.monotonic() - t0
        check(len(closed) == len(slow), "trickling clients kept their connections",
              len(closed), time.monotonic() - t0)
        check(all(4.5 <= v < tmo(7) for v in closed.values()), "cut off after", sorted(closed.values()))
        for s in slow:
            s.close()
        # A flood of idle connections: the oldest are closed to make room,
        # so a scrape still gets through; tasks keep running meanwhile.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        t0 = time.monotonic()
        st, body = get(port, "/healthz")
        check(st == 200 and time.monotonic() - t0 < tmo(3), "healthz refused during a flood", st)
        ids = o.prequeue(WID, "echo", {}, count=5)
        o.wait_jobs(ids, timeout=20)
        for s in idle:
            s.close()
        check(get(port, "/metrics")[0] == 200)
        check(p.poll() is None, "daemon died", p.log()[-2000:])
        stop(p)


@test
def sigusr1_dumps_every_worker_thread(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, None, slots=3))
        o.wait_worker(WID, timeout=15)
        # The handler's progress comes over the WebSocket: once it arrived,
        # the handler runs on its thread.
        wait_for(lambda: "websocket connected" in p.log(), what="websocket")
        jid = o.prequeue(WID, "t_block", {}, count=1)[0]
        wait_for(lambda: o.job(jid)["progress_message"] == "waiting", what="the handler running")
        p.send_signal(signal.SIGUSR1)
        header = re.compile(r"thread dump: 1 of (\d+) worker threads busy \(threads start as tasks "
                            r"need them, up to the 3 slots\)")

        def dumped():  # the header, and as many thread lines as it counts
            s = p.log()
            m = header.search(s)
            return s if m and s.count("avt-worker-") >= int(m.group(1)) else None
        log = wait_for(dumped, what="thread dump")
        busy = [ln for ln in log.splitlines() if "running for" in ln]
        check(len(busy) == 1, log[-2000:])
        check("task_id=%s" % jid in busy[0] and "job_id=%s" % jid in busy[0] and "type=t_block" in busy[0]
              and "plugin=t_behave" in busy[0], busy)
        # One line per started thread (they start as tasks need them): the
        # busy one and the idle others, as many as the header says.
        m = header.search(log)
        idle = len([ln for ln in log.splitlines() if re.search(r"avt-worker-\d idle for", ln)])
        check(idle == int(m.group(1)) - 1, idle, log[-2000:])
        o.cancel(jid)
        o.wait_job(jid)
        stop(p)


def task_lines_carry_ids(lines, ids, fmt):
    """Every line naming one of the task ids also carries task_id, job_id, type."""
    n = 0
    for ln in lines:
        if not any(i in ln for i in ids):
            continue
        n += 1
        if fmt == "json":
            j = json.loads(ln)
            check(j.get("task_id") in ids and j.get("job_id") and j.get("type"), "line without ids: " + ln)
        else:
            check(re.search(r" task_id=\S+", ln) and re.search(r" job_id=\S+", ln) and
                  re.search(r" type=\S+", ln), "line without ids: " + ln)
    return n


@test
def logs_never_show_the_token_and_task_lines_carry_ids(t):
    for fmt in ("plain", "json", "journal"):
        with FakeOrch(poll_timeout=2, token=TOKEN) as o:
            env = {"LOG_FORMAT": fmt} if fmt != "journal" else {"JOURNAL_STREAM": "8:12345"}
            p = spawn(t, o, ini(t, None), env=env)
            o.wait_worker(WID, timeout=15)
            ids = o.prequeue(WID, "echo", {"x": 1}, count=2)
            ids += o.prequeue(WID, "t_fail", {"code": "PERMANENT_ERROR"}, count=1)
            ids += o.prequeue(WID, "t_progress", {"n": 2}, count=1)
            o.wait_jobs(ids, timeout=20)
            o.inject("heartbeat", status=401, body={"error": "Unauthorized"}, count=1)
            o.inject("result", status=500, body={"error": "x"}, count=1)
            ids += o.prequeue(WID, "echo", {}, count=1)
            o.wait_jobs(ids, timeout=20)
            wait_for(lambda: o.log(kind="heartbeat") and o.log(kind="heartbeat")[-1]["status"] == 200,
                     what="a heartbeat after the 401")
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=tmo(20))
            log = p.log()
            check(TOKEN not in log, "%s: the token is in the log" % fmt)
            check(TOKEN not in open(p.out_path).read(), "token on stdout")
            lines = log.splitlines()
            check(lines, "empty log")
            if fmt == "json":
                for ln in lines:
                    json.loads(ln)
            if fmt == "journal":
                check(all(re.match(r"^<[0-7]>\S", ln) for ln in lines), [ln for ln in lines
                                                                       if not re.match(r"^<[0-7]>", ln)][:3])
                check(any(ln.startswith("<4>") for ln in lines) and any(ln.startswith("<5>") for ln in lines))
            n = task_lines_carry_ids(lines, ids, fmt)
            check(n >= len(ids), "%s: only %d task lines" % (fmt, n))


main()
