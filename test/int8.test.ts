import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { quantizePerOutputChannel } from '../src/model/quantize.ts';
import {
  DequantizeRowsOp,
  INT8_GRID,
  INT8_GRID_16BIT_PAIRS,
  INT8_GRID_16BIT_PAIRS_TRAINED,
  type Int8Grid,
  Int8MatMulOp,
  int8MatMul,
  int8PairsFit16Bits,
  MatMulIntegerToFloatOp,
  QuantizeTensorOp,
  RowwiseForwardOp,
  SwitchBackMatMulOp,
  switchBackMatMul,
} from '../src/ops/quantized.ts';
import { Session } from '../src/runtime/session.ts';
import { hostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';
import { cosine } from './helpers/similarity.ts';

// References written from the ONNX operator definitions, independent of ONNX Runtime: DynamicQuantizeLinear
// (uint8, asymmetric, per tensor, round half to even) and an exact integer product scaled back to float.

const GRIDS: readonly (readonly [string, Int8Grid])[] = [
  ['full grid', INT8_GRID],
  ['16-bit-pair grid', INT8_GRID_16BIT_PAIRS],
  ['16-bit-pair grid for trained weights', INT8_GRID_16BIT_PAIRS_TRAINED],
];

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function dynamicQuantizeLinear(x: Float32Array): { q: Uint8Array; scale: number; zeroPoint: number } {
  let min = 0;
  let max = 0;
  for (const v of x) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const scale = Math.fround((max - min) / 255);
  const zeroPoint = Math.min(255, Math.max(0, roundHalfEven(0 - min / scale)));
  const q = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++)
    q[i] = Math.min(255, Math.max(0, roundHalfEven(x[i]! / scale) + zeroPoint));
  return { q, scale, zeroPoint };
}

/** x [rows, k] · (wq [k, n] ∘ scale[n]) the way DynamicQuantizeMatMul defines it. */
function referenceInt8Product(
  x: Float32Array,
  rows: number,
  wq: Int8Array,
  scale: Float32Array | number,
  k: number,
  n: number,
): Float64Array {
  const { q, scale: xs, zeroPoint } = dynamicQuantizeLinear(x);
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < n; c++) {
      let sum = 0;
      for (let j = 0; j < k; j++) sum += (q[r * k + j]! - zeroPoint) * wq[j * n + c]!;
      out[r * n + c] = sum * xs * (typeof scale === 'number' ? scale : scale[c]!);
    }
  return out;
}

/**
 * g [rows, n] · (wq [n, k]) with g quantised per row, as ops/quantized.ts's rowwiseInt8MatMul defines it
 * for `levels` L: s = max|g_row|·(1/L) + 1e-30 in float32, q = round_half_even(g / s) + L + 1 as uint8,
 * the exact integer product with zero point L + 1, times s.
 */
function referenceRowwiseProduct(
  g: Float32Array,
  rows: number,
  wq: Int8Array,
  n: number,
  k: number,
  levels = 127,
): Float64Array {
  const out = new Float64Array(rows * k);
  for (let r = 0; r < rows; r++) {
    let max = 0;
    for (let c = 0; c < n; c++) max = Math.max(max, Math.abs(g[r * n + c]!));
    const s = Math.fround(Math.fround(max * Math.fround(1 / levels)) + Math.fround(1e-30));
    const q = new Int32Array(n);
    const zeroPoint = levels + 1;
    for (let c = 0; c < n; c++)
      q[c] =
        Math.min(255, Math.max(0, roundHalfEven(Math.fround(g[r * n + c]! / s)) + zeroPoint)) - zeroPoint;
    for (let j = 0; j < k; j++) {
      let sum = 0;
      for (let c = 0; c < n; c++) sum += q[c]! * wq[c * k + j]!;
      out[r * k + j] = sum * s;
    }
  }
  return out;
}

/** The forward product on `grid` as defined: row-wise where the grid asks (times the weight's scales), else DynamicQuantizeMatMul's. */
function referenceForward(
  grid: Int8Grid,
  x: Float32Array,
  rows: number,
  wq: Int8Array,
  scale: Float32Array | number,
  k: number,
  n: number,
): Float64Array {
  if (!grid.rowwiseForward) return referenceInt8Product(x, rows, wq, scale, k, n);
  const columnScale = (c: number) => (typeof scale === 'number' ? scale : scale[c]!);
  return referenceRowwiseProduct(x, rows, wq, k, n, grid.rowLevels).map((v, i) => v * columnScale(i % n));
}

