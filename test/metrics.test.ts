import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { MeloError } from '../src/errors.ts';
import { bootstrapIntervals, drawResampleCounts, quantile } from '../src/eval/bootstrap.ts';
import { binIndex, expectedCalibrationError } from '../src/eval/calibration.ts';
import { confusionMatrix } from '../src/eval/confusion.ts';
import { computeMetrics } from '../src/eval/metrics.ts';
import { averagePrecision, precisionRecallCurve } from '../src/eval/precision-recall.ts';
import { type EvalInput, prepareEvaluation, type TaskType } from '../src/eval/prepare.ts';
import { rocAuc, rocCurve } from '../src/eval/roc.ts';
import { evaluate } from '../src/eval/summary.ts';
import { Random } from '../src/util/random.ts';

// Reference values from scripts/fixtures/make_metrics_fixture.py (scikit-learn 1.2.1, numpy 1.24).
type Maybe = number | null;
interface PerClassExpected {
  sensitivity: number[];
  specificity: number[];
  precision: number[];
  f1: number[];
  support: number[];
  rocAuc: Maybe[];
  prAuc: Maybe[];
}
interface Expected {
  [metric: string]: unknown;
  perClass: PerClassExpected;
  confusionMatrix: number[][] | number[][][];
  reliability: { count: number[]; meanConfidence: Maybe[]; accuracy: Maybe[] };
}
interface Case {
  task: TaskType;
  probabilities: number[][];
  labels: number[] | number[][];
  expected: Expected;
}

function fixture<T = Case>(name: string): T {
  return JSON.parse(readFileSync(new URL(`fixtures/metrics/${name}.json`, import.meta.url), 'utf8')) as T;
}

const TOLERANCE = 1e-6;

function close(actual: Maybe | undefined, expected: Maybe, what: string): void {
  if (expected === null) {
    assert.equal(actual, null, `${what}: expected null (undefined metric), got ${actual}`);
    return;
  }
  assert.ok(typeof actual === 'number', `${what}: expected ${expected}, got ${actual}`);
  assert.ok(Math.abs(actual - expected) <= TOLERANCE, `${what}: ${actual} vs sklearn ${expected}`);
}

function closeArray(actual: readonly Maybe[], expected: readonly Maybe[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) close(actual[i], expected[i], `${what}[${i}]`);
}

const SCALARS = [
  'accuracy',
  'balancedAccuracy',
  'macroSensitivity',
  'macroSpecificity',
  'macroPrecision',
  'macroF1',
  'rocAuc',
  'prAuc',
  'ece',
  'sensitivity',
  'specificity',
  'precision',
  'f1',
  'labelAccuracy',
] as const;

function checkAgainstSklearn(name: string): void {
  const c = fixture(name);
  const summary = evaluate(c, { bootstrap: false });
  const metrics: Record<string, Maybe | undefined> = summary.metrics;
  for (const metric of SCALARS) {
    if (metric in c.expected) close(metrics[metric], c.expected[metric] as Maybe, `${name} ${metric}`);
    else assert.equal(metrics[metric], undefined, `${name}: ${metric} should not be reported for ${c.task}`);
  }
  const perClass = Object.values(summary.perClass);
  for (const key of [
    'sensitivity',
    'specificity',
    'precision',
    'f1',
    'support',
    'rocAuc',
    'prAuc',
  ] as const) {
    closeArray(
      perClass.map((p) => p[key]),
      c.expected.perClass[key],
      `${name} perClass.${key}`,
    );
  }
  assert.deepEqual(summary.confusionMatrix, c.expected.confusionMatrix, `${name} confusion matrix`);
  const bins = summary.calibration;
  assert.equal(bins.length, 15);
  assert.deepEqual(
    bins.map((b) => b.count),
    c.expected.reliability.count,
    `${name} reliability counts`,
  );
  closeArray(
    bins.map((b) => b.meanConfidence),
    c.expected.reliability.meanConfidence,
    `${name} bin confidence`,
  );
  closeArray(
    bins.map((b) => b.accuracy),
    c.expected.reliability.accuracy,
    `${name} bin accuracy`,
  );
  assert.equal(summary.n, c.labels.length);
  assert.equal(summary.task, c.task);
}

