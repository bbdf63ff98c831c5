import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { classCounts } from '../src/data/dataset.ts';
import { parseIdx } from '../src/data/idx.ts';
import { FASHION_MNIST_CLASSES, openIdx } from '../src/data/idx-dataset.ts';
import { openNpz } from '../src/data/medmnist.ts';
import { MEDMNIST_INFO, medmnistInfoForFile } from '../src/data/medmnist-info.ts';
import { parseNpy } from '../src/data/npy.ts';
import { MeloError } from '../src/errors.ts';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'data');
const SHARED = process.env.MELO_SHARED_DATA ?? join(import.meta.dirname, '..', '..', 'shared', 'data');
const MEDMNIST_DIR = join(SHARED, 'medmnist');
const FASHION_DIR = join(SHARED, 'fashion-mnist');
const noMedmnist = existsSync(MEDMNIST_DIR) ? false : `no MedMNIST data at ${MEDMNIST_DIR}`;
const noFashion = existsSync(FASHION_DIR) ? false : `no Fashion-MNIST data at ${FASHION_DIR}`;

interface Reference {
  npy: Record<string, { dtype: string; shape: number[]; values: number[] }>;
  tiny_mixed: { train_image_3: number[]; val_image_1: number[] };
  medmnist: Record<
    string,
    {
      splits: Record<
        string,
        { count: number; labels_shape: number[]; image_shape: number[]; class_counts: number[] }
      >;
      sample: {
        split: 'train' | 'val' | 'test';
        index: number;
        row: number;
        col: number;
        pixel: number[];
        label: number;
        sum: number;
      };
    }
  >;
  fashion: Record<
    string,
    {
      count: number;
      class_counts: number[];
      samples: Array<{ index: number; label: number; row: number; col: number; value: number; sum: number }>;
    }
  >;
}
// Produced by NumPy: scripts/fixtures/data/make_data_fixtures.py
const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference.json'), 'utf8')) as Reference;

test('parseNpy reads every supported dtype exactly as NumPy wrote it', () => {
  for (const [name, expected] of Object.entries(reference.npy)) {
    if (name === 'fortran.npy') continue;
    const array = parseNpy(new Uint8Array(readFileSync(join(FIXTURES, name))), name);
    assert.equal(array.dtype, expected.dtype, name);
    assert.deepEqual(array.shape, expected.shape, name);
    assert.deepEqual(Array.from(array.data), expected.values, name);
  }
});

test('parseNpy rejects Fortran order, bad magic, truncation and object arrays with one-line errors', () => {
  const fortran = new Uint8Array(readFileSync(join(FIXTURES, 'fortran.npy')));
  assert.throws(
    () => parseNpy(fortran, 'x/fortran.npy'),
    /x\/fortran\.npy: Fortran-order .npy arrays are not supported/,
  );
  assert.throws(() => parseNpy(new Uint8Array(20), 'a.npy'), /a\.npy: not a \.npy file/);
  const u1 = new Uint8Array(readFileSync(join(FIXTURES, 'u1.npy')));
  assert.throws(
    () => parseNpy(u1.subarray(0, u1.length - 1), 'u1.npy'),
    /truncated \.npy data: shape \(2, 3, 4\) needs 24 bytes, file has 23/,
  );
  const header = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }";
  const bytes = npyBytes(header, new Uint8Array(16));
  assert.throws(
    () => parseNpy(bytes, 'o.npy'),
    (error: unknown) => error instanceof MeloError && /unsupported \.npy dtype '\|O'/.test(error.message),
  );
});

/** A v1 .npy built by hand: magic, version 1.0, little-endian header length, header padded to 64 bytes. */
function npyBytes(header: string, data: Uint8Array): Uint8Array {
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  const padded = `${header}${' '.repeat(total - 10 - header.length - 1)}\n`;
  const out = new Uint8Array(total + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, (total - 10) & 0xff, (total - 10) >> 8]);
  out.set(new TextEncoder().encode(padded), 10);
  out.set(data, total);
  return out;
}

test('parseNpy decodes a hand-built little-endian int16 array byte for byte', () => {
  const data = new Uint8Array([0x01, 0x00, 0xff, 0xff, 0x00, 0x80]);
  const array = parseNpy(
    npyBytes("{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }", data),
    'h.npy',
  );
  assert.deepEqual(Array.from(array.data), [1, -1, -32768]);
});