/** Σ_j a(i, j)·b(j, c) in float64, i < m, j < k, c < n: the float product an int8 one is compared with. */
function float64Product(
  m: number,
  k: number,
  n: number,
  a: (i: number, j: number) => number,
  b: (j: number, c: number) => number,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let c = 0; c < n; c++) {
      let sum = 0;
      for (let j = 0; j < k; j++) sum += a(i, j) * b(j, c);
      out[i * n + c] = sum;
    }
  return out;
}

function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i]! - expected[i]!) ** 2;
    den += expected[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

/** A bias gradient: each of its n values is the sum of dy's column over the rows. */
function assertRowSums(dbias: Float32Array, dy: Float32Array, rows: number, n: number): void {
  for (let c = 0; c < n; c++) {
    let sum = 0;
    for (let r = 0; r < rows; r++) sum += dy[r * n + c]!;
    assert.ok(Math.abs(dbias[c]! - sum) < 1e-6, `dbias[${c}] ${dbias[c]} vs ${sum}`);
  }
}

function randomTensor(random: Random, shape: number[], spread: number) {
  const t = hostTensor(shape);
  for (let i = 0; i < t.data.length; i++) t.data[i] = random.normal() * spread;
  return t;
}

for (const levels of new Set(GRIDS.map(([, grid]) => grid.weightLevels)))
  test(`per-output-channel int8 on ±${levels}: scale = max |column| / ${levels}, every value within half a step`, () => {
    const random = new Random(1);
    const w = randomTensor(random, [40, 7], 0.02);
    for (let k = 0; k < 40; k++) w.data[k * 7 + 6] = 0; // an all-zero column
    w.data[3 * 7 + 2] = -0.5; // one large value sets its column's scale
    const { data, scale, shape } = quantizePerOutputChannel(w, levels);
    assert.deepEqual(shape, [40, 7]);
    assert.equal(scale[2], Math.fround(0.5 / levels));
    assert.equal(data[3 * 7 + 2], -levels);
    assert.equal(scale[6], 1);
    for (let c = 0; c < 7; c++) {
      let max = 0;
      for (let k = 0; k < 40; k++) max = Math.max(max, Math.abs(w.data[k * 7 + c]!));
      if (max > 0) assert.equal(scale[c], Math.fround(max / levels), `column ${c}`);
      for (let k = 0; k < 40; k++) {
        const i = k * 7 + c;
        assert.ok(Math.abs(data[i]! * scale[c]! - w.data[i]!) <= scale[c]! / 2 + 1e-9, `W[${k}, ${c}]`);
        assert.ok(data[i]! >= -levels && data[i]! <= levels);
      }
    }
  });

for (const [gridName, grid] of GRIDS)
  test(`int8 product on the ${gridName}: ORT matches the operator definition, is close to float, and its VJP is an int8 product too`, async () => {
    const random = new Random(2);
    const [batch, tokens, k, n] = [2, 5, 48, 24];
    const rows = batch * tokens;
    const w = randomTensor(random, [k, n], 0.05);
    const quantized = quantizePerOutputChannel(w, grid.weightLevels);
    const graph = new GraphBuilder('int8');
    const x = graph.input('x', [batch, tokens, k]);
    const seed = graph.input('dy', [batch, tokens, n]);
    const wq = graph.initializerInt8('wq', [k, n], quantized.data);
    const scale = graph.initializer('scale', hostTensor([n], quantized.scale));
    const y = int8MatMul(x, wq, scale, undefined, grid);
    // The 16-bit-pair grid quantises a static-shape forward per row, as the gradient; the full grid uses
    // ORT's DynamicQuantizeMatMul, activations per tensor.
    const forwardOps = graph.nodes.map((node) => node.op.onnxType);
    assert.equal(forwardOps.includes('DynamicQuantizeMatMul'), !grid.rowwiseForward);
    graph.output(y, 'y');
    const dx = buildBackward(graph, y, [x], { seed }).get(x)!;
    graph.output(dx, 'dx');
    const session = await Session.fromGraph(graph, { threads: 1 });
    try {
      const xs = randomTensor(random, [batch, tokens, k], 1);
      const dys = randomTensor(random, [batch, tokens, n], 0.1);
      const out = await session.run({ x: xs, dy: dys });

      // Forward: as defined (float32 rounding of the scales aside).
      const expected = referenceForward(grid, xs.data, rows, quantized.data, quantized.scale, k, n);
      assert.ok(
        relativeError(out.y!.data, expected) < 1e-5,
        `forward vs definition ${relativeError(out.y!.data, expected)}`,
      );
      // …and close to the float product with the float weight.
      const exact = float64Product(
        rows,
        k,
        n,
        (r, j) => xs.data[r * k + j]!,
        (j, c) => w.data[j * n + c]!,
      );
      const forwardError = relativeError(out.y!.data, exact);
      assert.ok(forwardError < 0.02, `int8 vs float forward: relative error ${forwardError}`);

      // Backward: dx = (dy ∘ scale) · Wqᵀ as an int8 product with dy quantised row by row.
      const scaled = new Float32Array(rows * n);
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < n; c++)
          scaled[r * n + c] = Math.fround(dys.data[r * n + c]! * quantized.scale[c]!);
      const wqT = new Int8Array(n * k);
      for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = quantized.data[j * n + c]!;
      const expectedDx = referenceRowwiseProduct(scaled, rows, wqT, n, k, grid.rowLevels);
      assert.ok(
        relativeError(out.dx!.data, expectedDx) < 1e-5,
        `backward vs definition ${relativeError(out.dx!.data, expectedDx)}`,
      );
      const exactDx = float64Product(
        rows,
        n,
        k,
        (r, c) => dys.data[r * n + c]!,
        (c, j) => w.data[j * n + c]!,
      );
      const backwardCosine = cosine(out.dx!.data, exactDx);
      assert.ok(backwardCosine > 0.999, `int8 vs float input gradient: cosine ${backwardCosine}`);
    } finally {
      await session.release();
    }
  });

