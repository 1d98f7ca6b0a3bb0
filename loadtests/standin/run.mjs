#!/usr/bin/env node
// A small Node stand-in for `k6 run`, for smoke-checking the k6 scripts of
// this folder where k6 is not installed. It is NOT a load generator: it runs
// each scenario's executor approximately, with a handful of VUs (worker
// threads), so that every code path of a script runs against a live server.
// See loadtests/README.md ("The stand-in") for what it implements.
//
//   node loadtests/standin/run.mjs [-e NAME=VALUE]... [--strict-thresholds]
//        [--max-iterations N] [--max-duration SECONDS] script.js
//
// Exit codes: 0 ok; 1 an iteration threw, or a scenario ran no iteration;
// 2 a check failed; 99 a threshold failed (with --strict-thresholds, or when
// abortOnFail triggered); 104 invalid options; 107 an error in the init
// context, setup, teardown or handleSummary; 108 exec.test.abort(); 110
// exec.test.fail().
import { Worker, MessageChannel } from 'node:worker_threads';
import http from 'node:http';
import https from 'node:https';
import zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const HERE = path.dirname(new URL(import.meta.url).pathname);

// ---------------------------------------------------------------- arguments

function usage(msg) {
  if (msg) process.stderr.write(`standin: ${msg}\n`);
  process.stderr.write('usage: node loadtests/standin/run.mjs [-e NAME=VALUE]... [--strict-thresholds] [--max-iterations N] [--max-duration SECONDS] script.js\n');
  process.exit(msg ? 104 : 0);
}

