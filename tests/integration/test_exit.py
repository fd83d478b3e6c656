"""A plugin that calls exit() does not end the daemon quietly: the real
daemon with the t_exit test plugin (tests/plugins/t_exit.c), against the
fake orchestrator where it serves. The process ends with status 70 (which
systemd's Restart=on-failure restarts, unlike 0), a crit line names the
plugin and the task, and the next start with the same state directory
reports the task from the crash journal instead of losing it."""
import re
import signal

from avt import *  # noqa: F401,F403
from avt import check, main, run_daemon, test, tmo
from orch import FakeOrch

WID = "w1"
STATUS = 70


def ini(t):
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
""")


def crit_lines(log):
    return [ln for ln in log.splitlines() if " crit " in ln]


@test
def exit_in_a_handler_stops_with_70_and_the_task_is_reported_after_restart(t):
    # max_retries=0: the crash report ends the job (else the orchestrator
    # would hand the same task to the restarted worker, which would exit again).
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        conf = ini(t)
        plugins = t.plugin_dir("echo", "t_exit")
        p = t.spawn(["-c", conf, "-P", plugins], env=o.worker_env(WID))
        o.wait_worker(WID, timeout=15)
        jid = o.prequeue(WID, "t_exit", {"status": 0})[0]
        p.wait(timeout=tmo(20))
        log = p.log()
        check(p.returncode == STATUS, "exit status", p.returncode, log[-2000:])
        crit = crit_lines(log)
        check(len(crit) == 1, crit, log[-2000:])
        check("plugin t_exit called exit(0) in its handler" in crit[0], crit)
        for field in ("plugin=t_exit", "type=t_exit", "task_id=" + jid, "job_id=" + jid):
            check(re.search(r" %s( |$)" % re.escape(field), crit[0]), field, crit)
        check(not o.log(kind="result"), "a result was sent for the task")
        # The journal still holds the task: the next start reports it.
        p2 = t.spawn(["-c", conf, "-P", plugins], env=o.worker_env(WID))
        job = o.wait_job(jid, timeout=30)
        res = job.get("results") or []
        check(res and res[0]["status"] == "failure"
              and res[0]["error"]["code"] == "TRANSIENT_ERROR"
              and res[0]["error"]["message"] == "worker crashed while running this task", job)
        check("ended abnormally with 1 task(s)" in p2.log(), p2.log()[-2000:])
        # And it works on as before.
        jobs = o.wait_jobs(o.prequeue(WID, "echo", {"x": 1}, count=3), timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs)
        p2.send_signal(signal.SIGTERM)
        p2.wait(timeout=tmo(20))
        check(p2.returncode == 0, "the daemon's own exit is untouched", p2.returncode)


@test
def a_nonzero_exit_status_is_replaced_too(t):
    r = run_daemon(["-P", t.plugin_dir("t_exit"), "run-once", "t_exit", '{"status": 3}'])
    check(r.returncode == STATUS, r)
    check("plugin t_exit called exit(3) in its handler" in r.stderr, r.stderr)


@test
def quick_exit_and_exit_from_a_plugin_thread_are_caught(t):
    plugins = t.plugin_dir("t_exit")
    r = run_daemon(["-P", plugins, "run-once", "t_quick_exit", "{}"])
    check(r.returncode == STATUS, r)
    check("plugin t_exit called quick_exit() in its handler" in r.stderr, r.stderr)
    check("type=t_quick_exit" in r.stderr, r.stderr)
    # A thread of the plugin's own: the daemon cannot tell whose it is.
    r = run_daemon(["-P", plugins, "run-once", "t_exit_thread", "{}"])
    check(r.returncode == STATUS, r)
    check(re.search(r" crit exit\(0\) was called by code that is not the daemon's \(a thread a "
                    r"plugin started", r.stderr), r.stderr)


@test
def exit_in_init_at_load_time_is_caught(t):
    plugins = t.plugin_dir("echo", "t_exit")
    r = run_daemon(["-P", plugins, "--check-config"], env={"T_EXIT_IN_INIT": "1"})
    check(r.returncode == STATUS, "--check-config must not pass", r)
    check("plugin t_exit called exit(0) in its init()" in r.stderr, r.stderr)
    check("# configuration OK" not in r.stdout, r.stdout)
    with FakeOrch(poll_timeout=2) as o:
        env = o.worker_env(WID)
        env["T_EXIT_IN_INIT"] = "1"
        p = t.spawn(["-c", ini(t), "-P", plugins], env=env)
        p.wait(timeout=tmo(20))
        check(p.returncode == STATUS, p.returncode, p.log()[-2000:])
        crit = crit_lines(p.log())
        check(len(crit) == 1 and "plugin t_exit called exit(0) in its init()" in crit[0]
              and "plugin=t_exit" in crit[0], crit, p.log()[-2000:])
        check(not o.log(kind="register"), "registered although a plugin exited at load")


@test
def the_daemons_own_exits_keep_their_status(t):
    # A configuration error (78) and a clean run-once (0) are not plugin exits.
    r = run_daemon(["-c", t.ini("[worker]\nmax_concurrent_tasks = 0\n"), "--check-config"])
    check(r.returncode == 78 and " crit " not in r.stderr, r)
    r = run_daemon(["-P", t.plugin_dir("echo"), "run-once", "echo", "{}"])
    check(r.returncode == 0 and " crit " not in r.stderr, r)


main()
