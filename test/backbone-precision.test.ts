import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { serializeGraph } from '../src/graph/serialize.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { withPrecision } from '../src/model/backbone.ts';
import { buildClassifierGraph } from '../src/model/classifier-graph.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import type { LoraConfig } from '../src/model/lora-config.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { INT8_GRID, INT8_GRID_16BIT_PAIRS, INT8_GRID_16BIT_PAIRS_TRAINED } from '../src/ops/quantized.ts';
import { int8ProductsSaturate, int8TrainingGrid } from '../src/runtime/int8-kernels.ts';
import { buildApp } from '../src/serve/app.ts';
import type { HostTensor } from '../src/tensor.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { trainingBackbone } from '../src/train/training-backbone.ts';
import { runCli } from './helpers/cli.ts';
import { cosine } from './helpers/similarity.ts';

// `--backbone-precision int8` on the fixture ViT (test/fixtures/vit: hidden 32, 2 blocks, 32 px, random
// weights of timm's spread) and its PEFT LoRA adapter (rank 2 on q and v), against the same graphs in fp32.
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const input = reference.tensors.get('input')!;
const fp32 = await loadBackbone(join(FIXTURES, 'hf'));
const int8 = withPrecision(fp32, 'int8');

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
  const int8Weights = [...graph.initializers.values()].filter(
    (entry) => entry.tensor.dtype === 'int8' && entry.tensor.shape.length === 2,
  );
  assert.equal(int8Weights.length, 1 + 6 * depth);
  // Each bias is added inside its product (DynamicQuantizeMatMul's 5th input), not by an Add after it.
  const products = graph.nodes.filter((node) => node.op.onnxType === 'DynamicQuantizeMatMul');
  for (const node of products)
    assert.equal(node.inputs[4]?.name, node.inputs[1]!.name.replace(/weight\.int8$/, 'bias'));
  for (const node of graph.nodes)
    if (node.op.onnxType === 'Add')
      assert.ok(
        !node.inputs.some((input) => /(query|key|value|out|fc1|fc2|proj)\.bias$/.test(input.name)),
        `${node.name} adds a projection bias`,
      );
  // The float copies of the quantised weights are not in the model; the head and norms are.
  const names = new Set(graph.initializers.keys());
  assert.ok(!names.has('blocks.0.attn.query.weight') && !names.has('patch_embed.weight'));
  assert.ok(names.has('head.weight') && names.has('blocks.0.norm1.weight'));
  assert.ok(serializeGraph(graph).length < serializeGraph(fp32Graph()).length);
});

