/**
 * Runs a task (an adapter, or the backbone's own head) over a dataset split and evaluates it: the library
 * core of `melo eval`, callable from the demo and studies without the CLI.
 */
import type { Backbone } from '../checkpoints/load.ts';
import type { Dataset } from '../data/dataset.ts';
import { loadBatches } from '../data/loader.ts';
import { MeloError } from '../errors.ts';
import { BackboneClassifier } from '../model/inference.ts';
import { adapterFeeds } from '../model/task-graph.ts';
import { TaskModel } from '../model/task-model.ts';
import type { LoadedTask } from '../predict.ts';
import { taskMethod } from '../predict.ts';
import { firstNonFinite } from '../util/finite.ts';
import { formatLabels } from '../util/labels.ts';
import { sigmoids, softmax } from '../util/probabilities.ts';
import type { TaskType } from './prepare.ts';
import { type EvalSummary, evaluate } from './summary.ts';

/** What is evaluated: a loaded task adapter, or 'backbone' for the checkpoint's own classifier head. */
export type EvaluatedModel = LoadedTask | 'backbone';

export interface EvaluateTaskOptions {
  /** Images per ONNX Runtime call; 32 unless set. */
  batchSize?: number;
  /** ONNX Runtime intra-op threads; all cores unless set. */
  threads?: number;
  /** Bootstrap resamples for the confidence intervals; 0 turns them off; 1000 unless set. */
  bootstrap?: number;
  /** Bootstrap seed; 0 unless set. */
  seed?: number;
  /** Decision threshold for binary and multi-label tasks; 0.5 unless set. */
  threshold?: number;
  /** Equal-width calibration bins; 15 unless set. */
  calibrationBins?: number;
  /** Loader threads that decode images; 0 decodes in-process; the loader's default unless set. */
  workers?: number;
  /**
   * Binary tasks: the class the binary metrics are about (listed second in the result); default the
   * adapter's recorded positive class, else the dataset's second class.
   */
  positive?: string;
  /** Ordered grades: adds quadratic weighted kappa and mean grade error; default the adapter's record. */
  ordinal?: boolean;
  /** Called after each batch with the images done so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** One evaluated image: its item id, its true label(s) and every class probability. */
export interface PredictionRow {
  readonly id: string;
  /** Single-label: [class index]. Multi-label: the indices of the positive labels, ascending. */
  readonly labels: readonly number[];
  /** Softmax over the classes (binary, multi-class) or one sigmoid per label (multi-label). */
  readonly probabilities: readonly number[];
}

export interface TaskEvaluation {
  /** The adapter's task name, or 'backbone'. */
  readonly task: string;
  readonly taskType: TaskType;
  /** The dataset's class names, in the model's output order. */
  readonly classNames: readonly string[];
  readonly summary: EvalSummary;
  readonly rows: readonly PredictionRow[];
}

export const DEFAULT_EVAL_BATCH_SIZE = 32;

/** What the model outputs, known before any session is built so that a mismatch fails fast. */
interface ModelOutputs {
  readonly name: string;
  readonly labels: readonly string[];
  readonly multilabel: boolean;
  /** Where the model came from, named in errors. */
  readonly file: string;
}

interface ModelRunner {
  run(pixels: Float32Array, batch: number): Promise<Float32Array>;
  release(): Promise<void>;
}

function modelOutputs(backbone: Backbone, model: EvaluatedModel): ModelOutputs {
  if (model !== 'backbone') {
    return {
      name: model.name,
      labels: model.labels,
      multilabel: model.adapter.metadata.taskType === 'multilabel',
      file: model.dir,
    };
  }
  const classes = backbone.config.numClasses;
  if (classes === 0) {
    throw new MeloError(
      'USAGE',
      'backbone has no classifier head; pass a task adapter with --adapter <dir>',
      {
        file: backbone.dir,
      },
    );
  }
  return {
    name: 'backbone',
    labels: backbone.labels ?? Array.from({ length: classes }, (_, i) => String(i)),
    multilabel: false,
    file: backbone.dir,
  };
}

async function createRunner(
  backbone: Backbone,
  model: EvaluatedModel,
  threads: number | undefined,
): Promise<ModelRunner> {
  const sessionOptions = threads !== undefined ? { threads } : {};
  if (model === 'backbone') {
    const classifier = await BackboneClassifier.create(backbone, sessionOptions);
    return {
      async run(pixels, batch) {
        return (await classifier.run(pixels, batch)).logits!.data;
      },
      release: () => classifier.release(),
    };
  }
  const session = await TaskModel.create({
    backbone,
    method: taskMethod(model.adapter),
    lora: model.adapter.lora,
    numClasses: model.labels.length,
    ...sessionOptions,
  });
  const feeds = adapterFeeds(model.adapter);
  return {
    async run(pixels, batch) {
      return (await session.run(pixels, batch, feeds)).data;
    },
    release: () => session.release(),
  };
}

function quotedNames(names: readonly string[]): string {
  return names.map((name) => JSON.stringify(name)).join(', ');
}

/** How the model's outputs map onto the dataset's classes. */
interface ClassMatch {
  /** For each dataset class, the model output that scores it. */
  readonly outputOf: readonly number[];
  /** Plain-language notes on how classes were matched, for the report. */
  readonly notes: string[];
}

/**
 * Checks that the model's outputs can mean the dataset's classes. Classes match by name when the model's
 * names are the data's in another order (an ImageFolder sorts its class directories, a checkpoint head has
 * its own order), else by index.
 */
function matchClasses(outputs: ModelOutputs, dataset: Dataset): ClassMatch {
  const what = outputs.name === 'backbone' ? "backbone's head" : 'adapter';
  if (outputs.labels.length !== dataset.classes.length) {
    throw new MeloError(
      'USAGE',
      `${what} has ${outputs.labels.length} classes (${quotedNames(outputs.labels)}) but data ${dataset.source} has ${dataset.classes.length} (${quotedNames(dataset.classes)})`,
      { file: outputs.file },
    );
  }
  if (dataset.taskType === 'multilabel' && !outputs.multilabel) {
    throw new MeloError(
      'USAGE',
      `${what} is single-label (softmax) but data ${dataset.source} is multi-label`,
      {
        file: outputs.file,
      },
    );
  }
  if (dataset.taskType !== 'multilabel' && outputs.multilabel) {
    throw new MeloError(
      'USAGE',
      `adapter is multi-label (sigmoid) but data ${dataset.source} is single-label (${dataset.taskType})`,
      { file: outputs.file },
    );
  }
  const byIndex = dataset.classes.map((_, c) => c);
  if (outputs.labels.every((label, i) => label === dataset.classes[i]))
    return { outputOf: byIndex, notes: [] };
  const byName = dataset.classes.map((name) => outputs.labels.indexOf(name));
  if (new Set(byName).size === byName.length && !byName.includes(-1)) {
    return {
      outputOf: byName,
      notes: [`the ${what}'s classes were matched to the data's by name (they are listed in another order)`],
    };
  }
  if (outputs.labels.every((label, i) => label === String(i))) return { outputOf: byIndex, notes: [] };
  const names = quotedNames(outputs.labels);
  return {
    outputOf: byIndex,
    notes: [`the ${what}'s class names (${names}) differ from the data's; classes were matched by index`],
  };
}

function softmaxRow(logits: Float32Array, start: number, k: number): number[] {
  return softmax(logits.subarray(start, start + k));
}

function sigmoidRow(logits: Float32Array, start: number, k: number): number[] {
  return sigmoids(logits.subarray(start, start + k));
}

function checkItemLabels(dataset: Dataset, multilabel: boolean): void {
  const k = dataset.classes.length;
  for (const item of dataset.items) {
    const valid = item.labels.every((label) => Number.isInteger(label) && label >= 0 && label < k);
    if (!valid || (!multilabel && item.labels.length !== 1)) {
      throw new MeloError(
        'BAD_DATA',
        `item ${item.id} has label(s) [${item.labels.join(', ')}], expected ${multilabel ? 'indices' : 'one index'} in 0..${k - 1}`,
        { file: dataset.source },
      );
    }
  }
}

/** The evaluation's task type: multi-label from the data, else binary for two classes, else multi-class. */
export function evaluationTaskType(dataset: Dataset): TaskType {
  if (dataset.taskType === 'multilabel') return 'multilabel';
  return dataset.classes.length === 2 ? 'binary' : 'multiclass';
}

/**
 * Predicts every item of `dataset` with the evaluation transform (resize + center crop, no augmentation)
 * and evaluates the probabilities against the dataset's labels.
 */
export async function evaluateTask(
  backbone: Backbone,
  model: EvaluatedModel,
  dataset: Dataset,
  options: EvaluateTaskOptions = {},
): Promise<TaskEvaluation> {
  if (dataset.items.length === 0) {
    throw new MeloError('BAD_DATA', 'no items to evaluate', { file: dataset.source });
  }
  const batchSize = options.batchSize ?? DEFAULT_EVAL_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new MeloError('USAGE', `batch size must be a positive integer, got ${batchSize}`);
  }
  const resamples = options.bootstrap ?? 1000;
  if (!Number.isInteger(resamples) || resamples < 0) {
    throw new MeloError('USAGE', `bootstrap resamples must be an integer ≥ 0, got ${resamples}`);
  }
  const taskType = evaluationTaskType(dataset);
  const multilabel = taskType === 'multilabel';
  checkItemLabels(dataset, multilabel);

