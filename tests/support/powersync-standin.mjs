// powersync-standin.mjs: a STAND-IN for the PowerSync Service 1.25.0, written for rulekeeper's
// tests. It is NOT the PowerSync Service and shares no code with it.
//
// The tests in tests/it/powersync_real.rs, powersync_deploy.rs and powersync_parity.rs run
// against it when the real service is not available. When RULEKEEPER_POWERSYNC_DIR names a
// build of the real service, the same tests run against that instead, and so hold this file
// to what the real one does. The behaviour copied here is what 1.25.0 was measured to do
// (../shared/powersync/README.md, docs/powersync.md) and what its public source shows for the
// routes rulekeeper calls.
//
// What it leaves out: there is no replication, no Postgres and no real bucket storage. A
// "version" of the rules is a JSON record in standin-storage.json; its initial replication is
// a timer. Schema checks (unknown tables and columns, tables without a primary key) come only
// from a static schema the harness writes into standin.json; without one there are none. It
// parses with the registry's @powersync/service-sync-rules pinned in contrib/powersync
// (0.38.1), whereas 1.25.0 uses the unpublished 0.40.0, so the `disagree-version-*` files of
// the parity corpus get 0.38.1's verdicts here.
//
// Usage (the same argv as the real `entry.js start -c CONFIG`, so tests/support/psctl can start
// either), with the Node pinned in contrib/powersync:
//
//   node tests/support/powersync-standin.mjs start -c CONFIG
//
// CONFIG is a powersync.yaml as tests/it/pservice.rs `config_yaml` writes it. Read: `port`,
// `api.tokens`, and `sync_config:`/`sync_rules:` (`path`, relative to CONFIG's directory, or
// `content`). Everything else (replication, storage, client_auth, ...) is accepted and ignored.
//
// Files in CONFIG's directory:
//   standin.json          knobs, optional, re-read whenever used (a test may change it live):
//     { "schema": { "<table>": { "columns": { "<col>": "<pg type>" }, "primary_key": ["id"] } },
//       "replication_ms": 300,                       // deploying -> active
//       "table_replication_ms": { "<table>": 5000 }  // extra, for rules reading that table
//     }
//     Tables are in schema `public`; `primary_key: []` makes rules reading the table fail
//     once deploying, with the real service's fatal error, and never become active.
//   hold/<table>          while it exists, a version reading <table> stays deploying (models a
//                         lock held on the table in Postgres).
//   standin-storage.json  the versions (written here; the bucket storage stand-in):
//     { "versions": [ { "id": 1, "state": "PROCESSING|ACTIVE|STOP|TERMINATED",
//                       "slot": "powersync_1_ab12", "snapshot_done": false,
//                       "content": "...", "errors": [ { "level": "fatal", "message": "..." } ] } ] }

import { createRequire } from 'node:module';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

// Logs are read by tests (`Created replication slot <slot>` ends its line) and by people: one
// line per message, always.
function log(level, message) {
  const line = String(message).replace(/\s*\n\s*/g, ' ');
  process.stdout.write(`${new Date().toISOString()} ${level}: ${line}\n`);
}

// Packages come from contrib/powersync/node_modules, found from this file and not from the cwd:
// psctl starts us from the service's directory.
const require = createRequire(new URL('../../contrib/powersync/package.json', import.meta.url));
let SqlSyncRules, StaticSchema, YAML;
try {
  ({ SqlSyncRules, StaticSchema } = await import(
    pathToFileURL(require.resolve('@powersync/service-sync-rules')).href
  ));
  YAML = require('yaml');
} catch (e) {
  log('error', `cannot load contrib/powersync's packages (npm ci --prefix contrib/powersync): ${e.message}`);
  process.exit(2);
}

const args = process.argv.slice(2);
const ci = args.indexOf('-c') >= 0 ? args.indexOf('-c') : args.indexOf('--config');
if (args[0] !== 'start' || ci < 0 || !args[ci + 1]) {
  process.stderr.write('usage: powersync-standin.mjs start -c CONFIG\n');
  process.exit(2);
}
const configPath = resolve(args[ci + 1]);
const dir = dirname(configPath);
const knobsPath = join(dir, 'standin.json');
const storagePath = join(dir, 'standin-storage.json');

