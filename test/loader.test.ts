import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';
import type { DataItem, Dataset } from '../src/data/dataset.ts';
import { fileItem } from '../src/data/file-item.ts';
import {
  type Batch,
  closeSharedDecodePools,
  DecodePool,
  epochOrder,
  type LoaderOptions,
  loadBatches,
  mixSeed,
} from '../src/data/loader.ts';
import { openNpz } from '../src/data/medmnist.ts';
import { sharedDecodePool } from '../src/data/workers/decode-pool.ts';
import { runDecodeTask } from '../src/data/workers/decode-task.ts';
import { MeloError } from '../src/errors.ts';
import { augmentAndPreprocess, DEFAULT_AUGMENT } from '../src/imaging/augment.ts';
import type { DecodedImage } from '../src/imaging/image.ts';
import { preprocess, preprocessConfigFromTimm } from '../src/imaging/preprocess.ts';
import { Random } from '../src/util/random.ts';

const repo = resolve(new URL('..', import.meta.url).pathname);
const BCCD_DIR = process.env.MELO_BCCD_DIR ?? resolve(repo, '../shared/data/bccd/BCCD/JPEGImages');
const MEDMNIST_DIR = process.env.MELO_DATA_DIR ?? resolve(repo, '../shared/data/medmnist');
const RETINA = join(MEDMNIST_DIR, 'retinamnist.npz');
const noBccd = !existsSync(BCCD_DIR) && `BCCD JPEGs not found at ${BCCD_DIR} (set MELO_BCCD_DIR)`;
const noRetina = !existsSync(RETINA) && `retinamnist.npz not found in ${MEDMNIST_DIR} (set MELO_DATA_DIR)`;

// Small model input keeps the suite fast; the work per item is the same code as at 224 px.
const PREPROCESS = preprocessConfigFromTimm({ input_size: [3, 64, 64] });
const PER_IMAGE = 3 * 64 * 64;

function dataset(items: readonly DataItem[]): Dataset {
  return { name: 'test', source: 'test', taskType: 'multiclass', classes: ['a', 'b', 'c'], items };
}

function bccd(count: number): Dataset {
  const files = readdirSync(BCCD_DIR)
    .filter((name) => name.endsWith('.jpg'))
    .sort()
    .slice(0, count);
  return dataset(files.map((name, i) => fileItem(join(BCCD_DIR, name), [i % 3])));
}

function options(overrides: Partial<LoaderOptions> = {}): LoaderOptions {
  return {
    batchSize: 3,
    preprocess: PREPROCESS,
    channels: 3,
    augment: DEFAULT_AUGMENT,
    seed: 7,
    shuffle: true,
    ...overrides,
  };
}

async function collect(
  data: Dataset,
  epoch: number,
  loader: LoaderOptions,
  startBatch = 0,
): Promise<Batch[]> {
  const batches: Batch[] = [];
  for await (const batch of loadBatches(data, epoch, loader, startBatch)) batches.push(batch);
  return batches;
}

function assertSameBatches(actual: readonly Batch[], expected: readonly Batch[]): void {
  assert.equal(actual.length, expected.length);
  actual.forEach((batch, i) => {
    assert.equal(batch.index, expected[i]!.index);
    assert.deepEqual(
      batch.items.map((item) => item.id),
      expected[i]!.items.map((item) => item.id),
    );
    // Bit-identical, not merely close: the workers run the same code on the same seeds.
    assert.ok(
      Buffer.from(batch.pixels.buffer).equals(Buffer.from(expected[i]!.pixels.buffer)),
      `batch ${batch.index} pixels differ`,
    );
  });
}

/** Array-like items with a counter, to watch how far ahead the loader reads. */
function countingItems(count: number, started: number[]): DataItem[] {
  return Array.from({ length: count }, (_, index) => ({
    id: `mem#${index}`,
    labels: [index % 3],
    load: async (): Promise<DecodedImage> => {
      started.push(index);
      const data = new Float32Array(16 * 16 * 3);
      for (let i = 0; i < data.length; i++) data[i] = ((i * 31 + index * 17) % 256) / 255;
      return { width: 16, height: 16, channels: 3, data };
    },
  }));
}

after(async () => {
  await closeSharedDecodePools();
});

