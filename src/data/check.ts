/**
 * `melo data check`: reads every item of every split once and reports everything that would break or
 * quietly spoil a training run, all at once rather than one failure per run.
 */
import { stat } from 'node:fs/promises';
import { errorMessage } from '../errors.ts';
import type { DecodedImage } from '../imaging/image.ts';
import { firstNonFinite } from '../util/finite.ts';
import {
  classCounts,
  type DataItem,
  type DataSplits,
  type Dataset,
  presentSplits,
  type SplitName,
  type TaskType,
} from './dataset.ts';

export type DataIssueKind =
  | 'undecodable'
  | 'zero-size'
  | 'non-finite-pixels'
  | 'constant-image'
  | 'unexpected-channels'
  | 'tiny-image'
  | 'duplicate-path'
  | 'label-out-of-range'
  | 'empty-class';

export interface DataIssue {
  readonly split: SplitName;
  /** The item's id (its path for file items); the split's source for 'empty-class'. */
  readonly id: string;
  readonly kind: DataIssueKind;
  readonly detail: string;
}

export interface SplitSummary {
  readonly split: SplitName;
  readonly name: string;
  readonly source: string;
  readonly taskType: TaskType;
  readonly classes: readonly string[];
  readonly items: number;
  /** Per class: items of that class (multilabel: items with that label positive). */
  readonly classCounts: readonly number[];
  /** Multilabel only: items with no positive label. */
  readonly unlabelled?: number;
  /** Decoded items per channel count, e.g. { '1': 540, '3': 6 }. */
  readonly channels: Readonly<Record<string, number>>;
}

export interface DataCheckReport {
  readonly ok: boolean;
  readonly splits: readonly SplitSummary[];
  readonly issues: readonly DataIssue[];
}

export interface CheckOptions {
  /** Items decoded at once (default 8). */
  readonly concurrency?: number;
  /** Smallest accepted width/height in pixels (default 8). */
  readonly minSize?: number;
}

interface Inspection {
  readonly item: DataItem;
  readonly image?: { width: number; height: number; channels: number; constant?: number; nonFinite: boolean };
}

async function inspect(
  split: SplitName,
  item: DataItem,
  minSize: number,
  issues: DataIssue[],
): Promise<Inspection> {
  const report = (kind: DataIssueKind, detail: string) => issues.push({ split, id: item.id, kind, detail });
  if (item.file !== undefined) {
    try {
      if ((await stat(item.file)).size === 0) {
        report('zero-size', 'file is empty (0 bytes)');
        return { item };
      }
    } catch (error) {
      report('undecodable', `cannot read file: ${errorMessage(error)}`);
      return { item };
    }
  }
  let image: DecodedImage;
  try {
    image = await item.load();
  } catch (error) {
    report('undecodable', errorMessage(error));
    return { item };
  }
  if (image.width < minSize || image.height < minSize) {
    report('tiny-image', `${image.width}x${image.height} px is smaller than ${minSize} px`);
  }
  const nonFinite = countNonFinite(image.data);
  if (nonFinite > 0) {
    report(
      'non-finite-pixels',
      `${nonFinite} of ${image.data.length} values are NaN or infinite (first: ${image.data[firstNonFinite(image.data)]})`,
    );
  }
  return {
    item,
    image: {
      width: image.width,
      height: image.height,
      channels: image.channels,
      constant: constantValue(image),
      nonFinite: nonFinite > 0,
    },
  };
}

function countNonFinite(data: Float32Array): number {
  let count = 0;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) count++;
  return count;
}

/** The single value of an image whose pixels are all the same, else undefined. */
function constantValue(image: DecodedImage): number | undefined {
  const data = image.data;
  if (data.length === 0) return undefined;
  const first = data[0];
  for (let i = 1; i < data.length; i++) if (data[i] !== first) return undefined;
  return first;
}

function checkLabels(split: SplitName, dataset: Dataset, item: DataItem, issues: DataIssue[]): void {
  const count = dataset.classes.length;
  const bad = item.labels.filter((label) => !Number.isInteger(label) || label < 0 || label >= count);
  if (bad.length > 0) {
    issues.push({
      split,
      id: item.id,
      kind: 'label-out-of-range',
      detail: `label ${bad.join(', ')} outside 0..${count - 1} (${count} classes)`,
    });
  } else if (dataset.taskType !== 'multilabel' && item.labels.length !== 1) {
    issues.push({
      split,
      id: item.id,
      kind: 'label-out-of-range',
      detail: `${item.labels.length} labels on a single-label (${dataset.taskType}) item`,
    });
  }
}

async function mapConcurrent<T, R>(
  values: readonly T[],
  limit: number,
  task: (value: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(values.length);
  let next = 0;
  const worker = async () => {
    while (next < values.length) {
      const index = next++;
      results[index] = await task(values[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, values.length)) }, worker));
  return results;
}

