"""TLS, mTLS and STS access tokens against the fake orchestrator serving
HTTPS (PROTOCOL.md 1.2, 2.5, 4.10), with certificates made at test time
(tlscerts.py): verification with a CA file, each kind of verification
failure and the message naming its fix, the explicit and loud way to turn
verification off, refused key files, STS tokens issued before registering,
used, renewed before they expire and after a 401, and no STS for a CA-only
configuration. Also: a token file re-read on reload."""
import os
import signal
import time

from avt import *  # noqa: F401,F403
from orch import FakeOrch
from tlscerts import make_pki

_pki = None


def pki():
    """One PKI for the whole file (making it costs a second or two)."""
    global _pki
    if _pki is None:
        import atexit
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="avt-pki.")
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _pki = make_pki(d, worker_id="w1")
    return _pki


def tls_orch(cert=None, key=None, mtls=False, **kw):
    p = pki()
    args = dict(tls_cert=cert or p.server, tls_key=key or p.server_key, poll_timeout=1)
    if mtls:
        args.update(tls_ca=p.ca, require_client_cert=True, client_cert=p.client,
                    client_key=p.client_key)
    args.update(kw)
    return FakeOrch(**args)


def worker_ini(t, extra=""):
    return t.ini("[worker]\nmax_concurrent_tasks = 2\n"
                 "[orchestrator]\nheartbeat_interval = 0.5\n" + extra)


def spawn(t, o, env=None, ini_extra=""):
    e = {"ORCHESTRATOR_URL": o.url, "WORKER_ID": "w1"}
    e.update(env or {})
    return t.spawn(["-c", worker_ini(t, ini_extra), "-P", t.plugin_dir("echo", "steps")], env=e)


def log_has(p, *needles):
    text = p.log()
    return all(n in text for n in needles)


@test
def https_with_ca_file_serves_jobs_and_wss(t):
    with tls_orch() as o:
        p = spawn(t, o, {"WORKER_TOKEN": o.token, "TLS_CA_PATH": pki().ca})
        o.wait_worker("w1")
        jid = o.create_job("echo", {"msg": "over tls"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid), p.log())
        wait_for(lambda: o.ws_connected("w1"), what="websocket over TLS (wss)")
        check("verification is OFF" not in p.log(), p.log())


def expect_tls_failure(t, cert, key, needles, env=None):
    with tls_orch(cert, key) as o:
        e = {"WORKER_TOKEN": o.token, "TLS_CA_PATH": pki().ca}
        e.update(env or {})
        p = spawn(t, o, e)
        wait_for(lambda: log_has(p, *needles), timeout=15, what="TLS message %r" % (needles,))
        check(p.poll() is None, "the daemon must keep retrying", p.log())
        check(o.workers() == [], "registered through a bad certificate", o.workers())
        check(o.log(kind="register") == [], "a request got through", o.log(kind="register"))
        p.send_signal(signal.SIGTERM)
        p.wait(tmo(20))


@test
def unknown_ca_names_tls_ca_path(t):
    p = pki()
    expect_tls_failure(t, p.rogue, p.rogue_key, ["register:", "not signed by a CA this worker trusts",
                                                 "TLS_CA_PATH"])


@test
def system_store_does_not_trust_a_private_ca(t):
    p = pki()
    expect_tls_failure(t, p.server, p.server_key, ["not signed by a CA this worker trusts"],
                       env={"TLS_CA_PATH": ""})


@test
def name_mismatch_names_the_url(t):
    p = pki()
    expect_tls_failure(t, p.wrong_name, p.wrong_name_key,
                       ["does not name the host in the URL", "ORCHESTRATOR_URL"])


@test
def expired_certificate_says_expired(t):
    p = pki()
    expect_tls_failure(t, p.expired, p.expired_key, ["certificate has expired", "renew it"])


