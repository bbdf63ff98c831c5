/**
 * Vega-Lite specifications of the report's plots (ROC and precision-recall curves, confusion matrix,
 * reliability diagram), built from an evaluation's rows and summary. Data is inlined, so a spec renders
 * without any loading.
 */
import type { TopLevelSpec } from 'vega-lite';
import { precisionRecallCurve } from '../precision-recall.ts';
import { rocCurve } from '../roc.ts';
import type { TaskEvaluation } from '../run.ts';

const SIZE = 340;
const FONT = 'Helvetica, Arial, sans-serif';

/** Shared look: one font, no chart border, readable axis titles. */
const CONFIG = {
  font: FONT,
  view: { stroke: null },
  axis: { labelFontSize: 11, titleFontSize: 12, titleFontWeight: 'normal' as const, grid: true },
  // No truncation: without a canvas Vega estimates text as 0.8 em per character, so limits cut labels early.
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 0 },
  header: { labelFontSize: 12, labelFontWeight: 'bold' as const, labelPadding: 4 },
};

/** Classes drawn as curves: the positive class only for binary tasks (class 0's curve is its mirror). */
function curveClasses(evaluation: TaskEvaluation): number[] {
  const k = evaluation.classNames.length;
  return evaluation.taskType === 'binary' ? [1] : Array.from({ length: k }, (_, c) => c);
}

function oneVsRest(evaluation: TaskEvaluation, c: number): { truth: Uint8Array; scores: Float64Array } {
  const truth = Uint8Array.from(evaluation.rows, (row) => (row.labels.includes(c) ? 1 : 0));
  const scores = Float64Array.from(evaluation.rows, (row) => row.probabilities[c]);
  return { truth, scores };
}

function seriesName(evaluation: TaskEvaluation, c: number, area: string, value: number | null): string {
  const name = evaluation.classNames[c];
  return `${name} (${area} ${value === null ? '—' : value.toFixed(3)})`;
}

interface CurvePoint {
  series: string;
  step: number;
  x: number;
  y: number;
}

function curveSpec(
  points: CurvePoint[],
  series: string[],
  axes: { x: string; y: string },
  reference: { x: number; y: number; x2: number; y2: number } | null,
): TopLevelSpec {
  const layers: NonNullable<Extract<TopLevelSpec, { layer: unknown }>['layer']> = [];
  if (reference !== null) {
    layers.push({
      data: { values: [reference] },
      mark: { type: 'rule', strokeDash: [4, 4], color: '#9a9a9a' },
      encoding: {
        x: { field: 'x', type: 'quantitative' },
        y: { field: 'y', type: 'quantitative' },
        x2: { field: 'x2' },
        y2: { field: 'y2' },
      },
    });
  }
  layers.push({
    data: { values: points },
    mark: { type: 'line', strokeWidth: 2, interpolate: 'linear', clip: true },
    encoding: {
      x: {
        field: 'x',
        type: 'quantitative',
        title: axes.x,
        scale: { domain: [0, 1] },
        axis: { tickCount: 5 },
      },
      y: {
        field: 'y',
        type: 'quantitative',
        title: axes.y,
        scale: { domain: [0, 1] },
        axis: { tickCount: 5 },
      },
      color: {
        field: 'series',
        type: 'nominal',
        title: null,
        sort: series,
        scale: { scheme: series.length > 10 ? 'tableau20' : 'tableau10' },
        legend: { orient: 'bottom', columns: 1, symbolType: 'stroke' },
      },
      order: { field: 'step', type: 'quantitative' },
    },
  });
  return { width: SIZE, height: SIZE, config: CONFIG, layer: layers };
}

/** One ROC curve per class (one-vs-rest), the chance diagonal, AUC in each legend entry. */
export function rocChartSpec(evaluation: TaskEvaluation): TopLevelSpec {
  const points: CurvePoint[] = [];
  const series: string[] = [];
  for (const c of curveClasses(evaluation)) {
    const { truth, scores } = oneVsRest(evaluation, c);
    const curve = rocCurve(truth, scores);
    if (curve.fpr.some(Number.isNaN) || curve.tpr.some(Number.isNaN)) continue; // undefined: see the notes
    const name = seriesName(
      evaluation,
      c,
      'AUC',
      evaluation.summary.perClass[evaluation.classNames[c]].rocAuc,
    );
    series.push(name);
    curve.fpr.forEach((x, step) => {
      points.push({ series: name, step, x, y: curve.tpr[step] });
    });
  }
  return curveSpec(
    points,
    series,
    { x: 'False positive rate (1 − specificity)', y: 'True positive rate (sensitivity)' },
    { x: 0, y: 0, x2: 1, y2: 1 },
  );
}