test('an int8 backbone keeps only the int8 copies of its projections; the graphs are the same bytes as with the floats kept', () => {
  const depth = fp32.config.depth;
  const projections = [...fp32.weights.keys()].filter((name) => !int8.weights.has(name));
  assert.equal(projections.length, 1 + 6 * depth);
  assert.deepEqual([...int8.int8Weights!.keys()].sort(), projections.sort());
  assert.ok(projections.includes('patch_embed.weight') && projections.includes('blocks.1.mlp.fc2.weight'));
  // The loaded backbone is untouched: quantising copies the map, it never mutates the caller's.
  assert.equal(fp32.weights.has('blocks.0.attn.query.weight'), true);
  const kept = withPrecision(fp32, 'int8', { keepFloat: true });
  assert.equal(kept.weights.size, fp32.weights.size);
  // Kept floats are quantised by the graphs that bind them, not held a second time as int8 copies.
  assert.equal(kept.int8Weights, undefined);
  const bytes = (backbone: typeof fp32) => {
    const graph = new GraphBuilder('int8');
    buildClassifierGraph(graph, {
      backbone,
      batch: 'batch',
      lora: { kind: 'none' },
      head: { kind: 'checkpoint' },
    });
    return serializeGraph(graph);
  };
  assert.deepEqual(bytes(int8), bytes(kept));
  assert.throws(() => withPrecision(int8, 'fp32'), /an int8 backbone cannot go back to fp32/);
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

/** One training step on the fixture batch per backbone, same parameters: each step's gradients. */
async function fixtureGradients(
  backbones: readonly (typeof fp32)[],
  spec: { method: 'lora'; lora: LoraConfig } | { method: 'full' },
  parameters: ReadonlyMap<string, HostTensor>,
): Promise<Map<string, HostTensor>[]> {
  const batch = {
    pixels: input.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  return Promise.all(
    backbones.map(async (backbone) => {
      const step = await TrainStep.create({
        backbone,
        ...spec,
        numClasses: 3,
        batchSize: 2,
        loss: 'softmax',
        threads: 1,
      });
      try {
        return (await step.run(batch, parameters)).gradients;
      } finally {
        await step.release();
      }
    }),
  );
}

/** Cosine of each int8 gradient to its fp32 twin (names in `skip` aside), the lowest one logged. */
function gradientCosines(
  [exact, quantized]: Map<string, HostTensor>[],
  label: string,
  skip: readonly string[] = [],
): (readonly [string, number])[] {
  const cosines = [...exact!]
    .filter(([name]) => !skip.includes(name))
    .map(([name, tensor]) => [name, cosine(quantized!.get(name)!.data, tensor.data)] as const);
  const worst = cosines.reduce((low, entry) => (entry[1] < low[1] ? entry : low));
  console.log(
    `# ${label} gradient cosine int8 vs fp32: min ${worst[1].toFixed(5)} (${worst[0]}) over ${cosines.length} tensors`,
  );
  return cosines;
}

// Both grids run on every CPU: the 16-bit-pair one is exact everywhere, and is what training uses where
// ORT's u8·s8 kernel saturates (runtime/int8-kernels.ts); the full grid is exact everywhere as written.
const GRIDS = [
  ['full grid', INT8_GRID],
  ['16-bit-pair grid', INT8_GRID_16BIT_PAIRS],
] as const;

for (const [gridName, grid] of GRIDS)
  test(`training through the int8 backbone on the ${gridName}: every LoRA and head gradient has cosine ≥ 0.99 to fp32 on the fixture batch`, async () => {
    const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
    const gradients = await fixtureGradients(
      [fp32, withPrecision(fp32, 'int8', { grid })],
      { method: 'lora', lora: adapter.lora },
      adapterFeeds(adapter),
    );
    for (const [name, value] of gradientCosines(gradients, `LoRA/head, ${gridName},`))
      assert.ok(value >= 0.99, `${name}: cosine ${value}`);
  });

// Full fine-tuning on both of its grids on every CPU: the 16-bit-pair one (±127 weights, ±64 rows) is
// exact everywhere and is what it trains on where ORT's u8·s8 kernel saturates (runtime/int8-kernels.ts).
const TRAINED_GRIDS = [
  ['full grid', INT8_GRID],
  ['16-bit-pair grid for trained weights', INT8_GRID_16BIT_PAIRS_TRAINED],
] as const;

for (const [gridName, grid] of TRAINED_GRIDS)
  test(`full fine-tuning through int8 (SwitchBack) on the ${gridName}: every backbone and head gradient has cosine ≥ 0.99 to fp32 on the fixture batch (the key biases’, zero in exact arithmetic, aside)`, async () => {
    const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
    // Full fine-tuning keeps the float weights (they are trained); the int8 graph quantises them per step.
    const switchBack = await trainingBackbone(fp32, 'int8', 'full', { grid });
    const parameters = adapterFeeds({ ...adapter, pairs: new Map() });
    for (const [name, tensor] of fp32.weights) if (!name.startsWith('head.')) parameters.set(name, tensor);
    const gradients = await fixtureGradients([fp32, switchBack], { method: 'full' }, parameters);
    // A key bias adds the same q·b to every score of a query row, which softmax ignores: its gradient is
    // zero in exact arithmetic, and both engines return rounding noise (~1e-7) whose direction means nothing.
    const norm = (name: string, at: number) => Math.hypot(...gradients[at]!.get(name)!.data);
    const keyBiases = [...gradients[0]!.keys()].filter((name) => name.endsWith('attn.key.bias'));
    assert.equal(keyBiases.length, 2);
    for (const name of keyBiases) assert.ok(norm(name, 0) < 1e-5 && norm(name, 1) < 1e-5, name);
    const cosines = gradientCosines(gradients, `full fine-tuning, ${gridName},`, keyBiases);
    assert.equal(cosines.length, 38);
    for (const [name, value] of cosines) assert.ok(value >= 0.99 && value < 1, `${name}: cosine ${value}`);
  });

test('int8 training takes the grid this CPU trains on exactly: one for a frozen backbone, one for trained weights, which full fine-tuning keeps in float', async () => {
  const saturates = await int8ProductsSaturate();
  const frozenGrid = await int8TrainingGrid('frozen');
  const trainedGrid = await int8TrainingGrid('trained');
  assert.equal(frozenGrid, saturates ? INT8_GRID_16BIT_PAIRS : INT8_GRID);
  assert.equal(trainedGrid, saturates ? INT8_GRID_16BIT_PAIRS_TRAINED : INT8_GRID);
  const lora = await trainingBackbone(fp32, 'int8', 'lora');
  const full = await trainingBackbone(fp32, 'int8', 'full');
  assert.equal(lora.int8Grid, frozenGrid);
  assert.equal((await trainingBackbone(fp32, 'int8', 'linear')).int8Grid, frozenGrid);
  assert.equal(full.int8Grid, trainedGrid);
  // bench:train's --int8-grid full asks for the full grid whatever the method.
  const forced = { grid: INT8_GRID };
  assert.equal((await trainingBackbone(fp32, 'int8', 'lora', forced)).int8Grid, INT8_GRID);
  assert.equal((await trainingBackbone(fp32, 'int8', 'full', forced)).int8Grid, INT8_GRID);
  assert.equal(lora.weights.has('blocks.0.attn.query.weight'), false);
  assert.equal(full.weights.has('blocks.0.attn.query.weight'), true);
  assert.equal(await trainingBackbone(fp32, 'fp32', 'full'), fp32);
  // Inference keeps the full grid on every CPU.
  assert.equal(int8.int8Grid, INT8_GRID);
});

test('melo predict --backbone-precision int8 agrees with fp32; train --method full trains through it', async () => {
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
    // Full fine-tuning through the int8 backbone trains and saves the float weights.
    const data = join(dir, 'data');
    for (const split of ['train', 'val'])
      for (const [cls, level] of [
        ['dark', 60],
        ['bright', 190],
      ] as const) {
        await mkdir(join(data, split, cls), { recursive: true });
        for (let i = 0; i < 2; i++) {
          const noisy = Buffer.alloc(20 * 24 * 3);
          for (let p = 0; p < noisy.length; p++) noisy[p] = level + ((p * 37 + i * 11) % 41) - 20;
          await sharp(noisy, { raw: { width: 20, height: 24, channels: 3 } })
            .png()
            .toFile(join(data, split, cls, `${i}.png`));
        }
      }
    const trained = await runCli([
      'train',
      '--backbone',
      join(FIXTURES, 'hf'),
      '--method',
      'full',
      '--backbone-precision',
      'int8',
      '--data',
      data,
      '--out',
      join(dir, 'full'),
      '--epochs',
      '1',
      '--batch-size',
      '2',
    ]);
    assert.equal(trained.code, 0, trained.stderr);
    // The saved weights are float, finite, and moved by the step.
    const saved = await readSafetensors(join(dir, 'full', 'model.safetensors'));
    const before = await readSafetensors(join(FIXTURES, 'hf', 'model.safetensors'));
    const key = [...saved.tensors.keys()].find((name) =>
      name.endsWith('layer.0.attention.attention.query.weight'),
    );
    assert.ok(key, `no query weight among ${saved.tensors.size} tensors`);
    const [after, initial] = [saved.tensors.get(key)!, before.tensors.get(key)!];
    assert.ok(after.data instanceof Float32Array && after.data.every(Number.isFinite));
    assert.notDeepEqual(after.data, initial.data);
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

test('embed, export-onnx and serve at int8 (float projections dropped) agree with fp32', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-int8-paths-'));
  try {
    const image = join(dir, 'noise.png');
    const pixels = Buffer.alloc(32 * 32 * 3);
    for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 29 + (i >> 4) * 13) % 256;
    await sharp(pixels, { raw: { width: 32, height: 32, channels: 3 } })
      .png()
      .toFile(image);
    const backbone = join(FIXTURES, 'hf');
    const adapter = join(FIXTURES, 'lora_adapter');

    const embed = async (precision: string) => {
      const result = await runCli([
        'embed',
        '--backbone',
        backbone,
        '--backbone-precision',
        precision,
        '--json',
        image,
      ]);
      assert.equal(result.code, 0, result.stderr);
      return (JSON.parse(result.stdout) as { embeddings: { embedding: number[] }[] }).embeddings[0]!
        .embedding;
    };
    const [exactEmbedding, int8Embedding] = [await embed('fp32'), await embed('int8')];
    assert.ok(
      cosine(int8Embedding, exactEmbedding) > 0.99 && relativeMaxError(int8Embedding, exactEmbedding) > 0,
    );

    // Export merges LoRA into the float projections before quantising them: the int8 file holds int8
    // weights (smaller) and its logits stay within 5% of the fp32 export's.
    const exported = async (precision: string, ...more: string[]) => {
      const out = join(dir, `${precision}${more.join('')}.onnx`);
      const result = await runCli([
        'export-onnx',
        '--backbone',
        backbone,
        '--adapter',
        adapter,
        '--backbone-precision',
        precision,
        '--out',
        out,
        ...more,
      ]);
      assert.equal(result.code, 0, result.stderr);
      const session = await ort.InferenceSession.create(await readFile(out));
      const feeds = { pixel_values: new ort.Tensor('float32', input.data, [...input.shape]) };
      const logits = (await session.run(feeds)).logits!.data as Float32Array;
      return { logits, bytes: (await readFile(out)).length };
    };
    const [exactExport, int8Export] = [await exported('fp32'), await exported('int8')];
    assert.ok(int8Export.bytes < exactExport.bytes);
    const exportError = relativeMaxError(int8Export.logits, exactExport.logits);
    assert.ok(exportError > 0 && exportError < 0.05, `int8 export off by ${exportError}`);
    // Weights written as uint8 + 128 (for CPUs without VNNI) are the same numbers: where ORT's u8·s8
    // kernel is exact, both files give the same logits; where it saturates, only the uint8 one is right.
    const [signedExport, unsignedExport] = [
      await exported('int8', '--int8-weights', 'int8'),
      await exported('int8', '--int8-weights', 'uint8'),
    ];
    const encodingGap = relativeMaxError(unsignedExport.logits, signedExport.logits);
    if (await int8ProductsSaturate())
      assert.ok(relativeMaxError(unsignedExport.logits, int8Export.logits) < 1e-5);
    else assert.ok(encodingGap < 1e-5, `uint8 and int8 exports differ by ${encodingGap}`);

    // The server on an int8 backbone answers like the fp32 one.
    await cp(adapter, join(dir, 'adapters', 'task'), { recursive: true });
    const probabilities = async (precision: 'fp32' | 'int8') => {
      const app = await buildApp({
        backbone: withPrecision(await loadBackbone(backbone), precision),
        adapters: join(dir, 'adapters'),
        watch: false,
        rescanMs: 0,
        threads: 1,
      });
      try {
        const response = await app.inject({
          method: 'POST',
          url: '/v1/predict?tasks=task',
          payload: await readFile(image),
          headers: { 'content-type': 'image/png' },
        });
        assert.equal(response.statusCode, 200, response.body);
        return response.json<{ results: { probabilities: number[] }[] }>().results[0]!.probabilities;
      } finally {
        await app.close();
      }
    };
    const [exactServed, int8Served] = [await probabilities('fp32'), await probabilities('int8')];
    const served = exactServed.map((p, i) => Math.abs(p - int8Served[i]!));
    assert.ok(
      Math.max(...served) < 0.05 && Math.max(...served) > 0,
      `served probabilities differ by ${served}`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
