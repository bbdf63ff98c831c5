import type { PositionInterpolation } from '../checkpoints/resample.ts';
import { MeloError } from '../errors.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import type { Int8Grid } from '../ops/quantized.ts';
import type { Layout } from './anatomy.ts';
import { type Int8Weight, quantizeBackbone } from './quantize.ts';
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
   * 'fp32' (absent: the default) or 'int8' (weights quantised per output channel by withPrecision,
   * model/quantize.ts). A property of the run, not of the weights: the fingerprint is the same, and an
   * adapter trained with either precision works with the other.
   */
  readonly precision?: BackbonePrecision;
  /**
   * The int8 projection weights of an int8 backbone (model/quantize.ts), by float weight name; their float
   * copies are no longer in `weights` unless it was quantised to export.
   */
  readonly int8Weights?: ReadonlyMap<string, Int8Weight>;
  /**
   * How an int8 backbone's graphs quantise (ops/quantized.ts): the full grid unless a training run on a
   * CPU whose u8·s8 kernel saturates chose one whose pairs fit 16 bits (runtime/int8-kernels.ts).
   */
  readonly int8Grid?: Int8Grid;
}

export type BackbonePrecision = 'fp32' | 'int8';

export const BACKBONE_PRECISIONS: readonly BackbonePrecision[] = ['fp32', 'int8'];

/**
 * The same backbone run at `precision`. To int8, its projections are quantised now on the `grid`'s weight
 * levels (default: the full grid; training asks runtime/int8-kernels.ts's int8TrainingGrid) and their float
 * copies dropped (model/quantize.ts), unless `keepFloat`; the other weights are shared, not copied.
 */
export function withPrecision(
  backbone: Backbone,
  precision: BackbonePrecision | undefined,
  options: { keepFloat?: boolean; grid?: Int8Grid } = {},
): Backbone {
  if ((backbone.precision ?? 'fp32') === (precision ?? 'fp32')) return backbone;
  if (precision === 'int8') return quantizeBackbone(backbone, options);
  throw new MeloError('USAGE', 'an int8 backbone cannot go back to fp32: load it again', {
    file: backbone.dir,
  });
}
