// k6: uploads of generated schedules of several sizes, JSON and NDJSON.
//
// Each iteration uploads one file of DATA_DIR (in turn, so every file is
// uploaded as often), under a new name so that it is new content (201), polls
// its summary job (GET /v1/jobs/{id}) until done or failed, reads the schedule
// back and deletes it (CLEANUP=0 keeps it).
//
//   bash loadtests/gen_data.sh                       # loadtests/data/*
//   BASE_URL=http://127.0.0.1:8080 k6 run loadtests/upload.js
//
// Settings (all from the environment; README.md lists them with their
// defaults): BASE_URL, TOKEN, DATA_DIR, SIZES, FORMATS, VUS, ROUNDS,
// ITERATIONS, MAX_DURATION, UNIQUE, CLEANUP, POLL_INTERVAL, POLL_TIMEOUT,
// UPLOAD_TIMEOUT, UPLOAD_P95_MS, UPLOAD_P99_MS, UPLOAD_MS_PER_MB,
// JOB_P95_MS, ERROR_RATE, CHECKS_MIN, ABORT_ON_FAIL, SUMMARY_DIR,
// SUMMARY_FILE.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import {
  BASE_URL, env, envBool, envInt, envNum, envList, envDuration, dataFile, parseManifest, withNamePrefix,
  uploadSchedule, pollJob, deleteSchedule, jsonOf, requireReady, runId, warnOnce, summaryOutputs, summaryTrendStats, threshold,
} from './lib/common.js';

const manifest = parseManifest(open(dataFile('manifest.json')));
const SIZES = envList('SIZES', []);
const FORMATS = envList('FORMATS', ['json', 'ndjson']);
const files = manifest.files.filter((f) => (SIZES.length === 0 || SIZES.includes(f.label)) && FORMATS.includes(f.format));
if (files.length === 0) throw new Error(`no file of manifest.json matches SIZES=${SIZES.join(',')} FORMATS=${FORMATS.join(',')}`);
// Every VU holds every selected file (k6 copies open() data per VU): pick
// SIZES and VUS so that VUS x the files' total size fits in memory.
const bodies = files.map((f) => open(dataFile(f.file), 'b'));

const VUS = envInt('VUS', 2);
const ITERATIONS = envInt('ITERATIONS', files.length * envInt('ROUNDS', 3));
const UNIQUE = envBool('UNIQUE', true);
const CLEANUP = envBool('CLEANUP', true);
const ERROR_RATE = envNum('ERROR_RATE', 0.01);

/** Latency budget of an upload of `bytes`: a fixed part plus a part per MB (the server parses and stores every period). */
function budget(/** @type {number} */ base, /** @type {number} */ bytes) {
  return Math.round(base + envNum('UPLOAD_MS_PER_MB', 100) * (bytes / 1e6));
}

/** @type {Record<string, Array<string | import('k6/options').ObjectThreshold>>} */
const thresholds = {
  http_req_failed: [threshold(`rate<${ERROR_RATE}`)],
  'http_req_failed{op:upload}': [threshold(`rate<${ERROR_RATE}`)],
  upload_errors: [threshold(`rate<${ERROR_RATE}`)],
  job_wait: [`p(95)<${envNum('JOB_P95_MS', 30000)}`],
  checks: [`rate>${envNum('CHECKS_MIN', 0.99)}`],
};
for (const label of [...new Set(files.map((f) => f.label))]) {
  const bytes = Math.max(...files.filter((f) => f.label === label).map((f) => f.bytes));
  thresholds[`http_req_duration{op:upload,size:${label}}`] = [
    threshold(`p(95)<${budget(envNum('UPLOAD_P95_MS', 300), bytes)}`),
    threshold(`p(99)<${budget(envNum('UPLOAD_P99_MS', 600), bytes)}`),
  ];
}

/** @type {import('k6/options').Options} */
export const options = {
  scenarios: {
    uploads: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: ITERATIONS,
      maxDuration: envDuration('MAX_DURATION', '30m'),
    },
  },
  thresholds,
  summaryTrendStats,
};

const uploadErrors = new Rate('upload_errors');
const jobWait = new Trend('job_wait', true);
const uploadedBytes = new Counter('uploaded_bytes');
const uploadMBps = new Trend('upload_mb_per_s');

export function setup() {
  requireReady();
  return { run: runId() };
}

/** @param {{run: string}} data */
export default function (data) {
  const k = exec.scenario.iterationInTest % files.length;
  const f = files[k];
  const tags = { size: f.label, format: f.format };
  const body = UNIQUE ? withNamePrefix(bodies[k], `lt-up-${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}-`) : bodies[k];

  const r = uploadSchedule(body, f.format, tags, env('UPLOAD_TIMEOUT', '10m'));
  const up = jsonOf(r);
  const ok = check(r, {
    'upload: 201 Created (200 "duplicate" when UNIQUE=0)': (x) => x.status === 201 || (!UNIQUE && x.status === 200 && up && up.duplicate === true),
    'upload: Location is /v1/schedules/{schedule_id}': (x) => x.status !== 201 || (up && x.headers.Location === `/v1/schedules/${up.schedule_id}`),
    'upload: blocks as in the file': () => up && up.blocks === f.blocks,
    'upload: periods, range and job_id are reported': () => up && up.periods > 0 && up.empty_periods_dropped >= 0
      && Number.isInteger(up.start_unix) && up.end_unix > up.start_unix && Number.isInteger(up.job_id),
  }, tags);
  uploadErrors.add(!ok, tags);
  if (!ok) warnOnce('upload', `upload of ${f.file}: ${r.status} ${r.error} ${String(r.body).slice(0, 300)}`);
  if (!up || (r.status !== 201 && r.status !== 200)) return;
  uploadedBytes.add(body.byteLength, tags);
  uploadMBps.add(body.byteLength / 1e6 / (r.timings.duration / 1000), tags);

  const job = pollJob(up.job_id, tags);
  jobWait.add(job.waitedMs, tags);
  check(job, {
    'job: reaches done': (j) => j.state === 'done',
    'job: is the summary job of this schedule': (j) => j.job && j.job.kind === 'summary' && j.job.schedule_id === up.schedule_id,
  }, tags);

  const g = http.get(`${BASE_URL}/v1/schedules/${up.schedule_id}`, { tags: { name: 'GET /v1/schedules/{id}', ...tags, op: 'schedule' } });
  const s = jsonOf(g);
  check(g, {
    'schedule: 200 with the upload\'s checksum': (x) => x.status === 200 && s && s.checksum === up.checksum,
    'schedule: summary present once the job is done': () => job.state !== 'done' || (s && s.summary && s.summary.total_blocks === f.blocks
      && s.summary.bin_seconds === 900 && s.summary.total_bins > 0),
  }, tags);

  if (CLEANUP && !(r.status === 200 && up.duplicate)) deleteSchedule(up.schedule_id, tags);
}

/** @param {import('./lib/common.js').SummaryData} data */
export function handleSummary(data) {
  /** @type {Record<string, any>} */
  const derived = { files: files.map((f) => `${f.file} (${f.blocks} blocks, ${f.bytes} bytes)`) };
  for (const key of Object.keys(data.metrics)) {
    const m = /^http_req_duration\{op:upload,size:(.+)\}$/.exec(key);
    if (m) derived[`upload_p95_ms_${m[1]}`] = data.metrics[key].values['p(95)'];
  }
  return summaryOutputs('upload', data, derived);
}