let config;
try {
  // The real service resolves `!env VAR` in its config; accept it so a config that uses it loads.
  const env = { tag: '!env', resolve: (v) => process.env[String(v).trim()] ?? '' };
  config = YAML.parse(readFileSync(configPath, 'utf8'), { customTags: [env] }) ?? {};
} catch (e) {
  log('error', `cannot read config ${configPath}: ${e.message}`);
  process.exit(1);
}
const port = Number(config.port ?? 8080);
const tokens = (config.api?.tokens ?? []).map(String);
const syncBlock = config.sync_config ?? config.sync_rules ?? null;
const fileMode = syncBlock != null && (syncBlock.path != null || syncBlock.content != null);

// ---- knobs ----

let lastKnobs = {};
function knobs() {
  if (!existsSync(knobsPath)) return (lastKnobs = {});
  try {
    return (lastKnobs = JSON.parse(readFileSync(knobsPath, 'utf8')) ?? {});
  } catch (e) {
    // A test rewriting the file in place can be read half-written: keep the last good knobs.
    return lastKnobs;
  }
}

// What the real service knows from `information_schema` of its source database, as the
// parser's StaticSchema wants it. Postgres spells some types differently in DDL and in pg_type;
// the parser only knows the pg_type names.
const PG_TYPE = { boolean: 'bool', smallint: 'int2', integer: 'int4', int: 'int4', bigint: 'int8',
  real: 'float4', 'double precision': 'float8' };
function staticSchema(k) {
  if (k.schema == null) return undefined;
  const tables = Object.entries(k.schema).map(([name, t]) => ({
    name,
    columns: Object.entries(t?.columns ?? {}).map(([col, type]) => ({
      name: col,
      pg_type: PG_TYPE[String(type).toLowerCase()] ?? String(type).toLowerCase(),
    })),
  }));
  return new StaticSchema([{ tag: 'default', schemas: [{ name: 'public', tables }] }]);
}

// ---- the parser ----

// Stored versions are parsed again for every diagnostics call and every tick: without a schema
// the result depends on the text only, so it is kept.
const parsed = new Map();
function parse(content, schema) {
  if (schema == null) {
    if (!parsed.has(content)) {
      if (parsed.size > 100) parsed.clear();
      parsed.set(content, parseNow(content));
    }
    return parsed.get(content);
  }
  return parseNow(content, schema);
}

// As the service calls it: `defaultSchema: 'public'`, throwing on any fatal error. The thrown
// message (all fatal messages joined by ", ") is what the service reports for unparsable rules.
function parseNow(content, schema) {
  try {
    const { config: rules, errors } = SqlSyncRules.fromYaml(content, { defaultSchema: 'public', schema });
    return { rules, errors: errors.map((e) => ({ level: e.type === 'warning' ? 'warning' : 'fatal', message: e.message })) };
  } catch (e) {
    return { rules: null, fatal: e?.message ?? String(e) };
  }
}

const quote = (s) => `"${String(s).replace(/"/g, '""')}"`;

// The service's per-table checks against its source database (the Postgres module's
// getDebugTablesInfo), done against the static schema: a missing table is a warning, a table
// without a replication id a fatal error. Without a schema every table passes.
function tableInfo(rules, k) {
  const known = k.schema ?? null;
  const info = (schema, name, pattern) => {
    const ref = { connectionTag: 'default', schema, name };
    const t = { schema, name, pattern, replication_id: [], data_queries: false, parameter_queries: false, errors: [] };
    try {
      t.data_queries = rules.tableSyncsData(ref);
      t.parameter_queries = rules.tableSyncsParameters(ref);
    } catch {}
    if (known == null) return t;
    const def = schema === 'public' ? known[name] : undefined;
    const qualified = `${quote(schema)}.${quote(name)}`;
    if (def == null) {
      t.errors.push({ level: 'warning', message: `Table ${qualified} not found.` });
    } else {
      t.replication_id = Array.isArray(def.primary_key) ? def.primary_key : ['id'];
      if (t.replication_id.length === 0) {
        t.errors.push({ level: 'fatal', message: noReplicationId(qualified) });
      }
    }
    return t;
  };
  const out = [];
  for (const p of rules.getSourceTables()) {
    if (!p.isWildcard) {
      out.push(info(p.schema, p.tablePattern));
    } else if (known != null && p.schema === 'public') {
      for (const name of Object.keys(known).filter((n) => n.startsWith(p.tablePrefix))) {
        out.push(info(p.schema, name, p.tablePattern));
      }
    }
  }
  return out;
}