/** One precision-recall curve per class, drawn as sklearn's step function (what average precision sums). */
export function precisionRecallChartSpec(evaluation: TaskEvaluation): TopLevelSpec {
  const points: CurvePoint[] = [];
  const series: string[] = [];
  for (const c of curveClasses(evaluation)) {
    const { truth, scores } = oneVsRest(evaluation, c);
    if (!truth.includes(1)) continue; // no positives: undefined, see the notes
    const curve = precisionRecallCurve(truth, scores);
    const name = seriesName(evaluation, c, 'AP', evaluation.summary.perClass[evaluation.classNames[c]].prAuc);
    series.push(name);
    // Recall decreases along sklearn's arrays: walk them backwards from recall 0.
    let step = 0;
    // The stretch from recall[j + 1] up to recall[j] has precision[j] (the height average precision uses).
    for (let j = curve.recall.length - 1; j >= 0; j--) {
      if (j < curve.recall.length - 1) {
        points.push({ series: name, step: step++, x: curve.recall[j + 1], y: curve.precision[j] });
      }
      points.push({ series: name, step: step++, x: curve.recall[j], y: curve.precision[j] });
    }
  }
  return curveSpec(points, series, { x: 'Recall (sensitivity)', y: 'Precision (PPV)' }, null);
}

/**
 * Cells name classes by index, and axes and headers turn the index into the name with an expression:
 * class names come from the data, and Vega keeps some values as object keys, where a class named
 * `constructor` failed the whole report ('Operator not defined').
 */
interface Cell {
  panel: number;
  truth: number;
  predicted: number;
  count: number;
  /** Fraction of the true class's samples: the colour, so small classes are readable too. */
  share: number;
}

/**
 * A Vega expression naming `datum.value` by index into `names`. The names travel as ONE string literal that
 * starts with a separator: Vega looks some string literals of an expression up as object keys, so a literal
 * "constructor" or "toString" broke the chart ('Operator not defined: undefined').
 */
function nameByIndex(names: readonly string[]): string {
  const separator = '\u001f';
  const joined = names.map((name) => `${separator}${name.replaceAll(separator, ' ')}`).join('');
  return `split(${JSON.stringify(joined)}, ${JSON.stringify(separator)})[datum.value + 1]`;
}

function matrixCells(matrix: number[][], panel: number): Cell[] {
  return matrix.flatMap((row, t) => {
    const total = row.reduce((sum, v) => sum + v, 0);
    return row.map((count, p) => ({
      panel,
      truth: t,
      predicted: p,
      count,
      share: total > 0 ? count / total : 0,
    }));
  });
}

/**
 * Counts with rows the true class and columns the predicted class, shaded by the share of the true class.
 * Multi-label: one 2×2 panel per label ([[TN, FP], [FN, TP]]).
 */
