"""Several orchestrators (PROTOCOL.md 4.9): ORCHESTRATORS_CONFIG and the INI
form [orchestrator.NAME]; a registration, heartbeats and a WebSocket each;
FAILOVER (the first healthy orchestrator polls) and ROUND_ROBIN (smooth
weighted round robin of polls), each with one orchestrator stopped and
restarted; one pool: polls never exceed the free global slots; every result
goes back to the orchestrator its task came from, also after that one was
down; per-orchestrator tokens never shown."""
import json
import time

from avt import *  # noqa: F401,F403
from orch import FakeOrch

SECRET_A, SECRET_B = "token-for-a-123", "token-for-b-456"


def orchs_env(entries, mode=None, **extra):
    env = {"ORCHESTRATORS_CONFIG": json.dumps(entries), "WORKER_ID": "w1"}
    if mode:
        env["MULTI_ORCHESTRATOR_MODE"] = mode
    env.update(extra)
    return env


def spawn(t, env, slots=2, ini=""):
    text = ("[worker]\nmax_concurrent_tasks = %d\n[orchestrator]\nheartbeat_interval = 0.3\n"
            "probe_every = 2\nretry_max_delay = 1\n" % slots) + ini
    return t.spawn(["-c", t.ini(text), "-P", t.plugin_dir("echo", "steps", "t_behave")], env=env)


def results_for(o, ids):
    return [r for r in o.log(kind="result") if isinstance(r.get("body"), dict)
            and r["body"].get("task_id") in ids]


@test
def failover_polls_the_first_healthy_and_routes_results_home(t):
    a = FakeOrch(poll_timeout=1, token=SECRET_A).start()
    b = FakeOrch(poll_timeout=1, token=SECRET_B).start()
    t.on_cleanup(a.stop)
    t.on_cleanup(b.stop)
    ini = ("\n[orchestrator.a]\nurl = %s\npriority = 1\ntoken = %s\n"
           "[orchestrator.b]\nurl = %s\npriority = 2\ntoken_file = %s\n"
           % (a.url, SECRET_A, b.url, t.write("tb", SECRET_B + "\n", mode=0o600)))
    d = spawn(t, {"WORKER_ID": "w1"}, ini=ini)
    a.wait_worker("w1")
    b.wait_worker("w1")
    wait_for(lambda: a.ws_connected("w1") and b.ws_connected("w1"), what="a websocket to each")
    # A is healthy: only A polls (B may have polled before A registered;
    # its last such poll ends within the 1 s hold); a job queued on B waits.
    wait_for(lambda: a.worker_stats("w1").get("polls", 0) > 0, what="A polling")
    wait_for(lambda: b.worker_stats("w1").get("polls_outstanding", 0) == 0, what="B's poll over")
    nb = b.worker_stats("w1").get("polls", 0)
    jb = b.prequeue("w1", "echo", {"msg": "for b"})[0]
    time.sleep(tmo(1.5))
    check(b.worker_stats("w1").get("polls", 0) == nb, "B polled while A was healthy",
          b.worker_stats("w1"))
    ja = a.create_job("echo", {"msg": "for a"})
    check(a.wait_job(ja)["status"] == "finished", a.job(ja), d.log())
    # A long task from A is running when A goes away: it ends when the test
    # opens its gate, with A gone.
    gate = t.path("gate")
    jlong = a.create_job("t_gate", {"path": gate})
    a.wait_job(jlong, lambda j: j["status"] == "running" or j.get("task_worker_id") == "w1")
    wait_for(lambda: a.worker_stats("w1").get("outstanding") == 1, what="the long task picked up")
    a.stop()
    open(gate, "w").close()
    check(b.wait_job(jb, timeout=20)["status"] == "finished", "B did not take over", d.log())
    # A comes back on the same port: the worker registers again, A polls again,
    # and the long task's result, kept meanwhile, is delivered to A (never B).
    a.start()
    a.wait_worker("w1", timeout=30)
    wait_for(lambda: results_for(a, {jlong}), timeout=30, what="the kept result delivered to A")
    check(results_for(b, {jlong}) == [], "a result of A's task went to B")
    check(all(r["body"]["task_id"] == jb for r in b.log(kind="result")), b.log(kind="result"))
    ja2 = a.create_job("echo", {"msg": "a again"})
    check(a.wait_job(ja2)["status"] == "finished", a.job(ja2), d.log())
    for o, secret in ((a, SECRET_A), (b, SECRET_B)):
        check(all(r["headers"].get("X-Worker-Token") == secret for r in o.log()
                  if r["method"] not in ("WS-RECV", "WS-SEND", "WS-AUTH")), "wrong token sent")
    check(SECRET_A not in d.log() and SECRET_B not in d.log(), "a token was logged")


