import { MeloError } from '../../errors.ts';
import { type ConvertedCheckpoint, fromLayout } from '../../model/anatomy.ts';
import {
  PLAIN_VIT,
  VIT_PRESETS,
  type ViTConfig,
  type ViTPresetName,
  validateViTConfig,
} from '../../model/vit-config.ts';
import type { HostTensor } from '../../tensor.ts';

/** timm's hub layout: `config.json` with `architecture`, optional `model_args`, and `pretrained_cfg`. */
export function isTimmConfig(config: Record<string, unknown>): boolean {
  return typeof config.architecture === 'string';
}

const SIZE_NAMES: Record<string, ViTPresetName> = {
  tiny: 'tiny',
  small: 'small',
  base: 'base',
  large: 'large',
  huge: 'huge',
};

export function timmViTConfig(
  json: Record<string, unknown>,
  file: string,
): { config: ViTConfig; labels?: string[] } {
  const architecture = String(json.architecture);
  const match = /^vit_(tiny|small|base|large|huge)_patch(\d+)_(?:clip_)?(\d+)/.exec(architecture);
  const args = (json.model_args ?? {}) as Record<string, unknown>;
  if (!match && args.embed_dim === undefined) {
    throw new MeloError(
      'UNSUPPORTED',
      `timm architecture '${architecture}' is not a standard ViT name (vit_<size>_patch<p>_<res>) and model_args gives no sizes`,
      { file },
    );
  }
  const preset = VIT_PRESETS[SIZE_NAMES[match?.[1] ?? 'base']!];
  const unsupported = (
    [
      ['class_token', false],
      ['no_embed_class', true],
      ['reg_tokens', (v: unknown) => typeof v === 'number' && v > 0],
      ['global_pool', (v: unknown) => v !== undefined && v !== 'token'],
      ['fc_norm', true],
      ['pre_norm', true],
    ] as const
  ).find(([key, bad]) => (typeof bad === 'function' ? bad(args[key] ?? json[key]) : args[key] === bad));
  if (unsupported) {
    throw new MeloError(
      'UNSUPPORTED',
      `timm option ${unsupported[0]}=${JSON.stringify(args[unsupported[0]] ?? json[unsupported[0]])} is not supported (melo pools the CLS token of a standard ViT)`,
      { file },
    );
  }
  const imageSizeArg = args.img_size ?? Number(match?.[3] ?? 224);
  const imageSize: [number, number] = Array.isArray(imageSizeArg)
    ? [Number(imageSizeArg[0]), Number(imageSizeArg[1])]
    : [Number(imageSizeArg), Number(imageSizeArg)];
  const hiddenSize = Number(args.embed_dim ?? preset.hiddenSize);
  const mlpRatio = args.mlp_ratio === undefined ? preset.mlpSize / preset.hiddenSize : Number(args.mlp_ratio);
  const pretrained = (json.pretrained_cfg ?? {}) as Record<string, unknown>;
  const labelNames = json.label_names ?? pretrained.label_names;
  const config: ViTConfig = {
    imageSize,
    patchSize: Number(args.patch_size ?? match?.[2] ?? 16),
    channels: Number(args.in_chans ?? 3),
    hiddenSize,
    depth: Number(args.depth ?? preset.depth),
    heads: Number(args.num_heads ?? preset.heads),
    mlpSize: Math.round(hiddenSize * mlpRatio),
    layerNormEps: 1e-6,
    qkvBias: args.qkv_bias === undefined ? true : Boolean(args.qkv_bias),
    ...PLAIN_VIT,
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return Array.isArray(labelNames) ? { config, labels: labelNames.map(String) } : { config };
}

/** Renames timm tensors into melo's layout (model/anatomy.ts), slicing the fused qkv projection. */
export function convertTimmViT(tensors: Map<string, HostTensor>, config: ViTConfig): ConvertedCheckpoint {
  return fromLayout(config, 'timm', tensors);
}
