"""orch.py: start the fake orchestrator (tests/orchestrator/fakeorch.py) and
talk to its client and control APIs from an integration test.

The fake speaks the worker protocol of PROTOCOL.md exactly like avtomatika
1.0b13 on MemoryStorage (status codes, bodies, auth messages, quirks), or,
with protocol="1.0b14" (or AVT_FAKE_PROTOCOL=1.0b14 in the environment), the
one of PROTOCOL-1.0b14.md like avtomatika 1.0b27, so a daemon that passes
against it should pass against the real one. On top it measures concurrency
on the orchestrator side, records every worker request and injects faults.

Typical daemon test:

    from avt import *          # noqa
    from orch import FakeOrch, FINAL

    @test
    def echo_jobs_finish(t):
        with FakeOrch(poll_timeout=2) as o:        # ephemeral port, subprocess
            p = t.spawn(["-c", t.ini(...)], env=o.worker_env("w1"))
            o.wait_worker("w1")                    # registered (jobs before that are quarantined!)
            ids = [o.create_job("echo", {"msg": i}) for i in range(20)]
            jobs = o.wait_jobs(ids)                # default predicate: status in FINAL
            check(all(j["status"] == "finished" for j in jobs), jobs)
            st = o.worker_stats("w1")
            check(st["max_outstanding"] <= 4, st)  # never more than the configured slots
            check(o.polls_while_full("w1", 4) == 0, st)

Things to know (all quirks of the real orchestrator, reproduced on purpose):
  * A job created while no registered, idle worker lists its type is
    quarantined ("No suitable workers for task type 'X'") after the
    executor's three immediate retries, which run behind other requests
    (wait_job() for it; stats()["counters"]["dispatch_failed"] counts the
    attempts). Wait for the registration first, or pass
    queue_when_no_worker=True, or pin the job to a worker id with
    create_job(..., worker_id="w1") / prequeue().
  * 1.0b3: task_id == job_id, also on retries; missing ids or bad JSON are
    500. 1.0b14: task_id is task-<uuid4>, new on every dispatch and retry;
    bad JSON and schema errors are 400, auth and signature failures 403.
    A cancelled job is not terminal: a later success still finishes it.
    Results are 200 (accepted or ignored) when they get that far.
  * Stats are measured by the orchestrator: a task is "outstanding" from the
    200 poll that handed it out until a result naming its task id arrives.

Constructor options map to fakeorch.py flags: protocol ("1.0b3" default, or
"1.0b14": RXON 1.0b14 as avtomatika 1.0b27 speaks it, PROTOCOL-1.0b14.md;
signed bodies, see tests/orchestrator/canon14.py), token (--worker-token),
workers_toml (text or path: individual tokens), poll_timeout, worker_ttl,
max_retries, task_timeout, watcher_interval, queue_when_no_worker, fast,
log_level, client_token, port (0 = ephemeral; kept across stop()/start()).
TLS (HTTPS and WSS, 1.2): tls_cert/tls_key (the server's certificate),
tls_ca (the CA client certificates must chain to), require_client_cert,
sts_expires_in; client_cert/client_key are what this helper itself
presents (needed with require_client_cert). url is then https://.
Timeouts given to wait_* are scaled with TIMEOUT_MULT like avt.tmo().
"""
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FAKEORCH = os.path.join(os.path.dirname(HERE), "orchestrator", "fakeorch.py")
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
TIMEOUT_MULT = float(os.environ.get("TIMEOUT_MULT", "1"))

# Statuses after which a job does not change by itself. "cancelled" is not
# terminal in the orchestrator (a later success still finishes the job) but
# is final for a test's purposes.
TERMINAL = {"finished", "failed", "error", "quarantined"}
FINAL = TERMINAL | {"cancelled"}


class OrchError(Exception):
    pass


def _tmo(seconds):
    return seconds * TIMEOUT_MULT


