// ESM loader hooks for the k6 stand-in: `k6` and `k6/...` resolve to the
// stand-in's own modules; remote modules (k6 can import https:// URLs, e.g.
// jslib) are refused with a clear message, since the stand-in never fetches
// code. Registered by vu.mjs in every VU worker.
const MODULES = {
  k6: 'index.mjs',
  'k6/http': 'http.mjs',
  'k6/metrics': 'metrics.mjs',
  'k6/execution': 'execution.mjs',
};

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    const file = MODULES[specifier];
    if (!file) {
      throw new Error(`the k6 stand-in does not implement the module "${specifier}" ` +
        `(it implements ${Object.keys(MODULES).join(', ')}); run this script with real k6`);
    }
    return { url: new URL(`./k6/${file}`, import.meta.url).href, shortCircuit: true, format: 'module' };
  }
  if (/^https?:\/\//.test(specifier)) {
    throw new Error(`the k6 stand-in does not load remote modules ("${specifier}")`);
  }
  return nextResolve(specifier, context);
}
