"""Nothing lost: the result spool and the crash journal under faults, with
the real daemon binary against the fake orchestrator. The orchestrator goes
away and comes back, answers slowly, truncated or with garbage, the daemon
is killed with SIGKILL mid-task and between spooling and sending, a handler
crashes the process; at the end every result is delivered, none twice.

Soak size: AVT_SOAK_TASKS (default 3000, a fifth of it under sanitizers or
valgrind, i.e. when TIMEOUT_MULT > 1)."""
import errno
import glob
import json
import os
import random
import signal
import time
import struct
import zlib

from avt import *  # noqa: F401,F403
from avt import TIMEOUT_MULT, check, main, test, tmo, wait_for
from orch import FakeOrch, FINAL

WID = "w1"


def ini(t, slots=4, extra_worker="", extra=""):
    return t.ini("""
[worker]
max_concurrent_tasks = %d
shutdown_timeout = 5
log_level = debug
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
probe_every = 2
result_retry_initial_delay = 0.1
retry_max_delay = 0.5
%s
""" % (slots, extra_worker, extra))


def spawn(t, o, conf, wait=True):
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("echo", "t_crash", "t_behave")], env=o.worker_env(WID))
    if wait:
        o.wait_worker(WID, timeout=15)
    return p


SEG_HEADER = struct.Struct("<4sBBHQQIII")  # daemon/spool.h: the record header


def spooled(t):
    """The seqs of the undelivered results in the spool's segments: result
    records without a "done" record, read the way spool.c does (an
    incomplete or damaged record ends a segment)."""
    results, done = [], set()
    for f in sorted(glob.glob(t.path("state", "spool", "*.seg"))):
        with open(f, "rb") as fh:
            data = fh.read()
        off = 0
        while off + SEG_HEADER.size <= len(data):
            magic, ver, kind, ulen, seq, _, blen, _, hcrc = SEG_HEADER.unpack_from(data, off)
            end = off + SEG_HEADER.size + ulen + blen
            if magic != b"AVSP" or ver != 2 or zlib.crc32(data[off:off + 32]) != hcrc \
                    or end > len(data):
                break
            if kind == ord("R"):
                results.append(seq)
            else:
                done.add(seq)
            off = end
    return [s for s in results if s not in done]


def results_of(job):
    return job.get("results") or []


def result_ids(o):
    return [r["body"]["task_id"] for r in o.log(kind="result")
            if isinstance(r.get("body"), dict) and "task_id" in r["body"]]


def stop(p, timeout=20):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(timeout))
    return p.returncode


@test
def orchestrator_down_while_tasks_finish_then_everything_is_delivered(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, slots=4))
        # The tasks run until the test opens their gate, with the orchestrator gone.
        gate = t.path("gate")
        o.prequeue(WID, "t_gate", {"path": gate}, count=4)
        st = wait_for(lambda: (lambda s: s if s.get("outstanding") == 4 else None)(o.worker_stats(WID)),
                      what="4 tasks handed out")
        running = set(st["outstanding_task_ids"])
        o.stop()
        open(gate, "w").close()
        # The tasks finish while nobody listens: their results go to disk.
        wait_for(lambda: len(spooled(t)) == 4, timeout=20, what="4 spooled results")
        check(p.poll() is None, "daemon died", p.log()[-2000:])
        o.start()  # same port, a fresh orchestrator: the worker must register again
        o.wait_worker(WID, timeout=20)
        wait_for(lambda: set(result_ids(o)) >= running, timeout=20, what="replayed results")
        ids = result_ids(o)
        check(sorted(ids) == sorted(running), "each result once", ids, running)
        wait_for(lambda: not spooled(t), what="spool emptied")
        # Work continues on the new instance.
        jobs = o.wait_jobs(o.prequeue(WID, "echo", {"x": 1}, count=5), timeout=30)
        check(all(j["status"] == "finished" and len(results_of(j)) == 1 for j in jobs), jobs)
        check(stop(p) == 0, p.log()[-2000:])
        check(p.log().count("registered with") >= 2, p.log()[-2000:])


