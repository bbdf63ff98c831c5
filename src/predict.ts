import type { Backbone } from './checkpoints/load.ts';
import { MeloError } from './errors.ts';
import { preprocess } from './imaging/preprocess.ts';
import { type ReadImageOptions, readAnyImage } from './imaging/read.ts';
import { loadAdapter } from './io/peft.ts';
import type { Adapter } from './model/adapter.ts';
import { checkAdapterFitsBackbone } from './model/adapter-check.ts';
import { BackboneClassifier } from './model/inference.ts';
import { adapterFeeds, type TrainingMethod } from './model/task-graph.ts';
import { TaskModel } from './model/task-model.ts';
import { firstNonFinite } from './util/finite.ts';
import { sigmoids, softmax } from './util/probabilities.ts';

export interface Prediction {
  readonly image: string;
  readonly task: string;
  readonly labels: string[];
  readonly logits: number[];
  readonly probabilities: number[];
  readonly prediction: string;
}

export interface PredictOptions extends ReadImageOptions {
  readonly threads?: number;
  /** Images per ORT call. */
  readonly batchSize?: number;
  /** Per image (same order), the names of the tasks to run on it; absent or undefined: every task. */
  readonly selection?: readonly (ReadonlySet<string> | undefined)[];
}

/** Classifies image files with the backbone's own head (task "backbone"). */
export async function predict(
  backbone: Backbone,
  images: readonly string[],
  options: PredictOptions = {},
): Promise<Prediction[]> {
  if (backbone.config.numClasses === 0) {
    throw new MeloError(
      'USAGE',
      `backbone has no classifier head; train a task adapter with 'melo train --backbone ${backbone.dir} ...' and pass it with --adapter <dir>`,
      { file: backbone.dir },
    );
  }
  const model = await BackboneClassifier.create(backbone, options);
  try {
    const labels = backbone.labels ?? Array.from({ length: backbone.config.numClasses }, (_, i) => String(i));
    const predictions: Prediction[] = [];
    const batchSize = options.batchSize ?? 8;
    for (let start = 0; start < images.length; start += batchSize) {
      const paths = images.slice(start, start + batchSize);
      const pixels = await preparePixels(backbone, paths, options);
      const { logits } = await model.run(pixels, paths.length);
      paths.forEach((image, row) => {
        const rowLogits = Array.from(logits!.data.subarray(row * labels.length, (row + 1) * labels.length));
        predictions.push(toPrediction(image, 'backbone', labels, rowLogits));
      });
    }
    return predictions;
  } finally {
    await model.release();
  }
}

/** Reads, decodes and preprocesses images into one [batch, C, H, W] buffer. */
export async function preparePixels(
  backbone: Backbone,
  paths: readonly string[],
  options: ReadImageOptions = {},
): Promise<Float32Array> {
  const [height, width] = backbone.preprocess.inputSize;
  const perImage = backbone.config.channels * height * width;
  const pixels = new Float32Array(paths.length * perImage);
  const decoded = await Promise.all(paths.map((path) => readAnyImage(path, options)));
  decoded.forEach((image, i) => {
    const bad = firstNonFinite(image.data);
    if (bad >= 0)
      throw new MeloError('BAD_IMAGE', `pixel value ${image.data[bad]} at element ${bad} is not finite`, {
        file: paths[i]!,
      });
    pixels.set(preprocess(image, backbone.preprocess, backbone.config.channels as 1 | 3), i * perImage);
  });
  return pixels;
}

export { softmax };

/**
 * Never lets a NaN become a probability: non-finite logits (which finite weights and pixels cannot produce
 * short of an overflow) fail with one line instead of printing `null` probabilities and a made-up label.
 */
function assertFiniteLogits(image: string, task: string, logits: readonly number[]): void {
  const bad = firstNonFinite(logits);
  if (bad < 0) return;
  throw new MeloError(
    'BAD_IMAGE',
    `task '${task}': the model's output ${bad} is ${logits[bad]} (an overflow in the image or the weights); no prediction`,
    image === '' ? {} : { file: image },
  );
}

export function toPrediction(image: string, task: string, labels: string[], logits: number[]): Prediction {
  assertFiniteLogits(image, task, logits);
  const probabilities = softmax(logits);
  let best = 0;
  probabilities.forEach((p, i) => {
    if (p > probabilities[best]!) best = i;
  });
  return { image, task, labels, logits, probabilities, prediction: labels[best]! };
}

/** A loaded task plug-in with its resolved name and labels, checked against the backbone. */
export interface LoadedTask {
  readonly name: string;
  readonly dir: string;
  readonly adapter: Adapter;
  readonly labels: string[];
}

/**
 * Loads adapters for a backbone. The task is named by the adapter's metadata, else its directory;
 * labels come from the metadata, else the backbone's id2label when the class counts agree, else 0, 1, ….
 */
export async function loadTasks(backbone: Backbone, dirs: readonly string[]): Promise<LoadedTask[]> {
  const tasks: LoadedTask[] = [];
  for (const dir of dirs) {
    const adapter = await loadAdapter(dir);
    checkAdapterFitsBackbone(adapter, backbone, dir);
    const classes = adapter.head.weight.shape[0]!;
    const labels = adapter.hasMeloMetadata
      ? [...adapter.metadata.labels]
      : backbone.labels?.length === classes
        ? [...backbone.labels]
        : [...adapter.metadata.labels];
    const name = adapter.metadata.task;
    if (tasks.some((task) => task.name === name))
      throw new MeloError('USAGE', `two adapters are both named task '${name}'`, { file: dir });
    tasks.push({ name, dir, adapter: { ...adapter, metadata: { ...adapter.metadata, labels } }, labels });
  }
  return tasks;
}

