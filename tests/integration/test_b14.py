"""RXON 1.0b14 (Avtomatika 1.0b27) beside 1.0b3: the real daemon with real
plugins against the test orchestrator in both dialects. The 1.0b14 fake
checks every signature with the real canonical rules and answers like the
real one (403 texts, 400 texts, stale tasks, job-id cancels), so a daemon
that passes here signs byte for byte what the real orchestrator verifies.

Covered: detection in `auto` mode (version header, the events probe when
/_public is hidden) and a forced dialect; two orchestrators of different
versions serving one pool; skills as objects and the full sync; progress and
custom events (WebSocket and HTTP); custom events refused on 1.0b3; heartbeat
statuses, job ids, usage and capabilities; draining then offline; cancels by
job id; stale results counted; the task's deadline; access and refresh
tokens, and tokens that ran out; the operator's advice for a wrong key, a skewed clock, a refused
member and a forced 1.0b3; a result that cannot be signed; a reload that
changes the protocol (kept until a restart, and said)."""
import json
import os
import re
import signal
import sys
import time

from avt import *  # noqa: F401,F403
from avt import check, main, test, tmo, wait_for
from orch import FakeOrch, FINAL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "orchestrator"))
import canon14  # noqa: E402

WID = "w14"
B14 = "1.0b14"


def ini(t, slots=4, extra_orch="", extra_worker="", hb=0.5, limits=""):
    return t.ini("""
[worker]
max_concurrent_tasks = %d
shutdown_timeout = 10
log_level = debug
%s
[orchestrator]
poll_timeout = 2
heartbeat_interval = %s
heartbeat_debounce = 0.05
probe_every = 3
result_retry_initial_delay = 0.2
retry_max_delay = 2
%s
[limits]
%s
""" % (slots, extra_worker, hb, extra_orch, limits))


def orch14(**kw):
    kw.setdefault("poll_timeout", 2)
    return FakeOrch(protocol=B14, **kw)


def start(t, o, conf, plugins=("echo", "steps", "t_behave"), env=None, wait=True):
    e = o.worker_env(WID)
    e.update(env or {})
    p = t.spawn(["-c", conf, "-P", t.plugin_dir(*plugins)], env=e)
    if wait:
        o.wait_worker(WID, timeout=15)
    return p


def stop(p, timeout=20):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=tmo(timeout))
    return p.returncode, p.log()


def log_has(p, *needles):
    text = p.log()
    return all(n in text for n in needles)


def heartbeats(o):
    return [r["body"] for r in o.log(path="/_worker/workers/" + WID)
            if r["method"] == "PATCH" and isinstance(r["body"], dict)]


def metric(port, name, **labels):
    import urllib.request
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        lab = head[len(name):].strip("{}")
        if ",".join(sorted(lab.split(","))) == want or (not labels and head == name):
            return float(value)
    return None


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- Which dialect ----------------------------------------------------------------


@test
def auto_detects_1_0b14_and_every_message_is_signed(t):
    with orch14() as o:
        p = start(t, o, ini(t))
        check(log_has(p, "speaks RXON 1.0b14 (its X-RXON-Version): using it"), p.log()[-2000:])
        ids = [o.create_job("echo", {"msg": i}) for i in range(20)]
        jobs = o.wait_jobs(ids, timeout=30)
        check(all(j["status"] == "finished" for j in jobs), jobs[0])
        # The fake verified each one; check the shape of what was signed too.
        for row in o.log(path="/_worker/tasks/result"):
            b = row["body"]
            check(isinstance(b.get("timestamp"), int) and b["security"]["signer_id"] == WID, b)
            check(b["task_id"].startswith("task-") and b["task_id"] != b["job_id"], b)
            check(canon14.verify(b, b["security"]["signature"], o.token), b)
            check(row["headers"].get("X-RXON-Version") == B14, row["headers"])
        reg = o.log(path="/_worker/workers/register")[0]["body"]
        check(all(isinstance(s, dict) for s in reg["supported_skills"]), reg)
        check(reg["skills_hash"] and len(reg["skills_hash"]) == 64, reg)
        rc, err = stop(p)
        check(rc == 0, rc, err[-2000:])


