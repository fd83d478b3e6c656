#!/usr/bin/python3
"""Tests of the fake orchestrator's 1.0b14 dialect (fakeorch.py --protocol
1.0b14: tests/orchestrator/rxon14.py and canon14.py), driven by a small
signing client playing a worker. The expected answers are the ones
PROTOCOL-1.0b14.md quotes from the real avtomatika 1.0b27 (section numbers in
the comments), plus the dialect-detection answers of both modes (4.2). No
daemon binary is needed."""
import asyncio
import gzip
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "orchestrator"))
from avt import check, main, test, tmo, wait_for  # noqa: E402
from orch import FakeOrch  # noqa: E402

import aiohttp  # noqa: E402
import canon14  # noqa: E402

VECTORS = os.path.join(os.path.dirname(HERE), "data", "rxon14")
TOKEN = "worker-token"
SKILLS = [{"name": "echo", "type": "echo", "version": "1.0"}, {"name": "sleep", "type": "sleep"}]


def orch14(**kw):
    kw.setdefault("poll_timeout", 0.3)
    return FakeOrch(protocol="1.0b14", **kw)


class W:
    """A scripted 1.0b14 worker: X-Worker-Token, X-Worker-ID, X-RXON-Version
    on every request, bodies signed with canon14 (key = `key`, default the
    token) exactly like a real worker signs them."""

    def __init__(self, o, wid="w1", token=TOKEN, key=None):
        self.o, self.wid, self.token = o, wid, token
        self.key = key or token

    def headers(self, extra=None, hint=True):
        h = {"X-Worker-Token": self.token, "X-RXON-Version": "1.0b14"}
        if hint:
            h["X-Worker-ID"] = self.wid
        h.update(extra or {})
        return h

    def signed(self, body, ignore=(), ts=None):
        return canon14.sign_body(dict(body), self.key, self.wid, ignore, ts)

    def send(self, method, path, body=None, sign=True, ignore=(), headers=None, hint=True, raw=None, **kw):
        if body is not None and sign:
            body = self.signed(body, ignore)
        return self.o.request(method, path, body, headers=self.headers(headers, hint), raw=raw, **kw)

    def register(self, skills=SKILLS, **extra):
        body = {"worker_id": self.wid, "worker_type": "test-worker", "supported_skills": list(skills), **extra}
        r = self.send("POST", "/_worker/workers/register", body)
        check(r.status == 200, r)
        return r

    def beat(self, body=None, **kw):
        if body is not None:
            body = dict({"worker_id": self.wid}, **body)
        return self.send("PATCH", "/_worker/workers/" + self.wid, body, **kw)

    def poll(self, **kw):
        return self.send("GET", "/_worker/workers/%s/tasks/next" % self.wid, **kw)

    def task(self):
        r = self.poll()
        check(r.status == 200, r)
        return r.json()

    def result(self, task, status="success", **fields):
        body = {"job_id": task["job_id"], "task_id": task["task_id"], "worker_id": self.wid, "status": status}
        body.update(fields)
        return self.send("POST", "/_worker/tasks/result", body)

    def event(self, job_id, event_type="progress", payload=None, **fields):
        body = {"event_id": "ev-%d" % time.monotonic_ns(), "worker_id": self.wid, "origin_worker_id": self.wid,
                "event_type": event_type, "payload": payload if payload is not None else {},
                "target_job_id": job_id}
        body.update(fields)
        return self.send("POST", "/_worker/events", body, ignore=("bubbling_chain",))


def err(r):
    return r.status, (r.json() or {}).get("error")


# --------------------------------------------------------------------------
@test
def signature_vectors(t):
    """2.2-2.4: canon14 reproduces every vector of both files computed by the
    real rxon 1.0b14 on orjson 3.8.3: parse errors, canonical bytes, HMAC,
    signing errors; verify() accepts the vector's signature and refuses an
    uppercase copy of it."""
    n = 0
    for name in ("signature_vectors.json", "signature_vectors_extra.json"):
        with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
            doc = json.load(f)
        check(doc["rxon_version"] == "1.0b14", doc["rxon_version"])
        for v in doc["vectors"]:
            n += 1
            what = "%s: %s" % (name, v["name"])
            expect = v.get("error")
            try:
                payload = canon14.loads(v["payload_json"])
            except ValueError as e:
                check(expect is not None and expect.startswith("orjson.loads:") and str(e) in expect, what, e, expect)
                continue
            try:
                msg = canon14.canonical(payload, v["ignore_fields"])
                sig = canon14.sign(payload, v["secret"], v["ignore_fields"])
            except (TypeError, RecursionError) as e:
                check(expect is not None and "%s: %s" % (type(e).__name__, e) in expect, what, e, expect)
                continue
            check(expect is None, what, "expected the error " + str(expect))
            check(msg.decode("utf-8") == v["canonical"] and msg.hex() == v["canonical_utf8_hex"], what, msg)
            check(sig == v["hmac_sha256_hex"], what, sig)
            check(canon14.verify(payload, sig, v["secret"], v["ignore_fields"]), what)
            check(not canon14.verify(payload, sig.upper(), v["secret"], v["ignore_fields"]), what)
    check(n == 100, "vectors checked: %d" % n)


