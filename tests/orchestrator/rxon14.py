"""rxon14: fakeorch's RXON 1.0b14 dialect (avtomatika 1.0b27 on MemoryStorage).

Loaded by fakeorch.py when it runs with --protocol 1.0b14. Section numbers
refer to /work/shared/PROTOCOL-1.0b14.md. What lives here is only what
differs from 1.0b3: the worker endpoints, zero-trust verification, the
msgspec-like validation of registrations, results and events, the
dispatcher's candidate search and compliance checks, task payloads with
task-<uuid4> ids, pick-up/retry bookkeeping on MemoryStorage's clocks and
work stealing. Jobs, the watcher, faults, the request log, statistics, the
control API, TLS, gzip and the rate limiter's counters stay in fakeorch.py
and reach this module through the FakeOrch object (`o`) that every hook and
handler gets. No orchestrator or RXON code is copied; where the document and
the real code differ, the code won (noted as "code:" in the comments).

Checked on 2026-12-07 by sending the same ~200 requests (auth, zero trust,
validation, heartbeats, dispatch, results, events, STS, WebSocket, timeouts,
rate limits) to the real 1.0b27 of orchestrator-head/orchestrator.py and to
this dialect: every status, version header and (id-normalized) body equal,
except the fake-only parts (job records, /_test).
"""
import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
import uuid

from aiohttp import WSMsgType, web

import canon14

VERSION = "1.0b14"
GHOST = "ghost"                 # an internal identity: never verified (2.1)
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
TERMINAL = {"finished", "failed", "error", "quarantined"}
STANDARD_STATUSES = {"success", "failure", "cancelled"}
# error.code -> reputation penalty; these codes quarantine without retry (3.4, 5.5)
PENALTY = {"PERMANENT_ERROR": 0.05, "SECURITY_ERROR": 0.05, "DEPENDENCY_ERROR": 0.05,
           "CONTRACT_VIOLATION_ERROR": 0.2}
CONTRACT_PENALTY = 0.2
REPUTATION_REWARD = 0.001
REPUTATION_MIN = 0.3
REFRESH_TTL = 86400.0
TOO_MANY = json.dumps({"error": "Too Many Requests"})   # the engine's body, wrapped again: double-encoded

log = logging.getLogger("fakeorch")


# --------------------------------------------------------------------------
# msgspec-like models (3.1, 3.4, 3.5): the orchestrator converts bodies into
# RXON structs; unknown keys are dropped, types enforced, and the struct is
# turned back into a dict without null members and default values.
# --------------------------------------------------------------------------
REQUIRED = object()
STR, INT, FLOAT, BOOL, ANY = "str", "int", "float", "bool", "any"


def opt(t):
    return ("opt", t)


def list_of(t):
    return ("list", t)


def dict_of(t):
    return ("dict", t)


class Model:
    def __init__(self, name, *fields):
        self.name = name
        self.fields = fields    # (name, type, default or REQUIRED), in definition order


SECURITY = Model("SecurityContext", ("signature", opt(STR), None), ("signer_id", opt(STR), None),
                 ("identity_chain", opt(list_of(STR)), None), ("metadata", opt(dict_of(ANY)), None))
SKILL = Model("SkillInfo", ("name", STR, REQUIRED), ("type", opt(STR), None), ("description", opt(STR), None),
              ("version", opt(STR), None), ("input_schema", opt(dict_of(ANY)), None),
              ("output_schema", opt(dict_of(ANY)), None), ("events_schema", opt(dict_of(dict_of(ANY))), None),
              ("output_statuses", opt(list_of(STR)), None), ("schema_dialect", STR, "json-schema"),
              ("properties", opt(dict_of(ANY)), None))
DEVICE = Model("HardwareDevice", ("type", STR, REQUIRED), ("model", opt(STR), None), ("id", opt(STR), None),
               ("properties", opt(dict_of(ANY)), None), ("metrics", opt(dict_of(ANY)), None))
RESOURCES = Model("Resources", ("devices", opt(list_of(DEVICE)), None), ("properties", opt(dict_of(ANY)), None))
ARTIFACT = Model("InstalledArtifact", ("name", STR, REQUIRED), ("version", STR, "unknown"),
                 ("type", opt(STR), None), ("properties", opt(dict_of(ANY)), None))
CAPABILITIES = Model("WorkerCapabilities", ("hostname", STR, "unknown"), ("ip_address", STR, "0.0.0.0"),
                     ("cost_per_skill", opt(dict_of(FLOAT)), None), ("s3_config_hash", opt(STR), None),
                     ("extra", opt(dict_of(ANY)), None))
REGISTRATION = Model("WorkerRegistration", ("worker_id", STR, REQUIRED), ("worker_type", STR, "generic"),
                     ("supported_skills", opt(list_of(SKILL)), None), ("available_skills", opt(list_of(STR)), None),
                     ("hot_skills", opt(list_of(STR)), None), ("resources", opt(RESOURCES), None),
                     ("installed_software", opt(dict_of(STR)), None),
                     ("installed_artifacts", opt(list_of(ARTIFACT)), None),
                     ("capabilities", opt(CAPABILITIES), None), ("skills_hash", opt(STR), None),
                     ("security", opt(SECURITY), None), ("metadata", opt(dict_of(ANY)), None),
                     ("timestamp", opt(INT), None))
