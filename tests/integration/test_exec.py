#!/usr/bin/python3
"""The exec plugin through the real daemon and the test orchestrator: task
types declared as files (types() of ABI 1.2 advertises them), params as
whole argv values and on stdin, the result from stdout, an invalid param
failing the job without running anything, the daemon's secret kept from the
child, a declaration dropped in and a reload (SIGHUP) adding a type (a
broken one refused, the running types kept), a [limits] timeout reported as TIMEOUT_ERROR with the command's
group gone; and the shipped ffmpeg example (conf/exec.d/transcode.json):
a generated clip transcoded and checked with ffprobe, progress rising to
100, and a long transcode cancelled leaving no ffmpeg process. The ffmpeg
tests need ffmpeg and ffprobe (tools/deps.sh installs them with
DEPS_EXTRA=ffmpeg; `make test` asks for them) and are skipped without."""
import json
import os
import shutil
import signal
import subprocess

from avt import *  # noqa: F401,F403
import unitfilter
from avt import (ROOT, VALGRIND, Skip, check, daemon_argv, daemon_env, main, need_normal_scheduling,
                 procs_with, test, tmo, wait_for)
from orch import FINAL, FakeOrch

WID = "w-exec"
EXAMPLE = os.path.join(ROOT, "conf", "exec.d", "transcode.json")


def types_dir(t, decls):
    d = t.path("exec.d")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    for name, decl in decls.items():
        t.write(os.path.join("exec.d", name + ".json"), json.dumps(decl, indent=2))
    return d


def spawn(t, o, decls, limits=""):
    work = t.path("work")
    os.makedirs(work, exist_ok=True)
    conf = t.ini("""
[worker]
max_concurrent_tasks = 2
cancel_grace = 10
[orchestrator]
heartbeat_interval = 0.5
heartbeat_debounce = 0.05
result_retry_initial_delay = 0.2
[limits]
%s
[plugin.exec]
types_dir = %s
work_dir = %s
""" % (limits, types_dir(t, decls), work))
    p = t.spawn(["-c", conf, "-P", t.plugin_dir("exec")], env=o.worker_env(WID))
    o.wait_worker(WID, timeout=15)
    return p


SHOUT = {
    "argv": ["/bin/sh", "-c", 'printf \'{"said": "%s", "args": %s, "stdin": %s}\' "$1" "$#" "$(cat)"',
             "sh", "{params.word}"],
    "stdin": "params",
}
ENV = {"argv": ["/usr/bin/env"], "result": "text"}


@test
def declared_types_run_with_whole_values_and_stdin(t):
    with FakeOrch(poll_timeout=2) as o:
        spawn(t, o, {"shout": SHOUT, "env": ENV})
        check({"shout", "env"} <= set(json.dumps(o.workers()).replace('"', " ").split()),
              o.workers())
        jid = o.create_job("shout", {"word": "two words; $(id)"})
        job = o.wait_job(jid)
        check(job["status"] == "finished", job)
        said = job["state_history"]
        check(said["said"] == "two words; $(id)" and said["args"] == 1, said)
        check(said["stdin"] == {"word": "two words; $(id)"}, said)
        # A non-scalar param: invalid input, the job fails without a retry.
        jid = o.create_job("shout", {"word": {"nested": 1}})
        job = o.wait_job(jid)
        check(job["status"] == "failed", job)
        check("param 'word' is an object" in job["error_message"], job)
        # The daemon's token is not in the child's environment.
        jid = o.create_job("env", {})
        job = o.wait_job(jid)
        check(job["status"] == "finished", job)
        env = job["state_history"]["output"]
        check("worker-token" not in env and "PATH=" in env and "TMPDIR=" in env, env)


POLICY = {"argv": ["/usr/bin/python3", "-c",
                   "import json, os; print(json.dumps({'policy': os.sched_getscheduler(0)}))"]}


@test
def a_command_inherits_the_daemons_batch_scheduling(t):
    need_normal_scheduling()
    with FakeOrch(poll_timeout=2) as o:
        spawn(t, o, {"policy": POLICY})
        job = o.wait_job(o.create_job("policy", {}))
        check(job["status"] == "finished", job)
        check(job["state_history"]["policy"] == os.SCHED_BATCH, job["state_history"])