for (const name of [
  'binary_ties',
  'multiclass_ordinal',
  'multilabel',
  'multilabel_absent',
  'single_class',
  'absent_class',
]) {
  test(`every metric matches scikit-learn / numpy: ${name}`, () => checkAgainstSklearn(name));
}

test('binary ROC curve matches roc_curve with and without drop_intermediate, ties as one threshold', () => {
  const c = fixture('binary_ties');
  const y = c.labels as number[];
  const p = c.probabilities.map((row) => row[1]);
  const curves = c.expected.rocCurve as Record<
    string,
    { fpr: number[]; tpr: number[]; thresholdsAfterFirst: number[] }
  >;
  for (const [key, dropIntermediate] of [
    ['drop', true],
    ['all', false],
  ] as const) {
    const curve = rocCurve(y, p, { dropIntermediate });
    closeArray(curve.fpr, curves[key].fpr, `fpr ${key}`);
    closeArray(curve.tpr, curves[key].tpr, `tpr ${key}`);
    assert.equal(curve.thresholds[0], Number.POSITIVE_INFINITY);
    closeArray(curve.thresholds.slice(1), curves[key].thresholdsAfterFirst, `thresholds ${key}`);
  }
  // one point per distinct score when nothing is dropped: ties are never split
  assert.equal(rocCurve(y, p, { dropIntermediate: false }).fpr.length, new Set(p).size + 1);
  assert.ok(rocCurve(y, p).fpr.length < new Set(p).size + 1);
  close(rocAuc(y, p), c.expected.rocAuc as number, 'rocAuc function');
});

test('binary precision-recall curve and average precision match sklearn', () => {
  const c = fixture('binary_ties');
  const y = c.labels as number[];
  const p = c.probabilities.map((row) => row[1]);
  const expected = c.expected.prCurve as { precision: number[]; recall: number[]; thresholds: number[] };
  const curve = precisionRecallCurve(y, p);
  closeArray(curve.precision, expected.precision, 'precision');
  closeArray(curve.recall, expected.recall, 'recall');
  closeArray(curve.thresholds, expected.thresholds, 'thresholds');
  close(averagePrecision(y, p), c.expected.prAuc as number, 'average precision');
  // a hand case with a tie across classes: scores 0.8 (pos), 0.5 (pos, neg tied), 0.2 (neg)
  assert.equal(rocAuc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]), 3.5 / 4);
  assert.equal(averagePrecision([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]), 0.5 * 1 + 0.5 * (2 / 3));
});

test('multi-class macro ROC-AUC equals roc_auc_score(multi_class="ovr", average="macro")', () => {
  const c = fixture('multiclass_ordinal');
  close(evaluate(c, { bootstrap: false }).metrics.rocAuc, c.expected.rocAucSklearnOvr as number, 'ovr macro');
});

test('a class absent from the labels has null AUC, is left out of the macro, and is noted', () => {
  const c = fixture('absent_class');
  const summary = evaluate(c, { bootstrap: { resamples: 50 } });
  assert.equal(summary.perClass['2'].rocAuc, null);
  assert.equal(summary.perClass['2'].prAuc, null);
  assert.equal(summary.perClass['2'].support, 0);
  const present = [0, 1, 3].map((k) => summary.perClass[String(k)].rocAuc as number);
  close(summary.metrics.rocAuc, present.reduce((a, b) => a + b) / 3, 'macro over present classes');
  assert.ok(summary.notes.some((note) => note.includes('"2"') && note.includes('ROC-AUC is undefined')));
  assert.ok(summary.ci.rocAuc !== null);
  assert.equal(JSON.parse(JSON.stringify(summary)).perClass['2'].rocAuc, null);
});

