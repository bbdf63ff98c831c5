/**
 * melo as a library: `import { loadBackbone, openDataSplits, trainAdapter, evaluateTask, loadTasks,
 * predictTasks, buildApp } from 'melo'`. The same functions the `melo` command runs; README, "Use from
 * TypeScript", walks through them. Everything else under src/ is internal and may change.
 *
 * - backbones: loadBackbone (a Hugging Face or timm ViT directory, safetensors only);
 * - data: openDataSplits (ImageFolder, CSV/TSV manifests, MedMNIST .npz, idx, BCCD, with their splits);
 * - training: trainAdapter, MeLo LoRA (or linear probing, full fine-tuning) with melo train's defaults;
 * - adapters: loadAdapter, saveAdapter (PEFT layout on disk, task metadata under `melo`);
 * - prediction: loadTasks, predictTasks, predict (the backbone's own head);
 * - evaluation: evaluateTask, clinicians' metrics with bootstrap intervals;
 * - serving: buildApp (the fastify app, not listening), startServer (listening);
 * - errors: MeloError, with a code and the file it concerns.
 */

export { TRAIN_DEFAULTS, type TrainAdapterOptions, trainAdapter } from './api/train.ts';
export { type Backbone, type CheckpointLayout, loadBackbone } from './checkpoints/load.ts';
export { MELO_VERSION } from './cli/root.ts';
export type { DataItem, DataSplits, Dataset, SplitName } from './data/dataset.ts';
export { type OpenDataOptions, openDataSplits } from './data/open.ts';
export { MeloError } from './errors.ts';
export {
  type EvaluatedModel,
  type EvaluateTaskOptions,
  evaluateTask,
  type PredictionRow,
  type TaskEvaluation,
} from './eval/run.ts';
export type { EvalSummary } from './eval/summary.ts';
export { loadAdapter, saveAdapter } from './io/peft.ts';
export type { Adapter, TaskMetadata, TaskType } from './model/adapter.ts';
export { DicomwebPacs, type InstanceRef, type PacsAuth } from './pacs/dicomweb.ts';
export { type InstanceHeader, readInstanceHeader } from './pacs/instance.ts';
export { type PullOptions, type PullSummary, pullAndClassify, type SrDestination } from './pacs/pull.ts';
export { type RoutingKeys, routingMatches, type TaskRouting } from './pacs/routing.ts';
export { type SrInput, type SrTaskResult, writeSr } from './pacs/sr.ts';
export {
  type LoadedTask,
  loadTasks,
  type Prediction,
  type PredictOptions,
  predict,
  predictTasks,
} from './predict.ts';
export { buildApp } from './serve/app.ts';
export type { ServeOptions } from './serve/options.ts';
export { type ListenOptions, startServer } from './serve/server.ts';
export type { TrainEvent, TrainSummary } from './train/trainer.ts';
