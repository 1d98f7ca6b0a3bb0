"""Warm hits of two or more builds against nginx, alternated in rounds (one run, same machine).

Each variant is NAME=BINARY|DATABASE_URL with `{db}` for the database name, e.g.
  python3 loadtests/warm_ab.py --variant "old=./visbin-old|postgres://postgres@127.0.0.1:5432/{db}" \
                               --variant "new=target/release/visbin|postgres://postgres@127.0.0.1:5432/{db}"
Uploads the reference schedule (1,500 x 50, seed 1) once, then per round: nginx serving the warm
7-day answer at 900 s, then each variant, `wrk -t2 -c16` for --seconds each. Prints medians and
ratios to nginx. Needs Postgres, psql, wrk and nginx.
"""
import argparse, os, statistics, subprocess, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DAY, YEAR_START, Nginx, Pg, Server, request, upload_file, wait_job
import bench

p = argparse.ArgumentParser()
p.add_argument("--variant", action="append", required=True, help="name=binary|dburl_template ({db})")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--seconds", type=int, default=5)
p.add_argument("--fmts", default="json,columnar")
a = p.parse_args()
work = tempfile.mkdtemp(prefix="visbin-warm-ab-")
pg = Pg("postgres://postgres@127.0.0.1:5432")
db = "visbin_probe"
variants = []
for v in a.variant:
    name, rest = v.split("=", 1); binary, url = rest.split("|")
    variants.append((name, binary, url.format(db=db)))
data = os.path.join(work, "ref.json")
if not os.path.exists(data):
    subprocess.run([variants[0][1], "gen", "--blocks", "1500", "--periods", "50", "--days", "365", "--seed", "1",
                    "--format", "json", "--output", data], check=True)
pg.create(db)
s = Server(variants[0][1], variants[0][2], work, "setup")
_, up = upload_file(s.base, data, "json", "p-"); wait_job(s.base, up["job_id"]); sid = up["schedule_id"]
MID = YEAR_START + 180 * DAY
seven = f"/v1/schedules/{sid}/bins?bin=900&start={MID}&end={MID + 7 * DAY}"
root = os.path.join(work, "www"); os.makedirs(root, exist_ok=True)
for fmt in a.fmts.split(","):
    _, st, body, _ = request(s.base, "GET", f"{seven}&format={fmt}"); assert st == 200
    open(os.path.join(root, f"{fmt}.json"), "wb").write(body)
s.stop()
nginx = Nginx(root, work)
res = {}
try:
    for r in range(a.rounds):
        for fmt in a.fmts.split(","):
            n = bench.wrk_rps(f"{nginx.base}/{fmt}.json", a.seconds, work)["rps"]
            res.setdefault(("nginx", fmt), []).append(n)
        for name, binary, url in variants:
            s = Server(binary, url, work, name)
            try:
                for fmt in a.fmts.split(","):
                    request(s.base, "GET", f"{seven}&format={fmt}")
                    v = bench.wrk_rps(f"{s.base}{seven}&format={fmt}", a.seconds, work)
                    res.setdefault((name, fmt), []).append(v["rps"])
                    print(r, name, fmt, round(v["rps"]), "errors", v["errors"], flush=True)
            finally:
                s.stop()
finally:
    nginx.stop()
    pg.drop(db)
for fmt in a.fmts.split(","):
    nm = statistics.median(res[("nginx", fmt)])
    for name, _, _ in variants:
        xs = res[(name, fmt)]
        print(f"{fmt:9} {name:10} median {statistics.median(xs):8.0f} rps  ratio {statistics.median(xs)/nm:.3f}  runs {[round(x) for x in xs]}  nginx {round(nm)}")