  const outputs = modelOutputs(backbone, model);
  const { outputOf, notes } = matchClasses(outputs, dataset);
  const k = outputs.labels.length;
  const runner = await createRunner(backbone, model, options.threads);
  const rows: PredictionRow[] = [];
  try {
    const batches = loadBatches(dataset, 0, {
      batchSize,
      preprocess: backbone.preprocess,
      channels: backbone.config.channels as 1 | 3,
      augment: false,
      seed: 0,
      shuffle: false,
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
    });
    for await (const batch of batches) {
      const logits = await runner.run(batch.pixels, batch.items.length);
      batch.items.forEach((item, row) => {
        const scores = multilabel ? sigmoidRow(logits, row * k, k) : softmaxRow(logits, row * k, k);
        // A NaN pixel (a float .npz, a DICOM with float data) must not become NaN metrics and CSV cells.
        const bad = firstNonFinite(scores);
        if (bad >= 0)
          throw new MeloError(
            'BAD_IMAGE',
            `the model's output ${bad} is ${logits[row * k + bad]}: the image holds non-finite pixels or overflows ('melo data check' lists them)`,
            { file: item.id },
          );
        rows.push({ id: item.id, labels: [...item.labels], probabilities: outputOf.map((j) => scores[j]) });
      });
      options.onProgress?.(rows.length, dataset.items.length);
    }
  } finally {
    await runner.release();
  }

