import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { classCounts, type Dataset } from '../src/data/dataset.ts';
import { openImageFolder } from '../src/data/image-folder.ts';
import { openManifest } from '../src/data/manifest.ts';
import { openDataSplits, parseDataSpec } from '../src/data/open.ts';

const SHARED = process.env.MELO_SHARED_DATA ?? join(import.meta.dirname, '..', '..', 'shared', 'data');
const MEDMNIST_DIR = join(SHARED, 'medmnist');
const DICOM_DIR = join(SHARED, 'dicom', 'pydicom-test-files');
const noMedmnist = existsSync(MEDMNIST_DIR) ? false : `no MedMNIST data at ${MEDMNIST_DIR}`;

/** Writes a small image whose pixel (x, y, c) is `value(x, y, c)`; the format follows the extension. */
async function writeImage(
  path: string,
  width: number,
  height: number,
  channels: 1 | 3,
  value: (x: number, y: number, c: number) => number = (x, y, c) => (x * 37 + y * 11 + c * 90) % 256,
): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const pixels = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < channels; c++) pixels[(y * width + x) * channels + c] = value(x, y, c);
    }
  }
  let image = sharp(pixels, { raw: { width, height, channels } });
  // Without b-w, sharp stores one raw channel as an RGB image.
  if (channels === 1) image = image.toColourspace('b-w');
  await (path.endsWith('.jpg') ? image.jpeg({ quality: 95 }) : image.png()).toFile(path);
}

async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `melo-${prefix}-`));
}

const relativeIds = (dataset: Dataset, root: string) =>
  dataset.items.map((item) => item.id.slice(root.length + 1));
const labelsOf = (dataset: Dataset) => dataset.items.map((item) => [...item.labels]);

test('ImageFolder: sorted classes, recursive sorted files, hidden and non-image files skipped', async () => {
  const root = await tempDir('folder');
  await writeImage(join(root, 'dog', 'c.png'), 9, 9, 3);
  await writeImage(join(root, 'cat', 'b', 'z.png'), 9, 9, 3);
  await writeImage(join(root, 'cat', 'a.jpg'), 9, 9, 3);
  await writeImage(join(root, 'cat', '.hidden.png'), 9, 9, 3);
  await writeImage(join(root, '.trash', 'x.png'), 9, 9, 3);
  await writeFile(join(root, 'dog', 'notes.txt'), 'not an image');
  await writeFile(join(root, 'dog', 'README'), 'no extension, not DICOM');
  const splits = await openImageFolder(root);
  assert.deepEqual(Object.keys(splits), ['train']);
  const train = splits.train!;
  assert.deepEqual(train.classes, ['cat', 'dog']);
  assert.equal(train.taskType, 'binary');
  assert.deepEqual(relativeIds(train, root), ['cat/a.jpg', 'cat/b/z.png', 'dog/c.png']);
  assert.deepEqual(labelsOf(train), [[0], [0], [1]]);
  assert.equal(train.items[2].file, join(root, 'dog', 'c.png'));
  const image = await train.items[2].load();
  assert.deepEqual([image.width, image.height, image.channels], [9, 9, 3]);
  // Pixel (x=4, y=2, c=1): (4*37 + 2*11 + 90) % 256 = 260 % 256 = 4.
  assert.equal(image.data[(2 * 9 + 4) * 3 + 1], Math.fround(4 / 255));
});

test('ImageFolder with train/val/test: classes are the sorted union and indices agree', async () => {
  const root = await tempDir('folder-splits');
  await writeImage(join(root, 'train', 'b', '1.png'), 8, 8, 1);
  await writeImage(join(root, 'train', 'a', '2.png'), 8, 8, 1);
  await writeImage(join(root, 'valid', 'c', '3.png'), 8, 8, 1);
  await writeImage(join(root, 'valid', 'a', '4.png'), 8, 8, 1);
  await writeImage(join(root, 'test', 'b', '5.png'), 8, 8, 1);
  const splits = await openImageFolder(root);
  for (const split of [splits.train!, splits.val!, splits.test!])
    assert.deepEqual(split.classes, ['a', 'b', 'c']);
  assert.equal(splits.train!.taskType, 'multiclass');
  assert.deepEqual(labelsOf(splits.train!), [[0], [1]]);
  assert.deepEqual(labelsOf(splits.val!), [[0], [2]]);
  assert.deepEqual(labelsOf(splits.test!), [[1]]);
  const onlyTest = await openImageFolder(root, { splits: ['test'] });
  assert.deepEqual(Object.keys(onlyTest), ['test']);
  assert.deepEqual(onlyTest.test!.classes, ['a', 'b', 'c']);
  await assert.rejects(openImageFolder(join(root, 'test', 'b')), /has no class sub-directories/);
});

