/**
 * One entry point from a dataset spec string to train/val/test splits.
 *
 * Spec grammar:
 *   <path>                 a directory (ImageFolder, or a directory of MNIST idx files), a `.npz`
 *                          (MedMNIST keys), a `.csv`/`.tsv` manifest, or one `*-images-idx3-ubyte[.gz]`
 *   medmnist:<file>        `<file>.npz` in the MedMNIST cache (`$MELO_DATA_DIR`, else
 *                          ~/.cache/melo/medmnist), e.g. `medmnist:retinamnist`, `medmnist:breastmnist_64`
 *   bccd:<dir>             BCCD blood-cell crops (src/data/bccd.ts): <dir> holds BCCD/, or is BCCD/ itself;
 *                          a plain <path> directory holding BCCD/Annotations + BCCD/JPEGImages also opens as BCCD
 *   <either>:<split>       keep only one split: train, val (or valid/validation) or test,
 *                          e.g. `data/retinamnist.npz:test`; same as the `split` option
 *
 * Then, in this order:
 *   1. `split` keeps just that split (nothing else below applies except `limit`).
 *   2. `fold: 'i/k'` pools train and val (if any), deals the pool into k stratified folds with `seed`,
 *      and makes fold i (0-based) val and the rest train; test is untouched.
 *   3. Otherwise, when there is a train split and no val split, a stratified `valFraction` (default 0.1,
 *      0 turns it off) of train becomes val, seeded by `seed`.
 *   4. `limit` N keeps a seeded, stratified N items of every split; `limitPerClass` M keeps at most M per
 *      label set. Both come last so that val is cut from the full train set.
 */
import { stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { MeloError } from '../errors.ts';
import { isBccdRoot, openBccd } from './bccd.ts';
import { type DataSplits, normalizeSplitName, presentSplits, type SplitName, withItems } from './dataset.ts';
import { findIdxPairs, isIdxImagesFile, openIdx } from './idx-dataset.ts';
import { openImageFolder } from './image-folder.ts';
import { type ManifestOptions, openManifest } from './manifest.ts';
import { openNpz } from './medmnist.ts';
import { medmnistCacheDir } from './medmnist-fetch.ts';
import { kFoldSplit, stratifiedSplit, subsample, subsamplePerClass } from './split.ts';

export interface OpenDataOptions extends Omit<ManifestOptions, 'splits'> {
  /** Keep only this split (also expressible as a `:split` suffix on the spec). */
  readonly split?: string;
  /** 'i/k' or { index, count }: fold i (0-based) of k as val. */
  readonly fold?: string | { readonly index: number; readonly count: number };
  /** Fraction of train that becomes val when the source has no val split; default 0.1, 0 = none. */
  readonly valFraction?: number;
  /** Seed for the val split, folds and limits; default 0. */
  readonly seed?: number;
  /** At most this many items per split (seeded, stratified). */
  readonly limit?: number;
  /** At most this many items per label set in every split (seeded). */
  readonly limitPerClass?: number;
  /** Environment for `medmnist:` specs (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
}

export interface DataSpec {
  readonly path: string;
  readonly split?: SplitName;
  /** Set by a `bccd:` prefix: open `path` as BCCD whatever its layout looks like. */
  readonly format?: 'bccd';
}

const SPLIT_SUFFIX = /^(.+):(train|val|valid|validation|test)$/i;

/** Splits a spec string into the path it names and an optional split; see the grammar above. */
export function parseDataSpec(spec: string, env: NodeJS.ProcessEnv = process.env): DataSpec {
  let rest = spec.trim();
  if (rest === '') throw new MeloError('USAGE', 'empty dataset spec');
  let split: SplitName | undefined;
  const suffix = SPLIT_SUFFIX.exec(rest);
  if (suffix !== null) {
    rest = suffix[1];
    split = normalizeSplitName(suffix[2]);
  }
  if (rest.startsWith('medmnist:')) {
    const file = rest.slice('medmnist:'.length).replace(/\.npz$/i, '');
    if (!/^[a-z0-9]+(_\d+)?$/.test(file)) {
      throw new MeloError(
        'USAGE',
        `'${spec}': expected medmnist:<name>[_<size>], e.g. medmnist:retinamnist_64`,
      );
    }
    return { path: join(medmnistCacheDir(env), `${file}.npz`), split };
  }
  if (rest.startsWith('bccd:')) {
    const dir = rest.slice('bccd:'.length);
    if (dir === '')
      throw new MeloError('USAGE', `'${spec}': expected bccd:<dir>, the directory holding BCCD/`);
    return { path: dir, split, format: 'bccd' };
  }
  return { path: rest, split };
}

function parseFold(fold: NonNullable<OpenDataOptions['fold']>): { index: number; count: number } {
  if (typeof fold !== 'string') return fold;
  const match = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(fold);
  if (match === null) throw new MeloError('USAGE', `fold '${fold}' must look like i/k, e.g. 0/5`);
  return { index: Number(match[1]), count: Number(match[2]) };
}

export async function openDataSplits(spec: string, options: OpenDataOptions = {}): Promise<DataSplits> {
  const parsed = parseDataSpec(spec, options.env);
  let onlySplit = parsed.split;
  if (options.split !== undefined) {
    const optionSplit = normalizeSplitName(options.split);
    if (optionSplit === undefined)
      throw new MeloError('USAGE', `split '${options.split}' is not train, val or test`);
    if (onlySplit !== undefined && onlySplit !== optionSplit) {
      throw new MeloError(
        'USAGE',
        `spec '${spec}' selects the ${onlySplit} split but the split option says ${optionSplit}`,
      );
    }
    onlySplit = optionSplit;
  }
  if (onlySplit !== undefined && options.fold !== undefined) {
    throw new MeloError('USAGE', 'a fold cannot be combined with choosing a single split');
  }

  let splits =
    parsed.format === 'bccd'
      ? await openBccd(parsed.path, onlySplit === undefined ? {} : { splits: [onlySplit] })
      : await openSource(parsed.path, onlySplit, options);
  if (onlySplit !== undefined && splits[onlySplit] === undefined) {
    throw new MeloError('NOT_FOUND', `has no ${onlySplit} split`, { file: parsed.path });
  }

  const seed = options.seed ?? 0;
  if (options.fold !== undefined) {
    const { index, count } = parseFold(options.fold);
    const train = splits.train;
    if (train === undefined)
      throw new MeloError('BAD_DATA', 'has no train split to make folds from', { file: parsed.path });
    const pool = withItems(train, [...train.items, ...(splits.val?.items ?? [])]);
    splits = { ...kFoldSplit(pool, index, count, seed), ...(splits.test ? { test: splits.test } : {}) };
  } else if (onlySplit === undefined && splits.train !== undefined && splits.val === undefined) {
    const fraction = options.valFraction ?? 0.1;
    if (fraction > 0) splits = { ...splits, ...stratifiedSplit(splits.train, fraction, seed) };
  }

  if (options.limit !== undefined || options.limitPerClass !== undefined) {
    const limited: DataSplits = {};
    for (const [name, dataset] of presentSplits(splits)) {
      let subset = dataset;
      if (options.limitPerClass !== undefined)
        subset = subsamplePerClass(subset, options.limitPerClass, seed);
      if (options.limit !== undefined) subset = subsample(subset, options.limit, seed);
      limited[name] = subset;
    }
    splits = limited;
  }
  return splits;
}

async function openSource(
  path: string,
  onlySplit: SplitName | undefined,
  options: OpenDataOptions,
): Promise<DataSplits> {
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(path)).isDirectory();
  } catch {
    throw new MeloError('NOT_FOUND', 'dataset path does not exist', { file: path });
  }
  const splits = onlySplit === undefined ? undefined : [onlySplit];
  if (isDirectory) {
    if (await isBccdRoot(path)) return openBccd(path, { splits });
    if ((await findIdxPairs(path)).length > 0)
      return openIdx(path, true, { splits, classes: options.classes });
    return openImageFolder(path, { splits });
  }
  const extension = extname(path).toLowerCase();
  if (extension === '.npz') return openNpz(path, { splits, classes: options.classes });
  if (extension === '.csv' || extension === '.tsv') return openManifest(path, { ...options, splits });
  if (isIdxImagesFile(path)) return openIdx(path, false, { splits, classes: options.classes });
  throw new MeloError(
    'UNSUPPORTED',
    'not a dataset: expected a directory, a .npz, a .csv/.tsv manifest or a *-images-idx3-ubyte[.gz] file',
    { file: path },
  );
}
