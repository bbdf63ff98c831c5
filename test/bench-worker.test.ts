import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { JsonLineWorker } from '../bench/lib/python.ts';

// bench:train and bench:infer time their contenders in turns; each contender is a JsonLineWorker.

/** The process's state letter from /proc (R running, S sleeping, T stopped), or 'gone'. */
async function processState(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return 'gone';
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
}

/** Polls until the process is in one of `states` (signals arrive asynchronously), or says what it was. */
async function waitForState(pid: number, states: readonly string[]): Promise<string> {
  let state = await processState(pid);
  for (let tries = 0; tries < 100 && !states.includes(state); tries++) {
    await sleep(20);
    state = await processState(pid);
  }
  return state;
}

/** Exited: reaped already, or a zombie until Node reaps it. */
const ENDED = ['gone', 'Z'];

const ECHO = `
import { createInterface } from 'node:readline';
console.log(JSON.stringify({ hello: process.pid }));
for await (const line of createInterface({ input: process.stdin })) console.log(JSON.stringify({ echo: JSON.parse(line) }));
console.log(JSON.stringify({ goodbye: true }));
`;

/** Runs `body` with a worker echoing its requests, and its pid; removes the script and the worker after. */
async function withEchoWorker(body: (worker: JsonLineWorker, pid: number) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'melo-worker-'));
  const script = join(dir, 'echo.mjs');
  await writeFile(script, ECHO);
  const worker = JsonLineWorker.start(process.execPath, script, []);
  try {
    await body(worker, worker.pid!);
  } finally {
    worker.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

const LINUX_ONLY = { skip: process.platform === 'linux' ? undefined : 'reads /proc' };

test(
  'a bench worker is stopped between its answers, so that its idle threads cannot run beside the contender being timed, and exits when finished',
  LINUX_ONLY,
  () =>
    withEchoWorker(async (worker, pid) => {
      assert.deepEqual(await worker.read(), { hello: pid });
      assert.equal(await waitForState(pid, ['T']), 'T');
      assert.deepEqual(await worker.request({ round: 1 }), { echo: { round: 1 } });
      assert.equal(await waitForState(pid, ['T']), 'T');
      assert.deepEqual(await worker.request({ round: 2 }), { echo: { round: 2 } });
      assert.deepEqual(await worker.finish(), { goodbye: true });
      assert.ok(ENDED.includes(await waitForState(pid, ENDED)));
    }),
);

test('a stopped bench worker still ends when killed', LINUX_ONLY, () =>
  withEchoWorker(async (worker, pid) => {
    await worker.read();
    assert.equal(await waitForState(pid, ['T']), 'T');
    worker.kill();
    assert.ok(ENDED.includes(await waitForState(pid, ENDED)));
  }),
);
