"""Shared helpers for the integration tests: TAP output, paths of the built
binary and plugins, temporary directories, config files, running the daemon.

Every test file does:

    from avt import *          # noqa
    @test
    def some_behaviour(t):     # t is a TestCtx with a private temp dir
        r = run_daemon(["--check-config", "-c", t.ini("...")])
        check(r.returncode == 78, r)
    main()
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("AVT_BUILD", os.path.join(ROOT, "build")))
DAEMON = os.path.join(BUILD, "avtworkerd")
PLUGINS = os.path.join(BUILD, "plugins")
TEST_PLUGINS = os.path.join(BUILD, "tests", "plugins")
TIMEOUT_MULT = float(os.environ.get("TIMEOUT_MULT", "1"))
VALGRIND = os.environ.get("VALGRIND") == "1"
# Under VALGRIND=1 every daemon writes its own valgrind log here; after each
# test the new logs are read, and an error or a definite leak fails the test
# (a daemon killed with SIGKILL cannot report leaks, only earlier errors).
VG_DIR = tempfile.mkdtemp(prefix="avt-vg.") if VALGRIND else None
# What valgrind writes with -q only when something is wrong.
VG_ERROR = re.compile(r"Invalid (read|write|free)|uninitialised|definitely lost|Mismatched free|"
                      r"Syscall param|overlap|Jump to the invalid|"
                      r"Process terminating with default action of signal (4|6|7|8|11) |"
                      r"Argument '.*' of function .* has a fishy")

_tests = []


def test(fn):
    _tests.append(fn)
    return fn


class CheckFailed(Exception):
    pass


class Skip(Exception):
    """raise Skip("why"): reported as "ok N - name # SKIP why" (TAP), only for
    a test the environment cannot run (never for a failure)."""


def check(cond, *context):
    """Fail the current test unless cond; context is printed on failure."""
    if not cond:
        raise CheckFailed("\n".join(str(c) for c in context) or "check failed")


def tmo(seconds):
    """A timeout scaled for sanitizer and valgrind runs."""
    return seconds * TIMEOUT_MULT


def scaled(n, minimum=10):
    """A count for load and soak tests: n, times AVT_SCALE when set, else
    times 0.1 under valgrind (everything is ~20x slower there)."""
    f = float(os.environ.get("AVT_SCALE", "0.1" if VALGRIND else "1"))
    return max(minimum, int(n * f))


def thread_policies(pid):
    """{tid: os.SCHED_*} of every thread of a running process."""
    got = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            got[tid] = os.sched_getscheduler(int(tid))
        except ProcessLookupError:  # a thread that ended since the listing
            pass
    return got


def need_normal_scheduling():
    """Skip a test of the daemon's default policy when the test runner
    itself is not SCHED_OTHER: the daemon's policy would then prove nothing."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        raise Skip("the test runner itself is not SCHED_OTHER: the default proves nothing")