test('ImageFolder finds DICOM by .dcm and by content for files without an extension', {
  skip: !existsSync(DICOM_DIR) && 'no DICOM files',
}, async () => {
  const root = await tempDir('folder-dicom');
  await mkdir(join(root, 'ct'), { recursive: true });
  await mkdir(join(root, 'mr'), { recursive: true });
  await copyFile(join(DICOM_DIR, 'CT_small.dcm'), join(root, 'ct', 'IM0001'));
  await copyFile(join(DICOM_DIR, 'MR_small.dcm'), join(root, 'mr', 'slice.dcm'));
  const train = (await openImageFolder(root)).train!;
  assert.deepEqual(relativeIds(train, root), ['ct/IM0001', 'mr/slice.dcm']);
  const ct = await train.items[0].load();
  assert.deepEqual([ct.width, ct.height, ct.channels], [128, 128, 1]);
  const mr = await train.items[1].load();
  assert.deepEqual([mr.width, mr.height, mr.channels], [64, 64, 1]);
});

/** A directory with images a.png … named in the manifest; returns the directory. */
async function manifestDir(text: string, name: string, images: string[]): Promise<string> {
  const dir = await tempDir('manifest');
  for (const image of images) await writeImage(join(dir, image), 8, 8, 1);
  await writeFile(join(dir, name), text);
  return dir;
}

test('CSV manifest, NIH ChestX-ray14 style: | separated findings, No Finding = no label', async () => {
  const csv = [
    'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age',
    '00000001_000.png,Cardiomegaly|Emphysema,0,1,58',
    '00000002_000.png,No Finding,0,2,81',
    '00000003_000.png,Hernia,0,3,74',
    '00000003_001.png,Emphysema|Cardiomegaly|Hernia,1,3,75',
  ].join('\n');
  const images = ['00000001_000.png', '00000002_000.png', '00000003_000.png', '00000003_001.png'];
  const dir = await manifestDir(csv, 'Data_Entry_2017.csv', images);
  const splits = await openManifest(join(dir, 'Data_Entry_2017.csv'));
  const train = splits.train!;
  assert.equal(train.taskType, 'multilabel');
  assert.deepEqual(train.classes, ['Cardiomegaly', 'Emphysema', 'Hernia']);
  assert.deepEqual(labelsOf(train), [[0, 1], [], [2], [0, 1, 2]]);
  assert.deepEqual(relativeIds(train, dir), images);
  assert.equal(train.name, 'Data_Entry_2017');
});

test('CSV manifest with 0/1 label columns and a split column (detected)', async () => {
  const csv = [
    'filename,split,effusion,mass,nodule',
    'a.png,train,1,0,1',
    'b.png,train,0,0,0',
    '"c, copy.png",val,0,1.0,0',
    'd.png,TEST,1,1,1',
  ].join('\r\n');
  const dir = await manifestDir(csv, 'labels.csv', ['a.png', 'b.png', 'c, copy.png', 'd.png']);
  const splits = await openManifest(join(dir, 'labels.csv'));
  assert.deepEqual(splits.train!.classes, ['effusion', 'mass', 'nodule']);
  assert.equal(splits.val!.taskType, 'multilabel');
  assert.deepEqual(labelsOf(splits.train!), [[0, 2], []]);
  assert.deepEqual(labelsOf(splits.val!), [[1]]);
  assert.deepEqual(relativeIds(splits.val!, dir), ['c, copy.png']);
  assert.deepEqual(labelsOf(splits.test!), [[0, 1, 2]]);
});

test('TSV manifest with a single label column, valid split spelling, numeric classes sorted numerically', async () => {
  const tsv = [
    'path\tgrade\tsubset',
    'x/1.png\t10\ttrain',
    'x/2.png\t2\tvalid',
    'x/3.png\t1\ttrain',
    'x/4.png\t2\ttrain',
  ].join('\n');
  const dir = await manifestDir(tsv, 'grades.tsv', ['x/1.png', 'x/2.png', 'x/3.png', 'x/4.png']);
  const splits = await openManifest(join(dir, 'grades.tsv'));
  assert.deepEqual(splits.train!.classes, ['1', '2', '10']);
  assert.equal(splits.train!.taskType, 'multiclass');
  assert.deepEqual(labelsOf(splits.train!), [[2], [0], [1]]);
  assert.deepEqual(labelsOf(splits.val!), [[1]]);
  const named = await openManifest(join(dir, 'grades.tsv'), {
    labelColumns: ['grade'],
    classes: ['10', '2', '1'],
    splits: ['val'],
  });
  assert.deepEqual(Object.keys(named), ['val']);
  assert.deepEqual(labelsOf(named.val!), [[1]]);
});

