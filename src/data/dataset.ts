/**
 * The dataset model shared by training, evaluation and `melo data check`. Every source (image folders,
 * CSV/TSV manifests, MedMNIST `.npz`, MNIST-style idx files) is opened into this one shape, so the rest of
 * melo never needs to know where the pixels came from.
 */
import type { DecodedImage } from '../imaging/image.ts';

export type TaskType = 'binary' | 'multiclass' | 'multilabel';

export type SplitName = 'train' | 'val' | 'test';

export const SPLIT_NAMES: readonly SplitName[] = ['train', 'val', 'test'];

export interface DataItem {
  /** A path for file items; `<file>#<split>/<index>` (npz) or `<file>#<index>` (idx) for array items. */
  readonly id: string;
  /**
   * Binary/multiclass: exactly one entry, the class index. Multilabel: the indices of the positive
   * labels, ascending (empty when no label applies, e.g. NIH "No Finding").
   */
  readonly labels: readonly number[];
  /** The file on disk behind a file item (absent for array items); lets checks look at the file itself. */
  readonly file?: string;
  /**
   * A plain-data description of what `load()` reads, for items whose decoding can run on a worker thread
   * (closures do not cross threads). Absent for array items: their pixels are already in memory, so the
   * loader calls `load()` in-process and ships the decoded image to a worker for augmentation.
   */
  readonly source?: ItemSource;
  /** Reads and decodes the image. Cheap to call again: array items slice memory, file items re-read. */
  load(): Promise<DecodedImage>;
}

/** An image file, decoded as `loadImageFile(path, fileKind)` does (by extension, else by content). */
export interface FileItemSource {
  readonly kind: 'file';
  readonly path: string;
  readonly fileKind?: 'image' | 'dicom';
}

/** Structured-cloneable: it is posted to worker threads as is. */
export type ItemSource = FileItemSource;

export interface Dataset {
  readonly name: string;
  /** Where the items came from (the path or spec that was opened), for messages and reports. */
  readonly source: string;
  readonly taskType: TaskType;
  readonly classes: readonly string[];
  readonly items: readonly DataItem[];
}

export interface DataSplits {
  train?: Dataset;
  val?: Dataset;
  test?: Dataset;
}

/** A dataset with the same classes and task but other items (subsets, folds, merged splits). */
export function withItems(dataset: Dataset, items: readonly DataItem[], name = dataset.name): Dataset {
  return { name, source: dataset.source, taskType: dataset.taskType, classes: dataset.classes, items };
}

/** Binary when there are exactly two classes, else multiclass; multilabel is decided by the source. */
export function singleLabelTaskType(classCount: number): TaskType {
  return classCount === 2 ? 'binary' : 'multiclass';
}

/**
 * Items per class. For binary/multiclass each item counts once for its class; for multilabel an item
 * counts once for every positive label (so counts may sum to more or less than the item count).
 */
export function classCounts(dataset: Dataset): number[] {
  const counts = new Array<number>(dataset.classes.length).fill(0);
  for (const item of dataset.items) {
    for (const label of item.labels) {
      if (Number.isInteger(label) && label >= 0 && label < counts.length) counts[label]++;
    }
  }
  return counts;
}

/** The splits that are present, in train/val/test order. */
export function presentSplits(splits: DataSplits): Array<[SplitName, Dataset]> {
  const present: Array<[SplitName, Dataset]> = [];
  for (const name of SPLIT_NAMES) {
    const dataset = splits[name];
    if (dataset !== undefined) present.push([name, dataset]);
  }
  return present;
}

/** Maps the spellings manifests and folders use for a split onto melo's three names. */
export function normalizeSplitName(value: string): SplitName | undefined {
  switch (value.trim().toLowerCase()) {
    case 'train':
    case 'training':
      return 'train';
    case 'val':
    case 'valid':
    case 'validation':
    case 'dev':
      return 'val';
    case 'test':
    case 'testing':
      return 'test';
    default:
      return undefined;
  }
}