@test
def detection_answers_both_modes(t):
    """4.1/4.2: what dialect detection reads: /_public/status carries the
    dialect's version; an unauthenticated empty POST /_worker/events (and a
    refresh without token) is a 400 on 1.0b14 and a router 404 on 1.0b3."""
    with FakeOrch(protocol="1.0b3") as o:
        r = o.request("GET", "/_public/status")
        check(r.status == 200 and r.json() == {"status": "ok"} and r.headers["X-RXON-Version"] == "1.0b3", r)
        r = o.request("POST", "/_worker/events")
        check(r.status == 404 and r.body == b"404: Not Found" and "X-RXON-Version" not in r.headers, r)
        r = o.request("POST", "/_worker/auth/token/refresh", {})
        check(r.status == 404 and r.body == b"404: Not Found" and "X-RXON-Version" not in r.headers, r)
        check(o.config()["protocol"] == "1.0b3")
    with orch14() as o:
        r = o.request("GET", "/_public/status", headers={"Accept-Encoding": "identity"})
        check(r.status == 200 and r.body == b'{"status":"ok"}' and r.headers["X-RXON-Version"] == "1.0b14", r)
        r = o.request("POST", "/_worker/events")
        check(r.status == 400 and r.body == b'{"error":"input length is 0: line 1 column 1 (char 0)"}', r)
        check(r.headers["X-RXON-Version"] == "1.0b14" and r.headers["Content-Type"].startswith("application/json"), r)
        r = o.request("POST", "/_worker/auth/token/refresh", {})
        check(err(r) == (400, "Missing refresh_token in payload") and r.headers["X-RXON-Version"] == "1.0b14", r)
        r = o.request("POST", "/_worker/workers/register")
        check(err(r) == (400, "input length is 0: line 1 column 1 (char 0)"), r)
        r = o.request("PATCH", "/_worker/workers/x")
        check(err(r) == (403, "Unauthorized: Missing X-Worker-Token header or client certificate."), r)
        r = o.request("GET", "/_worker/ws")
        check(r.status == 404 and "X-RXON-Version" not in r.headers, r)
        cfg = o.config()
        check(cfg["protocol"] == "1.0b14" and cfg["steal"] is True and cfg["ws_unregister_quirk"] is False, cfg)
        r = o.request("POST", "/_test/config", {"protocol": "1.0b3"})
        check(r.status == 400 and "fixed" in r.json()["error"], r)
        check(o.config(protocol="1.0b14")["protocol"] == "1.0b14")
        # a proxy hiding /_public: what makes a worker fall back to the events probe
        o.inject("public", status=502, raw="bad gateway")
        r = o.request("GET", "/_public/status")
        check(r.status == 502 and "X-RXON-Version" not in r.headers, r)
        check(o.request("GET", "/_public/status").headers["X-RXON-Version"] == "1.0b14")


@test
def auth_errors_403(t):
    """1.3: every auth failure is 403 with the exact texts, in order; the
    identity hint is X-Worker-ID, else the body's worker_id (register,
    result, event) or the path ({worker_id} routes)."""
    with orch14(workers_toml='[wi]\ntoken = "ind-secret"\n') as o:
        w = W(o)
        r = w.poll(headers={"X-Worker-Token": ""})
        check(err(r) == (403, "Unauthorized: Missing X-Worker-Token header or client certificate."), r)
        check(err(W(o, token="nope").poll()) == (403, "Unauthorized: No valid token found"))
        check(err(W(o, "wi", token="nope").poll()) == (403, "Unauthorized: Invalid individual worker token"))
        check(err(W(o, "wi").poll()) == (403, "Unauthorized: Invalid individual worker token"), "global refused")
        check(err(W(o, "w1", token="ind-secret").poll()) == (403, "Unauthorized: No valid token found"))
        check(W(o, "wi", token="ind-secret").poll().status == 204)
        # no hint anywhere: the global token authenticates the pseudo worker
        r = o.request("POST", "/_worker/auth/token", headers={"X-Worker-Token": TOKEN})
        check(r.status == 200 and r.json()["worker_id"] == "unknown_authenticated_by_global_token", r)
        r = o.request("POST", "/_worker/auth/token", headers={"X-Worker-Token": "ind-secret"})
        check(err(r) == (403, "Unauthorized: Invalid token or missing worker_id hint"), r)
        # body worker_id is the hint when X-Worker-ID is absent; the header wins over it
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w1", "supported_skills": SKILLS}, hint=False)
        check(r.status == 200, r)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w2"}, headers={"X-Worker-ID": "w1"})
        check(err(r) == (403, "Immediate sender ID mismatch"), r)
        r = W(o, "wi").send("POST", "/_worker/workers/register", {"worker_id": "wi"}, hint=False)
        check(err(r) == (403, "Unauthorized: Invalid individual worker token"), r)
        # on {worker_id} routes the path wins over the header
        r = w.beat(headers={"X-Worker-ID": "wi"})
        check(r.status == 200 and r.json() == {"status": "ttl_refreshed"}, r)
        r = W(o, "w2").send("POST", "/_worker/workers/register", {"worker_id": "w2"})
        check(r.status == 200 and "Unauthorized" not in r.body.decode(), r)
        # malformed JSON is answered before authentication
        r = W(o, token="nope").send("POST", "/_worker/tasks/result", raw=b'{"worker_id":')
        check(err(r) == (400, "unexpected end of data: line 1 column 14 (char 13)"), r)


