import assert from 'node:assert/strict';
import { GraphBuilder, type Value } from '../../src/graph/builder.ts';
import { Session } from '../../src/runtime/session.ts';
import type { HostTensor } from '../../src/tensor.ts';

/** Builds a one-output graph from `body`, runs it on ORT with the given feeds and returns the output. */
export async function runGraph(
  inputs: Record<string, HostTensor>,
  body: (values: Record<string, Value>, graph: GraphBuilder) => Value | Value[],
): Promise<HostTensor[]> {
  const graph = new GraphBuilder('test');
  const values: Record<string, Value> = {};
  for (const [name, tensor] of Object.entries(inputs)) values[name] = graph.input(name, tensor.shape);
  const result = body(values, graph);
  const outputs = Array.isArray(result) ? result : [result];
  outputs.forEach((value, i) => {
    graph.output(value, `out${i}`);
  });
  const session = await Session.fromGraph(graph, { threads: 1 });
  const out = await session.run(inputs);
  await session.release();
  return outputs.map((_, i) => out[`out${i}`]!);
}

export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: number,
  what = 'tensor',
): number {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  let maxDiff = 0;
  for (let i = 0; i < actual.length; i++) {
    const diff = Math.abs((actual[i] as number) - (expected[i] as number));
    if (!(diff <= maxDiff)) maxDiff = Number.isNaN(diff) ? Number.POSITIVE_INFINITY : diff;
  }
  assert.ok(maxDiff <= tolerance, `${what}: max abs diff ${maxDiff} > ${tolerance}`);
  return maxDiff;
}

export function tensor(shape: number[], values: number[]): HostTensor {
  return { shape, data: Float32Array.from(values) };
}
