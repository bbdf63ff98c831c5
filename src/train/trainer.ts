import { appendFile, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { assertHfWritable } from '../checkpoints/save-hf.ts';
import type { Dataset } from '../data/dataset.ts';
import { batchCount, loadBatches } from '../data/loader.ts';
import { MeloError } from '../errors.ts';
import { evaluate } from '../eval/index.ts';
import type { AugmentConfig } from '../imaging/augment.ts';
import { saveAdapter } from '../io/peft.ts';
import {
  type Adapter,
  headParameterCount,
  initAdapter,
  loraParameterCount,
  type TaskMetadata,
} from '../model/adapter.ts';
import { checkAdapterFitsBackbone } from '../model/adapter-check.ts';
import { backboneParameterCount, parseSlotKey } from '../model/anatomy.ts';
import type { Backbone } from '../model/backbone.ts';
import { loraInputNames } from '../model/lora.ts';
import { type LoraConfig, loraLayers } from '../model/lora-config.ts';
import { adapterFeeds, TASK_HEAD, type TrainingMethod } from '../model/task-graph.ts';
import { TaskModel } from '../model/task-model.ts';
import type { TaskRouting } from '../pacs/routing.ts';
import type { HostTensor } from '../tensor.ts';
import { assertFiniteTensors, firstNonFinite, firstOutOfRange, MAX_ABS_WEIGHT } from '../util/finite.ts';
import { pathExists } from '../util/fs.ts';
import { logSumExp, sigmoid, softmax } from '../util/probabilities.ts';
import { Random } from '../util/random.ts';
import {
  CHECKPOINT_DIR,
  checkpointPath,
  readCheckpoint,
  removeLeftovers,
  writeCheckpoint,
} from './checkpoint.ts';
import { clipGradNorm } from './clip.ts';
import { saveFullCheckpoint } from './full-checkpoint.ts';
import { createOptimizer, type Optimizer, type OptimizerConfig } from './optimizer.ts';
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
  /** Binary tasks: the positive class recorded in the adapter (evaluation's default). */
  readonly positive?: string;
  /** Recorded in the adapter: the labels are ordered grades. */
  readonly ordinal?: boolean;
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

export const LOG_FILE = 'train-log.jsonl';

/** Raised when the loss or a gradient stops being finite: the run ends, its last good checkpoint kept. */
export class TrainingDiverged extends MeloError {
  constructor(problem: string, step: number, epoch: number, checkpoint: string | undefined) {
    super(
      'BAD_DATA',
      `training stopped at step ${step} (epoch ${epoch + 1}): ${problem} (non-finite pixels, or a learning rate too high?); ${
        checkpoint ? `the last good checkpoint is kept in ${checkpoint}` : 'no checkpoint had been written'
      } and nothing non-finite was saved`,
    );
    this.name = 'TrainingDiverged';
  }
}

/**
 * One trainer for MeLo LoRA, full fine-tuning and linear probing: the methods differ only in which
 * tensors are graph inputs and get gradients. Deterministic for a seed and thread count; resumable
 * exactly from its checkpoint (parameters, optimiser moments, step, epoch position; the data order and
 * augmentation are functions of (seed, epoch, item), so nothing else needs saving).
 */
export async function train(options: TrainOptions): Promise<TrainSummary> {
  checkTrainingInputs(options);
  const existed = {
    dir: await pathExists(options.outDir),
    log: await pathExists(join(options.outDir, LOG_FILE)),
  };
  let run: TrainingRun | undefined;
  try {
    run = await TrainingRun.open(options);
    while (!run.state.done && run.state.epoch < options.epochs) {
      await run.trainEpoch();
      await run.endEpoch();
    }
    if (!options.val) await run.saveResult();
  } catch (error) {
    // A run that fails before its first checkpoint leaves nothing behind (an --init-adapter for another
    // backbone used to leave an empty train-log.jsonl and checkpoint/).
    if (!options.resume && !(error instanceof TrainingInterrupted) && !run?.checkpointWritten)
      await removeOutput(options.outDir, existed);
    throw error;
  } finally {
    await run?.release();
  }
  return run.summary();
}

function checkTrainingInputs(options: TrainOptions): void {
  const classes = options.train.classes.length;
  if (classes < 2 && options.train.taskType !== 'multilabel')
    throw new MeloError('BAD_DATA', `training data has ${classes} class; need at least 2`, {
      file: options.train.source,
    });
  if (options.train.items.length === 0)
    throw new MeloError('BAD_DATA', 'training split is empty', { file: options.train.source });
  const init = options.initAdapter;
  if (init) {
    if (init.head.weight.shape[0] !== classes) {
      throw new MeloError(
        'BAD_ADAPTER',
        `initial adapter has ${init.head.weight.shape[0]} classes, the data has ${classes}`,
      );
    }
    checkAdapterFitsBackbone(init, options.backbone, 'initial adapter');
  }
}

/**
 * Removes what a failed fresh run created before its first checkpoint: the folder if it made it, else the
 * log if it made that (the checkpoint folder only appears with the first checkpoint).
 */
async function removeOutput(outDir: string, existed: { dir: boolean; log: boolean }): Promise<void> {
  if (!existed.dir) await rm(outDir, { recursive: true, force: true });
  else if (!existed.log) await rm(join(outDir, LOG_FILE), { force: true });
}

/** The state of one training run and its steps: open, train an epoch, end it, save, summarise. */
class TrainingRun {
  checkpointWritten = false;
  private readonly classes: number;
  private readonly lossKind: 'softmax' | 'sigmoid';
  private readonly classWeights: readonly number[] | undefined;
  private readonly batchesPerEpoch: number;
  private readonly totalSteps: number;
  private readonly paddedPixels: Float32Array;
  private interrupted = false;
  private epochStart = 0;

  private constructor(
    private readonly options: TrainOptions,
    readonly state: TrainerState,
    private readonly metadata: TaskMetadata,
    private readonly adapter: Adapter,
    private readonly parameters: Map<string, HostTensor>,
    private readonly optimizer: Optimizer,
    private readonly trainStep: TrainStep,
    private readonly evalModel: TaskModel | undefined,
  ) {
    const { backbone, train: data } = options;
    this.classes = data.classes.length;
    this.lossKind = data.taskType === 'multilabel' ? 'sigmoid' : 'softmax';
    this.classWeights =
      options.classWeights === 'balanced'
        ? balancedClassWeights(data.items, this.classes)
        : options.classWeights;
    this.batchesPerEpoch = batchCount(data.items.length, options.batchSize);
    this.totalSteps = Math.ceil(this.batchesPerEpoch / options.gradAccum) * options.epochs;
    const [height, width] = backbone.preprocess.inputSize;
    this.paddedPixels = new Float32Array(options.batchSize * backbone.config.channels * height * width);
  }

  /** Builds the trainable tensors (fresh, or restored from the checkpoint with --resume) and the sessions. */
  static async open(options: TrainOptions): Promise<TrainingRun> {
    const { backbone, method } = options;
    await mkdir(options.outDir, { recursive: true });
    await removeLeftovers(options.outDir);
    const metadata = taskMetadata(options);
    if (method === 'full') assertHfWritable(backbone.config);
    const random = new Random(options.seed);
    const start = options.initAdapter
      ? { ...options.initAdapter, metadata }
      : initAdapter(backbone.config, options.lora, metadata, random);
    const adapter: Adapter = method === 'lora' ? start : { ...start, pairs: new Map() };
    // The trainable tensors, copied so that training never mutates the loaded backbone.
    const parameters = new Map<string, HostTensor>();
    for (const [name, tensor] of adapterFeeds(adapter)) parameters.set(name, copyTensor(tensor));
    if (method === 'full')
      for (const [name, tensor] of backbone.weights)
        if (!name.startsWith('head.')) parameters.set(name, copyTensor(tensor));
    // Full fine-tuning updates every backbone weight (86 M for ViT-B): that update runs on worker threads in
    // WebAssembly, bit-identical to the in-thread loop, which stays for LoRA's 150 thousand values.
    const optimizer =
      method === 'full'
        ? await createWorkerOptimizer(options.optimizer, parameters, options.threads)
        : createOptimizer(options.optimizer);
    try {
      return await TrainingRun.create(options, metadata, adapter, parameters, optimizer);
    } catch (error) {
      await optimizer.close();
      throw error;
    }
  }

  private static async create(
    options: TrainOptions,
    metadata: TaskMetadata,
    adapter: Adapter,
    parameters: Map<string, HostTensor>,
    optimizer: Optimizer,
  ): Promise<TrainingRun> {
    const { backbone, method } = options;
    let state = freshState(options);
    if (options.resume) {
      state = await restore(options.outDir, state, parameters, optimizer);
      // A finished run resumed with more epochs goes on (the schedule spans the new total).
      if (state.done && state.epoch < options.epochs) state = { ...state, done: false };
    } else await writeFile(join(options.outDir, LOG_FILE), '');

    const batchesPerEpoch = batchCount(options.train.items.length, options.batchSize);
    const classes = options.train.classes.length;
    const threads = options.threads ? { threads: options.threads } : {};
    const trainStep = await TrainStep.create({
      backbone,
      method,
      lora: options.lora,
      numClasses: classes,
      batchSize: options.batchSize,
      loss: options.train.taskType === 'multilabel' ? 'sigmoid' : 'softmax',
      // Every batch is one run of the step: a resumed step continues the masks where the interrupted one was.
      dropout: { seed: options.seed, runsDone: state.epoch * batchesPerEpoch + state.batchInEpoch },
      ...threads,
    });
    const evalModel = options.val
      ? await TaskModel.create({ backbone, method, lora: options.lora, numClasses: classes, ...threads })
      : undefined;
    const run = new TrainingRun(
      options,
      state,
      metadata,
      adapter,
      parameters,
      optimizer,
      trainStep,
      evalModel,
    );
    run.checkpointWritten = options.resume;
    options.onEvent?.({
      type: 'start',
      totalSteps: run.totalSteps,
      step: state.step,
      epochs: options.epochs,
      trainable: run.trainableCount(),
      resumed: options.resume,
    });
    return run;
  }

  /** Runs the rest of the current epoch's batches, one optimiser step per `gradAccum` of them. */
  async trainEpoch(): Promise<void> {
    const { options, state } = this;
    const { backbone } = options;
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
      const loss = await this.runMicroBatch(batch.pixels, batch.items, accumulated);
      microInStep++;
      state.batchInEpoch = batch.index + 1;
      state.trainLossSum += loss;
      state.trainLossCount++;
      state.imagesSeen += batch.items.length;
      const endOfEpoch = state.batchInEpoch === this.batchesPerEpoch;
      if (microInStep < options.gradAccum && !endOfEpoch) {
        state.trainSeconds += (performance.now() - stepStart) / 1000;
        continue;
      }
      const lr = await this.applyStep(accumulated);
      microInStep = 0;
      state.trainSeconds += (performance.now() - stepStart) / 1000;
      await this.reportStep(loss, lr);
      if (options.signal?.aborted && !endOfEpoch) {
        await this.checkpoint();
        this.stopInterrupted();
      }
    }
    this.epochStart = epochStart;
  }

  /** Forward and backward of one micro-batch; adds its gradients to `accumulated` and returns its loss. */
  private async runMicroBatch(
    pixels: Float32Array,
    items: Parameters<typeof lossTensors>[0],
    accumulated: Map<string, Float32Array>,
  ): Promise<number> {
    const { options } = this;
    this.paddedPixels.set(pixels);
    this.paddedPixels.fill(0, pixels.length);
    const { targets, sampleWeights } = lossTensors(
      items,
      options.batchSize,
      this.classes,
      options.train.taskType,
      {
        labelSmoothing: this.lossKind === 'softmax' ? options.labelSmoothing : 0,
        gradAccum: options.gradAccum,
        ...(this.classWeights ? { classWeights: this.classWeights } : {}),
      },
    );
    const result = await this.trainStep.run(
      { pixels: this.paddedPixels, targets, sampleWeights },
      this.parameters,
    );
    const loss = result.loss * options.gradAccum;
    if (!Number.isFinite(loss)) this.diverged(`the loss is ${loss}`);
    for (const [name, gradient] of result.gradients) {
      const sum = accumulated.get(name);
      if (sum) for (let i = 0; i < sum.length; i++) sum[i]! += gradient.data[i]!;
      // Each run hands back fresh output arrays, so the first micro-batch's gradient becomes the sum
      // as is: no 344 MB copy per step when fully fine-tuning ViT-B.
      else accumulated.set(name, gradient.data);
    }
    return loss;
  }

  /** Clips and applies the accumulated gradients; returns the learning rate used. */
  private async applyStep(accumulated: Map<string, Float32Array>): Promise<number> {
    const { options, state } = this;
    const gradients = new Map<string, HostTensor>();
    for (const [name, sum] of accumulated)
      gradients.set(name, { shape: this.parameters.get(name)!.shape, data: sum });
    for (const [name, gradient] of gradients) {
      const bad = firstNonFinite(gradient.data);
      if (bad >= 0) this.diverged(`the gradient of ${name} holds ${gradient.data[bad]}`);
    }
    if (options.maxGradNorm > 0) clipGradNorm(gradients, options.maxGradNorm);
    const lr = learningRate(options.schedule, state.step, this.totalSteps);
    await this.optimizer.step(this.parameters, gradients, lr);
    // A weight past ±1e6 is divergence even while finite: the next forward pass overflows, and no loader
    // would accept an adapter holding it.
    for (const [name, parameter] of this.parameters) {
      const bad = firstOutOfRange(parameter.data, MAX_ABS_WEIGHT);
      if (bad >= 0)
        this.diverged(`the updated ${name} holds ${parameter.data[bad]} (beyond ±${MAX_ABS_WEIGHT})`);
    }
    accumulated.clear();
    state.step++;
    return lr;
  }

  private diverged(problem: string): never {
    const { state } = this;
    throw new TrainingDiverged(
      problem,
      state.step + 1,
      state.epoch,
      this.checkpointWritten ? checkpointPath(this.options.outDir) : undefined,
    );
  }

  private async reportStep(loss: number, lr: number): Promise<void> {
    const { state } = this;
    const imagesPerSecond = state.imagesSeen / Math.max(state.trainSeconds, 1e-9);
    this.options.onEvent?.({
      type: 'step',
      epoch: state.epoch,
      step: state.step,
      totalSteps: this.totalSteps,
      loss,
      lr,
      imagesPerSecond,
      elapsedSeconds: state.trainSeconds,
    });
    await this.log({ type: 'step', epoch: state.epoch, step: state.step, loss, lr, imagesPerSecond });
  }

  /** End of epoch: validate, keep the best, maybe stop early, checkpoint. */
  async endEpoch(): Promise<void> {
    const { options, state } = this;
    const trainLoss = state.trainLossSum / Math.max(1, state.trainLossCount);
    let improved = false;
    let val: EpochValidation | undefined;
    if (options.val && this.evalModel) {
      val = await validate(
        this.evalModel,
        options.val,
        options.backbone,
        this.parameters,
        options.batchSize,
        options.train.taskType,
      );
      const value = selectionValue(val, options.metric);
      improved =
        state.bestValue === null ||
        (options.metric === 'loss' ? value < state.bestValue : value > state.bestValue);
      if (improved) {
        state.bestValue = value;
        state.bestEpoch = state.epoch;
        state.epochsWithoutImprovement = 0;
        await this.saveResult();
      } else {
        state.epochsWithoutImprovement++;
      }
    }
    const seconds = (performance.now() - this.epochStart) / 1000;
    state.wallSeconds = (state.wallSeconds ?? 0) + seconds;
    options.onEvent?.({
      type: 'epoch',
      epoch: state.epoch,
      trainLoss,
      ...(val ? { val } : {}),
      improved,
      seconds,
    });
    await this.log({
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
    await this.checkpoint();
    if (options.signal?.aborted && !state.done) this.stopInterrupted();
  }

  /** Writes the trained adapter (or, for full fine-tuning, the whole checkpoint) to the output folder. */
  async saveResult(): Promise<void> {
    const { options } = this;
    assertFiniteTensors(this.parameters, { code: 'BAD_CHECKPOINT', file: options.outDir });
    if (options.method === 'full')
      await saveFullCheckpoint(options.outDir, options.backbone, this.parameters, this.metadata);
    else
      await saveAdapter(options.outDir, adapterFromParameters(this.adapter, this.parameters), {
        dtype: options.adapterDtype ?? 'F32',
        backbone: options.backbone.config,
        layout: options.backbone.layout,
      });
  }

  private async checkpoint(): Promise<void> {
    await writeCheckpoint(this.options.outDir, this.state, this.parameters, this.optimizer.state());
    this.checkpointWritten = true;
  }

  private stopInterrupted(): never {
    const checkpoint = join(this.options.outDir, CHECKPOINT_DIR);
    this.interrupted = true;
    this.options.onEvent?.({ type: 'interrupted', step: this.state.step, checkpoint });
    throw new TrainingInterrupted(checkpoint);
  }

  private log(record: Record<string, unknown>): Promise<void> {
    return appendFile(join(this.options.outDir, LOG_FILE), `${JSON.stringify(record)}\n`);
  }

  private trainableCount(): number {
    return this.trainStep.trainable.reduce((sum, name) => sum + this.parameters.get(name)!.data.length, 0);
  }

  async release(): Promise<void> {
    await this.trainStep.release();
    await this.evalModel?.release();
    await this.optimizer.close();
  }

  async summary(): Promise<TrainSummary> {
    const { options, state, adapter } = this;
    const { method, backbone } = options;
    const adapterBytes =
      method === 'full'
        ? await fileSize(join(options.outDir, 'model.safetensors'))
        : await fileSize(join(options.outDir, 'adapter_model.safetensors'));
    const trainableCount = this.trainableCount();
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
      interrupted: this.interrupted,
    };
  }
}

function taskMetadata(options: TrainOptions): TaskMetadata {
  const { backbone } = options;
  return {
    task: options.taskName,
    taskType: options.train.taskType,
    labels: [...options.train.classes],
    imageSize: backbone.preprocess.inputSize,
    mean: backbone.preprocess.mean,
    std: backbone.preprocess.std,
    backboneFingerprint: backbone.fingerprint,
    method: options.method,
    ...(options.routing ? { routing: options.routing } : {}),
    ...(options.positive !== undefined ? { positive: options.positive } : {}),
    ...(options.ordinal ? { ordinal: true } : {}),
  };
}

function freshState(options: TrainOptions): TrainerState {
  return {
    version: 1,
    method: options.method,
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
          const p = sigmoid(z[c]!);
          probabilities[row * classes + c] = p;
          lossSum -=
            (truth[c]! * Math.log(Math.max(p, 1e-12)) + (1 - truth[c]!) * Math.log(Math.max(1 - p, 1e-12))) /
            classes;
        }
      } else {
        probabilities.set(softmax(z), row * classes);
        const label = item.labels[0]!;
        (labels as number[]).push(label);
        lossSum += logSumExp(z) - z[label]!;
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

/** Loads the checkpoint into `parameters` and `optimizer` after checking it belongs to this run. */
async function restore(
  outDir: string,
  fresh: TrainerState,
  parameters: Map<string, HostTensor>,
  optimizer: Optimizer,
): Promise<TrainerState> {
  const checkpoint = await readCheckpoint<TrainerState>(outDir);
  const saved = checkpoint.state;
  for (const key of ['method', 'batchSize', 'gradAccum', 'trainItems', 'seed'] as const) {
    if (saved[key] !== fresh[key]) {
      throw new MeloError(
        'USAGE',
        `cannot resume: the checkpoint has ${key} ${saved[key]}, this run has ${fresh[key]}`,
        { file: checkpoint.path },
      );
    }
  }
  for (const name of parameters.keys()) {
    const tensor = checkpoint.parameters.get(name);
    if (!tensor)
      throw new MeloError('BAD_CHECKPOINT', `checkpoint lacks parameter ${name}`, { file: checkpoint.path });
    const target = parameters.get(name)!;
    if (tensor.data.length !== target.data.length)
      throw new MeloError(
        'BAD_CHECKPOINT',
        `checkpoint parameter ${name} has shape [${tensor.shape.join(', ')}], the model [${target.shape.join(', ')}]`,
        { file: checkpoint.path },
      );
    // Into the arrays in place: with full fine-tuning they live in the optimiser's shared memory.
    target.data.set(tensor.data);
  }
  optimizer.loadState(checkpoint.optimizer, checkpoint.path);
  return saved;
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
