/**
 * CSV/TSV manifests: one row per image with a path column (relative to the manifest's directory, or
 * absolute), labels, and optionally a split column. Labels come in three shapes:
 *
 *  - one column of class names or numbers → binary/multiclass;
 *  - one column of `|`-separated label names (NIH ChestX-ray14 `Finding Labels`), where `No Finding`
 *    means no positive label → multilabel;
 *  - several columns of 0/1 (one per label, the column name being the label) → multilabel.
 *
 * Column detection when options do not name them (names compared case-insensitively, ignoring spaces,
 * '_' and other punctuation, so 'Image Index' matches 'imageindex'):
 *  - path: the first of path, filepath, file, filename, image, imagepath, imagefile, imagename, imageindex,
 *    img, imgpath;
 *  - split: split, subset or partition; values train, val/valid/validation, test (any case);
 *  - labels: a column named label, labels, class, classname, target, diagnosis, findinglabels, findings
 *    or category; otherwise, the columns whose every value is 0 or 1 when there are two or more of them;
 *    otherwise the only column left, if there is exactly one.
 * A label column is split on `|` when `labelSeparator` is given or when any of its values contains `|`.
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, extname, isAbsolute, join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { MeloError } from '../errors.ts';
import {
  type DataItem,
  type DataSplits,
  normalizeSplitName,
  type SplitName,
  singleLabelTaskType,
  type TaskType,
} from './dataset.ts';
import { fileItem } from './file-item.ts';

export interface ManifestOptions {
  readonly pathColumn?: string;
  /** One column (class names, or separated label names) or several 0/1 columns. */
  readonly labelColumns?: readonly string[];
  readonly splitColumn?: string;
  /** Splits a single label column into several labels (multilabel), e.g. '|'. */
  readonly labelSeparator?: string;
  /** Class names in index order; labels not in the list are an error. Default: sorted labels seen. */
  readonly classes?: readonly string[];
  /** Only rows of these splits become items. */
  readonly splits?: readonly SplitName[];
}

const PATH_NAMES = [
  'path',
  'filepath',
  'file',
  'filename',
  'image',
  'imagepath',
  'imagefile',
  'imagename',
  'imageindex',
  'img',
  'imgpath',
];
const SPLIT_NAMES_IN_HEADER = ['split', 'subset', 'partition'];
const LABEL_NAMES = [
  'label',
  'labels',
  'class',
  'classname',
  'target',
  'diagnosis',
  'findinglabels',
  'findings',
  'category',
];
/** The NIH ChestX-ray14 value for an image with none of the labels. */
const NO_FINDING = 'no finding';

function normalizeHeader(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]/g, '');
}

interface Row {
  readonly line: number;
  readonly values: readonly string[];
}

type LabelLayout =
  | { readonly kind: 'single'; readonly column: number }
  | { readonly kind: 'separated'; readonly column: number; readonly separator: string }
  | { readonly kind: 'binary-columns'; readonly columns: readonly number[] };

async function readRows(manifest: string): Promise<{ header: string[]; rows: Row[] }> {
  let text: string;
  try {
    text = await readFile(manifest, 'utf8');
  } catch (error) {
    throw new MeloError(
      'NOT_FOUND',
      `cannot read manifest (${(error as NodeJS.ErrnoException).code ?? error})`,
      {
        file: manifest,
      },
    );
  }
  const delimiter = extname(manifest).toLowerCase() === '.tsv' ? '\t' : ',';
  let records: Array<{ record: string[]; info: { lines: number } }>;
  try {
    // With `info: true` each record comes with the line it started on, for row-level error messages.
    records = parse(text, {
      delimiter,
      bom: true,
      info: true,
      skip_empty_lines: true,
      relax_quotes: true,
    }) as unknown as Array<{ record: string[]; info: { lines: number } }>;
  } catch (error) {
    throw new MeloError(
      'BAD_DATA',
      `not a readable ${delimiter === '\t' ? 'TSV' : 'CSV'} file: ${(error as Error).message}`,
      {
        file: manifest,
      },
    );
  }
  if (records.length === 0) throw new MeloError('BAD_DATA', 'manifest is empty', { file: manifest });
  const [first, ...rest] = records;
  const header = first.record.map((name) => name.trim());
  if (rest.length === 0)
    throw new MeloError('BAD_DATA', 'manifest has a header but no rows', { file: manifest });
  return {
    header,
    rows: rest.map(({ record, info }) => ({ line: info.lines, values: record.map((v) => v.trim()) })),
  };
}

