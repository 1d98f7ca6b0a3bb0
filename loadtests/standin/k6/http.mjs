// Stand-in for `k6/http`: request/get/post/put/patch/del/head/options, batch,
// url``, expectedStatuses, setResponseCallback. The main thread does the I/O
// (node:http, one keep-alive agent per VU); this module builds the request,
// turns the answer into a k6-shaped Response and emits k6's http_req_* metrics.
import { vu, requireStage, baseTags, emit, callMain } from '../runtime.mjs';

const RUNNING = ['setup', 'iteration', 'teardown'];
const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Go's textproto.CanonicalMIMEHeaderKey: k6 hands out headers under these keys ("X-Cache", "Etag"). */
export function canonicalHeaderKey(k) {
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k)) return k;
  return k.toLowerCase().replace(/(^|-)([a-z])/g, (_, d, c) => d + c.toUpperCase());
}

class HttpURL {
  constructor(url, name) { this.url = url; this.name = name; }
  toString() { return this.url; }
}

export function url(strings, ...args) {
  let u = strings[0];
  let name = strings[0];
  args.forEach((a, i) => { u += String(a) + strings[i + 1]; name += '${}' + strings[i + 1]; });
  return new HttpURL(u, name);
}

class ExpectedStatuses {
  constructor(ranges) { this.ranges = ranges; }
  ok(status) { return this.ranges.some((r) => status >= r.min && status <= r.max); }
}

export function expectedStatuses(...args) {
  return new ExpectedStatuses(args.map((a) => {
    if (typeof a === 'number') return { min: a, max: a };
    if (a && typeof a.min === 'number' && typeof a.max === 'number') return { min: a.min, max: a.max };
    throw new Error(`expectedStatuses(): ${JSON.stringify(a)} is neither a status nor {min, max}`);
  }));
}

const DEFAULT_EXPECTED = new ExpectedStatuses([{ min: 200, max: 399 }]);

export function setResponseCallback(cb) {
  if (cb !== null && !(cb instanceof ExpectedStatuses)) throw new Error('setResponseCallback() takes the result of http.expectedStatuses() or null');
  vu.responseCallback = cb;
}

function parseTimeout(t) {
  if (t === undefined || t === null) return 60000;
  if (typeof t === 'number') return t; // milliseconds, as in k6
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(String(t).trim());
  if (!m) throw new Error(`invalid timeout "${t}"`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
}

function encodeBody(body, headers) {
  if (body === undefined || body === null) return null;
  if (typeof body === 'string') return encoder.encode(body);
  if (body instanceof ArrayBuffer) return new Uint8Array(body.slice(0));
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  if (typeof body === 'object') {
    for (const v of Object.values(body)) {
      if (v && typeof v === 'object') throw new Error('the stand-in does not implement multipart bodies (http.file)');
    }
    if (!Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
    }
    return encoder.encode(new URLSearchParams(/** @type {Record<string,string>} */ (body)).toString());
  }
  throw new Error(`unsupported request body type ${typeof body}`);
}

function prepare(method, target, body, params) {
  const p = params || {};
  for (const unsupported of ['auth', 'jar', 'compression']) {
    if (p[unsupported] !== undefined) throw new Error(`the stand-in does not implement the "${unsupported}" request parameter`);
  }
  if (p.cookies && Object.keys(p.cookies).length) throw new Error('the stand-in does not implement cookies');
  const urlStr = target instanceof HttpURL ? target.url : String(target);
  let parsed;
  try { parsed = new URL(urlStr); } catch { throw new Error(`invalid URL "${urlStr}"`); }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`unsupported URL scheme in "${urlStr}"`);
  /** @type {Record<string,string>} */
  const headers = {};
  const ua = vu.options.userAgent;
  if (ua !== '') headers['User-Agent'] = ua || 'k6-standin/1 (visbin loadtests smoke)';
  for (const [k, v] of Object.entries(p.headers || {})) headers[k] = String(v);
  const bytes = encodeBody(body, headers);
  const responseType = p.responseType || (vu.options.discardResponseBodies ? 'none' : 'text');
  if (!['text', 'binary', 'none'].includes(responseType)) throw new Error(`invalid responseType "${responseType}"`);
  const cb = 'responseCallback' in p ? p.responseCallback : vu.responseCallback;
  /** @type {Record<string,string>} */
  const tags = {};
  for (const [k, v] of Object.entries(p.tags || {})) tags[k] = String(v);
  return {
    wire: {
      method: method.toUpperCase(),
      url: urlStr,
      headers: Object.entries(headers),
      body: bytes,
      timeoutMs: parseTimeout(p.timeout),
      redirects: p.redirects ?? vu.options.maxRedirects ?? 10,
      keepBody: responseType !== 'none',
    },
    name: target instanceof HttpURL ? target.name : urlStr,
    tags,
    responseType,
    expected: cb === undefined ? DEFAULT_EXPECTED : cb,
    requestHeaders: headers,
    bodyText: typeof body === 'string' ? body : '',
  };
}

