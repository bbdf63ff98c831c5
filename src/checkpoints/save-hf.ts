import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { PreprocessConfig } from '../imaging/image.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import type { ViTConfig } from '../model/vit-config.ts';
import { transpose2d, type ViTWeights } from '../model/weights.ts';
import type { HostTensor } from '../tensor.ts';
import { writeSafetensors } from './safetensors.ts';

const BLOCK_MODULES: readonly [string, string, boolean][] = [
  ['norm1', 'layernorm_before', false],
  ['attn.query', 'attention.attention.query', true],
  ['attn.key', 'attention.attention.key', true],
  ['attn.value', 'attention.attention.value', true],
  ['attn.proj', 'attention.output.dense', true],
  ['norm2', 'layernorm_after', false],
  ['mlp.fc1', 'intermediate.dense', true],
  ['mlp.fc2', 'output.dense', true],
];

/** melo's canonical weights → Hugging Face `ViTForImageClassification` tensors (the converter's inverse). */
export function toHfTensors(config: ViTConfig, weights: ViTWeights): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  const get = (name: string) => weights.get(name)!;
  out.set('vit.embeddings.cls_token', get('cls_token'));
  out.set('vit.embeddings.position_embeddings', get('pos_embed'));
  const patch = transpose2d(get('patch_embed.weight'));
  out.set('vit.embeddings.patch_embeddings.projection.weight', {
    shape: [config.hiddenSize, config.channels, config.patchSize, config.patchSize],
    data: patch.data,
  });
  out.set('vit.embeddings.patch_embeddings.projection.bias', get('patch_embed.bias'));
  for (let layer = 0; layer < config.depth; layer++) {
    for (const [canonical, hf, linear] of BLOCK_MODULES) {
      const weight = weights.get(`blocks.${layer}.${canonical}.weight`);
      const bias = weights.get(`blocks.${layer}.${canonical}.bias`);
      if (weight) out.set(`vit.encoder.layer.${layer}.${hf}.weight`, linear ? transpose2d(weight) : weight);
      if (bias) out.set(`vit.encoder.layer.${layer}.${hf}.bias`, bias);
    }
  }
  out.set('vit.layernorm.weight', get('norm.weight'));
  out.set('vit.layernorm.bias', get('norm.bias'));
  if (weights.has('head.weight')) {
    out.set('classifier.weight', transpose2d(get('head.weight')));
    out.set('classifier.bias', get('head.bias'));
  }
  return out;
}

const PIL_CODES = { nearest: 0, bilinear: 2, bicubic: 3 } as const;

export function hfConfigJson(config: ViTConfig, labels?: readonly string[]): Record<string, unknown> {
  return {
    architectures: [labels ? 'ViTForImageClassification' : 'ViTModel'],
    model_type: 'vit',
    image_size: config.imageSize[0] === config.imageSize[1] ? config.imageSize[0] : [...config.imageSize],
    patch_size: config.patchSize,
    num_channels: config.channels,
    hidden_size: config.hiddenSize,
    num_hidden_layers: config.depth,
    num_attention_heads: config.heads,
    intermediate_size: config.mlpSize,
    hidden_act: 'gelu',
    layer_norm_eps: config.layerNormEps,
    qkv_bias: config.qkvBias,
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
    ...(labels
      ? {
          id2label: Object.fromEntries(labels.map((label, i) => [String(i), label])),
          label2id: Object.fromEntries(labels.map((label, i) => [label, i])),
        }
      : {}),
  };
}

export function hfPreprocessorJson(preprocess: PreprocessConfig): Record<string, unknown> {
  const [height, width] = preprocess.inputSize;
  const resize =
    preprocess.resizeMode === 'exact'
      ? { size: { height: preprocess.resizeSize[0], width: preprocess.resizeSize[1] } }
      : {
          size: { shortest_edge: preprocess.resizeSize[0] },
          do_center_crop: true,
          crop_size: { height, width },
        };
  return {
    image_processor_type: 'ViTImageProcessor',
    do_resize: true,
    ...resize,
    resample: PIL_CODES[preprocess.interpolation],
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: [...preprocess.mean],
    image_std: [...preprocess.std],
  };
}

/**
 * Writes a Hugging Face ViT checkpoint directory (config.json, preprocessor_config.json, model.safetensors)
 * atomically: everything goes to a staging directory, then each file is renamed into place.
 */
export async function saveHfCheckpoint(
  dir: string,
  config: ViTConfig,
  weights: ViTWeights,
  preprocess: PreprocessConfig,
  labels?: readonly string[],
  metadata: Record<string, string> = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const staging = join(dir, `.staging-${process.pid}-${Date.now()}`);
  await mkdir(staging);
  try {
    await writeSafetensors(join(staging, 'model.safetensors'), toHfTensors(config, weights), {
      metadata: { format: 'pt', ...metadata },
    });
    await writeJsonAtomic(join(staging, 'preprocessor_config.json'), hfPreprocessorJson(preprocess));
    await writeJsonAtomic(join(staging, 'config.json'), hfConfigJson(config, labels));
    for (const file of ['model.safetensors', 'preprocessor_config.json', 'config.json']) {
      await rename(join(staging, file), join(dir, file));
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
