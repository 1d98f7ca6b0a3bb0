// Stand-in for `k6/metrics`: Counter, Gauge, Rate, Trend. Declared in the init
// context only; add() only while running, as in k6.
import { registerMetric, requireStage, baseTags, emit } from '../runtime.mjs';

class Metric {
  /** @param {string} name @param {boolean | undefined} isTime @param {string} type */
  constructor(name, isTime, type) {
    this.name = name;
    this.type = type;
    this.contains = isTime ? 'time' : 'default';
    registerMetric(name, type, this.contains);
  }

  add(value, tags) {
    requireStage(`${this.name}.add()`, ['setup', 'iteration', 'teardown']);
    let v = value;
    if (typeof v === 'boolean') v = v ? 1 : 0;
    if (typeof v !== 'number' || Number.isNaN(v)) {
      throw new Error(`${this.name}.add(): ${String(value)} is not a number`);
    }
    if (this.type === 'rate') v = v !== 0 ? 1 : 0;
    const t = baseTags();
    for (const [k, val] of Object.entries(tags || {})) t[k] = String(val);
    emit(this.name, v, t);
  }
}

export class Counter extends Metric { constructor(name, isTime) { super(name, isTime, 'counter'); } }
export class Gauge extends Metric { constructor(name, isTime) { super(name, isTime, 'gauge'); } }
export class Rate extends Metric { constructor(name, isTime) { super(name, isTime, 'rate'); } }
export class Trend extends Metric { constructor(name, isTime) { super(name, isTime, 'trend'); } }

export default { Counter, Gauge, Rate, Trend };
