#!/usr/bin/env node
// End-to-end test of the viewer page in real headless Chromium.
//
//   BASE_URL=http://127.0.0.1:8080 SCHEDULE_FILE=schedule.ndjson node tests/browser/e2e.mjs
//
// BASE_URL       the server that serves the page (`visbin serve`, or devserver.mjs)
// SCHEDULE_FILE  a schedule in the upload format (.json, or .ndjson/.jsonl), e.g. from `visbin gen`
// CHROMIUM       the browser binary (default: chromium, chromium-browser or google-chrome on PATH)
// API_TOKEN      typed into the page's token field when the server needs one
// ARTIFACTS      where screenshots and report.json go (default tests/browser/artifacts)
// E2E_TIMEOUT_S  hard limit for the whole run (default 240)
//
// It never downloads a browser: playwright-core drives the system's Chromium.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE_URL = (process.env.BASE_URL || '').replace(/\/+$/, '');
const SCHEDULE_FILE = process.env.SCHEDULE_FILE || process.argv[2];
const ARTIFACTS = path.resolve(process.env.ARTIFACTS || path.join(here, 'artifacts'));
const API_TOKEN = process.env.API_TOKEN || '';
const TIMEOUT_S = Number(process.env.E2E_TIMEOUT_S || 240);
const MAX_BINS = 200000;

function die(msg) {
  console.error(`browser e2e: ${msg}`);
  process.exit(2);
}
if (!BASE_URL) die('set BASE_URL to the server (e.g. http://127.0.0.1:8080)');
if (!SCHEDULE_FILE || !fs.existsSync(SCHEDULE_FILE)) die(`set SCHEDULE_FILE to a schedule file (got ${SCHEDULE_FILE || 'nothing'})`);
const ORIGIN = new URL(BASE_URL).origin;

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    for (const name of ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']) {
      const p = path.join(dir, name);
      try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
    }
  }
  return die('no chromium on PATH: apt-get install -y chromium, or set CHROMIUM');
}

// ------------------------------------------------------------------ helpers

const results = [];
let failedAlready = false;
async function step(name, fn) {
  if (failedAlready) { results.push({ name, ok: false, skipped: true }); console.log(`skip - ${name}`); return; }
  const t0 = Date.now();
  try {
    await fn();
    const ms = Date.now() - t0;
    results.push({ name, ok: true, ms });
    console.log(`ok   - ${name} (${ms} ms)`);
  } catch (e) {
    const ms = Date.now() - t0;
    results.push({ name, ok: false, ms, error: String(e && e.message ? e.message : e) });
    console.log(`FAIL - ${name} (${ms} ms)\n       ${String(e && e.stack ? e.stack : e).split('\n').join('\n       ')}`);
    failedAlready = true;
  }
}
function check(cond, msg) { if (!cond) throw new Error(msg); }
const isBins = (url) => /\/v1\/schedules\/\d+\/bins\?/.test(url);
function binsParams(url) {
  const u = new URL(url);
  const p = Object.fromEntries(u.searchParams);
  return { ...p, start: Number(p.start), end: Number(p.end), bin: Number(p.bin) };
}
function parseInstant(v) {
  if (v == null) return null;
  if (/^-?\d+$/.test(v)) return Number(v);
  const ms = Date.parse(v);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : null;
}
async function apiJson(p) {
  const r = await fetch(new URL(p, BASE_URL + '/'));
  const text = await r.text();
  if (!r.ok) throw new Error(`GET ${p} → ${r.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the run

const t0 = Date.now();
const hardStop = setTimeout(() => { console.error(`browser e2e: timed out after ${TIMEOUT_S} s`); process.exit(3); }, TIMEOUT_S * 1000);
fs.mkdirSync(ARTIFACTS, { recursive: true });
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'visbin-e2e-chromium-'));

const executablePath = findChromium();
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync',
    '--disable-default-apps', '--disable-extensions', '--mute-audio',
  ],
  viewport: { width: 1280, height: 860 },
  deviceScaleFactor: 1,
  timezoneId: 'Europe/Berlin', // the page must label times in UTC whatever the local zone
  locale: 'en-GB',
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(30000);

const consoleErrors = [];
const foreign = [];
const allRequests = [];
const bins = []; // {url, params, status, headers, t}
const failedRequests = [];
context.on('request', (r) => {
  allRequests.push(r.url());
  const u = r.url();
  if (!u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== ORIGIN) foreign.push(u);
});
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console.error: ${m.text()} @ ${JSON.stringify(m.location())}`); });
page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
page.on('requestfailed', (r) => failedRequests.push({ url: r.url(), error: r.failure() && r.failure().errorText }));
page.on('response', async (r) => {
  if (!isBins(r.url())) return;
  const entry = { url: r.url(), params: binsParams(r.url()), status: r.status(), headers: r.headers(), t: Date.now() };
  bins.push(entry);
  try {
    entry.allHeaders = await r.allHeaders();
    // Chromium shows a revalidated answer (If-None-Match → 304) as a 200 from its cache
    // with no body on the wire.
    const reqHeaders = await r.request().allHeaders();
    const sizes = await r.request().sizes();
    entry.revalidated = r.status() === 304 || (!!reqHeaders['if-none-match'] && sizes.responseBodySize === 0);
  } catch { /* gone */ }
});

