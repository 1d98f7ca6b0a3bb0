#!/usr/bin/env python3
"""The "Load" section of docs/BENCHMARKS.md: visbin under load, each figure
beside a baseline measured in the same run on the same machine.

    python3 loadtests/load_report.py [--quick] [--backends sqlite,postgres]
        [--sizes reference,150k] [--visbin PATH] [--output FILE] [--json FILE]

For each backend (SQLite file, Postgres database) and schedule size
(reference: `visbin gen --blocks 1500 --periods 50 --days 365`; 150k:
`--blocks 150000 --periods 50`, about 400 MB of NDJSON, generated into a
temporary folder), a fresh server is started and measured on:

* uploads: sequential POST /v1/schedules of renamed copies (new content
  each time), each followed by its summary job; p50/p95/p99 and uploads/s.
  Baseline: psql `\\copy` of the same (schedule_id, block_idx, start_unix,
  end_unix) rows into a plain table with the covering index
  (schedule_id, start_unix) INCLUDE (end_unix, block_idx), timed by \\timing.
* warm 1-day, 7-day and full-year range queries (GET .../bins, the same key
  asked before, X-Cache: hit): wrk throughput and latency with report.lua.
  Baseline: nginx serving the same answer bytes as a static file, same wrk
  settings.
* cold queries of the same windows (a key never asked before: a new grid
  `origin` per request, X-Cache: miss checked on every answer): wrk with a
  generated request per call. Baseline: the same rows read from the plain
  table, latency by psql \\timing (`SELECT ... \\o /dev/null`), throughput by
  pgbench with the same number of clients (when pgbench is installed).

Markdown goes to stdout (or --output), progress to stderr, all raw figures to
--json. Needs: the visbin binary (default target/release/visbin, or $VISBIN
or --visbin), Postgres on --pg-url (role with CREATEDB; databases are created
and dropped), psql, wrk, nginx (Debian package), optionally pgbench.
"""
import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (DAY, ROOT, YEAR_START, Nginx, Pg, Server, cold_key, lat_stats, log, pct,  # noqa: E402
                      pgbench, request, rows_of, upload_file, wait_job, window_sql, wrk, wrk_cold)
SIZES = {
    "reference": {"args": ["--blocks", "1500", "--periods", "50", "--days", "365"], "format": "json",
                  "title": "reference schedule (1,500 blocks x ~50 periods, 365 days)"},
    "150k": {"args": ["--blocks", "150000", "--periods", "50"], "format": "ndjson",
             "title": "150,000-block schedule (~50 periods each, 365 days, NDJSON)"},
}


# ----------------------------------------------------------------- one backend x size

def windows(args):
    mid = YEAR_START + 180 * DAY
    return [("1 day", mid, mid + DAY), ("7 days", mid, mid + 7 * DAY), ("365 days", YEAR_START, YEAR_START + 365 * DAY)]


