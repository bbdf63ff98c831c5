/**
 * Receiver operating characteristic, matching scikit-learn's `roc_curve` and binary `roc_auc_score`:
 * ties are one threshold and the area is the trapezoid rule over the distinct thresholds, so a tie
 * between a positive and a negative counts one half.
 */
import { binaryCurveCounts, rankingAreas, rankLabels } from './binary-curve.ts';

export interface RocCurve {
  /** False positive rate per threshold; all NaN when there are no negatives (as sklearn). */
  fpr: number[];
  /** True positive rate per threshold; all NaN when there are no positives (as sklearn). */
  tpr: number[];
  /**
   * Decreasing; the first is +Infinity (the "nothing is positive" point at (0, 0)), as in scikit-learn
   * >= 1.3 (1.2 and older put max(score) + 1 there).
   */
  thresholds: number[];
}

export interface RocCurveOptions {
  /**
   * Drop points that lie on a straight segment between their neighbours (sklearn's default, true). The area is
   * the same either way; false keeps one point per distinct score.
   */
  dropIntermediate?: boolean;
}

export function rocCurve(
  yTrue: ArrayLike<number>,
  scores: ArrayLike<number>,
  options: RocCurveOptions = {},
): RocCurve {
  const { fps, tps, thresholds } = binaryCurveCounts(rankLabels(yTrue, scores, 'rocCurve'));
  let kept = Array.from(fps.keys());
  if ((options.dropIntermediate ?? true) && fps.length > 2) {
    // keep a point only where the second difference of fps or tps is non-zero (a corner)
    kept = kept.filter(
      (j) =>
        j === 0 ||
        j === fps.length - 1 ||
        fps[j + 1] - 2 * fps[j] + fps[j - 1] !== 0 ||
        tps[j + 1] - 2 * tps[j] + tps[j - 1] !== 0,
    );
  }
  const negatives = fps.length > 0 ? fps[fps.length - 1] : 0;
  const positives = tps.length > 0 ? tps[tps.length - 1] : 0;
  const fpr = [0, ...kept.map((j) => fps[j])].map((v) => (negatives > 0 ? v / negatives : Number.NaN));
  const tpr = [0, ...kept.map((j) => tps[j])].map((v) => (positives > 0 ? v / positives : Number.NaN));
  return { fpr, tpr, thresholds: [Number.POSITIVE_INFINITY, ...kept.map((j) => thresholds[j])] };
}

/**
 * Area under the ROC curve for 0/1 labels, or null when it is undefined (no positives or no negatives;
 * scikit-learn raises there). `weights` count a sample that many times.
 */
export function rocAuc(
  yTrue: ArrayLike<number>,
  scores: ArrayLike<number>,
  options: { weights?: ArrayLike<number> } = {},
): number | null {
  return rankingAreas(rankLabels(yTrue, scores, 'rocAuc'), options.weights).rocAuc;
}
