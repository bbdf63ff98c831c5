/** The plain-text summary `melo eval` prints without --json: metrics with intervals, per class, confusion. */
import type { TaskEvaluation } from '../run.ts';
import { formatInterval, formatValue, metricLabel, orderedMetricNames } from './metric-labels.ts';

/** Columns padded to their widest cell; `right` marks the right-aligned (numeric) columns. */
function table(rows: readonly (readonly string[])[], right: readonly boolean[]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return rows
    .map((row) =>
      row
        .map((cell, i) => (right[i] ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** A split's name, or 'all' when the data has no test split and every item was evaluated. */
export type EvalSplit = 'train' | 'val' | 'test' | 'all';

/** "test split", "all items": what was evaluated, in words. */
export function describeSplit(split: string): string {
  return split === 'all' ? 'all items' : `${split} split`;
}

export function formatEvalText(evaluation: TaskEvaluation, context: { data: string; split: string }): string {
  const { summary, classNames, taskType } = evaluation;
  const lines: string[] = [];
  lines.push(
    `${evaluation.task} (${taskType}) on ${context.data}, ${describeSplit(context.split)}: ${summary.n} images`,
    '',
  );
  const ciHeader = summary.bootstrap ? `${Math.round(summary.bootstrap.confidence * 100)}% CI` : '';
  const metricRows = orderedMetricNames(summary.metrics).map((name) => [
    metricLabel(name, taskType, classNames[1]),
    formatValue(summary.metrics[name as keyof typeof summary.metrics]),
    summary.bootstrap ? formatInterval(summary.ci[name]) : '',
  ]);
  lines.push(table([['metric', 'value', ciHeader], ...metricRows], [false, true, true]), '');

  const kind = taskType === 'multilabel' ? 'label' : 'class';
  const classRows = classNames.map((name) => {
    const c = summary.perClass[name];
    return [
      name,
      String(c.support),
      ...[c.sensitivity, c.specificity, c.precision, c.f1, c.rocAuc, c.prAuc].map((v) => formatValue(v)),
    ];
  });
  lines.push(
    table(
      [[kind, 'support', 'sens', 'spec', 'prec', 'F1', 'ROC-AUC', 'AP'], ...classRows],
      [false, true, true, true, true, true, true, true],
    ),
    '',
  );

  if (summary.task === 'multilabel') {
    const rows = classNames.map((name, c) => {
      const [[tn, fp], [fn, tp]] = summary.confusionMatrix[c];
      return [name, String(tn), String(fp), String(fn), String(tp)];
    });
    lines.push(table([['label', 'TN', 'FP', 'FN', 'TP'], ...rows], [false, true, true, true, true]));
  } else {
    lines.push('confusion matrix (rows true, columns predicted):');
    const rows = summary.confusionMatrix.map((row, t) => [classNames[t], ...row.map(String)]);
    lines.push(table([['', ...classNames], ...rows], [false, ...classNames.map(() => true)]));
  }
  for (const note of summary.notes) lines.push(`note: ${note}`);
  return `${lines.join('\n')}\n`;
}
