/**
 * Seeded, stratified ways of cutting a dataset: a validation split taken out of train, k-fold
 * cross-validation, and small subsets for quick runs. All of them stratify on the item's label set (the
 * class for single-label data, the exact combination of positive labels for multi-label data), keep the
 * surviving items in their original order, and give the same result for the same seed.
 */
import { MeloError } from '../errors.ts';
import { Random } from '../util/random.ts';
import { type DataItem, type Dataset, withItems } from './dataset.ts';

/** Item indices grouped by label set, groups in a fixed order, each group shuffled by `random`. */
function shuffledStrata(dataset: Dataset, random: Random): number[][] {
  const groups = new Map<string, number[]>();
  dataset.items.forEach((item, index) => {
    const key = item.labels.join(',');
    const group = groups.get(key);
    if (group === undefined) groups.set(key, [index]);
    else group.push(index);
  });
  const keys = [...groups.keys()].sort(compareLabelKeys);
  return keys.map((key) => random.shuffle(groups.get(key) as number[]));
}

function compareLabelKeys(a: string, b: string): number {
  const left = a === '' ? [] : a.split(',').map(Number);
  const right = b === '' ? [] : b.split(',').map(Number);
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    if (left[i] !== right[i]) return left[i] - right[i];
  }
  return left.length - right.length;
}

/**
 * How many of each stratum to take so that the total is exactly `total` and every stratum gets its
 * proportional share, rounded by largest remainder (ties go to the earlier stratum).
 */
function allocate(sizes: readonly number[], total: number): number[] {
  const all = sizes.reduce((sum, size) => sum + size, 0);
  if (all === 0) return sizes.map(() => 0);
  const exact = sizes.map((size) => (size * total) / all);
  const quotas = exact.map(Math.floor);
  let left = total - quotas.reduce((sum, quota) => sum + quota, 0);
  const order = exact
    .map((value, index) => ({ index, remainder: value - Math.floor(value) }))
    .sort((a, b) => b.remainder - a.remainder || a.index - b.index);
  for (const { index } of order) {
    if (left === 0) break;
    if (quotas[index] < sizes[index]) {
      quotas[index]++;
      left--;
    }
  }
  return quotas;
}

function pick(dataset: Dataset, indices: Iterable<number>): DataItem[] {
  return [...indices].sort((a, b) => a - b).map((index) => dataset.items[index]);
}

/**
 * Splits `dataset` into train and val, val holding `fraction` of the items (rounded, at least one item
 * on each side when there are two or more), with each label set represented in proportion.
 */
export function stratifiedSplit(
  dataset: Dataset,
  fraction: number,
  seed: number,
): { train: Dataset; val: Dataset } {
  if (!(fraction > 0 && fraction < 1)) {
    throw new MeloError('USAGE', `validation fraction must be between 0 and 1 (exclusive), got ${fraction}`);
  }
  const count = dataset.items.length;
  if (count < 2) {
    throw new MeloError('BAD_DATA', `cannot split ${count} item(s) into train and val`, {
      file: dataset.source,
    });
  }
  const valCount = Math.min(count - 1, Math.max(1, Math.round(fraction * count)));
  const strata = shuffledStrata(dataset, new Random(seed));
  const quotas = allocate(
    strata.map((stratum) => stratum.length),
    valCount,
  );
  const valIndices = new Set<number>();
  strata.forEach((stratum, s) => {
    for (const index of stratum.slice(0, quotas[s])) valIndices.add(index);
  });
  const trainIndices = dataset.items.map((_, index) => index).filter((index) => !valIndices.has(index));
  return {
    train: withItems(dataset, pick(dataset, trainIndices)),
    val: withItems(dataset, pick(dataset, valIndices)),
  };
}

/**
 * The fold (0 … k-1) of every item for stratified k-fold cross-validation: each label set is shuffled and
 * dealt round-robin over the folds, continuing from where the previous label set stopped, so fold sizes
 * differ by at most one and so do the per-class counts.
 */
export function foldAssignments(dataset: Dataset, k: number, seed: number): number[] {
  if (!Number.isInteger(k) || k < 2)
    throw new MeloError('USAGE', `fold count must be an integer >= 2, got ${k}`);
  if (k > dataset.items.length) {
    throw new MeloError('BAD_DATA', `cannot make ${k} folds from ${dataset.items.length} items`, {
      file: dataset.source,
    });
  }
  const folds = new Array<number>(dataset.items.length).fill(0);
  let position = 0;
  for (const stratum of shuffledStrata(dataset, new Random(seed))) {
    for (const index of stratum) folds[index] = position++ % k;
  }
  return folds;
}

/** Fold `fold` (0-based) of `k` as val, the other k-1 folds as train. */
export function kFoldSplit(
  dataset: Dataset,
  fold: number,
  k: number,
  seed: number,
): { train: Dataset; val: Dataset } {
  if (!Number.isInteger(fold) || fold < 0 || fold >= k) {
    throw new MeloError('USAGE', `fold index must be an integer from 0 to ${k - 1}, got ${fold}`);
  }
  const folds = foldAssignments(dataset, k, seed);
  return {
    train: withItems(
      dataset,
      dataset.items.filter((_, index) => folds[index] !== fold),
    ),
    val: withItems(
      dataset,
      dataset.items.filter((_, index) => folds[index] === fold),
    ),
  };
}

/**
 * A seeded subset of `count` items (all of them when there are fewer) that keeps the label-set
 * proportions: the same in expectation as "the first N after a seeded shuffle", but no class is over- or
 * under-represented by more than one item, so small quick-run subsets do not lose classes by chance.
 */
export function subsample(dataset: Dataset, count: number, seed: number): Dataset {
  if (!Number.isInteger(count) || count < 1)
    throw new MeloError('USAGE', `limit must be a positive integer, got ${count}`);
  if (count >= dataset.items.length) return dataset;
  const strata = shuffledStrata(dataset, new Random(seed));
  const quotas = allocate(
    strata.map((stratum) => stratum.length),
    count,
  );
  return withItems(
    dataset,
    pick(
      dataset,
      strata.flatMap((stratum, s) => stratum.slice(0, quotas[s])),
    ),
  );
}

/** At most `perClass` seeded-random items of every label set. */
export function subsamplePerClass(dataset: Dataset, perClass: number, seed: number): Dataset {
  if (!Number.isInteger(perClass) || perClass < 1) {
    throw new MeloError('USAGE', `per-class limit must be a positive integer, got ${perClass}`);
  }
  const strata = shuffledStrata(dataset, new Random(seed));
  return withItems(
    dataset,
    pick(
      dataset,
      strata.flatMap((stratum) => stratum.slice(0, perClass)),
    ),
  );
}
