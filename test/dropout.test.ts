import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { openDataSplits } from '../src/data/open.ts';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { NO_AUGMENT } from '../src/imaging/augment.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { loraDropoutSeed } from '../src/model/lora.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { dropout } from '../src/ops/dropout.ts';
import { mul } from '../src/ops/elementwise.ts';
import { reduceSum } from '../src/ops/reduce.ts';
import { Session } from '../src/runtime/session.ts';
import type { HostTensor } from '../src/tensor.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { TrainingInterrupted, type TrainOptions, train } from '../src/train/trainer.ts';
import { Random } from '../src/util/random.ts';
import { runCli } from './helpers/cli.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DATA = process.env.MELO_DATA_DIR ?? new URL('../../shared/data/medmnist', import.meta.url).pathname;

/** A graph with two dropout nodes (different seeds) over an input fed with ones: their outputs are the masks. */
async function maskSession(ratio: number, seeds: readonly [number, number], shape: readonly number[]) {
  const graph = new GraphBuilder('masks');
  const like = graph.input('like', shape);
  graph.output(dropout(like, ratio, seeds[0]), 'first');
  graph.output(dropout(like, ratio, seeds[1]), 'second');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const feed = { like: { shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(1) } };
  return { run: () => session.run(feed), release: () => session.release() };
}

const equal = (a: Float32Array, b: Float32Array) => a.every((value, i) => value === b[i]);

test('dropout masks: 0 or 1/(1-p) as ORT computes it in float32, about p dropped, fresh per run and per node', async () => {
  const ratio = 0.3;
  const shape = [40, 50, 32]; // 64,000 elements: the dropped share is within ±0.0073 at 4 sigma
  const kept = Math.fround(1 / Math.fround(1 - Math.fround(ratio)));
  const session = await maskSession(ratio, [11, 12], shape);
  const run1 = await session.run();
  const run2 = await session.run();
  for (const mask of [run1.first!.data, run1.second!.data, run2.first!.data]) {
    let dropped = 0;
    for (const value of mask) {
      if (value === 0) dropped++;
      else assert.equal(value, kept);
    }
    const share = dropped / mask.length;
    assert.ok(
      Math.abs(share - ratio) < 4 * Math.sqrt((ratio * (1 - ratio)) / mask.length),
      `dropped ${share}`,
    );
  }
  assert.ok(!equal(run1.first!.data, run1.second!.data), 'two nodes with different seeds drew the same mask');
  assert.ok(!equal(run1.first!.data, run2.first!.data), 'a second run repeated the first mask');
  await session.release();

  // A new session with the same seeds replays the same sequence: what makes runs reproducible.
  const again = await maskSession(ratio, [11, 12], shape);
  const replay1 = await again.run();
  const replay2 = await again.run();
  assert.ok(equal(replay1.first!.data, run1.first!.data) && equal(replay1.second!.data, run1.second!.data));
  assert.ok(equal(replay2.first!.data, run2.first!.data));
  await again.release();
});

test('LoRA dropout seeds: one stream per projection, spaced apart; runsDone advances every stream by one', () => {
  const seeds = new Set<number>();
  for (let layer = 0; layer < 48; layer++)
    for (const target of ['query', 'key', 'value', 'output', 'fc1', 'fc2'] as const) {
      const seed = loraDropoutSeed({ seed: 5, runsDone: 0 }, layer, target);
      assert.ok(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 31 - 1, `seed ${seed}`);
      assert.equal(loraDropoutSeed({ seed: 5, runsDone: 7 }, layer, target), (seed + 7) % (2 ** 31 - 1));
      seeds.add(seed);
    }
  assert.equal(seeds.size, 288);
  // Streams of neighbouring projections start about 4.2 million runs apart (modulo 2^31 − 1).
  const query = loraDropoutSeed({ seed: 5, runsDone: 0 }, 3, 'query');
  const value = loraDropoutSeed({ seed: 5, runsDone: 0 }, 3, 'value');
  const gap = (value - query + (2 ** 31 - 1)) % (2 ** 31 - 1);
  assert.equal(gap, 2 * Math.floor((2 ** 31 - 1) / 512));
  assert.notEqual(loraDropoutSeed({ seed: 6, runsDone: 0 }, 3, 'query'), query, 'another run seed');
  assert.throws(() => loraDropoutSeed({ seed: 5, runsDone: 0 }, 86, 'query'), /supports 512 projections/);
  // The patch embedding (a global projection) takes the last node (511): never a block's.
  const patch = loraDropoutSeed({ seed: 5, runsDone: 0 }, undefined, 'patch_embed');
  const lastNode =
    (patch - loraDropoutSeed({ seed: 5, runsDone: 0 }, 0, 'query') + (2 ** 31 - 1)) % (2 ** 31 - 1);
  assert.equal(lastNode, 511 * Math.floor((2 ** 31 - 1) / 512));
  assert.ok(!seeds.has(patch));
  assert.doesNotThrow(() => loraDropoutSeed({ seed: 5, runsDone: 0 }, 85, 'query')); // node 510
  assert.throws(() => loraDropoutSeed({ seed: 5, runsDone: 0 }, 85, 'key'), /supports 512 projections/);
});

