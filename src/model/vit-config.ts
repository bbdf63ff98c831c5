import { MeloError } from '../errors.ts';
import type { BackboneFamily } from './anatomy.ts';

/** How the token sequence becomes one feature vector. */
export type Pooling =
  /** The CLS token (HF ViT, DINOv2 `Dinov2Model` pooler, CLIP, timm 'token'). */
  | 'cls'
  /** Mean of the patch tokens, CLS and register tokens excluded (timm 'avg', MAE / RETFound). */
  | 'mean'
  /** CLS concatenated with the mean patch token, [2D] (HF `Dinov2ForImageClassification`). */
  | 'cls+mean';

/**
 * Everything that fixes a ViT's architecture. Sizes follow timm's names and defaults; the anatomy options
 * (family … projectionSize) are the variants of one model, as timm's VisionTransformer takes them as
 * constructor options. `PLAIN_VIT` holds the plain ViT's values.
 */
export interface ViTConfig {
  /** The family whose anatomy (model/anatomy.ts) names and places the weights. */
  readonly family: BackboneFamily;
  /** Input resolution the checkpoint was trained at (position embeddings are for this grid). */
  readonly imageSize: readonly [number, number];
  readonly patchSize: number;
  readonly channels: number;
  readonly hiddenSize: number;
  readonly depth: number;
  readonly heads: number;
  readonly mlpSize: number;
  readonly layerNormEps: number;
  readonly qkvBias: boolean;
  /** Register tokens after CLS (DINOv2 with registers, Darcet et al. 2024); never pooled. */
  readonly registerTokens: number;
  /** Which tokens the position embeddings cover: CLS and patches (HF, timm default), or patches only (timm `no_embed_class`). */
  readonly positionEmbedding: 'cls+patches' | 'patches';
  /** A LayerNorm on the embeddings before the first block (CLIP's `pre_layrnorm`, timm `norm_pre`). */
  readonly preNorm: boolean;
  /** Per-channel layer scale γ on each residual branch (DINOv2 `layer_scale1/2`, timm `ls1/ls2`). */
  readonly layerScale: boolean;
  /** The MLP's activation: exact GELU, or CLIP's quick GELU x·σ(1.702x). */
  readonly activation: 'gelu' | 'quick_gelu';
  readonly pooling: Pooling;
  /** Where the final LayerNorm acts: every token before pooling ('norm'), or the pooled vector (timm `fc_norm`, CLIP `post_layernorm`). */
  readonly finalNorm: 'tokens' | 'pooled';
  /** Output size of a bias-free projection after pooling (CLIP `visual_projection`); 0 when there is none. */
  readonly projectionSize: number;
  /** Classes of the checkpoint's own head; 0 when it has none. */
  readonly numClasses: number;
}

/** The plain ViT's anatomy options (Dosovitskiy et al. 2021; HF `vit`, timm `vit_*` with class token). */
export const PLAIN_VIT = {
  family: 'vit',
  registerTokens: 0,
  positionEmbedding: 'cls+patches',
  preNorm: false,
  layerScale: false,
  activation: 'gelu',
  pooling: 'cls',
  finalNorm: 'tokens',
  projectionSize: 0,
} as const satisfies Partial<ViTConfig>;

type Preset = Pick<ViTConfig, 'hiddenSize' | 'depth' | 'heads' | 'mlpSize'>;

/** The standard sizes (Dosovitskiy et al. 2021; Ti/S from DeiT). */
export const VIT_PRESETS = {
  tiny: { hiddenSize: 192, depth: 12, heads: 3, mlpSize: 768 },
  small: { hiddenSize: 384, depth: 12, heads: 6, mlpSize: 1536 },
  base: { hiddenSize: 768, depth: 12, heads: 12, mlpSize: 3072 },
  large: { hiddenSize: 1024, depth: 24, heads: 16, mlpSize: 4096 },
  huge: { hiddenSize: 1280, depth: 32, heads: 16, mlpSize: 5120 },
} as const satisfies Record<string, Preset>;

export type ViTPresetName = keyof typeof VIT_PRESETS;

export function vitConfig(preset: ViTPresetName, overrides: Partial<ViTConfig> = {}): ViTConfig {
  const config: ViTConfig = {
    imageSize: [224, 224],
    patchSize: 16,
    channels: 3,
    layerNormEps: 1e-6,
    qkvBias: true,
    ...PLAIN_VIT,
    numClasses: 0,
    ...VIT_PRESETS[preset],
    ...overrides,
  };
  validateViTConfig(config);
  return config;
}

export function validateViTConfig(config: ViTConfig, file?: string): void {
  const fail = (message: string): never => {
    throw new MeloError('BAD_CHECKPOINT', message, { file });
  };
  const positive = (name: string, value: number) => {
    if (!Number.isInteger(value) || value <= 0) fail(`${name} must be a positive integer, got ${value}`);
  };
  positive('patch size', config.patchSize);
  positive('channels', config.channels);
  positive('hidden size', config.hiddenSize);
  positive('depth', config.depth);
  positive('heads', config.heads);
  positive('MLP size', config.mlpSize);
  if (config.hiddenSize % config.heads !== 0)
    fail(`hidden size ${config.hiddenSize} is not divisible by ${config.heads} heads`);
  for (const side of config.imageSize) {
    if (side % config.patchSize !== 0)
      fail(`image size ${config.imageSize.join('×')} is not a multiple of patch ${config.patchSize}`);
  }
}

export function patchGrid(
  config: ViTConfig,
  imageSize: readonly [number, number] = config.imageSize,
): [number, number] {
  const [height, width] = imageSize;
  if (height % config.patchSize !== 0 || width % config.patchSize !== 0) {
    throw new MeloError(
      'BAD_INPUT',
      `input ${height}×${width} is not a multiple of the patch size ${config.patchSize}`,
    );
  }
  return [height / config.patchSize, width / config.patchSize];
}

/** Width of the pooled features a task head reads: D, 2D for CLS + mean patch, or CLIP's projection size. */
export function pooledFeatureSize(config: ViTConfig): number {
  if (config.projectionSize > 0) return config.projectionSize;
  return config.pooling === 'cls+mean' ? 2 * config.hiddenSize : config.hiddenSize;
}