@test
def zero_trust_403_texts(t):
    """2.1: the checks of _verify_zero_trust in their order, each 403 text;
    the key is the worker's individual token else the global token, never an
    STS access token; lowercase hex only; an empty global token accepts
    unsigned bodies but still wants a timestamp; signing failures are 500."""
    with orch14(workers_toml='[wi]\ntoken = "ind-secret"\n') as o:
        w = W(o)
        path = "/_worker/workers/register"
        base = {"worker_id": "w1", "supported_skills": SKILLS}
        now = int(time.time())

        def post(body, **kw):
            return o.request("POST", path, body, headers=w.headers(), **kw)
        check(err(post(base)) == (403, "Missing required timestamp for replay protection"))
        check(err(post(dict(base, timestamp=0))) == (403, "Missing required timestamp for replay protection"))
        for skew in (-61, 62):  # (+62: the server's clock may have ticked since)
            r = post(w.signed(base, ts=int(time.time()) + skew))
            check(err(r) == (403, "Message timestamp expired (replay protection)"), skew, r)
        for skew in (-58, 58):
            check(post(w.signed(base, ts=int(time.time()) + skew)).status == 200, "within 60 s", skew)
        check(err(post(dict(base, timestamp=now))) == (403, "Missing required security context"))
        check(err(post(dict(base, timestamp=now, security={}))) == (403, "Missing required security context"))
        r = post(dict(base, timestamp=now, security={"signer_id": "w1"}))
        check(err(r) == (403, "Missing required cryptographic signature"), r)
        body = w.signed(base)
        body["security"]["signer_id"] = "x"
        check(err(post(body)) == (403, "Message signer ID 'x' does not match worker ID 'w1'"))
        body = w.signed(base)
        del body["security"]["signer_id"]
        check(post(body).status == 200, "signer_id may be omitted")
        body = w.signed(base)
        body["worker_type"] = "changed after signing"
        check(err(post(body)) == (403, "Invalid cryptographic signature"))
        body = w.signed(base)
        body["security"]["signature"] = body["security"]["signature"].upper()
        check(err(post(body)) == (403, "Invalid cryptographic signature"), "compared as lowercase hex strings")
        body = w.signed(dict(base, extra=None, capabilities={"hostname": "h", "s3_config_hash": None}))
        check(post(body).status == 200, "nulls are not signed")
        body = w.signed(base)
        body["security"] = "not an object"
        check(post(body).status == 500, "a non-object security is a 500 at 1.0b27")
        check(err(post(dict(w.signed(base), big=1e20))) == (500, "Integer exceeds 64-bit range"))
        deep = {}
        for _ in range(101):
            deep = {"a": deep}
        check(err(post(dict(w.signed(base), deep=deep))) ==
              (500, "Maximum recursion depth (100) exceeded in to_dict"))
        # the key: wi's individual token; the global token does not sign for wi
        wi = W(o, "wi", token="ind-secret")
        check(wi.send("POST", path, {"worker_id": "wi"}).status == 200)
        r = W(o, "wi", token="ind-secret", key=TOKEN).send("POST", path, {"worker_id": "wi"})
        check(err(r) == (403, "Invalid cryptographic signature"), r)
        # an STS access token authenticates but is never the key
        access = o.request("POST", "/_worker/auth/token", headers=w.headers()).json()["access_token"]
        check(W(o, token=access, key=TOKEN).beat({"status": "idle"}).json() == {"status": "ok"})
        r = W(o, token=access).beat({"status": "idle"})
        check(err(r) == (403, "Invalid cryptographic signature"), r)
        # the same checks guard heartbeats with a body, results and events
        check(err(w.beat({"status": "idle"}, sign=False)) == (403, "Missing required timestamp for replay protection"))
        r = w.send("POST", "/_worker/tasks/result", {"job_id": "j", "task_id": "t"}, sign=False)
        check(err(r) == (403, "Missing required timestamp for replay protection"), r)
        r = w.send("POST", "/_worker/events", {"worker_id": "w1", "bubbling_chain": ["p"]})
        check(err(r) == (403, "Invalid cryptographic signature"), "bubbling_chain is not signed", r)
        # no global token: unsigned bodies pass, the timestamp is still required
        o.config(worker_token="")
        r = W(o, "wi", token="ind-secret").send("POST", path, {"worker_id": "wi"}, sign=False)
        check(err(r) == (403, "Missing required timestamp for replay protection"), r)
        r = W(o, "wi", token="ind-secret").send("POST", path, {"worker_id": "wi", "timestamp": now}, sign=False)
        check(err(r) == (403, "Missing required security context"), "wi still has its own token", r)
        r = W(o, token=access).beat({"status": "idle", "timestamp": int(time.time())}, sign=False)
        check(r.json() == {"status": "ok"}, "no key for w1 any more: unsigned accepted", r)
        o.config(worker_tokens={"w1": ""})
        check(err(w.beat({"status": "idle"}, sign=False)) == (403, "Unauthorized: No valid token found"))


@test
def validation_400(t):
    """1.2: malformed JSON and schema errors are 400 {"error"} with orjson's
    and msgspec's texts; the event schema error is a 200 (3.5)."""
    with orch14() as o:
        w = W(o)
        r = w.send("POST", "/_worker/workers/register", raw=b"not json")
        check(err(r) == (400, "invalid literal: line 1 column 1 (char 0)"), r)
        r = w.send("POST", "/_worker/workers/register", raw=b'{"s":"\\ud800"}')
        check(err(r) == (400, "no matched low surrogate in string: line 1 column 13 (char 12)"), r)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w1", "supported_skills": ["echo"]})
        check(err(r) == (400, "Invalid WorkerRegistration payload: Failed to instantiate WorkerRegistration: "
                              "Expected `object`, got `str` - at `$.supported_skills[0]`"), r)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w1", "supported_skills": [{"type": "x"}]})
        check(err(r) == (400, "Invalid WorkerRegistration payload: Failed to instantiate WorkerRegistration: "
                              "Object missing required field `name` - at `$.supported_skills[0]`"), r)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w1", "installed_software": {"py": 3}})
        check(err(r)[1].endswith("Expected `str`, got `int` - at `$.installed_software[...]`"), r)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": 5}, headers={"X-Worker-ID": "5"})
        check(err(r) == (400, "Missing or invalid worker_id in registration data"), r)
        r = W(o, "bad.id").send("POST", "/_worker/workers/register", {"worker_id": "bad.id"})
        check(err(r) == (400, "Invalid worker_id: 'bad.id'. Must be alphanumeric, underscores, or hyphens only."), r)
        w.register()
        res = "/_worker/tasks/result"
        r = w.send("POST", res, {"task_id": "t", "worker_id": "w1"})
        check(err(r) == (400, "Invalid TaskResult payload: Failed to instantiate TaskResult: "
                              "Object missing required field `job_id`"), r)
        r = w.send("POST", res, {"job_id": "j", "task_id": "t", "status": "failure", "error": "boom"})
        check(err(r) == (400, "Invalid TaskResult payload: Failed to instantiate TaskResult: "
                              "Expected `object`, got `str` - at `$.error`"), r)
        r = w.send("POST", res, {"job_id": "j", "task_id": "t", "data": [1]})
        check(err(r) == (400, "Invalid TaskResult payload: Failed to instantiate TaskResult: "
                              "Expected `object`, got `array` - at `$.data`"), r)
        r = w.send("POST", res, {"job_id": "j", "task_id": "t", "error": {"code": "X"}})
        check(err(r)[1].endswith("Object missing required field `message` - at `$.error`"), r)
        r = w.send("POST", res, {"job_id": "j", "task_id": "t", "worker_id": "w2"})
        check(err(r) == (403, "Forbidden: Authenticated worker 'w1' cannot submit results for another "
                              "worker 'w2'."), r)
        r = w.send("POST", res, {"job_id": "j", "task_id": "t"})
        check(r.status == 200 and r.body == b'{"message":"Job j not found (expired or deleted).",'
                                             b'"reason":"job_not_found","status":"ignored"}', r)
        r = w.send("POST", "/_worker/events", {"worker_id": "w1", "event_id": "e", "origin_worker_id": "w1",
                                               "payload": {}}, ignore=("bubbling_chain",))
        check(r.status == 200 and r.json() == {"status": "error", "message": "Invalid event payload: Failed to "
                                               "instantiate WorkerEventPayload: Object missing required field "
                                               "`event_type`"}, r)
        r = w.send("POST", "/_worker/events", {"worker_id": "w2", "event_id": "e", "origin_worker_id": "w1",
                                               "event_type": "x", "payload": {}}, ignore=("bubbling_chain",))
        check(err(r) == (403, "Immediate sender ID mismatch"), r)
        r = w.send("POST", "/_worker/workers/register", raw=b"[1]")
        check(err(r) == (500, "'list' object has no attribute 'get'"), r)


