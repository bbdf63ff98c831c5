import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { decodeDicom } from '../src/imaging/dicom/index.ts';
import { predict } from '../src/predict.ts';
import { runCli } from './helpers/cli.ts';
import { assertClose } from './helpers/graph.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DICOM_DIR =
  process.env.MELO_DICOM_DIR ??
  new URL('../../shared/data/dicom/pydicom-test-files', import.meta.url).pathname;
let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-dicom-predict-'));
});
after(() => rm(dir, { recursive: true, force: true }));

for (const name of ['CT_small.dcm', 'MR_small_RLE.dcm', 'SC_rgb_dcmtk_+eb+cr.dcm']) {
  test(`predict on ${name} equals predict on a 16-bit PNG of its displayed pixels, without relying on the extension`, async () => {
    const bytes = await readFile(join(DICOM_DIR, name));
    const image = await decodeDicom(bytes, { file: name });
    // The displayed pixels (after rescale, VOI window, MONOCHROME1 inversion) as a 16-bit PNG.
    const levels = Uint16Array.from(image.data, (v) => Math.round(v * 65535));
    const png = join(dir, `${name}.png`);
    await sharp(levels, { raw: { width: image.width, height: image.height, channels: image.channels } })
      .toColourspace(image.channels === 1 ? 'grey16' : 'rgb16')
      .png()
      .toFile(png);
    const noExtension = join(dir, name.replace(/\.dcm$/, ''));
    await copyFile(join(DICOM_DIR, name), noExtension);
    const backbone = await loadBackbone(join(FIXTURES, 'hf'));
    const [fromDicom, fromPng] = await predict(backbone, [noExtension, png], { threads: 1 });
    // 16-bit quantisation of [0, 1] values moves them by at most 7.6e-6.
    assertClose(fromDicom!.logits, fromPng!.logits, 1e-4, 'logits');
    assert.equal(fromDicom!.prediction, fromPng!.prediction);
  });
}

test('melo predict --window overrides the file window, and a non-image DICOM fails in one line', async () => {
  const ct = join(DICOM_DIR, 'CT_small.dcm');
  const own = await runCli(['predict', '--backbone', join(FIXTURES, 'hf'), '--json', ct]);
  const windowed = await runCli([
    'predict',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--json',
    '--window',
    '40,400',
    ct,
  ]);
  assert.equal(own.code, 0, own.stderr);
  assert.equal(windowed.code, 0, windowed.stderr);
  assert.notDeepEqual(
    JSON.parse(own.stdout).predictions[0].logits,
    JSON.parse(windowed.stdout).predictions[0].logits,
  );
  const rtplan = await runCli(['predict', '--backbone', join(FIXTURES, 'hf'), join(DICOM_DIR, 'rtplan.dcm')]);
  assert.equal(rtplan.code, 1);
  assert.match(rtplan.stderr.trim(), /^melo: error: .*rtplan\.dcm: .*no pixel data/);
  assert.equal(rtplan.stderr.trim().split('\n').length, 1);
});
