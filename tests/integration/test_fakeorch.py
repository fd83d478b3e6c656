#!/usr/bin/python3
"""Tests of the fake orchestrator itself (tests/orchestrator/fakeorch.py),
driven by raw HTTP and WebSocket clients playing a scripted worker. The
expected answers are the ones PROTOCOL.md quotes from the real 1.0b13
(section numbers in the comments). No daemon binary is needed."""
import asyncio
import gzip
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from avt import check, main, test, tmo, wait_for  # noqa: E402
from orch import FINAL, FakeOrch  # noqa: E402

import aiohttp  # noqa: E402

# These are the 1.0b3 dialect's tests (test_fakeorch14.py has 1.0b14's): the
# fake must speak 1.0b3 here even when the runner exports AVT_FAKE_PROTOCOL.
os.environ.pop("AVT_FAKE_PROTOCOL", None)

REG = {"worker_id": "w1", "worker_type": "generic-worker", "supported_skills": ["echo"],
       "resources": {"max_concurrent_tasks": 10, "cpu_cores": 4, "gpu_info": None},
       "installed_software": {"python": "3.11"}, "installed_models": [],
       "capabilities": {"hostname": "host1", "ip_address": "127.0.0.1", "cost_per_skill": {},
                        "s3_config_hash": None, "extra": {"websockets": True}}}
V = {"X-RXON-Version": "1.0b3"}


def reg(o, wid="w1", skills=("echo",), ws=False, **kw):
    body = dict(REG, worker_id=wid, supported_skills=list(skills), **kw)
    if ws:
        body["capabilities"] = dict(body["capabilities"], websockets=True)
    r = o.worker_request("POST", "/_worker/workers/register", body, headers=V)
    check(r.status == 200, r)
    return r


def poll(o, wid="w1", headers=None, **kw):
    return o.worker_request("GET", "/_worker/workers/%s/tasks/next" % wid, headers=dict(V, **(headers or {})), **kw)


def result(o, job_id, wid="w1", status="success", data=None, error=None, **kw):
    body = {"job_id": job_id, "task_id": job_id, "worker_id": wid, "status": status, "data": data,
            "error": error, "data_metadata": None}
    return o.worker_request("POST", "/_worker/tasks/result", body, headers=V, **kw)


def beat(o, wid="w1", body=None, **kw):
    return o.worker_request("PATCH", "/_worker/workers/" + wid, body, headers=V, **kw)


def hb_body(wid="w1", tasks=()):
    return {"worker_id": wid, "status": "idle", "load": float(len(tasks)), "current_tasks": list(tasks),
            "supported_skills": ["echo"], "hot_cache": []}


@test
def transcript_a(t):
    """PROTOCOL.md section 5, transcript A, byte for byte where it shows bodies."""
    with FakeOrch(poll_timeout=0.5) as o:
        r = reg(o)
        check(r.body == b'{"status": "registered", "version": "1.0b3", "warning": null}', r)
        check(r.headers["X-RXON-Version"] == "1.0b3" and r.headers["Content-Length"] == "61", r.headers)
        t0 = time.monotonic()
        r = poll(o)
        check(r.status == 204 and r.body == b"" and time.monotonic() - t0 >= 0.45, r)
        check(r.headers["X-RXON-Version"] == "1.0b3", r.headers)
        jid = o.create_job("echo", {"msg": "hi"})
        r = poll(o)
        check(r.status == 200 and r.headers["Content-Length"] == "190", r)
        check(r.body == ('{"job_id": "%s", "task_id": "%s", "type": "echo", "params": {"msg": "hi"}, '
                         '"tracing_context": {}, "params_metadata": null}' % (jid, jid)).encode(), r)
        r = beat(o, body=dict(hb_body(tasks=[jid]), skill_dependencies=None))
        check(r.status == 200 and r.body == b'{"status": "ok"}', r)
        r = result(o, jid, data={"echo": "hi"})
        check(r.body == b'{"status": "accepted", "transition": "success_transition"}', r)
        j = o.job(jid)
        check(j["status"] == "finished" and j["current_state"] == "finished", j)
        check(j["state_history"] == {"echo": "hi"} and j["task_picked_up_at"] and j["task_worker_id"] == "w1", j)
        r = result(o, jid, data={"echo": "hi"})
        check(r.json() == {"status": "ignored", "reason": "job_already_terminated", "message":
                           "Result ignored: the job is already in a terminal state (finished)."}, r)
        check(len(o.job(jid)["results"]) == 2, "both result bodies kept")
        r = beat(o, body=hb_body(tasks=[jid]))
        check(r.body == ('{"status": "ok", "cancel_task_ids": ["%s"]}' % jid).encode(), r)
        r = beat(o)
        check(r.body == b'{"status": "ttl_refreshed"}', r)
        rows = o.log(kind="poll")
        check([x["status"] for x in rows] == [204, 200], rows)
        check(rows[1]["headers"]["X-Worker-Token"] == "worker-token", rows[1])


