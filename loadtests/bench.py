#!/usr/bin/env python3
"""visbin's storage and read-path benchmarks, each against a floor measured
in the same run on the same machine (docs/BENCHMARKS.md):

    cargo build --release
    python3 loadtests/bench.py --size reference   # 1,500 blocks x ~50 periods
    python3 loadtests/bench.py --size 150k        # 150,000 blocks, ~400 MB NDJSON

The floor is a plain table of the schedule's rows, `(schedule_id, block_idx,
start_unix, end_unix)` with a covering index `(schedule_id, start_unix)
INCLUDE (end_unix, block_idx)` (SQLite: an index on all four), filled and
read by the database's own client: psql `\\copy` (binary for reads, timed by
`\\timing`) and sqlite3 `.import` / `.timer`. For each backend:

1. upload (JSON for the reference schedule, NDJSON for 150k) vs filling the
   plain table from a TSV of the same rows; the summary job's duration;
2. storage per period, indexes included: period_chunks vs the plain table;
3. a cold full-range query at 1 h (a grid never asked before), schedule
   resident, vs reading all rows of the plain table;
4. the same after a restart (first touch, nothing resident);
5. a cold 1-day window at 900 s, resident, vs reading that day's rows; and
   with the resident tier off (VISBIN_PERIOD_CACHE_BYTES=0: window reads);
6. a warm 7-day window at 900 s, json and columnar, against nginx serving
   the same bytes as a static file (wrk -t2 -c16; rounds alternating the
   two, medians);
7. a persisted-extent hit on a second replica (SQLite: the server restarted)
   vs the cold full year.

Prints one JSON line per result to stdout (all results again at the end),
progress to stderr. Needs Postgres on --pg-url, psql, sqlite3, wrk, nginx.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DAY, ROOT, YEAR_START, Nginx, Pg, Server, log, request, rows_of, upload_file, wait_job  # noqa: E402

SIZES = {
    "reference": {"gen": ["--blocks", "1500", "--periods", "50", "--days", "365", "--seed", "1"],
                  "format": "json", "uploads": 7, "cold_runs": 15, "restarts": 5},
    "150k": {"gen": ["--blocks", "150000", "--periods", "50", "--days", "365", "--seed", "1"],
             "format": "ndjson", "uploads": 1, "cold_runs": 9, "restarts": 3},
}
MID = YEAR_START + 180 * DAY


def median(xs):
    return round(statistics.median(xs), 2)


def emit(results, name, value):
    results[name] = value
    print(json.dumps({name: value}), flush=True)


def wrk_rps(url, seconds, workdir):
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "-s", os.path.join(ROOT, "loadtests", "report.lua"), url],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cold_ms(base, path, origins):
    """Latencies of `path` with each of `origins` (new grids: every one must miss)."""
    out = []
    for o in origins:
        ms, status, data, h = request(base, "GET", f"{path}&origin={o}")
        if status != 200 or h.get("x-cache") != "miss":
            raise SystemExit(f"{path}&origin={o}: {status} {h.get('x-cache')} {data[:200]!r}")
        out.append(ms)
    return out


class SqliteFloor:
    """The plain table in its own SQLite file, filled and read by the sqlite3 client."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "floor.sqlite3")

    def sql(self, script):
        return subprocess.run(["sqlite3", self.path], input=script, check=True, capture_output=True, text=True).stdout

    def fill(self, tsv):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sql("CREATE TABLE floor (schedule_id INTEGER, block_idx INTEGER, start_unix INTEGER, end_unix INTEGER);"
                 "CREATE INDEX floor_window ON floor (schedule_id, start_unix, end_unix, block_idx);")
        t = time.perf_counter()
        self.sql(f".mode tabs\n.import {tsv} floor\n")
        return (time.perf_counter() - t) * 1e3

    def read_ms(self, where, runs, per_batch):
        """Per-query ms of the rows of `where` in start order written to /dev/null, in `runs` batches: the
        sqlite3 client's wall time for a batch of queries less that of an empty batch, per query (its own
        `.timer` rounds to milliseconds)."""
        query = f"SELECT block_idx, start_unix, end_unix FROM floor WHERE {where} ORDER BY start_unix;\n"

        def wall(n):
            t = time.perf_counter()
            subprocess.run(["sqlite3", self.path], input=".output /dev/null\n" + query * n, check=True,
                           capture_output=True, text=True)
            return time.perf_counter() - t

        return [(wall(per_batch) - wall(0)) * 1e3 / per_batch for _ in range(runs)]

    def bytes(self):
        out = self.sql("SELECT SUM(pgsize) FROM dbstat WHERE name IN ('floor', 'floor_window');")
        return int(out.strip())


