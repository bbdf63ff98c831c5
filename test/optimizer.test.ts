import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { decodeSafetensors, encodeSafetensors } from '../src/checkpoints/safetensors.ts';
import { MeloError } from '../src/errors.ts';
import { type HostTensor, hostTensor } from '../src/tensor.ts';
import { clipGradNorm } from '../src/train/clip.ts';
import {
  AdamW,
  createOptimizer,
  defaultNoDecay,
  type Optimizer,
  type OptimizerConfig,
  type OptimizerState,
  optimizerStateFromSafetensors,
  optimizerStateToSafetensors,
  SGD,
} from '../src/train/optimizer.ts';
import { learningRate, type ScheduleConfig } from '../src/train/schedule.ts';
import { createWorkerOptimizer } from '../src/train/update-kernel.ts';
import { Random } from '../src/util/random.ts';

// Reference values from scripts/fixtures/make_optimizer_fixture.py (torch.optim, torch 1.13).
type Values = Record<string, number[]>;
interface Fixture {
  params: Record<string, { shape: number[]; data: number[] }>;
  grads: Values[];
  lrs: number[];
  noDecay: string[];
  optimizers: Record<string, { hyper: FixtureHyper; steps: Values[] }>;
  schedules: { config: ScheduleConfig; totalSteps: number; lrs: number[] }[];
  clip: {
    shapes: Record<string, number[]>;
    cases: { maxNorm: number; grads: Values; norm: number; after: Values }[];
  };
}
type FixtureHyper =
  | { kind: 'adamw'; beta1?: number; beta2?: number; eps?: number; weightDecay?: number; decayAll?: boolean }
  | { kind: 'sgd'; momentum: number; weightDecay: number };

const fixture = JSON.parse(
  readFileSync(new URL('fixtures/optimizer/optimizer.json', import.meta.url), 'utf8'),
) as Fixture;

const TOLERANCE = 1e-6;

function assertClose(actual: ArrayLike<number>, expected: readonly number[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    const error = Math.abs(actual[i]! - e);
    assert.ok(
      error <= TOLERANCE * Math.max(1, Math.abs(e)),
      `${what}[${i}]: expected ${e}, got ${actual[i]} (off by ${error})`,
    );
  }
}

function fixtureParams(): Map<string, HostTensor> {
  const params = new Map<string, HostTensor>();
  for (const [name, { shape, data }] of Object.entries(fixture.params)) {
    params.set(name, hostTensor(shape, Float32Array.from(data)));
  }
  return params;
}

function tensorsOf(values: Values, shapes: Map<string, HostTensor>): Map<string, HostTensor> {
  const tensors = new Map<string, HostTensor>();
  for (const [name, data] of Object.entries(values)) {
    tensors.set(name, hostTensor(shapes.get(name)!.shape, Float32Array.from(data)));
  }
  return tensors;
}

function configOf(hyper: FixtureHyper): OptimizerConfig {
  if (hyper.kind === 'sgd') return { kind: 'sgd', momentum: hyper.momentum, weightDecay: hyper.weightDecay };
  const { decayAll, ...rest } = hyper;
  return decayAll ? { ...rest, noDecay: () => false } : rest;
}

test('default no-decay rule: biases, LayerNorm weights, cls_token and pos_embed', () => {
  const names = Object.keys(fixture.params);
  assert.deepEqual(
    names.filter((name) => defaultNoDecay(name)),
    fixture.noDecay,
  );
  for (const name of [
    'pos_embed',
    'norm.weight',
    'fc_norm.weight',
    'blocks.11.norm2.weight',
    'model.cls_token',
  ]) {
    assert.equal(defaultNoDecay(name), true, name);
  }
  for (const name of [
    'patch_embed.proj.weight',
    'blocks.0.mlp.fc1.weight',
    'blocks.0.attn.qkv.lora_A.weight',
    'task_head.weight',
    'cls_token_proj.weight',
  ]) {
    assert.equal(defaultNoDecay(name), false, name);
  }
});

