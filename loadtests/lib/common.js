// Shared helpers of the k6 scripts in loadtests/: settings from __ENV, auth,
// the data manifest written by gen_data.sh, uploads and job polling, the bin
// query and its invariants, and handleSummary output. Everything here runs in
// k6 (no Node APIs); open() is only called by the entry scripts, where k6
// resolves relative paths against the script's folder.
import http from 'k6/http';
import { check, fail, sleep } from 'k6';

// ------------------------------------------------------------------ settings

/** A setting from __ENV; unset or empty gives `dflt`. @param {string} name */
export function env(name, dflt = '') {
  const v = __ENV[name];
  return v === undefined || v === '' ? dflt : v;
}

/** @param {string} name @param {number} dflt */
export function envNum(name, dflt) {
  const raw = env(name, '');
  if (raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v)) throw new Error(`${name}=${raw}: not a number`);
  return v;
}

/** @param {string} name @param {number} dflt */
export function envInt(name, dflt) {
  const v = envNum(name, dflt);
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name}=${v}: not a non-negative integer`);
  return v;
}

/** @param {string} name @param {boolean} dflt */
export function envBool(name, dflt) {
  const raw = env(name, '').toLowerCase();
  if (raw === '') return dflt;
  if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
  if (['0', 'false', 'no', 'off'].includes(raw)) return false;
  throw new Error(`${name}=${raw}: not a boolean (1/0, true/false)`);
}

/** Comma-separated list; empty items dropped. @param {string} name @param {string[]} dflt */
export function envList(name, dflt) {
  const raw = env(name, '');
  if (raw === '') return dflt;
  return raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** A k6 duration string ("30s", "1m30s", "500ms"). @param {string} name @param {string} dflt */
export function envDuration(name, dflt) {
  const v = env(name, dflt);
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(v)) throw new Error(`${name}=${v}: not a duration such as 30s, 2m, 1m30s, 500ms`);
  return v;
}

/** Server root, without a trailing slash. */
export const BASE_URL = env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
const TOKEN = env('TOKEN', '');

/** Headers of a write (POST, DELETE): the bearer token when TOKEN is set. @param {Record<string,string>} [extra] */
export function writeHeaders(extra = {}) {
  /** @type {Record<string,string>} */
  const h = { ...extra };
  if (TOKEN) h.Authorization = `Bearer ${TOKEN}`;
  return h;
}

export const summaryTrendStats = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];

/** Thresholds fail the run at once (after `delay`) when ABORT_ON_FAIL=1; for capacity runs. */
export function threshold(/** @type {string} */ expr, delay = '10s') {
  return envBool('ABORT_ON_FAIL', false) ? { threshold: expr, abortOnFail: true, delayAbortEval: delay } : expr;
}

// ------------------------------------------------------------------ data files

/**
 * @typedef {{file: string, label: string, format: 'json'|'ndjson', blocks: number, periods: number, days: number, seed: number, bytes: number}} DataFile
 * @typedef {{files: DataFile[]}} Manifest
 */

/** Path of a file in DATA_DIR (default "data", i.e. loadtests/data: k6 resolves it against the script's folder). */
export function dataFile(/** @type {string} */ name) {
  return `${env('DATA_DIR', 'data').replace(/\/+$/, '')}/${name}`;
}

/** Parses and checks DATA_DIR/manifest.json (written by gen_data.sh). @returns {Manifest} */
export function parseManifest(/** @type {string} */ text) {
  /** @type {any} */
  let m;
  try { m = JSON.parse(text); } catch (e) { throw new Error(`manifest.json is not JSON: ${e}`); }
  if (!m || !Array.isArray(m.files) || m.files.length === 0) throw new Error('manifest.json lists no files; run loadtests/gen_data.sh');
  for (const f of m.files) {
    if (typeof f.file !== 'string' || typeof f.label !== 'string' || !['json', 'ndjson'].includes(f.format) || !(f.blocks > 0)) {
      throw new Error(`manifest.json: bad entry ${JSON.stringify(f)}`);
    }
  }
  return m;
}

/**
 * The manifest entry a script works on: the file named `file` if given, else
 * the first of label `label` (JSON preferred), else the smallest file.
 * @param {Manifest} m @param {string} file @param {string} label
 */
export function pickFile(m, file, label) {
  if (file) {
    const f = m.files.find((x) => x.file === file);
    if (!f) throw new Error(`${file} is not in manifest.json (${m.files.map((x) => x.file).join(', ')})`);
    return f;
  }
  const byLabel = m.files.filter((x) => x.label === label).sort((a, b) => (a.format === 'json' ? -1 : 1) - (b.format === 'json' ? -1 : 1));
  if (byLabel.length) return byLabel[0];
  return [...m.files].sort((a, b) => a.bytes - b.bytes)[0];
}

export function contentType(/** @type {string} */ format) {
  return format === 'ndjson' ? 'application/x-ndjson' : 'application/json';
}

/**
 * A copy of an upload body whose schedule name starts with `prefix`, so that it
 * is new content (the duplicate checksum covers the name). The name must be
 * the first "name" key of the file, as visbin gen writes it (JSON: the first
 * key; NDJSON: the header line); the bytes are scanned, not decoded, which is
 * safe for UTF-8. @param {ArrayBuffer} body @param {string} prefix
 */
export function withNamePrefix(body, prefix) {
  const src = new Uint8Array(body);
  const key = [34, 110, 97, 109, 101, 34]; // "name"
  const limit = Math.min(src.length, 65536);
  for (let i = 0; i + key.length < limit; i++) {
    let k = 0;
    while (k < key.length && src[i + k] === key[k]) k++;
    if (k < key.length) continue;
    let j = i + key.length;
    while (j < limit && (src[j] === 32 || src[j] === 9 || src[j] === 10 || src[j] === 13)) j++;
    if (src[j] !== 58) continue; // ':'
    j++;
    while (j < limit && (src[j] === 32 || src[j] === 9 || src[j] === 10 || src[j] === 13)) j++;
    if (src[j] !== 34) continue; // '"'
    j++;
    const add = new Uint8Array(prefix.length);
    for (let p = 0; p < prefix.length; p++) {
      const c = prefix.charCodeAt(p);
      if (c > 126 || c < 32 || c === 34 || c === 92) throw new Error('name prefixes must be plain ASCII');
      add[p] = c;
    }
    const out = new Uint8Array(src.length + add.length);
    out.set(src.subarray(0, j), 0);
    out.set(add, j);
    out.set(src.subarray(j), j + add.length);
    return out.buffer;
  }
  throw new Error('no "name": "..." near the start of the upload file; data files must come from visbin gen (loadtests/gen_data.sh)');
}

/** A short random id for this run: names and block identities of different runs never collide. */
export function runId() {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
}

// ------------------------------------------------------------------ API helpers

/** setup() guard: the server answers /readyz with 200. */
export function requireReady() {
  const r = http.get(`${BASE_URL}/readyz`, { tags: { name: 'GET /readyz' } });
  if (!check(r, { 'setup: server is ready (GET /readyz 200)': (x) => x.status === 200 })) {
    fail(`${BASE_URL}/readyz answered ${r.status} ${r.error || ''}: is the server running? (BASE_URL)`);
  }
}

/** @type {Record<string, number>} */
const warned = {};

/** console.warn, at most `limit` times per key and VU (why a check failed, without flooding the log). */
export function warnOnce(/** @type {string} */ key, /** @type {string} */ msg, limit = 3) {
  warned[key] = (warned[key] || 0) + 1;
  if (warned[key] <= limit) console.warn(msg);
}

/** Parses a JSON body, or returns null (the checks that use it then fail). @param {import('k6/http').Response} r @returns {any} */
export function jsonOf(r) {
  try { return r.json(); } catch (_) { return null; }
}

/**
 * POST /v1/schedules, tagged op=upload (the other helpers tag op=job, op=delete). @param {ArrayBuffer|string} body @param {string} format
 * @param {Record<string,string>} tags @param {string} [timeout]
 */
export function uploadSchedule(body, format, tags, timeout = '10m') {
  return http.post(`${BASE_URL}/v1/schedules`, body, {
    headers: writeHeaders({ 'Content-Type': contentType(format) }),
    tags: { name: 'POST /v1/schedules', ...tags, op: 'upload' },
    timeout,
  });
}

/**
 * Polls GET /v1/jobs/{id} until the job is done or failed, or `timeoutS` passed.
 * @param {number} jobId @param {Record<string,string>} tags
 * @returns {{state: string, job: any, waitedMs: number, polls: number}}
 */
export function pollJob(jobId, tags, intervalS = envNum('POLL_INTERVAL', 0.25), timeoutS = envNum('POLL_TIMEOUT', 300)) {
  const t0 = Date.now();
  let polls = 0;
  for (;;) {
    const r = http.get(`${BASE_URL}/v1/jobs/${jobId}`, { tags: { name: 'GET /v1/jobs/{id}', ...tags, op: 'job' } });
    polls++;
    const job = r.status === 200 ? jsonOf(r) : null;
    if (!job) return { state: `http ${r.status}`, job: null, waitedMs: Date.now() - t0, polls };
    if (job.state === 'done' || job.state === 'failed') return { state: job.state, job, waitedMs: Date.now() - t0, polls };
    if (Date.now() - t0 > timeoutS * 1000) return { state: `still ${job.state} after ${timeoutS} s`, job, waitedMs: Date.now() - t0, polls };
    sleep(intervalS);
  }
}

/** DELETE /v1/schedules/{id}; checks the 204. @param {number} id @param {Record<string,string>} tags */
export function deleteSchedule(id, tags, checkName = 'cleanup: DELETE /v1/schedules/{id} is 204') {
  const r = http.del(`${BASE_URL}/v1/schedules/${id}`, null, { headers: writeHeaders(), tags: { name: 'DELETE /v1/schedules/{id}', ...tags, op: 'delete' } });
  check(r, { [checkName]: (x) => x.status === 204 });
  return r;
}

/**
 * Uploads a renamed copy of `body`, waits for its summary job and reads the
 * schedule back; fails the calling stage (setup) on any error.
 * @param {ArrayBuffer} body @param {DataFile} f @param {string} prefix
 * @returns {{id: number, start: number, end: number, pmin: number, pmax: number, blocks: number}}
 */
export function createSchedule(body, f, prefix) {
  /** @type {Record<string,string>} */
  const tags = {};
  const r = uploadSchedule(withNamePrefix(body, prefix), f.format, tags);
  const up = jsonOf(r);
  if (!check(r, { 'setup: upload is 201': (x) => x.status === 201 }) || !up) {
    fail(`setup upload of ${f.file} answered ${r.status}: ${String(r.body).slice(0, 300)}`);
  }
  const job = pollJob(up.job_id, tags);
  if (!check(job, { 'setup: summary job is done': (j) => j.state === 'done' })) {
    fail(`summary job ${up.job_id} of schedule ${up.schedule_id}: ${job.state} ${job.job ? job.job.error || '' : ''}`);
  }
  const g = http.get(`${BASE_URL}/v1/schedules/${up.schedule_id}`, { tags: { name: 'GET /v1/schedules/{id}', op: 'schedule' } });
  const s = jsonOf(g);
  if (!check(s, {
    'setup: schedule has a range': (x) => x && Number.isInteger(x.start_unix) && Number.isInteger(x.end_unix) && x.end_unix > x.start_unix,
    'setup: schedule has its summary once the job is done': (x) => x && x.summary && x.summary.total_blocks === f.blocks,
  })) fail(`GET /v1/schedules/${up.schedule_id} answered ${g.status}: ${String(g.body).slice(0, 300)}`);
  return { id: s.schedule_id, start: s.start_unix, end: s.end_unix, pmin: s.summary.priority_min, pmax: s.summary.priority_max, blocks: s.blocks };
}

/**
 * An existing schedule, for SCHEDULE_ID(S): its range and priority range.
 * @param {number} id
 */
export function readSchedule(id) {
  const g = http.get(`${BASE_URL}/v1/schedules/${id}`, { tags: { name: 'GET /v1/schedules/{id}', op: 'schedule' } });
  const s = jsonOf(g);
  if (!check(g, { 'setup: the given schedule exists': (x) => x.status === 200 }) || !s || s.start_unix === null) {
    fail(`schedule ${id}: ${g.status} ${String(g.body).slice(0, 200)} (it needs periods, so that it has a range)`);
  }
  const sum = s.summary || {};
  return { id, start: s.start_unix, end: s.end_unix, pmin: sum.priority_min ?? 0, pmax: sum.priority_max ?? 10, blocks: s.blocks };
}

// ------------------------------------------------------------------ the range query

export const MINUTE = 60;
export const HOUR = 3600;
export const DAY = 86400;
const LADDER = [60, 300, 900, 1800, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 7 * DAY, 30 * DAY];

/** The narrowest "nice" bin width that shows `span` seconds in at most `maxBins` bins (what the viewer does). */
export function widthFor(/** @type {number} */ span, /** @type {number} */ maxBins) {
  for (const w of LADDER) if (span / w <= maxBins) return w;
  return Math.ceil(span / maxBins);
}

/** Bin width from a setting: seconds, or a duration such as 15m, 1h, 1d. */
export function seconds(/** @type {string} */ v) {
  const m = /^(\d+)([smhdw]?)$/.exec(v.trim());
  if (!m) throw new Error(`bin width "${v}": use seconds or 90s, 15m, 1h, 1d, 1w`);
  return Number(m[1]) * ({ '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 })[/** @type {''|'s'|'m'|'h'|'d'|'w'} */ (m[2])];
}

/**
 * A random window of `len` seconds inside [from, to), its start on a multiple
 * of `align`; the whole of [from, to) when that is shorter.
 * @param {number} from @param {number} to @param {number} len @param {number} align
 */
export function randomWindow(from, to, len, align) {
  if (to - from <= len) return { start: from, end: to };
  const lo = Math.ceil(from / align) * align;
  const hi = Math.floor((to - len) / align) * align;
  if (hi < lo) return { start: from, end: from + len };
  const start = lo + Math.floor(Math.random() * ((hi - lo) / align + 1)) * align;
  return { start, end: start + len };
}

/**
 * @typedef {{start: number, end: number, bin: number, origin?: number, filters?: Record<string,string>}} View
 */

/** Query string of a range query. @param {View} v @param {string} format */
export function binsQuery(v, format) {
  /** @type {string[]} */
  const q = [`start=${v.start}`, `end=${v.end}`, `bin=${v.bin}`];
  if (v.origin !== undefined) q.push(`origin=${v.origin}`);
  for (const [k, val] of Object.entries(v.filters || {})) q.push(`${k}=${encodeURIComponent(val)}`);
  if (format !== 'json') q.push(`format=${format}`);
  return q.join('&');
}

export const BIN_FIELDS = ['bin_start_unix', 'bin_end_unix', 'visible_count', 'priority_q1_count', 'priority_q2_count',
  'priority_q3_count', 'priority_q4_count', 'scheduled_visible_count', 'unscheduled_visible_count'];

/**
 * The answer of a range query as columns, in any format; null if it does not parse.
 * @param {string|null} body @param {string} format
 * @returns {null | {meta: any, cols: Record<string, number[]>}}
 */
export function parseBins(body, format) {
  if (typeof body !== 'string') return null;
  try {
    /** @type {Record<string, number[]>} */
    const cols = {};
    for (const f of BIN_FIELDS) cols[f] = [];
    if (format === 'csv') {
      const lines = body.trim().split('\n');
      const head = lines[0].split(',');
      const idx = BIN_FIELDS.map((f) => head.indexOf(f));
      if (idx.some((i) => i < 0)) return null;
      for (const line of lines.slice(1)) {
        const cells = line.split(',');
        BIN_FIELDS.forEach((f, k) => cols[f].push(Number(cells[idx[k]])));
      }
      return { meta: null, cols };
    }
    const doc = JSON.parse(body);
    if (format === 'columnar') {
      for (const f of BIN_FIELDS) {
        if (!Array.isArray(doc.bins[f])) return null;
        cols[f] = doc.bins[f];
      }
    } else {
      for (const b of doc.bins) for (const f of BIN_FIELDS) cols[f].push(b[f]);
    }
    return { meta: doc, cols };
  } catch (_) {
    return null;
  }
}

/**
 * What must hold of any answer of [start, end) at width `bin` (origin 0 unless
 * given): the widened window, the bin count and grid, and per bin
 * q1+q2+q3+q4 = visible = scheduled + unscheduled, 0 <= counts <= maxBlocks.
 * Returns '' when all hold, else what failed.
 * @param {{meta: any, cols: Record<string, number[]>}|null} p @param {View} v @param {string} format @param {number} maxBlocks
 */
export function binProblems(p, v, format, maxBlocks) {
  if (!p) return 'the answer does not parse';
  const origin = v.origin || 0;
  const first = origin + Math.floor((v.start - origin) / v.bin) * v.bin;
  const last = origin + Math.ceil((v.end - origin) / v.bin) * v.bin;
  const n = (last - first) / v.bin;
  if (format !== 'csv') {
    const m = p.meta;
    if (m.bin_seconds !== v.bin || m.start_unix !== first || m.end_unix !== last) {
      return `window: got bin_seconds=${m.bin_seconds} [${m.start_unix}, ${m.end_unix}), want ${v.bin} [${first}, ${last})`;
    }
  }
  const c = p.cols;
  if (c.visible_count.length !== n) return `${c.visible_count.length} bins, want ${n}`;
  for (let i = 0; i < n; i++) {
    if (c.bin_start_unix[i] !== first + i * v.bin || c.bin_end_unix[i] !== first + (i + 1) * v.bin) return `bin ${i} is not on the grid`;
    const vis = c.visible_count[i];
    if (!(vis >= 0 && vis <= maxBlocks)) return `bin ${i}: visible_count ${vis} outside [0, ${maxBlocks}]`;
    const q = c.priority_q1_count[i] + c.priority_q2_count[i] + c.priority_q3_count[i] + c.priority_q4_count[i];
    if (q !== vis) return `bin ${i}: quartile counts add up to ${q}, visible_count is ${vis}`;
    if (c.scheduled_visible_count[i] + c.unscheduled_visible_count[i] !== vis) return `bin ${i}: scheduled + unscheduled != visible_count`;
  }
  return '';
}

/** X-Cache of an answer, as a tag value: hit, partial, miss, or none when absent. @param {import('k6/http').Response} r */
export function cacheOf(r) {
  const x = (r.headers['X-Cache'] || '').toLowerCase();
  return x === 'hit' || x === 'partial' || x === 'miss' ? x : 'none';
}

// ------------------------------------------------------------------ summaries

/**
 * @typedef {{type: string, contains: string, values: Record<string, number>, thresholds?: Record<string, {ok: boolean}>}} SummaryMetric
 * @typedef {{name: string, path: string, checks: Array<{name: string, passes: number, fails: number}>, groups: SummaryGroup[]}} SummaryGroup
 * @typedef {{metrics: Record<string, SummaryMetric>, root_group: SummaryGroup, state: {testRunDurationMs: number}}} SummaryData
 */

/** @param {number} v @param {string} contains */
function fmt(v, contains) {
  if (v === undefined || v === null) return '-';
  if (contains === 'time') return v >= 1000 ? `${(v / 1000).toFixed(2)}s` : `${v.toFixed(2)}ms`;
  if (contains === 'data') return v >= 1e6 ? `${(v / 1e6).toFixed(1)}MB` : `${(v / 1e3).toFixed(1)}kB`;
  return Number.isInteger(v) ? String(v) : v.toFixed(3);
}

/** @param {SummaryGroup} g @param {string[]} out */
function collectChecks(g, out) {
  for (const c of g.checks) out.push(`  ${c.fails ? 'FAIL' : 'ok  '} ${g.path ? `${g.path.replace(/^::/, '')} > ` : ''}${c.name}: ${c.passes} passed, ${c.fails} failed`);
  for (const sub of g.groups) collectChecks(sub, out);
}

/**
 * handleSummary output: the summary data (plus `derived`) as JSON in
 * SUMMARY_DIR/<script>-summary.json (or SUMMARY_FILE), and a text report on
 * stdout: thresholds, checks, and the latency of every trend metric.
 * @param {string} script @param {SummaryData} data @param {Record<string, any>} derived
 */
export function summaryOutputs(script, data, derived) {
  const file = env('SUMMARY_FILE', `${env('SUMMARY_DIR', '.').replace(/\/+$/, '')}/${script}-summary.json`);
  const lines = [`${script}: ${BASE_URL}, ${(data.state.testRunDurationMs / 1000).toFixed(1)} s`, 'thresholds:'];
  const keys = Object.keys(data.metrics).sort();
  for (const k of keys) {
    const m = data.metrics[k];
    for (const [expr, r] of Object.entries(m.thresholds || {})) {
      const agg = expr.replace(/\s*(<=|>=|==|!=|<|>).*$/, '');
      lines.push(`  ${r.ok ? 'ok  ' : 'FAIL'} ${k} ${expr} (${agg} = ${fmt(m.values[agg], m.contains)})`);
    }
  }
  lines.push('checks:');
  collectChecks(data.root_group, lines);
  lines.push('metrics:');
  for (const k of keys) {
    const m = data.metrics[k];
    const v = m.values;
    if (m.type === 'trend') lines.push(`  ${k}: n=${v.count ?? '-'} p50=${fmt(v.med, m.contains)} p95=${fmt(v['p(95)'], m.contains)} p99=${fmt(v['p(99)'], m.contains)} max=${fmt(v.max, m.contains)}`);
    else if (m.type === 'counter') lines.push(`  ${k}: ${fmt(v.count, m.contains)} (${fmt(v.rate, '')}/s)`);
    else if (m.type === 'rate') lines.push(`  ${k}: ${(100 * v.rate).toFixed(2)}% (${v.passes} of ${v.passes + v.fails})`);
  }
  if (Object.keys(derived).length) lines.push(`derived: ${JSON.stringify(derived)}`);
  lines.push(`summary written to ${file}`);
  return {
    stdout: `${lines.join('\n')}\n`,
    [file]: JSON.stringify({ script, base_url: BASE_URL, derived, ...data }, null, 2),
  };
}

/** values of a (sub)metric of the summary, or null. @param {SummaryData} data @param {string} key */
export function valuesOf(data, key) {
  const m = data.metrics[key];
  return m ? m.values : null;
}