@test
def register_and_heartbeat(t):
    """3.1/3.2: registration re-encodes the body (unknown and nested unknown
    keys, nulls and defaults dropped; timestamp/security stored), replaces the
    record and resets reputation; heartbeats merge raw, skills_hash rules,
    require_full_sync, current_tasks are JOB ids."""
    with orch14() as o:
        w = W(o)
        r = w.register(status="busy", load=3, hot_cache=[], installed_models=[{"name": "m"}],
                       resources={"cpu_cores": 4, "properties": {"cpu_cores": 4.0}},
                       capabilities={"hostname": "unknown", "ip_address": "10.0.0.1", "websockets": True,
                                     "s3_config_hash": None, "extra": {"websockets": True, "gone": None}},
                       supported_skills=[{"name": "echo", "schema_dialect": "json-schema", "x": 1}],
                       skills_hash="h1", metadata={"a": None, "b": 1.0})
        check(r.body == b'{"status":"registered","version":"1.0b14"}' and r.headers["Content-Length"] == "42", r)
        rec = o.workers()[0]
        sent_ts = rec["timestamp"]
        check(set(rec) == {"worker_id", "worker_type", "supported_skills", "resources", "capabilities", "skills_hash",
                           "metadata", "timestamp", "security", "reputation"}, rec)
        check(rec["supported_skills"] == [{"name": "echo"}], rec)
        check(rec["resources"] == {"properties": {"cpu_cores": 4}}, rec)
        check(rec["capabilities"] == {"ip_address": "10.0.0.1", "extra": {"websockets": True}}, rec)
        check(rec["metadata"] == {"b": 1} and rec["security"]["signer_id"] == "w1" and rec["reputation"] == 1.0, rec)
        r = w.send("POST", "/_worker/workers/register", {"worker_id": "w1"}, headers={"X-RXON-Version": "1.0b3"})
        check(r.body == b'{"status":"registered","version":"1.0b14","warning":"Protocol version mismatch! '
                        b'Orchestrator: 1.0b14, Worker: 1.0b3."}', r)
        rec = o.workers()[0]
        check(rec["supported_skills"] == [] and "skills_hash" not in rec and rec["timestamp"] >= sent_ts, rec)
        # heartbeats
        check(w.beat().body == b'{"status":"ttl_refreshed"}')
        check(w.beat(raw=b"{}").body == b'{"status":"ttl_refreshed"}', "falsy JSON is an empty heartbeat")
        check(W(o, "ghost-w9").beat().body == b"null")
        check(W(o, "ghost-w9").beat({"status": "idle"}).json() == {"status": "ok"})
        check([x["worker_id"] for x in o.workers()] == ["w1"], "unknown worker: nothing stored")
        caps = {"hostname": "h", "extra": {"websockets": True}, "websockets": True}
        r = w.beat({"status": "idle", "capabilities": caps, "supported_skills": ["echo"], "junk": 7})
        check(r.body == b'{"status":"ok"}', r)
        rec = o.workers()[0]
        check(rec["capabilities"] == caps and rec["supported_skills"] == ["echo"] and rec["junk"] == 7,
              "merged raw", rec)
        # skills_hash: equal hash + empty stored skills -> require_full_sync, forever
        w.register(skills=[], skills_hash="h6")
        for _ in range(2):
            r = w.beat({"skills_hash": "h6", "supported_skills": SKILLS})
            check(r.json() == {"require_full_sync": True, "status": "ok"}, r)
        check(o.workers()[0]["supported_skills"] == [], "skills dropped with the same hash")
        check(w.beat({"skills_hash": "h6b", "supported_skills": SKILLS}).json() == {"status": "ok"})
        check(w.beat({"skills_hash": "h6b"}).json() == {"status": "ok"}, "fixed with a new hash")
        check(len(o.workers()[0]["supported_skills"]) == 2)
        w.register(skills_hash="h7")
        check(w.beat({"skills_hash": "h7"}).json() == {"status": "ok"}, "re-registering also fixes it")
        # current_tasks are job ids
        jid = o.create_job("echo", {})
        task = w.task()
        check(w.beat({"current_tasks": [jid, task["task_id"], "nope"]}).json() == {"status": "ok"})
        o.cancel(jid)
        r = w.beat({"current_tasks": [task["task_id"], jid]})
        check(r.body == ('{"cancel_task_ids":["%s"],"status":"ok"}' % jid).encode(), r)