@test
def a_reload_keeps_the_protocol_and_says_so(t):
    with orch14() as o:
        conf = ini(t)
        p = start(t, o, conf)
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("[orchestrator]\n", "[orchestrator]\nprotocol = 1.0b3\n"))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded:" in p.log(), what="reload")
        check(log_has(p, "protocol changed to 1.0b3; it takes effect at the next restart (still auto)"),
              p.log()[-2000:])
        jid = o.create_job("echo", {"after": "reload"})
        check(o.wait_jobs([jid], timeout=20)[0]["status"] == "finished", "not served in 1.0b14")
        rc, err = stop(p)
        check(rc == 0, rc, err[-2000:])


@test
def detection_falls_back_to_the_events_probe(t):
    for protocol, want in (("1.0b14", "POST /_worker/events answered 400"),
                           ("1.0b3", "POST /_worker/events answered 404")):
        with FakeOrch(protocol=protocol, poll_timeout=2) as o:
            # A proxy that hides /_public: no version header to read.
            o.inject("public", status=503, body={"error": "hidden"}, count=50)
            p = start(t, o, ini(t))
            check(log_has(p, "speaks RXON %s (%s)" % (protocol, want)), p.log()[-2000:])
            jid = o.create_job("echo", {"msg": protocol})
            check(o.wait_job(jid)["status"] == "finished", o.job(jid))
            stop(p)


@test
def two_orchestrators_of_different_versions_serve_one_pool(t):
    port = free_port()
    with FakeOrch(poll_timeout=1) as a, orch14(poll_timeout=1) as b:
        env = {"ORCHESTRATORS_CONFIG": json.dumps([{"url": a.url}, {"url": b.url}]),
               "MULTI_ORCHESTRATOR_MODE": "ROUND_ROBIN", "WORKER_ID": WID, "WORKER_TOKEN": a.token,
               "ADMIN_PORT": str(port)}
        p = t.spawn(["-c", ini(t), "-P", t.plugin_dir("echo", "steps", "t_behave")], env=env)
        a.wait_worker(WID, timeout=15)
        b.wait_worker(WID, timeout=15)
        ids_a = a.prequeue(WID, "echo", {"v": "a"}, count=10)
        ids_b = [b.create_job("echo", {"v": "b"}) for _ in range(10)]
        check(all(j["status"] == "finished" for j in a.wait_jobs(ids_a, timeout=30)))
        check(all(j["status"] == "finished" for j in b.wait_jobs(ids_b, timeout=30)))
        check(metric(port, "avtworkerd_protocol_info", orchestrator=a.url, protocol="1.0b3") == 1)
        check(metric(port, "avtworkerd_protocol_info", orchestrator=b.url, protocol=B14) == 1)
        import urllib.request
        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port).read().decode()
        check("%s: ok (RXON 1.0b3)" % a.url in health and "%s: ok (RXON 1.0b14)" % b.url in health,
              health)
        # Each got its own dialect: strings to 1.0b13, objects to 1.0b27.
        check(isinstance(a.log(path="/register")[0]["body"]["supported_skills"][0], str))
        check(isinstance(b.log(path="/register")[0]["body"]["supported_skills"][0], dict))
        stop(p)


@test
def a_worker_forced_to_1_0b3_is_told_to_switch(t):
    with orch14() as o:
        p = start(t, o, ini(t, extra_orch="protocol = 1.0b3"), wait=False)
        wait_for(lambda: log_has(p, "wants signed messages", "protocol = auto"), timeout=15,
                 what="the advice to speak 1.0b14")
        check(o.workers() == [], o.workers())  # refused without side effects
        stop(p)


# ---- Skills -------------------------------------------------------------------------


@test
def skills_are_objects_and_a_lost_list_is_registered_again(t):
    with orch14() as o:
        p = start(t, o, ini(t), plugins=("good_skills",))
        reg = o.log(path="/register")[0]["body"]
        skills = {s["name"]: s for s in reg["supported_skills"]}
        check(skills["sk_echo"]["version"] == "2.1" and skills["sk_echo"]["input_schema"]["type"]
              == "object", skills)
        check(skills["sk_review"]["output_statuses"] == ["needs_review"], skills)
        check(skills["sk_plain"] == {"name": "sk_plain", "type": "sk_plain", "version": "1.5"}, skills)
        check(sorted(reg["available_skills"]) == ["sk_echo", "sk_plain", "sk_review"], reg)
        jid = o.create_job("sk_echo", {"msg": "hi"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid))
        # The orchestrator loses the list (a heartbeat without skills and
        # hash, as another client could send): with the same hash it then
        # asks for a full sync, which only a new registration satisfies.
        body = canon14.sign_body({"worker_id": WID, "supported_skills": []}, o.token, WID)
        r = o.worker_request("PATCH", "/_worker/workers/" + WID, body,
                             headers={"X-Worker-ID": WID, "X-RXON-Version": B14})
        check(r.status == 200, r)
        wait_for(lambda: len(o.log(path="/_worker/workers/register")) >= 2, timeout=15,
                 what="a new registration after require_full_sync")
        check(log_has(p, "asked for the skills again"), p.log()[-2000:])
        jid = o.create_job("sk_echo", {"msg": "again"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid))
        # No heartbeat ever carried a skill as a string (it breaks dispatch).
        for hb in heartbeats(o):
            check(all(isinstance(s, dict) for s in hb.get("supported_skills", [])), hb)
        stop(p)