export function confusionChartSpec(evaluation: TaskEvaluation): TopLevelSpec {
  const { summary, classNames } = evaluation;
  const multilabel = summary.task === 'multilabel';
  const cells = multilabel
    ? summary.confusionMatrix.flatMap((matrix, c) => matrixCells(matrix, c))
    : matrixCells(summary.confusionMatrix, 0);
  const order = multilabel ? ['absent', 'present'] : [...classNames];
  const cell = multilabel ? 48 : Math.max(28, Math.min(110, Math.floor(400 / classNames.length)));
  const side = cell * order.length;
  const layer: NonNullable<Extract<TopLevelSpec, { layer: unknown }>['layer']> = [
    {
      mark: { type: 'rect', stroke: '#ffffff', strokeWidth: 1 },
      encoding: {
        color: {
          field: 'share',
          type: 'quantitative',
          title: 'Row share',
          scale: { scheme: 'blues', domain: [0, 1] },
          legend: multilabel ? null : { orient: 'right', format: '.0%', gradientLength: Math.min(side, 200) },
        },
      },
    },
    {
      mark: { type: 'text', fontSize: cell < 36 ? 10 : cell < 60 ? 12 : 15 },
      encoding: {
        text: { field: 'count', type: 'quantitative', format: 'd' },
        color: { condition: { test: 'datum.share > 0.55', value: '#ffffff' }, value: '#1a1a1a' },
      },
    },
  ];
  const axisLabel = { labelLimit: 0, grid: false, ticks: false, domain: false, labelPadding: 6 };
  const encoding = {
    x: {
      field: 'predicted',
      type: 'ordinal' as const,
      sort: 'ascending' as const,
      title: 'Predicted',
      axis: {
        ...axisLabel,
        labelExpr: nameByIndex(order),
        labelAngle: multilabel || classNames.length <= 4 ? 0 : -40,
        orient: 'top' as const,
      },
    },
    y: {
      field: 'truth',
      type: 'ordinal' as const,
      sort: 'ascending' as const,
      title: 'True',
      axis: { ...axisLabel, labelExpr: nameByIndex(order) },
    },
  };
  if (!multilabel) {
    return {
      config: CONFIG,
      data: { values: cells },
      width: side,
      height: side,
      encoding,
      layer,
    };
  }
  return {
    config: CONFIG,
    data: { values: cells },
    facet: {
      field: 'panel',
      type: 'ordinal',
      sort: 'ascending',
      title: null,
      header: { labelExpr: nameByIndex(classNames) },
    },
    columns: Math.min(4, classNames.length),
    spec: { width: side, height: side, encoding, layer },
    resolve: { axis: { x: 'independent', y: 'independent' } },
  };
}

/**
 * Reliability diagram: per confidence bin, the fraction correct against the diagonal of perfect
 * calibration, and below it how many predictions fell in each bin.
 */
export function calibrationChartSpec(evaluation: TaskEvaluation): TopLevelSpec {
  const bins = evaluation.summary.calibration.map((bin) => ({
    lower: bin.lower,
    upper: bin.upper,
    count: bin.count,
    accuracy: bin.accuracy,
    confidence: bin.meanConfidence,
  }));
  const filled = bins.filter((bin) => bin.count > 0);
  const x = {
    field: 'lower',
    type: 'quantitative' as const,
    scale: { domain: [0, 1] },
    axis: { tickCount: 5 },
  };
  return {
    config: CONFIG,
    vconcat: [
      {
        width: SIZE,
        height: SIZE,
        layer: [
          {
            data: { values: filled },
            mark: { type: 'rect', color: '#4c78a8', opacity: 0.85, stroke: '#ffffff', strokeWidth: 0.5 },
            encoding: {
              x: { ...x, title: null },
              x2: { field: 'upper' },
              y: {
                field: 'accuracy',
                type: 'quantitative',
                title: 'Fraction correct',
                scale: { domain: [0, 1], nice: false, zero: true },
                axis: { tickCount: 5 },
              },
              y2: { datum: 0 },
            },
          },
          {
            data: { values: [{ x: 0, y: 0, x2: 1, y2: 1 }] },
            mark: { type: 'rule', strokeDash: [4, 4], color: '#9a9a9a' },
            encoding: {
              x: { field: 'x', type: 'quantitative' },
              y: { field: 'y', type: 'quantitative' },
              x2: { field: 'x2' },
              y2: { field: 'y2' },
            },
          },
          {
            data: { values: filled },
            mark: { type: 'point', filled: true, color: '#e45756', size: 36 },
            encoding: {
              x: { field: 'confidence', type: 'quantitative' },
              y: { field: 'accuracy', type: 'quantitative' },
            },
          },
        ],
      },
      {
        width: SIZE,
        height: 90,
        data: { values: bins },
        mark: { type: 'rect', color: '#6baed6', stroke: '#ffffff', strokeWidth: 0.5 },
        encoding: {
          x: {
            ...x,
            title:
              evaluation.taskType === 'multilabel'
                ? 'Confidence of each (image, label) decision'
                : 'Confidence (probability of the predicted class)',
          },
          x2: { field: 'upper' },
          y: { field: 'count', type: 'quantitative', title: 'Count', axis: { tickCount: 3 } },
          y2: { datum: 0 },
        },
      },
    ],
  };
}
