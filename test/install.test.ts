import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import semver from 'semver';

const REPO = new URL('..', import.meta.url).pathname;
const run = promisify(execFile);

interface LockedPackage {
  version?: string;
  dev?: boolean;
  optional?: boolean;
  os?: string[];
  cpu?: string[];
  engines?: { node?: string };
  hasInstallScript?: boolean;
}
interface PackageJson {
  engines: { node: string };
  allowScripts?: Record<string, boolean>;
}

async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(join(REPO, file), 'utf8')) as T;
}

function lockedPackages(lock: { packages: Record<string, LockedPackage> }): [string, LockedPackage][] {
  return Object.entries(lock.packages)
    .filter(([path]) => path !== '')
    .map(([path, entry]) => [path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length), entry]);
}

test('every Node version melo declares satisfies every runtime dependency (no EBADENGINE on npm ci)', async () => {
  const pkg = await readJson<PackageJson>('package.json');
  const lock = await readJson<{ packages: Record<string, LockedPackage> }>('package-lock.json');
  const wrong: string[] = [];
  for (const [name, entry] of lockedPackages(lock)) {
    const range = entry.engines?.node;
    if (!range || entry.dev) continue;
    // Prebuilt binaries for other platforms (sharp's @img/*) are never installed here or anywhere else.
    if (entry.optional && (entry.os || entry.cpu)) continue;
    if (!semver.subset(pkg.engines.node, range)) wrong.push(`${name}@${entry.version} needs node ${range}`);
  }
  assert.deepEqual(wrong, [], `package.json declares node ${pkg.engines.node}`);
  assert.ok(
    semver.satisfies(process.version, pkg.engines.node),
    `this Node ${process.version} is not supported`,
  );
});

test('every dependency with an install script has a reviewed allowScripts entry (npm ci prints no install-scripts notice)', async () => {
  const pkg = await readJson<PackageJson>('package.json');
  const lock = await readJson<{ packages: Record<string, LockedPackage> }>('package-lock.json');
  const withScripts = lockedPackages(lock)
    .filter(([, entry]) => entry.hasInstallScript)
    .map(([name]) => name)
    .sort();
  assert.deepEqual(Object.keys(pkg.allowScripts ?? {}).sort(), withScripts);
  // onnxruntime-node's script downloads CUDA providers from a host outside the npm registry: denied, as
  // the CPU library ships inside the package (README, "Install").
  assert.equal(pkg.allowScripts?.['onnxruntime-node'], false);
});

test('npm and biome print no warning about melo configuration', async () => {
  const npm = await run('npm', ['pkg', 'get', 'name'], { cwd: REPO });
  assert.equal(npm.stdout.trim(), '"melo"');
  assert.equal(npm.stderr, '');
  // `npm run` adds nothing of its own either: the melo script runs the command.
  const script = await run('npm', ['run', 'melo', '--', '--version'], { cwd: REPO });
  assert.match(script.stdout, /\n\d+\.\d+\.\d+\n$/);
  assert.equal(script.stderr, '');
  const biome = await run(
    process.execPath,
    [join(REPO, 'node_modules', '@biomejs', 'biome', 'bin', 'biome'), 'format', 'test/helpers/cli.ts'],
    { cwd: REPO },
  );
  assert.doesNotMatch(`${biome.stdout}${biome.stderr}`, /deprecat/i);
});
