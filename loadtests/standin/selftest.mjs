// Self-test of the k6 stand-in (node --test loadtests/standin/selftest.mjs):
// runs small k6 scripts through run.mjs against a local Node HTTP server and
// checks the k6 semantics the smoke relies on — that passing scripts pass,
// and that failed checks, script errors, bad options and failed thresholds
// make it fail.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import zlib from 'node:zlib';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const RUN = path.join(path.dirname(new URL(import.meta.url).pathname), 'run.mjs');
let server;
let base;
let dir;

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'standin-selftest-'));
  server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      if (url.pathname === '/json') {
        if (req.headers['if-none-match'] === '"v1"') { res.writeHead(304, { ETag: '"v1"' }); res.end(); return; }
        const body = zlib.gzipSync(JSON.stringify({ hello: 'world', list: [1, 2, 3] }));
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip', ETag: '"v1"', 'X-Cache': 'hit', 'x-multi': ['a', 'b'] });
        res.end(body);
      } else if (url.pathname === '/redirect') {
        res.writeHead(302, { Location: '/json' }); res.end();
      } else if (url.pathname === '/echo') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ method: req.method, bytes: [...Buffer.concat(chunks)], ct: req.headers['content-type'] || null, auth: req.headers.authorization || null }));
      } else if (url.pathname === '/slow') {
        setTimeout(() => { res.writeHead(200); res.end('late'); }, 1500);
      } else if (url.pathname.startsWith('/status/')) {
        res.writeHead(Number(url.pathname.slice(8))); res.end();
      } else { res.writeHead(404); res.end('nope'); }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${/** @type {import('node:net').AddressInfo} */ (server.address()).port}`;
  writeFileSync(path.join(dir, 'data.bin'), Buffer.from([0, 1, 2, 254, 255]));
});

after(() => { server.close(); rmSync(dir, { recursive: true, force: true }); });

function runScript(name, source, extra = []) {
  const file = path.join(dir, name);
  writeFileSync(file, source);
  // Asynchronous server in this process: run the stand-in as a child, without blocking our event loop.
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [RUN, '-e', `BASE=${base}`, ...extra, file], { cwd: dir });
    let out = ''; let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

test('a script using the k6 API faithfully passes, and its summary holds what happened', async () => {
  const r = await runScript('ok.js', `
import http from 'k6/http';
import { check, group, sleep } from 'k6';
import { Trend, Counter, Rate, Gauge } from 'k6/metrics';
import exec from 'k6/execution';
const bin = open('./data.bin', 'b');
const text = open('data.bin');
const t = new Trend('t_ms', true);
const c = new Counter('c_n');
const rt = new Rate('r_ok');
const g = new Gauge('g_v');
export const options = {
  scenarios: { s: { executor: 'shared-iterations', vus: 2, iterations: 6 } },
  thresholds: { 't_ms{kind:a}': ['p(95)<10000'], c_n: ['count==6'], 'http_req_failed{name:teapot}': ['rate==0'] },
  summaryTrendStats: ['avg', 'p(99)', 'count'],
};
export function setup() { return { token: 'x', n: bin.byteLength }; }
export default function (data) {
  const B = __ENV.BASE;
  group('g1', () => {
    const r = http.get(B + '/json', { tags: { name: 'json' } });
    check(r, {
      'gzip body decoded': (x) => x.json('hello') === 'world' && x.json('list.#') === 3,
      'canonical header keys': (x) => x.headers['Etag'] === '"v1"' && x.headers['X-Cache'] === 'hit' && x.headers['Content-Type'] === 'application/json',
      'repeated headers joined': (x) => x.headers['X-Multi'] === 'a, b',
      'status_text as k6': (x) => x.status_text === '200 OK' && x.proto === 'HTTP/1.1',
      'timings add up': (x) => Math.abs(x.timings.duration - (x.timings.sending + x.timings.waiting + x.timings.receiving)) < 1e-6,
    });
    const nm = http.get(B + '/json', { headers: { 'If-None-Match': '"v1"' } });
    check(nm, { '304 has an empty body': (x) => x.status === 304 && x.body === '' });
  });
  const red = http.get(B + '/redirect');
  check(red, { 'redirect followed': (x) => x.status === 200 && x.url === B + '/json' });
  const e = http.post(B + '/echo', bin, { headers: { 'Content-Type': 'application/octet-stream', Authorization: 'Bearer ' + data.token } });
  check(e, { 'binary body sent as is': (x) => JSON.stringify(x.json('bytes')) === '[0,1,2,254,255]' && x.json('auth') === 'Bearer x' });
  const f = http.post(B + '/echo', { a: '1', b: 'x y' });
  check(f, { 'object body is form-encoded': (x) => x.json('ct') === 'application/x-www-form-urlencoded' });
  const [a, b] = http.batch([B + '/status/204', ['GET', B + '/status/418', null, { tags: { name: 'teapot' }, responseCallback: http.expectedStatuses(418) }]]);
  const o = http.batch({ one: { method: 'GET', url: B + '/status/201' } });
  check(null, { 'batch': () => a.status === 204 && b.status === 418 && o.one.status === 201 });
  const slow = http.get(B + '/slow', { timeout: '100ms' });
  check(slow, { 'timeout is status 0, error_code 1050': (x) => x.status === 0 && x.error_code === 1050 && x.body === null });
  check(exec.scenario, { 'execution context': (s) => s.name === 's' && __VU >= 1 && __ITER >= 0 && text.length === 5 });
  t.add(slow.timings.duration, { kind: 'a' });
  c.add(1);
  rt.add(true);
  g.add(__ITER);
  sleep(0.01);
}
export function teardown(data) {
  check(data, { 'teardown gets setup data': (d) => d.n === 5 });
}
export function handleSummary(d) {
  return { 'summary.json': JSON.stringify(d), stdout: 'SUMMARY-OK\\n' };
}
`);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /SUMMARY-OK/);
  const s = JSON.parse(readFileSync(path.join(dir, 'summary.json'), 'utf8'));
  assert.equal(s.metrics.iterations.values.count, 6);
  assert.equal(s.metrics.c_n.values.count, 6);
  assert.equal(s.metrics['t_ms{kind:a}'].thresholds['p(95)<10000'].ok, true);
  assert.equal(s.metrics['http_req_failed{name:teapot}'].values.rate, 0);
  assert.ok('p(99)' in s.metrics.http_req_duration.values);
  const g1 = s.root_group.groups.find((x) => x.name === 'g1');
  assert.equal(g1.path, '::g1');
  assert.equal(g1.checks.find((x) => x.name === 'gzip body decoded').passes, 6);
  const td = s.root_group.groups.find((x) => x.name === 'teardown');
  assert.equal(td.checks[0].passes, 1);
});

test('a failed check fails the run (exit 2) and is named', async () => {
  const r = await runScript('failcheck.js', `
