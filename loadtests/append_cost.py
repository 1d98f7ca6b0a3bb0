"""What head leases cost an append (Postgres, one run, same machine).

    python3 loadtests/append_cost.py [--appends 200] [--visbin target/release/visbin]

Per setup, a fresh database with a small schedule (200 blocks), then
sequential one-block appends through replica A, each timed from request to
answer: with no lease held anywhere (`VISBIN_HEAD_LEASE=0`: an append waits
for nobody), with A alone holding a lease (it applies its own notice and
reads which leases are live), and with a second replica B holding one too
(it also waits for B's acknowledgement). Prints p50 / p95 / p99 in ms and the ratio of each p50 to the first.
Needs Postgres on --pg-url and psql.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, Pg, Server, pct, request, wait_job  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--appends", type=int, default=200)
p.add_argument("--visbin", default=os.path.join(ROOT, "target", "release", "visbin"))
p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
a = p.parse_args()
work = tempfile.mkdtemp(prefix="visbin-append-cost-")
pg = Pg(a.pg_url)
doc = os.path.join(work, "small.json")
subprocess.run([a.visbin, "gen", "--blocks", "200", "--periods", "20", "--days", "30", "--seed", "3",
                "--format", "json", "--output", doc], check=True)

SETUPS = [("no lease", ["--head-lease", "0"], False), ("A's lease", [], False), ("A's and B's leases", [], True)]
results = {}
for name, extra, second in SETUPS:
    db = "visbin_append_cost"
    pg.create(db)
    url = pg.db_url(db)
    servers = [Server(a.visbin, url, work, "a", extra=extra)]
    try:
        if second:
            servers.append(Server(a.visbin, url, work, "b", extra=extra))
        base = servers[0].base
        with open(doc, "rb") as f:
            _, status, body, _ = request(base, "POST", "/v1/schedules", f.read(), {"content-type": "application/json"})
        assert status == 201, body
        up = json.loads(body)
        wait_job(base, up["job_id"])
        sid = up["schedule_id"]
        ms = []
        for i in range(a.appends):
            block = [{"original_block_id": f"append-{i}", "priority": 1.0,
                      "visibility_periods": [{"start": 60700.0 + i / 100, "stop": 60700.01 + i / 100}]}]
            t, status, body, _ = request(base, "POST", f"/v1/schedules/{sid}/blocks", json.dumps(block),
                                         {"content-type": "application/json"})
            assert status == 200, body
            ms.append(t)
        results[name] = [round(pct(ms, q), 2) for q in (50, 95, 99)]
    finally:
        for s in servers:
            s.stop()
        pg.drop(db)
first = results[SETUPS[0][0]][0]
for name, (p50, p95, p99) in results.items():
    print(f"{name:20} p50 {p50:6.2f} ms  p95 {p95:6.2f}  p99 {p99:6.2f}  p50 ratio {p50 / first:.2f}")