// The real message for a table with no primary key and the default replica identity.
const noReplicationId = (qualified) =>
  `No replication id found for ${qualified}. Replica identity: default. Configure a primary key on the table.`;

// Table names a version's initial replication reads: for holds, per-table delays and the
// missing primary key.
function tablesRead(content, k) {
  const { rules } = parse(content);
  if (!rules) return [];
  const names = new Set();
  for (const p of rules.getSourceTables()) {
    if (p.schema !== 'public') continue;
    if (!p.isWildcard) names.add(p.tablePattern);
    else for (const n of Object.keys(k.schema ?? {})) if (n.startsWith(p.tablePrefix)) names.add(n);
  }
  return [...names];
}

function dedup(errors) {
  const seen = new Set();
  return errors.filter((e) => {
    const key = JSON.stringify([e.level, e.message]);
    return seen.has(key) ? false : (seen.add(key), true);
  });
}

// ---- storage ----

let storage;
try {
  storage = existsSync(storagePath) ? JSON.parse(readFileSync(storagePath, 'utf8')) : { versions: [] };
  if (!Array.isArray(storage.versions)) throw new Error('no `versions` array');
} catch (e) {
  log('error', `cannot read ${storagePath}: ${e.message}`);
  process.exit(1);
}

// Written whole, to a temp file renamed over the old one, at every change: a test may read it
// at any moment (it stands for the real service's Postgres storage) and we may be killed.
function save() {
  const tmp = `${storagePath}.tmp`;
  writeFileSync(tmp, JSON.stringify(storage, null, 2) + '\n');
  renameSync(tmp, storagePath);
}

const byState = (s) => storage.versions.find((v) => v.state === s) ?? null;

// The deploying version's progress lives in memory only, so a restart starts its initial
// replication over, as the real service does with an unfinished snapshot.
let deploying = null; // { id, progress_ms, last, held, failed }
const stoppedAt = new Map(); // id -> ms, for STOP -> TERMINATED

function startDeploying(v) {
  deploying = { id: v.id, progress_ms: 0, last: Date.now(), held: null, failed: false };
}

// Like the real updateSyncRules: a deploying version is replaced (STOP) at once; the active one
// serves until the new one has finished its initial replication.
function newVersion(content) {
  for (const v of storage.versions) {
    if (v.state === 'PROCESSING') {
      v.state = 'STOP';
      stoppedAt.set(v.id, Date.now());
    }
  }
  const id = storage.versions.reduce((m, v) => Math.max(m, v.id), 0) + 1;
  const v = { id, state: 'PROCESSING', slot: `powersync_${id}_${randomBytes(2).toString('hex')}`,
    snapshot_done: false, content, errors: [] };
  storage.versions.push(v);
  save();
  log('info', `New sync rules version ${id}`);
  log('info', `Created replication slot ${v.slot}`);
  startDeploying(v);
  return v;
}

// Every 100 ms: advance the deploying version unless a table it reads is held, fail it on a
// table without a primary key, activate it when its time is up; let stopped versions go.
function tick() {
  const now = Date.now();
  const k = knobs();
  let changed = false;
  const v = byState('PROCESSING');
  if (v && deploying?.id !== v.id) startDeploying(v);
  if (v) {
    const d = deploying;
    const dt = now - d.last;
    d.last = now;
    const tables = tablesRead(v.content, k);
    const noPk = tables.filter((t) => Array.isArray(k.schema?.[t]?.primary_key) && k.schema[t].primary_key.length === 0);
    if (noPk.length > 0 && !d.failed) {
      d.failed = true;
      const message = noReplicationId(`${quote('public')}.${quote(noPk[0])}`);
      if (!v.errors.some((e) => e.message === message)) {
        v.errors.push({ level: 'fatal', message });
        changed = true;
      }
      log('error', `[${v.slot}] Replication error ${message}`);
    }
    const held = tables.find((t) => existsSync(join(dir, 'hold', t))) ?? null;
    if (held !== d.held) {
      log('info', held ? `[${v.slot}] Initial replication waits for a lock on table ${held}` : `[${v.slot}] Initial replication resumes`);
      d.held = held;
    }
    if (!d.failed && !held) {
      d.progress_ms += dt;
      const extra = tables.reduce((s, t) => s + Number(k.table_replication_ms?.[t] ?? 0), 0);
      if (d.progress_ms >= Number(k.replication_ms ?? 300) + extra) {
        const old = byState('ACTIVE');
        if (old) {
          old.state = 'STOP';
          stoppedAt.set(old.id, now);
        }
        v.state = 'ACTIVE';
        v.snapshot_done = true;
        deploying = null;
        changed = true;
        log('info', `[${v.slot}] Initial replication done; sync rules version ${v.id} active`);
      }
    }
  }
  // The real replicator drops the slot of a stopped version and marks it TERMINATED soon after.
  for (const s of storage.versions.filter((x) => x.state === 'STOP')) {
    if (!stoppedAt.has(s.id)) stoppedAt.set(s.id, now);
    if (now - stoppedAt.get(s.id) >= 1000) {
      s.state = 'TERMINATED';
      stoppedAt.delete(s.id);
      changed = true;
      log('info', `[${s.slot}] Sync rules version ${s.id} terminated, slot dropped`);
    }
  }
  if (changed) save();
}

