#!/usr/bin/python3
"""make demo: start the local test orchestrator (tests/orchestrator/fakeorch.py)
and avtworkerd with the example plugins, push a few jobs of each kind through,
print their results as a table, stop everything.

Environment: BUILD (build directory, default build), DEMO_KEEP_LOG=1 keeps
the daemon's log file and prints its path."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from orch import FakeOrch  # noqa: E402

BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
WORKER = "demo-worker"


def short(v, n=48):
    s = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return s if len(s) <= n else s[: n - 3] + "..."


def main():
    logf = tempfile.NamedTemporaryFile(prefix="avtworkerd-demo.", suffix=".log", delete=False)
    with FakeOrch(poll_timeout=5) as o:
        print("test orchestrator listening on %s" % o.url)
        env = dict(os.environ, **o.worker_env(WORKER))
        env.update(MAX_CONCURRENT_TASKS="4", LOG_LEVEL="info")
        daemon = subprocess.Popen([os.path.join(BUILD, "avtworkerd"), "-P", os.path.join(BUILD, "plugins")],
                                  env=env, stdout=logf, stderr=logf)
        try:
            o.wait_worker(WORKER, timeout=15)
            print("avtworkerd registered as %s (pid %d); log: %s\n" % (WORKER, daemon.pid, logf.name))
            while not o.ws_connected(WORKER):
                time.sleep(0.05)
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
            ]
            cancel_id = o.create_job("sleep", {"seconds": 60})
            jobs.append(("sleep 60 s, cancelled after 1 s", cancel_id))
            time.sleep(1)
            o.cancel(cancel_id)
            recs = o.wait_jobs([j for _, j in jobs[:-1]], timeout=30)
            recs.append(o.wait_job(cancel_id, pred=lambda j: j.get("results"), timeout=15))
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=40)
            except subprocess.TimeoutExpired:
                daemon.kill()
        rows = [("job", "status", "retries", "progress", "result / error")]
        for (name, _), j in zip(jobs, recs):
            last = (j.get("results") or [{}])[-1]
            if j["status"] == "finished" and "final_url" in j["state_history"]:
                what = "final_url=" + short(j["state_history"]["final_url"], 60)
            elif j["status"] == "finished":
                what = short(j["state_history"])
            elif last.get("status") == "cancelled":
                what = "worker answered status \"cancelled\""
            else:
                what = short(j.get("error_message") or last.get("error"))
            prog = "" if j.get("progress") is None else "%d%% %s" % (round(j["progress"] * 100),
                                                                     j.get("progress_message") or "")
            rows.append((name, j["status"], str(j.get("retry_count", 0)), prog, what))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for k, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if k == 0:
                print("  ".join("-" * w for w in widths))
        print("\navtworkerd exited with status %s after SIGTERM" % daemon.returncode)
    expected = ["finished", "finished", "finished", "finished", "finished", "quarantined", "cancelled"]
    ok = [j["status"] for j in recs] == expected and daemon.returncode == 0
    if not os.environ.get("DEMO_KEEP_LOG") and ok:
        os.unlink(logf.name)
    print("demo %s" % ("OK" if ok else "FAILED (expected %s)" % expected))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