def visbin_sqlite_bytes(db_path):
    """Bytes of period_chunks and its primary-key index in the server's file."""
    out = subprocess.run(["sqlite3", db_path, "SELECT SUM(pgsize) FROM dbstat WHERE name = 'period_chunks' "
                          "OR name LIKE 'sqlite_autoindex_period_chunks%';"], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def measure(args, backend, size, data, tsv, periods, max_len, workdir, pg):
    spec = SIZES[size]
    res = {"backend": backend, "size": size, "periods": periods}
    dbname = f"visbin_bench_{size}"
    if backend == "postgres":
        pg.create(dbname)
        url = pg.db_url(dbname)
    else:
        db_path = os.path.join(workdir, f"visbin-{size}.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db_path + suffix):
                os.unlink(db_path + suffix)
        url = f"sqlite://{db_path}"

    # 1. The floor table and its fill time.
    if backend == "postgres":
        pg.run("DROP TABLE IF EXISTS floor; CREATE TABLE floor (schedule_id BIGINT, block_idx INTEGER, "
               "start_unix BIGINT, end_unix BIGINT); CREATE INDEX floor_window ON floor (schedule_id, start_unix) "
               "INCLUDE (end_unix, block_idx);", dbname)
        script = "".join(f"TRUNCATE floor;\n\\copy floor FROM '{tsv}'\n" for _ in range(spec["uploads"]))
        fills = pg.timings(dbname, script)[1::2]
        pg.run("VACUUM ANALYZE floor", dbname)
        floor_bytes = int(pg.run("SELECT pg_total_relation_size('floor')", dbname))
    else:
        floor = SqliteFloor(workdir)
        fills = [floor.fill(tsv) for _ in range(min(spec["uploads"], 3))]
        floor_bytes = floor.bytes()

    # 2. Uploads and summary jobs.
    server = Server(args.visbin, url, workdir, f"{backend}-{size}")
    try:
        uploads, jobs, sid = [], [], None
        for i in range(spec["uploads"]):
            ms, up = upload_file(server.base, data, spec["format"], f"run{i:02d}-")
            uploads.append(ms)
            jobs.append(wait_job(server.base, up["job_id"]) * 1e3)
            if sid is None:
                sid = up["schedule_id"]
        emit(res, "upload", {"visbin_ms": median(uploads), "floor_ms": median(fills),
                             "ratio": round(median(uploads) / median(fills), 3), "runs": len(uploads)})
        emit(res, "summary_job", {"ms_after_201": median(jobs)})
        if backend == "postgres":
            chunk_bytes = int(pg.run("SELECT pg_total_relation_size('period_chunks')", dbname))
            rows = int(pg.run("SELECT COUNT(*) FROM period_chunks", dbname))
        else:
            chunk_bytes = visbin_sqlite_bytes(db_path)
            rows = int(subprocess.run(["sqlite3", db_path, "SELECT COUNT(*) FROM period_chunks"],
                                      check=True, capture_output=True, text=True).stdout)
        # Every upload stored the same periods again: compare per period.
        stored = periods * spec["uploads"]
        emit(res, "storage", {"visbin_bytes_per_period": round(chunk_bytes / stored, 2),
                              "floor_bytes_per_period": round(floor_bytes / periods, 2),
                              "ratio": round((chunk_bytes / stored) / (floor_bytes / periods), 3),
                              "chunk_rows": rows, "schedules": spec["uploads"]})

        # Floors: all rows, and one day's rows.
        day = (MID, MID + DAY)
        day_where = (f"schedule_id = 1 AND start_unix > {day[0] - max_len} AND start_unix < {day[1]} "
                     f"AND end_unix > {day[0]}")
        if backend == "postgres":
            def copy(where):
                return (f"\\copy (SELECT block_idx, start_unix, end_unix FROM floor WHERE {where} "
                        f"ORDER BY start_unix) TO '/dev/null' WITH (FORMAT binary)\n")
            all_floor = pg.timings(dbname, copy("schedule_id = 1") * 5)
            day_floor = pg.timings(dbname, copy(day_where) * 15)
        else:
            all_floor = floor.read_ms("schedule_id = 1", 3, 3)
            day_floor = floor.read_ms(day_where, 5, 20)

        # 3. Cold full range at 1 h, resident (the summary job loaded it).
        full = f"/v1/schedules/{sid}/bins?bin=3600"
        lat = cold_ms(server.base, full, range(1, spec["cold_runs"] + 1))
        emit(res, "cold_full_1h_resident", {"visbin_ms": median(lat), "floor_ms": median(all_floor),
                                            "ratio": round(median(lat) / median(all_floor), 3)})
        # 5. Cold 1-day window at 900 s, resident.
        one_day = f"/v1/schedules/{sid}/bins?bin=900&start={day[0]}&end={day[1]}"
        lat = cold_ms(server.base, one_day, range(1, spec["cold_runs"] + 1))
        emit(res, "cold_1d_900s_resident", {"visbin_ms": median(lat), "floor_ms": median(day_floor),
                                            "ratio": round(median(lat) / median(day_floor), 3)})

        # 6. Warm 7-day window at 900 s vs nginx with the same bytes.
        seven = f"/v1/schedules/{sid}/bins?bin=900&start={MID}&end={MID + 7 * DAY}"
        root = os.path.join(workdir, f"www-{backend}-{size}")
        os.makedirs(root, exist_ok=True)
        warm = {}
        for fmt in ("json", "columnar"):
            _, status, body, _ = request(server.base, "GET", f"{seven}&format={fmt}")
            assert status == 200
            with open(os.path.join(root, f"{fmt}.json"), "wb") as f:
                f.write(body)
        nginx = Nginx(root, workdir)
        try:
            # Rounds alternate visbin and nginx; medians of each, so that a
            # slow moment of the machine weighs on both alike.
            for fmt in ("json", "columnar"):
                vs, ns = [], []
                for _ in range(args.wrk_rounds):
                    vs.append(wrk_rps(f"{server.base}{seven}&format={fmt}", args.wrk_seconds, workdir))
                    ns.append(wrk_rps(f"{nginx.base}/{fmt}.json", args.wrk_seconds, workdir))
                v_rps, n_rps = median([v["rps"] for v in vs]), median([n["rps"] for n in ns])
                warm[fmt] = {"visbin_rps": v_rps, "nginx_rps": n_rps, "ratio": round(v_rps / n_rps, 3),
                             "visbin_runs": [round(v["rps"]) for v in vs], "nginx_runs": [round(n["rps"]) for n in ns],
                             "visbin_p99_ms": median([v["p99_ms"] for v in vs]),
                             "nginx_p99_ms": median([n["p99_ms"] for n in ns]),
                             "bytes": os.path.getsize(os.path.join(root, f"{fmt}.json")),
                             "errors": sum(v["errors"] for v in vs) + sum(n["errors"] for n in ns)}
        finally:
            nginx.stop()
        emit(res, "warm_7d_900s_vs_nginx", warm)

        # 6b. Compression of a full-year answer at 900 s: sizes, the first
        # request of each coding (which compresses) and the next (cached).
        comp = {}
        for fmt in ("json", "columnar"):
            year900 = f"/v1/schedules/{sid}/bins?bin=900&format={fmt}"
            ms, _, body, _ = request(server.base, "GET", year900)
            row = {"identity_bytes": len(body), "identity_first_ms": round(ms, 2),
                   "identity_next_ms": round(request(server.base, "GET", year900)[0], 2)}
            for coding in ("gzip", "br", "zstd"):
                first, _, cbody, h = request(server.base, "GET", year900, headers={"Accept-Encoding": coding})
                assert h.get("content-encoding") == coding, h
                nxt = min(request(server.base, "GET", year900, headers={"Accept-Encoding": coding})[0] for _ in range(3))
                row[coding] = {"bytes": len(cbody), "ratio": round(len(cbody) / len(body), 3),
                               "first_ms": round(first, 2), "next_ms": round(nxt, 2)}
            comp[fmt] = row
        emit(res, "compression_full_900s", comp)

        # 7. A persisted extent on another replica: on Postgres a second
        # replica beside the first (shared tables); a SQLite file has one
        # server, so there it is the same server restarted.
        year = f"/v1/schedules/{sid}/bins?bin=900&origin=600"
        cold_year, status, _, _ = request(server.base, "GET", year)
        assert status == 200
        time.sleep(3)  # the persisted tier is written asynchronously
        if backend == "sqlite":
            server.stop()
        replica = Server(args.visbin, url, workdir, f"{backend}-{size}-replica")
        try:
            request(replica.base, "GET", f"/v1/schedules/{sid}")
            ms, status, _, h = request(replica.base, "GET", year)
            emit(res, "tier2_replica_full_900s", {"x_cache": h.get("x-cache"), "visbin_ms": round(ms, 2),
                                                  "cold_ms": round(cold_year, 2), "ratio": round(ms / cold_year, 3)})
        finally:
            replica.stop()
    finally:
        server.stop()

    # 4. First touch after a restart: nothing resident.
    first = []
    for k in range(spec["restarts"]):
        s = Server(args.visbin, url, workdir, f"{backend}-{size}-restart")
        try:
            first += cold_ms(s.base, full, [1000 + k])
        finally:
            s.stop()
    emit(res, "cold_full_1h_first_touch", {"visbin_ms": median(first), "floor_ms": median(all_floor),
                                           "ratio": round(median(first) / median(all_floor), 3), "runs": len(first)})
    # 5b. The resident tier off: every computation reads its window's chunks.
    s = Server(args.visbin, url, workdir, f"{backend}-{size}-noresident", extra=["--period-cache-bytes", "0"])
    try:
        lat = cold_ms(s.base, one_day, range(2000, 2000 + spec["cold_runs"]))
        emit(res, "cold_1d_900s_window_reads", {"visbin_ms": median(lat), "floor_ms": median(day_floor),
                                                "ratio": round(median(lat) / median(day_floor), 3)})
        lat = cold_ms(s.base, full, range(2000, 2000 + min(spec["cold_runs"], 5)))
        emit(res, "cold_full_1h_window_reads", {"visbin_ms": median(lat), "floor_ms": median(all_floor),
                                                "ratio": round(median(lat) / median(all_floor), 3)})
    finally:
        s.stop()
    if backend == "postgres" and not args.keep:
        pg.drop(dbname)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="reference")
    ap.add_argument("--backends", default="postgres,sqlite")
    ap.add_argument("--visbin", default=os.environ.get("VISBIN", os.path.join(ROOT, "target", "release", "visbin")))
    ap.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--wrk-rounds", type=int, default=3, help="alternating visbin/nginx rounds of the warm probe")
    ap.add_argument("--workdir", help="keep generated files here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the Postgres database")
    args = ap.parse_args()
    pg = Pg(args.pg_url)
    workdir = args.workdir or tempfile.mkdtemp(prefix="visbin-bench-")
    os.makedirs(workdir, exist_ok=True)
    spec = SIZES[args.size]
    data = os.path.join(workdir, f"{args.size}.{spec['format']}")
    if not os.path.exists(data):
        log(f"generating {data}")
        subprocess.run([args.visbin, "gen", *spec["gen"], "--format", spec["format"], "--output", data], check=True)
    tsv = os.path.join(workdir, f"{args.size}.tsv")
    log("writing the plain table's rows")
    periods, max_len = rows_of(data, spec["format"], tsv)
    results = []
    for backend in args.backends.split(","):
        log(f"{backend}: measuring")
        results.append(measure(args, backend, args.size, data, tsv, periods, max_len, workdir, pg))
    print(json.dumps({"machine_nproc": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
