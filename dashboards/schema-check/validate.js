#!/usr/bin/env node
// Validates Grafana dashboard JSON files against dashboard.schema.json (generated
// from @grafana/schema by gen-schema.js) with ajv, then applies the project's own
// rules for dashboards/visbin.json (see checkProject below).
//
//   node validate.js [--emit-rules FILE] [--list-exprs] DASHBOARD.json...
//
//   --emit-rules FILE  also write every PromQL expr of the dashboards as a
//                      Prometheus rule file (with $__rate_interval replaced by
//                      30s), so that `promtool check rules FILE` parses them.
//   --list-exprs       print every PromQL expr (one per line) and exit 0 when valid.
//
// Exit status: 0 when every file is valid, 1 otherwise, 2 on bad usage.
"use strict";
const fs = require("fs");
const path = require("path");
const Ajv = require("ajv");

const DATASOURCE = { type: "prometheus", uid: "prometheus" }; // provisioning/datasources/prometheus.yml
const GRID_COLUMNS = 24;

function usage(msg) {
  if (msg) console.error(`validate.js: ${msg}`);
  console.error("usage: node validate.js [--emit-rules FILE] [--list-exprs] DASHBOARD.json...");
  process.exit(2);
}

const args = process.argv.slice(2);
let emitRules = null;
let listExprs = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--emit-rules") {
    emitRules = args[++i];
    if (!emitRules) usage("--emit-rules needs a file name");
  } else if (args[i] === "--list-exprs") {
    listExprs = true;
  } else if (args[i].startsWith("-")) {
    usage(`unknown option ${args[i]}`);
  } else {
    files.push(args[i]);
  }
}
if (files.length === 0) usage("no dashboard given");

const schema = JSON.parse(fs.readFileSync(path.join(__dirname, "dashboard.schema.json"), "utf8"));
const SCHEMA_SOURCE = ((schema.$comment || "").match(/@grafana\/schema@[\w.+-]+/) || ["@grafana/schema"])[0];
const ajv = new Ajv({ allErrors: true, strict: true });
ajv.addSchema(schema, "dashboard");
const validate = ajv.getSchema("dashboard");
// Only used to explain a failure: a panel is `Panel | RowPanel` (anyOf), and the
// whole-dashboard errors list both branches; re-checking each panel against the
// branch its `type` selects gives the errors that matter.
const validatePanel = ajv.getSchema("dashboard#/definitions/Panel");
const validateRow = ajv.getSchema("dashboard#/definitions/RowPanel");

function explain(d) {
  const out = [];
  const fmt = (prefix, e) => `  ${prefix}${e.instancePath || (prefix ? "" : "/")} ${e.message} ${JSON.stringify(e.params)}`;
  for (const e of validate.errors) if (!/^\/panels\/\d+/.test(e.instancePath)) out.push(fmt("", e));
  const walk = (panels, prefix) => {
    if (!Array.isArray(panels)) return;
    panels.forEach((p, i) => {
      const at = `${prefix}/panels/${i}`;
      const v = p && p.type === "row" ? validateRow : validatePanel;
      if (!v(p)) for (const e of v.errors) out.push(fmt(at, e));
      if (p && p.type === "row") walk(p.panels, at);
    });
  };
  walk(d.panels, "");
  return out.length ? out : validate.errors.map((e) => fmt("", e));
}

// Every panel, including those nested in collapsed rows.
function* allPanels(panels) {
  for (const p of panels || []) {
    yield p;
    if (p && Array.isArray(p.panels)) yield* allPanels(p.panels);
  }
}

// Project rules the generic schema cannot express.
function checkProject(d) {
  const errs = [];
  if (d.uid !== "visbin-overview") errs.push(`uid must be "visbin-overview", is ${JSON.stringify(d.uid)}`);
  if (d.title !== "visbin") errs.push(`title must be "visbin", is ${JSON.stringify(d.title)}`);
  const ids = new Set();
  const exprs = [];
  for (const p of allPanels(d.panels)) {
    const where = `panel ${JSON.stringify(p.title)} (id ${p.id})`;
    if (ids.has(p.id)) errs.push(`${where}: duplicate panel id`);
    ids.add(p.id);
    const g = p.gridPos;
    if (g && (g.x < 0 || g.w < 1 || g.x + g.w > GRID_COLUMNS)) errs.push(`${where}: gridPos outside the ${GRID_COLUMNS} columns`);
    if (p.type === "row") continue;
    const dsOk = (ds) => ds && ds.type === DATASOURCE.type && ds.uid === DATASOURCE.uid;
    if (!dsOk(p.datasource)) errs.push(`${where}: datasource must be ${JSON.stringify(DATASOURCE)}`);
    const refIds = new Set();
    for (const t of p.targets || []) {
      if (typeof t.refId !== "string" || refIds.has(t.refId)) errs.push(`${where}: missing or duplicate refId`);
      refIds.add(t.refId);
      if (!dsOk(t.datasource)) errs.push(`${where} ${t.refId}: datasource must be ${JSON.stringify(DATASOURCE)}`);
      if (typeof t.expr !== "string" || t.expr.trim() === "") {
        errs.push(`${where} ${t.refId}: missing expr`);
        continue;
      }
      // The only template variable allowed in a query is $__rate_interval.
      const vars = (t.expr.match(/\$\{?[A-Za-z_][A-Za-z0-9_]*/g) || []).filter((v) => v.replace("{", "") !== "$__rate_interval");
      if (vars.length) errs.push(`${where} ${t.refId}: template variable(s) ${vars.join(", ")} in expr (only $__rate_interval is allowed)`);
      exprs.push({ panel: p.title, refId: t.refId, expr: t.expr });
    }
    if (!p.targets || p.targets.length === 0) errs.push(`${where}: no targets`);
  }
  return { errs, exprs };
}

let failed = false;
const allExprs = [];
for (const file of files) {
  let d;
  try {
    d = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`${file}: cannot read JSON: ${e.message}`);
    failed = true;
    continue;
  }
  if (!validate(d)) {
    failed = true;
    console.error(`${file}: INVALID against the Grafana dashboard schema (Dashboard type of ${SCHEMA_SOURCE}):`);
    for (const line of explain(d)) console.error(line);
    continue;
  }
  const { errs, exprs } = checkProject(d);
  if (errs.length) {
    failed = true;
    console.error(`${file}: violates project rules:`);
    for (const e of errs) console.error(`  ${e}`);
    continue;
  }
  allExprs.push(...exprs);
  if (!listExprs) console.log(`${file}: valid (${[...allPanels(d.panels)].length} panels, ${exprs.length} PromQL exprs)`);
}

if (failed) process.exit(1);

if (listExprs) for (const e of allExprs) console.log(e.expr);

if (emitRules) {
  // JSON is YAML: a rule group with one recording rule per dashboard expr.
  const rules = allExprs.map((e, i) => ({
    record: `dashboard:expr_${String(i + 1).padStart(3, "0")}`,
    expr: e.expr.replaceAll("$__rate_interval", "30s"),
  }));
  fs.writeFileSync(emitRules, JSON.stringify({ groups: [{ name: "dashboard-exprs", rules }] }, null, 2) + "\n");
}