// ---- HTTP ----

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

// The shape of the real service's ServiceError answers: `{error: {name, code, status,
// description, details}}`; rulekeeper reads `error.code` and `error.details`.
function fail(res, status, code, description, details, name = 'ServiceError') {
  send(res, status, { error: { name, code, status, description, details } });
}

// One entry of diagnostics (the real getSyncRulesStatus): stored rules are parsed without a
// schema; the table checks, the stored fatal error and the parser's warnings, deduplicated.
function status(v, k, includeContent) {
  if (v == null) return null;
  const { rules, errors, fatal } = parse(v.content);
  const content = includeContent ? v.content : undefined;
  if (!rules) return { content, connections: [], errors: [{ level: 'fatal', message: fatal }] };
  const tables = tableInfo(rules, k);
  return {
    content,
    connections: [{ id: 'default', tag: 'default', slot_name: v.slot, initial_replication_done: v.snapshot_done, tables }],
    errors: dedup([...tables.flatMap((t) => t.errors), ...v.errors, ...errors]),
  };
}

function current(v, k) {
  const { rules, fatal } = parse(v.content);
  const base = { id: v.id, slot_name: v.slot, content: v.content };
  if (!rules) return { ...base, valid: false, errors: [fatal] };
  let bucket_definitions, data_tables;
  try {
    bucket_definitions = rules.debugRepresentation();
    data_tables = rules.debugGetOutputTables();
  } catch {}
  return { ...base, valid: true, bucket_definitions, source_tables: tableInfo(rules, k), data_tables };
}

function authorized(req) {
  if (tokens.length === 0) return 'Authentication disabled';
  const m = /^(Token|Bearer) (\S+)$/.exec(req.headers.authorization ?? '');
  if (!m) return 'Authentication required';
  return tokens.includes(m[2]) ? null : 'Authentication failed';
}

