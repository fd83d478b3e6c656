#!/usr/bin/python3
"""fakeorch: a protocol-faithful stand-in for the Avtomatika orchestrator.

The daemon's integration tests and `make demo` run against this server, because
CI cannot reach the real orchestrator. One process speaks ONE dialect of the
worker protocol, like a real server (--protocol, env AVT_FAKE_PROTOCOL):

  1.0b3   (default) RXON 1.0b3 as served by avtomatika 1.0b13 on MemoryStorage
          with the harness patches (a) and (c): /work/shared/PROTOCOL.md. Stdlib
          JSON with spaces, 401 auth errors, task_id == job_id, unsigned bodies.
  1.0b14  RXON 1.0b14 as served by avtomatika 1.0b27 on MemoryStorage:
          /work/shared/PROTOCOL-1.0b14.md. Zero-trust HMAC signatures, orjson-like
          compact sorted answers, 403/400 mapping, SkillInfo objects, task-<uuid>
          ids new per dispatch and retry, worker_mismatch, events, STS refresh,
          work stealing, the MemoryStorage timeout clocks. Implemented in
          rxon14.py (the dialect) and canon14.py (canonical JSON + HMAC), next to
          this file.

Both give the same paths, status codes, bodies (byte for byte where the real
one's serializer is known), auth errors, quirks and bugs a worker must live
with. Section numbers in the comments refer to PROTOCOL.md here and to
PROTOCOL-1.0b14.md in rxon14.py. No orchestrator code is copied; behaviour was
re-implemented from the documents and checked against the source where they
left a doubt. `GET /_public/status` answers 200 {"status":"ok"} with the
dialect's X-RXON-Version in both modes; `POST /_worker/events` (empty, no
token) is 400 in 1.0b14 and a router 404 in 1.0b3: what a worker's dialect
detection reads (PROTOCOL-1.0b14.md 4.2).

Shared by both dialects (the dialect only supplies the worker endpoints and a
few hooks: task ids and payloads, worker selection, pick-up and retry
bookkeeping, watch clocks; see class Dialect3 and rxon14.Dialect14):
  * jobs, the harness blueprints, the watcher, retries and quarantine;
  * a small client API under /api/v1 to create, inspect and cancel jobs;
  * a test-control API under /_test (no auth): fault injection per endpoint
    kind, forced worker expiry, runtime settings, a request log, concurrency
    statistics measured on the orchestrator's side, and a reset;
  * TLS/mTLS and STS access tokens, gzip, the optional rate limiter.

Run: fakeorch.py --port 0 --port-file F [--protocol 1.0b3|1.0b14]
     [--worker-token T] [--poll-timeout S] [--workers-toml PATH|TEXT] [--fast]
     [--log-level LEVEL]
     [--tls-cert PEM --tls-key PEM [--tls-ca PEM] [--require-client-cert]
      [--sts-expires-in S]]
With --tls-cert the server speaks HTTPS (and WSS) like the real one with
TLS_ENABLED=true (1.2): --tls-ca is the CA that client certificates must
chain to (TLS_CA_PATH); a verified client certificate's commonName is the
worker's identity; POST /_worker/auth/token issues STS access tokens for
it (2.5), valid --sts-expires-in seconds (3600), accepted as X-Worker-Token.
In 1.0b14 any authenticated worker gets an access token and a refresh token.
See tests/integration/orch.py for the Python helper the tests use, and
USAGE at the end of this file (also `fakeorch.py --help` and GET /_test/help)
for the control API.

Only Debian's python3 (3.11) and python3-aiohttp (3.8.4) are needed.
"""
import argparse
import asyncio
import email.utils
import gzip
import hashlib
import io
import json
import logging
import os
import random
import re
import secrets
import signal
import ssl
import sys
import time
import tomllib
import uuid

from aiohttp import WSMsgType, web

PROTOCOL_VERSION = "1.0b3"
PROTOCOLS = ("1.0b3", "1.0b14")
VERSION_HEADER = "X-RXON-Version"
GLOBAL_ID = "unknown_authenticated_by_global_token"
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
TERMINAL = {"finished", "failed", "error", "quarantined"}
PERMANENT_CODES = {"PERMANENT_ERROR", "SECURITY_ERROR", "DEPENDENCY_ERROR"}
FAULT_KINDS = {"register", "poll", "heartbeat", "result", "event", "ws", "sts", "api", "public", "any"}
LOGGED_HEADERS = ("X-Worker-Token", "X-Worker-ID", "X-RXON-Version", "Content-Type", "Content-Length",
                  "Accept-Encoding", "Content-Encoding", "User-Agent", "Transfer-Encoding")
LOGGED_RESP_HEADERS = ("X-RXON-Version", "Content-Encoding", "Retry-After", "Content-Type")

log = logging.getLogger("fakeorch")


def dumps_compact(obj):
    """The client API's serializer (orjson in the real one: no spaces)."""
    return json.dumps(obj, separators=(",", ":"))


def api_json(data, status=200):
    return web.json_response(data, status=status, dumps=dumps_compact)


def client_json(request, data, status=200):
    """The client API's answers in the dialect's serializer (1.0b3: compact;
    1.0b14: orjson-like, also without null members, like avtomatika 1.0b27)."""
    return web.json_response(data, status=status, dumps=orch_of(request).d.client_dumps)


def worker_json(data, status=200):
    """Worker endpoints answer with web.json_response and stdlib json (spaces)."""
    return web.json_response(data, status=status)


class AuthError(PermissionError):
    """An authentication failure; str() is the exact message of section 1.1
    (1.0b3: answered 401; 1.0b14: a PermissionError, answered 403)."""


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
class Settings:
    """Every tunable of the server; /_test/config changes them at runtime."""

    FIELDS = {
        "poll_timeout": float,          # WORKER_POLL_TIMEOUT_SECONDS, the long-poll hold
        "worker_ttl": float,            # 2 x WORKER_HEALTH_CHECK_INTERVAL_SECONDS
        "max_retries": int,             # JOB_MAX_RETRIES
        "task_timeout": float,          # WORKER_TIMEOUT_SECONDS
        "watcher_interval": float,      # WATCHER_INTERVAL_SECONDS
        "queue_when_no_worker": bool,   # not in the real one: park jobs until a worker fits
        "log_requests": bool,           # keep the request log (off in --fast)
        "keep_results": bool,           # append every result body to job["results"]
        "ws_unregister_quirk": bool,    # the old socket's close unregisters its successor
        "client_token": str,            # X-Client-Token for /api/v1, None = not checked
        "sts_expires_in": float,        # lifetime of issued STS access tokens (3600)
        "sts_enforce": bool,            # not in the real one: with a client certificate the
                                        # X-Worker-Token must ALSO be a live access token of its
                                        # CN (tests that the worker renews it in time)
        "timings": bool,                # record per-task timestamps (GET /_test/timings), for bench/
        "steal": bool,                  # 1.0b14: work stealing after an empty hold (MemoryStorage)
        "clock_offset": float,          # not in the real one: this server's clock runs this many
                                        # seconds ahead (its Date header and the zero-trust
                                        # timestamp check), to test what a worker says about skew
    }

    def __init__(self, args, dialect):
        self.protocol = dialect.version  # read-only: one process speaks one dialect
        self.worker_token = args.worker_token
        self.worker_tokens = load_workers_toml(args.workers_toml)
        self.poll_timeout = args.poll_timeout
        self.worker_ttl = args.worker_ttl
        self.max_retries = args.max_retries
        self.task_timeout = args.task_timeout
        self.watcher_interval = args.watcher_interval
        self.queue_when_no_worker = args.queue_when_no_worker
        self.log_requests = not args.fast
        self.keep_results = not args.fast
        self.ws_unregister_quirk = dialect.ws_unregister_quirk
        self.client_token = args.client_token
        self.sts_expires_in = args.sts_expires_in
        self.sts_enforce = False
        self.timings = False
        self.steal = dialect.steals
        self.clock_offset = 0.0
        self.rate_limit = None          # dict(limit, poll_limit, heartbeat_limit, period, retry_after) or None
        self.gzip = True

    def snapshot(self):
        d = {k: getattr(self, k) for k in self.FIELDS}
        d.update(protocol=self.protocol, rate_limit=self.rate_limit, gzip=self.gzip,
                 worker_token=self.worker_token, worker_tokens=sorted(self.worker_tokens))
        return d

    def update(self, body):
        for k, v in body.items():
            if k in self.FIELDS:
                setattr(self, k, None if v is None else self.FIELDS[k](v))
            elif k == "rate_limit":
                self.rate_limit = v or None
            elif k == "gzip":
                self.gzip = bool(v)
            elif k == "worker_token":
                self.worker_token = v
            elif k == "worker_tokens":
                self.worker_tokens = dict(v or {})
            elif k == "protocol":
                if v != self.protocol:
                    raise ValueError("protocol is fixed for the process (start it with --protocol %s)" % v)
            else:
                raise ValueError("unknown setting %r" % k)


