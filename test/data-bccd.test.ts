import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, test } from 'node:test';
import { zipSync } from 'fflate';
import sharp from 'sharp';
import { BCCD_CLASSES, type BccdOpened, openBccd, openBccdWithReport } from '../src/data/bccd.ts';
import { fetchBccd, resolveBccdDir, verifyBccdLayout } from '../src/data/bccd-fetch.ts';
import {
  classCounts,
  type DataItem,
  type Dataset,
  SPLIT_NAMES,
  type SplitName,
} from '../src/data/dataset.ts';
import { openDataSplits } from '../src/data/open.ts';
import { MeloError } from '../src/errors.ts';
import { readImageFile } from '../src/imaging/decode.ts';

const SHARED = process.env.MELO_SHARED_DATA ?? join(import.meta.dirname, '..', '..', 'shared', 'data');
const ROOT = join(SHARED, 'bccd');
const VOC = join(ROOT, 'BCCD');
const noData = !existsSync(join(VOC, 'Annotations')) && `BCCD not found at ${VOC} (set MELO_SHARED_DATA)`;

// ---------------------------------------------------------------------------------------------------
// An independent reading of the annotations: a regular expression over the XML text, not an XML parser.

interface RegexBox {
  readonly name: string;
  readonly coords: readonly [number, number, number, number];
}

const OBJECT =
  /<object>\s*<name>([^<]*)<\/name>[\s\S]*?<xmin>(-?\d+)<\/xmin>\s*<ymin>(-?\d+)<\/ymin>\s*<xmax>(-?\d+)<\/xmax>\s*<ymax>(-?\d+)<\/ymax>[\s\S]*?<\/object>/g;

function regexBoxes(xml: string): RegexBox[] {
  return [...xml.matchAll(OBJECT)].map((match) => ({
    name: match[1],
    coords: [Number(match[2]), Number(match[3]), Number(match[4]), Number(match[5])],
  }));
}

function splitIds(split: SplitName): string[] {
  return readFileSync(join(VOC, 'ImageSets', 'Main', `${split}.txt`), 'utf8')
    .split('\n')
    .filter(Boolean);
}

/**
 * The 9 boxes melo must drop, found by a Python one-off (xml.etree; a box is degenerate when xmax <= xmin
 * or ymax <= ymin, a duplicate when it overlaps an earlier kept box of its class with IoU >= 0.9 over
 * 1-based inclusive pixels). Seven RBCs were annotated twice, 2 px apart (IoU 0.92-0.93); the next most
 * overlapping same-class pair in the dataset (BloodImage_00013, IoU 0.83) is kept.
 */
const EXPECTED_DROPS: ReadonlyArray<[SplitName, string, string, 'degenerate' | 'duplicate']> = [
  ['train', 'BloodImage_00020', '142,364,249,471', 'duplicate'],
  ['train', 'BloodImage_00100', '150,144,266,255', 'duplicate'],
  ['train', 'BloodImage_00251', '1,327,117,440', 'duplicate'],
  ['train', 'BloodImage_00343', '181,329,181,329', 'degenerate'],
  ['train', 'BloodImage_00403', '337,157,464,260', 'duplicate'],
  ['val', 'BloodImage_00104', '494,243,576,341', 'duplicate'],
  ['val', 'BloodImage_00331', '180,279,287,368', 'duplicate'],
  ['val', 'BloodImage_00338', '504,337,504,337', 'degenerate'],
  ['test', 'BloodImage_00284', '225,83,326,207', 'duplicate'],
];

/** The same Python one-off's kept counts per split, [Platelets, RBC, WBC]. */
const PYTHON_KEPT: Record<SplitName, number[]> = {
  train: [209, 2377, 214],
  val: [83, 965, 87],
  test: [69, 804, 71],
};

function assertMeloError(code: string, pattern: RegExp): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof MeloError, `expected a MeloError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes('\n'), 'one-line message');
    return true;
  };
}

/** `<jpeg>#a,b,c,d` → [a, b, c, d]. */
function coordsOf(item: DataItem): [number, number, number, number] {
  const coords = item.id
    .slice(item.id.lastIndexOf('#') + 1)
    .split(',')
    .map(Number);
  assert.equal(coords.length, 4);
  return coords as [number, number, number, number];
}

async function sharpExtract(
  file: string,
  region: { left: number; top: number; width: number; height: number },
): Promise<Buffer> {
  return sharp(file).extract(region).raw().toBuffer();
}

let full: BccdOpened;

