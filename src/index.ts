/**
 * melo as a library: `import { loadBackbone, openDataSplits, trainAdapter, evaluateTask, loadTasks,
 * predictTasks, buildApp } from 'melo'`. The same functions the `melo` command runs; README, "Use from
 * TypeScript", walks through them. Everything else under src/ is internal and may change.
 */

// Backbones: a pretrained ViT directory (Hugging Face or timm layout, safetensors only).
export { type Backbone, type CheckpointLayout, loadBackbone } from './checkpoints/load.ts';
// Data: ImageFolder, CSV/TSV manifests, MedMNIST .npz, idx, BCCD, with their splits.
export type { DataItem, DataSplits, Dataset, SplitName } from './data/dataset.ts';
export { type OpenDataOptions, openDataSplits } from './data/open.ts';
// Training: MeLo LoRA (or linear probing, full fine-tuning) with melo train's defaults.
export { TRAIN_DEFAULTS, type TrainAdapterOptions, trainAdapter } from './api/train.ts';
export type { TrainEvent, TrainSummary } from './train/trainer.ts';
// Adapters: PEFT layout on disk, task metadata under `melo`.
export { loadAdapter, saveAdapter } from './io/peft.ts';
export type { Adapter, TaskMetadata, TaskType } from './model/adapter.ts';
// Prediction: images to per-task probabilities.
export {
  type LoadedTask,
  loadTasks,
  type Prediction,
  type PredictOptions,
  predict,
  predictTasks,
} from './predict.ts';
// Evaluation: clinicians' metrics with bootstrap intervals.
export {
  type EvaluatedModel,
  type EvaluateTaskOptions,
  evaluateTask,
  type PredictionRow,
  type TaskEvaluation,
} from './eval/run.ts';
export type { EvalSummary } from './eval/summary.ts';
// Serving: the fastify app (not listening) or a listening server.
export { buildApp } from './serve/app.ts';
export type { ServeOptions } from './serve/options.ts';
export { type ListenOptions, startServer } from './serve/server.ts';
// Errors carry a code and the file they concern.
export { MeloError } from './errors.ts';
export { MELO_VERSION } from './cli/root.ts';