const waitIdle = (timeout = 30000) =>
  page.waitForFunction(() => window.visbinViewer && window.visbinViewer.state().idle, null, { timeout, polling: 50 });
// Wait until the page's view differs from `before`, then until its answer is on the chart.
async function waitViewChange(before, what) {
  await page.waitForFunction((b) => {
    const v = window.visbinViewer.view();
    return v && (v.start !== b.start || v.end !== b.end);
  }, before, { timeout: 10000, polling: 20 }).catch(() => { throw new Error(`${what} did not change the view`); });
  await waitIdle();
}
const shot = (name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
const isHit = (r) => r.status === 304 || r.revalidated || (r.allHeaders || r.headers)['x-cache'] === 'hit';
const describe = (r) => `${r.status}${r.revalidated ? ' (revalidated: 304)' : ''} with X-Cache ${(r.allHeaders || r.headers)['x-cache']}`;

let scheduleId = null;
let schedule = null;
let first = null;       // {url, params, body, plotWidth}
let zoomed = null;

await step('page loads and lists schedules', async () => {
  const resp = await page.goto(BASE_URL + '/');
  check(resp && resp.ok(), `GET / answered ${resp && resp.status()}`);
  check((resp.headers()['content-type'] || '').startsWith('text/html'), `GET / content-type ${resp.headers()['content-type']}`);
  await page.waitForSelector('#schedule-list[data-loaded="true"]', { state: 'attached' });
  const title = await page.title();
  check(/visbin/i.test(title), `unexpected title ${title}`);
  await shot('01-list');
});

await step('upload through the page: bytes sent, then the job finishes', async () => {
  if (API_TOKEN) await page.fill('#api-token', API_TOKEN);
  await page.setInputFiles('#upload-file', SCHEDULE_FILE);
  const reqP = page.waitForRequest((r) => r.method() === 'POST' && new URL(r.url()).pathname === '/v1/schedules');
  await page.click('#upload-button');
  const req = await reqP;
  const ctype = (await req.allHeaders())['content-type'];
  const want = /\.(ndjson|jsonl)$/i.test(SCHEDULE_FILE) ? 'application/x-ndjson' : 'application/json';
  check(ctype === want, `upload sent Content-Type ${ctype}, expected ${want}`);
  if (API_TOKEN) check((await req.allHeaders()).authorization === `Bearer ${API_TOKEN}`, 'upload did not send the API token');
  await page.waitForFunction(() => ['done', 'failed'].includes(document.querySelector('#upload-panel').dataset.state), null, { timeout: 180000, polling: 100 });
  const st = await page.evaluate(() => ({
    state: document.querySelector('#upload-panel').dataset.state,
    text: document.querySelector('#upload-status').textContent,
    bytes: document.querySelector('#upload-bytes').value,
    job: document.querySelector('#job-progress').value,
    upload: window.visbinViewer.state().upload,
  }));
  check(st.state === 'done', `upload ended in state ${st.state}: ${st.text}`);
  check(st.bytes === 1, `bytes-sent bar at ${st.bytes}, expected 1`);
  check(st.job === 1, `job bar at ${st.job}, expected 1`);
  check(st.upload.progressEvents >= 1, 'no upload progress event was seen');
  scheduleId = st.upload.scheduleId;
  check(Number.isInteger(scheduleId), `no schedule id after the upload (${JSON.stringify(st.upload)})`);
  const job = await apiJson(`v1/jobs/${st.upload.jobId}`);
  check(job.state === 'done', `job ${st.upload.jobId} is ${job.state} on the server`);
  await page.waitForSelector(`#schedule-list button[data-id="${scheduleId}"]`);
  const firstListed = await page.$eval('#schedule-list button[data-id]', (b) => b.dataset.id);
  check(firstListed === String(scheduleId), `the list does not start with the new schedule (newest first): first is ${firstListed}`);
  schedule = await apiJson(`v1/schedules/${scheduleId}`);
  check(schedule.start_unix != null && schedule.end_unix > schedule.start_unix, 'the uploaded schedule has no range');
  await shot('02-after-upload');
});

await step('?schedule=ID: first request covers the range at 1–4 px per bin and the chart holds the API bins', async () => {
  const mark = bins.length;
  const firstUrl = `${BASE_URL}/?schedule=${scheduleId}`;
  await page.goto(firstUrl);
  await waitIdle();
  check(bins.length > mark, 'no /bins request was made');
  const r = bins[mark];
  const p = r.params;
  const S = schedule.start_unix, E = schedule.end_unix;
  const plotWidth = await page.$eval('#chart .u-over', (e) => e.getBoundingClientRect().width);
  check(p.format === 'columnar', `format=${p.format}, expected columnar`);
  check(p.start <= S && p.end >= E, `window [${p.start}, ${p.end}) does not cover the schedule's range [${S}, ${E})`);
  check(p.start > S - p.bin && p.end < E + p.bin, `window [${p.start}, ${p.end}) is wider than the range [${S}, ${E}) by a bin or more (bin ${p.bin})`);
  const pxPerBin = plotWidth / ((E - S) / p.bin);
  check(pxPerBin >= 1 && pxPerBin <= 4, `bin ${p.bin} s gives ${pxPerBin.toFixed(2)} px per bin on a ${plotWidth} px plot (want 1–4)`);
  const data = await page.evaluate(() => window.visbinViewer.data());
  check(data, 'the page holds no data');
  const n = data.body.bins.bin_start_unix.length;
  check(n <= MAX_BINS, `${n} bins > ${MAX_BINS}`);
  check(n >= plotWidth / 4 - 1 && n <= plotWidth + 1, `${n} bins for a ${plotWidth} px plot`);
  const pageUrl = new URL(data.url, BASE_URL + '/').href;
  check(pageUrl === r.url, `the page's data comes from ${pageUrl}, not from the first request ${r.url}`);
  const api = await apiJson(pageUrl);
  assert.deepStrictEqual(data.body, api, 'the chart data differs from the API answer for the same URL');
  const chartData = await page.evaluate(() => window.visbinViewer.chartData());
  const b = api.bins;
  assert.deepStrictEqual(chartData[0].slice(0, n), b.bin_start_unix, 'chart x values are not the bin starts');
  assert.deepStrictEqual(chartData[chartData.length - 1].slice(0, n), b.visible_count, 'chart total is not visible_count');
  assert.deepStrictEqual(chartData[1].slice(0, n), b.visible_count, 'top of the quartile stack is not visible_count');
  const q1 = chartData[chartData.length - 2].slice(0, n);
  assert.deepStrictEqual(q1, b.priority_q1_count, 'bottom layer is not priority_q1_count');
  const status = await page.textContent('#status');
  check(status.includes(`${n.toLocaleString('en-US')} bins`), `status line lacks the bin count: ${status}`);
  check(/X-Cache (hit|partial|miss)/.test(status), `status line lacks X-Cache: ${status}`);
  check(/server \d/.test(status), `status line lacks the server time: ${status}`);
  check(page.url() === firstUrl, `URL changed to ${page.url()}`);
  first = { url: r.url, params: p, plotWidth, n, xCache: r.headers['x-cache'], status };
  await shot('03-first-view');
});

await step('drag across the chart zooms: narrower window, finer bins, URL holds the window', async () => {
  const box = await page.locator('#chart .u-over').boundingBox();
  const mark = bins.length;
  const y = box.y + box.height / 2;
  const xa = box.x + box.width * 0.3, xb = box.x + box.width * 0.5;
  await page.mouse.move(xa, y);
  await page.mouse.down();
  await page.mouse.move((xa + xb) / 2, y, { steps: 4 });
  await page.mouse.move(xb, y, { steps: 4 });
  await page.mouse.up();
  await waitViewChange({ start: schedule.start_unix, end: schedule.end_unix }, 'dragging across the chart');
  check(bins.length > mark, 'dragging made no /bins request');
  const r = bins[bins.length - 1];
  const p = r.params;
  check(p.bin < first.params.bin, `zoomed bin ${p.bin} s is not finer than ${first.params.bin} s`);
  check(p.end - p.start < (first.params.end - first.params.start) / 2, `zoomed window [${p.start}, ${p.end}) is not narrower`);
  const u = new URL(page.url());
  const us = parseInstant(u.searchParams.get('start')), ue = parseInstant(u.searchParams.get('end'));
  check(us != null && ue != null, `URL has no start/end after zooming: ${page.url()}`);
  check(u.searchParams.get('schedule') === String(scheduleId), `URL lost the schedule: ${page.url()}`);
  check(p.start <= us && us < p.start + p.bin && p.end - p.bin < ue && ue <= p.end,
    `URL window [${us}, ${ue}) is not the requested window [${p.start}, ${p.end}) (bin ${p.bin})`);
  const S = schedule.start_unix, E = schedule.end_unix;
  const tol = 4 * (E - S) / first.plotWidth;
  check(Math.abs(us - (S + 0.3 * (E - S))) < tol && Math.abs(ue - (S + 0.5 * (E - S))) < tol,
    `URL window [${us}, ${ue}) is not the dragged span ≈ [${S + 0.3 * (E - S)}, ${S + 0.5 * (E - S)})`);
  const pxPerBin = first.plotWidth / ((ue - us) / p.bin);
  check(pxPerBin >= 1 && pxPerBin <= 4, `zoomed: ${pxPerBin.toFixed(2)} px per bin`);
  const data = await page.evaluate(() => window.visbinViewer.data());
  check(new URL(data.url, BASE_URL + '/').href === r.url, 'the chart does not show the zoomed answer');
  const api = await apiJson(r.url);
  assert.deepStrictEqual(data.body, api, 'zoomed chart data differs from the API');
  zoomed = { url: r.url, pageUrl: page.url(), params: p };
  await shot('04-zoomed');
});

await step('browser back reopens the first view, answered as a cache hit', async () => {
  const respP = page.waitForResponse((r) => r.url() === first.url);
  await page.goBack();
  await respP;
  await waitIdle();
  check(page.url() === `${BASE_URL}/?schedule=${scheduleId}`, `back led to ${page.url()}`);
  const r = bins.filter((b) => b.url === first.url).pop();
  check(isHit(r), `reopened first view answered ${describe(r)} (want X-Cache hit or 304)`);
  const view = await page.evaluate(() => window.visbinViewer.view());
  check(view.start === schedule.start_unix && view.end === schedule.end_unix, `view after back: ${JSON.stringify(view)}`);
  // and forward again to the zoomed window
  const fwdP = page.waitForResponse((r2) => r2.url() === zoomed.url);
  await page.goForward();
  await fwdP;
  await waitIdle();
  check(page.url() === zoomed.pageUrl, `forward led to ${page.url()}, not ${zoomed.pageUrl}`);
});

await step('toggle to scheduled/unscheduled, and filters become query parameters', async () => {
  const mark = bins.length;
  await page.check('#split-scheduled');
  await page.waitForFunction(() => window.visbinViewer.chartSeries().includes('Scheduled'));
  const series = await page.evaluate(() => window.visbinViewer.chartSeries());
  check(series.includes('Unscheduled') && !series.some((s) => /^Q\d/.test(s)), `series after the toggle: ${series}`);
  check(new URL(page.url()).searchParams.get('split') === 'scheduled', `URL lacks split=scheduled: ${page.url()}`);
  const data = await page.evaluate(() => window.visbinViewer.data());
  const cd = await page.evaluate(() => window.visbinViewer.chartData());
  const n = data.body.bins.bin_start_unix.length;
  assert.deepStrictEqual(cd[cd.length - 2].slice(0, n), data.body.bins.scheduled_visible_count, 'bottom layer is not scheduled_visible_count');
  assert.deepStrictEqual(cd[1].slice(0, n), data.body.bins.visible_count, 'top of the scheduled/unscheduled stack is not visible_count');
  check(bins.length === mark, 'the toggle made a request; both splits are in every answer');
  await shot('05-scheduled-unscheduled');

  // scheduled=true
  let respP = page.waitForResponse((r) => isBins(r.url()) && new URL(r.url()).searchParams.get('scheduled') === 'true');
  await page.selectOption('#f-scheduled', 'true');
  await respP;
  await waitIdle();
  let d = await page.evaluate(() => window.visbinViewer.data());
  check(d.body.bins.unscheduled_visible_count.every((v) => v === 0), 'scheduled=true answer has unscheduled blocks');
  check(d.body.bins.scheduled_visible_count.some((v) => v > 0), 'scheduled=true answer shows no block at all');
  check(new URL(page.url()).searchParams.get('scheduled') === 'true', `URL lacks scheduled=true: ${page.url()}`);

  // priority_min=5 too (typed, then Enter)
  respP = page.waitForResponse((r) => isBins(r.url()) && new URL(r.url()).searchParams.get('priority_min') === '5');
  await page.fill('#f-priority-min', '5');
  await page.press('#f-priority-min', 'Enter');
  const pr = await respP;
  await waitIdle();
  const pp = new URL(pr.url()).searchParams;
  check(pp.get('scheduled') === 'true', 'priority_min request dropped scheduled=true');
  check(new URL(page.url()).searchParams.get('priority_min') === '5', `URL lacks priority_min=5: ${page.url()}`);
  d = await page.evaluate(() => window.visbinViewer.data());
  assert.deepStrictEqual(d.body, await apiJson(pr.url()), 'filtered chart data differs from the API');
  await shot('06-filtered');

  // clear
  respP = page.waitForResponse((r) => isBins(r.url()) && !/[?&](scheduled|priority_min|priority_max)=/.test(r.url()));
  await page.click('#filters-clear');
  await respP;
  await waitIdle();
  const q = new URL(page.url()).searchParams;
  check(!q.has('scheduled') && !q.has('priority_min'), `URL keeps cleared filters: ${page.url()}`);
  await page.check('#split-quartile');
});

await step('wheel zooms around the cursor; arrow keys and Shift+drag pan; Whole range resets', async () => {
  const before = await page.evaluate(() => window.visbinViewer.view());
  const box = await page.locator('#chart .u-over').boundingBox();
  await page.mouse.move(box.x + box.width * 0.25, box.y + box.height / 2);
  await page.mouse.wheel(0, -240);
  await waitViewChange(before, 'the mouse wheel');
  const after = await page.evaluate(() => window.visbinViewer.view());
  check(after.end - after.start < before.end - before.start, `wheel did not zoom in: ${JSON.stringify(before)} → ${JSON.stringify(after)}`);
  const tBefore = before.start + 0.25 * (before.end - before.start);
  const tAfter = after.start + 0.25 * (after.end - after.start);
  check(Math.abs(tBefore - tAfter) <= Math.max(2, (before.end - before.start) / box.width * 2), `wheel zoom moved the point under the cursor (${tBefore} → ${tAfter})`);
  await page.focus('#chart');
  await page.keyboard.press('ArrowRight');
  await waitViewChange(after, 'ArrowRight');
  const panned = await page.evaluate(() => window.visbinViewer.view());
  check(panned.start > after.start && Math.abs((panned.end - panned.start) - (after.end - after.start)) <= 1, `ArrowRight did not pan: ${JSON.stringify(after)} → ${JSON.stringify(panned)}`);
  const u = new URL(page.url());
  check(parseInstant(u.searchParams.get('start')) === panned.start, `URL start ${u.searchParams.get('start')} is not the view start ${panned.start}`);

  // Shift+drag pans (dragging to the left moves the window later) and does not zoom.
  const y = box.y + box.height / 2;
  await page.keyboard.down('Shift');
  await page.mouse.move(box.x + box.width * 0.6, y);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.5, y, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.4, y, { steps: 5 });
  await page.mouse.up();
  await page.keyboard.up('Shift');
  await waitViewChange(panned, 'Shift+drag');
  const dragged = await page.evaluate(() => window.visbinViewer.view());
  const span = panned.end - panned.start;
  check(Math.abs((dragged.end - dragged.start) - span) <= 1, `Shift+drag changed the span: ${JSON.stringify(panned)} → ${JSON.stringify(dragged)}`);
  check(Math.abs((dragged.start - panned.start) - 0.2 * span) <= span / box.width * 3, `Shift+drag by 20 % of the plot moved the window by ${((dragged.start - panned.start) / span * 100).toFixed(1)} %`);
  check(parseInstant(new URL(page.url()).searchParams.get('start')) === dragged.start, 'URL not updated after Shift+drag');

  // "Whole range" goes back to the schedule's range: the URL drops start/end.
  await page.click('#zoom-reset');
  await waitViewChange(dragged, 'Whole range');
  const whole = await page.evaluate(() => window.visbinViewer.view());
  check(whole.start === schedule.start_unix && whole.end === schedule.end_unix, `Whole range gave ${JSON.stringify(whole)}`);
  check(!new URL(page.url()).searchParams.has('start'), `URL keeps start after Whole range: ${page.url()}`);
});

