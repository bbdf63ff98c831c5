import { Worker } from 'node:worker_threads';
import type { ViTConfig } from '../../model/vit-config.ts';
import type { StackedTaskWeights } from './adapter-stack.ts';
import {
  type FromInference,
  type PutSummary,
  type StackMemory,
  type ToInference,
  weightBuffers,
} from './inference-protocol.ts';
import type { InferenceThreadData } from './inference-thread.ts';

const WORKER_ENTRY = new URL('./inference-worker.mjs', import.meta.url);

/**
 * Node options for the worker: inherited as they are (Node keeps those a worker accepts), except when
 * the process runs an --eval'd module, whose --input-type a worker loading a file rejects.
 */
function workerExecArgv(): string[] | undefined {
  if (!process.execArgv.some((arg) => arg === '--input-type' || arg.startsWith('--input-type=')))
    return undefined;
  const args: string[] = [];
  for (let i = 0; i < process.execArgv.length; i++) {
    const arg = process.execArgv[i]!;
    if (arg === '--input-type') i++;
    else if (!arg.startsWith('--input-type=')) args.push(arg);
  }
  return args;
}

type Request = ToInference extends infer M ? (M extends { id: number } ? Omit<M, 'id'> : never) : never;

/**
 * The main thread's handle on the inference thread: requests are posted with an id and answered in
 * order. If the thread dies, every pending and later request rejects, and `onExit` is told.
 */
export class InferenceClient {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve(reply: FromInference): void; reject(error: Error): void }
  >();
  private failure: Error | undefined;
  private closing = false;

  private constructor(
    private readonly worker: Worker,
    onExit: (error: Error) => void,
  ) {
    worker.on('message', (reply: FromInference) => {
      if (!('id' in reply)) return;
      const waiter = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (!waiter) return;
      if (reply.ok) waiter.resolve(reply);
      else waiter.reject(new Error(`inference thread: ${reply.message}`));
    });
    const fail = (error: Error) => {
      if (this.failure) return;
      this.failure = error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
      if (!this.closing) onExit(error);
    };
    worker.on('error', (error) => fail(new Error(`inference thread failed: ${error.message}`)));
    worker.on('exit', (code) => fail(new Error(`inference thread exited (code ${code})`)));
  }

  static async start(
    config: ViTConfig,
    threads: number | undefined,
    onExit: (error: Error) => void,
  ): Promise<InferenceClient> {
    const data: InferenceThreadData = { config, ...(threads ? { threads } : {}) };
    const execArgv = workerExecArgv();
    const worker = new Worker(WORKER_ENTRY, { workerData: data, ...(execArgv ? { execArgv } : {}) });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (message: FromInference) => {
        if ('type' in message && message.type === 'ready') {
          worker.off('error', reject);
          resolve();
        }
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
    return new InferenceClient(worker, onExit);
  }

  /** Writes a task into the thread's stack; its weights move there (detached here). */
  async put(uid: number, weights: StackedTaskWeights): Promise<PutSummary> {
    const reply = await this.request({ type: 'put', uid, weights }, weightBuffers(weights));
    return (reply as { put: PutSummary }).put;
  }

  /** Frees the tasks' rows; only once no batch in flight refers to them. */
  remove(uids: readonly number[]): void {
    if (!this.failure && uids.length > 0)
      this.worker.postMessage({ type: 'remove', uids } satisfies ToInference);
  }

  reserve(rows: number): void {
    if (!this.failure) this.worker.postMessage({ type: 'reserve', rows } satisfies ToInference);
  }

  async memory(): Promise<StackMemory> {
    const reply = await this.request({ type: 'memory' });
    return (reply as { memory: StackMemory }).memory;
  }

  async loadGraph(key: string, model: Uint8Array): Promise<void> {
    await this.request({ type: 'load-graph', key, model }, [model.buffer as ArrayBuffer]);
  }

  async releaseGraph(key: string): Promise<void> {
    await this.request({ type: 'release-graph', key });
  }

  /** A copy of a task's weights as the thread holds them (padded rank, scale folded into B). */
  async weights(uid: number): Promise<StackedTaskWeights> {
    const reply = await this.request({ type: 'weights', uid });
    return (reply as { weights: StackedTaskWeights }).weights;
  }

  /** pixels [batch, C, H, W] (moved to the thread); returns logits [batch, the stack's classes]. */
  async run(
    key: string,
    pixels: Float32Array,
    shape: readonly number[],
    taskRows: readonly number[],
  ): Promise<Float32Array> {
    const reply = await this.request({ type: 'run', key, pixels, shape, taskRows }, [
      pixels.buffer as ArrayBuffer,
    ]);
    return (reply as { logits: Float32Array }).logits;
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
  }

  private request(message: Request, transfer: ArrayBuffer[] = []): Promise<FromInference> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id } as ToInference, transfer);
    });
  }
}
