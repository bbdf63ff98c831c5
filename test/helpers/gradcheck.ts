import assert from 'node:assert/strict';
import { buildBackward } from '../../src/graph/backward.ts';
import { GraphBuilder, type Value } from '../../src/graph/builder.ts';
import type { Dim, Shape } from '../../src/graph/types.ts';
import { mul } from '../../src/ops/elementwise.ts';
import { reduceSum } from '../../src/ops/reduce.ts';
import { Session } from '../../src/runtime/session.ts';
import type { HostTensor } from '../../src/tensor.ts';
import { Random } from '../../src/util/random.ts';

/**
 * How an input of a gradient check is made and fed:
 * - param: a graph input the gradient is taken for;
 * - data: a graph input fed with values but not differentiated (e.g. a batch whose size sets a symbolic dim);
 * - frozen: an initializer, i.e. a frozen weight, never differentiated.
 */
export interface GradInput {
  readonly shape: Shape;
  readonly kind?: 'param' | 'data' | 'frozen';
  /** normal: N(0,1); positive: [0.5, 2); awayFromZero: ±(0.3 + |N(0,1)|), for kinks at 0. */
  readonly sample?: 'normal' | 'positive' | 'awayFromZero';
}

export interface GradCase {
  readonly name: string;
  readonly inputs: Readonly<Record<string, GradInput>>;
  readonly build: (values: Record<string, Value>, graph: GraphBuilder) => Value;
  /** Run-time sizes of the symbolic dims used in `inputs` (default batch = 2). */
  readonly sizes?: Readonly<Record<string, number>>;
}

export interface GradCheckOptions {
  /** Perturbation size along the random direction. */
  readonly epsilon?: number;
  /** Allowed relative error of the directional derivative. */
  readonly rtol?: number;
  /** Extra run-time sizes to check with the same session (each one a full check). */
  readonly moreSizes?: readonly Readonly<Record<string, number>>[];
}

export interface GradCheckReport {
  readonly graph: GraphBuilder;
  /** Largest |fd − analytic| / allowed over every parameter and size (≤ 1 passes). */
  readonly worst: number;
  readonly gradients: Record<string, HostTensor>;
}

function hashName(name: string): number {
  let hash = 2166136261;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 16777619) >>> 0;
  return hash;
}

function concrete(shape: Shape, sizes: Readonly<Record<string, number>>, what: string): number[] {
  return shape.map((dim: Dim) => {
    if (typeof dim === 'number') return dim;
    const size = sizes[dim];
    if (size === undefined) throw new Error(`${what}: no run-time size for symbolic dim '${dim}'`);
    return size;
  });
}

function sampleTensor(random: Random, shape: readonly number[], sample: GradInput['sample']): HostTensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    if (sample === 'positive') data[i] = 0.5 + 1.5 * random.float();
    else if (sample === 'awayFromZero')
      data[i] = (random.float() < 0.5 ? -1 : 1) * (0.3 + Math.abs(random.normal()));
    else data[i] = random.normal();
  }
  return { shape, data };
}

/**
 * JAX's `check_vjp` on ORT: builds loss = Σ f(inputs)·c for a random fixed cotangent c, appends the backward
 * pass with `buildBackward`, and compares each parameter's ⟨grad, t⟩ with the central difference
 * of the loss computed by the same session (five-point stencil), along a random direction t.
 */
