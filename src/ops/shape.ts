import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import type { Dim } from '../graph/types.ts';
import { formatShape, isStaticShape } from '../graph/types.ts';
import { normalizeAxis, product, requireDtype, requireInputs } from './rules.ts';

/** Reshape to `shape`; 0 copies the input dim, -1 is inferred. The target is kept for the shape rule. */
export const ReshapeOp: OpDef<{ shape: readonly number[] }> = {
  name: 'reshape',
  onnxType: 'Reshape',
  inferShape(inputs, { shape }, node) {
    requireInputs('reshape', node, inputs, 2);
    const input = inputs[0]!;
    const dims: Dim[] = shape.map((dim, axis) => {
      if (dim !== 0) return dim;
      const copied = input.shape[axis];
      if (copied === undefined)
        throw new ShapeError('reshape', node, `0 at axis ${axis} but input has rank ${input.shape.length}`);
      return copied;
    });
    const unknown = dims.indexOf(-1);
    const numericIn = product(input.shape.filter((d): d is number => typeof d === 'number'));
    const numericOut = product(dims.filter((d): d is number => typeof d === 'number' && d !== -1));
    const symbolsIn = input.shape.filter((d): d is string => typeof d === 'string');
    const symbolsOut = dims.filter((d): d is string => typeof d === 'string');
    const leftover = [...symbolsIn];
    for (const symbol of symbolsOut) {
      const at = leftover.indexOf(symbol);
      if (at < 0)
        throw new ShapeError(
          'reshape',
          node,
          `output dim '${symbol}' not in input ${formatShape(input.shape)}`,
        );
      leftover.splice(at, 1);
    }
    if (unknown >= 0) {
      if (numericIn % numericOut !== 0) {
        throw new ShapeError(
          'reshape',
          node,
          `cannot reshape ${formatShape(input.shape)} to ${formatShape(shape)}`,
        );
      }
      const quotient = numericIn / numericOut;
      if (leftover.length === 0) dims[unknown] = quotient;
      else if (leftover.length === 1 && quotient === 1) dims[unknown] = leftover[0]!;
      else
        throw new ShapeError(
          'reshape',
          node,
          `cannot infer -1 in ${formatShape(shape)} from ${formatShape(input.shape)}`,
        );
    } else if (numericIn !== numericOut || leftover.length > 0) {
      throw new ShapeError(
        'reshape',
        node,
        `${formatShape(input.shape)} has a different size than ${formatShape(dims)}`,
      );
    }
    return [{ shape: dims, dtype: input.dtype }];
  },
  vjp: ({ gradOutputs: [g], inputs: [x] }) => [reshapeLike(g!, x!)],
};

export const ShapeOfOp: OpDef<Record<string, never>> = {
  name: 'shape_of',
  onnxType: 'Shape',
  inferShape(inputs, _attributes, node) {
    requireInputs('shape_of', node, inputs, 1);
    return [{ shape: [inputs[0]!.shape.length], dtype: 'int64' }];
  },
};

/** Reshape with a run-time target taken from another value's shape (used by gradients of symbolic shapes). */
export const ReshapeDynamicOp: OpDef<{ like: readonly Dim[] }> = {
  name: 'reshape_like',
  onnxType: 'Reshape',
  inferShape(inputs, { like }, node) {
    requireInputs('reshape_like', node, inputs, 2);
    requireDtype('reshape_like', node, inputs[1]!, 'int64', 'target shape');
    return [{ shape: like, dtype: inputs[0]!.dtype }];
  },
  vjp: ({ gradOutputs: [g], inputs: [x] }) => [reshapeLike(g!, x!), null],
};

