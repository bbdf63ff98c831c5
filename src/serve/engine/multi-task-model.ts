import type { Backbone } from '../../checkpoints/load.ts';
import { GraphBuilder } from '../../graph/builder.ts';
import { type Feed, Session, type SessionOptions } from '../../runtime/session.ts';
import { type AdapterStack, slotsKey } from './adapter-stack.ts';
import { buildMultiTaskGraph, type LoraSlot, MULTI_TASK_INPUTS } from './multi-task-graph.ts';

/**
 * The serving graph as one ORT session. Built once per set of LoRA slots; any stack with those slots
 * (any number of tasks, any rank, any class count) is fed to it as is.
 */
export class MultiTaskModel {
  private constructor(
    private readonly session: Session,
    readonly slots: readonly LoraSlot[],
    readonly channels: number,
    readonly imageSize: readonly [number, number],
  ) {}

  static async create(
    backbone: Backbone,
    slots: readonly LoraSlot[],
    options: SessionOptions = {},
  ): Promise<MultiTaskModel> {
    const graph = new GraphBuilder('melo-serve');
    const { logits } = buildMultiTaskGraph(graph, backbone, slots);
    graph.output(logits, 'logits');
    const session = await Session.fromGraph(graph, options);
    return new MultiTaskModel(session, slots, backbone.config.channels, backbone.preprocess.inputSize);
  }

  get key(): string {
    return slotsKey(this.slots);
  }

  /** Values per image: C·H·W. */
  get pixelsPerImage(): number {
    return this.channels * this.imageSize[0] * this.imageSize[1];
  }

  /**
   * pixels: `taskRows.length` CHW images back to back; taskRows: each image's row in `stack`. Returns
   * logits [batch, stack.classes]; a row's entries past its task's class count are padding.
   */
  async run(pixels: Float32Array, taskRows: readonly number[], stack: AdapterStack): Promise<Float32Array> {
    if (stack.graphKey !== this.key)
      throw new Error(`serving model: stack slots [${stack.graphKey}] differ from the graph's [${this.key}]`);
    const batch = taskRows.length;
    const [height, width] = this.imageSize;
    const feeds: Record<string, Feed> = {
      [MULTI_TASK_INPUTS.pixels]: { shape: [batch, this.channels, height, width], data: pixels },
      [MULTI_TASK_INPUTS.taskIndex]: { shape: [batch], data: BigInt64Array.from(taskRows, BigInt) },
    };
    for (const [name, tensor] of stack.feeds()) feeds[name] = tensor;
    const out = await this.session.run(feeds, ['logits']);
    return out.logits!.data;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
