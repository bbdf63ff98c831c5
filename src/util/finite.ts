/**
 * Non-finite numbers from files: a NaN in one head bias made `melo predict` print null probabilities and a
 * server answer 500 to every request, and an all-NaN dataset trained to a NaN adapter. Every loader of
 * weights checks them here, once, and names the tensor.
 */
import { MeloError, type MeloErrorCode } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';

/**
 * Largest magnitude accepted in a weight. Trained ViT weights are of order one (the largest in the shipped
 * tiny backbone is 1.09, in the test fixtures 1.24); a value a million times larger comes from corruption
 * or a crafted file, and would overflow float32 activations within a layer or two.
 */
export const MAX_ABS_WEIGHT = 1e6;

/** Index of the first element that is NaN, ±Infinity or beyond ±`maxAbs`; -1 when there is none. */
export function firstOutOfRange(data: ArrayLike<number>, maxAbs = Number.MAX_VALUE): number {
  for (let i = 0; i < data.length; i++) {
    const value = data[i]!;
    // One pair of comparisons: NaN fails both, ±Infinity fails one.
    if (!(value <= maxAbs && value >= -maxAbs)) return i;
  }
  return -1;
}

/** Index of the first NaN or ±Infinity; -1 when every element is finite. */
export function firstNonFinite(data: ArrayLike<number>): number {
  return firstOutOfRange(data, Number.MAX_VALUE);
}

/**
 * Throws one line naming the first offending tensor (and how many others) when a tensor holds NaN,
 * ±Infinity or a magnitude beyond `maxAbs`. `describe` turns a tensor's name into the name the file uses.
 */
export function assertFiniteTensors(
  tensors: Iterable<readonly [string, HostTensor]>,
  options: { code: MeloErrorCode; file: string; maxAbs?: number; describe?: (name: string) => string },
): void {
  const maxAbs = options.maxAbs ?? MAX_ABS_WEIGHT;
  let first: { name: string; index: number; value: number } | undefined;
  let others = 0;
  for (const [name, tensor] of tensors) {
    const index = firstOutOfRange(tensor.data, maxAbs);
    if (index < 0) continue;
    if (first === undefined) first = { name, index, value: tensor.data[index]! };
    else others++;
  }
  if (first === undefined) return;
  const what = Number.isFinite(first.value)
    ? `value ${first.value.toExponential(3)} beyond ±${maxAbs.toExponential(0)}`
    : String(first.value);
  const name = options.describe?.(first.name) ?? first.name;
  throw new MeloError(
    options.code,
    `tensor '${name}' holds ${what} (element ${first.index})${others > 0 ? `; ${others} more tensor${others === 1 ? '' : 's'} too` : ''}: refusing non-finite or absurd weights`,
    { file: options.file },
  );
}
