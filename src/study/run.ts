import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MeloError } from '../errors.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import { ADAPTER_WEIGHTS_FILE } from '../io/peft.ts';
import type { BackbonePrecision } from '../model/backbone.ts';
import type { TrainingMethod } from '../model/task-graph.ts';
import { checkpointPath } from '../train/checkpoint.ts';
import { pathExists } from '../util/fs.ts';
import { type LoraVariant, MELO_VARIANT, type StudyProtocol, variantKey, variantLabel } from './protocols.ts';

/** One dataset of the study, as `melo train`/`melo eval` data specs. */
export interface StudyDataset {
  readonly name: string;
  readonly modality: string;
  /** Spec with train/val/test splits. */
  readonly spec: string;
  /** Published results on the same test split, for context (MedMNIST v2 ResNet-18, MedMNIST+ ViT-B/16). */
  readonly references?: readonly PublishedReference[];
  /** The labels are ordered grades: train and eval with --ordinal (quadratic weighted kappa). */
  readonly ordinal?: boolean;
  /** Extra `melo train` flags for this dataset. */
  readonly trainFlags?: readonly string[];
}

export interface StudyOptions {
  readonly backbone: string;
  readonly datasets: readonly StudyDataset[];
  readonly methods: readonly TrainingMethod[];
  readonly seeds: readonly number[];
  /** The training budget; `epochs`, `batchSize` and `limit` below override its own. */
  readonly protocol: StudyProtocol;
  readonly epochs: number;
  readonly batchSize: number;
  readonly outDir: string;
  /** At most this many training (and validation) images per run; the test split is always whole. */
  readonly limit?: number;
  /** LoRA configurations to run for method `lora` (default: MeLo's rank 4 on query and value). */
  readonly variants?: readonly LoraVariant[];
  readonly threads?: number;
  /**
   * Backbone precisions (default fp32 only). With 'int8', every LoRA and full fine-tuning run is also
   * trained through the int8 backbone, and every fp32-trained LoRA adapter is also evaluated through it.
   */
  readonly precisions?: readonly BackbonePrecision[];
  readonly log: (line: string) => void;
  /** false: only read the runs already recorded (to write the table of a partial study). */
  readonly runMissing?: boolean;
}

export interface StudyRun {
  readonly dataset: string;
  readonly method: TrainingMethod;
  readonly seed: number;
  /** The protocol that trained it (runs written before protocols existed were 'small-budget'). */
  readonly protocol?: string;
  /** LoRA rank and targets (method lora only; absent means MeLo's r = 4 on query and value). */
  readonly variant?: LoraVariant;
  readonly accuracy: number;
  readonly auc: number | null;
  /** Quadratic weighted kappa, for ordinal tasks. */
  readonly kappa?: number | null;
  /** The backbone precision it was trained and evaluated with (absent: fp32). */
  readonly precision?: 'int8';
  /** An fp32-trained adapter's test metrics through the int8 backbone (studies run with --int8). */
  readonly int8Eval?: TestMetrics;
  readonly trainableParameters: number;
  readonly modelParameters: number;
  readonly savedBytes: number;
  readonly trainSeconds: number;
  readonly peakRssBytes: number;
}

export interface TestMetrics {
  readonly accuracy: number;
  readonly auc: number | null;
  readonly kappa: number | null;
}

const BIN = new URL('../../bin/melo.js', import.meta.url).pathname;

/** One run of the study: a dataset, a method (with its LoRA variant), a seed. */
interface PlannedRun {
  readonly dataset: StudyDataset;
  readonly method: TrainingMethod;
  readonly seed: number;
  readonly variant?: LoraVariant;
  readonly precision?: 'int8';
}

/**
 * The runs of a study in the order they execute: dataset, then method (LoRA variants in turn, each at
 * every precision asked for), then seed.
 */
export function planStudy(options: StudyOptions): PlannedRun[] {
  const plan: PlannedRun[] = [];
  for (const dataset of options.datasets) {
    for (const method of options.methods) {
      const variants = method === 'lora' && options.variants ? options.variants : [undefined];
      // int8 trains through the backbone in both methods that back-propagate through it: LoRA (frozen,
      // quantised once) and full fine-tuning (SwitchBack, quantised at every step).
      const int8 = method !== 'linear' && (options.precisions ?? []).includes('int8');
      for (const variant of variants) {
        for (const precision of int8 ? [undefined, 'int8' as const] : [undefined]) {
          for (const seed of options.seeds)
            plan.push({
              dataset,
              method,
              seed,
              ...(variant ? { variant } : {}),
              ...(precision ? { precision } : {}),
            });
        }
      }
    }
  }
  return plan;
}

