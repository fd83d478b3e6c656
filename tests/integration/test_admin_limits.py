"""The admin endpoint at its limits, with the real daemon against the fake
orchestrator: out of file descriptors (RLIMIT_NOFILE lowered on the running
daemon with prlimit) accepting pauses with backoff instead of spinning the
loop, says so once and recovers; a listen address that is not loopback is
warned about; listen values that are not ADDRESS:PORT are configuration
errors (file:line, exit 78)."""
import os
import re
import resource
import signal
import socket
import time
import urllib.error
import urllib.request

from avt import *  # noqa: F401,F403
from avt import check, main, run_daemon, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"


def ini(t, listen, name="worker.ini"):
    return t.ini("""
[worker]
max_concurrent_tasks = 2
shutdown_timeout = 5
[orchestrator]
poll_timeout = 2
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
result_retry_initial_delay = 0.1
retry_max_delay = 0.5
[admin]
listen = %s
""" % listen, name=name)


def get(port, path, timeout=3):
    """(status, body); status 0 when the connection failed or timed out."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=tmo(timeout)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return 0, ""


def metric(text, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(20))
    check(p.returncode == 0, p.returncode, p.log()[-2000:])


def limit_leaving_free(pid, n):
    """The lowest RLIMIT_NOFILE under which the process has exactly n free
    descriptor numbers (the kernel hands out the lowest free number below the
    limit; descriptors above it, e.g. valgrind's own, do not count)."""
    used = {int(f) for f in os.listdir("/proc/%d/fd" % pid)}
    limit, free = 0, 0
    while free < n or limit in used:
        if limit not in used:
            free += 1
        limit += 1
    return limit


@test
def accept_out_of_descriptors_pauses_with_backoff_and_recovers(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        p = t.spawn(["-c", ini(t, "127.0.0.1:%d" % port), "-P", t.plugin_dir("echo")],
                    env=o.worker_env(WID))
        o.wait_worker(WID, timeout=15)
        wait_for(lambda: get(port, "/healthz")[0] == 200, what="admin up")
        old = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        # Room for 3 more descriptors: the 4th waiting connection cannot be
        # accepted, and stays waiting in the listen queue.
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (limit_leaving_free(p.pid, 3), old[1]))
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
        try:
            wait_for(lambda: "Too many open files" in p.log(), timeout=10, what="EMFILE seen")
            # The loop keeps waiting connections pending for a while, with
            # accept() retried after a pause of 0.1 s doubling to 1 s.
            t0 = time.monotonic()
            time.sleep(2.0)
            held = time.monotonic() - t0
            check(p.poll() is None, "daemon died", p.log()[-2000:])
        finally:
            for c in clients:
                c.close()
            resource.prlimit(p.pid, resource.RLIMIT_NOFILE, old)
        wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=15, what="admin answering again")
        log = p.log()
        emfile = [ln for ln in log.splitlines() if "admin" in ln and "Too many open files" in ln]
        check(len(emfile) == 1, "one line per episode, not one per attempt", len(emfile), emfile[:3])
        check("raise LimitNOFILE=" in emfile[0], emfile[0])
        wait_for(lambda: re.search(r"admin: accepting connections again after \d+ failed attempt",
                                   p.log()), what="the end of the episode logged")
        st, text = get(port, "/metrics")
        errors = metric(text, "avtworkerd_admin_accept_errors_total")
        # A loop spinning on accept() would count thousands; a pause doubling
        # to 1 s allows about one attempt per second once it is at its
        # maximum (the bound is generous, and slower runs only count fewer).
        check(errors is not None and 1 <= errors <= 10 + 2 * held, "accept attempts", errors, held)
        # The daemon works on.
        jobs = o.wait_jobs(o.prequeue(WID, "echo", {"x": 1}, count=3), timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        stop(p)


@test
def a_listen_address_that_is_not_loopback_is_warned_about(t):
    port = free_port()
    with FakeOrch(poll_timeout=2) as o:
        p = t.spawn(["-c", ini(t, "0.0.0.0:%d" % port), "-P", t.plugin_dir("echo")],
                    env=o.worker_env(WID))
        o.wait_worker(WID, timeout=15)
        wait_for(lambda: get(port, "/healthz")[0] == 200, what="admin on 0.0.0.0")
        warn = [ln for ln in p.log().splitlines()
                if "admin: listening on 0.0.0.0:%d, which is not a loopback address" % port in ln]
        check(len(warn) == 1 and " warning " in warn[0] and "without authentication" in warn[0]
              and "127.0.0.1" in warn[0], p.log()[-2000:])
        stop(p)
        # Loopback, as the default: no warning.
        port = free_port()
        p = t.spawn(["-c", ini(t, str(port), name="loop.ini"), "-P", t.plugin_dir("echo")],
                    env=o.worker_env(WID))
        wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=15, what="admin on loopback")
        check("not a loopback address" not in p.log(), p.log()[-2000:])
        stop(p)


@test
def listen_values_that_are_not_address_port_are_config_errors(t):
    for value, why in (("[::1:80", "unbalanced brackets"), ("::1]:80", "unbalanced brackets"),
                       ("80x", "expected off, PORT"), ("127.0.0.1:80x", "expected off, PORT"),
                       ("::1:9464", "is ambiguous: an IPv6 address goes in brackets, as in [::1]:9464"),
                       ("127.0.0.1:0", "expected off, PORT"), ("example.org:80", "not an IPv4 or IPv6")):
        conf = ini(t, value)
        r = run_daemon(["-c", conf, "-P", t.plugin_dir("echo"), "--check-config"])
        check(r.returncode == 78, value, r)
        check("%s:12: listen: " % conf in r.stderr and why in r.stderr, value, r.stderr)


main()
