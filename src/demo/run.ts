import { mkdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { type Backbone, loadBackbone } from '../checkpoints/load.ts';
import type { DataSplits } from '../data/dataset.ts';
import { subsample } from '../data/split.ts';
import { MeloError } from '../errors.ts';
import { escapeHtml, renderEvalReport } from '../eval/report/html.ts';
import { evaluateTask } from '../eval/run.ts';
import { DEFAULT_AUGMENT } from '../imaging/augment.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { MELO_LORA_DEFAULTS } from '../model/lora-config.ts';
import { loadTasks } from '../predict.ts';
import type { TrainEvent } from '../train/trainer.ts';
import { train } from '../train/trainer.ts';
import { formatLabels } from '../util/labels.ts';
import { plural } from '../util/plural.ts';
import { DEMO_TASKS, type DemoSources, type DemoTask } from './tasks.ts';

export interface DemoOptions {
  readonly backbone: string;
  readonly outDir: string;
  readonly sources: DemoSources;
  readonly epochs: number;
  readonly batchSize: number;
  readonly lr: number;
  /** At most this many training images per task (seeded, stratified), to keep the demo short. */
  readonly trainLimit?: number;
  readonly threads?: number;
  /** Only these task names (default: all four). */
  readonly only?: readonly string[];
  readonly log: (line: string) => void;
  readonly onTrainEvent?: (event: TrainEvent) => void;
}

export interface DemoRow {
  readonly task: string;
  readonly modality: string;
  readonly testImages: number;
  readonly accuracy: number;
  readonly auc: number | null;
  readonly loraParameters: number;
  readonly headParameters: number;
  readonly adapterBytes: number;
  readonly trainSeconds: number;
  readonly report: string;
}

/**
 * The one-command demo: on the shipped backbone, train a MeLo adapter (LoRA r = 4 on query and value,
 * plus the head) for each of four tasks in four modalities, evaluate each on its test split, write one
 * HTML report per task and an index, and return the table.
 */
export async function runDemo(options: DemoOptions): Promise<DemoRow[]> {
  const backbone = await loadBackbone(options.backbone);
  const tasks = options.only ? DEMO_TASKS.filter((task) => options.only!.includes(task.name)) : DEMO_TASKS;
  if (tasks.length === 0)
    throw new MeloError(
      'USAGE',
      `no demo task matches ${options.only?.join(', ')}; tasks: ${DEMO_TASKS.map((t) => t.name).join(', ')}`,
    );
  const adaptersDir = join(options.outDir, 'adapters');
  const reportsDir = join(options.outDir, 'reports');
  await mkdir(adaptersDir, { recursive: true });
  await mkdir(reportsDir, { recursive: true });
  // Every task's data first: a missing file or an offline download fails now, not after minutes of
  // training the tasks before it.
  const data: DataSplits[] = [];
  for (const task of tasks) data.push(await openTaskData(task, options));
  const rows: DemoRow[] = [];
  for (const [index, task] of tasks.entries()) {
    options.log(`\n[${index + 1}/${tasks.length}] ${task.name} — ${task.modality}`);
    rows.push(await runTask(task, data[index]!, backbone, options, adaptersDir, reportsDir));
  }
  const indexPath = join(options.outDir, 'report.html');
  await writeFileAtomic(indexPath, renderIndex(rows, options, backbone));
  return rows;
}

/** Opens one task's splits (downloading when needed) and applies the training-image cap. */
async function openTaskData(task: DemoTask, options: DemoOptions): Promise<DataSplits> {
  const opened = await task.open(options.sources, options.log);
  const splits =
    options.trainLimit && opened.train && opened.train.items.length > options.trainLimit
      ? { ...opened, train: subsample(opened.train, options.trainLimit, options.sources.seed) }
      : opened;
  if (!splits.train || !splits.test)
    throw new MeloError('BAD_DATA', `${task.name}: the data needs train and test splits`);
  return splits;
}

async function runTask(
  task: DemoTask,
  splits: DataSplits,
  backbone: Backbone,
  options: DemoOptions,
  adaptersDir: string,
  reportsDir: string,
): Promise<DemoRow> {
  if (!splits.train || !splits.test)
    throw new MeloError('BAD_DATA', `${task.name}: the data needs train and test splits`);
  options.log(
    `train ${splits.train.items.length}, val ${splits.val?.items.length ?? 0}, test ${splits.test.items.length} images; ${formatLabels(splits.train.classes)}`,
  );
  const outDir = join(adaptersDir, task.name);
  const summary = await train({
    backbone,
    train: splits.train,
    ...(splits.val ? { val: splits.val } : {}),
    method: 'lora',
    lora: MELO_LORA_DEFAULTS,
    optimizer: { kind: 'adamw', weightDecay: 0.01 },
    schedule: { kind: 'cosine', lr: options.lr, warmupSteps: 10 },
    maxGradNorm: 1,
    labelSmoothing: 0,
    classWeights: 'balanced',
    epochs: options.epochs,
    batchSize: options.batchSize,
    gradAccum: 1,
    shuffle: true,
    augment: { ...DEFAULT_AUGMENT, randomResizedCrop: { scale: [0.85, 1], ratio: [0.9, 1.1] } },
    seed: options.sources.seed,
    ...(options.threads ? { threads: options.threads } : {}),
    taskName: task.name,
    outDir,
    metric: 'auc',
    patience: 0,
    resume: false,
    ...(task.positive !== undefined ? { positive: task.positive } : {}),
    ...(task.ordinal ? { ordinal: true } : {}),
    ...(options.onTrainEvent ? { onEvent: options.onTrainEvent } : {}),
  });
  const [loaded] = await loadTasks(backbone, [outDir]);
  options.log('evaluating on the test split…');
  const evaluation = await evaluateTask(backbone, loaded!, splits.test, {
    ...(options.threads ? { threads: options.threads } : {}),
    bootstrap: 1000,
    seed: 0,
  });
  const report = join(reportsDir, `${task.name}.html`);
  await writeFileAtomic(
    report,
    await renderEvalReport(evaluation, {
      data: splits.test.source,
      split: 'test',
      backbone: options.backbone,
      adapter: outDir,
    }),
  );
  const metrics = evaluation.summary.metrics;
  options.log(
    `test accuracy ${metrics.accuracy.toFixed(3)}, ROC-AUC ${metrics.rocAuc === null ? 'n/a' : metrics.rocAuc.toFixed(3)}; report: ${report}`,
  );
  return {
    task: task.name,
    modality: task.modality,
    testImages: splits.test.items.length,
    accuracy: metrics.accuracy,
    auc: metrics.rocAuc,
    loraParameters: summary.loraParameters,
    headParameters: summary.headParameters,
    adapterBytes: (await stat(join(outDir, 'adapter_model.safetensors'))).size,
    trainSeconds: summary.wallSeconds,
    report,
  };
}

export function formatDemoTable(rows: readonly DemoRow[]): string {
  const header = [
    'task',
    'modality',
    'test ACC',
    'test AUC',
    'trainable (LoRA + head)',
    'adapter',
    'training',
  ];
  const body = rows.map((row) => [
    row.task,
    row.modality,
    row.accuracy.toFixed(3),
    row.auc === null ? 'n/a' : row.auc.toFixed(3),
    `${row.loraParameters.toLocaleString('en-US')} + ${row.headParameters.toLocaleString('en-US')}`,
    `${(row.adapterBytes / 1024).toFixed(1)} KiB`,
    `${row.trainSeconds.toFixed(0)} s`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    `${cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd()}\n`;
  return line(header) + line(widths.map((w) => '-'.repeat(w))) + body.map(line).join('');
}

function renderIndex(rows: readonly DemoRow[], options: DemoOptions, backbone: Backbone): string {
  const cells = rows
    .map(
      (row) =>
        `<tr><td><a href="${escapeHtml(relative(options.outDir, row.report))}">${escapeHtml(row.task)}</a></td><td>${escapeHtml(row.modality)}</td><td>${row.testImages}</td><td>${row.accuracy.toFixed(3)}</td><td>${row.auc === null ? 'n/a' : row.auc.toFixed(3)}</td><td>${row.loraParameters.toLocaleString('en-US')} + ${row.headParameters}</td><td>${(row.adapterBytes / 1024).toFixed(1)} KiB</td><td>${row.trainSeconds.toFixed(0)} s</td></tr>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>melo demo: one backbone, four tasks</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#1d2430}table{border-collapse:collapse;width:100%}th,td{padding:.4rem .6rem;border-bottom:1px solid #d5dae1;text-align:left}th{background:#f2f4f7}td:nth-child(n+3){font-variant-numeric:tabular-nums}code{background:#f2f4f7;padding:.1rem .3rem;border-radius:3px}</style></head>
<body><h1>melo demo: one frozen backbone, four clinical tasks</h1>
<p>Backbone <code>${escapeHtml(options.backbone)}</code> (${backbone.config.depth} blocks, width ${backbone.config.hiddenSize}, ${backbone.config.imageSize.join('×')} px), frozen. Each task trained a MeLo adapter: LoRA rank 4 on the query and value projections of every block, plus its head, for ${plural(options.epochs, 'epoch')}. Metrics are on each dataset's test split; each task's report has 95% bootstrap intervals, ROC and PR curves, the confusion matrix and calibration.</p>
<table><thead><tr><th>task</th><th>modality</th><th>test images</th><th>ACC</th><th>ROC-AUC</th><th>trainable (LoRA + head)</th><th>adapter</th><th>training</th></tr></thead><tbody>
${cells}
</tbody></table>
<p>Serve all tasks from one process: <code>melo serve --backbone ${escapeHtml(options.backbone)} --adapters ${escapeHtml(join(options.outDir, 'adapters'))}</code></p>
</body></html>
`;
}
