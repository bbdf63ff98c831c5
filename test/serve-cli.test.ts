import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { Command } from 'commander';
import { registerServeCommand } from '../src/cli/commands/serve.ts';
import { copyFixtureAdapter, FIXTURES } from './serve-fixtures.ts';

const repo = new URL('..', import.meta.url).pathname;
let root = '';

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'melo-serve-cli-'));
  await copyFixtureAdapter(root, 'fixture');
});
after(() => rm(root, { recursive: true, force: true }));

/** `melo serve` as its own process (the command module on a bare program, as main.ts registers it). */
function startServe(args: string[], env: Record<string, string> = {}) {
  const script = [
    "import { Command } from 'commander';",
    "import { registerServeCommand } from './src/cli/commands/serve.ts';",
    "const program = new Command('melo');",
    'registerServeCommand(program);',
    "await program.parseAsync(process.argv.slice(1), { from: 'user' });",
  ].join('\n');
  return spawn(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '--eval', script, 'serve', ...args],
    {
      cwd: repo,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
}

test('melo serve: listens on loopback, takes the token from MELO_TOKEN, logs JSON lines, stops on SIGTERM', async () => {
  const child = startServe(
    [
      '--backbone',
      join(FIXTURES, 'hf'),
      '--adapters',
      root,
      '--port',
      '0',
      '--threads',
      '1',
      '--max-wait-ms',
      '1',
    ],
    { MELO_TOKEN: 'from-env' },
  );
  const lines: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += String(chunk);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      lines.push(entry);
      const match = /^Server listening at (http:\/\/[\d.]+:\d+)$/.exec(String(entry.msg));
      if (match) resolve(match[1]!);
    });
    void exited.then((code) => reject(new Error(`exited with ${code}: ${stderr}`)));
  });
  try {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await fetch(`${url}/healthz`)).status, 200);
    assert.equal((await fetch(`${url}/v1/tasks`)).status, 401);
    const tasks = await fetch(`${url}/v1/tasks`, { headers: { authorization: 'Bearer from-env' } });
    assert.equal(tasks.status, 200);
    assert.deepEqual(
      ((await tasks.json()) as { tasks: { name: string }[] }).tasks.map((task) => task.name),
      ['fixture'],
    );
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exited, 0, stderr);
  const requests = lines.filter((line) => line.msg === 'request');
  assert.deepEqual(
    requests.map((line) => [line.route, line.status]),
    [
      ['/healthz', 200],
      ['/v1/tasks', 401],
      ['/v1/tasks', 200],
    ],
  );
  assert.ok(lines.some((line) => line.msg === 'shutting down'));
  assert.ok(!lines.some((line) => JSON.stringify(line).includes('from-env')), 'the token is never logged');
});

test('melo serve: bad options are refused before anything starts', async () => {
  const program = new Command('melo').exitOverride();
  registerServeCommand(program);
  let written = '';
  for (const command of program.commands)
    command.exitOverride().configureOutput({ writeErr: (text) => (written += text), writeOut: () => {} });
  const base = ['serve', '--backbone', join(FIXTURES, 'hf'), '--adapters', root];
  for (const [args, pattern] of [
    [['--port', '70000'], /expected a port 0\.\.65535, got '70000'/],
    [['--max-batch', '0'], /expected a positive integer, got '0'/],
    [['--log-level', 'loud'], /expected one of fatal, error, warn, info, debug, trace, silent/],
  ] as const) {
    written = '';
    await assert.rejects(program.parseAsync([...base, ...args], { from: 'user' }), pattern);
    assert.match(written, pattern);
  }
  await assert.rejects(
    program.parseAsync(['serve', '--backbone', join(FIXTURES, 'hf')], { from: 'user' }),
    /required option '--adapters <dir>' not specified/,
  );
});
