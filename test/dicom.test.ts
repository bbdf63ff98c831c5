import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import dicomParser from 'dicom-parser';
import { MeloError } from '../src/errors.ts';
import { type DicomImage, decodeDicom, isDicom, readDicomFile } from '../src/imaging/dicom/index.ts';
import { applyMinMax, applyWindow } from '../src/imaging/dicom/voi.ts';
import { Random } from '../src/util/random.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DICOM_DIR = process.env.MELO_DICOM_DIR ?? path.resolve(repo, '../shared/data/dicom/pydicom-test-files');
const noData = existsSync(DICOM_DIR) ? false : `no DICOM test files at ${DICOM_DIR}`;

/** Written by scripts/fixtures/make_dicom_fixture.py from pydicom 2.3 (see there for each error's reason). */
interface Fixture {
  files: Record<string, Expectation>;
  references: Record<string, Reference[]>;
}
type Expectation =
  | { decodes: [number, number, number]; frames: number; photometric: string; transferSyntax: string }
  | { error: string };
interface Reference {
  frame: number;
  indices: number[];
  /** Per index: one display value (grey) or [r, g, b]. */
  display: (number | number[])[];
  tolerance: number;
}

const fixture = JSON.parse(
  readFileSync(path.join(repo, 'test/fixtures/dicom/expectations.json'), 'utf8'),
) as Fixture;

function listFiles(root: string): string[] {
  return (readdirSync(root, { recursive: true }) as string[])
    .filter((name) => statSync(path.join(root, name)).isFile())
    .map((name) => name.split(path.sep).join('/'))
    .sort();
}

function read(name: string): Uint8Array {
  return new Uint8Array(readFileSync(path.join(DICOM_DIR, name)));
}

function assertDisplayRange(image: DicomImage): void {
  assert.equal(image.data.length, image.width * image.height * image.channels);
  for (const value of image.data)
    assert.ok(value >= 0 && value <= 1, `display value ${value} outside [0, 1]`);
}

/** Patient attributes (names, IDs, birth date) of a file, for checking that errors never repeat them. */
function patientStrings(bytes: Uint8Array): string[] {
  try {
    const dataSet = dicomParser.parseDicom(bytes);
    return ['x00100010', 'x00100020', 'x00100030']
      .map((tag) => dataSet.string(tag)?.trim() ?? '')
      .filter((value) => value.length >= 3);
  } catch {
    return [];
  }
}

test('the expectation list names every file in the DICOM folder', { skip: noData }, () => {
  assert.deepEqual(listFiles(DICOM_DIR), Object.keys(fixture.files).sort());
  const counts = Object.values(fixture.files).reduce(
    (acc, e) => {
      acc['decodes' in e ? 'decodes' : 'errors']++;
      return acc;
    },
    { decodes: 0, errors: 0 },
  );
  assert.deepEqual(counts, { decodes: 78, errors: 87 });
});

test('every pydicom test file decodes as its header says or fails with its specific error', {
  skip: noData,
}, async (t) => {
  for (const [name, expected] of Object.entries(fixture.files)) {
    await t.test(name, { timeout: 15_000 }, async () => {
      const bytes = read(name);
      if ('error' in expected) {
        assert.equal(isDicom(bytes), expected.error !== 'not a DICOM file', 'isDicom');
        const patient = patientStrings(bytes);
        await assert.rejects(decodeDicom(bytes, { file: name }), (error: unknown) => {
          assert.ok(error instanceof MeloError, `not a MeloError: ${String(error)}`);
          assert.ok(error.message.startsWith(`${name}: `), error.message);
          assert.ok(error.message.includes(expected.error), `'${error.message}' lacks '${expected.error}'`);
          assert.ok(!error.message.includes('\n'), 'one line');
          for (const value of patient) assert.ok(!error.message.includes(value), 'patient data in error');
          return true;
        });
        return;
      }
      assert.ok(isDicom(bytes), 'isDicom');
      const image = await decodeDicom(bytes, { file: name });
      const [rows, columns, channels] = expected.decodes;
      assert.deepEqual([image.rows, image.columns, image.channels], [rows, columns, channels]);
      assert.deepEqual([image.height, image.width], [rows, columns]);
      assert.equal(image.frames, expected.frames);
      assert.equal(image.photometric, expected.photometric);
      assertDisplayRange(image);
      for (const reference of fixture.references[name] ?? []) {
        const frame =
          reference.frame === 0 ? image : await decodeDicom(bytes, { file: name, frame: reference.frame });
        reference.indices.forEach((index, k) => {
          const want = reference.display[k]!;
          const wants = Array.isArray(want) ? want : [want];
          wants.forEach((value, c) => {
            const got = frame.data[index * frame.channels + c]!;
            assert.ok(
              Math.abs(got - value) <= reference.tolerance,
              `frame ${reference.frame} pixel ${index} channel ${c}: ${got} vs pydicom ${value}`,
            );
          });
        });
      }
    });
  }
});

