"""Serving an orchestrator: the real daemon binary with real plugins against
the protocol-faithful test orchestrator (tests/orchestrator/fakeorch.py)
over loopback. Limits and polling discipline are measured by the
orchestrator, not assumed."""
import json
import os
import signal
import time

from avt import *  # noqa: F401,F403
from avt import check, main, need_normal_scheduling, test, thread_policies, tmo, wait_for
from orch import FakeOrch, FINAL

WID = "w1"


def ini(t, slots=4, limits="", extra_worker="", extra_orch="", hb=0.5, probe_every=2):
    return t.ini("""
[worker]
max_concurrent_tasks = %d
shutdown_timeout = 10
log_level = debug
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = %s
heartbeat_debounce = 0.05
probe_every = %d
result_retry_initial_delay = 0.2
retry_max_delay = 2
%s
[limits]
%s
""" % (slots, extra_worker, hb, probe_every, extra_orch, limits))


def start(t, o, conf, plugins=("echo", "steps", "t_behave"), worker_id=WID, env=None):
    e = o.worker_env(worker_id)
    e.update(env or {})
    p = t.spawn(["-c", conf, "-P", t.plugin_dir(*plugins)], env=e)
    o.wait_worker(worker_id, timeout=15)
    return p


def stop(p, timeout=20):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(timeout))
    return p.returncode, p.log()


def results_of(job):
    return job.get("results") or []


def wstat(o, key):
    """One of the worker's figures at the orchestrator; 0 before its first poll."""
    return o.worker_stats(WID).get(key, 0)


@test
def thousands_of_echo_tasks_each_delivered_once(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=8))
        n = 2000
        ids = o.prequeue(WID, "echo", {"msg": "hi"}, count=n)
        jobs = o.wait_jobs(ids, timeout=120)
        bad = [j for j in jobs if j["status"] != "finished" or j["state_history"].get("msg") != "hi"]
        check(not bad, "not finished correctly: %d, e.g. %s" % (len(bad), bad[:1]))
        dup = [j["id"] for j in jobs if len(results_of(j)) != 1]
        check(not dup, "jobs with %s results" % [len(results_of(o.job(i))) for i in dup[:5]])
        st = o.worker_stats(WID)
        check(st["max_outstanding"] <= 8, st)
        check(st["max_committed"] <= 8, "more tasks and polls out than slots", st)
        check(o.polls_while_full(WID, 8) == 0, st)
        rc, err = stop(p)
        check(rc == 0, rc, err[-3000:])


@test
def a_task_fans_polls_out_over_the_free_slots_and_an_empty_answer_folds_them(t):
    """After a poll brings a task, every other free slot gets a poll of its
    own (up to max_polls); after an empty answer the worker holds one poll
    again, as an idle SDK worker does."""
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=4))
        wait_for(lambda: wstat(o, "polls_outstanding") == 1, what="one poll while idle")
        jid = o.prequeue(WID, "t_block", {}, count=1)[0]
        # 1 slot runs t_block, 3 polls wait for the next tasks.
        wait_for(lambda: wstat(o, "polls_outstanding") == 3, what="three polls out")
        ids = o.prequeue(WID, "echo", {"n": 1}, count=3)
        o.wait_jobs(ids, timeout=30)
        # The polls come back empty after their 2 s hold: one stays.
        wait_for(lambda: wstat(o, "polls") >= 8 and
                 wstat(o, "polls_outstanding") == 1, timeout=30, what="back to one poll")
        st = o.worker_stats(WID)
        check(st["max_polls_outstanding"] == 3, st)
        check(st["max_committed"] <= 4, "more tasks and polls out than slots", st)
        o.cancel(jid)
        o.wait_job(jid)
        rc, err = stop(p)
        check(rc == 0, rc, err[-3000:])


