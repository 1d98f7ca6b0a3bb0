#!/usr/bin/env python3
"""The soak test of the hardening issue: minutes of mixed reads and appends
on Postgres, with the server's memory, file descriptors and database
connections sampled throughout.

    cargo build --release
    python3 loadtests/soak.py                      # 10 minutes, 8 workers
    python3 loadtests/soak.py --duration 60        # a short look

What it does:

1. creates a fresh Postgres database on `--pg-url` and starts `visbin serve`
   on it (a free port, a random `VISBIN_API_TOKEN`) with small, given budgets:
   `--cache-bytes` (`VISBIN_CACHE_BYTES`, bins + serialized answers),
   `--period-cache-bytes` (`VISBIN_PERIOD_CACHE_BYTES`, the resident period
   tier), `--block-cache-bytes` (`VISBIN_BLOCK_CACHE_BYTES`) and
   `--period-work-bytes` (`VISBIN_PERIOD_WORK_BYTES`, periods decoded
   outside the tier);
2. uploads schedules of several sizes made by `visbin gen`: two small ones
   (300 blocks over 30 days), the reference schedule (1,500 x 50 x 365 d)
   and `--large-copies` large ones (365 days, 50 periods a block) each sized
   to `--large-fraction` of the period budget, so that together they do not
   fit in it: the period tier has to evict and load again while the mix
   runs. Every upload's summary job is awaited;
3. for `--duration` seconds, `--workers` processes (closed loop, each on its
   own keep-alive connection, renewed every `--requests-per-connection`
   requests) run a mix (`--mix`):
   - `range`: range queries — warm (a fixed set of viewer-like windows per
     schedule shared by all workers: overview, month at 1 h, week at 15 min,
     day at 1 min; some with `If-None-Match`, expecting 304 or, after an
     append, 200), pans (random windows on the origin-0 grids: partial hits)
     and cold (a random width, window and origin: a grid never asked before);
     json/columnar/csv, some with filters, some with `Accept-Encoding`.
     Every 200 is checked: bin count and widened window, q1+…+q4 = visible
     = scheduled + unscheduled in every bin, the `scheduled` filter's zeros;
   - `histogram`: `visibility-histogram` by `num_bins` or
     `bin_duration_minutes`, checked for contiguous bins;
   - `schedule`, `job`, `list`: GETs of schedules, of jobs the worker's
     appends started, of the listing;
   - `append`: 1-5 new blocks (identities never used before), JSON or NDJSON,
     with periods inside the schedule's range and priorities inside its
     priority range; the answer's counts are checked, and for a share of the
     appends the new block is read back (`block_ids=`, 1 h bins around its
     periods: every bin must count it exactly when one of its periods
     overlaps the bin — a stale cache fails this);
   - `refusal`: deliberate refusals, counted apart as expected: an identity
     the worker appended before (409), malformed JSON, `stop < start`, a
     block without priority (400), too many bins (400), an unknown schedule
     (404), an append without the token (401 with `WWW-Authenticate`). Each
     must be `application/problem+json` with exactly that status;
4. every `--sample-interval` seconds samples the server process (`VmRSS`,
   `VmHWM`, `Threads` from /proc/PID/status, the count of /proc/PID/fd),
   `GET /metrics` (`visbin_db_pool_connections{state}`,
   `visbin_cache_memory_bytes`, `visbin_cache_response_bytes`,
   `visbin_period_cache_bytes`, request counts, jobs, period loads) and
   Postgres (`pg_stat_activity` rows of the database);
5. stops the mix, waits for the server to drain (no more active pool
   connections than before the mix, no queued or running job), takes a
   last sample, stops the server with
   SIGTERM (it must exit 0), drops the database, and prints a JSON summary
   and a markdown block for docs/RELIABILITY.md on stdout (`--json`,
   `--markdown`: also into files); progress goes to stderr.

It exits 1 when a check fails:

- **errors**: any unexpected answer — a 5xx (503 included: 8 workers stay
  far below the server's computation queue), a connection error or timeout
  (`--timeout`), a status other than the one expected, an answer that fails
  its checks — or a panic in the server's log;
- **memory**: the highest `VmRSS` sample of the mix, or `VmHWM` (reset by
  writing 5 to /proc/PID/clear_refs after the uploads, so it is the peak of
  the mix itself, between samples too), above
  `--cache-bytes + --period-cache-bytes + --overhead-mib`; also a cache tier
  reporting more bytes than its budget (+5 %: moka evicts asynchronously);
- **growth**: after `--warmup` seconds, the median of the last third of the
  samples against the median of the first third: open fds may grow by at
  most `--fd-slack`, pool connections (active + idle) and the database's
  `pg_stat_activity` rows by at most `--pool-slack`; after the drain, fds
  may exceed the pre-mix count only by the database connections opened
  since (+ `--fd-slack`), and no more pool connections may be active than
  before the mix (the `/metrics` request itself holds one);
- **drain**: jobs still queued or running `--drain-timeout` seconds after
  the mix.

Warnings, not failures: a tier that never came near its budget, a period
tier that never evicted (the test then did not exercise eviction), memory
that the cache metrics do not account for growing from the first to the
last third.

The overhead (`--overhead-mib`, default 200 MiB) is what the process holds
beyond the two budgets it is measured against. Each part has a bound of
its own (a budget, or a count times a size), and `/metrics` reports most
of them:

- block tables: at most `--block-cache-bytes` (16 MiB here; the schedules'
  ~85,000 blocks take ~5 MiB at ~64 bytes a block);
- periods decoded outside the resident tier: at most `--period-work-bytes`
  (64 MiB here; `visbin_period_work_bytes`): the window reads of schedules
  not resident while their computation runs, and loads until the tier holds
  them (with the large schedules at 40 % of the tier, ~25 MiB a set). Not
  charged: the packed rows of a read before they are decoded (about a
  quarter of the decoded size), and a set the tier evicted while a query or
  job still reads it;
- the persisted tier's write queue: at most a quarter of `--cache-bytes`
  (16 MiB here), bounded in extents too;
- work in flight besides periods: up to 8 bin computations at once (more
  wait), each with its counters (≤ 200,000 bins x 7 counts, 5.6 MB) and its
  answer being serialized and compressed; the database connections'
  buffers; parsed append bodies (small here: a few blocks);
- code, static data and the runtime: the binary's text and libraries
  (~20 MiB resident), tokio's worker and blocking threads and actix's
  workers (stacks are touched only as deep as they go);
- the allocator: what jemalloc keeps beyond live bytes
  (`visbin_allocator_bytes` resident minus allocated). Its options
  (`.cargo/config.toml`) return pages unused for a second from a background
  thread, with two arenas: some tens of MiB at these budgets.

That sums to about 180-200 MiB at these budgets, without hiding a leak, which
grows without bound over a long run.
The initial uploads are not measured against the
bound (`VmHWM` is reset after them; their peak is in the JSON as
`upload_phase_hwm_bytes`).
"""
import argparse
import gzip
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import defaultdict, deque

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, Pg, Server, log, pct, request, upload_file, wait_job  # noqa: E402