@test
def result_endpoint_faults_are_retried_from_the_spool(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, ini(t, slots=4))
        # Unanswered, 503, slow, truncated; then garbage with a 200 (which
        # counts as delivered: the orchestrator said 200).
        o.inject("result", "drop", count=3)
        o.inject("result", "respond", count=3, status=503, body={"error": "busy"})
        o.inject("result", "slow", count=2, delay=1.0)
        o.inject("result", "truncate", count=2)
        ids = o.prequeue(WID, "echo", {"x": 2}, count=12)
        jobs = o.wait_jobs(ids, timeout=60)
        check(all(j["status"] == "finished" for j in jobs), [j["status"] for j in jobs])
        twice = [j["id"] for j in jobs if len(results_of(j)) != 1]
        check(not twice, "results per job", [len(results_of(o.job(i))) for i in twice])
        wait_for(lambda: not spooled(t), what="spool emptied")
        check(p.poll() is None)
        check(stop(p) == 0)


@test
def a_result_refused_for_good_is_set_aside_and_delays_no_other(t):
    with FakeOrch(poll_timeout=2) as o:
        conf = ini(t, slots=1)
        p = spawn(t, o, conf)
        # A proxy in front of the orchestrator refuses one result (413), the
        # orchestrator another (400): each is set aside, the others go on.
        o.inject("result", status=413, raw="<html>413 Request Entity Too Large</html>")
        ids = o.prequeue(WID, "echo", {"k": 1}, count=6)
        refused_dir = t.path("state", "refused")
        wait_for(lambda: os.path.isdir(refused_dir) and os.listdir(refused_dir), what="refused/")
        o.inject("result", status=400, body={"error": "bad result"})
        ids += o.prequeue(WID, "echo", {"k": 2}, count=6)
        wait_for(lambda: len(os.listdir(refused_dir)) == 2, what="the second refusal")
        wait_for(lambda: len([i for i in ids if results_of(o.job(i))]) == len(ids) - 2,
                 what="every other result")
        saved = [json.load(open(os.path.join(refused_dir, f))) for f in sorted(os.listdir(refused_dir))]
        check(sorted(x["reason"][:3] for x in saved) == ["400", "413"], saved)
        check(all(x["orchestrator"] == o.url and x["result"]["task_id"] == x["task_id"]
                  and x["task_id"] in ids for x in saved), saved)
        check(p.log().count("refused this result for good") == 2, p.log()[-3000:])
        check(not spooled(t), "a refused result is still in the spool")
        check(stop(p) == 0)
        # The next start does not send them again.
        n = len(o.log(kind="result"))
        p = spawn(t, o, conf)
        time.sleep(tmo(1))
        check(len(o.log(kind="result")) == n, "a refused result was sent again")
        check(stop(p) == 0)


@test
def sigkill_between_spooling_and_sending_delivers_exactly_once(t):
    with FakeOrch(poll_timeout=2) as o:
        conf = ini(t, slots=4)
        p = spawn(t, o, conf)
        o.inject("result", "drop", count=100000)  # spooled, never acknowledged
        ids = o.prequeue(WID, "echo", {"x": 3}, count=6)
        wait_for(lambda: len(spooled(t)) == 6, timeout=30, what="6 spooled results")
        p.kill()
        p.wait()
        o.clear_faults()
        p2 = spawn(t, o, conf)
        jobs = o.wait_jobs(ids, timeout=30)
        check(all(j["status"] == "finished" for j in jobs), [j["status"] for j in jobs])
        check(all(len(results_of(j)) == 1 for j in jobs), [len(results_of(j)) for j in jobs])
        wait_for(lambda: not spooled(t), what="spool emptied")
        check("from a previous run" in p2.log(), p2.log()[-2000:])
        check(stop(p2) == 0)


@test
def sigkill_mid_task_is_reported_on_restart(t):
    with FakeOrch(poll_timeout=2, max_retries=3) as o:
        conf = ini(t, slots=2)
        p = spawn(t, o, conf)
        ids = o.prequeue(WID, "t_slow", {"ms": 60000}, count=2)
        journal = t.path("state", "journal", "running.log")
        wait_for(lambda: os.path.exists(journal) and open(journal).read().count("S ") == 2,
                 what="both handlers started")
        p.kill()
        p.wait()
        t_kill = max(r["t"] for r in o.log())
        p2 = spawn(t, o, conf)
        wait_for(lambda: all(results_of(o.job(i)) for i in ids), timeout=20, what="crash reports")
        for i in ids:
            r = results_of(o.job(i))[0]
            check(r["status"] == "failure" and r["error"]["code"] == "TRANSIENT_ERROR"
                  and r["error"]["message"] == "worker crashed while running this task", r)
        check("ended abnormally with 2 task(s)" in p2.log(), p2.log()[-3000:])
        # Not before the dead process's long-poll (2 s hold) has lapsed.
        first = min(r["t"] for r in o.log(kind="result"))
        check(first - t_kill >= 2.0, "reported %.2f s after the kill" % (first - t_kill))
        for i in ids:
            o.cancel(i)
        p2.kill()


