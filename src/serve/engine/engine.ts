import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage } from '../../errors.ts';
import { toMultilabelPrediction, toPrediction } from '../../predict.ts';
import { ServeErrors } from '../errors.ts';
import type { StackedTaskWeights } from './adapter-stack.ts';
import { InferenceClient } from './inference-client.ts';
import type { StackTask } from './inference-protocol.ts';
import { serializeServingGraph } from './multi-task-model.ts';
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

export type EngineLogger = RegistryLogger & { error(fields: object, message: string): void };

export interface EngineOptions {
  /** ONNX Runtime intra-op threads (default: every core). */
  readonly threads?: number;
  readonly logger?: EngineLogger;
}

/** What requests run against: the tasks, the stack version holding their tensors and the graph reading it. */
interface Snapshot {
  readonly version: number;
  readonly key: string;
  readonly tasks: ReadonlyMap<string, ServedTask>;
  readonly rows: ReadonlyMap<string, number>;
  /** Width of the stacked heads: each row's logits are padded to it. */
  readonly classes: number;
  readonly stackBytes: number;
}

const silent: EngineLogger = { info() {}, warn() {}, error() {} };

/**
 * Turns the registry's tasks into something runnable. The ORT session and the stacked adapter tensors
 * live in an inference thread (ORT's Node binding blocks the thread it runs on); this side keeps the
 * task metadata, sends each newly loaded adapter's weights there once, and rebuilds the stack after
 * each registry change (the session only when the set of LoRA slots changes), never per request. A
 * batch runs against the snapshot current when it starts.
 */
export class ServingEngine {
  private snapshot: Snapshot | undefined;
  private version = 0;
  private graphKey: string | undefined;
  /** Tasks whose weights the inference thread holds. */
  private readonly sent = new Set<number>();
  private readonly inFlight = new Map<number, number>();
  private readonly retiredVersions = new Set<number>();
  private refreshing: Promise<void> | undefined;
  private refreshAgain = false;
  private readonly unsubscribe: () => void;
  private closed = false;

  private constructor(
    private readonly backbone: Backbone,
    private readonly registry: AdapterRegistry,
    private readonly options: EngineOptions,
    private readonly logger: EngineLogger,
    private client: InferenceClient,
  ) {
    this.unsubscribe = registry.onChange(() => void this.refresh());
  }