test('int8 input gradient: row-wise scales keep the small rows a per-tensor scale rounds away (a ViT’s CLS vs patch tokens)', async () => {
  const random = new Random(5);
  const [tokens, n, k] = [17, 64, 32];
  const w = randomTensor(random, [k, n], 0.05);
  const quantized = quantizePerOutputChannel(w);
  const graph = new GraphBuilder('int8-rows');
  const x = graph.input('x', [1, tokens, k]);
  const seed = graph.input('dy', [1, tokens, n]);
  const y = int8MatMul(
    x,
    graph.initializerInt8('wq', [k, n], quantized.data),
    graph.initializer('scale', hostTensor([n], quantized.scale)),
  );
  graph.output(y, 'y');
  graph.output(buildBackward(graph, y, [x], { seed }).get(x)!, 'dx');
  const session = await Session.fromGraph(graph, { threads: 1 });
  try {
    // Row 0 (CLS) carries a gradient 300× the other rows'.
    const dys = randomTensor(random, [1, tokens, n], 1e-3);
    for (let c = 0; c < n; c++) dys.data[c] = dys.data[c]! * 300;
    const out = await session.run({ x: randomTensor(random, [1, tokens, k], 1), dy: dys });
    const exact = float64Product(
      tokens,
      n,
      k,
      (r, c) => dys.data[r * n + c]!,
      (c, j) => w.data[j * n + c]!,
    );
    // What one scale for the tensor would give (DynamicQuantizeLinear's definition).
    const scaled = Float32Array.from(dys.data, (v, i) => Math.fround(v * quantized.scale[i % n]!));
    const wqT = new Int8Array(n * k);
    for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = quantized.data[j * n + c]!;
    const perTensor = referenceInt8Product(scaled, tokens, wqT, 1, n, k);
    const patches = (values: ArrayLike<number>) => Array.from(values).slice(k);
    const rowwiseError = relativeError(patches(out.dx!.data), patches(exact));
    const perTensorError = relativeError(patches(perTensor), patches(exact));
    assert.ok(rowwiseError < 0.02, `row-wise patch-row error ${rowwiseError}`);
    assert.ok(perTensorError > 10 * rowwiseError, `per-tensor ${perTensorError} vs row-wise ${rowwiseError}`);
  } finally {
    await session.release();
  }
});