FILE_META = Model("FileMetadata", ("uri", STR, REQUIRED), ("size", INT, 0), ("etag", opt(STR), None),
                  ("metadata", opt(dict_of(ANY)), None))
TASK_ERROR = Model("TaskError", ("code", STR, REQUIRED), ("message", STR, REQUIRED),
                   ("details", opt(dict_of(ANY)), None))
TASK_RESULT = Model("TaskResult", ("job_id", STR, REQUIRED), ("task_id", STR, REQUIRED),
                    ("worker_id", opt(STR), None), ("origin_worker_id", opt(STR), None), ("status", STR, "success"),
                    ("data", opt(dict_of(ANY)), None), ("error", opt(TASK_ERROR), None),
                    ("data_metadata", opt(dict_of(FILE_META)), None), ("security", opt(SECURITY), None),
                    ("metadata", opt(dict_of(ANY)), None), ("timestamp", opt(INT), None))
EVENT = Model("WorkerEventPayload", ("event_id", STR, REQUIRED), ("worker_id", STR, REQUIRED),
              ("origin_worker_id", STR, REQUIRED), ("event_type", STR, REQUIRED), ("payload", dict_of(ANY), REQUIRED),
              ("origin_task_id", opt(STR), None), ("bubbling_chain", opt(list_of(STR)), None),
              ("target_job_id", opt(STR), None), ("target_task_id", opt(STR), None),
              ("trace_context", opt(dict_of(STR)), None), ("priority", FLOAT, 0.0), ("timestamp", opt(INT), None),
              ("security", opt(SECURITY), None), ("metadata", opt(dict_of(ANY)), None))