test('every decodable file has pydicom reference pixels, covering each encoding', { skip: noData }, () => {
  const decodable = Object.entries(fixture.files).filter(([, e]) => 'decodes' in e);
  for (const [name] of decodable) assert.ok(fixture.references[name]?.length, name);
  const syntaxes = new Set(decodable.map(([, e]) => ('decodes' in e ? e.transferSyntax : '')));
  for (const uid of [
    '1.2.840.10008.1.2', // implicit VR little endian
    '1.2.840.10008.1.2.1', // explicit VR little endian
    '1.2.840.10008.1.2.1.99', // deflated
    '1.2.840.10008.1.2.2', // explicit VR big endian
    '1.2.840.10008.1.2.5', // RLE
    '1.2.840.10008.1.2.4.50', // JPEG baseline
    '1.2.840.10008.1.2.4.70', // JPEG lossless SV1
    '1.2.840.10008.1.2.4.80', // JPEG-LS lossless
    '1.2.840.10008.1.2.4.90', // JPEG 2000 lossless
    '1.2.840.10008.1.2.4.91', // JPEG 2000
  ]) {
    assert.ok(syntaxes.has(uid), uid);
  }
  const photometrics = new Set(decodable.map(([, e]) => ('decodes' in e ? e.photometric : '')));
  for (const p of ['MONOCHROME1', 'MONOCHROME2', 'RGB', 'YBR_FULL', 'YBR_FULL_422', 'YBR_RCT']) {
    assert.ok(photometrics.has(p), p);
  }
});

test('the window option overrides the file window (CT in Hounsfield units)', { skip: noData }, async () => {
  const bytes = read('CT_small.dcm');
  const reference = fixture.references['CT_small.dcm']![0]! as Reference & { modality: number[] };
  const image = await decodeDicom(bytes, { file: 'CT_small.dcm', window: { center: 40, width: 400 } });
  reference.indices.forEach((index, k) => {
    const hu = reference.modality[k]!;
    // PS3.3 C.11.2.1.2.1 with c = 40, w = 400: 0 at or below -160, 1 above 239.
    const want = hu <= -160 ? 0 : hu > 239 ? 1 : (hu - 39.5) / 399 + 0.5;
    assert.ok(Math.abs(image.data[index]! - want) < 1e-6, `pixel ${index}: HU ${hu}`);
  });
  assert.ok(
    reference.modality.some((hu) => hu > -160 && hu <= 239),
    'some reference pixels inside the window',
  );
});

test('readDicomFile reads from disk and names the path in errors', { skip: noData }, async () => {
  const image = await readDicomFile(path.join(DICOM_DIR, 'MR_small.dcm'));
  assert.deepEqual([image.rows, image.columns, image.modality], [64, 64, 'MR']);
  await assert.rejects(readDicomFile(path.join(DICOM_DIR, 'missing.dcm')), /missing\.dcm: no such file/);
});

