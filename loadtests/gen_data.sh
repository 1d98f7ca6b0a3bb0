#!/usr/bin/env bash
# Generates the schedules the k6 scripts upload, with `visbin gen`, and the
# manifest.json they read (k6 cannot list a folder).
#
#   bash loadtests/gen_data.sh [OUT_DIR]        (default: loadtests/data)
#
# Environment:
#   VISBIN   the visbin binary (default: target/debug/visbin if it exists,
#            else target/release/visbin, relative to the repo root)
#   SIZES    space-separated LABEL=BLOCKSxPERIODSxDAYS (default:
#            "small=150x20x30 reference=1500x50x365 large=20000x50x365";
#            reference is the README's and docs/BENCHMARKS.md's schedule)
#   FORMATS  "json ndjson" (default) or one of them
#   SEED     first seed (default 1); the k-th size uses SEED+k-1, both formats
#            of one size hold the same schedule
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$here/data}
if [[ -z "${VISBIN:-}" ]]; then
  if [[ -x "$root/target/debug/visbin" ]]; then VISBIN=$root/target/debug/visbin; else VISBIN=$root/target/release/visbin; fi
fi
[[ -x "$VISBIN" ]] || { echo "gen_data.sh: no visbin binary at $VISBIN (build it, or set VISBIN)" >&2; exit 1; }
SIZES=${SIZES:-"small=150x20x30 reference=1500x50x365 large=20000x50x365"}
FORMATS=${FORMATS:-"json ndjson"}
seed=${SEED:-1}
mkdir -p "$out"
entries=()
for size in $SIZES; do
  if [[ ! "$size" =~ ^([A-Za-z0-9_-]+)=([0-9]+)x([0-9]+)x([0-9]+)$ ]]; then
    echo "gen_data.sh: bad size '$size' (want LABEL=BLOCKSxPERIODSxDAYS)" >&2; exit 1
  fi
  label=${BASH_REMATCH[1]} blocks=${BASH_REMATCH[2]} periods=${BASH_REMATCH[3]} days=${BASH_REMATCH[4]}
  for format in $FORMATS; do
    case "$format" in json|ndjson) ;; *) echo "gen_data.sh: unknown format '$format'" >&2; exit 1;; esac
    file="$label.$format"
    "$VISBIN" gen --blocks "$blocks" --periods "$periods" --days "$days" --seed "$seed" --format "$format" --output "$out/$file"
    bytes=$(wc -c < "$out/$file" | tr -d ' ')
    entries+=("{\"file\": \"$file\", \"label\": \"$label\", \"format\": \"$format\", \"blocks\": $blocks, \"periods\": $periods, \"days\": $days, \"seed\": $seed, \"bytes\": $bytes}")
    echo "gen_data.sh: $out/$file ($bytes bytes)" >&2
  done
  seed=$((seed + 1))
done
{
  echo '{"generator": "visbin gen", "files": ['
  for i in "${!entries[@]}"; do
    sep=,; [[ $i -eq $((${#entries[@]} - 1)) ]] && sep=
    echo "  ${entries[$i]}$sep"
  done
  echo ']}'
} > "$out/manifest.json"
echo "gen_data.sh: wrote $out/manifest.json" >&2
