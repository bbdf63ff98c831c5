/**
 * ImageFolder layout: one sub-directory per class (`root/<class>/<image>`, images may sit in nested folders), or the same inside
 * `root/train`, `root/val` (also `valid`/`validation`) and `root/test`. Classes are the sorted class
 * directory names (the union over all splits, so label indices agree between splits). Images are found
 * recursively below each class directory; hidden files and directories are skipped, as are files that are
 * neither a known image type nor DICOM.
 */
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { MeloError } from '../errors.ts';
import {
  type DataItem,
  type DataSplits,
  normalizeSplitName,
  type SplitName,
  singleLabelTaskType,
} from './dataset.ts';
import { type FileKind, fileItem, fileKindFromName, sniffDicom } from './file-item.ts';

export interface OpenImageFolderOptions {
  /** Only these splits are scanned (split layout only). */
  readonly splits?: readonly SplitName[];
}

async function subdirectories(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries
    .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
    .map((entry) => entry.name)
    .sort(byCodePoint);
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Image files below `dir`, recursively, in sorted path order, each with the decoder kind to use. */
async function imageFilesBelow(dir: string): Promise<Array<{ path: string; kind: FileKind }>> {
  const found: Array<{ path: string; kind: FileKind }> = [];
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => byCodePoint(a.name, b.name));
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      found.push(...(await imageFilesBelow(path)));
      continue;
    }
    if (!entry.isFile() && !entry.isSymbolicLink()) continue;
    const kind = fileKindFromName(entry.name);
    if (kind !== undefined) found.push({ path, kind });
    else if (!entry.name.includes('.') && (await sniffDicom(path))) found.push({ path, kind: 'dicom' });
  }
  return found;
}

const SPLIT_DIRECTORY_NAMES = new Set(['train', 'val', 'valid', 'validation', 'test']);

/** Split directories of `root` (train/val/test and their spellings), or an empty map for a flat layout. */
async function splitDirectories(root: string): Promise<Map<SplitName, string>> {
  const splits = new Map<SplitName, string>();
  for (const name of await subdirectories(root)) {
    if (!SPLIT_DIRECTORY_NAMES.has(name.toLowerCase())) continue;
    const split = normalizeSplitName(name) as SplitName;
    if (splits.has(split)) {
      throw new MeloError(
        'BAD_DATA',
        `has two directories for the ${split} split (${splits.get(split)} and ${name})`,
        {
          file: root,
        },
      );
    }
    splits.set(split, name);
  }
  return splits;
}

export async function openImageFolder(
  root: string,
  options: OpenImageFolderOptions = {},
): Promise<DataSplits> {
  const splitDirs = await splitDirectories(root);
  const layout: Array<{ split: SplitName; dir: string }> =
    splitDirs.size === 0
      ? [{ split: 'train', dir: root }]
      : [...splitDirs].map(([split, name]) => ({ split, dir: join(root, name) }));
  const scanned = layout.filter(
    ({ split }) => options.splits === undefined || options.splits.includes(split),
  );
  if (scanned.length === 0) {
    throw new MeloError('NOT_FOUND', `has no ${options.splits?.join('/')} directory`, { file: root });
  }

  // Classes come from every split directory (even unscanned ones), so indices never depend on --split.
  const classSet = new Set<string>();
  for (const { dir } of layout) for (const name of await subdirectories(dir)) classSet.add(name);
  const classes = [...classSet].sort(byCodePoint);
  if (classes.length === 0) {
    throw new MeloError('BAD_DATA', 'has no class sub-directories (expected <root>/<class>/<image files>)', {
      file: root,
    });
  }

  const splits: DataSplits = {};
  for (const { split, dir } of scanned) {
    const items: DataItem[] = [];
    for (const className of await subdirectories(dir)) {
      const label = classes.indexOf(className);
      for (const { path, kind } of await imageFilesBelow(join(dir, className))) {
        items.push(fileItem(path, [label], kind));
      }
    }
    if (items.length === 0) {
      throw new MeloError('BAD_DATA', 'has no image files in its class directories', { file: dir });
    }
    splits[split] = {
      name: basename(root),
      source: root,
      taskType: singleLabelTaskType(classes.length),
      classes,
      items,
    };
  }
  return splits;
}