def measure(args, pg, backend, size, data_path, fmt, baseline, workdir):
    tag = f"{backend}/{size}"
    db = None
    if backend == "postgres":
        db = f"visbin_load_{os.getpid()}_{size}"
        pg.create(db)
        url = pg.db_url(db)
    else:
        d = os.path.join(workdir, f"sqlite-{size}")
        os.makedirs(d, exist_ok=True)
        url = f"sqlite://{d}/visbin.sqlite3"
    server = Server(args.visbin, url, workdir, f"visbin-{backend}-{size}")
    res = {"backend": backend, "size": size}
    try:
        # Uploads: the first schedule stays for the queries, the others are deleted.
        lat, job_s, sid = [], [], None
        t_all = time.perf_counter()
        for i in range(args.upload_runs):
            ms, up = upload_file(server.base, data_path, fmt, f"load{i:02d}-")
            lat.append(ms)
            job_s.append(wait_job(server.base, up["job_id"]))
            if sid is None:
                sid, res["periods"], res["blocks"] = up["schedule_id"], up["periods"], up["blocks"]
            else:
                request(server.base, "DELETE", f"/v1/schedules/{up['schedule_id']}")
            log(f"{tag}: upload {i + 1}/{args.upload_runs}: {ms:.0f} ms, summary job {job_s[-1]:.2f} s")
        res["upload"] = lat_stats(lat)
        res["upload"]["job_s_median"] = statistics.median(job_s)
        res["upload_wall_s"] = time.perf_counter() - t_all

        res["warm"], res["cold"] = {}, {}
        nginx_root = os.path.join(workdir, f"www-{backend}-{size}")
        os.makedirs(nginx_root, exist_ok=True)
        paths = {}
        for name, start, end in windows(args):
            path = f"/v1/schedules/{sid}/bins?start={start}&end={end}&bin={args.bin}"
            request(server.base, "GET", path)  # computes, or takes what the summary job warmed
            _, status, body, h = request(server.base, "GET", path)
            if status != 200 or h.get("x-cache") != "hit":
                raise SystemExit(f"{tag} {name}: second request answered {status}, X-Cache {h.get('x-cache')}")
            fname = name.replace(" ", "") + ".json"
            with open(os.path.join(nginx_root, fname), "wb") as f:
                f.write(body)
            paths[name] = (path, fname, len(body))
        nginx = Nginx(nginx_root, workdir)
        try:
            for name, (path, fname, nbytes) in paths.items():
                v = wrk(args, server.base + path)
                b = wrk(args, f"{nginx.base}/{fname}")
                res["warm"][name] = {"visbin": v, "nginx": b, "bytes": nbytes}
                log(f"{tag}: warm {name}: visbin {v['rps']:.0f} req/s p99 {v['p99_ms']:.2f} ms; nginx {b['rps']:.0f} req/s")
                if v["errors"] or b["errors"]:
                    log(f"{tag}: warm {name}: wrk counted errors (visbin {v['errors']}, nginx {b['errors']})")
        finally:
            nginx.stop()
        key = 0  # cold keys are never reused, across windows too: extents are per grid, not per window
        for name, start, end in windows(args):
            path = f"/v1/schedules/{sid}/bins?start={start}&end={end}"
            # Sequential cold requests first (latency without queueing), then wrk (throughput).
            seq = []
            for _ in range(args.cold_requests):
                width, origin = cold_key(args.bin, key)
                key += 1
                ms, status, _, h = request(server.base, "GET", f"{path}&bin={width}&origin={origin}")
                if status != 200 or h.get("x-cache") != "miss":
                    raise SystemExit(f"{tag} cold {name}: answered {status}, X-Cache {h.get('x-cache')} (want miss)")
                seq.append(ms)
            time.sleep(args.settle)  # let the asynchronous persisted-tier writes of the previous phase drain
            w = wrk_cold(args, server.base, path, key, workdir)
            key = w["next_key"]
            if w["not_miss"]:
                log(f"{tag}: cold {name}: {w['not_miss']} of {w['answered']} wrk answers were not X-Cache: miss")
            res["cold"][name] = {"visbin_sequential": lat_stats(seq), "visbin_wrk": w}
            log(f"{tag}: cold {name}: p50 {pct(seq, 50):.2f} ms sequential; wrk {w['rps']:.0f} req/s p99 {w['p99_ms']:.2f} ms")
        res["baseline"] = baseline
    finally:
        server.stop()
        if db:
            pg.drop(db)
    return res


