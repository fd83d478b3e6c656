"""tests/run.sh, the runner behind `make test`, on test files of our making
(TAP printed by small shell scripts in a build directory of the test's
own): a green file is one line; a red one shows each failed test with its
diagnostics and the end of its output, its whole output stays in
BUILD/test-logs/, which the summary names; a file that dies without a plan
counts as one failure; the last line is "N passed, N failed", which .ci/run
reads."""
import os
import re
import subprocess

from avt import *  # noqa: F401,F403
from avt import ROOT, check, main, test, tmo

PASS = "#!/bin/sh\necho 1..3\necho 'ok 1 - a'\necho 'ok 2 - b'\necho 'ok 3 - c # SKIP no gpu'\n"
NOISE = 300  # lines of output before the failure: more than the runner shows
FAIL = ("#!/bin/sh\necho 1..2\necho 'ok 1 - a'\ni=0\nwhile [ $i -lt %d ]; do echo \"noise $i\"; "
        "i=$((i + 1)); done\necho 'not ok 2 - the_broken_one'\necho '#   expected 1, got 2'\n"
        "echo 'after the failure'\nexit 1\n" % NOISE)
CRASH = "#!/bin/sh\necho 'about to die'\nkill -SEGV $$\n"


def run_suite(t, files):
    build = t.path("build")
    unit = os.path.join(build, "tests", "unit")
    os.makedirs(unit)
    for name, text in files.items():
        t.write(os.path.join(unit, name), text, mode=0o755)
    env = dict(os.environ, BUILD=build, ONLY="test_zz_", TEST_JOBS="2")
    env.pop("VALGRIND", None)
    r = subprocess.run([os.path.join(ROOT, "tests", "run.sh")], env=env, capture_output=True,
                       text=True, timeout=tmo(120))
    return build, r


@test
def green_run_is_one_line_per_file(t):
    build, r = run_suite(t, {"test_zz_pass": PASS, "test_zz_pass2": PASS})
    check(r.returncode == 0, r.stdout, r.stderr)
    lines = r.stdout.strip().splitlines()
    check(len(lines) == 3, "expected a line per file and the summary", r.stdout)
    check(re.match(r"^ok   test_zz_pass: 3 passed, 1 skipped \(\d+s\)$", lines[0]), r.stdout)
    check(lines[-1] == "6 passed, 0 failed", r.stdout)
    check(not os.path.exists(os.path.join(build, "test-logs")), "logs kept for a green run")


@test
def red_run_keeps_the_whole_log_and_names_it(t):
    build, r = run_suite(t, {"test_zz_pass": PASS, "test_zz_fail": FAIL, "test_zz_crash": CRASH})
    check(r.returncode != 0, r.stdout)
    out = r.stdout
    check(out.strip().splitlines()[-1] == "4 passed, 2 failed", out)
    check(re.search(r"^FAIL test_zz_fail: 1 failed, 1 passed \(\d+s\)$", out, re.M), out)
    check(re.search(r"^    not ok 2 - the_broken_one\n    #   expected 1, got 2$", out, re.M), out)
    check(re.search(r"^FAIL test_zz_crash: exited with status \d+, no TAP plan", out, re.M), out)
    check("about to die" in out, "the crashed file's output is not shown", out)
    logs = os.path.join(build, "test-logs")
    log = os.path.join(logs, "test_zz_fail.log")
    check(log in out and os.path.join(logs, "test_zz_crash.log") in out,
          "the summary does not name the logs", out)
    whole = open(log).read()
    check("noise 0\n" in whole and "noise %d\n" % (NOISE - 1) in whole and "after the failure" in whole,
          "the kept log is not the whole output")
    check("noise 0\n" not in out, "the whole noise was printed: the red path is not short either")
    check(sorted(os.listdir(logs)) == ["test_zz_crash.log", "test_zz_fail.log"], os.listdir(logs))


main()