def load_workers_toml(src):
    """Individual worker tokens: a path to a workers.toml or its text
    (`[w1]\\ntoken = "secret"`). Returns {worker_id: token}."""
    if not src:
        return {}
    text = src
    if os.path.exists(src):
        with open(src, encoding="utf-8") as f:
            text = f.read()
    data = tomllib.loads(text)
    return {wid: str(v["token"]) for wid, v in data.items() if isinstance(v, dict) and "token" in v}


# --------------------------------------------------------------------------
# Statistics measured on the orchestrator's side
# --------------------------------------------------------------------------
class WorkerStats:
    """Concurrency facts for one worker id (registered or not).

    `outstanding` is a multiset of task ids handed out by a 200 poll and not
    yet answered by a result naming that task (any status, accepted or
    ignored). A task delivered twice counts twice."""

    def __init__(self):
        self.polls = 0
        self.polls_now = 0
        self.max_polls_now = 0
        self.polls_at = {}             # outstanding count at poll arrival -> polls
        self.max_committed = 0         # max of outstanding + polls in flight, at a poll's arrival
        self.handouts = 0
        self.outstanding = []          # [(task_id, type)]
        self.max_outstanding = 0
        self.max_by_type = {}
        self.results = 0

    def poll_begin(self):
        self.polls += 1
        self.polls_now += 1
        self.max_polls_now = max(self.max_polls_now, self.polls_now)
        n = len(self.outstanding)
        self.polls_at[n] = self.polls_at.get(n, 0) + 1
        self.max_committed = max(self.max_committed, n + self.polls_now)

    def handout(self, task_id, ttype):
        self.handouts += 1
        self.outstanding.append((task_id, ttype))
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        n = sum(1 for _, t in self.outstanding if t == ttype)
        self.max_by_type[ttype] = max(self.max_by_type.get(ttype, 0), n)

    def answered(self, task_id):
        for i, (tid, _) in enumerate(self.outstanding):
            if tid == task_id:
                del self.outstanding[i]
                return True
        return False

    def as_dict(self):
        by_type = {}
        for _, t in self.outstanding:
            by_type[t] = by_type.get(t, 0) + 1
        return {
            "polls": self.polls, "polls_outstanding": self.polls_now,
            "max_polls_outstanding": self.max_polls_now,
            "max_committed": self.max_committed,
            "polls_while_outstanding": {str(k): v for k, v in sorted(self.polls_at.items())},
            "handouts": self.handouts, "results": self.results,
            "outstanding": len(self.outstanding), "outstanding_by_type": by_type,
            "outstanding_task_ids": [tid for tid, _ in self.outstanding],
            "max_outstanding": self.max_outstanding, "max_outstanding_by_type": dict(self.max_by_type),
        }


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------
class Job:
    """A job: `rec` is the public record (GET /api/v1/jobs/{id}); `steps` the
    task sequence, each {"type", "params" | None, "build": "merge"|"filters"}."""

    def __init__(self, job_id, rec, steps, opts):
        self.id = job_id
        self.rec = rec
        self.steps = steps
        self.opts = opts            # priority, timeouts, transitions, worker_id
        self.step = 0
        self.params = None          # params of the current step
        self.task_info = None

    def state_name(self, idx):
        return "start" if idx == 0 else self.steps[idx].get("state") or self.steps[idx]["type"]


# The harness blueprints of /work/shared/orchestrator, so its client.py and
# e2e scenarios also run here: endpoint -> (role defaults, params builder).
CONTROL_KEYS = {"task_type", "params", "timeout_seconds", "dispatch_timeout_seconds",
                "result_timeout_seconds", "priority", "resize_task_type", "filters_task_type"}


def _fail_params(d, code, times):
    return {"code": d.get("code", code), "times": d.get("times", times),
            "message": d.get("message", "failure requested by the harness")}


BLUEPRINTS = {
    "echo": ("echo", lambda d: {k: v for k, v in d.items() if k not in CONTROL_KEYS}),
    "transient-fail": ("fail", lambda d: _fail_params(d, "TRANSIENT_ERROR", 2)),
    "permanent-fail": ("fail", lambda d: _fail_params(d, "PERMANENT_ERROR", -1)),
    "invalid-input": ("fail", lambda d: _fail_params(d, "INVALID_INPUT_ERROR", -1)),
    "progress": ("progress", lambda d: {"steps": d.get("steps", 5), "step_seconds": d.get("step_seconds", 0.2)}),
    "slow": ("sleep", lambda d: {"seconds": d.get("seconds", 30)}),
}


def blueprint_job(name, d):
    """Steps and options of a harness blueprint job from its initial_data."""
    opts = {k: d.get(k) for k in ("priority", "timeout_seconds", "dispatch_timeout_seconds",
                                  "result_timeout_seconds")}
    if name == "process-image":
        steps = [
            {"type": d.get("resize_task_type") or "resize_image",
             "params": {"image_url": d.get("image_url", "s3://harness/input.png"),
                        "width": d.get("width", 640), "height": d.get("height", 480)}},
            {"type": d.get("filters_task_type") or "apply_filters", "state": "apply_filters",
             "params": None, "build": "filters", "filters": d.get("filters", ["sharpen", "grayscale"])},
        ]
        return steps, opts
    ttype, build = BLUEPRINTS[name]
    params = d.get("params", None)
    if params is None:
        params = build(d)
    if not isinstance(params, dict):
        raise ValueError("initial_data.params must be a JSON object")
    return [{"type": d.get("task_type") or ttype, "params": params}], opts