@test
def happy_path_and_payloads(t):
    """3.3-3.5: poll 204/200, the payload's shape (task-<uuid4>, float
    timestamp, priority only when != 0, deadline, params integral floats as
    ints, the previous result's security), results, progress and custom
    events, a two-step blueprint."""
    with orch14() as o:
        w = W(o)
        w.register(skills=SKILLS + [{"name": "resize_image"}, {"name": "apply_filters"}])
        t0 = time.monotonic()
        r = w.poll()
        check(r.status == 204 and r.body == b"" and time.monotonic() - t0 >= 0.25, r)
        check(r.headers["X-RXON-Version"] == "1.0b14", r.headers)
        jid = o.create_job("echo", {"msg": "hi", "n": 1.0, "none": None})
        r = w.poll()
        task = r.json()
        check(list(task) == ["job_id", "params", "task_id", "timestamp", "tracing_context", "type"], task)
        check(task["task_id"].startswith("task-") and len(task["task_id"]) == 41 and task["job_id"] == jid, task)
        check(isinstance(task["timestamp"], float) and abs(task["timestamp"] - time.time()) < 10, task)
        check(r.body.startswith(('{"job_id":"%s","params":{"msg":"hi","n":1},"task_id":"%s","timestamp":'
                                 % (jid, task["task_id"])).encode()), r)
        r = w.result(task, data={"echo": "hi"})
        check(r.body == b'{"status":"accepted","transition":"success_transition"}', r)
        j = o.job(jid)
        check(j["status"] == "finished" and j["assigned_worker_id"] == "w1" and j["task_picked_up_at"], j)
        r = w.result(task, data={"echo": "hi"})
        check(r.json() == {"status": "ignored", "reason": "job_already_terminated",
                           "message": "Result ignored: the job is already in a terminal state (finished)."}, r)
        jid = o.create_job("echo", {}, priority=5, result_timeout_seconds=30)
        task = w.task()
        check(task["priority"] == 5 and isinstance(task["deadline"], float), task)
        check(abs(task["deadline"] - time.time() - 30) < 5, task)
        w.result(task)
        # events: progress (stored as sent) and a custom event in the job's history
        jid = o.create_job("sleep", {"seconds": 1})
        task = w.task()
        r = w.event(jid, "progress", {"progress": 0.25, "message": "step 1/4"},
                    target_task_id=task["task_id"], bubbling_chain=["proxy-1"])
        check(r.body == b'{"status":"event_accepted"}', r)
        r = w.event(jid, "log", {"line": "hello"})
        check(r.json() == {"status": "event_accepted"}, r)
        j = o.job(jid)
        check(j["progress"] == 0.25 and j["progress_message"] == "step 1/4", j)
        check(len(j["events"]) == 1 and j["events"][0]["event_type"] == "log" and
              j["events"][0]["payload"] == {"line": "hello"} and j["events"][0]["worker_id"] == "w1", j)
        check(w.result(task, status="success").json()["transition"] == "success_transition")
        # the second task of process-image carries the first result's security
        jid = o.create_blueprint_job("process-image", {"image_url": "s3://b/cat.png"})
        first = w.task()
        check(first["params"] == {"image_url": "s3://b/cat.png", "width": 640, "height": 480}, first)
        check(o.workers()[0]["_internal_load"] == 1, o.workers())
        meta = {"image_url": {"uri": "s3://b/cat_640x480.png", "size": 7}, "other": {"uri": "s3://x"}}
        r = w.result(first, data={"resized_url": "s3://b/cat_640x480.png"}, data_metadata=meta)
        check(o.workers()[0]["_internal_load"] == 1, "-1 for the result, +1 for the next step", o.workers())
        sig = w.o.job(jid)["results"][-1]["security"]
        second = w.task()
        check(second["params"]["image_url"] == "s3://b/cat_640x480.png" and second["security"] == sig, second)
        check(second["params_metadata"] == {"image_url": meta["image_url"]}, "only keys present in params", second)
        check(second["task_id"] != first["task_id"], "a new task id per dispatch")
        w.result(second, data={"final_url": "s3://b/final.png"})
        check(o.job(jid)["status"] == "finished" and o.workers()[0]["_internal_load"] == 0, o.workers())


@test
def string_skills_poison_dispatch(t):
    """5.1/E5: a string in one worker's supported_skills (a heartbeat can
    store one) makes every dispatch raise; jobs are quarantined with that
    message although another idle worker could do the task, and every empty
    poll ends in a 500 (the stealing scan); fixing the record restores
    dispatch."""
    with orch14() as o:
        w1, w2 = W(o, "z1"), W(o, "z2")
        w1.register(skills=[{"name": "zecho"}])
        w2.register(skills=[{"name": "zecho"}])
        check(o.job(o.create_job("zecho", {}))["status"] == "waiting_for_worker")
        check(w1.beat({"status": "idle", "supported_skills": ["zecho"]}).json() == {"status": "ok"})
        j = o.wait_job(o.create_job("zecho", {}))
        check(j["status"] == "quarantined" and j["error_message"] == "'str' object has no attribute 'get'", j)
        check(j["retry_count"] == 3, j)
        j = o.wait_job(o.create_job("other", {}))
        check(j["error_message"] == "'str' object has no attribute 'get'", "every task type", j)
        w1.task()       # the job dispatched before the poisoning (to z1: first of equals)
        r = w2.poll()   # an empty hold, then the stealing scan trips over the string too (code)
        check(err(r) == (500, "'str' object has no attribute 'get'"), r)
        w1.beat({"supported_skills": [{"name": "zecho"}], "hot_skills": None})
        check(o.job(o.create_job("zecho", {}))["status"] == "waiting_for_worker", "fixed")
        # busy and draining workers are not candidates
        w1.beat({"status": "busy"})
        w2.beat({"status": "draining"})
        j = o.wait_job(o.create_job("zecho", {}))
        check(j["status"] == "quarantined" and j["error_message"] == "No suitable workers for task type 'zecho'", j)


@test
def dispatch_preferences(t):
    """5.1: the default strategy takes idle workers with the type in
    hot_skills first, then the lowest cost_per_skill, then the best
    reputation; a skill matching only by `type` is rejected by compliance."""
    with orch14() as o:
        a, b, c = W(o, "a"), W(o, "b"), W(o, "c")
        a.register(skills=[{"name": "echo"}], capabilities={"cost_per_skill": {"echo": 1}})
        b.register(skills=[{"name": "echo"}], capabilities={"cost_per_skill": {"echo": 5}})
        c.register(skills=[{"name": "other", "type": "echo"}])
        check(o.job(o.create_job("echo", {}))["task_worker_id"] == "a", "cheapest")
        b.beat({"hot_skills": ["echo"]})
        check(o.job(o.create_job("echo", {}))["task_worker_id"] == "b", "hot first")
        b.beat({"hot_skills": [], "capabilities": {}})
        a.beat({"capabilities": {}, "reputation": 0.5})
        check(o.job(o.create_job("echo", {}))["task_worker_id"] == "b", "equal cost: better reputation")
        a.beat({"status": "busy"})
        b.beat({"status": "busy"})
        j = o.wait_job(o.create_job("echo", {}))
        check(j["status"] == "quarantined" and j["error_message"] == "No worker satisfies the resource requirements "
              "for task 'echo'. Reasons: {'skill_not_found: echo': 1}", j)


