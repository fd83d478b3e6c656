"""The plugin SDK as a plugin author meets it: the README's tutorial ("Writing
your first plugin") run literally, as an ordinary user (nobody, when the
suite runs as root: no sudo, no root): its greet.c, `make install` into a
prefix in the home directory, its export line, its cc command (checked to
record libjansson, also with --as-needed) and run-once. And `make install`
into a DESTDIR holds every SDK file."""
import json
import os
import re
import shutil
import subprocess
import tempfile

from avt import *  # noqa: F401,F403
from avt import ROOT, BUILD, check, private_build, test, main, tmo

NOBODY = 65534


def readme_section():
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("## Writing your first plugin")
    return text[start:text.index("\n## ", start + 1)]


def readme_plugin():
    m = re.search(r"```c\n(/\* greet\.c .*?)```", readme_section(), re.S)
    check(m is not None, "README has no greet.c example")
    return m.group(1)


def readme_commands():
    """The tutorial's two shell blocks: the install from the checkout, and
    the build and run of the plugin."""
    blocks = re.findall(r"```sh\n(.*?)```", readme_section(), re.S)
    check(len(blocks) >= 2, "the tutorial lost a shell block", blocks)
    return blocks[0], blocks[1]


def as_user(argv):
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + argv
    return argv


def needed(so):
    r = subprocess.run(["readelf", "-d", so], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", r.stdout)


@test
def readme_tutorial_works_verbatim_as_an_ordinary_user(t):
    install, build_and_run = readme_commands()
    home = tempfile.mkdtemp(prefix="avt-tutorial-home.")
    t.on_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.chmod(home, 0o755)
    # The user's own build directory (a copy: make install relinks with
    # the prefix compiled in, which must not touch the shared one).
    build = os.path.join(home, "checkout-build")
    shutil.copytree(BUILD, build, symlinks=True, ignore=shutil.ignore_patterns("tests", "bench"))
    src = os.path.join(home, "src")
    os.makedirs(src)
    with open(os.path.join(src, "greet.c"), "w") as f:
        f.write(readme_plugin())
    if os.geteuid() == 0:
        for d, dirs, files in os.walk(home):
            for name in [d] + [os.path.join(d, x) for x in dirs + files]:
                os.lchown(name, NOBODY, NOBODY)
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    # A sanitizer run's build directory is rebuilt with the same flags
    # (make reads SANITIZE from the environment, as under `make test`).
    for k in ("SANITIZE", "ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    r = subprocess.run(as_user(["bash", "-euc", install]), cwd=ROOT, env=dict(env, BUILD=build),
                       capture_output=True, text=True, timeout=tmo(300))
    check(r.returncode == 0, "the tutorial's make install failed", r.stdout, r.stderr)
    prefix = os.path.join(home, ".local")
    for p in ("sbin/avtworkerd", "include/avt_plugin.h", "lib/pkgconfig/avtworker-sdk.pc",
              "etc/avtworkerd/worker.ini"):
        check(os.path.exists(os.path.join(prefix, p)), "not under the prefix: " + p)
    r = subprocess.run(as_user(["bash", "-euc", build_and_run]), cwd=src, env=env,
                       capture_output=True, text=True, timeout=tmo(120))
    check(r.returncode == 0, "the tutorial's build-and-run failed", r.stdout, r.stderr)
    res = json.loads(r.stdout)
    check(res["status"] == "success" and res["data"] == {"greeting": "Ada"}, res)
    check(set(res) == {"job_id", "task_id", "worker_id", "status", "data", "error",
                       "data_metadata"}, res)
    so = os.path.join(home, "myplugins", "greet.so")
    check(any(n.startswith("libjansson.so") for n in needed(so)), "no NEEDED libjansson", needed(so))
    # Ubuntu links with --as-needed by default: the same command there.
    cc = [ln for ln in build_and_run.splitlines() if ln.startswith("cc ")]
    check(len(cc) == 1, build_and_run)
    strict = cc[0].replace("cc ", "cc -Wl,--as-needed ", 1).replace("greet.so", "strict.so")
    export = [ln for ln in build_and_run.splitlines() if ln.startswith("export ")]
    r = subprocess.run(as_user(["bash", "-euc", "\n".join(export + [strict])]), cwd=src, env=env,
                       capture_output=True, text=True, timeout=tmo(120))
    check(r.returncode == 0, r.stderr)
    so = os.path.join(home, "myplugins", "strict.so")
    check(any(n.startswith("libjansson.so") for n in needed(so)),
          "with --as-needed the plugin does not record libjansson", needed(so))


def install_sdk(t):
    dest = t.path("root")
    r = subprocess.run(["make", "-s", "BUILD=" + private_build(t), "PREFIX=/usr",
                        "DESTDIR=" + dest, "install"], cwd=ROOT, capture_output=True, text=True)
    check(r.returncode == 0, r.stdout, r.stderr)
    return dest


@test
def installed_tree_is_complete(t):
    dest = install_sdk(t)
    for p in ("usr/sbin/avtworkerd", "usr/include/avt_plugin.h", "usr/lib/pkgconfig/avtworker-sdk.pc",
              "usr/lib/avtworkerd/echo.so", "etc/avtworkerd/worker.ini.example"):
        check(os.path.exists(os.path.join(dest, p)), "missing after install: " + p)
    pc = open(os.path.join(dest, "usr/lib/pkgconfig/avtworker-sdk.pc")).read()
    check("plugindir=/usr/lib/avtworkerd" in pc, pc)


main()
