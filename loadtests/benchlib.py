"""Helpers the benchmark scripts share: psql timings, a visbin server and an
nginx as child processes, HTTP calls, wrk runs, and the plain-table
baseline (the schedule's rows as `(schedule_id, block_idx, start_unix,
end_unix)` TSV).
"""
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPORT_LUA = os.path.join(HERE, "report.lua")
DAY = 86400
YEAR_START = 1735689600  # 2025-01-01T00:00:00Z, visbin gen's default --start


def log(msg):
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    print(f"{name}: {msg}", file=sys.stderr, flush=True)


def pct(values, p):
    """Percentile with linear interpolation (as k6 and numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def lat_stats(ms_values, wall_s=None):
    out = {"n": len(ms_values), "p50_ms": pct(ms_values, 50), "p95_ms": pct(ms_values, 95), "p99_ms": pct(ms_values, 99)}
    if wall_s:
        out["rps"] = len(ms_values) / wall_s
    elif ms_values:
        out["rps"] = 1000 * len(ms_values) / sum(ms_values)  # sequential: one at a time
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- Postgres

class Pg:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def db_url(self, db):
        base, _, query = self.url.partition("?")
        return f"{base}/{db}" + (f"?{query}" if query else "")

    def run(self, sql, db="postgres"):
        return subprocess.run(["psql", self.db_url(db), "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
                              check=True, capture_output=True, text=True).stdout

    def create(self, db):
        self.run(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        self.run(f"CREATE DATABASE {db}")

    def drop(self, db):
        try:
            self.run(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        except subprocess.CalledProcessError as e:
            log(f"could not drop {db}: {e.stderr.strip()}")

    def timings(self, db, script):
        """Runs a psql script with \\timing on; returns the Time: values (ms) in order."""
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write("\\timing on\n" + script)
        try:
            out = subprocess.run(["psql", self.db_url(db), "-v", "ON_ERROR_STOP=1", "-qX", "-f", f.name],
                                 check=True, capture_output=True, text=True).stdout
        finally:
            os.unlink(f.name)
        return [float(m) for m in re.findall(r"Time: ([0-9.]+) ms", out)]


# ----------------------------------------------------------------- processes

class Server:
    """`visbin serve` on a free port, as a child process."""

    def __init__(self, visbin, database_url, workdir, name, extra=()):
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        env.pop("VISBIN_API_TOKEN", None)
        self.proc = subprocess.Popen([visbin, "serve", "--bind", f"127.0.0.1:{self.port}", "--database-url", database_url,
                                      *extra], env=env, stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            if self.proc.poll() is not None:
                raise SystemExit(f"visbin exited at start; see {self.log_path}")
            try:
                if urllib.request.urlopen(self.base + "/readyz", timeout=2).status == 200:
                    return
            except Exception:
                time.sleep(0.05)
        raise SystemExit("visbin did not become ready")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nginx:
    """nginx serving files of `root` on a free port, as a non-daemon child with its own config."""

    def __init__(self, root, workdir):
        self.port = free_port()
        prefix = os.path.join(workdir, "nginx")
        for d in ("logs", "tmp"):
            os.makedirs(os.path.join(prefix, d), exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must read our temporary files
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{user}daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  types {{ }}
  default_type application/json;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    root {root};
    location / {{ try_files $uri =404; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            if self.proc.poll() is not None:
                raise SystemExit(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("nginx did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------- HTTP helpers

def request(base, method, path, body=None, headers=None, timeout=3600):
    host, port = base.replace("http://", "").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    ms = (time.perf_counter() - t) * 1e3
    conn.close()
    return ms, r.status, data, {k.lower(): v for k, v in r.getheaders()}


def upload_file(base, path, fmt, prefix, headers=None):
    """POSTs the file with `prefix` inserted at the start of its schedule name, streamed from disk
    (`headers`: extra request headers, e.g. `Authorization` for a server with `VISBIN_API_TOKEN`)."""
    with open(path, "rb") as f:
        head = f.read(65536)
        m = re.search(rb'"name"\s*:\s*"', head)
        if not m:
            raise SystemExit(f"{path}: no schedule name near the start")
        new_head = head[:m.end()] + prefix.encode() + head[m.end():]
        size = os.path.getsize(path) - len(head) + len(new_head)
        host, port = base.replace("http://", "").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=7200)
        t = time.perf_counter()
        conn.putrequest("POST", "/v1/schedules")
        conn.putheader("Content-Type", "application/x-ndjson" if fmt == "ndjson" else "application/json")
        conn.putheader("Content-Length", str(size))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(new_head)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            conn.send(chunk)
        r = conn.getresponse()
        data = r.read()
        ms = (time.perf_counter() - t) * 1e3
        conn.close()
    if r.status != 201:
        raise SystemExit(f"upload answered {r.status}: {data[:500]!r}")
    return ms, json.loads(data)


def wait_job(base, job_id, timeout=7200):
    t = time.perf_counter()
    while True:
        _, status, data, _ = request(base, "GET", f"/v1/jobs/{job_id}")
        job = json.loads(data)
        if job["state"] in ("done", "failed"):
            if job["state"] != "done":
                raise SystemExit(f"job {job_id} failed: {job.get('error')}")
            return time.perf_counter() - t
        if time.perf_counter() - t > timeout:
            raise SystemExit(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.1)


# ----------------------------------------------------------------- wrk

def wrk_cmd(args, url, script):
    return ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "30s", "-s", script, url]


def wrk(args, url):
    out = subprocess.run(wrk_cmd(args, url, REPORT_LUA), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


COLD_LUA = r"""
-- Cold keys: request k asks for a grid never asked before (see cold_key in
-- load_report.py: origin 1 + k mod (BIN-1), width BIN + k div (BIN-1)), and
-- every answer's X-Cache is counted.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  k = 0
  nonmiss = 0
  answered = 0