@test
def retries_new_task_ids_and_stale(t):
    """3.4/5.3: a transient failure re-dispatches with a NEW task id; results
    under an older id are stale_task; after JOB_MAX_RETRIES the job is
    quarantined naming the last task; other codes route without retry and
    cost reputation; a reputation below 0.3 excludes the worker."""
    with orch14() as o:
        w = W(o)
        w.register()
        jid = o.create_job("echo", {})
        seen = []
        for attempt in range(4):
            task = w.task()
            seen.append(task["task_id"])
            r = w.result(task, status="failure", error={"code": "TRANSIENT_ERROR", "message": "boom"})
            check(r.body == b'{"status":"accepted","transition":"failure_handled"}', r)
        check(len(set(seen)) == 4, seen)
        j = o.job(jid)
        check(j["status"] == "quarantined" and j["retry_count"] == 3, j)
        check(j["error_message"] == "Task %s failed after 4 attempts: boom" % seen[-1], j)
        r = w.result({"job_id": jid, "task_id": seen[0]})
        check(r.json() == {"status": "ignored", "reason": "stale_task", "message": "Result ignored: task_id %s is "
                           "no longer active for job %s." % (seen[0], jid)}, r)
        check(w.poll().status == 204, "no fifth attempt")
        cases = [("PERMANENT_ERROR", "quarantined", "Task failed with permanent error (PERMANENT_ERROR): m", 0.05),
                 ("DEPENDENCY_ERROR", "quarantined", "Task failed with permanent error (DEPENDENCY_ERROR): m", 0.05),
                 ("CONTRACT_VIOLATION_ERROR", "quarantined",
                  "Task failed with permanent error (CONTRACT_VIOLATION_ERROR): m", 0.2),
                 ("INVALID_INPUT_ERROR", "failed", "Task failed due to invalid input: m", 0),
                 ("INTEGRITY_MISMATCH_ERROR", "failed", "Task failed due to data integrity mismatch: m", 0)]
        for code, status, msg, cost in cases:
            w.register()                            # reputation back to 1.0
            jid = o.create_job("echo", {})
            w.result(w.task(), status="failure", error={"code": code, "message": "m"})
            j = o.job(jid)
            check((j["status"], j["error_message"], j["retry_count"]) == (status, msg, 0), code, j)
            check(abs(o.workers()[0]["reputation"] - (1.0 - cost)) < 1e-9, code, o.workers())
        r = w.result({"job_id": jid, "task_id": o.job(jid)["current_task_id"]})
        check(r.json()["reason"] == "job_already_terminated", r)
        jid = o.create_job("echo", {})
        w.result(w.task(), status="failure", error={"code": "PERMANENT_ERROR", "message": "Timeout!"})
        r = w.result({"job_id": jid, "task_id": o.job(jid)["current_task_id"]})
        check(r.json()["reason"] == "deadline_exceeded", "any terminal error_message with 'timeout'", r)
        jid = o.create_job("echo", {})
        w.result(w.task(), status="failure")
        check(o.job(jid)["retry_count"] == 1, "no error object: transient")
        w.result(w.task(), status="weird")
        check(o.job(jid)["error_message"] == "Worker returned unhandled status: weird")
        w.register()
        for _ in range(14):     # 1.0 - 14 x 0.05 is just below 0.3 in binary floating point
            o.create_job("echo", {})
            w.result(w.task(), status="failure", error={"code": "SECURITY_ERROR", "message": "x"})
        j = o.wait_job(o.create_job("echo", {}))
        check(j["error_message"] == "No suitable workers meeting the reputation threshold (0.3) for task 'echo'", j)
        w.register()
        check(o.job(o.create_job("echo", {}))["status"] == "waiting_for_worker", "re-registration resets reputation")


@test
def worker_mismatch_and_stealing(t):
    """3.4/5.2/E7: after an empty hold a poll takes a task from the longest
    queue of another worker with the same skill name and becomes its owner;
    the original worker's result is then worker_mismatch. steal=false: 204."""
    with orch14() as o:
        a, b = W(o, "a"), W(o, "b")
        a.register(skills=[{"name": "echo"}])
        b.register(skills=[{"name": "echo", "type": "echo"}])
        jid = o.create_job("echo", {"x": 1}, worker_id="a")
        t0 = time.monotonic()
        task = b.task()
        check(task["job_id"] == jid and time.monotonic() - t0 >= 0.25, "stolen after the hold", task)
        j = o.job(jid)
        check(j["assigned_worker_id"] == "b" and j["task_worker_id"] == "b", j)
        r = a.result(task)
        check(r.body == b'{"message":"Forbidden: This task is assigned to a different worker.",'
                        b'"reason":"worker_mismatch","status":"ignored"}', r)
        check(b.result(task).json() == {"status": "accepted", "transition": "success_transition"})
        check(o.stats()["counters"].get("stolen") == 1, o.stats())
        o.config(steal=False)
        o.create_job("echo", {}, worker_id="a")
        check(b.poll().status == 204, "no stealing when turned off")
        check(a.task()["type"] == "echo")


@test
def cancel_and_timeouts(t):
    """3.4/5.4/5.6: cancelled is not terminal (a late success finishes the job,
    a duplicate cancelled is accepted again); on MemoryStorage an execution
    timeout after pick-up re-dispatches under a new task id, a task never
    picked up does not time out, nor does a result deadline."""
    with orch14(watcher_interval=0.1) as o:
        w = W(o)
        w.register()
        jid = o.create_job("echo", {})
        task = w.task()
        check(o.cancel(jid) == (200, {"status": "cancellation_request_accepted"}))
        check(w.result(task, data={"late": 1}).json()["transition"] == "success_transition")
        check(o.job(jid)["status"] == "finished")
        jid = o.create_job("echo", {})
        task = w.task()
        o.cancel(jid)
        for _ in range(2):
            r = w.result(task, status="cancelled")
            check(r.body == b'{"status":"accepted","transition":"cancelled_handled"}', r)
        check(o.job(jid)["status"] == "cancelled")
        jid = o.create_job("echo", {}, timeout_seconds=0.4)
        first = w.task()
        j = o.wait_job(jid, lambda j: j["retry_count"] == 1, timeout=5)
        check(j["status"] == "waiting_for_worker" and j["current_task_id"] != first["task_id"], j)
        second = w.task()
        check(second["task_id"] == j["current_task_id"], second)
        check(w.result(first).json()["reason"] == "stale_task")
        check(w.result(second).json()["status"] == "accepted")
        W(o, "w9").register(skills=[{"name": "slowx"}])     # never polls
        never = o.create_job("slowx", {}, timeout_seconds=0.2, dispatch_timeout_seconds=0.2)
        late = o.create_job("echo", {}, result_timeout_seconds=0.2)
        got = w.task()
        check(got["job_id"] == late, got)
        time.sleep(tmo(0.8))
        j = o.job(never)
        check(j["status"] == "waiting_for_worker" and j["retry_count"] == 0,
              "never picked up: no timeout on MemoryStorage (E3)", j)
        j = o.job(late)
        check(j["status"] == "waiting_for_worker" and j["retry_count"] == 0, "a result deadline never fires", j)