  static async create(
    backbone: Backbone,
    registry: AdapterRegistry,
    options: EngineOptions = {},
  ): Promise<ServingEngine> {
    const logger = options.logger ?? silent;
    let engine: ServingEngine | undefined;
    const client = await InferenceClient.start(backbone.config, options.threads, (error) =>
      engine?.recover(error),
    );
    engine = new ServingEngine(backbone, registry, options, logger, client);
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

  /** The served task of that name (metadata; its weights live in the inference thread). */
  servedTask(name: string): ServedTask | undefined {
    return this.snapshot?.tasks.get(name);
  }

  /**
   * A copy of a served task's weights in stack form (rank padded to the stack's, scale folded into B:
   * the same numbers the batch uses), for work outside the batcher such as explanations.
   */
  async weightsOf(name: string): Promise<StackedTaskWeights | undefined> {
    const task = this.snapshot?.tasks.get(name);
    return task ? this.client.weights(task.uid) : undefined;
  }

  /** Bytes of the stacked adapter tensors currently served. */
  get stackBytes(): number {
    return this.snapshot?.stackBytes ?? 0;
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
    if (this.closed) return;
    const tasks = this.registry.tasks();
    const current = this.snapshot;
    if (
      current &&
      tasks.length === current.tasks.size &&
      tasks.every((task) => current.tasks.get(task.name) === task)
    )
      return;
    const held = new Set(this.registry.loadedTasks().map((task) => task.uid));
    const forget = [...this.sent].filter((uid) => !held.has(uid));
    for (const uid of forget) this.sent.delete(uid);
    if (tasks.length === 0) {
      this.replaceSnapshot(undefined);
      this.client.forget(forget);
      return;
    }
    const payload: StackTask[] = tasks.map((task) => {
      if (this.sent.has(task.uid)) return { uid: task.uid, name: task.name };
      const weights = task.takeWeights();
      if (!weights) throw new Error(`task '${task.name}' has no weights left to send`);
      this.sent.add(task.uid);
      return { uid: task.uid, name: task.name, weights };
    });
    const version = ++this.version;
    const summary = await this.client.update(version, payload, forget);
    if (summary.key !== this.graphKey) {
      const started = performance.now();
      await this.client.loadGraph(summary.key, serializeServingGraph(this.backbone, summary.slots));
      this.logger.info(
        { slots: summary.slots.length, ms: Math.round(performance.now() - started) },
        'serving graph built',
      );
      const previous = this.graphKey;
      this.graphKey = summary.key;
      // Batches on the old graph finish first: the thread handles messages in order.
      if (previous !== undefined) void this.client.releaseGraph(previous).catch(() => {});
    }
    this.replaceSnapshot({
      version,
      key: summary.key,
      tasks: new Map(tasks.map((task) => [task.name, task])),
      rows: new Map(summary.rows),
      classes: summary.classes,
      stackBytes: summary.bytes,
    });
    this.logger.info(
      { tasks: tasks.length, rank: summary.rank, classes: summary.classes, stackBytes: summary.bytes },
      'serving tasks',
    );
  }

  private replaceSnapshot(next: Snapshot | undefined): void {
    const previous = this.snapshot;
    this.snapshot = next;
    if (previous) {
      this.retiredVersions.add(previous.version);
      this.dropIfIdle(previous.version);
    }
  }

  private dropIfIdle(version: number): void {
    if (!this.retiredVersions.has(version) || (this.inFlight.get(version) ?? 0) > 0) return;
    this.retiredVersions.delete(version);
    this.inFlight.delete(version);
    this.client.dropVersion(version);
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
    const { channels } = this.backbone.config;
    const [height, width] = this.backbone.preprocess.inputSize;
    const perImage = channels * height * width;
    const pixels = new Float32Array(runnable.length * perImage);
    runnable.forEach((rowIndex, i) => {
      pixels.set(rows[rowIndex]!.pixels, i * perImage);
    });
    const taskRows = runnable.map((rowIndex) => snapshot.rows.get(rows[rowIndex]!.task)!);
    this.inFlight.set(snapshot.version, (this.inFlight.get(snapshot.version) ?? 0) + 1);
    let logits: Float32Array;
    try {
      logits = await this.client.run(
        snapshot.version,
        snapshot.key,
        pixels,
        [runnable.length, channels, height, width],
        taskRows,
      );
    } finally {
      this.inFlight.set(snapshot.version, this.inFlight.get(snapshot.version)! - 1);
      this.dropIfIdle(snapshot.version);
    }
    const padded = snapshot.classes;
    runnable.forEach((rowIndex, i) => {
      const info = snapshot.tasks.get(rows[rowIndex]!.task)!.info;
      // Padded logits past this task's classes are dropped here: they never reach a softmax.
      const rowLogits = Array.from(logits.subarray(i * padded, i * padded + info.labels.length));
      outcomes[rowIndex] = { ok: true, prediction: toTaskPrediction(info, rowLogits) };
    });
    return outcomes;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe();
    await this.refreshing;
    this.snapshot = undefined;
    await this.client.close();
  }

  /**
   * The inference thread died (out of memory, a native crash): start a new one and have the registry
   * read every adapter again, since their weights went with the old thread.
   */
  private recover(error: Error): void {
    if (this.closed) return;
    this.logger.error({ error: error.message }, 'inference thread lost; restarting it');
    this.snapshot = undefined;
    this.graphKey = undefined;
    this.sent.clear();
    this.inFlight.clear();
    this.retiredVersions.clear();
    void InferenceClient.start(this.backbone.config, this.options.threads, (next) => this.recover(next))
      .then(async (client) => {
        if (this.closed) return client.close();
        this.client = client;
        await this.registry.reloadAll();
        await this.refresh();
      })
      .catch((failure: unknown) =>
        this.logger.error({ error: errorMessage(failure) }, 'could not restart the inference thread'),
      );
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