@test
def register_errors(t):
    """Section 2.1: 500 for a missing or invalid id and for bad JSON; warning on a version mismatch."""
    with FakeOrch() as o:
        r = o.worker_request("POST", "/_worker/workers/register", {"supported_skills": []})
        check(r.status == 500 and r.json() == {"error": "Missing required field: worker_id"}, r)
        r = o.worker_request("POST", "/_worker/workers/register", {"worker_id": "bad id!"})
        check(r.status == 500 and r.json() == {"error": "Invalid worker_id: 'bad id!'. Must be alphanumeric, "
                                               "underscores, or hyphens only."}, r)
        r = o.worker_request("POST", "/_worker/workers/register", raw=b"{nope")
        check(r.status == 500 and r.json()["error"].startswith("Expecting property name"), r)
        r = o.worker_request("POST", "/_worker/workers/register", {"worker_id": "w2"},
                             headers={"X-RXON-Version": "0.9"})
        check(r.json()["warning"] == "Protocol version mismatch! Orchestrator: 1.0b3, Worker: 0.9.", r)
        r = o.worker_request("POST", "/_worker/workers/register", {"worker_id": "w3"})
        check(r.json()["warning"] is None, r)
        w = {x["worker_id"]: x for x in o.workers()}
        check(w["w2"] == {"worker_id": "w2", "reputation": 1.0}, w)


@test
def auth_errors(t):
    """Section 1.1: every 401 text, individual tokens without global fallback."""
    with FakeOrch(workers_toml='[wi]\ntoken = "own"\n') as o:
        def err(r):
            return r.status, (r.json() or {}).get("error")
        check(err(poll(o, token=False)) == (401, "Missing X-Worker-Token header or client certificate"))
        check(err(poll(o, token="wrong")) == (401, "Unauthorized: No valid token found"))
        check(err(poll(o, "wi", token="wrong")) == (401, "Unauthorized: Invalid individual worker token"))
        check(err(poll(o, "wi")) == (401, "Unauthorized: Invalid individual worker token"), "global refused")
        r = o.worker_request("POST", "/_worker/workers/register", {"worker_id": "wi"}, token="own")
        check(r.status == 200, r)
        body = {"job_id": "j", "task_id": "j"}
        r = o.worker_request("POST", "/_worker/tasks/result", body, token="own")
        check(err(r) == (401, "Unauthorized: Invalid token or missing worker_id hint"), r)
        r = o.worker_request("POST", "/_worker/tasks/result", body)
        check(r.status == 200 and r.json()["reason"] == "job_not_found", r)
        check(r.json()["message"] == "Job j not found (expired or deleted).", r)
        r = o.worker_request("POST", "/_worker/tasks/result", {"worker_id": "w1"})
        check(err(r) == (500, "job_id and task_id are required"), r)
        r = o.worker_request("POST", "/_worker/tasks/result", raw=b"")
        check(r.status == 500 and "Expecting value" in r.json()["error"], r)
        r = o.worker_request("POST", "/_worker/auth/token")
        check(err(r) == (403, "Unauthorized: mTLS certificate required to issue access token."), r)


