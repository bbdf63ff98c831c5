import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { Random } from '../src/util/random.ts';
import { runCli } from './helpers/cli.ts';

// `melo train` (MeLo LoRA) and `melo eval` run on backbone families as on the plain ViT: a few steps on a
// tiny ImageFolder of dark vs bright 20×24 images, then the adapter is evaluated on the val split.
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;
let dir = '';
let data = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-family-train-'));
  data = join(dir, 'data');
  const random = new Random(11);
  for (const split of ['train', 'val']) {
    for (const [cls, level] of [
      ['dark', 60],
      ['bright', 190],
    ] as const) {
      await mkdir(join(data, split, cls), { recursive: true });
      for (let i = 0; i < (split === 'train' ? 4 : 2); i++) {
        const pixels = Buffer.alloc(20 * 24 * 3);
        for (let p = 0; p < pixels.length; p++)
          pixels[p] = Math.max(0, Math.min(255, level + Math.round(random.normal() * 30)));
        await sharp(pixels, { raw: { width: 20, height: 24, channels: 3 } })
          .png()
          .toFile(join(data, split, cls, `${i}.png`));
      }
    }
  }
});
after(() => rm(dir, { recursive: true, force: true }));

for (const [name, keyPrefix] of [
  ['dinov2-reg-hf-classifier', 'base_model.model.dinov2_with_registers.encoder.layer.'],
  ['clip-vision-hf', 'base_model.model.vision_model.encoder.layers.'],
  ['mae-timm', 'base_model.model.vit.encoder.layer.'],
] as const) {
  test(`${name}: melo train writes a LoRA adapter and melo eval scores it`, async () => {
    const backbone = join(FAMILIES, name);
    const out = join(dir, name);
    const trained = await runCli([
      'train',
      '--backbone',
      backbone,
      '--data',
      data,
      '--out',
      out,
      '--epochs',
      '1',
      '--batch-size',
      '4',
      '--seed',
      '1',
      '--threads',
      '1',
      '--json',
    ]);
    assert.equal(trained.code, 0, trained.stderr);
    const summary = JSON.parse(trained.stdout);
    // rank 4 on query and value of 2 blocks (16 → 16): 2 · 2 · (4·16 + 16·4) values.
    assert.equal(summary.loraParameters, 512);
    const weights = await readFile(join(out, 'adapter_model.safetensors'));
    assert.ok(weights.includes(Buffer.from(`${keyPrefix}1.`)), 'PEFT keys of the family');
    const evaluated = await runCli([
      'eval',
      '--backbone',
      backbone,
      '--adapter',
      out,
      '--data',
      `${data}:val`,
      '--bootstrap',
      '10',
      '--threads',
      '1',
      '--json',
    ]);
    assert.equal(evaluated.code, 0, evaluated.stderr);
    const report = JSON.parse(evaluated.stdout);
    assert.equal(report.n, 4);
    assert.equal(typeof report.metrics.accuracy, 'number');
  });
}

test('full fine-tuning refuses a backbone the Hugging Face ViT layout cannot hold, before training', async () => {
  const result = await runCli([
    'train',
    '--backbone',
    join(FAMILIES, 'clip-vision-hf'),
    '--data',
    data,
    '--out',
    join(dir, 'full'),
    '--method',
    'full',
    '--epochs',
    '1',
  ]);
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /written as a Hugging Face ViT, which cannot hold this one \(family "clip"/);
  assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
});
