#!/usr/bin/env node
// The `melo` command. Runs the compiled launcher in dist/ (built by `npm ci` through the `prepare`
// script, or `npm run build`) while it is current: dist/.built is stamped with the time its build
// started, so a source file saved since then sends this run to the TypeScript sources through tsx
// instead (slower to start, never stale). An installed package has no src/: it always runs dist/.
import { existsSync, readdirSync, statSync } from 'node:fs';

const root = new URL('../', import.meta.url);
const stamp = new URL('dist/.built', root);
const sources = new URL('src/', root);

function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(`${entry.parentPath}/${entry.name}`).mtimeMs);
  }
  return newest;
}

const built = existsSync(stamp) && (!existsSync(sources) || statSync(stamp).mtimeMs >= newestSource(sources));
let launch;
if (built && process.env.MELO_FROM_SOURCE !== '1') {
  ({ launch } = await import('../dist/cli/launch.js'));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ launch } = await import('../src/cli/launch.ts'));
}
process.exitCode = await launch(process.argv.slice(2));
