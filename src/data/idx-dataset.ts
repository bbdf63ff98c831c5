/**
 * MNIST-style datasets stored as idx pairs: `<prefix>-images-idx3-ubyte[.gz]` with
 * `<prefix>-labels-idx1-ubyte[.gz]`, where prefix 'train' is the train split and 't10k' (or 'test') the
 * test split. Opened from the directory holding them or from one images file (its labels file is found
 * beside it).
 */
import { readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MeloError } from '../errors.ts';
import type { DataItem, DataSplits, SplitName } from './dataset.ts';
import { readIdx } from './idx.ts';
import { imageStack, stackImage } from './image-array.ts';

export const FASHION_MNIST_CLASSES: readonly string[] = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
];

const IMAGES_FILE = /^(train|t10k|test)-images-idx3-ubyte(\.gz)?$/;

interface IdxPair {
  readonly split: SplitName;
  readonly images: string;
  readonly labels: string;
}

/** The idx pairs in a directory, or an empty list when it holds none. */
export async function findIdxPairs(dir: string): Promise<IdxPair[]> {
  const names = await readdir(dir);
  const pairs: IdxPair[] = [];
  for (const name of names.sort()) {
    const match = IMAGES_FILE.exec(name);
    if (match === null) continue;
    pairs.push(pairFor(join(dir, name), new Set(names)));
  }
  return pairs;
}

/** True for a file name like 'train-images-idx3-ubyte.gz'. */
export function isIdxImagesFile(path: string): boolean {
  return IMAGES_FILE.test(basename(path));
}

function pairFor(imagesPath: string, siblings: ReadonlySet<string>): IdxPair {
  const match = IMAGES_FILE.exec(basename(imagesPath));
  if (match === null) throw new MeloError('BAD_DATA', 'not an idx images file name', { file: imagesPath });
  const prefix = match[1];
  const labelsName = [`${prefix}-labels-idx1-ubyte.gz`, `${prefix}-labels-idx1-ubyte`].find((name) =>
    siblings.has(name),
  );
  if (labelsName === undefined) {
    throw new MeloError('NOT_FOUND', `no ${prefix}-labels-idx1-ubyte[.gz] beside this images file`, {
      file: imagesPath,
    });
  }
  return {
    split: prefix === 'train' ? 'train' : 'test',
    images: imagesPath,
    labels: join(dirname(imagesPath), labelsName),
  };
}

export interface OpenIdxOptions {
  /** Only these splits are read. */
  readonly splits?: readonly SplitName[];
  /**
   * Class names. Default: the Fashion-MNIST names when the path mentions 'fashion' (the idx files carry
   * no names, and Fashion-MNIST shares its file names with MNIST), else '0', '1', ….
   */
  readonly classes?: readonly string[];
}

/** Opens a directory of idx pairs or a single images file. */
export async function openIdx(
  path: string,
  isDirectory: boolean,
  options: OpenIdxOptions = {},
): Promise<DataSplits> {
  let pairs: IdxPair[];
  if (isDirectory) pairs = await findIdxPairs(path);
  else pairs = [pairFor(path, new Set(await readdir(dirname(path))))];
  if (options.splits !== undefined) {
    const wanted = options.splits;
    pairs = pairs.filter((pair) => wanted.includes(pair.split));
  }
  if (pairs.length === 0) {
    throw new MeloError('NOT_FOUND', 'no idx images/labels pairs for the requested split', { file: path });
  }
  const loaded = await Promise.all(
    pairs.map(async (pair) => {
      const [images, labels] = await Promise.all([readIdx(pair.images), readIdx(pair.labels)]);
      if (images.shape.length !== 3) {
        throw new MeloError(
          'BAD_DATA',
          `idx images have shape (${images.shape.join(', ')}); expected (N, H, W)`,
          {
            file: pair.images,
          },
        );
      }
      if (labels.shape.length !== 1 || labels.shape[0] !== images.shape[0]) {
        throw new MeloError(
          'BAD_DATA',
          `labels shape (${labels.shape.join(', ')}) does not match ${images.shape[0]} images`,
          { file: pair.labels },
        );
      }
      return { pair, stack: imageStack(images.shape, images.data, pair.images), labels: labels.data };
    }),
  );
  let classCount = 0;
  for (const { labels } of loaded) for (const label of labels) classCount = Math.max(classCount, label + 1);
  const classes =
    options.classes ??
    (/fashion/i.test(path) && classCount <= FASHION_MNIST_CLASSES.length
      ? FASHION_MNIST_CLASSES
      : Array.from({ length: classCount }, (_, i) => String(i)));
  const name = /fashion/i.test(path) ? 'fashion-mnist' : basename(isDirectory ? path : dirname(path));
  const splits: DataSplits = {};
  for (const { pair, stack, labels } of loaded) {
    const items: DataItem[] = Array.from(labels, (label, index) => ({
      id: `${pair.images}#${index}`,
      labels: [label],
      load: async () => stackImage(stack, index),
    }));
    splits[pair.split] = {
      name,
      source: path,
      taskType: classes.length === 2 ? 'binary' : 'multiclass',
      classes,
      items,
    };
  }
  return splits;
}
