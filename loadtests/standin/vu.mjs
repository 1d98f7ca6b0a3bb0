// Entry of one VU worker: sets up k6's globals (open, __ENV, __VU, __ITER,
// console to stderr), loads the script (its init context), then runs what the
// main thread asks: setup, iterations of a scenario's exec function,
// teardown, handleSummary.
import { register } from 'node:module';
import { workerData, parentPort } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { format } from 'node:util';

register('./hooks.mjs', import.meta.url);

const { vu, takeSamples, Interrupted } = await import('./runtime.mjs');

/** @type {{vuId: number, env: Record<string,string>, script: string}} */
const wd = workerData;
const scriptDir = path.dirname(wd.script);
const g = /** @type {any} */ (globalThis);

g.__ENV = { ...wd.env };
g.__VU = wd.vuId;
g.__ITER = 0;
g.open = function open(filePath, mode) {
  if (vu.stage !== 'init') throw new Error('The "open()" function is only available in the init stage (k6 refuses it too)');
  if (typeof filePath !== 'string' || filePath === '') throw new Error('open(): the path must be a non-empty string');
  if (mode !== undefined && mode !== 'b') throw new Error(`open(): unknown mode "${mode}" (k6 takes "b" or nothing)`);
  // As k6 does for the main script: relative paths are relative to the script's folder.
  const p = filePath.startsWith('file://') ? new URL(filePath) : path.resolve(scriptDir, filePath);
  const buf = readFileSync(p);
  if (mode === 'b') return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  return buf.toString('utf8');
};
for (const [level, name] of [['log', 'INFO'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERRO'], ['debug', 'DEBU']]) {
  g.console[level] = (...args) => {
    process.stderr.write(`${name}[vu=${vu.id}${vu.scenario ? ` scenario=${vu.scenario.name}` : ''}] ${format(...args)}\n`);
  };
}

function describe(e) {
  if (e instanceof Error) return (e.stack || `${e.name}: ${e.message}`).split('\n').slice(0, 6).join('\n');
  return String(e);
}

function isFn(x) { return typeof x === 'function'; }

let mod;
try {
  mod = await import(pathToFileURL(wd.script).href);
} catch (e) {
  parentPort?.postMessage({ type: 'initError', error: describe(e) });
  await new Promise(() => {}); // the main thread terminates this worker
}

let options;
if (wd.vuId === 0) {
  try {
    options = mod.options === undefined ? {} : JSON.parse(JSON.stringify(mod.options));
  } catch (e) {
    parentPort?.postMessage({ type: 'initError', error: `options cannot be serialised: ${describe(e)}` });
    await new Promise(() => {});
  }
}
parentPort?.postMessage({
  type: 'ready',
  options,
  exports: Object.fromEntries(Object.entries(mod).map(([k, v]) => [k, typeof v])),
  metricDefs: [...vu.metricDefs.entries()],
});

/** @type {any} */
let setupData;

async function run(stage, group, fn) {
  vu.stage = stage;
  vu.group = group;
  vu.failedChecks = [];
  const t0 = performance.now();
  let error = null;
  let interrupted = false;
  let value;
  try {
    value = await fn();
  } catch (e) {
    if (e instanceof Interrupted) interrupted = true;
    else error = describe(e);
  }
  const durationMs = performance.now() - t0;
  vu.group = '';
  const failed = vu.failedChecks;
  vu.failedChecks = [];
  return { value, error, interrupted, durationMs, failedChecks: failed };
}

parentPort?.on('message', async (msg) => {
  switch (msg.type) {
    case 'configure': {
      vu.options = msg.options;
      vu.testTags = msg.options.tags || {};
      break;
    }
    case 'setup': {
      const r = await run('setup', '::setup', () => (isFn(mod.setup) ? mod.setup() : undefined));
      let data = null;
      if (!r.error) {
        try { data = r.value === undefined ? null : JSON.stringify(r.value); } catch (e) { r.error = `setup() data cannot be serialised to JSON: ${describe(e)}`; }
      }
      parentPort?.postMessage({ type: 'setupDone', data, error: r.error, failedChecks: r.failedChecks, samples: takeSamples() });
      break;
    }
    case 'scenario': {
      vu.scenario = msg.scenario;
      Object.assign(g.__ENV, msg.scenario.env || {});
      setupData = msg.data === null ? undefined : JSON.parse(msg.data);
      vu.iterInScenario = 0;
      break;
    }
    case 'iterate': {
      const fn = mod[msg.exec];
      vu.iterInTest = msg.iterInTest;
      g.__ITER = vu.iterInScenario;
      const r = await run('iteration', '', () => fn(setupData));
      const t = { ...vu.testTags, ...(vu.scenario?.tags || {}), scenario: vu.scenario?.name || '', group: '' };
      if (!r.interrupted) {
        vu.samples.push({ m: 'iterations', v: 1, t });
        vu.samples.push({ m: 'iteration_duration', v: r.durationMs, t });
      }
      vu.iterInScenario += 1;
      parentPort?.postMessage({ type: 'iterDone', error: r.error, interrupted: r.interrupted, failedChecks: r.failedChecks, samples: takeSamples() });
      break;
    }
    case 'teardown': {
      vu.scenario = null;
      const data = msg.data === null ? undefined : JSON.parse(msg.data);
      const r = await run('teardown', '::teardown', () => (isFn(mod.teardown) ? mod.teardown(data) : undefined));
      parentPort?.postMessage({ type: 'teardownDone', error: r.error, failedChecks: r.failedChecks, samples: takeSamples() });
      break;
    }
    case 'summary': {
      const r = await run('summary', '', () => (isFn(mod.handleSummary) ? mod.handleSummary(msg.data) : undefined));
      let result = null;
      let error = r.error;
      if (!error && r.value !== undefined && r.value !== null) {
        if (typeof r.value !== 'object') error = 'handleSummary() must return an object of {output: content}';
        else {
          result = {};
          for (const [k, v] of Object.entries(r.value)) {
            if (typeof v === 'string') result[k] = v;
            else if (v instanceof ArrayBuffer) result[k] = new Uint8Array(v);
            else { error = `handleSummary() output "${k}" is neither a string nor an ArrayBuffer`; break; }
          }
        }
      }
      parentPort?.postMessage({ type: 'summaryDone', result, error, hasHandleSummary: isFn(mod.handleSummary) });
      break;
    }
    default:
      parentPort?.postMessage({ type: 'protocolError', error: `unknown message ${msg.type}` });
  }
});
