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
import { componentize } from '@bytecodealliance/componentize-js';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync, renameSync, statSync } from 'node:fs';
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

// Wraps ComponentizeJS's splicer (the same module instance componentize.js
// imports) so spliceBindings is answered from `spliceCacheDir` when it can be.
async function cacheSplices() {
  const url = pathToFileURL(join(here, 'node_modules/@bytecodealliance/componentize-js/lib/spidermonkey-embedding-splicer.js'));
  const { splicer } = await import(url.href);
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
      const tmp = `.${process.pid}.tmp`;
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
