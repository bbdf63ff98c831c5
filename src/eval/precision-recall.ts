/**
 * Precision–recall, matching scikit-learn's `precision_recall_curve` and `average_precision_score`
 * (the step-function sum over distinct thresholds, no interpolation).
 */
import { binaryCurveCounts, rankingAreas, rankLabels } from './binary-curve.ts';

export interface PrecisionRecallCurve {
  /** Per threshold in increasing threshold order, then a final 1 (as sklearn). */
  precision: number[];
  /** Decreasing, then a final 0. All 1 before that when there are no positives (as sklearn). */
  recall: number[];
  /** The distinct scores, increasing; one fewer than precision and recall. */
  thresholds: number[];
}

export function precisionRecallCurve(
  yTrue: ArrayLike<number>,
  scores: ArrayLike<number>,
): PrecisionRecallCurve {
  const { fps, tps, thresholds } = binaryCurveCounts(rankLabels(yTrue, scores, 'precisionRecallCurve'));
  const positives = tps.length > 0 ? tps[tps.length - 1] : 0;
  const precision: number[] = [];
  const recall: number[] = [];
  for (let j = tps.length - 1; j >= 0; j--) {
    const called = tps[j] + fps[j];
    precision.push(called > 0 ? tps[j] / called : 0);
    recall.push(positives > 0 ? tps[j] / positives : 1);
  }
  precision.push(1);
  recall.push(0);
  return { precision, recall, thresholds: Array.from(thresholds).reverse() };
}

/**
 * Average precision (area under the precision–recall step curve): sum over thresholds of
 * (recall gained) × precision. Null when there are no positives, where it means nothing (scikit-learn
 * returns 0 with a warning there). `weights` count a sample that many times.
 */
export function averagePrecision(
  yTrue: ArrayLike<number>,
  scores: ArrayLike<number>,
  options: { weights?: ArrayLike<number> } = {},
): number | null {
  return rankingAreas(rankLabels(yTrue, scores, 'averagePrecision'), options.weights).averagePrecision;
}
