import { ServeErrors } from '../errors.ts';
import type { BatchRow, RowOutcome } from './engine.ts';

export interface BatcherOptions {
  /** Rows per ORT call at most. */
  readonly maxBatch: number;
  /** How long the first row of a batch waits for company before the batch runs anyway. */
  readonly maxWaitMs: number;
  /** Rows waiting at most; a request that would exceed it is refused (503), not queued. */
  readonly maxQueueRows: number;
}

/** Hooks for metrics; called synchronously, so keep them cheap. */
export interface BatchObserver {
  batchRun(rows: number, distinctTasks: number, seconds: number): void;
  queueDepth(rows: number): void;
}

export interface JobResult {
  /** One per requested task, in the order asked. */
  readonly outcomes: RowOutcome[];
  /** The size of each batch this request's rows ran in. */
  readonly batchSizes: number[];
}

/** Runs a batch of rows (of any tasks) in one call; the serving engine in production. */
export type BatchRunner = (rows: readonly BatchRow[]) => Promise<RowOutcome[]>;

interface Job {
  readonly outcomes: RowOutcome[];
  readonly batchSizes: number[];
  remaining: number;
  settled: boolean;
  resolve(result: JobResult): void;
  reject(error: Error): void;
}

interface QueuedRow {
  readonly row: BatchRow;
  readonly job: Job;
  readonly index: number;
  readonly enqueuedAt: number;
}

/**
 * Dynamic batching: rows from concurrent requests (one row per image and task) wait until `maxBatch`
 * rows are queued or the oldest has waited `maxWaitMs`, then run as one call. One batch runs at a
 * time (each call already uses every core); rows that arrive meanwhile form the next batch.
 */
export class DynamicBatcher {
  private readonly queue: QueuedRow[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly runner: BatchRunner,
    private readonly options: BatcherOptions,
    private readonly observer: BatchObserver = { batchRun() {}, queueDepth() {} },
  ) {}

  get queuedRows(): number {
    return this.queue.length;
  }

  /**
   * Whether `rows` more rows would be admitted now: checked before an upload is decoded, so that a full
   * queue answers 503 without spending any work on the image. A request with more rows than the whole
   * queue holds (tasks=all with more tasks than --max-queue) is admitted when the queue is empty, else it
   * could never run.
   */
  hasRoomFor(rows: number): boolean {
    return this.queue.length === 0 || this.queue.length + rows <= this.options.maxQueueRows;
  }

  /**
   * Queues one image for several tasks (the image is shared, not copied, between its rows). Rejects at
   * once with a queue-full error when there is no room; `signal` withdraws rows that have not started.
   */
  submit(pixels: Float32Array, tasks: readonly string[], signal?: AbortSignal): Promise<JobResult> {
    if (this.closed) return Promise.reject(new ServeErrors.shuttingDown());
    if (!this.hasRoomFor(tasks.length)) return Promise.reject(new ServeErrors.queueFull(this.queue.length));
    if (tasks.length === 0) return Promise.resolve({ outcomes: [], batchSizes: [] });
    return new Promise<JobResult>((resolve, reject) => {
      const job: Job = {
        outcomes: new Array(tasks.length),
        batchSizes: [],
        remaining: tasks.length,
        settled: false,
        resolve,
        reject,
      };
      const now = performance.now();
      tasks.forEach((task, index) => {
        this.queue.push({ row: { task, pixels }, job, index, enqueuedAt: now });
      });
      signal?.addEventListener(
        'abort',
        () =>
          this.cancel(job, signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))),
        { once: true },
      );
      this.observer.queueDepth(this.queue.length);
      this.schedule();
    });
  }

  /** Refuses new work, fails what is queued, and waits for the running batch. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    const queued = this.queue.splice(0);
    for (const { job } of queued) this.settle(job, new ServeErrors.shuttingDown());
    this.observer.queueDepth(0);
    await this.running;
  }

  private cancel(job: Job, reason: Error): void {
    if (job.settled) return;
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i]!.job === job) this.queue.splice(i, 1);
    this.observer.queueDepth(this.queue.length);
    this.settle(job, reason);
  }

  private settle(job: Job, error?: Error): void {
    if (job.settled) return;
    job.settled = true;
    if (error) job.reject(error);
    else job.resolve({ outcomes: job.outcomes, batchSizes: job.batchSizes });
  }

  private schedule(): void {
    if (this.running || this.closed || this.queue.length === 0) return;
    const waited = performance.now() - this.queue[0]!.enqueuedAt;
    if (this.queue.length >= this.options.maxBatch || waited >= this.options.maxWaitMs) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.running = this.runBatch().finally(() => {
        this.running = undefined;
        this.schedule();
      });
      return;
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.schedule();
      }, this.options.maxWaitMs - waited);
    }
  }

  private async runBatch(): Promise<void> {
    const taken = this.queue.splice(0, this.options.maxBatch);
    this.observer.queueDepth(this.queue.length);
    const started = performance.now();
    let outcomes: RowOutcome[];
    try {
      outcomes = await this.runner(taken.map((queued) => queued.row));
    } catch (error) {
      const failure = error instanceof Error ? error : new Error(String(error));
      outcomes = taken.map(() => ({ ok: false, error: failure }));
    }
    this.observer.batchRun(
      taken.length,
      new Set(taken.map((queued) => queued.row.task)).size,
      (performance.now() - started) / 1000,
    );
    const jobs = new Set<Job>();
    taken.forEach((queued, i) => {
      queued.job.outcomes[queued.index] = outcomes[i]!;
      queued.job.remaining--;
      jobs.add(queued.job);
    });
    for (const job of jobs) {
      job.batchSizes.push(taken.length);
      if (job.remaining === 0) this.settle(job);
    }
  }
}
