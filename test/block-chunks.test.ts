import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { withPrecision } from '../src/model/backbone.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { cacheSizedBlockChunk } from '../src/model/vit.ts';
import { vitConfig } from '../src/model/vit-config.ts';
import { INT8_GRID, INT8_GRID_16BIT_PAIRS, INT8_GRID_16BIT_PAIRS_TRAINED } from '../src/ops/quantized.ts';
import type { HostTensor } from '../src/tensor.ts';
import { buildTrainStepGraph, TrainStep, type TrainStepSpec } from '../src/train/train-step.ts';
import { cosine } from './helpers/similarity.ts';

// Blocks run over groups of images of a static batch (ViTGraphOptions.blockChunkImages): the same
// arithmetic as one pass over the batch, in a Split before each block and a Concat after it. The fp32
// step in chunks is checked against PyTorch in lora-step.test.ts; here, the policy, the wiring and int8.

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const fp32 = await loadBackbone(join(FIXTURES, 'hf'));
const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
/** int8 on the grid of CPUs without VNNI: forward activations quantised per row, as training uses there. */
const rowwise = withPrecision(fp32, 'int8', { grid: INT8_GRID_16BIT_PAIRS });
const trainedRowwise = withPrecision(fp32, 'int8', { grid: INT8_GRID_16BIT_PAIRS_TRAINED, keepFloat: true });

const splits = (spec: TrainStepSpec) =>
  buildTrainStepGraph(spec).graph.nodes.filter((node) => node.op.name === 'split');

test('cache-sized chunks: one image of ViT-B/16 at 224 px, two of ViT-S, at most 16 chunks, none for a small model', () => {
  const base = vitConfig('base', { numClasses: 2 });
  assert.equal(cacheSizedBlockChunk(base, [224, 224], 8), 1);
  assert.equal(cacheSizedBlockChunk(base, [224, 224], 16), 1);
  assert.equal(cacheSizedBlockChunk(base, [224, 224], 64), 4);
  assert.equal(cacheSizedBlockChunk(base, [224, 224], 1), undefined);
  assert.equal(cacheSizedBlockChunk(vitConfig('small', { numClasses: 2 }), [224, 224], 8), 2);
  assert.equal(cacheSizedBlockChunk(vitConfig('small', { numClasses: 2 }), [224, 224], 2), undefined);
  assert.equal(cacheSizedBlockChunk(fp32.config, [32, 32], 64), undefined);
});

test('a LoRA step splits every block where asked, and by default only through an int8 backbone', () => {
  const depth = fp32.config.depth;
  const lora = { ...adapter.lora, dropout: 0 };
  const spec = { numClasses: 3, batchSize: 5, loss: 'softmax' } as const;
  const chunked = splits({ ...spec, backbone: fp32, method: 'lora', lora, blockChunkImages: 2 });
  assert.equal(chunked.length, fp32.config.depth);
  for (const node of chunked)
    assert.deepEqual(
      node.outputs.map((value) => value.shape[0]),
      [2, 2, 1],
    );
  assert.equal(
    splits({ ...spec, backbone: rowwise, method: 'lora', lora, blockChunkImages: 'off' }).length,
    0,
  );
  assert.throws(
    () =>
      splits({
        ...spec,
        backbone: rowwise,
        method: 'lora',
        lora: { ...lora, dropout: 0.1 },
        blockChunkImages: 1,
      }),
    /block chunks cannot be combined with LoRA dropout/,
  );
  // At 1024 px the fixture ViT has 16385 tokens, 4 MiB of MLP activations per image: one image per chunk.
  const large = { ...spec, imageSize: [1024, 1024] as const };
  assert.equal(splits({ ...large, backbone: rowwise, method: 'lora', lora }).length, depth);
  assert.equal(
    splits({ ...large, backbone: rowwise, method: 'lora', lora: { ...lora, dropout: 0.1 } }).length,
    0,
  );
  assert.equal(splits({ ...large, backbone: trainedRowwise, method: 'full' }).length, 0);
  assert.equal(splits({ ...large, backbone: fp32, method: 'lora', lora }).length, 0);
  assert.equal(
    splits({ ...large, backbone: withPrecision(fp32, 'int8'), method: 'lora', lora }).length,
    depth,
  );
  assert.equal(splits({ ...spec, backbone: rowwise, method: 'lora', lora }).length, 0);
});

test('int8 LoRA step image by image, activations quantised per row: loss, logits and every gradient equal the whole-batch step to float rounding', async () => {
  const batch = {
    pixels: reference.tensors.get('input')!.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const results = [];
  for (const blockChunkImages of ['off', 1] as const) {
    const step = await TrainStep.create({
      backbone: rowwise,
      method: 'lora',
      lora: adapter.lora,
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
      blockChunkImages,
    });
    try {
      results.push(await step.run(batch, adapterFeeds(adapter)));
    } finally {
      await step.release();
    }
  }
  const [whole, chunked] = results as [(typeof results)[0], (typeof results)[0]];
  assert.ok(
    Math.abs(whole.loss - chunked.loss) <= 1e-6 * Math.abs(whole.loss),
    `loss ${whole.loss} ${chunked.loss}`,
  );
  const assertRounding = (name: string, expected: Float32Array, actual: Float32Array) => {
    const scale = Math.max(...expected.map(Math.abs));
    const worst = Math.max(...expected.map((value, i) => Math.abs(value - actual[i]!)));
    assert.ok(scale > 0 && worst <= 1e-5 * scale, `${name}: off by ${worst} of ${scale}`);
  };
  assertRounding('logits', whole.logits.data, chunked.logits.data);
  assert.equal(whole.gradients.size, 10);
  for (const [name, gradient] of whole.gradients)
    assertRounding(name, gradient.data, chunked.gradients.get(name)!.data);
});

test('int8 LoRA step image by image, activations quantised per tensor (one scale per image): every gradient has cosine ≥ 0.99 to the fp32 step', async () => {
  const batch = {
    pixels: reference.tensors.get('input')!.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const gradients = [];
  for (const [backbone, blockChunkImages] of [
    [fp32, 'off'],
    [withPrecision(fp32, 'int8', { grid: INT8_GRID }), 1],
  ] as const) {
    const step = await TrainStep.create({
      backbone,
      method: 'lora',
      lora: adapter.lora,
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
      blockChunkImages,
    });
    try {
      gradients.push((await step.run(batch, adapterFeeds(adapter))).gradients);
    } finally {
      await step.release();
    }
  }
  const [exact, chunked] = gradients as [Map<string, HostTensor>, Map<string, HostTensor>];
  assert.equal(exact.size, 10);
  const cosines = [...exact].map(
    ([name, tensor]) => [name, cosine(chunked.get(name)!.data, tensor.data)] as const,
  );
  const worst = cosines.reduce((low, entry) => (entry[1] < low[1] ? entry : low));
  console.log(`# int8 per-image scales vs fp32: lowest gradient cosine ${worst[1].toFixed(5)} (${worst[0]})`);
  assert.ok(worst[1] >= 0.99, `${worst[0]}: cosine ${worst[1]}`);
});
