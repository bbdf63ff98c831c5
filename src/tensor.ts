/** A dense float32 tensor held in JS memory, row-major. The common currency between loaders and graphs. */
export interface HostTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export function numel(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) count *= dim;
  return count;
}

export function hostTensor(shape: readonly number[], data?: Float32Array): HostTensor {
  const size = numel(shape);
  if (data !== undefined && data.length !== size) {
    throw new RangeError(`tensor data has ${data.length} values, shape [${shape.join(', ')}] needs ${size}`);
  }
  return { shape: [...shape], data: data ?? new Float32Array(size) };
}
