/**
 * Files from strangers: adapters, backbones, archives and datasets built to hang, crash or quietly corrupt
 * melo. Every case is built here from bytes (nothing large is committed) and must fail with one clear line,
 * quickly, or be handled correctly.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors, writeSafetensors } from '../src/checkpoints/safetensors.ts';
import { checkDataset, formatDataCheckReport } from '../src/data/check.ts';
import { openDataSplits } from '../src/data/open.ts';
import { MeloError } from '../src/errors.ts';
import { loadAdapter, targetsFromField } from '../src/io/peft.ts';
import { toMultilabelPrediction, toPrediction } from '../src/predict.ts';
import type { HostTensor } from '../src/tensor.ts';
import { runCli } from './helpers/cli.ts';
import { npzBytes } from './helpers/npz.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const ADAPTER = join(FIXTURES, 'lora_adapter');
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-hostile-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A copy of the fixture adapter with its adapter_config.json changed by `edit`. */
async function adapterWithConfig(
  name: string,
  edit: (config: Record<string, unknown>) => void,
): Promise<string> {
  const target = join(dir, name);
  await cp(ADAPTER, target, { recursive: true });
  const configPath = join(target, 'adapter_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  edit(config);
  await writeFile(configPath, JSON.stringify(config));
  return target;
}

const CONFIG = '/x/adapter_config.json';

// ---------------------------------------------------------------------------------------------------------
// 1. target_modules patterns

test('target_modules: a catastrophic-backtracking pattern answers at once with PEFT full-match semantics', async () => {
  const pattern = '(([a-z.0-9_])+)+Z|.*\\.(query|value)';
  // RegExp needs exponential time on the module names (it hung `melo adapter inspect` for ever).
  const started = performance.now();
  assert.deepEqual(targetsFromField(pattern, CONFIG), ['query', 'value']);
  assert.ok(performance.now() - started < 1000);

  // The real command in a child process, with a kill timer: it must answer, not hang.
  const hostile = await adapterWithConfig('redos', (config) => {
    config.target_modules = pattern;
  });
  const result = await runCli(['adapter', 'inspect', hostile, '--json'], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /query/);
});

test('target_modules: PEFT semantics (string = full match, list = suffix match)', () => {
  assert.deepEqual(targetsFromField('.*\\.(query|value)', CONFIG), ['query', 'value']);
  // A string is matched against the whole module path: a bare name matches nothing.
  assert.deepEqual(targetsFromField('query', CONFIG), []);
  assert.deepEqual(targetsFromField('.*attention\\.(query|key|value)', CONFIG), ['query', 'key', 'value']);
  assert.deepEqual(
    targetsFromField('.*\\.encoder\\.layer\\.\\d+\\.(intermediate\\.dense|output\\.dense)', CONFIG),
    ['fc1', 'fc2'],
  );
  // Full match, not search: a pattern matching only a prefix of the path does not select it.
  assert.deepEqual(targetsFromField('vit\\.encoder', CONFIG), []);
  // A list is matched as suffixes at module-name boundaries.
  assert.deepEqual(targetsFromField(['query', 'value'], CONFIG), ['query', 'value']);
  assert.deepEqual(targetsFromField(['dense'], CONFIG), ['output', 'fc1', 'fc2']);
  assert.deepEqual(targetsFromField(['output.dense'], CONFIG), ['output', 'fc2']);
  assert.deepEqual(targetsFromField(['uery'], CONFIG), []);
});

test('target_modules: patterns RE2 cannot run in linear time, or absurdly long, are refused with one line', () => {
  for (const pattern of ['(query)\\1', '.*(?=query)query', '.*(?<!key)value']) {
    assert.throws(
      () => targetsFromField(pattern, CONFIG),
      (error: unknown) =>
        error instanceof MeloError &&
        error.code === 'BAD_ADAPTER' &&
        error.message.startsWith(`${CONFIG}: target_modules is not a regular expression melo can match`) &&
        !error.message.includes('\n'),
    );
  }
  assert.throws(
    () => targetsFromField(`.*${'a?'.repeat(5000)}`, CONFIG),
    /target_modules pattern is 10002 characters long \(at most 4096\)/,
  );
  assert.throws(() => targetsFromField(42, CONFIG), /target_modules must be a list/);
});

test('loadAdapter reads an adapter whose target_modules is a PEFT regular expression', async () => {
  const path = await adapterWithConfig('regex', (config) => {
    config.target_modules = '.*\\.encoder\\.layer\\.\\d+\\.attention\\.attention\\.(query|value)';
  });
  const adapter = await loadAdapter(path);
  assert.deepEqual(adapter.lora.targets, ['query', 'value']);
  assert.equal(adapter.pairs.size, 4);
});

// ---------------------------------------------------------------------------------------------------------
// 2. Non-finite numbers

/** Copies `from` to `name` and rewrites one safetensors file in it with `edit` applied to its tensors. */
async function withEditedTensors(
  from: string,
  name: string,
  file: string,
  edit: (tensors: Map<string, HostTensor>) => void,
): Promise<string> {
  const target = join(dir, name);
  await cp(from, target, { recursive: true });
  const path = join(target, file);
  const read = await readSafetensors(path);
  edit(read.tensors);
  await writeSafetensors(path, read.tensors, { metadata: read.metadata });
  return target;
}

test('an adapter with a NaN head bias, an Inf or an absurd LoRA value is refused at load, naming the tensor', async () => {
  const nan = await withEditedTensors(ADAPTER, 'nan-adapter', 'adapter_model.safetensors', (tensors) => {
    tensors.get('base_model.model.classifier.bias')!.data[1] = Number.NaN;
  });
  await assert.rejects(
    loadAdapter(nan),
    (error: unknown) =>
      error instanceof MeloError &&
      error.code === 'BAD_ADAPTER' &&
      error.message ===
        `${join(nan, 'adapter_model.safetensors')}: tensor 'base_model.model.classifier.bias' holds NaN (element 1): refusing non-finite or absurd weights`,
  );
  const huge = await withEditedTensors(ADAPTER, 'huge-adapter', 'adapter_model.safetensors', (tensors) => {
    for (const [name, tensor] of tensors) if (name.endsWith('lora_A.weight')) tensor.data[0] = -3e30;
  });
  await assert.rejects(
    loadAdapter(huge),
    /holds value -3\.000e\+30 beyond ±1e\+6 \(element 0\); 3 more tensors too/,
  );

  // The real commands: predict exits non-zero with one line and prints no probabilities.
  const image = join(dir, 'gray.png');
  await sharp(Buffer.alloc(32 * 32, 128), { raw: { width: 32, height: 32, channels: 1 } })
    .png()
    .toFile(image);
  const result = await runCli([
    'predict',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--adapter',
    nan,
    image,
    '--json',
  ]);
  assert.notEqual(result.code, 0);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /classifier\.bias' holds NaN/);
  assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
});

test('a backbone with one Inf weight is refused at load, naming the tensor as the file does', async () => {
  const inf = await withEditedTensors(
    join(FIXTURES, 'hf'),
    'inf-backbone',
    'model.safetensors',
    (tensors) => {
      tensors.get('vit.encoder.layer.1.attention.attention.value.weight')!.data[5] = Number.POSITIVE_INFINITY;
    },
  );
  await assert.rejects(
    loadBackbone(inf),
    (error: unknown) =>
      error instanceof MeloError &&
      error.code === 'BAD_CHECKPOINT' &&
      /tensor 'vit\.encoder\.layer\.1\.attention\.attention\.value\.weight' holds Infinity \(element \d+\)/.test(
        error.message,
      ),
  );
});

test('no prediction is ever made from non-finite logits', () => {
  assert.throws(
    () => toPrediction('x.png', 'breast', ['a', 'b'], [Number.NaN, 0]),
    /^MeloError: x\.png: task 'breast': the model's output 0 is NaN/,
  );
  assert.throws(
    () => toMultilabelPrediction('x.png', 't', ['a', 'b'], [0, Number.POSITIVE_INFINITY]),
    /output 1 is Infinity/,
  );
  assert.deepEqual(toPrediction('x.png', 't', ['a', 'b'], [0, 0]).probabilities, [0.5, 0.5]);
});

test('data check reports all-NaN images as non-finite and does not overflow on 200,000 constant images', async () => {
  const nanImages = new Float32Array(4 * 8 * 8).fill(Number.NaN);
  nanImages.fill(0.25, 3 * 64); // the last image is fine but constant
  const nanPath = join(dir, 'nan.npz');
  await writeFile(
    nanPath,
    npzBytes({
      train_images: { values: nanImages, shape: [4, 8, 8] },
      train_labels: { values: new Uint8Array([0, 1, 0, 1]), shape: [4, 1] },
    }),
  );
  const report = await checkDataset(await openDataSplits(nanPath));
  assert.deepEqual(report.issues.map((issue) => [issue.id, issue.kind, issue.detail]).sort(), [
    ...[0, 1, 2].map((i) => [
      `${nanPath}#train/${i}`,
      'non-finite-pixels',
      '64 of 64 values are NaN or infinite (first: NaN)',
    ]),
    [`${nanPath}#train/3`, 'constant-image', 'every pixel is 0.2500'],
  ]);

  // 200,000 constant 8×8 images: about 13 KB compressed. `issues.push(...many)` overflowed the stack.
  const count = 200_000;
  const manyPath = join(dir, 'many.npz');
  const bytes = npzBytes({
    train_images: { values: new Uint8Array(count * 64), shape: [count, 8, 8] },
    train_labels: { values: new Uint8Array(count).map((_, i) => i % 2), shape: [count, 1] },
  });
  assert.ok(bytes.byteLength < 100_000, `${bytes.byteLength} bytes`);
  await writeFile(manyPath, bytes);
  const many = await checkDataset(await openDataSplits(manyPath));
  assert.equal(many.issues.length, count);
  assert.ok(many.issues.every((issue) => issue.kind === 'constant-image'));
  const text = formatDataCheckReport(many);
  const lines = text.trim().split('\n');
  assert.equal(lines.filter((line) => line.includes('\tconstant-image\t')).length, 100);
  assert.ok(
    lines.includes(`… and ${count - 100} more (${count - 100} constant-image); --json lists them all`),
  );
  assert.equal(lines.at(-1), `${count} problems found`);
});
