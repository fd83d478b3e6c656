#!/usr/bin/python3
"""make demo: start the local test orchestrator (tests/orchestrator/fakeorch.py)
and avtworkerd with the example plugins (exec with a checksum type and, when
ffmpeg is installed, the shipped transcode; a local web server for the
http_fetch job), push a few jobs of each kind through,
print their results as a table, stop everything.

The orchestrator speaks RXON 1.0b14 (Avtomatika 1.0b27) unless DEMO_PROTOCOL
says 1.0b3 (Avtomatika 1.0b13); the daemon finds out by itself (protocol =
auto) and the demo prints what it found. The daemon's state directory is
BUILD/demo-state, private to the demo (no root, no clash with an installed
service). When the daemon stops on its own, the demo prints its exit status
and the end of its log at once.

Environment: BUILD (build directory, default build), DEMO_PROTOCOL (1.0b14 or
1.0b3), DEMO_KEEP_LOG=1 keeps the daemon's log file and prints its path."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from orch import FINAL, FakeOrch  # noqa: E402

BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
PROTOCOL = os.environ.get("DEMO_PROTOCOL", "1.0b14")
WORKER = "demo-worker"
WRAP = 60


class DemoFailed(Exception):
    pass


def log_tail(path, n=15):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def wait(daemon, logpath, pred, what, timeout=15):
    """pred() within timeout, unless the daemon stops first: then at once,
    with its exit status and the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoFailed("avtworkerd exited with status %d while the demo waited for %s; "
                             "the end of its log:\n%s" % (daemon.returncode, what, log_tail(logpath)))
        if pred():
            return
        time.sleep(0.05)
    raise DemoFailed("avtworkerd did not get to %s within %d s; the end of its log:\n%s"
                     % (what, timeout, log_tail(logpath)))


def wait_jobs(o, daemon, logpath, ids, pred, what, timeout):
    """The orchestrator's records of ids once pred holds for each."""
    got = {}

    def done():
        recs = {j["id"]: j for j in o.jobs()["jobs"]}
        got.update(recs)
        return all(i in recs and pred(recs[i]) for i in ids)
    wait(daemon, logpath, done, what, timeout)
    return [got[i] for i in ids]


def detected(logpath):
    for line in open(logpath, errors="replace"):
        if " speaks RXON " in line:
            return line.split(" notice ", 1)[-1].strip()
    return ""


def exec_setup(tmp):
    """A worker.ini for the exec plugin: a checksum type declared here, and
    the shipped ffmpeg example (conf/exec.d/transcode.json) with a
    generated clip when ffmpeg is installed. Returns (its worker.ini section,
    clip or None)."""
    types = os.path.join(tmp, "exec.d")
    os.makedirs(types)
    os.chmod(tmp, 0o755)
    os.chmod(types, 0o755)
    with open(os.path.join(types, "checksum.json"), "w") as f:
        json.dump({"argv": ["sha256sum", "--", "{params.path}"], "result": "text",
                   "result_key": "sha256sum"}, f)
    # The shipped warm example (avtworkerd-warm(7)): one child, the model
    # "loaded" in half a second, once.
    with open(os.path.join(ROOT, "plugins", "exec", "examples", "inference.json")) as f:
        warm = json.load(f)
    warm["argv"][1] = os.path.join(ROOT, "plugins", "exec", "examples", "warm_child.py")
    warm["env_set"]["WARM_LOAD_SECONDS"] = "0.5"
    warm["persistent"]["children"] = 1
    with open(os.path.join(types, "inference.json"), "w") as f:
        json.dump(warm, f)
    clip = None
    if shutil.which("ffmpeg"):
        shutil.copy(os.path.join(ROOT, "conf", "exec.d", "transcode.json"), types)
        clip = os.path.join(tmp, "clip.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc=duration=2:size=320x240:rate=25", "-c:v", "mpeg4", "-y", clip],
                       check=True)
    for name in os.listdir(types):
        os.chmod(os.path.join(types, name), 0o644)
    return "[plugin.exec]\ntypes_dir = %s\nwork_dir = %s\n" % (types, tmp), clip


