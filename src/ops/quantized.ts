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
 * dx = dy·Wᵀ = (dy ∘ scale)·Wqᵀ, quantised on the fly like the forward; W is frozen and gets none.
 */
import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import { MICROSOFT_DOMAIN, type OpDef } from '../graph/op.ts';
import { formatShape } from '../graph/types.ts';
import { mul } from './elementwise.ts';
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
  vjp: ({ graph, gradOutputs: [g], inputs: [, wq, scale], needs }) => {
    if (!needs[0]) return [null, null, null];
    // Wqᵀ is a Transpose of an initializer, which ORT folds into a second initializer when the session is
    // created: no per-step cost, one more int8 copy of the weight.
    const wqT = transpose(wq!, [1, 0]);
    const dx = int8MatMul(mul(g!, scale!), wqT, graph.constantFloat(1));
    return [dx, null, null];
  },
};

/** x [..., K] · (Wq [K, N] int8 ∘ scale [N]) → [..., N] float. */
export const int8MatMul = (x: Value, wq: Value, scale: Value): Value =>
  x.graph.apply1(Int8MatMulOp, [x, wq, scale], {});
