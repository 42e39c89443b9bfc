// Builds a Workers-style JS worker into a wasi:http/proxy component.
// Usage: node build.mjs <entry.js> <out.wasm> [<splice cache dir>]
//    or: node build.mjs --serve <idle ms>
// The second form is a build server: one JSON request per line on stdin
// ({"id", "entry", "out", "splice"}), one JSON answer per line on fd 3
// ({"id", "ok", "error"}), one build at a time, exiting after <idle ms>
// without a request. A warm server skips node's start and the compilation of
// ComponentizeJS's own wasm (splicer, component tools): ~2.5 s per build
// instead of ~9 s. The worker's top-level code runs only in the Wizer process
// each build spawns, never in this one.
// The WIT it targets is assembled from the WASI packages jco ships, at the
// WASI version StarlingMonkey speaks (0.2.10).
//
// With a splice cache dir, the first and slowest step of ComponentizeJS —
// splicing the world's bindings into the StarlingMonkey engine, about 7 s,
// the same for every worker — is done once and kept there, keyed by the
// SHA-256 of everything it reads (engine, features, WIT files, world name).
// So are its two steps after Wizer (stubWasi, componentNew), which differ
// between workers only in the snapshot they carry through: see
// keepSnapshotStep.
import { componentize } from '@bytecodealliance/componentize-js';
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync, renameSync, rmSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const WASI_VERSION = '0.2.10';
const here = dirname(fileURLToPath(import.meta.url));

function assembleWit(dir) {
  const src = join(here, 'node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12');
  for (const pkg of readdirSync(src)) {
    const out = join(dir, 'deps', pkg);
    mkdirSync(out, { recursive: true });
    for (const file of readdirSync(join(src, pkg))) {
      const text = readFileSync(join(src, pkg, file), 'utf8').replaceAll('@0.2.12', `@${WASI_VERSION}`);
      writeFileSync(join(out, file), text);
    }
  }
  writeFileSync(join(dir, 'world.wit'),
    `package warren:worker;\n\nworld worker {\n  include wasi:http/proxy@${WASI_VERSION};\n` +
    // The generated entry reads each request's secrets from its environment.
    `  import wasi:cli/environment@${WASI_VERSION};\n}\n`);
}

// Every file under `dir`, sorted, into the hash.
function hashTree(h, dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) {
      h.update(`dir ${name}\0`);
      hashTree(h, p);
    } else {
      const bytes = readFileSync(p);
      h.update(`file ${name} ${bytes.length}\0`);
      h.update(bytes);
    }
  }
}

// Where spliced engines are kept for the build under way (none: not kept).
let spliceCacheDir = null;
// ComponentizeJS's splicer module (the instance componentize.js imports).
let splicer = null;

// Wraps ComponentizeJS's splicer (the same module instance componentize.js
// imports) so spliceBindings is answered from `spliceCacheDir` when it can be.
async function cacheSplices() {
  const url = pathToFileURL(join(here, 'node_modules/@bytecodealliance/componentize-js/lib/spidermonkey-embedding-splicer.js'));
  ({ splicer } = await import(url.href));
  const splice = splicer.spliceBindings;
  splicer.spliceBindings = (engine, features, witWorld, witPath, worldName, debug) => {
    const cacheDir = spliceCacheDir;
    if (!cacheDir) return splice(engine, features, witWorld, witPath, worldName, debug);
    const h = createHash('sha256');
    h.update('warren-splice-v1\0');
    h.update(engine);
    h.update(`\0${JSON.stringify([features, witWorld ?? null, worldName ?? null, debug])}\0`);
    hashTree(h, witPath);
    const key = h.digest('hex');
    const wasmPath = join(cacheDir, `${key}.wasm`);
    const metaPath = join(cacheDir, `${key}.json`);
    if (existsSync(wasmPath) && existsSync(metaPath)) {
      try {
        const meta = JSON.parse(readFileSync(metaPath, 'utf8'));
        return { ...meta, wasm: new Uint8Array(readFileSync(wasmPath)) };
      } catch {
        // A damaged entry is spliced again and replaced below.
      }
    }
    const result = splice(engine, features, witWorld, witPath, worldName, debug);
    try {
      mkdirSync(cacheDir, { recursive: true });
      const { wasm, ...meta } = result;
      const tmp = `.${randomUUID()}.tmp`;
      writeFileSync(wasmPath + tmp, wasm);
      renameSync(wasmPath + tmp, wasmPath);
      writeFileSync(metaPath + tmp, JSON.stringify(meta));
      renameSync(metaPath + tmp, metaPath);
    } catch {
      // Best effort: without the cache the next build splices again.
    }
    return result;
  };
}

