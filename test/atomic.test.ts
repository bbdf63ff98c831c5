import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { MeloError } from '../src/errors.ts';
import { writeFileAtomic, writeJsonAtomic } from '../src/io/atomic.ts';

const root = await mkdtemp(join(tmpdir(), 'melo-atomic-'));
after(() => rm(root, { recursive: true, force: true }));

let counter = 0;
async function freshDir(): Promise<string> {
  const dir = join(root, `case-${counter++}`);
  await mkdir(dir);
  return dir;
}

test('writeFileAtomic writes strings and bytes, replaces an existing file and leaves no temporary file', async () => {
  const dir = await freshDir();
  const target = join(dir, 'out.bin');
  await writeFileAtomic(target, 'first version');
  assert.equal(await readFile(target, 'utf8'), 'first version');
  await writeFileAtomic(target, new Uint8Array([0, 1, 2, 255]));
  assert.deepEqual([...(await readFile(target))], [0, 1, 2, 255]);
  assert.deepEqual(await readdir(dir), ['out.bin']);
});

test('writeFileAtomic writes chunks from sync and async iterables in order', async () => {
  const dir = await freshDir();
  const target = join(dir, 'chunks.bin');
  await writeFileAtomic(target, [new Uint8Array([1, 2]), new Uint8Array(0), new Uint8Array([3])]);
  assert.deepEqual([...(await readFile(target))], [1, 2, 3]);
  async function* produce(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < 4; i++) yield new Uint8Array(1000).fill(i);
  }
  await writeFileAtomic(target, produce());
  const bytes = await readFile(target);
  assert.equal(bytes.length, 4000);
  assert.deepEqual([bytes[0], bytes[999], bytes[1000], bytes[3999]], [0, 0, 1, 3]);
  assert.deepEqual(await readdir(dir), ['chunks.bin']);
});

test('a failure while producing data keeps the old target and removes the temporary file', async () => {
  const dir = await freshDir();
  const target = join(dir, 'model.safetensors');
  await writeFile(target, 'old checkpoint');
  async function* failing(): AsyncGenerator<Uint8Array> {
    yield new Uint8Array(4096).fill(7);
    throw new Error('encoder failed halfway');
  }
  await assert.rejects(writeFileAtomic(target, failing()), /encoder failed halfway/);
  assert.equal(await readFile(target, 'utf8'), 'old checkpoint');
  assert.deepEqual(await readdir(dir), ['model.safetensors']);
});

test('a failing rename (target is a non-empty directory) removes the temporary file and names the path', async () => {
  const dir = await freshDir();
  const target = join(dir, 'busy');
  await mkdir(target);
  await writeFile(join(target, 'keep.txt'), 'kept');
  await assert.rejects(writeFileAtomic(target, 'data'), (error: unknown) => {
    assert.ok(error instanceof MeloError);
    assert.equal(error.file, target);
    assert.match(error.message, /^.*busy: cannot write: the path is (a|a non-empty) directory$/);
    return true;
  });
  assert.deepEqual(await readdir(dir), ['busy']);
  assert.equal(await readFile(join(target, 'keep.txt'), 'utf8'), 'kept');
});

test('writing into a missing directory is a NOT_FOUND error naming the file', async () => {
  const dir = await freshDir();
  const target = join(dir, 'missing', 'out.json');
  await assert.rejects(writeFileAtomic(target, 'x'), (error: unknown) => {
    assert.ok(error instanceof MeloError);
    assert.equal(error.code, 'NOT_FOUND');
    assert.ok(error.message.startsWith(`${target}: cannot write: directory`));
    return true;
  });
  assert.deepEqual(await readdir(dir), []);
});

test('concurrent writers to one path never mix their contents', async () => {
  const dir = await freshDir();
  const target = join(dir, 'shared.bin');
  const versions = Array.from({ length: 8 }, (_, i) => new Uint8Array(64 * 1024).fill(i + 1));
  await Promise.all(versions.map((bytes) => writeFileAtomic(target, bytes)));
  const result = await readFile(target);
  assert.equal(result.length, 64 * 1024);
  assert.ok(result.every((b) => b === result[0]));
  assert.ok(result[0] >= 1 && result[0] <= 8);
  assert.deepEqual(await readdir(dir), ['shared.bin']);
});

test('writeJsonAtomic writes indented JSON with a final newline and refuses unwritable values', async () => {
  const dir = await freshDir();
  const target = join(dir, 'results.json');
  await writeJsonAtomic(target, { auc: 0.5, labels: ['a', 'b'] });
  assert.equal(
    await readFile(target, 'utf8'),
    '{\n  "auc": 0.5,\n  "labels": [\n    "a",\n    "b"\n  ]\n}\n',
  );
  await assert.rejects(
    writeJsonAtomic(join(dir, 'nothing.json'), undefined),
    /nothing\.json: value cannot be/,
  );
  assert.deepEqual(await readdir(dir), ['results.json']);
});
