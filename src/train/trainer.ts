import { appendFile, mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors } from '../checkpoints/safetensors.ts';
import type { Dataset } from '../data/dataset.ts';
import { batchCount, loadBatches } from '../data/loader.ts';
import { MeloError } from '../errors.ts';
import { evaluate } from '../eval/index.ts';
import type { AugmentConfig } from '../imaging/augment.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import { saveAdapter } from '../io/peft.ts';
import {
  type Adapter,
  headParameterCount,
  initAdapter,
  loraParameterCount,
  type TaskMetadata,
} from '../model/adapter.ts';
import { backboneParameterCount, parseSlotKey } from '../model/anatomy.ts';
import type { Backbone } from '../model/backbone.ts';
import { loraInputNames } from '../model/lora.ts';
import { type LoraConfig, loraLayers } from '../model/lora-config.ts';
import { adapterFeeds, TASK_HEAD, type TrainingMethod } from '../model/task-graph.ts';
import { TaskModel } from '../model/task-model.ts';
import type { TaskRouting } from '../pacs/routing.ts';
import type { HostTensor } from '../tensor.ts';
import { Random } from '../util/random.ts';
import { clipGradNorm } from './clip.ts';
import { saveFullCheckpoint } from './full-checkpoint.ts';
import {
  createOptimizer,
  type Optimizer,
  type OptimizerConfig,
  optimizerStateFromSafetensors,
  optimizerStateToSafetensors,
} from './optimizer.ts';
import { learningRate, type ScheduleConfig } from './schedule.ts';
import { balancedClassWeights, lossTensors } from './targets.ts';
import { TrainStep } from './train-step.ts';
import { createWorkerOptimizer } from './update-kernel.ts';

export type SelectionMetric = 'auc' | 'accuracy' | 'loss';

export interface TrainOptions {
  readonly backbone: Backbone;
  readonly train: Dataset;
  readonly val?: Dataset;
  readonly method: TrainingMethod;
  readonly lora: LoraConfig;
  readonly initAdapter?: Adapter;
  readonly optimizer: OptimizerConfig;
  readonly schedule: ScheduleConfig;
  readonly maxGradNorm: number;
  readonly labelSmoothing: number;
  readonly classWeights?: 'balanced' | readonly number[];
  readonly epochs: number;
  readonly batchSize: number;
  readonly gradAccum: number;
  readonly shuffle: boolean;
  readonly augment: AugmentConfig | false;
  readonly seed: number;
  readonly threads?: number;
  readonly taskName: string;
  /** DICOM routing recorded in the adapter (which modalities and body parts the task applies to). */
  readonly routing?: TaskRouting;
  readonly outDir: string;
  readonly metric: SelectionMetric;
  /** Epochs without improvement before stopping; 0 = never stop early. */
  readonly patience: number;
  readonly resume: boolean;
  /** Storage precision of the saved adapter (training itself is float32). */
  readonly adapterDtype?: 'F32' | 'F16';
  /** Checked after every optimiser step: when aborted, a resumable checkpoint is written and training stops. */
  readonly signal?: AbortSignal;
  readonly onEvent?: (event: TrainEvent) => void;
}

export type TrainEvent =
  | { type: 'start'; totalSteps: number; step: number; epochs: number; trainable: number; resumed: boolean }
  | {
      type: 'step';
      epoch: number;
      step: number;
      totalSteps: number;
      loss: number;
      lr: number;
      imagesPerSecond: number;
      elapsedSeconds: number;
    }
  | {
      type: 'epoch';
      epoch: number;
      trainLoss: number;
      val?: EpochValidation;
      improved: boolean;
      seconds: number;
    }
  | { type: 'interrupted'; step: number; checkpoint: string }
  | { type: 'early-stop'; epoch: number };

export interface EpochValidation {
  readonly loss: number;
  readonly accuracy: number;
  readonly auc: number | null;
}