await step('a request made obsolete by a newer view is aborted (net::ERR_ABORTED)', async () => {
  // Hold /bins answers in the network layer until the page has moved on, so the race is deterministic.
  const held = [];
  const pattern = /\/v1\/schedules\/\d+\/bins\?/;
  await page.route(pattern, (route) => { held.push(route); });
  const abortedBefore = (await page.evaluate(() => window.visbinViewer.state().stats)).aborted;
  const failedP = page.waitForEvent('requestfailed', { predicate: (r) => isBins(r.url()), timeout: 15000 });
  await page.click('#zoom-in');
  for (let i = 0; i < 200 && held.length < 1; i++) await sleep(20);
  check(held.length === 1, 'zoom-in made no /bins request');
  const obsolete = held[0].request().url();
  await page.click('#pan-right');
  const failed = await failedP;
  check(failed.url() === obsolete, `the aborted request is ${failed.url()}, expected ${obsolete}`);
  const err = failed.failure() && failed.failure().errorText;
  check(/ERR_ABORTED/.test(err || ''), `obsolete request failed with ${err}, expected net::ERR_ABORTED`);
  for (let i = 0; i < 200 && held.length < 2; i++) await sleep(20);
  check(held.length >= 2, 'the newer view made no request');
  await page.unroute(pattern);
  for (const r of held.slice(1)) await r.continue().catch(() => {});
  await held[0].continue().catch(() => {}); // already aborted by the page: Playwright refuses, which is fine
  await waitIdle();
  const st = await page.evaluate(() => window.visbinViewer.state());
  check(st.stats.aborted > abortedBefore, 'the page did not count an abort');
  const d = await page.evaluate(() => window.visbinViewer.data());
  check(new URL(d.url, BASE_URL + '/').href === held[held.length - 1].request().url(), 'the chart does not show the newest view');
});

