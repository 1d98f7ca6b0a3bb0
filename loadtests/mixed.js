// k6: capacity test — reads and appends over many schedules at a ramping
// arrival rate (an open model: iterations start at the rate whatever the
// latency, so a saturated server shows up as latency and dropped iterations,
// not as a slower client).
//
// setup() uploads SCHEDULES renamed copies of one data file (or takes the
// existing SCHEDULE_IDS) and waits for their summary jobs. Two scenarios then
// ramp from START_RATE to RATE iterations/s over RAMP_UP, hold for HOLD and
// ramp down over RAMP_DOWN; APPEND_SHARE of the rate appends, the rest reads:
//   read:   a random schedule, zoom level (READ_MIX), window and, for
//           FILTER_SHARE of them, a filter; checks the answer's invariants;
//   append: POST /v1/schedules/{id}/blocks with APPEND_BLOCKS new block
//           identities (never used before: run id, VU, iteration) of
//           APPEND_PERIODS periods each inside the schedule's range; then
//           (VERIFY_APPENDS) reads the new block back through the bin query
//           (block_ids=…), so a stale cache answer fails a check. For
//           CONFLICT_SHARE of the appends it re-sends an identity it already
//           appended and expects 409 (nothing stored).
//
//   bash loadtests/gen_data.sh
//   BASE_URL=http://127.0.0.1:8080 RATE=200 SCHEDULES=20 k6 run loadtests/mixed.js
//
// Settings: BASE_URL, TOKEN, DATA_DIR, MIXED_FILE, MIXED_SIZE, SCHEDULES,
// SCHEDULE_IDS, RATE, START_RATE, APPEND_SHARE, RAMP_UP, HOLD, RAMP_DOWN,
// PRE_VUS, MAX_VUS, READ_MIX, FILTER_SHARE, FORMAT, APPEND_BLOCKS,
// APPEND_PERIODS, CONFLICT_SHARE, VERIFY_APPENDS, READ_P95_MS, READ_P99_MS,
// APPEND_P95_MS, APPEND_P99_MS, ERROR_RATE, CHECKS_MIN, DROPPED_MAX,
// ABORT_ON_FAIL, CLEANUP, SUMMARY_DIR, SUMMARY_FILE (README.md).
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import {
  BASE_URL, DAY, HOUR, MINUTE, env, envBool, envInt, envNum, envList, envDuration, dataFile, parseManifest, pickFile,
  createSchedule, readSchedule, requireReady, runId, deleteSchedule, writeHeaders, randomWindow, binsQuery, parseBins,
  binProblems, cacheOf, jsonOf, warnOnce, summaryOutputs, summaryTrendStats, threshold, widthFor,
} from './lib/common.js';

const SCHEDULE_IDS = envList('SCHEDULE_IDS', []).map(Number);
const manifest = SCHEDULE_IDS.length ? null : parseManifest(open(dataFile('manifest.json')));
const mixedFile = manifest ? pickFile(manifest, env('MIXED_FILE', ''), env('MIXED_SIZE', 'reference')) : null;
const mixedBody = mixedFile && __VU === 0 ? open(dataFile(mixedFile.file), 'b') : null;

const SCHEDULES = envInt('SCHEDULES', 8);
const RATE = envNum('RATE', 20);
const START_RATE = envNum('START_RATE', 1);
const APPEND_SHARE = envNum('APPEND_SHARE', 0.1);
if (!(APPEND_SHARE >= 0 && APPEND_SHARE <= 1)) throw new Error('APPEND_SHARE must be within [0, 1]');
const FORMAT = env('FORMAT', 'columnar');
const FILTER_SHARE = envNum('FILTER_SHARE', 0.2);
const APPEND_BLOCKS = Math.max(1, envInt('APPEND_BLOCKS', 5));
const APPEND_PERIODS = Math.max(1, envInt('APPEND_PERIODS', 3));
const CONFLICT_SHARE = envNum('CONFLICT_SHARE', 0.05);
const VERIFY_APPENDS = envBool('VERIFY_APPENDS', true);
const ERROR_RATE = envNum('ERROR_RATE', 0.01);
/** Zoom levels a read picks from, with weights: name:weight,... (span and width as in progressive.js). */
const READ_MIX = envList('READ_MIX', ['overview:1', 'month:2', 'week:3', 'day:4']).map((x) => {
  const [zoom, w] = x.split(':');
  if (!['overview', 'month', 'week', 'day'].includes(zoom) || !(Number(w) > 0)) throw new Error(`READ_MIX: bad item "${x}"`);
  return { zoom, w: Number(w) };
});
const ZOOMS = /** @type {Record<string, {span: number, bin: number}>} */ ({
  month: { span: 30 * DAY, bin: HOUR }, week: { span: 7 * DAY, bin: 15 * MINUTE }, day: { span: DAY, bin: MINUTE },
});

