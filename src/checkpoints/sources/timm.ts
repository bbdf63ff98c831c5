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

/**
 * From timm's hub `config.json` (`architecture`, `model_args`, `pretrained_cfg`, `label_names`). The
 * architecture's registry defaults that change the anatomy are applied as timm's `vit_*_dinov2` entries
 * set them (layer scale, 518 px, `reg_tokens` and `no_embed_class` for `_reg<n>_`); `model_args`
 * overrides them.
 */
export function timmViTConfig(
  json: Record<string, unknown>,
  file: string,
): { config: ViTConfig; labels?: string[] } {
  const args = (json.model_args ?? {}) as Record<string, unknown>;
  const config = timmArchitectureConfig(String(json.architecture), args, file, json.global_pool);
  const pretrained = (json.pretrained_cfg ?? {}) as Record<string, unknown>;
  const labelNames = json.label_names ?? pretrained.label_names;
  return Array.isArray(labelNames) ? { config, labels: labelNames.map(String) } : { config };
}

/**
 * A timm VisionTransformer's anatomy from its registry name and keyword arguments (also open_clip's
 * `timm_model_name` + `timm_model_kwargs`). Each supported constructor option maps onto a ViTConfig
 * option; the others fail with the option's name.
 */
export function timmArchitectureConfig(
  architecture: string,
  args: Record<string, unknown>,
  file: string,
  topLevelPool?: unknown,
): ViTConfig {
  const match = /^vit_(tiny|small|base|large|huge)_patch(\d+)_(?:clip_)?(\d+)/.exec(architecture);
  const dinov2 = /^vit_(tiny|small|base|large|huge)_patch(\d+)(?:_reg(\d+))?_dinov2/.exec(architecture);
  if (!match && !dinov2 && args.embed_dim === undefined) {
    throw new MeloError(
      'UNSUPPORTED',
      `timm architecture '${architecture}' is not a standard ViT name (vit_<size>_patch<p>_<res>, vit_<size>_patch14[_reg4]_dinov2) and model_args gives no sizes`,
      { file },
    );
  }
  const preset = VIT_PRESETS[SIZE_NAMES[(match ?? dinov2)?.[1] ?? 'base']!];
  const option = (key: string, fallback: unknown) =>
    args[key] === undefined || args[key] === null ? fallback : args[key];
  const registerTokens = Number(option('reg_tokens', dinov2?.[3] ?? 0));
  const noEmbedClass = Boolean(option('no_embed_class', registerTokens > 0 && dinov2 !== null));
  const globalPool = option('global_pool', topLevelPool ?? 'token');
  const fail = (message: string): never => {
    throw new MeloError('UNSUPPORTED', `timm option ${message} is not supported`, { file });
  };
  if (option('class_token', true) === false) fail('class_token=false');
  if (globalPool !== 'token' && globalPool !== 'avg')
    fail(`global_pool=${JSON.stringify(globalPool)} (token, avg)`);
  if (registerTokens > 0 && !noEmbedClass) fail('reg_tokens without no_embed_class (positions on registers)');
  const act = option('act_layer', 'gelu');
  if (act !== 'gelu' && act !== 'quick_gelu') fail(`act_layer=${JSON.stringify(act)} (gelu, quick_gelu)`);
  for (const key of [
    'qk_norm',
    'scale_attn_norm',
    'scale_mlp_norm',
    'dynamic_img_pad',
    'pool_include_prefix',
  ]) {
    if (option(key, false) !== false) fail(`${key}=${JSON.stringify(args[key])}`);
  }
  // Layer classes other than the ViT's own (RmsNorm, SwiGLU, parallel blocks, …) change the anatomy.
  for (const key of ['norm_layer', 'embed_norm_layer', 'mlp_layer', 'block_fn', 'embed_layer']) {
    if (option(key, null) !== null) fail(`${key}=${JSON.stringify(args[key])}`);
  }
  if (!['attn', ''].includes(String(option('attn_layer', 'attn'))))
    fail(`attn_layer=${JSON.stringify(args.attn_layer)}`);
  if (option('final_norm', true) === false) fail('final_norm=false');
  if (option('proj_bias', true) === false) fail('proj_bias=false');
  if (!['learn', undefined].includes(args.pos_embed as string | undefined))
    fail(`pos_embed=${JSON.stringify(args.pos_embed)}`);
  // timm: fc_norm=None means "after pooling when the pool averages".
  const fcNorm = Boolean(option('fc_norm', globalPool === 'avg'));
  const imageSizeArg = option('img_size', dinov2 ? 518 : Number(match?.[3] ?? 224));
  const imageSize: [number, number] = Array.isArray(imageSizeArg)
    ? [Number(imageSizeArg[0]), Number(imageSizeArg[1])]
    : [Number(imageSizeArg), Number(imageSizeArg)];
  const hiddenSize = Number(option('embed_dim', preset.hiddenSize));
  const mlpRatio = Number(option('mlp_ratio', preset.mlpSize / preset.hiddenSize));
  const layerScale = option('init_values', dinov2 ? 1e-5 : null) !== null;
  const config: ViTConfig = {
    imageSize,
    patchSize: Number(option('patch_size', (match ?? dinov2)?.[2] ?? 16)),
    channels: Number(option('in_chans', 3)),
    hiddenSize,
    depth: Number(option('depth', preset.depth)),
    heads: Number(option('num_heads', preset.heads)),
    mlpSize: Math.round(hiddenSize * mlpRatio),
    layerNormEps: 1e-6,
    qkvBias: Boolean(option('qkv_bias', true)),
    ...PLAIN_VIT,
    family: dinov2 ? (registerTokens > 0 ? 'dinov2_with_registers' : 'dinov2') : 'vit',
    registerTokens,
    positionEmbedding: noEmbedClass ? 'patches' : 'cls+patches',
    preNorm: Boolean(option('pre_norm', false)),
    layerScale,
    activation: act === 'quick_gelu' ? 'quick_gelu' : 'gelu',
    pooling: globalPool === 'avg' ? 'mean' : 'cls',
    finalNorm: fcNorm ? 'pooled' : 'tokens',
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return config;
}

/** Renames timm tensors into melo's layout (model/anatomy.ts), slicing the fused qkv projection. */
export function convertTimmViT(tensors: Map<string, HostTensor>, config: ViTConfig): ConvertedCheckpoint {
  return fromLayout(config, 'timm', tensors);
}
