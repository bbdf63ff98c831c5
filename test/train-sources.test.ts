import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { Random } from '../src/util/random.ts';
import { runCli } from './helpers/cli.ts';

// melo train + melo eval on the sources the data issue names beyond MedMNIST: a multi-label CSV manifest
// and a folder of DICOM files (recognised by content, one without an extension).
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DICOM_DIR =
  process.env.MELO_DICOM_DIR ??
  new URL('../../shared/data/dicom/pydicom-test-files', import.meta.url).pathname;
const common = [
  '--backbone',
  join(FIXTURES, 'hf'),
  '--rank',
  '2',
  '--epochs',
  '2',
  '--batch-size',
  '4',
  '--lr',
  '0.01',
  '--threads',
  '1',
];
// Generous: CLI start-up under a loaded CI machine can take seconds per process.
const LONG = { timeoutMs: 600_000 };
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-sources-'));
});
after(() => rm(dir, { recursive: true, force: true }));

test('multi-label CSV manifest (NIH style): train with sigmoid BCE, eval reports per-label metrics', async () => {
  const images = join(dir, 'xray');
  await mkdir(images, { recursive: true });
  const random = new Random(11);
  const rows = ['Image Index,Finding Labels,Split'];
  const findings = ['No Finding', 'Effusion', 'Nodule', 'Effusion|Nodule'];
  for (let i = 0; i < 32; i++) {
    const label = findings[i % 4]!;
    const pixels = Buffer.alloc(24 * 24);
    for (let p = 0; p < pixels.length; p++) {
      const effusion = label.includes('Effusion') && p >= 24 * 12 ? 80 : 0;
      const nodule = label.includes('Nodule') && p % 24 < 8 ? 60 : 0;
      pixels[p] = Math.min(255, 60 + effusion + nodule + Math.round(random.normal() * 10));
    }
    await sharp(pixels, { raw: { width: 24, height: 24, channels: 1 } })
      .png()
      .toFile(join(images, `${i}.png`));
    rows.push(`xray/${i}.png,${label},${i < 20 ? 'train' : i < 24 ? 'val' : 'test'}`);
  }
  const manifest = join(dir, 'Data_Entry.csv');
  await writeFile(manifest, `${rows.join('\n')}\n`);
  const out = join(dir, 'xray-adapter');
  const trained = await runCli(['train', ...common, '--data', manifest, '--out', out, '--json'], LONG);
  assert.equal(trained.code, 0, trained.stderr);
  assert.equal(JSON.parse(trained.stdout).headParameters, 2 * 32 + 2, 'two labels: Effusion, Nodule');
  const evaluated = await runCli(
    [
      'eval',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--adapter',
      out,
      '--data',
      manifest,
      '--split',
      'test',
      '--bootstrap',
      '0',
      '--json',
    ],
    LONG,
  );
  assert.equal(evaluated.code, 0, evaluated.stderr);
  const report = JSON.parse(evaluated.stdout);
  assert.equal(report.n, 8);
  assert.deepEqual(Object.keys(report.perClass).sort(), ['Effusion', 'Nodule']);
  assert.equal(report.confusionMatrix.length, 2, 'one 2×2 matrix per label');
});

test('a folder of DICOM files trains and evaluates like any image folder', async () => {
  const root = join(dir, 'dicom');
  const classes: Record<string, string[]> = {
    ct: ['CT_small.dcm', 'CT_small.dcm', 'CT_small.dcm', 'CT_small.dcm'],
    mr: ['MR_small.dcm', 'MR_small_RLE.dcm', 'MR_small_bigendian.dcm', 'MR_small_implicit.dcm'],
  };
  for (const split of ['train', 'test']) {
    for (const [cls, files] of Object.entries(classes)) {
      await mkdir(join(root, split, cls), { recursive: true });
      for (const [i, file] of files.entries()) {
        // One file without an extension: recognised by content.
        await copyFile(
          join(DICOM_DIR, file),
          join(root, split, cls, i === 0 ? `image${i}` : `image${i}.dcm`),
        );
      }
    }
  }
  const out = join(dir, 'dicom-adapter');
  const trained = await runCli(
    ['train', ...common, '--data', root, '--val', 'none', '--out', out, '--json'],
    LONG,
  );
  assert.equal(trained.code, 0, trained.stderr);
  assert.equal(JSON.parse(trained.stdout).skippedImages, 0);
  const evaluated = await runCli(
    [
      'eval',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--adapter',
      out,
      '--data',
      root,
      '--split',
      'test',
      '--bootstrap',
      '0',
      '--json',
    ],
    LONG,
  );
  assert.equal(evaluated.code, 0, evaluated.stderr);
  const report = JSON.parse(evaluated.stdout);
  assert.equal(report.n, 8);
  assert.deepEqual(Object.keys(report.perClass), ['ct', 'mr']);
});