MIB = 1 << 20
MJD_UNIX = 40587
PERIOD_BYTES = 20  # the resident tier's weight of a period (README, VISBIN_PERIOD_CACHE_BYTES)
DEFAULT_MIX = "range=65,histogram=8,schedule=6,job=4,list=2,append=12,refusal=3"
REFUSALS = ("identity_409", "malformed_400", "stop_before_start_400", "missing_priority_400",
            "too_many_bins_400", "unknown_schedule_404", "no_token_401")
WIDTHS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400]


# ----------------------------------------------------------------- the mix (worker processes)

class Unexpected(Exception):
    """An answer other than the one expected (status, headers or content)."""

    def __init__(self, msg, status=None, body=b"", headers=None):
        super().__init__(msg)
        self.status, self.body, self.headers = status, body, headers or {}


class Client:
    """One keep-alive connection, renewed every `per_conn` requests and after 2 s idle (so a request never
    races the server closing an idle connection)."""

    def __init__(self, base, per_conn, timeout):
        host, port = base.replace("http://", "").split(":")
        self.host, self.port, self.per_conn, self.timeout = host, int(port), per_conn, timeout
        self.conn, self.used, self.last = None, 0, 0.0

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method, path, body=None, headers=None):
        if self.conn is None or self.used >= self.per_conn or time.monotonic() - self.last > 2.0:
            self.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.used = 0
        self.used += 1
        t = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            data = r.read()
        except Exception:
            self.close()
            raise
        ms = (time.perf_counter() - t) * 1e3
        self.last = time.monotonic()
        h = {k.lower(): v for k, v in r.getheaders()}
        if r.will_close:
            self.close()
        return ms, r.status, data, h


def mjd(unix):
    return MJD_UNIX + unix / 86400


def grid(start, end, width, origin):
    """The widened window of DESIGN §4: (first bin's start, bin count)."""
    first = (start - origin) // width * width + origin
    last = (end - 1 - origin) // width * width + origin
    return first, (last - first) // width + 1


def popular(s):
    """Viewer-like queries on one schedule, the same in every worker (so they are warm): the overview,
    months at 1 h, weeks at 15 min, days at 1 min, all on origin 0."""
    rng = random.Random(s["id"] * 7919)
    S, E = s["start"], s["end"]
    span = E - S
    out = []
    ov = next((w for w in (3600, 10800, 21600, 43200, 86400, 7 * 86400) if span / w <= 1000), 7 * 86400)
    out.append((S, E, ov))
    for win, width, n in ((30 * 86400, 3600, 6), (7 * 86400, 900, 8), (86400, 60, 8)):
        for _ in range(n):
            if span <= win:
                a = S
            else:
                a = S + rng.randrange(0, span - win) // 86400 * 86400
            out.append((a, a + win, width))
    return out


