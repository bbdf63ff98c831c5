import type { AugmentConfig } from '../imaging/augment.ts';
import { augmentAndPreprocess } from '../imaging/augment.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import { preprocess } from '../imaging/preprocess.ts';
import { Random } from '../util/random.ts';
import type { Dataset, DataItem } from './dataset.ts';

export interface LoaderOptions {
  readonly batchSize: number;
  readonly preprocess: PreprocessConfig;
  readonly channels: 1 | 3;
  /** Training augmentation, or false for the evaluation transform (resize + center crop). */
  readonly augment: AugmentConfig | false;
  readonly seed: number;
  readonly shuffle: boolean;
  /** Batches decoded ahead of the consumer (bounded memory). */
  readonly prefetch?: number;
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

/**
 * Yields an epoch's batches from `startBatch` on. Each item's augmentation draws from its own generator,
 * seeded by (seed, epoch, item index), so the pixels are the same whatever the decoding order, the
 * number of workers, or where a resumed run starts.
 */
export async function* loadBatches(dataset: Dataset, epoch: number, options: LoaderOptions, startBatch = 0): AsyncGenerator<Batch> {
  const order = epochOrder(dataset.items.length, options.seed, epoch, options.shuffle);
  const total = batchCount(order.length, options.batchSize);
  const prefetch = Math.max(1, options.prefetch ?? 2);
  const pending: Promise<Batch>[] = [];
  let next = startBatch;
  const schedule = () => {
    while (pending.length < prefetch && next < total) {
      pending.push(decodeBatch(dataset, order, next, epoch, options));
      next++;
    }
  };
  schedule();
  while (pending.length > 0) {
    const batch = await pending.shift()!;
    schedule();
    yield batch;
  }
}

async function decodeBatch(dataset: Dataset, order: readonly number[], index: number, epoch: number, options: LoaderOptions): Promise<Batch> {
  const indices = order.slice(index * options.batchSize, (index + 1) * options.batchSize);
  const items = indices.map((i) => dataset.items[i]!);
  const [height, width] = options.preprocess.inputSize;
  const perImage = options.channels * height * width;
  const pixels = new Float32Array(items.length * perImage);
  await Promise.all(
    items.map(async (item, row) => {
      const image = await item.load();
      const chw = options.augment
        ? augmentAndPreprocess(image, options.preprocess, options.augment, new Random(mixSeed(options.seed, epoch, indices[row]!)), options.channels)
        : preprocess(image, options.preprocess, options.channels);
      pixels.set(chw, row * perImage);
    }),
  );
  return { index, items, pixels };
}

export function mixSeed(seed: number, epoch: number, salt: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (epoch + 0x632be5ab), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (salt + 0x1b873593), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
