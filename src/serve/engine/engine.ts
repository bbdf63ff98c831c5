import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage } from '../../errors.ts';
import { toMultilabelPrediction, toPrediction } from '../../predict.ts';
import { ServeErrors } from '../errors.ts';
import type { StackedTaskWeights } from './adapter-stack.ts';
import { InferenceClient } from './inference-client.ts';
import type { PutSummary, StackMemory } from './inference-protocol.ts';
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

/** Hooks for metrics on adapter residency; called synchronously, so keep them cheap. */
export interface ResidencyObserver {
  /** A task's weights were read from disk into the stack because a request needed them (paged in). */
  adapterPagedIn(seconds: number): void;
  /** A task's weights left the stack to make room (least recently used beyond the cap). */
  adapterEvicted(): void;
  /** Tasks whose weights are in the stack now, and the bytes of the rows they occupy. */
  residency(tasks: number, stackBytes: number): void;
}

export interface EngineOptions {
  /** ONNX Runtime intra-op threads (default: every core). */
  readonly threads?: number;
  readonly logger?: EngineLogger;
  /**
   * At most this many tasks' weights in memory; beyond it the least recently used leave the stack and
   * are read from disk again when asked for (default: no limit).
   */
  readonly maxResidentAdapters?: number;
  readonly observer?: ResidencyObserver;
}

/** A task the engine serves; `row` while its weights are in the inference thread's stack. */
interface Served {
  readonly task: ServedTask;
  row: number | undefined;
  /** When a batch last used it (LRU order for eviction). */
  lastUsed: number;
}

const silent: EngineLogger = { info() {}, warn() {}, error() {} };
/** Spare stack rows beyond the adapters expected (a few hot adds; a batch of more tasks than the cap). */
const RESERVE_SLACK_ROWS = 16;
const unobserved: ResidencyObserver = { adapterPagedIn() {}, adapterEvicted() {}, residency() {} };

/**
 * Turns the registry's tasks into something runnable. The ORT session and the stacked adapter tensors
 * live in an inference thread (ORT's Node binding blocks the thread it runs on); this side keeps the
 * task metadata and changes the thread's stack one task at a time: a new or changed adapter is one
 * `put` of its weights (moved, not copied), a removed one one `remove` (the session is rebuilt only
 * when a new LoRA slot appears). Nothing here is proportional to the number of tasks loaded.
 *
 * A removed task's row is freed only once no batch in flight refers to it: every change that takes a
 * task out of the stack opens a new epoch, batches count themselves in under the epoch they started
 * in, and a row is released when no batch of an earlier epoch is still running.
 *
 * With `maxResidentAdapters`, tasks beyond the cap leave the stack, least recently used first, and a
 * batch that needs one reads it from disk again first (S-LoRA's paging, with the disk as the host).
 */
export class ServingEngine {
  private readonly served = new Map<string, Served>();
  /** uid → served entry, for the tasks whose weights are in the stack. */
  private readonly resident = new Map<number, Served>();
  private graphKey: string | undefined;
  private stackBytesNow = 0;
  /** Serialises every change of the thread's stack (puts, graph loads). */
  private mutating: Promise<void> = Promise.resolve();
  private epoch = 0;
  private readonly inFlight = new Map<number, number>();
  private readonly pendingRelease: { epoch: number; uids: number[] }[] = [];
  private readonly paging = new Map<number, Promise<void>>();
  private refreshing: Promise<void> | undefined;
  private refreshAgain = false;
  private useClock = 0;
  private readonly unsubscribe: () => void;
  private readonly observer: ResidencyObserver;
  private closed = false;

  private constructor(
    private readonly backbone: Backbone,
    private readonly registry: AdapterRegistry,
    private readonly options: EngineOptions,
    private readonly logger: EngineLogger,
    private client: InferenceClient,
  ) {
    this.observer = options.observer ?? unobserved;
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
    engine.reserve();
    await engine.refresh();
    return engine;
  }