@test
def insecure_skip_verify_works_and_is_loud(t):
    p = pki()
    with tls_orch(p.rogue, p.rogue_key) as o:
        d = spawn(t, o, {"WORKER_TOKEN": o.token, "TLS_INSECURE": "1"})
        o.wait_worker("w1")
        check("TLS certificate verification is OFF" in d.log(), d.log())
    r = run_daemon(["--check-config", "-c", t.ini("[tls]\ninsecure_skip_verify = true\n"),
                    "-P", t.plugin_dir("echo")])
    check(r.returncode == 0 and "insecure_skip_verify = true" in r.stdout, r.stdout, r.stderr)


@test
def key_file_open_to_others_is_refused(t):
    p = pki()
    key = t.write("client.key", open(p.client_key).read(), mode=0o640)
    env = {"TLS_CERT_PATH": p.client, "TLS_KEY_PATH": key}
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")], env=env)
    check(r.returncode == 78, r.returncode, r.stdout, r.stderr)
    check("environment: TLS_KEY_PATH" in r.stderr and "chmod 600" in r.stderr and "0640" in r.stderr,
          r.stderr)
    # Serving refuses it the same way, before anything else.
    r = run_daemon(["-P", t.plugin_dir("echo")], env=dict(env, ORCHESTRATOR_URL="https://127.0.0.1:9"))
    check(r.returncode == 78 and "chmod 600" in r.stderr, r.returncode, r.stderr)
    os.chmod(key, 0o600)
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")], env=env)
    check(r.returncode == 0, r.stderr)
    check("key_file = " + key in r.stdout, r.stdout)


@test
def certificate_without_key_is_refused(t):
    r = run_daemon(["--check-config", "-c", t.ini("[tls]\ncert_file = %s\n" % pki().client),
                    "-P", t.plugin_dir("echo")])
    check(r.returncode == 78 and "cert_file" in r.stderr and "key_file" in r.stderr, r.stderr)


def mtls_env(o, **extra):
    p = pki()
    env = {"TLS_CA_PATH": p.ca, "TLS_CERT_PATH": p.client, "TLS_KEY_PATH": p.client_key}
    env.update(extra)
    return env


def issued_tokens(o):
    return [r["resp"]["access_token"] for r in o.log(kind="sts")
            if r["status"] == 200 and isinstance(r.get("resp"), dict)]


@test
def missing_or_foreign_client_certificate_is_explained(t):
    p = pki()
    with tls_orch(mtls=True) as o:
        d = spawn(t, o, {"WORKER_TOKEN": o.token, "TLS_CA_PATH": p.ca})
        wait_for(lambda: log_has(d, "client certificate that is missing", "TLS_CERT_PATH"), timeout=15,
                 what="the missing client certificate explained")
        d.send_signal(signal.SIGTERM)
        d.wait(tmo(20))
        d = spawn(t, o, mtls_env(o, TLS_CERT_PATH=p.other_client, TLS_KEY_PATH=p.other_client_key))
        # The first request to fail is the protocol detection's (part of registering).
        wait_for(lambda: log_has(d, "register:", "client certificate that is missing"), timeout=15,
                 what="the foreign client certificate explained")
        check(o.workers() == [], o.workers())


@test
def mtls_obtains_an_access_token_before_registering_and_uses_it(t):
    with tls_orch(mtls=True) as o:
        d = spawn(t, o, mtls_env(o))  # no WORKER_TOKEN at all
        o.wait_worker("w1")
        rows = o.log()
        kinds = [r["kind"] for r in rows]
        check("sts" in kinds and kinds.index("sts") < kinds.index("register"), kinds)
        token = issued_tokens(o)[0]
        reg = [r for r in rows if r["kind"] == "register"][0]
        check(reg["headers"].get("X-Worker-Token") == token, "register did not carry the token", reg)
        jid = o.create_job("echo", {"msg": "mtls"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid), d.log())
        wait_for(lambda: o.ws_connected("w1"), what="wss with a client certificate")
        check(token not in d.log(), "the access token was logged")


