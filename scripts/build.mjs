// Compiles src/ to dist/ (JavaScript + declarations) for the `melo` command and the library entry.
// Runs as the `prepare` script, so `npm ci` and `npm pack` build it; bin/melo.js runs dist/ only while
// dist/.built is newer than every file in src/ (otherwise it runs the sources through tsx).
// Plain JavaScript so that it needs nothing but Node and the TypeScript compiler.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const started = new Date();
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });

// Worker entry points are plain .mjs files beside the code they load, and WebAssembly binaries are loaded
// from beside their module (src/train/kernels/): copied as they are.
const src = join(root, 'src');
for (const entry of readdirSync(src, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile() || !/\.(mjs|wasm)$/.test(entry.name)) continue;
  const from = join(entry.parentPath, entry.name);
  const to = join(root, 'dist', relative(src, from));
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(from, to);
}
// The stamp carries the time the build started: a source saved during the build makes dist/ stale.
const stamp = join(root, 'dist', '.built');
writeFileSync(stamp, `${started.toISOString()}\n`);
utimesSync(stamp, started, started);