test('manifest options name the columns; a separator makes a single column multi-label', async () => {
  const csv = ['id,picture,dx,fold', '1,p/a.png,mel;nev,train', '2,p/b.png,nev,train'].join('\n');
  const dir = await manifestDir(csv, 'm.csv', ['p/a.png', 'p/b.png']);
  const splits = await openManifest(join(dir, 'm.csv'), {
    pathColumn: 'picture',
    labelColumns: ['dx'],
    labelSeparator: ';',
  });
  assert.deepEqual(splits.train!.classes, ['mel', 'nev']);
  assert.deepEqual(labelsOf(splits.train!), [[0, 1], [1]]);
  await assert.rejects(
    openManifest(join(dir, 'm.csv'), { pathColumn: 'picture' }),
    /m\.csv: cannot tell which column holds the labels \(columns: id, picture, dx, fold\)/,
  );
});

test('manifest errors are one line naming the manifest and the row', async () => {
  const dir = await manifestDir(
    ['path,label', 'a.png,cat', 'missing1.png,dog', 'b.png,dog', 'missing2.png,cat'].join('\n'),
    'pets.csv',
    ['a.png', 'b.png'],
  );
  const manifest = join(dir, 'pets.csv');
  const oneLine = (pattern: RegExp) => (error: unknown) => {
    const message = (error as Error).message;
    assert.ok(!message.includes('\n'), message);
    assert.match(message, pattern);
    return true;
  };
  await assert.rejects(
    openManifest(manifest),
    oneLine(
      new RegExp(
        `^${manifest.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: line 3: image file .*missing1\\.png does not exist \\(and 1 more missing files\\)$`,
      ),
    ),
  );
  await assert.rejects(
    openManifest(manifest, { labelColumns: ['species'] }),
    oneLine(/pets\.csv: no label column 'species' \(columns: path, label\)/),
  );
  await assert.rejects(
    openManifest(manifest, { pathColumn: 'file' }),
    oneLine(/pets\.csv: no path column 'file'/),
  );

  await writeFile(join(dir, 'empty-label.csv'), ['path,label', 'a.png,cat', 'b.png,'].join('\n'));
  await assert.rejects(
    openManifest(join(dir, 'empty-label.csv')),
    oneLine(/empty-label\.csv: line 3: label column 'label' is empty/),
  );
  await writeFile(
    join(dir, 'bad-split.csv'),
    ['path,label,split', 'a.png,cat,train', 'b.png,dog,holdout'].join('\n'),
  );
  await assert.rejects(
    openManifest(join(dir, 'bad-split.csv')),
    oneLine(/bad-split\.csv: line 3: split 'holdout' is not train, val or test/),
  );
  await writeFile(join(dir, 'bad-binary.csv'), ['path,effusion,mass', 'a.png,1,0', 'b.png,2,0'].join('\n'));
  await assert.rejects(
    openManifest(join(dir, 'bad-binary.csv'), { labelColumns: ['effusion', 'mass'] }),
    oneLine(/bad-binary\.csv: line 3: label column 'effusion' has '2', expected 0 or 1/),
  );
  await writeFile(join(dir, 'no-path.csv'), ['name,label', 'a.png,cat'].join('\n'));
  await assert.rejects(
    openManifest(join(dir, 'no-path.csv')),
    oneLine(/no-path\.csv: cannot find the image path column \(columns: name, label\)/),
  );
  await writeFile(join(dir, 'ragged.csv'), ['path,label', 'a.png,cat,extra'].join('\n'));
  await assert.rejects(
    openManifest(join(dir, 'ragged.csv')),
    oneLine(/ragged\.csv: not a readable CSV file: .*line 2/),
  );
  await writeFile(join(dir, 'unknown.csv'), ['path,label', 'a.png,cow'].join('\n'));
  await assert.rejects(
    openManifest(join(dir, 'unknown.csv'), { classes: ['cat', 'dog'] }),
    oneLine(/unknown\.csv: line 2: label 'cow' is not one of the given classes/),
  );
  await writeFile(
    join(dir, 'nofinding.csv'),
    ['Image Index,Finding Labels', 'a.png,No Finding|Mass'].join('\n'),
  );
  await assert.rejects(
    openManifest(join(dir, 'nofinding.csv')),
    oneLine(/line 2: 'No Finding' combined with other labels/),
  );
});

