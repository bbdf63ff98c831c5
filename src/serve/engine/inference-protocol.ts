import type { StackedTaskWeights } from './adapter-stack.ts';
import type { LoraSlot } from './multi-task-graph.ts';

/**
 * Messages between the server's main thread and its inference thread. ONNX Runtime's Node binding runs a
 * session synchronously on the calling thread, so inference lives in a worker: the main thread keeps
 * answering HTTP (health checks, timeouts, decoding the next images) while a batch runs.
 */

export type ToInference =
  /** Writes one task's weights (moved here, detached on the sending side) into a row of the stack. */
  | { readonly type: 'put'; readonly id: number; readonly uid: number; readonly weights: StackedTaskWeights }
  /** Frees the tasks' rows; sent only once no batch still in flight refers to them. */
  | { readonly type: 'remove'; readonly uids: readonly number[] }
  /** Room for this many tasks, so that loading them does not regrow the stack. */
  | { readonly type: 'reserve'; readonly rows: number }
  /** A copy of one task's weights (stack form), e.g. for explanations run outside the batcher. */
  | { readonly type: 'weights'; readonly id: number; readonly uid: number }
  /** What the stack holds, for /metrics and tests. */
  | { readonly type: 'memory'; readonly id: number }
  | { readonly type: 'load-graph'; readonly id: number; readonly key: string; readonly model: Uint8Array }
  | { readonly type: 'release-graph'; readonly id: number; readonly key: string }
  | {
      readonly type: 'run';
      readonly id: number;
      readonly key: string;
      /** [batch, C, H, W] */
      readonly pixels: Float32Array;
      readonly shape: readonly number[];
      readonly taskRows: readonly number[];
    };

/** After a put: where the task went, and the stack's shape now (the graph key its slots need). */
export interface PutSummary {
  readonly row: number;
  readonly slots: readonly LoraSlot[];
  readonly key: string;
  readonly rank: number;
  readonly classes: number;
  /** Bytes of the rows handed out. */
  readonly bytes: number;
  /** Whether the put had to reallocate every tensor (capacity, rank or classes grew). */
  readonly regrown: boolean;
}

/** The stack's memory: `ownedBytes` counts every buffer the thread keeps adapter weights in. */
export interface StackMemory {
  readonly tasks: number;
  readonly rowBytes: number;
  readonly rowCapacity: number;
  readonly byteLength: number;
  readonly allocatedBytes: number;
  readonly ownedBytes: number;
}

export type FromInference =
  | { readonly type: 'ready' }
  | {
      readonly id: number;
      readonly ok: true;
      readonly put?: PutSummary;
      readonly memory?: StackMemory;
      readonly logits?: Float32Array;
      readonly weights?: StackedTaskWeights;
    }
  | { readonly id: number; readonly ok: false; readonly message: string };

/** Every ArrayBuffer a task's weights own, so they move to the thread instead of being copied. */
export function weightBuffers(weights: StackedTaskWeights): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  const add = (array: Float32Array) => buffers.add(array.buffer as ArrayBuffer);
  for (const pair of weights.pairs.values()) {
    add(pair.A);
    add(pair.B);
  }
  add(weights.headWeight);
  add(weights.headBias);
  return [...buffers];
}
