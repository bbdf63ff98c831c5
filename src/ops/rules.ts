import { ShapeError } from '../errors.ts';
import type { Dim, DType, Shape, TensorType } from '../graph/types.ts';
import { formatShape } from '../graph/types.ts';

/** Numpy broadcasting over possibly symbolic dims; a symbol only matches itself or 1. */
export function broadcastShapes(op: string, node: string, shapes: readonly Shape[]): Dim[] {
  const rank = Math.max(...shapes.map((shape) => shape.length));
  const result: Dim[] = [];
  for (let axis = 0; axis < rank; axis++) {
    let dim: Dim = 1;
    for (const shape of shapes) {
      const candidate = shape[shape.length - rank + axis] ?? 1;
      if (candidate === 1 || candidate === dim) continue;
      if (dim === 1) {
        dim = candidate;
        continue;
      }
      throw new ShapeError(
        op,
        node,
        `shapes ${shapes.map(formatShape).join(' and ')} do not broadcast at axis ${axis}`,
      );
    }
    result.push(dim);
  }
  return result;
}

export function requireInputs(op: string, node: string, inputs: readonly TensorType[], count: number): void {
  if (inputs.length !== count) throw new ShapeError(op, node, `takes ${count} inputs, got ${inputs.length}`);
}

export function requireDtype(
  op: string,
  node: string,
  input: TensorType,
  dtype: DType,
  what = 'input',
): void {
  if (input.dtype !== dtype) throw new ShapeError(op, node, `${what} must be ${dtype}, got ${input.dtype}`);
}

export function requireSameDtype(op: string, node: string, inputs: readonly TensorType[]): DType {
  const dtype = inputs[0]!.dtype;
  for (const input of inputs) {
    if (input.dtype !== dtype) throw new ShapeError(op, node, `inputs mix ${dtype} and ${input.dtype}`);
  }
  return dtype;
}

export function normalizeAxis(op: string, node: string, axis: number, rank: number): number {
  const normalized = axis < 0 ? axis + rank : axis;
  if (normalized < 0 || normalized >= rank)
    throw new ShapeError(op, node, `axis ${axis} out of range for rank ${rank}`);
  return normalized;
}

export function product(dims: readonly number[]): number {
  return dims.reduce((acc, dim) => acc * dim, 1);
}