@test
def round_robin_shares_polls_by_weight(t):
    with FakeOrch(poll_timeout=1) as a, FakeOrch(poll_timeout=1) as b:
        d = spawn(t, orchs_env([{"url": a.url, "weight": 3}, {"url": b.url, "weight": 1}],
                               "ROUND_ROBIN", WORKER_TOKEN=a.token), slots=1)
        a.wait_worker("w1")
        b.wait_worker("w1")
        ids_a = a.prequeue("w1", "echo", {"msg": "a"}, count=30)
        ids_b = b.prequeue("w1", "echo", {"msg": "b"}, count=30)
        a.wait_jobs(ids_a, timeout=60)
        done_b = sum(1 for j in b.jobs()["jobs"] if j["status"] == "finished")
        check(6 <= done_b <= 14, "weights 3:1 should give B about 10 of A's 30, got %d" % done_b,
              d.log()[-2000:])
        # With one slot, weighted round robin still gives A three of every
        # four polls after A's queue is empty, each held for the poll
        # timeout: B's remaining tasks come one per ~4 s.
        try:
            b.wait_jobs(ids_b, timeout=180)
        except Exception as e:
            polls = [(round(r["t"], 2), r["status"], str(r.get("resp"))[:120]) for r in b.log(kind="poll")][-6:]
            check(False, e, "B's last polls: %s" % polls, d.log()[-4000:])
        check(len(results_for(a, set(ids_a))) == 30 and len(results_for(b, set(ids_b))) == 30,
              "every result goes to its own orchestrator")
        check(results_for(a, set(ids_b)) == [] and results_for(b, set(ids_a)) == [], "crossed results")
        # B stops: A keeps being served; B restarts and is served again.
        b.stop()
        ja = a.create_job("echo", {"msg": "a alone"})
        check(a.wait_job(ja)["status"] == "finished", a.job(ja), d.log()[-2000:])
        b.start()
        b.wait_worker("w1", timeout=30)
        jb = b.create_job("echo", {"msg": "b back"})
        check(b.wait_job(jb, timeout=30)["status"] == "finished", b.job(jb), d.log()[-2000:])


@test
def every_orchestrator_hears_of_capacity_changes_at_once(t):
    # One slot shared by two orchestrators (advertise_busy), periodic heartbeats
    # far apart: when B's task takes the slot A must hear "busy", and when it ends A
    # must hear "idle" within the debounce, not at its next periodic beat
    # (the orchestrator quarantines jobs while no worker is idle).
    with FakeOrch(poll_timeout=1) as a, FakeOrch(poll_timeout=1) as b:
        text = ("[worker]\nmax_concurrent_tasks = 1\nadvertise_busy = true\n"
                "[orchestrator]\nheartbeat_interval = 60\n"
                "heartbeat_debounce = 0.05\nretry_max_delay = 1\n")
        d = t.spawn(["-c", t.ini(text), "-P", t.plugin_dir("echo", "steps", "t_behave")],
                    env=orchs_env([{"url": a.url}, {"url": b.url}], "ROUND_ROBIN", WORKER_TOKEN=a.token))
        a.wait_worker("w1")
        b.wait_worker("w1")
        status = lambda o: [r["body"]["status"] for r in o.log(kind="heartbeat")
                            if isinstance(r.get("body"), dict) and "status" in r["body"]]
        gate = t.path("gate")
        jb = b.create_job("t_gate", {"path": gate})
        wait_for(lambda: "busy" in status(a), timeout=10, what="A told busy while B's task runs")
        open(gate, "w").close()
        check(b.wait_job(jb, timeout=20)["status"] == "finished")
        t_done = time.monotonic()
        wait_for(lambda: status(a) and status(a)[-1] == "idle", timeout=10, what="A told idle")
        check(time.monotonic() - t_done < tmo(5), "A heard of the free slot only after %.1f s"
              % (time.monotonic() - t_done), d.log()[-2000:])
        ja = a.create_job("echo", {"msg": "right after"})
        check(a.wait_job(ja)["status"] == "finished", a.job(ja), d.log()[-2000:])


