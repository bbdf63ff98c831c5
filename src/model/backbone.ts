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
}
