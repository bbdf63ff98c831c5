import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Command } from 'commander';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { type AdapterInspection, registerAdapterCommand } from '../src/cli/commands/adapter.ts';
import { buildProgram } from '../src/cli/main.ts';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import type { Adapter } from '../src/model/adapter.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import type { HostTensor } from '../src/tensor.ts';
import { assertClose } from './helpers/graph.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const VIT = join(ROOT, 'test/fixtures/vit');
const PEFT = join(ROOT, 'test/fixtures/interop/peft');

interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}
interface ExpectedSave {
  F32: { tensors: HeaderEntry[]; data_sha256: string };
  F16: { tensors: HeaderEntry[]; data_sha256: string };
  config: Record<string, unknown>;
}

let dir = '';
let hf: Backbone;
let expected: Map<string, HostTensor>;
let expectedSave: ExpectedSave;
let pixels: Float32Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-interop-peft-'));
  hf = await loadBackbone(join(VIT, 'hf'));
  expected = (await readSafetensors(join(PEFT, 'expected.safetensors'))).tensors;
  expectedSave = JSON.parse(await readFile(join(PEFT, 'expected_save.json'), 'utf8')) as ExpectedSave;
  pixels = (await readSafetensors(join(VIT, 'reference.safetensors'))).tensors.get('input')!.data;
});
after(() => rm(dir, { recursive: true, force: true }));

async function logitsOf(adapter: Adapter): Promise<Float32Array> {
  const model = await TaskModel.create({
    backbone: hf,
    method: 'lora',
    lora: adapter.lora,
    numClasses: adapter.head.weight.shape[0]!,
    threads: 1,
  });
  try {
    return (await model.run(pixels, 2, adapterFeeds(adapter))).data;
  } finally {
    await model.release();
  }
}

function assertValues(adapter: Adapter, prefix: string): void {
  const names = [...expected.keys()].filter((name) => name.startsWith(`${prefix}.`));
  assert.equal(names.length, 2 * 2 * 2 + 2);
  for (const name of names) {
    const key = name.slice(prefix.length + 1);
    const want = expected.get(name)!;
    const got = key.startsWith('head.')
      ? adapter.head[key === 'head.weight' ? 'weight' : 'bias']
      : adapter.pairs.get(key.slice(0, -2))?.[key.endsWith('.A') ? 'A' : 'B'];
    assert.ok(got, `${key} missing`);
    assert.deepEqual(got.shape, want.shape, key);
    assert.deepEqual(got.data, want.data, `${key} values`);
  }
}