test('dropout VJP: the gradient is the upstream gradient times the mask ORT drew, scaled by 1/(1-p)', async () => {
  const ratio = 0.25;
  const shape = [6, 7];
  const graph = new GraphBuilder('dropout-grad');
  const x = graph.input('x', shape);
  const w = graph.input('w', shape);
  const y = dropout(x, ratio, 9);
  const loss = reduceSum(mul(y, w), [0, 1]);
  const gradients = buildBackward(graph, loss, [x]);
  graph.output(y, 'y');
  graph.output(gradients.get(x)!, 'x_grad');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const random = new Random(1);
  const xData = Float32Array.from({ length: 42 }, () => 0.5 + random.uniform(0, 1));
  const wData = Float32Array.from({ length: 42 }, () => random.normal());
  const kept = Math.fround(1 / Math.fround(1 - Math.fround(ratio)));
  for (let run = 0; run < 2; run++) {
    const out = await session.run({ x: { shape, data: xData }, w: { shape, data: wData } });
    let dropped = 0;
    out.x_grad!.data.forEach((gradient, i) => {
      const keptHere = out.y!.data[i] !== 0;
      if (!keptHere) dropped++;
      // ORT's kernel may round x·mask·scale in another order: within one float32 ulp.
      const expectedY = keptHere ? xData[i]! * kept : 0;
      assert.ok(Math.abs(out.y!.data[i]! - expectedY) <= 2 ** -23 * Math.abs(expectedY), `y[${i}]`);
      const expected = keptHere ? Math.fround(wData[i]! * kept) : 0;
      assert.ok(gradient === expected, `x_grad[${i}] ${gradient}, expected ${expected}`); // -0 counts as 0
    });
    assert.ok(dropped > 0 && dropped < 42, `run ${run}: ${dropped} of 42 dropped`);
  }
  await session.release();
});

test('dropout refuses a ratio outside (0, 1) and a seed outside [0, 2^31) at build time', () => {
  const graph = new GraphBuilder('bad');
  const like = graph.input('like', [2, 3]);
  assert.throws(() => dropout(like, 1, 0), /dropout ratio must be in \(0, 1\), got 1/);
  assert.throws(() => dropout(like, 0, 0), /got 0/);
  assert.throws(() => dropout(like, 0.1, -1), /dropout seed must be an integer/);
  assert.throws(() => dropout(like, 0.1, 2 ** 31), /dropout seed/);
});

test('LoRA step with dropout: gradients match central differences of the same masked loss', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
  const lora = { ...adapter.lora, dropout: 0.5 };
  const batch = {
    pixels: reference.tensors.get('input')!.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const base = adapterFeeds(adapter);
  // A fresh step's first run draws the same masks for the same seed, so each loss below sees one mask set.
  const firstRun = async (parameters: ReadonlyMap<string, HostTensor>, dropout: number, seed: number) => {
    const step = await TrainStep.create({
      backbone,
      method: 'lora',
      lora: { ...lora, dropout },
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
      dropout: { seed, runsDone: 0 },
    });
    const result = await step.run(batch, parameters);
    await step.release();
    return result;
  };
  const analytic = await firstRun(base, 0.5, 5);
  const undropped = await firstRun(base, 0, 5);
  const otherSeed = await firstRun(base, 0.5, 6);
  assert.ok(Math.abs(analytic.loss - undropped.loss) > 1e-3, 'dropout did not change the loss');
  assert.ok(Math.abs(analytic.loss - otherSeed.loss) > 1e-4, 'another seed drew the same masks');

  // Direction over the LoRA factors only (the head sees no dropout), scaled so that ε·d is a small step.
  const random = new Random(3);
  const direction = new Map<string, Float32Array>();
  let derivative = 0;
  for (const [name, tensor] of base) {
    if (!name.startsWith('lora.')) continue;
    const d = Float32Array.from(tensor.data, () => random.normal());
    direction.set(name, d);
    const gradient = analytic.gradients.get(name)!.data;
    for (let i = 0; i < d.length; i++) derivative += gradient[i]! * d[i]!;
  }
  const epsilon = 1e-2;
  const shifted = (sign: number) =>
    new Map(
      [...base].map(([name, tensor]) => {
        const d = direction.get(name);
        return [
          name,
          d
            ? {
                shape: tensor.shape,
                data: Float32Array.from(tensor.data, (v, i) => v + sign * epsilon * d[i]!),
              }
            : tensor,
        ];
      }),
    );
  const plus = await firstRun(shifted(1), 0.5, 5);
  const minus = await firstRun(shifted(-1), 0.5, 5);
  const finiteDifference = (plus.loss - minus.loss) / (2 * epsilon);
  assert.ok(Math.abs(derivative) > 1e-2, `directional derivative too small to check: ${derivative}`);
  assert.ok(
    Math.abs(finiteDifference - derivative) < 2e-2 * Math.abs(derivative) + 1e-4,
    `finite difference ${finiteDifference} vs analytic ${derivative}`,
  );
});

