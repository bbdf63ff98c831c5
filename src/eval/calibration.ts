/**
 * Calibration: reliability-diagram bins and expected calibration error (Guo et al. 2017), over top-label
 * confidence. Bin m of M covers (m/M, (m+1)/M]; the first also takes confidence 0. Edges are m/M computed
 * by division (not m·(1/M)) so that a confidence exactly on an edge, like 0.4 with 15 bins, lands in the bin
 * below it as the definition says.
 */
import { MeloError } from '../errors.ts';

export const DEFAULT_CALIBRATION_BINS = 15;

export interface ReliabilityBin {
  lower: number;
  upper: number;
  /** Samples (or total weight) in the bin. */
  count: number;
  /** Mean confidence in the bin; null when it is empty. */
  meanConfidence: number | null;
  /** Fraction correct in the bin; null when it is empty. */
  accuracy: number | null;
}

export interface CalibrationOptions {
  /** Number of equal-width bins on [0, 1]; 15 unless set. */
  bins?: number;
  /** Per-item weights (bootstrap multiplicities). */
  weights?: ArrayLike<number>;
}

export function binIndex(confidence: number, bins: number): number {
  let m = Math.min(bins - 1, Math.max(0, Math.ceil(confidence * bins) - 1));
  // the product can round across an edge; settle against the exact edges
  while (m > 0 && confidence <= m / bins) m--;
  while (m < bins - 1 && confidence > (m + 1) / bins) m++;
  return m;
}

function checkBins(bins: number): void {
  if (!Number.isInteger(bins) || bins < 1 || bins > 65535) {
    throw new MeloError('BAD_INPUT', `calibration: bins must be an integer in 1..65535, got ${bins}`);
  }
}

/** The bin of every confidence; computed once per evaluation, since resamples only re-weight items. */
export function assignBins(confidence: ArrayLike<number>, bins = DEFAULT_CALIBRATION_BINS): Uint16Array {
  checkBins(bins);
  const assignment = new Uint16Array(confidence.length);
  for (let i = 0; i < confidence.length; i++) {
    const c = confidence[i];
    if (!(c >= 0 && c <= 1)) {
      throw new MeloError('BAD_INPUT', `calibration: confidence ${i} is ${c}, expected a number in [0, 1]`);
    }
    assignment[i] = binIndex(c, bins);
  }
  return assignment;
}

/**
 * Bins from precomputed assignments. Item j has weight weights[floor(j / itemsPerWeight)], so that a
 * multi-label sample's weight covers each of its labels.
 */
export function binnedReliability(
  assignment: ArrayLike<number>,
  confidence: ArrayLike<number>,
  correct: ArrayLike<number>,
  bins: number,
  weights?: ArrayLike<number>,
  itemsPerWeight = 1,
): ReliabilityBin[] {
  const count = new Float64Array(bins);
  const confidenceSum = new Float64Array(bins);
  const correctSum = new Float64Array(bins);
  const groups = Math.ceil(assignment.length / itemsPerWeight);
  for (let g = 0; g < groups; g++) {
    const w = weights === undefined ? 1 : weights[g];
    if (w === 0) continue;
    const end = Math.min(assignment.length, (g + 1) * itemsPerWeight);
    for (let j = g * itemsPerWeight; j < end; j++) {
      const m = assignment[j];
      count[m] += w;
      confidenceSum[m] += w * confidence[j];
      correctSum[m] += w * correct[j];
    }
  }
  return Array.from({ length: bins }, (_, m) => ({
    lower: m / bins,
    upper: (m + 1) / bins,
    count: count[m],
    meanConfidence: count[m] > 0 ? confidenceSum[m] / count[m] : null,
    accuracy: count[m] > 0 ? correctSum[m] / count[m] : null,
  }));
}

/** `confidence` in [0, 1] per item; `correct` 1 when the item's predicted label was right, else 0. */
export function reliabilityBins(
  confidence: ArrayLike<number>,
  correct: ArrayLike<number>,
  options: CalibrationOptions = {},
): ReliabilityBin[] {
  const bins = options.bins ?? DEFAULT_CALIBRATION_BINS;
  if (confidence.length !== correct.length) {
    throw new MeloError(
      'BAD_INPUT',
      `calibration: ${confidence.length} confidences but ${correct.length} outcomes`,
    );
  }
  return binnedReliability(assignBins(confidence, bins), confidence, correct, bins, options.weights);
}

/** Σ_bins (bin count / total) · |accuracy − mean confidence|; NaN when there is nothing to measure. */
export function expectedCalibrationErrorFromBins(bins: readonly ReliabilityBin[]): number {
  let total = 0;
  let sum = 0;
  for (const bin of bins) {
    total += bin.count;
    if (bin.count > 0) sum += bin.count * Math.abs((bin.accuracy as number) - (bin.meanConfidence as number));
  }
  return total > 0 ? sum / total : Number.NaN;
}

export function expectedCalibrationError(
  confidence: ArrayLike<number>,
  correct: ArrayLike<number>,
  options: CalibrationOptions = {},
): number {
  return expectedCalibrationErrorFromBins(reliabilityBins(confidence, correct, options));
}
