#!/usr/bin/env bash
# Browser end-to-end test of the viewer page, against a server that is already running.
#
#   BASE_URL=http://127.0.0.1:8080 bash tests/browser/run.sh [SCHEDULE_FILE]
#
# Starts nothing but the browser. Without SCHEDULE_FILE it generates a schedule
# with `$VISBIN gen` (VISBIN defaults to target/release/visbin or
# target/debug/visbin of this repository), under a fresh name so that the
# upload is new on a server that already holds data.
#
# Needs: node >= 20, `npm ci --prefix tests/browser` (playwright-core only; it
# downloads no browser) and Debian's chromium (`apt-get install -y chromium`;
# override the binary with CHROMIUM=…). API_TOKEN is typed into the page when
# the server needs one. Screenshots and report.json go to tests/browser/artifacts/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

: "${BASE_URL:?set BASE_URL to the running server, e.g. http://127.0.0.1:8080}"

if [[ ! -d "$here/node_modules/playwright-core" ]]; then
  echo "run.sh: playwright-core is missing; run: npm ci --prefix tests/browser" >&2
  exit 2
fi

schedule="${1:-${SCHEDULE_FILE:-}}"
if [[ -z "$schedule" ]]; then
  visbin="${VISBIN:-}"
  if [[ -z "$visbin" ]]; then
    for c in "$repo/target/release/visbin" "$repo/target/debug/visbin"; do
      if [[ -x "$c" ]]; then visbin="$c"; break; fi
    done
  fi
  if [[ -z "$visbin" || ! -x "$visbin" ]]; then
    echo "run.sh: no visbin binary (build it, or set VISBIN=… or pass a schedule file)" >&2
    exit 2
  fi
  mkdir -p "$here/.data"
  schedule="$here/.data/browser-e2e.ndjson"
  "$visbin" gen --blocks 1500 --periods 50 --days 365 --seed 7 --format ndjson \
    --name "browser-e2e-$(date -u +%Y%m%dT%H%M%SZ)-$$" --output "$schedule"
fi

export BASE_URL SCHEDULE_FILE="$schedule"
exec node "$here/e2e.mjs"
