import { parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../../errors.ts';
import type { ViTConfig } from '../../model/vit-config.ts';
import { collectGarbage } from '../../util/gc.ts';
import { AdapterStack } from './adapter-stack.ts';
import {
  type FromInference,
  type PutSummary,
  type StackMemory,
  type ToInference,
  weightBuffers,
} from './inference-protocol.ts';
import { MultiTaskModel } from './multi-task-model.ts';

export interface InferenceThreadData {
  readonly threads?: number;
  /** The backbone's architecture (the stack's shapes follow from it). */
  readonly config: ViTConfig;
}

/**
 * The inference thread's state: one adapter stack, the only place the adapters' weights live, changed in
 * place one task at a time (rows are freed only once the main thread knows no batch refers to them),
 * and one ORT session per graph key. Messages are handled one at a time, in order, so a change never
 * interleaves with a run.
 */
class InferenceThread {
  private readonly stack: AdapterStack<number>;
  private readonly models = new Map<string, MultiTaskModel>();

  constructor(private readonly data: InferenceThreadData) {
    this.stack = new AdapterStack<number>(data.config);
  }

  /**
   * `collect`: the message left a large buffer dead (a serialized model, 327 MiB for ViT-B/16 in fp32),
   * which this thread, allocating little, would otherwise keep resident until its next full GC.
   */
  async handle(
    message: ToInference,
  ): Promise<{ reply?: FromInference; transfer?: ArrayBuffer[]; collect?: boolean }> {
    switch (message.type) {
      case 'put': {
        const { row, regrown } = this.stack.put(message.uid, message.weights);
        const put: PutSummary = {
          row,
          regrown,
          slots: [...this.stack.slots],
          key: this.stack.graphKey,
          rank: this.stack.rank,
          classes: this.stack.classes,
          bytes: this.stack.byteLength,
        };
        return { reply: { id: message.id, ok: true, put } };
      }
      case 'remove':
        for (const uid of message.uids) this.stack.remove(uid);
        return {};
      case 'reserve':
        this.stack.reserve(message.rows);
        return {};
      case 'memory':
        return { reply: { id: message.id, ok: true, memory: this.memory() } };
      case 'weights': {
        const weights = this.stack.weightsOf(message.uid);
        if (!weights) throw new Error(`no weights for task #${message.uid}`);
        return { reply: { id: message.id, ok: true, weights }, transfer: weightBuffers(weights) };
      }
      case 'load-graph': {
        if (!this.models.has(message.key)) {
          const model = await MultiTaskModel.fromBytes(message.model, message.key, {
            ...(this.data.threads ? { threads: this.data.threads } : {}),
          });
          this.models.set(message.key, model);
        }
        return { reply: { id: message.id, ok: true }, collect: true };
      }
      case 'release-graph': {
        await this.models.get(message.key)?.release();
        this.models.delete(message.key);
        return { reply: { id: message.id, ok: true } };
      }
      case 'run': {
        const model = this.models.get(message.key);
        if (!model) throw new Error(`no graph '${message.key}'`);
        // A copy the thread owns outright, so it can be transferred rather than cloned.
        const logits = (await model.run(message.pixels, message.shape, message.taskRows, this.stack)).slice();
        return { reply: { id: message.id, ok: true, logits }, transfer: [logits.buffer as ArrayBuffer] };
      }
    }
  }

  private memory(): StackMemory {
    return {
      tasks: this.stack.size,
      rowBytes: this.stack.rowBytes,
      rowCapacity: this.stack.rowCapacity,
      byteLength: this.stack.byteLength,
      allocatedBytes: this.stack.allocatedBytes,
      ownedBytes: this.stack.buffers().reduce((sum, buffer) => sum + buffer.byteLength, 0),
    };
  }
}

/** Called by the worker entry (inference-worker.mjs). */
export function startInferenceThread(): void {
  const port = parentPort;
  if (!port) throw new Error('the inference thread must run in a worker');
  const thread = new InferenceThread(workerData as InferenceThreadData);
  let queue = Promise.resolve();
  port.on('message', (message: ToInference) => {
    // One message at a time: an update never interleaves with a run.
    queue = queue.then(async () => {
      const id = 'id' in message ? message.id : undefined;
      try {
        const { reply, transfer, collect } = await thread.handle(message);
        if (reply) port.postMessage(reply, transfer ?? []);
        // On the next turn, once this message (which holds the buffer) is no longer reachable.
        if (collect) setImmediate(collectGarbage);
      } catch (error) {
        if (id !== undefined)
          port.postMessage({ id, ok: false, message: errorMessage(error) } satisfies FromInference);
      }
    });
  });
  port.postMessage({ type: 'ready' } satisfies FromInference);
}