function sameRun(run: StudyRun, planned: PlannedRun): boolean {
  return (
    run.dataset === planned.dataset.name &&
    run.method === planned.method &&
    run.seed === planned.seed &&
    run.precision === planned.precision &&
    (planned.method !== 'lora' ||
      variantKey(run.variant ?? MELO_VARIANT) === variantKey(planned.variant ?? MELO_VARIANT))
  );
}

/**
 * Each dataset × method (× LoRA variant) × seed is trained and evaluated in its own `melo` process, so that
 * its peak memory is its own. Results are kept in `<outDir>/runs.json` after every run; a rerun skips the
 * runs already there and resumes an interrupted one from its checkpoint. One output directory holds one
 * protocol's runs: mixing budgets in one table would be meaningless, so that is refused.
 */
export async function runStudy(options: StudyOptions): Promise<StudyRun[]> {
  await mkdir(options.outDir, { recursive: true });
  const resultsPath = join(options.outDir, 'runs.json');
  const runs: StudyRun[] = await readFile(resultsPath, 'utf8').then(
    (text) => JSON.parse(text) as StudyRun[],
    () => [],
  );
  const foreign = runs.find((run) => (run.protocol ?? 'small-budget') !== options.protocol.name);
  if (foreign)
    throw new MeloError(
      'USAGE',
      `holds runs of protocol '${foreign.protocol ?? 'small-budget'}', not '${options.protocol.name}' (use another --out)`,
      { file: resultsPath },
    );
  const plan = planStudy(options);
  for (const [index, planned] of plan.entries()) {
    if (options.runMissing === false) continue;
    const at = runs.findIndex((run) => sameRun(run, planned));
    const recorded = runs[at];
    if (recorded && !wantsInt8Eval(options, recorded)) continue;
    const progress = `[${index + 1}/${plan.length}] ${describeRun(planned)}`;
    if (recorded && (await pathExists(join(runDirectory(options, planned), ADAPTER_WEIGHTS_FILE)))) {
      options.log(`${progress}: evaluated through the int8 backbone`);
      runs[at] = { ...recorded, int8Eval: await evaluate(options, planned, 'int8') };
    } else {
      // Not recorded yet, or recorded without the adapter an int8 evaluation needs (runs copied from
      // another machine): train it (again; the study is deterministic for its seeds and threads).
      options.log(
        recorded ? `${progress}: retrained for its int8 evaluation (adapter not in --out)` : progress,
      );
      const result = await runOne(options, planned);
      if (recorded && (result.accuracy !== recorded.accuracy || result.auc !== recorded.auc))
        options.log(
          `${progress}: the retrained run differs from its record (accuracy ${recorded.accuracy} → ${result.accuracy}, AUC ${recorded.auc} → ${result.auc}); the new result replaces it`,
        );
      if (recorded) runs[at] = result;
      else runs.push(result);
    }
    await writeJsonAtomic(resultsPath, runs);
  }
  return runs;
}

/** In an --int8 study, every fp32-trained LoRA adapter is also evaluated through the int8 backbone. */
function evaluatedAtInt8(
  options: StudyOptions,
  run: { readonly method: TrainingMethod; readonly precision?: 'int8' },
): boolean {
  return (options.precisions ?? []).includes('int8') && run.method === 'lora' && run.precision === undefined;
}

/** A recorded run of an --int8 study that still lacks its evaluation through the int8 backbone. */
function wantsInt8Eval(options: StudyOptions, run: StudyRun): boolean {
  return evaluatedAtInt8(options, run) && run.int8Eval === undefined;
}

function describeRun(run: PlannedRun): string {
  const variant = run.variant ? ` ${variantLabel(run.variant)}` : '';
  const precision = run.precision ? ` ${run.precision}` : '';
  return `${run.dataset.name} ${run.method}${variant}${precision} seed ${run.seed}`;
}

