// Builds a Workers-style JS worker into a wasi:http/proxy component.
// Usage: node build.mjs <entry.js> <out.wasm> [<splice cache dir>]
// The WIT it targets is assembled from the WASI packages jco ships, at the
// WASI version StarlingMonkey speaks (0.2.10).
//
// With a splice cache dir, the first and slowest step of ComponentizeJS —
// splicing the world's bindings into the StarlingMonkey engine, about 7 s,
// the same for every worker — is done once and kept there, keyed by the
// SHA-256 of everything it reads (engine, features, WIT files, world name).
import { componentize } from '@bytecodealliance/componentize-js';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync, renameSync, statSync } from 'node:fs';
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
    `package warren:worker;\n\nworld worker {\n  include wasi:http/proxy@${WASI_VERSION};\n}\n`);
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

// Wraps ComponentizeJS's splicer (the same module instance componentize.js
// imports) so spliceBindings is answered from `cacheDir` when it can be.
async function cacheSplices(cacheDir) {
  const url = pathToFileURL(join(here, 'node_modules/@bytecodealliance/componentize-js/lib/spidermonkey-embedding-splicer.js'));
  const { splicer } = await import(url.href);
  const splice = splicer.spliceBindings;
  splicer.spliceBindings = (engine, features, witWorld, witPath, worldName, debug) => {
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

const [entry, out, spliceCache] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node build.mjs <entry.js> <out.wasm>');
  process.exit(2);
}
const witDir = join(dirname(out), 'wit');
if (!existsSync(join(witDir, 'world.wit'))) assembleWit(witDir);
if (spliceCache) await cacheSplices(spliceCache);
try {
  const { component } = await componentize({ sourcePath: entry, witPath: witDir, worldName: 'worker' });
  writeFileSync(out, component);
} catch (e) {
  console.error(String(e && e.message ? e.message : e));
  process.exit(1);
}
