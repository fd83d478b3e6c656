"""The plugin SDK as a plugin author meets it: the README's example plugin,
built out of tree with `pkg-config avtworker-sdk` against an installed copy
of the SDK (make install DESTDIR=...), loaded and run with run-once."""
import json
import os
import re
import subprocess

from avt import *  # noqa: F401,F403
from avt import ROOT, BUILD, check, private_build, run_daemon, test, main


def readme_plugin():
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"```c\n(/\* greet\.c .*?)```", text, re.S)
    check(m is not None, "README has no greet.c example")
    return m.group(1)


def install_sdk(t):
    dest = t.path("root")
    r = subprocess.run(["make", "-s", "BUILD=" + private_build(t), "PREFIX=/usr",
                        "DESTDIR=" + dest, "install"], cwd=ROOT, capture_output=True, text=True)
    check(r.returncode == 0, r.stdout, r.stderr)
    return dest


@test
def readme_plugin_builds_out_of_tree_and_runs(t):
    dest = install_sdk(t)
    src = t.write("greet.c", readme_plugin())
    env = dict(os.environ, PKG_CONFIG_PATH=dest + "/usr/lib/pkgconfig",
               PKG_CONFIG_SYSROOT_DIR=dest)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "avtworker-sdk"], env=env,
                           capture_output=True, text=True)
    check(flags.returncode == 0, flags.stderr)
    check(dest in flags.stdout, "pkg-config does not point into the installed tree", flags.stdout)
    plugdir = t.path("myplugins")
    os.makedirs(plugdir, mode=0o755)
    so = os.path.join(plugdir, "greet.so")
    # Exactly the README's command line.
    cc = subprocess.run("cc -shared -fPIC %s %s -o %s" % (flags.stdout.strip(), src, so),
                        shell=True, capture_output=True, text=True)
    check(cc.returncode == 0, cc.stderr)
    # And the strict form: libraries after the source, -z defs proving the
    # plugin needs no daemon symbol (only libjansson).
    strict = t.path("strict.so")
    cc = subprocess.run("cc -shared -fPIC %s -o %s -Wl,-z,defs %s" % (src, strict, flags.stdout.strip()),
                        shell=True, capture_output=True, text=True, env=env)
    check(cc.returncode == 0, cc.stderr)
    os.chmod(so, 0o755)
    r = run_daemon(["-P", plugdir, "run-once", "greet", '{"name": "Ada"}'])
    check(r.returncode == 0, r.stdout, r.stderr)
    res = json.loads(r.stdout)
    check(res["status"] == "success" and res["data"] == {"greeting": "Ada"}, res)
    check(set(res) == {"job_id", "task_id", "worker_id", "status", "data", "error",
                       "data_metadata"}, res)
    r = run_daemon(["-P", plugdir, "run-once", "greet", '{}'])
    check(r.returncode == 1, r.stdout, r.stderr)
    res = json.loads(r.stdout)
    check(res["error"]["code"] == "INVALID_INPUT_ERROR", res)


@test
def installed_tree_is_complete(t):
    dest = install_sdk(t)
    for p in ("usr/sbin/avtworkerd", "usr/include/avt_plugin.h", "usr/lib/pkgconfig/avtworker-sdk.pc",
              "usr/lib/avtworkerd/echo.so", "etc/avtworkerd/worker.ini.example"):
        check(os.path.exists(os.path.join(dest, p)), "missing after install: " + p)
    pc = open(os.path.join(dest, "usr/lib/pkgconfig/avtworker-sdk.pc")).read()
    check("plugindir=/usr/lib/avtworkerd" in pc, pc)


main()