def start_web_server():
    """The local HTTP server the http_fetch job fetches from (the unit
    tests' tests/unit/http_test_server.py); it exits when its stdin closes.
    Returns (process, base URL)."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "unit", "http_test_server.py")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, "http://127.0.0.1:%d" % int(p.stdout.readline())


def jobs_of(o, web, clip):
    jobs = [
        ("echo", o.create_job("echo", {"msg": "hello from avtworkerd"})),
        ("echo", o.create_job("echo", {"n": 42, "list": [1, 2, 3]})),
        ("pipeline resize_image -> apply_filters",
         o.create_blueprint_job("process-image", {"image_url": "s3://demo/cat.png"})),
        ("progress (5 steps)", o.create_job("progress", {"steps": 5, "step_seconds": 0.2})),
        ("transient failure x2, then success", o.create_job("fail", {"code": "TRANSIENT_ERROR",
                                                                    "times": 2,
                                                                    "message": "flaky backend"})),
        ("permanent failure", o.create_job("fail", {"code": "PERMANENT_ERROR", "times": -1,
                                                    "message": "cannot ever work"})),
        ("http_fetch (2 redirects)", o.create_job("http_fetch", {"url": web + "/redirect?n=1",
                                                                 "headers": ["content-type"]})),
        ("exec: sha256sum of a file", o.create_job("checksum", {"path": "/etc/os-release"})),
        ("exec persistent: warm model", o.create_job("inference", {"text": "a good warm day"})),
    ]
    if clip is not None:
        jobs.append(("exec: ffmpeg transcode (2 s clip)",
                     o.create_job("transcode", {"input": clip, "output": clip + ".h264.mp4",
                                                "duration": 2})))
    return jobs


def describe(j):
    last = (j.get("results") or [{}])[-1]
    if j["status"] == "finished" and "final_url" in j["state_history"]:
        return "final_url=" + j["state_history"]["final_url"]
    if j["status"] == "finished" and "sha256sum" in j["state_history"]:
        return "sha256sum: " + j["state_history"]["sha256sum"].strip()
    if j["status"] == "finished":
        return json.dumps(j["state_history"], separators=(",", ":"), ensure_ascii=False)
    if last.get("status") == "cancelled":
        return "worker answered status \"cancelled\""
    err = last.get("error")
    if isinstance(err, dict):
        return "%s: %s" % (err.get("code"), err.get("message"))
    return j.get("error_message") or json.dumps(err)


def table(jobs, recs):
    rows = [("job", "status", "retries", "progress", "result / error")]
    for (name, _), j in zip(jobs, recs):
        prog = "" if j.get("progress") is None else "%d%% %s" % (round(j["progress"] * 100),
                                                                 j.get("progress_message") or "")
        rows.append((name, j["status"], str(j.get("retry_count", 0)), prog, describe(j)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    pad = sum(widths) + 2 * len(widths)
    for k, r in enumerate(rows):
        lines = textwrap.wrap(r[-1], WRAP, break_on_hyphens=False) or [""]  # the whole text, never cut
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + lines[0])
        for more in lines[1:]:
            print(" " * pad + more)
        if k == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * WRAP)


def run(o, daemon, logpath, web_url, clip):
    """The jobs through the daemon; returns (jobs, their records)."""
    wait(daemon, logpath, lambda: any(w.get("worker_id") == WORKER for w in o.workers()),
         "its registration")
    print("avtworkerd registered as %s (pid %d); log: %s" % (WORKER, daemon.pid, logpath))
    print("  %s\n" % detected(logpath))
    wait(daemon, logpath, lambda: o.ws_connected(WORKER), "its WebSocket")
    jobs = jobs_of(o, web_url, clip)
    cancel_id = o.create_job("sleep", {"seconds": 60})
    jobs.append(("sleep 60 s, cancelled after 1 s", cancel_id))
    time.sleep(1)
    o.cancel(cancel_id)
    recs = wait_jobs(o, daemon, logpath, [j for _, j in jobs[:-1]],
                     lambda j: j["status"] in FINAL, "the end of the jobs", 30)
    recs += wait_jobs(o, daemon, logpath, [cancel_id], lambda j: j.get("results"),
                      "the cancelled job's result", 15)
    return jobs, recs


def stop(daemon):
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=40)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def main():
    logf = tempfile.NamedTemporaryFile(prefix="avtworkerd-demo.", suffix=".log", delete=False)
    state = os.path.join(BUILD, "demo-state")
    shutil.rmtree(state, ignore_errors=True)
    ok = False
    tmp = tempfile.mkdtemp(prefix="avtworkerd-demo-exec.")
    ini = state + ".ini"
    web = None
    try:
        exec_ini, clip = exec_setup(tmp)
        os.makedirs(BUILD, exist_ok=True)
        with open(ini, "w") as f:
            # The http_fetch plugin refuses loopback addresses unless told:
            # open exactly the demo web server's.
            f.write("[plugin.http_fetch]\nallow_networks = 127.0.0.1/32\n"
                    "user_agent = avtworkerd-demo\n")
            f.write(exec_ini)
        web, web_url = start_web_server()
        with FakeOrch(poll_timeout=5, protocol=PROTOCOL) as o:
            print("test orchestrator (RXON %s) listening on %s" % (PROTOCOL, o.url))
            env = dict(os.environ, **o.worker_env(WORKER))
            env.update(MAX_CONCURRENT_TASKS="4", LOG_LEVEL="info", STATE_DIRECTORY=state)
            daemon = subprocess.Popen([os.path.join(BUILD, "avtworkerd"), "-c", ini,
                                       "-P", os.path.join(BUILD, "plugins")],
                                      env=env, stdout=logf, stderr=logf)
            try:
                jobs, recs = run(o, daemon, logf.name, web_url, clip)
            except DemoFailed as e:
                print("demo FAILED: %s" % e)
                print("daemon log: %s" % logf.name)
                return 1
            finally:
                stop(daemon)
        table(jobs, recs)
        print("\navtworkerd exited with status %s after SIGTERM" % daemon.returncode)
        expected = ["finished", "finished", "finished", "finished", "finished", "quarantined",
                    "finished", "finished", "finished"] + (["finished"] if clip else []) + \
            ["cancelled"]
        ok = [j["status"] for j in recs] == expected and daemon.returncode == 0
        print("demo %s" % ("OK" if ok else "FAILED (expected %s); daemon log: %s"
                           % (expected, logf.name)))
        return 0 if ok else 1
    finally:
        if web is not None:
            web.stdin.close()
            web.wait(timeout=10)
        if os.path.exists(ini):
            os.unlink(ini)
        if not os.environ.get("DEMO_KEEP_LOG") and ok:
            os.unlink(logf.name)
        elif ok:
            print("daemon log: %s" % logf.name)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