def baseline_for(args, pg, size, data_path, fmt, workdir):
    """COPY floor for uploads and psql/pgbench floor for cold window reads, on a plain table."""
    db = f"visbin_load_{os.getpid()}_{size}_plain"
    pg.create(db)
    try:
        tsv = os.path.join(workdir, f"{size}-periods.tsv")
        n, max_len = rows_of(data_path, fmt, tsv)
        pg.run("CREATE TABLE periods_plain (schedule_id bigint NOT NULL, block_idx integer NOT NULL, "
               "start_unix bigint NOT NULL, end_unix bigint NOT NULL); "
               "CREATE INDEX periods_plain_window ON periods_plain (schedule_id, start_unix) INCLUDE (end_unix, block_idx);", db)
        script = "".join(f"TRUNCATE periods_plain;\n\\copy periods_plain FROM '{tsv}'\n" for _ in range(args.upload_runs))
        t = pg.timings(db, script)
        copies = [t[2 * i + 1] for i in range(args.upload_runs)]  # skip the TRUNCATE timings
        pg.run("VACUUM ANALYZE periods_plain", db)
        size_bytes = int(pg.run("SELECT pg_total_relation_size('periods_plain')", db))
        out = {"rows": n, "max_period_s": max_len, "copy": lat_stats(copies), "plain_table_bytes": size_bytes,
               "upload_runs": args.upload_runs, "cold": {}}
        log(f"{size}: COPY of {n} rows: p50 {out['copy']['p50_ms']:.0f} ms")
        for name, start, end in windows(args):
            q = window_sql("periods_plain", start, end, max_len)
            lat = pg.timings(db, "\\o /dev/null\n" + (q + "\n") * args.cold_requests)
            out["cold"][name] = {"psql": lat_stats(lat), "pgbench": pgbench(args, pg, db, q, workdir)}
            pb = out["cold"][name]["pgbench"]
            log(f"{size}: psql {name}: p50 {pct(lat, 50):.2f} ms" + (f"; pgbench {pb['rps']:.0f} tx/s" if pb else ""))
        return out
    finally:
        pg.drop(db)


# ----------------------------------------------------------------- markdown

