import type { Value } from '../graph/builder.ts';
import { abs, add, exp, log, mul, neg, relu, stopGradient, sub } from '../ops/elementwise.ts';
import { reduceMax, reduceSum } from '../ops/reduce.ts';
import { reshape } from '../ops/shape.ts';

/**
 * Softmax cross-entropy with soft targets: loss = −Σᵢ wᵢ Σₖ tᵢₖ · log softmax(zᵢ)ₖ.
 * Label smoothing and class weights are folded into the fed tensors (targets [B, K], sampleWeights [B],
 * which also carry 1/batch and gradient accumulation), so one graph serves every setting. The max
 * shift has no gradient: log-softmax does not depend on it.
 */
export function softmaxCrossEntropy(logits: Value, targets: Value, sampleWeights: Value): Value {
  const shifted = sub(logits, stopGradient(reduceMax(logits, [-1], true)));
  const logSumExp = log(reduceSum(exp(shifted), [-1], true));
  const logProbs = sub(shifted, logSumExp);
  const perSample = neg(reduceSum(mul(targets, logProbs), [-1]));
  return reshape(reduceSum(mul(perSample, sampleWeights), [0], true), [1]);
}

/**
 * Sigmoid binary cross-entropy for multi-label tasks, in the stable form
 *   ℓ = pos·t·softplus(−z) + (1 − t)·softplus(z),  softplus(z) = max(z, 0) + log(1 + e^(−|z|)),
 * with per-label positive weights `positiveWeights` [K] (1 = unweighted), summed over labels and
 * weighted per sample like softmaxCrossEntropy.
 */
export function sigmoidBinaryCrossEntropy(
  logits: Value,
  targets: Value,
  sampleWeights: Value,
  positiveWeights: Value,
): Value {
  const graph = logits.graph;
  const one = graph.constantFloat(1);
  const softplusTail = log(add(one, exp(neg(abs(logits)))));
  const softplusPos = add(relu(logits), softplusTail); // softplus(z)
  const softplusNeg = add(relu(neg(logits)), softplusTail); // softplus(−z)
  const positive = mul(mul(positiveWeights, targets), softplusNeg);
  const negative = mul(sub(one, targets), softplusPos);
  const perSample = reduceSum(add(positive, negative), [-1]);
  return reshape(reduceSum(mul(perSample, sampleWeights), [0], true), [1]);
}
