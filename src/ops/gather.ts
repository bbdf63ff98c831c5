import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { formatShape } from '../graph/types.ts';
import { normalizeAxis, requireDtype, requireInputs } from './rules.ts';

/**
 * ONNX Gather: picks slices of `data` along `axis` by int64 `indices`; the output's `axis` is replaced by
 * the indices' shape (data [T, r, in] · indices [batch] → [batch, r, in]). Used by multi-task serving to
 * give each batch row its own adapter's factors. No VJP: serving graphs are never differentiated.
 */
export const GatherOp: OpDef<{ axis: number }> = {
  name: 'gather',
  onnxType: 'Gather',
  emitAttributes: ({ axis }) => [{ name: 'axis', type: 'int', value: axis }],
  inferShape(inputs, { axis }, node) {
    requireInputs('gather', node, inputs, 2);
    const [data, indices] = [inputs[0]!, inputs[1]!];
    requireDtype('gather', node, indices, 'int64', 'indices');
    if (data.shape.length === 0)
      throw new ShapeError('gather', node, `data must have rank ≥ 1, got ${formatShape(data.shape)}`);
    const at = normalizeAxis('gather', node, axis, data.shape.length);
    return [
      {
        shape: [...data.shape.slice(0, at), ...indices.shape, ...data.shape.slice(at + 1)],
        dtype: data.dtype,
      },
    ];
  },
};

export const gather = (data: Value, indices: Value, axis = 0): Value =>
  data.graph.apply1(GatherOp, [data, indices], { axis });
