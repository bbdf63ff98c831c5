import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { mul, sub } from './elementwise.ts';
import { reduceSum } from './reduce.ts';

/** Softmax over the last axis; VJP y·(g − Σ g·y), from standard ops. */
export const SoftmaxOp: OpDef<{ axis: number }> = {
  name: 'softmax',
  onnxType: 'Softmax',
  emitAttributes: ({ axis }) => [{ name: 'axis', type: 'int', value: axis }],
  inferShape: (inputs) => [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }],
  vjp: ({ gradOutputs: [g], outputs: [y] }) => [mul(y!, sub(g!, reduceSum(mul(g!, y!), [-1], true)))],
};

export const softmax = (x: Value): Value => x.graph.apply1(SoftmaxOp, [x], { axis: -1 });
