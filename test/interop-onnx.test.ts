import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import type { Command } from 'commander';
import onnxProto from 'onnx-proto';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { registerExportOnnxCommand } from '../src/cli/commands/export-onnx.ts';
import { buildProgram } from '../src/cli/main.ts';
import { buildOnnxExport } from '../src/io/onnx-export.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { loadTasks, predict, predictTasks, preparePixels } from '../src/predict.ts';
import { runCli } from './helpers/cli.ts';
import { assertClose } from './helpers/graph.ts';

const { onnx } = onnxProto;
const ROOT = new URL('..', import.meta.url).pathname;
const VIT = join(ROOT, 'test/fixtures/vit');
const ADAPTER = join(VIT, 'lora_adapter');
const MLP_ADAPTER = join(ROOT, 'test/fixtures/interop/peft/mlp');
const BCCD = process.env.MELO_BCCD_DIR ?? resolve(ROOT, '../shared/data/bccd');

let dir = '';
let hf: Backbone;
const images: string[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-interop-onnx-'));
  hf = await loadBackbone(join(VIT, 'hf'));
  for (const name of ['BloodImage_00000.jpg', 'BloodImage_00007.jpg', 'BloodImage_00011.jpg']) {
    const path = join(BCCD, 'BCCD/JPEGImages', name);
    if (existsSync(path)) images.push(path);
  }
  // Always at least one image that does not depend on the shared data.
  const synthetic = join(dir, 'gradient.png');
  const raw = Buffer.alloc(48 * 40 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 37) % 251;
  await sharp(raw, { raw: { width: 48, height: 40, channels: 3 } })
    .png()
    .toFile(synthetic);
  images.push(synthetic);
});
after(() => rm(dir, { recursive: true, force: true }));

async function exportWithCli(args: string[]): Promise<string> {
  const program = buildProgram();
  let stdout = '';
  const commands = program.commands as Command[];
  const wired = commands.findIndex((command) => command.name() === 'export-onnx');
  if (wired >= 0) commands.splice(wired, 1);
  registerExportOnnxCommand(program, {
    stdout: (text) => {
      stdout += text;
    },
  });
  await program.parseAsync(['export-onnx', ...args], { from: 'user' });
  return stdout;
}

/** Runs an ONNX file in a fresh, default onnxruntime session, as any other consumer would. */
async function runOnnx(path: string, pixels: Float32Array, batch: number): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(path);
  try {
    assert.deepEqual(session.inputNames, ['pixel_values']);
    assert.deepEqual(session.outputNames, ['logits']);
    const out = await session.run({ pixel_values: new ort.Tensor('float32', pixels, [batch, 3, 32, 32]) });
    return out.logits!.data as Float32Array;
  } finally {
    await session.release();
  }
}

function decode(bytes: Uint8Array) {
  return onnx.ModelProto.decode(bytes);
}

test('export-onnx with a LoRA adapter gives the logits of melo predict --adapter on real images', async (t) => {
  if (images.length === 1) t.diagnostic(`BCCD images not found under ${BCCD}; synthetic image only`);
  const out = join(dir, 'task.onnx');
  const printed = await exportWithCli([
    '--backbone',
    join(VIT, 'hf'),
    '--adapter',
    ADAPTER,
    '--out',
    out,
    '--json',
  ]);
  const summary = JSON.parse(printed) as { task: string; labels: string[]; opset: number; bytes: number };
  assert.equal(summary.task, 'lora_adapter');
  assert.ok(summary.opset <= 18);

  const cli = await runCli([
    'predict',
    '--backbone',
    join(VIT, 'hf'),
    '--adapter',
    ADAPTER,
    '--threads',
    '1',
    '--json',
    ...images,
  ]);
  assert.equal(cli.code, 0, cli.stderr);
  const predictions = (JSON.parse(cli.stdout) as { predictions: { logits: number[]; labels: string[] }[] })
    .predictions;
  assert.equal(predictions.length, images.length);
  assert.deepEqual(summary.labels, predictions[0]!.labels);

  const pixels = await preparePixels(hf, images);
  const logits = await runOnnx(out, pixels, images.length);
  assertClose(
    logits,
    predictions.flatMap((p) => p.logits),
    1e-4,
    'ONNX vs melo predict --adapter',
  );
  // The merged adapter matters: the backbone's own head gives other logits.
  const base = await predict(hf, images, { threads: 1 });
  const diff = Math.max(
    ...base.flatMap((p, i) => p.logits.map((v, j) => Math.abs(v - predictions[i]!.logits[j]!))),
  );
  assert.ok(diff > 1e-2, `adapter should change the logits (max diff ${diff})`);
  // One image at a time gives the same rows (symbolic batch).
  const single = await runOnnx(out, pixels.subarray(0, 3 * 32 * 32), 1);
  assertClose(single, logits.subarray(0, 3), 1e-5, 'batch 1 row');
});

