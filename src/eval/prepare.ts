/**
 * Checks evaluation inputs and turns them into the per-class arrays every metric works from, once, so that
 * bootstrap resamples only re-weight them.
 *
 * Conventions: binary scores are the positive-class probability (column 1 of two columns, or the only
 * column) and a sample is called positive when score >= threshold (0.5); multi-class predictions are the
 * argmax, first maximum on ties; multi-label predictions are score >= threshold per label.
 */
import { MeloError } from '../errors.ts';
import { type RankedLabels, rankLabels } from './binary-curve.ts';
import { assignBins, DEFAULT_CALIBRATION_BINS } from './calibration.ts';

export type TaskType = 'binary' | 'multiclass' | 'multilabel';
export const TASK_TYPES: readonly TaskType[] = ['binary', 'multiclass', 'multilabel'];

/** n × classes, row-major when flat (a flat array's class count is its length / n). */
export type ProbabilityInput = Float32Array | Float64Array | readonly (readonly number[])[];
/** Class indices (binary, multi-class) or an n × labels 0/1 matrix (multi-label). */
export type LabelInput = readonly number[] | Int32Array | readonly (readonly number[])[];

export interface EvalInput {
  task: TaskType;
  probabilities: ProbabilityInput;
  labels: LabelInput;
}

export interface PrepareOptions {
  /** Decision threshold for binary and multi-label tasks; 0.5 unless set. */
  threshold?: number;
  /** Equal-width calibration bins; 15 unless set. */
  calibrationBins?: number;
  /** File the inputs came from, named in error messages. */
  source?: string;
}

export const DEFAULT_THRESHOLD = 0.5;
/** How far a softmax row may stray from summing to 1 (float32 rounding over many classes). */
const ROW_SUM_TOLERANCE = 1e-3;

export interface PreparedEvaluation {
  task: TaskType;
  n: number;
  /** 2 for binary; the label count for multi-label. */
  numClasses: number;
  threshold: number;
  /** One-vs-rest truth per class (class-major): truth[c][i] is 1 when sample i has class c. */
  truth: Uint8Array[];
  /** One-vs-rest prediction per class, like `truth`. */
  predicted: Uint8Array[];
  /** Ranking score per class; binary class 0 ranks by the negated positive score. */
  scores: Float64Array[];
  /** Each class's samples sorted by its score, once. */
  ranked: RankedLabels[];
  /** True and predicted class per sample (binary, multi-class); null for multi-label. */
  labels: Int32Array | null;
  predictedLabels: Int32Array | null;
  /** Calibration items: one per sample, or one per (sample, label) for multi-label at index i·k + c. */
  confidence: Float64Array;
  correct: Uint8Array;
  itemsPerSample: number;
  calibrationBins: number;
  /** Calibration bin of each item. */
  calibrationBin: Uint16Array;
}

function fail(message: string, source: string | undefined): never {
  throw new MeloError('BAD_INPUT', message, source !== undefined ? { file: source } : {});
}

function probabilityMatrix(
  probabilities: ProbabilityInput,
  n: number,
  source: string | undefined,
): Float64Array[] {
  if (ArrayBuffer.isView(probabilities)) {
    if (probabilities.length % n !== 0 || probabilities.length === 0) {
      fail(`probabilities has ${probabilities.length} values, not a multiple of the ${n} labels`, source);
    }
    const k = probabilities.length / n;
    return Array.from({ length: n }, (_, i) => Float64Array.from(probabilities.subarray(i * k, (i + 1) * k)));
  }
  if (!Array.isArray(probabilities)) fail('probabilities must be a Float32Array or an array of rows', source);
  if (probabilities.length !== n)
    fail(`probabilities has ${probabilities.length} rows but there are ${n} labels`, source);
  const k = probabilities[0]?.length ?? 0;
  return probabilities.map((row, i) => {
    if (!Array.isArray(row) || row.length !== k || k === 0) {
      fail(
        `probabilities row ${i} has ${Array.isArray(row) ? row.length : 'no'} values, expected ${k || 'some'}`,
        source,
      );
    }
    return Float64Array.from(row);
  });
}

function checkRows(rows: Float64Array[], mustSumToOne: boolean, source: string | undefined): void {
  rows.forEach((row, i) => {
    let sum = 0;
    row.forEach((p, c) => {
      if (!(p >= 0 && p <= 1)) fail(`probability [${i}][${c}] is ${p}, expected a number in [0, 1]`, source);
      sum += p;
    });
    if (mustSumToOne && Math.abs(sum - 1) > ROW_SUM_TOLERANCE) {
      fail(
        `probabilities row ${i} sums to ${Number(sum.toPrecision(6))}, expected softmax outputs summing to 1`,
        source,
      );
    }
  });
}

function classLabels(labels: LabelInput, k: number, source: string | undefined): Int32Array {
  const out = new Int32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (typeof y !== 'number' || !Number.isInteger(y) || y < 0 || y >= k) {
      fail(`label ${i} is ${JSON.stringify(y)}, expected a class index 0..${k - 1}`, source);
    }
    out[i] = y;
  }
  return out;
}