def f_ms(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def f_rps(v):
    return "–" if v is None else (f"{v:.1f}" if v < 100 else f"{v:,.0f}")


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"


def lat3(st):
    return f"{f_ms(st['p50_ms'])} / {f_ms(st['p95_ms'])} / {f_ms(st['p99_ms'])}"


def markdown(args, results, baselines, meta):
    L = ["## Load", ""]
    L.append(f"Measured by `python3 loadtests/load_report.py {' '.join(meta['argv'])}` on {meta['machine']}; "
             f"{meta['versions']}. Each visbin figure stands beside a baseline measured in the same run: "
             "nginx serving the same answer bytes as a static file (warm), the same rows read from a plain table "
             "`(schedule_id, block_idx, start_unix, end_unix)` with the covering index "
             "`(schedule_id, start_unix) INCLUDE (end_unix, block_idx)` (cold: psql `\\timing`, and pgbench for "
             "throughput), and `\\copy` of those rows into that table (uploads).")
    L.append("")
    L.append(f"wrk: `-t{args.threads} -c{args.connections} -d{args.duration}s` with `loadtests/report.lua`, client and "
             f"server on the same {meta['nproc']} cores. Queries: `GET /v1/schedules/{{id}}/bins?start=…&end=…&bin={args.bin}` "
             "over 1 day and 7 days from 2025-06-30 and over the year 2025. *Warm*: the key was asked before "
             "(X-Cache: hit). *Cold*: every request asks for a grid never asked before (a new `origin`, and once the "
             f"{args.bin - 1} origins of a width are used up, a width one second wider), so every bin is computed "
             f"(X-Cache: miss, checked on every answer); p50/p95/p99 of {args.cold_requests} sequential requests, "
             "requests/s and wrk latencies with a new grid per request. Uploads: sequential uploads of renamed copies "
             "(new content each), each followed by its summary job; uploads/s = 1 / mean latency. "
             "Latencies in ms (p50 / p95 / p99); ratios are visbin ÷ baseline.")
    for size in args.sizes:
        b = baselines[size]
        rs = [r for r in results if r["size"] == size]
        if not rs:
            continue
        L += ["", f"### {SIZES[size]['title']}", ""]
        L.append(f"{rs[0]['blocks']:,} blocks, {rs[0]['periods']:,} periods; the plain table with its index: "
                 f"{b['plain_table_bytes'] / 1e6:.0f} MB.")
        L += ["", "**Warm (cache hit) vs nginx, same bytes**", "",
              "| window | answer | backend | visbin req/s | visbin ms | nginx req/s | nginx ms | req/s ratio | p99 ratio |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            for name, w in r["warm"].items():
                v, n = w["visbin"], w["nginx"]
                L.append(f"| {name} | {w['bytes'] / 1e3:,.0f} kB | {r['backend']} | {f_rps(v['rps'])} | {lat3(v)} | "
                         f"{f_rps(n['rps'])} | {lat3(n)} | {ratio(v['rps'], n['rps'])} | {ratio(v['p99_ms'], n['p99_ms'])} |")
        L += ["", "**Cold (cache miss) vs the same rows read by psql / pgbench**", "",
              "| window | backend | visbin ms (sequential) | visbin req/s (wrk) | visbin ms (wrk) | psql ms | pgbench tx/s | p50 ratio | req/s ratio |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            for name, c in r["cold"].items():
                s, w = c["visbin_sequential"], c["visbin_wrk"]
                pq, pb = b["cold"][name]["psql"], b["cold"][name]["pgbench"]
                done = w["requests"] > 0  # else no request finished within the wrk run
                L.append(f"| {name} | {r['backend']} | {lat3(s)} | {f_rps(w['rps']) if done else '–'} | "
                         f"{lat3(w) if done else 'none finished'} | {lat3(pq)} | "
                         f"{f_rps(pb['rps']) if pb else '–'} | {ratio(s['p50_ms'], pq['p50_ms'])} | "
                         f"{ratio(w['rps'], pb['rps']) if pb and done else '–'} |")
        L += ["", f"**Uploads ({b['upload_runs']} of each) vs `\\copy` of the same rows**", "",
              "| backend | visbin ms | uploads/s | summary job s (median) | COPY ms | COPY/s | p50 ratio |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            u, c = r["upload"], b["copy"]
            L.append(f"| {r['backend']} | {lat3(u)} | {f_rps(u['rps'])} | {u['job_s_median']:.2f} | {lat3(c)} | "
                     f"{f_rps(c['rps'])} | {ratio(u['p50_ms'], c['p50_ms'])} |")
    notes = []
    for r in results:
        for name, c in r["cold"].items():
            if c["visbin_wrk"]["not_miss"]:
                notes.append(f"{r['backend']}/{r['size']} cold {name}: {c['visbin_wrk']['not_miss']} of "
                             f"{c['visbin_wrk']['answered']} wrk answers were not misses")
            if not c["visbin_wrk"]["requests"]:
                notes.append(f"{r['backend']}/{r['size']} cold {name}: no wrk request finished within {args.duration} s "
                             "(run longer: --duration)")
            if c["visbin_wrk"]["errors"]:
                notes.append(f"{r['backend']}/{r['size']} cold {name}: wrk counted {c['visbin_wrk']['errors']} errors")
        for name, w in r["warm"].items():
            if w["visbin"]["errors"] or w["nginx"]["errors"]:
                notes.append(f"{r['backend']}/{r['size']} warm {name}: wrk errors visbin {w['visbin']['errors']}, nginx {w['nginx']['errors']}")
    if notes:
        L += ["", "Notes: " + "; ".join(notes) + "."]
    if args.quick:
        L += ["", "_`--quick` run: short wrk durations and few repetitions; indicative only._"]
    return "\n".join(L) + "\n"


def shown_args(argv):
    """The command line as the report shows it: without options that name local paths or servers."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--visbin", "--output", "--json", "--workdir", "--pg-url"):
            skip = "=" not in a
            continue
        out.append(a)
    return out


def machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
            mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, {platform.system()} {platform.release()}"


def versions(visbin):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return ", ".join([first_line([visbin, "--version"]), first_line(["nginx", "-v"]), first_line(["psql", "--version"]),
                      first_line(["wrk", "--version"]).split(" [")[0]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)")
    ap.add_argument("--sizes", default=None, help="comma-separated: reference, 150k (default both; --quick: reference)")
    ap.add_argument("--visbin", default=os.environ.get("VISBIN", os.path.join(ROOT, "target", "release", "visbin")),
                    help="server binary (default $VISBIN, else target/release/visbin)")
    ap.add_argument("--pg-url", default=os.environ.get("VISBIN_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432"),
                    help="Postgres server (a database in the URL is ignored; default $VISBIN_TEST_PG_URL, "
                         "else postgres://postgres@127.0.0.1:5432)")
    ap.add_argument("--duration", type=int, default=None, help="wrk and pgbench seconds per measurement (default 10; --quick 2)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads and pgbench jobs (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections and pgbench clients (default 16)")
    ap.add_argument("--cold-requests", type=int, default=None, help="sequential cold requests and psql repetitions (default 30; --quick 8)")
    ap.add_argument("--upload-runs", type=int, default=None, help="uploads per backend and size (default 5, 3 for 150k; --quick 3)")
    ap.add_argument("--bin", type=int, default=900, help="bin width of the queries, seconds (default 900)")
    ap.add_argument("--seed", type=int, default=1, help="visbin gen --seed (default 1)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds of quiet before each cold wrk run, for the asynchronous cache writes of the previous "
                         "phase to drain (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="short wrk runs, few repetitions, reference size only unless --sizes")
    ap.add_argument("--output", help="write the markdown here instead of stdout")
    ap.add_argument("--json", help="also write all raw figures as JSON here")
    ap.add_argument("--workdir", help="keep generated data, logs and configs here (default: a temporary folder, removed)")
    args = ap.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.sizes = [s.strip() for s in (args.sizes or ("reference" if args.quick else "reference,150k")).split(",") if s.strip()]
    for b in args.backends:
        if b not in ("sqlite", "postgres"):
            ap.error(f"unknown backend {b}")
    for s in args.sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s} (reference, 150k)")
    args.duration = args.duration or (2 if args.quick else 10)
    args.cold_requests = args.cold_requests or (8 if args.quick else 30)
    args.settle = args.settle if args.settle is not None else (1 if args.quick else 3)
    if not os.access(args.visbin, os.X_OK):
        ap.error(f"no visbin binary at {args.visbin} (cargo build --release, or --visbin / $VISBIN)")
    for tool in ("psql", "wrk", "nginx"):
        if not shutil.which(tool):
            ap.error(f"{tool} is needed")
    u = urllib.parse.urlsplit(args.pg_url)
    pg = Pg(urllib.parse.urlunsplit((u.scheme, u.netloc, "", u.query, "")))
    pg.run("SELECT 1")

    workdir = args.workdir or tempfile.mkdtemp(prefix="visbin-load-")
    os.makedirs(workdir, exist_ok=True)
    results, baselines = [], {}
    try:
        for size in args.sizes:
            spec = SIZES[size]
            data = os.path.join(workdir, f"{size}.{spec['format']}")
            if not os.path.exists(data):
                log(f"generating the {size} schedule into {data}")
                subprocess.run([args.visbin, "gen", *spec["args"], "--seed", str(args.seed), "--format", spec["format"], "--output", data], check=True)
            runs = args.upload_runs or (3 if args.quick or size == "150k" else 5)
            sub = argparse.Namespace(**{**vars(args), "upload_runs": runs})
            baselines[size] = baseline_for(sub, pg, size, data, spec["format"], workdir)
            for backend in args.backends:
                results.append(measure(sub, pg, backend, size, data, spec["format"], baselines[size], workdir))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    meta = {"argv": shown_args(sys.argv[1:]), "machine": machine(), "nproc": os.cpu_count(), "versions": versions(args.visbin)}
    md = markdown(args, results, baselines, meta)
    if args.output:
        with open(args.output, "w") as f:
            f.write(md)
        log(f"wrote {args.output}")
    else:
        sys.stdout.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "baselines": baselines}, f, indent=2)


if __name__ == "__main__":
    main()
