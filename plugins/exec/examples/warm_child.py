#!/usr/bin/python3
"""A warm child for avtworkerd's persistent exec types: the reference
implementation of the line protocol in avtworkerd-warm(7), standard library
only. Copy it and replace Model with yours.

The daemon starts this program once per child and keeps it: the model is
loaded once (Model.__init__), then every task arrives as one JSON line on
stdin and is answered on stdout:

    child  -> {"type": "ready", "hot_cache": ["demo-model"]}
    daemon -> {"type": "task", "id": "T1", "job_id": "J1", "task_type": "inference",
               "params": {...}, "deadline": 1765000000.5, "priority": 0}
    child  -> {"type": "progress", "id": "T1", "percent": 50, "message": "half"}
    child  -> {"type": "result", "id": "T1", "data": {...}}
           or {"type": "result", "id": "T1", "error": {"code": "PERMANENT_ERROR", "message": "..."}}
    daemon -> {"type": "cancel", "id": "T1", "reason": "cancelled"}   (answer it with a result)
    EOF on stdin: finish the current task and exit.

stdout carries the protocol only: log to stderr (its tail goes into the
message of a task that fails because this child died).

Environment (set in the declaration's env_set): WARM_MODEL names the model
advertised in the hot cache (default "demo-model"); WARM_LOAD_SECONDS is a
sleep standing in for loading it (default 0); WARM_STARTS_FILE, when set, is
a file this child appends its pid to once loaded (the tests count start-ups
with it).

Params of the demo model: "text" (classified by a toy word list). The other
params exist to demonstrate (and test) the daemon's side of the protocol:
"steps" and "step_seconds" (progress lines, cancellation checked between
steps), "alloc_mb" (memory kept for the child's life: max_rss_mb recycles
it), "exit" (exit with that status mid-task), "ignore_cancel" (keep working
after a cancel: the daemon kills the child after kill_grace_seconds),
"error" ({"code", "message"}: answer with that error), "raw" (write this
text as a line instead of the result: a protocol error).
"""
import json
import os
import queue
import sys
import threading
import time

OUT_LOCK = threading.Lock()


def send(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(msg):
    sys.stderr.write("warm_child[%d]: %s\n" % (os.getpid(), msg))
    sys.stderr.flush()


class TaskError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Model:
    """The expensive part, loaded once per child."""

    POSITIVE = {"good", "great", "fine", "happy", "warm", "fast"}
    NEGATIVE = {"bad", "poor", "sad", "cold", "slow", "broken"}

    def __init__(self):
        self.name = os.environ.get("WARM_MODEL", "demo-model")
        load = float(os.environ.get("WARM_LOAD_SECONDS", "0"))
        log("loading %s (%.1f s)" % (self.name, load))
        time.sleep(load)
        self.kept = []  # memory the demo keeps (alloc_mb)
        self.served = 0

    def infer(self, params, progress, cancelled):
        if not isinstance(params.get("text", ""), str):
            raise TaskError("INVALID_INPUT_ERROR", "params.text must be a string")
        steps = int(params.get("steps", 0))
        for i in range(steps):
            if cancelled() and not params.get("ignore_cancel"):
                raise TaskError("TRANSIENT_ERROR", "cancelled")
            time.sleep(float(params.get("step_seconds", 0.01)))
            progress(100.0 * (i + 1) / steps, "step %d of %d" % (i + 1, steps))
        if params.get("alloc_mb"):
            self.kept.append(bytearray(os.urandom(1)) * (int(params["alloc_mb"]) << 20))
        if "exit" in params:
            log("exiting with status %d as asked" % int(params["exit"]))
            os._exit(int(params["exit"]))
        if "error" in params:
            raise TaskError(params["error"].get("code", "PERMANENT_ERROR"),
                            params["error"].get("message", ""))
        words = params.get("text", "").lower().split()
        score = sum(w in self.POSITIVE for w in words) - sum(w in self.NEGATIVE for w in words)
        self.served += 1
        return {"label": "positive" if score > 0 else "negative" if score < 0 else "neutral",
                "score": score, "words": len(words), "model": self.name,
                "pid": os.getpid(), "served": self.served}


def reader(tasks, state):
    """stdin: tasks go to the queue; a cancel marks the running task."""
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("type") == "task":
            tasks.put(msg)
        elif msg.get("type") == "cancel":
            with state["lock"]:
                if state["current"] == msg.get("id"):
                    state["cancelled"].set()
    tasks.put(None)  # EOF: the daemon wants this child to exit


def run(model, task, state):
    tid = task["id"]
    params = task.get("params") or {}
    if "raw" in params:
        with OUT_LOCK:
            sys.stdout.write(str(params["raw"]) + "\n")
            sys.stdout.flush()
        return
    try:
        data = model.infer(params,
                           lambda pct, msg: send({"type": "progress", "id": tid, "percent": pct,
                                                  "message": msg}),
                           state["cancelled"].is_set)
        send({"type": "result", "id": tid, "data": data})
    except TaskError as e:
        send({"type": "result", "id": tid, "error": {"code": e.code, "message": e.message}})
    except Exception as e:  # a bug in the model: this task only
        send({"type": "result", "id": tid,
              "error": {"code": "PERMANENT_ERROR", "message": "%s: %s" % (type(e).__name__, e)}})


def main():
    model = Model()
    starts = os.environ.get("WARM_STARTS_FILE")
    if starts:
        with open(starts, "a") as f:
            f.write("%d\n" % os.getpid())
    tasks = queue.Queue()
    state = {"lock": threading.Lock(), "current": None, "cancelled": threading.Event()}
    threading.Thread(target=reader, args=(tasks, state), daemon=True).start()
    send({"type": "ready", "hot_cache": [model.name]})
    while True:
        task = tasks.get()
        if task is None:
            return 0
        with state["lock"]:
            state["current"] = task["id"]
            state["cancelled"].clear()
        run(model, task, state)
        with state["lock"]:
            state["current"] = None


if __name__ == "__main__":
    sys.exit(main())
