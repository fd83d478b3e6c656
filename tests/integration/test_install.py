"""`make install` / `make uninstall` into a DESTDIR: every file where it
belongs, the unit's ExecStart rewritten, a live worker.ini never touched,
the man pages render without warnings, and the installed unit passes
`systemd-analyze verify` and rates "OK" or better in `systemd-analyze
security` (exposure 1.4 or less, the figure the README states), also with
the GPU drop-in; the unit keeps plugins alive (EPERM, not SIGSYS) and
writes no core dumps."""
import json
import os
import re
import shutil
import stat
import subprocess

from avt import *  # noqa: F401,F403
from avt import BUILD, ROOT, Skip, check, main, private_build, test

PAGES = {"usr/share/man/man8/avtworkerd.8": "AVTWORKERD",
         "usr/share/man/man5/worker.ini.5": "WORKER.INI",
         "usr/share/man/man3/avt_plugin.3": "AVT_PLUGIN",
         "usr/share/man/man7/avtworkerd-http_fetch.7": "AVTWORKERD-HTTP_FETCH",
         "usr/share/man/man7/avtworkerd-warm.7": "AVTWORKERD-WARM"}
UNIT = "usr/lib/systemd/system/avtworkerd.service"
GPU_DROPIN = "usr/share/avtworkerd/gpu.conf"
EXPOSURE_MAX = 1.4  # the default unit's systemd-analyze security figure must not grow
FILES = {  # path: mode
    "usr/sbin/avtworkerd": 0o755,
    "usr/lib/avtworkerd/echo.so": 0o755,
    "usr/lib/avtworkerd/http_fetch.so": 0o755,
    "usr/include/avt_plugin.h": 0o644,
    "usr/lib/pkgconfig/avtworker-sdk.pc": 0o644,
    UNIT: 0o644,
    GPU_DROPIN: 0o644,
    "usr/lib/avtworkerd/exec.so": 0o755,
    "usr/share/avtworkerd/exec.conf": 0o644,
    "usr/share/avtworkerd/exec.d/transcode.json": 0o644,
    "usr/share/avtworkerd/exec.d/inference.json": 0o644,
    "usr/share/avtworkerd/examples/warm_child.py": 0o644,  # run as python3 PATH (lintian: no python3 dependency)
    "etc/avtworkerd/worker.ini.example": 0o644,
    "etc/avtworkerd/worker.ini": 0o644,  # the unit's DynamicUser reads it
}
FILES.update({p: 0o644 for p in PAGES})


def make(t, dest, target="install"):
    r = subprocess.run(["make", "-s", "BUILD=" + private_build(t), "PREFIX=/usr",
                        "DESTDIR=" + dest, target], cwd=ROOT, capture_output=True, text=True)
    check(r.returncode == 0, r.stdout, r.stderr)
    return r


def files_under(dest):
    out = []
    for d, _, fs in os.walk(dest):
        out += [os.path.relpath(os.path.join(d, f), dest) for f in fs]
    return sorted(out)


@test
def install_puts_every_file_in_place(t):
    dest = t.path("root")
    make(t, dest)
    for p, mode in FILES.items():
        full = os.path.join(dest, p)
        check(os.path.isfile(full), "missing after install: " + p)
        check(stat.S_IMODE(os.stat(full).st_mode) == mode,
              "%s has mode %o, expected %o" % (p, stat.S_IMODE(os.stat(full).st_mode), mode))
    unit = open(os.path.join(dest, UNIT)).read()
    check(re.search(r"^ExecStart=/usr/sbin/avtworkerd -c /etc/avtworkerd/worker\.ini$", unit, re.M), unit)
    check("/usr/local" not in unit, "unit still names /usr/local")
    check("/usr/share/avtworkerd/" in unit, "unit does not say where gpu.conf is", unit)
    shipped = open(os.path.join(ROOT, "conf/worker.ini")).read()
    check(open(os.path.join(dest, "etc/avtworkerd/worker.ini")).read() == shipped)
    # The warm example runs the installed reference child.
    warm = json.load(open(os.path.join(dest, "usr/share/avtworkerd/exec.d/inference.json")))
    check(warm["argv"][1] == "/usr/share/avtworkerd/examples/warm_child.py", warm["argv"])
    r = subprocess.run([os.path.join(dest, "usr/sbin/avtworkerd"), "--version"], capture_output=True,
                       text=True)
    check(r.returncode == 0 and "avtworkerd" in r.stdout, r.stdout, r.stderr)
    # The installed example configuration passes --check-config.
    r = run_daemon(["--check-config", "-c", os.path.join(dest, "etc/avtworkerd/worker.ini"),
                    "-P", os.path.join(dest, "usr/lib/avtworkerd")])
    check(r.returncode == 0, r.stdout, r.stderr)


