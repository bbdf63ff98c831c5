/**
 * A pool of worker threads (piscina) that decode and augment loader items, so that JPEG decoding and
 * augmentation run beside the ONNX Runtime step instead of on the thread that drives it.
 *
 * Create one per training run (or let the loader use the shared pool of the requested size) and close it
 * when done; a pool is never created per epoch, since starting a worker loads sharp and the TypeScript
 * loader. Idle workers do not keep the process alive (piscina unrefs them), so forgetting to close a pool
 * cannot hang a CLI at exit.
 */
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { errorMessage, MeloError } from '../../errors.ts';
import { type DecodeReply, type DecodeTask, reviveFailure } from './protocol.ts';

const WORKER_ENTRY = new URL('./decode-worker.mjs', import.meta.url).href;

/** One core is left to the thread that runs ONNX Runtime and assembles batches. */
export function defaultWorkerCount(): number {
  return Math.max(1, availableParallelism() - 1);
}

export function checkWorkerCount(workers: number): number {
  if (!Number.isInteger(workers) || workers < 0) {
    throw new MeloError(
      'USAGE',
      `workers must be a whole number ≥ 0 (0 = decode in-process), got ${workers}`,
    );
  }
  return workers;
}

export class DecodePool {
  private closed = false;
  /** Set when a worker fails outside a task (e.g. cannot load its code); the pool is then unusable. */
  private failure: unknown;

  private constructor(
    private readonly piscina: Piscina<DecodeTask, DecodeReply>,
    readonly workers: number,
  ) {}

  /** Starts `workers` threads (≥ 1). */
  static create(workers: number = defaultWorkerCount()): DecodePool {
    if (checkWorkerCount(workers) === 0) {
      throw new MeloError(
        'USAGE',
        'a decode pool needs at least one worker; use workers: 0 to decode in-process',
      );
    }
    const piscina = new Piscina<DecodeTask, DecodeReply>({
      filename: WORKER_ENTRY,
      minThreads: workers,
      maxThreads: workers,
      // Threads stay up between epochs; piscina unrefs idle ones, so they never hold the process open.
      idleTimeout: Number.POSITIVE_INFINITY,
    });
    const pool = new DecodePool(piscina, workers);
    // Without a listener such an error would crash the process, and tasks queued behind a worker that
    // never starts would wait forever; destroying the pool rejects them instead.
    piscina.on('error', (error: unknown) => {
      pool.failure ??= error;
      void piscina.destroy();
    });
    return pool;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The item's CHW tensor; rejects with the same error an in-process load and transform would throw. */
  async decode(task: DecodeTask): Promise<Float32Array> {
    if (this.closed) throw new Error('decode pool is closed');
    if (this.failure !== undefined) throw this.workerFailure(this.failure);
    let reply: DecodeReply;
    try {
      reply = await this.piscina.run(task);
    } catch (error) {
      throw this.workerFailure(this.failure ?? error);
    }
    if (reply instanceof Float32Array) return reply;
    throw reviveFailure(reply.failure);
  }

  private workerFailure(cause: unknown): Error {
    return new Error(`decode worker failed: ${errorMessage(cause)}`, { cause });
  }

  /** Waits for running tasks, then stops the threads. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.piscina.close();
  }
}

const sharedPools = new Map<number, DecodePool>();

/**
 * The process-wide pool with `workers` threads, started on first use: what the loader uses when the
 * caller passes no pool, so that a loop over epochs reuses one set of threads.
 */
export function sharedDecodePool(workers: number): DecodePool {
  let pool = sharedPools.get(workers);
  if (pool === undefined || pool.isClosed) {
    pool = DecodePool.create(workers);
    sharedPools.set(workers, pool);
  }
  return pool;
}

/** Closes every shared pool (for callers that want a clean shutdown rather than relying on unref). */
export async function closeSharedDecodePools(): Promise<void> {
  const pools = [...sharedPools.values()];
  sharedPools.clear();
  await Promise.all(pools.map((pool) => pool.close()));
}
