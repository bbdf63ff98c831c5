import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { serveLogFormat } from '../src/cli/commands/serve.ts';
import { runCli } from './helpers/cli.ts';
import { copyFixtureAdapter, FIXTURES } from './serve-fixtures.ts';

const BIN = new URL('../bin/melo.js', import.meta.url).pathname;
let root = '';
let busy: Server;
let busyPort = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'melo-serve-start-'));
  await copyFixtureAdapter(root, 'fixture');
  busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  busyPort = (busy.address() as { port: number }).port;
});
after(async () => {
  await new Promise((resolve) => busy.close(resolve));
  await rm(root, { recursive: true, force: true });
});

test('melo serve on a port in use exits 1 with one line naming the address and what to do', async () => {
  const result = await runCli(
    [
      'serve',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--adapters',
      root,
      '--port',
      String(busyPort),
      '--threads',
      '1',
    ],
    { timeoutMs: 60_000 },
  );
  // Killed by the helper's timeout (a process that never exits) would give a signal, not 1.
  assert.equal(result.code, 1, result.stderr);
  assert.equal(
    result.stderr,
    `melo: error: cannot listen on 127.0.0.1:${busyPort}: the port is in use (choose another --port, or 0 for any free port)\n`,
  );
});

test('server logs: pretty on a terminal, JSON otherwise, --log-format decides when given', () => {
  assert.equal(serveLogFormat(undefined, true), 'pretty');
  assert.equal(serveLogFormat(undefined, false), 'json');
  assert.equal(serveLogFormat('json', true), 'json');
  assert.equal(serveLogFormat('pretty', false), 'pretty');
});

test('melo serve --log-format pretty writes readable lines, not JSON', async () => {
  const child = spawn(
    process.execPath,
    [
      BIN,
      'serve',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--adapters',
      root,
      '--port',
      '0',
      '--threads',
      '1',
      '--log-format',
      'pretty',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (text) => {
      if (text.includes('Server listening at')) resolve(text);
    });
    void exited.then((code) => reject(new Error(`exited with ${code}`)));
  });
  // The signal handlers are installed once listen() has returned: ask the server something first.
  const url = /(http:\/\/127\.0\.0\.1:\d+)/.exec(line)![1]!;
  assert.deepEqual(await (await fetch(`${url}/readyz`)).json(), {
    status: 'ready',
    tasks: 1,
    loading: false,
  });
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.throws(() => JSON.parse(line));
  // pino-pretty's layout: [time] LEVEL: message (colours only on a terminal).
  assert.match(line, /^\[\d\d:\d\d:\d\d(\.\d+)?\] INFO.*: Server listening at http:\/\/127\.0\.0\.1:\d+$/);
});
