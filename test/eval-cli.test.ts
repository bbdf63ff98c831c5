/**
 * `melo eval` end to end on real MedMNIST data (BreastMNIST test, 156 images, 28 px resized to the tiny
 * backbone's 32 px) with a 2-class LoRA adapter written here, checked against independent paths: the
 * metrics against evaluate() run on the CSV's probabilities, the probabilities against `predictTasks` on
 * the same pixels written out as PNG files.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { Command } from 'commander';
import { parse } from 'csv-parse/sync';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { registerEvalCommand } from '../src/cli/commands/eval.ts';
import type { Dataset } from '../src/data/dataset.ts';
import { openDataSplits } from '../src/data/open.ts';
import { evaluate } from '../src/eval/summary.ts';
import { saveAdapter } from '../src/io/peft.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { Random } from '../src/util/random.ts';
import { type CliResult, runCli } from './helpers/cli.ts';

const REPO = join(import.meta.dirname, '..');
const SHARED = process.env.MELO_SHARED_DATA ?? join(REPO, '..', 'shared', 'data');
const MEDMNIST_DIR = join(SHARED, 'medmnist');
const BREAST = join(MEDMNIST_DIR, 'breastmnist.npz');
const PATH_SUBSET = join(MEDMNIST_DIR, 'pathmnist_test_subset.npz');
const BACKBONE = join(REPO, 'test', 'fixtures', 'vit', 'hf');
const THREE_CLASS_ADAPTER = join(REPO, 'test', 'fixtures', 'vit', 'lora_adapter');
const noData = existsSync(BREAST) ? false : `no MedMNIST data at ${MEDMNIST_DIR}`;

let dir = '';
let backbone: Backbone;
let breast: Dataset;
let adapterDir = '';

/**
 * Runs `melo eval …` in a child process: through bin/melo.js once main.ts registers the command, until
 * then through a launcher that registers it on `buildProgram()` and reports errors the way main() does.
 */
async function runEval(args: readonly string[]): Promise<CliResult> {
  const main = await readFile(join(REPO, 'src', 'cli', 'main.ts'), 'utf8');
  if (main.includes('registerEvalCommand')) return runCli(['eval', ...args], { cwd: REPO });
  const launcher = join(dir, 'eval-launcher.mts');
  const src = (path: string) => JSON.stringify(pathToFileURL(join(REPO, 'src', path)).href);
  await writeFile(
    launcher,
    [
      `import { buildProgram } from ${src('cli/main.ts')};`,
      `import { registerEvalCommand } from ${src('cli/commands/eval.ts')};`,
      `import { errorMessage } from ${src('errors.ts')};`,
      'const program = buildProgram();',
      'registerEvalCommand(program);',
      'for (const command of program.commands) command.exitOverride();',
      'try { await program.parseAsync(process.argv.slice(2), { from: "user" }); }',
      'catch (error) { process.stderr.write("melo: error: " + errorMessage(error) + "\\n"); process.exitCode = 1; }',
    ].join('\n'),
  );
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', launcher, 'eval', ...args], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-eval-'));
  if (noData) return;
  backbone = await loadBackbone(BACKBONE);
  breast = (await openDataSplits(`${BREAST}:test`)).test!;
  const adapter = initAdapter(
    backbone.config,
    MELO_LORA_DEFAULTS,
    { task: 'breast', taskType: 'binary', labels: breast.classes },
    new Random(11),
  );
  // Non-zero B, so that the LoRA branch changes the logits and a path that skipped it would show.
  const random = new Random(12);
  for (const pair of adapter.pairs.values()) {
    for (let i = 0; i < pair.B.data.length; i++) pair.B.data[i] = random.uniform(-0.5, 0.5);
  }
  adapterDir = join(dir, 'breast-adapter');
  await saveAdapter(adapterDir, adapter);
});
after(() => rm(dir, { recursive: true, force: true }));

interface EvalJson {
  task: string;
  split: string;
  n: number;
  classes: string[];
  metrics: Record<string, number | null>;
  ci: Record<string, [number, number] | null>;
  perClass: Record<string, Record<string, number | null>>;
  confusionMatrix: number[][];
  calibration: unknown[];
  bootstrap: { resamples: number; seed: number } | null;
  notes: string[];
}

