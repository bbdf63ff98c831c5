/**
 * Every metric of a prepared evaluation, optionally over weighted samples (bootstrap multiplicities), so
 * that the point estimate and each resample go through the same code.
 */
import { rankingAreas } from './binary-curve.ts';
import { binnedReliability, expectedCalibrationErrorFromBins, type ReliabilityBin } from './calibration.ts';
import {
  accuracyFromConfusion,
  balancedAccuracyFromConfusion,
  type ClassRates,
  classRates,
  mean,
  meanDefined,
} from './classification.ts';
import { classCounts, confusionMatrix } from './confusion.ts';
import type { PreparedEvaluation } from './prepare.ts';

// a type alias rather than an interface so that it is a Record<string, number | null | undefined>
export type EvalMetrics = {
  /** Fraction of samples whose predicted class is right; multi-label: every label right (subset accuracy). */
  accuracy: number;
  /**
   * Mean recall over the classes present in the labels (sklearn `balanced_accuracy_score`); multi-label: the
   * mean over labels of that per-label binary balanced accuracy.
   */
  balancedAccuracy: number;
  /** Macro averages over all classes (labels=range(k)); a class with a zero denominator counts as 0. */
  macroSensitivity: number;
  macroSpecificity: number;
  macroPrecision: number;
  macroF1: number;
  /**
   * Binary: ROC-AUC of the positive class. Multi-class: one-vs-rest macro. Multi-label: macro over labels.
   * Classes without both positives and negatives are left out; null when none is left.
   */
  rocAuc: number | null;
  /** Average precision, the same way; classes without positives are left out. */
  prAuc: number | null;
  /** Expected calibration error over top-label confidence (multi-label: every (sample, label) decision). */
  ece: number;
  /** Binary only: the positive class's sensitivity, specificity, precision and F1. */
  sensitivity?: number;
  specificity?: number;
  precision?: number;
  f1?: number;
  /** Multi-label only: fraction of (sample, label) decisions that are right (1 − Hamming loss). */
  labelAccuracy?: number;
  /**
   * Ordinal tasks only (labels are grades 0…k−1): Cohen's kappa with quadratic weights (sklearn
   * `cohen_kappa_score(weights='quadratic')`); null when chance agreement leaves nothing to compare.
   */
  quadraticKappa?: number | null;
  /** Ordinal tasks only: mean |predicted grade − true grade| (sklearn `mean_absolute_error` on the grades). */
  meanGradeError?: number;
};

export interface ClassMetrics extends ClassRates {
  /** One-vs-rest ROC-AUC; null when the class has no positives or no negatives. */
  rocAuc: number | null;
  /** Average precision; null when the class has no positives. */
  prAuc: number | null;
}

export interface MetricsResult {
  metrics: EvalMetrics;
  perClass: ClassMetrics[];
  /** k × k for binary and multi-class; per label [[TN, FP], [FN, TP]] for multi-label. */
  confusion: number[][] | number[][][];
  calibration: ReliabilityBin[];
}

export interface MetricsOptions {
  /** Per-sample weights (bootstrap multiplicities). */
  weights?: ArrayLike<number>;
  /** The classes are ordered grades: add quadratic weighted kappa and mean grade error. */
  ordinal?: boolean;
}

/** Quadratic weighted kappa and mean absolute grade error from a k × k confusion matrix (rows true). */
export function ordinalAgreement(matrix: readonly (readonly number[])[]): {
  quadraticKappa: number | null;
  meanGradeError: number;
} {
  const k = matrix.length;
  const rows = matrix.map((row) => row.reduce((a, b) => a + b, 0));
  const cols = matrix[0]!.map((_, j) => matrix.reduce((sum, row) => sum + row[j]!, 0));
  const n = rows.reduce((a, b) => a + b, 0);
  let observed = 0;
  let expected = 0;
  let absolute = 0;
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      const weight = (i - j) ** 2;
      observed += weight * matrix[i]![j]!;
      expected += n > 0 ? (weight * rows[i]! * cols[j]!) / n : 0;
      absolute += Math.abs(i - j) * matrix[i]![j]!;
    }
  }
  return {
    quadraticKappa: expected > 0 ? 1 - observed / expected : null,
    meanGradeError: n > 0 ? absolute / n : 0,
  };
}