/** The two kernels: the reference loop in this thread, and WebAssembly on two worker threads. */
const KERNELS = {
  'in-thread': async (config: OptimizerConfig, _params: Map<string, HostTensor>) => createOptimizer(config),
  'worker threads': (config: OptimizerConfig, params: Map<string, HostTensor>) =>
    createWorkerOptimizer(config, params, 2),
} satisfies Record<string, (config: OptimizerConfig, params: Map<string, HostTensor>) => Promise<Optimizer>>;

for (const [kernel, make] of Object.entries(KERNELS)) {
  for (const [caseName, { hyper, steps }] of Object.entries(fixture.optimizers)) {
    test(`${caseName} (${kernel}): parameters after each of ${steps.length} steps match torch.optim`, async () => {
      const params = fixtureParams();
      const optimizer = await make(configOf(hyper), params);
      try {
        assert.equal(optimizer.kind, hyper.kind);
        for (let step = 0; step < steps.length; step++) {
          await optimizer.step(params, tensorsOf(fixture.grads[step]!, params), fixture.lrs[step]!);
          assert.equal(optimizer.stepCount, step + 1);
          for (const [name, expected] of Object.entries(steps[step]!)) {
            assertClose(params.get(name)!.data, expected, `${caseName} step ${step + 1} ${name}`);
          }
        }
      } finally {
        await optimizer.close();
      }
    });
  }
}

test('the fixture cases differ from each other by far more than the tolerance', () => {
  // Guards the comparisons above against cases that could not tell a decay, eps or beta mistake apart.
  const last = (name: string) => fixture.optimizers[name]!.steps.at(-1)!;
  const distance = (a: Values, b: Values, param: string) =>
    Math.max(...a[param]!.map((value, i) => Math.abs(value - b[param]![i]!)));
  const plain = last('adamw_no_weight_decay');
  assert.ok(distance(plain, last('adamw_weight_decay_default_rule'), 'blocks.0.attn.qkv.weight') > 1e-4);
  assert.equal(distance(plain, last('adamw_weight_decay_default_rule'), 'blocks.0.attn.qkv.bias'), 0);
  assert.ok(distance(plain, last('adamw_custom_betas_eps'), 'task_head.weight') > 1e-3, 'eps matters there');
  assert.ok(
    distance(last('sgd_plain'), last('sgd_momentum_decoupled_decay'), 'blocks.0.norm1.weight') > 1e-2,
    'momentum matters',
  );
});

function randomProblem(seed: number): { params: Map<string, HostTensor>; grads: Map<string, HostTensor>[] } {
  const random = new Random(seed);
  const shapes: Record<string, number[]> = {
    'blocks.0.attn.qkv.lora_A.weight': [8, 96],
    'blocks.0.attn.qkv.lora_B.weight': [288, 8],
    'blocks.0.norm1.weight': [96],
    'task_head.bias': [5],
  };
  const fill = (shape: number[], scale: number) => {
    const t = hostTensor(shape);
    for (let i = 0; i < t.data.length; i++) t.data[i] = random.normal() * scale;
    return t;
  };
  const params = new Map(Object.entries(shapes).map(([name, shape]) => [name, fill(shape, 1)] as const));
  const grads = Array.from(
    { length: 7 },
    (_, step) =>
      new Map(Object.entries(shapes).map(([name, shape]) => [name, fill(shape, 0.1 * (step + 1))] as const)),
  );
  return { params, grads };
}

function cloneParams(params: Map<string, HostTensor>): Map<string, HostTensor> {
  return new Map([...params].map(([name, t]) => [name, hostTensor(t.shape, t.data.slice())] as const));
}

