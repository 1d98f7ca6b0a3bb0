"""CPU time per warm answer: visbin against nginx serving the same bytes.

    python3 loadtests/cpu_per_request.py [--seconds 5] [--visbin target/release/visbin]

Uploads the reference schedule (1,500 x 50, seed 1) to a fresh Postgres
database, writes the warm 7-day answer at 900 s (json and columnar) to files
nginx serves, then for each answer runs `wrk -t2 -c16` against visbin and
against nginx and reads the CPU time the server's processes spent meanwhile
(utime + stime from /proc, all of nginx's workers). Prints requests/s and
microseconds of server CPU per request; the difference between the two
answers' costs, divided by their size difference, is the cost per byte.
Needs Postgres, psql, wrk and nginx; Linux.
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DAY, ROOT, YEAR_START, Nginx, Pg, Server, request, upload_file, wait_job  # noqa: E402
import bench  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=5)
p.add_argument("--visbin", default=os.path.join(ROOT, "target", "release", "visbin"))
a = p.parse_args()
work = tempfile.mkdtemp(prefix="visbin-cpu-")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def measure(url, pids):
    before = cpu_seconds(pids)
    r = bench.wrk_rps(url, a.seconds, work)
    used = cpu_seconds(pids) - before
    return r["rps"], used * 1e6 / (r["rps"] * a.seconds)


data = os.path.join(work, "ref.json")
subprocess.run([a.visbin, "gen", "--blocks", "1500", "--periods", "50", "--days", "365", "--seed", "1",
                "--format", "json", "--output", data], check=True)
pg = Pg("postgres://postgres@127.0.0.1:5432")
db = "visbin_cpu"
pg.create(db)
server = Server(a.visbin, pg.db_url(db), work, "visbin")
nginx = None
try:
    _, up = upload_file(server.base, data, "json", "cpu-")
    wait_job(server.base, up["job_id"])
    mid = YEAR_START + 180 * DAY
    seven = f"/v1/schedules/{up['schedule_id']}/bins?bin=900&start={mid}&end={mid + 7 * DAY}"
    root = os.path.join(work, "www")
    os.makedirs(root)
    for fmt in ("json", "columnar"):
        _, status, body, _ = request(server.base, "GET", f"{seven}&format={fmt}")
        assert status == 200
        with open(os.path.join(root, f"{fmt}.json"), "wb") as f:
            f.write(body)
    nginx = Nginx(root, work)
    nginx_pids = children(nginx.proc.pid)
    for fmt in ("json", "columnar"):
        size = os.path.getsize(os.path.join(root, f"{fmt}.json"))
        v_rps, v_us = measure(f"{server.base}{seven}&format={fmt}", [server.proc.pid])
        n_rps, n_us = measure(f"{nginx.base}/{fmt}.json", nginx_pids)
        print(f"{fmt:9} {size:7} B  visbin {v_rps:8.0f} rps {v_us:6.2f} us/request   "
              f"nginx {n_rps:8.0f} rps {n_us:6.2f} us/request")
finally:
    if nginx:
        nginx.stop()
    server.stop()
    pg.drop(db)