for (const [gridName, grid] of GRIDS)
  test(`int8 product with a bias on the ${gridName}: added in the product (as defined), its gradient the rows’ sum of dy`, async () => {
    const random = new Random(9);
    const [rows, k, n] = [6, 16, 10];
    const w = randomTensor(random, [k, n], 0.05);
    const quantized = quantizePerOutputChannel(w, grid.weightLevels);
    const graph = new GraphBuilder('int8-bias');
    const x = graph.input('x', [rows, k]);
    const bias = graph.input('bias', [n]);
    const seed = graph.input('dy', [rows, n]);
    const y = int8MatMul(
      x,
      graph.initializerInt8('wq', [k, n], quantized.data),
      graph.initializer('scale', hostTensor([n], quantized.scale)),
      bias,
      grid,
    );
    graph.output(y, 'y');
    const grads = buildBackward(graph, y, [x, bias], { seed });
    graph.output(grads.get(bias)!, 'dbias');
    const session = await Session.fromGraph(graph, { threads: 1 });
    try {
      const xs = randomTensor(random, [rows, k], 1);
      const biases = randomTensor(random, [n], 0.5);
      const dys = randomTensor(random, [rows, n], 0.1);
      const out = await session.run({ x: xs, bias: biases, dy: dys });
      const product = referenceForward(grid, xs.data, rows, quantized.data, quantized.scale, k, n);
      const expected = product.map((v, i) => v + biases.data[i % n]!);
      assert.ok(
        relativeError(out.y!.data, expected) < 1e-5,
        `forward ${relativeError(out.y!.data, expected)}`,
      );
      assert.deepEqual(out.dbias!.shape, [n]);
      assertRowSums(out.dbias!.data, dys.data, rows, n);
    } finally {
      await session.release();
    }
  });

for (const [gridName, grid] of GRIDS)
  test(`SwitchBack for a trained weight on the ${gridName}: int8 forward and input gradient as defined, with the weight quantised per tensor in the graph; the weight gradient is the float xᵀ·dy`, async () => {
    const random = new Random(11);
    const [batch, tokens, k, n] = [2, 5, 40, 24];
    const rows = batch * tokens;
    const graph = new GraphBuilder('switchback');
    const x = graph.input('x', [batch, tokens, k]);
    const w = graph.input('w', [k, n]);
    const bias = graph.input('bias', [n]);
    const seed = graph.input('dy', [batch, tokens, n]);
    const y = switchBackMatMul(x, w, bias, grid);
    graph.output(y, 'y');
    const grads = buildBackward(graph, y, [x, w, bias], { seed });
    graph.output(grads.get(x)!, 'dx');
    graph.output(grads.get(w)!, 'dw');
    graph.output(grads.get(bias)!, 'dbias');
    const session = await Session.fromGraph(graph, { threads: 1 });
    try {
      const [xs, ws, biases] = [
        randomTensor(random, [batch, tokens, k], 1),
        randomTensor(random, [k, n], 0.05),
        randomTensor(random, [n], 0.5),
      ];
      const dys = randomTensor(random, [batch, tokens, n], 0.1);
      const out = await session.run({ x: xs, w: ws, bias: biases, dy: dys });

      // The weight's int8 copy, as QuantizeLinear defines it with s = max|W|·(1/L) + 1e-30 in float32.
      let max = 0;
      for (const v of ws.data) max = Math.max(max, Math.abs(v));
      const levels = grid.weightLevels;
      const s = Math.fround(Math.fround(max * Math.fround(1 / levels)) + Math.fround(1e-30));
      const wq = Int8Array.from(ws.data, (v) =>
        Math.min(127, Math.max(-128, roundHalfEven(Math.fround(v / s)))),
      );
      assert.equal(Math.max(...Array.from(wq, Math.abs)), levels);
      const product = referenceForward(grid, xs.data, rows, wq, s, k, n);
      const expected = product.map((v, i) => v + biases.data[i % n]!);
      assert.ok(
        relativeError(out.y!.data, expected) < 1e-5,
        `forward ${relativeError(out.y!.data, expected)}`,
      );

      // dx: dy quantised per row times Wqᵀ, the one weight scale applied with the row scales.
      const wqT = new Int8Array(n * k);
      for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = wq[j * n + c]!;
      const expectedDx = referenceRowwiseProduct(dys.data, rows, wqT, n, k, grid.rowLevels).map((v) => v * s);
      assert.ok(
        relativeError(out.dx!.data, expectedDx) < 1e-5,
        `dx ${relativeError(out.dx!.data, expectedDx)}`,
      );
      const exactDx = float64Product(
        rows,
        n,
        k,
        (r, c) => dys.data[r * n + c]!,
        (c, j) => ws.data[j * n + c]!,
      );
      assert.ok(
        cosine(out.dx!.data, exactDx) > 0.999,
        `dx vs float: cosine ${cosine(out.dx!.data, exactDx)}`,
      );

      // dW: the float product xᵀ·dy, straight through the quantisation; dbias: the rows' sum of dy.
      const expectedDw = float64Product(
        k,
        rows,
        n,
        (j, r) => xs.data[r * k + j]!,
        (r, c) => dys.data[r * n + c]!,
      );
      assert.deepEqual(out.dw!.shape, [k, n]);
      assert.ok(
        relativeError(out.dw!.data, expectedDw) < 1e-6,
        `dw ${relativeError(out.dw!.data, expectedDw)}`,
      );
      assertRowSums(out.dbias!.data, dys.data, rows, n);
    } finally {
      await session.release();
    }
  });

