#!/usr/bin/python3
"""run-once: the real binary with real plugins (echo, steps and the test
plugin t_behave): the exact result body on stdout, params from the command
line, a file and stdin, usage errors (exit 64), plugin refusal (exit 78),
every failure mapping, progress on stderr (lines, and the live bar on a
TTY), custom events on stderr (avt_emit_event() succeeds: there is no
orchestrator to refuse them), and SIGINT cancelling the task."""
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from avt import *  # noqa: E402,F401,F403

ENV = {"WORKER_ID": "w-test", "LOG_LEVEL": "warning"}
KEYS = {"job_id", "task_id", "worker_id", "status", "data", "error", "data_metadata"}


def plugins(t):
    return t.plugin_dir("echo", "steps", "t_behave")


def run_once(t, *args, input=None, env=None):
    e = dict(ENV)
    e.update(env or {})
    return run_daemon(["-P", plugins(t), "run-once"] + list(args), env=e, input=input)


def result_of(r):
    check(r.stdout.strip() != "", "no result on stdout", r.stderr)
    res = json.loads(r.stdout)
    check(set(res) == KEYS, "keys: %s" % sorted(res))
    check(res["worker_id"] == "w-test", res)
    check(res["data_metadata"] is None, res)
    check(re.fullmatch(r"run-once-\d+", res["job_id"]), res)
    check(res["task_id"] == res["job_id"], res)
    return res


def failure(t, type_, params=None, code=None, message=None):
    args = [type_] + ([json.dumps(params)] if params is not None else [])
    r = run_once(t, *args)
    res = result_of(r)
    check(r.returncode == 1, "exit %d" % r.returncode, r.stderr)
    check(res["status"] == "failure" and res["data"] is None, res)
    check(set(res["error"]) == {"code", "message"}, res)
    if code is not None:
        check(res["error"]["code"] == code, res)
    if message is not None:
        check(res["error"]["message"] == message, res)
    return res