# --------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------
class FakeOrch:
    def __init__(self, settings, dialect):
        self.cfg = settings
        self.d = dialect            # Dialect3 or rxon14.Dialect14: everything dialect-specific
        self.t0 = time.monotonic()
        self.ws = {}
        self.ws_lock = asyncio.Lock()
        self.reset_state()

    def reset_state(self):
        self.workers = {}          # worker_id -> record (1.0b3: stored verbatim)
        self.ttl = {}              # worker_id -> monotonic expiry
        self.queues = {}           # worker_id -> asyncio.PriorityQueue of (-prio, seq, payload)
        self.jobs = {}             # job_id -> Job
        self.watch = {}            # job_id -> monotonic deadline (the watcher)
        self.pending = []          # jobs parked by queue_when_no_worker
        self.stats = {}            # worker_id -> WorkerStats
        self.faults = {k: [] for k in FAULT_KINDS}
        self.reqlog = []
        self.counters = {}
        self.ratelimit = {}        # key -> [count, expiry]
        self.sts = {}              # sha256(access token) -> (worker_id, monotonic expiry)
        self.sts_refresh = {}      # 1.0b14: sha256(refresh token) -> (worker_id, monotonic expiry)
        self.seq = 0
        self.tim = {}              # task_id -> [enqueued, handed out, result arrived, data.t0, data.t1]
        self.waiters = []          # [(results wanted, future)] of GET /_test/wait
        if getattr(self, "exec_task", None) is not None:
            self.exec_task.cancel()
        self.exec_q = None         # the executor's queue of handler retries (executor())
        self.exec_task = None

    # ---- workers ---------------------------------------------------------
    def wstats(self, wid):
        st = self.stats.get(wid)
        if st is None:
            st = self.stats[wid] = WorkerStats()
        return st

    def queue(self, wid):
        q = self.queues.get(wid)
        if q is None:
            q = self.queues[wid] = asyncio.PriorityQueue()
        return q

    def purge_expired(self):
        """MemoryStorage drops expired records on the next authenticated
        request (section 2.3); their task queues stay."""
        now = time.monotonic()
        for wid in [w for w, exp in self.ttl.items() if exp < now]:
            self.ttl.pop(wid, None)
            self.workers.pop(wid, None)

    def live_workers(self):
        now = time.monotonic()
        return [(w, r) for w, r in self.workers.items() if self.ttl.get(w, 0) > now]

    def store_worker(self, wid, record):
        """Register: the record REPLACES any earlier one (reputation 1.0
        unless the record has one), TTL armed, queue kept or created."""
        record.setdefault("reputation", 1.0)
        self.workers[wid] = record
        self.ttl[wid] = time.monotonic() + self.cfg.worker_ttl
        self.queue(wid)
        self.count("register")
        if self.pending:
            self.retry_pending()

    def sts_issue(self, wid):
        """A new access token for wid (2.5); only its sha256 is kept."""
        token = secrets.token_urlsafe(32)
        exp = time.monotonic() + self.cfg.sts_expires_in
        self.sts[hashlib.sha256(token.encode()).hexdigest()] = (wid, exp)
        self.count("sts_issued")
        return token

    def sts_owner(self, token):
        """The worker an unexpired access token belongs to, or None."""
        if not token:
            return None
        ent = self.sts.get(hashlib.sha256(token.encode()).hexdigest())
        if ent is None or ent[1] < time.monotonic():
            return None
        return ent[0]

    def auth(self, token, hint, cert_cn=None):
        """Section 1.1 (1.0b14: 1.3, same order); returns the authenticated
        identity or raises AuthError with the dialect's exact text."""
        if cert_cn:
            if hint and hint != cert_cn:
                raise AuthError(f"Unauthorized: Certificate CN '{cert_cn}' does not match worker_id '{hint}'")
            if self.cfg.sts_enforce and self.sts_owner(token) != cert_cn:
                raise AuthError("Unauthorized: access token missing or expired (sts_enforce)")
            return cert_cn
        if not token:
            raise AuthError(self.d.no_token_message)
        self.purge_expired()
        owner = self.sts_owner(token)
        if owner is not None:
            if hint and hint != owner:
                raise AuthError(f"Unauthorized: Access Token belongs to '{owner}', but request is for '{hint}'")
            return owner
        if not hint:
            if self.cfg.worker_token and token == self.cfg.worker_token:
                return GLOBAL_ID
            raise AuthError("Unauthorized: Invalid token or missing worker_id hint")
        own = self.cfg.worker_tokens.get(hint)
        if own:                     # an empty individual token counts as none (both versions)
            if token == own:
                return hint
            raise AuthError("Unauthorized: Invalid individual worker token")
        if self.cfg.worker_token and token == self.cfg.worker_token:
            return hint
        raise AuthError("Unauthorized: No valid token found")

    def identify(self, request, hint):
        """auth() with the request's X-Worker-Token and client certificate;
        request["auth_cred"] is then what 1.0b14's limiter keys on (the
        certificate CN or the token's sha256)."""
        token, cn = request.headers.get("X-Worker-Token"), peer_cn(request)
        ident = self.auth(token, hint, cn)
        request["auth_cred"] = cn or hashlib.sha256(token.encode()).hexdigest()
        return ident

    def rate_exceeded(self, key, limit):
        """The sliding limiter (1.3 / 1.0b14 1.6): every request re-arms the
        key's window, so it only resets after a silent period."""
        rl = self.cfg.rate_limit
        now = time.monotonic()
        ent = self.ratelimit.get(key)
        if ent is None or ent[1] < now:
            ent = self.ratelimit[key] = [0, 0]
        ent[0] += 1
        ent[1] = now + float(rl.get("period", 60))
        if ent[0] > limit:
            self.count("rate_limited")
            return True
        return False

    # ---- dispatch --------------------------------------------------------------
    def enqueue(self, job, wid, task_info):
        task_id, payload = self.d.task_payload(self, job, task_info)
        self.seq += 1
        if self.cfg.timings:
            # CLOCK_REALTIME, the clock the bench plugins stamp their data with.
            self.tim[task_id] = [time.time(), None, None, None, None]
        self.queue(wid).put_nowait((-float(task_info.get("priority") or 0), self.seq, payload))
        self.d.dispatched(self, job, wid, task_id)

    def dispatch(self, job, task_info):
        wid = job.opts.get("worker_id") or self.d.select_worker(self, task_info)
        self.enqueue(job, wid, task_info)

    def step_params(self, job, idx):
        spec = job.steps[idx]
        if spec.get("build") == "filters":
            return {"image_url": job.rec["state_history"].get("resized_url"), "filters": spec.get("filters")}
        if spec.get("params") is not None:
            return spec["params"]
        return {**(job.params or {}), **job.rec["state_history"]}

    def run_step(self, job, idx):
        """The executor running a state whose handler calls dispatch_task."""
        rec = job.rec
        job.step = idx
        job.params = self.step_params(job, idx)
        nxt = job.state_name(idx + 1) if idx + 1 < len(job.steps) else "finished"
        transitions = {"success": nxt, "failure": "failed", **(job.opts.get("transitions") or {})}
        o = job.opts
        job.task_info = {"type": job.steps[idx]["type"], "params": job.params, "transitions": transitions,
                         "priority": float(o.get("priority") or 0),
                         "timeout_seconds": o.get("timeout_seconds"),
                         "dispatch_timeout_seconds": o.get("dispatch_timeout_seconds"),
                         "result_timeout_seconds": o.get("result_timeout_seconds")}
        dd, rd, watch_at = self.d.step_deadlines(self, o)
        rec.update(current_state=job.state_name(idx), status="waiting_for_worker",
                   task_dispatched_at=time.monotonic(), current_task_transitions=transitions,
                   dispatch_deadline=dd, result_deadline=rd, execution_timeout_seconds=o.get("timeout_seconds"))
        self.set_watch(job.id, watch_at)
        try:
            self.dispatch(job, job.task_info)
        except Exception as e:
            self.handler_failed(job, e)

    def set_watch(self, job_id, at):
        """Arm the watcher for job_id; None = a deadline that never fires."""
        if at is None:
            self.watch.pop(job_id, None)
        else:
            self.watch[job_id] = at

    def handler_failed(self, job, err):
        """The executor's _handle_failure (avtomatika 1.0b13 executor.py:467-515,
        1.0b27 executor.py:610-659): the job goes back to the end of the
        executor's job queue as "awaiting_retry" and its handler runs again,
        JOB_MAX_RETRIES times at most, with no delay but behind what is queued
        (other requests, heartbeats among them, are served in between: see
        executor()); after that it is quarantined with str(error) (section 3.1).
        Every failed attempt counts as dispatch_failed in /_test/stats; one
        that found no idle worker listing the type is "No suitable workers"
        (1.0b13 storage/memory.py:181-193 and dispatcher.py:189-193, 1.0b27
        storage/memory.py:227-245 and dispatcher.py:324-335)."""
        self.count("dispatch_failed")
        if self.cfg.queue_when_no_worker and str(err).startswith("No suitable workers"):
            job.rec["status"] = "waiting_for_worker"
            job.rec["error_message"] = None
            self.pending.append(job)
            return
        rc = job.rec.get("retry_count", 0)
        if rc < self.cfg.max_retries:
            job.rec.update(retry_count=rc + 1, status="awaiting_retry", error_message=str(err))
            log.info("job %s: handler failed, retried (attempt %d): %s", job.id, rc + 1, err)
            self.exec_queue().put_nowait((job, job.step))
            return
        self.watch.pop(job.id, None)
        job.rec.update(retry_count=self.cfg.max_retries, status="quarantined", error_message=str(err))
        log.info("job %s quarantined: %s", job.id, err)

    def exec_queue(self):
        if self.exec_q is None:
            self.exec_q = asyncio.Queue()
            self.exec_task = asyncio.get_running_loop().create_task(self.executor(self.exec_q))
        return self.exec_q

    async def executor(self, q):
        """The job executor's loop for handler retries (1.0b13 executor.py:580-606,
        1.0b27 executor.py:728-): one job at a time off a FIFO; each retry is a
        fresh run of the state's handler, skipped if the job became terminal
        meanwhile (1.0b13 executor.py:101-103, 1.0b27 executor.py:86-88). Job
        creation does not go through it here (the fake dispatches at creation),
        only these retries."""
        while True:
            job, idx = await q.get()
            await asyncio.sleep(0)          # the real hop: dequeue, then a new task runs the job
            if self.jobs.get(job.id) is not job or job.rec.get("status") in TERMINAL:
                continue
            self.run_step(job, idx)

    def retry_pending(self):
        parked, self.pending = self.pending, []
        for job in parked:
            if job.rec.get("status") != "waiting_for_worker":
                continue
            try:
                self.dispatch(job, job.task_info)
            except RuntimeError:
                self.pending.append(job)

    def create_job(self, steps, opts, blueprint, initial_data):
        job_id = str(uuid.uuid4())
        rec = {"id": job_id, "blueprint_name": blueprint, "current_state": "start",
               "initial_data": initial_data, "state_history": {}, "status": "pending",
               "retry_count": 0, "error_message": None, "progress": None, "progress_message": None,
               "task_worker_id": None, "current_task_id": None, "results": []}
        self.d.init_job(rec)
        job = Job(job_id, rec, steps, opts)
        self.jobs[job_id] = job
        self.run_step(job, 0)
        return job

    def finish_transition(self, job, next_state):
        """A result moved the job to next_state: an end state or a next step."""
        idx = next((i for i in range(len(job.steps)) if job.state_name(i) == next_state and i > 0), None)
        if idx is not None:
            job.rec["current_state"] = next_state
            job.rec["status"] = "running"
            self.run_step(job, idx)
            return
        job.rec["current_state"] = next_state
        job.rec["status"] = "failed" if next_state == "failed" else "finished"

    def task_failure(self, job, message, task_id=None):
        """engine.handle_task_failure: re-dispatch at once (1.0b3: the SAME
        task id; 1.0b14: a new one), or quarantine after JOB_MAX_RETRIES
        retries (section 3.2)."""
        rec = job.rec
        if self.d.retry_skips_terminal and rec.get("status") in TERMINAL:
            return
        rc = rec.get("retry_count", 0)
        if rc >= self.cfg.max_retries:
            rec["status"] = "quarantined"
            rec["error_message"] = self.d.exhausted_message(self.cfg.max_retries + 1,
                                                            task_id or rec.get("current_task_id"), message)
            return
        rec["retry_count"] = rc + 1
        now = time.monotonic()
        rec["status"] = "waiting_for_worker"
        rec["task_dispatched_at"] = now
        self.watch[job.id] = self.d.retry_watch(self, rec, job.task_info, now)
        self.dispatch(job, job.task_info)     # may raise: the result then answers 500

    async def cancel_job(self, job_id):
        job = self.jobs.get(job_id)
        if job is None or job.rec.get("status") in TERMINAL:
            return False
        job.rec["status"] = "cancelled"
        wid = job.rec.get("task_worker_id")
        if job in self.pending:
            self.pending.remove(job)
        if wid:
            info = self.workers.get(wid)
            if info and (info.get("capabilities") or {}).get("websockets"):
                cmd = {"command": "cancel_task", "task_id": job.rec.get("current_task_id"), "job_id": job_id}
                await self.ws_send(wid, cmd)
        return True

    async def ws_send(self, wid, obj):
        ws = self.ws.get(wid)
        if ws is None or ws.closed:
            log.warning("Cannot send command: No active WebSocket connection for worker %s.", wid)
            return False
        try:
            await ws.send_str(json.dumps(obj) if not isinstance(obj, str) else obj)
        except Exception as e:
            log.error("Failed to send command to worker %s: %s", wid, e)
            return False
        self.log_entry("WS-SEND", "/_worker/ws/" + wid, wid, None, obj)
        return True

    # ---- the watcher (section 3.3) -------------------------------------------
    async def watcher(self):
        while True:
            await asyncio.sleep(self.cfg.watcher_interval)
            now = time.monotonic()
            for jid in [j for j, t in self.watch.items() if t <= now]:
                self.watch.pop(jid, None)
                job = self.jobs.get(jid)
                if job is not None:
                    try:
                        self.job_timeout(job)
                    except Exception as e:
                        log.error("timeout handling of job %s failed: %s", jid, e)

    def job_timeout(self, job):
        rec = job.rec
        if rec.get("status") in TERMINAL:
            return
        if rec.get("task_picked_up_at") is not None:
            self.task_failure(job, "Worker task timed out: execution/result deadline reached.",
                              str(rec.get("current_task_id") or job.id))
            return
        now = self.d.deadline_clock()  # the clock the dialect's deadlines are on
        dd, rd = rec.get("dispatch_deadline"), rec.get("result_deadline")
        msg = "Worker task timed out."
        if dd and now >= dd:
            msg = "Worker task timed out while waiting in queue (dispatch timeout)."
        elif rd and now >= rd:
            msg = "Worker task timed out: result deadline reached before pickup."
        rec["status"] = "failed"
        rec["error_message"] = msg

    # ---- request log ---------------------------------------------------------
    def log_entry(self, method, path, wid, status, body, headers=None, resp=None, resp_headers=None):
        if not self.cfg.log_requests:
            return
        self.reqlog.append({"t": round(time.monotonic() - self.t0, 6), "method": method, "path": path,
                            "kind": "ws", "worker_id": wid, "status": status, "body": body, "headers": headers or {},
                            "resp": resp, "resp_headers": resp_headers or {}})

    def count(self, name, n=1):
        self.counters[name] = self.counters.get(name, 0) + n
        if name == "result" and self.waiters:
            have = self.counters[name]
            for w in [w for w in self.waiters if w[0] <= have or w[1].done()]:
                self.waiters.remove(w)
                if not w[1].done():
                    w[1].set_result(have)

    def note_result(self, worker_id, task_id):
        """Stats: a result naming task_id arrived (any answer): the task is no
        longer outstanding for worker_id, or else for whoever had it."""
        st = self.stats.get(worker_id)
        if st is not None and st.answered(task_id):
            st.results += 1
            return
        for other in self.stats.values():
            if other.answered(task_id):
                other.results += 1
                break

    def stamp_result(self, task_id, arrived, data):
        """Timings: the result for task_id arrived at `arrived`; keep the
        handler's own start/end stamps (data.t0, data.t1) when it sent them."""
        row = self.tim.get(task_id) if isinstance(task_id, str) else None
        if row is None or row[2] is not None:
            return
        row[2] = arrived
        if isinstance(data, dict):
            row[3], row[4] = data.get("t0"), data.get("t1")


