import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { mul, sub } from './elementwise.ts';
import { reduceMean } from './reduce.ts';
import { requireInputs } from './rules.ts';

/**
 * LayerNormalization over the last axis, with its Mean and InvStdDev outputs kept for the backward pass
 * (llm.c caches mean and rstd the same way). ONNX has no LayerNorm gradient op outside ORT's training
 * kernels, so the VJP is written with standard ops:
 *   x̂ = (x − μ)·rstd,  dx̂ = dy·γ,  dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)),  dγ = dy·x̂,  dβ = dy
 * (dγ and dβ are summed over the leading axes by the backward pass).
 */
export const LayerNormOp: OpDef<{ epsilon: number }> = {
  name: 'layer_norm',
  onnxType: 'LayerNormalization',
  outputCount: 3,
  emitAttributes: ({ epsilon }) => [
    { name: 'axis', type: 'int', value: -1 },
    { name: 'epsilon', type: 'float', value: epsilon },
  ],
  inferShape(inputs, _attributes, node) {
    requireInputs('layer_norm', node, inputs, 3);
    const x = inputs[0]!;
    const features = x.shape[x.shape.length - 1];
    for (const [what, param] of [
      ['scale', inputs[1]!],
      ['bias', inputs[2]!],
    ] as const) {
      if (param.shape.length !== 1 || param.shape[0] !== features) {
        throw new ShapeError('layer_norm', node, `${what} must be [${features}], got [${param.shape}]`);
      }
    }
    const statsShape = [...x.shape.slice(0, -1), 1];
    return [
      { shape: x.shape, dtype: 'float32' },
      { shape: statsShape, dtype: 'float32' },
      { shape: statsShape, dtype: 'float32' },
    ];
  },
  vjp: ({ gradOutputs: [dy], inputs: [x, gamma], outputs: [, mean, invStd], needs }) => {
    const xHat = mul(sub(x!, mean!), invStd!);
    const dxHat = mul(dy!, gamma!);
    const dx = needs[0]
      ? mul(
          invStd!,
          sub(sub(dxHat, reduceMean(dxHat, [-1], true)), mul(xHat, reduceMean(mul(dxHat, xHat), [-1], true))),
        )
      : null;
    return [dx, needs[1] ? mul(dy!, xHat) : null, needs[2] ? dy! : null];
  },
};

export function layerNorm(x: Value, gamma: Value, beta: Value, epsilon: number): Value {
  return x.graph.apply(LayerNormOp, [x, gamma, beta], { epsilon })[0]!;
}
