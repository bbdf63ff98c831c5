import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { compileWat, UPDATE_WASM, UPDATE_WAT } from '../scripts/build-wasm.ts';
import { type HostTensor, hostTensor } from '../src/tensor.ts';
import { bufferKinds, createOptimizer, type OptimizerConfig } from '../src/train/optimizer.ts';
import { createWorkerOptimizer, WorkerUpdateKernel } from '../src/train/update-kernel.ts';
import { Random } from '../src/util/random.ts';

test('the committed update.wasm is what scripts/build-wasm.ts compiles from update.wat', async () => {
  const built = await compileWat(UPDATE_WAT);
  assert.ok(Buffer.from(built).equals(readFileSync(UPDATE_WASM)), 'run: npx tsx scripts/build-wasm.ts');
});

/** Odd and even sizes, one value, and a tensor large enough to span many SIMD iterations. */
const SHAPES: Record<string, number[]> = {
  'blocks.0.mlp.fc1.weight': [37, 301],
  'blocks.0.mlp.fc1.bias': [37],
  'blocks.0.norm1.weight': [64],
  cls_token: [1, 1, 1],
  'head.weight': [3, 5],
};

function randomTensors(random: Random, scale: number): Map<string, HostTensor> {
  const tensors = new Map<string, HostTensor>();
  for (const [name, shape] of Object.entries(SHAPES)) {
    const tensor = hostTensor(shape);
    for (let i = 0; i < tensor.data.length; i++) tensor.data[i] = random.normal() * scale;
    tensors.set(name, tensor);
  }
  return tensors;
}

function assertSameBits(
  actual: Map<string, HostTensor>,
  expected: Map<string, HostTensor>,
  what: string,
): void {
  for (const [name, tensor] of expected) {
    const other = actual.get(name)!.data;
    const a = new Uint32Array(other.buffer, other.byteOffset, other.length);
    const b = new Uint32Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.length);
    const first = b.findIndex((bits, i) => bits !== a[i]);
    assert.equal(first, -1, `${what} ${name}[${first}]: ${other[first]} vs ${tensor.data[first]}`);
  }
}

const CONFIGS: OptimizerConfig[] = [
  { kind: 'adamw' },
  { kind: 'adamw', beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1 },
  { kind: 'sgd', momentum: 0.9, weightDecay: 0.05 },
  { kind: 'sgd', momentum: 0, weightDecay: 0.05 },
];

for (const config of CONFIGS) {
  test(`${JSON.stringify(config)}: the WebAssembly kernel on 2 and 3 threads gives the reference loop's bits`, async () => {
    for (const threads of [2, 3]) {
      const random = new Random(5 + threads);
      const initial = randomTensors(random, 1);
      const grads = Array.from({ length: 4 }, (_, step) => randomTensors(random, 0.01 * (step + 1)));
      const expected = new Map([...initial].map(([n, t]) => [n, hostTensor(t.shape, t.data.slice())]));
      const reference = createOptimizer(config);
      const actual = new Map([...initial].map(([n, t]) => [n, hostTensor(t.shape, t.data.slice())]));
      const optimizer = await createWorkerOptimizer(config, actual, threads);
      try {
        for (const [step, grad] of grads.entries()) {
          const lr = 0.01 / (step + 1);
          await reference.step(expected, grad, lr);
          await optimizer.step(actual, grad, lr);
          assertSameBits(actual, expected, `threads ${threads} step ${step + 1} parameter`);
          assertSameBits(
            optimizer.state().tensors,
            reference.state().tensors,
            `threads ${threads} step ${step + 1} state`,
          );
        }
        // The update moved the values: a kernel that did nothing would fail above only if the reference did.
        assert.notDeepEqual([...actual.get('head.weight')!.data], [...initial.get('head.weight')!.data]);
      } finally {
        await optimizer.close();
      }
    }
  });
}

test('arenas: parameters are dealt to balance the threads; a closed kernel refuses to step', async () => {
  const sizes = new Map([
    ['a', 1000],
    ['b', 600],
    ['c', 500],
    ['d', 100],
  ]);
  const kernel = await WorkerUpdateKernel.create(sizes, bufferKinds({ kind: 'adamw' }), 2);
  assert.equal(kernel.threads, 2);
  const params = new Map([...sizes].map(([name, count]) => [name, hostTensor([count])]));
  // Largest first to the emptier arena: a | b+c, then d to a (1000 < 1100).
  const arenaOf = (name: string) => kernel.allocate(name, 'exp_avg', sizes.get(name)!).buffer;
  assert.ok(arenaOf('a') instanceof SharedArrayBuffer);
  assert.equal(arenaOf('a'), arenaOf('d'));
  assert.equal(arenaOf('b'), arenaOf('c'));
  assert.notEqual(arenaOf('a'), arenaOf('b'));
  const optimizer = createOptimizer({ kind: 'adamw' }, kernel);
  const grads = new Map(
    [...sizes].map(([name, count]) => [name, hostTensor([count], new Float32Array(count).fill(1))]),
  );
  await optimizer.step(params, grads, 0.1);
  // First AdamW step with g = 1: m̂ = v̂ = 1, so every value moves by −lr·1/(1 + eps), decay 1 − 0.1·0.01 on 0.
  assert.ok(Math.abs(params.get('d')!.data[0]! + 0.1) < 1e-6);
  await optimizer.close();
  await assert.rejects(optimizer.step(params, grads, 0.1), /optimizer worker thread failed: closed/);
});