import http from 'k6/http';
import { check } from 'k6';
export default function () { check(http.get(__ENV.BASE + '/status/500'), { 'is 200': (x) => x.status === 200 }); }
`);
  assert.equal(r.code, 2);
  assert.match(r.err, /FAILED check "is 200"/);
});

test('an exception in an iteration fails the run (exit 1)', async () => {
  const r = await runScript('throws.js', `
import { check } from 'k6';
export default function () { check(1, { one: (x) => x === 1 }); throw new Error('boom'); }
`);
  assert.equal(r.code, 1);
  assert.match(r.err, /boom/);
});

test('thresholds: reported by default, fatal with --strict-thresholds (exit 99)', async () => {
  const src = `
import { check } from 'k6';
import { Trend } from 'k6/metrics';
const t = new Trend('lat');
export const options = { thresholds: { lat: ['p(95)<1'] } };
export default function () { t.add(5); check(1, { ok: () => true }); }
`;
  const loose = await runScript('th.js', src);
  assert.equal(loose.code, 0, loose.err);
  assert.match(loose.err, /threshold FAIL lat: p\(95\)<1/);
  const strict = await runScript('th.js', src, ['--strict-thresholds']);
  assert.equal(strict.code, 99);
});

test('invalid options: a threshold on an unknown metric (104), an unknown exec function (104)', async () => {
  const a = await runScript('badth.js', "export const options = { thresholds: { nosuch: ['p(95)<1'] } };\nexport default function () {}\n");
  assert.equal(a.code, 104);
  const b = await runScript('badexec.js', "export const options = { scenarios: { x: { executor: 'per-vu-iterations', exec: 'nope' } } };\nexport default function () {}\n");
  assert.equal(b.code, 104);
});

test('init-context rules: http in init (107), open() outside init (iteration error)', async () => {
  const a = await runScript('inithttp.js', "import http from 'k6/http';\nhttp.get(__ENV.BASE + '/json');\nexport default function () {}\n");
  assert.equal(a.code, 107);
  const b = await runScript('lateopen.js', "export default function () { open('./data.bin'); }\n");
  assert.equal(b.code, 1);
  assert.match(b.err, /only available in the init stage/);
});

test('executors: constant-arrival-rate starts iterations at the rate; gracefulStop interrupts', async () => {
  const r = await runScript('rate.js', `
import { check, sleep } from 'k6';
export const options = { scenarios: {
  rate: { executor: 'constant-arrival-rate', rate: 20, timeUnit: '1s', duration: '1s', preAllocatedVUs: 2 },
  stuck: { executor: 'constant-vus', vus: 1, duration: '300ms', gracefulStop: '200ms', exec: 'stuck' },
} };
export default function () { check(1, { ok: () => true }); }
export function stuck() { check(1, { ok: () => true }); sleep(30); }
export function handleSummary(d) { return { stdout: JSON.stringify({ it: d.metrics.iterations.values.count }) + '\\n' }; }
`);
  // The stuck scenario's only iteration is interrupted: it completed none, which fails the smoke.
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /scenario stuck \(constant-vus\): 0 iteration\(s\) completed, 1 interrupted/);
  const it = JSON.parse(r.out.trim().split('\n').pop()).it;
  assert.ok(it >= 18 && it <= 22, `iterations ${it}`);
});
