// k6: what the viewer page does with one schedule, per VU, again and again.
//
// A session (one iteration): open the schedule over its whole range at a
// coarse width (at most CHART_BINS bins); zoom into a month at 1 h, a week
// of it at 15 min, a day of that at 1 min; pan the day half a window left
// and right; toggle filters on the week (priority_min, priority_max,
// scheduled=true, scheduled=false); revisit the month, the overview and the
// day. Every bins request is tagged with its zoom level (overview, month,
// week, day), its step (open, zoom, pan, filter, revisit) and, once
// answered, its X-Cache (hit, partial, miss; not_modified for a 304), so the
// thresholds hold hits, partial hits and misses to different budgets.
//
//   bash loadtests/gen_data.sh
//   BASE_URL=http://127.0.0.1:8080 k6 run loadtests/progressive.js
//   BASE_URL=... SCHEDULE_ID=7 k6 run loadtests/progressive.js   # an existing schedule
//
// Settings: BASE_URL, TOKEN, DATA_DIR, VIEW_FILE, VIEW_SIZE, SCHEDULE_ID,
// VUS, DURATION, ITERATIONS, MAX_DURATION, THINK, CHART_BINS, MONTH_BIN,
// WEEK_BIN, DAY_BIN, FORMAT, REVALIDATE, ACCEPT_ENCODING, HIT_P95_MS,
// HIT_P99_MS, PARTIAL_P95_MS, PARTIAL_P99_MS, MISS_P95_MS, MISS_P99_MS,
// VIEW_P95_MS, VIEW_P99_MS, CHECK_HTTP_RULES, ERROR_RATE, CHECKS_MIN,
// ABORT_ON_FAIL, CLEANUP, SUMMARY_DIR, SUMMARY_FILE (README.md).
import http from 'k6/http';
import { check, group, sleep } from 'k6';
import { Rate, Trend } from 'k6/metrics';
import {
  BASE_URL, DAY, env, envBool, envInt, envNum, envDuration, dataFile, parseManifest, pickFile, createSchedule,
  readSchedule, requireReady, runId, deleteSchedule, widthFor, seconds, randomWindow, binsQuery, parseBins,
  binProblems, cacheOf, jsonOf, warnOnce, summaryOutputs, summaryTrendStats, threshold, valuesOf,
} from './lib/common.js';

const SCHEDULE_ID = envInt('SCHEDULE_ID', 0);
const manifest = SCHEDULE_ID ? null : parseManifest(open(dataFile('manifest.json')));
const viewFile = manifest ? pickFile(manifest, env('VIEW_FILE', ''), env('VIEW_SIZE', 'reference')) : null;
// Only setup() (VU 0 in k6) uploads: the other VUs need not hold the file.
const viewBody = viewFile && __VU === 0 ? open(dataFile(viewFile.file), 'b') : null;

const VUS = envInt('VUS', 5);
const ITERATIONS = envInt('ITERATIONS', 0);
const THINK = envNum('THINK', 1);
const CHART_BINS = envInt('CHART_BINS', 1000);
const MONTH_BIN = seconds(env('MONTH_BIN', '1h'));
const WEEK_BIN = seconds(env('WEEK_BIN', '15m'));
const DAY_BIN = seconds(env('DAY_BIN', '1m'));
const FORMAT = env('FORMAT', 'columnar');
if (!['json', 'columnar', 'csv'].includes(FORMAT)) throw new Error(`FORMAT=${FORMAT}: json, columnar or csv`);
const REVALIDATE = envBool('REVALIDATE', true);
const ACCEPT_ENCODING = env('ACCEPT_ENCODING', 'gzip, deflate, br');
// DESIGN §5 revalidation and compression rules as checks (their shares are
// always reported, as bins_etag and bins_compressed).
const CHECK_HTTP_RULES = envBool('CHECK_HTTP_RULES', true);
const ERROR_RATE = envNum('ERROR_RATE', 0.01);

const ms = (/** @type {string} */ name, /** @type {number} */ dflt) => envNum(name, dflt);