test('frame selection, bad options and truncated buffers give specific errors', {
  skip: noData,
}, async () => {
  const rtdose = read('rtdose.dcm');
  await assert.rejects(
    decodeDicom(rtdose, { file: 'rtdose.dcm', frame: 15 }),
    /frame 15 is out of range: the file has 15/,
  );
  await assert.rejects(decodeDicom(rtdose, { file: 'rtdose.dcm', frame: -1 }), /frame -1 is out of range/);
  await assert.rejects(
    decodeDicom(rtdose, { file: 'rtdose.dcm', window: { center: 0, width: 0 } }),
    /width at least 1/,
  );
  const ct = read('CT_small.dcm');
  await assert.rejects(
    decodeDicom(ct.subarray(0, 1000), { file: 'cut.dcm' }),
    /cut\.dcm: malformed or truncated/,
  );
  await assert.rejects(
    decodeDicom(ct.subarray(0, 38_900), { file: 'cut.dcm' }),
    /truncated: Pixel Data has 32600 bytes, fewer than the 32768/,
  );
  const rle = read('MR_small_RLE.dcm');
  await assert.rejects(
    decodeDicom(rle.subarray(0, 4000), { file: 'rle.dcm' }),
    /rle\.dcm: malformed or truncated/,
  );
});

test('isDicom goes by content, not by name', { skip: noData }, () => {
  const png = new Uint8Array([
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52,
  ]);
  assert.equal(isDicom(png), false);
  assert.equal(isDicom(new Uint8Array(0)), false);
  assert.equal(isDicom(new Uint8Array(300)), false);
  const ct = read('CT_small.dcm');
  assert.equal(isDicom(ct.subarray(0, 100)), false, 'cut before the DICM prefix');
  assert.equal(isDicom(ct.subarray(0, 132)), true);
  assert.equal(isDicom(read('ExplVR_LitEndNoMeta.dcm')), true, 'bare explicit VR little endian');
  assert.equal(isDicom(read('ExplVR_BigEndNoMeta.dcm')), true, 'bare explicit VR big endian');
  assert.equal(isDicom(read('rtstruct.dcm')), true, 'bare implicit VR');
  const random = new Random(3);
  const noise = Uint8Array.from({ length: 1000 }, () => random.int(256));
  assert.equal(isDicom(noise), false);
});

test('corrupted files fail with a MeloError or decode, and never crash or leave an exit code', {
  skip: noData,
}, async () => {
  const random = new Random(11);
  const files = [
    'CT_small.dcm',
    'MR_small_RLE.dcm',
    'rtdose_rle.dcm',
    'SC_rgb_jpeg_dcmtk.dcm',
    'SC_rgb_jpeg_gdcm.dcm',
    'MR_small_jpeg_ls_lossless.dcm',
    'MR_small_jp2klossless.dcm',
    'JPEG2000.dcm',
    'image_dfl.dcm',
    'liver_1frame.dcm',
  ];
  let failures = 0;
  for (const name of files) {
    const original = read(name);
    for (let trial = 0; trial < 6; trial++) {
      const bytes = original.slice(
        0,
        trial === 5 ? Math.floor(original.length * (0.5 + 0.5 * random.float())) : undefined,
      );
      // Flip bytes in the second half, where the pixel data lives.
      for (let k = 0; k < 12; k++) {
        const at = Math.floor(bytes.length / 2) + random.int(Math.ceil(bytes.length / 2));
        bytes[at] = random.int(256);
      }
      try {
        const image = await decodeDicom(bytes, { file: name });
        assertDisplayRange(image);
      } catch (error) {
        assert.ok(error instanceof MeloError, `${name} trial ${trial}: ${String(error)}`);
        assert.ok(error.message.startsWith(`${name}: `));
        failures++;
      }
    }
  }
  assert.ok(failures > 0, 'some corruptions are detected');
  assert.ok(!process.exitCode, 'a codec left process.exitCode set');
  // The codecs still work after the failures above.
  const image = await decodeDicom(read('MR_small_jp2klossless.dcm'), { file: 'after.dcm' });
  assert.equal(image.rows, 64);
});

