import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import type { Dim } from '../graph/types.ts';
import { normalizeAxis } from './rules.ts';
import { expandLike, reshape } from './shape.ts';
import { scale } from './elementwise.ts';

interface ReduceAttributes {
  axes: readonly number[];
  keepdims: number;
}

function reduceShape(op: string, node: string, shape: readonly Dim[], { axes, keepdims }: ReduceAttributes): Dim[] {
  const reduced = new Set(axes.map((axis) => normalizeAxis(op, node, axis, shape.length)));
  const out: Dim[] = [];
  shape.forEach((dim, axis) => {
    if (!reduced.has(axis)) out.push(dim);
    else if (keepdims) out.push(1);
  });
  return out;
}

/** Brings a reduced gradient back to the input's shape: restore the kept dims, then broadcast. */
function broadcastBack(grad: Value, input: Value, { axes, keepdims }: ReduceAttributes): Value {
  let keptShape = grad;
  if (!keepdims) {
    const reduced = new Set(axes.map((axis) => (axis < 0 ? axis + input.rank : axis)));
    const target = input.shape.map((dim, axis) => (reduced.has(axis) ? 1 : typeof dim === 'number' ? dim : 0));
    keptShape = reshape(grad, target);
  }
  return expandLike(keptShape, input);
}

function reduceOp(name: string, onnxType: string, vjp: OpDef<ReduceAttributes>['vjp']): OpDef<ReduceAttributes> {
  return {
    name,
    onnxType,
    emitAttributes: ({ keepdims }) => [{ name: 'keepdims', type: 'int', value: keepdims }],
    inferShape: (inputs, attributes, node) => [
      { shape: reduceShape(name, node, inputs[0]!.shape, attributes), dtype: inputs[0]!.dtype },
    ],
    vjp,
  };
}

export const ReduceSumOp = reduceOp('reduce_sum', 'ReduceSum', ({ gradOutputs: [g], inputs: [x], attributes }) => [
  broadcastBack(g!, x!, attributes),
  null,
]);

export const ReduceMeanOp = reduceOp('reduce_mean', 'ReduceMean', ({ gradOutputs: [g], inputs: [x], attributes }) => {
  const count = attributes.axes.reduce((acc, axis) => acc * (x!.dim(axis) as number), 1);
  return [scale(broadcastBack(g!, x!, attributes), 1 / count), null];
});

/** Max has no gradient here: it is only used as a numerical shift that the math cancels (log-sum-exp). */
export const ReduceMaxOp = reduceOp('reduce_max', 'ReduceMax', () => [null, null]);

function reduce(op: OpDef<ReduceAttributes>, x: Value, axes: readonly number[], keepdims: boolean): Value {
  return x.graph.apply1(op, [x, x.graph.constantInt64(axes)], { axes, keepdims: keepdims ? 1 : 0 });
}

export const reduceSum = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceSumOp, x, axes, keepdims);
export const reduceMean = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceMeanOp, x, axes, keepdims);
export const reduceMax = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceMaxOp, x, axes, keepdims);
