// Stand-in for `k6/execution`: vu, scenario, instance, test.
import { vu as state, notifyMain, Interrupted } from '../runtime.mjs';

function needScenario(what) {
  if (!state.scenario) throw new Error(`exec.${what} is only available while a scenario runs (not in init, setup or teardown)`);
  return state.scenario;
}

export const vu = {
  get idInTest() { return state.id; },
  get idInInstance() { return state.id; },
  get iterationInScenario() { needScenario('vu.iterationInScenario'); return state.iterInScenario; },
  get iterationInInstance() { return state.iterInScenario; },
  get tags() { return state.vuTags; },
  set tags(v) { state.vuTags = v; },
  metrics: {
    get tags() { return state.vuTags; },
    metadata: {},
  },
};

export const scenario = {
  get name() { return needScenario('scenario.name').name; },
  get executor() { return needScenario('scenario.executor').executor; },
  get startTime() { return needScenario('scenario.startTime').startTime; },
  get progress() { needScenario('scenario.progress'); return 0; },
  get iterationInInstance() { needScenario('scenario.iterationInInstance'); return state.iterInTest; },
  get iterationInTest() { needScenario('scenario.iterationInTest'); return state.iterInTest; },
};

export const instance = {
  iterationsInterrupted: 0,
  iterationsCompleted: 0,
  vusActive: 0,
  vusInitialized: 0,
  currentTestRunDuration: 0,
};

export const test = {
  /** Stops the whole test (k6 exit code 108); teardown and handleSummary still run. */
  abort(input) {
    notifyMain({ type: 'abort', reason: input === undefined ? 'test aborted' : String(input) });
    throw new Interrupted();
  },
  /** Marks the test as failed (k6 exit code 110) and goes on. */
  fail(message) {
    notifyMain({ type: 'fail', reason: message === undefined ? 'test failed' : String(message) });
  },
  get options() { return state.options; },
};

export default { vu, scenario, instance, test };
