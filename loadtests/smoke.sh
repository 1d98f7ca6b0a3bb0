#!/usr/bin/env bash
# Smoke check of the k6 scripts where k6 is not installed:
#   1. type-checks them against @types/k6 (and the stand-in against @types/node),
#      and runs the stand-in's self-test;
#   2. generates two tiny schedules (JSON and NDJSON) with `visbin gen`;
#   3. runs upload.js, progressive.js and mixed.js once each, with tiny
#      scenario sizes, through the Node stand-in for k6 (standin/run.mjs)
#      against a live server.
# It fails on a type error, a failed check, a script error or a scenario that
# ran no iteration. Thresholds are reported, not enforced (SMOKE_STRICT=1
# enforces them). This is a smoke check of the scripts, not a load test.
#
#   npm ci --prefix loadtests                   # once: typescript, @types/k6, @types/node
#   BASE_URL=http://127.0.0.1:8080 bash loadtests/smoke.sh
#   bash loadtests/smoke.sh                     # no BASE_URL: starts its own server
#
# Environment:
#   BASE_URL      server to test; unset: start `$VISBIN serve` on a free port
#                 with a fresh SQLite file and an API token, stop it at the end
#   TOKEN         bearer token for writes, passed on to the scripts
#   VISBIN        visbin binary for `gen` (and `serve`); default
#                 target/debug/visbin if it exists, else target/release/visbin
#   SMOKE_DIR     where data and summaries go (default: a temporary folder,
#                 removed at the end unless KEEP=1)
#   SMOKE_STRICT  1: a failed threshold fails the smoke too
#   SKIP_TYPECHECK 1: skip step 1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
t_start=$(date +%s)

if [[ -z "${VISBIN:-}" ]]; then
  if [[ -x "$root/target/debug/visbin" ]]; then VISBIN=$root/target/debug/visbin; else VISBIN=$root/target/release/visbin; fi
fi
[[ -x "$VISBIN" ]] || { echo "smoke.sh: no visbin binary at $VISBIN (build it, or set VISBIN)" >&2; exit 1; }
command -v node >/dev/null || { echo "smoke.sh: node (20 or later) is needed" >&2; exit 1; }

if [[ -n "${SMOKE_DIR:-}" ]]; then work=$SMOKE_DIR; mkdir -p "$work"; else work=$(mktemp -d); fi
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [[ -z "${SMOKE_DIR:-}" && "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# 1. Type check.
if [[ "${SKIP_TYPECHECK:-0}" != 1 ]]; then
  [[ -x "$here/node_modules/.bin/tsc" ]] || { echo "smoke.sh: run 'npm ci --prefix loadtests' first (or SKIP_TYPECHECK=1)" >&2; exit 1; }
  echo "== typecheck"
  (cd "$here" && node_modules/.bin/tsc -p tsconfig.json && node_modules/.bin/tsc -p standin/tsconfig.json)
fi

# The stand-in itself: k6 semantics, and that it fails when it should.
echo "== stand-in self-test"
node --test "$here/standin/selftest.mjs" > "$work/selftest.log" 2>&1 || { cat "$work/selftest.log"; echo "smoke.sh: the stand-in self-test failed" >&2; exit 1; }
grep -E '^# (pass|fail)' "$work/selftest.log"

# A server of our own when none is given: fresh SQLite file, writes need a token.
if [[ -z "${BASE_URL:-}" ]]; then
  port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
  TOKEN=${TOKEN:-smoke-$RANDOM$RANDOM}
  mkdir -p "$work/db"
  VISBIN_API_TOKEN=$TOKEN RUST_LOG=${RUST_LOG:-warn} "$VISBIN" serve --bind "127.0.0.1:$port" \
    --database-url "sqlite://$work/db/smoke.sqlite3" > "$work/server.log" 2>&1 &
  server_pid=$!
  BASE_URL=http://127.0.0.1:$port
  for _ in $(seq 1 100); do
    node -e "fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))" "$BASE_URL/readyz" && break
    kill -0 "$server_pid" 2>/dev/null || { echo "smoke.sh: the server exited:" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "== server $VISBIN on $BASE_URL (log: $work/server.log)"
fi
export BASE_URL TOKEN="${TOKEN:-}"

# 2. Tiny data: two sizes, both formats.
echo "== data"
SIZES="tiny=40x5x20 small=300x10x90" FORMATS="json ndjson" VISBIN=$VISBIN bash "$here/gen_data.sh" "$work/data" 2>/dev/null

# 3. Each script once through the stand-in, with tiny scenarios.
strict=()
[[ "${SMOKE_STRICT:-0}" == 1 ]] && strict=(--strict-thresholds)
common=(-e "DATA_DIR=$work/data" -e "SUMMARY_DIR=$work/summaries" -e POLL_INTERVAL=0.05)
failed=()
run() {
  local script=$1; shift
  echo "== $script"
  local t0; t0=$(date +%s)
  if node "$here/standin/run.mjs" "${strict[@]}" --max-duration 60 "${common[@]}" "$@" "$here/$script"; then
    echo "== $script: ok ($(( $(date +%s) - t0 )) s)"
  else
    echo "== $script: FAILED (exit $?)"
    failed+=("$script")
  fi
}
run upload.js -e VUS=2 -e ROUNDS=1
run progressive.js -e VUS=2 -e ITERATIONS=2 -e THINK=0 -e VIEW_SIZE=small
run mixed.js -e SCHEDULES=3 -e MIXED_SIZE=tiny -e RATE=8 -e START_RATE=2 -e APPEND_SHARE=0.3 -e CONFLICT_SHARE=0.3 \
  -e RAMP_UP=2s -e HOLD=2s -e RAMP_DOWN=1s -e PRE_VUS=2 -e MAX_VUS=4

if [[ -n "$server_pid" ]] && grep -qE 'panicked| ERROR |"level":"ERROR"' "$work/server.log"; then
  echo "== the server logged errors:"; grep -E 'panicked| ERROR |"level":"ERROR"' "$work/server.log" | head -20
  failed+=("server log")
fi
echo "== smoke: $(( $(date +%s) - t_start )) s"
if (( ${#failed[@]} )); then echo "smoke.sh: FAILED: ${failed[*]}" >&2; exit 1; fi
echo "smoke.sh: all scripts passed their checks"
