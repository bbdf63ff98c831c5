/**
 * The optimiser's update on worker threads: WebAssembly (src/train/kernels/update.wat) over shared memory.
 *
 * Full fine-tuning of ViT-B updates 86 M parameters per step. The reference loop in optimizer.ts does that on
 * the thread that drives ONNX Runtime, 0.85–1.17 s per step (docs/benchmarks.md), while PyTorch's AdamW takes
 * 0.25 s. This kernel keeps every trainable tensor, its gradient and its optimiser buffers in shared
 * WebAssembly memories ("arenas", one per worker thread) and runs the update in all of them at once. The
 * WebAssembly code computes the reference's float64 expressions in the same order with 2-lane SIMD, so the
 * parameters and buffers come out bit-identical (test/update-kernel.test.ts); bench/optimizer.ts measures it.
 *
 * A step copies each parameter and gradient into the arenas and the parameters back out: ONNX Runtime's Node
 * binding refuses arrays on shared memory, so the parameters it is fed stay in ordinary arrays. A parameter
 * the arenas have no room for is updated on the calling thread by the reference loop, with the same result.
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { MeloError } from '../errors.ts';
import { defaultThreads } from '../runtime/session.ts';
import type { HostTensor } from '../tensor.ts';
import {
  type AdamWScalars,
  bufferKinds,
  createOptimizer,
  inThreadKernel,
  type Optimizer,
  type OptimizerConfig,
  type UpdateJob,
  type UpdateKernel,
} from './optimizer.ts';

const WASM_PATH = new URL('./kernels/update.wasm', import.meta.url);
const WORKER_ENTRY = new URL('./kernels/update-worker.mjs', import.meta.url);
const PAGE = 65536;
/** Arena size limit: byte offsets stay below 2^31, far inside wasm32's 4 GiB (ViT-L/16 needs 3 arenas). */
const ARENA_LIMIT = 2 ** 31 - PAGE;
const ALIGN = 16;

/**
 * An optimiser whose update runs on `threads` worker threads (default: as many as ONNX Runtime uses, which
 * is idle while the optimiser runs), with room for the buffers of `parameters`; close it to stop the threads.
 */
export async function createWorkerOptimizer(
  config: OptimizerConfig,
  parameters: Map<string, HostTensor>,
  threads: number = defaultThreads(),
): Promise<Optimizer> {
  const sizes = new Map([...parameters].map(([name, tensor]) => [name, tensor.data.length]));
  const kernel = await WorkerUpdateKernel.create(sizes, bufferKinds(config), threads);
  return createOptimizer(config, kernel);
}

interface Slot {
  readonly arena: number;
  readonly count: number;
  /** Byte offsets of the parameter, the gradient and each buffer. */
  readonly offsets: readonly number[];
  /** Views at those offsets, in the same order. */
  readonly views: readonly Float32Array[];
}

interface Arena {
  readonly memory: WebAssembly.Memory;
  readonly worker: Worker;
  bytes: number;
  readonly names: string[];
}

type Request =
  | { op: 'adamw'; jobs: number[][]; scalars: Record<string, number> }
  | { op: 'sgd_momentum'; jobs: number[][]; momentum: number; lr: number }
  | { op: 'sgd'; jobs: number[][]; lr: number };

export class WorkerUpdateKernel implements UpdateKernel {
  private readonly pending = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private failure: Error | undefined;

  private constructor(
    private readonly arenas: readonly Arena[],
    private readonly slots: ReadonlyMap<string, Slot>,
    private readonly kinds: readonly string[],
  ) {
    for (const arena of arenas) {
      arena.worker.on('message', (reply: { id: number; error?: string }) => this.settle(reply));
      arena.worker.on('error', (error) => this.fail(error));
      arena.worker.on('exit', (code) => this.fail(new Error(`exited with code ${code}`)));
      arena.worker.unref();
    }
  }

  /**
   * Arenas for parameters of the given element counts, each with a gradient and one buffer per kind.
   * Parameters are dealt largest first to the least-filled arena, so the threads get about equal work.
   */
  static async create(
    sizes: ReadonlyMap<string, number>,
    kinds: readonly string[],
    threads: number,
  ): Promise<WorkerUpdateKernel> {
    if (!Number.isInteger(threads) || threads < 1)
      throw new MeloError('USAGE', `optimizer threads must be a whole number ≥ 1, got ${threads}`);
    const arrays = 2 + kinds.length;
    const slotBytes = (count: number) => arrays * alignUp(count * 4);
    const plan: { bytes: number; names: string[] }[] = [];
    const total = [...sizes.values()].reduce((sum, count) => sum + slotBytes(count), 0);
    const arenaCount = Math.max(1, Math.min(sizes.size, Math.max(threads, Math.ceil(total / ARENA_LIMIT))));
    for (let i = 0; i < arenaCount; i++) plan.push({ bytes: 0, names: [] });
    const placed = new Map<string, { arena: number; start: number }>();
    for (const [name, count] of [...sizes].sort((a, b) => b[1] - a[1])) {
      const bytes = slotBytes(count);
      let target = plan.reduce((best, arena, i) => (arena.bytes < plan[best]!.bytes ? i : best), 0);
      if (plan[target]!.bytes + bytes > ARENA_LIMIT) {
        if (bytes > ARENA_LIMIT) continue; // updated on the calling thread
        plan.push({ bytes: 0, names: [] });
        target = plan.length - 1;
      }
      placed.set(name, { arena: target, start: plan[target]!.bytes });
      plan[target]!.bytes += bytes;
      plan[target]!.names.push(name);
    }
    const module = await WebAssembly.compile(readFileSync(WASM_PATH));
    const arenas: Arena[] = plan.map(({ bytes, names }) => {
      const pages = Math.max(1, Math.ceil(bytes / PAGE));
      const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
      const worker = new Worker(WORKER_ENTRY, { workerData: { module, memory }, execArgv: [] });
      return { memory, worker, bytes, names };
    });
    const slots = new Map<string, Slot>();
    for (const [name, { arena, start }] of placed) {
      const count = sizes.get(name)!;
      const offsets = Array.from({ length: arrays }, (_, k) => start + k * alignUp(count * 4));
      const buffer = arenas[arena]!.memory.buffer;
      slots.set(name, {
        arena,
        count,
        offsets,
        views: offsets.map((offset) => new Float32Array(buffer, offset, count)),
      });
    }
    return new WorkerUpdateKernel(arenas, slots, kinds);
  }

