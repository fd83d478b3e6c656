"""The worker's secrets, as an operator and a plugin author meet them: the
token and the other secrets of the environment (WORKER_TOKEN,
WORKER_INDIVIDUAL_TOKEN, WORKER_SIGNING_KEY, ORCHESTRATORS_CONFIG) are taken
out of it at start, so neither a plugin, nor a child process it starts, nor
/proc/PID/environ shows them, while the daemon (also after a reload) keeps
using them; a token file that others may read is refused at start (exit 78)
and on reload (the running configuration stays), with the fix in the
message; a token about to go over plain http:// to another host is warned
about, once, and never to loopback. The real daemon with the t_behave test
plugin against the fake orchestrator."""
import json
import os
import signal
import socket

from avt import *  # noqa: F401,F403
from avt import VALGRIND, Skip, check, main, run_daemon, test, wait_for
from orch import FakeOrch

WID = "w1"
SIGNING = "sig-secret-5f1e"  # never used by RXON 1.0b3: only its absence matters
CLEARTEXT = "in clear text (http:// to another host)"


def worker_ini(t, extra=""):
    return t.ini("[worker]\nmax_concurrent_tasks = 2\n"
                 "[orchestrator]\nheartbeat_interval = 0.3\npoll_timeout = 1\n" + extra)


def spawn(t, o, env, ini_extra="", wid=WID):
    e = {"ORCHESTRATOR_URL": o.url, "WORKER_ID": wid}
    e.update(env)
    return t.spawn(["-c", worker_ini(t, ini_extra), "-P", t.plugin_dir("echo", "t_behave")], env=e)


def env_seen(o, name, needle=None):
    """What a t_env task saw: (in the plugin's environment, in its child's)."""
    params = {"name": name}
    if needle:
        params["needle"] = needle
    jid = o.create_job("t_env", params)
    j = o.wait_job(jid)
    check(j["status"] == "finished", j)
    d = j["state_history"]
    check(d["child_ran"], "the plugin could not start a child process", d)
    return d["in_env"], d["in_child"]


def proc_environ(p):
    """/proc/PID/environ of the daemon: the strings of its initial
    environment. Under valgrind those are valgrind's, not the copy the
    daemon runs with: empty then."""
    if VALGRIND:
        return b""
    with open("/proc/%d/environ" % p.pid, "rb") as f:
        return f.read()


def authenticated_after(o, since):
    """A request after `since` that the orchestrator accepted with its token."""
    return any(r["headers"].get("X-Worker-Token") == o.token and r["status"] == 200
               for r in o.log()[since:])


def reload(p, n):
    """SIGHUP and wait for the n-th reload's outcome (accepted or not)."""
    p.send_signal(signal.SIGHUP)
    wait_for(lambda: p.log().count("SIGHUP: reloading") >= n
             and p.log().count("reloaded:") + p.log().count("reload rejected") >= n,
             what="reload %d" % n)


# ---- the environment -----------------------------------------------------------


@test
def plugins_and_their_children_never_find_the_token_in_the_environment(t):
    with FakeOrch(poll_timeout=1) as o:
        p = spawn(t, o, {"WORKER_TOKEN": o.token, "WORKER_SIGNING_KEY": SIGNING,
                         "WORKER_EXTRA_REGION": "eu-test"})
        o.wait_worker(WID)
        check(env_seen(o, "WORKER_TOKEN", o.token) == (False, False), "the token leaked")
        check(env_seen(o, "WORKER_SIGNING_KEY", SIGNING) == (False, False), "the key leaked")
        # The rest of the environment stays (and the plugin does see it).
        check(env_seen(o, "WORKER_EXTRA_REGION") == (True, True), "t_env sees nothing")
        environ = proc_environ(p)
        check(o.token.encode() not in environ and SIGNING.encode() not in environ,
              "/proc/PID/environ still shows a secret")
        check(VALGRIND or b"ORCHESTRATOR_URL=" + o.url.encode() in environ, environ)
        # A reload reads the configuration (and the environment) again: the
        # token stays in use, and stays out of the environment.
        since = len(o.log())
        reload(p, 1)
        check("reloaded:" in p.log(), p.log()[-2000:])
        wait_for(lambda: authenticated_after(o, since), what="requests with the token after reload")
        check(env_seen(o, "WORKER_TOKEN", o.token) == (False, False), "the token is back")
        check(o.token not in p.log() and SIGNING not in p.log(), "a secret was logged")


@test
def tokens_in_orchestrators_config_are_taken_too(t):
    with FakeOrch(poll_timeout=1) as o:
        conf = json.dumps([{"url": o.url, "token": o.token, "name": "main"}])
        p = spawn(t, o, {"ORCHESTRATORS_CONFIG": conf})
        o.wait_worker(WID)
        check(env_seen(o, "ORCHESTRATORS_CONFIG", o.token) == (False, False), "the token leaked")
        check(o.token.encode() not in proc_environ(p), "/proc/PID/environ shows the token")
        since = len(o.log())
        reload(p, 1)
        check("reloaded:" in p.log(), p.log()[-2000:])
        wait_for(lambda: authenticated_after(o, since), what="requests with the token after reload")


