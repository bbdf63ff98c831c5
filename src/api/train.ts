import type { Backbone } from '../checkpoints/load.ts';
import type { Dataset } from '../data/dataset.ts';
import { DEFAULT_AUGMENT } from '../imaging/augment.ts';
import { MELO_LORA_DEFAULTS, validateLoraConfig } from '../model/lora-config.ts';
import type { TrainingMethod } from '../model/task-graph.ts';
import { type SelectionMetric, type TrainEvent, type TrainSummary, train } from '../train/trainer.ts';

/** What `trainAdapter` needs; everything but the first three has the defaults of `melo train`. */
export interface TrainAdapterOptions {
  readonly backbone: Backbone;
  readonly train: Dataset;
  /** Written there: the adapter (PEFT layout), a resumable checkpoint, the training log. */
  readonly outDir: string;
  /** Picks the best epoch; without it the last epoch's adapter is kept. */
  readonly val?: Dataset;
  /** 'lora' (MeLo, default), 'linear' (head only) or 'full' fine-tuning. */
  readonly method?: TrainingMethod;
  /** LoRA rank on query and value of every block (MeLo: 4). */
  readonly rank?: number;
  readonly epochs?: number;
  readonly batchSize?: number;
  /** Peak learning rate of the cosine schedule (1e-3, or 1e-4 for 'full'). */
  readonly lr?: number;
  readonly seed?: number;
  /** ONNX Runtime threads (every core unless set). */
  readonly threads?: number;
  /** Recorded in the adapter; the name of `outDir` unless set. */
  readonly taskName?: string;
  readonly augment?: boolean;
  readonly metric?: SelectionMetric;
  /** Continue the run checkpointed in `outDir`. */
  readonly resume?: boolean;
  readonly signal?: AbortSignal;
  readonly onEvent?: (event: TrainEvent) => void;
}

/**
 * The defaults of `melo train` (test/api.test.ts checks them against the command's own option defaults).
 * AdamW, cosine schedule without warm-up, gradient clip 1, batch 16, 10 epochs, best epoch by AUC.
 */
export const TRAIN_DEFAULTS = {
  method: 'lora',
  rank: MELO_LORA_DEFAULTS.rank,
  epochs: 10,
  batchSize: 16,
  lr: { lora: 1e-3, linear: 1e-3, full: 1e-4 },
  seed: 0,
  maxGradNorm: 1,
  metric: 'auc',
} as const;

/** Trains one task on a loaded backbone the way `melo train` does, with its defaults. */
export async function trainAdapter(options: TrainAdapterOptions): Promise<TrainSummary> {
  const method = options.method ?? TRAIN_DEFAULTS.method;
  const rank = options.rank ?? TRAIN_DEFAULTS.rank;
  const lr = options.lr ?? TRAIN_DEFAULTS.lr[method];
  const taskName = options.taskName ?? options.outDir.replace(/\/+$/, '').split('/').pop()!;
  return train({
    backbone: options.backbone,
    train: options.train,
    ...(options.val ? { val: options.val } : {}),
    method,
    lora: validateLoraConfig({ ...MELO_LORA_DEFAULTS, rank, alpha: rank }, options.backbone.config.depth),
    optimizer: { kind: 'adamw' },
    schedule: { kind: 'cosine', lr, warmupSteps: 0, minLr: 0 },
    maxGradNorm: TRAIN_DEFAULTS.maxGradNorm,
    labelSmoothing: 0,
    epochs: options.epochs ?? TRAIN_DEFAULTS.epochs,
    batchSize: options.batchSize ?? TRAIN_DEFAULTS.batchSize,
    gradAccum: 1,
    shuffle: true,
    augment: options.augment === false ? false : DEFAULT_AUGMENT,
    seed: options.seed ?? TRAIN_DEFAULTS.seed,
    ...(options.threads ? { threads: options.threads } : {}),
    taskName,
    outDir: options.outDir,
    metric: options.metric ?? TRAIN_DEFAULTS.metric,
    patience: 0,
    resume: options.resume ?? false,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onEvent ? { onEvent: options.onEvent } : {}),
  });
}
