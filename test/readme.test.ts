import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

/**
 * The README's "First steps" run as written: every command of the sh blocks between the
 * `readme-test:start` and `readme-test:end` markers, in order, from a directory laid out like the
 * repository (models/ and ../shared/data), after a short demo of the two tasks they use. Two changes
 * only: `npx melo` is this repository's bin/melo.js, and port 8080 is a free port.
 */
const REPO = new URL('..', import.meta.url).pathname;
const SHARED = resolve(REPO, '..', 'shared');
const BIN = join(REPO, 'bin', 'melo.js');
const exec = promisify(execFile);
let root = '';
let work = '';
let server: ChildProcess | undefined;

export function readmeCommands(readme: string): string[] {
  const start = readme.indexOf('<!-- readme-test:start -->');
  const end = readme.indexOf('<!-- readme-test:end -->');
  assert.ok(start >= 0 && end > start, 'the README marks its tested section');
  const blocks = [...readme.slice(start, end).matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1]!);
  return blocks.flatMap((block) =>
    block
      .replace(/\\\n\s*/g, '')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && !line.startsWith('#')),
  );
}

async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((done) => probe.listen(0, '127.0.0.1', done));
  const { port } = probe.address() as { port: number };
  await new Promise((done) => probe.close(done));
  return port;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'melo-readme-'));
  work = join(root, 'melo');
  await mkdir(work);
  await symlink(join(REPO, 'models'), join(work, 'models'));
  await symlink(SHARED, join(root, 'shared'));
});
after(async () => {
  server?.kill('SIGTERM');
  await rm(root, { recursive: true, force: true });
});

test("the README's first steps run as written on the shipped backbone and the demo's adapters", {
  timeout: 900_000,
}, async () => {
  const commands = readmeCommands(await readFile(join(REPO, 'README.md'), 'utf8'));
  assert.ok(commands.length >= 6, commands.join('\n'));
  const melo = (args: string[]) =>
    exec(process.execPath, [BIN, ...args], {
      cwd: work,
      maxBuffer: 32 << 20,
      env: { ...process.env, MELO_DATA_DIR: '' },
    });
  // The demo's adapters, small: one epoch on 64 images of the two tasks the README uses.
  await melo([
    'demo',
    '--tasks',
    'breast-ultrasound,blood-cells',
    '--epochs',
    '1',
    '--train-limit',
    '64',
    '--data-dir',
    join(SHARED, 'data', 'medmnist'),
    '--bccd',
    join(SHARED, 'data', 'bccd'),
  ]);
  const port = await freePort();
  const outputs: string[] = [];
  for (const written of commands) {
    const command = written
      .replaceAll('npx melo', `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)}`)
      .replaceAll('8080', String(port));
    if (written.startsWith('npx melo serve')) {
      server = spawn('bash', ['-c', `exec ${command}`], { cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
      // Ready once it answers /readyz with 200 (the adapters load after listen).
      const deadline = Date.now() + 120_000;
      for (;;) {
        const status = await fetch(`http://127.0.0.1:${port}/readyz`).then(
          (r) => r.status,
          () => 0,
        );
        if (status === 200) break;
        assert.ok(Date.now() < deadline, 'melo serve did not become ready');
        await new Promise((done) => setTimeout(done, 200));
      }
      continue;
    }
    const { stdout } = await exec('bash', ['-c', command], { cwd: work, maxBuffer: 32 << 20 }).catch(
      (error: { stderr?: string; code?: number }) =>
        assert.fail(`${written}\nexited ${error.code}: ${error.stderr}`),
    );
    outputs.push(stdout);
  }
  const [head, adapters, , , readyz, tasks, predicted] = outputs;
  // The backbone's own head answers in Fashion-MNIST classes.
  assert.match(head!, /T-shirt\/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot/);
  assert.deepEqual(
    JSON.parse(adapters!)
      .predictions.map((p: { task: string }) => p.task)
      .sort(),
    ['blood-cells', 'breast-ultrasound'],
  );
  assert.equal(JSON.parse(readyz!).status, 'ready');
  assert.deepEqual(
    JSON.parse(tasks!)
      .tasks.map((t: { name: string }) => t.name)
      .sort(),
    ['blood-cells', 'breast-ultrasound'],
  );
  assert.equal(JSON.parse(predicted!).results[0].task, 'blood-cells');
  const report = await readFile(join(work, 'breast-report.html'), 'utf8');
  assert.match(report, /Sensitivity \(positive: malignant\)/);
});