test('openNpz handles float32 images, int64 (N,) labels, (N, 1) labels and colour in one file', async () => {
  const splits = await openNpz(join(FIXTURES, 'tiny_mixed.npz'));
  assert.deepEqual(Object.keys(splits).sort(), ['train', 'val']);
  const train = splits.train!;
  assert.equal(train.taskType, 'multiclass');
  assert.deepEqual(train.classes, ['0', '1', '2']);
  assert.deepEqual(
    train.items.map((item) => item.labels),
    [[0], [1], [2], [1], [0], [2]],
  );
  const image = await train.items[3].load();
  assert.equal(image.channels, 1);
  assert.equal(image.width, 8);
  assert.deepEqual(Array.from(image.data), reference.tiny_mixed.train_image_3.map(Math.fround));
  const colour = await splits.val!.items[1].load();
  assert.equal(colour.channels, 3);
  assert.deepEqual(Array.from(colour.data), reference.tiny_mixed.val_image_1.map(Math.fround));
  assert.equal(splits.val!.items[1].id, `${join(FIXTURES, 'tiny_mixed.npz')}#val/1`);
});

test('openNpz reads (N, C) 0/1 labels as multi-label', async () => {
  const splits = await openNpz(join(FIXTURES, 'tiny_multilabel.npz'));
  const test = splits.test!;
  assert.equal(test.taskType, 'multilabel');
  assert.deepEqual(test.classes, ['0', '1', '2']);
  assert.deepEqual(
    test.items.map((item) => item.labels),
    [[0, 2], [], [1], [0, 1, 2]],
  );
  assert.equal(splits.train, undefined);
});

test('a ChestMNIST-layout file gets the 14 ChestMNIST label names and multi-label task', async () => {
  const train = (await openNpz(join(FIXTURES, 'chestmnist_tiny.npz'))).train!;
  assert.equal(train.name, 'chestmnist');
  assert.equal(train.taskType, 'multilabel');
  assert.deepEqual(train.classes, MEDMNIST_INFO.chestmnist.classes);
  assert.deepEqual(
    train.items.map((item) => item.labels),
    [[0, 13], [], [5]],
  );
  assert.equal(train.classes[13], 'hernia');
});

test('MedMNIST names are recognised from file names, including size and subset suffixes', () => {
  assert.equal(medmnistInfoForFile('/x/breastmnist_64.npz')?.name, 'breastmnist');
  assert.equal(medmnistInfoForFile('pathmnist_test_subset.npz')?.name, 'pathmnist');
  assert.equal(medmnistInfoForFile('organcmnist.npz')?.name, 'organcmnist');
  assert.equal(medmnistInfoForFile('mymnist.npz'), undefined);
  assert.equal(MEDMNIST_INFO.chestmnist.classes.length, 14);
  assert.equal(MEDMNIST_INFO.chestmnist.taskType, 'multilabel');
  assert.equal(MEDMNIST_INFO.pathmnist.classes.length, 9);
  assert.equal(MEDMNIST_INFO.dermamnist.classes.length, 7);
  assert.equal(MEDMNIST_INFO.bloodmnist.classes.length, 8);
  assert.equal(MEDMNIST_INFO.organamnist.classes.length, 11);
});

for (const file of [
  'retinamnist.npz',
  'breastmnist.npz',
  'breastmnist_64.npz',
  'pneumoniamnist_subset.npz',
  'pathmnist_test_subset.npz',
]) {
  test(`MedMNIST ${file}: split sizes, class counts, image shape and pixels match NumPy`, {
    skip: noMedmnist,
  }, async () => {
    const expected = reference.medmnist[file];
    const splits = await openNpz(join(MEDMNIST_DIR, file));
    assert.deepEqual(Object.keys(splits).sort(), Object.keys(expected.splits).sort());
    for (const [split, want] of Object.entries(expected.splits)) {
      const dataset = splits[split as 'train' | 'val' | 'test']!;
      assert.equal(dataset.items.length, want.count, `${file} ${split}`);
      assert.deepEqual(classCounts(dataset), want.class_counts, `${file} ${split}`);
      const image = await dataset.items[0].load();
      assert.deepEqual([image.height, image.width, ...(image.channels === 3 ? [3] : [])], want.image_shape);
    }
    const { split, index, row, col, pixel, label, sum } = expected.sample;
    const item = splits[split]!.items[index];
    assert.deepEqual(item.labels, [label]);
    const image = await item.load();
    const at = (row * image.width + col) * image.channels;
    assert.deepEqual(
      Array.from(image.data.subarray(at, at + image.channels), (v) => Math.round(v * 255)),
      pixel,
    );
    let total = 0;
    for (const value of image.data) total += value * 255;
    assert.equal(Math.round(total), sum);
  });
}

