import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { serializeGraph } from '../src/graph/serialize.ts';
import { loadAdapter } from '../src/io/peft.ts';
import type { Backbone } from '../src/model/backbone.ts';
import { buildClassifierGraph } from '../src/model/classifier-graph.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { runCli } from './helpers/cli.ts';

// `--backbone-precision int8` on the fixture ViT (test/fixtures/vit: hidden 32, 2 blocks, 32 px, random
// weights of timm's spread) and its PEFT LoRA adapter (rank 2 on q and v), against the same graphs in fp32.
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const input = reference.tensors.get('input')!;
const fp32 = await loadBackbone(join(FIXTURES, 'hf'));
const int8: Backbone = { ...fp32, precision: 'int8' };

/** Largest |a − b| over the largest |b|: the error on the scale of the logits. */
function relativeMaxError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let error = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    error = Math.max(error, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return error / scale;
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! ** 2;
    bb += b[i]! ** 2;
  }
  return ab / Math.sqrt(aa * bb);
}

test('int8 graphs: every frozen projection (patch embedding, q, k, v, output, fc1, fc2) is one int8 product, nothing else', () => {
  const graph = new GraphBuilder('int8');
  buildClassifierGraph(graph, {
    backbone: int8,
    batch: 'batch',
    lora: { kind: 'none' },
    head: { kind: 'checkpoint' },
    lastBlock: 'all',
  });
  const ops = graph.nodes.map((node) => node.op.onnxType);
  const depth = fp32.config.depth;
  assert.equal(ops.filter((op) => op === 'DynamicQuantizeMatMul').length, 1 + 6 * depth);
  const int8Weights = [...graph.initializers.values()].filter((entry) => entry.tensor.dtype === 'int8');
  assert.equal(int8Weights.length, 1 + 6 * depth);
  // The float copies of the quantised weights are not in the model; the head and norms are.
  const names = new Set(graph.initializers.keys());
  assert.ok(!names.has('blocks.0.attn.query.weight') && !names.has('patch_embed.weight'));
  assert.ok(names.has('head.weight') && names.has('blocks.0.norm1.weight'));
  assert.ok(serializeGraph(graph).length < serializeGraph(fp32Graph()).length);
});

function fp32Graph(): GraphBuilder {
  const graph = new GraphBuilder('fp32');
  buildClassifierGraph(graph, {
    backbone: fp32,
    batch: 'batch',
    lora: { kind: 'none' },
    head: { kind: 'checkpoint' },
  });
  return graph;
}

test('int8 logits of the backbone classifier stay within 5% of the logit scale of fp32 (measured 1–2%)', async () => {
  const [a, b] = await Promise.all(
    [fp32, int8].map((backbone) => BackboneClassifier.create(backbone, { threads: 1 })),
  );
  const exact = (await a!.run(input.data, 2)).logits!.data;
  const quantized = (await b!.run(input.data, 2)).logits!.data;
  const error = relativeMaxError(quantized, exact);
  console.log(`# int8 vs fp32 backbone logits: max error ${(100 * error).toFixed(2)}% of the largest logit`);
  assert.ok(error < 0.05, `int8 logits off by ${error}`);
  assert.ok(error > 0, 'the int8 graph must differ from fp32 at all');
  await Promise.all([a!.release(), b!.release()]);
});

test('an adapter works in both precisions: LoRA task logits int8 vs fp32 within 5% of the logit scale', async () => {
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const weights = adapterFeeds(adapter);
  const logits = await Promise.all(
    [fp32, int8].map(async (backbone) => {
      const model = await TaskModel.create({
        backbone,
        method: 'lora',
        lora: adapter.lora,
        numClasses: 3,
        threads: 1,
      });
      try {
        return (await model.run(input.data, 2, weights)).data;
      } finally {
        await model.release();
      }
    }),
  );
  const error = relativeMaxError(logits[1]!, logits[0]!);
  console.log(`# int8 vs fp32 LoRA task logits: max error ${(100 * error).toFixed(2)}% of the largest logit`);
  assert.ok(error < 0.05, `int8 task logits off by ${error}`);
});

test('training through the int8 backbone: every LoRA and head gradient has cosine ≥ 0.99 to fp32 on the fixture batch', async () => {
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const batch = {
    pixels: input.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const gradients = await Promise.all(
    [fp32, int8].map(async (backbone) => {
      const step = await TrainStep.create({
        backbone,
        method: 'lora',
        lora: adapter.lora,
        numClasses: 3,
        batchSize: 2,
        loss: 'softmax',
        threads: 1,
      });
      try {
        return (await step.run(batch, adapterFeeds(adapter))).gradients;
      } finally {
        await step.release();
      }
    }),
  );
  const cosines = [...gradients[0]!].map(
    ([name, exact]) => [name, cosine(gradients[1]!.get(name)!.data, exact.data)] as const,
  );
  const worst = cosines.reduce((low, entry) => (entry[1] < low[1] ? entry : low));
  console.log(
    `# LoRA/head gradient cosine int8 vs fp32: min ${worst[1].toFixed(5)} (${worst[0]}) over ${cosines.length} tensors`,
  );
  for (const [name, value] of cosines) assert.ok(value >= 0.99, `${name}: cosine ${value}`);
});

test('melo predict --backbone-precision int8 agrees with fp32; train refuses int8 with full fine-tuning', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-int8-'));
  try {
    const image = join(dir, 'noise.png');
    const pixels = Buffer.alloc(32 * 32 * 3);
    for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) % 256;
    await sharp(pixels, { raw: { width: 32, height: 32, channels: 3 } })
      .png()
      .toFile(image);
    const run = async (precision: string) => {
      const result = await runCli([
        'predict',
        '--backbone',
        join(FIXTURES, 'hf'),
        '--backbone-precision',
        precision,
        '--json',
        image,
      ]);
      assert.equal(result.code, 0, result.stderr);
      return (JSON.parse(result.stdout) as { predictions: { logits: number[] }[] }).predictions[0]!.logits;
    };
    const [exact, quantized] = [await run('fp32'), await run('int8')];
    const error = relativeMaxError(quantized, exact);
    assert.ok(error < 0.05 && error > 0, `CLI int8 logits off by ${error}`);
    const refused = await runCli([
      'train',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--method',
      'full',
      '--backbone-precision',
      'int8',
      '--data',
      dir,
      '--out',
      join(dir, 'out'),
    ]);
    assert.notEqual(refused.code, 0);
    assert.match(
      refused.stderr,
      /--backbone-precision int8 quantises the frozen backbone; --method full trains it/,
    );
    const bad = await runCli([
      'predict',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--backbone-precision',
      'int4',
      image,
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /int4/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