// A module's (or component's) sections from `from` to `to`: `{ id, start,
// body, end }` (`start` at the id byte). Throws on a truncated binary.
function sections(bin, from = 0, to = bin.length) {
  const leb = (p) => {
    let value = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (p >= to) throw new Error('truncated binary');
      const b = bin[p++];
      value += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return [value, p];
    }
    throw new Error('bad LEB128');
  };
  if (to - from < 8) throw new Error('truncated binary');
  const out = [];
  let p = from + 8;
  while (p < to) {
    const [size, body] = leb(p + 1);
    if (body + size > to) throw new Error('truncated section');
    out.push({ id: bin[p], start: p, body, end: body + size });
    p = body + size;
  }
  return out;
}

const lebBytes = (n) => {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Uint8Array.from(out);
};

// The sections a Wizer snapshot writes: globals (6) and data (11). Every JS
// worker on one engine differs from another only there.
const SNAPSHOT = [6, 11];
const bytesOf = (bin, s) => bin.subarray(s.start, s.end);
const sameBytes = (a, b) => a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;

// The tooling that runs the kept steps (the pinned packages and this file),
// part of every kept step's key: an upgrade runs them again.
const TOOLING = createHash('sha256')
  .update(readFileSync(join(here, 'package-lock.json')))
  .update(readFileSync(fileURLToPath(import.meta.url)))
  .digest('hex');

// Entries kept per step; older ones (by modification time) are removed.
const KEPT_PER_STEP = 4;

// A Wizer snapshot (a core module): its sections, and the hash of everything
// in it but the snapshot.
function snapshotOf(bin) {
  const secs = sections(bin);
  const h = createHash('sha256');
  for (const s of secs) {
    if (SNAPSHOT.includes(s.id)) {
      h.update(`snapshot section ${s.id}\0`);
    } else {
      h.update(`section ${s.end - s.start}\0`);
      h.update(bytesOf(bin, s));
    }
  }
  const of = (id) => secs.filter((s) => s.id === id).map((s) => bytesOf(bin, s));
  return { secs, shape: h.digest('hex'), of };
}

// Whether the module `bin[secs]` holds `snap`'s snapshot sections unchanged.
function holds(bin, secs, snap) {
  return SNAPSHOT.every((id) => {
    const ours = secs.filter((s) => s.id === id);
    const theirs = snap.of(id);
    return ours.length === theirs.length && ours.length <= 1 &&
      (ours.length === 0 || sameBytes(bytesOf(bin, ours[0]), theirs[0]));
  });
}

// Whether the module `bin[secs]` holds empty snapshot sections (at least one):
// a kept entry's placeholder.
function blank(bin, secs) {
  const snap = secs.filter((s) => SNAPSHOT.includes(s.id));
  return snap.length > 0 && snap.every((s) => s.end - s.start === 2 && bin[s.start + 1] === 0);
}

// The one top-level core module section (`{ s, at }`) of component `bin`
// whose sections pass `test`; throws unless exactly one does.
function nestedModule(bin, test) {
  const found = sections(bin)
    .map((s, at) => ({ s, at }))
    .filter(({ s }) => s.id === 1 && test(sections(bin, s.body, s.end)));
  if (found.length !== 1) throw new Error('not one such module');
  return found[0];
}

// The module `bin[secs]` (`header` its first 8 bytes) with `snap`'s snapshot
// sections in place of its own.
function withSnapshot(bin, header, secs, snap) {
  for (const id of SNAPSHOT) {
    const n = secs.filter((s) => s.id === id).length;
    if (n > 1 || n !== snap.of(id).length) throw new Error('another snapshot layout');
  }
  const parts = [header];
  for (const s of secs) parts.push(SNAPSHOT.includes(s.id) ? snap.of(s.id)[0] : bytesOf(bin, s));
  return Buffer.concat(parts);
}

