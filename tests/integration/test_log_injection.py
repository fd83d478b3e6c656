"""Ids from the orchestrator cannot forge log lines or /threads lines: the
real daemon against the fake orchestrator, which hands out a task whose
task_id and job_id hold "\\n<0>forged ..." (a crafted poll answer). In each
log format every line of the daemon's log is one of its own records (under
journald it starts with the daemon's own priority), no line starts with the
forged text, and the ids appear escaped ("\\\\n<0>forged"); the admin
endpoint's /threads and the SIGUSR1 dump likewise."""
import json
import re
import signal
import urllib.request

from avt import *  # noqa: F401,F403
from avt import check, main, test, tmo, wait_for
from orch import FakeOrch

WID = "w1"
TASK_ID = "t-1\n<0>forged task line\r\n<1>and another"
JOB_ID = "j-1\n<0>forged job line\x1b[2J"
ESCAPED_TASK = "t-1\\n<0>forged task line\\r\\n<1>and another"
ESCAPED_JOB = "j-1\\n<0>forged job line\\x1b[2J"


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=tmo(5)) as r:
        return r.status, r.read().decode()


def forged(line):
    return re.match(r"^\s*(<\d>)?\s*(forged|and another)", line) is not None


def check_line_format(fmt, line):
    if fmt == "journal":
        check(re.match(r"^<[0-7]>\S", line), "not a record of the daemon's:", line)
    elif fmt == "plain":
        check(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [a-z]+ ", line),
              "not a record of the daemon's:", line)
    else:
        json.loads(line)


@test
def forged_ids_stay_inside_their_line_in_logs_and_threads(t):
    for fmt in ("journal", "plain", "json"):
        port = free_port()
        gate = t.path("gate-" + fmt)
        # 1.0b3: the crafted answer below is in its shape.
        with FakeOrch(poll_timeout=2, protocol="1.0b3") as o:
            conf = t.ini("""
[worker]
max_concurrent_tasks = 2
log_level = debug
log_format = %s
[orchestrator]
poll_timeout = 2
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
[admin]
listen = 127.0.0.1:%d
""" % (fmt, port), name="worker-%s.ini" % fmt)
            p = t.spawn(["-c", conf, "-P", t.plugin_dir("echo", "t_behave")], env=o.worker_env(WID))
            o.wait_worker(WID, timeout=15)
            o.inject("poll", status=200, body={
                "job_id": JOB_ID, "task_id": TASK_ID, "type": "t_gate", "params": {"path": gate},
                "tracing_context": {}, "params_metadata": None})
            threads = wait_for(lambda: (lambda b: b if " busy " in b else None)(get(port, "/threads")[1]),
                               timeout=20, what="the task running")
            lines = threads.splitlines()
            check(all(ln.startswith("avt-worker-") for ln in lines), "a forged /threads line", threads)
            busy = [ln for ln in lines if " busy " in ln]
            check(len(busy) == 1 and ("task_id=%s job_id=%s type=t_gate plugin=t_behave"
                                      % (ESCAPED_TASK, ESCAPED_JOB)) in busy[0], threads)
            p.send_signal(signal.SIGUSR1)
            wait_for(lambda: "thread dump" in p.log(), what="the thread dump")
            open(gate, "w").close()
            wait_for(lambda: any(isinstance(r.get("body"), dict) and r["body"].get("task_id") == TASK_ID
                                 for r in o.log(kind="result")), timeout=20,
                     what="the task's result, with its id unchanged")
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=tmo(20))
            log = p.log()
            lines = log.splitlines()
            check(lines and log.endswith("\n"), fmt, log[-500:])
            bad = [ln for ln in lines if forged(ln)]
            check(not bad, "%s: forged lines" % fmt, bad[:5])
            for ln in lines:
                check_line_format(fmt, ln)
            # The ids were logged, escaped (a JSON member holds the same escaped text).
            text = log if fmt != "json" else "\n".join(
                " ".join(str(v) for v in json.loads(ln).values()) for ln in lines)
            check(ESCAPED_TASK in text and ESCAPED_JOB in text, fmt, log[-3000:])
            dump = [ln for ln in text.splitlines() if "running for" in ln]
            check(dump and ESCAPED_TASK in dump[0], fmt, dump)


main()
