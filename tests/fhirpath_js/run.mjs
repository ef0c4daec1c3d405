// The fhirpath.js side of the FHIRPath cross-check (tests/fhirpath_crosscheck.py writes its input).
// Reads one JSON document on stdin: {valuesets: {url: [[system, code]]}, records: {name: [resources]},
// cases: [{record, expression, env: {name: [{value, type, path?}]}, focus}]}, and writes on stdout a JSON
// array with, for each case, {result: [...]} or {error: "..."}. One process evaluates every case.
// memberOf() answers from the ValueSet expansions given, resolve() from the case's record: fhirpath.js's own
// need a terminology or FHIR server. Run with TZ=UTC: fhirpath.js writes date/times in the process's zone.
// Usage: node run.mjs [FOLDER]  (FOLDER holds the installed package; default: this script's folder)
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(process.argv[2] ? path.join(path.resolve(process.argv[2]), 'package.json') : import.meta.url);
const fhirpath = require('fhirpath');
const r4 = require('fhirpath/fhir-context/r4');

const input = JSON.parse(readFileSync(0, 'utf8'));
const valuesets = new Map(
  Object.entries(input.valuesets).map(([url, codes]) => [url, new Set(codes.map(([s, c]) => `${s}|${c}`))]),
);

let byId = new Map(); // `Type/id` -> resource of the case's record
let holder = new WeakMap(); // Reference object -> the resource that holds it (for `#id`)

function register(resource) {
  const walk = (value) => {
    if (Array.isArray(value)) {
      value.forEach(walk);
    } else if (value && typeof value === 'object') {
      if ('reference' in value) holder.set(value, resource);
      for (const [key, item] of Object.entries(value)) if (key !== 'contained') walk(item);
    }
  };
  walk(resource);
}

function resolveOne(reference) {
  if (!reference || typeof reference.reference !== 'string') return null;
  const text = reference.reference;
  if (text.startsWith('#')) {
    const container = holder.get(reference);
    return (container?.contained || []).find((c) => c.id === text.slice(1)) ?? null;
  }
  return byId.get(text) ?? null;
}

function memberOfOne(item, url) {
  const members = valuesets.get(url);
  if (members === undefined) return null;
  if (typeof item === 'string') return [...members].some((key) => key.endsWith(`|${item}`));
  if (!item || typeof item !== 'object') return false;
  const codings = 'coding' in item || 'text' in item ? item.coding || [] : [item];
  return codings.some((c) => c && members.has(`${c.system ?? ''}|${c.code ?? ''}`));
}

const userInvocationTable = {
  memberOf: {
    fn: (inputs, url) => {
      if (inputs.length === 0) return [];
      if (inputs.length > 1) throw new Error('memberOf() on more than one item');
      const answer = memberOfOne(inputs[0], url);
      return answer === null ? [] : [answer];
    },
    arity: { 1: ['String'] },
  },
  resolve: { fn: (inputs) => inputs.map(resolveOne).filter((r) => r !== null) },
};

const literals = new Map();
function literal(text) {
  if (!literals.has(text)) literals.set(text, fhirpath.evaluate({}, text, null, r4, { resolveInternalTypes: false })[0]);
  return literals.get(text);
}

const DATES = new Set(['date', 'dateTime', 'instant']);

// A value of the engine, typed for fhirpath.js: resources as objects (typed by resourceType), date/times as
// literals, FHIR elements as nodes of the engine's path or type, other primitives as JavaScript values.
function typed(item) {
  const { value, type, path } = item;
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    register(value);
    if (value.resourceType) return value;
    const base = path || type;
    if (!base) return value;
    return fhirpath.evaluate(value, { base, expression: '$this' }, null, r4, { resolveInternalTypes: false })[0] ?? value;
  }
  if (DATES.has(type) && typeof value === 'string') return literal(`@${value}`);
  if (type === 'time' && typeof value === 'string') return literal(`@T${value}`);
  return value;
}

const out = input.cases.map((c) => {
  try {
    byId = new Map((input.records[c.record] || []).map((r) => [`${r.resourceType}/${r.id}`, r]));
    holder = new WeakMap();
    const env = { sct: 'http://snomed.info/sct', loinc: 'http://loinc.org' };
    for (const [name, items] of Object.entries(c.env)) env[name] = items.map(typed);
    const focus = c.focus ?? [];
    if (c.focus) register(c.focus);
    const result = fhirpath.evaluate(focus, c.expression, env, r4, { userInvocationTable, resolveInternalTypes: true });
    return { result };
  } catch (e) {
    return { error: String((e && e.message) || e) };
  }
});
process.stdout.write(JSON.stringify(out));
