import type { AugmentConfig } from '../imaging/augment.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import { Random } from '../util/random.ts';
import type { DataItem, Dataset } from './dataset.ts';
import {
  checkWorkerCount,
  type DecodePool,
  defaultWorkerCount,
  sharedDecodePool,
} from './workers/decode-pool.ts';
import { type ItemTransform, transformImage } from './workers/item-transform.ts';
import type { DecodeTask } from './workers/protocol.ts';

export interface LoaderOptions {
  readonly batchSize: number;
  readonly preprocess: PreprocessConfig;
  readonly channels: 1 | 3;
  /** Training augmentation, or false for the evaluation transform (resize + center crop). */
  readonly augment: AugmentConfig | false;
  readonly seed: number;
  readonly shuffle: boolean;
  /** Batches decoded ahead of the consumer (bounded memory). Default 2. */
  readonly prefetch?: number;
  /**
   * Worker threads that decode and augment; 0 decodes in-process. Default: one less than the cores, at
   * least 1. Ignored when `pool` is given. Without a pool, the process-wide pool of this size is used
   * (started once, reused by every later call).
   */
  readonly workers?: number;
  /** A pool owned by the caller (e.g. one per training run), closed by the caller. */
  readonly pool?: DecodePool;
}

export interface Batch {
  /** Position of this batch in its epoch. */
  readonly index: number;
  readonly items: readonly DataItem[];
  /** [items.length, C, H, W] */
  readonly pixels: Float32Array;
}

/** The order of an epoch's items: a seeded shuffle that depends only on (seed, epoch). */
export function epochOrder(count: number, seed: number, epoch: number, shuffle: boolean): number[] {
  const order = Array.from({ length: count }, (_, i) => i);
  return shuffle ? new Random(mixSeed(seed, epoch, 0x5eed)).shuffle(order) : order;
}

export function batchCount(count: number, batchSize: number): number {
  return Math.ceil(count / batchSize);
}

/** Makes one item's CHW tensor; `seed` is the item's own augmentation seed. */
type ItemDecoder = (item: DataItem, seed: number) => Promise<Float32Array>;

/**
 * Yields an epoch's batches from `startBatch` on. Each item's augmentation draws from its own generator,
 * seeded by (seed, epoch, item index), so the pixels are the same whatever the decoding order, the
 * number of workers, or where a resumed run starts.
 *
 * Up to `prefetch` batches are being decoded (on worker threads unless `workers` is 0) while the consumer
 * works on the current one, so memory stays bounded by about prefetch + 1 batches.
 */
export async function* loadBatches(
  dataset: Dataset,
  epoch: number,
  options: LoaderOptions,
  startBatch = 0,
): AsyncGenerator<Batch> {
  const order = epochOrder(dataset.items.length, options.seed, epoch, options.shuffle);
  const total = batchCount(order.length, options.batchSize);
  const prefetch = Math.max(1, options.prefetch ?? 2);
  const decodeItem = itemDecoder(options);
  const pending: Promise<Batch>[] = [];
  let next = startBatch;
  const schedule = () => {
    while (pending.length < prefetch && next < total) {
      pending.push(decodeBatch(dataset, order, next, epoch, options, decodeItem));
      next++;
    }
  };
  try {
    schedule();
    while (pending.length > 0) {
      const batch = await pending.shift()!;
      schedule();
      yield batch;
    }
  } finally {
    // The consumer stopped early (or a batch failed): batches still in flight finish in the background
    // (at most `prefetch` of them); their results and errors are dropped, not left unhandled.
    for (const batch of pending) batch.catch(() => undefined);
  }
}

function itemDecoder(options: LoaderOptions): ItemDecoder {
  const transform: ItemTransform = {
    preprocess: options.preprocess,
    channels: options.channels,
    augment: options.augment,
  };
  const workers = checkWorkerCount(options.workers ?? defaultWorkerCount());
  if (options.pool === undefined && workers === 0) {
    return async (item, seed) => transformImage(await item.load(), transform, seed);
  }
  const pool = options.pool ?? sharedDecodePool(workers);
  return async (item, seed) => {
    // Items without a plain-data source (in-memory arrays) are read here, which is a slice, and only
    // their augmentation moves to a worker.
    const input: DecodeTask['input'] =
      item.source !== undefined
        ? { kind: 'source', source: item.source }
        : { kind: 'image', image: await item.load() };
    return pool.decode({ input, transform, seed });
  };
}

async function decodeBatch(
  dataset: Dataset,
  order: readonly number[],
  index: number,
  epoch: number,
  options: LoaderOptions,
  decodeItem: ItemDecoder,
): Promise<Batch> {
  const indices = order.slice(index * options.batchSize, (index + 1) * options.batchSize);
  const items = indices.map((i) => dataset.items[i]!);
  const [height, width] = options.preprocess.inputSize;
  const perImage = options.channels * height * width;
  const pixels = new Float32Array(items.length * perImage);
  const settled = await Promise.allSettled(
    items.map(async (item, row) => {
      const chw = await decodeItem(item, mixSeed(options.seed, epoch, indices[row]!));
      if (chw.length !== perImage)
        throw new Error(`loader: item ${item.id} gave ${chw.length} values, expected ${perImage}`);
      pixels.set(chw, row * perImage);
    }),
  );
  // The first failing item in batch order, so the error does not depend on which worker finished first.
  for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason;
  return { index, items, pixels };
}

export function mixSeed(seed: number, epoch: number, salt: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (epoch + 0x632be5ab), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (salt + 0x1b873593), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

export { closeSharedDecodePools, DecodePool, defaultWorkerCount } from './workers/decode-pool.ts';
