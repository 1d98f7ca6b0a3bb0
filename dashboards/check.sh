#!/usr/bin/env bash
# Checks the operations artifacts in dashboards/. Run from anywhere, e.g. from
# the repo root:  bash dashboards/check.sh
#
#  1. promtool check config   dashboards/prometheus.yml (and the rule files it loads)
#  2. promtool check rules    the recording and alerting rules
#  3. promtool test rules     their unit tests
#  4. the committed JSON schema is the one generated from the pinned @grafana/schema
#  5. ajv: dashboards/visbin.json against that schema, plus project rules
#     (datasource uid, no template variable but $__rate_interval, ...)
#  6. promtool parses every PromQL expr of the dashboard
#  7. self-test: a broken copy of the dashboard (a panel with "gridPos": "x")
#     must be rejected, so that step 5 is known to be able to fail
#
# Needs promtool (Debian package `prometheus`; installed here when missing and
# running as root) and Node.js with npm (for dashboards/schema-check, whose
# node_modules is installed with `npm ci` when missing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."   # the repo root: every path below is relative to it

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "check.sh: promtool not found; installing the Debian package prometheus" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
  else
    echo "check.sh: promtool not found. Install it as root (apt-get install --no-install-recommends prometheus) or run this script as root." >&2
    exit 1
  fi
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check.sh: $tool not found: Node.js and npm are needed to validate the dashboard JSON" >&2
    exit 1
  fi
done

sc=dashboards/schema-check
if [ ! -d "$sc/node_modules" ] || [ "$sc/package-lock.json" -nt "$sc/node_modules/.package-lock.json" ]; then
  (cd "$sc" && npm ci --no-audit --no-fund)
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
step() {
  local name="$1"
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name" >&2
  fi
}

broken_dashboard_is_rejected() {
  node -e '
    const fs = require("fs");
    const d = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    const p = d.panels.find((p) => p.type !== "row");
    p.gridPos = "x";
    fs.writeFileSync(process.argv[2], JSON.stringify(d, null, 2));
  ' dashboards/visbin.json "$tmp/broken.json"
  if node "$sc/validate.js" "$tmp/broken.json" 2>&1; then
    echo "a dashboard with \"gridPos\": \"x\" was accepted: the validation cannot fail" >&2
    return 1
  fi
  echo "(rejected as expected)"
}

step "promtool check config" promtool check config dashboards/prometheus.yml
step "promtool check rules" promtool check rules dashboards/rules/visbin-recording.yml dashboards/rules/visbin-alerts.yml
step "promtool test rules" promtool test rules dashboards/rules/visbin-rules.test.yml
step "dashboard schema up to date" node "$sc/gen-schema.js" --check
step "ajv: dashboard schema and project rules" node "$sc/validate.js" --emit-rules "$tmp/dashboard-exprs.yml" dashboards/visbin.json
step "promtool parses the dashboard exprs" promtool check rules "$tmp/dashboard-exprs.yml"
step "self-test: a broken dashboard is rejected" broken_dashboard_is_rejected

echo "check.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