# ---- Events -------------------------------------------------------------------------


@test
def progress_and_custom_events_reach_the_job_over_either_transport(t):
    for ws in ("true", "false"):
        with orch14() as o:
            p = start(t, o, ini(t, extra_orch="websockets = %s" % ws))
            if ws == "true":
                wait_for(lambda: o.ws_connected(WID), what="websocket")
            jid = o.create_job("t_progress", {"n": 4})
            job = o.wait_job(jid, pred=lambda j: j["status"] in FINAL and j.get("progress") == 1)
            check(job["status"] == "finished", job)
            jid = o.create_job("t_event", {"n": 3, "event": "note"})
            job = o.wait_job(jid, pred=lambda j: len(j.get("events", [])) >= 3 and
                             j["status"] in FINAL)
            check(job["state_history"].get("rc") == 0, job)
            check([e["payload"]["i"] for e in job["events"]] == [0, 1, 2], job["events"])
            frames = [r for r in o.log() if r["method"] == "WS-RECV"]
            posts = o.log(path="/_worker/events")
            if ws == "true":
                check(len(frames) >= 3 and not posts, len(frames), posts[:1])
            else:
                check(len(posts) >= 3 and not frames, len(posts), frames[:1])
                check(all(r["status"] == 200 and r["resp"]["status"] == "event_accepted"
                          for r in posts), posts[:2])
            stop(p)


@test
def custom_events_on_1_0b3_return_enotsup_and_are_logged_once(t):
    with FakeOrch(poll_timeout=2) as o:
        p = start(t, o, ini(t))
        ids = o.prequeue(WID, "t_event", {"n": 2}, count=2)
        jobs = o.wait_jobs(ids)
        check(all(j["state_history"].get("rc") == -95 for j in jobs), jobs)  # -ENOTSUP
        check(p.log().count("which has no custom events") == 1, p.log()[-2000:])
        stop(p)


# ---- Heartbeats, cancels, results ------------------------------------------------------------


@test
def heartbeats_carry_job_ids_statuses_usage_and_capabilities(t):
    gate = t.path("gate")
    with orch14() as o:
        p = start(t, o, ini(t, slots=1, hb=0.3, extra_worker="advertise_busy = true"))
        jid = o.create_job("t_gate", {"path": gate})
        wait_for(lambda: any(jid in hb.get("current_tasks", []) for hb in heartbeats(o)),
                 what="the job id in current_tasks")
        hb = [h for h in heartbeats(o) if jid in h.get("current_tasks", [])][-1]
        check(hb["status"] == "full" and hb["available_skills"] == [], hb)  # its one slot is taken
        check(hb["capabilities"]["websockets"] is True and "extra" in hb["capabilities"], hb)
        check(any("usage" in h and "cpu_load_percent" in h["usage"] for h in heartbeats(o)),
              heartbeats(o)[-1])
        for h in heartbeats(o):
            check(not any(isinstance(v, dict) and not v for v in h.values()), h)  # no {} (Redis)
        open(gate, "w").close()
        check(o.wait_job(jid)["status"] == "finished", o.job(jid))
        wait_for(lambda: heartbeats(o)[-1]["status"] == "idle", what="idle again")
        rc, err = stop(p)
        statuses = [h["status"] for h in heartbeats(o)]
        check(rc == 0 and "draining" in statuses and statuses[-1] == "offline", statuses)
        check(statuses.index("draining") < len(statuses) - 1, statuses)


