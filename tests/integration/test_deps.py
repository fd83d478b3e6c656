"""tools/deps.sh on a machine whose package manager is busy, as a fresh VM's
unattended-upgrades keeps it: with apt's and dpkg's locks held, deps.sh
waits (saying so) instead of failing at once, and goes on as soon as they
are free. Root only (it runs the real apt-get); the package asked for does
not exist, so nothing is installed: apt-get getting as far as "Unable to
locate package" proves that it went past the locks."""
import os
import shutil
import subprocess
import sys

from avt import *  # noqa: F401,F403
from avt import ROOT, Skip, check, main, test, tmo

LOCKS = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock"]
# Holds the locks the way apt and dpkg take them (fcntl), for argv[1] seconds.
HOLDER = """
import fcntl, os, sys, time
fds = []
for p in sys.argv[2:]:
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"""


@test
def deps_waits_for_a_busy_package_manager(t):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Skip("needs root and apt-get (it runs the real apt-get)")
    if os.environ.get("SANITIZE") or os.environ.get("VALGRIND") == "1":
        raise Skip("a shell script: the plain run covers it")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "6"] + LOCKS, stdout=subprocess.PIPE,
                              text=True)
    t.on_cleanup(holder.kill)
    check(holder.stdout.readline().strip() == "held", "could not take the locks")
    env = dict(os.environ, DEPS_EXTRA="avt-no-such-package", DEPS_LOCK_WAIT="300")
    r = subprocess.run([os.path.join(ROOT, "tools", "deps.sh")], env=env, capture_output=True,
                       text=True, timeout=tmo(600))
    holder.wait(timeout=tmo(30))
    check("the package manager is busy" in r.stderr and "waiting up to 300 s" in r.stderr, r.stderr)
    check("Unable to locate package avt-no-such-package" in r.stderr,
          "apt-get did not get past the locks", r.stderr)
    check(r.returncode != 0, "a package that does not exist cannot be installed", r.stderr)


main()
