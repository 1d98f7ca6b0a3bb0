// VU-side state of the k6 stand-in. Each VU is one worker thread (as each k6
// VU is its own JS runtime), so this module is one instance per VU; the
// stand-in's k6, k6/http, k6/metrics and k6/execution modules share it.
//
// k6's API is synchronous (http.get returns the response). A VU asks the main
// thread to do the I/O and blocks on Atomics.wait until the answer is posted
// back on a MessagePort, which it then reads with receiveMessageOnPort.
import { workerData, parentPort, receiveMessageOnPort } from 'node:worker_threads';

/** @type {{vuId: number, signal: SharedArrayBuffer, port: import('node:worker_threads').MessagePort}} */
const wd = workerData;
const signal = new Int32Array(wd.signal); // [0]: reply ready, [1]: stop requested
const port = wd.port;

/** Metric names as k6 accepts them. */
const METRIC_NAME = /^[a-zA-Z_][a-zA-Z0-9_]{0,127}$/;

export const BUILTIN_METRICS = {
  vus: ['gauge', 'default'],
  vus_max: ['gauge', 'default'],
  iterations: ['counter', 'default'],
  iteration_duration: ['trend', 'time'],
  dropped_iterations: ['counter', 'default'],
  data_sent: ['counter', 'data'],
  data_received: ['counter', 'data'],
  checks: ['rate', 'default'],
  group_duration: ['trend', 'time'],
  http_reqs: ['counter', 'default'],
  http_req_duration: ['trend', 'time'],
  http_req_blocked: ['trend', 'time'],
  http_req_connecting: ['trend', 'time'],
  http_req_tls_handshaking: ['trend', 'time'],
  http_req_sending: ['trend', 'time'],
  http_req_waiting: ['trend', 'time'],
  http_req_receiving: ['trend', 'time'],
  http_req_failed: ['rate', 'default'],
};

export const vu = {
  id: wd.vuId,
  /** 'init' | 'setup' | 'iteration' | 'teardown' | 'summary' */
  stage: 'init',
  /** @type {null | {name: string, executor: string, startTime: number, tags: Record<string,string>}} */
  scenario: null,
  iterInScenario: 0,
  iterInTest: 0,
  group: '',
  /** @type {Record<string,string>} */
  testTags: {},
  /** @type {Record<string, string|number|boolean>} exec.vu.tags */
  vuTags: {},
  /** @type {Array<{m: string, v: number, t: Record<string,string>}>} */
  samples: [],
  /** @type {Map<string, {type: string, contains: string}>} */
  metricDefs: new Map(),
  /** @type {Record<string, any>} consolidated options, once the main thread sent them */
  options: {},
  /** @type {any} set by http.setResponseCallback; undefined = default (200-399) */
  responseCallback: undefined,
  /** @type {Array<{name: string, group: string, iter: number}>} failed checks of the current call */
  failedChecks: [],
  seq: 0,
};

export class Interrupted extends Error {
  constructor() { super('iteration interrupted by the stand-in (scenario over or test aborted)'); this.name = 'Interrupted'; }
}

/** Throws unless the VU is in one of the given stages; `what` names the operation for the message. */
export function requireStage(what, allowed) {
  if (!allowed.includes(vu.stage)) {
    throw new Error(vu.stage === 'init'
      ? `${what} is not supported in the init context (k6 refuses it too)`
      : `${what} is only available in the init context (k6 refuses it too)`);
  }
}

export function registerMetric(name, type, contains) {
  if (!METRIC_NAME.test(name)) throw new Error(`invalid metric name "${name}" (k6 accepts ${METRIC_NAME})`);
  if (vu.stage !== 'init') throw new Error('metrics must be declared in the init context');
  const builtin = BUILTIN_METRICS[name];
  if (builtin && builtin[0] !== type) throw new Error(`metric "${name}" is a built-in ${builtin[0]}`);
  const old = vu.metricDefs.get(name);
  if (old && (old.type !== type || old.contains !== contains)) {
    throw new Error(`metric "${name}" is already declared as a ${old.type} (${old.contains})`);
  }
  vu.metricDefs.set(name, { type, contains });
}

/** Tags every sample of this VU carries (k6: test-wide tags, scenario tags, `scenario`, `group`, exec.vu.tags). */
export function baseTags() {
  /** @type {Record<string,string>} */
  const t = { ...vu.testTags };
  if (vu.scenario) {
    Object.assign(t, vu.scenario.tags || {});
    t.scenario = vu.scenario.name;
  }
  for (const [k, v] of Object.entries(vu.vuTags)) t[k] = String(v);
  t.group = vu.group;
  return t;
}

export function emit(metric, value, tags) {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new Error(`metric "${metric}": value ${value} is not a finite number`);
  }
  vu.samples.push({ m: metric, v: value, t: tags });
}

export function takeSamples() {
  const s = vu.samples;
  vu.samples = [];
  return s;
}

function checkStop() {
  if (Atomics.load(signal, 1) !== 0) throw new Interrupted();
}

/** Sends `msg` to the main thread and blocks until its reply. */
export function callMain(msg, transfer = []) {
  checkStop();
  const id = ++vu.seq;
  Atomics.store(signal, 0, 0);
  port.postMessage({ ...msg, id }, transfer);
  for (;;) {
    Atomics.wait(signal, 0, 0, 100);
    checkStop();
    if (Atomics.load(signal, 0) === 0) continue;
    const got = receiveMessageOnPort(port);
    if (!got) { Atomics.store(signal, 0, 0); continue; }
    if (got.message.id !== id) continue; // a stale reply (cannot happen without interrupts; be safe)
    return got.message;
  }
}

/** k6's sleep(): blocks this VU; an interrupt ends it early. */
export function sleepSync(seconds) {
  const end = performance.now() + Math.max(0, seconds) * 1000;
  for (;;) {
    checkStop();
    const left = end - performance.now();
    if (left <= 0) return;
    Atomics.wait(signal, 1, 0, Math.min(left, 100));
  }
}

/** Asynchronous notices to the main thread (test.abort, test.fail). */
export function notifyMain(msg) {
  parentPort?.postMessage(msg);
}