/** A bare explicit VR little endian data set (no preamble, no meta), the form isDicom sniffs. */
function dataSet(elements: [number, number, string, Uint8Array | string | number[]][]): Uint8Array {
  const parts: number[] = [];
  for (const [group, element, vr, value] of elements) {
    let bytes: number[];
    if (typeof value === 'string') bytes = [...value].map((c) => c.charCodeAt(0));
    else if (value instanceof Uint8Array) bytes = [...value];
    else bytes = value.flatMap((v) => [v & 0xff, (v >> 8) & 0xff]); // US / OW words
    if (bytes.length % 2 === 1) bytes.push(0x20);
    parts.push(group & 0xff, group >> 8, element & 0xff, element >> 8, vr.charCodeAt(0), vr.charCodeAt(1));
    if (vr === 'OW' || vr === 'OB') {
      parts.push(0, 0, bytes.length & 0xff, (bytes.length >> 8) & 0xff, 0, 0);
    } else {
      parts.push(bytes.length & 0xff, bytes.length >> 8);
    }
    parts.push(...bytes);
  }
  return Uint8Array.from(parts);
}

/**
 * One row of four 12-bit signed pixels in 16-bit words whose top 4 bits hold junk: stored values
 * -2048, -1, 0, 2047; Rescale Slope 2 and Intercept -50 make them -4146, -52, -50, 4044.
 */
function syntheticCr(photometric: string, window: boolean): Uint8Array {
  return dataSet([
    [0x0008, 0x0060, 'CS', 'CR'],
    [0x0028, 0x0002, 'US', [1]],
    [0x0028, 0x0004, 'CS', photometric],
    [0x0028, 0x0010, 'US', [1]],
    [0x0028, 0x0011, 'US', [4]],
    [0x0028, 0x0100, 'US', [16]],
    [0x0028, 0x0101, 'US', [12]],
    [0x0028, 0x0102, 'US', [11]],
    [0x0028, 0x0103, 'US', [1]],
    ...(window
      ? ([
          [0x0028, 0x1050, 'DS', '100\\7'],
          [0x0028, 0x1051, 'DS', '401\\9'],
        ] as [number, number, string, string][])
      : []),
    [0x0028, 0x1052, 'DS', '-50'],
    [0x0028, 0x1053, 'DS', '2'],
    [0x7fe0, 0x0010, 'OW', [0xa800, 0x5fff, 0xf000, 0x37ff]],
  ]);
}

test('signed 12-bit data with rescale, the first file window, and MONOCHROME1 inversion', async () => {
  const bytes = syntheticCr('MONOCHROME1', true);
  assert.ok(isDicom(bytes));
  // Window 100/401: 0 at or below -100.5, 1 above 299.5, else (x - 99.5) / 400 + 0.5; then inverted.
  const mono1 = await decodeDicom(bytes, { file: 'cr1.dcm' });
  assert.equal(mono1.modality, 'CR');
  assert.deepEqual(mono1.bitsStored, 12);
  assertClose(mono1.data, [1, 0.87875, 0.87375, 0]);
  const mono2 = await decodeDicom(syntheticCr('MONOCHROME2', true), { file: 'cr2.dcm' });
  assertClose(mono2.data, [0, 0.12125, 0.12625, 1]);
  // Window option 0/101: (x + 0.5) / 100 + 0.5 inside (-50.5, 49.5].
  const override = await decodeDicom(syntheticCr('MONOCHROME2', true), {
    file: 'cr2.dcm',
    window: { center: 0, width: 101 },
  });
  assertClose(override.data, [0, 0, 0.005, 1]);
  // No window in the file: min-max over -4146..4044 (span 8190).
  const minMax = await decodeDicom(syntheticCr('MONOCHROME1', false), { file: 'cr1.dcm' });
  assertClose(minMax.data, [1, 1 - 4094 / 8190, 1 - 4096 / 8190, 0]);
});

