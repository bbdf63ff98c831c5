import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MeloError } from '../src/errors.ts';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder, type GraphNode, type Value } from '../src/graph/builder.ts';
import type { OpDef } from '../src/graph/op.ts';
import { add, exp, gelu, mul, scale, stopGradient } from '../src/ops/elementwise.ts';
import { matmul } from '../src/ops/matmul.ts';
import { layerNorm } from '../src/ops/normalization.ts';
import { reduceMean, reduceSum } from '../src/ops/reduce.ts';
import { transposeLast } from '../src/ops/shape.ts';
import { softmax } from '../src/ops/softmax.ts';
import { Session } from '../src/runtime/session.ts';
import { checkGradients, type GradCase } from './helpers/gradcheck.ts';
import { assertClose } from './helpers/graph.ts';

const B = 'batch';

/**
 * A pre-norm attention block and MLP: learned position embedding broadcast over the batch, LayerNorm,
 * Q/K trainable and V frozen, softmax attention, a residual (x used twice), then an MLP with a trainable
 * broadcast bias, a frozen bias and GELU.
 */
const attentionBlock: GradCase = {
  name: 'attention block',
  inputs: {
    x: { shape: [B, 3, 4] },
    pos: { shape: [1, 3, 4] },
    gamma: { shape: [4] },
    beta: { shape: [4] },
    wq: { shape: [4, 4] },
    wk: { shape: [4, 4] },
    wv: { shape: [4, 4], kind: 'frozen' },
    w1: { shape: [4, 6] },
    b1: { shape: [6] },
    frozenBias: { shape: [6], kind: 'frozen' },
  },
  build: ({ x, pos, gamma, beta, wq, wk, wv, w1, b1, frozenBias }, graph) =>
    graph.scope('block', () => {
      const tokens = add(x!, pos!);
      const h = layerNorm(tokens, gamma!, beta!, 1e-5);
      const q = graph.scope('q', () => matmul(h, wq!));
      const k = graph.scope('k', () => matmul(h, wk!));
      const v = graph.scope('v', () => matmul(h, wv!));
      const attention = softmax(scale(matmul(q, transposeLast(k)), 0.5));
      const residual = add(tokens, matmul(attention, v));
      const hidden = graph.scope('mlp', () => add(add(matmul(residual, w1!), b1!), frozenBias!));
      return gelu(hidden);
    }),
};

function backwardNodes(graph: GraphBuilder, forwardCount: number): GraphNode[] {
  return graph.nodes.slice(forwardCount);
}

function producerOf(value: Value): GraphNode {
  return value.graph.nodes[value.producer]!;
}

test('attention block: every gradient matches finite differences, at batch 2 and 3 with one session', async () => {
  await checkGradients(attentionBlock, { moreSizes: [{ batch: 3 }] });
});

test('frozen weights get no gradient work beyond what dX needs', async () => {
  const { graph } = await checkGradients(attentionBlock);
  const wv = graph.initializers.get('wv')!.value;
  const frozenBias = graph.initializers.get('frozenBias')!.value;
  const consumer = (value: Value) => graph.nodes.find((node) => node.inputs.includes(value))!;

  // V = h·Wv with Wv frozen: one Gemm for dh (through transB, reusing Wv as stored), none for dWv.
  const vScope = `${consumer(wv).name}_Grad/`;
  const vGrad = graph.nodes.filter((node) => node.name.startsWith(vScope));
  const gemms = vGrad.filter((node) => node.op.name === 'gemm');
  assert.equal(gemms.length, 1, `${vScope}: ${vGrad.map((node) => node.name)}`);
  assert.ok(gemms[0]!.inputs.includes(wv), 'the dh Gemm reads the frozen weight itself');
  assert.deepEqual(gemms[0]!.attributes, { transA: 0, transB: 1, alpha: 1, beta: 1 });

  // A frozen broadcast bias: no sum-to-shape (ReduceSum) is emitted for it, unlike the trainable b1.
  const frozenAdd = consumer(frozenBias);
  const trainableAdd = graph.nodes.find((node) => node.inputs.some((input) => input.name === 'b1'))!;
  const reducesUnder = (node: GraphNode) =>
    graph.nodes.filter((n) => n.name.startsWith(`${node.name}_Grad/`) && n.op.onnxType === 'ReduceSum');
  assert.equal(reducesUnder(frozenAdd).length, 0);
  assert.equal(reducesUnder(trainableAdd).length, 1);

  // Nothing in the graph is the gradient of a frozen initializer or of the cotangent input.
  for (const name of ['wv', 'frozenBias', 'cotangent']) {
    assert.ok(!graph.nodes.some((node) => node.name === `${name}_grad`), `${name} got a gradient`);
  }
});

