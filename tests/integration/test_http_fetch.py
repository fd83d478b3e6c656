#!/usr/bin/python3
"""The http_fetch plugin end to end: the real daemon loads build/plugins/
http_fetch.so with a [plugin.http_fetch] section like the README's example,
takes fetch jobs from the test orchestrator, fetches from a local HTTP
server (tests/unit/http_test_server.py) and reports the body, the status
and the selected headers as the job's result; a file body lands in
output_dir; a URL the policy refuses (another loopback address than the one
allow_networks opens) fails the job with SECURITY_ERROR without the server
seeing a connection. The README's example settings load, and an unknown
key stops the daemon with the line to fix."""
import json
import os
import re
import subprocess

from avt import *  # noqa: F401,F403
from avt import ROOT, check, main, run_daemon, test
from orch import FakeOrch

SERVER = os.path.join(ROOT, "tests", "unit", "http_test_server.py")
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")


def start_server(t):
    """The local HTTP server; it exits when its stdin closes."""
    p = subprocess.Popen([PYTHON, SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop():
        p.stdin.close()
        p.wait(timeout=10)
    t.on_cleanup(stop)
    port = int(p.stdout.readline())
    return "http://127.0.0.1:%d" % port


def conns(base):
    """Connections the server accepted so far (this one included)."""
    import urllib.request
    return int(urllib.request.urlopen(base + "/conns", timeout=10).read())


@test
def fetch_jobs_end_to_end(t):
    base = start_server(t)
    out = t.path("fetched")
    os.makedirs(out)
    ini = ("[worker]\nmax_concurrent_tasks = 2\n[orchestrator]\nheartbeat_interval = 0.5\n"
           "[plugin.http_fetch]\n"
           "user_agent = example-scraper/1.0 (ops@example.com)\n"
           "connect_timeout = 5\ntimeout = 20\nmax_body_bytes = 1048576\nmax_redirects = 3\n"
           "allow_networks = 127.0.0.1/32\n"
           "output_dir = %s\n" % out)
    with FakeOrch(poll_timeout=1) as o:
        d = t.spawn(["-c", t.ini(ini), "-P", t.plugin_dir("http_fetch")], env=o.worker_env("w1"))
        o.wait_worker("w1")
        text = o.create_job("http_fetch", {"url": base + "/redirect?n=1",
                                           "headers": ["content-type", "x-tag"]})
        as_file = o.create_job("http_fetch", {"url": base + "/bytes", "as": "file"})
        ua = o.create_job("http_fetch", {"url": base + "/ua"})
        gone = o.create_job("http_fetch", {"url": base + "/status/404"})
        jobs = o.wait_jobs([text, as_file, ua, gone], timeout=60)
        # Nothing else talks to the server while the refused job runs.
        before = conns(base)
        refused = o.create_job("http_fetch", {"url": base.replace("127.0.0.1", "127.0.0.2") + "/hello"})
        jobs.insert(3, o.wait_job(refused, timeout=60))

        j = jobs[0]
        check(j["status"] == "finished", j, d.log())
        h = j["state_history"]
        check(h["status"] == 200 and h["redirects"] == 2 and h["url"] == base + "/page", h)
        check(h["body"] == "<p>h\u00e9llo \u2013 w\u00f6rld \u2603</p>\n", h)
        check(h["headers"] == {"content-type": "text/html; charset=utf-8", "x-tag": "a, b"}, h)
        check(h["size"] == len(h["body"].encode()), h)

        j = jobs[1]
        check(j["status"] == "finished", j, d.log())
        path = j["state_history"]["path"]
        check(os.path.dirname(path) == out, path)
        with open(path, "rb") as f:
            check(f.read() == bytes(range(256)), path)
        check(not [n for n in os.listdir(out) if n.endswith(".part")], os.listdir(out))

        check(jobs[2]["state_history"]["body"] == "example-scraper/1.0 (ops@example.com)", jobs[2])

        j = jobs[3]
        check(j["status"] == "quarantined" and "SECURITY_ERROR" in j["error_message"]
              and "127.0.0.2" in j["error_message"], j)
        check(conns(base) == before + 1, "the refused fetch reached the server")
        check("refused" in d.log() and "127.0.0.2" in d.log(), d.log())

        j = jobs[4]
        check(j["status"] == "quarantined" and "HTTP status 404" in j["error_message"], j)



def readme_ini():
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"### `http_fetch`.*?```ini\n(.*?)```", text, re.S)
    check(m is not None, "README has no [plugin.http_fetch] example")
    return m.group(1)


@test
def readme_example_settings_load(t):
    out = t.path("fetched")
    os.makedirs(out)
    ini = readme_ini().replace("/var/lib/avtworkerd/fetched", out)
    check("[plugin.http_fetch]" in ini, ini)
    plugins = t.plugin_dir("http_fetch")
    r = run_daemon(["-c", t.ini(ini), "-P", plugins, "--check-config"])
    check(r.returncode == 0 and "# configuration OK" in r.stdout, r.stdout, r.stderr)
    check("allow_hosts = www.example.com, *.example.org" in r.stdout, r.stdout)
    # A host outside allow_hosts: refused without a connection.
    r = run_daemon(["-c", t.ini(ini), "-P", plugins, "run-once", "http_fetch",
                    json.dumps({"url": "http://127.0.0.1:9/x"})])
    check(r.returncode == 1, r.stdout, r.stderr)
    check(json.loads(r.stdout)["error"]["code"] == "SECURITY_ERROR", r.stdout)
    bad = t.ini(ini.replace("max_redirects = 5", "max_redirect = 5"), name="bad.ini")
    r = run_daemon(["-c", bad, "-P", plugins, "--check-config"])
    check(r.returncode == 78 and "max_redirect: unknown key" in r.stderr, r.stdout, r.stderr)


main()