const cli = { env: /** @type {Record<string,string>} */ ({}), strict: false, maxIterations: Infinity, maxDurationMs: 300_000, script: '' };
{
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const arg = a[i];
    const next = () => { if (i + 1 >= a.length) usage(`${arg} needs a value`); return a[++i]; };
    if (arg === '-e' || arg === '--env') {
      const kv = next();
      const eq = kv.indexOf('=');
      if (eq <= 0) usage(`-e takes NAME=VALUE, not "${kv}"`);
      cli.env[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (arg === '--strict-thresholds') cli.strict = true;
    else if (arg === '--max-iterations') cli.maxIterations = Number(next());
    else if (arg === '--max-duration') cli.maxDurationMs = Number(next()) * 1000;
    else if (arg === '-h' || arg === '--help') usage();
    else if (arg.startsWith('-')) usage(`unknown option ${arg}`);
    else if (cli.script) usage('one script at a time');
    else cli.script = path.resolve(arg);
  }
  if (!cli.script) usage('no script given');
  if (process.env.STANDIN_MAX_ITERATIONS) cli.maxIterations = Number(process.env.STANDIN_MAX_ITERATIONS);
  if (!(cli.maxIterations > 0) || !(cli.maxDurationMs > 0)) usage('--max-iterations and --max-duration must be positive');
}
// As `k6 run`: the script sees the process environment, overridden by -e.
const ENV = { ...process.env, ...cli.env };
const SCRIPT_NAME = path.basename(cli.script);

const log = (s) => process.stderr.write(`standin[${SCRIPT_NAME}]: ${s}\n`);

// ---------------------------------------------------------------- durations

function parseDuration(s, what) {
  if (typeof s === 'number') return s * 1000;
  const str = String(s).trim();
  if (str === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h|d)/gy;
  let total = 0;
  let m;
  let pos = 0;
  while ((m = re.exec(str))) {
    total += Number(m[1]) * { ms: 1, us: 1e-3, µs: 1e-3, ns: 1e-6, s: 1000, m: 60000, h: 3600000, d: 86400000 }[m[2]];
    pos = re.lastIndex;
  }
  if (pos !== str.length || str === '') throw new ConfigError(`${what}: invalid duration "${s}"`);
  return total;
}

class ConfigError extends Error {}

const delay = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const now = () => performance.now();

// ---------------------------------------------------------------- metrics

const BUILTIN = {
  vus: ['gauge', 'default'], vus_max: ['gauge', 'default'], iterations: ['counter', 'default'],
  iteration_duration: ['trend', 'time'], dropped_iterations: ['counter', 'default'],
  data_sent: ['counter', 'data'], data_received: ['counter', 'data'], checks: ['rate', 'default'],
  group_duration: ['trend', 'time'], http_reqs: ['counter', 'default'], http_req_duration: ['trend', 'time'],
  http_req_blocked: ['trend', 'time'], http_req_connecting: ['trend', 'time'],
  http_req_tls_handshaking: ['trend', 'time'], http_req_sending: ['trend', 'time'],
  http_req_waiting: ['trend', 'time'], http_req_receiving: ['trend', 'time'], http_req_failed: ['rate', 'default'],
};

/** @type {Map<string, {type: string, contains: string, samples: Array<{v: number, t: Record<string,string>}>}>} */
const metrics = new Map();
for (const [k, [type, contains]] of Object.entries(BUILTIN)) metrics.set(k, { type, contains, samples: [] });

function defineMetrics(defs) {
  for (const [name, d] of defs) {
    const m = metrics.get(name);
    if (!m) metrics.set(name, { type: d.type, contains: d.contains, samples: [] });
    else if (m.type !== d.type) throw new ConfigError(`metric "${name}" declared as ${d.type} and as ${m.type}`);
  }
}

function ingest(samples) {
  for (const s of samples) {
    const m = metrics.get(s.m);
    if (!m) { log(`a sample of the undeclared metric "${s.m}" was dropped`); continue; }
    m.samples.push({ v: s.v, t: s.t });
  }
}

function addSample(name, v, t) { metrics.get(name)?.samples.push({ v, t }); }

function percentile(sorted, p) {
  if (!sorted.length) return 0;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

/** k6's summary values of one (sub)metric. */
function aggregate(type, samples, trendStats, durationMs) {
  const vals = samples.map((s) => s.v);
  switch (type) {
    case 'counter': {
      const count = vals.reduce((a, b) => a + b, 0);
      return { count, rate: durationMs > 0 ? count / (durationMs / 1000) : 0 };
    }
    case 'gauge':
      return { value: vals.length ? vals[vals.length - 1] : 0, min: vals.length ? Math.min(...vals) : 0, max: vals.length ? Math.max(...vals) : 0 };
    case 'rate': {
      const passes = vals.filter((v) => v !== 0).length;
      return { rate: vals.length ? passes / vals.length : 0, passes, fails: vals.length - passes };
    }
    default: {
      const sorted = [...vals].sort((a, b) => a - b);
      const n = sorted.length;
      /** @type {Record<string, number>} */
      const all = {
        avg: n ? sorted.reduce((a, b) => a + b, 0) / n : 0,
        min: n ? sorted[0] : 0,
        max: n ? sorted[n - 1] : 0,
        med: percentile(sorted, 50),
        count: n,
      };
      /** @type {Record<string, number>} */
      const out = {};
      for (const stat of new Set([...trendStats, 'avg', 'min', 'med', 'max', 'p(90)', 'p(95)'])) {
        const pm = /^p\((\d+(?:\.\d+)?)\)$/.exec(stat);
        if (pm) out[stat] = percentile(sorted, Number(pm[1]));
        else if (stat in all) out[stat] = all[stat];
      }
      return out;
    }
  }
}

// ---------------------------------------------------------------- thresholds

function parseMetricKey(key) {
  const m = /^([a-zA-Z_][a-zA-Z0-9_]*)(?:\{(.*)\})?$/.exec(key.trim());
  if (!m) throw new ConfigError(`threshold on "${key}": not a metric name with optional {tag:value,...}`);
  /** @type {Record<string,string>} */
  const tags = {};
  if (m[2] !== undefined) {
    for (const part of m[2].split(',')) {
      const c = part.indexOf(':');
      if (c <= 0) throw new ConfigError(`threshold on "${key}": "${part}" is not tag:value`);
      tags[part.slice(0, c).trim()] = part.slice(c + 1).trim().replace(/^["']|["']$/g, '');
    }
  }
  return { name: m[1], tags };
}

const AGG_BY_TYPE = { trend: /^(avg|min|max|med|count|p\(\d+(\.\d+)?\))$/, counter: /^(count|rate)$/, rate: /^rate$/, gauge: /^value$/ };

function parseThreshold(expr, type, key) {
  const m = /^\s*(avg|min|max|med|count|rate|value|p\(\d+(?:\.\d+)?\))\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$/.exec(expr);
  if (!m) throw new ConfigError(`threshold "${expr}" on ${key}: cannot parse (want e.g. "p(95)<200", "rate<0.01", "count>0")`);
  if (!AGG_BY_TYPE[type].test(m[1])) throw new ConfigError(`threshold "${expr}" on ${key}: "${m[1]}" does not apply to a ${type} metric`);
  return { agg: m[1], op: m[2], value: Number(m[3]) };
}

function compare(a, op, b) {
  switch (op) {
    case '<': return a < b;
    case '<=': return a <= b;
    case '>': return a > b;
    case '>=': return a >= b;
    case '!=': return a !== b;
    default: return a === b;
  }
}

function matches(sampleTags, tags) {
  for (const [k, v] of Object.entries(tags)) if (sampleTags[k] !== v) return false;
  return true;
}

/** @returns {Array<{key: string, name: string, tags: Record<string,string>, exprs: Array<{source: string, agg: string, op: string, value: number, abortOnFail: boolean, delayMs: number}>}>} */
function compileThresholds(thresholds) {
  const out = [];
  for (const [key, list] of Object.entries(thresholds || {})) {
    const { name, tags } = parseMetricKey(key);
    const m = metrics.get(name);
    if (!m) throw new ConfigError(`invalid threshold defined on ${key}: no metric named "${name}" (declare it in the init context)`);
    if (!Array.isArray(list)) throw new ConfigError(`thresholds of ${key} must be a list`);
    const exprs = list.map((t) => {
      const o = typeof t === 'string' ? { threshold: t } : t;
      const p = parseThreshold(o.threshold, m.type, key);
      return { source: o.threshold, ...p, abortOnFail: Boolean(o.abortOnFail), delayMs: o.delayAbortEval ? parseDuration(o.delayAbortEval, 'delayAbortEval') : 0 };
    });
    out.push({ key, name, tags, exprs });
  }
  return out;
}

function evalThreshold(th, trendStats, durationMs) {
  const m = metrics.get(th.name);
  const samples = Object.keys(th.tags).length ? m.samples.filter((s) => matches(s.t, th.tags)) : m.samples;
  const stats = [...trendStats, ...th.exprs.map((e) => e.agg)];
  const values = aggregate(m.type, samples, stats, durationMs);
  return {
    samples: samples.length, values, type: m.type, contains: m.contains,
    results: th.exprs.map((e) => ({ ...e, actual: values[e.agg], ok: compare(values[e.agg], e.op, e.value) })),
  };
}

// ---------------------------------------------------------------- HTTP (main side)

const GO_ERRORS = { ECONNREFUSED: 1212, ECONNRESET: 1220, ENOTFOUND: 1101, EAI_AGAIN: 1101, ETIMEDOUT: 1050, EPIPE: 1220, K6_TIMEOUT: 1050 };

function decompress(buf, enc) {
  switch ((enc || '').trim().toLowerCase()) {
    case '': case 'identity': return buf;
    case 'gzip': case 'x-gzip': return zlib.gunzipSync(buf);
    case 'deflate': try { return zlib.inflateSync(buf); } catch { return zlib.inflateRawSync(buf); }
    case 'br': return zlib.brotliDecompressSync(buf);
    case 'zstd':
      if (typeof (/** @type {any} */ (zlib)).zstdDecompressSync === 'function') return (/** @type {any} */ (zlib)).zstdDecompressSync(buf);
      throw new Error('zstd content-encoding needs a newer Node');
    default: throw new Error(`unsupported content-encoding "${enc}"`);
  }
}

function singleRequest(agents, method, urlStr, headers, body, timeoutMs, keepBody) {
  return new Promise((resolve) => {
    const u = new URL(urlStr);
    const mod = u.protocol === 'https:' ? https : http;
    const t0 = now();
    let tSocket = NaN; let tConnect = NaN; let tTls = NaN; let tSent = NaN; let tResp = NaN;
    let socket = null; let bw0 = 0; let br0 = 0; let reused = false;
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const end = now();
      const ts = Number.isNaN(tSocket) ? end : tSocket;
      const tc = reused ? ts : (Number.isNaN(tConnect) ? ts : tConnect);
      const tt = Number.isNaN(tTls) ? tc : tTls;
      const tr = Number.isNaN(tResp) ? end : tResp;
      const tsent = Number.isNaN(tSent) ? Math.min(tr, end) : Math.min(tSent, tr);
      const sending = Math.max(0, tsent - tt);
      const waiting = Math.max(0, tr - tsent);
      const receiving = Math.max(0, end - tr);
      resolve({
        ...r,
        url: urlStr,
        timings: {
          blocked: Math.max(0, ts - t0), connecting: reused ? 0 : Math.max(0, tc - ts), tls_handshaking: Math.max(0, tt - tc),
          sending, waiting, receiving, duration: sending + waiting + receiving,
        },
        remoteIp: socket?.remoteAddress || '', remotePort: socket?.remotePort || 0,
        bytesSent: socket ? Math.max(0, socket.bytesWritten - bw0) : 0,
        bytesReceived: socket ? Math.max(0, socket.bytesRead - br0) : 0,
      });
    };
    const req = mod.request({
      protocol: u.protocol, hostname: u.hostname.replace(/^\[|\]$/g, ''), port: u.port || undefined,
      path: u.pathname + u.search, method, headers: Object.fromEntries(headers.map(([k, v]) => [k, v])),
      agent: u.protocol === 'https:' ? agents.https : agents.http,
    });
    if (body) req.setHeader('Content-Length', body.byteLength);
    else if (!['GET', 'HEAD', 'OPTIONS', 'DELETE'].includes(method)) req.setHeader('Content-Length', 0);
    const timer = setTimeout(() => {
      const e = /** @type {any} */ (new Error('request timeout'));
      e.code = 'K6_TIMEOUT';
      req.destroy(e);
    }, timeoutMs);
    req.on('socket', (s) => {
      socket = s; tSocket = now(); bw0 = s.bytesWritten; br0 = s.bytesRead;
      reused = !s.connecting;
      if (s.connecting) {
        s.once('connect', () => { tConnect = now(); });
        s.once('secureConnect', () => { tTls = now(); });
      }
    });
    req.on('finish', () => { tSent = now(); });
    req.on('response', (res) => {
      tResp = now();
      const chunks = [];
      res.on('data', (c) => { if (keepBody) chunks.push(c); });
      res.on('error', (e) => finish({ status: 0, statusText: '', headers: [], body: null, error: e.message, errorCode: 1000, proto: '' }));
      res.on('end', () => {
        const raw = res.rawHeaders;
        const hdrs = [];
        for (let i = 0; i < raw.length; i += 2) hdrs.push([raw[i], raw[i + 1]]);
        let buf = keepBody ? Buffer.concat(chunks) : null;
        try {
          if (buf && buf.length) buf = decompress(buf, res.headers['content-encoding']);
        } catch (e) {
          finish({ status: 0, statusText: '', headers: hdrs, body: null, error: `decompressing the body: ${/** @type {Error} */ (e).message}`, errorCode: 1000, proto: '' });
          return;
        }
        finish({ status: res.statusCode || 0, statusText: res.statusMessage || '', headers: hdrs, body: buf ? new Uint8Array(buf) : null,
          error: '', errorCode: 0, proto: `HTTP/${res.httpVersion}` });
      });
    });
    req.on('error', (e) => {
      const code = /** @type {any} */ (e).code;
      finish({ status: 0, statusText: '', headers: [], body: null, error: e.message || String(code), errorCode: GO_ERRORS[code] || 1000, proto: '' });
    });
    if (body) req.end(Buffer.from(body.buffer, body.byteOffset, body.byteLength)); else req.end();
  });
}

async function performRequest(agents, w) {
  let { method, url } = w;
  let body = w.body;
  const hops = [];
  for (let i = 0; ; i++) {
    const r = await singleRequest(agents, method, url, w.headers, body, w.timeoutMs, w.keepBody);
    const loc = r.headers.find(([k]) => k.toLowerCase() === 'location');
    if (r.error || ![301, 302, 303, 307, 308].includes(r.status) || !loc || i >= w.redirects) return { ...r, hops };
    hops.push({ ...r, body: null });
    url = new URL(loc[1], url).href;
    if (r.status === 303 || ((r.status === 301 || r.status === 302) && method !== 'GET' && method !== 'HEAD')) { method = 'GET'; body = null; }
  }
}

// ---------------------------------------------------------------- VUs

let nextVuId = 1;
const state = {
  startedAt: 0,
  aborted: /** @type {null | {reason: string, code: number}} */ (null),
  failedByScript: /** @type {string|null} */ (null),
  iterationErrors: /** @type {Map<string, {count: number, first: string}>} */ (new Map()),
  failedChecks: /** @type {Map<string, {count: number, first: string}>} */ (new Map()),
  options: /** @type {Record<string, any>} */ ({}),
  liveVus: 0,
  maxVus: 0,
};

class VU {
  constructor(id, env) {
    this.id = id;
    this.signal = new SharedArrayBuffer(8);
    this.flags = new Int32Array(this.signal);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const keepAlive = !state.options.noConnectionReuse;
    const maxSockets = state.options.batchPerHost || 6;
    this.agents = { http: new http.Agent({ keepAlive, maxSockets }), https: new https.Agent({ keepAlive, maxSockets, rejectUnauthorized: !state.options.insecureSkipTLSVerify }) };
    this.worker = new Worker(path.join(HERE, 'vu.mjs'), {
      workerData: { vuId: id, env, script: cli.script, signal: this.signal, port: port2 },
      transferList: [port2],
      stdout: false, stderr: false,
    });
    this.pending = null;
    this.exited = false;
    this.busy = false;
    this.ready = new Promise((resolve, reject) => { this.pending = { type: 'ready', resolve, reject }; });
    this.worker.on('message', (msg) => this.onMessage(msg));
    this.worker.on('error', (e) => this.fail(new Error(`VU ${id} crashed: ${e.stack || e}`)));
    this.worker.on('exit', (code) => { this.exited = true; this.fail(new Error(`VU ${id} exited (code ${code})`)); });
    this.port.on('message', (msg) => this.onSync(msg));
    state.liveVus += 1;
    state.maxVus = Math.max(state.maxVus, state.liveVus);
  }

  fail(e) {
    const p = this.pending;
    this.pending = null;
    if (p) p.reject(e);
  }

  onMessage(msg) {
    if (msg.type === 'abort') { state.aborted ??= { reason: msg.reason, code: 108 }; return; }
    if (msg.type === 'fail') { state.failedByScript ??= msg.reason; return; }
    const p = this.pending;
    if (msg.type === 'initError') { this.pending = null; p?.reject(new ScriptError(`init context: ${msg.error}`)); return; }
    if (!p || (p.type !== msg.type)) { log(`unexpected message ${msg.type} from VU ${this.id}`); return; }
    this.pending = null;
    p.resolve(msg);
  }

  async onSync(msg) {
    if (msg.type !== 'http') return;
    const responses = await Promise.all(msg.requests.map((w) => performRequest(this.agents, w)));
    if (this.exited) return;
    const transfer = responses.filter((r) => r.body).map((r) => r.body.buffer);
    try {
      this.port.postMessage({ id: msg.id, responses }, transfer);
      Atomics.store(this.flags, 0, 1);
      Atomics.notify(this.flags, 0);
    } catch { /* the VU is gone */ }
  }

  call(msg, replyType) {
    if (this.exited) return Promise.reject(new Error(`VU ${this.id} is gone`));
    return new Promise((resolve, reject) => {
      this.pending = { type: replyType, resolve, reject };
      this.worker.postMessage(msg);
    });
  }

  async stop() {
    if (this.exited) return;
    Atomics.store(this.flags, 1, 1);
    Atomics.notify(this.flags, 1);
    Atomics.notify(this.flags, 0);
    const p = this.pending;
    this.pending = null;
    this.agents.http.destroy();
    this.agents.https.destroy();
    await this.worker.terminate();
    state.liveVus -= 1;
    p?.reject(new Error(`VU ${this.id} was stopped`));
  }
}

class ScriptError extends Error {}

async function newVU(env) {
  const v = new VU(nextVuId++, env);
  const ready = await v.ready;
  defineMetrics(ready.metricDefs);
  v.worker.postMessage({ type: 'configure', options: state.options });
  return v;
}

function noteFailedChecks(list, where) {
  for (const f of list || []) {
    const key = `${f.name}${f.group ? ` (group ${f.group})` : ''}`;
    const e = state.failedChecks.get(key) || { count: 0, first: `${where}, iteration ${f.iter}` };
    e.count += 1;
    state.failedChecks.set(key, e);
    if (ENV.STANDIN_VERBOSE) log(`check failed: ${key} at ${where}`);
  }
}

function noteError(where, error) {
  const firstLine = error.split('\n')[0];
  const e = state.iterationErrors.get(firstLine) || { count: 0, first: `${where}:\n${error}` };
  e.count += 1;
  state.iterationErrors.set(firstLine, e);
  if (e.count === 1) log(`error in ${where}: ${error}`);
}

// ---------------------------------------------------------------- executors

/** One scenario: its VUs and how iterations are started. */
class ScenarioRun {
  constructor(name, sc, exportsMap) {
    this.name = name;
    this.sc = sc;
    this.exec = sc.exec || 'default';
    if (exportsMap[this.exec] !== 'function') throw new ConfigError(`scenario "${name}": the script exports no function "${this.exec}"`);
    this.startMs = sc.startTime ? parseDuration(sc.startTime, `${name}.startTime`) : 0;
    this.gracefulStopMs = parseDuration(sc.gracefulStop ?? '30s', `${name}.gracefulStop`);
    this.vus = /** @type {VU[]} */ ([]);
    this.idle = /** @type {VU[]} */ ([]);
    this.started = 0;
    this.completed = 0;
    this.interrupted = 0;
    this.errors = 0;
    this.dropped = 0;
    this.iterCounter = 0;
    this.running = new Set();
    this.stopped = false;
    this.tags = { ...(sc.tags || {}) };
    const ex = sc.executor;
    const pos = (v, d) => (v === undefined ? d : v);
    switch (ex) {
      case 'shared-iterations':
      case 'per-vu-iterations':
        this.initialVus = pos(sc.vus, 1);
        this.iterations = pos(sc.iterations, 1);
        this.durationMs = parseDuration(sc.maxDuration ?? '10m', `${name}.maxDuration`);
        break;
      case 'constant-vus':
        this.initialVus = pos(sc.vus, 1);
        this.durationMs = parseDuration(sc.duration, `${name}.duration`);
        break;
      case 'ramping-vus':
        this.stages = this.parseStages(sc.stages);
        this.initialVus = Math.max(pos(sc.startVUs, 1), ...this.stages.map((s) => s.target));
        this.durationMs = this.stages.reduce((a, s) => a + s.ms, 0);
        break;
      case 'constant-arrival-rate':
        this.stages = [{ ms: parseDuration(sc.duration, `${name}.duration`), target: sc.rate }];
        this.startRate = sc.rate;
        this.initialVus = sc.preAllocatedVUs;
        this.maxVUs = pos(sc.maxVUs, sc.preAllocatedVUs);
        this.durationMs = this.stages[0].ms;
        this.timeUnitMs = parseDuration(sc.timeUnit ?? '1s', `${name}.timeUnit`);
        break;
      case 'ramping-arrival-rate':
        this.stages = this.parseStages(sc.stages);
        this.startRate = pos(sc.startRate, 0);
        this.initialVus = sc.preAllocatedVUs;
        this.maxVUs = pos(sc.maxVUs, sc.preAllocatedVUs);
        this.durationMs = this.stages.reduce((a, s) => a + s.ms, 0);
        this.timeUnitMs = parseDuration(sc.timeUnit ?? '1s', `${name}.timeUnit`);
        break;
      default:
        throw new ConfigError(`scenario "${name}": the stand-in does not implement the executor "${ex}"`);
    }
    if (ex.endsWith('arrival-rate')) {
      if (!(this.initialVus >= 1)) throw new ConfigError(`scenario "${name}": preAllocatedVUs must be at least 1`);
      if (this.maxVUs < this.initialVus) throw new ConfigError(`scenario "${name}": maxVUs < preAllocatedVUs`);
    }
    if (!(this.initialVus >= 0) || !Number.isInteger(this.initialVus)) throw new ConfigError(`scenario "${name}": bad VU count ${this.initialVus}`);
  }

  parseStages(stages) {
    if (!Array.isArray(stages) || !stages.length) throw new ConfigError(`scenario "${this.name}": stages must be a non-empty list`);
    return stages.map((s, i) => {
      if (typeof s.target !== 'number' || s.target < 0) throw new ConfigError(`scenario "${this.name}": stage ${i} has no target`);
      return { ms: parseDuration(s.duration, `${this.name}.stages[${i}].duration`), target: s.target };
    });
  }

  /** Piecewise-linear value of the stages at t ms (VUs or iterations per timeUnit). */
  targetAt(t, start) {
    let from = start;
    let acc = 0;
    for (const s of this.stages) {
      if (t < acc + s.ms) return from + (s.target - from) * ((t - acc) / s.ms);
      acc += s.ms;
      from = s.target;
    }
    return from;
  }

  async allocate(setupData) {
    const env = { ...ENV, ...(this.sc.env || {}) };
    const n = Math.max(this.initialVus, 0);
    const made = await Promise.all(Array.from({ length: n }, () => newVU(env)));
    for (const v of made) this.adopt(v, setupData);
  }

  adopt(v, setupData) {
    v.worker.postMessage({
      type: 'scenario', data: setupData,
      scenario: { name: this.name, executor: this.sc.executor, startTime: Date.now(), tags: this.tags, env: this.sc.env || {} },
    });
    this.vus.push(v);
    this.idle.push(v);
  }

  capReached() { return this.started >= cli.maxIterations; }

  async iterate(v) {
    this.started += 1;
    v.busy = true;
    const iterInTest = this.iterCounter++;
    const p = v.call({ type: 'iterate', exec: this.exec, iterInTest }, 'iterDone').then((r) => {
      ingest(r.samples);
      noteFailedChecks(r.failedChecks, `VU ${v.id} scenario ${this.name}`);
      if (r.error) { this.errors += 1; noteError(`scenario ${this.name}, VU ${v.id}, iteration ${iterInTest}`, r.error); }
      if (r.interrupted) this.interrupted += 1; else this.completed += 1;
    }, (e) => {
      if (!this.stopped) { this.errors += 1; noteError(`scenario ${this.name}, VU ${v.id}`, String(e.message || e)); } else this.interrupted += 1;
    }).finally(() => { v.busy = false; this.running.delete(p); });
    this.running.add(p);
    await p;
  }

  shouldStop(t0) { return this.stopped || state.aborted !== null || now() - t0 >= this.durationMs || now() - state.startedAt >= cli.maxDurationMs; }

  async run(setupData) {
    await delay(this.startMs - (now() - state.startedAt));
    const t0 = now();
    this.t0 = t0;
    const ex = this.sc.executor;
    /** @type {Promise<unknown>} */
    let loops;
    if (ex === 'shared-iterations') {
      let left = this.iterations;
      loops = Promise.all(this.vus.map(async (v) => {
        while (left > 0 && !this.shouldStop(t0) && !this.capReached()) { left -= 1; await this.iterate(v); }
      }));
    } else if (ex === 'per-vu-iterations') {
      loops = Promise.all(this.vus.map(async (v) => {
        for (let i = 0; i < this.iterations && !this.shouldStop(t0) && !this.capReached(); i++) await this.iterate(v);
      }));
    } else if (ex === 'constant-vus' || ex === 'ramping-vus') {
      const start = ex === 'ramping-vus' ? (this.sc.startVUs ?? 1) : this.initialVus;
      loops = Promise.all(this.vus.map(async (v, i) => {
        while (!this.shouldStop(t0) && !this.capReached()) {
          const active = ex === 'constant-vus' ? this.initialVus : Math.floor(this.targetAt(now() - t0, start) + 1e-9);
          if (i < active) await this.iterate(v); else await delay(20);
        }
      }));
    } else {
      loops = this.arrivals(t0, setupData);
    }
    // The executor's time is up at its duration (maxDuration for the iteration
    // executors), at --max-duration, or at an abort: then running iterations
    // get gracefulStop to finish.
    const left = Math.min(this.durationMs - (now() - t0), cli.maxDurationMs - (now() - state.startedAt));
    let timer;
    const timeUp = new Promise((r) => { timer = setTimeout(r, Math.max(0, left)); });
    const aborted = new Promise((r) => { const i = setInterval(() => { if (state.aborted) { clearInterval(i); r(undefined); } }, 50); loops.finally(() => clearInterval(i)); });
    await Promise.race([loops, timeUp, aborted]);
    clearTimeout(timer);
    await this.drain();
    this.t1 = now();
  }

  async arrivals(t0, setupData) {
    const ex = this.sc.executor;
    const perMs = (t) => (ex === 'constant-arrival-rate' ? this.startRate : this.targetAt(t, this.startRate)) / this.timeUnitMs;
    // k6 starts the first iteration of a constant arrival rate at once.
    let acc = ex === 'constant-arrival-rate' ? 1 : 0;
    let last = 0;
    let pendingVus = 0;
    const spawning = [];
    while (!this.shouldStop(t0) && !this.capReached()) {
      const t = now() - t0;
      acc += ((perMs(last) + perMs(t)) / 2) * (t - last);
      last = t;
      while (acc >= 1 && !this.capReached()) {
        acc -= 1;
        const v = this.idle.find((x) => !x.busy);
        if (v) { this.iterate(v); continue; }
        this.dropped += 1;
        addSample('dropped_iterations', 1, { ...state.options.tags, ...this.tags, scenario: this.name });
        if (this.vus.length + pendingVus < this.maxVUs) {
          // As k6: a missing VU drops this iteration and starts initialising another one.
          const env = { ...ENV, ...(this.sc.env || {}) };
          pendingVus += 1;
          const sp = newVU(env).then((nv) => {
            if (this.stopped) nv.stop(); else this.adopt(nv, setupData);
          }, (e) => noteError(`scenario ${this.name}, new VU`, String(e.message || e))).finally(() => { pendingVus -= 1; });
          spawning.push(sp);
        }
      }
      await delay(5);
    }
    await Promise.all(spawning);
  }

  async drain() {
    if (!this.running.size) return;
    const deadline = delay(this.gracefulStopMs).then(() => 'timeout');
    const all = Promise.all([...this.running]).then(() => 'done');
    if ((await Promise.race([all, deadline])) === 'timeout') {
      log(`scenario ${this.name}: gracefulStop passed with ${this.running.size} iteration(s) running; interrupting them`);
      this.stopped = true;
      await Promise.all(this.vus.filter((v) => v.busy).map((v) => v.stop()));
    }
  }

  async close() {
    this.stopped = true;
    await Promise.all(this.vus.map((v) => v.stop()));
  }
}

/** k6's shortcut options (vus, duration, iterations, stages) as a scenario named "default". */
function scenariosOf(o) {
  if (o.scenarios && Object.keys(o.scenarios).length) {
    for (const k of ['vus', 'duration', 'iterations', 'stages']) {
      if (o[k] !== undefined) log(`option "${k}" is ignored because "scenarios" are set (k6 refuses this combination unless they are from the CLI)`);
    }
    return o.scenarios;
  }
  if (o.stages) return { default: { executor: 'ramping-vus', startVUs: o.vus ?? 1, stages: o.stages } };
  if (o.iterations !== undefined) return { default: { executor: 'shared-iterations', vus: o.vus ?? 1, iterations: o.iterations } };
  if (o.duration) return { default: { executor: 'constant-vus', vus: o.vus ?? 1, duration: o.duration } };
  return { default: { executor: 'per-vu-iterations', vus: o.vus ?? 1, iterations: 1 } };
}

// ---------------------------------------------------------------- summary

function md5(s) { return createHash('md5').update(s).digest('hex'); }

function rootGroup() {
  const root = { name: '', path: '', id: md5(''), groups: [], checks: [] };
  const byPath = new Map([['', root]]);
  const groupOf = (p) => {
    if (byPath.has(p)) return byPath.get(p);
    const cut = p.lastIndexOf('::');
    const parent = groupOf(p.slice(0, cut));
    const g = { name: p.slice(cut + 2), path: p, id: md5(p), groups: [], checks: [] };
    parent.groups.push(g);
    byPath.set(p, g);
    return g;
  };
  for (const s of metrics.get('group_duration').samples) groupOf(s.t.group || '');
  const checks = new Map();
  for (const s of metrics.get('checks').samples) {
    const g = groupOf(s.t.group || '');
    const p = `${g.path}::${s.t.check}`;
    let c = checks.get(p);
    if (!c) { c = { name: s.t.check, path: p, id: md5(p), passes: 0, fails: 0 }; checks.set(p, c); g.checks.push(c); }
    if (s.v) c.passes += 1; else c.fails += 1;
  }
  return root;
}

function summaryData(compiled, durationMs) {
  const trendStats = state.options.summaryTrendStats || ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)'];
  /** @type {Record<string, any>} */
  const out = {};
  for (const [name, m] of metrics) {
    if (!m.samples.length) continue;
    out[name] = { type: m.type, contains: m.contains, values: aggregate(m.type, m.samples, trendStats, durationMs) };
  }
  const http = metrics.get('http_req_duration');
  if (http.samples.length) {
    const ok = http.samples.filter((s) => s.t.expected_response === 'true');
    out['http_req_duration{expected_response:true}'] = { type: 'trend', contains: 'time', values: aggregate('trend', ok, trendStats, durationMs) };
  }
  const evaluated = [];
  for (const th of compiled) {
    const r = evalThreshold(th, trendStats, durationMs);
    evaluated.push({ th, r });
    const entry = out[th.key] || (out[th.key] = { type: r.type, contains: r.contains, values: aggregate(r.type, [], trendStats, durationMs) });
    if (Object.keys(th.tags).length) entry.values = aggregate(r.type, metrics.get(th.name).samples.filter((s) => matches(s.t, th.tags)), trendStats, durationMs);
    entry.thresholds = Object.fromEntries(r.results.map((x) => [x.source, { ok: x.ok }]));
  }
  return {
    data: {
      root_group: rootGroup(),
      options: { summaryTrendStats: trendStats, summaryTimeUnit: state.options.summaryTimeUnit || '', noColor: Boolean(state.options.noColor) },
      state: { isStdOutTTY: Boolean(process.stdout.isTTY), isStdErrTTY: Boolean(process.stderr.isTTY), testRunDurationMs: durationMs },
      metrics: out,
    },
    evaluated,
  };
}

function fmt(v, contains) {
  if (typeof v !== 'number') return String(v);
  if (contains === 'time') return v >= 1000 ? `${(v / 1000).toFixed(2)}s` : `${v.toFixed(2)}ms`;
  return Number.isInteger(v) ? String(v) : v.toFixed(4);
}

function defaultTextSummary(data) {
  const lines = [];
  for (const [k, m] of Object.entries(data.metrics).sort(([a], [b]) => a.localeCompare(b))) {
    lines.push(`  ${k}: ${Object.entries(m.values).map(([s, v]) => `${s}=${fmt(v, m.contains)}`).join(' ')}`);
  }
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------- main

async function main() {
  let exitCode = 0;
  const reasons = [];
  let vu0;
  try {
    vu0 = new VU(0, ENV);
  } catch (e) { log(String(e)); process.exit(107); }
  let ready;
  try {
    ready = await vu0.ready;
  } catch (e) {
    log(String(/** @type {Error} */ (e).message || e));
    await vu0.stop();
    process.exit(107);
  }
  state.options = ready.options || {};
  let scenarioRuns;
  let compiled;
  try {
    defineMetrics(ready.metricDefs);
    const scs = scenariosOf(state.options);
    scenarioRuns = Object.entries(scs).map(([n, sc]) => new ScenarioRun(n, sc, ready.exports));
    compiled = compileThresholds(state.options.thresholds);
  } catch (e) {
    log(`invalid options: ${/** @type {Error} */ (e).message}`);
    await vu0.stop();
    process.exit(104);
  }
  vu0.worker.postMessage({ type: 'configure', options: state.options });

  const t00 = now();
  state.startedAt = t00;
  // setup()
  let setupData = null;
  const setup = await vu0.call({ type: 'setup' }, 'setupDone').catch((e) => ({ error: String(e.message || e), samples: [], failedChecks: [] }));
  ingest(setup.samples || []);
  noteFailedChecks(setup.failedChecks, 'setup()');
  let fatal = null;
  if (setup.error) { fatal = `setup() failed: ${setup.error}`; }
  else setupData = setup.data;

  const vusGauge = setInterval(() => {
    addSample('vus', state.liveVus - 1, {});
    addSample('vus_max', state.maxVus - 1, {});
  }, 1000);

  let abortTimer = null;
  if (!fatal) {
    try {
      await Promise.all(scenarioRuns.map((s) => s.allocate(setupData)));
    } catch (e) {
      fatal = e instanceof ScriptError ? e.message : `starting VUs: ${e.message || e}`;
    }
  }
  if (!fatal) {
    state.startedAt = now();
    addSample('vus', state.liveVus - 1, {});
    addSample('vus_max', state.maxVus - 1, {});
    const aborting = compiled.filter((t) => t.exprs.some((e) => e.abortOnFail));
    if (aborting.length) {
      abortTimer = setInterval(() => {
        const elapsed = now() - state.startedAt;
        for (const th of aborting) {
          const r = evalThreshold(th, [], elapsed);
          for (const x of r.results) {
            if (x.abortOnFail && elapsed >= x.delayMs && r.samples > 0 && !x.ok && !state.aborted) {
              state.aborted = { reason: `threshold ${th.key} ${x.source} failed (abortOnFail)`, code: 99 };
            }
          }
        }
      }, 1000);
    }
    await Promise.all(scenarioRuns.map((s) => s.run(setupData)));
  }
  clearInterval(vusGauge);
  if (abortTimer) clearInterval(abortTimer);
  await Promise.all((scenarioRuns || []).map((s) => s.close()));

  // teardown(data)
  if (!setup.error) {
    const td = await vu0.call({ type: 'teardown', data: setupData }, 'teardownDone').catch((e) => ({ error: String(e.message || e), samples: [], failedChecks: [] }));
    ingest(td.samples || []);
    noteFailedChecks(td.failedChecks, 'teardown()');
    if (td.error) fatal = fatal ? `${fatal}; teardown() failed: ${td.error}` : `teardown() failed: ${td.error}`;
  }
  const durationMs = now() - state.startedAt;

  const { data, evaluated } = summaryData(compiled, durationMs);
  const sum = await vu0.call({ type: 'summary', data }, 'summaryDone').catch((e) => ({ error: String(e.message || e), result: null, hasHandleSummary: true }));
  if (sum.error) fatal = fatal ? `${fatal}; handleSummary() failed: ${sum.error}` : `handleSummary() failed: ${sum.error}`;
  else if (sum.result) {
    for (const [k, v] of Object.entries(sum.result)) {
      if (k === 'stdout') process.stdout.write(v);
      else if (k === 'stderr') process.stderr.write(v);
      else {
        mkdirSync(path.dirname(path.resolve(k)), { recursive: true });
        writeFileSync(k, typeof v === 'string' ? v : Buffer.from(v));
        log(`handleSummary wrote ${k}`);
      }
    }
  } else if (!sum.hasHandleSummary) process.stdout.write(defaultTextSummary(data));
  await vu0.stop();

  // ------------------------------------------------------------ the report
  for (const s of scenarioRuns || []) {
    log(`scenario ${s.name} (${s.sc.executor}): ${s.completed} iteration(s) completed, ${s.interrupted} interrupted, ` +
      `${s.errors} with errors, ${s.dropped} dropped, ${s.vus.length} VU(s), ${((s.t0 && s.t1 ? s.t1 - s.t0 : 0) / 1000).toFixed(1)} s`);
    if (!fatal && s.completed + s.errors === 0) { reasons.push(`scenario ${s.name} ran no iteration`); exitCode ||= 1; }
  }
  const checks = metrics.get('checks').samples;
  const failedChecks = checks.filter((c) => !c.v).length;
  log(`checks: ${checks.length - failedChecks} passed, ${failedChecks} failed`);
  for (const [k, e] of state.failedChecks) log(`  FAILED check "${k}": ${e.count} time(s), first at ${e.first}`);
  let thresholdsFailed = 0;
  for (const { th, r } of evaluated) {
    for (const x of r.results) {
      if (!x.ok) thresholdsFailed += 1;
      log(`  threshold ${x.ok ? 'ok  ' : 'FAIL'} ${th.key}: ${x.source} (${x.agg}=${fmt(x.actual, r.contains)}, ${r.samples} sample(s))${r.samples === 0 ? ' [no samples]' : ''}`);
    }
  }
  if (fatal) { reasons.push(fatal); exitCode = 107; }
  if (state.iterationErrors.size) {
    const n = [...state.iterationErrors.values()].reduce((a, e) => a + e.count, 0);
    reasons.push(`${n} iteration(s) threw`);
    exitCode ||= 1;
  }
  if (failedChecks) { reasons.push(`${failedChecks} check(s) failed`); exitCode ||= 2; }
  if (!checks.length && !fatal) { reasons.push('no check ran'); exitCode ||= 1; }
  if (state.aborted) { reasons.push(`aborted: ${state.aborted.reason}`); exitCode ||= state.aborted.code; }
  if (state.failedByScript) { reasons.push(`exec.test.fail(): ${state.failedByScript}`); exitCode ||= 110; }
  if (thresholdsFailed) {
    if (cli.strict) { reasons.push(`${thresholdsFailed} threshold(s) failed`); exitCode ||= 99; }
    else log(`${thresholdsFailed} threshold(s) failed — reported only (k6 would exit 99; --strict-thresholds makes this fatal)`);
  }
  log(exitCode ? `FAILED (exit ${exitCode}): ${reasons.join('; ')}` : `OK in ${((now() - t00) / 1000).toFixed(1)} s`);
  process.exit(exitCode);
}

const hardStop = setTimeout(() => { log(`still running ${cli.maxDurationMs / 1000 + 120} s after start; giving up`); process.exit(1); }, cli.maxDurationMs + 120_000);
hardStop.unref();
main().catch((e) => { log(`internal error: ${e.stack || e}`); process.exit(1); });
