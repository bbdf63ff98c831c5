/**
 * Quantisation of frozen backbone weights to int8 (`--backbone-precision int8`): symmetric, one scale per
 * output channel, derived from the float weights whenever a graph is built, so that an adapter never holds
 * them and works with either precision.
 */
import type { HostTensor } from '../tensor.ts';

export interface Int8Weight {
  /** [in, out], the layout of the float weight it replaces (x·W). */
  readonly shape: readonly [number, number];
  readonly data: Int8Array;
  /** [out]: W[k, n] ≈ data[k, n]·scale[n]. */
  readonly scale: Float32Array;
}

/**
 * scale[n] = max_k |W[k, n]| / 127 and q = round(W / scale) in [−127, 127] (−128 is never used, so the
 * range is symmetric). An all-zero column gets scale 1 and zeros. Each quantised value is within scale/2 of
 * the float one.
 */
export function quantizePerOutputChannel(weight: HostTensor): Int8Weight {
  if (weight.shape.length !== 2)
    throw new RangeError(`int8 quantisation needs a 2-D weight, got [${weight.shape.join(', ')}]`);
  const [rows, cols] = weight.shape as [number, number];
  const w = weight.data;
  const scale = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const magnitude = Math.abs(w[row + c]!);
      if (magnitude > scale[c]!) scale[c] = magnitude;
    }
  }
  for (let c = 0; c < cols; c++) scale[c] = scale[c]! > 0 ? scale[c]! / 127 : 1;
  const data = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const q = Math.round(w[row + c]! / scale[c]!);
      data[row + c] = q > 127 ? 127 : q < -127 ? -127 : q;
    }
  }
  return { shape: [rows, cols], data, scale };
}
