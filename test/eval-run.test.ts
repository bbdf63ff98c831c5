/**
 * evaluateTask and the report pieces in-process: the backbone's own head on an image folder whose classes
 * sort differently from the head (matched by name, checked against predict()), multi-class MedMNIST with a
 * 5-class adapter, multi-label sigmoid outputs checked against a direct forward pass, exact CSV bytes, and
 * the errors for models that do not fit the data.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse } from 'csv-parse/sync';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { openDataSplits } from '../src/data/open.ts';
import { MeloError } from '../src/errors.ts';
import { renderEvalReport } from '../src/eval/report/html.ts';
import { predictionsCsv } from '../src/eval/report/predictions-csv.ts';
import { formatEvalText } from '../src/eval/report/text.ts';
import { evaluateTask, type TaskEvaluation } from '../src/eval/run.ts';
import { evaluate } from '../src/eval/summary.ts';
import { preprocess } from '../src/imaging/preprocess.ts';
import { type Adapter, initAdapter, type TaskMetadata } from '../src/model/adapter.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { type LoadedTask, predict } from '../src/predict.ts';
import { Random } from '../src/util/random.ts';

const REPO = join(import.meta.dirname, '..');
const SHARED = process.env.MELO_SHARED_DATA ?? join(REPO, '..', 'shared', 'data');
const RETINA = join(SHARED, 'medmnist', 'retinamnist.npz');
const BREAST = join(SHARED, 'medmnist', 'breastmnist.npz');
const TINY_MULTILABEL = join(REPO, 'test', 'fixtures', 'data', 'tiny_multilabel.npz');
const noData = existsSync(RETINA) && existsSync(BREAST) ? false : `no MedMNIST data under ${SHARED}`;
const FAST = { threads: 1, workers: 0 } as const;

let dir = '';
let backbone: Backbone;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-eval-run-'));
  backbone = await loadBackbone(join(REPO, 'test', 'fixtures', 'vit', 'hf'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** An in-memory task (what loadTasks returns) with non-zero LoRA B so the branch matters. */
function makeTask(metadata: TaskMetadata, seed: number): LoadedTask {
  const adapter: Adapter = initAdapter(backbone.config, MELO_LORA_DEFAULTS, metadata, new Random(seed));
  const random = new Random(seed + 1);
  for (const pair of adapter.pairs.values()) {
    for (let i = 0; i < pair.B.data.length; i++) pair.B.data[i] = random.uniform(-0.5, 0.5);
  }
  return { name: metadata.task, dir: join(dir, metadata.task), adapter, labels: [...metadata.labels] };
}

function svgOf(html: string, id: string): string {
  const match = new RegExp(`<figure id="${id}">([\\s\\S]*?)</figure>`).exec(html);
  assert.ok(match, `figure ${id}`);
  return match[1];
}