/** gjson-like selector subset for Response.json(): `a.b.0.c`, `list.#` (length). */
function select(value, selector) {
  let cur = value;
  for (const part of selector.split('.')) {
    if (cur === null || cur === undefined) return undefined;
    if (part === '#' && Array.isArray(cur)) { cur = cur.length; continue; }
    cur = cur[part];
  }
  return cur;
}

class Response {
  constructor(prep, r) {
    this.status = r.status;
    this.status_text = r.status ? `${r.status} ${r.statusText}` : '';
    /** @type {Record<string,string>} */
    this.headers = {};
    for (const [k, v] of r.headers) {
      const key = canonicalHeaderKey(k);
      this.headers[key] = key in this.headers ? `${this.headers[key]}, ${v}` : v;
    }
    if (r.error || !r.body) this.body = prep.responseType === 'none' || r.error ? null : (prep.responseType === 'binary' ? new ArrayBuffer(0) : '');
    else if (prep.responseType === 'binary') this.body = r.body.buffer.slice(r.body.byteOffset, r.body.byteOffset + r.body.byteLength);
    else if (prep.responseType === 'none') this.body = null;
    else this.body = decoder.decode(r.body);
    this.timings = r.timings;
    this.url = r.url;
    this.proto = r.proto || '';
    this.remote_ip = r.remoteIp || '';
    this.remote_port = r.remotePort || 0;
    this.error = r.error || '';
    this.error_code = r.errorCode || 0;
    this.cookies = {};
    this.tls_version = '';
    this.tls_cipher_suite = '';
    this.ocsp = { produced_at: 0, this_update: 0, next_update: 0, revocation_reason: '', revoked_at: 0, status: '' };
    /** @type {Record<string,string[]>} */
    const reqHeaders = {};
    for (const [k, v] of Object.entries(prep.requestHeaders)) reqHeaders[canonicalHeaderKey(k)] = [v];
    this.request = { method: prep.wire.method, url: prep.wire.url, headers: reqHeaders, body: prep.bodyText, cookies: {} };
    this._json = undefined;
  }

  json(selector) {
    if (this._json === undefined) {
      if (this.body === null) throw new Error('the response has no body (responseType "none" or a failed request)');
      const text = typeof this.body === 'string' ? this.body : decoder.decode(new Uint8Array(this.body));
      try { this._json = { v: JSON.parse(text) }; } catch (e) {
        throw new Error(`cannot parse the response body as JSON: ${/** @type {Error} */ (e).message}`);
      }
    }
    return selector === undefined ? this._json.v : select(this._json.v, selector);
  }

  html() { throw new Error('the stand-in does not implement Response.html()'); }
  clickLink() { throw new Error('the stand-in does not implement Response.clickLink()'); }
  submitForm() { throw new Error('the stand-in does not implement Response.submitForm()'); }
}

