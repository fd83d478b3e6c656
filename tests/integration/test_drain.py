"""Shutdown of a worker whose long-poll is in flight: the real daemon binary
against the test orchestrator. Aborting a long-poll can lose the task the
orchestrator hands out for it meanwhile (PROTOCOL.md 2.2: the real one keeps
its handler waiting after the client has gone), so a SIGTERM lets the held
poll finish: without a task the daemon gives it up a second after the
orchestrator acknowledged its draining heartbeat (it dispatches only to idle
workers) or exits when the hold ends, a task it still brings runs (or, once
running tasks are being cancelled, is reported TRANSIENT_ERROR without
running), and a poll held past its hold is given up. Tests that need the
poll to stay hold back the heartbeats' answers (a slow orchestrator). The orchestrator hands a task out after the signal by queueing a job
straight onto the worker (its dispatcher skips a draining worker, but one
chosen just before the signal is queued all the same)."""
import signal

from avt import *  # noqa: F401,F403
from avt import check, main, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"
HOLD = tmo(5)  # the long-poll's hold, the orchestrator's and the daemon's
MSG = "worker shutting down, task not started"


def ini(t, hold=HOLD, cancel_grace=5, shutdown_timeout=None):
    return t.ini("""
[worker]
max_concurrent_tasks = 2
shutdown_timeout = %s
cancel_grace = %s
log_level = debug
[orchestrator]
poll_timeout = %s
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
probe_every = 2
result_retry_initial_delay = 0.2
retry_max_delay = 1
""" % (hold + 30 if shutdown_timeout is None else shutdown_timeout, cancel_grace, hold))


def spawn(t, o, conf):
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("echo")], env=o.worker_env(WID))
    o.wait_worker(WID, timeout=15)
    return p


def fresh_poll(o):
    """Wait until a poll has just begun (most of its hold lies ahead)."""
    def stat(key):
        return o.worker_stats(WID).get(key, 0)  # nothing before the first poll

    n = stat("polls")
    wait_for(lambda: stat("polls") > n and stat("polls_outstanding") == 1, timeout=HOLD + 10,
             what="a new poll")
    return stat("polls")


def exits(p, timeout):
    p.wait(timeout=tmo(timeout))
    return p.returncode, p.log()


def polls(o):
    return [r for r in o.log(kind="poll", worker_id=WID) if r["method"] == "GET"]


def slow_heartbeats(o, delay):
    """Heartbeats are answered `delay` s late: the draining one too."""
    o.inject("heartbeat", "slow", count=1000, delay=delay)


@test
def an_idle_worker_gives_up_its_poll_once_the_orchestrator_knows_it_drains(t):
    with FakeOrch(poll_timeout=HOLD) as o:
        p = spawn(t, o, ini(t))
        n = fresh_poll(o)
        p.send_signal(signal.SIGTERM)
        rc, log = exits(p, HOLD + 15)
        check(rc == 0, rc, log[-2000:])
        hbs = [r["body"]["status"] for r in o.log(kind="heartbeat", worker_id=WID)
               if isinstance(r.get("body"), dict)]
        check("offline" in hbs, hbs)
        check(len(polls(o)) == n, polls(o)[-3:])
        check("knows this worker is draining and handed out no task since: giving up 1 "
              "long-poll" in log, log[-2000:])


@test
def an_idle_worker_lets_its_held_poll_end_then_exits(t):
    with FakeOrch(poll_timeout=HOLD) as o:
        p = spawn(t, o, ini(t))
        n = fresh_poll(o)
        slow_heartbeats(o, HOLD + 10)  # the draining heartbeat is not acknowledged in time
        p.send_signal(signal.SIGTERM)
        rc, log = exits(p, HOLD + 15)
        check(rc == 0, rc, log[-2000:])
        # The poll was answered (204 at the end of its hold), not abandoned
        # by the client, and no poll followed it.
        last = polls(o)[-1]
        check(len(polls(o)) == n and last["status"] == 204, polls(o)[-3:])
        check("shutdown: letting 1 long-poll to %s finish" % o.url in log, log[-2000:])


@test
def a_task_the_held_poll_brings_after_sigterm_runs(t):
    with FakeOrch(poll_timeout=HOLD) as o:
        p = spawn(t, o, ini(t))
        fresh_poll(o)
        slow_heartbeats(o, HOLD + 10)
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: "Terminated: draining" in p.log(), what="the drain")
        jid = o.create_job("echo", {"msg": "after the signal"}, worker_id=WID)
        # Finished by this worker, long before the orchestrator's timeout.
        job = o.wait_job(jid, timeout=HOLD + 15)
        check(job["status"] == "finished", job)
        rc, log = exits(p, 20)
        check(rc == 0, rc, log[-2000:])
        check(polls(o)[-1]["status"] == 200, polls(o)[-3:])


