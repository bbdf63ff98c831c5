import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { preprocess } from '../src/imaging/preprocess.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import { predict, softmax } from '../src/predict.ts';
import { runCli } from './helpers/cli.ts';
import { assertClose } from './helpers/graph.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
let dir = '';
const gradient16 = new Uint16Array(50 * 40);
for (let y = 0; y < 40; y++)
  for (let x = 0; x < 50; x++) gradient16[y * 50 + x] = 1000 + x * 900 + y * 300 + ((x * 7 + y * 13) % 11);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-predict-'));
  // A 16-bit grey PNG of another size than the model's (50×40 vs 32×32), and its 8-bit quantisation.
  await sharp(gradient16, { raw: { width: 50, height: 40, channels: 1 } })
    .toColourspace('grey16')
    .png()
    .toFile(join(dir, 'grey16.png'));
  const grey8 = Uint8Array.from(gradient16, (v) => Math.round(v / 257));
  await sharp(Buffer.from(grey8), { raw: { width: 50, height: 40, channels: 1 } })
    .png()
    .toFile(join(dir, 'grey8.png'));
  await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 200, g: 40, b: 90 } } })
    .jpeg({ quality: 95 })
    .toFile(join(dir, 'red.jpg'));
  await writeFile(join(dir, 'notes.txt'), 'not an image');
});
after(() => rm(dir, { recursive: true, force: true }));

test('predict on a 16-bit grey PNG keeps its precision through to the logits', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const [p16, p8] = await predict(backbone, [join(dir, 'grey16.png'), join(dir, 'grey8.png')], {
    threads: 1,
  });
  // Same path through preprocess + graph, fed the exact 16-bit values: predict must equal it.
  const exact = {
    width: 50,
    height: 40,
    channels: 1 as const,
    data: Float32Array.from(gradient16, (v) => v / 65535),
  };
  const model = await BackboneClassifier.create(backbone, { threads: 1 });
  const { logits } = await model.run(preprocess(exact, backbone.preprocess, 3), 1);
  await model.release();
  assertClose(p16!.logits, logits!.data, 1e-5, '16-bit logits');
  // The 8-bit quantisation of the same picture differs measurably: the extra bits were not thrown away.
  const diff = Math.max(...p16!.logits.map((v, i) => Math.abs(v - p8!.logits[i]!)));
  assert.ok(diff > 1e-5, `16-bit and 8-bit inputs should differ, max diff ${diff}`);
  assert.ok(diff < 0.05, `but only slightly, max diff ${diff}`);
  assertClose(p16!.probabilities, softmax(p16!.logits), 1e-12);
  assert.equal(p16!.prediction, p16!.labels[p16!.probabilities.indexOf(Math.max(...p16!.probabilities))]);
});

test('melo predict --json follows the contract on real JPEG and PNG files', async () => {
  const images = [join(dir, 'red.jpg'), join(dir, 'grey16.png')];
  const result = await runCli([
    'predict',
    '--backbone',
    join(FIXTURES, 'timm'),
    '--threads',
    '1',
    '--json',
    ...images,
  ]);
  assert.equal(result.code, 0, result.stderr);
  const parsed = JSON.parse(result.stdout) as { predictions: Record<string, unknown>[] };
  assert.equal(parsed.predictions.length, 2);
  const backbone = await loadBackbone(join(FIXTURES, 'timm'));
  const direct = await predict(backbone, images, { threads: 1 });
  parsed.predictions.forEach((prediction, i) => {
    assert.deepEqual(Object.keys(prediction).sort(), [
      'image',
      'labels',
      'logits',
      'prediction',
      'probabilities',
      'task',
    ]);
    assert.equal(prediction.image, images[i]);
    assert.equal(prediction.task, 'backbone');
    assert.deepEqual(prediction.labels, ['normal', 'benign', 'malignant']);
    assertClose(prediction.logits as number[], direct[i]!.logits, 1e-6);
  });
});

test('melo predict prints a table without --json', async () => {
  const result = await runCli(['predict', '--backbone', join(FIXTURES, 'hf'), join(dir, 'red.jpg')]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^image\s+task\s+prediction\s+probability\n/);
  assert.match(result.stdout, /red\.jpg\s+backbone\s+(normal|benign|malignant)\s+\d+\.\d%/);
});

test('bad input exits non-zero with one line on stderr naming the file', async () => {
  const cases: [string[], RegExp][] = [
    [['--backbone', join(FIXTURES, 'hf'), join(dir, 'missing.png')], /missing\.png: no such file/],
    [['--backbone', join(FIXTURES, 'hf'), join(dir, 'notes.txt')], /notes\.txt: not a decodable image/],
    [['--backbone', join(FIXTURES, 'hf'), dir], /is a directory, not an image/],
    [
      ['--backbone', join(FIXTURES, 'hf-model'), join(dir, 'red.jpg')],
      /hf-model: backbone has no classifier head; train a task adapter/,
    ],
    [['--backbone', dir, join(dir, 'red.jpg')], /config\.json: file is missing/],
  ];
  for (const [args, pattern] of cases) {
    const result = await runCli(['predict', ...args]);
    assert.notEqual(result.code, 0);
    assert.equal(result.stdout, '');
    const lines = result.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `one line expected, got: ${result.stderr}`);
    assert.match(lines[0]!, /^melo: error: /);
    assert.match(lines[0]!, pattern);
  }
  const verbose = await runCli([
    'predict',
    '--verbose',
    '--backbone',
    join(FIXTURES, 'hf'),
    join(dir, 'notes.txt'),
  ]);
  assert.match(verbose.stderr, /\n\s+at /, '--verbose adds the stack');
});