@test
def a_live_config_is_never_overwritten_or_removed(t):
    dest = t.path("root")
    live = os.path.join(dest, "etc/avtworkerd/worker.ini")
    os.makedirs(os.path.dirname(live))
    with open(live, "w") as f:
        f.write("[worker]\nmax_concurrent_tasks = 3\n")
    make(t, dest)
    check(open(live).read() == "[worker]\nmax_concurrent_tasks = 3\n", "live config overwritten")
    check(os.path.exists(live + ".example"))
    make(t, dest, "uninstall")
    check(files_under(dest) == ["etc/avtworkerd/worker.ini"], files_under(dest))


@test
def uninstall_removes_what_install_added(t):
    dest = t.path("root")
    make(t, dest)
    make(t, dest, "uninstall")
    check(files_under(dest) == [], "left behind: %s" % files_under(dest))


@test
def man_pages_render_without_warnings(t):
    dest = t.path("root")
    make(t, dest)
    sections = ("NAME", "SYNOPSIS", "DESCRIPTION", "SIGNALS", "EXIT STATUS", "FILES", "ENVIRONMENT",
                "EXAMPLES", "SEE ALSO")
    for page, title in PAGES.items():
        path = os.path.join(dest, page)
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
        r = subprocess.run(["man", "--warnings", "-l", path], capture_output=True, text=True, env=env)
        check(r.returncode == 0 and r.stderr == "", page, r.stderr)
        check(r.stdout.startswith(title), page, r.stdout[:200])
        heads = set(re.findall(r"^([A-Z][A-Z ]+)$", r.stdout, re.M))
        missing = [s for s in sections if s not in heads]
        check(not missing, "%s lacks %s" % (page, missing))
        check("OPTIONS" in heads or "FUNCTIONS" in heads, page, heads)
        g = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path], capture_output=True, text=True)
        check(g.returncode == 0 and g.stderr == "", page, g.stderr)


def systemd_analyze(*args, env=None):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise Skip("systemd-analyze is not installed (Debian package systemd)")
    return subprocess.run([exe] + list(args), capture_output=True, text=True, env=env, timeout=120)


def installed_unit(t, gpu=False):
    """The installed unit, with ExecStart pointing at the DESTDIR copy of
    the binary (verify checks that the executable exists); with gpu, the
    installed gpu.conf as its drop-in, where systemd would read it
    (avtworkerd.service.d/ next to the unit)."""
    dest = t.path("root")
    make(t, dest)
    unit = open(os.path.join(dest, UNIT)).read()
    unit = unit.replace("ExecStart=/usr/sbin/", "ExecStart=%s/usr/sbin/" % dest)
    d = t.path("units")
    os.makedirs(d)
    with open(os.path.join(d, "avtworkerd.service"), "w") as f:
        f.write(unit)
    if gpu:
        os.makedirs(os.path.join(d, "avtworkerd.service.d"))
        shutil.copy(os.path.join(dest, GPU_DROPIN), os.path.join(d, "avtworkerd.service.d"))
    return dest, os.path.join(d, "avtworkerd.service")


def verify(dest, unit):
    # Documentation=man:... is checked too: the installed pages must resolve.
    env = dict(os.environ, MANPATH=os.path.join(dest, "usr/share/man") + ":")
    r = systemd_analyze("verify", unit, env=env)
    if r.returncode != 0 and re.search(r"Failed to (connect|initialize|set up)|System has not been booted",
                                       r.stderr):
        raise Skip("systemd-analyze cannot run in this environment: " + r.stderr.strip()[:200])
    check(r.returncode == 0 and r.stderr.strip() == "", r.stdout, r.stderr)


