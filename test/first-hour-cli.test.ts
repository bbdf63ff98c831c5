import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { runCli } from './helpers/cli.ts';

const BACKBONE = new URL('./fixtures/vit/hf', import.meta.url).pathname;
let dir = '';
let flat = '';
let split = '';

/** A 24×24 PNG whose brightness tells its class (a fixed texture, so that no image is constant). */
async function image(path: string, level: number): Promise<void> {
  const pixels = Buffer.alloc(24 * 24 * 3);
  for (let p = 0; p < pixels.length; p++) pixels[p] = level + ((p * 37) % 21) - 10;
  await sharp(pixels, { raw: { width: 24, height: 24, channels: 3 } })
    .png()
    .toFile(path);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-first-hour-'));
  // A flat ImageFolder (no train/val/test) and one with train/ and test/.
  flat = join(dir, 'flat');
  split = join(dir, 'split');
  for (const [label, level] of [
    ['dark', 30],
    ['bright', 220],
  ] as const) {
    await mkdir(join(flat, label), { recursive: true });
    for (let i = 0; i < 3; i++) await image(join(flat, label, `${i}.png`), level + i);
    for (const part of ['train', 'test']) {
      await mkdir(join(split, part, label), { recursive: true });
      for (let i = 0; i < (part === 'train' ? 4 : 2); i++)
        await image(join(split, part, label, `${i}.png`), level - i);
    }
  }
});
after(() => rm(dir, { recursive: true, force: true }));

const trainArgs = (out: string, data: string) => [
  'train',
  '--backbone',
  BACKBONE,
  '--data',
  data,
  '--val',
  'none',
  '--out',
  out,
  '--epochs',
  '1',
  '--batch-size',
  '4',
  '--threads',
  '1',
];

test('train --out refuses a directory holding an adapter unless --force; --force overwrites it', async () => {
  const out = join(dir, 'adapter');
  const first = await runCli(trainArgs(out, split));
  assert.equal(first.code, 0, first.stderr);
  const trained = await readFile(join(out, 'adapter_model.safetensors'));
  const again = await runCli(trainArgs(out, split));
  assert.equal(again.code, 1);
  assert.equal(
    again.stderr,
    `melo: error: ${out}: --out already holds a run (adapter_model.safetensors): pass --resume ${out} to continue it, --force to overwrite it, or another --out\n`,
  );
  assert.deepEqual(await readFile(join(out, 'adapter_model.safetensors')), trained, 'left untouched');
  const forced = await runCli([...trainArgs(out, split), '--force', '--seed', '1']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.notDeepEqual(await readFile(join(out, 'adapter_model.safetensors')), trained);
});

test('eval defaults to the test split when there is one, to every item otherwise, and says which', async () => {
  const out = join(dir, 'for-eval');
  assert.equal((await runCli(trainArgs(out, split))).code, 0);
  const args = [
    'eval',
    '--backbone',
    BACKBONE,
    '--adapter',
    out,
    '--bootstrap',
    '0',
    '--threads',
    '1',
    '--workers',
    '0',
  ];
  const onSplit = await runCli([...args, '--data', split, '--json']);
  assert.equal(onSplit.code, 0, onSplit.stderr);
  assert.equal(JSON.parse(onSplit.stdout).split, 'test');
  assert.equal(JSON.parse(onSplit.stdout).n, 4);
  assert.match(onSplit.stderr, /evaluating the test split of .* \(4 items; --split to choose another\)/);
  const onFlat = await runCli([...args, '--data', flat]);
  assert.equal(onFlat.code, 0, onFlat.stderr);
  assert.match(onFlat.stderr, /has no test split: evaluating all 6 items/);
  assert.match(onFlat.stdout, /^for-eval \(binary\) on .*flat, all items: 6 images$/m);
  const flatJson = JSON.parse((await runCli([...args, '--data', flat, '--json'])).stdout);
  assert.equal(flatJson.split, 'all');
  assert.equal(flatJson.n, 6);
  // An explicit split the data lacks is still an error.
  const missing = await runCli([...args, '--data', flat, '--split', 'test']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /has no test/);
});

test('predict --on-bad-image skip: results for the good files, the bad ones on stderr, exit 2; fail (default) prints nothing', async () => {
  const good = join(split, 'test', 'bright', '0.png');
  const broken = join(dir, 'broken.png');
  await writeFile(broken, Buffer.from('not a png at all'));
  const missing = join(dir, 'missing.png');
  const args = ['predict', '--backbone', BACKBONE, '--threads', '1', '--json'];
  const skipped = await runCli([...args, '--on-bad-image', 'skip', good, broken, missing]);
  assert.equal(skipped.code, 2, skipped.stderr);
  const predictions = JSON.parse(skipped.stdout).predictions as { image: string }[];
  assert.deepEqual(
    predictions.map((p) => p.image),
    [good],
  );
  const lines = skipped.stderr.trim().split('\n');
  assert.equal(lines.length, 2, skipped.stderr);
  assert.ok(lines[0]!.startsWith(`skipped ${broken}: `), lines[0]);
  assert.ok(lines[1]!.startsWith(`skipped ${missing}: `), lines[1]);
  const failed = await runCli([...args, good, broken]);
  assert.equal(failed.code, 1);
  assert.equal(failed.stdout, '');
  assert.match(failed.stderr, new RegExp(`^melo: error: ${broken}: `));
});

test('--positive: recorded by train, the default of eval, which lists it second and reports binary metrics about it', async () => {
  const out = join(dir, 'positive');
  const trained = await runCli([...trainArgs(out, split), '--positive', 'bright']);
  assert.equal(trained.code, 0, trained.stderr);
  const config = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
  assert.equal(config.melo.positive, 'bright');
  const args = [
    'eval',
    '--backbone',
    BACKBONE,
    '--adapter',
    out,
    '--data',
    split,
    '--bootstrap',
    '0',
    '--json',
  ];
  const recorded = JSON.parse((await runCli([...args, '--threads', '1'])).stdout);
  // The folder's classes sort as bright, dark: the recorded positive class moves to second place.
  assert.deepEqual(recorded.classes, ['dark', 'bright']);
  assert.equal(recorded.metrics.sensitivity, recorded.perClass.bright.sensitivity);
  assert.equal(recorded.metrics.f1, recorded.perClass.bright.f1);
  const other = JSON.parse((await runCli([...args, '--positive', 'dark', '--threads', '1'])).stdout);
  assert.deepEqual(other.classes, ['bright', 'dark']);
  assert.equal(other.metrics.sensitivity, recorded.perClass.dark.sensitivity);
  assert.equal(other.metrics.rocAuc, recorded.metrics.rocAuc, 'a binary ROC-AUC does not depend on the side');
  const wrong = await runCli([...args, '--positive', 'grey']);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /--positive 'grey' is not one of the 2 classes: "bright", "dark"/);
  const refused = await runCli([...trainArgs(join(dir, 'positive-bad'), split), '--positive', 'grey']);
  assert.match(refused.stderr, /--positive 'grey' is not one of the 2 classes: "bright", "dark"/);
});