/** The `melo train` arguments of one run (without the output directory). */
export function trainArguments(options: StudyOptions, planned: PlannedRun): string[] {
  const variant = planned.variant ?? MELO_VARIANT;
  const limit = options.limit ?? options.protocol.limit;
  return [
    '--backbone',
    options.backbone,
    '--data',
    planned.dataset.spec,
    '--method',
    planned.method,
    '--rank',
    String(variant.rank),
    '--alpha',
    String(variant.rank),
    '--targets',
    variant.targets.join(','),
    '--epochs',
    String(options.epochs),
    '--batch-size',
    String(options.batchSize),
    '--lr',
    String(options.protocol.lr[planned.method]),
    ...options.protocol.trainFlags,
    ...(limit !== undefined ? ['--limit', String(limit)] : []),
    '--seed',
    String(planned.seed),
    '--task-name',
    planned.dataset.name,
    ...(options.threads ? ['--threads', String(options.threads)] : []),
    ...(planned.dataset.ordinal ? ['--ordinal'] : []),
    ...(planned.precision ? ['--backbone-precision', planned.precision] : []),
    ...(planned.dataset.trainFlags ?? []),
  ];
}

function runDirectory(options: StudyOptions, planned: PlannedRun): string {
  const variant = planned.variant ? `-${variantKey(planned.variant)}` : '';
  const precision = planned.precision ? `-${planned.precision}` : '';
  return join(
    options.outDir,
    'runs',
    `${planned.dataset.name}-${planned.method}${variant}${precision}-${planned.seed}`,
  );
}

async function runOne(options: StudyOptions, planned: PlannedRun): Promise<StudyRun> {
  const out = runDirectory(options, planned);
  // A run interrupted mid-training left its resumable checkpoint: continue it rather than start over.
  // Without one, whatever the directory holds is a run finished but never recorded: train it afresh.
  const interrupted = await pathExists(checkpointPath(out));
  const trained = JSON.parse(
    await melo([
      'train',
      ...trainArguments(options, planned),
      '--out',
      out,
      ...(interrupted ? ['--resume', out] : ['--force']),
      '--json',
    ]),
  ) as {
    trainableParameters: number;
    trainableShare: number;
    adapterBytes: number;
    wallSeconds: number;
    peakRssBytes: number;
  };
  const tested = await evaluate(options, planned, planned.precision ?? 'fp32');
  return {
    dataset: planned.dataset.name,
    method: planned.method,
    seed: planned.seed,
    protocol: options.protocol.name,
    ...(planned.variant ? { variant: planned.variant } : {}),
    ...(planned.precision ? { precision: planned.precision } : {}),
    ...tested,
    ...(evaluatedAtInt8(options, planned) ? { int8Eval: await evaluate(options, planned, 'int8') } : {}),
    trainableParameters: trained.trainableParameters,
    modelParameters: Math.round(trained.trainableParameters / trained.trainableShare),
    savedBytes: trained.adapterBytes,
    trainSeconds: trained.wallSeconds,
    peakRssBytes: trained.peakRssBytes,
  };
}

/** `melo eval` of a trained run on the whole test split, through the backbone at `precision`. */
async function evaluate(
  options: StudyOptions,
  planned: PlannedRun,
  precision: BackbonePrecision,
): Promise<TestMetrics> {
  const out = runDirectory(options, planned);
  const model =
    planned.method === 'full' ? ['--backbone', out] : ['--backbone', options.backbone, '--adapter', out];
  const evaluated = JSON.parse(
    await melo([
      'eval',
      ...model,
      '--data',
      planned.dataset.spec,
      '--split',
      'test',
      '--bootstrap',
      '0',
      '--json',
      ...(planned.dataset.ordinal ? ['--ordinal'] : []),
      ...(precision === 'int8' ? ['--backbone-precision', 'int8'] : []),
      ...(options.threads ? ['--threads', String(options.threads)] : []),
    ]),
  ) as { metrics: { accuracy: number; rocAuc: number | null } & Record<string, unknown> };
  return {
    accuracy: evaluated.metrics.accuracy,
    auc: evaluated.metrics.rocAuc,
    kappa: quadraticKappa(evaluated.metrics),
  };
}