@test
def heartbeat_expiry(t):
    """Sections 2.3, 3.6: unknown/expired -> null on an empty body, ok (not stored) on JSON; 500 on non-JSON."""
    with FakeOrch() as o:
        r = beat(o, "ghost")
        check(r.status == 200 and r.body == b"null", r)
        check(beat(o, "ghost", hb_body("ghost")).body == b'{"status": "ok"}')
        check(o.workers() == [], "unknown heartbeat stored nothing")
        reg(o)
        check(beat(o).json() == {"status": "ttl_refreshed"})
        check(beat(o, body={}).json() == {"status": "ttl_refreshed"}, "falsy JSON body = refresh")
        o.expire("w1")
        check(beat(o).body == b"null", "expired")
        check(beat(o, body=hb_body()).json() == {"status": "ok"})
        check(o.workers() == [], "expired worker is gone")
        r = beat(o, raw=b"not json")
        check(r.status == 500 and r.json()["error"].startswith("Expecting value"), r)
        reg(o)
        check(beat(o, body={"status": "busy", "extra": 1}).json() == {"status": "ok"})
        w = o.workers()[0]
        check(w["status"] == "busy" and w["extra"] == 1 and w["supported_skills"] == ["echo"], w)


@test
def dispatch_rules(t):
    """Section 3.1: no idle worker -> quarantined; busy workers and unlisted skills are skipped;
    null hot_skills breaks dispatch; queue_when_no_worker parks jobs instead."""
    with FakeOrch(poll_timeout=0.3) as o:
        j = o.wait_job(o.create_job("echo", {}))   # the retries run behind other work
        check(j["status"] == "quarantined" and j["error_message"] == "No suitable workers for task type 'echo'", j)
        check(j["retry_count"] == 3, j)
        reg(o)
        beat(o, body={"status": "busy"})
        check(o.wait_job(o.create_job("echo", {}))["status"] == "quarantined")
        beat(o, body={"status": "idle", "hot_skills": None})
        j = o.wait_job(o.create_job("echo", {}))
        check(j["error_message"] == "argument of type 'NoneType' is not iterable", j)
        beat(o, body={"hot_skills": []})
        check(o.job(o.create_job("echo", {}))["status"] == "waiting_for_worker")
        check(o.wait_job(o.create_job("other", {}))["status"] == "quarantined")
        o.config(queue_when_no_worker=True)
        jid = o.create_job("other", {"k": 1})
        check(o.job(jid)["status"] == "waiting_for_worker" and o.stats()["pending"] == 1)
        reg(o, "w2", skills=["other"])
        r = poll(o, "w2")
        check(r.status == 200 and r.json()["task_id"] == jid and r.json()["params"] == {"k": 1}, r)


@test
def failed_dispatch_retries_run_behind_other_requests(t):
    """The executor's handler retries (1.0b13 executor.py:467-515): a failed dispatch is retried
    JOB_MAX_RETRIES times (each attempt counted as dispatch_failed), and requests are served in
    between, so a worker that turns idle meanwhile gets the job instead of it being quarantined."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        beat(o, body={"status": "busy"})
        j = o.wait_job(o.create_job("echo", {}))
        check(j["status"] == "quarantined" and j["retry_count"] == 3, j)
        check(o.stats()["counters"]["dispatch_failed"] == 4, o.stats()["counters"])
        o.config(max_retries=10 ** 9)
        jid = o.create_job("echo", {"n": 1})
        wait_for(lambda: o.job(jid)["retry_count"] >= 5, what="retries under way")
        check(o.job(jid)["status"] == "awaiting_retry", o.job(jid))
        beat(o, body={"status": "idle"})
        j = o.wait_job(jid, pred=lambda j: j["status"] == "waiting_for_worker")
        check(j["error_message"] == "No suitable workers for task type 'echo'", j)
        r = poll(o)
        check(r.status == 200 and r.json()["task_id"] == jid, r)


@test
def priority_fifo(t):
    """Section 2.2: higher priority first, FIFO among equals (queue patch c)."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        ids = {p: o.create_job("echo", {"p": p, "n": n}, priority=p) for n, p in enumerate([1, 9, 5, 5.0, 0])}
        got = [poll(o).json()["params"] for _ in range(5)]
        check([g["p"] for g in got] == [9, 5, 5.0, 1, 0], got)
        check([g["n"] for g in got] == [1, 2, 3, 0, 4], got)
        check(poll(o).status == 204)
        check(len(ids) == 4)