test('a single-class split does not crash: AUC null, CI null, every resample skipped', () => {
  const c = fixture('single_class');
  const summary = evaluate(c, { bootstrap: { resamples: 40, seed: 3 } });
  assert.equal(summary.metrics.rocAuc, null);
  assert.equal(summary.ci.rocAuc, null);
  assert.equal(summary.bootstrap?.skipped.rocAuc, 40);
  assert.equal(summary.bootstrap?.skipped.accuracy, 0);
  assert.ok(summary.ci.accuracy !== null);
  assert.ok(summary.notes.some((note) => note.includes('no negative samples')));
  // a single row too
  const one = evaluate(
    { task: 'multiclass', probabilities: [[0.2, 0.8]], labels: [1] },
    { bootstrap: { resamples: 5 } },
  );
  assert.equal(one.metrics.accuracy, 1);
  assert.equal(one.metrics.rocAuc, null);
  assert.deepEqual(one.ci.accuracy, [1, 1]);
});

test('binary input: one column, two columns and Float32Array give the same result', () => {
  const c = fixture('binary_ties');
  const two = evaluate(c, { bootstrap: { resamples: 30 } });
  const one = evaluate(
    { task: 'binary', labels: c.labels, probabilities: c.probabilities.map((row) => [row[1]]) },
    { bootstrap: { resamples: 30 } },
  );
  assert.deepEqual(one, two);
  // float32 values differ from the decimal ones but keep every rank and tie (calibration bins can change:
  // float32(0.4) is above the 6/15 edge)
  const flat = Float32Array.from(c.probabilities.flat());
  const f32 = evaluate({ task: 'binary', labels: c.labels, probabilities: flat }, { bootstrap: false });
  close(f32.metrics.rocAuc, c.expected.rocAuc as number, 'float32 rocAuc');
  close(f32.metrics.accuracy, c.expected.accuracy as number, 'float32 accuracy');
  close(f32.metrics.prAuc, c.expected.prAuc as number, 'float32 prAuc');
});

test('multi-class Float32Array input is read row-major with the class count from the label count', () => {
  const c = fixture('multiclass_ordinal');
  const f32 = evaluate(
    { task: 'multiclass', labels: c.labels, probabilities: Float32Array.from(c.probabilities.flat()) },
    { bootstrap: false, classNames: ['I', 'II', 'III', 'IV', 'V'] },
  );
  assert.deepEqual(Object.keys(f32.perClass), ['I', 'II', 'III', 'IV', 'V']);
  assert.deepEqual(f32.confusionMatrix, c.expected.confusionMatrix);
  close(f32.metrics.rocAuc, c.expected.rocAuc as number, 'rocAuc');
});

test('calibration bins follow the definition (m/M, (m+1)/M], including values on an edge', () => {
  assert.equal(binIndex(0, 15), 0);
  assert.equal(binIndex(1 / 15, 15), 0);
  assert.equal(binIndex(0.2, 15), 2); // 0.2 = 3/15 is the top of bin 2
  assert.equal(binIndex(0.4, 15), 5);
  assert.equal(binIndex(0.40000001, 15), 6);
  // one ulp above 11/15 is in bin 11, yet times 15 it rounds to exactly 11
  const aboveEdge = 0.7333333333333334;
  assert.ok(aboveEdge > 11 / 15 && aboveEdge * 15 === 11);
  assert.equal(binIndex(11 / 15, 15), 10);
  assert.equal(binIndex(aboveEdge, 15), 11);
  assert.equal(binIndex(1, 15), 14);
  assert.equal(binIndex(0.55, 10), 5);
  // all in one bin: |accuracy − confidence|
  assert.ok(Math.abs(expectedCalibrationError([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0]) - 0.15) < 1e-12);
});

test('quantile matches numpy.quantile (linear)', () => {
  const q = fixture<{ values: number[]; q: number[]; expected: number[] }>('quantile');
  const sorted = Float64Array.from(q.values).sort();
  q.q.forEach((p, i) => {
    assert.ok(Math.abs(quantile(sorted, p) - q.expected[i]) < 1e-12, `q=${p}`);
  });
});

