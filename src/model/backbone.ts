import type { PositionInterpolation } from '../checkpoints/resample.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import type { Layout } from './anatomy.ts';
import type { ViTConfig } from './vit-config.ts';
import type { ViTWeights } from './weights.ts';

/** A pretrained backbone ready to build graphs from: architecture, weights in melo's layout, preprocessing. */
export interface Backbone {
  readonly dir: string;
  /** The on-disk layout it was read from. */
  readonly layout: Layout;
  readonly config: ViTConfig;
  readonly weights: ViTWeights;
  readonly preprocess: PreprocessConfig;
  /**
   * How position embeddings are resampled when the input grid differs from the checkpoint's, as the
   * source library does it (checkpoints/resample.ts); 'bicubic' when absent.
   */
  readonly positionInterpolation?: PositionInterpolation;
  /** Label names of the checkpoint's own classifier (HF id2label, timm label_names), when it has them. */
  readonly labels: string[] | undefined;
  /** sha256 over the architecture and every backbone weight (not the head): adapters record it. */
  readonly fingerprint: string;
  /**
   * How the frozen projections multiply in every graph built from this backbone (model/classifier-graph.ts):
   * 'fp32' (absent: the default) or 'int8' (weights quantised per output channel when a graph is built,
   * model/quantize.ts). A property of the run, not of the weights: the fingerprint is the same, and an
   * adapter trained with either precision works with the other.
   */
  readonly precision?: BackbonePrecision;
}

export type BackbonePrecision = 'fp32' | 'int8';

export const BACKBONE_PRECISIONS: readonly BackbonePrecision[] = ['fp32', 'int8'];

/** The same backbone run at `precision` (the weights are shared, nothing is copied). */
export function withPrecision(backbone: Backbone, precision: BackbonePrecision | undefined): Backbone {
  return (backbone.precision ?? 'fp32') === (precision ?? 'fp32') ? backbone : { ...backbone, precision };
}
