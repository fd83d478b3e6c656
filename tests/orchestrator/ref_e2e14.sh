#!/usr/bin/env bash
# ref_e2e14.sh: fidelity check of fakeorch's 1.0b14 dialect with the harness's
# reference worker. Runs the scenarios of orchestrator-head/e2e.sh (same
# client.py invocations, same expectations) with `fakeorch.py --protocol
# 1.0b14` in place of the real avtomatika 1.0b27 and ref_worker.py as the
# worker. Needs the harness directory (not in this repository; CI skips it):
#
#   tests/orchestrator/ref_e2e14.sh                       # all scenarios
#   HARNESS=/path/to/orchestrator-head SCENARIOS="echo cancel" tests/orchestrator/ref_e2e14.sh
#   WORKER_ARGS=--no-ws-cap-in-heartbeat tests/orchestrator/ref_e2e14.sh   # cancel must FAIL, as on the real one
#   INDIVIDUAL_TOKEN=1 tests/orchestrator/ref_e2e14.sh    # workers.toml token = signing key
#
# Exit status 0 only if every scenario passed and the worker stopped cleanly.
# Every process is started here and stopped by its PID (lib.sh's stop_pid).
# shellcheck disable=SC2317  # functions called indirectly (trap, "sc_$s")
set -uo pipefail
HARNESS=${HARNESS:-/work/shared/orchestrator-head}
[[ -f "$HARNESS/lib.sh" && -f "$HARNESS/ref_worker.py" ]] || { echo "no harness in $HARNESS"; exit 2; }
# shellcheck source=/dev/null
source "$HARNESS/lib.sh"
FAKE=$(cd "$(dirname "$0")" && pwd)/fakeorch.py
AVT_PORT=$(free_port)
URL="http://127.0.0.1:$AVT_PORT"
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fake14-e2e.XXXXXX")
export WORKER_ID=e2e-worker-$$ ORCHESTRATOR_URL=$URL
N_ECHO=${N_ECHO:-200} N_IMAGE=${N_IMAGE:-100} CANCEL_TIMEOUT=6 MAX_RETRIES=3
SCENARIOS=${SCENARIOS:-echo image transient transient_exhausted permanent invalid progress cancel}
FAKE_ARGS=(--protocol 1.0b14 --port "$AVT_PORT" --worker-token worker-token --watcher-interval 1
           --poll-timeout 30 --log-level INFO)
if [[ -n "${INDIVIDUAL_TOKEN:-}" ]]; then
  export WORKER_TOKEN="ind-$$-$RANDOM"
  FAKE_ARGS+=(--workers-toml "$(printf '[%s]\ntoken = "%s"\n' "$WORKER_ID" "$WORKER_TOKEN")")
else
  export WORKER_TOKEN=worker-token
fi
ORCH_PID="" WORKER_PID=""
cleanup() { stop_pid "$WORKER_PID" worker 20; stop_pid "$ORCH_PID" fakeorch 20; log "logs: $RUN_DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$PY" "$FAKE" "${FAKE_ARGS[@]}" > "$RUN_DIR/orchestrator.log" 2>&1 &
ORCH_PID=$!
wait_http "$URL/_public/status" "$ORCH_PID" 30 || { tail "$RUN_DIR/orchestrator.log"; exit 2; }
# shellcheck disable=SC2086
"$PY" "$HARNESS/ref_worker.py" ${WORKER_ARGS:-} > "$RUN_DIR/worker.log" 2>&1 &
WORKER_PID=$!
wait_worker "$URL" client-token "$WORKER_ID" "$WORKER_PID" 30 || { tail -20 "$RUN_DIR/worker.log"; exit 2; }
for _ in $(seq 1 50); do
  grep -q "WebSocket connection registered for worker $WORKER_ID" "$RUN_DIR/orchestrator.log" && break
  sleep 0.1
done

client() { "$PY" "$HARNESS/client.py" --url "$URL" --token client-token --timeout 120 "$@"; }
sc_echo() { client -n "$N_ECHO" --endpoint /jobs/echo --data '{"msg":"e2e"}' --expect finished \
              --require state_history.msg=e2e; }
sc_image() { client -n "$N_IMAGE" --endpoint /jobs/process-image --data '{"image_url":"s3://bucket/cat.png"}' \
               --expect finished --require state_history.resized_url --require state_history.final_url; }
sc_transient() { client -n 20 --endpoint /jobs/transient-fail --data '{"times":2}' --expect finished \
                   --require retry_count=2; }
sc_transient_exhausted() { client -n 5 --endpoint /jobs/transient-fail --data '{"times":99}' --expect quarantined \
                             --require "retry_count=$MAX_RETRIES" \
                             --require "error_message~after $((MAX_RETRIES + 1)) attempts"; }
sc_permanent() { client -n 5 --endpoint /jobs/permanent-fail --expect quarantined \
                   --require "error_message~permanent error (PERMANENT_ERROR)"; }
sc_invalid() { client -n 5 --endpoint /jobs/invalid-input --expect failed --require "error_message~invalid input"; }
sc_progress() { client -n 3 --endpoint /jobs/progress --data '{"steps":4,"step_seconds":0.25}' --expect finished \
                  --require progress --require progress_message; }
sc_cancel() { client -n 3 --endpoint /jobs/slow --data "{\"seconds\":60,\"timeout_seconds\":$CANCEL_TIMEOUT}" \
                --cancel-after 1 --expect cancelled --settle $((CANCEL_TIMEOUT + 3)); }

rc=0
RESULTS=()
for s in $SCENARIOS; do
  log "== $s"
  t0=$SECONDS
  "sc_$s" 2>&1 | tee -a "$RUN_DIR/client.log"
  r=${PIPESTATUS[0]}
  if [[ $r -eq 0 ]]; then RESULTS+=("$s PASS $((SECONDS - t0))s"); else RESULTS+=("$s FAIL(rc=$r)"); rc=1; fi
done
if kill -0 "$WORKER_PID" 2>/dev/null; then alive=yes; else alive=no; rc=1; fi
stop_pid "$WORKER_PID" worker 20
WORKER_PID=""
stopped="exit status $STOP_STATUS after ${STOP_SECS}s"
((STOP_KILLED)) && { stopped="needed SIGKILL"; rc=1; }
echo
echo "== summary (fakeorch --protocol 1.0b14, worker: ref_worker.py ${WORKER_ARGS:-})"
printf '  %s\n' "${RESULTS[@]}"
echo "  worker alive at the end: $alive; on SIGTERM: $stopped"
echo "  fakeorch log lines with ERROR: $(grep -c ' ERROR ' "$RUN_DIR/orchestrator.log")"
tail -1 "$RUN_DIR/worker.log"
[[ $rc -eq 0 ]] && echo "ALL PASSED" || echo "FAILED"
exit $rc