@test
def access_token_is_renewed_without_interrupting_tasks(t):
    # Renewed at 80 % of the lifetime: the rest is the time a renewal may
    # take, so the lifetime (and the task that outlasts a few) is scaled.
    with tls_orch(mtls=True, sts_expires_in=tmo(2)) as o:
        o.config(sts_enforce=True)  # a stale token is refused from now on
        d = spawn(t, o, mtls_env(o))
        o.wait_worker("w1")
        n0 = len(issued_tokens(o))
        jid = o.create_job("steps", {"steps": 6, "step_ms": int(tmo(1000))})
        job = o.wait_job(jid, timeout=30)
        check(job["status"] == "finished", job, d.log())
        toks = issued_tokens(o)
        check(len(toks) >= n0 + 2, "expected renewals during the 6 s task (every ~1.6 s), scaled",
              len(toks))
        check(len(set(toks)) == len(toks), "tokens must differ")
        refused = [r for r in o.log() if r["status"] == 401]
        check(refused == [], "a request went out with an expired token", refused[:3], d.log())
        # The requests after the last renewal carry the newest token.
        wait_for(lambda: [r for r in o.log(kind="heartbeat")][-1]["headers"].get("X-Worker-Token")
                 in issued_tokens(o)[-2:], what="heartbeats with a current token")


@test
def a_401_renews_the_token_once_per_burst(t):
    with tls_orch(mtls=True) as o:
        d = spawn(t, o, mtls_env(o))
        o.wait_worker("w1")
        n0 = len(issued_tokens(o))
        o.inject("poll", status=401, body={"error": "Unauthorized: No valid token found"}, count=3)
        wait_for(lambda: len(issued_tokens(o)) > n0, what="a renewal after the 401", timeout=15)
        time.sleep(1)  # a fixed window: the renewal limit is wall-clock, not load-scaled
        n1 = len(issued_tokens(o))
        check(n1 - n0 <= 2, "one renewal per burst of 401s (then backoff), got %d" % (n1 - n0))
        jid = o.create_job("echo", {"msg": "after 401"})
        check(o.wait_job(jid, timeout=30)["status"] == "finished", o.job(jid), d.log())
        check("renewing the access token" in d.log(), d.log())


@test
def ca_only_configuration_does_not_ask_for_tokens(t):
    with tls_orch() as o:
        d = spawn(t, o, {"WORKER_TOKEN": o.token, "TLS_CA_PATH": pki().ca})
        o.wait_worker("w1")
        wait_for(lambda: len(o.log(kind="heartbeat")) >= 3, what="a few heartbeats")
        check(o.log(kind="sts") == [], "CA-only must not call /_worker/auth/token", d.log())


@test
def token_file_is_reread_on_reload_and_never_shown(t):
    with FakeOrch(poll_timeout=1, token="first-secret-1") as o:
        tf = t.write("token", "first-secret-1\n", mode=0o600)
        d = spawn(t, o, {"WORKER_TOKEN_FILE": tf})
        o.wait_worker("w1")
        o.config(worker_token="second-secret-2")
        t.write("token", "second-secret-2\n", mode=0o600)
        d.send_signal(signal.SIGHUP)
        since = len(o.log())
        wait_for(lambda: any(r["headers"].get("X-Worker-Token") == "second-secret-2" and r["status"] == 200
                             for r in o.log()[since:]), what="requests with the new token")
        jid = o.create_job("echo", {"msg": "after reload"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid), d.log())
        check("first-secret-1" not in d.log() and "second-secret-2" not in d.log(), "token logged")
    r = run_daemon(["--check-config", "-P", t.plugin_dir("echo")], env={"WORKER_TOKEN_FILE": tf})
    check(r.returncode == 0 and "second-secret-2" not in r.stdout + r.stderr, r.stdout)
    check("token_file = " + tf in r.stdout, r.stdout)


main()
