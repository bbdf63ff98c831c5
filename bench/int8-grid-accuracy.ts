/**
 * `npx tsx bench/int8-grid-accuracy.ts`: how close training gradients through the int8 backbone are to
 * fp32's on each int8 grid (src/ops/quantized.ts, Int8Grid). The model is test/backbone-precision.test.ts's
 * fixture ViT (hidden 32, 2 blocks, 32 px) with its LoRA adapter; each batch runs one training step in fp32
 * and one in int8, and every trainable gradient is compared by cosine (the key biases aside for full
 * fine-tuning: zero in exact arithmetic). Batches: the fixture batch (the one the 0.99 gate of the tests
 * uses), then `--batches` batches of 8 random normal images with cycling labels, so that a grid is not
 * chosen on one batch's luck. A grid is `weights/rows/forward`: weight levels, row levels, and 'dq' (the
 * forward's activations per tensor in DynamicQuantizeMatMul) or 'rows' (per row, as the gradients).
 * `full` is 127/127/dq, `16bit` 90/90/rows (INT8_GRID_16BIT_PAIRS), `reduce-range` 63/127/dq (7-bit weights,
 * ONNX Runtime's reduce_range). Exact on every CPU for grids whose pairs fit 16 bits, and for every grid on
 * CPUs with VNNI (the numbers then do not depend on the machine); elsewhere ORT's u8·s8 kernel saturates
 * and the others run as uint8 (runtime/session.ts), exact as well.
 *
 *   npx tsx bench/int8-grid-accuracy.ts [-- --method lora|full --batches 12 --grids full,16bit,90/90/rows --out FILE]
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { writeJsonAtomic } from '../src/io/atomic.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { type Backbone, withPrecision } from '../src/model/backbone.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { INT8_GRID, INT8_GRID_16BIT_PAIRS, type Int8Grid } from '../src/ops/quantized.ts';
import type { HostTensor } from '../src/tensor.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { Random } from '../src/util/random.ts';
import { integerOption } from './lib/args.ts';
import { machineInfo } from './lib/machine.ts';

const FIXTURES = new URL('../test/fixtures/vit/', import.meta.url).pathname;
const NAMED_GRIDS: Readonly<Record<string, Int8Grid>> = {
  full: INT8_GRID,
  '16bit': INT8_GRID_16BIT_PAIRS,
  'reduce-range': { weightLevels: 63, rowLevels: 127, rowwiseForward: false },
};

const { values } = parseArgs({
  options: {
    method: { type: 'string', default: 'lora' },
    batches: { type: 'string', default: '12' },
    grids: { type: 'string', default: 'full,16bit,reduce-range' },
    out: { type: 'string' },
  },
});
if (values.method !== 'lora' && values.method !== 'full')
  throw new Error(`--method: lora or full, not '${values.method}'`);
const method: 'lora' | 'full' = values.method;
const batchCount = integerOption('batches', values.batches, 1);
const grids = values.grids.split(',').map((spec) => [spec, parseGrid(spec)] as const);

function parseGrid(spec: string): Int8Grid {
  const named = NAMED_GRIDS[spec];
  if (named) return named;
  const match = /^(\d+)\/(\d+)\/(dq|rows)$/.exec(spec);
  const [weightLevels, rowLevels] = [Number(match?.[1]), Number(match?.[2])];
  if (!match || !(weightLevels >= 1 && weightLevels <= 127 && rowLevels >= 1 && rowLevels <= 127))
    throw new Error(`--grids: '${spec}' is not full, 16bit, reduce-range or weights/rows/dq|rows (1–127)`);
  return { weightLevels, rowLevels, rowwiseForward: match[3] === 'rows' };
}

interface Batch {
  readonly pixels: Float32Array;
  readonly targets: Float32Array;
  readonly sampleWeights: Float32Array;
}

const CLASSES = 3;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const fp32 = await loadBackbone(join(FIXTURES, 'hf'));
const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
const parameters = adapterFeeds(method === 'lora' ? adapter : { ...adapter, pairs: new Map() });
if (method === 'full')
  for (const [name, tensor] of fp32.weights) if (!name.startsWith('head.')) parameters.set(name, tensor);
const fixtureBatch: Batch = {
  pixels: reference.tensors.get('input')!.data,
  targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
  sampleWeights: Float32Array.from([0.5, 0.5]),
};
const randomBatches = Array.from({ length: batchCount }, (_, seed) => randomBatch(seed, 8));

function randomBatch(seed: number, size: number): Batch {
  const random = new Random(seed);
  const [channels, [height, width]] = [fp32.config.channels, fp32.config.imageSize];
  const pixels = Float32Array.from({ length: size * channels * height * width }, () => random.normal());
  const targets = new Float32Array(size * CLASSES);
  for (let i = 0; i < size; i++) targets[i * CLASSES + ((seed + i) % CLASSES)] = 1;
  return { pixels, targets, sampleWeights: new Float32Array(size).fill(1 / size) };
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let [ab, aa, bb] = [0, 0, 0];
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! ** 2;
    bb += b[i]! ** 2;
  }
  return ab / Math.sqrt(aa * bb);
}

/** Each batch's gradients, one training step per batch on `backbone`. */
async function gradients(backbone: Backbone, batches: readonly Batch[]): Promise<Map<string, HostTensor>[]> {
  const batchSize = batches[0]!.sampleWeights.length;
  const step = await TrainStep.create({
    backbone,
    method,
    ...(method === 'lora' ? { lora: adapter.lora } : {}),
    numClasses: CLASSES,
    batchSize,
    loss: 'softmax',
  });
  try {
    const out = [];
    for (const batch of batches) out.push((await step.run(batch, parameters)).gradients);
    return out;
  } finally {
    await step.release();
  }
}

