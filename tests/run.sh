#!/bin/bash
# run.sh - run every test and end with "N passed, N failed".
#
# Unit tests (build/tests/unit/test_*) and integration tests
# (tests/integration/test_*.py) all print TAP; each "ok"/"not ok" line is one
# test. A binary or script that crashes, times out or prints no plan counts
# as one failure. Environment: BUILD (build dir), SANITIZE, VALGRIND=1,
# TEST_JOBS (test files run at once, default 3),
# TIMEOUT_MULT (default 1, 3 under sanitizers, 10 under valgrind), ONLY (a
# substring: run only matching files).
#
# Output: one line per test file when it passes; when it fails, its failed
# tests with their diagnostics and the end of its output, and its whole
# output is kept in BUILD/test-logs/ (BUILD/test-logs-valgrind/ under
# VALGRIND=1), which the summary names. The directory is emptied at each run
# and holds only the logs of failed files.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
export BUILD PYTHON
case "$BUILD" in
/*) export AVT_BUILD=$BUILD ;;
*) export AVT_BUILD=$PWD/$BUILD ;;
esac
export AVT_NO_DLCLOSE=1
if [ -z "${TIMEOUT_MULT:-}" ]; then
    TIMEOUT_MULT=1
    [ -n "${SANITIZE:-}" ] && TIMEOUT_MULT=3
    [ "${VALGRIND:-}" = 1 ] && TIMEOUT_MULT=10
fi
export TIMEOUT_MULT
case "${SANITIZE:-}" in
*thread*) export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" ;;
*address*) export ASAN_OPTIONS="detect_leaks=1 abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1" ;;
esac

passed=0
failed=0
failures=()
logdir=$BUILD/test-logs
[ "${VALGRIND:-}" = 1 ] && logdir=$BUILD/test-logs-valgrind
rm -rf "$logdir"
mkdir -p "$logdir"

# Test files run TEST_JOBS at a time (default 3: most of their time is
# spent waiting on a daemon or an orchestrator, not computing); their output
# is reported in a fixed order once all have finished.
JOBS=${TEST_JOBS:-3}
names=()

start_one() { # name, timeout, command...
    local name=$1 limit=$2
    shift 2
    local log
    log="$logdir/$(basename "$name").log"
    names+=("$name")
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        wait -n
    done
    (
        t0=$(date +%s)
        timeout --kill-after=10 "$((limit * TIMEOUT_MULT))" "$@" >"$log" 2>&1
        echo $? >"$log.rc"
        echo $(($(date +%s) - t0)) >"$log.time"
    ) &
}

report_one() { # name
    local name=$1 base
    base=$(basename "$name")
    local log="$logdir/$base.log"
    local rc secs ok nok plan skip
    rc=$(cat "$log.rc" 2>/dev/null || echo 255)
    secs=$(cat "$log.time" 2>/dev/null || echo "?")
    rm -f "$log.rc" "$log.time"
    ok=$(grep -cE '^ok [0-9]+' "$log")
    nok=$(grep -cE '^not ok [0-9]+' "$log")
    skip=$(grep -cE '^ok [0-9]+.* # SKIP' "$log")
    plan=$(grep -cE '^1\.\.[0-9]+' "$log")
    passed=$((passed + ok))
    failed=$((failed + nok))
    local skipped=""
    [ "$skip" -gt 0 ] && skipped=", $skip skipped"
    if [ "$nok" -eq 0 ] && [ "$rc" -eq 0 ] && [ "$plan" -gt 0 ]; then
        echo "ok   $base: $ok passed$skipped (${secs}s)"
        rm -f "$log"
        return
    fi
    if [ "$nok" -eq 0 ]; then
        failed=$((failed + 1))
        echo "FAIL $base: exited with status $rc$([ "$plan" -eq 0 ] && echo ", no TAP plan")" \
            "after ${secs}s; $ok passed$skipped"
    else
        echo "FAIL $base: $nok failed, $ok passed$skipped (${secs}s)"
    fi
    failures+=("$name")
    # Each failed test with the diagnostics ("# ...") that follow it.
    awk '/^not ok [0-9]+/ { show = 1; print; next }
         /^(ok [0-9]+|1\.\.[0-9]+)/ { show = 0 }
         show && /^#/ { print }' "$log" | sed 's/^/    /'
    echo "---- the last 40 lines of its output (all of it: $log) ----"
    tail -n 40 "$log"
    echo "----"
}

for bin in "$BUILD"/tests/unit/test_*; do
    [ -x "$bin" ] || continue
    [ -n "${ONLY:-}" ] && [[ "$bin" != *"$ONLY"* ]] && continue
    start_one "$bin" 120 "$bin"
done
for script in tests/integration/test_*.py; do
    [ -e "$script" ] || continue
    [ -n "${ONLY:-}" ] && [[ "$script" != *"$ONLY"* ]] && continue
    start_one "$script" 900 "$PYTHON" "$script"
done
wait
for name in "${names[@]}"; do
    report_one "$name"
done

if [ ${#failures[@]} -gt 0 ]; then
    echo "failed test files, their whole output in $logdir/:"
    for name in "${failures[@]}"; do
        echo "    $name: $logdir/$(basename "$name").log"
    done
else
    rmdir "$logdir" 2>/dev/null
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
