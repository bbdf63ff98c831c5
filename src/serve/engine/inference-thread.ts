import { parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../../errors.ts';
import type { ViTConfig } from '../../model/vit-config.ts';
import { AdapterStack, type StackedTaskWeights } from './adapter-stack.ts';
import {
  type FromInference,
  type StackSummary,
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
 * The inference thread's state: every task's weights (views into the newest stack, so each adapter is
 * held once), stacks by version (a batch runs against the version it was assembled for), and one ORT
 * session per graph key. Messages are handled one at a time, in order.
 */
class InferenceThread {
  private readonly weights = new Map<number, StackedTaskWeights>();
  private readonly stacks = new Map<number, AdapterStack>();
  private readonly models = new Map<string, MultiTaskModel>();

  constructor(private readonly data: InferenceThreadData) {}

  async handle(message: ToInference): Promise<{ reply?: FromInference; transfer?: ArrayBuffer[] }> {
    switch (message.type) {
      case 'update':
        return { reply: { id: message.id, ok: true, summary: this.update(message) } };
      case 'drop-version':
        this.stacks.delete(message.version);
        return {};
      case 'forget':
        for (const uid of message.uids) this.weights.delete(uid);
        return {};
      case 'weights': {
        const held = this.weights.get(message.uid);
        if (!held) throw new Error(`no weights for task #${message.uid}`);
        const weights = compact(held);
        return { reply: { id: message.id, ok: true, weights }, transfer: weightBuffers(weights) };
      }
      case 'load-graph': {
        if (!this.models.has(message.key)) {
          const model = await MultiTaskModel.fromBytes(message.model, message.key, {
            ...(this.data.threads ? { threads: this.data.threads } : {}),
          });
          this.models.set(message.key, model);
        }
        return { reply: { id: message.id, ok: true } };
      }
      case 'release-graph': {
        await this.models.get(message.key)?.release();
        this.models.delete(message.key);
        return { reply: { id: message.id, ok: true } };
      }
      case 'run': {
        const model = this.models.get(message.key);
        const stack = this.stacks.get(message.version);
        if (!model || !stack)
          throw new Error(`no graph '${message.key}' or stack version ${message.version}`);
        // A copy the thread owns outright, so it can be transferred rather than cloned.
        const logits = (await model.run(message.pixels, message.shape, message.taskRows, stack)).slice();
        return { reply: { id: message.id, ok: true, logits }, transfer: [logits.buffer as ArrayBuffer] };
      }
    }
  }

  private update(message: Extract<ToInference, { type: 'update' }>): StackSummary {
    for (const task of message.tasks) if (task.weights) this.weights.set(task.uid, task.weights);
    for (const uid of message.forget) this.weights.delete(uid);
    const entries = message.tasks.map((task) => {
      const weights = this.weights.get(task.uid);
      if (!weights)
        throw new Error(`task '${task.name}' (#${task.uid}) has no weights in the inference thread`);
      return { name: task.name, weights };
    });
    const stack = AdapterStack.build(this.data.config, entries);
    const inStack = new Set<number>();
    for (const task of message.tasks) {
      this.weights.set(task.uid, stack.weightsOf(task.name)!);
      inStack.add(task.uid);
    }
    // Tasks kept but not served (e.g. shadowed by another adapter of the same name) get compact copies,
    // so a view does not keep a whole old stack alive.
    for (const [uid, weights] of this.weights) if (!inStack.has(uid)) this.weights.set(uid, compact(weights));
    this.stacks.set(message.version, stack);
    return {
      slots: stack.slots,
      key: stack.graphKey,
      rank: stack.rank,
      classes: stack.classes,
      bytes: stack.byteLength,
      rows: message.tasks.map((task) => [task.name, stack.rowOf(task.name)!] as const),
    };
  }
}

function compact(weights: StackedTaskWeights): StackedTaskWeights {
  const pairs = new Map<string, { A: Float32Array; B: Float32Array }>();
  for (const [key, pair] of weights.pairs) pairs.set(key, { A: pair.A.slice(), B: pair.B.slice() });
  return {
    ...weights,
    pairs,
    headWeight: weights.headWeight.slice(),
    headBias: weights.headBias.slice(),
  };
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
        const { reply, transfer } = await thread.handle(message);
        if (reply) port.postMessage(reply, transfer ?? []);
      } catch (error) {
        if (id !== undefined)
          port.postMessage({ id, ok: false, message: errorMessage(error) } satisfies FromInference);
      }
    });
  });
  port.postMessage({ type: 'ready' } satisfies FromInference);
}