test("the backbone's head on an image folder: classes matched by name, probabilities as predict()", async () => {
  // Directory names sort as benign, malignant, normal; the head's order is normal, benign, malignant.
  const root = join(dir, 'folder');
  const files: string[] = [];
  let k = 0;
  for (const name of ['normal', 'benign', 'malignant']) {
    await mkdir(join(root, 'test', name), { recursive: true });
    for (let j = 0; j < 2; j++, k++) {
      const file = join(root, 'test', name, `image-${j}.png`);
      const pixels = Buffer.from(
        Array.from({ length: 40 * 30 * 3 }, (_, i) => (i * (17 + k * 5) + k * 31) % 256),
      );
      await sharp(pixels, { raw: { width: 40, height: 30, channels: 3 } })
        .png()
        .toFile(file);
      files.push(file);
    }
  }
  const dataset = (await openDataSplits(root, { split: 'test' })).test!;
  assert.deepEqual(dataset.classes, ['benign', 'malignant', 'normal']);
  const evaluation = await evaluateTask(backbone, 'backbone', dataset, { ...FAST, bootstrap: 0 });
  assert.equal(evaluation.task, 'backbone');
  assert.equal(evaluation.taskType, 'multiclass');
  assert.deepEqual(evaluation.summary.ci, {});
  assert.equal(evaluation.summary.bootstrap, null);
  assert.match(evaluation.summary.notes[0], /matched to the data's by name/);

  const direct = await predict(backbone, files, FAST);
  assert.equal(evaluation.rows.length, 6);
  for (const row of evaluation.rows) {
    const reference = direct[files.indexOf(row.id)];
    assert.ok(reference, row.id);
    assert.deepEqual(row.labels, [dataset.classes.indexOf(row.id.split('/').at(-2)!)]);
    evaluation.classNames.forEach((name, c) => {
      const expected = reference.probabilities[reference.labels.indexOf(name)];
      assert.ok(Math.abs(row.probabilities[c] - expected) < 1e-6, `${row.id} ${name}`);
    });
  }
});

test('multi-class RetinaMNIST with a 5-class adapter: summary, text table and report', {
  skip: noData,
}, async () => {
  const dataset = (await openDataSplits(`${RETINA}:test`, { limit: 60 })).test!;
  const task = makeTask({ task: 'retina', taskType: 'multiclass', labels: dataset.classes }, 3);
  const evaluation = await evaluateTask(backbone, task, dataset, {
    ...FAST,
    bootstrap: 50,
    seed: 2,
    batchSize: 16,
  });
  const { summary } = evaluation;
  assert.equal(summary.n, 60);
  assert.equal(summary.task, 'multiclass');
  for (const row of evaluation.rows) {
    assert.equal(row.probabilities.length, 5);
    assert.ok(Math.abs(row.probabilities.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  }
  // The summary is evaluate() of the rows, with the data's class names.
  const reference = evaluate(
    {
      task: 'multiclass',
      probabilities: evaluation.rows.map((r) => r.probabilities),
      labels: evaluation.rows.map((r) => r.labels[0]),
    },
    { classNames: dataset.classes, bootstrap: { resamples: 50, seed: 2 } },
  );
  assert.deepEqual(summary, reference);

  const text = formatEvalText(evaluation, { data: RETINA, split: 'test' });
  assert.match(text, new RegExp(`ROC-AUC \\(macro, one-vs-rest\\)\\s+${summary.metrics.rocAuc!.toFixed(3)}`));
  for (const name of dataset.classes) assert.ok(text.includes(name), name);
  assert.ok(text.includes('confusion matrix (rows true, columns predicted):'));

  const html = await renderEvalReport(evaluation, { data: RETINA, split: 'test' });
  const roc = svgOf(html, 'roc');
  for (const name of dataset.classes) {
    const auc = summary.perClass[name].rocAuc;
    assert.ok(roc.includes(`${name} (AUC ${auc!.toFixed(3)})`), `legend entry for ${name}`);
  }
  const confusion = svgOf(html, 'confusion');
  const counts = summary.confusionMatrix.flat();
  assert.equal(counts.length, 25);
  const drawn = [...confusion.matchAll(/>(\d+)<\/text>/g)].map((m) => Number(m[1]));
  for (const count of counts) assert.ok(drawn.includes(count), `count ${count}`);
  assert.equal(html.match(/<tr><td>/g)?.length, orderedRows(summary) + 5, 'metric rows + 5 class rows');
});

function orderedRows(summary: TaskEvaluation['summary']): number {
  return Object.values(summary.metrics).filter((v) => v !== undefined).length;
}

test('multi-label: sigmoid per label, as a direct forward pass; CSV joins labels; report draws 2×2 panels', async () => {
  const dataset = (await openDataSplits(TINY_MULTILABEL)).test!;
  const task = makeTask({ task: 'findings', taskType: 'multilabel', labels: dataset.classes }, 5);
  const evaluation = await evaluateTask(backbone, task, dataset, { ...FAST, bootstrap: 20 });
  assert.equal(evaluation.taskType, 'multilabel');

  const model = await TaskModel.create({
    backbone,
    method: 'lora',
    lora: task.adapter.lora,
    numClasses: 3,
    threads: 1,
  });
  try {
    for (const [i, item] of dataset.items.entries()) {
      const pixels = preprocess(await item.load(), backbone.preprocess, 3);
      const logits = (await model.run(pixels, 1, adapterFeeds(task.adapter))).data;
      const row = evaluation.rows[i];
      assert.equal(row.id, item.id);
      logits.forEach((z, c) => {
        assert.ok(Math.abs(row.probabilities[c] - 1 / (1 + Math.exp(-z))) < 1e-6, `item ${i} label ${c}`);
      });
    }
  } finally {
    await model.release();
  }

  const records = parse(predictionsCsv(evaluation), { columns: true }) as Record<string, string>[];
  assert.deepEqual(
    records.map((r) => r.true_label),
    ['0|2', '', '1', '0|1|2'],
  );
  records.forEach((record, i) => {
    const predicted = evaluation.rows[i].probabilities.flatMap((p, c) => (p >= 0.5 ? [String(c)] : []));
    assert.equal(record.predicted_label, predicted.join('|'));
    assert.deepEqual(
      ['p_0', 'p_1', 'p_2'].map((key) => Number(record[key])),
      evaluation.rows[i].probabilities,
    );
  });

  const html = await renderEvalReport(evaluation, { data: TINY_MULTILABEL, split: 'test' });
  const confusion = svgOf(html, 'confusion');
  assert.equal(evaluation.summary.confusionMatrix.length, 3);
  for (const name of dataset.classes) assert.match(confusion, new RegExp(`>${name}</text>`));
  assert.equal(confusion.match(/>absent<\/text>/g)?.length, 6, 'absent on both axes of 3 panels');
  for (const id of ['roc', 'precision-recall', 'calibration']) assert.match(svgOf(html, id), /<svg/);
});

function handMadeEvaluation(
  taskType: TaskEvaluation['taskType'],
  classNames: string[],
  rows: TaskEvaluation['rows'],
): TaskEvaluation {
  const k = classNames.length;
  const labels =
    taskType === 'multilabel'
      ? rows.map((r) => Array.from({ length: k }, (_, c) => (r.labels.includes(c) ? 1 : 0)))
      : rows.map((r) => r.labels[0]);
  const summary = evaluate(
    { task: taskType, probabilities: rows.map((r) => r.probabilities), labels },
    { classNames, bootstrap: false },
  );
  return { task: 't', taskType, classNames, summary, rows };
}

test('predictions CSV: exact bytes, quoting, shortest exact decimals, threshold rule', () => {
  const binary = handMadeEvaluation(
    'binary',
    ['no', 'yes, "really"'],
    [
      { id: 'a.png', labels: [0], probabilities: [2 / 3, 1 / 3] },
      { id: 'dir/b "x".png', labels: [1], probabilities: [0.5, 0.5] },
    ],
  );
  assert.equal(
    predictionsCsv(binary),
    'image,true_label,predicted_label,p_no,"p_yes, ""really"""\n' +
      'a.png,no,no,0.6666666666666666,0.3333333333333333\n' +
      '"dir/b ""x"".png","yes, ""really""","yes, ""really""",0.5,0.5\n',
  );
  const multilabel = handMadeEvaluation(
    'multilabel',
    ['a', 'b', 'c'],
    [
      { id: 'x', labels: [0, 2], probabilities: [0.9, 0.25, 0.5] },
      { id: 'y', labels: [], probabilities: [0.1, 0.2, 0.3] },
    ],
  );
  assert.equal(
    predictionsCsv(multilabel),
    'image,true_label,predicted_label,p_a,p_b,p_c\nx,a|c,a|c,0.9,0.25,0.5\ny,,,0.1,0.2,0.3\n',
  );
});

test('models that do not fit the data fail before inference with one-line errors', {
  skip: noData,
}, async () => {
  const breast = (await openDataSplits(`${BREAST}:test`)).test!;
  const multilabelData = (await openDataSplits(TINY_MULTILABEL)).test!;
  const cases: [() => Promise<unknown>, RegExp][] = [
    [
      () =>
        evaluateTask(
          backbone,
          makeTask({ task: 'ml', taskType: 'multilabel', labels: breast.classes }, 1),
          breast,
        ),
      /ml: adapter is multi-label \(sigmoid\) but data .*breastmnist\.npz is single-label \(binary\)$/,
    ],
    [
      () =>
        evaluateTask(
          backbone,
          makeTask({ task: 'sl', taskType: 'multiclass', labels: multilabelData.classes }, 1),
          multilabelData,
        ),
      /sl: adapter is single-label \(softmax\) but data .*tiny_multilabel\.npz is multi-label$/,
    ],
    [
      () => evaluateTask(backbone, 'backbone', breast),
      /hf: backbone's head has 3 classes \("normal", "benign", "malignant"\) but data .*breastmnist\.npz has 2/,
    ],
    [
      () =>
        evaluateTask(
          backbone,
          makeTask({ task: 'b', taskType: 'binary', labels: breast.classes }, 1),
          breast,
          {
            batchSize: 0,
          },
        ),
      /batch size must be a positive integer, got 0/,
    ],
  ];
  for (const [run, pattern] of cases) {
    await assert.rejects(run, (error: unknown) => {
      assert.ok(error instanceof MeloError, String(error));
      assert.equal(error.message.split('\n').length, 1);
      assert.match(error.message, pattern);
      return true;
    });
  }
  // Other names, not a reordering: matched by index, with a note saying so.
  const renamed = makeTask({ task: 'renamed', taskType: 'binary', labels: ['bad', 'good'] }, 1);
  const evaluation = await evaluateTask(backbone, renamed, breast, { ...FAST, bootstrap: 0 });
  assert.deepEqual(evaluation.classNames, breast.classes);
  assert.match(
    evaluation.summary.notes[0],
    /class names \("bad", "good"\) differ from the data's; classes were matched by index/,
  );
});