@test
def failure_routing_and_retries(t):
    """Section 3.2: TRANSIENT and unknown codes retry the SAME task id; others by code."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        jid = o.create_job("echo", {})
        for attempt in range(4):
            task = poll(o).json()
            check(task["task_id"] == jid, task)
            r = result(o, jid, status="failure", error={"code": "TRANSIENT_ERROR", "message": "boom"})
            check(r.json() == {"status": "accepted", "transition": "failure_handled"}, r)
            j = o.job(jid)
            check(j["retry_count"] == min(attempt + 1, 3), j)
        check(j["status"] == "quarantined" and j["error_message"] == "Task failed after 4 attempts: boom", j)
        check(poll(o).status == 204, "no fifth attempt")
        cases = [({"code": "PERMANENT_ERROR", "message": "m"}, "quarantined",
                  "Task failed with permanent error (PERMANENT_ERROR): m"),
                 ({"code": "SECURITY_ERROR", "message": "m"}, "quarantined",
                  "Task failed with permanent error (SECURITY_ERROR): m"),
                 ({"code": "INVALID_INPUT_ERROR", "message": "m"}, "failed",
                  "Task failed due to invalid input: m"),
                 ({"code": "INTEGRITY_MISMATCH_ERROR", "message": "m"}, "failed",
                  "Task failed due to data integrity mismatch: m")]
        for err, status, msg in cases:
            jid = o.create_job("echo", {})
            poll(o)
            result(o, jid, status="failure", error=err)
            j = o.job(jid)
            check((j["status"], j["error_message"], j["retry_count"]) == (status, msg, 0), j)
        jid = o.create_job("echo", {})
        poll(o)
        result(o, jid, status="failure", error="plain string")
        check(o.job(jid)["retry_count"] == 1 and poll(o).json()["task_id"] == jid, "string error retried")
        r = result(o, jid, status="weird")
        check(r.json()["transition"] == "unhandled_status_failure", r)
        check(o.job(jid)["error_message"] == "Worker returned unhandled status: weird")


@test
def retry_without_worker_is_500(t):
    """A transient failure while no worker is idle: the re-dispatch raises inside the result handler."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        jid = o.create_job("echo", {})
        poll(o)
        beat(o, body={"status": "busy"})
        r = result(o, jid, status="failure", error={"code": "TRANSIENT_ERROR", "message": "x"})
        check(r.status == 500 and r.json() == {"error": "No suitable workers for task type 'echo'"}, r)


@test
def pipeline_and_custom_transition(t):
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o, skills=["a", "b"])
        jid = o.create_job("a", {"x": 1}, pipeline=["b"])
        check(poll(o).json()["type"] == "a")
        result(o, jid, data={"y": 2})
        j = o.job(jid)
        check(j["status"] == "waiting_for_worker" and j["current_state"] != "start", j)
        task = poll(o).json()
        check(task["type"] == "b" and task["params"] == {"x": 1, "y": 2} and task["task_id"] == jid, task)
        result(o, jid, data={"z": 3})
        j = o.job(jid)
        check(j["status"] == "finished" and j["state_history"] == {"y": 2, "z": 3}, j)
        jid = o.create_job("a", {}, transitions={"custom": "finished"})
        poll(o)
        check(result(o, jid, status="custom").json()["transition"] == "success_transition")
        check(o.job(jid)["status"] == "finished")
        reg(o, skills=["resize_image", "apply_filters"])
        jid = o.create_blueprint_job("process-image", {"width": 10})
        task = poll(o).json()
        check(task["params"] == {"image_url": "s3://harness/input.png", "width": 10, "height": 480}, task)
        result(o, jid, data={"resized_url": "s3://r"})
        task = poll(o).json()
        check(task["params"] == {"image_url": "s3://r", "filters": ["sharpen", "grayscale"]}, task)
        result(o, jid, data={"final_url": "s3://f"})
        j = o.job(jid)
        check(j["status"] == "finished" and j["current_state"] == "finished", j)
        check(j["state_history"] == {"resized_url": "s3://r", "final_url": "s3://f"}, j)


