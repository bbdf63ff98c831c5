import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import type { Dim } from '../graph/types.ts';
import { formatShape } from '../graph/types.ts';
import { div, scale } from './elementwise.ts';
import { normalizeAxis } from './rules.ts';
import { expandLike, reshape } from './shape.ts';

interface ReduceAttributes {
  axes: readonly number[];
  keepdims: number;
}

function reduceShape(
  op: string,
  node: string,
  shape: readonly Dim[],
  { axes, keepdims }: ReduceAttributes,
): Dim[] {
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
    // Reshape's 0 copies the dim at the same index of `grad`, which lacks the reduced axes: it is only right
    // for a symbolic dim with no reduced axis before it; one other symbolic dim can be inferred (-1).
    const firstReduced = Math.min(...reduced);
    let inferred = false;
    const target = input.shape.map((dim, axis) => {
      if (reduced.has(axis)) return 1;
      if (typeof dim === 'number') return dim;
      if (axis < firstReduced) return 0;
      if (inferred)
        throw new ShapeError('reduce', grad.name, `cannot restore ${formatShape(input.shape)}'s dims`);
      inferred = true;
      return -1;
    });
    keptShape = reshape(grad, target);
  }
  return expandLike(keptShape, input);
}

function reduceOp(
  name: string,
  onnxType: string,
  vjp: OpDef<ReduceAttributes>['vjp'],
): OpDef<ReduceAttributes> {
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

export const ReduceSumOp = reduceOp(
  'reduce_sum',
  'ReduceSum',
  ({ gradOutputs: [g], inputs: [x], attributes }) => [broadcastBack(g!, x!, attributes), null],
);

export const ReduceMeanOp = reduceOp(
  'reduce_mean',
  'ReduceMean',
  ({ gradOutputs: [g], inputs: [x], attributes }) => {
    const dims = attributes.axes.map((axis) => x!.dim(axis));
    if (dims.every((dim) => typeof dim === 'number')) {
      return [scale(broadcastBack(g!, x!, attributes), 1 / dims.reduce((acc, dim) => acc * dim, 1)), null];
    }
    // A symbolic reduced dim (a mean over the batch): count at run time as Σ 1 over the same axes.
    const count = reduceSum(expandLike(x!.graph.constantFloat(1), x!), attributes.axes, true);
    return [div(broadcastBack(g!, x!, attributes), count), null];
  },
);

/** Max has no gradient here: it is only used as a numerical shift that the math cancels (log-sum-exp). */
export const ReduceMaxOp = reduceOp('reduce_max', 'ReduceMax', () => [null, null]);
/** Min, likewise without a gradient: it only sizes a quantisation scale (ops/quantized.ts). */
export const ReduceMinOp = reduceOp('reduce_min', 'ReduceMin', () => [null, null]);

function reduce(op: OpDef<ReduceAttributes>, x: Value, axes: readonly number[], keepdims: boolean): Value {
  return x.graph.apply1(op, [x, x.graph.constantInt64(axes)], { axes, keepdims: keepdims ? 1 : 0 });
}

export const reduceSum = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceSumOp, x, axes, keepdims);
export const reduceMean = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceMeanOp, x, axes, keepdims);
export const reduceMax = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceMaxOp, x, axes, keepdims);
export const reduceMin = (x: Value, axes: readonly number[], keepdims = false): Value =>
  reduce(ReduceMinOp, x, axes, keepdims);
