import type { Backbone } from '../../checkpoints/load.ts';
import { GraphBuilder } from '../../graph/builder.ts';
import { defaultMicroBatch, runInMicroBatches } from '../../runtime/micro-batch.ts';
import { type Feed, Session, type SessionOptions, serializeForThisCpu } from '../../runtime/session.ts';
import { type AdapterStack, slotsKey } from './adapter-stack.ts';
import { buildMultiTaskGraph, type LoraSlot, MULTI_TASK_INPUTS } from './multi-task-graph.ts';

/** The serving graph for these LoRA slots as ONNX bytes (built where the backbone weights are). */
export function serializeServingGraph(backbone: Backbone, slots: readonly LoraSlot[]): Promise<Uint8Array> {
  const graph = new GraphBuilder('melo-serve');
  const { logits } = buildMultiTaskGraph(graph, backbone, slots);
  graph.output(logits, 'logits');
  return serializeForThisCpu(graph);
}

/**
 * The serving graph as one ORT session, for one set of LoRA slots (`key`, see slotsKey); any stack with
 * those slots (any number of tasks, any rank, any class count) is fed to it as is.
 */
export class MultiTaskModel {
  private constructor(
    private readonly session: Session,
    readonly key: string,
    private readonly microBatch: number,
  ) {}

  static async fromBytes(
    model: Uint8Array,
    key: string,
    options: SessionOptions = {},
  ): Promise<MultiTaskModel> {
    return new MultiTaskModel(await Session.fromBytes(model, options), key, defaultMicroBatch());
  }

  static async create(
    backbone: Backbone,
    slots: readonly LoraSlot[],
    options: SessionOptions = {},
  ): Promise<MultiTaskModel> {
    return MultiTaskModel.fromBytes(await serializeServingGraph(backbone, slots), slotsKey(slots), options);
  }

  /**
   * pixels [batch, C, H, W]; taskRows: each image's row in `stack`. Returns logits [batch, stack.classes];
   * a row's entries past its task's class count are padding.
   */
  async run(
    pixels: Float32Array,
    shape: readonly number[],
    taskRows: readonly number[],
    stack: AdapterStack<unknown>,
  ): Promise<Float32Array> {
    // The stack may hold slots this graph lacks (a task whose graph is still being built): only the
    // graph's own inputs are fed.
    const stackFeeds: Record<string, Feed> = {};
    const available = stack.feeds();
    for (const name of this.session.inputNames) {
      const tensor = available.get(name);
      if (tensor) stackFeeds[name] = tensor;
      else if (name !== MULTI_TASK_INPUTS.pixels && name !== MULTI_TASK_INPUTS.taskIndex)
        throw new Error(`serving model: the stack has no '${name}' for graph [${this.key}]`);
    }
    const [batch, ...imageShape] = shape as [number, ...number[]];
    const perImage = imageShape.reduce((a, b) => a * b, 1);
    // Large batches run as micro-batches through the same session, as in melo predict (CPU: faster).
    const out = await runInMicroBatches(batch, this.microBatch, (start, count) =>
      this.session.run(
        {
          ...stackFeeds,
          [MULTI_TASK_INPUTS.pixels]: {
            shape: [count, ...imageShape],
            data: pixels.subarray(start * perImage, (start + count) * perImage),
          },
          [MULTI_TASK_INPUTS.taskIndex]: {
            shape: [count],
            data: BigInt64Array.from(taskRows.slice(start, start + count), BigInt),
          },
        },
        ['logits'],
      ),
    );
    return out.logits!.data;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
