/**
 * The one image reader's work limits (src/imaging/limits.ts, src/imaging/dicom/bounds.ts): every hostile
 * file is built here, refused with one TOO_LARGE line naming the file, and refused before the work it
 * would buy. The server-level figures (event loop, memory, 413) are in serve-hostile.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { fileItem } from '../src/data/file-item.ts';
import { MeloError } from '../src/errors.ts';
import { decodeDicom } from '../src/imaging/dicom/index.ts';
import { DEFAULT_MAX_PIXELS, imageLimits } from '../src/imaging/limits.ts';
import { decodeAnyImage, readAnyImage } from '../src/imaging/read.ts';
import {
  deeplyNested,
  deflatedBomb,
  element,
  manyElements,
  nativeDicom,
  oversizedRleFrame,
} from './helpers/hostile-dicom.ts';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-limits-'));
});
after(() => rm(dir, { recursive: true, force: true }));

function tooLarge(file: string, pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof MeloError, String(error));
    assert.equal(error.code, 'TOO_LARGE', error.message);
    assert.ok(error.message.startsWith(`${file}: `), error.message);
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes('\n'));
    return true;
  };
}

test('a PNG above the pixel limit is refused from its header (8192x8190, 195 KB, was decoded to 1.5 GB)', async () => {
  const png = await sharp({ create: { width: 8192, height: 8190, channels: 3, background: '#808080' } })
    .png()
    .toBuffer();
  assert.ok(png.length < 400_000, `${png.length} bytes`);
  const started = performance.now();
  await assert.rejects(
    decodeAnyImage(png, 'bomb.png'),
    tooLarge('bomb.png', /8192x8190 pixels exceeds the limit of 40000000 pixels/),
  );
  // The header alone was read: far below the seconds a decode takes.
  assert.ok(performance.now() - started < 2000, `${performance.now() - started} ms`);
  assert.equal(DEFAULT_MAX_PIXELS, 40_000_000);
  // A lower limit applies the same way, and an image within it decodes.
  const small = await sharp({ create: { width: 60, height: 40, channels: 3, background: '#808080' } })
    .png()
    .toBuffer();
  await assert.rejects(
    decodeAnyImage(small, 's.png', { limits: imageLimits({ maxPixels: 2000 }) }),
    tooLarge('s.png', /60x40 pixels exceeds the limit of 2000/),
  );
  assert.equal(
    (await decodeAnyImage(small, 's.png', { limits: imageLimits({ maxPixels: 2400 }) })).width,
    60,
  );
});

test('deflated DICOM: a header beyond the pixel limit is refused after inflating only the header', async () => {
  // Declares 20000 x 16000 16-bit pixels (640 MB) and holds 64 MiB of zeros in 64 KB.
  const bomb = await deflatedBomb(16000, 20000, 64 * 2 ** 20);
  assert.ok(bomb.length < 200_000, `${bomb.length} bytes`);
  const before = process.memoryUsage().arrayBuffers;
  await assert.rejects(
    decodeDicom(bomb, { file: 'bomb.dcm' }),
    tooLarge('bomb.dcm', /20000x16000 pixels exceeds the limit of 40000000 pixels/),
  );
  assert.ok(process.memoryUsage().arrayBuffers - before < 32 * 2 ** 20);
});

test('deflated DICOM: inflation stops at what the header declares, and at the hard cap', async () => {
  // Declares 64 x 64 (8 KB of pixels) but inflates to 64 MiB: stopped past the declared size plus slack.
  const liar = await deflatedBomb(64, 64, 64 * 2 ** 20);
  await assert.rejects(
    decodeDicom(liar, { file: 'liar.dcm' }),
    tooLarge('liar.dcm', /inflates past the size its header declares/),
  );
  // Within the pixel limit but beyond the hard cap on inflated bytes.
  const honest = await deflatedBomb(2048, 2048, 2048 * 2048 * 2);
  await assert.rejects(
    decodeDicom(honest, { file: 'big.dcm', limits: imageLimits({ maxInflatedBytes: 2 ** 20 }) }),
    tooLarge('big.dcm', /inflates past 1048576 bytes/),
  );
  // The same file within the cap decodes (the bound does not refuse honest files).
  const image = await decodeDicom(honest, { file: 'big.dcm' });
  assert.equal(image.rows, 2048);
});

test('DICOM: a million elements and deep nesting are refused before the parser builds its data set', async () => {
  const many = manyElements(1_000_000);
  const started = performance.now();
  await assert.rejects(
    decodeDicom(many, { file: 'many.dcm' }),
    tooLarge('many.dcm', /more than 200000 elements/),
  );
  // The old path parsed every element (10 s for this file); the walk stops at the limit.
  assert.ok(performance.now() - started < 3000, `${performance.now() - started} ms`);
  assert.equal((await decodeDicom(manyElements(1000), { file: 'ok.dcm' })).rows, 8);

  await assert.rejects(
    decodeDicom(deeplyNested(40), { file: 'deep.dcm' }),
    tooLarge('deep.dcm', /nest deeper than 16/),
  );
  assert.equal((await decodeDicom(deeplyNested(6), { file: 'nested.dcm' })).rows, 8);
});

test('DICOM: a compressed frame far larger than its raw size is refused', async () => {
  await assert.rejects(
    decodeDicom(oversizedRleFrame(8, 8, 2 ** 20), { file: 'rle.dcm' }),
    tooLarge('rle.dcm', /compressed frame 1 holds 1048576 bytes/),
  );
});

test('DICOM text values never appear in errors (patient text planted in numeric and code elements)', async () => {
  const planted = 'DOE^JOHN';
  const cases = [
    nativeDicom(8, 8, [element(0x0028, 0x1053, 'DS', planted)]),
    nativeDicom(8, 8, [], 'JOHN DOE'),
    nativeDicom(8, 8, [element(0x0028, 0x0008, 'IS', 'JOHN')]),
  ];
  for (const [i, bytes] of cases.entries()) {
    await assert.rejects(decodeDicom(bytes, { file: `text${i}.dcm` }), (error: Error) => {
      assert.ok(error instanceof MeloError);
      assert.doesNotMatch(error.message, /JOHN|DOE/, error.message);
      return true;
    });
  }
});

test('one reader everywhere: a DICOM named .png decodes as a data item as it does for predict', async () => {
  const path = join(dir, 'scan.png');
  await writeFile(path, nativeDicom(12, 10));
  const viaPredict = await readAnyImage(path);
  const viaItem = await fileItem(path, [0]).load();
  assert.equal(viaItem.width, 10);
  assert.equal(viaItem.height, 12);
  assert.deepEqual(Array.from(viaItem.data), Array.from(viaPredict.data));
  // And the limits hold there too.
  const bomb = join(dir, 'bomb.jpg');
  await writeFile(bomb, nativeDicom(8, 8, [], 'MONOCHROME2'));
  assert.equal((await fileItem(bomb, [0]).load()).width, 8);
});
