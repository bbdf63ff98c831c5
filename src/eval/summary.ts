/**
 * `evaluate`: every metric of a set of predictions with bootstrap confidence intervals, as one JSON-ready
 * object (what `melo eval --json` prints). Undefined values are null, never NaN, so JSON keeps them.
 */
import { MeloError } from '../errors.ts';
import { type BootstrapOptions, bootstrapIntervals, DEFAULT_BOOTSTRAP_RESAMPLES } from './bootstrap.ts';
import type { ReliabilityBin } from './calibration.ts';
import { type ClassMetrics, computeMetrics, type EvalMetrics } from './metrics.ts';
import { type EvalInput, type PreparedEvaluation, prepareEvaluation, type TaskType } from './prepare.ts';

export interface EvaluateOptions {
  /** Names for the classes (labels), used as `perClass` keys; "0", "1", … unless set. */
  classNames?: readonly string[];
  /** Decision threshold for binary and multi-label tasks; 0.5 unless set. */
  threshold?: number;
  /** Equal-width calibration bins; 15 unless set. */
  calibrationBins?: number;
  /** Bootstrap settings (1000 resamples, seed 0, 95 % unless set), or false for no intervals. */
  bootstrap?: Omit<BootstrapOptions, 'random'> | false;
  /** File the predictions came from, named in error messages. */
  source?: string;
  /** The classes are ordered grades (single-label): adds quadratic weighted kappa and mean grade error. */
  ordinal?: boolean;
}

export interface BootstrapReport {
  resamples: number;
  seed: number;
  confidence: number;
  /** Per metric, the resamples on which it was undefined and so left out of its interval. */
  skipped: Record<string, number>;
}

interface SummaryBase {
  n: number;
  numClasses: number;
  classNames: string[];
  /** The decision threshold used (binary, multi-label); null for multi-class (argmax). */
  threshold: number | null;
  metrics: EvalMetrics;
  /** Percentile interval per scalar metric; null when no resample gave a value. */
  ci: Record<string, [number, number] | null>;
  bootstrap: BootstrapReport | null;
  perClass: Record<string, ClassMetrics>;
  calibration: ReliabilityBin[];
  /** Plain-language notes on what was left out or undefined, for the report. */
  notes: string[];
}

export interface SingleLabelSummary extends SummaryBase {
  task: 'binary' | 'multiclass';
  /** Rows true class, columns predicted class. */
  confusionMatrix: number[][];
}

export interface MultilabelSummary extends SummaryBase {
  task: 'multilabel';
  /** Per label, [[TN, FP], [FN, TP]]. */
  confusionMatrix: number[][][];
}

export type EvalSummary = SingleLabelSummary | MultilabelSummary;

function classNamesFor(prepared: PreparedEvaluation, options: EvaluateOptions): string[] {
  const names = options.classNames
    ? [...options.classNames]
    : Array.from({ length: prepared.numClasses }, (_, i) => String(i));
  const file = options.source !== undefined ? { file: options.source } : {};
  if (names.length !== prepared.numClasses) {
    throw new MeloError('BAD_INPUT', `${names.length} class names for ${prepared.numClasses} classes`, file);
  }
  if (new Set(names).size !== names.length)
    throw new MeloError('BAD_INPUT', 'class names must be distinct', file);
  return names;
}

function notesFor(task: TaskType, names: string[], perClass: ClassMetrics[]): string[] {
  const notes: string[] = [];
  const kind = task === 'multilabel' ? 'label' : 'class';
  const excluded = task === 'binary' ? '' : ', left out of the macro average';
  perClass.forEach((c, i) => {
    const name = `${kind} ${JSON.stringify(names[i])}`;
    if (c.rocAuc === null) {
      const why = c.support === 0 ? 'no positive samples' : 'no negative samples';
      notes.push(`${name}: ${why}, so its ROC-AUC is undefined (null${excluded})`);
    }
    if (c.prAuc === null) {
      notes.push(`${name}: no positive samples, so its average precision is undefined (null${excluded})`);
    }
    if (c.support === 0) {
      notes.push(
        `${name}: no positive samples, its sensitivity counts as 0 in the macro averages (as sklearn)`,
      );
    }
  });
  return notes;
}

export function evaluate(input: EvalInput, options: EvaluateOptions = {}): EvalSummary {
  const prepared = prepareEvaluation(input, {
    threshold: options.threshold,
    calibrationBins: options.calibrationBins,
    source: options.source,
  });
  const names = classNamesFor(prepared, options);
  const ordinal = options.ordinal === true && prepared.labels !== null;
  const point = computeMetrics(prepared, { ordinal });

  const ci: Record<string, [number, number] | null> = {};
  let bootstrap: BootstrapReport | null = null;
  if (options.bootstrap !== false) {
    const settings = {
      resamples: options.bootstrap?.resamples ?? DEFAULT_BOOTSTRAP_RESAMPLES,
      seed: options.bootstrap?.seed ?? 0,
      confidence: options.bootstrap?.confidence ?? 0.95,
    };
    const intervals = bootstrapIntervals(
      prepared.n,
      (counts) => computeMetrics(prepared, { weights: counts, ordinal }).metrics,
      settings,
    );
    const skipped: Record<string, number> = {};
    for (const name of Object.keys(point.metrics)) {
      const interval = intervals[name];
      const { low, high } = interval ?? { low: null, high: null };
      ci[name] = low !== null && high !== null ? [low, high] : null;
      skipped[name] = interval?.skipped ?? settings.resamples;
    }
    bootstrap = { ...settings, skipped };
  }

  const perClass: Record<string, ClassMetrics> = {};
  point.perClass.forEach((c, i) => {
    perClass[names[i]] = c;
  });
  const base: SummaryBase = {
    n: prepared.n,
    numClasses: prepared.numClasses,
    classNames: names,
    threshold: prepared.task === 'multiclass' ? null : prepared.threshold,
    metrics: point.metrics,
    ci,
    bootstrap,
    perClass,
    calibration: point.calibration,
    notes: notesFor(prepared.task, names, point.perClass),
  };
  if (prepared.task === 'multilabel') {
    return { ...base, task: 'multilabel', confusionMatrix: point.confusion as number[][][] };
  }
  return { ...base, task: prepared.task, confusionMatrix: point.confusion as number[][] };
}
