import { MeloError } from '../errors.ts';

/** Everything that fixes a ViT's architecture. Sizes follow timm's names and defaults. */
export interface ViTConfig {
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
  /** How the sequence becomes one feature vector; melo supports the CLS token (timm 'token', HF ViT). */
  readonly pooling: 'cls';
  /** Classes of the checkpoint's own head; 0 when it has none. */
  readonly numClasses: number;
}

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
    pooling: 'cls',
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

/** Parameters of the backbone (without head), for reporting shares such as LoRA's 0.17%. */
export function backboneParameterCount(config: ViTConfig): number {
  const d = config.hiddenSize;
  const [gh, gw] = patchGrid(config);
  const patch = config.channels * config.patchSize * config.patchSize * d + d;
  const embeddings = d + (1 + gh * gw) * d;
  const attention = 4 * d * d + (config.qkvBias ? 3 * d : 0) + d;
  const mlp = 2 * d * config.mlpSize + config.mlpSize + d;
  const norms = 4 * d;
  return patch + embeddings + config.depth * (attention + mlp + norms) + 2 * d;
}
