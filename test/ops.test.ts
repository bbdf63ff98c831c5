import assert from 'node:assert/strict';
import { test } from 'node:test';
import onnxProto from 'onnx-proto';
import { ShapeError } from '../src/errors.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { serializeGraph } from '../src/graph/serialize.ts';
import { add, div, gelu, mul, sub } from '../src/ops/elementwise.ts';
import { gemm, matmul } from '../src/ops/matmul.ts';
import { layerNorm } from '../src/ops/normalization.ts';
import { reduceMean, reduceSum } from '../src/ops/reduce.ts';
import { concat, expandBatch, reshape, slice, transpose } from '../src/ops/shape.ts';
import { softmax } from '../src/ops/softmax.ts';
import { assertClose, runGraph, tensor } from './helpers/graph.ts';

// Forward values of each op against numbers computed by hand (or by the formula written out here).

test('matmul and gemm', async () => {
  const a = tensor([2, 3], [1, 2, 3, 4, 5, 6]);
  const b = tensor([3, 2], [7, 8, 9, 10, 11, 12]);
  const [mm, gt] = await runGraph({ a, b }, ({ a, b }) => [
    matmul(a!, b!),
    gemm(a!, a!, { transB: true, alpha: 0.5 }),
  ]);
  assert.deepEqual([...mm!.data], [58, 64, 139, 154]);
  // 0.5 · A·Aᵀ = 0.5 · [[14, 32], [32, 77]]
  assert.deepEqual([...gt!.data], [7, 16, 16, 38.5]);
});

test('batched matmul broadcasts leading dims', async () => {
  const a = tensor([2, 1, 2], [1, 2, 3, 4]);
  const b = tensor([2, 1], [10, 100]);
  const [out] = await runGraph({ a, b }, ({ a, b }) => matmul(a!, b!));
  assert.deepEqual(out!.shape, [2, 1, 1]);
  assert.deepEqual([...out!.data], [210, 430]);
});

test('elementwise ops broadcast', async () => {
  const x = tensor([2, 2], [1, 2, 3, 4]);
  const y = tensor([2], [10, 20]);
  const outs = await runGraph({ x, y }, ({ x, y }) => [add(x!, y!), sub(x!, y!), mul(x!, y!), div(x!, y!)]);
  assert.deepEqual([...outs[0]!.data], [11, 22, 13, 24]);
  assert.deepEqual([...outs[1]!.data], [-9, -18, -7, -16]);
  assert.deepEqual([...outs[2]!.data], [10, 40, 30, 80]);
  assertClose(outs[3]!.data, [0.1, 0.1, 0.3, 0.2], 1e-7);
});

test('exact GELU matches 0.5·x·(1+erf(x/√2))', async () => {
  // erf values from the series tables: GELU(-1) = -0.15865525, GELU(0.5) = 0.34573123, GELU(2) = 1.95449974
  const [out] = await runGraph({ x: tensor([4], [-1, 0, 0.5, 2]) }, ({ x }) => gelu(x!));
  assertClose(out!.data, [-0.15865525, 0, 0.34573123, 1.95449974], 1e-6);
});

test('GELU is written as the five standard nodes ORT fuses, its intermediates reserved in the graph', () => {
  const graph = new GraphBuilder('gelu');
  const y = graph.scope('blocks.0', () => gelu(graph.input('x', [3])));
  graph.output(y);
  const model = onnxProto.onnx.ModelProto.decode(serializeGraph(graph));
  const nodes = model.graph!.node!;
  assert.deepEqual(
    nodes.map((node) => node.opType),
    ['Div', 'Erf', 'Add', 'Mul', 'Mul'],
  );
  assert.ok(nodes.every((node) => !node.domain));
  assert.deepEqual(nodes.at(-1)!.output, [y.name]);
  assert.equal(nodes[0]!.input![0], 'x');
  // A later value cannot take an intermediate's name.
  assert.throws(() => graph.input(`${y.name}/erf`, [3]), /name already used/);
});

test('layer norm and softmax', async () => {
  const x = tensor([1, 4], [1, 2, 3, 4]);
  const gamma = tensor([4], [1, 2, 1, 1]);
  const beta = tensor([4], [0, 0, 1, 0]);
  const [ln, sm] = await runGraph({ x, gamma, beta }, ({ x, gamma, beta }) => [
    layerNorm(x!, gamma!, beta!, 1e-5),
    softmax(x!),
  ]);
  // mean 2.5, var 1.25: (x−2.5)/√(1.25+1e−5)
  const inv = 1 / Math.sqrt(1.25 + 1e-5);
  assertClose(ln!.data, [-1.5 * inv, 2 * -0.5 * inv, 0.5 * inv + 1, 1.5 * inv], 1e-6);
  const e = [1, 2, 3, 4].map(Math.exp);
  const total = e.reduce((s, v) => s + v, 0);
  assertClose(
    sm!.data,
    e.map((v) => v / total),
    1e-7,
  );
});

test('reshape, transpose, concat, slice, reduce', async () => {
  const x = tensor([2, 3], [1, 2, 3, 4, 5, 6]);
  const outs = await runGraph({ x }, ({ x }) => [
    reshape(x!, [3, -1]),
    transpose(x!, [1, 0]),
    concat([x!, x!], 0),
    slice(x!, [1], [3], [1]),
    reduceSum(x!, [1]),
    reduceMean(x!, [0], true),
  ]);
  assert.deepEqual(outs[0]!.shape, [3, 2]);
  assert.deepEqual([...outs[1]!.data], [1, 4, 2, 5, 3, 6]);
  assert.deepEqual(outs[2]!.shape, [4, 3]);
  assert.deepEqual([...outs[3]!.data], [2, 3, 5, 6]);
  assert.deepEqual([...outs[4]!.data], [6, 15]);
  assert.deepEqual([...outs[5]!.data], [2.5, 3.5, 4.5]);
});

test('expandBatch follows a symbolic batch dim at run time', async () => {
  const graph = new GraphBuilder('t');
  const x = graph.input('x', ['batch', 2]);
  const token = graph.initializer('token', tensor([1, 1, 2], [7, 8]));
  const expanded = expandBatch(token, x, [1, 2]);
  assert.deepEqual(expanded.shape, ['batch', 1, 2]);
  const [out] = await runGraph({ x: tensor([3, 2], [0, 0, 0, 0, 0, 0]) }, ({ x }, g) =>
    expandBatch(g.initializer('token', tensor([1, 1, 2], [7, 8])), x!, [1, 2]),
  );
  assert.deepEqual(out!.shape, [3, 1, 2]);
  assert.deepEqual([...out!.data], [7, 8, 7, 8, 7, 8]);
});

test('shape errors name the op, the node and the shapes', () => {
  const graph = new GraphBuilder('t');
  const a = graph.input('a', ['batch', 3]);
  const b = graph.input('b', [4, 2]);
  assert.throws(
    () => graph.scope('blocks.0', () => matmul(a, b)),
    (error: unknown) => {
      assert.ok(error instanceof ShapeError);
      assert.match(error.message, /matmul 'blocks\.0\/matmul': inner dims differ: \[batch, 3\] · \[4, 2\]/);
      return true;
    },
  );
  assert.throws(() => add(a, b), /do not broadcast/);
  assert.throws(() => reshape(a, [5, -1]), /cannot infer -1|cannot reshape/);
  assert.throws(() => transpose(a, [0, 0]), /not a permutation/);
});