test('the int8 input gradient needs static leading dims, and says so', () => {
  const graph = new GraphBuilder('int8-symbolic');
  const x = graph.input('x', ['batch', 4, 8]);
  const quantized = quantizePerOutputChannel(hostTensor([8, 3], new Float32Array(24).fill(0.1)));
  const y = int8MatMul(
    x,
    graph.initializerInt8('wq', [8, 3], quantized.data),
    graph.initializer('scale', hostTensor([3], quantized.scale)),
  );
  assert.throws(
    () => buildBackward(graph, y, [x], { seed: graph.input('dy', ['batch', 4, 3]) }),
    /row-wise quantisation needs static leading dims, got \[batch, 4, 3\]/,
  );
});

test('int8 op records refuse operands of the wrong shape, naming the rule', () => {
  const graph = new GraphBuilder('int8-shapes');
  const x = graph.input('x', [4, 8]);
  const wq = graph.initializerInt8('wq', [8, 3], new Int8Array(24));
  const scale = graph.initializer('scale', hostTensor([3], new Float32Array(3).fill(0.1)));
  assert.throws(
    () => int8MatMul(x, wq, scale, graph.input('bias', [4])),
    /int8_matmul.*bias must be \[3\], got \[4\]/,
  );
  assert.throws(
    () => graph.apply1(Int8MatMulOp, [x, wq, scale], { rowLevels: 127 }),
    /needs 4 inputs \(x, weight, scale, zero point\) or 5/,
  );
  assert.throws(
    () => graph.apply1(Int8MatMulOp, [x, wq, scale, graph.constantUint8(0)], { rowLevels: 127 }),
    /int8_matmul.*zero point/,
  );
  const sums = graph.input('sums', [4, 3], 'int32');
  assert.throws(
    () => graph.apply1(DequantizeRowsOp, [sums, graph.input('rowScale', [3])], {}),
    /dequantize_rows.*one value per row, got \[4, 3\] and \[3\]/,
  );
  const quantized = graph.input('quantized', [4, 8], 'uint8');
  const zeroPoints = [graph.constantUint8(91), graph.constantInt8(0)];
  assert.throws(
    () =>
      graph.apply1(
        MatMulIntegerToFloatOp,
        [quantized, wq, graph.constantFloat(1), graph.input('perRow', [4]), ...zeroPoints],
        { activationMax: 181 },
      ),
    /matmul_integer_to_float.*scalar a_scale and a scalar or \[3\] b_scale, got \[\] and \[4\]/,
  );
  assert.throws(
    () =>
      graph.apply1(MatMulIntegerToFloatOp, [x, wq, graph.constantFloat(1), scale, ...zeroPoints], {
        activationMax: 181,
      }),
    /matmul_integer_to_float.*a must be uint8/,
  );
  const w = graph.input('w', [8, 3]);
  assert.throws(
    () => graph.apply1(QuantizeTensorOp, [w, scale, graph.constantInt8(0)], { levels: 127 }),
    /quantize_tensor.*scalar scale and zero point, got \[3\]/,
  );
  assert.throws(
    () =>
      graph.apply1(SwitchBackMatMulOp, [x, graph.input('w2', [8, 4]), wq, scale, graph.constantInt8(0)], {
        rowLevels: 127,
      }),
    /switchback_matmul.*int8 copy \[8, 3\] is not the weight's shape \[8, 4\]/,
  );
  assert.throws(
    () => graph.apply1(SwitchBackMatMulOp, [x, w, wq, scale], { rowLevels: 127 }),
    /switchback_matmul.*needs 5 inputs/,
  );
});