test('weighted resamples equal evaluating the explicitly resampled data', () => {
  for (const name of ['binary_ties', 'multiclass_ordinal', 'multilabel', 'absent_class']) {
    const c = fixture(name);
    const prepared = prepareEvaluation(c);
    const random = new Random(11);
    for (let r = 0; r < 3; r++) {
      const counts = drawResampleCounts(random, c.labels.length);
      const indices = Array.from(counts).flatMap((count, i) => new Array<number>(count).fill(i));
      const resampled: EvalInput = {
        task: c.task,
        probabilities: indices.map((i) => c.probabilities[i]),
        labels: indices.map((i) => c.labels[i]) as number[] | number[][],
      };
      const weighted = computeMetrics(prepared, { weights: counts });
      const explicit = computeMetrics(prepareEvaluation(resampled));
      for (const [metric, value] of Object.entries(explicit.metrics)) {
        const w = (weighted.metrics as Record<string, Maybe | undefined>)[metric];
        if (value === null) assert.equal(w, null);
        else
          assert.ok(
            Math.abs((w as number) - (value as number)) < 1e-12,
            `${name} ${metric}: ${w} vs ${value}`,
          );
      }
      assert.deepEqual(weighted.confusion, explicit.confusion);
    }
  }
});

test('bootstrap: reproducible from its seed, CI brackets the estimate, agrees with a numpy bootstrap', () => {
  const c = fixture('binary_ties');
  const a = evaluate(c, { bootstrap: { resamples: 2000, seed: 5 } });
  const b = evaluate(c, { bootstrap: { resamples: 2000, seed: 5 } });
  assert.deepEqual(a.ci, b.ci);
  const short = (seed: number) => evaluate(c, { bootstrap: { resamples: 200, seed } }).ci;
  assert.deepEqual(short(5), short(5));
  assert.notDeepEqual(short(5), short(6));
  assert.deepEqual(a.bootstrap, {
    resamples: 2000,
    seed: 5,
    confidence: 0.95,
    skipped: a.bootstrap?.skipped,
  });
  for (const [metric, interval] of Object.entries(a.ci)) {
    const value = (a.metrics as Record<string, Maybe | undefined>)[metric] as number;
    assert.ok(interval !== null, metric);
    assert.ok(interval[0] <= value && value <= interval[1], `${metric}: ${value} outside [${interval}]`);
    assert.ok(interval[0] < interval[1], `${metric}: empty interval`);
  }
  // an independent numpy bootstrap with 20000 resamples; Monte Carlo error of a 2000-resample percentile is
  // about 0.005 here, so 0.02 is four of them
  const reference = c.expected.bootstrap as Record<string, [number, number]>;
  for (const metric of ['rocAuc', 'accuracy']) {
    const ci = a.ci[metric] as [number, number];
    assert.ok(
      Math.abs(ci[0] - reference[metric][0]) < 0.02,
      `${metric} low ${ci[0]} vs ${reference[metric][0]}`,
    );
    assert.ok(
      Math.abs(ci[1] - reference[metric][1]) < 0.02,
      `${metric} high ${ci[1]} vs ${reference[metric][1]}`,
    );
  }
  const narrower = evaluate(c, { bootstrap: { resamples: 500, seed: 5, confidence: 0.5 } });
  const width = (ci: [number, number] | null) => (ci as [number, number])[1] - (ci as [number, number])[0];
  assert.ok(width(narrower.ci.rocAuc) < width(a.ci.rocAuc) / 2);
});