export const TransposeOp: OpDef<{ perm: readonly number[] }> = {
  name: 'transpose',
  onnxType: 'Transpose',
  emitAttributes: ({ perm }) => [{ name: 'perm', type: 'ints', value: perm }],
  inferShape(inputs, { perm }, node) {
    requireInputs('transpose', node, inputs, 1);
    const input = inputs[0]!;
    const sorted = [...perm].sort((a, b) => a - b);
    if (perm.length !== input.shape.length || sorted.some((axis, i) => axis !== i)) {
      throw new ShapeError(
        'transpose',
        node,
        `perm [${perm}] is not a permutation of rank ${input.shape.length}`,
      );
    }
    return [{ shape: perm.map((axis) => input.shape[axis]!), dtype: input.dtype }];
  },
  vjp: ({ gradOutputs: [g], attributes: { perm } }) => {
    const inverse = new Array<number>(perm.length);
    perm.forEach((axis, i) => {
      inverse[axis] = i;
    });
    return [transpose(g!, inverse)];
  },
};

export const ConcatOp: OpDef<{ axis: number }> = {
  name: 'concat',
  onnxType: 'Concat',
  emitAttributes: ({ axis }) => [{ name: 'axis', type: 'int', value: axis }],
  inferShape(inputs, { axis }, node) {
    if (inputs.length === 0) throw new ShapeError('concat', node, 'needs at least one input');
    const first = inputs[0]!;
    const at = normalizeAxis('concat', node, axis, first.shape.length);
    let total = 0;
    for (const input of inputs) {
      if (input.shape.length !== first.shape.length || input.dtype !== first.dtype) {
        throw new ShapeError(
          'concat',
          node,
          `inputs ${inputs.map((i) => formatShape(i.shape)).join(', ')} differ in rank or dtype`,
        );
      }
      input.shape.forEach((dim, i) => {
        if (i !== at && dim !== first.shape[i]) {
          throw new ShapeError(
            'concat',
            node,
            `inputs ${inputs.map((v) => formatShape(v.shape)).join(', ')} differ off axis ${axis}`,
          );
        }
      });
      const size = input.shape[at];
      if (typeof size !== 'number')
        throw new ShapeError('concat', node, `concat axis ${axis} must be static`);
      total += size;
    }
    const shape = [...first.shape];
    shape[at] = total;
    return [{ shape, dtype: first.dtype }];
  },
  vjp: ({ gradOutputs: [g], inputs, attributes: { axis }, needs }) => {
    const at = axis < 0 ? axis + inputs[0]!.rank : axis;
    let start = 0;
    return inputs.map((input, i) => {
      const size = input.shape[at] as number;
      const piece = needs[i] ? slice(g!, [start], [start + size], [at]) : null;
      start += size;
      return piece;
    });
  },
};

export const SliceOp: OpDef<{ starts: readonly number[]; ends: readonly number[]; axes: readonly number[] }> =
  {
    name: 'slice',
    onnxType: 'Slice',
    inferShape(inputs, { starts, ends, axes }, node) {
      const input = inputs[0]!;
      const shape = [...input.shape];
      axes.forEach((axis, i) => {
        const at = normalizeAxis('slice', node, axis, shape.length);
        const size = shape[at];
        if (typeof size !== 'number')
          throw new ShapeError('slice', node, `sliced axis ${axis} must be static`);
        const begin = Math.max(0, Math.min(size, starts[i]! < 0 ? starts[i]! + size : starts[i]!));
        const end = Math.max(0, Math.min(size, ends[i]! < 0 ? ends[i]! + size : ends[i]!));
        if (end <= begin)
          throw new ShapeError('slice', node, `empty slice [${starts[i]}, ${ends[i]}) of axis ${axis}`);
        shape[at] = end - begin;
      });
      return [{ shape, dtype: input.dtype }];
    },
    vjp: ({ gradOutputs: [g], inputs: [x], attributes: { starts, axes } }) => {
      // The gradient of a slice is the incoming gradient padded with zeros back to the input's extent.
      const rank = x!.rank;
      const pads = new Array<number>(2 * rank).fill(0);
      axes.forEach((axis, i) => {
        const at = axis < 0 ? axis + rank : axis;
        const size = x!.shape[at] as number;
        const begin = Math.max(0, Math.min(size, starts[i]! < 0 ? starts[i]! + size : starts[i]!));
        pads[at] = begin;
        pads[rank + at] = size - begin - (g!.shape[at] as number);
      });
      return [pad(g!, pads, x!.shape)];
    },
  };