/** A Part 10 file: preamble, 'DICM', a meta group declaring `transferSyntax`, then `body`. */
function part10(transferSyntax: string, body: Uint8Array): Uint8Array {
  const uid = transferSyntax.length % 2 === 1 ? `${transferSyntax}\0` : transferSyntax;
  const syntax = dataSet([[0x0002, 0x0010, 'UI', uid]]);
  const length = new Uint8Array(new Uint32Array([syntax.length]).buffer);
  const meta = dataSet([[0x0002, 0x0000, 'UL', length]]);
  const out = new Uint8Array(132 + meta.length + syntax.length + body.length);
  out.set([0x44, 0x49, 0x43, 0x4d], 128);
  out.set(meta, 132);
  out.set(syntax, 132 + meta.length);
  out.set(body, 132 + meta.length + syntax.length);
  return out;
}

test('unsupported transfer syntaxes are named', async () => {
  const body = syntheticCr('MONOCHROME2', true);
  await assert.rejects(
    decodeDicom(part10('1.2.840.10008.1.2.4.100', body), { file: 'video.dcm' }),
    /video\.dcm: transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2 Main Profile\) is not supported/,
  );
  await assert.rejects(
    decodeDicom(part10('1.2.3.4', body), { file: 'odd.dcm' }),
    /transfer syntax 1\.2\.3\.4 \(unknown\) is not supported/,
  );
  // The same body under explicit VR little endian decodes.
  const image = await decodeDicom(part10('1.2.840.10008.1.2.1', body), { file: 'ok.dcm' });
  assertClose(image.data, [0, 0.12125, 0.12625, 1]);
});

test('file meta information without the preamble is read', { skip: noData }, async () => {
  const ct = read('CT_small.dcm');
  const bare = ct.subarray(132);
  assert.ok(isDicom(bare));
  const [a, b] = [await decodeDicom(ct, { file: 'a' }), await decodeDicom(bare, { file: 'b' })];
  assert.deepEqual(b.data, a.data);
});

test('photometric interpretations outside the supported set are named', async () => {
  await assert.rejects(
    decodeDicom(syntheticCr('PALETTE COLOR', true), { file: 'pal.dcm' }),
    /pal\.dcm: photometric interpretation PALETTE COLOR is not supported/,
  );
});

test('linear window math per PS3.3 C.11.2.1.2 (hand-computed)', () => {
  const x = Float64Array.from([-161, -160, -159, 39.5, 238, 239, 240]);
  // c = 40, w = 400: bounds -160 and 239, slope 1/399.
  // -159 -> (-159 - 39.5) / 399 + 0.5 = (-198.5 + 199.5) / 399 = 1/399; 238 -> 398/399.
  assertClose(applyWindow(x, { center: 40, width: 400 }), [0, 0, 1 / 399, 0.5, 398 / 399, 1, 1]);
  // w = 1 is a threshold at c - 0.5.
  assertClose(applyWindow(Float64Array.from([9.5, 9.6]), { center: 10, width: 1 }), [0, 1]);
  // LINEAR_EXACT: (x - c) / w + 0.5 between c - w/2 and c + w/2.
  assertClose(
    applyWindow(Float64Array.from([-1, 0, 1, 2, 3]), { center: 1, width: 2 }, 'LINEAR_EXACT'),
    [0, 0, 0.5, 1, 1],
  );
  // SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
  assertClose(applyWindow(Float64Array.from([1, 2]), { center: 1, width: 4 }, 'SIGMOID'), [
    0.5,
    1 / (1 + Math.exp(-1)),
  ]);
  assertClose(applyMinMax(Float64Array.from([2, 4, 6])), [0, 0.5, 1]);
  assertClose(applyMinMax(Float64Array.from([3, 3])), [0, 0]);
});

function assertClose(actual: ArrayLike<number>, expected: number[], tolerance = 1e-6): void {
  assert.equal(actual.length, expected.length);
  expected.forEach((value, i) => {
    assert.ok(Math.abs(actual[i]! - value) <= tolerance, `[${i}] ${actual[i]} vs ${value}`);
  });
}
