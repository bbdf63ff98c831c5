import type { StackedTaskWeights } from './adapter-stack.ts';
import type { LoraSlot } from './multi-task-graph.ts';

/**
 * Messages between the server's main thread and its inference thread. ONNX Runtime's Node binding runs a
 * session synchronously on the calling thread, so inference lives in a worker: the main thread keeps
 * answering HTTP (health checks, timeouts, decoding the next images) while a batch runs.
 */

/** A task in an adapter-stack version; `weights` only the first time the thread sees this task (`uid`). */
export interface StackTask {
  readonly uid: number;
  readonly name: string;
  readonly weights?: StackedTaskWeights;
}

export type ToInference =
  | {
      readonly type: 'update';
      readonly id: number;
      readonly version: number;
      readonly tasks: readonly StackTask[];
      /** Tasks the main thread no longer holds: their weights can go. */
      readonly forget: readonly number[];
    }
  | { readonly type: 'drop-version'; readonly version: number }
  /** Tasks the main thread no longer holds, when there is no stack to build (every adapter removed). */
  | { readonly type: 'forget'; readonly uids: readonly number[] }
  /** A copy of one task's weights (stack form), e.g. for explanations run outside the batcher. */
  | { readonly type: 'weights'; readonly id: number; readonly uid: number }
  | { readonly type: 'load-graph'; readonly id: number; readonly key: string; readonly model: Uint8Array }
  | { readonly type: 'release-graph'; readonly id: number; readonly key: string }
  | {
      readonly type: 'run';
      readonly id: number;
      readonly version: number;
      readonly key: string;
      /** [batch, C, H, W] */
      readonly pixels: Float32Array;
      readonly shape: readonly number[];
      readonly taskRows: readonly number[];
    };

/** What an update built: the graph key its stack needs, and each task's row. */
export interface StackSummary {
  readonly slots: readonly LoraSlot[];
  readonly key: string;
  readonly rank: number;
  readonly classes: number;
  readonly bytes: number;
  readonly rows: readonly (readonly [string, number])[];
}

export type FromInference =
  | { readonly type: 'ready' }
  | {
      readonly id: number;
      readonly ok: true;
      readonly summary?: StackSummary;
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
