"""Running as a service: the drain on SIGTERM, deadlines and stuck
handlers, the sd_notify messages (with a datagram socket of the test's own
as NOTIFY_SOCKET) and reload on SIGHUP. The real daemon binary against the
protocol-faithful test orchestrator; what happened is read from the
orchestrator's job records and request log."""
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import unitfilter

from avt import *  # noqa: F401,F403
from avt import ROOT, TIMEOUT_MULT, VALGRIND
from avt import Skip, check, daemon_argv, daemon_env, main, test, thread_policies, tmo, wait_for
from orch import FakeOrch

WID = "w1"
SHUTDOWN_MSG = "worker shutting down: task did not finish in time"
# A t_stubborn that does not return by itself within any test, however slow
# the machine: only the daemon's giving up on it ends its task.
FOREVER_MS = 3600 * 1000


def ini(t, slots=4, worker="", limits="", hb=0.3, name="worker.ini"):
    return t.ini("""
[worker]
max_concurrent_tasks = %d
log_level = debug
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = %s
heartbeat_debounce = 0.05
result_retry_initial_delay = 0.2
retry_max_delay = 2
[limits]
%s
""" % (slots, worker, hb, limits), name=name)


def start(t, o, conf, plugins=("echo", "steps", "t_behave"), env=None, pdir=None, prefix=()):
    e = o.worker_env(WID)
    e.update(env or {})
    p = t.spawn(["-c", conf, "-P", pdir or t.plugin_dir(*plugins)], env=e, prefix=prefix)
    o.wait_worker(WID, timeout=15)
    return p


def results(o, jid):
    return o.job(jid).get("results") or []


def outstanding(o):
    return o.worker_stats(WID).get("outstanding_task_ids", [])


def wait_running(o, ids, timeout=10):
    wait_for(lambda: set(ids) <= set(outstanding(o)), timeout=timeout, what="pickup of %s" % ids)


def wait_exit(p, timeout):
    p.wait(timeout=tmo(timeout))
    return p.returncode, p.log()


def one_result(o, jid, timeout=10):
    j = o.wait_job(jid, pred=lambda j: len(j.get("results") or []) >= 1, timeout=timeout)
    return j["results"][0]


# ---- drain ------------------------------------------------------------------


@test
def drain_delivers_every_result_and_gives_up_on_a_stubborn_handler(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        # The quick tasks end when the test opens their gate, once the drain
        # has begun; the timeout leaves room for that on a slow machine.
        p = start(t, o, ini(t, worker="shutdown_timeout = %g\ncancel_grace = 1\n" % tmo(1.5)))
        gate = t.path("gate")
        quick = o.prequeue(WID, "t_gate", {"path": gate}, count=2)
        coop = o.prequeue(WID, "t_block", {})[0]
        stub = o.prequeue(WID, "t_stubborn", {"ms": FOREVER_MS})[0]
        ids = quick + [coop, stub]
        wait_running(o, ids)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: [r for r in o.log(kind="heartbeat", worker_id=WID)
                          if r["body"] and r["body"]["status"] == "offline"], what="offline")
        open(gate, "w").close()
        rc, log = wait_exit(p, 30)
        took = time.monotonic() - t0
        check(rc == 0, "exit status %s" % rc, log[-3000:])
        check(took < tmo(12), "drain took %.1f s" % took)
        for jid in ids:
            check(len(results(o, jid)) == 1, jid, results(o, jid))
        for jid in quick:
            check(results(o, jid)[0]["status"] == "success"
                  and results(o, jid)[0]["data"] == {"gate": "opened"}, results(o, jid))
        r = results(o, stub)[0]
        check(r["status"] == "failure" and r["error"]["code"] == "TRANSIENT_ERROR"
              and r["error"]["message"] == SHUTDOWN_MSG, r)
        check(o.worker_stats(WID).get("outstanding_task_ids", []) == [],
              "left for the orchestrator's timeout", o.worker_stats(WID))
        # Offline at once, heartbeats kept going while the tasks finished.
        hbs = [r for r in o.log(kind="heartbeat", worker_id=WID) if r["body"]]
        off = [r for r in hbs if r["body"]["status"] == "offline"]
        check(off and off[0]["body"]["supported_skills"] == [], hbs[-3:])
        check(len(off) >= 3, "heartbeats stopped during the drain: %d offline" % len(off))
        check("did not finish in time" in log, log[-2000:])