function record(prep, r) {
  /** @type {Record<string, string>} */
  const t = { ...baseTags(), method: prep.wire.method, url: r.url, name: r.url === prep.wire.url ? prep.name : r.url,
    status: String(r.status), proto: r.proto || '' };
  const failed = prep.expected === null ? null : !(r.status !== 0 && prep.expected.ok(r.status));
  if (failed !== null) t.expected_response = String(!failed);
  if (r.errorCode) { t.error_code = String(r.errorCode); t.error = r.error; }
  Object.assign(t, prep.tags);
  emit('http_reqs', 1, t);
  const tm = r.timings;
  emit('http_req_duration', tm.duration, t);
  emit('http_req_blocked', tm.blocked, t);
  emit('http_req_connecting', tm.connecting, t);
  emit('http_req_tls_handshaking', tm.tls_handshaking, t);
  emit('http_req_sending', tm.sending, t);
  emit('http_req_waiting', tm.waiting, t);
  emit('http_req_receiving', tm.receiving, t);
  if (failed !== null) emit('http_req_failed', failed ? 1 : 0, t);
  const base = baseTags();
  emit('data_sent', r.bytesSent, base);
  emit('data_received', r.bytesReceived, base);
}

function perform(preps) {
  const reply = callMain({ type: 'http', requests: preps.map((p) => p.wire) });
  return reply.responses.map((r, i) => {
    for (const hop of r.hops) record(preps[i], hop);
    record(preps[i], r);
    if (r.error && vu.options.throw) throw new Error(`${preps[i].wire.method} ${preps[i].wire.url}: ${r.error}`);
    return new Response(preps[i], r);
  });
}

export function request(method, target, body, params) {
  requireStage('Making http requests', ['setup', 'iteration', 'teardown']);
  return perform([prepare(method, target, body, params)])[0];
}

export const get = (u, params) => request('GET', u, null, params);
export const head = (u, params) => request('HEAD', u, null, params);
export const post = (u, body, params) => request('POST', u, body, params);
export const put = (u, body, params) => request('PUT', u, body, params);
export const patch = (u, body, params) => request('PATCH', u, body, params);
export const del = (u, body, params) => request('DELETE', u, body, params);
export const options = (u, body, params) => request('OPTIONS', u, body, params);

export function asyncRequest() {
  throw new Error('the stand-in does not implement http.asyncRequest()');
}

function normalize(req) {
  if (typeof req === 'string' || req instanceof HttpURL) return ['GET', req, null, null];
  if (Array.isArray(req)) return [req[0], req[1], req[2] ?? null, req[3] ?? null];
  if (req && typeof req === 'object') return [req.method || 'GET', req.url, req.body ?? null, req.params ?? null];
  throw new Error(`invalid batch request ${JSON.stringify(req)}`);
}

/** Runs the requests in parallel (at most options.batchPerHost per host, 6 by default, on this VU's connections). */
export function batch(requests) {
  requireStage('Making http requests', RUNNING);
  const keys = Array.isArray(requests) ? requests.map((_, i) => i) : Object.keys(requests);
  const preps = keys.map((k) => { const [m, u, b, p] = normalize(requests[k]); return prepare(m, u, b, p); });
  const responses = perform(preps);
  if (Array.isArray(requests)) return responses;
  /** @type {Record<string, Response>} */
  const out = {};
  keys.forEach((k, i) => { out[k] = responses[i]; });
  return out;
}

export function file() { throw new Error('the stand-in does not implement http.file()'); }
export function cookieJar() { throw new Error('the stand-in does not implement cookie jars'); }

export const TLS_1_2 = 'tls1.2';
export const TLS_1_3 = 'tls1.3';

export default {
  request, get, head, post, put, patch, del, options, asyncRequest, batch, url, file, cookieJar,
  expectedStatuses, setResponseCallback, TLS_1_2, TLS_1_3,
};
