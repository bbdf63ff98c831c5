/**
 * MedMNIST-style `.npz` files: `<split>_images` uint8 (N, H, W) or (N, H, W, 3) and `<split>_labels`
 * (N,) or (N, 1) class indices, or (N, C) 0/1 columns for multi-label sets, for split in train/val/test.
 * Any subset of the three splits may be present (e.g. a test-only file).
 */
import { basename } from 'node:path';
import { MeloError } from '../errors.ts';
import {
  type DataItem,
  type DataSplits,
  type Dataset,
  SPLIT_NAMES,
  type SplitName,
  singleLabelTaskType,
  type TaskType,
} from './dataset.ts';
import { type ImageStack, imageStack, stackImage } from './image-array.ts';
import { medmnistInfoForFile } from './medmnist-info.ts';
import type { NpyArray } from './npy.ts';
import { readNpz } from './npz.ts';

export interface OpenNpzOptions {
  /** Only these splits are decoded (default: all that the file holds). */
  readonly splits?: readonly SplitName[];
  /** Class names, overriding the MedMNIST table and the '0', '1', … default. */
  readonly classes?: readonly string[];
}

interface SplitArrays {
  readonly split: SplitName;
  readonly stack: ImageStack;
  /** Per item: class index (single-label) or positive indices (multi-label). */
  readonly labels: number[][];
}

export async function openNpz(path: string, options: OpenNpzOptions = {}): Promise<DataSplits> {
  const wanted = options.splits ?? SPLIT_NAMES;
  const keys = wanted.flatMap((split) => [`${split}_images`, `${split}_labels`]);
  const arrays = await readNpz(path, keys);
  const present: SplitArrays[] = [];
  let multilabelColumns: number | undefined;
  let singleLabel = false;
  for (const split of wanted) {
    const images = arrays.get(`${split}_images`);
    const labels = arrays.get(`${split}_labels`);
    if (images === undefined && labels === undefined) continue;
    if (images === undefined || labels === undefined) {
      const missing = images === undefined ? `${split}_images` : `${split}_labels`;
      throw new MeloError('BAD_DATA', `has ${split} data but no '${missing}' array`, { file: path });
    }
    const stack = imageStack(images.shape, images.data, `${path}/${split}_images.npy`);
    const parsed = parseLabels(labels, stack.count, `${path}/${split}_labels.npy`);
    if (parsed.columns !== undefined) {
      if (multilabelColumns !== undefined && multilabelColumns !== parsed.columns) {
        throw new MeloError(
          'BAD_DATA',
          `label arrays disagree on the number of labels (${multilabelColumns} vs ${parsed.columns})`,
          { file: path },
        );
      }
      multilabelColumns = parsed.columns;
    } else singleLabel = true;
    present.push({ split, stack, labels: parsed.labels });
  }
  if (present.length === 0) {
    const requested = options.splits === undefined ? '' : ` for split ${wanted.join('/')}`;
    throw new MeloError(
      'BAD_DATA',
      `no <split>_images/<split>_labels arrays${requested} (expected MedMNIST keys such as 'train_images')`,
      { file: path },
    );
  }
  if (singleLabel && multilabelColumns !== undefined) {
    throw new MeloError('BAD_DATA', 'some splits have one label per image and others several', {
      file: path,
    });
  }

  const info = medmnistInfoForFile(path);
  let taskType: TaskType;
  let classes: readonly string[];
  if (multilabelColumns !== undefined) {
    taskType = 'multilabel';
    classes =
      options.classes ??
      (info?.taskType === 'multilabel' && info.classes.length === multilabelColumns
        ? info.classes
        : numberedClasses(multilabelColumns));
    if (classes.length !== multilabelColumns) {
      throw new MeloError(
        'BAD_DATA',
        `label arrays have ${multilabelColumns} columns but ${classes.length} class names were given`,
        { file: path },
      );
    }
  } else {
    let observed = 0;
    for (const { labels } of present) for (const [label] of labels) observed = Math.max(observed, label + 1);
    const known = info !== undefined && info.taskType !== 'multilabel' ? info : undefined;
    classes = options.classes ?? known?.classes ?? numberedClasses(observed);
    taskType =
      known !== undefined && options.classes === undefined
        ? known.taskType
        : singleLabelTaskType(classes.length);
  }

  const name = info?.name ?? basename(path).replace(/\.npz$/i, '');
  const splits: DataSplits = {};
  for (const { split, stack, labels } of present) {
    const items: DataItem[] = labels.map((itemLabels, index) => ({
      id: `${path}#${split}/${index}`,
      labels: itemLabels,
      load: async () => stackImage(stack, index),
    }));
    const dataset: Dataset = { name, source: path, taskType, classes, items };
    splits[split] = dataset;
  }
  return splits;
}

function numberedClasses(count: number): string[] {
  return Array.from({ length: count }, (_, index) => String(index));
}

function parseLabels(array: NpyArray, count: number, file: string): { labels: number[][]; columns?: number } {
  const shape = array.shape;
  if (shape[0] !== count) {
    throw new MeloError('BAD_DATA', `has ${shape[0]} labels for ${count} images`, { file });
  }
  const values = array.data;
  const checkValue = (value: number, index: number): number => {
    if (!Number.isInteger(value) || value < 0) {
      throw new MeloError('BAD_DATA', `label ${value} of item ${index} is not a non-negative integer`, {
        file,
      });
    }
    return value;
  };
  if (shape.length === 1 || (shape.length === 2 && shape[1] === 1)) {
    return { labels: Array.from({ length: count }, (_, index) => [checkValue(values[index], index)]) };
  }
  if (shape.length === 2) {
    const columns = shape[1];
    const labels: number[][] = [];
    for (let index = 0; index < count; index++) {
      const positives: number[] = [];
      for (let column = 0; column < columns; column++) {
        const value = values[index * columns + column];
        if (value !== 0 && value !== 1) {
          throw new MeloError(
            'BAD_DATA',
            `multi-label value ${value} of item ${index}, label ${column} is not 0 or 1`,
            { file },
          );
        }
        if (value === 1) positives.push(column);
      }
      labels.push(positives);
    }
    return { labels, columns };
  }
  throw new MeloError(
    'BAD_DATA',
    `label array has shape (${shape.join(', ')}); expected (N,), (N, 1) or (N, C)`,
    { file },
  );
}