test('the exported file is plain ONNX: one graph input, default-domain ops only, opset ≤ 18, metadata', async () => {
  const bytes = await readFile(join(dir, 'task.onnx'));
  const model = decode(bytes);
  assert.deepEqual(
    model.graph!.input!.map((input) => input.name),
    ['pixel_values'],
  );
  const dims = model.graph!.input![0]!.type!.tensorType!.shape!.dim!.map(
    (dim) => dim.dimParam || Number(dim.dimValue),
  );
  assert.deepEqual(dims, ['batch', 3, 32, 32]);
  assert.deepEqual(
    model.graph!.output!.map((output) => output.name),
    ['logits'],
  );
  for (const opset of model.opsetImport!) {
    assert.ok(!opset.domain, `opset domain '${opset.domain}'`);
    assert.ok(Number(opset.version) <= 18, `opset ${opset.version}`);
  }
  const domains = new Set(model.graph!.node!.map((node) => node.domain ?? ''));
  assert.deepEqual([...domains], ['']);
  const initializers = new Set(model.graph!.initializer!.map((tensor) => tensor.name));
  assert.ok(initializers.has('blocks.1.attn.value.weight') && initializers.has('head.weight'));
  assert.ok(model.graph!.node!.length > 50, 'structure and weights are both in the one graph field');
  assert.ok(![...initializers].some((name) => name!.startsWith('lora.')), 'no LoRA factors: they are merged');
  const props = Object.fromEntries(model.metadataProps!.map((entry) => [entry.key, entry.value]));
  const adapter = await loadAdapter(ADAPTER);
  assert.equal(props.task, 'lora_adapter');
  assert.deepEqual(JSON.parse(props.labels!), ['normal', 'benign', 'malignant']);
  assert.deepEqual(JSON.parse(props.mean!), [0.5, 0.5, 0.5]);
  assert.deepEqual(JSON.parse(props.std!), [0.5, 0.5, 0.5]);
  assert.deepEqual(JSON.parse(props.image_size!), [32, 32]);
  assert.equal(props.backbone_fingerprint, hf.fingerprint);
  assert.deepEqual(JSON.parse(props.lora_merged!), {
    rank: adapter.lora.rank,
    alpha: adapter.lora.alpha,
    scale: 2,
    targets: ['query', 'value'],
  });
});

test('an MLP-targeted adapter on one block merges too (library API)', async () => {
  const adapter = await loadAdapter(MLP_ADAPTER);
  const exported = buildOnnxExport(hf, { task: { adapter } });
  const path = join(dir, 'mlp.onnx');
  await writeFile(path, exported.bytes);
  const tasks = await loadTasks(hf, [MLP_ADAPTER]);
  const expected = (await predictTasks(hf, tasks, images, { threads: 1 })).flatMap((p) => p.logits);
  assertClose(
    await runOnnx(path, await preparePixels(hf, images), images.length),
    expected,
    1e-4,
    'mlp adapter',
  );
});

test('without --adapter the backbone is exported with its own head; a headless backbone is refused', async () => {
  const out = join(dir, 'backbone.onnx');
  const printed = await exportWithCli(['--backbone', join(VIT, 'timm'), '--out', out]);
  assert.match(printed, /task 'backbone', 3 classes, pixel_values \[batch, 3, 32, 32\] → logits/);
  const timm = await loadBackbone(join(VIT, 'timm'));
  const reference = await predict(timm, images, { threads: 1 });
  const logits = await runOnnx(out, await preparePixels(timm, images), images.length);
  assertClose(
    logits,
    reference.flatMap((p) => p.logits),
    1e-4,
    'backbone head',
  );
  const props = Object.fromEntries(
    decode(await readFile(out)).metadataProps!.map((entry) => [entry.key, entry.value]),
  );
  assert.equal(props.task, 'backbone');
  assert.equal(props.lora_merged, undefined);

  await assert.rejects(
    exportWithCli(['--backbone', join(VIT, 'hf-model'), '--out', join(dir, 'none.onnx')]),
    /hf-model: backbone has no classifier head; pass the task adapter/,
  );
  assert.equal(existsSync(join(dir, 'none.onnx')), false);
  await assert.rejects(
    exportWithCli([
      '--backbone',
      join(VIT, 'hf'),
      '--adapter',
      join(dir, 'missing'),
      '--out',
      join(dir, 'x.onnx'),
    ]),
    /missing: adapter directory does not exist/,
  );
});