@test
def one_pool_polls_never_exceed_free_slots(t):
    with FakeOrch(poll_timeout=1) as a, FakeOrch(poll_timeout=1) as b:
        d = spawn(t, orchs_env([{"url": a.url}, {"url": b.url}], "ROUND_ROBIN",
                               WORKER_TOKEN=a.token), slots=1)
        a.wait_worker("w1")
        b.wait_worker("w1")
        a.prequeue("w1", "steps", {"steps": 3, "step_ms": 400}, count=3)
        b.prequeue("w1", "steps", {"steps": 3, "step_ms": 400}, count=3)
        # While one orchestrator's task holds the only slot, the other one
        # must have neither a task nor a poll outstanding.
        checks = 0
        deadline = time.monotonic() + tmo(30)
        while checks < 6 and time.monotonic() < deadline:
            for x, y in ((a, b), (b, a)):
                # The same task outstanding before and after: it held the
                # slot all the time y was looked at.
                held = x.worker_stats("w1").get("outstanding_task_ids", [])
                if len(held) == 1:
                    sy = y.worker_stats("w1")
                    if x.worker_stats("w1").get("outstanding_task_ids", []) == held:
                        check(sy.get("outstanding", 0) == 0 and sy.get("polls_outstanding", 0) == 0,
                              "second orchestrator served with one slot", sy, d.log()[-1500:])
                        checks += 1
            time.sleep(0.1)
        check(checks >= 3, "too few samples", checks)
        a.wait_jobs([j["id"] for j in a.jobs()["jobs"]], timeout=40)
        b.wait_jobs([j["id"] for j in b.jobs()["jobs"]], timeout=40)
        for o in (a, b):
            st = o.worker_stats("w1")
            check(st["max_outstanding"] <= 1 and o.polls_while_full("w1", 1) == 0, st)


@test
def check_config_lists_orchestrators_with_tokens_masked(t):
    env = orchs_env([{"url": "https://b.example:8443", "priority": 5, "token": SECRET_B, "name": "bee"},
                     {"url": "https://a.example", "priority": 1, "weight": 2, "token": SECRET_A}],
                    "round_robin")
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")], env=env)
    check(r.returncode == 0, r.stderr)
    out = r.stdout
    check(SECRET_A not in out + r.stderr and SECRET_B not in out + r.stderr, "token shown", out)
    check(out.index("[orchestrator.orch2]") < out.index("[orchestrator.bee]"), "sorted by priority", out)
    check("multi_mode = ROUND_ROBIN" in out and "url = https://a.example" in out, out)
    check(out.count("token = ********") >= 2, out)
    # The dump is a valid configuration again (the INI form).
    r2 = run_daemon(["--check-config", "-c", t.ini(out.replace("********", "x")),
                     "-P", t.plugin_dir("echo")])
    check(r2.returncode == 0 and "[orchestrator.bee]" in r2.stdout, r2.stderr, r2.stdout)


@test
def bad_orchestrator_lists_exit_78(t):
    cases = [
        ('[{"url": "ftp://x"}]', "must start with http"),
        ('[{"url": "http://x", "weight": 0}]', "weight"),
        ('[{"url": "http://x"}, {"url": "http://x"}]', "listed twice"),
        ('[{"url": "http://x", "tokne": "t"}]', "unknown key"),
        ('{"url": "http://x"}', "JSON array"),
        ('[]', "JSON array"),
    ]
    for text, needle in cases:
        r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")],
                       env={"ORCHESTRATORS_CONFIG": text})
        check(r.returncode == 78 and "ORCHESTRATORS_CONFIG" in r.stderr and needle in r.stderr,
              text, r.stderr)
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo"), "-c",
                    t.ini("[orchestrator]\nurl = http://a\n[orchestrator.b]\nurl = http://b\n")])
    check(r.returncode == 78 and "both set" in r.stderr, r.stderr)
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo"), "-c",
                    t.ini("[orchestrator.b]\npriority = 3\n")])
    check(r.returncode == 78 and "[orchestrator.b]" in r.stderr and "no url" in r.stderr, r.stderr)
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")],
                   env={"MULTI_ORCHESTRATOR_MODE": "RANDOM"})
    check(r.returncode == 78 and "FAILOVER or ROUND_ROBIN" in r.stderr, r.stderr)


main()
