#!/usr/bin/env bash
# Window reads with the covering B-tree (what visbin uses) vs a GiST range
# index, on the database loadtests/bench.py leaves behind (visbin_bench,
# schedule 1 = the reference schedule). Prints median ms per query kind.
set -euo pipefail
db="${1:-postgres://postgres@127.0.0.1:5432/visbin_bench}"
max_len=$(psql "$db" -Atc "SELECT max_period_seconds FROM schedules WHERE id = 1")
sql=$(mktemp)
trap 'rm -f "$sql"' EXIT
cat > "$sql" <<SQL
DROP TABLE IF EXISTS periods_gist;
CREATE TABLE periods_gist AS SELECT schedule_id, block_idx, int8range(start_unix, end_unix) AS span, start_unix, end_unix FROM periods;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX periods_gist_idx ON periods_gist USING gist (schedule_id, span);
VACUUM ANALYZE periods_gist;
VACUUM ANALYZE periods;
\o /dev/null
\timing on
SQL
for _ in $(seq 1 9); do
  for w in "1751241600 1751328000" "1751241600 1751846400" "1735689600 1767225600"; do
    set -- $w
    echo "SELECT block_idx, start_unix, end_unix FROM periods WHERE schedule_id = 1 AND start_unix > $1 - $max_len AND start_unix < $2 AND end_unix > $1 ORDER BY start_unix;" >> "$sql"
    echo "SELECT block_idx, start_unix, end_unix FROM periods_gist WHERE schedule_id = 1 AND span && int8range($1, $2) ORDER BY start_unix;" >> "$sql"
  done
done
echo "\\o" >> "$sql"
echo "SELECT pg_size_pretty(pg_relation_size('periods_window')) AS btree_size, pg_size_pretty(pg_relation_size('periods_gist_idx')) AS gist_size;" >> "$sql"
psql "$db" -q -f "$sql" | tee /dev/stderr | grep "Time:" | awk '{print $2}' | python3 -c '
import statistics, sys
t = [float(x) for x in sys.stdin]
names = ["btree 1d", "gist 1d", "btree 7d", "gist 7d", "btree 365d", "gist 365d"]
for k, n in enumerate(names):
    print(f"{n}: {statistics.median(t[k::6]):.2f} ms")
'
psql "$db" -qc "DROP TABLE periods_gist"