export async function checkGradients(
  spec: GradCase,
  options: GradCheckOptions = {},
): Promise<GradCheckReport> {
  const epsilon = options.epsilon ?? 1e-2;
  const rtol = options.rtol ?? 1e-3;
  const random = new Random(hashName(spec.name));
  const graph = new GraphBuilder('gradcheck');
  const values: Record<string, Value> = {};
  const parameters: string[] = [];
  const baseSizes = spec.sizes ?? { batch: 2 };
  const sizeSets = [baseSizes, ...(options.moreSizes ?? [])];
  const frozenData = new Map<string, HostTensor>();
  for (const [name, input] of Object.entries(spec.inputs)) {
    if (input.kind === 'frozen') {
      const tensor = sampleTensor(random, concrete(input.shape, baseSizes, name), input.sample);
      frozenData.set(name, tensor);
      values[name] = graph.initializer(name, tensor);
    } else {
      values[name] = graph.input(name, input.shape);
      if (input.kind !== 'data') parameters.push(name);
    }
  }
  const out = spec.build(values, graph);
  const cotangent = graph.input('cotangent', out.shape);
  const weighted = mul(out, cotangent);
  const loss = reduceSum(weighted, [...Array(weighted.rank).keys()]);
  graph.output(loss, 'loss');
  graph.output(weighted, 'weighted');
  const grads = buildBackward(
    graph,
    loss,
    parameters.map((name) => values[name]!),
  );
  for (const name of parameters) graph.output(grads.get(values[name]!)!, `${name}_grad`);
  const session = await Session.fromGraph(graph, { threads: 1 });

  let worst = 0;
  let gradients: Record<string, HostTensor> = {};
  try {
    for (const sizes of sizeSets) {
      const feeds: Record<string, HostTensor> = {};
      for (const [name, input] of Object.entries(spec.inputs)) {
        if (input.kind === 'frozen') continue;
        feeds[name] = sampleTensor(random, concrete(input.shape, sizes, name), input.sample);
      }
      feeds.cotangent = sampleTensor(random, concrete(out.shape, sizes, 'output'), 'normal');
      const results = await session.run(feeds);
      // Float32 noise of the loss scales with Σ|f·c|; it bounds what the difference can resolve.
      const lossScale = results.weighted!.data.reduce((acc, v) => acc + Math.abs(v), 0);
      for (const name of parameters) {
        const grad = results[`${name}_grad`]!;
        const x = feeds[name]!;
        assert.deepEqual(grad.shape, x.shape, `${spec.name}: gradient of ${name} has shape [${grad.shape}]`);
        assert.ok(
          grad.data.every((v) => Number.isFinite(v)),
          `${spec.name}: gradient of ${name} is not finite`,
        );
        const direction = Float64Array.from(x.data, () => random.normal());
        const lossAt = async (step: number) => {
          const moved = Float32Array.from(x.data, (v, i) => v + step * direction[i]!);
          return (await session.run({ ...feeds, [name]: { shape: x.shape, data: moved } }, ['loss'])).loss!
            .data[0]!;
        };
        // Five-point central difference: its O(ε⁴) truncation error stays far below float32 noise.
        const near = (await lossAt(epsilon)) - (await lossAt(-epsilon));
        const far = (await lossAt(2 * epsilon)) - (await lossAt(-2 * epsilon));
        const finiteDifference = (8 * near - far) / (12 * epsilon);
        let analytic = 0;
        let gradNorm = 0;
        let directionNorm = 0;
        for (let i = 0; i < direction.length; i++) {
          analytic += grad.data[i]! * direction[i]!;
          gradNorm += grad.data[i]! ** 2;
          directionNorm += direction[i]! ** 2;
        }
        // Relative to the typical size of ⟨g, t⟩ for a random direction, so that a direction that happens to
        // be nearly orthogonal to g does not demand an impossible precision; plus the float32 noise of the
        // loss (which scales with Σ|f·c|) as amplified by the difference quotient.
        const typical = Math.sqrt((gradNorm * directionNorm) / direction.length);
        const allowed = rtol * Math.max(Math.abs(analytic), typical) + (2e-6 * lossScale) / epsilon;
        const error = Math.abs(finiteDifference - analytic);
        worst = Math.max(worst, error / allowed);
        assert.ok(
          error <= allowed,
          `${spec.name} (sizes ${JSON.stringify(sizes)}): d loss along a random direction of ${name}: finite difference ${finiteDifference}, gradient gives ${analytic} (error ${error.toExponential(2)} > ${allowed.toExponential(2)})`,
        );
      }
      gradients = Object.fromEntries(parameters.map((name) => [name, results[`${name}_grad`]!]));
    }
  } finally {
    await session.release();
  }
  return { graph, worst, gradients };
}
