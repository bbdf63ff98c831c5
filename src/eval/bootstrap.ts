/**
 * Percentile bootstrap confidence intervals. Each resample draws n sample indices with replacement from one
 * seeded `Random` stream (index = random.int(n), n draws per resample, resamples in order), and is handed to
 * the statistics as multiplicities per original sample, so that metrics over sorted scores need no re-sort.
 * A statistic that is undefined on a resample (null, undefined or NaN, e.g. ROC-AUC when the resample holds one class)
 * is skipped for that resample and counted.
 */
import { MeloError } from '../errors.ts';
import { Random } from '../util/random.ts';

export const DEFAULT_BOOTSTRAP_RESAMPLES = 1000;

export interface BootstrapOptions {
  /** Number of resamples; 1000 unless set. */
  resamples?: number;
  /** Seed of the `Random` stream; 0 unless set. Ignored when `random` is given. */
  seed?: number;
  /** Coverage of the interval; 0.95 unless set. */
  confidence?: number;
  /** A generator to draw from instead of `new Random(seed)`. */
  random?: Random;
}

export interface BootstrapInterval {
  /** Lower and upper percentile of the resampled values; null when no resample gave a value. */
  low: number | null;
  high: number | null;
  /** Resamples on which the statistic was defined. */
  valid: number;
  /** Resamples on which it was undefined and so left out. */
  skipped: number;
}

export type ResampleStatistics = (counts: Uint32Array) => Readonly<Record<string, number | null | undefined>>;

/** Multiplicity of each of the n samples in one resample of size n drawn with replacement. */
export function drawResampleCounts(random: Random, n: number, counts = new Uint32Array(n)): Uint32Array {
  counts.fill(0);
  for (let draw = 0; draw < n; draw++) counts[random.int(n)]++;
  return counts;
}

/**
 * Quantile p ∈ [0, 1] of ascending `sorted` by linear interpolation between order statistics, numpy's
 * default (`np.quantile(..., method='linear')`), including its way of interpolating from the nearer end.
 */
export function quantile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const position = p * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  const t = position - below;
  const a = sorted[below];
  const b = sorted[above];
  return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/** Percentile intervals for every statistic `statistics` returns, from paired resamples (one draw serves all). */
export function bootstrapIntervals(
  n: number,
  statistics: ResampleStatistics,
  options: BootstrapOptions = {},
): Record<string, BootstrapInterval> {
  const resamples = options.resamples ?? DEFAULT_BOOTSTRAP_RESAMPLES;
  const confidence = options.confidence ?? 0.95;
  if (!Number.isInteger(resamples) || resamples < 1) {
    throw new MeloError('BAD_INPUT', `bootstrap: resamples must be a positive integer, got ${resamples}`);
  }
  if (!(confidence > 0 && confidence < 1)) {
    throw new MeloError('BAD_INPUT', `bootstrap: confidence must be in (0, 1), got ${confidence}`);
  }
  if (!Number.isInteger(n) || n < 1) {
    throw new MeloError('BAD_INPUT', `bootstrap: need at least one sample, got ${n}`);
  }
  const random = options.random ?? new Random(options.seed ?? 0);
  const values = new Map<string, number[]>();
  const counts = new Uint32Array(n);
  for (let r = 0; r < resamples; r++) {
    drawResampleCounts(random, n, counts);
    for (const [name, value] of Object.entries(statistics(counts))) {
      let list = values.get(name);
      if (list === undefined) {
        list = [];
        values.set(name, list);
      }
      if (value !== null && value !== undefined && !Number.isNaN(value)) list.push(value);
    }
  }
  const tail = (1 - confidence) / 2;
  const intervals: Record<string, BootstrapInterval> = {};
  for (const [name, list] of values) {
    const sorted = Float64Array.from(list).sort();
    intervals[name] = {
      low: sorted.length > 0 ? quantile(sorted, tail) : null,
      high: sorted.length > 0 ? quantile(sorted, 1 - tail) : null,
      valid: sorted.length,
      skipped: resamples - sorted.length,
    };
  }
  return intervals;
}