class Response:
    """A raw HTTP answer: status, headers (dict-like), body bytes, json()."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body) if self.body else None

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:300])


class FakeOrch:
    def __init__(self, token="worker-token", workers_toml=None, poll_timeout=2.0, worker_ttl=None,
                 max_retries=None, task_timeout=None, watcher_interval=None, queue_when_no_worker=False,
                 fast=False, log_level="WARNING", client_token=None, port=0, extra_args=(),
                 tls_cert=None, tls_key=None, tls_ca=None, require_client_cert=False,
                 sts_expires_in=None, client_cert=None, client_key=None, protocol=None):
        self.token = token
        self.protocol = protocol or os.environ.get("AVT_FAKE_PROTOCOL") or "1.0b3"
        self.tls = tls_cert is not None
        self._ssl = None
        if self.tls:
            # The harness talks to its own server: no verification needed.
            self._ssl = ssl.create_default_context()
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE
            if client_cert:
                self._ssl.load_cert_chain(client_cert, client_key)
        self.port = port
        self.proc = None
        self._dir = tempfile.mkdtemp(prefix="fakeorch.")
        self._stderr_path = os.path.join(self._dir, "fakeorch.log")
        args = ["--worker-token", token, "--poll-timeout", str(poll_timeout), "--log-level", log_level]
        for flag, val in (("--worker-ttl", worker_ttl), ("--max-retries", max_retries),
                          ("--task-timeout", task_timeout), ("--watcher-interval", watcher_interval),
                          ("--workers-toml", workers_toml), ("--client-token", client_token),
                          ("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-ca", tls_ca),
                          ("--sts-expires-in", sts_expires_in), ("--protocol", protocol)):
            if val is not None:
                args += [flag, str(val)]
        if queue_when_no_worker:
            args.append("--queue-when-no-worker")
        if fast:
            args.append("--fast")
        if require_client_cert:
            args.append("--require-client-cert")
        self._args = args + list(extra_args)
        self._client_token = client_token

    # ---- lifecycle ----------------------------------------------------------
    def start(self, timeout=10):
        """Start the server (again on the same port after stop())."""
        port_file = os.path.join(self._dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [PYTHON, FAKEORCH, "--port", str(self.port), "--port-file", port_file] + self._args
        self._stderr = open(self._stderr_path, "a")
        self.proc = subprocess.Popen(argv, stdout=self._stderr, stderr=self._stderr)
        deadline = time.monotonic() + _tmo(timeout)
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise OrchError("fakeorch exited with %s:\n%s" % (self.proc.returncode, self.output()))
            if time.monotonic() > deadline:
                self.stop()
                raise OrchError("fakeorch did not start:\n" + self.output())
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        return self

    def stop(self, timeout=10):
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_tmo(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        self._stderr.close()
        return rc

    def kill(self):
        """SIGKILL: the orchestrator vanishes without closing anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def output(self):
        """Everything the server printed (its log)."""
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    @property
    def ws_url(self):
        return "%s://127.0.0.1:%d" % ("wss" if self.tls else "ws", self.port)

    def worker_env(self, worker_id=None, token=None):
        """The environment variables a worker reads (SDK names)."""
        env = {"ORCHESTRATOR_URL": self.url, "WORKER_TOKEN": token or self.token}
        if worker_id:
            env["WORKER_ID"] = worker_id
        return env

    # ---- raw HTTP -------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, raw=None, timeout=30):
        """Any request; returns Response (never raises on HTTP status)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"} if data is not None else {}
        if self._client_token and path.startswith("/api/"):
            h["X-Client-Token"] = self._client_token
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=_tmo(timeout), context=self._ssl) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read())

    def worker_request(self, method, path, body=None, token=None, **kw):
        """A request with the worker token (token=False: without it)."""
        headers = dict(kw.pop("headers", None) or {})
        if token is not False:
            headers.setdefault("X-Worker-Token", token or self.token)
        return self.request(method, path, body, headers=headers, **kw)

    def _json(self, method, path, body=None, ok=(200, 202)):
        r = self.request(method, path, body)
        if r.status not in ok:
            raise OrchError("%s %s -> %d %r" % (method, path, r.status, r.body))
        return r.json()

    # ---- client API -------------------------------------------------------------
    def create_job(self, type, params=None, priority=None, timeout_seconds=None, pipeline=None,
                   transitions=None, worker_id=None, **extra):
        """Create a job; returns its id (== the task id the worker sees).
        pipeline: further task types, each step's params = previous params
        merged with state_history. transitions: extra {status: state} (e.g.
        {"custom": "finished"}). worker_id: queue on that worker directly.
        extra: dispatch_timeout_seconds, result_timeout_seconds."""
        body = {"type": type, "params": params if params is not None else {}}
        for k, v in (("priority", priority), ("timeout_seconds", timeout_seconds), ("pipeline", pipeline),
                     ("transitions", transitions), ("worker_id", worker_id)):
            if v is not None:
                body[k] = v
        body.update(extra)
        return self._json("POST", "/api/v1/jobs", body)["job_id"]

    def create_blueprint_job(self, endpoint, initial_data=None):
        """The harness blueprints (echo, process-image, transient-fail, ...)."""
        return self._json("POST", "/api/v1/jobs/" + endpoint, {"initial_data": initial_data or {}})["job_id"]

    def job(self, job_id):
        """The job record: status, current_state, state_history, retry_count,
        error_message, progress, progress_message, task_worker_id, results."""
        return self._json("GET", "/api/v1/jobs/" + job_id)

    def jobs(self):
        """{"jobs": [records], "counts": {status: n}}."""
        return self._json("GET", "/api/v1/jobs")

    def wait_job(self, job_id, pred=None, timeout=20):
        return self.wait_jobs([job_id], pred, timeout)[0]

    def wait_jobs(self, ids, pred=None, timeout=20, interval=0.05):
        """Wait until pred(record) holds for every id (default: status in
        FINAL); returns the records in the order of ids."""
        pred = pred or (lambda j: j["status"] in FINAL)
        deadline = time.monotonic() + _tmo(timeout)
        while True:
            recs = {j["id"]: j for j in self.jobs()["jobs"]}
            missing = [i for i in ids if i not in recs or not pred(recs[i])]
            if not missing:
                return [recs[i] for i in ids]
            if time.monotonic() > deadline:
                raise OrchError("timed out waiting for %d of %d jobs, e.g. %s" %
                                (len(missing), len(ids), json.dumps(recs.get(missing[0]))[:800]))
            time.sleep(interval)

    def cancel(self, job_id):
        """Cancel; returns (status, body): 200 accepted, 404 terminal/unknown."""
        r = self.request("POST", "/api/v1/jobs/%s/cancel" % job_id)
        return r.status, r.json()

    def workers(self):
        """Live worker records (as registered, merged with heartbeats)."""
        return self._json("GET", "/api/v1/workers")

    def wait_worker(self, worker_id, pred=None, timeout=20):
        """Wait until the worker is registered (and pred(record) holds)."""
        deadline = time.monotonic() + _tmo(timeout)
        while True:
            for w in self.workers():
                if w.get("worker_id") == worker_id and (pred is None or pred(w)):
                    return w
            if time.monotonic() > deadline:
                raise OrchError("worker %s not registered; log tail: %s" %
                                (worker_id, json.dumps(self.log()[-5:])[:1500]))
            time.sleep(0.05)

    # ---- test control ------------------------------------------------------------
    def inject(self, kind, mode="respond", count=1, **fault):
        """Fault for the next `count` requests of `kind` (register, poll,
        heartbeat, result, event, ws, sts (token and refresh), api, public
        (/_public/*, e.g. to hide the 1.0b14 detection probe), any = every
        worker endpoint). Modes:
          respond   status=, body= (JSON) or raw= (text), headers=
          malformed status (200) with a non-JSON body
          truncate  Content-Length larger than sent (extra=100), then close
          slow      delay= seconds, then normal handling (or status= answer)
          drop      close the connection without an answer
        delay= applies to every mode; process=True runs the real handler
        first (its side effects happen), then answers with the fault.
        Examples: inject("poll", status=429, headers={"Retry-After": "2"},
        body={"error": "Too Many Requests"}); inject("result", "drop",
        process=True)."""
        body = dict(fault, kind=kind, mode=mode, count=count)
        return self._json("POST", "/_test/fault", body)

    def clear_faults(self):
        return self._json("DELETE", "/_test/faults")

    def faults(self):
        return self._json("GET", "/_test/faults")

    def expire(self, worker_id):
        """Let the worker's TTL lapse now (its record is purged, its queue kept)."""
        return self._json("POST", "/_test/expire", {"worker_id": worker_id})

    def expire_tokens(self):
        """Every STS access and refresh token runs out now."""
        return self._json("POST", "/_test/expire", {"sts": True})

    def config(self, **settings):
        """Change settings at runtime (poll_timeout, worker_ttl, max_retries,
        task_timeout, watcher_interval, queue_when_no_worker, log_requests,
        keep_results, ws_unregister_quirk, client_token, worker_token,
        worker_tokens, gzip, rate_limit={limit, poll_limit, period,
        retry_after}); returns them all."""
        if not settings:
            return self._json("GET", "/_test/config")
        return self._json("POST", "/_test/config", settings)

    def log(self, path=None, since=0, kind=None, worker_id=None):
        """The request log: rows {t, method, path, kind, worker_id, status,
        body, headers, resp, resp_headers}; status is "drop"/"truncate" for
        those faults and "client_gone" when the client hung up. Only worker
        endpoints are logged. WebSocket frames appear as method WS-RECV (from
        the worker) / WS-SEND (to it); a refused socket as WS-AUTH.
        Note: a WebSocket with a bad token gets 101, then a raw HTTP 401 in
        the stream, and the connection stays OPEN (as in the real 1.0b13)."""
        q = "?since=%d" % since + ("&path=" + urllib.request.quote(path) if path else "")
        rows = self._json("GET", "/_test/log" + q)
        return [r for r in rows if (kind is None or r.get("kind") == kind)
                and (worker_id is None or r.get("worker_id") == worker_id)]

    def stats(self):
        """{"workers": {id: WorkerStats}, "counters", "jobs", "queued", "ws_connected", "pending"}."""
        return self._json("GET", "/_test/stats")

    def worker_stats(self, worker_id):
        """polls, polls_outstanding, max_polls_outstanding,
        polls_while_outstanding {"N": polls that arrived while N tasks were
        outstanding}, handouts, results, outstanding, outstanding_by_type,
        outstanding_task_ids, max_outstanding, max_outstanding_by_type."""
        return self.stats()["workers"].get(worker_id) or {}

    def polls_while_full(self, worker_id, capacity):
        """Polls that arrived while `capacity` or more tasks were outstanding."""
        at = self.worker_stats(worker_id).get("polls_while_outstanding", {})
        return sum(v for k, v in at.items() if int(k) >= capacity)

    def ws_connected(self, worker_id):
        return worker_id in self.stats()["ws_connected"]

    def ws_send(self, worker_id, message):
        """Push any frame (object -> JSON, or a raw string) to the worker's socket."""
        return self._json("POST", "/_test/ws/send", {"worker_id": worker_id, "message": message})["sent"]

    def ws_close(self, worker_id, code=1001):
        return self._json("POST", "/_test/ws/close", {"worker_id": worker_id, "code": code})["closed"]

    def prequeue(self, worker_id, type, params=None, count=1, priority=None, timeout_seconds=None):
        """Jobs queued straight onto worker_id's queue (registered or not)."""
        return self._json("POST", "/_test/prequeue", {
            "worker_id": worker_id, "type": type, "params": params or {}, "count": count,
            "priority": priority, "timeout_seconds": timeout_seconds})["job_ids"]

    def reset(self):
        return self._json("POST", "/_test/reset")


if __name__ == "__main__":
    # Manual use: python3 orch.py -> starts a server and prints its URL.
    with FakeOrch(poll_timeout=30, log_level="INFO") as o:
        print(o.url, flush=True)
        try:
            o.proc.wait()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
