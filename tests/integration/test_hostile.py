"""A hostile or broken orchestrator: the real daemon binary against the test
orchestrator, whose faults answer what a broken proxy or a compromised
orchestrator could. A Retry-After can pause an endpoint for at most
retry_max_delay and no less than a second, and /healthz and STATUS= say
until when (polls failing for longer than two backoffs and a hold make it
503); an answer larger than its endpoint can carry, or one whose
parsed form would be far larger than its bytes (a 15 MiB `[{},{},...]` is
1.2 GB of jansson objects), is logged with its size and the limit and not
built; the daemon keeps serving, and its peak RSS stays small."""
import datetime
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request

from avt import *  # noqa: F401,F403
from avt import VALGRIND, check, main, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"
MIB = 1024 * 1024
# Peak RSS allowed while the daemon refuses 15 MiB answers: the body itself
# is read (up to max_task_bytes), never its parsed form.
RSS_BOUND = 200 * MIB


def ini(t, port=None, retry_max_delay=2, extra_orch=""):
    admin = "[admin]\nlisten = 127.0.0.1:%d\n" % port if port else ""
    return t.ini("""
[worker]
max_concurrent_tasks = 2
shutdown_timeout = 5
log_level = debug
[orchestrator]
poll_timeout = 2
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
probe_every = 2
result_retry_initial_delay = 0.2
retry_max_delay = %s
%s
%s""" % (retry_max_delay, extra_orch, admin))


def spawn(t, o, conf, env=None):
    e = o.worker_env(WID)
    e.update(env or {})
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("echo")], env=e)
    o.wait_worker(WID, timeout=15)
    wait_for(lambda: o.log(kind="poll", worker_id=WID), what="first poll")
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(20))
    check(p.returncode == 0, p.returncode, p.log()[-2000:])
    return p.log()


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=tmo(5)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return 0, ""


