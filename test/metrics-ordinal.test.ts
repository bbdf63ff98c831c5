import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { computeMetrics } from '../src/eval/metrics.ts';
import { prepareEvaluation } from '../src/eval/prepare.ts';
import { renderEvalReport } from '../src/eval/report/html.ts';
import { formatEvalText } from '../src/eval/report/text.ts';
import { evaluate } from '../src/eval/summary.ts';

interface OrdinalFixture {
  probabilities: number[][];
  labels: number[];
  expected: { quadraticKappa: number; meanGradeError: number };
  weighted: { weights: number[]; expected: { quadraticKappa: number; meanGradeError: number } }[];
}

const fixture = JSON.parse(
  await readFile(new URL('./fixtures/metrics/ordinal.json', import.meta.url), 'utf8'),
) as OrdinalFixture;
const input = { task: 'multiclass' as const, probabilities: fixture.probabilities, labels: fixture.labels };

test('ordinal grades: quadratic weighted kappa and mean grade error equal scikit-learn, weighted too', () => {
  const summary = evaluate(input, { ordinal: true, bootstrap: false });
  assert.ok(Math.abs(summary.metrics.quadraticKappa! - fixture.expected.quadraticKappa) < 1e-12);
  assert.ok(Math.abs(summary.metrics.meanGradeError! - fixture.expected.meanGradeError) < 1e-12);
  // Bootstrap resamples weight the samples by their multiplicities: sklearn's sample_weight.
  const prepared = prepareEvaluation(input);
  for (const { weights, expected } of fixture.weighted) {
    const { metrics } = computeMetrics(prepared, { weights, ordinal: true });
    assert.ok(Math.abs(metrics.quadraticKappa! - expected.quadraticKappa) < 1e-12, 'kappa, weighted');
    assert.ok(Math.abs(metrics.meanGradeError! - expected.meanGradeError) < 1e-12, 'grade error, weighted');
  }
  // Not asked for: not there.
  assert.equal(evaluate(input, { bootstrap: false }).metrics.quadraticKappa, undefined);
});

test('ordinal metrics get bootstrap intervals around the point, and appear in the text and HTML reports', async () => {
  const summary = evaluate(input, { ordinal: true, bootstrap: { resamples: 200, seed: 3 } });
  for (const name of ['quadraticKappa', 'meanGradeError'] as const) {
    const interval = summary.ci[name]!;
    assert.ok(interval[0] < summary.metrics[name]! && summary.metrics[name]! < interval[1], name);
  }
  const classNames = ['0', '1', '2', '3', '4'];
  const evaluation = { task: 'fundus', taskType: 'multiclass' as const, classNames, summary, rows: [] };
  const text = formatEvalText(evaluation, { data: 'retina.npz', split: 'test' });
  assert.match(text, /^Quadratic weighted kappa\s+0\.849\s+\d\.\d{3}–\d\.\d{3}$/m);
  assert.match(text, /^Mean absolute grade error\s+0\.471\s+/m);
  const html = await renderEvalReport(evaluation, {
    data: 'retina.npz',
    split: 'test',
    backbone: 'b',
    generatedAt: new Date(0),
  });
  assert.match(html, /Quadratic weighted kappa/);
  assert.match(html, /Mean absolute grade error/);
});