@test
def a_declaration_dropped_in_and_a_reload_add_a_type(t):
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, {"shout": SHOUT})
        t.write(os.path.join("exec.d", "env.json"), json.dumps(ENV))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: 1 plugin(s), 2 task type(s)" in p.log(), what="the reload")
        wait_for(lambda: '"env"' in json.dumps(o.workers()), what="env advertised")
        job = o.wait_job(o.create_job("env", {}))
        check(job["status"] == "finished" and "PATH=" in job["state_history"]["output"], job)
        # A broken declaration: the reload is refused, the running types stay.
        t.write(os.path.join("exec.d", "broken.json"), '{"argv": []}')
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "broken.json: argv: required" in p.log(), what="the refusal")
        job = o.wait_job(o.create_job("shout", {"word": "still"}))
        check(job["status"] == "finished" and job["state_history"]["said"] == "still", job)


@test
def limits_timeout_is_timeout_error_and_leaves_no_process(t):
    marker = "avt-exec-sleeper-%d" % os.getpid()
    sleeper = {"argv": ["/bin/sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000; wait", marker],
               "kill_grace_seconds": 0.5}
    with FakeOrch(poll_timeout=2, max_retries=0) as o:
        spawn(t, o, {"sleeper": sleeper}, limits="sleeper.timeout = 1")
        jid = o.create_job("sleeper", {})
        wait_for(lambda: procs_with(marker), timeout=10, what="the command running")
        job = o.wait_job(jid, timeout=30)
        check(job["status"] not in ("finished", "cancelled"), job)
        check(job["results"][-1]["error"] == {"code": "TIMEOUT_ERROR",
                                              "message": "task exceeded its timeout"}, job)
        check(procs_with(marker) == [], procs_with(marker))


# The shipped unit denies @resources (setpriority among them): a type
# declaring nice is refused at start with the drop-in that fixes it, and
# with that drop-in nice applies (unitfilter.py applies the unit's system
# call filter without systemd).
UNIT = os.path.join(ROOT, "systemd", "avtworkerd.service")
LIMITED = {"argv": ["/bin/sh", "-c", "echo $(ulimit -n) $(cut -d' ' -f19 /proc/$$/stat)"],
           "result": "text", "rlimits": {"open_files": 64}, "nice": 5}


def unit_prefix(t, unit_text):
    if VALGRIND:
        raise Skip("valgrind does not run under a seccomp filter")
    try:
        prefix = unitfilter.argv_prefix(t.write("avtworkerd.service", unit_text))
    except unitfilter.Unavailable as e:
        raise Skip(str(e))
    if subprocess.run(prefix + ["/bin/true"], capture_output=True).returncode != 0:
        raise Skip("cannot apply a seccomp filter here")
    return prefix


def run_once_filtered(t, prefix, decl):
    conf = t.ini("[plugin.exec]\ntypes_dir = %s\n" % types_dir(t, {"limited": decl}))
    asan = os.environ.get("ASAN_OPTIONS")
    env = {"WORKER_ID": "w-unit", "STATE_DIRECTORY": t.path("state")}
    if asan:
        env["ASAN_OPTIONS"] = asan.replace("detect_leaks=1", "detect_leaks=0")
    return subprocess.run(prefix + daemon_argv(["-c", conf, "-P", t.plugin_dir("exec"), "run-once",
                                                "limited", "{}"]),
                          env=daemon_env(env), capture_output=True, text=True, timeout=tmo(60))


