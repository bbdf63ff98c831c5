import type { DataItem, TaskType } from '../data/dataset.ts';

/**
 * Builds the fed loss tensors for a micro-batch of `rows` (the graph's static batch): soft targets with
 * label smoothing (softmax) or 0/1 labels (sigmoid), and per-sample weights that give PyTorch's weighted
 * mean (Σ wᵧ·ℓ / Σ wᵧ), divided by the accumulation steps. Rows past the real items are padding: weight 0.
 */
export function lossTensors(
  items: readonly DataItem[],
  rows: number,
  classes: number,
  taskType: TaskType,
  options: { labelSmoothing: number; classWeights?: readonly number[]; gradAccum: number },
): { targets: Float32Array; sampleWeights: Float32Array } {
  const targets = new Float32Array(rows * classes);
  const sampleWeights = new Float32Array(rows);
  let total = 0;
  items.forEach((item, row) => {
    if (taskType === 'multilabel') {
      for (const label of item.labels) targets[row * classes + label] = 1;
      sampleWeights[row] = 1;
    } else {
      const label = item.labels[0]!;
      const smoothing = options.labelSmoothing;
      for (let c = 0; c < classes; c++) targets[row * classes + c] = smoothing / classes;
      targets[row * classes + label]! += 1 - smoothing;
      sampleWeights[row] = options.classWeights?.[label] ?? 1;
    }
    total += sampleWeights[row]!;
  });
  if (total > 0) for (let row = 0; row < rows; row++) sampleWeights[row]! /= total * options.gradAccum;
  return { targets, sampleWeights };
}

/** 'balanced' class weights as in scikit-learn: n / (classes · count(class)). */
export function balancedClassWeights(items: readonly DataItem[], classes: number): number[] {
  const counts = new Array<number>(classes).fill(0);
  for (const item of items) counts[item.labels[0]!]++;
  return counts.map((count) => (count > 0 ? items.length / (classes * count) : 0));
}
