import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { quantizePerOutputChannel } from '../src/model/quantize.ts';
import { int8MatMul } from '../src/ops/quantized.ts';
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

    // Backward: dx = (dy ∘ scale) · Wqᵀ through the same int8 kernel.
    const scaled = new Float32Array(rows * n);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < n; c++) scaled[r * n + c] = Math.fround(dys.data[r * n + c]! * quantized.scale[c]!);
    const wqT = new Int8Array(n * k);
    for (let j = 0; j < k; j++) for (let c = 0; c < n; c++) wqT[c * k + j] = quantized.data[j * n + c]!;
    const expectedDx = referenceInt8Product(scaled, rows, wqT, 1, n, k);
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
