import { GraphBuilder } from '../graph/builder.ts';
import { defaultMicroBatch, runInMicroBatches } from '../runtime/micro-batch.ts';
import { Session, type SessionOptions } from '../runtime/session.ts';
import type { HostTensor } from '../tensor.ts';
import type { Backbone } from './backbone.ts';
import { buildClassifierGraph } from './classifier-graph.ts';

export interface InferenceOptions extends SessionOptions {
  /** Input resolution; defaults to the checkpoint's preprocessing size. */
  readonly imageSize?: readonly [number, number];
  /** Images per ORT run when `run` gets more (default: `defaultMicroBatch()`). */
  readonly microBatch?: number;
}

/**
 * The backbone with its own classifier as one ORT session: pixels [batch, C, H, W] → logits and the
 * pooled features. Built once; every call only feeds a new batch.
 */
export class BackboneClassifier {
  private constructor(
    private readonly session: Session,
    readonly imageSize: readonly [number, number],
    readonly numClasses: number,
    readonly channels: number,
    private readonly microBatch: number,
  ) {}

  static async create(backbone: Backbone, options: InferenceOptions = {}): Promise<BackboneClassifier> {
    const imageSize = options.imageSize ?? backbone.preprocess.inputSize;
    const graph = new GraphBuilder('melo-backbone');
    const { features, logits } = buildClassifierGraph(graph, {
      backbone,
      batch: 'batch',
      imageSize,
      lora: { kind: 'none' },
      head: backbone.config.numClasses > 0 ? { kind: 'checkpoint' } : { kind: 'none' },
    });
    graph.output(features, 'features');
    if (logits) graph.output(logits, 'logits');
    const session = await Session.fromGraph(graph, options);
    return new BackboneClassifier(
      session,
      imageSize,
      backbone.config.numClasses,
      backbone.config.channels,
      options.microBatch ?? defaultMicroBatch(),
    );
  }

  /** pixels: `batch` images, CHW float32 each, concatenated. */
  async run(pixels: Float32Array, batch: number): Promise<{ features: HostTensor; logits?: HostTensor }> {
    const [height, width] = this.imageSize;
    const perImage = this.channels * height * width;
    const out = await runInMicroBatches(batch, this.microBatch, (start, count) =>
      this.session.run({
        pixels: {
          shape: [count, this.channels, height, width],
          data: pixels.subarray(start * perImage, (start + count) * perImage),
        },
      }),
    );
    return out.logits ? { features: out.features!, logits: out.logits } : { features: out.features! };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

export { weightsForResolution } from './classifier-graph.ts';