/** @type {import('k6/options').Options} */
export const options = {
  scenarios: {
    viewers: ITERATIONS > 0
      ? { executor: 'per-vu-iterations', vus: VUS, iterations: ITERATIONS, maxDuration: envDuration('MAX_DURATION', '30m') }
      : { executor: 'constant-vus', vus: VUS, duration: envDuration('DURATION', '1m') },
  },
  thresholds: {
    // Every view, whatever its cache outcome: the server's range-query SLO.
    bins_duration: [threshold(`p(95)<${ms('VIEW_P95_MS', 300)}`), threshold(`p(99)<${ms('VIEW_P99_MS', 500)}`)],
    // Hits must be far faster than misses: separate, much tighter budgets.
    'bins_duration{cache:hit}': [threshold(`p(95)<${ms('HIT_P95_MS', 25)}`), threshold(`p(99)<${ms('HIT_P99_MS', 50)}`)],
    'bins_duration{cache:partial}': [threshold(`p(95)<${ms('PARTIAL_P95_MS', 250)}`), threshold(`p(99)<${ms('PARTIAL_P99_MS', 500)}`)],
    'bins_duration{cache:miss}': [threshold(`p(95)<${ms('MISS_P95_MS', 300)}`), threshold(`p(99)<${ms('MISS_P99_MS', 500)}`)],
    'bins_duration{cache:not_modified}': [threshold(`p(95)<${ms('HIT_P95_MS', 25)}`)],
    'bins_duration{zoom:overview}': [`p(95)<${ms('VIEW_P95_MS', 300)}`],
    'bins_duration{zoom:month}': [`p(95)<${ms('VIEW_P95_MS', 300)}`],
    'bins_duration{zoom:week}': [`p(95)<${ms('VIEW_P95_MS', 300)}`],
    'bins_duration{zoom:day}': [`p(95)<${ms('VIEW_P95_MS', 300)}`],
    http_req_failed: [threshold(`rate<${ERROR_RATE}`)],
    checks: [`rate>${envNum('CHECKS_MIN', 0.99)}`],
  },
  summaryTrendStats,
};

const binsDuration = new Trend('bins_duration', true);
const cacheHit = new Rate('bins_cache_hit');
const serverCache = new Trend('server_timing_cache', true);
const serverStore = new Trend('server_timing_store', true);
const serverCompute = new Trend('server_timing_compute', true);
const etagShare = new Rate('bins_etag');
const compressedShare = new Rate('bins_compressed');

/**
 * @typedef {{id: number, start: number, end: number, pmin: number, pmax: number, blocks: number, created: boolean}} Sched
 * @typedef {import('./lib/common.js').View} View
 * @typedef {{status: number, cache: string, cols: Record<string, number[]> | null}} Seen
 */

export function setup() {
  requireReady();
  if (SCHEDULE_ID) return { ...readSchedule(SCHEDULE_ID), created: false };
  if (!viewFile || !viewBody) throw new Error('no view file');
  return { ...createSchedule(viewBody, viewFile, `lt-view-${runId()}-`), created: true };
}

function think() {
  if (THINK > 0) sleep(THINK * (0.5 + Math.random()));
}

/**
 * One bins request as the viewer makes it; records its latency under its
 * zoom, step and X-Cache, and checks the answer.
 * @param {Sched} s @param {string} zoom @param {string} step @param {View} v @param {Map<string, string>} etags
 * @returns {Seen}
 */