export interface TrainSummary {
  readonly task: string;
  readonly method: TrainingMethod;
  readonly epochs: number;
  readonly steps: number;
  readonly bestEpoch: number | null;
  readonly bestMetric: { readonly name: SelectionMetric; readonly value: number } | null;
  readonly trainableParameters: number;
  readonly loraParameters: number;
  readonly headParameters: number;
  readonly backboneParameters: number;
  readonly trainableShare: number;
  readonly adapterBytes: number;
  readonly imagesPerSecond: number;
  /** Seconds in training steps (forward, backward, update). */
  readonly seconds: number;
  /** Wall-clock seconds of the whole training, data loading and validation included. */
  readonly wallSeconds: number;
  /** The process's peak resident memory so far (the run's own peak when it runs in a fresh process). */
  readonly peakRssBytes: number;
  readonly outDir: string;
  readonly interrupted: boolean;
}

export class TrainingInterrupted extends Error {
  constructor(readonly checkpoint: string) {
    super(`training interrupted; resume with --resume (checkpoint in ${checkpoint})`);
  }
}

interface TrainerState {
  version: 1;
  method: TrainingMethod;
  batchSize: number;
  gradAccum: number;
  trainItems: number;
  seed: number;
  epoch: number;
  /** Next batch of `epoch` to run. */
  batchInEpoch: number;
  step: number;
  bestEpoch: number | null;
  bestValue: number | null;
  epochsWithoutImprovement: number;
  trainLossSum: number;
  trainLossCount: number;
  imagesSeen: number;
  trainSeconds: number;
  /** Wall-clock seconds of the epochs so far, data loading and validation included. */
  wallSeconds: number;
  done: boolean;
}

const CHECKPOINT_DIR = 'checkpoint';
const STATE_FILE = 'trainer-state.json';
const PARAMS_FILE = 'parameters.safetensors';
const OPTIMIZER_FILE = 'optimizer.safetensors';
export const LOG_FILE = 'train-log.jsonl';

/**
 * One trainer for MeLo LoRA, full fine-tuning and linear probing: the methods differ only in which
 * tensors are graph inputs and get gradients. Deterministic for a seed and thread count; resumable
 * exactly from its checkpoint (parameters, optimiser moments, step, epoch position; the data order and
 * augmentation are functions of (seed, epoch, item), so nothing else needs saving).
 */