@test
def second_signal_shortens_the_drain(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, ini(t, worker="shutdown_timeout = 60\ncancel_grace = 60\n"))
        coop = o.prequeue(WID, "t_block", {})[0]
        stub = o.prequeue(WID, "t_stubborn", {"ms": FOREVER_MS})[0]
        wait_running(o, [coop, stub])
        p.send_signal(signal.SIGTERM)
        wait_for(lambda: [r for r in o.log(kind="heartbeat", worker_id=WID)
                          if r["body"] and r["body"]["status"] == "offline"], what="offline")
        check(p.poll() is None, "exited before the tasks finished")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)  # cancel now
        r = one_result(o, coop)
        check(r["status"] == "success" and r["data"] == {"saw_cancel": True}, r)
        check(p.poll() is None, "gave up on the stubborn handler without a grace")
        p.send_signal(signal.SIGINT)  # give up now
        rc, log = wait_exit(p, 20)
        check(time.monotonic() - t0 < tmo(10), "signals did not shorten the drain")
        check(rc == 0, rc, log[-2000:])
        r = results(o, stub)
        check(len(r) == 1 and r[0]["error"]["message"] == SHUTDOWN_MSG, r)
        check("shortening the drain" in log, log[-2000:])


# ---- deadlines ----------------------------------------------------------------


@test
def deadline_cancels_a_cooperative_handler_with_timeout_error(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, ini(t, limits="sleep.timeout = 1\n"))
        jid = o.prequeue(WID, "sleep", {"seconds": 30})[0]
        other = o.prequeue(WID, "t_progress", {"n": 2, "ms": 1500})[0]
        t0 = time.monotonic()
        r = one_result(o, jid, timeout=15)
        took = time.monotonic() - t0
        check(r["status"] == "failure" and r["error"]["code"] == "TIMEOUT_ERROR", r)
        check(0.9 < took < tmo(6), "deadline hit after %.1f s" % took)
        check(one_result(o, other)["status"] == "success", "a type without a timeout was cut")
        check(len(results(o, jid)) == 1)
        p.send_signal(signal.SIGTERM)
        rc, log = wait_exit(p, 20)
        check(rc == 0 and "deadline" in log, rc, log[-2000:])


def stuck_ini(t, restart, slots=2, extra=""):
    return ini(t, slots=slots, worker="cancel_grace = 0.5\nshutdown_timeout = 10\n"
               "restart_on_stuck = %s\n%s" % ("true" if restart else "false", extra),
               limits="t_stubborn.timeout = 0.5\n")


@test
def stuck_handler_is_reported_and_the_daemon_restarts_itself(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, stuck_ini(t, True, slots=3))
        # The other task runs until the test opens its gate.
        gate = t.path("gate")
        other = o.prequeue(WID, "t_gate", {"path": gate})[0]
        wait_running(o, [other])
        stub = o.prequeue(WID, "t_stubborn", {"ms": FOREVER_MS})[0]
        r = one_result(o, stub, timeout=15)
        check(r["status"] == "failure" and r["error"]["code"] == "TIMEOUT_ERROR", r)
        wait_for(lambda: "finishing the other tasks" in p.log(), what="the drain for a restart")
        check(p.poll() is None, "exited before the other task finished")
        open(gate, "w").close()
        rc, log = wait_exit(p, 30)
        check(rc == 75, "exit status %s (want 75, EX_TEMPFAIL)" % rc, log[-3000:])
        r2 = results(o, other)
        check(len(r2) == 1 and r2[0]["status"] == "success" and r2[0]["data"] == {"gate": "opened"},
              "the other task was not finished", r2)
        check(len(results(o, stub)) == 1, results(o, stub), log[-6000:])
        check("handler is stuck" in log and "type=t_stubborn" in log.replace('"type":"', "type="),
              log[-3000:])
        check(o.worker_stats(WID).get("outstanding_task_ids", []) == [], o.worker_stats(WID))