export function computeMetrics(prepared: PreparedEvaluation, options: MetricsOptions = {}): MetricsResult {
  const { weights } = options;
  const k = prepared.numClasses;
  const ranking = prepared.ranked.map((ranked) => {
    const areas = rankingAreas(ranked, weights);
    return { rocAuc: areas.rocAuc, prAuc: areas.averagePrecision };
  });
  const calibration = binnedReliability(
    prepared.calibrationBin,
    prepared.confidence,
    prepared.correct,
    prepared.calibrationBins,
    weights,
    prepared.itemsPerSample,
  );

  let confusion: number[][] | number[][][];
  let rates: ClassRates[];
  let accuracy: number;
  let balancedAccuracy: number;
  let labelAccuracy: number | undefined;
  if (prepared.labels !== null && prepared.predictedLabels !== null) {
    const matrix = confusionMatrix(prepared.labels, prepared.predictedLabels, k, weights);
    confusion = matrix;
    rates = matrix.map((_, c) => classRates(classCounts(matrix, c)));
    accuracy = accuracyFromConfusion(matrix);
    balancedAccuracy = balancedAccuracyFromConfusion(matrix);
  } else {
    const matrices = prepared.truth.map((t, c) => confusionMatrix(t, prepared.predicted[c], 2, weights));
    confusion = matrices;
    rates = matrices.map((m) => classRates(classCounts(m, 1)));
    balancedAccuracy = mean(matrices.map(balancedAccuracyFromConfusion));
    labelAccuracy = mean(matrices.map(accuracyFromConfusion));
    accuracy = subsetAccuracy(prepared, weights);
  }

  const metrics: EvalMetrics = {
    accuracy,
    balancedAccuracy,
    macroSensitivity: mean(rates.map((r) => r.sensitivity)),
    macroSpecificity: mean(rates.map((r) => r.specificity)),
    macroPrecision: mean(rates.map((r) => r.precision)),
    macroF1: mean(rates.map((r) => r.f1)),
    rocAuc: prepared.task === 'binary' ? ranking[1].rocAuc : meanDefined(ranking.map((r) => r.rocAuc)),
    prAuc: prepared.task === 'binary' ? ranking[1].prAuc : meanDefined(ranking.map((r) => r.prAuc)),
    ece: expectedCalibrationErrorFromBins(calibration),
  };
  if (prepared.task === 'binary') {
    metrics.sensitivity = rates[1].sensitivity;
    metrics.specificity = rates[1].specificity;
    metrics.precision = rates[1].precision;
    metrics.f1 = rates[1].f1;
  }
  if (labelAccuracy !== undefined) metrics.labelAccuracy = labelAccuracy;
  if (options.ordinal && prepared.labels !== null)
    Object.assign(metrics, ordinalAgreement(confusion as number[][]));
  return {
    metrics,
    perClass: rates.map((r, c) => ({ ...r, ...ranking[c] })),
    confusion,
    calibration,
  };
}

function subsetAccuracy(prepared: PreparedEvaluation, weights: ArrayLike<number> | undefined): number {
  const { truth, predicted } = prepared;
  let right = 0;
  let total = 0;
  for (let i = 0; i < prepared.n; i++) {
    const w = weights === undefined ? 1 : weights[i];
    total += w;
    let allRight = true;
    for (let c = 0; c < truth.length && allRight; c++) allRight = truth[c][i] === predicted[c][i];
    if (allRight) right += w;
  }
  return total > 0 ? right / total : 0;
}
