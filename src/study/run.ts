import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MeloError } from '../errors.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import type { TrainingMethod } from '../model/task-graph.ts';

/** One dataset of the study, as `melo train`/`melo eval` data specs. */
export interface StudyDataset {
  readonly name: string;
  readonly modality: string;
  /** Spec with train/val/test splits. */
  readonly spec: string;
  /** MedMNIST v2's published ResNet-18 (28 px) test result, when there is one. */
  readonly reference?: { readonly accuracy: number; readonly auc: number };
  /** Extra `melo train` flags for this dataset. */
  readonly trainFlags?: readonly string[];
}

export interface StudyOptions {
  readonly backbone: string;
  readonly datasets: readonly StudyDataset[];
  readonly methods: readonly TrainingMethod[];
  readonly seeds: readonly number[];
  readonly epochs: number;
  readonly batchSize: number;
  /** Peak learning rate per method (the schedule, warm-up and augmentation are the same for all). */
  readonly lr: Readonly<Record<TrainingMethod, number>>;
  readonly outDir: string;
  /** At most this many training (and validation) images per run; the test split is always whole. */
  readonly limit?: number;
  readonly threads?: number;
  readonly log: (line: string) => void;
  /** false: only read the runs already recorded (to write the table of a partial study). */
  readonly runMissing?: boolean;
}

export interface StudyRun {
  readonly dataset: string;
  readonly method: TrainingMethod;
  readonly seed: number;
  readonly accuracy: number;
  readonly auc: number | null;
  readonly trainableParameters: number;
  readonly modelParameters: number;
  readonly savedBytes: number;
  readonly trainSeconds: number;
  readonly peakRssBytes: number;
}

const BIN = new URL('../../bin/melo.js', import.meta.url).pathname;

/**
 * Linear probing vs MeLo LoRA (r = 4 on query and value) vs full fine-tuning, each dataset × method × seed
 * trained and evaluated in its own `melo` process, so that its peak memory is its own. Results are kept in
 * `<outDir>/runs.json` after every run; a rerun skips the runs already there.
 */
export async function runStudy(options: StudyOptions): Promise<StudyRun[]> {
  await mkdir(options.outDir, { recursive: true });
  const resultsPath = join(options.outDir, 'runs.json');
  const runs: StudyRun[] = await readFile(resultsPath, 'utf8').then(
    (text) => JSON.parse(text) as StudyRun[],
    () => [],
  );
  const total = options.datasets.length * options.methods.length * options.seeds.length;
  let index = 0;
  for (const dataset of options.datasets) {
    for (const method of options.methods) {
      for (const seed of options.seeds) {
        index++;
        if (runs.some((run) => run.dataset === dataset.name && run.method === method && run.seed === seed))
          continue;
        if (options.runMissing === false) continue;
        options.log(`[${index}/${total}] ${dataset.name} ${method} seed ${seed}`);
        runs.push(await runOne(options, dataset, method, seed));
        await writeJsonAtomic(resultsPath, runs);
      }
    }
  }
  return runs;
}

async function runOne(
  options: StudyOptions,
  dataset: StudyDataset,
  method: TrainingMethod,
  seed: number,
): Promise<StudyRun> {
  const out = join(options.outDir, 'runs', `${dataset.name}-${method}-${seed}`);
  const threads = options.threads ? ['--threads', String(options.threads)] : [];
  const trained = JSON.parse(
    await melo([
      'train',
      '--backbone',
      options.backbone,
      '--data',
      dataset.spec,
      '--method',
      method,
      '--rank',
      '4',
      '--targets',
      'query,value',
      '--epochs',
      String(options.epochs),
      '--batch-size',
      String(options.batchSize),
      '--lr',
      String(options.lr[method]),
      '--warmup-steps',
      '10',
      '--class-weights',
      'balanced',
      '--seed',
      String(seed),
      '--task-name',
      dataset.name,
      '--out',
      out,
      '--json',
      ...threads,
      ...(dataset.trainFlags ?? []),
    ]),
  ) as {
    trainableParameters: number;
    trainableShare: number;
    adapterBytes: number;
    wallSeconds: number;
    peakRssBytes: number;
  };
  const evalArgs =
    method === 'full' ? ['--backbone', out] : ['--backbone', options.backbone, '--adapter', out];
  const evaluated = JSON.parse(
    await melo([
      'eval',
      ...evalArgs,
      '--data',
      dataset.spec,
      '--split',
      'test',
      '--bootstrap',
      '0',
      '--json',
      ...threads,
    ]),
  ) as { metrics: { accuracy: number; rocAuc: number | null } };
  return {
    dataset: dataset.name,
    method,
    seed,
    accuracy: evaluated.metrics.accuracy,
    auc: evaluated.metrics.rocAuc,
    trainableParameters: trained.trainableParameters,
    modelParameters: Math.round(trained.trainableParameters / trained.trainableShare),
    savedBytes: trained.adapterBytes,
    trainSeconds: trained.wallSeconds,
    peakRssBytes: trained.peakRssBytes,
  };
}

function melo(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else
        reject(
          new MeloError(
            'BAD_INPUT',
            `melo ${args[0]} failed (${code}): ${stderr.trim().split('\n').at(-1) ?? ''}`,
          ),
        );
    });
  });
}

function meanStd(values: readonly number[]): { mean: number; std: number } {
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  const variance =
    values.length > 1 ? values.reduce((s, v) => s + (v - mean) ** 2, 0) / (values.length - 1) : 0;
  return { mean, std: Math.sqrt(variance) };
}

/** The study table in Markdown: mean ± sample std over seeds, per dataset and method. */
export function studyTable(
  runs: readonly StudyRun[],
  datasets: readonly StudyDataset[],
  methods: readonly TrainingMethod[],
): string {
  const lines = [
    '| dataset | method | test ACC | test ROC-AUC | trainable parameters | share of model | saved bytes | training time | peak memory |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  const label: Record<TrainingMethod, string> = {
    linear: 'linear probe',
    lora: 'MeLo LoRA r=4 (q,v)',
    full: 'full fine-tuning',
  };
  for (const dataset of datasets) {
    for (const method of methods) {
      const group = runs.filter((run) => run.dataset === dataset.name && run.method === method);
      if (group.length === 0) continue;
      const acc = meanStd(group.map((run) => run.accuracy));
      const aucs = group.map((run) => run.auc).filter((v): v is number => v !== null);
      const auc = aucs.length > 0 ? meanStd(aucs) : null;
      const first = group[0]!;
      const time = meanStd(group.map((run) => run.trainSeconds));
      const rss = Math.max(...group.map((run) => run.peakRssBytes));
      lines.push(
        `| ${dataset.name} | ${label[method]} | ${acc.mean.toFixed(3)} ± ${acc.std.toFixed(3)} | ${auc ? `${auc.mean.toFixed(3)} ± ${auc.std.toFixed(3)}` : 'n/a'} | ${first.trainableParameters.toLocaleString('en-US')} | ${((100 * first.trainableParameters) / first.modelParameters).toFixed(2)}% | ${(first.savedBytes / 1024).toFixed(1)} KiB | ${time.mean.toFixed(0)} s | ${(rss / 2 ** 20).toFixed(0)} MiB |`,
      );
    }
    if (dataset.reference) {
      lines.push(
        `| ${dataset.name} | *MedMNIST v2 ResNet-18 (28), published* | ${dataset.reference.accuracy.toFixed(3)} | ${dataset.reference.auc.toFixed(3)} | 11.2 M (all) | 100% | | | |`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}