export async function train(options: TrainOptions): Promise<TrainSummary> {
  const { backbone, method } = options;
  const classes = options.train.classes.length;
  const taskType = options.train.taskType;
  if (classes < 2 && taskType !== 'multilabel')
    throw new MeloError('BAD_DATA', `training data has ${classes} class; need at least 2`, {
      file: options.train.source,
    });
  if (options.train.items.length === 0)
    throw new MeloError('BAD_DATA', 'training split is empty', { file: options.train.source });
  await mkdir(join(options.outDir, CHECKPOINT_DIR), { recursive: true });

  const metadata: TaskMetadata = {
    task: options.taskName,
    taskType,
    labels: [...options.train.classes],
    imageSize: backbone.preprocess.inputSize,
    mean: backbone.preprocess.mean,
    std: backbone.preprocess.std,
    backboneFingerprint: backbone.fingerprint,
    method,
    ...(options.routing ? { routing: options.routing } : {}),
  };
  const random = new Random(options.seed);
  const start = options.initAdapter
    ? { ...options.initAdapter, metadata }
    : initAdapter(backbone.config, options.lora, metadata, random);
  const adapter: Adapter = method === 'lora' ? start : { ...start, pairs: new Map() };
  if (options.initAdapter && options.initAdapter.head.weight.shape[0] !== classes) {
    throw new MeloError(
      'BAD_ADAPTER',
      `initial adapter has ${options.initAdapter.head.weight.shape[0]} classes, the data has ${classes}`,
    );
  }

  // The trainable tensors, copied so that training never mutates the loaded backbone.
  const parameters = new Map<string, HostTensor>();
  for (const [name, tensor] of adapterFeeds(adapter)) parameters.set(name, copyTensor(tensor));
  if (method === 'full')
    for (const [name, tensor] of backbone.weights)
      if (!name.startsWith('head.')) parameters.set(name, copyTensor(tensor));

  const batchesPerEpoch = batchCount(options.train.items.length, options.batchSize);
  const stepsPerEpoch = Math.ceil(batchesPerEpoch / options.gradAccum);
  const totalSteps = stepsPerEpoch * options.epochs;
  // Full fine-tuning updates every backbone weight (86 M for ViT-B): that update runs on worker threads in
  // WebAssembly, bit-identical to the in-thread loop, which stays for LoRA's 150 thousand values.
  const optimizer =
    method === 'full'
      ? await createWorkerOptimizer(options.optimizer, parameters, options.threads)
      : createOptimizer(options.optimizer);
  const checkpointDir = join(options.outDir, CHECKPOINT_DIR);
  let state: TrainerState = {
    version: 1,
    method,
    batchSize: options.batchSize,
    gradAccum: options.gradAccum,
    trainItems: options.train.items.length,
    seed: options.seed,
    epoch: 0,
    batchInEpoch: 0,
    step: 0,
    bestEpoch: null,
    bestValue: null,
    epochsWithoutImprovement: 0,
    trainLossSum: 0,
    trainLossCount: 0,
    imagesSeen: 0,
    trainSeconds: 0,
    wallSeconds: 0,
    done: false,
  };
  if (options.resume) {
    state = await restoreCheckpoint(checkpointDir, state, parameters, optimizer).catch(async (error) => {
      await optimizer.close();
      throw error;
    });
  } else {
    await writeFileTruncate(join(options.outDir, LOG_FILE));
  }
  const classWeights =
    options.classWeights === 'balanced'
      ? balancedClassWeights(options.train.items, classes)
      : options.classWeights;
  const lossKind = taskType === 'multilabel' ? 'sigmoid' : 'softmax';
  const trainStep = await TrainStep.create({
    backbone,
    method,
    lora: options.lora,
    numClasses: classes,
    batchSize: options.batchSize,
    loss: lossKind,
    // Every batch is one run of the step: a resumed step continues the masks where the interrupted one was.
    dropout: { seed: options.seed, runsDone: state.epoch * batchesPerEpoch + state.batchInEpoch },
    ...(options.threads ? { threads: options.threads } : {}),
  });
  const evalModel = options.val
    ? await TaskModel.create({
        backbone,
        method,
        lora: options.lora,
        numClasses: classes,
        ...(options.threads ? { threads: options.threads } : {}),
      })
    : undefined;
  const trainable = trainStep.trainable;
  const trainableCount = trainable.reduce((sum, name) => sum + parameters.get(name)!.data.length, 0);
  const log = (record: Record<string, unknown>) =>
    appendFile(join(options.outDir, LOG_FILE), `${JSON.stringify(record)}\n`);
  options.onEvent?.({
    type: 'start',
    totalSteps,
    step: state.step,
    epochs: options.epochs,
    trainable: trainableCount,
    resumed: options.resume,
  });

  const saveBest = async () => {
    if (method === 'full') await saveFullCheckpoint(options.outDir, backbone, parameters, metadata);
    else
      await saveAdapter(options.outDir, adapterFromParameters(adapter, parameters), {
        dtype: options.adapterDtype ?? 'F32',
        backbone: backbone.config,
      });
  };
  const [height, width] = backbone.preprocess.inputSize;
  const perImage = backbone.config.channels * height * width;
  const paddedPixels = new Float32Array(options.batchSize * perImage);
  let interrupted = false;
  try {
    while (!state.done && state.epoch < options.epochs) {
      const epochStart = performance.now();
      const accumulated = new Map<string, Float32Array>();
      let microInStep = 0;
      for await (const batch of loadBatches(
        options.train,
        state.epoch,
        {
          batchSize: options.batchSize,
          preprocess: backbone.preprocess,
          channels: backbone.config.channels as 1 | 3,
          augment: options.augment,
          seed: options.seed,
          shuffle: options.shuffle,
        },
        state.batchInEpoch,
      )) {
        const stepStart = performance.now();
        paddedPixels.set(batch.pixels);
        paddedPixels.fill(0, batch.pixels.length);
        const { targets, sampleWeights } = lossTensors(batch.items, options.batchSize, classes, taskType, {
          labelSmoothing: lossKind === 'softmax' ? options.labelSmoothing : 0,
          gradAccum: options.gradAccum,
          ...(classWeights ? { classWeights } : {}),
        });
        const result = await trainStep.run({ pixels: paddedPixels, targets, sampleWeights }, parameters);
        for (const [name, gradient] of result.gradients) {
          const sum = accumulated.get(name);
          if (sum) for (let i = 0; i < sum.length; i++) sum[i]! += gradient.data[i]!;
          // Each run hands back fresh output arrays, so the first micro-batch's gradient becomes the sum
          // as is: no 344 MB copy per step when fully fine-tuning ViT-B.
          else accumulated.set(name, gradient.data);
        }
        microInStep++;
        state.batchInEpoch = batch.index + 1;
        state.trainLossSum += result.loss * options.gradAccum;
        state.trainLossCount++;
        state.imagesSeen += batch.items.length;
        const endOfEpoch = state.batchInEpoch === batchesPerEpoch;
        if (microInStep < options.gradAccum && !endOfEpoch) {
          state.trainSeconds += (performance.now() - stepStart) / 1000;
          continue;
        }
        const gradients = new Map<string, HostTensor>();
        for (const [name, sum] of accumulated)
          gradients.set(name, { shape: parameters.get(name)!.shape, data: sum });
        if (options.maxGradNorm > 0) clipGradNorm(gradients, options.maxGradNorm);
        const lr = learningRate(options.schedule, state.step, totalSteps);
        await optimizer.step(parameters, gradients, lr);
        accumulated.clear();
        microInStep = 0;
        state.step++;
        state.trainSeconds += (performance.now() - stepStart) / 1000;
        const imagesPerSecond = state.imagesSeen / Math.max(state.trainSeconds, 1e-9);
        options.onEvent?.({
          type: 'step',
          epoch: state.epoch,
          step: state.step,
          totalSteps,
          loss: result.loss * options.gradAccum,
          lr,
          imagesPerSecond,
          elapsedSeconds: state.trainSeconds,
        });
        await log({
          type: 'step',
          epoch: state.epoch,
          step: state.step,
          loss: result.loss * options.gradAccum,
          lr,
          imagesPerSecond,
        });
        if (options.signal?.aborted && !endOfEpoch) {
          await writeCheckpoint(checkpointDir, state, parameters, optimizer);
          interrupted = true;
          options.onEvent?.({ type: 'interrupted', step: state.step, checkpoint: checkpointDir });
          throw new TrainingInterrupted(checkpointDir);
        }
      }

      // End of epoch: validate, keep the best, maybe stop early, checkpoint.
      const trainLoss = state.trainLossSum / Math.max(1, state.trainLossCount);
      let improved = false;
      let val: EpochValidation | undefined;
      if (options.val && evalModel) {
        val = await validate(evalModel, options.val, backbone, parameters, options.batchSize, taskType);
        const value = selectionValue(val, options.metric);
        improved =
          state.bestValue === null ||
          (options.metric === 'loss' ? value < state.bestValue : value > state.bestValue);
        if (improved) {
          state.bestValue = value;
          state.bestEpoch = state.epoch;
          state.epochsWithoutImprovement = 0;
          await saveBest();
        } else {
          state.epochsWithoutImprovement++;
        }
      }
      const seconds = (performance.now() - epochStart) / 1000;
      state.wallSeconds = (state.wallSeconds ?? 0) + seconds;
      options.onEvent?.({
        type: 'epoch',
        epoch: state.epoch,
        trainLoss,
        ...(val ? { val } : {}),
        improved,
        seconds,
      });
      await log({
        type: 'epoch',
        epoch: state.epoch,
        trainLoss,
        ...(val ? { val } : {}),
        improved,
        step: state.step,
      });
      state.epoch++;
      state.batchInEpoch = 0;
      state.trainLossSum = 0;
      state.trainLossCount = 0;
      if (options.patience > 0 && state.epochsWithoutImprovement >= options.patience) {
        options.onEvent?.({ type: 'early-stop', epoch: state.epoch - 1 });
        state.done = true;
      }
      if (state.epoch >= options.epochs) state.done = true;
      await writeCheckpoint(checkpointDir, state, parameters, optimizer);
      if (options.signal?.aborted && !state.done) {
        interrupted = true;
        options.onEvent?.({ type: 'interrupted', step: state.step, checkpoint: checkpointDir });
        throw new TrainingInterrupted(checkpointDir);
      }
    }
    if (!options.val) await saveBest();
  } finally {
    await trainStep.release();
    await evalModel?.release();
    await optimizer.close();
  }
  const adapterBytes =
    method === 'full'
      ? await fileSize(join(options.outDir, 'model.safetensors'))
      : await fileSize(join(options.outDir, 'adapter_model.safetensors'));
  const loraCount = method === 'lora' ? loraParameterCount(adapter) : 0;
  const backboneCount = backboneParameterCount(backbone.config);
  return {
    task: options.taskName,
    method,
    epochs: state.epoch,
    steps: state.step,
    bestEpoch: state.bestEpoch,
    bestMetric: state.bestValue === null ? null : { name: options.metric, value: state.bestValue },
    trainableParameters: trainableCount,
    loraParameters: loraCount,
    headParameters: headParameterCount(adapter),
    backboneParameters: backboneCount,
    trainableShare: trainableCount / (backboneCount + headParameterCount(adapter) + loraCount),
    adapterBytes,
    imagesPerSecond: state.imagesSeen / Math.max(state.trainSeconds, 1e-9),
    seconds: state.trainSeconds,
    wallSeconds: state.wallSeconds ?? state.trainSeconds,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    outDir: options.outDir,
    interrupted,
  };
}

