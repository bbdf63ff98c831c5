/**
 * Seeded mutation fuzzing of every reader that takes files from strangers: safetensors, PEFT adapters
 * (adapter_config.json and weights), .npz, and the image reader predict and the server use (PNG, JPEG,
 * DICOM). `npm test` runs MELO_FUZZ_CASES (default 400) cases per target; `npm run fuzz` runs 20,000.
 * MELO_FUZZ_SEED changes the seed. Zero findings are expected: a crash (an exception other than
 * MeloError), a multi-line error, a case over 5 s or a non-finite result fails the test with the
 * case's index, which replays it.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32 } from 'node:zlib';
import { zipSync } from 'fflate';
import sharp from 'sharp';
import { decodeSafetensors, encodeSafetensors } from '../src/checkpoints/safetensors.ts';
import { parseNpz } from '../src/data/npz.ts';
import type { DecodedImage } from '../src/imaging/image.ts';
import { decodeAnyImage } from '../src/imaging/read.ts';
import { loadAdapter } from '../src/io/peft.ts';
import type { Adapter } from '../src/model/adapter.ts';
import { hostTensor } from '../src/tensor.ts';
import { assertFiniteTensors } from '../src/util/finite.ts';
import { assertFiniteValues, type FuzzStats, type FuzzTarget, fuzz } from './helpers/fuzz.ts';
import { npyBytes, npzBytes } from './helpers/npz.ts';

const CASES = Number(
  process.env.MELO_FUZZ_CASES ?? (process.env.npm_lifecycle_event === 'fuzz' ? 20_000 : 400),
);
const SEED = Number(process.env.MELO_FUZZ_SEED ?? 12);
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DICOM_DIR =
  process.env.MELO_DICOM_DIR ??
  resolve(new URL('..', import.meta.url).pathname, '../shared/data/dicom/pydicom-test-files');
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-fuzz-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function runTarget(target: FuzzTarget, t: { diagnostic(message: string): void }): Promise<FuzzStats> {
  const stats = await fuzz(target, CASES, SEED);
  t.diagnostic(
    `${target.name}: ${stats.cases} cases, ${stats.accepted} accepted, ${stats.refused} refused with one line, slowest ${stats.slowestMs.toFixed(0)} ms`,
  );
  assert.deepEqual(stats.findings, [], `${target.name} (seed ${SEED})`);
  assert.ok(!process.exitCode, 'a reader left process.exitCode set');
  return stats;
}

function checkImage(result: unknown): void {
  const image = result as DecodedImage;
  assert.ok(image.width > 0 && image.height > 0, `${image.width}x${image.height}`);
  assert.equal(image.data.length, image.width * image.height * image.channels);
  assertFiniteValues(image.data, 'pixel', [0, 1]);
}

test('fuzz: safetensors', async (t) => {
  const adapterBytes = new Uint8Array(
    readFileSync(join(FIXTURES, 'lora_adapter', 'adapter_model.safetensors')),
  );
  const mixed = new Map([
    ['a', hostTensor([2, 3], Float32Array.from([1, -2, 3.5, 0, 1e-3, 7]))],
    ['b.bias', hostTensor([3], Float32Array.from([0.5, 0.25, -1]))],
  ]);
  const seeds = [
    adapterBytes,
    concat(encodeSafetensors(mixed, { dtype: 'F16', metadata: { format: 'pt' } })),
    concat(encodeSafetensors(mixed, { dtype: 'BF16' })),
  ];
  await runTarget(
    {
      name: 'safetensors',
      seeds,
      async run(bytes) {
        const file = decodeSafetensors(bytes, 'fuzz.safetensors');
        assertFiniteTensors(file.tensors, { code: 'BAD_SAFETENSORS', file: 'fuzz.safetensors' });
        return file;
      },
      check(result) {
        for (const [name, tensor] of (result as ReturnType<typeof decodeSafetensors>).tensors) {
          assert.equal(
            tensor.data.length,
            tensor.shape.reduce((p, d) => p * d, 1),
            name,
          );
          assertFiniteValues(tensor.data, name);
        }
      },
    },
    t,
  );
});

test('fuzz: PEFT adapter (adapter_config.json and adapter_model.safetensors)', async (t) => {
  const base = join(dir, 'adapter');
  await cp(join(FIXTURES, 'lora_adapter'), base, { recursive: true });
  const config = await readFile(join(base, 'adapter_config.json'));
  const weights = await readFile(join(base, 'adapter_model.safetensors'));
  const regexConfig = Buffer.from(
    JSON.stringify({
      ...JSON.parse(config.toString()),
      target_modules: '.*\\.encoder\\.layer\\.\\d+\\.attention\\.attention\\.(query|value)',
      layers_to_transform: [0, 1],
      melo: { version: 1, task: 'fuzz', taskType: 'binary', labels: ['a', 'b'], imageSize: [32, 32] },
    }),
  );
  const check = (result: unknown) => {
    const adapter = result as Adapter;
    for (const [key, pair] of adapter.pairs) {
      assertFiniteValues(pair.A.data, `${key}.A`);
      assertFiniteValues(pair.B.data, `${key}.B`);
    }
    assertFiniteValues(adapter.head.weight.data, 'head.weight');
    assertFiniteValues(adapter.head.bias.data, 'head.bias');
  };
  // The config mutated with the weights intact, then the weights mutated with the config intact.
  await runTarget(
    {
      name: 'adapter_config.json',
      seeds: [config, regexConfig],
      async run(bytes) {
        await writeFile(join(base, 'adapter_config.json'), bytes);
        await writeFile(join(base, 'adapter_model.safetensors'), weights);
        return loadAdapter(base);
      },
      check,
    },
    t,
  );
  await runTarget(
    {
      name: 'adapter_model.safetensors',
      seeds: [weights],
      async run(bytes) {
        await writeFile(join(base, 'adapter_config.json'), config);
        await writeFile(join(base, 'adapter_model.safetensors'), bytes);
        return loadAdapter(base);
      },
      check,
    },
    t,
  );
});

test('fuzz: .npz', async (t) => {
  const images = Uint8Array.from({ length: 3 * 8 * 8 }, (_, i) => (i * 37) % 256);
  const arrays = {
    train_images: { values: images, shape: [3, 8, 8] },
    train_labels: { values: Uint8Array.from([0, 1, 1]), shape: [3, 1] },
  };
  const stored = zipSync(
    {
      'val_images.npy': npyBytes(
        Float32Array.from(images, (v) => v / 255),
        [3, 8, 8],
      ),
      'val_labels.npy': npyBytes(Int32Array.from([1, 0, 1]), [3]),
    },
    { level: 0 },
  );
  // The .npy inside mutated, then stored in an intact zip, so the CRC does not hide the header parser.
  await runTarget(
    {
      name: '.npy in an intact .npz',
      seeds: [
        npyBytes(images, [3, 8, 8]),
        npyBytes(
          Float32Array.from(images, (v) => v / 255),
          [3, 8, 8],
        ),
        npyBytes(Int32Array.from([1, 0, 1]), [3]),
      ],
      async run(bytes) {
        return parseNpz(zipSync({ 'a.npy': bytes }, { level: 0 }), 'fuzz.npz');
      },
      check(result) {
        for (const [name, array] of result as ReturnType<typeof parseNpz>)
          assert.equal(
            array.data.length,
            array.shape.reduce((p, d) => p * d, 1),
            name,
          );
      },
    },
    t,
  );
  await runTarget(
    {
      name: '.npz',
      seeds: [npzBytes(arrays), stored],
      async run(bytes) {
        return parseNpz(bytes, 'fuzz.npz');
      },
      check(result) {
        for (const [name, array] of result as ReturnType<typeof parseNpz>)
          assert.equal(
            array.data.length,
            array.shape.reduce((p, d) => p * d, 1),
            name,
          );
      },
    },
    t,
  );
});

test('fuzz: PNG and JPEG through the image reader predict uses', async (t) => {
  const gray = Buffer.from(Array.from({ length: 16 * 12 }, (_, i) => (i * 13) % 256));
  const rgb = Buffer.from(Array.from({ length: 16 * 12 * 3 }, (_, i) => (i * 29) % 256));
  const deep = Buffer.from(new Uint16Array(Array.from({ length: 8 * 8 }, (_, i) => i * 1000)).buffer);
  const png = [
    await sharp(gray, { raw: { width: 16, height: 12, channels: 1 } })
      .png()
      .toBuffer(),
    await sharp(rgb, { raw: { width: 16, height: 12, channels: 3 } })
      .png({ palette: true })
      .toBuffer(),
    await sharp(deep, { raw: { width: 8, height: 8, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toBuffer(),
  ];
  const jpeg = [
    await sharp(rgb, { raw: { width: 16, height: 12, channels: 3 } })
      .jpeg({ quality: 80 })
      .toBuffer(),
    await sharp(gray, { raw: { width: 16, height: 12, channels: 1 } })
      .jpeg({ quality: 90, progressive: true })
      .toBuffer(),
  ];
  for (const [name, seeds] of [
    ['PNG', png],
    ['JPEG', jpeg],
  ] as const) {
    await runTarget(
      {
        name,
        seeds: seeds.map((seed) => new Uint8Array(seed)),
        run: (bytes) => decodeAnyImage(bytes, `fuzz.${name.toLowerCase()}`),
        check: checkImage,
      },
      t,
    );
  }
  // PNG chunks carry CRCs, so most byte mutations stop at the first check: with the CRCs recomputed
  // after mutating, the cases reach the header and image-data decoding behind them.
  await runTarget(
    {
      name: 'PNG (CRCs fixed)',
      seeds: png.map((seed) => new Uint8Array(seed)),
      run: (bytes) => decodeAnyImage(fixPngCrcs(bytes), 'fuzz.png'),
      check: checkImage,
    },
    t,
  );
});

test('fuzz: DICOM through the image reader predict uses', async (t) => {
  const seeds = [syntheticDicom(), part10('1.2.840.10008.1.2.1', syntheticDicom())];
  // Compressed transfer syntaxes from pydicom's test files, when the shared data is there.
  for (const name of [
    'MR_small_RLE.dcm',
    'JPEG-lossy.dcm',
    'MR_small_jpeg_ls_lossless.dcm',
    'MR_small_jp2klossless.dcm',
    'image_dfl.dcm',
  ]) {
    const path = join(DICOM_DIR, name);
    if (existsSync(path)) seeds.push(new Uint8Array(readFileSync(path)));
  }
  await runTarget(
    { name: 'DICOM', seeds, run: (bytes) => decodeAnyImage(bytes, 'fuzz.dcm'), check: checkImage },
    t,
  );
});

/** Recomputes the CRC of every PNG chunk that still parses (length, type, data, CRC). */
function fixPngCrcs(bytes: Uint8Array): Uint8Array {
  const out = Uint8Array.from(bytes);
  const view = new DataView(out.buffer);
  let at = 8;
  while (at + 12 <= out.length) {
    const length = view.getUint32(at);
    if (at + 12 + length > out.length) break;
    view.setUint32(at + 8 + length, crc32(out.subarray(at + 4, at + 8 + length)) >>> 0);
    at += 12 + length;
  }
  return out;
}

