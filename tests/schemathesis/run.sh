#!/usr/bin/env bash
# Schemathesis against a running visbin server: every check of the OpenAPI
# document the server serves, with a bounded number of examples per operation.
#
#   BASE_URL=http://127.0.0.1:8080 TOKEN=secret bash tests/schemathesis/run.sh [extra schemathesis args]
#
# Starts nothing: the server must be running with VISBIN_API_TOKEN set (TOKEN
# is one of its tokens; VISBIN_API_TOKEN is used when TOKEN is unset). It
# installs the pinned Schemathesis into tests/schemathesis/.venv when that is
# missing or out of date. It talks to BASE_URL only. It deletes or appends to
# no schedule it did not upload itself, and deletes the ones it uploaded when
# it ends (see hooks.py). Exits non-zero on any failure or error.
#
# Knobs: MAX_EXAMPLES (per operation and phase, default 100), SEED (default 1;
# `random` for a new one each run), WORKERS (default 1), SCHEMA (default
# $BASE_URL/openapi.json; a file path tests a document the server does not
# serve yet). The JUnit report goes to tests/schemathesis/report/junit.xml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

: "${BASE_URL:?set BASE_URL to the running server, e.g. http://127.0.0.1:8080}"
base="${BASE_URL%/}"
token="${TOKEN:-${VISBIN_API_TOKEN:-}}"
token="${token%%,*}"
if [[ -z "$token" ]]; then
  echo "run.sh: set TOKEN to one of the server's VISBIN_API_TOKEN tokens (the checks need writes to be protected)" >&2
  exit 2
fi

# The pinned Schemathesis, reinstalled when requirements.txt changes.
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/schemathesis" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "run.sh: installing Schemathesis into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --requirement "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# The server should be up already; give it half a minute to become ready.
ready=0
for _ in $(seq 1 60); do
  if curl -fs --max-time 5 "$base/readyz" >/dev/null; then ready=1; break; fi
  sleep 0.5
done
if [[ "$ready" != 1 ]]; then
  echo "run.sh: $base/readyz does not answer 200; start the server first" >&2
  exit 2
fi

work="$(mktemp -d)"
created="$work/created-ids"
touch "$created"
cleanup() {
  # Delete what the run uploaded and did not delete itself (404: already gone).
  local id left=0
  while read -r id; do
    [[ -n "$id" ]] || continue
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X DELETE \
      -H "Authorization: Bearer $token" "$base/v1/schedules/$id" || true)
    [[ "$code" == 204 || "$code" == 404 ]] || left=$((left + 1))
  done < <(sort -un "$created")
  if [[ "$left" -gt 0 ]]; then
    echo "run.sh: $left schedules uploaded by the run could not be deleted" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

seed="${SEED:-1}"
seed_args=(--seed "$seed")
if [[ "$seed" == random ]]; then seed_args=(); fi

export SCHEMATHESIS_HOOKS="$here/hooks.py" PYTHONDONTWRITEBYTECODE=1
# Hypothesis keeps its Unicode tables here (and no example database:
# --generation-database none).
export HYPOTHESIS_STORAGE_DIRECTORY="$venv/hypothesis"
export VISBIN_ST_CREATED_FILE="$created"
export VISBIN_ST_NAME_SUFFIX=" (schemathesis $(date -u +%Y%m%dT%H%M%SZ)-$$)"

schema="${SCHEMA:-$base/openapi.json}"
if [[ -e "$schema" ]]; then schema="$(cd "$(dirname "$schema")" && pwd)/$(basename "$schema")"; fi

# From the scratch folder, so nothing lands in the caller's working directory.
cd "$work"
status=0
"$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "$schema" \
  --url "$base" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  -H "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-100}" \
  --workers "${WORKERS:-1}" \
  "${seed_args[@]}" \
  --continue-on-failure \
  --max-redirects 0 \
  --request-timeout 60 \
  --wait-for-schema 30 \
  --generation-database none \
  --report junit \
  --report-junit-path "$here/report/junit.xml" \
  --no-color \
  "$@" || status=$?
exit "$status"