// k6 takes whole numbers of iterations per timeUnit: rates are counted per minute.
/** @param {number} share */
function stages(share) {
  const perMin = (/** @type {number} */ r) => Math.max(1, Math.round(r * share * 60));
  return {
    startRate: perMin(START_RATE),
    timeUnit: '1m',
    stages: [
      { duration: envDuration('RAMP_UP', '30s'), target: perMin(RATE) },
      { duration: envDuration('HOLD', '1m'), target: perMin(RATE) },
      { duration: envDuration('RAMP_DOWN', '10s'), target: 0 },
    ],
    preAllocatedVUs: envInt('PRE_VUS', 10),
    maxVUs: envInt('MAX_VUS', 100),
  };
}

/** @type {Record<string, import('k6/options').Scenario>} */
const scenarios = {};
if (APPEND_SHARE < 1) scenarios.reads = { executor: 'ramping-arrival-rate', exec: 'read', ...stages(1 - APPEND_SHARE) };
if (APPEND_SHARE > 0) scenarios.appends = { executor: 'ramping-arrival-rate', exec: 'append', ...stages(APPEND_SHARE) };

/** @type {import('k6/options').Options} */
export const options = {
  scenarios,
  thresholds: {
    'http_req_duration{op:read}': [threshold(`p(95)<${envNum('READ_P95_MS', 300)}`), threshold(`p(99)<${envNum('READ_P99_MS', 500)}`)],
    'http_req_duration{op:append}': [threshold(`p(95)<${envNum('APPEND_P95_MS', 500)}`), threshold(`p(99)<${envNum('APPEND_P99_MS', 1000)}`)],
    'read_duration{cache:hit}': [`p(95)<${envNum('READ_P95_MS', 300)}`],
    'read_duration{cache:miss}': [`p(95)<${envNum('READ_P95_MS', 300)}`],
    http_req_failed: [threshold(`rate<${ERROR_RATE}`)],
    checks: [`rate>${envNum('CHECKS_MIN', 0.99)}`],
    // Iterations k6 could not start for want of a free VU: the server (or the
    // load generator) no longer keeps up with the arrival rate.
    dropped_iterations: [threshold(`count<=${envInt('DROPPED_MAX', 0)}`)],
  },
  summaryTrendStats,
};

const readDuration = new Trend('read_duration', true);
const appendDuration = new Trend('append_duration', true);
const appendedBlocks = new Counter('appended_blocks');
const conflicts = new Counter('append_conflicts');

/**
 * @typedef {{id: number, start: number, end: number, pmin: number, pmax: number, blocks: number}} Sched
 * @typedef {{run: string, schedules: Sched[], created: number[]}} Data
 */

/** @returns {Data} */
export function setup() {
  requireReady();
  const run = runId();
  if (SCHEDULE_IDS.length) return { run, schedules: SCHEDULE_IDS.map(readSchedule), created: [] };
  if (!mixedFile || !mixedBody) throw new Error('no data file');
  /** @type {Sched[]} */
  const schedules = [];
  for (let i = 0; i < SCHEDULES; i++) schedules.push(createSchedule(mixedBody, mixedFile, `lt-mixed-${run}-${i}-`));
  return { run, schedules, created: schedules.map((s) => s.id) };
}

/** @template T @param {T[]} xs @returns {T} */
const any = (xs) => xs[Math.floor(Math.random() * xs.length)];

function pickZoom() {
  let x = Math.random() * READ_MIX.reduce((a, m) => a + m.w, 0);
  for (const m of READ_MIX) { x -= m.w; if (x < 0) return m.zoom; }
  return READ_MIX[READ_MIX.length - 1].zoom;
}

const toMjd = (/** @type {number} */ unix) => unix / 86400 + 40587;

/** @param {Data} data */
export function read(data) {
  const s = any(data.schedules);
  const zoom = pickZoom();
  const z = ZOOMS[zoom];
  /** @type {import('./lib/common.js').View} */
  const v = zoom === 'overview'
    ? { start: s.start, end: s.end, bin: widthFor(s.end - s.start, 1000) }
    : { ...randomWindow(s.start, s.end, z.span, z.bin), bin: z.bin };
  if (Math.random() < FILTER_SHARE) {
    const pmid = String(Math.round((s.pmin + (s.pmax - s.pmin) / 2) * 1000) / 1000);
    v.filters = any(/** @type {Record<string, string>[]} */ ([{ scheduled: 'true' }, { scheduled: 'false' }, { priority_min: pmid }, { priority_max: pmid }]));
  }
  const r = http.get(`${BASE_URL}/v1/schedules/${s.id}/bins?${binsQuery(v, FORMAT)}`, {
    tags: { name: `GET /v1/schedules/{id}/bins (${zoom})`, op: 'read', zoom },
  });
  const cache = cacheOf(r);
  readDuration.add(r.timings.duration, { zoom, cache });
  const problem = r.status === 200 ? binProblems(parseBins(typeof r.body === 'string' ? r.body : null, FORMAT), v, FORMAT, Infinity) : '';
  if (r.status !== 200 || problem) warnOnce('read', `read ${r.url}: ${r.status} ${problem || String(r.body).slice(0, 300)}`);
  check(r, {
    'read: 200': (x) => x.status === 200,
    'read: X-Cache is hit, partial or miss': () => cache !== 'none',
    'read: widened window, grid and per-bin counts are consistent': () => problem === '',
  }, { zoom });
}