test('a frozen input gets no gradient: no dX work when only the weights train', () => {
  const graph = new GraphBuilder('frozen-input');
  const x = graph.input('x', [B, 3, 4]);
  const gamma = graph.input('gamma', [4]);
  const beta = graph.input('beta', [4]);
  const w = graph.input('w', [4, 2]);
  const head = graph.input('head', [4, 2]);
  const normalized = layerNorm(x, gamma, beta, 1e-5);
  const projected = matmul(normalized, w);
  const direct = matmul(x, head);
  const loss = reduceSum(add(projected, direct), [0, 1, 2]);
  const forwardCount = graph.nodes.length;
  const grads = buildBackward(graph, loss, [gamma, beta, w, head]);
  const added = backwardNodes(graph, forwardCount);
  const under = (value: Value, op: string) =>
    added.filter((node) => node.name.startsWith(`${producerOf(value).name}_Grad/`) && node.op.name === op);
  // dx of LayerNorm needs two ReduceMeans over the features; dγ and dβ need none.
  assert.equal(under(normalized, 'reduce_mean').length, 0);
  // x·head with x frozen: only dW = xᵀ·dY. The LayerNorm output needs dh too (γ and β train).
  assert.deepEqual(
    under(direct, 'gemm').map((node) => (node.attributes as { transA: number }).transA),
    [1],
  );
  assert.equal(under(projected, 'gemm').length, 2);
  assert.deepEqual(grads.get(head)!.shape, [4, 2]);
  assert.deepEqual(grads.get(gamma)!.shape, [4]);
});

test('accumulation: x·x and a residual both sum their contributions, named X_grad', async () => {
  const square: GradCase = {
    name: 'x·x + exp(x) residual',
    inputs: { x: { shape: [B, 5] }, w: { shape: [5, 5] } },
    build: ({ x, w }) => add(x!, add(mul(x!, x!), matmul(exp(x!), w!))),
  };
  const { graph } = await checkGradients(square, { moreSizes: [{ batch: 1 }] });
  // x feeds three nodes, so two accumulation Adds; the first is named x_grad, the next x_grad_1.
  const accumulations = graph.nodes.filter((node) => /(^|\/)x_grad(_\d+)?$/.test(node.name));
  assert.equal(accumulations.length, 3, accumulations.map((node) => node.name).join(', '));
  assert.ok(accumulations.every((node) => node.op.onnxType === 'Add'));
});

test('backward nodes sit under <node>_Grad/ scopes', () => {
  const graph = new GraphBuilder('names');
  const x = graph.input('x', [2, 3]);
  const w = graph.input('w', [3, 4]);
  const y = graph.scope('layer', () => matmul(x, w));
  const loss = reduceSum(y, [0, 1]);
  const forwardCount = graph.nodes.length;
  buildBackward(graph, loss, [w]);
  const names = backwardNodes(graph, forwardCount).map((node) => node.name);
  assert.ok(names.includes('layer/matmul_Grad/transpose'), names.join(', '));
  assert.ok(names.includes('layer/matmul_Grad/matmul'), names.join(', '));
  assert.ok(
    names.some((name) => name.startsWith('reduce_sum_Grad/')),
    names.join(', '),
  );
});

test('a seed turns the backward pass into a VJP of a non-scalar output, equal to that of Σ y·c', async () => {
  const graph = new GraphBuilder('seed');
  const x = graph.input('x', [B, 3]);
  const c = graph.input('c', [B, 3]);
  const y = softmax(mul(x, x));
  const viaSeed = buildBackward(graph, y, [x], { seed: c }).get(x)!;
  const viaLoss = buildBackward(graph, reduceSum(mul(y, c), [0, 1]), [x]).get(x)!;
  graph.output(viaSeed, 'via_seed');
  graph.output(viaLoss, 'via_loss');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const feeds = {
    x: { shape: [2, 3], data: Float32Array.from([0.1, -0.4, 0.7, 1.2, 0.3, -0.9]) },
    c: { shape: [2, 3], data: Float32Array.from([1, -2, 0.5, 0.3, 0.8, -1.1]) },
  };
  const out = await session.run(feeds);
  await session.release();
  assert.ok(out.via_seed!.data.some((v) => Math.abs(v) > 1e-2));
  assertClose(out.via_seed!.data, out.via_loss!.data, 1e-6, 'seeded gradient');
});

test('gradient with respect to an intermediate value, and a loss of shape [1]', async () => {
  const graph = new GraphBuilder('intermediate');
  const x = graph.input('x', [2, 2]);
  const c = graph.input('c', [2, 2]);
  const h = exp(x);
  const loss = reduceSum(mul(h, c), [0, 1], false);
  const loss1 = reduceSum(reduceSum(mul(h, c), [1]), [0], true);
  assert.deepEqual(loss1.shape, [1]);
  graph.output(buildBackward(graph, loss, [h]).get(h)!, 'dh');
  graph.output(buildBackward(graph, loss1, [x]).get(x)!, 'dx');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const xs = [0.5, -1, 2, 0];
  const cs = [3, -2, 0.25, 1];
  const out = await session.run({
    x: { shape: [2, 2], data: Float32Array.from(xs) },
    c: { shape: [2, 2], data: Float32Array.from(cs) },
  });
  await session.release();
  assertClose(out.dh!.data, cs, 0, 'dL/dh = c');
  assertClose(
    out.dx!.data,
    cs.map((ci, i) => ci * Math.exp(xs[i]!)),
    1e-5,
    'dL/dx = c·exp(x)',
  );
});