function jsonBody(res, raw) {
  try {
    const v = raw.trim() === '' ? {} : JSON.parse(raw);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch {}
  fail(res, 400, 'PSYNC_S2001', 'Validation failed', 'the body is not a JSON object', 'ValidationError');
  return null;
}

const routes = {
  'POST /api/admin/v1/validate': (req, res, raw) => {
    const body = jsonBody(res, raw);
    if (!body) return;
    if (typeof body.sync_rules !== 'string') {
      return fail(res, 400, 'PSYNC_S2001', 'Validation failed', '`sync_rules` must be a string', 'ValidationError');
    }
    // Like the real validate: the candidate against the source schema, as a version with no slot.
    const k = knobs();
    const { rules, errors, fatal } = parse(body.sync_rules, staticSchema(k));
    if (!rules) return send(res, 200, { data: { connections: [], errors: [{ level: 'fatal', message: fatal }] } });
    const tables = tableInfo(rules, k);
    send(res, 200, { data: {
      connections: [{ id: 'default', tag: 'default', slot_name: '', initial_replication_done: false, tables }],
      errors: dedup([...tables.flatMap((t) => t.errors), ...errors]),
    } });
  },
  'POST /api/admin/v1/diagnostics': (req, res, raw) => {
    const body = jsonBody(res, raw);
    if (!body) return;
    const k = knobs();
    const include = body.sync_rules_content === true;
    send(res, 200, { data: {
      connections: [{ id: 'default', connected: true, errors: [] }],
      active_sync_rules: status(byState('ACTIVE'), k, include),
      deploying_sync_rules: status(byState('PROCESSING'), k, include),
    } });
  },
  'POST /api/sync-rules/v1/deploy': (req, res, raw) => {
    if (fileMode) {
      return fail(res, 422, 'PSYNC_S4105', 'Sync config API disabled', 'Update sync config in the service configuration');
    }
    let content = raw;
    if (/json/i.test(req.headers['content-type'] ?? '')) {
      const body = jsonBody(res, raw);
      if (!body) return;
      content = String(body.content ?? '');
    }
    // No schema here, as in the real deploy: only what the parser alone rejects is refused.
    const { rules, fatal } = parse(content);
    if (!rules) return fail(res, 422, 'PSYNC_R0001', 'Sync config parsing failed', fatal);
    const v = newVersion(content);
    send(res, 200, { data: { slot_name: v.slot } });
  },
  'GET /api/sync-rules/v1/current': (req, res) => {
    const active = byState('ACTIVE');
    if (!active) return fail(res, 422, 'PSYNC_S4104', 'No active sync rules');
    const k = knobs();
    const next = byState('PROCESSING');
    send(res, 200, { data: { current: current(active, k), next: next ? current(next, k) : null } });
  },
};

function probe(res) {
  send(res, 200, { ready: true, started: true, touched_at: new Date().toISOString() });
}

const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    try {
      if (['/probes/liveness', '/probes/startup', '/probes/readiness'].includes(path) && ['GET', 'HEAD'].includes(req.method)) {
        return probe(res);
      }
      const route = routes[`${req.method} ${path}`];
      if (!route) {
        return fail(res, 404, 'PSYNC_S2002', 'The path does not exist on this server',
          `The path ${JSON.stringify(path)} does not exist on this server`, 'RouteNotFound');
      }
      const refused = authorized(req);
      if (refused) return fail(res, 401, 'PSYNC_S2101', 'Authorization failed', refused, 'AuthorizationError');
      route(req, res, Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      log('error', `Request failed: ${e.stack ?? e}`);
      if (!res.headersSent) fail(res, 500, 'PSYNC_S2001', 'Something went wrong', e.message, 'InternalServerError');
    }
  });
});

// psctl stops us with SIGTERM and waits; storage is already on disk.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    log('info', `${sig} received, stopping`);
    server.close();
    process.exit(0);
  });
}

server.on('error', (e) => {
  log('error', `cannot listen on 127.0.0.1:${port}: ${e.message}`);
  process.exit(1);
});

// ---- start ----

log('info', `PowerSync stand-in (for rulekeeper's tests; NOT the PowerSync Service) starting, config ${configPath}`);
server.listen(port, '127.0.0.1', () => log('info', `Listening on 127.0.0.1:${port}`));

let fatalAtStart = null;
let createdAtStart = false;
if (fileMode) {
  // The real service reads its rules file once, here, and never again.
  let content;
  try {
    content = syncBlock.content != null ? String(syncBlock.content) : readFileSync(resolve(dir, String(syncBlock.path)), 'utf8');
  } catch (e) {
    fatalAtStart = e.message;
  }
  if (fatalAtStart == null) {
    const { rules, fatal } = parse(content);
    if (!rules) {
      fatalAtStart = fatal;
    } else {
      // Compared with what is deploying, else with what is active: equal is free.
      const newest = byState('PROCESSING') ?? byState('ACTIVE');
      if (newest && newest.content.trim() === content.trim()) {
        log('info', `Sync rules unchanged (version ${newest.id})`);
      } else {
        newVersion(content);
        createdAtStart = true;
      }
    }
  }
} else {
  log('info', 'No sync_config in the config: rules are deployed through the API');
}

if (fatalAtStart != null) {
  // Measured on 1.25.0: probes answer 200 for about a second, then the process exits 1. Nothing
  // is stored, so a restart on the old file resumes the old version on its old slot.
  setTimeout(() => {
    log('error', `Fatal replication error ${fatalAtStart}`);
    process.exit(1);
  }, 1000);
} else {
  const v = byState('PROCESSING');
  if (v && !createdAtStart) {
    log('info', `[${v.slot}] Resuming initial replication of version ${v.id}`);
    startDeploying(v);
  }
  setInterval(tick, 100);
}