test('JPEG items: 2 workers give the same batches as in-process, bit for bit, and each row is its own seeded augmentation', {
  skip: noBccd,
}, async () => {
  const data = bccd(7);
  const inProcess = await collect(data, 1, options({ workers: 0 }));
  const workers = await collect(data, 1, options({ workers: 2 }));
  assertSameBatches(workers, inProcess);
  assert.deepEqual(
    inProcess.map((batch) => batch.items.length),
    [3, 3, 1],
  );
  // Batch order is the epoch's seeded shuffle, and row r is item order[r] augmented with its own stream.
  const order = epochOrder(7, 7, 1, true);
  assert.deepEqual(
    workers.flatMap((batch) => batch.items.map((item) => item.id)),
    order.map((i) => data.items[i]!.id),
  );
  const row = 1;
  const itemIndex = order[3 + row]!;
  const expected = augmentAndPreprocess(
    await data.items[itemIndex]!.load(),
    PREPROCESS,
    DEFAULT_AUGMENT,
    new Random(mixSeed(7, 1, itemIndex)),
    3,
  );
  assert.deepEqual(workers[1]!.pixels.subarray(row * PER_IMAGE, (row + 1) * PER_IMAGE), expected);
  // Another epoch draws other augmentations.
  const epoch2 = await collect(data, 2, options({ workers: 2 }));
  assert.notDeepEqual(epoch2[0]!.pixels, workers[0]!.pixels);
});

test('evaluation transform through workers equals preprocess(), and a resumed epoch starts at the same batch', {
  skip: noBccd,
}, async () => {
  const data = bccd(5);
  const evaluation = options({ augment: false, shuffle: false, batchSize: 2, workers: 2 });
  const batches = await collect(data, 0, evaluation);
  const expected = preprocess(await data.items[4]!.load(), PREPROCESS, 3);
  assert.deepEqual(batches[2]!.pixels, expected);
  const resumed = await collect(data, 0, evaluation, 1);
  assertSameBatches(resumed, batches.slice(1));
  const augmented = await collect(data, 3, options({ workers: 2 }));
  assertSameBatches(await collect(data, 3, options({ workers: 2 }), 1), augmented.slice(1));
});

test('array items (MedMNIST npz): workers augment what the loader thread sliced, same bits as in-process', {
  skip: noRetina,
}, async () => {
  const { train } = await openNpz(RETINA);
  const data = dataset(train!.items.slice(0, 8));
  assert.equal(data.items[0]!.source, undefined);
  const inProcess = await collect(data, 0, options({ batchSize: 4, workers: 0 }));
  const workers = await collect(data, 0, options({ batchSize: 4, workers: 2 }));
  assertSameBatches(workers, inProcess);
  // Not a constant tensor: 28 px fundus images upsampled to 64 with jitter have spread.
  const pixels = inProcess[0]!.pixels;
  assert.ok(Math.max(...pixels) - Math.min(...pixels) > 1);
});

test('file items carry a plain-data source that a worker can decode', () => {
  assert.deepEqual(fileItem('/x/a.png', [0]).source, { kind: 'file', path: '/x/a.png' });
  assert.deepEqual(fileItem('/x/b', [1], 'dicom').source, { kind: 'file', path: '/x/b', fileKind: 'dicom' });
  assert.deepEqual(structuredClone(fileItem('/x/b', [1], 'dicom').source), {
    kind: 'file',
    path: '/x/b',
    fileKind: 'dicom',
  });
});

for (const workers of [0, 2]) {
  test(`prefetch is bounded (${workers} workers): at most prefetch + 1 batches are read before the consumer asks`, async () => {
    const started: number[] = [];
    const data = dataset(countingItems(20, started));
    const loader = options({ batchSize: 2, prefetch: 2, shuffle: false, workers });
    const iterator = loadBatches(data, 0, loader);
    const first = await iterator.next();
    assert.equal(first.done, false);
    // The consumer "computes" for a while: decoding must not run further ahead than the bound.
    await new Promise((done) => setTimeout(done, 150));
    assert.equal(started.length, 6, `started ${started}`);
    const second = await iterator.next();
    assert.equal((second.value as Batch).index, 1);
    await new Promise((done) => setTimeout(done, 50));
    assert.equal(started.length, 8);
    await iterator.return(undefined);
    const all = await collect(data, 0, loader);
    assert.equal(all.length, 10);
  });
}

