/**
 * The `melo eval --report` page: one self-contained HTML file (inline CSS, plots as inline SVG rendered
 * by Vega, no scripts, no external resources) that can be mailed, archived or opened offline.
 */
import type { TaskEvaluation } from '../run.ts';
import {
  calibrationChartSpec,
  confusionChartSpec,
  precisionRecallChartSpec,
  rocChartSpec,
} from './charts.ts';
import { formatInterval, formatValue, metricLabel, orderedMetricNames } from './metric-labels.ts';
import { renderVegaLiteSvg } from './svg.ts';
import { describeSplit } from './text.ts';

export interface EvalReportContext {
  /** The dataset spec as given (shown as is). */
  readonly data: string;
  readonly split: string;
  readonly backbone?: string;
  /** The adapter directory; absent when the backbone's own head was evaluated. */
  readonly adapter?: string;
  /** When the report was made; left out of the page when absent. */
  readonly generatedAt?: Date;
}

export function escapeHtml(text: string): string {
  return text
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

const STYLE = `
body { font-family: Helvetica, Arial, sans-serif; color: #1a1a1a; margin: 2rem auto; max-width: 1120px; padding: 0 1.5rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.subtitle { color: #555; margin-top: 0; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; font-size: 0.92rem; }
dl.meta dt { color: #555; }
dl.meta dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; font-size: 0.92rem; margin: 0.5rem 0; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #e5e5e5; text-align: left; }
th { background: #f5f5f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ci { color: #555; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5rem 2.5rem; }
figure { margin: 0; }
figure h3 { font-size: 1rem; margin: 0 0 0.4rem 0; }
figcaption { font-size: 0.85rem; color: #555; max-width: 440px; margin-top: 0.3rem; }
figure svg { max-width: 100%; height: auto; }
ul.notes { font-size: 0.92rem; color: #444; }
footer { margin-top: 2.5rem; font-size: 0.8rem; color: #777; }
`;

function metaList(evaluation: TaskEvaluation, context: EvalReportContext): string {
  const { summary } = evaluation;
  const items: [string, string][] = [
    ['Task', `${evaluation.task} (${evaluation.taskType})`],
    ['Data', `${context.data} — ${describeSplit(context.split)}`],
    ['Images', String(summary.n)],
    ['Classes', evaluation.classNames.join(' · ')],
  ];
  if (context.backbone !== undefined) items.push(['Backbone', context.backbone]);
  items.push(['Model', context.adapter ?? "the backbone's own classifier head"]);
  items.push([
    'Decision rule',
    summary.task === 'multiclass'
      ? 'argmax of the softmax probabilities'
      : summary.task === 'binary'
        ? `positive (${evaluation.classNames[1]}) when its probability ≥ ${summary.threshold}`
        : `label present when its sigmoid probability ≥ ${summary.threshold}`,
  ]);
  items.push([
    'Intervals',
    summary.bootstrap
      ? `${Math.round(summary.bootstrap.confidence * 100)} % percentile bootstrap, ${summary.bootstrap.resamples} resamples of the images, seed ${summary.bootstrap.seed}`
      : 'none (bootstrap off)',
  ]);
  return `<dl class="meta">${items
    .map(([term, value]) => `<dt>${escapeHtml(term)}</dt><dd>${escapeHtml(value)}</dd>`)
    .join('')}</dl>`;
}

function metricsTable(evaluation: TaskEvaluation): string {
  const { summary } = evaluation;
  const confidence = summary.bootstrap ? `${Math.round(summary.bootstrap.confidence * 100)} % CI` : 'CI';
  const rows = orderedMetricNames(summary.metrics).map((name) => {
    const value = summary.metrics[name as keyof typeof summary.metrics];
    return `<tr><td>${escapeHtml(metricLabel(name, evaluation.taskType, evaluation.classNames[1]))}</td><td class="num">${formatValue(value)}</td><td class="num ci">${formatInterval(summary.ci[name])}</td></tr>`;
  });
  return `<table class="metrics"><thead><tr><th>Metric</th><th class="num">Value</th><th class="num">${confidence}</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function perClassTable(evaluation: TaskEvaluation): string {
  const kind = evaluation.taskType === 'multilabel' ? 'Label' : 'Class';
  const header = [kind, 'Support', 'Sensitivity', 'Specificity', 'Precision', 'F1', 'ROC-AUC', 'AP'];
  const rows = evaluation.classNames.map((name) => {
    const c = evaluation.summary.perClass[name];
    const cells = [c.sensitivity, c.specificity, c.precision, c.f1, c.rocAuc, c.prAuc].map(
      (v) => `<td class="num">${formatValue(v)}</td>`,
    );
    return `<tr><td>${escapeHtml(name)}</td><td class="num">${c.support}</td>${cells.join('')}</tr>`;
  });
  const head = header.map((h, i) => `<th${i > 0 ? ' class="num"' : ''}>${h}</th>`).join('');
  return `<table class="per-class"><thead><tr>${head}</tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function figure(id: string, title: string, svg: string, caption: string): string {
  return `<figure id="${id}"><h3>${escapeHtml(title)}</h3>${svg}<figcaption>${escapeHtml(caption)}</figcaption></figure>`;
}

/** The whole report page. */
export async function renderEvalReport(
  evaluation: TaskEvaluation,
  context: EvalReportContext,
): Promise<string> {
  const { summary, taskType } = evaluation;
  const binary = taskType === 'binary';
  const [roc, pr, confusion, calibration] = await Promise.all(
    [
      rocChartSpec(evaluation),
      precisionRecallChartSpec(evaluation),
      confusionChartSpec(evaluation),
      calibrationChartSpec(evaluation),
    ].map((spec, i) => renderVegaLiteSvg(spec, { idPrefix: `plot${i}-` })),
  );
  const curveWhat = binary
    ? `the positive class (${evaluation.classNames[1]})`
    : `each ${taskType === 'multilabel' ? 'label' : 'class'} against the rest`;
  const figures = [
    figure('roc', 'ROC curves', roc, `True against false positive rate for ${curveWhat}; dashed: chance.`),
    figure(
      'precision-recall',
      'Precision–recall curves',
      pr,
      `Precision against recall for ${curveWhat}, as the step function average precision sums.`,
    ),
    figure(
      'confusion',
      'Confusion matrix',
      confusion,
      taskType === 'multilabel'
        ? 'Per label: rows the truth, columns the decision; counts of images, shaded by the share of the row.'
        : 'Rows the true class, columns the predicted class; counts of images, shaded by the share of the row.',
    ),
    figure(
      'calibration',
      'Calibration (reliability diagram)',
      calibration,
      `Bars: fraction correct per confidence bin; dots: the bin's mean confidence; dashed: perfect calibration. Expected calibration error ${formatValue(summary.metrics.ece)}.`,
    ),
  ];
  const notes =
    summary.notes.length > 0
      ? `<h2>Notes</h2><ul class="notes">${summary.notes.map((note) => `<li>${escapeHtml(note)}</li>`).join('')}</ul>`
      : '';
  const generated = context.generatedAt ? ` on ${escapeHtml(context.generatedAt.toISOString())}` : '';
  const title = `melo eval — ${evaluation.task} on ${context.data} (${context.split})`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Evaluation: ${escapeHtml(evaluation.task)}</h1>
<p class="subtitle">${escapeHtml(`${context.data}, ${describeSplit(context.split)}, ${summary.n} images`)}</p>
${metaList(evaluation, context)}
<h2>Metrics</h2>
${metricsTable(evaluation)}
<h2>Per ${taskType === 'multilabel' ? 'label' : 'class'}</h2>
${perClassTable(evaluation)}
${notes}
<h2>Plots</h2>
<div class="figures">
${figures.join('\n')}
</div>
<footer>Made by melo${generated}.</footer>
</body>
</html>
`;
}
