import { existsSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import { checkDataset, type DataIssue } from '../../data/check.ts';
import { type DataSplits, type Dataset, withItems } from '../../data/dataset.ts';
import { openDataSplits } from '../../data/open.ts';
import { MeloError } from '../../errors.ts';
import { DEFAULT_AUGMENT } from '../../imaging/augment.ts';
import { writeFileAtomic } from '../../io/atomic.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, isValidTaskName, loadAdapter } from '../../io/peft.ts';
import { checkAdapterFitsBackbone } from '../../model/adapter-check.ts';
import {
  LINEAR_TARGETS,
  MELO_LORA_DEFAULTS,
  parseTargets,
  validateLoraConfig,
} from '../../model/lora-config.ts';
import type { TrainingMethod } from '../../model/task-graph.ts';
import { routingFromFlags } from '../../pacs/routing.ts';
import { checkpointPath } from '../../train/checkpoint.ts';
import type { ScheduleConfig } from '../../train/schedule.ts';
import { type SelectionMetric, TrainingInterrupted, train } from '../../train/trainer.ts';
import { trainingBackbone } from '../../train/training-backbone.ts';
import { formatLabels } from '../../util/labels.ts';
import {
  type BackbonePrecision,
  backbonePrecisionOption,
  parseNonNegativeNumber,
  parsePositiveInt,
} from '../options.ts';
import { progressReporter } from '../progress.ts';

interface TrainFlags {
  backbone: string;
  backbonePrecision: BackbonePrecision;
  modality?: string;
  bodyPart?: string;
  positive?: string;
  ordinal?: boolean;
  data: string;
  val?: string;
  method: TrainingMethod;
  rank: number;
  alpha?: number;
  targets: string;
  loraDropout: number;
  initAdapter?: string;
  optimizer: 'adamw' | 'sgd';
  lr?: number;
  momentum: number;
  weightDecay?: number;
  schedule: 'cosine' | 'constant' | 'step';
  warmupSteps: number;
  minLr: number;
  maxGradNorm: number;
  labelSmoothing: number;
  classWeights?: string;
  epochs: number;
  batchSize: number;
  gradAccum: number;
  shuffle: boolean;
  augment: boolean;
  seed: number;
  threads?: number;
  taskName?: string;
  out: string;
  json?: boolean;
  resume?: string;
  force?: boolean;
  metric: SelectionMetric;
  patience: number;
  onBadImage: 'stop' | 'skip';
  limit?: number;
  fold?: string;
  dtype: 'f32' | 'f16';
}

/** Learning rates that worked for each method on the bundled studies (LoRA and heads take larger steps). */
const DEFAULT_LR: Record<TrainingMethod, number> = { lora: 1e-3, linear: 1e-3, full: 1e-4 };

export function registerTrainCommand(program: Command): void {
  program
    .command('train')
    .description('train a task: MeLo LoRA adapter (default), full fine-tuning, or linear probing')
    .option('--backbone <dir>', 'pretrained checkpoint directory (required unless --resume)')
    .option('--data <spec>', 'training data: ImageFolder dir, CSV/TSV manifest, MedMNIST .npz, idx files')
    .option(
      '--val <spec>',
      "validation data, or 'none'; default: the data's val split, else a stratified 10%",
    )
    .addOption(
      new Option('--method <method>', 'what to train').choices(['lora', 'full', 'linear']).default('lora'),
    )
    .option('--rank <n>', 'LoRA rank', parsePositiveInt, MELO_LORA_DEFAULTS.rank)
    .option('--alpha <x>', 'LoRA alpha (scale = alpha / rank; default = rank)', parsePositiveNumber)
    .option('--targets <list>', `LoRA targets, any of ${LINEAR_TARGETS.join(',')}`, 'query,value')
    .option(
      '--lora-dropout <p>',
      'dropout on the LoRA input during training, as PEFT lora_dropout (in [0, 1))',
      parseNonNegativeNumber,
      0,
    )
    .option('--init-adapter <dir>', 'start from an existing adapter (LoRA and head)')
    .addOption(new Option('--optimizer <name>', 'optimiser').choices(['adamw', 'sgd']).default('adamw'))
    .option(
      '--lr <x>',
      'peak learning rate (default 1e-3 for lora/linear, 1e-4 for full)',
      parsePositiveNumber,
    )
    .option('--momentum <x>', 'SGD momentum', parseNonNegativeNumber, 0.9)
    .option(
      '--weight-decay <x>',
      'decoupled weight decay (default 0.01 AdamW, 0 SGD)',
      parseNonNegativeNumber,
    )
    .addOption(
      new Option('--schedule <name>', 'learning-rate schedule')
        .choices(['cosine', 'constant', 'step'])
        .default('cosine'),
    )
    .option('--warmup-steps <n>', 'linear warm-up steps', parseNonNegativeInt, 0)
    .option(
      '--min-lr <x>',
      'floor of the cosine schedule (torch CosineAnnealingLR eta_min)',
      parseNonNegativeNumber,
      0,
    )
    .option('--max-grad-norm <x>', 'global gradient-norm clip (0 = off)', parseNonNegativeNumber, 1)
    .option('--label-smoothing <x>', 'label smoothing for single-label tasks', parseNonNegativeNumber, 0)
    .option('--class-weights <w>', "'balanced' or comma-separated weights per class")
    .option('--epochs <n>', 'epochs', parsePositiveInt, 10)
    .option('--batch-size <n>', 'images per step', parsePositiveInt, 16)
    .option('--grad-accum <n>', 'micro-batches per optimiser step', parsePositiveInt, 1)
    .option('--no-shuffle', 'keep the data order')
    .option('--no-augment', 'no training augmentation')
    .option('--seed <n>', 'random seed', parseNonNegativeInt, 0)
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .addOption(backbonePrecisionOption())
    .option('--task-name <name>', 'task name recorded in the adapter (default: --out directory name)')
    .option(
      '--positive <label>',
      "binary tasks: the class sensitivity, specificity and F1 are about (default: the second label); recorded in the adapter for 'melo eval'",
    )
    .option(
      '--ordinal',
      "the labels are ordered grades (0, 1, 2, …): 'melo eval' adds quadratic weighted kappa and mean grade error",
    )
    .option('--modality <codes>', 'DICOM modalities the task applies to, e.g. CR,DX (default: any)')
    .option('--body-part <codes>', 'DICOM Body Part Examined values the task applies to, e.g. CHEST')
    .option('--out <dir>', 'output directory: adapter, resumable checkpoint, log (required unless --resume)')
    .option(
      '--resume <dir>',
      'continue the run in this --out directory with its saved settings (flags given beside it must agree; --epochs may extend it)',
    )
    .option('--force', 'overwrite an --out directory that already holds an adapter or a checkpoint')
    .addOption(
      new Option('--metric <name>', 'validation metric that picks the best epoch')
        .choices(['auc', 'accuracy', 'loss'])
        .default('auc'),
    )
    .option('--patience <n>', 'stop after N epochs without improvement (0 = never)', parseNonNegativeInt, 0)
    .addOption(
      new Option('--on-bad-image <action>', 'bad items found by the pre-flight check')
        .choices(['stop', 'skip'])
        .default('stop'),
    )
    .option(
      '--limit <n>',
      'use at most N items per split (seeded, stratified), for quick runs',
      parsePositiveInt,
    )
    .option('--fold <i/k>', 'k-fold cross-validation: fold i (0-based) of k as validation')
    .addOption(
      new Option('--dtype <dtype>', 'adapter storage precision').choices(['f32', 'f16']).default('f32'),
    )
    .option('--json', 'print a JSON summary on stdout')
    .action(async (flags: TrainFlags, command: Command) => {
      await runTrain(flags.resume === undefined ? await newRun(flags) : await resumedRun(flags, command));
    });
}

async function runTrain(flags: TrainFlags): Promise<void> {
  if (!flags.data) throw new MeloError('USAGE', 'missing --data <spec>');
  if (!(flags.loraDropout < 1))
    throw new MeloError('USAGE', `--lora-dropout must be in [0, 1), got ${flags.loraDropout}`);
  if (flags.loraDropout > 0 && flags.method !== 'lora')
    throw new MeloError(
      'USAGE',
      `--lora-dropout applies to --method lora only (got --method ${flags.method})`,
    );
  const taskName = flags.taskName ?? basename(flags.out.replace(/\/+$/, ''));
  if (!isValidTaskName(taskName)) {
    throw new MeloError(
      'USAGE',
      `task name '${taskName}' must be letters, digits, '.', '_' or '-' (set --task-name)`,
    );
  }
  const routing = routingFromFlags(flags.modality, flags.bodyPart);
  const backbone = await trainingBackbone(
    await loadBackbone(flags.backbone),
    flags.backbonePrecision,
    flags.method,
  );
  const openOptions = {
    seed: flags.seed,
    ...(flags.limit ? { limit: flags.limit } : {}),
    ...(flags.fold ? { fold: flags.fold } : {}),
  };
  const splits = await openDataSplits(
    flags.data,
    flags.val === undefined ? openOptions : { ...openOptions, valFraction: 0 },
  );
  if (!splits.train) throw new MeloError('BAD_DATA', 'has no training split', { file: flags.data });
  let val: Dataset | undefined = splits.val;
  if (flags.val === 'none') val = undefined;
  else if (flags.val !== undefined) {
    const valSplits = await openDataSplits(flags.val, {
      seed: flags.seed,
      valFraction: 0,
      ...(flags.limit ? { limit: flags.limit } : {}),
    });
    val = valSplits.val ?? valSplits.test ?? valSplits.train;
  }
  const checked = await preflight({ train: splits.train, ...(val ? { val } : {}) }, flags.onBadImage);
  const trainSet = checked.train!;
  val = checked.val;
  if (val && val.classes.join('\u0000') !== trainSet.classes.join('\u0000')) {
    throw new MeloError(
      'BAD_DATA',
      `validation data has ${formatLabels(val.classes)}; training data has ${formatLabels(trainSet.classes)}`,
      { file: val.source },
    );
  }

  checkTaskLabels(trainSet, flags.positive, flags.ordinal === true);

  const lora = validateLoraConfig(
    {
      rank: flags.rank,
      alpha: flags.alpha ?? flags.rank,
      dropout: flags.loraDropout,
      targets: parseTargets(flags.targets),
    },
    backbone.config.depth,
  );
  const initAdapter = flags.initAdapter ? await loadAdapter(flags.initAdapter) : undefined;
  // Before anything is created: an adapter for another backbone otherwise failed inside ONNX Runtime.
  if (initAdapter && flags.initAdapter) checkAdapterFitsBackbone(initAdapter, backbone, flags.initAdapter);
  const lr = flags.lr ?? DEFAULT_LR[flags.method];
  const schedule: ScheduleConfig =
    flags.schedule === 'step'
      ? { kind: 'step', lr }
      : flags.schedule === 'cosine'
        ? { kind: 'cosine', lr, warmupSteps: flags.warmupSteps, minLr: flags.minLr }
        : { kind: 'constant', lr, warmupSteps: flags.warmupSteps };
  const classWeights = parseClassWeights(flags.classWeights, trainSet.classes.length);

  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write(
      '\nstopping after this step and writing a resumable checkpoint (Ctrl-C again to quit now)\n',
    );
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  try {
    if (flags.resume === undefined) await saveRunSettings(flags);
    const summary = await train({
      backbone,
      train: trainSet,
      ...(val ? { val } : {}),
      method: flags.method,
      ...(routing ? { routing } : {}),
      ...(flags.positive !== undefined ? { positive: flags.positive } : {}),
      ...(flags.ordinal ? { ordinal: true } : {}),
      lora: initAdapter ? initAdapter.lora : lora,
      ...(initAdapter ? { initAdapter } : {}),
      optimizer:
        flags.optimizer === 'adamw'
          ? { kind: 'adamw', ...(flags.weightDecay !== undefined ? { weightDecay: flags.weightDecay } : {}) }
          : {
              kind: 'sgd',
              momentum: flags.momentum,
              ...(flags.weightDecay !== undefined ? { weightDecay: flags.weightDecay } : {}),
            },
      schedule,
      maxGradNorm: flags.maxGradNorm,
      labelSmoothing: flags.labelSmoothing,
      ...(classWeights ? { classWeights } : {}),
      epochs: flags.epochs,
      batchSize: flags.batchSize,
      gradAccum: flags.gradAccum,
      shuffle: flags.shuffle,
      augment: flags.augment ? DEFAULT_AUGMENT : false,
      seed: flags.seed,
      ...(flags.threads ? { threads: flags.threads } : {}),
      taskName,
      outDir: flags.out,
      metric: flags.metric,
      patience: flags.patience,
      resume: flags.resume !== undefined,
      adapterDtype: flags.dtype === 'f16' ? 'F16' : 'F32',
      signal: controller.signal,
      onEvent: progressReporter(),
    });
    const report = { ...summary, skippedImages: checked.skipped };
    if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else {
      process.stderr.write(
        `done: ${summary.trainableParameters.toLocaleString('en-US')} trainable parameters (${(summary.trainableShare * 100).toFixed(3)}% of the model), ` +
          `${(summary.adapterBytes / 1024).toFixed(1)} KiB written to ${summary.outDir}${summary.bestMetric ? `, best ${summary.bestMetric.name} ${summary.bestMetric.value.toFixed(4)} at epoch ${summary.bestEpoch! + 1}` : ''}\n`,
      );
    }
  } catch (error) {
    if (error instanceof TrainingInterrupted) {
      process.stderr.write(`resume with: melo train ... --out ${flags.out} --resume ${flags.out}\n`);
      process.exitCode = 130;
      return;
    }
    throw error;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/** --positive names one of a binary task's two labels; --ordinal needs single-label grades. */
function checkTaskLabels(train: Dataset, positive: string | undefined, ordinal: boolean): void {
  if (positive !== undefined) {
    if (train.taskType !== 'binary')
      throw new MeloError(
        'USAGE',
        `--positive applies to binary tasks; this data has ${formatLabels(train.classes)}`,
      );
    if (!train.classes.includes(positive))
      throw new MeloError(
        'USAGE',
        `--positive '${positive}' is not one of the ${formatLabels(train.classes)}`,
      );
  }
  if (ordinal && train.taskType === 'multilabel')
    throw new MeloError('USAGE', '--ordinal applies to single-label tasks (grades), not multi-label ones');
}

/** The settings of a run, saved in its --out directory so that `--resume <dir>` alone restores them. */
export const TRAIN_ARGS_FILE = 'train-args.json';
/** Flags that are about this invocation, not the run. */
const INVOCATION_FLAGS = new Set(['resume', 'force', 'json', 'out']);

async function newRun(flags: TrainFlags): Promise<TrainFlags> {
  if (flags.backbone === undefined)
    throw new MeloError('USAGE', "required option '--backbone <dir>' not specified");
  if (flags.out === undefined) throw new MeloError('USAGE', "required option '--out <dir>' not specified");
  if (!flags.force) await refuseTrainedOut(flags.out);
  return flags;
}

/** Written once every check has passed, just before training starts (a refused run leaves nothing). */
async function saveRunSettings(flags: TrainFlags): Promise<void> {
  const settings = Object.fromEntries(
    Object.entries(flags)
      .filter(([key]) => !INVOCATION_FLAGS.has(key))
      .map(([key, value]) => [key, absolutePath(key, value)]),
  );
  await mkdir(flags.out, { recursive: true });
  await writeFileAtomic(join(flags.out, TRAIN_ARGS_FILE), `${JSON.stringify(settings, null, 2)}\n`);
}

/** Flags naming files or directories. */
const PATH_FLAGS = new Set(['backbone', 'data', 'val', 'initAdapter']);

/**
 * Paths are saved absolute, so that `--resume` works from any directory. A data spec that is not an
 * existing path (`medmnist:…`, `dir:test`) is kept as given.
 */
function absolutePath(key: string, value: unknown): unknown {
  return PATH_FLAGS.has(key) && typeof value === 'string' && existsSync(value) ? resolve(value) : value;
}

/** --resume <dir>: the run's saved settings; flags given beside it must agree, except a larger --epochs. */
async function resumedRun(flags: TrainFlags, command: Command): Promise<TrainFlags> {
  const dir = flags.resume!;
  if (flags.out !== undefined && flags.out !== dir)
    throw new MeloError('USAGE', `--resume ${dir} must name the same directory as --out (${flags.out})`);
  const file = join(dir, TRAIN_ARGS_FILE);
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) {
    // A run from before settings were saved: the flags must be given again, as they were.
    if (flags.backbone === undefined || flags.data === undefined)
      throw new MeloError(
        'USAGE',
        `has no ${TRAIN_ARGS_FILE}: give the run's flags (--backbone, --data, …) with --resume`,
        { file: dir },
      );
    return { ...flags, out: dir };
  }
  const saved = JSON.parse(text) as Record<string, unknown>;
  const given = flags as unknown as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (INVOCATION_FLAGS.has(key) || command.getOptionValueSource(key) !== 'cli') continue;
    const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    if (key === 'epochs') {
      if (flags.epochs < Number(saved.epochs))
        throw new MeloError(
          'USAGE',
          `${flag} ${flags.epochs}: the run already planned ${saved.epochs}; --epochs may only extend it`,
          { file },
        );
      continue;
    }
    if (!isDeepStrictEqual(absolutePath(key, given[key]), saved[key]))
      throw new MeloError(
        'USAGE',
        `${flag} ${JSON.stringify(given[key])} differs from the run's ${JSON.stringify(saved[key] ?? null)}: a resumed run keeps its settings (start a new --out to change them)`,
        { file },
      );
  }
  const epochs = command.getOptionValueSource('epochs') === 'cli' ? flags.epochs : Number(saved.epochs);
  if (epochs !== Number(saved.epochs))
    await writeFileAtomic(file, `${JSON.stringify({ ...saved, epochs }, null, 2)}\n`);
  return {
    ...(saved as unknown as TrainFlags),
    epochs,
    out: dir,
    resume: dir,
    ...(flags.json ? { json: true } : {}),
  };
}

/** A new run never silently replaces a trained adapter or a resumable checkpoint. */
async function refuseTrainedOut(out: string): Promise<void> {
  // What a finished run (the adapter) or an interrupted one (its checkpoint) leaves behind.
  for (const path of [join(out, ADAPTER_WEIGHTS_FILE), join(out, ADAPTER_CONFIG_FILE), checkpointPath(out)]) {
    if (
      await stat(path).then(
        () => true,
        () => false,
      )
    ) {
      throw new MeloError(
        'USAGE',
        `--out already holds a run (${relative(out, path)}): pass --resume ${out} to continue it, --force to overwrite it, or another --out`,
        { file: out },
      );
    }
  }
}

/** Runs the data check before the first step: stop on any bad item, or drop and report them with 'skip'. */
async function preflight(
  splits: DataSplits,
  action: 'stop' | 'skip',
): Promise<DataSplits & { skipped: number }> {
  const report = await checkDataset(splits);
  const blocking = report.issues.filter((issue) => issue.kind !== 'empty-class');
  for (const issue of report.issues.filter((i) => i.kind === 'empty-class'))
    process.stderr.write(`warning: ${issue.split}: ${issue.detail}\n`);
  if (blocking.length === 0) return { ...splits, skipped: 0 };
  if (action === 'stop') {
    const first = blocking.slice(0, 3).map(describeIssue).join('; ');
    throw new MeloError(
      'BAD_DATA',
      `${blocking.length} bad item${blocking.length === 1 ? '' : 's'} (${first}${blocking.length > 3 ? '; …' : ''}); run 'melo data check' for the list or pass --on-bad-image skip`,
    );
  }
  const bad = new Set(blocking.map((issue) => `${issue.split}\u0000${issue.id}`));
  // The first few by name, then a count: 200,000 bad items must not become 200,000 lines.
  for (const issue of blocking.slice(0, 20)) process.stderr.write(`skipped ${describeIssue(issue)}\n`);
  if (blocking.length > 20) process.stderr.write(`skipped ${blocking.length - 20} more bad items\n`);
  const keep = (name: 'train' | 'val', dataset?: Dataset) =>
    dataset
      ? withItems(
          dataset,
          dataset.items.filter((item) => !bad.has(`${name}\u0000${item.id}`)),
        )
      : undefined;
  const train = keep('train', splits.train);
  const val = keep('val', splits.val);
  return { ...(train ? { train } : {}), ...(val ? { val } : {}), skipped: blocking.length };
}

function describeIssue(issue: DataIssue): string {
  return `${issue.id}: ${issue.kind} (${issue.detail})`;
}

function parseClassWeights(value: string | undefined, classes: number): 'balanced' | number[] | undefined {
  if (value === undefined) return undefined;
  if (value === 'balanced') return 'balanced';
  const weights = value.split(',').map(Number);
  if (weights.length !== classes || weights.some((w) => !(w >= 0))) {
    throw new MeloError(
      'USAGE',
      `--class-weights needs 'balanced' or ${classes} non-negative numbers, got '${value}'`,
    );
  }
  return weights;
}

function parsePositiveNumber(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0)
    throw new InvalidArgumentError(`expected a number > 0, got '${value}'`);
  return parsed;
}

function parseNonNegativeInt(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0)
    throw new InvalidArgumentError(`expected an integer ≥ 0, got '${value}'`);
  return parsed;
}