@test
def run_once_plugins_do_not_see_the_token_either(t):
    secret = "tok-run-once-77"
    r = run_daemon(["-P", t.plugin_dir("t_behave"), "run-once", "t_env",
                    json.dumps({"name": "WORKER_INDIVIDUAL_TOKEN", "needle": secret})],
                   env={"WORKER_INDIVIDUAL_TOKEN": secret, "STATE_DIRECTORY": t.path("state")})
    check(r.returncode == 0, r.stdout, r.stderr)
    d = json.loads(r.stdout)["data"]
    check(d == {"in_env": False, "in_child": False, "child_ran": True}, d)


# ---- token files -----------------------------------------------------------------


@test
def token_file_open_to_others_is_refused_at_start(t):
    secret = "tok-file-open-31"
    tf = t.write("token", secret + "\n", mode=0o644)
    pdir = t.plugin_dir("echo")
    r = run_daemon(["--check-config", "-P", pdir], env={"WORKER_TOKEN_FILE": tf})
    check(r.returncode == 78, r.returncode, r.stdout, r.stderr)
    check("environment: WORKER_TOKEN_FILE: %s has mode 0644" % tf in r.stderr
          and "chmod 600 %s" % tf in r.stderr, r.stderr)
    ini = worker_ini(t, "token_file = %s\n" % tf)
    r = run_daemon(["--check-config", "-c", ini, "-P", pdir])
    check(r.returncode == 78 and "%s:6: token_file: %s has mode 0644" % (ini, tf) in r.stderr,
          r.returncode, r.stderr)
    # Serving refuses it before anything else.
    r = run_daemon(["-c", ini, "-P", pdir], env={"ORCHESTRATOR_URL": "http://127.0.0.1:9",
                                                 "STATE_DIRECTORY": t.path("state")})
    check(r.returncode == 78 and "chmod 600" in r.stderr, r.returncode, r.stderr)
    for out in (r.stdout, r.stderr):
        check(secret not in out, "the token was shown")
    os.chmod(tf, 0o600)
    r = run_daemon(["--check-config", "-c", ini, "-P", pdir])
    check(r.returncode == 0, r.stderr)


@test
def token_file_opened_to_others_is_refused_on_reload(t):
    with FakeOrch(poll_timeout=1) as o:
        tf = t.write("token", o.token + "\n", mode=0o600)
        p = spawn(t, o, {"WORKER_TOKEN_FILE": tf})
        o.wait_worker(WID)
        os.chmod(tf, 0o640)
        reload(p, 1)
        log = p.log()
        check("reload rejected, the running configuration stays: environment: WORKER_TOKEN_FILE: "
              "%s has mode 0640" % tf in log and "chmod 600 %s" % tf in log, log[-2000:])
        # Still serving with the token it had.
        since = len(o.log())
        jid = o.create_job("echo", {"msg": "after the refused reload"})
        check(o.wait_job(jid)["status"] == "finished", o.job(jid), p.log()[-1500:])
        wait_for(lambda: authenticated_after(o, since), what="requests with the token")
        check(p.poll() is None, "the daemon stopped")
        check(o.token not in p.log(), "the token was logged")


# ---- plain http ------------------------------------------------------------------


def non_loopback_ipv4():
    """An IPv4 address of this machine that is not loopback, or None (the
    address a UDP socket would send from: nothing is sent)."""
    for target in ("192.0.2.1", "10.255.255.255", "198.51.100.1"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                ip = s.getsockname()[0]
        except OSError:
            continue
        if not ip.startswith("127.") and ip != "0.0.0.0":
            return ip
    return None


class HostOrch(FakeOrch):
    """The fake orchestrator listening on one address of this machine, and
    reached through it."""

    def __init__(self, host, **kw):
        super().__init__(extra_args=("--host", host), **kw)
        self.host = host

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)


@test
def plain_http_to_another_host_is_warned_about_once(t):
    ip = non_loopback_ipv4()
    if ip is None:
        raise Skip("this machine has no IPv4 address but loopback")
    o = HostOrch(ip, poll_timeout=1)
    try:
        o.start()
    except Exception as e:
        raise Skip("cannot listen on %s: %s" % (ip, e))
    t.on_cleanup(o.stop)
    p = spawn(t, o, {"WORKER_TOKEN": o.token})
    o.wait_worker(WID)
    wait_for(lambda: CLEARTEXT in p.log(), what="the warning")
    reload(p, 1)
    jid = o.create_job("echo", {"msg": "over http"})
    check(o.wait_job(jid)["status"] == "finished", o.job(jid))
    log = p.log()
    check(log.count(CLEARTEXT) == 1, "warned %d times" % log.count(CLEARTEXT), log[-3000:])
    line = [ln for ln in log.splitlines() if CLEARTEXT in ln][0]
    check("warning" in line and o.url in line and "use an https:// url" in line, line)
    check(o.token not in log, "the token was logged")


@test
def plain_http_to_loopback_is_not_warned_about(t):
    with FakeOrch(poll_timeout=1) as o:
        for i, url in enumerate((o.url, o.url.replace("127.0.0.1", "localhost"))):
            wid = "w%d" % (i + 1)
            p = spawn(t, o, {"WORKER_TOKEN": o.token, "ORCHESTRATOR_URL": url}, wid=wid)
            o.wait_worker(wid)
            jid = o.create_job("echo", {"msg": "over loopback"}, worker_id=wid)
            check(o.wait_job(jid)["status"] == "finished", o.job(jid))
            check(CLEARTEXT not in p.log(), url, p.log()[-2000:])
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)


main()