class Worker:
    def __init__(self, idx, cfg, slots):
        self.idx, self.cfg, self.slots = idx, cfg, slots
        self.rng = random.Random(cfg["seed"] * 1000003 + idx)
        self.client = Client(cfg["base"], cfg["requests_per_connection"], cfg["timeout"])
        self.auth = {"Authorization": f"Bearer {cfg['token']}"}
        self.scheds = cfg["schedules"]
        self.popular = {s["id"]: popular(s) for s in self.scheds}
        self.recent = deque(maxlen=64)  # (path, ETag, query) of answers this worker had, to revalidate
        self.appended = defaultdict(list)  # schedule id -> identities this worker appended
        self.jobs = deque(maxlen=32)
        self.serial = 0
        self.pending = []  # (kind, status, ms) of the current operation's answers
        self.counts = defaultdict(lambda: defaultdict(int))  # kind -> status -> n
        self.lat = defaultdict(list)  # kind -> ms
        self.errors = []  # the first ones, in detail
        self.n_unexpected = 0
        self.t0 = cfg["t0"]
        kinds, weights = zip(*cfg["mix"].items())
        self.kinds, self.weights = kinds, weights

    # --- bookkeeping

    def record(self, kind, status, ms):
        self.counts[kind][str(status)] += 1
        self.lat[kind].append(ms)
        self.slots[2 * self.idx] += 1

    def unexpected(self, kind, method, path, err):
        if self.pending and self.pending[-1][0] == kind:
            self.pending.pop()  # answered, but wrongly: counted below
        self.n_unexpected += 1
        self.slots[2 * self.idx + 1] += 1
        if isinstance(err, Unexpected):
            status, what = err.status, str(err)
            body, rid = err.body[:400].decode("utf-8", "replace"), err.headers.get("x-request-id")
            self.counts[kind][f"unexpected {status}"] += 1
        else:
            status, what, body, rid = None, f"{type(err).__name__}: {err}", "", None
            self.counts[kind][f"error {type(err).__name__}"] += 1
        if len(self.errors) < 100:
            self.errors.append({"t_s": round(time.time() - self.t0, 1), "worker": self.idx, "kind": kind,
                                "method": method, "path": path[:300], "status": status, "error": what[:400],
                                "body": body, "x_request_id": rid})

    def call(self, kind, method, path, expect, body=None, headers=None):
        """A request whose status must be in `expect`; returns (status, data, headers) or raises Unexpected.
        It is counted when the operation ends, unless a check of its answer failed (then `unexpected` counts it)."""
        ms, status, data, h = self.client.call(method, path, body, headers)
        if status not in expect:
            raise Unexpected(f"status {status}, expected {'/'.join(map(str, expect))}", status, data, h)
        self.pending.append((kind, status, ms))
        return status, data, h

    # --- the operations

    def pick(self):
        return self.rng.choice(self.scheds)

    def op_range(self):
        s, rng = self.pick(), self.rng
        if self.recent and rng.random() < 0.12:
            path, etag, query = rng.choice(self.recent)
            return self.range_request("range_revalidate", path, {"If-None-Match": etag}, query)
        S, E = s["start"], s["end"]
        span = E - S
        r = rng.random()
        if r < 0.40:
            sub = "range_warm"
            a, b, w = rng.choice(self.popular[s["id"]])
            origin = 0
            fmt = rng.choice(("json", "columnar"))
        elif r < 0.65:
            sub = "range_pan"
            w = rng.choice((900, 3600, 86400))
            n = rng.randint(20, 1500)
            a = S + rng.randrange(-span // 20, span) // w * w
            b, origin = a + n * w, 0
            fmt = rng.choice(("json", "columnar", "csv"))
        else:
            sub = "range_cold"
            w = rng.choice(WIDTHS)
            n = rng.randint(10, 2000)
            a = S + rng.randrange(-span // 20, span)
            b = a + n * w
            origin = rng.randrange(1, w) if rng.random() < 0.8 else rng.randrange(-10 * w, 10 * w)
            fmt = rng.choice(("json", "columnar", "csv"))
        params = [("start", a), ("end", b), ("bin", w)]
        if origin:
            params.append(("origin", origin))
        filt = None
        if rng.random() < 0.25:
            f = rng.random()
            if f < 0.35:
                filt = ("scheduled", rng.choice(("true", "false")))
            elif f < 0.65:
                filt = ("priority_min", round(rng.uniform(s["pmin"], s["pmax"]), 2))
            elif f < 0.9:
                filt = ("priority_max", round(rng.uniform(s["pmin"], s["pmax"]), 2))
            elif self.appended[s["id"]]:
                filt = ("block_ids", ",".join(rng.sample(self.appended[s["id"]], min(3, len(self.appended[s["id"]])))))
            else:
                filt = ("scheduled", "true")
            params.append(filt)
        params.append(("format", fmt))
        path = f"/v1/schedules/{s['id']}/bins?" + urllib.parse.urlencode(params)
        headers = {}
        enc = rng.random()
        if enc < 0.25:
            headers["Accept-Encoding"] = "gzip"
        elif enc < 0.35:
            headers["Accept-Encoding"] = "gzip, deflate, br"
        self.range_request(sub, path, headers, (fmt, a, b, w, origin, filt))

    def range_request(self, sub, path, headers, query):
        """A range query: 200 (or, revalidating, 304 — or 200 when an append changed the answer), checked."""
        revalidate = "If-None-Match" in headers
        try:
            ms, status, data, h = self.client.call("GET", path, None, headers)
            expect = (200, 304) if revalidate else (200,)
            if status not in expect:
                raise Unexpected(f"status {status}, expected {'/'.join(map(str, expect))}", status, data, h)
            xc = h.get("x-cache")
            if xc not in ("hit", "partial", "miss"):
                raise Unexpected(f"X-Cache {xc!r}", status, data, h)
            if status == 200:
                self.check_bins(data, h, *query)
                if h.get("etag") and not revalidate:
                    self.recent.append((path, h["etag"], query))
            elif data:
                raise Unexpected("304 with a body", status, data, h)
            self.record(sub, status, ms)
            self.lat[f"range[{xc if status == 200 else 'not_modified'}]"].append(ms)
            self.lat["range (all)"].append(ms)
        except Exception as e:
            self.unexpected(sub, "GET", path, e)

    def check_bins(self, data, h, fmt, a, b, w, origin, filt):
        first, n = grid(a, b, w, origin)
        ce = h.get("content-encoding")
        if ce == "gzip":
            data = gzip.decompress(data)
        elif ce:
            return  # br/zstd: the stdlib cannot decode it; status and headers were checked
        if fmt == "csv":
            lines = data.decode().splitlines()
            if not lines or "visible_count" not in lines[0]:
                raise Unexpected("csv without its header", 200, data, h)
            if len(lines) - 1 != n:
                raise Unexpected(f"csv: {len(lines) - 1} rows, expected {n}", 200, data[:200], h)
            return
        doc = json.loads(data)
        if doc.get("start_unix") != first or doc.get("end_unix") != first + n * w or doc.get("bin_seconds") != w:
            raise Unexpected(f"window {doc.get('start_unix')}..{doc.get('end_unix')} bin {doc.get('bin_seconds')}, "
                             f"expected {first}..{first + n * w} bin {w}", 200, data[:300], h)
        bins = doc["bins"]
        if fmt == "json":
            cols = {k: [x[k] for x in bins] for k in bins[0]} if bins else {}
        else:
            cols = bins
        if len(cols.get("visible_count", [])) != n:
            raise Unexpected(f"{len(cols.get('visible_count', []))} bins, expected {n}", 200, data[:300], h)
        v, s, u = cols["visible_count"], cols["scheduled_visible_count"], cols["unscheduled_visible_count"]
        q = list(zip(cols["priority_q1_count"], cols["priority_q2_count"], cols["priority_q3_count"], cols["priority_q4_count"]))
        for i in range(n):
            if sum(q[i]) != v[i] or s[i] + u[i] != v[i] or v[i] < 0:
                raise Unexpected(f"bin {i}: visible {v[i]}, quartiles {q[i]}, scheduled {s[i]} + unscheduled {u[i]}",
                                 200, data[:300], h)
        if filt == ("scheduled", "true") and any(u):
            raise Unexpected("scheduled=true with unscheduled counts", 200, data[:300], h)
        if filt == ("scheduled", "false") and any(s):
            raise Unexpected("scheduled=false with scheduled counts", 200, data[:300], h)
        if filt and filt[0] == "block_ids" and max(v, default=0) > len(filt[1].split(",")):
            raise Unexpected(f"block_ids={filt[1]}: a bin counts {max(v)} blocks", 200, data[:300], h)

    def op_histogram(self):
        s, rng = self.pick(), self.rng
        if rng.random() < 0.6:
            params = [("num_bins", rng.randint(1, 400))]
        else:
            params = [("bin_duration_minutes", rng.choice((60, 180, 360, 1440, 10080)))]
        if rng.random() < 0.3:
            params.append(rng.choice((("scheduled", "true"), ("scheduled", "false"),
                                      ("priority_min", round(rng.uniform(s["pmin"], s["pmax"]), 2)))))
        path = f"/v1/schedules/{s['id']}/visibility-histogram?" + urllib.parse.urlencode(params)
        try:
            _, data, h = self.call("histogram", "GET", path, (200,))
            bins = json.loads(data)
            if not bins or bins[0]["bin_start_unix"] != s["start"] or bins[-1]["bin_end_unix"] != s["end"]:
                raise Unexpected(f"histogram does not span the range {s['start']}..{s['end']}", 200, data[:300], h)
            for x, y in zip(bins, bins[1:]):
                if x["bin_end_unix"] != y["bin_start_unix"] or x["visible_count"] < 0:
                    raise Unexpected("histogram bins not contiguous", 200, data[:300], h)
        except Exception as e:
            self.unexpected("histogram", "GET", path, e)

    def op_schedule(self):
        s = self.pick()
        path = f"/v1/schedules/{s['id']}"
        try:
            _, data, h = self.call("schedule", "GET", path, (200,))
            doc = json.loads(data)
            if doc.get("schedule_id") != s["id"] or doc.get("blocks", 0) < s["blocks"] or doc.get("version", 0) < 1:
                raise Unexpected("schedule fields", 200, data[:300], h)
        except Exception as e:
            self.unexpected("schedule", "GET", path, e)

    def op_job(self):
        jid = self.rng.choice(self.jobs) if self.jobs else self.pick()["job_id"]
        path = f"/v1/jobs/{jid}"
        try:
            _, data, h = self.call("job", "GET", path, (200,))
            doc = json.loads(data)
            if doc.get("job_id") != jid or doc.get("state") not in ("queued", "running", "done", "failed"):
                raise Unexpected("job fields", 200, data[:300], h)
            if doc["state"] == "failed":
                raise Unexpected(f"job {jid} failed: {doc.get('error')}", 200, data[:300], h)
        except Exception as e:
            self.unexpected("job", "GET", path, e)

    def op_list(self):
        path = f"/v1/schedules?limit={self.rng.randint(1, 10)}"
        try:
            _, data, _ = self.call("list", "GET", path, (200,))
            json.loads(data)
        except Exception as e:
            self.unexpected("list", "GET", path, e)

    def new_block(self, s, ident):
        rng = self.rng
        periods = []
        for _ in range(rng.randint(1, 8)):
            length = rng.randint(600, 6 * 3600)
            a = rng.randrange(s["start"], max(s["start"] + 1, s["end"] - length))
            periods.append((a, min(a + length, s["end"])))
        block = {"original_block_id": ident, "priority": round(rng.uniform(s["pmin"], s["pmax"]), 2),
                 "visibility_periods": [{"start": mjd(a), "stop": mjd(b)} for a, b in periods]}
        if rng.random() < 0.3:
            a, b = periods[0]
            block["scheduled_period"] = {"start": mjd(a), "stop": mjd(min(b, a + 600))}
        return block, periods

    def append_body(self, blocks):
        if self.rng.random() < 0.3:
            return "\n".join(json.dumps(b) for b in blocks).encode(), "application/x-ndjson"
        return json.dumps(blocks).encode(), "application/json"

    def op_append(self):
        s, rng = self.pick(), self.rng
        blocks, all_periods = [], []
        for _ in range(rng.randint(1, 5)):
            self.serial += 1
            ident = f"soak-{self.cfg['run']}-w{self.idx}-{self.serial}"
            b, p = self.new_block(s, ident)
            blocks.append(b)
            all_periods.append((ident, p))
        body, ctype = self.append_body(blocks)
        path = f"/v1/schedules/{s['id']}/blocks"
        try:
            _, data, h = self.call("append", "POST", path, (200,), body, {**self.auth, "Content-Type": ctype})
            doc = json.loads(data)
            n_periods = sum(len(p) for _, p in all_periods)
            if (doc.get("appended_blocks") != len(blocks) or doc.get("appended_periods") != n_periods
                    or doc.get("version", 0) < 2 or not doc.get("job_id")):
                raise Unexpected(f"append answer (sent {len(blocks)} blocks, {n_periods} periods)", 200, data[:400], h)
        except Exception as e:
            self.unexpected("append", "POST", path, e)
            return
        self.jobs.append(doc["job_id"])
        ids = self.appended[s["id"]]
        ids.extend(i for i, _ in all_periods)
        if len(ids) > 200:
            del ids[:len(ids) - 200]
        if rng.random() < self.cfg["verify_share"]:
            self.verify(s, *rng.choice(all_periods))

    def verify(self, s, ident, periods):
        """The appended block, alone, in 1 h bins around its first period: counted exactly where it is visible."""
        a0, b0 = periods[0]
        a, b, w = (a0 - 7200) // 3600 * 3600, b0 + 7200, 3600
        path = (f"/v1/schedules/{s['id']}/bins?start={a}&end={b}&bin={w}&format=columnar&block_ids="
                + urllib.parse.quote(ident))
        try:
            _, data, h = self.call("append_verify", "GET", path, (200,))
            first, n = grid(a, b, w, 0)
            got = json.loads(data)["bins"]["visible_count"]
            want = [int(any(p < first + (k + 1) * w and q > first + k * w for p, q in periods)) for k in range(n)]
            if got != want:
                raise Unexpected(f"block {ident} counted {got}, expected {want} (periods {periods})", 200, data[:400], h)
        except Exception as e:
            self.unexpected("append_verify", "GET", path, e)

    def op_refusal(self):
        rng = self.rng
        which = rng.choice(REFUSALS)
        s = self.pick()
        kind = f"refusal:{which}"
        method, path, body, headers = "POST", f"/v1/schedules/{s['id']}/blocks", None, dict(self.auth)
        headers["Content-Type"] = "application/json"
        if which == "identity_409":
            if not self.appended[s["id"]]:
                return self.op_append()
            block, _ = self.new_block(s, rng.choice(self.appended[s["id"]]))
            body, status = json.dumps([block]).encode(), 409
        elif which == "malformed_400":
            body, status = b'[{"original_block_id": "soak-bad", "priority": 1, "visibility_periods": [{"start": 6', 400
        elif which == "stop_before_start_400":
            self.serial += 1
            block, _ = self.new_block(s, f"soak-{self.cfg['run']}-w{self.idx}-bad{self.serial}")
            p = block["visibility_periods"][0]
            p["start"], p["stop"] = p["stop"], p["start"]
            body, status = json.dumps([block]).encode(), 400
        elif which == "missing_priority_400":
            self.serial += 1
            block, _ = self.new_block(s, f"soak-{self.cfg['run']}-w{self.idx}-bad{self.serial}")
            del block["priority"]
            body, status = json.dumps([block]).encode(), 400
        elif which == "too_many_bins_400":
            method, headers, status = "GET", {}, 400
            path = f"/v1/schedules/{s['id']}/bins?start={s['start']}&end={s['start'] + 30 * 86400}&bin=1"
        elif which == "unknown_schedule_404":
            method, headers, status = "GET", {}, 404
            path = f"/v1/schedules/{987654321 + rng.randrange(1000)}/bins?start=0&end=86400&bin=3600"
        else:  # no_token_401
            self.serial += 1
            block, _ = self.new_block(s, f"soak-{self.cfg['run']}-w{self.idx}-nt{self.serial}")
            body, status = json.dumps([block]).encode(), 401
            headers = {"Content-Type": "application/json"}
        try:
            _, data, h = self.call(kind, method, path, (status,), body, headers)
            if not h.get("content-type", "").startswith("application/problem+json"):
                raise Unexpected(f"refusal with content type {h.get('content-type')!r}", status, data, h)
            doc = json.loads(data)
            if doc.get("status") != status or not doc.get("detail"):
                raise Unexpected("problem body without status/detail", status, data, h)
            if status == 401 and not h.get("www-authenticate", "").lower().startswith("bearer"):
                raise Unexpected("401 without WWW-Authenticate: Bearer", status, data, h)
        except Exception as e:
            self.unexpected(kind, method, path, e)

    def run(self, stop):
        ops = {k: getattr(self, f"op_{k}") for k in self.kinds}
        deadline = self.cfg["deadline"]
        think = self.cfg["think_ms"] / 1e3
        while time.time() < deadline and not stop.is_set():
            kind = self.rng.choices(self.kinds, self.weights)[0]
            before = self.n_unexpected
            try:
                ops[kind]()
            except Exception as e:  # a bug of this script: reported, never hidden
                self.unexpected(kind, "?", "?", e)
            for p in self.pending:
                self.record(*p)
            self.pending.clear()
            if self.n_unexpected > before:
                time.sleep(0.2)  # no tight loop against a dead server
            if think:
                time.sleep(think * self.rng.uniform(0.5, 1.5))
        self.client.close()
        return {"counts": {k: dict(v) for k, v in self.counts.items()}, "lat": dict(self.lat),
                "errors": self.errors, "unexpected": self.n_unexpected}


def worker_main(idx, cfg, slots, stop, out):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    try:
        out.put((idx, Worker(idx, cfg, slots).run(stop)))
    except BaseException as e:
        out.put((idx, {"crash": f"{type(e).__name__}: {e}"}))


# ----------------------------------------------------------------- sampling

METRIC_LINE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


def parse_metrics(text):
    out = defaultdict(float)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = METRIC_LINE.match(line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] += float(m.group(3))
            except ValueError:
                pass
    return out


def metric(ms, name, **labels):
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for (n, lab), v in ms.items():
        if n == name and all(f'{k}="{val}"' in lab for k, val in labels.items()):
            total += v
    return total


class Sampler:
    def __init__(self, server, pg, db):
        self.server, self.pg, self.db = server, pg, db
        self.pid = server.proc.pid
        self.samples = []
        self.errors = []
        self.t0 = time.time()
        self.prev = None

    def proc_status(self):
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "Threads":
                    out[k] = int(v)
        return out

    def reset_hwm(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError as e:
            log(f"could not reset VmHWM ({e}); the peak then includes the uploads")
            return False

    def sample(self, phase, requests_sent=None, unexpected=None, keep=True):
        st = self.proc_status()
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        _, status, data, _ = request(self.server.base, "GET", "/metrics", timeout=30)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        m = parse_metrics(data.decode())
        try:
            pg_rows = self.pg.run(f"SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                                  f"WHERE datname = '{self.db}'").strip().split("|")
            pg_conns, pg_active = int(pg_rows[0]), int(pg_rows[1])
        except subprocess.CalledProcessError:
            pg_conns = pg_active = None
        now = time.time()
        http_total = metric(m, "visbin_http_request_duration_seconds_count")
        http_5xx = sum(v for (n, lab), v in m.items()
                       if n == "visbin_http_request_duration_seconds_count" and re.search(r'status="5', lab))
        s = {
            "t_s": round(now - self.t0, 1), "phase": phase,
            "rss_bytes": st.get("VmRSS"), "hwm_bytes": st.get("VmHWM"), "threads": st.get("Threads"), "fds": fds,
            "pool_active": metric(m, "visbin_db_pool_connections", state="active"),
            "pool_idle": metric(m, "visbin_db_pool_connections", state="idle"),
            "pg_conns": pg_conns, "pg_active": pg_active,
            "cache_memory_bytes": metric(m, "visbin_cache_memory_bytes"),
            "cache_memory_capacity_bytes": metric(m, "visbin_cache_memory_capacity_bytes"),
            "cache_memory_entries": metric(m, "visbin_cache_memory_entries"),
            "cache_response_bytes": metric(m, "visbin_cache_response_bytes"),
            "period_cache_bytes": metric(m, "visbin_period_cache_bytes"),
            "period_work_bytes": metric(m, "visbin_period_work_bytes"),
            "allocated_bytes": metric(m, "visbin_allocator_bytes", kind="allocated"),
            "allocator_resident_bytes": metric(m, "visbin_allocator_bytes", kind="resident"),
            "period_cache_capacity_bytes": metric(m, "visbin_period_cache_capacity_bytes"),
            "period_loads_full": metric(m, "visbin_period_loads_total", kind="full"),
            "period_loads_delta": metric(m, "visbin_period_loads_total", kind="delta"),
            "period_loads_window": metric(m, "visbin_period_loads_total", kind="window"),
            "period_lookups_miss": metric(m, "visbin_period_cache_lookups_total", outcome="miss"),
            "period_lookups_bypass": metric(m, "visbin_period_cache_lookups_total", outcome="bypass"),
            "jobs_queued": metric(m, "visbin_jobs", state="queued"),
            "jobs_running": metric(m, "visbin_jobs", state="running"),
            "jobs_failed_total": metric(m, "visbin_jobs_finished_total", state="failed"),
            "store_writes_dropped_total": metric(m, "visbin_cache_store_writes_dropped_total"),
            "store_writes_written_total": metric(m, "visbin_cache_store_writes_total", outcome="written"),
            "http_requests_total": http_total, "http_5xx_total": http_5xx,
            "client_requests": requests_sent, "client_unexpected": unexpected,
        }
        s["pool_total"] = s["pool_active"] + s["pool_idle"]
        if not keep:
            return s
        if self.prev is not None and now > self.prev[0]:
            s["req_per_s"] = round((http_total - self.prev[1]) / (now - self.prev[0]), 1)
        self.prev = (now, http_total)
        self.samples.append(s)
        return s


def fmt_sample(s):
    mib = lambda v: "–" if v is None else f"{v / MIB:.0f}"  # noqa: E731
    return (f"t={s['t_s']:.0f}s {s['phase']}: {s.get('req_per_s', 0):.0f} req/s, RSS {mib(s['rss_bytes'])} MiB "
            f"(peak {mib(s['hwm_bytes'])}), fds {s['fds']}, threads {s['threads']}, pool {s['pool_active']:.0f}+"
            f"{s['pool_idle']:.0f} (pg {s['pg_conns']}), bins {mib(s['cache_memory_bytes'])} + answers "
            f"{mib(s['cache_response_bytes'])} + periods {mib(s['period_cache_bytes'])} MiB, allocated "
            f"{mib(s['allocated_bytes'])} of {mib(s['allocator_resident_bytes'])} MiB resident, jobs queued "
            f"{s['jobs_queued']:.0f}, unexpected {s['client_unexpected']}")


# ----------------------------------------------------------------- analysis

def lat_summary(ms):
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2)} if ms else {"n": 0}


def thirds(samples, key):
    vals = [s[key] for s in samples if s.get(key) is not None]
    k = len(vals) // 3
    if k < 1:
        return None
    return {"first_third_median": statistics.median(vals[:k]), "last_third_median": statistics.median(vals[-k:]),
            "growth": statistics.median(vals[-k:]) - statistics.median(vals[:k]), "min": min(vals), "max": max(vals),
            "samples": len(vals)}


def analyse(args, samples, results, uploads, hwm_reset, exit_code, panics, log_lines):
    checks, warnings = [], []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    counts = defaultdict(lambda: defaultdict(int))
    lat = defaultdict(list)
    errors, unexpected, crashes = [], 0, []
    for r in results:
        if "crash" in r:
            crashes.append(r["crash"])
            continue
        for k, st in r["counts"].items():
            for code, n in st.items():
                counts[k][code] += n
        for k, v in r["lat"].items():
            lat[k].extend(v)
        errors.extend(r["errors"])
        unexpected += r["unexpected"]
    errors.sort(key=lambda e: e["t_s"])
    total = sum(sum(v.values()) for v in counts.values())
    refusals = sum(sum(v.values()) for k, v in counts.items() if k.startswith("refusal:"))
    check("no unexpected answers", unexpected == 0 and not crashes,
          f"{unexpected} unexpected of {total} requests ({refusals} deliberate refusals answered as expected)"
          + (f"; worker crashes: {crashes}" if crashes else ""))
    check("no panic in the server log", not panics, f"{len(panics)} panics" + (f": {panics[0]}" if panics else ""))
    check("graceful exit on SIGTERM", exit_code == 0, f"exit code {exit_code}")

    mix = [s for s in samples if s["phase"] in ("mix", "end")]
    post = [s for s in samples if s["phase"] == "mix" and s["t_s"] >= samples[0]["t_s"] + args.warmup]
    bound = args.cache_bytes + args.period_cache_bytes + args.overhead_mib * MIB
    top = max(mix, key=lambda s: s["rss_bytes"], default=None)
    rss_max = top["rss_bytes"] if top else 0
    cached = (top["cache_memory_bytes"] + top["cache_response_bytes"] + top["period_cache_bytes"]) if top else 0
    hwm_end = mix[-1]["hwm_bytes"] if mix else 0
    peak = max(rss_max, hwm_end) if hwm_reset else rss_max
    check("RSS within budgets + overhead", peak <= bound,
          f"max VmRSS {rss_max / MIB:.0f} MiB (the cache tiers reported {cached / MIB:.0f} MiB then), "
          f"VmHWM of the mix {hwm_end / MIB:.0f} MiB"
          + ("" if hwm_reset else " (not reset: includes the uploads, not checked)")
          + f"; bound {bound / MIB:.0f} MiB = cache {args.cache_bytes / MIB:.0f} + periods "
          f"{args.period_cache_bytes / MIB:.0f} + overhead {args.overhead_mib} MiB")
    for key, cap_key, label in (("cache_memory_bytes", "cache_memory_capacity_bytes", "bin tier"),
                                ("period_cache_bytes", "period_cache_capacity_bytes", "period tier")):
        mx = max((s[key] for s in mix), default=0)
        cap = max((s[cap_key] for s in mix), default=0)
        check(f"{label} within its budget", cap == 0 or mx <= cap * 1.05,
              f"max {mx / MIB:.1f} MiB of {cap / MIB:.1f} MiB")
        if cap and mx < 0.5 * cap:
            warnings.append(f"the {label} reached only {mx / MIB:.1f} of {cap / MIB:.1f} MiB: its budget was not exercised")
    resp_cap = args.cache_bytes / 8
    resp_max = max((s["cache_response_bytes"] for s in mix), default=0)
    check("answer tier within its budget", resp_max <= resp_cap * 1.05,
          f"max {resp_max / MIB:.1f} MiB of {resp_cap / MIB:.1f} MiB (1/8 of the cache budget)")

    growth = {}
    if len(post) >= 3:
        for key, slack in (("fds", args.fd_slack), ("pool_total", args.pool_slack), ("pg_conns", args.pool_slack)):
            g = thirds(post, key)
            growth[key] = g
            if g is not None:
                check(f"no growth of {key}", g["growth"] <= slack,
                      f"median {g['first_third_median']:g} (first third) -> {g['last_third_median']:g} (last third), "
                      f"range {g['min']:g}..{g['max']:g}, slack {slack}")
        for key in ("threads", "rss_bytes"):
            growth[key] = thirds(post, key)
        for s in post:
            s["unaccounted_bytes"] = s["rss_bytes"] - s["cache_memory_bytes"] - s["cache_response_bytes"] - s["period_cache_bytes"]
        g = thirds(post, "unaccounted_bytes")
        growth["unaccounted_bytes"] = g
        if g and g["growth"] > 32 * MIB:
            warnings.append(f"RSS not accounted for by the cache metrics grew by {g['growth'] / MIB:.0f} MiB "
                            f"from the first to the last third ({g['first_third_median'] / MIB:.0f} -> "
                            f"{g['last_third_median'] / MIB:.0f} MiB)")
    else:
        check("enough samples after the warm-up", False,
              f"{len(post)} samples after {args.warmup} s of warm-up; need 3 (lower --sample-interval or --warmup)")

    before = next((s for s in samples if s["phase"] == "before"), None)
    after = next((s for s in reversed(samples) if s["phase"] == "after"), None)
    if before and after:
        extra_db = (after["pg_conns"] or 0) - (before["pg_conns"] or 0)
        check("fds back to the pre-mix level after the drain", after["fds"] - before["fds"] - max(0, extra_db) <= args.fd_slack,
              f"{before['fds']} before, {after['fds']} after; database connections {before['pg_conns']} -> "
              f"{after['pg_conns']}; slack {args.fd_slack}")
        check("no pool connection left active", after["pool_active"] <= before["pool_active"],
              f"{after['pool_active']:.0f} active after the drain, {before['pool_active']:.0f} before the mix "
              "(the /metrics request itself holds one)")
        check("job queue drained", after["jobs_queued"] + after["jobs_running"] == 0,
              f"{after['jobs_queued']:.0f} queued, {after['jobs_running']:.0f} running {args.drain_timeout} s after the mix")
        check("no failed job", after["jobs_failed_total"] == 0, f"{after['jobs_failed_total']:.0f} failed jobs")
        server_5xx = after["http_5xx_total"] - before["http_5xx_total"]
        check("no 5xx in the server's own metrics", server_5xx == 0, f"{server_5xx:.0f} answers with a 5xx status")
        reloads = after["period_loads_full"] - before["period_loads_full"]
        if reloads == 0 and after["period_lookups_bypass"] - before["period_lookups_bypass"] == 0:
            warnings.append("the period tier loaded no schedule during the mix: eviction was not exercised")
        dropped = after["store_writes_dropped_total"] - before["store_writes_dropped_total"]
        written = after["store_writes_written_total"] - before["store_writes_written_total"]
        if dropped:
            warnings.append(f"{dropped:.0f} persisted-tier writes were dropped (queue full), {written:.0f} written")
    if log_lines["error"]:
        warnings.append(f"{log_lines['error']} ERROR lines in the server log (first: {log_lines['first_error']})")

    req = {}
    for k in sorted(set(counts) | set(lat)):
        st = dict(sorted(counts.get(k, {}).items()))
        req[k] = {"requests": sum(st.values()), "statuses": st, **lat_summary(lat.get(k, []))}
    ok = all(c["ok"] for c in checks)
    return {"ok": ok, "checks": checks, "warnings": warnings, "requests_total": total, "refusals": refusals,
            "unexpected": unexpected, "requests": req, "growth": growth, "errors": errors[:50],
            "rss_bound_bytes": bound, "rss_peak_bytes": peak}


def command_line(args):
    """The command that reproduces the run (paths and the database URL left to the environment)."""
    parts = ["python3 loadtests/soak.py"]
    for name in ("duration", "workers", "cache_bytes", "period_cache_bytes", "block_cache_bytes", "period_work_bytes", "db_max_connections",
                 "overhead_mib", "large_copies", "large_fraction", "mix", "seed"):
        v = getattr(args, name)
        if name == "mix" and v == DEFAULT_MIX:
            continue
        parts.append(f"--{name.replace('_', '-')} {v}")
    parts += [f"--server-arg={a}" for a in args.server_arg]
    return " ".join(parts)


def markdown(args, meta, a, samples, uploads):
    mib = lambda v: f"{v / MIB:.0f}"  # noqa: E731
    L = [f"### Soak: {args.duration / 60:g} min of mixed reads and appends on Postgres", ""]
    L.append(f"`{command_line(args)}` — {meta['date']}, {meta['machine']}, visbin {meta['visbin_version']}, "
             f"{meta['postgres']}. {len(uploads)} schedules ("
             + ", ".join(f"{u['label']} {u['blocks']:,} blocks / {u['periods']:,} periods" for u in uploads)
             + f"; ~{meta['resident_estimate_bytes'] / MIB:.0f} MiB of resident periods against a "
             f"{mib(args.period_cache_bytes)} MiB budget), {args.workers} closed-loop workers, "
             f"{a['requests_total']:,} requests ({a['requests_total'] / args.duration:.0f}/s).")
    L += ["", f"**{'PASS' if a['ok'] else 'FAIL'}**", "", "| check | result |", "|---|---|"]
    for c in a["checks"]:
        L.append(f"| {'✅' if c['ok'] else '❌'} {c['check']} | {c['detail']} |")
    for w in a["warnings"]:
        L.append(f"| ⚠️ warning | {w} |")
    L += ["", "| requests | n | statuses | p50 ms | p95 ms | p99 ms |", "|---|---:|---|---:|---:|---:|"]
    f1 = lambda r, k: f"{r[k]:.1f}" if r.get("n") else "–"  # noqa: E731
    for k, r in a["requests"].items():
        st = ", ".join(f"{c}: {n}" for c, n in r["statuses"].items()) or "–"
        L.append(f"| {k} | {r['requests'] or r['n']:,} | {st} | {f1(r, 'p50_ms')} | {f1(r, 'p95_ms')} | {f1(r, 'p99_ms')} |")
    L += ["", "| t s | req/s | RSS MiB | peak MiB | fds | threads | pool act+idle | pg conns | bins MiB | answers MiB | periods MiB | jobs queued |",
          "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    step = max(1, len(samples) // 20)
    shown = [s for i, s in enumerate(samples) if i % step == 0 or s["phase"] != "mix"]
    for s in shown:
        L.append(f"| {s['t_s']:.0f}{'' if s['phase'] == 'mix' else ' (' + s['phase'] + ')'} | {s.get('req_per_s', '–')} | "
                 f"{mib(s['rss_bytes'])} | {mib(s['hwm_bytes'])} | {s['fds']} | {s['threads']} | "
                 f"{s['pool_active']:.0f}+{s['pool_idle']:.0f} | {s['pg_conns']} | {s['cache_memory_bytes'] / MIB:.1f} | "
                 f"{s['cache_response_bytes'] / MIB:.1f} | {s['period_cache_bytes'] / MIB:.1f} | {s['jobs_queued']:.0f} |")
    if a["errors"]:
        L += ["", "First unexpected answers:", ""]
        for e in a["errors"][:5]:
            L.append(f"- t={e['t_s']} s `{e['method']} {e['path']}` → {e['status']}: {e['error']} {e['body'][:200]!r}")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------- main

def scan_log(path):
    panics, n_err, first = [], 0, None
    with open(path, errors="replace") as f:
        for line in f:
            if "panicked" in line:
                panics.append(line.strip()[:300])
            if re.search(r"\bERROR\b|\"level\":\s*\"ERROR\"", line):
                n_err += 1
                first = first or line.strip()[:300]
    return panics, {"error": n_err, "first_error": first}


def gen(visbin, out, blocks, periods, days, seed, fmt):
    subprocess.run([visbin, "gen", "--blocks", str(blocks), "--periods", str(periods), "--days", str(days),
                    "--seed", str(seed), "--format", fmt, "-o", out], check=True)


def parse_mix(text):
    mix = {}
    for part in text.split(","):
        k, _, w = part.partition("=")
        if k.strip() not in ("range", "histogram", "schedule", "job", "list", "append", "refusal"):
            raise SystemExit(f"--mix: unknown kind {k!r}")
        mix[k.strip()] = float(w)
    return mix


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600, help="seconds of mixed load (default 600)")
    ap.add_argument("--workers", type=int, default=8, help="closed-loop worker processes (default 8)")
    ap.add_argument("--pg-url", default=os.environ.get("VISBIN_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432"),
                    help="Postgres server (default $VISBIN_TEST_PG_URL, else postgres://postgres@127.0.0.1:5432)")
    ap.add_argument("--visbin", default=os.environ.get("VISBIN", os.path.join(ROOT, "target", "release", "visbin")),
                    help="the binary (default $VISBIN, else target/release/visbin)")
    ap.add_argument("--cache-bytes", type=int, default=64 * MIB, help="VISBIN_CACHE_BYTES (default 64 MiB)")
    ap.add_argument("--period-cache-bytes", type=int, default=64 * MIB, help="VISBIN_PERIOD_CACHE_BYTES (default 64 MiB)")
    ap.add_argument("--block-cache-bytes", type=int, default=16 * MIB, help="VISBIN_BLOCK_CACHE_BYTES (default 16 MiB)")
    ap.add_argument("--period-work-bytes", type=int, default=64 * MIB, help="VISBIN_PERIOD_WORK_BYTES (default 64 MiB)")
    ap.add_argument("--db-max-connections", type=int, default=16, help="VISBIN_DB_MAX_CONNECTIONS (default 16)")
    ap.add_argument("--overhead-mib", type=int, default=200, help="allowed RSS beyond the two budgets (default 200)")
    ap.add_argument("--large-copies", type=int, default=3, help="large schedules (default 3)")
    ap.add_argument("--large-fraction", type=float, default=0.4,
                    help="resident size of each large schedule, as a share of the period budget (default 0.4)")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"weights of the operations (default {DEFAULT_MIX})")
    ap.add_argument("--verify-share", type=float, default=0.3, help="share of appends read back (default 0.3)")
    ap.add_argument("--requests-per-connection", type=int, default=200, help="keep-alive requests per connection (default 200)")
    ap.add_argument("--think-ms", type=float, default=0, help="mean pause between a worker's requests (default 0)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds before a request counts as failed (default 60)")
    ap.add_argument("--sample-interval", type=float, default=10, help="seconds between samples (default 10)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of the mix not compared for growth (default: 10%% of --duration, at least 2 samples)")
    ap.add_argument("--fd-slack", type=int, default=4, help="allowed growth of open fds (default 4)")
    ap.add_argument("--pool-slack", type=int, default=2, help="allowed growth of pool/database connections (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=120, help="seconds for the job queue to drain (default 120)")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="one more argument of `visbin serve` (repeatable: --server-arg=--cache-write-queue=64)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the JSON summary (with every sample) here too")
    ap.add_argument("--markdown", help="write the markdown block here too")
    ap.add_argument("--workdir", help="keep data and the server log here (default: a temporary folder, removed)")
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = max(2 * args.sample_interval, 0.1 * args.duration)
    mix = parse_mix(args.mix)
    if not os.access(args.visbin, os.X_OK):
        raise SystemExit(f"no visbin binary at {args.visbin} (cargo build --release, or --visbin / $VISBIN)")

    workdir = args.workdir or tempfile.mkdtemp(prefix="visbin-soak-")
    os.makedirs(workdir, exist_ok=True)
    pg = Pg(args.pg_url)
    run = f"{os.getpid()}{int(time.time()) % 100000}"
    db = f"visbin_soak_{run}"
    token = secrets.token_hex(16)
    server = None
    exit_code = None
    try:
        # --- data
        per_block = 50
        large_blocks = max(100, int(args.large_fraction * args.period_cache_bytes / (PERIOD_BYTES * per_block)))
        specs = [("small", 300, 20, 30, "json", 2), ("reference", 1500, 50, 365, "json", 1),
                 ("large", large_blocks, per_block, 365, "ndjson", args.large_copies)]
        files = []
        for i, (label, blocks, periods, days, fmt, copies) in enumerate(specs):
            path = os.path.join(workdir, f"{label}.{fmt}")
            gen(args.visbin, path, blocks, periods, days, args.seed + i, fmt)
            files.append((label, path, fmt, copies))
            log(f"generated {label}: {blocks} blocks x ~{periods} periods over {days} days ({os.path.getsize(path) / MIB:.1f} MiB {fmt})")

        # --- server
        pg.create(db)
        extra = ["--cache-bytes", str(args.cache_bytes), "--period-cache-bytes", str(args.period_cache_bytes),
                 "--block-cache-bytes", str(args.block_cache_bytes),
                 "--period-work-bytes", str(args.period_work_bytes), "--db-max-connections", str(args.db_max_connections),
                 "--api-token", token, *args.server_arg]
        server = Server(args.visbin, pg.db_url(db), workdir, "soak-server", extra=extra)
        log(f"visbin serve on {server.base} (pid {server.proc.pid}), database {db}")

        # --- uploads
        uploads, schedules = [], []
        auth = {"Authorization": f"Bearer {token}"}
        for label, path, fmt, copies in files:
            for c in range(copies):
                ms, up = upload_file(server.base, path, fmt, f"soak-{run}-{label}{c}-", headers=auth)
                job_s = wait_job(server.base, up["job_id"])
                _, _, data, _ = request(server.base, "GET", f"/v1/schedules/{up['schedule_id']}")
                doc = json.loads(data)
                summ = doc["summary"] or {}
                uploads.append({"label": label, "schedule_id": up["schedule_id"], "blocks": up["blocks"],
                                "periods": up["periods"], "upload_ms": round(ms, 1), "summary_job_s": round(job_s, 2),
                                "resident_estimate_bytes": up["periods"] * PERIOD_BYTES})
                schedules.append({"id": up["schedule_id"], "label": label, "start": doc["start_unix"], "end": doc["end_unix"],
                                  "blocks": doc["blocks"], "job_id": doc["job_id"],
                                  "pmin": summ.get("priority_min", 0.0), "pmax": summ.get("priority_max", 10.0)})
                log(f"uploaded {label} copy {c}: schedule {up['schedule_id']}, {up['blocks']} blocks, {up['periods']} periods, "
                    f"{ms:.0f} ms + summary {job_s:.1f} s")
        resident = sum(u["resident_estimate_bytes"] for u in uploads)
        if resident <= args.period_cache_bytes:
            log(f"warning: the schedules' periods (~{resident / MIB:.0f} MiB) fit in the period budget: no eviction")

        # --- the mix
        sampler = Sampler(server, pg, db)
        upload_peak = sampler.proc_status().get("VmHWM")
        hwm_reset = sampler.reset_hwm()
        base_active = sampler.sample("before", 0, 0)["pool_active"]  # /metrics itself holds one (database_up)
        log(fmt_sample(sampler.samples[-1]))
        ctx = mp.get_context("fork")
        slots = ctx.Array("q", 2 * args.workers, lock=False)
        stop = ctx.Event()
        out = ctx.Queue()
        t0 = time.time()
        cfg = {"base": server.base, "token": token, "schedules": schedules, "seed": args.seed, "run": run,
               "t0": t0, "deadline": t0 + args.duration, "mix": mix, "verify_share": args.verify_share,
               "requests_per_connection": args.requests_per_connection, "timeout": args.timeout,
               "think_ms": args.think_ms}
        procs = [ctx.Process(target=worker_main, args=(i, cfg, slots, stop, out), daemon=True) for i in range(args.workers)]
        for p in procs:
            p.start()
        log(f"mix: {args.workers} workers for {args.duration} s, a sample every {args.sample_interval:g} s")
        results = {}
        try:
            next_t = t0 + args.sample_interval
            while time.time() < t0 + args.duration:
                time.sleep(max(0, min(next_t, t0 + args.duration) - time.time()))
                if server.proc.poll() is not None:
                    log(f"the server exited ({server.proc.returncode}) during the mix")
                    stop.set()
                    break
                if time.time() >= next_t - 0.01:
                    sent = sum(slots[2 * i] for i in range(args.workers))
                    bad = sum(slots[2 * i + 1] for i in range(args.workers))
                    try:
                        log(fmt_sample(sampler.sample("mix", sent, bad)))
                    except Exception as e:  # /metrics did not answer: a failure of the server, reported
                        sampler.errors.append(f"t={time.time() - t0:.0f}s: {type(e).__name__}: {e}")
                        log(f"sample failed: {sampler.errors[-1]}")
                    next_t += args.sample_interval
        except KeyboardInterrupt:
            log("interrupted: stopping the workers")
            stop.set()
        while len(results) < len(procs):
            try:
                idx, res = out.get(timeout=args.timeout + 30)
            except Exception:
                log("a worker did not report")
                break
            results[idx] = res
        for p in procs:
            p.join(5)
        sent = sum(slots[2 * i] for i in range(args.workers))
        bad = sum(slots[2 * i + 1] for i in range(args.workers))
        if server.proc.poll() is None:
            log(fmt_sample(sampler.sample("end", sent, bad)))  # the workers have stopped
            # --- drain
            t_drain = time.time()
            while True:
                time.sleep(1)
                s = sampler.sample("drain", sent, bad, keep=False)
                idle = s["pool_active"] <= base_active and s["jobs_queued"] + s["jobs_running"] == 0
                if idle or time.time() - t_drain > args.drain_timeout:
                    break
            log(f"drained in {time.time() - t_drain:.0f} s")
            time.sleep(2)
            log(fmt_sample(sampler.sample("after", sent, bad)))
        samples = sampler.samples

        # --- meta
        _, _, mdata, _ = request(server.base, "GET", "/metrics") if server.proc.poll() is None else (0, 0, b"", {})
        vm = re.search(r'visbin_build_info\{version="([^"]+)"', mdata.decode())
        meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{os.cpu_count()} cores, "
                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / (1 << 30):.0f} GiB",
                "visbin_version": vm.group(1) if vm else "?",
                "postgres": "PostgreSQL " + pg.run("SHOW server_version").strip().split()[0],
                "database_bytes": int(pg.run("SELECT pg_database_size(current_database())", db).strip()),
                "resident_estimate_bytes": resident, "upload_phase_hwm_bytes": upload_peak,
                "command": command_line(args)}
        server.stop()
        exit_code = server.proc.returncode
        panics, log_lines = scan_log(server.log_path)
        a = analyse(args, samples, [results[i] for i in sorted(results)], uploads, hwm_reset, exit_code, panics, log_lines)
        if sampler.errors:
            a["checks"].append({"check": "every sample answered", "ok": False,
                                "detail": f"{len(sampler.errors)} failed: {sampler.errors[0]}"})
            a["ok"] = False
        if len(results) < len(procs):
            a["checks"].append({"check": "every worker reported", "ok": False, "detail": f"{len(results)} of {len(procs)}"})
            a["ok"] = False
        summary = {"ok": a["ok"], "meta": meta, "settings": {k: v for k, v in vars(args).items()
                                                              if k not in ("pg_url", "visbin", "json", "markdown", "workdir")},
                   "uploads": uploads, **{k: v for k, v in a.items() if k != "ok"}, "samples": samples}
        md = markdown(args, meta, a, samples, uploads)
        text = json.dumps(summary, indent=1)
        print(text)
        print()
        print(md, end="")
        if args.json:
            with open(args.json, "w") as f:
                f.write(text + "\n")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(md)
        for c in a["checks"]:
            if not c["ok"]:
                log(f"FAILED: {c['check']}: {c['detail']}")
        for w in a["warnings"]:
            log(f"warning: {w}")
        log("PASS" if a["ok"] else "FAIL")
        return 0 if a["ok"] else 1
    finally:
        if server is not None:
            server.stop()
        pg.drop(db)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