def _jtype(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    for t, name in ((int, "int"), (float, "float"), (str, "str"), (dict, "object"), (list, "array")):
        if isinstance(v, t):
            return name
    return type(v).__name__


def _tname(tp):
    if isinstance(tp, Model) or (isinstance(tp, tuple) and tp[0] == "dict"):
        return "object"
    if isinstance(tp, tuple) and tp[0] == "list":
        return "array"
    return tp


def _at(path):
    return " - at `%s`" % path if path != "$" else ""


def convert(value, tp, path="$"):
    """msgspec.convert(value, tp) followed by to_builtins with omit_defaults:
    raises ValueError with msgspec's wording ("Expected `object`, got `str`
    - at `$.supported_skills[0]`", "Object missing required field `job_id`").
    Lax like the harness's msgspec: int accepts integral floats, float ints."""
    if tp == ANY:
        return value
    if isinstance(tp, Model):
        if not isinstance(value, dict):
            raise ValueError("Expected `object`, got `%s`%s" % (_jtype(value), _at(path)))
        out = {}
        for name, ftype, default in tp.fields:
            if name in value:
                v = convert(value[name], ftype, "%s.%s" % (path, name))
                if default is REQUIRED or not (v is default or v == default):
                    out[name] = v
            elif default is REQUIRED:
                raise ValueError("Object missing required field `%s`%s" % (name, _at(path)))
        return out
    kind = tp[0] if isinstance(tp, tuple) else tp
    if kind == "opt":
        return None if value is None else convert(value, tp[1], path)
    if kind == "list":
        if not isinstance(value, list):
            raise ValueError("Expected `array`, got `%s`%s" % (_jtype(value), _at(path)))
        return [convert(v, tp[1], "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError("Expected `object`, got `%s`%s" % (_jtype(value), _at(path)))
        return {k: convert(v, tp[1], path + "[...]") for k, v in value.items()}
    ok = {BOOL: isinstance(value, bool),
          STR: isinstance(value, str),
          INT: (isinstance(value, int) and not isinstance(value, bool))
          or (isinstance(value, float) and value.is_integer()),
          FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    if not ok:
        raise ValueError("Expected `%s`, got `%s`%s" % (_tname(tp), _jtype(value), _at(path)))
    if kind == INT:
        return int(value)
    if kind == FLOAT:
        return float(value)
    return value


def validate(model, payload):
    """rxon's to_dict(from_dict(Model, payload)): the stored/used form."""
    try:
        return canon14.to_dict(convert(payload, model))
    except ValueError as e:
        raise ValueError("Failed to instantiate %s: %s" % (model.name, e)) from None


# --------------------------------------------------------------------------
# A minimal JSON-schema check (type, required, properties, items, enum) with
# the messages of rxon's translate_error (3.1 input/output schemas, 3.5).
# --------------------------------------------------------------------------
_JS_TYPES = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
             "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
             "null": lambda v: v is None,
             "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
             or isinstance(v, float) and v.is_integer(),
             "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}


def schema_error(data, schema, path=()):
    """None when data fits schema, else the orchestrator's message."""
    if not isinstance(schema, dict) or not schema:
        return None
    prefix = "".join("Field '%s': " % p for p in path)
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_JS_TYPES.get(t, lambda v: True)(data) for t in names):
            want = " or ".join(names)
            if path and str(path[-1]).isdigit():
                return "%sItem at index %s: Expected %s" % ("".join("Field '%s': " % p for p in path[:-1]),
                                                             path[-1], want)
            return "%sExpected %s%s" % (prefix, want, ", got null" if data is None else "")
    if "enum" in schema and data not in schema["enum"]:
        return "%sValue '%s' is not allowed. Must be one of: %s" % (prefix, data, schema["enum"])
    if isinstance(data, dict):
        for r in schema.get("required") or []:
            if r not in data:
                return "%sMissing required field: '%s'" % (prefix, r)
        for k, sub in (schema.get("properties") or {}).items():
            if k in data:
                err = schema_error(data[k], sub, path + (k,))
                if err:
                    return err
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(data):
            err = schema_error(v, schema["items"], path + (str(i),))
            if err:
                return err
    return None


# --------------------------------------------------------------------------
# The dialect: hooks for fakeorch's shared core
# --------------------------------------------------------------------------
class Dialect14:
    """RXON 1.0b14 as avtomatika 1.0b27 serves it on MemoryStorage."""

    version = VERSION
    no_token_message = "Unauthorized: Missing X-Worker-Token header or client certificate."
    # code: ws_manager has no lock any more; the old socket's handler ends (and
    # unregisters ITSELF) before register() stores the new one, and aiohttp
    # closes the old socket with 1000 on the way out (E8 saw 1000).
    ws_unregister_quirk = False
    steals = True                   # MemoryStorage steals after an empty hold (5.2)
    rate_limit_in_handlers = True   # counted after authentication (1.6)
    retry_skips_terminal = True

    @staticmethod
    def client_dumps(data):
        """/api/v1 and /_public answers: orjson of to_dict (nulls dropped)."""
        return canon14.response_bytes(data).decode("utf-8")

    def add_routes(self, r):
        """Only these: no /_worker/ws without an id (a router 404)."""
        r.add_post("/_worker/workers/register", h_register)
        r.add_get("/_worker/workers/{worker_id}/tasks/next", h_poll)
        r.add_post("/_worker/tasks/result", h_result)
        r.add_patch("/_worker/workers/{worker_id}", h_heartbeat)
        r.add_post("/_worker/events", h_event)
        r.add_post("/_worker/auth/token", h_sts)
        r.add_post("/_worker/auth/token/refresh", h_sts_refresh)
        r.add_get("/_worker/ws/{worker_id}", h_ws)

    def init_job(self, rec):
        rec["assigned_worker_id"] = None
        rec["events"] = []          # fake-only: custom events of this job (3.5)

    @staticmethod
    def deadline_clock():
        return time.time()          # 1.0b27 keeps dispatch/result deadlines as epoch seconds

    def step_deadlines(self, o, opts):
        """The executor: epoch deadlines, and a wall-clock watch that
        MemoryStorage (comparing with monotonic()) never fires (5.6)."""
        now = time.time()
        dto, rto = opts.get("dispatch_timeout_seconds"), opts.get("result_timeout_seconds")
        return (now + dto if dto else None), (now + rto if rto else None), None

    def retry_watch(self, o, rec, task_info, now):
        """handle_task_failure arms a monotonic watch; the re-dispatch then
        replaces it by a wall-clock one (dispatched()), so it only stays when
        that re-dispatch fails."""
        return now + (task_info.get("timeout_seconds") or o.cfg.task_timeout)

    @staticmethod
    def exhausted_message(attempts, task_id, message):
        return f"Task {task_id} failed after {attempts} attempts: {message}"

    def task_payload(self, o, job, task_info):
        """TaskPayload (3.3): a new task-<uuid4> on every dispatch and retry,
        float timestamp, priority only when != 0, deadline with
        result_timeout_seconds, the job's security/metadata, params_metadata
        for keys present in params; nulls dropped, integral floats -> ints."""
        rec = job.rec
        task_id = "task-%s" % uuid.uuid4()
        params = task_info["params"]
        payload = {"job_id": job.id, "task_id": task_id, "type": task_info["type"], "params": params,
                   "tracing_context": {}, "timestamp": time.time(),
                   "deadline": rec.get("result_deadline"), "security": rec.get("security"),
                   "metadata": rec.get("metadata")}
        prio = task_info.get("priority", 0.0)
        if prio:
            payload["priority"] = prio
        meta = {k: v for k, v in (rec.get("data_metadata") or {}).items() if k in params}
        if meta:
            payload["params_metadata"] = meta
        return task_id, canon14.to_dict(payload)

    def dispatched(self, o, job, wid, task_id):
        rec = o.workers.get(wid)
        if rec is not None:
            rec["_internal_load"] = rec.get("_internal_load", 0) + 1
        job.rec.update(current_task_id=task_id, task_worker_id=wid, assigned_worker_id=wid)
        o.set_watch(job.id, None)   # the dispatcher's watch is wall-clock: never fires (5.6)

    def select_worker(self, o, task_info):
        """The dispatcher (5.1): idle workers with the type in hot_skills, else
        idle workers listing it (name or type; a non-object entry raises, which
        is the string-skill poisoning of E5), then compliance (draining, skill
        by name, input_schema, output_statuses), the reputation threshold and
        the default strategy (hot, cheapest, best reputation)."""
        ttype, params = task_info["type"], task_info.get("params") or {}
        live = [r for _, r in o.live_workers() if r.get("status", "idle") == "idle"]
        capable = [r for r in live
                   if any((hs if isinstance(hs, str) else hs.get("name")) == ttype for hs in r.get("hot_skills") or [])]
        if not capable:
            for info in live:
                for skill in info.get("supported_skills", []):
                    if ttype in (skill.get("name"), skill.get("type")):
                        capable.append(info)
                        break
            if not capable:
                raise RuntimeError(f"No suitable workers for task type '{ttype}'")
        compliant, reasons = [], {}
        for w in capable:
            why = noncompliance(w, ttype, params, task_info.get("transitions") or {})
            if why is None:
                compliant.append(w)
            else:
                reasons[why] = reasons.get(why, 0) + 1
        if not compliant:
            raise RuntimeError(f"No worker satisfies the resource requirements for task '{ttype}'. Reasons: {reasons}")
        trusted = [w for w in compliant if reputation(w) >= REPUTATION_MIN]
        if not trusted:
            raise RuntimeError(f"No suitable workers meeting the reputation threshold ({REPUTATION_MIN}) "
                               f"for task '{ttype}'")
        hot = [w for w in trusted
               if any((hs if isinstance(hs, str) else hs.get("name")) == ttype for hs in w.get("hot_skills") or [])]
        pool = hot or trusted

        def cost(w):
            return float(w.get("capabilities", {}).get("cost_per_skill", {}).get(ttype, float("inf")))

        low = min(cost(w) for w in pool)
        cheapest = [w for w in pool if cost(w) == low]
        chosen = cheapest[0] if len(cheapest) == 1 else max(cheapest, key=lambda w: w.get("reputation", 1.0))
        wid = chosen.get("worker_id")
        if not wid:
            raise RuntimeError(f"Selected worker for task '{ttype}' has no worker_id")
        return wid


def reputation(w):
    try:
        return float(w.get("reputation", 1.0))
    except (TypeError, ValueError):
        return 1.0


def noncompliance(w, ttype, params, transitions):
    """Why worker record w cannot take the task, or None (5.1)."""
    if w.get("status") == "draining":
        return "worker_is_draining"
    target = next((s for s in w.get("supported_skills", []) if isinstance(s, dict) and s.get("name") == ttype), None)
    if not target:
        return f"skill_not_found: {ttype}"
    skill = validate(SKILL, target)
    if params and skill.get("input_schema"):
        err = schema_error(params, skill["input_schema"])
        if err:
            return f"schema_validation_failed: {err}"
    if transitions and skill.get("output_statuses"):
        missing = {s for s in transitions if s not in STANDARD_STATUSES} - set(skill["output_statuses"])
        if missing:
            return f"unsupported_output_statuses: {sorted(missing)}"
    return None


def adjust_reputation(o, wid, delta):
    rec = o.workers.get(wid) if wid else None
    if rec is not None:
        rec["reputation"] = min(1.0, max(0.0, rec.get("reputation", 1.0) + delta))


def steal(o, wid):
    """MemoryStorage, after an empty hold (5.2): for each of the poller's
    skills, the longest queue of another registered worker listing a skill
    of that name (or type) gives up its head task, whatever its type."""
    info = o.workers.get(wid)
    if not info:
        return None
    for skill in info.get("supported_skills") or []:
        name = skill.get("name") or skill.get("type")
        if not name:
            continue
        best, best_len = None, 0
        for other, q in o.queues.items():
            if other == wid or other not in o.workers:
                continue
            if any((s.get("name") or s.get("type")) == name for s in o.workers[other].get("supported_skills", [])) \
                    and q.qsize() > best_len:
                best, best_len = other, q.qsize()
        if best is not None:
            try:
                task = o.queues[best].get_nowait()[2]
            except asyncio.QueueEmpty:
                continue
            o.count("stolen")
            log.info("worker %s stole task %s from the queue of %s", wid, task.get("task_id"), best)
            return task
    return None


# --------------------------------------------------------------------------
# Zero trust (2.1, 2.5)
# --------------------------------------------------------------------------
def verify_zero_trust(o, payload, wid, ignore=()):
    """The checks in the orchestrator's order; PermissionError = 403."""
    if wid == GHOST:
        return
    ts = payload.get("timestamp")
    if not ts:
        raise PermissionError("Missing required timestamp for replay protection")
    if abs(int(time.time() + o.cfg.clock_offset) - int(ts)) > 60:
        raise PermissionError("Message timestamp expired (replay protection)")
    secret = o.cfg.worker_tokens.get(wid) or o.cfg.worker_token or ""   # never an STS token
    raw = payload.get("security")
    if not raw:
        if secret:
            raise PermissionError("Missing required security context")
        return
    if not isinstance(raw, dict):   # code: from_dict passes it through, the attribute access fails (500)
        raise AttributeError("'%s' object has no attribute 'signature'" % type(raw).__name__)
    sec = validate(SECURITY, raw)
    if not sec.get("signature"):
        if secret:
            raise PermissionError("Missing required cryptographic signature")
        return
    signer = sec.get("signer_id")
    if signer and signer != wid:
        raise PermissionError(f"Message signer ID '{signer}' does not match worker ID '{wid}'")
    if secret and not canon14.verify(payload, sec["signature"], secret, ignore):
        raise PermissionError("Invalid cryptographic signature")


# --------------------------------------------------------------------------
# Endpoint plumbing (1.1, 1.2)
# --------------------------------------------------------------------------
class RateLimited(Exception):
    def __init__(self, retry_after):
        super().__init__("Too Many Requests")
        self.retry_after = retry_after


def answer(data, status=200, headers=None):
    """rxon's json_response(to_dict(data)): compact, sorted, no nulls."""
    return web.Response(text=canon14.response_bytes(data).decode("utf-8"), status=status,
                        content_type="application/json", headers=headers)


def endpoint(fn):
    """The listener's exception mapping: HTTPException keeps its status with
    {"error": text}; PermissionError 403, ValueError 400, anything else 500;
    the engine's 429 double-encoded (with Retry-After if configured)."""
    async def wrapper(request):
        try:
            try:
                return await fn(request)
            except RateLimited as e:
                headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
                return answer({"error": TOO_MANY}, 429, headers)
            except web.HTTPException as e:
                return answer({"error": e.text or str(e)}, e.status)
            except PermissionError as e:
                return answer({"error": str(e)}, 403)
            except ValueError as e:
                return answer({"error": str(e)}, 400)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return answer({"error": str(e)}, 500)
    wrapper.__name__ = fn.__name__
    return wrapper


def orch(request):
    return request.app["orch"]


async def read_json(request):
    """request.json(loads=orjson.loads): aiohttp decodes the text first."""
    raw = await request.read()
    return canon14.loads(raw.decode(request.charset or "utf-8"))


def body_hint(request, payload):
    """The identity hint of register/result/event/refresh: X-Worker-ID,
    else the body's worker_id (1.1)."""
    hint = request.headers.get("X-Worker-ID")
    if not hint and isinstance(payload, dict) and "worker_id" in payload:
        hint = payload["worker_id"]
    return hint


def check_rate(o, request, ident, mtype):
    """The engine's limiter, after authentication: per credential, worker
    and message type (1.6)."""
    rl = o.cfg.rate_limit
    if not rl:
        return
    limit = {"poll": rl.get("poll_limit", 60), "heartbeat": rl.get("heartbeat_limit", 120)}.get(
        mtype, rl.get("limit", 100))
    if o.rate_exceeded("ratelimit:worker:%s:%s:%s" % (request.get("auth_cred"), ident, mtype), limit):
        raise RateLimited(rl.get("retry_after"))


# --------------------------------------------------------------------------
# Worker endpoints (section 3)
# --------------------------------------------------------------------------
@endpoint
async def h_register(request):
    """3.1, in the orchestrator's order."""
    o = orch(request)
    payload = await read_json(request)
    ident = o.identify(request, body_hint(request, payload))
    check_rate(o, request, ident, "register")
    version = request.headers.get("X-RXON-Version")
    warning = None
    if version and version != VERSION:
        warning = f"Protocol version mismatch! Orchestrator: {VERSION}, Worker: {version}."
    wid = payload.get("worker_id")
    if not isinstance(wid, str):
        raise ValueError("Missing or invalid worker_id in registration data")
    if wid != ident:
        raise PermissionError("Immediate sender ID mismatch")
    verify_zero_trust(o, payload, wid)
    try:
        record = validate(REGISTRATION, payload)
    except ValueError as e:
        raise ValueError(f"Invalid WorkerRegistration payload: {e}") from None
    record["supported_skills"] = record.get("supported_skills") or []
    if not ID_RE.match(wid):
        raise ValueError(f"Invalid worker_id: '{wid}'. Must be alphanumeric, underscores, or hyphens only.")
    o.store_worker(wid, record)     # replaced, reputation back to 1.0 (5.5)
    return answer({"status": "registered", "version": VERSION, "warning": warning})


@endpoint
async def h_heartbeat(request):
    """3.2: empty or falsy body = TTL only; an object body is verified, not
    validated, and shallow-merged raw into the record."""
    o = orch(request)
    wid = request.match_info["worker_id"]
    payload = None
    if request.get("had_body", request.can_read_body):
        payload = await read_json(request)
    ident = o.identify(request, wid)
    check_rate(o, request, ident, "heartbeat")
    o.count("heartbeat")
    if not payload:
        if ident in o.workers:
            o.ttl[ident] = time.monotonic() + o.cfg.worker_ttl
            return answer({"status": "ttl_refreshed"})
        return answer(None)
    verify_zero_trust(o, payload, ident)
    resp = {"status": "ok"}
    rec = o.workers.get(ident)
    new_hash = payload.get("skills_hash")
    if rec and new_hash and rec.get("skills_hash") == new_hash:
        if not rec.get("supported_skills"):
            resp["require_full_sync"] = True
        payload.pop("supported_skills", None)
    if rec is None:
        return answer(resp)         # unknown or expired: nothing stored
    rec.update(payload)
    o.ttl[ident] = time.monotonic() + o.cfg.worker_ttl
    current = payload.get("current_tasks", []) or []
    cancel = []
    for jid in current:             # JOB ids; unknown ids (task ids) are ignored
        job = o.jobs.get(jid)
        if job is not None and job.rec.get("status") in TERMINAL | {"cancelled"}:
            cancel.append(jid)
    if cancel:
        resp["cancel_task_ids"] = cancel
    if o.pending and rec.get("status", "idle") == "idle":
        o.retry_pending()
    return answer(resp)


@endpoint
async def h_poll(request):
    """3.3: the hold is the server's; then (steal on) another worker's task."""
    o = orch(request)
    ident = o.identify(request, request.match_info["worker_id"])
    check_rate(o, request, ident, "poll")
    st = o.wstats(ident)
    st.poll_begin()
    o.count("poll")
    try:
        try:
            _, _, task = await asyncio.wait_for(o.queue(ident).get(), timeout=o.cfg.poll_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            # code: MemoryStorage also steals when the poll is cancelled (client
            # gone): the stolen task then goes to nobody.
            task = steal(o, ident) if o.cfg.steal else None
            if task is None:
                if isinstance(e, asyncio.CancelledError):
                    raise
                return web.Response(status=204)
            if isinstance(e, asyncio.CancelledError):
                log.warning("task %s stolen for a poll whose client is gone: lost", task.get("task_id"))
    finally:
        st.polls_now -= 1
    picked_up(o, task, ident)
    st.handout(task.get("task_id"), task.get("type"))
    if o.cfg.timings and task.get("task_id") in o.tim:
        o.tim[task["task_id"]][1] = time.time()
    return answer(task)


def picked_up(o, task, wid):
    """Pick-up (3.3): the poller becomes the owner; the watch is monotonic
    (fires) unless a result deadline exists (wall-clock: never fires, 5.6);
    the job's security and metadata are copied into the payload."""
    job = o.jobs.get(task.get("job_id"))
    if job is None:
        return
    now = time.monotonic()
    rec = job.rec
    rec.update(task_picked_up_at=now, assigned_worker_id=wid, task_worker_id=wid)
    rd = rec.get("result_deadline")
    o.set_watch(job.id, None if rd is not None else now + (rec.get("execution_timeout_seconds")
                                                          or o.cfg.task_timeout))
    for k in ("security", "metadata"):
        if rec.get(k):
            task[k] = rec[k]


@endpoint
async def h_result(request):
    arrived = time.time()
    o = orch(request)
    payload = await read_json(request)
    ident = o.identify(request, body_hint(request, payload))
    check_rate(o, request, ident, "result")
    o.count("result")
    if isinstance(payload, dict):
        pw = payload.get("worker_id")
        o.note_result(pw if isinstance(pw, str) else ident, payload.get("task_id"))
    return answer(process_result(o, payload, ident, arrived))


def process_result(o, payload, ident, arrived):
    """3.4, in the orchestrator's order."""
    verify_zero_trust(o, payload, ident)
    if ident != GHOST:
        rec = o.workers.get(ident)
        if rec is not None and rec.get("_internal_load", 0) > 0:
            rec["_internal_load"] -= 1
    try:
        result = validate(TASK_RESULT, payload)
    except ValueError as e:
        raise ValueError(f"Invalid TaskResult payload: {e}") from None
    result.setdefault("worker_id", ident)
    job_id, task_id = result["job_id"], result["task_id"]
    if result["worker_id"] != ident:
        raise PermissionError(f"Forbidden: Authenticated worker '{ident}' cannot submit results for "
                              f"another worker '{result['worker_id']}'.")
    if o.cfg.timings:
        o.stamp_result(task_id, arrived, result.get("data"))
    job = o.jobs.get(job_id)
    if job is None:
        return {"status": "ignored", "reason": "job_not_found",
                "message": f"Job {job_id} not found (expired or deleted)."}
    rec = job.rec
    if o.cfg.keep_results:
        rec["results"].append(payload)
    status = result.get("status", "success")
    if status == "success":
        output_contract(o, job, result, ident)
        status = result.get("status", "success")
    assigned = rec.get("assigned_worker_id")
    if assigned and assigned != ident:
        return {"status": "ignored", "reason": "worker_mismatch",
                "message": "Forbidden: This task is assigned to a different worker."}
    current, jstatus = rec.get("current_task_id"), rec.get("status")
    if jstatus != "waiting_for_parallel" and current and current != task_id:
        return {"status": "ignored", "reason": "stale_task",
                "message": f"Result ignored: task_id {task_id} is no longer active for job {job_id}."}
    if jstatus in TERMINAL:
        reason = "deadline_exceeded" if "timeout" in (rec.get("error_message") or "").lower() \
            else "job_already_terminated"
        return {"status": "ignored", "reason": reason,
                "message": f"Result ignored: the job is already in a terminal state ({jstatus})."}
    o.watch.pop(job_id, None)
    if status == "failure":
        route_failure(o, job, result.get("error", {}), task_id)
        return {"status": "accepted", "transition": "failure_handled"}
    transitions = rec.get("current_task_transitions") or {}
    if status == "cancelled":       # not terminal: a later success still finishes the job
        rec["status"] = "cancelled"
        if transitions.get("cancelled"):
            o.finish_transition(job, transitions["cancelled"])
        return {"status": "accepted", "transition": "cancelled_handled"}
    nxt = transitions.get(status)
    if not nxt:
        rec["status"] = "failed"
        rec["error_message"] = f"Worker returned unhandled status: {status}"
        return {"status": "accepted", "transition": "unhandled_status_failure"}
    data = result.get("data")
    if data and isinstance(data, dict):
        rec.setdefault("state_history", {}).update(data)
    if result.get("data_metadata"):
        rec.setdefault("data_metadata", {}).update(result["data_metadata"])
    if result.get("security"):
        rec["security"] = result["security"]    # copied into the next task payload
    if result.get("metadata"):
        rec.setdefault("metadata", {}).update(result["metadata"])
    if result.get("timestamp"):
        rec["timestamp"] = result["timestamp"]
    adjust_reputation(o, ident, REPUTATION_REWARD)
    o.finish_transition(job, nxt)
    return {"status": "accepted", "transition": "success_transition"}


def output_contract(o, job, result, ident):
    """A success whose data violates the skill's output_schema becomes a
    CONTRACT_VIOLATION_ERROR failure, and costs 0.2 here (and again when the
    failure is routed); checked before ownership and staleness (code)."""
    skill = None
    try:
        info = o.workers.get(ident)
        if info:
            ttype = (job.task_info or {}).get("type")
            for s in info.get("supported_skills", []):
                if s.get("name") == ttype:
                    skill = validate(SKILL, s)
                    break
    except Exception as e:
        log.warning("Failed to fetch skill snapshot for validation (job %s): %s", job.id, e)
    if not skill or skill.get("schema_dialect", "json-schema") != "json-schema" or not skill.get("output_schema"):
        return
    err = schema_error(result.get("data"), skill["output_schema"])
    if err:
        adjust_reputation(o, ident, -CONTRACT_PENALTY)
        result["status"] = "failure"
        result["error"] = {"code": "CONTRACT_VIOLATION_ERROR",
                           "message": f"Contract violation: result data does not match output_schema. {err}"}


def route_failure(o, job, err, task_id):
    """Only error.code decides (3.4); penalties hit the job's task_worker_id."""
    code, message = "TRANSIENT_ERROR", "No error details provided."
    if isinstance(err, dict):
        code = err.get("code", "TRANSIENT_ERROR")
        message = err.get("message", "No error message provided.")
    rec = job.rec
    if code in PENALTY:
        adjust_reputation(o, rec.get("task_worker_id"), -PENALTY[code])
        rec["status"] = "quarantined"
        rec["error_message"] = f"Task failed with permanent error ({code}): {message}"
    elif code == "INVALID_INPUT_ERROR":
        rec["status"] = "failed"
        rec["error_message"] = f"Task failed due to invalid input: {message}"
    elif code == "INTEGRITY_MISMATCH_ERROR":
        rec["status"] = "failed"
        rec["error_message"] = f"Task failed due to data integrity mismatch: {message}"
    else:
        o.task_failure(job, message, task_id)   # a new task id, or quarantine


@endpoint
async def h_event(request):
    """3.5: the body is parsed BEFORE authentication (an empty unauthenticated
    POST is the 400 that dialect detection looks for, 4.2)."""
    o = orch(request)
    payload = await read_json(request)
    ident = o.identify(request, body_hint(request, payload))
    check_rate(o, request, ident, "event")
    o.count("event")
    return answer(process_event(o, ident, payload))


def process_event(o, ident, raw):
    """An event from POST /_worker/events or a WebSocket text frame."""
    verify_zero_trust(o, raw, ident, ignore=("bubbling_chain",))
    try:
        ev = validate(EVENT, raw)
    except ValueError as e:
        return {"status": "error", "message": f"Invalid event payload: {e}"}
    if ev["worker_id"] != ident:
        raise PermissionError("Immediate sender ID mismatch")
    target = ev.get("target_job_id") or ev.get("target_task_id")
    job = o.jobs.get(target) if target else None
    info = o.workers.get(ident)
    schemas, dialect = None, "json-schema"
    if ident != GHOST and info and job is not None:
        ttype = (job.task_info or {}).get("type")
        for s in info.get("supported_skills", []):
            if s.get("name") == ttype or s.get("type") == ttype:
                skill = validate(SKILL, s)
                schemas, dialect = skill.get("events_schema"), skill.get("schema_dialect", "json-schema")
                break
    if schemas and dialect == "json-schema" and ev["event_type"] in schemas:
        err = schema_error(ev["payload"], schemas[ev["event_type"]])
        if err:
            return {"status": "error", "code": "CONTRACT_VIOLATION_ERROR", "message": err}
    chain = list(ev.get("bubbling_chain") or [])
    if ident != GHOST and ident not in chain and ident != ev["origin_worker_id"]:
        chain.append(ident)
    if ev["event_type"] == "progress":
        o.count("progress")
        if job is not None:
            job.rec["progress"] = ev["payload"].get("progress", 0.0)    # stored as sent
            job.rec["progress_message"] = ev["payload"].get("message", "")
    else:
        o.count("custom_event")
        owner = o.jobs.get(ev.get("target_job_id"))
        if owner is not None:
            entry = {k: v for k, v in ev.items() if k not in ("security", "bubbling_chain")}
            entry["bubbling_chain"] = chain
            owner.rec.setdefault("events", []).append(entry)
    return {"status": "event_accepted"}


def issue_tokens(o, wid):
    """An access token (o.cfg.sts_expires_in) and a refresh token (24 h);
    only sha256 hashes are kept, refresh tokens are not rotated (1.5)."""
    access = o.sts_issue(wid)
    refresh = secrets.token_urlsafe(32)
    o.sts_refresh[hashlib.sha256(refresh.encode()).hexdigest()] = (wid, time.monotonic() + REFRESH_TTL)
    return {"access_token": access, "expires_in": int(o.cfg.sts_expires_in), "refresh_token": refresh,
            "worker_id": wid}


@endpoint
async def h_sts(request):
    """1.5: any authenticated worker (no certificate needed); X-Worker-ID is
    the hint (without it the global token gets the pseudo worker's token)."""
    o = orch(request)
    ident = o.identify(request, request.headers.get("X-Worker-ID"))
    check_rate(o, request, ident, "sts_token")
    return answer(issue_tokens(o, ident))


@endpoint
async def h_sts_refresh(request):
    """1.5: not authenticated; the refresh token and X-Worker-ID decide."""
    o = orch(request)
    payload = await read_json(request)
    hint = body_hint(request, payload)
    request["auth_cred"] = "refresh"
    check_rate(o, request, hint, "sts_refresh")
    token = payload.get("refresh_token")
    if not token:
        raise web.HTTPBadRequest(text="Missing refresh_token in payload")
    if not hint:
        raise web.HTTPBadRequest(text="Missing worker_id identification")
    ent = o.sts_refresh.get(hashlib.sha256(token.encode()).hexdigest())
    if ent is None or ent[1] < time.monotonic():
        raise web.HTTPForbidden(text="Unauthorized: Invalid refresh token (not found)")
    if ent[0] != hint:
        raise web.HTTPForbidden(text="Unauthorized: Invalid refresh token (owner mismatch)")
    return answer(issue_tokens(o, hint))


async def h_ws(request):
    """3.6: authentication BEFORE the upgrade (403 text/plain); one socket per
    worker; text frames are signed events (errors only logged, no reply)."""
    o = orch(request)
    hint = request.match_info["worker_id"]
    try:
        ident = o.identify(request, hint)
        check_rate(o, request, ident, "websocket_auth")
    except PermissionError as e:
        o.log_entry("WS-AUTH", request.path, hint, 403, None, resp=str(e))
        return web.Response(status=403, text=str(e))
    except Exception as e:  # code: only PermissionError is mapped; a 429 becomes 500 "Too Many Requests"
        return web.Response(status=500, text=str(e))
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    old = o.ws.get(ident)
    if old is not None:
        await old.close(code=1008, message=b"New connection established")
    o.ws[ident] = ws
    log.info("WebSocket connection registered for worker %s.", ident)
    o.count("ws_connect")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    data = canon14.loads(msg.data)
                except ValueError as e:
                    o.log_entry("WS-RECV", request.path, ident, None, None, resp=msg.data)
                    log.error("Error processing WebSocket message from %s: %s", ident, e)
                    continue
                o.log_entry("WS-RECV", request.path, ident, None, data)
                try:
                    process_event(o, ident, data)
                except Exception as e:
                    log.error("Error processing WebSocket message from %s: %s", ident, e)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        # no lock: this handler ends before a successor is stored, so it
        # removes its own entry (ws_unregister_quirk: whatever is there)
        if o.ws.get(ident) is ws or (o.cfg.ws_unregister_quirk and ident in o.ws):
            del o.ws[ident]
    return ws
