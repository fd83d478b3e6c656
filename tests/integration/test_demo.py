"""`make demo` (tests/demo.py) as a new user meets it: run as an ordinary
user (nobody, when the suite runs as root) it works with its state in the
build directory, removed afterwards, and its table shows the plugins' own
words (the permanent failure's message in full); when the daemon stops on
its own (a state directory it cannot use), the demo says at once with the
daemon's exit status and the end of its log, and exits 1."""
import os
import re
import shutil
import subprocess
import tempfile

from avt import *  # noqa: F401,F403
from avt import BUILD, ROOT, Skip, check, main, test, tmo

NOBODY = 65534


def demo_build(t):
    """A build directory of the demo's own, the user's to write: the
    shared daemon and plugins through symlinks."""
    d = tempfile.mkdtemp(prefix="avt-demo-build.")
    t.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    os.chmod(d, 0o755)
    for name in ("avtworkerd", "plugins"):
        os.symlink(os.path.join(BUILD, name), os.path.join(d, name))
    if os.geteuid() == 0:
        os.chown(d, NOBODY, NOBODY)
    return d


def run_demo(build, env=None):
    """tests/demo.py as an ordinary user: this one, or nobody under root."""
    argv = [os.environ.get("PYTHON", "/usr/bin/python3"), os.path.join(ROOT, "tests", "demo.py")]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + argv
    e = dict(os.environ, BUILD=build, TMPDIR="/tmp", HOME="/tmp")
    e.update(env or {})
    return subprocess.run(argv, env=e, capture_output=True, text=True, timeout=tmo(180))


@test
def demo_runs_as_an_ordinary_user_with_its_own_state(t):
    if os.environ.get("SANITIZE") or os.environ.get("VALGRIND") == "1":
        raise Skip("the demo runs the plain build's daemon; the plain run covers it")
    build = demo_build(t)
    r = run_demo(build, {"DEMO_KEEP_LOG": "1"})
    check(r.returncode == 0, r.stdout, r.stderr)
    check(re.search(r"^demo OK$", r.stdout, re.M), r.stdout)
    # An ordinary user cannot write /var/lib/avtworkerd (the daemon's
    # default, where it would exit 78): the state was the demo's own.
    log = re.search(r"^daemon log: (\S+)$", r.stdout, re.M)
    check(log is not None, r.stdout)
    os.unlink(log.group(1))
    check(sorted(os.listdir(build)) == ["avtworkerd", "plugins"],
          "the demo left files behind", os.listdir(build))
    row = [ln for ln in r.stdout.splitlines() if ln.startswith("permanent failure")]
    check(len(row) == 1 and "PERMANENT_ERROR: cannot ever work" in row[0], r.stdout)


@test
def demo_stops_at_once_when_the_daemon_exits(t):
    build = demo_build(t)
    # A file where the state directory goes: the daemon exits 78.
    open(os.path.join(build, "demo-state"), "w").close()
    r = run_demo(build)
    check(r.returncode == 1, r.stdout, r.stderr)
    check("demo FAILED: avtworkerd exited with status 78 while the demo waited for its registration"
          in r.stdout, r.stdout, r.stderr)
    check("state directory unusable: %s/demo-state: not a directory" % build in r.stdout,
          "the daemon's own message is not shown", r.stdout)
    check("Traceback" not in r.stdout + r.stderr, r.stdout, r.stderr)
    log = re.search(r"^daemon log: (\S+)$", r.stdout, re.M)
    check(log is not None and os.path.exists(log.group(1)), "the daemon's log is not kept", r.stdout)
    os.unlink(log.group(1))


main()