@test
def sts_tokens(t):
    """1.5: any authenticated worker gets an access + refresh token; refresh
    needs no access token, old refresh tokens stay valid; the error answers;
    an access token authenticates requests and the WS handshake; expired
    access tokens are 403 No valid token found."""
    with orch14(sts_expires_in=1) as o:
        w = W(o)
        r = o.request("POST", "/_worker/auth/token", headers=w.headers())
        pair = r.json()
        check(r.status == 200 and list(pair) == ["access_token", "expires_in", "refresh_token", "worker_id"], r)
        check(pair["expires_in"] == 1 and pair["worker_id"] == "w1" and len(pair["access_token"]) == 43, pair)
        check(W(o, token=pair["access_token"]).poll().status == 204)
        r = W(o, "w2", token=pair["access_token"]).poll()
        check(err(r) == (403, "Unauthorized: Access Token belongs to 'w1', but request is for 'w2'"), r)
        refresh = "/_worker/auth/token/refresh"
        r = o.request("POST", refresh, {"refresh_token": pair["refresh_token"]}, headers={"X-Worker-ID": "w1"})
        new = r.json()
        check(r.status == 200 and new["refresh_token"] != pair["refresh_token"] and new["worker_id"] == "w1", r)
        r = o.request("POST", refresh, {"refresh_token": pair["refresh_token"]}, headers={"X-Worker-ID": "w1"})
        check(r.status == 200, "old refresh token still valid", r)
        r = o.request("POST", refresh, {"refresh_token": pair["refresh_token"], "worker_id": "w1"})
        check(r.status == 200, "the body's worker_id is the fallback hint", r)
        r = o.request("POST", refresh, {"refresh_token": pair["refresh_token"]})
        check(err(r) == (400, "Missing worker_id identification"), r)
        r = o.request("POST", refresh, {"refresh_token": "nope"}, headers={"X-Worker-ID": "w1"})
        check(err(r) == (403, "Unauthorized: Invalid refresh token (not found)"), r)
        r = o.request("POST", refresh, {"refresh_token": pair["refresh_token"]}, headers={"X-Worker-ID": "w2"})
        check(err(r) == (403, "Unauthorized: Invalid refresh token (owner mismatch)"), r)
        r = o.request("POST", "/_worker/auth/token", headers={"X-Worker-Token": "nope", "X-Worker-ID": "w1"})
        check(err(r) == (403, "Unauthorized: No valid token found"), r)
        time.sleep(1.2)
        r = W(o, token=new["access_token"]).poll()
        check(err(r) == (403, "Unauthorized: No valid token found"), "expired", r)


def ws_raw(o, path, token, timeout=5):
    """The raw bytes of a WebSocket upgrade answer (until the server closes)."""
    c = socket.create_connection(("127.0.0.1", o.port), timeout=tmo(timeout))
    c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               "X-Worker-Token: %s\r\n\r\n" % (path, token)).encode())
    out = b""
    try:
        while b"\r\n\r\n" not in out or (b"Content-Length" in out and not out.endswith(b"found")):
            d = c.recv(4096)
            if not d:
                break
            out += d
    except socket.timeout:
        out += b"<timeout>"
    c.close()
    return out


@test
def websocket(t):
    """3.6: 403 text/plain before the upgrade; cancel_task pushed only when
    the STORED record has capabilities.websockets (a heartbeat stores it);
    signed frames are events, bad frames only logged; a new socket closes
    the old one; an STS access token works for the handshake."""
    async def run(o):
        w = W(o)
        w.register(capabilities={"hostname": "h", "websockets": True})
        s = aiohttp.ClientSession()
        ws = await s.ws_connect(o.ws_url + "/_worker/ws/w1", headers=w.headers())
        wait_for(lambda: o.ws_connected("w1"), what="socket registered")
        jid = o.create_job("sleep", {})
        task = w.task()
        o.cancel(jid)
        try:
            msg = await asyncio.wait_for(ws.receive(), 1.0)
            check(False, "pushed without a stored capabilities.websockets", msg)
        except asyncio.TimeoutError:
            pass
        w.beat({"status": "idle", "capabilities": {"hostname": "h", "websockets": True}})
        jid = o.create_job("sleep", {})
        task = w.task()
        o.cancel(jid)
        msg = await asyncio.wait_for(ws.receive(), tmo(5))
        check(msg.data == '{"command": "cancel_task", "task_id": "%s", "job_id": "%s"}' % (task["task_id"], jid), msg)
        jid = o.create_job("sleep", {})
        w.task()
        frame = w.signed({"event_id": "e1", "worker_id": "w1", "origin_worker_id": "w1", "event_type": "progress",
                          "payload": {"progress": 0.75, "message": "ws"}, "target_job_id": jid,
                          "bubbling_chain": []}, ignore=("bubbling_chain",))
        await ws.send_str(json.dumps({"event_id": "e0", "worker_id": "w1", "origin_worker_id": "w1",
                                      "event_type": "progress", "payload": {"progress": 0.5},
                                      "target_job_id": jid}))
        await ws.send_str("not json")
        await ws.send_str(json.dumps(frame))
        wait_for(lambda: o.job(jid)["progress"] == 0.75, what="signed progress frame")
        check(o.job(jid)["progress_message"] == "ws" and not ws.closed)
        out = o.output()
        check("Error processing WebSocket message from w1: Missing required timestamp for replay protection" in out
              and "Error processing WebSocket message from w1: invalid literal: line 1 column 1 (char 0)" in out, out)
        ws2 = await s.ws_connect(o.ws_url + "/_worker/ws/w1", headers=w.headers())
        msg = await asyncio.wait_for(ws.receive(), tmo(5))
        check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000, "the 1.0b27 close code (E8)", msg)
        wait_for(lambda: o.ws_connected("w1"), what="the new socket stays registered")
        check(o.ws_send("w1", {"command": "ping"}), "the new socket is the registered one")
        msg = await asyncio.wait_for(ws2.receive(), tmo(5))
        check(json.loads(msg.data) == {"command": "ping"}, msg)
        await ws2.close()
        access = o.request("POST", "/_worker/auth/token", headers=w.headers()).json()["access_token"]
        ws3 = await s.ws_connect(o.ws_url + "/_worker/ws/w1", headers=W(o, token=access).headers())
        await ws3.close()
        try:
            await s.ws_connect(o.ws_url + "/_worker/ws/w1", headers=W(o, token="bad").headers())
            check(False, "handshake with a bad token succeeded")
        except aiohttp.WSServerHandshakeError as e:
            check(e.status == 403, e)
        await s.close()
    with orch14() as o:
        asyncio.run(run(o))
        out = ws_raw(o, "/_worker/ws/w1", "bad")
        check(out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Content-Type: text/plain; charset=utf-8" in out
              and b"X-RXON-Version: 1.0b14" in out and out.endswith(b"\r\n\r\nUnauthorized: No valid token found"),
              out)
        check(b"101" not in out.split(b"\r\n")[0], out)