def open_journal_tasks(t):
    """The task ids the crash journal holds open (accepted, not ended)."""
    seqs, ended = {}, set()
    try:
        lines = open(t.path("state", "journal", "running.log")).read().split("\n")[:-1]
    except FileNotFoundError:
        return set()
    for line in lines:
        if line.startswith("E "):
            ended.add(int(line[2:]))
        elif line.startswith("{"):
            rec = json.loads(line)
            seqs[rec["a"]] = rec["i"]
    return {tid for seq, tid in seqs.items() if seq not in ended}


@test
def kills_at_random_moments_of_a_burst_lose_no_job_and_never_freeze_the_restart(t):
    """20 kill -9 at random moments of bursts, each followed by a restart
    with the same state directory. As the real orchestrator, the test
    orchestrator fails a job that waits in the queue longer than its task
    timeout, and retries one picked up but not answered in time; the timeout
    is shorter than the crash reports' hold, so a restart that held new
    results behind its crash reports would fail jobs."""
    kills = 20 if TIMEOUT_MULT < 10 else 6  # scaled under valgrind
    slots = 4
    hold = tmo(2.0)  # poll_timeout; the crash reports wait poll_timeout + 1 s
    rng = random.Random(int(os.environ.get("AVT_SEED", "1")))
    with FakeOrch(poll_timeout=hold, max_retries=kills + 5, task_timeout=hold,
                  watcher_interval=0.2) as o:
        conf = ini(t, slots=slots)
        with open(conf) as f:
            text = f.read().replace("poll_timeout = 2\n", "poll_timeout = %g\n" % hold)
        with open(conf, "w") as f:
            f.write(text)
        ids = []
        checked, explained = 0, 0
        held_back = set()  # this start's crash reports
        p = spawn(t, o, conf, wait=False)
        for k in range(kills + 1):
            since = len(o.log())
            ids += o.prequeue(WID, "t_slow", {"ms": 50}, count=16)
            if k == kills:
                break
            if k % 2 == 0:
                # Even lives die mid-burst, once they hold tasks (crash reports).
                try:
                    wait_for(lambda: open_journal_tasks(t) - held_back, timeout=20,
                             what="a task held by this life")
                except Exception:
                    pass
                time.sleep(rng.uniform(0, 0.1))
            else:
                # Odd ones outlive the hold: their crash reports go out.
                sent = lambda: {r["body"].get("task_id") for r in o.log(since=since)
                                if r["kind"] == "result" and isinstance(r.get("body"), dict)
                                and r["body"].get("status") == "failure"}
                try:
                    wait_for(lambda: held_back <= sent(), timeout=30, what="the crash reports")
                except Exception:
                    pass
                time.sleep(rng.uniform(0.1, 0.5))
            p.kill()
            p.wait()
            explained += len(o.worker_stats(WID).get("outstanding_task_ids", [])) + 1
            rows = o.log(since=since)
            results = [r for r in rows if r["kind"] == "result" and isinstance(r.get("body"), dict)]
            reports = [i for i, r in enumerate(results) if r["body"].get("task_id") in held_back
                       and r["body"].get("status") == "failure"]
            fresh = [i for i, r in enumerate(results) if r["body"].get("status") == "success"]
            if held_back and reports:
                # The crash reports went out in this life: a new result went first.
                checked += 1
                check(fresh and fresh[0] < reports[0],
                      "life %d: new results waited behind the crash reports" % k,
                      [(r["t"], r["body"].get("task_id"), r["body"].get("status")) for r in results[:8]])
            held_back = open_journal_tasks(t)
            p = spawn(t, o, conf, wait=False)
        jobs = o.wait_jobs(ids, timeout=120)
        lost = [j["id"] for j in jobs if j["status"] != "finished"]
        check(not lost, "%d of %d jobs not finished, e.g. %s" % (len(lost), len(ids), [o.job(i) for i in lost[:2]]))
        handouts = o.worker_stats(WID).get("handouts", 0)
        check(handouts <= len(ids) + explained,
              "%d tasks run for %d jobs; %d kills explain at most %d more"
              % (handouts, len(ids), kills, explained))
        check(checked >= 3, "only %d lives lasted until their crash reports went" % checked)
        check(stop(p) == 0)


