/** Clinical evaluation metrics: what `melo eval` and the training loop's validation use. */
export type { BinaryCurveCounts, RankedLabels, RankingAreas } from './binary-curve.ts';
export { binaryCurveCounts, rankingAreas, rankLabels } from './binary-curve.ts';
export type { BootstrapInterval, BootstrapOptions, ResampleStatistics } from './bootstrap.ts';
export {
  bootstrapIntervals,
  DEFAULT_BOOTSTRAP_RESAMPLES,
  drawResampleCounts,
  quantile,
} from './bootstrap.ts';
export type { CalibrationOptions, ReliabilityBin } from './calibration.ts';
export {
  binIndex,
  DEFAULT_CALIBRATION_BINS,
  expectedCalibrationError,
  expectedCalibrationErrorFromBins,
  reliabilityBins,
} from './calibration.ts';
export type { ClassRates } from './classification.ts';
export {
  accuracyFromConfusion,
  balancedAccuracyFromConfusion,
  classRates,
  perClassRates,
} from './classification.ts';
export type { BinaryCounts } from './confusion.ts';
export { classCounts, confusionMatrix } from './confusion.ts';
export type { ClassMetrics, EvalMetrics, MetricsOptions, MetricsResult } from './metrics.ts';
export { computeMetrics } from './metrics.ts';
export type { PrecisionRecallCurve } from './precision-recall.ts';
export { averagePrecision, precisionRecallCurve } from './precision-recall.ts';
export type {
  EvalInput,
  LabelInput,
  PreparedEvaluation,
  PrepareOptions,
  ProbabilityInput,
  TaskType,
} from './prepare.ts';
export { DEFAULT_THRESHOLD, prepareEvaluation, TASK_TYPES } from './prepare.ts';
export type { RocCurve, RocCurveOptions } from './roc.ts';
export { rocAuc, rocCurve } from './roc.ts';
export type {
  BootstrapReport,
  EvalSummary,
  EvaluateOptions,
  MultilabelSummary,
  SingleLabelSummary,
} from './summary.ts';
export { evaluate } from './summary.ts';