  const recorded = model === 'backbone' ? undefined : model.adapter.metadata;
  const positive = options.positive ?? recorded?.positive;
  const ordered =
    positive === undefined || taskType !== 'binary'
      ? { classNames: [...dataset.classes], rows }
      : positiveSecond(dataset, rows, positive);
  if (positive !== undefined && taskType !== 'binary')
    throw new MeloError(
      'USAGE',
      `--positive applies to binary tasks; this one has ${formatLabels(dataset.classes)}`,
    );
  const labels = multilabel
    ? ordered.rows.map((row) => Array.from({ length: k }, (_, c) => (row.labels.includes(c) ? 1 : 0)))
    : ordered.rows.map((row) => row.labels[0]);
  const summary = evaluate(
    { task: taskType, probabilities: ordered.rows.map((row) => row.probabilities), labels },
    {
      classNames: ordered.classNames,
      ordinal: options.ordinal ?? recorded?.ordinal ?? false,
      source: dataset.source,
      ...(options.threshold !== undefined ? { threshold: options.threshold } : {}),
      ...(options.calibrationBins !== undefined ? { calibrationBins: options.calibrationBins } : {}),
      bootstrap: resamples === 0 ? false : { resamples, seed: options.seed ?? 0 },
    },
  );
  summary.notes.unshift(...notes);
  return { task: outputs.name, taskType, classNames: ordered.classNames, summary, rows: ordered.rows };
}

/**
 * A binary task's classes and rows with `positive` second: every binary metric (sensitivity, F1, the
 * ROC curve) is about the second class, so naming the positive one is reordering the two.
 */
function positiveSecond(
  dataset: Dataset,
  rows: readonly PredictionRow[],
  positive: string,
): { classNames: string[]; rows: readonly PredictionRow[] } {
  const index = dataset.classes.indexOf(positive);
  if (index < 0)
    throw new MeloError(
      'USAGE',
      `--positive '${positive}' is not one of the ${formatLabels(dataset.classes)}`,
      {
        file: dataset.source,
      },
    );
  if (index === 1) return { classNames: [...dataset.classes], rows };
  return {
    classNames: [dataset.classes[1]!, dataset.classes[0]!],
    rows: rows.map((row) => ({
      id: row.id,
      labels: row.labels.map((label) => 1 - label),
      probabilities: [row.probabilities[1]!, row.probabilities[0]!],
    })),
  };
}