// The two steps ComponentizeJS runs on a worker's Wizer snapshot — stubWasi
// (the WASI imports the world lacks become traps) and componentNew (the
// module wrapped as a component) — are the same for every worker on one
// engine except for the snapshot, which both carry through unchanged (each
// result is checked before it is kept). So each runs once per engine: a kept
// result answers the next worker with that worker's own globals and data
// swapped in (~0.8 s of a ~1.2 s build). Entries are kept in the splice cache,
// with empty sections where the snapshot was.
//
// `step(input, ...rest)` → module or component; `key` names the step and its
// other arguments; `nested` whether the result is a component holding the
// input as one of its core modules (the one whose snapshot sections are the
// input's, or empty in an entry; else it is the module itself).
function keepSnapshotStep(object, name, nested, key) {
  const run = object[name].bind(object);
  object[name] = (input, ...rest) => {
    const cacheDir = spliceCacheDir;
    let snap = null;
    try {
      snap = cacheDir && snapshotOf(input);
    } catch {
      // Not a module we can read: the step runs as it is.
    }
    if (!snap) return run(input, ...rest);
    let path;
    try {
      const h = createHash('sha256');
      h.update(`warren-${name}-v1\0${TOOLING}\0${snap.shape}\0`);
      key(h, ...rest);
      path = join(cacheDir, `${name}-${h.digest('hex')}.wasm`);
    } catch {
      return run(input, ...rest);
    }
    // `result` with snapshot `s` in the module `test` picks (nested) or
    // in place of its own (not nested).
    const swapped = (result, test, s) => {
      if (!nested) {
        const secs = sections(result);
        if (!test(secs)) throw new Error('not the module');
        return withSnapshot(result, result.subarray(0, 8), secs, s);
      }
      const { s: m } = nestedModule(result, test);
      const mod = withSnapshot(result, result.subarray(m.body, m.body + 8), sections(result, m.body, m.end), s);
      return Buffer.concat([result.subarray(0, m.start), Uint8Array.of(1), lebBytes(mod.length), mod, result.subarray(m.end)]);
    };
    if (existsSync(path)) {
      try {
        const kept = readFileSync(path);
        return swapped(kept, (secs) => blank(kept, secs), snap);
      } catch {
        // A damaged entry: the step runs again and replaces it below.
      }
    }
    const result = run(input, ...rest);
    try {
      if (result instanceof Uint8Array) {
        // Kept without this worker's snapshot: empty sections hold its place.
        const empty = { of: (id) => snap.of(id).map(() => Uint8Array.of(id, 0)) };
        const entry = swapped(result, (secs) => holds(result, secs, snap), empty);
        mkdirSync(cacheDir, { recursive: true });
        const tmp = `${path}.${randomUUID()}.tmp`;
        writeFileSync(tmp, entry);
        renameSync(tmp, path);
        forgetOldEntries(cacheDir, name);
      }
    } catch {
      // Best effort: without the entry the next build runs the step again.
    }
    return result;
  };
}

// Removes all but the newest KEPT_PER_STEP entries of step `name`.
function forgetOldEntries(cacheDir, name) {
  const entries = readdirSync(cacheDir)
    .filter((f) => f.startsWith(`${name}-`) && f.endsWith('.wasm'))
    .map((f) => [f, statSync(join(cacheDir, f)).mtimeMs])
    .sort((a, b) => b[1] - a[1]);
  for (const [f] of entries.slice(KEPT_PER_STEP)) {
    rmSync(join(cacheDir, f), { force: true });
  }
}

async function cacheSnapshotSteps() {
  keepSnapshotStep(splicer, 'stubWasi', false, (h, features, witWorld, witPath, worldName) => {
    h.update(`${JSON.stringify([features, witWorld ?? null, worldName ?? null])}\0`);
    if (witPath) hashTree(h, witPath);
  });
  const url = pathToFileURL(join(here, 'node_modules/@bytecodealliance/jco-transpile/vendor/wasm-tools.js'));
  const { tools } = await import(url.href);
  keepSnapshotStep(tools, 'componentNew', true, (h, adapters) => {
    for (const [adapterName, bytes] of adapters ?? []) {
      h.update(`adapter ${adapterName} ${bytes.length}\0`);
      h.update(bytes);
    }
  });
}

// Builds `entry` (in its own folder, the worker's modules beside it) into `out`.
async function build(entry, out, spliceCache) {
  const witDir = join(dirname(out), 'wit');
  if (!existsSync(join(witDir, 'world.wit'))) assembleWit(witDir);
  spliceCacheDir = spliceCache || null;
  // ComponentizeJS's scratch files (the worker's snapshot among them) go in
  // this build's own folder, which the runtime removes even when it kills
  // the build.
  const scratch = join(dirname(out), 'tmp');
  mkdirSync(scratch, { recursive: true, mode: 0o700 });
  process.env.TMPDIR = scratch;
  process.chdir(dirname(entry));
  const { component } = await componentize({ sourcePath: entry, witPath: witDir, worldName: 'worker' });
  writeFileSync(out, component);
}

const message = (e) => String(e && e.message ? e.message : e);

await cacheSplices();
await cacheSnapshotSteps();
if (process.argv[2] === '--serve') {
  const idleMs = Number(process.argv[3]) || 120000;
  const answers = createWriteStream(null, { fd: 3 });
  let idle = setTimeout(() => process.exit(0), idleMs);
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    clearTimeout(idle);
    let request;
    try {
      request = JSON.parse(line);
    } catch {
      answers.write(JSON.stringify({ id: null, ok: false, error: 'bad request line' }) + '\n');
      continue;
    }
    let answer;
    try {
      await build(request.entry, request.out, request.splice);
      answer = { id: request.id, ok: true };
    } catch (e) {
      answer = { id: request.id, ok: false, error: message(e) };
    }
    answers.write(JSON.stringify(answer) + '\n');
    idle = setTimeout(() => process.exit(0), idleMs);
  }
  process.exit(0);
}

const [entry, out, spliceCache] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node build.mjs <entry.js> <out.wasm> [<splice cache dir>] | --serve <idle ms>');
  process.exit(2);
}
try {
  await build(entry, out, spliceCache);
} catch (e) {
  console.error(message(e));
  process.exit(1);
}
