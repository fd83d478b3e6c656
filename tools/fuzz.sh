#!/bin/bash
# fuzz.sh - run every libFuzzer target built by `make fuzz` for a while.
#
#   tools/fuzz.sh BUILD_DIR SECONDS [TARGET...]
#
# Each target starts from its seed corpus fuzz/corpus/<target>/ (read only:
# new inputs go to BUILD_DIR/corpus/<target>/, which persists between runs)
# and uses the dictionary fuzz/<target>.dict when there is one.
# A crash, leak, timeout or sanitizer report fails the target; its input is
# left as BUILD_DIR/artifacts/<target>/crash-* (add it to the seed corpus as
# a regression seed once fixed). Ends with "N passed, N failed", one per
# target, like tests/run.sh.
set -u
cd "$(dirname "$0")/.."
build=${1:?build dir}
secs=${2:?seconds}
shift 2
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for src in fuzz/fuzz_*.c; do
        targets+=("$(basename "$src" .c)")
    done
fi

passed=0
failed=0
for t in "${targets[@]}"; do
    bin=$build/fuzz/$t
    work=$build/corpus/$t
    art=$build/artifacts/$t
    mkdir -p "$work" "$art" "fuzz/corpus/$t"
    log=$build/fuzz-$t.log
    dict=()
    [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
    echo "== $t: ${secs}s"
    # The seed corpus is listed second, so libFuzzer writes only to $work.
    ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="$art/" "$work" "fuzz/corpus/$t" </dev/null >"$log" 2>&1
    rc=$?
    grep -E '^stat::(number_of_executed_units|new_units_added)|^#[0-9]+.*DONE' "$log" | tail -n 3
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok - $t"
    else
        failed=$((failed + 1))
        echo "not ok - $t (status $rc; reproducer in $art/)"
        grep -E 'ERROR|SUMMARY|runtime error|Assertion|#[0-9]+ 0x' "$log" | head -n 30
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