@test
def under_the_units_filter_nice_needs_the_drop_in(t):
    text = open(UNIT).read()
    check("SystemCallFilter=~@privileged @resources" in text, "the unit changed its filter")
    r = run_once_filtered(t, unit_prefix(t, text), LIMITED)
    check(r.returncode == 78, r.returncode, r.stderr[-1500:])
    check("type limited declares nice, but setpriority() fails here: Operation not permitted"
          in r.stderr and "drop-in: SystemCallFilter=setpriority)" in r.stderr, r.stderr[-1500:])
    # rlimits alone pass the filter (glibc's setrlimit() is prlimit64).
    no_nice = dict(LIMITED)
    del no_nice["nice"]
    r = run_once_filtered(t, unit_prefix(t, text), no_nice)
    check(r.returncode == 0, r.returncode, r.stderr[-1500:])
    check(json.loads(r.stdout)["data"]["output"].startswith("64 "), r.stdout)
    # The drop-in the message names: a later SystemCallFilter= line.
    r = run_once_filtered(t, unit_prefix(t, text + "\n[Service]\nSystemCallFilter=setpriority\n"),
                          LIMITED)
    check(r.returncode == 0, r.returncode, r.stderr[-1500:])
    check(json.loads(r.stdout)["data"] == {"output": "64 5\n"}, r.stdout)


def need_ffmpeg():
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise Skip("ffmpeg/ffprobe not installed (DEPS_EXTRA=ffmpeg tools/deps.sh)")


def clip(t, seconds, size="320x240"):
    path = t.path("in-%ds.mp4" % seconds)
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc=duration=%d:size=%s:rate=25" % (seconds, size), "-c:v", "mpeg4",
                    "-y", path], check=True, timeout=tmo(120))
    return path


def transcode_decl():
    """The shipped example, paced at the clip's own rate (-re) so that the
    transcode lasts long enough to report progress several times (and to be
    cancelled half-way); everything else exactly as shipped."""
    with open(EXAMPLE) as f:
        decl = json.load(f)
    i = decl["argv"].index("-i")
    decl["argv"][i:i] = ["-re"]
    if VALGRIND:
        # Valgrind refuses setrlimit(RLIMIT_NOFILE) between fork and exec
        # (it keeps fds of its own): the command could not start (EPERM).
        del decl["rlimits"]
    return decl


def progress_of(o, jid):
    return [r["body"]["progress"] for r in o.log()
            if r["method"] == "WS-RECV" and isinstance(r["body"], dict)
            and r["body"].get("event") == "progress_update" and r["body"].get("job_id") == jid]


@test
def ffmpeg_transcode_with_progress_to_100(t):
    need_ffmpeg()
    src, out = clip(t, 3), t.path("out.mp4")
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, {"transcode": transcode_decl()})
        wait_for(lambda: "websocket connected" in p.log(), what="websocket")
        jid = o.create_job("transcode", {"input": src, "output": out, "duration": 3})
        job = o.wait_job(jid, timeout=60)
        check(job["status"] == "finished", job, p.log()[-2000:])
        probe = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height:format=duration",
             "-of", "json", out], check=True, capture_output=True, text=True).stdout)
        check(probe["streams"][0]["codec_name"] == "h264", probe)
        check((probe["streams"][0]["width"], probe["streams"][0]["height"]) == (320, 240), probe)
        check(abs(float(probe["format"]["duration"]) - 3) < 0.5, probe)
        prog = wait_for(lambda: (lambda v: v if v and v[-1] == 1 else None)(progress_of(o, jid)),
                        what="progress 100")
        check(all(a <= b for a, b in zip(prog, prog[1:])), prog)
        check(any(0 < v < 1 for v in prog), prog)


@test
def ffmpeg_cancelled_leaves_no_ffmpeg(t):
    need_ffmpeg()
    src, out = clip(t, 60, size="160x120"), t.path("cancelled-out.mp4")
    with FakeOrch(poll_timeout=2) as o:
        p = spawn(t, o, {"transcode": transcode_decl()})
        wait_for(lambda: "websocket connected" in p.log(), what="websocket")
        jid = o.create_job("transcode", {"input": src, "output": out, "duration": 60})
        wait_for(lambda: procs_with(out), timeout=20, what="ffmpeg running")
        wait_for(lambda: any(0 < v < 1 for v in progress_of(o, jid)), timeout=30,
                 what="progress under way")
        o.cancel(jid)
        job = o.wait_job(jid, pred=lambda j: j["status"] in FINAL, timeout=30)
        check(job["status"] == "cancelled", job)
        wait_for(lambda: "cancelled" in json.dumps(o.log(kind="result")), timeout=30,
                 what="the cancelled result")
        check(procs_with(out) == [], procs_with(out))
        check(p.poll() is None, p.log()[-2000:])


main()