@test
def echo_prints_the_exact_result_and_exits_0(t):
    params = {"msg": "hi", "n": [1, 2.5, None], "nested": {"k": "ü"}}
    r = run_once(t, "echo", json.dumps(params))
    check(r.returncode == 0, "exit %d" % r.returncode, r.stderr)
    res = result_of(r)
    check(res["status"] == "success" and res["error"] is None, res)
    check(res["data"] == params, res)
    # The text itself: indented by 2, keys sorted.
    check(r.stdout == json.dumps(res, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
          or r.stdout == json.dumps(res, indent=2, sort_keys=True) + "\n", repr(r.stdout))


@test
def echo_without_params_gets_an_empty_object(t):
    r = run_once(t, "echo")
    check(r.returncode == 0, r.stderr)
    check(result_of(r)["data"] == {}, r.stdout)


@test
def params_from_a_file_and_from_stdin(t):
    params = {"from": "file", "list": list(range(50))}
    path = t.write("params.json", json.dumps(params))
    r = run_once(t, "echo", "@" + path)
    check(r.returncode == 0, r.stderr)
    check(result_of(r)["data"] == params, r.stdout)
    r = run_once(t, "echo", "@-", input='{"from": "stdin"}\n')
    check(r.returncode == 0, r.stderr)
    check(result_of(r)["data"] == {"from": "stdin"}, r.stdout)


@test
def bad_params_are_a_usage_error(t):
    for arg, needle in (("[1, 2]", "not a JSON object"), ("42", "not a JSON object"),
                        ("{bad json", "not a JSON object"), ("", "not a JSON object"),
                        ("@" + t.path("missing.json"), "cannot read")):
        r = run_once(t, "echo", arg)
        check(r.returncode == 64, "%r: exit %d" % (arg, r.returncode), r.stderr)
        check("run-once: params: " in r.stderr and needle in r.stderr, arg, r.stderr)
        check(r.stdout == "", arg, r.stdout)
    r = run_once(t, "echo", "@-", input="[]")
    check(r.returncode == 64 and "not a JSON object" in r.stderr, r.stderr)


@test
def refused_plugins_exit_78(t):
    d = t.plugin_dir("echo", "bad_abi_major", name="badplugins")
    r = run_daemon(["-P", d, "run-once", "echo"], env=ENV)
    check(r.returncode == 78, "exit %d" % r.returncode, r.stderr)
    check("bad_abi_major" in r.stderr, r.stderr)
    check(r.stdout == "", r.stdout)


@test
def unknown_type_is_the_daemons_permanent_error(t):
    failure(t, "no_such_type", code="PERMANENT_ERROR", message="Unsupported task: no_such_type")


@test
def handler_without_outcome(t):
    failure(t, "t_no_outcome", code="TRANSIENT_ERROR",
            message="handler returned without an outcome")


@test
def handler_error_without_outcome(t):
    failure(t, "t_eio", code="TRANSIENT_ERROR",
            message="handler returned error -5 without an outcome")


@test
def explicit_failure_with_every_code(t):
    codes = ["TRANSIENT_ERROR", "PERMANENT_ERROR", "INVALID_INPUT_ERROR",
             "INTEGRITY_MISMATCH_ERROR", "TIMEOUT_ERROR", "RESOURCE_EXHAUSTED_ERROR",
             "DEPENDENCY_ERROR", "SECURITY_ERROR", "INTERNAL_ERROR", "MY_OWN_CODE"]
    for code in codes:
        failure(t, "t_fail", {"code": code, "message": "because %s" % code}, code=code,
                message="because %s" % code)


@test
def data_that_is_not_an_object_is_a_transient_failure(t):
    failure(t, "t_not_object", code="TRANSIENT_ERROR",
            message="handler returned data that is not a JSON object")


@test
def first_outcome_wins(t):
    r = run_once(t, "t_two")
    check(r.returncode == 0, r.stderr)
    res = result_of(r)
    check(res["status"] == "success" and res["data"] == {"first": 1}, res)


@test
def custom_status_exits_0(t):
    r = run_once(t, "t_custom", '{"status": "needs_review"}')
    check(r.returncode == 0, r.stderr)
    res = result_of(r)
    check(res["status"] == "needs_review" and res["data"] == {"custom": True}, res)
    check(res["error"] is None, res)


@test
def progress_lines_on_stderr(t):
    r = run_once(t, "t_progress", '{"n": 4, "ms": 20}')
    check(r.returncode == 0, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.startswith("progress ")]
    # Coalescing may merge updates, but the last one always arrives and the
    # values only grow.
    check(lines and lines[-1] == "progress 100% part 4", r.stderr)
    pcts = [int(re.match(r"progress (\d+)%", l).group(1)) for l in lines]
    check(pcts == sorted(pcts), lines)
    check(all(re.fullmatch(r"progress (25|50|75|100)% part [1-4]", l) for l in lines), lines)
    check("progress" not in r.stdout, r.stdout)


@test
def custom_events_on_stderr(t):
    r = run_once(t, "t_event", '{"n": 3, "event": "tile_done"}')
    check(r.returncode == 0, r.stderr)
    res = result_of(r)
    check(res["data"]["rc"] == 0, res)  # not -ENOTSUP: run-once takes events
    lines = [l for l in r.stderr.splitlines() if l.startswith("event ")]
    check(lines == ['event tile_done {"i":%d,"tag":"from t_event"}' % i for i in range(3)], r.stderr)
    check("1.0b3" not in r.stderr, r.stderr)


@test
def progress_bar_on_a_tty(t):
    master, slave = pty.openpty()
    e = dict(ENV)
    p = subprocess.Popen(daemon_argv(["-P", plugins(t), "run-once", "t_progress",
                                      '{"n": 2, "ms": 20}']),
                         env=daemon_env(e), stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out, _ = p.communicate(timeout=tmo(30))
    buf = b""
    while True:
        rl, _, _ = select.select([master], [], [], 0.5)
        if not rl:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    os.close(master)
    text = buf.decode("utf-8", "replace")
    check(p.returncode == 0, text)
    check(re.search(r"\r\[#{30}\] 100% part 2", text), repr(text))
    check("progress 100%" not in text, repr(text))
    check(json.loads(out)["data"] == {"n": 2}, out)


class StderrReader:
    """Collects a child's stderr lines on a thread, for wait_for()."""

    def __init__(self, p):
        self.lines = []
        self.thread = threading.Thread(target=self._run, args=(p,), daemon=True)
        self.thread.start()

    def _run(self, p):
        for line in p.stderr:
            self.lines.append(line)

    def text(self):
        return "".join(self.lines)


def spawn_run_once(t, *args, env=None):
    e = dict(ENV)
    e.update(env or {})
    p = subprocess.Popen(daemon_argv(["-P", plugins(t), "run-once"] + list(args)),
                         env=daemon_env(e), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t._procs.append(p)
    return p, StderrReader(p)


@test
def sigint_cancels_a_cooperative_handler(t):
    p, err = spawn_run_once(t, "t_block")
    wait_for(lambda: "progress 0% waiting" in err.text(), what="the handler to start")
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    p.wait(timeout=tmo(10))
    err.thread.join(tmo(5))
    check(p.returncode == 1, "exit %s" % p.returncode, err.text())
    res = json.loads(out)
    check(res["status"] == "cancelled", res)
    check(res["data"] is None and res["error"] is None, res)


@test
def sigint_cancels_the_steps_sleep(t):
    p, err = spawn_run_once(t, "sleep", '{"seconds": 60}', env={"LOG_LEVEL": "debug"})
    wait_for(lambda: "sleeping" in err.text(), what="the handler to start")
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    p.wait(timeout=tmo(10))
    check(p.returncode == 1, "exit %s" % p.returncode, err.text())
    check(json.loads(out)["status"] == "cancelled", out)


@test
def second_sigint_exits_at_once(t):
    p, err = spawn_run_once(t, "t_stubborn")
    wait_for(lambda: "progress 0% stubborn" in err.text(), what="the handler to start")
    p.send_signal(signal.SIGINT)
    wait_for(lambda: "cancelling" in err.text(), what="the first interrupt")
    p.send_signal(signal.SIGINT)
    p.wait(timeout=tmo(10))
    check(p.returncode == 130, "exit %s" % p.returncode, err.text())
    check(p.stdout.read() == "", "no result expected")


@test
def steps_example_plugin(t):
    r = run_once(t, "steps", '{"steps": 3, "step_ms": 1}')
    check(r.returncode == 0, r.stderr)
    res = result_of(r)
    check(res["status"] == "success" and res["data"] == {"steps": 3}, res)
    check("progress 100% step 3/3" in r.stderr, r.stderr)
    failure(t, "fail", {"code": "PERMANENT_ERROR", "times": -1, "message": "boom"},
            code="PERMANENT_ERROR")
    failure(t, "steps", {"steps": "x"}, code="INVALID_INPUT_ERROR")


@test
def limits_and_config_from_worker_ini(t):
    ini = t.ini("[worker]\nid = from-ini\nmax_concurrent_tasks = 1\n"
                "[limits]\nt_conc = 1\n")
    r = run_daemon(["-c", ini, "-P", plugins(t), "run-once", "t_conc", '{"ms": 1}'],
                   env={"LOG_LEVEL": "warning"})
    check(r.returncode == 0, r.stderr)
    res = json.loads(r.stdout)
    check(res["worker_id"] == "from-ini", res)
    check(res["data"] == {"max": 1, "max_all": 1}, res)


main()
