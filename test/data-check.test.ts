import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { Command, CommanderError } from 'commander';
import sharp from 'sharp';
import { registerDataCommand } from '../src/cli/commands/data.ts';
import { checkDataset, type DataCheckReport, formatDataCheckReport } from '../src/data/check.ts';
import type { DataItem, DataSplits } from '../src/data/dataset.ts';
import { openDataSplits } from '../src/data/open.ts';

const SHARED = process.env.MELO_SHARED_DATA ?? join(import.meta.dirname, '..', '..', 'shared', 'data');
const BREAST = join(SHARED, 'medmnist', 'breastmnist.npz');

async function writePng(
  path: string,
  width: number,
  height: number,
  channels: 1 | 3,
  constant?: number,
): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const pixels = Buffer.alloc(width * height * channels);
  for (let i = 0; i < pixels.length; i++) pixels[i] = constant ?? (i * 53) % 256;
  const image = sharp(pixels, { raw: { width, height, channels } });
  // Without b-w, sharp stores one raw channel as an RGB PNG.
  await (channels === 1 ? image.toColourspace('b-w') : image).png().toFile(path);
}

/** train/{a,b,c}: two good RGB images, then one of each planted problem; c has no images. */
async function plantedFolder(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'melo-check-'));
  await writePng(join(root, 'train', 'a', 'good1.png'), 16, 16, 3);
  await writePng(join(root, 'train', 'a', 'good2.png'), 16, 12, 3);
  await writePng(join(root, 'train', 'a', 'good3.png'), 12, 16, 3);
  await writeFile(join(root, 'train', 'a', 'empty.png'), '');
  await writeFile(join(root, 'train', 'a', 'garbage.png'), 'this is not a PNG at all');
  await writePng(join(root, 'train', 'b', 'flat.png'), 16, 16, 3, 128);
  await writePng(join(root, 'train', 'b', 'grey.png'), 16, 16, 1);
  await writePng(join(root, 'train', 'b', 'tiny.png'), 4, 6, 3);
  await mkdir(join(root, 'train', 'c'));
  await writePng(join(root, 'test', 'a', 'ok.png'), 16, 16, 3);
  return root;
}

const brief = (report: DataCheckReport, root: string) =>
  report.issues.map((issue) => [issue.split, issue.kind, issue.id.replace(`${root}/`, '')]);

test('data check finds every planted problem at once, in item order, with class counts', async () => {
  const root = await plantedFolder();
  const report = await checkDataset(await openDataSplits(root, { valFraction: 0 }));
  assert.equal(report.ok, false);
  assert.deepEqual(brief(report, root), [
    ['train', 'zero-size', 'train/a/empty.png'],
    ['train', 'undecodable', 'train/a/garbage.png'],
    ['train', 'constant-image', 'train/b/flat.png'],
    ['train', 'unexpected-channels', 'train/b/grey.png'],
    ['train', 'tiny-image', 'train/b/tiny.png'],
    ['train', 'empty-class', root],
  ]);
  const detail = (kind: string) => report.issues.find((issue) => issue.kind === kind)?.detail;
  assert.match(detail('undecodable')!, /garbage\.png: not a decodable image/);
  assert.equal(detail('constant-image'), 'every pixel is 0.5020');
  assert.equal(detail('unexpected-channels'), '1 channel(s) where 5 of 6 decoded items have 3');
  assert.equal(detail('tiny-image'), '4x6 px is smaller than 8 px');
  assert.equal(detail('empty-class'), "class 2 'c' has no training items");
  const [train, test] = report.splits;
  assert.deepEqual(
    [train.split, train.items, train.classCounts, train.channels],
    ['train', 8, [5, 3, 0], { 1: 1, 3: 5 }],
  );
  assert.deepEqual([test.split, test.items, test.classCounts], ['test', 1, [1, 0, 0]]);

  const text = formatDataCheckReport(report);
  assert.match(text, /^train\tzero-size\t.*empty\.png\tfile is empty \(0 bytes\)$/m);
  assert.match(text, /^train: 8 items, 3 classes \(multiclass\), 1x1ch, 5x3ch$/m);
  assert.match(text, /^ {4}0 {2}a {6}5$/m);
  assert.match(text, /^6 problems found\n$/m);
});

