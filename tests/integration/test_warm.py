#!/usr/bin/python3
"""Persistent exec types (avtworkerd-warm(7)) through the real daemon and the
test orchestrator, with the shipped example declaration
(plugins/exec/examples/inference.json) and the reference child
(warm_child.py): the warm path (200 tasks, the start-up paid once per child:
the child appends its pid to a file once loaded and reports a per-child task
count), hot-cache entries in the register/heartbeats of both dialects,
recycling by max_tasks_per_child and max_rss_mb, a child killed mid-task
(transient, a new child serves the next), a cancel honoured (same child)
and ignored (killed, replaced, nothing left), malformed output, a child that
cannot start (exit 78 with its stderr), and reload and stop leaving no
child behind."""
import json
import os
import signal

from avt import *  # noqa: F401,F403
from avt import ROOT, VALGRIND, check, main, procs_with, test, tmo, wait_for
from orch import FINAL, FakeOrch

WID = "w-warm"
EXAMPLES = os.path.join(ROOT, "plugins", "exec", "examples")
CHILD = os.path.join(EXAMPLES, "warm_child.py")
EXAMPLE = os.path.join(EXAMPLES, "inference.json")


def decl(t, load="0.3", extra_env=None, **persistent):
    """The shipped example with the child from the source tree, a start-up
    of `load` seconds, the start-up file and a marker argument to find the
    children by."""
    with open(EXAMPLE) as f:
        d = json.load(f)
    check(d["argv"][1] == "/usr/local/share/avtworkerd/examples/warm_child.py", d["argv"])
    d["argv"] = [d["argv"][0], CHILD, marker(t)]
    d["env_set"].update({"WARM_LOAD_SECONDS": load, "WARM_STARTS_FILE": t.path("starts")})
    d["env_set"].update(extra_env or {})
    d["persistent"].update(persistent)
    if VALGRIND:
        # Valgrind refuses setrlimit(RLIMIT_NOFILE) between fork and exec
        # (it keeps fds of its own): EPERM, as test_exec's rlimits tests.
        del d["rlimits"]
    return d


def marker(t):
    return "avt-warm-test-%d-%s" % (os.getpid(), os.path.basename(t.path("")))


def spawn(t, o, d, slots=2, limits="", wait=True):
    types = t.path("exec.d")
    os.makedirs(types, exist_ok=True)
    os.chmod(types, 0o755)
    t.write(os.path.join("exec.d", "inference.json"), json.dumps(d, indent=2))
    work = t.path("work")
    os.makedirs(work, exist_ok=True)
    conf = t.ini("""
[worker]
max_concurrent_tasks = %d
cancel_grace = 10
log_level = info
[orchestrator]
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
result_retry_initial_delay = 0.2
[limits]
inference = %d
%s
[plugin.exec]
types_dir = %s
work_dir = %s
""" % (slots, slots, limits, types, work))
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("exec")], env=o.worker_env(WID))
    if wait:
        o.wait_worker(WID, timeout=30)
    return p


def starts(t):
    try:
        with open(t.path("starts")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def children(t):
    """Live (not zombie) processes with this test's marker in their argv."""
    return sorted(int(pid) for pid, _ in procs_with(marker(t)))


def finished(o, params, timeout=30):
    job = o.wait_job(o.create_job("inference", params), timeout=timeout)
    check(job["status"] == "finished", job)
    return job["state_history"]


def failed(o, params, timeout=30):
    job = o.wait_job(o.create_job("inference", params), timeout=timeout)
    check(job["status"] not in ("finished", "cancelled"), job)
    return job["results"][-1]["error"]


def progress_of(o, jid):
    return [r for r in o.log() if r["method"] == "WS-RECV" and isinstance(r["body"], dict)
            and r["body"].get("event") == "progress_update" and r["body"].get("job_id") == jid]


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(30))
    return p.returncode