/** The tensor entries of a safetensors header in file order, and the sha256 of the data section. */
async function rawLayout(path: string): Promise<{ tensors: HeaderEntry[]; sha: string; metadata: unknown }> {
  const bytes = await readFile(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')) as Record<string, unknown>;
  const { __metadata__: metadata, ...rest } = header;
  const tensors = Object.entries(rest as Record<string, Omit<HeaderEntry, 'name'>>)
    .map(([name, entry]) => ({ name, ...entry }))
    .sort((a, b) => a.data_offsets[0] - b.data_offsets[0]);
  const sha = createHash('sha256')
    .update(bytes.subarray(8 + length))
    .digest('hex');
  return { tensors, sha, metadata };
}

async function runAdapterCli(args: string[]): Promise<string> {
  const program = buildProgram();
  let stdout = '';
  const sink = {
    stdout: (text: string) => {
      stdout += text;
    },
    stderr: () => {},
  };
  const commands = program.commands as Command[];
  const wired = commands.findIndex((command) => command.name() === 'adapter');
  if (wired >= 0) commands.splice(wired, 1);
  registerAdapterCommand(program, sink);
  await program.parseAsync(['adapter', ...args], { from: 'user' });
  return stdout;
}

test("a PEFT adapter as save_pretrained writes it (no '.default' in keys) loads with its exact values", async () => {
  const adapter = await loadAdapter(join(PEFT, 'f32'));
  assert.equal(adapter.hasMeloMetadata, false);
  assert.deepEqual(
    { rank: adapter.lora.rank, alpha: adapter.lora.alpha, dropout: adapter.lora.dropout },
    { rank: 4, alpha: 8, dropout: 0.1 },
  );
  assert.deepEqual(adapter.lora.targets, ['query', 'value']);
  assert.equal(adapter.lora.layers, undefined);
  assertValues(adapter, 'f32');
  assertClose(await logitsOf(adapter), expected.get('logits_f32')!.data, 1e-5, 'f32 adapter logits');
});

test('an F16 PEFT adapter loads widened exactly, and predicts like its float64 reference', async () => {
  const adapter = await loadAdapter(join(PEFT, 'f16'));
  assertValues(adapter, 'f16');
  assertClose(await logitsOf(adapter), expected.get('logits_f16')!.data, 1e-5, 'f16 adapter logits');
});

test('layers_to_transform and intermediate.dense map onto block 1 query and fc1', async () => {
  const adapter = await loadAdapter(join(PEFT, 'mlp'));
  assert.deepEqual(adapter.lora.targets, ['query', 'fc1']);
  assert.deepEqual(adapter.lora.layers, [1]);
  assert.deepEqual([...adapter.pairs.keys()].sort(), ['1.fc1', '1.query']);
  assert.deepEqual(adapter.pairs.get('1.fc1')!.B.shape, [64, 2]);
  assertClose(await logitsOf(adapter), expected.get('logits_mlp')!.data, 1e-5, 'mlp adapter logits');
  // melo's writer puts fc1 into a regular expression; re-reading gives the same adapter.
  await saveAdapter(join(dir, 'mlp'), adapter);
  const again = await loadAdapter(join(dir, 'mlp'));
  assert.deepEqual(again.lora.targets, ['query', 'fc1']);
  assert.deepEqual(again.lora.layers, [1]);
  assert.deepEqual(again.pairs, adapter.pairs);
});

test("melo's saved adapter has PEFT's keys, shapes, config and the exact bytes of an independent writer", async () => {
  const adapter = await loadAdapter(join(PEFT, 'f32'));
  for (const dtype of ['F32', 'F16'] as const) {
    const out = join(dir, `saved-${dtype}`);
    await saveAdapter(out, adapter, { dtype });
    const layout = await rawLayout(join(out, 'adapter_model.safetensors'));
    assert.deepEqual(layout.tensors, expectedSave[dtype].tensors, `${dtype} header entries`);
    assert.equal(layout.sha, expectedSave[dtype].data_sha256, `${dtype} data section`);
    const config = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    for (const [field, value] of Object.entries(expectedSave.config))
      assert.deepEqual(config[field], value, field);
  }
  // The F16 file saved again as F16 is lossless: same data as the independent F16 file.
  const half = await loadAdapter(join(PEFT, 'f16'));
  await saveAdapter(join(dir, 'half-again'), half, { dtype: 'F16' });
  const layout = await rawLayout(join(dir, 'half-again', 'adapter_model.safetensors'));
  assert.equal(layout.sha, expectedSave.F16.data_sha256);
});

test('melo adapter convert --dtype f16 and inspect --json', async () => {
  const out = join(dir, 'converted');
  const printed = await runAdapterCli(['convert', join(PEFT, 'f32'), '--out', out, '--dtype', 'f16']);
  assert.match(printed, /PEFT, F16/);
  const layout = await rawLayout(join(out, 'adapter_model.safetensors'));
  assert.equal(layout.sha, expectedSave.F16.data_sha256);
  // f16 → default dtype keeps f16; back to f32 widens exactly.
  await runAdapterCli(['convert', out, '--out', join(dir, 'kept')]);
  assert.equal(
    (await rawLayout(join(dir, 'kept', 'adapter_model.safetensors'))).sha,
    expectedSave.F16.data_sha256,
  );
  await runAdapterCli(['convert', out, '--out', join(dir, 'wide'), '--dtype', 'f32']);
  assertValues(await loadAdapter(join(dir, 'wide')), 'f16');

  const report = JSON.parse(await runAdapterCli(['inspect', out, '--json'])) as AdapterInspection;
  const bytes =
    (await stat(join(out, 'adapter_model.safetensors'))).size +
    (await stat(join(out, 'adapter_config.json'))).size;
  assert.deepEqual(
    {
      format: report.format,
      rank: report.rank,
      alpha: report.alpha,
      scale: report.scale,
      targets: report.targets,
      layers: report.layers,
      loraParameters: report.loraParameters,
      headParameters: report.headParameters,
      dtype: report.dtype,
      bytes: report.bytes,
      task: report.task,
      labels: report.labels,
      meloMetadata: report.meloMetadata,
    },
    {
      format: 'peft',
      rank: 4,
      alpha: 8,
      scale: 2,
      targets: ['query', 'value'],
      layers: 'all',
      loraParameters: 2 * 2 * (4 * 32 + 32 * 4),
      headParameters: 3 * 32 + 3,
      dtype: 'F16',
      bytes,
      task: 'f32',
      labels: ['0', '1', '2'],
      meloMetadata: true,
    },
  );
  const table = await runAdapterCli(['inspect', join(PEFT, 'mlp')]);
  assert.match(table, /^targets\s+query, fc1$/m);
  assert.match(table, /^layers\s+1$/m);
  assert.match(table, /^LoRA parameters\s+320$/m);
  assert.match(table, /^melo metadata\s+no \(task and labels are defaults\)$/m);
});

test('inspect of an official MeLo file and of a missing path', async () => {
  const official = join(ROOT, 'test/fixtures/interop/melo_official/lora.safetensors');
  const report = JSON.parse(await runAdapterCli(['inspect', official, '--json'])) as AdapterInspection;
  assert.equal(report.format, 'melo-official');
  assert.equal(report.rank, 2);
  assert.equal(report.scale, null);
  assert.equal(report.loraParameters, 4 * (2 * 32 + 32 * 2));
  assert.equal(report.headParameters, 96);
  assert.equal(report.bytes, (await stat(official)).size);
  await assert.rejects(
    runAdapterCli(['inspect', join(dir, 'nothing')]),
    /nothing: no such adapter directory or file/,
  );
});
