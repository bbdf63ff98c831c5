/**
 * Logits to probabilities, the one implementation `predict`, `eval`, serving and the trainer's validation
 * use: softmax over a task's classes (single-label), an independent sigmoid per label (multi-label).
 * Computed in float64 from float32 logits.
 */

/** Softmax of `logits` (max subtracted first, so large logits do not overflow). */
export function softmax(logits: ArrayLike<number>): number[] {
  let max = Number.NEGATIVE_INFINITY;
  for (let c = 0; c < logits.length; c++) max = Math.max(max, logits[c]!);
  const exps = new Array<number>(logits.length);
  let total = 0;
  for (let c = 0; c < logits.length; c++) {
    exps[c] = Math.exp(logits[c]! - max);
    total += exps[c]!;
  }
  return exps.map((value) => value / total);
}

/** log Σ exp(logits), stably (for cross-entropy: −log softmax(z)ᵢ = logSumExp(z) − zᵢ). */
export function logSumExp(logits: ArrayLike<number>): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let c = 0; c < logits.length; c++) max = Math.max(max, logits[c]!);
  let total = 0;
  for (let c = 0; c < logits.length; c++) total += Math.exp(logits[c]! - max);
  return max + Math.log(total);
}

export function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

/** One sigmoid per label. */
export function sigmoids(logits: ArrayLike<number>): number[] {
  return Array.from(logits, sigmoid);
}