@test
def warm_path_200_tasks_pay_the_start_up_once_per_child(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, load="1", children=2))
        check(len(starts(t)) == 2, starts(t))
        ids = [o.create_job("inference", {"text": "good day %d" % i}) for i in range(200)]
        jobs = o.wait_jobs(ids, timeout=180)
        check(all(j["status"] == "finished" for j in jobs), [j for j in jobs
                                                            if j["status"] != "finished"][:1])
        data = [j["state_history"] for j in jobs]
        check(all(d["label"] == "positive" and d["model"] == "demo-model" for d in data), data[0])
        # Two start-ups for 200 tasks; each child's counter counts its own.
        check(len(starts(t)) == 2, starts(t))
        by_pid = {}
        for d in data:
            by_pid.setdefault(d["pid"], []).append(d["served"])
        check(set(by_pid) <= set(starts(t)), by_pid.keys(), starts(t))
        for pid, served in by_pid.items():
            check(sorted(served) == list(range(1, len(served) + 1)), pid, sorted(served))
        check(sum(len(s) for s in by_pid.values()) == 200, by_pid.keys())
        check(children(t) == sorted(starts(t)), children(t), starts(t))
        # The hot cache: the model the children hold and the type itself.
        wait_for(lambda: [r for r in o.log() if r["kind"] in ("register", "heartbeat")
                          and isinstance(r["body"], dict)
                          and {"demo-model", "inference"} <= set(r["body"].get("hot_cache") or [])],
                 what="hot_cache in a register or heartbeat")
        o.wait_worker(WID, pred=lambda w: "demo-model" in (w.get("hot_cache") or []))
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def hot_skills_with_1_0b14(t):
    with FakeOrch(poll_timeout=2, protocol="1.0b14") as o:
        p = spawn(t, o, decl(t, children=1))
        d = finished(o, {"text": "bad cold day"})
        check(d["label"] == "negative" and d["pid"] == starts(t)[0], d)
        wait_for(lambda: [r for r in o.log() if r["kind"] in ("register", "heartbeat")
                          and isinstance(r["body"], dict)
                          and "inference" in (r["body"].get("hot_skills") or [])],
                 what="hot_skills in a register or heartbeat")
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def recycled_after_max_tasks_per_child(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, children=1, max_tasks_per_child=3), slots=1)
        pids = [finished(o, {"text": "x"})["pid"] for _ in range(7)]
        check(len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1, pids)
        check(len({pids[0], pids[3], pids[6]}) == 3, pids)
        check(starts(t) == [pids[0], pids[3], pids[6]], starts(t), pids)
        check("served 3 tasks (max_tasks_per_child): recycled" in p.log(), p.log()[-2000:])
        wait_for(lambda: children(t) == [pids[6]], what="only the last child left")
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def recycled_over_max_rss_mb(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, children=1, max_rss_mb=80), slots=1)
        a = finished(o, {"text": "x"})["pid"]
        check(finished(o, {"text": "x"})["pid"] == a)  # a small child stays
        check(finished(o, {"alloc_mb": 120})["pid"] == a)
        b = finished(o, {"text": "x"})["pid"]
        check(b != a and starts(t) == [a, b], a, b, starts(t))
        check("(VmRSS), over max_rss_mb 80: recycled" in p.log(), p.log()[-2000:])
        check(stop(p) == 0, p.log()[-2000:])