test('bootstrap counts exactly the resamples on which a metric is undefined', () => {
  // one positive among 12: the AUC is undefined exactly when a resample misses sample 0
  const labels = [1, ...new Array<number>(11).fill(0)];
  const probabilities = labels.map((_, i) => [((i * 7) % 10) / 10]);
  const summary = evaluate(
    { task: 'binary', labels, probabilities },
    { bootstrap: { resamples: 300, seed: 9 } },
  );
  const random = new Random(9);
  let missing = 0;
  for (let r = 0; r < 300; r++) if (drawResampleCounts(random, 12)[0] === 0) missing++;
  assert.ok(missing > 50 && missing < 250);
  assert.equal(summary.bootstrap?.skipped.rocAuc, missing);
  assert.equal(summary.bootstrap?.skipped.accuracy, 0);
});

test('bootstrapIntervals takes the percentiles of the per-resample values', () => {
  const values: number[] = [];
  const intervals = bootstrapIntervals(
    4,
    (counts) => {
      const mean = (counts[0] * 1 + counts[1] * 2 + counts[2] * 3 + counts[3] * 10) / 4;
      values.push(mean);
      return { mean, never: null };
    },
    { resamples: 200, seed: 1, confidence: 0.9 },
  );
  const sorted = Float64Array.from(values).sort();
  assert.deepEqual(intervals.mean, {
    low: quantile(sorted, 0.05),
    high: quantile(sorted, 0.95),
    valid: 200,
    skipped: 0,
  });
  assert.deepEqual(intervals.never, { low: null, high: null, valid: 0, skipped: 200 });
});

test('bad inputs fail with one line naming the file', () => {
  const bad: [EvalInput, RegExp][] = [
    [{ task: 'binary', probabilities: [[0.2], [0.7]], labels: [0, 2] }, /label 1 is 2/],
    [{ task: 'binary', probabilities: [[0.2], [0.7]], labels: [0] }, /2 rows but there are 1 labels/],
    [{ task: 'multiclass', probabilities: [[0.2, 0.7]], labels: [0] }, /row 0 sums to 0\.9/],
    [{ task: 'multiclass', probabilities: [[1.2, -0.2]], labels: [0] }, /\[0\]\[0\] is 1.2/],
    [{ task: 'binary', probabilities: [[0.2, 0.3, 0.5]], labels: [0] }, /1 or 2 probability columns/],
    [{ task: 'multilabel', probabilities: [[0.2, 0.3]], labels: [[1]] }, /labels row 0 must be 2 values/],
    [{ task: 'multilabel', probabilities: [[0.2, 0.3]], labels: [[1, 2]] }, /label \[0\]\[1\] is 2/],
    [{ task: 'multiclass', probabilities: new Float32Array(5), labels: [0, 1] }, /5 values, not a multiple/],
    [{ task: 'binary', probabilities: [], labels: [] }, /no labels/],
    [{ task: 'regression' as TaskType, probabilities: [[0.5]], labels: [0] }, /task must be one of/],
  ];
  for (const [input, message] of bad) {
    assert.throws(
      () => evaluate(input, { source: 'preds.csv' }),
      (error: unknown) =>
        error instanceof MeloError &&
        error.message.startsWith('preds.csv: ') &&
        message.test(error.message) &&
        !error.message.includes('\n'),
      String(message),
    );
  }
  assert.throws(
    () => evaluate({ task: 'binary', probabilities: [[0.5]], labels: [1] }, { classNames: ['a'] }),
    /1 class names/,
  );
  assert.throws(() => rocAuc([0, 1], [0.1, Number.NaN]), /score 1 is NaN/);
  assert.throws(() => confusionMatrix([0, 3], [0, 1], 2), /sample 1 has label 3/);
});

test('summary is JSON-ready: no NaN, no Infinity, task-specific fields', () => {
  for (const name of ['binary_ties', 'multilabel_absent', 'single_class']) {
    const summary = evaluate(fixture(name), { bootstrap: { resamples: 20 } });
    const text = JSON.stringify(summary);
    assert.ok(!text.includes('NaN') && !text.includes('Infinity'));
    assert.deepEqual(JSON.parse(text), summary);
    if (summary.task === 'multilabel') {
      assert.ok(summary.confusionMatrix.every((m) => m.length === 2 && m[0].length === 2));
      assert.equal(summary.threshold, 0.5);
    }
  }
});
