#!/usr/bin/env node
// Development server for the viewer page (no dependencies).
//
// Serves the page the way `visbin serve` does — `GET /` is
// assets/viewer/index.html and `GET /assets/<name>` a flat file of
// assets/viewer/ — and proxies every other request (/v1/…, /openapi.json,
// /metrics, …) to a running visbin server, passing status, headers and body
// through both ways untouched (X-Cache, Server-Timing, ETag,
// Content-Encoding, …).
//
//   node tests/browser/devserver.mjs --upstream http://127.0.0.1:8080 --port 8090
//
// Options:
//   --upstream URL    the visbin server (default $VISBIN_UPSTREAM or http://127.0.0.1:8080)
//   --port N          listen port (default $PORT or 8090); --host H (default 127.0.0.1)
//   --csp             add a strict Content-Security-Policy to the page (checks that the
//                     page needs nothing but its own origin)
//   --emulate-etag    for /bins and /visibility-histogram answers that carry no ETag,
//                     add one (SHA-256 of the body) with Cache-Control: no-cache and
//                     answer a matching If-None-Match with 304 — to exercise browser
//                     revalidation against a server build that does not do it yet
//   --log             print one line per proxied request (method, path, status, X-Cache)

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '../../assets/viewer');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
};
const flag = (name) => args.includes(name);

const upstream = new URL(opt('--upstream', process.env.VISBIN_UPSTREAM || 'http://127.0.0.1:8080'));
const port = Number(opt('--port', process.env.PORT || 8090));
const host = opt('--host', '127.0.0.1');
const useCsp = flag('--csp');
const emulateEtag = flag('--emulate-etag');
const log = flag('--log')
  ? (req, status, headers) => console.log(`${req.method} ${req.url} → ${status}` +
    `${req.headers['if-none-match'] ? ' (If-None-Match)' : ''} x-cache=${headers['x-cache'] || '-'}`)
  : () => {};

// Content types of the files of assets/viewer/ (the real server must use the same).
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
};
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

function problem(res, status, detail) {
  const body = JSON.stringify({ type: 'about:blank', title: http.STATUS_CODES[status], status, detail });
  res.writeHead(status, { 'Content-Type': 'application/problem+json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function serveFile(req, res, name) {
  const type = TYPES[path.extname(name).toLowerCase()];
  // Flat folder only: no subfolders, no dot files, no traversal.
  if (!type || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) return problem(res, 404, 'no such asset');
  const file = path.join(ROOT, name);
  fs.readFile(file, (err, data) => {
    if (err) return problem(res, 404, 'no such asset');
    const headers = {
      'Content-Type': type,
      'Content-Length': data.length,
      'Cache-Control': 'no-cache',
      'X-Content-Type-Options': 'nosniff',
    };
    if (useCsp && type.startsWith('text/html')) headers['Content-Security-Policy'] = CSP;
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : data);
  });
}

function proxy(req, res) {
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v;
  headers.host = upstream.host;
  const up = http.request({
    protocol: upstream.protocol,
    hostname: upstream.hostname,
    port: upstream.port || 80,
    method: req.method,
    path: req.url,
    headers,
  }, (ur) => {
    const wantsEtag = emulateEtag && req.method === 'GET' && ur.statusCode === 200 && !ur.headers.etag &&
      /^\/v1\/schedules\/[^/]+\/(bins|visibility-histogram)(\?|$)/.test(req.url);
    if (wantsEtag) return emulate(req, res, ur);
    const out = [];
    for (let i = 0; i < ur.rawHeaders.length; i += 2) {
      if (!HOP_BY_HOP.has(ur.rawHeaders[i].toLowerCase())) out.push(ur.rawHeaders[i], ur.rawHeaders[i + 1]);
    }
    log(req, ur.statusCode, ur.headers);
    res.writeHead(ur.statusCode, ur.statusMessage, out);
    ur.pipe(res);
  });
  up.on('error', (e) => {
    if (!res.headersSent) problem(res, 502, `upstream ${upstream.origin}: ${e.message}`);
    else res.destroy();
  });
  // A client that goes away (e.g. an aborted fetch) cancels the upstream request too.
  res.on('close', () => { if (!res.writableFinished) up.destroy(); });
  req.pipe(up);
}

function emulate(req, res, ur) {
  const chunks = [];
  ur.on('data', (c) => chunks.push(c));
  ur.on('end', () => {
    const body = Buffer.concat(chunks);
    const etag = `"${crypto.createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    const keep = {};
    for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.has(k) && k !== 'content-length') keep[k] = v;
    keep.etag = etag;
    keep['cache-control'] = 'no-cache';
    const inm = req.headers['if-none-match'];
    if (inm && inm.split(',').map((s) => s.trim()).includes(etag)) {
      delete keep['content-type'];
      delete keep['content-encoding'];
      log(req, 304, keep);
      res.writeHead(304, keep);
      res.end();
      return;
    }
    keep['content-length'] = body.length;
    log(req, 200, keep);
    res.writeHead(200, keep);
    res.end(body);
  });
  ur.on('error', () => res.destroy());
}

const server = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://localhost');
  if (u.pathname === '/') {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return problem(res, 405, 'method not allowed');
    }
    return serveFile(req, res, 'index.html');
  }
  if (u.pathname.startsWith('/assets/')) {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return problem(res, 405, 'method not allowed');
    }
    let name;
    try { name = decodeURIComponent(u.pathname.slice('/assets/'.length)); } catch { name = ''; }
    return serveFile(req, res, name);
  }
  return proxy(req, res);
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`viewer dev server on http://${a.address}:${a.port}/ → ${upstream.origin}` +
    `${useCsp ? ' (CSP)' : ''}${emulateEtag ? ' (emulated ETag/304)' : ''}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