@test
def max_polls_bounds_the_polls_in_flight(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=6, extra_orch="max_polls = 2"))
        ids = o.prequeue(WID, "t_block", {}, count=1)
        wait_for(lambda: wstat(o, "polls_outstanding") == 2, what="two polls out")
        ids += o.prequeue(WID, "echo", {"n": 1}, count=40)
        o.wait_jobs(ids[1:], timeout=60)
        st = o.worker_stats(WID)
        check(st["max_polls_outstanding"] == 2, st)
        o.cancel(ids[0])
        o.wait_job(ids[0])
        rc, err = stop(p)
        check(rc == 0, rc, err[-3000:])


@test
def answers_are_not_asked_compressed_unless_configured(t):
    """The orchestrator gzips answers of 500 bytes or more at level 9 for a
    client that offers gzip: CPU of the system's bottleneck spent for
    nothing on a fast network. Offered only with compressed_answers."""
    big = {"blob": "x" * 2000}
    for compressed in (False, True):
        with FakeOrch(poll_timeout=2) as o:
            extra = "compressed_answers = true" if compressed else ""
            p = start(t, o, ini(t, slots=2, extra_orch=extra))
            jid = o.prequeue(WID, "echo", big, count=1)[0]
            job = o.wait_job(jid)
            check(job["status"] == "finished" and job["state_history"].get("blob") == big["blob"], job)
            polls = [r for r in o.log(kind="poll", worker_id=WID) if r["status"] == 200]
            check(polls, "no task handed out")
            offered = [(r["kind"], "gzip" in r["headers"].get("Accept-Encoding", ""))
                       for r in o.log(worker_id=WID) if r["kind"] != "ws"]
            check(offered and all(x == compressed for _, x in offered), compressed, offered)
            enc = polls[0]["resp_headers"].get("Content-Encoding")
            check(enc == ("gzip" if compressed else None), compressed, polls[0])
            rc, err = stop(p)
            check(rc == 0, rc, err[-3000:])


@test
def every_thread_is_batch_scheduled_unless_configured_otherwise(t):
    """[worker] batch_scheduling (default true): SCHED_BATCH for the loop,
    the task threads and what they start, so that the worker's wake-ups do
    not preempt a co-located orchestrator; false leaves SCHED_OTHER."""
    need_normal_scheduling()
    for extra, want in (("", os.SCHED_BATCH), ("batch_scheduling = false", os.SCHED_OTHER)):
        with FakeOrch(poll_timeout=2) as o:
            p = start(t, o, ini(t, slots=3, extra_worker=extra))
            # Three running at once: task threads start as tasks need them,
            # so three are started, after the loop set its policy. Their
            # "waiting" progress comes over the WebSocket (dropped while it
            # is closed): wait for it first.
            wait_for(lambda: "websocket connected" in p.log(), timeout=30, what="websocket")
            ids = o.prequeue(WID, "t_block", {}, count=3)
            wait_for(lambda: all(o.job(j)["progress_message"] == "waiting" for j in ids), timeout=30,
                     what="three handlers running")
            pols = thread_policies(p.pid)
            check(set(pols.values()) == {want}, extra, pols)
            check(len(pols) >= 4, "the loop and 3 task threads", pols)
            for j in ids:
                o.cancel(j)
            o.wait_jobs(ids, timeout=30)
            rc, log = stop(p)
            check(rc == 0, rc, log[-1500:])