@test
def cancel_feedback(t):
    """Section 3.5: cancel -> status cancelled at once, 404 when terminal, heartbeat lists it,
    a later success still finishes the job."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        jid = o.create_job("echo", {})
        poll(o)
        check(o.cancel(jid) == (200, {"status": "cancellation_request_accepted"}))
        check(o.job(jid)["status"] == "cancelled")
        check(beat(o, body=hb_body(tasks=[jid, "gone"])).json() ==
              {"status": "ok", "cancel_task_ids": [jid, "gone"]})
        check(result(o, jid, data={"late": 1}).json()["transition"] == "success_transition")
        check(o.job(jid)["status"] == "finished", "cancelled is not terminal")
        check(o.cancel(jid) == (404, {"error": "Job not found or already terminal."}))
        check(o.cancel("nope")[0] == 404)
        jid = o.create_job("echo", {})
        poll(o)
        o.cancel(jid)
        check(result(o, jid, status="cancelled").json() == {"status": "accepted",
                                                            "transition": "cancelled_handled"})
        check(o.job(jid)["status"] == "cancelled")


async def ws_connect(o, path, token="worker-token"):
    s = aiohttp.ClientSession()
    try:
        ws = await s.ws_connect(o.ws_url + path, headers={"X-Worker-Token": token, **V})
    except Exception:
        await s.close()
        raise
    return s, ws


@test
def websocket_cancel_and_progress(t):
    """Section 2.6: cancel pushed only with top-level capabilities.websockets and an identified socket;
    progress_update stored; a new socket closes the old one with 1008."""
    async def run(o):
        reg(o, ws=True)
        s, ws = await ws_connect(o, "/_worker/ws/w1")
        wait_for(lambda: o.ws_connected("w1"), what="socket registered")
        jid = o.create_job("echo", {})
        check(poll(o).json()["task_id"] == jid)
        await ws.send_str(json.dumps({"event": "progress_update", "task_id": jid, "job_id": jid,
                                      "progress": 0.5, "message": "half way"}))
        await ws.send_str("not json")
        wait_for(lambda: o.job(jid)["progress"] == 0.5, what="progress")
        check(o.job(jid)["progress_message"] == "half way")
        o.cancel(jid)
        msg = await asyncio.wait_for(ws.receive(), tmo(5))
        check(msg.data == '{"command": "cancel_task", "task_id": "%s", "job_id": "%s"}' % (jid, jid), msg)
        check(any(r["method"] == "WS-RECV" and r["body"] for r in o.log(path="/_worker/ws")), "frames logged")
        s2, ws2 = await ws_connect(o, "/_worker/ws/w1")
        msg = await asyncio.wait_for(ws.receive(), tmo(5))
        check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra ==
              "New connection established", msg)
        await ws.close()
        await ws2.close()
        await s.close()
        await s2.close()
        # Registered without the top-level flag: nothing is pushed.
        reg(o, "w2")
        s, ws = await ws_connect(o, "/_worker/ws/w2")
        o.config(ws_unregister_quirk=False)
        jid = o.create_job("echo", {})
        poll(o, "w2")
        o.cancel(jid)
        check(o.ws_send("w2", {"command": "ping"}), "test push works")
        msg = await asyncio.wait_for(ws.receive(), tmo(5))
        check(json.loads(msg.data) == {"command": "ping"}, msg)
        await ws.close()
        await s.close()
    with FakeOrch(poll_timeout=0.3) as o:
        asyncio.run(run(o))


def raw_ws_handshake(o, path, token, timeout=5, until=None):
    """The raw bytes the server sends for a WebSocket upgrade, until it closes
    (or "<timeout>" appended when it keeps the connection open)."""
    return raw_request(o, ("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                           "X-Worker-Token: %s\r\n\r\n" % (path, token)).encode(), timeout, until)


@test
def websocket_bad_token_101_then_401(t):
    """Sections 1.1/2.6: 101, then a plain HTTP 401 inside the upgraded stream. Like the real
    1.0b13 (checked live), the server then leaves the connection open."""
    with FakeOrch() as o:
        out = raw_ws_handshake(o, "/_worker/ws/w1", "wrong", timeout=1, until=b"No valid token found")
        check(out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), out)
        tail = out.split(b"\r\n\r\n", 1)[1]
        check(tail.startswith(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n"), out)
        check(tail.endswith(b"\r\n\r\nUnauthorized: No valid token found<timeout>"), out)
        out = raw_ws_handshake(o, "/_worker/ws", "wrong", timeout=1, until=b"missing worker_id hint")
        check(out.endswith(b"Unauthorized: Invalid token or missing worker_id hint<timeout>"), out)

        async def client_view():
            try:
                s, ws = await ws_connect(o, "/_worker/ws/w1", token="wrong")
            except aiohttp.WSServerHandshakeError:
                return "handshake"
            msg = await asyncio.wait_for(ws.receive(), tmo(5))
            await s.close()
            return msg.type
        kind = asyncio.run(client_view())
        check(kind in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE), kind)


def raw_request(o, req, timeout=5, until=None):
    """The bytes answered to req until the server closes, or until it is
    silent for `timeout` (then "<timeout>" is appended). With `until`, the
    server first has a generous 10 s to send those bytes, however loaded the
    machine: `timeout` is then only the window in which it must not close."""
    c = socket.create_connection(("127.0.0.1", o.port), timeout=tmo(timeout if until is None else 10))
    c.sendall(req)
    out = b""
    try:
        while True:
            if until is not None and until in out:
                c.settimeout(tmo(timeout))
            d = c.recv(4096)
            if not d:
                break
            out += d
    except socket.timeout:
        out += b"<timeout>"
    c.close()
    return out


@test
def fault_injection(t):
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        o.inject("poll", status=429, body={"error": "Too Many Requests"}, headers={"Retry-After": "7"}, count=2)
        for _ in range(2):
            r = poll(o)
            check(r.status == 429 and r.headers["Retry-After"] == "7" and r.json()["error"], r)
            check("X-RXON-Version" not in r.headers, r.headers)
        check(poll(o).status == 204, "faults consumed")
        o.inject("poll", status=429, body={"error": "Too Many Requests"})
        check("Retry-After" not in poll(o).headers)
        o.inject("heartbeat", status=503, raw="upstream down")
        r = beat(o)
        check(r.status == 503 and r.body == b"upstream down", r)
        o.inject("register", "malformed")
        r = o.worker_request("POST", "/_worker/workers/register", REG)
        check(r.status == 200 and r.body == b'{"status": "acc', r)
        o.inject("register", status=401, body={"error": "Unauthorized: No valid token found"})
        check(o.worker_request("POST", "/_worker/workers/register", REG).status == 401)
        o.inject("heartbeat", "truncate", body={"status": "ok"})
        out = raw_request(o, b"PATCH /_worker/workers/w1 HTTP/1.1\r\nHost: x\r\nX-Worker-Token: worker-token\r\n"
                             b"Content-Length: 0\r\n\r\n")
        head, part = out.split(b"\r\n\r\n", 1)
        check(b"Content-Length: 116" in head and part == b'{"status', out)
        o.inject("result", "drop")
        out = raw_request(o, b"POST /_worker/tasks/result HTTP/1.1\r\nHost: x\r\nX-Worker-Token: worker-token\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
        check(out == b"", out)
        # drop after processing: the result is applied, the answer lost.
        jid = o.create_job("echo", {})
        poll(o)
        o.inject("result", "drop", process=True)
        try:
            result(o, jid, data={"a": 1})
            check(False, "expected a connection error")
        except Exception as e:
            check("RemoteDisconnected" in repr(e) or "Connection" in repr(e), e)
        check(o.job(jid)["status"] == "finished", "applied before the drop")
        check(result(o, jid).json()["reason"] == "job_already_terminated")
        o.inject("poll", "slow", delay=0.5)
        t0 = time.monotonic()
        check(poll(o).status == 204 and time.monotonic() - t0 >= 0.75, "delay + hold")
        o.inject("ws", status=503, body={"error": "busy"})
        out = raw_ws_handshake(o, "/_worker/ws/w1", "worker-token", timeout=1, until=b'{"error": "busy"}')
        check(out.startswith(b"HTTP/1.1 503") and b'{"error": "busy"}' in out, out)
        o.inject("any", status=500, body={"error": "x"})
        check(beat(o).status == 500)
        check(o.faults() == {k: [] for k in o.faults()}, o.faults())
        statuses = [r["status"] for r in o.log(kind="result")]
        check(statuses[-3:] == ["drop", "drop", 200] or statuses[-2:] == ["drop", 200], statuses)


@test
def concurrency_stats(t):
    """Outstanding polls and tasks, measured on the orchestrator side."""
    # The three polls must still be held when the jobs arrive, however
    # loaded the machine: a long hold, shortened for the last poll.
    with FakeOrch(poll_timeout=tmo(10)) as o:
        reg(o, skills=["echo", "sleep"])
        got = []
        ths = [threading.Thread(target=lambda: got.append(poll(o))) for _ in range(3)]
        for th in ths:
            th.start()
        wait_for(lambda: o.worker_stats("w1").get("polls_outstanding") == 3, what="3 polls held")
        a = o.create_job("echo", {})
        b = o.create_job("sleep", {})
        c = o.create_job("echo", {})
        for th in ths:
            th.join()
        st = o.worker_stats("w1")
        check(st["max_polls_outstanding"] == 3 and st["outstanding"] == 3, st)
        check(st["max_outstanding_by_type"] == {"echo": 2, "sleep": 1}, st)
        o.config(poll_timeout=0.3)
        poll(o)
        check(o.polls_while_full("w1", 3) == 1, o.worker_stats("w1"))
        result(o, a)
        result(o, b, status="failure", error={"code": "INVALID_INPUT_ERROR", "message": ""})
        st = o.worker_stats("w1")
        check(st["outstanding_task_ids"] == [c] and st["results"] == 2 and st["max_outstanding"] == 3, st)


@test
def compression_and_router_errors(t):
    """Section 1: gzip >= 500 bytes without X-RXON-Version; router 404/405 plain text without it."""
    with FakeOrch(poll_timeout=0.3) as o:
        reg(o)
        o.create_job("echo", {"blob": "x" * 600})
        r = poll(o, headers=dict(V, **{"Accept-Encoding": "gzip"}))
        check(r.headers.get("Content-Encoding") == "gzip" and "X-RXON-Version" not in r.headers, r.headers)
        check(json.loads(gzip.decompress(r.body))["params"]["blob"] == "x" * 600)
        o.create_job("echo", {"blob": "x" * 600})
        r = poll(o)
        check("Content-Encoding" not in r.headers and r.headers["X-RXON-Version"] == "1.0b3", r.headers)
        r = o.request("GET", "/_worker/nothing")
        check(r.status == 404 and r.body == b"404: Not Found" and "X-RXON-Version" not in r.headers, r)
        r = o.request("GET", "/_worker/tasks/result")
        check(r.status == 405 and r.body == b"405: Method Not Allowed" and r.headers["Allow"] == "POST", r)


@test
def rate_limit_simulation(t):
    with FakeOrch(poll_timeout=0.1) as o:
        reg(o)
        # A period long enough for four polls in a row on a loaded machine.
        o.config(rate_limit={"poll_limit": 2, "period": 2, "retry_after": 3})
        check([poll(o).status for _ in range(3)] == [204, 204, 429])
        r = poll(o)
        check(r.json() == {"error": "Too Many Requests"} and r.headers["Retry-After"] == "3", r)
        time.sleep(2.2)  # no request for longer than the period: a fresh window
        check(poll(o).status == 204, "window re-armed only by requests")


@test
def execution_timeout_retries(t):
    """Section 3.3: an execution timeout retries the same task; a queued one fails without retry."""
    with FakeOrch(poll_timeout=0.3, watcher_interval=0.1) as o:
        reg(o)
        jid = o.create_job("echo", {}, timeout_seconds=0.3)
        check(poll(o).json()["task_id"] == jid)
        j = o.wait_job(jid, lambda j: j["retry_count"] == 1, timeout=5)
        check(j["status"] == "waiting_for_worker", j)
        check(poll(o).json()["task_id"] == jid, "re-dispatched")
        jid2 = o.create_job("echo", {}, dispatch_timeout_seconds=0.2)
        j = o.wait_job(jid2, lambda j: j["status"] == "failed", timeout=5)
        check(j["error_message"] == "Worker task timed out while waiting in queue (dispatch timeout).", j)
        check(poll(o).json()["task_id"] == jid2, "still delivered")
        r = result(o, jid2)
        check(r.json()["reason"] == "deadline_exceeded", r)


@test
def restart_same_port_and_reset(t):
    o = FakeOrch(poll_timeout=0.3).start()
    try:
        port = o.port
        reg(o)
        jid = o.create_job("echo", {})
        check(o.stop() == 0, o.output())
        o.start()
        check(o.port == port)
        check(beat(o).body == b"null", "state is gone after a restart")
        check(o.request("GET", "/api/v1/jobs/" + jid).status == 404)
        reg(o)
        o.create_job("echo", {})
        o.reset()
        check(o.workers() == [] and o.jobs()["jobs"] == [] and o.log() == [])
        check(FINAL >= {"finished", "cancelled"})
    finally:
        o.stop()


@test
def unregistered_poll_and_prequeue(t):
    """Section 2.2: an unregistered id just waits; tasks queued for it are delivered."""
    with FakeOrch(poll_timeout=0.3) as o:
        check(poll(o, "nobody").status == 204)
        ids = o.prequeue("nobody", "echo", {"q": 1}, count=2)
        got = [poll(o, "nobody").json()["task_id"] for _ in range(2)]
        check(got == ids, got)


@test
def fast_mode(t):
    """--fast: no request log and no result bodies kept, stats still counted."""
    with FakeOrch(poll_timeout=0.3, fast=True) as o:
        reg(o)
        ids = o.prequeue("w1", "echo", count=3)
        for _ in ids:
            task = poll(o).json()
            check(result(o, task["task_id"]).json()["transition"] == "success_transition")
        jobs = o.wait_jobs(ids)
        check(all(j["status"] == "finished" and j["results"] == [] for j in jobs), jobs)
        check(o.log() == [] and o.stats()["counters"]["result"] == 3, o.stats())
        check(o.worker_stats("w1")["max_outstanding"] == 1)
        check(b"POST /_test/fault" in o.request("GET", "/_test/help").body)


@test
def bench_timings_and_wait(t):
    """What bench/bench.py relies on: /_test/wait answers once N results
    arrived (or on its timeout), and with timings on every answered task has
    ordered enqueue/handout/arrival stamps plus the data's t0/t1."""
    with FakeOrch(poll_timeout=0.3, fast=True) as o:
        reg(o)
        o.config(timings=True)
        t0 = time.monotonic()
        check(o._json("GET", "/_test/wait?results=1&timeout=0.3")["results"] == 0)
        check(time.monotonic() - t0 >= 0.25, "wait answered before its timeout")
        ids = o.prequeue("w1", "echo", count=2)
        waiter = threading.Thread(target=lambda: o._json("GET", "/_test/wait?results=2&timeout=20"))
        waiter.start()
        task = poll(o).json()
        before = time.time()
        result(o, task["task_id"], data={"t0": before, "t1": before + 0.001})
        check(waiter.is_alive(), "wait answered after 1 of 2 results")
        result(o, poll(o).json()["task_id"])
        waiter.join(tmo(5))
        check(not waiter.is_alive(), "wait did not answer after 2 results")
        rows = {r[0]: r for r in o._json("GET", "/_test/timings")}
        check(sorted(rows) == sorted(ids), rows)
        first = rows[task["task_id"]]
        check(first[1] <= first[2] <= first[3] and first[4] == before, first)
        check(rows[[i for i in ids if i != task["task_id"]][0]][4] is None, rows)
        check(o._json("DELETE", "/_test/timings") == [] and o._json("GET", "/_test/timings") == [])


main()
