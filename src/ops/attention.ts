import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import { MICROSOFT_DOMAIN, type OpDef } from '../graph/op.ts';
import { formatShape, type TensorType } from '../graph/types.ts';
import { add, mul, sub } from './elementwise.ts';
import { fusedMatMul, fusedMatMulType } from './matmul.ts';
import { reduceSum } from './reduce.ts';
import { requireInputs } from './rules.ts';

/**
 * Scaled dot-product attention over split heads, as one op: q [..., Tq, D], k [..., T, D], v [..., T, Dv]
 * → the context softmax(scale·q·kᵀ)·v [..., Tq, Dv] and the attention weights P [..., Tq, T] (read by
 * its VJP, and by explanations: serve/web/attention-model.ts). Written into the ONNX file as
 * FusedMatMul(q, k; transB, alpha = scale) → Softmax → MatMul, or, in a portable file (`export-onnx`),
 * Mul(q, scale) → MatMul(·, Transpose(k)) → Softmax → MatMul. The scale is input 4 (a scalar constant) for
 * the portable form and the attribute `scale` for FusedMatMul's alpha.
 *
 * Why one op and not those three (FlashAttention's backward, Dao et al. 2022, without the tiling):
 * - Softmax's own VJP forms Σⱼ dPᵢⱼ·Pᵢⱼ, a product and a sum over the [Tq, T] scores. The same numbers are
 *   Σ_d dOᵢ_d·Oᵢ_d (since O = P·v), a product and a sum over [Tq, D]: for ViT-B/16, 64 wide instead of
 *   197.
 * - Each product's transpose is a flag of FusedMatMul, so neither kᵀ, vᵀ nor qᵀ is ever written out,
 *   and the scale rides in the products' alpha.
 * ViT-B/16 int8 LoRA step at batch 8 on this 2-core EPYC, ORT profile, two runs each way alternating:
 * attention's kernels with the transposes around them 182 and 194 → 154 and 171 ms.
 */
export const AttentionOp: OpDef<{ scale: number }> = {
  name: 'attention',
  onnxType: 'Attention',
  domain: MICROSOFT_DOMAIN,
  outputCount: 2,
  inferShape(inputs, _attributes, node) {
    requireInputs('attention', node, inputs, 4);
    const [q, k, v, scaleValue] = inputs as [TensorType, TensorType, TensorType, TensorType];
    if (scaleValue.shape.length !== 0)
      throw new ShapeError('attention', node, `scale must be a scalar, got ${formatShape(scaleValue.shape)}`);
    const scores = fusedMatMulType('attention', node, q, k, { transA: 0, transB: 1 });
    const context = fusedMatMulType('attention', node, scores, v, { transA: 0, transB: 0 });
    if (scores.dtype !== 'float32')
      throw new ShapeError('attention', node, `needs float32, got ${scores.dtype} ${formatShape(q.shape)}`);
    return [context, scores];
  },
  lowerIntermediates: ['scores', 'scaled_q', 'keys_t'],
  // ORT's own fusions turn the portable form back into FusedMatMul (MatmulTransposeFusion,
  // MatMulScaleFusion) when the transpose stays one of the last two dims, which is not the case after its
  // transpose optimiser merges it with the head split: hence the contrib form for ORT's own graphs.
  portableLowering: true,
  lower: ([q, k, v, scaleValue], [context, weights], [scores, scaledQ, keysT], { scale }, { portable }) => [
    ...(portable
      ? [
          { opType: 'Mul', inputs: [q!, scaleValue!], outputs: [scaledQ!] },
          {
            opType: 'Transpose',
            inputs: [k!],
            outputs: [keysT!],
            attributes: [{ name: 'perm', type: 'ints' as const, value: [0, 1, 3, 2] }],
          },
          { opType: 'MatMul', inputs: [scaledQ!, keysT!], outputs: [scores!] },
        ]
      : [
          {
            opType: 'FusedMatMul',
            domain: MICROSOFT_DOMAIN,
            inputs: [q!, k!],
            outputs: [scores!],
            attributes: [
              { name: 'transB', type: 'int' as const, value: 1 },
              { name: 'alpha', type: 'float' as const, value: scale },
            ],
          },
        ]),
    {
      opType: 'Softmax',
      inputs: [scores!],
      outputs: [weights!],
      attributes: [{ name: 'axis', type: 'int', value: -1 }],
    },
    { opType: 'MatMul', inputs: [weights!, v!], outputs: [context!] },
  ],
  vjp: ({
    gradOutputs: [dContext, dWeightsOutside],
    inputs: [q, k, v],
    outputs: [context, weights],
    attributes,
    needs,
  }) => {
    const p = weights!;
    const dV = needs[2] && dContext ? fusedMatMul(p, dContext, { transA: true }) : null;
    if (!needs[0] && !needs[1]) return [null, null, dV, null];
    // dP = dO·vᵀ (+ any gradient that reaches P from outside), then softmax's VJP with the row sums
    // Σⱼ dPᵢⱼ·Pᵢⱼ taken as Σ_d dOᵢ_d·Oᵢ_d when dO is all of dP.
    const fromContext = dContext ? fusedMatMul(dContext, v!, { transB: true }) : null;
    const dP =
      fromContext && dWeightsOutside ? add(fromContext, dWeightsOutside) : (fromContext ?? dWeightsOutside!);
    const rowSums = dWeightsOutside
      ? reduceSum(mul(dP, p), [-1], true)
      : reduceSum(mul(dContext!, context!), [-1], true);
    const dScores = mul(p, sub(dP, rowSums));
    const { scale } = attributes;
    return [
      needs[0] ? fusedMatMul(dScores, k!, { alpha: scale }) : null,
      needs[1] ? fusedMatMul(dScores, q!, { transA: true, alpha: scale }) : null,
      dV,
      null,
    ];
  },
};

/**
 * softmax(scale·q·kᵀ)·v over split heads ([batch, heads, tokens, head dim]): returns the context and the
 * attention weights.
 */
export function attention(q: Value, k: Value, v: Value, scale: number): { context: Value; weights: Value } {
  const [context, weights] = q.graph.apply(AttentionOp, [q, k, v, q.graph.constantFloat(scale)], { scale });
  return { context: context!, weights: weights! };
}