export function taskMethod(adapter: Adapter): TrainingMethod {
  return adapter.pairs.size > 0 ? 'lora' : 'linear';
}

/** Adapters that can share one session: same method, LoRA layout and class count. */
export function taskShapeKey(adapter: Adapter): string {
  const { rank, alpha, targets, layers } = adapter.lora;
  return JSON.stringify([
    taskMethod(adapter),
    rank,
    alpha,
    targets,
    layers ?? null,
    adapter.head.weight.shape[0],
  ]);
}

/** Classifies images for each task: one prediction per (image, task), image-major. */
export async function predictTasks(
  backbone: Backbone,
  tasks: readonly LoadedTask[],
  images: readonly string[],
  options: PredictOptions = {},
): Promise<Prediction[]> {
  const predictor = await TaskPredictor.create(backbone, tasks, options);
  try {
    return await predictor.run(images, options);
  } finally {
    await predictor.release();
  }
}

/**
 * Loaded tasks with their ORT sessions (one per LoRA shape), kept across calls: `melo predict` runs it
 * once, `melo pacs pull` once per batch of retrieved instances.
 */
export class TaskPredictor {
  private constructor(
    private readonly backbone: Backbone,
    readonly tasks: readonly LoadedTask[],
    private readonly models: ReadonlyMap<string, TaskModel>,
  ) {}

  static async create(
    backbone: Backbone,
    tasks: readonly LoadedTask[],
    options: Pick<PredictOptions, 'threads'> = {},
  ): Promise<TaskPredictor> {
    const models = new Map<string, TaskModel>();
    try {
      for (const task of tasks) {
        const key = taskShapeKey(task.adapter);
        if (models.has(key)) continue;
        models.set(
          key,
          await TaskModel.create({
            backbone,
            method: taskMethod(task.adapter),
            lora: task.adapter.lora,
            numClasses: task.labels.length,
            ...(options.threads ? { threads: options.threads } : {}),
          }),
        );
      }
    } catch (error) {
      for (const model of models.values()) await model.release();
      throw error;
    }
    return new TaskPredictor(backbone, tasks, models);
  }

  async run(images: readonly string[], options: PredictOptions = {}): Promise<Prediction[]> {
    const { backbone, tasks, models } = this;
    const predictions: Prediction[] = [];
    const batchSize = options.batchSize ?? 8;
    for (let start = 0; start < images.length; start += batchSize) {
      const paths = images.slice(start, start + batchSize);
      const pixels = await preparePixels(backbone, paths, options);
      const perImage =
        backbone.config.channels * backbone.preprocess.inputSize[0] * backbone.preprocess.inputSize[1];
      const wanted = (row: number, task: LoadedTask) =>
        options.selection?.[start + row]?.has(task.name) ?? true;
      // Each task runs on the rows routed to it only: rows are gathered into a smaller batch when some are not.
      const perTask = new Map<string, { rows: number[]; logits: Float32Array }>();
      for (const task of tasks) {
        const rows = paths.map((_, row) => row).filter((row) => wanted(row, task));
        if (rows.length === 0) continue;
        const input = rows.length === paths.length ? pixels : gatherRows(pixels, rows, perImage);
        const logits = await models
          .get(taskShapeKey(task.adapter))!
          .run(input, rows.length, adapterFeeds(task.adapter));
        perTask.set(task.name, { rows, logits: logits.data });
      }
      paths.forEach((image, row) => {
        for (const task of tasks) {
          const result = perTask.get(task.name);
          const at = result?.rows.indexOf(row) ?? -1;
          if (!result || at < 0) continue;
          const classes = task.labels.length;
          const logits = Array.from(result.logits.subarray(at * classes, (at + 1) * classes));
          predictions.push(
            task.adapter.metadata.taskType === 'multilabel'
              ? toMultilabelPrediction(image, task.name, task.labels, logits)
              : toPrediction(image, task.name, task.labels, logits),
          );
        }
      });
    }
    return predictions;
  }

  async release(): Promise<void> {
    for (const model of this.models.values()) await model.release();
  }
}

function gatherRows(pixels: Float32Array, rows: readonly number[], perImage: number): Float32Array {
  const out = new Float32Array(rows.length * perImage);
  rows.forEach((row, i) => {
    out.set(pixels.subarray(row * perImage, (row + 1) * perImage), i * perImage);
  });
  return out;
}

/** Multi-label: independent sigmoids; the prediction lists every label at or above 0.5, '|'-separated. */
export function toMultilabelPrediction(
  image: string,
  task: string,
  labels: string[],
  logits: number[],
): Prediction {
  assertFiniteLogits(image, task, logits);
  const probabilities = sigmoids(logits);
  const positive = labels.filter((_, i) => probabilities[i]! >= 0.5);
  return {
    image,
    task,
    labels,
    logits,
    probabilities,
    prediction: positive.length > 0 ? positive.join('|') : 'none',
  };
}