def procs_with(marker):
    """[(pid, command line)] of the live (not zombie) processes whose command
    line contains marker."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open("/proc/%s/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone since the listing
            continue
        if marker in cmd and state != "Z":
            found.append((pid, cmd))
    return found


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + tmo(timeout)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise CheckFailed("timed out waiting for " + what)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TestCtx:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="avt-%s." % name)
        self._procs = []
        self._cleanups = []
        # A test that makes the daemon crash on purpose sets this: valgrind
        # logs of processes that died of a signal are then not errors.
        self.expect_crash = False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text, mode=0o644):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def ini(self, text, name="worker.ini"):
        return self.write(name, text)

    def plugin_dir(self, *sos, name="plugins"):
        """A private plugin directory holding copies of the named .so files
        (paths, or names looked up in build/plugins and build/tests/plugins)."""
        d = self.path(name)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        for so in sos:
            src = so
            if not os.path.isabs(so):
                for base in (PLUGINS, TEST_PLUGINS):
                    cand = os.path.join(base, so if so.endswith(".so") else so + ".so")
                    if os.path.exists(cand):
                        src = cand
                        break
            dst = os.path.join(d, os.path.basename(src))
            # Copy, then rename into place: overwriting a .so in place that a
            # running daemon has mapped discards even its relocated private
            # pages (truncate), and it crashes later, e.g. in its
            # destructors at exit (found by the valgrind run).
            shutil.copy(src, dst + ".tmp")
            os.chmod(dst + ".tmp", 0o755)
            os.replace(dst + ".tmp", dst)
        return d

    def spawn(self, args, env=None, prefix=(), **kw):
        """Start the daemon in the background; stopped at the end of the test.
        Unless env names one, its state directory (spool, crash journal) is
        the test's own `state/`, shared by every daemon the test starts.
        prefix: a command that runs the daemon (unitfilter.argv_prefix, nsenter ...)."""
        env = dict(env or {})
        env.setdefault("STATE_DIRECTORY", self.path("state"))
        n = len(self._procs)
        out = open(self.path("daemon%d.out" % n), "w")
        err = open(self.path("daemon%d.log" % n), "w")
        p = subprocess.Popen(list(prefix) + daemon_argv(args), env=daemon_env(env), stdout=out,
                             stderr=err, text=True, **kw)
        out.close()
        err.close()
        # Files, not pipes: a chatty daemon must never block on a full pipe
        # that the test is not reading.
        p.out_path = self.path("daemon%d.out" % n)
        p.log_path = self.path("daemon%d.log" % n)
        p.log = lambda: open(p.log_path, errors="replace").read()
        self._procs.append(p)
        return p

    def on_cleanup(self, fn):
        self._cleanups.append(fn)

    def crashed(self):
        """Daemons of this test that died of SIGSEGV, SIGABRT, SIGBUS, SIGFPE
        or SIGILL (checked after the test unless expect_crash is set)."""
        bad = (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGFPE, -signal.SIGILL)
        return ["daemon %d died of signal %d; its log ends:\n%s"
                % (i, -p.returncode, "\n".join(p.log().splitlines()[-15:]))
                for i, p in enumerate(self._procs) if p.returncode in bad]

    def cleanup(self):
        for p in self._procs:
            if VALGRIND and p.poll() is None:
                # A graceful stop, so that valgrind can check for leaks.
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=tmo(3))
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except Exception:
                    pass
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:
                traceback.print_exc()
        self.crash_report = [] if self.expect_crash else self.crashed()
        shutil.rmtree(self.dir, ignore_errors=True)


def daemon_argv(args):
    argv = [DAEMON] + list(args)
    if VALGRIND:
        argv = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                "--suppressions=" + os.path.join(ROOT, "tests", "valgrind.supp"),
                "--show-leak-kinds=definite", "--num-callers=30",
                "--log-file=" + os.path.join(VG_DIR, "vg.%p.log"), "-q"] + argv
    return argv


def valgrind_findings(expect_crash=False):
    """The valgrind logs written since the last call that report an error
    or a definite leak, as text (empty when clean); read logs are removed.
    With expect_crash, a log of a process that died of a signal counts as
    clean (the crash was the point of the test)."""
    if not VALGRIND:
        return ""
    found = []
    for path in sorted(glob.glob(os.path.join(VG_DIR, "vg.*.log"))):
        with open(path, errors="replace") as f:
            text = f.read()
        os.unlink(path)
        if not VG_ERROR.search(text):
            continue
        if expect_crash and "Process terminating with default action" in text:
            continue
        found.append("valgrind (%s):\n%s" % (os.path.basename(path), text))
    return "\n".join(found)


def daemon_env(extra=None, clean=True):
    """The daemon's environment: without any of the configuration variables
    of the test runner's own environment, plus `extra`."""
    env = dict(os.environ)
    if clean:
        for k in list(env):
            if k in ("ORCHESTRATOR_URL", "WORKER_ID", "WORKER_TOKEN", "WORKER_INDIVIDUAL_TOKEN",
                     "MAX_CONCURRENT_TASKS", "CPU_CORES", "HEARTBEAT_INTERVAL", "TASK_POLL_TIMEOUT",
                     "WORKER_TYPE", "LOG_LEVEL", "LOG_FORMAT", "JOURNAL_STREAM", "NOTIFY_SOCKET",
                     "STATE_DIRECTORY", "INSTALLED_MODELS", "INSTALLED_SOFTWARE", "COST_PER_SKILL",
                     "GPU_MODEL", "GPU_VRAM_GB", "WORKER_TOKEN_FILE", "ORCHESTRATORS_CONFIG",
                     "WORKER_HEARTBEAT_DEBOUNCE_DELAY", "RESULT_RETRY_INITIAL_DELAY",
                     "BACKOFF_MAX_DELAY", "WORKER_SHUTDOWN_TIMEOUT", "WORKER_ENABLE_WEBSOCKETS",
                     "ADVERTISE_BUSY", "AVT_PLUGIN_DIR", "HOSTNAME_OVERRIDE", "IP_ADDRESS",
                     "TLS_CA_PATH", "TLS_CERT_PATH", "TLS_KEY_PATH", "MULTI_ORCHESTRATOR_MODE",
                     "TLS_INSECURE") \
                    or k.startswith("WORKER_EXTRA_"):
                del env[k]
    if extra:
        env.update(extra)
    return env


def private_build(t):
    """The test's own copy of the build directory, for tests that run
    `make install PREFIX=/usr`: that recompiles the paths in and relinks the
    daemon, which must not happen under the test files that run the shared
    binary meanwhile (they saw "Permission denied" mid-link). Timestamps are
    kept, so make only redoes what the new paths touch. Relative to ROOT."""
    if getattr(t, "_private_build", None) is None:
        dst = t.path("build")
        shutil.copytree(BUILD, dst, symlinks=True, ignore=shutil.ignore_patterns("tests", "bench"))
        t._private_build = os.path.relpath(dst, ROOT)
    return t._private_build


def run_daemon(args, env=None, timeout=30, input=None):
    """Run the daemon to completion; returns CompletedProcess (text)."""
    return subprocess.run(daemon_argv(args), env=daemon_env(env), capture_output=True, text=True,
                          timeout=tmo(timeout), input=input)


def main():
    only = os.environ.get("TEST")
    todo = [t for t in _tests if not only or only in t.__name__]
    print("1..%d" % len(todo), flush=True)
    failed = 0
    for i, fn in enumerate(todo, 1):
        ctx = TestCtx(fn.__name__)
        ok = True
        skip = ""
        try:
            fn(ctx)
        except Skip as e:
            skip = " # SKIP " + str(e)
        except Exception as e:
            ok = False
            failed += 1
            msg = traceback.format_exc() if not isinstance(e, CheckFailed) else \
                "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-2))
            for line in msg.rstrip().splitlines():
                print("#   " + line)
        finally:
            ctx.cleanup()
        vg = valgrind_findings(ctx.expect_crash)
        if ctx.crash_report:
            vg = "\n".join(ctx.crash_report + [vg])
        if vg:
            if ok:
                failed += 1
            ok = False
            for line in vg.rstrip().splitlines():
                print("#   " + line)
        print("%sok %d - %s%s" % ("" if ok else "not ", i, fn.__name__, skip), flush=True)
    if VG_DIR:
        shutil.rmtree(VG_DIR, ignore_errors=True)
    sys.exit(1 if failed else 0)