function multilabelTruth(labels: LabelInput, k: number, source: string | undefined): Uint8Array[] {
  const truth = Array.from({ length: k }, () => new Uint8Array(labels.length));
  for (let i = 0; i < labels.length; i++) {
    const row = labels[i];
    if (!Array.isArray(row) || row.length !== k) {
      fail(`labels row ${i} must be ${k} values of 0/1 (one per probability column)`, source);
    }
    row.forEach((y: unknown, c: number) => {
      if (y !== 0 && y !== 1) fail(`label [${i}][${c}] is ${JSON.stringify(y)}, expected 0 or 1`, source);
      truth[c][i] = y as number;
    });
  }
  return truth;
}

function calibrationBinsFor(
  confidence: Float64Array,
  options: PrepareOptions,
): { calibrationBins: number; calibrationBin: Uint16Array } {
  const bins = options.calibrationBins ?? DEFAULT_CALIBRATION_BINS;
  if (!Number.isInteger(bins) || bins < 1 || bins > 65535) {
    fail(`calibration bins must be an integer in 1..65535, got ${bins}`, options.source);
  }
  return { calibrationBins: bins, calibrationBin: assignBins(confidence, bins) };
}

function column(rows: Float64Array[], c: number): Float64Array {
  return Float64Array.from(rows, (row) => row[c]);
}

export function prepareEvaluation(input: EvalInput, options: PrepareOptions = {}): PreparedEvaluation {
  const { task, labels } = input;
  const source = options.source;
  const threshold = options.threshold ?? DEFAULT_THRESHOLD;
  if (!TASK_TYPES.includes(task))
    fail(`task must be one of ${TASK_TYPES.join(', ')}, got ${String(task)}`, source);
  if (!(threshold >= 0 && threshold <= 1)) fail(`threshold must be in [0, 1], got ${threshold}`, source);
  if (labels === null || typeof labels !== 'object' || labels.length === 0)
    fail('no labels to evaluate', source);
  const n = labels.length;
  const rows = probabilityMatrix(input.probabilities, n, source);
  const width = rows[0].length;

  if (task === 'multilabel') {
    checkRows(rows, false, source);
    const truth = multilabelTruth(labels, width, source);
    const scores = Array.from({ length: width }, (_, c) => column(rows, c));
    const predicted = scores.map((s) => Uint8Array.from(s, (p) => (p >= threshold ? 1 : 0)));
    const confidence = new Float64Array(n * width);
    const correct = new Uint8Array(n * width);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < width; c++) {
        const p = scores[c][i];
        confidence[i * width + c] = p >= threshold ? p : 1 - p;
        correct[i * width + c] = predicted[c][i] === truth[c][i] ? 1 : 0;
      }
    }
    return {
      task,
      n,
      numClasses: width,
      threshold,
      truth,
      predicted,
      scores,
      ranked: scores.map((s, c) => rankLabels(truth[c], s)),
      labels: null,
      predictedLabels: null,
      confidence,
      correct,
      itemsPerSample: width,
      ...calibrationBinsFor(confidence, options),
    };
  }

  let k: number;
  let scores: Float64Array[];
  const predictedLabels = new Int32Array(n);
  const confidence = new Float64Array(n);
  if (task === 'binary') {
    if (width > 2) fail(`binary task needs 1 or 2 probability columns, got ${width}`, source);
    checkRows(rows, width === 2, source);
    k = 2;
    const positive = column(rows, width - 1);
    scores = [positive.map((p) => -p), positive];
    positive.forEach((p, i) => {
      predictedLabels[i] = p >= threshold ? 1 : 0;
      confidence[i] = p >= threshold ? p : 1 - p;
    });
  } else {
    if (width < 2) fail(`multiclass task needs at least 2 probability columns, got ${width}`, source);
    checkRows(rows, true, source);
    k = width;
    scores = Array.from({ length: k }, (_, c) => column(rows, c));
    rows.forEach((row, i) => {
      let best = 0;
      for (let c = 1; c < k; c++) if (row[c] > row[best]) best = c;
      predictedLabels[i] = best;
      confidence[i] = row[best];
    });
  }
  const trueLabels = classLabels(labels, k, source);
  const truth = Array.from({ length: k }, (_, c) => Uint8Array.from(trueLabels, (y) => (y === c ? 1 : 0)));
  const predicted = Array.from({ length: k }, (_, c) =>
    Uint8Array.from(predictedLabels, (y) => (y === c ? 1 : 0)),
  );
  const correct = Uint8Array.from(trueLabels, (y, i) => (y === predictedLabels[i] ? 1 : 0));
  return {
    task,
    n,
    numClasses: k,
    threshold,
    truth,
    predicted,
    scores,
    ranked: scores.map((s, c) => rankLabels(truth[c], s)),
    labels: trueLabels,
    predictedLabels,
    confidence,
    correct,
    itemsPerSample: 1,
    ...calibrationBinsFor(confidence, options),
  };
}