@test
def a_child_killed_mid_task_fails_it_transient_and_a_new_child_serves(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = spawn(t, o, decl(t, children=1), slots=1)
        wait_for(lambda: "websocket connected" in p.log(), what="websocket")
        first = starts(t)[0]
        jid = o.create_job("inference", {"steps": 2000, "step_seconds": 0.05})
        wait_for(lambda: progress_of(o, jid), timeout=20, what="the task under way")
        os.kill(first, signal.SIGKILL)
        job = o.wait_job(jid, pred=lambda j: j["status"] in FINAL, timeout=30)
        err = job["results"][-1]["error"]
        check(err["code"] == "TRANSIENT_ERROR", job)
        check("type inference: warm child pid %d was killed by signal 9 (SIGKILL) while running "
              "the task; stderr: warm_child[%d]: loading demo-model" % (first, first)
              in err["message"], err)
        d = finished(o, {"text": "x"})
        check(d["pid"] != first and d["served"] == 1 and starts(t) == [first, d["pid"]], d)
        check(p.poll() is None, p.log()[-2000:])
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


def cancel_running(o, p, params):
    wait_for(lambda: "websocket connected" in p.log(), what="websocket")
    jid = o.create_job("inference", params)
    wait_for(lambda: progress_of(o, jid), timeout=20, what="the task under way")
    o.cancel(jid)
    job = o.wait_job(jid, pred=lambda j: j["status"] in FINAL, timeout=30)
    check(job["status"] == "cancelled", job)
    wait_for(lambda: "cancelled" in json.dumps(o.log(kind="result")), timeout=30,
             what="the cancelled result")


@test
def a_cancel_honoured_keeps_the_child(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, children=1), slots=1)
        first = starts(t)[0]
        cancel_running(o, p, {"steps": 2000, "step_seconds": 0.05})
        d = finished(o, {"text": "x"})
        check(d["pid"] == first and starts(t) == [first], d, starts(t))
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def a_cancel_ignored_past_the_grace_kills_and_replaces_the_child(t):
    with FakeOrch(poll_timeout=2) as o:
        d = decl(t, children=1)
        d["kill_grace_seconds"] = 0.5
        p = spawn(t, o, d, slots=1)
        first = starts(t)[0]
        cancel_running(o, p, {"steps": 100000, "step_seconds": 0.05, "ignore_cancel": True})
        wait_for(lambda: "did not answer the cancel within kill_grace_seconds (0.5): killed "
                 "and replaced" in p.log(), what="the kill")
        d = finished(o, {"text": "x"})
        check(d["pid"] != first and starts(t) == [first, d["pid"]], d, starts(t))
        check(children(t) == [d["pid"]], children(t))
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def malformed_output_fails_transient_and_replaces_the_child(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = spawn(t, o, decl(t, children=1), slots=1)
        first = starts(t)[0]
        err = failed(o, {"raw": "this is not JSON"})
        check(err["code"] == "TRANSIENT_ERROR", err)
        check("type inference: warm child pid %d broke the line protocol (avtworkerd-warm(7)): "
              "not JSON" % first in err["message"], err)
        check("broke the line protocol" in p.log() and "replacing it" in p.log(), p.log()[-2000:])
        d = finished(o, {"text": "x"})
        check(d["pid"] != first, d)
        check(p.poll() is None, p.log()[-2000:])
        check(stop(p) == 0, p.log()[-2000:])


@test
def a_child_that_cannot_start_stops_the_daemon_with_its_stderr(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, load="soon"), wait=False)
        p.wait(timeout=tmo(30))
        check(p.returncode == 78, p.returncode, p.log()[-2000:])
        check("before its ready line; stderr:" in p.log(), p.log()[-2000:])
        check("ValueError: could not convert string to float: 'soon'" in p.log(), p.log()[-2000:])
        check(children(t) == [], children(t))


@test
def reload_and_stop_leave_no_child(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, decl(t, children=2))
        old = starts(t)
        check(len(old) == 2 and children(t) == sorted(old), old, children(t))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: 1 plugin(s), 1 task type(s)" in p.log(), timeout=30,
                 what="the reload")
        wait_for(lambda: len(starts(t)) == 4, what="the new children")
        new = starts(t)[2:]
        wait_for(lambda: children(t) == sorted(new), timeout=30, what="the old children gone")
        check(finished(o, {"text": "x"})["pid"] in new)
        # A reload whose child cannot start is rejected: the running
        # children stay and serve, the failed one is gone.
        t.write(os.path.join("exec.d", "inference.json"), json.dumps(decl(t, load="soon")))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in p.log(), timeout=30, what="the rejected reload")
        check("before its ready line; stderr:" in p.log(), p.log()[-2000:])
        check(children(t) == sorted(new), children(t), new)
        check(finished(o, {"text": "x"})["pid"] in new)
        check(stop(p) == 0, p.log()[-2000:])
        check(children(t) == [], children(t))


main()