/** Identities this VU appended, per schedule id (for the 409 case). @type {Map<number, string[]>} */
const mine = new Map();

/** @param {Data} data */
export function append(data) {
  const s = any(data.schedules);
  const url = `${BASE_URL}/v1/schedules/${s.id}/blocks`;
  const params = { headers: writeHeaders({ 'Content-Type': 'application/json' }) };
  const old = mine.get(s.id) || [];
  if (old.length && Math.random() < CONFLICT_SHARE) {
    const again = any(old);
    const block = { original_block_id: again, priority: s.pmin, visibility_periods: [{ start: toMjd(s.start), stop: toMjd(s.start + HOUR) }], scheduled_period: null };
    const r = http.post(url, JSON.stringify([block]), {
      ...params, tags: { name: 'POST /v1/schedules/{id}/blocks (conflict)', op: 'append_conflict' }, responseCallback: http.expectedStatuses(409),
    });
    conflicts.add(1);
    check(r, {
      'append: a known identity is refused with 409': (x) => x.status === 409,
      'append: the 409 is application/problem+json naming the identity': (x) => (x.headers['Content-Type'] || '').startsWith('application/problem+json')
        && String(x.body).includes(again),
    });
    return;
  }
  const stem = `lt-${data.run}-v${exec.vu.idInTest}-i${exec.vu.iterationInScenario}`;
  const span = s.end - s.start;
  const blocks = [];
  /** @type {{id: string, start: number, end: number} | null} */
  let probe = null;
  for (let b = 0; b < APPEND_BLOCKS; b++) {
    const periods = [];
    for (let p = 0; p < APPEND_PERIODS; p++) {
      const len = 10 * MINUTE + Math.floor(Math.random() * 6 * HOUR);
      const start = s.start + Math.floor(Math.random() * Math.max(1, span - len));
      periods.push({ start: toMjd(start), stop: toMjd(start + len) });
      if (b === 0 && p === 0) probe = { id: `${stem}-b0`, start, end: start + len };
    }
    const priority = Math.round((s.pmin + Math.random() * (s.pmax - s.pmin)) * 100) / 100;
    blocks.push({ original_block_id: `${stem}-b${b}`, priority, visibility_periods: periods, scheduled_period: Math.random() < 0.3 ? periods[0] : null });
  }
  const r = http.post(url, JSON.stringify(blocks), { ...params, tags: { name: 'POST /v1/schedules/{id}/blocks', op: 'append' } });
  const body = jsonOf(r);
  appendDuration.add(r.timings.duration);
  const ok = check(r, {
    'append: 200': (x) => x.status === 200,
    'append: appended_blocks and appended_periods as sent': () => body && body.appended_blocks === APPEND_BLOCKS && body.appended_periods === APPEND_BLOCKS * APPEND_PERIODS,
    'append: answers the new version and a job': () => body && body.version > 1 && Number.isInteger(body.job_id),
  });
  if (!ok) { warnOnce('append', `append to ${s.id}: ${r.status} ${String(r.body).slice(0, 300)}`); return; }
  appendedBlocks.add(APPEND_BLOCKS);
  for (const b of blocks) old.push(b.original_block_id);
  mine.set(s.id, old);
  if (VERIFY_APPENDS && probe) {
    // Read-your-write through the cache: the hourly bins over the new block's
    // first period must count it (exactly once) in every bin it overlaps.
    const v = { start: probe.start - (probe.start % HOUR), end: probe.end, bin: HOUR, filters: { block_ids: probe.id } };
    const g = http.get(`${BASE_URL}/v1/schedules/${s.id}/bins?${binsQuery(v, 'columnar')}`, {
      tags: { name: 'GET /v1/schedules/{id}/bins (appended block)', op: 'read_own_append' },
    });
    const p = g.status === 200 ? parseBins(typeof g.body === 'string' ? g.body : null, 'columnar') : null;
    const pr = probe;
    check(g, {
      'append: the appended block is counted right after the append (no stale cache)': () => {
        if (!p) return false;
        const c = p.cols;
        for (let i = 0; i < c.visible_count.length; i++) {
          if (c.bin_start_unix[i] < pr.end && c.bin_end_unix[i] > pr.start && c.visible_count[i] !== 1) return false;
        }
        return c.visible_count.length > 0;
      },
    });
  }
}

/** @param {Data} data */
export function teardown(data) {
  if (envBool('CLEANUP', true)) for (const id of data.created) deleteSchedule(id, {});
}

/** @param {import('./lib/common.js').SummaryData} data */
export function handleSummary(data) {
  /** @type {Record<string, any>} */
  const derived = {};
  const reqs = data.metrics.http_reqs;
  if (reqs) derived.requests_per_s = reqs.values.rate;
  const dropped = data.metrics.dropped_iterations;
  derived.dropped_iterations = dropped ? dropped.values.count : 0;
  return summaryOutputs('mixed', data, derived);
}