function view(s, zoom, step, v, etags) {
  const url = `${BASE_URL}/v1/schedules/${s.id}/bins?${binsQuery(v, FORMAT)}`;
  /** @type {Record<string, string>} */
  const headers = { 'Accept-Encoding': ACCEPT_ENCODING };
  const etag = REVALIDATE ? etags.get(url) : undefined;
  if (etag) headers['If-None-Match'] = etag;
  const r = http.get(url, { headers, tags: { name: `GET /v1/schedules/{id}/bins (${zoom})`, op: 'bins', zoom, step } });
  const cache = r.status === 304 ? 'not_modified' : cacheOf(r);
  const tags = { zoom, step, cache };
  binsDuration.add(r.timings.duration, tags);
  cacheHit.add(cache === 'hit' || cache === 'not_modified', { zoom });
  const timing = r.headers['Server-Timing'] || '';
  for (const [part, trend] of /** @type {Array<[string, Trend]>} */ ([['cache', serverCache], ['store', serverStore], ['compute', serverCompute]])) {
    const m = new RegExp(`(?:^|,)\\s*${part};dur=([0-9.]+)`).exec(timing);
    if (m) trend.add(Number(m[1]), tags);
  }
  if (r.status === 200 && r.headers.Etag) etags.set(url, r.headers.Etag);
  const parsed = r.status === 200 ? parseBins(typeof r.body === 'string' ? r.body : null, FORMAT) : null;
  const problem = r.status === 200 ? binProblems(parsed, v, FORMAT, s.blocks) : '';
  if (problem) warnOnce('bins', `${url}: ${problem}`);
  if (r.status !== 200 && r.status !== 304) warnOnce('status', `${url}: ${r.status} ${r.error} ${String(r.body).slice(0, 300)}`);
  const size = typeof r.body === 'string' ? r.body.length : 0;
  if (r.status === 200) {
    etagShare.add(Boolean(r.headers.Etag), { zoom });
    if (size > 1024) compressedShare.add(Boolean(r.headers['Content-Encoding']), { zoom });
  }
  if (CHECK_HTTP_RULES) {
    check(r, {
      'http: a bins answer carries an ETag and Cache-Control: no-cache': (x) => x.status !== 200 || (Boolean(x.headers.Etag) && /no-cache/.test(x.headers['Cache-Control'] || '')),
      'http: an answer over 1 KiB is compressed when Accept-Encoding allows': (x) => x.status !== 200 || size <= 1024 || !ACCEPT_ENCODING || Boolean(x.headers['Content-Encoding']),
    }, { zoom, step });
  }
  check(r, {
    'bins: 200 (304 when revalidating with the ETag)': (x) => x.status === 200 || (x.status === 304 && etag !== undefined),
    'bins: X-Cache is hit, partial or miss': (x) => x.status === 304 || cache !== 'none',
    'bins: Server-Timing has cache, store and compute': (x) => x.status === 304 || /cache;dur=.*store;dur=.*compute;dur=/.test(timing),
    'bins: widened window, grid and per-bin counts are consistent': (x) => x.status !== 200 || problem === '',
    'bins: 304 has no body': (x) => x.status !== 304 || !x.body,
  }, { zoom, step });
  return { status: r.status, cache, cols: parsed ? parsed.cols : null };
}

/** @param {Seen} seen */
const fromCache = (seen) => seen.cache === 'hit' || seen.cache === 'not_modified';

/** Per-bin comparison of two answers of the same window. @param {number[]|undefined} a @param {number[]|undefined} b @param {(x: number, y: number) => boolean} ok */
function everyBin(a, b, ok) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!ok(a[i], b[i])) return false;
  return true;
}