  get threads(): number {
    return this.arenas.length;
  }

  allocate(name: string, kind: string, length: number): Float32Array {
    const slot = this.slots.get(name);
    const k = this.kinds.indexOf(kind);
    if (!slot || slot.count !== length || k < 0) return new Float32Array(length);
    const view = slot.views[2 + k]!;
    view.fill(0);
    return view;
  }

  adamw(jobs: readonly UpdateJob[], scalars: AdamWScalars): Promise<void> {
    const {
      beta1: b1,
      beta2: b2,
      keep1: k1,
      keep2: k2,
      stepSize,
      inverseCorrection2Sqrt: ic2,
      eps,
    } = scalars;
    return this.run(
      jobs,
      (rows) => ({
        op: 'adamw',
        jobs: rows,
        scalars: { b1, b2, k1, k2, stepSize, ic2, eps },
      }),
      (rest) => inThreadKernel.adamw(rest, scalars),
    );
  }

  sgd(jobs: readonly UpdateJob[], momentum: number, lr: number): Promise<void> {
    return this.run(
      jobs,
      (rows) =>
        momentum > 0 ? { op: 'sgd_momentum', jobs: rows, momentum, lr } : { op: 'sgd', jobs: rows, lr },
      (rest) => inThreadKernel.sgd(rest, momentum, lr),
    );
  }

  async close(): Promise<void> {
    this.failure ??= new Error('closed');
    await Promise.all(this.arenas.map((arena) => arena.worker.terminate()));
  }

  /**
   * Copies each job's parameter and gradient into its arena, sends each arena its rows (byte offsets,
   * count, decay), waits for all and copies the parameters back. The copies are needed because ONNX
   * Runtime's Node binding refuses typed arrays on shared memory ("Invalid argument"), so the parameters it
   * is fed cannot live in the arenas; the buffers, which only the optimiser reads, do. A job whose buffers
   * are not the arena's views runs on this thread meanwhile.
   */
  private async run(
    jobs: readonly UpdateJob[],
    request: (rows: number[][]) => Request,
    inThread: (jobs: UpdateJob[]) => Promise<void>,
  ): Promise<void> {
    if (this.failure) throw kernelError(this.failure);
    const rows: number[][][] = this.arenas.map(() => []);
    const elsewhere: UpdateJob[] = [];
    const copyBack: [Float32Array, Float32Array][] = [];
    for (const job of jobs) {
      const slot = this.slots.get(job.name);
      const inArena =
        slot !== undefined &&
        job.param.length === slot.count &&
        job.buffers.length === this.kinds.length &&
        job.buffers.every((buffer, k) => buffer === slot.views[2 + k]);
      if (!inArena) {
        elsewhere.push(job);
        continue;
      }
      const [param, grad] = slot.views as [Float32Array, Float32Array];
      param.set(job.param);
      grad.set(job.grad);
      copyBack.push([param, job.param]);
      rows[slot.arena]!.push([...slot.offsets, slot.count, job.decay]);
    }
    const done = this.arenas.map((arena, i) =>
      rows[i]!.length === 0 ? Promise.resolve() : this.send(arena.worker, request(rows[i]!)),
    );
    await inThread(elsewhere);
    await Promise.all(done);
    for (const [view, array] of copyBack) array.set(view);
  }

  private send(worker: Worker, request: Request): Promise<void> {
    const id = this.nextId++;
    worker.ref();
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ ...request, id });
    }).finally(() => worker.unref());
  }

  private settle(reply: { id: number; error?: string }): void {
    const waiter = this.pending.get(reply.id);
    if (!waiter) return;
    this.pending.delete(reply.id);
    if (reply.error === undefined) waiter.resolve();
    else waiter.reject(kernelError(new Error(reply.error)));
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    for (const waiter of this.pending.values()) waiter.reject(kernelError(error));
    this.pending.clear();
  }
}

function kernelError(error: Error): Error {
  return new Error(`optimizer worker thread failed: ${error.message}`, { cause: error });
}

function alignUp(bytes: number): number {
  return Math.ceil(bytes / ALIGN) * ALIGN;
}