/** The eval JSON's quadratic weighted kappa, present for ordinal tasks. */
function quadraticKappa(metrics: Record<string, unknown>): number | null {
  return typeof metrics.quadraticKappa === 'number' ? metrics.quadraticKappa : null;
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

/** A published result shown beside the study's rows for context (never computed here). */
export interface PublishedReference {
  readonly label: string;
  readonly accuracy: number;
  readonly auc: number;
  readonly parameters: string;
}

const METHOD_LABEL: Record<TrainingMethod, string> = {
  linear: 'linear probe',
  lora: 'MeLo LoRA r=4 (q,v)',
  full: 'full fine-tuning',
};

function isMeloLora(run: StudyRun): boolean {
  return run.method === 'lora' && variantKey(run.variant ?? MELO_VARIANT) === variantKey(MELO_VARIANT);
}

/** The fp32 runs of one dataset and method (MeLo's own LoRA configuration only). */
function methodRuns(runs: readonly StudyRun[], dataset: string, method: TrainingMethod): StudyRun[] {
  return runs.filter(
    (run) =>
      run.dataset === dataset &&
      run.method === method &&
      run.precision === undefined &&
      (method !== 'lora' || isMeloLora(run)),
  );
}

function formatMeanStd(values: readonly number[]): string {
  if (values.length === 0) return 'n/a';
  const { mean, std } = meanStd(values);
  return `${mean.toFixed(3)} ± ${std.toFixed(3)}`;
}

function aucs(group: readonly StudyRun[]): number[] {
  return group.map((run) => run.auc).filter((v): v is number => v !== null);
}

/** The study table in Markdown: mean ± sample std over seeds, per dataset and method. */
export function studyTable(
  runs: readonly StudyRun[],
  datasets: readonly StudyDataset[],
  methods: readonly TrainingMethod[],
): string {
  const lines = [
    '| dataset | method | seeds | test ACC | test ROC-AUC | trainable parameters | share of model | saved bytes | training time | peak memory |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const dataset of datasets) {
    for (const method of methods) {
      const group = methodRuns(runs, dataset.name, method);
      if (group.length === 0) continue;
      const first = group[0]!;
      const time = meanStd(group.map((run) => run.trainSeconds));
      const rss = Math.max(...group.map((run) => run.peakRssBytes));
      lines.push(
        `| ${dataset.name} | ${METHOD_LABEL[method]} | ${group.length} | ${formatMeanStd(group.map((run) => run.accuracy))} | ${formatMeanStd(aucs(group))} | ${first.trainableParameters.toLocaleString('en-US')} | ${((100 * first.trainableParameters) / first.modelParameters).toFixed(2)}% | ${(first.savedBytes / 1024).toFixed(1)} KiB | ${time.mean.toFixed(0)} s | ${(rss / 2 ** 20).toFixed(0)} MiB |`,
      );
    }
    for (const reference of dataset.references ?? []) {
      lines.push(
        `| ${dataset.name} | *${reference.label}* | | ${reference.accuracy.toFixed(3)} | ${reference.auc.toFixed(3)} | ${reference.parameters} | | | | |`,
      );
    }
  }
  return `${lines.join('\n')}\n${loraVersusFull(runs, datasets)}`;
}

/**
 * The claim under test, counted: on how many datasets MeLo LoRA's mean test AUC is within one point
 * (0.01) of full fine-tuning's, each difference with the seeds' spread.
 */
export function loraVersusFull(runs: readonly StudyRun[], datasets: readonly StudyDataset[]): string {
  const rows: string[] = [];
  let within = 0;
  let compared = 0;
  for (const dataset of datasets) {
    const lora = aucs(methodRuns(runs, dataset.name, 'lora'));
    const full = aucs(methodRuns(runs, dataset.name, 'full'));
    if (lora.length === 0 || full.length === 0) continue;
    compared++;
    const a = meanStd(lora);
    const b = meanStd(full);
    const difference = a.mean - b.mean;
    if (Math.abs(difference) <= 0.01 || difference > 0) within++;
    rows.push(
      // Four decimals: a difference printed as 0.010 may be just past the one-point line it is counted by.
      `${dataset.name} ${difference >= 0 ? '+' : '−'}${Math.abs(difference).toFixed(4)} (LoRA ± ${a.std.toFixed(3)}, full ± ${b.std.toFixed(3)})`,
    );
  }
  if (compared === 0) return '';
  return `\nMeLo LoRA's mean test AUC is within one point of full fine-tuning's (or above it) on **${within} of ${compared}** datasets; LoRA − full: ${rows.join('; ')}.\n`;
}

/**
 * The LoRA ablation: every variant's cost and quality per dataset, against full fine-tuning, and the
 * smallest adapter whose mean test AUC comes within one point (0.01) of full fine-tuning's.
 */
export function ablationTable(runs: readonly StudyRun[], datasets: readonly StudyDataset[]): string {
  const lines = [
    '| dataset | configuration | seeds | trainable parameters | adapter | test ROC-AUC | quadratic weighted kappa | AUC − full fine-tuning |',
    '|---|---|---|---|---|---|---|---|',
  ];
  const verdicts: string[] = [];
  for (const dataset of datasets) {
    const full = methodRuns(runs, dataset.name, 'full');
    const fullAuc = aucs(full);
    const fullMean = fullAuc.length > 0 ? meanStd(fullAuc).mean : undefined;
    let smallest: StudyRun | undefined;
    for (const group of variantGroups(runs, dataset.name)) {
      const first = group[0]!;
      const auc = aucs(group);
      const delta = fullMean !== undefined && auc.length > 0 ? meanStd(auc).mean - fullMean : undefined;
      if (delta !== undefined && delta >= -0.01 && smallest === undefined) smallest = first;
      lines.push(
        `| ${dataset.name} | ${variantLabel(first.variant ?? MELO_VARIANT)} | ${group.length} | ${first.trainableParameters.toLocaleString('en-US')} | ${(first.savedBytes / 1024).toFixed(1)} KiB | ${formatMeanStd(auc)} | ${formatMeanStd(kappas(group))} | ${delta === undefined ? 'n/a' : signed(delta, 4)} |`,
      );
    }
    if (full.length > 0) {
      lines.push(
        `| ${dataset.name} | full fine-tuning | ${full.length} | ${full[0]!.trainableParameters.toLocaleString('en-US')} | ${(full[0]!.savedBytes / 1024).toFixed(1)} KiB | ${formatMeanStd(fullAuc)} | ${formatMeanStd(kappas(full))} | 0 |`,
      );
      verdicts.push(
        smallest
          ? `${dataset.name}: ${variantLabel(smallest.variant ?? MELO_VARIANT)}, ${smallest.trainableParameters.toLocaleString('en-US')} trainable parameters, ${(smallest.savedBytes / 1024).toFixed(1)} KiB`
          : `${dataset.name}: none of these`,
      );
    }
  }
  const verdict =
    verdicts.length > 0
      ? `\nThe smallest adapter whose mean test AUC is within one point of full fine-tuning's (or above it): ${verdicts.join('; ')}.\n`
      : '';
  return `${lines.join('\n')}\n${verdict}`;
}

/** One dataset's fp32 LoRA runs grouped by variant, smallest adapter first (parameters, then bytes). */
function variantGroups(runs: readonly StudyRun[], dataset: string): StudyRun[][] {
  const byVariant = new Map<string, StudyRun[]>();
  for (const run of runs) {
    if (run.dataset !== dataset || run.method !== 'lora' || run.precision !== undefined) continue;
    const key = variantKey(run.variant ?? MELO_VARIANT);
    byVariant.set(key, [...(byVariant.get(key) ?? []), run]);
  }
  return [...byVariant.values()].sort(
    (a, b) => a[0]!.trainableParameters - b[0]!.trainableParameters || a[0]!.savedBytes - b[0]!.savedBytes,
  );
}

function kappas(group: readonly StudyRun[]): number[] {
  return group.map((run) => run.kappa).filter((v): v is number => typeof v === 'number');
}

function signed(value: number, digits: number): string {
  return `${value >= 0 ? '+' : '−'}${Math.abs(value).toFixed(digits)}`;
}

/**
 * Training through the int8 backbone, per dataset, over the seeds that have every column. MeLo LoRA: trained
 * and tested in fp32, trained and tested in int8, trained in fp32 and tested in int8. The claim it counts:
 * int8 loses at most one point of mean test AUC, both when training and when only evaluating through it.
 * Then full fine-tuning, when the study ran it: fp32 against int8 training (SwitchBack), the same claim
 * for training.
 */
export function int8Table(runs: readonly StudyRun[], datasets: readonly StudyDataset[]): string {
  const lines = [
    '| dataset | seeds | fp32 / fp32 ACC | fp32 / fp32 AUC | int8 / int8 ACC | int8 / int8 AUC | fp32 / int8 ACC | fp32 / int8 AUC | AUC change, int8 training | AUC change, int8 evaluation |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  let within = 0;
  let compared = 0;
  for (const dataset of datasets) {
    const paired = int8Pairs(runs, dataset, 'lora').flatMap((pair) =>
      pair.fp32.int8Eval?.auc != null ? [{ ...pair, evaluated: pair.fp32.int8Eval }] : [],
    );
    if (paired.length === 0) continue;
    const trainingChange = meanStd(paired.map((p) => p.int8.auc! - p.fp32.auc!)).mean;
    const evaluationChange = meanStd(paired.map((p) => p.evaluated.auc! - p.fp32.auc!)).mean;
    compared++;
    if (trainingChange >= -0.01 && evaluationChange >= -0.01) within++;
    lines.push(
      `| ${dataset.name} | ${paired.length} | ${formatMeanStd(paired.map((p) => p.fp32.accuracy))} | ${formatMeanStd(paired.map((p) => p.fp32.auc!))} | ${formatMeanStd(paired.map((p) => p.int8.accuracy))} | ${formatMeanStd(paired.map((p) => p.int8.auc!))} | ${formatMeanStd(paired.map((p) => p.evaluated.accuracy))} | ${formatMeanStd(paired.map((p) => p.evaluated.auc!))} | ${signed(trainingChange, 4)} | ${signed(evaluationChange, 4)} |`,
    );
  }
  const lora =
    compared > 0
      ? `${lines.join('\n')}\n\nint8 loses at most 0.01 mean test AUC, in training and in evaluation, on **${within} of ${compared}** datasets.\n`
      : '';
  return `${lora}${fullInt8Table(runs, datasets)}`;
}

/** Full fine-tuning trained in fp32 and through int8 (SwitchBack); empty when the study did not run it. */
function fullInt8Table(runs: readonly StudyRun[], datasets: readonly StudyDataset[]): string {
  const lines = [
    '| dataset | seeds | fp32 ACC | fp32 AUC | int8 (SwitchBack) ACC | int8 (SwitchBack) AUC | AUC change, int8 training |',
    '|---|---|---|---|---|---|---|',
  ];
  let within = 0;
  let compared = 0;
  for (const dataset of datasets) {
    const paired = int8Pairs(runs, dataset, 'full');
    if (paired.length === 0) continue;
    const change = meanStd(paired.map((p) => p.int8.auc! - p.fp32.auc!)).mean;
    compared++;
    if (change >= -0.01) within++;
    lines.push(
      `| ${dataset.name} | ${paired.length} | ${formatMeanStd(paired.map((p) => p.fp32.accuracy))} | ${formatMeanStd(paired.map((p) => p.fp32.auc!))} | ${formatMeanStd(paired.map((p) => p.int8.accuracy))} | ${formatMeanStd(paired.map((p) => p.int8.auc!))} | ${signed(change, 4)} |`,
    );
  }
  if (compared === 0) return '';
  return `\nFull fine-tuning, trained in fp32 and through int8 (SwitchBack):\n\n${lines.join('\n')}\n\nint8 training loses at most 0.01 mean test AUC on **${within} of ${compared}** datasets.\n`;
}

/** The fp32 runs of one dataset and method with their int8-trained twin (same seed), both with an AUC. */
function int8Pairs(
  runs: readonly StudyRun[],
  dataset: StudyDataset,
  method: TrainingMethod,
): { fp32: StudyRun; int8: StudyRun }[] {
  return methodRuns(runs, dataset.name, method).flatMap((fp32) => {
    const int8 = runs.find(
      (other) =>
        other.dataset === fp32.dataset &&
        other.seed === fp32.seed &&
        other.method === method &&
        other.precision === 'int8' &&
        (method !== 'lora' || isMeloLora(other)),
    );
    return int8 && fp32.auc !== null && int8.auc !== null ? [{ fp32, int8 }] : [];
  });
}
