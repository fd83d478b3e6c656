"""What the daemon tells the orchestrator about its capacity, and what that
costs: the real daemon against the test orchestrator in both dialects,
whose dispatch is the real one's (a job finds no idle worker listing its
type -> "No suitable workers", retried by the executor, then quarantined;
fakeorch.py handler_failed). The orchestrator counts every failed dispatch
(/_test/stats counters.dispatch_failed).

Covered: by default a lone worker at capacity stays a dispatch candidate
(idle, every type, its load reported), so neither a burst through the client
API nor jobs created while its only slot is taken ever fail dispatch; with
advertise_busy = true it withdraws its types while full and says so again
as soon as a slot frees, not one heartbeat_debounce later."""
import signal

from avt import *  # noqa: F401,F403
from avt import check, main, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"
DIALECTS = ("1.0b3", "1.0b14")


def ini(t, slots=1, extra_worker="", hb=0.5, debounce=0.05):
    return t.ini("""
[worker]
max_concurrent_tasks = %d
shutdown_timeout = 10
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = %s
heartbeat_debounce = %s
result_retry_initial_delay = 0.2
retry_max_delay = 2
""" % (slots, extra_worker, hb, debounce))


def start(t, o, conf):
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("echo", "steps", "t_behave")], env=o.worker_env(WID))
    o.wait_worker(WID, timeout=15)
    return p


def stop(p, timeout=20):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(timeout))
    return p.returncode


def heartbeats(o):
    return [r["body"] for r in o.log(path="/_worker/workers/" + WID)
            if r["method"] == "PATCH" and isinstance(r.get("body"), dict)]


def offered(hb):
    """The types a heartbeat offers for dispatch (1.0b3 supported_skills,
    1.0b14 available_skills) and whether its status lets dispatch pick it."""
    types = hb.get("available_skills", hb.get("supported_skills")) or []
    return hb.get("status") == "idle", sorted(types)


def dispatch_failed(o):
    return o.stats()["counters"].get("dispatch_failed", 0)


@test
def a_lone_worker_at_capacity_never_costs_a_job(t):
    # One slot, the default configuration. Its only slot held by a gated
    # task, jobs created meanwhile must queue for it; then a burst.
    for proto in DIALECTS:
        with FakeOrch(poll_timeout=2, protocol=proto) as o:
            p = start(t, o, ini(t))
            gate = t.path("gate-" + proto)
            jid = o.create_job("t_gate", {"path": gate})
            # The heartbeat that follows the task's start (every state change
            # is told within heartbeat_debounce): the orchestrator now knows
            # the slot is taken, and must still see a candidate.
            hb = wait_for(lambda: [h for h in heartbeats(o) if jid in h.get("current_tasks", [])],
                          what="a heartbeat naming the running job (%s)" % proto)[-1]
            held = [o.create_job("echo", {"n": i}) for i in range(10)]
            open(gate, "w").close()
            burst = [o.create_job("echo", {"n": i}) for i in range(300)]
            jobs = o.wait_jobs([jid] + held + burst, timeout=120)
            bad = [j for j in jobs if j["status"] != "finished"]
            check(not bad, proto, "%d jobs not finished" % len(bad), bad[:2])
            check(dispatch_failed(o) == 0, proto, o.stats()["counters"])
            idle, types = offered(hb)
            check(idle and "echo" in types and "t_gate" in types, proto, hb)
            if proto == "1.0b3":
                check(hb["load"] == 1, hb)
            check(stop(p) == 0, proto)


@test
def advertise_busy_withdraws_types_while_full_and_offers_them_again_at_once(t):
    # heartbeat_debounce = 1 s: a free slot told only through the debounce
    # would be sampled after the next queued task took it, so the
    # orchestrator would never hear of the free slot between the two tasks.
    for proto in DIALECTS:
        with FakeOrch(poll_timeout=2, protocol=proto) as o:
            p = start(t, o, ini(t, extra_worker="advertise_busy = true", hb=60, debounce=1))
            gates = [t.path("gate-%s-%d" % (proto, i)) for i in range(2)]
            j1, j2 = [o.prequeue(WID, "t_gate", {"path": g})[0] for g in gates]
            busy1 = wait_for(lambda: [h for h in heartbeats(o) if j1 in h.get("current_tasks", [])],
                             what="the heartbeat while the first task runs (%s)" % proto)[-1]
            check(offered(busy1) == (False, []), proto, busy1)
            check(busy1["status"] == ("busy" if proto == "1.0b3" else "full"), proto, busy1)
            # Withdrawn: a job created now finds no candidate.
            lost = o.wait_job(o.create_job("echo", {}))
            check(lost["status"] == "quarantined" and "No suitable workers" in lost["error_message"], lost)
            n = len(heartbeats(o))
            open(gates[0], "w").close()
            wait_for(lambda: [h for h in heartbeats(o)[n:] if j2 in h.get("current_tasks", [])],
                     timeout=20, what="the heartbeat while the second task runs (%s)" % proto)
            between = [h for h in heartbeats(o)[n:] if j2 not in h.get("current_tasks", [])]
            check(any(offered(h)[0] and "echo" in offered(h)[1] for h in between), proto,
                  "no heartbeat offered the free slot between the two tasks", heartbeats(o)[n:])
            open(gates[1], "w").close()
            check(all(j["status"] == "finished" for j in o.wait_jobs([j1, j2])), proto)
            check(stop(p) == 0, proto)


if __name__ == "__main__":
    main()