export const PadOp: OpDef<{ pads: readonly number[]; outShape: readonly Dim[] }> = {
  name: 'pad',
  onnxType: 'Pad',
  inferShape: (inputs, { outShape }) => [{ shape: outShape, dtype: inputs[0]!.dtype }],
  vjp: ({ gradOutputs: [g], inputs: [x], attributes: { pads } }) => {
    const rank = x!.rank;
    const axes = [...Array(rank).keys()].filter((axis) => pads[axis] !== 0 || pads[rank + axis] !== 0);
    const starts = axes.map((axis) => pads[axis]!);
    const ends = axes.map((axis) => pads[axis]! + (x!.shape[axis] as number));
    return [axes.length === 0 ? g! : slice(g!, starts, ends, axes), null];
  },
};

/** Broadcast to `outShape` (known at build time; the run-time target comes from `target`). */
export const ExpandOp: OpDef<{ outShape: readonly Dim[] }> = {
  name: 'expand',
  onnxType: 'Expand',
  inferShape(inputs, { outShape }, node) {
    requireInputs('expand', node, inputs, 2);
    requireDtype('expand', node, inputs[1]!, 'int64', 'target shape');
    return [{ shape: outShape, dtype: inputs[0]!.dtype }];
  },
  vjp: ({ gradOutputs: [g] }) => [g!, null],
};

export const reshape = (x: Value, shape: readonly number[]): Value =>
  x.graph.apply1(ReshapeOp, [x, x.graph.constantInt64(shape)], { shape });

export const shapeOf = (x: Value): Value => x.graph.apply1(ShapeOfOp, [x], {});

/** Reshape `x` to the (possibly symbolic) shape of `like`. */
export function reshapeLike(x: Value, like: Value): Value {
  if (isStaticShape(like.shape)) return reshape(x, like.shape);
  return x.graph.apply1(ReshapeDynamicOp, [x, shapeOf(like)], { like: like.shape });
}

export const transpose = (x: Value, perm: readonly number[]): Value =>
  x.graph.apply1(TransposeOp, [x], { perm });

/** Swap the last two axes. */
export function transposeLast(x: Value): Value {
  const perm = [...Array(x.rank).keys()];
  [perm[x.rank - 2], perm[x.rank - 1]] = [perm[x.rank - 1]!, perm[x.rank - 2]!];
  return transpose(x, perm);
}

export const concat = (values: readonly Value[], axis: number): Value =>
  values[0]!.graph.apply1(ConcatOp, values, { axis });

export function slice(
  x: Value,
  starts: readonly number[],
  ends: readonly number[],
  axes: readonly number[],
): Value {
  const graph = x.graph;
  return graph.apply1(
    SliceOp,
    [x, graph.constantInt64(starts), graph.constantInt64(ends), graph.constantInt64(axes)],
    { starts, ends, axes },
  );
}

export function pad(x: Value, pads: readonly number[], outShape: readonly Dim[]): Value {
  return x.graph.apply1(PadOp, [x, x.graph.constantInt64(pads)], { pads, outShape });
}

/** Broadcast `x` to the shape of `like` (whose leading dims may be symbolic). */
export function expandLike(x: Value, like: Value): Value {
  const target = isStaticShape(like.shape) ? x.graph.constantInt64(like.shape) : shapeOf(like);
  return x.graph.apply1(ExpandOp, [x, target], { outShape: like.shape });
}

/** Broadcast `x` to `[like.dim(0), ...rest]`: the batch size of `like` followed by static dims. */
export function expandBatch(x: Value, like: Value, rest: readonly number[]): Value {
  const graph = x.graph;
  const batch = like.dim(0);
  const outShape: Dim[] = [batch, ...rest];
  const target =
    typeof batch === 'number'
      ? graph.constantInt64(outShape as number[])
      : concat([slice(shapeOf(like), [0], [1], [0]), graph.constantInt64(rest)], 0);
  return graph.apply1(ExpandOp, [x, target], { outShape });
}