@test
def every_held_poll_is_let_finish_and_the_tasks_they_bring_run(t):
    """After a task the worker has a poll per free slot out (2 here); a stop
    gives up none of them early: each brings its task, and each runs."""
    with FakeOrch(poll_timeout=HOLD) as o:
        p = spawn(t, o, ini(t))
        o.wait_job(o.create_job("echo", {"msg": "fan out"}, worker_id=WID))
        wait_for(lambda: o.worker_stats(WID)["polls_outstanding"] == 2, what="two polls held")
        slow_heartbeats(o, HOLD + 10)
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: "Terminated: draining" in p.log(), what="the drain")
        jids = [o.create_job("echo", {"msg": "after the signal %d" % i}, worker_id=WID) for i in range(2)]
        jobs = [o.wait_job(j, timeout=HOLD + 15) for j in jids]
        check(all(j["status"] == "finished" for j in jobs), jobs)
        rc, log = exits(p, 20)
        check(rc == 0, rc, log[-2000:])
        check("shutdown: letting 2 long-polls to %s finish" % o.url in log, log[-2000:])
        check([r["status"] for r in polls(o)[-2:]] == [200, 200], polls(o)[-3:])


@test
def a_task_brought_while_tasks_are_cancelled_is_reported_not_started(t):
    with FakeOrch(poll_timeout=HOLD, max_retries=0) as o:
        p = spawn(t, o, ini(t, cancel_grace=60))
        fresh_poll(o)
        slow_heartbeats(o, HOLD + 10)
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: "Terminated: draining" in p.log(), what="the drain")
        p.send_signal(signal.SIGTERM)  # on to cancelling the running tasks
        wait_for(lambda: "shortening the drain" in p.log(), what="the second signal")
        jid = o.create_job("echo", {"msg": "while cancelling"}, worker_id=WID)
        # Answered at once without running: retryable, so the orchestrator
        # retries it (here max_retries = 0 ends it) instead of timing it out.
        job = o.wait_job(jid, timeout=HOLD + 15)
        res = [r["body"] for r in o.log(kind="result") if r["body"].get("job_id") == jid]
        check(len(res) == 1 and res[0]["status"] == "failure" and res[0]["error"]["code"] ==
              "TRANSIENT_ERROR" and res[0]["error"]["message"] == MSG, res, job)
        check(job["status"] == "quarantined", job)
        rc, log = exits(p, 20)
        check(rc == 0, rc, log[-2000:])
        check("task not started (%s): reported as TRANSIENT_ERROR" % MSG in log, log[-2000:])


@test
def a_drain_shorter_than_the_hold_still_waits_for_it(t):
    # No time to drain (0 + 0 + the 10 s to deliver the last results), a
    # longer hold: the poll still ends as the orchestrator answers it.
    hold = tmo(12)
    with FakeOrch(poll_timeout=hold) as o:
        p = spawn(t, o, ini(t, hold=hold, cancel_grace=0, shutdown_timeout=0))
        n = fresh_poll(o)
        slow_heartbeats(o, hold + 10)
        p.send_signal(signal.SIGTERM)
        rc, log = exits(p, hold + 15)
        check(rc == 0, rc, log[-2000:])
        check(len(polls(o)) == n and polls(o)[-1]["status"] == 204, polls(o)[-3:])


@test
def a_poll_held_past_its_hold_is_given_up(t):
    # The orchestrator holds polls far longer than the daemon's poll_timeout
    # says (a misconfiguration, or a server too busy to answer).
    with FakeOrch(poll_timeout=300) as o:
        p = spawn(t, o, ini(t, hold=2))
        wait_for(lambda: o.worker_stats(WID).get("polls_outstanding") == 1, what="a poll held")
        slow_heartbeats(o, 30)
        p.send_signal(signal.SIGTERM)
        rc, log = exits(p, 30)
        check(rc == 0, rc, log[-2000:])
        check("shutdown: %s has not answered 1 long-poll 2 s after the end of its hold "
              "(poll_timeout = 2 s, which must match its WORKER_POLL_TIMEOUT_SECONDS): giving it up"
              % o.url in log, log[-2000:])


main()
