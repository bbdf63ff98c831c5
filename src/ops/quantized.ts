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
 * kernel (5× slower than float). A single node also gives the product one VJP, below.
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
import { formatShape } from '../graph/types.ts';
import { cast } from './cast.ts';
import { abs, add, div, mul, scale } from './elementwise.ts';
import { reduceMax } from './reduce.ts';
import { requireDtype, requireInputs } from './rules.ts';
import { transpose } from './shape.ts';

export const Int8MatMulOp: OpDef<Record<string, never>> = {
  name: 'int8_matmul',
  onnxType: 'DynamicQuantizeMatMul',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, _attributes, node) {
    requireInputs('int8_matmul', node, inputs, 3);
    const [x, wq, scale] = inputs as [(typeof inputs)[0], (typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('int8_matmul', node, x, 'float32', 'x');
    requireDtype('int8_matmul', node, wq, 'int8', 'weight');
    requireDtype('int8_matmul', node, scale, 'float32', 'scale');
    if (x.shape.length < 2 || wq.shape.length !== 2)
      throw new ShapeError(
        'int8_matmul',
        node,
        `needs x of rank ≥ 2 and a 2-D weight, got ${formatShape(x.shape)} · ${formatShape(wq.shape)}`,
      );
    const [k, n] = wq.shape as [number, number];
    if (x.shape[x.shape.length - 1] !== k)
      throw new ShapeError(
        'int8_matmul',
        node,
        `inner dims differ: ${formatShape(x.shape)} · ${formatShape(wq.shape)}`,
      );
    if (!(scale.shape.length === 0 || (scale.shape.length === 1 && scale.shape[0] === n)))
      throw new ShapeError(
        'int8_matmul',
        node,
        `scale must be a scalar or [${n}], got ${formatShape(scale.shape)}`,
      );
    return [{ shape: [...x.shape.slice(0, -1), n], dtype: 'float32' }];
  },
  vjp: ({ gradOutputs: [g], inputs: [, wq, scale], needs }) => {
    if (!needs[0]) return [null, null, null];
    // Wqᵀ is a Transpose of an initializer, which ORT folds into a second initializer when the session is
    // created: no per-step cost, one more int8 copy of the weight.
    const wqT = transpose(wq!, [1, 0]);
    return [rowwiseInt8MatMul(mul(g!, scale!), wqT), null, null];
  },
};

/** ONNX Round (half to even); no gradient: it only ever quantises a gradient. */
export const RoundOp: OpDef<Record<string, never>> = {
  name: 'round',
  onnxType: 'Round',
  inferShape(inputs, _attributes, node) {
    requireInputs('round', node, inputs, 1);
    requireDtype('round', node, inputs[0]!, 'float32', 'x');
    return [{ shape: inputs[0]!.shape, dtype: 'float32' }];
  },
};

/**
 * ONNX MatMulInteger, uint8 activations (with a zero point) · int8 weights → int32 sums; ONNX Runtime runs
 * it with the u8·s8 kernel (AVX-512 VNNI / AVX-VNNI). No gradient: it forms an input gradient.
 */
export const MatMulIntegerOp: OpDef<Record<string, never>> = {
  name: 'matmul_integer',
  onnxType: 'MatMulInteger',
  inferShape(inputs, _attributes, node) {
    requireInputs('matmul_integer', node, inputs, 3);
    const [a, b, zeroPoint] = inputs as [(typeof inputs)[0], (typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('matmul_integer', node, a, 'uint8', 'a');
    requireDtype('matmul_integer', node, b, 'int8', 'b');
    requireDtype('matmul_integer', node, zeroPoint, 'uint8', 'a_zero_point');
    if (a.shape.length < 2 || b.shape.length !== 2 || a.shape[a.shape.length - 1] !== b.shape[0])
      throw new ShapeError(
        'matmul_integer',
        node,
        `needs [..., K] · [K, N], got ${formatShape(a.shape)} · ${formatShape(b.shape)}`,
      );
    return [{ shape: [...a.shape.slice(0, -1), b.shape[1]!], dtype: 'int32' }];
  },
};

/**
 * g [..., N] · Wq [N, K] (int8) → [..., K] float, with g quantised per row: s = max|g_row| / 127,
 * q = round(g / s) + 128 as uint8 (zero point 128, so the symmetric range [−127, 127] maps to [1, 255]),
 * the u8·s8 product in int32, then times s. Each row keeps its own 255 levels, whatever the other rows'
 * magnitudes. A row of zeros gets s = 1e-30 and stays zero.
 */
export function rowwiseInt8MatMul(g: Value, wq: Value): Value {
  const graph = g.graph;
  const rowScale = add(scale(reduceMax(abs(g), [-1], true), 1 / 127), graph.constantFloat(1e-30));
  const centred = add(graph.apply1(RoundOp, [div(g, rowScale)], {}), graph.constantFloat(128));
  const quantized = cast(centred, 'uint8');
  const sums = graph.apply1(MatMulIntegerOp, [quantized, wq, graph.constantUint8(128)], {});
  return mul(cast(sums, 'float32'), rowScale);
}

/** x [..., K] · (Wq [K, N] int8 ∘ scale [N]) → [..., N] float. */
export const int8MatMul = (x: Value, wq: Value, scale: Value): Value =>
  x.graph.apply1(Int8MatMulOp, [x, wq, scale], {});