test('parseDataSpec: split suffixes and medmnist: names', () => {
  assert.deepEqual(parseDataSpec('data/x.npz'), { path: 'data/x.npz', split: undefined });
  assert.deepEqual(parseDataSpec('data/x.npz:valid'), { path: 'data/x.npz', split: 'val' });
  assert.deepEqual(parseDataSpec('C:\\data\\x.npz:test'), { path: 'C:\\data\\x.npz', split: 'test' });
  assert.deepEqual(parseDataSpec('medmnist:breastmnist_64:train', { MELO_DATA_DIR: '/cache' }), {
    path: join('/cache', 'breastmnist_64.npz'),
    split: 'train',
  });
  assert.throws(() => parseDataSpec('medmnist:../etc', {}), /expected medmnist:<name>\[_<size>\]/);
});

test('openDataSplits on MedMNIST: split suffix, split option, folds, limits', {
  skip: noMedmnist,
}, async () => {
  const retina = join(MEDMNIST_DIR, 'retinamnist.npz');
  const only = await openDataSplits(`${retina}:test`);
  assert.deepEqual(Object.keys(only), ['test']);
  assert.equal(only.test!.items.length, 400);
  assert.deepEqual(Object.keys(await openDataSplits(retina, { split: 'val' })), ['val']);
  await assert.rejects(
    openDataSplits(`${retina}:test`, { split: 'train' }),
    /selects the test split but the split option says train/,
  );

  const all = await openDataSplits(retina);
  assert.deepEqual(
    [all.train!.items.length, all.val!.items.length, all.test!.items.length],
    [1080, 120, 400],
  );

  const folds = await Promise.all(
    [0, 1, 2, 3, 4].map((index) => openDataSplits(retina, { fold: `${index}/5`, seed: 3 })),
  );
  const valIds = folds.flatMap((splits) => splits.val!.items.map((item) => item.id));
  assert.equal(valIds.length, 1200);
  assert.equal(new Set(valIds).size, 1200, 'the five val folds partition train+val');
  for (const splits of folds) {
    assert.equal(splits.val!.items.length, 240);
    assert.equal(splits.train!.items.length, 960);
    assert.equal(splits.test!.items.length, 400);
  }
  await assert.rejects(
    openDataSplits(retina, { fold: '5/5' }),
    /fold index must be an integer from 0 to 4, got 5/,
  );
  await assert.rejects(openDataSplits(retina, { fold: 'x' }), /fold 'x' must look like i\/k/);

  const small = await openDataSplits(retina, { limit: 50, seed: 1 });
  for (const dataset of [small.train!, small.val!, small.test!]) assert.equal(dataset.items.length, 50);
  // 486/128/206/194/66 of 1080 → 22.5/5.9/9.5/9.0/3.1 of 50, by largest remainder.
  assert.deepEqual(classCounts(small.train!), [22, 6, 10, 9, 3]);

  const cached = await openDataSplits('medmnist:breastmnist_64:val', {
    env: { MELO_DATA_DIR: MEDMNIST_DIR },
  });
  assert.equal(cached.val!.items.length, 78);
});

test('openDataSplits carves a stratified val split out of train when there is none', {
  skip: noMedmnist,
}, async () => {
  const root = await tempDir('autoval');
  for (let i = 0; i < 20; i++) await writeImage(join(root, i < 15 ? 'a' : 'b', `${i}.png`), 8, 8, 1);
  const splits = await openDataSplits(root, { valFraction: 0.2, seed: 5 });
  assert.deepEqual(classCounts(splits.val!), [3, 1]);
  assert.deepEqual(classCounts(splits.train!), [12, 4]);
  const none = await openDataSplits(root, { valFraction: 0 });
  assert.equal(none.val, undefined);
  const byDefault = await openDataSplits(root);
  assert.equal(byDefault.val!.items.length, 2);
  await assert.rejects(
    openDataSplits(join(root, 'nothing-here')),
    /nothing-here: dataset path does not exist/,
  );
  await writeFile(join(root, 'x.json'), '{}');
  await assert.rejects(
    openDataSplits(join(root, 'x.json')),
    /x\.json: not a dataset: expected a directory, a \.npz/,
  );
});