function selectionValue(val: EpochValidation, metric: SelectionMetric): number {
  if (metric === 'loss') return val.loss;
  if (metric === 'auc' && val.auc !== null) return val.auc;
  return val.accuracy;
}

/** Validation loss (mean cross-entropy), accuracy and macro ROC-AUC of the current weights. */
async function validate(
  model: TaskModel,
  dataset: Dataset,
  backbone: Backbone,
  parameters: ReadonlyMap<string, HostTensor>,
  batchSize: number,
  taskType: Dataset['taskType'],
): Promise<EpochValidation> {
  const classes = dataset.classes.length;
  const probabilities = new Float64Array(dataset.items.length * classes);
  let lossSum = 0;
  let row = 0;
  const labels: number[] | number[][] = [];
  for await (const batch of loadBatches(dataset, 0, {
    batchSize,
    preprocess: backbone.preprocess,
    channels: backbone.config.channels as 1 | 3,
    augment: false,
    seed: 0,
    shuffle: false,
  })) {
    const logits = await model.run(batch.pixels, batch.items.length, parameters);
    batch.items.forEach((item, i) => {
      const z = logits.data.subarray(i * classes, (i + 1) * classes);
      if (taskType === 'multilabel') {
        const truth = new Array<number>(classes).fill(0);
        for (const label of item.labels) truth[label] = 1;
        (labels as number[][]).push(truth);
        for (let c = 0; c < classes; c++) {
          const p = 1 / (1 + Math.exp(-z[c]!));
          probabilities[row * classes + c] = p;
          lossSum -=
            (truth[c]! * Math.log(Math.max(p, 1e-12)) + (1 - truth[c]!) * Math.log(Math.max(1 - p, 1e-12))) /
            classes;
        }
      } else {
        const max = Math.max(...z);
        let total = 0;
        for (let c = 0; c < classes; c++) total += Math.exp(z[c]! - max);
        for (let c = 0; c < classes; c++) probabilities[row * classes + c] = Math.exp(z[c]! - max) / total;
        const label = item.labels[0]!;
        (labels as number[]).push(label);
        lossSum -= z[label]! - max - Math.log(total);
      }
      row++;
    });
  }
  const summary = evaluate({ task: taskType, probabilities, labels }, { bootstrap: false });
  return {
    loss: lossSum / dataset.items.length,
    accuracy: summary.metrics.accuracy,
    auc: summary.metrics.rocAuc,
  };
}

