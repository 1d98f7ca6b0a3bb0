#!/usr/bin/env python3
"""visbin benchmarks on Postgres, each against a baseline measured in the same run.

  python3 loadtests/bench.py            (after: cargo build --release)

1. Upload of the reference schedule (1,500 blocks x ~50 periods, one year)
   vs the raw floor: COPY of the same block and period rows by psql into
   empty tables of the same shape (same indexes), timed by psql's \\timing.
2. Warm (memory tier) 7-day window at 900 s: wrk throughput as a ratio of
   /healthz throughput, and p50/p95/p99.
3. Cold (never-seen key) 1-day, 7-day and full-year windows vs the raw floor:
   psql fetching the same periods (the server's window query), \\timing.
4. Tier-2 hit on a fresh replica (new process, same database) for the full
   year vs cold.
Needs: Postgres on 127.0.0.1:5432 (role postgres), psql, wrk.
"""
import http.client, json, math, os, re, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "visbin")
PG = "postgres://postgres@127.0.0.1:5432"
DB = "visbin_bench"
YEAR = 1735689600  # 2025-01-01T00:00:00Z
DAY = 86400


def psql(sql, db=DB, capture=True):
    return subprocess.run(["psql", f"{PG}/{db}", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                          check=True, capture_output=capture, text=True).stdout


def psql_timings(script):
    """Runs a psql script with \\timing on; returns the 'Time:' values (ms) in order."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("\\timing on\n" + script)
    out = subprocess.run(["psql", f"{PG}/{DB}", "-v", "ON_ERROR_STOP=1", "-q", "-f", f.name],
                         check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    return [float(m) for m in re.findall(r"Time: ([0-9.]+) ms", out)]


def start_server(port):
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", VISBIN_BIND=f"127.0.0.1:{port}", RUST_LOG="warn")
    p = subprocess.Popen([BIN, "serve"], env=env)
    for _ in range(400):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200:
                return p
        except Exception:
            time.sleep(0.025)
    raise SystemExit("server did not start")


def request(conn, method, path, body=None, headers=None):
    t = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return (time.perf_counter() - t) * 1e3, r.status, data, r


def wait_job(conn, job):
    while True:
        _, _, data, _ = request(conn, "GET", f"/v1/jobs/{job}")
        if json.loads(data)["state"] in ("done", "failed"):
            return
        time.sleep(0.05)


def wrk(url, seconds=10, conns=16):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", os.path.join(ROOT, "loadtests", "report.lua"), url],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], check=True)
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {DB}"], check=True)
    tmp = tempfile.mkdtemp()
    ref = os.path.join(tmp, "reference.json")
    subprocess.run([BIN, "gen", "--blocks", "1500", "--periods", "50", "--days", "365", "--seed", "1", "--output", ref], check=True)
    body = open(ref, "rb").read()
    doc = json.loads(body)
    server = start_server(18080)
    results = {"machine_nproc": os.cpu_count()}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 18080)
        # 1. Upload vs COPY floor.
        uploads, sid = [], None
        runs = 7
        for i in range(runs):
            variant = body.replace(b'"name":"synthetic', b'"name":"run%02d-synthetic' % i, 1)
            ms, status, data, _ = request(conn, "POST", "/v1/schedules", variant, {"content-type": "application/json"})
            assert status == 201, data
            up = json.loads(data)
            uploads.append(ms)
            wait_job(conn, up["job_id"])
            if sid is None:
                sid = up["schedule_id"]
        unix = lambda mjd: math.floor((mjd - 40587) * 86400 + 0.5)
        blocks_tsv, periods_tsv = os.path.join(tmp, "blocks.tsv"), os.path.join(tmp, "periods.tsv")
        with open(blocks_tsv, "w") as fb, open(periods_tsv, "w") as fp:
            for i, b in enumerate(doc["blocks"]):
                ps = [(unix(p["start"]), unix(p["stop"])) for p in b["visibility_periods"]]
                ps = [p for p in ps if p[1] > p[0]]
                sched = "t" if b["scheduled_period"] else "f"
                fb.write(f"1\t{i}\t{b['original_block_id']}\t{b['priority']!r}\t{sched}\t{len(ps)}\n")
                for s, e in ps:
                    fp.write(f"1\t{i}\t{s}\t{e}\n")
        psql("DROP TABLE IF EXISTS floor_blocks, floor_periods; "
             "CREATE TABLE floor_blocks (LIKE blocks INCLUDING ALL); CREATE TABLE floor_periods (LIKE periods INCLUDING ALL);")
        script = "".join(f"TRUNCATE floor_blocks, floor_periods;\n\\copy floor_blocks FROM '{blocks_tsv}'\n\\copy floor_periods FROM '{periods_tsv}'\n" for _ in range(runs))
        t = psql_timings(script)
        floors = [t[3 * i + 1] + t[3 * i + 2] for i in range(runs)]  # skip the TRUNCATE timings
        results["upload"] = {
            "periods": sum(1 for _ in open(periods_tsv)),
            "upload_ms_median": round(statistics.median(uploads), 2),
            "copy_floor_ms_median": round(statistics.median(floors), 2),
            "ratio": round(statistics.median(uploads) / statistics.median(floors), 2),
        }
        print(json.dumps({"upload": results["upload"]}), flush=True)

        # 2. Warm 7-day window vs /healthz.
        mid = YEAR + 180 * DAY
        seven = f"/v1/schedules/{sid}/bins?start={mid}&end={mid + 7 * DAY}&bin=900"
        request(conn, "GET", seven)
        request(conn, "GET", seven + "&format=columnar")
        health = wrk("http://127.0.0.1:18080/healthz")
        warm = wrk("http://127.0.0.1:18080" + seven)
        warm_col = wrk("http://127.0.0.1:18080" + seven + "&format=columnar")
        results["warm_7d"] = {"healthz": health, "bins_json": warm, "bins_columnar": warm_col,
                              "ratio_json": round(warm["rps"] / health["rps"], 3),
                              "ratio_columnar": round(warm_col["rps"] / health["rps"], 3)}
        print(json.dumps({"warm_7d": results["warm_7d"]}), flush=True)

        # 3. Cold windows vs psql fetching the same periods.
        conn = http.client.HTTPConnection("127.0.0.1", 18080)  # the old one idled out during wrk
        max_len = int(psql(f"SELECT max_period_seconds FROM schedules WHERE id = {sid}"))
        cold = {}
        for w, (name, start, end) in enumerate([("1d", mid, mid + DAY), ("7d", mid, mid + 7 * DAY), ("365d", YEAR, YEAR + 365 * DAY)]):
            lat = []
            for i in range(100 * w + 1, 100 * w + 16):
                # origin = i s: a never-seen key (grid origin differs) each time.
                ms, status, _, r = request(conn, "GET", f"/v1/schedules/{sid}/bins?start={start}&end={end}&bin=900&origin={i}")
                assert status == 200 and r.getheader("x-cache") == "miss", (name, i, r.getheader("x-cache"))
                lat.append(ms)
            q = (f"SELECT block_idx, start_unix, end_unix FROM periods WHERE schedule_id = {sid} "
                 f"AND start_unix > {start - max_len} AND start_unix < {end} AND end_unix > {start} ORDER BY start_unix;\n")
            floor = psql_timings("\\o /dev/null\n" + q * 15)
            cold[name] = {"visbin_ms_median": round(statistics.median(lat), 2),
                          "psql_floor_ms_median": round(statistics.median(floor), 2),
                          "ratio": round(statistics.median(lat) / statistics.median(floor), 2)}
        results["cold"] = cold
        print(json.dumps({"cold": cold}), flush=True)

        # 4. Tier-2 hit on a fresh replica, full year.
        year_path = f"/v1/schedules/{sid}/bins?start={YEAR}&end={YEAR + 365 * DAY}&bin=900&origin=600"
        _, _, _, r = request(conn, "GET", year_path)
        time.sleep(3)  # the persisted tier is written asynchronously
        replica = start_server(18081)
        try:
            c2 = http.client.HTTPConnection("127.0.0.1", 18081)
            request(c2, "GET", f"/v1/schedules/{sid}")  # warm the replica's pool
            ms, status, _, r = request(c2, "GET", year_path)
            assert status == 200
            results["tier2_replica_365d"] = {"x_cache": r.getheader("x-cache"), "visbin_ms": round(ms, 2),
                                             "cold_365d_ms_median": cold["365d"]["visbin_ms_median"],
                                             "ratio_to_cold": round(ms / cold["365d"]["visbin_ms_median"], 2)}
        finally:
            replica.terminate()
            replica.wait()
        print(json.dumps({"tier2_replica_365d": results["tier2_replica_365d"]}), flush=True)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