test('melo eval --json --predictions --report on BreastMNIST test', { skip: noData }, async () => {
  const csvPath = join(dir, 'predictions.csv');
  const htmlPath = join(dir, 'report.html');
  const result = await runEval([
    '--backbone',
    BACKBONE,
    '--adapter',
    adapterDir,
    '--data',
    BREAST,
    '--threads',
    '1',
    '--batch-size',
    '50',
    '--bootstrap',
    '200',
    '--seed',
    '7',
    '--json',
    '--predictions',
    csvPath,
    '--report',
    htmlPath,
  ]);
  assert.equal(result.code, 0, result.stderr);

  // JSON shape: the contract's fields, 156 images; official BreastMNIST test counts are 42 malignant, 114 not.
  const json = JSON.parse(result.stdout) as EvalJson;
  for (const key of ['task', 'split', 'n', 'metrics', 'perClass', 'confusionMatrix', 'ci', 'calibration']) {
    assert.ok(key in json, `JSON lacks ${key}`);
  }
  assert.equal(json.task, 'breast');
  assert.equal(json.split, 'test');
  assert.equal(json.n, 156);
  assert.deepEqual(json.classes, ['malignant', 'normal, benign']);
  assert.deepEqual(
    json.confusionMatrix.map((row) => row.reduce((a, b) => a + b, 0)),
    [42, 114],
  );
  assert.deepEqual(Object.keys(json.perClass), ['malignant', 'normal, benign']);
  assert.deepEqual(json.bootstrap && [json.bootstrap.resamples, json.bootstrap.seed], [200, 7]);
  for (const name of ['accuracy', 'rocAuc', 'prAuc', 'sensitivity', 'specificity', 'ece']) {
    assert.equal(typeof json.metrics[name], 'number', name);
    const interval = json.ci[name];
    assert.ok(interval && interval[0] <= (json.metrics[name] as number) + 1e-12, `${name} CI low`);
    assert.ok(interval && interval[1] >= (json.metrics[name] as number) - 1e-12, `${name} CI high`);
  }

  // CSV: one row per image in item order, true labels from the data, probabilities summing to 1.
  const csv = await readFile(csvPath, 'utf8');
  const records = parse(csv, { columns: true }) as Record<string, string>[];
  assert.equal(records.length, 156);
  assert.deepEqual(Object.keys(records[0]), [
    'image',
    'true_label',
    'predicted_label',
    'p_malignant',
    'p_normal, benign',
  ]);
  const probabilities = records.map((r) => [Number(r.p_malignant), Number(r['p_normal, benign'])]);
  records.forEach((record, i) => {
    assert.equal(record.image, `${BREAST}#test/${i}`);
    assert.equal(record.true_label, breast.classes[breast.items[i].labels[0]]);
    const [p0, p1] = probabilities[i];
    assert.ok(Math.abs(p0 + p1 - 1) < 1e-12, `row ${i} sums to ${p0 + p1}`);
    assert.equal(record.predicted_label, p1 >= 0.5 ? 'normal, benign' : 'malignant');
  });
  assert.ok(new Set(probabilities.map((p) => p[1])).size > 100, 'probabilities vary between images');

  // Independent path 1: evaluate() on the CSV's probabilities and labels gives the printed summary exactly.
  const labels = records.map((r) => json.classes.indexOf(r.true_label));
  const reference = evaluate(
    { task: 'binary', probabilities, labels },
    { classNames: json.classes, bootstrap: { resamples: 200, seed: 7 } },
  );
  const roundTrip = JSON.parse(JSON.stringify(reference)) as typeof reference;
  assert.deepEqual(json.metrics, roundTrip.metrics);
  assert.deepEqual(json.ci, roundTrip.ci);
  assert.deepEqual(json.perClass, roundTrip.perClass);
  assert.deepEqual(json.confusionMatrix, roundTrip.confusionMatrix);
  assert.deepEqual(json.calibration, roundTrip.calibration);

  // Independent path 2: the same pixels as PNG files through predictTasks (file reading, preparePixels).
  const picked = [0, 1, 2, 77, 155];
  const files = await Promise.all(
    picked.map(async (i) => {
      const image = await breast.items[i].load();
      const file = join(dir, `breast-${i}.png`);
      const bytes = Buffer.from(Uint8Array.from(image.data, (v) => Math.round(v * 255)));
      await sharp(bytes, { raw: { width: image.width, height: image.height, channels: image.channels } })
        .png()
        .toFile(file);
      return file;
    }),
  );
  const tasks = await loadTasks(backbone, [adapterDir]);
  const direct = await predictTasks(backbone, tasks, files, { threads: 1 });
  picked.forEach((i, j) => {
    for (let c = 0; c < 2; c++) {
      const diff = Math.abs(direct[j].probabilities[c] - probabilities[i][c]);
      assert.ok(
        diff < 1e-5,
        `image ${i} class ${c}: predict ${direct[j].probabilities[c]} vs eval ${probabilities[i][c]}`,
      );
    }
  });

  // HTML: self-contained, one inline SVG per plot, the metric values and intervals in the table.
  const html = await readFile(htmlPath, 'utf8');
  assert.ok(html.startsWith('<!DOCTYPE html>'));
  for (const forbidden of [/<script/i, /<link/i, /<iframe/i, /<img/i, /\bsrc=/i, /@import/i, /url\((?!#)/i]) {
    assert.doesNotMatch(html, forbidden);
  }
  // Local references only, and the SVGs' ids are distinct across the page so they cannot capture each other's.
  assert.doesNotMatch(html, /href="(?!#)/);
  for (const [, target] of html.matchAll(/(?:href="|url\()#([^")]+)/g)) {
    assert.ok(html.includes(`id="${target}"`), `reference to #${target}`);
  }
  const ids = [...html.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]);
  assert.equal(new Set(ids).size, ids.length, 'distinct ids');
  // The only URLs are SVG namespace names, which are never fetched.
  const urls = html.match(/https?:\/\/[^\s"'<>]+/g) ?? [];
  assert.deepEqual([...new Set(urls)].sort(), ['http://www.w3.org/1999/xlink', 'http://www.w3.org/2000/svg']);
  for (const id of ['roc', 'precision-recall', 'confusion', 'calibration']) {
    const figure = new RegExp(`<figure id="${id}">([\\s\\S]*?)</figure>`).exec(html);
    assert.ok(figure, `figure ${id}`);
    assert.equal(figure[1].match(/<svg/g)?.length, 1, `one svg in ${id}`);
  }
  const metricRow = (label: string, name: string) => {
    const value = (json.metrics[name] as number).toFixed(3);
    const [low, high] = (json.ci[name] as [number, number]).map((v) => v.toFixed(3));
    return `<td>${label}</td><td class="num">${value}</td><td class="num ci">${low}–${high}</td>`;
  };
  assert.ok(html.includes(metricRow('ROC-AUC', 'rocAuc')), 'ROC-AUC row');
  assert.ok(html.includes(metricRow('Accuracy', 'accuracy')), 'accuracy row');
  assert.ok(
    html.includes(metricRow('Sensitivity (positive: normal, benign)', 'sensitivity')),
    'sensitivity row',
  );
  assert.ok(html.includes(`AUC ${(json.metrics.rocAuc as number).toFixed(3)}`), 'AUC in the ROC legend');
  // Every confusion count is drawn as a text mark in its SVG.
  const confusionSvg = /<figure id="confusion">([\s\S]*?)<\/figure>/.exec(html)![1];
  for (const count of json.confusionMatrix.flat()) assert.match(confusionSvg, new RegExp(`>${count}</text>`));
});

function assertOneLineError(result: CliResult, ...parts: string[]): void {
  assert.equal(result.code, 1, result.stdout);
  const message = result.stderr.trim();
  assert.equal(message.split('\n').length, 1, `one line: ${message}`);
  assert.match(message, /^melo: error: /);
  for (const part of parts) assert.ok(message.includes(part), `'${part}' in: ${message}`);
}

test('melo eval: an adapter with another class count is a one-line error naming both', {
  skip: noData,
}, async () => {
  const csvPath = join(dir, 'mismatch.csv');
  const result = await runEval([
    '--backbone',
    BACKBONE,
    '--adapter',
    THREE_CLASS_ADAPTER,
    '--data',
    `${BREAST}:test`,
    '--predictions',
    csvPath,
  ]);
  assertOneLineError(
    result,
    THREE_CLASS_ADAPTER,
    'has 3 classes ("normal", "benign", "malignant")',
    BREAST,
    'has 2 ("malignant", "normal, benign")',
  );
  assert.equal(existsSync(csvPath), false, 'no predictions written');
});

test('melo eval: a split the data lacks is a one-line error naming the file', { skip: noData }, async () => {
  // In-process (no child to start): the error main() would print is the message's first line.
  const program = new Command('melo').exitOverride();
  registerEvalCommand(program);
  for (const command of program.commands) command.exitOverride();
  const args = ['eval', '--backbone', BACKBONE, '--data', PATH_SUBSET, '--split', 'val', '--json'];
  await assert.rejects(program.parseAsync(args, { from: 'user' }), (error: Error) => {
    assert.equal(error.message.split('\n').length, 1, error.message);
    assert.ok(error.message.startsWith(`${PATH_SUBSET}: `), error.message);
    assert.match(error.message, /split val/);
    return true;
  });
});