const temporaryDirs: string[] = [];
async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `melo-bccd-${label}-`));
  temporaryDirs.push(dir);
  return dir;
}
after(() => Promise.all(temporaryDirs.map((dir) => rm(dir, { recursive: true, force: true }))));

before(async () => {
  if (noData) return;
  full = await openBccdWithReport(ROOT);
});

// ---------------------------------------------------------------------------------------------------
// The real dataset.

test('per-split item and class counts equal an independent regex count minus the 9 known odd boxes', {
  skip: noData,
}, () => {
  const allXml = readdirSync(join(VOC, 'Annotations'));
  let total = 0;
  for (const file of allXml) total += regexBoxes(readFileSync(join(VOC, 'Annotations', file), 'utf8')).length;
  assert.equal(total, 4155 + 372 + 361, 'the regex sees every box the README lists');

  assert.deepEqual(full.splits.train?.classes, ['Platelets', 'RBC', 'WBC']);
  for (const split of SPLIT_NAMES) {
    const counts = [0, 0, 0];
    const ids = splitIds(split);
    for (const id of ids) {
      for (const box of regexBoxes(readFileSync(join(VOC, 'Annotations', `${id}.xml`), 'utf8'))) {
        counts[BCCD_CLASSES.indexOf(box.name as 'RBC')]++;
      }
    }
    counts[1] -= EXPECTED_DROPS.filter((drop) => drop[0] === split).length; // all nine are RBCs
    assert.deepEqual(counts, PYTHON_KEPT[split], `${split}: regex count minus drops vs Python`);
    const dataset = full.splits[split] as Dataset;
    assert.deepEqual(classCounts(dataset), counts, split);
    assert.equal(dataset.items.length, counts[0] + counts[1] + counts[2]);
    assert.equal(dataset.taskType, 'multiclass');
    assert.equal(full.report.items[split], dataset.items.length);
  }
  assert.equal(splitIds('train').length + splitIds('val').length + splitIds('test').length, 364);

  const { report } = full;
  assert.equal(report.images, 364);
  assert.equal(report.boxes, 4888);
  assert.deepEqual(report.dropped, {
    degenerate: 2,
    outside: 0,
    duplicate: 7,
    conflicting: 0,
    'unknown-class': 0,
    malformed: 0,
  });
  assert.deepEqual(
    report.droppedBoxes.map((drop) => [drop.split, basename(drop.annotation, '.xml'), drop.box, drop.reason]),
    EXPECTED_DROPS,
  );
  assert.equal(report.clamped, 0);
  assert.equal(report.capped, 0);
});

