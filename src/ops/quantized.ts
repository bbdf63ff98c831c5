/**
 * The int8 product of a frozen projection (`--backbone-precision int8`): x·W where W is stored as int8 with
 * one scale per output channel (W[k, n] ≈ Wq[k, n]·scale[n], src/model/quantize.ts).
 *
 * One node, ONNX Runtime's com.microsoft DynamicQuantizeMatMul: it quantises x to uint8 on the fly (one
 * scale and zero point per tensor), multiplies with the u8·s8 kernel (AVX-512 VNNI / AVX-VNNI where the CPU
 * has them), and scales the int32 sums back to float. Chosen by measurement (bench/int8-probe.ts, docs/
 * benchmarks.md): the standard-op chain DynamicQuantizeLinear → MatMulInteger → Cast → Mul and
 * DynamicQuantizeLinear → MatMulIntegerToFloat both become this very node after ORT's graph optimisations,
 * MatMulNBits with 8-bit weights was slower, and MatMulInteger with int8 (not uint8) activations had no fast
 * kernel (5× slower than float). A single node also gives the product one VJP, below. The weight's zero
 * point (int8 0) is always an input, so that the graph can be written with the weights as uint8 + 128
 * (zero point 128) on CPUs where ORT's u8·s8 kernel saturates (AVX2 without VNNI; runtime/int8-kernels.ts):
 * the same numbers, multiplied exactly by its u8·u8 kernel.
 *
 * Gradient (SwitchBack, Wortsman et al. 2023): the input gradient is an int8 product as well,
 * dx = dy·Wᵀ = (dy ∘ scale)·Wqᵀ, with the incoming gradient quantised row by row (one scale per token):
 * {@link rowwiseInt8MatMul}. W is frozen and gets none. Per-tensor quantisation, as the forward does, is
 * not enough for gradients: in a ViT the CLS token's rows carry gradients far larger than the patch
 * tokens' (only CLS reaches the head), so one scale for the tensor rounds most patch rows to zero. It
 * cost 0.026 test AUC on BreastMNIST against fp32 training (3 seeds, docs/study.md), while the forward's
 * per-tensor quantisation cost nothing at evaluation.
 */
import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import { MICROSOFT_DOMAIN, type OpDef } from '../graph/op.ts';
import { formatShape, type TensorType } from '../graph/types.ts';
import { add, maximum, mul, neg, scale } from './elementwise.ts';
import { flattenLeading, gemm } from './matmul.ts';
import { reduceMax, reduceMin } from './reduce.ts';
import { requireDtype, requireInputs } from './rules.ts';
import { ExpandOp, reshape, transpose } from './shape.ts';

export const Int8MatMulOp: OpDef<Record<string, never>> = {
  name: 'int8_matmul',
  onnxType: 'DynamicQuantizeMatMul',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, _attributes, node) {
    if (inputs.length !== 4 && inputs.length !== 5)
      throw new ShapeError(
        'int8_matmul',
        node,
        `needs 4 inputs (x, weight, scale, zero point) or 5 (+ bias), got ${inputs.length}`,
      );
    const [x, wq, scale, zeroPoint, bias] = inputs as (typeof inputs)[0][];
    requireDtype('int8_matmul', node, x!, 'float32', 'x');
    requireDtype('int8_matmul', node, wq!, 'int8', 'weight');
    requireDtype('int8_matmul', node, scale!, 'float32', 'scale');
    if (x!.shape.length < 2 || wq!.shape.length !== 2)
      throw new ShapeError(
        'int8_matmul',
        node,
        `needs x of rank ≥ 2 and a 2-D weight, got ${formatShape(x!.shape)} · ${formatShape(wq!.shape)}`,
      );
    const [k, n] = wq!.shape as [number, number];
    if (x!.shape[x!.shape.length - 1] !== k)
      throw new ShapeError(
        'int8_matmul',
        node,
        `inner dims differ: ${formatShape(x!.shape)} · ${formatShape(wq!.shape)}`,
      );
    const scalarOrPerColumn = (t: TensorType) =>
      t.shape.length === 0 || (t.shape.length === 1 && t.shape[0] === n);
    if (!scalarOrPerColumn(scale!))
      throw new ShapeError(
        'int8_matmul',
        node,
        `scale must be a scalar or [${n}], got ${formatShape(scale!.shape)}`,
      );
    requireDtype('int8_matmul', node, zeroPoint!, 'int8', 'zero point');
    if (zeroPoint!.shape.length !== 0)
      throw new ShapeError(
        'int8_matmul',
        node,
        `zero point must be a scalar, got ${formatShape(zeroPoint!.shape)}`,
      );
    if (bias) {
      requireDtype('int8_matmul', node, bias, 'float32', 'bias');
      if (bias.shape.length !== 1 || bias.shape[0] !== n)
        throw new ShapeError('int8_matmul', node, `bias must be [${n}], got ${formatShape(bias.shape)}`);
    }
    return [{ shape: [...x!.shape.slice(0, -1), n], dtype: 'float32' }];
  },
  vjp: ({ gradOutputs: [g], inputs: [, wq, scale, zeroPoint], needs }) => {
    // The bias's gradient is g itself, summed down to [N] by the backward walk (frozen in MeLo: unasked).
    const biasGrad = needs[4] ? g! : null;
    if (!needs[0]) return [null, null, null, null, biasGrad];
    // Wqᵀ is a Transpose of an initializer, which ORT folds into a second initializer when the session is
    // created: no per-step cost, one more int8 copy of the weight.
    const wqT = transpose(wq!, [1, 0]);
    return [rowwiseInt8MatMul(mul(g!, scale!), wqT, zeroPoint!), null, null, null, biasGrad];
  },
};

