import type { Backbone } from '../checkpoints/load.ts';
import { GraphBuilder } from '../graph/builder.ts';
import { defaultMicroBatch, runInMicroBatches } from '../runtime/micro-batch.ts';
import { Session, type SessionOptions } from '../runtime/session.ts';
import type { HostTensor } from '../tensor.ts';
import type { LoraConfig } from './lora-config.ts';
import { buildTaskGraph, type TrainingMethod } from './task-graph.ts';

export interface TaskModelSpec extends SessionOptions {
  readonly backbone: Backbone;
  readonly method: TrainingMethod;
  readonly lora?: LoraConfig;
  readonly numClasses: number;
  readonly imageSize?: readonly [number, number];
  /** Images per ORT run when `run` gets more (default: `defaultMicroBatch()`). */
  readonly microBatch?: number;
}

/**
 * Inference for a task: the task graph with a symbolic batch, its weights (LoRA factors, head, or every
 * weight for full fine-tuning) fed on each call. One session serves every adapter of the same shape, so
 * switching tasks is a different feed, never a rebuild.
 */
export class TaskModel {
  private constructor(
    private readonly session: Session,
    readonly spec: TaskModelSpec,
    readonly imageSize: readonly [number, number],
    readonly weightNames: readonly string[],
  ) {}

  static async create(spec: TaskModelSpec): Promise<TaskModel> {
    const graph = new GraphBuilder(`melo-task-${spec.method}`);
    const imageSize = spec.imageSize ?? spec.backbone.preprocess.inputSize;
    const task = buildTaskGraph(graph, {
      backbone: spec.backbone,
      method: spec.method,
      ...(spec.lora ? { lora: spec.lora } : {}),
      numClasses: spec.numClasses,
      batch: 'batch',
      imageSize,
    });
    graph.output(task.logits, 'logits');
    graph.output(task.features, 'features');
    const session = await Session.fromGraph(graph, spec);
    return new TaskModel(session, spec, imageSize, [...task.weightInputs.keys()]);
  }

  /** pixels: `batch` CHW images back to back; weights: every name in `weightNames`. */
  async run(
    pixels: Float32Array,
    batch: number,
    weights: ReadonlyMap<string, HostTensor>,
  ): Promise<HostTensor> {
    const [height, width] = this.imageSize;
    const channels = this.spec.backbone.config.channels;
    const perImage = channels * height * width;
    const weightFeeds: Record<string, HostTensor> = {};
    for (const name of this.weightNames) {
      const tensor = weights.get(name);
      if (!tensor) throw new Error(`task model: no value for '${name}'`);
      weightFeeds[name] = tensor;
    }
    const out = await runInMicroBatches(batch, this.spec.microBatch ?? defaultMicroBatch(), (start, count) =>
      this.session.run(
        {
          ...weightFeeds,
          pixels: {
            shape: [count, channels, height, width],
            data: pixels.subarray(start * perImage, (start + count) * perImage),
          },
        },
        ['logits'],
      ),
    );
    return out.logits!;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