def security(unit):
    """systemd-analyze security's figure, its label and the full output."""
    r = systemd_analyze("security", "--offline=true", "--no-pager", unit)
    m = re.search(r"Overall exposure level for avtworkerd\.service: (\d+\.\d+) (\w+)", r.stdout)
    if m is None and r.returncode != 0:
        raise Skip("systemd-analyze security cannot run in this environment: " + r.stderr.strip()[:200])
    check(m, r.stdout[-1500:], r.stderr)
    return m.group(1), m.group(2), r.stdout


@test
def systemd_unit_verifies(t):
    verify(*installed_unit(t))


@test
def systemd_security_rates_ok_as_the_readme_says(t):
    _, unit = installed_unit(t)
    figure, label, _ = security(unit)
    check(label in ("SAFE", "OK"), "exposure %s %s is worse than OK" % (figure, label))
    check(float(figure) <= EXPOSURE_MAX, "exposure %s grew above %s" % (figure, EXPOSURE_MAX))
    readme = open(os.path.join(ROOT, "README.md")).read()
    check("exposure level %s %s" % (figure, label) in readme,
          "README must state the measured figure: \"exposure level %s %s\"" % (figure, label))


def unit_settings(path):
    """The unit's [Service] settings (drop-ins not included): {key: [values]}."""
    settings = {}
    for line in open(path).read().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, _, v = line.partition("=")
            settings.setdefault(k.strip(), []).append(v.strip())
    return settings


@test
def unit_keeps_plugins_alive_and_writes_no_core_dumps(t):
    """A plugin's call outside the filter fails with EPERM instead of killing
    the daemon with SIGSYS (test_service.py runs that for real); no core
    dump can hold the token; the resource ceilings are documented, not set."""
    _, unit = installed_unit(t)
    s = unit_settings(unit)
    check(s.get("SystemCallFilter") == ["@system-service", "~@privileged @resources"], s)
    check(s.get("SystemCallErrorNumber") == ["EPERM"], s.get("SystemCallErrorNumber"))
    check(s.get("LimitCORE") == ["0"], s.get("LimitCORE"))
    check(s.get("PrivateDevices") == ["yes"], s.get("PrivateDevices"))
    text = open(unit).read()
    for key in ("MemoryMax", "TasksMax"):
        check(key not in s, "%s is set by default" % key)
        check(re.search(r"^#%s=\S+$" % key, text, re.M), "no %s guidance in the unit" % key)
    check("gpu.conf" in text, "the unit does not point GPU workers at gpu.conf")


@test
def gpu_dropin_verifies_and_opens_only_gpu_devices(t):
    dest, unit = installed_unit(t, gpu=True)
    verify(dest, unit)
    s = unit_settings(os.path.join(os.path.dirname(unit), "avtworkerd.service.d", "gpu.conf"))
    check(s.get("PrivateDevices") == ["no"] and s.get("DevicePolicy") == ["closed"], s)
    allowed = s.get("DeviceAllow", [])
    for dev in ("char-nvidia* rw", "char-drm rw", "char-kfd rw"):
        check(dev in allowed, "gpu.conf does not allow " + dev, allowed)
    check(s.get("SupplementaryGroups") == ["render video"], s)
    # systemd applies the drop-in: the device rules show in the rating,
    # which stays "OK" or better; the README states that figure too.
    figure, label, out = security(unit)
    check(re.search(r"DeviceAllow=.*char-nvidia\*:rw", out), out[-3000:])
    check(label in ("SAFE", "OK"), "exposure with gpu.conf %s %s is worse than OK" % (figure, label))
    readme = open(os.path.join(ROOT, "README.md")).read()
    check("with gpu.conf: exposure level %s %s" % (figure, label) in readme,
          "README must state: \"with gpu.conf: exposure level %s %s\"" % (figure, label))


main()
