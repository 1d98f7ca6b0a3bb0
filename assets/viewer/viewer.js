/*
 * visbin viewer — the browser side of `GET /`.
 *
 * Plain JavaScript, no build step. Needs uPlot (assets/uPlot.iife.min.js),
 * loaded before this file. Every request goes to the page's own origin, with
 * URLs relative to the page, so the viewer also works behind a path prefix.
 *
 * URL parameters (kept in step with the view):
 *   schedule       schedule id to open
 *   start, end     the window (Unix seconds or RFC 3339; written as RFC 3339);
 *                  absent = the schedule's whole range
 *   split          "scheduled" to stack scheduled/unscheduled; absent = quartiles
 *   priority_min, priority_max, scheduled   filters, passed on to /bins as they are
 *
 * window.visbinViewer exposes a small read-only API for tests and the console.
 */
(function () {
  'use strict';

  // ---------------------------------------------------------------- constants

  /** The server's default VISBIN_MAX_BINS; a request never asks for more. */
  const MAX_BINS = 200000;
  /** Round bin widths (seconds). Consecutive ratios are at most 2.5. */
  const BIN_WIDTHS = [
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2419200,
  ];
  /** Aim at one bin per 1.5 px, so a bin is 1.5–3.75 px wide on screen. */
  const PX_PER_BIN = 1.5;
  const MIN_SPAN = 60; // seconds: the deepest zoom
  const WEEK = 604800;
  // Instants the API accepts: MJD [0, 100000] in Unix seconds, less a margin
  // so that snapping a window to its bin grid never leaves the range.
  const MIN_TIME = -3506716800 + 60 * 86400;
  const MAX_TIME = 5133283200 - 60 * 86400;
  const LIST_PAGE = 25;
  const WHEEL_DEBOUNCE_MS = 140;
  const PAN_DEBOUNCE_MS = 120;

  const LAYERS = {
    quartile: [
      { key: 'priority_q1_count', label: 'Q1 (lowest priority)', color: '--q1' },
      { key: 'priority_q2_count', label: 'Q2', color: '--q2' },
      { key: 'priority_q3_count', label: 'Q3', color: '--q3' },
      { key: 'priority_q4_count', label: 'Q4 (highest priority)', color: '--q4' },
    ],
    scheduled: [
      { key: 'scheduled_visible_count', label: 'Scheduled', color: '--sched' },
      { key: 'unscheduled_visible_count', label: 'Unscheduled', color: '--unsched' },
    ],
  };
  const FILTER_KEYS = ['priority_min', 'priority_max', 'scheduled'];
  /** y-axis steps: counts are whole numbers. */
  const Y_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 2.5e4, 5e4,
    1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7];
  // x-axis labels (UTC, 24-hour, ISO-like dates). Columns, as uPlot wants them:
  // tick increment (s), default, then the label when the year / month / day /
  // hour / minute / second changed, and the mode (1: default + that suffix).
  const X_STAMPS = [
    [365 * 86400, '{YYYY}', null, null, null, null, null, null, 1],
    [28 * 86400, '{MMM}', '\n{YYYY}', null, null, null, null, null, 1],
    [86400, '{MMM} {D}', '\n{YYYY}', null, null, null, null, null, 1],
    [3600, '{HH}:{mm}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, null, null, 1],
    [60, '{HH}:{mm}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, null, null, 1],
    [1, '{HH}:{mm}:{ss}', '\n{YYYY}-{MM}-{DD} {HH}:{mm}', null, '\n{MMM} {D} {HH}:{mm}', null, '\n{HH}:{mm}', null, 1],
  ];

  // -------------------------------------------------------------------- state

  const state = {
    schedule: null,         // GET /v1/schedules/{id} body
    fullRange: null,        // {start, end} of the schedule (null when it has none)
    view: null,             // {start, end}: the window on screen (Unix seconds)
    mode: 'quartile',       // 'quartile' | 'scheduled'
    filters: { priority_min: null, priority_max: null, scheduled: null },
    answer: null,           // the last /bins answer applied to the chart
    inflight: null,         // {url, controller, req}
    fetchTimer: null,
    metaController: null,
    retries: 0,
    error: null,
    stats: { binsRequests: 0, aborted: 0, errors: 0, answers: 0 },
    upload: { state: 'idle', progressEvents: 0, loaded: 0, total: 0, scheduleId: null, jobId: null },
  };

  let chart = null;         // uPlot instance
  let chartMode = null;     // mode the chart was built for
  let chartRaw = null;      // {layers: [[...]], total: [...], bin, n} for legend values

  // -------------------------------------------------------------------- utils

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const nf = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => (n == null ? '–' : nf.format(n));

  /** Unix seconds → "2025-03-01T12:00:00Z". */
  function isoUtc(t) {
    return new Date(t * 1000).toISOString().replace('.000Z', 'Z');
  }
  /** Unix seconds → "2025-03-01 12:00:00" (UTC, for reading). */
  function humanUtc(t, withSeconds) {
    const s = isoUtc(t).replace('T', ' ').replace('Z', '');
    return withSeconds || !s.endsWith(':00') ? s : s.slice(0, -3);
  }
  /** Seconds → "15m", "1h", "1d", "1h30m". */
  function fmtDuration(s) {
    if (!(s > 0)) return String(s) + 's';
    const parts = [];
    for (const [unit, len] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
      if (s >= len) { const k = Math.floor(s / len); parts.push(k + unit); s -= k * len; }
    }
    return parts.join('');
  }
  /** "1735689600" or an RFC 3339 timestamp → Unix seconds (fraction truncated); null if neither. */
  function parseInstant(v) {
    if (v == null) return null;
    const s = String(v).trim();
    if (/^-?\d{1,12}$/.test(s)) return Number(s);
    const m = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([Zz]|[+-]\d{2}:\d{2})$/.exec(s);
    if (!m) return null;
    const ms = Date.parse(`${m[1]}T${m[2]}${m[3].toUpperCase()}`);
    return Number.isFinite(ms) ? Math.floor(ms / 1000) : null;
  }
  function parseNumber(v) {
    if (v == null || String(v).trim() === '') return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  }
  /** Server-Timing → milliseconds: its `total` metric, else the sum of every dur. */
  function serverTimeMs(header) {
    if (!header) return null;
    let sum = 0, any = false, total = null;
    for (const entry of header.split(',')) {
      const [name, ...params] = entry.split(';');
      for (const p of params) {
        const m = /^\s*dur\s*=\s*"?([0-9.eE+-]+)"?\s*$/.exec(p);
        if (!m) continue;
        const d = Number(m[1]);
        if (!Number.isFinite(d)) continue;
        if (name.trim().toLowerCase() === 'total') total = d;
        else { sum += d; any = true; }
      }
    }
    return total != null ? total : any ? sum : null;
  }
  function fmtMs(ms) {
    if (ms == null) return '–';
    return ms < 10 ? ms.toFixed(2) + ' ms' : ms < 1000 ? ms.toFixed(1) + ' ms' : (ms / 1000).toFixed(2) + ' s';
  }
  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1048576).toFixed(1) + ' MiB';
  }
  /** The `detail` of a problem+json answer (or a plain description). */
  async function problemText(resp) {
    let detail = null;
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        detail = body && (body.detail || body.title);
      } catch (_) { detail = text.slice(0, 300); }
    } catch (_) { /* body unreadable */ }
    return `${resp.status} ${resp.statusText || ''}`.trim() + (detail ? ` — ${detail}` : '');
  }
  function problemFromXhr(xhr) {
    let detail = null;
    try {
      const body = JSON.parse(xhr.responseText);
      detail = body && (body.detail || body.title);
    } catch (_) { detail = (xhr.responseText || '').slice(0, 300); }
    return `${xhr.status} ${xhr.statusText || ''}`.trim() + (detail ? ` — ${detail}` : '');
  }

  // --------------------------------------------------------------- bin width

  /**
   * The bin width for a window of `span` seconds on a plot `plotPx` CSS pixels
   * wide: the smallest round width with at most one bin per PX_PER_BIN pixels.
   */
  function chooseBinWidth(span, plotPx) {
    const px = Math.max(16, Math.floor(plotPx));
    const ideal = (span * PX_PER_BIN) / px;
    let w = BIN_WIDTHS.find((x) => x >= ideal);
    if (w === undefined) w = Math.ceil(ideal / WEEK) * WEEK;
    // widening to whole bins adds at most one bin
    if (Math.ceil(span / w) + 1 > MAX_BINS) w = Math.ceil(span / (MAX_BINS - 1));
    return w;
  }

  function plotWidth() {
    if (chart) return chart.over.getBoundingClientRect().width || chart.bbox.width / (window.devicePixelRatio || 1);
    return Math.max(100, $('chart').clientWidth - 70);
  }

  /** The /bins request for the current view, or null. */
  function currentRequest() {
    if (!state.schedule || !state.view) return null;
    const span = state.view.end - state.view.start;
    const bin = chooseBinWidth(span, plotWidth());
    const start = Math.floor(state.view.start / bin) * bin;
    const end = Math.max(start + bin, Math.ceil(state.view.end / bin) * bin);
    const q = new URLSearchParams();
    q.set('start', String(start));
    q.set('end', String(end));
    q.set('bin', String(bin));
    q.set('format', 'columnar');
    for (const k of FILTER_KEYS) if (state.filters[k] != null) q.set(k, String(state.filters[k]));
    const path = `v1/schedules/${encodeURIComponent(state.schedule.schedule_id)}/bins`;
    return { url: `${path}?${q}`, path, query: q, bin, start, end };
  }

  // ---------------------------------------------------------------- URL state

  function readUrl() {
    const p = new URLSearchParams(location.search);
    const id = p.get('schedule');
    const filters = {
      priority_min: parseNumber(p.get('priority_min')),
      priority_max: parseNumber(p.get('priority_max')),
      scheduled: p.get('scheduled') === 'true' ? true : p.get('scheduled') === 'false' ? false : null,
    };
    return {
      schedule: id != null && /^\d+$/.test(id.trim()) ? id.trim() : null,
      start: parseInstant(p.get('start')),
      end: parseInstant(p.get('end')),
      mode: p.get('split') === 'scheduled' ? 'scheduled' : 'quartile',
      filters,
      rawSchedule: id,
    };
  }

  function urlForState() {
    const p = new URLSearchParams();
    if (state.schedule) {
      p.set('schedule', String(state.schedule.schedule_id));
      const full = state.fullRange;
      const v = state.view;
      if (v && !(full && Math.round(v.start) === full.start && Math.round(v.end) === full.end)) {
        p.set('start', isoUtc(Math.round(v.start)));
        p.set('end', isoUtc(Math.round(v.end)));
      }
      if (state.mode === 'scheduled') p.set('split', 'scheduled');
      for (const k of FILTER_KEYS) if (state.filters[k] != null) p.set(k, String(state.filters[k]));
    }
    const qs = p.toString().replace(/%3A/gi, ':');
    return location.pathname + (qs ? `?${qs}` : '');
  }

  /** how: 'push' | 'replace' */
  function syncUrl(how) {
    const url = urlForState();
    if (url === location.pathname + location.search) return;
    if (how === 'push') history.pushState(null, '', url);
    else history.replaceState(null, '', url);
  }

  // ------------------------------------------------------------------- chart

  const stepped = () => uPlot.paths.stepped({ align: 1 });

  function chartHeight() {
    return Math.round(Math.min(520, Math.max(260, window.innerHeight * 0.48)));
  }

  function buildChart(mode) {
    if (chart) { chart.destroy(); chart = null; }
    const container = $('chart');
    container.querySelectorAll('.uplot').forEach((n) => n.remove());
    $('chart-empty').hidden = true;
    const layers = LAYERS[mode];
    const axisColor = cssVar('--axis') || '#333';
    const gridColor = cssVar('--grid') || 'rgba(0,0,0,0.1)';
    const font = `12px ${getComputedStyle(document.body).fontFamily}`;
    const series = [{
      label: 'Bin (UTC)',
      value: (u, v, si, i) => {
        if (i == null || !chartRaw || i >= chartRaw.n) return '–';
        return `${humanUtc(v)} + ${fmtDuration(chartRaw.bin)}`;
      },
    }];
    // Cumulative series, drawn top layer first so each lower one paints over it.
    for (let k = layers.length - 1; k >= 0; k--) {
      const color = cssVar(layers[k].color);
      series.push({
        label: layers[k].label,
        stroke: color,
        fill: color,
        width: 1,
        paths: stepped(),
        points: { show: false },
        value: (u, v, si, i) => (i == null || !chartRaw || i >= chartRaw.n ? '–' : fmtInt(chartRaw.layers[k][i])),
      });
    }
    series.push({
      label: 'All visible',
      stroke: cssVar('--total') || '#111',
      width: 1.25,
      paths: stepped(),
      points: { show: false },
      value: (u, v, si, i) => (i == null || !chartRaw || i >= chartRaw.n ? '–' : fmtInt(chartRaw.total[i])),
    });

    const opts = {
      width: Math.max(200, container.clientWidth),
      height: chartHeight(),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
      scales: {
        // The x range is always the view: uPlot passes explicit zooms through this too.
        x: { time: true, range: () => (state.view ? [state.view.start, state.view.end] : [0, 1]) },
        y: { range: (u, min, max) => [0, max > 0 ? Math.ceil(max * 1.06) : 1] },
      },
      series,
      axes: [
        {
          stroke: axisColor, font, labelFont: font,
          grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor, width: 1 },
          label: 'Time (UTC)', labelSize: 22, labelGap: 0, values: X_STAMPS, space: 60,
        },
        {
          stroke: axisColor, font, labelFont: font, size: 60,
          grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor, width: 1 },
          label: 'Visible blocks', labelSize: 22, incrs: Y_INCRS,
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? fmtInt(v) : '')),
        },
      ],
      legend: { live: true },
      cursor: {
        y: false,
        points: { show: false },
        drag: { x: true, y: false, setScale: false },
      },
      hooks: {
        setSelect: [onSelect],
      },
    };
    const empty = [[]];
    for (let i = 1; i < series.length; i++) empty.push([]);
    chart = new uPlot(opts, empty, container);
    chartMode = mode;
    attachChartInteractions(chart);
  }

  function dataFor(answer, mode) {
    const b = answer.body.bins;
    const n = b.bin_start_unix.length;
    const x = new Array(n + 1);
    for (let i = 0; i < n; i++) x[i] = b.bin_start_unix[i];
    x[n] = n > 0 ? b.bin_end_unix[n - 1] : answer.body.end_unix;
    const layers = LAYERS[mode].map((l) => b[l.key]);
    const cums = [];
    let prev = null;
    for (const layer of layers) {
      const c = new Array(n + 1);
      for (let i = 0; i < n; i++) c[i] = (prev ? prev[i] : 0) + layer[i];
      c[n] = n > 0 ? c[n - 1] : null;
      cums.push(c);
      prev = c;
    }
    const total = b.visible_count.slice();
    total.push(n > 0 ? total[n - 1] : null);
    chartRaw = { layers, total: b.visible_count, bin: answer.bin, n };
    return [x, ...cums.reverse(), total];
  }

  function render() {
    if (!state.schedule) return;
    if (!chart || chartMode !== state.mode) buildChart(state.mode);
    if (state.answer) chart.setData(dataFor(state.answer, state.mode));
    else chart.setScale('x', { min: state.view.start, max: state.view.end });
    updateSummary();
  }

  /** Show the view with whatever data is on screen (coarse data stays until the finer answer). */
  function redrawView() {
    if (chart && state.view) chart.setScale('x', { min: state.view.start, max: state.view.end });
    updateWindowInputs();
    updateCsvLink();
  }

  function updateSummary() {
    const out = $('chart-summary');
    const a = state.answer;
    if (!a || !state.view) { out.textContent = ''; $('chart-empty').hidden = true; return; }
    const b = a.body.bins;
    let max = 0, at = null;
    for (let i = 0; i < b.visible_count.length; i++) {
      if (b.visible_count[i] > max) { max = b.visible_count[i]; at = b.bin_start_unix[i]; }
    }
    $('chart-empty').hidden = at != null;
    out.textContent = `From ${humanUtc(state.view.start)} to ${humanUtc(state.view.end)} UTC in ${fmtDuration(a.bin)} bins: ` +
      (at == null ? 'no block is visible.' : `at most ${fmtInt(max)} blocks visible in one bin, first at ${humanUtc(at)} UTC.`);
  }

  // ------------------------------------------------------------ interactions

  function onSelect(u) {
    const sel = u.select;
    if (sel.width >= 4) {
      const a = u.posToVal(sel.left, 'x');
      const b = u.posToVal(sel.left + sel.width, 'x');
      setView(a, b, { history: 'push' });
    }
    if (sel.width > 0 || sel.height > 0) u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  }

  function attachChartInteractions(u) {
    const over = u.over;

    // Wheel: zoom around the cursor.
    over.addEventListener('wheel', (e) => {
      if (!state.view) return;
      e.preventDefault();
      const rect = over.getBoundingClientRect();
      const frac = Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width));
      let dy = e.deltaY;
      if (e.deltaMode === 1) dy *= 33;
      else if (e.deltaMode === 2) dy *= rect.height;
      const factor = Math.pow(1.0018, Math.max(-400, Math.min(400, dy)));
      zoomAt(frac, factor, { history: 'replace', debounce: WHEEL_DEBOUNCE_MS });
    }, { passive: false });

    over.addEventListener('dblclick', (e) => { e.preventDefault(); resetView(); });
  }

  /**
   * Shift/Alt + drag (or the middle button): pan. Captured on the chart's
   * container (once, in init) so that uPlot, listening on .u-over, never starts
   * a zoom selection for it.
   */
  function attachPanning() {
    const container = $('chart');
    container.addEventListener('mousedown', (e) => {
      if (!chart || !state.view || !(e.shiftKey || e.altKey || e.button === 1)) return;
      const over = chart.over;
      if (!over.contains(e.target)) return;
      e.preventDefault();
      e.stopPropagation();
      const rect = over.getBoundingClientRect();
      const x0 = e.clientX;
      const v0 = { ...state.view };
      const perPx = (v0.end - v0.start) / rect.width;
      container.classList.add('panning');
      const move = (ev) => {
        const dt = (ev.clientX - x0) * perPx;
        setView(v0.start - dt, v0.end - dt, { history: 'none', debounce: PAN_DEBOUNCE_MS });
      };
      const up = (ev) => {
        window.removeEventListener('mousemove', move, true);
        window.removeEventListener('mouseup', up, true);
        container.classList.remove('panning');
        move(ev);
        syncUrl('replace');
      };
      window.addEventListener('mousemove', move, true);
      window.addEventListener('mouseup', up, true);
    }, true);
  }

  function onChartKey(e) {
    if (!state.view || e.ctrlKey || e.metaKey) return;
    const big = e.shiftKey ? 0.5 : 0.2;
    switch (e.key) {
      case 'ArrowLeft': pan(-big, { history: 'replace', debounce: PAN_DEBOUNCE_MS }); break;
      case 'ArrowRight': pan(big, { history: 'replace', debounce: PAN_DEBOUNCE_MS }); break;
      case '+': case '=': case 'ArrowUp': zoomAt(0.5, 0.5, { history: 'replace', debounce: PAN_DEBOUNCE_MS }); break;
      case '-': case '_': case 'ArrowDown': zoomAt(0.5, 2, { history: 'replace', debounce: PAN_DEBOUNCE_MS }); break;
      case 'Home': case '0': resetView(); break;
      default: return;
    }
    e.preventDefault();
  }

  /** Keep a window between MIN_SPAN and ten times the schedule's range, inside the instants the API takes. */
  function clampView(start, end) {
    const full = state.fullRange;
    const maxSpan = Math.min(MAX_TIME - MIN_TIME, full ? Math.max(10 * (full.end - full.start), 30 * 86400) : 400 * 86400);
    const span = Math.round(Math.min(maxSpan, Math.max(MIN_SPAN, end - start)));
    if (span !== end - start) start = (start + end) / 2 - span / 2;
    start = Math.round(Math.min(Math.max(start, MIN_TIME), MAX_TIME - span));
    return { start, end: start + span };
  }

  function zoomAt(frac, factor, opts) {
    const v = state.view;
    const span = v.end - v.start;
    const t = v.start + frac * span;
    const ns = span * factor;
    setView(t - frac * ns, t + (1 - frac) * ns, opts);
  }
  function pan(frac, opts) {
    const v = state.view;
    const d = (v.end - v.start) * frac;
    setView(v.start + d, v.end + d, opts);
  }
  function resetView() {
    if (!state.fullRange) return;
    setView(state.fullRange.start, state.fullRange.end, { history: 'push', exact: true });
  }

  /**
   * Change the window. opts.history: 'push' | 'replace' | 'none';
   * opts.debounce: ms to wait before asking the server (wheel, panning).
   */
  function setView(start, end, opts = {}) {
    if (!state.schedule) return;
    if (!(Number.isFinite(start) && Number.isFinite(end))) return;
    if (end < start) [start, end] = [end, start];
    state.view = opts.exact ? { start, end } : clampView(start, end);
    redrawView();
    if (opts.history && opts.history !== 'none') syncUrl(opts.history);
    requestBins(opts.debounce || 0);
  }

  // --------------------------------------------------------------- fetching

  function abortInflight() {
    if (state.inflight) {
      state.inflight.controller.abort();
      state.inflight = null;
      state.stats.aborted++;
    }
  }

  /** Ask for the bins of the current view (after `delay` ms); aborts what that makes obsolete. */
  function requestBins(delay) {
    clearTimeout(state.fetchTimer);
    state.fetchTimer = null;
    const req = currentRequest();
    // A request for another window is obsolete as soon as the view changes.
    if (state.inflight && (!req || state.inflight.url !== req.url)) abortInflight();
    if (!req) return;
    if (delay > 0) {
      state.fetchTimer = setTimeout(() => { state.fetchTimer = null; fetchBins(); }, delay);
      setLoading(true);
    } else {
      fetchBins();
    }
  }

  async function fetchBins() {
    const req = currentRequest();
    if (!req) return;
    if (state.answer && state.answer.url === req.url) { setLoading(false); renderStatus(); return; }
    if (state.inflight && state.inflight.url === req.url) return;
    abortInflight();
    const controller = new AbortController();
    const inflight = { url: req.url, controller, req };
    state.inflight = inflight;
    state.stats.binsRequests++;
    setLoading(true);
    renderStatus();
    const t0 = performance.now();
    try {
      const resp = await fetch(req.url, { signal: controller.signal, headers: { Accept: 'application/json' } });
      if (!resp.ok) {
        const text = await problemText(resp);
        const retryAfter = Number(resp.headers.get('Retry-After'));
        if (resp.status === 503 && state.retries < 3 && state.inflight === inflight) {
          state.retries++;
          state.inflight = null;
          showError(`${text}; retrying in ${Number.isFinite(retryAfter) ? retryAfter : 1} s`);
          state.fetchTimer = setTimeout(() => { state.fetchTimer = null; fetchBins(); },
            1000 * Math.min(30, Math.max(1, Number.isFinite(retryAfter) ? retryAfter : 1)));
          return;
        }
        throw new Error(text);
      }
      const body = await resp.json();
      if (state.inflight !== inflight) return; // superseded meanwhile
      if (!body || !body.bins || !Array.isArray(body.bins.bin_start_unix)) throw new Error('unexpected answer: no columnar bins');
      state.inflight = null;
      state.retries = 0;
      state.error = null;
      state.stats.answers++;
      state.answer = {
        url: req.url,
        bin: req.bin,
        request: { start: req.start, end: req.end, bin: req.bin },
        status: resp.status,
        xCache: resp.headers.get('X-Cache'),
        serverTiming: resp.headers.get('Server-Timing'),
        serverMs: serverTimeMs(resp.headers.get('Server-Timing')),
        roundTripMs: performance.now() - t0,
        revalidated: null,
        body,
      };
      noteRevalidation(state.answer, t0);
      render();
      setLoading(!!state.fetchTimer);
      renderStatus();
      // The plot may have changed width meanwhile (first layout, resize): ask again if so.
      const again = currentRequest();
      if (again && again.url !== req.url && !state.fetchTimer) requestBins(0);
    } catch (e) {
      if (e && e.name === 'AbortError') return;
      if (state.inflight === inflight) state.inflight = null;
      state.stats.errors++;
      setLoading(false);
      showError(`Could not load bins: ${e && e.message ? e.message : e}`);
    }
  }

  /**
   * Whether the browser revalidated its cached copy (ETag → 304): fetch() shows
   * such an answer as a 200, but Resource Timing tells, as a transfer smaller
   * than the body.
   */
  function noteRevalidation(answer, since, tries = 0) {
    const abs = new URL(answer.url, document.baseURI).href;
    const entries = performance.getEntriesByName(abs, 'resource').filter((x) => x.startTime >= since - 1);
    const e = entries[entries.length - 1];
    if (!e) {
      if (tries < 5) setTimeout(() => noteRevalidation(answer, since, tries + 1), 50);
      return;
    }
    answer.revalidated = e.transferSize > 0 && e.transferSize < e.encodedBodySize;
    if (answer === state.answer) renderStatus();
  }

  function setLoading(on) {
    $('chart').classList.toggle('loading', !!on);
    $('chart').setAttribute('aria-busy', on ? 'true' : 'false');
  }

  function showError(msg) {
    state.error = msg;
    renderStatus();
  }

  function renderStatus() {
    const s = $('status');
    const parts = [];
    const a = state.answer;
    if (a) {
      parts.push(`bin ${fmtDuration(a.bin)}`);
      parts.push(`${fmtInt(a.body.bins.bin_start_unix.length)} bins`);
      parts.push(`X-Cache ${a.xCache || '–'}${a.revalidated ? ' (HTTP 304, revalidated)' : ''}`);
      parts.push(`server ${fmtMs(a.serverMs)}`);
      parts.push(`round trip ${fmtMs(a.roundTripMs)}`);
    }
    if (state.inflight) parts.push(`loading ${fmtDuration(state.inflight.req.bin)} bins…`);
    else if (state.fetchTimer) parts.push('…');
    if (state.error) parts.push(state.error);
    s.textContent = parts.join(' · ') || (state.schedule ? 'loading…' : '');
    s.classList.toggle('is-error', !!state.error);
    s.dataset.xCache = a && a.xCache ? a.xCache : '';
  }

  // ------------------------------------------------------------- schedules

  async function openFromUrl() {
    const u = readUrl();
    state.mode = u.mode;
    state.filters = u.filters;
    syncControls();
    if (!u.schedule) {
      if (u.rawSchedule != null) showPageMessage(`“${u.rawSchedule}” is not a schedule id.`);
      closeSchedule();
      return;
    }
    if (!state.schedule || String(state.schedule.schedule_id) !== u.schedule) {
      if (state.metaController) state.metaController.abort();
      const controller = new AbortController();
      state.metaController = controller;
      abortInflight();
      clearTimeout(state.fetchTimer);
      state.answer = null;
      state.schedule = null;
      showViewer();
      $('schedule-title').textContent = `Schedule ${u.schedule}`;
      $('schedule-meta').replaceChildren();
      $('status').textContent = 'loading schedule…';
      let meta;
      try {
        const resp = await fetch(`v1/schedules/${encodeURIComponent(u.schedule)}`, { signal: controller.signal, headers: { Accept: 'application/json' } });
        if (!resp.ok) throw new Error(await problemText(resp));
        meta = await resp.json();
      } catch (e) {
        if (e && e.name === 'AbortError') return;
        $('status').textContent = `Could not open schedule ${u.schedule}: ${e.message || e}`;
        $('status').classList.add('is-error');
        return;
      }
      if (state.metaController !== controller) return;
      state.metaController = null;
      setSchedule(meta);
    }
    const full = state.fullRange;
    let start = u.start, end = u.end;
    if (start == null || end == null) {
      if (!full) {
        if (start != null) end = start + 86400;
        else if (end != null) start = end - 86400;
        else {
          $('status').textContent = 'This schedule has no visibility periods yet, so it has no range: give start and end to see a window.';
          return;
        }
      } else {
        start = start != null ? start : full.start;
        end = end != null ? end : full.end;
      }
    }
    const exact = full && start === full.start && end === full.end;
    state.view = exact ? { start, end } : clampView(start, end);
    if (!chart || chartMode !== state.mode) buildChart(state.mode);
    if (state.answer) render();
    redrawView();
    syncUrl('replace');
    requestBins(0);
  }

  function setSchedule(meta) {
    state.schedule = meta;
    state.fullRange = meta.start_unix != null && meta.end_unix != null && meta.end_unix > meta.start_unix
      ? { start: meta.start_unix, end: meta.end_unix } : null;
    $('schedule-title').textContent = `${meta.name} (#${meta.schedule_id})`;
    const dl = $('schedule-meta');
    const item = (k, v) => el('div', null, el('dt', { text: k }), el('dd', { text: v }));
    const sm = meta.summary;
    dl.replaceChildren(...[
      item('Blocks', fmtInt(meta.blocks)),
      item('Periods', fmtInt(meta.periods)),
      item('Range (UTC)', state.fullRange ? `${humanUtc(state.fullRange.start)} → ${humanUtc(state.fullRange.end)}` : 'none yet'),
      item('Version', String(meta.version ?? '–')),
      sm ? item('Priorities', `${sm.priority_min} … ${sm.priority_max}`) : null,
      sm ? item('Scheduled', `${fmtInt(sm.scheduled_blocks)} of ${fmtInt(sm.total_blocks)}`) : null,
      sm ? item('Most visible in a 15m bin', fmtInt(sm.max_visible_in_bin)) : item('Summary', 'being computed…'),
    ].filter(Boolean));
    markCurrentInList();
  }

  function closeSchedule() {
    abortInflight();
    clearTimeout(state.fetchTimer);
    state.schedule = null;
    state.answer = null;
    state.view = null;
    if (chart) { chart.destroy(); chart = null; chartMode = null; }
    $('viewer').hidden = true;
    $('empty-state').hidden = false;
    markCurrentInList();
  }
  function showViewer() {
    $('viewer').hidden = false;
    $('empty-state').hidden = true;
  }
  function showPageMessage(msg) {
    const p = $('list-status');
    p.textContent = msg;
  }

  function openSchedule(id) {
    const split = state.mode === 'scheduled' ? '&split=scheduled' : '';
    history.pushState(null, '', `${location.pathname}?schedule=${encodeURIComponent(id)}${split}`);
    openFromUrl();
    $('main').focus({ preventScroll: true });
  }

  // Schedule list, newest first, paged with next_after.
  const list = { after: null, loading: false, controller: null };

  async function loadList(reset) {
    if (list.loading && !reset) return;
    if (list.controller) list.controller.abort();
    const controller = new AbortController();
    list.controller = controller;
    list.loading = true;
    const ul = $('schedule-list');
    if (reset) { list.after = null; }
    $('list-status').textContent = 'loading…';
    const q = new URLSearchParams({ limit: String(LIST_PAGE) });
    if (!reset && list.after != null) q.set('after', String(list.after));
    try {
      const resp = await fetch(`v1/schedules?${q}`, { signal: controller.signal, headers: { Accept: 'application/json' } });
      if (!resp.ok) throw new Error(await problemText(resp));
      const body = await resp.json();
      if (reset) ul.replaceChildren();
      for (const s of body.schedules || []) ul.append(listItem(s));
      list.after = body.next_after ?? null;
      $('list-more').hidden = list.after == null;
      $('list-status').textContent = ul.children.length ? '' : 'No schedules yet: upload one below.';
      ul.dataset.loaded = 'true';
      markCurrentInList();
    } catch (e) {
      if (e && e.name === 'AbortError') return;
      $('list-status').textContent = `Could not list schedules: ${e.message || e}`;
    } finally {
      if (list.controller === controller) { list.loading = false; list.controller = null; }
    }
  }

  function listItem(s) {
    const range = s.start_unix != null && s.end_unix != null
      ? `${humanUtc(s.start_unix).slice(0, 10)} → ${humanUtc(s.end_unix).slice(0, 10)}` : 'no range';
    const btn = el('button', { type: 'button', 'data-id': String(s.schedule_id) },
      el('span', { class: 's-name', text: s.name || `schedule ${s.schedule_id}` }),
      el('span', { class: 's-info', text: `#${s.schedule_id} · ${fmtInt(s.blocks)} blocks · ${fmtInt(s.periods)} periods · ${range}${s.summary ? '' : ' · summary pending'}` }));
    btn.addEventListener('click', () => openSchedule(s.schedule_id));
    return el('li', null, btn);
  }

  function markCurrentInList() {
    const id = state.schedule ? String(state.schedule.schedule_id) : readUrl().schedule;
    for (const b of $('schedule-list').querySelectorAll('button[data-id]')) {
      if (b.dataset.id === id) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  // ----------------------------------------------------------------- upload

  const TOKEN_KEY = 'visbin.apiToken';
  let uploadXhr = null;
  let jobTimer = null;

  function setUploadState(s, message, isError) {
    state.upload.state = s;
    $('upload-panel').dataset.state = s;
    if (message != null) $('upload-status').textContent = message;
    $('upload-button').disabled = s === 'sending' || s === 'processing';
    $('upload-cancel').hidden = s !== 'sending';
    if (isError) $('upload-status').classList.add('is-error');
    else $('upload-status').classList.remove('is-error');
  }

  function startUpload(e) {
    e.preventDefault();
    const file = $('upload-file').files[0];
    if (!file) { setUploadState('idle', 'Choose a file first.', true); $('upload-file').focus(); return; }
    const token = $('api-token').value.trim();
    try {
      if ($('remember-token').checked && token) localStorage.setItem(TOKEN_KEY, token);
      else if (!$('remember-token').checked) localStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage unavailable */ }
    clearTimeout(jobTimer);
    const ndjson = /\.(ndjson|jsonl)$/i.test(file.name);
    const xhr = new XMLHttpRequest();
    uploadXhr = xhr;
    xhr.open('POST', 'v1/schedules');
    xhr.setRequestHeader('Content-Type', ndjson ? 'application/x-ndjson' : 'application/json');
    xhr.setRequestHeader('Accept', 'application/json');
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    Object.assign(state.upload, { progressEvents: 0, loaded: 0, total: file.size, scheduleId: null, jobId: null });
    $('upload-progress').hidden = false;
    $('upload-open').hidden = true;
    $('upload-bytes').value = 0;
    $('upload-bytes-text').textContent = '0%';
    $('job-progress').value = 0;
    $('job-progress').removeAttribute('value'); // indeterminate until the job reports
    $('job-progress-text').textContent = '';
    setUploadState('sending', `Sending ${file.name} (${fmtBytes(file.size)})…`);
    xhr.upload.onprogress = (ev) => {
      state.upload.progressEvents++;
      const total = ev.lengthComputable ? ev.total : file.size;
      state.upload.loaded = ev.loaded;
      const f = total > 0 ? Math.min(1, ev.loaded / total) : 0;
      $('upload-bytes').value = f;
      $('upload-bytes-text').textContent = `${Math.floor(f * 100)}%`;
    };
    xhr.upload.onload = () => {
      $('upload-bytes').value = 1;
      $('upload-bytes-text').textContent = '100%';
      setUploadState('sending', 'Sent; the server is storing the periods…');
    };
    xhr.onload = () => {
      uploadXhr = null;
      if (xhr.status !== 200 && xhr.status !== 201) {
        $('job-progress').value = 0;
        setUploadState('failed', `Upload refused: ${problemFromXhr(xhr)}`, true);
        return;
      }
      let body;
      try { body = JSON.parse(xhr.responseText); } catch (_) {
        setUploadState('failed', 'Upload answered with something that is not JSON.', true);
        return;
      }
      $('upload-bytes').value = 1;
      $('upload-bytes-text').textContent = '100%';
      state.upload.scheduleId = body.schedule_id;
      state.upload.jobId = body.job_id ?? null;
      $('upload-panel').dataset.scheduleId = String(body.schedule_id);
      const what = body.duplicate
        ? `Same content as schedule #${body.schedule_id} (“${body.name}”), which already exists.`
        : `Stored as schedule #${body.schedule_id} (“${body.name}”): ${fmtInt(body.blocks)} blocks, ${fmtInt(body.periods)} periods` +
          (body.empty_periods_dropped ? `, ${fmtInt(body.empty_periods_dropped)} empty periods dropped` : '') + '.';
      loadList(true);
      if (body.job_id == null) { finishJob(what, { state: 'done', progress: 1 }); return; }
      setUploadState('processing', `${what} Computing the summary…`);
      pollJob(body.job_id, what, 0);
    };
    xhr.onerror = () => { uploadXhr = null; setUploadState('failed', 'Upload failed: network error (is the server up?).', true); };
    xhr.onabort = () => { uploadXhr = null; setUploadState('idle', 'Upload cancelled.'); $('upload-progress').hidden = true; };
    xhr.send(file);
  }

  async function pollJob(jobId, what, n) {
    let job;
    try {
      const resp = await fetch(`v1/jobs/${encodeURIComponent(jobId)}`, { headers: { Accept: 'application/json' }, cache: 'no-store' });
      if (!resp.ok) throw new Error(await problemText(resp));
      job = await resp.json();
    } catch (e) {
      if (n < 5) { jobTimer = setTimeout(() => pollJob(jobId, what, n + 1), 1000); return; }
      setUploadState('failed', `${what} Could not follow job ${jobId}: ${e.message || e}`, true);
      return;
    }
    const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
    $('job-progress').value = p;
    $('job-progress-text').textContent = `${Math.floor(p * 100)}%`;
    if (job.state === 'done' || job.state === 'failed') { finishJob(what, job); return; }
    setUploadState('processing', `${what} Summary job ${jobId}: ${job.state}${job.message ? ` — ${job.message}` : ''}`);
    jobTimer = setTimeout(() => pollJob(jobId, what, 0), Math.min(2000, 300 + 100 * n));
  }

  function finishJob(what, job) {
    if (job.state === 'done') {
      $('job-progress').value = 1;
      $('job-progress-text').textContent = '100%';
      setUploadState('done', `${what} Summary ready.`);
      $('upload-open').hidden = false;
      $('upload-open').textContent = `Open schedule #${state.upload.scheduleId}`;
      loadList(true);
      if (state.schedule && state.schedule.schedule_id === state.upload.scheduleId) refreshMeta();
    } else {
      setUploadState('failed', `${what} Summary job failed: ${job.error || job.message || 'no reason given'}`, true);
    }
  }

  async function refreshMeta() {
    if (!state.schedule) return;
    try {
      const resp = await fetch(`v1/schedules/${state.schedule.schedule_id}`, { headers: { Accept: 'application/json' } });
      if (resp.ok) {
        const meta = await resp.json();
        if (state.schedule && meta.schedule_id === state.schedule.schedule_id) setSchedule(meta);
      }
    } catch (_) { /* keep what is shown */ }
  }

  // --------------------------------------------------------------- controls

  function syncControls() {
    $('split-quartile').checked = state.mode === 'quartile';
    $('split-scheduled').checked = state.mode === 'scheduled';
    $('f-priority-min').value = state.filters.priority_min ?? '';
    $('f-priority-max').value = state.filters.priority_max ?? '';
    $('f-scheduled').value = state.filters.scheduled == null ? '' : String(state.filters.scheduled);
  }

  function readFilters() {
    const sv = $('f-scheduled').value;
    return {
      priority_min: parseNumber($('f-priority-min').value),
      priority_max: parseNumber($('f-priority-max').value),
      scheduled: sv === 'true' ? true : sv === 'false' ? false : null,
    };
  }

  function applyFilters() {
    const f = readFilters();
    if (FILTER_KEYS.every((k) => f[k] === state.filters[k])) return;
    state.filters = f;
    syncUrl('replace');
    requestBins(0);
  }

  function updateWindowInputs() {
    if (!state.view) return;
    const a = document.activeElement;
    if (a !== $('w-start')) $('w-start').value = isoUtc(Math.round(state.view.start));
    if (a !== $('w-end')) $('w-end').value = isoUtc(Math.round(state.view.end));
  }

  function updateCsvLink() {
    const req = currentRequest();
    const link = $('csv-link');
    if (!req) { link.hidden = true; return; }
    const q = new URLSearchParams(req.query);
    q.set('format', 'csv');
    link.href = `${req.path}?${q}`;
    link.hidden = false;
    link.setAttribute('download', `schedule-${state.schedule.schedule_id}-${req.start}-${req.end}-${req.bin}s.csv`);
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    if (typeof uPlot !== 'function') {
      document.body.prepend(el('p', { class: 'is-error', text: 'The chart library did not load.' }));
      return;
    }
    try { $('api-token').value = localStorage.getItem(TOKEN_KEY) || ''; } catch (_) { /* no storage */ }

    $('list-refresh').addEventListener('click', () => loadList(true));
    $('list-more').addEventListener('click', () => loadList(false));
    $('upload-form').addEventListener('submit', startUpload);
    $('upload-cancel').addEventListener('click', () => { if (uploadXhr) uploadXhr.abort(); });
    $('upload-open').addEventListener('click', () => { if (state.upload.scheduleId != null) openSchedule(state.upload.scheduleId); });
    $('remember-token').addEventListener('change', (e) => {
      if (!e.target.checked) { try { localStorage.removeItem(TOKEN_KEY); } catch (_) { /* ignore */ } }
    });

    for (const r of document.querySelectorAll('input[name="split"]')) {
      r.addEventListener('change', () => {
        if (!r.checked) return;
        state.mode = r.value === 'scheduled' ? 'scheduled' : 'quartile';
        syncUrl('replace');
        if (state.schedule && state.view) render();
      });
    }
    $('controls').addEventListener('submit', (e) => { e.preventDefault(); applyFilters(); });
    $('f-scheduled').addEventListener('change', applyFilters);
    for (const id of ['f-priority-min', 'f-priority-max']) {
      $(id).addEventListener('change', applyFilters);
    }
    $('filters-clear').addEventListener('click', () => {
      $('f-priority-min').value = '';
      $('f-priority-max').value = '';
      $('f-scheduled').value = '';
      applyFilters();
    });

    $('pan-left').addEventListener('click', () => state.view && pan(-0.25, { history: 'push' }));
    $('pan-right').addEventListener('click', () => state.view && pan(0.25, { history: 'push' }));
    $('zoom-in').addEventListener('click', () => state.view && zoomAt(0.5, 0.5, { history: 'push' }));
    $('zoom-out').addEventListener('click', () => state.view && zoomAt(0.5, 2, { history: 'push' }));
    $('zoom-reset').addEventListener('click', resetView);
    $('window-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const a = parseInstant($('w-start').value);
      const b = parseInstant($('w-end').value);
      if (a == null || b == null || b <= a) {
        showError('The window needs a start before its end, each in RFC 3339 (2025-03-01T00:00:00Z) or Unix seconds.');
        return;
      }
      state.error = null;
      setView(a, b, { history: 'push' });
    });
    $('chart').addEventListener('keydown', onChartKey);
    attachPanning();

    // Follow the chart's width; a different width can mean a different bin width.
    let resizeTimer = null;
    new ResizeObserver(() => {
      if (!chart) return;
      const w = Math.max(200, $('chart').clientWidth);
      if (Math.abs(w - chart.width) < 1) return;
      chart.setSize({ width: w, height: chartHeight() });
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => requestBins(0), 200);
    }).observe($('chart'));

    window.addEventListener('popstate', openFromUrl);
    performance.addEventListener('resourcetimingbufferfull', () => performance.clearResourceTimings());

    loadList(true);
    openFromUrl();
  }

  // ------------------------------------------------------ test/console API

  window.visbinViewer = {
    /** The last /bins answer on the chart: {url, bin, request, status, xCache, serverTiming, serverMs, body}. */
    data: () => (state.answer ? JSON.parse(JSON.stringify(state.answer)) : null),
    /** The arrays handed to uPlot: [x, cumulative layers top first…, total]. */
    chartData: () => (chart ? chart.data.map((a) => Array.from(a)) : null),
    chartSeries: () => (chart ? chart.series.map((s) => s.label) : null),
    view: () => (state.view ? { ...state.view } : null),
    plotWidth,
    chooseBinWidth,
    state: () => {
      const req = currentRequest();
      return {
        scheduleId: state.schedule ? state.schedule.schedule_id : null,
        mode: state.mode,
        filters: { ...state.filters },
        view: state.view ? { ...state.view } : null,
        pendingUrl: state.inflight ? state.inflight.url : null,
        idle: !!req && !state.inflight && !state.fetchTimer && !!state.answer && state.answer.url === req.url,
        error: state.error,
        stats: { ...state.stats },
        upload: { ...state.upload },
      };
    },
    setView: (start, end) => setView(start, end, { history: 'push' }),
    zoom: (factor, frac = 0.5) => zoomAt(frac, factor, { history: 'push' }),
    pan: (frac) => pan(frac, { history: 'push' }),
    reset: resetView,
  };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