function columnIndex(header: readonly string[], name: string, what: string, manifest: string): number {
  const index = header.indexOf(name);
  if (index >= 0) return index;
  const loose = header.findIndex((column) => normalizeHeader(column) === normalizeHeader(name));
  if (loose >= 0) return loose;
  throw new MeloError('BAD_DATA', `no ${what} column '${name}' (columns: ${header.join(', ')})`, {
    file: manifest,
  });
}

function detectColumn(header: readonly string[], names: readonly string[]): number {
  for (const name of names) {
    const index = header.findIndex((column) => normalizeHeader(column) === name);
    if (index >= 0) return index;
  }
  return -1;
}

const isBinaryValue = (value: string): boolean => /^[01](\.0*)?$/.test(value);

function detectLabels(
  header: readonly string[],
  rows: readonly Row[],
  taken: ReadonlySet<number>,
  options: ManifestOptions,
  manifest: string,
): LabelLayout {
  const fromSingleColumn = (column: number): LabelLayout => {
    if (options.labelSeparator !== undefined) {
      if (options.labelSeparator === '') throw new MeloError('USAGE', 'label separator must not be empty');
      return { kind: 'separated', column, separator: options.labelSeparator };
    }
    return rows.some((row) => row.values[column]?.includes('|'))
      ? { kind: 'separated', column, separator: '|' }
      : { kind: 'single', column };
  };
  if (options.labelColumns !== undefined) {
    const columns = options.labelColumns.map((name) => columnIndex(header, name, 'label', manifest));
    if (columns.length === 0) throw new MeloError('USAGE', 'label columns must name at least one column');
    return columns.length === 1 ? fromSingleColumn(columns[0]) : { kind: 'binary-columns', columns };
  }
  const named = detectColumn(header, LABEL_NAMES);
  if (named >= 0 && !taken.has(named)) return fromSingleColumn(named);
  const rest = header.map((_, index) => index).filter((index) => !taken.has(index));
  const binary = rest.filter((column) => rows.every((row) => isBinaryValue(row.values[column] ?? '')));
  if (binary.length >= 2) return { kind: 'binary-columns', columns: binary };
  if (rest.length === 1) return fromSingleColumn(rest[0]);
  throw new MeloError(
    'BAD_DATA',
    `cannot tell which column holds the labels (columns: ${header.join(', ')}); name it with labelColumns (--label-columns)`,
    { file: manifest },
  );
}