@test
def draining_goes_out_before_offline_when_a_heartbeat_is_in_flight_at_stop(t):
    with orch14() as o:
        p = start(t, o, ini(t, hb=0.3))
        wait_for(lambda: len(heartbeats(o)) >= 1, what="a heartbeat")
        o.inject("heartbeat", "slow", delay=1.0)
        # The server now holds a heartbeat: the stop comes while it is in flight.
        wait_for(lambda: o.stats()["counters"].get("fault_slow", 0) >= 1, what="a held heartbeat")
        rc, err = stop(p)
        statuses = [h["status"] for h in heartbeats(o)]
        check(rc == 0 and statuses[-2:] == ["draining", "offline"], statuses)


@test
def a_cancel_by_job_id_in_a_heartbeat_answer_stops_the_task(t):
    gate = t.path("never")
    with orch14() as o:
        p = start(t, o, ini(t, extra_orch="websockets = false", hb=0.3))
        jid = o.create_job("sleep", {"seconds": 60})
        wait_for(lambda: any(jid in hb.get("current_tasks", []) for hb in heartbeats(o)),
                 what="running")
        check(o.cancel(jid)[0] == 200)
        job = o.wait_job(jid, pred=lambda j: any(r.get("status") == "cancelled"
                                                 for r in j.get("results", [])), timeout=20)
        check(job["status"] == "cancelled", job)
        answers = [r["resp"] for r in o.log(path="/_worker/workers/" + WID)
                   if isinstance(r.get("resp"), dict) and r["resp"].get("cancel_task_ids")]
        check(answers and answers[0]["cancel_task_ids"] == [jid], answers)
        check(log_has(p, "cancel requested by the orchestrator (heartbeat)"), p.log()[-2000:])
        del gate
        stop(p)


@test
def a_stale_result_is_ignored_and_counted_by_reason(t):
    port = free_port()
    gate = t.path("gate")
    with orch14(watcher_interval=0.2) as o:
        p = start(t, o, ini(t, slots=2), env={"ADMIN_PORT": str(port)})
        # The job's timeout passes while its first task still runs: the
        # orchestrator dispatches it again under a new task id.
        jid = o.create_job("t_gate", {"path": gate}, timeout_seconds=1)
        wait_for(lambda: o.job(jid).get("retry_count", 0) >= 1, timeout=20, what="a retry")
        open(gate, "w").close()
        job = o.wait_job(jid, timeout=20)
        check(job["status"] == "finished", job)
        wait_for(lambda: (metric(port, "avtworkerd_results_ignored_total", orchestrator=o.url,
                                 reason="stale_task") or 0) >= 1, timeout=15,
                 what="the stale result counted")
        check(log_has(p, "result ignored by the orchestrator: stale_task"), p.log()[-3000:])
        stop(p)


@test
def the_tasks_deadline_is_honoured(t):
    with orch14() as o:
        p = start(t, o, ini(t))
        jid = o.create_job("t_event", {"n": 0}, result_timeout_seconds=30)
        job = o.wait_job(jid)
        check(abs(job["state_history"]["deadline"] - (time.time() + 30)) < 10, job)  # passed on
        jid = o.create_job("sleep", {"seconds": 60}, result_timeout_seconds=1)
        job = o.wait_job(jid, pred=lambda j: j.get("results"), timeout=20)
        err = job["results"][0].get("error") or {}
        check(err.get("code") == "TIMEOUT_ERROR", job["results"])
        check(log_has(p, "the orchestrator's result deadline passed"), p.log()[-2000:])
        stop(p)


@test
def a_result_that_cannot_be_signed_becomes_a_permanent_error(t):
    with orch14() as o:
        p = start(t, o, ini(t))
        jid = o.create_job("t_huge", {})
        job = o.wait_job(jid)
        check(job["status"] == "quarantined" and "cannot be signed" in job["error_message"], job)
        check(log_has(p, "sent PERMANENT_ERROR in its place"), p.log()[-2000:])
        stop(p)


# ---- Credentials and the operator's advice ---------------------------------------------------


@test
def access_and_refresh_tokens_authenticate_but_never_sign(t):
    with orch14(sts_expires_in=2) as o:
        p = start(t, o, ini(t, extra_orch="access_tokens = on"))
        wait_for(lambda: len(o.log(path="/_worker/auth/token/refresh")) >= 1, timeout=15,
                 what="a renewal with the refresh token")
        ids = [o.create_job("echo", {"i": i}) for i in range(5)]
        check(all(j["status"] == "finished" for j in o.wait_jobs(ids)))
        res = o.log(path="/_worker/tasks/result")[-1]
        check(res["headers"]["X-Worker-Token"] != o.token, "not the access token", res["headers"])
        check(canon14.verify(res["body"], res["body"]["security"]["signature"], o.token))
        refresh = o.log(path="/_worker/auth/token/refresh")[0]
        check(refresh["status"] == 200 and "refresh_token" in refresh["body"], refresh)
        check(o.token not in p.log(), "the token was logged")
        stop(p)