export function adapterFromParameters(
  template: Adapter,
  parameters: ReadonlyMap<string, HostTensor>,
): Adapter {
  const pairs = new Map(
    [...template.pairs.keys()].map((key) => {
      const names = loraInputNames(parseSlotKey(key));
      return [key, { A: parameters.get(names.A)!, B: parameters.get(names.B)! }] as const;
    }),
  );
  return {
    ...template,
    pairs,
    head: { weight: parameters.get(TASK_HEAD.weight)!, bias: parameters.get(TASK_HEAD.bias)! },
  };
}

async function writeCheckpoint(
  dir: string,
  state: TrainerState,
  parameters: Map<string, HostTensor>,
  optimizer: Optimizer,
): Promise<void> {
  // Tensors first, state last: a state file always refers to tensors already on disk.
  await writeSafetensors(join(dir, PARAMS_FILE), parameters);
  const { tensors, metadata } = optimizerStateToSafetensors(optimizer.state());
  await writeSafetensors(join(dir, OPTIMIZER_FILE), tensors, { metadata });
  await writeJsonAtomic(join(dir, STATE_FILE), state);
}

async function restoreCheckpoint(
  dir: string,
  fresh: TrainerState,
  parameters: Map<string, HostTensor>,
  optimizer: Optimizer,
): Promise<TrainerState> {
  const statePath = join(dir, STATE_FILE);
  let saved: TrainerState;
  try {
    saved = JSON.parse(await readFile(statePath, 'utf8')) as TrainerState;
  } catch {
    throw new MeloError('NOT_FOUND', 'no resumable checkpoint (trainer-state.json) here', { file: dir });
  }
  for (const key of ['method', 'batchSize', 'gradAccum', 'trainItems', 'seed'] as const) {
    if (saved[key] !== fresh[key]) {
      throw new MeloError(
        'USAGE',
        `cannot resume: the checkpoint has ${key} ${saved[key]}, this run has ${fresh[key]}`,
        { file: statePath },
      );
    }
  }
  const params = await readSafetensors(join(dir, PARAMS_FILE));
  for (const name of parameters.keys()) {
    const tensor = params.tensors.get(name);
    if (!tensor)
      throw new MeloError('BAD_CHECKPOINT', `checkpoint lacks parameter ${name}`, {
        file: join(dir, PARAMS_FILE),
      });
    const target = parameters.get(name)!;
    if (tensor.data.length !== target.data.length)
      throw new MeloError(
        'BAD_CHECKPOINT',
        `checkpoint parameter ${name} has shape [${tensor.shape.join(', ')}], the model [${target.shape.join(', ')}]`,
        { file: join(dir, PARAMS_FILE) },
      );
    // Into the arrays in place: with full fine-tuning they live in the optimiser's shared memory.
    target.data.set(tensor.data);
  }
  const optimizerPath = join(dir, OPTIMIZER_FILE);
  const optimizerFile = await readSafetensors(optimizerPath);
  optimizer.loadState(
    optimizerStateFromSafetensors(optimizerFile.tensors, optimizerFile.metadata, optimizerPath),
    optimizerPath,
  );
  return saved;
}

async function writeFileTruncate(path: string): Promise<void> {
  const { writeFile } = await import('node:fs/promises');
  await writeFile(path, '');
}

async function fileSize(path: string): Promise<number> {
  return (await stat(path).catch(() => undefined))?.size ?? 0;
}

function copyTensor(tensor: HostTensor): HostTensor {
  return { shape: [...tensor.shape], data: Float32Array.from(tensor.data) };
}

export function describeLora(lora: LoraConfig, depth: number): string {
  return `rank ${lora.rank}, alpha ${lora.alpha}, ${lora.targets.join('+')} in ${loraLayers(lora, depth).length} blocks`;
}