class SmallDisk:
    """A tmpfs of `size` mounted on `path` in a private user and mount
    namespace, held by a sleeping process, so that daemons entered into it
    (nsenter) share it across restarts; the test fills it from outside
    through /proc/PID/root. None when user namespaces are not available."""

    def __init__(self, path, size="2m"):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.holder = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c",
             'mount -t tmpfs -o size=%s,mode=0700 tmpfs "$0" && echo ready && exec sleep 3600' % size,
             path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ok = self.holder.stdout.readline().strip() == "ready"
        self.why = "" if self.ok else self.holder.stderr.read()
        self.prefix = ["nsenter", "-t", str(self.holder.pid), "-U", "-m", "--preserve-credentials"]
        self.fill_path = "/proc/%d/root%s/fill" % (self.holder.pid, path)

    def fill(self):
        """Write until the disk is full; returns the bytes written."""
        n = 0
        with open(self.fill_path, "wb", buffering=0) as f:
            try:
                while True:
                    n += f.write(b"\0" * 4096)
            except OSError as e:
                check(e.errno == errno.ENOSPC, e)
        return n

    def free(self):
        os.unlink(self.fill_path)

    def close(self):
        self.holder.kill()
        self.holder.wait()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=tmo(5)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@test
def a_full_disk_stops_new_work_delivers_what_it_holds_and_resumes(t):
    disk = SmallDisk(t.path("state"), size="2m")
    t.on_cleanup(disk.close)
    check(disk.ok, "unshare -Urm (user namespaces) is needed for this test: " + disk.why)
    port = free_port()
    with FakeOrch(poll_timeout=1, max_retries=5) as o:
        conf = ini(t, slots=2)
        env = dict(o.worker_env(WID), ADMIN_PORT=str(port))
        plugins = t.plugin_dir("echo", "t_crash", "t_behave")
        run = lambda: t.spawn(["-c", conf, "-P", plugins], env=env, prefix=disk.prefix)
        p = run()
        o.wait_worker(WID, timeout=15)
        check(o.wait_jobs(o.prequeue(WID, "echo", {"x": 1}, count=3))[0]["status"] == "finished")
        # The disk fills; results larger than a page cannot be spooled.
        disk.fill()
        held = o.prequeue(WID, "echo", {"pad": "x" * 20000}, count=2)
        wait_for(lambda: http_get(port, "/healthz")[0] == 503, what="/healthz 503")
        code, text = http_get(port, "/healthz")
        check("spool cannot be written" in text and "No space left on device" in text, text)
        check("avtworkerd_spool_write_failing 1" in http_get(port, "/metrics")[1])
        check("taking no new tasks until it can" in p.log(), p.log()[-3000:])
        # Delivered from memory all the same.
        jobs = o.wait_jobs(held, timeout=20)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        # No new task while the disk is full.
        later = o.prequeue(WID, "echo", {"x": 2}, count=4)
        polls = len(o.log(kind="poll", worker_id=WID))
        time.sleep(tmo(2.5))
        check(len(o.log(kind="poll", worker_id=WID)) == polls, "polled with a full disk")
        check(all(o.job(j)["status"] != "finished" for j in later), "took a task with a full disk")
        # Space comes back: the worker says so and takes tasks again.
        disk.free()
        wait_for(lambda: "can be written again" in p.log(), timeout=30, what="the recovery")
        jobs = o.wait_jobs(later, timeout=30)
        check(all(j["status"] == "finished" and len(results_of(j)) == 1 for j in jobs), jobs)
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="/healthz 200 again")
        check(stop(p) == 0)


