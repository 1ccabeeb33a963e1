// Offline validator for PowerSync sync config files (sync-rules.yaml / sync streams).
//
// Usage: validate FILE      (or "-" to read standard input)
//
// Parses FILE with PowerSync's own parser, `SqlSyncRules.fromYaml` from the npm package
// `@powersync/service-sync-rules` (pinned in package.json), and prints one line per problem:
//
//   FILE:LINE:COL: fatal: MESSAGE
//   FILE:LINE:COL: warning: MESSAGE
//
// LINE and COL are 1-based (COL counts characters). Exit status: 0 when there is no fatal
// error (warnings alone are fine), 1 when there is at least one fatal error, 2 on a usage
// error (no argument, unreadable file, wrong Node version).
//
// Both `bucket_definitions:` files and `streams:` files are handled by the same entry point:
// fromYaml switches to the sync-streams compiler itself when `config: edition: 3` is set.

import { readFileSync } from 'node:fs';

const USAGE = 'usage: validate FILE   (FILE may be "-" for standard input)';

function usage(message) {
  if (message) process.stderr.write(`validate: ${message}\n`);
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === '-h' || args[0] === '--help')) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
if (args.length !== 1) {
  usage(args.length === 0 ? 'missing FILE argument' : `expected exactly one FILE argument, got ${args.length}`);
}

const nodeMajor = Number(process.versions.node.split('.')[0]);
if (nodeMajor < 21) {
  usage(
    `Node ${process.versions.node} is too old (sync streams need Node >= 21); ` +
      'run `npm ci --prefix contrib/powersync` to install the pinned Node'
  );
}

const fileArg = args[0];
const displayName = fileArg === '-' ? '<stdin>' : fileArg;

let yaml;
try {
  yaml = readFileSync(fileArg === '-' ? 0 : fileArg, 'utf8');
} catch (e) {
  usage(`cannot read ${displayName}: ${e.message}`);
}

let SqlSyncRules;
try {
  ({ SqlSyncRules } = await import('@powersync/service-sync-rules'));
} catch (e) {
  usage(
    `cannot load @powersync/service-sync-rules (${e.message}); ` +
      'run `npm ci --prefix contrib/powersync`'
  );
}

// Offsets of the start of each line, for offset -> line/column.
const lineStarts = [0];
for (let i = 0; i < yaml.length; i++) {
  if (yaml.charCodeAt(i) === 10) lineStarts.push(i + 1);
}

function lineCol(offset) {
  if (typeof offset !== 'number' || !Number.isFinite(offset) || offset < 0) offset = 0;
  if (offset > yaml.length) offset = yaml.length;
  // Binary search for the last line start <= offset.
  let lo = 0;
  let hi = lineStarts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (lineStarts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  // Column in characters (code points), not UTF-16 units.
  const col = [...yaml.slice(lineStarts[lo], offset)].length + 1;
  return [lo + 1, col];
}

// Errors from the JSON schema check (ajv) carry no source location (PowerSync reports them at
// offset 0). Point them at the offending key when it can be found, and add the detail that
// ajv's message leaves out (which property).
let parsedDoc = null;
async function schemaErrorLocation(ajvError) {
  try {
    if (parsedDoc == null) {
      const { parseDocument } = await import('yaml');
      parsedDoc = parseDocument(yaml, { keepSourceTokens: true });
    }
    const path = (ajvError.instancePath ?? '')
      .split('/')
      .slice(1)
      .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    let node = parsedDoc.contents;
    let keyNode = null;
    for (const segment of path) {
      if (node == null || !Array.isArray(node.items)) return null;
      const pair = node.items.find((item) => item?.key != null && String(item.key.value ?? item.key) === segment);
      if (pair) {
        keyNode = pair.key;
        node = pair.value;
      } else if (/^\d+$/.test(segment) && node.items[Number(segment)] !== undefined) {
        keyNode = null;
        node = node.items[Number(segment)];
      } else {
        return null;
      }
    }
    const extra = ajvError.params?.additionalProperty;
    if (extra != null && node != null && Array.isArray(node.items)) {
      const pair = node.items.find((item) => item?.key != null && String(item.key.value ?? item.key) === extra);
      if (pair?.key?.range) return pair.key.range[0];
    }
    if (keyNode?.range) return keyNode.range[0];
    if (node?.range) return node.range[0];
  } catch {
    // Fall back to PowerSync's own location.
  }
  return null;
}

function schemaErrorDetail(ajvError) {
  const parts = [];
  if (ajvError.params?.additionalProperty != null) {
    parts.push(`unknown key '${ajvError.params.additionalProperty}'`);
  } else if (ajvError.params?.missingProperty != null) {
    parts.push(`missing key '${ajvError.params.missingProperty}'`);
  } else if (Array.isArray(ajvError.params?.allowedValues)) {
    parts.push(`allowed: ${ajvError.params.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`);
  }
  parts.push(`at ${ajvError.instancePath || '/'}`);
  return parts.join(', ');
}

function firstLine(message) {
  const text = String(message ?? '').trim();
  const line = text.split('\n')[0].trim();
  // yaml's messages end in " at line N, column M:" followed by a source excerpt; the location
  // is already in our prefix.
  return line.replace(/ at line \d+, column \d+:?$/, '') || text || 'unknown error';
}

let errors;
try {
  ({ errors } = SqlSyncRules.fromYaml(yaml, { defaultSchema: 'public', throwOnError: false }));
} catch (e) {
  // fromYaml with throwOnError: false should not throw; report anything that does as fatal.
  const errs = e?.errors;
  errors = Array.isArray(errs) ? errs : [{ type: 'fatal', message: e?.message ?? String(e), location: { start: 0 } }];
}

let fatal = 0;
let warnings = 0;
const lines = [];
for (const err of errors) {
  const level = err.type === 'warning' ? 'warning' : 'fatal';
  if (level === 'fatal') fatal++;
  else warnings++;
  let offset = err.location?.start ?? 0;
  let message = firstLine(err.message);
  const source = err.source;
  // An ajv error object (JSON schema check): has instancePath/keyword, and is not an Error.
  if (source != null && !(source instanceof Error) && typeof source.keyword === 'string') {
    const located = await schemaErrorLocation(source);
    if (located != null) offset = located;
    message = `${message} (${schemaErrorDetail(source)})`;
  }
  const [line, col] = lineCol(offset);
  lines.push({ offset, text: `${displayName}:${line}:${col}: ${level}: ${message}` });
}
lines.sort((a, b) => a.offset - b.offset);
for (const { text } of lines) process.stdout.write(`${text}\n`);

if (fatal > 0 || warnings > 0) {
  process.stderr.write(`${displayName}: ${fatal} fatal error(s), ${warnings} warning(s)\n`);
}
process.exit(fatal > 0 ? 1 : 0);