/** Per batch, the cosine of every compared gradient to fp32's. */
async function cosines(backbone: Backbone, batches: readonly Batch[], exact: Map<string, HostTensor>[]) {
  const quantized = await gradients(backbone, batches);
  return exact.map((tensors, at) =>
    [...tensors]
      .filter(([name]) => !name.endsWith('attn.key.bias'))
      .map(([name, tensor]) => cosine(quantized[at]!.get(name)!.data, tensor.data)),
  );
}

const exactFixture = await gradients(fp32, [fixtureBatch]);
const exactRandom = await gradients(fp32, randomBatches);
const results = [];
for (const [name, grid] of grids) {
  const int8 = withPrecision(fp32, 'int8', { keepFloat: method === 'full', grid });
  const fixture = Math.min(...(await cosines(int8, [fixtureBatch], exactFixture))[0]!);
  const perBatch = await cosines(int8, randomBatches, exactRandom);
  const lowest = perBatch.map((values) => Math.min(...values)).sort((a, b) => a - b);
  const all = perBatch.flat();
  const meanError = all.reduce((sum, value) => sum + (1 - value), 0) / all.length;
  const result = {
    grid: name,
    ...grid,
    fixtureLowestCosine: fixture,
    randomLowestCosine: lowest[0]!,
    randomMedianLowestCosine: lowest[lowest.length >> 1]!,
    randomMeanOneMinusCosine: meanError,
  };
  results.push(result);
  console.log(
    `${method} ${name.padEnd(14)} fixture batch: lowest cosine ${fixture.toFixed(5)} | ${batchCount} random batches of 8: lowest ${lowest[0]!.toFixed(5)}, median lowest ${result.randomMedianLowestCosine.toFixed(5)}, mean 1 − cosine ${meanError.toExponential(2)}`,
  );
}
// An accuracy study, not a timing: its JSON holds cosines, not BenchResult's images per second.
if (values.out)
  await writeJsonAtomic(values.out, {
    bench: 'int8-grid-accuracy',
    model: 'test/fixtures/vit (hidden 32, 2 blocks, 32 px) with its LoRA adapter',
    method,
    batches: batchCount,
    machine: machineInfo(),
    results,
  });