test('--resume <dir> alone restores every saved setting; flags beside it must agree; a larger --epochs trains on', async () => {
  const out = join(dir, 'resumable');
  const first = await runCli([...trainArgs(out, split), '--rank', '2', '--lr', '0.01', '--seed', '4']);
  assert.equal(first.code, 0, first.stderr);
  const saved = JSON.parse(await readFile(join(out, 'train-args.json'), 'utf8'));
  assert.equal(saved.rank, 2);
  assert.equal(saved.lr, 0.01);
  assert.equal(saved.epochs, 1);
  assert.equal(saved.data, split, 'paths are saved absolute');
  const oneEpoch = await readFile(join(out, 'adapter_model.safetensors'));

  const changed = await runCli(['train', '--resume', out, '--lr', '0.5']);
  assert.equal(changed.code, 1);
  assert.match(
    changed.stderr,
    /--lr 0\.5 differs from the run's 0\.01: a resumed run keeps its settings \(start a new --out to change them\)/,
  );
  const fewer = await runCli(['train', '--resume', out, '--epochs', '1', '--rank', '2', '--data', 'split'], {
    cwd: dir,
  });
  assert.equal(fewer.code, 0, 'agreeing flags are accepted');

  const extended = await runCli(['train', '--resume', out, '--epochs', '3']);
  assert.equal(extended.code, 0, extended.stderr);
  assert.match(extended.stderr, /for 3 epochs, .* \(resumed at step \d+\)/);
  assert.match(extended.stderr, /epoch 3 train loss/);
  assert.doesNotMatch(extended.stderr, /epoch 1 train loss/);
  assert.notDeepEqual(await readFile(join(out, 'adapter_model.safetensors')), oneEpoch, 'it trained');
  assert.equal(JSON.parse(await readFile(join(out, 'train-args.json'), 'utf8')).epochs, 3);
});