@test
def limits_are_never_exceeded_and_no_task_is_dropped(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=4, limits="t_conc = 1\nt_conc2 = 2\n"))
        ids = o.prequeue(WID, "t_conc", {"ms": 30}, count=12)
        ids += o.prequeue(WID, "t_conc2", {"ms": 30}, count=12)
        ids += o.prequeue(WID, "echo", {"x": 1}, count=12)
        jobs = o.wait_jobs(ids, timeout=60)
        check(all(j["status"] == "finished" for j in jobs), [j for j in jobs if j["status"] != "finished"][:2])
        for j in jobs:
            h = j["state_history"]
            if "max" in h:
                check(h["max_all"] <= 4, "global limit exceeded", h)
        m1 = max(j["state_history"]["max"] for j in jobs[:12])
        m2 = max(j["state_history"]["max"] for j in jobs[12:24])
        check(m1 == 1, "t_conc ran %d at once with limit 1" % m1)
        check(m2 <= 2, "t_conc2 ran %d at once with limit 2" % m2)
        st = o.worker_stats(WID)
        check(st["max_outstanding"] <= 4, "orchestrator saw more than 4 tasks out", st)
        check(o.polls_while_full(WID, 4) == 0, "polled while full", st)
        check(all(len(results_of(j)) == 1 for j in jobs), "duplicate or missing results")
        stop(p)


@test
def heartbeat_advertises_capacity_and_never_null_lists(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=1, extra_worker="advertise_busy = true"))
        jid = o.prequeue(WID, "t_block", {}, count=1)[0]
        # Full (advertise_busy): the next heartbeat says busy with no skills.
        wait_for(lambda: any(r["body"] and r["body"].get("status") == "busy"
                             for r in o.log(kind="heartbeat", worker_id=WID)), what="busy heartbeat")
        busy = [r["body"] for r in o.log(kind="heartbeat") if r["body"] and r["body"].get("status") == "busy"][0]
        check(busy["supported_skills"] == [] and busy["current_tasks"] == [jid] and busy["load"] == 1, busy)
        o.cancel(jid)
        o.wait_job(jid)
        hbs = [r["body"] for r in o.log(kind="heartbeat") if r["body"]]
        for b in hbs:
            for k in ("hot_cache", "supported_skills", "current_tasks"):
                check(isinstance(b.get(k), list), "heartbeat without list %s" % k, b)
            check(None not in b.values(), "null in heartbeat", b)
        idle = wait_for(lambda: [b for b in (r["body"] for r in o.log(kind="heartbeat")) if b
                                 and b.get("status") == "idle" and b["current_tasks"] == []], what="idle")
        check("echo" in idle[-1]["supported_skills"], idle[-1])
        stop(p)


@test
def registration_shape(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, slots=3))
        reg = [r for r in o.log(kind="register")][0]
        b = reg["body"]
        check(b["worker_id"] == WID and b["capabilities"]["websockets"] is True, b)
        check(sorted(b["supported_skills"]) == sorted(
            ["echo", "progress", "sleep", "fail", "steps"] +
            [s for s in b["supported_skills"] if s.startswith("t_")]), b["supported_skills"])
        check(b["resources"]["max_concurrent_tasks"] == 3, b)
        check(reg["headers"].get("X-RXON-Version") == "1.0b3", reg["headers"])
        stop(p)