function concat(chunks: Iterable<Uint8Array> | Uint8Array): Uint8Array {
  if (chunks instanceof Uint8Array) return chunks;
  return new Uint8Array(Buffer.concat([...chunks]));
}

/** An explicit VR little endian data set: 8×8 MONOCHROME2, 16-bit words, 12 bits stored, with rescale. */
function syntheticDicom(): Uint8Array {
  const pixels = Array.from({ length: 64 }, (_, i) => (i * 61) % 4096);
  return dataSet([
    [0x0008, 0x0060, 'CS', 'CR'],
    [0x0028, 0x0002, 'US', [1]],
    [0x0028, 0x0004, 'CS', 'MONOCHROME2'],
    [0x0028, 0x0010, 'US', [8]],
    [0x0028, 0x0011, 'US', [8]],
    [0x0028, 0x0100, 'US', [16]],
    [0x0028, 0x0101, 'US', [12]],
    [0x0028, 0x0102, 'US', [11]],
    [0x0028, 0x0103, 'US', [0]],
    [0x0028, 0x1050, 'DS', '2000'],
    [0x0028, 0x1051, 'DS', '4000'],
    [0x0028, 0x1052, 'DS', '-5'],
    [0x0028, 0x1053, 'DS', '1.5'],
    [0x7fe0, 0x0010, 'OW', pixels],
  ]);
}

