import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage } from '../../errors.ts';
import { toMultilabelPrediction, toPrediction } from '../../predict.ts';
import type { SessionOptions } from '../../runtime/session.ts';
import { ServeErrors } from '../errors.ts';
import { AdapterStack } from './adapter-stack.ts';
import { MultiTaskModel } from './multi-task-model.ts';
import type { AdapterRegistry, RegistryLogger, ServedTask, TaskInfo } from './registry.ts';

/** One task's answer for one image: the fields `melo predict --json` gives, less the file name. */
export interface TaskPrediction {
  readonly task: string;
  readonly labels: readonly string[];
  readonly logits: number[];
  readonly probabilities: number[];
  readonly prediction: string;
}

/** One batch row: an image (CHW, already preprocessed) for one task. */
export interface BatchRow {
  readonly task: string;
  readonly pixels: Float32Array;
}

export type RowOutcome =
  | { readonly ok: true; readonly prediction: TaskPrediction }
  | { readonly ok: false; readonly error: Error };

/** What one serving state holds: the tasks, their stacked weights and the graph that reads them. */
interface Snapshot {
  readonly tasks: ReadonlyMap<string, ServedTask>;
  readonly stack: AdapterStack;
  readonly model: MultiTaskModel;
}

/**
 * Turns the registry's tasks into something runnable: stacks their tensors and keeps the serving graph
 * for the current LoRA slots. Rebuilt (stack in JS; session only when the slots change) after each
 * registry change, never per request. A batch runs against the snapshot current when it starts.
 */
export class ServingEngine {
  private snapshot: Snapshot | undefined;
  private model: MultiTaskModel | undefined;
  private readonly inFlight = new Map<MultiTaskModel, number>();
  private readonly retired = new Set<MultiTaskModel>();
  private refreshing: Promise<void> | undefined;
  private refreshAgain = false;
  private readonly unsubscribe: () => void;
  private closed = false;

  private constructor(
    private readonly backbone: Backbone,
    private readonly registry: AdapterRegistry,
    private readonly sessionOptions: SessionOptions,
    private readonly logger: RegistryLogger & { error(fields: object, message: string): void },
  ) {
    this.unsubscribe = registry.onChange(() => void this.refresh());
  }

  static async create(
    backbone: Backbone,
    registry: AdapterRegistry,
    options: SessionOptions & {
      logger?: RegistryLogger & { error(fields: object, message: string): void };
    } = {},
  ): Promise<ServingEngine> {
    const { logger, ...sessionOptions } = options;
    const engine = new ServingEngine(
      backbone,
      registry,
      sessionOptions,
      logger ?? { info() {}, warn() {}, error() {} },
    );
    await engine.refresh();
    return engine;
  }

  /** The tasks of the snapshot requests run against now. */
  tasks(): TaskInfo[] {
    return [...(this.snapshot?.tasks.values() ?? [])].map((task) => task.info);
  }

  task(name: string): TaskInfo | undefined {
    return this.snapshot?.tasks.get(name)?.info;
  }

  /** Bytes of the stacked adapter tensors currently served. */
  get stackBytes(): number {
    return this.snapshot?.stack.byteLength ?? 0;
  }

  /** Rebuilds the snapshot from the registry; concurrent calls coalesce into one more run. */
  refresh(): Promise<void> {
    if (this.refreshing) {
      this.refreshAgain = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      try {
        do {
          this.refreshAgain = false;
          try {
            await this.rebuild();
          } catch (error) {
            this.logger.error({ error: errorMessage(error) }, 'could not rebuild the serving model');
          }
        } while (this.refreshAgain && !this.closed);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  private async rebuild(): Promise<void> {
    const tasks = this.registry.tasks();
    const current = this.snapshot;
    if (
      current &&
      tasks.length === current.tasks.size &&
      tasks.every((task) => current.tasks.get(task.name) === task)
    )
      return;
    if (tasks.length === 0) {
      this.snapshot = undefined;
      return;
    }
    const stack = AdapterStack.build(
      this.backbone.config,
      tasks.map((task) => ({ name: task.name, weights: task.weights })),
    );
    // The stack now holds every task's tensors: point the tasks at it so the old copies can be freed.
    for (const task of tasks) task.weights = stack.weightsOf(task.name)!;
    let model = this.model;
    if (!model || model.key !== stack.graphKey) {
      const started = performance.now();
      model = await MultiTaskModel.create(this.backbone, stack.slots, this.sessionOptions);
      this.logger.info(
        { slots: stack.slots.length, ms: Math.round(performance.now() - started) },
        'serving graph built',
      );
      if (this.model) this.retire(this.model);
      this.model = model;
    }
    this.snapshot = { tasks: new Map(tasks.map((task) => [task.name, task])), stack, model };
    this.logger.info(
      { tasks: tasks.length, rank: stack.rank, classes: stack.classes, stackBytes: stack.byteLength },
      'serving tasks',
    );
  }

  /**
   * Runs rows of any mix of tasks as one ORT call. A row whose task is not in the current snapshot (it
   * was removed after the request was accepted) gets an unknown-task error; the others still run.
   */
  async run(rows: readonly BatchRow[]): Promise<RowOutcome[]> {
    const snapshot = this.snapshot;
    const outcomes: RowOutcome[] = new Array(rows.length);
    const runnable: number[] = [];
    rows.forEach((row, i) => {
      if (snapshot?.tasks.has(row.task)) runnable.push(i);
      else outcomes[i] = { ok: false, error: new ServeErrors.unknownTask(row.task) };
    });
    if (runnable.length === 0 || !snapshot) return outcomes;
    const { model, stack } = snapshot;
    const perImage = model.pixelsPerImage;
    const pixels = new Float32Array(runnable.length * perImage);
    runnable.forEach((rowIndex, i) => {
      pixels.set(rows[rowIndex]!.pixels, i * perImage);
    });
    const taskRows = runnable.map((rowIndex) => stack.rowOf(rows[rowIndex]!.task)!);
    this.inFlight.set(model, (this.inFlight.get(model) ?? 0) + 1);
    let logits: Float32Array;
    try {
      logits = await model.run(pixels, taskRows, stack);
    } finally {
      this.inFlight.set(model, this.inFlight.get(model)! - 1);
      if (this.retired.has(model)) this.retire(model);
    }
    runnable.forEach((rowIndex, i) => {
      const info = snapshot.tasks.get(rows[rowIndex]!.task)!.info;
      // Padded logits past this task's classes are dropped here: they never reach a softmax.
      const rowLogits = Array.from(
        logits.subarray(i * stack.classes, i * stack.classes + info.labels.length),
      );
      outcomes[rowIndex] = { ok: true, prediction: toTaskPrediction(info, rowLogits) };
    });
    return outcomes;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe();
    await this.refreshing;
    if (this.model) this.retire(this.model);
    this.model = undefined;
    this.snapshot = undefined;
  }

  /** Releases a replaced session once no batch is using it. */
  private retire(model: MultiTaskModel): void {
    if ((this.inFlight.get(model) ?? 0) > 0) {
      this.retired.add(model);
      return;
    }
    this.retired.delete(model);
    this.inFlight.delete(model);
    void model.release();
  }
}

/** Softmax for single-label tasks, independent sigmoids for multi-label ones: `melo predict`'s own code. */
export function toTaskPrediction(info: TaskInfo, logits: number[]): TaskPrediction {
  const labels = [...info.labels];
  const { task, probabilities, prediction } =
    info.taskType === 'multilabel'
      ? toMultilabelPrediction('', info.name, labels, logits)
      : toPrediction('', info.name, labels, logits);
  return { task, labels, logits, probabilities, prediction };
}