test('a LoRA step built with runsDone n draws the masks of the (n+1)-th run of a fresh step', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
  const batch = {
    pixels: reference.tensors.get('input')!.data,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const make = (runsDone: number) =>
    TrainStep.create({
      backbone,
      method: 'lora',
      lora: { ...adapter.lora, dropout: 0.3 },
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
      dropout: { seed: 11, runsDone },
    });
  const parameters = adapterFeeds(adapter);
  const fresh = await make(0);
  const losses: number[] = [];
  for (let run = 0; run < 3; run++) losses.push((await fresh.run(batch, parameters)).loss);
  await fresh.release();
  assert.ok(new Set(losses).size === 3, `each run draws new masks: ${losses}`);
  const resumed = await make(2);
  const third = await resumed.run(batch, parameters);
  await resumed.release();
  assert.equal(third.loss, losses[2]);
});

test('training with LoRA dropout: reproducible, different from no dropout, and resumed runs end the same', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const splits = await openDataSplits(join(DATA, 'breastmnist.npz'), { limit: 16, seed: 1 });
  const dir = await mkdtemp(join(tmpdir(), 'melo-dropout-'));
  const options = (name: string, dropout: number, overrides: Partial<TrainOptions> = {}): TrainOptions => ({
    backbone,
    train: splits.train!,
    method: 'lora',
    lora: { rank: 2, alpha: 2, dropout, targets: ['query', 'value'] },
    optimizer: { kind: 'adamw', weightDecay: 0 },
    schedule: { kind: 'constant', lr: 0.05, warmupSteps: 0 },
    maxGradNorm: 0,
    labelSmoothing: 0,
    epochs: 2,
    batchSize: 4,
    gradAccum: 1,
    shuffle: true,
    augment: NO_AUGMENT,
    seed: 3,
    threads: 1,
    taskName: 'breast',
    outDir: join(dir, name),
    metric: 'accuracy',
    patience: 0,
    resume: false,
    ...overrides,
  });
  try {
    await train(options('a', 0.4));
    await train(options('b', 0.4));
    await train(options('none', 0));
    const bytes = (name: string) => readFile(join(dir, name, 'adapter_model.safetensors'));
    assert.deepEqual(await bytes('a'), await bytes('b'), 'same seed, different adapters');
    assert.notDeepEqual(await bytes('a'), await bytes('none'), 'dropout changed nothing');
    const saved = await loadAdapter(join(dir, 'a'));
    assert.equal(saved.lora.dropout, 0.4);

    // Interrupted in the second epoch, then resumed: the masks continue where they were.
    const controller = new AbortController();
    await assert.rejects(
      train(
        options('interrupted', 0.4, {
          signal: controller.signal,
          onEvent: (event) => {
            if (event.type === 'step' && event.step === 5) controller.abort();
          },
        }),
      ),
      TrainingInterrupted,
    );
    await train(options('interrupted', 0.4, { resume: true }));
    assert.deepEqual(await bytes('interrupted'), await bytes('a'), 'resumed run ends with another adapter');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('melo train: --lora-dropout outside [0, 1) or with a method other than lora is a one-line usage error', async () => {
  const common = ['train', '--backbone', join(FIXTURES, 'hf'), '--data', join(DATA, 'breastmnist.npz')];
  const out = ['--out', join(tmpdir(), 'x-melo-dropout')];
  const outOfRange = await runCli([...common, ...out, '--lora-dropout', '1']);
  assert.equal(outOfRange.code, 1);
  assert.match(outOfRange.stderr, /--lora-dropout must be in \[0, 1\), got 1/);
  const full = await runCli([...common, ...out, '--method', 'full', '--lora-dropout', '0.1']);
  assert.equal(full.code, 1);
  assert.match(full.stderr, /--lora-dropout applies to --method lora only \(got --method full\)/);
});