test('data check flags duplicate paths within and across splits', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-check-'));
  await writePng(join(dir, 'x.png'), 16, 16, 1);
  await writePng(join(dir, 'y.png'), 16, 16, 1);
  await writeFile(
    join(dir, 'm.csv'),
    ['path,label,split', 'x.png,0,train', 'y.png,1,train', 'x.png,0,train', 'y.png,1,test'].join('\n'),
  );
  const report = await checkDataset(await openDataSplits(join(dir, 'm.csv'), { valFraction: 0 }));
  assert.deepEqual(
    report.issues.map((issue) => [issue.split, issue.kind, issue.detail]),
    [
      ['train', 'duplicate-path', 'listed more than once in train'],
      ['test', 'duplicate-path', 'also in train (leaks between splits)'],
    ],
  );
});

test('data check flags labels outside the class list and several labels on a single-label item', async () => {
  const item = (id: string, labels: number[]): DataItem => ({
    id,
    labels,
    load: async () => ({
      width: 8,
      height: 8,
      channels: 1,
      data: Float32Array.from({ length: 64 }, (_, i) => i / 64),
    }),
  });
  const splits: DataSplits = {
    train: {
      name: 'toy',
      source: 'memory',
      taskType: 'binary',
      classes: ['no', 'yes'],
      items: [item('a', [0]), item('b', [2]), item('c', [0, 1]), item('d', [1]), item('e', [-1])],
    },
  };
  const report = await checkDataset(splits);
  assert.deepEqual(
    report.issues.map((issue) => [issue.id, issue.kind, issue.detail]),
    [
      ['b', 'label-out-of-range', 'label 2 outside 0..1 (2 classes)'],
      ['c', 'label-out-of-range', '2 labels on a single-label (binary) item'],
      ['e', 'label-out-of-range', 'label -1 outside 0..1 (2 classes)'],
    ],
  );
});

test('a clean MedMNIST file checks out', { skip: !existsSync(BREAST) && 'no breastmnist.npz' }, async () => {
  const report = await checkDataset(await openDataSplits(BREAST, { split: 'test' }));
  assert.deepEqual(report.issues, []);
  assert.equal(report.ok, true);
  assert.deepEqual(report.splits[0].classCounts, [42, 114]);
  assert.deepEqual(report.splits[0].channels, { 1: 156 });
  assert.match(
    formatDataCheckReport(report),
    /test: 156 items, 2 classes \(binary\), 156x1ch\n {4}0 {2}malignant {7}42\n {4}1 {2}normal, benign {2}114\nno problems found\n$/,
  );
});

function cli(): { program: Command; out: string[] } {
  const out: string[] = [];
  const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
  registerDataCommand(program, { stdout: (text) => out.push(text), stderr: () => undefined });
  for (const command of program.commands) command.exitOverride();
  return { program, out };
}

test('melo data check: exit status 1 with --json report when anything is wrong, 0 when clean', async () => {
  const root = await plantedFolder();
  const { program, out } = cli();
  await assert.rejects(
    program.parseAsync(['data', 'check', root, '--json'], { from: 'user' }),
    (error: unknown) => {
      assert.ok(error instanceof CommanderError);
      assert.equal(error.exitCode, 1);
      return true;
    },
  );
  const report = JSON.parse(out.join('')) as DataCheckReport;
  assert.equal(report.issues.length, 6);
  assert.equal(report.ok, false);

  const clean = cli();
  await clean.program.parseAsync(['data', 'check', `${root}:test`], { from: 'user' });
  assert.match(
    clean.out.join(''),
    /^test: 1 items, 3 classes \(multiclass\), 1x3ch\n[\s\S]*no problems found\n$/,
  );
  await assert.rejects(
    cli().program.parseAsync(['data', 'check', root, '--fold', '0/2', '--split', 'test'], { from: 'user' }),
    /a fold cannot be combined with choosing a single split/,
  );
});