function dataSet(elements: [number, number, string, string | number[]][]): Uint8Array {
  const parts: number[] = [];
  for (const [group, element, vr, value] of elements) {
    const bytes =
      typeof value === 'string'
        ? [...value].map((c) => c.charCodeAt(0))
        : value.flatMap((v) => [v & 0xff, (v >> 8) & 0xff]);
    if (bytes.length % 2 === 1) bytes.push(0x20);
    parts.push(group & 0xff, group >> 8, element & 0xff, element >> 8, vr.charCodeAt(0), vr.charCodeAt(1));
    if (vr === 'OW' || vr === 'OB') parts.push(0, 0, bytes.length & 0xff, (bytes.length >> 8) & 0xff, 0, 0);
    else parts.push(bytes.length & 0xff, bytes.length >> 8);
    parts.push(...bytes);
  }
  return Uint8Array.from(parts);
}

/** A Part 10 file: preamble, 'DICM', a meta group declaring `transferSyntax`, then `body`. */
function part10(transferSyntax: string, body: Uint8Array): Uint8Array {
  const uid = transferSyntax.length % 2 === 1 ? `${transferSyntax}\0` : transferSyntax;
  const syntax = dataSet([[0x0002, 0x0010, 'UI', uid]]);
  const groupLength = syntax.length;
  const meta = Uint8Array.from([
    0x02,
    0x00,
    0x00,
    0x00,
    0x55,
    0x4c,
    4,
    0,
    ...new Uint8Array(new Uint32Array([groupLength]).buffer),
  ]);
  const out = new Uint8Array(132 + meta.length + syntax.length + body.length);
  out.set([0x44, 0x49, 0x43, 0x4d], 128);
  out.set(meta, 132);
  out.set(syntax, 132 + meta.length);
  out.set(body, 132 + meta.length + syntax.length);
  return out;
}