class NotifySocket:
    """A NOTIFY_SOCKET: the STATUS= lines the daemon sends."""

    def __init__(self, t):
        self.path = t.path("notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.status = []
        t.on_cleanup(self.sock.close)

    def statuses(self):
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                return self.status
            self.status += [ln[7:] for ln in data.split("\n") if ln.startswith("STATUS=")]


PAUSE = re.compile(r"polling paused until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) \(([^\n]*)\)")


def pause_end(text):
    """(unix time the pause ends, its reason) from a /healthz or STATUS= text."""
    m = PAUSE.search(text)
    check(m, text)
    end = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ")
    return end.replace(tzinfo=datetime.timezone.utc).timestamp(), m.group(2)


# ---- Retry-After ---------------------------------------------------------------------------


@test
def a_huge_retry_after_pauses_polls_for_retry_max_delay_and_healthz_says_so(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        ns = NotifySocket(t)
        p = spawn(t, o, ini(t, port, retry_max_delay=3), env={"NOTIFY_SOCKET": ns.path})
        o.inject("poll", status=429, headers={"Retry-After": "99999999999"},
                 body={"error": "Too Many Requests"}, count=2)
        st, body = wait_for(lambda: (lambda r: r if "polling paused" in r[1] else None)(
            get(port, "/healthz")), timeout=15, what="/healthz telling the pause")
        # A pause is not a failure: still healthy, with the reason in sight.
        check(st == 200, st, body)
        end, why = pause_end(body)
        check(why == "the orchestrator asked to retry later (429)", body)
        # Until when: at most retry_max_delay from now (rounded up to a second).
        check(end <= time.time() + 3 + 1, "pause ends %.1f s from now" % (end - time.time()), body)
        status = wait_for(lambda: [s for s in ns.statuses() if "polling paused until" in s],
                          what="STATUS= telling the pause")
        check(status[0].startswith("serving: 0/2 slots busy; polling paused until"), status)
        # Polling resumes: a task queued meanwhile runs.
        ids = o.prequeue(WID, "echo", {"after": "a huge Retry-After"}, count=2)
        jobs = o.wait_jobs(ids, timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        polls = [r for r in o.log(kind="poll", worker_id=WID)]
        check(len([r for r in polls if r["status"] == 429]) == 2, polls)
        wait_for(lambda: get(port, "/healthz") == (200, "ok\n%s: ok (RXON %s)\n" % (o.url, o.protocol))
                 or None, what="/healthz ok again")
        wait_for(lambda: ns.statuses()[-1].startswith("serving: 0/2 slots busy") and
                 "paused" not in ns.statuses()[-1], what="STATUS= without the pause")
        log = stop(p)
        line = "poll: %s asked to retry after 10000000000 s; waiting 3 s instead (retry_max_delay)" % o.url
        check(log.count(line) == 1, log[-3000:])


@test
def retry_after_zero_waits_a_second_between_polls(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, retry_max_delay=2))
        since = len(o.log())
        o.inject("poll", status=429, headers={"Retry-After": "0"}, body={"error": "Too Many Requests"},
                 count=4)

        def four_429s_and_the_poll_after():
            ps = o.log(kind="poll", worker_id=WID, since=since)
            first = next((i for i, r in enumerate(ps) if r["status"] == 429), None)
            return ps[first:first + 5] if first is not None and len(ps) >= first + 5 else None

        seq = wait_for(four_429s_and_the_poll_after, timeout=20, what="four 429s and the poll after")
        check([r["status"] for r in seq[:4]] == [429] * 4, seq)
        gaps = [b["t"] - a["t"] for a, b in zip(seq, seq[1:])]
        # Each 429 waits a second, not zero (the log's times are the
        # orchestrator's arrival times: a slow machine only adds to them;
        # the margin is libev's loop time, taken before the answer is read).
        check(all(g >= 0.8 for g in gaps), gaps, seq)
        stop(p)


@test
def polls_failing_for_long_make_healthz_503_with_the_reason(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        # Unhealthy after 2 x retry_max_delay + poll_timeout = 4 s of failing polls.
        p = spawn(t, o, ini(t, port, retry_max_delay=1))
        o.inject("poll", status=500, body={"error": "database is down"}, count=1000)
        st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
                            timeout=20, what="/healthz 503")
        check(re.match(r"polls failing for \d+ s \(limit 4 s\)(; polling paused until \S+ "
                       r"\(the orchestrator answered 500\))?\n", body), body)
        # Heartbeats kept working meanwhile: only polls were down.
        check([r for r in o.log(kind="heartbeat", worker_id=WID) if r["status"] == 200])
        o.clear_faults()
        wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="healthy again")
        stop(p)


# ---- answers larger than what an endpoint carries ------------------------------------------


def vm_hwm(pid):
    """Peak resident set size of pid in bytes (VmHWM), None when unknown."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def over_limit(log, endpoint, url, limit, status=200):
    """The size an "over this endpoint's limit" line of the log gives."""
    m = re.search(r"%s: %s answered %d with a body of at least (\d+) bytes, over this endpoint's "
                  r"limit of %d bytes: not read" % (endpoint, re.escape(url), status, limit), log)
    check(m, "no %s line over %d bytes in" % (endpoint, limit), log[-3000:])
    return int(m.group(1))


def rss_is_meaningful():
    """Under valgrind or a sanitizer RSS says nothing about the daemon."""
    return not VALGRIND and not os.environ.get("SANITIZE")


@test
def huge_answers_are_refused_with_their_size_and_the_daemon_keeps_serving(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t))
        n = 15 * MIB // 3
        flat = "[" + "{}," * (n - 1) + "{}]"  # the 15 MiB poll answer
        nested = ('{"job_id":"jH","task_id":"jH","type":"echo","params":{"a":['
                  + "{}," * (n - 1) + "{}]}}")  # the same inside a task
        beat = '{"status":"ok","cancel_task_ids":[],"pad":"%s"}' % ("x" * 200000)
        o.inject("poll", status=200, raw=flat)
        o.inject("poll", status=200, raw=nested)
        o.inject("heartbeat", status=200, raw=beat, count=2)
        wait_for(lambda: not any(o.faults().values()), timeout=30, what="every fault served")
        # It keeps serving: tasks run and their results arrive.
        ids = o.prequeue(WID, "echo", {"after": "huge answers"}, count=3)
        jobs = o.wait_jobs(ids, timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        if rss_is_meaningful():
            hwm = vm_hwm(p.pid)
            check(hwm is not None and hwm < RSS_BOUND, "peak RSS %s bytes" % hwm)
        log = stop(p)
        check("poll: %s answered a task of %d bytes that is not read: not a JSON object (a task "
              "is one object): it starts with '[' (a list); the orchestrator will time it out"
              % (o.url, len(flat)) in log, log[-3000:])
        check("poll: %s answered a task of %d bytes that is not read: its %d bytes would take "
              "more than 64.0 MiB of memory once parsed (4 x max_task_bytes): too many small values"
              % (o.url, len(nested), len(nested)) in log, log[-3000:])
        # The heartbeat's limit: 64 KiB and 1 KiB per slot. The answer came
        # gzipped: its size is known as far as it was decoded.
        seen = over_limit(log, "heartbeat", o.url, 64 * 1024 + 2 * 1024)
        check(64 * 1024 + 2 * 1024 < seen <= len(beat), seen)


@test
def a_task_over_max_task_bytes_is_dropped_and_smaller_ones_run(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, extra_orch="max_task_bytes = 1048576"))
        big = '{"job_id":"jB","task_id":"jB","type":"echo","params":{"blob":"%s"}}' % ("Q" * (2 * MIB))
        o.inject("poll", status=200, raw=big)
        o.inject("result", status=200, raw='{"status":"accepted","pad":"%s"}' % ("y" * 100000),
                 process=True)
        wait_for(lambda: not o.faults().get("poll"), timeout=20, what="the large task served")
        # A task of half the limit runs (its result's answer is too large to
        # read, but a 200 is a delivery).
        jid = o.prequeue(WID, "echo", {"blob": "Q" * (MIB // 2)})[0]
        job = o.wait_job(jid, timeout=30)
        check(job["status"] == "finished", job)
        log = stop(p)
        seen = over_limit(log, "poll", o.url, MIB)
        check(MIB < seen <= len(big), seen)
        check("of 1048576 bytes: not read; the task is dropped and the orchestrator will time it "
              "out (raise [orchestrator] max_task_bytes if tasks this large are expected)" in log,
              log[-3000:])
        over_limit(log, "result", o.url, 64 * 1024)
        check("limit of 65536 bytes: not read; the result counts as delivered (200)" in log,
              log[-3000:])


main()