/**
 * ONNX QuantizeLinear with one scale and zero point per row (axis 0): q = saturate(round_half_even(x / s)
 * + zp) as uint8, in one kernel. No gradient: it only ever quantises a gradient.
 */
export const QuantizeRowsOp: OpDef<Record<string, never>> = {
  name: 'quantize_rows',
  onnxType: 'QuantizeLinear',
  emitAttributes: () => [{ name: 'axis', type: 'int', value: 0 }],
  inferShape(inputs, _attributes, node) {
    requireInputs('quantize_rows', node, inputs, 3);
    const [x, rowScale, zeroPoint] = inputs as [(typeof inputs)[0], (typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('quantize_rows', node, x, 'float32', 'x');
    requireDtype('quantize_rows', node, rowScale, 'float32', 'scale');
    requireDtype('quantize_rows', node, zeroPoint, 'uint8', 'zero point');
    requireRowVector('quantize_rows', node, x, rowScale, zeroPoint);
    return [{ shape: x.shape, dtype: 'uint8' }];
  },
};

/** ONNX DequantizeLinear of int32 sums with one scale per row (axis 0): x·s as float32, in one kernel. */
export const DequantizeRowsOp: OpDef<Record<string, never>> = {
  name: 'dequantize_rows',
  onnxType: 'DequantizeLinear',
  emitAttributes: () => [{ name: 'axis', type: 'int', value: 0 }],
  inferShape(inputs, _attributes, node) {
    requireInputs('dequantize_rows', node, inputs, 2);
    const [x, rowScale] = inputs as [(typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('dequantize_rows', node, x, 'int32', 'x');
    requireDtype('dequantize_rows', node, rowScale, 'float32', 'scale');
    requireRowVector('dequantize_rows', node, x, rowScale);
    return [{ shape: x.shape, dtype: 'float32' }];
  },
};

function requireRowVector(op: string, node: string, x: TensorType, ...perRow: TensorType[]): void {
  for (const vector of perRow)
    if (x.shape.length !== 2 || vector.shape.length !== 1 || vector.shape[0] !== x.shape[0])
      throw new ShapeError(
        op,
        node,
        `needs [rows, n] and one value per row, got ${formatShape(x.shape)} and ${formatShape(vector.shape)}`,
      );
}

/**
 * ONNX MatMulInteger, uint8 activations (with a zero point) · int8 weights (with theirs, 0) → int32 sums;
 * ONNX Runtime runs it with the u8·s8 kernel (AVX-512 VNNI / AVX-VNNI), or u8·u8 where the weights are
 * written unsigned ({@link ModelExtras.int8AsUint8}). No gradient: it forms an input gradient.
 */
export const MatMulIntegerOp: OpDef<Record<string, never>> = {
  name: 'matmul_integer',
  onnxType: 'MatMulInteger',
  inferShape(inputs, _attributes, node) {
    requireInputs('matmul_integer', node, inputs, 4);
    const [a, b, aZeroPoint, bZeroPoint] = inputs as TensorType[];
    requireDtype('matmul_integer', node, a!, 'uint8', 'a');
    requireDtype('matmul_integer', node, b!, 'int8', 'b');
    requireDtype('matmul_integer', node, aZeroPoint!, 'uint8', 'a_zero_point');
    requireDtype('matmul_integer', node, bZeroPoint!, 'int8', 'b_zero_point');
    if (a!.shape.length < 2 || b!.shape.length !== 2 || a!.shape[a!.shape.length - 1] !== b!.shape[0])
      throw new ShapeError(
        'matmul_integer',
        node,
        `needs [..., K] · [K, N], got ${formatShape(a!.shape)} · ${formatShape(b!.shape)}`,
      );
    return [{ shape: [...a!.shape.slice(0, -1), b!.shape[1]!], dtype: 'int32' }];
  },
};

/**
 * g [..., N] · Wq [N, K] (int8) → [..., K] float, with g quantised per row: s = max|g_row| / 127,
 * q = round(g / s) + 128 as uint8 (zero point 128, so the symmetric range [−127, 127] maps to [1, 255]),
 * the u8·s8 product in int32, then times s. Each row keeps its own 255 levels, whatever the other rows'
 * magnitudes. A row of zeros gets s = 1e-30 and stays zero. `wZeroPoint` is the weight's (int8 0, written
 * as uint8 128 with the weight on CPUs that need it). A scalar `weightScale` (a weight quantised per tensor)
 * multiplies the row scales of the dequantisation.
 *
 * The rows are flattened to [rows, N] so that QuantizeLinear and DequantizeLinear take the row scales
 * per axis: one kernel each, in place of Div, Round, Add, Cast and Cast, Mul. Same numbers (both round half
 * to even after a true division); on this 2-core AVX-512 VNNI EPYC, at the 1576 rows of a batch of 8, the
 * product with its quantisation took 3.1 ms instead of 6.6 (768 × 768) and 14.7 instead of 22.7 (768 ×
 * 3072) (bench/int8-probe.ts, `row-ql` against `row-u8`). The leading dims must be static (the training
 * step's batch is).
 */
export function rowwiseInt8MatMul(g: Value, wq: Value, wZeroPoint: Value, weightScale?: Value): Value {
  const graph = g.graph;
  const leading = g.shape.slice(0, -1);
  if (!leading.every((d): d is number => typeof d === 'number'))
    throw new ShapeError(
      'int8_matmul',
      g.name,
      `row-wise gradient needs static leading dims, got ${formatShape(g.shape)}`,
    );
  const rows = leading.reduce((a, b) => a * b, 1);
  const flat = reshape(g, [rows, g.dim(-1) as number]);
  // max |g| per row as max(max g, −min g): two reads of g instead of Abs's read and write and a read.
  const rowMax = maximum(reduceMax(flat, [-1], true), neg(reduceMin(flat, [-1], true)));
  const rowScale = reshape(add(scale(rowMax, 1 / 127), graph.constantFloat(1e-30)), [rows]);
  // ORT folds this Expand of two constants into one initializer when the session is created.
  const zeroPoints = graph.apply1(ExpandOp, [graph.constantUint8(128), graph.constantInt64([rows])], {
    outShape: [rows],
  });
  const quantized = graph.apply1(QuantizeRowsOp, [flat, rowScale, zeroPoints], {});
  const sums = graph.apply1(MatMulIntegerOp, [quantized, wq, graph.constantUint8(128), wZeroPoint], {});
  const outputScale = weightScale ? mul(rowScale, weightScale) : rowScale;
  const product = graph.apply1(DequantizeRowsOp, [sums, outputScale], {});
  return reshape(product, [...leading, wq.dim(-1) as number]);
}

/**
 * x [..., K] · (Wq [K, N] int8 ∘ scale [N]) (+ bias [N]) → [..., N] float. The bias is added in the
 * product's output stage, not by a separate Add over the output.
 */
export function int8MatMul(x: Value, wq: Value, scale: Value, bias?: Value): Value {
  const zeroPoint = x.graph.constantInt8(0);
  return x.graph.apply1(Int8MatMulOp, bias ? [x, wq, scale, zeroPoint, bias] : [x, wq, scale, zeroPoint], {});
}

/**
 * ONNX QuantizeLinear with one scale for the whole tensor and an int8 zero point of 0: q = saturate(
 * round_half_even(w / s)) as int8. No gradient: the weight it quantises gets its gradient straight
 * through {@link SwitchBackMatMulOp}.
 */
export const QuantizeTensorOp: OpDef<Record<string, never>> = {
  name: 'quantize_tensor',
  onnxType: 'QuantizeLinear',
  inferShape(inputs, _attributes, node) {
    requireInputs('quantize_tensor', node, inputs, 3);
    const [w, tensorScale, zeroPoint] = inputs as [TensorType, TensorType, TensorType];
    requireDtype('quantize_tensor', node, w, 'float32', 'w');
    requireDtype('quantize_tensor', node, tensorScale, 'float32', 'scale');
    requireDtype('quantize_tensor', node, zeroPoint, 'int8', 'zero point');
    if (tensorScale.shape.length !== 0 || zeroPoint.shape.length !== 0)
      throw new ShapeError(
        'quantize_tensor',
        node,
        `needs a scalar scale and zero point, got ${formatShape(tensorScale.shape)} and ${formatShape(zeroPoint.shape)}`,
      );
    return [{ shape: w.shape, dtype: 'int8' }];
  },
};

/**
 * A float weight quantised in the graph with one scale for the tensor, s = max |W| / 127: SwitchBack's
 * weight quantisation, for a weight that is itself being trained and so is quantised again at every step.
 * Per tensor rather than per output channel (as model/quantize.ts does once for a frozen backbone) because
 * ORT's QuantizeLinear along axis 1 runs element by element: 1380 ms for a ViT-B/16's 72 block projections
 * on this 2-core EPYC, against one vectorised pass per tensor.
 */
export function quantizeTensor(w: Value): { wq: Value; scale: Value } {
  const graph = w.graph;
  const all = Array.from({ length: w.rank }, (_, axis) => axis);
  const magnitude = maximum(reduceMax(w, all), neg(reduceMin(w, all)));
  const tensorScale = add(scale(magnitude, 1 / 127), graph.constantFloat(1e-30));
  return {
    wq: graph.apply1(QuantizeTensorOp, [w, tensorScale, graph.constantInt8(0)], {}),
    scale: tensorScale,
  };
}

/**
 * SwitchBack (Wortsman et al. 2023) for a projection whose weight is trained (full fine-tuning with
 * `--backbone-precision int8`): inputs x [..., K], W [K, N] float, its per-step int8 copy Wq with its one
 * scale ({@link quantizeTensor}), and optionally the bias. The forward and the input gradient are int8
 * products, as for a frozen backbone ({@link Int8MatMulOp}); the weight's gradient is the float product
 * xᵀ·dy, passed straight through the quantisation to W. W itself is not read by the emitted node (it is
 * DynamicQuantizeMatMul on Wq): it is an input so that the gradient walk reaches it.
 */
export const SwitchBackMatMulOp: OpDef<Record<string, never>> = {
  name: 'switchback_matmul',
  onnxType: 'DynamicQuantizeMatMul',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, attributes, node) {
    if (inputs.length !== 5 && inputs.length !== 6)
      throw new ShapeError(
        'switchback_matmul',
        node,
        `needs 5 inputs (x, weight, int8 weight, scale, zero point) or 6 (+ bias), got ${inputs.length}`,
      );
    const [x, w, wq, ...rest] = inputs as TensorType[];
    requireDtype('switchback_matmul', node, w!, 'float32', 'weight');
    if (formatShape(w!.shape) !== formatShape(wq!.shape))
      throw new ShapeError(
        'switchback_matmul',
        node,
        `the int8 copy ${formatShape(wq!.shape)} is not the weight's shape ${formatShape(w!.shape)}`,
      );
    return Int8MatMulOp.inferShape([x!, wq!, ...rest], attributes, node);
  },
  lower: ([x, , wq, ...rest], [y]) => [
    { opType: 'DynamicQuantizeMatMul', domain: MICROSOFT_DOMAIN, inputs: [x!, wq!, ...rest], outputs: [y!] },
  ],
  vjp: ({ gradOutputs: [g], inputs: [x, w, wq, wScale, wZeroPoint], needs }) => {
    const k = w!.dim(0) as number;
    const n = w!.dim(1) as number;
    // One weight scale: it multiplies the row scales of the dequantisation, not the gradient itself.
    const dx = needs[0] ? rowwiseInt8MatMul(g!, transpose(wq!, [1, 0]), wZeroPoint!, wScale!) : null;
    const dw = needs[1] ? gemm(flattenLeading(x!, k), flattenLeading(g!, n), { transA: true }) : null;
    return [dx, dw, null, null, null, needs[5] ? g! : null];
  },
};

/** x·W (+ bias) for a trained W, by {@link SwitchBackMatMulOp} on W's per-step int8 copy. */
export function switchBackMatMul(x: Value, w: Value, bias?: Value): Value {
  const graph = x.graph;
  const { wq, scale: wScale } = quantizeTensor(w);
  const zeroPoint = graph.constantInt8(0);
  const inputs = bias ? [x, w, wq, wScale, zeroPoint, bias] : [x, w, wq, wScale, zeroPoint];
  return graph.apply1(SwitchBackMatMulOp, inputs, {});
}
