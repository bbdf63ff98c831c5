import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import type { DType } from '../graph/types.ts';
import { requireInputs } from './rules.ts';

/** TensorProto.DataType numbers of the element types melo's graphs use. */
const ONNX_TYPE_NUMBER: Record<DType, number> = {
  float32: 1,
  int64: 7,
  bool: 9,
  int8: 3,
  uint8: 2,
  int32: 6,
};

export const CastOp: OpDef<{ to: DType }> = {
  name: 'cast',
  onnxType: 'Cast',
  emitAttributes: ({ to }) => [{ name: 'to', type: 'int', value: ONNX_TYPE_NUMBER[to] }],
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
