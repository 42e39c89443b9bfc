// Builds a Workers-style JS worker into a wasi:http/proxy component.
// Usage: node build.mjs <entry.js> <out.wasm>
// The WIT it targets is assembled from the WASI packages jco ships, at the
// WASI version StarlingMonkey speaks (0.2.10).
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

const [entry, out] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node build.mjs <entry.js> <out.wasm>');
  process.exit(2);
}
const witDir = join(dirname(out), 'wit');
if (!existsSync(join(witDir, 'world.wit'))) assembleWit(witDir);
try {
  const { component } = await componentize({ sourcePath: entry, witPath: witDir, worldName: 'worker' });
  writeFileSync(out, component);
} catch (e) {
  console.error(String(e && e.message ? e.message : e));
  process.exit(1);
}