test('items are the boxes in file order with ids <jpeg>#<xmin>,<ymin>,<xmax>,<ymax>, all distinct', {
  skip: noData,
}, () => {
  const train = full.splits.train as Dataset;
  const first = splitIds('train')[0];
  const jpeg = join(VOC, 'JPEGImages', `${first}.jpg`);
  const expected = regexBoxes(readFileSync(join(VOC, 'Annotations', `${first}.xml`), 'utf8'));
  const ofFirst = train.items.filter((item) => item.id.startsWith(`${jpeg}#`));
  assert.deepEqual(
    ofFirst.map((item) => [item.id, item.labels[0], item.file]),
    expected.map((box) => [`${jpeg}#${box.coords.join(',')}`, BCCD_CLASSES.indexOf(box.name as 'RBC'), jpeg]),
  );
  const all = SPLIT_NAMES.flatMap((split) => (full.splits[split] as Dataset).items.map((item) => item.id));
  assert.equal(new Set(all).size, all.length);
  assert.ok(all.every((id) => /^.+\/BloodImage_\d{5}\.jpg#\d+,\d+,\d+,\d+$/.test(id)));
});

test('a crop is exactly sharp.extract() of the box (1-based inclusive VOC pixels) and the same region of the decoded file', {
  skip: noData,
}, async () => {
  const wbc = (full.splits.val as Dataset).items.find((item) => item.labels[0] === 2) as DataItem;
  const [xmin, ymin, xmax, ymax] = coordsOf(wbc);
  const crop = await wbc.load();
  assert.equal(crop.channels, 3);
  assert.equal(crop.width, xmax - xmin + 1);
  assert.equal(crop.height, ymax - ymin + 1);
  const region = { left: xmin - 1, top: ymin - 1, width: crop.width, height: crop.height };
  const reference = await sharpExtract(wbc.file as string, region);
  assert.equal(reference.length, crop.data.length);
  for (let i = 0; i < reference.length; i++) {
    if (crop.data[i] !== Math.fround(reference[i] / 255))
      assert.fail(`value ${i}: ${crop.data[i]} vs ${reference[i]}/255`);
  }
  const whole = await readImageFile(wbc.file as string);
  for (let y = 0; y < crop.height; y += 7) {
    for (let x = 0; x < crop.width; x += 5) {
      for (let c = 0; c < 3; c++) {
        const wholeValue = whole.data[((region.top + y) * whole.width + region.left + x) * 3 + c];
        assert.equal(crop.data[(y * crop.width + x) * 3 + c], wholeValue);
      }
    }
  }
});

test('crops have the box size, plus the margin clamped to the image; margin crops match sharp.extract()', {
  skip: noData,
}, async () => {
  const margin = 6;
  const withMargin = await openBccd(ROOT, { margin, splits: ['test'] });
  const items = (withMargin.test as Dataset).items;
  const plain = (full.splits.test as Dataset).items;
  assert.deepEqual(
    items.map((item) => item.id),
    plain.map((item) => item.id),
  );
  // Every 23rd crop, and every crop touching an image edge (where the margin must be clamped).
  const sample = items.filter((item, index) => {
    const [xmin, ymin, xmax, ymax] = coordsOf(item);
    return index % 23 === 0 || xmin <= margin || ymin <= margin || xmax > 640 - margin || ymax > 480 - margin;
  });
  assert.ok(sample.length > 60, `sample of ${sample.length}`);
  let edge = 0;
  for (const item of sample) {
    const [xmin, ymin, xmax, ymax] = coordsOf(item);
    const left = Math.max(0, xmin - 1 - margin);
    const top = Math.max(0, ymin - 1 - margin);
    const width = Math.min(640, xmax + margin) - left;
    const height = Math.min(480, ymax + margin) - top;
    if (left === 0 || top === 0 || left + width === 640 || top + height === 480) edge++;
    const crop = await item.load();
    assert.deepEqual([crop.width, crop.height], [width, height], item.id);
  }
  assert.ok(edge > 20, `${edge} edge crops`);
  const last = sample[sample.length - 1];
  const [xmin, ymin, xmax, ymax] = coordsOf(last);
  const region = {
    left: Math.max(0, xmin - 1 - margin),
    top: Math.max(0, ymin - 1 - margin),
    width: Math.min(640, xmax + margin) - Math.max(0, xmin - 1 - margin),
    height: Math.min(480, ymax + margin) - Math.max(0, ymin - 1 - margin),
  };
  const crop = await last.load();
  const reference = await sharpExtract(last.file as string, region);
  assert.deepEqual(
    Array.from(crop.data, (value) => Math.round(value * 255)),
    Array.from(reference),
  );
});

test('concurrent loads of every crop of several images give the same pixels as one-at-a-time loads', {
  skip: noData,
}, async () => {
  // More images than the decoded-JPEG cache holds, interleaved, so entries are evicted and re-decoded.
  const items = (full.splits.val as Dataset).items.slice(0, 160);
  const together = await Promise.all([...items].reverse().map((item) => item.load()));
  together.reverse();
  const fresh = await openBccd(ROOT, { splits: ['val'] });
  for (let i = 0; i < items.length; i += 9) {
    const alone = await (fresh.val as Dataset).items[i].load();
    assert.deepEqual(together[i], alone, items[i].id);
  }
});

test('classes option keeps a subset in fixed order (binary for two classes)', { skip: noData }, async () => {
  const splits = await openBccd(ROOT, { classes: ['WBC', 'Platelets'], splits: ['val'] });
  const val = splits.val as Dataset;
  assert.deepEqual(val.classes, ['Platelets', 'WBC']);
  assert.equal(val.taskType, 'binary');
  assert.deepEqual(classCounts(val), [PYTHON_KEPT.val[0], PYTHON_KEPT.val[2]]);
  const expectedIds = (full.splits.val as Dataset).items
    .filter((item) => item.labels[0] !== 1)
    .map((item) => item.id);
  assert.deepEqual(
    val.items.map((item) => item.id),
    expectedIds,
  );
});

test('maxPerImage caps one class per image with a seeded choice and leaves the others alone', {
  skip: noData,
}, async () => {
  const byImage = new Map<string, number>();
  const fullVal = full.splits.val as Dataset;
  for (const item of fullVal.items) {
    if (item.labels[0] === 1) byImage.set(item.file as string, (byImage.get(item.file as string) ?? 0) + 1);
  }
  const expectedRbc = [...byImage.values()].reduce((sum, count) => sum + Math.min(2, count), 0);

  const a = await openBccdWithReport(ROOT, { maxPerImage: { RBC: 2 }, seed: 1, splits: ['val'] });
  const again = await openBccd(ROOT, { maxPerImage: { RBC: 2 }, seed: 1, splits: ['val'] });
  const other = await openBccd(ROOT, { maxPerImage: { RBC: 2 }, seed: 2, splits: ['val'] });
  const val = a.splits.val as Dataset;
  const counts = classCounts(val);
  assert.deepEqual(counts, [PYTHON_KEPT.val[0], expectedRbc, PYTHON_KEPT.val[2]]);
  assert.equal(a.report.capped, PYTHON_KEPT.val[1] - expectedRbc);
  const perImage = new Map<string, number>();
  for (const item of val.items) {
    if (item.labels[0] === 1) perImage.set(item.file as string, (perImage.get(item.file as string) ?? 0) + 1);
  }
  assert.ok([...perImage.values()].every((count) => count <= 2));
  // Kept boxes are a subset of the uncapped items, in file order.
  const position = new Map(fullVal.items.map((item, index) => [item.id, index]));
  const positions = val.items.map((item) => position.get(item.id) as number);
  assert.ok(
    positions.every((value, index) => value !== undefined && (index === 0 || value > positions[index - 1])),
  );
  const ids = (splits: typeof again) => (splits.val as Dataset).items.map((item) => item.id);
  assert.deepEqual(ids(again), ids(a.splits));
  assert.notDeepEqual(ids(other), ids(a.splits));
  assert.equal(ids(other).length, ids(a.splits).length);
});

test('open.ts: bccd:<dir>[:split] specs and a directory holding BCCD/ open this source', {
  skip: noData,
}, async () => {
  const test = await openDataSplits(`bccd:${VOC}:test`);
  assert.deepEqual(Object.keys(test), ['test']);
  assert.deepEqual(classCounts(test.test as Dataset), PYTHON_KEPT.test);
  const auto = await openDataSplits(ROOT, { split: 'val' });
  assert.deepEqual(classCounts(auto.val as Dataset), PYTHON_KEPT.val);
  assert.equal((auto.val as Dataset).items[0].id, (full.splits.val as Dataset).items[0].id);
  await assert.rejects(openDataSplits('bccd:'), assertMeloError('USAGE', /bccd:<dir>/));
});

test('the real copy passes the download check (364 images, 364 annotations, split lists)', {
  skip: noData,
}, async () => {
  assert.equal(await verifyBccdLayout(VOC), 364);
  await assert.rejects(
    verifyBccdLayout(VOC, 365),
    assertMeloError('BAD_DATA', /364 JPEGs and 364 annotations, expected 365/),
  );
});

// ---------------------------------------------------------------------------------------------------
// Odd and bad annotations, in small datasets written here.

function vocXml(
  width: number,
  height: number,
  objects: ReadonlyArray<[string, ...(string | number)[]]>,
): string {
  const body = objects
    .map(
      ([name, xmin, ymin, xmax, ymax]) =>
        `<object><name>${name}</name><pose>Unspecified</pose><bndbox><xmin>${xmin}</xmin><ymin>${ymin}</ymin><xmax>${xmax}</xmax><ymax>${ymax}</ymax></bndbox></object>`,
    )
    .join('\n');
  return `<annotation><filename>x.jpg</filename><size><width>${width}</width><height>${height}</height><depth>3</depth></size>\n${body}\n</annotation>\n`;
}

/** A dataset root with BCCD/ holding the given images: id → [jpeg bytes, xml]; splits: id lists. */
async function writeVoc(
  images: Record<string, [Uint8Array, string]>,
  splits: Partial<Record<SplitName, string[]>>,
): Promise<string> {
  const root = await tempDir('voc');
  const voc = join(root, 'BCCD');
  for (const sub of ['Annotations', 'JPEGImages', join('ImageSets', 'Main')])
    await mkdir(join(voc, sub), { recursive: true });
  for (const [id, [jpeg, xml]] of Object.entries(images)) {
    await writeFile(join(voc, 'JPEGImages', `${id}.jpg`), jpeg);
    await writeFile(join(voc, 'Annotations', `${id}.xml`), xml);
  }
  for (const split of SPLIT_NAMES) {
    await writeFile(
      join(voc, 'ImageSets', 'Main', `${split}.txt`),
      (splits[split] ?? []).map((id) => `${id}\n`).join(''),
    );
  }
  return root;
}

let smallJpeg: Uint8Array;

before(async () => {
  // 64×48 RGB gradient, as a JPEG; crops are checked against sharp's own extract of this file.
  const raw = Buffer.alloc(64 * 48 * 3);
  for (let y = 0; y < 48; y++) {
    for (let x = 0; x < 64; x++) raw.set([x * 4, y * 5, (x + y) * 2], (y * 64 + x) * 3);
  }
  smallJpeg = await sharp(raw, { raw: { width: 64, height: 48, channels: 3 } })
    .jpeg({ quality: 95 })
    .toBuffer();
});

test('odd boxes are dropped and counted by reason; a box sticking out is clamped and kept', async () => {
  const xml = vocXml(64, 48, [
    ['RBC', 2, 3, 20, 30], // kept
    ['RBC', 10, 10, 10, 20], // zero width
    ['WBC', 30, 30, 20, 40], // negative width
    ['Platelets', 70, 10, 90, 20], // entirely right of the image
    ['WBC', 50, 20, 80, 60], // sticks out right and bottom: clamped to 50..64 × 20..48
    ['RBC', 2, 3, 20, 30], // exact duplicate of the first
    ['RBC', 3, 3, 20, 30], // 1 px narrower than the first: IoU 0.947
    ['RBC', 30, 2, 40, 12], // kept
    ['Platelets', 30, 2, 40, 12], // same coordinates as the previous, other class: both conflicting
    ['Neutrophil', 5, 5, 15, 15], // unknown class
    ['Platelets', 5, 'x', 15, 15], // non-numeric coordinate
    ['Platelets', 40, 1, 52, 9], // kept
  ]);
  const root = await writeVoc({ a: [smallJpeg, xml] }, { train: ['a'] });
  const { splits, report } = await openBccdWithReport(root);
  const train = splits.train as Dataset;
  const jpeg = join(root, 'BCCD', 'JPEGImages', 'a.jpg');
  assert.deepEqual(
    train.items.map((item) => [item.id, item.labels[0]]),
    [
      [`${jpeg}#2,3,20,30`, 1],
      [`${jpeg}#50,20,80,60`, 2],
      [`${jpeg}#40,1,52,9`, 0],
    ],
  );
  assert.deepEqual(report.dropped, {
    degenerate: 2,
    outside: 1,
    duplicate: 2,
    conflicting: 2,
    'unknown-class': 1,
    malformed: 1,
  });
  assert.equal(report.boxes, 12);
  assert.equal(report.clamped, 1);
  assert.deepEqual(
    report.droppedBoxes.map((drop) => [drop.reason, drop.name, drop.box]),
    [
      ['degenerate', 'RBC', '10,10,10,20'],
      ['degenerate', 'WBC', '30,30,20,40'],
      ['outside', 'Platelets', '70,10,90,20'],
      ['unknown-class', 'Neutrophil', '5,5,15,15'],
      ['malformed', 'Platelets', '5,x,15,15'],
      ['duplicate', 'RBC', '2,3,20,30'],
      ['duplicate', 'RBC', '3,3,20,30'],
      ['conflicting', 'RBC', '30,2,40,12'],
      ['conflicting', 'Platelets', '30,2,40,12'],
    ],
  );

  const clampedCrop = await train.items[1].load();
  assert.deepEqual([clampedCrop.width, clampedCrop.height], [64 - 49, 48 - 19]);
  const reference = await sharpExtract(jpeg, { left: 49, top: 19, width: 15, height: 29 });
  assert.deepEqual(
    Array.from(clampedCrop.data, (value) => Math.round(value * 255)),
    Array.from(reference),
  );
  const withMargin = await openBccd(root, { margin: 3 });
  const first = await (withMargin.train as Dataset).items[0].load();
  // Box 2..20 × 3..30 is columns 1..19, rows 2..29; margin 3 → columns 0..22 (clamped at 0), rows 0..32.
  assert.deepEqual([first.width, first.height], [23, 33]);

  const strict = await openBccdWithReport(root, { duplicateIou: 1 });
  assert.equal(strict.report.dropped.duplicate, 1, 'only the exact duplicate at IoU 1');
});

test('bad datasets and options fail with one-line errors naming the file', async () => {
  const good = vocXml(64, 48, [['RBC', 2, 3, 20, 30]]);
  const notBccd = await tempDir('none');
  await assert.rejects(openBccd(notBccd), assertMeloError('NOT_FOUND', /is not a BCCD dataset/));

  const broken = await writeVoc(
    { a: [smallJpeg, '<annotation><size><width>64</width></annotation>'] },
    { train: ['a'] },
  );
  await assert.rejects(
    openBccd(broken),
    assertMeloError('BAD_DATA', /a\.xml: is not well-formed XML \(line \d+/),
  );

  const noSize = await writeVoc(
    { a: [smallJpeg, '<annotation><object><name>RBC</name></object></annotation>'] },
    { train: ['a'] },
  );
  await assert.rejects(openBccd(noSize), assertMeloError('BAD_DATA', /a\.xml: has no valid <size>/));

  const twice = await writeVoc({ a: [smallJpeg, good] }, { train: ['a'], test: ['a'] });
  await assert.rejects(
    openBccd(twice),
    assertMeloError('BAD_DATA', /test\.txt: image a is listed in both the train and test splits/),
  );

  const missing = await writeVoc({ a: [smallJpeg, good] }, { train: ['a', 'b'] });
  await assert.rejects(
    openBccd(missing),
    assertMeloError('BAD_DATA', /train\.txt: lists b but JPEGImages has no b\.jpg/),
  );

  const wrongSize = await writeVoc(
    { a: [smallJpeg, vocXml(640, 480, [['RBC', 2, 3, 20, 30]])] },
    { train: ['a'] },
  );
  const item = ((await openBccd(wrongSize)).train as Dataset).items[0];
  await assert.rejects(
    item.load(),
    assertMeloError('BAD_DATA', /a\.jpg: is 64×48 but its annotation says 640×480/),
  );

  const notJpeg = await writeVoc({ a: [new Uint8Array([1, 2, 3]), good] }, { train: ['a'] });
  const bad = ((await openBccd(notJpeg)).train as Dataset).items[0];
  await assert.rejects(bad.load(), assertMeloError('BAD_IMAGE', /a\.jpg: not a decodable image/));

  const root = await writeVoc({ a: [smallJpeg, good] }, { train: ['a'] });
  await assert.rejects(
    openBccd(root, { classes: ['Monocyte' as 'RBC'] }),
    assertMeloError('USAGE', /Monocyte/),
  );
  await assert.rejects(openBccd(root, { margin: -1 }), assertMeloError('USAGE', /margin/));
  await assert.rejects(
    openBccd(root, { maxPerImage: { RBC: 1.5 } }),
    assertMeloError('USAGE', /maxPerImage\.RBC/),
  );
});

// ---------------------------------------------------------------------------------------------------
// Download, against a local server (this machine is offline).

const served = new Map<string, Uint8Array>();
const requests: string[] = [];
let server: Server;
let base: string;
const SMALL_IDS = ['BloodImage_00000', 'BloodImage_00001', 'BloodImage_00003'];

function archive(
  options: { prefix?: string; dropImages?: number; extra?: Record<string, Uint8Array> } = {},
): Uint8Array {
  const prefix = options.prefix ?? 'BCCD_Dataset-master/';
  const files: Record<string, Uint8Array> = {
    [`${prefix}LICENSE`]: new TextEncoder().encode('MIT License\n'),
    [`${prefix}scripts/split.py`]: new TextEncoder().encode('print("not extracted")\n'),
    [`${prefix}BCCD/ImageSets/Main/train.txt`]: new TextEncoder().encode(
      `${SMALL_IDS[0]}\n${SMALL_IDS[1]}\n`,
    ),
    [`${prefix}BCCD/ImageSets/Main/val.txt`]: new TextEncoder().encode(`${SMALL_IDS[2]}\n`),
    [`${prefix}BCCD/ImageSets/Main/test.txt`]: new Uint8Array(),
    ...options.extra,
  };
  SMALL_IDS.forEach((id, index) => {
    files[`${prefix}BCCD/Annotations/${id}.xml`] = readFileSync(join(VOC, 'Annotations', `${id}.xml`));
    if (index >= SMALL_IDS.length - (options.dropImages ?? 0)) return;
    files[`${prefix}BCCD/JPEGImages/${id}.jpg`] = readFileSync(join(VOC, 'JPEGImages', `${id}.jpg`));
  });
  return zipSync(files, { level: 1 });
}

before(async () => {
  server = createServer((request, response) => {
    requests.push(request.url ?? '');
    const body = served.get(request.url ?? '');
    if (body === undefined) {
      response.writeHead(404, 'Not Found').end();
      return;
    }
    response.writeHead(200, { 'content-length': body.length, 'content-type': 'application/zip' });
    response.write(body.subarray(0, body.length >> 1));
    response.end(body.subarray(body.length >> 1));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  if (noData) return;
  served.set('/good.zip', archive());
  served.set('/flat.zip', archive({ prefix: '' }));
  served.set('/incomplete.zip', archive({ dropImages: 1 }));
  served.set(
    '/unsafe.zip',
    archive({ extra: { 'BCCD_Dataset-master/BCCD/JPEGImages/..': new Uint8Array([1]) } }),
  );
  served.set('/no-bccd.zip', zipSync({ 'repo-master/README.md': new TextEncoder().encode('# nothing\n') }));
  served.set('/not-a-zip.zip', randomBytes(5000));
});

after(() => new Promise<void>((resolve) => server.close(() => resolve())));

async function entriesBelow(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

test('fetchBccd downloads, unpacks BCCD/ and LICENSE (not the scripts), and reuses the copy without a request', {
  skip: noData,
}, async () => {
  const parent = await tempDir('fetch');
  const dir = join(parent, 'cache', 'bccd');
  const progress: number[] = [];
  const result = await fetchBccd({
    dir,
    url: `${base}/good.zip`,
    expectedImages: 3,
    onProgress: (received) => progress.push(received),
  });
  assert.deepEqual(result, { dir, downloaded: true });
  assert.equal(progress.at(-1), (served.get('/good.zip') as Uint8Array).length);
  assert.deepEqual(await readdir(join(parent, 'cache')), ['bccd'], 'no temporary directory left');
  assert.deepEqual(await entriesBelow(dir), [
    'BCCD',
    'BCCD/Annotations',
    ...SMALL_IDS.map((id) => `BCCD/Annotations/${id}.xml`),
    'BCCD/ImageSets',
    'BCCD/ImageSets/Main',
    'BCCD/ImageSets/Main/test.txt',
    'BCCD/ImageSets/Main/train.txt',
    'BCCD/ImageSets/Main/val.txt',
    'BCCD/JPEGImages',
    ...SMALL_IDS.map((id) => `BCCD/JPEGImages/${id}.jpg`),
    'LICENSE',
  ]);
  assert.deepEqual(
    await readFile(join(dir, 'BCCD', 'JPEGImages', `${SMALL_IDS[1]}.jpg`)),
    readFileSync(join(VOC, 'JPEGImages', `${SMALL_IDS[1]}.jpg`)),
  );
  const splits = await openBccd(dir);
  const regexCount = (id: string) =>
    regexBoxes(readFileSync(join(VOC, 'Annotations', `${id}.xml`), 'utf8')).length;
  assert.equal((splits.train as Dataset).items.length, regexCount(SMALL_IDS[0]) + regexCount(SMALL_IDS[1]));
  assert.equal((splits.val as Dataset).items.length, regexCount(SMALL_IDS[2]));

  const before = requests.length;
  assert.deepEqual(await fetchBccd({ dir, url: `${base}/good.zip`, expectedImages: 3 }), {
    dir,
    downloaded: false,
  });
  assert.equal(requests.length, before, 'no request for a complete cached copy');

  // An archive without the <repo>-<branch>/ folder, and the URL from MELO_BCCD_URL.
  const flatDir = join(parent, 'flat');
  await fetchBccd({ dir: flatDir, env: { MELO_BCCD_URL: `${base}/flat.zip` }, expectedImages: 3 });
  assert.equal(requests.at(-1), '/flat.zip');
  assert.equal(await verifyBccdLayout(join(flatDir, 'BCCD'), 3), 3);
});

test('bad archives and failed downloads give clear errors and leave nothing behind', {
  skip: noData,
}, async () => {
  const parent = await tempDir('bad');
  const dir = join(parent, 'bccd');
  const cases: Array<[string, string, RegExp]> = [
    ['/not-a-zip.zip', 'BAD_DATA', /not-a-zip\.zip is not a readable zip archive \(.+\); nothing was kept$/],
    ['/no-bccd.zip', 'BAD_DATA', /no-bccd\.zip holds no BCCD\/ folder; nothing was kept$/],
    [
      '/incomplete.zip',
      'BAD_DATA',
      /incomplete\.zip is not a complete BCCD copy: 2 JPEGs and 3 annotations, expected 3 of each; nothing was kept$/,
    ],
    ['/unsafe.zip', 'BAD_DATA', /unsafe entry name 'BCCD_Dataset-master\/BCCD\/JPEGImages\/\.\.'/],
    [
      '/missing.zip',
      'NOT_FOUND',
      /missing\.zip: HTTP 404 Not Found \(offline\? pass --bccd <dir> or set MELO_BCCD_DIR/,
    ],
  ];
  for (const [path, code, pattern] of cases) {
    await assert.rejects(
      fetchBccd({ dir, url: `${base}${path}`, expectedImages: 3 }),
      assertMeloError(code, pattern),
      path,
    );
    assert.deepEqual(await readdir(parent), [], `${path}: nothing left in ${parent}`);
  }
  await assert.rejects(
    fetchBccd({ dir, url: 'http://127.0.0.1:9/none.zip', expectedImages: 3 }),
    assertMeloError('NOT_FOUND', /cannot download http:\/\/127\.0\.0\.1:9\/none\.zip: .+ \(offline\?/),
  );
  assert.deepEqual(await readdir(parent), []);

  // A directory that holds something else is neither filled nor touched.
  await mkdir(dir);
  await writeFile(join(dir, 'notes.txt'), 'mine');
  const count = requests.length;
  await assert.rejects(
    fetchBccd({ dir, url: `${base}/good.zip`, expectedImages: 3 }),
    assertMeloError('BAD_DATA', /bccd: exists but holds no BCCD\/ dataset/),
  );
  assert.equal(requests.length, count);
  assert.deepEqual(await readdir(dir), ['notes.txt']);
});

test('resolveBccdDir: --bccd, else MELO_BCCD_DIR, else a download; BCCD/ and JPEGImages/ resolve to the root', {
  skip: noData,
}, async () => {
  assert.equal(await resolveBccdDir({ flag: ROOT, env: {} }), ROOT);
  assert.equal(await resolveBccdDir({ flag: VOC, env: {} }), ROOT);
  assert.equal(
    await resolveBccdDir({ flag: join(VOC, 'JPEGImages'), env: { MELO_BCCD_DIR: '/nowhere' } }),
    ROOT,
  );
  const empty = await tempDir('flag');
  await assert.rejects(
    resolveBccdDir({ flag: empty, env: {} }),
    assertMeloError('NOT_FOUND', /--bccd: no BCCD dataset here/),
  );

  const count = requests.length;
  assert.equal(await resolveBccdDir({ env: { MELO_BCCD_DIR: join(VOC, 'JPEGImages') } }), ROOT);
  assert.equal(requests.length, count, 'a local copy needs no request');

  const parent = await tempDir('env');
  const target = join(parent, 'bccd');
  const env = { MELO_BCCD_DIR: target, MELO_BCCD_URL: `${base}/good.zip` };
  assert.equal(await resolveBccdDir({ env, fetch: { expectedImages: 3 } }), target);
  assert.equal(requests.at(-1), '/good.zip');
  assert.equal(await verifyBccdLayout(join(target, 'BCCD'), 3), 3);
  const cacheDir = join(parent, 'default-cache');
  assert.equal(
    await resolveBccdDir({
      env: { MELO_BCCD_URL: `${base}/good.zip` },
      fetch: { dir: cacheDir, expectedImages: 3 },
    }),
    cacheDir,
  );
});

test('a copied subset of the real data opens with the same items as the full set for those images', {
  skip: noData,
}, async () => {
  const root = await tempDir('copy');
  const voc = join(root, 'BCCD');
  for (const sub of ['Annotations', 'JPEGImages', join('ImageSets', 'Main')])
    await mkdir(join(voc, sub), { recursive: true });
  const ids = ['BloodImage_00020', 'BloodImage_00338'];
  for (const id of ids) {
    await copyFile(join(VOC, 'Annotations', `${id}.xml`), join(voc, 'Annotations', `${id}.xml`));
    await copyFile(join(VOC, 'JPEGImages', `${id}.jpg`), join(voc, 'JPEGImages', `${id}.jpg`));
  }
  await writeFile(join(voc, 'ImageSets', 'Main', 'train.txt'), ids.join('\n'));
  await writeFile(join(voc, 'ImageSets', 'Main', 'val.txt'), '');
  await writeFile(join(voc, 'ImageSets', 'Main', 'test.txt'), '');
  const { splits, report } = await openBccdWithReport(root);
  assert.deepEqual(report.dropped.duplicate + report.dropped.degenerate, 2);
  const relative = (item: DataItem) => basename(item.id);
  const expected = [...(full.splits.train as Dataset).items, ...(full.splits.val as Dataset).items]
    .filter((item) => ids.some((id) => item.id.includes(`${id}.jpg#`)))
    .map(relative);
  assert.deepEqual((splits.train as Dataset).items.map(relative), expected);
});
