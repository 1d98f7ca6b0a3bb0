// Stand-in for the `k6` module: check, group, sleep, fail, randomSeed.
import { vu, requireStage, baseTags, emit, sleepSync } from '../runtime.mjs';

const RUNNING = ['setup', 'iteration', 'teardown'];

/**
 * Runs each checker on `val`; emits one `checks` sample per checker (tags:
 * `check` = its name, `group`, `scenario`, plus `tags`). A checker that
 * throws aborts the iteration, as in k6; a non-function checker counts by
 * its truthiness.
 */
export function check(val, sets, tags) {
  requireStage('check()', RUNNING);
  let all = true;
  for (const [name, f] of Object.entries(sets)) {
    const ok = typeof f === 'function' ? Boolean(f(val)) : Boolean(f);
    emit('checks', ok ? 1 : 0, { ...baseTags(), ...(tags || {}), check: name });
    if (!ok) {
      all = false;
      vu.failedChecks.push({ name, group: vu.group, iter: vu.iterInScenario });
    }
  }
  return all;
}

/** Runs `fn` inside a group: samples get `group` = `::name` (nested: `::outer::inner`). */
export function group(name, fn) {
  requireStage('group()', RUNNING);
  if (name.includes('::')) throw new Error('group and check names may not contain "::"');
  const parent = vu.group;
  vu.group = `${parent}::${name}`;
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    emit('group_duration', performance.now() - t0, baseTags());
    vu.group = parent;
  }
}

export function sleep(seconds) {
  if (typeof seconds !== 'number' || !(seconds >= 0)) throw new Error(`sleep(): ${seconds} is not a duration in seconds`);
  sleepSync(seconds);
}

export function fail(err) {
  throw new Error(err === undefined ? '' : String(err));
}

/** Seeds Math.random for this VU (mulberry32; k6 uses another generator, so sequences differ). */
export function randomSeed(seed) {
  let a = Number(seed) >>> 0;
  Math.random = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export default { check, group, sleep, fail, randomSeed };