@test
def results_survive_5xx_and_dropped_connections(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        o.inject("result", status=503, body={"error": "busy"}, count=3)
        o.inject("result", "drop", count=2)
        ids = o.prequeue(WID, "echo", {"k": 1}, count=5)
        jobs = o.wait_jobs(ids, timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        check(all(len(results_of(j)) == 1 for j in jobs), [len(results_of(j)) for j in jobs])
        stop(p)


@test
def auth_error_is_explained_and_retried(t):
    with FakeOrch(poll_timeout=2) as o:
        o.inject("register", status=401, body={"error": "Unauthorized: No valid token found"}, count=2)
        e = o.worker_env(WID)
        p = t.spawn(["-c", ini(t), "-P", t.plugin_dir("echo")], env=e)
        o.wait_worker(WID, timeout=30)
        rc, err = stop(p)
        check("WORKER_TOKEN" in err and "GLOBAL_WORKER_TOKEN" in err, err[-2000:])
        check(o.token not in err, "token leaked into the log")


@test
def wrong_token_is_never_logged(t):
    with FakeOrch(poll_timeout=2) as o:
        secret = "s3cr3t-token-value"
        e = o.worker_env(WID, token=secret)
        p = t.spawn(["-c", ini(t), "-P", t.plugin_dir("echo")], env=e)
        wait_for(lambda: len(o.log(kind="register")) >= 2, timeout=15, what="register retries")
        check(all(r["status"] == 401 for r in o.log(kind="register")))
        rc, err = stop(p)
        check(secret not in err, "token in log")
        check("WORKER_TOKEN" in err, err[-1500:])


@test
def rate_limited_poll_honours_retry_after(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        wait_for(lambda: o.log(kind="poll", worker_id=WID), what="first poll")
        o.inject("poll", status=429, body={"error": "Too Many Requests"}, headers={"Retry-After": "2"})
        wait_for(lambda: [r for r in o.log(kind="poll") if r["status"] == 429], timeout=10, what="429")
        t429 = [r["t"] for r in o.log(kind="poll") if r["status"] == 429][0]
        nxt = wait_for(lambda: [r["t"] for r in o.log(kind="poll") if r["t"] > t429], timeout=15,
                       what="poll after 429")
        check(nxt[0] - t429 >= 1.9, "polled again after %.2f s" % (nxt[0] - t429))
        # Without Retry-After the daemon waits out the limiter's 60 s window
        # for polls but keeps heartbeating, and tells the operator once.
        o.inject("poll", status=429, body={"error": "Too Many Requests"})
        wait_for(lambda: len([r for r in o.log(kind="poll") if r["status"] == 429]) >= 2, what="429 #2")
        t2 = [r["t"] for r in o.log(kind="poll") if r["status"] == 429][1]
        time.sleep(tmo(3))
        check(not [r for r in o.log(kind="poll") if r["t"] > t2], "polled during the 429 pause")
        check([r for r in o.log(kind="heartbeat") if r["t"] > t2], "heartbeats stopped too")
        rc, err = stop(p)
        check("RATE_LIMITING_ENABLED=false" in err, err[-1500:])
        check(err.count("RATE_LIMITING_ENABLED") == 1, "hint repeated")


@test
def malformed_and_hostile_answers_do_not_stop_the_daemon(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        wait_for(lambda: o.log(kind="poll", worker_id=WID), what="first poll")
        o.inject("poll", "malformed")
        o.inject("poll", status=200, body=[1, 2, 3])
        o.inject("poll", status=200, body={"job_id": "jX", "task_id": "jX", "type": 7})
        o.inject("poll", "truncate")
        o.inject("poll", status=500, body={"error": "boom"})
        o.inject("heartbeat", "malformed", count=2)
        o.inject("poll", "slow", delay=1)
        wait_for(lambda: not any(o.faults().values()), timeout=20, what="every fault served")
        ids = o.prequeue(WID, "echo", {"after": "faults"}, count=3)
        jobs = o.wait_jobs(ids, timeout=40)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        bad = wait_for(lambda: [r for r in o.log(kind="result")
                                if r["body"] and r["body"].get("task_id") == "jX"], what="jX's result")
        check(bad[0]["body"]["error"]["code"] == "INVALID_INPUT_ERROR", bad)
        check(p.poll() is None, "daemon died")
        rc, err = stop(p)
        check(rc == 0, err[-2000:])


@test
def reregisters_after_expiry(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, hb=0.3, probe_every=2))
        n0 = len(o.log(kind="register"))
        o.expire(WID)
        wait_for(lambda: len(o.log(kind="register")) > n0, timeout=15, what="re-registration")
        o.wait_worker(WID)
        jid = o.create_job("echo", {"again": True})
        check(o.wait_job(jid)["status"] == "finished")
        rc, err = stop(p)
        check("registering again" in err, err[-1500:])


@test
def progress_reaches_the_job(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        # Open on both ends: the daemon drops progress while its socket is not.
        wait_for(lambda: o.ws_connected(WID) and "websocket connected" in p.log(), what="websocket")
        jid = o.create_job("progress", {"steps": 4, "step_seconds": 0.1})
        j = o.wait_job(jid)
        check(j["status"] == "finished", j)
        # The last update comes over the socket, the result over HTTP: either may arrive first.
        j = wait_for(lambda: (lambda j: j if j["progress"] == 1.0 else None)(o.job(jid)),
                     what="the last progress update")
        check("4/4" in (j["progress_message"] or ""), j)
        frames = [r for r in o.log() if r["method"] == "WS-RECV"]
        check(len(frames) >= 2 and frames[0]["body"]["event"] == "progress_update", frames[:3])
        stop(p)


@test
def websocket_cancel_stops_a_cooperative_handler(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        wait_for(lambda: o.ws_connected(WID), what="websocket")
        jid = o.create_job("sleep", {"seconds": 60})
        wait_for(lambda: jid in o.worker_stats(WID).get("outstanding_task_ids", []), what="pickup")
        wait_for(lambda: "sleeping 60 s" in p.log(), what="the handler running")
        t0 = time.monotonic()
        status, _ = o.cancel(jid)
        check(status == 200)
        j = o.wait_job(jid, pred=lambda j: len(j.get("results") or []) >= 1, timeout=10)
        check(time.monotonic() - t0 < tmo(3), "cancel took too long")
        check(j["results"][0]["status"] == "cancelled", j["results"])
        check(any(r["method"] == "WS-SEND" for r in o.log()), "no WS cancel command sent")
        stop(p)


@test
def heartbeat_cancel_ids_cancel_running_task(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t, hb=0.3), env={"WORKER_ENABLE_WEBSOCKETS": "false"})
        jid = o.create_job("sleep", {"seconds": 60})
        wait_for(lambda: jid in o.worker_stats(WID).get("outstanding_task_ids", []), what="pickup")
        o.cancel(jid)
        j = o.wait_job(jid, pred=lambda j: len(j.get("results") or []) >= 1, timeout=10)
        check(j["results"][0]["status"] == "cancelled", j["results"])
        stop(p)


@test
def hot_cache_in_next_heartbeat(t):
    with FakeOrch(poll_timeout=2) as o:
        # The periodic heartbeat comes far later than the wait below: only the
        # heartbeat the change itself causes can pass the test.
        p = start(t, o, ini(t, hb=int(tmo(3) * 4) + 1))
        jid = o.create_job("steps", {"steps": 1, "step_ms": 1, "hot_cache_add": "llama-7b"})
        o.wait_job(jid)
        hb = wait_for(lambda: [r for r in o.log(kind="heartbeat") if r["body"]
                               and "llama-7b" in r["body"].get("hot_cache", [])], timeout=3,
                      what="hot cache heartbeat")
        check(hb, "no heartbeat with the hot cache")
        w = o.wait_worker(WID, pred=lambda w: "llama-7b" in (w.get("hot_cache") or []))
        stop(p)


@test
def sigterm_drains_running_tasks(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        # The tasks run until the test opens their gate, after SIGTERM.
        gate = t.path("gate")
        ids = o.prequeue(WID, "t_gate", {"path": gate}, count=3)
        wait_for(lambda: len(o.worker_stats(WID).get("outstanding_task_ids", [])) == 3, what="pickup")
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: [r for r in o.log(kind="heartbeat")
                          if r["body"] and r["body"].get("status") == "offline"], what="offline")
        check(p.poll() is None, "exited with tasks running")
        open(gate, "w").close()
        p.wait(timeout=tmo(20))
        check(p.returncode == 0, p.log()[-2000:])
        jobs = o.wait_jobs(ids, timeout=5)
        check(all(j["status"] == "finished" and j["state_history"] == {"gate": "opened"} for j in jobs),
              jobs)
        off = [r["body"] for r in o.log(kind="heartbeat") if r["body"] and r["body"].get("status") == "offline"]
        check(off and off[0]["supported_skills"] == [], "no offline heartbeat")


main()
