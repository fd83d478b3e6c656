"""The system call filter of a systemd unit, applied without systemd: what
the daemon meets under systemd/avtworkerd.service, for tests that cannot
start it with systemd (no systemd as PID 1, no root).

    argv = unitfilter.argv_prefix(unit_path) + [DAEMON, ...]

runs the daemon under the seccomp filter that the unit's
SystemCallFilter= lines and SystemCallErrorNumber= describe, built as
systemd builds it: the first list decides allow-list or deny-list mode,
later lines add (or, with ~, take away) system calls, groups (@name) are
expanded with `systemd-analyze syscall-filter`, and a call outside the
filter fails with SystemCallErrorNumber= or, without it, kills the process
(SIGSYS). The filter is loaded through libseccomp (libseccomp.so.2, which
systemd itself depends on) by this file run as a script, which then execs
the command. The unit's CPUSchedulingPolicy= is applied too, before the
filter, as systemd applies it (no such line: SCHED_OTHER, as under PID 1). What it does not model: systemd's ENOSYS for system calls
newer than its own tables, and the other sandboxing settings.
"""
import ctypes
import errno
import os
import shutil
import subprocess
import sys

PYTHON = sys.executable or "/usr/bin/python3"
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(e):
    return 0x00050000 | (e & 0xFFFF)


class Unavailable(Exception):
    """The machine cannot apply the filter (no systemd-analyze, no
    libseccomp, seccomp disabled)."""


def groups():
    """{"@group": [member, ...]} as `systemd-analyze syscall-filter` lists them."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise Unavailable("systemd-analyze is not installed")
    out = subprocess.run([exe, "syscall-filter"], capture_output=True, text=True).stdout
    g, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = line.strip()
            g[cur] = []
        elif line.startswith("    ") and cur is not None and not line.strip().startswith("#"):
            g[cur].append(line.strip())
        elif not line.strip():
            cur = None
    if "@system-service" not in g:
        raise Unavailable("systemd-analyze syscall-filter lists no @system-service")
    return g


def expand(g, name, seen=None):
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = set()
    for m in g.get(name, []):
        out |= expand(g, m, seen)
    return out


def unit_filter(unit_text):
    """(allow_list, syscalls, error) from the unit's [Service] lines: in
    allow-list mode `syscalls` are allowed, else they are denied; error is
    the errno name of SystemCallErrorNumber= or None (kill)."""
    g = groups()
    mode, calls, error = None, set(), None
    for line in unit_text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "SystemCallErrorNumber":
            error = value.strip() or None
        if key != "SystemCallFilter":
            continue
        value = value.strip()
        deny = value.startswith("~")
        names = set()
        for n in value.lstrip("~").split():
            names |= expand(g, n)
        if mode is None:
            mode = "deny" if deny else "allow"
        if (mode == "allow") != deny:
            calls |= names
        else:
            calls -= names
    if mode is None:
        raise Unavailable("the unit has no SystemCallFilter=")
    return mode == "allow", calls, error


def load(allow_list, calls, error):
    """Load the filter into this process (and what it execs)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as e:
        raise Unavailable("libseccomp.so.2: %s" % e)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    refuse = SCMP_ACT_ERRNO(getattr(errno, error)) if error else SCMP_ACT_KILL_PROCESS
    ctx = lib.seccomp_init(refuse if allow_list else SCMP_ACT_ALLOW)
    if not ctx:
        raise Unavailable("seccomp_init failed")
    for name in sorted(calls):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a system call of this architecture
            continue
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW if allow_list else refuse, nr, 0)
        if rc != 0:
            raise Unavailable("seccomp_rule_add(%s): %d" % (name, rc))
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise Unavailable("seccomp_load: %s" % os.strerror(-rc))


def argv_prefix(unit_path):
    """The command that runs what follows it under the unit's filter."""
    with open(unit_path) as f:
        text = f.read()
    unit_filter(text)  # fail early, in the test, when unavailable
    policy = unit_policy(text)
    if policy != os.sched_getscheduler(0) and policy != os.SCHED_IDLE:
        try:  # leaving SCHED_IDLE needs RLIMIT_NICE: a runner under `chrt -i`
            subprocess.run([PYTHON, "-c", "import os; os.sched_setscheduler(0, %d, os.sched_param(0))"
                            % policy], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            raise Unavailable("this runner cannot give the daemon the unit's scheduling policy %d"
                              % policy)
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        raise Unavailable("libseccomp.so.2: %s" % e)
    return [PYTHON, os.path.abspath(__file__), unit_path, "--"]


POLICIES = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}


def unit_policy(unit_text):
    """The os.SCHED_* the unit starts its process with: its last
    CPUSchedulingPolicy= (an empty one resets it), else SCHED_OTHER, PID 1's
    policy, whatever the test runner's own policy is."""
    policy = os.SCHED_OTHER
    for line in unit_text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "CPUSchedulingPolicy":
            value = value.strip()
            if value and value not in POLICIES:
                raise Unavailable("CPUSchedulingPolicy=%s is not modelled (only %s)"
                                  % (value, ", ".join(POLICIES)))
            policy = POLICIES.get(value, os.SCHED_OTHER)
    return policy


def main():
    unit_path, sep, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--" and argv, "usage: unitfilter.py UNIT -- COMMAND [ARG...]"
    with open(unit_path) as f:
        text = f.read()
    os.sched_setscheduler(0, unit_policy(text), os.sched_param(0))
    load(*unit_filter(text))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
