import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { LAUNCHER_COMMANDS } from '../src/cli/launch.ts';
import { buildProgram } from '../src/cli/main.ts';
import { createRootProgram } from '../src/cli/root.ts';
import { runCli } from './helpers/cli.ts';

const REPO = new URL('..', import.meta.url).pathname;
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-launch-'));
});
after(() => rm(dir, { recursive: true, force: true }));

test('the launcher lists exactly the commands buildProgram() registers, with their own descriptions', () => {
  const program = buildProgram();
  const registered = Object.fromEntries(
    program.commands.map((command) => [command.name(), command.description()]),
  );
  const launched = Object.fromEntries(
    Object.entries(LAUNCHER_COMMANDS).map(([name, entry]) => [name, entry.summary]),
  );
  assert.deepEqual(launched, registered);
});

test('each launcher entry loads the module that registers that command', async () => {
  for (const [name, entry] of Object.entries(LAUNCHER_COMMANDS)) {
    const program = createRootProgram();
    (await entry.load())(program);
    assert.deepEqual(
      program.commands.map((command) => command.name()),
      [name],
    );
  }
});

test('melo --version prints the version of package.json', async () => {
  const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
  const result = await runCli(['--version']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, `${pkg.version}\n`);
});

/** The file URLs a `melo …` process resolves, recorded by a module resolution hook. */
async function modulesLoadedBy(args: string[], name: string): Promise<string[]> {
  const log = join(dir, `${name}.log`);
  const hooks = join(dir, 'hooks.mjs');
  await writeFile(
    hooks,
    [
      "import { appendFileSync } from 'node:fs';",
      'let log;',
      'export function initialize(data) { log = data.log; }',
      'export async function resolve(specifier, context, next) {',
      '  const resolved = await next(specifier, context);',
      "  appendFileSync(log, resolved.url + '\\n');",
      '  return resolved;',
      '}',
    ].join('\n'),
  );
  const register = join(dir, `${name}-register.mjs`);
  await writeFile(
    register,
    `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)}, { data: { log: ${JSON.stringify(log)} } });\n`,
  );
  const result = await runCli(args, { execArgv: ['--import', register] });
  assert.equal(result.code, 0, result.stderr);
  return (await readFile(log, 'utf8')).trim().split('\n');
}

test('melo --help loads commander and the launcher only, not ONNX Runtime, sharp, fastify or any command', async () => {
  const loaded = await modulesLoadedBy(['--help'], 'help');
  for (const heavy of ['onnxruntime-node', '/sharp/', '/fastify/', '/vega', '/cli/commands/', '/cli/main.'])
    assert.ok(!loaded.some((url) => url.includes(heavy)), `${heavy} loaded:\n${loaded.join('\n')}`);
  assert.ok(loaded.some((url) => url.includes('/commander/')));
  // With a current build (npm ci runs it), the compiled launcher runs, without the TypeScript loader.
  const stamp = join(REPO, 'dist', '.built');
  if (existsSync(stamp) && statSync(stamp).mtimeMs >= (await newestSource())) {
    assert.ok(
      loaded.some((url) => url.endsWith('/dist/cli/launch.js')),
      loaded.join('\n'),
    );
    assert.ok(!loaded.some((url) => url.includes('/tsx/')), loaded.join('\n'));
  }
});

test('melo train --help loads the train command alone; an unknown command goes to the whole program', async () => {
  const loaded = await modulesLoadedBy(['train', '--help'], 'train');
  assert.ok(loaded.some((url) => /\/cli\/commands\/train\.[jt]s$/.test(url)));
  assert.ok(!loaded.some((url) => /\/cli\/commands\/(serve|eval|predict)\.[jt]s$/.test(url)));
  const unknown = await runCli(['tran']);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /unknown command 'tran'.*\(Did you mean train\?\)/s);
});

async function newestSource(): Promise<number> {
  let newest = 0;
  for (const entry of await readdir(join(REPO, 'src'), { recursive: true, withFileTypes: true }))
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  return newest;
}

test('the build copies the files src/ loads at run time beside its modules into dist/ (workers, WebAssembly)', async () => {
  const stamp = join(REPO, 'dist', '.built');
  if (!existsSync(stamp)) return; // not built (npm ci builds it); test/package.test.ts builds and runs it
  const missing: string[] = [];
  for (const entry of await readdir(join(REPO, 'src'), { recursive: true, withFileTypes: true })) {
    // .ts compiles to .js; .wat is the source of a .wasm, not loaded.
    if (!entry.isFile() || /\.(ts|wat)$/.test(entry.name)) continue;
    const relative = join(entry.parentPath, entry.name).slice(join(REPO, 'src').length + 1);
    if (!existsSync(join(REPO, 'dist', relative))) missing.push(relative);
  }
  assert.deepEqual(missing, []);
});