@test
def poison_task_is_failed_permanently_after_crash_limit(t):
    t.expect_crash = True
    with FakeOrch(poll_timeout=2, max_retries=10) as o:
        conf = ini(t, slots=2, extra_worker="crash_limit = 2")
        jid = o.prequeue(WID, "t_crash", {}, count=1)[0]
        crashes = 0
        for _ in range(4):
            p = spawn(t, o, conf, wait=False)
            try:
                p.wait(timeout=tmo(20))
            except Exception:
                break  # it stopped crashing
            crashes += 1
            check(p.returncode != 0, p.returncode)
        check(crashes == 2, "crashes", crashes, p.log()[-3000:], [r["body"] for r in o.log(kind="result")])
        job = o.wait_job(jid, timeout=20)
        res = results_of(job)
        check(res and res[-1]["error"]["code"] == "PERMANENT_ERROR"
              and res[-1]["error"]["message"] == "worker crashed in handler", res)
        check(res[0]["error"]["code"] == "TRANSIENT_ERROR", res)
        check("crash-loop" in p.log(), p.log()[-3000:])
        # A copy the orchestrator delivers again (its timeout watcher
        # re-dispatches the job) is answered the same way without running.
        sent = lambda: [r["body"] for r in o.log(kind="result")
                        if isinstance(r.get("body"), dict) and r["body"].get("task_id") == jid]
        n = len(sent())
        o.inject("poll", status=200, body={"job_id": jid, "task_id": jid, "type": "t_crash",
                                           "params": {}, "tracing_context": {},
                                           "params_metadata": None})
        again = wait_for(lambda: sent()[n:], timeout=20, what="the answer to the poison's copy")
        check(again[0]["error"]["code"] == "PERMANENT_ERROR", again)
        check(p.poll() is None, "the copy crashed the worker again", p.log()[-2000:])
        # The service keeps working for everything else.
        jobs = o.wait_jobs(o.prequeue(WID, "echo", {"x": 4}, count=3), timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        check(stop(p) == 0)


@test
def unusable_state_dir_exits_78_but_run_once_does_not_need_it(t):
    bad = t.write("not-a-dir", "x")
    with FakeOrch(poll_timeout=2) as o:
        env = o.worker_env(WID)
        env["STATE_DIRECTORY"] = bad
        p = t.spawn(["-c", ini(t), "-P", t.plugin_dir("echo")], env=env)
        p.wait(timeout=tmo(20))
        check(p.returncode == 78, p.returncode, p.log())
        check("state directory unusable" in p.log(), p.log())
    r = run_daemon(["-P", t.plugin_dir("echo"), "run-once", "echo", "{}"],
                   env={"STATE_DIRECTORY": bad})
    check(r.returncode == 0, r)
    r = run_daemon(["-P", t.plugin_dir("echo"), "--check-config"], env={"STATE_DIRECTORY": bad})
    check(r.returncode == 0, r)


@test
def soak_with_faults_loses_nothing_and_duplicates_nothing(t):
    n = int(os.environ.get("AVT_SOAK_TASKS", "3000" if TIMEOUT_MULT <= 1 else "600"))
    with FakeOrch(poll_timeout=2) as o:
        conf = ini(t, slots=8)
        p = spawn(t, o, conf)
        ids = []
        for k in range(5):
            ids += o.prequeue(WID, "echo", {"k": k}, count=n // 5)
            o.inject("result", "drop", count=5)
            o.inject("result", "respond", count=5, status=502, body={"error": "bad gateway"})
            o.inject("result", "truncate", count=3)
            o.inject("poll", "respond", count=2, status=503, body={"error": "busy"})
            o.inject("heartbeat", "drop", count=2)
            if k == 2:
                # A graceful restart in the middle: results still queued
                # are spooled and replayed.
                check(stop(p) == 0)
                p = spawn(t, o, conf)
        jobs = o.wait_jobs(ids, timeout=180)
        lost = [j["id"] for j in jobs if j["status"] != "finished"]
        check(not lost, "%d not finished, e.g. %s" % (len(lost), lost[:3]))
        counts = [len(results_of(j)) for j in jobs]
        check(all(c == 1 for c in counts), "results per job: %s" % {c: counts.count(c) for c in set(counts)})
        ignored = [r for r in o.log(kind="result") if isinstance(r.get("resp"), dict)
                   and r["resp"].get("status") == "ignored"]
        check(not ignored, "ignored (duplicate) results", ignored[:2])
        wait_for(lambda: not spooled(t), what="spool emptied")
        check(stop(p) == 0)


main()
