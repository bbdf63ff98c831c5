import assert from 'node:assert/strict';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { parseNpy } from '../src/data/npy.ts';
import { runCli } from './helpers/cli.ts';
import { assertClose } from './helpers/graph.ts';

// `melo embed` and `melo predict --json` as a user runs them, against the PyTorch references of
// scripts/fixtures/make_family_fixtures.py (test/fixtures/families/README.md).
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;
const images = ['a', 'b'].map((tag) => join(FAMILIES, 'images', `s16-${tag}.png`));
const reference = async (name: string) =>
  (await readSafetensors(join(FAMILIES, 'references', `${name}.safetensors`))).tensors;
const scratch = await mkdtemp(join(tmpdir(), 'melo-embed-'));
after(() => rm(scratch, { recursive: true, force: true }));

test('melo embed --json: the CLIP projected image embedding, as transformers computes it', async () => {
  const result = await runCli(['embed', '--backbone', join(FAMILIES, 'clip-vision-hf'), '--json', ...images]);
  assert.equal(result.code, 0, result.stderr);
  const { embeddings } = JSON.parse(result.stdout) as {
    embeddings: { image: string; embedding: number[] }[];
  };
  assert.deepEqual(
    embeddings.map((e) => e.image),
    images,
  );
  const values = Float32Array.from(embeddings.flatMap((e) => e.embedding));
  assertClose(values, (await reference('clip-vision-hf')).get('embedding')!.data, 1e-4, 'embedding');
});

test('melo embed --out .npy and .csv write the same rows; --pool cls+mean for DINOv2', async () => {
  const npy = join(scratch, 'dino.npy');
  const csv = join(scratch, 'dino.csv');
  const backbone = join(FAMILIES, 'dinov2-hf-model');
  for (const out of [npy, csv]) {
    const result = await runCli([
      'embed',
      '--backbone',
      backbone,
      '--pool',
      'cls+mean',
      '--out',
      out,
      ...images,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^2 images, 32 values each → /);
  }
  const expected = (await reference('dinov2-hf-model')).get('embedding_cls_mean')!.data;
  const array = parseNpy(new Uint8Array(await readFile(npy)), npy);
  assert.equal(array.dtype, '<f4');
  assert.deepEqual(array.shape, [2, 32]);
  assertClose(array.data as Float32Array, expected, 1e-4, 'npy');
  const lines = (await readFile(csv, 'utf8')).trimEnd().split('\n');
  assert.equal(lines[0], ['image', ...Array.from({ length: 32 }, (_, i) => String(i))].join(','));
  const rows = lines.slice(1).map((line) => line.split(','));
  assert.deepEqual(
    rows.map((row) => row[0]),
    images,
  );
  assertClose(Float32Array.from(rows.flatMap((row) => row.slice(1).map(Number))), expected, 1e-4, 'csv');
});

test('melo predict --json: DINOv2-with-registers logits', async () => {
  const result = await runCli([
    'predict',
    '--backbone',
    join(FAMILIES, 'dinov2-reg-hf-classifier'),
    '--json',
    ...images,
  ]);
  assert.equal(result.code, 0, result.stderr);
  const { predictions } = JSON.parse(result.stdout) as { predictions: { logits: number[] }[] };
  const logits = Float32Array.from(predictions.flatMap((p) => p.logits));
  assertClose(logits, (await reference('dinov2-reg-hf-classifier')).get('logits')!.data, 1e-4, 'logits');
});

test('melo embed refuses --pool cls+mean on a projected backbone and an unknown --out type, in one line', async () => {
  const clip = await runCli([
    'embed',
    '--backbone',
    join(FAMILIES, 'clip-hf'),
    '--pool',
    'cls+mean',
    images[0]!,
  ]);
  assert.notEqual(clip.code, 0);
  assert.match(clip.stderr, /--pool cls\+mean: this backbone's projection reads its pooled CLS token/);
  const out = await runCli([
    'embed',
    '--backbone',
    join(FAMILIES, 'dinov2-timm'),
    '--out',
    join(scratch, 'x.txt'),
    images[0]!,
  ]);
  assert.notEqual(out.code, 0);
  assert.match(out.stderr, /x\.txt: --out must end in \.npy or \.csv/);
  assert.equal(out.stderr.trim().split('\n').length, 1, out.stderr);
});

test('at the larger preprocessing size: melo embed (timm reg4, antialiased resampling) and melo predict (MAE-style)', async () => {
  const large = ['a', 'b'].map((tag) => join(FAMILIES, 'images', `s28-${tag}.png`));
  const overlay = async (name: string) => {
    const target = join(scratch, name);
    await cp(join(FAMILIES, name), target, { recursive: true });
    for (const file of await readdir(join(FAMILIES, name, 'large')))
      await cp(join(FAMILIES, name, 'large', file), join(target, file));
    return target;
  };
  const embedded = await runCli([
    'embed',
    '--backbone',
    await overlay('dinov2-reg4-timm'),
    '--json',
    ...large,
  ]);
  assert.equal(embedded.code, 0, embedded.stderr);
  const { embeddings } = JSON.parse(embedded.stdout) as { embeddings: { embedding: number[] }[] };
  assertClose(
    Float32Array.from(embeddings.flatMap((e) => e.embedding)),
    (await reference('dinov2-reg4-timm')).get('embedding_large')!.data,
    1e-4,
    'embedding at 28 px',
  );
  const predicted = await runCli(['predict', '--backbone', await overlay('mae-timm'), '--json', ...large]);
  assert.equal(predicted.code, 0, predicted.stderr);
  const { predictions } = JSON.parse(predicted.stdout) as { predictions: { logits: number[] }[] };
  assertClose(
    Float32Array.from(predictions.flatMap((p) => p.logits)),
    (await reference('mae-timm')).get('logits_large')!.data,
    1e-4,
    'logits at 28 px',
  );
});