@test
def tokens_that_ran_out_are_replaced_with_the_static_token(t):
    """The orchestrator forgets every token: the next request is refused,
    the refresh token is refused too, and the token route is asked with the
    static token (not with the dead access token), so work goes on."""
    with orch14() as o:
        p = start(t, o, ini(t, extra_orch="access_tokens = on"))
        wait_for(lambda: len(o.log(path="/_worker/auth/token")) >= 1, what="the first token")
        check(o.wait_jobs([o.create_job("echo", {"i": 0})])[0]["status"] == "finished")
        # Older than 5 s: a refused token that young is dropped, not renewed.
        time.sleep(5.5)
        o.expire_tokens()
        wait_for(lambda: any(r["status"] == 403 for r in o.log(path="/_worker/auth/token/refresh")),
                 timeout=30, what="the refused refresh")
        token_route = lambda: [r for r in o.log(path="/_worker/auth/token")  # noqa: E731
                               if r["path"] == "/_worker/auth/token"]
        wait_for(lambda: len(token_route()) >= 2, timeout=30, what="a new token from the token route")
        second = token_route()[1]
        check(second["status"] == 200 and second["headers"].get("X-Worker-Token") == o.token, second)
        refresh = o.log(path="/_worker/auth/token/refresh")[-1]
        check(refresh["headers"].get("X-Worker-ID") == WID, refresh)
        ids = [o.create_job("echo", {"i": i}) for i in range(1, 4)]
        check(all(j["status"] == "finished" for j in o.wait_jobs(ids, timeout=30)))
        rc, err = stop(p)
        check(rc == 0, rc, err[-2000:])


@test
def a_wrong_signing_key_is_explained(t):
    with orch14() as o:
        p = start(t, o, ini(t), env={"WORKER_SIGNING_KEY": "not-the-key"}, wait=False)
        wait_for(lambda: log_has(p, "Invalid cryptographic signature",
                                 "checks signatures with another key"), timeout=15,
                 what="the signature advice")
        check("not-the-key" not in p.log(), "the key was logged")
        stop(p)


@test
def a_skewed_clock_is_measured_and_explained(t):
    with orch14() as o:
        o.config(clock_offset=600)
        p = start(t, o, ini(t), wait=False)
        # The Date header has whole seconds: 599..601 s measured.
        wait_for(lambda: log_has(p, "timestamp expired", "NTP") and
                 re.search(r"differ by (599|600|601) s", p.log()), timeout=15,
                 what="the clock advice")
        check(re.search(r"differs from this machine's by (599|600|601) s", p.log()),
              p.log()[-2000:])
        o.config(clock_offset=0)
        o.wait_worker(WID, timeout=20)  # it recovers by itself
        stop(p)


@test
def a_refused_member_is_named(t):
    with orch14() as o:
        o.inject("register", status=400, count=1, body={
            "error": "Invalid WorkerRegistration payload: Failed to instantiate WorkerRegistration: "
                     "Expected `object`, got `str` - at `$.supported_skills[0]`"})
        p = start(t, o, ini(t))
        check(log_has(p, "refused the member $.supported_skills[0]"), p.log()[-2000:])
        stop(p)


@test
def check_config_shows_skills_and_refuses_broken_ones(t):
    r = run_daemon(["--check-config", "-P", t.plugin_dir("good_skills")],
                   env={"ORCHESTRATOR_URL": "http://127.0.0.1:1", "RXON_PROTOCOL": "1.0b14"})
    check(r.returncode == 0, r.stderr)
    check("protocol = 1.0b14" in r.stdout, r.stdout)
    check('"input_schema":{"properties":{"msg":{"type":"string"}},"type":"object"}' in r.stdout,
          r.stdout)
    r = run_daemon(["--check-config", "-P", t.plugin_dir("bad_skill_json", name="bad")],
                   env={"ORCHESTRATOR_URL": "http://127.0.0.1:1"})
    check(r.returncode == 78 and "skill 'bad_skill_type': input_schema is not valid JSON" in
          r.stderr, r.returncode, r.stderr)


main()