end
function request()
  local key = FIRST + k * NTHREADS + tid
  k = k + 1
  local width = BIN + math.floor(key / (BIN - 1))
  local origin = 1 + key % (BIN - 1)
  return wrk.format("GET", PATH .. "&bin=" .. width .. "&origin=" .. origin)
end
function response(status, headers, body)
  answered = answered + 1
  local x = headers["x-cache"] or headers["X-Cache"]
  if status ~= 200 or x ~= "miss" then nonmiss = nonmiss + 1 end
end
local report_done = done
done = function(summary, latency, requests)
  report_done(summary, latency, requests)
  local bad, total, maxk = 0, 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("nonmiss")
    total = total + t:get("answered")
    maxk = math.max(maxk, t:get("k"))
  end
  io.write(string.format('{"answered": %d, "not_miss": %d, "next_key": %d}\n', total, bad, FIRST + (maxk + 1) * NTHREADS))
end
"""


def cold_key(bin_s, key):
    """The grid of cold key number `key`: width and origin such that no two keys share a grid (origin mod width)."""
    return bin_s + key // (bin_s - 1), 1 + key % (bin_s - 1)


def wrk_cold(args, base, path, first_key, workdir):
    script = os.path.join(workdir, "cold.lua")
    with open(REPORT_LUA) as f:
        report = f.read()
    with open(script, "w") as f:
        f.write(f'PATH = "{path}"\nFIRST = {first_key}\nNTHREADS = {args.threads}\nBIN = {args.bin}\n')
        f.write(report + COLD_LUA)
    out = subprocess.run(wrk_cmd(args, base + path, script), check=True, capture_output=True, text=True).stdout
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    res, miss = json.loads(lines[-2]), json.loads(lines[-1])
    res.update(miss)
    return res


def pgbench(args, pg, db, sql, workdir):
    if not shutil.which("pgbench"):
        return None
    script = os.path.join(workdir, "query.sql")
    with open(script, "w") as f:
        f.write(sql + "\n")
    logdir = os.path.join(workdir, "pgbench-log")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    out = subprocess.run(["pgbench", "-n", "-f", script, "-c", str(args.connections), "-j", str(args.threads),
                          "-T", str(args.duration), "--log", "--log-prefix", os.path.join(logdir, "tx"), pg.db_url(db)],
                         check=True, capture_output=True, text=True).stdout
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    lat = []
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                lat.append(int(line.split()[2]) / 1000)  # microseconds -> ms
    st = lat_stats(lat)
    st["rps"] = tps
    return st


# ----------------------------------------------------------------- the plain-table baseline

def rows_of(path, fmt, tsv_path):
    """The (schedule_id=1, block_idx, start_unix, end_unix) rows of a generated file, as the server stores them."""
    unix = lambda mjd: math.floor((mjd - 40587) * 86400 + 0.5)
    n = 0
    max_len = 0

    def blocks():
        if fmt == "ndjson":
            with open(path) as f:
                next(f)
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        else:
            with open(path) as f:
                yield from json.load(f)["blocks"]

    with open(tsv_path, "w") as out:
        for i, b in enumerate(blocks()):
            for p in b["visibility_periods"]:
                s, e = unix(p.get("start", p.get("start_mjd"))), unix(p.get("stop", p.get("end_mjd")))
                if e > s:
                    out.write(f"1\t{i}\t{s}\t{e}\n")
                    n += 1
                    max_len = max(max_len, e - s)
    return n, max_len


def window_sql(table, start, end, max_len):
    return (f"SELECT block_idx, start_unix, end_unix FROM {table} WHERE schedule_id = 1 "
            f"AND start_unix > {start - max_len} AND start_unix < {end} AND end_unix > {start} ORDER BY start_unix;")


