/**
 * Threshold metrics from confusion counts. A ratio whose denominator is zero is 0, which is scikit-learn's
 * default `zero_division` behaviour ("warn" acts as 0), so e.g. the sensitivity of a class with no samples
 * is 0 and still counts in a macro average over all classes.
 */
import { type BinaryCounts, classCounts } from './confusion.ts';

export interface ClassRates {
  /** Recall, TP / (TP + FN). */
  sensitivity: number;
  /** TN / (TN + FP). */
  specificity: number;
  /** Positive predictive value, TP / (TP + FP). */
  precision: number;
  /** 2 TP / (2 TP + FP + FN), the harmonic mean of precision and sensitivity. */
  f1: number;
  /** Samples whose true class this is, TP + FN. */
  support: number;
}

function ratio(numerator: number, denominator: number): number {
  return denominator > 0 ? numerator / denominator : 0;
}

export function classRates({ tp, fp, fn, tn }: BinaryCounts): ClassRates {
  return {
    sensitivity: ratio(tp, tp + fn),
    specificity: ratio(tn, tn + fp),
    precision: ratio(tp, tp + fp),
    f1: ratio(2 * tp, 2 * tp + fp + fn),
    support: tp + fn,
  };
}

/** Rates of every class of a k × k confusion matrix, one-vs-rest. */
export function perClassRates(matrix: readonly (readonly number[])[]): ClassRates[] {
  return matrix.map((_, c) => classRates(classCounts(matrix, c)));
}

/** Fraction of samples on the diagonal; 0 for an empty matrix. */
export function accuracyFromConfusion(matrix: readonly (readonly number[])[]): number {
  let correct = 0;
  let total = 0;
  matrix.forEach((row, i) => {
    correct += row[i];
    for (const v of row) total += v;
  });
  return ratio(correct, total);
}

/**
 * Mean recall over the classes that occur in the true labels, which is what scikit-learn's
 * `balanced_accuracy_score` does (a class that is only predicted does not count). 0 for an empty matrix.
 */
export function balancedAccuracyFromConfusion(matrix: readonly (readonly number[])[]): number {
  let sum = 0;
  let present = 0;
  matrix.forEach((row, i) => {
    let support = 0;
    for (const v of row) support += v;
    if (support > 0) {
      sum += row[i] / support;
      present++;
    }
  });
  return ratio(sum, present);
}

export function mean(values: readonly number[]): number {
  let sum = 0;
  for (const v of values) sum += v;
  return values.length > 0 ? sum / values.length : Number.NaN;
}

/** Mean of the defined values; null when none is defined. */
export function meanDefined(values: readonly (number | null)[]): number | null {
  const defined = values.filter((v): v is number => v !== null && !Number.isNaN(v));
  return defined.length > 0 ? mean(defined) : null;
}