test('a parameter reached only through a stop-gradient gets a zero gradient', async () => {
  const graph = new GraphBuilder('stop');
  const x = graph.input('x', [B, 2]);
  const w = graph.input('w', [2]);
  const loss = reduceSum(mul(x, stopGradient(w)), [0, 1]);
  const grads = buildBackward(graph, loss, [x, w]);
  graph.output(grads.get(w)!, 'dw');
  graph.output(grads.get(x)!, 'dx');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const out = await session.run({
    x: { shape: [3, 2], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    w: { shape: [2], data: Float32Array.from([7, -8]) },
  });
  await session.release();
  assert.deepEqual([...out.dw!.data], [0, 0]);
  assert.deepEqual([...out.dx!.data], [7, -8, 7, -8, 7, -8]);
});

test('a parameter the loss does not depend on is an error naming it, or a zero gradient with allowUnused', async () => {
  const build = () => {
    const graph = new GraphBuilder('unused');
    const x = graph.input('x', [B, 2]);
    const head = graph.input('head.weight', [2, 2]);
    const unused = graph.input('adapter.lora_A', [B, 2]);
    const loss = reduceMean(matmul(x, head), [0, 1]);
    return { graph, x, head, unused, loss };
  };
  const first = build();
  assert.throws(
    () => buildBackward(first.graph, first.loss, [first.head, first.unused]),
    (error: unknown) =>
      error instanceof MeloError &&
      /does not depend on parameter 'adapter\.lora_A'/.test(error.message) &&
      !error.message.includes("'head.weight'"),
  );
  assert.equal(first.graph.nodes.length, 2, 'nothing was added before the error');

  const second = build();
  const grads = buildBackward(second.graph, second.loss, [second.head, second.unused], { allowUnused: true });
  second.graph.output(grads.get(second.unused)!, 'zero');
  second.graph.output(grads.get(second.head)!, 'dhead');
  const session = await Session.fromGraph(second.graph, { threads: 1 });
  const out = await session.run({
    x: { shape: [3, 2], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    'head.weight': { shape: [2, 2], data: Float32Array.from([1, 0, 0, 1]) },
    'adapter.lora_A': { shape: [3, 2], data: Float32Array.from([9, 9, 9, 9, 9, 9]) },
  });
  await session.release();
  assert.deepEqual(out.zero!.shape, [3, 2]);
  assert.deepEqual([...out.zero!.data], [0, 0, 0, 0, 0, 0]);
  // mean over 6 outputs of x·W: dW[i][j] = Σ_b x[b][i] / 6 (the batch is symbolic: counted at run time).
  assertClose(out.dhead!.data, [9 / 6, 9 / 6, 12 / 6, 12 / 6], 1e-6, 'dW');
});

const FloorOp: OpDef<Record<string, never>> = {
  name: 'floor',
  onnxType: 'Floor',
  inferShape: (inputs) => [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }],
};

test('a node without a gradient rule on the path is an error naming the op and the node', () => {
  const graph = new GraphBuilder('no-rule');
  const x = graph.input('x', [2]);
  const frozen = graph.input('frozen', [2]);
  const offFloor = graph.scope('quantize', () => graph.apply1(FloorOp, [frozen], {}));
  const onFloor = graph.scope('quantize', () => graph.apply1(FloorOp, [x], {}));
  // The Floor on a frozen input is off the path and is fine; the one on x is not.
  const loss = reduceSum(add(mul(x, offFloor), onFloor), [0]);
  assert.throws(
    () => buildBackward(graph, loss, [x]),
    (error: unknown) =>
      error instanceof MeloError &&
      error.message.includes("no gradient rule for op 'floor' (ONNX Floor) at node 'quantize/floor_1'"),
  );
  // Without the Floor on x's path, the same graph differentiates.
  const graph2 = new GraphBuilder('no-rule-off-path');
  const x2 = graph2.input('x', [2]);
  const frozen2 = graph2.input('frozen', [2]);
  const loss2 = reduceSum(mul(x2, graph2.apply1(FloorOp, [frozen2], {})), [0]);
  assert.equal(buildBackward(graph2, loss2, [x2]).get(x2)!.shape[0], 2);
});

test('bad arguments are clear errors', () => {
  const graph = new GraphBuilder('bad');
  const x = graph.input('x', [2, 3]);
  const y = exp(x);
  assert.throws(() => buildBackward(graph, y, [x]), /loss 'exp' has shape \[2, 3\]; a loss must be a scalar/);
  const loss = reduceSum(y, [0, 1]);
  const wrongSeed = graph.input('seed', [3]);
  assert.throws(
    () => buildBackward(graph, loss, [x], { seed: wrongSeed }),
    /seed 'seed' \[3\] float32 must be float32 with the loss's shape \[\]/,
  );
  const other = new GraphBuilder('other').input('w', [2]);
  assert.throws(() => buildBackward(graph, loss, [other]), /parameter 'w' belongs to another graph/);
  const shape = graph.constantInt64([2, 3]);
  assert.throws(() => buildBackward(graph, loss, [shape]), /only float32 values have gradients/);
});