await step('navigating to the first URL again is a cache hit', async () => {
  const respP = page.waitForResponse((r) => r.url() === first.url);
  await page.goto(`${BASE_URL}/?schedule=${scheduleId}`);
  await respP;
  await waitIdle();
  const r = bins.filter((b) => b.url === first.url).pop();
  check(isHit(r), `first URL answered ${describe(r)} (want X-Cache hit or 304)`);
  await page.waitForFunction(() => { const d = window.visbinViewer.data(); return d && d.revalidated !== null; }, null, { timeout: 5000 }).catch(() => {});
  const status = await page.textContent('#status');
  check(/X-Cache hit|HTTP 304/.test(status), `status line does not show the hit: ${status}`);
  if (r.revalidated) check(/HTTP 304/.test(status), `the browser revalidated (304) but the status line does not say so: ${status}`);
});

await step('every request went to BASE_URL\'s origin', async () => {
  check(allRequests.length > 0, 'no request seen');
  check(foreign.length === 0, `requests to other hosts: ${foreign.join(', ')}`);
});

await step('no console errors on the page', async () => {
  check(consoleErrors.length === 0, consoleErrors.join('\n'));
});

clearTimeout(hardStop);
const seconds = (Date.now() - t0) / 1000;
const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
const report = {
  base_url: BASE_URL, schedule_file: path.basename(SCHEDULE_FILE), schedule_id: scheduleId,
  chromium: context.browser() ? context.browser().version() : null,
  seconds, results,
  first_request: first && { url: first.url, plot_width: first.plotWidth, bins: first.n, x_cache: first.xCache, status_line: first.status },
  bins_requests: bins.map((b) => ({ url: b.url.slice(ORIGIN.length), status: b.status, revalidated: !!b.revalidated, x_cache: (b.allHeaders || b.headers)['x-cache'] || null, server_timing: (b.allHeaders || b.headers)['server-timing'] || null })),
  failed_requests: failedRequests,
  console_errors: consoleErrors,
};
fs.writeFileSync(path.join(ARTIFACTS, 'report.json'), JSON.stringify(report, null, 2));
await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
console.log(`artifacts: ${ARTIFACTS} (${fs.readdirSync(ARTIFACTS).filter((f) => f.endsWith('.png')).length} screenshots, report.json)`);
console.log(`browser e2e took ${seconds.toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
