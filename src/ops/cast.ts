import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { ONNX_DTYPE } from '../graph/serialize.ts';
import type { DType } from '../graph/types.ts';
import { requireInputs } from './rules.ts';

export const CastOp: OpDef<{ to: DType }> = {
  name: 'cast',
  onnxType: 'Cast',
  emitAttributes: ({ to }) => [{ name: 'to', type: 'int', value: ONNX_DTYPE[to] }],
  inferShape(inputs, { to }, node) {
    requireInputs('cast', node, inputs, 1);
    return [{ shape: inputs[0]!.shape, dtype: to }];
  },
  // Only a float-to-float cast carries a gradient; from bool or int64 there is nothing to differentiate.
  vjp: ({ gradOutputs: [g], inputs: [x], attributes: { to } }) => [
    x!.dtype === 'float32' && to === 'float32' ? g! : null,
  ],
};

export const cast = (x: Value, to: DType): Value => x.graph.apply1(CastOp, [x], { to });
