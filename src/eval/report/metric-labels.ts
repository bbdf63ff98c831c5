/** How metrics are named and printed in the text table and the HTML report. */
import type { EvalMetrics } from '../metrics.ts';
import type { TaskType } from '../prepare.ts';

type MetricName = keyof EvalMetrics;

const LABELS: Record<MetricName, string> = {
  accuracy: 'Accuracy',
  balancedAccuracy: 'Balanced accuracy',
  macroSensitivity: 'Sensitivity (macro)',
  macroSpecificity: 'Specificity (macro)',
  macroPrecision: 'Precision (macro)',
  macroF1: 'F1 (macro)',
  rocAuc: 'ROC-AUC',
  prAuc: 'Average precision',
  ece: 'Expected calibration error',
  sensitivity: 'Sensitivity',
  specificity: 'Specificity',
  precision: 'Precision',
  f1: 'F1',
  labelAccuracy: 'Label accuracy',
  quadraticKappa: 'Quadratic weighted kappa',
  meanGradeError: 'Mean absolute grade error',
};

/** The order metrics are listed in: headline ranking metrics first, then thresholded rates. */
const ORDER: readonly MetricName[] = [
  'quadraticKappa',
  'meanGradeError',
  'rocAuc',
  'prAuc',
  'accuracy',
  'balancedAccuracy',
  'labelAccuracy',
  'sensitivity',
  'specificity',
  'precision',
  'f1',
  'macroSensitivity',
  'macroSpecificity',
  'macroPrecision',
  'macroF1',
  'ece',
];

const POSITIVE_CLASS_METRICS: readonly string[] = ['sensitivity', 'specificity', 'precision', 'f1'];

/** A metric's display name; binary positive-class rates name the positive class when it is given. */
export function metricLabel(name: string, taskType: TaskType, positiveClass?: string): string {
  const label = LABELS[name as MetricName] ?? name;
  if (name === 'rocAuc' || name === 'prAuc') {
    if (taskType === 'binary') return label;
    return `${label} (macro${taskType === 'multiclass' ? ', one-vs-rest' : ''})`;
  }
  if (name === 'accuracy' && taskType === 'multilabel') return 'Subset accuracy';
  if (taskType === 'binary' && POSITIVE_CLASS_METRICS.includes(name)) {
    return `${label} (positive: ${positiveClass ?? 'class 1'})`;
  }
  return label;
}

/** The metric names present in `metrics`, in listing order (unknown names last, as given). */
export function orderedMetricNames(metrics: EvalMetrics): string[] {
  const present = Object.keys(metrics).filter((name) => metrics[name as MetricName] !== undefined);
  const known = ORDER.filter((name) => present.includes(name));
  return [...known, ...present.filter((name) => !known.includes(name as MetricName))];
}

/** Three decimals; an undefined metric (null) prints as an em dash. */
export function formatValue(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '—' : value.toFixed(digits);
}

export function formatInterval(interval: readonly [number, number] | null | undefined, digits = 3): string {
  return interval ? `${formatValue(interval[0], digits)}–${formatValue(interval[1], digits)}` : '—';
}