test('MedMNIST class names and task types come from the MedMNIST table', { skip: noMedmnist }, async () => {
  const retina = await openNpz(join(MEDMNIST_DIR, 'retinamnist.npz'), { splits: ['val'] });
  assert.deepEqual(Object.keys(retina), ['val']);
  assert.equal(retina.val!.name, 'retinamnist');
  assert.equal(retina.val!.taskType, 'multiclass');
  assert.deepEqual(retina.val!.classes, ['0', '1', '2', '3', '4']);
  const breast = await openNpz(join(MEDMNIST_DIR, 'breastmnist_64.npz'), { splits: ['test'] });
  assert.equal(breast.test!.taskType, 'binary');
  assert.deepEqual(breast.test!.classes, ['malignant', 'normal, benign']);
  const pneumonia = await openNpz(join(MEDMNIST_DIR, 'pneumoniamnist_subset.npz'), { splits: ['test'] });
  assert.deepEqual(pneumonia.test!.classes, ['normal', 'pneumonia']);
  const path = await openNpz(join(MEDMNIST_DIR, 'pathmnist_test_subset.npz'));
  assert.equal(path.test!.classes.length, 9);
  assert.equal(path.test!.classes[0], 'adipose');
  await assert.rejects(
    openNpz(join(MEDMNIST_DIR, 'pathmnist_test_subset.npz'), { splits: ['train'] }),
    /pathmnist_test_subset\.npz: no <split>_images\/<split>_labels arrays for split train/,
  );
});

test('openNpz names the file for missing labels and non-zip input', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-npz-'));
  const notZip = join(dir, 'broken.npz');
  await writeFile(notZip, 'hello');
  await assert.rejects(openNpz(notZip), /broken\.npz: not a readable \.npz \(zip\) archive/);
  await assert.rejects(openNpz(join(dir, 'absent.npz')), /absent\.npz: cannot read \.npz file \(ENOENT\)/);
});

test('parseIdx reads a hand-built idx3 file and rejects wrong sizes and types', () => {
  const bytes = new Uint8Array([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 10, 20, 30, 40, 50, 60]);
  const array = parseIdx(bytes, 'x-idx3-ubyte');
  assert.deepEqual(array.shape, [2, 1, 3]);
  assert.deepEqual(Array.from(array.data), [10, 20, 30, 40, 50, 60]);
  assert.throws(
    () => parseIdx(bytes.subarray(0, 21), 'x'),
    /x: idx shape \(2, 1, 3\) needs 6 bytes of data, file has 5/,
  );
  const floats = bytes.slice();
  floats[2] = 0x0d;
  assert.throws(() => parseIdx(floats, 'y'), /y: idx element type float32 is not supported/);
});

test('openIdx pairs images with labels beside a single file and reads gzip', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-idx-'));
  const images = new Uint8Array([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 255, 51, 102]);
  await writeFile(join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(images));
  await writeFile(join(dir, 't10k-labels-idx1-ubyte'), new Uint8Array([0, 0, 8, 1, 0, 0, 0, 2, 1, 0]));
  const splits = await openIdx(join(dir, 't10k-images-idx3-ubyte.gz'), false);
  const test = splits.test!;
  assert.deepEqual(test.classes, ['0', '1']);
  assert.equal(test.taskType, 'binary');
  assert.deepEqual(test.items[0].labels, [1]);
  const second = await test.items[1].load();
  assert.deepEqual([second.height, second.width, second.channels], [1, 2, 1]);
  assert.deepEqual(Array.from(second.data), [51 / 255, 102 / 255].map(Math.fround));
  await writeFile(join(dir, 'train-images-idx3-ubyte'), images);
  await assert.rejects(
    openIdx(dir, true),
    /train-images-idx3-ubyte: no train-labels-idx1-ubyte\[\.gz\] beside this images file/,
  );
});

test('Fashion-MNIST idx: 60000/10000 items, balanced classes, names, pixels match NumPy', {
  skip: noFashion,
}, async () => {
  const splits = await openIdx(FASHION_DIR, true);
  for (const split of ['train', 'test'] as const) {
    const dataset = splits[split]!;
    const expected = reference.fashion[split];
    assert.equal(dataset.items.length, expected.count);
    assert.deepEqual(classCounts(dataset), expected.class_counts);
    assert.deepEqual(dataset.classes, FASHION_MNIST_CLASSES);
    for (const sample of expected.samples) {
      const item = dataset.items[sample.index];
      assert.deepEqual(item.labels, [sample.label]);
      const image = await item.load();
      assert.equal(Math.round(image.data[sample.row * 28 + sample.col] * 255), sample.value);
      let total = 0;
      for (const value of image.data) total += value * 255;
      assert.equal(Math.round(total), sample.sum);
    }
  }
  assert.equal(splits.train!.classes[0], 'T-shirt/top');
  assert.equal(splits.train!.classes[9], 'Ankle boot');
  // Hand-decoded: the idx3 payload starts at byte 16; item i, pixel (r, c) is at 16 + i*784 + r*28 + c.
  const raw = (await import('node:zlib')).gunzipSync(
    readFileSync(join(FASHION_DIR, 't10k-images-idx3-ubyte.gz')),
  );
  const [i, r, c] = [4321, 13, 17];
  const image = await splits.test!.items[i].load();
  assert.equal(image.data[r * 28 + c], Math.fround(raw[16 + i * 784 + r * 28 + c] / 255));
  assert.ok(raw[16 + i * 784 + r * 28 + c] > 0, 'the hand-decoded pixel should be non-zero to mean anything');
});