export async function checkDataset(splits: DataSplits, options: CheckOptions = {}): Promise<DataCheckReport> {
  const minSize = options.minSize ?? 8;
  const concurrency = options.concurrency ?? 8;
  const issues: DataIssue[] = [];
  const summaries: SplitSummary[] = [];
  const firstSeen = new Map<string, SplitName>();

  for (const [split, dataset] of presentSplits(splits)) {
    const splitIssues: DataIssue[] = [];
    for (const item of dataset.items) {
      const seenIn = firstSeen.get(item.id);
      if (seenIn !== undefined) {
        splitIssues.push({
          split,
          id: item.id,
          kind: 'duplicate-path',
          detail:
            seenIn === split
              ? `listed more than once in ${split}`
              : `also in ${seenIn} (leaks between splits)`,
        });
      } else firstSeen.set(item.id, split);
      checkLabels(split, dataset, item, splitIssues);
    }

    const inspections = await mapConcurrent(dataset.items, concurrency, (item) =>
      inspect(split, item, minSize, splitIssues),
    );
    const channels: Record<string, number> = {};
    for (const { image } of inspections)
      if (image) channels[image.channels] = (channels[image.channels] ?? 0) + 1;
    const decoded = Object.values(channels).reduce((sum, count) => sum + count, 0);
    const majority = Object.entries(channels).sort(
      (a, b) => b[1] - a[1] || Number(a[0]) - Number(b[0]),
    )[0]?.[0];
    for (const { item, image } of inspections) {
      if (image === undefined) continue;
      if (image.constant !== undefined && !image.nonFinite) {
        splitIssues.push({
          split,
          id: item.id,
          kind: 'constant-image',
          detail: `every pixel is ${image.constant.toFixed(4)}`,
        });
      }
      if (majority !== undefined && String(image.channels) !== majority) {
        splitIssues.push({
          split,
          id: item.id,
          kind: 'unexpected-channels',
          detail: `${image.channels} channel(s) where ${channels[majority]} of ${decoded} decoded items have ${majority}`,
        });
      }
    }

    const counts = classCounts(dataset);
    if (split === 'train') {
      counts.forEach((count, index) => {
        if (count === 0) {
          splitIssues.push({
            split,
            id: dataset.source,
            kind: 'empty-class',
            detail: `class ${index} '${dataset.classes[index]}' has no training items`,
          });
        }
      });
    }
    const position = new Map<string, number>();
    dataset.items.forEach((item, index) => {
      if (!position.has(item.id)) position.set(item.id, index);
    });
    // Dataset-level issues (empty classes) have no item and go last.
    const itemIndex = (issue: DataIssue) => position.get(issue.id) ?? Number.POSITIVE_INFINITY;
    splitIssues.sort((a, b) => {
      const [x, y] = [itemIndex(a), itemIndex(b)];
      return x === y ? 0 : x < y ? -1 : 1;
    });
    // A loop, not push(...splitIssues): spreading 200,000 issues as arguments overflowed the stack.
    for (const issue of splitIssues) issues.push(issue);
    summaries.push({
      split,
      name: dataset.name,
      source: dataset.source,
      taskType: dataset.taskType,
      classes: dataset.classes,
      items: dataset.items.length,
      classCounts: counts,
      ...(dataset.taskType === 'multilabel'
        ? { unlabelled: dataset.items.filter((item) => item.labels.length === 0).length }
        : {}),
      channels,
    });
  }
  return { ok: issues.length === 0, splits: summaries, issues };
}

/** Issues listed one per line in the text report; the rest are counted by kind (`--json` has them all). */
export const MAX_LISTED_ISSUES = 100;

/** The report as plain text: one line per issue (at most `maxListed`), then class counts per split. */
export function formatDataCheckReport(report: DataCheckReport, maxListed = MAX_LISTED_ISSUES): string {
  const lines: string[] = [];
  for (const issue of report.issues.slice(0, maxListed))
    lines.push(`${issue.split}\t${issue.kind}\t${issue.id}\t${issue.detail}`);
  if (report.issues.length > maxListed) {
    const byKind = new Map<DataIssueKind, number>();
    for (const issue of report.issues.slice(maxListed))
      byKind.set(issue.kind, (byKind.get(issue.kind) ?? 0) + 1);
    const counts = [...byKind].map(([kind, count]) => `${count} ${kind}`).join(', ');
    lines.push(`… and ${report.issues.length - maxListed} more (${counts}); --json lists them all`);
  }
  if (report.issues.length > 0) lines.push('');
  for (const summary of report.splits) {
    const channels = Object.entries(summary.channels)
      .map(([count, items]) => `${items}x${count}ch`)
      .join(', ');
    lines.push(
      `${summary.split}: ${summary.items} items, ${summary.classes.length} classes (${summary.taskType})${channels ? `, ${channels}` : ''}`,
    );
    const width = Math.max(...summary.classes.map((name) => name.length), 5);
    summary.classes.forEach((name, index) => {
      lines.push(`  ${String(index).padStart(3)}  ${name.padEnd(width)}  ${summary.classCounts[index]}`);
    });
    if (summary.unlabelled !== undefined)
      lines.push(`       ${'(none)'.padEnd(width)}  ${summary.unlabelled}`);
  }
  lines.push(
    report.ok
      ? 'no problems found'
      : `${report.issues.length} problem${report.issues.length === 1 ? '' : 's'} found`,
  );
  return `${lines.join('\n')}\n`;
}