# --------------------------------------------------------------------------
# The 1.0b3 dialect (PROTOCOL.md): hooks for the shared core, and the worker
# endpoints below. The 1.0b14 one is rxon14.Dialect14.
# --------------------------------------------------------------------------
class Dialect3:
    """RXON 1.0b3 as avtomatika 1.0b13 serves it on MemoryStorage."""

    version = PROTOCOL_VERSION
    no_token_message = "Missing X-Worker-Token header or client certificate"
    client_dumps = staticmethod(dumps_compact)
    ws_unregister_quirk = True      # checked live against 1.0b13 (see ws_unregister)
    steals = False                  # no work stealing in 1.0b13
    rate_limit_in_handlers = False  # the per-IP/path limiter runs before the handlers (1.3)
    retry_skips_terminal = False

    def add_routes(self, r):
        r.add_post("/_worker/workers/register", h_register)
        r.add_get("/_worker/workers/{worker_id}/tasks/next", h_poll)
        r.add_post("/_worker/tasks/result", h_result)
        r.add_patch("/_worker/workers/{worker_id}", h_heartbeat)
        r.add_post("/_worker/auth/token", h_sts)
        r.add_get("/_worker/ws", h_ws)
        r.add_get("/_worker/ws/{worker_id}", h_ws)

    def init_job(self, rec):
        pass

    @staticmethod
    def deadline_clock():
        return time.monotonic()

    def step_deadlines(self, o, opts):
        """(dispatch deadline, result deadline, watch time), all monotonic."""
        now = time.monotonic()
        dd = now + opts["dispatch_timeout_seconds"] if opts.get("dispatch_timeout_seconds") is not None else None
        rd = now + opts["result_timeout_seconds"] if opts.get("result_timeout_seconds") is not None else None
        deadlines = [d for d in (dd, rd) if d is not None]
        return dd, rd, min(deadlines) if deadlines else now + (opts.get("timeout_seconds") or o.cfg.task_timeout)

    def retry_watch(self, o, rec, task_info, now):
        deadlines = [d for d in (rec.get("dispatch_deadline"), rec.get("result_deadline")) if d is not None]
        return min(deadlines) if deadlines else now + (task_info.get("timeout_seconds") or o.cfg.task_timeout)

    @staticmethod
    def exhausted_message(attempts, task_id, message):
        return f"Task failed after {attempts} attempts: {message}"

    def task_payload(self, o, job, task_info):
        """task_id == job_id, stdlib key order, params_metadata always (2.2)."""
        return job.id, {"job_id": job.id, "task_id": job.id, "type": task_info["type"],
                        "params": task_info["params"], "tracing_context": {},
                        "params_metadata": job.rec.get("data_metadata")}

    def dispatched(self, o, job, wid, task_id):
        rec = o.workers.get(wid)
        if rec is not None:
            rec["load"] = rec.get("load", 0) + 1
        job.rec["current_task_id"] = task_id
        job.rec["task_worker_id"] = wid

    def select_worker(self, o, task_info):
        """Section 3.1: idle workers, hot_skills first, then hot_cache models,
        then supported_skills (strings); cheapest, random among equals."""
        ttype, params = task_info["type"], task_info["params"]
        idle = [r for _, r in o.live_workers() if r.get("status", "idle") == "idle"]
        cands = [r for r in idle if ttype in r.get("hot_skills", [])]
        model = params.get("model_name") if isinstance(params, dict) else None
        if not cands and model:
            cands = [r for r in idle if ttype in r.get("supported_skills", []) and model in r.get("hot_cache", [])]
        if not cands:
            cands = [r for r in idle if ttype in r.get("supported_skills", [])]
        if not cands:
            raise RuntimeError(f"No suitable workers for task type '{ttype}'")
        pool = ([r for r in cands if ttype in r.get("hot_skills", [])]
                or [r for r in cands if ttype in r.get("hot_cache", [])] or cands)
        low = min(r.get("cost", float("inf")) for r in pool)
        chosen = random.choice([r for r in pool if r.get("cost", float("inf")) == low])
        wid = chosen.get("worker_id")
        if not wid:
            raise RuntimeError(f"Selected worker for task '{ttype}' has no worker_id")
        return wid