@test
def a_task_given_up_on_is_neither_reported_again_nor_counted_as_a_crash(t):
    # Two rolling restarts for a stuck handler, with crash_limit = 1: were
    # the abandoned tasks left open in the crash journal, the next start
    # would report each again as "worker crashed" and fail the type for good.
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        # One slot: no long-poll is left in flight when the daemon exits 75,
        # which would take the next start's task with it.
        conf = stuck_ini(t, True, slots=1, extra="crash_limit = 1\n")
        stubs = []
        for _ in range(2):
            p = start(t, o, conf)
            check("ended abnormally" not in p.log(), p.log()[-3000:])
            stubs += o.prequeue(WID, "t_stubborn", {"ms": FOREVER_MS})
            r = one_result(o, stubs[-1], timeout=15)
            check(r["error"]["code"] == "TIMEOUT_ERROR", r)
            rc, log = wait_exit(p, 30)
            check(rc == 75, "exit status %s (want 75)" % rc, log[-3000:])
        p = start(t, o, conf)
        quick = o.prequeue(WID, "t_stubborn", {"ms": 10})[0]
        check(one_result(o, quick)["status"] == "success", results(o, quick))
        log = p.log()
        check("ended abnormally" not in log and "crash-loop" not in log, log[-3000:])
        for jid in stubs:
            check(len(results(o, jid)) == 1, "reported again", results(o, jid))
        crashes = t.path("state", "journal", "crashes")
        check(not os.path.exists(crashes) or "t_stubborn" not in open(crashes).read(),
              open(crashes).read() if os.path.exists(crashes) else "")
        p.send_signal(signal.SIGTERM)
        check(wait_exit(p, 20)[0] == 0)


@test
def stuck_thread_is_not_polled_for_and_other_types_keep_running(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, stuck_ini(t, False, slots=2))
        stub = o.prequeue(WID, "t_stubborn", {"ms": FOREVER_MS})[0]
        r = one_result(o, stub, timeout=15)
        check(r["error"]["code"] == "TIMEOUT_ERROR", r)
        # Other types are still served, on the one thread left.
        ids = o.prequeue(WID, "echo", {"x": 1}, count=5)
        jobs = o.wait_jobs(ids, timeout=20)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        # One thread is held by the stuck handler: one task at a time.
        a = o.prequeue(WID, "t_block", {})[0]
        wait_running(o, [a])
        time.sleep(0.3)
        npolls = len(o.log(kind="poll", worker_id=WID))
        b = o.prequeue(WID, "t_block", {})[0]
        time.sleep(tmo(1.5))
        check(b not in outstanding(o), "polled a task with no free thread")
        check(len(o.log(kind="poll", worker_id=WID)) == npolls, "polled with no free thread")
        o.cancel(a)
        wait_running(o, [b])
        o.cancel(b)
        one_result(o, b)
        check(p.poll() is None, "exited although restart_on_stuck = false")
        p.send_signal(signal.SIGTERM)
        rc, log = wait_exit(p, 20)
        check(rc == 0, rc, log[-2000:])
        check("handler is stuck" in log, log[-2000:])


# ---- systemd notify --------------------------------------------------------------