@test
def gzip_router_and_rate_limit(t):
    """1.1/1.4/1.6: answers >= 500 bytes are gzipped without the version
    header, router 404/405 are plain text; the worker limiter counts per
    credential, worker and message type after authentication and answers a
    double-encoded 429 with the version header (Retry-After only when
    configured); the client API's 429 is the old format."""
    with orch14() as o:
        w = W(o)
        w.register()
        o.create_job("echo", {"blob": "x" * 600})
        r = w.poll(headers={"Accept-Encoding": "gzip"})
        check(r.headers.get("Content-Encoding") == "gzip" and "X-RXON-Version" not in r.headers, r.headers)
        check(json.loads(gzip.decompress(r.body))["params"]["blob"] == "x" * 600)
        r = o.request("GET", "/_worker/nothing")
        check(r.status == 404 and r.body == b"404: Not Found" and "X-RXON-Version" not in r.headers, r)
        r = o.request("GET", "/_worker/events")
        check(r.status == 405 and r.body == b"405: Method Not Allowed" and "X-RXON-Version" not in r.headers, r)
        o.config(rate_limit={"poll_limit": 2, "heartbeat_limit": 1, "limit": 50, "period": 5})
        check([W(o, token="bad").poll().status for _ in range(3)] == [403] * 3, "failed auth is not counted")
        check([w.poll().status for _ in range(3)] == [204, 204, 429])
        r = w.poll()
        check(r.body == b'{"error":"{\\"error\\": \\"Too Many Requests\\"}"}' and "Retry-After" not in r.headers, r)
        check(r.headers["X-RXON-Version"] == "1.0b14", r.headers)
        check([w.beat().status for _ in range(2)] == [200, 429], "heartbeats have their own counter")
        check(W(o, "w2").poll().status == 204, "per worker")
        o.config(rate_limit={"poll_limit": 0, "period": 5, "retry_after": 7})
        r = W(o, "w3").poll()
        check(r.status == 429 and r.headers["Retry-After"] == "7", r)
        o.config(rate_limit={"limit": 1, "period": 5})
        check([o.request("GET", "/api/v1/jobs").status for _ in range(2)] == [200, 429])
        r = o.request("GET", "/api/v1/jobs")
        check(r.body == b'{"error": "Too Many Requests"}' and "X-RXON-Version" not in r.headers, r)
        check([o.request("GET", "/_public/status").status for _ in range(2)] == [200, 429], "/_public too")


@test
def schemas_and_contract(t):
    """3.1/3.4: a skill's input_schema is checked against params at dispatch,
    its output_schema against a success's data (a violation is a
    CONTRACT_VIOLATION_ERROR failure costing 0.2 twice)."""
    with orch14() as o:
        w = W(o)
        schema_in = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
        schema_out = {"type": "object", "required": ["out"], "properties": {"out": {"type": "string"}}}
        w.register(skills=[{"name": "calc", "input_schema": schema_in, "output_schema": schema_out}])
        j = o.wait_job(o.create_job("calc", {"m": 1}))
        check(j["status"] == "quarantined" and j["error_message"] == "No worker satisfies the resource requirements "
              "for task 'calc'. Reasons: {\"schema_validation_failed: Missing required field: 'n'\": 1}", j)
        j = o.wait_job(o.create_job("calc", {"n": "x"}))
        check("Field 'n': Expected integer" in j["error_message"], j)
        jid = o.create_job("calc", {"n": 2})
        r = w.result(w.task(), data={"out": 5})
        check(r.json()["transition"] == "failure_handled", r)
        j = o.job(jid)
        check(j["status"] == "quarantined" and j["error_message"] ==
              "Task failed with permanent error (CONTRACT_VIOLATION_ERROR): Contract violation: result data does not "
              "match output_schema. Field 'out': Expected string", j)
        check(abs(o.workers()[0]["reputation"] - 0.6) < 1e-9, o.workers())
        jid = o.create_job("calc", {"n": 2})
        check(w.result(w.task(), data={"out": "ok"}).json()["transition"] == "success_transition")
        check(o.job(jid)["status"] == "finished")


@test
def control_api_in_14(t):
    """The shared test-control API in 1.0b14 mode: faults (incl. the event
    kind), request log, stats by task id, prequeue, expire, wait, reset."""
    with orch14() as o:
        w = W(o)
        w.register()
        o.inject("event", status=503, raw="busy")
        r = w.event("j", "log")
        check(r.status == 503 and r.body == b"busy", r)
        o.inject("result", "drop", process=True)
        jid = o.create_job("echo", {})
        task = w.task()
        try:
            w.result(task)
            check(False, "expected a connection error")
        except Exception as e:
            check("Remote" in repr(e) or "Connection" in repr(e), e)
        check(o.job(jid)["status"] == "finished", "applied before the drop")
        ids = o.prequeue("w1", "echo", count=2)
        got = [w.task() for _ in ids]
        st = o.worker_stats("w1")
        check(st["outstanding_task_ids"] == [g["task_id"] for g in got] and st["outstanding"] == 2, st)
        waiter = threading.Thread(target=lambda: o._json("GET", "/_test/wait?results=3&timeout=20"))
        waiter.start()
        for g in got:
            w.result(g)
        waiter.join(tmo(5))
        check(not waiter.is_alive(), "wait answered")
        check(o.worker_stats("w1")["outstanding"] == 0, o.worker_stats("w1"))
        rows = o.log(kind="poll")
        check(rows and rows[-1]["resp_headers"]["X-RXON-Version"] == "1.0b14", rows[-1:])
        check(o.expire("w1")["was_registered"] and w.beat().body == b"null")
        o.reset()
        check(o.workers() == [] and o.jobs()["jobs"] == [] and o.config()["protocol"] == "1.0b14")


main()