def make_dialect(protocol):
    if protocol == "1.0b3":
        return Dialect3()
    if protocol == "1.0b14":
        import rxon14  # next to this file (the script's directory is on sys.path)
        return rxon14.Dialect14()
    raise ValueError("unknown protocol %r" % protocol)


# --------------------------------------------------------------------------
# 1.0b3 worker endpoints (section 2)
# --------------------------------------------------------------------------
def orch_of(request):
    return request.app["orch"]


def peer_cn(request):
    """The commonName of a verified client certificate, or None (1.2)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def auth_or_raise(o, request, hint):
    try:
        return o.auth(request.headers.get("X-Worker-Token"), hint, peer_cn(request))
    except AuthError as e:
        raise web.HTTPUnauthorized(text=str(e)) from e


def body_hint(payload):
    if isinstance(payload, dict) and "worker_id" in payload:
        return payload["worker_id"]
    return None


def rxon_endpoint(fn):
    """The RXON listener's envelope: HTTPException keeps its status with
    {"error": text}; anything else is 500 {"error": str(e)}."""
    async def wrapper(request):
        try:
            return await fn(request)
        except web.HTTPException as e:
            return worker_json({"error": e.text or str(e)}, status=e.status)
        except Exception as e:
            return worker_json({"error": str(e)}, status=500)
    return wrapper


@rxon_endpoint
async def h_register(request):
    o = orch_of(request)
    payload = await request.json(loads=json.loads)
    auth_or_raise(o, request, body_hint(payload))
    version = request.headers.get(VERSION_HEADER)
    warning = None
    if version and version != PROTOCOL_VERSION:
        warning = f"Protocol version mismatch! Orchestrator: {PROTOCOL_VERSION}, Worker: {version}."
    wid = payload.get("worker_id")
    if not wid:
        raise ValueError("Missing required field: worker_id")
    if not isinstance(wid, str) or not ID_RE.match(wid):
        raise ValueError(f"Invalid worker_id: '{wid}'. Must be alphanumeric, underscores, or hyphens only.")
    o.store_worker(wid, payload)
    return worker_json({"status": "registered", "version": PROTOCOL_VERSION, "warning": warning})


@rxon_endpoint
async def h_poll(request):
    o = orch_of(request)
    wid = request.match_info["worker_id"]
    ident = auth_or_raise(o, request, wid)
    st = o.wstats(ident)
    st.poll_begin()
    o.count("poll")
    try:
        try:
            _, _, task = await asyncio.wait_for(o.queue(ident).get(), timeout=o.cfg.poll_timeout)
        except asyncio.TimeoutError:
            return web.Response(status=204)
    finally:
        st.polls_now -= 1
    mark_picked_up(o, task)
    st.handout(task["task_id"], task["type"])
    if o.cfg.timings and task["task_id"] in o.tim:
        o.tim[task["task_id"]][1] = time.time()
    return worker_json(task)


def has_body(request):
    """request.can_read_body as the handler would have seen it (the log
    middleware may have read the body already)."""
    return request.get("had_body", request.can_read_body)


def mark_picked_up(o, task):
    """Pick-up side effects as the patched MemoryStorage has them (2.2, 3.3)."""
    job = o.jobs.get(task.get("job_id"))
    if job is None:
        return
    now = time.monotonic()
    rec = job.rec
    rec["task_picked_up_at"] = now
    rd = rec.get("result_deadline")
    o.watch[job.id] = rd if rd is not None else now + (rec.get("execution_timeout_seconds") or o.cfg.task_timeout)


@rxon_endpoint
async def h_heartbeat(request):
    o = orch_of(request)
    wid = request.match_info["worker_id"]
    payload = None
    if has_body(request):
        payload = await request.json(loads=json.loads)
    ident = auth_or_raise(o, request, wid)
    o.count("heartbeat")
    ttl = o.cfg.worker_ttl
    if not payload:
        if ident in o.workers:
            o.ttl[ident] = time.monotonic() + ttl
            return worker_json({"status": "ttl_refreshed"})
        return worker_json(None)
    resp = {"status": "ok"}
    rec = o.workers.get(ident)
    if rec is None:
        return worker_json(resp)
    rec.update(payload)
    o.ttl[ident] = time.monotonic() + ttl
    current = payload.get("current_tasks", [])
    if current:
        cancel = []
        for tid in current:
            job = o.jobs.get(tid)
            if job is None or job.rec.get("status") in TERMINAL | {"cancelled"}:
                cancel.append(tid)
        if cancel:
            resp["cancel_task_ids"] = cancel
    if o.pending and rec.get("status", "idle") == "idle":
        o.retry_pending()
    return worker_json(resp)


@rxon_endpoint
async def h_result(request):
    arrived = time.time()
    o = orch_of(request)
    payload = await request.json(loads=json.loads)
    ident = auth_or_raise(o, request, body_hint(payload))
    o.count("result")
    pw = payload.get("worker_id")
    task_id = payload.get("task_id")
    o.note_result(pw if isinstance(pw, str) else ident, task_id)
    job_id = payload.get("job_id")
    if not job_id or not task_id:
        raise ValueError("job_id and task_id are required")
    if o.cfg.timings:
        o.stamp_result(task_id, arrived, payload.get("data"))
    return worker_json(apply_result(o, payload, job_id, task_id))


def apply_result(o, payload, job_id, task_id):
    """worker_service.process_task_result for non-parallel tasks (2.4)."""
    job = o.jobs.get(job_id)
    if job is None:
        return {"status": "ignored", "reason": "job_not_found",
                "message": f"Job {job_id} not found (expired or deleted)."}
    rec = job.rec
    if o.cfg.keep_results:
        rec["results"].append(payload)
    cur = rec.get("current_task_id")
    if cur and cur != task_id:
        return {"status": "ignored", "reason": "stale_task",
                "message": f"Result ignored: task_id {task_id} is no longer active for job {job_id}."}
    status = rec.get("status")
    if status in TERMINAL:
        reason = "deadline_exceeded" if "timeout" in (rec.get("error_message") or "").lower() \
            else "job_already_terminated"
        return {"status": "ignored", "reason": reason,
                "message": f"Result ignored: the job is already in a terminal state ({status})."}
    o.watch.pop(job_id, None)
    rstatus = payload.get("status", "success")
    if rstatus == "failure":
        route_failure(o, job, payload.get("error", {}))
        return {"status": "accepted", "transition": "failure_handled"}
    if rstatus == "cancelled":
        rec["status"] = "cancelled"
        nxt = (rec.get("current_task_transitions") or {}).get("cancelled")
        if nxt:
            o.finish_transition(job, nxt)
        return {"status": "accepted", "transition": "cancelled_handled"}
    nxt = (rec.get("current_task_transitions") or {}).get(rstatus)
    if not nxt:
        rec["status"] = "failed"
        rec["error_message"] = f"Worker returned unhandled status: {rstatus}"
        return {"status": "accepted", "transition": "unhandled_status_failure"}
    data = payload.get("data")
    if data and isinstance(data, dict):
        rec.setdefault("state_history", {}).update(data)
    meta = payload.get("data_metadata")
    if meta:
        rec.setdefault("data_metadata", {}).update(meta)
    o.finish_transition(job, nxt)
    return {"status": "accepted", "transition": "success_transition"}


def route_failure(o, job, err):
    """Section 3.2: only error.code decides."""
    code, message = "TRANSIENT_ERROR", "No error details provided."
    if isinstance(err, dict):
        code = err.get("code", "TRANSIENT_ERROR")
        message = err.get("message", "No error message provided.")
    elif isinstance(err, str):
        message = err
    rec = job.rec
    if code in PERMANENT_CODES:
        rec["status"] = "quarantined"
        rec["error_message"] = f"Task failed with permanent error ({code}): {message}"
    elif code == "INVALID_INPUT_ERROR":
        rec["status"] = "failed"
        rec["error_message"] = f"Task failed due to invalid input: {message}"
    elif code == "INTEGRITY_MISMATCH_ERROR":
        rec["status"] = "failed"
        rec["error_message"] = f"Task failed due to data integrity mismatch: {message}"
    else:
        o.task_failure(job, message)


@rxon_endpoint
async def h_sts(request):
    """A verified client certificate gets a token for its CN; without one
    403, even with a valid token (2.5). sts_enforce does not apply here: the
    certificate alone is what obtains a token."""
    o = orch_of(request)
    cn = peer_cn(request)
    if cn is None:
        auth_or_raise(o, request, None)
        raise web.HTTPForbidden(text="Unauthorized: mTLS certificate required to issue access token.")
    token = o.sts_issue(cn)
    return worker_json({"access_token": token, "expires_in": int(o.cfg.sts_expires_in)
                        if o.cfg.sts_expires_in == int(o.cfg.sts_expires_in) else o.cfg.sts_expires_in,
                        "worker_id": cn})


async def h_ws(request):
    """Section 2.6: the handshake completes before auth. On failure aiohttp
    writes the HTTPUnauthorized as a plain HTTP/1.1 401 response into the
    upgraded stream (1.1). Checked live against 1.0b13: the bytes are the
    same and the server then does NOT close the connection (PROTOCOL.md says
    it closes); a client has to time out or close it itself."""
    o = orch_of(request)
    hint = request.match_info.get("worker_id")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        ident = o.auth(request.headers.get("X-Worker-Token"), hint, peer_cn(request))
    except AuthError as e:
        o.log_entry("WS-AUTH", request.path, hint, 401, None, resp=str(e))
        raise web.HTTPUnauthorized(text=str(e)) from e
    async with o.ws_lock:
        old = o.ws.get(ident)
        if old is not None:
            await old.close(code=1008, message=b"New connection established")
        o.ws[ident] = ws
    o.count("ws_connect")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                ws_text(o, ident, request.path, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        await ws_unregister(o, ident, ws)
    return ws


async def ws_unregister(o, ident, ws):
    """ws_manager.unregister deletes whatever socket is registered under the
    id. When a new socket replaces an old one, the old handler's unregister
    waits for the lock the registration holds and then removes the NEW
    socket: afterwards no command reaches the worker until it reconnects
    (O:ws_manager.py register/unregister; checked live against 1.0b13: a
    cancel after such a replacement is not pushed, one after a clean
    reconnect is). `ws_unregister_quirk: false` only removes the handler's
    own socket."""
    async with o.ws_lock:
        if o.ws.get(ident) is ws or (o.cfg.ws_unregister_quirk and ident in o.ws):
            del o.ws[ident]


def ws_text(o, ident, path, text):
    try:
        data = json.loads(text)
    except ValueError:
        log.error("Error processing WebSocket message from %s: not JSON", ident)
        o.log_entry("WS-RECV", path, ident, None, None, resp=text)
        return
    o.log_entry("WS-RECV", path, ident, None, data)
    if not isinstance(data, dict) or data.get("event") != "progress_update":
        return
    job = o.jobs.get(data.get("job_id"))
    o.count("progress")
    if job is not None:
        job.rec["progress"] = data.get("progress", 0)
        job.rec["progress_message"] = data.get("message", "")


# --------------------------------------------------------------------------
# Client API (/api/v1)
# --------------------------------------------------------------------------
def client_auth(request):
    want = orch_of(request).cfg.client_token
    if want is None:
        return None
    got = request.headers.get("X-Client-Token")
    if not got:
        return client_json(request, {"error": "Missing X-Client-Token header"}, status=401)
    if got != want:
        return client_json(request, {"error": "Unauthorized: Invalid token"}, status=401)
    return None


async def read_api_body(request):
    try:
        body = await request.json(loads=json.loads)
    except Exception:
        return None, client_json(request, {"error": "Invalid JSON body"}, status=400)
    if not isinstance(body, dict):
        return None, client_json(request, {"error": "Invalid JSON body"}, status=400)
    return body, None


async def api_create_job(request):
    """POST /api/v1/jobs {"type", "params", "priority"?, "timeout_seconds"?,
    "dispatch_timeout_seconds"?, "result_timeout_seconds"?, "pipeline"?: [type2, ...],
    "transitions"?: {status: state}, "worker_id"?: queue directly for this id}."""
    o = orch_of(request)
    denied = client_auth(request)
    if denied is not None:
        return denied
    body, err = await read_api_body(request)
    if err:
        return err
    ttype, params = body.get("type"), body.get("params", {})
    if not isinstance(ttype, str) or not isinstance(params, dict):
        return client_json(request, {"error": "type (string) and params (object) are required"}, status=400)
    steps = [{"type": ttype, "params": params}]
    steps += [{"type": t, "params": None, "state": "step%d_%s" % (i + 1, t)}
              for i, t in enumerate(body.get("pipeline") or [])]
    opts = {k: body.get(k) for k in ("priority", "timeout_seconds", "dispatch_timeout_seconds",
                                     "result_timeout_seconds", "transitions", "worker_id")}
    job = o.create_job(steps, opts, "fake:" + ttype, body)
    return client_json(request, {"status": "accepted", "job_id": job.id}, status=202)


async def api_blueprint(request):
    """POST /api/v1/jobs/{name} {"initial_data": {...}}: the harness blueprints."""
    o = orch_of(request)
    denied = client_auth(request)
    if denied is not None:
        return denied
    name = request.match_info["name"]
    if name not in BLUEPRINTS and name != "process-image":
        raise web.HTTPNotFound()
    body, err = await read_api_body(request)
    if err:
        return err
    d = body.get("initial_data", body)
    try:
        steps, opts = blueprint_job(name, d if isinstance(d, dict) else {})
    except ValueError as e:
        return client_json(request, {"error": str(e)}, status=400)
    job = o.create_job(steps, opts, name.replace("-", "_"), d)
    return client_json(request, {"status": "accepted", "job_id": job.id}, status=202)


async def api_get_job(request):
    denied = client_auth(request)
    if denied is not None:
        return denied
    job = orch_of(request).jobs.get(request.match_info["job_id"])
    if job is None:
        return client_json(request, {"error": "Job not found"}, status=404)
    return client_json(request, job.rec)


async def api_list_jobs(request):
    denied = client_auth(request)
    if denied is not None:
        return denied
    recs = [j.rec for j in orch_of(request).jobs.values()]
    counts = {}
    for r in recs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return client_json(request, {"jobs": recs, "counts": counts})


async def api_cancel(request):
    denied = client_auth(request)
    if denied is not None:
        return denied
    if not await orch_of(request).cancel_job(request.match_info["job_id"]):
        return client_json(request, {"error": "Job not found or already terminal."}, status=404)
    return client_json(request, {"status": "cancellation_request_accepted"})


async def api_workers(request):
    denied = client_auth(request)
    if denied is not None:
        return denied
    return client_json(request, [r for _, r in orch_of(request).live_workers()])


async def public_status(request):
    return client_json(request, {"status": "ok"})


# --------------------------------------------------------------------------
# Test control (/_test)
# --------------------------------------------------------------------------
async def t_reset(request):
    o = orch_of(request)
    for ws in list(o.ws.values()):
        await ws.close(code=1001, message=b"Server shutdown")
    o.ws.clear()
    o.reset_state()
    return api_json({"status": "reset"})


async def t_fault(request):
    """POST /_test/fault {"kind", "count"=1, "mode"="respond", "status", "body",
    "raw", "headers", "delay", "process", "extra"}: see USAGE. Read past
    aiohttp's 1 MiB request limit, which the worker endpoints keep like the
    real orchestrator: a fault may carry a large answer (a 15 MiB raw)."""
    o = orch_of(request)
    f = json.loads(await request.content.read())
    kind = f.get("kind")
    mode = f.setdefault("mode", "respond")
    if kind not in FAULT_KINDS or mode not in ("respond", "malformed", "truncate", "slow", "drop"):
        return api_json({"error": "bad kind or mode"}, status=400)
    f["count"] = int(f.get("count", 1))
    o.faults[kind].append(f)
    return api_json({"status": "ok", "queued": len(o.faults[kind])})


async def t_faults(request):
    o = orch_of(request)
    if request.method == "DELETE":
        o.faults = {k: [] for k in FAULT_KINDS}
    return api_json(o.faults)


async def t_expire(request):
    o = orch_of(request)
    body = await request.json()
    if body.get("sts"):  # every access and refresh token runs out now
        n = len(o.sts) + len(o.sts_refresh)
        o.sts.clear()
        o.sts_refresh.clear()
        return api_json({"status": "expired", "tokens": n})
    wid = body.get("worker_id")
    known = wid in o.workers
    o.ttl[wid] = time.monotonic() - 1
    o.purge_expired()
    return api_json({"status": "expired", "was_registered": known})


async def t_config(request):
    o = orch_of(request)
    if request.method == "POST":
        try:
            o.cfg.update(await request.json())
        except (ValueError, TypeError) as e:
            return api_json({"error": str(e)}, status=400)
    return api_json(o.cfg.snapshot())


async def t_log(request):
    o = orch_of(request)
    since = int(request.query.get("since", 0))
    path = request.query.get("path")
    rows = o.reqlog[since:]
    if path:
        rows = [r for r in rows if path in r["path"]]
    return api_json(rows)


async def t_stats(request):
    o = orch_of(request)
    jobs = {}
    for j in o.jobs.values():
        jobs[j.rec["status"]] = jobs.get(j.rec["status"], 0) + 1
    return api_json({"workers": {w: s.as_dict() for w, s in o.stats.items()}, "counters": o.counters,
                     "jobs": jobs, "queued": {w: q.qsize() for w, q in o.queues.items() if q.qsize()},
                     "ws_connected": sorted(w for w, s in o.ws.items() if not s.closed),
                     "pending": len(o.pending)})


async def t_prequeue(request):
    """POST /_test/prequeue {"worker_id", "type", "params"?, "count"?=1,
    "priority"?, "timeout_seconds"?}: jobs queued straight onto that worker's
    queue (registered or not), as dispatch would have done earlier."""
    o = orch_of(request)
    b = await request.json()
    ids = []
    for _ in range(int(b.get("count", 1))):
        opts = {"priority": b.get("priority"), "timeout_seconds": b.get("timeout_seconds"),
                "worker_id": b["worker_id"], "transitions": b.get("transitions")}
        job = o.create_job([{"type": b["type"], "params": b.get("params") or {}}], opts, "fake:prequeue", b)
        ids.append(job.id)
    return api_json({"job_ids": ids})


async def t_wait(request):
    """GET /_test/wait?results=N&timeout=S: answers once N results (any
    status) have arrived since the last reset, or after S seconds; the body
    is {"results": count so far}. Lets a benchmark wait without polling."""
    o = orch_of(request)
    want = int(request.query.get("results", 1))
    if o.counters.get("result", 0) < want:
        fut = asyncio.get_running_loop().create_future()
        o.waiters.append((want, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), float(request.query.get("timeout", 60)))
        except asyncio.TimeoutError:
            fut.cancel()
    return api_json({"results": o.counters.get("result", 0)})


async def t_timings(request):
    """GET /_test/timings: [[task_id, enqueued, handed_out, result_arrived,
    t0, t1]] of every task whose result arrived (time.time() seconds; t0/t1
    from the result's data or null); DELETE forgets them all."""
    o = orch_of(request)
    if request.method == "DELETE":
        o.tim = {}
        return api_json([])
    return api_json([[k] + v for k, v in o.tim.items() if v[2] is not None])


async def t_ws_send(request):
    """POST /_test/ws/send {"worker_id", "message": object|string}."""
    o = orch_of(request)
    b = await request.json()
    ok = await o.ws_send(b["worker_id"], b["message"])
    return api_json({"sent": ok})


async def t_ws_close(request):
    """POST /_test/ws/close {"worker_id", "code"?=1001}."""
    o = orch_of(request)
    b = await request.json()
    ws = o.ws.get(b["worker_id"])
    if ws is None:
        return api_json({"closed": False})
    await ws.close(code=int(b.get("code", 1001)), message=b"closed by test")
    return api_json({"closed": True})


# --------------------------------------------------------------------------
# Middlewares: request log -> faults -> compression -> rate limit -> version
# --------------------------------------------------------------------------
def route_kind(request):
    p, m = request.path, request.method
    if p.startswith("/_worker/"):
        if p == "/_worker/workers/register":
            return "register"
        if p.endswith("/tasks/next"):
            return "poll"
        if p == "/_worker/tasks/result":
            return "result"
        if p == "/_worker/events":
            return "event"
        if p.startswith("/_worker/ws"):
            return "ws"
        if p in ("/_worker/auth/token", "/_worker/auth/token/refresh"):
            return "sts"
        if m == "PATCH":
            return "heartbeat"
        return "worker"
    if p.startswith("/api/"):
        return "api"
    if p.startswith("/_public/"):
        return "public"
    if p.startswith("/_test"):
        return "test"
    return "other"


def parse_body(raw):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


@web.middleware
async def mw_log(request, handler):
    o = orch_of(request)
    kind = route_kind(request)
    if kind in ("test", "other", "api", "public") or not o.cfg.log_requests:
        return await handler(request)
    request["had_body"] = request.can_read_body
    raw = await request.read() if request["had_body"] else b""
    body = parse_body(raw)
    wid = request.match_info.get("worker_id") or (body.get("worker_id") if isinstance(body, dict) else None)
    row = {"t": round(time.monotonic() - o.t0, 6), "method": request.method, "path": request.path,
           "kind": kind, "worker_id": wid, "status": None, "body": body,
           "headers": {h: request.headers[h] for h in LOGGED_HEADERS if h in request.headers},
           "resp": None, "resp_headers": {}}
    o.reqlog.append(row)
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        row["status"] = e.status
        raise
    except asyncio.CancelledError:
        row["status"] = "client_gone"
        raise
    row["status"] = request.get("fault_status", resp.status)
    if isinstance(resp, web.Response) and resp.body is not None and "Content-Encoding" not in resp.headers:
        row["resp"] = parse_body(resp.body) if isinstance(resp.body, bytes) else None
    row["resp_headers"] = {h: resp.headers[h] for h in LOGGED_RESP_HEADERS if h in resp.headers}
    return resp


def take_fault(o, kind):
    """The next queued fault for this kind of request; "any" matches every
    worker endpoint (not the client API nor /_public)."""
    for k in (kind, "any"):
        queue = o.faults.get(k)
        if not queue or (k == "any" and kind in ("api", "public")):
            continue
        f = queue[0]
        f["count"] -= 1
        if f["count"] <= 0:
            queue.pop(0)
        return f
    return None


def fault_response(f):
    status = f.get("status") or 200
    headers = dict(f.get("headers") or {})
    if "raw" in f:
        body = f["raw"].encode()
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return web.Response(status=status, body=body, headers=headers)
    if f["mode"] == "malformed":
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return web.Response(status=status, body=b'{"status": "acc', headers=headers)
    if "body" not in f:
        return web.Response(status=status, headers=headers)
    return web.json_response(f["body"], status=status, headers=headers)


def write_truncated(request, f):
    body = (f.get("raw") or json.dumps(f.get("body", {"status": "ok"}))).encode()
    part = body[: max(1, len(body) // 2)]
    status = f.get("status") or 200
    head = "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" \
           % (status, "OK" if status == 200 else "Fault", len(body) + int(f.get("extra", 100)))
    for k, v in (f.get("headers") or {}).items():
        head += "%s: %s\r\n" % (k, v)
    request.transport.write(head.encode() + b"\r\n" + part)
    request.transport.close()


@web.middleware
async def mw_fault(request, handler):
    """Injected faults, consumed one request at a time (see USAGE)."""
    o = orch_of(request)
    kind = route_kind(request)
    f = take_fault(o, kind) if kind not in ("test", "other") else None
    if f is None:
        return await handler(request)
    o.count("fault_" + f["mode"])
    if f.get("delay"):
        await asyncio.sleep(float(f["delay"]))
    if f["mode"] == "slow" and not f.get("status"):
        return await handler(request)
    if f.get("process"):
        try:
            await handler(request)
        except web.HTTPException:
            pass
    if f["mode"] in ("drop", "truncate"):
        if f["mode"] == "truncate":
            write_truncated(request, f)
        request.transport.close()
        request["fault_status"] = f["mode"]
        return web.Response(status=499)
    request["fault_status"] = f.get("status") or 200
    return fault_response(f)


@web.middleware
async def mw_compress(request, handler):
    """gzip for bodies >= 500 bytes when Accept-Encoding allows (section 1);
    the rebuilt response loses X-RXON-Version like the real one. zstd is not
    offered: a client accepting only zstd gets identity."""
    resp = await handler(request)
    accept = request.headers.get("Accept-Encoding", "").lower()
    if (isinstance(resp, web.WebSocketResponse) or "gzip" not in accept or not orch_of(request).cfg.gzip
            or "Content-Encoding" in resp.headers or not isinstance(getattr(resp, "body", None), bytes)
            or len(resp.body) < 500):
        return resp
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as g:
        g.write(resp.body)
    new = web.Response(body=buf.getvalue(), status=resp.status, reason=resp.reason,
                       headers={"Content-Encoding": "gzip"})
    if resp.content_type is not None:
        new.content_type = resp.content_type
    if resp.charset is not None:
        new.charset = resp.charset
    return new


@web.middleware
async def mw_ratelimit(request, handler):
    """Optional simulation of the sliding limiter of section 1.3; with
    `retry_after` set it also sends Retry-After (the real one never does).
    /_public/* is limited like the client API (per IP and path; PROTOCOL.md
    1.3 [G4], PROTOCOL-1.0b14.md 1.6). In 1.0b14 the worker routes are limited
    inside the handlers, after authentication (rxon14.check_rate)."""
    o = orch_of(request)
    rl = o.cfg.rate_limit
    kind = route_kind(request)
    if not rl or kind in ("test", "other") or (o.d.rate_limit_in_handlers and kind not in ("api", "public")):
        return await handler(request)
    key = "%s:%s" % (request.match_info.get("worker_id") or request.remote, request.path)
    limit = rl.get("poll_limit", 60) if "tasks/next" in request.path else rl.get("limit", 100)
    if o.rate_exceeded(key, limit):
        headers = {"Retry-After": str(rl["retry_after"])} if rl.get("retry_after") is not None else None
        return web.json_response({"error": "Too Many Requests"}, status=429, headers=headers)
    return await handler(request)


@web.middleware
async def mw_version(request, handler):
    resp = await handler(request)
    o = orch_of(request)
    resp.headers[VERSION_HEADER] = o.d.version
    if o.cfg.clock_offset:
        resp.headers["Date"] = email.utils.formatdate(time.time() + o.cfg.clock_offset, usegmt=True)
    return resp


# --------------------------------------------------------------------------
# Application and CLI
# --------------------------------------------------------------------------
async def t_help(_request):
    return web.Response(text=USAGE)


def make_app(orch):
    app = web.Application(middlewares=[mw_log, mw_fault, mw_compress, mw_ratelimit, mw_version])
    app["orch"] = orch
    r = app.router
    orch.d.add_routes(r)
    r.add_post("/api/v1/jobs", api_create_job)
    r.add_get("/api/v1/jobs", api_list_jobs)
    r.add_get("/api/v1/jobs/{job_id}", api_get_job)
    r.add_post("/api/v1/jobs/{job_id}/cancel", api_cancel)
    r.add_post("/api/v1/jobs/{name}", api_blueprint)
    r.add_get("/api/v1/workers", api_workers)
    r.add_get("/_public/status", public_status)
    r.add_post("/_test/reset", t_reset)
    r.add_post("/_test/fault", t_fault)
    r.add_route("*", "/_test/faults", t_faults)
    r.add_post("/_test/expire", t_expire)
    r.add_route("*", "/_test/config", t_config)
    r.add_get("/_test/log", t_log)
    r.add_get("/_test/stats", t_stats)
    r.add_post("/_test/prequeue", t_prequeue)
    r.add_get("/_test/wait", t_wait)
    r.add_route("*", "/_test/timings", t_timings)
    r.add_post("/_test/ws/send", t_ws_send)
    r.add_post("/_test/ws/close", t_ws_close)
    r.add_get("/_test/help", t_help)
    return app


def parse_args(argv):
    p = argparse.ArgumentParser(description="Protocol-faithful fake Avtomatika orchestrator: 1.0b13 (RXON 1.0b3) "
                                "or 1.0b27 (RXON 1.0b14), one dialect per process.",
                                epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, default=os.environ.get("AVT_FAKE_PROTOCOL") or "1.0b3",
                   help="the worker protocol dialect (env AVT_FAKE_PROTOCOL; default 1.0b3)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 = an ephemeral port")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--worker-token", default=os.environ.get("AVT_WORKER_TOKEN", "worker-token"))
    p.add_argument("--workers-toml", default=os.environ.get("AVT_WORKERS_TOML"),
                   help="individual tokens: a workers.toml path or its text")
    p.add_argument("--client-token", default=None, help="require this X-Client-Token on /api/v1")
    p.add_argument("--poll-timeout", type=float, default=30.0, help="long-poll hold, s")
    p.add_argument("--worker-ttl", type=float, default=120.0)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--task-timeout", type=float, default=300.0)
    p.add_argument("--watcher-interval", type=float, default=1.0)
    p.add_argument("--queue-when-no-worker", action="store_true")
    p.add_argument("--fast", action="store_true", help="no request log, no result bodies kept")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to")
    p.add_argument("--require-client-cert", action="store_true",
                   help="refuse connections without a client certificate (else optional)")
    p.add_argument("--sts-expires-in", type=float, default=3600.0,
                   help="lifetime of STS access tokens, s")
    args = p.parse_args(argv)
    if args.protocol not in PROTOCOLS:  # a default from the environment is not checked by argparse
        p.error("unknown protocol %r (AVT_FAKE_PROTOCOL?): use one of %s" % (args.protocol, ", ".join(PROTOCOLS)))
    return args


def tls_context(args):
    """TLS_ENABLED=true (X:security.py): the server certificate, and with a
    CA client certificates: required or optional (then verified if sent)."""
    if not args.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_ca:
        ctx.load_verify_locations(args.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if args.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


async def serve(args):
    dialect = make_dialect(args.protocol)
    orch = FakeOrch(Settings(args, dialect), dialect)
    app = make_app(orch)

    async def close_sockets(_app):
        for ws in list(orch.ws.values()):
            await ws.close(code=1001, message=b"Server shutdown")

    app.on_shutdown.append(close_sockets)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=0.5, reuse_address=True,
                       ssl_context=tls_context(args))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    log.warning("fakeorch listening on %s://%s:%d (protocol %s, poll hold %.1fs, fast=%s)",
                "https" if args.tls_cert else "http", args.host, port, args.protocol, args.poll_timeout, args.fast)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(orch.watcher())
    await stop.wait()
    watcher.cancel()
    await runner.cleanup()
    log.warning("fakeorch stopped")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = "WARNING" if args.fast and args.log_level == "INFO" else args.log_level
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s fakeorch %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    asyncio.run(serve(args))


USAGE = """
Dialects: one per process, --protocol (env AVT_FAKE_PROTOCOL), shown by GET /_test/config.
  1.0b3   avtomatika 1.0b13 (PROTOCOL.md): routes register, poll, result, heartbeat, auth/token,
          ws and ws/{id}; 401 auth errors, 500 for bad bodies, task_id == job_id, no signatures.
  1.0b14  avtomatika 1.0b27 (PROTOCOL-1.0b14.md): + POST /_worker/events, /_worker/auth/token/refresh,
          only ws/{id}; X-Worker-ID hints, 403/400, signed bodies (timestamp + security, HMAC of
          canon14.canonical with the worker's individual token else the global one), SkillInfo
          objects, task-<uuid4> per dispatch and retry, worker_mismatch, stealing, STS refresh.
Both answer GET /_public/status 200 {"status":"ok"} with their X-RXON-Version.

Control API (no auth; JSON in and out; the same in both dialects):

POST /_test/reset                 forget workers, queues, jobs, faults, log, stats; close sockets (1001)
POST /_test/fault {kind, ...}     the next `count` requests of `kind` (register, poll, heartbeat, result,
                                  event, ws, sts, api, public, any) get a fault instead of (or after) normal
                                  handling ("any": every worker endpoint; "public": /_public/*):
    mode "respond"  (default) answer `status` with JSON `body` (or `raw` text verbatim) and `headers`
    mode "malformed" answer `status` (200) with a body that is not JSON
    mode "truncate" declare Content-Length `extra` (100) bytes more than sent, send half, close
    mode "slow"     sleep `delay` s, then handle normally (or answer `status` if given)
    mode "drop"     close the connection without answering
    `delay` s before any mode; `process: true` runs the real handler first (its side effects
    happen, e.g. a result is applied) and then applies the fault to the answer.
GET|DELETE /_test/faults          list / clear queued faults
POST /_test/expire {worker_id}    the worker's TTL lapses now (record purged, queue kept)
POST /_test/expire {sts: true}    every STS access and refresh token runs out now
GET|POST /_test/config {...}      poll_timeout, worker_ttl, max_retries, task_timeout, watcher_interval,
                                  queue_when_no_worker, log_requests, keep_results, ws_unregister_quirk,
                                  client_token, worker_token, worker_tokens {id: token}, gzip, timings,
                                  rate_limit {limit, poll_limit, heartbeat_limit, period, retry_after} | null
                                  (1.0b3: per IP/path id before the handler; 1.0b14: per credential, worker
                                  and message type after auth, 429 double-encoded), sts_expires_in,
                                  sts_enforce (certificate AND live access token), steal (1.0b14 work
                                  stealing, default on), clock_offset (s the server's clock runs ahead:
                                  its Date header and the zero-trust check); protocol is read-only
GET /_test/log?since=N&path=S     request log rows {t, method, path, kind, worker_id, status, body,
                                  headers, resp, resp_headers}; WebSocket frames as WS-RECV / WS-SEND
GET /_test/stats                  per worker: polls, polls_outstanding, max_polls_outstanding,
                                  max_committed (tasks outstanding + polls in flight, at most, as
                                  seen when a poll arrives: never above the worker's slots),
                                  polls_while_outstanding {N: polls}, handouts, outstanding(_by_type),
                                  max_outstanding(_by_type), results (by task id); counters; jobs by status
                                  (counters.dispatch_failed: handler runs whose dispatch raised, e.g.
                                  "No suitable workers": retried via the executor, then quarantined)
POST /_test/prequeue {worker_id, type, params, count, priority, timeout_seconds}
GET /_test/wait?results=N&timeout=S        answer once N results arrived (or after S s): {results}
GET|DELETE /_test/timings         with config timings=true: [task_id, enqueued, handed_out, result_arrived,
                                  t0, t1] per answered task (time.time(); t0/t1 = the result data's)
POST /_test/ws/send {worker_id, message}   push any frame to a connected worker
POST /_test/ws/close {worker_id, code}     close a worker's socket
"""

if __name__ == "__main__":
    main()