test('an undecodable image fails with the same one-line MeloError from a worker as in-process, naming the file', {
  skip: noBccd,
}, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-loader-'));
  try {
    const bad = join(dir, 'broken.jpg');
    await writeFile(bad, Buffer.from('this is not a jpeg at all'));
    const good = readdirSync(BCCD_DIR)
      .filter((name) => name.endsWith('.jpg'))
      .sort()
      .slice(0, 3);
    const items = [
      fileItem(join(BCCD_DIR, good[0]!), [0]),
      fileItem(bad, [1]),
      fileItem(join(BCCD_DIR, good[1]!), [2]),
    ];
    const data = dataset(items);
    const failure = async (workers: number) => {
      try {
        await collect(data, 0, options({ shuffle: false, workers }));
      } catch (error) {
        return error;
      }
      assert.fail('the broken file was decoded');
    };
    const inProcess = await failure(0);
    const fromWorker = await failure(2);
    assert.ok(inProcess instanceof MeloError && fromWorker instanceof MeloError);
    assert.equal(fromWorker.message, inProcess.message);
    assert.equal(fromWorker.code, 'BAD_IMAGE');
    assert.equal(fromWorker.file, bad);
    assert.match(fromWorker.message, /^\/.*broken\.jpg: not a decodable image \(.+\)$/);
    assert.ok(!fromWorker.message.includes('\n'));
    // A missing file: NOT_FOUND, again identical.
    const missing = dataset([fileItem(join(dir, 'gone.png'), [0])]);
    const reasons = await Promise.all(
      [0, 2].map((workers) =>
        collect(missing, 0, options({ workers })).then(
          () => assert.fail('decoded a missing file'),
          (error: unknown) => error as MeloError,
        ),
      ),
    );
    assert.equal(reasons[1]!.message, reasons[0]!.message);
    assert.equal(reasons[1]!.code, 'NOT_FOUND');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('other errors keep their class and message across the thread boundary (an invalid augmentation)', async () => {
  const data = dataset(countingItems(2, []));
  const reasons = await Promise.all(
    [0, 2].map((workers) =>
      collect(data, 0, options({ workers, augment: { horizontalFlip: 2 } })).then(
        () => assert.fail('a flip probability of 2 was accepted'),
        (error: unknown) => error as Error,
      ),
    ),
  );
  assert.ok(reasons[0] instanceof RangeError && reasons[1] instanceof RangeError);
  assert.equal(reasons[1].message, reasons[0].message);
  assert.match(reasons[1].message, /horizontalFlip 2 is not a probability/);
});

test('the worker task reports a failure as data (a cloned error loses its code and file)', async () => {
  const reply = await runDecodeTask({
    input: { kind: 'source', source: { kind: 'file', path: '/nonexistent/melo/x.png' } },
    transform: { preprocess: PREPROCESS, channels: 3, augment: false },
    seed: 0,
  });
  assert.deepEqual(reply, {
    failure: {
      melo: true,
      code: 'NOT_FOUND',
      file: '/nonexistent/melo/x.png',
      message: 'no such file',
    },
  });
  const image: DecodedImage = { width: 8, height: 8, channels: 1, data: new Float32Array(64).fill(0.5) };
  const tensor = await runDecodeTask({
    input: { kind: 'image', image },
    transform: { preprocess: PREPROCESS, channels: 3, augment: false },
    seed: 0,
  });
  assert.ok(tensor instanceof Float32Array);
  assert.deepEqual(tensor, preprocess(image, PREPROCESS, 3));
});

test('a caller-owned pool is reused across epochs and closed by its owner; the shared pool is one per size', async () => {
  const started: number[] = [];
  const data = dataset(countingItems(4, started));
  const pool = DecodePool.create(1);
  assert.equal(pool.workers, 1);
  const inProcess = await collect(data, 0, options({ workers: 0 }));
  for (const epoch of [0, 1]) {
    const batches = await collect(data, epoch, options({ pool, workers: 0 }));
    if (epoch === 0) assertSameBatches(batches, inProcess);
  }
  await pool.close();
  await assert.rejects(collect(data, 0, options({ pool })), /decode pool is closed/);
  assert.equal(sharedDecodePool(2), sharedDecodePool(2));
  assert.throws(() => DecodePool.create(0), /at least one worker/);
  await assert.rejects(
    collect(data, 0, options({ workers: 1.5 })),
    (error: unknown) => error instanceof MeloError && error.code === 'USAGE',
  );
});

test('a process that loads through workers exits on its own: a closed owned pool and an unclosed shared pool', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-loader-exit-'));
  try {
    const script = join(dir, 'child.mts');
    const loaderUrl = new URL('../src/data/loader.ts', import.meta.url).href;
    await writeFile(
      script,
      `import { DecodePool, loadBatches } from ${JSON.stringify(loaderUrl)};
const items = Array.from({ length: 4 }, (_, i) => ({ id: 'm' + i, labels: [0], load: async () => ({ width: 4, height: 4, channels: 1, data: new Float32Array(16).fill(i / 4) }) }));
const data = { name: 'x', source: 'x', taskType: 'binary', classes: ['a', 'b'], items };
const preprocess = { inputSize: [8, 8], resizeMode: 'exact', resizeSize: [8, 8], interpolation: 'bilinear', mean: [0, 0, 0], std: [1, 1, 1] };
const owned = DecodePool.create(1);
let rows = 0;
for (const pool of [undefined, owned]) {
  for await (const batch of loadBatches(data, 0, { batchSize: 2, preprocess, channels: 3, augment: {}, seed: 1, shuffle: true, workers: 1, pool })) rows += batch.items.length;
}
// The owned pool is closed; the shared one is left open, which must not keep the process alive either.
await owned.close();
console.log('rows', rows);
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      cwd: repo,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const code = await new Promise<number | null>((done, fail) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        fail(new Error(`the child did not exit within 60 s: ${output}`));
      }, 60_000);
      child.on('exit', (exitCode) => {
        clearTimeout(timer);
        done(exitCode);
      });
    });
    assert.equal(code, 0, output);
    assert.match(output, /rows 8/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
