import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { quantizePerOutputChannel } from '../src/model/quantize.ts';
import {
  DequantizeRowsOp,
  Int8MatMulOp,
  int8MatMul,
  QuantizeTensorOp,
  SwitchBackMatMulOp,
  switchBackMatMul,
} from '../src/ops/quantized.ts';
import { Session } from '../src/runtime/session.ts';
import { hostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';

// References written from the ONNX operator definitions, independent of ONNX Runtime: DynamicQuantizeLinear
// (uint8, asymmetric, per tensor, round half to even) and an exact integer product scaled back to float.

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
 * g [rows, n] · (wq [n, k]) with g quantised per row, as ops/quantized.ts's rowwiseInt8MatMul defines it:
 * s = max|g_row|·(1/127) + 1e-30 in float32, q = round_half_even(g / s) + 128 as uint8, the exact integer
 * product with zero point 128, times s.
 */
function referenceRowwiseProduct(
  g: Float32Array,
  rows: number,
  wq: Int8Array,
  n: number,
  k: number,
): Float64Array {
  const out = new Float64Array(rows * k);
  for (let r = 0; r < rows; r++) {
    let max = 0;
    for (let c = 0; c < n; c++) max = Math.max(max, Math.abs(g[r * n + c]!));
    const s = Math.fround(Math.fround(max * Math.fround(1 / 127)) + Math.fround(1e-30));
    const q = new Int32Array(n);
    for (let c = 0; c < n; c++)
      q[c] = Math.min(255, Math.max(0, roundHalfEven(Math.fround(g[r * n + c]! / s)) + 128)) - 128;
    for (let j = 0; j < k; j++) {
      let sum = 0;
      for (let c = 0; c < n; c++) sum += q[c]! * wq[c * k + j]!;
      out[r * k + j] = sum * s;
    }
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

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! ** 2;
    bb += b[i]! ** 2;
  }
  return ab / Math.sqrt(aa * bb);
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

test('per-output-channel int8: scale = max |column| / 127, every value within half a step', () => {
  const random = new Random(1);
  const w = randomTensor(random, [40, 7], 0.02);
  for (let k = 0; k < 40; k++) w.data[k * 7 + 6] = 0; // an all-zero column
  w.data[3 * 7 + 2] = -0.5; // one large value sets its column's scale
  const { data, scale, shape } = quantizePerOutputChannel(w);
  assert.deepEqual(shape, [40, 7]);
  assert.equal(scale[2], Math.fround(0.5 / 127));
  assert.equal(data[3 * 7 + 2], -127);
  assert.equal(scale[6], 1);
  for (let c = 0; c < 7; c++) {
    let max = 0;
    for (let k = 0; k < 40; k++) max = Math.max(max, Math.abs(w.data[k * 7 + c]!));
    if (max > 0) assert.equal(scale[c], Math.fround(max / 127), `column ${c}`);
    for (let k = 0; k < 40; k++) {
      const i = k * 7 + c;
      assert.ok(Math.abs(data[i]! * scale[c]! - w.data[i]!) <= scale[c]! / 2 + 1e-9, `W[${k}, ${c}]`);
      assert.ok(data[i]! >= -127 && data[i]! <= 127);
    }
  }
});

test('int8 product: ORT matches the operator definition, is close to float, and its VJP is an int8 product too', async () => {
  const random = new Random(2);
  const [batch, tokens, k, n] = [2, 5, 48, 24];
  const rows = batch * tokens;
  const w = randomTensor(random, [k, n], 0.05);
  const quantized = quantizePerOutputChannel(w);
  const graph = new GraphBuilder('int8');
  const x = graph.input('x', [batch, tokens, k]);
  const seed = graph.input('dy', [batch, tokens, n]);
  const wq = graph.initializerInt8('wq', [k, n], quantized.data);
  const scale = graph.initializer('scale', hostTensor([n], quantized.scale));
  const y = int8MatMul(x, wq, scale);
  graph.output(y, 'y');
  const dx = buildBackward(graph, y, [x], { seed }).get(x)!;
  graph.output(dx, 'dx');
  const session = await Session.fromGraph(graph, { threads: 1 });
  try {
    const xs = randomTensor(random, [batch, tokens, k], 1);
    const dys = randomTensor(random, [batch, tokens, n], 0.1);
    const out = await session.run({ x: xs, dy: dys });

    // Forward: ORT's node is DynamicQuantizeMatMul as defined (float32 rounding of the scales aside).
    const expected = referenceInt8Product(xs.data, rows, quantized.data, quantized.scale, k, n);
    assert.ok(
      relativeError(out.y!.data, expected) < 1e-5,
      `forward vs definition ${relativeError(out.y!.data, expected)}`,
    );
    // …and close to the float product with the float weight.
    const exact = new Float64Array(rows * n);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < n; c++) {
        let sum = 0;
        for (let j = 0; j < k; j++) sum += xs.data[r * k + j]! * w.data[j * n + c]!;
        exact[r * n + c] = sum;
      }
    const forwardError = relativeError(out.y!.data, exact);
    assert.ok(forwardError < 0.02, `int8 vs float forward: relative error ${forwardError}`);

    // Backward: dx = (dy ∘ scale) · Wqᵀ as an int8 product with dy quantised row by row.
    const scaled = new Float32Array(rows * n);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < n; c++) scaled[r * n + c] = Math.fround(dys.data[r * n + c]! * quantized.scale[c]!);
    const wqT = new Int8Array(n * k);
    for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = quantized.data[j * n + c]!;
    const expectedDx = referenceRowwiseProduct(scaled, rows, wqT, n, k);
    assert.ok(
      relativeError(out.dx!.data, expectedDx) < 1e-5,
      `backward vs definition ${relativeError(out.dx!.data, expectedDx)}`,
    );
    const exactDx = new Float64Array(rows * k);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < k; j++) {
        let sum = 0;
        for (let c = 0; c < n; c++) sum += dys.data[r * n + c]! * w.data[j * n + c]!;
        exactDx[r * k + j] = sum;
      }
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
    const exact = new Float64Array(tokens * k);
    for (let r = 0; r < tokens; r++)
      for (let j = 0; j < k; j++) {
        let sum = 0;
        for (let c = 0; c < n; c++) sum += dys.data[r * n + c]! * w.data[j * n + c]!;
        exact[r * k + j] = sum;
      }
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

test('int8 product with a bias: added in the product (as defined), its gradient the rows’ sum of dy', async () => {
  const random = new Random(9);
  const [rows, k, n] = [6, 16, 10];
  const w = randomTensor(random, [k, n], 0.05);
  const quantized = quantizePerOutputChannel(w);
  const graph = new GraphBuilder('int8-bias');
  const x = graph.input('x', [rows, k]);
  const bias = graph.input('bias', [n]);
  const seed = graph.input('dy', [rows, n]);
  const y = int8MatMul(
    x,
    graph.initializerInt8('wq', [k, n], quantized.data),
    graph.initializer('scale', hostTensor([n], quantized.scale)),
    bias,
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
    const expected = referenceInt8Product(xs.data, rows, quantized.data, quantized.scale, k, n).map(
      (v, i) => v + biases.data[i % n]!,
    );
    assert.ok(relativeError(out.y!.data, expected) < 1e-5, `forward ${relativeError(out.y!.data, expected)}`);
    assert.deepEqual(out.dbias!.shape, [n]);
    assertRowSums(out.dbias!.data, dys.data, rows, n);
  } finally {
    await session.release();
  }
});

test('SwitchBack for a trained weight: int8 forward and input gradient as defined, with the weight quantised per tensor in the graph; the weight gradient is the float xᵀ·dy', async () => {
  const random = new Random(11);
  const [batch, tokens, k, n] = [2, 5, 40, 24];
  const rows = batch * tokens;
  const graph = new GraphBuilder('switchback');
  const x = graph.input('x', [batch, tokens, k]);
  const w = graph.input('w', [k, n]);
  const bias = graph.input('bias', [n]);
  const seed = graph.input('dy', [batch, tokens, n]);
  const y = switchBackMatMul(x, w, bias);
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

    // The weight's int8 copy, as QuantizeLinear defines it with s = max|W|·(1/127) + 1e-30 in float32.
    let max = 0;
    for (const v of ws.data) max = Math.max(max, Math.abs(v));
    const s = Math.fround(Math.fround(max * Math.fround(1 / 127)) + Math.fround(1e-30));
    const wq = Int8Array.from(ws.data, (v) =>
      Math.min(127, Math.max(-128, roundHalfEven(Math.fround(v / s)))),
    );
    const expected = referenceInt8Product(xs.data, rows, wq, s, k, n).map((v, i) => v + biases.data[i % n]!);
    assert.ok(relativeError(out.y!.data, expected) < 1e-5, `forward ${relativeError(out.y!.data, expected)}`);

    // dx: dy quantised per row times Wqᵀ, the one weight scale applied with the row scales.
    const wqT = new Int8Array(n * k);
    for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = wq[j * n + c]!;
    const expectedDx = referenceRowwiseProduct(dys.data, rows, wqT, n, k).map((v) => v * s);
    assert.ok(
      relativeError(out.dx!.data, expectedDx) < 1e-5,
      `dx ${relativeError(out.dx!.data, expectedDx)}`,
    );
    const exactDx = new Float64Array(rows * k);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < k; j++)
        for (let c = 0; c < n; c++) exactDx[r * k + j] += dys.data[r * n + c]! * ws.data[j * n + c]!;
    assert.ok(cosine(out.dx!.data, exactDx) > 0.999, `dx vs float: cosine ${cosine(out.dx!.data, exactDx)}`);

    // dW: the float product xᵀ·dy, straight through the quantisation; dbias: the rows' sum of dy.
    const expectedDw = new Float64Array(k * n);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < k; j++)
        for (let c = 0; c < n; c++) expectedDw[j * n + c] += xs.data[r * k + j]! * dys.data[r * n + c]!;
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
    /row-wise gradient needs static leading dims, got \[batch, 4, 3\]/,
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
    () => graph.apply1(Int8MatMulOp, [x, wq, scale], {}),
    /needs 4 inputs \(x, weight, scale, zero point\) or 5/,
  );
  assert.throws(
    () => graph.apply1(Int8MatMulOp, [x, wq, scale, graph.constantUint8(0)], {}),
    /int8_matmul.*zero point/,
  );
  const sums = graph.input('sums', [4, 3], 'int32');
  assert.throws(
    () => graph.apply1(DequantizeRowsOp, [sums, graph.input('rowScale', [3])], {}),
    /dequantize_rows.*one value per row, got \[4, 3\] and \[3\]/,
  );
  const w = graph.input('w', [8, 3]);
  assert.throws(
    () => graph.apply1(QuantizeTensorOp, [w, scale, graph.constantInt8(0)], {}),
    /quantize_tensor.*scalar scale and zero point, got \[3\]/,
  );
  assert.throws(
    () =>
      graph.apply1(SwitchBackMatMulOp, [x, graph.input('w2', [8, 4]), wq, scale, graph.constantInt8(0)], {}),
    /switchback_matmul.*int8 copy \[8, 3\] is not the weight's shape \[8, 4\]/,
  );
  assert.throws(
    () => graph.apply1(SwitchBackMatMulOp, [x, w, wq, scale], {}),
    /switchback_matmul.*needs 5 inputs/,
  );
});