function assertBitwiseEqual(a: Map<string, HostTensor>, b: Map<string, HostTensor>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: keys`);
  for (const [name, tensor] of a) {
    const other = b.get(name)!;
    assert.deepEqual([...other.shape], [...tensor.shape], `${what} ${name}: shape`);
    assert.ok(
      Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength).equals(
        Buffer.from(other.data.buffer, other.data.byteOffset, other.data.byteLength),
      ),
      `${what} ${name}: not bitwise equal`,
    );
  }
}

const resumable: OptimizerConfig[] = [
  { kind: 'adamw', weightDecay: 0.05 },
  { kind: 'sgd', momentum: 0.9, weightDecay: 0.1 },
  { kind: 'sgd', momentum: 0 },
];
for (const [kernel, make] of Object.entries(KERNELS)) {
  for (const config of resumable) {
    test(`${JSON.stringify(config)} (${kernel}): N steps equal k steps, save to safetensors, restore into a fresh optimiser, N−k steps (bitwise)`, async () => {
      const { params: initial, grads } = randomProblem(11);
      const lrs = grads.map((_, step) => 0.01 / (step + 1));
      // The reference is always the in-thread loop: the worker kernel must give the same bits.
      const straight = cloneParams(initial);
      const reference = createOptimizer(config);
      for (let step = 0; step < grads.length; step++)
        await reference.step(straight, grads[step]!, lrs[step]!);

      const k = 3;
      const resumed = cloneParams(initial);
      const first = await make(config, resumed);
      for (let step = 0; step < k; step++) await first.step(resumed, grads[step]!, lrs[step]!);
      const saved = optimizerStateToSafetensors(first.state());
      const file = decodeSafetensors(
        encodeSafetensors(saved.tensors, { metadata: saved.metadata }),
        'optimizer.safetensors',
      );
      // Training on with the first optimiser must not change what was saved.
      await first.step(cloneParams(resumed), grads[k]!, lrs[k]!);
      await first.close();

      const restart = cloneParams(resumed);
      const second = await make(config, restart);
      second.loadState(optimizerStateFromSafetensors(file.tensors, file.metadata, file.path), file.path);
      assert.equal(second.stepCount, k);
      for (let step = k; step < grads.length; step++) await second.step(restart, grads[step]!, lrs[step]!);

      assertBitwiseEqual(restart, straight, 'parameters');
      const a = reference.state();
      const b = second.state();
      await second.close();
      assert.equal(b.step, grads.length);
      assert.deepEqual(b.hyper, a.hyper);
      assertBitwiseEqual(b.tensors, a.tensors, 'state');
      const expectedKeys =
        config.kind === 'adamw'
          ? [...initial.keys()].flatMap((name) => [`exp_avg.${name}`, `exp_avg_sq.${name}`])
          : config.momentum === 0
            ? []
            : [...initial.keys()].map((name) => `momentum.${name}`);
      assert.deepEqual([...a.tensors.keys()].sort(), expectedKeys.sort());
    });
  }
}

test('state() is a copy: later steps do not change a state taken earlier', async () => {
  const { params, grads } = randomProblem(3);
  const optimizer = new AdamW();
  await optimizer.step(params, grads[0]!, 1e-3);
  const state = optimizer.state();
  const before = state.tensors.get('exp_avg.task_head.bias')!.data.slice();
  await optimizer.step(params, grads[1]!, 1e-3);
  assert.deepEqual(state.tensors.get('exp_avg.task_head.bias')!.data, before);
  assert.equal(state.step, 1);
});

function expectError(run: () => unknown, code: string, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof MeloError, String(error));
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes('\n'));
    return true;
  });
}

test('step rejects missing, extra and mis-sized gradients and a bad learning rate', () => {
  const { params, grads } = randomProblem(5);
  const optimizer: Optimizer = new SGD();
  const missing = new Map(grads[0]!);
  missing.delete('task_head.bias');
  expectError(
    () => optimizer.step(params, missing, 0.1),
    'BAD_INPUT',
    /no gradient for parameter 'task_head.bias'/,
  );
  const extra = new Map(grads[0]!).set('other.weight', hostTensor([2]));
  expectError(
    () => optimizer.step(params, extra, 0.1),
    'BAD_INPUT',
    /'other.weight', which is not a parameter/,
  );
  const wrong = new Map(grads[0]!).set('task_head.bias', hostTensor([4]));
  expectError(
    () => optimizer.step(params, wrong, 0.1),
    'SHAPE',
    /'task_head.bias' has shape \[4\], the parameter \[5\]/,
  );
  expectError(() => optimizer.step(params, grads[0]!, Number.NaN), 'USAGE', /learning rate/);
  expectError(() => optimizer.step(params, grads[0]!, -1), 'USAGE', /learning rate/);
  assert.equal(optimizer.stepCount, 0);
  expectError(() => new AdamW({ beta1: 1 }), 'USAGE', /beta1 must be in \[0, 1\)/);
  expectError(() => new SGD({ weightDecay: -0.1 }), 'USAGE', /weightDecay/);
});

test('loadState rejects a state from another optimiser, other hyper-parameters or other parameters', async () => {
  const { params, grads } = randomProblem(9);
  const adam = new AdamW({ weightDecay: 0.05 });
  await adam.step(cloneParams(params), grads[0]!, 1e-3);
  const state = adam.state();
  const file = 'run/optimizer.safetensors';
  expectError(
    () => new SGD().loadState(state, file),
    'BAD_CHECKPOINT',
    /^run\/optimizer.safetensors: .*saved by adamw, this run uses sgd/,
  );
  expectError(
    () => new AdamW().loadState(state, file),
    'BAD_CHECKPOINT',
    /saved with weightDecay 0.05, this run uses 0.01/,
  );
  const missing = new Map(state.tensors);
  missing.delete('exp_avg_sq.task_head.bias');
  expectError(
    () => new AdamW({ weightDecay: 0.05 }).loadState({ ...state, tensors: missing } as OptimizerState, file),
    'BAD_CHECKPOINT',
    /has 'exp_avg.task_head.bias' but no 'exp_avg_sq.task_head.bias'/,
  );
  const stray = new Map(state.tensors).set('velocity.x', hostTensor([1]));
  expectError(
    () => new AdamW({ weightDecay: 0.05 }).loadState({ ...state, tensors: stray } as OptimizerState, file),
    'BAD_CHECKPOINT',
    /unexpected tensor 'velocity.x'/,
  );
  // A state that loads but does not fit the parameters fails on the next step, naming the file it came from.
  const restored = new AdamW({ weightDecay: 0.05 });
  restored.loadState(state, file);
  const fewer = cloneParams(params);
  fewer.delete('task_head.bias');
  const fewerGrads = new Map(grads[1]!);
  fewerGrads.delete('task_head.bias');
  expectError(
    () => restored.step(fewer, fewerGrads, 1e-3),
    'BAD_CHECKPOINT',
    /^run\/optimizer.safetensors: .*buffers for 'task_head.bias', which is not among the parameters/,
  );
  const more = cloneParams(params).set('new.weight', hostTensor([3]));
  const moreGrads = new Map(grads[1]!).set('new.weight', hostTensor([3]));
  expectError(
    () => restored.step(more, moreGrads, 1e-3),
    'BAD_CHECKPOINT',
    /no exp_avg buffer for parameter 'new.weight'/,
  );
  expectError(
    () => optimizerStateFromSafetensors(state.tensors, {}, file),
    'BAD_CHECKPOINT',
    /^run\/optimizer.safetensors: .*no 'melo.optimizer' metadata/,
  );
  expectError(
    () =>
      optimizerStateFromSafetensors(
        state.tensors,
        { 'melo.optimizer': '{"kind":"lion","step":1,"hyper":{}}' },
        file,
      ),
    'BAD_CHECKPOINT',
    /no known optimiser/,
  );
});

for (const { config, totalSteps, lrs } of fixture.schedules) {
  test(`schedule ${JSON.stringify(config)} over ${totalSteps} steps matches torch LambdaLR/StepLR`, () => {
    for (let step = 0; step < lrs.length; step++) {
      const actual = learningRate(config, step, totalSteps);
      const expected = lrs[step]!;
      assert.ok(
        Math.abs(actual - expected) <= 1e-9 * Math.abs(expected) + 1e-15,
        `step ${step}: expected ${expected}, got ${actual}`,
      );
    }
  });
}

test('schedules past the end, and bad settings', () => {
  assert.equal(learningRate({ kind: 'cosine', lr: 1e-3, minLr: 1e-5 }, 50, 20), 1e-5);
  assert.equal(learningRate({ kind: 'cosine', lr: 1e-3 }, 21, 20), 0);
  assert.equal(learningRate({ kind: 'constant', lr: 1e-3, warmupSteps: 2 }, 99, 10), 1e-3);
  // Warm-up longer than the run: the rate is still climbing at the end, as in transformers.
  assert.equal(learningRate({ kind: 'cosine', lr: 1e-3, warmupSteps: 40 }, 9, 10), (1e-3 * 9) / 40);
  expectError(() => learningRate({ kind: 'cosine', lr: 1e-3 }, 1.5, 10), 'USAGE', /step must be an integer/);
  expectError(
    () => learningRate({ kind: 'cosine', lr: 1e-3 }, 0, 0),
    'USAGE',
    /totalSteps must be an integer ≥ 1/,
  );
  expectError(() => learningRate({ kind: 'cosine', lr: 1e-3, minLr: 1e-2 }, 0, 10), 'USAGE', /minLr/);
  expectError(() => learningRate({ kind: 'step', lr: 1e-3, gamma: 0 }, 0, 10), 'USAGE', /gamma/);
  expectError(() => learningRate({ kind: 'constant', lr: -1 }, 0, 10), 'USAGE', /lr must be/);
});

function clipInputs(values: Values): Map<string, HostTensor> {
  const grads = new Map<string, HostTensor>();
  for (const [name, shape] of Object.entries(fixture.clip.shapes)) {
    grads.set(name, hostTensor(shape, Float32Array.from(values[name]!)));
  }
  return grads;
}

for (const { maxNorm, grads: before, norm, after } of fixture.clip.cases) {
  test(`clipGradNorm(maxNorm ${maxNorm}) matches torch.nn.utils.clip_grad_norm_`, () => {
    const grads = clipInputs(before);
    const actual = clipGradNorm(grads, maxNorm);
    assert.ok(Math.abs(actual - norm) <= 1e-6 * norm, `norm: expected ${norm}, got ${actual}`);
    // Relative, because one case has gradients around 1e-7.
    for (const [name, expected] of Object.entries(after)) {
      const data = grads.get(name)!.data;
      expected.forEach((e, i) => {
        assert.ok(
          Math.abs(data[i]! - e) <= 1e-6 * Math.abs(e),
          `${name}[${i}]: expected ${e}, got ${data[i]}`,
        );
      });
    }
  });
}

test('clipGradNorm: 0 is off, a non-finite norm leaves gradients alone, bad maxNorm', () => {
  const { grads: values, norm: expected } = fixture.clip.cases[0]!;
  const grads = clipInputs(values);
  const norm = clipGradNorm(grads, 0);
  assert.ok(Math.abs(norm - expected) <= 1e-6 * norm);
  for (const [name, tensor] of grads)
    assert.deepEqual([...tensor.data], [...Float32Array.from(values[name]!)]);
  const broken = new Map([['x', hostTensor([2], Float32Array.of(Number.POSITIVE_INFINITY, 1))]]);
  assert.equal(clipGradNorm(broken, 1), Number.POSITIVE_INFINITY);
  assert.deepEqual([...broken.get('x')!.data], [Number.POSITIVE_INFINITY, 1]);
  expectError(() => clipGradNorm(grads, -1), 'USAGE', /maxNorm/);
});
