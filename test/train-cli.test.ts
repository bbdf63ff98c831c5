import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { readCheckpoint } from '../src/train/checkpoint.ts';
import { Random } from '../src/util/random.ts';
import { runCli } from './helpers/cli.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const BIN = new URL('../bin/melo.js', import.meta.url).pathname;
let dir = '';
let data = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-train-cli-'));
  data = join(dir, 'cells');
  // An ImageFolder with train/ and val/: two classes of 40×30 PNGs, bright vs dark blobs.
  const random = new Random(5);
  for (const split of ['train', 'val']) {
    for (const [cls, level] of [
      ['dark', 60],
      ['bright', 190],
    ] as const) {
      await mkdir(join(data, split, cls), { recursive: true });
      for (let i = 0; i < (split === 'train' ? 12 : 4); i++) {
        const pixels = Buffer.alloc(40 * 30 * 3);
        for (let p = 0; p < pixels.length; p++)
          pixels[p] = Math.max(0, Math.min(255, level + Math.round(random.normal() * 30)));
        await sharp(pixels, { raw: { width: 40, height: 30, channels: 3 } })
          .png()
          .toFile(join(data, split, cls, `${i}.png`));
      }
    }
  }
});
after(() => rm(dir, { recursive: true, force: true }));

const common = [
  '--backbone',
  join(FIXTURES, 'hf'),
  '--rank',
  '2',
  '--epochs',
  '3',
  '--batch-size',
  '2',
  '--lr',
  '0.01',
  '--seed',
  '3',
  '--threads',
  '1',
];
const named = ['--task-name', 'cells'];

test('melo train on an ImageFolder prints a JSON summary and writes a usable adapter', async () => {
  const out = join(dir, 'run');
  const result = await runCli(['train', ...common, '--data', data, '--out', out, '--json', '--dtype', 'f16']);
  assert.equal(result.code, 0, result.stderr);
  const summary = JSON.parse(result.stdout);
  assert.equal(summary.task, 'run');
  assert.equal(summary.epochs, 3);
  assert.equal(summary.loraParameters, 512);
  assert.equal(summary.trainableParameters, 512 + 66);
  assert.equal(summary.skippedImages, 0);
  assert.ok(summary.adapterBytes > 0 && summary.adapterBytes < 4000);
  assert.match(result.stderr, /epoch 3 train loss/);
  const predicted = await runCli([
    'predict',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--adapter',
    out,
    '--json',
    join(data, 'val', 'bright', '0.png'),
  ]);
  assert.equal(predicted.code, 0, predicted.stderr);
  const prediction = JSON.parse(predicted.stdout).predictions[0];
  assert.deepEqual(prediction.labels, ['bright', 'dark']);
  assert.equal(prediction.task, 'run');
});

test('Ctrl-C writes a checkpoint; --resume ends with the same adapter as an uninterrupted run', async () => {
  const straight = join(dir, 'straight');
  const full = await runCli(['train', ...common, ...named, '--data', data, '--out', straight]);
  assert.equal(full.code, 0, full.stderr);

  const interrupted = join(dir, 'interrupted');
  const child = spawn(
    process.execPath,
    [BIN, 'train', ...common, ...named, '--data', data, '--out', interrupted],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (/training \d+ parameters/.test(stderr) && !child.killed) child.kill('SIGINT');
  });
  const code = await exited;
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted at step \d+; checkpoint written/);
  assert.match(stderr, /resume with: melo train/);
  const { state } = await readCheckpoint(interrupted);
  assert.ok(state.step >= 1 && state.step < 36, `stopped at step ${state.step}`);

  const resumed = await runCli([
    'train',
    ...common,
    ...named,
    '--data',
    data,
    '--out',
    interrupted,
    '--resume',
    interrupted,
  ]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, /resumed at step/);
  assert.deepEqual(
    await readFile(join(interrupted, 'adapter_model.safetensors')),
    await readFile(join(straight, 'adapter_model.safetensors')),
  );
});

test('bad training input fails before the first step with one line', async () => {
  await mkdir(join(dir, 'broken', 'a'), { recursive: true });
  await mkdir(join(dir, 'broken', 'b'), { recursive: true });
  await sharp({ create: { width: 20, height: 20, channels: 3, background: '#808080' } })
    .png()
    .toFile(join(dir, 'broken', 'a', 'ok.png'));
  await sharp({ create: { width: 20, height: 20, channels: 3, background: '#102030' } })
    .png()
    .toFile(join(dir, 'broken', 'b', 'ok.png'));
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(dir, 'broken', 'b', 'bad.png'), 'not a png');
  const result = await runCli([
    'train',
    ...common,
    '--data',
    join(dir, 'broken'),
    '--val',
    'none',
    '--out',
    join(dir, 'broken-out'),
  ]);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /^melo: error: .*bad item.*bad\.png: undecodable/m);
  assert.match(result.stderr, /--on-bad-image skip/);
  const skipped = await runCli([
    'train',
    ...common,
    '--epochs',
    '1',
    '--data',
    join(dir, 'broken'),
    '--val',
    'none',
    '--on-bad-image',
    'skip',
    '--json',
    '--out',
    join(dir, 'broken-out'),
  ]);
  assert.equal(skipped.code, 0, skipped.stderr);
  assert.match(skipped.stderr, /skipped .*bad\.png/);
});