/** @param {Sched} s */
export default function (s) {
  /** @type {Map<string, string>} */
  const etags = new Map();
  /** @type {View} */
  const overview = { start: s.start, end: s.end, bin: widthFor(s.end - s.start, CHART_BINS) };
  /** @type {View} */
  let month = overview;
  /** @type {View} */
  let week = overview;
  /** @type {View} */
  let day = overview;
  /** @type {Seen | null} */
  let weekSeen = null;

  group('open', () => {
    const g = http.get(`${BASE_URL}/v1/schedules/${s.id}`, { tags: { name: 'GET /v1/schedules/{id}', op: 'schedule' } });
    const body = jsonOf(g);
    check(g, { 'open: GET /v1/schedules/{id} is 200 with the range': (x) => x.status === 200 && body && body.start_unix === s.start });
    view(s, 'overview', 'open', overview, etags);
  });
  think();

  group('zoom', () => {
    month = { ...randomWindow(s.start, s.end, 30 * DAY, MONTH_BIN), bin: MONTH_BIN };
    view(s, 'month', 'zoom', month, etags);
    think();
    week = { ...randomWindow(month.start, month.end, 7 * DAY, WEEK_BIN), bin: WEEK_BIN };
    weekSeen = view(s, 'week', 'zoom', week, etags);
    if (WEEK_BIN === 900) {
      // The summary job warms the whole range at 900 s (DESIGN §7).
      check(weekSeen, { 'zoom: a week at 15 min is served from the cache the summary job warmed': fromCache });
    }
    think();
    day = { ...randomWindow(week.start, week.end, DAY, DAY_BIN), bin: DAY_BIN };
    view(s, 'day', 'zoom', day, etags);
  });
  think();

  group('pan', () => {
    const half = Math.max(DAY_BIN, Math.floor((day.end - day.start) / 2 / DAY_BIN) * DAY_BIN);
    for (const [dir, shift] of /** @type {Array<[string, number]>} */ ([['left', -half], ['right', half]])) {
      const seen = view(s, 'day', 'pan', { start: day.start + shift, end: day.end + shift, bin: DAY_BIN }, etags);
      // Half of the panned window was just computed: only the gap is new.
      check(seen, { [`pan: ${dir} reuses the bins already computed (X-Cache partial or hit)`]: (x) => x.cache === 'partial' || fromCache(x) });
      think();
    }
  });

  group('filter', () => {
    const base = weekSeen && weekSeen.cols;
    const pmid = Math.round((s.pmin + (s.pmax - s.pmin) / 2) * 1000) / 1000;
    const upper = view(s, 'week', 'filter', { ...week, filters: { priority_min: String(pmid) } }, etags);
    const lower = view(s, 'week', 'filter', { ...week, filters: { priority_max: String(pmid) } }, etags);
    const sched = view(s, 'week', 'filter', { ...week, filters: { scheduled: 'true' } }, etags);
    const unsched = view(s, 'week', 'filter', { ...week, filters: { scheduled: 'false' } }, etags);
    if (base && upper.cols && lower.cols && sched.cols && unsched.cols) {
      const u = upper.cols; const l = lower.cols; const sc = sched.cols; const un = unsched.cols;
      check(null, {
        'filter: priority halves are within the unfiltered counts and cover them': () => everyBin(u.visible_count, base.visible_count, (a, b) => a <= b)
          && everyBin(l.visible_count, base.visible_count, (a, b) => a <= b)
          && everyBin(u.visible_count.map((x, i) => x + l.visible_count[i]), base.visible_count, (a, b) => a >= b),
        'filter: scheduled=true counts are the unfiltered scheduled_visible_count': () => everyBin(sc.visible_count, base.scheduled_visible_count, (a, b) => a === b)
          && sc.unscheduled_visible_count.every((x) => x === 0),
        'filter: scheduled=false counts are the unfiltered unscheduled_visible_count': () => everyBin(un.visible_count, base.unscheduled_visible_count, (a, b) => a === b)
          && un.scheduled_visible_count.every((x) => x === 0),
        'filter: scheduled + unscheduled q4 counts add up to the unfiltered q4 counts': () => everyBin(sc.priority_q4_count.map((x, i) => x + un.priority_q4_count[i]), base.priority_q4_count, (a, b) => a === b),
      }, { zoom: 'week', step: 'filter' });
    }
  });
  think();

  group('revisit', () => {
    for (const [zoom, v] of /** @type {Array<[string, View]>} */ ([['month', month], ['overview', overview], ['day', day]])) {
      const seen = view(s, zoom, 'revisit', v, etags);
      check(seen, { [`revisit: the ${zoom} again comes from the cache (hit, or 304)`]: fromCache });
    }
  });
  think();
}

/** @param {Sched} s */
export function teardown(s) {
  if (s && s.created && envBool('CLEANUP', true)) deleteSchedule(s.id, {});
}

/** @param {import('./lib/common.js').SummaryData} data */
export function handleSummary(data) {
  /** @type {Record<string, any>} */
  const derived = {};
  for (const c of ['hit', 'partial', 'miss', 'not_modified']) {
    const v = valuesOf(data, `bins_duration{cache:${c}}`);
    if (v && v.count) derived[c] = { n: v.count, p50_ms: v.med, p95_ms: v['p(95)'], p99_ms: v['p(99)'] };
  }
  if (derived.hit && derived.miss) derived.miss_over_hit_p50 = derived.miss.p50_ms / derived.hit.p50_ms;
  for (const [k, name] of [['hit_ratio', 'bins_cache_hit'], ['etag_share', 'bins_etag'], ['compressed_share', 'bins_compressed']]) {
    const v = valuesOf(data, name);
    if (v) derived[k] = v.rate;
  }
  return summaryOutputs('progressive', data, derived);
}