  /** The tasks requests can name now (their weights in memory or not). */
  tasks(): TaskInfo[] {
    return [...this.served.values()]
      .map((entry) => entry.task.info)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  task(name: string): TaskInfo | undefined {
    return this.served.get(name)?.task.info;
  }

  /** The served task of that name (metadata; its weights live in the inference thread). */
  servedTask(name: string): ServedTask | undefined {
    return this.served.get(name)?.task;
  }

  /** Settles once the registry's first scan has tried every adapter and the engine serves what loaded. */
  async untilLoaded(): Promise<void> {
    await this.registry.initialLoad.catch(() => {});
    await this.refresh();
  }

  /** Whether adapters found at start are still loading (the registry loads them in the background). */
  get loading(): boolean {
    return this.registry.loading;
  }

  /** Tasks whose weights are in the stack now. */
  get residentCount(): number {
    return this.resident.size;
  }

  /**
   * A copy of a served task's weights in stack form (scale folded into B: the same numbers the batch
   * uses), for work outside the batcher such as explanations; read from disk when not resident.
   */
  async weightsOf(name: string): Promise<StackedTaskWeights | undefined> {
    const entry = this.served.get(name);
    if (!entry) return undefined;
    if (entry.row !== undefined) return this.client.weights(entry.task.uid);
    return entry.task.readWeights();
  }

  /** Bytes of the stack rows handed out so far. */
  get stackBytes(): number {
    return this.stackBytesNow;
  }

  /** What the inference thread's stack holds (tests, benchmarks). */
  stackMemory(): Promise<StackMemory> {
    return this.client.memory();
  }

  /** Brings the served tasks in line with the registry; concurrent calls coalesce into one more run. */
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
            await this.sync();
          } catch (error) {
            this.logger.error({ error: errorMessage(error) }, 'could not update the served tasks');
          }
        } while (this.refreshAgain && !this.closed);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /** Stack room for every adapter the registry knows (up to the cap), so start-up adds never regrow it. */
  /**
   * Stack room made up front: twice the adapters listed at start plus some (with a cap: the cap plus a
   * batch's worth), so hot adds do not regrow the stack until the count doubles. Rows never written are
   * zero pages the kernel has not mapped: address space, not resident memory (1.19 GB allocated, +1 MB
   * RSS; writing half of it, +590 MB). With exactly the listed count reserved, bench:serve:scale's first
   * hot add next to 1,000 adapters waited 6.7 s for the doubling to copy 574 MB on a loaded machine.
   */
  private reserve(): void {
    const known = this.registry.knownAdapterCount();
    const cap = this.options.maxResidentAdapters ?? Number.POSITIVE_INFINITY;
    this.client.reserve(Math.min(2 * known, cap) + RESERVE_SLACK_ROWS);
  }

  /**
   * The registry's changes, task by task: a removed or replaced task leaves (its row freed once idle), a
   * new one is admitted, its weights put into the stack now unless the cap is reached (then on demand).
   */
  private async sync(): Promise<void> {
    if (this.closed) return;
    const epochBefore = this.epoch;
    const wanted = new Map(this.registry.tasks().map((task) => [task.name, task]));
    const leaving: number[] = [];
    const evict = (entry: Served) => {
      if (entry.row === undefined) return;
      this.resident.delete(entry.task.uid);
      entry.row = undefined;
      leaving.push(entry.task.uid);
    };
    for (const [name, entry] of this.served) {
      if (wanted.has(name)) continue;
      this.served.delete(name);
      evict(entry);
    }
    this.scheduleRelease(leaving.splice(0));
    const cap = this.options.maxResidentAdapters ?? Number.POSITIVE_INFINITY;
    let added = 0;
    for (const [name, task] of wanted) {
      const previous = this.served.get(name);
      if (previous?.task === task) continue;
      const entry: Served = { task, row: undefined, lastUsed: previous?.lastUsed ?? 0 };
      // The registry's copy is dropped either way: beyond the cap the task is read again when asked for.
      const weights = task.takeWeights();
      const room = this.resident.size - (previous?.row !== undefined ? 1 : 0) < cap;
      if (weights && room) await this.putWeights(entry, weights);
      // A changed adapter's previous version serves until this one is in (then its row is freed).
      if (this.closed || this.registry.task(name) !== task) continue;
      this.served.set(name, entry);
      if (previous) evict(previous);
      added++;
    }
    this.scheduleRelease(leaving);
    for (const task of wanted.values()) if (this.served.get(task.name)?.task !== task) task.takeWeights();
    if (this.epoch !== epochBefore || added > 0) {
      this.logger.info(
        { tasks: this.served.size, resident: this.resident.size, stackBytes: this.stackBytesNow },
        'serving tasks',
      );
    }
    this.observer.residency(this.resident.size, this.stackBytesNow);
  }

  /** Puts one task's weights into the stack (moved to the thread), loading a new graph if it needs one. */
  private putWeights(entry: Served, weights: StackedTaskWeights): Promise<void> {
    const run = this.mutating.then(async () => {
      if (this.closed) return;
      const summary = await this.client.put(entry.task.uid, weights);
      if (summary.key !== this.graphKey) await this.loadGraph(summary.key, summary.slots);
      entry.row = summary.row;
      this.resident.set(entry.task.uid, entry);
      this.stackBytesNow = summary.bytes;
      this.observer.residency(this.resident.size, this.stackBytesNow);
    });
    this.mutating = run.catch(() => {});
    return run;
  }

  private async loadGraph(key: string, slots: PutSummary['slots']): Promise<void> {
    const started = performance.now();
    await this.client.loadGraph(key, await serializeServingGraph(this.backbone, slots));
    this.logger.info(
      { slots: slots.length, ms: Math.round(performance.now() - started) },
      'serving graph built',
    );
    const previous = this.graphKey;
    this.graphKey = key;
    // Batches on the old graph finish first: the thread handles messages in order.
    if (previous !== undefined) void this.client.releaseGraph(previous).catch(() => {});
  }

  /** These tasks' rows are freed once every batch that may still refer to them has finished. */
  private scheduleRelease(uids: number[]): void {
    if (uids.length === 0) return;
    this.pendingRelease.push({ epoch: ++this.epoch, uids });
    this.releaseIdle();
  }

  private releaseIdle(): void {
    let oldestRunning = Number.POSITIVE_INFINITY;
    for (const [epoch, count] of this.inFlight) if (count > 0) oldestRunning = Math.min(oldestRunning, epoch);
    while (this.pendingRelease.length > 0 && this.pendingRelease[0]!.epoch <= oldestRunning) {
      this.client.remove(this.pendingRelease.shift()!.uids);
    }
  }

  /**
   * Pages in the batch's tasks that are not resident (one read from disk each, shared by concurrent
   * callers), evicting the least recently used others beyond the cap.
   */
  private async makeResident(entries: readonly Served[]): Promise<void> {
    const missing = entries.filter((entry) => entry.row === undefined);
    if (missing.length === 0) return;
    // Room first, so that the rows freed are the ones the newcomers take (when no batch holds them).
    const pinned = new Set(entries.map((entry) => entry.task.uid));
    this.evictBeyondCap(pinned, missing.length);
    await Promise.all(
      missing.map((entry) => {
        const uid = entry.task.uid;
        let paging = this.paging.get(uid);
        if (!paging) {
          paging = this.pageIn(entry).finally(() => this.paging.delete(uid));
          this.paging.set(uid, paging);
        }
        return paging;
      }),
    );
    this.evictBeyondCap(pinned);
  }

  private async pageIn(entry: Served): Promise<void> {
    const started = performance.now();
    const weights = entry.task.takeWeights() ?? (await entry.task.readWeights());
    // Removed or replaced while it was being read: nothing to put.
    if (this.served.get(entry.task.name) !== entry) return;
    await this.putWeights(entry, weights);
    this.observer.adapterPagedIn((performance.now() - started) / 1000);
  }

  /** Evicts the least recently used unpinned tasks until `incoming` more fit under the cap. */
  private evictBeyondCap(pinned: ReadonlySet<number>, incoming = 0): void {
    const cap = this.options.maxResidentAdapters;
    if (cap === undefined) return;
    const limit = Math.max(0, cap - incoming);
    if (this.resident.size <= limit) return;
    const candidates = [...this.resident.values()]
      .filter((entry) => !pinned.has(entry.task.uid))
      .sort((a, b) => a.lastUsed - b.lastUsed);
    const evicted: number[] = [];
    for (const entry of candidates) {
      if (this.resident.size <= limit) break;
      this.resident.delete(entry.task.uid);
      entry.row = undefined;
      evicted.push(entry.task.uid);
      this.observer.adapterEvicted();
    }
    this.scheduleRelease(evicted);
    this.observer.residency(this.resident.size, this.stackBytesNow);
  }

  /**
   * Runs rows of any mix of tasks as one ORT call. A row whose task is not served (it was removed after
   * the request was accepted, or could not be read back from disk) gets an error; the others still run.
   */
  async run(rows: readonly BatchRow[]): Promise<RowOutcome[]> {
    const outcomes: RowOutcome[] = new Array(rows.length);
    const wanted = new Map<string, Served>();
    rows.forEach((row, i) => {
      const entry = this.served.get(row.task);
      if (entry) wanted.set(row.task, entry);
      else outcomes[i] = { ok: false, error: new ServeErrors.unknownTask(row.task) };
    });
    const failed = new Map<string, Error>();
    try {
      await this.makeResident([...wanted.values()]);
    } catch {
      // One task's read failing must not fail the others: retry each alone to learn which.
      for (const entry of wanted.values()) {
        await this.makeResident([entry]).catch((error: unknown) =>
          failed.set(entry.task.name, error instanceof Error ? error : new Error(String(error))),
        );
      }
    }
    const runnable: number[] = [];
    const taskRows: number[] = [];
    const infos: TaskInfo[] = [];
    rows.forEach((row, i) => {
      if (outcomes[i]) return;
      const entry = this.served.get(row.task);
      const error = failed.get(row.task);
      if (error || entry?.row === undefined) {
        outcomes[i] = { ok: false, error: error ?? new ServeErrors.unknownTask(row.task) };
        return;
      }
      // Later rows count as more recent: a batch of more tasks than the cap keeps its last ones.
      entry.lastUsed = ++this.useClock;
      runnable.push(i);
      taskRows.push(entry.row);
      infos.push(entry.task.info);
    });
    if (runnable.length === 0 || this.graphKey === undefined) return outcomes;
    const { channels } = this.backbone.config;
    const [height, width] = this.backbone.preprocess.inputSize;
    const perImage = channels * height * width;
    const pixels = new Float32Array(runnable.length * perImage);
    runnable.forEach((rowIndex, i) => {
      pixels.set(rows[rowIndex]!.pixels, i * perImage);
    });
    const epoch = this.epoch;
    this.inFlight.set(epoch, (this.inFlight.get(epoch) ?? 0) + 1);
    let logits: Float32Array;
    try {
      logits = await this.client.run(
        this.graphKey,
        pixels,
        [runnable.length, channels, height, width],
        taskRows,
      );
    } finally {
      const left = this.inFlight.get(epoch)! - 1;
      if (left > 0) this.inFlight.set(epoch, left);
      else this.inFlight.delete(epoch);
      this.releaseIdle();
      // A batch of more tasks than the cap held them all while it ran; the cap holds again now.
      this.evictBeyondCap(new Set());
    }
    // The stack's class width when the batch ran (a wider head may have arrived since it was assembled).
    const padded = logits.length / runnable.length;
    runnable.forEach((rowIndex, i) => {
      const info = infos[i]!;
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
    await this.mutating;
    this.served.clear();
    this.resident.clear();
    await this.client.close();
  }

  /**
   * The inference thread died (out of memory, a native crash): start a new one and have the registry
   * read every adapter again, since their weights went with the old thread.
   */
  private recover(error: Error): void {
    if (this.closed) return;
    this.logger.error({ error: error.message }, 'inference thread lost; restarting it');
    this.served.clear();
    this.resident.clear();
    this.graphKey = undefined;
    this.stackBytesNow = 0;
    this.inFlight.clear();
    this.pendingRelease.length = 0;
    this.mutating = Promise.resolve();
    void InferenceClient.start(this.backbone.config, this.options.threads, (next) => this.recover(next))
      .then(async (client) => {
        if (this.closed) return client.close();
        this.client = client;
        this.reserve();
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
