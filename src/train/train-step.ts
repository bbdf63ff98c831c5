import type { Backbone } from '../checkpoints/load.ts';
import { buildBackward } from '../graph/backward.ts';
import { GraphBuilder } from '../graph/builder.ts';
import type { LoraDropoutStream } from '../model/lora.ts';
import type { LoraConfig } from '../model/lora-config.ts';
import { buildTaskGraph, TASK_HEAD, type TrainingMethod } from '../model/task-graph.ts';
import { Session, type SessionOptions } from '../runtime/session.ts';
import type { HostTensor } from '../tensor.ts';
import { sigmoidBinaryCrossEntropy, softmaxCrossEntropy } from './loss.ts';

export type LossKind = 'softmax' | 'sigmoid';

export interface TrainStepSpec extends SessionOptions {
  readonly backbone: Backbone;
  readonly method: TrainingMethod;
  readonly lora?: LoraConfig;
  readonly numClasses: number;
  readonly batchSize: number;
  readonly loss: LossKind;
  readonly imageSize?: readonly [number, number];
  /**
   * The LoRA dropout masks' stream when lora.dropout > 0 (default: seed 0, fresh). Each run draws new
   * masks; a step built with `runsDone: n` draws what a step of the same seed draws on its (n+1)-th run.
   */
  readonly dropout?: LoraDropoutStream;
}

export interface StepBatch {
  /** [batch, C, H, W] */
  readonly pixels: Float32Array;
  /** [batch, classes]: soft targets (softmax) or 0/1 labels (sigmoid). */
  readonly targets: Float32Array;
  /** [batch]: each sample's share of the loss (1/batch, class weights, accumulation, 0 for padding rows). */
  readonly sampleWeights: Float32Array;
  /** [classes], sigmoid only. */
  readonly positiveWeights?: Float32Array;
}

export interface StepResult {
  readonly loss: number;
  readonly logits: HostTensor;
  readonly gradients: Map<string, HostTensor>;
}

/**
 * Forward, loss and backward of one batch as a single ORT session, built once for a batch size.
 * Trainable tensors are graph inputs fed each step; frozen weights are initializers and get no gradient.
 */
export class TrainStep {
  private constructor(
    private readonly session: Session,
    readonly trainable: readonly string[],
    private readonly spec: TrainStepSpec,
    readonly imageSize: readonly [number, number],
  ) {}

  static async create(spec: TrainStepSpec): Promise<TrainStep> {
    const { graph, trainable, imageSize } = buildTrainStepGraph(spec);
    const session = await Session.fromGraph(graph, spec);
    return new TrainStep(session, trainable, spec, imageSize);
  }

  /** `parameters` holds every trainable tensor (by graph input name), and for 'linear' nothing else. */
  async run(batch: StepBatch, parameters: ReadonlyMap<string, HostTensor>): Promise<StepResult> {
    const { batchSize, numClasses, backbone } = this.spec;
    const [height, width] = this.imageSize;
    const feeds: Record<string, HostTensor> = {
      pixels: { shape: [batchSize, backbone.config.channels, height, width], data: batch.pixels },
      targets: { shape: [batchSize, numClasses], data: batch.targets },
      sample_weights: { shape: [batchSize], data: batch.sampleWeights },
    };
    if (this.spec.loss === 'sigmoid') {
      feeds.positive_weights = {
        shape: [numClasses],
        data: batch.positiveWeights ?? new Float32Array(numClasses).fill(1),
      };
    }
    for (const name of this.session.inputNames) {
      if (name in feeds) continue;
      const tensor = parameters.get(name);
      if (!tensor) throw new Error(`training step: no value for '${name}'`);
      feeds[name] = tensor;
    }
    const out = await this.session.run(feeds);
    const gradients = new Map<string, HostTensor>();
    for (const name of this.trainable) gradients.set(name, out[`${name}_grad`]!);
    return { loss: out.loss!.data[0]!, logits: out.logits!, gradients };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/**
 * The training graph of one step: the task graph at a static batch, the loss on fed targets and sample
 * weights, and the gradients of exactly the trainable inputs as outputs `<name>_grad` (also what
 * `npm run bench:train -- --profile` hands to ORT's profiler).
 */
export function buildTrainStepGraph(spec: TrainStepSpec): {
  graph: GraphBuilder;
  trainable: string[];
  imageSize: readonly [number, number];
} {
  const graph = new GraphBuilder(`melo-train-${spec.method}`);
  const imageSize = spec.imageSize ?? spec.backbone.preprocess.inputSize;
  const task = buildTaskGraph(graph, {
    backbone: spec.backbone,
    method: spec.method,
    ...(spec.lora ? { lora: spec.lora } : {}),
    numClasses: spec.numClasses,
    batch: spec.batchSize,
    imageSize,
    loraDropout: spec.dropout ?? { seed: 0, runsDone: 0 },
  });
  const targets = graph.input('targets', [spec.batchSize, spec.numClasses]);
  const sampleWeights = graph.input('sample_weights', [spec.batchSize]);
  const loss =
    spec.loss === 'softmax'
      ? softmaxCrossEntropy(task.logits, targets, sampleWeights)
      : sigmoidBinaryCrossEntropy(
          task.logits,
          targets,
          sampleWeights,
          graph.input('positive_weights', [spec.numClasses]),
        );
  const trainable =
    spec.method === 'linear' ? [TASK_HEAD.weight, TASK_HEAD.bias] : [...task.weightInputs.keys()];
  const gradients = buildBackward(
    graph,
    loss,
    trainable.map((name) => task.weightInputs.get(name)!),
  );
  graph.output(loss, 'loss');
  graph.output(task.logits, 'logits');
  for (const name of trainable) graph.output(gradients.get(task.weightInputs.get(name)!)!, `${name}_grad`);
  return { graph, trainable, imageSize };
}