test('int8PairsFit16Bits: 2 · largest uint8 operand · largest |weight| ≤ 32767, over every int8 product of the graph', () => {
  const build = (weight: number, product: 'dynamic' | 'rows' | 'trained', grid: Int8Grid) => {
    const graph = new GraphBuilder('pairs');
    const x = graph.input('x', [4, 2]);
    if (product === 'trained') switchBackMatMul(x, graph.input('w', [2, 2]), undefined, grid);
    else {
      const wq = graph.initializerInt8('wq', [2, 2], Int8Array.of(weight, -weight, 1, 0));
      const y = int8MatMul(
        product === 'rows' ? x : graph.input('xs', ['batch', 2]),
        wq,
        graph.constantFloat(1),
        undefined,
        grid,
      );
      graph.output(y, 'y');
    }
    return graph;
  };
  // DynamicQuantizeMatMul's activations span 255: weights up to 64 fit (2 · 255 · 64 = 32640).
  assert.equal(int8PairsFit16Bits(build(64, 'dynamic', INT8_GRID)), true);
  assert.equal(int8PairsFit16Bits(build(65, 'dynamic', INT8_GRID)), false);
  // Row-wise on ±90: operands up to 181, weights up to 90 (2 · 181 · 90 = 32580; · 91 = 32942).
  assert.equal(int8PairsFit16Bits(build(90, 'rows', INT8_GRID_16BIT_PAIRS)), true);
  assert.equal(int8PairsFit16Bits(build(91, 'rows', INT8_GRID_16BIT_PAIRS)), false);
  // …but not with a symbolic batch, where the forward stays DynamicQuantizeMatMul.
  assert.equal(int8PairsFit16Bits(build(90, 'dynamic', INT8_GRID_16BIT_PAIRS)), false);
  // In-graph quantisation counts by its grid; the full grid's 127 levels never fit.
  assert.equal(int8PairsFit16Bits(build(0, 'trained', INT8_GRID_16BIT_PAIRS)), true);
  assert.equal(int8PairsFit16Bits(build(0, 'trained', INT8_GRID)), false);
  // Trained weights on ±127 fit with rows on ±64 (2 · 129 · 127 = 32766), not on ±65 (2 · 131 · 127).
  assert.equal(int8PairsFit16Bits(build(0, 'trained', INT8_GRID_16BIT_PAIRS_TRAINED)), true);
  const rows65 = { ...INT8_GRID_16BIT_PAIRS_TRAINED, rowLevels: 65 };
  assert.equal(int8PairsFit16Bits(build(0, 'trained', rows65)), false);
  assert.equal(int8PairsFit16Bits(new GraphBuilder('none')), true);
});

test('a row-wise forward stands for its DynamicQuantizeMatMul op: same shape rule, same VJP', () => {
  const graph = new GraphBuilder('rowwise-forward');
  const x = graph.input('x', [4, 8]);
  const wq = graph.initializerInt8('wq', [8, 3], new Int8Array(24));
  const scale = graph.initializer('scale', hostTensor([3], new Float32Array(3).fill(0.1)));
  const inputs = [graph.input('y', [4, 5]), x, wq, scale, graph.constantInt8(0)];
  assert.throws(
    () => graph.apply1(RowwiseForwardOp, inputs, { rowLevels: 90, product: Int8MatMulOp }),
    /int8_rowwise_forward.*row-wise product \[4, 5\] is not the int8_matmul it stands for, \[4, 3\]/,
  );
});
