/**
 * The ranking behind ROC and precision–recall, computed the way scikit-learn's `_binary_clf_curve` does:
 * samples sorted by decreasing score, one point per distinct score (ties are one threshold, never split),
 * counts taken after the whole tie group. The sort is done once (`rankLabels`); bootstrap resamples then only
 * re-weight the ranked samples, in one pass.
 */
import { MeloError } from '../errors.ts';

export interface RankedLabels {
  /** Sample indices by decreasing score (order inside a tie group is irrelevant to every result). */
  order: Uint32Array;
  /** 1 where the sample at that rank is positive. */
  positive: Uint8Array;
  /** 1 where the sample at that rank is the last of its tie group (the next score differs). */
  groupEnd: Uint8Array;
  /** Scores in rank order. */
  sortedScores: Float64Array;
}

export interface BinaryCurveCounts {
  /** False positives at each threshold (scores >= threshold are called positive). */
  fps: Float64Array;
  /** True positives at each threshold. */
  tps: Float64Array;
  /** The distinct scores, decreasing. */
  thresholds: Float64Array;
}

export interface RankingAreas {
  /** Area under the ROC curve (trapezoids); null without both positives and negatives. */
  rocAuc: number | null;
  /** Average precision (step sum); null without positives. */
  averagePrecision: number | null;
}

/** Labels must be 0/1 and scores finite, with one of each per sample. */
export function checkBinaryRanking(yTrue: ArrayLike<number>, scores: ArrayLike<number>, what: string): void {
  if (yTrue.length !== scores.length) {
    throw new MeloError('BAD_INPUT', `${what}: ${yTrue.length} labels but ${scores.length} scores`);
  }
  for (let i = 0; i < yTrue.length; i++) {
    if (yTrue[i] !== 0 && yTrue[i] !== 1) {
      throw new MeloError('BAD_INPUT', `${what}: label ${i} is ${yTrue[i]}, expected 0 or 1`);
    }
    if (!Number.isFinite(scores[i])) {
      throw new MeloError('BAD_INPUT', `${what}: score ${i} is ${scores[i]}, expected a finite number`);
    }
  }
}

/** Sorts once; `yTrue` is 0/1 per sample, `scores` finite. */
export function rankLabels(
  yTrue: ArrayLike<number>,
  scores: ArrayLike<number>,
  what = 'ranking',
): RankedLabels {
  checkBinaryRanking(yTrue, scores, what);
  const n = scores.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => scores[b] - scores[a]);
  const positive = new Uint8Array(n);
  const groupEnd = new Uint8Array(n);
  const sortedScores = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    positive[r] = yTrue[order[r]];
    sortedScores[r] = scores[order[r]];
  }
  for (let r = 0; r < n; r++) groupEnd[r] = r === n - 1 || sortedScores[r + 1] !== sortedScores[r] ? 1 : 0;
  return { order, positive, groupEnd, sortedScores };
}

/**
 * Cumulative counts per distinct threshold. Samples with weight 0 take no part (as sklearn drops them), so
 * their scores are not thresholds.
 */
export function binaryCurveCounts(ranked: RankedLabels, weights?: ArrayLike<number>): BinaryCurveCounts {
  const { order, positive, sortedScores } = ranked;
  const fps: number[] = [];
  const tps: number[] = [];
  const thresholds: number[] = [];
  let tp = 0;
  let fp = 0;
  let pending = false;
  for (let r = 0; r < order.length; r++) {
    const w = weights === undefined ? 1 : weights[order[r]];
    if (w !== 0) {
      if (positive[r] === 1) tp += w;
      else fp += w;
      pending = true;
    }
    if (pending && ranked.groupEnd[r] === 1) {
      fps.push(fp);
      tps.push(tp);
      thresholds.push(sortedScores[r]);
      pending = false;
    }
  }
  return {
    fps: Float64Array.from(fps),
    tps: Float64Array.from(tps),
    thresholds: Float64Array.from(thresholds),
  };
}

/**
 * ROC-AUC and average precision in one pass over the ranked samples, from (weighted) counts:
 * AUC = Σ_groups ΔFP · (TP + TP_prev) / 2 / (P · N), AP = Σ_groups ΔTP / P · TP / (TP + FP).
 */
export function rankingAreas(ranked: RankedLabels, weights?: ArrayLike<number>): RankingAreas {
  const { order, positive, groupEnd } = ranked;
  let tp = 0;
  let fp = 0;
  let previousTp = 0;
  let previousFp = 0;
  let twiceArea = 0;
  let precisionSum = 0;
  for (let r = 0; r < order.length; r++) {
    const w = weights === undefined ? 1 : weights[order[r]];
    if (positive[r] === 1) tp += w;
    else fp += w;
    if (groupEnd[r] === 1) {
      twiceArea += (fp - previousFp) * (tp + previousTp);
      if (tp > previousTp) precisionSum += ((tp - previousTp) * tp) / (tp + fp);
      previousTp = tp;
      previousFp = fp;
    }
  }
  return {
    rocAuc: tp > 0 && fp > 0 ? twiceArea / (2 * tp * fp) : null,
    averagePrecision: tp > 0 ? precisionSum / tp : null,
  };
}
