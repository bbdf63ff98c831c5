/** Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_ (norm_type 2). */
import { MeloError } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';

/**
 * Returns the L2 norm over all gradients together (summed in float64) before clipping, and scales every
 * gradient in place by maxNorm / (norm + 1e-6) when that factor is below 1. maxNorm 0 turns clipping off
 * (the norm is still returned, for logging). A non-finite norm leaves the gradients untouched (torch would
 * turn them into NaN): the caller should skip that update.
 */
export function clipGradNorm(grads: Map<string, HostTensor>, maxNorm: number): number {
  if (!(Number.isFinite(maxNorm) && maxNorm >= 0)) {
    throw new MeloError(
      'USAGE',
      `gradient clipping: maxNorm must be a finite number ≥ 0 (0 = off), got ${maxNorm}`,
    );
  }
  let sumOfSquares = 0;
  for (const grad of grads.values()) {
    const g = grad.data;
    for (let i = 0; i < g.length; i++) sumOfSquares += g[i]! * g[i]!;
  }
  const norm = Math.sqrt(sumOfSquares);
  if (maxNorm === 0 || !Number.isFinite(norm)) return norm;
  const coefficient = maxNorm / (norm + 1e-6);
  if (coefficient < 1) {
    for (const grad of grads.values()) {
      const g = grad.data;
      for (let i = 0; i < g.length; i++) g[i] = g[i]! * coefficient;
    }
  }
  return norm;
}