function sortedClassNames(values: Iterable<string>): string[] {
  const unique = [...new Set(values)];
  if (unique.every((value) => /^-?\d+$/.test(value))) return unique.sort((a, b) => Number(a) - Number(b));
  return unique.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export async function openManifest(manifest: string, options: ManifestOptions = {}): Promise<DataSplits> {
  const { header, rows } = await readRows(manifest);
  const rowError = (row: Row, message: string) =>
    new MeloError('BAD_DATA', `line ${row.line}: ${message}`, { file: manifest });

  const pathColumn =
    options.pathColumn !== undefined
      ? columnIndex(header, options.pathColumn, 'path', manifest)
      : detectColumn(header, PATH_NAMES);
  if (pathColumn < 0) {
    throw new MeloError(
      'BAD_DATA',
      `cannot find the image path column (columns: ${header.join(', ')}); name it with pathColumn (--path-column)`,
      { file: manifest },
    );
  }
  const splitColumn =
    options.splitColumn !== undefined
      ? columnIndex(header, options.splitColumn, 'split', manifest)
      : detectColumn(header, SPLIT_NAMES_IN_HEADER);
  const taken = new Set([pathColumn, ...(splitColumn >= 0 ? [splitColumn] : [])]);
  const layout = detectLabels(header, rows, taken, options, manifest);

  const cell = (row: Row, column: number, what: string): string => {
    const value = row.values[column];
    if (value === undefined || value === '')
      throw rowError(row, `${what} column '${header[column]}' is empty`);
    return value;
  };

  // Label names per row first, so that classes can be the sorted set of everything seen.
  const rowLabels: string[][] = rows.map((row): string[] => {
    if (layout.kind === 'single') return [cell(row, layout.column, 'label')];
    if (layout.kind === 'separated') {
      const tokens = cell(row, layout.column, 'label')
        .split(layout.separator)
        .map((token) => token.trim());
      if (tokens.some((token) => token === '')) {
        throw rowError(row, `label column '${header[layout.column]}' has an empty label`);
      }
      const none = tokens.filter((token) => token.toLowerCase() === NO_FINDING);
      if (none.length > 0 && tokens.length > 1) {
        throw rowError(row, `'${none[0]}' combined with other labels in '${header[layout.column]}'`);
      }
      return none.length > 0 ? [] : tokens;
    }
    return layout.columns
      .filter((column) => {
        const value = cell(row, column, 'label');
        if (!isBinaryValue(value)) {
          throw rowError(row, `label column '${header[column]}' has '${value}', expected 0 or 1`);
        }
        return Number(value) === 1;
      })
      .map((column) => header[column]);
  });

  const taskType: TaskType = layout.kind === 'single' ? 'multiclass' : 'multilabel';
  let classes: readonly string[];
  if (options.classes !== undefined) classes = options.classes;
  else if (layout.kind === 'binary-columns') classes = layout.columns.map((column) => header[column]);
  else classes = sortedClassNames(rowLabels.flat());
  if (classes.length === 0)
    throw new MeloError('BAD_DATA', 'no labels found in the manifest', { file: manifest });
  const classIndex = new Map(classes.map((name, index) => [name, index]));

  const base = dirname(manifest);
  const bySplit = new Map<SplitName, DataItem[]>();
  const missing: Array<{ row: Row; path: string }> = [];
  const checks: Array<Promise<void>> = [];
  rows.forEach((row, r) => {
    let split: SplitName = 'train';
    if (splitColumn >= 0) {
      const value = cell(row, splitColumn, 'split');
      const normalized = normalizeSplitName(value);
      if (normalized === undefined) throw rowError(row, `split '${value}' is not train, val or test`);
      split = normalized;
    }
    const labels = rowLabels[r].map((name) => {
      const index = classIndex.get(name);
      if (index === undefined) throw rowError(row, `label '${name}' is not one of the given classes`);
      return index;
    });
    labels.sort((a, b) => a - b);
    if (options.splits !== undefined && !options.splits.includes(split)) return;
    const relative = cell(row, pathColumn, 'path');
    const path = isAbsolute(relative) ? relative : join(base, relative);
    checks.push(
      stat(path).then(
        (info) => {
          if (!info.isFile()) missing.push({ row, path });
        },
        () => {
          missing.push({ row, path });
        },
      ),
    );
    const items = bySplit.get(split) ?? [];
    items.push(fileItem(path, labels));
    bySplit.set(split, items);
  });
  await Promise.all(checks);
  if (missing.length > 0) {
    missing.sort((a, b) => a.row.line - b.row.line);
    const { row, path } = missing[0];
    const more = missing.length > 1 ? ` (and ${missing.length - 1} more missing files)` : '';
    throw rowError(row, `image file ${path} does not exist${more}`);
  }
  if (bySplit.size === 0) {
    throw new MeloError('BAD_DATA', `no rows for split ${options.splits?.join('/')}`, { file: manifest });
  }

  const name = manifest.replace(/^.*[\\/]/, '').replace(/\.(csv|tsv)$/i, '');
  const splits: DataSplits = {};
  for (const [split, items] of bySplit) {
    splits[split] = {
      name,
      source: manifest,
      taskType: taskType === 'multilabel' ? 'multilabel' : singleLabelTaskType(classes.length),
      classes,
      items,
    };
  }
  return splits;
}