class NotifySocket:
    def __init__(self, t):
        self.path = t.path("notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.msgs = []  # (monotonic time, {key: value})
        t.on_cleanup(self.sock.close)

    def pump(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            kv = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.msgs.append((time.monotonic(), kv))

    def having(self, key, value=None):
        self.pump()
        return [(at, m) for at, m in self.msgs if key in m and (value is None or m[key] == value)]

    def wait(self, key, value=None, after=0, timeout=10):
        return wait_for(lambda: [x for x in self.having(key, value) if x[0] > after],
                        timeout=timeout, what="%s=%s" % (key, value))


@test
def sd_notify_ready_status_watchdog_reload_and_stopping(t):
    with FakeOrch(poll_timeout=2) as o:
        ns = NotifySocket(t)
        o.inject("register", status=503, body={"error": "not yet"}, count=1)
        p = start(t, o, ini(t), env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"})
        ready = ns.wait("READY", "1")
        regs = [r for r in o.log(kind="register") if r["status"] == 200]
        check(regs, "READY=1 before a successful registration")
        check(len(ns.having("READY")) == 1, ns.msgs)
        st = ns.wait("STATUS")
        check("slots busy" in st[-1][1]["STATUS"], st)
        # STATUS follows the busy slots per type.
        jid = o.prequeue(WID, "t_block", {})[0]
        busy = ns.wait("STATUS", timeout=10)
        wait_for(lambda: [m for _, m in ns.having("STATUS") if "1/4 slots busy" in m["STATUS"]
                          and "t_block 1" in m["STATUS"]], what="busy STATUS")
        o.cancel(jid)
        wait_for(lambda: [m for _, m in ns.having("STATUS")
                          if m["STATUS"].startswith("serving: 0/4")], what="idle STATUS after busy")
        n = len(ns.having("WATCHDOG"))
        wait_for(lambda: len(ns.having("WATCHDOG")) >= n + 2, what="watchdog pings going on")
        # Reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        before = time.monotonic()
        p.send_signal(signal.SIGHUP)
        rel = ns.wait("RELOADING", "1", after=before)
        usec = int(rel[0][1]["MONOTONIC_USEC"])
        check(abs(usec / 1e6 - before) < tmo(5), "MONOTONIC_USEC not CLOCK_MONOTONIC", usec, before)
        ns.wait("READY", "1", after=rel[0][0])
        # Stop: STOPPING=1 and EXTEND_TIMEOUT_USEC.
        p.send_signal(signal.SIGTERM)
        rc, log = wait_exit(p, 20)
        check(rc == 0, rc, log[-2000:])
        check(ns.having("STOPPING", "1"), ns.msgs[-5:])
        ext = ns.having("EXTEND_TIMEOUT_USEC")
        check(ext and int(ext[0][1]["EXTEND_TIMEOUT_USEC"]) > 30e6, ext)


# ---- reload -------------------------------------------------------------------


def release_retired_task(o, p, jid, gate):
    """A task of a plugin the reload removed keeps that plugin loaded until
    the test opens its gate; then it succeeds, the plugin is unloaded, and
    the daemon still stops cleanly."""
    check("plugins of the previous configuration unloaded" not in p.log(),
          "unloaded while its task still runs")
    open(gate, "w").close()
    r = one_result(o, jid, timeout=20)
    check(r["status"] == "success" and r["data"] == {"gate": "opened"}, r)
    wait_for(lambda: "plugins of the previous configuration unloaded" in p.log(),
             what="old plugins unloaded after their task ended")
    p.send_signal(signal.SIGTERM)
    rc, log = wait_exit(p, 20)
    check(rc == 0, rc, log[-2000:])


@test
def reload_adds_and_removes_plugins_without_dropping_tasks(t):
    with FakeOrch(poll_timeout=2) as o:
        pdir = t.plugin_dir("echo", "t_behave")
        conf = ini(t, limits="t_conc = 1\n")
        p = start(t, o, conf, pdir=pdir)
        # The task runs until the test opens its gate, whatever the speed.
        gate = os.path.join(t.dir, "gate")
        wait_for(lambda: "websocket connected" in p.log(), what="websocket")
        blk = o.prequeue(WID, "t_gate", {"path": gate})[0]
        # Handed out is not enough: its handler must run here (its progress
        # arrives) before the reload; reload_while_a_poll_is_in_flight is the
        # other order.
        wait_for(lambda: o.job(blk).get("progress_message") == "gated", what="t_gate running")
        nreg = len(o.log(kind="register"))
        # t_behave goes, steps comes; its task keeps running meanwhile.
        os.unlink(os.path.join(pdir, "t_behave.so"))
        t.plugin_dir("steps")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: len(o.log(kind="register")) > nreg, what="re-registration")
        reg = [r for r in o.log(kind="register")][-1]["body"]["supported_skills"]
        check("sleep" in reg and "t_gate" not in reg and "echo" in reg, reg)
        jid = o.prequeue(WID, "sleep", {"seconds": 0.1})[0]
        check(one_result(o, jid)["status"] == "success", "new plugin's type not served")
        check(p.poll() is None)
        check(blk in outstanding(o), "the removed plugin's task was dropped",
              o.log(kind="result"), p.log()[-4000:])
        release_retired_task(o, p, blk, gate)


@test
def reload_while_a_poll_is_in_flight_keeps_its_task(t):
    """A task handed out by a poll sent before the reload, whose plugin the
    reload removed, runs with the old plugin instead of failing as
    "Unsupported task" (found by CI: the answer arrived just after SIGHUP)."""
    with FakeOrch(poll_timeout=2) as o:
        pdir = t.plugin_dir("echo", "t_behave")
        p = start(t, o, ini(t, slots=1), pdir=pdir)
        # One slot, taken by A: no poll in flight until A ends.
        gate_a, gate_b = t.path("gate-a"), t.path("gate-b")
        a = o.prequeue(WID, "t_gate", {"path": gate_a})[0]
        wait_running(o, [a])
        # The next poll is held at the orchestrator; B is what it will carry.
        # (Not longer than the daemon waits for a poll: poll_timeout + 15 s.)
        o.inject("poll", "slow", delay=min(tmo(5), 12), count=1)
        b = o.prequeue(WID, "t_gate", {"path": gate_b})[0]
        open(gate_a, "w").close()
        # The fault is taken when the poll arrives, before it is held.
        wait_for(lambda: not o.faults()["poll"], what="the held poll")
        # While it is held, t_behave goes away.
        os.unlink(os.path.join(pdir, "t_behave.so"))
        t.plugin_dir("steps")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded:" in p.log(), what="reload")
        # The held poll answers with B: it runs with the retired plugin.
        wait_for(lambda: "task polled before the reload: run with plugin t_behave" in p.log(),
                 timeout=20, what="B accepted with the old plugin")
        wait_for(lambda: o.job(b).get("progress_message") == "gated", what="B running")
        check(not results(o, b), "B answered before its gate opened", results(o, b))
        release_retired_task(o, p, b, gate_b)


@test
def bad_reload_keeps_the_running_configuration(t):
    with FakeOrch(poll_timeout=2) as o:
        pdir = t.plugin_dir("echo", "t_behave")
        conf = ini(t)
        p = start(t, o, conf, pdir=pdir)
        blk = o.prequeue(WID, "t_block", {})[0]
        wait_running(o, [blk])
        # A broken worker.ini.
        good = open(conf).read()
        with open(conf, "a") as f:
            f.write("\n[worker]\nmax_concurrent_tasks = many\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: p.log().count("reload rejected") >= 1, what="bad config rejected")
        check("max_concurrent_tasks" in p.log(), p.log()[-1500:])
        # A plugin the loader refuses.
        with open(conf, "w") as f:
            f.write(good)
        t.plugin_dir("bad_abi_major")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: p.log().count("reload rejected") >= 2, what="bad plugin rejected")
        check("bad_abi_major" in p.log(), p.log()[-1500:])
        os.unlink(os.path.join(pdir, "bad_abi_major.so"))
        # Still serving with the old plugins, the task still running.
        ids = o.prequeue(WID, "echo", {"still": "here"}, count=3)
        jobs = o.wait_jobs(ids, timeout=20)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        check(blk in outstanding(o), "running task dropped by a rejected reload")
        # A good reload: a new limit, a new log level, the task survives.
        with open(conf, "w") as f:
            f.write(good.replace("log_level = debug", "log_level = info")
                    .replace("[limits]", "[limits]\nt_conc = 1"))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded:" in p.log(), what="good reload")
        # Three free slots and tasks long enough to overlap without the limit.
        ids = o.prequeue(WID, "t_conc", {"ms": int(tmo(0.4) * 1000)}, count=3)
        jobs = o.wait_jobs(ids, timeout=20)
        check(max(j["state_history"]["max"] for j in jobs) == 1, "new limit not applied", jobs)
        o.cancel(blk)
        check(one_result(o, blk)["status"] == "cancelled")
        check(p.poll() is None, "daemon died")
        p.send_signal(signal.SIGTERM)
        rc, log = wait_exit(p, 20)
        check(rc == 0, rc, log[-2000:])
        check("task accepted" not in log.split("reloaded:")[-1], "log level not applied")


# ---- the unit's system call filter ------------------------------------------------
#
# systemd/avtworkerd.service filters system calls. These tests run the daemon
# under that filter as the unit's text describes it (unitfilter.py: no
# systemd needed), with a plugin that calls what OpenMP, BLAS and NUMA code
# calls: sched_setaffinity, setpriority, mbind (all in @resources).

UNIT = os.path.join(ROOT, "systemd", "avtworkerd.service")
SCHED_CALLS = ("sched_setaffinity", "setpriority", "mbind")


def unit_filter_prefix(t, unit_text=None):
    """The command prefix that applies the unit's filter (a variant of the
    unit when unit_text is given); skips where no filter can be applied."""
    if VALGRIND:
        raise Skip("valgrind does not run under a seccomp filter")
    path = UNIT if unit_text is None else t.write("avtworkerd.service", unit_text)
    try:
        prefix = unitfilter.argv_prefix(path)
    except unitfilter.Unavailable as e:
        raise Skip(str(e))
    r = subprocess.run(prefix + ["/bin/true"], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip("cannot apply a seccomp filter here: " + r.stderr.strip()[-300:])
    return prefix


def filtered_env():
    """The environment of a daemon under the filter: LeakSanitizer stops the
    world with ptrace at exit, which @system-service does not allow (leaks
    are checked by every other test)."""
    asan = os.environ.get("ASAN_OPTIONS")
    return {"ASAN_OPTIONS": asan.replace("detect_leaks=1", "detect_leaks=0")} if asan else {}


@test
def a_plugin_gets_the_exit_status_of_its_child_processes(t):
    # The daemon must not reap a plugin's children (libev's default loop
    # does, on SIGCHLD): pclose() and system() see the child's status.
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, ini(t, slots=4))
        ids = o.prequeue(WID, "t_child", {"code": 3}, count=8)
        for jid in ids:
            r = one_result(o, jid, timeout=20)
            check(r["status"] == "success" and r["data"] == {"popen": 3, "popen_errno": 0, "system": 3},
                  r)
        p.send_signal(signal.SIGTERM)
        check(wait_exit(p, 20)[0] == 0)


def sched_calls(o, p, jid):
    """What t_sched's calls returned (errno values); fails when the daemon died."""
    wait_for(lambda: results(o, jid) or p.poll() is not None, timeout=15, what="t_sched's result")
    check(p.poll() is None, "the daemon died (exit status %s)" % p.returncode, p.log()[-1500:])
    r = results(o, jid)[0]
    check(r["status"] == "success", r)
    return {k: r["data"][k] for k in SCHED_CALLS}


@test
def plugin_calls_the_unit_filters_fail_with_eperm_and_the_daemon_lives(t):
    prefix = unit_filter_prefix(t)
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, ini(t), prefix=prefix, env=filtered_env())
        got = sched_calls(o, p, o.prequeue(WID, "t_sched", {})[0])
        check(got == {k: errno.EPERM for k in SCHED_CALLS}, "expected EPERM from the filter", got,
              p.log()[-1500:])
        # Still serving: another task, then a clean stop.
        jid = o.create_job("echo", {"msg": "after the filtered calls"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid), p.log()[-1500:])
        check(p.poll() is None, "the daemon died", p.log()[-1500:])
        p.send_signal(signal.SIGTERM)
        rc, log = wait_exit(p, 20)
        check(rc == 0, rc, log[-2000:])


@test
def under_the_unit_every_thread_is_batch_scheduled_and_without_its_line_the_log_says_why_not(t):
    """The unit sets CPUSchedulingPolicy=batch because its filter denies the
    daemon sched_setscheduler(): with the line, every thread is SCHED_BATCH
    and nothing is logged; without it, the daemon keeps serving with the
    policy it got and its warning names the unit setting to use."""
    text = open(UNIT).read()
    check(re.search(r"^CPUSchedulingPolicy=batch$", text, re.M), "the unit lost CPUSchedulingPolicy=batch")
    for unit_text, batch in ((None, True), (re.sub(r"^CPUSchedulingPolicy=.*$", "", text, flags=re.M), False)):
        prefix = unit_filter_prefix(t, unit_text)
        with FakeOrch(poll_timeout=2, max_retries=0) as o:
            p = start(t, o, ini(t), prefix=prefix, env=filtered_env())
            jid = o.create_job("echo", {"msg": "scheduled"})
            check(o.wait_job(jid)["status"] == "finished", o.job(jid), p.log()[-1500:])
            pol = set(thread_policies(p.pid).values())
            warned = "cannot set the CPU scheduling policy to batch" in p.log()
            if batch:
                check(pol == {os.SCHED_BATCH} and not warned, pol, p.log()[-1500:])
            else:
                check(pol == {os.SCHED_OTHER} and warned and "CPUSchedulingPolicy=" in p.log(),
                      pol, p.log()[-1500:])
            p.send_signal(signal.SIGTERM)
            rc, log = wait_exit(p, 20)
            check(rc == 0, rc, log[-2000:])


@test
def without_systemcallerrornumber_the_filter_kills_the_daemon(t):
    """What the unit did before SystemCallErrorNumber=EPERM (and a proof
    that the filter the tests apply is live): SIGSYS for the whole daemon."""
    text = open(UNIT).read()
    check(re.search(r"^SystemCallErrorNumber=EPERM$", text, re.M), "the unit lost its EPERM")
    prefix = unit_filter_prefix(t, re.sub(r"^SystemCallErrorNumber=.*$", "", text, flags=re.M))
    r = subprocess.run(prefix + daemon_argv(["-P", t.plugin_dir("t_behave"), "run-once", "t_sched"]),
                       env=daemon_env(dict(filtered_env(), STATE_DIRECTORY=t.path("state"))),
                       capture_output=True,
                       text=True, timeout=tmo(30))
    check(r.returncode == -signal.SIGSYS, "exit %d, expected SIGSYS" % r.returncode, r.stdout,
          r.stderr[-1500:])


@test
def plugin_scheduling_calls_work_without_a_filter(t):
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        p = start(t, o, ini(t))
        got = sched_calls(o, p, o.prequeue(WID, "t_sched", {})[0])
        # mbind is ENOSYS on a kernel built without NUMA.
        check(got["sched_setaffinity"] == 0 and got["setpriority"] == 0
              and got["mbind"] in (0, errno.ENOSYS), got)
        check(p.poll() is None, "the daemon died", p.log()[-1500:])


main()
